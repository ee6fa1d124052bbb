//! The certificates that authenticate the xDS connection between each
//! Gateway's Envoy and the controller, in Kubernetes mode.
//!
//! - One CA for the whole installation, kept in the Secret
//!   [`CA_SECRET_NAME`] of the controller's namespace, so every replica
//!   signs with the same key and every Envoy trusts every replica.
//! - Each replica makes its own short-lived server certificate in memory
//!   ([`Ca::server_config`]); it never leaves the process.
//! - Each Gateway gets a client certificate in a `kubernetes.io/tls` Secret
//!   in its namespace ([`Ca::ensure_client_secret`]), owned by the Gateway,
//!   naming it as a URI SAN ([`client_identity`]). Its Envoy mounts it.
//! - [`GatewayAuthorizer`] lets a client fetch node group `NS/NAME` only
//!   with the certificate of Gateway NS/NAME: an Envoy (or anything that
//!   steals its Secret) sees its own Gateway's configuration, private keys
//!   included, and nobody else's.
//!
//! Client certificates live [`DEFAULT_CLIENT_VALIDITY`] (365 days) unless
//! `gatewright controller --xds-client-cert-validity` says otherwise
//! ([`Ca::set_client_validity`]), and are reissued once less than a third
//! of that is left ([`Ca::renew_before`]): about 122 days before the end by
//! default, leaving the kubelet ample time to update the mounted Secret.
//! Envoy takes the files through SDS and watches the Secret's mount point
//! (`infra::kubernetes::bootstrap`), so a renewed certificate reaches a
//! running Envoy without a restart.
//!
//! The CA is valid for ten years and is not rotated automatically: to
//! replace it, delete its Secret and restart the controller replicas
//! together; every Gateway's client Secret is then reissued, and Envoys
//! pick up its new `ca.crt` and certificate together, again without a
//! restart, once the kubelet has updated their mounts.

use anyhow::{Context as _, bail};
use gatewright_xds::{Authorizer, PeerIdentity, ReloadableServerConfig};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Api;
use kube::api::{DeleteParams, PostParams, Preconditions};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The Secret, in the controller's namespace, holding the xDS CA.
pub const CA_SECRET_NAME: &str = "gatewright-xds-ca";
/// Key of the CA certificate (PEM) in the CA Secret and in client Secrets.
pub const CA_CERT_KEY: &str = "ca.crt";
/// Key of the CA private key (PKCS#8 PEM) in the CA Secret.
pub const CA_KEY_KEY: &str = "ca.key";
/// Key of a client certificate (PEM) in a client Secret.
pub const TLS_CERT_KEY: &str = "tls.crt";
/// Key of a client private key (PKCS#8 PEM) in a client Secret.
pub const TLS_KEY_KEY: &str = "tls.key";
/// The SPIFFE trust domain of client identities.
pub const TRUST_DOMAIN: &str = "gatewright.dev";
/// How often a replica should make itself a new server certificate (it is
/// valid for a year); see [`spawn_server_cert_renewal`].
pub const SERVER_CERT_RENEWAL: Duration = Duration::from_secs(30 * DAY);

const CA_COMMON_NAME: &str = "gatewright xDS CA";
const SERVER_COMMON_NAME: &str = "gatewright xDS server";
const DAY: u64 = 24 * 60 * 60;
const CA_VALIDITY: Duration = Duration::from_secs(3650 * DAY);
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * DAY);
/// How long client certificates are valid unless
/// [`Ca::set_client_validity`] says otherwise.
pub const DEFAULT_CLIENT_VALIDITY: Duration = LEAF_VALIDITY;
/// The shortest client certificate lifetime [`Ca::set_client_validity`]
/// takes: renewal then starts 200 s before the end, which leaves a
/// provisioning round (at most 30 s apart) plus the kubelet's update of
/// the mounted Secret (typically within a minute or two) to complete.
pub const MIN_CLIENT_VALIDITY: Duration = Duration::from_secs(10 * 60);
/// A client certificate is reissued once less than 1/`RENEW_FRACTION` of
/// its lifetime is left ([`Ca::renew_before`]).
const RENEW_FRACTION: u32 = 3;
/// Certificates start an hour in the past, so that a clock a little behind
/// ours does not find them not yet valid.
const CLOCK_SKEW: Duration = Duration::from_secs(60 * 60);
/// Prefix of client Secret names. Not a prefix of [`CA_SECRET_NAME`]'s
/// ("gatewright-xds-ca"), so a Gateway named "ca" cannot collide with it.
const CLIENT_SECRET_PREFIX: &str = "gatewright-xds-client-";
/// Longest Secret name (a DNS subdomain).
const MAX_NAME: usize = 253;
/// Hex digits of the hash in a shortened client Secret name.
const HASH_HEX: usize = 16;
const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
const MANAGED_BY: &str = "gatewright";
/// Marks a Secret as a Gatewright xDS client Secret, so one a user made
/// under the same name is never overwritten.
const CLIENT_SECRET_LABEL: &str = "gatewright.dev/xds-client";
/// How many times a write that lost a race with another replica is retried.
const WRITE_ATTEMPTS: usize = 5;

/// The identity of Gateway `namespace`/`name`'s Envoy: the URI SAN of its
/// client certificate, `spiffe://gatewright.dev/ns/<namespace>/gateway/<name>`.
///
/// A URI SAN rather than the common name because a CN is limited to 64
/// characters while a namespace and a Gateway name together may be 316, and
/// because SANs are the names TLS stacks (Envoy's included) are built to
/// match; the SPIFFE form because it is the convention for workload
/// identities, so other tools read it. It is unambiguous: Kubernetes names
/// contain no `/`.
pub fn client_identity(namespace: &str, name: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{namespace}/gateway/{name}")
}

/// The name of the Secret, in the Gateway's namespace, holding its Envoy's
/// client certificate: `gatewright-xds-client-<gateway>` for a Gateway
/// name of up to 214 characters; for a longer one, its first 214
/// characters (a trailing `-` or `.` made `x`), `-`, and 16 hex digits of
/// the SHA-256 of the whole name: 253 characters in all. A valid Secret
/// name for every valid Gateway name (a DNS subdomain), and distinct for
/// distinct Gateway names (barring a 64-bit hash collision between two
/// long ones): a short form is at most 236 characters, so it never equals
/// a shortened one.
pub fn client_secret_name(gateway_name: &str) -> String {
    let budget = MAX_NAME - CLIENT_SECRET_PREFIX.len() - 1 - HASH_HEX;
    if gateway_name.len() <= budget {
        return format!("{CLIENT_SECRET_PREFIX}{gateway_name}");
    }
    // (Gateway names are DNS subdomains, so ASCII; the boundary check
    // only keeps anything else from panicking.)
    let mut cut = budget;
    while !gateway_name.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut kept = gateway_name[..cut].to_owned();
    // Followed by '-', a '-' or '.' would end a DNS label badly. Replace
    // (not drop) it, so the name keeps its full length; distinctness comes
    // from the hash of the whole name anyway.
    while kept.ends_with(['-', '.']) {
        kept.pop();
    }
    while kept.len() < cut {
        kept.push('x');
    }
    let hash = hex(&sha256(gateway_name.as_bytes())[..HASH_HEX / 2]);
    format!("{CLIENT_SECRET_PREFIX}{kept}-{hash}")
}

/// The DNS names a client may use for the xDS Service `service` in
/// `namespace`: `svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local`.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// SHA-256 through rustls's ring provider, which is already linked, rather
/// than another crate.
fn sha256(data: &[u8]) -> Vec<u8> {
    match rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256 {
        rustls::SupportedCipherSuite::Tls13(suite) => {
            suite.common.hash_provider.hash(data).as_ref().to_vec()
        }
        // A TLS 1.3 suite is always the Tls13 variant.
        rustls::SupportedCipherSuite::Tls12(suite) => {
            suite.common.hash_provider.hash(data).as_ref().to_vec()
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PKCS#8 PEM).
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The xDS certificate authority: signs the replicas' server certificates
/// and the Gateways' client certificates.
pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// The lifetime of the client certificates [`Ca::issue_client`] makes.
    client_validity: Duration,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// Parameters valid from a little before now for `validity`.
fn params_valid_for(validity: Duration) -> anyhow::Result<CertificateParams> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?;
    // rcgen takes `time::OffsetDateTime`, which this crate does not depend
    // on: reach it from the epoch date plus a std Duration.
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let mut params = CertificateParams::default();
    // Not rcgen's placeholder subject.
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.not_before = epoch + now.saturating_sub(CLOCK_SKEW);
    params.not_after = epoch + (now + validity);
    Ok(params)
}

fn new_key() -> anyhow::Result<KeyPair> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating a P-256 key")
}

fn now_plus(d: Duration) -> UnixTime {
    UnixTime::since_unix_epoch(
        (SystemTime::now() + d)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

fn first_cert(pem: &str) -> anyhow::Result<CertificateDer<'static>> {
    CertificateDer::from_pem_slice(pem.as_bytes()).context("no PEM certificate")
}

impl Ca {
    /// A new CA: ECDSA P-256, valid for ten years, CN "gatewright xDS CA",
    /// allowed to sign only end-entity certificates.
    pub fn generate() -> anyhow::Result<Ca> {
        let key = new_key()?;
        let mut params = params_valid_for(CA_VALIDITY)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(DnType::CommonName, CA_COMMON_NAME);
        let cert = params
            .self_signed(&key)
            .context("self-signing the xDS CA")?;
        Ok(Ca {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
            client_validity: DEFAULT_CLIENT_VALIDITY,
        })
    }

    /// The CA stored as PEM certificate and PKCS#8 PEM key. Checks that the
    /// key is the certificate's by issuing a certificate and verifying it.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> anyhow::Result<Ca> {
        let key = KeyPair::from_pem(key_pem).context("reading the CA private key")?;
        let cert_der = first_cert(cert_pem).context("reading the CA certificate")?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .context("reading the CA certificate's subject")?;
        let ca = Ca {
            cert_pem: cert_pem.to_owned(),
            cert_der,
            key_pem: key_pem.to_owned(),
            issuer,
            client_validity: DEFAULT_CLIENT_VALIDITY,
        };
        let probe = ca.issue_client("probe", "probe")?;
        ca.verify_client(&probe.cert_pem, now_plus(Duration::ZERO))
            .context("the CA's key does not sign certificates its certificate verifies")?;
        Ok(ca)
    }

    /// The CA from its Secret's `ca.crt` and `ca.key`.
    pub fn from_secret(secret: &Secret) -> anyhow::Result<Ca> {
        let field = |key: &str| -> anyhow::Result<String> {
            let bytes = secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .with_context(|| format!("no {key:?} in the Secret"))?;
            String::from_utf8(bytes.0.clone()).with_context(|| format!("{key:?} is not PEM text"))
        };
        Ca::from_pem(&field(CA_CERT_KEY)?, &field(CA_KEY_KEY)?)
    }

    /// Makes client certificates valid for `validity` from now on (at least
    /// [`MIN_CLIENT_VALIDITY`]). Secrets issued before are renewed by the
    /// new rule: when less than a third of `validity` is left, or at once if
    /// they outlive what would be issued now.
    pub fn set_client_validity(&mut self, validity: Duration) -> anyhow::Result<()> {
        if validity < MIN_CLIENT_VALIDITY {
            bail!(
                "an xDS client certificate must be valid for at least {}s (asked for {}s): \
                 renewal starts when a third is left, and the kubelet needs time to \
                 update the mounted Secret",
                MIN_CLIENT_VALIDITY.as_secs(),
                validity.as_secs()
            );
        }
        self.client_validity = validity;
        Ok(())
    }

    /// The lifetime of the client certificates this CA issues.
    pub fn client_validity(&self) -> Duration {
        self.client_validity
    }

    /// A client certificate with less than this left is reissued: a third
    /// of [`Ca::client_validity`] (about 122 days for the default year), so
    /// that with any lifetime the certificate is replaced well before it
    /// ends, and at most every two thirds of its life.
    pub fn renew_before(&self) -> Duration {
        self.client_validity / RENEW_FRACTION
    }

    /// The CA certificate (PEM), which Envoys trust to verify the server.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate (DER).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA's Secret, named [`CA_SECRET_NAME`], in `namespace`.
    pub fn to_secret(&self, namespace: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(CA_SECRET_NAME.to_owned()),
                namespace: Some(namespace.to_owned()),
                labels: Some(BTreeMap::from([(
                    MANAGED_BY_LABEL.to_owned(),
                    MANAGED_BY.to_owned(),
                )])),
                ..Default::default()
            },
            type_: Some("Opaque".to_owned()),
            data: Some(BTreeMap::from([
                (
                    CA_CERT_KEY.to_owned(),
                    ByteString(self.cert_pem.clone().into_bytes()),
                ),
                (
                    CA_KEY_KEY.to_owned(),
                    ByteString(self.key_pem.clone().into_bytes()),
                ),
            ])),
            ..Default::default()
        }
    }

    fn sign(
        &self,
        mut params: CertificateParams,
        what: &str,
    ) -> anyhow::Result<(IssuedCert, rcgen::Certificate, KeyPair)> {
        let key = new_key()?;
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("signing {what}"))?;
        let issued = IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok((issued, cert, key))
    }

    /// A new server certificate for `dns_names`, valid for a year.
    pub fn issue_server(&self, dns_names: &[String]) -> anyhow::Result<IssuedCert> {
        Ok(self.server_cert(dns_names)?.0)
    }

    fn server_cert(
        &self,
        dns_names: &[String],
    ) -> anyhow::Result<(IssuedCert, rcgen::Certificate, KeyPair)> {
        if dns_names.is_empty() {
            bail!("a server certificate needs at least one DNS name");
        }
        let mut params = params_valid_for(LEAF_VALIDITY)?;
        params.subject_alt_names = dns_names
            .iter()
            .map(|n| {
                Ok(SanType::DnsName(
                    n.as_str()
                        .try_into()
                        .with_context(|| format!("{n:?} is not a DNS name"))?,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        params
            .distinguished_name
            .push(DnType::CommonName, SERVER_COMMON_NAME);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, "the xDS server certificate")
    }

    /// A rustls configuration for the ADS server: a fresh server
    /// certificate for `dns_names` (in memory, valid for a year), client
    /// certificates signed by this CA required, ALPN `h2`. Wrap it in a
    /// [`ReloadableServerConfig`] to serve it; see
    /// [`spawn_server_cert_renewal`].
    pub fn server_config(&self, dns_names: &[String]) -> anyhow::Result<rustls::ServerConfig> {
        let (_, cert, key) = self.server_cert(dns_names)?;
        let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        gatewright_xds::mtls_server_config(
            std::slice::from_ref(&self.cert_der),
            vec![cert.der().clone()],
            key,
        )
        .context("building the xDS server's TLS configuration")
    }

    /// A new client certificate for Gateway `namespace`/`name`'s Envoy,
    /// valid for [`Ca::client_validity`], whose only SAN is
    /// [`client_identity`].
    pub fn issue_client(&self, namespace: &str, name: &str) -> anyhow::Result<IssuedCert> {
        self.issue_client_valid_for(namespace, name, self.client_validity)
    }

    /// As [`Ca::issue_client`], valid for `validity` from now (any length:
    /// tests use seconds to watch certificates expire).
    pub fn issue_client_valid_for(
        &self,
        namespace: &str,
        name: &str,
        validity: Duration,
    ) -> anyhow::Result<IssuedCert> {
        let identity = client_identity(namespace, name);
        let mut params = params_valid_for(validity)?;
        params.subject_alt_names =
            vec![SanType::URI(identity.as_str().try_into().with_context(
                || format!("{identity:?} is not an IA5 string"),
            )?)];
        // The CN is only for people reading the certificate; it is limited
        // to 64 characters, so a long name gets a generic one.
        let readable = format!("{namespace}/{name}");
        let cn = if readable.len() <= 64 {
            readable
        } else {
            "gatewright Envoy".to_owned()
        };
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        Ok(self
            .sign(
                params,
                &format!("the client certificate of {namespace}/{name}"),
            )?
            .0)
    }

    /// Whether `cert_pem` is a client certificate this CA signed that is
    /// valid at `at`, as the xDS server's verifier would decide.
    pub fn verify_client(&self, cert_pem: &str, at: UnixTime) -> anyhow::Result<()> {
        let cert = first_cert(cert_pem)?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.cert_der.clone())
            .context("the CA certificate is not usable as a root")?;
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .context("building a client certificate verifier")?;
        verifier
            .verify_client_cert(&cert, &[], at)
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Why the client Secret `secret` must be reissued for Gateway
    /// `namespace`/`name`, or None if it is good: all three keys present,
    /// the current CA, a certificate this CA signed for exactly this
    /// Gateway's identity with its own key, valid for [`Ca::renew_before`]
    /// more, and not for longer than one issued now would be.
    pub fn renewal_reason(&self, secret: &Secret, namespace: &str, name: &str) -> Option<String> {
        let get = |key: &str| {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .and_then(|b| std::str::from_utf8(&b.0).ok())
        };
        let (Some(cert_pem), Some(key_pem), Some(ca_pem)) =
            (get(TLS_CERT_KEY), get(TLS_KEY_KEY), get(CA_CERT_KEY))
        else {
            return Some("it lacks tls.crt, tls.key or ca.crt".to_owned());
        };
        if ca_pem != self.cert_pem {
            return Some("its ca.crt is not the current CA".to_owned());
        }
        if let Err(e) = self.verify_client(cert_pem, now_plus(Duration::ZERO)) {
            return Some(format!(
                "its certificate is not valid for the current CA: {e}"
            ));
        }
        if self
            .verify_client(cert_pem, now_plus(self.renew_before()))
            .is_err()
        {
            return Some(format!(
                "its certificate expires within {}s (a third of its {}s lifetime)",
                self.renew_before().as_secs(),
                self.client_validity.as_secs()
            ));
        }
        // Still valid beyond what a certificate issued now would be (the
        // lifetime was shortened): replace it, or the shorter lifetime
        // would only take effect when the longer one runs out. The hour's
        // margin keeps certificates issued moments ago from qualifying.
        if self
            .verify_client(cert_pem, now_plus(self.client_validity + CLOCK_SKEW))
            .is_ok()
        {
            return Some(format!(
                "its certificate outlives the {}s client certificate lifetime",
                self.client_validity.as_secs()
            ));
        }
        let expected = client_identity(namespace, name);
        match first_cert(cert_pem)
            .map_err(|e| e.to_string())
            .and_then(|der| PeerIdentity::from_certificate(&der).map_err(|e| e.to_string()))
        {
            Ok(id) if id.uris == [expected.as_str()] => {}
            Ok(id) => return Some(format!("its certificate is for {id}, not {expected}")),
            Err(e) => return Some(format!("its certificate is unreadable: {e}")),
        }
        let keys_match = (|| {
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).ok()?;
            let cert = first_cert(cert_pem).ok()?;
            rustls::sign::CertifiedKey::from_der(
                vec![cert],
                key,
                &rustls::crypto::ring::default_provider(),
            )
            .ok()
        })();
        if keys_match.is_none() {
            return Some("its tls.key is not the certificate's key".to_owned());
        }
        None
    }

    /// A client Secret body for Gateway `namespace`/`gateway_name`.
    fn client_secret_data(
        &self,
        namespace: &str,
        gateway_name: &str,
    ) -> anyhow::Result<BTreeMap<String, ByteString>> {
        let issued = self.issue_client(namespace, gateway_name)?;
        Ok(BTreeMap::from([
            (
                TLS_CERT_KEY.to_owned(),
                ByteString(issued.cert_pem.into_bytes()),
            ),
            (
                TLS_KEY_KEY.to_owned(),
                ByteString(issued.key_pem.into_bytes()),
            ),
            (
                CA_CERT_KEY.to_owned(),
                ByteString(self.cert_pem.clone().into_bytes()),
            ),
        ]))
    }

    /// Makes sure Gateway `namespace`/`gateway_name` has a good client
    /// Secret ([`client_secret_name`]): creates it if missing; reissues the
    /// certificate if [`Ca::renewal_reason`] finds one; makes `owner` (the
    /// Gateway) its only owner so it is garbage-collected with the Gateway.
    /// Returns the Secret's name.
    ///
    /// Safe with several replicas at once: writes carry the resourceVersion
    /// they were based on, and one that loses a race re-reads and re-checks
    /// (finding the winner's certificate good). A Secret of that name that
    /// Gatewright did not make is left alone, and is an error.
    pub async fn ensure_client_secret(
        &self,
        client: &kube::Client,
        namespace: &str,
        gateway_name: &str,
        owner: OwnerReference,
    ) -> anyhow::Result<String> {
        let name = client_secret_name(gateway_name);
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let what = || format!("the xDS client Secret {namespace}/{name}");
        for _ in 0..WRITE_ATTEMPTS {
            let existing = api
                .get_opt(&name)
                .await
                .with_context(|| format!("reading {}", what()))?;
            let Some(existing) = existing else {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(namespace.to_owned()),
                        labels: Some(client_labels()),
                        owner_references: Some(vec![owner.clone()]),
                        ..Default::default()
                    },
                    type_: Some(TLS_SECRET_TYPE.to_owned()),
                    data: Some(self.client_secret_data(namespace, gateway_name)?),
                    ..Default::default()
                };
                match api.create(&PostParams::default(), &secret).await {
                    Ok(_) => {
                        tracing::info!(secret = %format!("{namespace}/{name}"), "created an xDS client certificate");
                        return Ok(name);
                    }
                    // Another replica created it meanwhile: check theirs.
                    Err(kube::Error::Api(e)) if e.code == 409 => continue,
                    Err(e) => return Err(e).with_context(|| format!("creating {}", what())),
                }
            };
            let labels = existing.metadata.labels.clone().unwrap_or_default();
            if labels.get(CLIENT_SECRET_LABEL).map(String::as_str) != Some("true") {
                bail!(
                    "{} exists but was not made by Gatewright (no {CLIENT_SECRET_LABEL}=true label); \
                     not overwriting it: delete or rename it",
                    what()
                );
            }
            let version = existing.metadata.resource_version.clone();
            if existing.type_.as_deref() != Some(TLS_SECRET_TYPE) {
                // A Secret's type cannot be changed: delete it (only the
                // version we looked at) and create it anew.
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        resource_version: version,
                        uid: existing.metadata.uid.clone(),
                    }),
                    ..Default::default()
                };
                match api.delete(&name, &params).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
                    Err(e) => return Err(e).with_context(|| format!("deleting {}", what())),
                }
                continue;
            }
            let reason = self.renewal_reason(&existing, namespace, gateway_name);
            let refs = existing
                .metadata
                .owner_references
                .clone()
                .unwrap_or_default();
            let owned = refs.iter().any(|r| r.uid == owner.uid);
            if reason.is_none() && owned {
                return Ok(name);
            }
            let mut updated = existing;
            // The server keeps track of these itself.
            updated.metadata.managed_fields = None;
            updated.metadata.owner_references = Some(with_owner(refs, &owner));
            let mut labels = labels;
            labels.extend(client_labels());
            updated.metadata.labels = Some(labels);
            if reason.is_some() {
                updated.data = Some(self.client_secret_data(namespace, gateway_name)?);
            }
            // `replace` sends the resourceVersion read above: if another
            // replica wrote in between, this fails with 409 and we re-check.
            match api.replace(&name, &PostParams::default(), &updated).await {
                Ok(_) => {
                    match &reason {
                        Some(why) => tracing::info!(
                            secret = %format!("{namespace}/{name}"),
                            "reissued an xDS client certificate: {why}"
                        ),
                        None => tracing::info!(
                            secret = %format!("{namespace}/{name}"),
                            "set the owner of an xDS client Secret"
                        ),
                    }
                    return Ok(name);
                }
                Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => continue,
                Err(e) => return Err(e).with_context(|| format!("updating {}", what())),
            }
        }
        bail!(
            "{} kept changing while it was being written ({WRITE_ATTEMPTS} attempts)",
            what()
        )
    }
}

const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// `refs` with `owner` in, and out any earlier incarnation of it (a Gateway
/// of the same name that was deleted and made again) and, if `owner` is the
/// controller, any other controller (there may be only one). Other owners,
/// added by other tools, stay.
fn with_owner(refs: Vec<OwnerReference>, owner: &OwnerReference) -> Vec<OwnerReference> {
    let mut out: Vec<OwnerReference> = refs
        .into_iter()
        .filter(|r| {
            let same_object =
                r.api_version == owner.api_version && r.kind == owner.kind && r.name == owner.name;
            let rival_controller = r.controller == Some(true) && owner.controller == Some(true);
            r.uid != owner.uid && !same_object && !rival_controller
        })
        .collect();
    out.push(owner.clone());
    out
}

fn client_labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (CLIENT_SECRET_LABEL.to_owned(), "true".to_owned()),
    ])
}

/// Reads the xDS CA from the Secret [`CA_SECRET_NAME`] in `namespace`, or
/// makes one and stores it there if there is none. Replicas starting
/// together all end up with the same CA: creation is a CREATE, and one
/// that finds the name taken (another replica was first) reads the
/// winner's. A Secret that exists but cannot be read as a CA is an error,
/// never overwritten, since other replicas and Envoys may be using it.
/// A new Secret gets `owner` (the installation's xDS Service), so that
/// uninstalling removes it.
pub async fn load_or_create_ca(
    client: &kube::Client,
    namespace: &str,
    owner: Option<&OwnerReference>,
) -> anyhow::Result<Ca> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let what = format!("the xDS CA Secret {namespace}/{CA_SECRET_NAME}");
    for _ in 0..WRITE_ATTEMPTS {
        if let Some(secret) = api
            .get_opt(CA_SECRET_NAME)
            .await
            .with_context(|| format!("reading {what}"))?
        {
            return Ca::from_secret(&secret).with_context(|| {
                format!("{what} does not hold a usable CA (delete it to have a new one made)")
            });
        }
        let ca = Ca::generate()?;
        let mut secret = ca.to_secret(namespace);
        secret.metadata.owner_references = owner.map(|o| vec![o.clone()]);
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!("created {what}");
                return Ok(ca);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::debug!("another replica created {what} first");
            }
            Err(e) => return Err(e).with_context(|| format!("creating {what}")),
        }
    }
    bail!("{what} could neither be read nor created ({WRITE_ATTEMPTS} attempts)")
}

/// Every `every`, gives `config` a new server certificate from `ca` for
/// `dns_names`, so a long-running replica never serves an expired one
/// (they are valid for a year; [`SERVER_CERT_RENEWAL`] is a good `every`).
/// Open connections keep their certificate; new ones get the new one.
pub fn spawn_server_cert_renewal(
    ca: Arc<Ca>,
    dns_names: Vec<String>,
    config: Arc<ReloadableServerConfig>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            match ca.server_config(&dns_names) {
                Ok(new) => {
                    config.replace(new);
                    tracing::info!("renewed the xDS server certificate");
                }
                // Keep the current one (it has months left) and try again
                // next time.
                Err(e) => tracing::error!("renewing the xDS server certificate: {e:#}"),
            }
        }
    })
}

/// Lets an Envoy subscribe as node group `NS/NAME` (the Gateway's group,
/// as `xds::group_of` makes it) only if its client certificate carries
/// `client_identity(NS, NAME)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct GatewayAuthorizer;

impl Authorizer for GatewayAuthorizer {
    fn authorize(&self, identity: Option<&PeerIdentity>, group: &str) -> Result<(), tonic::Status> {
        let Some(identity) = identity else {
            return Err(tonic::Status::unauthenticated(
                "a client certificate is required to fetch Gateway configuration",
            ));
        };
        let Some((namespace, name)) = group
            .split_once('/')
            .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
        else {
            return Err(tonic::Status::permission_denied(format!(
                "node group {group:?} is not a Gateway (NAMESPACE/NAME)"
            )));
        };
        let expected = client_identity(namespace, name);
        if identity.has_uri(&expected) {
            Ok(())
        } else {
            Err(tonic::Status::permission_denied(format!(
                "client certificate {identity} may not fetch the configuration of Gateway \
                 {namespace}/{name} (that needs URI SAN {expected})"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A Kubernetes DNS subdomain (what a Secret name must be).
    fn is_dns_subdomain(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    }

    #[test]
    fn identity_is_a_spiffe_uri() {
        assert_eq!(
            client_identity("infra", "edge"),
            "spiffe://gatewright.dev/ns/infra/gateway/edge"
        );
    }

    #[test]
    fn short_names_are_readable() {
        assert_eq!(client_secret_name("edge"), "gatewright-xds-client-edge");
        assert_ne!(client_secret_name("ca"), CA_SECRET_NAME);
        let longest_plain = "a".repeat(214);
        assert_eq!(
            client_secret_name(&longest_plain),
            format!("gatewright-xds-client-{longest_plain}")
        );
    }

    #[test]
    fn long_names_are_shortened_validly_and_distinctly() {
        let names = [
            "a".repeat(215),
            "a".repeat(253),
            format!("{}b", "a".repeat(252)),
            // Cut right after a '.' or '-': must not leave ".-" or "--".
            format!("{}.{}", "a".repeat(213), "b".repeat(39)),
            format!("{}-{}", "a".repeat(213), "b".repeat(39)),
            format!("{}.-x", "a".repeat(212)),
            format!("{}{}", "a.".repeat(120), "z"),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for name in &names {
            let secret = client_secret_name(name);
            assert_eq!(secret.len(), 253, "{secret}");
            assert!(is_dns_subdomain(&secret), "{secret}");
            assert!(secret.starts_with(CLIENT_SECRET_PREFIX));
            assert_eq!(client_secret_name(name), secret, "stable");
            assert!(seen.insert(secret), "distinct for {name}");
        }
        // A short name made to look like a shortened one cannot collide:
        // short forms are at most 236 characters.
        let mimic = client_secret_name(&"a".repeat(253));
        let as_gateway = mimic.trim_start_matches(CLIENT_SECRET_PREFIX);
        assert_ne!(client_secret_name(as_gateway), mimic);
        for n in 1..=253 {
            assert!(is_dns_subdomain(&client_secret_name(&"x".repeat(n))));
        }
    }

    #[test]
    fn dns_names_of_the_service() {
        assert_eq!(
            service_dns_names("gatewright-xds", "gw-system"),
            [
                "gatewright-xds",
                "gatewright-xds.gw-system",
                "gatewright-xds.gw-system.svc",
                "gatewright-xds.gw-system.svc.cluster.local"
            ]
        );
    }

    #[test]
    fn a_client_certificate_carries_its_identity_and_verifies() {
        let ca = Ca::generate().expect("CA");
        let issued = ca.issue_client("infra", "edge").expect("client cert");
        ca.verify_client(&issued.cert_pem, now_plus(Duration::ZERO))
            .expect("valid now");
        ca.verify_client(&issued.cert_pem, now_plus(Duration::from_secs(360 * DAY)))
            .expect("valid for most of a year");
        ca.verify_client(&issued.cert_pem, now_plus(Duration::from_secs(367 * DAY)))
            .expect_err("not after a year");
        let der = first_cert(&issued.cert_pem).expect("PEM");
        let id = PeerIdentity::from_certificate(&der).expect("names");
        assert_eq!(id.uris, [client_identity("infra", "edge")]);
        assert_eq!(id.common_name.as_deref(), Some("infra/edge"));
        // Another CA does not accept it.
        let other = Ca::generate().expect("other CA");
        other
            .verify_client(&issued.cert_pem, now_plus(Duration::ZERO))
            .expect_err("another CA's");
        // A long name: a generic CN, the URI SAN all the same.
        let long = "g".repeat(253);
        let issued = ca.issue_client("infra", &long).expect("long");
        let id = PeerIdentity::from_certificate(&first_cert(&issued.cert_pem).expect("PEM"))
            .expect("names");
        assert_eq!(id.uris, [client_identity("infra", &long)]);
        assert_eq!(id.common_name.as_deref(), Some("gatewright Envoy"));
    }

    #[test]
    fn the_ca_survives_its_secret() {
        let ca = Ca::generate().expect("CA");
        let secret = ca.to_secret("gw-system");
        assert_eq!(secret.metadata.name.as_deref(), Some(CA_SECRET_NAME));
        let back = Ca::from_secret(&secret).expect("read back");
        assert_eq!(back.cert_pem(), ca.cert_pem());
        // What the reloaded CA signs, the original verifies, and back.
        let issued = back.issue_client("a", "b").expect("issue");
        ca.verify_client(&issued.cert_pem, now_plus(Duration::ZERO))
            .expect("same CA");
        let cert = PeerIdentity::from_certificate(ca.cert_der()).expect("CA names");
        assert_eq!(cert.common_name.as_deref(), Some(CA_COMMON_NAME));

        // A key that is not the certificate's is refused.
        let other = Ca::generate().expect("other");
        let err = Ca::from_pem(ca.cert_pem(), &other.key_pem).expect_err("mismatch");
        assert!(format!("{err:#}").contains("does not sign"), "{err:#}");
        let mut broken = secret.clone();
        broken.data.as_mut().expect("data").remove(CA_KEY_KEY);
        let err = Ca::from_secret(&broken).expect_err("no key");
        assert!(format!("{err:#}").contains("ca.key"), "{err:#}");
    }

    fn client_secret(ca: &Ca, data: BTreeMap<String, ByteString>) -> Secret {
        let _ = ca;
        Secret {
            type_: Some(TLS_SECRET_TYPE.to_owned()),
            data: Some(data),
            ..Default::default()
        }
    }

    #[test]
    fn renewal_reasons() {
        let ca = Ca::generate().expect("CA");
        let good = ca.client_secret_data("infra", "edge").expect("data");
        assert_eq!(
            ca.renewal_reason(&client_secret(&ca, good.clone()), "infra", "edge"),
            None
        );
        // For another Gateway.
        let why = ca
            .renewal_reason(&client_secret(&ca, good.clone()), "infra", "other")
            .expect("other identity");
        assert!(why.contains("not spiffe://"), "{why}");
        // From another CA.
        let other = Ca::generate().expect("other CA");
        let why = other
            .renewal_reason(&client_secret(&ca, good.clone()), "infra", "edge")
            .expect("other CA");
        assert!(why.contains("ca.crt"), "{why}");
        let mut foreign = good.clone();
        foreign.insert(
            CA_CERT_KEY.to_owned(),
            ByteString(other.cert_pem().as_bytes().to_vec()),
        );
        let why = other
            .renewal_reason(&client_secret(&ca, foreign), "infra", "edge")
            .expect("not signed by the current CA");
        assert!(why.contains("not valid for the current CA"), "{why}");
        // Missing key.
        let mut partial = good.clone();
        partial.remove(TLS_KEY_KEY);
        assert!(
            ca.renewal_reason(&client_secret(&ca, partial), "infra", "edge")
                .is_some()
        );
        // Someone else's key.
        let mut swapped = good.clone();
        let stranger = ca.issue_client("infra", "edge").expect("another");
        swapped.insert(
            TLS_KEY_KEY.to_owned(),
            ByteString(stranger.key_pem.into_bytes()),
        );
        let why = ca
            .renewal_reason(&client_secret(&ca, swapped), "infra", "edge")
            .expect("wrong key");
        assert!(why.contains("tls.key"), "{why}");
        // Expiring within a third of the default year: a certificate valid
        // for only 10 days.
        let short = ca
            .issue_client_valid_for("infra", "edge", Duration::from_secs(10 * DAY))
            .expect("short-lived");
        let mut expiring = good.clone();
        expiring.insert(
            TLS_CERT_KEY.to_owned(),
            ByteString(short.cert_pem.clone().into_bytes()),
        );
        expiring.insert(
            TLS_KEY_KEY.to_owned(),
            ByteString(short.key_pem.clone().into_bytes()),
        );
        let why = ca
            .renewal_reason(&client_secret(&ca, expiring.clone()), "infra", "edge")
            .expect("expiring");
        assert!(why.contains("expires within"), "{why}");

        // With a 15-day lifetime, renewal starts 5 days before the end: the
        // 10-day certificate is good, and the year-long one is replaced.
        let mut brief = Ca::from_pem(ca.cert_pem(), &ca.key_pem).expect("same CA");
        brief
            .set_client_validity(Duration::from_secs(15 * DAY))
            .expect("15 days");
        assert_eq!(brief.renew_before(), Duration::from_secs(5 * DAY));
        assert_eq!(
            brief.renewal_reason(&client_secret(&ca, expiring), "infra", "edge"),
            None
        );
        let why = brief
            .renewal_reason(&client_secret(&ca, good), "infra", "edge")
            .expect("outlives the new lifetime");
        assert!(why.contains("outlives"), "{why}");
        // What it issues now is good by its own rule.
        let fresh = brief.client_secret_data("infra", "edge").expect("data");
        assert_eq!(
            brief.renewal_reason(&client_secret(&ca, fresh), "infra", "edge"),
            None
        );
    }

    #[test]
    fn client_validity_has_a_floor_and_renewal_is_a_third() {
        let mut ca = Ca::generate().expect("CA");
        assert_eq!(ca.client_validity(), DEFAULT_CLIENT_VALIDITY);
        assert_eq!(ca.renew_before(), DEFAULT_CLIENT_VALIDITY / 3);
        let err = ca
            .set_client_validity(Duration::from_secs(60))
            .expect_err("a minute is too short");
        assert!(format!("{err:#}").contains("at least 600s"), "{err:#}");
        ca.set_client_validity(MIN_CLIENT_VALIDITY)
            .expect("the floor");
        assert_eq!(ca.renew_before(), Duration::from_secs(200));
    }

    /// The xDS server's verifier refuses a client certificate once it has
    /// expired, which is what forces a reconnecting Envoy onto its renewed
    /// certificate.
    #[test]
    fn expired_client_certificates_are_refused() {
        let ca = Ca::generate().expect("CA");
        let brief = ca
            .issue_client_valid_for("infra", "edge", Duration::from_secs(30))
            .expect("30 s certificate");
        ca.verify_client(&brief.cert_pem, now_plus(Duration::ZERO))
            .expect("valid now");
        let err = ca
            .verify_client(&brief.cert_pem, now_plus(Duration::from_secs(31)))
            .expect_err("expired in 31 s");
        assert!(err.to_string().to_lowercase().contains("expired"), "{err}");
    }

    #[test]
    fn owners_are_merged() {
        let gateway = |uid: &str, controller| OwnerReference {
            api_version: "gateway.networking.k8s.io/v1".to_owned(),
            kind: "Gateway".to_owned(),
            name: "edge".to_owned(),
            uid: uid.to_owned(),
            controller: Some(controller),
            block_owner_deletion: None,
        };
        let other_tool = OwnerReference {
            api_version: "example.com/v1".to_owned(),
            kind: "Thing".to_owned(),
            name: "t".to_owned(),
            uid: "t-uid".to_owned(),
            controller: None,
            block_owner_deletion: None,
        };
        let new = gateway("new", true);
        let merged = with_owner(vec![gateway("old", true), other_tool.clone()], &new);
        assert_eq!(merged, [other_tool.clone(), new.clone()]);
        let again = with_owner(merged.clone(), &new);
        assert_eq!(again, merged, "idempotent");
    }

    #[test]
    fn gateway_authorizer() {
        let id = |uri: &str| PeerIdentity {
            uris: vec![uri.to_owned()],
            ..Default::default()
        };
        let edge = id(&client_identity("infra", "edge"));
        let auth = GatewayAuthorizer;
        assert!(auth.authorize(Some(&edge), "infra/edge").is_ok());
        for group in [
            "infra/other",
            "other/edge",
            "infra/edge/x",
            "infra",
            "/edge",
            "",
        ] {
            let status = auth.authorize(Some(&edge), group).expect_err(group);
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{group}");
        }
        let status = auth.authorize(None, "infra/edge").expect_err("anonymous");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        let status = auth
            .authorize(Some(&edge), "infra/other")
            .expect_err("other");
        assert!(
            status
                .message()
                .contains("spiffe://gatewright.dev/ns/infra/gateway/edge")
                && status.message().contains("infra/other"),
            "{}",
            status.message()
        );
        // A certificate naming the Gateway in the CN only is not enough.
        let cn_only = PeerIdentity {
            common_name: Some("infra/edge".to_owned()),
            ..Default::default()
        };
        assert!(auth.authorize(Some(&cn_only), "infra/edge").is_err());
    }

    /// The server configuration accepts the CA's client certificates (and
    /// only those), over a real TLS handshake on loopback.
    #[tokio::test]
    async fn the_server_accepts_the_gateways_certificate() {
        let ca = Ca::generate().expect("CA");
        let names = service_dns_names("gatewright-xds", "gw-system");
        let config = Arc::new(ca.server_config(&names).expect("server config"));
        assert_eq!(config.alpn_protocols, [b"h2".to_vec()]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let ids = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|c| PeerIdentity::from_certificate(c).ok())
                            .map(|id| id.uris.join(","))
                            .unwrap_or_default();
                        let mut buf = [0u8; 1];
                        if tls.read_exact(&mut buf).await.is_ok() {
                            let _ = tls.write_all(ids.as_bytes()).await;
                            let _ = tls.shutdown().await;
                        }
                    }
                });
            }
        });

        let connect = |issued: Option<IssuedCert>, ca_pem: String| async move {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(first_cert(&ca_pem).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
            let mut config = match issued {
                Some(c) => builder
                    .with_client_auth_cert(
                        vec![first_cert(&c.cert_pem).map_err(|e| e.to_string())?],
                        PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes())
                            .map_err(|e| e.to_string())?,
                    )
                    .map_err(|e| e.to_string())?,
                None => builder.with_no_client_auth(),
            };
            config.alpn_protocols = vec![b"h2".to_vec()];
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| e.to_string())?;
            let server_name =
                rustls::pki_types::ServerName::try_from("gatewright-xds.gw-system.svc")
                    .map_err(|e| e.to_string())?;
            let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(server_name, tcp)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tls.write_all(b"?")
                .await
                .map_err(|e| format!("write: {e}"))?;
            let mut answer = String::new();
            tls.read_to_string(&mut answer)
                .await
                .map_err(|e| format!("read: {e}"))?;
            Ok::<String, String>(answer)
        };
        let within = |f| tokio::time::timeout(Duration::from_secs(10), f);

        let good = ca.issue_client("infra", "edge").expect("client");
        let answer = within(connect(Some(good), ca.cert_pem().to_owned()))
            .await
            .expect("in time")
            .expect("accepted");
        assert_eq!(answer, client_identity("infra", "edge"));

        let err = within(connect(None, ca.cert_pem().to_owned()))
            .await
            .expect("in time")
            .expect_err("no certificate");
        assert!(!err.is_empty());

        let stranger = Ca::generate().expect("other CA");
        let foreign = stranger.issue_client("infra", "edge").expect("foreign");
        within(connect(Some(foreign), ca.cert_pem().to_owned()))
            .await
            .expect("in time")
            .expect_err("another CA's certificate");
    }

    /// Dials the ADS server with TLS for tonic, presenting `client`.
    #[derive(Clone)]
    struct TlsDialer {
        addr: std::net::SocketAddr,
        config: Arc<rustls::ClientConfig>,
    }

    impl tonic::codegen::Service<tonic::transport::Uri> for TlsDialer {
        type Response =
            hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
        type Error = std::io::Error;
        type Future = std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
        >;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: tonic::transport::Uri) -> Self::Future {
            let this = self.clone();
            Box::pin(async move {
                let tcp = tokio::net::TcpStream::connect(this.addr).await?;
                let name = rustls::pki_types::ServerName::try_from("gatewright-xds.gw-system.svc")
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let tls = tokio_rustls::TlsConnector::from(this.config)
                    .connect(name, tcp)
                    .await?;
                Ok(hyper_util::rt::TokioIo::new(tls))
            })
        }
    }

    /// The pieces the controller puts together: the CA's server
    /// configuration, [`GatewayAuthorizer`], a Gateway's client
    /// certificate, and the xDS server's `serve_tls`, over gRPC.
    #[tokio::test]
    async fn a_gateway_certificate_fetches_only_its_gateway() {
        use envoy_types::pb::envoy::config::core::v3::Node;
        use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
        use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;

        let ca = Ca::generate().expect("CA");
        let cache = gatewright_xds::Cache::new();
        let mut resources = gatewright_xds::Resources::new();
        resources.add(
            "l",
            &envoy_types::pb::envoy::config::listener::v3::Listener {
                name: "l".to_owned(),
                ..Default::default()
            },
        );
        cache.set("infra/edge", resources.clone());
        cache.set("infra/other", resources);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let config = Arc::new(ReloadableServerConfig::new(
            ca.server_config(&service_dns_names("gatewright-xds", "gw-system"))
                .expect("server config"),
        ));
        let server = gatewright_xds::AdsServer::new(cache.clone())
            .with_authorizer(Arc::new(GatewayAuthorizer));
        tokio::spawn(gatewright_xds::serve_tls(
            server,
            listener,
            config,
            std::future::pending(),
        ));

        let edge = ca.issue_client("infra", "edge").expect("client");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).expect("root");
        let mut client_config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![first_cert(&edge.cert_pem).expect("cert")],
            PrivateKeyDer::from_pem_slice(edge.key_pem.as_bytes()).expect("key"),
        )
        .expect("client auth");
        client_config.alpn_protocols = vec![b"h2".to_vec()];
        let dialer = TlsDialer {
            addr,
            config: Arc::new(client_config),
        };
        let channel = tonic::transport::Endpoint::from_static("http://xds")
            .connect_with_connector(dialer)
            .await
            .expect("channel");

        let fetch = |group: &'static str| {
            let mut client = AggregatedDiscoveryServiceClient::new(channel.clone());
            async move {
                let request = DiscoveryRequest {
                    node: Some(Node {
                        id: "envoy".to_owned(),
                        cluster: group.to_owned(),
                        ..Default::default()
                    }),
                    type_url: gatewright_xds::type_url::LISTENER.to_owned(),
                    ..Default::default()
                };
                // Keep the request stream open while reading the answer.
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                tx.send(request)
                    .map_err(|_| tonic::Status::internal("send"))?;
                let mut responses = client
                    .stream_aggregated_resources(
                        tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
                    )
                    .await?
                    .into_inner();
                let first = responses.message().await?;
                drop(tx);
                first.ok_or_else(|| tonic::Status::unknown("no response"))
            }
        };
        let within = |f| tokio::time::timeout(Duration::from_secs(10), f);
        let own = within(fetch("infra/edge"))
            .await
            .expect("in time")
            .expect("its own Gateway");
        assert_eq!(own.resources.len(), 1);
        let other = within(fetch("infra/other"))
            .await
            .expect("in time")
            .expect_err("another Gateway");
        assert_eq!(other.code(), tonic::Code::PermissionDenied, "{other:?}");
        assert_eq!(
            cache
                .stats()
                .denied
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    /// Against a real API server: `GATEWRIGHT_PKI_TEST_KUBECONFIG=PATH
    /// cargo test -p gatewright pki::tests::against_an_api_server -- --ignored`.
    #[tokio::test]
    #[ignore = "needs an API server: set GATEWRIGHT_PKI_TEST_KUBECONFIG"]
    async fn against_an_api_server() {
        let path = std::env::var_os("GATEWRIGHT_PKI_TEST_KUBECONFIG")
            .expect("GATEWRIGHT_PKI_TEST_KUBECONFIG");
        let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("config");
        let client = kube::Client::try_from(config).expect("client");
        let namespace = "default";
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let _ = secrets.delete(CA_SECRET_NAME, &Default::default()).await;

        // Eight replicas starting at once agree on one CA.
        let cas =
            futures::future::join_all((0..8).map(|_| load_or_create_ca(&client, namespace, None)))
                .await;
        let pems: std::collections::BTreeSet<String> = cas
            .into_iter()
            .map(|ca| ca.expect("a CA").cert_pem().to_owned())
            .collect();
        assert_eq!(pems.len(), 1, "replicas disagree on the CA");
        let ca = load_or_create_ca(&client, namespace, None)
            .await
            .expect("reload");
        assert!(pems.contains(ca.cert_pem()));

        // The Gateway the client Secret belongs to: a ConfigMap stands in
        // (no Gateway CRD needed) as the owner.
        let owners: Api<k8s_openapi::api::core::v1::ConfigMap> =
            Api::namespaced(client.clone(), namespace);
        let _ = owners.delete("pki-test-owner", &Default::default()).await;
        let owner_obj = owners
            .create(
                &PostParams::default(),
                &k8s_openapi::api::core::v1::ConfigMap {
                    metadata: ObjectMeta {
                        name: Some("pki-test-owner".to_owned()),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await
            .expect("owner");
        let owner = OwnerReference {
            api_version: "v1".to_owned(),
            kind: "ConfigMap".to_owned(),
            name: "pki-test-owner".to_owned(),
            uid: owner_obj.metadata.uid.clone().expect("uid"),
            controller: Some(true),
            block_owner_deletion: None,
        };
        let gateway = "edge";
        let name = client_secret_name(gateway);
        let _ = secrets.delete(&name, &Default::default()).await;

        // Several replicas ensure it at once: one certificate results.
        let results = futures::future::join_all(
            (0..4).map(|_| ca.ensure_client_secret(&client, namespace, gateway, owner.clone())),
        )
        .await;
        for r in results {
            assert_eq!(r.expect("ensured"), name);
        }
        let first = secrets.get(&name).await.expect("secret");
        assert_eq!(first.type_.as_deref(), Some(TLS_SECRET_TYPE));
        assert_eq!(ca.renewal_reason(&first, namespace, gateway), None);
        assert_eq!(
            first
                .metadata
                .owner_references
                .as_ref()
                .map(|o| o[0].uid.clone()),
            Some(owner.uid.clone())
        );
        // Ensuring again changes nothing.
        ca.ensure_client_secret(&client, namespace, gateway, owner.clone())
            .await
            .expect("again");
        let second = secrets.get(&name).await.expect("secret");
        assert_eq!(
            second.metadata.resource_version,
            first.metadata.resource_version
        );

        // A Secret for another identity is reissued.
        let mut wrong = second.clone();
        wrong.data = Some(
            ca.client_secret_data(namespace, "someone-else")
                .expect("data"),
        );
        secrets
            .replace(&name, &PostParams::default(), &wrong)
            .await
            .expect("tamper");
        ca.ensure_client_secret(&client, namespace, gateway, owner.clone())
            .await
            .expect("reissue");
        let third = secrets.get(&name).await.expect("secret");
        assert_eq!(ca.renewal_reason(&third, namespace, gateway), None);
        assert_ne!(third.data, wrong.data);

        // One of ours of the wrong type (immutable) is deleted and remade.
        secrets
            .delete(&name, &Default::default())
            .await
            .expect("delete");
        let opaque = Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(client_labels()),
                ..Default::default()
            },
            type_: Some("Opaque".to_owned()),
            ..Default::default()
        };
        secrets
            .create(&PostParams::default(), &opaque)
            .await
            .expect("opaque");
        ca.ensure_client_secret(&client, namespace, gateway, owner.clone())
            .await
            .expect("retyped");
        let fourth = secrets.get(&name).await.expect("secret");
        assert_eq!(fourth.type_.as_deref(), Some(TLS_SECRET_TYPE));
        assert_eq!(ca.renewal_reason(&fourth, namespace, gateway), None);

        // A user's Secret under that name is left alone.
        secrets
            .delete(&name, &Default::default())
            .await
            .expect("delete");
        let mut theirs = Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        theirs.string_data = Some(BTreeMap::from([("x".to_owned(), "y".to_owned())]));
        secrets
            .create(&PostParams::default(), &theirs)
            .await
            .expect("user secret");
        let err = ca
            .ensure_client_secret(&client, namespace, gateway, owner.clone())
            .await
            .expect_err("not ours");
        assert!(
            format!("{err:#}").contains("not made by Gatewright"),
            "{err:#}"
        );
        secrets
            .delete(&name, &Default::default())
            .await
            .expect("cleanup");
        let _ = owners.delete("pki-test-owner", &Default::default()).await;
    }
}
