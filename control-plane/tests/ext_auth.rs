//! End-to-end tests of the HTTPRoute `ExternalAuth` filter in standalone
//! mode: a real `gatewright run`, its Envoy, `gatewright-echo` backends and
//! two real authorization services written for these tests (HTTP, and
//! gRPC `envoy.service.auth.v3.Authorization`), all on loopback.
//!
//! Each test has its own Gateway address and ports (address blocks 60..),
//! apart from the other test files', so they all run in parallel.

// Shared with the other end-to-end tests; each binary uses only part of it.
#[allow(dead_code)]
mod support;

use support::authz::{AuthServer, Check, GOOD_TOKEN, start_grpc_auth, start_http_auth};
use support::*;

/// Service `default/name` port 8080 whose endpoint is the auth service.
fn auth_service(name: &str, auth: &AuthServer, app_protocol: Option<&str>) -> String {
    service_for(name, "default", auth.addr, app_protocol)
}

/// An ExternalAuth filter item (indented for [`prefix_rule`]) using
/// Service `svc` port 8080 with `protocol`, and `extra` (YAML lines
/// indented by eight: the `http`, `grpc` and `forwardBody` blocks).
fn ext_auth(protocol: &str, svc: &str, extra: &str) -> String {
    format!(
        "    - type: ExternalAuth
      externalAuth:
        protocol: {protocol}
        backendRef:
          name: {svc}
          port: 8080
{extra}"
    )
}

/// The last check `auth` received, or why there is none.
fn last_check(auth: &AuthServer) -> Result<Check, String> {
    auth.checks()
        .pop()
        .ok_or_else(|| "the auth service received no check".to_owned())
}

/// Sends `req` and expects `status` from Envoy or the auth service, never
/// from the echo backend.
async fn denied(req: reqwest::RequestBuilder, status: u16, what: &str) -> Result<Reply, String> {
    let r = send(req).await?;
    if r.status == status && r.backend().is_empty() {
        Ok(r)
    } else {
        Err(format!(
            "{what}: expected {status} without reaching the backend, got {}",
            r.summary()
        ))
    }
}

/// Sends `req` and expects the echo backend `echo`'s 200.
async fn served(req: reqwest::RequestBuilder, echo: &str, what: &str) -> Result<Reply, String> {
    let r = send(req).await?;
    if r.status == 200 && r.backend() == echo {
        Ok(r)
    } else {
        Err(format!(
            "{what}: expected 200 from {echo}, got {}",
            r.summary()
        ))
    }
}

/// A world with the echo backend `echo`, the auth Service file and
/// `routes`, once gatewright is ready; with a client and the base URL.
async fn start(
    envoy: &std::path::Path,
    n: u8,
    auth_yaml: String,
    routes: String,
) -> (World, reqwest::Client, String) {
    let w = World::http(
        envoy,
        n,
        &[("echo", "echo")],
        &[("auth.yaml", auth_yaml), ("routes.yaml", routes)],
    );
    w.gw.wait_ready().await;
    let base = w.base();
    (w, plain_client(), base)
}

/// `req` with the good token, `x-tenant: tenant` (a header the filters
/// below allow to the service) and `x-secret` (one none allows).
fn good(req: reqwest::RequestBuilder, tenant: &str) -> reqwest::RequestBuilder {
    req.header("authorization", GOOD_TOKEN)
        .header("x-tenant", tenant)
        .header("x-secret", "s3")
}

/// Waits until the request `req` makes is served by `echo` (the
/// configuration may still be on its way to Envoy).
async fn wait_served(w: &World, what: &str, req: impl Fn() -> reqwest::RequestBuilder) -> Reply {
    w.gw.wait(what, async || served(req(), "echo", what).await)
        .await
}

/// Waits until the request `req` makes is denied with 403.
async fn wait_denied(w: &World, what: &str, req: impl Fn() -> reqwest::RequestBuilder) -> Reply {
    w.gw.wait(what, async || denied(req(), 403, what).await)
        .await
}

/// HTTP protocol: a good token is allowed and a bad or missing one denied
/// with the service's own answer; the service gets the path with the
/// prefix, the headers always sent plus `allowedHeaders` and nothing else,
/// Content-Length 0 and no body without `forwardBody`, the body with it;
/// the backend gets `allowedResponseHeaders` only (or every header but the
/// framing ones when the list is empty); rules and routes without the
/// filter never call the service; a stopped service denies (403); an
/// auth backendRef that does not resolve fails closed (500).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_auth_service() {
    let (envoy, _slot) = begin("http_auth_service", Slot::Shared).await;
    let auth = start_http_auth().await;
    let auth_yaml = auth_service("http-auth", &auth, None);
    let checked = ext_auth(
        "HTTP",
        "http-auth",
        "        http:
          path: /check
          allowedHeaders: [X-Tenant]
          allowedResponseHeaders: [x-user]
",
    );
    let with_body = ext_auth(
        "HTTP",
        "http-auth",
        "        http:
          path: /check
        forwardBody:
          maxSize: 8
",
    );
    // The CRD requires the http block with protocol HTTP, even empty.
    let defaults = ext_auth("HTTP", "http-auth", "        http: {}\n");
    let broken = ext_auth("HTTP", "missing", "        http: {}\n");
    let web = http_route(
        "web",
        &[
            prefix_rule("/secure", "echo", &checked),
            prefix_rule("/upload", "echo", &with_body),
            prefix_rule("/defaults", "echo", &defaults),
            prefix_rule("/public", "echo", ""),
        ]
        .concat(),
    );
    let open = http_route("open", &prefix_rule("/open", "echo", ""));
    let broken_route = http_route("broken", &prefix_rule("/broken", "echo", &broken));
    let (w, client, base) = start(&envoy, 60, auth_yaml, docs(&[web, open, broken_route])).await;
    let secure = format!("{base}/secure/page");

    // Allowed: the backend gets x-user (allowed) but not x-groups.
    let r = wait_served(&w, "a good token", || good(client.get(&secure), "t1")).await;
    assert_eq!(r.echoed_header("x-user").as_deref(), Some("alice"));
    assert_eq!(
        r.echoed_header("x-groups"),
        None,
        "not in allowedResponseHeaders"
    );
    assert_eq!(
        r.echoed_header("x-extra"),
        None,
        "not in allowedResponseHeaders"
    );
    let check = last_check(&auth).expect("the good request was checked");
    assert_eq!(check.path, "/check/secure/page", "path prefixed: {check:?}");
    assert_eq!(check.method, "GET");
    assert_eq!(
        check.headers.get("x-tenant").map(String::as_str),
        Some("t1")
    );
    assert_eq!(
        check.headers.get("authorization").map(String::as_str),
        Some(GOOD_TOKEN)
    );
    assert!(
        check.headers.contains_key("host"),
        "Host always sent: {check:?}"
    );
    assert!(
        !check.headers.contains_key("x-secret"),
        "a header not in allowedHeaders reached the auth service: {check:?}"
    );

    // Denied: the service's 403 and body reach the client, not the backend.
    let r = denied(
        client.get(&secure).header("authorization", "Bearer bad"),
        403,
        "bad token",
    )
    .await
    .expect("a bad token is denied");
    assert_eq!(r.body, "denied by http-auth");
    denied(client.get(&secure), 403, "no token")
        .await
        .expect("no token is denied");

    // Without forwardBody the service gets no body and Content-Length 0.
    let calls = auth.calls();
    served(
        client
            .post(&secure)
            .header("authorization", GOOD_TOKEN)
            .body("not for the auth service"),
        "echo",
        "POST without forwardBody",
    )
    .await
    .expect("POST with a good token is served");
    assert_eq!(auth.calls(), calls + 1);
    let check = last_check(&auth).expect("checked");
    assert!(
        check.body.is_empty(),
        "body sent without forwardBody: {check:?}"
    );
    assert_eq!(
        check.headers.get("content-length").map(String::as_str),
        Some("0"),
        "{check:?}"
    );

    // With forwardBody the service gets the body and its length; a body
    // over maxSize is refused (413) without asking the service.
    let upload = format!("{base}/upload");
    served(
        client
            .post(&upload)
            .header("authorization", GOOD_TOKEN)
            .body("12345"),
        "echo",
        "POST within maxSize",
    )
    .await
    .expect("a small body is served");
    let check = last_check(&auth).expect("checked");
    assert_eq!(check.body, b"12345", "{check:?}");
    assert_eq!(check.path, "/check/upload");
    assert_eq!(
        check.headers.get("content-length").map(String::as_str),
        Some("5"),
        "{check:?}"
    );
    let calls = auth.calls();
    denied(
        client
            .post(&upload)
            .header("authorization", GOOD_TOKEN)
            .body("123456789"),
        413,
        "POST over maxSize",
    )
    .await
    .expect("a body over maxSize is refused");
    assert_eq!(
        auth.calls(),
        calls,
        "a body over maxSize reached the service"
    );

    // An empty allowedResponseHeaders copies every header of the answer
    // except the framing ones: the request's own Content-Length survives.
    let r = served(
        client
            .post(format!("{base}/defaults"))
            .header("authorization", GOOD_TOKEN)
            .header("x-tenant", "t1")
            .body("abc"),
        "echo",
        "defaults",
    )
    .await
    .expect("defaults: a good token is served");
    assert_eq!(r.echoed_header("x-user").as_deref(), Some("alice"));
    assert_eq!(r.echoed_header("x-groups").as_deref(), Some("admins"));
    assert_eq!(r.echoed_header("x-extra").as_deref(), Some("not-forwarded"));
    assert_eq!(r.echoed_header("content-length").as_deref(), Some("3"));
    let check = last_check(&auth).expect("checked");
    assert!(
        !check.headers.contains_key("x-tenant"),
        "defaults send only the always-sent headers: {check:?}"
    );

    // Rules and routes without the filter never call the service.
    let calls = auth.calls();
    for path in ["/public", "/open"] {
        for _ in 0..3 {
            served(client.get(format!("{base}{path}")), "echo", path)
                .await
                .expect("a route without the filter is served without a token");
        }
    }
    assert_eq!(
        auth.calls(),
        calls,
        "a route without the filter called the service"
    );

    // A backendRef that does not resolve: status says so, requests get 500.
    w.gw.wait("broken route status", async || {
        let text = w.gw.status_file_text("HTTPRoute", "default", "broken");
        if text.contains("BackendNotFound") {
            Ok(())
        } else {
            Err(format!("no BackendNotFound in: {text}"))
        }
    })
    .await;
    denied(
        client
            .get(format!("{base}/broken"))
            .header("authorization", GOOD_TOKEN),
        500,
        "unresolved auth backend",
    )
    .await
    .expect("an unresolved auth backend fails closed");

    // The service stops: requests are denied, never let through.
    auth.stop();
    let calls = auth.calls();
    wait_denied(&w, "a stopped service denies", || {
        client.get(&secure).header("authorization", GOOD_TOKEN)
    })
    .await;
    assert_eq!(auth.calls(), calls);
    served(client.get(format!("{base}/open")), "echo", "open")
        .await
        .expect("routes without the filter are unaffected by the stopped service");
}

/// GRPC protocol (an auth Service without appProtocol: Gatewright speaks
/// HTTP/2 to it anyway): a good token is allowed and the service's headers
/// reach the backend; a bad one is denied with the service's status and
/// body; only `allowedHeaders` are sent; `forwardBody` sends the body and
/// refuses a longer one (413) without a check; a stopped service denies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_auth_service() {
    let (envoy, _slot) = begin("grpc_auth_service", Slot::Shared).await;
    let auth = start_grpc_auth().await;
    let auth_yaml = auth_service("grpc-auth", &auth, None);
    let filter = ext_auth(
        "GRPC",
        "grpc-auth",
        "        grpc:
          allowedHeaders: [authorization, x-tenant]
        forwardBody:
          maxSize: 16
",
    );
    let web = http_route(
        "web",
        &[
            prefix_rule("/secure", "echo", &filter),
            prefix_rule("/public", "echo", ""),
        ]
        .concat(),
    );
    let (w, client, base) = start(&envoy, 61, auth_yaml, web).await;
    let secure = format!("{base}/secure");

    let r = wait_served(&w, "a good token", || {
        good(client.post(&secure), "t2").body("hello")
    })
    .await;
    assert_eq!(r.echoed_header("x-user").as_deref(), Some("alice"));
    assert_eq!(r.echoed_header("x-groups").as_deref(), Some("admins"));
    let check = last_check(&auth).expect("checked");
    assert_eq!(check.body, b"hello", "{check:?}");
    assert_eq!(check.path, "/secure");
    assert_eq!(check.method, "POST");
    assert_eq!(
        check.headers.get("x-tenant").map(String::as_str),
        Some("t2")
    );
    assert!(
        !check.headers.contains_key("x-secret"),
        "a header not in allowedHeaders reached the auth service: {check:?}"
    );

    let r = denied(
        client
            .post(&secure)
            .header("authorization", "Bearer bad")
            .body("hello"),
        403,
        "bad token",
    )
    .await
    .expect("a bad token is denied");
    assert_eq!(r.body, "denied by grpc-auth");
    assert_eq!(r.header("x-auth-server"), Some("grpc"));

    let calls = auth.calls();
    denied(
        client
            .post(&secure)
            .header("authorization", GOOD_TOKEN)
            .body("seventeen bytes!!"),
        413,
        "body over maxSize",
    )
    .await
    .expect("a body over maxSize is refused");
    assert_eq!(
        auth.calls(),
        calls,
        "a body over maxSize reached the service"
    );

    for _ in 0..3 {
        served(client.get(format!("{base}/public")), "echo", "public")
            .await
            .expect("a rule without the filter is served");
    }
    assert_eq!(
        auth.calls(),
        calls,
        "a rule without the filter called the service"
    );

    auth.stop();
    wait_denied(&w, "a stopped service denies", || {
        client
            .post(&secure)
            .header("authorization", GOOD_TOKEN)
            .body("hello")
    })
    .await;
    assert_eq!(auth.calls(), calls);
}
