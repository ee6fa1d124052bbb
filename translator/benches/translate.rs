//! Translation benchmark: median time of `translate(&input)` (criterion) and
//! heap allocations per call (a counting global allocator), on
//!
//! - `http_routes_1000` / `http_routes_5000`: one HTTP listener, n HTTPRoutes
//!   each with its own Service (target: 5,000 routes under 100 ms);
//! - `large_mixed`: 500 HTTPRoutes (three rules each) + 250 GRPCRoutes (two
//!   rules each) over 500 Services in 10 namespaces, every route on an HTTP
//!   and an HTTPS listener: about 4,000 Envoy routes (target: under 15 ms);
//! - `large_mixed_http_only`: the same objects on the HTTP listener alone;
//! - `listener_sets_100x10`: 1,000 listeners from 100 ListenerSets (half
//!   HTTP, half HTTPS, over ten ports), one route per set.
//!
//! Each workload is timed twice: `translate/…` includes freeing the output,
//! `translate_without_drop/…` does not. `one_route_changed/…` times a
//! [`Translator`] that reuses the previous translation, with one HTTPRoute
//! changed per call (target: 2 ms at 5,000 routes).
//!
//! Run with `cargo bench -p gatewright-translator --bench translate`.

#[path = "../tests/workload/mod.rs"]
mod workload;

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use gatewright_translator::{Input, Translator, translate};
use mimalloc::MiMalloc;
use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Defers to mimalloc, the gatewright binary's allocator; while [`COUNTING`] is set, also counts
/// allocations (including the allocating half of reallocations) and bytes
/// requested. Off during timing, so the timed loop pays one relaxed load per
/// allocation, not two atomic additions.
struct CountingAllocator;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

fn count(bytes: usize) {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `MiMalloc` with the caller's arguments
// unchanged; the counters are only side effects.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as `GlobalAlloc::alloc`.
        unsafe { MiMalloc.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as `GlobalAlloc::alloc_zeroed`.
        unsafe { MiMalloc.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as `GlobalAlloc::dealloc`.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: same contract as `GlobalAlloc::realloc`.
        unsafe { MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Allocations and bytes of one `translate` call, the output's drop
/// excluded (it is dropped after the counters are read).
fn count_allocations(input: &Input) -> (u64, u64) {
    let allocations = ALLOCATIONS.load(Ordering::SeqCst);
    let bytes = BYTES.load(Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    let output = translate(black_box(input));
    COUNTING.store(false, Ordering::SeqCst);
    let counts = (
        ALLOCATIONS.load(Ordering::SeqCst) - allocations,
        BYTES.load(Ordering::SeqCst) - bytes,
    );
    drop(black_box(output));
    counts
}

/// Prints the workload's shape and allocation counts, then benchmarks it.
fn bench_workload(c: &mut Criterion, name: &str, input: &Input) {
    // One untimed call first, so lazily initialised statics (if any) are
    // not counted.
    drop(black_box(translate(input)));
    let output = translate(input);
    let (listeners, routes, clusters, endpoints, secrets) =
        output.gateways.values().fold((0, 0, 0, 0, 0), |acc, gw| {
            (
                acc.0 + gw.listeners.len(),
                acc.1 + gw.routes.len(),
                acc.2 + gw.clusters.len(),
                acc.3 + gw.endpoints.len(),
                acc.4 + gw.secrets.len(),
            )
        });
    let gateways = output.gateways.len();
    drop(output);
    let (allocations, bytes) = count_allocations(input);
    println!(
        "{name}: input {} HTTPRoutes, {} GRPCRoutes, {} Services, {} EndpointSlices; \
         output {gateways} Gateways, {listeners} listeners, {routes} route configs, {clusters} clusters, \
         {endpoints} load assignments, {secrets} secrets",
        input.http_routes.len(),
        input.grpc_routes.len(),
        input.services.len(),
        input.endpoint_slices.len(),
    );
    println!("{name}: allocations per translate: {allocations}, bytes allocated: {bytes}");
    let mut group = c.benchmark_group("translate");
    // Milliseconds per iteration: equal-sized samples, not criterion's
    // linear ramp, keep the run short and the estimate sound.
    group.sampling_mode(SamplingMode::Flat);
    // The whole cost: translating, then freeing the output.
    group.bench_function(name, |b| b.iter(|| translate(black_box(input))));
    group.finish();
    // Translating alone: the control plane keeps an output while it serves
    // it and frees it later, off the path from a change to a push.
    let mut group = c.benchmark_group("translate_without_drop");
    group.sampling_mode(SamplingMode::Flat);
    group.bench_function(name, |b| {
        b.iter_with_large_drop(|| translate(black_box(input)))
    });
    group.finish();
}

/// `input` with the path of its first HTTPRoute's first match changed.
fn with_one_route_changed(input: &Input) -> Input {
    let mut changed = input.clone();
    let route = std::sync::Arc::make_mut(&mut changed.http_routes[0]);
    if let Some(path) = route
        .spec
        .rules
        .as_mut()
        .and_then(|rules| rules.first_mut())
        .and_then(|rule| rule.matches.as_mut())
        .and_then(|matches| matches.first_mut())
        .and_then(|m| m.path.as_mut())
    {
        path.value = Some("/changed-by-the-benchmark".to_owned());
    }
    changed
}

/// One [`Translator`] alternating between `input` and `input` with one
/// route changed: the cost of a one-route change with the rest reused
/// (the freed output included).
fn bench_one_route_changed(c: &mut Criterion, name: &str, input: &Input) {
    let changed = with_one_route_changed(input);
    let mut translator = Translator::new();
    drop(translator.translate(input));
    let mut group = c.benchmark_group("one_route_changed");
    group.sampling_mode(SamplingMode::Flat);
    let mut flip = false;
    group.bench_function(name, |b| {
        b.iter(|| {
            flip = !flip;
            translator.translate(black_box(if flip { &changed } else { input }))
        })
    });
    group.finish();
    let reuse = translator.last_reuse();
    println!(
        "{name}: one route changed: {} routes reused, {} resolved; {} Gateways reused, {} emitted",
        reuse.routes_reused, reuse.routes_resolved, reuse.gateways_reused, reuse.gateways_emitted
    );
}

fn benches(c: &mut Criterion) {
    bench_one_route_changed(c, "http_routes_5000", &workload::http_routes(5000));
    bench_one_route_changed(c, "large_mixed", &workload::large_mixed());
    bench_one_route_changed(c, "gateways_50x100", &workload::many_gateways(50, 100));
    bench_workload(c, "http_routes_1000", &workload::http_routes(1000));
    bench_workload(c, "http_routes_5000", &workload::http_routes(5000));
    bench_workload(c, "large_mixed", &workload::large_mixed());
    bench_workload(
        c,
        "large_mixed_http_only",
        &workload::large_mixed_http_only(),
    );
    bench_workload(c, "listener_sets_100x10", &workload::listener_sets(100, 10));
    bench_workload(c, "gateways_50x100", &workload::many_gateways(50, 100));
}

criterion_group! {
    name = translate_benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8));
    targets = benches
}
criterion_main!(translate_benches);
