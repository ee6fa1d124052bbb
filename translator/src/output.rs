//! The translator's output: Envoy resources per Gateway and the status of
//! every object the translator has an opinion on.

use crate::api::backendtlspolicies::BackendTlsPolicyStatus;
use crate::api::gatewayclasses::GatewayClassStatus;
use crate::api::gateways::GatewayStatus;
use crate::api::grpcroutes::GrpcRouteStatus;
use crate::api::httproutes::HttpRouteStatus;
use crate::api::listenersets::ListenerSetStatus;
use crate::api::tcproutes::TcpRouteStatus;
use crate::api::tlsroutes::TlsRouteStatus;
use crate::api::udproutes::UdpRouteStatus;
use crate::input::ObjectKey;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The Envoy configuration of one Gateway. Every list is sorted by resource
/// name, and names are unique within their list.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GatewayResources {
    /// LDS resources.
    pub listeners: Vec<Listener>,
    /// RDS resources.
    pub routes: Vec<RouteConfiguration>,
    /// CDS resources (all of type EDS, fed over ADS).
    pub clusters: Vec<Cluster>,
    /// EDS resources, one per cluster, named like the cluster.
    pub endpoints: Vec<ClusterLoadAssignment>,
    /// SDS resources.
    pub secrets: Vec<Secret>,
    /// The Service ports behind each cluster of `clusters`, by cluster
    /// name: what [`crate::refresh_endpoints`] recomputes, without
    /// re-translating, when those Services' EndpointSlices change. Every
    /// cluster is fed by Services, so the keys are exactly the names of
    /// `clusters`.
    pub backends: BTreeMap<String, ClusterFeed>,
}

/// The Service ports feeding one cluster's endpoints.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClusterFeed {
    /// One Service port: the cluster of a backendRef.
    Port(ServicePort),
    /// A UDPRoute rule's per-flow split: each Service port one locality of
    /// the cluster, weighted by its backendRef's weight (non-zero).
    Split(Vec<(ServicePort, u32)>),
}

impl ClusterFeed {
    /// Every Service port the cluster's endpoints come from.
    pub fn ports(&self) -> impl Iterator<Item = &ServicePort> {
        let (one, split) = match self {
            Self::Port(p) => (Some(p), &[][..]),
            Self::Split(parts) => (None, parts.as_slice()),
        };
        one.into_iter().chain(split.iter().map(|(p, _)| p))
    }
}

/// A port of a Kubernetes Service: the source of one cluster's endpoints.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePort {
    /// The Service.
    pub service: ObjectKey,
    /// The Service port number (`spec.ports[].port`), not the target port:
    /// the EndpointSlice port is found through the Service port's name.
    pub port: i32,
}

/// Status of every object the translator has an opinion on, by object.
///
/// Route statuses hold only the `parents` entries of Gateways this
/// controller owns; merging them with other controllers' entries is the
/// status writer's job.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Statuses {
    /// GatewayClasses whose controllerName is ours.
    pub gateway_classes: BTreeMap<String, GatewayClassStatus>,
    /// Gateways of our GatewayClasses.
    pub gateways: BTreeMap<ObjectKey, GatewayStatus>,
    /// ListenerSets attached to our Gateways.
    pub listener_sets: BTreeMap<ObjectKey, ListenerSetStatus>,
    /// HTTPRoutes with at least one parentRef to our Gateways.
    pub http_routes: BTreeMap<ObjectKey, HttpRouteStatus>,
    /// GRPCRoutes with at least one parentRef to our Gateways.
    pub grpc_routes: BTreeMap<ObjectKey, GrpcRouteStatus>,
    /// TLSRoutes with at least one parentRef to our Gateways.
    pub tls_routes: BTreeMap<ObjectKey, TlsRouteStatus>,
    /// TCPRoutes with at least one parentRef to our Gateways.
    pub tcp_routes: BTreeMap<ObjectKey, TcpRouteStatus>,
    /// UDPRoutes with at least one parentRef to our Gateways.
    pub udp_routes: BTreeMap<ObjectKey, UdpRouteStatus>,
    /// BackendTLSPolicies that target a backend of our routes.
    pub backend_tls_policies: BTreeMap<ObjectKey, BackendTlsPolicyStatus>,
}

/// Everything [`crate::translate`] produces.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Output {
    /// Envoy resources for each programmable Gateway of ours.
    /// Shared: a [`crate::Translator`] hands out a Gateway's resources
    /// again, the same allocation, when nothing they come from changed.
    pub gateways: BTreeMap<ObjectKey, Arc<GatewayResources>>,
    /// Status for every object the translator has an opinion on.
    pub statuses: Statuses,
}
