//! Emits the Envoy resources of one Gateway from its listeners and
//! attachments, one module per kind of Envoy resource: listeners and their
//! filter chains, route configurations, clusters and their endpoints, and
//! SDS secrets.

mod clusters;
mod ext_authz;
mod listeners;
mod routes;
mod secrets;

pub use clusters::INVALID_BACKEND_CLUSTER;
use clusters::Split;
pub(crate) use clusters::load_assignment;
pub(crate) use routes::EmittedRoutes;

use crate::attach::{Attachment, ResolvedRoute};
use crate::backend::ClusterRef;
use crate::gateway::GatewayInfo;
use crate::hostname;
use crate::index::Index;
use crate::output::GatewayResources;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress, address,
    config_source, socket_address,
};
use envoy_types::pb::google::protobuf::Any;
use std::collections::{BTreeMap, BTreeSet};

/// `m` packed as a protobuf `Any`, as Envoy takes typed configuration.
fn any<M: prost::Message + prost::Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// The config source of every resource Gatewright serves: ADS, xDS v3.
fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

/// A TCP socket address.
fn socket(address: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: address.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// A UDP socket address.
fn udp_socket(address: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            protocol: socket_address::Protocol::Udp as i32,
            address: address.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// The clusters emission uses, gathered while listeners are emitted.
pub(crate) struct Used<'u> {
    /// Service-port clusters.
    pub(crate) clusters: &'u mut BTreeSet<ClusterRef>,
    /// UDPRoute split clusters, by name.
    pub(crate) splits: &'u mut BTreeMap<String, Split>,
}

/// The per-Gateway context of emission.
pub(crate) struct Emitter<'a, 'i> {
    /// Whether emitted routes are kept with their resolved route for the
    /// next translation (see [`crate::memo`]).
    pub(crate) keep: bool,
    pub(crate) gateway: &'a GatewayInfo<'i>,
    pub(crate) routes: &'a [std::sync::Arc<ResolvedRoute>],
    pub(crate) attachments: &'a [Attachment],
    pub(crate) bind_address: &'a str,
    /// The Gateway's connection-manager settings from its ProxyParameters.
    pub(crate) edge: &'a crate::input::EdgeSettings,
    pub(crate) index: &'a Index<'i>,
}

impl Emitter<'_, '_> {
    /// The Gateway's Envoy resources, each list sorted by name.
    pub(crate) fn emit(&self) -> GatewayResources {
        let mut out = GatewayResources::default();
        let mut clusters: BTreeSet<ClusterRef> = BTreeSet::new();
        let mut splits: BTreeMap<String, Split> = BTreeMap::new();
        // Programmable listeners by port (UDP ports apart), in spec order
        // within a port.
        let mut ports: BTreeMap<(bool, i32), Vec<usize>> = BTreeMap::new();
        for (i, l) in self.gateway.listeners.iter().enumerate() {
            if l.programmable() {
                ports.entry((l.udp(), l.port)).or_default().push(i);
            }
        }
        for (&(_, port), listeners) in &ports {
            let used = Used {
                clusters: &mut clusters,
                splits: &mut splits,
            };
            if let Some(listener) = self.listener(port, listeners, &mut out, used) {
                out.listeners.push(listener);
            }
        }
        self.push_clusters(&clusters, &mut out);
        if !splits.is_empty() {
            // Service-port clusters come out sorted; splits join them.
            self.push_splits(&splits, &mut out);
            out.clusters.sort_by(|a, b| a.name.cmp(&b.name));
            out.endpoints
                .sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
        }
        out.listeners.sort_by(|a, b| a.name.cmp(&b.name));
        out.routes.sort_by(|a, b| a.name.cmp(&b.name));
        out.secrets.sort_by(|a, b| a.name.cmp(&b.name));
        out.secrets.dedup_by(|a, b| a.name == b.name);
        out
    }

    /// Whether `listener` is the most specific of `listeners` accepting `host`.
    fn owns(&self, listeners: &[usize], listener: usize, host: &str) -> bool {
        self.owner(listeners, host) == Some(listener)
    }

    /// The most specific of `listeners` accepting `host` (the first on a
    /// tie): the one listener that serves it.
    fn owner(&self, listeners: &[usize], host: &str) -> Option<usize> {
        listeners
            .iter()
            .copied()
            .filter(|&i| self.gateway.listeners[i].accepts_host(host))
            .max_by_key(|&i| {
                (
                    hostname::specificity(self.gateway.listeners[i].hostname.as_deref()),
                    std::cmp::Reverse(i),
                )
            })
    }
}
