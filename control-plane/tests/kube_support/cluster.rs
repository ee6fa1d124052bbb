//! A throwaway Kubernetes control plane on loopback: etcd, kube-apiserver and
//! kube-controller-manager, started once per test binary and shared by its
//! tests.
//!
//! The processes are started from a thread of their own that lives as long
//! as the test binary, each in a process group of its own and with
//! `PR_SET_PDEATHSIG` set to SIGKILL, so the kernel kills them when the test
//! binary dies, however it dies. On a normal exit an `atexit` handler kills
//! them by pid and removes the temp dir (kept with
//! `GATEWRIGHT_KEEP_TEST_DIR=1`).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::objects::Kube;

/// The address the API server advertises (TEST-NET-1: nothing is there; the
/// `kubernetes` Service's endpoints are not reconciled).
const ADVERTISE_ADDRESS: &str = "192.0.2.1";
/// Where Service ClusterIPs come from.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// kube-controller-manager runs only what the tests need: garbage collection
/// of owned objects, namespace deletion and default ServiceAccounts.
const KCM_CONTROLLERS: &str =
    "garbage-collector-controller,namespace-controller,serviceaccount-controller";
/// The field manager of everything the tests apply.
pub const FIELD_MANAGER: &str = "gatewright-tests";

/// The folder with etcd, kube-apiserver and kube-controller-manager:
/// `$GATEWRIGHT_K8S_BIN`, else `.tools/k8s/bin` of the workspace.
pub fn k8s_bin_dir() -> PathBuf {
    match std::env::var_os("GATEWRIGHT_K8S_BIN").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => repo_root().join(".tools/k8s/bin"),
    }
}

/// The workspace root.
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The running control plane.
pub struct Cluster {
    /// The temp dir everything lives in.
    pub dir: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    /// The CA that signed the API server's serving certificate, PEM.
    pub ca_pem: String,
    /// A bearer token of user `admin` in group `system:masters`.
    pub token: String,
    /// A kubeconfig with that token.
    pub kubeconfig: PathBuf,
    /// How long each start-up step took.
    pub timings: Vec<(&'static str, Duration)>,
}

impl Cluster {
    /// The shared cluster, started by the first caller; every caller gets
    /// the same one. Panics (fails the test) with the reason when it cannot
    /// be started, e.g. when the binaries are missing.
    pub fn shared() -> &'static Cluster {
        static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
        match CLUSTER.get_or_init(start_on_own_thread) {
            Ok(c) => c,
            Err(e) => panic!("the test Kubernetes control plane is not available: {e}"),
        }
    }

    /// Total start-up time.
    pub fn startup(&self) -> Duration {
        self.timings.iter().map(|(_, d)| *d).sum()
    }

    /// A one-line summary of the start-up timings.
    pub fn timings_summary(&self) -> String {
        let parts: Vec<String> = self
            .timings
            .iter()
            .map(|(what, d)| format!("{what} {:.2} s", d.as_secs_f64()))
            .collect();
        format!(
            "{:.2} s ({})",
            self.startup().as_secs_f64(),
            parts.join(", ")
        )
    }

    /// A new client with the admin token. Make one per test: a client
    /// belongs to the tokio runtime it was made on.
    pub async fn kube(&self) -> Kube {
        Kube::from_kubeconfig(&self.kubeconfig)
            .await
            .unwrap_or_else(|e| panic!("making a client for the test cluster: {e}"))
    }

    /// Writes a kubeconfig that authenticates as admin but acts as `user`
    /// (with `groups`, if any), and returns its path.
    pub fn impersonating_kubeconfig(&self, path: &Path, user: &str, groups: &[&str]) -> PathBuf {
        let mut extra = format!("    as: \"{user}\"\n");
        if !groups.is_empty() {
            extra.push_str("    as-groups:\n");
            for g in groups {
                extra.push_str(&format!("    - \"{g}\"\n"));
            }
        }
        std::fs::write(
            path,
            kubeconfig_text(&self.server, &self.ca_pem, &self.token, &extra),
        )
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path.to_path_buf()
    }

    /// The last `lines` lines of a component's log (`etcd`,
    /// `kube-apiserver`, `kube-controller-manager`).
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        super::tail(&self.dir.join(format!("{component}.log")), lines)
    }
}

fn kubeconfig_text(server: &str, ca_pem: &str, token: &str, user_extra: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: admin
  user:
    token: {token}
{user_extra}contexts:
- name: test
  context:
    cluster: test
    user: admin
current-context: test
",
        ca = super::base64(ca_pem.as_bytes()),
    )
}

// ---------------------------------------------------------------------------
// Process bookkeeping and clean-up at exit.

/// Pids of the components, killed at exit.
static PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// The temp dir, removed at exit.
static DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

extern "C" fn cleanup_at_exit() {
    let pids: Vec<u32> = PIDS.lock().map(|p| p.clone()).unwrap_or_default();
    for pid in pids.iter().rev() {
        kill_group(*pid, libc::SIGKILL);
    }
    for pid in &pids {
        if let Ok(pid) = libc::pid_t::try_from(*pid) {
            // SAFETY: waitpid(2) on our own child; a null status pointer is
            // allowed.
            unsafe {
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
    }
    let keep = std::env::var_os("GATEWRIGHT_KEEP_TEST_DIR").is_some_and(|v| v == "1");
    if let Ok(Some(dir)) = DIR.lock().map(|d| d.clone()) {
        if keep {
            eprintln!("kube harness: kept {}", dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// Sends `signal` to the process group led by `pid` (every process started
/// here leads a group of its own; the kernel never hands out a pid that is
/// still some group's id).
pub fn kill_group(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 1 {
        return;
    }
    // SAFETY: kill(2) has no memory-safety preconditions; the group is one
    // we made.
    unsafe {
        libc::kill(-pid, signal);
    }
}

/// Makes `cmd` start in a process group of its own, and get `signal` when
/// the thread that started it ends (also when the test binary is killed).
pub fn own_group_and_die_with_parent(cmd: &mut Command, signal: libc::c_int) {
    use std::os::unix::process::CommandExt as _;
    cmd.process_group(0);
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

// ---------------------------------------------------------------------------
// Start-up.

/// Starts the cluster on a thread that then parks for the rest of the run
/// (the components' parent-death signal is tied to it).
fn start_on_own_thread() -> Result<Cluster, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("kube-cluster".into())
        .spawn(move || {
            let result = start_with_retries();
            let _ = tx.send(result);
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| format!("spawning the cluster thread: {e}"))?;
    rx.recv()
        .map_err(|_| "the cluster thread died while starting the cluster".to_string())?
}

fn start_with_retries() -> Result<Cluster, String> {
    let bin = k8s_bin_dir();
    let missing: Vec<String> = ["etcd", "kube-apiserver", "kube-controller-manager"]
        .iter()
        .filter(|b| !bin.join(b).is_file())
        .map(|b| bin.join(b).display().to_string())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "missing {}; run `bash conformance/cluster.sh build` (builds them into \
             .tools/k8s/bin; needs Go) or point GATEWRIGHT_K8S_BIN at a folder with etcd, \
             kube-apiserver and kube-controller-manager v1.35",
            missing.join(", ")
        ));
    }
    // SAFETY: registering a plain extern "C" function with atexit(3).
    if unsafe { libc::atexit(cleanup_at_exit) } != 0 {
        return Err("atexit failed".into());
    }
    let mut errors = Vec::new();
    // A free port found by binding :0 may be taken by someone else before
    // the component binds it: try again with other ports.
    for attempt in 1..=3 {
        let dir = tempfile::Builder::new()
            .prefix("gatewright-kube-")
            .tempdir()
            .map_err(|e| format!("creating a temp dir: {e}"))?
            .keep();
        if let Ok(mut d) = DIR.lock() {
            if let Some(old) = d.take() {
                let _ = std::fs::remove_dir_all(old);
            }
            *d = Some(dir.clone());
        }
        match start(&bin, &dir) {
            Ok(c) => return Ok(c),
            Err(e) => {
                errors.push(format!("attempt {attempt}: {e}"));
                let pids: Vec<u32> = PIDS
                    .lock()
                    .map(|mut p| std::mem::take(&mut *p))
                    .unwrap_or_default();
                for pid in pids {
                    kill_group(pid, libc::SIGKILL);
                }
            }
        }
    }
    Err(errors.join("\n"))
}

/// A component started by [`spawn`]; the child handle is kept so that it
/// is reaped, the pid is in [`PIDS`].
struct Component {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Component {
    fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited ({status}); last lines of its log:\n{}",
                self.name,
                super::tail(&self.log, 30)
            )),
            Err(e) => Err(format!("waiting for {}: {e}", self.name)),
        }
    }
}

fn spawn(bin: &Path, dir: &Path, name: &'static str, args: &[String]) -> Result<Component, String> {
    let log = dir.join(format!("{name}.log"));
    let out =
        std::fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("cloning a file handle: {e}"))?;
    let mut cmd = Command::new(bin.join(name));
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    own_group_and_die_with_parent(&mut cmd, libc::SIGKILL);
    let child = cmd
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.join(name).display()))?;
    if let Ok(mut p) = PIDS.lock() {
        p.push(child.id());
    }
    Ok(Component { name, child, log })
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

/// A plain HTTP GET on loopback: whether it answered 200.
fn http_ok(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200")
}

fn random_hex(bytes: usize) -> Result<String, String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Key material: a CA, the API server's serving certificate (for
/// 127.0.0.1 and localhost), the service-account signing key, the token file.
struct Pki {
    ca_pem: String,
    token: String,
}

fn make_pki(dir: &Path) -> Result<Pki, String> {
    let e = |what: &str| {
        let what = what.to_string();
        move |err: rcgen::Error| format!("{what}: {err}")
    };
    let mut ca_params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e("CA params"))?;
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "gatewright kube test CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = rcgen::KeyPair::generate().map_err(e("CA key"))?;
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(e("CA"))?;

    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .map_err(e("serving cert params"))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kube-apiserver");
    params.subject_alt_names.push(rcgen::SanType::IpAddress(
        std::net::Ipv4Addr::LOCALHOST.into(),
    ));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().map_err(e("serving key"))?;
    let cert = params.signed_by(&key, &ca).map_err(e("serving cert"))?;
    write(&dir.join("pki/apiserver.crt"), &cert.pem())?;
    write(&dir.join("pki/apiserver.key"), &key.serialize_pem())?;
    write(&dir.join("pki/ca.crt"), &ca.pem())?;

    // ECDSA P-256, PKCS#8: kube-apiserver signs service-account tokens with
    // it (ES256).
    let sa = rcgen::KeyPair::generate().map_err(e("service-account key"))?;
    write(&dir.join("pki/sa.key"), &sa.serialize_pem())?;
    write(&dir.join("pki/sa.pub"), &sa.public_key_pem())?;

    let token = random_hex(24)?;
    write(
        &dir.join("pki/tokens.csv"),
        &format!("{token},admin,admin,\"system:masters\"\n"),
    )?;
    Ok(Pki {
        ca_pem: ca.pem(),
        token,
    })
}

fn start(bin: &Path, dir: &Path) -> Result<Cluster, String> {
    let mut timings = Vec::new();
    let t = Instant::now();
    std::fs::create_dir_all(dir.join("pki")).map_err(|e| format!("creating pki dir: {e}"))?;
    let pki = make_pki(dir)?;
    let p = |name: &str| dir.join(name).display().to_string();

    // etcd.
    let (client_port, peer_port) = (free_port()?, free_port()?);
    let etcd_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let mut etcd = spawn(
        bin,
        dir,
        "etcd",
        &[
            "--name=test".into(),
            format!("--data-dir={}", p("etcd")),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=test={peer_url}"),
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ],
    )?;
    let etcd_addr: SocketAddr = ([127, 0, 0, 1], client_port).into();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http_ok(etcd_addr, "/health") {
        etcd.check_alive()?;
        if Instant::now() > deadline {
            return Err(format!(
                "etcd not healthy within 30 s; log:\n{}",
                super::tail(&etcd.log, 30)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    timings.push(("etcd", t.elapsed()));

    // kube-apiserver.
    let t = Instant::now();
    let api_port = free_port()?;
    let server = format!("https://127.0.0.1:{api_port}");
    let mut apiserver = spawn(
        bin,
        dir,
        "kube-apiserver",
        &[
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            format!("--advertise-address={ADVERTISE_ADDRESS}"),
            "--endpoint-reconciler-type=none".into(),
            format!("--cert-dir={}", p("pki/generated")),
            format!("--tls-cert-file={}", p("pki/apiserver.crt")),
            format!("--tls-private-key-file={}", p("pki/apiserver.key")),
            "--authorization-mode=RBAC".into(),
            format!("--token-auth-file={}", p("pki/tokens.csv")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", p("pki/sa.pub")),
            format!("--service-account-signing-key-file={}", p("pki/sa.key")),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--profiling=false".into(),
            "--v=1".into(),
        ],
    )?;
    let kubeconfig = dir.join("kubeconfig");
    write(
        &kubeconfig,
        &kubeconfig_text(&server, &pki.ca_pem, &pki.token, ""),
    )?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("building a tokio runtime: {e}"))?;
    let crd_timing = rt.block_on(async {
        let kube = Kube::from_kubeconfig(&kubeconfig).await?;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let last = match kube.readyz().await {
                Ok(()) => break,
                Err(e) => e,
            };
            apiserver.check_alive()?;
            if Instant::now() > deadline {
                return Err(format!(
                    "kube-apiserver not ready within 90 s (last: {last}); log:\n{}",
                    super::tail(&apiserver.log, 30)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        timings.push(("kube-apiserver", t.elapsed()));
        // CRDs before kube-controller-manager, so that its garbage
        // collector knows the Gateway API kinds from its first discovery.
        let t = Instant::now();
        super::crds::install(&kube).await?;
        Ok::<_, String>(t.elapsed())
    })?;
    timings.push(("CRDs", crd_timing));

    // kube-controller-manager, with the admin credentials.
    let t = Instant::now();
    let mut kcm = spawn(
        bin,
        dir,
        "kube-controller-manager",
        &[
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--controllers={KCM_CONTROLLERS}"),
            "--use-service-account-credentials=false".into(),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            "--secure-port=0".into(),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--profiling=false".into(),
            "--v=1".into(),
        ],
    )?;
    rt.block_on(async {
        let kube = Kube::from_kubeconfig(&kubeconfig).await?;
        // The serviceaccount controller makes `default` in every namespace.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if kube
                .get("v1", "ServiceAccount", Some("default"), "default")
                .await?
                .is_some()
            {
                return Ok::<_, String>(());
            }
            kcm.check_alive()?;
            etcd.check_alive()?;
            apiserver.check_alive()?;
            if Instant::now() > deadline {
                return Err(format!(
                    "kube-controller-manager made no default ServiceAccount within 60 s; log:\n{}",
                    super::tail(&kcm.log, 30)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })?;
    timings.push(("kube-controller-manager", t.elapsed()));
    // The children stay owned by this thread for the rest of the run (they
    // are killed and reaped at exit).
    std::mem::forget(etcd);
    std::mem::forget(apiserver);
    std::mem::forget(kcm);
    Ok(Cluster {
        dir: dir.to_path_buf(),
        server,
        ca_pem: pki.ca_pem,
        token: pki.token,
        kubeconfig,
        timings,
    })
}
