//! The shared route model. HTTPRoute, GRPCRoute and TLSRoute are converted
//! into it once, at the edge; everything after this point is kind-agnostic.

use crate::api::grpcroutes::{
    GrpcRoute, GrpcRouteRulesFiltersType, GrpcRouteRulesMatchesHeadersType,
    GrpcRouteRulesMatchesMethodType,
};
use crate::api::httproutes::{
    HttpRoute, HttpRouteRulesFiltersRequestRedirectPathType,
    HttpRouteRulesFiltersRequestRedirectScheme, HttpRouteRulesFiltersType,
    HttpRouteRulesFiltersUrlRewritePathType, HttpRouteRulesMatchesHeadersType,
    HttpRouteRulesMatchesPathType, HttpRouteRulesMatchesQueryParamsType,
};
use crate::api::tlsroutes::TlsRoute;
use crate::index::GATEWAY_GROUP;
use crate::input::ObjectKey;
use crate::unsupported::Field;
use crate::validate;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;

/// The route kinds Gatewright reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum RouteKind {
    Http,
    Grpc,
    Tls,
}

impl RouteKind {
    pub(crate) fn kind(self) -> &'static str {
        match self {
            Self::Http => "HTTPRoute",
            Self::Grpc => "GRPCRoute",
            Self::Tls => "TLSRoute",
        }
    }
}

/// One route of any kind.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) kind: RouteKind,
    pub(crate) key: ObjectKey,
    pub(crate) generation: Option<i64>,
    pub(crate) created: Option<Timestamp>,
    pub(crate) hostnames: Vec<String>,
    pub(crate) parents: Vec<ParentRef>,
    pub(crate) rules: Vec<Rule>,
    /// Features of the route Gatewright does not implement; a non-empty
    /// list makes every parent reject the route with UnsupportedValue.
    pub(crate) unsupported: Vec<String>,
}

impl Route {
    /// Records every value Envoy would reject as unsupported, so the route
    /// is not accepted instead of breaking its Gateway's configuration.
    fn validated(mut self) -> Self {
        let mut problems: Vec<String> = Vec::new();
        let mut check = |ri: Option<usize>, r: Result<(), String>| {
            if let Err(e) = r {
                problems.push(match ri {
                    Some(i) => format!("rule {i}: {e}"),
                    None => e,
                });
            }
        };
        for h in &self.hostnames {
            check(None, validate::hostname(h));
        }
        for (ri, rule) in self.rules.iter().enumerate() {
            let ri = Some(ri);
            for m in &rule.matches {
                match &m.path {
                    PathMatch::Exact(p) | PathMatch::Prefix(p) | PathMatch::RawPrefix(p) => {
                        check(ri, validate::path(p))
                    }
                    PathMatch::Regex(r) => check(ri, validate::regex(r)),
                }
                for v in m.headers.iter().chain(&m.query) {
                    check(ri, validate::header_name(&v.name));
                    check(
                        ri,
                        if v.regex {
                            validate::regex(&v.value)
                        } else {
                            validate::header_value(&v.value)
                        },
                    );
                }
            }
            for f in &rule.filters {
                match f {
                    Filter::RequestHeaders(h) | Filter::ResponseHeaders(h) => {
                        for (name, value) in h.set.iter().chain(&h.add) {
                            check(ri, validate::modifiable_header(name));
                            check(ri, validate::header_value(value));
                        }
                        for name in &h.remove {
                            check(ri, validate::modifiable_header(name));
                        }
                    }
                    Filter::Redirect {
                        hostname,
                        path,
                        port,
                        ..
                    } => {
                        if let Some(h) = hostname {
                            check(ri, validate::hostname(h));
                        }
                        if let Some(PathModifier::Full(p) | PathModifier::Prefix(p)) = path {
                            check(ri, validate::path(p));
                        }
                        if port.is_some_and(|p| !(1..=65535).contains(&p)) {
                            check(ri, Err(format!("invalid redirect port {port:?}")));
                        }
                    }
                    Filter::Rewrite { hostname, path } => {
                        if let Some(h) = hostname {
                            check(ri, validate::hostname(h));
                        }
                        if let Some(PathModifier::Full(p) | PathModifier::Prefix(p)) = path {
                            check(ri, validate::path(p));
                        }
                    }
                    Filter::Mirror { .. } => {}
                }
            }
        }
        self.unsupported.extend(problems);
        self
    }

    /// Precedence between routes: oldest first, then namespace/name.
    pub(crate) fn age_key(&self) -> (bool, Option<Timestamp>, &ObjectKey) {
        (self.created.is_none(), self.created, &self.key)
    }
}

/// A parentRef with defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ParentRef {
    pub(crate) group: String,
    pub(crate) kind: String,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) section_name: Option<String>,
    pub(crate) port: Option<i32>,
}

impl ParentRef {
    /// Whether this parentRef names a Gateway (as opposed to another kind).
    pub(crate) fn is_gateway(&self) -> bool {
        self.group == GATEWAY_GROUP && self.kind == "Gateway"
    }
}

#[derive(Debug, Default)]
pub(crate) struct Rule {
    pub(crate) matches: Vec<Match>,
    pub(crate) filters: Vec<Filter>,
    pub(crate) backends: Vec<BackendRef>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PathMatch {
    /// Exact path.
    Exact(String),
    /// Segment-aware prefix, without trailing slash ("" never occurs; "/" is
    /// the match-all prefix).
    Prefix(String),
    /// Plain string prefix (gRPC service matches end in "/").
    RawPrefix(String),
    /// RE2 regular expression over the path.
    Regex(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ValueMatch {
    pub(crate) name: String,
    pub(crate) value: String,
    pub(crate) regex: bool,
}

/// One match of a rule, with the precedence the spec gives it.
#[derive(Clone, Debug)]
pub(crate) struct Match {
    pub(crate) path: PathMatch,
    pub(crate) method: Option<String>,
    pub(crate) headers: Vec<ValueMatch>,
    pub(crate) query: Vec<ValueMatch>,
    /// Matches only gRPC requests (content-type application/grpc*).
    pub(crate) grpc: bool,
    pub(crate) precedence: Precedence,
}

/// Precedence of a match within a virtual host; smaller sorts first. gRPC
/// matches come before HTTP ones: they only take gRPC requests, which an
/// HTTPRoute would otherwise shadow.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Precedence {
    /// (longer service first, longer method first, more headers first).
    Grpc(
        std::cmp::Reverse<usize>,
        std::cmp::Reverse<usize>,
        std::cmp::Reverse<usize>,
    ),
    /// (exact before prefix before regex, longer path first, method first,
    /// more headers first, more query params first).
    Http(
        u8,
        std::cmp::Reverse<usize>,
        bool,
        std::cmp::Reverse<usize>,
        std::cmp::Reverse<usize>,
    ),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct HeaderModifier {
    pub(crate) set: Vec<(String, String)>,
    pub(crate) add: Vec<(String, String)>,
    pub(crate) remove: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PathModifier {
    Full(String),
    Prefix(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Filter {
    RequestHeaders(HeaderModifier),
    ResponseHeaders(HeaderModifier),
    Redirect {
        scheme: Option<String>,
        hostname: Option<String>,
        port: Option<i32>,
        path: Option<PathModifier>,
        status: Option<i64>,
    },
    Rewrite {
        hostname: Option<String>,
        path: Option<PathModifier>,
    },
    Mirror {
        backend: BackendRef,
        /// Share of requests mirrored, in millionths.
        fraction: Option<(u32, u32)>,
    },
}

/// A backendRef with defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BackendRef {
    pub(crate) group: String,
    pub(crate) kind: String,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) port: Option<i32>,
    pub(crate) weight: u32,
}

fn meta_parts(meta: &ObjectMeta) -> (ObjectKey, Option<i64>, Option<Timestamp>) {
    (
        ObjectKey::new(
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        ),
        meta.generation,
        meta.creation_timestamp.as_ref().map(|t| t.0),
    )
}

/// Converts any kind's parentRefs (same field names in every kind).
macro_rules! parents {
    ($refs:expr, $ns:expr) => {
        $refs
            .iter()
            .flatten()
            .map(|p| ParentRef {
                group: p.group.clone().unwrap_or_else(|| GATEWAY_GROUP.to_owned()),
                kind: p.kind.clone().unwrap_or_else(|| "Gateway".to_owned()),
                namespace: p.namespace.clone().unwrap_or_else(|| $ns.to_owned()),
                name: p.name.clone(),
                section_name: p.section_name.clone(),
                port: p.port,
            })
            .collect::<Vec<_>>()
    };
}

/// Converts any kind's backendRefs.
macro_rules! backend {
    ($b:expr, $ns:expr) => {
        BackendRef {
            group: $b.group.clone().unwrap_or_default(),
            kind: $b.kind.clone().unwrap_or_else(|| "Service".to_owned()),
            namespace: $b.namespace.clone().unwrap_or_else(|| $ns.to_owned()),
            name: $b.name.clone(),
            port: $b.port,
            // The API caps weights at 1,000,000; so does Gatewright, so sums
            // of up to 16 backends stay far from overflow.
            weight: u32::try_from($b.weight.unwrap_or(1))
                .unwrap_or(0)
                .min(1_000_000),
        }
    };
}

/// Converts a header modifier filter of any kind.
macro_rules! header_modifier {
    ($m:expr) => {
        HeaderModifier {
            set: $m
                .set
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
            add: $m
                .add
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
            remove: $m.remove.iter().flatten().cloned().collect(),
        }
    };
}

/// Converts a mirror filter of any kind.
macro_rules! mirror {
    ($m:expr, $ns:expr) => {{
        let fraction = match (&$m.percent, &$m.fraction) {
            (Some(p), _) => Some((u32::try_from(*p).unwrap_or(0).min(100), 100)),
            (None, Some(f)) => Some((
                u32::try_from(f.numerator).unwrap_or(0),
                u32::try_from(f.denominator.unwrap_or(100))
                    .unwrap_or(100)
                    .max(1),
            )),
            (None, None) => None,
        };
        let b = &$m.backend_ref;
        Filter::Mirror {
            backend: BackendRef {
                group: b.group.clone().unwrap_or_default(),
                kind: b.kind.clone().unwrap_or_else(|| "Service".to_owned()),
                namespace: b.namespace.clone().unwrap_or_else(|| $ns.to_owned()),
                name: b.name.clone(),
                port: b.port,
                weight: 1,
            },
            fraction,
        }
    }};
}

/// Keeps the first match per header name (names compare case-insensitively).
fn dedup_headers(list: &mut Vec<ValueMatch>) {
    let mut seen = std::collections::HashSet::new();
    list.retain(|h| seen.insert(h.name.clone()));
}

fn http_path(kind: Option<&HttpRouteRulesMatchesPathType>, value: Option<&str>) -> PathMatch {
    let value = value.unwrap_or("/");
    match kind.unwrap_or(&HttpRouteRulesMatchesPathType::PathPrefix) {
        HttpRouteRulesMatchesPathType::Exact => PathMatch::Exact(value.to_owned()),
        HttpRouteRulesMatchesPathType::RegularExpression => PathMatch::Regex(value.to_owned()),
        HttpRouteRulesMatchesPathType::PathPrefix => {
            // A trailing slash does not change a segment-aware prefix.
            let trimmed = value.trim_end_matches('/');
            PathMatch::Prefix(if trimmed.is_empty() {
                "/".to_owned()
            } else {
                trimmed.to_owned()
            })
        }
    }
}

pub(crate) fn from_http(r: &HttpRoute) -> Route {
    let (key, generation, created) = meta_parts(&r.metadata);
    let ns = key.namespace.clone();
    let mut unsupported: Vec<String> = crate::unsupported::http_route(r)
        .iter()
        .map(Field::to_string)
        .collect();
    let rules = r
        .spec
        .rules
        .iter()
        .flatten()
        .enumerate()
        .map(|(ri, rule)| {
            let mut matches: Vec<Match> = rule
                .matches
                .iter()
                .flatten()
                .map(|m| {
                    let path = m.path.as_ref().map_or_else(
                        || PathMatch::Prefix("/".to_owned()),
                        |p| http_path(p.r#type.as_ref(), p.value.as_deref()),
                    );
                    let mut headers: Vec<ValueMatch> = m
                        .headers
                        .iter()
                        .flatten()
                        .map(|h| ValueMatch {
                            name: h.name.to_ascii_lowercase(),
                            value: h.value.clone(),
                            regex: matches!(h.r#type, Some(HttpRouteRulesMatchesHeadersType::RegularExpression)),
                        })
                        .collect();
                    dedup_headers(&mut headers);
                    let mut query: Vec<ValueMatch> = m
                        .query_params
                        .iter()
                        .flatten()
                        .map(|q| ValueMatch {
                            name: q.name.clone(),
                            value: q.value.clone(),
                            regex: matches!(q.r#type, Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression)),
                        })
                        .collect();
                    // Query parameter names are case-sensitive; first one wins.
                    let mut seen = std::collections::HashSet::new();
                    query.retain(|q| seen.insert(q.name.clone()));
                    let method = m.method.as_ref().and_then(|m| {
                        serde_json::to_value(m).ok().and_then(|v| v.as_str().map(str::to_owned))
                    });
                    let (rank, len) = match &path {
                        PathMatch::Exact(p) => (0, p.len()),
                        PathMatch::Prefix(p) | PathMatch::RawPrefix(p) => (1, p.len()),
                        PathMatch::Regex(p) => (2, p.len()),
                    };
                    let precedence = Precedence::Http(
                        rank,
                        std::cmp::Reverse(len),
                        method.is_none(),
                        std::cmp::Reverse(headers.len()),
                        std::cmp::Reverse(query.len()),
                    );
                    Match { path, method, headers, query, grpc: false, precedence }
                })
                .collect();
            if matches.is_empty() {
                matches.push(Match {
                    path: PathMatch::Prefix("/".to_owned()),
                    method: None,
                    headers: vec![],
                    query: vec![],
                    grpc: false,
                    precedence: Precedence::Http(1, std::cmp::Reverse(1), true, std::cmp::Reverse(0), std::cmp::Reverse(0)),
                });
            }
            let mut filters = Vec::new();
            for f in rule.filters.iter().flatten() {
                match f.r#type {
                    HttpRouteRulesFiltersType::RequestHeaderModifier => {
                        if let Some(m) = &f.request_header_modifier {
                            filters.push(Filter::RequestHeaders(header_modifier!(m)));
                        }
                    }
                    HttpRouteRulesFiltersType::ResponseHeaderModifier => {
                        if let Some(m) = &f.response_header_modifier {
                            filters.push(Filter::ResponseHeaders(header_modifier!(m)));
                        }
                    }
                    HttpRouteRulesFiltersType::RequestRedirect => {
                        if let Some(rd) = &f.request_redirect {
                            filters.push(Filter::Redirect {
                                scheme: rd.scheme.as_ref().map(|s| {
                                    match s {
                                        HttpRouteRulesFiltersRequestRedirectScheme::Http => "http",
                                        HttpRouteRulesFiltersRequestRedirectScheme::Https => "https",
                                    }
                                    .to_owned()
                                }),
                                hostname: rd.hostname.clone(),
                                port: rd.port,
                                path: rd.path.as_ref().and_then(|p| match p.r#type {
                                    HttpRouteRulesFiltersRequestRedirectPathType::ReplaceFullPath => {
                                        p.replace_full_path.clone().map(PathModifier::Full)
                                    }
                                    HttpRouteRulesFiltersRequestRedirectPathType::ReplacePrefixMatch => {
                                        p.replace_prefix_match.clone().map(PathModifier::Prefix)
                                    }
                                }),
                                status: rd.status_code,
                            });
                        }
                    }
                    HttpRouteRulesFiltersType::UrlRewrite => {
                        if let Some(rw) = &f.url_rewrite {
                            filters.push(Filter::Rewrite {
                                hostname: rw.hostname.clone(),
                                path: rw.path.as_ref().and_then(|p| match p.r#type {
                                    HttpRouteRulesFiltersUrlRewritePathType::ReplaceFullPath => {
                                        p.replace_full_path.clone().map(PathModifier::Full)
                                    }
                                    HttpRouteRulesFiltersUrlRewritePathType::ReplacePrefixMatch => {
                                        p.replace_prefix_match.clone().map(PathModifier::Prefix)
                                    }
                                }),
                            });
                        }
                    }
                    HttpRouteRulesFiltersType::RequestMirror => {
                        if let Some(m) = &f.request_mirror {
                            filters.push(mirror!(m, ns));
                        }
                    }
                    HttpRouteRulesFiltersType::ExtensionRef => {
                        unsupported.push(format!("rule {ri}: {}", Field::ExtensionRefFilter));
                    }
                    HttpRouteRulesFiltersType::Cors => {
                        unsupported.push(format!("rule {ri}: {}", Field::CorsFilter));
                    }
                    HttpRouteRulesFiltersType::ExternalAuth => {
                        unsupported.push(format!("rule {ri}: {}", Field::ExternalAuthFilter));
                    }
                }
            }
            unsupported.extend(crate::unsupported::http_rule(rule).into_iter().map(|f| format!("rule {ri}: {f}")));
            let backends = rule
                .backend_refs
                .iter()
                .flatten()
                .map(|b| backend!(b, ns))
                .collect();
            Rule { matches, filters, backends }
        })
        .collect();
    Route {
        kind: RouteKind::Http,
        hostnames: r.spec.hostnames.clone().unwrap_or_default(),
        parents: parents!(r.spec.parent_refs, ns),
        key,
        generation,
        created,
        rules,
        unsupported,
    }
    .validated()
}

pub(crate) fn from_grpc(r: &GrpcRoute) -> Route {
    let (key, generation, created) = meta_parts(&r.metadata);
    let ns = key.namespace.clone();
    let mut unsupported: Vec<String> = crate::unsupported::grpc_route(r)
        .iter()
        .map(Field::to_string)
        .collect();
    let rules = r
        .spec
        .rules
        .iter()
        .flatten()
        .enumerate()
        .map(|(ri, rule)| {
            let mut matches: Vec<Match> = Vec::new();
            for m in rule.matches.iter().flatten() {
                let mut headers: Vec<ValueMatch> = m
                    .headers
                    .iter()
                    .flatten()
                    .map(|h| ValueMatch {
                        name: h.name.to_ascii_lowercase(),
                        value: h.value.clone(),
                        regex: matches!(
                            h.r#type,
                            Some(GrpcRouteRulesMatchesHeadersType::RegularExpression)
                        ),
                    })
                    .collect();
                dedup_headers(&mut headers);
                let (service, method, regex) = match &m.method {
                    Some(mm) => (
                        mm.service.clone().unwrap_or_default(),
                        mm.method.clone().unwrap_or_default(),
                        matches!(
                            mm.r#type,
                            Some(GrpcRouteRulesMatchesMethodType::RegularExpression)
                        ),
                    ),
                    None => (String::new(), String::new(), false),
                };
                let path = match (service.is_empty(), method.is_empty(), regex) {
                    (true, true, _) => PathMatch::RawPrefix("/".to_owned()),
                    (false, false, false) => PathMatch::Exact(format!("/{service}/{method}")),
                    (false, true, false) => PathMatch::RawPrefix(format!("/{service}/")),
                    (true, false, false) => {
                        PathMatch::Regex(format!("/[^/]+/{}", regex_escape(&method)))
                    }
                    (_, _, true) => {
                        let s = if service.is_empty() {
                            "[^/]+".to_owned()
                        } else {
                            service.clone()
                        };
                        let m = if method.is_empty() {
                            "[^/]+".to_owned()
                        } else {
                            method.clone()
                        };
                        PathMatch::Regex(format!("/{s}/{m}"))
                    }
                };
                let precedence = Precedence::Grpc(
                    std::cmp::Reverse(service.len()),
                    std::cmp::Reverse(method.len()),
                    std::cmp::Reverse(headers.len()),
                );
                matches.push(Match {
                    path,
                    method: None,
                    headers,
                    query: vec![],
                    grpc: true,
                    precedence,
                });
            }
            if matches.is_empty() {
                matches.push(Match {
                    path: PathMatch::RawPrefix("/".to_owned()),
                    method: None,
                    headers: vec![],
                    query: vec![],
                    grpc: true,
                    precedence: Precedence::Grpc(
                        std::cmp::Reverse(0),
                        std::cmp::Reverse(0),
                        std::cmp::Reverse(0),
                    ),
                });
            }
            let mut filters = Vec::new();
            for f in rule.filters.iter().flatten() {
                match f.r#type {
                    GrpcRouteRulesFiltersType::RequestHeaderModifier => {
                        if let Some(m) = &f.request_header_modifier {
                            filters.push(Filter::RequestHeaders(header_modifier!(m)));
                        }
                    }
                    GrpcRouteRulesFiltersType::ResponseHeaderModifier => {
                        if let Some(m) = &f.response_header_modifier {
                            filters.push(Filter::ResponseHeaders(header_modifier!(m)));
                        }
                    }
                    GrpcRouteRulesFiltersType::RequestMirror => {
                        if let Some(m) = &f.request_mirror {
                            filters.push(mirror!(m, ns));
                        }
                    }
                    GrpcRouteRulesFiltersType::ExtensionRef => {
                        unsupported.push(format!("rule {ri}: {}", Field::ExtensionRefFilter));
                    }
                }
            }
            unsupported.extend(
                crate::unsupported::grpc_rule(rule)
                    .into_iter()
                    .map(|f| format!("rule {ri}: {f}")),
            );
            let backends = rule
                .backend_refs
                .iter()
                .flatten()
                .map(|b| backend!(b, ns))
                .collect();
            Rule {
                matches,
                filters,
                backends,
            }
        })
        .collect();
    Route {
        kind: RouteKind::Grpc,
        hostnames: r.spec.hostnames.clone().unwrap_or_default(),
        parents: parents!(r.spec.parent_refs, ns),
        key,
        generation,
        created,
        rules,
        unsupported,
    }
    .validated()
}

pub(crate) fn from_tls(r: &TlsRoute) -> Route {
    let (key, generation, created) = meta_parts(&r.metadata);
    let ns = key.namespace.clone();
    let rules = r
        .spec
        .rules
        .iter()
        .map(|rule| Rule {
            matches: vec![],
            filters: vec![],
            backends: rule.backend_refs.iter().map(|b| backend!(b, ns)).collect(),
        })
        .collect();
    Route {
        kind: RouteKind::Tls,
        hostnames: r.spec.hostnames.clone(),
        parents: parents!(r.spec.parent_refs, ns),
        key,
        generation,
        created,
        rules,
        unsupported: crate::unsupported::tls_route(r)
            .iter()
            .map(Field::to_string)
            .collect(),
    }
    .validated()
}

/// Escapes RE2 metacharacters so `s` matches literally.
pub(crate) fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
