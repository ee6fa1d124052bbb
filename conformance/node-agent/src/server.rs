//! The kubelet API subset: `/containerLogs/{ns}/{pod}/{container}` and
//! `/healthz`, over HTTPS with a self-signed certificate.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_rustls::TlsAcceptor;

use crate::logs::{self, LogQuery};

#[derive(Clone)]
struct AppState {
    state_dir: PathBuf,
}

/// Serves the kubelet API on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, state_dir: PathBuf) -> Result<()> {
    let cert =
        rcgen::generate_simple_self_signed(vec![addr.ip().to_string(), "localhost".to_string()])
            .context("generating kubelet serving certificate")?;
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der())
        .map_err(|e| anyhow::anyhow!("kubelet key: {e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS versions")?
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .context("kubelet TLS config")?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .with_state(AppState { state_dir });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding kubelet API on {addr}"))?;
    tracing::info!(%addr, "kubelet API listening (HTTPS)");
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, "TLS handshake: {e}");
                    return;
                }
            };
            let svc = TowerToHyperService::new(app);
            if let Err(e) = Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await
            {
                tracing::debug!(%peer, "connection: {e}");
            }
        });
    }
}

/// Parses the query of a log request.
fn parse_query(q: &HashMap<String, String>) -> Result<(LogQuery, bool), String> {
    let flag = |k: &str| q.get(k).is_some_and(|v| v == "true" || v == "1");
    let since = match (q.get("sinceTime"), q.get("sinceSeconds")) {
        (Some(t), _) => Some(
            t.parse::<jiff::Timestamp>()
                .map_err(|e| format!("sinceTime {t:?}: {e}"))?,
        ),
        (None, Some(s)) => {
            let secs: i64 = s.parse().map_err(|e| format!("sinceSeconds {s:?}: {e}"))?;
            Some(
                jiff::Timestamp::now()
                    .checked_sub(jiff::SignedDuration::from_secs(secs))
                    .map_err(|e| format!("sinceSeconds {s:?}: {e}"))?,
            )
        }
        (None, None) => None,
    };
    let tail = match q.get("tailLines") {
        Some(t) => {
            let n: i64 = t.parse().map_err(|e| format!("tailLines {t:?}: {e}"))?;
            (n >= 0).then(|| usize::try_from(n).unwrap_or(usize::MAX))
        }
        None => None,
    };
    Ok((
        LogQuery {
            since,
            tail,
            timestamps: flag("timestamps"),
        },
        flag("follow"),
    ))
}

async fn container_logs(
    State(st): State<AppState>,
    UrlPath((namespace, pod, container)): UrlPath<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (query, follow) = match parse_query(&q) {
        Ok(v) => v,
        Err(msg) => return (StatusCode::BAD_REQUEST, msg).into_response(),
    };
    let Some(file) = logs::find_log_file(&st.state_dir, &namespace, &pod, &container) else {
        return (
            StatusCode::NOT_FOUND,
            format!("no logs for container {container:?} of pod {namespace}/{pod} on this node"),
        )
            .into_response();
    };
    let content = match tokio::fs::read(&file).await {
        Ok(c) => c,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading logs: {e}"),
            )
                .into_response();
        }
    };
    // Only whole lines; a partial last line is left for the follower.
    let whole = content
        .iter()
        .rposition(|b| *b == b'\n')
        .map(|p| p + 1)
        .unwrap_or(0);
    let first = logs::render(&String::from_utf8_lossy(&content[..whole]), &query);
    if !follow {
        return (StatusCode::OK, [("content-type", "text/plain")], first).into_response();
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(16);
    tokio::spawn(async move {
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        let mut offset = whole as u64;
        let mut pending = Vec::new();
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if tx.is_closed() {
                return;
            }
            let mut f = match tokio::fs::File::open(&file).await {
                Ok(f) => f,
                Err(_) => return, // pod removed: end the stream
            };
            if f.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
                return;
            }
            let mut buf = Vec::new();
            if f.read_to_end(&mut buf).await.is_err() {
                return;
            }
            offset += buf.len() as u64;
            pending.extend_from_slice(&buf);
            let Some(end) = pending.iter().rposition(|b| *b == b'\n') else {
                continue;
            };
            let chunk: Vec<u8> = pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&chunk);
            let out: String = text
                .lines()
                .filter_map(|l| logs::render_line(l, &query))
                .collect();
            if !out.is_empty() && tx.send(Ok(out)).await.is_err() {
                return;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    (
        StatusCode::OK,
        [("content-type", "text/plain")],
        Body::from_stream(stream),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let q: HashMap<String, String> = [
            ("sinceTime".to_string(), "2026-01-01T00:00:00Z".to_string()),
            ("tailLines".to_string(), "5".to_string()),
            ("timestamps".to_string(), "true".to_string()),
            ("follow".to_string(), "false".to_string()),
        ]
        .into();
        let (lq, follow) = parse_query(&q).unwrap();
        assert_eq!(lq.tail, Some(5));
        assert!(lq.timestamps);
        assert!(!follow);
        assert!(lq.since.is_some());
        let bad: HashMap<String, String> =
            [("sinceTime".to_string(), "yesterday".to_string())].into();
        assert!(parse_query(&bad).is_err());
    }
}
