//! Route configurations (RDS): one virtual host per served hostname, one
//! Envoy route per rule match, with the rule's filters as route actions.

use super::Emitter;
use super::clusters::{Carry, INVALID_BACKEND_CLUSTER, backend_weights};
use super::ext_authz::{self, AuthFilters};
use crate::attach::ResolvedRule;
use crate::backend::ClusterRef;
use crate::hostname;
use crate::model::{
    Cors, Filter, HeaderModifier, Match, PathMatch, PathModifier, Retry, RouteKind, Rule, Timeouts,
    ValueMatch, regex_escape,
};
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, Metadata, RuntimeFractionalPercent, header_value_option,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction, RetryPolicy, Route,
    RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster, header_matcher,
    query_parameter_matcher, redirect_action, retry_policy, route, route_action, route_match,
    weighted_cluster,
};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::ExtAuthz;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    FilterStateMatcher, RegexMatchAndSubstitute, RegexMatcher, StringMatcher, filter_state_matcher,
    string_matcher,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};
use envoy_types::pb::google::protobuf::{
    BoolValue, Duration as ProtoDuration, Struct, UInt32Value, Value, value,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// One emitted Envoy route with what emitting it added to its Gateway: the
/// clusters it sends to and the `ext_authz` filters it enables.
#[derive(Debug)]
pub(crate) struct Emitted {
    route: Route,
    clusters: Vec<ClusterRef>,
    auth: Vec<(String, ExtAuthz)>,
}

/// The Envoy routes emitted from one resolved route, by port, whether the
/// port serves TLS, rule and match.
pub(crate) type EmittedRoutes = Mutex<HashMap<(i32, bool, usize, usize), Arc<Emitted>>>;

impl Emitter<'_, '_> {
    /// The route configuration of `port`, serving `listeners` (among which
    /// hostnames are owned). With `by_sni`, the listeners are HTTPS ones
    /// selected by SNI, each in its own filter chain, and share this one
    /// configuration: each chain records its listener in the connection's
    /// filter state ([`LISTENER_STATE_KEY`]) and a host's routes match only
    /// on its owner's connections. A client that reuses a connection for
    /// another listener's hostname gets 421 Misdirected Request and opens a
    /// new one rather than being served by the wrong listener's routes; a
    /// host no listener owns gets 404. One shared configuration keeps the
    /// size linear in the listeners: a configuration per listener would
    /// name every hostname of the port in each.
    pub(super) fn route_config(
        &self,
        name: &str,
        port: i32,
        listeners: &[usize],
        by_sni: bool,
        clusters: &mut BTreeSet<ClusterRef>,
        auth: &mut AuthFilters,
    ) -> RouteConfiguration {
        // Every hostname a route serves here, and every listener hostname,
        // gets a virtual host (a listener hostname always has its own, so
        // requests for it never fall through to a wildcard listener).
        let mut domains: BTreeSet<&str> = BTreeSet::new();
        // Redirects without a port keep the listener's, written out unless
        // it is the well-known one of the listener's scheme.
        let tls = listeners.iter().any(|&li| {
            self.gateway.listeners[li].protocol == Some(crate::gateway::Protocol::Https)
        });
        // (listener, route, hostname) for each hostname an attachment serves,
        // split into exact names (looked up directly) and wildcards.
        let mut exact: BTreeMap<&str, Vec<(usize, usize)>> = BTreeMap::new();
        let mut wild: Vec<(&str, usize, usize)> = Vec::new();
        for &li in listeners {
            match &self.gateway.listeners[li].hostname {
                Some(h) => {
                    domains.insert(h);
                }
                // On a shared configuration, a listener without hostname
                // owns every Host no other listener names: other listeners'
                // connections must learn so (421) from a catch-all.
                None if by_sni => {
                    domains.insert("*");
                }
                None => {}
            }
        }
        // A port can carry hundreds of listeners (ListenerSets), and every
        // HTTPS listener has its own configuration naming all the port's
        // hostnames: look members and owners up instead of scanning. A
        // listener named exactly as a host owns it (exact names are the most
        // specific; the first one on a tie).
        let on_port: HashSet<usize> = listeners.iter().copied().collect();
        let mut exact_owner: HashMap<&str, usize> = HashMap::new();
        for &li in listeners {
            if let Some(h) = self.gateway.listeners[li].hostname.as_deref()
                && !h.starts_with('*')
            {
                exact_owner.entry(h).or_insert(li);
            }
        }
        let owner_of = |host: &str| {
            exact_owner
                .get(host)
                .copied()
                .or_else(|| self.owner(listeners, host))
        };
        for a in self
            .attachments
            .iter()
            .filter(|a| on_port.contains(&a.listener))
        {
            for h in &a.hostnames {
                if owner_of(h) != Some(a.listener) {
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
                let owner = owner_of(domain);
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
                                (route_host_rank(route, h), &m.precedence, route.age_key()),
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
                let mut routes = Vec::with_capacity(entries.len() + 2);
                for &(_, ri, rule_i, mi) in &entries {
                    routes.push(self.route_memoised(port, tls, ri, rule_i, mi, clusters, auth));
                }
                if by_sni && let Some(li) = owner {
                    let listener = &self.gateway.listeners[li].envoy_name;
                    for r in &mut routes {
                        if let Some(m) = r.r#match.as_mut() {
                            m.filter_state.push(on_listener(listener));
                        }
                    }
                    routes.push(direct(format!("not-found:{listener}"), Some(listener), 404));
                    routes.push(direct("misdirected".to_owned(), None, 421));
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

    /// [`Self::route`], taken from what an earlier call emitted for the
    /// same resolved route, port and scheme when there is one: a route is
    /// re-emitted only when it was resolved anew (see [`crate::memo`]).
    #[allow(clippy::too_many_arguments)]
    fn route_memoised(
        &self,
        port: i32,
        tls: bool,
        ri: usize,
        rule_i: usize,
        mi: usize,
        clusters: &mut BTreeSet<ClusterRef>,
        auth: &mut AuthFilters,
    ) -> Route {
        if !self.keep {
            return self.route(port, tls, ri, rule_i, mi, clusters, auth);
        }
        let memo = &self.routes[ri].emitted;
        let key = (port, tls, rule_i, mi);
        // A poisoned lock only loses the memo: emit afresh.
        let cached = memo.lock().ok().and_then(|m| m.get(&key).cloned());
        let emitted = cached.unwrap_or_else(|| {
            let mut own_clusters = BTreeSet::new();
            let mut own_auth = AuthFilters::new();
            let route = self.route(port, tls, ri, rule_i, mi, &mut own_clusters, &mut own_auth);
            let emitted = Arc::new(Emitted {
                route,
                clusters: own_clusters.into_iter().collect(),
                auth: own_auth.into_iter().collect(),
            });
            if let Ok(mut m) = memo.lock() {
                m.insert(key, Arc::clone(&emitted));
            }
            emitted
        });
        // What `route` would have added; the first filter of a name wins,
        // as in `route`.
        for c in &emitted.clusters {
            if !clusters.contains(c) {
                clusters.insert(c.clone());
            }
        }
        for (name, config) in &emitted.auth {
            if !auth.contains_key(name) {
                auth.insert(name.clone(), config.clone());
            }
        }
        emitted.route.clone()
    }

    /// The Envoy route of match `mi` of rule `rule_i` of route `ri`; the
    /// clusters and `ext_authz` filters it uses are added to `clusters` and
    /// `auth`.
    #[allow(clippy::too_many_arguments)]
    fn route(
        &self,
        port: i32,
        tls: bool,
        ri: usize,
        rule_i: usize,
        mi: usize,
        clusters: &mut BTreeSet<ClusterRef>,
        auth: &mut AuthFilters,
    ) -> Route {
        let rr = &self.routes[ri];
        let rule = &rr.route.rules[rule_i];
        let resolved = &rr.rules[rule_i];
        let m = &rule.matches[mi];
        let mut out = Route {
            name: route_name(
                rr.route.kind,
                &rr.route.key,
                rule.name.as_deref(),
                rule_i,
                mi,
            ),
            r#match: Some(route_match(m)),
            metadata: rule.name.as_deref().map(rule_metadata),
            ..Default::default()
        };
        let mut rewrite = None;
        let mut redirect = None;
        // Each ExternalAuth filter's service, in filter order.
        let mut auth_services = resolved.auth.iter();
        // Set when a filter's service cannot be asked: the rule then denies
        // every request instead of serving it unchecked.
        let mut auth_unusable = false;
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
                Filter::Cors(c) => {
                    out.typed_per_filter_config
                        .insert(CORS_FILTER.to_owned(), super::any(&cors_policy(c)));
                }
                Filter::ExternalAuth(a) => match auth_services.next() {
                    Some(Ok(c)) if !c.refused() => {
                        if !clusters.contains(c) {
                            clusters.insert(c.clone());
                        }
                        let (name, config) = ext_authz::filter(a, c);
                        out.typed_per_filter_config
                            .insert(name.clone(), ext_authz::enabled_on_route());
                        auth.entry(name).or_insert(config);
                    }
                    _ => auth_unusable = true,
                },
            }
        }
        if auth_unusable {
            // The spec's "MUST fail closed": no request of the rule reaches
            // its backends (or redirects) without the check.
            out.typed_per_filter_config.clear();
            out.action = Some(route::Action::DirectResponse(DirectResponseAction {
                status: 500,
                ..Default::default()
            }));
            return out;
        }
        out.action = Some(match redirect {
            Some(Filter::Redirect {
                scheme,
                hostname,
                port: to_port,
                path,
                status,
            }) => route::Action::Redirect(redirect_action(
                (port, tls),
                &m.path,
                scheme,
                hostname,
                *to_port,
                path,
                *status,
            )),
            _ => match route_action(rule, resolved, clusters) {
                Some(mut action) => {
                    if rule.backends.iter().any(|b| !b.filters.is_empty()) {
                        move_headers_to_backends(&mut out, &mut action);
                    }
                    apply_timeouts(&mut action, rule.timeouts, rule.retry.as_ref());
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
                                // The mirror sees the Host the client sent,
                                // not Envoy's default "<host>-shadow".
                                disable_shadow_host_suffix_append: true,
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

/// Precedence of a route for the hostname `served` it serves (its
/// hostname's intersection with the listener's), by the route's own
/// hostname that gave it: a route written for `abc.example.com` comes
/// before one written for `*.example.com`, even where the listener's
/// hostname narrows both to `abc.example.com` (GEP-1713's "original
/// hostname" precedence; conformance feature
/// GatewayRouteHostnameIntersectionPrecedence).
pub(super) fn route_host_rank(
    route: &crate::model::Route,
    served: &str,
) -> (u8, std::cmp::Reverse<usize>) {
    if route.hostnames.is_empty() {
        return host_rank("*");
    }
    route
        .hostnames
        .iter()
        .filter(|h| hostname::intersect(h, served).is_some())
        .map(|h| host_rank(h))
        .min()
        .unwrap_or_else(|| host_rank(served))
}

/// Precedence of a hostname, smaller first: exact names, longest first;
/// then wildcards, longest first; then `*` (no hostname).
fn host_rank(h: &str) -> (u8, std::cmp::Reverse<usize>) {
    match h {
        "*" => (2, std::cmp::Reverse(0)),
        w if w.starts_with('*') => (1, std::cmp::Reverse(w.len())),
        e => (0, std::cmp::Reverse(e.len())),
    }
}

/// `<kind>/<namespace>/<name>/rule/<i>/match/<j>`, built in one allocation:
/// there is one per Envoy route.
/// The Envoy route name of match `m` of a rule: by the rule's `name` when
/// it has one (so access logs, stats and config dumps show it), else by
/// its index.
fn route_name(
    kind: RouteKind,
    key: &crate::input::ObjectKey,
    rule_name: Option<&str>,
    rule: usize,
    m: usize,
) -> String {
    use std::fmt::Write as _;
    let slug = kind_slug(kind);
    let mut name = String::with_capacity(slug.len() + key.namespace.len() + key.name.len() + 40);
    let _ = match rule_name {
        Some(n) => write!(
            name,
            "{slug}/{}/{}/rule/{n}/match/{m}",
            key.namespace, key.name
        ),
        None => write!(
            name,
            "{slug}/{}/{}/rule/{rule}/match/{m}",
            key.namespace, key.name
        ),
    };
    name
}

/// Route metadata naming the rule, under the `gatewright.dev` filter key.
/// One field only: prost encodes `Struct` maps in hash order, and a single
/// entry keeps the encoding, and so the xDS version, stable.
fn rule_metadata(rule_name: &str) -> Metadata {
    let rule = Value {
        kind: Some(value::Kind::StringValue(rule_name.to_owned())),
    };
    Metadata {
        filter_metadata: [(
            "gatewright.dev".to_owned(),
            Struct {
                fields: [("rule".to_owned(), rule)].into_iter().collect(),
            },
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    }
}

fn kind_slug(k: RouteKind) -> &'static str {
    match k {
        RouteKind::Http => "httproute",
        RouteKind::Grpc => "grpcroute",
        RouteKind::Tls => "tlsroute",
        RouteKind::Tcp => "tcproute",
        RouteKind::Udp => "udproute",
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

/// The name of Envoy's CORS HTTP filter, which per-route policies key on.
pub(super) const CORS_FILTER: &str = "envoy.filters.http.cors";

/// Envoy's CORS policy for a rule's `CORS` filter. Envoy answers every
/// preflight of such a route itself, matching or not, so none reaches the
/// backend; it echoes the request's Origin rather than `*`, which is right
/// with and without credentials. A lone `*` in methods or headers makes
/// Envoy echo what the preflight asked for, never a literal `*`.
fn cors_policy(c: &Cors) -> CorsPolicy {
    let join = |v: &[String]| {
        if v.iter().any(|x| x == "*") {
            "*".to_owned()
        } else {
            v.join(",")
        }
    };
    CorsPolicy {
        allow_origin_string_match: c
            .origin_patterns()
            .unwrap_or_default()
            .into_iter()
            // Schemes and host names compare without case.
            .map(|p| StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::SafeRegex(regex(&format!(
                    "(?i){p}"
                )))),
                ignore_case: false,
            })
            .collect(),
        allow_methods: join(&c.methods),
        allow_headers: join(&c.headers),
        expose_headers: join(&c.expose),
        max_age: c.max_age.to_string(),
        allow_credentials: c.credentials.then_some(BoolValue { value: true }),
        forward_not_matching_preflights: Some(BoolValue { value: false }),
        ..Default::default()
    }
}

/// The route action of a rule some of whose backendRefs have filters: one
/// weighted cluster per backendRef (two refs to one Service with different
/// filters stay two entries), each with its own header changes.
fn filtered_route_action(
    rule: &Rule,
    resolved: &ResolvedRule,
    clusters: &mut BTreeSet<ClusterRef>,
) -> Option<RouteAction> {
    let mut entries: Vec<(String, u32, &[Filter])> = Vec::new();
    for ((target, weight), backend) in resolved.backends.iter().zip(&rule.backends) {
        if *weight == 0 {
            continue;
        }
        let name = super::clusters::cluster_name(target, clusters, Carry::Http);
        match entries
            .iter_mut()
            .find(|(n, _, f)| *n == name && *f == backend.filters.as_slice())
        {
            Some(entry) => entry.1 = entry.1.saturating_add(*weight),
            None => entries.push((name, *weight, &backend.filters)),
        }
    }
    if entries.iter().all(|(n, _, _)| n == INVALID_BACKEND_CLUSTER) {
        return None;
    }
    let clusters = entries
        .into_iter()
        .map(|(name, weight, filters)| {
            let mut w = weighted_cluster::ClusterWeight {
                name,
                weight: Some(UInt32Value { value: weight }),
                ..Default::default()
            };
            for f in filters {
                match f {
                    Filter::RequestHeaders(h) => {
                        let (add, remove) = header_ops(h);
                        w.request_headers_to_add.extend(add);
                        w.request_headers_to_remove.extend(remove);
                    }
                    Filter::ResponseHeaders(h) => {
                        let (add, remove) = header_ops(h);
                        w.response_headers_to_add.extend(add);
                        w.response_headers_to_remove.extend(remove);
                    }
                    // Conversion keeps only header modifiers on backendRefs.
                    _ => {}
                }
            }
            w
        })
        .collect();
    Some(RouteAction {
        cluster_specifier: Some(route_action::ClusterSpecifier::WeightedClusters(
            WeightedCluster {
                clusters,
                ..Default::default()
            },
        )),
        cluster_not_found_response_code:
            route_action::ClusterNotFoundResponseCode::InternalServerError as i32,
        ..Default::default()
    })
}

/// Moves a route's own header changes onto each weighted cluster of its
/// action, ahead of that backendRef's: Envoy applies route-level changes
/// after a weighted cluster's, so left on the route they would override a
/// backendRef's value for the same header, the more specific one.
fn move_headers_to_backends(out: &mut Route, action: &mut RouteAction) {
    let Some(route_action::ClusterSpecifier::WeightedClusters(w)) = &mut action.cluster_specifier
    else {
        return;
    };
    let req_add = std::mem::take(&mut out.request_headers_to_add);
    let req_remove = std::mem::take(&mut out.request_headers_to_remove);
    let resp_add = std::mem::take(&mut out.response_headers_to_add);
    let resp_remove = std::mem::take(&mut out.response_headers_to_remove);
    for c in &mut w.clusters {
        c.request_headers_to_add
            .splice(0..0, req_add.iter().cloned());
        c.request_headers_to_remove
            .splice(0..0, req_remove.iter().cloned());
        c.response_headers_to_add
            .splice(0..0, resp_add.iter().cloned());
        c.response_headers_to_remove
            .splice(0..0, resp_remove.iter().cloned());
    }
}

/// What Envoy retries on once a rule has a `retry`: connection failures
/// (`connect-failure`), streams the backend refused (`refused-stream`), and
/// attempts that got no response at all, a disconnect, a reset or the
/// per-attempt timeout among them (`reset`), as GEP-1731 asks. Response
/// codes only with `retry.codes` (see [`apply_timeouts`]).
const RETRY_ON_CONNECTION_ERRORS: &str = "connect-failure,refused-stream,reset";

/// Envoy rejects a zero retry back-off, and rounds anything shorter than a
/// millisecond up to one: a `retry.backoff` of `0s` (no least wait)
/// becomes this.
const SHORTEST_BACKOFF: std::time::Duration = std::time::Duration::from_millis(1);

/// Sets the rule's timeouts and retries on `action`. Envoy's own default
/// (15 s for the whole request) is never left in place: without `timeouts`
/// a request may take as long as it needs (gRPC streams, long polls), and
/// only the connection manager's stream idle timeout bounds it.
///
/// Without retries (no `retry`, or `attempts: 0`) there is one attempt, and
/// `backendRequest` alone is the route timeout. With retries,
/// `backendRequest` bounds each attempt (Envoy's per-try timeout, after
/// which the attempt is retried) and only `request` bounds the whole,
/// retries and back-offs included, so several attempts fit.
fn apply_timeouts(action: &mut RouteAction, t: Timeouts, retry: Option<&Retry>) {
    let retry = retry.filter(|r| r.attempts > 0);
    let request = match retry {
        Some(_) => t.request.unwrap_or_default(),
        None => t.request.or(t.backend_request).unwrap_or_default(),
    };
    action.timeout = Some(duration(request));
    // The connection manager resets a stream idle for
    // STREAM_IDLE_TIMEOUT_SECONDS; a route that allows a longer wait (a
    // slow backend, a quiet long poll) raises that limit for itself, so
    // its own timeout is what ends the request. `0s` (no timeout) keeps
    // the idle limit: a stalled stream is still reset.
    let longest = [t.request, t.backend_request]
        .into_iter()
        .flatten()
        .filter(|d| !d.is_zero())
        .max();
    if let Some(longest) = longest
        && longest
            > std::time::Duration::from_secs(
                super::listeners::STREAM_IDLE_TIMEOUT_SECONDS.unsigned_abs(),
            )
    {
        action.idle_timeout = Some(duration(longest));
    }
    // A per-attempt limit below the whole request's: one attempt may not
    // use up the time left for the others.
    let per_try = t
        .backend_request
        .filter(|b| !b.is_zero() && (retry.is_some() || (t.request.is_some() && *b != request)));
    let Some(r) = retry else {
        if let Some(b) = per_try {
            action.retry_policy = Some(RetryPolicy {
                per_try_timeout: Some(duration(b)),
                ..Default::default()
            });
        }
        return;
    };
    let mut retry_on = RETRY_ON_CONNECTION_ERRORS.to_owned();
    if !r.codes.is_empty() {
        retry_on.push_str(",retriable-status-codes");
    }
    action.retry_policy = Some(RetryPolicy {
        retry_on,
        num_retries: Some(UInt32Value { value: r.attempts }),
        retriable_status_codes: r.codes.clone(),
        per_try_timeout: per_try.map(duration),
        // Envoy's back-off is exponential from this base, capped at ten
        // times it, and fully jittered.
        retry_back_off: r.backoff.map(|b| retry_policy::RetryBackOff {
            base_interval: Some(duration(b.max(SHORTEST_BACKOFF))),
            max_interval: None,
        }),
        ..Default::default()
    });
}

fn duration(d: std::time::Duration) -> ProtoDuration {
    ProtoDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// The route action for a rule's backends, or None when every request must
/// get a 500 (no backends, all weights zero, or nothing valid to send to).
fn route_action(
    rule: &Rule,
    resolved: &ResolvedRule,
    clusters: &mut BTreeSet<ClusterRef>,
) -> Option<RouteAction> {
    if rule.backends.iter().any(|b| !b.filters.is_empty()) {
        return filtered_route_action(rule, resolved, clusters);
    }
    let mut weights = backend_weights(resolved, clusters, Carry::Http);
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

/// `listener` is the port and whether it speaks HTTPS.
fn redirect_action(
    listener: (i32, bool),
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
        (None, None) if listener == (80, false) || listener == (443, true) => 0,
        (None, None) => u32::try_from(listener.0).unwrap_or(0),
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

/// The filter state key under which an HTTPS filter chain records its
/// Gateway listener (by Envoy name), for a shared route configuration.
pub(super) const LISTENER_STATE_KEY: &str = "gatewright.listener";

/// Matches requests on connections of `listener`.
fn on_listener(listener: &str) -> FilterStateMatcher {
    FilterStateMatcher {
        key: LISTENER_STATE_KEY.to_owned(),
        matcher: Some(filter_state_matcher::Matcher::StringMatch(exact(listener))),
    }
}

/// A route answering `status` itself to any path, on connections of
/// `listener` only when given.
fn direct(name: String, listener: Option<&str>, status: u32) -> Route {
    Route {
        name,
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_owned())),
            filter_state: listener.map(on_listener).into_iter().collect(),
            ..Default::default()
        }),
        action: Some(route::Action::DirectResponse(DirectResponseAction {
            status,
            ..Default::default()
        })),
        ..Default::default()
    }
}
