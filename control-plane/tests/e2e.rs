//! End-to-end tests of standalone mode: a real `gatewright run` on a
//! directory of YAML, the Envoy processes it starts, and `gatewright-echo`
//! backends, all on loopback.
//!
//! Each test has its own temp dir, its own gatewright, and its own Gateway
//! address (127.77.N.1) and listener ports (20000 + 10 N ..), so tests run in
//! parallel. Tests that measure time or push load run alone (an exclusive
//! lock); the rest share.

// Each test binary uses its own part of the shared helpers.
#[allow(dead_code)]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::*;

/// The Gateway file: GatewayClass, Namespace and Gateway.
fn gateway_file(info: &WorldInfo, listeners: &[String]) -> (String, String) {
    (
        "gateway.yaml".into(),
        docs(&[gateway_class(), gateway(info.ip, listeners)]),
    )
}

// ---------------------------------------------------------------------------
// 1. Routing by path prefix, exact path and header.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_routing_by_path_and_header() {
    let (envoy, _slot) = begin("http_routing_by_path_and_header", Slot::Shared).await;
    let exact_rule = "  - matches:
    - path:
        type: Exact
        value: /exact
    backendRefs:
    - name: svc-exact
      port: 8080
";
    let header_rule = "  - matches:
    - headers:
      - name: X-Canary
        value: 'yes'
    backendRefs:
    - name: svc-header
      port: 8080
";
    let rules = [
        prefix_rule("/api", "svc-prefix", ""),
        exact_rule.into(),
        header_rule.into(),
        to_service("svc-fallback"),
    ]
    .concat();
    let w = World::http(
        &envoy,
        1,
        &[
            ("svc-prefix", "prefix"),
            ("svc-exact", "exact"),
            ("svc-header", "header"),
            ("svc-fallback", "fallback"),
        ],
        &[("route.yaml", http_route("routing", &rules))],
    );
    w.gw.wait_ready().await;
    let c = plain_client();
    let base = w.base();
    w.gw.wait("the route to serve /api", async || {
        served_by(&c, &format!("{base}/api"), &[], "prefix").await
    })
    .await;

    // (path, request headers, expected backend)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("/api", &[], "prefix"),
        ("/api/users/7?x=1", &[], "prefix"),
        ("/apiary", &[], "fallback"),
        ("/exact", &[], "exact"),
        ("/exact/more", &[], "fallback"),
        ("/", &[("X-Canary", "yes")], "header"),
        ("/anything", &[("X-Canary", "yes")], "header"),
        ("/anything", &[("X-Canary", "no")], "fallback"),
        ("/", &[], "fallback"),
        // A longer path prefix outranks a header match.
        ("/api/x", &[("X-Canary", "yes")], "prefix"),
    ];
    for (path, headers, want) in cases {
        let r = get(&c, &format!("{base}{path}"), headers).await.unwrap();
        assert_eq!(
            (r.status, r.backend()),
            (200, *want),
            "GET {path} with {headers:?}: expected 200 from {want}, got {}",
            r.summary()
        );
        let json = r.json.as_ref().expect("echo answers JSON");
        assert_eq!(json["backend"], *want, "JSON backend of GET {path}");
        assert_eq!(json["path"], *path, "the backend saw another path");
    }

    // The admin endpoints answer.
    for path in ["/healthz", "/readyz", "/metrics", "/debug/status"] {
        let (status, body) = w.gw.admin_get(path).await.unwrap();
        assert_eq!(status, 200, "admin {path}: {body}");
    }
    let (_, metrics) = w.gw.admin_get("/metrics").await.unwrap();
    assert!(
        metrics.contains("# TYPE"),
        "/metrics should be Prometheus text; got {}",
        clip(&metrics, 500)
    );
    let (status, dump) =
        w.gw.admin_get("/debug/config_dump?gateway=default/gw")
            .await
            .unwrap();
    assert_eq!(status, 200, "config_dump: {dump}");
    assert!(
        dump.contains("svc-prefix"),
        "config_dump for default/gw should name the svc-prefix cluster; got {}",
        clip(&dump, 1000)
    );
}

// ---------------------------------------------------------------------------
// 2. Request and response header modifiers.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_modifiers() {
    let (envoy, _slot) = begin("header_modifiers", Slot::Shared).await;
    let modifiers = "    - type: RequestHeaderModifier
      requestHeaderModifier:
        set:
        - name: X-Set
          value: set-value
        add:
        - name: X-Add
          value: add-value
        remove:
        - X-Remove
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set:
        - name: X-Resp-Set
          value: resp-set
        add:
        - name: X-Resp-Add
          value: resp-add
        remove:
        - X-Echo-Backend
";
    let rules = [
        prefix_rule("/mod", "echo", modifiers),
        prefix_rule("/plain", "echo", ""),
    ]
    .concat();
    let w = World::http(
        &envoy,
        2,
        &[("echo", "echo")],
        &[("route.yaml", http_route("headers", &rules))],
    );
    w.gw.wait_ready().await;
    let c = plain_client();
    let base = w.base();
    w.gw.wait("the route to serve /plain", async || {
        served_by(&c, &format!("{base}/plain"), &[], "echo").await
    })
    .await;

    let sent = [
        ("X-Set", "client-set"),
        ("X-Add", "client-add"),
        ("X-Remove", "client-remove"),
        ("X-Keep", "kept"),
    ];
    let r = get(&c, &format!("{base}/mod/x"), &sent).await.unwrap();
    assert_eq!(r.status, 200, "GET /mod/x: {}", r.summary());
    let json = r.json.as_ref().expect("JSON from echo");
    assert_eq!(json["backend"], "echo", "{}", r.summary());
    assert_eq!(
        r.echoed_header("x-set").as_deref(),
        Some("set-value"),
        "set replaces the client's value; echo saw {}",
        json["headers"]
    );
    let add = r.echoed_header("x-add").unwrap_or_default();
    assert!(
        add.contains("client-add") && add.contains("add-value"),
        "add keeps the client's value and appends; echo saw x-add {add:?}"
    );
    assert_eq!(
        r.echoed_header("x-remove"),
        None,
        "remove drops the header; echo saw {}",
        json["headers"]
    );
    assert_eq!(r.echoed_header("x-keep").as_deref(), Some("kept"));
    assert_eq!(r.header("x-resp-set"), Some("resp-set"), "{:?}", r.headers);
    assert_eq!(r.header("x-resp-add"), Some("resp-add"), "{:?}", r.headers);
    assert_eq!(
        r.header("x-echo-backend"),
        None,
        "ResponseHeaderModifier remove should drop x-echo-backend; headers {:?}",
        r.headers
    );

    // Another rule of the same route is untouched.
    let r = get(&c, &format!("{base}/plain"), &sent).await.unwrap();
    assert_eq!(r.backend(), "echo", "{}", r.summary());
    assert_eq!(r.echoed_header("x-set").as_deref(), Some("client-set"));
    assert_eq!(
        r.echoed_header("x-remove").as_deref(),
        Some("client-remove")
    );
    assert_eq!(r.header("x-resp-set"), None);
}

// ---------------------------------------------------------------------------
// 3. Redirects.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_redirects() {
    let (envoy, _slot) = begin("request_redirects", Slot::Shared).await;
    let rules = "  - matches:
    - path:
        type: PathPrefix
        value: /old
    filters:
    - type: RequestRedirect
      requestRedirect:
        scheme: https
        hostname: new.example.test
        path:
          type: ReplacePrefixMatch
          replacePrefixMatch: /new
        statusCode: 301
  - matches:
    - path:
        type: Exact
        value: /moved
    filters:
    - type: RequestRedirect
      requestRedirect:
        hostname: elsewhere.example.test
        path:
          type: ReplaceFullPath
          replaceFullPath: /landing
  - matches:
    - path:
        type: PathPrefix
        value: /port
    filters:
    - type: RequestRedirect
      requestRedirect:
        port: 8443
        statusCode: 308
";
    let rules = format!("{rules}{}", to_service("echo"));
    let w = World::http(
        &envoy,
        3,
        &[("echo", "echo")],
        &[("route.yaml", http_route("redirects", &rules))],
    );
    w.gw.wait_ready().await;
    let c = plain_client();
    let base = w.base();
    let host = [("Host", "shop.example.test")];
    w.gw.wait("the redirect route", async || {
        let r = get(&c, &format!("{base}/old/page?x=1"), &host).await?;
        if r.status == 301 {
            Ok(())
        } else {
            Err(format!("expected 301, got {}", r.summary()))
        }
    })
    .await;

    let port = w.port;
    let cases = [
        (
            "/old/page?x=1",
            301,
            "https://new.example.test/new/page?x=1".to_string(),
        ),
        (
            "/moved",
            302,
            // No scheme: the redirect keeps the listener's port.
            format!("http://elsewhere.example.test:{port}/landing"),
        ),
        (
            "/port/a",
            308,
            "http://shop.example.test:8443/port/a".to_string(),
        ),
    ];
    for (path, status, location) in cases {
        let r = get(&c, &format!("{base}{path}"), &host).await.unwrap();
        assert_eq!(
            (r.status, r.header("location")),
            (status, Some(location.as_str())),
            "GET {path} (Host shop.example.test): expected {status} to {location}, got {} \
             with headers {:?}",
            r.status,
            r.headers
        );
        assert_eq!(r.backend(), "", "a redirect must not reach a backend");
    }
    let r = get(&c, &format!("{base}/other"), &host).await.unwrap();
    assert_eq!((r.status, r.backend()), (200, "echo"), "{}", r.summary());
}

// ---------------------------------------------------------------------------
// 4. Weighted split.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split() {
    let (envoy, _slot) = begin("weighted_split", Slot::Shared).await;
    let rules = "  - backendRefs:
    - name: heavy
      port: 8080
      weight: 80
    - name: light
      port: 8080
      weight: 20
";
    let w = World::http(
        &envoy,
        4,
        &[("heavy", "heavy"), ("light", "light")],
        &[("route.yaml", http_route("split", rules))],
    );
    w.gw.wait_ready().await;
    let c = plain_client();
    let url = format!("{}/split", w.base());
    w.gw.wait("the split route", async || {
        let r = get(&c, &url, &[]).await?;
        if r.status == 200 {
            Ok(())
        } else {
            Err(r.summary())
        }
    })
    .await;

    // 600 requests at p = 0.8: sigma = sqrt(600 * 0.8 * 0.2) = 9.8 requests
    // = 1.63 points; +-8 points is 4.9 sigma, a false failure about once in
    // a million runs.
    const N: usize = 600;
    let (mut heavy, mut light) = (0usize, 0usize);
    for _ in 0..N {
        let r = get(&c, &url, &[]).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.summary());
        match r.backend() {
            "heavy" => heavy += 1,
            "light" => light += 1,
            other => panic!("unexpected backend {other:?}: {}", r.summary()),
        }
    }
    let share = heavy as f64 / N as f64 * 100.0;
    println!("weighted split 80/20 over {N} requests: heavy {heavy}, light {light} ({share:.1}%)");
    assert!(light > 0 && heavy > 0, "both backends must be seen");
    assert!(
        (72.0..=88.0).contains(&share),
        "expected 80% +- 8 to heavy, got {share:.1}% ({heavy} of {N})"
    );
}

// ---------------------------------------------------------------------------
// 5. HTTPS termination.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_termination() {
    let (envoy, _slot) = begin("https_termination", Slot::Shared).await;
    let certs = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let host = "secure.e2e.test";
    let cert = pki.server_cert(certs.path(), host);
    let w = World::start(&envoy, 5, &["secure"], &[], |i| {
        vec![
            gateway_file(i, &[https_listener("https", i.port, host, "secure-cert")]),
            (
                "backends.yaml".into(),
                docs(&[
                    i.backend("secure", "secure"),
                    tls_secret("secure-cert", &cert.cert_pem, &cert.key_pem),
                ]),
            ),
            (
                "route.yaml".into(),
                route("HTTPRoute", "secure", &[host], &to_service("secure")),
            ),
        ]
    });
    w.gw.wait_ready().await;
    let c = tls_client(&pki.ca_pem, host, w.addr(w.port));
    let url = format!("https://{host}:{}/hello", w.port);
    let r =
        w.gw.wait("HTTPS to answer", async || {
            served_by(&c, &url, &[], "secure").await
        })
        .await;
    let json = r.json.as_ref().expect("JSON");
    // Envoy may strip the port from the host; the name must be the client's.
    let seen_host = json["host"].as_str().unwrap_or("");
    assert!(
        seen_host == host || seen_host == format!("{host}:{}", w.port),
        "the backend should see the client's host {host}; got {}",
        r.body
    );
    assert_eq!(json["path"], "/hello");
    assert_eq!(
        json["tls"], false,
        "TLS ends at Envoy; the backend is plain HTTP"
    );

    // A client that does not trust our CA fails the handshake.
    let untrusting = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .resolve(host, w.addr(w.port))
        .build()
        .unwrap();
    let err = untrusting.get(&url).send().await;
    assert!(
        err.is_err(),
        "a client without the test CA must not accept the certificate; got {err:?}"
    );

    // The admin API shows the Gateway's configuration, never its key.
    let (status, dump) =
        w.gw.admin_get("/debug/config_dump?gateway=default/gw")
            .await
            .expect("config_dump");
    assert_eq!(status, 200, "config_dump: {dump}");
    // The key travels as inline bytes: base64 of its PEM in JSON.
    let encoded_key = base64(cert.key_pem.as_bytes());
    assert!(
        dump.contains("secure-cert") && dump.contains("[redacted]"),
        "config_dump should show the secret, redacted: {dump}"
    );
    assert!(
        !dump.contains(&encoded_key[..40]) && !dump.contains("PRIVATE KEY"),
        "config_dump leaks the private key"
    );
}

// ---------------------------------------------------------------------------
// 6. TLS passthrough by SNI.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_passthrough_by_sni() {
    let (envoy, _slot) = begin("tls_passthrough_by_sni", Slot::Shared).await;
    let certs = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let a = pki.server_cert(certs.path(), "a.pass.test");
    let b = pki.server_cert(certs.path(), "b.pass.test");
    let w = World::start(
        &envoy,
        6,
        &[],
        &[
            ("tls-a", &a.cert_file, &a.key_file),
            ("tls-b", &b.cert_file, &b.key_file),
        ],
        |i| {
            vec![
                gateway_file(i, &[passthrough_listener("tls", i.port)]),
                (
                    "backends.yaml".into(),
                    docs(&[i.backend("tls-a", "tls-a"), i.backend("tls-b", "tls-b")]),
                ),
                (
                    "routes.yaml".into(),
                    docs(&[
                        route("TLSRoute", "a", &["a.pass.test"], &to_service("tls-a")),
                        route("TLSRoute", "b", &["b.pass.test"], &to_service("tls-b")),
                    ]),
                ),
            ]
        },
    );
    w.gw.wait_ready().await;
    for (host, backend) in [("a.pass.test", "tls-a"), ("b.pass.test", "tls-b")] {
        let c = tls_client(&pki.ca_pem, host, w.addr(w.port));
        let url = format!("https://{host}:{}/via-sni", w.port);
        let r =
            w.gw.wait(&format!("SNI {host} to reach {backend}"), async || {
                served_by(&c, &url, &[], backend).await
            })
            .await;
        let json = r.json.as_ref().expect("JSON");
        assert_eq!(
            (&json["backend"], &json["tls"]),
            (&serde_json::json!(backend), &serde_json::json!(true)),
            "SNI {host}: expected the TLS backend {backend} to terminate TLS; got {}",
            r.body
        );
    }
    // An SNI no route names gets no backend.
    let c = tls_client(&pki.ca_pem, "c.pass.test", w.addr(w.port));
    let r = c
        .get(format!("https://c.pass.test:{}/", w.port))
        .send()
        .await;
    assert!(
        r.is_err(),
        "SNI c.pass.test matches no TLSRoute and must not connect; got {r:?}"
    );
}

// ---------------------------------------------------------------------------
// 7. gRPC via GRPCRoute.

/// alpha serves all of pkg.Alpha, beta-special one method of pkg.Beta,
/// beta the rest of pkg.Beta.
const GRPC_RULES: &str = "  - matches:
    - method:
        service: pkg.Alpha
    backendRefs:
    - name: alpha
      port: 8080
  - matches:
    - method:
        service: pkg.Beta
        method: Special
    backendRefs:
    - name: beta-special
      port: 8080
  - matches:
    - method:
        service: pkg.Beta
    backendRefs:
    - name: beta
      port: 8080
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_routing() {
    let (envoy, _slot) = begin("grpc_routing", Slot::Shared).await;
    let w = World::start(&envoy, 7, &["alpha", "beta", "beta-special"], &[], |i| {
        vec![
            gateway_file(i, &[http_listener("http", i.port)]),
            (
                "backends.yaml".into(),
                docs(&[
                    i.backend("alpha", "alpha"),
                    i.backend("beta", "beta"),
                    service_for(
                        "beta-special",
                        "default",
                        i.echoes["beta-special"],
                        Some("kubernetes.io/h2c"),
                    ),
                ]),
            ),
            (
                "route.yaml".into(),
                route("GRPCRoute", "rpc", &[], GRPC_RULES),
            ),
        ]
    });
    w.gw.wait_ready().await;
    let addr = w.addr(w.port);
    w.gw.wait("the GRPCRoute to serve", async || {
        let r = grpc_call(addr, "/pkg.Alpha/Get").await?;
        if r.backend() == "alpha" {
            Ok(())
        } else {
            Err(r.summary())
        }
    })
    .await;
    for (path, backend) in [
        ("/pkg.Alpha/Get", "alpha"),
        ("/pkg.Alpha/Put", "alpha"),
        ("/pkg.Beta/Special", "beta-special"),
        ("/pkg.Beta/Other", "beta"),
    ] {
        let r = grpc_call(addr, path).await.unwrap();
        assert_eq!(
            (r.http_status, r.backend(), r.grpc_status().as_deref()),
            (200, backend, Some("0")),
            "gRPC {path}: expected 200, backend {backend}, grpc-status 0; got {}",
            r.summary()
        );
        let msg = r
            .message_json()
            .unwrap_or_else(|| panic!("gRPC {path}: no JSON message in the body: {}", r.summary()));
        assert_eq!(msg["path"], path, "{msg}");
        assert_eq!(
            msg["protocol"], "HTTP/2",
            "gRPC must reach the backend over HTTP/2; got {msg}"
        );
        assert_eq!(msg["headers"]["content-type"], "application/grpc", "{msg}");
    }
    // A service no rule matches is not routed: HTTP 404, or grpc-status 12
    // (UNIMPLEMENTED) if Envoy answers in gRPC form.
    let r = grpc_call(addr, "/pkg.Gamma/Get").await.unwrap();
    assert_eq!(r.backend(), "", "{}", r.summary());
    assert!(
        r.http_status == 404 || r.grpc_status().as_deref() == Some("12"),
        "an unmatched gRPC service should be 404 / UNIMPLEMENTED; got {}",
        r.summary()
    );
}

// ---------------------------------------------------------------------------
// 8. A live change takes effect within a second.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_change_within_one_second() {
    let (envoy, _slot) = begin("live_change_within_one_second", Slot::Exclusive).await;
    let route = |svc: &str| http_route("live", &prefix_rule("/live", svc, ""));
    let w = World::http(
        &envoy,
        8,
        &[("svc-one", "one"), ("svc-two", "two")],
        &[("route.yaml", route("svc-one"))],
    );
    w.gw.wait_ready().await;
    let c = plain_client();
    let url = format!("{}/live", w.base());
    w.gw.wait("/live on svc-one", async || {
        served_by(&c, &url, &[], "one").await
    })
    .await;

    // Edit the file in place, as an editor without atomic saves does.
    let start = Instant::now();
    w.gw.write_in_place("route.yaml", &route("svc-two"));
    let r =
        w.gw.wait("/live to move to svc-two", async || {
            served_by(&c, &url, &[], "two").await
        })
        .await;
    let elapsed = start.elapsed();
    println!("live change: /live served by svc-two {elapsed:?} after the write");
    assert_eq!(r.status, 200);
    assert!(
        elapsed < Duration::from_secs(1),
        "the change took {elapsed:?}; expected under 1 s"
    );

    // And back, with an atomic rename this time.
    let start = Instant::now();
    w.gw.write("route.yaml", &route("svc-one"));
    w.gw.wait("/live to move back to svc-one", async || {
        served_by(&c, &url, &[], "one").await
    })
    .await;
    let elapsed = start.elapsed();
    println!("live change: back to svc-one {elapsed:?} after the rename");
    assert!(
        elapsed < Duration::from_secs(1),
        "the change back took {elapsed:?}; expected under 1 s"
    );
}

// ---------------------------------------------------------------------------
// 9. Changes under load.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_under_load() {
    let (envoy, _slot) = begin("changes_under_load", Slot::Exclusive).await;
    // An HTTPRoute `name` for prefix `path` to `svc`, optionally setting
    // X-Version on the request.
    let path_route = |name: &str, path: &str, svc: &str, version: Option<&str>| {
        let filter = version.map_or_else(String::new, |v| {
            format!(
                "    - type: RequestHeaderModifier
      requestHeaderModifier:
        set:
        - name: X-Version
          value: {v}
"
            )
        });
        http_route(name, &prefix_rule(path, svc, &filter))
    };
    let w = World::http(
        &envoy,
        9,
        &[("svc-a", "a"), ("svc-b", "b"), ("svc-c", "c")],
        &[
            (
                "stable.yaml",
                path_route("stable", "/stable", "svc-a", None),
            ),
            (
                "switch.yaml",
                path_route("switch", "/switch", "svc-a", None),
            ),
            (
                "header.yaml",
                path_route("header", "/header", "svc-a", Some("v1")),
            ),
        ],
    );
    w.gw.wait_ready().await;
    let c = plain_client();
    let base = w.base();
    for path in ["/stable", "/switch", "/header"] {
        w.gw.wait(&format!("{path} on svc-a"), async || {
            served_by(&c, &format!("{base}{path}"), &[], "a").await
        })
        .await;
    }

    const MAX_REQUESTS: u64 = 20_000;
    const MAX_TIME: Duration = Duration::from_secs(20);
    const NEW_ROUTES: usize = 3;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let visible_new = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for worker in 0..4u64 {
        let (stop, sent, visible_new, failures) = (
            stop.clone(),
            sent.clone(),
            visible_new.clone(),
            failures.clone(),
        );
        let base = base.clone();
        clients.push(tokio::spawn(async move {
            let c = plain_client();
            let started = Instant::now();
            let mut i = worker;
            while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_TIME {
                if sent.fetch_add(1, Ordering::Relaxed) >= MAX_REQUESTS {
                    break;
                }
                let new = visible_new.load(Ordering::Relaxed);
                // Each path with the backends that may answer it.
                let (path, allowed): (String, &[&str]) = match i % (3 + new as u64) {
                    0 => ("/stable".into(), &["a"]),
                    1 => ("/switch".into(), &["a", "b"]),
                    2 => ("/header".into(), &["a"]),
                    k => (format!("/new-{}", k - 3), &["c"]),
                };
                i += 1;
                match get(&c, &format!("{base}{path}"), &[]).await {
                    Ok(r) if (200..300).contains(&r.status) && allowed.contains(&r.backend()) => {}
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("GET {path}: {}", r.summary())),
                    Err(e) => failures.lock().unwrap().push(format!("GET {path}: {e}")),
                }
            }
        }));
    }
    let load_started = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // (a) New routes, one file each, to a Service no route used before.
    for k in 0..NEW_ROUTES {
        let t = Instant::now();
        w.gw.write(
            &format!("new-{k}.yaml"),
            &path_route(&format!("new-{k}"), &format!("/new-{k}"), "svc-c", None),
        );
        w.gw.wait(&format!("/new-{k} on svc-c"), async || {
            served_by(&c, &format!("{base}/new-{k}"), &[], "c").await
        })
        .await;
        visible_new.store(k + 1, Ordering::Relaxed);
        println!(
            "under load: new route /new-{k} served after {:?}",
            t.elapsed()
        );
    }

    // (b) Switch /switch from svc-a to svc-b.
    let t = Instant::now();
    w.gw.write(
        "switch.yaml",
        &path_route("switch", "/switch", "svc-b", None),
    );
    w.gw.wait("/switch on svc-b", async || {
        served_by(&c, &format!("{base}/switch"), &[], "b").await
    })
    .await;
    println!("under load: /switch moved to svc-b after {:?}", t.elapsed());

    // (c) Change the RequestHeaderModifier value of /header.
    let t = Instant::now();
    w.gw.write(
        "header.yaml",
        &path_route("header", "/header", "svc-a", Some("v2")),
    );
    w.gw.wait("/header to set X-Version v2", async || {
        let r = served_by(&c, &format!("{base}/header"), &[], "a").await?;
        match r.echoed_header("x-version").as_deref() {
            Some("v2") => Ok(()),
            other => Err(format!("x-version {other:?}")),
        }
    })
    .await;
    println!("under load: /header sets v2 after {:?}", t.elapsed());

    let changes_done = load_started.elapsed();
    let sent_at_changes_done = sent.load(Ordering::Relaxed);
    // Keep the load on a little longer: old clusters and routes drain now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for h in clients {
        h.await.expect("a load client panicked");
    }
    let total = sent.load(Ordering::Relaxed).min(MAX_REQUESTS);
    let elapsed = load_started.elapsed();
    let failures = std::mem::take(&mut *failures.lock().unwrap());
    println!(
        "under load: {total} requests in {elapsed:?} (changes done after {changes_done:?}), \
         {} failures",
        failures.len()
    );
    assert!(
        sent_at_changes_done < MAX_REQUESTS,
        "the load hit its cap of {MAX_REQUESTS} requests before the changes were done, so \
         some changes ran without load; lower the client count or raise the cap"
    );
    assert!(
        failures.is_empty(),
        "expected zero non-2xx answers, zero answers from a wrong backend and zero \
         connection errors under load; got {}:\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Every reload ran while Envoy kept running: it was never restarted.
    let (code, metrics) = w.gw.admin_get("/metrics").await.expect("admin /metrics");
    assert_eq!(code, 200);
    assert!(
        metrics
            .lines()
            .any(|l| l == "gatewright_envoy_restarts_total 0"),
        "expected no Envoy restarts during the run; /metrics says:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("restarts"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// ---------------------------------------------------------------------------
// 10. Bad input.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_skipped_and_reported() {
    let (envoy, _slot) = begin("bad_input_is_skipped_and_reported", Slot::Shared).await;
    let certs = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let host = "bad.e2e.test";
    let cert = pki.server_cert(certs.path(), host);
    let route = |name: &str, path: &str| http_route(name, &prefix_rule(path, "echo", ""));
    let broken = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: [unclosed\n  name: : :\n";
    let w = World::start(&envoy, 10, &["echo"], &[], |i| {
        vec![
            gateway_file(
                i,
                &[
                    http_listener("http", i.port),
                    https_listener("https", i.port + 1, host, "missing-cert"),
                ],
            ),
            ("backends.yaml".into(), i.backend("echo", "echo")),
            ("good.yaml".into(), route("good", "/good")),
            // The same object twice, in another file and in the same file.
            (
                "dup.yaml".into(),
                docs(&[route("good", "/good"), route("good", "/good")]),
            ),
            ("broken.yaml".into(), broken.into()),
            (
                "unknown.yaml".into(),
                "apiVersion: example.com/v1\nkind: Frobnicator\nmetadata:\n  name: x\n  namespace: default\nspec: {}\n"
                    .into(),
            ),
        ]
    });
    w.gw.wait_ready().await;
    let c = plain_client();
    let base = w.base();
    w.gw.wait("the good route to serve despite bad input", async || {
        served_by(&c, &format!("{base}/good"), &[], "echo").await
    })
    .await;

    // The HTTPS listener's missing Secret shows in the status file.
    let gw_status = w
        .gw
        .wait("Gateway status with listener https ResolvedRefs=False", async || {
            let s = w
                .gw
                .status_file("Gateway", "default", "gw")
                .ok_or("no status file Gateway/default/gw.yaml yet")?;
            let l = listener_status(&s, "https")
                .ok_or_else(|| format!("no listener https in {}", yaml_summary(&s)))?;
            match condition(l, "ResolvedRefs") {
                Some((st, reason)) if st == "False" && reason == "InvalidCertificateRef" => {
                    Ok(s)
                }
                other => Err(format!(
                    "listener https ResolvedRefs is {other:?}, expected False/InvalidCertificateRef"
                )),
            }
        })
        .await;
    let http = listener_status(&gw_status, "http").expect("listener http in the status");
    assert_eq!(
        condition(http, "ResolvedRefs"),
        Some(("True".into(), "ResolvedRefs".into())),
        "listener http is fine: {}",
        yaml_summary(http)
    );
    let route_status =
        w.gw.status_file("HTTPRoute", "default", "good")
            .expect("status file HTTPRoute/default/good.yaml");
    let accepted = route_status
        .get("parents")
        .and_then(|p| p.as_sequence())
        .and_then(|p| p.first())
        .and_then(|p| condition(p, "Accepted"));
    assert_eq!(
        accepted,
        Some(("True".into(), "Accepted".into())),
        "HTTPRoute good should be accepted: {}",
        yaml_summary(&route_status)
    );
    let route_file = w.gw.status_file_text("HTTPRoute", "default", "good");
    assert!(
        route_file.contains("duplicate"),
        "the status file of HTTPRoute default/good should mention its duplicates; got\n{route_file}"
    );
    let (code, debug) = w.gw.admin_get("/debug/status").await.unwrap();
    assert_eq!(code, 200, "/debug/status: {debug}");
    let debug_json: serde_json::Value =
        serde_json::from_str(&debug).expect("/debug/status is JSON");
    assert!(
        debug.contains("InvalidCertificateRef"),
        "/debug/status should report InvalidCertificateRef; got {}",
        clip(&debug, 2000)
    );
    drop(debug_json);
    let (code, _) = w.gw.admin_get("/healthz").await.unwrap();
    assert_eq!(code, 200, "gatewright stays healthy with bad input");

    // Fix the broken file: its route takes effect.
    w.gw.write("broken.yaml", &route("fixed", "/fixed"));
    w.gw.wait("the fixed file's route to serve", async || {
        served_by(&c, &format!("{base}/fixed"), &[], "echo").await
    })
    .await;

    // Break it again: its last good content stays in force. The check
    // waits for the round that read the broken file (it counts the file's
    // problem), so it cannot pass by looking before anything happened.
    let rounds_before = metric(&w.gw, "translations_total").await.expect("metric");
    w.gw.write("broken.yaml", broken);
    w.gw.wait("a round over the broken file", async || {
        let rounds = metric(&w.gw, "translations_total").await?;
        let problems = metric(&w.gw, "config_problems").await?;
        if rounds > rounds_before && problems > 0 {
            Ok(())
        } else {
            Err(format!("{rounds} translations, {problems} problems"))
        }
    })
    .await;
    let r = get(&c, &format!("{base}/fixed"), &[]).await.unwrap();
    assert_eq!(
        (r.status, r.backend()),
        (200, "echo"),
        "an unparseable file must keep its last good content; /fixed got {}",
        r.summary()
    );

    // Add the missing Secret: the listener resolves and HTTPS serves.
    w.gw.write(
        "secret.yaml",
        &tls_secret("missing-cert", &cert.cert_pem, &cert.key_pem),
    );
    w.gw.wait("listener https ResolvedRefs=True", async || {
        let s =
            w.gw.status_file("Gateway", "default", "gw")
                .ok_or("no status file")?;
        let l = listener_status(&s, "https").ok_or("no listener https")?;
        match condition(l, "ResolvedRefs") {
            Some((st, _)) if st == "True" => Ok(()),
            other => Err(format!("ResolvedRefs {other:?}")),
        }
    })
    .await;
    let tc = tls_client(&pki.ca_pem, host, w.addr(w.port + 1));
    let url = format!("https://{host}:{}/good", w.port + 1);
    w.gw.wait("HTTPS on the repaired listener", async || {
        served_by(&tc, &url, &[], "echo").await
    })
    .await;
}

// ---------------------------------------------------------------------------
// 11. Clean shutdown.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_envoys_and_exits_zero() {
    let (envoy, _slot) = begin("sigterm_stops_envoys_and_exits_zero", Slot::Shared).await;
    let mut w = World::http(
        &envoy,
        11,
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

    let children = w.gw.note_children();
    let envoys: Vec<u32> = children
        .iter()
        .copied()
        .filter(|&p| comm(p).contains("envoy"))
        .collect();
    assert!(
        !envoys.is_empty(),
        "expected an Envoy among gatewright's descendants; found {:?}",
        children.iter().map(|&p| (p, comm(p))).collect::<Vec<_>>()
    );

    w.gw.proc.signal(libc::SIGTERM);
    let t = Instant::now();
    let status =
        w.gw.proc
            .wait_timeout(Duration::from_secs(15))
            .unwrap_or_else(|| {
                panic!(
                    "gatewright did not exit within 15 s of SIGTERM; log:\n{}",
                    w.gw.log_tail(40)
                )
            });
    println!(
        "gatewright exited {:?} after SIGTERM with {status}",
        t.elapsed()
    );
    assert!(
        status.success(),
        "gatewright should exit 0 on SIGTERM; got {status}; log:\n{}",
        w.gw.log_tail(40)
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while envoys.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
    let left: Vec<_> = envoys.iter().filter(|&&p| alive(p)).collect();
    assert!(
        left.is_empty(),
        "Envoy children {left:?} still run after gatewright exited"
    );
    let refused = tokio::net::TcpStream::connect(w.addr(w.port)).await;
    assert!(
        refused.is_err(),
        "the Gateway's port {} still accepts connections after shutdown",
        w.addr(w.port)
    );
}

// ---------------------------------------------------------------------------
// 12. ProxyParameters on the host: Envoy's options apply, the rest is refused.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_parameters_apply_on_the_host() {
    let (envoy, _slot) = begin("proxy_parameters_apply_on_the_host", Slot::Shared).await;
    let gateway_with_parameters = |info: &WorldInfo| {
        gateway(info.ip, &[http_listener("http", info.port)]).replace(
            "spec:\n  gatewayClassName: gatewright\n",
            "spec:\n  gatewayClassName: gatewright\n  infrastructure:\n    parametersRef:\n      \
             group: gatewright.dev\n      kind: ProxyParameters\n      name: tuned\n",
        )
    };
    let w = World::start(&envoy, 12, &["echo"], &[], |i| {
        vec![
            (
                "gateway.yaml".into(),
                docs(&[gateway_class(), gateway_with_parameters(i)]),
            ),
            (
                "params.yaml".into(),
                proxy_parameters("  envoy:\n    logLevel: debug\n    concurrency: 2\n"),
            ),
            ("backends.yaml".into(), i.backend("echo", "echo")),
            ("route.yaml".into(), http_route("web", &to_service("echo"))),
        ]
    });
    w.gw.wait_ready().await;
    let c = plain_client();
    let base = w.base();
    w.gw.wait("traffic through the Gateway", async || {
        served_by(&c, &format!("{base}/"), &[], "echo").await
    })
    .await;
    let (first_pid, args) =
        w.gw.wait("Envoy's command line", async || envoy_cmdline(&w.gw).await)
            .await;
    assert_eq!(flag(&args, "--log-level"), Some("debug"), "{args:?}");
    assert_eq!(flag(&args, "--concurrency"), Some("2"), "{args:?}");

    // A changed log level restarts the Envoy with it, and traffic returns.
    w.gw.write(
        "params.yaml",
        &proxy_parameters("  envoy:\n    logLevel: warning\n"),
    );
    let (_, args) =
        w.gw.wait("Envoy restarted with the new log level", async || {
            let (pid, args) = envoy_cmdline(&w.gw).await?;
            match flag(&args, "--log-level") {
                Some("warning") if pid != first_pid => Ok((pid, args)),
                other => Err(format!("pid {pid}, --log-level {other:?}")),
            }
        })
        .await;
    // Unset concurrency falls back to the host's default (`gatewright run
    // --envoy-concurrency`, 1), not the old value.
    assert_eq!(flag(&args, "--concurrency"), Some("1"), "{args:?}");
    w.gw.wait("traffic after the restart", async || {
        served_by(&c, &format!("{base}/"), &[], "echo").await
    })
    .await;

    // A Deployment cannot be made on the host: the Gateway says so and no
    // Envoy serves it, rather than running one Envoy as if asked for two.
    w.gw.write(
        "params.yaml",
        &proxy_parameters("  deployment:\n    replicas: 2\n"),
    );
    let message =
        w.gw.wait("Gateway Programmed=False/Invalid", async || {
            let status =
                w.gw.status_file("Gateway", "default", "gw")
                    .ok_or("no status")?;
            match condition(&status, "Programmed") {
                Some((s, r)) if s == "False" && r == "Invalid" => Ok(format!("{status:?}")),
                other => Err(format!("Programmed is {other:?}")),
            }
        })
        .await;
    assert!(message.contains("spec.deployment"), "{message}");
    w.gw.wait("the Envoy stopped", async || {
        match envoy_cmdline(&w.gw).await {
            Err(e) if e.contains("found pids []") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// 13. Timeouts: 504 when exceeded, no cut-off without them.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeouts_and_none_by_default() {
    let (envoy, _slot) = begin("route_timeouts_and_none_by_default", Slot::Shared).await;
    let rules = "  - matches:
    - path:
        type: PathPrefix
        value: /request
    timeouts:
      request: 500ms
    backendRefs:
    - name: echo
      port: 8080
  - matches:
    - path:
        type: PathPrefix
        value: /attempt
    timeouts:
      backendRequest: 500ms
    backendRefs:
    - name: echo
      port: 8080
  - backendRefs:
    - name: echo
      port: 8080
";
    let w = World::http(
        &envoy,
        13,
        &[("echo", "echo")],
        &[("route.yaml", http_route("web", rules))],
    );
    w.gw.wait_ready().await;
    let c = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client");
    let base = w.base();
    w.gw.wait("traffic through the Gateway", async || {
        served_by(&c, &format!("{base}/request"), &[], "echo").await
    })
    .await;
    for path in ["/request", "/attempt"] {
        let t = Instant::now();
        let r = get(&c, &format!("{base}{path}?delay=3s"), &[])
            .await
            .expect("a response");
        assert_eq!(r.status, 504, "{path} with a 3 s backend: {}", r.summary());
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{path}: the 500 ms timeout answered only after {:?}",
            t.elapsed()
        );
    }
    // Envoy's default would answer 504 after 15 s; a rule without timeouts
    // waits for the backend.
    let t = Instant::now();
    let r = served_by(&c, &format!("{base}/plain?delay=16s"), &[], "echo")
        .await
        .expect("a 16 s request without a timeout is served");
    assert!(t.elapsed() >= Duration::from_secs(16), "{}", r.summary());
}

// ---------------------------------------------------------------------------
// 14. CORS: preflights answered by Envoy, origins matched as the spec says.

/// A CORS preflight for `path` from `origin` asking for `method`.
async fn preflight(c: &reqwest::Client, url: &str, origin: &str, method: &str) -> Reply {
    let req = c
        .request(reqwest::Method::OPTIONS, url)
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header("access-control-request-headers", "x-token");
    send(req).await.expect("a preflight answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_and_simple_requests() {
    let (envoy, _slot) = begin("cors_preflights_and_simple_requests", Slot::Shared).await;
    let rules = "  - matches:
    - path:
        type: PathPrefix
        value: /api
    filters:
    - type: CORS
      cors:
        allowOrigins:
        - https://app.example.com
        - https://*.example.org
        allowMethods: [GET, PUT]
        allowHeaders: [x-token]
        exposeHeaders: [x-echo-backend]
        allowCredentials: true
        maxAge: 60
    backendRefs:
    - name: echo
      port: 8080
";
    let w = World::http(
        &envoy,
        14,
        &[("echo", "echo")],
        &[("route.yaml", http_route("web", rules))],
    );
    w.gw.wait_ready().await;
    let c = plain_client();
    let url = format!("{}/api", w.base());
    w.gw.wait("traffic through the Gateway", async || {
        served_by(&c, &url, &[], "echo").await
    })
    .await;

    // Allowed origins, exact and through the wildcard (several labels, and
    // the default port written out): Envoy answers, the backend never sees
    // the preflight.
    for origin in [
        "https://app.example.com",
        "https://deep.sub.example.org",
        "https://app.example.com:443",
    ] {
        let r = preflight(&c, &url, origin, "PUT").await;
        assert!(matches!(r.status, 200 | 204), "{origin}: {}", r.summary());
        assert_eq!(
            r.backend(),
            "",
            "{origin}: the preflight reached the backend"
        );
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        assert_eq!(r.header("access-control-max-age"), Some("60"));
        let methods = r.header("access-control-allow-methods").unwrap_or("");
        assert!(methods.contains("PUT"), "{origin}: methods {methods:?}");
    }
    // A refused origin: no CORS headers, and still not forwarded.
    for origin in [
        "https://evil.example.com",
        "https://example.org",
        "http://app.example.com",
    ] {
        let r = preflight(&c, &url, origin, "PUT").await;
        assert_eq!(
            r.header("access-control-allow-origin"),
            None,
            "{origin}: {r:?}"
        );
        assert_eq!(
            r.backend(),
            "",
            "{origin}: a refused preflight reached the backend"
        );
    }
    // Simple requests reach the backend; only allowed origins get headers.
    let r = get(&c, &url, &[("origin", "https://x.example.org")])
        .await
        .expect("a response");
    assert_eq!((r.status, r.backend()), (200, "echo"), "{}", r.summary());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://x.example.org")
    );
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("x-echo-backend")
    );
    let r = get(&c, &url, &[("origin", "https://evil.example.com")])
        .await
        .expect("a response");
    assert_eq!((r.status, r.backend()), (200, "echo"), "{}", r.summary());
    assert_eq!(r.header("access-control-allow-origin"), None);
}

// ---------------------------------------------------------------------------
// 15. Per-backend filters under a weighted split.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_filters_follow_their_backend() {
    let (envoy, _slot) = begin("backend_filters_follow_their_backend", Slot::Shared).await;
    let backend = |svc: &str| {
        format!(
            "    - name: {svc}
      port: 8080
      weight: 1
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier:
          set:
          - name: x-chosen
            value: {svc}
"
        )
    };
    let rules = format!(
        "  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set:
        - name: x-chosen
          value: rule
    backendRefs:
{}{}",
        backend("alpha"),
        backend("beta")
    );
    let w = World::http(
        &envoy,
        15,
        &[("alpha", "alpha"), ("beta", "beta")],
        &[("route.yaml", http_route("web", &rules))],
    );
    w.gw.wait_ready().await;
    let c = plain_client();
    let url = format!("{}/", w.base());
    w.gw.wait("traffic through the Gateway", async || {
        served_by(&c, &url, &[], "alpha").await
    })
    .await;
    // Each backend sees only its own value, which beats the rule's.
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..40 {
        let r = get(&c, &url, &[]).await.expect("a response");
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(
            r.echoed_header("x-chosen").as_deref(),
            Some(r.backend()),
            "backend {} got another backend's header: {}",
            r.backend(),
            r.summary()
        );
        *seen.entry(r.backend().to_owned()).or_default() += 1;
    }
    assert_eq!(
        seen.keys().map(String::as_str).collect::<Vec<_>>(),
        ["alpha", "beta"],
        "a 1:1 split over 40 requests reaches both backends: {seen:?}"
    );
}

// ---------------------------------------------------------------------------
// 16. Programmed means acknowledged.

/// The Gateway's Programmed condition as (status, reason, message).
fn programmed(gw: &Gatewright) -> Result<(String, String, String), String> {
    let s = gw
        .status_file("Gateway", "default", "gw")
        .ok_or("no status file Gateway/default/gw.yaml yet")?;
    let c = s
        .get("conditions")
        .and_then(|c| c.as_sequence())
        .into_iter()
        .flatten()
        .find(|c| c.get("type").and_then(|t| t.as_str()) == Some("Programmed"))
        .ok_or("no Programmed condition")?;
    let field = |k: &str| c.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
    Ok((field("status"), field("reason"), field("message")))
}

/// A process stopped with SIGSTOP until dropped (SIGCONT), so a failing
/// test never leaves it stopped.
struct Stopped(libc::pid_t);

impl Stopped {
    fn new(pid: u32) -> Self {
        let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is
        // the Envoy this test's gatewright runs.
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGSTOP) },
            0,
            "SIGSTOP {pid}"
        );
        Self(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as in `Stopped::new`.
        unsafe {
            libc::kill(self.0, libc::SIGCONT);
        }
    }
}

/// A Gateway is Programmed only while its Envoy has acknowledged the
/// current configuration. With the Envoy stopped (SIGSTOP) a route change
/// cannot reach it, and the Gateway says Programmed=False/Pending; resumed,
/// the Envoy takes the change and the Gateway is Programmed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programmed_waits_for_the_envoys_acknowledgement() {
    let (envoy, _slot) = begin(
        "programmed_waits_for_the_envoys_acknowledgement",
        Slot::Shared,
    )
    .await;
    let route = |svc: &str| http_route("acked", &prefix_rule("/acked", svc, ""));
    let w = World::http(
        &envoy,
        70,
        &[("svc-one", "one"), ("svc-two", "two")],
        &[("route.yaml", route("svc-one"))],
    );
    w.gw.wait_ready().await;
    let c = plain_client();
    let url = format!("{}/acked", w.base());
    w.gw.wait("/acked on svc-one", async || {
        served_by(&c, &url, &[], "one").await
    })
    .await;
    w.gw.wait("Programmed=True", async || match programmed(&w.gw)? {
        (s, r, _) if s == "True" && r == "Programmed" => Ok(()),
        other => Err(format!("Programmed is {other:?}")),
    })
    .await;

    let (pid, _) = envoy_cmdline(&w.gw).await.expect("the Envoy's pid");
    let stopped = Stopped::new(pid);
    w.gw.write("route.yaml", &route("svc-two"));
    let (_, _, message) =
        w.gw.wait(
            "Programmed=False/Pending while the Envoy is stopped",
            async || match programmed(&w.gw)? {
                (s, r, m) if s == "False" && r == "Pending" => Ok((s, r, m)),
                other => Err(format!("Programmed is {other:?}")),
            },
        )
        .await;
    println!("while stopped: {message}");
    assert!(
        message.contains("acknowledge"),
        "the message does not say what is awaited: {message}"
    );

    drop(stopped);
    w.gw.wait("/acked on svc-two after the Envoy resumed", async || {
        served_by(&c, &url, &[], "two").await
    })
    .await;
    w.gw.wait("Programmed=True again", async || match programmed(&w.gw)? {
        (s, r, _) if s == "True" && r == "Programmed" => Ok(()),
        other => Err(format!("Programmed is {other:?}")),
    })
    .await;
}

/// The value of the counter whose name ends in `suffix` in `/metrics`.
async fn metric(gw: &Gatewright, suffix: &str) -> Result<u64, String> {
    let (code, body) = gw.admin_get("/metrics").await?;
    if code != 200 {
        return Err(format!("/metrics answered {code}"));
    }
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.split_once(' ')?;
            name.ends_with(suffix).then(|| value.trim().parse().ok())?
        })
        .ok_or_else(|| format!("no metric *{suffix} in /metrics"))
}

/// When Envoy rejects a Gateway's configuration, the Gateway says
/// Programmed=False/Invalid with Envoy's message and the NACK metric
/// counts it, while the Envoy keeps serving what it accepted before; the
/// next configuration it accepts makes the Gateway Programmed again. The
/// rejection is one only Envoy can know of: a new listener's port is
/// already taken on the host (by this test), so Envoy cannot bind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_rejection_shows_in_programmed() {
    let (envoy, _slot) = begin("an_envoy_rejection_shows_in_programmed", Slot::Shared).await;
    let w = World::http(
        &envoy,
        71,
        &[("svc-one", "one")],
        &[(
            "route.yaml",
            http_route("nacked", &prefix_rule("/nacked", "svc-one", "")),
        )],
    );
    w.gw.wait_ready().await;
    let c = plain_client();
    let url = format!("{}/nacked", w.base());
    w.gw.wait("/nacked on svc-one", async || {
        served_by(&c, &url, &[], "one").await
    })
    .await;
    w.gw.wait("Programmed=True", async || match programmed(&w.gw)? {
        (s, _, _) if s == "True" => Ok(()),
        other => Err(format!("Programmed is {other:?}")),
    })
    .await;
    let nacks_before = metric(&w.gw, "xds_nacks_total").await.expect("metric");

    let taken = w.addr(w.port + 1);
    let _occupier = std::net::TcpListener::bind(taken).expect("binding the port to take");
    let two = [
        http_listener("http", w.port),
        http_listener("taken", w.port + 1),
    ];
    let ip = w.ip;
    w.gw.write("gateway.yaml", &docs(&[gateway_class(), gateway(ip, &two)]));
    let (_, _, message) =
        w.gw.wait(
            "Programmed=False/Invalid with Envoy's message",
            async || match programmed(&w.gw)? {
                (s, r, m) if s == "False" && r == "Invalid" => Ok((s, r, m)),
                other => Err(format!("Programmed is {other:?}")),
            },
        )
        .await;
    println!("rejected: {message}");
    assert!(
        message.contains("Envoy rejected") && message.contains(&taken.to_string()),
        "the message does not carry Envoy's reason: {message}"
    );
    let nacks = metric(&w.gw, "xds_nacks_total").await.expect("metric");
    assert!(nacks > nacks_before, "xds_nacks_total stayed at {nacks}");
    // What Envoy accepted before keeps serving.
    served_by(&c, &url, &[], "one")
        .await
        .expect("the first listener still serves");

    let one = [http_listener("http", w.port)];
    w.gw.write("gateway.yaml", &docs(&[gateway_class(), gateway(ip, &one)]));
    w.gw.wait("Programmed=True again", async || match programmed(&w.gw)? {
        (s, _, _) if s == "True" => Ok(()),
        other => Err(format!("Programmed is {other:?}")),
    })
    .await;
    served_by(&c, &url, &[], "one")
        .await
        .expect("the first listener serves");
}

// ---------------------------------------------------------------------------
// 17. Traffic survives the control plane: Envoys outlive a crash of
// gatewright and the next one adopts them.

/// Envoy's `listener_manager.*` counters and gauges from its admin /stats.
async fn listener_stats(admin: &str) -> Result<std::collections::BTreeMap<String, u64>, String> {
    let body = plain_client()
        .get(format!("http://{admin}/stats?filter=^listener_manager%5C."))
        .send()
        .await
        .map_err(|e| format!("Envoy admin /stats: {e}"))?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    Ok(body
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(": ")?;
            Some((name.to_owned(), value.trim().parse().ok()?))
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn envoys_survive_a_crash_and_are_adopted() {
    let (envoy, _slot) = begin("envoys_survive_a_crash_and_are_adopted", Slot::Exclusive).await;
    let route = |svc: &str| http_route("web", &prefix_rule("/", svc, ""));
    let mut w = World::http(
        &envoy,
        90,
        &[("svc-a", "a"), ("svc-b", "b")],
        &[("route.yaml", route("svc-a"))],
    );
    w.gw.wait_ready().await;
    let c = plain_client();
    let url = format!("{}/", w.base());
    w.gw.wait("/ on svc-a", async || served_by(&c, &url, &[], "a").await)
        .await;
    let (pid, admin, adopted) =
        w.gw.wait("the Envoy in /debug/status", async || {
            envoy_entry(&w.gw).await
        })
        .await;
    assert!(!adopted, "the first gatewright started its Envoy itself");
    let before = listener_stats(&admin).await.expect("Envoy listener stats");

    // Constant load, bounded in count and time; every answer is counted.
    const MAX_REQUESTS: u64 = 50_000;
    const MAX_TIME: Duration = Duration::from_secs(60);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (stop, sent, ok, failures, url) = (
            stop.clone(),
            sent.clone(),
            ok.clone(),
            failures.clone(),
            url.clone(),
        );
        clients.push(tokio::spawn(async move {
            let c = plain_client();
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_TIME {
                if sent.fetch_add(1, Ordering::Relaxed) >= MAX_REQUESTS {
                    break;
                }
                match get(&c, &url, &[]).await {
                    Ok(r) if r.status == 200 && ["a", "b"].contains(&r.backend()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures.lock().unwrap().push(format!(
                        "GET / at {:?}: {}",
                        started.elapsed(),
                        r.summary()
                    )),
                    Err(e) => failures
                        .lock()
                        .unwrap()
                        .push(format!("GET / at {:?}: {e}", started.elapsed())),
                }
                // About 200 requests a second per client: constant load
                // that the cap lets last the whole test.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    let load_started = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The crash: nothing of gatewright runs after SIGKILL.
    w.gw.crash();
    let ok_at_crash = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ok_while_down = ok.load(Ordering::Relaxed) - ok_at_crash;
    assert!(alive(pid), "the Envoy died with gatewright");
    assert!(
        ok_while_down > 100,
        "only {ok_while_down} requests were answered in the 3 s without gatewright"
    );
    println!("survive: {ok_while_down} requests answered while gatewright was down");

    // The next gatewright, on the same config and state dir, adopts it.
    let t = Instant::now();
    println!("survive: restart at {:?}", load_started.elapsed());
    w.gw.restart(w.dir.path(), &envoy, &[]);
    w.gw.wait_ready().await;
    let (pid_after, _, adopted) =
        w.gw.wait("the adopted Envoy in /debug/status", async || {
            envoy_entry(&w.gw).await
        })
        .await;
    assert_eq!(pid_after, pid, "the Envoy was replaced rather than adopted");
    assert!(adopted, "/debug/status should say the Envoy was adopted");
    assert!(
        !w.gw.note_children().contains(&pid),
        "the adopted Envoy cannot be a child of the new gatewright"
    );

    // A change after the restart reaches the adopted Envoy over xDS.
    println!("survive: route change at {:?}", load_started.elapsed());
    w.gw.write("route.yaml", &route("svc-b"));
    w.gw.wait("/ to move to svc-b", async || {
        served_by(&c, &url, &[], "b").await
    })
    .await;
    println!("survive: restart to served change in {:?}", t.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for h in clients {
        h.await.expect("a load client panicked");
    }
    let total = sent.load(Ordering::Relaxed).min(MAX_REQUESTS);
    let answered = ok.load(Ordering::Relaxed);
    let failures = std::mem::take(&mut *failures.lock().unwrap());
    println!(
        "survive: {total} requests in {:?}, {answered} answered by a backend, {} failures",
        load_started.elapsed(),
        failures.len()
    );
    assert!(
        total < MAX_REQUESTS,
        "the load hit its cap of {MAX_REQUESTS} requests before the test was over"
    );
    assert!(
        failures.is_empty(),
        "expected zero failed requests over the crash, the adoption and the change; got {}:\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(answered, total, "every request must have been answered");

    // No listener was drained, modified or removed by the adoption.
    let after = listener_stats(&admin).await.expect("Envoy listener stats");
    for stat in [
        "listener_manager.listener_modified",
        "listener_manager.listener_removed",
        "listener_manager.listener_added",
    ] {
        assert_eq!(
            after.get(stat),
            before.get(stat),
            "{stat} moved: before {before:?}, after {after:?}"
        );
    }
    assert_eq!(
        after.get("listener_manager.total_listeners_draining"),
        Some(&0),
        "{after:?}"
    );

    // A clean shutdown still drains and stops the adopted Envoy, and
    // clears the records.
    w.gw.proc.signal(libc::SIGTERM);
    let status =
        w.gw.proc
            .wait_timeout(Duration::from_secs(15))
            .expect("gatewright exits within 15 s of SIGTERM");
    assert!(status.success(), "gatewright exited with {status}");
    let deadline = Instant::now() + Duration::from_secs(2);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
    assert!(
        !alive(pid),
        "the adopted Envoy still runs after a clean shutdown"
    );
    let records = envoy_records(&w.gw.state_dir);
    assert!(
        records.is_empty(),
        "records left after a clean shutdown: {records:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_record_is_neither_adopted_nor_signalled() {
    let (envoy, _slot) = begin(
        "a_stale_record_is_neither_adopted_nor_signalled",
        Slot::Shared,
    )
    .await;
    let mut w = World::http(
        &envoy,
        91,
        &[("echo", "echo")],
        &[("route.yaml", http_route("web", &to_service("echo")))],
    );
    w.gw.wait_ready().await;
    let c = plain_client();
    let url = format!("{}/", w.base());
    w.gw.wait("traffic", async || served_by(&c, &url, &[], "echo").await)
        .await;
    let (pid, _, _) =
        w.gw.wait("the Envoy in /debug/status", async || {
            envoy_entry(&w.gw).await
        })
        .await;

    // gatewright crashes, then its Envoy goes too (killed by us, which
    // started it), and the pid in its record is now another process's. Its
    // start time is even copied, so only the command line tells them apart.
    w.gw.crash();
    // SAFETY: kill(2) on the Envoy this test's gatewright started.
    unsafe {
        libc::kill(libc::pid_t::try_from(pid).expect("pid"), libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
    assert!(!alive(pid), "the Envoy did not die of SIGKILL");
    let mut sleep_cmd = std::process::Command::new("sleep");
    sleep_cmd.arg("300");
    let sleeper = spawn_proc(sleep_cmd, "sleep", w.dir.path().join("sleep.log"));
    let sleeper_pid = sleeper.pid();
    let mut records = envoy_records(&w.gw.state_dir);
    assert_eq!(
        records.len(),
        1,
        "expected one Envoy record after the crash"
    );
    let (record_path, mut record) = records.pop().expect("one record");
    record["pid"] = sleeper_pid.into();
    record["start_time"] = start_time(sleeper_pid).expect("sleep's start time").into();
    std::fs::write(&record_path, record.to_string()).expect("rewriting the record");

    w.gw.restart(w.dir.path(), &envoy, &[]);
    w.gw.wait_ready().await;
    w.gw.wait("traffic after the restart", async || {
        served_by(&c, &url, &[], "echo").await
    })
    .await;
    let (new_pid, _, adopted) =
        w.gw.wait("the new Envoy in /debug/status", async || {
            envoy_entry(&w.gw).await
        })
        .await;
    assert!(!adopted, "the stale record's process was adopted");
    assert_ne!(new_pid, sleeper_pid);
    assert!(
        w.gw.note_children().contains(&new_pid),
        "the new Envoy should be a child of the new gatewright"
    );
    assert!(
        w.gw.log_tail(200).contains("forgetting the recorded Envoy"),
        "gatewright should say why it did not adopt; log:\n{}",
        w.gw.log_tail(40)
    );
    let records = envoy_records(&w.gw.state_dir);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].1["pid"].as_u64(), Some(u64::from(new_pid)));

    // Nor does a clean shutdown touch it.
    w.gw.proc.signal(libc::SIGTERM);
    let status =
        w.gw.proc
            .wait_timeout(Duration::from_secs(15))
            .expect("gatewright exits within 15 s of SIGTERM");
    assert!(status.success(), "gatewright exited with {status}");
    assert!(
        alive(sleeper_pid),
        "the process behind the stale record was signalled"
    );
    assert!(
        !alive(new_pid),
        "the new Envoy still runs after a clean shutdown"
    );
    drop(sleeper);
}
