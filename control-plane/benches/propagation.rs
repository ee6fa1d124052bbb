//! Propagation benchmark (a plain `main`; `make bench-propagation`, not in
//! CI): how long a route change takes to reach traffic through a real
//! Envoy, and what the control plane costs meanwhile.
//!
//! **Standalone**: `gatewright run` (default flags) on a directory with one
//! Gateway (one HTTP listener) and one `gatewright-echo` backend. The
//! directory is filled up to each size in `PROPAGATION_SIZES` (default
//! `100,1000,3000`) with one file per route: a Service, its EndpointSlice
//! and an HTTPRoute `/x<i>` to it. At each size, `PROPAGATION_SAMPLES`
//! (default 50) routes are then, one at a time,
//!
//! - **added**: a new file written (atomically: temporary file, rename),
//!   timed from the rename to the first 200 for its path;
//! - **changed**: the same file rewritten with the path `/y<i>`, timed to
//!   the first 200 on `/y<i>`;
//! - **deleted**: the file removed, timed to the first 404 on `/y<i>`.
//!
//! A timed request loop polls every millisecond; any answer but the one
//! awaited and a 404 (or, for a deletion, a 200) counts as an error, and so
//! does any failed request. Meanwhile a steady client requests random
//! routes that stay, and counts every answer other than 200. Each phase
//! prints mean, p50, p99 and max, the error counts, and Gatewright's
//! resident memory and CPU time.
//!
//! **Kubernetes**: the same through a real kube-apiserver (the test
//! harness's etcd, kube-apiserver and kube-controller-manager) and
//! `gatewright controller` with host infrastructure: each route's Service
//! and EndpointSlice are applied first, and the time runs from just before
//! its HTTPRoute is applied (server-side apply) until the first 200; a
//! deletion deletes the HTTPRoute. Filling applies 16 objects at a time.
//!
//! The API server refuses loopback endpoint addresses, so the benchmark
//! runs in a network namespace of its own (it calls unshare(2) first, and
//! needs root): there the backend listens on `10.201.0.1`, an address on
//! the namespace's loopback interface, and no traffic leaves it.
//!
//! `PROPAGATION_KEEP_DIR=1` keeps the benchmark's folders (logs, state).
//! `PROPAGATION_MODES` picks the modes (default `standalone,kubernetes`).
//! `PROPAGATION_ARGS` adds flags to `gatewright run` and `gatewright
//! controller` (e.g. `--debounce-ms 100`). Both log at `warn` (`RUST_LOG`
//! overrides).

#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod support;

#[allow(unused_imports)]
#[path = "../tests/kube_support/mod.rs"]
mod kube_support;

use anyhow::{Context as _, Result, bail, ensure};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where the Gateway listens (its own loopback address).
const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 91, 1);
/// Where the backend listens, inside the benchmark's network namespace.
const BACKEND_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
const BACKEND_PORT: u16 = 8080;
/// How many objects filling applies at a time (Kubernetes mode).
const FILL_CONCURRENCY: usize = 16;
const GATEWAY_PORT: u16 = 8080;
/// The longest one change may take before the benchmark gives up.
const SAMPLE_DEADLINE: Duration = Duration::from_secs(60);
/// How often a timed change is polled.
const POLL: Duration = Duration::from_millis(1);

fn env_list(name: &str, default: &[usize]) -> Result<Vec<usize>> {
    match std::env::var(name) {
        Ok(v) => v
            .split(',')
            .map(|s| s.trim().parse().with_context(|| format!("{name}={v}")))
            .collect(),
        Err(_) => Ok(default.to_vec()),
    }
}

/// Moves this process into a network namespace of its own, with its
/// loopback interface up and [`BACKEND_IP`] on it. Runs before any thread
/// is started, so every thread and child is inside.
fn own_network_namespace() -> Result<()> {
    // SAFETY: unshare(2) with a flag; no memory is passed.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        bail!(
            "unshare(CLONE_NEWNET) failed ({}): the benchmark needs root for a network \
             namespace of its own",
            std::io::Error::last_os_error()
        );
    }
    for args in [
        vec!["link", "set", "lo", "up"],
        vec!["addr", "add", "10.201.0.1/32", "dev", "lo"],
    ] {
        let status = Command::new("ip")
            .args(&args)
            .status()
            .context("running ip")?;
        ensure!(status.success(), "ip {} failed", args.join(" "));
    }
    Ok(())
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; nothing else is taken from argv.
    if std::env::var_os("RUST_LOG").is_none() {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("RUST_LOG", "warn") };
    }
    own_network_namespace()?;
    let modes =
        std::env::var("PROPAGATION_MODES").unwrap_or_else(|_| "standalone,kubernetes".into());
    let sizes = env_list("PROPAGATION_SIZES", &[100, 1000, 3000])?;
    let samples = env_list("PROPAGATION_SAMPLES", &[50])?[0];
    ensure!(samples > 0, "PROPAGATION_SAMPLES must be positive");
    let extra: Vec<String> = std::env::var("PROPAGATION_ARGS")
        .map(|v| v.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!("{}", machine());
    for mode in modes.split(',').map(str::trim) {
        match mode {
            "standalone" => runtime.block_on(standalone(&sizes, samples, &extra))?,
            "kubernetes" => runtime.block_on(kubernetes(&sizes, samples, &extra))?,
            other => bail!("unknown mode {other:?} in PROPAGATION_MODES"),
        }
    }
    Ok(())
}

/// Whether to keep the benchmark's folder (logs included):
/// `PROPAGATION_KEEP_DIR=1`.
fn keep_dir() -> bool {
    std::env::var_os("PROPAGATION_KEEP_DIR").is_some_and(|v| v == "1")
}

/// One line naming the machine the figures come from.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    format!("machine: {cores} cores, {model}")
}

// ---------------------------------------------------------------------------
// Standalone mode.

fn http_route(i: usize, prefix: char, ns: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: r{i}
  namespace: {ns}
spec:
  parentRefs:
  - name: gw
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: /{prefix}{i}
    backendRefs:
    - name: r{i}
      port: 8080
"
    )
}

fn backend_service(i: usize, ns: &str) -> String {
    support::service_for(
        &format!("r{i}"),
        ns,
        SocketAddr::from((BACKEND_IP, BACKEND_PORT)),
        None,
    )
}

fn route_file(i: usize, prefix: char) -> String {
    format!(
        "{}---\n{}",
        backend_service(i, "default"),
        http_route(i, prefix, "default")
    )
}

struct ConfigDir {
    dir: PathBuf,
    tmp: PathBuf,
}

impl ConfigDir {
    /// Writes `name` so that the watcher sees one complete file appear: the
    /// temporary file lives outside the watched directory.
    fn write(&self, name: &str, content: &str) -> Result<()> {
        let tmp = self.tmp.join(name);
        std::fs::write(&tmp, content).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, self.dir.join(name)).context("renaming into the config dir")
    }

    fn remove(&self, name: &str) -> Result<()> {
        std::fs::remove_file(self.dir.join(name)).with_context(|| format!("removing {name}"))
    }
}

async fn standalone(sizes: &[usize], samples: usize, extra: &[String]) -> Result<()> {
    let envoy = gatewright_testkit::find_envoy().map_err(anyhow::Error::msg)?;
    let root = tempfile::Builder::new()
        .prefix("gatewright-propagation-")
        .disable_cleanup(keep_dir())
        .tempdir()?;
    let config = ConfigDir {
        dir: root.path().join("config"),
        tmp: root.path().join("tmp"),
    };
    let state = root.path().join("state");
    for d in [&config.dir, &config.tmp, &state] {
        std::fs::create_dir_all(d)?;
    }
    let backend = start_backend(root.path())?;
    config.write(
        "gateway.yaml",
        &format!(
            "{}---\n{}",
            support::gateway_class(),
            support::gateway(GATEWAY_IP, &[support::http_listener("http", GATEWAY_PORT)])
        ),
    )?;

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gatewright"));
    cmd.arg("run")
        .arg("--config-dir")
        .arg(&config.dir)
        .arg("--state-dir")
        .arg(&state)
        .args(["--xds-address", "127.0.0.1:0"])
        .args(["--admin-address", "127.0.0.1:0"])
        .arg("--envoy")
        .arg(&envoy)
        .args(extra);
    let gatewright = support::spawn_proc(cmd, "gatewright", root.path().join("gatewright.log"));
    let pid = gatewright.pid();
    println!(
        "standalone: gatewright run {} (pid {pid}, in {}), samples {samples} per phase",
        extra.join(" "),
        root.path().display()
    );

    let writer = Writer::Files { config };
    let result = measure("standalone", &writer, pid, sizes, samples).await;
    let envoys = envoys_of(&state);
    drop(gatewright);
    kill_leftovers(&envoys);
    drop(backend);
    result
}

/// The Envoys a state dir records.
fn envoys_of(state_dir: &std::path::Path) -> Vec<u32> {
    support::envoy_records(state_dir)
        .into_iter()
        .filter_map(|(_, r)| u32::try_from(r["pid"].as_u64()?).ok())
        .collect()
}

/// Gatewright stops its Envoys on SIGTERM, but one that outlives it (if
/// it had to be killed) must not outlive the benchmark.
fn kill_leftovers(envoys: &[u32]) {
    for &pid in envoys {
        if support::alive(pid) && support::comm(pid).contains("envoy") {
            // SAFETY: kill(2) on a pid this benchmark's control plane started.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// Starts `gatewright-echo` on [`BACKEND_IP`] and waits until it accepts.
fn start_backend(dir: &std::path::Path) -> Result<support::Proc> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gatewright-echo"));
    cmd.args([
        "--listen",
        &format!("{BACKEND_IP}:{BACKEND_PORT}"),
        "--name",
        "echo",
    ]);
    let proc = support::spawn_proc(cmd, "gatewright-echo", dir.join("echo.log"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect((BACKEND_IP, BACKEND_PORT)).is_err() {
        ensure!(
            Instant::now() < deadline,
            "the backend did not listen within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(proc)
}

/// How routes are written: files, or objects through the API server.
enum Writer {
    Files {
        config: ConfigDir,
    },
    Kube {
        kube: kube_support::Kube,
        ns: String,
    },
}

impl Writer {
    /// Makes routes `range` exist at once (their Services too).
    async fn fill(&self, range: std::ops::Range<usize>) -> Result<()> {
        match self {
            Self::Files { config } => {
                for i in range {
                    config.write(&format!("r{i}.yaml"), &route_file(i, 'x'))?;
                }
                Ok(())
            }
            Self::Kube { kube, ns } => {
                use futures::StreamExt as _;
                let docs: Vec<String> = range
                    .flat_map(|i| [backend_service(i, ns), http_route(i, 'x', ns)])
                    .collect();
                let results: Vec<Result<Vec<serde_json::Value>, String>> =
                    futures::stream::iter(docs.iter().map(|d| kube.apply(d)))
                        .buffer_unordered(FILL_CONCURRENCY)
                        .collect()
                        .await;
                for r in results {
                    r.map_err(anyhow::Error::msg)?;
                }
                Ok(())
            }
        }
    }

    /// What a new route needs before its timed write (its Service).
    async fn prepare(&self, i: usize) -> Result<()> {
        match self {
            Self::Files { .. } => Ok(()),
            Self::Kube { kube, ns } => kube
                .apply(&backend_service(i, ns))
                .await
                .map(drop)
                .map_err(anyhow::Error::msg),
        }
    }

    /// The timed write: route `i` (new or changed) to `/<prefix><i>`.
    async fn route(&self, i: usize, prefix: char) -> Result<()> {
        match self {
            Self::Files { config } => config.write(&format!("r{i}.yaml"), &route_file(i, prefix)),
            Self::Kube { kube, ns } => kube
                .apply(&http_route(i, prefix, ns))
                .await
                .map(drop)
                .map_err(anyhow::Error::msg),
        }
    }

    /// The timed deletion of route `i`.
    async fn remove(&self, i: usize) -> Result<()> {
        match self {
            Self::Files { config } => config.remove(&format!("r{i}.yaml")),
            Self::Kube { kube, ns } => kube
                .delete(
                    "gateway.networking.k8s.io/v1",
                    "HTTPRoute",
                    Some(ns),
                    &format!("r{i}"),
                )
                .await
                .map_err(anyhow::Error::msg),
        }
    }

    /// Removes what [`Writer::prepare`] made for route `i`, untimed.
    async fn cleanup(&self, i: usize) -> Result<()> {
        match self {
            Self::Files { .. } => Ok(()),
            Self::Kube { kube, ns } => {
                let name = format!("r{i}");
                for (api, kind) in [("v1", "Service"), ("discovery.k8s.io/v1", "EndpointSlice")] {
                    let object = if kind == "Service" {
                        name.clone()
                    } else {
                        format!("{name}-e2e")
                    };
                    kube.delete(api, kind, Some(ns), &object)
                        .await
                        .map_err(anyhow::Error::msg)?;
                }
                Ok(())
            }
        }
    }
}

/// Fills up to each size, then adds, changes and deletes `samples` routes
/// one at a time, printing each phase.
async fn measure(
    mode: &str,
    writer: &Writer,
    pid: u32,
    sizes: &[usize],
    samples: usize,
) -> Result<()> {
    let client = support::plain_client();
    let base = format!("http://{GATEWAY_IP}:{GATEWAY_PORT}");
    let steady = Steady::new();
    let mut present = 0;
    for &size in sizes {
        // Fill up to `size` at once and wait until the last route serves.
        let started = Instant::now();
        if size > present {
            writer.fill(present..size).await?;
            present = size;
            wait_status(
                &client,
                &base,
                &format!("/x{}", present - 1),
                200,
                Duration::from_secs(900),
            )
            .await
            .with_context(|| format!("filling up to {size} routes"))?;
        }
        println!(
            "{mode}: {present} routes present (filled in {:.1} s)",
            started.elapsed().as_secs_f64()
        );
        steady.start(client.clone(), base.clone(), present);

        let usage = Usage::of(pid);
        let ids: Vec<usize> = (0..samples).map(|k| 1_000_000 + size * 1000 + k).collect();
        let mut add = Phase::default();
        for &i in &ids {
            writer.prepare(i).await?;
            let t = Instant::now();
            writer.route(i, 'x').await?;
            add.sample(&client, &base, &format!("/x{i}"), 200, t)
                .await?;
        }
        let mut change = Phase::default();
        for &i in &ids {
            let t = Instant::now();
            writer.route(i, 'y').await?;
            change
                .sample(&client, &base, &format!("/y{i}"), 200, t)
                .await?;
        }
        let mut delete = Phase::default();
        for &i in &ids {
            let t = Instant::now();
            writer.remove(i).await?;
            delete
                .sample(&client, &base, &format!("/y{i}"), 404, t)
                .await?;
            writer.cleanup(i).await?;
        }
        let steady_counts = steady.stop().await;
        let usage = usage.since(pid);
        for (op, phase) in [("add", &add), ("change", &change), ("delete", &delete)] {
            println!("{}", phase.line(mode, present, op));
        }
        println!(
            "{mode} routes={present} steady: {} requests, {} not 200; control plane: rss {:.1} MiB \
             (peak {:.1} MiB), cpu {:.2} s over {:.1} s",
            steady_counts.0,
            steady_counts.1,
            usage.rss_mib,
            usage.peak_mib,
            usage.cpu_seconds,
            usage.wall.as_secs_f64()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Kubernetes mode.

async fn kubernetes(sizes: &[usize], samples: usize, extra: &[String]) -> Result<()> {
    let cluster = kube_support::Cluster::shared();
    let kube = cluster.kube().await;
    kube_support::crds::install(&kube)
        .await
        .map_err(anyhow::Error::msg)?;
    let root = tempfile::Builder::new()
        .prefix("gatewright-propagation-k8s-")
        .disable_cleanup(keep_dir())
        .tempdir()?;
    let backend = start_backend(root.path())?;
    let ns = "bench".to_owned();
    kube.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata:\n  name: bench\n\
         spec:\n  controllerName: {controller}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: gw\n  \
         namespace: {ns}\nspec:\n  gatewayClassName: bench\n  addresses:\n  - type: IPAddress\n    \
         value: {GATEWAY_IP}\n  listeners:\n  - name: http\n    port: {GATEWAY_PORT}\n    \
         protocol: HTTP\n",
        controller = gatewright_translator::DEFAULT_CONTROLLER_NAME
    ))
    .await
    .map_err(anyhow::Error::msg)?;
    let controller = kube_support::Controller::start(
        root.path(),
        kube_support::ControllerSpec {
            label: "bench".into(),
            kubeconfig: cluster.kubeconfig.clone(),
            infrastructure: kube_support::Infra::Host,
            namespace: ns.clone(),
            identity: "bench".into(),
            controller_name: gatewright_translator::DEFAULT_CONTROLLER_NAME.into(),
            lease_seconds: 15,
            extra_args: extra.to_vec(),
        },
    );
    let pid = controller.pid();
    println!(
        "kubernetes: gatewright controller --infrastructure host {} (pid {pid}), samples {samples} \
         per phase",
        extra.join(" ")
    );
    let writer = Writer::Kube { kube, ns };
    let result = measure("kubernetes", &writer, pid, sizes, samples).await;
    let envoys = envoys_of(&controller.state_dir);
    drop(controller);
    kill_leftovers(&envoys);
    drop(backend);
    result
}

// ---------------------------------------------------------------------------
// Timing.

/// Polls `path` until it answers `want`; how many other answers came.
async fn wait_status(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    want: u16,
    deadline: Duration,
) -> Result<u64> {
    let started = Instant::now();
    let mut errors = 0;
    loop {
        match client.get(format!("{base}{path}")).send().await {
            Ok(r) if r.status().as_u16() == want => {
                let _ = r.bytes().await;
                return Ok(errors);
            }
            // Not there yet (or, when waiting for a deletion, still there).
            Ok(r) if matches!(r.status().as_u16(), 200 | 404) => {
                let _ = r.bytes().await;
            }
            Ok(r) => {
                errors += 1;
                let _ = r.bytes().await;
            }
            Err(_) => errors += 1,
        }
        if started.elapsed() > deadline {
            bail!("{path} did not answer {want} within {deadline:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

#[derive(Default)]
struct Phase {
    times: Vec<Duration>,
    errors: u64,
}

impl Phase {
    async fn sample(
        &mut self,
        client: &reqwest::Client,
        base: &str,
        path: &str,
        want: u16,
        since: Instant,
    ) -> Result<()> {
        self.errors += wait_status(client, base, path, want, SAMPLE_DEADLINE).await?;
        self.times.push(since.elapsed());
        Ok(())
    }

    fn line(&self, mode: &str, routes: usize, op: &str) -> String {
        let mut ms: Vec<f64> = self.times.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let pick = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        let mean = ms.iter().sum::<f64>() / ms.len() as f64;
        format!(
            "{mode} routes={routes} {op:<6} n={} mean={mean:.1}ms p50={:.1}ms p99={:.1}ms \
             max={:.1}ms errors={}",
            ms.len(),
            pick(0.5),
            pick(0.99),
            pick(1.0),
            self.errors
        )
    }
}

/// Requests random routes that stay while others change; every answer but
/// 200 is counted.
struct Steady {
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
    bad: Arc<AtomicU64>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Steady {
    fn new() -> Self {
        Self {
            stop: Arc::new(AtomicBool::new(false)),
            requests: Arc::new(AtomicU64::new(0)),
            bad: Arc::new(AtomicU64::new(0)),
            task: std::sync::Mutex::new(None),
        }
    }

    fn start(&self, client: reqwest::Client, base: String, routes: usize) {
        self.stop.store(false, Ordering::SeqCst);
        self.requests.store(0, Ordering::SeqCst);
        self.bad.store(0, Ordering::SeqCst);
        let (stop, requests, bad) = (
            Arc::clone(&self.stop),
            Arc::clone(&self.requests),
            Arc::clone(&self.bad),
        );
        let task = tokio::spawn(async move {
            // A small deterministic generator is enough to spread requests.
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            while !stop.load(Ordering::SeqCst) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x % routes as u64) as usize;
                let ok = match client.get(format!("{base}/x{i}")).send().await {
                    Ok(r) => {
                        let ok = r.status().as_u16() == 200;
                        let _ = r.bytes().await;
                        ok
                    }
                    Err(_) => false,
                };
                requests.fetch_add(1, Ordering::SeqCst);
                if !ok {
                    bad.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        *self.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
    }

    /// (requests, not 200).
    async fn stop(&self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        (
            self.requests.load(Ordering::SeqCst),
            self.bad.load(Ordering::SeqCst),
        )
    }
}

// ---------------------------------------------------------------------------
// Process usage.

struct Usage {
    started: Instant,
    cpu_ticks: u64,
}

struct UsageSince {
    wall: Duration,
    cpu_seconds: f64,
    rss_mib: f64,
    peak_mib: f64,
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rfind(')')
        .map(|i| stat[i + 1..].split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime: fields 14 and 15, the 12th and 13th after the name.
    let field = |n: usize| {
        fields
            .get(n)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

fn status_kib(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

impl Usage {
    fn of(pid: u32) -> Self {
        Self {
            started: Instant::now(),
            cpu_ticks: cpu_ticks(pid),
        }
    }

    fn since(&self, pid: u32) -> UsageSince {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        UsageSince {
            wall: self.started.elapsed(),
            cpu_seconds: cpu_ticks(pid).saturating_sub(self.cpu_ticks) as f64 / hz,
            rss_mib: status_kib(pid, "VmRSS:") / 1024.0,
            peak_mib: status_kib(pid, "VmHWM:") / 1024.0,
        }
    }
}
