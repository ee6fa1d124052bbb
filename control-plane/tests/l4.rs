//! End-to-end tests of TCPRoute and UDPRoute: a real `gatewright run`, its
//! Envoy, and TCP and UDP servers of the test's own on loopback that answer
//! with their name, so every connection or flow says which backend it
//! reached.

// Shared with e2e.rs; each test binary uses only part of it.
#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// How many connections or flows a weighted split is judged on, and how
/// far from its weight a backend's share may be: at 400 samples the
/// standard deviation of a 70% share is 2.3 points, so 10 points is over
/// four of them.
const SAMPLES: usize = 400;
const TOLERANCE: f64 = 0.10;

/// Servers that stop when dropped.
struct Servers(Vec<JoinHandle<()>>);

impl Drop for Servers {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// A TCP server on loopback that writes `name` to every connection and
/// closes it.
async fn tcp_server(name: &'static str) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding TCP");
    let addr = listener.local_addr().expect("TCP address");
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.write_all(name.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, task)
}

/// A UDP server on loopback that answers every datagram with `name`.
async fn udp_server(name: &'static str) -> (SocketAddr, JoinHandle<()>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("binding UDP");
    let addr = socket.local_addr().expect("UDP address");
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((_, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(name.as_bytes(), from).await;
        }
    });
    (addr, task)
}

/// The name the backend behind one new TCP connection to `gateway` sends.
async fn tcp_backend(gateway: SocketAddr) -> Result<String, String> {
    let once = async {
        let mut stream = TcpStream::connect(gateway)
            .await
            .map_err(|e| format!("connecting to {gateway}: {e}"))?;
        let mut name = String::new();
        stream
            .read_to_string(&mut name)
            .await
            .map_err(|e| format!("reading from {gateway}: {e}"))?;
        if name.is_empty() {
            return Err(format!("{gateway} closed the connection without an answer"));
        }
        Ok(name)
    };
    tokio::time::timeout(Duration::from_secs(2), once)
        .await
        .map_err(|_| format!("no answer from {gateway} within 2 s"))?
}

/// The names the backend of one new UDP flow to `gateway` answers
/// `datagrams` datagrams with (one socket: one client port, one flow).
async fn udp_backends(gateway: SocketAddr, datagrams: usize) -> Result<Vec<String>, String> {
    let socket = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("binding a client socket: {e}"))?;
    socket
        .connect(gateway)
        .await
        .map_err(|e| format!("connecting to {gateway}: {e}"))?;
    let mut names = Vec::with_capacity(datagrams);
    let mut buf = [0u8; 1500];
    for i in 0..datagrams {
        socket
            .send(format!("probe {i}").as_bytes())
            .await
            .map_err(|e| format!("sending to {gateway}: {e}"))?;
        let n = tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf))
            .await
            .map_err(|_| format!("no answer from {gateway} within 1 s"))?
            .map_err(|e| format!("receiving from {gateway}: {e}"))?;
        names.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    Ok(names)
}

/// Each name's share of `seen`, checked against `weights` (name → expected
/// share): within [`TOLERANCE`], and exactly nothing for a zero weight.
fn check_split(what: &str, seen: &[String], weights: &[(&str, f64)]) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for name in seen {
        *counts.entry(name.as_str()).or_default() += 1;
    }
    eprintln!("{what}: {counts:?} of {}", seen.len());
    for name in counts.keys() {
        assert!(
            weights.iter().any(|(w, _)| w == name),
            "{what}: answered by {name}, which is no backend of the route"
        );
    }
    for (name, want) in weights {
        let got = counts.get(name).copied().unwrap_or(0) as f64 / seen.len() as f64;
        if *want == 0.0 {
            assert_eq!(got, 0.0, "{what}: weight-0 backend {name} got {got:.3}");
        } else {
            assert!(
                (got - want).abs() <= TOLERANCE,
                "{what}: backend {name} got {got:.3} of the traffic, want {want} ± {TOLERANCE}"
            );
        }
    }
}

/// A route of `kind` with one rule whose backends are `(Service, weight)`.
fn weighted_route(kind: &str, name: &str, backends: &[(&str, u32)]) -> String {
    let mut rule = String::from("  - backendRefs:\n");
    for (svc, weight) in backends {
        rule.push_str(&format!(
            "    - name: {svc}\n      port: 8080\n      weight: {weight}\n"
        ));
    }
    route(kind, name, &[], &rule)
}

fn listener(name: &str, port: u16, protocol: &str) -> String {
    format!("  - name: {name}\n    port: {port}\n    protocol: {protocol}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_route_splits_connections_by_weight() {
    let (envoy, _slot) = begin("tcp_route_splits_connections_by_weight", Slot::Shared).await;
    let mut servers = Vec::new();
    let mut backends = Vec::new();
    for name in ["tcp-a", "tcp-b", "tcp-c"] {
        let (addr, task) = tcp_server(name).await;
        servers.push(task);
        backends.push(service_for(name, "default", addr, None));
    }
    let _servers = Servers(servers);
    let w = World::start(&envoy, 62, &[], &[], |i| {
        vec![
            (
                "gateway.yaml".into(),
                docs(&[
                    gateway_class(),
                    gateway(i.ip, &[listener("tcp", i.port, "TCP")]),
                ]),
            ),
            ("backends.yaml".into(), docs(&backends)),
            (
                "routes.yaml".into(),
                docs(&[weighted_route(
                    "TCPRoute",
                    "split",
                    &[("tcp-a", 70), ("tcp-b", 30), ("tcp-c", 0)],
                )]),
            ),
        ]
    });
    w.gw.wait_ready().await;
    let gateway = w.addr(w.port);
    w.gw.wait("the TCP listener to reach a backend", async || {
        tcp_backend(gateway).await
    })
    .await;
    let status = w.gw.status_file_text("TCPRoute", "default", "split");
    assert!(
        status.contains("reason: Accepted") && status.contains("reason: ResolvedRefs"),
        "TCPRoute default/split is not accepted with resolved references:\n{status}"
    );
    let mut seen = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        seen.push(
            tcp_backend(gateway)
                .await
                .expect("a TCP connection through the Gateway"),
        );
    }
    check_split(
        "TCP connections",
        &seen,
        &[("tcp-a", 0.7), ("tcp-b", 0.3), ("tcp-c", 0.0)],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_route_splits_flows_by_weight_and_keeps_each_flow() {
    let (envoy, _slot) = begin(
        "udp_route_splits_flows_by_weight_and_keeps_each_flow",
        Slot::Shared,
    )
    .await;
    let mut servers = Vec::new();
    let mut backends = Vec::new();
    for name in ["udp-a", "udp-b", "udp-c"] {
        let (addr, task) = udp_server(name).await;
        servers.push(task);
        backends.push(service_for(name, "default", addr, None));
    }
    let _servers = Servers(servers);
    let w = World::start(&envoy, 63, &[], &[], |i| {
        vec![
            (
                "gateway.yaml".into(),
                docs(&[
                    gateway_class(),
                    gateway(i.ip, &[listener("udp", i.port, "UDP")]),
                ]),
            ),
            ("backends.yaml".into(), docs(&backends)),
            (
                "routes.yaml".into(),
                docs(&[weighted_route(
                    "UDPRoute",
                    "split",
                    &[("udp-a", 70), ("udp-b", 30), ("udp-c", 0)],
                )]),
            ),
        ]
    });
    w.gw.wait_ready().await;
    let gateway = w.addr(w.port);
    w.gw.wait("the UDP listener to reach a backend", async || {
        udp_backends(gateway, 1).await
    })
    .await;
    let status = w.gw.status_file_text("UDPRoute", "default", "split");
    assert!(
        status.contains("reason: Accepted") && status.contains("reason: ResolvedRefs"),
        "UDPRoute default/split is not accepted with resolved references:\n{status}"
    );
    let mut seen = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        // Three datagrams of one flow: one backend answers them all.
        let names = udp_backends(gateway, 3)
            .await
            .expect("a UDP flow through the Gateway");
        assert!(
            names.iter().all(|n| *n == names[0]),
            "one flow was answered by several backends: {names:?}"
        );
        seen.push(names[0].clone());
    }
    check_split(
        "UDP flows",
        &seen,
        &[("udp-a", 0.7), ("udp-b", 0.3), ("udp-c", 0.0)],
    );
}
