//! Gateways and their listeners: protocol support, conflicts, certificate
//! references, allowed routes; and their status.

use crate::api::gateways::{
    Gateway, GatewayDefaultScope, GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom,
    GatewayListenersAllowedRoutesNamespacesSelectorMatchExpressions, GatewayListenersTlsMode,
    GatewayStatus, GatewayStatusListeners, GatewayStatusListenersSupportedKinds,
};
use crate::api::listenersets::ListenerSet;
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
    /// TCP connections proxied to the oldest TCPRoute's backends.
    Tcp,
    /// UDP datagrams proxied, per flow, to the oldest UDPRoute's backends.
    Udp,
}

impl Protocol {
    /// HTTP, the TLS-based protocols and TCP cannot share a port (UDP is
    /// another transport: its ports are apart, see [`Listener::udp`]).
    fn family(self) -> u8 {
        match self {
            Self::Http => 0,
            Self::Https | Self::TlsPassthrough | Self::TlsTerminate => 1,
            Self::Tcp => 2,
            Self::Udp => 3,
        }
    }

    fn kinds(self) -> &'static [RouteKind] {
        match self {
            Self::Http | Self::Https => &[RouteKind::Http, RouteKind::Grpc],
            Self::TlsPassthrough | Self::TlsTerminate => &[RouteKind::Tls],
            Self::Tcp => &[RouteKind::Tcp],
            Self::Udp => &[RouteKind::Udp],
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

/// Why a listener lost its port to other listeners.
#[derive(Clone, Debug)]
pub(crate) struct Conflict {
    pub(crate) reason: Reason,
    /// The earlier listener (of an earlier owner) that keeps the port; None
    /// when indistinct listeners of one owner all lose.
    winner: Option<String>,
}

/// One resolved listener: the Gateway's own, or one of its ListenerSets'.
#[derive(Debug)]
pub(crate) struct Listener {
    /// The name as written, unique only within its owner.
    pub(crate) name: String,
    /// The ListenerSet that declares it; None for the Gateway's own.
    pub(crate) owner: Option<ObjectKey>,
    /// The owner's namespace: allowedRoutes `Same` and certificate
    /// references are relative to it.
    namespace: String,
    /// Unique among the Gateway's listeners, used in Envoy resource names:
    /// the name for the Gateway's own (names unchanged), `<ns>/<set>/<name>`
    /// for a set's (no Kubernetes name holds '/', so none collides, and
    /// names stay stable as other sets come and go).
    pub(crate) envoy_name: String,
    /// The protocol as written, reduced to what shares a port: conflicts
    /// between owners are judged on it, before protocol support.
    family: String,
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
    conflict: Option<Conflict>,
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
    /// Whether the listener is on a UDP port: UDP ports are apart from the
    /// TCP ports of the same number (HTTP, HTTPS, TLS, TCP), so a UDP and a
    /// TCP-based listener on one port number never conflict.
    pub(crate) fn udp(&self) -> bool {
        self.family == "UDP"
    }

    /// Whether this listener goes into Envoy's configuration.
    pub(crate) fn programmable(&self) -> bool {
        self.accepted.is_ok() && self.conflict.is_none() && self.resolved.is_ok()
    }

    /// Whether it keeps its place on its port against later owners.
    fn holds_port(&self) -> bool {
        self.accepted.is_ok() && self.conflict.is_none()
    }

    /// Whether routes may attach (attachment ignores the listener's state).
    pub(crate) fn allows_namespace(&self, index: &Index<'_>, route_ns: &str) -> bool {
        match &self.from {
            FromNamespaces::Same => self.namespace == route_ns,
            FromNamespaces::All => true,
            FromNamespaces::Selector {
                labels,
                expressions,
            } => selector_matches(
                &index.namespace_labels(route_ns),
                labels,
                expressions
                    .iter()
                    .map(|e| (e.key.as_str(), e.operator.as_str(), e.values.as_deref())),
            ),
        }
    }

    pub(crate) fn accepts_host(&self, host: &str) -> bool {
        hostname::listener_accepts(self.hostname.as_deref(), host)
    }
}

/// Whether namespace labels `have` satisfy a label selector: every label of
/// `labels`, and every (key, operator, values) expression.
pub(crate) fn selector_matches<'e>(
    have: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
    mut expressions: impl Iterator<Item = (&'e str, &'e str, Option<&'e [String]>)>,
) -> bool {
    labels.iter().all(|(k, v)| have.get(k) == Some(v))
        && expressions.all(|(key, operator, values)| {
            let values = values.unwrap_or(&[]);
            let value = have.get(key);
            match operator {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

/// One ListenerSet naming a Gateway of ours.
#[derive(Debug)]
pub(crate) struct SetInfo<'a> {
    pub(crate) key: ObjectKey,
    pub(crate) set: &'a ListenerSet,
    /// Err when its listeners are not merged: the Gateway does not allow
    /// it (NotAllowed) or is not accepted itself (ParentNotAccepted).
    pub(crate) admitted: Result<(), (Reason, String)>,
}

/// One Gateway of ours, resolved.
#[derive(Debug)]
pub(crate) struct GatewayInfo<'a> {
    pub(crate) key: ObjectKey,
    pub(crate) gateway: &'a Gateway,
    /// The Gateway's own listeners, then those of its admitted
    /// ListenerSets in precedence order (oldest set first).
    pub(crate) listeners: Vec<Listener>,
    /// The ListenerSets naming this Gateway, in precedence order.
    pub(crate) sets: Vec<SetInfo<'a>>,
    /// `spec.defaultScope: All`: a default Gateway (GEP-3793), claiming
    /// every route that sets `useDefaultGateways: All` as if it named the
    /// Gateway. `None`, or no scope, claims nothing.
    pub(crate) default_scope: bool,
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

/// The kind and namespace whose ReferenceGrants let a listener reference
/// objects elsewhere: a set's listeners do not inherit the Gateway's grants.
fn grant_subject(owner: Option<&ObjectKey>) -> &'static str {
    if owner.is_some() {
        "ListenerSet"
    } else {
        "Gateway"
    }
}

fn resolve_certificates(
    index: &Index<'_>,
    from_kind: &str,
    from_ns: &str,
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
        let ns = r.namespace.as_deref().unwrap_or(from_ns);
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
        if !index.reference_permitted(from_kind, from_ns, target) {
            let whose = if from_kind == "Gateway" {
                ""
            } else {
                " (a ListenerSet needs its own: the Gateway's do not apply)"
            };
            return Err((
                Reason::RefNotPermitted,
                format!(
                    "Secret {ns}/{} is in another namespace and no ReferenceGrant allows it{whose}",
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

/// What shares a port with what: HTTP, the TLS-based protocols, and any
/// other protocol (TCP, UDP, ...) each alone.
fn port_family(protocol: &str) -> &str {
    match protocol {
        "HTTPS" | "TLS" => "TLS",
        p => p,
    }
}

/// Resolves one listener of the Gateway (`owner` None) or of one of its
/// ListenerSets, conflicts aside.
fn resolve_listener(
    index: &Index<'_>,
    frontend: &Frontend,
    gw_ns: &str,
    owner: Option<&ObjectKey>,
    l: &GatewayListeners,
) -> Listener {
    let owner_ns = owner.map_or(gw_ns, |k| k.namespace.as_str());
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
        ("TLS", GatewayListenersTlsMode::Passthrough) => (Some(Protocol::TlsPassthrough), Ok(())),
        ("TLS", GatewayListenersTlsMode::Terminate) => (Some(Protocol::TlsTerminate), Ok(())),
        ("TCP", _) => (Some(Protocol::Tcp), Ok(())),
        ("UDP", _) => (Some(Protocol::Udp), Ok(())),
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
        unsupported::listener(l).map_or(Ok(()), |f| Err((Reason::UnsupportedValue, f.to_string())))
    });
    let (kinds, kinds_ok) = listener_kinds(l, protocol);
    let (certificates, resolved) = match protocol {
        Some(Protocol::Https | Protocol::TlsTerminate) => {
            match resolve_certificates(index, grant_subject(owner), owner_ns, l) {
                Ok(c) => (c, Ok(())),
                Err(e) => (vec![], Err(e)),
            }
        }
        _ => (vec![], Ok(())),
    };
    // Client validation applies to HTTPS listeners only, whoever declares
    // them (it is the Gateway's, per port); a bad CA reference leaves the
    // listener unprogrammed (fail closed).
    let (client_validation, resolved, accepted) = match protocol {
        Some(Protocol::Https) => match frontend.resolve(index, gw_ns, l.port) {
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
        Some(GatewayListenersAllowedRoutesNamespacesFrom::Same) | None => FromNamespaces::Same,
    };
    Listener {
        name: l.name.clone(),
        owner: owner.cloned(),
        namespace: owner_ns.to_owned(),
        envoy_name: owner.map_or_else(
            || l.name.clone(),
            |k| format!("{}/{}/{}", k.namespace, k.name, l.name),
        ),
        family: port_family(&l.protocol).to_owned(),
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
}

/// Indistinct listeners of one owner (`members`, all accepted with a
/// supported protocol and on one port): HTTP cannot share a port with
/// HTTPS/TLS (ProtocolConflict), and listeners of one family must differ
/// in hostname (HostnameConflict). No listener of a conflicting group wins.
fn mark_indistinct(listeners: &mut [Listener], members: &[usize]) {
    let families: std::collections::BTreeSet<u8> = members
        .iter()
        .filter_map(|&i| listeners[i].protocol.map(Protocol::family))
        .collect();
    for &i in members {
        let clash = members
            .iter()
            .any(|&j| j != i && listeners[j].hostname == listeners[i].hostname);
        let reason = if families.len() > 1 {
            Some(Reason::ProtocolConflict)
        } else if clash {
            Some(Reason::HostnameConflict)
        } else {
            None
        };
        listeners[i].conflict = reason.map(|reason| Conflict {
            reason,
            winner: None,
        });
    }
}

/// Marks the indistinct listeners among `range` (one owner's), by port.
fn owner_conflicts(listeners: &mut [Listener], range: std::ops::Range<usize>) {
    let mut by_port: BTreeMap<(bool, i32), Vec<usize>> = BTreeMap::new();
    for i in range {
        let l = &listeners[i];
        if l.accepted.is_ok() && l.protocol.is_some() && l.conflict.is_none() {
            by_port.entry((l.udp(), l.port)).or_default().push(i);
        }
    }
    for members in by_port.values() {
        mark_indistinct(listeners, members);
    }
}

/// Precedence between owners: a listener of `range` (one ListenerSet's)
/// on a port an earlier listener (of `listeners[..range.start]`) holds
/// loses to it: another protocol family there is a ProtocolConflict, the
/// same hostname a HostnameConflict. Judged on the protocol as written,
/// so an unsupported protocol on a taken port is a ProtocolConflict too.
fn precedence_conflicts(listeners: &mut [Listener], range: std::ops::Range<usize>) {
    let (earlier, mine) = listeners.split_at_mut(range.start);
    for l in &mut mine[..range.len()] {
        if !(1..=65535).contains(&l.port) {
            continue;
        }
        let on_port = || {
            earlier
                .iter()
                .filter(|e| e.port == l.port && e.udp() == l.udp() && e.holds_port())
        };
        let conflict = on_port()
            .find(|e| e.family != l.family)
            .map(|e| (Reason::ProtocolConflict, e))
            .or_else(|| {
                on_port()
                    .find(|e| e.hostname == l.hostname)
                    .map(|e| (Reason::HostnameConflict, e))
            })
            .map(|(reason, e)| Conflict {
                reason,
                winner: Some(describe(e)),
            });
        l.conflict = conflict;
    }
}

/// How a listener is named in messages: `listener <name>` for the
/// Gateway's own, `listener <name> of ListenerSet <ns>/<set>` for a set's.
fn describe(l: &Listener) -> String {
    match &l.owner {
        None => format!("listener {} of the Gateway", l.name),
        Some(k) => format!("listener {} of ListenerSet {k}", l.name),
    }
}

/// Resolves one Gateway's listeners and those of the ListenerSets naming
/// it (`sets`, in precedence order), conflicts included.
pub(crate) fn resolve<'a>(
    index: &Index<'_>,
    gateway: &'a Gateway,
    sets: &[&'a ListenerSet],
) -> GatewayInfo<'a> {
    let ns = gateway.metadata.namespace.as_deref().unwrap_or("");
    let key = ObjectKey::new(ns, gateway.metadata.name.as_deref().unwrap_or(""));
    let frontend = Frontend::of(gateway);
    let mut listeners: Vec<Listener> = gateway
        .spec
        .listeners
        .iter()
        .map(|l| resolve_listener(index, &frontend, ns, None, l))
        .collect();
    let own = listeners.len();
    owner_conflicts(&mut listeners, 0..own);
    // Sets join a Gateway that is accepted, which needs one valid listener
    // of its own (a Gateway has at least one).
    let parent_accepted = listeners.iter().any(Listener::programmable);
    let mut infos = Vec::with_capacity(sets.len());
    for set in sets {
        let (set_ns, set_name) = crate::index::key_of(&set.metadata);
        let set_key = ObjectKey::new(set_ns, set_name);
        let admitted = crate::listenerset::allowed(index, gateway, set_ns).and_then(|()| {
            if parent_accepted {
                Ok(())
            } else {
                Err((
                    Reason::ParentNotAccepted,
                    format!("Gateway {key} is not accepted: none of its listeners is valid"),
                ))
            }
        });
        if admitted.is_ok() {
            let start = listeners.len();
            listeners.extend(set.spec.listeners.iter().map(|l| {
                let l = crate::listenerset::as_gateway_listener(l);
                resolve_listener(index, &frontend, ns, Some(&set_key), &l)
            }));
            let range = start..listeners.len();
            precedence_conflicts(&mut listeners, range.clone());
            owner_conflicts(&mut listeners, range);
        }
        infos.push(SetInfo {
            key: set_key,
            set,
            admitted,
        });
    }
    // HTTPS listeners on one port whose hostnames overlap (one covers the
    // other; no hostname covers all) invite HTTP/2 connection coalescing
    // across certificates; the spec asks for OverlappingTLSConfig on each.
    // Listeners that lost their port to an earlier owner serve nothing and
    // overlap nothing.
    let mut by_port: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
    for (i, l) in listeners.iter().enumerate() {
        let lost = l.conflict.as_ref().is_some_and(|c| c.winner.is_some());
        if l.accepted.is_ok() && l.protocol.is_some() && !lost {
            by_port.entry(l.port).or_default().push(i);
        }
    }
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
                .map(|&j| listeners[j].envoy_name.clone())
                .collect();
            listeners[i].overlaps = overlaps;
        }
    }
    GatewayInfo {
        key,
        gateway,
        listeners,
        sets: infos,
        default_scope: matches!(gateway.spec.default_scope, Some(GatewayDefaultScope::All)),
        insecure_fallback: frontend.insecure_fallback(),
        client_certificate: crate::backend_tls::client_certificate(index, gateway),
    }
}

/// The status of one listener: its conditions (observedGeneration is its
/// owner's), attached routes and supported kinds.
pub(crate) struct ListenerStatus {
    pub(crate) name: String,
    pub(crate) attached_routes: i32,
    pub(crate) conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    pub(crate) kinds: Vec<&'static str>,
}

/// The status of listener `l`, whoever declares it; `generation` is its
/// owner's.
pub(crate) fn listener_status(l: &Listener, now: &Time, generation: Option<i64>) -> ListenerStatus {
    let mut c = Conditions::new(now, generation);
    let conflict_message = |c: &Conflict| match &c.winner {
        Some(w) => format!("the port is held by {w}, which takes precedence"),
        None => "the listener is not distinct from another listener on the same port".to_owned(),
    };
    // A listener that lost its port says so first, whatever else is wrong
    // with it: the conflict is why it is not served.
    match (&l.conflict, &l.accepted) {
        (Some(k), _) => c.set(
            ConditionType::Accepted,
            false,
            k.reason,
            conflict_message(k),
        ),
        (None, Err((r, m))) => c.set(ConditionType::Accepted, false, *r, m.clone()),
        (None, Ok(())) => c.set(
            ConditionType::Accepted,
            true,
            Reason::Accepted,
            "listener accepted",
        ),
    }
    match &l.conflict {
        Some(k) => c.set(
            ConditionType::Conflicted,
            true,
            k.reason,
            conflict_message(k),
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
    match &l.conflict {
        _ if l.programmable() => c.set(
            ConditionType::Programmed,
            true,
            Reason::Programmed,
            "listener programmed",
        ),
        // Losing to an earlier owner is reported as such (what the
        // ListenerSet conformance tests expect).
        Some(k) if k.winner.is_some() => c.set(
            ConditionType::Programmed,
            false,
            k.reason,
            conflict_message(k),
        ),
        _ => c.set(
            ConditionType::Programmed,
            false,
            Reason::Invalid,
            "listener is not valid and is not programmed",
        ),
    }
    ListenerStatus {
        name: l.name.clone(),
        attached_routes: l.attached_routes,
        conditions: c.into_vec(),
        kinds: l.kinds.iter().map(|k| k.kind()).collect(),
    }
}

/// The status of a resolved Gateway: its own listeners only (each set's
/// are in the set's status).
pub(crate) fn status(info: &GatewayInfo<'_>, now: &Time) -> GatewayStatus {
    let generation = info.gateway.metadata.generation;
    let own: Vec<&Listener> = info
        .listeners
        .iter()
        .filter(|l| l.owner.is_none())
        .collect();
    let listeners: Vec<GatewayStatusListeners> = own
        .iter()
        .map(|l| {
            let s = listener_status(l, now, generation);
            GatewayStatusListeners {
                name: s.name,
                attached_routes: s.attached_routes,
                conditions: s.conditions,
                supported_kinds: Some(
                    s.kinds
                        .into_iter()
                        .map(|kind| GatewayStatusListenersSupportedKinds {
                            group: Some(GATEWAY_GROUP.to_owned()),
                            kind: kind.to_owned(),
                        })
                        .collect(),
                ),
            }
        })
        .collect();
    let valid = own.iter().filter(|l| l.programmable()).count();
    let names = |ok: bool| {
        let list: Vec<&str> = own
            .iter()
            .filter(|l| l.programmable() == ok)
            .map(|l| l.name.as_str())
            .collect();
        list.join(", ")
    };
    let all_valid = valid == own.len();
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
    // Only a Gateway with a scope says so: GEP-3793 forbids the condition
    // on the others (`None` included, which claims nothing).
    if info.default_scope {
        c.set(
            ConditionType::DefaultGateway,
            true,
            Reason::DefaultGateway,
            "Gateway has default scope All: it claims routes that set useDefaultGateways: All",
        );
    }
    GatewayStatus {
        addresses: None,
        // Shown once some set names the Gateway (absent reads as 0).
        attached_listener_sets: (!info.sets.is_empty()).then(|| {
            let accepted = info
                .sets
                .iter()
                .filter(|s| crate::listenerset::accepted(info, s))
                .count();
            i32::try_from(accepted).unwrap_or(i32::MAX)
        }),
        conditions: Some(c.into_vec()),
        listeners: Some(listeners),
    }
}
