//! ADS over TLS with client certificates.
//!
//! We accept TLS ourselves (tokio-rustls) and hand tonic finished
//! connections through `serve_with_incoming`, rather than use tonic's own
//! TLS, because:
//! - the server configuration is read per connection from a
//!   [`ReloadableServerConfig`], so the server certificate (or the client CA)
//!   can be replaced at runtime without restarting the server or dropping
//!   the streams already open;
//! - the client's identity is parsed once per connection, at the handshake,
//!   and reaches every request as a [`ConnectionInfo`] extension;
//! - handshakes run in their own tasks with a deadline, so a slow or silent
//!   client never holds up the accept loop.

use crate::auth::PeerIdentity;
use crate::server::AdsServer;
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::Stream;
use tonic::transport::server::Connected;

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait to be handled.
const MAX_HANDSHAKES: usize = 256;
/// Finished connections not yet taken by the server.
const ACCEPTED_BUFFER: usize = 64;

/// A TLS configuration that could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSetupError(String);

impl fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsSetupError {}

/// A rustls server configuration for ADS that requires every client to
/// present a certificate chaining to one of `client_cas`, serves
/// `cert_chain` (end-entity first) with `key`, and offers ALPN `h2` (gRPC).
/// It uses the ring provider explicitly, so it works whatever rustls
/// providers other crates of the process enable.
pub fn mtls_server_config(
    client_cas: &[CertificateDer<'static>],
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in client_cas {
        roots
            .add(ca.clone())
            .map_err(|e| TlsSetupError(format!("client CA certificate not usable: {e}")))?;
    }
    if roots.is_empty() {
        return Err(TlsSetupError("no client CA certificate given".to_owned()));
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsSetupError(format!("client certificate verifier: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError(format!("TLS protocol versions: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert_chain, key)
        .map_err(|e| TlsSetupError(format!("server certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A server configuration that can be replaced while the server runs:
/// every new connection uses the configuration current when it was
/// accepted; connections already open keep theirs.
#[derive(Debug)]
pub struct ReloadableServerConfig {
    current: RwLock<Arc<ServerConfig>>,
}

impl ReloadableServerConfig {
    /// Starts with `config`.
    pub fn new(config: ServerConfig) -> Self {
        Self {
            current: RwLock::new(Arc::new(config)),
        }
    }

    /// Uses `config` for every connection from now on (e.g. with a renewed
    /// server certificate).
    pub fn replace(&self, config: ServerConfig) {
        let config = Arc::new(config);
        // A poisoned lock only means a writer panicked between two plain
        // assignments; the value inside is still a whole Arc.
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// The configuration new connections get.
    pub fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }
}

/// What the server knows of a TLS connection; tonic puts it into the
/// extensions of every request that arrives on it.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    /// The client's address.
    pub remote_addr: Option<SocketAddr>,
    /// The names of the client certificate the handshake verified; None if
    /// the configuration let the client in without one, or its names could
    /// not be read.
    pub identity: Option<Arc<PeerIdentity>>,
}

/// One accepted, handshaken TLS connection.
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    info: ConnectionInfo,
}

impl TlsConnection {
    /// What is known of the client.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }
}

impl Connected for TlsConnection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The connections of a TCP listener that completed a TLS handshake, for
/// `tonic::transport::Server::serve_with_incoming[_shutdown]`. A client
/// whose handshake fails (no certificate, one the verifier refuses, not
/// TLS at all, too slow) is logged and never reaches the server. Dropping
/// it closes the listener.
pub struct TlsIncoming {
    accepted: mpsc::Receiver<TlsConnection>,
    acceptor: JoinHandle<()>,
}

impl TlsIncoming {
    /// Accepts on `listener`, handshaking with `config`'s configuration of
    /// the moment. Must be called within a tokio runtime.
    pub fn new(listener: TcpListener, config: Arc<ReloadableServerConfig>) -> Self {
        let (tx, accepted) = mpsc::channel(ACCEPTED_BUFFER);
        let acceptor = tokio::spawn(accept_loop(listener, config, tx));
        Self { accepted, acceptor }
    }
}

impl Drop for TlsIncoming {
    fn drop(&mut self) {
        // The accept loop owns the listener: stopping it closes the socket.
        self.acceptor.abort();
    }
}

impl Stream for TlsIncoming {
    type Item = io::Result<TlsConnection>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.accepted.poll_recv(cx).map(|c| c.map(Ok))
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: Arc<ReloadableServerConfig>,
    tx: mpsc::Sender<TlsConnection>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = tx.closed() => return,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Typically out of file descriptors: wait a little rather
                // than spin, and keep serving the connections we have.
                tracing::warn!("xDS listener cannot accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&handshakes).acquire_owned().await else {
            return;
        };
        // gRPC streams carry small messages both ways; don't delay them.
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(config.current());
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let identity = peer_identity(&stream, remote);
                    let info = ConnectionInfo {
                        remote_addr: Some(remote),
                        identity,
                    };
                    if let Some(id) = &info.identity {
                        tracing::debug!(%remote, identity = %id, "xDS client authenticated");
                    }
                    let _ = tx.send(TlsConnection { stream, info }).await;
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    // A TCP probe (kubelet, load balancer): not worth a warning.
                    tracing::debug!(%remote, "xDS client closed during the TLS handshake");
                }
                Ok(Err(e)) => {
                    tracing::warn!(%remote, "xDS client refused at the TLS handshake: {e}")
                }
                Err(_) => tracing::warn!(
                    %remote,
                    "xDS client did not complete the TLS handshake within {HANDSHAKE_TIMEOUT:?}"
                ),
            }
        });
    }
}

/// The identity in the verified end-entity certificate of a connection.
fn peer_identity(stream: &TlsStream<TcpStream>, remote: SocketAddr) -> Option<Arc<PeerIdentity>> {
    let leaf = stream.get_ref().1.peer_certificates()?.first()?;
    match PeerIdentity::from_certificate(leaf) {
        Ok(id) => Some(Arc::new(id)),
        Err(e) => {
            // rustls verified it, so this should not happen; without names
            // the client is treated as anonymous, which an authorizer refuses.
            tracing::warn!(%remote, "xDS client certificate names unreadable: {e}");
            None
        }
    }
}

/// Serves `server` over TLS on `listener` until `shutdown` completes, then
/// stops accepting, ends the open streams with `UNAVAILABLE` (unless
/// `server` already has its own [`AdsServer::with_shutdown`] signal) and
/// returns once their connections are closed. With a
/// [`mtls_server_config`] configuration and [`AdsServer::with_authorizer`]
/// this is the authenticated, authorised ADS endpoint.
pub async fn serve_tls(
    server: AdsServer,
    listener: TcpListener,
    config: Arc<ReloadableServerConfig>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = if server.stop.is_some() {
        server
    } else {
        server.with_shutdown(stop_rx)
    };
    tonic::transport::Server::builder()
        .add_service(server.into_service())
        .serve_with_incoming_shutdown(TlsIncoming::new(listener, config), async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        })
        .await
}
