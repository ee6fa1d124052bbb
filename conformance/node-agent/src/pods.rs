//! Pod lifecycle: binding, one worker per pod (network namespace, volumes,
//! processes, restarts, probes, status) and teardown on deletion.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Event, EventSource, HostIP, ObjectReference, Pod,
    PodCondition, PodIP, PodStatus, Probe, Secret, Service, ServiceAccount, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::imagemap::{ImageMap, process_args};
use crate::ipam::{Cidr, Ipam};
use crate::spec::{self, PodFacts};
use crate::{logs, netns};
use gatewright_node_agent::{mountns, podfiles};

/// The longest grace period honoured on deletion.
const MAX_GRACE: Duration = Duration::from_secs(30);

/// Everything pod workers share.
pub struct Ctx {
    /// API client.
    pub client: Client,
    /// This node's name.
    pub node_name: String,
    /// This node's IP (the bridge address, the pods' gateway).
    pub node_ip: Ipv4Addr,
    /// The pod CIDR.
    pub cidr: Cidr,
    /// The bridge pod veths join.
    pub bridge: String,
    /// Where volumes, logs and allocations live.
    pub state_dir: PathBuf,
    /// Image → binary.
    pub images: ImageMap,
    /// Where the image map came from (for messages).
    pub image_map_path: PathBuf,
    /// Pod IP allocations.
    pub ipam: StdMutex<Ipam>,
}

/// Why a worker stops.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stop {
    /// The pod is being deleted: stop within `grace`, clean up, delete it.
    Delete(Duration),
    /// The agent exits: stop processes and namespaces, keep the pod.
    Shutdown,
}

struct Worker {
    stop: watch::Sender<Option<Stop>>,
    handle: JoinHandle<()>,
}

/// Tracks the workers of the pods bound to this node.
pub struct Manager {
    ctx: Arc<Ctx>,
    workers: HashMap<String, Worker>,
}

impl Manager {
    /// A manager with no workers.
    pub fn new(ctx: Arc<Ctx>) -> Self {
        Self {
            ctx,
            workers: HashMap::new(),
        }
    }

    /// Removes pod namespaces left by an earlier run and frees the IPs of
    /// pods that no longer exist.
    pub async fn cleanup_stale(&self) -> Result<()> {
        let pods = Api::<Pod>::all(self.ctx.client.clone())
            .list(&ListParams::default())
            .await
            .context("listing pods")?;
        let live: Vec<String> = pods
            .items
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        kill_recorded_processes(&self.ctx.state_dir.join("pids"));
        for ns in netns::list().await? {
            tracing::info!(netns = %ns, "removing pod network namespace left by an earlier run");
            netns::teardown(&ns).await;
        }
        let mut ipam = self
            .ctx
            .ipam
            .lock()
            .map_err(|_| anyhow::anyhow!("ipam lock poisoned"))?;
        ipam.retain_owners(&|uid| live.iter().any(|l| l == uid))
    }

    /// One pass: bind pending pods, start workers for new pods, stop workers
    /// of deleted pods.
    pub async fn sync(&mut self) -> Result<()> {
        let api = Api::<Pod>::all(self.ctx.client.clone());
        let pods = api
            .list(&ListParams::default())
            .await
            .context("listing pods")?;
        let mut seen = Vec::new();
        for pod in pods.items {
            let Some(uid) = pod.metadata.uid.clone() else {
                continue;
            };
            let spec = pod.spec.as_ref();
            let node = spec.and_then(|s| s.node_name.as_deref()).unwrap_or("");
            if node.is_empty() {
                if wants_binding(&pod)
                    && let Err(e) = bind(&self.ctx, &pod).await
                {
                    tracing::warn!("binding {}: {e:#}", pod_key(&pod));
                }
                continue;
            }
            if node != self.ctx.node_name {
                continue;
            }
            seen.push(uid.clone());
            let deleting = pod.metadata.deletion_timestamp.is_some();
            match self.workers.get(&uid) {
                Some(w) => {
                    if deleting && w.stop.borrow().is_none() {
                        let _ = w.stop.send(Some(Stop::Delete(grace_of(&pod))));
                    } else if deleting && w.handle.is_finished() {
                        // Its final delete did not take: a new worker retries.
                        self.workers.remove(&uid);
                    }
                }
                None => {
                    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                    if !deleting && matches!(phase, Some("Succeeded" | "Failed")) {
                        continue;
                    }
                    let initial = deleting.then(|| Stop::Delete(grace_of(&pod)));
                    let (tx, rx) = watch::channel(initial);
                    let ctx = self.ctx.clone();
                    tracing::info!(pod = %pod_key(&pod), "starting pod worker");
                    let handle = tokio::spawn(run_worker(ctx, pod, rx));
                    self.workers.insert(uid, Worker { stop: tx, handle });
                }
            }
        }
        self.workers.retain(|uid, w| {
            if seen.contains(uid) {
                return true;
            }
            if w.stop.borrow().is_none() {
                let _ = w.stop.send(Some(Stop::Delete(Duration::ZERO)));
            }
            !w.handle.is_finished()
        });
        Ok(())
    }

    /// Stops every worker (processes and namespaces) and waits for them.
    pub async fn shutdown(self) {
        for w in self.workers.values() {
            let _ = w.stop.send(Some(Stop::Shutdown));
        }
        for (_, w) in self.workers {
            let _ = w.handle.await;
        }
    }
}

/// Kills the process groups recorded by an earlier run (pid files hold
/// `<pid>\n<binary>`; a pid whose executable differs was reused: skipped).
/// Namespaces made by an earlier agent live in its mount namespace, so their
/// processes cannot be found through `ip netns pids`.
fn kill_recorded_processes(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if let Ok(text) = std::fs::read_to_string(&path) {
            let mut lines = text.lines();
            let pid = lines.next().and_then(|p| p.trim().parse::<i32>().ok());
            let binary = lines.next().unwrap_or("");
            if let Some(pid) = pid.filter(|p| *p > 1) {
                let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
                let same = std::fs::canonicalize(binary).is_ok_and(|b| b == exe);
                if same {
                    tracing::info!(pid, binary, "killing a process left by an earlier run");
                    // SAFETY: kill(2) on a process group; no memory involved.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }
            }
        }
        let _ = std::fs::remove_file(&path);
    }
}

fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

fn grace_of(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .unwrap_or(30)
        .max(0);
    Duration::from_secs(u64::try_from(secs).unwrap_or(0)).min(MAX_GRACE)
}

/// Whether a pod waits for the (absent) default scheduler.
fn wants_binding(pod: &Pod) -> bool {
    let scheduler = pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref());
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none()
        && matches!(scheduler, None | Some("default-scheduler"))
        && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// The pod's namespace and name, which every API call on it needs.
fn namespace_and_name(pod: &Pod) -> Result<(&str, &str)> {
    let ns = pod
        .metadata
        .namespace
        .as_deref()
        .context("pod has no namespace")?;
    let name = pod.metadata.name.as_deref().context("pod has no name")?;
    Ok((ns, name))
}

async fn bind(ctx: &Ctx, pod: &Pod) -> Result<()> {
    let (ns, name) = namespace_and_name(pod)?;
    let binding = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "namespace": ns, "uid": pod.metadata.uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": ctx.node_name},
    });
    let api = Api::<Pod>::namespaced(ctx.client.clone(), ns);
    let _: serde_json::Value = api
        .create_subresource("binding", name, &PostParams::default(), &binding)
        .await
        .context("posting pods/binding")?;
    tracing::info!(pod = %pod_key(pod), "bound to {}", ctx.node_name);
    Ok(())
}

/// Live state of one container, shared between its task and the status writer.
#[derive(Debug, Clone)]
struct CState {
    name: String,
    image: String,
    ready: bool,
    started: bool,
    restarts: i32,
    state: ContainerState,
    last: Option<ContainerState>,
    /// No more restarts will come.
    done: bool,
}

#[derive(Debug)]
struct PodRun {
    pod_ip: Option<String>,
    start_time: Timestamp,
    network_ready: bool,
    containers: Vec<CState>,
}

struct Shared {
    run: StdMutex<PodRun>,
    changed: Notify,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut PodRun)) {
        if let Ok(mut run) = self.run.lock() {
            f(&mut run);
        }
        self.changed.notify_one();
    }

    fn container(&self, idx: usize, f: impl FnOnce(&mut CState)) {
        self.update(|run| {
            if let Some(c) = run.containers.get_mut(idx) {
                f(c);
            }
        });
    }
}

fn waiting(reason: &str, message: &str) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_string()),
            message: (!message.is_empty()).then(|| message.to_string()),
        }),
        ..Default::default()
    }
}

fn now() -> Time {
    Time(Timestamp::now())
}

async fn run_worker(ctx: Arc<Ctx>, pod: Pod, mut stop: watch::Receiver<Option<Stop>>) {
    let key = pod_key(&pod);
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let ns_name = netns::ns_name(&uid);
    let containers: Vec<CState> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| CState {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            ready: false,
            started: false,
            restarts: 0,
            state: waiting("ContainerCreating", ""),
            last: None,
            done: false,
        })
        .collect();
    let shared = Arc::new(Shared {
        run: StdMutex::new(PodRun {
            pod_ip: None,
            start_time: Timestamp::now(),
            network_ready: false,
            containers,
        }),
        changed: Notify::new(),
    });
    let writer = tokio::spawn(status_writer(ctx.clone(), pod.clone(), shared.clone()));
    let mut tasks = Vec::new();
    if stop.borrow().is_none() {
        match start(&ctx, &pod, &ns_name, &shared, &stop).await {
            Ok(t) => tasks = t,
            Err(e) => tracing::warn!(pod = %key, "starting: {e:#}"),
        }
    }
    // Wait until told to stop (containers that end stay ended).
    while stop.borrow().is_none() {
        if stop.changed().await.is_err() {
            break;
        }
    }
    let reason = (*stop.borrow()).unwrap_or(Stop::Shutdown);
    for t in tasks {
        let _ = t.await;
    }
    netns::teardown(&ns_name).await;
    writer.abort();
    if let Stop::Delete(_) = reason {
        if let Ok(mut ipam) = ctx.ipam.lock()
            && let Err(e) = ipam.release(&uid)
        {
            tracing::warn!(pod = %key, "releasing IP: {e:#}");
        }
        let dir = pod_dir(&ctx, &uid);
        let _ = tokio::fs::remove_dir_all(&dir).await;
        let log_dir = logs::pod_log_dir(
            &ctx.state_dir,
            pod.metadata.namespace.as_deref().unwrap_or(""),
            pod.metadata.name.as_deref().unwrap_or(""),
            &uid,
        );
        let _ = tokio::fs::remove_dir_all(&log_dir).await;
        if let Err(e) = delete_pod(&ctx, &pod).await {
            tracing::warn!(pod = %key, "final delete: {e:#}");
        } else {
            tracing::info!(pod = %key, "pod removed");
        }
    }
}

async fn delete_pod(ctx: &Ctx, pod: &Pod) -> Result<()> {
    let (ns, name) = namespace_and_name(pod)?;
    let api = Api::<Pod>::namespaced(ctx.client.clone(), ns);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() || s.code == 409 => Ok(()),
        Err(e) => Err(e).context("deleting pod with grace 0"),
    }
}

fn pod_dir(ctx: &Ctx, uid: &str) -> PathBuf {
    ctx.state_dir.join("pods").join(uid)
}

/// Sets up the network and volumes, then starts one task per container.
async fn start(
    ctx: &Arc<Ctx>,
    pod: &Pod,
    ns_name: &str,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<Option<Stop>>,
) -> Result<Vec<JoinHandle<()>>> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let ip = ctx
        .ipam
        .lock()
        .map_err(|_| anyhow::anyhow!("ipam lock poisoned"))?
        .allocate(&uid)?;
    let mut attempt = 0;
    loop {
        match netns::setup(ns_name, &ctx.bridge, ip, ctx.cidr.prefix, ctx.node_ip).await {
            Ok(()) => break,
            Err(e) => {
                attempt += 1;
                let msg = format!("network setup failed: {e:#}");
                tracing::warn!(pod = %pod_key(pod), "{msg}");
                for i in 0..shared.run.lock().map(|r| r.containers.len()).unwrap_or(0) {
                    shared.container(i, |c| c.state = waiting("ContainerCreating", &msg));
                }
                if attempt >= 5 || stop.borrow().is_some() {
                    bail!(msg);
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
    shared.update(|r| {
        r.pod_ip = Some(ip.to_string());
        r.network_ready = true;
    });
    let facts = PodFacts {
        pod_ip: ip.to_string(),
        host_ip: ctx.node_ip.to_string(),
        node_name: ctx.node_name.clone(),
    };
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    // Volumes: retried while a referenced object is missing.
    let mut tokens = TokenCache::default();
    let volumes = loop {
        match materialize_volumes(ctx, pod, &facts, &mut tokens).await {
            Ok(v) => break v,
            Err(e) => {
                let msg = format!("{e:#}");
                for i in 0..shared.run.lock().map(|r| r.containers.len()).unwrap_or(0) {
                    shared.container(i, |c| c.state = waiting("CreateContainerConfigError", &msg));
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
                if stop.borrow().is_some() {
                    bail!("stopped while waiting for volumes: {msg}");
                }
            }
        }
    };
    let mut tasks = vec![tokio::spawn(refresh_volumes(
        ctx.clone(),
        pod.clone(),
        facts.clone(),
        tokens,
        stop.clone(),
    ))];
    let log_dir = logs::pod_log_dir(&ctx.state_dir, &namespace, &name, &uid);
    tokio::fs::create_dir_all(&log_dir)
        .await
        .with_context(|| format!("creating {}", log_dir.display()))?;
    let spec = pod.spec.as_ref().context("pod has no spec")?;
    let hostname = pod_hostname(pod);
    let etc_files = write_etc_files(ctx, pod, &hostname, &ip.to_string())?;
    let helper = pod_exec_helper()?;
    let service_env = kubernetes_service_env(ctx).await;
    let policy = spec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".to_string());
    for (idx, c) in spec.containers.iter().enumerate() {
        let image = c.image.clone().unwrap_or_default();
        let Some(entry) = ctx.images.lookup(&image) else {
            let msg = format!(
                "image {image:?} is not in the node agent's image map ({}); no local binary plays it",
                ctx.image_map_path.display()
            );
            tracing::warn!(pod = %pod_key(pod), "{msg}");
            shared.container(idx, |s| s.state = waiting("ErrImagePull", &msg));
            if let Err(e) = post_event(
                ctx,
                pod,
                "Failed",
                &format!("Failed to pull image {image:?}: {msg}"),
            )
            .await
            {
                tracing::debug!("event: {e:#}");
            }
            continue;
        };
        let mut specs = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            match volumes.get(&m.name) {
                Some(dir) => specs.push(mountns::VolumeMountSpec {
                    volume_dir: dir,
                    mount_path: &m.mount_path,
                    sub_path: m.sub_path.as_deref().unwrap_or(""),
                    read_only: m.read_only.unwrap_or(false),
                }),
                None => {
                    tracing::warn!(pod = %pod_key(pod), "volumeMount {:?} names no volume", m.name)
                }
            }
        }
        let plan_file = pod_dir(ctx, &uid).join(format!("{}.mounts.json", c.name));
        let plan =
            mountns::build_plan(Some(hostname.clone()), &specs, &etc_files).and_then(|plan| {
                let text = serde_json::to_vec_pretty(&plan).context("encoding the mount plan")?;
                std::fs::write(&plan_file, text)
                    .with_context(|| format!("writing {}", plan_file.display()))
            });
        if let Err(e) = plan {
            shared.container(idx, |s| {
                s.state = waiting("CreateContainerConfigError", &format!("{e:#}"))
            });
            continue;
        }
        let env = match container_env(ctx, pod, c, &facts, &service_env).await {
            Ok(env) => env,
            Err(e) => {
                shared.container(idx, |s| {
                    s.state = waiting("CreateContainerConfigError", &format!("{e:#}"))
                });
                continue;
            }
        };
        let command = c.command.clone().unwrap_or_default();
        let args: Vec<String> =
            process_args(entry, &command, c.args.as_deref().unwrap_or_default())
                .iter()
                .map(|a| spec::expand(a, &env))
                .collect();
        let run = ContainerRun {
            idx,
            ns: ns_name.to_string(),
            binary: entry.binary.clone(),
            helper: helper.clone(),
            plan_file,
            args,
            env,
            workdir: pod_dir(ctx, &uid),
            log_file: log_dir.join(format!("{}.log", c.name)),
            pid_file: ctx
                .state_dir
                .join("pids")
                .join(format!("{uid}_{}.pid", c.name)),
            policy: policy.clone(),
            probe: c.readiness_probe.clone(),
            liveness: c.liveness_probe.clone(),
            pre_stop: c
                .lifecycle
                .as_ref()
                .and_then(|l| l.pre_stop.as_ref())
                .and_then(|h| h.exec.as_ref())
                .and_then(|e| e.command.clone())
                .filter(|c| !c.is_empty()),
            grace: Duration::from_secs(
                u64::try_from(spec.termination_grace_period_seconds.unwrap_or(30)).unwrap_or(0),
            )
            .min(MAX_GRACE),
            ports: c
                .ports
                .iter()
                .flatten()
                .map(|p| (p.name.clone().unwrap_or_default(), p.container_port))
                .collect(),
            ip,
        };
        tasks.push(tokio::spawn(run_container(
            run,
            shared.clone(),
            stop.clone(),
        )));
    }
    Ok(tasks)
}

/// The cluster's DNS domain (the search path of pod resolv.conf files).
const CLUSTER_DOMAIN: &str = "cluster.local";

/// The pod's hostname: `spec.hostname` or its name, at most 63 bytes.
fn pod_hostname(pod: &Pod) -> String {
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    let mut end = name.len().min(63);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].trim_end_matches(['-', '.']).to_string()
}

/// Writes the pod's `/etc/hosts` and, unless `dnsPolicy` is `Default`, its
/// `/etc/resolv.conf`; returns (host file, path in the container) pairs.
fn write_etc_files(
    ctx: &Ctx,
    pod: &Pod,
    hostname: &str,
    pod_ip: &str,
) -> Result<Vec<(PathBuf, PathBuf)>> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let dir = pod_dir(ctx, &uid).join("etc");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut out = Vec::new();
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, podfiles::etc_hosts(pod_ip, hostname))
        .with_context(|| format!("writing {}", hosts.display()))?;
    out.push((hosts, PathBuf::from("/etc/hosts")));
    let spec = pod.spec.as_ref();
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let resolv = match policy {
        // The node's own resolver configuration, as for the kubelet.
        "Default" => None,
        "None" => {
            let cfg = spec.and_then(|s| s.dns_config.as_ref());
            let mut text = String::new();
            for n in cfg
                .and_then(|c| c.nameservers.as_ref())
                .into_iter()
                .flatten()
            {
                text.push_str(&format!("nameserver {n}\n"));
            }
            let search: Vec<&str> = cfg
                .and_then(|c| c.searches.as_ref())
                .into_iter()
                .flatten()
                .map(String::as_str)
                .collect();
            if !search.is_empty() {
                text.push_str(&format!("search {}\n", search.join(" ")));
            }
            for o in cfg.and_then(|c| c.options.as_ref()).into_iter().flatten() {
                match &o.value {
                    Some(v) => text.push_str(&format!(
                        "options {}:{v}\n",
                        o.name.as_deref().unwrap_or("")
                    )),
                    None => {
                        text.push_str(&format!("options {}\n", o.name.as_deref().unwrap_or("")))
                    }
                }
            }
            Some(text)
        }
        _ => Some(podfiles::resolv_conf(
            &ctx.node_ip.to_string(),
            ns,
            CLUSTER_DOMAIN,
        )),
    };
    if let Some(text) = resolv {
        let path = dir.join("resolv.conf");
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        out.push((path, PathBuf::from("/etc/resolv.conf")));
    }
    Ok(out)
}

/// `gatewright-pod-exec`, built next to the agent's own binary.
fn pod_exec_helper() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the agent's binary")?;
    let helper = exe.with_file_name("gatewright-pod-exec");
    if !helper.is_file() {
        bail!(
            "{} is missing (cargo build -p gatewright-node-agent builds it)",
            helper.display()
        );
    }
    Ok(helper)
}

/// The variables the `default/kubernetes` Service gives every pod
/// (`KUBERNETES_SERVICE_HOST`, ...); empty, with a warning, if it is absent.
async fn kubernetes_service_env(ctx: &Ctx) -> Vec<(String, String)> {
    let svc = match Api::<Service>::namespaced(ctx.client.clone(), "default")
        .get_opt("kubernetes")
        .await
    {
        Ok(Some(svc)) => svc,
        Ok(None) => {
            tracing::warn!("no default/kubernetes Service: pods get no KUBERNETES_SERVICE_HOST");
            return Vec::new();
        }
        Err(e) => {
            tracing::warn!("getting default/kubernetes Service: {e:#}");
            return Vec::new();
        }
    };
    let Some(spec) = svc.spec else {
        return Vec::new();
    };
    let Some(ip) = spec.cluster_ip.filter(|ip| !ip.is_empty() && ip != "None") else {
        return Vec::new();
    };
    let ports: Vec<(String, i32, String)> = spec
        .ports
        .iter()
        .flatten()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.port,
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            )
        })
        .collect();
    podfiles::service_env("kubernetes", &ip, &ports)
}

async fn post_event(ctx: &Ctx, pod: &Pod, reason: &str, message: &str) -> Result<()> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let ev = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}.")),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name),
            namespace: Some(ns.clone()),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        },
        reason: Some(reason.into()),
        message: Some(message.into()),
        type_: Some("Warning".into()),
        count: Some(1),
        first_timestamp: Some(now()),
        last_timestamp: Some(now()),
        source: Some(EventSource {
            component: Some("kubelet".into()),
            host: Some(ctx.node_name.clone()),
        }),
        ..Default::default()
    };
    Api::<Event>::namespaced(ctx.client.clone(), &ns)
        .create(&PostParams::default(), &ev)
        .await
        .context("creating event")?;
    Ok(())
}

/// Fetches the data of a Secret or ConfigMap; None if missing.
async fn object_data(
    ctx: &Ctx,
    ns: &str,
    kind: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>> {
    if kind == "Secret" {
        let s = Api::<Secret>::namespaced(ctx.client.clone(), ns)
            .get_opt(name)
            .await
            .with_context(|| format!("getting Secret {ns}/{name}"))?;
        Ok(s.map(|s| spec::secret_bytes(s.data.as_ref(), s.string_data.as_ref())))
    } else {
        let c = Api::<ConfigMap>::namespaced(ctx.client.clone(), ns)
            .get_opt(name)
            .await
            .with_context(|| format!("getting ConfigMap {ns}/{name}"))?;
        Ok(c.map(|c| spec::configmap_bytes(c.data.as_ref(), c.binary_data.as_ref())))
    }
}

/// What a volume is on the host.
enum VolumeContent {
    /// Files the agent writes atomically (Secret, ConfigMap, downwardAPI, projected).
    Files(Vec<(PathBuf, Vec<u8>)>),
    /// A host folder used as is.
    HostPath(PathBuf),
    /// A folder that starts empty.
    EmptyDir,
}

/// Service-account tokens written into projected volumes, by
/// `<volume>/<path>`: the token, when it was issued, how long it lives.
#[derive(Default)]
struct TokenCache(HashMap<String, (String, Instant, Duration)>);

/// Gets a token for the pod's ServiceAccount bound to the pod (TokenRequest
/// API); returns it with its lifetime.
async fn request_token(
    ctx: &Ctx,
    pod: &Pod,
    audience: &str,
    expiration: Option<i64>,
) -> Result<(String, Duration)> {
    let (ns, name) = namespace_and_name(pod)?;
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string());
    // The API server refuses less than 10 minutes.
    let asked = expiration.unwrap_or(3600).max(600);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(if audience.is_empty() {
                Vec::new()
            } else {
                vec![audience.to_string()]
            }),
            expiration_seconds: Some(asked),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(name.to_string()),
                uid: pod.metadata.uid.clone(),
            }),
        }),
        ..Default::default()
    };
    let answer = Api::<ServiceAccount>::namespaced(ctx.client.clone(), ns)
        .create_token_request(&sa, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token for ServiceAccount {ns}/{sa}"))?;
    let status = answer.status.context("TokenRequest answer has no status")?;
    // The server may grant longer than asked (extended tokens): renew on
    // the schedule that was asked for.
    let asked = Duration::from_secs(u64::try_from(asked).unwrap_or(3600));
    let token = status.token.context("TokenRequest answer has no token")?;
    let expires = status
        .expiration_timestamp
        .context("TokenRequest answer has no expiration")?;
    let granted = expires.0.duration_since(Timestamp::now());
    let lifetime = Duration::try_from(granted)
        .map(|g| g.min(asked))
        .unwrap_or(asked);
    Ok((token, lifetime))
}

/// The content of one volume, fetching what it refers to (and renewing
/// tokens that are due).
async fn volume_content(
    ctx: &Ctx,
    pod: &Pod,
    facts: &PodFacts,
    vol: &Volume,
    tokens: &mut TokenCache,
) -> Result<VolumeContent> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    if let Some(hp) = &vol.host_path {
        return Ok(VolumeContent::HostPath(PathBuf::from(&hp.path)));
    }
    let mut files = Vec::new();
    // Secret and ConfigMap volumes project the same way.
    let object_source = match (&vol.secret, &vol.config_map) {
        (Some(s), _) => Some((
            "Secret",
            s.secret_name.clone().unwrap_or_default(),
            s.optional.unwrap_or(false),
            s.items.as_deref(),
        )),
        (None, Some(c)) => Some((
            "ConfigMap",
            c.name.clone(),
            c.optional.unwrap_or(false),
            c.items.as_deref(),
        )),
        (None, None) => None,
    };
    if let Some((kind, name, optional, items)) = object_source {
        match object_data(ctx, &ns, kind, &name).await? {
            Some(data) => {
                files = spec::project_items(&data, items, optional)
                    .with_context(|| format!("volume {:?}: {kind} {name:?}", vol.name))?
            }
            None if optional => {}
            None => bail!("volume {:?}: {kind} {ns}/{name} not found", vol.name),
        }
    } else if let Some(d) = &vol.downward_api {
        for item in d.items.iter().flatten() {
            if let Some(f) = &item.field_ref {
                let v = spec::resolve_field_ref(pod, facts, &f.field_path)?;
                files.push((spec::safe_relative(&item.path)?, v.into_bytes()));
            }
        }
    } else if let Some(p) = &vol.projected {
        for src in p.sources.iter().flatten() {
            if let Some(t) = &src.service_account_token {
                let key = format!("{}/{}", vol.name, t.path);
                let due = match tokens.0.get(&key) {
                    Some((_, issued, life)) => {
                        podfiles::token_needs_refresh(issued.elapsed(), *life)
                    }
                    None => true,
                };
                if due {
                    let (token, life) = request_token(
                        ctx,
                        pod,
                        t.audience.as_deref().unwrap_or(""),
                        t.expiration_seconds,
                    )
                    .await
                    .with_context(|| format!("volume {:?}", vol.name))?;
                    tracing::info!(pod = %pod_key(pod), volume = %vol.name, "service-account token issued, valid {}s", life.as_secs());
                    tokens.0.insert(key.clone(), (token, Instant::now(), life));
                }
                if let Some((token, _, _)) = tokens.0.get(&key) {
                    files.push((spec::safe_relative(&t.path)?, token.clone().into_bytes()));
                }
                continue;
            }
            let (kind, name, items, optional) = if let Some(s) = &src.secret {
                ("Secret", s.name.clone(), s.items.as_deref(), s.optional)
            } else if let Some(c) = &src.config_map {
                ("ConfigMap", c.name.clone(), c.items.as_deref(), c.optional)
            } else {
                if let Some(d) = &src.downward_api {
                    for item in d.items.iter().flatten() {
                        if let Some(f) = &item.field_ref {
                            let v = spec::resolve_field_ref(pod, facts, &f.field_path)?;
                            files.push((spec::safe_relative(&item.path)?, v.into_bytes()));
                        }
                    }
                }
                continue;
            };
            let optional = optional.unwrap_or(false);
            match object_data(ctx, &ns, kind, &name).await? {
                Some(data) => files.extend(
                    spec::project_items(&data, items, optional)
                        .with_context(|| format!("volume {:?}: {kind} {name:?}", vol.name))?,
                ),
                None if optional => {}
                None => bail!("volume {:?}: {kind} {ns}/{name} not found", vol.name),
            }
        }
    } else {
        // emptyDir, and kinds we do not know: an empty folder.
        return Ok(VolumeContent::EmptyDir);
    }
    Ok(VolumeContent::Files(files))
}

/// Writes every volume of the pod under its folder; returns name → folder.
async fn materialize_volumes(
    ctx: &Ctx,
    pod: &Pod,
    facts: &PodFacts,
    tokens: &mut TokenCache,
) -> Result<HashMap<String, PathBuf>> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let base = pod_dir(ctx, &uid).join("volumes");
    let mut out = HashMap::new();
    for vol in pod_volumes(pod) {
        let dir = base.join(&vol.name);
        match volume_content(ctx, pod, facts, vol, tokens).await? {
            VolumeContent::HostPath(p) => {
                out.insert(vol.name.clone(), p);
                continue;
            }
            VolumeContent::EmptyDir => {
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            VolumeContent::Files(files) => {
                podfiles::atomic_write(&dir, &files)
                    .with_context(|| format!("writing volume {:?}", vol.name))?;
            }
        }
        out.insert(vol.name.clone(), dir);
    }
    Ok(out)
}

fn pod_volumes(pod: &Pod) -> impl Iterator<Item = &Volume> {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
}

/// How often Secret/ConfigMap/projected volumes are compared with the API.
const VOLUME_REFRESH: Duration = Duration::from_secs(5);

/// Keeps the pod's Secret, ConfigMap, downwardAPI and projected volumes up
/// to date (a changed object shows as a new `..data` target) and renews
/// service-account tokens, until the pod stops.
async fn refresh_volumes(
    ctx: Arc<Ctx>,
    pod: Pod,
    facts: PodFacts,
    mut tokens: TokenCache,
    mut stop: watch::Receiver<Option<Stop>>,
) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let base = pod_dir(&ctx, &uid).join("volumes");
    loop {
        tokio::select! {
            _ = tokio::time::sleep(VOLUME_REFRESH) => {}
            _ = wait_stop(&mut stop) => return,
        }
        for vol in pod_volumes(&pod) {
            match volume_content(&ctx, &pod, &facts, vol, &mut tokens).await {
                Ok(VolumeContent::Files(files)) => {
                    match podfiles::atomic_write(&base.join(&vol.name), &files) {
                        Ok(true) => {
                            tracing::info!(pod = %pod_key(&pod), volume = %vol.name, "volume updated")
                        }
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(pod = %pod_key(&pod), volume = %vol.name, "updating volume: {e:#}")
                        }
                    }
                }
                Ok(_) => {}
                // Keep the last content, as the kubelet does.
                Err(e) => {
                    tracing::debug!(pod = %pod_key(&pod), volume = %vol.name, "refreshing volume: {e:#}")
                }
            }
        }
    }
}

/// The container's environment, in order, with references resolved.
async fn container_env(
    ctx: &Ctx,
    pod: &Pod,
    c: &Container,
    facts: &PodFacts,
    service_env: &[(String, String)],
) -> Result<Vec<(String, String)>> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOSTNAME".into(), pod_hostname(pod)),
    ];
    // Before the container's own variables, which may use or override them.
    env.extend(service_env.iter().cloned());
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (kind, name, optional) = if let Some(s) = &from.secret_ref {
            ("Secret", s.name.clone(), s.optional.unwrap_or(false))
        } else if let Some(m) = &from.config_map_ref {
            ("ConfigMap", m.name.clone(), m.optional.unwrap_or(false))
        } else {
            continue;
        };
        match object_data(ctx, &ns, kind, &name).await? {
            Some(data) => env.extend(data.into_iter().map(|(k, v)| {
                (
                    format!("{prefix}{k}"),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })),
            None if optional => {}
            None => bail!("envFrom: {kind} {ns}/{name} not found"),
        }
    }
    for var in c.env.iter().flatten() {
        let value = if let Some(v) = &var.value {
            spec::expand(v, &env)
        } else if let Some(from) = &var.value_from {
            if let Some(f) = &from.field_ref {
                spec::resolve_field_ref(pod, facts, &f.field_path)
                    .with_context(|| format!("env {}", var.name))?
            } else if let Some(s) = &from.secret_key_ref {
                key_ref(
                    ctx,
                    &ns,
                    "Secret",
                    &s.name,
                    &s.key,
                    s.optional.unwrap_or(false),
                )
                .await?
            } else if let Some(m) = &from.config_map_key_ref {
                key_ref(
                    ctx,
                    &ns,
                    "ConfigMap",
                    &m.name,
                    &m.key,
                    m.optional.unwrap_or(false),
                )
                .await?
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        env.retain(|(k, _)| k != &var.name);
        env.push((var.name.clone(), value));
    }
    Ok(env)
}

async fn key_ref(
    ctx: &Ctx,
    ns: &str,
    kind: &str,
    name: &str,
    key: &str,
    optional: bool,
) -> Result<String> {
    match object_data(ctx, ns, kind, name).await? {
        Some(data) => match data.get(key) {
            Some(v) => Ok(String::from_utf8_lossy(v).into_owned()),
            None if optional => Ok(String::new()),
            None => bail!("key {key:?} not found in {kind} {ns}/{name}"),
        },
        None if optional => Ok(String::new()),
        None => bail!("{kind} {ns}/{name} not found"),
    }
}

struct ContainerRun {
    idx: usize,
    ns: String,
    binary: PathBuf,
    /// `gatewright-pod-exec`, which sets up the mounts and execs `binary`.
    helper: PathBuf,
    /// The container's mount plan (JSON) for the helper.
    plan_file: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    workdir: PathBuf,
    log_file: PathBuf,
    pid_file: PathBuf,
    policy: String,
    probe: Option<Probe>,
    liveness: Option<Probe>,
    /// `lifecycle.preStop.exec.command`.
    pre_stop: Option<Vec<String>>,
    /// The pod's termination grace period (for liveness restarts).
    grace: Duration,
    ports: Vec<(String, i32)>,
    ip: Ipv4Addr,
}

fn spawn_process(
    run: &ContainerRun,
    log: &Arc<tokio::sync::Mutex<tokio::fs::File>>,
) -> Result<Child> {
    std::fs::create_dir_all(&run.workdir)
        .with_context(|| format!("creating {}", run.workdir.display()))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &run.ns])
        .arg(&run.helper)
        .arg(&run.plan_file)
        .arg("--")
        .arg(&run.binary)
        .args(&run.args)
        .env_clear()
        .envs(run.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&run.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: the closure only calls prctl(2), which is async-signal-safe.
    // The process dies with the agent's thread, so a killed agent leaves no
    // orphan behind (the netns then disappears with the agent's mounts).
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", run.binary.display()))?;
    if let Some(pid) = child.id() {
        let record = format!("{pid}\n{}\n", run.binary.display());
        if let Err(e) = std::fs::create_dir_all(run.pid_file.parent().unwrap_or(&run.workdir))
            .and_then(|()| std::fs::write(&run.pid_file, record))
        {
            tracing::warn!("writing {}: {e}", run.pid_file.display());
        }
    }
    if let Some(out) = child.stdout.take() {
        let log = log.clone();
        tokio::spawn(async move {
            if let Err(e) = logs::pump(out, "stdout", log).await {
                tracing::debug!("{e:#}");
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        let log = log.clone();
        tokio::spawn(async move {
            if let Err(e) = logs::pump(err, "stderr", log).await {
                tracing::debug!("{e:#}");
            }
        });
    }
    Ok(child)
}

fn signal_group(child: &Child, sig: i32) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) on the process group we created; no memory involved.
        unsafe { libc::kill(-pid, sig) };
    }
}

/// Runs one container until stopped, restarting it per the restart policy.
async fn run_container(
    run: ContainerRun,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<Option<Stop>>,
) {
    let idx = run.idx;
    let log = match tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&run.log_file)
        .await
    {
        Ok(f) => Arc::new(tokio::sync::Mutex::new(f)),
        Err(e) => {
            let msg = format!("opening {}: {e}", run.log_file.display());
            shared.container(idx, |c| c.state = waiting("RunContainerError", &msg));
            return;
        }
    };
    let mut backoff = Duration::from_secs(1);
    loop {
        if stop.borrow().is_some() {
            return;
        }
        let started_at = Timestamp::now();
        let began = Instant::now();
        let (code, reason, message) = match spawn_process(&run, &log) {
            Err(e) => (128, "StartError".to_string(), format!("{e:#}")),
            Ok(mut child) => {
                shared.container(idx, |c| {
                    c.started = true;
                    c.ready = run.probe.is_none();
                    c.state = ContainerState {
                        running: Some(ContainerStateRunning {
                            started_at: Some(Time(started_at)),
                        }),
                        ..Default::default()
                    };
                });
                let prober = run.probe.clone().map(|p| {
                    let shared = shared.clone();
                    let (ip, ports) = (run.ip, run.ports.clone());
                    tokio::spawn(async move { probe_loop(p, ip, ports, shared, idx).await })
                });
                let liveness = run.liveness.clone();
                let (ip, ports) = (run.ip, run.ports.clone());
                let live_failed = async move {
                    match liveness {
                        Some(p) => liveness_failed(p, ip, ports).await,
                        None => std::future::pending::<()>().await,
                    }
                };
                let status = tokio::select! {
                    s = child.wait() => s.ok(),
                    _ = live_failed => {
                        tracing::info!(container = %run.log_file.display(), "liveness probe failed; restarting the container");
                        terminate(&mut child, run.grace).await
                    }
                    _ = wait_stop(&mut stop) => {
                        let stop_reason = *stop.borrow();
                        let grace = match stop_reason {
                            Some(Stop::Delete(g)) => g,
                            // cluster.sh gives the agent 5 s before SIGKILL.
                            _ => Duration::from_secs(2),
                        };
                        let started = Instant::now();
                        if let (Some(Stop::Delete(_)), Some(hook)) = (stop_reason, &run.pre_stop) {
                            run_pre_stop(&run, &child, hook, grace).await;
                        }
                        // As the kubelet does: at least 2 s after the hook.
                        let left = grace
                            .saturating_sub(started.elapsed())
                            .max(Duration::from_secs(2));
                        terminate(&mut child, left).await
                    }
                };
                if let Some(p) = prober {
                    p.abort();
                }
                let _ = std::fs::remove_file(&run.pid_file);
                let code = status
                    .map(|s| {
                        use std::os::unix::process::ExitStatusExt;
                        s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
                    })
                    .unwrap_or(137);
                let reason = if code == 0 { "Completed" } else { "Error" };
                (code, reason.to_string(), String::new())
            }
        };
        let terminated = ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                reason: Some(reason.clone()),
                message: (!message.is_empty()).then(|| message.clone()),
                started_at: Some(Time(started_at)),
                finished_at: Some(now()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let stopping = stop.borrow().is_some();
        let restart = !stopping
            && match run.policy.as_str() {
                "Never" => false,
                "OnFailure" => code != 0,
                _ => true,
            };
        if !restart {
            shared.container(idx, |c| {
                c.ready = false;
                c.state = terminated;
                c.done = true;
            });
            return;
        }
        backoff = if began.elapsed() > Duration::from_secs(10) {
            Duration::from_secs(1)
        } else {
            (backoff * 2).min(Duration::from_secs(30))
        };
        tracing::info!(container = %run.log_file.display(), code, "container exited; restarting in {backoff:?}");
        let msg = format!(
            "back-off {}s restarting failed container",
            backoff.as_secs()
        );
        shared.container(idx, |c| {
            c.ready = false;
            c.restarts += 1;
            c.last = Some(terminated);
            c.state = waiting("CrashLoopBackOff", &msg);
        });
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = wait_stop(&mut stop) => return,
        }
    }
}

/// SIGTERM to the container's process group, SIGKILL after `grace`.
async fn terminate(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    signal_group(child, libc::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(s) => s.ok(),
        Err(_) => {
            signal_group(child, libc::SIGKILL);
            child.wait().await.ok()
        }
    }
}

/// Runs a `preStop` exec hook as a host command inside the container's
/// network and mount namespaces (so it sees the pod's loopback and the
/// volumes at their paths), bounded by `grace`. Failures are logged only.
async fn run_pre_stop(run: &ContainerRun, child: &Child, hook: &[String], grace: Duration) {
    let Some(pid) = child.id() else {
        return;
    };
    let mnt = match std::fs::File::open(format!("/proc/{pid}/ns/mnt")) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("preStop hook: the container's mount namespace: {e}");
            return;
        }
    };
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &run.ns])
        .args(hook)
        .env_clear()
        .envs(run.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let fd = std::os::unix::io::AsRawFd::as_raw_fd(&mnt);
    // SAFETY: setns(2) and prctl(2) only, on a descriptor that stays open
    // until spawn returns. `ip netns exec` then copies this mount namespace.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let out = match cmd.spawn() {
        Ok(c) => tokio::time::timeout(grace, c.wait_with_output()).await,
        Err(e) => {
            tracing::warn!(container = %run.log_file.display(), "preStop hook did not start: {e}");
            return;
        }
    };
    drop(mnt);
    match out {
        Ok(Ok(o)) if o.status.success() => {
            tracing::info!(container = %run.log_file.display(), "preStop hook done in {:?}", started.elapsed())
        }
        Ok(Ok(o)) => tracing::warn!(
            container = %run.log_file.display(),
            "preStop hook failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Ok(Err(e)) => tracing::warn!("preStop hook: {e}"),
        Err(_) => {
            tracing::warn!(container = %run.log_file.display(), "preStop hook outlived the grace period; killed")
        }
    }
}

/// Returns when the liveness probe has failed `failureThreshold` times in a
/// row (after its initial delay); never returns while it passes.
async fn liveness_failed(p: Probe, ip: Ipv4Addr, ports: Vec<(String, i32)>) {
    let secs = |v: Option<i32>, d: u64| {
        Duration::from_secs(v.and_then(|v| u64::try_from(v).ok()).unwrap_or(d))
    };
    tokio::time::sleep(secs(p.initial_delay_seconds, 0)).await;
    let period = secs(p.period_seconds, 10).max(Duration::from_secs(1));
    let timeout = secs(p.timeout_seconds, 1).max(Duration::from_secs(1));
    let needed = p.failure_threshold.unwrap_or(3).max(1);
    let mut failures = 0;
    loop {
        let ok = matches!(
            tokio::time::timeout(timeout, probe_once(&p, ip, &ports)).await,
            Ok(Ok(true))
        );
        failures = if ok { 0 } else { failures + 1 };
        if failures >= needed {
            return;
        }
        tokio::time::sleep(period).await;
    }
}

async fn wait_stop(stop: &mut watch::Receiver<Option<Stop>>) {
    while stop.borrow().is_none() {
        if stop.changed().await.is_err() {
            // The manager is gone: behave as if shut down.
            std::future::pending::<()>().await;
        }
    }
}

/// Probes readiness until aborted, updating the container's ready flag.
async fn probe_loop(
    p: Probe,
    ip: Ipv4Addr,
    ports: Vec<(String, i32)>,
    shared: Arc<Shared>,
    idx: usize,
) {
    let secs = |v: Option<i32>, d: u64| {
        Duration::from_secs(v.and_then(|v| u64::try_from(v).ok()).unwrap_or(d))
    };
    tokio::time::sleep(secs(p.initial_delay_seconds, 0)).await;
    let period = secs(p.period_seconds, 10).max(Duration::from_secs(1));
    let timeout = secs(p.timeout_seconds, 1).max(Duration::from_secs(1));
    let success_needed = p.success_threshold.unwrap_or(1).max(1);
    let failure_needed = p.failure_threshold.unwrap_or(3).max(1);
    let (mut ok_run, mut fail_run, mut ready) = (0, 0, false);
    loop {
        let ok = matches!(
            tokio::time::timeout(timeout, probe_once(&p, ip, &ports)).await,
            Ok(Ok(true))
        );
        if ok {
            ok_run += 1;
            fail_run = 0;
        } else {
            fail_run += 1;
            ok_run = 0;
        }
        if !ready && ok_run >= success_needed {
            ready = true;
            shared.container(idx, |c| c.ready = true);
        } else if ready && fail_run >= failure_needed {
            ready = false;
            shared.container(idx, |c| c.ready = false);
        }
        // Until ready, probe every second so pods become ready quickly.
        tokio::time::sleep(if ready {
            period
        } else {
            Duration::from_secs(1)
        })
        .await;
    }
}

fn resolve_port(port: &IntOrString, ports: &[(String, i32)]) -> Result<u16> {
    let n = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => ports
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| *p)
            .with_context(|| format!("named port {name:?} not found"))?,
    };
    u16::try_from(n).with_context(|| format!("port {n} out of range"))
}

async fn probe_once(p: &Probe, ip: Ipv4Addr, ports: &[(String, i32)]) -> Result<bool> {
    if let Some(h) = &p.http_get {
        let port = resolve_port(&h.port, ports)?;
        let mut s = tokio::net::TcpStream::connect((ip, port))
            .await
            .context("connecting")?;
        let path = h.path.as_deref().unwrap_or("/");
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: kube-probe/1.35\r\nConnection: close\r\n"
        );
        for hdr in h.http_headers.iter().flatten() {
            req.push_str(&format!("{}: {}\r\n", hdr.name, hdr.value));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.context("sending probe")?;
        let mut buf = vec![0u8; 64];
        let n = s.read(&mut buf).await.context("reading probe answer")?;
        let head = String::from_utf8_lossy(&buf[..n]);
        let code: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        return Ok((200..400).contains(&code));
    }
    if let Some(t) = &p.tcp_socket {
        let port = resolve_port(&t.port, ports)?;
        return Ok(tokio::net::TcpStream::connect((ip, port)).await.is_ok());
    }
    // exec and grpc probes are not supported: treat as passing.
    Ok(true)
}

fn condition(kind: &str, ok: bool, since: &Time) -> PodCondition {
    PodCondition {
        type_: kind.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        last_transition_time: Some(since.clone()),
        ..Default::default()
    }
}

/// The pod status for the current run state.
fn build_status(node_ip: Ipv4Addr, run: &PodRun) -> PodStatus {
    let all_ready = !run.containers.is_empty() && run.containers.iter().all(|c| c.ready);
    let all_done = !run.containers.is_empty() && run.containers.iter().all(|c| c.done);
    let any_started = run.containers.iter().any(|c| c.started);
    let phase = if all_done {
        let ok = run.containers.iter().all(|c| {
            c.state
                .terminated
                .as_ref()
                .is_some_and(|t| t.exit_code == 0)
        });
        if ok { "Succeeded" } else { "Failed" }
    } else if any_started {
        "Running"
    } else {
        "Pending"
    };
    let since = Time(run.start_time);
    PodStatus {
        phase: Some(phase.to_string()),
        host_ip: Some(node_ip.to_string()),
        host_ips: Some(vec![HostIP {
            ip: node_ip.to_string(),
        }]),
        pod_ip: run.pod_ip.clone(),
        pod_ips: run.pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        start_time: Some(since.clone()),
        conditions: Some(vec![
            condition("PodReadyToStartContainers", run.network_ready, &since),
            condition("Initialized", true, &since),
            condition("Ready", all_ready, &since),
            condition("ContainersReady", all_ready, &since),
            condition("PodScheduled", true, &since),
        ]),
        container_statuses: Some(
            run.containers
                .iter()
                .map(|c| ContainerStatus {
                    name: c.name.clone(),
                    image: c.image.clone(),
                    image_id: String::new(),
                    container_id: c
                        .started
                        .then(|| format!("gatewright://{}-{}", c.name, c.restarts)),
                    ready: c.ready,
                    started: Some(c.started && c.state.running.is_some()),
                    restart_count: c.restarts,
                    state: Some(c.state.clone()),
                    last_state: c.last.clone(),
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    }
}

/// Writes the pod status whenever the run state changes.
async fn status_writer(ctx: Arc<Ctx>, pod: Pod, shared: Arc<Shared>) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api = Api::<Pod>::namespaced(ctx.client.clone(), &ns);
    let mut last: Option<serde_json::Value> = None;
    loop {
        let status = match shared.run.lock() {
            Ok(run) => build_status(ctx.node_ip, &run),
            Err(_) => return,
        };
        let value = match serde_json::to_value(&status) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("encoding pod status: {e}");
                return;
            }
        };
        // Compare without timestamps that change on every build.
        if last.as_ref() != Some(&value) {
            let patch = serde_json::json!({ "status": value });
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => last = Some(value),
                Err(kube::Error::Api(s)) if s.is_not_found() => return,
                Err(e) => {
                    tracing::warn!(pod = %format!("{ns}/{name}"), "writing status: {e:#}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        tokio::select! {
            _ = shared.changed.notified() => tokio::time::sleep(Duration::from_millis(50)).await,
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cstate(ready: bool, state: ContainerState, done: bool) -> CState {
        CState {
            name: "c".into(),
            image: "i".into(),
            ready,
            started: state.running.is_some() || state.terminated.is_some(),
            restarts: 0,
            state,
            last: None,
            done,
        }
    }

    fn run(containers: Vec<CState>) -> PodRun {
        PodRun {
            pod_ip: Some("10.244.0.2".into()),
            start_time: Timestamp::UNIX_EPOCH,
            network_ready: true,
            containers,
        }
    }

    fn cond(s: &PodStatus, kind: &str) -> String {
        s.conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == kind)
            .map(|c| c.status.clone())
            .unwrap_or_default()
    }

    fn terminated(code: i32) -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn phases_and_conditions() {
        let ip = Ipv4Addr::new(10, 244, 0, 1);
        let running = ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(Timestamp::UNIX_EPOCH)),
            }),
            ..Default::default()
        };
        let s = build_status(ip, &run(vec![cstate(true, running.clone(), false)]));
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s, "Ready"), "True");
        assert_eq!(
            s.pod_ips.as_ref().map(|v| v[0].ip.clone()).as_deref(),
            Some("10.244.0.2")
        );
        assert_eq!(s.host_ip.as_deref(), Some("10.244.0.1"));

        let s = build_status(ip, &run(vec![cstate(false, running, false)]));
        assert_eq!(cond(&s, "ContainersReady"), "False");

        let s = build_status(
            ip,
            &run(vec![cstate(false, waiting("ErrImagePull", "x"), false)]),
        );
        assert_eq!(s.phase.as_deref(), Some("Pending"));

        let s = build_status(ip, &run(vec![cstate(false, terminated(0), true)]));
        assert_eq!(s.phase.as_deref(), Some("Succeeded"));
        let s = build_status(
            ip,
            &run(vec![
                cstate(false, terminated(0), true),
                cstate(false, terminated(2), true),
            ]),
        );
        assert_eq!(s.phase.as_deref(), Some("Failed"));
    }

    #[test]
    fn ports_resolve_by_name_or_number() {
        let ports = vec![("http".to_string(), 3000)];
        assert_eq!(resolve_port(&IntOrString::Int(8080), &ports).unwrap(), 8080);
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &ports).unwrap(),
            3000
        );
        assert!(resolve_port(&IntOrString::String("grpc".into()), &ports).is_err());
        assert!(resolve_port(&IntOrString::Int(70000), &ports).is_err());
    }
}
