//! Gateways and their listeners: protocol support, conflicts, certificate
//! references, allowed routes; and their status.

use crate::api::gateways::{
    Gateway, GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom,
    GatewayListenersAllowedRoutesNamespacesSelectorMatchExpressions, GatewayListenersTlsMode,
    GatewayStatus, GatewayStatusListeners, GatewayStatusListenersSupportedKinds,
};
use crate::conditions::{ConditionType, Conditions, Reason};
use crate::frontend::{ClientValidation, Frontend};
use crate::hostname;
use crate::index::{GATEWAY_GROUP, Index, RefTarget};
use crate::input::ObjectKey;
use crate::model::RouteKind;
use crate::unsupported;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::BTreeMap;

/// Listener protocols Gatewright serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http,
    /// HTTPS, TLS terminated by Envoy.
    Https,
    /// TLS passed through to the backend, routed by SNI.
    TlsPassthrough,
    /// TLS terminated by Envoy, the plain stream proxied to the TLSRoute's
    /// backend (routed by SNI).
    TlsTerminate,
}

impl Protocol {
    /// HTTP and the TLS-based protocols cannot share a port.
    fn family(self) -> u8 {
        match self {
            Self::Http => 0,
            Self::Https | Self::TlsPassthrough | Self::TlsTerminate => 1,
        }
    }

    fn kinds(self) -> &'static [RouteKind] {
        match self {
            Self::Http | Self::Https => &[RouteKind::Http, RouteKind::Grpc],
            Self::TlsPassthrough | Self::TlsTerminate => &[RouteKind::Tls],
        }
    }
}

/// Which namespaces a listener accepts routes from.
#[derive(Clone, Debug)]
pub(crate) enum FromNamespaces {
    Same,
    All,
    Selector {
        labels: BTreeMap<String, String>,
        expressions: Vec<GatewayListenersAllowedRoutesNamespacesSelectorMatchExpressions>,
    },
}

/// A certificate ready to be served: the Envoy secret name and the PEM data.
#[derive(Clone, Debug)]
pub(crate) struct Certificate {
    pub(crate) name: String,
    pub(crate) chain: Vec<u8>,
    pub(crate) key: Vec<u8>,
}

/// One resolved Gateway listener.
#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) name: String,
    pub(crate) port: i32,
    pub(crate) hostname: Option<String>,
    /// None when the protocol is not supported.
    pub(crate) protocol: Option<Protocol>,
    pub(crate) from: FromNamespaces,
    /// Kinds routes may have to attach (allowed ∩ supported).
    pub(crate) kinds: Vec<RouteKind>,
    pub(crate) certificates: Vec<Certificate>,
    /// Client-certificate validation (HTTPS listeners whose port asks for it).
    pub(crate) client_validation: Option<ClientValidation>,
    accepted: Result<(), (Reason, String)>,
    conflict: Option<Reason>,
    /// Route kinds in allowedRoutes that this listener cannot serve; they
    /// are reported but do not stop the listener serving the others.
    invalid_kinds: Result<(), (Reason, String)>,
    /// Names of other HTTPS listeners on the port whose hostnames overlap.
    overlaps: Vec<String>,
    resolved: Result<(), (Reason, String)>,
    /// Routes attached per the AllowedRoutes + parentRefs rule.
    pub(crate) attached_routes: i32,
}

impl Listener {
    /// Whether this listener goes into Envoy's configuration.
    pub(crate) fn programmable(&self) -> bool {
        self.accepted.is_ok() && self.conflict.is_none() && self.resolved.is_ok()
    }

    /// Whether routes may attach (attachment ignores the listener's state).
    pub(crate) fn allows_namespace(
        &self,
        index: &Index<'_>,
        gateway_ns: &str,
        route_ns: &str,
    ) -> bool {
        match &self.from {
            FromNamespaces::Same => gateway_ns == route_ns,
            FromNamespaces::All => true,
            FromNamespaces::Selector {
                labels,
                expressions,
            } => {
                let ns_labels = index.namespace_labels(route_ns);
                labels.iter().all(|(k, v)| ns_labels.get(k) == Some(v))
                    && expressions.iter().all(|e| {
                        let values = e.values.as_deref().unwrap_or(&[]);
                        let have = ns_labels.get(&e.key);
                        match e.operator.as_str() {
                            "In" => have.is_some_and(|v| values.contains(v)),
                            "NotIn" => have.is_none_or(|v| !values.contains(v)),
                            "Exists" => have.is_some(),
                            "DoesNotExist" => have.is_none(),
                            _ => false,
                        }
                    })
            }
        }
    }

    pub(crate) fn accepts_host(&self, host: &str) -> bool {
        hostname::listener_accepts(self.hostname.as_deref(), host)
    }
}

/// One Gateway of ours, resolved.
#[derive(Debug)]
pub(crate) struct GatewayInfo<'a> {
    pub(crate) key: ObjectKey,
    pub(crate) gateway: &'a Gateway,
    pub(crate) listeners: Vec<Listener>,
    /// Gateway-level fields Gatewright does not implement that are set.
    unsupported: unsupported::GatewayFields,
    /// Whether some frontend validation lets clients through unverified.
    insecure_fallback: bool,
    /// The certificate presented to TLS backends (`spec.tls.backend`), or
    /// why its reference does not resolve.
    pub(crate) client_certificate: Result<Option<Certificate>, (Reason, String)>,
}

fn listener_kinds(
    l: &GatewayListeners,
    protocol: Option<Protocol>,
) -> (Vec<RouteKind>, Result<(), (Reason, String)>) {
    let supported = protocol.map_or(&[][..], Protocol::kinds);
    let Some(kinds) = l.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref()) else {
        return (supported.to_vec(), Ok(()));
    };
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for k in kinds {
        let group = k.group.as_deref().unwrap_or(GATEWAY_GROUP);
        match supported
            .iter()
            .find(|s| group == GATEWAY_GROUP && s.kind() == k.kind)
        {
            Some(s) => {
                if !out.contains(s) {
                    out.push(*s);
                }
            }
            None => bad.push(format!("{group}/{}", k.kind)),
        }
    }
    let res = if bad.is_empty() {
        Ok(())
    } else {
        Err((
            Reason::InvalidRouteKinds,
            format!(
                "route kinds not supported by this listener: {}",
                bad.join(", ")
            ),
        ))
    };
    (out, res)
}

/// Reads tls.crt and tls.key of a kubernetes.io/tls Secret and checks they
/// hold PEM an Envoy can load (at least one certificate, one private key).
pub(crate) fn read_certificate(secret: &Secret) -> Result<(Vec<u8>, Vec<u8>), String> {
    let get = |k: &str| -> Option<Vec<u8>> {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| b.0.clone())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(k))
                    .map(|s| s.as_bytes().to_vec())
            })
    };
    let chain = get("tls.crt").ok_or("the Secret has no tls.crt")?;
    let key = get("tls.key").ok_or("the Secret has no tls.key")?;
    let certs: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(&chain)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("tls.crt holds no PEM certificate".into());
    }
    if let Some(bad) = certs.iter().position(|c| !is_der_sequence(c.as_ref())) {
        return Err(format!(
            "certificate {bad} in tls.crt is not DER-encoded X.509"
        ));
    }
    let parsed = PrivateKeyDer::from_pem_slice(&key)
        .map_err(|e| format!("tls.key holds no usable PEM private key: {e}"))?;
    if !is_der_sequence(parsed.secret_der()) {
        return Err("tls.key is not a DER-encoded private key".into());
    }
    Ok((chain, key))
}

/// Whether `der` is exactly one DER SEQUENCE (what certificates and keys
/// are), so random bytes in a PEM wrapper are caught before Envoy sees them.
pub(crate) fn is_der_sequence(der: &[u8]) -> bool {
    let [0x30, len0, rest @ ..] = der else {
        return false;
    };
    let (len, body) = if len0 & 0x80 == 0 {
        (usize::from(*len0), rest)
    } else {
        let n = usize::from(len0 & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return false;
        }
        (
            rest[..n]
                .iter()
                .fold(0usize, |acc, b| acc << 8 | usize::from(*b)),
            &rest[n..],
        )
    };
    body.len() == len
}

/// Envoy secret name of a Secret holding a certificate.
pub(crate) fn secret_name(ns: &str, name: &str) -> String {
    format!("secret/{ns}/{name}")
}

fn resolve_certificates(
    index: &Index<'_>,
    gw_ns: &str,
    l: &GatewayListeners,
) -> Result<Vec<Certificate>, (Reason, String)> {
    let refs = l
        .tls
        .as_ref()
        .and_then(|t| t.certificate_refs.as_ref())
        .map_or(&[][..], Vec::as_slice);
    if refs.is_empty() {
        return Err((
            Reason::InvalidCertificateRef,
            "an HTTPS listener needs at least one certificateRef".into(),
        ));
    }
    let mut out = Vec::with_capacity(refs.len());
    for r in refs {
        let group = r.group.as_deref().unwrap_or("");
        let kind = r.kind.as_deref().unwrap_or("Secret");
        let ns = r.namespace.as_deref().unwrap_or(gw_ns);
        if !group.is_empty() || kind != "Secret" {
            return Err((
                Reason::InvalidCertificateRef,
                format!(
                    "certificateRef {group}/{kind} {ns}/{} is not a core Secret",
                    r.name
                ),
            ));
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
                    "Secret {ns}/{} is in another namespace and no ReferenceGrant allows it",
                    r.name
                ),
            ));
        }
        let Some(secret) = index.secret(ns, &r.name) else {
            return Err((
                Reason::InvalidCertificateRef,
                format!("Secret {ns}/{} does not exist", r.name),
            ));
        };
        let (chain, key) = read_certificate(secret).map_err(|e| {
            (
                Reason::InvalidCertificateRef,
                format!("Secret {ns}/{}: {e}", r.name),
            )
        })?;
        out.push(Certificate {
            name: secret_name(ns, &r.name),
            chain,
            key,
        });
    }
    Ok(out)
}

/// Resolves one Gateway's listeners, conflicts included.
pub(crate) fn resolve<'a>(index: &Index<'_>, gateway: &'a Gateway) -> GatewayInfo<'a> {
    let ns = gateway.metadata.namespace.as_deref().unwrap_or("");
    let key = ObjectKey::new(ns, gateway.metadata.name.as_deref().unwrap_or(""));
    let fields = unsupported::gateway(gateway);
    let frontend = Frontend::of(gateway);
    let mut listeners: Vec<Listener> = gateway
        .spec
        .listeners
        .iter()
        .map(|l| {
            let mode = l
                .tls
                .as_ref()
                .and_then(|t| t.mode.clone())
                .unwrap_or(GatewayListenersTlsMode::Terminate);
            let (protocol, accepted) = match (l.protocol.as_str(), mode) {
                ("HTTP", _) => (Some(Protocol::Http), Ok(())),
                ("HTTPS", GatewayListenersTlsMode::Terminate) => (Some(Protocol::Https), Ok(())),
                ("HTTPS", GatewayListenersTlsMode::Passthrough) => (
                    None,
                    Err((
                        Reason::UnsupportedValue,
                        "HTTPS listeners only support tls.mode Terminate".to_owned(),
                    )),
                ),
                ("TLS", GatewayListenersTlsMode::Passthrough) => {
                    (Some(Protocol::TlsPassthrough), Ok(()))
                }
                ("TLS", GatewayListenersTlsMode::Terminate) => {
                    (Some(Protocol::TlsTerminate), Ok(()))
                }
                (p, _) => (
                    None,
                    Err((
                        Reason::UnsupportedProtocol,
                        format!("protocol {p} is not supported"),
                    )),
                ),
            };
            let hostname_ok = l
                .hostname
                .as_deref()
                .filter(|h| !h.is_empty())
                .map_or(Ok(()), crate::validate::hostname);
            let accepted = match (accepted, hostname_ok) {
                (Ok(()), Err(e)) => Err((Reason::UnsupportedValue, e)),
                (Ok(()), Ok(())) if !(1..=65535).contains(&l.port) => Err((
                    Reason::PortUnavailable,
                    format!("port {} is out of range", l.port),
                )),
                (a, _) => a,
            };
            // Fail closed: a listener asked for something Gatewright cannot
            // do serves nothing.
            let accepted = accepted.and_then(|()| {
                unsupported::listener(l)
                    .map_or(Ok(()), |f| Err((Reason::UnsupportedValue, f.to_string())))
            });
            let (kinds, kinds_ok) = listener_kinds(l, protocol);
            let (certificates, resolved) = match protocol {
                Some(Protocol::Https | Protocol::TlsTerminate) => {
                    match resolve_certificates(index, ns, l) {
                        Ok(c) => (c, Ok(())),
                        Err(e) => (vec![], Err(e)),
                    }
                }
                _ => (vec![], Ok(())),
            };
            // Client validation applies to HTTPS listeners only; a bad CA
            // reference leaves the listener unprogrammed (fail closed).
            let (client_validation, resolved, accepted) = match protocol {
                Some(Protocol::Https) => match frontend.resolve(index, ns, l.port) {
                    Ok(v) => (v, resolved, accepted),
                    Err(invalid) => {
                        let accepted = if invalid.none_valid {
                            accepted.and(Err((
                                Reason::NoValidCaCertificate,
                                format!(
                                    "no valid CA certificate for client validation on port {}: {}",
                                    l.port, invalid.resolved.1
                                ),
                            )))
                        } else {
                            accepted
                        };
                        (None, resolved.and(Err(invalid.resolved)), accepted)
                    }
                },
                _ => (None, resolved, accepted),
            };
            let ns_cfg = l
                .allowed_routes
                .as_ref()
                .and_then(|a| a.namespaces.as_ref());
            let from = match ns_cfg.and_then(|n| n.from.clone()) {
                Some(GatewayListenersAllowedRoutesNamespacesFrom::All) => FromNamespaces::All,
                Some(GatewayListenersAllowedRoutesNamespacesFrom::Selector) => {
                    let sel = ns_cfg.and_then(|n| n.selector.as_ref());
                    FromNamespaces::Selector {
                        labels: sel.and_then(|s| s.match_labels.clone()).unwrap_or_default(),
                        expressions: sel
                            .and_then(|s| s.match_expressions.clone())
                            .unwrap_or_default(),
                    }
                }
                Some(GatewayListenersAllowedRoutesNamespacesFrom::Same) | None => {
                    FromNamespaces::Same
                }
            };
            Listener {
                name: l.name.clone(),
                port: l.port,
                hostname: l.hostname.clone().filter(|h| !h.is_empty()),
                protocol,
                from,
                kinds,
                certificates,
                client_validation,
                accepted,
                conflict: None,
                invalid_kinds: kinds_ok,
                overlaps: Vec::new(),
                resolved,
                attached_routes: 0,
            }
        })
        .collect();
    // Indistinct listeners: on one port, HTTP cannot share with HTTPS/TLS
    // (ProtocolConflict), and listeners of one family must differ in
    // hostname (HostnameConflict). No listener of a conflicting set wins.
    let mut by_port: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
    for (i, l) in listeners.iter().enumerate() {
        if l.accepted.is_ok() && l.protocol.is_some() {
            by_port.entry(l.port).or_default().push(i);
        }
    }
    for members in by_port.values() {
        let families: std::collections::BTreeSet<u8> = members
            .iter()
            .filter_map(|&i| listeners[i].protocol.map(Protocol::family))
            .collect();
        for &i in members {
            let clash = members
                .iter()
                .any(|&j| j != i && listeners[j].hostname == listeners[i].hostname);
            listeners[i].conflict = if families.len() > 1 {
                Some(Reason::ProtocolConflict)
            } else if clash {
                Some(Reason::HostnameConflict)
            } else {
                None
            };
        }
    }
    // HTTPS listeners on one port whose hostnames overlap (one covers the
    // other; no hostname covers all) invite HTTP/2 connection coalescing
    // across certificates; the spec asks for OverlappingTLSConfig on each.
    for members in by_port.values() {
        for &i in members {
            let overlaps: Vec<String> = members
                .iter()
                .filter(|&&j| {
                    let (a, b) = (&listeners[i], &listeners[j]);
                    j != i
                        && a.protocol == Some(Protocol::Https)
                        && b.protocol == Some(Protocol::Https)
                        && match (&a.hostname, &b.hostname) {
                            (None, _) | (_, None) => true,
                            (Some(x), Some(y)) => hostname::intersect(x, y).is_some(),
                        }
                })
                .map(|&j| listeners[j].name.clone())
                .collect();
            listeners[i].overlaps = overlaps;
        }
    }
    GatewayInfo {
        key,
        gateway,
        listeners,
        unsupported: fields,
        insecure_fallback: frontend.insecure_fallback(),
        client_certificate: crate::backend_tls::client_certificate(index, gateway),
    }
}

/// The status of a resolved Gateway.
pub(crate) fn status(info: &GatewayInfo<'_>, now: &Time) -> GatewayStatus {
    let generation = info.gateway.metadata.generation;
    let listeners: Vec<GatewayStatusListeners> = info
        .listeners
        .iter()
        .map(|l| {
            let mut c = Conditions::new(now, generation);
            match (&l.accepted, l.conflict) {
                (Err((r, m)), _) => c.set(ConditionType::Accepted, false, *r, m.clone()),
                (Ok(()), Some(r)) => c.set(
                    ConditionType::Accepted,
                    false,
                    r,
                    "the listener is not distinct from another listener on the same port",
                ),
                (Ok(()), None) => c.set(
                    ConditionType::Accepted,
                    true,
                    Reason::Accepted,
                    "listener accepted",
                ),
            }
            match l.conflict {
                Some(r) => c.set(
                    ConditionType::Conflicted,
                    true,
                    r,
                    "the listener is not distinct from another listener on the same port",
                ),
                None => c.set(
                    ConditionType::Conflicted,
                    false,
                    Reason::NoConflicts,
                    "no conflicts",
                ),
            }
            match l.resolved.as_ref().and(l.invalid_kinds.as_ref()) {
                Ok(()) => c.set(
                    ConditionType::ResolvedRefs,
                    true,
                    Reason::ResolvedRefs,
                    "all references resolved",
                ),
                Err((r, m)) => c.set(ConditionType::ResolvedRefs, false, *r, m.clone()),
            }
            if !l.overlaps.is_empty() {
                c.set(
                    ConditionType::OverlappingTlsConfig,
                    true,
                    Reason::OverlappingHostnames,
                    format!(
                        "hostname overlaps with HTTPS listeners {} on the same port",
                        l.overlaps.join(", ")
                    ),
                );
            }
            if l.programmable() {
                c.set(
                    ConditionType::Programmed,
                    true,
                    Reason::Programmed,
                    "listener programmed",
                );
            } else {
                c.set(
                    ConditionType::Programmed,
                    false,
                    Reason::Invalid,
                    "listener is not valid and is not programmed",
                );
            }
            GatewayStatusListeners {
                name: l.name.clone(),
                attached_routes: l.attached_routes,
                conditions: c.into_vec(),
                supported_kinds: Some(
                    l.kinds
                        .iter()
                        .map(|k| GatewayStatusListenersSupportedKinds {
                            group: Some(GATEWAY_GROUP.to_owned()),
                            kind: k.kind().to_owned(),
                        })
                        .collect(),
                ),
            }
        })
        .collect();
    let valid = info.listeners.iter().filter(|l| l.programmable()).count();
    let names = |ok: bool| {
        let list: Vec<&str> = info
            .listeners
            .iter()
            .filter(|l| l.programmable() == ok)
            .map(|l| l.name.as_str())
            .collect();
        list.join(", ")
    };
    let all_valid = valid == info.listeners.len();
    let mut c = Conditions::new(now, generation);
    if all_valid {
        c.set(
            ConditionType::Accepted,
            true,
            Reason::Accepted,
            "gateway accepted",
        );
    } else {
        c.set(
            ConditionType::Accepted,
            valid > 0,
            Reason::ListenersNotValid,
            format!(
                "listeners not valid: {}; listeners accepted: {}",
                names(false),
                if valid > 0 {
                    names(true)
                } else {
                    "none".to_owned()
                }
            ),
        );
    }
    if valid > 0 {
        c.set(
            ConditionType::Programmed,
            true,
            Reason::Programmed,
            "gateway programmed",
        );
    } else {
        c.set(
            ConditionType::Programmed,
            false,
            Reason::Invalid,
            "no listener of the gateway is valid",
        );
    }
    // The client certificate's own reason comes first: it is the
    // Gateway's own reference, listeners report theirs themselves.
    let unresolved: Vec<&str> = info
        .listeners
        .iter()
        .filter(|l| l.resolved.is_err() || l.invalid_kinds.is_err())
        .map(|l| l.name.as_str())
        .collect();
    match &info.client_certificate {
        Err((r, m)) => c.set(
            ConditionType::ResolvedRefs,
            false,
            *r,
            format!("{m}; requests to TLS backends are refused"),
        ),
        Ok(_) if !unresolved.is_empty() => c.set(
            ConditionType::ResolvedRefs,
            false,
            Reason::ListenersNotResolved,
            format!(
                "listeners with unresolved references: {}",
                unresolved.join(", ")
            ),
        ),
        Ok(_) => c.set(
            ConditionType::ResolvedRefs,
            true,
            Reason::ResolvedRefs,
            "all references resolved",
        ),
    }
    if info.insecure_fallback {
        c.set(
            ConditionType::InsecureFrontendValidationMode,
            true,
            Reason::ConfigurationChanged,
            "spec.tls.frontend validation mode AllowInsecureFallback admits clients without \
             a valid certificate; the backends must authorize them",
        );
    }
    if info.unsupported.default_scope {
        c.set(
            ConditionType::DefaultGateway,
            false,
            Reason::UnsupportedValue,
            format!(
                "{}: the Gateway claims no route",
                unsupported::Field::DefaultScope
            ),
        );
    }
    GatewayStatus {
        addresses: None,
        attached_listener_sets: None,
        conditions: Some(c.into_vec()),
        listeners: Some(listeners),
    }
}
