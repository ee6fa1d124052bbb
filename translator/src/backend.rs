//! Backend references: resolution to Service ports, and the Envoy cluster
//! each one maps to.

use crate::conditions::Reason;
use crate::index::{Index, RefTarget};
use crate::input::ObjectKey;
use crate::model::{BackendRef, RouteKind};
use crate::unsupported::Field;
use std::collections::BTreeSet;

/// One Envoy cluster: a Service port, spoken to in HTTP/1 or HTTP/2.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ClusterRef {
    /// The Envoy name, first so that ordering mostly compares one string.
    name: String,
    pub(crate) namespace: String,
    pub(crate) service: String,
    pub(crate) port: i32,
    pub(crate) http2: bool,
}

impl ClusterRef {
    pub(crate) fn new(namespace: &str, service: &str, port: i32, http2: bool) -> Self {
        use std::fmt::Write as _;
        let mut name = String::with_capacity(namespace.len() + service.len() + 20);
        let _ = write!(
            name,
            "svc/{namespace}/{service}/{port}{}",
            if http2 { "/h2" } else { "" }
        );
        Self {
            name,
            namespace: namespace.to_owned(),
            service: service.to_owned(),
            port,
            http2,
        }
    }

    /// The cluster's Envoy name; depends only on what it represents.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The same Service port spoken to as plain TCP/HTTP1.
    pub(crate) fn without_http2(&self) -> Self {
        if self.http2 {
            Self::new(&self.namespace, &self.service, self.port, false)
        } else {
            self.clone()
        }
    }
}

/// Why a backendRef could not be resolved: (reason, message).
pub(crate) type Unresolved = (Reason, String);

/// Resolves one backendRef of a route of `kind` in `route_ns`. A
/// BackendTLSPolicy that covers the backend (and so refuses it, see
/// [`Field::BackendTlsPolicy`]) is added to `tls_policies`.
pub(crate) fn resolve(
    index: &Index<'_>,
    kind: RouteKind,
    route_ns: &str,
    b: &BackendRef,
    tls_policies: &mut BTreeSet<ObjectKey>,
) -> Result<ClusterRef, Unresolved> {
    if !b.group.is_empty() || b.kind != "Service" {
        return Err((
            Reason::InvalidKind,
            format!(
                "backendRef {}/{} {} is not a core Service",
                b.group, b.kind, b.name
            ),
        ));
    }
    let target = RefTarget {
        group: "",
        kind: "Service",
        namespace: &b.namespace,
        name: &b.name,
    };
    if !index.reference_permitted(kind.kind(), route_ns, target) {
        return Err((
            Reason::RefNotPermitted,
            format!(
                "Service {}/{} is in another namespace and no ReferenceGrant allows it",
                b.namespace, b.name
            ),
        ));
    }
    let Some(svc) = index.service(&b.namespace, &b.name) else {
        return Err((
            Reason::BackendNotFound,
            format!("Service {}/{} does not exist", b.namespace, b.name),
        ));
    };
    let Some(port) = b.port else {
        return Err((
            Reason::BackendNotFound,
            format!(
                "backendRef to Service {}/{} has no port",
                b.namespace, b.name
            ),
        ));
    };
    let Some(sp) = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|ps| ps.iter().find(|p| p.port == port))
    else {
        return Err((
            Reason::BackendNotFound,
            format!("Service {}/{} has no port {port}", b.namespace, b.name),
        ));
    };
    // appProtocol says how to speak to the backend; TLS passthrough only
    // forwards bytes, so it ignores it.
    let h2_app = match sp.app_protocol.as_deref() {
        _ if kind == RouteKind::Tls => false,
        None | Some("http" | "kubernetes.io/ws") => false,
        Some("kubernetes.io/h2c" | "h2c") => true,
        Some(other) => {
            return Err((
                Reason::UnsupportedProtocol,
                format!(
                    "Service {}/{} port {port} has appProtocol {other:?}, which Gatewright cannot speak",
                    b.namespace, b.name
                ),
            ));
        }
    };
    // Upstream TLS is not implemented: a backend whose owner asked for it
    // gets no traffic rather than plaintext. Passthrough TLS is already
    // end-to-end, so TLSRoute backends are not affected.
    if kind != RouteKind::Tls
        && let Some(policy) = index.backend_tls_policy(&b.namespace, &b.name, sp.name.as_deref())
    {
        let (ns, name) = crate::index::key_of(&policy.metadata);
        tls_policies.insert(ObjectKey::new(ns, name));
        return Err((
            Reason::UnsupportedProtocol,
            format!(
                "Service {}/{} port {port} is covered by BackendTLSPolicy {ns}/{name}: {}; \
                 requests to it are refused instead of being sent in plaintext",
                b.namespace,
                b.name,
                Field::BackendTlsPolicy
            ),
        ));
    }
    Ok(ClusterRef::new(
        &b.namespace,
        &b.name,
        port,
        kind == RouteKind::Grpc || h2_app,
    ))
}
