//! Chaos under load (issue 16 item 5, standalone half): continuous traffic
//! on an HTTP and an HTTPS listener while routes, backends, endpoints,
//! certificates and filters change, while gatewright is SIGKILLed and
//! restarted, while its Envoy is SIGKILLed, and while an options change
//! makes gatewright replace its Envoy. Every response is counted per phase;
//! the test fails on any non-2xx that no change asked for, on any answer
//! from the wrong backend or with the wrong headers, on any TLS failure,
//! and on connection errors outside the Envoy-SIGKILL window.
//!
//! One round applies every change once. `CHAOS_ROUNDS` (default 1, which
//! `make test` runs) and `CHAOS_SECONDS` (default 120: no round starts
//! after that) bound the run; `make chaos` raises both.

// Each test binary uses its own part of the shared helpers.
#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

/// This test's address block (127.77.120.1, ports 21200..).
const BLOCK: u8 = 120;
/// The HTTPS listener's hostname.
const HOST: &str = "chaos.example";
/// The origin the load's CORS requests come from.
const ORIGIN: &str = "https://o1.example";
/// Upper bound on requests per load client, so the load is bounded in count
/// as well as in time.
const MAX_REQUESTS_PER_CLIENT: u64 = 5_000_000;
/// A poll that looks for N answers in a row gives up after this many tries.
const STREAK_TRIES: usize = 400;

/// What the driver is doing while a request runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Warmup,
    Routes,
    Headers,
    Weights,
    Endpoints,
    Certificate,
    Cors,
    GatewrightKill,
    EnvoyKill,
    OptionsRestart,
    Cooldown,
}

const PHASES: [Phase; 11] = [
    Phase::Warmup,
    Phase::Routes,
    Phase::Headers,
    Phase::Weights,
    Phase::Endpoints,
    Phase::Certificate,
    Phase::Cors,
    Phase::GatewrightKill,
    Phase::EnvoyKill,
    Phase::OptionsRestart,
    Phase::Cooldown,
];

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Warmup => "warmup",
            Phase::Routes => "routes-add-remove",
            Phase::Headers => "steady-header-filters",
            Phase::Weights => "backend-weights",
            Phase::Endpoints => "endpoint-add-remove",
            Phase::Certificate => "certificate-rotation",
            Phase::Cors => "cors-filter",
            Phase::GatewrightKill => "gatewright-sigkill-restart",
            Phase::EnvoyKill => "envoy-sigkill",
            Phase::OptionsRestart => "envoy-options-restart",
            Phase::Cooldown => "cooldown",
        }
    }

    fn index(self) -> usize {
        PHASES
            .iter()
            .position(|p| *p == self)
            .expect("every phase is listed")
    }

    /// Whether connection errors are expected in this phase: while the
    /// Envoy is SIGKILLed and its supervisor starts another (nothing listens
    /// on the Gateway's address in between); and while an Envoy is replaced
    /// make-before-break on a kernel that resets, rather than migrates,
    /// the connections still queued on the old Envoy's listening socket
    /// when it closes (`net.ipv4.tcp_migrate_req=0`). With migration on,
    /// the replacement must lose nothing.
    fn allows_connection_errors(self) -> bool {
        match self {
            Phase::EnvoyKill => true,
            Phase::OptionsRestart => !kernel_migrates_queued_connections(),
            _ => false,
        }
    }
}

/// Whether this network namespace's kernel moves connections queued on a
/// closing SO_REUSEPORT listener to another listener of its group.
fn kernel_migrates_queued_connections() -> bool {
    static MIGRATES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MIGRATES.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").is_ok_and(|v| v.trim() == "1")
    })
}

/// Every outcome of the requests of one phase (over all rounds).
#[derive(Default)]
struct Counts {
    /// How many times the phase ran.
    runs: u64,
    total: u64,
    ok: u64,
    /// Non-2xx answers by status, whether asked for or not.
    non2xx: BTreeMap<u16, u64>,
    /// Of those, answers a change asked for (404 from a route being removed).
    asked: u64,
    connection_errors: u64,
    tls_errors: u64,
    /// 2xx answers from the wrong backend or with the wrong headers.
    wrong: u64,
}

impl Counts {
    fn line(&self, phase: &str) -> String {
        let non2xx = if self.non2xx.is_empty() {
            "{}".to_owned()
        } else {
            let parts: Vec<String> = self
                .non2xx
                .iter()
                .map(|(code, n)| format!("{code}:{n}"))
                .collect();
            format!("{{{}}}", parts.join(","))
        };
        format!(
            "chaos phase={phase} runs={} total={} 2xx={} non2xx={non2xx} non2xx_asked={} \
             conn_errors={} tls_errors={} wrong={}",
            self.runs,
            self.total,
            self.ok,
            self.asked,
            self.connection_errors,
            self.tls_errors,
            self.wrong
        )
    }

    fn add(&mut self, other: &Counts) {
        self.runs += other.runs;
        self.total += other.total;
        self.ok += other.ok;
        for (code, n) in &other.non2xx {
            *self.non2xx.entry(*code).or_default() += n;
        }
        self.asked += other.asked;
        self.connection_errors += other.connection_errors;
        self.tls_errors += other.tls_errors;
        self.wrong += other.wrong;
    }
}

/// Where an extra route is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Extra {
    Present,
    /// Its file is gone or going: 200 and 404 are both right.
    Removing,
}

/// What the load may see right now. The driver widens it before a change
/// (the old and the new answer are both right while it spreads) and the
/// load snapshots it when a request starts.
#[derive(Clone, Debug)]
struct Expect {
    /// Header generations of the steady route that may answer.
    gens: Vec<u32>,
    /// CORS settings that may answer: whether ORIGIN is allowed.
    cors_allows: Vec<bool>,
    /// Extra routes by number.
    extras: BTreeMap<u32, Extra>,
}

/// What the load and the driver share.
struct Shared {
    phase: AtomicUsize,
    stop: AtomicBool,
    expect: Mutex<Expect>,
    counts: Mutex<BTreeMap<Phase, Counts>>,
    /// The first unexpected outcomes, for the failure message.
    failures: Mutex<Vec<String>>,
    /// Every unexpected outcome, including those past the kept 50.
    unexpected: AtomicUsize,
}

impl Shared {
    fn phase(&self) -> Phase {
        PHASES[self.phase.load(Ordering::SeqCst)]
    }

    fn enter(&self, phase: Phase) {
        self.phase.store(phase.index(), Ordering::SeqCst);
        self.counts
            .lock()
            .expect("counts lock")
            .entry(phase)
            .or_default()
            .runs += 1;
    }

    fn expect(&self) -> Expect {
        self.expect.lock().expect("expect lock").clone()
    }

    fn update(&self, f: impl FnOnce(&mut Expect)) {
        f(&mut self.expect.lock().expect("expect lock"));
    }

    fn fail(&self, what: String) {
        self.unexpected.fetch_add(1, Ordering::SeqCst);
        let mut failures = self.failures.lock().expect("failures lock");
        if failures.len() < 50 {
            failures.push(what);
        }
    }
}

/// A path the load requests.
#[derive(Clone, Copy, Debug)]
enum Target {
    Steady,
    Split,
    Pool,
    Cors,
    Extra(u32),
}

impl Target {
    fn path(self) -> String {
        match self {
            Target::Steady => "/steady".into(),
            Target::Split => "/split".into(),
            Target::Pool => "/pool".into(),
            Target::Cors => "/cors".into(),
            Target::Extra(k) => format!("/extra-{k}"),
        }
    }
}

/// Why a 2xx answer is wrong for `target` under `expect`, if it is.
fn check_answer(target: Target, expect: &Expect, r: &Reply) -> Result<(), String> {
    let backend = r.backend();
    match target {
        Target::Steady => {
            if backend != "s" {
                return Err(format!("backend {backend:?}, expected \"s\""));
            }
            let gen_ = r
                .header("x-chaos-gen")
                .and_then(|g| g.parse::<u32>().ok())
                .ok_or("no x-chaos-gen response header")?;
            if !expect.gens.contains(&gen_) {
                return Err(format!(
                    "generation {gen_}, expected one of {:?}",
                    expect.gens
                ));
            }
            // One generation's whole header set, never a mix of two.
            if r.header("x-chaos-parity") != Some(parity(gen_)) {
                return Err(format!(
                    "x-chaos-parity {:?} with generation {gen_}",
                    r.header("x-chaos-parity")
                ));
            }
            let echoed = r.echoed_header("x-chaos-gen");
            if echoed.as_deref() != Some(gen_.to_string().as_str()) {
                return Err(format!(
                    "the backend saw x-chaos-gen {echoed:?} but the response says {gen_}"
                ));
            }
            if r.echoed_header("x-chaos-drop").is_some() {
                return Err("the backend saw x-chaos-drop, which every generation removes".into());
            }
            Ok(())
        }
        Target::Split if ["a", "b"].contains(&backend) => Ok(()),
        Target::Pool if ["p1", "p2"].contains(&backend) => Ok(()),
        Target::Extra(_) if backend == "c" => Ok(()),
        Target::Cors if backend == "c" => {
            let allowed = match r.header("access-control-allow-origin") {
                Some(o) if o == ORIGIN => true,
                None => false,
                Some(other) => return Err(format!("access-control-allow-origin {other:?}")),
            };
            if expect.cors_allows.contains(&allowed) {
                Ok(())
            } else {
                Err(format!(
                    "ORIGIN allowed: {allowed}, expected one of {:?}",
                    expect.cors_allows
                ))
            }
        }
        _ => Err(format!("backend {backend:?}")),
    }
}

fn parity(gen_: u32) -> &'static str {
    if gen_.is_multiple_of(2) {
        "even"
    } else {
        "odd"
    }
}

/// Whether a failed request failed in TLS itself (certificate, alert,
/// protocol) rather than in the connection under it.
fn is_tls_error(error: &str) -> bool {
    [
        "InvalidCertificate",
        "AlertReceived",
        "HandshakeFailure",
        "PeerIncompatible",
        "PeerMisbehaved",
        "InvalidMessage",
        "DecryptError",
        "BadCertificate",
        "UnknownIssuer",
    ]
    .iter()
    .any(|s| error.contains(s))
}

/// One load client: requests every target in turn until told to stop,
/// classifying and counting every outcome.
async fn load(shared: Arc<Shared>, client: reqwest::Client, base: String, name: String) {
    let started = Instant::now();
    let mut i: u64 = 0;
    while !shared.stop.load(Ordering::SeqCst) && i < MAX_REQUESTS_PER_CLIENT {
        let expect = shared.expect();
        let mut targets = vec![Target::Steady, Target::Split, Target::Pool, Target::Cors];
        targets.extend(expect.extras.keys().map(|k| Target::Extra(*k)));
        let target = targets[(i % targets.len() as u64) as usize];
        i += 1;
        let start_phase = shared.phase();
        let url = format!("{base}{}", target.path());
        let headers: &[(&str, &str)] = match target {
            Target::Steady => &[("x-chaos-drop", "1")],
            Target::Cors => &[("origin", ORIGIN)],
            _ => &[],
        };
        let result = get(&client, &url, headers).await;
        let end_phase = shared.phase();
        // The counts are locked only while this request is counted, never
        // across an await.
        let failure = {
            let mut counts = shared.counts.lock().expect("counts lock");
            let c = counts.entry(start_phase).or_default();
            c.total += 1;
            let at = format!(
                "{name} GET {url} at {:?} ({} .. {})",
                started.elapsed(),
                start_phase.name(),
                end_phase.name()
            );
            match result {
                Ok(r) if (200..300).contains(&r.status) => {
                    match check_answer(target, &expect, &r) {
                        Ok(()) => {
                            c.ok += 1;
                            None
                        }
                        Err(why) => {
                            c.wrong += 1;
                            Some(format!("{at}: wrong answer: {why}; {}", r.summary()))
                        }
                    }
                }
                Ok(r) => {
                    *c.non2xx.entry(r.status).or_default() += 1;
                    let asked = matches!(target, Target::Extra(k)
                        if r.status == 404 && expect.extras.get(&k) == Some(&Extra::Removing));
                    if asked {
                        c.asked += 1;
                        None
                    } else {
                        Some(format!("{at}: unasked-for {}", r.summary()))
                    }
                }
                Err(e) if is_tls_error(&e) => {
                    c.tls_errors += 1;
                    Some(format!("{at}: TLS error: {}", clip(&e, 400)))
                }
                Err(e) => {
                    c.connection_errors += 1;
                    // A request in flight when the Envoy died ends in the
                    // window even if it started just before it.
                    (!(start_phase.allows_connection_errors()
                        || end_phase.allows_connection_errors()))
                    .then(|| format!("{at}: connection error: {}", clip(&e, 400)))
                }
            }
        };
        if let Some(failure) = failure {
            shared.fail(failure);
        }
        // About 200 requests a second per client: constant load that leaves
        // the shared cores to Envoy and gatewright.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------
// The files.

fn gateway_yaml(info: &WorldInfo) -> String {
    docs(&[
        gateway_class(),
        gateway(
            info.ip,
            &[
                http_listener("http", info.port),
                https_listener("https", info.port + 1, HOST, "chaos-cert"),
            ],
        )
        // Envoy's options come from ProxyParameters `tuned`.
        .replace(
            "spec:\n  gatewayClassName: gatewright\n",
            "spec:\n  gatewayClassName: gatewright\n  infrastructure:\n    parametersRef:\n      \
             group: gatewright.dev\n      kind: ProxyParameters\n      name: tuned\n",
        ),
    ])
}

fn params_yaml(concurrency: u32) -> String {
    proxy_parameters(&format!("  envoy:\n    concurrency: {concurrency}\n"))
}

/// The steady route: generation `g` of its header filters.
fn steady_yaml(g: u32) -> String {
    let filters = format!(
        "    - type: RequestHeaderModifier
      requestHeaderModifier:
        set:
        - name: X-Chaos-Gen
          value: \"{g}\"
        remove:
        - X-Chaos-Drop
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set:
        - name: X-Chaos-Gen
          value: \"{g}\"
        - name: X-Chaos-Parity
          value: {}
",
        parity(g)
    );
    http_route("steady", &prefix_rule("/steady", "svc-steady", &filters))
}

fn split_yaml(weight_a: u32, weight_b: u32) -> String {
    http_route(
        "split",
        &format!(
            "  - matches:
    - path:
        type: PathPrefix
        value: /split
    backendRefs:
    - name: svc-a
      port: 8080
      weight: {weight_a}
    - name: svc-b
      port: 8080
      weight: {weight_b}
"
        ),
    )
}

fn cors_yaml(allow_origin: bool) -> String {
    let origin = if allow_origin {
        ORIGIN
    } else {
        "https://o2.example"
    };
    http_route(
        "cors",
        &prefix_rule(
            "/cors",
            "svc-c",
            &format!(
                "    - type: CORS
      cors:
        allowOrigins:
        - {origin}
        allowMethods: [GET]
"
            ),
        ),
    )
}

fn extra_yaml(k: u32) -> String {
    http_route(
        &format!("extra-{k}"),
        &prefix_rule(&format!("/extra-{k}"), "svc-c", ""),
    )
}

/// A second EndpointSlice of Service svc-pool: one more endpoint, the echo
/// backend `p2` (its port differs from p1's, so it needs a slice of its own).
fn pool_p2_yaml(p2: SocketAddr) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc-pool-p2
  namespace: default
  labels:
    kubernetes.io/service-name: svc-pool
addressType: IPv4
ports:
- name: http
  port: {}
  protocol: TCP
endpoints:
- addresses:
  - {}
  conditions:
    ready: true
",
        p2.port(),
        p2.ip()
    )
}

// ---------------------------------------------------------------------------
// The driver's checks.

/// A client that opens a new connection for every request.
fn fresh_connections(builder: reqwest::ClientBuilder) -> reqwest::Client {
    builder
        .pool_max_idle_per_host(0)
        .build()
        .expect("building a client")
}

fn http_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
}

fn https_builder(ca_pem: &str, addr: SocketAddr) -> reqwest::ClientBuilder {
    http_builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA pem"))
        .resolve(HOST, addr)
}

/// The steady route's generation as `url` answers it now.
async fn steady_gen(c: &reqwest::Client, url: &str) -> Result<u32, String> {
    let r = get(c, url, &[]).await?;
    if r.status != 200 || r.backend() != "s" {
        return Err(format!("GET {url}: {}", r.summary()));
    }
    r.header("x-chaos-gen")
        .and_then(|g| g.parse().ok())
        .ok_or_else(|| format!("GET {url}: no x-chaos-gen: {}", r.summary()))
}

/// Polls `url` until `n` answers in a row come from `backend` (a weight
/// of 0 or a removed endpoint shows only as the absence of the other).
async fn streak(c: &reqwest::Client, url: &str, backend: &str, n: usize) -> Result<(), String> {
    let mut run = 0;
    let mut last = String::new();
    for _ in 0..STREAK_TRIES {
        let r = get(c, url, &[]).await?;
        if r.status == 200 && r.backend() == backend {
            run += 1;
            if run >= n {
                return Ok(());
            }
        } else {
            run = 0;
            last = r.summary();
            tokio::time::sleep(POLL).await;
        }
    }
    Err(format!(
        "no {n} answers in a row from {backend:?} within {STREAK_TRIES} tries; last other: {last}"
    ))
}

/// The serial number of the certificate the HTTPS listener presents.
async fn served_serial(addr: SocketAddr, ca_pem: &str) -> Result<Vec<u8>, String> {
    let der = served_certificate(addr, HOST, ca_pem).await?;
    serial_of(&der)
}

fn serial_of(der: &[u8]) -> Result<Vec<u8>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    Ok(cert.raw_serial().to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn env_knob(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")),
        _ => default,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_under_load() {
    let (envoy, _slot) = begin("chaos_under_load", Slot::Exclusive).await;
    let rounds = env_knob("CHAOS_ROUNDS", 1);
    let seconds = env_knob("CHAOS_SECONDS", 120);
    let run_started = Instant::now();

    let dir_pki = tempfile::tempdir().expect("a temp dir for certificates");
    let pki = Pki::new();
    let cert = pki.server_cert(dir_pki.path(), HOST);
    let mut serial = serial_of(&pem_der(&cert.cert_pem)).expect("the first serial");

    let mut p2_addr = None;
    let mut w = World::start(&envoy, BLOCK, &["s", "a", "b", "c", "p1", "p2"], &[], |i| {
        p2_addr = Some(i.echoes["p2"]);
        vec![
            ("gateway.yaml".into(), gateway_yaml(i)),
            ("params.yaml".into(), params_yaml(1)),
            (
                "backends.yaml".into(),
                docs(&[
                    i.backend("svc-steady", "s"),
                    i.backend("svc-a", "a"),
                    i.backend("svc-b", "b"),
                    i.backend("svc-c", "c"),
                    i.backend("svc-pool", "p1"),
                ]),
            ),
            (
                "secret.yaml".into(),
                tls_secret("chaos-cert", &cert.cert_pem, &cert.key_pem),
            ),
            ("steady.yaml".into(), steady_yaml(0)),
            ("split.yaml".into(), split_yaml(50, 50)),
            (
                "pool.yaml".into(),
                http_route("pool", &prefix_rule("/pool", "svc-pool", "")),
            ),
            ("cors.yaml".into(), cors_yaml(true)),
        ]
    });
    let p2_addr = p2_addr.expect("the p2 echo backend started");
    let https_addr = w.addr(w.port + 1);
    let http_base = format!("http://{}", w.addr(w.port));
    let https_base = format!("https://{HOST}:{}", w.port + 1);
    w.gw.wait_ready().await;

    // The driver's own clients open a connection per request, so each check
    // sees what a new client would.
    let c_http = fresh_connections(http_builder());
    let c_https = fresh_connections(https_builder(&pki.ca_pem, https_addr));
    let bases = [http_base.clone(), https_base.clone()];
    let clients = [&c_http, &c_https];
    for (c, base) in clients.iter().zip(&bases) {
        w.gw.wait(
            "the steady route at generation 0",
            async || match steady_gen(c, &format!("{base}/steady")).await? {
                0 => Ok(()),
                g => Err(format!("generation {g}")),
            },
        )
        .await;
    }
    let (first_pid, _, _) =
        w.gw.wait("the Envoy in /debug/status", async || {
            envoy_entry(&w.gw).await
        })
        .await;

    // The load: keep-alive and connection-per-request clients on both
    // listeners.
    let shared = Arc::new(Shared {
        phase: AtomicUsize::new(Phase::Warmup.index()),
        stop: AtomicBool::new(false),
        expect: Mutex::new(Expect {
            gens: vec![0],
            cors_allows: vec![true],
            extras: BTreeMap::new(),
        }),
        counts: Mutex::new(BTreeMap::new()),
        failures: Mutex::new(Vec::new()),
        unexpected: AtomicUsize::new(0),
    });
    shared.enter(Phase::Warmup);
    let load_clients = [
        (
            "http-keepalive-1",
            http_builder().build().expect("client"),
            &http_base,
        ),
        (
            "http-keepalive-2",
            http_builder().build().expect("client"),
            &http_base,
        ),
        ("http-fresh", fresh_connections(http_builder()), &http_base),
        (
            "https-keepalive",
            https_builder(&pki.ca_pem, https_addr)
                .build()
                .expect("client"),
            &https_base,
        ),
        (
            "https-fresh",
            fresh_connections(https_builder(&pki.ca_pem, https_addr)),
            &https_base,
        ),
    ];
    let mut tasks = Vec::new();
    for (name, client, base) in load_clients {
        tasks.push(tokio::spawn(load(
            Arc::clone(&shared),
            client,
            base.clone(),
            name.to_owned(),
        )));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut gen_ = 0u32;
    let mut cors_allows = true;
    let mut next_extra = 0u32;
    let mut concurrency = 1u32;
    let mut envoy_pid = first_pid;
    let weights = [(100, 0), (50, 50), (0, 100)];
    let mut round = 0u64;
    let mut timings: BTreeMap<Phase, Duration> = BTreeMap::new();
    while round < rounds && run_started.elapsed() < Duration::from_secs(seconds) {
        round += 1;
        eprintln!("chaos: round {round} at {:?}", run_started.elapsed());

        // Routes: one new route, and the oldest extra removed once there
        // are two.
        let t = Instant::now();
        shared.enter(Phase::Routes);
        let k = next_extra;
        next_extra += 1;
        w.gw.write(&format!("extra-{k}.yaml"), &extra_yaml(k));
        for (c, base) in clients.iter().zip(&bases) {
            w.gw.wait(&format!("/extra-{k} served"), async || {
                served_by(c, &format!("{base}/extra-{k}"), &[], "c").await
            })
            .await;
        }
        shared.update(|e| {
            e.extras.insert(k, Extra::Present);
        });
        let present: Vec<u32> = shared.expect().extras.keys().copied().collect();
        if present.len() > 1 {
            let old = present[0];
            shared.update(|e| {
                e.extras.insert(old, Extra::Removing);
            });
            std::fs::remove_file(w.gw.config_dir.join(format!("extra-{old}.yaml")))
                .expect("removing a route file");
            for (c, base) in clients.iter().zip(&bases) {
                w.gw.wait(&format!("/extra-{old} gone"), async || {
                    let r = get(c, &format!("{base}/extra-{old}"), &[]).await?;
                    if r.status == 404 {
                        Ok(())
                    } else {
                        Err(r.summary())
                    }
                })
                .await;
            }
            shared.update(|e| {
                e.extras.remove(&old);
            });
        }
        *timings.entry(Phase::Routes).or_default() += t.elapsed();

        // The steady route's header filters: the next generation.
        let t = Instant::now();
        shared.enter(Phase::Headers);
        gen_ += 1;
        next_generation(&shared, &w.gw, gen_, &clients, &bases).await;
        *timings.entry(Phase::Headers).or_default() += t.elapsed();

        // Weights between two backends.
        let t = Instant::now();
        shared.enter(Phase::Weights);
        let (wa, wb) = weights[(round as usize) % weights.len()];
        w.gw.write("split.yaml", &split_yaml(wa, wb));
        for (c, base) in clients.iter().zip(&bases) {
            let url = format!("{base}/split");
            match (wa, wb) {
                (_, 0) => {
                    w.gw.wait("/split all on a", async || streak(c, &url, "a", 30).await)
                        .await
                }
                (0, _) => {
                    w.gw.wait("/split all on b", async || streak(c, &url, "b", 30).await)
                        .await
                }
                _ => {
                    for b in ["a", "b"] {
                        w.gw.wait(&format!("/split reaching {b}"), async || {
                            served_by(c, &url, &[], b).await
                        })
                        .await;
                    }
                }
            }
        }
        *timings.entry(Phase::Weights).or_default() += t.elapsed();

        // An endpoint of svc-pool comes or goes (a second EndpointSlice).
        let t = Instant::now();
        shared.enter(Phase::Endpoints);
        let p2_file = w.gw.config_dir.join("pool-p2.yaml");
        if p2_file.exists() {
            std::fs::remove_file(&p2_file).expect("removing the p2 slice");
            for (c, base) in clients.iter().zip(&bases) {
                let url = format!("{base}/pool");
                w.gw.wait("/pool only on p1", async || streak(c, &url, "p1", 30).await)
                    .await;
            }
        } else {
            w.gw.write("pool-p2.yaml", &pool_p2_yaml(p2_addr));
            for (c, base) in clients.iter().zip(&bases) {
                let url = format!("{base}/pool");
                w.gw.wait("/pool reaching p2", async || {
                    served_by(c, &url, &[], "p2").await
                })
                .await;
            }
        }
        *timings.entry(Phase::Endpoints).or_default() += t.elapsed();

        // The HTTPS listener's certificate: a new key and serial.
        let t = Instant::now();
        shared.enter(Phase::Certificate);
        let next = pki.server_cert(dir_pki.path(), HOST);
        let next_serial = serial_of(&pem_der(&next.cert_pem)).expect("a serial");
        assert_ne!(
            next_serial, serial,
            "a rotated certificate has a new serial"
        );
        w.gw.write(
            "secret.yaml",
            &tls_secret("chaos-cert", &next.cert_pem, &next.key_pem),
        );
        w.gw.wait("the new certificate's serial presented", async || {
            let s = served_serial(https_addr, &pki.ca_pem).await?;
            if s == next_serial {
                Ok(())
            } else {
                Err(format!(
                    "serial {} presented, want {}",
                    hex(&s),
                    hex(&next_serial)
                ))
            }
        })
        .await;
        serial = next_serial;
        *timings.entry(Phase::Certificate).or_default() += t.elapsed();

        // The CORS filter: ORIGIN allowed, or not.
        let t = Instant::now();
        shared.enter(Phase::Cors);
        let old = cors_allows;
        cors_allows = !cors_allows;
        shared.update(|e| e.cors_allows = vec![old, cors_allows]);
        w.gw.write("cors.yaml", &cors_yaml(cors_allows));
        for (c, base) in clients.iter().zip(&bases) {
            w.gw.wait("the CORS change served", async || {
                let r = get(c, &format!("{base}/cors"), &[("origin", ORIGIN)]).await?;
                let allowed = r.header("access-control-allow-origin") == Some(ORIGIN);
                if r.status == 200 && allowed == cors_allows {
                    Ok(())
                } else {
                    Err(r.summary())
                }
            })
            .await;
        }
        *timings.entry(Phase::Cors).or_default() += t.elapsed();

        // gatewright SIGKILLed; a change is made while it is down, and the
        // next one adopts the running Envoy and serves the change.
        let t = Instant::now();
        shared.enter(Phase::GatewrightKill);
        w.gw.crash();
        gen_ += 1;
        let (prev, now) = (gen_ - 1, gen_);
        shared.update(|e| e.gens = vec![prev, now]);
        w.gw.write("steady.yaml", &steady_yaml(gen_));
        w.gw.restart(w.dir.path(), &envoy, &[]);
        w.gw.wait_ready().await;
        let (pid, _, adopted) =
            w.gw.wait("the adopted Envoy", async || envoy_entry(&w.gw).await)
                .await;
        assert_eq!(pid, envoy_pid, "the Envoy was replaced rather than adopted");
        assert!(adopted, "/debug/status should say the Envoy was adopted");
        wait_generation(&w.gw, gen_, &clients, &bases).await;
        *timings.entry(Phase::GatewrightKill).or_default() += t.elapsed();

        // The Envoy SIGKILLed: its supervisor starts another. Connection
        // errors are expected until it serves again, and counted.
        let t = Instant::now();
        shared.enter(Phase::EnvoyKill);
        // SAFETY: kill(2) on the Envoy this test's gatewright runs.
        unsafe {
            libc::kill(
                libc::pid_t::try_from(envoy_pid).expect("pid fits pid_t"),
                libc::SIGKILL,
            );
        }
        w.gw.wait("the killed Envoy gone", async || {
            if alive(envoy_pid) {
                Err("still alive".to_owned())
            } else {
                Ok(())
            }
        })
        .await;
        envoy_pid =
            w.gw.wait("a new Envoy", async || match envoy_entry(&w.gw).await? {
                (pid, _, _) if pid != envoy_pid => Ok(pid),
                (pid, _, _) => Err(format!("still pid {pid}")),
            })
            .await;
        wait_generation(&w.gw, gen_, &clients, &bases).await;
        *timings.entry(Phase::EnvoyKill).or_default() += t.elapsed();

        // Envoy's options change: gatewright replaces the Envoy itself.
        let t = Instant::now();
        shared.enter(Phase::OptionsRestart);
        concurrency = if concurrency == 1 { 2 } else { 1 };
        w.gw.write("params.yaml", &params_yaml(concurrency));
        let want = concurrency.to_string();
        envoy_pid =
            w.gw.wait("the Envoy restarted with the new concurrency", async || {
                let (pid, args) = envoy_cmdline(&w.gw).await?;
                match flag(&args, "--concurrency") {
                    Some(c) if c == want && pid != envoy_pid => Ok(pid),
                    other => Err(format!("pid {pid}, --concurrency {other:?}")),
                }
            })
            .await;
        wait_generation(&w.gw, gen_, &clients, &bases).await;
        *timings.entry(Phase::OptionsRestart).or_default() += t.elapsed();
    }

    // A little more load after the last change, then the counts.
    shared.enter(Phase::Cooldown);
    tokio::time::sleep(Duration::from_secs(1)).await;
    shared.stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.expect("a load client panicked");
    }
    let counts = std::mem::take(&mut *shared.counts.lock().expect("counts lock"));
    let mut all = Counts::default();
    let mut lines = Vec::new();
    for phase in PHASES {
        let Some(c) = counts.get(&phase) else {
            continue;
        };
        all.add(c);
        let took = timings.get(&phase).map_or_else(String::new, |d| {
            format!(" change_time={:.1}s", d.as_secs_f64())
        });
        lines.push(format!("{}{took}", c.line(phase.name())));
    }
    lines.push(format!(
        "{} rounds={round} duration={:.1}s tcp_migrate_req={}",
        all.line("all"),
        run_started.elapsed().as_secs_f64(),
        u8::from(kernel_migrates_queued_connections())
    ));
    for line in &lines {
        eprintln!("{line}");
    }
    let failures = std::mem::take(&mut *shared.failures.lock().expect("failures lock"));
    assert!(round >= 1, "no round ran within CHAOS_SECONDS={seconds}");
    assert!(
        failures.is_empty(),
        "{} unexpected outcomes (first {} shown):\n{}\ncounts:\n{}",
        shared.unexpected.load(Ordering::SeqCst),
        failures.len(),
        failures.join("\n"),
        lines.join("\n")
    );
}

/// Writes generation `g` of the steady route, with the old and the new one
/// both right while it spreads, and waits until both listeners serve it.
async fn next_generation(
    shared: &Shared,
    gw: &Gatewright,
    g: u32,
    clients: &[&reqwest::Client; 2],
    bases: &[String; 2],
) {
    shared.update(|e| e.gens = vec![g - 1, g]);
    gw.write("steady.yaml", &steady_yaml(g));
    wait_generation(gw, g, clients, bases).await;
}

/// Waits until both listeners serve generation `g` of the steady route.
async fn wait_generation(
    gw: &Gatewright,
    g: u32,
    clients: &[&reqwest::Client; 2],
    bases: &[String; 2],
) {
    for (c, base) in clients.iter().zip(bases) {
        gw.wait(
            &format!("{base}/steady at generation {g}"),
            async || match steady_gen(c, &format!("{base}/steady")).await? {
                got if got == g => Ok(()),
                got => Err(format!("generation {got}")),
            },
        )
        .await;
    }
}
