//! The translator's input: one snapshot of every object that can affect a
//! Gateway's Envoy configuration or any object's status.

use crate::api::backendtlspolicies::BackendTlsPolicy;
use crate::api::gatewayclasses::GatewayClass;
use crate::api::gateways::Gateway;
use crate::api::grpcroutes::GrpcRoute;
use crate::api::httproutes::HttpRoute;
use crate::api::listenersets::ListenerSet;
use crate::api::referencegrants::ReferenceGrant;
use crate::api::tcproutes::TcpRoute;
use crate::api::tlsroutes::TlsRoute;
use crate::api::udproutes::UdpRoute;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The GatewayClass `spec.controllerName` Gatewright answers to by default.
pub const DEFAULT_CONTROLLER_NAME: &str = "gatewright.dev/gateway-controller";

/// `namespace/name` of a namespaced object.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct ObjectKey {
    /// Namespace ("" for cluster-scoped objects).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// A key from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// Per-Gateway settings of every HTTP connection manager that come from
/// the Gateway's ProxyParameters (`spec.envoy`) rather than the Gateway
/// API; see "Edge defaults" in ARCHITECTURE.md.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EdgeSettings {
    /// `xff_num_trusted_hops`: how many proxies in front of Envoy append
    /// to `X-Forwarded-For` and are trusted to; 0 (the default) trusts
    /// none, so the client address is the peer of the TCP connection.
    pub xff_num_trusted_hops: u32,
}

/// Everything the translator reads. Lists may come in any order: the output
/// does not depend on it.
#[derive(Clone, Debug, Default)]
pub struct Input {
    /// The controllerName whose GatewayClasses are ours.
    pub controller_name: String,
    /// The time written as `lastTransitionTime` on new conditions; the
    /// translator has no clock of its own.
    pub now: Option<Time>,
    /// Address each Gateway's Envoy listeners bind to, by Gateway; Gateways
    /// not named here bind to `0.0.0.0`.
    pub bind_addresses: BTreeMap<ObjectKey, String>,
    /// The edge settings of each Gateway's connection managers, resolved
    /// by the control plane from the Gateway's ProxyParameters (the
    /// translator reads no parameters' content itself). A Gateway not
    /// named here gets [`EdgeSettings::default`]; one whose parameters
    /// hold an invalid value carries the reason, and is refused with
    /// `Accepted=False`/`InvalidParameters` rather than served without it.
    pub edge_settings: BTreeMap<ObjectKey, Result<EdgeSettings, String>>,
    /// Whether each Gateway's Envoys are provisioned in Kubernetes (their
    /// own Deployment and Service), which the features in
    /// [`crate::KUBERNETES_FEATURES`] need.
    pub kubernetes_infrastructure: bool,
    /// GatewayClasses.
    pub gateway_classes: Vec<Arc<GatewayClass>>,
    /// Gateways.
    pub gateways: Vec<Arc<Gateway>>,
    /// ListenerSets.
    pub listener_sets: Vec<Arc<ListenerSet>>,
    /// HTTPRoutes.
    pub http_routes: Vec<Arc<HttpRoute>>,
    /// GRPCRoutes.
    pub grpc_routes: Vec<Arc<GrpcRoute>>,
    /// TLSRoutes (v1).
    pub tls_routes: Vec<Arc<TlsRoute>>,
    /// TCPRoutes (v1).
    pub tcp_routes: Vec<Arc<TcpRoute>>,
    /// UDPRoutes (v1).
    pub udp_routes: Vec<Arc<UdpRoute>>,
    /// ReferenceGrants.
    pub reference_grants: Vec<Arc<ReferenceGrant>>,
    /// BackendTLSPolicies.
    pub backend_tls_policies: Vec<Arc<BackendTlsPolicy>>,
    /// Services.
    pub services: Vec<Arc<Service>>,
    /// EndpointSlices.
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    /// Secrets.
    pub secrets: Vec<Arc<Secret>>,
    /// ConfigMaps.
    pub config_maps: Vec<Arc<ConfigMap>>,
    /// Namespaces (their labels feed allowedRoutes selectors).
    pub namespaces: Vec<Arc<Namespace>>,
    /// The CA bundle file on the Envoy host that BackendTLSPolicies with
    /// `wellKnownCACertificates: System` trust; None means
    /// [`crate::DEFAULT_SYSTEM_CA_FILE`].
    pub system_ca_file: Option<String>,
    /// Gatewright `ProxyParameters` objects (group `gatewright.dev`) that
    /// exist, by key: a GatewayClass `parametersRef` to one is valid. Their
    /// content only matters to infrastructure, not to translation.
    pub proxy_parameters: std::collections::BTreeSet<ObjectKey>,
}

/// Why a document could not be added to an [`Input`].
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The document has no `apiVersion` or `kind`.
    #[error("document has no apiVersion or kind")]
    MissingTypeMeta,
    /// The kind is not one the translator reads.
    #[error("unsupported kind {kind} in apiVersion {api_version}")]
    UnsupportedKind {
        /// apiVersion of the document.
        api_version: String,
        /// kind of the document.
        kind: String,
    },
    /// The document does not match the kind's schema.
    #[error("invalid {kind}: {source}")]
    Invalid {
        /// kind of the document.
        kind: String,
        /// The decoding error.
        source: serde_json::Error,
    },
}

impl Input {
    /// An empty input for the default controller name.
    pub fn new() -> Self {
        Self {
            controller_name: DEFAULT_CONTROLLER_NAME.to_owned(),
            ..Self::default()
        }
    }

    /// Adds one Kubernetes object, given as JSON (a YAML document converted
    /// to JSON), dispatching on `apiVersion` and `kind`. Namespaced objects
    /// without a namespace are put in `default`, as kubectl would.
    pub fn add_document(&mut self, doc: serde_json::Value) -> Result<(), InputError> {
        self.insert(InputObject::decode(doc)?);
        Ok(())
    }

    /// Adds one decoded object.
    pub fn insert(&mut self, object: InputObject) {
        match object {
            InputObject::GatewayClass(o) => self.gateway_classes.push(o),
            InputObject::Gateway(o) => self.gateways.push(o),
            InputObject::ListenerSet(o) => self.listener_sets.push(o),
            InputObject::HttpRoute(o) => self.http_routes.push(o),
            InputObject::GrpcRoute(o) => self.grpc_routes.push(o),
            InputObject::TlsRoute(o) => self.tls_routes.push(o),
            InputObject::TcpRoute(o) => self.tcp_routes.push(o),
            InputObject::UdpRoute(o) => self.udp_routes.push(o),
            InputObject::ReferenceGrant(o) => self.reference_grants.push(o),
            InputObject::BackendTlsPolicy(o) => self.backend_tls_policies.push(o),
            InputObject::Service(o) => self.services.push(o),
            InputObject::EndpointSlice(o) => self.endpoint_slices.push(o),
            InputObject::Secret(o) => self.secrets.push(o),
            InputObject::ConfigMap(o) => self.config_maps.push(o),
            InputObject::Namespace(o) => self.namespaces.push(o),
            InputObject::ProxyParameters(key) => {
                self.proxy_parameters.insert(key);
            }
        }
    }
}

/// One object of a kind the translator reads, decoded: what
/// [`Input::insert`] takes. Decoding is the costly half of
/// [`Input::add_document`], so a caller that sees the same document again
/// (the file provider, for files that did not change) keeps this instead.
#[derive(Clone, Debug)]
pub enum InputObject {
    /// A GatewayClass.
    GatewayClass(Arc<GatewayClass>),
    /// A Gateway.
    Gateway(Arc<Gateway>),
    /// A ListenerSet.
    ListenerSet(Arc<ListenerSet>),
    /// An HTTPRoute.
    HttpRoute(Arc<HttpRoute>),
    /// A GRPCRoute.
    GrpcRoute(Arc<GrpcRoute>),
    /// A TLSRoute.
    TlsRoute(Arc<TlsRoute>),
    /// A TCPRoute.
    TcpRoute(Arc<TcpRoute>),
    /// A UDPRoute.
    UdpRoute(Arc<UdpRoute>),
    /// A ReferenceGrant.
    ReferenceGrant(Arc<ReferenceGrant>),
    /// A BackendTLSPolicy.
    BackendTlsPolicy(Arc<BackendTlsPolicy>),
    /// A Service.
    Service(Arc<Service>),
    /// An EndpointSlice.
    EndpointSlice(Arc<EndpointSlice>),
    /// A Secret.
    Secret(Arc<Secret>),
    /// A ConfigMap.
    ConfigMap(Arc<ConfigMap>),
    /// A Namespace.
    Namespace(Arc<Namespace>),
    /// A Gatewright ProxyParameters, by key (see [`Input::proxy_parameters`]).
    ProxyParameters(ObjectKey),
}

impl InputObject {
    /// Decodes one object given as JSON; namespaced objects without a
    /// namespace get `default`, as kubectl would.
    pub fn decode(doc: serde_json::Value) -> Result<Self, InputError> {
        let api_version = doc
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .ok_or(InputError::MissingTypeMeta)?;
        let kind = doc
            .get("kind")
            .and_then(|v| v.as_str())
            .ok_or(InputError::MissingTypeMeta)?;
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let kind = kind.to_owned();
        let api_version = api_version.to_owned();
        fn decode<T: serde::de::DeserializeOwned>(
            kind: &str,
            doc: serde_json::Value,
        ) -> Result<T, InputError> {
            serde_json::from_value(doc).map_err(|source| InputError::Invalid {
                kind: kind.to_owned(),
                source,
            })
        }
        macro_rules! namespaced {
            ($variant:ident, $ty:ty) => {{
                let mut o: $ty = decode(&kind, doc)?;
                if o.metadata.namespace.as_deref().unwrap_or("").is_empty() {
                    o.metadata.namespace = Some("default".to_owned());
                }
                Self::$variant(Arc::new(o))
            }};
        }
        Ok(match (group, kind.as_str()) {
            ("gateway.networking.k8s.io", "GatewayClass") => {
                Self::GatewayClass(Arc::new(decode(&kind, doc)?))
            }
            ("gateway.networking.k8s.io", "Gateway") => namespaced!(Gateway, Gateway),
            ("gateway.networking.k8s.io", "ListenerSet") => namespaced!(ListenerSet, ListenerSet),
            ("gateway.networking.k8s.io", "HTTPRoute") => namespaced!(HttpRoute, HttpRoute),
            ("gateway.networking.k8s.io", "GRPCRoute") => namespaced!(GrpcRoute, GrpcRoute),
            ("gateway.networking.k8s.io", "TLSRoute") => namespaced!(TlsRoute, TlsRoute),
            ("gateway.networking.k8s.io", "TCPRoute") => namespaced!(TcpRoute, TcpRoute),
            ("gateway.networking.k8s.io", "UDPRoute") => namespaced!(UdpRoute, UdpRoute),
            ("gateway.networking.k8s.io", "ReferenceGrant") => {
                namespaced!(ReferenceGrant, ReferenceGrant)
            }
            ("gateway.networking.k8s.io", "BackendTLSPolicy") => {
                namespaced!(BackendTlsPolicy, BackendTlsPolicy)
            }
            ("", "Service") => namespaced!(Service, Service),
            ("discovery.k8s.io", "EndpointSlice") => namespaced!(EndpointSlice, EndpointSlice),
            ("", "Secret") => namespaced!(Secret, Secret),
            ("", "ConfigMap") => namespaced!(ConfigMap, ConfigMap),
            ("", "Namespace") => Self::Namespace(Arc::new(decode(&kind, doc)?)),
            ("gatewright.dev", "ProxyParameters") => {
                let meta = doc.get("metadata");
                let field = |f: &str| {
                    meta.and_then(|m| m.get(f))
                        .and_then(|v| v.as_str())
                        .unwrap_or("")
                        .to_owned()
                };
                let (namespace, name) = (field("namespace"), field("name"));
                let namespace = if namespace.is_empty() {
                    "default".to_owned()
                } else {
                    namespace
                };
                Self::ProxyParameters(ObjectKey::new(namespace, name))
            }
            _ => return Err(InputError::UnsupportedKind { api_version, kind }),
        })
    }
}
