//! End-to-end tests of upstream TLS in standalone mode: BackendTLSPolicy
//! and the Gateway's backend client certificate, with a real `gatewright
//! run`, its Envoy, and `gatewright-echo` backends serving TLS with
//! certificates made here, all on loopback.
//!
//! Each test has its own Gateway address and ports (address blocks 40..),
//! apart from those of `e2e.rs`, so both files' tests run in parallel.

// Shared with e2e.rs; each test binary uses only part of it.
#[allow(dead_code)]
mod support;

use std::ffi::OsStr;
use std::net::SocketAddr;

use support::*;

/// A BackendTLSPolicy `default/name` for Service `service`: `hostname`,
/// the CA ConfigMap `ca` (the system CAs when None), and `sans` as YAML
/// list items indented by four (or "").
fn policy(name: &str, service: &str, hostname: &str, ca: Option<&str>, sans: &str) -> String {
    let ca = ca.map_or_else(
        || "    wellKnownCACertificates: System\n".to_owned(),
        |ca| {
            format!(
                "    caCertificateRefs:
    - group: \"\"
      kind: ConfigMap
      name: {ca}
"
            )
        },
    );
    let sans = if sans.is_empty() {
        String::new()
    } else {
        format!("    subjectAltNames:\n{sans}")
    };
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata:
  name: {name}
  namespace: default
spec:
  targetRefs:
  - group: \"\"
    kind: Service
    name: {service}
  validation:
{ca}    hostname: {hostname}
{sans}"
    )
}

/// A ConfigMap `default/name` whose `ca.crt` is `pem`.
fn ca_config_map(name: &str, pem: &str) -> String {
    let mut y = format!(
        "apiVersion: v1
kind: ConfigMap
metadata:
  name: {name}
  namespace: default
data:
  ca.crt: |
"
    );
    for line in pem.lines() {
        y.push_str("    ");
        y.push_str(line);
        y.push('\n');
    }
    y
}

/// A rule sending path prefix `path` to Service `svc` port 8080.
fn rule(path: &str, svc: &str) -> String {
    prefix_rule(path, svc, "")
}

/// A TLS echo backend with `cert`, requiring a client certificate signed by
/// `client_ca` (a PEM file) when given.
fn tls_echo(
    dir: &std::path::Path,
    name: &str,
    cert: &ServerCert,
    client_ca: Option<&std::path::Path>,
) -> Echo {
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("--tls-cert"),
        cert.cert_file.as_os_str(),
        OsStr::new("--tls-key"),
        cert.key_file.as_os_str(),
    ];
    if let Some(ca) = client_ca {
        args.push(OsStr::new("--tls-client-ca"));
        args.push(ca.as_os_str());
    }
    start_echo_with(dir, name, &args)
}

/// GET `url` expecting a 5xx (Envoy's answer when it cannot reach the
/// backend safely), not a backend's answer.
async fn refused(client: &reqwest::Client, url: &str) -> Result<Reply, String> {
    let r = get(client, url, &[]).await?;
    if (500..600).contains(&r.status) && r.backend().is_empty() {
        Ok(r)
    } else {
        Err(format!(
            "GET {url}: expected a 5xx from Envoy, got {}",
            r.summary()
        ))
    }
}

/// The (status, reason) of condition `type_` of policy `name` for Gateway
/// `gw`, from its status file.
fn policy_condition(w: &World, name: &str, type_: &str) -> Result<(String, String), String> {
    let status =
        w.gw.status_file("BackendTLSPolicy", "default", name)
            .ok_or_else(|| format!("no status file for BackendTLSPolicy {name} yet"))?;
    let ancestor = ancestor_status(&status, "gw")
        .ok_or_else(|| format!("no ancestor gw in {}", yaml_summary(&status)))?;
    condition(&ancestor, type_)
        .ok_or_else(|| format!("no {type_} condition in {}", yaml_summary(&ancestor)))
}

/// Waits until policy `name` has condition `type_` = (status, reason).
async fn wait_policy(w: &World, name: &str, type_: &str, status: &str, reason: &str) {
    w.gw.wait(&format!("{name} {type_}={status}/{reason}"), async || {
        let got = policy_condition(w, name, type_)?;
        if got == (status.to_string(), reason.to_string()) {
            Ok(())
        } else {
            Err(format!("{type_} is {got:?}"))
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// 1. Hostname verification, SNI, CA, and an invalid policy failing closed.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_verifies_hostname_and_ca_and_fails_closed() {
    let (envoy, _slot) = begin(
        "policy_verifies_hostname_and_ca_and_fails_closed",
        Slot::Shared,
    )
    .await;
    let certs = tempfile::tempdir().expect("a temp dir");
    let pki = Pki::new();
    let other_pki = Pki::new();
    let host = "api.btls.test";
    let cert = pki.server_cert(certs.path(), host);
    let secure = tls_echo(certs.path(), "secure", &cert, None);
    // Plain HTTP: if an invalid policy fell back to plaintext, this backend
    // would answer 200.
    let plain = start_echo_with(certs.path(), "plain", &[]);
    let (secure_addr, plain_addr): (SocketAddr, SocketAddr) = (secure.addr, plain.addr);
    let w = World::start(&envoy, 40, &[], &[], |i| {
        vec![
            (
                "gateway.yaml".into(),
                docs(&[
                    gateway_class(),
                    gateway(i.ip, &[http_listener("http", i.port)]),
                ]),
            ),
            (
                "backends.yaml".into(),
                docs(&[
                    service_for("svc-ok", "default", secure_addr, None),
                    service_for("svc-wrong-host", "default", secure_addr, None),
                    service_for("svc-wrong-ca", "default", secure_addr, None),
                    service_for("svc-invalid", "default", plain_addr, None),
                    ca_config_map("test-ca", &pki.ca_pem),
                    ca_config_map("other-ca", &other_pki.ca_pem),
                ]),
            ),
            (
                "policies.yaml".into(),
                docs(&[
                    policy("ok", "svc-ok", host, Some("test-ca"), ""),
                    policy(
                        "wrong-host",
                        "svc-wrong-host",
                        "other.btls.test",
                        Some("test-ca"),
                        "",
                    ),
                    policy("wrong-ca", "svc-wrong-ca", host, Some("other-ca"), ""),
                    policy("invalid", "svc-invalid", host, Some("missing-ca"), ""),
                ]),
            ),
            (
                "route.yaml".into(),
                http_route(
                    "web",
                    &[
                        rule("/ok", "svc-ok"),
                        rule("/wrong-host", "svc-wrong-host"),
                        rule("/wrong-ca", "svc-wrong-ca"),
                        rule("/invalid", "svc-invalid"),
                    ]
                    .concat(),
                ),
            ),
        ]
    });
    w.gw.wait_ready().await;
    let c = plain_client();
    let base = w.base();

    let r =
        w.gw.wait("the verified TLS backend to answer", async || {
            served_by(&c, &format!("{base}/ok"), &[], "secure").await
        })
        .await;
    let json = r.json.as_ref().expect("JSON");
    assert_eq!(json["tls"], true, "the backend must be reached over TLS");
    assert_eq!(
        json["sni"], host,
        "Envoy must send the policy's hostname as SNI; got {}",
        r.body
    );
    assert_eq!(
        json["client_cert"],
        serde_json::Value::Null,
        "no client certificate is configured"
    );

    // A certificate for another name, or signed by an untrusted CA, is
    // refused: the request fails instead of reaching the backend.
    for path in ["/wrong-host", "/wrong-ca"] {
        w.gw.wait(&format!("{path} to be refused"), async || {
            refused(&c, &format!("{base}{path}")).await
        })
        .await;
    }

    // A policy whose CA does not resolve: 500, never plaintext.
    let r =
        w.gw.wait("the invalid policy's backend to get 500", async || {
            let r = get(&c, &format!("{base}/invalid"), &[]).await?;
            if r.status == 500 {
                Ok(r)
            } else {
                Err(format!("expected 500, got {}", r.summary()))
            }
        })
        .await;
    assert_eq!(
        r.backend(),
        "",
        "the plaintext backend must not be reached: {}",
        r.summary()
    );

    wait_policy(&w, "ok", "Accepted", "True", "Accepted").await;
    wait_policy(&w, "ok", "ResolvedRefs", "True", "ResolvedRefs").await;
    wait_policy(&w, "invalid", "Accepted", "False", "NoValidCACertificate").await;
    wait_policy(
        &w,
        "invalid",
        "ResolvedRefs",
        "False",
        "InvalidCACertificateRef",
    )
    .await;

    // Giving the policy its CA makes Envoy try the backend, over TLS only:
    // the plaintext backend fails the handshake (503, upstream connect
    // error) instead of the direct 500 of an invalid policy.
    w.gw.write(
        "backends-late.yaml",
        &docs(&[ca_config_map("missing-ca", &pki.ca_pem)]),
    );
    wait_policy(&w, "invalid", "Accepted", "True", "Accepted").await;
    w.gw.wait(
        "the now-valid policy to try TLS, not plaintext",
        async || {
            let r = refused(&c, &format!("{base}/invalid")).await?;
            if r.status == 503 {
                Ok(())
            } else {
                Err(format!(
                    "expected 503 (TLS handshake failed), got {}",
                    r.summary()
                ))
            }
        },
    )
    .await;
}

// ---------------------------------------------------------------------------
// 2. Subject alternative names replace the hostname in verification.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_subject_alt_names() {
    let (envoy, _slot) = begin("policy_subject_alt_names", Slot::Shared).await;
    let certs = tempfile::tempdir().expect("a temp dir");
    let pki = Pki::new();
    // The certificate does not name the SNI the policies send.
    let cert = pki.server_cert_with_sans(
        certs.path(),
        "san",
        "san backend",
        &["san.btls.test"],
        &["spiffe://btls.test/ns/default/sa/echo"],
    );
    let echo = tls_echo(certs.path(), "san", &cert, None);
    let addr = echo.addr;
    let sni = "sni.btls.test";
    let w = World::start(&envoy, 41, &[], &[], |i| {
        vec![
            (
                "gateway.yaml".into(),
                docs(&[
                    gateway_class(),
                    gateway(i.ip, &[http_listener("http", i.port)]),
                ]),
            ),
            (
                "backends.yaml".into(),
                docs(&[
                    service_for("svc-dns", "default", addr, None),
                    service_for("svc-uri", "default", addr, None),
                    service_for("svc-mismatch", "default", addr, None),
                    service_for("svc-hostname-only", "default", addr, None),
                    ca_config_map("test-ca", &pki.ca_pem),
                ]),
            ),
            (
                "policies.yaml".into(),
                docs(&[
                    policy(
                        "dns",
                        "svc-dns",
                        sni,
                        Some("test-ca"),
                        "    - type: Hostname\n      hostname: san.btls.test\n",
                    ),
                    policy(
                        "uri",
                        "svc-uri",
                        sni,
                        Some("test-ca"),
                        "    - type: URI\n      uri: spiffe://btls.test/ns/default/sa/echo\n",
                    ),
                    policy(
                        "mismatch",
                        "svc-mismatch",
                        "san.btls.test",
                        Some("test-ca"),
                        "    - type: URI\n      uri: spiffe://btls.test/ns/default/sa/other\n",
                    ),
                    // Without SANs the hostname is verified, and the
                    // certificate does not have it.
                    policy(
                        "hostname-only",
                        "svc-hostname-only",
                        sni,
                        Some("test-ca"),
                        "",
                    ),
                ]),
            ),
            (
                "route.yaml".into(),
                http_route(
                    "web",
                    &[
                        rule("/dns", "svc-dns"),
                        rule("/uri", "svc-uri"),
                        rule("/mismatch", "svc-mismatch"),
                        rule("/hostname-only", "svc-hostname-only"),
                    ]
                    .concat(),
                ),
            ),
        ]
    });
    w.gw.wait_ready().await;
    let c = plain_client();
    let base = w.base();
    for path in ["/dns", "/uri"] {
        let r =
            w.gw.wait(&format!("{path} to be served over TLS"), async || {
                served_by(&c, &format!("{base}{path}"), &[], "san").await
            })
            .await;
        let json = r.json.as_ref().expect("JSON");
        assert_eq!(json["tls"], true);
        assert_eq!(
            json["sni"], sni,
            "the hostname is still the SNI when SANs are given: {}",
            r.body
        );
    }
    // A SAN the certificate does not have fails even though the hostname
    // (san.btls.test) is in the certificate: SANs replace the hostname.
    for path in ["/mismatch", "/hostname-only"] {
        w.gw.wait(&format!("{path} to be refused"), async || {
            refused(&c, &format!("{base}{path}")).await
        })
        .await;
    }
    for name in ["dns", "uri", "mismatch", "hostname-only"] {
        wait_policy(&w, name, "Accepted", "True", "Accepted").await;
    }
}

// ---------------------------------------------------------------------------
// 3. The Gateway's client certificate, presented to a backend that demands
// one; an unresolved reference fails closed.

/// Gateway `default/gw` on `ip` with one HTTP listener and the backend
/// client certificate Secret `secret`.
fn gateway_with_client_cert(ip: std::net::Ipv4Addr, port: u16, secret: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: gw
  namespace: default
spec:
  gatewayClassName: gatewright
  addresses:
  - type: IPAddress
    value: {ip}
  listeners:
{}  tls:
    backend:
      clientCertificateRef:
        kind: Secret
        name: {secret}
",
        http_listener("http", port)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_client_certificate_presented() {
    let (envoy, _slot) = begin("gateway_client_certificate_presented", Slot::Shared).await;
    let certs = tempfile::tempdir().expect("a temp dir");
    let pki = Pki::new();
    let client_pki = Pki::new();
    let host = "mtls.btls.test";
    let cert = pki.server_cert(certs.path(), host);
    let client = client_pki.client_cert(certs.path(), "gatewright-gw-client");
    let client_ca = certs.path().join("client-ca.pem");
    std::fs::write(&client_ca, &client_pki.ca_pem).expect("writing the client CA");
    let echo = tls_echo(certs.path(), "mtls", &cert, Some(&client_ca));
    let addr = echo.addr;
    let w = World::start(&envoy, 42, &[], &[], |i| {
        vec![
            (
                "gateway.yaml".into(),
                docs(&[
                    gateway_class(),
                    gateway_with_client_cert(i.ip, i.port, "gw-client"),
                ]),
            ),
            (
                "backends.yaml".into(),
                docs(&[
                    service_for("svc-mtls", "default", addr, None),
                    ca_config_map("test-ca", &pki.ca_pem),
                    tls_secret("gw-client", &client.cert_pem, &client.key_pem),
                    policy("mtls", "svc-mtls", host, Some("test-ca"), ""),
                ]),
            ),
            (
                "route.yaml".into(),
                http_route("web", &to_service("svc-mtls")),
            ),
        ]
    });
    w.gw.wait_ready().await;
    let c = plain_client();
    let url = format!("{}/hello", w.base());
    let r =
        w.gw.wait(
            "the backend requiring a client certificate to answer",
            async || served_by(&c, &url, &[], "mtls").await,
        )
        .await;
    let json = r.json.as_ref().expect("JSON");
    let seen = json["client_cert"].as_str().unwrap_or("");
    assert!(
        seen.contains("CN=gatewright-gw-client"),
        "the backend should have seen the Gateway's client certificate; saw {seen:?} in {}",
        r.body
    );
    assert_eq!(json["sni"], host);
    w.gw.wait("Gateway ResolvedRefs=True", async || {
        let s =
            w.gw.status_file("Gateway", "default", "gw")
                .ok_or("no Gateway status yet")?;
        match condition(&s, "ResolvedRefs") {
            Some((st, r)) if st == "True" && r == "ResolvedRefs" => Ok(()),
            other => Err(format!("ResolvedRefs is {other:?}")),
        }
    })
    .await;

    // Point the Gateway at a Secret that does not exist: it reports it and
    // its TLS backends get 500 rather than a connection without the
    // certificate.
    w.gw.write(
        "gateway.yaml",
        &docs(&[
            gateway_class(),
            gateway_with_client_cert(w.ip, w.port, "no-such-secret"),
        ]),
    );
    w.gw.wait(
        "Gateway ResolvedRefs=False/InvalidClientCertificateRef",
        async || {
            let s =
                w.gw.status_file("Gateway", "default", "gw")
                    .ok_or("no Gateway status yet")?;
            let resolved = condition(&s, "ResolvedRefs");
            let accepted = condition(&s, "Accepted");
            match (resolved, accepted) {
                (Some((rs, rr)), Some((a, _)))
                    if rs == "False" && rr == "InvalidClientCertificateRef" && a == "True" =>
                {
                    Ok(())
                }
                other => Err(format!("(ResolvedRefs, Accepted) is {other:?}")),
            }
        },
    )
    .await;
    w.gw.wait("TLS backend requests to get 500", async || {
        let r = get(&c, &url, &[]).await?;
        if r.status == 500 && r.backend().is_empty() {
            Ok(())
        } else {
            Err(format!("expected 500 from Envoy, got {}", r.summary()))
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// 4. `wellKnownCACertificates: System` trusts the file `--system-ca-file`
// names.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_ca_file_is_trusted_for_well_known_system() {
    let (envoy, _slot) = begin(
        "system_ca_file_is_trusted_for_well_known_system",
        Slot::Shared,
    )
    .await;
    let root = tempfile::Builder::new()
        .prefix("gatewright-btls-")
        .tempdir()
        .expect("a temp dir");
    let pki = Pki::new();
    let host = "system.btls.test";
    let cert = pki.server_cert(root.path(), host);
    let echo = tls_echo(root.path(), "system", &cert, None);
    // The test CA stands in for the host's bundle: the real one would not
    // trust it, so a 200 shows that the flag's file is what Envoy trusts.
    let bundle = root.path().join("system-ca.pem");
    std::fs::write(&bundle, &pki.ca_pem).expect("writing the CA bundle");
    let (ip, port) = address_block(43);
    let config = root.path().join("config");
    std::fs::create_dir_all(&config).expect("creating the config dir");
    std::fs::write(
        config.join("all.yaml"),
        docs(&[
            gateway_class(),
            gateway(ip, &[http_listener("http", port)]),
            service_for("svc-system", "default", echo.addr, None),
            policy("system", "svc-system", host, None, ""),
            http_route("web", &to_service("svc-system")),
        ]),
    )
    .expect("writing the config");
    let gw = Gatewright::start_with(
        root.path(),
        &envoy,
        &[OsStr::new("--system-ca-file"), bundle.as_os_str()],
    );
    gw.wait_ready().await;
    let c = plain_client();
    let url = format!("http://{ip}:{port}/");
    let r = gw
        .wait(
            "the backend trusted through the system CA file",
            async || served_by(&c, &url, &[], "system").await,
        )
        .await;
    let json = r.json.as_ref().expect("JSON");
    assert_eq!(json["tls"], true);
    assert_eq!(json["sni"], host);
}
