//! What the Envoys connected to each controller replica hold, shared
//! between replicas through the API server.
//!
//! Envoys of one Gateway may be connected to any replica, but only the
//! leader writes status. So every replica publishes a report of its own
//! streams ([`Report`]: per node group, which config versions they hold)
//! in a ConfigMap of the controller's namespace, `gatewright-xds-acks-
//! <identity>`, labelled [`REPORT_LABEL`] and owned by the replica's Pod
//! (so it goes with the Pod). Every replica watches the others' reports
//! ([`spawn_watcher`]); the leader combines them with its own streams
//! (`crate::acks::Acks`). Config versions are hashes of content, so equal
//! translations give equal versions on every replica.

use anyhow::Context as _;
use futures::StreamExt as _;
use gatewright_xds::{Cache, GroupSync};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, ResourceExt as _};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The label (value `"true"`) of every replica's report ConfigMap.
pub const REPORT_LABEL: &str = "gatewright.dev/xds-acks";
/// The key of the report in its ConfigMap.
const REPORT_KEY: &str = "report.json";
/// Changes within this long go out in one write.
const COALESCE: Duration = Duration::from_millis(100);
/// How long a failed write waits before it is tried again.
const RETRY: Duration = Duration::from_secs(2);

/// One replica's streams: node group → what they hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Groups with at least one open stream.
    pub groups: BTreeMap<String, GroupReport>,
}

/// The streams of one node group on one replica.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupReport {
    /// Streams open.
    pub streams: usize,
    /// Config version → streams whose Envoy holds it.
    pub holding: BTreeMap<String, usize>,
    /// Config version → Envoy's message, for versions an Envoy rejected.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rejected: BTreeMap<String, String>,
}

impl From<BTreeMap<String, GroupSync>> for Report {
    fn from(sync: BTreeMap<String, GroupSync>) -> Self {
        Self {
            groups: sync
                .into_iter()
                .map(|(group, s)| {
                    let report = GroupReport {
                        streams: s.streams,
                        holding: s.holding,
                        rejected: s.rejected,
                    };
                    (group, report)
                })
                .collect(),
        }
    }
}

/// The reports of the other replicas, by identity.
pub type Peers = BTreeMap<String, Report>;

/// The name of `identity`'s report ConfigMap.
pub fn report_name(identity: &str) -> String {
    format!("gatewright-xds-acks-{identity}")
}

/// The owner of this replica's report: its Pod, when its UID is known.
pub fn pod_owner(identity: &str, pod_uid: Option<&str>) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: "v1".to_owned(),
        kind: "Pod".to_owned(),
        name: identity.to_owned(),
        uid: pod_uid.filter(|u| !u.is_empty())?.to_owned(),
        ..OwnerReference::default()
    })
}

/// Publishes this replica's report whenever what its streams hold changes,
/// until `stop`; then deletes it.
pub fn spawn_publisher(
    client: kube::Client,
    namespace: String,
    identity: String,
    owner: Option<OwnerReference>,
    cache: Cache,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        let name = report_name(&identity);
        let mut changes = cache.sync_changes();
        let mut written: Option<Report> = None;
        loop {
            let report = Report::from(cache.sync());
            if written.as_ref() != Some(&report) {
                match write(&api, &name, owner.as_ref(), &report).await {
                    Ok(()) => written = Some(report),
                    Err(e) => {
                        tracing::warn!(configmap = %name, "cannot publish the xDS acknowledgement report: {e:#}");
                        tokio::select! {
                            () = tokio::time::sleep(RETRY) => continue,
                            _ = stop.wait_for(|s| *s) => break,
                        }
                    }
                }
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                _ = stop.wait_for(|s| *s) => break,
            }
            tokio::time::sleep(COALESCE).await;
            changes.borrow_and_update();
        }
        if let Err(e) = api.delete(&name, &DeleteParams::default()).await {
            tracing::debug!(configmap = %name, "report not deleted: {e}");
        }
    })
}

async fn write(
    api: &Api<ConfigMap>,
    name: &str,
    owner: Option<&OwnerReference>,
    report: &Report,
) -> anyhow::Result<()> {
    let text = serde_json::to_string(report).context("encoding the report")?;
    let object = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "labels": {
                REPORT_LABEL: "true",
                "app.kubernetes.io/managed-by": "gatewright",
            },
            "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
        },
        "data": { REPORT_KEY: text },
    });
    api.patch(
        name,
        &PatchParams::apply("gatewright-xds-acks").force(),
        &Patch::Apply(&object),
    )
    .await
    .with_context(|| format!("applying ConfigMap {name}"))?;
    Ok(())
}

/// Watches the reports of every replica but `identity`. A report that does
/// not decode counts as empty (and is logged once per change).
pub fn spawn_watcher(
    client: kube::Client,
    namespace: &str,
    identity: &str,
) -> (watch::Receiver<Arc<Peers>>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(Arc::new(Peers::new()));
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let own = report_name(identity);
    let config = watcher::Config::default().labels(&format!("{REPORT_LABEL}=true"));
    let task = tokio::spawn(async move {
        let mut reports: BTreeMap<String, Report> = BTreeMap::new();
        let mut listing: Option<BTreeMap<String, Report>> = None;
        let stream = watcher::watcher(api, config).default_backoff();
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    tracing::warn!("watch of xDS acknowledgement reports failed, retrying: {e}");
                    continue;
                }
            };
            match event {
                watcher::Event::Apply(cm) if cm.name_any() != own => {
                    reports.insert(cm.name_any(), decode(&cm));
                }
                watcher::Event::Delete(cm) => {
                    reports.remove(&cm.name_any());
                }
                watcher::Event::Init => listing = Some(BTreeMap::new()),
                watcher::Event::InitApply(cm) if cm.name_any() != own => {
                    if let Some(l) = &mut listing {
                        l.insert(cm.name_any(), decode(&cm));
                    }
                }
                watcher::Event::InitDone => {
                    if let Some(l) = listing.take() {
                        reports = l;
                    }
                }
                _ => continue,
            }
            if listing.is_none() {
                tx.send_replace(Arc::new(reports.clone()));
            }
        }
    });
    (rx, task)
}

fn decode(cm: &ConfigMap) -> Report {
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(REPORT_KEY))
        .map_or("", String::as_str);
    serde_json::from_str(text).unwrap_or_else(|e| {
        tracing::warn!(configmap = %cm.name_any(), "ignoring an xDS acknowledgement report that does not decode: {e}");
        Report::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_and_undecodable_ones_are_empty() {
        let report = Report::from(BTreeMap::from([(
            "ns/gw".to_owned(),
            GroupSync {
                streams: 2,
                holding: BTreeMap::from([("00ff".to_owned(), 1)]),
                rejected: BTreeMap::from([("00fe".to_owned(), "no".to_owned())]),
            },
        )]));
        let mut cm = ConfigMap {
            data: Some(BTreeMap::from([(
                REPORT_KEY.to_owned(),
                serde_json::to_string(&report).expect("encode"),
            )])),
            ..ConfigMap::default()
        };
        assert_eq!(decode(&cm), report);
        cm.data = Some(BTreeMap::from([(REPORT_KEY.to_owned(), "{".to_owned())]));
        assert_eq!(decode(&cm), Report::default());
        assert_eq!(pod_owner("gw-1", Some("")), None);
        assert_eq!(
            pod_owner("gw-1", Some("u")).map(|o| (o.kind, o.name, o.uid)),
            Some(("Pod".to_owned(), "gw-1".to_owned(), "u".to_owned()))
        );
    }
}
