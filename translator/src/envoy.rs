//! Emits the Envoy resources of one Gateway from its listeners and
//! attachments.

use crate::attach::{Attachment, ResolvedRoute, ResolvedRule};
use crate::backend::ClusterRef;
use crate::gateway::{GatewayInfo, Protocol};
use crate::hostname;
use crate::index::Index;
use crate::input::ObjectKey;
use crate::model::{
    Filter, HeaderModifier, Match, PathMatch, PathModifier, RouteKind, ValueMatch, regex_escape,
};
use crate::output::{GatewayResources, ServicePort};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, DataSource, HeaderValue,
    HeaderValueOption, Http2ProtocolOptions, RuntimeFractionalPercent, SocketAddress,
    TransportSocket, address, config_source, data_source, header_value_option, socket_address,
    transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter as NetworkFilter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter,
    listener_filter,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction, Route, RouteAction,
    RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster, header_matcher,
    query_parameter_matcher, redirect_action, route, route_action, route_match, weighted_cluster,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret, TlsCertificate, secret,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, RegexMatcher, StringMatcher, string_matcher,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration, UInt32Value};
use std::collections::{BTreeMap, BTreeSet};

/// Name of the cluster that does not exist: a weighted share pointing at it
/// answers 500, as the spec asks for invalid backendRefs.
pub const INVALID_BACKEND_CLUSTER: &str = "invalid-backend";

fn any<M: prost::Message + prost::Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

fn socket(address: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: address.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn exact(value: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(value.to_owned())),
        ignore_case: false,
    }
}

fn regex(value: &str) -> RegexMatcher {
    RegexMatcher {
        regex: value.to_owned(),
        ..Default::default()
    }
}

fn value_matcher(m: &ValueMatch) -> StringMatcher {
    if m.regex {
        StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::SafeRegex(regex(&m.value))),
            ignore_case: false,
        }
    } else {
        exact(&m.value)
    }
}

/// The per-Gateway context of emission.
pub(crate) struct Emitter<'a, 'i> {
    pub(crate) gateway: &'a GatewayInfo<'i>,
    pub(crate) routes: &'a [ResolvedRoute],
    pub(crate) attachments: &'a [Attachment],
    pub(crate) bind_address: &'a str,
    pub(crate) index: &'a Index<'i>,
}

impl Emitter<'_, '_> {
    pub(crate) fn emit(&self) -> GatewayResources {
        let mut out = GatewayResources::default();
        let mut clusters: BTreeSet<ClusterRef> = BTreeSet::new();
        // Programmable listeners by port, in spec order within a port.
        let mut ports: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
        for (i, l) in self.gateway.listeners.iter().enumerate() {
            if l.programmable() {
                ports.entry(l.port).or_default().push(i);
            }
        }
        for (&port, listeners) in &ports {
            let Ok(port_u) = u32::try_from(port) else {
                continue;
            };
            let first = &self.gateway.listeners[listeners[0]];
            if first.protocol == Some(Protocol::Http) {
                let name = format!("http-{port}");
                out.routes
                    .push(self.route_config(&name, port, listeners, &mut clusters));
                out.listeners.push(Listener {
                    name: name.clone(),
                    address: Some(socket(self.bind_address, port_u)),
                    filter_chains: vec![FilterChain {
                        filters: vec![hcm(&name, &name)],
                        ..Default::default()
                    }],
                    ..Default::default()
                });
            } else {
                let chains = self.tls_chains(port, listeners, &mut out, &mut clusters);
                if chains.is_empty() {
                    continue;
                }
                out.listeners.push(Listener {
                    name: format!("https-{port}"),
                    address: Some(socket(self.bind_address, port_u)),
                    listener_filters: vec![ListenerFilter {
                        name: "envoy.filters.listener.tls_inspector".to_owned(),
                        config_type: Some(listener_filter::ConfigType::TypedConfig(any(
                            &TlsInspector::default(),
                        ))),
                        ..Default::default()
                    }],
                    filter_chains: chains,
                    ..Default::default()
                });
            }
        }
        // Envoy's structs are large (a Cluster is kilobytes): size the lists
        // once instead of copying them as they grow.
        out.clusters.reserve_exact(clusters.len());
        out.endpoints.reserve_exact(clusters.len());
        for c in &clusters {
            out.clusters.push(cluster(c));
            out.endpoints.push(load_assignment(
                self.index,
                c.name(),
                &c.namespace,
                &c.service,
                c.port,
            ));
            out.backends.insert(
                c.name().to_owned(),
                ServicePort {
                    service: ObjectKey::new(c.namespace.as_str(), c.service.as_str()),
                    port: c.port,
                },
            );
        }
        out.listeners.sort_by(|a, b| a.name.cmp(&b.name));
        out.routes.sort_by(|a, b| a.name.cmp(&b.name));
        out.secrets.sort_by(|a, b| a.name.cmp(&b.name));
        out.secrets.dedup_by(|a, b| a.name == b.name);
        out
    }

    /// Filter chains of a TLS-family port: one per HTTPS listener (by its
    /// hostname) and one per passthrough route (by the SNI names it owns).
    fn tls_chains(
        &self,
        port: i32,
        listeners: &[usize],
        out: &mut GatewayResources,
        clusters: &mut BTreeSet<ClusterRef>,
    ) -> Vec<FilterChain> {
        let mut chains = Vec::new();
        // SNI name → owner; HTTPS listeners own their hostname outright.
        let mut taken: BTreeSet<Option<String>> = BTreeSet::new();
        for &li in listeners {
            let l = &self.gateway.listeners[li];
            if l.protocol != Some(Protocol::Https) {
                continue;
            }
            taken.insert(l.hostname.clone());
            let rc_name = format!("https-{port}-{}", l.name);
            out.routes
                .push(self.route_config(&rc_name, port, &[li], clusters));
            for c in &l.certificates {
                out.secrets.push(Secret {
                    name: c.name.clone(),
                    r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                        certificate_chain: Some(inline(&c.chain)),
                        private_key: Some(inline(&c.key)),
                        ..Default::default()
                    })),
                });
            }
            let tls = DownstreamTlsContext {
                common_tls_context: Some(CommonTlsContext {
                    tls_certificate_sds_secret_configs: l
                        .certificates
                        .iter()
                        .map(|c| SdsSecretConfig {
                            name: c.name.clone(),
                            sds_config: Some(ads()),
                        })
                        .collect(),
                    alpn_protocols: vec!["h2".to_owned(), "http/1.1".to_owned()],
                    ..Default::default()
                }),
                ..Default::default()
            };
            chains.push(FilterChain {
                name: format!("https-{port}-{}", l.name),
                filter_chain_match: Some(FilterChainMatch {
                    server_names: l.hostname.iter().cloned().collect(),
                    ..Default::default()
                }),
                filters: vec![hcm(&rc_name, &rc_name)],
                transport_socket: Some(TransportSocket {
                    name: "envoy.transport_sockets.tls".to_owned(),
                    config_type: Some(transport_socket::ConfigType::TypedConfig(any(&tls))),
                }),
                ..Default::default()
            });
        }
        // Passthrough: each SNI name goes to the most specific listener that
        // accepts it, and within it to the oldest route claiming it.
        let mut sni: BTreeMap<String, usize> = BTreeMap::new();
        for a in self.attachments {
            if !listeners.contains(&a.listener) {
                continue;
            }
            let l = &self.gateway.listeners[a.listener];
            if l.protocol != Some(Protocol::TlsPassthrough) {
                continue;
            }
            for h in &a.hostnames {
                if h == "*"
                    || taken.contains(&Some(h.clone()))
                    || !self.owns(listeners, a.listener, h)
                {
                    continue;
                }
                let entry = sni.entry(h.clone()).or_insert(a.route);
                if self.routes[a.route].route.age_key() < self.routes[*entry].route.age_key() {
                    *entry = a.route;
                }
            }
        }
        let mut by_route: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (h, r) in sni {
            by_route.entry(r).or_default().push(h);
        }
        for (ri, names) in by_route {
            let rr = &self.routes[ri];
            let key = &rr.route.key;
            let stat = format!("tls-{port}-{}-{}", key.namespace, key.name);
            let spec = match rr.rules.first() {
                Some(rule) => tcp_target(rule, clusters),
                None => tcp_proxy::ClusterSpecifier::Cluster(INVALID_BACKEND_CLUSTER.to_owned()),
            };
            let proxy = TcpProxy {
                stat_prefix: stat.clone(),
                cluster_specifier: Some(spec),
                ..Default::default()
            };
            chains.push(FilterChain {
                name: stat,
                filter_chain_match: Some(FilterChainMatch {
                    server_names: names,
                    ..Default::default()
                }),
                filters: vec![NetworkFilter {
                    name: "envoy.filters.network.tcp_proxy".to_owned(),
                    config_type: Some(filter::ConfigType::TypedConfig(any(&proxy))),
                }],
                ..Default::default()
            });
        }
        chains
    }

    /// Whether `listener` is the most specific of `listeners` accepting `host`.
    fn owns(&self, listeners: &[usize], listener: usize, host: &str) -> bool {
        let best = listeners
            .iter()
            .filter(|&&i| self.gateway.listeners[i].accepts_host(host))
            .max_by_key(|&&i| {
                (
                    hostname::specificity(self.gateway.listeners[i].hostname.as_deref()),
                    std::cmp::Reverse(i),
                )
            });
        best == Some(&listener)
    }

    /// The route configuration serving `listeners` (all on `port`).
    fn route_config(
        &self,
        name: &str,
        port: i32,
        listeners: &[usize],
        clusters: &mut BTreeSet<ClusterRef>,
    ) -> RouteConfiguration {
        // Every hostname a route serves here, and every listener hostname,
        // gets a virtual host (a listener hostname always has its own, so
        // requests for it never fall through to a wildcard listener).
        let mut domains: BTreeSet<&str> = BTreeSet::new();
        // (listener, route, hostname) for each hostname an attachment serves,
        // split into exact names (looked up directly) and wildcards.
        let mut exact: BTreeMap<&str, Vec<(usize, usize)>> = BTreeMap::new();
        let mut wild: Vec<(&str, usize, usize)> = Vec::new();
        for &li in listeners {
            if let Some(h) = &self.gateway.listeners[li].hostname {
                domains.insert(h);
            }
        }
        for a in self
            .attachments
            .iter()
            .filter(|a| listeners.contains(&a.listener))
        {
            for h in &a.hostnames {
                if !self.owns(listeners, a.listener, h) {
                    continue;
                }
                domains.insert(h);
                if h.starts_with('*') {
                    wild.push((h, a.listener, a.route));
                } else {
                    exact.entry(h).or_default().push((a.listener, a.route));
                }
            }
        }
        let virtual_hosts = domains
            .into_iter()
            .map(|domain| {
                // Only the listener owning this domain serves it (listener
                // isolation); within it, every route whose hostname covers
                // the domain, routes of more specific hostnames first.
                let owner = listeners
                    .iter()
                    .copied()
                    .find(|&li| self.owns(listeners, li, domain));
                let mut candidates: Vec<(&str, usize)> = exact
                    .get(domain)
                    .into_iter()
                    .flatten()
                    .filter(|(li, _)| Some(*li) == owner)
                    .map(|&(_, ri)| (domain, ri))
                    .collect();
                candidates.extend(
                    wild.iter()
                        .filter(|(h, li, _)| {
                            Some(*li) == owner
                                && (*h == "*"
                                    || hostname::intersect(h, domain).as_deref() == Some(domain))
                        })
                        .map(|&(h, _, ri)| (h, ri)),
                );
                let mut entries = Vec::new();
                for (h, ri) in candidates {
                    let route = &self.routes[ri].route;
                    for (rule_i, rule) in route.rules.iter().enumerate() {
                        for (mi, m) in rule.matches.iter().enumerate() {
                            entries.push((
                                (host_rank(h), &m.precedence, route.age_key()),
                                ri,
                                rule_i,
                                mi,
                            ));
                        }
                    }
                }
                entries.sort();
                // A route reaches a domain through several of its hostnames
                // only when it has more than one candidate entry here; keep
                // its most specific one.
                if entries.len() > 1 {
                    let mut seen = std::collections::HashSet::with_capacity(entries.len());
                    entries.retain(|&(_, ri, rule_i, mi)| seen.insert((ri, rule_i, mi)));
                }
                let mut routes = Vec::with_capacity(entries.len());
                for &(_, ri, rule_i, mi) in &entries {
                    routes.push(self.route(port, ri, rule_i, mi, clusters));
                }
                VirtualHost {
                    name: domain.to_owned(),
                    domains: vec![domain.to_owned()],
                    routes,
                    ..Default::default()
                }
            })
            .collect();
        RouteConfiguration {
            name: name.to_owned(),
            virtual_hosts,
            // Invalid backends point at a cluster that never exists.
            validate_clusters: Some(BoolValue { value: false }),
            // Hostnames match whatever port a client puts in Host, and the
            // backend still sees the Host header as sent.
            ignore_port_in_host_matching: true,
            ..Default::default()
        }
    }

    fn route(
        &self,
        port: i32,
        ri: usize,
        rule_i: usize,
        mi: usize,
        clusters: &mut BTreeSet<ClusterRef>,
    ) -> Route {
        let rr = &self.routes[ri];
        let rule = &rr.route.rules[rule_i];
        let resolved = &rr.rules[rule_i];
        let m = &rule.matches[mi];
        let mut out = Route {
            name: route_name(rr.route.kind, &rr.route.key, rule_i, mi),
            r#match: Some(route_match(m)),
            ..Default::default()
        };
        let mut rewrite = None;
        let mut redirect = None;
        for f in &rule.filters {
            match f {
                Filter::RequestHeaders(h) => {
                    let (add, remove) = header_ops(h);
                    out.request_headers_to_add.extend(add);
                    out.request_headers_to_remove.extend(remove);
                }
                Filter::ResponseHeaders(h) => {
                    let (add, remove) = header_ops(h);
                    out.response_headers_to_add.extend(add);
                    out.response_headers_to_remove.extend(remove);
                }
                Filter::Redirect { .. } => {
                    redirect.get_or_insert(f);
                }
                Filter::Rewrite { .. } => {
                    rewrite.get_or_insert(f);
                }
                Filter::Mirror { .. } => {}
            }
        }
        out.action = Some(match redirect {
            Some(Filter::Redirect {
                scheme,
                hostname,
                port: to_port,
                path,
                status,
            }) => route::Action::Redirect(redirect_action(
                port, &m.path, scheme, hostname, *to_port, path, *status,
            )),
            _ => match route_action(resolved, clusters) {
                Some(mut action) => {
                    if let Some(Filter::Rewrite { hostname, path }) = rewrite {
                        if let Some(h) = hostname {
                            action.host_rewrite_specifier = Some(
                                route_action::HostRewriteSpecifier::HostRewriteLiteral(h.clone()),
                            );
                        }
                        apply_path_rewrite(&mut action, &m.path, path.as_ref());
                    }
                    for (c, fraction) in &resolved.mirrors {
                        if !clusters.contains(c) {
                            clusters.insert(c.clone());
                        }
                        action
                            .request_mirror_policies
                            .push(route_action::RequestMirrorPolicy {
                                cluster: c.name().to_owned(),
                                runtime_fraction: fraction.map(|(n, d)| RuntimeFractionalPercent {
                                    default_value: Some(fraction_percent(n, d)),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            });
                    }
                    route::Action::Route(action)
                }
                None => route::Action::DirectResponse(DirectResponseAction {
                    status: 500,
                    ..Default::default()
                }),
            },
        });
        out
    }
}

/// The endpoints of cluster `cluster_name`, fed by port `service_port` of Service
/// `namespace/service`: the ready addresses of the Service's EndpointSlices
/// at the slice port named like the Service port. Used both by a full
/// translation and by [`crate::refresh_endpoints`], so the two cannot drift.
pub(crate) fn load_assignment(
    index: &Index<'_>,
    cluster_name: &str,
    namespace: &str,
    service: &str,
    service_port: i32,
) -> ClusterLoadAssignment {
    let port_name = index
        .service(namespace, service)
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.ports.as_ref())
        .and_then(|ps| ps.iter().find(|p| p.port == service_port))
        .and_then(|p| p.name.as_deref())
        .unwrap_or("");
    let mut addrs: BTreeSet<(&str, u32)> = BTreeSet::new();
    for slice in index.slices(namespace, service) {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue;
        }
        let Some(port) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == port_name)
            .and_then(|p| p.port)
            .and_then(|p| u32::try_from(p).ok())
        else {
            continue;
        };
        for e in &slice.endpoints {
            // An unknown readiness counts as ready, as Kubernetes says.
            if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for a in &e.addresses {
                if a.parse::<std::net::IpAddr>().is_ok() {
                    addrs.insert((a.as_str(), port));
                }
            }
        }
    }
    let lb_endpoints: Vec<LbEndpoint> = addrs
        .into_iter()
        .map(|(a, p)| LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(socket(a, p)),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: cluster_name.to_owned(),
        endpoints: if lb_endpoints.is_empty() {
            vec![]
        } else {
            vec![LocalityLbEndpoints {
                lb_endpoints,
                ..Default::default()
            }]
        },
        ..Default::default()
    }
}

/// Precedence of the route hostname a request matched, smaller first:
/// exact names, longest first; then wildcards, longest first; then routes
/// without hostnames.
fn host_rank(h: &str) -> (u8, std::cmp::Reverse<usize>) {
    match h {
        "*" => (2, std::cmp::Reverse(0)),
        w if w.starts_with('*') => (1, std::cmp::Reverse(w.len())),
        e => (0, std::cmp::Reverse(e.len())),
    }
}

/// `<kind>/<namespace>/<name>/rule/<i>/match/<j>`, built in one allocation:
/// there is one per Envoy route.
fn route_name(kind: RouteKind, key: &crate::input::ObjectKey, rule: usize, m: usize) -> String {
    use std::fmt::Write as _;
    let slug = kind_slug(kind);
    let mut name = String::with_capacity(slug.len() + key.namespace.len() + key.name.len() + 40);
    let _ = write!(
        name,
        "{slug}/{}/{}/rule/{rule}/match/{m}",
        key.namespace, key.name
    );
    name
}

fn kind_slug(k: RouteKind) -> &'static str {
    match k {
        RouteKind::Http => "httproute",
        RouteKind::Grpc => "grpcroute",
        RouteKind::Tls => "tlsroute",
    }
}

fn inline(bytes: &[u8]) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes.to_vec())),
        ..Default::default()
    }
}

fn fraction_percent(n: u32, d: u32) -> FractionalPercent {
    // Envoy's denominators are 100, 10,000 and 1,000,000: scale to millionths.
    let millionths = (u64::from(n) * 1_000_000 / u64::from(d.max(1))).min(1_000_000);
    FractionalPercent {
        numerator: u32::try_from(millionths).unwrap_or(1_000_000),
        denominator: fractional_percent::DenominatorType::Million as i32,
    }
}

fn hcm(stat_prefix: &str, route_config: &str) -> NetworkFilter {
    let router = HttpFilter {
        name: "envoy.filters.http.router".to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(
            any(&Router::default()),
        )),
        ..Default::default()
    };
    let manager = HttpConnectionManager {
        stat_prefix: stat_prefix.to_owned(),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_config.to_owned(),
        })),
        http_filters: vec![router],
        // Backends with appProtocol kubernetes.io/ws take WebSocket upgrades.
        upgrade_configs: vec![http_connection_manager::UpgradeConfig {
            upgrade_type: "websocket".to_owned(),
            ..Default::default()
        }],
        ..Default::default()
    };
    NetworkFilter {
        name: "envoy.filters.network.http_connection_manager".to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(any(&manager))),
    }
}

fn route_match(m: &Match) -> RouteMatch {
    let path = match &m.path {
        PathMatch::Exact(p) => route_match::PathSpecifier::Path(p.clone()),
        PathMatch::Prefix(p) if p == "/" => route_match::PathSpecifier::Prefix(p.clone()),
        PathMatch::Prefix(p) => route_match::PathSpecifier::PathSeparatedPrefix(p.clone()),
        PathMatch::RawPrefix(p) => route_match::PathSpecifier::Prefix(p.clone()),
        PathMatch::Regex(r) => route_match::PathSpecifier::SafeRegex(regex(r)),
    };
    let mut headers: Vec<HeaderMatcher> = m
        .headers
        .iter()
        .map(|h| HeaderMatcher {
            name: h.name.clone(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                value_matcher(h),
            )),
            ..Default::default()
        })
        .collect();
    if let Some(method) = &m.method {
        headers.push(HeaderMatcher {
            name: ":method".to_owned(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(exact(
                method,
            ))),
            ..Default::default()
        });
    }
    RouteMatch {
        path_specifier: Some(path),
        headers,
        query_parameters: m
            .query
            .iter()
            .map(|q| QueryParameterMatcher {
                name: q.name.clone(),
                query_parameter_match_specifier: Some(
                    query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(
                        value_matcher(q),
                    ),
                ),
            })
            .collect(),
        grpc: m.grpc.then(route_match::GrpcRouteMatchOptions::default),
        ..Default::default()
    }
}

fn header_ops(h: &HeaderModifier) -> (Vec<HeaderValueOption>, Vec<String>) {
    let opt = |(k, v): &(String, String), action: header_value_option::HeaderAppendAction| {
        HeaderValueOption {
            header: Some(HeaderValue {
                key: k.to_ascii_lowercase(),
                value: v.clone(),
                ..Default::default()
            }),
            append_action: action as i32,
            ..Default::default()
        }
    };
    let mut add: Vec<HeaderValueOption> = h
        .set
        .iter()
        .map(|kv| {
            opt(
                kv,
                header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd,
            )
        })
        .collect();
    add.extend(h.add.iter().map(|kv| {
        opt(
            kv,
            header_value_option::HeaderAppendAction::AppendIfExistsOrAdd,
        )
    }));
    (
        add,
        h.remove.iter().map(|r| r.to_ascii_lowercase()).collect(),
    )
}

/// A rule's backends as (cluster name, weight), merged by name: weight-0
/// entries dropped, invalid ones pooled under [`INVALID_BACKEND_CLUSTER`].
/// Registers every cluster used; `tcp` maps them to their plain-TCP form.
fn backend_weights(
    rule: &ResolvedRule,
    clusters: &mut BTreeSet<ClusterRef>,
    tcp: bool,
) -> Vec<(String, u32)> {
    let mut weights: Vec<(String, u32)> = Vec::with_capacity(rule.backends.len());
    for (target, weight) in &rule.backends {
        if *weight == 0 {
            continue;
        }
        let name = match target {
            Ok(c) => {
                let c = if tcp && c.http2 {
                    std::borrow::Cow::Owned(c.without_http2())
                } else {
                    std::borrow::Cow::Borrowed(c)
                };
                let name = c.name().to_owned();
                if !clusters.contains(c.as_ref()) {
                    clusters.insert(c.into_owned());
                }
                name
            }
            Err(_) => INVALID_BACKEND_CLUSTER.to_owned(),
        };
        weights.push((name, *weight));
    }
    // Merge repeated clusters, in name order.
    weights.sort_unstable();
    weights.dedup_by(|later, earlier| {
        let same = later.0 == earlier.0;
        if same {
            earlier.1 = earlier.1.saturating_add(later.1);
        }
        same
    });
    weights
}

/// The route action for a rule's backends, or None when every request must
/// get a 500 (no backends, all weights zero, or nothing valid to send to).
fn route_action(rule: &ResolvedRule, clusters: &mut BTreeSet<ClusterRef>) -> Option<RouteAction> {
    let mut weights = backend_weights(rule, clusters, false);
    if weights.iter().all(|(k, _)| k == INVALID_BACKEND_CLUSTER) {
        return None;
    }
    let specifier = if let [(name, _)] = weights.as_mut_slice() {
        route_action::ClusterSpecifier::Cluster(std::mem::take(name))
    } else {
        route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: weights
                .into_iter()
                .map(|(name, w)| weighted_cluster::ClusterWeight {
                    name,
                    weight: Some(UInt32Value { value: w }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    };
    Some(RouteAction {
        cluster_specifier: Some(specifier),
        cluster_not_found_response_code:
            route_action::ClusterNotFoundResponseCode::InternalServerError as i32,
        ..Default::default()
    })
}

fn tcp_target(
    rule: &ResolvedRule,
    clusters: &mut BTreeSet<ClusterRef>,
) -> tcp_proxy::ClusterSpecifier {
    let weights = backend_weights(rule, clusters, true);
    if weights.len() <= 1 {
        let name = weights
            .into_iter()
            .next()
            .map_or_else(|| INVALID_BACKEND_CLUSTER.to_owned(), |(n, _)| n);
        return tcp_proxy::ClusterSpecifier::Cluster(name);
    }
    tcp_proxy::ClusterSpecifier::WeightedClusters(tcp_proxy::WeightedCluster {
        clusters: weights
            .into_iter()
            .map(
                |(name, weight)| tcp_proxy::weighted_cluster::ClusterWeight {
                    name,
                    weight,
                    ..Default::default()
                },
            )
            .collect(),
    })
}

fn redirect_action(
    listener_port: i32,
    matched: &PathMatch,
    scheme: &Option<String>,
    hostname: &Option<String>,
    port: Option<i32>,
    path: &Option<PathModifier>,
    status: Option<i64>,
) -> RedirectAction {
    let response_code = match status {
        Some(301) => redirect_action::RedirectResponseCode::MovedPermanently,
        Some(303) => redirect_action::RedirectResponseCode::SeeOther,
        Some(307) => redirect_action::RedirectResponseCode::TemporaryRedirect,
        Some(308) => redirect_action::RedirectResponseCode::PermanentRedirect,
        _ => redirect_action::RedirectResponseCode::Found,
    };
    // The spec's port rule: an explicit port wins; with a scheme, the
    // scheme's well-known port (Envoy then leaves it out); without either,
    // the listener's port, left out when it is the well-known one.
    let port_redirect = match (port, scheme) {
        (Some(p), _) => u32::try_from(p).unwrap_or(0),
        (None, Some(_)) => 0,
        (None, None) if listener_port == 80 || listener_port == 443 => 0,
        (None, None) => u32::try_from(listener_port).unwrap_or(0),
    };
    let path_rewrite_specifier = match (path, matched) {
        (Some(PathModifier::Full(p)), _) => Some(
            redirect_action::PathRewriteSpecifier::PathRedirect(p.clone()),
        ),
        (Some(PathModifier::Prefix(p)), PathMatch::Prefix(_)) => Some(
            redirect_action::PathRewriteSpecifier::PrefixRewrite(p.clone()),
        ),
        _ => None,
    };
    RedirectAction {
        scheme_rewrite_specifier: scheme
            .clone()
            .map(redirect_action::SchemeRewriteSpecifier::SchemeRedirect),
        host_redirect: hostname.clone().unwrap_or_default(),
        port_redirect,
        path_rewrite_specifier,
        response_code: response_code as i32,
        ..Default::default()
    }
}

fn apply_path_rewrite(action: &mut RouteAction, matched: &PathMatch, path: Option<&PathModifier>) {
    match (path, matched) {
        (Some(PathModifier::Full(p)), _) => {
            action.regex_rewrite = Some(RegexMatchAndSubstitute {
                pattern: Some(regex("^/.*$")),
                substitution: p.clone(),
            });
        }
        (Some(PathModifier::Prefix(p)), PathMatch::Prefix(prefix)) => {
            let replacement = p.trim_end_matches('/');
            if prefix == "/" {
                // Prefix "/" matched with a plain prefix: keep the slash that
                // separates the replacement from the rest of the path.
                action.regex_rewrite = Some(RegexMatchAndSubstitute {
                    pattern: Some(regex("^/")),
                    substitution: format!("{replacement}/"),
                });
            } else if replacement.is_empty() {
                // Replacing a prefix with "/" must not leave "//" behind.
                action.regex_rewrite = Some(RegexMatchAndSubstitute {
                    pattern: Some(regex(&format!("^{}/*", regex_escape(prefix)))),
                    substitution: "/".to_owned(),
                });
            } else {
                action.prefix_rewrite = replacement.to_owned();
            }
        }
        _ => {}
    }
}

fn cluster(c: &ClusterRef) -> Cluster {
    let mut out = Cluster {
        name: c.name().to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        connect_timeout: Some(Duration {
            seconds: 10,
            nanos: 0,
        }),
        ..Default::default()
    };
    if c.http2 {
        let opts = HttpProtocolOptions {
            upstream_protocol_options: Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions::default(),
                    )),
                },
            )),
            ..Default::default()
        };
        out.typed_extension_protocol_options.insert(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
            any(&opts),
        );
    }
    out
}
