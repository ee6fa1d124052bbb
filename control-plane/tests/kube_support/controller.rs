//! `gatewright controller` processes against the test cluster.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::cluster::{kill_group, own_group_and_die_with_parent};

/// Where the Gateways' Envoys run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Infra {
    /// Envoy child processes on loopback.
    Host,
    /// A ServiceAccount, ConfigMap, Deployment and Service per Gateway.
    Kubernetes,
}

/// How to start one controller.
pub struct ControllerSpec {
    /// Short label, for the log file name and messages.
    pub label: String,
    pub kubeconfig: PathBuf,
    pub infrastructure: Infra,
    /// Lease and xDS CA Secret namespace (must exist).
    pub namespace: String,
    /// Leader-election identity.
    pub identity: String,
    pub controller_name: String,
    pub lease_seconds: u32,
    /// More flags.
    pub extra_args: Vec<String>,
}

/// The image the Kubernetes infrastructure puts in Deployments (no pod
/// runs here: there is no kubelet).
pub const ENVOY_IMAGE: &str = "envoyproxy/envoy:v1.40.0";

/// A running `gatewright controller`, stopped (its process group) when
/// dropped; its log is printed when it drops during a panic.
pub struct Controller {
    child: Option<Child>,
    pub label: String,
    pub identity: String,
    pub log: PathBuf,
    pub state_dir: PathBuf,
    pub admin: SocketAddr,
    pub started: Instant,
}

impl Controller {
    /// Starts the controller in `dir/<label>/` and waits (30 s) until it has
    /// written its admin address.
    pub fn start(dir: &Path, spec: ControllerSpec) -> Self {
        let root = dir.join(&spec.label);
        let state_dir = root.join("state");
        std::fs::create_dir_all(&state_dir).expect("creating a controller state dir");
        let log = root.join("controller.log");
        let out = std::fs::File::create(&log).expect("creating a controller log");
        let err = out.try_clone().expect("cloning a file handle");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gatewright"));
        cmd.arg("controller")
            .arg("--kubeconfig")
            .arg(&spec.kubeconfig)
            .arg("--infrastructure")
            .arg(match spec.infrastructure {
                Infra::Host => "host",
                Infra::Kubernetes => "kubernetes",
            })
            .args(["--namespace", &spec.namespace])
            .args(["--identity", &spec.identity])
            .args(["--lease-name", "gatewright-controller"])
            .args(["--lease-seconds", &spec.lease_seconds.to_string()])
            .args(["--xds-address", "127.0.0.1:0"])
            .args(["--admin-address", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["--controller-name", &spec.controller_name]);
        match spec.infrastructure {
            Infra::Host => {
                cmd.arg("--envoy").arg(super::envoy_binary());
            }
            Infra::Kubernetes => {
                cmd.args(["--xds-service", "gatewright-xds"])
                    .args(["--envoy-image", ENVOY_IMAGE]);
            }
        }
        cmd.args(&spec.extra_args)
            .env_remove("KUBECONFIG")
            .env_remove("POD_NAMESPACE")
            .env_remove("POD_NAME")
            .env_remove("POD_UID")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SIGTERM, so that a host-infrastructure controller stops its Envoys.
        own_group_and_die_with_parent(&mut cmd, libc::SIGTERM);
        let child = cmd.spawn().expect("starting gatewright controller");
        let mut c = Self {
            child: Some(child),
            label: spec.label,
            identity: spec.identity,
            log,
            state_dir,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            started: Instant::now(),
        };
        let admin_file = c.state_dir.join("admin-address");
        let deadline = Instant::now() + Duration::from_secs(30);
        c.admin = loop {
            if let Some(addr) = std::fs::read_to_string(&admin_file)
                .ok()
                .and_then(|s| s.trim().parse::<SocketAddr>().ok())
            {
                break addr;
            }
            assert!(
                !c.has_exited(),
                "controller {} exited before writing {}",
                c.label,
                admin_file.display()
            );
            assert!(
                Instant::now() < deadline,
                "controller {} did not write {} within 30 s",
                c.label,
                admin_file.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        c
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends `signal` to the controller's pid only.
    pub fn signal(&self, signal: libc::c_int) {
        if let Ok(pid) = libc::pid_t::try_from(self.pid())
            && pid > 1
            && self.child.is_some()
        {
            // SAFETY: kill(2) on our own (unreaped) child.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    /// Whether the process has exited (reaps it if so).
    pub fn has_exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// The whole log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET on the admin server: (HTTP status, body).
    pub async fn admin_get(&self, path: &str) -> Result<(u16, String), String> {
        let resp = reqwest::Client::new()
            .get(format!("http://{}{path}", self.admin))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| format!("GET {path} on {}'s admin server: {e}", self.label))?;
        let status = resp.status().as_u16();
        let body = resp.text().await.map_err(|e| e.to_string())?;
        Ok((status, body))
    }

    /// `/debug/status` as JSON.
    pub async fn debug_status(&self) -> Result<Value, String> {
        match self.admin_get("/debug/status").await? {
            (200, body) => serde_json::from_str(&body)
                .map_err(|e| format!("{}'s /debug/status is not JSON: {e}", self.label)),
            (s, body) => Err(format!(
                "{}'s /debug/status answered {s}: {}",
                self.label,
                super::clip(&body, 300)
            )),
        }
    }

    /// The `leader` field of `/debug/status`.
    pub async fn is_leader(&self) -> Result<bool, String> {
        let status = self.debug_status().await?;
        status["leader"].as_bool().ok_or_else(|| {
            format!(
                "{}'s /debug/status has no boolean `leader`: {}",
                self.label,
                super::clip(&status.to_string(), 300)
            )
        })
    }

    /// Stops the controller: SIGTERM to its process group, up to 5 s, then
    /// SIGKILL.
    pub fn stop(&mut self) {
        let pid = self.pid();
        if self.child.is_none() {
            return;
        }
        if !self.has_exited() {
            kill_group(pid, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while !self.has_exited() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // The controller itself, and anything left in its group (Envoys).
        kill_group(pid, libc::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- controller {} (pid {}) log, {}:\n{}\n----- end of controller {} log",
                self.label,
                self.pid(),
                self.log.display(),
                super::tail(&self.log, 300),
                self.label
            );
        }
        self.stop();
    }
}
