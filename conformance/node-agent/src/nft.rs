//! The nftables ruleset that routes Service addresses (ClusterIPs and
//! LoadBalancer IPs) to endpoints, rendered as text for `nft -f -`.
//!
//! Rendering is pure (a model in, text out) so it can be unit-tested; the
//! whole table is deleted and rebuilt in one `nft -f` transaction, so
//! packets never see a half-applied ruleset.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{Context, Result, bail};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::ipam::Cidr;

/// Name of the nftables table (family `ip`) the agent owns.
pub const TABLE: &str = "gwr-svc";

/// L4 protocol of a Service port we route (SCTP is ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// Parses a Kubernetes protocol name; `None` for SCTP and unknown ones.
    pub fn from_k8s(p: Option<&str>) -> Option<Self> {
        match p.unwrap_or("TCP") {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            _ => None,
        }
    }

    /// The nftables keyword.
    pub fn nft(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One Service port: every virtual address it is reachable at, and where it
/// goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualPort {
    /// `namespace/name:port-name`, for comments and logs.
    pub label: String,
    /// The ClusterIP and any LoadBalancer IPs.
    pub vips: Vec<Ipv4Addr>,
    /// Protocol of the port.
    pub proto: Proto,
    /// The Service port.
    pub port: u16,
    /// Ready endpoints (address and target port); empty means reject.
    pub endpoints: Vec<SocketAddrV4>,
}

/// Addresses the ruleset needs beyond the Services themselves.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// The node IP: DNATed traffic leaving over the bridge is SNATed to it.
    pub node_ip: Ipv4Addr,
    /// The bridge pods sit on.
    pub bridge: String,
    /// The Service CIDR (ClusterIPs).
    pub service_cidr: Cidr,
    /// The LoadBalancer pool.
    pub lb_pool: Cidr,
}

/// Keeps what goes into an nft comment harmless (names are DNS labels
/// anyway, but nothing from the API is trusted).
fn comment(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-./:_".contains(*c))
        .take(120)
        .collect()
}

/// Renders the whole table. Deterministic: the same input gives the same
/// text, so the caller can skip applying an unchanged ruleset.
pub fn render(cfg: &NetConfig, ports: &[VirtualPort]) -> String {
    let ranges = format!("{{ {}, {} }}", cfg.service_cidr, cfg.lb_pool);
    let mut s = String::new();
    // Creating the table first makes the delete succeed on the first run.
    let _ = writeln!(s, "table ip {TABLE} {{\n}}\ndelete table ip {TABLE}");
    let _ = writeln!(s, "table ip {TABLE} {{");
    // Numeric priorities (dstnat -100, srcnat 100, filter 0): nft 1.0.6
    // accepts the named `dstnat` only in prerouting.
    // Pods' traffic arrives over the bridge (prerouting); the suite's and the
    // controllers' traffic is generated inside gwr-conf itself (output).
    for (chain, hook) in [("nat-prerouting", "prerouting"), ("nat-output", "output")] {
        let _ = writeln!(
            s,
            "\tchain {chain} {{\n\t\ttype nat hook {hook} priority -100; policy accept;\n\t\tip daddr {ranges} jump services\n\t}}"
        );
    }
    // Without SNAT, an endpoint on the bridge would answer a pod directly
    // over L2 from its own IP (and a pod reaching itself would answer
    // itself); the conntrack entry then never sees the reply. Traffic to the
    // node IP itself is delivered locally and does not pass here.
    let _ = writeln!(
        s,
        "\tchain nat-postrouting {{\n\t\ttype nat hook postrouting priority 100; policy accept;\n\t\tct status dnat oifname \"{}\" snat to {}\n\t}}",
        comment(&cfg.bridge),
        cfg.node_ip
    );
    // Whatever still goes to a Service range after DNAT had its chance has
    // no endpoint (or no such port): refuse it rather than let it time out.
    for (chain, hook) in [("filter-forward", "forward"), ("filter-output", "output")] {
        let _ = writeln!(
            s,
            "\tchain {chain} {{\n\t\ttype filter hook {hook} priority 0; policy accept;\n\t\tip daddr {ranges} meta l4proto tcp reject with tcp reset\n\t\tip daddr {ranges} reject\n\t}}"
        );
    }
    let _ = writeln!(s, "\tchain services {{");
    for (i, p) in ports.iter().enumerate() {
        if p.endpoints.is_empty() {
            continue;
        }
        for vip in &p.vips {
            let _ = writeln!(
                s,
                "\t\tip daddr {vip} {} dport {} goto svc{i} comment \"{}\"",
                p.proto.nft(),
                p.port,
                comment(&p.label)
            );
        }
    }
    let _ = writeln!(s, "\t}}");
    for (i, p) in ports.iter().enumerate() {
        if p.endpoints.is_empty() {
            continue;
        }
        let proto = p.proto.nft();
        if let [ep] = p.endpoints.as_slice() {
            let _ = writeln!(
                s,
                "\tchain svc{i} {{\n\t\tmeta l4proto {proto} dnat to {ep}\n\t}}"
            );
            continue;
        }
        let arms: Vec<String> = (0..p.endpoints.len())
            .map(|j| format!("{j} : goto svc{i}-{j}"))
            .collect();
        let _ = writeln!(
            s,
            "\tchain svc{i} {{\n\t\tnumgen random mod {} vmap {{ {} }}\n\t}}",
            p.endpoints.len(),
            arms.join(", ")
        );
        for (j, ep) in p.endpoints.iter().enumerate() {
            let _ = writeln!(
                s,
                "\tchain svc{i}-{j} {{\n\t\tmeta l4proto {proto} dnat to {ep}\n\t}}"
            );
        }
    }
    let _ = writeln!(s, "}}");
    s
}

/// Applies a rendered ruleset in one `nft -f -` transaction.
pub async fn apply(ruleset: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("running nft (Debian package nftables)")?;
    let mut stdin = child.stdin.take().context("nft stdin")?;
    stdin
        .write_all(ruleset.as_bytes())
        .await
        .context("writing the ruleset to nft")?;
    drop(stdin);
    let out = child.wait_with_output().await.context("waiting for nft")?;
    if !out.status.success() {
        bail!(
            "nft -f - failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> NetConfig {
        NetConfig {
            node_ip: Ipv4Addr::new(10, 244, 0, 1),
            bridge: "gwr0".into(),
            service_cidr: "10.96.0.0/16".parse().expect("cidr"),
            lb_pool: "10.245.0.0/24".parse().expect("cidr"),
        }
    }

    #[test]
    fn renders_dnat_lb_and_snat() {
        let ports = vec![
            VirtualPort {
                label: "ns/web:http".into(),
                vips: vec![Ipv4Addr::new(10, 96, 0, 5), Ipv4Addr::new(10, 245, 0, 1)],
                proto: Proto::Tcp,
                port: 80,
                endpoints: vec![
                    "10.244.0.2:3000".parse().expect("addr"),
                    "10.244.0.3:3000".parse().expect("addr"),
                ],
            },
            VirtualPort {
                label: "kube-system/kube-dns:dns".into(),
                vips: vec![Ipv4Addr::new(10, 96, 0, 10)],
                proto: Proto::Udp,
                port: 53,
                endpoints: vec!["10.244.0.1:53".parse().expect("addr")],
            },
            VirtualPort {
                label: "ns/empty:x".into(),
                vips: vec![Ipv4Addr::new(10, 96, 0, 7)],
                proto: Proto::Tcp,
                port: 81,
                endpoints: vec![],
            },
        ];
        let out = render(&cfg(), &ports);
        assert!(out.starts_with("table ip gwr-svc {\n}\ndelete table ip gwr-svc\n"));
        assert!(out.contains("ip daddr 10.96.0.5 tcp dport 80 goto svc0 comment \"ns/web:http\""));
        assert!(out.contains("ip daddr 10.245.0.1 tcp dport 80 goto svc0"));
        assert!(out.contains("numgen random mod 2 vmap { 0 : goto svc0-0, 1 : goto svc0-1 }"));
        assert!(out.contains("chain svc0-1 {\n\t\tmeta l4proto tcp dnat to 10.244.0.3:3000"));
        assert!(out.contains("chain svc1 {\n\t\tmeta l4proto udp dnat to 10.244.0.1:53"));
        assert!(out.contains("ct status dnat oifname \"gwr0\" snat to 10.244.0.1"));
        // No endpoints: no DNAT, so the filter chains reject it.
        assert!(!out.contains("10.96.0.7"));
        assert!(!out.contains("svc2"));
        assert!(out.contains(
            "ip daddr { 10.96.0.0/16, 10.245.0.0/24 } meta l4proto tcp reject with tcp reset"
        ));
        assert_eq!(out, render(&cfg(), &ports), "deterministic");
    }

    #[test]
    fn comments_are_sanitised() {
        assert_eq!(comment("a\"b; drop}"), "abdrop");
    }

    #[test]
    fn protocols() {
        assert_eq!(Proto::from_k8s(None), Some(Proto::Tcp));
        assert_eq!(Proto::from_k8s(Some("UDP")), Some(Proto::Udp));
        assert_eq!(Proto::from_k8s(Some("SCTP")), None);
    }
}
