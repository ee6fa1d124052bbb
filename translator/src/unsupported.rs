//! Gateway API fields Gatewright does not implement yet, in one place.
//!
//! A field listed here is never accepted and dropped: when it is set, its
//! object gets the condition the spec names (see [`Field`] for each), and
//! where the field concerns security the affected listener or backend
//! carries no traffic at all rather than traffic without the protection
//! asked for. A feature issue that implements a field removes its variant.

use crate::api::backendtlspolicies::BackendTlsPolicy;
use crate::api::gateways::{Gateway, GatewayDefaultScope, GatewayListeners};
use crate::api::grpcroutes::{GrpcRoute, GrpcRouteRules, GrpcRouteUseDefaultGateways};
use crate::api::httproutes::{HttpRoute, HttpRouteRules, HttpRouteUseDefaultGateways};
use crate::api::tlsroutes::{TlsRoute, TlsRouteUseDefaultGateways};

/// A field (or object kind) Gatewright does not implement yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Field {
    /// Gateway `spec.tls.backend.clientCertificateRef`. The Gateway gets
    /// `ResolvedRefs=False`/`InvalidClientCertificateRef`; no upstream TLS
    /// connection exists that could present it, since backends covered by
    /// a BackendTLSPolicy are refused (see [`Field::BackendTlsPolicy`]).
    BackendClientCertificate,
    /// Gateway `spec.defaultScope: All` (default Gateways). The Gateway
    /// gets `DefaultGateway=False`/`UnsupportedValue` and claims no route.
    DefaultScope,
    /// Listener `tls.options`: implementation-specific, and Gatewright
    /// defines none. The listener is `Accepted=False`/`UnsupportedValue`.
    ListenerTlsOptions,
    /// Route `spec.useDefaultGateways: All`: the route is
    /// `Accepted=False`/`UnsupportedValue` on every parent of ours.
    UseDefaultGateways,
    /// HTTPRoute rule `timeouts`.
    Timeouts,
    /// HTTPRoute rule `retry`.
    Retry,
    /// HTTPRoute and GRPCRoute rule `sessionPersistence`.
    SessionPersistence,
    /// HTTPRoute filter `CORS`.
    CorsFilter,
    /// HTTPRoute filter `ExternalAuth`.
    ExternalAuthFilter,
    /// Route filter `ExtensionRef` (Gatewright has no extension kinds).
    ExtensionRefFilter,
    /// Filters on a route's `backendRefs[]`.
    BackendRefFilters,
    /// A BackendTLSPolicy. It is `Accepted=False`/`Invalid` for every
    /// Gateway of ours whose routes use a Service port it targets, and
    /// those backendRefs are unresolved (`UnsupportedProtocol`): requests
    /// to them get HTTP 500 instead of going out in plaintext.
    BackendTlsPolicy,
}

impl Field {
    /// Where the field is, as a user writes it.
    pub(crate) fn path(self) -> &'static str {
        match self {
            Self::BackendClientCertificate => "spec.tls.backend.clientCertificateRef",
            Self::DefaultScope => "spec.defaultScope",
            Self::ListenerTlsOptions => "tls.options",
            Self::UseDefaultGateways => "spec.useDefaultGateways",
            Self::Timeouts => "timeouts",
            Self::Retry => "retry",
            Self::SessionPersistence => "sessionPersistence",
            Self::CorsFilter => "filter type CORS",
            Self::ExternalAuthFilter => "filter type ExternalAuth",
            Self::ExtensionRefFilter => "filter type ExtensionRef",
            Self::BackendRefFilters => "filters on backendRefs",
            Self::BackendTlsPolicy => "BackendTLSPolicy",
        }
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is not implemented by Gatewright yet", self.path())
    }
}

/// Which of a Gateway's own (not per-listener) unimplemented fields are set.
#[derive(Clone, Debug, Default)]
pub(crate) struct GatewayFields {
    pub(crate) backend_client_certificate: bool,
    pub(crate) default_scope: bool,
}

/// The Gateway-level unimplemented fields `gateway` sets.
pub(crate) fn gateway(gateway: &Gateway) -> GatewayFields {
    let tls = gateway.spec.tls.as_ref();
    GatewayFields {
        backend_client_certificate: tls
            .and_then(|t| t.backend.as_ref())
            .is_some_and(|b| b.client_certificate_ref.is_some()),
        default_scope: matches!(gateway.spec.default_scope, Some(GatewayDefaultScope::All)),
    }
}

/// The unimplemented fields one listener sets.
pub(crate) fn listener(listener: &GatewayListeners) -> Option<Field> {
    listener
        .tls
        .as_ref()
        .and_then(|t| t.options.as_ref())
        .is_some_and(|o| !o.is_empty())
        .then_some(Field::ListenerTlsOptions)
}

/// Route-level unimplemented fields of an HTTPRoute.
pub(crate) fn http_route(route: &HttpRoute) -> Vec<Field> {
    let mut out = Vec::new();
    if matches!(
        route.spec.use_default_gateways,
        Some(HttpRouteUseDefaultGateways::All)
    ) {
        out.push(Field::UseDefaultGateways);
    }
    out
}

/// Rule-level unimplemented fields of an HTTPRoute rule (filters aside:
/// those are refused where each filter type is converted).
pub(crate) fn http_rule(rule: &HttpRouteRules) -> Vec<Field> {
    let mut out = Vec::new();
    if rule
        .timeouts
        .as_ref()
        .is_some_and(|t| t.request.is_some() || t.backend_request.is_some())
    {
        out.push(Field::Timeouts);
    }
    if rule.retry.is_some() {
        out.push(Field::Retry);
    }
    if rule.session_persistence.is_some() {
        out.push(Field::SessionPersistence);
    }
    if rule
        .backend_refs
        .iter()
        .flatten()
        .any(|b| b.filters.as_ref().is_some_and(|f| !f.is_empty()))
    {
        out.push(Field::BackendRefFilters);
    }
    out
}

/// Route-level unimplemented fields of a GRPCRoute.
pub(crate) fn grpc_route(route: &GrpcRoute) -> Vec<Field> {
    let mut out = Vec::new();
    if matches!(
        route.spec.use_default_gateways,
        Some(GrpcRouteUseDefaultGateways::All)
    ) {
        out.push(Field::UseDefaultGateways);
    }
    out
}

/// Rule-level unimplemented fields of a GRPCRoute rule.
pub(crate) fn grpc_rule(rule: &GrpcRouteRules) -> Vec<Field> {
    let mut out = Vec::new();
    if rule.session_persistence.is_some() {
        out.push(Field::SessionPersistence);
    }
    if rule
        .backend_refs
        .iter()
        .flatten()
        .any(|b| b.filters.as_ref().is_some_and(|f| !f.is_empty()))
    {
        out.push(Field::BackendRefFilters);
    }
    out
}

/// Route-level unimplemented fields of a TLSRoute.
pub(crate) fn tls_route(route: &TlsRoute) -> Vec<Field> {
    let mut out = Vec::new();
    if matches!(
        route.spec.use_default_gateways,
        Some(TlsRouteUseDefaultGateways::All)
    ) {
        out.push(Field::UseDefaultGateways);
    }
    out
}

/// Whether `policy` targets port `port_name` of Service `namespace/service`
/// (a target without `sectionName` covers every port).
pub(crate) fn tls_policy_targets(
    policy: &BackendTlsPolicy,
    namespace: &str,
    service: &str,
    port_name: Option<&str>,
) -> bool {
    policy.metadata.namespace.as_deref() == Some(namespace)
        && policy.spec.target_refs.iter().any(|t| {
            t.group.is_empty()
                && t.kind == "Service"
                && t.name == service
                && t.section_name
                    .as_deref()
                    .is_none_or(|s| Some(s) == port_name)
        })
}
