//! Building status conditions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use std::fmt;

/// The condition types the translator sets (Gateway API v1.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConditionType {
    Accepted,
    Programmed,
    ResolvedRefs,
    Conflicted,
    OverlappingTlsConfig,
    DefaultGateway,
    InsecureFrontendValidationMode,
}

impl ConditionType {
    /// Every type, in declaration order.
    pub(crate) const ALL: [Self; 7] = [
        Self::Accepted,
        Self::Programmed,
        Self::ResolvedRefs,
        Self::Conflicted,
        Self::OverlappingTlsConfig,
        Self::DefaultGateway,
        Self::InsecureFrontendValidationMode,
    ];

    /// The type as the spec spells it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "Accepted",
            Self::Programmed => "Programmed",
            Self::ResolvedRefs => "ResolvedRefs",
            Self::Conflicted => "Conflicted",
            Self::OverlappingTlsConfig => "OverlappingTLSConfig",
            Self::DefaultGateway => "DefaultGateway",
            Self::InsecureFrontendValidationMode => "InsecureFrontendValidationMode",
        }
    }
}

impl fmt::Display for ConditionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The condition reasons the translator gives (Gateway API v1.5). One enum
/// serves every object: the spec reuses several reasons across objects and
/// condition types (`Accepted`, `Invalid`, `UnsupportedValue`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    Accepted,
    Programmed,
    ResolvedRefs,
    Invalid,
    ListenersNotValid,
    NoConflicts,
    HostnameConflict,
    ProtocolConflict,
    UnsupportedProtocol,
    OverlappingHostnames,
    /// A route that lost a listener to an overlapping route of another kind.
    Conflicted,
    InvalidParameters,
    PortUnavailable,
    UnsupportedValue,
    InvalidCertificateRef,
    InvalidRouteKinds,
    RefNotPermitted,
    NotAllowedByListeners,
    NoMatchingListenerHostname,
    NoMatchingParent,
    BackendNotFound,
    InvalidKind,
    InvalidClientCertificateRef,
    /// Gateway: a listener's references do not resolve.
    ListenersNotResolved,
    /// A caCertificateRef does not resolve to a CA (listener, BackendTLSPolicy).
    InvalidCaCertificateRef,
    /// A caCertificateRef names a kind that holds no CA.
    InvalidCaCertificateKind,
    /// None of the CA certificates is usable.
    NoValidCaCertificate,
    /// Frontend validation was switched to `AllowInsecureFallback`.
    ConfigurationChanged,
    /// A ListenerSet its Gateway's `spec.allowedListeners` does not admit.
    NotAllowed,
    /// A ListenerSet whose Gateway is not accepted.
    ParentNotAccepted,
    /// A Gateway with `spec.defaultScope: All` (GEP-3793 names no reason;
    /// this follows the spec's habit of a positive reason named as its
    /// condition type).
    DefaultGateway,
    /// A Gateway asks for an address of a type Gatewright cannot give.
    UnsupportedAddress,
}

impl Reason {
    /// The reason as the spec spells it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "Accepted",
            Self::Programmed => "Programmed",
            Self::ResolvedRefs => "ResolvedRefs",
            Self::Invalid => "Invalid",
            Self::ListenersNotValid => "ListenersNotValid",
            Self::NoConflicts => "NoConflicts",
            Self::HostnameConflict => "HostnameConflict",
            Self::ProtocolConflict => "ProtocolConflict",
            Self::UnsupportedProtocol => "UnsupportedProtocol",
            Self::OverlappingHostnames => "OverlappingHostnames",
            Self::Conflicted => "Conflicted",
            Self::InvalidParameters => "InvalidParameters",
            Self::PortUnavailable => "PortUnavailable",
            Self::UnsupportedValue => "UnsupportedValue",
            Self::InvalidCertificateRef => "InvalidCertificateRef",
            Self::InvalidRouteKinds => "InvalidRouteKinds",
            Self::RefNotPermitted => "RefNotPermitted",
            Self::NotAllowedByListeners => "NotAllowedByListeners",
            Self::NoMatchingListenerHostname => "NoMatchingListenerHostname",
            Self::NoMatchingParent => "NoMatchingParent",
            Self::BackendNotFound => "BackendNotFound",
            Self::InvalidKind => "InvalidKind",
            Self::InvalidClientCertificateRef => "InvalidClientCertificateRef",
            Self::ListenersNotResolved => "ListenersNotResolved",
            Self::InvalidCaCertificateRef => "InvalidCACertificateRef",
            Self::InvalidCaCertificateKind => "InvalidCACertificateKind",
            Self::NoValidCaCertificate => "NoValidCACertificate",
            Self::ConfigurationChanged => "ConfigurationChanged",
            Self::NotAllowed => "NotAllowed",
            Self::ParentNotAccepted => "ParentNotAccepted",
            Self::DefaultGateway => "DefaultGateway",
            Self::UnsupportedAddress => "UnsupportedAddress",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
    pub(crate) fn set(
        &mut self,
        type_: ConditionType,
        ok: bool,
        reason: Reason,
        message: impl Into<String>,
    ) {
        self.list.push(Condition {
            type_: type_.as_str().to_owned(),
            status: if ok { "True" } else { "False" }.to_owned(),
            reason: reason.as_str().to_owned(),
            message: message.into(),
            observed_generation: self.generation,
            last_transition_time: self.now.clone(),
        });
    }

    pub(crate) fn into_vec(self) -> Vec<Condition> {
        self.list
    }
}

#[cfg(test)]
mod tests {
    use super::{ConditionType, Reason};

    #[test]
    fn display_is_the_spec_string() {
        assert_eq!(
            ConditionType::OverlappingTlsConfig.to_string(),
            "OverlappingTLSConfig"
        );
        assert_eq!(
            Reason::InvalidClientCertificateRef.to_string(),
            "InvalidClientCertificateRef"
        );
        assert_eq!(
            Reason::InvalidCaCertificateRef.to_string(),
            "InvalidCACertificateRef"
        );
        assert_eq!(
            Reason::NoValidCaCertificate.to_string(),
            "NoValidCACertificate"
        );
    }
}
