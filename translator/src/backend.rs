//! Backend references: resolution to Service ports, and the Envoy cluster
//! each one maps to.

use crate::backend_tls::UpstreamTls;
use crate::conditions::Reason;
use crate::index::{Index, RefTarget};
use crate::input::ObjectKey;
use crate::model::{BackendRef, RouteKind};
use k8s_openapi::api::core::v1::Service;
use std::collections::BTreeSet;
use std::sync::Arc;

/// One Envoy cluster: a Service port, spoken to in HTTP/1 or HTTP/2 (or
/// as a plain byte stream), in plaintext or over the TLS of a
/// BackendTLSPolicy. TLS is part of the identity: one port used with and
/// without a policy (a TLSRoute passes TLS through, an HTTPRoute
/// originates it) is two clusters, and so is TLS carrying HTTP (ALPN) and
/// TLS carrying a stream (a terminated TLSRoute's, no ALPN).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ClusterRef {
    /// The Envoy name, first so that ordering mostly compares one string.
    name: String,
    pub(crate) namespace: String,
    pub(crate) service: String,
    pub(crate) port: i32,
    pub(crate) http2: bool,
    /// The policy's TLS, when one covers the port.
    pub(crate) tls: Option<Arc<UpstreamTls>>,
    /// TLS that carries a byte stream, not HTTP: no ALPN. Only ever set
    /// with `tls`.
    pub(crate) stream: bool,
}

impl ClusterRef {
    pub(crate) fn new(
        namespace: &str,
        service: &str,
        port: i32,
        http2: bool,
        tls: Option<Arc<UpstreamTls>>,
    ) -> Self {
        Self::named(namespace, service, port, http2, tls, false)
    }

    fn named(
        namespace: &str,
        service: &str,
        port: i32,
        http2: bool,
        tls: Option<Arc<UpstreamTls>>,
        stream: bool,
    ) -> Self {
        use std::fmt::Write as _;
        let stream = stream && tls.is_some();
        let mut name = String::with_capacity(namespace.len() + service.len() + 32);
        let _ = write!(
            name,
            "svc/{namespace}/{service}/{port}{}{}{}",
            if tls.is_some() { "/tls" } else { "" },
            if stream { "/stream" } else { "" },
            if http2 { "/h2" } else { "" }
        );
        Self {
            name,
            namespace: namespace.to_owned(),
            service: service.to_owned(),
            port,
            http2,
            tls,
            stream,
        }
    }

    /// The same Service port carrying a byte stream (TCP proxy): no HTTP/2,
    /// and TLS, when a policy covers the port, without ALPN.
    pub(crate) fn as_stream(&self) -> Self {
        Self::named(
            &self.namespace,
            &self.service,
            self.port,
            false,
            self.tls.clone(),
            true,
        )
    }

    /// The same Service port with TLS passed through: plain, whatever
    /// policy covers it (the client's TLS reaches the backend untouched).
    pub(crate) fn as_passthrough(&self) -> Self {
        Self::named(
            &self.namespace,
            &self.service,
            self.port,
            false,
            None,
            false,
        )
    }

    /// Whether a policy covers the port but cannot be honoured: requests
    /// must fail rather than go out in plaintext.
    pub(crate) fn refused(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.settings.is_none())
    }

    /// The cluster's Envoy name; depends only on what it represents.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The same Service port spoken to in HTTP/2.
    pub(crate) fn with_http2(self) -> Self {
        if self.http2 {
            self
        } else {
            Self::new(&self.namespace, &self.service, self.port, true, self.tls)
        }
    }
}

/// Why a backendRef could not be resolved: (reason, message).
pub(crate) type Unresolved = (Reason, String);

/// The Service a resolution looked up, as the input held it (None: there
/// was none): a memoised resolution is reused only while it is unchanged.
pub(crate) type ServiceRead = (ObjectKey, Option<Arc<Service>>);

/// The Services a route's resolution looked up, as found: kept only when
/// the resolution is memoised (a one-off translation has no use for them).
#[derive(Debug, Default)]
pub(crate) struct ServiceReads {
    record: bool,
    pub(crate) reads: Vec<ServiceRead>,
}

impl ServiceReads {
    /// Reads that are recorded when `record` is set, else dropped.
    pub(crate) fn new(record: bool) -> Self {
        Self {
            record,
            reads: Vec::new(),
        }
    }

    fn push(&mut self, key: ObjectKey, found: Option<&Arc<Service>>) {
        if self.record {
            self.reads.push((key, found.cloned()));
        }
    }
}

/// Resolves one backendRef of a route of `kind` in `route_ns`. Every
/// BackendTLSPolicy that names the backend's port (applying or not) is
/// added to `tls_policies`: the route's Gateways are its ancestors. The
/// Service looked up is added to `services`.
pub(crate) fn resolve(
    index: &Index<'_>,
    kind: RouteKind,
    route_ns: &str,
    b: &BackendRef,
    tls_policies: &mut BTreeSet<ObjectKey>,
    services: &mut ServiceReads,
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
    let found = index.service_shared(&b.namespace, &b.name);
    services.push(ObjectKey::new(b.namespace.as_str(), b.name.as_str()), found);
    let Some(svc) = found else {
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
    // UDP only forwards datagrams: it ignores appProtocol and policies (TLS
    // cannot carry it).
    if kind == RouteKind::Udp {
        return Ok(ClusterRef::new(&b.namespace, &b.name, port, false, None));
    }
    // TLSRoutes and TCPRoutes forward bytes, whatever appProtocol says. A
    // TLSRoute's policy is used where its listener terminates TLS (the
    // backend then gets TLS again, `ClusterRef::as_stream`); where TLS is
    // passed through, the client's TLS is already end to end and the policy
    // does not apply (`ClusterRef::as_passthrough`). Gatewright does not yet
    // originate TLS for TCPRoute backends (the spec leaves BackendTLSPolicy
    // on TCPRoute to implementations), so a port a policy covers gets
    // nothing rather than plaintext.
    if matches!(kind, RouteKind::Tls | RouteKind::Tcp) {
        let policies = index.backend_tls();
        tls_policies.extend(policies.targeting(&b.namespace, &b.name, sp.name.as_deref()));
        let tls = policies
            .applying(&b.namespace, &b.name, sp.name.as_deref())
            .cloned();
        if kind == RouteKind::Tcp && tls.is_some() {
            return Err((
                Reason::UnsupportedProtocol,
                format!(
                    "Service {}/{} port {port} is covered by a BackendTLSPolicy, and Gatewright \
                     does not originate TLS for TCPRoute backends yet; connections to it are refused",
                    b.namespace, b.name
                ),
            ));
        }
        return Ok(ClusterRef::new(&b.namespace, &b.name, port, false, tls));
    }
    // appProtocol says how to speak to the backend.
    let (h2_app, wants_tls) = match sp.app_protocol.as_deref() {
        None | Some("http" | "kubernetes.io/ws") => (false, false),
        Some("kubernetes.io/h2c" | "h2c") => (true, false),
        Some("HTTPS" | "https" | "kubernetes.io/wss") => (false, true),
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
    let policies = index.backend_tls();
    tls_policies.extend(policies.targeting(&b.namespace, &b.name, sp.name.as_deref()));
    let tls = policies
        .applying(&b.namespace, &b.name, sp.name.as_deref())
        .cloned();
    // A port that says it speaks TLS but has no policy saying how to verify
    // it gets nothing: neither plaintext nor unverified TLS.
    if wants_tls && tls.is_none() {
        return Err((
            Reason::UnsupportedProtocol,
            format!(
                "Service {}/{} port {port} has appProtocol {:?} but no BackendTLSPolicy says how \
                 to verify it; requests to it are refused",
                b.namespace,
                b.name,
                sp.app_protocol.as_deref().unwrap_or("")
            ),
        ));
    }
    Ok(ClusterRef::new(
        &b.namespace,
        &b.name,
        port,
        kind == RouteKind::Grpc || h2_app,
        tls,
    ))
}
