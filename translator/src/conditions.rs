//! Building status conditions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types and reasons used by the translator (Gateway API v1.5).
pub(crate) mod reason {
    pub const ACCEPTED: &str = "Accepted";
    pub const PROGRAMMED: &str = "Programmed";
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    pub const CONFLICTED: &str = "Conflicted";
    pub const INVALID: &str = "Invalid";
    pub const LISTENERS_NOT_VALID: &str = "ListenersNotValid";
    pub const NO_CONFLICTS: &str = "NoConflicts";
    pub const HOSTNAME_CONFLICT: &str = "HostnameConflict";
    pub const PROTOCOL_CONFLICT: &str = "ProtocolConflict";
    pub const UNSUPPORTED_PROTOCOL: &str = "UnsupportedProtocol";
    pub const OVERLAPPING_TLS_CONFIG: &str = "OverlappingTLSConfig";
    pub const OVERLAPPING_HOSTNAMES: &str = "OverlappingHostnames";
    pub const ROUTE_CONFLICTED: &str = "Conflicted";
    pub const INVALID_PARAMETERS: &str = "InvalidParameters";
    pub const PORT_UNAVAILABLE: &str = "PortUnavailable";
    pub const UNSUPPORTED_VALUE: &str = "UnsupportedValue";
    pub const INVALID_CERTIFICATE_REF: &str = "InvalidCertificateRef";
    pub const INVALID_ROUTE_KINDS: &str = "InvalidRouteKinds";
    pub const REF_NOT_PERMITTED: &str = "RefNotPermitted";
    pub const NOT_ALLOWED_BY_LISTENERS: &str = "NotAllowedByListeners";
    pub const NO_MATCHING_LISTENER_HOSTNAME: &str = "NoMatchingListenerHostname";
    pub const NO_MATCHING_PARENT: &str = "NoMatchingParent";
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
    pub const INVALID_KIND: &str = "InvalidKind";
    pub const INVALID_CLIENT_CERTIFICATE_REF: &str = "InvalidClientCertificateRef";
    pub const DEFAULT_GATEWAY: &str = "DefaultGateway";
}

/// Collects the conditions of one object (or listener, or route parent).
pub(crate) struct Conditions<'a> {
    now: &'a Time,
    generation: Option<i64>,
    list: Vec<Condition>,
}

impl<'a> Conditions<'a> {
    pub(crate) fn new(now: &'a Time, generation: Option<i64>) -> Self {
        Self {
            now,
            generation,
            list: Vec::with_capacity(4),
        }
    }

    /// Adds a condition; `ok` is its status.
    pub(crate) fn set(&mut self, type_: &str, ok: bool, reason: &str, message: impl Into<String>) {
        self.list.push(Condition {
            type_: type_.to_owned(),
            status: if ok { "True" } else { "False" }.to_owned(),
            reason: reason.to_owned(),
            message: message.into(),
            observed_generation: self.generation,
            last_transition_time: self.now.clone(),
        });
    }

    pub(crate) fn into_vec(self) -> Vec<Condition> {
        self.list
    }
}
