//! Kubernetes infrastructure (`--infrastructure kubernetes`): one Envoy
//! fleet per Gateway, provisioned in the Gateway's namespace as a
//! ServiceAccount, a ConfigMap (the Envoy bootstrap), a Deployment and a
//! Service, all owned by the Gateway so that Kubernetes garbage-collects
//! them with it. Envoys reach Gatewright's xDS Service over mutual TLS with
//! a per-Gateway client certificate Secret.
//!
//! Object builders ([`objects`], [`bootstrap`]) are pure; [`KubeInfra`]
//! applies them with server-side apply and removes what is no longer
//! wanted. How the pods are built, and why:
//!
//! - Envoy's admin interface listens on 127.0.0.1 only: it can drain, quit
//!   and reconfigure Envoy, so nothing off the pod may reach it. The kubelet
//!   probes readiness through a small static listener (port 19001, or the
//!   next port no Gateway listener uses) that forwards exactly `GET /ready`
//!   to the admin interface.
//! - On shutdown a `preStop` hook asks the admin interface for a graceful
//!   listener drain, then waits for the drain time before the kubelet's
//!   SIGTERM; the grace period covers both.
//! - Envoy runs as a non-root user with no capabilities; the namespaced
//!   sysctl `net.ipv4.ip_unprivileged_port_start=0` lets it bind the
//!   Gateway's ports below 1024.

pub mod bootstrap;
pub mod objects;
pub mod params;

pub use objects::{ProxyObjects, build, client_secret_name, object_name};
pub use params::{ProxyParameters, ProxyParametersSpec};

use super::{Learned, NotProgrammed};
use crate::source::Snapshot;
use anyhow::Context as _;
use futures::StreamExt as _;
use gatewright_translator::api::gatewayclasses::GatewayClass;
use gatewright_translator::api::gateways::{Gateway, GatewayStatusAddresses};
use gatewright_translator::{GatewayResources, ObjectKey, Output};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use kube::Resource;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

/// Annotation holding a hash of what Gatewright last applied to an object,
/// so an unchanged object is not applied again.
pub const APPLIED_HASH_ANNOTATION: &str = "gatewright.dev/applied-hash";
/// How many Gateways are provisioned at the same time.
const PARALLELISM: usize = 8;
/// How long a round waits for a load balancer to give a Service the IP a
/// Gateway asked for, right after asking.
const LOAD_BALANCER_WAIT: Duration = Duration::from_secs(3);

/// What the Kubernetes infrastructure needs to know about its own
/// installation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeInfraConfig {
    /// The namespace the controller (and its xDS Service) runs in.
    pub controller_namespace: String,
    /// The name of the Service in front of the controller's xDS server.
    pub xds_service: String,
    /// That Service's xDS (gRPC) port.
    pub xds_port: u16,
    /// The Envoy image, e.g. `envoyproxy/envoy:v1.40.0`.
    pub envoy_image: String,
}

impl KubeInfraConfig {
    /// The label selector of every object this installation provisions.
    pub fn selector(&self) -> String {
        format!(
            "{}={},{}={}",
            objects::MANAGED_BY_LABEL,
            objects::MANAGED_BY,
            objects::CONTROLLER_LABEL,
            objects::label_value(&self.controller_namespace)
        )
    }
}

/// One port a Gateway's listeners use.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ListenerPort {
    /// The port number.
    pub port: u16,
    /// The listener protocol: HTTP, HTTPS, TLS, TCP or UDP.
    pub protocol: String,
}

/// One Gateway to provision.
#[derive(Clone, Debug)]
pub struct Provision {
    /// The Gateway as read from the API server (it must have a uid).
    pub gateway: Gateway,
    /// The resolved parameters (see [`resolve_parameters`]); `None` means
    /// the defaults.
    pub parameters: Option<ProxyParametersSpec>,
    /// The ports its listeners use.
    pub ports: Vec<ListenerPort>,
}

/// What a Gateway's status needs from its infrastructure.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InfraStatus {
    /// For `status.addresses`: the Service's load-balancer IPs and host
    /// names, or, while it has none (or is not a LoadBalancer), its
    /// cluster IPs.
    pub addresses: Vec<GatewayStatusAddresses>,
    /// How many Envoy pods are ready.
    pub ready_replicas: i32,
}

/// Provisions Envoy fleets in a cluster.
pub struct KubeInfra {
    client: kube::Client,
    config: KubeInfraConfig,
}

/// Everything Gatewright provisioned (for this controller installation),
/// as listed at the start of a reconcile, by namespace and name.
#[derive(Default)]
struct Existing {
    service_accounts: Option<BTreeMap<(String, String), ServiceAccount>>,
    config_maps: Option<BTreeMap<(String, String), ConfigMap>>,
    deployments: Option<BTreeMap<(String, String), Deployment>>,
    services: Option<BTreeMap<(String, String), Service>>,
}

impl KubeInfra {
    /// An infrastructure that provisions with `client`.
    pub fn new(client: kube::Client, config: KubeInfraConfig) -> Self {
        Self { client, config }
    }

    /// The configuration it was made with.
    pub fn config(&self) -> &KubeInfraConfig {
        &self.config
    }

    /// Makes the cluster hold exactly the objects for these Gateways
    /// (server-side apply, field manager `gatewright`, skipped for objects
    /// whose last applied content is unchanged), deletes the objects this
    /// installation provisioned for Gateways no longer in the list, and
    /// returns for each Gateway its addresses and ready Envoy count, or why
    /// it could not be provisioned. One Gateway failing does not stop the
    /// others; failed deletions are logged and retried on the next call.
    pub async fn reconcile(
        &self,
        gateways: &[Provision],
    ) -> BTreeMap<ObjectKey, Result<InfraStatus, String>> {
        let selector = self.config.selector();
        let (service_accounts, config_maps, deployments, services) = futures::join!(
            self.list::<ServiceAccount>(&selector),
            self.list::<ConfigMap>(&selector),
            self.list::<Deployment>(&selector),
            self.list::<Service>(&selector),
        );
        let existing = Existing {
            service_accounts,
            config_maps,
            deployments,
            services,
        };

        // Every Gateway in the list keeps its objects, even one whose
        // provisioning fails below: a transient error must not delete a
        // serving fleet.
        let mut out = BTreeMap::new();
        let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
        let mut owners: BTreeMap<(String, String), ObjectKey> = BTreeMap::new();
        let mut todo = Vec::new();
        let mut seen = BTreeSet::new();
        // Sorted, so that of two Gateways whose names clash the same one
        // always wins; a Gateway listed twice is provisioned once.
        let mut sorted: Vec<&Provision> = gateways.iter().collect();
        sorted.sort_by_key(|p| gateway_key(&p.gateway));
        for provision in sorted {
            let key = gateway_key(&provision.gateway);
            if !seen.insert(key.clone()) {
                continue;
            }
            let object = (key.namespace.clone(), object_name(&key.name));
            wanted.insert(object.clone());
            if let Some(first) = owners.get(&object) {
                out.insert(
                    key.clone(),
                    Err(format!(
                        "the objects for this Gateway would be named {}, which Gateway {}/{} already uses",
                        object.1, first.namespace, first.name
                    )),
                );
                continue;
            }
            owners.insert(object, key.clone());
            todo.push((key, provision));
        }

        let results: Vec<(ObjectKey, Result<InfraStatus, String>)> =
            futures::stream::iter(todo.into_iter().map(|(key, provision)| {
                let existing = &existing;
                async move {
                    // Failures are logged once, by the caller that reports them.
                    let result = self
                        .provision(provision, existing)
                        .await
                        .map_err(|e| format!("{e:#}"));
                    (key, result)
                }
            }))
            .buffer_unordered(PARALLELISM)
            .collect()
            .await;
        out.extend(results);

        self.delete_unwanted(&existing.service_accounts, &wanted)
            .await;
        self.delete_unwanted(&existing.config_maps, &wanted).await;
        self.delete_unwanted(&existing.deployments, &wanted).await;
        self.delete_unwanted(&existing.services, &wanted).await;
        out
    }

    async fn provision(
        &self,
        provision: &Provision,
        existing: &Existing,
    ) -> anyhow::Result<InfraStatus> {
        if provision.ports.iter().all(|p| p.port == 0) {
            anyhow::bail!("the Gateway has no listener port to expose");
        }
        let params = provision.parameters.clone().unwrap_or_default();
        let objects = build(&provision.gateway, &params, &provision.ports, &self.config)?;
        let gateway_name = provision
            .gateway
            .metadata
            .name
            .as_deref()
            .unwrap_or_default();
        // Every object is checked before any is written, so that a name
        // clash with someone else's object leaves nothing half-provisioned.
        let service_account = self
            .plan(
                objects.service_account,
                existing.service_accounts.as_ref(),
                gateway_name,
            )
            .await?;
        let config_map = self
            .plan(
                objects.config_map,
                existing.config_maps.as_ref(),
                gateway_name,
            )
            .await?;
        let deployment = self
            .plan(
                objects.deployment,
                existing.deployments.as_ref(),
                gateway_name,
            )
            .await?;
        let service = self
            .plan(objects.service, existing.services.as_ref(), gateway_name)
            .await?;
        // Dependencies first: pods of a new Deployment need their
        // ServiceAccount and ConfigMap.
        self.execute(service_account).await?;
        self.execute(config_map).await?;
        let deployment = self.execute(deployment).await?;
        let asked_now = matches!(&service, Plan::Apply(_));
        let mut service = self.execute(service).await?;
        if asked_now {
            service = self.await_requested_ip(service).await;
        }
        Ok(InfraStatus {
            addresses: service_addresses(&service),
            ready_replicas: deployment
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0),
        })
    }

    /// A Service just applied with a `loadBalancerIP` its load balancer
    /// has not given yet, once the load balancer answered or
    /// [`LOAD_BALANCER_WAIT`] passed. Without this pause the Gateway's
    /// status for its new generation would report the Service before the
    /// load balancer had a chance to give (or refuse) the address.
    async fn await_requested_ip(&self, service: Service) -> Service {
        let Some(ip) = service
            .spec
            .as_ref()
            .and_then(|s| s.load_balancer_ip.clone())
        else {
            return service;
        };
        let given = |s: &Service| service_addresses(s).iter().any(|a| a.value == ip);
        if given(&service) {
            return service;
        }
        let (Some(namespace), Some(name)) = (
            service.metadata.namespace.clone(),
            service.metadata.name.clone(),
        ) else {
            return service;
        };
        let api: Api<Service> = Api::namespaced(self.client.clone(), &namespace);
        let deadline = tokio::time::Instant::now() + LOAD_BALANCER_WAIT;
        let mut latest = service;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            match api.get_opt(&name).await {
                Ok(Some(current)) => {
                    latest = current;
                    if given(&latest) {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(service = %format!("{namespace}/{name}"), "reading the Service: {e}");
                }
            }
        }
        latest
    }

    /// Lists this installation's objects of one kind in all namespaces;
    /// `None` (logged) if the list failed, which disables skipping unchanged
    /// objects and deleting unwanted ones of that kind for this round.
    async fn list<K>(&self, selector: &str) -> Option<BTreeMap<(String, String), K>>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        K::DynamicType: Default,
    {
        let api: Api<K> = Api::all(self.client.clone());
        match api.list(&ListParams::default().labels(selector)).await {
            Ok(list) => Some(
                list.items
                    .into_iter()
                    .filter_map(|o| {
                        let meta = o.meta();
                        Some(((meta.namespace.clone()?, meta.name.clone()?), o))
                    })
                    .collect(),
            ),
            Err(e) => {
                tracing::warn!("cannot list {}s: {e}", K::kind(&K::DynamicType::default()));
                None
            }
        }
    }

    /// Decides whether `desired` must be applied: not if the object already
    /// holds what was last applied; an error if the object belongs to
    /// another Gateway or was not made by this installation.
    async fn plan<K>(
        &self,
        mut desired: K,
        existing: Option<&BTreeMap<(String, String), K>>,
        gateway_name: &str,
    ) -> anyhow::Result<Plan<K>>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + Serialize + DeserializeOwned + Debug,
        K::DynamicType: Default,
    {
        let kind = K::kind(&K::DynamicType::default()).into_owned();
        let namespace = desired.meta().namespace.clone().unwrap_or_default();
        let name = desired.meta().name.clone().unwrap_or_default();
        let hash = format!(
            "{:016x}",
            objects::fnv1a(&serde_json::to_vec(&desired).context("serialising the object")?)
        );
        desired
            .meta_mut()
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(APPLIED_HASH_ANNOTATION.to_owned(), hash.clone());
        let api: Api<K> = Api::namespaced(self.client.clone(), &namespace);
        let current = match existing {
            Some(listed) => listed.get(&(namespace.clone(), name.clone())).cloned(),
            // The list failed: look at this one object instead.
            None => api
                .get_opt(&name)
                .await
                .with_context(|| format!("reading {kind} {namespace}/{name}"))?,
        };
        match &current {
            Some(current) => {
                let meta = current.meta();
                if !objects::is_ours(meta, &self.config.controller_namespace) {
                    anyhow::bail!(
                        "{kind} {namespace}/{name} exists and was not created by Gatewright for this Gateway; delete or rename it"
                    );
                }
                if let Some(other) = meta.owner_references.iter().flatten().find(|o| {
                    o.controller == Some(true) && o.kind == "Gateway" && o.name != gateway_name
                }) {
                    anyhow::bail!(
                        "{kind} {namespace}/{name} belongs to Gateway {}; the two Gateways' names map to the same object name",
                        other.name
                    );
                }
                let applied = meta
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(APPLIED_HASH_ANNOTATION));
                if applied == Some(&hash) {
                    return Ok(Plan::Current(current.clone()));
                }
            }
            None if existing.is_some() => {
                // Not among this installation's objects: it must not exist
                // at all (a user's own Service of the same name, say).
                if let Some(found) = api
                    .get_opt(&name)
                    .await
                    .with_context(|| format!("reading {kind} {namespace}/{name}"))?
                    && !objects::is_ours(found.meta(), &self.config.controller_namespace)
                {
                    anyhow::bail!(
                        "{kind} {namespace}/{name} exists and was not created by Gatewright for this Gateway; delete or rename it"
                    );
                }
            }
            None => {}
        }
        Ok(Plan::Apply(desired))
    }

    /// Carries out a [`Plan`]: returns the object as the API server has it.
    async fn execute<K>(&self, plan: Plan<K>) -> anyhow::Result<K>
    where
        K: Resource<Scope = NamespaceResourceScope> + Clone + Serialize + DeserializeOwned + Debug,
        K::DynamicType: Default,
    {
        let desired = match plan {
            Plan::Current(current) => return Ok(current),
            Plan::Apply(desired) => desired,
        };
        let kind = K::kind(&K::DynamicType::default()).into_owned();
        let namespace = desired.meta().namespace.clone().unwrap_or_default();
        let name = desired.meta().name.clone().unwrap_or_default();
        let api: Api<K> = Api::namespaced(self.client.clone(), &namespace);
        // Forced: these objects are Gatewright's; a field someone else set
        // by hand is taken back.
        let params = PatchParams::apply(objects::FIELD_MANAGER).force();
        let applied = api
            .patch(&name, &params, &Patch::Apply(&desired))
            .await
            .with_context(|| format!("applying {kind} {namespace}/{name}"))?;
        tracing::info!(%kind, object = %format!("{namespace}/{name}"), "applied");
        Ok(applied)
    }

    async fn delete_unwanted<K>(
        &self,
        existing: &Option<BTreeMap<(String, String), K>>,
        wanted: &BTreeSet<(String, String)>,
    ) where
        K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        K::DynamicType: Default,
    {
        let kind = K::kind(&K::DynamicType::default()).into_owned();
        for ((namespace, name), object) in existing.iter().flatten() {
            if wanted.contains(&(namespace.clone(), name.clone())) {
                continue;
            }
            let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
            // The uid precondition makes sure only the object that was
            // listed is deleted, never a newer one of the same name.
            let params = DeleteParams {
                preconditions: object.meta().uid.clone().map(|uid| Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..DeleteParams::background()
            };
            match api.delete(name, &params).await {
                Ok(_) => tracing::info!(%kind, object = %format!("{namespace}/{name}"), "deleted"),
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => {
                    tracing::warn!(%kind, object = %format!("{namespace}/{name}"), "cannot delete: {e}")
                }
            }
        }
    }
}

/// What to do with one object.
enum Plan<K> {
    /// It already holds what was last applied: this is it.
    Current(K),
    /// Apply this.
    Apply(K),
}

fn gateway_key(gateway: &Gateway) -> ObjectKey {
    ObjectKey::new(
        gateway.metadata.namespace.clone().unwrap_or_default(),
        gateway.metadata.name.clone().unwrap_or_default(),
    )
}

/// A Gateway's addresses from its Service: load-balancer ingress IPs and
/// host names; if there are none yet (or the Service is no LoadBalancer),
/// its cluster IPs.
pub fn service_addresses(service: &Service) -> Vec<GatewayStatusAddresses> {
    let mut out = Vec::new();
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    for entry in ingress.into_iter().flatten() {
        if let Some(ip) = entry.ip.as_ref().filter(|ip| !ip.is_empty()) {
            out.push(address("IPAddress", ip));
        } else if let Some(host) = entry.hostname.as_ref().filter(|h| !h.is_empty()) {
            out.push(address("Hostname", host));
        }
    }
    if out.is_empty()
        && let Some(spec) = &service.spec
    {
        let ips: Vec<&String> = match &spec.cluster_ips {
            Some(ips) if !ips.is_empty() => ips.iter().collect(),
            _ => spec.cluster_ip.iter().collect(),
        };
        for ip in ips {
            if !ip.is_empty() && ip != "None" {
                out.push(address("IPAddress", ip));
            }
        }
    }
    out
}

fn address(type_: &str, value: &str) -> GatewayStatusAddresses {
    GatewayStatusAddresses {
        r#type: Some(type_.to_owned()),
        value: value.to_owned(),
        routability: None,
    }
}

/// ProxyParameters by namespace and name, as the provider's store holds
/// them: parameters are read from there, never fetched per round.
pub type ParametersStore = BTreeMap<ObjectKey, ProxyParametersSpec>;

/// The parameters a Gateway's Envoys are provisioned with: its class's
/// `parametersRef`, overlaid field by field with the Gateway's own
/// `spec.infrastructure.parametersRef` (see [`ProxyParametersSpec::over`]).
/// `Ok(None)` if neither refers to anything. A reference to another kind,
/// a missing namespace on the class's reference, or a ProxyParameters that
/// does not exist, or an `envoy` value outside its schema
/// ([`params::EnvoyParameters::validate`]), is an error whose message suits
/// an `InvalidParameters` condition.
pub fn resolve_parameters(
    store: &ParametersStore,
    gateway_class: &GatewayClass,
    gateway: &Gateway,
) -> Result<Option<ProxyParametersSpec>, String> {
    let class = resolve_class_parameters(store, gateway_class)?;
    let own = match gateway
        .spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.parameters_ref.as_ref())
    {
        None => None,
        Some(r) => {
            check_kind(&r.group, &r.kind, "spec.infrastructure.parametersRef")?;
            let namespace = gateway.metadata.namespace.as_deref().unwrap_or_default();
            Some(lookup(
                store,
                namespace,
                &r.name,
                "spec.infrastructure.parametersRef",
            )?)
        }
    };
    let merged = match (own, class) {
        (Some(own), Some(class)) => Some(own.over(&class)),
        (own, class) => own.or(class),
    };
    if let Some(envoy) = merged.as_ref().and_then(|p| p.envoy.as_ref()) {
        envoy.validate()?;
    }
    Ok(merged)
}

/// The ProxyParameters a GatewayClass's `parametersRef` names, if any; an
/// error (for the class's `Accepted=False, InvalidParameters`) if the
/// reference is of another kind, lacks a namespace or names nothing.
pub fn resolve_class_parameters(
    store: &ParametersStore,
    gateway_class: &GatewayClass,
) -> Result<Option<ProxyParametersSpec>, String> {
    let Some(r) = gateway_class.spec.parameters_ref.as_ref() else {
        return Ok(None);
    };
    check_kind(&r.group, &r.kind, "spec.parametersRef")?;
    let namespace = r
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            "spec.parametersRef must set a namespace: ProxyParameters are namespaced".to_owned()
        })?;
    lookup(store, namespace, &r.name, "spec.parametersRef").map(Some)
}

fn check_kind(group: &str, kind: &str, field: &str) -> Result<(), String> {
    if group == params::GROUP && kind == params::KIND {
        Ok(())
    } else {
        Err(format!(
            "{field} refers to {kind} in group {group:?}; only {} in group {} is supported",
            params::KIND,
            params::GROUP
        ))
    }
}

fn lookup(
    store: &ParametersStore,
    namespace: &str,
    name: &str,
    field: &str,
) -> Result<ProxyParametersSpec, String> {
    store
        .get(&ObjectKey::new(namespace, name))
        .cloned()
        .ok_or_else(|| format!("{field}: ProxyParameters {namespace}/{name} not found"))
}

/// Kubernetes infrastructure as the pipeline drives it: the provisioner
/// and the CA that issues each Gateway's xDS client certificate.
pub struct KubeMode {
    infra: KubeInfra,
    ca: Arc<crate::pki::Ca>,
}

impl KubeMode {
    /// Provisions with `infra`; client certificates come from `ca`.
    pub fn new(infra: KubeInfra, ca: Arc<crate::pki::Ca>) -> Self {
        Self { infra, ca }
    }

    /// The label selector of the objects this installation provisions.
    pub fn selector(&self) -> String {
        self.infra.config.selector()
    }

    /// Provisions every Gateway `output` programs and returns, per Gateway,
    /// its addresses or why it is not programmed.
    pub async fn provision(
        &self,
        snapshot: &Snapshot,
        output: &Output,
    ) -> BTreeMap<ObjectKey, Learned> {
        let input = &snapshot.input;
        let mut learned: BTreeMap<ObjectKey, Learned> = BTreeMap::new();
        let failed = |key: &ObjectKey, message: String| {
            tracing::warn!(gateway = %key, "cannot provision: {message}");
            Learned {
                addresses: None,
                not_programmed: Some((
                    NotProgrammed::Invalid,
                    format!("cannot provision Envoy: {message}"),
                )),
            }
        };
        let mut provisions = Vec::new();
        // Keyed once, so a round stays linear in the number of Gateways.
        let gateways: BTreeMap<ObjectKey, &Gateway> = input
            .gateways
            .iter()
            .map(|g| (gateway_key(g), g.as_ref()))
            .collect();
        let classes: BTreeMap<&str, &GatewayClass> = input
            .gateway_classes
            .iter()
            .filter_map(|c| Some((c.metadata.name.as_deref()?, c.as_ref())))
            .collect();
        for (key, resources) in &output.gateways {
            let Some(gateway) = gateways.get(key).copied() else {
                continue;
            };
            let class = classes.get(gateway.spec.gateway_class_name.as_str());
            let parameters = match class
                .map(|class| resolve_parameters(&snapshot.proxy_parameters, class, gateway))
            {
                None => None,
                Some(Ok(p)) => p,
                Some(Err(message)) => {
                    learned.insert(key.clone(), failed(key, message));
                    continue;
                }
            };
            let Some(owner) = gateway.controller_owner_ref(&()) else {
                continue;
            };
            if let Err(e) = self
                .ca
                .ensure_client_secret(&self.infra.client, &key.namespace, &key.name, owner)
                .await
            {
                learned.insert(key.clone(), failed(key, format!("{e:#}")));
                continue;
            }
            provisions.push(Provision {
                gateway: gateway.clone(),
                parameters,
                ports: listener_ports(gateway, resources),
            });
        }
        for (key, result) in self.infra.reconcile(&provisions).await {
            match result {
                Ok(status) if status.addresses.is_empty() => {
                    learned.insert(
                        key,
                        Learned {
                            addresses: None,
                            not_programmed: Some((
                                NotProgrammed::AddressNotAssigned,
                                "waiting for the Envoy Service to get an address".to_owned(),
                            )),
                        },
                    );
                }
                // Programmed means serving: until an Envoy of the Gateway is
                // ready (it has loaded its configuration over xDS and
                // answers its readiness probe) nothing serves the Gateway.
                Ok(status) if status.ready_replicas < 1 => {
                    learned.insert(
                        key,
                        Learned {
                            addresses: Some(status.addresses),
                            not_programmed: Some((
                                NotProgrammed::Pending,
                                "waiting for an Envoy pod of the Gateway to be ready".to_owned(),
                            )),
                        },
                    );
                }
                Ok(status) => {
                    learned.insert(
                        key,
                        Learned {
                            addresses: Some(status.addresses),
                            not_programmed: None,
                        },
                    );
                }
                Err(message) => {
                    let failure = failed(&key, message);
                    learned.insert(key, failure);
                }
            }
        }
        learned
    }
}

/// The ports a Gateway's Envoy listens on, with the protocol of the
/// Gateway listener on that port (TCP when it comes from elsewhere, e.g. a
/// ListenerSet). Every port the Gateway declares is exposed, also one
/// whose listener has no route yet (and so no Envoy listener): the Gateway
/// is served, and a route attached later needs no new Service port.
fn listener_ports(gateway: &Gateway, resources: &GatewayResources) -> Vec<ListenerPort> {
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
    let mut ports: BTreeMap<u16, String> = gateway
        .spec
        .listeners
        .iter()
        .filter_map(|l| {
            Some((
                u16::try_from(l.port).ok().filter(|p| *p != 0)?,
                l.protocol.clone(),
            ))
        })
        .collect();
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

#[cfg(test)]
pub(crate) mod tests;
