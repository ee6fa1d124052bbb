//! Upstream TLS: which BackendTLSPolicy applies to a Service port, what it
//! asks Envoy to verify, the policies' status; and the certificate a
//! Gateway presents to its TLS backends (`spec.tls.backend`).
//!
//! Everything here fails closed: a policy that cannot be honoured (a CA
//! that does not resolve, an unknown well-known CA set) still applies to
//! the backends it covers, which then get no traffic at all rather than
//! plaintext or unverified TLS.

use crate::api::backendtlspolicies::{
    BackendTlsPolicy, BackendTlsPolicyStatus, BackendTlsPolicyStatusAncestors,
    BackendTlsPolicyStatusAncestorsAncestorRef, BackendTlsPolicyValidationSubjectAltNamesType,
};
use crate::api::gateways::Gateway;
use crate::conditions::{ConditionType, Conditions, Reason};
use crate::gateway::{Certificate, read_certificate, secret_name};
use crate::index::{GATEWAY_GROUP, RefTarget, key_of};
use crate::input::ObjectKey;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Where Envoy finds the host's CA bundle when a policy asks for
/// `wellKnownCACertificates: System` and the input names no other file.
pub const DEFAULT_SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What one certificate SAN must be, exactly.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum San {
    Dns(String),
    Uri(String),
}

/// The CAs a backend's certificate must chain to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum TrustedCa {
    /// PEM certificates, from the policy's ConfigMaps.
    Pem(Vec<u8>),
    /// A CA bundle file on the Envoy host (`wellKnownCACertificates: System`).
    File(String),
}

/// How Envoy speaks TLS to a backend, as one valid policy asks.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct TlsSettings {
    /// SNI sent, `validation.hostname`.
    pub(crate) sni: String,
    pub(crate) ca: TrustedCa,
    /// The SANs the certificate must have one of: the policy's
    /// `subjectAltNames` when given, else the hostname as a DNS SAN.
    pub(crate) sans: Vec<San>,
}

/// The upstream TLS a BackendTLSPolicy puts on the Service ports it covers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct UpstreamTls {
    pub(crate) policy: ObjectKey,
    /// None when the policy is not valid: its backends are refused.
    pub(crate) settings: Option<TlsSettings>,
}

/// One condition's value: (status, reason, message).
type Verdict = (bool, Reason, String);

/// One BackendTLSPolicy, resolved.
#[derive(Debug)]
struct Resolved<'a> {
    policy: &'a BackendTlsPolicy,
    tls: Arc<UpstreamTls>,
    accepted: Verdict,
    resolved_refs: Verdict,
}

/// A policy target: (namespace, Service, sectionName).
type Target<'a> = (&'a str, &'a str, Option<&'a str>);

/// Every BackendTLSPolicy of the input, resolved, and which one applies to
/// each target.
#[derive(Debug, Default)]
pub(crate) struct Policies<'a> {
    by_key: BTreeMap<(&'a str, &'a str), Resolved<'a>>,
    /// Per target, the policies naming it, the one that takes precedence
    /// first.
    targets: HashMap<Target<'a>, Vec<(&'a str, &'a str)>>,
}

/// Precedence among policies naming one target: the older first, then by
/// namespace/name (a policy without creationTimestamp counts as newest).
fn precedence(p: &BackendTlsPolicy) -> (bool, Option<Timestamp>, (&str, &str)) {
    let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    (created.is_none(), created, key_of(&p.metadata))
}

impl<'a> Policies<'a> {
    /// Resolves every policy of `policies` against `config_maps` (looked up
    /// by namespace and name); `system_ca_file` is the host's CA bundle.
    pub(crate) fn new(
        policies: &'a [std::sync::Arc<BackendTlsPolicy>],
        config_map: impl Fn(&str, &str) -> Option<&'a ConfigMap>,
        system_ca_file: &str,
    ) -> Self {
        let mut by_key = BTreeMap::new();
        let mut targets: HashMap<Target<'a>, Vec<(&'a str, &'a str)>> = HashMap::new();
        // Sorted by precedence, so each target's list is too.
        let mut sorted: Vec<&'a BackendTlsPolicy> =
            policies.iter().map(std::sync::Arc::as_ref).collect();
        sorted.sort_by(|a, b| {
            precedence(a)
                .cmp(&precedence(b))
                .then_with(|| crate::json_cmp(*a, *b))
        });
        for p in sorted {
            let key = key_of(&p.metadata);
            // The API server never stores two objects under one key; files
            // might: the first by precedence is kept.
            if by_key.contains_key(&key) {
                continue;
            }
            let ns = key.0;
            for t in &p.spec.target_refs {
                if !t.group.is_empty() || t.kind != "Service" {
                    continue;
                }
                let list = targets
                    .entry((ns, t.name.as_str(), t.section_name.as_deref()))
                    .or_default();
                if !list.contains(&key) {
                    list.push(key);
                }
            }
            by_key.insert(key, resolve(p, &config_map, system_ca_file));
        }
        // A policy that loses any of its targets to an older one is
        // Conflicted (it still applies to the targets it wins).
        for list in targets.values() {
            for loser in list.iter().skip(1) {
                let Some(winner) = list.first() else { continue };
                if let Some(r) = by_key.get_mut(loser) {
                    r.accepted = (
                        false,
                        Reason::Conflicted,
                        format!(
                            "BackendTLSPolicy {}/{} targets the same Service and sectionName and \
                             takes precedence (older, or first by namespace/name)",
                            winner.0, winner.1
                        ),
                    );
                }
            }
        }
        Self { by_key, targets }
    }

    /// The policy that applies to the Service port named `port_name` of
    /// `ns/service`: one naming that port beats one naming the whole
    /// Service.
    pub(crate) fn applying(
        &self,
        ns: &str,
        service: &str,
        port_name: Option<&str>,
    ) -> Option<&Arc<UpstreamTls>> {
        let specific = port_name.and_then(|p| self.targets.get(&(ns, service, Some(p))));
        specific
            .or_else(|| self.targets.get(&(ns, service, None)))
            .and_then(|list| list.first())
            .and_then(|key| self.by_key.get(key))
            .map(|r| &r.tls)
    }

    /// Every policy that names the Service port (by its name or the whole
    /// Service), winner or not: the policies whose status reports on it.
    pub(crate) fn targeting(
        &self,
        ns: &str,
        service: &str,
        port_name: Option<&str>,
    ) -> Vec<ObjectKey> {
        let specific = port_name.and_then(|p| self.targets.get(&(ns, service, Some(p))));
        let whole = self.targets.get(&(ns, service, None));
        specific
            .into_iter()
            .chain(whole)
            .flatten()
            .map(|(ns, name)| ObjectKey::new(*ns, *name))
            .collect()
    }

    /// The status of each policy in `ancestors` (policy → the Gateways of
    /// ours whose routes send to a Service port it names).
    pub(crate) fn statuses(
        &self,
        ancestors: &BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
        controller: &str,
        now: &Time,
    ) -> BTreeMap<ObjectKey, BackendTlsPolicyStatus> {
        let mut out = BTreeMap::new();
        for (key, gateways) in ancestors {
            let Some(r) = self
                .by_key
                .get(&(key.namespace.as_str(), key.name.as_str()))
            else {
                continue;
            };
            let entries = gateways
                .iter()
                .map(|gw| {
                    let mut c = Conditions::new(now, r.policy.metadata.generation);
                    let (ok, reason, message) = &r.accepted;
                    c.set(ConditionType::Accepted, *ok, *reason, message.clone());
                    let (ok, reason, message) = &r.resolved_refs;
                    c.set(ConditionType::ResolvedRefs, *ok, *reason, message.clone());
                    BackendTlsPolicyStatusAncestors {
                        ancestor_ref: BackendTlsPolicyStatusAncestorsAncestorRef {
                            group: Some(GATEWAY_GROUP.to_owned()),
                            kind: Some("Gateway".to_owned()),
                            name: gw.name.clone(),
                            namespace: Some(gw.namespace.clone()),
                            port: None,
                            section_name: None,
                        },
                        conditions: c.into_vec(),
                        controller_name: controller.to_owned(),
                    }
                })
                .collect();
            out.insert(key.clone(), BackendTlsPolicyStatus { ancestors: entries });
        }
        out
    }
}

/// Resolves one policy's validation settings (conflicts aside).
fn resolve<'a>(
    p: &'a BackendTlsPolicy,
    config_map: &impl Fn(&str, &str) -> Option<&'a ConfigMap>,
    system_ca_file: &str,
) -> Resolved<'a> {
    let (ns, name) = key_of(&p.metadata);
    let v = &p.spec.validation;
    let refs = v.ca_certificate_refs.as_deref().unwrap_or(&[]);
    let mut pem: Vec<u8> = Vec::new();
    let mut valid = 0usize;
    let mut problems: Vec<(Reason, String)> = Vec::new();
    for r in refs {
        if !r.group.is_empty() || r.kind != "ConfigMap" {
            problems.push((
                Reason::InvalidKind,
                format!(
                    "caCertificateRef {}/{} {} is not a core ConfigMap",
                    r.group, r.kind, r.name
                ),
            ));
            continue;
        }
        match config_map(ns, &r.name).ok_or_else(|| "does not exist".to_owned()) {
            Ok(cm) => match ca_bundle(cm) {
                Ok(bytes) => {
                    valid += 1;
                    pem.extend_from_slice(&bytes);
                    if !pem.ends_with(b"\n") {
                        pem.push(b'\n');
                    }
                }
                Err(e) => problems.push((
                    Reason::InvalidCaCertificateRef,
                    format!("ConfigMap {ns}/{}: {e}", r.name),
                )),
            },
            Err(e) => problems.push((
                Reason::InvalidCaCertificateRef,
                format!("ConfigMap {ns}/{} {e}", r.name),
            )),
        }
    }
    let resolved_refs = match problems.first() {
        None => (
            true,
            Reason::ResolvedRefs,
            "all CA certificate references resolved".to_owned(),
        ),
        Some((reason, _)) => (
            false,
            *reason,
            problems
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    // Only the CAs that resolved are trusted: fewer roots never let in a
    // certificate the user did not trust.
    let ca: Result<TrustedCa, Verdict> = if valid > 0 {
        Ok(TrustedCa::Pem(pem))
    } else if !refs.is_empty() {
        Err((
            false,
            Reason::NoValidCaCertificate,
            format!(
                "no caCertificateRef holds a usable CA certificate ({}); requests to the \
                 backends it covers are refused",
                resolved_refs.2
            ),
        ))
    } else {
        match v.well_known_ca_certificates.as_deref() {
            Some("System") => Ok(TrustedCa::File(system_ca_file.to_owned())),
            Some(other) => Err((
                false,
                Reason::Invalid,
                format!(
                    "wellKnownCACertificates {other:?} is not supported (only System); \
                     requests to the backends it covers are refused"
                ),
            )),
            None => Err((
                false,
                Reason::NoValidCaCertificate,
                "neither caCertificateRefs nor wellKnownCACertificates is set; requests to \
                 the backends it covers are refused"
                    .to_owned(),
            )),
        }
    };
    let hostname_ok = crate::validate::hostname(&v.hostname).map_err(|e| {
        (
            false,
            Reason::Invalid,
            format!("validation.hostname: {e}; requests to the backends it covers are refused"),
        )
    });
    let sans = match v.subject_alt_names.as_deref().filter(|s| !s.is_empty()) {
        None => Ok(vec![San::Dns(v.hostname.clone())]),
        Some(list) => list
            .iter()
            .map(|s| {
                let value = match s.r#type {
                    BackendTlsPolicyValidationSubjectAltNamesType::Hostname => {
                        s.hostname.clone().map(San::Dns)
                    }
                    BackendTlsPolicyValidationSubjectAltNamesType::Uri => {
                        s.uri.clone().map(San::Uri)
                    }
                };
                value
                    .filter(|v| !matches!(v, San::Dns(h) | San::Uri(h) if h.is_empty()))
                    .ok_or_else(|| {
                        (
                            false,
                            Reason::Invalid,
                            "a subjectAltNames entry has no value for its type; requests to \
                             the backends it covers are refused"
                                .to_owned(),
                        )
                    })
            })
            .collect::<Result<Vec<San>, Verdict>>(),
    };
    let settings = hostname_ok.and(ca).and_then(|ca| {
        sans.map(|sans| TlsSettings {
            sni: v.hostname.clone(),
            ca,
            sans,
        })
    });
    let (accepted, settings) = match settings {
        Ok(s) => (
            (true, Reason::Accepted, "policy accepted".to_owned()),
            Some(s),
        ),
        Err(verdict) => (verdict, None),
    };
    Resolved {
        policy: p,
        tls: Arc::new(UpstreamTls {
            policy: ObjectKey::new(ns, name),
            settings,
        }),
        accepted,
        resolved_refs,
    }
}

/// The PEM bundle in a ConfigMap's `ca.crt`, checked to hold at least one
/// certificate and nothing Envoy could not load (BackendTLSPolicy and
/// frontend client validation alike).
pub(crate) fn ca_bundle(cm: &ConfigMap) -> Result<Vec<u8>, String> {
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .map(|s| s.as_bytes().to_vec())
        .or_else(|| {
            cm.binary_data
                .as_ref()
                .and_then(|d| d.get("ca.crt"))
                .map(|b| b.0.clone())
        })
        .ok_or("has no ca.crt")?;
    let certs: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("ca.crt is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("ca.crt holds no PEM certificate".into());
    }
    if let Some(bad) = certs
        .iter()
        .position(|c| !crate::gateway::is_der_sequence(c.as_ref()))
    {
        return Err(format!(
            "certificate {bad} in ca.crt is not DER-encoded X.509"
        ));
    }
    Ok(text)
}

/// The certificate a Gateway presents to its TLS backends
/// (`spec.tls.backend.clientCertificateRef`): None when it sets none, or
/// why the reference does not resolve.
pub(crate) fn client_certificate(
    index: &crate::index::Index<'_>,
    gateway: &Gateway,
) -> Result<Option<Certificate>, (Reason, String)> {
    let Some(r) = gateway
        .spec
        .tls
        .as_ref()
        .and_then(|t| t.backend.as_ref())
        .and_then(|b| b.client_certificate_ref.as_ref())
    else {
        return Ok(None);
    };
    let gw_ns = gateway.metadata.namespace.as_deref().unwrap_or("");
    let group = r.group.as_deref().unwrap_or("");
    let kind = r.kind.as_deref().unwrap_or("Secret");
    let ns = r.namespace.as_deref().unwrap_or(gw_ns);
    let invalid = |m: String| (Reason::InvalidClientCertificateRef, m);
    if !group.is_empty() || kind != "Secret" {
        return Err(invalid(format!(
            "clientCertificateRef {group}/{kind} {ns}/{} is not a core Secret",
            r.name
        )));
    }
    let target = RefTarget {
        group: "",
        kind: "Secret",
        namespace: ns,
        name: &r.name,
    };
    if !index.reference_permitted("Gateway", gw_ns, target) {
        return Err((
            Reason::RefNotPermitted,
            format!(
                "clientCertificateRef Secret {ns}/{} is in another namespace and no \
                 ReferenceGrant allows it",
                r.name
            ),
        ));
    }
    let secret: &Secret = index.secret(ns, &r.name).ok_or_else(|| {
        invalid(format!(
            "clientCertificateRef Secret {ns}/{} does not exist",
            r.name
        ))
    })?;
    if secret.type_.as_deref() != Some("kubernetes.io/tls") {
        return Err(invalid(format!(
            "clientCertificateRef Secret {ns}/{} is of type {:?}, not kubernetes.io/tls",
            r.name,
            secret.type_.as_deref().unwrap_or("")
        )));
    }
    let (chain, key) = read_certificate(secret)
        .map_err(|e| invalid(format!("clientCertificateRef Secret {ns}/{}: {e}", r.name)))?;
    Ok(Some(Certificate {
        name: secret_name(ns, &r.name),
        chain,
        key,
    }))
}
