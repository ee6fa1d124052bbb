//! The translator's output must not depend on the order of its input: the
//! same objects in any order give a byte-identical [`Output`] (DESIGN.md,
//! "Translator").
//!
//! Each input here is translated once as given, then again after
//! [`shuffle::shuffle_input`] with 20 seeds; the outputs must be equal both
//! as values and as prost/JSON bytes, resource by resource.

mod shuffle;
mod support;
mod workload;

use gatewright_translator::{Input, translate};
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use serde_json::json;

const SEEDS: u64 = 20;

/// Translates `input` in its given order and after shuffles with `SEEDS`
/// seeds; panics on the first shuffle whose output differs.
fn assert_order_independent(name: &str, input: &Input, inner: bool) {
    let expected = translate(input);
    for seed in 0..SEEDS {
        let mut shuffled = input.clone();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        shuffle::shuffle_input(&mut shuffled, &mut rng, inner);
        let actual = translate(&shuffled);
        if let Err(problem) = shuffle::compare_outputs(&expected, &actual) {
            panic!(
                "{name}: output changed after shuffling with seed {seed} (inner lists: {inner}): {problem}"
            );
        }
    }
}

/// Translates `input` twice: any difference comes from the translator (or
/// prost) itself, not from input order.
fn assert_repeatable(name: &str, input: &Input) {
    let first = translate(input);
    let second = translate(input);
    if let Err(problem) = shuffle::compare_outputs(&first, &second) {
        panic!("{name}: translating the same input twice gave different outputs: {problem}");
    }
}

/// A snapshot where list order could leak into the output through
/// tie-breaks: conflicting routes (the oldest, then the alphabetically
/// first, wins), conflicting listeners on two Gateways, several slices per
/// Service, Services and routes of the same name in several namespaces.
fn conflicts() -> Input {
    let mut input = workload::mixed(3, 6, 9, 6);
    let add = workload::add;
    let ts = |s: &str| format!("2024-01-01T00:00:{s}Z");
    for (ns, name, created) in [
        ("ns-0", "same-a", "00"),
        ("ns-1", "same-a", "00"),
        ("ns-2", "same-b", "00"),
        ("ns-0", "older", "00"),
        ("ns-1", "newer", "30"),
    ] {
        add(
            &mut input,
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": {"namespace": ns, "name": name, "creationTimestamp": ts(created)},
                "spec": {
                    "parentRefs": [{"name": "eg", "namespace": "gateway-system"}],
                    "hostnames": ["dup.example.com"],
                    "rules": [{
                        "matches": [{"path": {"type": "PathPrefix", "value": "/dup"}}],
                        "backendRefs": [{"name": "svc-0", "namespace": "ns-0", "port": 8080}],
                    }],
                },
            }),
        );
    }
    // A second Gateway with listeners that conflict with each other.
    add(
        &mut input,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"namespace": "gateway-system", "name": "second"},
            "spec": {
                "gatewayClassName": workload::GATEWAY_CLASS,
                "listeners": [
                    {"name": "a", "protocol": "HTTP", "port": 8080, "hostname": "x.example.com"},
                    {"name": "b", "protocol": "HTTP", "port": 8080, "hostname": "x.example.com"},
                    {"name": "c", "protocol": "HTTPS", "port": 8080},
                    {
                        "name": "d",
                        "protocol": "HTTP",
                        "port": 8081,
                        "allowedRoutes": {"namespaces": {
                            "from": "Selector",
                            "selector": {"matchExpressions": [
                                {"key": "team", "operator": "In", "values": ["team-0", "team-1", "team-2"]},
                                {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                                 "values": ["ns-9", "ns-8"]},
                            ]},
                        }},
                    },
                ],
            },
        }),
    );
    // A Service with three slices, overlapping endpoints and several ports.
    add(
        &mut input,
        workload::service(
            "ns-0",
            "multi",
            &[
                ("a", 80, None),
                ("b", 81, None),
                ("c", 82, Some("kubernetes.io/h2c")),
            ],
        ),
    );
    for (suffix, first) in [("s1", 9000), ("s2", 9003), ("s3", 9001)] {
        add(
            &mut input,
            workload::endpoint_slice(
                "ns-0",
                "multi",
                suffix,
                &[
                    (workload::ipv4(first), true),
                    (workload::ipv4(first + 1), false),
                    (workload::ipv4(first + 2), true),
                ],
                &[("a", 80), ("b", 81), ("c", 82)],
            ),
        );
    }
    add(
        &mut input,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"namespace": "ns-0", "name": "multi"},
            "spec": {
                "parentRefs": [
                    {"name": "eg", "namespace": "gateway-system"},
                    {"name": "second", "namespace": "gateway-system", "sectionName": "d"},
                ],
                "rules": [{"backendRefs": [
                    {"name": "multi", "port": 80, "weight": 1},
                    {"name": "multi", "port": 81, "weight": 1},
                    {"name": "multi", "port": 82, "weight": 0},
                ]}],
            },
        }),
    );
    input
}

fn small_inputs() -> Vec<(&'static str, Input)> {
    vec![
        ("http_routes(40)", workload::http_routes(40)),
        ("mixed(4, 40, 60, 30)", workload::mixed(4, 40, 60, 30)),
        ("conflicts", conflicts()),
        ("listener_sets(12, 6)", workload::listener_sets(12, 6)),
    ]
}

#[test]
fn translating_twice_gives_identical_output() {
    for (name, input) in small_inputs() {
        assert_repeatable(name, &input);
    }
}

#[test]
fn object_order_does_not_matter() {
    for (name, input) in small_inputs() {
        assert_order_independent(name, &input, false);
    }
}

#[test]
fn order_of_unordered_inner_lists_does_not_matter() {
    for (name, input) in small_inputs() {
        assert_order_independent(name, &input, true);
    }
}

#[test]
fn golden_cases_are_order_independent() {
    let cases = support::case_paths();
    for path in &cases {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("?");
        let input =
            support::load_case(path).unwrap_or_else(|err| panic!("{}: {err:#}", path.display()));
        assert_repeatable(name, &input);
        assert_order_independent(name, &input, false);
        assert_order_independent(name, &input, true);
    }
    eprintln!("checked {} golden cases", cases.len());
}

/// The workloads (the benchmark's too) must take the translator's normal
/// path: every route accepted by its parent with all references resolved.
#[test]
fn workload_routes_are_accepted_and_resolved() {
    let inputs = [
        ("http_routes(40)", workload::http_routes(40)),
        ("mixed(4, 40, 60, 30)", workload::mixed(4, 40, 60, 30)),
    ];
    for (name, input) in inputs {
        let output = translate(&input);
        let statuses: Vec<(String, serde_json::Value)> = output
            .statuses
            .http_routes
            .iter()
            .map(|(k, v)| {
                (
                    format!("HTTPRoute {k}"),
                    serde_json::to_value(v).expect("status"),
                )
            })
            .chain(output.statuses.grpc_routes.iter().map(|(k, v)| {
                (
                    format!("GRPCRoute {k}"),
                    serde_json::to_value(v).expect("status"),
                )
            }))
            .collect();
        assert_eq!(
            statuses.len(),
            input.http_routes.len() + input.grpc_routes.len(),
            "{name}: a status for every route"
        );
        for (route, status) in &statuses {
            let parents = status["parents"].as_array().expect("parents");
            assert!(!parents.is_empty(), "{name}: {route} has no parent status");
            for parent in parents {
                for kind in ["Accepted", "ResolvedRefs"] {
                    let condition = parent["conditions"]
                        .as_array()
                        .and_then(|c| c.iter().find(|c| c["type"] == kind));
                    assert!(
                        condition.is_some_and(|c| c["status"] == "True"),
                        "{name}: {route}: {kind} is not True: {parent}"
                    );
                }
            }
        }
        let clusters: usize = output.gateways.values().map(|g| g.clusters.len()).sum();
        assert!(clusters > 0, "{name}: no clusters");
    }
}

/// The shuffle must really move things, or the tests above prove nothing.
#[test]
fn shuffle_changes_the_order() {
    let input = workload::mixed(4, 40, 60, 30);
    let mut shuffled = input.clone();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    shuffle::shuffle_input(&mut shuffled, &mut rng, true);
    let names =
        |routes: &[std::sync::Arc<gatewright_translator::api::httproutes::HttpRoute>]| -> Vec<Option<String>> {
            routes.iter().map(|r| r.metadata.name.clone()).collect()
        };
    assert_ne!(names(&input.http_routes), names(&shuffled.http_routes));
    let endpoints = |input: &Input| {
        let mut slices: Vec<_> = input
            .endpoint_slices
            .iter()
            .map(|s| (s.metadata.name.clone(), s.endpoints.clone()))
            .collect();
        slices.sort_by(|a, b| a.0.cmp(&b.0));
        slices
    };
    assert_ne!(endpoints(&input), endpoints(&shuffled));
}
