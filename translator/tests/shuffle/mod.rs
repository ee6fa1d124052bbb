//! Order-independence helpers shared by `determinism.rs` and `proptest.rs`:
//! shuffle an [`Input`] without changing what it means, and compare two
//! [`Output`]s resource by resource, byte for byte.

#![allow(dead_code)]

use gatewright_translator::{GatewayResources, Input, Output, Statuses};
use prost::Message;
use rand::Rng;
use rand::seq::SliceRandom;
use serde::Serialize;
use std::sync::Arc;

/// Shuffles every list of `input` whose order carries no meaning:
///
/// - every top-level object list (Kubernetes has no object order);
/// - with `inner`, also the lists inside objects that the APIs define as
///   sets: EndpointSlice endpoints and ports, Service ports (backendRefs pick
///   a port by number), ReferenceGrant `from` and `to`, and the
///   `matchExpressions` of label selectors and their `values`.
///
/// Lists whose order is meaningful (rules, matches, filters, backendRefs,
/// listeners, certificateRefs, parentRefs, hostnames, an endpoint's
/// addresses) are left alone.
pub fn shuffle_input<R: Rng + ?Sized>(input: &mut Input, rng: &mut R, inner: bool) {
    // Destructured so that a new list in `Input` fails to compile here
    // instead of silently escaping the shuffle.
    let Input {
        controller_name: _,
        now: _,
        bind_addresses: _,
        edge_settings: _,
        kubernetes_infrastructure: _,
        proxy_parameters: _,
        system_ca_file: _,
        gateway_classes,
        gateways,
        listener_sets,
        http_routes,
        grpc_routes,
        tls_routes,
        tcp_routes,
        udp_routes,
        reference_grants,
        backend_tls_policies,
        services,
        endpoint_slices,
        secrets,
        config_maps,
        namespaces,
    } = input;
    gateway_classes.shuffle(rng);
    gateways.shuffle(rng);
    listener_sets.shuffle(rng);
    http_routes.shuffle(rng);
    grpc_routes.shuffle(rng);
    tls_routes.shuffle(rng);
    tcp_routes.shuffle(rng);
    udp_routes.shuffle(rng);
    reference_grants.shuffle(rng);
    backend_tls_policies.shuffle(rng);
    services.shuffle(rng);
    endpoint_slices.shuffle(rng);
    secrets.shuffle(rng);
    config_maps.shuffle(rng);
    namespaces.shuffle(rng);
    if !inner {
        return;
    }
    // make_mut: the shuffled copy must not change the input it came from.
    for slice in endpoint_slices.iter_mut().map(Arc::make_mut) {
        if let Some(endpoints) = slice.endpoints.as_mut() {
            endpoints.shuffle(rng);
        }
        if let Some(ports) = slice.ports.as_mut() {
            ports.shuffle(rng);
        }
    }
    for svc in services.iter_mut().map(Arc::make_mut) {
        if let Some(ports) = svc.spec.as_mut().and_then(|spec| spec.ports.as_mut()) {
            ports.shuffle(rng);
        }
    }
    for grant in reference_grants.iter_mut().map(Arc::make_mut) {
        grant.spec.from.shuffle(rng);
        grant.spec.to.shuffle(rng);
    }
    for gateway in gateways.iter_mut().map(Arc::make_mut) {
        for listener in gateway.spec.listeners.iter_mut() {
            let selector = listener
                .allowed_routes
                .as_mut()
                .and_then(|allowed| allowed.namespaces.as_mut())
                .and_then(|namespaces| namespaces.selector.as_mut());
            if let Some(exprs) = selector.and_then(|selector| selector.match_expressions.as_mut()) {
                exprs.shuffle(rng);
                for expr in exprs.iter_mut() {
                    if let Some(values) = expr.values.as_mut() {
                        values.shuffle(rng);
                    }
                }
            }
        }
    }
}

/// Every resource and status of `output`, labelled and encoded: Envoy
/// resources with prost, statuses as JSON. Two outputs are byte-identical
/// iff these lists are equal.
pub fn encoded(output: &Output) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (key, resources) in &output.gateways {
        let GatewayResources {
            listeners,
            routes,
            clusters,
            endpoints,
            secrets,
            backends,
        } = resources.as_ref();
        for r in listeners {
            out.push((
                format!("gateway {key} listener {}", r.name),
                r.encode_to_vec(),
            ));
        }
        for r in routes {
            out.push((format!("gateway {key} route {}", r.name), r.encode_to_vec()));
        }
        for r in clusters {
            out.push((
                format!("gateway {key} cluster {}", r.name),
                r.encode_to_vec(),
            ));
        }
        for r in endpoints {
            out.push((
                format!("gateway {key} endpoints {}", r.cluster_name),
                r.encode_to_vec(),
            ));
        }
        for r in secrets {
            out.push((
                format!("gateway {key} secret {}", r.name),
                r.encode_to_vec(),
            ));
        }
        // Not an Envoy resource, but part of the output all the same.
        for (cluster, backend) in backends {
            out.push((
                format!("gateway {key} backend {cluster}"),
                format!("{backend:?}").into_bytes(),
            ));
        }
    }
    let Statuses {
        gateway_classes,
        gateways,
        listener_sets,
        http_routes,
        grpc_routes,
        tls_routes,
        tcp_routes,
        udp_routes,
        backend_tls_policies,
    } = &output.statuses;
    fn push<K: std::fmt::Display, V: Serialize>(
        out: &mut Vec<(String, Vec<u8>)>,
        kind: &str,
        map: &std::collections::BTreeMap<K, V>,
    ) {
        for (key, status) in map {
            let bytes = serde_json::to_vec(status).expect("statuses serialise to JSON");
            out.push((format!("status {kind} {key}"), bytes));
        }
    }
    push(&mut out, "GatewayClass", gateway_classes);
    push(&mut out, "Gateway", gateways);
    push(&mut out, "ListenerSet", listener_sets);
    push(&mut out, "HTTPRoute", http_routes);
    push(&mut out, "GRPCRoute", grpc_routes);
    push(&mut out, "TLSRoute", tls_routes);
    push(&mut out, "TCPRoute", tcp_routes);
    push(&mut out, "UDPRoute", udp_routes);
    push(&mut out, "BackendTLSPolicy", backend_tls_policies);
    out
}

/// `Ok` if `actual` equals `expected` both as values (`PartialEq`) and as
/// bytes; otherwise a short description of the first difference.
pub fn compare_outputs(expected: &Output, actual: &Output) -> Result<(), String> {
    let a = encoded(expected);
    let b = encoded(actual);
    let values_equal = expected == actual;
    if values_equal && a == b {
        return Ok(());
    }
    let mut problems = Vec::new();
    if !values_equal {
        problems.push("outputs differ as values (PartialEq)".to_owned());
    }
    let names_a: Vec<&str> = a.iter().map(|(name, _)| name.as_str()).collect();
    let names_b: Vec<&str> = b.iter().map(|(name, _)| name.as_str()).collect();
    if names_a != names_b {
        let only_a: Vec<&&str> = names_a
            .iter()
            .filter(|n| !names_b.contains(n))
            .take(5)
            .collect();
        let only_b: Vec<&&str> = names_b
            .iter()
            .filter(|n| !names_a.contains(n))
            .take(5)
            .collect();
        problems.push(format!(
            "resource lists differ ({} vs {} entries); only in expected: {only_a:?}; only in actual: {only_b:?}; \
             or the same names in another order",
            names_a.len(),
            names_b.len()
        ));
    } else {
        let differing: Vec<&str> = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| x.1 != y.1)
            .map(|(x, _)| x.0.as_str())
            .take(5)
            .collect();
        if !differing.is_empty() {
            let hint = if values_equal {
                " (equal as values but not as bytes: prost encodes map fields -- typed_per_filter_config, \
                 Struct, Metadata -- in HashMap order, so a map with two or more entries encodes differently \
                 from one run to the next)"
            } else {
                ""
            };
            problems.push(format!("encodings differ for {differing:?}{hint}"));
        }
    }
    Err(problems.join("; "))
}
