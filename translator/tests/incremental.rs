//! A [`Translator`] that reuses the last translation's work must give,
//! byte for byte, what a fresh [`translate`] gives for the same input.
//! Random change sequences are in `proptest.rs`
//! (`incremental_translation_matches_a_full_one`).

mod shuffle;
mod support;
mod workload;

use gatewright_translator::{Input, Reuse, Translator, translate};
use serde_json::json;
use std::sync::Arc;

/// Every test case with its input, in file-name order.
fn golden_inputs() -> Vec<(String, Input)> {
    support::case_paths()
        .into_iter()
        .map(|path| {
            let name = path.display().to_string();
            let input = support::load_case(&path).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            (name, input)
        })
        .collect()
}

fn assert_same(what: &str, translator: &mut Translator, input: &Input) {
    let expected = translate(input);
    let actual = translator.translate(input);
    if let Err(problem) = shuffle::compare_outputs(&expected, &actual) {
        panic!("{what}: incremental translation differs from a full one: {problem}");
    }
}

/// Every golden case, translated by one translator after the case before
/// it (forwards, then backwards), and again right after itself (when all
/// is reused).
#[test]
fn golden_cases_translate_the_same_incrementally() {
    let cases = golden_inputs();
    assert!(cases.len() > 100, "only {} golden cases found", cases.len());
    let mut translator = Translator::new();
    let mut reused = 0;
    for (name, input) in cases.iter().chain(cases.iter().rev()) {
        assert_same(
            &format!("{name} after the previous case"),
            &mut translator,
            input,
        );
        assert_same(&format!("{name} again"), &mut translator, input);
        let reuse = translator.last_reuse();
        assert_eq!(reuse.routes_resolved, 0, "{name} again: {reuse:?}");
        assert_eq!(reuse.gateways_emitted, 0, "{name} again: {reuse:?}");
        reused += reuse.routes_reused;
    }
    assert!(reused > 0, "no golden case has a route of ours");
}

/// The translator really reuses: with one route of 200 changed, only that
/// one is resolved again, and the result is still a full translation's.
#[test]
fn one_changed_route_is_the_only_one_resolved() {
    let before = workload::http_routes(200);
    let mut translator = Translator::new();
    assert_same("first translation", &mut translator, &before);
    assert_eq!(
        translator.last_reuse(),
        Reuse {
            routes_reused: 0,
            routes_resolved: 200,
            gateways_reused: 0,
            gateways_emitted: 1,
        }
    );

    let mut after = before.clone();
    let route = Arc::make_mut(&mut after.http_routes[17]);
    let rules = route
        .spec
        .rules
        .as_mut()
        .expect("workload routes have rules");
    let path = rules[0].matches.as_mut().expect("and matches")[0]
        .path
        .as_mut()
        .expect("and paths");
    path.value = Some("/changed".to_owned());
    assert_same("one route changed", &mut translator, &after);
    assert_eq!(
        translator.last_reuse(),
        Reuse {
            routes_reused: 199,
            routes_resolved: 1,
            gateways_reused: 0,
            gateways_emitted: 1,
        }
    );

    // An equal object in a new allocation is the same input.
    let mut copied = after.clone();
    copied.http_routes[17] = Arc::new((*after.http_routes[17]).clone());
    assert_same("one route copied", &mut translator, &copied);
    assert_eq!(translator.last_reuse().routes_resolved, 0);
    assert_eq!(translator.last_reuse().gateways_reused, 1);
}

/// A route is resolved again when a Service it sends to changes, appears
/// or disappears, and when a ReferenceGrant changes; the others are not.
#[test]
fn routes_are_resolved_again_when_what_they_read_changes() {
    let base = workload::http_routes(20);
    let mut translator = Translator::new();
    assert_same("first translation", &mut translator, &base);

    // The Service of one route gets another port: that route's backend no
    // longer resolves.
    let mut changed = base.clone();
    let service = Arc::make_mut(&mut changed.services[3]);
    let ports = service
        .spec
        .as_mut()
        .and_then(|s| s.ports.as_mut())
        .expect("workload Services have ports");
    ports[0].port += 1;
    assert_same("a Service port changed", &mut translator, &changed);
    assert_eq!(translator.last_reuse().routes_resolved, 1);

    let mut removed = changed.clone();
    removed.services.remove(3);
    assert_same("a Service removed", &mut translator, &removed);
    assert_eq!(translator.last_reuse().routes_resolved, 1);

    assert_same("the Service back", &mut translator, &base);
    assert_eq!(translator.last_reuse().routes_resolved, 1);

    let mut granted = base.clone();
    workload::add(
        &mut granted,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1beta1",
            "kind": "ReferenceGrant",
            "metadata": {"namespace": "default", "name": "grant"},
            "spec": {
                "from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "other"}],
                "to": [{"group": "", "kind": "Service"}]
            }
        }),
    );
    assert_same("a ReferenceGrant added", &mut translator, &granted);
    assert_eq!(translator.last_reuse().routes_reused, 0);
}

/// `(reused, emitted)` Gateways of the translator's last translation.
fn gateways(translator: &Translator) -> (usize, usize) {
    let reuse = translator.last_reuse();
    (reuse.gateways_reused, reuse.gateways_emitted)
}

fn set_path(input: &mut Input, route: usize, path: &str) {
    let rules = Arc::make_mut(&mut input.http_routes[route])
        .spec
        .rules
        .as_mut()
        .expect("workload routes have rules");
    rules[0].matches.as_mut().expect("and matches")[0]
        .path
        .as_mut()
        .expect("and paths")
        .value = Some(path.to_owned());
}

/// A change re-emits the resources of the Gateways it touches and hands
/// out the others' again, the same allocation (what the publisher skips).
#[test]
fn only_the_gateways_a_change_touches_are_emitted_again() {
    // Routes 0–9 on gateway/gw, 10–19 on gateway/gw-1.
    let base = workload::many_gateways(2, 10);
    let mut translator = Translator::new();
    assert_same("first translation", &mut translator, &base);
    assert_eq!(gateways(&translator), (0, 2));
    let first = translator.translate(&base);
    assert_eq!(gateways(&translator), (2, 0), "the same input again");
    let gw = gatewright_translator::ObjectKey::new("gateway", "gw");
    let gw1 = gatewright_translator::ObjectKey::new("gateway", "gw-1");

    // A route of gw changes: gw-1's resources are the very same.
    let mut changed = base.clone();
    set_path(&mut changed, 3, "/changed");
    assert_same("a route of gw changed", &mut translator, &changed);
    assert_eq!(gateways(&translator), (1, 1));
    let second = translator.translate(&changed);
    assert!(Arc::ptr_eq(&first.gateways[&gw1], &second.gateways[&gw1]));
    assert!(!Arc::ptr_eq(&first.gateways[&gw], &second.gateways[&gw]));

    // The endpoints of a Service only gw-1 sends to.
    let mut moved = changed.clone();
    let slice = moved
        .endpoint_slices
        .iter_mut()
        .find(|s| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"))
                .is_some_and(|svc| svc == "svc-15")
        })
        .expect("svc-15 has an EndpointSlice");
    Arc::make_mut(slice)
        .endpoints
        .as_mut()
        .expect("svc-15's slice has endpoints")[0]
        .addresses = vec!["10.200.0.1".to_owned()];
    assert_same("endpoints of a gw-1 backend moved", &mut translator, &moved);
    assert_eq!(gateways(&translator), (1, 1));
    let third = translator.translate(&moved);
    assert!(Arc::ptr_eq(&second.gateways[&gw], &third.gateways[&gw]));

    // A route moving from gw to gw-1 touches both.
    let mut rehomed = moved.clone();
    Arc::make_mut(&mut rehomed.http_routes[4])
        .spec
        .parent_refs
        .as_mut()
        .expect("workload routes have parentRefs")[0]
        .name = "gw-1".to_owned();
    assert_same("a route moved to gw-1", &mut translator, &rehomed);
    assert_eq!(gateways(&translator), (0, 2));

    // What every Gateway's resolution may read (here a Namespace's
    // labels, which allowedRoutes selectors match) re-emits them all.
    let mut labelled = rehomed.clone();
    Arc::make_mut(&mut labelled.namespaces[0])
        .metadata
        .labels
        .get_or_insert_default()
        .insert("team".to_owned(), "a".to_owned());
    assert_same("a Namespace labelled", &mut translator, &labelled);
    assert_eq!(gateways(&translator), (0, 2));

    // A Gateway gone, and back.
    let mut one = labelled.clone();
    one.gateways.pop();
    assert_same("gw-1 deleted", &mut translator, &one);
    assert_eq!(gateways(&translator), (1, 0));
    assert_same("gw-1 back", &mut translator, &labelled);
    assert_eq!(gateways(&translator), (1, 1));
}
