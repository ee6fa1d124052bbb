//! Gatewright's translator: a pure function from a snapshot of Gateway API
//! (and core Kubernetes) objects to Envoy configuration per Gateway plus the
//! status of every object.
//!
//! No IO, no clock, no async: the same [`Input`], in any list order, gives a
//! byte-identical [`Output`].

pub mod api;
mod attach;
mod backend;
mod backend_tls;
mod conditions;
mod emit;
mod frontend;
mod gateway;
mod hostname;
mod index;
mod input;
mod listenerset;
mod memo;
mod model;
mod output;
pub mod re2;
mod unsupported;
mod validate;

pub use backend_tls::DEFAULT_SYSTEM_CA_FILE;
pub use emit::INVALID_BACKEND_CLUSTER;
pub use input::{DEFAULT_CONTROLLER_NAME, EdgeSettings, Input, InputError, InputObject, ObjectKey};
pub use output::{ClusterFeed, GatewayResources, Output, ServicePort, Statuses};

use crate::api::gatewayclasses::{GatewayClassStatus, GatewayClassStatusSupportedFeatures};
use attach::ParentStatus;
use conditions::{ConditionType, Conditions, Reason};
use index::Index;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The API group of Gatewright's own parameters kind, `ProxyParameters`.
pub const PROXY_PARAMETERS_GROUP: &str = "gatewright.dev";

/// The Gateway API conformance features Gatewright implements, as written
/// in GatewayClass `status.supportedFeatures` (sorted, as the spec asks).
/// A feature is listed only once the upstream conformance tests for it pass
/// (`make conformance`).
pub const SUPPORTED_FEATURES: &[&str] = &[
    "BackendTLSPolicy",
    "BackendTLSPolicySANValidation",
    "GRPCRoute",
    "GRPCRouteNamedRouteRule",
    "GRPCRouteRequestHeaderModifier",
    "Gateway",
    "GatewayAddressEmpty",
    "GatewayBackendClientCertificate",
    "GatewayFrontendClientCertificateValidation",
    "GatewayFrontendClientCertificateValidationInsecureFallback",
    "GatewayHTTPListenerIsolation",
    "GatewayHTTPSListenerDetectMisdirectedRequests",
    "GatewayPort8080",
    "GatewayRouteHostnameIntersectionPrecedence",
    "HTTPRoute",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
    "HTTPRouteBackendProtocolH2C",
    "HTTPRouteBackendProtocolWebSocket",
    "HTTPRouteBackendRequestHeaderModification",
    "HTTPRouteBackendTimeout",
    "HTTPRouteBackendURLRewrite",
    "HTTPRouteCORS",
    "HTTPRouteDestinationPortMatching",
    "HTTPRouteHostRewrite",
    "HTTPRouteMethodMatching",
    "HTTPRouteNamedRouteRule",
    "HTTPRouteParentRefPort",
    "HTTPRoutePathRedirect",
    "HTTPRoutePathRewrite",
    "HTTPRoutePortRedirect",
    "HTTPRouteQueryParamMatching",
    "HTTPRouteRequestMirror",
    "HTTPRouteRequestMultipleMirrors",
    "HTTPRouteRequestPercentageMirror",
    "HTTPRouteRequestTimeout",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteRetryCodes",
    "HTTPRouteRetryConnectionError",
    "HTTPRouteSchemeRedirect",
    "ListenerSet",
    "ReferenceGrant",
    "TCPRoute",
    "TLSRoute",
    "TLSRouteModeMixed",
    "TLSRouteModeTerminate",
    "UDPRoute",
];

/// Features only Kubernetes infrastructure provides, since they describe
/// the objects it provisions per Gateway (and the load balancer's
/// addresses); listed with [`SUPPORTED_FEATURES`] when
/// [`Input::kubernetes_infrastructure`] is set. Sorted.
pub const KUBERNETES_FEATURES: &[&str] = &["GatewayInfrastructure", "GatewayStaticAddresses"];

/// Whether Gatewright ever writes conditions of type `condition_type` (on
/// any object). A condition of another type in a live status is another
/// controller's, and status writers must leave it as it is.
pub fn writes_condition_type(condition_type: &str) -> bool {
    conditions::ConditionType::ALL
        .iter()
        .any(|t| t.as_str() == condition_type)
}

/// The features a GatewayClass lists in `status.supportedFeatures`, sorted.
pub fn supported_features(kubernetes_infrastructure: bool) -> Vec<&'static str> {
    let mut all: Vec<&'static str> = SUPPORTED_FEATURES.to_vec();
    if kubernetes_infrastructure {
        all.extend_from_slice(KUBERNETES_FEATURES);
        all.sort_unstable();
    }
    all
}

/// Why a Gateway of one of our classes is refused outright.
enum Refused {
    /// Its GatewayClass is not accepted (the class's message).
    Class(String),
    /// The Gateway itself asks for something we cannot do.
    Gateway(Reason, String),
}

/// The address type every infrastructure of Gatewright can give a Gateway.
const IP_ADDRESS: &str = "IPAddress";

/// Why a Gateway's `spec.addresses` cannot be honoured at all, if it
/// cannot: only `IPAddress` addresses (the default type) can be given, so
/// a Gateway asking for a hostname or a named address is not accepted
/// rather than served on an address it did not ask for. Nor is one that
/// asks for a `routability` (reachability scope), which is not implemented.
fn unsupported_address(gateway: &api::gateways::Gateway) -> Option<String> {
    let addresses = gateway.spec.addresses.iter().flatten();
    let describe = |a: &api::gateways::GatewayAddresses| {
        let type_ = a.r#type.as_deref().unwrap_or(IP_ADDRESS);
        format!("{type_} {:?}", a.value.as_deref().unwrap_or_default())
    };
    let of_type: Vec<String> = addresses
        .clone()
        .filter(|a| a.r#type.as_deref().unwrap_or(IP_ADDRESS) != IP_ADDRESS)
        .map(describe)
        .collect();
    let scoped: Vec<String> = addresses
        .filter_map(|a| {
            let routability = a.routability.as_deref().filter(|r| !r.is_empty())?;
            Some(format!("{} ({routability})", describe(a)))
        })
        .collect();
    let mut reasons = Vec::new();
    if !of_type.is_empty() {
        reasons.push(format!(
            "spec.addresses of unsupported type: {}; only {IP_ADDRESS} addresses can be given",
            of_type.join(", ")
        ));
    }
    if !scoped.is_empty() {
        reasons.push(format!(
            "spec.addresses with a routability: {}; Gatewright does not implement routability yet",
            scoped.join(", ")
        ));
    }
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

/// Translates one snapshot of objects into Envoy resources and statuses.
pub fn translate(input: &Input) -> Output {
    translate_with(input, &mut memo::Memo::default())
}

/// Translates successive snapshots, reusing from the last translation the
/// work on routes whose inputs did not change (their conversion, the
/// resolution of their backends and the Envoy routes emitted from them)
/// and the resources of Gateways whose inputs did not change. Each result
/// is exactly what [`translate`] gives for the same input.
pub struct Translator {
    memo: memo::Memo,
}

impl Default for Translator {
    fn default() -> Self {
        Self::new()
    }
}

impl Translator {
    /// A translator with nothing to reuse yet.
    pub fn new() -> Self {
        Self {
            memo: memo::Memo::keeping(),
        }
    }

    /// Translates `input`, as [`translate`] does.
    pub fn translate(&mut self, input: &Input) -> Output {
        translate_with(input, &mut self.memo)
    }

    /// How much of the last translation came from the one before.
    pub fn last_reuse(&self) -> Reuse {
        self.memo.reuse
    }
}

/// How much of a translation [`Translator`] took from the one before it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reuse {
    /// Routes of ours whose resolution and emitted Envoy routes were reused.
    pub routes_reused: usize,
    /// Routes of ours converted and resolved anew.
    pub routes_resolved: usize,
    /// Gateways whose Envoy resources were reused whole.
    pub gateways_reused: usize,
    /// Gateways whose Envoy resources were emitted anew.
    pub gateways_emitted: usize,
}

fn translate_with(input: &Input, memo: &mut memo::Memo) -> Output {
    memo.begin(input);
    let now = input
        .now
        .clone()
        .unwrap_or(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    let index = Index::new(input);
    let mut out = Output::default();

    // GatewayClasses of ours, by name (one per name, whatever the order).
    let mut ours: Vec<&crate::api::gatewayclasses::GatewayClass> = input
        .gateway_classes
        .iter()
        .map(Arc::as_ref)
        .filter(|gc| gc.spec.controller_name == input.controller_name)
        .collect();
    ours.sort_by(|a, b| {
        a.metadata
            .name
            .cmp(&b.metadata.name)
            .then_with(|| json_cmp(a, b))
    });
    ours.dedup_by(|a, b| a.metadata.name == b.metadata.name);
    let mut classes: BTreeSet<&str> = BTreeSet::new();
    let mut rejected: BTreeMap<&str, String> = BTreeMap::new();
    for gc in ours {
        let name = gc.metadata.name.as_deref().unwrap_or("");
        let mut c = Conditions::new(&now, gc.metadata.generation);
        match gc
            .spec
            .parameters_ref
            .as_ref()
            .map(|p| class_parameters(&index, p))
        {
            None | Some(Ok(())) => {
                classes.insert(name);
                c.set(
                    ConditionType::Accepted,
                    true,
                    Reason::Accepted,
                    "GatewayClass accepted by Gatewright",
                );
            }
            Some(Err(message)) => {
                c.set(
                    ConditionType::Accepted,
                    false,
                    Reason::InvalidParameters,
                    message.clone(),
                );
                rejected.insert(name, message);
            }
        }
        out.statuses.gateway_classes.insert(
            name.to_owned(),
            GatewayClassStatus {
                conditions: Some(c.into_vec()),
                supported_features: Some(
                    supported_features(input.kubernetes_infrastructure)
                        .into_iter()
                        .map(|name| GatewayClassStatusSupportedFeatures {
                            name: name.to_owned(),
                        })
                        .collect(),
                ),
            },
        );
    }
    // Gateways of a rejected class, or whose own parametersRef is invalid,
    // are not accepted and not programmed; they say why.
    let mut invalid_parameters: BTreeSet<(&str, &str)> = BTreeSet::new();
    for g in &input.gateways {
        let why = match rejected.get(g.spec.gateway_class_name.as_str()) {
            Some(message) => Refused::Class(format!(
                "GatewayClass {} is not accepted: {message}",
                g.spec.gateway_class_name
            )),
            None if classes.contains(g.spec.gateway_class_name.as_str()) => {
                match gateway_parameters(&index, g).and_then(|()| edge_settings(input, g)) {
                    Ok(()) => match unsupported_address(g) {
                        None => continue,
                        Some(message) => Refused::Gateway(Reason::UnsupportedAddress, message),
                    },
                    Err(message) => Refused::Gateway(Reason::InvalidParameters, message),
                }
            }
            None => continue,
        };
        let (reason, why) = match why {
            Refused::Class(message) => (Reason::InvalidParameters, message),
            Refused::Gateway(reason, message) => (reason, message),
        };
        let mut c = Conditions::new(&now, g.metadata.generation);
        c.set(ConditionType::Accepted, false, reason, why.clone());
        c.set(ConditionType::Programmed, false, Reason::Invalid, why);
        let (ns, name) = index::key_of(&g.metadata);
        invalid_parameters.insert((ns, name));
        out.statuses.gateways.insert(
            ObjectKey::new(ns, name),
            crate::api::gateways::GatewayStatus {
                conditions: Some(c.into_vec()),
                ..Default::default()
            },
        );
    }

    // Gateways of our classes, in key order, one per key.
    let mut gateways: Vec<&Arc<crate::api::gateways::Gateway>> = input
        .gateways
        .iter()
        .filter(|g| {
            classes.contains(g.spec.gateway_class_name.as_str())
                && !invalid_parameters.contains(&index::key_of(&g.metadata))
        })
        .collect();
    gateways.sort_by(|a, b| {
        index::key_of(&a.metadata)
            .cmp(&index::key_of(&b.metadata))
            .then_with(|| json_cmp(a.as_ref(), b.as_ref()))
    });
    gateways.dedup_by(|a, b| index::key_of(&a.metadata) == index::key_of(&b.metadata));
    let ours: BTreeSet<(&str, &str)> = gateways
        .iter()
        .map(|g| index::key_of(&g.metadata))
        .collect();

    // ListenerSets per Gateway they name, in merge order, one per key.
    let mut sets: Vec<&Arc<api::listenersets::ListenerSet>> = input.listener_sets.iter().collect();
    sets.sort_by(|a, b| {
        listenerset::precedence(a)
            .cmp(&listenerset::precedence(b))
            .then_with(|| json_cmp(a.as_ref(), b.as_ref()))
    });
    let mut seen: BTreeSet<(&str, &str)> = BTreeSet::new();
    sets.retain(|s| seen.insert(index::key_of(&s.metadata)));
    let mut sets_of: BTreeMap<(&str, &str), Vec<&Arc<api::listenersets::ListenerSet>>> =
        BTreeMap::new();
    for set in sets {
        let Some(parent) = listenerset::parent_of(set) else {
            continue;
        };
        if ours.contains(&parent) {
            sets_of.entry(parent).or_default().push(set);
        } else if invalid_parameters.contains(&parent) {
            let (ns, name) = index::key_of(&set.metadata);
            out.statuses.listener_sets.insert(
                ObjectKey::new(ns, name),
                listenerset::parent_not_accepted(set, &ObjectKey::new(parent.0, parent.1), &now),
            );
        }
    }

    // Each Gateway's ListenerSets, by the Gateway's position in `gateways`.
    let gateway_sets: Vec<&[&Arc<api::listenersets::ListenerSet>]> = gateways
        .iter()
        .map(|g| {
            sets_of
                .get(&index::key_of(&g.metadata))
                .map_or(&[][..], Vec::as_slice)
        })
        .collect();
    let mut infos: Vec<gateway::GatewayInfo<'_>> = gateways
        .iter()
        .zip(&gateway_sets)
        .map(|(g, sets)| {
            let sets: Vec<&api::listenersets::ListenerSet> =
                sets.iter().map(|s| s.as_ref()).collect();
            gateway::resolve(&index, g, &sets)
        })
        .collect();
    // ListenerSets naming our Gateways, by key (admitted or not: routes to
    // them get a status from us either way).
    let our_sets: BTreeSet<(String, String)> = infos
        .iter()
        .flat_map(|i| i.sets.iter())
        .map(|s| (s.key.namespace.clone(), s.key.name.clone()))
        .collect();

    // Routes naming at least one of our Gateways or their ListenerSets, or
    // asking for default Gateways when one of ours is, converted once.
    // Without a default Gateway of ours, useDefaultGateways is ignored, as
    // GEP-3793 asks.
    let any_default = infos.iter().any(|i| i.default_scope);
    let names_ours = |r: &model::Route| {
        (r.use_default_gateways && any_default)
            || r.parents.iter().any(|p| {
                (p.is_gateway() && ours.contains(&(p.namespace.as_str(), p.name.as_str())))
                    || (p.is_listener_set()
                        && our_sets.contains(&(p.namespace.clone(), p.name.clone())))
            })
    };
    let sources = (input.http_routes.iter().map(memo::Source::Http))
        .chain(input.grpc_routes.iter().map(memo::Source::Grpc))
        .chain(input.tls_routes.iter().map(memo::Source::Tls))
        .chain(input.tcp_routes.iter().map(memo::Source::Tcp))
        .chain(input.udp_routes.iter().map(memo::Source::Udp));
    let mut resolved = memo.resolve(&index, sources, names_ours);
    resolved.sort_by(|a, b| (a.route.kind, &a.route.key).cmp(&(b.route.kind, &b.route.key)));
    // Duplicate keys cannot come from an API server; keep the first by key.
    resolved.dedup_by(|a, b| (a.route.kind, &a.route.key) == (b.route.kind, &b.route.key));

    let (attachments, route_statuses) = attach::attach(&index, &mut infos, &resolved, &now);

    for ((gi, info), attachments) in infos.iter().enumerate().zip(attachments) {
        out.statuses
            .gateways
            .insert(info.key.clone(), gateway::status(info, &now));
        for set in &info.sets {
            out.statuses
                .listener_sets
                .insert(set.key.clone(), listenerset::status(info, set, &now));
        }
        let bind = input
            .bind_addresses
            .get(&info.key)
            .map_or("0.0.0.0", String::as_str);
        // Refused above when it is an error.
        let edge = match input.edge_settings.get(&info.key) {
            Some(Ok(settings)) => settings.clone(),
            _ => EdgeSettings::default(),
        };
        let deps = memo::GatewayDeps {
            gateway: gateways[gi],
            sets: gateway_sets[gi],
            bind_address: bind,
            edge: &edge,
            routes: &resolved,
        };
        let resources = match memo.reusable_gateway(&index, &info.key, &deps, &attachments) {
            Some(resources) => resources,
            None => {
                let emitter = emit::Emitter {
                    keep: memo.keep,
                    gateway: info,
                    routes: &resolved,
                    attachments: &attachments,
                    bind_address: bind,
                    edge: &edge,
                    index: &index,
                };
                let resources = Arc::new(emitter.emit());
                memo.emitted_gateway(&index, &info.key, &deps, attachments, &resources);
                resources
            }
        };
        out.gateways.insert(info.key.clone(), resources);
    }
    memo.end();

    out.statuses.backend_tls_policies =
        tls_policy_statuses(input, &index, &resolved, &route_statuses, &now);

    for (rr, parents) in resolved.iter().zip(route_statuses) {
        if parents.is_empty() {
            continue;
        }
        let key = rr.route.key.clone();
        let controller = input.controller_name.as_str();
        match rr.route.kind {
            model::RouteKind::Http => {
                out.statuses.http_routes.insert(
                    key,
                    api::httproutes::HttpRouteStatus {
                        parents: status_parents(parents, controller),
                    },
                );
            }
            model::RouteKind::Grpc => {
                out.statuses.grpc_routes.insert(
                    key,
                    api::grpcroutes::GrpcRouteStatus {
                        parents: status_parents(parents, controller),
                    },
                );
            }
            model::RouteKind::Tls => {
                out.statuses.tls_routes.insert(
                    key,
                    api::tlsroutes::TlsRouteStatus {
                        parents: status_parents(parents, controller),
                    },
                );
            }
            model::RouteKind::Tcp => {
                out.statuses.tcp_routes.insert(
                    key,
                    api::tcproutes::TcpRouteStatus {
                        parents: status_parents(parents, controller),
                    },
                );
            }
            model::RouteKind::Udp => {
                out.statuses.udp_routes.insert(
                    key,
                    api::udproutes::UdpRouteStatus {
                        parents: status_parents(parents, controller),
                    },
                );
            }
        }
    }
    out
}

/// Recomputes, in `output`, the endpoints (ClusterLoadAssignments) of every
/// cluster fed by one of `services`, from `input`'s Services and
/// EndpointSlices (the other lists of `input` may be empty: only these two
/// are read). Returns the Gateways whose resources changed.
///
/// `output` must be what [`translate`] gave for an input that differs from
/// `input` only in the EndpointSlices of `services`; the result is then
/// exactly `translate(input)`, statuses included (no status depends on
/// endpoints), at the cost of the changed Services' slices instead of a
/// whole translation. A change to anything else, a Service included (its
/// ports decide which clusters exist), needs [`translate`].
pub fn refresh_endpoints(
    input: &Input,
    output: &mut Output,
    services: &BTreeSet<ObjectKey>,
) -> BTreeSet<ObjectKey> {
    let mut changed = BTreeSet::new();
    if services.is_empty() {
        return changed;
    }
    // A UDPRoute's split cluster is fed by several Services: all of them
    // are read when one of them changes.
    let mut read = services.clone();
    for resources in output.gateways.values() {
        for feed in resources.backends.values() {
            if matches!(feed, ClusterFeed::Split(_))
                && feed.ports().any(|p| services.contains(&p.service))
            {
                read.extend(feed.ports().map(|p| p.service.clone()));
            }
        }
    }
    let index = Index::for_services(input, &read);
    for (key, resources) in &mut output.gateways {
        let mut fresh = Vec::new();
        for (cluster, feed) in &resources.backends {
            if !feed.ports().any(|p| services.contains(&p.service)) {
                continue;
            }
            let assignment = emit::load_assignment(&index, cluster, feed);
            // `endpoints` is sorted by cluster name (see GatewayResources).
            let at = resources
                .endpoints
                .binary_search_by(|e| e.cluster_name.as_str().cmp(cluster));
            // Unchanged assignments are left alone, so only Gateways whose
            // endpoints really moved are reported (and re-sent), and only
            // those are copied out of resources shared with others.
            match at {
                Ok(i) if resources.endpoints[i] == assignment => {}
                _ => fresh.push(assignment),
            }
        }
        if fresh.is_empty() {
            continue;
        }
        let endpoints = &mut Arc::make_mut(resources).endpoints;
        for assignment in fresh {
            match endpoints.binary_search_by(|e| e.cluster_name.cmp(&assignment.cluster_name)) {
                Ok(i) => endpoints[i] = assignment,
                // Not produced by `translate`, which emits one assignment
                // per cluster; filled in rather than left inconsistent.
                Err(i) => endpoints.insert(i, assignment),
            }
        }
        changed.insert(key.clone());
    }
    changed
}

/// The status of every BackendTLSPolicy that names a Service port a route
/// attached to a Gateway of ours sends to: one ancestor per such Gateway.
fn tls_policy_statuses(
    input: &Input,
    index: &Index<'_>,
    routes: &[Arc<attach::ResolvedRoute>],
    route_statuses: &[Vec<ParentStatus>],
    now: &Time,
) -> BTreeMap<ObjectKey, api::backendtlspolicies::BackendTlsPolicyStatus> {
    let mut ancestors: BTreeMap<ObjectKey, BTreeSet<ObjectKey>> = BTreeMap::new();
    for (rr, parents) in routes.iter().zip(route_statuses) {
        for policy in &rr.tls_policies {
            let gateways = ancestors.entry(policy.clone()).or_default();
            for p in parents {
                gateways.insert(ObjectKey::new(
                    p.parent.namespace.as_str(),
                    p.parent.name.as_str(),
                ));
            }
        }
    }
    ancestors.retain(|_, gateways| !gateways.is_empty());
    index
        .backend_tls()
        .statuses(&ancestors, &input.controller_name, now)
}

/// A route kind's `status.parents` list from kind-agnostic parent statuses.
fn status_parents<P: model::StatusParent>(parents: Vec<ParentStatus>, controller: &str) -> Vec<P> {
    parents
        .into_iter()
        .map(|ParentStatus { parent, conditions }| P::new(parent, conditions, controller))
        .collect()
}

/// Checks a GatewayClass parametersRef: the only kind Gatewright reads
/// parameters from is its own `ProxyParameters`, which is namespaced and
/// must exist. Any other kind (a ConfigMap included) would be accepted and
/// its content dropped, so it is refused.
fn class_parameters(
    index: &Index<'_>,
    p: &crate::api::gatewayclasses::GatewayClassParametersRef,
) -> Result<(), String> {
    check_parameters_kind(&p.group, &p.kind, "parametersRef")?;
    let ns = p.namespace.as_deref().unwrap_or("");
    if ns.is_empty() {
        return Err(format!(
            "parametersRef to ProxyParameters {} needs a namespace",
            p.name
        ));
    }
    if index.proxy_parameters(ns, &p.name) {
        Ok(())
    } else {
        Err(format!(
            "parametersRef ProxyParameters {ns}/{} does not exist",
            p.name
        ))
    }
}

/// Checks a Gateway's `spec.infrastructure.parametersRef`: a
/// `ProxyParameters` in the Gateway's namespace that exists.
fn gateway_parameters(
    index: &Index<'_>,
    gateway: &crate::api::gateways::Gateway,
) -> Result<(), String> {
    let Some(p) = gateway
        .spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.parameters_ref.as_ref())
    else {
        return Ok(());
    };
    let field = "spec.infrastructure.parametersRef";
    check_parameters_kind(&p.group, &p.kind, field)?;
    let (ns, _) = index::key_of(&gateway.metadata);
    if index.proxy_parameters(ns, &p.name) {
        Ok(())
    } else {
        Err(format!(
            "{field} ProxyParameters {ns}/{} does not exist",
            p.name
        ))
    }
}

/// The edge settings the control plane resolved for `gateway` from its
/// ProxyParameters: an invalid value refuses the Gateway, never serves it
/// with a default in its place.
fn edge_settings(input: &Input, gateway: &crate::api::gateways::Gateway) -> Result<(), String> {
    let (ns, name) = index::key_of(&gateway.metadata);
    match input.edge_settings.get(&ObjectKey::new(ns, name)) {
        Some(Err(message)) => Err(message.clone()),
        _ => Ok(()),
    }
}

fn check_parameters_kind(group: &str, kind: &str, field: &str) -> Result<(), String> {
    if group == PROXY_PARAMETERS_GROUP && kind == "ProxyParameters" {
        Ok(())
    } else {
        Err(format!(
            "{field} refers to {kind} (group {group:?}); only ProxyParameters \
             (group {PROXY_PARAMETERS_GROUP:?}) is supported"
        ))
    }
}

/// Orders two objects by their JSON form: the tie-breaker for duplicate keys.
fn json_cmp<T: serde::Serialize>(a: &T, b: &T) -> std::cmp::Ordering {
    serde_json::to_string(a)
        .unwrap_or_default()
        .cmp(&serde_json::to_string(b).unwrap_or_default())
}

#[cfg(test)]
mod supported_features_tests {
    #[test]
    fn supported_features_are_sorted_and_unique() {
        // The spec asks for status.supportedFeatures in ascending order.
        assert!(
            super::SUPPORTED_FEATURES.windows(2).all(|w| w[0] < w[1]),
            "SUPPORTED_FEATURES must be sorted and free of duplicates"
        );
    }

    #[test]
    fn kubernetes_features_only_with_kubernetes_infrastructure() {
        let host = super::supported_features(false);
        let kube = super::supported_features(true);
        assert_eq!(host, super::SUPPORTED_FEATURES);
        for feature in super::KUBERNETES_FEATURES {
            assert!(!host.contains(feature), "{feature} listed for host Envoys");
            assert!(kube.contains(feature), "{feature} missing with Kubernetes");
        }
        assert_eq!(
            kube.len(),
            host.len() + super::KUBERNETES_FEATURES.len(),
            "no duplicates"
        );
        assert!(kube.windows(2).all(|w| w[0] < w[1]), "sorted: {kube:?}");
    }
}
