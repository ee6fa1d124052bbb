//! Host infrastructure: one supervised Envoy process per Gateway, each on a
//! loopback address of its own, fed over ADS by this process.
//!
//! Envoys outlive a crash of this process: they are started in a process
//! group of their own and without a parent-death signal, and keep serving
//! their last configuration while the xDS stream is gone. Each Envoy's
//! record (`envoy/<namespace>_<name>/process.json` in the state dir: pid,
//! start time, command line, admin and bind address, options, bootstrap)
//! lets the next Gatewright of the same state dir adopt it ([`Survivors`])
//! instead of starting another. A clean shutdown drains and stops every
//! Envoy and removes the records.

use super::kubernetes::params::EnvoyParameters;
use super::kubernetes::{ProxyParametersSpec, resolve_parameters};
use super::{Learned, NotProgrammed};
use crate::source::Snapshot;
use crate::xds::group_of;
use anyhow::Context as _;
use gatewright_translator::api::gatewayclasses::GatewayClass;
use gatewright_translator::api::gateways::{Gateway, GatewayStatusAddresses};
use gatewright_translator::{Input, ObjectKey, Output};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
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
/// How often a process without a pidfd is looked at to see if it exited.
const EXIT_POLL: Duration = Duration::from_millis(100);
/// The record of a running Envoy, in its Gateway's folder.
const RECORD_FILE: &str = "process.json";
/// The record of an Envoy being replaced, in the same folder, from the
/// moment its successor starts until it has drained and stopped: a
/// Gatewright that crashes in between leaves it to the next one to stop.
const RETIRING_FILE: &str = "retiring.json";
/// How long a replacement Envoy may take to serve before its predecessor
/// is stopped anyway.
const REPLACEMENT_READY: Duration = Duration::from_secs(30);

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
    /// Whether the running process was adopted from a previous Gatewright
    /// rather than started by this one.
    pub adopted: AtomicBool,
    /// Whether the running process was started with another command line or
    /// bootstrap than this Gatewright would use (an adopted Envoy from a
    /// run with another Envoy binary or xDS address): it is replaced.
    outdated: AtomicBool,
    /// Whether a successor has taken its place (its record is then
    /// `retiring.json`, so the two records never overwrite each other).
    retiring: AtomicBool,
}

impl EnvoyState {
    /// The file this Envoy's record is kept in.
    fn record_file(&self) -> &'static str {
        if self.retiring.load(Ordering::SeqCst) {
            RETIRING_FILE
        } else {
            RECORD_FILE
        }
    }
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Envoys a crashed Gatewright was replacing, being drained and stopped.
    retiring: Vec<JoinHandle<()>>,
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
            retiring: Vec::new(),
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
                (key, g.as_ref())
            })
            .collect();
        let classes: BTreeMap<&str, &GatewayClass> = snapshot
            .input
            .gateway_classes
            .iter()
            .filter_map(|c| Some((c.metadata.name.as_deref()?, c.as_ref())))
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
                    routability: None,
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
    ///
    /// An Envoy replaced on the same address (other options, or an adopted
    /// one that runs another command line) is replaced make-before-break:
    /// the successor starts beside it (Envoy's listeners bind with
    /// SO_REUSEPORT, so both accept on the address), and only once it
    /// serves is the old one drained and stopped, so no client meets a
    /// closed port.
    pub async fn reconcile(&mut self, wanted: &BTreeMap<ObjectKey, (IpAddr, EnvoyOptions)>) {
        let stale: Vec<ObjectKey> = self
            .envoys
            .iter()
            .filter(|(k, m)| {
                m.state.outdated.load(Ordering::Relaxed)
                    || wanted
                        .get(*k)
                        .is_none_or(|(ip, o)| *ip != m.state.address || *o != m.state.options)
            })
            .map(|(k, _)| k.clone())
            .collect();
        let (mut replaced, mut moving, mut stopping) = (Vec::new(), Vec::new(), Vec::new());
        for key in stale {
            let Some(managed) = self.envoys.remove(&key) else {
                continue;
            };
            match wanted.get(&key) {
                Some((ip, _)) if *ip == managed.state.address => {
                    tracing::info!(gateway = %group_of(&key), "replacing Envoy: its successor starts first");
                    if !kernel_migrates_queued_connections() {
                        tracing::warn!(gateway = %group_of(&key),
                            "net.ipv4.tcp_migrate_req is 0: connections queued on the old Envoy's listeners when they close are reset; set it to 1 to replace Envoys without losing any");
                    }
                    retire(&self.config.state_dir, &key, &managed.state);
                    replaced.push((key, managed));
                }
                Some(_) => {
                    tracing::info!(gateway = %group_of(&key), "stopping Envoy: its address changed");
                    let _ = managed.stop.send(true);
                    moving.push(managed.task);
                }
                None => {
                    tracing::info!(gateway = %group_of(&key), "stopping Envoy");
                    let _ = managed.stop.send(true);
                    stopping.push(managed.task);
                }
            }
        }
        // An Envoy that moves may take an address another Gateway's Envoy
        // leaves: that one must be gone first.
        for task in moving {
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
        for (key, old) in replaced {
            if let Some(new) = self.envoys.get(&key)
                && !await_serving(&new.state, REPLACEMENT_READY).await
            {
                tracing::warn!(gateway = %group_of(&key),
                    "the replacement Envoy did not serve within {REPLACEMENT_READY:?}; stopping the old one anyway");
            }
            let _ = old.stop.send(true);
            stopping.push(old.task);
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
        for task in std::mem::take(&mut self.retiring) {
            let _ = task.await;
        }
    }

    /// Takes over the Envoys a crashed Gatewright of this state dir left
    /// running: each is supervised from now on as if started here, and keeps
    /// its address, so the first [`Host::plan`] gives its Gateway the same
    /// one. The first reconcile keeps those still wanted with the same
    /// options and replaces or stops the others.
    pub fn adopt(&mut self, survivors: Survivors) {
        // Envoys the crashed Gatewright was replacing: their successors are
        // among the found ones, so they are only drained and stopped.
        for survivor in survivors.retiring {
            let Survivor {
                key,
                dir,
                record,
                process,
            } = survivor;
            tracing::info!(gateway = %group_of(&key), pid = record.pid,
                "stopping the Envoy a crashed Gatewright was replacing");
            let state = Arc::new(EnvoyState {
                address: record.address,
                options: record.options.clone(),
                pid: AtomicU32::new(record.pid),
                live: AtomicBool::new(false),
                restarts: AtomicU64::new(0),
                admin: Mutex::new(record.admin),
                log: dir.join("envoy.log"),
                adopted: AtomicBool::new(true),
                outdated: AtomicBool::new(true),
                retiring: AtomicBool::new(true),
            });
            // Told to stop before it starts: supervise drains and stops it.
            let (_stop, stop_rx) = watch::channel(true);
            self.retiring.push(tokio::spawn(supervise(
                self.config.clone(),
                key,
                dir,
                state,
                stop_rx,
                Some(process),
            )));
        }
        for survivor in survivors.found {
            let Survivor {
                key,
                dir,
                record,
                process,
            } = survivor;
            if self.envoys.contains_key(&key) {
                continue;
            }
            let outdated = record.argv != envoy_argv(&self.config.envoy, &dir, &record.options)
                || record.bootstrap
                    != bootstrap_json(
                        &key,
                        self.config.xds_address,
                        record.options.max_downstream_connections,
                    );
            if outdated {
                tracing::info!(gateway = %group_of(&key), pid = record.pid,
                    "adopted Envoy runs another binary or dials another xDS address; it will be replaced");
            } else {
                tracing::info!(gateway = %group_of(&key), pid = record.pid, address = %record.address,
                    "adopting the running Envoy");
            }
            let state = Arc::new(EnvoyState {
                address: record.address,
                options: record.options.clone(),
                pid: AtomicU32::new(record.pid),
                live: AtomicBool::new(false),
                restarts: AtomicU64::new(0),
                admin: Mutex::new(record.admin),
                log: dir.join("envoy.log"),
                adopted: AtomicBool::new(true),
                outdated: AtomicBool::new(outdated),
                retiring: AtomicBool::new(false),
            });
            let (stop, stop_rx) = watch::channel(false);
            let task = tokio::spawn(supervise(
                self.config.clone(),
                key.clone(),
                dir,
                Arc::clone(&state),
                stop_rx,
                Some(process),
            ));
            self.envoys.insert(key, Managed { state, stop, task });
        }
    }

    fn start(
        &self,
        key: &ObjectKey,
        address: IpAddr,
        options: EnvoyOptions,
    ) -> anyhow::Result<Managed> {
        let dir = envoy_dir(&self.config.state_dir, key);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let state = Arc::new(EnvoyState {
            address,
            options,
            pid: AtomicU32::new(0),
            live: AtomicBool::new(false),
            restarts: AtomicU64::new(0),
            admin: Mutex::new(None),
            log: dir.join("envoy.log"),
            adopted: AtomicBool::new(false),
            outdated: AtomicBool::new(false),
            retiring: AtomicBool::new(false),
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(supervise(
            self.config.clone(),
            key.clone(),
            dir,
            Arc::clone(&state),
            stop_rx,
            None,
        ));
        Ok(Managed { state, stop, task })
    }
}

/// The folder of a Gateway's Envoy: bootstrap, log, admin address, record.
fn envoy_dir(state_dir: &Path, key: &ObjectKey) -> PathBuf {
    state_dir
        .join("envoy")
        .join(format!("{}_{}", key.namespace, key.name))
}

/// Envoy's command line (program first) for a Gateway whose folder is
/// `dir`. Recorded, and compared with `/proc/PID/cmdline` before an Envoy
/// is adopted, so it must be a pure function of its inputs.
fn envoy_argv(envoy: &Path, dir: &Path, options: &EnvoyOptions) -> Vec<String> {
    vec![
        envoy.to_string_lossy().into_owned(),
        "--config-path".to_owned(),
        dir.join("bootstrap.json").to_string_lossy().into_owned(),
        "--admin-address-path".to_owned(),
        dir.join("admin-address").to_string_lossy().into_owned(),
        "--disable-hot-restart".to_owned(),
        // A drain (`/drain_listeners?graceful`, before an Envoy is stopped
        // or replaced) asks every connection to close at once: HTTP/1
        // responses get `Connection: close`, HTTP/2 connections GOAWAY.
        // The default, `gradual`, spreads that over `--drain-time-s`
        // (600 s), so a drain of a second or two closed almost nothing and
        // the stop cut keep-alive connections with requests in flight.
        "--drain-strategy".to_owned(),
        "immediate".to_owned(),
        "--concurrency".to_owned(),
        options.concurrency.to_string(),
        "--log-level".to_owned(),
        options.log_level.clone(),
    ]
}

/// The bootstrap of a Gateway's Envoy: its node group, a loopback admin on
/// a free port, delta ADS to this process, re-dialled every second at most
/// while it is away, and the overload manager's limit of `max_connections`
/// downstream connections.
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
                // Envoy's default reconnect back-off grows to 30 s; a
                // restarted Gatewright should reach its adopted Envoys
                // within a second of serving again.
                "grpc_services": [{ "envoy_grpc": {
                    "cluster_name": "gatewright-xds",
                    "retry_policy": { "retry_back_off": { "base_interval": "0.25s", "max_interval": "1s" } }
                } }]
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
    key: ObjectKey,
    dir: PathBuf,
    state: Arc<EnvoyState>,
    mut stop: watch::Receiver<bool>,
    mut adopted: Option<Process>,
) {
    let group = group_of(&key);
    let mut backoff = BACKOFF_MIN;
    let admin_file = dir.join("admin-address");
    loop {
        if *stop.borrow() {
            // An adopted Envoy nobody wants is still drained and stopped.
            if let Some(mut process) = adopted.take() {
                stop_envoy(&mut process, &state, config.drain, &group).await;
                remove_record(&dir, &state);
            }
            return;
        }
        let started = Instant::now();
        let mut process = match adopted.take() {
            Some(process) => process,
            None => match spawn_envoy(&config, &key, &dir, &state) {
                Ok(process) => {
                    state.adopted.store(false, Ordering::Relaxed);
                    state.outdated.store(false, Ordering::Relaxed);
                    tracing::info!(gateway = %group, pid = process.pid, address = %state.address, "Envoy started");
                    process
                }
                Err(e) => {
                    tracing::error!(gateway = %group, "cannot start Envoy: {e:#}");
                    if sleep_or_stop(backoff, &mut stop).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            },
        };
        state.pid.store(process.pid, Ordering::Relaxed);
        let mut recorded_admin = state.admin_address();
        // Readiness is polled; the exit is awaited (a pidfd where the kernel
        // has them), for adopted Envoys too, which are not our children.
        let mut poll = tokio::time::interval(Duration::from_millis(100));
        let exited = loop {
            tokio::select! {
                _ = stop.changed() => break None,
                status = process.exited() => break Some(status),
                _ = poll.tick() => {
                    poll_ready(&state, &admin_file).await;
                    // The record carries the admin address once Envoy has
                    // written it, for whoever adopts this Envoy.
                    let admin = state.admin_address();
                    if admin != recorded_admin {
                        recorded_admin = admin;
                        if let Err(e) = write_record(&config, &key, &dir, &state, &process) {
                            tracing::warn!(gateway = %group, "cannot update the Envoy's record: {e:#}");
                        }
                    }
                }
            }
        };
        state.live.store(false, Ordering::Relaxed);
        match exited {
            None => {
                stop_envoy(&mut process, &state, config.drain, &group).await;
                remove_record(&dir, &state);
                state.pid.store(0, Ordering::Relaxed);
                return;
            }
            Some(status) => {
                // What the record names is gone: nobody may adopt or signal it.
                remove_record(&dir, &state);
                state.pid.store(0, Ordering::Relaxed);
                state.restarts.fetch_add(1, Ordering::Relaxed);
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
    key: &ObjectKey,
    dir: &Path,
    state: &EnvoyState,
) -> anyhow::Result<Process> {
    let bootstrap = dir.join("bootstrap.json");
    let body = serde_json::to_vec_pretty(&bootstrap_json(
        key,
        config.xds_address,
        state.options.max_downstream_connections,
    ))?;
    std::fs::write(&bootstrap, body).with_context(|| format!("writing {}", bootstrap.display()))?;
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
    let argv = envoy_argv(&config.envoy, dir, &state.options);
    let mut command = std::process::Command::new(&config.envoy);
    command
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2);
    // A process group of its own: a terminal's Ctrl-C reaches Gatewright,
    // which drains its Envoys, rather than killing them outright; and no
    // parent-death signal, so that a crash of Gatewright leaves traffic
    // flowing (the next Gatewright adopts the Envoy through its record).
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let child = command
        .spawn()
        .with_context(|| format!("running {}", config.envoy.display()))?;
    let process = Process::spawned(child);
    write_record(config, key, dir, state, &process)?;
    Ok(process)
}

/// What the state dir remembers of one running Envoy: enough to find it
/// again after a crash, to prove a process is that Envoy, and to judge
/// whether it still runs what this Gatewright would run.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct EnvoyRecord {
    namespace: String,
    name: String,
    pid: u32,
    /// Field 22 of `/proc/PID/stat` (clock ticks after boot): with the pid
    /// it names one process, whatever later reuses the pid.
    start_time: u64,
    /// The command line it was started with, program first.
    argv: Vec<String>,
    /// Its admin address, once Envoy has written it.
    admin: Option<SocketAddr>,
    /// The Gateway's address, where its listeners bind.
    address: IpAddr,
    options: EnvoyOptions,
    /// The ADS address its bootstrap dials.
    xds_address: SocketAddr,
    /// The bootstrap it was started with.
    bootstrap: serde_json::Value,
}

fn write_record(
    config: &HostConfig,
    key: &ObjectKey,
    dir: &Path,
    state: &EnvoyState,
    process: &Process,
) -> anyhow::Result<()> {
    let record = EnvoyRecord {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        pid: process.pid,
        start_time: process.start_time,
        argv: envoy_argv(&config.envoy, dir, &state.options),
        admin: state.admin_address(),
        address: state.address,
        options: state.options.clone(),
        xds_address: config.xds_address,
        bootstrap: bootstrap_json(
            key,
            config.xds_address,
            state.options.max_downstream_connections,
        ),
    };
    let file = state.record_file();
    let path = dir.join(file);
    let tmp = dir.join(format!("{file}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&record)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    // Renamed into place: a crash never leaves half a record.
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming {}", tmp.display()))
}

/// Removes the record of the Envoy `state` describes (a successor's, in
/// the same folder, is another file).
fn remove_record(dir: &Path, state: &EnvoyState) {
    let _ = std::fs::remove_file(dir.join(state.record_file()));
}

/// Marks the Envoy of `state` as being replaced: its record moves to
/// `retiring.json` before its successor writes `process.json`, so that
/// both stay recorded (a crash now leaves the next Gatewright both: it
/// adopts the successor and stops this one).
fn retire(state_dir: &Path, key: &ObjectKey, state: &EnvoyState) {
    let dir = envoy_dir(state_dir, key);
    state.retiring.store(true, Ordering::SeqCst);
    if let Err(e) = std::fs::rename(dir.join(RECORD_FILE), dir.join(RETIRING_FILE))
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(gateway = %group_of(key), "cannot move the Envoy's record aside: {e}");
    }
}

/// Whether the kernel moves connections queued on a closing SO_REUSEPORT
/// listener to another of its group (`net.ipv4.tcp_migrate_req`), which a
/// make-before-break replacement needs to lose none.
fn kernel_migrates_queued_connections() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").is_ok_and(|v| v.trim() == "1")
}

/// Waits until the Envoy of `state` is LIVE and has started its listeners
/// (none still warming), or `timeout` passes; whether it got there.
async fn await_serving(state: &EnvoyState, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if state.live.load(Ordering::Relaxed)
            && let Some(admin) = state.admin_address()
            && let Ok(stats) = envoy_stats(admin, "%5Elistener_manager%5C.").await
            && stats.get("listener_manager.workers_started") == Some(&1)
            && stats.get("listener_manager.total_listeners_warming") == Some(&0)
            && stats
                .get("listener_manager.total_listeners_active")
                .is_some_and(|n| *n > 0)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Envoy's admin `/stats` that match `filter` (a URL-encoded regex), as
/// numbers.
async fn envoy_stats(admin: SocketAddr, filter: &str) -> anyhow::Result<BTreeMap<String, u64>> {
    let (status, body) = admin_request(admin, "GET", &format!("/stats?filter={filter}")).await?;
    anyhow::ensure!(status == 200, "admin /stats answered {status}");
    Ok(body
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(": ")?;
            Some((name.to_owned(), value.trim().parse().ok()?))
        })
        .collect())
}

/// The downstream connections an Envoy's listeners hold (not its admin's).
async fn downstream_connections(admin: SocketAddr) -> anyhow::Result<u64> {
    let stats = envoy_stats(admin, "%5Elistener%5C..*%5C.downstream_cx_active%24").await?;
    Ok(stats
        .iter()
        .filter(|(name, _)| !name.starts_with("listener.admin."))
        .map(|(_, n)| n)
        .sum())
}

/// Envoys a previous Gatewright of the same state dir left running when it
/// crashed, each proven to be the Envoy its record names: alive, with the
/// recorded start time and the recorded command line. Records of Envoys
/// that are gone, or whose pid now belongs to another process, are
/// forgotten, and such processes are never signalled.
#[derive(Default)]
pub struct Survivors {
    found: Vec<Survivor>,
    /// Envoys the crashed Gatewright was replacing (`retiring.json`).
    retiring: Vec<Survivor>,
}

struct Survivor {
    key: ObjectKey,
    dir: PathBuf,
    record: EnvoyRecord,
    process: Process,
}

impl Survivor {
    /// The Envoy the record `file` in `dir` names, if it really still runs;
    /// a record that names none is removed.
    fn read(state_dir: &Path, dir: &Path, file: &str) -> Option<Self> {
        let path = dir.join(file);
        let text = std::fs::read(&path).ok()?;
        let record: EnvoyRecord = match serde_json::from_slice(&text) {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(record = %path.display(), "forgetting an unreadable Envoy record: {e}");
                let _ = std::fs::remove_file(&path);
                return None;
            }
        };
        let key = ObjectKey::new(record.namespace.clone(), record.name.clone());
        if envoy_dir(state_dir, &key) != dir {
            tracing::warn!(record = %path.display(), "forgetting an Envoy record that names another Gateway's folder");
            let _ = std::fs::remove_file(&path);
            return None;
        }
        match Process::adopt(record.pid, record.start_time, &record.argv) {
            Ok(process) => Some(Self {
                key,
                dir: dir.to_path_buf(),
                record,
                process,
            }),
            Err(why) => {
                tracing::info!(gateway = %group_of(&key), pid = record.pid,
                    "forgetting the recorded Envoy: {why}");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }
}

impl Survivors {
    /// Reads the records under `state_dir` and keeps the Envoys that are
    /// really still running.
    pub fn find(state_dir: &Path) -> Self {
        let mut survivors = Self::default();
        let entries = match std::fs::read_dir(state_dir.join("envoy")) {
            Ok(entries) => entries,
            Err(_) => return survivors,
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            if let Some(survivor) = Survivor::read(state_dir, &dir, RECORD_FILE) {
                survivors.found.push(survivor);
            }
            if let Some(survivor) = Survivor::read(state_dir, &dir, RETIRING_FILE) {
                survivors.retiring.push(survivor);
            }
        }
        survivors
    }

    /// How many Envoys were found running.
    pub fn len(&self) -> usize {
        self.found.len()
    }

    /// Whether none was found.
    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// The ADS address the survivors' bootstraps dial, to be bound again
    /// when `requested` allows it: the same address, or the same IP with
    /// port 0 (any port, so the one chosen before). `None` when there are
    /// no survivors, when they disagree, or when the user asked for
    /// another address (the survivors are then replaced).
    pub fn xds_address(&self, requested: SocketAddr) -> Option<SocketAddr> {
        let first = self.found.first()?.record.xds_address;
        let agreed = self.found.iter().all(|s| s.record.xds_address == first);
        let allowed = first == requested || (requested.port() == 0 && requested.ip() == first.ip());
        (agreed && allowed).then_some(first)
    }
}

/// Takes the state dir for this process: an exclusive lock on its `lock`
/// file, held while the returned file is open. A second Gatewright on the
/// same state dir would otherwise take the first one's running Envoys for
/// survivors of a crash and replace them. The kernel drops the lock when
/// its holder dies, and Envoys do not inherit it (the descriptor is
/// close-on-exec), so a crashed Gatewright never keeps its successor out.
pub fn lock_state_dir(state_dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = state_dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock(2) on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        anyhow::bail!(
            "another Gatewright uses the state dir {} ({e}); give each its own --state-dir",
            state_dir.display()
        );
    }
    Ok(file)
}

/// Binds the ADS listener: where surviving Envoys dial if `requested`
/// allows it (see [`Survivors::xds_address`]), else `requested`.
pub async fn bind_xds(
    requested: SocketAddr,
    survivors: &Survivors,
) -> anyhow::Result<tokio::net::TcpListener> {
    if let Some(address) = survivors.xds_address(requested) {
        match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => {
                tracing::info!(%address, envoys = survivors.len(), "serving xDS where the running Envoys dial");
                return Ok(listener);
            }
            Err(e) => {
                tracing::warn!(%address, "cannot bind the xDS address the running Envoys dial ({e}); they will be replaced")
            }
        }
    }
    tokio::net::TcpListener::bind(requested)
        .await
        .with_context(|| format!("binding the xDS address {requested}"))
}

/// A running Envoy: a child of this process, or one adopted from a crashed
/// Gatewright (then not a child: it cannot be waited for, only watched).
struct Process {
    pid: u32,
    /// From `/proc/PID/stat`: with the pid, names this process.
    start_time: u64,
    /// Our own child, which must be reaped; `None` when adopted.
    child: Option<std::process::Child>,
    /// A pidfd: readable once the process exits, and signals sent through
    /// it can never reach another process that reused the pid. `None` on
    /// kernels without pidfd_open (before 5.3).
    pidfd: Option<AsyncFd<OwnedFd>>,
    /// The command line it must still have (adopted processes without a
    /// pidfd are re-checked before every signal).
    argv: Vec<String>,
}

impl Process {
    fn spawned(child: std::process::Child) -> Self {
        let pid = child.id();
        let pidfd = pidfd_open(pid);
        // Just spawned and not reaped: the pid is ours, its stat readable
        // (0 only if /proc is not mounted, which makes adoption impossible).
        let start_time = proc_stat(pid).map_or(0, |s| s.start_time);
        let argv = proc_cmdline(pid).unwrap_or_default();
        Self {
            pid,
            start_time,
            child: Some(child),
            pidfd,
            argv,
        }
    }

    /// The process `pid` if it is alive, started at `start_time` and runs
    /// `argv`; otherwise why not.
    fn adopt(pid: u32, start_time: u64, argv: &[String]) -> Result<Self, String> {
        if pid == 0 || i32::try_from(pid).is_err() {
            return Err(format!("invalid pid {pid}"));
        }
        // Opened before the checks: if they pass, the pidfd refers to the
        // process they looked at (a pid is not reused while that process
        // has not exited, and an exit in between makes the checks fail).
        let pidfd = pidfd_open(pid);
        identify(pid, start_time, argv)?;
        Ok(Self {
            pid,
            start_time,
            child: None,
            pidfd,
            argv: argv.to_vec(),
        })
    }

    /// Whether the process has exited (reaping it if it is our child), with
    /// how, without blocking.
    fn try_exited(&mut self) -> Option<String> {
        if let Some(child) = &mut self.child {
            return match child.try_wait() {
                Ok(Some(status)) => Some(status.to_string()),
                Ok(None) => None,
                Err(e) => Some(format!("cannot wait for it: {e}")),
            };
        }
        if let Some(fd) = &self.pidfd {
            let mut poll = libc::pollfd {
                fd: fd.get_ref().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, zero timeout.
            let ready = unsafe { libc::poll(&mut poll, 1, 0) };
            if ready >= 0 && poll.revents & (libc::POLLNVAL | libc::POLLERR) == 0 {
                return (poll.revents & (libc::POLLIN | libc::POLLHUP) != 0)
                    .then(|| "exited (not our child: status unknown)".to_owned());
            }
            // The pidfd cannot say: ask /proc instead.
        }
        identify(self.pid, self.start_time, &self.argv)
            .err()
            .map(|why| format!("gone ({why})"))
    }

    /// Waits until the process has exited (see [`Process::try_exited`]).
    async fn exited(&mut self) -> String {
        loop {
            if let Some(status) = self.try_exited() {
                return status;
            }
            match &self.pidfd {
                // Readable means exited, and stays so; the next turn looks
                // (and reaps a child). The short sleep only matters if the
                // kernel said readable before the child became reapable.
                Some(fd) => match fd.readable().await {
                    Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    Err(_) => tokio::time::sleep(EXIT_POLL).await,
                },
                None => tokio::time::sleep(EXIT_POLL).await,
            }
        }
    }

    /// Sends `signal`, only ever to this process.
    fn signal(&self, signal: libc::c_int) {
        if let Some(fd) = &self.pidfd {
            // SAFETY: pidfd_send_signal(2) with a pidfd we own, no siginfo
            // and no flags.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.get_ref().as_raw_fd(),
                    signal,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
            }
            return;
        }
        let Ok(pid) = libc::pid_t::try_from(self.pid) else {
            return;
        };
        // Our unreaped child cannot have been replaced; an adopted process
        // is proven to be the same one right before the signal.
        if self.child.is_some() || identify(self.pid, self.start_time, &self.argv).is_ok() {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }
}

/// A pidfd for `pid` registered with the runtime, if the kernel has them.
fn pidfd_open(pid: u32) -> Option<AsyncFd<OwnedFd>> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the syscall returned a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: the AsyncFd owns the OwnedFd, which stays open and the same
    // descriptor until the AsyncFd drops it.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok()
}

/// What `/proc/PID/stat` says about a process.
struct ProcStat {
    /// R, S, D, Z, ...
    state: char,
    start_time: u64,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses,
    // so fields are counted after its closing one. starttime is field 22,
    // the 20th after comm.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

fn proc_cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// Whether `pid` is a live process started at `start_time` running `argv`.
fn identify(pid: u32, start_time: u64, argv: &[String]) -> Result<(), String> {
    let stat = proc_stat(pid).ok_or("no such process")?;
    if matches!(stat.state, 'Z' | 'X') {
        return Err("it has exited".to_owned());
    }
    if stat.start_time != start_time {
        return Err(format!(
            "pid {pid} is another process now (started at {} rather than {start_time})",
            stat.start_time
        ));
    }
    let cmdline = proc_cmdline(pid).ok_or("its command line cannot be read")?;
    if cmdline != argv {
        return Err(format!(
            "pid {pid} runs another command line: {}",
            cmdline.join(" ")
        ));
    }
    Ok(())
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

async fn stop_envoy(process: &mut Process, state: &EnvoyState, drain: Duration, group: &str) {
    if !drain.is_zero()
        && let Some(admin) = state.admin_address()
    {
        // Graceful drain: HTTP/1 connections get `Connection: close`,
        // HTTP/2 ones GOAWAY (at once: `--drain-strategy immediate`), so
        // clients finish and reconnect, to a successor if there is one.
        // The listeners still accept meanwhile: a client the kernel hands
        // to this Envoy rather than its successor is still served.
        if admin_request(admin, "POST", "/drain_listeners?graceful")
            .await
            .is_ok()
        {
            tokio::time::sleep(drain).await;
            // Then no new connections, and the requests still running
            // finish before the process is stopped (bounded by `drain`
            // again: an idle client may hold its connection open).
            if admin_request(admin, "POST", "/drain_listeners")
                .await
                .is_ok()
            {
                let deadline = Instant::now() + drain;
                while Instant::now() < deadline
                    && downstream_connections(admin).await.is_ok_and(|n| n > 0)
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    if process.try_exited().is_some() {
        tracing::info!(gateway = %group, "Envoy stopped");
        return;
    }
    process.signal(libc::SIGTERM);
    if tokio::time::timeout(TERM_GRACE, process.exited())
        .await
        .is_ok()
    {
        tracing::info!(gateway = %group, "Envoy stopped");
        return;
    }
    tracing::warn!(gateway = %group, "Envoy ignored SIGTERM; killing it");
    process.signal(libc::SIGKILL);
    let _ = tokio::time::timeout(TERM_GRACE, process.exited()).await;
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

    fn record(pid: u32, start_time: u64, argv: Vec<String>, xds: &str) -> EnvoyRecord {
        let xds_address: SocketAddr = xds.parse().expect("address");
        EnvoyRecord {
            namespace: "default".to_owned(),
            name: "gw".to_owned(),
            pid,
            start_time,
            argv,
            admin: None,
            address: "127.0.1.1".parse().expect("ip"),
            options: EnvoyOptions::for_host(&config(), None).expect("options"),
            xds_address,
            bootstrap: bootstrap_json(&key("gw"), xds_address, 50_000),
        }
    }

    fn write(state_dir: &Path, record: &EnvoyRecord) -> PathBuf {
        let dir = envoy_dir(state_dir, &key("gw"));
        std::fs::create_dir_all(&dir).expect("creating the Envoy dir");
        let path = dir.join(RECORD_FILE);
        std::fs::write(&path, serde_json::to_vec(record).expect("json")).expect("writing");
        path
    }

    #[tokio::test]
    async fn only_the_recorded_process_itself_is_adopted() {
        let state = tempfile::tempdir().expect("temp dir");
        let me = std::process::id();
        let started = proc_stat(me).expect("own stat").start_time;
        let argv = proc_cmdline(me).expect("own cmdline");

        // This very process matches a record naming its pid, start time and
        // command line: that is what adoption requires.
        let path = write(
            state.path(),
            &record(me, started, argv.clone(), "127.0.0.1:4000"),
        );
        let found = Survivors::find(state.path());
        assert_eq!(found.len(), 1);
        assert!(path.exists(), "an adoptable record is kept");

        // The same pid with another start time or command line is another
        // process: the record is forgotten.
        for stale in [
            record(me, started + 1, argv.clone(), "127.0.0.1:4000"),
            record(me, started, vec!["envoy".to_owned()], "127.0.0.1:4000"),
            record(0, started, argv.clone(), "127.0.0.1:4000"),
        ] {
            let path = write(state.path(), &stale);
            assert!(Survivors::find(state.path()).is_empty(), "{stale:?}");
            assert!(!path.exists(), "a stale record is removed");
        }

        // Unreadable records are forgotten too.
        let path = write(state.path(), &record(me, started, argv, "127.0.0.1:4000"));
        std::fs::write(&path, "{").expect("writing");
        assert!(Survivors::find(state.path()).is_empty());
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn an_envoy_being_replaced_is_found_apart_from_its_successor() {
        let state = tempfile::tempdir().expect("temp dir");
        let me = std::process::id();
        let started = proc_stat(me).expect("own stat").start_time;
        let argv = proc_cmdline(me).expect("own cmdline");
        // A crash mid-replacement leaves both records: the successor's in
        // process.json (adopted) and the predecessor's in retiring.json
        // (only drained and stopped, never adopted).
        let live = write(
            state.path(),
            &record(me, started, argv.clone(), "127.0.0.1:4000"),
        );
        let retiring = live.with_file_name(RETIRING_FILE);
        std::fs::copy(&live, &retiring).expect("copying the record");
        let found = Survivors::find(state.path());
        assert_eq!(found.len(), 1, "only the successor is adopted");
        assert_eq!(
            found.retiring.len(),
            1,
            "the predecessor is found to be stopped"
        );
        assert!(retiring.exists() && live.exists());

        // A retiring record naming a process that is gone is forgotten.
        std::fs::remove_file(&live).expect("removing the live record");
        let stale = record(me, started + 1, argv, "127.0.0.1:4000");
        std::fs::write(&retiring, serde_json::to_vec(&stale).expect("json")).expect("writing");
        let found = Survivors::find(state.path());
        assert!(found.is_empty() && found.retiring.is_empty());
        assert!(!retiring.exists(), "a stale retiring record is removed");
    }

    #[tokio::test]
    async fn the_survivors_xds_address_is_reused_when_the_flag_allows() {
        let state = tempfile::tempdir().expect("temp dir");
        let me = std::process::id();
        let started = proc_stat(me).expect("own stat").start_time;
        let argv = proc_cmdline(me).expect("own cmdline");
        write(state.path(), &record(me, started, argv, "127.0.0.1:4000"));
        let found = Survivors::find(state.path());
        let addr = |s: &str| s.parse::<SocketAddr>().expect("address");
        let recorded = Some(addr("127.0.0.1:4000"));
        assert_eq!(found.xds_address(addr("127.0.0.1:0")), recorded);
        assert_eq!(found.xds_address(addr("127.0.0.1:4000")), recorded);
        assert_eq!(found.xds_address(addr("127.0.0.1:5000")), None);
        assert_eq!(found.xds_address(addr("127.0.0.2:0")), None);
        assert_eq!(Survivors::default().xds_address(addr("127.0.0.1:0")), None);
    }

    #[test]
    fn a_state_dir_serves_one_gatewright_at_a_time() {
        let state = tempfile::tempdir().expect("temp dir");
        let held = lock_state_dir(state.path()).expect("first lock");
        let refused = lock_state_dir(state.path()).expect_err("second lock");
        assert!(
            refused.to_string().contains("another Gatewright"),
            "{refused}"
        );
        drop(held);
        lock_state_dir(state.path()).expect("free again once the holder is gone");
    }

    #[test]
    fn proc_stat_reads_the_start_time_past_any_comm() {
        let me = proc_stat(std::process::id()).expect("own stat");
        assert!(me.start_time > 0);
        assert!(matches!(me.state, 'R' | 'S'));
        assert!(proc_stat(0).is_none());
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
