//! `gatewright run`: the standalone control plane. Reads a directory of
//! YAML, translates it, serves xDS, runs an Envoy per Gateway and keeps all
//! of it up to date as files change.

use crate::admin::{self, Shared, View};
use crate::infra::Infra;
use crate::infra::host::{Host, HostConfig, Survivors, bind_xds, lock_state_dir};
use crate::metrics::{Envoys, Metrics};
use crate::pipeline::{Pipeline, StatusSink, remove_addresses, write_addresses};
use crate::source::{FileSource, ObjectId};
use crate::status::{ObjectStatus, StatusWriter};
use crate::xds::serve_plaintext;
use anyhow::Context as _;
use gatewright_translator::Statuses;
use gatewright_xds::Cache;
use notify::Watcher as _;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
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
    /// How long the input must be quiet before a change is applied (zero:
    /// at once; changes that come during a round are applied together).
    pub debounce: Duration,
    /// How Envoys are run; its `xds_address` and `state_dir` are filled in.
    pub envoy: PathBuf,
    /// Envoy's log level.
    pub envoy_log_level: String,
    /// Envoy worker threads.
    pub envoy_concurrency: u32,
    /// How long listeners drain before an Envoy is stopped.
    pub drain: Duration,
    /// The CA bundle file BackendTLSPolicies with
    /// `wellKnownCACertificates: System` trust.
    pub system_ca_file: String,
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

    // Envoys a crashed predecessor left running keep serving; they are
    // adopted, and dial the same xDS address again.
    let _state_lock = lock_state_dir(&options.state_dir)?;
    let survivors = Survivors::find(&options.state_dir);
    let xds_listener = bind_xds(options.xds_address, &survivors).await?;
    let xds_address = xds_listener.local_addr()?;
    let (open_tx, open_rx) = watch::channel(false);
    let xds = serve_plaintext(
        xds_listener,
        crate::xds::plaintext_server(cache.clone(), xds_address),
        open_rx,
        shutdown_rx.clone(),
    );
    let admin_listener = tokio::net::TcpListener::bind(options.admin_address)
        .await
        .with_context(|| format!("binding the admin address {}", options.admin_address))?;
    let admin_address = admin_listener.local_addr()?;
    let admin = admin::serve(admin_listener, Arc::clone(&shared), shutdown_rx.clone());
    write_addresses(&options.state_dir, xds_address, admin_address)?;
    tracing::info!(%xds_address, %admin_address, state_dir = %options.state_dir.display(), "Gatewright running");

    // File changes wake the loop, saying which paths changed; the watcher
    // runs on its own thread.
    let (changed_tx, mut changed) = mpsc::unbounded_channel::<Changed>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let change = match event {
            Ok(event) if matches!(event.kind, notify::EventKind::Access(_)) => return,
            Ok(event) if event.need_rescan() || event.paths.is_empty() => Changed::All,
            Ok(event) => Changed::Paths(event.paths),
            Err(_) => Changed::All,
        };
        let _ = changed_tx.send(change);
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
    host.adopt(survivors);
    let mut pipeline = Pipeline::new(Arc::clone(&shared), Infra::Host(host));
    pipeline.set_system_ca_file(options.system_ca_file.clone());
    let mut source = FileSource::new(options.config.clone());
    let mut sink = FileSink(options.status_dir.clone().map(StatusWriter::new));

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut acked = pipeline.acks().waiter();
    loop {
        // Reading files is blocking IO: keep it off the threads serving xDS.
        let loading = std::time::Instant::now();
        let snapshot =
            tokio::task::block_in_place(|| source.load_changed(&options.controller_name));
        tracing::debug!(load_us = loading.elapsed().as_micros() as u64, "files read");
        pipeline.apply(snapshot, &mut sink, true).await;
        // Every Gateway is published now: serving xDS can begin.
        open_tx.send_replace(true);
        // Wait for a change, or for an Envoy to acknowledge a configuration
        // a Gateway waits for. Changes that came while the round ran are
        // waiting already, so a burst costs one round, not one per file.
        let stop = tokio::select! {
            change = changed.recv() => {
                if let Some(change) = change {
                    note(&mut source, change);
                }
                false
            }
            () = acked.wait() => false,
            _ = tokio::signal::ctrl_c() => true,
            _ = terminate.recv() => true,
        };
        if stop {
            break;
        }
        // Optionally, wait for the input to be quiet.
        if !options.debounce.is_zero() {
            loop {
                tokio::select! {
                    change = changed.recv() => match change {
                        Some(change) => note(&mut source, change),
                        None => break,
                    },
                    _ = tokio::time::sleep(options.debounce) => break,
                }
            }
        }
        while let Ok(change) = changed.try_recv() {
            note(&mut source, change);
        }
    }

    tracing::info!("shutting down: draining and stopping Envoys");
    drop(watcher);
    pipeline.shutdown().await;
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

/// What the file watcher saw.
enum Changed {
    /// These files or directories changed.
    Paths(Vec<PathBuf>),
    /// Anything may have changed (the watcher lost events, or failed).
    All,
}

fn note(source: &mut FileSource, change: Changed) {
    match change {
        Changed::Paths(paths) => source.mark_changed(paths),
        Changed::All => source.mark_all_changed(),
    }
}

/// Standalone statuses go to status files, if asked for.
struct FileSink(Option<StatusWriter>);

impl StatusSink for FileSink {
    fn write<'a>(
        &'a mut self,
        _statuses: &'a Statuses,
        collected: &'a BTreeMap<ObjectId, ObjectStatus>,
    ) -> impl Future<Output = ()> + 'a {
        if let Some(writer) = &mut self.0
            && let Err(e) = tokio::task::block_in_place(|| writer.write(collected))
        {
            tracing::error!("cannot write status files: {e:#}");
        }
        std::future::ready(())
    }
}
