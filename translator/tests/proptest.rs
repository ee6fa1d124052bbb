//! Property tests of the translator on random-but-plausible object sets:
//! GatewayClasses (ours or another controller's), Gateways with random
//! listeners (good and bad protocols, clashing ports and hostnames, every
//! allowedRoutes shape, certificateRefs to good, missing and malformed
//! Secrets), HTTPRoutes / GRPCRoutes / TLSRoutes with random parentRefs,
//! hostnames, matches, filters and backendRefs, ReferenceGrants, Services
//! with EndpointSlices, labelled Namespaces.
//!
//! Properties:
//!
//! - `translate` never panics and its output keeps the structural
//!   invariants of [`check_invariants`] (256 cases);
//! - the output loads in a real Envoy (`support::envoy_validate`; 24 cases,
//!   about half a second each);
//! - shuffling the input does not change the output (64 cases);
//! - after replacing one Service's EndpointSlices, `refresh_endpoints` on
//!   the previous output gives the output of a full translation (64 cases).
//!
//! `PROPTEST_CASES` overrides every case count (e.g. for a long fuzzing
//! run). Failures are persisted in `tests/proptest-regressions/proptest.txt`
//! and replayed first on every run; commit that file. A failing case is
//! printed as multi-document YAML, ready to become a `testdata/translator`
//! case.

mod shuffle;
mod support;
mod workload;

use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::{ClusterNotFoundResponseCode, ClusterSpecifier};
use envoy_types::pb::envoy::config::route::v3::{RouteAction, RouteConfiguration};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier as TcpClusterSpecifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, transport_socket};
use gatewright_translator::{
    GatewayResources, INVALID_BACKEND_CLUSTER, Input, ObjectKey, Output, translate,
};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::FileFailurePersistence;
use prost::Message;
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// Where failing cases are persisted (and replayed from).
const REGRESSIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/proptest-regressions/proptest.txt"
);

/// `PROPTEST_CASES` if set, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(default_cases: u32, max_shrink_iters: u32) -> ProptestConfig {
    ProptestConfig {
        cases: cases(default_cases),
        max_shrink_iters,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Pools: small, so that references hit and conflicts happen
// ---------------------------------------------------------------------------

const OUR_CLASS: &str = "ours";
const OTHER_CLASS: &str = "other";
const OTHER_CONTROLLER: &str = "example.com/other-controller";
const NAMESPACES: &[&str] = &["default", "apps", "infra"];
const SECRET_NAMES: &[&str] = &["cert-0", "cert-1", "cert-2"];
const LISTENER_HOSTNAMES: &[Option<&str>] = &[
    None,
    None,
    Some("example.com"),
    Some("*.example.com"),
    Some("a.example.com"),
    Some("*.a.example.com"),
    Some("other.test"),
];
const ROUTE_HOSTNAMES: &[&str] = &[
    "example.com",
    "a.example.com",
    "b.a.example.com",
    "*.example.com",
    "*.a.example.com",
    "other.test",
    "*.test",
];
const TIMESTAMPS: &[Option<&str>] = &[
    None,
    Some("2024-01-01T00:00:00Z"),
    Some("2024-01-02T00:00:00Z"),
];

fn pick<T: Clone + fmt::Debug + 'static>(pool: &'static [T]) -> impl Strategy<Value = T> + Clone {
    select(pool)
}

/// One of `choices`, each as likely as its weight.
fn weighted<T: Clone + fmt::Debug + 'static>(
    choices: &[(usize, T)],
) -> impl Strategy<Value = T> + Clone {
    let pool: Vec<T> = choices
        .iter()
        .flat_map(|(weight, choice)| std::iter::repeat_n(choice.clone(), *weight))
        .collect();
    select(pool)
}

/// Sets `obj[key] = value` unless `value` is `None`.
fn set<T: Into<Value>>(obj: &mut Value, key: &str, value: Option<T>) {
    if let Some(value) = value {
        obj[key] = value.into();
    }
}

fn metadata(namespace: Option<&str>, name: &str, created: Option<&str>) -> Value {
    let mut meta = json!({"name": name});
    set(&mut meta, "namespace", namespace);
    set(&mut meta, "creationTimestamp", created);
    meta
}

// ---------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------

/// One random snapshot: Kubernetes objects as JSON documents (unique by
/// kind, namespace and name, as in a real cluster), and whether `now` is set.
#[derive(Clone)]
struct Scenario {
    with_now: bool,
    documents: Vec<Value>,
}

impl fmt::Debug for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "# now set: {}", self.with_now)?;
        for doc in &self.documents {
            let yaml = serde_yaml::to_string(doc).map_err(|_| fmt::Error)?;
            write!(f, "---\n{yaml}")?;
        }
        Ok(())
    }
}

impl Scenario {
    fn input(&self) -> Input {
        let mut input = Input::new();
        if self.with_now {
            input.now = Some(support::case_now());
        }
        for doc in &self.documents {
            workload::add(&mut input, doc.clone());
        }
        input
    }
}

fn identity(doc: &Value) -> (String, String, String) {
    let field = |pointer: &str| {
        doc.pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    (
        field("/kind"),
        field("/metadata/namespace"),
        field("/metadata/name"),
    )
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        prop::bool::weighted(0.5),
        prop::bool::weighted(0.6),
        gateway_classes(),
        namespaces(),
        vec(gateway(), 1..4),
        vec(secret(), 0..4),
        vec(service(), 2..8),
        vec(reference_grant(), 0..3),
        vec(http_route(), 0..5),
        vec(grpc_route(), 0..3),
        vec(tls_route(), 0..3),
    )
        .prop_map(
            |(
                with_now,
                with_base,
                classes,
                namespaces,
                gateways,
                secrets,
                services,
                grants,
                http,
                grpc,
                tls,
            )| {
                let mut documents = if with_base {
                    base_documents()
                } else {
                    Vec::new()
                };
                documents.extend(classes);
                documents.extend(namespaces);
                documents.extend(name_by_index(gateways, "gw"));
                documents.extend(secrets);
                documents.extend(services.into_iter().flatten());
                documents.extend(name_by_index(grants, "grant"));
                documents.extend(name_by_index(http, "http"));
                documents.extend(name_by_index(grpc, "grpc"));
                documents.extend(name_by_index(tls, "tls"));
                let mut seen = BTreeSet::new();
                documents.retain(|doc| seen.insert(identity(doc)));
                Scenario {
                    with_now,
                    documents,
                }
            },
        )
}

/// A sound core most scenarios start from, so that many random routes
/// attach and resolve: our GatewayClass; Gateway `infra/gw-0` with an HTTP
/// listener `l-0` on 80, an HTTPS listener `l-1` on 443 for
/// `*.example.com` (Secret `infra/cert-0`) and a TLS passthrough listener
/// `l-2` on 8443, all admitting routes from every namespace; Service `svc-0`
/// (ports 80 and h2c 9090, two ready endpoints) in every namespace. Random
/// objects with the same name are dropped in its favour.
fn base_documents() -> Vec<Value> {
    let mut docs = vec![
        workload::gateway_class(OUR_CLASS, gatewright_translator::DEFAULT_CONTROLLER_NAME),
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"namespace": "infra", "name": "gw-0"},
            "spec": {
                "gatewayClassName": OUR_CLASS,
                "listeners": [
                    {
                        "name": "l-0",
                        "protocol": "HTTP",
                        "port": 80,
                        "allowedRoutes": {"namespaces": {"from": "All"}},
                    },
                    {
                        "name": "l-1",
                        "protocol": "HTTPS",
                        "port": 443,
                        "hostname": "*.example.com",
                        "tls": {"mode": "Terminate", "certificateRefs": [{"name": "cert-0"}]},
                        "allowedRoutes": {"namespaces": {"from": "All"}},
                    },
                    {
                        "name": "l-2",
                        "protocol": "TLS",
                        "port": 8443,
                        "tls": {"mode": "Passthrough"},
                        "allowedRoutes": {"namespaces": {"from": "All"}},
                    },
                ],
            },
        }),
        serde_json::to_value(workload::tls_secret(
            "infra",
            "cert-0",
            workload::EXAMPLE_CERT_PEM,
            workload::EXAMPLE_KEY_PEM,
        ))
        .expect("a Secret serialises to JSON"),
    ];
    for (i, namespace) in NAMESPACES.iter().enumerate() {
        let ports = [SERVICE_PORTS[0], SERVICE_PORTS[2]];
        docs.push(workload::service(namespace, "svc-0", &ports));
        let first = u32::try_from(100 + 2 * i).expect("small");
        docs.push(workload::endpoint_slice(
            namespace,
            "svc-0",
            "base",
            &[
                (workload::ipv4(first), true),
                (workload::ipv4(first + 1), true),
            ],
            &[("http", 80), ("grpc", 9090)],
        ));
    }
    docs
}

fn name_by_index(docs: Vec<Value>, prefix: &str) -> impl Iterator<Item = Value> {
    let prefix = prefix.to_owned();
    docs.into_iter().enumerate().map(move |(i, mut doc)| {
        doc["metadata"]["name"] = json!(format!("{prefix}-{i}"));
        doc
    })
}

// ---------------------------------------------------------------------------
// GatewayClasses, Namespaces, Secrets
// ---------------------------------------------------------------------------

fn gateway_classes() -> impl Strategy<Value = Vec<Value>> {
    (prop::bool::weighted(0.9), prop::bool::weighted(0.5)).prop_map(|(ours, other)| {
        let mut docs = Vec::new();
        if ours {
            docs.push(workload::gateway_class(
                OUR_CLASS,
                gatewright_translator::DEFAULT_CONTROLLER_NAME,
            ));
        }
        if other {
            docs.push(workload::gateway_class(OTHER_CLASS, OTHER_CONTROLLER));
        }
        docs
    })
}

/// Each pool namespace exists (with an `env` label) or not.
fn namespaces() -> impl Strategy<Value = Vec<Value>> {
    vec(
        option::weighted(0.8, pick(&["prod", "dev"])),
        NAMESPACES.len(),
    )
    .prop_map(|envs| {
        NAMESPACES
            .iter()
            .zip(envs)
            .filter_map(|(name, env)| {
                env.map(|env| {
                    workload::namespace(
                        name,
                        &[("kubernetes.io/metadata.name", name), ("env", env)],
                    )
                })
            })
            .collect()
    })
}

/// A Secret, good or not: 0 a valid TLS pair, 1 a certificate that is not
/// PEM, 2 no `tls.key`, 3 a valid pair in an Opaque Secret.
fn secret() -> impl Strategy<Value = Value> {
    (
        pick(SECRET_NAMES),
        pick(&["infra", "infra", "default", "apps"]),
        0..4u8,
    )
        .prop_map(|(name, namespace, variant)| {
            let mut data = BTreeMap::new();
            let cert = if variant == 1 {
                "not a certificate"
            } else {
                workload::EXAMPLE_CERT_PEM
            };
            data.insert("tls.crt".to_owned(), ByteString(cert.as_bytes().to_vec()));
            if variant != 2 {
                data.insert(
                    "tls.key".to_owned(),
                    ByteString(workload::EXAMPLE_KEY_PEM.as_bytes().to_vec()),
                );
            }
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    namespace: Some(namespace.to_owned()),
                    ..ObjectMeta::default()
                },
                type_: Some(
                    if variant == 3 {
                        "Opaque"
                    } else {
                        "kubernetes.io/tls"
                    }
                    .to_owned(),
                ),
                data: Some(data),
                ..Secret::default()
            };
            serde_json::to_value(&secret).expect("a Secret serialises to JSON")
        })
}

// ---------------------------------------------------------------------------
// Gateways
// ---------------------------------------------------------------------------

fn gateway() -> impl Strategy<Value = Value> {
    (
        weighted(&[(3, "infra"), (1, "default")]),
        weighted(&[(5, OUR_CLASS), (1, OTHER_CLASS), (1, "missing-class")]),
        vec(listener(), 1..5),
        pick(TIMESTAMPS),
    )
        .prop_map(|(namespace, class, listeners, created)| {
            let listeners: Vec<Value> = listeners
                .into_iter()
                .enumerate()
                .map(|(i, mut l)| {
                    l["name"] = json!(format!("l-{i}"));
                    l
                })
                .collect();
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "Gateway",
                "metadata": metadata(Some(namespace), "", created),
                "spec": {"gatewayClassName": class, "listeners": listeners},
            })
        })
}

fn listener() -> impl Strategy<Value = Value> {
    (
        weighted(&[
            (4, "HTTP"),
            (3, "HTTPS"),
            (2, "TLS"),
            (1, "TCP"),
            (1, "example.com/bogus"),
        ]),
        pick(&[80, 443, 8443]),
        pick(LISTENER_HOSTNAMES),
        allowed_routes(),
        option::weighted(0.9, listener_tls()),
    )
        .prop_map(|(protocol, port, hostname, allowed_routes, tls)| {
            let mut l = json!({"name": "", "protocol": protocol, "port": port});
            set(&mut l, "hostname", hostname);
            set(&mut l, "allowedRoutes", allowed_routes);
            // TLS settings only on protocols that take them, mostly.
            if matches!(protocol, "HTTPS" | "TLS") || port == 8443 {
                set(&mut l, "tls", tls);
            }
            l
        })
}

fn allowed_routes() -> impl Strategy<Value = Option<Value>> {
    let namespaces = weighted(&[
        (1, None),
        (1, Some("Same")),
        (5, Some("All")),
        (1, Some("labels")),
        (1, Some("expressions")),
    ]);
    let kinds = weighted(&[
        (8, None),
        (1, Some("HTTPRoute")),
        (1, Some("GRPCRoute")),
        (1, Some("TLSRoute")),
        (1, Some("both")),
        (1, Some("bogus")),
    ]);
    (namespaces, kinds).prop_map(|(from, kinds)| {
        if from.is_none() && kinds.is_none() {
            return None;
        }
        let mut allowed = json!({});
        let namespaces = match from {
            None => None,
            Some("labels") => Some(json!({"from": "Selector", "selector": {"matchLabels": {"env": "prod"}}})),
            Some("expressions") => Some(json!({"from": "Selector", "selector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["infra", "apps"]},
                {"key": "env", "operator": "Exists"},
            ]}})),
            Some(from) => Some(json!({"from": from})),
        };
        set(&mut allowed, "namespaces", namespaces);
        let kinds = match kinds {
            None => None,
            Some("both") => Some(json!([{"kind": "HTTPRoute"}, {"kind": "GRPCRoute"}])),
            Some("bogus") => Some(json!([{"group": "example.com", "kind": "HTTPRoute"}, {"kind": "Bogus"}])),
            Some(kind) => Some(json!([{"group": "gateway.networking.k8s.io", "kind": kind}])),
        };
        set(&mut allowed, "kinds", kinds);
        Some(allowed)
    })
}

fn listener_tls() -> impl Strategy<Value = Value> {
    (
        pick(&[
            None,
            Some("Terminate"),
            Some("Terminate"),
            Some("Passthrough"),
        ]),
        vec(certificate_ref(), 0..3),
    )
        .prop_map(|(mode, refs)| {
            let mut tls = json!({});
            set(&mut tls, "mode", mode);
            if !refs.is_empty() {
                tls["certificateRefs"] = Value::Array(refs);
            }
            tls
        })
}

fn certificate_ref() -> impl Strategy<Value = Value> {
    (
        pick(&["cert-0", "cert-1", "cert-2", "missing"]),
        option::weighted(0.25, pick(NAMESPACES)),
        pick(&[None, None, Some("Secret"), Some("ConfigMap")]),
        pick(&[None, None, Some(""), Some("example.com")]),
    )
        .prop_map(|(name, namespace, kind, group)| {
            let mut r = json!({"name": name});
            set(&mut r, "namespace", namespace);
            set(&mut r, "kind", kind);
            set(&mut r, "group", group);
            r
        })
}

// ---------------------------------------------------------------------------
// Services and EndpointSlices
// ---------------------------------------------------------------------------

/// (port name, port, appProtocol) of the Service ports on offer.
const SERVICE_PORTS: &[workload::ServicePort<'static>] = &[
    ("http", 80, None),
    ("alt", 8080, None),
    ("grpc", 9090, Some("kubernetes.io/h2c")),
];

/// A Service and its EndpointSlices.
fn service() -> impl Strategy<Value = Vec<Value>> {
    (
        weighted(&[(4, "svc-0"), (1, "svc-1"), (1, "svc-2")]),
        pick(NAMESPACES),
        weighted(&[(5, 0b001), (2, 0b101), (1, 0b010), (1, 0b100), (1, 0b111)]).prop_map(
            |mask: u8| {
                SERVICE_PORTS
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, port)| *port)
                    .collect::<Vec<_>>()
            },
        ),
        vec(endpoint_slice(), 0..3),
    )
        .prop_map(|(name, namespace, ports, slices)| {
            let mut docs = vec![workload::service(namespace, name, &ports)];
            for (i, (address_type, endpoints, port_variant)) in slices.into_iter().enumerate() {
                let ports: Vec<(&str, i32)> = match port_variant {
                    0 => ports.iter().map(|&(n, p, _)| (n, p)).collect(),
                    1 => ports.iter().map(|&(n, p, _)| (n, p + 1)).collect(),
                    _ => Vec::new(),
                };
                let endpoints: Vec<(String, Option<bool>)> = endpoints
                    .into_iter()
                    .map(|(host, ready)| {
                        let address = match address_type {
                            "IPv6" => format!("fd00::{}", host + 1),
                            "FQDN" => format!("ep-{host}.example.com"),
                            _ => format!("10.0.0.{}", host + 1),
                        };
                        (address, ready)
                    })
                    .collect();
                let mut slice =
                    workload::endpoint_slice(namespace, name, &format!("s{i}"), &[], &ports);
                slice["addressType"] = json!(address_type);
                slice["endpoints"] = endpoints
                    .into_iter()
                    .map(|(address, ready)| {
                        let mut e = json!({"addresses": [address]});
                        if let Some(ready) = ready {
                            e["conditions"] = json!({"ready": ready});
                        }
                        e
                    })
                    .collect();
                if port_variant > 1 {
                    slice
                        .as_object_mut()
                        .expect("a slice is an object")
                        .remove("ports");
                }
                docs.push(slice);
            }
            docs
        })
}

/// (addressType, endpoints (host, ready), port variant: 0 the Service's
/// ports, 1 other numbers, 2 none).
fn endpoint_slice() -> impl Strategy<Value = (&'static str, Vec<(u8, Option<bool>)>, u8)> {
    (
        pick(&["IPv4", "IPv4", "IPv4", "IPv6", "FQDN"]),
        vec(
            (0..6u8, option::weighted(0.8, prop::bool::weighted(0.75))),
            0..4,
        ),
        pick(&[0u8, 0, 0, 1, 2]),
    )
}

// ---------------------------------------------------------------------------
// ReferenceGrants
// ---------------------------------------------------------------------------

fn reference_grant() -> impl Strategy<Value = Value> {
    (
        pick(NAMESPACES),
        vec((pick(&["HTTPRoute", "GRPCRoute", "TLSRoute", "Gateway"]), pick(NAMESPACES)), 1..3),
        vec((pick(&["Service", "Secret"]), option::weighted(0.3, pick(&["svc-0", "cert-0"]))), 1..3),
    )
        .prop_map(|(namespace, from, to)| {
            let from: Vec<Value> = from
                .into_iter()
                .map(|(kind, ns)| json!({"group": "gateway.networking.k8s.io", "kind": kind, "namespace": ns}))
                .collect();
            let to: Vec<Value> = to
                .into_iter()
                .map(|(kind, name)| {
                    let mut t = json!({"group": "", "kind": kind});
                    set(&mut t, "name", name);
                    t
                })
                .collect();
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1beta1",
                "kind": "ReferenceGrant",
                "metadata": metadata(Some(namespace), "", None),
                "spec": {"from": from, "to": to},
            })
        })
}

// ---------------------------------------------------------------------------
// Routes: shared parts
// ---------------------------------------------------------------------------

fn parent_ref() -> impl Strategy<Value = Value> {
    (
        weighted(&[(4, "gw-0"), (2, "gw-1"), (1, "gw-2"), (1, "missing")]),
        weighted(&[
            (1, None),
            (6, Some("infra")),
            (1, Some("default")),
            (1, Some("apps")),
        ]),
        weighted(&[
            (6, None),
            (2, Some("l-0")),
            (1, Some("l-1")),
            (1, Some("nope")),
        ]),
        weighted(&[(8, None), (1, Some(80)), (1, Some(443)), (1, Some(1))]),
        weighted(&[(8, None), (1, Some("Gateway")), (1, Some("Service"))]),
    )
        .prop_map(|(name, namespace, section, port, kind)| {
            let mut r = json!({"name": name});
            set(&mut r, "namespace", namespace);
            set(&mut r, "sectionName", section);
            set(&mut r, "port", port);
            set(&mut r, "kind", kind);
            r
        })
}

fn parent_refs() -> impl Strategy<Value = Vec<Value>> {
    vec(parent_ref(), 1..3).prop_map(|refs| {
        // The CRD rejects two identical parentRefs.
        let mut seen = BTreeSet::new();
        refs.into_iter()
            .filter(|r| seen.insert(r.to_string()))
            .collect()
    })
}

fn hostnames(
    pool: &'static [&'static str],
    size: std::ops::Range<usize>,
) -> impl Strategy<Value = Vec<&'static str>> {
    vec(pick(pool), size).prop_map(|mut names| {
        let mut seen = BTreeSet::new();
        names.retain(|n| seen.insert(*n));
        names
    })
}

fn backend_ref() -> impl Strategy<Value = Value> {
    (
        weighted(&[(5, "svc-0"), (1, "svc-1"), (1, "svc-2"), (1, "missing")]),
        option::weighted(0.15, pick(NAMESPACES)),
        weighted(&[(10, None), (1, Some("Service")), (1, Some("Bogus"))]),
        weighted(&[(10, None), (1, Some("")), (1, Some("example.com"))]),
        weighted(&[
            (1, None),
            (6, Some(80)),
            (1, Some(8080)),
            (1, Some(9090)),
            (1, Some(1234)),
        ]),
        weighted(&[
            (6, None),
            (1, Some(0)),
            (1, Some(1)),
            (1, Some(50)),
            (1, Some(1_000_000)),
        ]),
    )
        .prop_map(|(name, namespace, kind, group, port, weight)| {
            let mut r = json!({"name": name});
            set(&mut r, "namespace", namespace);
            set(&mut r, "kind", kind);
            set(&mut r, "group", group);
            set(&mut r, "port", port);
            set(&mut r, "weight", weight);
            r
        })
}

fn header_modifier() -> impl Strategy<Value = Value> {
    (
        pick(&[None, Some("x-set")]),
        pick(&[None, Some("x-add"), Some("X-Add")]),
        pick(&[None, Some("x-remove")]),
    )
        .prop_map(|(set_name, add_name, remove)| {
            let mut m = json!({});
            if let Some(name) = set_name {
                m["set"] = json!([{"name": name, "value": "set-value"}]);
            }
            if let Some(name) = add_name {
                m["add"] = json!([{"name": name, "value": "add-value"}]);
            }
            if let Some(name) = remove {
                m["remove"] = json!([name]);
            }
            m
        })
}

fn mirror() -> impl Strategy<Value = Value> {
    (backend_ref(), pick(&[None, Some(0), Some(50), Some(100)])).prop_map(
        |(mut backend, percent)| {
            if let Some(obj) = backend.as_object_mut() {
                obj.remove("weight");
            }
            let mut m = json!({"backendRef": backend});
            set(&mut m, "percent", percent);
            m
        },
    )
}

fn route_document(
    kind: &str,
    api_version: &str,
    namespace: &str,
    created: Option<&str>,
    spec: Value,
) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": metadata(Some(namespace), "", created),
        "spec": spec,
    })
}

// ---------------------------------------------------------------------------
// HTTPRoutes
// ---------------------------------------------------------------------------

fn http_route() -> impl Strategy<Value = Value> {
    (
        pick(NAMESPACES),
        pick(TIMESTAMPS),
        parent_refs(),
        hostnames(ROUTE_HOSTNAMES, 0..3),
        vec(http_rule(), 1..4),
    )
        .prop_map(|(namespace, created, parents, hosts, rules)| {
            let mut spec = json!({"parentRefs": parents, "rules": rules});
            if !hosts.is_empty() {
                spec["hostnames"] = json!(hosts);
            }
            route_document(
                "HTTPRoute",
                "gateway.networking.k8s.io/v1",
                namespace,
                created,
                spec,
            )
        })
}

fn http_rule() -> impl Strategy<Value = Value> {
    (
        vec(http_match(), 0..3),
        vec(http_filter(), 0..3),
        vec((backend_ref(), option::weighted(0.15, header_modifier())), 0..3),
        option::weighted(0.2, pick(&["rule-a", "rule-b"])),
    )
        .prop_map(|(matches, filters, backends, name)| {
            let mut rule = json!({});
            set(&mut rule, "name", name);
            if !matches.is_empty() {
                rule["matches"] = json!(matches);
            }
            if !filters.is_empty() {
                rule["filters"] = json!(filters);
            }
            if !backends.is_empty() {
                let backends: Vec<Value> = backends
                    .into_iter()
                    .map(|(mut backend, modifier)| {
                        if let Some(modifier) = modifier {
                            backend["filters"] =
                                json!([{"type": "RequestHeaderModifier", "requestHeaderModifier": modifier}]);
                        }
                        backend
                    })
                    .collect();
                rule["backendRefs"] = json!(backends);
            }
            rule
        })
}

fn http_match() -> impl Strategy<Value = Value> {
    let path = prop_oneof![
        3 => (pick(&["Exact", "PathPrefix"]), pick(&["/", "/a", "/a/", "/a/b", "/v1"])),
        1 => (Just("RegularExpression"), pick(&["/re[0-9]+", "^/x/.*$", ".*"])),
    ];
    (
        option::weighted(0.8, path),
        vec(
            (
                pick(&["x-a", "X-A", "x-b"]),
                pick(&[None, Some("Exact"), Some("RegularExpression")]),
                pick(&["1", "v[0-9]", "a b"]),
            ),
            0..3,
        ),
        vec(
            (
                pick(&["q", "Q"]),
                pick(&[None, Some("Exact"), Some("RegularExpression")]),
                pick(&["1", "x.*"]),
            ),
            0..2,
        ),
        pick(&[None, None, Some("GET"), Some("POST")]),
    )
        .prop_map(|(path, headers, query, method)| {
            let mut m = json!({});
            if let Some((kind, value)) = path {
                m["path"] = json!({"type": kind, "value": value});
            }
            let pairs = |items: Vec<(&str, Option<&str>, &str)>| -> Option<Value> {
                if items.is_empty() {
                    return None;
                }
                let mut seen = BTreeSet::new();
                let list: Vec<Value> = items
                    .into_iter()
                    .filter(|(name, _, _)| seen.insert(name.to_ascii_lowercase()))
                    .map(|(name, kind, value)| {
                        let mut h = json!({"name": name, "value": value});
                        set(&mut h, "type", kind);
                        h
                    })
                    .collect();
                Some(json!(list))
            };
            set(&mut m, "headers", pairs(headers));
            set(&mut m, "queryParams", pairs(query));
            set(&mut m, "method", method);
            m
        })
}

fn http_filter() -> impl Strategy<Value = Value> {
    let redirect = (
        pick(&[None, Some("http"), Some("https")]),
        pick(&[None, Some("redirect.example.com")]),
        pick(&[None, Some(80), Some(8443)]),
        pick(&[None, Some(301), Some(302)]),
        pick(&[
            None,
            Some(("ReplaceFullPath", "/new")),
            Some(("ReplacePrefixMatch", "/p")),
        ]),
    )
        .prop_map(|(scheme, hostname, port, status, path)| {
            let mut r = json!({});
            set(&mut r, "scheme", scheme);
            set(&mut r, "hostname", hostname);
            set(&mut r, "port", port);
            set(&mut r, "statusCode", status);
            r["path"] = path_modifier(path).unwrap_or(Value::Null);
            if r["path"].is_null() {
                r.as_object_mut().expect("an object").remove("path");
            }
            json!({"type": "RequestRedirect", "requestRedirect": r})
        });
    let rewrite = (
        pick(&[None, Some("rewrite.example.com")]),
        pick(&[
            None,
            Some(("ReplaceFullPath", "/new")),
            Some(("ReplacePrefixMatch", "/")),
            Some(("ReplacePrefixMatch", "/p")),
        ]),
    )
        .prop_map(|(hostname, path)| {
            let mut r = json!({});
            set(&mut r, "hostname", hostname);
            set(&mut r, "path", path_modifier(path));
            json!({"type": "URLRewrite", "urlRewrite": r})
        });
    prop_oneof![
        header_modifier()
            .prop_map(|m| json!({"type": "RequestHeaderModifier", "requestHeaderModifier": m})),
        header_modifier()
            .prop_map(|m| json!({"type": "ResponseHeaderModifier", "responseHeaderModifier": m})),
        redirect,
        rewrite,
        mirror().prop_map(|m| json!({"type": "RequestMirror", "requestMirror": m})),
        Just(
            json!({"type": "ExtensionRef", "extensionRef": {"group": "example.com", "kind": "Foo", "name": "bar"}})
        ),
        Just(json!({"type": "CORS", "cors": {
            "allowOrigins": ["https://a.example.com", "https://*.b.example.com"],
            "allowMethods": ["GET", "POST"],
            "allowHeaders": ["x-a"],
            "exposeHeaders": ["x-b"],
            "allowCredentials": true,
            "maxAge": 60,
        }})),
    ]
}

fn path_modifier(path: Option<(&str, &str)>) -> Option<Value> {
    path.map(|(kind, value)| {
        let key = if kind == "ReplaceFullPath" {
            "replaceFullPath"
        } else {
            "replacePrefixMatch"
        };
        json!({"type": kind, key: value})
    })
}

// ---------------------------------------------------------------------------
// GRPCRoutes and TLSRoutes
// ---------------------------------------------------------------------------

fn grpc_route() -> impl Strategy<Value = Value> {
    (
        pick(NAMESPACES),
        pick(TIMESTAMPS),
        parent_refs(),
        hostnames(ROUTE_HOSTNAMES, 0..3),
        vec(grpc_rule(), 1..3),
    )
        .prop_map(|(namespace, created, parents, hosts, rules)| {
            let mut spec = json!({"parentRefs": parents, "rules": rules});
            if !hosts.is_empty() {
                spec["hostnames"] = json!(hosts);
            }
            route_document(
                "GRPCRoute",
                "gateway.networking.k8s.io/v1",
                namespace,
                created,
                spec,
            )
        })
}

fn grpc_rule() -> impl Strategy<Value = Value> {
    let method = (
        pick(&[None, Some("Exact"), Some("RegularExpression")]),
        pick(&[None, Some("pkg.Service"), Some("other.Service")]),
        pick(&[None, Some("Get"), Some("List")]),
    )
        .prop_map(|(kind, service, method)| {
            let (service, method) = match (kind, service, method) {
                (Some("RegularExpression"), Some(_), m) => {
                    (Some("pkg\\..*"), m.map(|_| "Get|List"))
                }
                (_, None, None) => (Some("pkg.Service"), None),
                (_, s, m) => (s, m),
            };
            let mut v = json!({});
            set(&mut v, "type", kind);
            set(&mut v, "service", service);
            set(&mut v, "method", method);
            v
        });
    let grpc_match = (
        option::weighted(0.8, method),
        vec(pick(&["x-a", "x-b"]), 0..2),
    )
        .prop_map(|(method, headers)| {
            let mut m = json!({});
            set(&mut m, "method", method);
            let headers: BTreeSet<&str> = headers.into_iter().collect();
            if !headers.is_empty() {
                m["headers"] = headers
                    .into_iter()
                    .map(|name| json!({"name": name, "value": "1"}))
                    .collect();
            }
            m
        });
    let filter = prop_oneof![
        header_modifier()
            .prop_map(|m| json!({"type": "RequestHeaderModifier", "requestHeaderModifier": m})),
        header_modifier()
            .prop_map(|m| json!({"type": "ResponseHeaderModifier", "responseHeaderModifier": m})),
        mirror().prop_map(|m| json!({"type": "RequestMirror", "requestMirror": m})),
        Just(
            json!({"type": "ExtensionRef", "extensionRef": {"group": "example.com", "kind": "Foo", "name": "bar"}})
        ),
    ];
    (
        vec(grpc_match, 0..3),
        vec(filter, 0..2),
        vec(backend_ref(), 0..3),
    )
        .prop_map(|(matches, filters, backends)| {
            let mut rule = json!({});
            if !matches.is_empty() {
                rule["matches"] = json!(matches);
            }
            if !filters.is_empty() {
                rule["filters"] = json!(filters);
            }
            if !backends.is_empty() {
                rule["backendRefs"] = json!(backends);
            }
            rule
        })
}

fn tls_route() -> impl Strategy<Value = Value> {
    (
        pick(NAMESPACES),
        pick(TIMESTAMPS),
        parent_refs(),
        hostnames(&["a.example.com", "*.example.com", "example.com", "tls.test"], 1..3),
        vec(backend_ref(), 1..3),
    )
        .prop_map(|(namespace, created, parents, hosts, backends)| {
            let spec = json!({"parentRefs": parents, "hostnames": hosts, "rules": [{"backendRefs": backends}]});
            route_document("TLSRoute", "gateway.networking.k8s.io/v1", namespace, created, spec)
        })
}

// ---------------------------------------------------------------------------
// Invariants
// ---------------------------------------------------------------------------

const HCM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const DOWNSTREAM_TLS_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";

/// Structural invariants every output must keep, whatever the input:
///
/// - each resource list of each Gateway is sorted by name, names unique
///   (the contract of `GatewayResources`);
/// - one ClusterLoadAssignment per cluster, named like it;
/// - every cluster a route, mirror or TCP proxy names exists, except
///   [`INVALID_BACKEND_CLUSTER`], the translator's deliberately missing
///   cluster for invalid backendRefs, which never exists and which routes
///   only use with `cluster_not_found_response_code: INTERNAL_SERVER_ERROR`
///   (the spec's 500 for an invalid backendRef; TCP proxies just close the
///   connection);
/// - every RDS name a listener uses exists, and every SDS secret a TLS
///   context names exists;
/// - Envoy listeners of one Gateway bind distinct addresses;
/// - virtual host names and domains are unique within a route configuration
///   (Envoy rejects duplicates);
/// - statuses: exactly our GatewayClasses and the Gateways of our classes
///   have one, Envoy resources only for those Gateways, one listener status
///   per listener, routes only get status entries for their own parentRefs
///   and under our controllerName, every route with a parentRef to one of
///   our Gateways gets a status entry for it, and condition types are
///   unique in every condition list with Accepted and ResolvedRefs on route
///   parents.
fn check_invariants(input: &Input, output: &Output) -> Result<(), String> {
    let mut errors = Vec::new();
    for (key, resources) in &output.gateways {
        check_resources(resources, &mut |e| {
            errors.push(format!("gateway {key}: {e}"))
        });
    }
    check_statuses(input, output, &mut |e| errors.push(e));
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

fn sorted_unique<'a>(
    what: &str,
    names: impl Iterator<Item = &'a str>,
    error: &mut dyn FnMut(String),
) -> BTreeSet<&'a str> {
    let names: Vec<&str> = names.collect();
    for pair in names.windows(2) {
        if pair[0] >= pair[1] {
            error(format!(
                "{what} not sorted by name or not unique: {:?} then {:?}",
                pair[0], pair[1]
            ));
        }
    }
    names.into_iter().collect()
}

fn check_resources(resources: &GatewayResources, error: &mut dyn FnMut(String)) {
    let listeners = sorted_unique(
        "listeners",
        resources.listeners.iter().map(|r| r.name.as_str()),
        error,
    );
    let routes = sorted_unique(
        "route configurations",
        resources.routes.iter().map(|r| r.name.as_str()),
        error,
    );
    let clusters = sorted_unique(
        "clusters",
        resources.clusters.iter().map(|r| r.name.as_str()),
        error,
    );
    let endpoints = sorted_unique(
        "load assignments",
        resources.endpoints.iter().map(|r| r.cluster_name.as_str()),
        error,
    );
    let secrets = sorted_unique(
        "secrets",
        resources.secrets.iter().map(|r| r.name.as_str()),
        error,
    );
    let _ = listeners;

    if clusters.contains(INVALID_BACKEND_CLUSTER) {
        error(format!(
            "a cluster is named {INVALID_BACKEND_CLUSTER:?}, the name reserved for invalid backends"
        ));
    }
    let backends: BTreeSet<&str> = resources.backends.keys().map(String::as_str).collect();
    if clusters != backends {
        error(format!(
            "clusters {clusters:?} but Service ports recorded for {backends:?}"
        ));
    }
    if clusters != endpoints {
        let without: Vec<_> = clusters.difference(&endpoints).collect();
        let orphans: Vec<_> = endpoints.difference(&clusters).collect();
        error(format!(
            "clusters without a load assignment: {without:?}; load assignments without a cluster: {orphans:?}"
        ));
    }

    for route_config in &resources.routes {
        check_route_configuration(route_config, &clusters, error);
    }

    let mut bound = BTreeMap::new();
    for listener in &resources.listeners {
        if let Some(address) = socket_address(listener)
            && let Some(other) = bound.insert(address.clone(), listener.name.as_str())
        {
            error(format!(
                "listeners {other} and {} both bind {address}",
                listener.name
            ));
        }
        let chains = listener
            .filter_chains
            .iter()
            .chain(listener.default_filter_chain.as_ref());
        for chain in chains {
            check_filter_chain(&listener.name, chain, &routes, &clusters, &secrets, error);
        }
    }
}

fn socket_address(listener: &Listener) -> Option<String> {
    match listener.address.as_ref()?.address.as_ref()? {
        address::Address::SocketAddress(sa) => {
            let port = match sa.port_specifier.as_ref() {
                Some(socket_address::PortSpecifier::PortValue(port)) => port.to_string(),
                Some(socket_address::PortSpecifier::NamedPort(name)) => name.clone(),
                None => String::new(),
            };
            Some(format!("{}:{port}", sa.address))
        }
        _ => None,
    }
}

fn check_filter_chain(
    listener: &str,
    chain: &FilterChain,
    routes: &BTreeSet<&str>,
    clusters: &BTreeSet<&str>,
    secrets: &BTreeSet<&str>,
    error: &mut dyn FnMut(String),
) {
    for f in &chain.filters {
        let Some(filter::ConfigType::TypedConfig(any)) = f.config_type.as_ref() else {
            continue;
        };
        if any.type_url == HCM_TYPE_URL {
            match HttpConnectionManager::decode(any.value.as_slice()) {
                Ok(hcm) => match hcm.route_specifier {
                    Some(RouteSpecifier::Rds(rds))
                        if !routes.contains(rds.route_config_name.as_str()) =>
                    {
                        error(format!(
                            "listener {listener} uses missing route configuration {:?}",
                            rds.route_config_name
                        ));
                    }
                    Some(RouteSpecifier::RouteConfig(inline)) => {
                        check_route_configuration(&inline, clusters, error)
                    }
                    _ => {}
                },
                Err(e) => error(format!(
                    "listener {listener}: undecodable HttpConnectionManager: {e}"
                )),
            }
        } else if any.type_url == TCP_PROXY_TYPE_URL {
            match TcpProxy::decode(any.value.as_slice()) {
                Ok(proxy) => {
                    let names: Vec<String> = match proxy.cluster_specifier {
                        Some(TcpClusterSpecifier::Cluster(name)) => vec![name],
                        Some(TcpClusterSpecifier::WeightedClusters(w)) => {
                            w.clusters.into_iter().map(|c| c.name).collect()
                        }
                        None => Vec::new(),
                    };
                    for name in names {
                        if name != INVALID_BACKEND_CLUSTER && !clusters.contains(name.as_str()) {
                            error(format!(
                                "listener {listener}: TCP proxy to missing cluster {name:?}"
                            ));
                        }
                    }
                }
                Err(e) => error(format!("listener {listener}: undecodable TcpProxy: {e}")),
            }
        }
    }
    if let Some(socket) = &chain.transport_socket
        && let Some(transport_socket::ConfigType::TypedConfig(any)) = socket.config_type.as_ref()
        && any.type_url == DOWNSTREAM_TLS_TYPE_URL
    {
        match DownstreamTlsContext::decode(any.value.as_slice()) {
            Ok(tls) => {
                let common = tls.common_tls_context.unwrap_or_default();
                let mut names: Vec<String> = common
                    .tls_certificate_sds_secret_configs
                    .into_iter()
                    .map(|s| s.name)
                    .collect();
                if let Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) =
                    common.validation_context_type
                {
                    names.push(s.name);
                }
                for name in names {
                    if !secrets.contains(name.as_str()) {
                        error(format!(
                            "listener {listener}: TLS context uses missing secret {name:?}"
                        ));
                    }
                }
            }
            Err(e) => error(format!(
                "listener {listener}: undecodable DownstreamTlsContext: {e}"
            )),
        }
    }
}

fn check_route_configuration(
    config: &RouteConfiguration,
    clusters: &BTreeSet<&str>,
    error: &mut dyn FnMut(String),
) {
    let mut vhost_names = BTreeSet::new();
    let mut domains = BTreeSet::new();
    for vhost in &config.virtual_hosts {
        if !vhost_names.insert(vhost.name.as_str()) {
            error(format!(
                "route configuration {}: duplicate virtual host {:?}",
                config.name, vhost.name
            ));
        }
        for domain in &vhost.domains {
            if !domains.insert(domain.to_ascii_lowercase()) {
                error(format!(
                    "route configuration {}: duplicate domain {domain:?}",
                    config.name
                ));
            }
        }
        for route in &vhost.routes {
            if let Some(Action::Route(action)) = &route.action {
                check_route_action(&config.name, action, clusters, error);
            }
        }
    }
}

fn check_route_action(
    config: &str,
    action: &RouteAction,
    clusters: &BTreeSet<&str>,
    error: &mut dyn FnMut(String),
) {
    let answers_500 = action.cluster_not_found_response_code
        == ClusterNotFoundResponseCode::InternalServerError as i32;
    let targets: Vec<&str> = match &action.cluster_specifier {
        Some(ClusterSpecifier::Cluster(name)) => vec![name.as_str()],
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            w.clusters.iter().map(|c| c.name.as_str()).collect()
        }
        _ => Vec::new(),
    };
    for name in targets {
        if name == INVALID_BACKEND_CLUSTER {
            if !answers_500 {
                error(format!(
                    "route configuration {config}: route to {name:?} without \
                     cluster_not_found_response_code INTERNAL_SERVER_ERROR"
                ));
            }
        } else if !clusters.contains(name) {
            error(format!(
                "route configuration {config}: route to missing cluster {name:?}"
            ));
        }
    }
    for mirror in &action.request_mirror_policies {
        if !clusters.contains(mirror.cluster.as_str()) {
            error(format!(
                "route configuration {config}: mirror to missing cluster {:?}",
                mirror.cluster
            ));
        }
    }
}

/// `namespace/name` of an object given as JSON.
fn key_of(doc: &Value, default_namespace: &str) -> ObjectKey {
    let field = |pointer: &str| {
        doc.pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    ObjectKey::new(
        field("/metadata/namespace").unwrap_or_else(|| default_namespace.to_owned()),
        field("/metadata/name").unwrap_or_default(),
    )
}

/// Every `conditions` list in a status value has unique types.
fn check_conditions(
    what: &str,
    conditions: Option<&Value>,
    required: &[&str],
    error: &mut dyn FnMut(String),
) {
    let list = conditions
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut types = BTreeSet::new();
    for condition in list {
        let kind = condition.get("type").and_then(Value::as_str).unwrap_or("");
        if !types.insert(kind) {
            error(format!("{what}: duplicate condition {kind:?}"));
        }
        let status = condition
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !matches!(status, "True" | "False" | "Unknown") {
            error(format!("{what}: condition {kind:?} has status {status:?}"));
        }
        if condition
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            error(format!("{what}: condition {kind:?} has no reason"));
        }
    }
    for kind in required {
        if !types.contains(kind) {
            error(format!("{what}: no {kind} condition"));
        }
    }
}

fn check_statuses(input: &Input, output: &Output, error: &mut dyn FnMut(String)) {
    let statuses = &output.statuses;
    let our_classes: BTreeSet<String> = input
        .gateway_classes
        .iter()
        .filter(|c| c.spec.controller_name == input.controller_name)
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    let status_classes: BTreeSet<String> = statuses.gateway_classes.keys().cloned().collect();
    if status_classes != our_classes {
        error(format!(
            "GatewayClass statuses for {status_classes:?}, our classes are {our_classes:?}"
        ));
    }
    for (name, status) in &statuses.gateway_classes {
        let value = serde_json::to_value(status).expect("status serialises");
        check_conditions(
            &format!("GatewayClass {name}"),
            value.get("conditions"),
            &["Accepted"],
            error,
        );
    }

    let mut our_gateways = BTreeMap::new();
    for gateway in &input.gateways {
        if our_classes.contains(&gateway.spec.gateway_class_name) {
            let key = ObjectKey::new(
                gateway.metadata.namespace.clone().unwrap_or_default(),
                gateway.metadata.name.clone().unwrap_or_default(),
            );
            our_gateways.insert(key, gateway);
        }
    }
    let status_gateways: BTreeSet<&ObjectKey> = statuses.gateways.keys().collect();
    let expected: BTreeSet<&ObjectKey> = our_gateways.keys().collect();
    if status_gateways != expected {
        error(format!(
            "Gateway statuses for {status_gateways:?}, Gateways of our classes are {expected:?}"
        ));
    }
    for key in output.gateways.keys() {
        if !our_gateways.contains_key(key) {
            error(format!(
                "Envoy resources for {key}, which is not a Gateway of ours"
            ));
        }
    }
    for (key, status) in &statuses.gateways {
        let value = serde_json::to_value(status).expect("status serialises");
        check_conditions(
            &format!("Gateway {key}"),
            value.get("conditions"),
            &["Accepted", "Programmed"],
            error,
        );
        let Some(gateway) = our_gateways.get(key) else {
            continue;
        };
        let spec_names: Vec<&str> = gateway
            .spec
            .listeners
            .iter()
            .map(|l| l.name.as_str())
            .collect();
        let listeners = value
            .get("listeners")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut status_names: Vec<&str> = listeners
            .iter()
            .map(|l| l.get("name").and_then(Value::as_str).unwrap_or(""))
            .collect();
        let mut sorted_spec = spec_names.clone();
        sorted_spec.sort_unstable();
        status_names.sort_unstable();
        if status_names != sorted_spec {
            error(format!(
                "Gateway {key}: listener statuses {status_names:?} for listeners {spec_names:?}"
            ));
        }
        for listener in listeners {
            let name = listener.get("name").and_then(Value::as_str).unwrap_or("");
            check_conditions(
                &format!("Gateway {key} listener {name}"),
                listener.get("conditions"),
                &["Accepted", "Programmed", "ResolvedRefs"],
                error,
            );
        }
    }

    let route_kinds: [(&str, Vec<Value>, BTreeMap<ObjectKey, Value>); 3] = [
        (
            "HTTPRoute",
            to_values(&input.http_routes),
            to_value_map(&statuses.http_routes),
        ),
        (
            "GRPCRoute",
            to_values(&input.grpc_routes),
            to_value_map(&statuses.grpc_routes),
        ),
        (
            "TLSRoute",
            to_values(&input.tls_routes),
            to_value_map(&statuses.tls_routes),
        ),
    ];
    for (kind, routes, route_statuses) in route_kinds {
        let routes: BTreeMap<ObjectKey, Value> =
            routes.into_iter().map(|r| (key_of(&r, ""), r)).collect();
        for (key, status) in &route_statuses {
            let what = format!("{kind} {key}");
            let Some(route) = routes.get(key) else {
                error(format!("{what}: status for a route not in the input"));
                continue;
            };
            let refs = parent_refs_of(route, &key.namespace);
            let mut seen = BTreeSet::new();
            for parent in status
                .get("parents")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                let controller = parent
                    .get("controllerName")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if controller != input.controller_name {
                    error(format!(
                        "{what}: status parent with controllerName {controller:?}"
                    ));
                }
                let parent_ref = parent
                    .get("parentRef")
                    .map(|r| normalise_parent_ref(r, &key.namespace));
                let Some(parent_ref) = parent_ref else {
                    error(format!("{what}: status parent without parentRef"));
                    continue;
                };
                if !refs.contains(&parent_ref) {
                    error(format!(
                        "{what}: status for parentRef {parent_ref:?}, not one of {refs:?}"
                    ));
                }
                if !seen.insert(parent_ref.clone()) {
                    error(format!(
                        "{what}: two status entries for parentRef {parent_ref:?}"
                    ));
                }
                check_conditions(
                    &format!("{what} parent {parent_ref:?}"),
                    parent.get("conditions"),
                    &["Accepted", "ResolvedRefs"],
                    error,
                );
            }
        }
        for (key, route) in &routes {
            for parent_ref in parent_refs_of(route, &key.namespace) {
                let (group, kind, namespace, name, _, _) = &parent_ref;
                let names_our_gateway = group == "gateway.networking.k8s.io"
                    && kind == "Gateway"
                    && our_gateways.contains_key(&ObjectKey::new(namespace.clone(), name.clone()));
                if !names_our_gateway {
                    continue;
                }
                let has_entry = route_statuses.get(key).is_some_and(|status| {
                    status
                        .get("parents")
                        .and_then(Value::as_array)
                        .is_some_and(|parents| {
                            parents.iter().any(|p| {
                                p.get("parentRef")
                                    .map(|r| normalise_parent_ref(r, &key.namespace))
                                    .as_ref()
                                    == Some(&parent_ref)
                            })
                        })
                });
                if !has_entry {
                    error(format!(
                        "{kind} {key}: no status entry for its parentRef {parent_ref:?} to our Gateway"
                    ));
                }
            }
        }
    }
}

fn to_values<T: serde::Serialize>(objects: &[std::sync::Arc<T>]) -> Vec<Value> {
    objects
        .iter()
        .map(|o| serde_json::to_value(o.as_ref()).expect("objects serialise"))
        .collect()
}

fn to_value_map<T: serde::Serialize>(map: &BTreeMap<ObjectKey, T>) -> BTreeMap<ObjectKey, Value> {
    map.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                serde_json::to_value(v).expect("statuses serialise"),
            )
        })
        .collect()
}

/// (group, kind, namespace, name, sectionName, port) with defaults applied.
type ParentRefKey = (String, String, String, String, String, i64);

fn normalise_parent_ref(r: &Value, route_namespace: &str) -> ParentRefKey {
    let s = |key: &str, default: &str| {
        r.get(key)
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_owned()
    };
    (
        s("group", "gateway.networking.k8s.io"),
        s("kind", "Gateway"),
        s("namespace", route_namespace),
        s("name", ""),
        s("sectionName", ""),
        r.get("port").and_then(Value::as_i64).unwrap_or(0),
    )
}

fn parent_refs_of(route: &Value, route_namespace: &str) -> BTreeSet<ParentRefKey> {
    route
        .pointer("/spec/parentRefs")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|r| normalise_parent_ref(r, route_namespace))
        .collect()
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

fn translate_checked(scenario: &Scenario) -> Result<(Input, Output), TestCaseError> {
    let input = scenario.input();
    let output = translate(&input);
    check_invariants(&input, &output).map_err(TestCaseError::fail)?;
    Ok((input, output))
}

proptest! {
    #![proptest_config(config(256, 1024))]

    /// `translate` never panics and keeps the structural invariants.
    #[test]
    fn translate_keeps_invariants(scenario in scenario()) {
        translate_checked(&scenario)?;
    }
}

proptest! {
    #![proptest_config(config(64, 256))]

    /// Shuffling the input (objects and unordered inner lists) leaves the
    /// output byte-identical.
    #[test]
    fn shuffled_input_gives_identical_output(scenario in scenario(), seed in any::<u64>()) {
        let (input, expected) = translate_checked(&scenario)?;
        let mut shuffled = input.clone();
        shuffle::shuffle_input(&mut shuffled, &mut Xoshiro256PlusPlus::seed_from_u64(seed), true);
        let actual = translate(&shuffled);
        shuffle::compare_outputs(&expected, &actual).map_err(TestCaseError::fail)?;
    }
}

proptest! {
    #![proptest_config(config(64, 256))]

    /// Replacing the EndpointSlices of one Service (by a random set of
    /// slices, possibly none) and refreshing the previous output with
    /// `refresh_endpoints` gives what a full translation gives, and reports
    /// exactly the Gateways whose resources changed.
    #[test]
    fn refreshed_endpoints_match_a_full_translation(
        scenario in scenario(),
        replacement in service(),
    ) {
        let (input, before) = translate_checked(&scenario)?;
        // `service()` yields the Service first, then its slices: keep the
        // scenario's Service (only slices change), take the new slices.
        let (namespace, name) = {
            let (_, namespace, name) = identity(&replacement[0]);
            (namespace, name)
        };
        let target = ObjectKey::new(namespace.as_str(), name.as_str());
        let mut after = input.clone();
        after.endpoint_slices.retain(|s| {
            s.metadata.namespace.as_deref() != Some(namespace.as_str())
                || s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name"))
                    != Some(&name)
        });
        for doc in &replacement[1..] {
            workload::add(&mut after, doc.clone());
        }
        let expected = translate(&after);
        let mut actual = before.clone();
        let slim = Input {
            services: after.services.clone(),
            endpoint_slices: after.endpoint_slices.clone(),
            ..Input::default()
        };
        let reported = gatewright_translator::refresh_endpoints(
            &slim,
            &mut actual,
            &BTreeSet::from([target]),
        );
        shuffle::compare_outputs(&expected, &actual).map_err(TestCaseError::fail)?;
        let differing: BTreeSet<ObjectKey> = before
            .gateways
            .iter()
            .filter(|(key, resources)| expected.gateways.get(*key) != Some(*resources))
            .map(|(key, _)| key.clone())
            .collect();
        prop_assert_eq!(reported, differing);
    }
}

/// A random change sequence: a first scenario, then steps that each drop
/// some of the current documents (one in five) and add, or put in place of
/// the document of the same identity, some of another scenario's (three in
/// ten), by the step's seed.
fn change_sequence() -> impl Strategy<Value = (Scenario, Vec<(Scenario, u64)>)> {
    (scenario(), vec((scenario(), any::<u64>()), 1..5))
}

proptest! {
    #![proptest_config(config(48, 128))]

    /// One [`Translator`] fed a change sequence gives, at every step, what a
    /// fresh translation of that step's input gives. Documents a step does
    /// not touch keep their decoded objects (as the file cache and the
    /// watch stores do), so reuse is exercised both by the same object and
    /// by an equal one decoded again.
    #[test]
    fn incremental_translation_matches_a_full_one((first, steps) in change_sequence()) {
        use gatewright_translator::{InputObject, Translator};
        let decode = |doc: &Value| {
            InputObject::decode(doc.clone())
                .map(|object| (identity(doc), object))
                .map_err(|e| TestCaseError::fail(format!("scenario document does not decode: {e}")))
        };
        let mut documents = first
            .documents
            .iter()
            .map(decode)
            .collect::<Result<Vec<_>, _>>()?;
        let mut translator = Translator::new();
        for (step, seed) in std::iter::once((None, 0)).chain(steps.iter().map(|(s, seed)| (Some(s), *seed))) {
            if let Some(next) = step {
                let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
                documents.retain(|_| !rng.random_bool(0.2));
                for doc in &next.documents {
                    if rng.random_bool(0.3) {
                        let (id, object) = decode(doc)?;
                        match documents.iter().position(|(other, _)| *other == id) {
                            Some(i) => documents[i] = (id, object),
                            None => documents.push((id, object)),
                        }
                    }
                }
            }
            let mut input = Input::new();
            if first.with_now {
                input.now = Some(support::case_now());
            }
            for (_, object) in &documents {
                input.insert(object.clone());
            }
            let expected = translate(&input);
            let actual = translator.translate(&input);
            shuffle::compare_outputs(&expected, &actual).map_err(TestCaseError::fail)?;
        }
    }
}

proptest! {
    // Envoy takes about half a second per Gateway: few cases, bounded
    // shrinking.
    #![proptest_config(config(24, 96))]

    /// The output loads in a real Envoy.
    #[test]
    fn output_loads_in_envoy(scenario in scenario()) {
        let (_, output) = translate_checked(&scenario)?;
        support::envoy_validate(&output).map_err(TestCaseError::fail)?;
    }
}

/// The generator must reach the interesting cases, or the properties above
/// prove little: in a fixed sample of 200 scenarios, count the input kinds,
/// the routes attached to our Gateways and what the translator made of them
/// (printed with `--nocapture`).
#[test]
fn scenarios_cover_the_interesting_cases() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = scenario();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut count = |what: &str, n: usize| *counts.entry(what.to_owned()).or_default() += n;
    for _ in 0..200 {
        let scenario = strategy
            .new_tree(&mut runner)
            .expect("a scenario")
            .current();
        let input = scenario.input();
        for doc in &scenario.documents {
            count(&format!("input {}", identity(doc).0), 1);
        }
        let ours: BTreeSet<(String, String)> = input
            .gateways
            .iter()
            .filter(|g| g.spec.gateway_class_name == OUR_CLASS)
            .map(|g| {
                (
                    g.metadata.namespace.clone().unwrap_or_default(),
                    g.metadata.name.clone().unwrap_or_default(),
                )
            })
            .collect();
        for route in to_values(&input.http_routes) {
            let namespace = key_of(&route, "").namespace;
            if parent_refs_of(&route, &namespace)
                .iter()
                .any(|r| ours.contains(&(r.2.clone(), r.3.clone())))
            {
                count("HTTPRoutes naming our Gateway", 1);
            }
        }
        let output = translate(&input);
        for resources in output.gateways.values() {
            count("output listeners", resources.listeners.len());
            count("output route configurations", resources.routes.len());
            count("output clusters", resources.clusters.len());
            count("output secrets", resources.secrets.len());
        }
        let route_statuses = [
            to_value_map(&output.statuses.http_routes),
            to_value_map(&output.statuses.grpc_routes),
            to_value_map(&output.statuses.tls_routes),
        ];
        for status in route_statuses.iter().flat_map(BTreeMap::values) {
            for parent in status
                .get("parents")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                for condition in parent
                    .get("conditions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let field =
                        |key: &str| condition.get(key).and_then(Value::as_str).unwrap_or("");
                    count(
                        &format!("route parents {}={}", field("type"), field("status")),
                        1,
                    );
                    count(
                        &format!(
                            "route parents {}={} ({})",
                            field("type"),
                            field("status"),
                            field("reason")
                        ),
                        1,
                    );
                }
            }
        }
    }
    for (what, n) in &counts {
        eprintln!("{n:6} {what}");
    }
    let at_least = |what: &str, n: usize| {
        let got = counts.get(what).copied().unwrap_or(0);
        assert!(got >= n, "only {got} {what} in 200 scenarios (want {n})");
    };
    for kind in [
        "GatewayClass",
        "Namespace",
        "Gateway",
        "Secret",
        "Service",
        "EndpointSlice",
        "ReferenceGrant",
        "HTTPRoute",
        "GRPCRoute",
        "TLSRoute",
    ] {
        at_least(&format!("input {kind}"), 20);
    }
    at_least("HTTPRoutes naming our Gateway", 50);
    at_least("output listeners", 20);
    at_least("output clusters", 20);
    at_least("output secrets", 5);
    at_least("route parents Accepted=True", 20);
    at_least("route parents Accepted=False", 5);
    at_least("route parents ResolvedRefs=False", 5);
}
