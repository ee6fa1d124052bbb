//! `gatewright run`: the standalone control plane. Reads a directory of
//! YAML, translates it, serves xDS, runs an Envoy per Gateway and keeps all
//! of it up to date as files change.

use crate::admin::{Shared, View};
use crate::host::{Host, HostConfig, assign_addresses, group_of};
use crate::metrics::{Envoys, Metrics};
use crate::source::FileSource;
use crate::status::{StatusWriter, collect, loose_problems};
use anyhow::Context as _;
use gatewright_translator::api::gateways::GatewayStatusAddresses;
use gatewright_translator::{GatewayResources, Input, ObjectKey, Output, translate};
use gatewright_xds::{AdsServer, Cache, Resources};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use notify::Watcher as _;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Everything `gatewright run` is told.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Files and directories of YAML.
    pub config: Vec<PathBuf>,
    /// Where status files are written, if anywhere.
    pub status_dir: Option<PathBuf>,
    /// Where Envoy bootstraps, logs and the admin address file go.
    pub state_dir: PathBuf,
    /// ADS listen address.
    pub xds_address: SocketAddr,
    /// Admin HTTP listen address.
    pub admin_address: SocketAddr,
    /// The controllerName of our GatewayClasses.
    pub controller_name: String,
    /// How long the input must be quiet before a change is applied.
    pub debounce: Duration,
    /// How Envoys are run; its `xds_address` and `state_dir` are filled in.
    pub envoy: PathBuf,
    /// Envoy's log level.
    pub envoy_log_level: String,
    /// Envoy worker threads.
    pub envoy_concurrency: u32,
    /// How long listeners drain before an Envoy is stopped.
    pub drain: Duration,
}

/// Runs until SIGINT or SIGTERM, then drains and stops every Envoy.
pub async fn run(options: RunOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(&options.state_dir)
        .with_context(|| format!("creating {}", options.state_dir.display()))?;
    let cache = Cache::new();
    let envoys: Envoys = Arc::new(Mutex::new(BTreeMap::new()));
    let shared = Arc::new(Shared {
        cache: cache.clone(),
        metrics: Metrics::new(cache.clone(), Arc::clone(&envoys)),
        envoys,
        view: RwLock::new(Arc::new(View::default())),
        leader: None,
        remote_envoys: false,
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let xds_listener = tokio::net::TcpListener::bind(options.xds_address)
        .await
        .with_context(|| format!("binding the xDS address {}", options.xds_address))?;
    let xds_address = xds_listener.local_addr()?;
    let xds = serve_xds(
        xds_listener,
        AdsServer::new(cache.clone()),
        shutdown_rx.clone(),
    );
    let admin_listener = tokio::net::TcpListener::bind(options.admin_address)
        .await
        .with_context(|| format!("binding the admin address {}", options.admin_address))?;
    let admin_address = admin_listener.local_addr()?;
    let admin = serve_admin(admin_listener, Arc::clone(&shared), shutdown_rx.clone());
    write_addresses(&options.state_dir, xds_address, admin_address)?;
    tracing::info!(%xds_address, %admin_address, state_dir = %options.state_dir.display(), "Gatewright running");

    // File changes wake the loop; the watcher runs on its own thread.
    let (changed_tx, mut changed) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !matches!(event.kind, notify::EventKind::Access(_))
        {
            let _ = changed_tx.send(());
        }
    })
    .context("starting the file watcher")?;
    for path in &options.config {
        watcher
            .watch(path, notify::RecursiveMode::Recursive)
            .with_context(|| format!("watching {}", path.display()))?;
    }

    let mut host = Host::new(HostConfig {
        envoy: options.envoy.clone(),
        state_dir: options.state_dir.clone(),
        xds_address,
        log_level: options.envoy_log_level.clone(),
        concurrency: options.envoy_concurrency,
        drain: options.drain,
    });
    let mut state = LoopState {
        source: FileSource::new(options.config.clone()),
        status: options.status_dir.clone().map(StatusWriter::new),
        groups: BTreeSet::new(),
        last_problems: Vec::new(),
    };

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    loop {
        apply(&options, &shared, &mut host, &mut state).await;
        // Wait for a change, then for the input to be quiet.
        let stop = tokio::select! {
            _ = changed.recv() => false,
            _ = tokio::signal::ctrl_c() => true,
            _ = terminate.recv() => true,
        };
        if stop {
            break;
        }
        loop {
            tokio::select! {
                _ = changed.recv() => continue,
                _ = tokio::time::sleep(options.debounce) => break,
            }
        }
    }

    tracing::info!("shutting down: draining and stopping Envoys");
    drop(watcher);
    host.shutdown().await;
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = xds.await;
        let _ = admin.await;
    })
    .await;
    remove_addresses(&options.state_dir);
    tracing::info!("stopped");
    Ok(())
}

struct LoopState {
    source: FileSource,
    status: Option<StatusWriter>,
    groups: BTreeSet<String>,
    last_problems: Vec<String>,
}

/// Serves ADS on `listener` until `stop` turns true.
pub fn serve_xds(
    listener: tokio::net::TcpListener,
    server: AdsServer,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let service = server.into_service();
    tokio::spawn(async move {
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

/// Serves the admin HTTP API on `listener` until `stop` turns true.
pub fn serve_admin(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let router = crate::admin::router(shared);
    tokio::spawn(async move {
        let result = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!("admin server failed: {e}");
        }
    })
}

/// Loads, translates and publishes once.
async fn apply(options: &RunOptions, shared: &Shared, host: &mut Host, state: &mut LoopState) {
    let started = Instant::now();
    let current = host.addresses();
    let controller = options.controller_name.clone();
    // Reading files and translating are CPU and blocking IO: keep them off
    // the threads serving xDS.
    let (snapshot, output, addresses) = tokio::task::block_in_place(|| {
        let mut snapshot = state.source.load(&controller);
        snapshot.input.now = Some(Time(jiff_now()));
        let addresses = assign_addresses(&requested_addresses(&snapshot.input), &current);
        snapshot.input.bind_addresses = addresses
            .iter()
            .map(|(k, ip)| (k.clone(), ip.to_string()))
            .collect();
        let mut output = translate(&snapshot.input);
        set_host_addresses(&mut output, &addresses);
        (snapshot, output, addresses)
    });

    // Problems are logged when they change, not on every reload.
    let problems: Vec<String> = snapshot.problems.iter().map(ToString::to_string).collect();
    if problems != state.last_problems {
        for p in &problems {
            tracing::warn!("{p}");
        }
        state.last_problems = problems;
    }

    publish_to_cache(&shared.cache, &output, &mut state.groups);

    let wanted: BTreeMap<ObjectKey, IpAddr> = addresses
        .into_iter()
        .filter(|(k, _)| output.gateways.contains_key(k))
        .collect();
    host.reconcile(&wanted).await;
    *shared
        .envoys
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = host.states();

    let statuses = collect(&output, &snapshot, &shared.view().statuses);
    if let Some(writer) = &mut state.status
        && let Err(e) = tokio::task::block_in_place(|| writer.write(&statuses))
    {
        tracing::error!("cannot write status files: {e:#}");
    }
    shared
        .metrics
        .record_translation(started.elapsed(), output.gateways.len());
    shared
        .metrics
        .config_problems
        .set(i64::try_from(snapshot.problems.len()).unwrap_or(i64::MAX));
    tracing::info!(
        gateways = output.gateways.len(),
        problems = snapshot.problems.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "configuration applied"
    );
    shared.publish(View {
        applied: true,
        loose_problems: loose_problems(&snapshot.problems),
        statuses,
        output: Arc::new(output),
    });
}

/// Writes each programmed Gateway's host address into its status.
pub fn set_host_addresses(output: &mut Output, addresses: &BTreeMap<ObjectKey, IpAddr>) {
    for (key, status) in &mut output.statuses.gateways {
        if let Some(ip) = addresses.get(key)
            && output.gateways.contains_key(key)
        {
            status.addresses = Some(vec![GatewayStatusAddresses {
                r#type: Some("IPAddress".to_owned()),
                value: ip.to_string(),
            }]);
        }
    }
}

/// Serves each Gateway's resources to its node group and stops serving the
/// groups of Gateways that are gone; `groups` is the set served before and
/// is updated.
pub fn publish_to_cache(cache: &Cache, output: &Output, groups: &mut BTreeSet<String>) {
    let mut next = BTreeSet::new();
    for (key, resources) in &output.gateways {
        let group = group_of(key);
        cache.set(&group, to_xds(resources));
        next.insert(group);
    }
    for gone in groups.difference(&next) {
        cache.clear(gone);
    }
    *groups = next;
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

pub(crate) fn jiff_now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

/// Writes the `xds-address` and `admin-address` files tests and
/// `gatewright status` read.
pub(crate) fn write_addresses(
    dir: &Path,
    xds: SocketAddr,
    admin: SocketAddr,
) -> anyhow::Result<()> {
    write_atomically(&dir.join("admin-address"), &admin.to_string())?;
    write_atomically(&dir.join("xds-address"), &xds.to_string())
}

/// Removes what [`write_addresses`] wrote.
pub(crate) fn remove_addresses(dir: &Path) {
    let _ = std::fs::remove_file(dir.join("admin-address"));
    let _ = std::fs::remove_file(dir.join("xds-address"));
}

/// Writes a small file so that readers never see it half-written.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))?;
    Ok(())
}
