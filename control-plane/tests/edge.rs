//! End-to-end tests of the edge defaults every Gateway's Envoy gets
//! (ARCHITECTURE.md, "Edge defaults"): a real `gatewright run`, its Envoy
//! and `gatewright-echo` backends on loopback (address blocks 80-83).
//!
//! Paths are sent over raw TCP: an HTTP client library would normalise
//! `/a/./b` or `//` itself, and the point is what Envoy does with them.

// Each test binary uses its own part of the shared helpers.
#[allow(dead_code)]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// What came back for one raw HTTP/1.1 exchange.
#[derive(Debug)]
struct RawReply {
    status: u16,
    /// The response head (status line and headers), lowercased.
    head: String,
    body: String,
}

impl RawReply {
    /// A response header's value (name lowercase).
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            (n.trim() == name).then(|| v.trim())
        })
    }

    /// The echo backend's JSON, if the echo backend answered.
    fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.body).ok()
    }
}

/// Sends `request` (head and body as written, `Connection: close` added)
/// on a new connection to `addr` and reads the whole response.
async fn raw(addr: SocketAddr, request_line: &str, headers: &[&str]) -> Result<RawReply, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut text = format!("{request_line}\r\nHost: edge.example\r\nConnection: close\r\n");
        for h in headers {
            text.push_str(h);
            text.push_str("\r\n");
        }
        text.push_str("\r\n");
        stream
            .write_all(text.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok::<_, String>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| "no response within 5 s".to_owned())??;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {:?}", clip(&text, 200)))?;
    Ok(RawReply {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    })
}

/// Gateway `default/gw` on this test's address, naming ProxyParameters
/// `default/tuned`.
fn gateway_with_parameters(info: &WorldInfo) -> String {
    gateway(info.ip, &[http_listener("http", info.port)]).replace(
        "spec:\n  gatewayClassName: gatewright\n",
        "spec:\n  gatewayClassName: gatewright\n  infrastructure:\n    parametersRef:\n      \
         group: gatewright.dev\n      kind: ProxyParameters\n      name: tuned\n",
    )
}

fn proxy_parameters(envoy: &str) -> String {
    format!(
        "apiVersion: gatewright.dev/v1alpha1
kind: ProxyParameters
metadata:
  name: tuned
  namespace: default
spec:
  envoy:
{envoy}"
    )
}

fn rule(kind: &str, path: &str, svc: &str) -> String {
    format!(
        "  - matches:
    - path:
        type: {kind}
        value: {path}
    backendRefs:
    - name: {svc}
      port: 8080
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_normalised_and_underscore_headers_refused() {
    let (envoy, _slot) = begin(
        "paths_are_normalised_and_underscore_headers_refused",
        Slot::Shared,
    )
    .await;
    let rules = [
        rule("Exact", "/a/b", "svc-ab"),
        rule("PathPrefix", "/public", "svc-public"),
        rule("PathPrefix", "/admin", "svc-admin"),
    ]
    .concat();
    let w = World::http(
        &envoy,
        80,
        &[
            ("svc-ab", "ab"),
            ("svc-public", "public"),
            ("svc-admin", "admin"),
        ],
        &[("route.yaml", http_route("edge", &rules))],
    );
    w.gw.wait_ready().await;
    let addr = w.addr(w.port);
    w.gw.wait("the route to serve /a/b", async || {
        match raw(addr, "GET /a/b HTTP/1.1", &[]).await? {
            r if r.status == 200 => Ok(()),
            r => Err(format!("{r:?}")),
        }
    })
    .await;

    // Dot segments and doubled slashes reach the route of the normalised
    // path, and the backend gets that path.
    for path in ["/a//b", "/a/./b", "/a/x/../b", "//a///b"] {
        let r = raw(addr, &format!("GET {path} HTTP/1.1"), &[])
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let json = r.json().unwrap_or_else(|| panic!("GET {path}: {r:?}"));
        assert_eq!(
            (r.status, json["backend"].as_str(), json["path"].as_str()),
            (200, Some("ab"), Some("/a/b")),
            "GET {path}: {r:?}"
        );
    }
    // `..` cannot climb out of a prefix either: it is resolved first.
    let r = raw(addr, "GET /public/../admin/x HTTP/1.1", &[])
        .await
        .expect("GET /public/../admin/x");
    assert_eq!(
        r.json()
            .and_then(|j| j["backend"].as_str().map(str::to_owned)),
        Some("admin".to_owned()),
        "{r:?}"
    );

    // An encoded slash is never matched as it stands: the client is sent
    // to the unescaped, normalised path, which is then routed as such. The
    // /public backend never sees `/public%2F..%2Fadmin` (a backend that
    // decodes it would serve /admin from behind the /public route).
    for (path, location) in [
        ("/public%2F..%2Fadmin", "/admin"),
        ("/public%2f..%2fadmin/x", "/admin/x"),
        ("/a%2Fb", "/a/b"),
        ("/public%5C..%5Cadmin", "/admin"),
    ] {
        let r = raw(addr, &format!("GET {path} HTTP/1.1"), &[])
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert!(
            (300..400).contains(&r.status),
            "GET {path} should be redirected, got {r:?}"
        );
        assert_eq!(r.header("location"), Some(location), "GET {path}: {r:?}");
        assert!(r.json().is_none(), "GET {path} reached a backend: {r:?}");
    }

    // A header name with an underscore is refused (400) before routing;
    // the same header with a dash is fine.
    let r = raw(addr, "GET /a/b HTTP/1.1", &["X_User: admin"])
        .await
        .expect("GET with X_User");
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.json().is_none(), "reached a backend: {r:?}");
    let r = raw(addr, "GET /a/b HTTP/1.1", &["X-User: admin"])
        .await
        .expect("GET with X-User");
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_headers_slowly_is_cut_off() {
    // Measures time: alone.
    let (envoy, _slot) = begin(
        "a_client_sending_headers_slowly_is_cut_off",
        Slot::Exclusive,
    )
    .await;
    let w = World::http(
        &envoy,
        81,
        &[("echo", "echo")],
        &[("route.yaml", http_route("web", &to_service("echo")))],
    );
    w.gw.wait_ready().await;
    let c = plain_client();
    let base = w.base();
    w.gw.wait("traffic through the Gateway", async || {
        served_by(&c, &format!("{base}/"), &[], "echo").await
    })
    .await;

    // A slowloris client: the request line, then one header byte a second,
    // never the end of the headers.
    let mut stream = TcpStream::connect(w.addr(w.port)).await.expect("connect");
    let started = Instant::now();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: edge.example\r\nX-Slow: ")
        .await
        .expect("write the request line");
    let mut response = Vec::new();
    let cut_off = loop {
        let mut buf = [0u8; 1024];
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => break started.elapsed(),
                Ok(n) => response.extend_from_slice(&buf[..n]),
            },
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                if stream.write_all(b"a").await.is_err() {
                    break started.elapsed();
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "a client trickling its headers was still connected after 30 s"
        );
    };
    // request_headers_timeout is 10 s: not before, and not much after.
    assert!(
        cut_off >= Duration::from_secs(9) && cut_off < Duration::from_secs(20),
        "cut off after {cut_off:?}"
    );
    let text = String::from_utf8_lossy(&response);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "unexpected answer to a slow client: {text:?}"
    );
    // The Gateway still serves everyone else.
    served_by(&c, &format!("{base}/"), &[], "echo")
        .await
        .expect("served after the slow client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_trusts_only_the_configured_hops() {
    let (envoy, _slot) = begin(
        "x_forwarded_for_trusts_only_the_configured_hops",
        Slot::Shared,
    )
    .await;
    let w = World::start(&envoy, 82, &["echo"], &[], |i| {
        vec![
            (
                "gateway.yaml".into(),
                docs(&[gateway_class(), gateway_with_parameters(i)]),
            ),
            (
                "params.yaml".into(),
                proxy_parameters("    logLevel: info\n"),
            ),
            ("backends.yaml".into(), i.backend("echo", "echo")),
            ("route.yaml".into(), http_route("web", &to_service("echo"))),
        ]
    });
    w.gw.wait_ready().await;
    let c = plain_client();
    let url = format!("{}/", w.base());
    let spoofed = [("X-Forwarded-For", "203.0.113.9")];
    w.gw.wait("traffic through the Gateway", async || {
        served_by(&c, &url, &[], "echo").await
    })
    .await;

    // 0 trusted hops (the default): the client is the TCP peer; what it
    // wrote into X-Forwarded-For is kept but not believed, and Envoy
    // appends the peer. Envoy 1.40 counts no address as internal, so every
    // client is external: its x-envoy-* control headers are dropped.
    let r = get(
        &c,
        &url,
        &[spoofed[0], ("X-Envoy-Upstream-Rq-Timeout-Ms", "1")],
    )
    .await
    .expect("GET");
    assert_eq!(r.status, 200, "{}", r.summary());
    // Envoy appended one entry (the peer; for a loopback peer Envoy writes
    // its own host address instead) and took the client address from the
    // connection, not from the header.
    let xff = r.echoed_header("x-forwarded-for").unwrap_or_default();
    assert!(
        xff.starts_with("203.0.113.9,") && xff.split(',').count() == 2,
        "X-Forwarded-For {xff:?}"
    );
    let peer = r
        .echoed_header("x-envoy-external-address")
        .unwrap_or_else(|| panic!("no x-envoy-external-address: {}", r.body));
    assert!(
        peer != "203.0.113.9" && peer.parse::<std::net::IpAddr>().is_ok(),
        "the client address is {peer:?}, not the TCP peer"
    );
    assert_eq!(r.echoed_header("x-envoy-internal"), None, "{}", r.body);
    assert_eq!(
        r.echoed_header("x-envoy-upstream-rq-timeout-ms"),
        None,
        "{}",
        r.body
    );

    // 1 trusted hop: the address the hop recorded is the client's.
    w.gw.write(
        "params.yaml",
        &proxy_parameters("    logLevel: info\n    xffNumTrustedHops: 1\n"),
    );
    let r =
        w.gw.wait(
            "the client address taken from X-Forwarded-For",
            async || {
                let r = get(&c, &url, &spoofed).await?;
                match r.echoed_header("x-envoy-external-address").as_deref() {
                    Some("203.0.113.9") => Ok(r),
                    other => Err(format!("x-envoy-external-address {other:?}: {}", r.body)),
                }
            },
        )
        .await;
    assert_eq!(r.echoed_header("x-envoy-internal"), None, "{}", r.body);
    // Without the header the TCP peer is all there is.
    let r = get(&c, &url, &[]).await.expect("GET");
    assert_eq!(
        r.echoed_header("x-envoy-external-address"),
        Some(peer),
        "{}",
        r.body
    );

    // A value the CRD does not allow is refused before translation, as an
    // API server would refuse it: the file's last good parameters stay in
    // force, rather than some other number of hops being trusted. (The
    // translator's own refusal, InvalidParameters, is the golden case
    // gateway-xff-trusted-hops-invalid.) The check waits for the round
    // that read the refused file, so it cannot pass by looking too early.
    let counter = async |name: &str| -> Result<u64, String> {
        let (code, body) = w.gw.admin_get("/metrics").await?;
        if code != 200 {
            return Err(format!("/metrics answered {code}"));
        }
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("gatewright_{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("no gatewright_{name} in /metrics"))
    };
    let rounds_before = counter("translations_total").await.expect("metric");
    w.gw.write(
        "params.yaml",
        &proxy_parameters("    xffNumTrustedHops: 99\n"),
    );
    w.gw.wait("a round that refuses the parameters", async || {
        let rounds = counter("translations_total").await?;
        let problems = counter("config_problems").await?;
        if rounds > rounds_before && problems > 0 {
            Ok(())
        } else {
            Err(format!("{rounds} translations, {problems} problems"))
        }
    })
    .await;
    let status =
        w.gw.status_file("Gateway", "default", "gw")
            .expect("the Gateway's status");
    assert_eq!(
        condition(&status, "Accepted"),
        Some(("True".to_owned(), "Accepted".to_owned())),
        "{}",
        yaml_summary(&status)
    );
    let r = get(&c, &url, &spoofed).await.expect("GET");
    assert_eq!(
        r.echoed_header("x-envoy-external-address").as_deref(),
        Some("203.0.113.9"),
        "the last good parameters (one trusted hop) must stay in force: {}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_refuses_connections_beyond_it() {
    let (envoy, _slot) = begin(
        "the_connection_limit_refuses_connections_beyond_it",
        Slot::Shared,
    )
    .await;
    let w = World::start(&envoy, 83, &["echo"], &[], |i| {
        vec![
            (
                "gateway.yaml".into(),
                docs(&[gateway_class(), gateway_with_parameters(i)]),
            ),
            (
                "params.yaml".into(),
                proxy_parameters("    maxDownstreamConnections: 2\n"),
            ),
            ("backends.yaml".into(), i.backend("echo", "echo")),
            ("route.yaml".into(), http_route("web", &to_service("echo"))),
        ]
    });
    w.gw.wait_ready().await;
    let addr = w.addr(w.port);
    w.gw.wait("traffic through the Gateway", async || {
        match raw(addr, "GET / HTTP/1.1", &[]).await? {
            r if r.status == 200 => Ok(()),
            r => Err(format!("{r:?}")),
        }
    })
    .await;

    /// One request on an open keep-alive connection: whether it got 200.
    async fn request_on(stream: &mut TcpStream) -> Result<(), String> {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: edge.example\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = vec![0u8; 64 * 1024];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .map_err(|_| "no answer within 5 s".to_owned())?
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&buf[..read]);
        if text.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(format!("answer {:?}", clip(&text, 200)))
        }
    }

    // Two connections held open fill the limit (the earlier probes'
    // connections closing may take a moment to be counted out).
    let mut held = Vec::new();
    for n in 0..2 {
        let stream =
            w.gw.wait(&format!("connection {n} served"), async || {
                let mut s = TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                request_on(&mut s).await.map(|()| s)
            })
            .await;
        held.push(stream);
    }
    // A third is accepted by the kernel and closed by Envoy, unanswered.
    for _ in 0..3 {
        let mut third = TcpStream::connect(addr).await.expect("connect");
        let refused = request_on(&mut third).await;
        assert!(refused.is_err(), "a third connection was served");
    }
    // The held ones still work.
    for s in &mut held {
        request_on(s).await.expect("a held connection still served");
    }
    // Closing one frees its place.
    drop(held.pop());
    w.gw.wait("a new connection served after one closed", async || {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        request_on(&mut s).await
    })
    .await;
}
