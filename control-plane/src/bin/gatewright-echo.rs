//! `gatewright-echo`: a small echo backend for the quickstart and the
//! end-to-end tests.
//!
//! It serves HTTP/1.1 and HTTP/2 (cleartext with prior knowledge, or over TLS
//! when given a certificate) on one port and answers every request with a
//! JSON description of it. Requests whose content-type starts with
//! `application/grpc` get a gRPC-shaped answer (one length-prefixed message
//! holding that JSON, then `grpc-status: 0` in the trailers), and
//! `/status/NNN` answers with status NNN; `?delay=500ms` (or `2s`) answers
//! that much later.
//!
//! `?key=K` counts the requests carrying that key and reports the count as
//! `attempt` (1 for the first); with `&fail=N` the first N of them are
//! answered with status 503 (or `&fail_status=NNN`, 400-599), the later
//! ones normally; with `&slow=N` the `delay` applies to the first N of
//! them only. Retry tests use it: each test picks its own key, so tests
//! sharing a backend do not disturb each other's counts.
//!
//! Over TLS the answer also says which SNI the client sent (`sni`) and, with
//! `--tls-client-ca`, which client certificate it presented (`client_cert`:
//! its subject); clients without a certificate signed by that CA are
//! refused during the handshake.
//!
//! After binding it prints exactly one line, `listening on IP:PORT`, so a
//! caller that asked for port 0 learns the port.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use bytes::{BufMut as _, Bytes, BytesMut};
use clap::Parser;
use http_body_util::{BodyExt as _, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{CONTENT_TYPE, HOST, HeaderName, HeaderValue, TRAILER};
use hyper::{HeaderMap, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// The largest request body read (and discarded) before answering.
const MAX_REQUEST_BODY: usize = 4 << 20;
/// How long open connections get to finish once a signal arrives.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

const X_ECHO_BACKEND: HeaderName = HeaderName::from_static("x-echo-backend");

/// An HTTP/1.1 + HTTP/2 echo server that describes each request in JSON.
#[derive(Debug, Parser)]
#[command(name = "gatewright-echo", version)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Name reported in every answer (`backend` field, `x-echo-backend` header).
    #[arg(long)]
    name: String,
    /// PEM certificate chain; with --tls-key, terminate TLS (ALPN h2, http/1.1).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA certificates; with TLS, require a client certificate signed by
    /// one of them and report its subject.
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

/// What one connection's TLS handshake told: the SNI and the subject of the
/// client certificate (None when absent or in plaintext).
#[derive(Clone, Debug, Default)]
struct ConnInfo {
    sni: Option<String>,
    client_cert: Option<String>,
}

/// The most `?key=` counters kept; past it they all start over, so a
/// client inventing keys cannot grow the backend's memory without bound.
const MAX_KEYS: usize = 10_000;

/// What every request handler needs: the backend's name, in both forms,
/// and the per-key request counts.
struct Echo {
    name: String,
    header: HeaderValue,
    tls: bool,
    attempts: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl Echo {
    /// Counts one more request with `key`; returns its number (from 1).
    fn count(&self, key: &str) -> u64 {
        // A panic elsewhere cannot leave a count half-written: keep going.
        let mut map = self
            .attempts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= MAX_KEYS && !map.contains_key(key) {
            map.clear();
        }
        let n = map.entry(key.to_owned()).or_insert(0);
        *n += 1;
        *n
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")
        .and_then(|rt| rt.block_on(run(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line with the whole cause chain, no backtrace.
            eprintln!("gatewright-echo: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let header = HeaderValue::from_str(&args.name)
        .with_context(|| format!("--name {:?} is not a valid header value", args.name))?;
    let acceptor = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key, args.tls_client_ca.as_deref())?),
        (None, None) => None,
        _ => bail!("--tls-cert and --tls-key go together"),
    };
    let echo = Arc::new(Echo {
        name: args.name,
        header,
        tls: acceptor.is_some(),
        attempts: std::sync::Mutex::default(),
    });

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let local = listener
        .local_addr()
        .context("reading the listener's local address")?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {local}").context("writing to stdout")?;
        out.flush().context("flushing stdout")?;
    }
    tracing::info!(backend = %echo.name, %local, tls = echo.tls, "serving");

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut conns = JoinSet::new();

    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Usually EMFILE or a connection reset before accept:
                        // keep serving, after a short pause.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                conns.spawn(connection(
                    stream,
                    peer,
                    acceptor.clone(),
                    Arc::clone(&echo),
                    shutdown_rx.clone(),
                ));
            }
            // Reap finished connection tasks so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            r = tokio::signal::ctrl_c() => {
                r.context("waiting for SIGINT")?;
                tracing::info!("SIGINT: shutting down");
                break;
            }
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM: shutting down");
                break;
            }
        }
    }

    drop(listener);
    let _ = shutdown_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        conns.abort_all();
    }
    Ok(())
}

/// Reads PEM certificates from `path`, at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))?;
    if certs.is_empty() {
        bail!("no certificate found in {}", path.display());
    }
    Ok(certs)
}

/// Reads the certificate chain and key and builds a TLS acceptor offering
/// h2 and http/1.1; with `client_ca`, clients must present a certificate
/// that CA signed.
fn tls_acceptor(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<TlsAcceptor> {
    let certs = read_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the private key from {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("choosing TLS protocol versions")?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in read_certs(path)? {
                roots
                    .add(ca)
                    .with_context(|| format!("adding a CA certificate of {}", path.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .context("building the client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not make a usable pair")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves one accepted connection, over TLS if there is an acceptor.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    echo: Arc<Echo>,
    shutdown: watch::Receiver<bool>,
) {
    let result = match acceptor {
        None => serve(stream, echo, ConnInfo::default(), shutdown).await,
        Some(acceptor) => match acceptor.accept(stream).await {
            Ok(tls) => {
                let (_, session) = tls.get_ref();
                let info = ConnInfo {
                    sni: session.server_name().map(str::to_owned),
                    client_cert: session
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| subject(c.as_ref())),
                };
                serve(tls, echo, info, shutdown).await
            }
            Err(e) => Err(anyhow::Error::new(e).context("TLS handshake")),
        },
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = format!("{e:#}"), "connection ended with an error");
    }
}

/// Speaks HTTP/1.1 or HTTP/2 (told apart by the HTTP/2 preface) until the
/// peer closes or shutdown starts, then lets in-flight requests finish.
async fn serve<S>(
    io: S,
    echo: Arc<Echo>,
    info: ConnInfo,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    let info = Arc::new(info);
    let service = hyper::service::service_fn(move |req| {
        let echo = Arc::clone(&echo);
        let info = Arc::clone(&info);
        async move { Ok::<_, Infallible>(handle(req, &echo, &info).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => return r.map_err(|e| anyhow::anyhow!(e)),
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
    conn.as_mut().graceful_shutdown();
    conn.await.map_err(|e| anyhow::anyhow!(e))
}

/// Answers one request.
async fn handle(req: Request<Incoming>, echo: &Echo, info: &ConnInfo) -> Response<EchoBody> {
    let (parts, body) = req.into_parts();
    // Read (and drop) the body first, so that an HTTP/2 stream ends cleanly
    // rather than being reset while the client is still sending.
    let body_ok = Limited::new(body, MAX_REQUEST_BODY).collect().await.is_ok();

    let query = parts.uri.query().unwrap_or("");
    let attempt = param(query, "key").map(|k| echo.count(k));
    // `?delay=500ms` (or `2s`) answers late, for timeout tests; with
    // `slow=N`, only the first N requests of the key.
    let slow = match (
        attempt,
        param(query, "slow").and_then(|n| n.parse::<u64>().ok()),
    ) {
        (Some(n), Some(first)) => n <= first,
        _ => true,
    };
    if let Some(d) = delay(query).filter(|_| slow) {
        tokio::time::sleep(d).await;
    }
    let failing = attempt.and_then(|n| {
        let fail: u64 = param(query, "fail")?.parse().ok()?;
        let status = param(query, "fail_status")
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|s| (400..=599).contains(s))
            .unwrap_or(503);
        (n <= fail).then(|| StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE))
    });
    let mut description = describe(&parts, echo, info);
    if let Some(n) = attempt {
        description["attempt"] = n.into();
    }
    let json = match serde_json::to_vec(&description) {
        Ok(j) => Bytes::from(j),
        Err(_) => Bytes::from_static(b"{}"),
    };

    let grpc = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    if grpc {
        return grpc_response(json, parts.version, echo);
    }

    let status = if !body_ok {
        StatusCode::PAYLOAD_TOO_LARGE
    } else if let Some(status) = failing {
        status
    } else {
        match parts.uri.path().strip_prefix("/status/") {
            Some(code) => match code.parse::<u16>() {
                Ok(n @ 200..=599) => StatusCode::from_u16(n).unwrap_or(StatusCode::BAD_REQUEST),
                _ => StatusCode::BAD_REQUEST,
            },
            None => StatusCode::OK,
        }
    };
    let body = if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        Bytes::new()
    } else {
        json
    };
    let mut resp = Response::new(EchoBody::new(body, None));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(X_ECHO_BACKEND, echo.header.clone());
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The first value of query parameter `name` (as written, not decoded).
fn param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|kv| {
        kv.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('='))
    })
}

/// The `delay` query parameter (`<n>ms` or `<n>s`), capped at a minute.
fn delay(query: &str) -> Option<Duration> {
    let value = param(query, "delay")?;
    let d = if let Some(ms) = value.strip_suffix("ms") {
        Duration::from_millis(ms.parse().ok()?)
    } else {
        Duration::from_secs(value.strip_suffix('s')?.parse().ok()?)
    };
    Some(d.min(Duration::from_secs(60)))
}

/// The JSON description of a request.
fn describe(
    parts: &hyper::http::request::Parts,
    echo: &Echo,
    info: &ConnInfo,
) -> serde_json::Value {
    let mut headers: BTreeMap<&str, String> = BTreeMap::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let host_header = parts.headers.get(HOST).and_then(|v| v.to_str().ok());
    let authority = parts.uri.authority().map(|a| a.as_str());
    let (protocol, host) = match parts.version {
        Version::HTTP_2 => ("HTTP/2", authority.or(host_header)),
        Version::HTTP_10 => ("HTTP/1.0", host_header.or(authority)),
        Version::HTTP_3 => ("HTTP/3", authority.or(host_header)),
        _ => ("HTTP/1.1", host_header.or(authority)),
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |pq| pq.as_str());
    serde_json::json!({
        "backend": echo.name,
        "method": parts.method.as_str(),
        "path": path,
        "host": host.unwrap_or(""),
        "headers": headers,
        "protocol": protocol,
        "tls": echo.tls,
        "sni": info.sni,
        "client_cert": info.client_cert,
    })
}

/// The subject of a DER certificate (`CN=...`), or why it cannot be read:
/// the verifier already accepted it, so this only describes it.
fn subject(der: &[u8]) -> String {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => cert.subject().to_string(),
        Err(e) => format!("unparsable certificate: {e}"),
    }
}

/// A gRPC-shaped answer: one uncompressed length-prefixed message carrying
/// `payload`, then `grpc-status: 0` in the trailers.
fn grpc_response(payload: Bytes, version: Version, echo: &Echo) -> Response<EchoBody> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut frame = BytesMut::with_capacity(5 + payload.len());
    frame.put_u8(0);
    frame.put_u32(len);
    frame.put_slice(&payload);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let mut resp = Response::new(EchoBody::new(frame.freeze(), Some(trailers)));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert(X_ECHO_BACKEND, echo.header.clone());
    if version < Version::HTTP_2 {
        // An HTTP/1.1 server may send only the trailer fields it announced
        // (and hyper sends them only if the request had `te: trailers`).
        h.insert(TRAILER, HeaderValue::from_static("grpc-status"));
    }
    resp
}

/// A response body of at most one data frame, optionally followed by
/// trailers.
struct EchoBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl EchoBody {
    fn new(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            data: (!data.is_empty()).then_some(data),
            trailers,
        }
    }
}

impl Body for EchoBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(data) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let len = self.data.as_ref().map_or(0, |d| d.len() as u64);
        if self.trailers.is_some() {
            // Trailers need a chunked (HTTP/1.1) or open-ended (HTTP/2) body.
            let mut hint = SizeHint::new();
            hint.set_lower(len);
            hint
        } else {
            SizeHint::with_exact(len)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo() -> Echo {
        Echo {
            name: "t".to_owned(),
            header: HeaderValue::from_static("t"),
            tls: false,
            attempts: std::sync::Mutex::default(),
        }
    }

    #[test]
    fn params_match_whole_names() {
        let q = "failure=9&fail=2&key=a&delay=5ms";
        assert_eq!(param(q, "fail"), Some("2"));
        assert_eq!(param(q, "key"), Some("a"));
        assert_eq!(param(q, "slow"), None);
        assert_eq!(delay(q), Some(Duration::from_millis(5)));
    }

    #[test]
    fn counts_are_per_key_and_bounded() {
        let e = echo();
        assert_eq!(e.count("a"), 1);
        assert_eq!(e.count("a"), 2);
        assert_eq!(e.count("b"), 1);
        for i in 0..MAX_KEYS {
            e.count(&format!("k{i}"));
        }
        let kept = e
            .attempts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len();
        assert!(kept <= MAX_KEYS, "{kept} keys kept");
    }
}
