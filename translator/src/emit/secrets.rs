//! SDS secrets: the certificates HTTPS and TLS listeners serve, the CA
//! bundles they validate clients with, and the client certificates Gateways
//! present to TLS backends. Listeners and clusters refer to them by name, so
//! a changed Secret or ConfigMap reaches Envoy as a secret update alone: the
//! listener is not replaced and its connections are not drained.

use super::ads;
use crate::frontend::ClientValidation;
use crate::gateway::Certificate;
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, SdsSecretConfig, Secret, TlsCertificate,
    certificate_validation_context, secret,
};

/// The SDS secret holding certificate `c`.
pub(super) fn tls_certificate(c: &Certificate) -> Secret {
    Secret {
        name: c.name.clone(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(&c.chain)),
            private_key: Some(inline(&c.key)),
            ..Default::default()
        })),
    }
}

/// A reference to the SDS secret of certificate `c`, fetched over ADS.
pub(super) fn sds_config(c: &Certificate) -> SdsSecretConfig {
    by_name(&c.name)
}

/// The SDS secret holding the CAs that client certificates are checked
/// against. With `AllowInsecureFallback` an untrusted chain is accepted
/// too (a missing certificate is allowed by the listener's TLS context).
pub(super) fn client_validation(v: &ClientValidation) -> Secret {
    let trust = if v.insecure_fallback {
        certificate_validation_context::TrustChainVerification::AcceptUntrusted
    } else {
        certificate_validation_context::TrustChainVerification::VerifyTrustChain
    };
    Secret {
        name: v.secret.clone(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(inline(&v.bundle)),
                trust_chain_verification: trust as i32,
                ..Default::default()
            },
        )),
    }
}

/// A reference to the SDS secret `name`, fetched over ADS.
pub(super) fn by_name(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(ads()),
    }
}

fn inline(bytes: &[u8]) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes.to_vec())),
        ..Default::default()
    }
}
