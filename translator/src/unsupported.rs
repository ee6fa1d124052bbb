//! Gateway API fields Gatewright does not implement yet, in one place.
//!
//! A field listed here is never accepted and dropped: when it is set, its
//! object gets the condition the spec names (see [`Field`] for each), and
//! where the field concerns security the affected listener or backend
//! carries no traffic at all rather than traffic without the protection
//! asked for. A feature issue that implements a field removes its variant.

use crate::api::gateways::{Gateway, GatewayDefaultScope, GatewayListeners};
use crate::api::grpcroutes::{GrpcRoute, GrpcRouteRules, GrpcRouteUseDefaultGateways};
use crate::api::httproutes::{HttpRoute, HttpRouteRules, HttpRouteUseDefaultGateways};
use crate::api::tlsroutes::{TlsRoute, TlsRouteUseDefaultGateways};

/// A field (or object kind) Gatewright does not implement yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Field {
    /// Gateway `spec.defaultScope: All` (default Gateways). The Gateway
    /// gets `DefaultGateway=False`/`UnsupportedValue` and claims no route.
    DefaultScope,
    /// Listener `tls.options`: implementation-specific, and Gatewright
    /// defines none. The listener is `Accepted=False`/`UnsupportedValue`.
    ListenerTlsOptions,
    /// Route `spec.useDefaultGateways: All`: the route is
    /// `Accepted=False`/`UnsupportedValue` on every parent of ours.
    UseDefaultGateways,
    /// HTTPRoute and GRPCRoute rule `sessionPersistence`.
    SessionPersistence,
    /// HTTPRoute filter `ExternalAuth`.
    ExternalAuthFilter,
    /// Route filter `ExtensionRef` (Gatewright has no extension kinds).
    ExtensionRefFilter,
}

impl Field {
    /// Where the field is, as a user writes it.
    pub(crate) fn path(self) -> &'static str {
        match self {
            Self::DefaultScope => "spec.defaultScope",
            Self::ListenerTlsOptions => "tls.options",
            Self::UseDefaultGateways => "spec.useDefaultGateways",
            Self::SessionPersistence => "sessionPersistence",
            Self::ExternalAuthFilter => "filter type ExternalAuth",
            Self::ExtensionRefFilter => "filter type ExtensionRef",
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
    pub(crate) default_scope: bool,
}

/// The Gateway-level unimplemented fields `gateway` sets.
pub(crate) fn gateway(gateway: &Gateway) -> GatewayFields {
    GatewayFields {
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
    if rule.session_persistence.is_some() {
        out.push(Field::SessionPersistence);
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
