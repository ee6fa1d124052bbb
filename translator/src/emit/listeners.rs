//! Envoy listeners, one per port, and their filter chains: an HTTP
//! connection manager for HTTP and HTTPS listeners, a TCP proxy per
//! TLSRoute (TLS passed through, or terminated by Envoy) and for a TCP
//! port's TCPRoute, and a UDP proxy (a listener filter) for a UDP port's
//! UDPRoute.

use super::clusters::{Carry, INVALID_BACKEND_CLUSTER, Split, backend_weights};
use super::ext_authz::AuthFilters;
use super::routes::route_host_rank;
use super::{Emitter, Used, ads, any, secrets, socket, udp_socket};
use crate::attach::{ResolvedRoute, ResolvedRule};
use crate::backend::ClusterRef;
use crate::gateway::Protocol;
use crate::output::GatewayResources;
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, HttpProtocolOptions, SubstitutionFormatString, TransportSocket, data_source,
    http_protocol_options, substitution_format_string, transport_socket,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter as NetworkFilter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
    UdpListenerConfig, filter, listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::common::set_filter_state::v3::{
    FilterStateValue, filter_state_value,
};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::set_filter_state::v3::Config as SetFilterState;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::filters::udp::udp_proxy::v3::{
    Route as UdpRoute, UdpProxyConfig, udp_proxy_config,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, common_tls_context,
};
use envoy_types::pb::google::protobuf::{BoolValue, Duration};
use envoy_types::pb::xds::core::v3::TypedExtensionConfig;
use envoy_types::pb::xds::r#type::matcher::v3::{Matcher, matcher::OnMatch, matcher::on_match};
use std::collections::{BTreeMap, BTreeSet};

/// `request_headers_timeout`: a client has this long from the first byte
/// of a request to the end of its headers. Real clients send headers in
/// one go; a client trickling them (slowloris) holds a connection slot and
/// is cut off (408) instead.
pub(crate) const REQUEST_HEADERS_TIMEOUT_SECONDS: i64 = 10;
/// `stream_idle_timeout`: a request or response stream with no bytes in
/// either direction for this long is reset. Envoy's own default, written
/// out so that it is a decision, not an accident; routes whose
/// `timeouts.request`/`backendRequest` are longer raise it for themselves
/// (`emit::routes::apply_timeouts`), so a route timeout always governs.
pub(crate) const STREAM_IDLE_TIMEOUT_SECONDS: i64 = 300;
/// `common_http_protocol_options.idle_timeout`: a downstream connection
/// with no active stream for this long is closed, freeing its slot under
/// the connection limit. Envoy's default for downstream connections,
/// written out for the same reason.
pub(crate) const CONNECTION_IDLE_TIMEOUT_SECONDS: i64 = 3600;

/// Whole seconds as a protobuf Duration.
fn seconds(seconds: i64) -> Option<Duration> {
    Some(Duration { seconds, nanos: 0 })
}

impl Emitter<'_, '_> {
    /// The Envoy listener of `port`, serving `listeners` (the programmable
    /// Gateway listeners on it, in spec order); its route configurations
    /// and secrets go into `out`. None when nothing can be served there.
    pub(super) fn listener(
        &self,
        port: i32,
        listeners: &[usize],
        out: &mut GatewayResources,
        used: Used<'_>,
    ) -> Option<Listener> {
        let port_u = u32::try_from(port).ok()?;
        let first = &self.gateway.listeners[listeners[0]];
        let clusters = used.clusters;
        if first.protocol == Some(Protocol::Tcp) {
            self.tcp_listener(port_u, listeners, clusters)
        } else if first.protocol == Some(Protocol::Udp) {
            self.udp_listener(port_u, listeners, used.splits)
        } else if first.protocol == Some(Protocol::Http) {
            let name = format!("http-{port}");
            let mut auth = AuthFilters::new();
            out.routes
                .push(self.route_config(&name, port, listeners, false, clusters, &mut auth));
            Some(Listener {
                name: name.clone(),
                address: Some(socket(self.bind_address, port_u)),
                filter_chains: vec![FilterChain {
                    filters: vec![hcm(&name, &name, &auth, self.edge)],
                    ..Default::default()
                }],
                ..Default::default()
            })
        } else {
            let chains = self.tls_chains(port, listeners, out, clusters);
            if chains.is_empty() {
                return None;
            }
            Some(Listener {
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
            })
        }
    }

    /// Filter chains of a TLS-family port: one per HTTPS listener (by its
    /// hostname), and one per TLSRoute and TLS listener (by the SNI names it
    /// owns), which terminates TLS or passes it through.
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
        let https: Vec<usize> = listeners
            .iter()
            .copied()
            .filter(|&li| self.gateway.listeners[li].protocol == Some(Protocol::Https))
            .collect();
        // One route configuration for the port's HTTPS listeners; when
        // there are several, each chain tells it which listener the
        // connection's SNI chose.
        let rc_name = format!("https-{port}");
        let by_sni = https.len() > 1;
        let mut auth = AuthFilters::new();
        if !https.is_empty() {
            out.routes
                .push(self.route_config(&rc_name, port, &https, by_sni, clusters, &mut auth));
        }
        for &li in &https {
            let l = &self.gateway.listeners[li];
            taken.insert(l.hostname.clone());
            let chain_name = format!("https-{port}-{}", l.envoy_name);
            let mut tls = self.downstream_tls(l, vec!["h2".to_owned(), "http/1.1".to_owned()], out);
            if let Some(v) = &l.client_validation {
                out.secrets.push(secrets::client_validation(v));
                if let Some(common) = tls.common_tls_context.as_mut() {
                    common.validation_context_type = Some(
                        common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(
                            secrets::by_name(&v.secret),
                        ),
                    );
                }
                tls.require_client_certificate = Some(BoolValue {
                    value: !v.insecure_fallback,
                });
            }
            let mut filters = Vec::with_capacity(2);
            if by_sni {
                filters.push(record_listener(&l.envoy_name));
            }
            filters.push(hcm(&chain_name, &rc_name, &auth, self.edge));
            chains.push(FilterChain {
                name: chain_name,
                filter_chain_match: Some(FilterChainMatch {
                    server_names: l.hostname.iter().cloned().collect(),
                    ..Default::default()
                }),
                filters,
                transport_socket: Some(tls_socket(&tls)),
                ..Default::default()
            });
        }
        // TLSRoutes: each SNI name goes to the most specific listener that
        // accepts it, and within it to the oldest route claiming it.
        let mut sni: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for a in self.attachments {
            if !listeners.contains(&a.listener) {
                continue;
            }
            let l = &self.gateway.listeners[a.listener];
            if !matches!(
                l.protocol,
                Some(Protocol::TlsPassthrough | Protocol::TlsTerminate)
            ) {
                continue;
            }
            for h in &a.hostnames {
                if h == "*"
                    || taken.contains(&Some(h.clone()))
                    || !self.owns(listeners, a.listener, h)
                {
                    continue;
                }
                // The route written for the most specific hostname wins,
                // then the oldest (see `routes::route_host_rank`).
                let entry = sni.entry(h.clone()).or_insert((a.route, a.listener));
                let rank = |ri: usize| {
                    let route = &self.routes[ri].route;
                    (route_host_rank(route, h), route.age_key())
                };
                if rank(a.route) < rank(entry.0) {
                    *entry = (a.route, a.listener);
                }
            }
        }
        let mut by_route: BTreeMap<(usize, usize), Vec<String>> = BTreeMap::new();
        for (h, owner) in sni {
            by_route.entry(owner).or_default().push(h);
        }
        for ((ri, li), names) in by_route {
            let rr = &self.routes[ri];
            let l = &self.gateway.listeners[li];
            let key = &rr.route.key;
            let terminate = l.protocol == Some(Protocol::TlsTerminate);
            let stat = if terminate {
                format!(
                    "tls-terminate-{port}-{}-{}-{}",
                    l.envoy_name, key.namespace, key.name
                )
            } else {
                format!("tls-{port}-{}-{}", key.namespace, key.name)
            };
            // Terminated, the backend gets TLS again when a policy says so;
            // passed through, the client's TLS is already end to end.
            let carry = if terminate {
                Carry::Stream
            } else {
                Carry::Passthrough
            };
            let proxy = tcp_proxy_filter(&stat, rr, carry, clusters);
            // Terminated: Envoy holds the listener's certificate and the
            // backend gets the plain stream (no ALPN: it is not HTTP).
            let transport_socket =
                terminate.then(|| tls_socket(&self.downstream_tls(l, Vec::new(), out)));
            chains.push(FilterChain {
                name: stat,
                filter_chain_match: Some(FilterChainMatch {
                    server_names: names,
                    ..Default::default()
                }),
                filters: vec![proxy],
                transport_socket,
                ..Default::default()
            });
        }
        chains
    }

    /// The oldest route attached to one of `listeners` (all of one port and
    /// one protocol): the one a TCP or UDP port serves. Every route attached
    /// there counts in attachedRoutes, but a port carries one stream of
    /// bytes to one set of backends, so the oldest wins (the spec's rule
    /// for conflicting routes).
    fn oldest_attached(&self, listeners: &[usize]) -> Option<&ResolvedRoute> {
        self.attachments
            .iter()
            .filter(|a| listeners.contains(&a.listener))
            .map(|a| self.routes[a.route].as_ref())
            .min_by(|a, b| a.route.age_key().cmp(&b.route.age_key()))
    }

    /// The listener of TCP port `port`: every connection proxied to the
    /// backends of its oldest TCPRoute's rule (weighted per connection); no
    /// listener when no route is attached.
    fn tcp_listener(
        &self,
        port: u32,
        listeners: &[usize],
        clusters: &mut BTreeSet<ClusterRef>,
    ) -> Option<Listener> {
        let rr = self.oldest_attached(listeners)?;
        let key = &rr.route.key;
        let stat = format!("tcp-{port}-{}-{}", key.namespace, key.name);
        let proxy = tcp_proxy_filter(&stat, rr, Carry::Stream, clusters);
        Some(Listener {
            name: format!("tcp-{port}"),
            address: Some(socket(self.bind_address, port)),
            filter_chains: vec![FilterChain {
                name: stat,
                filters: vec![proxy],
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    /// The listener of UDP port `port`: a UDP proxy sending each flow (a
    /// client address and port) to one backend of its oldest UDPRoute's
    /// rule, chosen with the backends' weights (the rule's split cluster,
    /// added to `splits`); no listener when no route is attached.
    fn udp_listener(
        &self,
        port: u32,
        listeners: &[usize],
        splits: &mut BTreeMap<String, Split>,
    ) -> Option<Listener> {
        let rr = self.oldest_attached(listeners)?;
        let key = &rr.route.key;
        let stat = format!("udp-{port}-{}-{}", key.namespace, key.name);
        // A route whose backends are all invalid names a cluster that does
        // not exist: its datagrams are dropped.
        let cluster = match rr.rules.first().and_then(Split::of) {
            Some(split) => {
                let name = format!("udproute/{}/{}", key.namespace, key.name);
                splits.insert(name.clone(), split);
                name
            }
            None => INVALID_BACKEND_CLUSTER.to_owned(),
        };
        // Every datagram matches: the match tree is only its no-match action.
        let route = OnMatch {
            on_match: Some(on_match::OnMatch::Action(TypedExtensionConfig {
                name: "route".to_owned(),
                typed_config: Some(any(&UdpRoute { cluster })),
            })),
            ..Default::default()
        };
        let proxy = UdpProxyConfig {
            stat_prefix: stat,
            route_specifier: Some(udp_proxy_config::RouteSpecifier::Matcher(Matcher {
                on_no_match: Some(Box::new(route)),
                matcher_type: None,
            })),
            ..Default::default()
        };
        Some(Listener {
            name: format!("udp-{port}"),
            address: Some(udp_socket(self.bind_address, port)),
            udp_listener_config: Some(UdpListenerConfig::default()),
            listener_filters: vec![ListenerFilter {
                name: "envoy.filters.udp_listener.udp_proxy".to_owned(),
                config_type: Some(listener_filter::ConfigType::TypedConfig(any(&proxy))),
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    /// The TLS context of a terminating listener `l`, serving its
    /// certificates (added to `out` as SDS secrets) with `alpn`.
    fn downstream_tls(
        &self,
        l: &crate::gateway::Listener,
        alpn: Vec<String>,
        out: &mut GatewayResources,
    ) -> DownstreamTlsContext {
        out.secrets
            .extend(l.certificates.iter().map(secrets::tls_certificate));
        DownstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificate_sds_secret_configs: l
                    .certificates
                    .iter()
                    .map(secrets::sds_config)
                    .collect(),
                alpn_protocols: alpn,
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn tls_socket(tls: &DownstreamTlsContext) -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.tls".to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(tls))),
    }
}

/// A network filter recording, for the connection's lifetime, that it
/// belongs to `listener`: the shared route configuration of an HTTPS port
/// matches on it.
fn record_listener(listener: &str) -> NetworkFilter {
    let value = FilterStateValue {
        key: Some(filter_state_value::Key::ObjectKey(
            super::routes::LISTENER_STATE_KEY.to_owned(),
        )),
        // A plain string object: the key is ours, not one Envoy knows.
        factory_key: "envoy.string".to_owned(),
        value: Some(filter_state_value::Value::FormatString(
            SubstitutionFormatString {
                format: Some(substitution_format_string::Format::TextFormatSource(
                    DataSource {
                        // Literal text: `%` would start a format operator.
                        specifier: Some(data_source::Specifier::InlineString(
                            listener.replace('%', "%%"),
                        )),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    NetworkFilter {
        name: "envoy.filters.network.set_filter_state".to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(any(&SetFilterState {
            on_new_connection: vec![value],
            ..Default::default()
        }))),
    }
}

/// The HTTP connection manager of one route configuration; `auth` holds
/// the `ext_authz` filters its routes enable, `edge` the Gateway's
/// settings from its ProxyParameters. Every connection manager carries the
/// edge defaults (see "Edge defaults" in ARCHITECTURE.md).
fn hcm(
    stat_prefix: &str,
    route_config: &str,
    auth: &AuthFilters,
    edge: &crate::input::EdgeSettings,
) -> NetworkFilter {
    let cors = HttpFilter {
        name: super::routes::CORS_FILTER.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(&Cors::default()))),
        ..Default::default()
    };
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
        // CORS acts only on routes whose per-filter config carries a policy;
        // it is always present so that adding the first CORS route changes
        // route configuration only, never the listener. It comes first so
        // that preflights (which carry no credentials) are answered before
        // any authorization check. The ext_authz filters (none unless a
        // route uses ExternalAuth, so other listeners are unchanged) act
        // only on the routes that enable them.
        http_filters: std::iter::once(cors)
            .chain(super::ext_authz::http_filters(auth))
            .chain(std::iter::once(router))
            .collect(),
        // Backends with appProtocol kubernetes.io/ws take WebSocket upgrades.
        upgrade_configs: vec![http_connection_manager::UpgradeConfig {
            upgrade_type: "websocket".to_owned(),
            ..Default::default()
        }],
        // The client address is the TCP peer, or the address the trusted
        // hops in front of Envoy recorded in X-Forwarded-For; nothing a
        // client writes into that header is believed beyond them.
        use_remote_address: Some(BoolValue { value: true }),
        xff_num_trusted_hops: edge.xff_num_trusted_hops,
        // Routes match on the normalised path (RFC 3986 dot segments
        // removed, `//` merged), which is also what the backend gets, so
        // `/a/../admin` or `/a//b` cannot slip past a prefix match.
        normalize_path: Some(BoolValue { value: true }),
        merge_slashes: true,
        // An encoded slash (`%2F`, `%5C`) is unescaped and the client
        // redirected to the result, so the path that is matched, the path
        // the client uses and the path the backend gets are one and the
        // same: `/public%2F..%2Fadmin` becomes a request for `/admin`,
        // routed (and authorised) as such.
        path_with_escaped_slashes_action:
            http_connection_manager::PathWithEscapedSlashesAction::UnescapeAndRedirect as i32,
        request_headers_timeout: seconds(REQUEST_HEADERS_TIMEOUT_SECONDS),
        stream_idle_timeout: seconds(STREAM_IDLE_TIMEOUT_SECONDS),
        common_http_protocol_options: Some(HttpProtocolOptions {
            idle_timeout: seconds(CONNECTION_IDLE_TIMEOUT_SECONDS),
            // `x_user` and `x-user` are one header to some backends (CGI,
            // many frameworks) and two to Envoy's matching and header
            // filters: a request carrying one is refused (400) rather
            // than risk a header smuggled past a check on the other.
            headers_with_underscores_action:
                http_protocol_options::HeadersWithUnderscoresAction::RejectRequest as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    NetworkFilter {
        name: "envoy.filters.network.http_connection_manager".to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(any(&manager))),
    }
}

/// The TCP proxy of a stream route (TLSRoute, TCPRoute): its first rule's
/// backends (the API allows one rule), or the invalid backend without one.
fn tcp_proxy_filter(
    stat: &str,
    rr: &ResolvedRoute,
    carry: Carry,
    clusters: &mut BTreeSet<ClusterRef>,
) -> NetworkFilter {
    let spec = match rr.rules.first() {
        Some(rule) => tcp_target(rule, carry, clusters),
        None => tcp_proxy::ClusterSpecifier::Cluster(INVALID_BACKEND_CLUSTER.to_owned()),
    };
    let proxy = TcpProxy {
        stat_prefix: stat.to_owned(),
        cluster_specifier: Some(spec),
        ..Default::default()
    };
    NetworkFilter {
        name: "envoy.filters.network.tcp_proxy".to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(any(&proxy))),
    }
}

fn tcp_target(
    rule: &ResolvedRule,
    carry: Carry,
    clusters: &mut BTreeSet<ClusterRef>,
) -> tcp_proxy::ClusterSpecifier {
    let weights = backend_weights(rule, clusters, carry);
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
