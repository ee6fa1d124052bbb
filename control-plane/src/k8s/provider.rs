//! The Kubernetes provider: reflectors (kube-runtime watchers feeding
//! in-memory stores) for every kind the translator reads, and a
//! [`Provider::snapshot`] that turns their contents into a translator
//! [`Input`].
//!
//! Secrets and ConfigMaps are not watched cluster-wide: only the ones that
//! Gateways, ListenerSets and BackendTLSPolicies reference get a watch of
//! their own (by name), so the controller never holds every Secret of the
//! cluster in memory.
//!
//! An object the API server accepts but Gatewright's types cannot decode
//! (say, a filter type of a newer Gateway API release) stays out of the
//! input and is listed by [`Provider::undecodable`]; every other object of
//! its kind flows as usual.

use crate::infra::kubernetes::ProxyParameters;
use anyhow::Context as _;
use futures::StreamExt as _;
use gatewright_translator::api::backendtlspolicies::BackendTlsPolicy;
use gatewright_translator::api::gatewayclasses::GatewayClass;
use gatewright_translator::api::gateways::Gateway;
use gatewright_translator::api::grpcroutes::GrpcRoute;
use gatewright_translator::api::httproutes::HttpRoute;
use gatewright_translator::api::listenersets::ListenerSet;
use gatewright_translator::api::referencegrants::ReferenceGrant;
use gatewright_translator::api::tcproutes::TcpRoute;
use gatewright_translator::api::tlsroutes::TlsRoute;
use gatewright_translator::api::udproutes::UdpRoute;
use gatewright_translator::{Input, ObjectKey};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ObjectReference, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::DeserializeGuard;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt as _};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The Gateway API group.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// What changed; sent to the control loop.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Changed {
    /// Objects of this kind (or the first full list of its watch).
    Kind(&'static str),
    /// EndpointSlices of this Service, and nothing else about it.
    Endpoints(ObjectKey),
}

/// How a watch names its changes: by kind, or by object.
type Describe<K> = fn(&'static str, &K) -> Changed;

fn by_kind<K>(kind: &'static str, _: &K) -> Changed {
    Changed::Kind(kind)
}

/// An EndpointSlice change names its Service (the
/// `kubernetes.io/service-name` label); a slice without one counts as a
/// change of the kind.
fn by_service(kind: &'static str, slice: &EndpointSlice) -> Changed {
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("kubernetes.io/service-name"));
    match (slice.metadata.namespace.as_deref(), service) {
        (Some(ns), Some(service)) => Changed::Endpoints(ObjectKey::new(ns, service.as_str())),
        _ => Changed::Kind(kind),
    }
}

/// Which optional Gateway API kinds the API server serves (CRDs installed).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Kinds {
    /// ListenerSet.
    pub listener_sets: bool,
    /// GRPCRoute.
    pub grpc_routes: bool,
    /// TLSRoute (v1).
    pub tls_routes: bool,
    /// TCPRoute (v1, from Gateway API v1.7.0's CRDs; v1.5.1's served only
    /// v1alpha2, which is not watched).
    pub tcp_routes: bool,
    /// UDPRoute (v1, as TCPRoute).
    pub udp_routes: bool,
    /// ReferenceGrant (v1).
    pub reference_grants: bool,
    /// BackendTLSPolicy (v1).
    pub backend_tls_policies: bool,
    /// Gatewright's ProxyParameters (gatewright.dev/v1alpha1).
    pub proxy_parameters: bool,
}

impl Kinds {
    /// Asks the API server which Gateway API v1 resources it serves. The
    /// GatewayClass, Gateway and HTTPRoute CRDs are required.
    pub async fn discover(client: &Client) -> anyhow::Result<Self> {
        let list = client
            .list_api_group_resources(&format!("{GATEWAY_GROUP}/v1"))
            .await
            .context(
                "the API server does not serve gateway.networking.k8s.io/v1: \
                 install the Gateway API CRDs (v1.7.0, or v1.5.1 and later)",
            )?;
        let served: BTreeSet<&str> = list.resources.iter().map(|r| r.name.as_str()).collect();
        for required in ["gatewayclasses", "gateways", "httproutes"] {
            if !served.contains(required) {
                anyhow::bail!(
                    "the API server does not serve {GATEWAY_GROUP}/v1 {required}: \
                     install the Gateway API CRDs (v1.7.0, or v1.5.1 and later)"
                );
            }
        }
        // Gatewright's own CRD is optional too: without it, parametersRef
        // to a ProxyParameters is simply reported as not found.
        let proxy_parameters = client
            .list_api_group_resources(&format!(
                "{}/v1alpha1",
                gatewright_translator::PROXY_PARAMETERS_GROUP
            ))
            .await
            .is_ok_and(|l| l.resources.iter().any(|r| r.name == "proxyparameters"));
        Ok(Self {
            proxy_parameters,
            listener_sets: served.contains("listenersets"),
            grpc_routes: served.contains("grpcroutes"),
            tls_routes: served.contains("tlsroutes"),
            tcp_routes: served.contains("tcproutes"),
            udp_routes: served.contains("udproutes"),
            reference_grants: served.contains("referencegrants"),
            backend_tls_policies: served.contains("backendtlspolicies"),
        })
    }
}

/// An object of a watched kind that the API server holds but Gatewright's
/// types cannot decode (e.g. a field value of a newer API release). It is
/// left out of the translator's input and reported instead.
#[derive(Clone, Debug, PartialEq)]
pub struct Undecodable {
    /// The kind, as the provider names its watch (`HTTPRoute`).
    pub kind: &'static str,
    /// The object, at the resourceVersion that failed to decode.
    pub reference: ObjectReference,
    /// Why it could not be decoded.
    pub error: String,
}

/// A reflector's stores plus the task driving its watch.
///
/// The watch decodes into [`DeserializeGuard`], so an object that does not
/// decode fails alone instead of failing the whole list (and with it every
/// other object of its kind, retried forever: kube-rs issue 774). Decoded
/// objects go to `store`, the others to `undecodable`.
struct Reflected<K: Resource<DynamicType = ()> + Clone + 'static> {
    kind: &'static str,
    store: Store<K>,
    undecodable: Store<DeserializeGuard<K>>,
    task: JoinHandle<()>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Drop for Reflected<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<K> Reflected<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// Starts watching `api` and tells `changed` (tagged `kind`) after the
    /// first full list and after every change.
    fn start(
        api: Api<DeserializeGuard<K>>,
        config: watcher::Config,
        kind: &'static str,
        changed: mpsc::UnboundedSender<Changed>,
    ) -> Self {
        Self::start_with(api, config, kind, by_kind, changed)
    }

    /// Like [`Reflected::start`], with changes of single decodable objects
    /// named by `describe`.
    fn start_with(
        api: Api<DeserializeGuard<K>>,
        config: watcher::Config,
        kind: &'static str,
        describe: Describe<K>,
        changed: mpsc::UnboundedSender<Changed>,
    ) -> Self {
        let mut stores = Split::default();
        let store = stores.valid.as_reader();
        let undecodable = stores.invalid.as_reader();
        let stream = watcher::watcher(api, config).default_backoff().modify(lean);
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(e) => {
                        tracing::warn!(kind, "watch failed, retrying: {e}");
                        continue;
                    }
                };
                if let Some(what) = stores.apply(event, kind, describe)
                    && changed.send(what).is_err()
                {
                    return;
                }
            }
        });
        Self {
            kind,
            store,
            undecodable,
            task,
        }
    }

    fn objects(&self) -> Vec<Arc<K>> {
        self.store.state()
    }

    fn get(&self, namespace: Option<&str>, name: &str) -> Option<Arc<K>> {
        self.store.get(&object_ref(namespace, name))
    }

    /// The objects of this watch that did not decode, as last seen.
    fn undecodable(&self) -> Vec<Undecodable> {
        self.undecodable
            .state()
            .iter()
            .filter_map(|guard| {
                let invalid = guard.0.as_ref().err()?;
                Some(Undecodable {
                    kind: self.kind,
                    reference: guard.object_ref(&()),
                    error: invalid.error.clone(),
                })
            })
            .collect()
    }
}

fn object_ref<K>(namespace: Option<&str>, name: &str) -> ObjectRef<K>
where
    K: Resource<DynamicType = ()>,
{
    let r = ObjectRef::new(name);
    match namespace {
        Some(ns) => r.within(ns),
        None => r,
    }
}

/// The two stores of a watch: objects that decoded and objects that did
/// not. An object is in at most one of them, as of its latest version.
struct Split<K: Resource<DynamicType = ()> + Clone + 'static> {
    valid: Writer<K>,
    invalid: Writer<DeserializeGuard<K>>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Default for Split<K> {
    fn default() -> Self {
        Self {
            valid: Writer::default(),
            invalid: Writer::default(),
        }
    }
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Split<K> {
    /// Applies one watch event to the store its object belongs in, removing
    /// the object's previous version from the other; returns the change to
    /// announce, if any.
    fn apply(
        &mut self,
        event: Event<DeserializeGuard<K>>,
        kind: &'static str,
        describe: Describe<K>,
    ) -> Option<Changed> {
        match event {
            Event::Init => {
                self.valid.apply_watcher_event(&Event::Init);
                self.invalid.apply_watcher_event(&Event::Init);
                None
            }
            Event::InitApply(DeserializeGuard(Ok(o))) => {
                self.valid.apply_watcher_event(&Event::InitApply(o));
                None
            }
            Event::InitApply(guard) => {
                self.invalid.apply_watcher_event(&Event::InitApply(guard));
                None
            }
            Event::InitDone => {
                self.valid.apply_watcher_event(&Event::InitDone);
                self.invalid.apply_watcher_event(&Event::InitDone);
                Some(Changed::Kind(kind))
            }
            Event::Apply(DeserializeGuard(Ok(o))) => {
                // An object that was undecodable is announced to the whole
                // kind (not, say, as an endpoints-only change), so that the
                // next round stops reporting it.
                let what = if forget(&mut self.invalid, &o) {
                    Changed::Kind(kind)
                } else {
                    describe(kind, &o)
                };
                self.valid.apply_watcher_event(&Event::Apply(o));
                Some(what)
            }
            Event::Delete(DeserializeGuard(Ok(o))) => {
                let what = if forget(&mut self.invalid, &o) {
                    Changed::Kind(kind)
                } else {
                    describe(kind, &o)
                };
                self.valid.apply_watcher_event(&Event::Delete(o));
                Some(what)
            }
            Event::Apply(guard) => {
                forget(&mut self.valid, &guard);
                self.invalid.apply_watcher_event(&Event::Apply(guard));
                Some(Changed::Kind(kind))
            }
            Event::Delete(guard) => {
                forget(&mut self.valid, &guard);
                self.invalid.apply_watcher_event(&Event::Delete(guard));
                Some(Changed::Kind(kind))
            }
        }
    }
}

/// Removes the object named like `like` from `writer`'s store; whether it
/// was there.
fn forget<T, L>(writer: &mut Writer<T>, like: &L) -> bool
where
    T: Resource<DynamicType = ()> + Clone + 'static,
    L: Resource,
{
    let meta = like.meta();
    let Some(name) = meta.name.as_deref() else {
        return false;
    };
    let Some(old) = writer
        .as_reader()
        .get(&object_ref(meta.namespace.as_deref(), name))
    else {
        return false;
    };
    writer.apply_watcher_event(&Event::Delete(T::clone(&old)));
    true
}

/// One watch per named object, started and stopped as references come and
/// go.
struct Named<K: Resource<DynamicType = ()> + Clone + 'static> {
    kind: &'static str,
    watches: BTreeMap<ObjectKey, Reflected<K>>,
}

impl<K> Named<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    fn new(kind: &'static str) -> Self {
        Self {
            kind,
            watches: BTreeMap::new(),
        }
    }

    /// Watches exactly `wanted`; returns whether anything was started.
    fn sync(
        &mut self,
        client: &Client,
        wanted: &BTreeSet<ObjectKey>,
        changed: &mpsc::UnboundedSender<Changed>,
    ) -> bool {
        self.watches.retain(|key, _| wanted.contains(key));
        let mut started = false;
        for key in wanted {
            if self.watches.contains_key(key) {
                continue;
            }
            let api = Api::namespaced(client.clone(), &key.namespace);
            let config = watcher::Config::default().fields(&format!("metadata.name={}", key.name));
            self.watches.insert(
                key.clone(),
                Reflected::start(api, config, self.kind, changed.clone()),
            );
            started = true;
        }
        started
    }

    fn objects(&self) -> Vec<Arc<K>> {
        self.watches.values().flat_map(Reflected::objects).collect()
    }

    /// Whether every watch has listed once.
    fn ready(&self) -> bool {
        self.watches.values().all(|w| is_ready(&w.store))
    }

    fn undecodable(&self) -> Vec<Undecodable> {
        self.watches
            .values()
            .flat_map(Reflected::undecodable)
            .collect()
    }
}

fn is_ready<K: Resource<DynamicType = ()> + Clone + 'static>(store: &Store<K>) -> bool {
    futures::FutureExt::now_or_never(store.wait_until_ready()).is_some()
}

/// Every store the translator's input is built from.
pub struct Provider {
    client: Client,
    changed_tx: mpsc::UnboundedSender<Changed>,
    gateway_classes: Reflected<GatewayClass>,
    gateways: Reflected<Gateway>,
    listener_sets: Option<Reflected<ListenerSet>>,
    http_routes: Reflected<HttpRoute>,
    grpc_routes: Option<Reflected<GrpcRoute>>,
    tls_routes: Option<Reflected<TlsRoute>>,
    tcp_routes: Option<Reflected<TcpRoute>>,
    udp_routes: Option<Reflected<UdpRoute>>,
    reference_grants: Option<Reflected<ReferenceGrant>>,
    backend_tls_policies: Option<Reflected<BackendTlsPolicy>>,
    proxy_parameters: Option<Reflected<ProxyParameters>>,
    services: Reflected<Service>,
    endpoint_slices: Reflected<EndpointSlice>,
    namespaces: Reflected<Namespace>,
    /// The Envoy Deployments this installation provisioned (Kubernetes
    /// infrastructure): their readiness decides whether a Gateway is
    /// programmed, so a change of it must start a round.
    provisioned: Option<Reflected<Deployment>>,
    secrets: Named<Secret>,
    config_maps: Named<ConfigMap>,
}

impl Provider {
    /// Starts every watch. Changes are announced on the returned channel.
    pub fn start(client: Client, kinds: Kinds) -> (Self, mpsc::UnboundedReceiver<Changed>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let all = watcher::Config::default;
        macro_rules! cluster {
            ($kind:literal) => {
                Reflected::start(Api::all(client.clone()), all(), $kind, tx.clone())
            };
        }
        macro_rules! optional {
            ($present:expr, $kind:literal) => {
                $present
                    .then(|| Reflected::start(Api::all(client.clone()), all(), $kind, tx.clone()))
            };
        }
        let provider = Self {
            gateway_classes: cluster!("GatewayClass"),
            gateways: cluster!("Gateway"),
            listener_sets: optional!(kinds.listener_sets, "ListenerSet"),
            http_routes: cluster!("HTTPRoute"),
            grpc_routes: optional!(kinds.grpc_routes, "GRPCRoute"),
            tls_routes: optional!(kinds.tls_routes, "TLSRoute"),
            tcp_routes: optional!(kinds.tcp_routes, "TCPRoute"),
            udp_routes: optional!(kinds.udp_routes, "UDPRoute"),
            reference_grants: optional!(kinds.reference_grants, "ReferenceGrant"),
            backend_tls_policies: optional!(kinds.backend_tls_policies, "BackendTLSPolicy"),
            proxy_parameters: optional!(kinds.proxy_parameters, "ProxyParameters"),
            services: cluster!("Service"),
            endpoint_slices: Reflected::start_with(
                Api::all(client.clone()),
                all(),
                "EndpointSlice",
                by_service,
                tx.clone(),
            ),
            namespaces: cluster!("Namespace"),
            provisioned: None,
            secrets: Named::new("Secret"),
            config_maps: Named::new("ConfigMap"),
            changed_tx: tx,
            client,
        };
        (provider, rx)
    }

    /// Also watches the Deployments matching `selector` (the ones this
    /// installation provisions), announcing their changes as
    /// `Deployment` so that readiness changes reach Gateway status.
    pub fn watch_provisioned(&mut self, selector: &str) {
        self.provisioned = Some(Reflected::start(
            Api::all(self.client.clone()),
            watcher::Config::default().labels(selector),
            "Deployment",
            self.changed_tx.clone(),
        ));
    }

    /// Waits until every cluster-wide store has its first full list, so
    /// that the first translation never sees half the cluster.
    pub async fn wait_until_ready(&self) -> anyhow::Result<()> {
        macro_rules! wait {
            ($r:expr) => {
                $r.store
                    .wait_until_ready()
                    .await
                    .context("a watch stopped before its first list")?
            };
        }
        macro_rules! wait_optional {
            ($r:expr) => {
                if let Some(r) = &$r {
                    wait!(r);
                }
            };
        }
        wait!(self.gateway_classes);
        wait!(self.gateways);
        wait_optional!(self.listener_sets);
        wait!(self.http_routes);
        wait_optional!(self.grpc_routes);
        wait_optional!(self.tls_routes);
        wait_optional!(self.tcp_routes);
        wait_optional!(self.udp_routes);
        wait_optional!(self.reference_grants);
        wait_optional!(self.backend_tls_policies);
        wait_optional!(self.proxy_parameters);
        wait!(self.services);
        wait!(self.endpoint_slices);
        wait!(self.namespaces);
        Ok(())
    }

    /// Whether the per-object Secret and ConfigMap watches have all listed.
    pub fn references_ready(&self) -> bool {
        self.secrets.ready() && self.config_maps.ready()
    }

    /// The translator's input from the stores' current contents. Also starts
    /// and stops the Secret and ConfigMap watches to match what the input
    /// references; returns whether any was started (its first list will
    /// announce itself on the change channel).
    pub fn snapshot(&mut self, controller_name: &str) -> (Input, bool) {
        let mut input = Input {
            controller_name: controller_name.to_owned(),
            gateway_classes: self.gateway_classes.objects(),
            gateways: self.gateways.objects(),
            listener_sets: optional(&self.listener_sets),
            http_routes: self.http_routes.objects(),
            grpc_routes: optional(&self.grpc_routes),
            tls_routes: optional(&self.tls_routes),
            tcp_routes: optional(&self.tcp_routes),
            udp_routes: optional(&self.udp_routes),
            reference_grants: optional(&self.reference_grants),
            backend_tls_policies: optional(&self.backend_tls_policies),
            services: self.services.objects(),
            endpoint_slices: self.endpoint_slices.objects(),
            namespaces: self.namespaces.objects(),
            proxy_parameters: self
                .proxy_parameters
                .iter()
                .flat_map(|r| r.store.state())
                .map(|p| {
                    ObjectKey::new(
                        p.metadata.namespace.clone().unwrap_or_default(),
                        p.metadata.name.clone().unwrap_or_default(),
                    )
                })
                .collect(),
            ..Input::default()
        };
        let (secrets, config_maps) = references(&input);
        let started = self.secrets.sync(&self.client, &secrets, &self.changed_tx)
            | self
                .config_maps
                .sync(&self.client, &config_maps, &self.changed_tx);
        input.secrets = self.secrets.objects();
        input.config_maps = self.config_maps.objects();
        (input, started)
    }

    /// Every ProxyParameters object's spec, by key.
    pub fn proxy_parameters(&self) -> crate::infra::kubernetes::ParametersStore {
        self.proxy_parameters
            .iter()
            .flat_map(|r| r.store.state())
            .map(|p| {
                let key = ObjectKey::new(
                    p.metadata.namespace.clone().unwrap_or_default(),
                    p.metadata.name.clone().unwrap_or_default(),
                );
                (key, p.spec.clone())
            })
            .collect()
    }

    /// An input holding only `services` and their EndpointSlices: enough
    /// for [`gatewright_translator::refresh_endpoints`].
    pub fn endpoints_input(&self, services: &BTreeSet<ObjectKey>) -> Input {
        let mut input = Input::default();
        for key in services {
            if let Some(s) = self.services.get(Some(&key.namespace), &key.name) {
                input.services.push(s);
            }
        }
        input.endpoint_slices = self
            .endpoint_slices
            .store
            .state()
            .iter()
            .filter(|slice| match by_service("", slice) {
                Changed::Endpoints(key) => services.contains(&key),
                Changed::Kind(_) => false,
            })
            .cloned()
            .collect();
        input
    }

    /// Every object of a watched kind that could not be decoded (and so is
    /// not in the translator's input), as last seen.
    pub fn undecodable(&self) -> Vec<Undecodable> {
        let mut all = Vec::new();
        let mut add = |found: Vec<Undecodable>| all.extend(found);
        add(self.gateway_classes.undecodable());
        add(self.gateways.undecodable());
        add(optional_undecodable(&self.listener_sets));
        add(self.http_routes.undecodable());
        add(optional_undecodable(&self.grpc_routes));
        add(optional_undecodable(&self.tls_routes));
        add(optional_undecodable(&self.tcp_routes));
        add(optional_undecodable(&self.udp_routes));
        add(optional_undecodable(&self.reference_grants));
        add(optional_undecodable(&self.backend_tls_policies));
        add(optional_undecodable(&self.proxy_parameters));
        add(self.services.undecodable());
        add(self.endpoint_slices.undecodable());
        add(self.namespaces.undecodable());
        add(self.secrets.undecodable());
        add(self.config_maps.undecodable());
        all
    }

    /// The live GatewayClass, as last seen.
    pub fn gateway_class(&self, name: &str) -> Option<Arc<GatewayClass>> {
        self.gateway_classes.get(None, name)
    }

    /// The live Gateway, as last seen.
    pub fn gateway(&self, key: &ObjectKey) -> Option<Arc<Gateway>> {
        self.gateways.get(Some(&key.namespace), &key.name)
    }

    /// The live ListenerSet, as last seen.
    pub fn listener_set(&self, key: &ObjectKey) -> Option<Arc<ListenerSet>> {
        self.listener_sets
            .as_ref()?
            .get(Some(&key.namespace), &key.name)
    }

    /// Every live HTTPRoute.
    pub fn http_routes(&self) -> Vec<Arc<HttpRoute>> {
        self.http_routes.store.state()
    }

    /// Every live GRPCRoute.
    pub fn grpc_routes(&self) -> Vec<Arc<GrpcRoute>> {
        self.grpc_routes
            .as_ref()
            .map(|r| r.store.state())
            .unwrap_or_default()
    }

    /// Every live TLSRoute.
    pub fn tls_routes(&self) -> Vec<Arc<TlsRoute>> {
        optional(&self.tls_routes)
    }

    /// Every live TCPRoute.
    pub fn tcp_routes(&self) -> Vec<Arc<TcpRoute>> {
        optional(&self.tcp_routes)
    }

    /// Every live UDPRoute.
    pub fn udp_routes(&self) -> Vec<Arc<UdpRoute>> {
        optional(&self.udp_routes)
    }

    /// Every live BackendTLSPolicy.
    pub fn backend_tls_policies(&self) -> Vec<Arc<BackendTlsPolicy>> {
        self.backend_tls_policies
            .as_ref()
            .map(|r| r.store.state())
            .unwrap_or_default()
    }
}

/// The annotation kubectl keeps a copy of the last applied object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops from a watched object, before it reaches a store, what nothing
/// reads and what is often its largest part: managedFields and kubectl's
/// last-applied copy of the object. (Status writes send the object back,
/// but the status subresource ignores everything outside `status`.)
fn lean<K: Resource>(o: &mut K) {
    o.managed_fields_mut().clear();
    if let Some(annotations) = o.meta_mut().annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

fn optional<K>(r: &Option<Reflected<K>>) -> Vec<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    r.as_ref().map(Reflected::objects).unwrap_or_default()
}

fn optional_undecodable<K>(r: &Option<Reflected<K>>) -> Vec<Undecodable>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    r.as_ref().map(Reflected::undecodable).unwrap_or_default()
}

/// The Secrets and ConfigMaps an input references: listener certificates,
/// frontend CA certificates, the backend client certificate, and
/// BackendTLSPolicy CA certificates. References the translator will refuse
/// (e.g. cross-namespace without a ReferenceGrant) are watched anyway: the
/// translator decides, the provider only fetches.
pub fn references(input: &Input) -> (BTreeSet<ObjectKey>, BTreeSet<ObjectKey>) {
    let mut secrets = BTreeSet::new();
    let mut config_maps = BTreeSet::new();
    let mut visit = |namespace: &str, spec: Value| {
        collect_refs(namespace, &spec, None, &mut secrets, &mut config_maps);
    };
    for gw in &input.gateways {
        visit(
            gw.metadata.namespace.as_deref().unwrap_or("default"),
            serde_json::to_value(&gw.spec).unwrap_or(Value::Null),
        );
    }
    for ls in &input.listener_sets {
        visit(
            ls.metadata.namespace.as_deref().unwrap_or("default"),
            serde_json::to_value(&ls.spec).unwrap_or(Value::Null),
        );
    }
    for p in &input.backend_tls_policies {
        visit(
            p.metadata.namespace.as_deref().unwrap_or("default"),
            serde_json::to_value(&p.spec).unwrap_or(Value::Null),
        );
    }
    (secrets, config_maps)
}

/// Walks a spec; under the reference-holding keys, every object reference
/// to a core Secret or ConfigMap is collected. `default_kind` is the kind
/// the API gives a reference that names none.
fn collect_refs(
    namespace: &str,
    value: &Value,
    default_kind: Option<&str>,
    secrets: &mut BTreeSet<ObjectKey>,
    config_maps: &mut BTreeSet<ObjectKey>,
) {
    match value {
        Value::Array(items) => {
            for item in items {
                collect_refs(namespace, item, default_kind, secrets, config_maps);
            }
        }
        Value::Object(map) => {
            if let Some(default_kind) = default_kind
                && let Some(name) = map.get("name").and_then(Value::as_str)
            {
                let group = map.get("group").and_then(Value::as_str).unwrap_or("");
                let kind = map
                    .get("kind")
                    .and_then(Value::as_str)
                    .unwrap_or(default_kind);
                let ns = map
                    .get("namespace")
                    .and_then(Value::as_str)
                    .unwrap_or(namespace);
                let key = ObjectKey::new(ns, name);
                match (group, kind) {
                    ("", "Secret") => {
                        secrets.insert(key);
                    }
                    ("", "ConfigMap") => {
                        config_maps.insert(key);
                    }
                    _ => {}
                }
                return;
            }
            for (key, child) in map {
                let kind = match key.as_str() {
                    "certificateRefs" | "clientCertificateRef" => Some("Secret"),
                    "caCertificateRefs" => Some("ConfigMap"),
                    _ => None,
                };
                collect_refs(namespace, child, kind, secrets, config_maps);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An HTTPRoute as the API server would send it; `filter` is the type
    /// of its one filter.
    fn route(name: &str, resource_version: &str, filter: &str) -> DeserializeGuard<HttpRoute> {
        serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": resource_version},
            "spec": {
                "parentRefs": [{"name": "gw"}],
                "rules": [{"filters": [{"type": filter}]}]
            }
        }))
        .expect("any object with metadata decodes into a guard")
    }

    /// What reaches a store has no managedFields and no last-applied copy,
    /// and keeps every other annotation.
    #[test]
    fn stored_objects_are_lean() {
        let mut service: Service = serde_json::from_value(json!({
            "metadata": {
                "name": "svc",
                "namespace": "ns",
                "annotations": {LAST_APPLIED: "{\"kind\":\"Service\"}", "team": "a"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]
            }
        }))
        .expect("a Service");
        lean(&mut service);
        let meta = &service.metadata;
        assert!(meta.managed_fields.as_ref().is_none_or(Vec::is_empty));
        let annotations = meta.annotations.as_ref().expect("other annotations stay");
        assert!(!annotations.contains_key(LAST_APPLIED));
        assert_eq!(annotations.get("team").map(String::as_str), Some("a"));
    }

    const KNOWN: &str = "ExtensionRef";
    const UNKNOWN: &str = "FutureFilter";

    fn names<K: Resource>(objects: Vec<Arc<K>>) -> Vec<String> {
        let mut names: Vec<String> = objects.iter().map(|o| o.name_any()).collect();
        names.sort();
        names
    }

    #[test]
    fn an_unknown_enum_value_fails_only_its_own_object() {
        assert!(route("a", "1", KNOWN).0.is_ok());
        let bad = route("b", "1", UNKNOWN);
        let error = bad
            .0
            .as_ref()
            .expect_err("an unknown filter type")
            .error
            .clone();
        assert!(error.contains(UNKNOWN), "{error}");
        assert_eq!(bad.object_ref(&()).name.as_deref(), Some("b"));
    }

    #[test]
    fn objects_move_between_the_stores_as_they_stop_or_start_decoding() {
        let mut split = Split::<HttpRoute>::default();
        let (valid, invalid) = (split.valid.as_reader(), split.invalid.as_reader());
        let apply = |split: &mut Split<HttpRoute>, event| split.apply(event, "HTTPRoute", by_kind);

        assert_eq!(apply(&mut split, Event::Init), None);
        assert_eq!(
            apply(&mut split, Event::InitApply(route("a", "1", KNOWN))),
            None
        );
        assert_eq!(
            apply(&mut split, Event::InitApply(route("b", "1", UNKNOWN))),
            None
        );
        assert_eq!(
            apply(&mut split, Event::InitDone),
            Some(Changed::Kind("HTTPRoute"))
        );
        assert_eq!(names(valid.state()), ["a"]);
        assert_eq!(names(invalid.state()), ["b"]);

        // a stops decoding, b decodes again: each leaves the other store.
        apply(&mut split, Event::Apply(route("a", "2", UNKNOWN)));
        apply(&mut split, Event::Apply(route("b", "2", KNOWN)));
        assert_eq!(names(valid.state()), ["b"]);
        assert_eq!(names(invalid.state()), ["a"]);

        // Deleted: gone from both.
        assert_eq!(
            apply(&mut split, Event::Delete(route("a", "2", UNKNOWN))),
            Some(Changed::Kind("HTTPRoute"))
        );
        assert!(invalid.state().is_empty());

        // A re-list replaces both stores at once.
        apply(&mut split, Event::Init);
        apply(&mut split, Event::InitApply(route("c", "3", UNKNOWN)));
        assert_eq!(names(valid.state()), ["b"]);
        apply(&mut split, Event::InitDone);
        assert!(valid.state().is_empty());
        assert_eq!(names(invalid.state()), ["c"]);
    }

    #[test]
    fn core_kinds_decode_through_the_guard() {
        let secret: DeserializeGuard<Secret> = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "tls", "namespace": "ns"},
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"}
        }))
        .expect("a guard");
        let secret = secret.0.expect("a valid Secret decodes");
        let data = secret.data.expect("data");
        assert_eq!(data["tls.crt"].0, b"cert");
        let service: DeserializeGuard<Service> = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "echo", "namespace": "ns"},
            "spec": {"ports": [{"port": 80, "targetPort": "http"}, {"port": 81, "targetPort": 8081}]}
        }))
        .expect("a guard");
        assert!(service.0.is_ok(), "{:?}", service.0.err());
    }

    #[test]
    fn references_follow_certificate_refs_with_their_defaults() {
        let mut input = Input::new();
        input
            .add_document(serde_json::json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "Gateway",
                "metadata": {"name": "gw", "namespace": "infra"},
                "spec": {
                    "gatewayClassName": "c",
                    "listeners": [{
                        "name": "https", "port": 443, "protocol": "HTTPS",
                        "tls": {"certificateRefs": [
                            {"name": "local"},
                            {"name": "other", "namespace": "certs", "kind": "Secret", "group": ""},
                            {"name": "not-core", "kind": "Secret", "group": "example.test"}
                        ]}
                    }],
                    "tls": {
                        "frontend": {"default": {"validation": {"caCertificateRefs": [
                            {"name": "ca", "kind": "ConfigMap", "group": ""}
                        ]}}},
                        "backend": {"clientCertificateRef": {"name": "client"}}
                    }
                }
            }))
            .expect("a valid Gateway");
        let (secrets, config_maps) = references(&input);
        let names = |s: &BTreeSet<ObjectKey>| s.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(
            names(&secrets),
            ["certs/other", "infra/client", "infra/local"]
        );
        assert_eq!(names(&config_maps), ["infra/ca"]);
    }
}
