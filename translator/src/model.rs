//! The shared route model. HTTPRoute, GRPCRoute, TLSRoute, TCPRoute and
//! UDPRoute are converted into it once, at the edge (see [`convert`]); everything after this point
//! is kind-agnostic.

mod convert;

pub(crate) use convert::StatusParent;

use crate::index::GATEWAY_GROUP;
use crate::input::ObjectKey;
use crate::validate;
use k8s_openapi::jiff::Timestamp;

/// The route kinds Gatewright reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum RouteKind {
    Http,
    Grpc,
    Tls,
    Tcp,
    Udp,
}

impl RouteKind {
    pub(crate) fn kind(self) -> &'static str {
        match self {
            Self::Http => "HTTPRoute",
            Self::Grpc => "GRPCRoute",
            Self::Tls => "TLSRoute",
            Self::Tcp => "TCPRoute",
            Self::Udp => "UDPRoute",
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
    /// `spec.useDefaultGateways: All`: every default Gateway of ours (one
    /// with `spec.defaultScope: All`) claims the route, as if its
    /// parentRefs named it; see [`crate::attach`].
    pub(crate) use_default_gateways: bool,
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
                // Gatewright's Envoys refuse every request carrying a
                // header whose name has an underscore (see "Edge
                // defaults" in ARCHITECTURE.md), so such a match could
                // never match: the route is refused so that its author
                // learns it, rather than having a rule that is silently
                // dead.
                for v in &m.headers {
                    if v.name.contains('_') {
                        check(
                            ri,
                            Err(format!(
                                "header match on {:?}: requests with an underscore in a header \
                                 name are rejected (400) by the Gateway, so it could never match",
                                v.name
                            )),
                        );
                    }
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
            // ReplacePrefixMatch replaces the matched prefix: with any
            // other kind of match there is none, and the spec asks for the
            // route to be refused rather than the path left unchanged.
            let prefix_matches_only = rule
                .matches
                .iter()
                .all(|m| matches!(m.path, PathMatch::Prefix(_)));
            for f in &rule.filters {
                if let Filter::Redirect {
                    path: Some(PathModifier::Prefix(_)),
                    ..
                }
                | Filter::Rewrite {
                    path: Some(PathModifier::Prefix(_)),
                    ..
                } = f
                    && !prefix_matches_only
                {
                    check(
                        ri,
                        Err("ReplacePrefixMatch needs every match of its rule to be a PathPrefix match"
                            .to_owned()),
                    );
                }
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
                    Filter::ExternalAuth(a) => {
                        let (headers, response_headers) = match &a.protocol {
                            AuthProtocol::Http {
                                path,
                                allowed_headers,
                                allowed_response_headers,
                            } => {
                                if !path.is_empty() {
                                    check(ri, validate::path(path));
                                }
                                (allowed_headers, allowed_response_headers.as_slice())
                            }
                            AuthProtocol::Grpc { allowed_headers } => (allowed_headers, &[][..]),
                        };
                        for name in headers.iter().chain(response_headers) {
                            check(ri, validate::header_name(name));
                        }
                    }
                    Filter::Cors(c) => {
                        check(ri, c.origin_patterns().map(drop));
                        for name in c.headers.iter().chain(&c.expose).filter(|h| *h != "*") {
                            check(ri, validate::header_name(name));
                        }
                        for m in c.methods.iter().filter(|m| *m != "*") {
                            check(ri, validate::header_name(m));
                        }
                    }
                }
            }
        }
        // backendRef header filters: the same checks as a rule's.
        for (ri, rule) in self.rules.iter().enumerate() {
            for f in rule.backends.iter().flat_map(|b| &b.filters) {
                if let Filter::RequestHeaders(h) | Filter::ResponseHeaders(h) = f {
                    for (name, value) in h.set.iter().chain(&h.add) {
                        check(Some(ri), validate::modifiable_header(name));
                        check(Some(ri), validate::header_value(value));
                    }
                    for name in &h.remove {
                        check(Some(ri), validate::modifiable_header(name));
                    }
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

    /// Whether this parentRef names a ListenerSet.
    pub(crate) fn is_listener_set(&self) -> bool {
        self.group == GATEWAY_GROUP && self.kind == "ListenerSet"
    }
}

#[derive(Debug, Default)]
pub(crate) struct Rule {
    pub(crate) matches: Vec<Match>,
    pub(crate) filters: Vec<Filter>,
    pub(crate) backends: Vec<BackendRef>,
    pub(crate) timeouts: Timeouts,
    /// `retry` (HTTPRoute only); None means no retries, Envoy's own default
    /// for a route without a retry policy.
    pub(crate) retry: Option<Retry>,
    /// `rules[].name`, shown in the Envoy route's name and metadata.
    pub(crate) name: Option<String>,
}

/// An HTTPRoute rule's `timeouts` (GEP-1742). A zero duration disables
/// that timeout, as does leaving both unset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Timeouts {
    /// From the request's start to the end of the response.
    pub(crate) request: Option<std::time::Duration>,
    /// Each attempt at the backend; never above `request`.
    pub(crate) backend_request: Option<std::time::Duration>,
}

/// An HTTPRoute rule's `retry` (GEP-1731), checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Retry {
    /// Response codes (400-599) that make an attempt retriable, sorted and
    /// without duplicates; connection failures, resets and per-attempt
    /// timeouts always are.
    pub(crate) codes: Vec<u32>,
    /// Retries after the first attempt; 0 disables retrying.
    pub(crate) attempts: u32,
    /// The least wait before a retry; None leaves Envoy's default.
    pub(crate) backoff: Option<std::time::Duration>,
}

impl Retry {
    /// Retries when `attempts` is left out: one, Envoy's own default for a
    /// retry policy, written out so the configuration says what happens.
    pub(crate) const DEFAULT_ATTEMPTS: u32 = 1;
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
        /// Share of requests mirrored, as (numerator, denominator).
        fraction: Option<(u32, u32)>,
    },
    Cors(Cors),
    /// `ExternalAuth` (GEP-1494): every request is checked by an
    /// authorization service first.
    ExternalAuth(ExternalAuth),
}

/// An HTTPRoute `ExternalAuth` filter, with defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ExternalAuth {
    /// The authorization service.
    pub(crate) backend: BackendRef,
    /// How to talk to it, with the protocol's settings.
    pub(crate) protocol: AuthProtocol,
    /// `forwardBody.maxSize`: how many bytes of the request body the service
    /// gets; 0 sends none. A longer body is refused (413), never cut.
    pub(crate) forward_body: u32,
}

/// The protocol of an [`ExternalAuth`] service and its settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AuthProtocol {
    /// A plain HTTP service: 200 allows, anything else denies.
    Http {
        /// Prefix added to the request path, `/`-led and without a trailing
        /// `/`; empty for none.
        path: String,
        /// Request headers sent besides Host, Method, Path, Content-Length
        /// and Authorization (always sent); lowercase.
        allowed_headers: Vec<String>,
        /// Headers of the service's 200 answer copied onto the request to
        /// the backend; lowercase; empty copies all but Host and the
        /// connection's framing headers.
        allowed_response_headers: Vec<String>,
    },
    /// Envoy's `envoy.service.auth.v3.Authorization` gRPC service.
    Grpc {
        /// Request headers sent; lowercase; empty sends all.
        allowed_headers: Vec<String>,
    },
}

impl Cors {
    /// One RE2 pattern per allowed origin, matching the whole `Origin`
    /// header: `*` matches any origin; a `*` in the host matches one or more
    /// labels; a missing port also matches the scheme's default one.
    pub(crate) fn origin_patterns(&self) -> Result<Vec<String>, String> {
        self.origins
            .iter()
            .map(|o| {
                let pattern = origin_pattern(o)?;
                // A wildcard origin is a regex RE2 cannot reduce to a
                // literal prefix, so its program grows with the host: a
                // long one can pass Envoy's limit, and Envoy would then
                // refuse every route of the port.
                crate::re2::check(&format!("(?i){pattern}"))
                    .map_err(|e| format!("CORS allowOrigins {o:?}: {e}"))?;
                Ok(pattern)
            })
            .collect()
    }
}

fn origin_pattern(origin: &str) -> Result<String, String> {
    if origin == "*" {
        return Ok(".*".to_owned());
    }
    let bad = || format!("CORS allowOrigins {origin:?} is not \"*\" or scheme://host[:port]");
    let (scheme, rest) = origin.split_once("://").ok_or_else(bad)?;
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return Err(bad());
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => (h, Some(p)),
        Some(_) => return Err(bad()),
        None => (rest, None),
    };
    if host.is_empty() || host.contains(['/', '?', '#', '@']) {
        return Err(bad());
    }
    let host = host
        .split('*')
        .map(regex_escape)
        .collect::<Vec<_>>()
        .join("[^/?#@]+");
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" => Some("443"),
        "http" => Some("80"),
        _ => None,
    };
    let port = match (port, default_port) {
        (Some(p), Some(d)) if p == d => format!("(:{p})?"),
        (Some(p), _) => format!(":{p}"),
        (None, Some(d)) => format!("(:{d})?"),
        (None, None) => String::new(),
    };
    Ok(format!("{}://{host}{port}", regex_escape(scheme)))
}

/// An HTTPRoute `CORS` filter (GEP-1767).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cors {
    /// `allowOrigins` as written: `*`, or `scheme://host[:port]` whose host
    /// may hold `*` (one or more labels).
    pub(crate) origins: Vec<String>,
    pub(crate) methods: Vec<String>,
    pub(crate) headers: Vec<String>,
    pub(crate) expose: Vec<String>,
    pub(crate) credentials: bool,
    /// Seconds a preflight answer may be cached (the spec's default is 5).
    pub(crate) max_age: i32,
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
    /// `filters` of this backendRef (header modifiers only), applied to the
    /// requests sent to it and the responses it gives.
    pub(crate) filters: Vec<Filter>,
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
