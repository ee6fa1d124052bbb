//! End-to-end tests of HTTPRoute retries (GEP-1731) and default Gateways
//! (GEP-3793) in standalone mode: a real `gatewright run`, its Envoy and
//! `gatewright-echo` backends, all on loopback.
//!
//! The echo backend counts the requests carrying a `key` and fails the
//! first `fail` of them, so each check uses its own key and the attempt
//! count the backend reports is exactly the number of tries Envoy made.

// Each test binary uses its own part of the shared helpers.
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use support::*;

/// The `attempt` the echo backend reported: how many requests with this
/// reply's key it had seen when answering.
fn attempt(r: &Reply) -> Option<u64> {
    r.json.as_ref()?.get("attempt")?.as_u64()
}

/// A rule for path prefix `path` to Service `echo`, with extra rule fields
/// (`retry`, `timeouts`) as YAML indented by four.
fn rule(path: &str, extra: &str) -> String {
    format!(
        "  - matches:
    - path:
        type: PathPrefix
        value: {path}
{extra}    backendRefs:
    - name: echo
      port: 8080
"
    )
}

/// Waits until `w`'s Gateway serves `path` from echo `echo`; returns the
/// client that saw it and the Gateway's base URL.
async fn until_served(w: &World, path: &str) -> (reqwest::Client, String) {
    w.gw.wait_ready().await;
    let c = plain_client();
    let base = w.base();
    w.gw.wait(&format!("{path} served"), async || {
        served_by(&c, &format!("{base}{path}"), &[], "echo").await
    })
    .await;
    (c, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_until_the_backend_recovers() {
    let (envoy, _slot) = begin("retries_until_the_backend_recovers", Slot::Shared).await;
    let rules = [
        rule(
            "/three",
            "    retry:
      codes:
      - 503
      attempts: 3
      backoff: 10ms
",
        ),
        rule(
            "/one",
            "    retry:
      codes:
      - 503
      attempts: 1
      backoff: 10ms
",
        ),
        rule(
            "/other-code",
            "    retry:
      codes:
      - 500
      attempts: 3
",
        ),
        // Each attempt may take 500 ms, the whole request 10 s: a slow
        // first attempt is cut off and retried.
        rule(
            "/per-try",
            "    timeouts:
      request: 10s
      backendRequest: 500ms
    retry:
      attempts: 2
",
        ),
        rule("/plain", ""),
    ]
    .concat();
    let w = World::http(
        &envoy,
        50,
        &[("echo", "echo")],
        &[("route.yaml", http_route("web", &rules))],
    );
    let (c, base) = until_served(&w, "/plain").await;

    // (request, status the client gets, attempts the backend saw).
    let checks = [
        // Two 503s, then success: three attempts, within the three retries.
        ("/three?key=three&fail=2", 200, 3),
        // One retry allowed: the client gets the second 503.
        ("/one?key=one&fail=2", 503, 2),
        // A code not listed is not retried.
        ("/other-code?key=other&fail=1", 503, 1),
        // Without retry, Envoy does not retry on its own.
        ("/plain?key=plain&fail=1", 503, 1),
    ];
    for (request, status, attempts) in checks {
        let r = get(&c, &format!("{base}{request}"), &[])
            .await
            .expect("a response");
        assert_eq!(
            (r.status, attempt(&r)),
            (status, Some(attempts)),
            "{request}: {}",
            r.summary()
        );
    }

    // backendRequest is per attempt: the first, 3 s slow, is cut off at
    // 500 ms and retried; the second answers at once. Without the per-try
    // timeout this would take 3 s; with backendRequest as the whole
    // request's timeout it would be a 504.
    let t = Instant::now();
    let r = get(&c, &format!("{base}/per-try?key=slow&slow=1&delay=3s"), &[])
        .await
        .expect("a response");
    let took = t.elapsed();
    assert_eq!(r.status, 200, "/per-try: {}", r.summary());
    assert_eq!(attempt(&r), Some(2), "/per-try: {}", r.summary());
    assert!(
        took < Duration::from_millis(2500),
        "/per-try answered after {took:?}: the slow attempt was not cut off"
    );
}

/// Gateway `default/gw` at `ip` with one HTTP listener on `port` and
/// `spec.defaultScope: All`.
fn default_gateway(ip: std::net::Ipv4Addr, port: u16) -> String {
    gateway(ip, &[http_listener("http", port)]).replacen(
        "spec:\n",
        "spec:\n  defaultScope: All\n",
        1,
    )
}

/// An HTTPRoute `default/name` for path prefix `path` to Service `echo`,
/// without parentRefs; `use_default` asks for default Gateways.
fn unparented_route(name: &str, path: &str, use_default: bool) -> String {
    let spec = if use_default {
        "  useDefaultGateways: All\n"
    } else {
        ""
    };
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: {name}
  namespace: default
spec:
{spec}  rules:
{}",
        rule(path, "")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_gateway_serves_and_reports_a_route() {
    let (envoy, _slot) = begin("default_gateway_serves_and_reports_a_route", Slot::Shared).await;
    let w = World::start(&envoy, 51, &["echo"], &[], |i| {
        vec![
            (
                "gateway.yaml".to_string(),
                docs(&[gateway_class(), default_gateway(i.ip, i.port)]),
            ),
            ("backends.yaml".to_string(), i.backend("echo", "echo")),
            (
                "routes.yaml".to_string(),
                docs(&[
                    unparented_route("web", "/web", true),
                    unparented_route("stray", "/stray", false),
                ]),
            ),
        ]
    });
    let (c, base) = until_served(&w, "/web").await;
    // A route that names no Gateway and does not ask for a default one is
    // bound to nothing.
    let r = get(&c, &format!("{base}/stray"), &[])
        .await
        .expect("a response");
    assert_eq!(r.status, 404, "/stray: {}", r.summary());

    // The binding shows in the route's status (its spec has no parentRefs).
    let parent =
        w.gw.wait("HTTPRoute web status naming Gateway gw", async || {
            let s =
                w.gw.status_file("HTTPRoute", "default", "web")
                    .ok_or("no status file HTTPRoute/default/web.yaml yet")?;
            let parents = s
                .get("parents")
                .and_then(|p| p.as_sequence())
                .ok_or_else(|| format!("no parents in {}", yaml_summary(&s)))?;
            match parents.as_slice() {
                [p] => Ok(p.clone()),
                _ => Err(format!("expected one parent: {}", yaml_summary(&s))),
            }
        })
        .await;
    let parent_ref = parent.get("parentRef").expect("a parentRef");
    assert_eq!(
        (
            parent_ref.get("kind").and_then(|v| v.as_str()),
            parent_ref.get("namespace").and_then(|v| v.as_str()),
            parent_ref.get("name").and_then(|v| v.as_str()),
        ),
        (Some("Gateway"), Some("default"), Some("gw")),
        "{}",
        yaml_summary(&parent)
    );
    assert_eq!(
        condition(&parent, "Accepted"),
        Some(("True".into(), "Accepted".into())),
        "{}",
        yaml_summary(&parent)
    );
    assert!(
        w.gw.status_file("HTTPRoute", "default", "stray").is_none()
            || w.gw
                .status_file_text("HTTPRoute", "default", "stray")
                .trim()
                .is_empty(),
        "HTTPRoute stray has a status: {}",
        w.gw.status_file_text("HTTPRoute", "default", "stray")
    );
    let gw =
        w.gw.status_file("Gateway", "default", "gw")
            .expect("status file Gateway/default/gw.yaml");
    assert_eq!(
        condition(&gw, "DefaultGateway"),
        Some(("True".into(), "DefaultGateway".into())),
        "{}",
        yaml_summary(&gw)
    );
}
