//! Per-pod network namespaces on the bridge, driven by the `ip` command.

use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use tokio::process::Command;

/// Prefix of every pod network namespace this agent creates.
pub const NS_PREFIX: &str = "gwrp-";

/// The short id of a pod UID: its first 8 hex digits.
pub fn short_uid(uid: &str) -> String {
    uid.chars()
        .filter(|c| c.is_ascii_hexdigit())
        .take(8)
        .collect::<String>()
        .to_lowercase()
}

/// The network namespace name of a pod.
pub fn ns_name(uid: &str) -> String {
    format!("{NS_PREFIX}{}", short_uid(uid))
}

/// The host-side veth name of a pod namespace (at most 15 bytes).
pub fn host_veth(ns: &str) -> String {
    format!("gwrv{}", ns.trim_start_matches(NS_PREFIX))
}

/// Runs `ip` with `args`, failing with its stderr.
pub async fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Creates namespace `ns` with `eth0` = `addr/prefix` on `bridge`, lo up and
/// a default route via `gateway`. Leftovers of an earlier run are removed first.
pub async fn setup(
    ns: &str,
    bridge: &str,
    addr: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
) -> Result<()> {
    teardown(ns).await;
    let veth = host_veth(ns);
    let cidr = format!("{addr}/{prefix}");
    let gw = gateway.to_string();
    ip(&["netns", "add", ns]).await?;
    ip(&[
        "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
    ])
    .await?;
    ip(&["link", "set", &veth, "master", bridge]).await?;
    ip(&["link", "set", &veth, "up"]).await?;
    ip(&["-n", ns, "link", "set", "lo", "up"]).await?;
    ip(&["-n", ns, "addr", "add", &cidr, "dev", "eth0"]).await?;
    ip(&["-n", ns, "link", "set", "eth0", "up"]).await?;
    ip(&["-n", ns, "route", "add", "default", "via", &gw]).await?;
    Ok(())
}

/// Kills what still runs in `ns`, removes its veth and the namespace; errors
/// are logged, not returned (it may be half there).
pub async fn teardown(ns: &str) {
    for pid in pids(ns).await {
        // SAFETY: kill(2) with a pid we just read; no memory is involved.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let veth = host_veth(ns);
    if let Err(e) = ip(&["link", "del", &veth]).await {
        tracing::debug!("{e:#}");
    }
    if let Err(e) = ip(&["netns", "del", ns]).await {
        tracing::debug!("{e:#}");
    }
}

/// PIDs of processes inside `ns`.
pub async fn pids(ns: &str) -> Vec<i32> {
    match ip(&["netns", "pids", ns]).await {
        Ok(out) => out.lines().filter_map(|l| l.trim().parse().ok()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Names of existing pod namespaces.
pub async fn list() -> Result<Vec<String>> {
    let out = ip(&["netns", "list"]).await?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(NS_PREFIX))
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let ns = ns_name("3F2504E0-4F89-11D3-9A0C-0305E82C3301");
        assert_eq!(ns, "gwrp-3f2504e0");
        assert_eq!(host_veth(&ns), "gwrv3f2504e0");
        assert!(host_veth(&ns).len() <= 15);
    }
}
