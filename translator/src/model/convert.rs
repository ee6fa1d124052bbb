//! Conversions between each route kind's API types and the shared model:
//! routes into [`Route`], parent statuses back into each kind's status type.
//! The kinds have distinct Rust types with the same fields; small traits
//! read those fields once per type, so the defaults and checks are written
//! once for all kinds.

use super::{
    AuthProtocol, BackendRef, Cors, ExternalAuth, Filter, HeaderModifier, Match, ParentRef,
    PathMatch, PathModifier, Precedence, Retry, Route, RouteKind, Rule, Timeouts, ValueMatch,
    regex_escape,
};
use crate::api::grpcroutes::{
    GrpcRoute, GrpcRouteParentRefs, GrpcRouteRules, GrpcRouteRulesBackendRefs,
    GrpcRouteRulesBackendRefsFiltersRequestHeaderModifier,
    GrpcRouteRulesBackendRefsFiltersResponseHeaderModifier, GrpcRouteRulesBackendRefsFiltersType,
    GrpcRouteRulesFiltersRequestHeaderModifier, GrpcRouteRulesFiltersRequestMirror,
    GrpcRouteRulesFiltersRequestMirrorBackendRef, GrpcRouteRulesFiltersResponseHeaderModifier,
    GrpcRouteRulesFiltersType, GrpcRouteRulesMatches, GrpcRouteRulesMatchesHeadersType,
    GrpcRouteRulesMatchesMethodType, GrpcRouteStatusParents, GrpcRouteStatusParentsParentRef,
    GrpcRouteUseDefaultGateways,
};
use crate::api::httproutes::{
    HttpRoute, HttpRouteParentRefs, HttpRouteRules, HttpRouteRulesBackendRefs,
    HttpRouteRulesBackendRefsFiltersRequestHeaderModifier,
    HttpRouteRulesBackendRefsFiltersResponseHeaderModifier, HttpRouteRulesBackendRefsFiltersType,
    HttpRouteRulesBackendRefsFiltersUrlRewritePathType, HttpRouteRulesFiltersExternalAuth,
    HttpRouteRulesFiltersExternalAuthBackendRef, HttpRouteRulesFiltersExternalAuthProtocol,
    HttpRouteRulesFiltersRequestHeaderModifier, HttpRouteRulesFiltersRequestMirror,
    HttpRouteRulesFiltersRequestMirrorBackendRef, HttpRouteRulesFiltersRequestRedirectPathType,
    HttpRouteRulesFiltersRequestRedirectScheme, HttpRouteRulesFiltersResponseHeaderModifier,
    HttpRouteRulesFiltersType, HttpRouteRulesFiltersUrlRewritePathType, HttpRouteRulesMatches,
    HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesPathType,
    HttpRouteRulesMatchesQueryParamsType, HttpRouteRulesRetry, HttpRouteRulesTimeouts,
    HttpRouteStatusParents, HttpRouteStatusParentsParentRef, HttpRouteUseDefaultGateways,
};
use crate::api::tcproutes::{
    TcpRoute, TcpRouteParentRefs, TcpRouteRulesBackendRefs, TcpRouteStatusParents,
    TcpRouteStatusParentsParentRef, TcpRouteUseDefaultGateways,
};
use crate::api::tlsroutes::{
    TlsRoute, TlsRouteParentRefs, TlsRouteRulesBackendRefs, TlsRouteStatusParents,
    TlsRouteStatusParentsParentRef, TlsRouteUseDefaultGateways,
};
use crate::api::udproutes::{
    UdpRoute, UdpRouteParentRefs, UdpRouteRulesBackendRefs, UdpRouteStatusParents,
    UdpRouteStatusParentsParentRef, UdpRouteUseDefaultGateways,
};
use crate::index::GATEWAY_GROUP;
use crate::input::ObjectKey;
use crate::unsupported::Field;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use k8s_openapi::jiff::Timestamp;

/// A parentRef as written, borrowed: every route kind has its own parentRef
/// type, all with these fields.
struct ParentRefFields<'a> {
    group: Option<&'a str>,
    kind: Option<&'a str>,
    namespace: Option<&'a str>,
    name: &'a str,
    section_name: Option<&'a str>,
    port: Option<i32>,
}

/// A route kind's parentRef type.
trait ApiParentRef {
    /// Its fields, as written.
    fn fields(&self) -> ParentRefFields<'_>;
}

/// `ApiParentRef` for route kinds' parentRef types: distinct generated
/// types of one shape.
macro_rules! api_parent_ref {
    ($($t:ty),* $(,)?) => {$(
        impl ApiParentRef for $t {
            fn fields(&self) -> ParentRefFields<'_> {
                ParentRefFields {
                    group: self.group.as_deref(),
                    kind: self.kind.as_deref(),
                    namespace: self.namespace.as_deref(),
                    name: &self.name,
                    section_name: self.section_name.as_deref(),
                    port: self.port,
                }
            }
        }
    )*};
}

api_parent_ref!(
    HttpRouteParentRefs,
    GrpcRouteParentRefs,
    TlsRouteParentRefs,
    TcpRouteParentRefs,
    UdpRouteParentRefs,
);

impl ParentRef {
    /// `p`, written in a route in namespace `route_ns`, with the spec's
    /// defaults applied.
    fn new(p: ParentRefFields<'_>, route_ns: &str) -> Self {
        Self {
            group: p.group.unwrap_or(GATEWAY_GROUP).to_owned(),
            kind: p.kind.unwrap_or("Gateway").to_owned(),
            namespace: p.namespace.unwrap_or(route_ns).to_owned(),
            name: p.name.to_owned(),
            section_name: p.section_name.map(str::to_owned),
            port: p.port,
        }
    }
}

/// A backendRef as written, borrowed: the route kinds' backendRef types and
/// their mirror filters' backendRef types all have these fields (a mirror's
/// has no weight).
struct BackendRefFields<'a> {
    group: Option<&'a str>,
    kind: Option<&'a str>,
    namespace: Option<&'a str>,
    name: &'a str,
    port: Option<i32>,
    weight: Option<i32>,
}

/// A route kind's backendRef type, or its mirror filter's.
trait ApiBackendRef {
    /// Its fields, as written.
    fn fields(&self) -> BackendRefFields<'_>;

    /// Its own filters, or the type of the first one Gatewright does not
    /// apply per backend (only header modifiers are).
    fn filters(&self) -> Result<Vec<Filter>, String> {
        Ok(Vec::new())
    }
}

/// `ApiBackendRef::fields` of a backendRef type, whose weight is `$weight`
/// (`self.weight`, or `None` for the types without one): the route kinds'
/// backendRef types are distinct generated types of one shape.
macro_rules! backend_ref_fields {
    ($self:ident, $weight:expr) => {
        fn fields(&$self) -> BackendRefFields<'_> {
            BackendRefFields {
                group: $self.group.as_deref(),
                kind: $self.kind.as_deref(),
                namespace: $self.namespace.as_deref(),
                name: &$self.name,
                port: $self.port,
                weight: $weight,
            }
        }
    };
}

/// A URLRewrite filter as [`Filter::Rewrite`]: the rule's and a backendRef's
/// filter types are distinct generated types of one shape, `$path_type`
/// being the type's path-modifier enum.
macro_rules! rewrite_filter {
    ($rw:expr, $path_type:ident) => {
        Filter::Rewrite {
            hostname: $rw.hostname.clone(),
            path: $rw.path.as_ref().and_then(|p| match p.r#type {
                $path_type::ReplaceFullPath => p.replace_full_path.clone().map(PathModifier::Full),
                $path_type::ReplacePrefixMatch => {
                    p.replace_prefix_match.clone().map(PathModifier::Prefix)
                }
            }),
        }
    };
}

/// Per-backend filters of one kind's backendRef: header modifiers become
/// filters, any other type is refused by name.
macro_rules! backend_filters {
    ($filters:expr, $ty:ident) => {{
        let mut out = Vec::new();
        for f in $filters {
            match (
                &f.r#type,
                &f.request_header_modifier,
                &f.response_header_modifier,
            ) {
                ($ty::RequestHeaderModifier, Some(m), _) => {
                    out.push(Filter::RequestHeaders(m.into()))
                }
                ($ty::ResponseHeaderModifier, _, Some(m)) => {
                    out.push(Filter::ResponseHeaders(m.into()))
                }
                (t, _, _) => {
                    return Err(format!("backendRefs[].filters type {t:?} is not supported"));
                }
            }
        }
        Ok(out)
    }};
}

impl ApiBackendRef for HttpRouteRulesBackendRefs {
    backend_ref_fields!(self, self.weight);

    fn filters(&self) -> Result<Vec<Filter>, String> {
        // URLRewrite is HTTPRoute's alone (and http_rule makes it the
        // rule's); the rest are handled as for every kind.
        let (rewrites, others): (Vec<_>, Vec<_>) = self
            .filters
            .iter()
            .flatten()
            .partition(|f| f.r#type == HttpRouteRulesBackendRefsFiltersType::UrlRewrite);
        let known: Result<Vec<Filter>, String> =
            backend_filters!(others, HttpRouteRulesBackendRefsFiltersType);
        let mut out = known?;
        out.extend(rewrites.into_iter().filter_map(|f| {
            let rw = f.url_rewrite.as_ref()?;
            Some(rewrite_filter!(
                rw,
                HttpRouteRulesBackendRefsFiltersUrlRewritePathType
            ))
        }));
        Ok(out)
    }
}

impl ApiBackendRef for GrpcRouteRulesBackendRefs {
    backend_ref_fields!(self, self.weight);

    fn filters(&self) -> Result<Vec<Filter>, String> {
        backend_filters!(
            self.filters.iter().flatten(),
            GrpcRouteRulesBackendRefsFiltersType
        )
    }
}

impl ApiBackendRef for TlsRouteRulesBackendRefs {
    backend_ref_fields!(self, self.weight);
}

impl ApiBackendRef for TcpRouteRulesBackendRefs {
    backend_ref_fields!(self, self.weight);
}

impl ApiBackendRef for UdpRouteRulesBackendRefs {
    backend_ref_fields!(self, self.weight);
}

// The backendRef types without a weight: a mirror's, an ExternalAuth
// service's.
impl ApiBackendRef for HttpRouteRulesFiltersRequestMirrorBackendRef {
    backend_ref_fields!(self, None);
}

impl ApiBackendRef for GrpcRouteRulesFiltersRequestMirrorBackendRef {
    backend_ref_fields!(self, None);
}

impl ApiBackendRef for HttpRouteRulesFiltersExternalAuthBackendRef {
    backend_ref_fields!(self, None);
}

impl BackendRef {
    /// `b`, written in a route in namespace `route_ns`, with the spec's
    /// defaults applied.
    fn new(b: BackendRefFields<'_>, route_ns: &str) -> Self {
        Self {
            group: b.group.unwrap_or_default().to_owned(),
            kind: b.kind.unwrap_or("Service").to_owned(),
            namespace: b.namespace.unwrap_or(route_ns).to_owned(),
            name: b.name.to_owned(),
            port: b.port,
            // The API caps weights at 1,000,000; so does Gatewright, so sums
            // of up to 16 backends stay far from overflow.
            weight: u32::try_from(b.weight.unwrap_or(1))
                .unwrap_or(0)
                .min(1_000_000),
            filters: Vec::new(),
        }
    }
}

/// A rule's backendRefs, written in a route in namespace `route_ns`; a
/// backendRef filter Gatewright does not apply is added to `unsupported`.
fn backends<'a, B: ApiBackendRef + 'a>(
    refs: impl IntoIterator<Item = &'a B>,
    route_ns: &str,
    unsupported: &mut Vec<String>,
) -> Vec<BackendRef> {
    refs.into_iter()
        .map(|b| {
            let mut backend = BackendRef::new(b.fields(), route_ns);
            match b.filters() {
                Ok(f) => backend.filters = f,
                Err(e) => unsupported.push(e),
            }
            backend
        })
        .collect()
}

impl HeaderModifier {
    /// A header modifier from its `set` and `add` (name, value) pairs and its
    /// `remove` names, as every kind's modifier types hold them.
    fn new<'a>(
        set: impl Iterator<Item = (&'a String, &'a String)>,
        add: impl Iterator<Item = (&'a String, &'a String)>,
        remove: impl Iterator<Item = &'a String>,
    ) -> Self {
        Self {
            set: set.map(|(n, v)| (n.clone(), v.clone())).collect(),
            add: add.map(|(n, v)| (n.clone(), v.clone())).collect(),
            remove: remove.cloned().collect(),
        }
    }
}

/// `From` for the header modifier types of every kind and place (route and
/// backendRef filters, request and response): distinct generated types of
/// one shape.
macro_rules! header_modifier_from {
    ($($t:ty),* $(,)?) => {$(
        impl From<&$t> for HeaderModifier {
            fn from(m: &$t) -> Self {
                Self::new(
                    m.set.iter().flatten().map(|h| (&h.name, &h.value)),
                    m.add.iter().flatten().map(|h| (&h.name, &h.value)),
                    m.remove.iter().flatten(),
                )
            }
        }
    )*};
}

header_modifier_from!(
    HttpRouteRulesFiltersRequestHeaderModifier,
    HttpRouteRulesFiltersResponseHeaderModifier,
    HttpRouteRulesBackendRefsFiltersRequestHeaderModifier,
    HttpRouteRulesBackendRefsFiltersResponseHeaderModifier,
    GrpcRouteRulesFiltersRequestHeaderModifier,
    GrpcRouteRulesFiltersResponseHeaderModifier,
    GrpcRouteRulesBackendRefsFiltersRequestHeaderModifier,
    GrpcRouteRulesBackendRefsFiltersResponseHeaderModifier,
);

/// A RequestMirror filter as written, borrowed.
struct MirrorFields<'a> {
    backend_ref: BackendRefFields<'a>,
    percent: Option<i32>,
    /// (numerator, denominator).
    fraction: Option<(i32, Option<i32>)>,
}

/// A route kind's RequestMirror filter type.
trait ApiMirror {
    /// Its fields, as written.
    fn fields(&self) -> MirrorFields<'_>;
}

impl ApiMirror for HttpRouteRulesFiltersRequestMirror {
    fn fields(&self) -> MirrorFields<'_> {
        MirrorFields {
            backend_ref: self.backend_ref.fields(),
            percent: self.percent,
            fraction: self.fraction.as_ref().map(|f| (f.numerator, f.denominator)),
        }
    }
}

impl ApiMirror for GrpcRouteRulesFiltersRequestMirror {
    fn fields(&self) -> MirrorFields<'_> {
        MirrorFields {
            backend_ref: self.backend_ref.fields(),
            percent: self.percent,
            fraction: self.fraction.as_ref().map(|f| (f.numerator, f.denominator)),
        }
    }
}

impl Filter {
    /// The RequestMirror filter `m` of a route in namespace `route_ns`.
    fn mirror(m: &impl ApiMirror, route_ns: &str) -> Self {
        let m = m.fields();
        let fraction = match (m.percent, m.fraction) {
            (Some(p), _) => Some((u32::try_from(p).unwrap_or(0).min(100), 100)),
            (None, Some((numerator, denominator))) => Some((
                u32::try_from(numerator).unwrap_or(0),
                u32::try_from(denominator.unwrap_or(100))
                    .unwrap_or(100)
                    .max(1),
            )),
            (None, None) => None,
        };
        Self::Mirror {
            backend: BackendRef::new(m.backend_ref, route_ns),
            fraction,
        }
    }
}

impl Route {
    /// A route of `kind` from its metadata, parentRefs and converted parts,
    /// checked (see [`Route::validated`]).
    fn new(
        kind: RouteKind,
        meta: &ObjectMeta,
        hostnames: Vec<String>,
        parent_refs: &[impl ApiParentRef],
        use_default_gateways: bool,
        rules: Vec<Rule>,
        unsupported: Vec<String>,
    ) -> Self {
        let (key, generation, created) = meta_parts(meta);
        let parents = parent_refs
            .iter()
            .map(|p| ParentRef::new(p.fields(), &key.namespace))
            .collect();
        Self {
            kind,
            key,
            generation,
            created,
            hostnames,
            parents,
            use_default_gateways,
            rules,
            unsupported,
        }
        .validated()
    }
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

/// The messages of rule `ri`'s unimplemented fields.
fn rule_messages(ri: usize, fields: Vec<Field>) -> impl Iterator<Item = String> {
    fields.into_iter().map(move |f| format!("rule {ri}: {f}"))
}

/// Keeps the first match per header name (names compare case-insensitively).
fn dedup_headers(list: &mut Vec<ValueMatch>) {
    let mut seen = std::collections::HashSet::new();
    list.retain(|h| seen.insert(h.name.clone()));
}

impl From<&HttpRoute> for Route {
    fn from(r: &HttpRoute) -> Self {
        let ns = r.metadata.namespace.as_deref().unwrap_or_default();
        let mut unsupported = Vec::new();
        let rules = r
            .spec
            .rules
            .iter()
            .flatten()
            .enumerate()
            .map(|(ri, rule)| http_rule(ri, rule, ns, &mut unsupported))
            .collect();
        Self::new(
            RouteKind::Http,
            &r.metadata,
            r.spec.hostnames.clone().unwrap_or_default(),
            r.spec.parent_refs.as_deref().unwrap_or_default(),
            matches!(
                r.spec.use_default_gateways,
                Some(HttpRouteUseDefaultGateways::All)
            ),
            rules,
            unsupported,
        )
    }
}

/// Makes the backendRefs' URLRewrite filters the rule's. Envoy rewrites a
/// request per route, not per weighted backend, so this is possible only
/// when every backendRef asks for the same rewrite and the rule asks for
/// none itself; otherwise the rule is refused rather than some requests
/// going out unrewritten.
fn hoist_backend_rewrite(
    backends: &mut [BackendRef],
    filters: &mut Vec<Filter>,
) -> Result<(), String> {
    let mut taken: Vec<Option<Filter>> = Vec::with_capacity(backends.len());
    for b in backends.iter_mut() {
        let at = b
            .filters
            .iter()
            .position(|f| matches!(f, Filter::Rewrite { .. }));
        taken.push(at.map(|i| b.filters.remove(i)));
    }
    let Some(Some(first)) = taken.first().cloned() else {
        return if taken.iter().any(Option::is_some) {
            Err(different_rewrites())
        } else {
            Ok(())
        };
    };
    if taken.iter().any(|t| t.as_ref() != Some(&first)) {
        return Err(different_rewrites());
    }
    if filters.iter().any(|f| matches!(f, Filter::Rewrite { .. })) {
        return Err(
            "a URLRewrite filter on both the rule and its backendRefs is not supported".to_owned(),
        );
    }
    filters.push(first);
    Ok(())
}

fn different_rewrites() -> String {
    "backendRefs[].filters URLRewrite must be the same on every backendRef of the rule \
     (Envoy rewrites per route, not per weighted backend)"
        .to_owned()
}

/// Rule `ri` of an HTTPRoute in namespace `ns`; what it asks for that
/// Gatewright does not implement is added to `unsupported`.
fn http_rule(ri: usize, rule: &HttpRouteRules, ns: &str, unsupported: &mut Vec<String>) -> Rule {
    let mut matches: Vec<Match> = rule.matches.iter().flatten().map(Match::from).collect();
    if matches.is_empty() {
        matches.push(Match {
            path: PathMatch::Prefix("/".to_owned()),
            method: None,
            headers: vec![],
            query: vec![],
            grpc: false,
            precedence: Precedence::Http(
                1,
                std::cmp::Reverse(1),
                true,
                std::cmp::Reverse(0),
                std::cmp::Reverse(0),
            ),
        });
    }
    let mut filters = Vec::new();
    for f in rule.filters.iter().flatten() {
        match f.r#type {
            HttpRouteRulesFiltersType::RequestHeaderModifier => {
                if let Some(m) = &f.request_header_modifier {
                    filters.push(Filter::RequestHeaders(m.into()));
                }
            }
            HttpRouteRulesFiltersType::ResponseHeaderModifier => {
                if let Some(m) = &f.response_header_modifier {
                    filters.push(Filter::ResponseHeaders(m.into()));
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
                    filters.push(rewrite_filter!(rw, HttpRouteRulesFiltersUrlRewritePathType));
                }
            }
            HttpRouteRulesFiltersType::RequestMirror => {
                if let Some(m) = &f.request_mirror {
                    filters.push(Filter::mirror(m, ns));
                }
            }
            HttpRouteRulesFiltersType::ExtensionRef => {
                unsupported.push(format!("rule {ri}: {}", Field::ExtensionRefFilter));
            }
            HttpRouteRulesFiltersType::Cors => {
                if let Some(c) = &f.cors {
                    filters.push(Filter::Cors(Cors {
                        origins: c.allow_origins.clone().unwrap_or_default(),
                        methods: c.allow_methods.clone().unwrap_or_default(),
                        headers: c.allow_headers.clone().unwrap_or_default(),
                        expose: c.expose_headers.clone().unwrap_or_default(),
                        credentials: c.allow_credentials.unwrap_or(false),
                        max_age: c.max_age.unwrap_or(5),
                    }));
                }
            }
            HttpRouteRulesFiltersType::ExternalAuth => {
                if let Some(a) = &f.external_auth {
                    filters.push(Filter::ExternalAuth(external_auth(a, ns)));
                }
            }
        }
    }
    unsupported.extend(rule_messages(ri, crate::unsupported::http_rule(rule)));
    let mut refused = Vec::new();
    let timeouts = match rule.timeouts.as_ref().map(timeouts).transpose() {
        Ok(t) => t.unwrap_or_default(),
        Err(e) => {
            unsupported.push(format!("rule {ri}: {e}"));
            Timeouts::default()
        }
    };
    let retry = match rule.retry.as_ref().map(retry).transpose() {
        Ok(r) => r,
        Err(e) => {
            unsupported.push(format!("rule {ri}: {e}"));
            None
        }
    };
    let mut backends = backends(rule.backend_refs.iter().flatten(), ns, &mut refused);
    unsupported.extend(refused.into_iter().map(|e| format!("rule {ri}: {e}")));
    if let Err(e) = hoist_backend_rewrite(&mut backends, &mut filters) {
        unsupported.push(format!("rule {ri}: {e}"));
    }
    Rule {
        matches,
        filters,
        backends,
        timeouts,
        retry,
        name: rule.name.clone().filter(|n| !n.is_empty()),
    }
}

/// An `ExternalAuth` filter of a route in namespace `route_ns`. The CRD
/// ties `http` to protocol HTTP and `grpc` to GRPC; a missing block means
/// its defaults.
fn external_auth(a: &HttpRouteRulesFiltersExternalAuth, route_ns: &str) -> ExternalAuth {
    let lower = |v: Option<&Vec<String>>| -> Vec<String> {
        let mut out: Vec<String> = v
            .into_iter()
            .flatten()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        // A set in the API: order and repeats carry no meaning, and sorting
        // keeps the Envoy filter (named after its content) the same.
        out.sort();
        out.dedup();
        out
    };
    let protocol = match a.protocol {
        HttpRouteRulesFiltersExternalAuthProtocol::Http => {
            let http = a.http.as_ref();
            AuthProtocol::Http {
                path: auth_path_prefix(http.and_then(|h| h.path.as_deref()).unwrap_or("")),
                allowed_headers: lower(http.and_then(|h| h.allowed_headers.as_ref())),
                allowed_response_headers: lower(
                    http.and_then(|h| h.allowed_response_headers.as_ref()),
                ),
            }
        }
        HttpRouteRulesFiltersExternalAuthProtocol::Grpc => AuthProtocol::Grpc {
            allowed_headers: lower(a.grpc.as_ref().and_then(|g| g.allowed_headers.as_ref())),
        },
    };
    ExternalAuth {
        backend: BackendRef::new(a.backend_ref.fields(), route_ns),
        protocol,
        // maxSize is a uint16 in the API; anything else (negative, or a
        // file-provided value beyond it) is clamped rather than wrapped.
        forward_body: a
            .forward_body
            .as_ref()
            .and_then(|b| b.max_size)
            .map_or(0, |m| {
                u32::try_from(m.clamp(0, i32::from(u16::MAX))).unwrap_or(0)
            }),
    }
}

/// The `http.path` of an ExternalAuth filter as a prefix Envoy adds to the
/// request path: `/`-led (the API allows `auth` for `/auth`) and without a
/// trailing `/`, which would double the request path's own.
fn auth_path_prefix(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else if trimmed.starts_with('/') {
        trimmed.to_owned()
    } else {
        format!("/{trimmed}")
    }
}

/// Reads the GEP-2257 duration (such as `500ms` or `1h30m`) of `field`,
/// named as the user wrote it in the error.
fn duration(field: &str, v: Option<&str>) -> Result<Option<std::time::Duration>, String> {
    v.map(|s| {
        s.parse::<gateway_api::Duration>()
            .map(|d| std::time::Duration::from_millis(d.as_millis().try_into().unwrap_or(u64::MAX)))
            .map_err(|e| format!("{field} {s:?} is not a valid duration: {e}"))
    })
    .transpose()
}

/// Reads `timeouts`.
fn timeouts(t: &HttpRouteRulesTimeouts) -> Result<Timeouts, String> {
    let out = Timeouts {
        request: duration("timeouts.request", t.request.as_deref())?,
        backend_request: duration("timeouts.backendRequest", t.backend_request.as_deref())?,
    };
    if let (Some(r), Some(b)) = (out.request, out.backend_request)
        && !r.is_zero()
        && b > r
    {
        return Err(format!(
            "timeouts.backendRequest ({b:?}) must not exceed timeouts.request ({r:?})"
        ));
    }
    Ok(out)
}

/// Reads `retry`. Objects read from files skip the CRD's validation, so
/// the bounds it enforces in a cluster are checked here: a value Envoy
/// cannot express refuses the route rather than retrying differently.
fn retry(r: &HttpRouteRulesRetry) -> Result<Retry, String> {
    let mut codes = Vec::new();
    for &c in r.codes.iter().flatten() {
        // The API allows 400-599 only: retrying a success or a redirect
        // makes no sense, and Envoy would take any number.
        match u32::try_from(c) {
            Ok(code @ 400..=599) => codes.push(code),
            _ => {
                return Err(format!(
                    "retry.codes {c} is not an HTTP status code in 400-599"
                ));
            }
        }
    }
    codes.sort_unstable();
    codes.dedup();
    let attempts = match r.attempts {
        None => Retry::DEFAULT_ATTEMPTS,
        Some(a) => u32::try_from(a)
            .map_err(|_| format!("retry.attempts {a} is not between 0 and {}", u32::MAX))?,
    };
    Ok(Retry {
        codes,
        attempts,
        backoff: duration("retry.backoff", r.backoff.as_deref())?,
    })
}

impl From<&HttpRouteRulesMatches> for Match {
    fn from(m: &HttpRouteRulesMatches) -> Self {
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
                regex: matches!(
                    h.r#type,
                    Some(HttpRouteRulesMatchesHeadersType::RegularExpression)
                ),
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
                regex: matches!(
                    q.r#type,
                    Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression)
                ),
            })
            .collect();
        // Query parameter names are case-sensitive; first one wins.
        let mut seen = std::collections::HashSet::new();
        query.retain(|q| seen.insert(q.name.clone()));
        let method = m.method.as_ref().and_then(|m| {
            serde_json::to_value(m)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
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
        Self {
            path,
            method,
            headers,
            query,
            grpc: false,
            precedence,
        }
    }
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

impl From<&GrpcRoute> for Route {
    fn from(r: &GrpcRoute) -> Self {
        let ns = r.metadata.namespace.as_deref().unwrap_or_default();
        let mut unsupported = Vec::new();
        let rules = r
            .spec
            .rules
            .iter()
            .flatten()
            .enumerate()
            .map(|(ri, rule)| grpc_rule(ri, rule, ns, &mut unsupported))
            .collect();
        Self::new(
            RouteKind::Grpc,
            &r.metadata,
            r.spec.hostnames.clone().unwrap_or_default(),
            r.spec.parent_refs.as_deref().unwrap_or_default(),
            matches!(
                r.spec.use_default_gateways,
                Some(GrpcRouteUseDefaultGateways::All)
            ),
            rules,
            unsupported,
        )
    }
}

/// Rule `ri` of a GRPCRoute in namespace `ns`; what it asks for that
/// Gatewright does not implement is added to `unsupported`.
fn grpc_rule(ri: usize, rule: &GrpcRouteRules, ns: &str, unsupported: &mut Vec<String>) -> Rule {
    let mut matches: Vec<Match> = rule.matches.iter().flatten().map(Match::from).collect();
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
                    filters.push(Filter::RequestHeaders(m.into()));
                }
            }
            GrpcRouteRulesFiltersType::ResponseHeaderModifier => {
                if let Some(m) = &f.response_header_modifier {
                    filters.push(Filter::ResponseHeaders(m.into()));
                }
            }
            GrpcRouteRulesFiltersType::RequestMirror => {
                if let Some(m) = &f.request_mirror {
                    filters.push(Filter::mirror(m, ns));
                }
            }
            GrpcRouteRulesFiltersType::ExtensionRef => {
                unsupported.push(format!("rule {ri}: {}", Field::ExtensionRefFilter));
            }
        }
    }
    unsupported.extend(rule_messages(ri, crate::unsupported::grpc_rule(rule)));
    let mut refused = Vec::new();
    let backends = backends(rule.backend_refs.iter().flatten(), ns, &mut refused);
    unsupported.extend(refused.into_iter().map(|e| format!("rule {ri}: {e}")));
    Rule {
        matches,
        filters,
        backends,
        timeouts: Timeouts::default(),
        retry: None,
        name: rule.name.clone().filter(|n| !n.is_empty()),
    }
}

impl From<&GrpcRouteRulesMatches> for Match {
    fn from(m: &GrpcRouteRulesMatches) -> Self {
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
            (true, false, false) => PathMatch::Regex(format!("/[^/]+/{}", regex_escape(&method))),
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
        Self {
            path,
            method: None,
            headers,
            query: vec![],
            grpc: true,
            precedence,
        }
    }
}

/// `From<&TlsRoute>`, `From<&TcpRoute>` and `From<&UdpRoute>`: a rule is
/// its backends (which have no filters), with no matches or filters; only
/// TLSRoutes have hostnames (`$hostnames` reads them from route `$r`).
macro_rules! stream_route_from {
    ($route:ty, $kind:expr, $default:path, |$r:ident| $hostnames:expr) => {
        impl From<&$route> for Route {
            fn from($r: &$route) -> Self {
                let ns = $r.metadata.namespace.as_deref().unwrap_or_default();
                let rules = $r
                    .spec
                    .rules
                    .iter()
                    .map(|rule| Rule {
                        matches: vec![],
                        filters: vec![],
                        backends: backends(&rule.backend_refs, ns, &mut Vec::new()),
                        timeouts: Timeouts::default(),
                        retry: None,
                        name: rule.name.clone().filter(|n| !n.is_empty()),
                    })
                    .collect();
                Self::new(
                    $kind,
                    &$r.metadata,
                    $hostnames,
                    $r.spec.parent_refs.as_deref().unwrap_or_default(),
                    matches!($r.spec.use_default_gateways, Some($default)),
                    rules,
                    Vec::new(),
                )
            }
        }
    };
}

stream_route_from!(
    TlsRoute,
    RouteKind::Tls,
    TlsRouteUseDefaultGateways::All,
    |r| r.spec.hostnames.clone()
);
stream_route_from!(
    TcpRoute,
    RouteKind::Tcp,
    TcpRouteUseDefaultGateways::All,
    |r| Vec::new()
);
stream_route_from!(
    UdpRoute,
    RouteKind::Udp,
    UdpRouteUseDefaultGateways::All,
    |r| Vec::new()
);

/// A route kind's `status.parents` entry type.
pub(crate) trait StatusParent {
    /// The entry for `parent`, written by controller `controller`.
    fn new(parent: ParentRef, conditions: Vec<Condition>, controller: &str) -> Self;
}

/// `StatusParent` for route kinds' status entry types (each with its own
/// parentRef type): distinct generated types of one shape.
macro_rules! status_parent {
    ($($entry:ty => $reference:ident),* $(,)?) => {$(
        impl StatusParent for $entry {
            fn new(parent: ParentRef, conditions: Vec<Condition>, controller: &str) -> Self {
                Self {
                    conditions,
                    controller_name: controller.to_owned(),
                    parent_ref: $reference {
                        group: Some(parent.group),
                        kind: Some(parent.kind),
                        name: parent.name,
                        namespace: Some(parent.namespace),
                        port: parent.port,
                        section_name: parent.section_name,
                    },
                }
            }
        }
    )*};
}

status_parent!(
    HttpRouteStatusParents => HttpRouteStatusParentsParentRef,
    GrpcRouteStatusParents => GrpcRouteStatusParentsParentRef,
    TlsRouteStatusParents => TlsRouteStatusParentsParentRef,
    TcpRouteStatusParents => TcpRouteStatusParentsParentRef,
    UdpRouteStatusParents => UdpRouteStatusParentsParentRef,
);
