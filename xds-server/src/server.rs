//! The AggregatedDiscoveryService: one task per stream, reading requests
//! and cache changes and writing responses.

use crate::auth::{Authorizer, PeerIdentity};
use crate::cache::{Cache, Resources};
use crate::grpc::{Encoded, MAX_RESPONSE, Requests, ResponseBody};
use crate::session::{Limits, Mode, Session};
use crate::tls::ConnectionInfo;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::protobuf::value::Kind;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use tokio::sync::{mpsc, watch};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::{Code, Status};

/// Node metadata key naming the node group; without it the group is the
/// node's `cluster`.
pub const GROUP_METADATA_KEY: &str = "gatewright.dev/group";

/// Responses buffered per stream before the sender waits for the Envoy.
const STREAM_BUFFER: usize = 16;

/// The ADS server over a [`Cache`].
#[derive(Clone)]
pub struct AdsServer {
    cache: Cache,
    authorizer: Option<Arc<dyn Authorizer>>,
    pub(crate) stop: Option<watch::Receiver<bool>>,
    limits: Limits,
    deny_unauthenticated_secrets: bool,
}

impl AdsServer {
    /// A server answering from `cache`, to any client, for any node group.
    pub fn new(cache: Cache) -> Self {
        Self {
            cache,
            authorizer: None,
            stop: None,
            limits: Limits::default(),
            deny_unauthenticated_secrets: false,
        }
    }

    /// Replaces the default [`Limits`].
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Never sends secrets (private keys) to a stream without a verified
    /// client certificate: its Envoy gets everything else, and TLS
    /// listeners that need a secret stay unserved (counted in
    /// [`crate::Stats::secrets_refused`]). For a plaintext server reachable
    /// from beyond the host.
    pub fn deny_unauthenticated_secrets(mut self) -> Self {
        self.deny_unauthenticated_secrets = true;
        self
    }

    /// Ends every open stream with `UNAVAILABLE` once `stop` turns true, so
    /// that clients reconnect (to another replica) and a graceful shutdown
    /// of the server, which waits for open streams, can finish. Without it
    /// streams last as long as their clients keep them. [`crate::serve_tls`]
    /// sets it from its shutdown signal if it is not set.
    pub fn with_shutdown(mut self, stop: watch::Receiver<bool>) -> Self {
        self.stop = Some(stop);
        self
    }

    /// Asks `authorizer` whether each stream may subscribe as the node
    /// group its first request names; a stream it refuses is closed with
    /// the authorizer's status (counted in [`crate::Stats::denied`]) before
    /// anything is sent on it. The identity it is given comes from the
    /// connection's verified client certificate (see
    /// [`crate::TlsIncoming`]); over plain TCP there is none.
    pub fn with_authorizer(mut self, authorizer: Arc<dyn Authorizer>) -> Self {
        self.authorizer = Some(authorizer);
        self
    }

    /// Who is asking, and who decides, for a new stream.
    fn access(&self, extensions: &http::Extensions) -> Access {
        Access {
            authorizer: self.authorizer.clone(),
            identity: extensions
                .get::<ConnectionInfo>()
                .and_then(|c| c.identity.clone()),
            limits: self.limits,
            deny_unauthenticated_secrets: self.deny_unauthenticated_secrets,
        }
    }

    /// The service, ready to add to a `tonic::transport::Server`.
    pub fn into_service(self) -> AdsService {
        AdsService(self)
    }
}

/// The AggregatedDiscoveryService as a tonic service: streams are framed by
/// [`crate::grpc`] (see there why not by tonic's codec). Requests may be up
/// to 64 MiB, responses up to 256 MiB: Envoy configurations can be large.
#[derive(Clone)]
pub struct AdsService(AdsServer);

impl NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

impl tonic::codegen::Service<http::Request<Body>> for AdsService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let mode = match request.uri().path().rsplit_once('/') {
            Some((_, "StreamAggregatedResources")) => Mode::Sotw,
            Some((_, "DeltaAggregatedResources")) => Mode::Delta,
            _ => return std::future::ready(Ok(Status::unimplemented("").into_http())),
        };
        let server = &self.0;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let access = server.access(request.extensions());
        let body = request.into_body();
        match mode {
            Mode::Sotw => tokio::spawn(serve::<DiscoveryRequest>(
                server.cache.clone(),
                access,
                server.stop.clone(),
                mode,
                Requests::new(body),
                tx,
            )),
            Mode::Delta => tokio::spawn(serve::<DeltaDiscoveryRequest>(
                server.cache.clone(),
                access,
                server.stop.clone(),
                mode,
                Requests::new(body),
                tx,
            )),
        };
        let response = http::Response::builder()
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .body(Body::new(ResponseBody::new(rx)))
            .unwrap_or_else(|_| Status::internal("response headers").into_http());
        std::future::ready(Ok(response))
    }
}

/// The node group of an Envoy: the metadata key if set, else node.cluster.
fn group_of(node: Option<&Node>) -> Result<(String, String), Status> {
    let node = node.ok_or_else(|| {
        Status::invalid_argument("the first request of a stream must carry a node")
    })?;
    let from_metadata = node
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get(GROUP_METADATA_KEY))
        .and_then(|v| match &v.kind {
            Some(Kind::StringValue(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        });
    let group = from_metadata.or_else(|| (!node.cluster.is_empty()).then(|| node.cluster.clone())).ok_or_else(|| {
        Status::invalid_argument(format!(
            "node {:?} names no group: set node.cluster or the {GROUP_METADATA_KEY} metadata key",
            node.id
        ))
    })?;
    Ok((group, node.id.clone()))
}

/// The authorisation context of one stream.
struct Access {
    authorizer: Option<Arc<dyn Authorizer>>,
    identity: Option<Arc<PeerIdentity>>,
    limits: Limits,
    deny_unauthenticated_secrets: bool,
}

impl Access {
    fn check(&self, group: &str) -> Result<(), Status> {
        match &self.authorizer {
            Some(a) => a.authorize(self.identity.as_deref(), group),
            None => Ok(()),
        }
    }

    fn describe(&self) -> String {
        match &self.identity {
            Some(id) => id.to_string(),
            None => "no client certificate".to_owned(),
        }
    }
}

/// Completes once `stop` turns true; never if there is no signal or its
/// sender is gone without having said stop.
async fn stopping(stop: &mut Option<watch::Receiver<bool>>) {
    if let Some(rx) = stop
        && rx.wait_for(|s| *s).await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

/// Completes at `deadline`; never without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Lets the cache forget a group nobody serves or watches any more.
struct GroupRelease(Cache, String);

impl Drop for GroupRelease {
    fn drop(&mut self) {
        self.0.release(&self.1);
    }
}

/// Counts a stream for as long as it lives.
struct StreamGuard(Cache);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.stats().streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request of either protocol.
trait AdsRequest: prost::Message + Default + Send + 'static {
    fn node(&self) -> Option<&Node>;
    fn apply(&self, session: &mut Session, resources: &Resources) -> Result<(), Status>;
}

impl AdsRequest for DiscoveryRequest {
    fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }
    fn apply(&self, session: &mut Session, resources: &Resources) -> Result<(), Status> {
        session.on_sotw_request(self, resources)
    }
}

impl AdsRequest for DeltaDiscoveryRequest {
    fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }
    fn apply(&self, session: &mut Session, resources: &Resources) -> Result<(), Status> {
        session.on_delta_request(self, resources)
    }
}

/// Ends a stream on a request that could not be read. If the client went
/// away (it reset the stream, or the connection was lost) there is nobody to
/// tell. Otherwise the request itself was bad (not protobuf, not the message
/// it should be): say so, rather than end the stream with OK and leave the
/// client guessing.
async fn unreadable(tx: &mpsc::Sender<Result<Encoded, Status>>, status: Status) {
    if matches!(
        status.code(),
        Code::Cancelled | Code::Unavailable | Code::Unknown
    ) {
        tracing::debug!(%status, "stream ended by the client");
        return;
    }
    tracing::warn!(%status, "closing stream on an unreadable request");
    let _ = tx
        .send(Err(Status::invalid_argument(format!(
            "unreadable request: {}",
            status.message()
        ))))
        .await;
}

/// Serves one stream until the Envoy goes away or breaks the protocol.
async fn serve<Req: AdsRequest>(
    cache: Cache,
    access: Access,
    mut stop: Option<watch::Receiver<bool>>,
    mode: Mode,
    mut requests: Requests<Req>,
    tx: mpsc::Sender<Result<Encoded, Status>>,
) {
    let first = match requests.message().await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(status) => return unreadable(&tx, status).await,
    };
    let (group, node) = match group_of(first.node()) {
        Ok(g) => g,
        Err(status) => {
            let _ = tx.send(Err(status)).await;
            return;
        }
    };
    // Before anything is sent or watched: a refused client learns nothing
    // of the group but the refusal.
    if let Err(status) = access.check(&group) {
        cache.stats().denied.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%group, %node, identity = %access.describe(), %status, "refused an Envoy");
        let _ = tx.send(Err(status)).await;
        return;
    }
    if cache.stats().streams.fetch_add(1, Ordering::Relaxed) >= access.limits.max_streams {
        cache.stats().streams.fetch_sub(1, Ordering::Relaxed);
        cache.stats().cut_off.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%group, %node, "refused an Envoy: too many streams");
        let _ = tx
            .send(Err(Status::resource_exhausted(format!(
                "this server serves at most {} streams",
                access.limits.max_streams
            ))))
            .await;
        return;
    }
    let _guard = StreamGuard(cache.clone());
    tracing::info!(%group, %node, ?mode, "Envoy connected");
    // Dropped last (after the session and the watch receiver): then the
    // group can be forgotten if nothing else serves or watches it.
    let _release = GroupRelease(cache.clone(), group.clone());
    let (mut resources, mut changes) = cache.watch(&group);
    let secrets_allowed = !access.deny_unauthenticated_secrets || access.identity.is_some();
    let mut session = Session::new(
        mode,
        cache.clone(),
        group,
        node,
        access.limits,
        secrets_allowed,
    );
    let mut next = Some(first);
    loop {
        if let Some(req) = next.take()
            && let Err(status) = req.apply(&mut session, &resources)
        {
            tracing::warn!(group = %session.group(), %status, "closing stream on a bad request");
            let _ = tx.send(Err(status)).await;
            return;
        }
        for out in session.push(&resources) {
            if out.len() > MAX_RESPONSE {
                let status = Status::out_of_range(format!(
                    "a response of {} bytes; at most {MAX_RESPONSE}",
                    out.len()
                ));
                tracing::warn!(group = %session.group(), %status, "closing stream: response too large");
                let _ = tx.send(Err(status)).await;
                return;
            }
            if tx.send(Ok(out)).await.is_err() {
                return;
            }
        }
        let ack_deadline = session.ack_deadline();
        tokio::select! {
            msg = requests.message() => match msg {
                Ok(Some(req)) => next = Some(req),
                Ok(None) => return,
                Err(status) => return unreadable(&tx, status).await,
            },
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                resources = cache.resources(session.group());
            }
            () = sleep_until(ack_deadline) => {
                if let Err(status) = session.check_acks() {
                    tracing::warn!(group = %session.group(), %status, "cutting off an Envoy that does not acknowledge");
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            }
            () = stopping(&mut stop) => {
                tracing::debug!(group = %session.group(), "closing stream: the server is shutting down");
                let _ = tx
                    .send(Err(Status::unavailable("the xDS server is shutting down")))
                    .await;
                return;
            }
        }
    }
}
