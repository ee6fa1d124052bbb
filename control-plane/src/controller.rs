//! `gatewright controller`: Kubernetes mode. Watches the API server,
//! translates, serves xDS (every replica), and — on the replica holding the
//! Lease — writes status and provisions infrastructure.

use crate::acks::Acks;
use crate::admin::{self, Shared, View};
use crate::infra::Infra;
use crate::infra::host::{Host, HostConfig, Survivors, bind_xds, lock_state_dir};
use crate::infra::kubernetes::{KubeInfra, KubeInfraConfig, KubeMode};
use crate::k8s::acks;
use crate::k8s::leader::{self, LeaseConfig};
use crate::k8s::provider::{Changed, Kinds, Provider};
use crate::k8s::status::StatusWriter;
use crate::k8s::undecodable::UndecodableReport;
use crate::metrics::{Envoys, Metrics};
use crate::pipeline::{Pipeline, StatusSink, remove_addresses, write_addresses};
use crate::pki;
use crate::source::{ObjectId, Snapshot};
use crate::status::ObjectStatus;
use crate::xds::serve_plaintext;
use anyhow::Context as _;
use gatewright_translator::{ObjectKey, Statuses};
use gatewright_xds::{AdsServer, Cache, ReloadableServerConfig, serve_tls};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Where Envoys run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Infrastructure {
    /// A Deployment and Service per Gateway, in the Gateway's namespace.
    Kubernetes,
    /// Envoy child processes of this controller, on loopback addresses (one
    /// replica only; used by `make conformance`).
    Host,
}

/// Everything `gatewright controller` is told.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// A kubeconfig file; else the usual inference (KUBECONFIG, in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// Where Envoys run.
    pub infrastructure: Infrastructure,
    /// The controller's own namespace (Lease, xDS CA Secret).
    pub namespace: String,
    /// This replica's identity in the Lease.
    pub identity: String,
    /// The UID of this replica's Pod, which then owns the replica's xDS
    /// acknowledgement report (`k8s::acks`).
    pub pod_uid: Option<String>,
    /// The Lease's name.
    pub lease_name: String,
    /// How long a Lease lasts without renewal.
    pub lease_duration: Duration,
    /// ADS listen address.
    pub xds_address: SocketAddr,
    /// Admin HTTP listen address.
    pub admin_address: SocketAddr,
    /// Where the listen addresses (and, on host infrastructure, Envoy
    /// bootstraps and logs) are written.
    pub state_dir: PathBuf,
    /// The controllerName of our GatewayClasses.
    pub controller_name: String,
    /// How long the input must be quiet before a change is applied.
    pub debounce: Duration,
    /// The Envoy binary (host infrastructure).
    pub envoy: Option<PathBuf>,
    /// Envoy's log level (host infrastructure).
    pub envoy_log_level: String,
    /// Envoy worker threads (host infrastructure).
    pub envoy_concurrency: u32,
    /// How long listeners drain before an Envoy is stopped (host).
    pub drain: Duration,
    /// The Service in front of the xDS server, which Envoy Deployments
    /// dial (`<xds_service>.<namespace>.svc`) (kubernetes).
    pub xds_service: String,
    /// The Envoy image of provisioned Deployments (kubernetes).
    pub envoy_image: String,
    /// The CA bundle file, where Envoy runs, that BackendTLSPolicies with
    /// `wellKnownCACertificates: System` trust.
    pub system_ca_file: String,
    /// The lifetime of the xDS client certificates of provisioned Envoys
    /// (kubernetes); renewed when a third is left (`pki::Ca::renew_before`).
    pub xds_client_cert_validity: Duration,
}

/// A duration as flags take it: whole seconds (`3600`), or numbers with
/// units `d`, `h`, `m`, `s`, largest first (`365d`, `1h30m`, `90s`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".to_owned());
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let mut total: u64 = 0;
    let mut rest = text;
    // Each unit at most once and in decreasing order, so "1m1h" or "1s1s"
    // (probably typos) are refused rather than summed.
    let mut smallest_so_far = u64::MAX;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(format!("{text:?}: expected a number at {rest:?}"));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|e| format!("{text:?}: {e}"))?;
        rest = &rest[digits..];
        let unit = rest
            .chars()
            .next()
            .ok_or_else(|| format!("{text:?}: a unit (d, h, m or s) must follow {number}"))?;
        let seconds = match unit {
            'd' => 24 * 60 * 60,
            'h' => 60 * 60,
            'm' => 60,
            's' => 1,
            other => {
                return Err(format!(
                    "{text:?}: unknown unit {other:?} (use d, h, m or s)"
                ));
            }
        };
        if seconds >= smallest_so_far {
            return Err(format!(
                "{text:?}: units must be given once each, largest first"
            ));
        }
        smallest_so_far = seconds;
        rest = &rest[unit.len_utf8()..];
        total = number
            .checked_mul(seconds)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| format!("{text:?} is too long"))?;
    }
    Ok(Duration::from_secs(total))
}

/// How often a round runs with no change, to retry failed writes.
const RESYNC: Duration = Duration::from_secs(30);
/// How long a round waits for new Secret/ConfigMap watches to list before
/// translating without them.
const REFERENCE_WAIT: Duration = Duration::from_secs(5);

/// Runs until SIGINT or SIGTERM.
pub async fn run(options: ControllerOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(&options.state_dir)
        .with_context(|| format!("creating {}", options.state_dir.display()))?;
    let client = client(options.kubeconfig.as_deref()).await?;
    let kinds = Kinds::discover(&client).await?;
    tracing::info!(?kinds, "Gateway API kinds served");

    let cache = Cache::new();
    let envoys: Envoys = Arc::new(Mutex::new(BTreeMap::new()));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let owner = match options.infrastructure {
        Infrastructure::Kubernetes => {
            installation_owner(&client, &options.namespace, &options.xds_service).await
        }
        Infrastructure::Host => None,
    };
    let (leading, election) = leader::spawn(
        client.clone(),
        LeaseConfig {
            namespace: options.namespace.clone(),
            name: options.lease_name.clone(),
            identity: options.identity.clone(),
            duration: options.lease_duration,
            owner: owner.clone(),
        },
        shutdown_rx.clone(),
    );
    let shared = Arc::new(Shared {
        cache: cache.clone(),
        metrics: Metrics::new(cache.clone(), Arc::clone(&envoys)),
        envoys,
        view: RwLock::new(Arc::new(View::default())),
        leader: Some(leading.clone()),
        remote_envoys: options.infrastructure == Infrastructure::Kubernetes,
    });

    // On the host, Envoys a crashed predecessor left running keep serving;
    // they are adopted, and dial the same xDS address again.
    let (_state_lock, survivors) = match options.infrastructure {
        Infrastructure::Host => (
            Some(lock_state_dir(&options.state_dir)?),
            Survivors::find(&options.state_dir),
        ),
        Infrastructure::Kubernetes => (None, Survivors::default()),
    };
    let xds_listener = bind_xds(options.xds_address, &survivors).await?;
    let xds_address = xds_listener.local_addr()?;
    // Host-mode xDS serving waits for the first round (see
    // `serve_plaintext`); provisioned Envoys are behind a Service that
    // follows readiness instead.
    let (open_tx, open_rx) = watch::channel(false);
    // Envoys in other pods prove which Gateway they serve with a client
    // certificate from our CA; host-mode Envoys are local children on
    // loopback and need none.
    let mut kube_mode = None;
    let xds = match options.infrastructure {
        Infrastructure::Host => serve_plaintext(
            xds_listener,
            crate::xds::plaintext_server(cache.clone(), xds_address),
            open_rx,
            shutdown_rx.clone(),
        ),
        Infrastructure::Kubernetes => {
            let mut ca = pki::load_or_create_ca(&client, &options.namespace, owner.as_ref())
                .await
                .context("loading the xDS CA")?;
            ca.set_client_validity(options.xds_client_cert_validity)
                .context("--xds-client-cert-validity")?;
            let ca = Arc::new(ca);
            let dns_names = pki::service_dns_names(&options.xds_service, &options.namespace);
            let tls = Arc::new(ReloadableServerConfig::new(
                ca.server_config(&dns_names)
                    .context("issuing the xDS server certificate")?,
            ));
            pki::spawn_server_cert_renewal(
                Arc::clone(&ca),
                dns_names,
                Arc::clone(&tls),
                pki::SERVER_CERT_RENEWAL,
            );
            let server =
                AdsServer::new(cache.clone()).with_authorizer(Arc::new(pki::GatewayAuthorizer));
            let mut stop = shutdown_rx.clone();
            kube_mode = Some(KubeMode::new(
                KubeInfra::new(
                    client.clone(),
                    KubeInfraConfig {
                        controller_namespace: options.namespace.clone(),
                        xds_service: options.xds_service.clone(),
                        xds_port: xds_address.port(),
                        envoy_image: options.envoy_image.clone(),
                    },
                ),
                ca,
            ));
            tokio::spawn(async move {
                let shutdown = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                if let Err(e) = serve_tls(server, xds_listener, tls, shutdown).await {
                    tracing::error!("xDS server failed: {e}");
                }
            })
        }
    };
    let admin_listener = tokio::net::TcpListener::bind(options.admin_address)
        .await
        .with_context(|| format!("binding the admin address {}", options.admin_address))?;
    let admin_address = admin_listener.local_addr()?;
    let admin = admin::serve(admin_listener, Arc::clone(&shared), shutdown_rx.clone());
    write_addresses(&options.state_dir, xds_address, admin_address)?;
    tracing::info!(%xds_address, %admin_address, identity = %options.identity, "Gatewright controller running");

    let (mut provider, mut changed) = Provider::start(client.clone(), kinds);
    if let Some(kube) = &kube_mode {
        provider.watch_provisioned(&kube.selector());
    }
    // Made before the watches are listed so that adopted Envoys are
    // supervised (and stopped by a clean shutdown) from the start.
    let mut infra = match kube_mode {
        Some(kube) => Infra::Kubernetes(Box::new(kube)),
        None => {
            let mut host = Host::new(HostConfig {
                envoy: options
                    .envoy
                    .clone()
                    .context("host infrastructure needs an Envoy binary")?,
                state_dir: options.state_dir.clone(),
                xds_address,
                log_level: options.envoy_log_level.clone(),
                concurrency: options.envoy_concurrency,
                drain: options.drain,
            });
            host.adopt(survivors);
            Infra::Host(host)
        }
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let stopped = tokio::select! {
        ready = provider.wait_until_ready() => {
            ready?;
            false
        }
        _ = tokio::signal::ctrl_c() => true,
        _ = terminate.recv() => true,
    };
    if stopped {
        infra.shutdown().await;
        return Ok(());
    }
    tracing::info!("watches listed; translating");

    let mut pipeline = Pipeline::new(Arc::clone(&shared), infra);
    pipeline.set_system_ca_file(options.system_ca_file.clone());
    if options.infrastructure == Infrastructure::Kubernetes {
        // Envoys of a Gateway may be connected to any replica: each one
        // reports what its streams hold, and the leader reads them all.
        acks::spawn_publisher(
            client.clone(),
            options.namespace.clone(),
            options.identity.clone(),
            acks::pod_owner(&options.identity, options.pod_uid.as_deref())
                .or_else(|| owner.clone()),
            cache.clone(),
            shutdown_rx.clone(),
        );
        let (peers, _watch) =
            acks::spawn_watcher(client.clone(), &options.namespace, &options.identity);
        pipeline.set_acks(Acks::with_peers(cache.clone(), peers));
    }
    let mut acked = pipeline.acks().waiter();
    let writer = StatusWriter::new(client.clone(), options.controller_name.clone());
    let mut undecodable =
        UndecodableReport::new(client.clone(), &options.controller_name, &options.identity);
    let mut references_pending_since: Option<Instant> = None;
    let mut leading_changes = leading.clone();
    let mut pending = Pending::Full;
    // Counts the changes announced by the watches: a round woken by
    // anything else (an acknowledgement, the leader, the resync) sees the
    // same objects as the one before, and reuses its translation.
    let mut revision: u64 = 0;
    loop {
        let complete = match std::mem::replace(&mut pending, Pending::Nothing) {
            Pending::Endpoints(services) if shared.view().applied => {
                pipeline.refresh_endpoints(&provider.endpoints_input(&services), &services);
                true
            }
            _ => match snapshot(
                &options,
                &shared,
                &mut undecodable,
                &mut provider,
                &mut references_pending_since,
                &mut revision,
            ) {
                Some(snapshot) => {
                    let mut sink = KubeSink {
                        writer: &writer,
                        undecodable: &mut undecodable,
                        provider: &provider,
                    };
                    let leads = *leading.borrow();
                    pipeline.apply(snapshot, &mut sink, leads).await;
                    // Every Gateway is published now: host-mode xDS
                    // serving can begin.
                    open_tx.send_replace(true);
                    true
                }
                None => false,
            },
        };
        // A round that waited for new Secret watches comes back soon even
        // if their first list brings nothing new.
        let wait = if complete {
            RESYNC
        } else {
            Duration::from_millis(200)
        };
        tokio::select! {
            Some(c) = changed.recv() => {
                revision += 1;
                pending.add(c);
            }
            _ = leading_changes.changed() => pending = Pending::Full,
            () = acked.wait() => pending = Pending::Full,
            _ = tokio::time::sleep(wait) => pending = Pending::Full,
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
        // Optionally, wait for the input to be quiet; changes that came
        // while the round ran are taken together either way.
        if !options.debounce.is_zero() {
            loop {
                tokio::select! {
                    Some(c) = changed.recv() => {
                        revision += 1;
                        pending.add(c);
                    }
                    _ = tokio::time::sleep(options.debounce) => break,
                }
            }
        }
        while let Ok(c) = changed.try_recv() {
            revision += 1;
            pending.add(c);
        }
    }

    tracing::info!("shutting down");
    pipeline.shutdown().await;
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = election.await;
        let _ = xds.await;
        let _ = admin.await;
    })
    .await;
    remove_addresses(&options.state_dir);
    tracing::info!("stopped");
    Ok(())
}

/// The installation's xDS Service as an owner for what the controller
/// creates in its own namespace (the xDS CA Secret, the Lease), so that
/// `helm uninstall` leaves nothing behind. `None`, logged, when the Service
/// cannot be read (a controller run without one, as in tests).
async fn installation_owner(
    client: &kube::Client,
    namespace: &str,
    service: &str,
) -> Option<OwnerReference> {
    let api: kube::Api<Service> = kube::Api::namespaced(client.clone(), namespace);
    match api.get_opt(service).await {
        Ok(Some(svc)) => {
            let uid = svc.metadata.uid?;
            Some(OwnerReference {
                api_version: "v1".to_owned(),
                kind: "Service".to_owned(),
                name: service.to_owned(),
                uid,
                ..OwnerReference::default()
            })
        }
        Ok(None) => {
            tracing::info!(%namespace, %service, "no xDS Service: the xDS CA Secret and the Lease get no owner");
            None
        }
        Err(e) => {
            tracing::warn!(%namespace, %service, "cannot read the xDS Service ({e}): the xDS CA Secret and the Lease get no owner");
            None
        }
    }
}

/// A client from `--kubeconfig`, or inferred (KUBECONFIG, ~/.kube/config,
/// in-cluster).
pub async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no Kubernetes configuration found (pass --kubeconfig)")?,
    };
    kube::Client::try_from(config).context("creating the Kubernetes client")
}

/// What the next round has to do.
enum Pending {
    Nothing,
    /// Only these Services' EndpointSlices changed.
    Endpoints(BTreeSet<ObjectKey>),
    /// Translate everything.
    Full,
}

impl Pending {
    fn add(&mut self, change: Changed) {
        match (&mut *self, change) {
            (Pending::Full, _) => {}
            (Pending::Endpoints(services), Changed::Endpoints(key)) => {
                services.insert(key);
            }
            (Pending::Nothing, Changed::Endpoints(key)) => {
                *self = Pending::Endpoints(BTreeSet::from([key]));
            }
            (_, Changed::Kind(_)) => *self = Pending::Full,
        }
    }
}

/// The stores' contents as a snapshot, or `None` to put the round off
/// while new Secret or ConfigMap watches list: a Gateway whose certificate
/// Secret is still being fetched would be reported as having an invalid
/// reference. The wait is bounded by [`REFERENCE_WAIT`].
fn snapshot(
    options: &ControllerOptions,
    shared: &Shared,
    undecodable: &mut UndecodableReport,
    provider: &mut Provider,
    pending_since: &mut Option<Instant>,
    revision: &mut u64,
) -> Option<Snapshot> {
    let (mut input, started) =
        tokio::task::block_in_place(|| provider.snapshot(&options.controller_name));
    if started {
        // New Secret or ConfigMap watches: what they list is new input.
        *revision += 1;
    }
    input.kubernetes_infrastructure = options.infrastructure == Infrastructure::Kubernetes;
    undecodable.observe(provider.undecodable(), &shared.metrics);
    if !provider.references_ready() {
        let since = *pending_since.get_or_insert_with(Instant::now);
        if since.elapsed() < REFERENCE_WAIT {
            return None;
        }
        tracing::warn!(
            "some Secret or ConfigMap watches have not listed yet; translating without them"
        );
    }
    *pending_since = None;
    Some(Snapshot {
        input,
        proxy_parameters: provider.proxy_parameters(),
        revision: Some(*revision),
        ..Snapshot::default()
    })
}

/// Statuses go to the API server, against the live objects the provider
/// holds; so do the Events about objects that cannot be decoded.
struct KubeSink<'a> {
    writer: &'a StatusWriter,
    undecodable: &'a mut UndecodableReport,
    provider: &'a Provider,
}

impl StatusSink for KubeSink<'_> {
    async fn write(&mut self, statuses: &Statuses, _collected: &BTreeMap<ObjectId, ObjectStatus>) {
        let report = self.writer.write(self.provider, statuses).await;
        if report.written + report.failed + report.conflicts > 0 {
            tracing::info!(
                written = report.written,
                conflicts = report.conflicts,
                failed = report.failed,
                "statuses written"
            );
        }
        self.undecodable.publish().await;
    }
}

#[cfg(test)]
mod duration_tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_parse_with_and_without_units() {
        let secs = Duration::from_secs;
        assert_eq!(parse_duration("3600"), Ok(secs(3600)));
        assert_eq!(parse_duration("365d"), Ok(secs(365 * 86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(secs(5400)));
        assert_eq!(parse_duration("2d12h"), Ok(secs(216_000)));
        assert_eq!(parse_duration(" 90s "), Ok(secs(90)));
        for bad in [
            "",
            "d",
            "5x",
            "1m1h",
            "1s1s",
            "1.5h",
            "-1d",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
