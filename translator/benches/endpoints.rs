//! Endpoint refresh benchmark: after the EndpointSlices of one Service
//! change, the median time of a full `translate` of the new input against
//! that of `refresh_endpoints` on the previous output, for the largest
//! workloads of `benches/translate.rs`:
//!
//! - `http_routes_5000`: 5,000 HTTPRoutes, each with its own Service;
//! - `large_mixed`: 500 HTTPRoutes + 250 GRPCRoutes over 500 Services, on an
//!   HTTP and an HTTPS listener.
//!
//! The changed Service is `svc-0`: one of its ready endpoints disappears.
//! Each refresh alternates between the two inputs, so every call really
//! replaces an assignment instead of finding nothing to do.
//!
//! Run with `cargo bench -p gatewright-translator --bench endpoints`.

#[path = "../tests/workload/mod.rs"]
mod workload;

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use gatewright_translator::{Input, ObjectKey, refresh_endpoints, translate};
use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::Duration;

/// The gatewright binary's allocator, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `input` with the first endpoint of Service `service`'s slices removed.
fn without_one_endpoint(input: &Input, service: &ObjectKey) -> Input {
    let mut changed = input.clone();
    let slice = changed
        .endpoint_slices
        .iter_mut()
        .find(|s| {
            s.metadata.namespace.as_deref() == Some(service.namespace.as_str())
                && s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name"))
                    == Some(&service.name)
        })
        .expect("the workload has a slice for the Service");
    std::sync::Arc::make_mut(slice)
        .endpoints
        .as_mut()
        .expect("the slice has endpoints")
        .remove(0);
    changed
}

fn bench_workload(c: &mut Criterion, name: &str, input: &Input, service: ObjectKey) {
    let changed = without_one_endpoint(input, &service);
    let services = BTreeSet::from([service]);

    // The refresh must be worth measuring: it changes something, and gives
    // what the full translation gives.
    let mut output = translate(input);
    let reported = refresh_endpoints(&changed, &mut output, &services);
    assert!(
        !reported.is_empty(),
        "{name}: the change moved no endpoints"
    );
    assert!(
        output == translate(&changed),
        "{name}: refresh differs from translate"
    );
    println!(
        "{name}: {} Services, {} EndpointSlices; the change touches {} Gateway(s)",
        input.services.len(),
        input.endpoint_slices.len(),
        reported.len()
    );

    let mut group = c.benchmark_group("endpoint_change");
    group.sampling_mode(SamplingMode::Flat);
    // A full translation, not counting freeing its output (which the control
    // plane does later, off the path from a change to a push).
    group.bench_function(format!("translate/{name}"), |b| {
        b.iter_with_large_drop(|| translate(black_box(&changed)))
    });
    // The refresh, flipping between the two inputs so that every call
    // finds a changed assignment.
    let inputs = [input, &changed];
    let mut next = 0;
    group.bench_function(format!("refresh_endpoints/{name}"), |b| {
        b.iter(|| {
            next ^= 1;
            refresh_endpoints(black_box(inputs[next]), &mut output, &services)
        })
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    bench_workload(
        c,
        "http_routes_5000",
        &workload::http_routes(5000),
        ObjectKey::new("default", "svc-0"),
    );
    bench_workload(
        c,
        "large_mixed",
        &workload::large_mixed(),
        ObjectKey::new("ns-0", "svc-0"),
    );
}

criterion_group! {
    name = endpoint_benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8));
    targets = benches
}
criterion_main!(endpoint_benches);
