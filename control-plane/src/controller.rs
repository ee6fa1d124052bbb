//! `gatewright controller`: Kubernetes mode. Watches the API server,
//! translates, serves xDS (every replica), and — on the replica holding the
//! Lease — writes status and provisions infrastructure.

use crate::admin::{Shared, View};
use crate::host::{Host, HostConfig, assign_addresses, group_of};
use crate::infra::kubernetes::{
    KubeInfra, KubeInfraConfig, ListenerPort, Provision, resolve_parameters,
};
use crate::k8s::leader::{self, LeaseConfig};
use crate::k8s::provider::{Changed, Kinds, Provider};
use crate::k8s::status::StatusWriter;
use crate::k8s::undecodable::UndecodableReport;
use crate::metrics::{Envoys, Metrics};
use crate::pki;
use crate::run::{
    jiff_now, publish_to_cache, remove_addresses, requested_addresses, serve_admin, serve_xds,
    set_host_addresses, to_xds, write_addresses,
};
use crate::source::Snapshot;
use crate::status::collect;
use anyhow::Context as _;
use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
use gatewright_translator::api::gateways::{Gateway, GatewayStatus};
use gatewright_translator::{GatewayResources, ObjectKey, Output, refresh_endpoints, translate};
use gatewright_xds::{AdsServer, Cache, ReloadableServerConfig, serve_tls};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource as _;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
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
    let (leading, election) = leader::spawn(
        client.clone(),
        LeaseConfig {
            namespace: options.namespace.clone(),
            name: options.lease_name.clone(),
            identity: options.identity.clone(),
            duration: options.lease_duration,
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

    let xds_listener = tokio::net::TcpListener::bind(options.xds_address)
        .await
        .with_context(|| format!("binding the xDS address {}", options.xds_address))?;
    let xds_address = xds_listener.local_addr()?;
    // Envoys in other pods prove which Gateway they serve with a client
    // certificate from our CA; host-mode Envoys are local children on
    // loopback and need none.
    let mut kube_infra = None;
    let xds = match options.infrastructure {
        Infrastructure::Host => serve_xds(
            xds_listener,
            AdsServer::new(cache.clone()),
            shutdown_rx.clone(),
        ),
        Infrastructure::Kubernetes => {
            let ca = Arc::new(
                pki::load_or_create_ca(&client, &options.namespace)
                    .await
                    .context("loading the xDS CA")?,
            );
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
            kube_infra = Some(KubeMode {
                infra: KubeInfra::new(
                    client.clone(),
                    KubeInfraConfig {
                        controller_namespace: options.namespace.clone(),
                        xds_service: options.xds_service.clone(),
                        xds_port: xds_address.port(),
                        envoy_image: options.envoy_image.clone(),
                    },
                ),
                ca,
                client: client.clone(),
            });
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
    let admin = serve_admin(admin_listener, Arc::clone(&shared), shutdown_rx.clone());
    write_addresses(&options.state_dir, xds_address, admin_address)?;
    tracing::info!(%xds_address, %admin_address, identity = %options.identity, "Gatewright controller running");

    let (mut provider, mut changed) = Provider::start(client.clone(), kinds);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        ready = provider.wait_until_ready() => ready?,
        _ = tokio::signal::ctrl_c() => return Ok(()),
        _ = terminate.recv() => return Ok(()),
    }
    tracing::info!("watches listed; translating");

    let mut host = match options.infrastructure {
        Infrastructure::Host => Some(Host::new(HostConfig {
            envoy: options
                .envoy
                .clone()
                .context("host infrastructure needs an Envoy binary")?,
            state_dir: options.state_dir.clone(),
            xds_address,
            log_level: options.envoy_log_level.clone(),
            concurrency: options.envoy_concurrency,
            drain: options.drain,
        })),
        Infrastructure::Kubernetes => None,
    };
    let mut state = RoundState {
        writer: StatusWriter::new(client.clone(), options.controller_name.clone()),
        undecodable: UndecodableReport::new(
            client.clone(),
            &options.controller_name,
            &options.identity,
        ),
        groups: BTreeSet::new(),
        references_pending_since: None,
    };
    let mut leading_changes = leading.clone();
    let mut pending = Pending::Full;
    loop {
        let complete = match std::mem::replace(&mut pending, Pending::Nothing) {
            Pending::Endpoints(services) if shared.view().applied => {
                endpoints_round(&shared, &provider, &services);
                true
            }
            _ => {
                round(
                    &options,
                    &shared,
                    &mut provider,
                    host.as_mut(),
                    kube_infra.as_ref(),
                    *leading.borrow(),
                    &mut state,
                )
                .await
            }
        };
        // A round that waited for new Secret watches comes back soon even
        // if their first list brings nothing new.
        let wait = if complete {
            RESYNC
        } else {
            Duration::from_millis(200)
        };
        tokio::select! {
            Some(c) = changed.recv() => pending.add(c),
            _ = leading_changes.changed() => pending = Pending::Full,
            _ = tokio::time::sleep(wait) => pending = Pending::Full,
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
        loop {
            tokio::select! {
                Some(c) = changed.recv() => pending.add(c),
                _ = tokio::time::sleep(options.debounce) => break,
            }
        }
    }

    tracing::info!("shutting down");
    if let Some(host) = host.as_mut() {
        host.shutdown().await;
    }
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

struct RoundState {
    writer: StatusWriter,
    undecodable: UndecodableReport,
    groups: BTreeSet<String>,
    references_pending_since: Option<Instant>,
}

/// Recomputes only the endpoints of `services` in the last output and
/// serves them to the Gateways that use them: pods come and go far more
/// often than anything else changes, and that costs no translation of
/// unrelated Gateways. Statuses do not depend on endpoints.
fn endpoints_round(shared: &Shared, provider: &Provider, services: &BTreeSet<ObjectKey>) {
    let started = Instant::now();
    let view = shared.view();
    let input = provider.endpoints_input(services);
    let mut output = Output::clone(&view.output);
    let changed = refresh_endpoints(&input, &mut output, services);
    for key in &changed {
        if let Some(resources) = output.gateways.get(key) {
            shared.cache.set(&group_of(key), to_xds(resources));
        }
    }
    tracing::debug!(
        services = services.len(),
        gateways = changed.len(),
        elapsed_us = started.elapsed().as_micros() as u64,
        "endpoints refreshed"
    );
    shared.publish(View {
        applied: true,
        output: Arc::new(output),
        statuses: view.statuses.clone(),
        loose_problems: view.loose_problems.clone(),
    });
}

/// Translates the stores' contents and publishes the result; false when
/// the round was put off to wait for new Secret or ConfigMap watches.
async fn round(
    options: &ControllerOptions,
    shared: &Shared,
    provider: &mut Provider,
    host: Option<&mut Host>,
    kube_infra: Option<&KubeMode>,
    leading: bool,
    state: &mut RoundState,
) -> bool {
    let started = Instant::now();
    let (mut input, _) =
        tokio::task::block_in_place(|| provider.snapshot(&options.controller_name));
    state
        .undecodable
        .observe(provider.undecodable(), &shared.metrics);
    // A Gateway whose certificate Secret is still being fetched would be
    // reported as having an invalid reference: wait (a little) for it.
    if !provider.references_ready() {
        let since = *state.references_pending_since.get_or_insert(started);
        if since.elapsed() < REFERENCE_WAIT {
            return false;
        }
        tracing::warn!(
            "some Secret or ConfigMap watches have not listed yet; translating without them"
        );
    }
    state.references_pending_since = None;

    input.now = Some(Time(jiff_now()));
    let current = host.as_ref().map(|h| h.addresses()).unwrap_or_default();
    let (mut output, addresses) = tokio::task::block_in_place(|| {
        let addresses = if host.is_some() {
            assign_addresses(&requested_addresses(&input), &current)
        } else {
            BTreeMap::new()
        };
        input.bind_addresses = addresses
            .iter()
            .map(|(k, ip)| (k.clone(), ip.to_string()))
            .collect();
        let mut output = translate(&input);
        set_host_addresses(&mut output, &addresses);
        (output, addresses)
    });

    publish_to_cache(&shared.cache, &output, &mut state.groups);
    if let Some(host) = host {
        let wanted: BTreeMap<ObjectKey, IpAddr> = addresses
            .into_iter()
            .filter(|(k, _)| output.gateways.contains_key(k))
            .collect();
        host.reconcile(&wanted).await;
        *shared
            .envoys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = host.states();
    }

    if leading && let Some(kube) = kube_infra {
        kube.provision(provider, &mut output).await;
    }

    if leading {
        let report = state.writer.write(provider, &output).await;
        if report.written + report.failed + report.conflicts > 0 {
            tracing::info!(
                written = report.written,
                conflicts = report.conflicts,
                failed = report.failed,
                "statuses written"
            );
        }
        state.undecodable.publish().await;
    }

    let statuses = collect(&output, &Snapshot::default(), &shared.view().statuses);
    shared
        .metrics
        .record_translation(started.elapsed(), output.gateways.len());
    tracing::debug!(
        gateways = output.gateways.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        leading,
        "configuration applied"
    );
    shared.publish(View {
        applied: true,
        loose_problems: Vec::new(),
        statuses,
        output: Arc::new(output),
    });
    true
}

/// Kubernetes infrastructure: the provisioner and the CA that issues each
/// Gateway's xDS client certificate.
struct KubeMode {
    infra: KubeInfra,
    ca: Arc<pki::Ca>,
    client: kube::Client,
}

impl KubeMode {
    /// Provisions every programmed Gateway and writes what came of it into
    /// the Gateway's status: its addresses, or why it is not programmed.
    async fn provision(&self, provider: &Provider, output: &mut Output) {
        let mut failures: BTreeMap<ObjectKey, String> = BTreeMap::new();
        let mut provisions = Vec::new();
        for (key, resources) in &output.gateways {
            let Some(gateway) = provider.gateway(key) else {
                continue;
            };
            let parameters = match provider.gateway_class(&gateway.spec.gateway_class_name) {
                Some(class) => resolve_parameters(&self.client, &class, &gateway).await,
                None => Ok(None),
            };
            let parameters = match parameters {
                Ok(p) => p,
                Err(message) => {
                    failures.insert(key.clone(), message);
                    continue;
                }
            };
            let Some(owner) = gateway.controller_owner_ref(&()) else {
                continue;
            };
            if let Err(e) = self
                .ca
                .ensure_client_secret(&self.client, &key.namespace, &key.name, owner)
                .await
            {
                failures.insert(key.clone(), format!("{e:#}"));
                continue;
            }
            provisions.push(Provision {
                gateway: (*gateway).clone(),
                parameters,
                ports: listener_ports(&gateway, resources),
            });
        }
        for (key, result) in self.infra.reconcile(&provisions).await {
            match result {
                Ok(infra) => {
                    if let Some(status) = output.statuses.gateways.get_mut(&key) {
                        if infra.addresses.is_empty() {
                            not_programmed(
                                status,
                                "AddressNotAssigned",
                                "waiting for the Envoy Service to get an address".to_owned(),
                            );
                        } else {
                            status.addresses = Some(infra.addresses);
                        }
                    }
                }
                Err(message) => {
                    failures.insert(key, message);
                }
            }
        }
        for (key, message) in failures {
            tracing::warn!(gateway = %key, "cannot provision: {message}");
            if let Some(status) = output.statuses.gateways.get_mut(&key) {
                not_programmed(
                    status,
                    "Invalid",
                    format!("cannot provision Envoy: {message}"),
                );
            }
        }
    }
}

/// The ports a Gateway's Envoy listens on, with the protocol of the
/// Gateway listener on that port (TCP when it comes from elsewhere, e.g. a
/// ListenerSet).
fn listener_ports(gateway: &Gateway, resources: &GatewayResources) -> Vec<ListenerPort> {
    let mut ports: BTreeMap<u16, String> = BTreeMap::new();
    for listener in &resources.listeners {
        let Some(port) = listener.address.as_ref().and_then(|a| match &a.address {
            Some(address::Address::SocketAddress(s)) => match s.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(p)) => u16::try_from(p).ok(),
                _ => None,
            },
            _ => None,
        }) else {
            continue;
        };
        let protocol = gateway
            .spec
            .listeners
            .iter()
            .find(|l| i64::from(l.port) == i64::from(port))
            .map_or_else(|| "TCP".to_owned(), |l| l.protocol.clone());
        ports.entry(port).or_insert(protocol);
    }
    ports
        .into_iter()
        .map(|(port, protocol)| ListenerPort { port, protocol })
        .collect()
}

/// Turns a Gateway's Programmed condition False with `reason`.
fn not_programmed(status: &mut GatewayStatus, reason: &str, message: String) {
    for c in status.conditions.iter_mut().flatten() {
        if c.type_ == "Programmed" {
            c.status = "False".to_owned();
            c.reason = reason.to_owned();
            c.message = message.clone();
        }
    }
}
