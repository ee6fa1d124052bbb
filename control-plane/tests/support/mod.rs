//! Helpers for the end-to-end tests: real `gatewright run` processes with
//! their Envoy children, `gatewright-echo` backends, YAML builders, TLS
//! certificates and HTTP clients.
//!
//! Every process started here is owned by a guard that kills it when the
//! guard drops, also when a test panics. Every wait is bounded.

pub mod authz;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::HeaderMap;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tempfile::TempDir;

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);
/// How often waits poll.
pub const POLL: Duration = Duration::from_millis(20);

/// Tests that measure time or push load take this lock exclusively; every
/// other test takes it shared, so timing-sensitive tests run alone.
static EXCLUSIVE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Whether a test may run beside others.
pub enum Slot {
    Shared,
    /// Alone: the test measures time or pushes load.
    Exclusive,
}

/// Holds a test's [`Slot`] until dropped.
pub struct SlotGuard {
    _shared: Option<tokio::sync::RwLockReadGuard<'static, ()>>,
    _exclusive: Option<tokio::sync::RwLockWriteGuard<'static, ()>>,
}

/// The start of every test: the Envoy binary (a test without one fails,
/// it is never skipped) and the test's slot.
pub async fn begin(test: &str, slot: Slot) -> (PathBuf, SlotGuard) {
    let envoy = envoy_or_fail(test);
    let guard = match slot {
        Slot::Shared => SlotGuard {
            _shared: Some(EXCLUSIVE.read().await),
            _exclusive: None,
        },
        Slot::Exclusive => SlotGuard {
            _shared: None,
            _exclusive: Some(EXCLUSIVE.write().await),
        },
    };
    (envoy, guard)
}

// ---------------------------------------------------------------------------
// Finding Envoy.

/// The Envoy binary (the workspace's one lookup); panics saying how to
/// install it when there is none, so that a machine without Envoy fails
/// the test instead of passing it.
pub fn envoy_or_fail(test: &str) -> PathBuf {
    gatewright_testkit::find_envoy().unwrap_or_else(|e| panic!("{test}: {e}"))
}

// ---------------------------------------------------------------------------
// Processes.

/// A child process that is killed (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    child: Option<Child>,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: libc::c_int) {
        if let Some(child) = &self.child {
            let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
            // SAFETY: kill(2) with a pid we own (our unreaped child) and a
            // valid signal number has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    /// Waits up to `timeout` for the process to exit; `None` if it has not.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                Ok(None) => return None,
                Err(e) => panic!("waiting for {}: {e}", self.name),
            }
        }
    }

    /// Whether the process has exited (without reaping a live one).
    pub fn has_exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// The last `lines` lines of the process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    fn stop(&mut self) {
        if self.has_exited() {
            return;
        }
        self.signal(libc::SIGTERM);
        if self.wait_timeout(Duration::from_secs(5)).is_none()
            && let Some(child) = self.child.as_mut()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `cmd` (output to `log`) as a [`Proc`] that dies with the test.
pub fn spawn_proc(mut cmd: Command, name: &str, log: PathBuf) -> Proc {
    let out = std::fs::File::create(&log).expect("creating a process log");
    let err = out.try_clone().expect("cloning the log file handle");
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    die_with_parent(&mut cmd, libc::SIGKILL);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    Proc {
        child: Some(child),
        name: name.to_owned(),
        log,
    }
}

/// The start time of a live process (field 22 of /proc/PID/stat).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Every Envoy record (`envoy/*/process.json`) under a state dir, as JSON.
pub fn envoy_records(state_dir: &Path) -> Vec<(PathBuf, Value)> {
    files_under(&state_dir.join("envoy"))
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "process.json"))
        .filter_map(|p| {
            let text = std::fs::read_to_string(&p).ok()?;
            Some((p, serde_json::from_str(&text).ok()?))
        })
        .collect()
}

/// Makes the child get `signal` when the thread that started it ends, so
/// that nothing outlives a test run that was itself killed (when guards do
/// not run). Tests start their processes from the test's own thread, which
/// outlives them.
fn die_with_parent(cmd: &mut Command, signal: libc::c_int) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure runs between fork and exec and only calls
    // prctl(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Every file below `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The pids of every live descendant of `pid`, read from /proc.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = parent_pid(p) {
                parent_of.push((p, ppid));
            }
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let current = found[i];
        for &(p, ppid) in &parent_of {
            if ppid == current && !found.contains(&p) {
                found.push(p);
            }
        }
        i += 1;
    }
    found.remove(0);
    found
}

/// The parent pid of a live process (`None` if gone or a zombie).
pub fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.next()?.parse().ok()
}

/// Whether a process with this pid is alive (not gone and not a zombie).
pub fn alive(pid: u32) -> bool {
    parent_pid(pid).is_some()
}

/// The short command name of a process.
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Echo backends.

/// A running `gatewright-echo`, stopped when dropped.
pub struct Echo {
    _proc: Proc,
    pub addr: SocketAddr,
}

/// Starts `gatewright-echo --name NAME` on 127.0.0.1 (TLS with `tls`'s
/// certificate and key files) and waits for its `listening on` line.
pub fn start_echo(dir: &Path, name: &str, tls: Option<(&Path, &Path)>) -> Echo {
    match tls {
        Some((cert, key)) => start_echo_with(
            dir,
            name,
            &[
                "--tls-cert".as_ref(),
                cert.as_os_str(),
                "--tls-key".as_ref(),
                key.as_os_str(),
            ],
        ),
        None => start_echo_with(dir, name, &[]),
    }
}

// ---------------------------------------------------------------------------
// gatewright.

/// A running `gatewright run` on its own config, state and status dirs.
pub struct Gatewright {
    // Declared first so that it is dropped (stopped) before the dirs go.
    pub proc: Proc,
    pub config_dir: PathBuf,
    pub state_dir: PathBuf,
    pub status_dir: PathBuf,
    pub admin: SocketAddr,
    /// Every descendant seen so far, with its command name, killed on drop
    /// if still alive after gatewright has stopped.
    seen_children: std::sync::Mutex<BTreeMap<u32, String>>,
    /// Set on a gatewright replaced by [`Gatewright::restart`]: what it ran
    /// now belongs to its successor, which the drop guard must leave alone.
    handed_over: bool,
}

impl Gatewright {
    /// Starts `gatewright run` on `root/config` (already filled by the test),
    /// and waits until it has written its admin address.
    pub fn start(root: &Path, envoy: &Path) -> Self {
        Self::start_with(root, envoy, &[])
    }

    /// [`Gatewright::start`] with `extra` arguments to `gatewright run`.
    #[allow(dead_code)] // used directly by backend_tls.rs, not by e2e.rs
    pub fn start_with(root: &Path, envoy: &Path, extra: &[&std::ffi::OsStr]) -> Self {
        let config_dir = root.join("config");
        let state_dir = root.join("state");
        let status_dir = root.join("status");
        for d in [&config_dir, &state_dir, &status_dir] {
            std::fs::create_dir_all(d).expect("creating a gatewright dir");
        }
        let log = root.join("gatewright.log");
        let out = std::fs::File::create(&log).expect("creating the gatewright log");
        let err = out.try_clone().expect("cloning the log file handle");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gatewright"));
        cmd.arg("run")
            .arg("--config-dir")
            .arg(&config_dir)
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--status-dir")
            .arg(&status_dir)
            .args(["--xds-address", "127.0.0.1:0"])
            .args(["--admin-address", "127.0.0.1:0"])
            .arg("--envoy")
            .arg(envoy)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SIGTERM, so that gatewright still stops its Envoys.
        die_with_parent(&mut cmd, libc::SIGTERM);
        let child = cmd.spawn().expect("starting gatewright");
        let mut proc = Proc {
            child: Some(child),
            name: "gatewright".into(),
            log,
        };
        let admin_file = state_dir.join("admin-address");
        let deadline = Instant::now() + WAIT;
        let admin = loop {
            if let Some(addr) = std::fs::read_to_string(&admin_file)
                .ok()
                .and_then(|s| s.trim().parse::<SocketAddr>().ok())
            {
                break addr;
            }
            assert!(
                !proc.has_exited(),
                "gatewright exited before writing {}; log:\n{}",
                admin_file.display(),
                proc.log_tail(40)
            );
            assert!(
                Instant::now() < deadline,
                "gatewright did not write {} within {WAIT:?}; log:\n{}",
                admin_file.display(),
                proc.log_tail(40)
            );
            std::thread::sleep(POLL);
        };
        Self {
            proc,
            config_dir,
            state_dir,
            status_dir,
            admin,
            seen_children: std::sync::Mutex::new(BTreeMap::new()),
            handed_over: false,
        }
    }

    /// Writes a config file atomically (temporary file, then rename).
    pub fn write(&self, name: &str, content: &str) {
        let tmp = self.config_dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).expect("writing a config file");
        std::fs::rename(&tmp, self.config_dir.join(name)).expect("renaming a config file");
    }

    /// Overwrites a config file in place, as an editor without atomic saves
    /// would.
    pub fn write_in_place(&self, name: &str, content: &str) {
        std::fs::write(self.config_dir.join(name), content).expect("writing a config file");
    }

    /// The last lines of gatewright's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.proc.log_tail(lines)
    }

    /// Records gatewright's current descendants, and the Envoys its state
    /// dir records (adopted ones are no descendants), for the drop guard.
    pub fn note_children(&self) -> Vec<u32> {
        let kids = descendants(self.proc.pid());
        let recorded = envoy_records(&self.state_dir)
            .into_iter()
            .filter_map(|(_, r)| u32::try_from(r["pid"].as_u64()?).ok())
            .filter(|&pid| comm(pid).contains("envoy"));
        let mut seen = self.seen_children.lock().unwrap_or_else(|e| e.into_inner());
        for k in kids.iter().copied().chain(recorded) {
            seen.entry(k).or_insert_with(|| comm(k));
        }
        kids
    }

    /// SIGKILLs gatewright, as a crash would (nothing of it runs after),
    /// and waits until it is gone. Its Envoys are left running, and still
    /// killed by the drop guard if nothing stops them first.
    pub fn crash(&mut self) {
        self.note_children();
        self.proc.signal(libc::SIGKILL);
        assert!(
            self.proc.wait_timeout(Duration::from_secs(5)).is_some(),
            "gatewright did not die of SIGKILL"
        );
    }

    /// Starts gatewright again on the same dirs (after [`Gatewright::crash`]
    /// or a clean exit) with `extra` arguments; what the old one ran is
    /// still remembered for the drop guard.
    pub fn restart(&mut self, root: &Path, envoy: &Path, extra: &[&std::ffi::OsStr]) {
        assert!(self.proc.has_exited(), "restart: gatewright still runs");
        // The old admin address file must not be mistaken for the new one,
        // and the old log is kept beside the new one.
        let _ = std::fs::remove_file(self.state_dir.join("admin-address"));
        let _ = std::fs::rename(&self.proc.log, root.join("gatewright-before-restart.log"));
        let next = Self::start_with(root, envoy, extra);
        let seen =
            std::mem::take(&mut *self.seen_children.lock().unwrap_or_else(|e| e.into_inner()));
        *next.seen_children.lock().unwrap_or_else(|e| e.into_inner()) = seen;
        // The old one has exited; its Envoys are the new one's now.
        let mut old = std::mem::replace(self, next);
        old.handed_over = true;
        drop(old);
    }

    /// GET on the admin server: (status, body).
    pub async fn admin_get(&self, path: &str) -> Result<(u16, String), String> {
        let resp = plain_client()
            .get(format!("http://{}{path}", self.admin))
            .send()
            .await
            .map_err(|e| format!("GET {path} on the admin server: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp.text().await.map_err(|e| e.to_string())?;
        Ok((status, body))
    }

    /// Polls `check` every [`POLL`] until it returns `Ok`, for at most
    /// [`WAIT`]; panics with the last error and gatewright's log otherwise.
    pub async fn wait<T>(&self, what: &str, check: impl AsyncFnMut() -> Result<T, String>) -> T {
        self.wait_for(what, WAIT, check).await
    }

    pub async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl AsyncFnMut() -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match check().await {
                Ok(v) => return v,
                Err(e) => e,
            };
            self.note_children();
            if Instant::now() >= deadline {
                // The guard prints gatewright's log as the panic unwinds.
                panic!("timed out after {timeout:?} waiting for {what}; last: {last}");
            }
            assert!(
                alive(self.proc.pid()),
                "gatewright exited while waiting for {what}; last: {last}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits for /readyz to answer 200.
    pub async fn wait_ready(&self) {
        self.wait("gatewright /readyz 200", async || {
            match self.admin_get("/readyz").await? {
                (200, _) => Ok(()),
                (s, b) => Err(format!("/readyz answered {s}: {b}")),
            }
        })
        .await;
        self.note_children();
    }

    /// The raw text of an object's status file, "" if not written yet.
    pub fn status_file_text(&self, kind: &str, ns: &str, name: &str) -> String {
        let path = self
            .status_dir
            .join(kind)
            .join(ns)
            .join(format!("{name}.yaml"));
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// The status of an object from its status file; `None` if not written
    /// yet.
    pub fn status_file(&self, kind: &str, ns: &str, name: &str) -> Option<serde_yaml::Value> {
        let path = self
            .status_dir
            .join(kind)
            .join(ns)
            .join(format!("{name}.yaml"));
        let text = std::fs::read_to_string(path).ok()?;
        let v: serde_yaml::Value = serde_yaml::from_str(&text).ok()?;
        // Accept both a bare status and a whole object holding one.
        match v.get("status") {
            Some(s) if s.is_mapping() => Some(s.clone()),
            _ => Some(v),
        }
    }
}

impl Drop for Gatewright {
    fn drop(&mut self) {
        if self.handed_over {
            return;
        }
        self.note_children();
        self.proc.stop();
        let seen = self.seen_children.lock().unwrap_or_else(|e| e.into_inner());
        for (&pid, name) in seen.iter() {
            if alive(pid) && comm(pid) == *name {
                eprintln!("killing leftover gatewright child {pid} ({name})");
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe {
                    libc::kill(libc::pid_t::try_from(pid).unwrap_or(0), libc::SIGKILL);
                }
            }
        }
        if std::thread::panicking() {
            for log in files_under(&self.state_dir)
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
            {
                eprintln!("--- {} (tail) ---\n{}", log.display(), tail(&log, 30));
            }
            eprintln!("--- gatewright log (tail) ---\n{}", self.proc.log_tail(80));
        }
    }
}

// ---------------------------------------------------------------------------
// The Envoy a test's gatewright runs (e2e.rs, chaos.rs).

/// The command line of the one Envoy gatewright runs, once it runs.
pub async fn envoy_cmdline(gw: &Gatewright) -> Result<(u32, Vec<String>), String> {
    let (code, body) = gw.admin_get("/debug/status").await?;
    if code != 200 {
        return Err(format!("/debug/status answered {code}"));
    }
    let status: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("/debug/status: {e}"))?;
    let pids: Vec<u64> = status["envoys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["pid"].as_u64())
        .filter(|&p| p != 0)
        .collect();
    let [pid] = pids[..] else {
        return Err(format!("expected one running Envoy, found pids {pids:?}"));
    };
    let pid = u32::try_from(pid).map_err(|e| e.to_string())?;
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).map_err(|e| e.to_string())?;
    let args = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Ok((pid, args))
}

/// The value after `flag` in `args`.
pub fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let at = args.iter().position(|a| a == flag)?;
    args.get(at + 1).map(String::as_str)
}

pub fn proxy_parameters(spec: &str) -> String {
    format!(
        "apiVersion: gatewright.dev/v1alpha1
kind: ProxyParameters
metadata:
  name: tuned
  namespace: default
spec:
{spec}"
    )
}

/// The one Envoy in /debug/status: (pid, admin address, adopted).
pub async fn envoy_entry(gw: &Gatewright) -> Result<(u32, String, bool), String> {
    let (code, body) = gw.admin_get("/debug/status").await?;
    if code != 200 {
        return Err(format!("/debug/status answered {code}"));
    }
    let status: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("/debug/status: {e}"))?;
    let envoys = status["envoys"].as_array().cloned().unwrap_or_default();
    let [e] = &envoys[..] else {
        return Err(format!("expected one Envoy, found {envoys:?}"));
    };
    let pid = e["pid"].as_u64().filter(|&p| p != 0).ok_or("no pid yet")?;
    let admin = e["admin"].as_str().ok_or("no admin address yet")?;
    Ok((
        u32::try_from(pid).map_err(|e| e.to_string())?,
        admin.to_owned(),
        e["adopted"].as_bool().ok_or("no `adopted` field")?,
    ))
}

// ---------------------------------------------------------------------------
// One test's world: temp dir, echo backends, gatewright, a Gateway address.

/// Everything one end-to-end test runs: a temp dir, its echo backends and
/// one gatewright. Fields drop in order: gatewright first, then backends.
pub struct World {
    pub gw: Gatewright,
    _echoes: BTreeMap<String, Echo>,
    /// This test's Gateway address, 127.77.N.1.
    pub ip: Ipv4Addr,
    /// This test's first listener port; a test may use `port + 0..10`.
    pub port: u16,
    pub dir: TempDir,
}

/// A test's own loopback address and port block, from its number `n`.
pub fn address_block(n: u8) -> (Ipv4Addr, u16) {
    (Ipv4Addr::new(127, 77, n, 1), 20_000 + u16::from(n) * 10)
}

impl World {
    /// Writes the initial `files` into a new config dir, starts the named
    /// echo backends (`"name"`, or `"name"` with TLS when given in
    /// `tls_echoes` with cert and key paths) and gatewright.
    pub fn start(
        envoy: &Path,
        n: u8,
        echoes: &[&str],
        tls_echoes: &[(&str, &Path, &Path)],
        files: impl FnOnce(&WorldInfo) -> Vec<(String, String)>,
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("gatewright-e2e-")
            .tempdir()
            .expect("creating a temp dir");
        let (ip, port) = address_block(n);
        let mut started = BTreeMap::new();
        for name in echoes {
            started.insert(name.to_string(), start_echo(dir.path(), name, None));
        }
        for (name, cert, key) in tls_echoes {
            started.insert(
                name.to_string(),
                start_echo(dir.path(), name, Some((cert, key))),
            );
        }
        let info = WorldInfo {
            ip,
            port,
            echoes: started.iter().map(|(k, e)| (k.clone(), e.addr)).collect(),
        };
        let config = dir.path().join("config");
        std::fs::create_dir_all(&config).expect("creating the config dir");
        for (name, content) in files(&info) {
            std::fs::write(config.join(name), content).expect("writing a config file");
        }
        let gw = Gatewright::start(dir.path(), envoy);
        Self {
            gw,
            _echoes: started,
            ip,
            port,
            dir,
        }
    }

    /// The common shape: one HTTP listener `http` on this test's first
    /// port, `backends` as (Service, echo backend) pairs (the echo backends
    /// are started, one per distinct name), and the route `files`.
    pub fn http(envoy: &Path, n: u8, backends: &[(&str, &str)], files: &[(&str, String)]) -> Self {
        let mut echoes: Vec<&str> = backends.iter().map(|(_, e)| *e).collect();
        echoes.sort_unstable();
        echoes.dedup();
        Self::start(envoy, n, &echoes, &[], |i| {
            let mut all = vec![
                (
                    "gateway.yaml".to_string(),
                    docs(&[
                        gateway_class(),
                        gateway(i.ip, &[http_listener("http", i.port)]),
                    ]),
                ),
                (
                    "backends.yaml".to_string(),
                    docs(
                        &backends
                            .iter()
                            .map(|(svc, echo)| i.backend(svc, echo))
                            .collect::<Vec<_>>(),
                    ),
                ),
            ];
            all.extend(files.iter().map(|(f, c)| (f.to_string(), c.clone())));
            all
        })
    }

    /// The Gateway's socket address for listener port `port`.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), port)
    }

    /// `http://IP:PORT` for this test's first listener port.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr(self.port))
    }
}

impl Drop for World {
    /// Keeps the temp dir (config, logs, statuses) when the test failed or
    /// `GATEWRIGHT_E2E_KEEP` is set, and says where it is.
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("GATEWRIGHT_E2E_KEEP").is_some() {
            self.dir.disable_cleanup(true);
            eprintln!("kept the test's files in {}", self.dir.path().display());
        }
    }
}

/// What file builders need to know about a test's world.
pub struct WorldInfo {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub echoes: BTreeMap<String, SocketAddr>,
}

impl WorldInfo {
    /// Service + EndpointSlice named `service` (namespace default, port
    /// 8080) whose endpoint is the echo backend `echo`.
    pub fn backend(&self, service: &str, echo: &str) -> String {
        service_for(service, "default", self.echoes[echo], None)
    }
}

// ---------------------------------------------------------------------------
// YAML builders.

/// The GatewayClass `gatewright` with our controller name, and Namespace
/// `default`.
pub fn gateway_class() -> String {
    "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: gatewright
spec:
  controllerName: gatewright.dev/gateway-controller
---
apiVersion: v1
kind: Namespace
metadata:
  name: default
  labels:
    kubernetes.io/metadata.name: default
"
    .to_string()
}

/// Gateway `default/gw` bound to `ip`, with the given listeners (each a
/// YAML list item from the `*_listener` builders).
pub fn gateway(ip: Ipv4Addr, listeners: &[String]) -> String {
    let mut y = format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: gw
  namespace: default
spec:
  gatewayClassName: gatewright
  addresses:
  - type: IPAddress
    value: {ip}
  listeners:
"
    );
    for l in listeners {
        y.push_str(l);
    }
    y
}

pub fn http_listener(name: &str, port: u16) -> String {
    format!(
        "  - name: {name}
    port: {port}
    protocol: HTTP
"
    )
}

pub fn https_listener(name: &str, port: u16, hostname: &str, secret: &str) -> String {
    format!(
        "  - name: {name}
    port: {port}
    protocol: HTTPS
    hostname: {hostname}
    tls:
      mode: Terminate
      certificateRefs:
      - kind: Secret
        name: {secret}
"
    )
}

pub fn passthrough_listener(name: &str, port: u16) -> String {
    format!(
        "  - name: {name}
    port: {port}
    protocol: TLS
    tls:
      mode: Passthrough
"
    )
}

/// A Service `ns/name` with port 8080 (named http) and its EndpointSlice
/// whose one ready endpoint is `echo`.
pub fn service_for(name: &str, ns: &str, echo: SocketAddr, app_protocol: Option<&str>) -> String {
    let ip = echo.ip();
    let port = echo.port();
    let app = app_protocol.map_or_else(String::new, |p| format!("    appProtocol: {p}\n"));
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {ns}
spec:
  type: ClusterIP
  selector:
    app: {name}
  ports:
  - name: http
    port: 8080
    targetPort: {port}
    protocol: TCP
{app}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-e2e
  namespace: {ns}
  labels:
    kubernetes.io/service-name: {name}
addressType: IPv4
ports:
- name: http
  port: {port}
  protocol: TCP
endpoints:
- addresses:
  - {ip}
  conditions:
    ready: true
"
    )
}

/// A kubernetes.io/tls Secret `default/name`.
pub fn tls_secret(name: &str, cert_pem: &str, key_pem: &str) -> String {
    format!(
        "apiVersion: v1
kind: Secret
metadata:
  name: {name}
  namespace: default
type: kubernetes.io/tls
data:
  tls.crt: {}
  tls.key: {}
",
        base64(cert_pem.as_bytes()),
        base64(key_pem.as_bytes())
    )
}

/// A route of `kind` (HTTPRoute, GRPCRoute, TLSRoute) `default/name`
/// attached to Gateway `gw`, with `hostnames` and `rules` (YAML list items
/// indented by two, as the rule builders write them).
pub fn route(kind: &str, name: &str, hostnames: &[&str], rules: &str) -> String {
    let mut y = format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: {kind}
metadata:
  name: {name}
  namespace: default
spec:
  parentRefs:
  - name: gw
"
    );
    if !hostnames.is_empty() {
        y.push_str("  hostnames:\n");
        for h in hostnames {
            let _ = writeln!(y, "  - {h}");
        }
    }
    y.push_str("  rules:\n");
    y.push_str(rules);
    y
}

/// An HTTPRoute `default/name` without hostnames.
pub fn http_route(name: &str, rules: &str) -> String {
    route("HTTPRoute", name, &[], rules)
}

/// A rule sending everything to Service `svc` port 8080.
pub fn to_service(svc: &str) -> String {
    format!(
        "  - backendRefs:
    - name: {svc}
      port: 8080
"
    )
}

/// A rule sending path prefix `path` to Service `svc` port 8080, with
/// `filters` (YAML list items indented by four, or "").
pub fn prefix_rule(path: &str, svc: &str, filters: &str) -> String {
    let filters = if filters.is_empty() {
        String::new()
    } else {
        format!("    filters:\n{filters}")
    };
    format!(
        "  - matches:
    - path:
        type: PathPrefix
        value: {path}
{filters}    backendRefs:
    - name: {svc}
      port: 8080
"
    )
}

/// Joins YAML documents into one multi-document file.
pub fn docs(parts: &[String]) -> String {
    let mut out = String::new();
    for p in parts {
        out.push_str("---\n");
        out.push_str(p);
        if !p.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Certificates.

/// A CA and the PEM files of server certificates it signed.
pub struct Pki {
    pub ca_pem: String,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A server certificate and its key, PEM, also written to files.
pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Pki {
    pub fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "gatewright e2e test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("generating the CA key");
        let ca = rcgen::CertifiedIssuer::self_signed(params, key).expect("self-signing the CA");
        Self {
            ca_pem: ca.pem(),
            ca,
        }
    }

    /// A server certificate for `hostname`, written to `dir`.
    pub fn server_cert(&self, dir: &Path, hostname: &str) -> ServerCert {
        let mut params =
            rcgen::CertificateParams::new(vec![hostname.to_string()]).expect("server params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, hostname);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().expect("generating a server key");
        let cert = params
            .signed_by(&key, &self.ca)
            .expect("signing a server cert");
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        let cert_file = dir.join(format!("{hostname}.crt"));
        let key_file = dir.join(format!("{hostname}.key"));
        std::fs::write(&cert_file, &cert_pem).expect("writing a cert file");
        std::fs::write(&key_file, &key_pem).expect("writing a key file");
        ServerCert {
            cert_pem,
            key_pem,
            cert_file,
            key_file,
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP clients.

/// An HTTP client that neither follows redirects nor uses a proxy.
pub fn plain_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .expect("building an HTTP client")
}

/// An HTTPS client trusting only `ca_pem`, resolving `hostname` to `addr`.
pub fn tls_client(ca_pem: &str, hostname: &str, addr: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA pem"))
        .resolve(hostname, addr)
        .build()
        .expect("building an HTTPS client")
}

/// One answer: status, headers, and the body parsed as JSON if it is JSON.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
    pub json: Option<Value>,
}

impl Reply {
    /// The `x-echo-backend` header, or "" if absent.
    pub fn backend(&self) -> &str {
        self.headers
            .get("x-echo-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// A header of the request as the echo backend saw it.
    pub fn echoed_header(&self, name: &str) -> Option<String> {
        self.json
            .as_ref()?
            .get("headers")?
            .get(name)?
            .as_str()
            .map(str::to_string)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn summary(&self) -> String {
        format!(
            "status {} backend {:?} body {}",
            self.status,
            self.backend(),
            self.body.chars().take(300).collect::<String>()
        )
    }
}

/// Sends `req` and collects the reply.
pub async fn send(req: reqwest::RequestBuilder) -> Result<Reply, String> {
    let resp = req
        .send()
        .await
        .map_err(|e| format!("request failed: {e:?}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .text()
        .await
        .map_err(|e| format!("reading body: {e}"))?;
    let json = serde_json::from_str(&body).ok();
    Ok(Reply {
        status,
        headers,
        body,
        json,
    })
}

/// GET `url` with extra headers.
pub async fn get(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req).await
}

/// A check for [`Gatewright::wait`]: `url` answers 200 from echo `backend`.
pub async fn served_by(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
    backend: &str,
) -> Result<Reply, String> {
    let r = get(client, url, headers).await?;
    if r.status == 200 && r.backend() == backend {
        Ok(r)
    } else {
        Err(format!(
            "GET {url}: expected 200 from backend {backend:?}, got {}",
            r.summary()
        ))
    }
}

// ---------------------------------------------------------------------------
// gRPC over HTTP/2 prior knowledge.

/// One gRPC call's outcome.
#[derive(Debug)]
pub struct GrpcReply {
    pub http_status: u16,
    pub headers: HeaderMap,
    pub trailers: Option<HeaderMap>,
    pub body: Bytes,
}

impl GrpcReply {
    /// grpc-status from the trailers, or from the headers (trailers-only).
    pub fn grpc_status(&self) -> Option<String> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| self.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    pub fn backend(&self) -> &str {
        self.headers
            .get("x-echo-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The JSON in the first length-prefixed message of the body.
    pub fn message_json(&self) -> Option<Value> {
        let b = &self.body;
        if b.len() < 5 || b[0] != 0 {
            return None;
        }
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        serde_json::from_slice(b.get(5..5 + len)?).ok()
    }

    pub fn summary(&self) -> String {
        format!(
            "http {} grpc-status {:?} backend {:?} headers {:?} trailers {:?} body {:?}",
            self.http_status,
            self.grpc_status(),
            self.backend(),
            self.headers,
            self.trailers,
            String::from_utf8_lossy(&self.body)
        )
    }
}

/// A unary gRPC call with an empty message to `path` (`/pkg.Service/Method`)
/// over a fresh h2c (prior knowledge) connection to `addr`.
pub async fn grpc_call(addr: SocketAddr, path: &str) -> Result<GrpcReply, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/2 handshake with {addr}: {e}"))?;
    let driver = tokio::spawn(conn);
    let req = hyper::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .map_err(|e| e.to_string())?;
    let result = async {
        let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
            .await
            .map_err(|_| "no answer within 5 s".to_string())?
            .map_err(|e| format!("gRPC request {path}: {e}"))?;
        let (parts, body) = resp.into_parts();
        let collected = tokio::time::timeout(Duration::from_secs(5), body.collect())
            .await
            .map_err(|_| "no body within 5 s".to_string())?
            .map_err(|e| format!("reading the gRPC body: {e}"))?;
        let trailers = collected.trailers().cloned();
        Ok(GrpcReply {
            http_status: parts.status.as_u16(),
            headers: parts.headers,
            trailers,
            body: collected.to_bytes(),
        })
    }
    .await;
    driver.abort();
    result
}

// ---------------------------------------------------------------------------
// Status helpers.

/// The condition `type_` in a status's `conditions` list, as
/// (status, reason).
pub fn condition(status: &serde_yaml::Value, type_: &str) -> Option<(String, String)> {
    let list = status.get("conditions")?.as_sequence()?;
    list.iter()
        .find(|c| c.get("type").and_then(|t| t.as_str()) == Some(type_))
        .map(|c| {
            let s = c.get("status").and_then(|v| v.as_str()).unwrap_or("");
            let r = c.get("reason").and_then(|v| v.as_str()).unwrap_or("");
            (s.to_string(), r.to_string())
        })
}

/// The status of listener `name` in a Gateway status.
pub fn listener_status<'a>(
    status: &'a serde_yaml::Value,
    name: &str,
) -> Option<&'a serde_yaml::Value> {
    status
        .get("listeners")?
        .as_sequence()?
        .iter()
        .find(|l| l.get("name").and_then(|n| n.as_str()) == Some(name))
}

/// Renders a short description of a YAML value for messages.
pub fn yaml_summary(v: &serde_yaml::Value) -> String {
    let mut s = serde_yaml::to_string(v).unwrap_or_default();
    if s.len() > 2000 {
        s.truncate(2000);
        let _ = write!(s, "…");
    }
    s
}

/// At most `n` characters of `s`, for messages.
pub fn clip(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

// ---------------------------------------------------------------------------
// Upstream TLS (control-plane/tests/backend_tls.rs).

/// Starts `gatewright-echo --name NAME` on 127.0.0.1 with `args` added
/// (TLS and client-certificate options) and waits for its `listening on`
/// line.
pub fn start_echo_with(dir: &Path, name: &str, args: &[&std::ffi::OsStr]) -> Echo {
    let log = dir.join(format!("echo-{name}.log"));
    let stderr = std::fs::File::create(&log).expect("creating the echo log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gatewright-echo"));
    cmd.args(["--listen", "127.0.0.1:0", "--name", name])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    die_with_parent(&mut cmd, libc::SIGKILL);
    let mut child = cmd.spawn().expect("starting gatewright-echo");
    let stdout = child.stdout.take().expect("echo stdout");
    let proc = Proc {
        child: Some(child),
        name: format!("gatewright-echo {name}"),
        log,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("gatewright-echo {name} printed nothing within 10 s"));
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "gatewright-echo {name}: expected `listening on IP:PORT`, got {line:?}; log:\n{}",
                proc.log_tail(20)
            )
        });
    Echo { _proc: proc, addr }
}

#[allow(dead_code)] // used by backend_tls.rs, not by e2e.rs
impl Pki {
    /// A server certificate with CN `cn` and exactly the DNS SANs `dns`
    /// and URI SANs `uris`, written to `dir` as `<file>.crt`/`<file>.key`.
    pub fn server_cert_with_sans(
        &self,
        dir: &Path,
        file: &str,
        cn: &str,
        dns: &[&str],
        uris: &[&str],
    ) -> ServerCert {
        let mut params =
            rcgen::CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>())
                .expect("server params");
        for uri in uris {
            params.subject_alt_names.push(rcgen::SanType::URI(
                rcgen::string::Ia5String::try_from(uri.to_string()).expect("an ASCII URI"),
            ));
        }
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, dir, file)
    }

    /// A client certificate with CN `cn`, written to `dir` as
    /// `<cn>.crt`/`<cn>.key`.
    pub fn client_cert(&self, dir: &Path, cn: &str) -> ServerCert {
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("client params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, dir, cn)
    }

    fn sign(&self, params: rcgen::CertificateParams, dir: &Path, file: &str) -> ServerCert {
        let key = rcgen::KeyPair::generate().expect("generating a key");
        let cert = params.signed_by(&key, &self.ca).expect("signing a cert");
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        let cert_file = dir.join(format!("{file}.crt"));
        let key_file = dir.join(format!("{file}.key"));
        std::fs::write(&cert_file, &cert_pem).expect("writing a cert file");
        std::fs::write(&key_file, &key_pem).expect("writing a key file");
        ServerCert {
            cert_pem,
            key_pem,
            cert_file,
            key_file,
        }
    }
}

/// The conditions of the `status.ancestors[]` entry for Gateway `gateway`
/// in a policy status, as a status holding just that list (so
/// [`condition`] reads it).
#[allow(dead_code)] // used by backend_tls.rs, not by e2e.rs
pub fn ancestor_status(status: &serde_yaml::Value, gateway: &str) -> Option<serde_yaml::Value> {
    status
        .get("ancestors")?
        .as_sequence()?
        .iter()
        .find(|a| {
            a.get("ancestorRef")
                .and_then(|r| r.get("name"))
                .and_then(|n| n.as_str())
                == Some(gateway)
        })
        .cloned()
}

// ---------------------------------------------------------------------------
// TLS as a client sees it.

/// The DER of the end-entity certificate `addr` serves for SNI `sni`,
/// verified against `ca_pem`.
pub async fn served_certificate(
    addr: SocketAddr,
    sni: &str,
    ca_pem: &str,
) -> Result<Vec<u8>, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(ca.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let name = ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
    let tls = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        connector.connect(name, tcp),
    )
    .await
    .map_err(|_| "TLS handshake timed out".to_owned())?
    .map_err(|e| format!("TLS handshake: {e}"))?;
    let (_, session) = tls.get_ref();
    session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .ok_or_else(|| "no peer certificate".to_owned())
}

pub fn pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("certificate PEM")
        .as_ref()
        .to_vec()
}
