//! What one translation keeps for the next (see [`crate::Translator`]): per
//! route, its converted and resolved form, which also carries the Envoy
//! routes emitted from it ([`crate::emit::EmittedRoutes`]).
//!
//! An entry is reused only when everything it was computed from is there
//! again, checked rather than assumed: the same route object, and every
//! Service its resolution looked up as it was found then (the same shared
//! object, or an equal one; an entry keeps the objects it compares, so a
//! freed object's address can never be mistaken for it). What resolution
//! reads besides Services (ReferenceGrants, BackendTLSPolicies, the
//! ConfigMaps those name, the system CA file) is compared as a whole, and
//! any change there drops every entry. A translation with a warm memo is
//! therefore the same, byte for byte, as one with an empty memo; the
//! translator's `incremental` tests check it over every golden case and
//! random change sequences.

use crate::api::backendtlspolicies::BackendTlsPolicy;
use crate::api::grpcroutes::GrpcRoute;
use crate::api::httproutes::HttpRoute;
use crate::api::referencegrants::ReferenceGrant;
use crate::api::tlsroutes::TlsRoute;
use crate::attach::{self, ResolvedRoute};
use crate::index::{self, Index};
use crate::input::{Input, ObjectKey};
use crate::model::{Route, RouteKind};
use k8s_openapi::api::core::v1::ConfigMap;
use std::collections::HashMap;
use std::sync::Arc;

/// One route object of the input, of any kind.
pub(crate) enum Source<'a> {
    Http(&'a Arc<HttpRoute>),
    Grpc(&'a Arc<GrpcRoute>),
    Tls(&'a Arc<TlsRoute>),
}

impl Source<'_> {
    fn kind(&self) -> RouteKind {
        match self {
            Self::Http(_) => RouteKind::Http,
            Self::Grpc(_) => RouteKind::Grpc,
            Self::Tls(_) => RouteKind::Tls,
        }
    }

    fn key(&self) -> ObjectKey {
        let (ns, name) = match self {
            Self::Http(r) => index::key_of(&r.metadata),
            Self::Grpc(r) => index::key_of(&r.metadata),
            Self::Tls(r) => index::key_of(&r.metadata),
        };
        ObjectKey::new(ns, name)
    }

    fn convert(&self) -> Route {
        match self {
            Self::Http(r) => Route::from(r.as_ref()),
            Self::Grpc(r) => Route::from(r.as_ref()),
            Self::Tls(r) => Route::from(r.as_ref()),
        }
    }

    fn keep(&self) -> Kept {
        match self {
            Self::Http(r) => Kept::Http(Arc::clone(r)),
            Self::Grpc(r) => Kept::Grpc(Arc::clone(r)),
            Self::Tls(r) => Kept::Tls(Arc::clone(r)),
        }
    }
}

/// The route object an entry was computed from.
enum Kept {
    Http(Arc<HttpRoute>),
    Grpc(Arc<GrpcRoute>),
    Tls(Arc<TlsRoute>),
}

impl Kept {
    fn is(&self, source: &Source<'_>) -> bool {
        match (self, source) {
            (Self::Http(a), Source::Http(b)) => same(a, b),
            (Self::Grpc(a), Source::Grpc(b)) => same(a, b),
            (Self::Tls(a), Source::Tls(b)) => same(a, b),
            _ => false,
        }
    }
}

/// The same object, or an equal one.
fn same<T: PartialEq>(a: &Arc<T>, b: &Arc<T>) -> bool {
    Arc::ptr_eq(a, b) || a == b
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

/// Resolved routes of the last translation, by kind and key.
#[derive(Default)]
pub(crate) struct Memo {
    /// Whether anything is kept for a next translation; a one-off
    /// [`crate::translate`] does not pay for keeping.
    pub(crate) keep: bool,
    context: Context,
    routes: HashMap<(RouteKind, ObjectKey), Entry>,
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
        if !self.context.matches(input) {
            self.routes.clear();
            self.context = Context::of(input);
        }
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
        self.reuse = crate::Reuse::default();
        for source in sources {
            let key = (source.kind(), source.key());
            let reusable = self.routes.remove(&key).filter(|e| {
                e.source.is(&source)
                    && e.resolved.services.iter().all(|(k, found)| {
                        match (found, index.service_shared(&k.namespace, &k.name)) {
                            (Some(a), Some(b)) => same(a, b),
                            (None, None) => true,
                            _ => false,
                        }
                    })
            });
            let entry = match reusable {
                Some(entry) => {
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
                        resolved: Arc::new(attach::resolve_route(index, route)),
                    }
                }
            };
            if !wanted(&entry.resolved.route) {
                continue;
            }
            out.push(Arc::clone(&entry.resolved));
            if self.keep {
                kept.insert(key, entry);
            }
        }
        self.routes = kept;
        out
    }
}
