//! Serving translations over xDS: how a Gateway's node group is named, and
//! how translator output reaches the xDS cache. Both modes and every
//! infrastructure go through here.

use gatewright_translator::{GatewayResources, ObjectKey, Output};
use gatewright_xds::{AdsServer, Cache, Resources};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tokio::sync::watch;

/// The xDS node group of a Gateway, `<namespace>/<name>`: what its Envoys
/// send as node metadata (host bootstraps, provisioned bootstraps) and what
/// its xDS client certificate authorizes (see `pki::GatewayAuthorizer`).
pub fn group_of(key: &ObjectKey) -> String {
    format!("{}/{}", key.namespace, key.name)
}

/// A Gateway's translated resources as an xDS resource set.
pub fn to_xds(resources: &GatewayResources) -> Resources {
    let mut out = Resources::new();
    for l in &resources.listeners {
        out.add(l.name.clone(), l);
    }
    for r in &resources.routes {
        out.add(r.name.clone(), r);
    }
    for c in &resources.clusters {
        out.add(c.name.clone(), c);
    }
    for e in &resources.endpoints {
        out.add(e.cluster_name.clone(), e);
    }
    for s in &resources.secrets {
        out.add(s.name.clone(), s);
    }
    out
}

/// Keeps the xDS cache equal to the latest translation: one node group per
/// Gateway with resources, and no group for a Gateway that is gone.
#[derive(Debug)]
pub struct Publisher {
    cache: Cache,
    /// What each group was last served: a translation that hands out the
    /// same allocation again (nothing it came from changed) is not
    /// converted and compared again.
    served: BTreeMap<String, Arc<GatewayResources>>,
}

impl Publisher {
    /// A publisher into `cache`, which serves nothing yet.
    pub fn new(cache: Cache) -> Self {
        Self {
            cache,
            served: BTreeMap::new(),
        }
    }

    /// Serves each Gateway's resources to its node group and stops serving
    /// the groups of Gateways that are gone.
    pub fn publish(&mut self, output: &Output) {
        let mut next = BTreeMap::new();
        for (key, resources) in &output.gateways {
            let group = group_of(key);
            let unchanged = self
                .served
                .get(&group)
                .is_some_and(|last| Arc::ptr_eq(last, resources));
            if !unchanged {
                self.cache.set(&group, to_xds(resources));
            }
            next.insert(group, Arc::clone(resources));
        }
        for gone in self.served.keys().filter(|g| !next.contains_key(*g)) {
            self.cache.clear(gone);
        }
        self.served = next;
    }

    /// Serves again only the Gateways in `changed` (e.g. after their
    /// endpoints were refreshed); the set of groups does not change.
    pub fn publish_some(&mut self, output: &Output, changed: &BTreeSet<ObjectKey>) {
        for key in changed {
            if let Some(resources) = output.gateways.get(key) {
                let group = group_of(key);
                self.cache.set(&group, to_xds(resources));
                self.served.insert(group, Arc::clone(resources));
            }
        }
    }
}

/// The ADS server for plaintext serving on `address` (host
/// infrastructure). On loopback only local processes reach it; anywhere
/// else a client cannot be authenticated, so secrets (private keys) are
/// never sent, and TLS listeners that need one stay unserved.
pub fn plaintext_server(cache: Cache, address: std::net::SocketAddr) -> AdsServer {
    let server = AdsServer::new(cache);
    if address.ip().is_loopback() {
        server
    } else {
        tracing::warn!(%address, "xDS is served in plaintext beyond loopback: clients cannot be authenticated, so no secrets are sent; TLS listeners stay unserved");
        server.deny_unauthenticated_secrets()
    }
}

/// Serves ADS in plaintext on `listener` from when `open` turns true until
/// `stop` does (host infrastructure: Envoys are local processes on
/// loopback).
///
/// Until `open`, connections wait in the listen backlog: Envoys adopted
/// from a crashed Gatewright reconnect at once, and a group that is not
/// published yet would be served as empty, removing every listener they
/// hold. The loops open once the first round has published.
pub fn serve_plaintext(
    listener: tokio::net::TcpListener,
    server: AdsServer,
    mut open: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let service = server.into_service();
    tokio::spawn(async move {
        tokio::select! {
            opened = open.wait_for(|o| *o) => if opened.is_err() {
                return;
            },
            _ = stop.wait_for(|s| *s) => return,
        }
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let result = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!("xDS server failed: {e}");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use prost::Name;

    fn gateway(clusters: &[&str]) -> Arc<GatewayResources> {
        Arc::new(GatewayResources {
            clusters: clusters
                .iter()
                .map(|name| Cluster {
                    name: (*name).to_owned(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn output(gateways: &[(&str, &Arc<GatewayResources>)]) -> Output {
        let mut output = Output::default();
        for (name, resources) in gateways {
            output
                .gateways
                .insert(ObjectKey::new("ns", *name), Arc::clone(resources));
        }
        output
    }

    fn clusters(cache: &Cache, group: &str) -> usize {
        cache
            .resources(group)
            .of_type(&Cluster::type_url())
            .map_or(0, |t| t.len())
    }

    /// Skipping Gateways handed out again unchanged never leaves the cache
    /// behind the output, through endpoint refreshes and deletions too.
    #[test]
    fn the_cache_follows_every_output() {
        let cache = Cache::new();
        let mut publisher = Publisher::new(cache.clone());
        let (a, b) = (gateway(&["a1"]), gateway(&["b1"]));
        publisher.publish(&output(&[("a", &a), ("b", &b)]));
        assert_eq!((clusters(&cache, "ns/a"), clusters(&cache, "ns/b")), (1, 1));
        let version_a = cache.config_version("ns/a");

        let b2 = gateway(&["b1", "b2"]);
        publisher.publish(&output(&[("a", &a), ("b", &b2)]));
        assert_eq!((clusters(&cache, "ns/a"), clusters(&cache, "ns/b")), (1, 2));
        assert_eq!(cache.config_version("ns/a"), version_a);

        // A refresh serves a copy; the translation's own allocation, when
        // it comes back, is served again.
        let refreshed = gateway(&["b1", "b2", "b3"]);
        let changed = BTreeSet::from([ObjectKey::new("ns", "b")]);
        publisher.publish_some(&output(&[("a", &a), ("b", &refreshed)]), &changed);
        assert_eq!(clusters(&cache, "ns/b"), 3);
        publisher.publish(&output(&[("a", &a), ("b", &b2)]));
        assert_eq!(clusters(&cache, "ns/b"), 2);

        publisher.publish(&output(&[("b", &b2)]));
        assert_eq!(
            cache.config_version("ns/a"),
            None,
            "a gone Gateway is cleared"
        );
        assert_eq!(clusters(&cache, "ns/b"), 2);
    }
}
