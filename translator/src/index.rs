//! Look-ups over the input: objects by key, EndpointSlices by Service,
//! Namespace labels, ReferenceGrants and BackendTLSPolicies.

use crate::api::referencegrants::ReferenceGrant;
use crate::backend_tls::Policies;
use crate::input::{Input, ObjectKey};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// The API group of Gateway API objects.
pub(crate) const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

type Key<'a> = (&'a str, &'a str);
/// Objects by namespace, then name; nested so look-ups need no allocation.
type NsMap<'a, V> = HashMap<&'a str, HashMap<&'a str, V>>;

pub(crate) fn key_of(meta: &ObjectMeta) -> Key<'_> {
    (
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or(""),
    )
}

/// Inserts `obj` under `key`; on a duplicate key keeps the object whose JSON
/// sorts first, so the result never depends on input order.
fn insert_unique<'a, K: std::hash::Hash + Eq, T: serde::Serialize>(
    map: &mut HashMap<K, &'a Arc<T>>,
    key: K,
    obj: &'a Arc<T>,
) {
    match map.entry(key) {
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(obj);
        }
        std::collections::hash_map::Entry::Occupied(mut o) => {
            let old = serde_json::to_string(o.get().as_ref()).unwrap_or_default();
            let new = serde_json::to_string(obj.as_ref()).unwrap_or_default();
            if new < old {
                o.insert(obj);
            }
        }
    }
}

/// Services by key and EndpointSlices by the Service they belong to (their
/// `kubernetes.io/service-name` label), for the Services `keep(namespace,
/// name)` accepts: one definition for a full and a partial [`Index`], so
/// both resolve duplicates and orphan slices alike.
fn services_and_slices<'a>(
    input: &'a Input,
    keep: impl Fn(&str, &str) -> bool,
) -> (
    NsMap<'a, &'a Arc<Service>>,
    NsMap<'a, Vec<&'a Arc<EndpointSlice>>>,
) {
    let mut services: NsMap<'a, &'a Arc<Service>> = HashMap::new();
    for s in &input.services {
        let (ns, name) = key_of(&s.metadata);
        if keep(ns, name) {
            insert_unique(services.entry(ns).or_default(), name, s);
        }
    }
    let mut slices: NsMap<'a, Vec<&'a Arc<EndpointSlice>>> = HashMap::new();
    for s in &input.endpoint_slices {
        let ns = s.metadata.namespace.as_deref().unwrap_or("");
        if let Some(svc) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
            .filter(|svc| keep(ns, svc))
        {
            slices
                .entry(ns)
                .or_default()
                .entry(svc.as_str())
                .or_default()
                .push(s);
        }
    }
    (services, slices)
}

/// Read-only indexes built once per translation.
pub(crate) struct Index<'a> {
    services: NsMap<'a, &'a Arc<Service>>,
    slices: NsMap<'a, Vec<&'a Arc<EndpointSlice>>>,
    secrets: NsMap<'a, &'a Arc<Secret>>,
    config_maps: NsMap<'a, &'a Arc<ConfigMap>>,
    namespaces: HashMap<&'a str, &'a Arc<Namespace>>,
    grants: HashMap<&'a str, Vec<&'a ReferenceGrant>>,
    /// BackendTLSPolicies, resolved, and which one applies where.
    backend_tls: Policies<'a>,
    proxy_parameters: &'a std::collections::BTreeSet<crate::ObjectKey>,
}

impl<'a> Index<'a> {
    pub(crate) fn new(input: &'a Input) -> Self {
        let (services, slices) = services_and_slices(input, |_, _| true);
        let mut secrets: NsMap<'a, &'a Arc<Secret>> = HashMap::new();
        for s in &input.secrets {
            let (ns, name) = key_of(&s.metadata);
            insert_unique(secrets.entry(ns).or_default(), name, s);
        }
        let mut config_maps: NsMap<'a, &'a Arc<ConfigMap>> = HashMap::new();
        for c in &input.config_maps {
            let (ns, name) = key_of(&c.metadata);
            insert_unique(config_maps.entry(ns).or_default(), name, c);
        }
        let mut namespaces = HashMap::with_capacity(input.namespaces.len());
        for n in &input.namespaces {
            insert_unique(&mut namespaces, n.metadata.name.as_deref().unwrap_or(""), n);
        }
        let mut grants: HashMap<&'a str, Vec<&'a ReferenceGrant>> = HashMap::new();
        for g in input.reference_grants.iter().map(Arc::as_ref) {
            grants
                .entry(g.metadata.namespace.as_deref().unwrap_or(""))
                .or_default()
                .push(g);
        }
        let backend_tls = Policies::new(
            &input.backend_tls_policies,
            |ns, name| {
                config_maps
                    .get(ns)
                    .and_then(|m| m.get(name))
                    .copied()
                    .map(Arc::as_ref)
            },
            input
                .system_ca_file
                .as_deref()
                .unwrap_or(crate::backend_tls::DEFAULT_SYSTEM_CA_FILE),
        );
        Self {
            services,
            slices,
            secrets,
            config_maps,
            namespaces,
            grants,
            backend_tls,
            proxy_parameters: &input.proxy_parameters,
        }
    }

    /// An index of only the Services in `only` and their EndpointSlices,
    /// with every other look-up empty: all that computing a cluster's
    /// endpoints reads, built without scanning the other lists of `input`
    /// (which [`crate::refresh_endpoints`] allows to be empty).
    pub(crate) fn for_services(input: &'a Input, only: &BTreeSet<ObjectKey>) -> Self {
        // Every Service and slice of the input is tested against this set,
        // usually of one key: a few string comparisons (name first, as it
        // tells objects apart sooner) cost less than hashing each object.
        let wanted: BTreeSet<(&str, &str)> = only
            .iter()
            .map(|key| (key.name.as_str(), key.namespace.as_str()))
            .collect();
        let (services, slices) =
            services_and_slices(input, |ns, name| wanted.contains(&(name, ns)));
        Self {
            services,
            slices,
            secrets: HashMap::new(),
            config_maps: HashMap::new(),
            namespaces: HashMap::new(),
            grants: HashMap::new(),
            backend_tls: Policies::default(),
            proxy_parameters: &input.proxy_parameters,
        }
    }

    pub(crate) fn service(&self, ns: &str, name: &str) -> Option<&'a Service> {
        self.service_shared(ns, name).map(Arc::as_ref)
    }

    /// The Service as the input holds it: what a memoised result that read
    /// it keeps, to tell later whether it changed (see [`crate::memo`]).
    pub(crate) fn service_shared(&self, ns: &str, name: &str) -> Option<&'a Arc<Service>> {
        self.services.get(ns).and_then(|m| m.get(name)).copied()
    }

    pub(crate) fn secret(&self, ns: &str, name: &str) -> Option<&'a Secret> {
        self.secrets
            .get(ns)
            .and_then(|m| m.get(name))
            .copied()
            .map(Arc::as_ref)
    }

    /// Whether a Gatewright ProxyParameters object exists.
    pub(crate) fn proxy_parameters(&self, ns: &str, name: &str) -> bool {
        self.proxy_parameters
            .contains(&crate::ObjectKey::new(ns, name))
    }

    /// The BackendTLSPolicies, resolved.
    pub(crate) fn backend_tls(&self) -> &Policies<'a> {
        &self.backend_tls
    }

    pub(crate) fn config_map(&self, ns: &str, name: &str) -> Option<&'a ConfigMap> {
        self.config_maps
            .get(ns)
            .and_then(|m| m.get(name))
            .copied()
            .map(Arc::as_ref)
    }

    /// EndpointSlices of a Service (any order), as the input holds them.
    pub(crate) fn slices(&self, ns: &str, service: &str) -> &[&'a Arc<EndpointSlice>] {
        self.slices
            .get(ns)
            .and_then(|m| m.get(service))
            .map_or(&[], Vec::as_slice)
    }

    /// A Namespace's labels, including the `kubernetes.io/metadata.name`
    /// label the API server sets on every Namespace (so selectors work for
    /// Namespaces the input does not list).
    pub(crate) fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        let mut labels = self
            .namespaces
            .get(ns)
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default();
        labels.insert("kubernetes.io/metadata.name".to_owned(), ns.to_owned());
        labels
    }

    /// Whether an object of `from_kind` in `from_ns` may refer to the object
    /// `to_group/to_kind` `to_ns/to_name`: always within a namespace, across
    /// namespaces only when a ReferenceGrant in the target namespace allows it.
    pub(crate) fn reference_permitted(
        &self,
        from_kind: &str,
        from_ns: &str,
        to: RefTarget<'_>,
    ) -> bool {
        if from_ns == to.namespace {
            return true;
        }
        self.grants.get(to.namespace).is_some_and(|grants| {
            grants.iter().any(|g| {
                g.spec.from.iter().any(|f| {
                    f.group == GATEWAY_GROUP && f.kind == from_kind && f.namespace == from_ns
                }) && g.spec.to.iter().any(|t| {
                    t.group == to.group
                        && t.kind == to.kind
                        && t.name.as_deref().is_none_or(|n| n == to.name)
                })
            })
        })
    }
}

/// The target of a cross-namespace reference.
#[derive(Clone, Copy)]
pub(crate) struct RefTarget<'s> {
    pub(crate) group: &'s str,
    pub(crate) kind: &'s str,
    pub(crate) namespace: &'s str,
    pub(crate) name: &'s str,
}
