//! Node registration, its Lease and its Ready heartbeat.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

/// Field manager name used for server-side apply.
const MANAGER: &str = "gatewright-node-agent";

/// What the node advertises.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// InternalIP address.
    pub ip: Ipv4Addr,
    /// Pod CIDR.
    pub pod_cidr: String,
    /// Port of the kubelet API.
    pub kubelet_port: u16,
}

/// Creates (or updates) the Node object.
pub async fn register(client: &Client, info: &NodeInfo) -> Result<()> {
    let api = Api::<Node>::all(client.clone());
    let node = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": info.name,
            "labels": {
                "kubernetes.io/hostname": info.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": std::env::consts::ARCH,
                "node.kubernetes.io/instance-type": "gatewright-node-agent",
            },
        },
        "spec": {"podCIDR": info.pod_cidr, "podCIDRs": [info.pod_cidr]},
    });
    api.patch(
        &info.name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&node),
    )
    .await
    .with_context(|| format!("registering Node {}", info.name))?;
    update_status(client, info).await?;
    remove_not_ready_taints(client, info).await
}

/// Drops the `node.kubernetes.io/not-ready`/`unreachable` taints the API
/// server adds on creation (no node-lifecycle controller removes them here).
async fn remove_not_ready_taints(client: &Client, info: &NodeInfo) -> Result<()> {
    let api = Api::<Node>::all(client.clone());
    let node = api.get(&info.name).await.context("getting own Node")?;
    let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
    let kept: Vec<_> = taints
        .iter()
        .filter(|t| !t.key.starts_with("node.kubernetes.io/"))
        .cloned()
        .collect();
    if kept.len() == taints.len() {
        return Ok(());
    }
    let patch = serde_json::json!({"spec": {"taints": kept}});
    api.patch(&info.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .context("removing not-ready taints")?;
    Ok(())
}

/// Writes the node status: Ready, addresses, capacity, daemon endpoint.
pub async fn update_status(client: &Client, info: &NodeInfo) -> Result<()> {
    let api = Api::<Node>::all(client.clone());
    let now = Timestamp::now().to_string();
    let cond = |kind: &str, status: &str, reason: &str, message: &str| {
        serde_json::json!({
            "type": kind, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        })
    };
    let resources = serde_json::json!({"cpu": "8", "memory": "16Gi", "pods": "250", "ephemeral-storage": "100Gi"});
    let status = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": info.name},
        "status": {
            "conditions": [
                cond("Ready", "True", "KubeletReady", "gatewright node agent is posting ready status"),
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "no memory pressure"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "no PID pressure"),
                cond("NetworkUnavailable", "False", "RouteCreated", "pods share bridge"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": info.ip.to_string()},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": info.kubelet_port}},
            "capacity": resources,
            "allocatable": resources,
            "nodeInfo": {
                "machineID": "gatewright", "systemUUID": "gatewright", "bootID": "gatewright",
                "kernelVersion": "", "osImage": "gatewright node agent",
                "containerRuntimeVersion": "gatewright://0.1.0",
                "kubeletVersion": "v1.35.0", "kubeProxyVersion": "",
                "operatingSystem": "linux", "architecture": std::env::consts::ARCH,
            },
        },
    });
    api.patch_status(
        &info.name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&status),
    )
    .await
    .with_context(|| format!("updating Node {} status", info.name))?;
    Ok(())
}

/// Renews the node Lease in kube-node-lease.
pub async fn renew_lease(client: &Client, info: &NodeInfo) -> Result<()> {
    let api = Api::<Lease>::namespaced(client.clone(), "kube-node-lease");
    let node = Api::<Node>::all(client.clone())
        .get(&info.name)
        .await
        .context("getting own Node")?;
    let lease = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": info.name,
            "namespace": "kube-node-lease",
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "Node", "name": info.name,
                "uid": node.metadata.uid,
            }],
        },
        "spec": {
            "holderIdentity": info.name,
            "leaseDurationSeconds": 40,
            "renewTime": MicroTime(Timestamp::now()),
        },
    });
    api.patch(
        &info.name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&lease),
    )
    .await
    .context("renewing node Lease")?;
    Ok(())
}

/// Keeps the node alive: Lease every 10 s, status every 10 s (re-registering
/// if the Node vanished).
pub async fn heartbeat(client: Client, info: NodeInfo) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        if let Err(e) = update_status(&client, &info).await {
            tracing::warn!("{e:#}");
            if let Err(e) = register(&client, &info).await {
                tracing::warn!("{e:#}");
            }
        }
        if let Err(e) = renew_lease(&client, &info).await {
            tracing::warn!("{e:#}");
        }
    }
}
