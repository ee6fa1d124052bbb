//! The harness of the Kubernetes-mode tests (`tests/kubernetes.rs`): a real
//! etcd, kube-apiserver and kube-controller-manager on 127.0.0.1 (random
//! ports, a temp dir, no network namespace), started once per test binary
//! and shared by its tests, with the Gateway API and Gatewright CRDs
//! installed; a dynamic client; and `gatewright controller` processes whose
//! logs are printed when a test fails.
//!
//! The Kubernetes binaries come from `$GATEWRIGHT_K8S_BIN`, else
//! `.tools/k8s/bin` (`bash conformance/cluster.sh build`); without them
//! every test fails saying so. Every process started here is killed by pid
//! (its process group) when its guard drops or the test binary exits, and
//! by the kernel (parent-death signal) if the test binary is killed. Every
//! wait is bounded.

#![allow(dead_code)]

pub mod cluster;
pub mod controller;
pub mod crds;
pub mod fixtures;
pub mod objects;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use cluster::{Cluster, repo_root};
pub use controller::{Controller, ControllerSpec, Infra};
pub use fixtures::*;
pub use objects::{Kube, clip, kube_error, yaml_docs};

/// How often waits poll.
pub const POLL: Duration = Duration::from_millis(100);

/// The last `lines` lines of a file ("" if it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
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
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Polls `check` every [`POLL`] until it returns `Ok`, for at most
/// `timeout`; panics with `what` and the last error otherwise (controller
/// guards print their logs as the panic unwinds).
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        let last = match check().await {
            Ok(v) => return v,
            Err(e) => e,
        };
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for {what}; last: {last}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A temp dir of one test, kept (and its path printed) if the test fails.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    pub path: PathBuf,
}

impl TestDir {
    pub fn new(test: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("gatewright-{test}-"))
            .tempdir()
            .expect("creating a test temp dir");
        let path = dir.path().to_path_buf();
        Self {
            dir: Some(dir),
            path,
        }
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(d) = self.dir.take()
        {
            eprintln!("kept the failed test's files in {}", d.keep().display());
        }
    }
}

/// The Envoy binary (the workspace's one lookup); fails the test without one.
pub use gatewright_testkit::envoy as envoy_binary;

// ---------------------------------------------------------------------------
// Reading status.

/// The condition of type `type_` in a `conditions` array.
pub fn condition<'a>(conditions: &'a Value, type_: &str) -> Option<&'a Value> {
    conditions.as_array()?.iter().find(|c| c["type"] == type_)
}

/// Checks that condition `type_` of `conditions` has `status` (and
/// `reason`, if given) and `observedGeneration == generation`.
pub fn expect_condition(
    conditions: &Value,
    type_: &str,
    status: &str,
    reason: Option<&str>,
    generation: &Value,
) -> Result<(), String> {
    let c = condition(conditions, type_).ok_or_else(|| {
        format!(
            "no {type_} condition in {}",
            clip(&conditions.to_string(), 600)
        )
    })?;
    if c["status"] != status {
        return Err(format!("{type_} is {}, want {status}: {c}", c["status"]));
    }
    if let Some(r) = reason
        && c["reason"] != r
    {
        return Err(format!("{type_} reason is {}, want {r}: {c}", c["reason"]));
    }
    if &c["observedGeneration"] != generation {
        return Err(format!(
            "{type_} observedGeneration is {}, want metadata.generation {generation}: {c}",
            c["observedGeneration"]
        ));
    }
    Ok(())
}

/// The `status.parents` entry of a route written by `controller` for the
/// Gateway `gateway`.
pub fn route_parent<'a>(route: &'a Value, controller: &str, gateway: &str) -> Option<&'a Value> {
    route["status"]["parents"]
        .as_array()?
        .iter()
        .find(|p| p["controllerName"] == controller && p["parentRef"]["name"] == gateway)
}

/// The status entry of listener `name` of a Gateway.
pub fn listener_status<'a>(gateway: &'a Value, name: &str) -> Option<&'a Value> {
    gateway["status"]["listeners"]
        .as_array()?
        .iter()
        .find(|l| l["name"] == name)
}
