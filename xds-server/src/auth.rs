//! Who an Envoy is, and which node groups it may subscribe as.
//!
//! The identity comes from the client certificate that the TLS layer
//! verified ([`crate::TlsIncoming`]); what an identity may see is decided by
//! an [`Authorizer`] the embedding program supplies, since only it knows
//! what a node group stands for.

use std::fmt;
use tonic::Status;
use x509_parser::extensions::GeneralName;

/// The names a client proved to own by presenting a certificate that the
/// server's client-certificate verifier accepted.
///
/// It is only as trustworthy as that verifier: [`crate::mtls_server_config`]
/// builds one that requires a certificate chaining to the given CA.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// URI subject alternative names, e.g. `spiffe://example/ns/a/gateway/b`.
    pub uris: Vec<String>,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// The subject's first common name, if it has one.
    pub common_name: Option<String>,
}

/// A certificate whose names could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityError(String);

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for IdentityError {}

impl PeerIdentity {
    /// The names in a DER-encoded X.509 certificate (the end-entity one of a
    /// chain). It does not verify anything: call it on a certificate the TLS
    /// layer has verified.
    pub fn from_certificate(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError(format!("not an X.509 certificate: {e}")))?;
        let mut identity = PeerIdentity::default();
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError(format!("unreadable subjectAltName extension: {e}")))?;
        for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
            match name {
                GeneralName::URI(uri) => identity.uris.push((*uri).to_owned()),
                GeneralName::DNSName(dns) => identity.dns_names.push((*dns).to_owned()),
                _ => {}
            }
        }
        // A common name that is not a string type (or not valid UTF-8) is
        // ignored rather than refused: the URI SANs are what authorisation
        // is normally based on.
        identity.common_name = cert
            .subject()
            .iter_common_name()
            .find_map(|cn| cn.as_str().ok())
            .map(str::to_owned);
        Ok(identity)
    }

    /// Whether `uri` is one of the certificate's URI SANs (exact match).
    pub fn has_uri(&self, uri: &str) -> bool {
        self.uris.iter().any(|u| u == uri)
    }
}

impl fmt::Display for PeerIdentity {
    /// A short description for log lines and error messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.uris.iter().map(String::as_str).collect();
        names.extend(self.dns_names.iter().map(String::as_str));
        if let Some(cn) = &self.common_name {
            if names.is_empty() {
                return write!(f, "CN={cn}");
            }
            return write!(f, "{} (CN={cn})", names.join(", "));
        }
        if names.is_empty() {
            f.write_str("a certificate without names")
        } else {
            f.write_str(&names.join(", "))
        }
    }
}

/// Decides whether a client may subscribe as a node group. Called once per
/// ADS stream, with the group its first request names, before anything is
/// sent on it.
pub trait Authorizer: Send + Sync + 'static {
    /// `Ok` if a client with this verified identity (None: the connection
    /// presented no certificate, e.g. plain TCP) may subscribe as `group`.
    /// Otherwise the status the stream is closed with, normally
    /// `PERMISSION_DENIED` (or `UNAUTHENTICATED` without an identity) with a
    /// message saying why.
    fn authorize(&self, identity: Option<&PeerIdentity>, group: &str) -> Result<(), Status>;
}

/// Any closure of the right shape is an [`Authorizer`], which keeps tests
/// and simple policies short.
impl<F> Authorizer for F
where
    F: Fn(Option<&PeerIdentity>, &str) -> Result<(), Status> + Send + Sync + 'static,
{
    fn authorize(&self, identity: Option<&PeerIdentity>, group: &str) -> Result<(), Status> {
        self(identity, group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_everything() {
        let id = PeerIdentity {
            uris: vec!["spiffe://t/a".into()],
            dns_names: vec!["a.example".into()],
            common_name: Some("a".into()),
        };
        assert_eq!(id.to_string(), "spiffe://t/a, a.example (CN=a)");
        assert_eq!(
            PeerIdentity {
                common_name: Some("x".into()),
                ..Default::default()
            }
            .to_string(),
            "CN=x"
        );
        assert_eq!(
            PeerIdentity::default().to_string(),
            "a certificate without names"
        );
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        let err = PeerIdentity::from_certificate(b"not DER").unwrap_err();
        assert!(
            err.to_string().contains("not an X.509 certificate"),
            "{err}"
        );
    }

    #[test]
    fn has_uri_is_exact() {
        let id = PeerIdentity {
            uris: vec!["spiffe://t/ns/a/gateway/b".into()],
            ..Default::default()
        };
        assert!(id.has_uri("spiffe://t/ns/a/gateway/b"));
        assert!(!id.has_uri("spiffe://t/ns/a/gateway/bb"));
        assert!(!id.has_uri("spiffe://t/ns/a/gateway"));
    }

    #[test]
    fn closures_are_authorizers() {
        let only_a = |_: Option<&PeerIdentity>, group: &str| {
            if group == "a" {
                Ok(())
            } else {
                Err(Status::permission_denied(format!("not {group}")))
            }
        };
        let a: &dyn Authorizer = &only_a;
        assert!(a.authorize(None, "a").is_ok());
        let denied = a.authorize(None, "b").unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    }
}
