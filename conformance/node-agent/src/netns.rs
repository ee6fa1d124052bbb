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

/// The MAC address of a pod's `eth0`, derived from its IP (`0a:58` and the
/// four address bytes, locally administered, as OVN-Kubernetes does). An IP
/// released by a deleted pod and given to a new one keeps its MAC, so
/// neighbours that still cache the old entry (the other pods, gwr-conf)
/// reach the new pod at once: with random MACs, their packets went to the
/// gone veth until the stale entry was probed again, seconds later, and
/// connections to the reused address hung meanwhile.
pub fn pod_mac(addr: Ipv4Addr) -> String {
    let [a, b, c, d] = addr.octets();
    format!("0a:58:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
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
    let mac = pod_mac(addr);
    ip(&["netns", "add", ns]).await?;
    ip(&[
        "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "address", &mac, "netns", ns,
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

    #[test]
    fn mac_follows_the_ip() {
        assert_eq!(pod_mac(Ipv4Addr::new(10, 244, 0, 10)), "0a:58:0a:f4:00:0a");
        assert_eq!(pod_mac(Ipv4Addr::new(10, 244, 1, 255)), "0a:58:0a:f4:01:ff");
    }
}
