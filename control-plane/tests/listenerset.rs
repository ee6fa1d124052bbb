//! End-to-end tests of ListenerSets in standalone mode: a real `gatewright
//! run`, its Envoy, `gatewright-echo` backends and certificates made here,
//! all on loopback.
//!
//! - an infrastructure Gateway with an HTTP listener, and two teams' sets in
//!   their own namespaces each adding an HTTPS listener on one shared port
//!   with its own certificate and hostname; a set the Gateway does not allow
//!   is not served;
//! - adding and removing a set under load costs the other listeners of the
//!   port no request.

// Each test binary uses its own part of the shared helpers.
#[allow(dead_code)]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use support::*;

/// Namespace `name`, labelled so the Gateway's selector admits it when
/// `admitted`.
fn namespace(name: &str, admitted: bool) -> String {
    let label = if admitted {
        "\n    listeners: admitted"
    } else {
        ""
    };
    format!(
        "apiVersion: v1
kind: Namespace
metadata:
  name: {name}
  labels:
    kubernetes.io/metadata.name: {name}{label}
"
    )
}

/// Gateway `default/gw` on `ip` admitting ListenerSets from namespaces
/// labelled `listeners: admitted`, with `listeners`.
fn infra_gateway(ip: std::net::Ipv4Addr, listeners: &[String]) -> String {
    gateway(ip, listeners).replace(
        "spec:\n  gatewayClassName: gatewright\n",
        "spec:
  gatewayClassName: gatewright
  allowedListeners:
    namespaces:
      from: Selector
      selector:
        matchLabels:
          listeners: admitted
",
    )
}

/// ListenerSet `ns/set` for Gateway default/gw with one HTTPS listener
/// `web` on `port` for `hostname`, serving Secret `ns/cert`.
fn https_set(ns: &str, port: u16, hostname: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata:
  name: set
  namespace: {ns}
spec:
  parentRef:
    name: gw
    namespace: default
  listeners:
  - name: web
    port: {port}
    protocol: HTTPS
    hostname: {hostname}
    tls:
      certificateRefs:
      - name: cert
"
    )
}

/// A kubernetes.io/tls Secret `ns/cert`.
fn team_secret(ns: &str, cert: &ServerCert) -> String {
    tls_secret("cert", &cert.cert_pem, &cert.key_pem)
        .replace("namespace: default", &format!("namespace: {ns}"))
}

/// HTTPRoute `ns/web` attached to ListenerSet `ns/set`, everything to
/// Service `ns/app`.
fn set_route(ns: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: web
  namespace: {ns}
spec:
  parentRefs:
  - group: gateway.networking.k8s.io
    kind: ListenerSet
    name: set
  rules:
  - backendRefs:
    - name: app
      port: 8080
"
    )
}

/// The set of one team: its namespace, certificate, set, route and
/// backend, as one file.
fn team_file(info: &WorldInfo, ns: &str, admitted: bool, port: u16, cert: &ServerCert) -> String {
    docs(&[
        namespace(ns, admitted),
        team_secret(ns, cert),
        https_set(ns, port, &format!("{ns}.ls.test")),
        set_route(ns),
        service_for("app", ns, info.echoes[ns], None),
    ])
}

/// The status condition `type_` of a status file, as (status, reason).
fn status_condition(
    gw: &Gatewright,
    kind: &str,
    ns: &str,
    name: &str,
    type_: &str,
) -> Result<(String, String), String> {
    let status = gw
        .status_file(kind, ns, name)
        .ok_or_else(|| format!("no status file for {kind} {ns}/{name} yet"))?;
    condition(&status, type_).ok_or_else(|| {
        format!(
            "{kind} {ns}/{name} has no {type_} condition: {}",
            yaml_summary(&status)
        )
    })
}

// ---------------------------------------------------------------------------
// 1. Teams' sets share an HTTPS port; a set that is not allowed is not served.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_sets_share_an_https_port_with_their_own_certificates() {
    let (envoy, _slot) = begin(
        "team_sets_share_an_https_port_with_their_own_certificates",
        Slot::Shared,
    )
    .await;
    let certs = tempfile::tempdir().expect("temp dir");
    // Each team has its own CA: a client trusting one team's CA only
    // completes a handshake with that team's certificate.
    let pki_a = Pki::new();
    let pki_b = Pki::new();
    let pki_c = Pki::new();
    let cert_a = pki_a.server_cert(certs.path(), "team-a.ls.test");
    let cert_b = pki_b.server_cert(certs.path(), "team-b.ls.test");
    let cert_c = pki_c.server_cert(certs.path(), "team-c.ls.test");
    let w = World::start(
        &envoy,
        30,
        &["infra", "team-a", "team-b", "team-c"],
        &[],
        |i| {
            let shared = i.port + 1;
            vec![
                (
                    "gateway.yaml".into(),
                    docs(&[
                        gateway_class(),
                        infra_gateway(i.ip, &[http_listener("http", i.port)]),
                        i.backend("infra", "infra"),
                        http_route("infra", &to_service("infra")),
                    ]),
                ),
                (
                    "team-a.yaml".into(),
                    team_file(i, "team-a", true, shared, &cert_a),
                ),
                (
                    "team-b.yaml".into(),
                    team_file(i, "team-b", true, shared, &cert_b),
                ),
                // Not admitted by the Gateway's selector, on a port of its
                // own so that a stray listener would show.
                (
                    "team-c.yaml".into(),
                    team_file(i, "team-c", false, i.port + 2, &cert_c),
                ),
            ]
        },
    );
    w.gw.wait_ready().await;
    let shared = w.port + 1;
    let addr = w.addr(shared);

    // Each team's hostname reaches its backend over its own certificate.
    for (team, pki, cert) in [("team-a", &pki_a, &cert_a), ("team-b", &pki_b, &cert_b)] {
        let host = format!("{team}.ls.test");
        let c = tls_client(&pki.ca_pem, &host, addr);
        let url = format!("https://{host}:{shared}/hello");
        w.gw.wait(&format!("{host} served by {team}"), async || {
            served_by(&c, &url, &[], team).await
        })
        .await;
        let der = served_certificate(addr, &host, &pki.ca_pem)
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        assert_eq!(
            der,
            pem_der(&cert.cert_pem),
            "SNI {host} must get {team}'s own certificate"
        );
    }
    // The other team's CA does not vouch for a team's hostname: the
    // certificates are not shared.
    let crossed = served_certificate(addr, "team-a.ls.test", &pki_b.ca_pem).await;
    assert!(
        crossed.is_err(),
        "team-a.ls.test must not be served with a certificate team-b's CA signed"
    );

    // The Gateway's own HTTP listener is unaffected.
    let plain = plain_client();
    let url = format!("{}/infra", w.base());
    w.gw.wait("the Gateway's HTTP listener served by infra", async || {
        served_by(&plain, &url, &[], "infra").await
    })
    .await;

    // Statuses: two sets accepted, the third not allowed.
    for team in ["team-a", "team-b"] {
        let got = status_condition(&w.gw, "ListenerSet", team, "set", "Accepted");
        assert_eq!(
            got,
            Ok(("True".into(), "Accepted".into())),
            "ListenerSet {team}/set"
        );
    }
    w.gw.wait(
        "team-c/set to be NotAllowed",
        async || match status_condition(&w.gw, "ListenerSet", "team-c", "set", "Accepted")? {
            (s, r) if s == "False" && r == "NotAllowed" => Ok(()),
            other => Err(format!("team-c/set Accepted is {other:?}")),
        },
    )
    .await;
    let gw_status =
        w.gw.status_file("Gateway", "default", "gw")
            .expect("Gateway status");
    assert_eq!(
        gw_status
            .get("attachedListenerSets")
            .and_then(serde_yaml::Value::as_i64),
        Some(2),
        "attachedListenerSets counts the two accepted sets: {}",
        yaml_summary(&gw_status)
    );

    // Nothing listens for the set that is not allowed.
    let refused = tokio::net::TcpStream::connect(w.addr(w.port + 2)).await;
    assert!(
        refused.is_err(),
        "port {} of the set that is not allowed must not be open",
        w.port + 2
    );
    // Nor is its hostname served on the shared port: the handshake finds
    // no certificate for it that team-c's CA signed.
    let stray = served_certificate(addr, "team-c.ls.test", &pki_c.ca_pem).await;
    assert!(
        stray.is_err(),
        "team-c.ls.test must not be served on the shared port"
    );

    // When both teams' sets go, the port only they used closes, and the
    // Gateway's own listener keeps serving.
    w.gw.write("team-a.yaml", "");
    w.gw.write("team-b.yaml", "");
    w.gw.wait(
        "the shared port to close",
        async || match tokio::net::TcpStream::connect(addr).await {
            Err(_) => Ok(()),
            Ok(_) => Err(format!("port {shared} still accepts connections")),
        },
    )
    .await;
    served_by(&plain, &url, &[], "infra")
        .await
        .unwrap_or_else(|e| panic!("after the sets went: {e}"));
}

// ---------------------------------------------------------------------------
// 2. Sets come and go under load without costing the port's other listeners
//    a request.

/// Sends requests to `url` with `client` until `stop`, counting answers
/// that are not 2xx from `backend` (failed requests included).
async fn load(
    client: reqwest::Client,
    url: String,
    backend: &'static str,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    bad: Arc<AtomicU64>,
) -> Vec<String> {
    let mut problems = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match get(&client, &url, &[]).await {
            Ok(r) if (200..300).contains(&r.status) && r.backend() == backend => {
                ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) => {
                bad.fetch_add(1, Ordering::Relaxed);
                problems.push(r.summary());
            }
            Err(e) => {
                bad.fetch_add(1, Ordering::Relaxed);
                problems.push(e);
            }
        }
        // Bounded load: a steady trickle, not a flood on a shared machine.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_and_removing_a_set_costs_the_port_no_request() {
    let (envoy, _slot) = begin(
        "adding_and_removing_a_set_costs_the_port_no_request",
        Slot::Exclusive,
    )
    .await;
    let certs = tempfile::tempdir().expect("temp dir");
    let pki = Pki::new();
    let cert_gw = pki.server_cert(certs.path(), "gw.ls.test");
    let cert_a = pki.server_cert(certs.path(), "team-a.ls.test");
    let cert_b = pki.server_cert(certs.path(), "team-b.ls.test");
    // team-b's file, written and emptied while the load runs.
    let mut b_file = String::new();
    let w = World::start(&envoy, 31, &["infra", "team-a", "team-b"], &[], |i| {
        b_file = team_file(i, "team-b", true, i.port, &cert_b);
        vec![
            (
                "gateway.yaml".into(),
                docs(&[
                    gateway_class(),
                    infra_gateway(
                        i.ip,
                        &[https_listener("https", i.port, "gw.ls.test", "gw-cert")],
                    ),
                    tls_secret("gw-cert", &cert_gw.cert_pem, &cert_gw.key_pem),
                    i.backend("infra", "infra"),
                    http_route("infra", &to_service("infra")),
                ]),
            ),
            (
                "team-a.yaml".into(),
                team_file(i, "team-a", true, i.port, &cert_a),
            ),
        ]
    });
    w.gw.wait_ready().await;
    let port = w.port;
    let addr = w.addr(port);
    let url_of = |host: &str| format!("https://{host}:{port}/load");
    let gw_client = tls_client(&pki.ca_pem, "gw.ls.test", addr);
    let a_client = tls_client(&pki.ca_pem, "team-a.ls.test", addr);
    let b_client = tls_client(&pki.ca_pem, "team-b.ls.test", addr);
    for (c, host, backend) in [
        (&gw_client, "gw.ls.test", "infra"),
        (&a_client, "team-a.ls.test", "team-a"),
    ] {
        let url = url_of(host);
        w.gw.wait(&format!("{host} served"), async || {
            served_by(c, &url, &[], backend).await
        })
        .await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for (c, host, backend) in [
        (&gw_client, "gw.ls.test", "infra"),
        (&a_client, "team-a.ls.test", "team-a"),
    ] {
        for _ in 0..2 {
            workers.push(tokio::spawn(load(
                c.clone(),
                url_of(host),
                backend,
                stop.clone(),
                ok.clone(),
                bad.clone(),
            )));
        }
    }

    // Twice: team-b's set arrives (a new filter chain on the port), is
    // served, and goes (its chain is removed), while the load runs.
    let b_url = url_of("team-b.ls.test");
    for round in 0..2 {
        w.gw.write("team-b.yaml", &b_file);
        w.gw.wait(&format!("round {round}: team-b served"), async || {
            served_by(&b_client, &b_url, &[], "team-b").await
        })
        .await;
        w.gw.write("team-b.yaml", "");
        w.gw.wait(
            &format!("round {round}: team-b gone"),
            async || match served_certificate(addr, "team-b.ls.test", &pki.ca_pem).await {
                Err(_) => Ok(()),
                Ok(_) => Err("team-b.ls.test still has its certificate".to_owned()),
            },
        )
        .await;
    }
    // Some more load after the last change, so a late drain would show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut problems = Vec::new();
    for wk in workers {
        problems.extend(wk.await.expect("load worker"));
    }
    let (ok, bad) = (ok.load(Ordering::Relaxed), bad.load(Ordering::Relaxed));
    eprintln!("load on the port's other listeners: {ok} answered 2xx, {bad} did not");
    assert!(ok > 100, "too little load to tell anything: {ok} requests");
    assert_eq!(
        bad,
        0,
        "adding and removing a set must cost the other listeners no request: {:?}",
        problems.iter().take(5).collect::<Vec<_>>()
    );
}
