//! Programmed means acknowledged: whether an Envoy of a Gateway holds the
//! Gateway's current configuration, as its xDS stream says.
//!
//! A stream holds a config version once its Envoy has acknowledged every
//! listener, route, cluster and secret of it (`gatewright_xds::Cache::
//! sync_of`). The streams are this process's, and in Kubernetes mode also
//! the other replicas', from their reports (`k8s::acks`). The pipeline
//! keeps a Gateway `Programmed=False`/`Pending` until some stream holds its
//! current version, or `Programmed=False`/`Invalid` with Envoy's message
//! when an Envoy rejected it; [`AckWaiter`] wakes the next round when
//! either happens.

use crate::k8s::acks::Peers;
use gatewright_xds::Cache;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Where acknowledgements are looked up.
#[derive(Clone)]
pub struct Acks {
    cache: Cache,
    /// The other replicas' reports (Kubernetes mode); always empty else.
    peers: watch::Receiver<Arc<Peers>>,
    /// Node group → the config version the last round waits for.
    awaited: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Acks {
    /// Acknowledgements of this process's streams only.
    pub fn local(cache: Cache) -> Self {
        // The sender is dropped: the receiver keeps its empty value.
        let (_, peers) = watch::channel(Arc::new(Peers::new()));
        Self::with_peers(cache, peers)
    }

    /// Acknowledgements of this process's streams and of the peers'.
    pub fn with_peers(cache: Cache, peers: watch::Receiver<Arc<Peers>>) -> Self {
        Self {
            cache,
            peers,
            awaited: Arc::default(),
        }
    }

    /// Whether some Envoy of `group` holds config `version`.
    pub fn held(&self, group: &str, version: &str) -> bool {
        self.cache.sync_of(group).holding.contains_key(version)
            || self.peers.borrow().values().any(|report| {
                report
                    .groups
                    .get(group)
                    .is_some_and(|g| g.holding.contains_key(version))
            })
    }

    /// Envoy's message if some Envoy of `group` rejected config `version`.
    pub fn rejection(&self, group: &str, version: &str) -> Option<String> {
        if let Some(message) = self.cache.sync_of(group).rejected.get(version) {
            return Some(message.clone());
        }
        self.peers
            .borrow()
            .values()
            .find_map(|report| report.groups.get(group)?.rejected.get(version).cloned())
    }

    /// Sets what the last round waits for: node group → config version.
    pub fn await_versions(&self, awaited: BTreeMap<String, String>) {
        *self
            .awaited
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = awaited;
    }

    /// A waiter for [`Acks::await_versions`]'s versions.
    pub fn waiter(&self) -> AckWaiter {
        AckWaiter {
            acks: self.clone(),
            local: self.cache.sync_changes(),
        }
    }

    /// Whether some awaited version is now held or rejected.
    fn any_awaited_settled(&self) -> bool {
        let awaited = self
            .awaited
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        awaited.iter().any(|(group, version)| {
            self.held(group, version) || self.rejection(group, version).is_some()
        })
    }
}

/// Completes [`AckWaiter::wait`] when a version a round waits for is held
/// or rejected.
pub struct AckWaiter {
    acks: Acks,
    local: watch::Receiver<u64>,
}

impl AckWaiter {
    /// Waits until some awaited version is held or rejected. Cancel-safe:
    /// use it in
    /// `select!` loops.
    pub async fn wait(&mut self) {
        loop {
            let local_open = self.local.has_changed().is_ok();
            let peers_open = self.acks.peers.has_changed().is_ok();
            tokio::select! {
                changed = self.local.changed(), if local_open => { let _ = changed; }
                changed = self.acks.peers.changed(), if peers_open => { let _ = changed; }
                else => std::future::pending::<()>().await,
            }
            if self.acks.any_awaited_settled() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::acks::{GroupReport, Report};
    use std::time::Duration;

    fn holding(group: &str, version: &str) -> Report {
        Report {
            groups: BTreeMap::from([(
                group.to_owned(),
                GroupReport {
                    streams: 1,
                    holding: BTreeMap::from([(version.to_owned(), 1)]),
                    rejected: BTreeMap::new(),
                },
            )]),
        }
    }

    #[tokio::test]
    async fn a_peer_report_wakes_the_waiter_only_for_an_awaited_version() {
        let (tx, rx) = watch::channel(Arc::new(Peers::new()));
        let acks = Acks::with_peers(Cache::new(), rx);
        let mut waiter = acks.waiter();
        acks.await_versions(BTreeMap::from([("ns/gw".to_owned(), "v2".to_owned())]));
        assert!(!acks.held("ns/gw", "v2"));

        // Another version, or another group, is not what is awaited.
        tx.send_replace(Arc::new(BTreeMap::from([
            ("a".to_owned(), holding("ns/gw", "v1")),
            ("b".to_owned(), holding("ns/other", "v2")),
        ])));
        let early = tokio::time::timeout(Duration::from_millis(100), waiter.wait()).await;
        assert!(early.is_err(), "woke for a version nobody waits for");

        tx.send_replace(Arc::new(BTreeMap::from([(
            "b".to_owned(),
            holding("ns/gw", "v2"),
        )])));
        tokio::time::timeout(Duration::from_secs(5), waiter.wait())
            .await
            .expect("the awaited version is held: the waiter wakes");
        assert!(acks.held("ns/gw", "v2"));
        assert!(!acks.held("ns/gw", "v1"));
    }
}
