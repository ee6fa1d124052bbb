//! Two real authorization services for the ExternalAuth tests, on
//! loopback: one plain HTTP (200 allows, anything else denies) and one
//! gRPC `envoy.service.auth.v3.Authorization` served with tonic. Both keep
//! every check they receive, so a test can see what Envoy sent and count
//! the calls, and both can be stopped to test that Envoy then denies.
//!
//! Their policy is the same: `authorization: Bearer good` is allowed, and
//! the request to the backend gets `x-user: alice`, `x-groups: admins`;
//! anything else is denied with 403 and a body naming the server.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response,
};
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode as EnvoyStatus};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// The token both services accept.
pub const GOOD_TOKEN: &str = "Bearer good";

/// The headers both services add to an allowed request.
pub const GRANTED: [(&str, &str); 2] = [("x-user", "alice"), ("x-groups", "admins")];

/// gRPC's PERMISSION_DENIED code.
const PERMISSION_DENIED: i32 = 7;

/// One check a service received, as it saw it.
#[derive(Clone, Debug, Default)]
pub struct Check {
    pub method: String,
    /// The request path the check is about (for the HTTP service, the path
    /// of the check request itself, prefix included).
    pub path: String,
    /// Header names lowercase; repeated headers joined with ", ".
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

/// The checks a service received. Once stopped it records nothing more:
/// aborting the server's tasks takes effect only when the runtime gets to
/// them, and a check a connection task handles in between must not count.
#[derive(Debug, Default)]
struct Log {
    checks: Vec<Check>,
    stopped: bool,
}

impl Log {
    fn record(log: &Mutex<Log>, check: Check) {
        if let Ok(mut log) = log.lock()
            && !log.stopped
        {
            log.checks.push(check);
        }
    }
}

/// A running authorization service; stopped when dropped.
pub struct AuthServer {
    pub addr: SocketAddr,
    checks: Arc<Mutex<Log>>,
    task: JoinHandle<()>,
}

impl AuthServer {
    /// Every check received so far, oldest first.
    pub fn checks(&self) -> Vec<Check> {
        self.checks
            .lock()
            .map(|c| c.checks.clone())
            .unwrap_or_default()
    }

    /// How many checks were received so far.
    pub fn calls(&self) -> usize {
        self.checks.lock().map(|c| c.checks.len()).unwrap_or(0)
    }

    /// Stops the service: its port stops accepting and the connections
    /// Envoy holds to it are closed (the accept loop owns them).
    pub fn stop(&self) {
        if let Ok(mut log) = self.checks.lock() {
            log.stopped = true;
        }
        self.task.abort();
    }
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `headers` carry the good token.
fn allowed(headers: &BTreeMap<String, String>) -> bool {
    headers.get("authorization").map(String::as_str) == Some(GOOD_TOKEN)
}

/// Serves `handle` on a new loopback port, HTTP/1 and HTTP/2 (prior
/// knowledge, as Envoy's gRPC client speaks it).
async fn serve<F, Fut, B>(checks: Arc<Mutex<Log>>, handle: F) -> AuthServer
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding an authorization service port");
    let addr = listener.local_addr().expect("its address");
    let task = tokio::spawn(async move {
        // Dropped with this task when the service is stopped, which closes
        // every connection still open.
        let mut connections = JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let handle = handle.clone();
            connections.spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(handle))
                    .await;
            });
            // Reap finished connections so the set stays small.
            while connections.try_join_next().is_some() {}
        }
    });
    AuthServer { addr, checks, task }
}

/// Starts the HTTP service. It answers 200 with [`GRANTED`] (and
/// `x-extra: not-forwarded`, which only an empty `allowedResponseHeaders`
/// lets through) to [`GOOD_TOKEN`], else 403 `denied by http-auth`.
pub async fn start_http_auth() -> AuthServer {
    let checks = Arc::new(Mutex::new(Log::default()));
    let seen = Arc::clone(&checks);
    serve(checks, move |req: Request<Incoming>| {
        let seen = Arc::clone(&seen);
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes().to_vec())
                .unwrap_or_default();
            let mut headers: BTreeMap<String, String> = BTreeMap::new();
            for (name, value) in &parts.headers {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                headers
                    .entry(name.as_str().to_owned())
                    .and_modify(|v| {
                        v.push_str(", ");
                        v.push_str(&value);
                    })
                    .or_insert(value);
            }
            let ok = allowed(&headers);
            Log::record(
                &seen,
                Check {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_owned(),
                    headers,
                    body,
                },
            );
            let mut resp = if ok {
                let mut r = Response::new(Full::new(Bytes::new()));
                for (k, v) in GRANTED {
                    r.headers_mut()
                        .insert(k, hyper::header::HeaderValue::from_static(v));
                }
                r.headers_mut().insert(
                    "x-extra",
                    hyper::header::HeaderValue::from_static("not-forwarded"),
                );
                r
            } else {
                let mut r = Response::new(Full::new(Bytes::from_static(b"denied by http-auth")));
                *r.status_mut() = hyper::StatusCode::FORBIDDEN;
                r
            };
            resp.headers_mut().insert(
                "x-auth-server",
                hyper::header::HeaderValue::from_static("http"),
            );
            Ok::<_, Infallible>(resp)
        }
    })
    .await
}

/// The gRPC service's implementation of Envoy's Authorization API.
struct GrpcAuth {
    checks: Arc<Mutex<Log>>,
}

#[tonic::async_trait]
impl Authorization for GrpcAuth {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let http = request
            .into_inner()
            .attributes
            .and_then(|a| a.request)
            .and_then(|r| r.http)
            .unwrap_or_default();
        let headers: BTreeMap<String, String> = http
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        let ok = allowed(&headers);
        // Envoy puts the body in raw_body with pack_as_bytes, else in body.
        let body = if http.raw_body.is_empty() {
            http.body.into_bytes()
        } else {
            http.raw_body
        };
        Log::record(
            &self.checks,
            Check {
                method: http.method,
                path: http.path,
                headers,
                body,
            },
        );
        let header = |k: &str, v: &str| HeaderValueOption {
            header: Some(HeaderValue {
                key: k.to_owned(),
                value: v.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let response = if ok {
            CheckResponse {
                status: Some(RpcStatus::default()),
                http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse {
                    headers: GRANTED.iter().map(|(k, v)| header(k, v)).collect(),
                    ..Default::default()
                })),
                ..Default::default()
            }
        } else {
            CheckResponse {
                status: Some(RpcStatus {
                    code: PERMISSION_DENIED,
                    ..Default::default()
                }),
                http_response: Some(check_response::HttpResponse::DeniedResponse(
                    DeniedHttpResponse {
                        status: Some(HttpStatus {
                            code: EnvoyStatus::Forbidden as i32,
                        }),
                        headers: vec![header("x-auth-server", "grpc")],
                        body: "denied by grpc-auth".to_owned(),
                    },
                )),
                ..Default::default()
            }
        };
        Ok(tonic::Response::new(response))
    }
}

/// Starts the gRPC service (the same policy as the HTTP one; allowed
/// requests get [`GRANTED`]).
pub async fn start_grpc_auth() -> AuthServer {
    let checks = Arc::new(Mutex::new(Log::default()));
    let service = AuthorizationServer::new(GrpcAuth {
        checks: Arc::clone(&checks),
    });
    serve(checks, move |req: Request<Incoming>| {
        let mut service = service.clone();
        async move {
            use tonic::codegen::Service as _;
            // The generated service is always ready and never fails.
            service.call(req).await
        }
    })
    .await
}
