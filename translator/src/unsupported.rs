//! Gateway API fields Gatewright does not implement yet, in one place.
//!
//! A field listed here is never accepted and dropped: when it is set, its
//! object gets the condition the spec names (see [`Field`] for each), and
//! where the field concerns security the affected listener or backend
//! carries no traffic at all rather than traffic without the protection
//! asked for. A feature issue that implements a field removes its variant.

use crate::api::gateways::GatewayListeners;
use crate::api::grpcroutes::GrpcRouteRules;
use crate::api::httproutes::HttpRouteRules;

/// A field (or object kind) Gatewright does not implement yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Field {
    /// Listener `tls.options`: implementation-specific, and Gatewright
    /// defines none. The listener is `Accepted=False`/`UnsupportedValue`.
    ListenerTlsOptions,
    /// Listener `filters` (experimental `GatewayListenerFilters`). The
    /// listener is `Accepted=False`/`UnsupportedValue`: requests must not
    /// reach routes without the filters (external authorization) asked for.
    ListenerFilters,
    /// HTTPRoute and GRPCRoute rule `sessionPersistence`.
    SessionPersistence,
    /// Route filter `ExtensionRef` (Gatewright has no extension kinds).
    ExtensionRefFilter,
}

impl Field {
    /// Where the field is, as a user writes it.
    pub(crate) fn path(self) -> &'static str {
        match self {
            Self::ListenerTlsOptions => "tls.options",
            Self::ListenerFilters => "filters",
            Self::SessionPersistence => "sessionPersistence",
            Self::ExtensionRefFilter => "filter type ExtensionRef",
        }
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is not implemented by Gatewright yet", self.path())
    }
}

/// The unimplemented fields one listener sets.
pub(crate) fn listener(listener: &GatewayListeners) -> Option<Field> {
    if listener.filters.is_some() {
        return Some(Field::ListenerFilters);
    }
    listener
        .tls
        .as_ref()
        .and_then(|t| t.options.as_ref())
        .is_some_and(|o| !o.is_empty())
        .then_some(Field::ListenerTlsOptions)
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

/// Rule-level unimplemented fields of a GRPCRoute rule.
pub(crate) fn grpc_rule(rule: &GrpcRouteRules) -> Vec<Field> {
    let mut out = Vec::new();
    if rule.session_persistence.is_some() {
        out.push(Field::SessionPersistence);
    }
    out
}
