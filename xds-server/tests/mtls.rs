//! ADS over mutual TLS, with an authorizer deciding which node group a
//! client certificate may subscribe as.
//!
//! In-process: TLS clients (tokio-rustls) and gRPC clients over them talk
//! to [`TlsIncoming`] / [`serve_tls`] on loopback. With real Envoy processes
//! (`ENVOY_BIN`, else `.tools/envoy/bin/envoy`, else `PATH`): an Envoy with
//! the right client certificate gets its configuration, one with a
//! certificate for another group gets nothing, one without a certificate is
//! refused at the handshake.
//!
//! Certificates are made with rcgen in each test; every wait is bounded.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use gatewright_xds::{
    AdsServer, Authorizer, Cache, ConnectionInfo, PeerIdentity, ReloadableServerConfig, Resources,
    TlsIncoming, mtls_server_config, serve_tls, type_url,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::{Value, json};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Code;
use tonic::transport::server::Connected;

/// The longest anything that must happen may take.
const PATIENCE: Duration = Duration::from_secs(20);
/// The server certificate's DNS name, which clients check.
const SERVER_NAME: &str = "xds.gatewright.test";
/// The URI SAN prefix of the test's client identities.
const ID_PREFIX: &str = "spiffe://gatewright.test/group/";

// ---------------------------------------------------------------------------
// Certificates.

/// A CA that signs test certificates.
struct TestCa {
    der: CertificateDer<'static>,
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate with its key, in both forms.
struct Leaf {
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
    cert_pem: String,
    key_pem: String,
}

impl Leaf {
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

fn new_key() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key")
}

impl TestCa {
    fn new(name: &str) -> Self {
        let key = new_key();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("self-signed CA");
        TestCa {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf(&self, sans: Vec<SanType>, cn: &str, usage: ExtendedKeyUsagePurpose) -> Leaf {
        let key = new_key();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &self.issuer).expect("signed leaf");
        Leaf {
            chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A client certificate for node group `group`.
    fn client(&self, group: &str) -> Leaf {
        let uri = format!("{ID_PREFIX}{group}");
        self.leaf(
            vec![SanType::URI(uri.try_into().expect("an IA5 URI"))],
            group,
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    fn server(&self) -> Leaf {
        self.leaf(
            vec![SanType::DnsName(
                SERVER_NAME.try_into().expect("an IA5 DNS name"),
            )],
            SERVER_NAME,
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A server configuration requiring clients signed by this CA.
    fn server_config(&self) -> rustls::ServerConfig {
        let server = self.server();
        mtls_server_config(
            std::slice::from_ref(&self.der),
            server.chain.clone(),
            server.key(),
        )
        .expect("server config")
    }
}

/// A client configuration trusting `ca`, presenting `client` if given.
fn client_config(ca: &TestCa, client: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der.clone()).expect("CA root");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots);
    let mut config = match client {
        Some(leaf) => builder
            .with_client_auth_cert(leaf.chain.clone(), leaf.key())
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// The test authorizer: a client may subscribe as group G only with the
/// URI SAN `ID_PREFIX` + G.
fn group_authorizer() -> Arc<dyn Authorizer> {
    Arc::new(|identity: Option<&PeerIdentity>, group: &str| {
        let Some(identity) = identity else {
            return Err(tonic::Status::unauthenticated("no client certificate"));
        };
        if identity.has_uri(&format!("{ID_PREFIX}{group}")) {
            Ok(())
        } else {
            Err(tonic::Status::permission_denied(format!(
                "{identity} may not subscribe as {group}"
            )))
        }
    })
}

// ---------------------------------------------------------------------------
// In-process clients.

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {PATIENCE:?}"))
}

async fn loopback() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    (listener, addr)
}

/// Connects with TLS and proves the connection works both ways: in TLS 1.3
/// the client finishes its handshake before the server has checked the
/// client certificate, so a refusal shows on the first read.
async fn tls_roundtrip(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from(SERVER_NAME).map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(b"ping")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if &buf != b"pong" {
        return Err(format!("unexpected reply {buf:?}"));
    }
    Ok(tls)
}

/// Answers `ping` with `pong` on every connection `incoming` yields, and
/// reports each connection's info.
fn pong_server(mut incoming: TlsIncoming) -> mpsc::UnboundedReceiver<ConnectionInfo> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(conn) = incoming.next().await {
            let mut conn = conn.expect("TlsIncoming yields connections");
            let _ = tx.send(conn.connect_info());
            tokio::spawn(async move {
                let mut buf = [0u8; 4];
                while conn.read_exact(&mut buf).await.is_ok() {
                    if conn.write_all(b"pong").await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    rx
}

#[test]
fn identity_is_read_from_the_certificate() {
    let ca = TestCa::new("names CA");
    let leaf = ca.leaf(
        vec![
            SanType::URI(
                "spiffe://gatewright.test/ns/a/gateway/b"
                    .try_into()
                    .expect("URI"),
            ),
            SanType::DnsName("envoy.example".try_into().expect("DNS")),
            SanType::IpAddress([127, 0, 0, 1].into()),
        ],
        "the common name",
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let id = PeerIdentity::from_certificate(&leaf.chain[0]).expect("parse");
    assert_eq!(id.uris, ["spiffe://gatewright.test/ns/a/gateway/b"]);
    assert_eq!(id.dns_names, ["envoy.example"]);
    assert_eq!(id.common_name.as_deref(), Some("the common name"));
    // The CA itself: no SANs, a CN.
    let ca_id = PeerIdentity::from_certificate(&ca.der).expect("parse CA");
    assert!(ca_id.uris.is_empty() && ca_id.dns_names.is_empty());
    assert_eq!(ca_id.common_name.as_deref(), Some("names CA"));
}

#[tokio::test]
async fn only_clients_with_a_certificate_from_the_ca_get_through() {
    let ca = TestCa::new("test CA");
    let (listener, addr) = loopback().await;
    let config = Arc::new(ReloadableServerConfig::new(ca.server_config()));
    let mut accepted = pong_server(TlsIncoming::new(listener, config));

    // No certificate: refused by the server (certificate required).
    let err = within(
        "no-cert client",
        tls_roundtrip(addr, client_config(&ca, None)),
    )
    .await
    .expect_err("a client without a certificate must be refused");
    assert!(err.contains("read") || err.contains("write"), "{err}");

    // A certificate from another CA: refused.
    let rogue = TestCa::new("rogue CA");
    let rogue_client = rogue.client("g1");
    let err = within(
        "rogue client",
        tls_roundtrip(addr, client_config(&ca, Some(&rogue_client))),
    )
    .await
    .expect_err("a client certificate from another CA must be refused");
    assert!(err.contains("read") || err.contains("write"), "{err}");

    // Neither reached the server.
    assert!(
        accepted.try_recv().is_err(),
        "a refused client was accepted"
    );

    // The right CA: accepted, with its identity.
    let good = ca.client("g1");
    let _conn = within(
        "good client",
        tls_roundtrip(addr, client_config(&ca, Some(&good))),
    )
    .await
    .expect("a client with a certificate from the CA gets through");
    let info = within("the accepted connection", accepted.recv())
        .await
        .expect("connection info");
    let identity = info.identity.expect("an identity");
    assert_eq!(identity.uris, [format!("{ID_PREFIX}g1")]);
    assert!(info.remote_addr.is_some());
}

#[tokio::test]
async fn the_server_certificate_can_be_replaced_at_runtime() {
    let ca = TestCa::new("rotating CA");
    let (listener, addr) = loopback().await;
    let first = ca.server();
    let config = Arc::new(ReloadableServerConfig::new(
        mtls_server_config(
            std::slice::from_ref(&ca.der),
            first.chain.clone(),
            first.key(),
        )
        .expect("config"),
    ));
    let _accepted = pong_server(TlsIncoming::new(listener, Arc::clone(&config)));
    let client = ca.client("g");
    let served = |tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        tls.get_ref().1.peer_certificates().expect("server certs")[0].clone()
    };

    let mut old = within(
        "first",
        tls_roundtrip(addr, client_config(&ca, Some(&client))),
    )
    .await
    .expect("first connection");
    assert_eq!(served(&old), first.chain[0]);

    let second = ca.server();
    config.replace(
        mtls_server_config(
            std::slice::from_ref(&ca.der),
            second.chain.clone(),
            second.key(),
        )
        .expect("config"),
    );
    let new = within(
        "second",
        tls_roundtrip(addr, client_config(&ca, Some(&client))),
    )
    .await
    .expect("second connection");
    assert_eq!(
        served(&new),
        second.chain[0],
        "new connections get the new certificate"
    );

    // The connection made before the change still works.
    old.write_all(b"ping")
        .await
        .expect("write on the old connection");
    let mut buf = [0u8; 4];
    within("old connection", old.read_exact(&mut buf))
        .await
        .expect("read on the old connection");
    assert_eq!(&buf, b"pong");
}

#[test]
fn mtls_server_config_needs_a_ca() {
    let ca = TestCa::new("CA");
    let server = ca.server();
    let err = mtls_server_config(&[], server.chain.clone(), server.key())
        .expect_err("no CA must be an error");
    assert!(err.to_string().contains("no client CA"), "{err}");
    let other = ca.server();
    let err = mtls_server_config(std::slice::from_ref(&ca.der), server.chain, other.key())
        .expect_err("a key that is not the certificate's must be an error");
    assert!(
        err.to_string().contains("server certificate and key"),
        "{err}"
    );
}

/// A gRPC ADS client over TLS, with its request stream held open.
struct AdsClient {
    /// Held so that the request stream stays open.
    _requests: mpsc::UnboundedSender<DiscoveryRequest>,
    responses: tonic::Streaming<DiscoveryResponse>,
}

async fn ads_client(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    group: &str,
) -> Result<AdsClient, tonic::Status> {
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let tls = Arc::clone(&tls);
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let name = ServerName::try_from(SERVER_NAME)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    // The scheme is only for tonic: TLS is done by the connector.
    let channel = tonic::transport::Endpoint::from_static("http://xds.gatewright.test")
        .connect_with_connector(connector)
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect: {e}")))?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: format!("{group}-node"),
            cluster: group.to_owned(),
            ..Default::default()
        }),
        type_url: type_url::LISTENER.to_owned(),
        ..Default::default()
    })
    .map_err(|_| tonic::Status::internal("request channel closed"))?;
    let responses = client
        .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok(AdsClient {
        _requests: tx,
        responses,
    })
}

/// The first response of a stream, or the status it ended with.
async fn first_response(client: &mut AdsClient) -> Result<DiscoveryResponse, tonic::Status> {
    match within("the first response", client.responses.message()).await {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(tonic::Status::unknown("stream ended without a response")),
        Err(status) => Err(status),
    }
}

fn one_listener(name: &str) -> Resources {
    let mut r = Resources::new();
    r.add(
        name,
        &Listener {
            name: name.to_owned(),
            ..Default::default()
        },
    );
    r
}

#[tokio::test]
async fn a_client_may_subscribe_only_as_its_own_group() {
    let ca = TestCa::new("ADS CA");
    let cache = Cache::new();
    cache.set("g1", one_listener("listener-g1"));
    cache.set("g2", one_listener("listener-g2"));
    let (listener, addr) = loopback().await;
    let config = Arc::new(ReloadableServerConfig::new(ca.server_config()));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = AdsServer::new(cache.clone()).with_authorizer(group_authorizer());
    let serving = tokio::spawn(serve_tls(server, listener, config, async {
        let _ = stopped.await;
    }));

    // g1's certificate, subscribing as g1: gets g1's listener.
    let g1 = client_config(&ca, Some(&ca.client("g1")));
    let mut own = within("g1 as g1", ads_client(addr, Arc::clone(&g1), "g1"))
        .await
        .expect("stream");
    let response = first_response(&mut own).await.expect("g1's resources");
    assert_eq!(response.type_url, type_url::LISTENER);
    let names: Vec<String> = response
        .resources
        .iter()
        .map(|a| {
            <Listener as prost::Message>::decode(a.value.as_slice())
                .expect("a Listener")
                .name
        })
        .collect();
    assert_eq!(names, ["listener-g1"]);

    // g1's certificate, subscribing as g2: refused, nothing sent.
    let status = match within("g1 as g2", ads_client(addr, g1, "g2")).await {
        Ok(mut other) => first_response(&mut other)
            .await
            .expect_err("g1 must not get g2's resources"),
        Err(status) => status,
    };
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains(&format!("{ID_PREFIX}g1")) && status.message().contains("g2"),
        "the message names who and what: {status:?}"
    );
    assert_eq!(
        cache
            .stats()
            .denied
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The refused stream never counted as open; g1's still is.
    assert_eq!(
        cache
            .stats()
            .streams
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // Shutting down ends the open stream (so the Envoy moves to another
    // replica) instead of waiting for it forever.
    let _ = stop.send(());
    let status = within("the stream to end", own.responses.message())
        .await
        .expect_err("the stream ends with an error");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    drop(own);
    within("server shutdown", serving)
        .await
        .expect("server task")
        .expect("server result");
}

#[tokio::test]
async fn without_tls_an_authorizer_sees_no_identity() {
    let cache = Cache::new();
    cache.set("g1", one_listener("listener-g1"));
    let (listener, addr) = loopback().await;
    let server = AdsServer::new(cache.clone()).with_authorizer(group_authorizer());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server.into_service())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: "n".to_owned(),
            cluster: "g1".to_owned(),
            ..Default::default()
        }),
        type_url: type_url::LISTENER.to_owned(),
        ..Default::default()
    })
    .expect("send");
    let status = match client
        .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await
    {
        Ok(r) => within("the refusal", r.into_inner().message())
            .await
            .expect_err("refused"),
        Err(status) => status,
    };
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

#[tokio::test]
async fn without_an_authorizer_nothing_changes() {
    // Host mode: plain TCP, no authorizer, any group.
    let cache = Cache::new();
    cache.set("g1", one_listener("listener-g1"));
    let (listener, addr) = loopback().await;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdsServer::new(cache.clone()).into_service())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: "n".to_owned(),
            cluster: "g1".to_owned(),
            ..Default::default()
        }),
        type_url: type_url::LISTENER.to_owned(),
        ..Default::default()
    })
    .expect("send");
    let mut responses = client
        .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let response = within("a response", responses.message())
        .await
        .expect("no error")
        .expect("a response");
    assert_eq!(response.resources.len(), 1);
}

// ---------------------------------------------------------------------------
// Real Envoys.

use gatewright_testkit::envoy as envoy_binary;

/// A running Envoy; killed when dropped.
struct Envoy {
    child: Child,
    admin: SocketAddr,
    log: PathBuf,
}

impl Envoy {
    fn start(dir: &Path, tag: &str, bootstrap: &Value) -> Self {
        let config = dir.join(format!("bootstrap-{tag}.json"));
        std::fs::write(
            &config,
            serde_json::to_vec_pretty(bootstrap).expect("bootstrap JSON"),
        )
        .expect("write bootstrap");
        let admin_path = dir.join(format!("admin-{tag}.txt"));
        let log = dir.join(format!("envoy-{tag}.log"));
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&config)
            .args(["--disable-hot-restart", "-l", "info", "--concurrency", "1"])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("Envoy log"))
            .spawn()
            .expect("spawn Envoy");
        let mut envoy = Envoy {
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(text) = std::fs::read_to_string(&admin_path)
                && let Ok(addr) = text.trim().parse()
            {
                envoy.admin = addr;
                return envoy;
            }
            if let Ok(Some(status)) = envoy.child.try_wait() {
                panic!("Envoy exited at startup ({status}):\n{}", envoy.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "Envoy wrote no admin address:\n{}",
                envoy.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET on the admin interface; the body if 200.
    fn admin_get(&self, path: &str) -> Result<String, String> {
        let mut conn = TcpStream::connect_timeout(&self.admin, Duration::from_secs(2))
            .map_err(|e| format!("connect admin: {e}"))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        write!(
            conn,
            "GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n"
        )
        .map_err(|e| format!("write admin: {e}"))?;
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw)
            .map_err(|e| format!("read admin: {e}"))?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no header end")?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(format!("admin {path}: {head}"));
        }
        // Envoy's admin answers with content-length or chunks; only the
        // former is expected for these small answers, but accept both.
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            return Ok(dechunk(body));
        }
        Ok(body.to_owned())
    }

    /// Names of the dynamic listeners Envoy has active.
    fn dynamic_listeners(&self) -> Result<Vec<String>, String> {
        let dump: Value = serde_json::from_str(&self.admin_get("/config_dump")?)
            .map_err(|e| format!("config_dump: {e}"))?;
        Ok(dump["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.ListenersConfigDump")
            .flat_map(|c| c["dynamic_listeners"].as_array().into_iter().flatten())
            .filter_map(|l| l["name"].as_str().map(str::to_owned))
            .collect())
    }

    fn stat(&self, name: &str) -> Result<u64, String> {
        let text = self.admin_get(&format!("/stats?filter=^{name}$"))?;
        text.lines()
            .find_map(|l| {
                let (n, v) = l.split_once(": ")?;
                (n == name).then(|| v.trim().parse().ok()).flatten()
            })
            .ok_or_else(|| format!("no stat {name} in {text:?}"))
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dechunk(mut data: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = data.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        data = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Files of the client side of the test, written for Envoy to read.
struct ClientFiles {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

fn write_client_files(dir: &Path, tag: &str, ca: &TestCa, leaf: Option<&Leaf>) -> ClientFiles {
    let files = ClientFiles {
        cert: dir.join(format!("{tag}.crt")),
        key: dir.join(format!("{tag}.key")),
        ca: dir.join(format!("{tag}-ca.crt")),
    };
    if let Some(leaf) = leaf {
        std::fs::write(&files.cert, &leaf.cert_pem).expect("write cert");
        std::fs::write(&files.key, &leaf.key_pem).expect("write key");
    }
    std::fs::write(&files.ca, &ca.pem).expect("write CA");
    files
}

/// An Envoy bootstrap for node group `group`, whose `gatewright-xds`
/// cluster reaches the ADS server at 127.0.0.1:`port` over TLS: verifying
/// the server against `files.ca` and its SAN, and presenting the client
/// certificate if `with_cert`.
fn mtls_bootstrap(group: &str, port: u16, files: &ClientFiles, with_cert: bool) -> Value {
    let mut common = json!({
        "alpn_protocols": ["h2"],
        "validation_context": {
            "trusted_ca": {"filename": files.ca},
            "match_typed_subject_alt_names": [
                {"san_type": "DNS", "matcher": {"exact": SERVER_NAME}}
            ]
        }
    });
    if with_cert {
        common["tls_certificates"] = json!([{
            "certificate_chain": {"filename": files.cert},
            "private_key": {"filename": files.key}
        }]);
    }
    json!({
        "node": {"id": format!("{group}-envoy"), "cluster": group},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {
                    "cluster_name": "gatewright-xds",
                    "retry_policy": {"retry_back_off": {"base_interval": "0.1s", "max_interval": "0.5s"}}
                }}]
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"}
        },
        "static_resources": {"clusters": [{
            "name": "gatewright-xds",
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}
                }
            },
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "sni": SERVER_NAME,
                    "common_tls_context": common
                }
            },
            "load_assignment": {
                "cluster_name": "gatewright-xds",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                }}}]}]
            }
        }]}
    })
}

/// A listener Envoy can bind (on a free loopback port) that needs nothing
/// else: a TCP proxy to a static cluster would need CDS, so a direct
/// response via HCM with inline routes is used.
fn inline_listener(name: &str) -> Listener {
    use envoy_types::pb::envoy::config::core::v3::{
        Address, DataSource, SocketAddress, address, data_source, socket_address,
    };
    use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, filter};
    use envoy_types::pb::envoy::config::route::v3::{
        DirectResponseAction, Route, RouteConfiguration, RouteMatch, VirtualHost, route,
        route_match,
    };
    use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager, HttpFilter, http_connection_manager, http_filter,
    };
    use envoy_types::pb::google::protobuf::Any;
    fn any<M: prost::Message + prost::Name>(m: &M) -> Any {
        Any {
            type_url: M::type_url(),
            value: m.encode_to_vec(),
        }
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let routes = RouteConfiguration {
        name: "inline".to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: "all".to_owned(),
            domains: vec!["*".to_owned()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_owned())),
                    ..Default::default()
                }),
                action: Some(route::Action::DirectResponse(DirectResponseAction {
                    status: 200,
                    body: Some(DataSource {
                        specifier: Some(data_source::Specifier::InlineString(name.to_owned())),
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let manager = HttpConnectionManager {
        stat_prefix: name.to_owned(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(routes)),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".to_owned(),
            config_type: Some(http_filter::ConfigType::TypedConfig(
                any(&Router::default()),
            )),
            ..Default::default()
        }],
        ..Default::default()
    };
    Listener {
        name: name.to_owned(),
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: "127.0.0.1".to_owned(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
                ..Default::default()
            })),
        }),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".to_owned(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&manager))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Polls `check` until it returns Some or `PATIENCE` passes.
fn eventually<T>(what: &str, envoy: &Envoy, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {PATIENCE:?}; Envoy log:\n{}",
            envoy.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn envoys_get_only_their_own_group_over_mtls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("Envoy test CA");
    let cache = Cache::new();
    cache.set("gw-a", {
        let mut r = Resources::new();
        r.add("listener-a", &inline_listener("listener-a"));
        r
    });
    cache.set("gw-b", {
        let mut r = Resources::new();
        r.add("listener-b", &inline_listener("listener-b"));
        r
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind");
    let port = listener.local_addr().expect("local_addr").port();
    let config = Arc::new(ReloadableServerConfig::new(ca.server_config()));
    let server = AdsServer::new(cache.clone()).with_authorizer(group_authorizer());
    let _serving = rt.spawn(serve_tls(server, listener, config, std::future::pending()));

    // Envoy A: a certificate for gw-a, subscribing as gw-a.
    let a_leaf = ca.client("gw-a");
    let a_files = write_client_files(dir.path(), "a", &ca, Some(&a_leaf));
    let envoy_a = Envoy::start(
        dir.path(),
        "a",
        &mtls_bootstrap("gw-a", port, &a_files, true),
    );
    let names = eventually("Envoy A getting its listener", &envoy_a, || {
        envoy_a.dynamic_listeners().ok().filter(|n| !n.is_empty())
    });
    assert_eq!(names, ["listener-a"]);

    // Envoy B: the same CA, but a certificate for gw-a while subscribing as
    // gw-b. It is refused, again and again, and never gets a listener.
    let b_files = write_client_files(dir.path(), "b", &ca, Some(&a_leaf));
    let envoy_b = Envoy::start(
        dir.path(),
        "b",
        &mtls_bootstrap("gw-b", port, &b_files, true),
    );
    let denied = |c: &Cache| c.stats().denied.load(std::sync::atomic::Ordering::Relaxed);
    eventually("Envoy B being refused twice", &envoy_b, || {
        (denied(&cache) >= 2).then_some(())
    });
    assert_eq!(
        envoy_b.dynamic_listeners().expect("config_dump of B"),
        Vec::<String>::new(),
        "an Envoy with another group's certificate got a listener"
    );
    // Envoy logs the gRPC status (7: PERMISSION_DENIED) and its message.
    let b_log = envoy_b.log_text();
    assert!(
        b_log.contains("stream to gatewright-xds closed: 7,")
            && b_log.contains("may%20not%20subscribe%20as%20gw-b"),
        "Envoy B's log shows the refusal:\n{b_log}"
    );
    // B retries forever: stop it so that it no longer adds refusals.
    drop(envoy_b);

    // Envoy C: no client certificate at all. Refused at the handshake: the
    // server never sees a stream from it, and Envoy counts TLS failures.
    let denied_before = denied(&cache);
    let c_files = write_client_files(dir.path(), "c", &ca, None);
    let envoy_c = Envoy::start(
        dir.path(),
        "c",
        &mtls_bootstrap("gw-a", port, &c_files, false),
    );
    eventually("Envoy C failing the TLS handshake twice", &envoy_c, || {
        let failed = envoy_c
            .stat("cluster.gatewright-xds.ssl.connection_error")
            .unwrap_or(0);
        (failed >= 2).then_some(())
    });
    assert_eq!(
        envoy_c.dynamic_listeners().expect("config_dump of C"),
        Vec::<String>::new()
    );
    assert_eq!(
        denied(&cache),
        denied_before,
        "a client without a certificate reached the ADS service"
    );
    // A still has its listener and one open stream: nothing else got in.
    assert_eq!(
        envoy_a.dynamic_listeners().expect("config_dump of A"),
        ["listener-a"]
    );
    assert_eq!(
        cache
            .stats()
            .streams
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    drop((envoy_a, envoy_c));
    rt.shutdown_timeout(Duration::from_secs(5));
}
