//! SDS secrets: the certificates HTTPS listeners serve and the client
//! certificates Gateways present to TLS backends.

use super::ads;
use crate::gateway::Certificate;
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    SdsSecretConfig, Secret, TlsCertificate, secret,
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
    SdsSecretConfig {
        name: c.name.clone(),
        sds_config: Some(ads()),
    }
}

fn inline(bytes: &[u8]) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes.to_vec())),
        ..Default::default()
    }
}
