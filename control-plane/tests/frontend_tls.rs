//! End-to-end tests of the TLS features clients see, in standalone mode: a
//! real `gatewright run`, its Envoys, `gatewright-echo` backends and
//! certificates made here, all on loopback.
//!
//! - TLSRoute Terminate and Passthrough listeners on one port;
//! - client-certificate validation (strict, per port, insecure fallback);
//! - 421 for a request whose Host belongs to another HTTPS listener;
//! - a changed certificate reaching Envoy over SDS without a listener drain.

// Each test binary uses its own part of the shared helpers.
#[allow(dead_code)]
mod support;

use std::net::SocketAddr;

use support::*;

/// The gateway file: GatewayClass, Namespace and a Gateway whose spec gets
/// `spec_extra` (two-space indented YAML) before its listeners.
fn gateway_with(info: &WorldInfo, spec_extra: &str, listeners: &[String]) -> (String, String) {
    let gw = gateway(info.ip, listeners).replace(
        "spec:\n  gatewayClassName: gatewright\n",
        &format!("spec:\n  gatewayClassName: gatewright\n{spec_extra}"),
    );
    ("gateway.yaml".into(), docs(&[gateway_class(), gw]))
}

fn terminate_listener(name: &str, port: u16, hostname: &str, secret: &str) -> String {
    format!(
        "  - name: {name}
    port: {port}
    protocol: TLS
    hostname: {hostname}
    tls:
      mode: Terminate
      certificateRefs:
      - kind: Secret
        name: {secret}
"
    )
}

fn ca_config_map(name: &str, ca_pem: &str) -> String {
    let body: String = ca_pem.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1
kind: ConfigMap
metadata:
  name: {name}
  namespace: default
data:
  ca.crt: |
{body}"
    )
}

/// An HTTPS client trusting `ca_pem` for the Gateway, presenting
/// `identity` (certificate and key PEM) if given, HTTP/1.1 only so that the
/// Host header is sent as set.
fn client(
    ca_pem: &str,
    hostname: &str,
    addr: SocketAddr,
    identity: Option<&str>,
) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .timeout(std::time::Duration::from_secs(5))
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA pem"))
        .resolve(hostname, addr);
    if let Some(pem) = identity {
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("client identity"));
    }
    b.build().expect("building an HTTPS client")
}

// ---------------------------------------------------------------------------
// 1. TLS Terminate and Passthrough on one port.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_terminate_and_passthrough_share_a_port() {
    let (envoy, _slot) = begin("tls_terminate_and_passthrough_share_a_port", Slot::Shared).await;
    let certs = tempfile::tempdir().expect("temp dir");
    let pki = Pki::new();
    let term = pki.server_cert(certs.path(), "term.tls.test");
    let pass = pki.server_cert(certs.path(), "pass.tls.test");
    let w = World::start(
        &envoy,
        21,
        &["plain"],
        &[("tls-pass", &pass.cert_file, &pass.key_file)],
        |i| {
            vec![
                gateway_with(
                    i,
                    "",
                    &[
                        terminate_listener("term", i.port, "term.tls.test", "term-cert"),
                        passthrough_listener("pass", i.port),
                    ],
                ),
                (
                    "secret.yaml".into(),
                    tls_secret("term-cert", &term.cert_pem, &term.key_pem),
                ),
                (
                    "backends.yaml".into(),
                    docs(&[
                        i.backend("plain", "plain"),
                        i.backend("tls-pass", "tls-pass"),
                    ]),
                ),
                (
                    "routes.yaml".into(),
                    docs(&[
                        route("TLSRoute", "term", &["term.tls.test"], &to_service("plain")),
                        route(
                            "TLSRoute",
                            "pass",
                            &["pass.tls.test"],
                            &to_service("tls-pass"),
                        ),
                    ]),
                ),
            ]
        },
    );
    w.gw.wait_ready().await;
    // Terminated: Envoy's certificate (term.tls.test), plain HTTP to "plain".
    let c = client(&pki.ca_pem, "term.tls.test", w.addr(w.port), None);
    let url = format!("https://term.tls.test:{}/terminated", w.port);
    let r =
        w.gw.wait("SNI term.tls.test to reach plain", async || {
            served_by(&c, &url, &[], "plain").await
        })
        .await;
    let json = r.json.as_ref().expect("JSON");
    assert_eq!(
        json["tls"],
        serde_json::json!(false),
        "the backend of a terminated TLSRoute gets plain text: {}",
        r.body
    );
    // Passed through: the backend's own certificate and TLS.
    let c = client(&pki.ca_pem, "pass.tls.test", w.addr(w.port), None);
    let url = format!("https://pass.tls.test:{}/passed", w.port);
    let r =
        w.gw.wait("SNI pass.tls.test to reach tls-pass", async || {
            served_by(&c, &url, &[], "tls-pass").await
        })
        .await;
    let json = r.json.as_ref().expect("JSON");
    assert_eq!(json["tls"], serde_json::json!(true), "{}", r.body);

    let status =
        w.gw.status_file("Gateway", "default", "gw")
            .expect("status");
    for name in ["term", "pass"] {
        let l = listener_status(&status, name).expect("listener status");
        assert_eq!(
            condition(l, "Programmed"),
            Some(("True".into(), "Programmed".into())),
            "listener {name}: {l:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// 2. Client-certificate validation.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_validated_per_port() {
    let (envoy, _slot) = begin("client_certificates_are_validated_per_port", Slot::Shared).await;
    let certs = tempfile::tempdir().expect("temp dir");
    let servers = Pki::new();
    let clients = Pki::new();
    let strangers = Pki::new();
    let server = servers.server_cert(certs.path(), "app.mtls.test");
    let identity = |c: ServerCert| format!("{}{}", c.cert_pem, c.key_pem);
    let good = identity(clients.client_cert(certs.path(), "good-client"));
    let stranger = identity(strangers.client_cert(certs.path(), "stranger"));
    let validation = |mode: &str| {
        format!(
            "validation:
          mode: {mode}
          caCertificateRefs:
          - group: \"\"
            kind: ConfigMap
            name: client-ca
"
        )
    };
    let w = World::start(&envoy, 22, &["echo"], &[], |i| {
        let frontend = format!(
            "  tls:
    frontend:
      default:
        {}      perPort:
      - port: {}
        tls:
          {}",
            validation("AllowValidOnly"),
            i.port + 1,
            validation("AllowInsecureFallback").replace("\n  ", "\n    "),
        );
        vec![
            gateway_with(
                i,
                &frontend,
                &[
                    https_listener("strict", i.port, "app.mtls.test", "server-cert"),
                    https_listener("fallback", i.port + 1, "app.mtls.test", "server-cert"),
                ],
            ),
            (
                "secret.yaml".into(),
                tls_secret("server-cert", &server.cert_pem, &server.key_pem),
            ),
            (
                "ca.yaml".into(),
                ca_config_map("client-ca", &clients.ca_pem),
            ),
            ("backends.yaml".into(), i.backend("echo", "echo")),
            ("route.yaml".into(), http_route("web", &to_service("echo"))),
        ]
    });
    w.gw.wait_ready().await;
    let strict = w.addr(w.port);
    let fallback = w.addr(w.port + 1);
    let url = |port: u16| format!("https://app.mtls.test:{port}/");

    // Strict port: a certificate from the trusted CA gets through...
    let c = client(&servers.ca_pem, "app.mtls.test", strict, Some(&good));
    w.gw.wait(
        "a trusted client certificate on the strict port",
        async || served_by(&c, &url(w.port), &[], "echo").await,
    )
    .await;
    // ...none, or one from another CA, does not even complete the handshake.
    for (what, identity) in [("no", None), ("an untrusted", Some(stranger.as_str()))] {
        let c = client(&servers.ca_pem, "app.mtls.test", strict, identity);
        let r = c.get(url(w.port)).send().await;
        assert!(
            r.is_err(),
            "{what} client certificate must be refused on the strict port; got {r:?}"
        );
    }
    // Insecure fallback: all three get through.
    for (what, identity) in [
        ("a trusted", Some(good.as_str())),
        ("no", None),
        ("an untrusted", Some(stranger.as_str())),
    ] {
        let c = client(&servers.ca_pem, "app.mtls.test", fallback, identity);
        w.gw.wait(
            &format!("{what} client certificate on the fallback port"),
            async || served_by(&c, &url(w.port + 1), &[], "echo").await,
        )
        .await;
    }
    let status =
        w.gw.status_file("Gateway", "default", "gw")
            .expect("status");
    assert_eq!(
        condition(&status, "InsecureFrontendValidationMode"),
        Some(("True".into(), "ConfigurationChanged".into())),
        "{status:?}"
    );

    // A CA reference that breaks fails closed: the strict listener stops
    // serving instead of serving unverified.
    w.gw.write("ca.yaml", "");
    w.gw.wait("the strict listener refused without its CA", async || {
        let status =
            w.gw.status_file("Gateway", "default", "gw")
                .ok_or("no status")?;
        let l = listener_status(&status, "strict").ok_or("no listener status")?;
        match condition(l, "Accepted") {
            Some((s, r)) if s == "False" && r == "NoValidCACertificate" => Ok(()),
            other => Err(format!("Accepted is {other:?}")),
        }
    })
    .await;
    w.gw.wait("no connection to the strict port", async || {
        let c = client(&servers.ca_pem, "app.mtls.test", strict, Some(&good));
        match c.get(url(w.port)).send().await {
            Err(_) => Ok(()),
            Ok(r) => Err(format!("still served: {}", r.status())),
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// 3. 421 Misdirected Request.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_of_another_https_listener_gets_421() {
    let (envoy, _slot) = begin("a_host_of_another_https_listener_gets_421", Slot::Shared).await;
    let certs = tempfile::tempdir().expect("temp dir");
    let pki = Pki::new();
    let a = pki.server_cert(certs.path(), "a.misdirect.test");
    let b = pki.server_cert(certs.path(), "b.misdirect.test");
    let w = World::start(&envoy, 23, &["alpha", "beta"], &[], |i| {
        let section = |name: &str, listener: &str, svc: &str| {
            route("HTTPRoute", name, &[], &to_service(svc)).replace(
                "  - name: gw\n",
                &format!("  - name: gw\n    sectionName: {listener}\n"),
            )
        };
        vec![
            gateway_with(
                i,
                "",
                &[
                    https_listener("a", i.port, "a.misdirect.test", "a-cert"),
                    https_listener("b", i.port, "b.misdirect.test", "b-cert"),
                ],
            ),
            (
                "secrets.yaml".into(),
                docs(&[
                    tls_secret("a-cert", &a.cert_pem, &a.key_pem),
                    tls_secret("b-cert", &b.cert_pem, &b.key_pem),
                ]),
            ),
            (
                "backends.yaml".into(),
                docs(&[i.backend("alpha", "alpha"), i.backend("beta", "beta")]),
            ),
            (
                "routes.yaml".into(),
                docs(&[section("to-a", "a", "alpha"), section("to-b", "b", "beta")]),
            ),
        ]
    });
    w.gw.wait_ready().await;
    let addr = w.addr(w.port);
    let c = client(&pki.ca_pem, "a.misdirect.test", addr, None);
    let url = format!("https://a.misdirect.test:{}/", w.port);
    w.gw.wait("SNI and Host a.misdirect.test reach alpha", async || {
        served_by(&c, &url, &[], "alpha").await
    })
    .await;
    // Same connection parameters (SNI a.misdirect.test), Host of listener b.
    let r = get(&c, &url, &[("host", "b.misdirect.test")])
        .await
        .expect("a response");
    assert_eq!(
        r.status,
        421,
        "Host of listener b over SNI a: {}",
        r.summary()
    );
    // A Host no listener has is not misdirected (no other connection would
    // serve it): plain 404.
    let r = get(&c, &url, &[("host", "nobody.misdirect.test")])
        .await
        .expect("a response");
    assert_eq!(r.status, 404, "unknown Host over SNI a: {}", r.summary());
    let c = client(&pki.ca_pem, "b.misdirect.test", addr, None);
    let url = format!("https://b.misdirect.test:{}/", w.port);
    w.gw.wait("SNI and Host b.misdirect.test reach beta", async || {
        served_by(&c, &url, &[], "beta").await
    })
    .await;
}

// ---------------------------------------------------------------------------
// 4. Certificate rotation over SDS.

/// One counter of the Envoy gatewright runs, from its admin stats.
async fn envoy_counter(gw: &Gatewright, name: &str) -> Result<u64, String> {
    let (_, body) = gw.admin_get("/debug/status").await?;
    let status: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    let admin = status["envoys"][0]["admin"]
        .as_str()
        .ok_or("no Envoy admin address yet")?
        .to_owned();
    let text = plain_client()
        .get(format!("http://{admin}/stats?filter=^{name}$"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .ok_or_else(|| format!("no {name} in {text:?}"))?
        .trim()
        .parse()
        .map_err(|e| format!("{name}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_certificate_is_served_without_a_listener_drain() {
    let (envoy, _slot) = begin(
        "a_changed_certificate_is_served_without_a_listener_drain",
        Slot::Shared,
    )
    .await;
    let certs = tempfile::tempdir().expect("temp dir");
    let pki = Pki::new();
    let first = pki.server_cert(certs.path(), "rotate.sds.test");
    let w = World::start(&envoy, 24, &["echo"], &[], |i| {
        vec![
            gateway_with(
                i,
                "",
                &[https_listener("https", i.port, "rotate.sds.test", "cert")],
            ),
            (
                "secret.yaml".into(),
                tls_secret("cert", &first.cert_pem, &first.key_pem),
            ),
            ("backends.yaml".into(), i.backend("echo", "echo")),
            ("route.yaml".into(), http_route("web", &to_service("echo"))),
        ]
    });
    w.gw.wait_ready().await;
    let addr = w.addr(w.port);
    let c = client(&pki.ca_pem, "rotate.sds.test", addr, None);
    let url = format!("https://rotate.sds.test:{}/", w.port);
    w.gw.wait("traffic with the first certificate", async || {
        served_by(&c, &url, &[], "echo").await
    })
    .await;
    assert_eq!(
        served_certificate(addr, "rotate.sds.test", &pki.ca_pem).await,
        Ok(pem_der(&first.cert_pem))
    );
    let counters = [
        "listener_manager.listener_modified",
        "listener_manager.listener_removed",
    ];
    let mut before = Vec::new();
    for name in counters {
        before.push(
            w.gw.wait(&format!("Envoy counter {name}"), async || {
                envoy_counter(&w.gw, name).await
            })
            .await,
        );
    }

    // A new certificate (same name, same CA) in the Secret.
    let second_dir = tempfile::tempdir().expect("temp dir");
    let second = pki.server_cert(second_dir.path(), "rotate.sds.test");
    assert_ne!(pem_der(&first.cert_pem), pem_der(&second.cert_pem));
    w.gw.write(
        "secret.yaml",
        &tls_secret("cert", &second.cert_pem, &second.key_pem),
    );
    let want = pem_der(&second.cert_pem);
    w.gw.wait("new connections see the new certificate", async || {
        let got = served_certificate(addr, "rotate.sds.test", &pki.ca_pem).await?;
        if got == want {
            Ok(())
        } else {
            Err("still the old certificate".to_owned())
        }
    })
    .await;
    served_by(&c, &url, &[], "echo")
        .await
        .expect("traffic with the new certificate");
    for (name, before) in counters.into_iter().zip(before) {
        let after = envoy_counter(&w.gw, name).await.expect("counter");
        assert_eq!(
            after, before,
            "{name} changed from {before} to {after}: the listener was replaced, not just its secret"
        );
    }
}
