//! `refresh_endpoints` against a full `translate`: on every golden case
//! (`testdata/translator/<case>.yaml`, loaded as the golden test loads it),
//! the EndpointSlices of one Service at a time are changed (an endpoint
//! added, removed or made not ready; every slice deleted), and refreshing the
//! previous output must give exactly the output of translating the changed
//! input, statuses included, and report exactly the Gateways whose resources
//! differ. Services no cluster uses must change nothing and report nothing.

mod shuffle;
mod support;

use gatewright_translator::{ClusterFeed, Input, ObjectKey, Output, refresh_endpoints, translate};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

fn case_files() -> Vec<PathBuf> {
    let dir = support::cases_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
}

/// The Service an EndpointSlice belongs to, if it names one.
fn owner(slice: &EndpointSlice) -> Option<ObjectKey> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(ObjectKey::new(
        slice.metadata.namespace.clone().unwrap_or_default(),
        name.clone(),
    ))
}

/// Indexes (in `input.endpoint_slices`) of `service`'s slices, by slice name
/// so that "the first slice" does not depend on the file's order.
fn slices_of(input: &Input, service: &ObjectKey) -> Vec<usize> {
    let mut found: Vec<usize> = (0..input.endpoint_slices.len())
        .filter(|&i| owner(&input.endpoint_slices[i]).as_ref() == Some(service))
        .collect();
    found.sort_by_key(|&i| input.endpoint_slices[i].metadata.name.clone());
    found
}

/// One change to a Service's EndpointSlices, as the EndpointSlice controller
/// makes them when pods come and go.
#[derive(Clone, Copy, Debug)]
enum Change {
    /// A new ready endpoint in the first IP slice, or in a new slice with the
    /// Service's ports when there is none.
    AddEndpoint,
    /// The first endpoint of the first slice that has one goes away.
    RemoveEndpoint,
    /// The first endpoint not already marked not ready becomes not ready.
    MakeNotReady,
    /// Every slice of the Service is deleted.
    DeleteSlices,
}

const CHANGES: [Change; 4] = [
    Change::AddEndpoint,
    Change::RemoveEndpoint,
    Change::MakeNotReady,
    Change::DeleteSlices,
];

fn ready_endpoint(address: &str) -> Endpoint {
    Endpoint {
        addresses: vec![address.to_owned()],
        conditions: Some(EndpointConditions {
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
        }),
        ..Endpoint::default()
    }
}

/// A slice of `service` carrying its ports (target port numbers, as the
/// EndpointSlice controller writes them), with no endpoints yet.
fn new_slice(input: &Input, service: &ObjectKey) -> EndpointSlice {
    let ports: Vec<EndpointPort> = input
        .services
        .iter()
        .filter(|s| {
            s.metadata.namespace.as_deref() == Some(service.namespace.as_str())
                && s.metadata.name.as_deref() == Some(service.name.as_str())
        })
        .flat_map(|s| s.spec.iter().flat_map(|spec| spec.ports.iter().flatten()))
        .map(|p| EndpointPort {
            name: p.name.clone(),
            port: Some(match &p.target_port {
                Some(IntOrString::Int(n)) => *n,
                _ => p.port,
            }),
            protocol: Some("TCP".to_owned()),
            ..EndpointPort::default()
        })
        .collect();
    EndpointSlice {
        metadata: ObjectMeta {
            namespace: Some(service.namespace.clone()),
            name: Some(format!("{}-refresh-test", service.name)),
            labels: Some(BTreeMap::from([(
                SERVICE_NAME_LABEL.to_owned(),
                service.name.clone(),
            )])),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".to_owned(),
        endpoints: None,
        ports: Some(ports),
    }
}

/// `input` with `change` applied to `service`'s slices; `None` when the
/// change does not apply (nothing to remove, nothing ready, no slices).
fn changed(input: &Input, service: &ObjectKey, change: Change) -> Option<Input> {
    let mut out = input.clone();
    let slices = slices_of(input, service);
    match change {
        Change::AddEndpoint => {
            let ip = slices.iter().copied().find(|&i| {
                matches!(
                    input.endpoint_slices[i].address_type.as_str(),
                    "IPv4" | "IPv6"
                )
            });
            match ip {
                Some(i) => {
                    let slice = std::sync::Arc::make_mut(&mut out.endpoint_slices[i]);
                    let address = if slice.address_type == "IPv6" {
                        "fd00::fe:1"
                    } else {
                        "10.254.0.1"
                    };
                    slice
                        .endpoints
                        .get_or_insert_default()
                        .push(ready_endpoint(address));
                }
                None => {
                    let mut slice = new_slice(input, service);
                    slice
                        .endpoints
                        .get_or_insert_default()
                        .push(ready_endpoint("10.254.0.1"));
                    out.endpoint_slices.push(std::sync::Arc::new(slice));
                }
            }
        }
        Change::RemoveEndpoint => {
            let i = slices
                .into_iter()
                .find(|&i| endpoints(&input.endpoint_slices[i]).next().is_some())?;
            std::sync::Arc::make_mut(&mut out.endpoint_slices[i])
                .endpoints
                .as_mut()?
                .remove(0);
        }
        Change::MakeNotReady => {
            let endpoint = slices
                .into_iter()
                .flat_map(|i| {
                    (0..endpoints(&input.endpoint_slices[i]).count()).map(move |j| (i, j))
                })
                .find(|&(i, j)| {
                    let e = &input.endpoint_slices[i]
                        .endpoints
                        .as_deref()
                        .unwrap_or_default()[j];
                    e.conditions.as_ref().and_then(|c| c.ready) != Some(false)
                })?;
            let e = &mut std::sync::Arc::make_mut(&mut out.endpoint_slices[endpoint.0])
                .endpoints
                .as_mut()?[endpoint.1];
            e.conditions.get_or_insert_with(Default::default).ready = Some(false);
        }
        Change::DeleteSlices => {
            if slices.is_empty() {
                return None;
            }
            out.endpoint_slices
                .retain(|s| owner(s).as_ref() != Some(service));
        }
    }
    Some(out)
}

/// Only the two lists `refresh_endpoints` may read: its contract says the
/// others may be empty, so the test gives it nothing else.
fn services_and_slices(input: &Input) -> Input {
    Input {
        services: input.services.clone(),
        endpoint_slices: input.endpoint_slices.clone(),
        ..Input::default()
    }
}

/// Gateways whose resources differ between two outputs (Gateways present in
/// only one of them included, though endpoint changes never cause those).
fn differing_gateways(a: &Output, b: &Output) -> BTreeSet<ObjectKey> {
    a.gateways
        .keys()
        .chain(b.gateways.keys())
        .filter(|key| a.gateways.get(*key) != b.gateways.get(*key))
        .cloned()
        .collect()
}

/// Every Service some cluster of `output` is fed by.
fn used_services(output: &Output) -> BTreeSet<ObjectKey> {
    output
        .gateways
        .values()
        .flat_map(|g| {
            g.backends
                .values()
                .flat_map(|b| b.ports().map(|p| p.service.clone()))
        })
        .collect()
}

/// Refreshes a copy of `before` for `services` from `after_input` and
/// checks it against `translate(after_input)`; returns the reported set.
fn check_refresh(
    what: &str,
    before: &Output,
    after_input: &Input,
    services: &BTreeSet<ObjectKey>,
) -> Result<BTreeSet<ObjectKey>, String> {
    let expected = translate(after_input);
    let mut actual = before.clone();
    let reported = refresh_endpoints(&services_and_slices(after_input), &mut actual, services);
    shuffle::compare_outputs(&expected, &actual)
        .map_err(|e| format!("{what}: refreshed output differs from a full translation: {e}"))?;
    let differing = differing_gateways(before, &expected);
    if reported != differing {
        return Err(format!(
            "{what}: reported {reported:?}, but the Gateways whose resources differ are {differing:?}"
        ));
    }
    Ok(reported)
}

#[test]
fn refresh_matches_a_full_translation_on_every_golden_case() {
    let files = case_files();
    assert!(!files.is_empty(), "no golden cases");
    let mut failures = Vec::new();
    let (mut checked, mut with_changes, mut unrelated) = (0usize, 0usize, 0usize);
    for file in &files {
        let case = file.file_stem().unwrap().to_string_lossy().into_owned();
        let input = support::load_case(file).unwrap_or_else(|e| panic!("{case}: {e:#}"));
        let before = translate(&input);

        // Every cluster is fed by a Service, and `backends` says which.
        for (gateway, resources) in &before.gateways {
            let clusters: Vec<&str> = resources.clusters.iter().map(|c| c.name.as_str()).collect();
            let backends: Vec<&str> = resources.backends.keys().map(String::as_str).collect();
            if clusters != backends {
                failures.push(format!(
                    "{case}: gateway {gateway}: clusters {clusters:?} but backends {backends:?}"
                ));
            }
        }

        let used = used_services(&before);
        for service in &used {
            for change in CHANGES {
                let Some(after) = changed(&input, service, change) else {
                    continue;
                };
                let what = format!("{case}: {change:?} on Service {service}");
                match check_refresh(&what, &before, &after, &BTreeSet::from([service.clone()])) {
                    Ok(reported) => {
                        checked += 1;
                        with_changes += usize::from(!reported.is_empty());
                    }
                    Err(e) => failures.push(e),
                }
            }
        }

        // All used Services at once, each with a new endpoint.
        if used.len() > 1 {
            let mut after = input.clone();
            for service in &used {
                after = changed(&after, service, Change::AddEndpoint).expect("always applies");
            }
            if let Err(e) = check_refresh(&format!("{case}: every Service"), &before, &after, &used)
            {
                failures.push(e);
            }
        }

        // Services no cluster uses: a Service that does not exist, and every
        // Service of the case that no programmed route sends to.
        let mut unused: Vec<ObjectKey> =
            vec![ObjectKey::new("no-such-namespace", "no-such-service")];
        unused.extend(
            input
                .services
                .iter()
                .map(|s| {
                    ObjectKey::new(
                        s.metadata.namespace.clone().unwrap_or_default(),
                        s.metadata.name.clone().unwrap_or_default(),
                    )
                })
                .filter(|key| !used.contains(key)),
        );
        for service in unused {
            let after = changed(&input, &service, Change::AddEndpoint).expect("always applies");
            let what = format!("{case}: unused Service {service}");
            let mut actual = before.clone();
            let reported = refresh_endpoints(
                &services_and_slices(&after),
                &mut actual,
                &BTreeSet::from([service.clone()]),
            );
            if !reported.is_empty() || actual != before {
                failures.push(format!(
                    "{what}: reported {reported:?} and the output {}",
                    if actual == before {
                        "is unchanged"
                    } else {
                        "changed"
                    }
                ));
            }
            // A full translation agrees that nothing changed.
            if let Err(e) = check_refresh(&what, &before, &after, &BTreeSet::from([service])) {
                failures.push(e);
            }
            unrelated += 1;
        }

        // Nothing to refresh: nothing happens.
        let mut actual = before.clone();
        let reported = refresh_endpoints(&Input::default(), &mut actual, &BTreeSet::new());
        if !reported.is_empty() || actual != before {
            failures.push(format!(
                "{case}: an empty set of Services changed something"
            ));
        }
    }
    eprintln!(
        "endpoints: {} cases, {checked} single-Service changes checked ({with_changes} changed a Gateway), \
         {unrelated} unused Services",
        files.len()
    );
    assert!(
        failures.is_empty(),
        "{} failure(s):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    // Guard against a vacuous pass: the cases must exercise real changes.
    assert!(checked >= 100, "only {checked} changes checked");
    assert!(
        with_changes >= 50,
        "only {with_changes} changes moved endpoints"
    );
    assert!(unrelated >= 10, "only {unrelated} unused Services checked");
}

/// A change to a Service that clusters of several Gateways use is reported
/// for each of them (the golden cases have such Services; at least one must
/// be found, or this test proves nothing).
#[test]
fn a_shared_service_is_refreshed_in_every_gateway_that_uses_it() {
    let mut found = 0;
    for file in case_files() {
        let input = support::load_case(&file).expect("case loads");
        let before = translate(&input);
        for service in used_services(&before) {
            let users = before
                .gateways
                .values()
                .filter(|g| {
                    g.backends
                        .values()
                        .flat_map(ClusterFeed::ports)
                        .any(|p| p.service == service)
                })
                .count();
            if users < 2 {
                continue;
            }
            let after = changed(&input, &service, Change::AddEndpoint).expect("always applies");
            let what = format!("{}: shared Service {service}", file.display());
            let reported = check_refresh(&what, &before, &after, &BTreeSet::from([service]))
                .unwrap_or_else(|e| panic!("{e}"));
            // (A new endpoint may match no port of the clusters; then
            // nothing changes anywhere, which check_refresh has verified.)
            found += usize::from(reported.len() == users);
        }
    }
    assert!(
        found > 0,
        "no golden case shares a Service between Gateways"
    );
}

/// A slice's endpoints (the list is optional in the API).
fn endpoints(
    slice: &EndpointSlice,
) -> impl Iterator<Item = &k8s_openapi::api::discovery::v1::Endpoint> {
    slice.endpoints.iter().flatten()
}
