//! Host infrastructure: one supervised Envoy child process per Gateway, each
//! on a loopback address of its own, fed over ADS by this process.

use super::kubernetes::params::EnvoyParameters;
use super::kubernetes::{ProxyParametersSpec, resolve_parameters};
use super::{Learned, NotProgrammed};
use crate::source::Snapshot;
use crate::xds::group_of;
use anyhow::Context as _;
use gatewright_translator::api::gatewayclasses::GatewayClass;
use gatewright_translator::api::gateways::{Gateway, GatewayStatusAddresses};
use gatewright_translator::{Input, ObjectKey, Output};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The first address handed out to Gateways that request none.
const FIRST_ALLOCATED: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 1);
/// Restart back-off bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// An Envoy that ran this long is healthy again: its back-off resets.
const HEALTHY_RUN: Duration = Duration::from_secs(30);
/// How long Envoy gets to exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// How Envoys are started.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// The Envoy binary.
    pub envoy: PathBuf,
    /// Where bootstraps and logs go (a folder per Gateway).
    pub state_dir: PathBuf,
    /// The ADS server Envoys connect to.
    pub xds_address: SocketAddr,
    /// Envoy's `--log-level`.
    pub log_level: String,
    /// Envoy's `--concurrency`.
    pub concurrency: u32,
    /// How long listeners drain before an Envoy is stopped.
    pub drain: Duration,
}

/// What can be seen of one managed Envoy.
#[derive(Debug)]
pub struct EnvoyState {
    /// The Gateway's address; its listeners bind here.
    pub address: IpAddr,
    /// The options this Envoy was started with.
    pub options: EnvoyOptions,
    /// The process id, 0 when not running.
    pub pid: AtomicU32,
    /// Whether Envoy's admin `/ready` last answered LIVE.
    pub live: AtomicBool,
    /// How many times it was restarted after exiting on its own.
    pub restarts: AtomicU64,
    /// Envoy's admin address once known.
    pub admin: Mutex<Option<SocketAddr>>,
    /// Envoy's log file.
    pub log: PathBuf,
}

impl EnvoyState {
    /// Envoy's admin address, if it is running.
    pub fn admin_address(&self) -> Option<SocketAddr> {
        *self
            .admin
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

struct Managed {
    state: Arc<EnvoyState>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Envoy's own options for one Gateway: the host's defaults with the
/// `envoy` section of the Gateway's ProxyParameters laid over them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvoyOptions {
    /// `--log-level`.
    pub log_level: String,
    /// `--concurrency`.
    pub concurrency: u32,
    /// The bootstrap's downstream connection limit (a change restarts the
    /// Envoy: Envoy reads its bootstrap only at start).
    pub max_downstream_connections: u32,
}

impl EnvoyOptions {
    /// The options `params` give on a host whose defaults are `config`'s.
    /// Host infrastructure runs Envoy as a local process, so it can apply
    /// only the `envoy` section; `service` and `deployment` describe
    /// Kubernetes objects it never creates, and parameters that cannot be
    /// honoured are refused rather than dropped.
    pub fn for_host(
        config: &HostConfig,
        params: Option<&ProxyParametersSpec>,
    ) -> Result<Self, String> {
        let mut options = Self {
            log_level: config.log_level.clone(),
            concurrency: config.concurrency,
            max_downstream_connections: EnvoyParameters::max_downstream_connections(params),
        };
        let Some(params) = params else {
            return Ok(options);
        };
        let ignored: Vec<&str> = [
            ("spec.service", params.service.is_some()),
            ("spec.deployment", params.deployment.is_some()),
        ]
        .into_iter()
        .filter_map(|(field, set)| set.then_some(field))
        .collect();
        if !ignored.is_empty() {
            return Err(format!(
                "ProxyParameters {} set(s) Kubernetes objects, which host infrastructure \
                 does not create (it runs Envoy as a local process); only spec.envoy applies here",
                ignored.join(" and ")
            ));
        }
        if let Some(envoy) = &params.envoy {
            if let Some(level) = envoy.log_level {
                level.as_str().clone_into(&mut options.log_level);
            }
            if let Some(n) = envoy.concurrency {
                options.concurrency = n;
            }
        }
        Ok(options)
    }
}

/// The set of running Envoys.
pub struct Host {
    config: HostConfig,
    envoys: BTreeMap<ObjectKey, Managed>,
    /// The address of every Gateway of the last [`Host::plan`].
    planned: BTreeMap<ObjectKey, IpAddr>,
}

/// The address each Gateway asks for in `spec.addresses` (the first
/// IPAddress one), or none.
pub fn requested_addresses(input: &Input) -> BTreeMap<ObjectKey, Option<IpAddr>> {
    input
        .gateways
        .iter()
        .filter_map(|gw| {
            let key = ObjectKey::new(
                gw.metadata.namespace.clone().unwrap_or_default(),
                gw.metadata.name.clone()?,
            );
            let requested = gw.spec.addresses.iter().flatten().find_map(|a| {
                let is_ip = a.r#type.as_deref().is_none_or(|t| t == "IPAddress");
                a.value.as_deref().filter(|_| is_ip)?.parse::<IpAddr>().ok()
            });
            Some((key, requested))
        })
        .collect()
}

/// Gives each Gateway an address: the one it requests if any, else the one
/// it already has, else the lowest free one from 127.0.1.1 up.
pub fn assign_addresses(
    wanted: &BTreeMap<ObjectKey, Option<IpAddr>>,
    current: &BTreeMap<ObjectKey, IpAddr>,
) -> BTreeMap<ObjectKey, IpAddr> {
    let mut out = BTreeMap::new();
    let mut taken: BTreeSet<IpAddr> = wanted.values().flatten().copied().collect();
    for (key, requested) in wanted {
        if let Some(ip) = requested {
            out.insert(key.clone(), *ip);
        }
    }
    // Keep the address an unchanged Gateway already has, so that an
    // unrelated change never moves it.
    for (key, requested) in wanted {
        if requested.is_none()
            && let Some(ip) = current.get(key)
            && taken.insert(*ip)
        {
            out.insert(key.clone(), *ip);
        }
    }
    let mut next = u32::from(FIRST_ALLOCATED);
    for (key, requested) in wanted {
        if requested.is_some() || out.contains_key(key) {
            continue;
        }
        let ip = loop {
            let candidate = IpAddr::V4(Ipv4Addr::from(next));
            next = next.saturating_add(1);
            if taken.insert(candidate) {
                break candidate;
            }
        };
        out.insert(key.clone(), ip);
    }
    out
}

impl Host {
    /// No Envoys yet.
    pub fn new(config: HostConfig) -> Self {
        Self {
            config,
            envoys: BTreeMap::new(),
            planned: BTreeMap::new(),
        }
    }

    /// Decides the address of every Gateway of `input` (see
    /// [`assign_addresses`]; running Gateways keep theirs) and remembers it
    /// for [`Host::reconcile_output`].
    pub fn plan(&mut self, input: &Input) -> &BTreeMap<ObjectKey, IpAddr> {
        self.planned = assign_addresses(&requested_addresses(input), &self.addresses());
        &self.planned
    }

    /// Runs an Envoy, on its planned address and with the options of its
    /// ProxyParameters, for each Gateway `output` programs, and stops the
    /// others. Each such Gateway's address is what its status reports; a
    /// Gateway whose parameters cannot be honoured here runs no Envoy and
    /// says why.
    pub async fn reconcile_output(
        &mut self,
        snapshot: &Snapshot,
        output: &Output,
    ) -> BTreeMap<ObjectKey, Learned> {
        let gateways: BTreeMap<ObjectKey, &Gateway> = snapshot
            .input
            .gateways
            .iter()
            .map(|g| {
                let key = ObjectKey::new(
                    g.metadata.namespace.clone().unwrap_or_default(),
                    g.metadata.name.clone().unwrap_or_default(),
                );
                (key, g)
            })
            .collect();
        let classes: BTreeMap<&str, &GatewayClass> = snapshot
            .input
            .gateway_classes
            .iter()
            .filter_map(|c| Some((c.metadata.name.as_deref()?, c)))
            .collect();
        let mut learned = BTreeMap::new();
        let mut wanted: BTreeMap<ObjectKey, (IpAddr, EnvoyOptions)> = BTreeMap::new();
        for (key, ip) in &self.planned {
            let Some(gateway) = gateways
                .get(key)
                .filter(|_| output.gateways.contains_key(key))
            else {
                continue;
            };
            let options = classes
                .get(gateway.spec.gateway_class_name.as_str())
                .map_or(Ok(None), |class| {
                    resolve_parameters(&snapshot.proxy_parameters, class, gateway)
                })
                .and_then(|params| EnvoyOptions::for_host(&self.config, params.as_ref()));
            match options {
                Ok(options) => {
                    wanted.insert(key.clone(), (*ip, options));
                }
                Err(message) => {
                    tracing::warn!(gateway = %group_of(key), "not running Envoy: {message}");
                    learned.insert(
                        key.clone(),
                        Learned {
                            addresses: None,
                            not_programmed: Some((NotProgrammed::Invalid, message)),
                        },
                    );
                }
            }
        }
        self.reconcile(&wanted).await;
        for (key, (ip, _)) in wanted {
            let given = Learned {
                addresses: Some(vec![GatewayStatusAddresses {
                    r#type: Some("IPAddress".to_owned()),
                    value: ip.to_string(),
                }]),
                not_programmed: None,
            };
            learned.insert(key, given);
        }
        learned
    }

    /// The address of each running Gateway.
    pub fn addresses(&self) -> BTreeMap<ObjectKey, IpAddr> {
        self.envoys
            .iter()
            .map(|(k, m)| (k.clone(), m.state.address))
            .collect()
    }

    /// The state of each managed Envoy.
    pub fn states(&self) -> BTreeMap<ObjectKey, Arc<EnvoyState>> {
        self.envoys
            .iter()
            .map(|(k, m)| (k.clone(), Arc::clone(&m.state)))
            .collect()
    }

    /// Starts an Envoy for each Gateway in `wanted` that has none (or whose
    /// address or options changed), and stops those no longer wanted.
    pub async fn reconcile(&mut self, wanted: &BTreeMap<ObjectKey, (IpAddr, EnvoyOptions)>) {
        let stale: Vec<ObjectKey> = self
            .envoys
            .iter()
            .filter(|(k, m)| {
                wanted
                    .get(*k)
                    .is_none_or(|(ip, o)| *ip != m.state.address || *o != m.state.options)
            })
            .map(|(k, _)| k.clone())
            .collect();
        let (mut restarting, mut stopping) = (Vec::new(), Vec::new());
        for key in stale {
            if let Some(managed) = self.envoys.remove(&key) {
                tracing::info!(gateway = %group_of(&key), "stopping Envoy");
                let _ = managed.stop.send(true);
                if wanted.contains_key(&key) {
                    restarting.push(managed.task);
                } else {
                    stopping.push(managed.task);
                }
            }
        }
        // A restarted Envoy may bind the same address: its old one must be
        // gone first. Others start without waiting for unrelated drains.
        for task in restarting {
            let _ = task.await;
        }
        for (key, (address, options)) in wanted {
            if !self.envoys.contains_key(key) {
                match self.start(key, *address, options.clone()) {
                    Ok(managed) => {
                        self.envoys.insert(key.clone(), managed);
                    }
                    Err(e) => {
                        tracing::error!(gateway = %group_of(key), "cannot start Envoy: {e:#}")
                    }
                }
            }
        }
        for task in stopping {
            let _ = task.await;
        }
    }

    /// Drains and stops every Envoy, waiting for all of them to exit.
    pub async fn shutdown(&mut self) {
        let envoys = std::mem::take(&mut self.envoys);
        for managed in envoys.values() {
            let _ = managed.stop.send(true);
        }
        for (_, managed) in envoys {
            let _ = managed.task.await;
        }
    }

    fn start(
        &self,
        key: &ObjectKey,
        address: IpAddr,
        options: EnvoyOptions,
    ) -> anyhow::Result<Managed> {
        let dir = self
            .config
            .state_dir
            .join("envoy")
            .join(format!("{}_{}", key.namespace, key.name));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let bootstrap = dir.join("bootstrap.json");
        let body = serde_json::to_vec_pretty(&bootstrap_json(
            key,
            self.config.xds_address,
            options.max_downstream_connections,
        ))?;
        std::fs::write(&bootstrap, body)
            .with_context(|| format!("writing {}", bootstrap.display()))?;
        let state = Arc::new(EnvoyState {
            address,
            options,
            pid: AtomicU32::new(0),
            live: AtomicBool::new(false),
            restarts: AtomicU64::new(0),
            admin: Mutex::new(None),
            log: dir.join("envoy.log"),
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(supervise(
            self.config.clone(),
            group_of(key),
            dir,
            Arc::clone(&state),
            stop_rx,
        ));
        Ok(Managed { state, stop, task })
    }
}

/// The bootstrap of a Gateway's Envoy: its node group, a loopback admin on
/// a free port, delta ADS to this process, and the overload manager's
/// limit of `max_connections` downstream connections.
pub fn bootstrap_json(key: &ObjectKey, xds: SocketAddr, max_connections: u32) -> serde_json::Value {
    let group = group_of(key);
    json!({
        "node": {
            "id": format!("gatewright/{group}"),
            "cluster": group,
            "metadata": { gatewright_xds::GROUP_METADATA_KEY: group },
        },
        "admin": {
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } },
            // Readiness polling and draining must work at the limit.
            "ignore_global_conn_limit": true
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{ "envoy_grpc": { "cluster_name": "gatewright-xds" } }]
            },
            "cds_config": { "ads": {}, "resource_api_version": "V3" },
            "lds_config": { "ads": {}, "resource_api_version": "V3" }
        },
        // A host process has no memory limit of its own: no heap monitor.
        "overload_manager": super::kubernetes::bootstrap::overload_manager(max_connections, None),
        "static_resources": {
            "clusters": [{
                "name": "gatewright-xds",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": { "http2_protocol_options": {} }
                    }
                },
                "load_assignment": {
                    "cluster_name": "gatewright-xds",
                    "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "socket_address": {
                        "address": xds.ip().to_string(), "port_value": xds.port()
                    } } } }] }]
                }
            }]
        }
    })
}

async fn supervise(
    config: HostConfig,
    group: String,
    dir: PathBuf,
    state: Arc<EnvoyState>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        if *stop.borrow() {
            return;
        }
        let started = Instant::now();
        let mut child = match spawn_envoy(&config, &dir, &state) {
            Ok(child) => child,
            Err(e) => {
                tracing::error!(gateway = %group, "cannot start Envoy: {e:#}");
                if sleep_or_stop(backoff, &mut stop).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let pid = child.id();
        state.pid.store(pid, Ordering::Relaxed);
        tracing::info!(gateway = %group, pid, address = %state.address, "Envoy started");
        let admin_file = dir.join("admin-address");
        // The child is polled rather than awaited: it is a std child (see
        // `spawn_from_stable_thread`), and polling also drives readiness.
        let mut poll = tokio::time::interval(Duration::from_millis(100));
        let exited = loop {
            tokio::select! {
                _ = stop.changed() => break None,
                _ = poll.tick() => {
                    match child.try_wait() {
                        Ok(Some(status)) => break Some(Ok(status)),
                        Ok(None) => poll_ready(&state, &admin_file).await,
                        Err(e) => break Some(Err(e)),
                    }
                }
            }
        };
        state.live.store(false, Ordering::Relaxed);
        match exited {
            None => {
                stop_envoy(&mut child, &state, config.drain, &group).await;
                state.pid.store(0, Ordering::Relaxed);
                return;
            }
            Some(status) => {
                state.pid.store(0, Ordering::Relaxed);
                state.restarts.fetch_add(1, Ordering::Relaxed);
                let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                if started.elapsed() > HEALTHY_RUN {
                    backoff = BACKOFF_MIN;
                }
                tracing::warn!(gateway = %group, %status, log = %state.log.display(), "Envoy exited; restarting in {backoff:?}");
                if sleep_or_stop(backoff, &mut stop).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Sleeps, or returns true early if asked to stop.
async fn sleep_or_stop(duration: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(duration) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

fn spawn_envoy(
    config: &HostConfig,
    dir: &Path,
    state: &EnvoyState,
) -> anyhow::Result<std::process::Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&state.log)
        .with_context(|| format!("opening {}", state.log.display()))?;
    let log2 = log.try_clone().context("duplicating the log file handle")?;
    let admin_file = dir.join("admin-address");
    // A stale address from a previous run must not be mistaken for this one.
    let _ = std::fs::remove_file(&admin_file);
    *state
        .admin
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    let mut command = std::process::Command::new(&config.envoy);
    command
        .arg("--config-path")
        .arg(dir.join("bootstrap.json"))
        .arg("--admin-address-path")
        .arg(&admin_file)
        .arg("--disable-hot-restart")
        .arg("--concurrency")
        .arg(state.options.concurrency.to_string())
        .arg("--log-level")
        .arg(&state.options.log_level)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: prctl is async-signal-safe and only touches the child. It makes
    // the kernel stop Envoy if this process dies without cleaning up.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    spawn_from_stable_thread(command).with_context(|| format!("running {}", config.envoy.display()))
}

type SpawnRequest = (
    std::process::Command,
    std::sync::mpsc::SyncSender<std::io::Result<std::process::Child>>,
);

/// Starts `command` from a thread that lives as long as the process.
/// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits,
/// not the process, and the async runtime's threads come and go; forking
/// from one of those would stop Envoys at random.
fn spawn_from_stable_thread(command: std::process::Command) -> anyhow::Result<std::process::Child> {
    static SPAWNER: std::sync::OnceLock<Result<std::sync::mpsc::Sender<SpawnRequest>, String>> =
        std::sync::OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("envoy-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .map(|_| tx)
            .map_err(|e| format!("cannot start the process-spawning thread: {e}"))
    });
    let spawner = spawner.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
    let (reply, result) = std::sync::mpsc::sync_channel(1);
    spawner
        .send((command, reply))
        .map_err(|_| anyhow::anyhow!("the process-spawning thread is gone"))?;
    // fork+exec takes about a millisecond; blocking this thread that long is
    // cheaper than a round trip through the blocking pool.
    let child = result
        .recv()
        .map_err(|_| anyhow::anyhow!("the process-spawning thread is gone"))??;
    Ok(child)
}

async fn poll_ready(state: &EnvoyState, admin_file: &Path) {
    let admin = match state.admin_address() {
        Some(a) => a,
        None => {
            let Ok(text) = tokio::fs::read_to_string(admin_file).await else {
                return;
            };
            let Ok(addr) = text.trim().parse::<SocketAddr>() else {
                return;
            };
            *state
                .admin
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(addr);
            addr
        }
    };
    let live = matches!(admin_request(admin, "GET", "/ready").await, Ok((200, _)));
    state.live.store(live, Ordering::Relaxed);
}

/// A minimal HTTP/1.1 request (one per connection) to an admin interface on
/// loopback (Envoy's, or Gatewright's own for `gatewright status`): status
/// and body.
pub async fn admin_request(
    admin: SocketAddr,
    method: &str,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(admin).await?;
        stream
            .write_all(format!(
                    "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
                ).as_bytes())
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .context("admin request timed out")??;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP response from the admin server")?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

async fn stop_envoy(
    child: &mut std::process::Child,
    state: &EnvoyState,
    drain: Duration,
    group: &str,
) {
    if !drain.is_zero()
        && let Some(admin) = state.admin_address()
    {
        // Graceful drain: HTTP/1 connections get `Connection: close`,
        // HTTP/2 ones GOAWAY, so clients finish and reconnect elsewhere.
        if admin_request(admin, "POST", "/drain_listeners?graceful")
            .await
            .is_ok()
        {
            tokio::time::sleep(drain).await;
        }
    }
    if let Ok(Some(_)) = child.try_wait() {
        tracing::info!(gateway = %group, "Envoy stopped");
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on our own child's pid, which has not been reaped
        // (try_wait just saw it running), so it cannot be a reused pid.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + TERM_GRACE;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            tracing::info!(gateway = %group, "Envoy stopped");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::warn!(gateway = %group, "Envoy ignored SIGTERM; killing it");
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("default", name)
    }

    #[test]
    fn addresses_are_requested_kept_or_lowest_free() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let mut wanted = BTreeMap::new();
        wanted.insert(key("a"), None);
        wanted.insert(key("b"), Some(ip("127.0.1.1")));
        wanted.insert(key("c"), None);
        let first = assign_addresses(&wanted, &BTreeMap::new());
        assert_eq!(first[&key("b")], ip("127.0.1.1"));
        assert_eq!(first[&key("a")], ip("127.0.1.2"));
        assert_eq!(first[&key("c")], ip("127.0.1.3"));

        // Removing a Gateway moves no other one.
        wanted.remove(&key("a"));
        let second = assign_addresses(&wanted, &first);
        assert_eq!(second[&key("c")], ip("127.0.1.3"));
        assert_eq!(second.len(), 2);
    }

    fn config() -> HostConfig {
        HostConfig {
            envoy: PathBuf::from("envoy"),
            state_dir: PathBuf::from("/nonexistent"),
            xds_address: "127.0.0.1:1".parse().expect("address"),
            log_level: "info".to_owned(),
            concurrency: 2,
            drain: Duration::from_secs(1),
        }
    }

    fn params(yaml: &str) -> ProxyParametersSpec {
        serde_yaml::from_str(yaml).expect("ProxyParameters spec")
    }

    #[test]
    fn envoy_options_lay_parameters_over_the_host_defaults() {
        let defaults = EnvoyOptions::for_host(&config(), None).expect("no parameters");
        assert_eq!(defaults.log_level, "info");
        assert_eq!(defaults.concurrency, 2);
        let tuned = params("envoy: {logLevel: debug}");
        let options = EnvoyOptions::for_host(&config(), Some(&tuned)).expect("envoy only");
        assert_eq!(options.log_level, "debug");
        assert_eq!(options.concurrency, 2);
    }

    #[test]
    fn real_envoy_accepts_the_host_bootstrap_with_its_connection_limit() {
        let envoy = crate::infra::kubernetes::tests::envoy_binary();
        let dir = tempfile::tempdir().expect("temp dir");
        let key = ObjectKey::new("ns", "gw");
        let xds: SocketAddr = "127.0.0.1:18000".parse().expect("address");
        for limit in [
            1,
            EnvoyOptions::for_host(&config(), None)
                .expect("defaults")
                .max_downstream_connections,
        ] {
            let bootstrap = bootstrap_json(&key, xds, limit);
            let monitor = &bootstrap["overload_manager"]["resource_monitors"][0];
            assert_eq!(
                monitor["name"],
                "envoy.resource_monitors.global_downstream_max_connections"
            );
            assert_eq!(
                monitor["typed_config"]["max_active_downstream_connections"],
                limit
            );
            // No memory limit is known on the host: no heap monitor.
            assert_eq!(
                bootstrap["overload_manager"]["resource_monitors"]
                    .as_array()
                    .map(Vec::len),
                Some(1)
            );
            assert_eq!(bootstrap["admin"]["ignore_global_conn_limit"], true);
            let file = dir.path().join(format!("bootstrap-{limit}.json"));
            std::fs::write(&file, bootstrap.to_string()).expect("write the bootstrap");
            let output = std::process::Command::new(&envoy)
                .args(["--mode", "validate", "--log-level", "warning", "-c"])
                .arg(&file)
                .output()
                .expect("run envoy");
            assert!(
                output.status.success(),
                "Envoy rejected the host bootstrap (limit {limit}):\n{}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        // The limit follows the parameters, 50,000 without them.
        let defaults = EnvoyOptions::for_host(&config(), None).expect("defaults");
        assert_eq!(defaults.max_downstream_connections, 50_000);
        let limited = params("envoy: {maxDownstreamConnections: 3}");
        let options = EnvoyOptions::for_host(&config(), Some(&limited)).expect("envoy only");
        assert_eq!(options.max_downstream_connections, 3);
    }

    #[test]
    fn kubernetes_only_parameters_are_refused_on_the_host() {
        for (yaml, field) in [
            ("service: {type: NodePort}", "spec.service"),
            (
                "deployment: {replicas: 3}\nenvoy: {concurrency: 1}",
                "spec.deployment",
            ),
        ] {
            let message = EnvoyOptions::for_host(&config(), Some(&params(yaml)))
                .expect_err("cannot be applied on the host");
            assert!(message.contains(field), "{message}");
        }
    }
}
