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
//! `PROPAGATION_ARGS` adds flags to `gatewright run` (e.g. `--debounce-ms
//! 100`). Gatewright logs at `warn` (`RUST_LOG` overrides).

#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod support;

use anyhow::{Context as _, Result, bail, ensure};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where the Gateway listens (its own loopback address).
const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 91, 1);
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

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; nothing else is taken from argv.
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
    runtime.block_on(standalone(&sizes, samples, &extra))
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

fn route_file(i: usize, prefix: char, echo: SocketAddr) -> String {
    let name = format!("r{i}");
    format!(
        "{}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: {name}
  namespace: default
spec:
  parentRefs:
  - name: gw
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: /{prefix}{i}
    backendRefs:
    - name: {name}
      port: 8080
",
        support::service_for(&name, "default", echo, None)
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
        .tempdir()?;
    let config = ConfigDir {
        dir: root.path().join("config"),
        tmp: root.path().join("tmp"),
    };
    let state = root.path().join("state");
    for d in [&config.dir, &config.tmp, &state] {
        std::fs::create_dir_all(d)?;
    }
    let echo = support::start_echo(root.path(), "echo", None);
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
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
    let gatewright = support::spawn_proc(cmd, "gatewright", root.path().join("gatewright.log"));
    let pid = gatewright.pid();
    println!(
        "standalone: gatewright run {} (pid {pid}), samples {samples} per phase",
        extra.join(" ")
    );

    let client = poll_client()?;
    let base = format!("http://{GATEWAY_IP}:{GATEWAY_PORT}");
    let steady = Steady::new();
    let mut present = 0;
    for &size in sizes {
        // Fill up to `size` at once and wait until the last route serves.
        let started = Instant::now();
        let before = present;
        for i in present..size {
            config.write(&format!("r{i}.yaml"), &route_file(i, 'x', echo.addr))?;
        }
        present = present.max(size);
        if present > before {
            let last = present - 1;
            wait_status(
                &client,
                &base,
                &format!("/x{last}"),
                200,
                Duration::from_secs(600),
            )
            .await
            .with_context(|| format!("filling up to {size} routes"))?;
        }
        println!(
            "standalone: {present} routes present (filled in {:.1} s)",
            started.elapsed().as_secs_f64()
        );
        steady.start(client.clone(), base.clone(), present);

        let usage = Usage::of(pid);
        let ids: Vec<usize> = (0..samples).map(|k| 1_000_000 + size * 1000 + k).collect();
        let mut add = Phase::default();
        for &i in &ids {
            let name = format!("r{i}.yaml");
            let content = route_file(i, 'x', echo.addr);
            let t = Instant::now();
            config.write(&name, &content)?;
            add.sample(&client, &base, &format!("/x{i}"), 200, t)
                .await?;
        }
        let mut change = Phase::default();
        for &i in &ids {
            let name = format!("r{i}.yaml");
            let content = route_file(i, 'y', echo.addr);
            let t = Instant::now();
            config.write(&name, &content)?;
            change
                .sample(&client, &base, &format!("/y{i}"), 200, t)
                .await?;
        }
        let mut delete = Phase::default();
        for &i in &ids {
            let t = Instant::now();
            config.remove(&format!("r{i}.yaml"))?;
            delete
                .sample(&client, &base, &format!("/y{i}"), 404, t)
                .await?;
        }
        let steady_counts = steady.stop().await;
        let usage = usage.since(pid);
        for (op, phase) in [("add", &add), ("change", &change), ("delete", &delete)] {
            println!("{}", phase.line("standalone", present, op));
        }
        println!(
            "standalone routes={present} steady: {} requests, {} not 200; gatewright: rss {:.1} MiB \
             (peak {:.1} MiB), cpu {:.2} s over {:.1} s",
            steady_counts.0,
            steady_counts.1,
            usage.rss_mib,
            usage.peak_mib,
            usage.cpu_seconds,
            usage.wall.as_secs_f64()
        );
    }
    drop(gatewright);
    drop(echo);
    Ok(())
}

// ---------------------------------------------------------------------------
// Timing.

fn poll_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .context("building an HTTP client")
}

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
