//! What one translation keeps for the next (see [`crate::Translator`]): per
//! route, its converted and resolved form, which also carries the Envoy
//! routes emitted from it ([`crate::emit::EmittedRoutes`]); per Gateway,
//! its emitted Envoy resources.
//!
//! An entry is reused only when everything it was computed from is there
//! again, checked rather than assumed: the same route object, and every
//! Service its resolution looked up as it was found then (the same shared
//! object, or an equal one; an entry keeps the objects it compares, so a
//! freed object's address can never be mistaken for it). What resolution
//! reads besides Services (ReferenceGrants, BackendTLSPolicies, the
//! ConfigMaps those name, the system CA file) is compared as a whole, and
//! any change there drops every entry.
//!
//! A Gateway's resources are reused when its emission would read the same
//! things again: the same Gateway and ListenerSet objects, bind address
//! and edge settings, the same routes (the same resolved entries, see
//! above) attached to the same listeners with the same hostnames, and for
//! every cluster the same Service and EndpointSlices. What resolving a
//! Gateway reads besides (Secrets, ConfigMaps, Namespaces, ReferenceGrants,
//! GatewayClasses, ...) is compared as a whole, as for routes. So a change
//! to one route re-emits only the Gateways it attaches to, before or after.
//!
//! A translation with a warm memo is
//! therefore the same, byte for byte, as one with an empty memo; the
//! translator's `incremental` tests check it over every golden case and
//! random change sequences.

use crate::api::backendtlspolicies::BackendTlsPolicy;
use crate::api::gatewayclasses::GatewayClass;
use crate::api::gateways::Gateway;
use crate::api::grpcroutes::GrpcRoute;
use crate::api::httproutes::HttpRoute;
use crate::api::listenersets::ListenerSet;
use crate::api::referencegrants::ReferenceGrant;
use crate::api::tcproutes::TcpRoute;
use crate::api::tlsroutes::TlsRoute;
use crate::api::udproutes::UdpRoute;
use crate::attach::{self, Attachment, ResolvedRoute};
use crate::index::{self, Index};
use crate::input::{EdgeSettings, Input, ObjectKey};
use crate::model::{Route, RouteKind};
use crate::output::{ClusterFeed, GatewayResources};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// One route object of the input, of any kind.
pub(crate) enum Source<'a> {
    Http(&'a Arc<HttpRoute>),
    Grpc(&'a Arc<GrpcRoute>),
    Tls(&'a Arc<TlsRoute>),
    Tcp(&'a Arc<TcpRoute>),
    Udp(&'a Arc<UdpRoute>),
}

impl Source<'_> {
    fn kind(&self) -> RouteKind {
        match self {
            Self::Http(_) => RouteKind::Http,
            Self::Grpc(_) => RouteKind::Grpc,
            Self::Tls(_) => RouteKind::Tls,
            Self::Tcp(_) => RouteKind::Tcp,
            Self::Udp(_) => RouteKind::Udp,
        }
    }

    fn key(&self) -> ObjectKey {
        let (ns, name) = match self {
            Self::Http(r) => index::key_of(&r.metadata),
            Self::Grpc(r) => index::key_of(&r.metadata),
            Self::Tls(r) => index::key_of(&r.metadata),
            Self::Tcp(r) => index::key_of(&r.metadata),
            Self::Udp(r) => index::key_of(&r.metadata),
        };
        ObjectKey::new(ns, name)
    }

    fn convert(&self) -> Route {
        match self {
            Self::Http(r) => Route::from(r.as_ref()),
            Self::Grpc(r) => Route::from(r.as_ref()),
            Self::Tls(r) => Route::from(r.as_ref()),
            Self::Tcp(r) => Route::from(r.as_ref()),
            Self::Udp(r) => Route::from(r.as_ref()),
        }
    }

    fn keep(&self) -> Kept {
        match self {
            Self::Http(r) => Kept::Http(Arc::clone(r)),
            Self::Grpc(r) => Kept::Grpc(Arc::clone(r)),
            Self::Tls(r) => Kept::Tls(Arc::clone(r)),
            Self::Tcp(r) => Kept::Tcp(Arc::clone(r)),
            Self::Udp(r) => Kept::Udp(Arc::clone(r)),
        }
    }
}

/// The route object an entry was computed from.
enum Kept {
    Http(Arc<HttpRoute>),
    Grpc(Arc<GrpcRoute>),
    Tls(Arc<TlsRoute>),
    Tcp(Arc<TcpRoute>),
    Udp(Arc<UdpRoute>),
}

impl Kept {
    fn is(&self, source: &Source<'_>) -> bool {
        match (self, source) {
            (Self::Http(a), Source::Http(b)) => same(a, b),
            (Self::Grpc(a), Source::Grpc(b)) => same(a, b),
            (Self::Tls(a), Source::Tls(b)) => same(a, b),
            (Self::Tcp(a), Source::Tcp(b)) => same(a, b),
            (Self::Udp(a), Source::Udp(b)) => same(a, b),
            _ => false,
        }
    }
}

/// The same object, or an equal one.
fn same<T: PartialEq>(a: &Arc<T>, b: &Arc<T>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// Both absent, or both there and [`same`].
fn same_found<T: PartialEq>(a: Option<&Arc<T>>, b: Option<&Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => same(a, b),
        (None, None) => true,
        _ => false,
    }
}

fn same_list<T: PartialEq>(a: &[Arc<T>], b: &[Arc<T>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same(a, b))
}

struct Entry {
    source: Kept,
    resolved: Arc<ResolvedRoute>,
}

/// Everything resolution reads besides Services and the route itself.
#[derive(Default)]
struct Context {
    reference_grants: Vec<Arc<ReferenceGrant>>,
    backend_tls_policies: Vec<Arc<BackendTlsPolicy>>,
    config_maps: Vec<Arc<ConfigMap>>,
    system_ca_file: Option<String>,
}

impl Context {
    fn of(input: &Input) -> Self {
        Self {
            reference_grants: input.reference_grants.clone(),
            backend_tls_policies: input.backend_tls_policies.clone(),
            config_maps: input.config_maps.clone(),
            system_ca_file: input.system_ca_file.clone(),
        }
    }

    fn matches(&self, input: &Input) -> bool {
        same_list(&self.reference_grants, &input.reference_grants)
            && same_list(&self.backend_tls_policies, &input.backend_tls_policies)
            && same_list(&self.config_maps, &input.config_maps)
            && self.system_ca_file == input.system_ca_file
    }
}

/// Everything resolving and emitting a Gateway reads besides its own
/// objects, its routes, and the Services and EndpointSlices of its
/// clusters: what route resolution reads, and more.
#[derive(Default)]
struct GatewayContext {
    routes: Context,
    controller_name: String,
    kubernetes_infrastructure: bool,
    gateway_classes: Vec<Arc<GatewayClass>>,
    secrets: Vec<Arc<Secret>>,
    namespaces: Vec<Arc<Namespace>>,
    proxy_parameters: BTreeSet<ObjectKey>,
}

impl GatewayContext {
    fn of(input: &Input) -> Self {
        Self {
            routes: Context::of(input),
            controller_name: input.controller_name.clone(),
            kubernetes_infrastructure: input.kubernetes_infrastructure,
            gateway_classes: input.gateway_classes.clone(),
            secrets: input.secrets.clone(),
            namespaces: input.namespaces.clone(),
            proxy_parameters: input.proxy_parameters.clone(),
        }
    }

    fn matches(&self, input: &Input) -> bool {
        self.routes.matches(input)
            && self.controller_name == input.controller_name
            && self.kubernetes_infrastructure == input.kubernetes_infrastructure
            && same_list(&self.gateway_classes, &input.gateway_classes)
            && same_list(&self.secrets, &input.secrets)
            && same_list(&self.namespaces, &input.namespaces)
            && self.proxy_parameters == input.proxy_parameters
    }
}

/// What one Gateway's emission reads (see the module documentation).
pub(crate) struct GatewayDeps<'a> {
    pub(crate) gateway: &'a Arc<Gateway>,
    pub(crate) sets: &'a [&'a Arc<ListenerSet>],
    pub(crate) bind_address: &'a str,
    pub(crate) edge: &'a EdgeSettings,
    /// The routes attachments index.
    pub(crate) routes: &'a [Arc<ResolvedRoute>],
}

/// A Gateway's emitted resources and what their emission read. Kept
/// compact: a Gateway re-emitted for every change (the only one there is)
/// pays for making and dropping its entry each time.
struct GatewayEntry {
    gateway: Arc<Gateway>,
    sets: Vec<Arc<ListenerSet>>,
    bind_address: String,
    edge: EdgeSettings,
    /// The attachments emission read, moved in (their route indices are
    /// into that translation's routes, so `routes[i]` is the route of
    /// `attachments[i]`).
    attachments: Vec<Attachment>,
    routes: Vec<Arc<ResolvedRoute>>,
    /// Per Service port of `resources.backends`, in order: the Service as
    /// found, and how many of `slices` are its EndpointSlices.
    services: Vec<(Option<Arc<Service>>, usize)>,
    slices: Vec<Arc<EndpointSlice>>,
    resources: Arc<GatewayResources>,
}

impl GatewayEntry {
    fn new(
        index: &Index<'_>,
        deps: &GatewayDeps<'_>,
        attachments: Vec<Attachment>,
        resources: Arc<GatewayResources>,
    ) -> Self {
        let mut services = Vec::with_capacity(resources.backends.len());
        let mut slices = Vec::with_capacity(resources.backends.len());
        for b in resources.backends.values().flat_map(ClusterFeed::ports) {
            let (ns, name) = (&b.service.namespace, &b.service.name);
            let found = index.slices(ns, name);
            slices.extend(found.iter().map(|s| Arc::clone(s)));
            services.push((index.service_shared(ns, name).cloned(), found.len()));
        }
        Self {
            gateway: Arc::clone(deps.gateway),
            sets: deps.sets.iter().map(|s| Arc::clone(s)).collect(),
            bind_address: deps.bind_address.to_owned(),
            edge: deps.edge.clone(),
            routes: attachments
                .iter()
                .map(|a| Arc::clone(&deps.routes[a.route]))
                .collect(),
            attachments,
            services,
            slices,
            resources,
        }
    }

    /// Whether emitting the Gateway from `deps` would read what it read
    /// when this entry was made.
    fn still(&self, index: &Index<'_>, deps: &GatewayDeps<'_>, attachments: &[Attachment]) -> bool {
        same(&self.gateway, deps.gateway)
            && self.sets.len() == deps.sets.len()
            && self.sets.iter().zip(deps.sets).all(|(a, b)| same(a, b))
            && self.bind_address == deps.bind_address
            && self.edge == *deps.edge
            && self.attachments.len() == attachments.len()
            && (self.attachments.iter().zip(&self.routes))
                .zip(attachments)
                .all(|((a, route), b)| {
                    // Resolved routes are compared by identity: an equal
                    // route resolved anew may emit differently after a
                    // Service change.
                    Arc::ptr_eq(route, &deps.routes[b.route])
                        && a.listener == b.listener
                        && a.hostnames == b.hostnames
                })
            && self.endpoints_still(index)
    }

    /// Whether every cluster's Service and EndpointSlices are as they were.
    fn endpoints_still(&self, index: &Index<'_>) -> bool {
        let mut kept = self.slices.iter();
        self.resources
            .backends
            .values()
            .flat_map(ClusterFeed::ports)
            .zip(&self.services)
            .all(|(b, (service, count))| {
                let (ns, name) = (&b.service.namespace, &b.service.name);
                let same_service = same_found(service.as_ref(), index.service_shared(ns, name));
                let found = index.slices(ns, name);
                same_service
                    && found.len() == *count
                    && found
                        .iter()
                        .all(|s| kept.next().is_some_and(|k| same(k, s)))
            })
    }
}

/// Resolved routes and emitted Gateways of the last translation.
#[derive(Default)]
pub(crate) struct Memo {
    /// Whether anything is kept for a next translation; a one-off
    /// [`crate::translate`] does not pay for keeping.
    pub(crate) keep: bool,
    context: Context,
    routes: HashMap<(RouteKind, ObjectKey), Entry>,
    gateway_context: GatewayContext,
    /// Entries of the last translation not yet looked at in this one.
    gateways: HashMap<ObjectKey, GatewayEntry>,
    /// Entries this translation made or confirmed.
    gateways_next: HashMap<ObjectKey, GatewayEntry>,
    pub(crate) reuse: crate::Reuse,
}

impl Memo {
    /// A memo that keeps what each translation resolved for the next.
    pub(crate) fn keeping() -> Self {
        Self {
            keep: true,
            ..Self::default()
        }
    }

    /// Starts a translation of `input`: entries that may depend on what
    /// changed in the resolution context are dropped.
    pub(crate) fn begin(&mut self, input: &Input) {
        self.reuse = crate::Reuse::default();
        if !self.keep {
            return;
        }
        if !self.context.matches(input) {
            self.routes.clear();
            self.context = Context::of(input);
        }
        if !self.gateway_context.matches(input) {
            self.gateways.clear();
            self.gateway_context = GatewayContext::of(input);
        }
    }

    /// The last translation's resources of the Gateway `key`, when its
    /// emission would read from `deps` and `attachments` what it read then.
    pub(crate) fn reusable_gateway(
        &mut self,
        index: &Index<'_>,
        key: &ObjectKey,
        deps: &GatewayDeps<'_>,
        attachments: &[Attachment],
    ) -> Option<Arc<GatewayResources>> {
        if !self.keep {
            return None;
        }
        let entry = (self.gateways.remove(key)).filter(|e| e.still(index, deps, attachments))?;
        self.reuse.gateways_reused += 1;
        let resources = Arc::clone(&entry.resources);
        self.gateways_next.insert(key.clone(), entry);
        Some(resources)
    }

    /// Keeps `resources`, just emitted for the Gateway `key` from `deps`
    /// and `attachments` (handed over), for the next translation.
    pub(crate) fn emitted_gateway(
        &mut self,
        index: &Index<'_>,
        key: &ObjectKey,
        deps: &GatewayDeps<'_>,
        attachments: Vec<Attachment>,
        resources: &Arc<GatewayResources>,
    ) {
        self.reuse.gateways_emitted += 1;
        if self.keep {
            let entry = GatewayEntry::new(index, deps, attachments, Arc::clone(resources));
            self.gateways_next.insert(key.clone(), entry);
        }
    }

    /// Ends a translation: entries of Gateways it did not emit are dropped.
    pub(crate) fn end(&mut self) {
        self.gateways = std::mem::take(&mut self.gateways_next);
    }

    /// The resolved routes of `sources` that `wanted` accepts (judged on
    /// the converted route), in the order of `sources`; routes are
    /// converted and resolved only when their entry cannot be reused.
    /// Entries of routes not seen here are dropped.
    pub(crate) fn resolve<'a>(
        &mut self,
        index: &Index<'_>,
        sources: impl Iterator<Item = Source<'a>>,
        wanted: impl Fn(&Route) -> bool,
    ) -> Vec<Arc<ResolvedRoute>> {
        let mut kept = HashMap::with_capacity(self.routes.len());
        let mut out = Vec::new();
        for source in sources {
            let key = (source.kind(), source.key());
            let reusable = self.routes.remove(&key).filter(|e| {
                e.source.is(&source)
                    && e.resolved.services.iter().all(|(k, found)| {
                        same_found(found.as_ref(), index.service_shared(&k.namespace, &k.name))
                    })
            });
            let entry = match reusable {
                Some(entry) => {
                    if !wanted(&entry.resolved.route) {
                        continue;
                    }
                    self.reuse.routes_reused += 1;
                    entry
                }
                None => {
                    let route = source.convert();
                    if !wanted(&route) {
                        continue;
                    }
                    self.reuse.routes_resolved += 1;
                    Entry {
                        source: source.keep(),
                        resolved: Arc::new(attach::resolve_route(index, route, self.keep)),
                    }
                }
            };
            out.push(Arc::clone(&entry.resolved));
            if self.keep {
                kept.insert(key, entry);
            }
        }
        self.routes = kept;
        out
    }
}
