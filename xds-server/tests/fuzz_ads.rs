//! Fuzzing the ADS server with malformed and hostile requests, over real
//! gRPC on loopback: random sequences of state-of-the-world and delta
//! requests (unknown types, stale and made-up nonces, NACKs, names in bulk,
//! nodes without a group, `initial_resource_versions` of nothing), and raw
//! bytes that are not protobuf at all. After every case:
//!
//! - nothing in the server panicked (a panic hook counts them);
//! - every response names a type the server serves, with a nonce unique on
//!   its stream;
//! - a well-behaved client still gets its configuration.
//!
//! `PROPTEST_CASES` sets the number of cases (default 48 per property, so
//! `make test` stays quick); `make fuzz` runs many more. Failing cases are
//! kept in `tests/proptest-regressions/fuzz_ads.txt` and replayed first.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, Value};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use gatewright_xds::{AdsServer, Cache, GROUP_METADATA_KEY, Limits, Resources, type_url};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::transport::Channel;

const GROUP: &str = "fuzz/gateway";
/// How long a case waits for the server to go quiet.
const QUIET: Duration = Duration::from_millis(150);

/// Panics anywhere in the process since the start.
static PANICS: AtomicUsize = AtomicUsize::new(0);

struct Server {
    rt: Runtime,
    cache: Cache,
    channel: Channel,
}

/// One server for every case: starting a server per case would measure
/// tonic's start-up, not the server's handling of requests.
fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default_hook(info);
        }));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let cache = Cache::new();
        let mut resources = Resources::new();
        for name in ["a", "b"] {
            resources.add(
                name,
                &Cluster {
                    name: name.to_owned(),
                    ..Default::default()
                },
            );
        }
        cache.set(GROUP, resources);
        // Small limits, so cases reach them.
        let limits = Limits {
            max_streams: 64,
            max_names: 16,
            max_unacked: 2,
            ack_timeout: Duration::from_millis(300),
        };
        let channel = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("address");
            let service = AdsServer::new(cache.clone())
                .with_limits(limits)
                .into_service();
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(TcpListenerStream::new(listener)),
            );
            Channel::from_shared(format!("http://{addr}"))
                .expect("endpoint")
                .connect()
                .await
                .expect("connect")
        });
        Server { rt, cache, channel }
    })
}

fn node(group: Option<&str>, id: String) -> Node {
    Node {
        id,
        metadata: group.map(|g| Struct {
            fields: [(
                GROUP_METADATA_KEY.to_owned(),
                Value {
                    kind: Some(Kind::StringValue(g.to_owned())),
                },
            )]
            .into_iter()
            .collect(),
        }),
        ..Default::default()
    }
}

const SERVED: [&str; 5] = [
    type_url::CLUSTER,
    type_url::ENDPOINT,
    type_url::LISTENER,
    type_url::ROUTE,
    type_url::SECRET,
];

fn type_urls() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => proptest::sample::select(&SERVED[..]).prop_map(str::to_owned),
        1 => Just(String::new()),
        1 => "[ -~]{0,40}",
    ]
}

fn names() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(
        prop_oneof![
            Just("*".to_owned()),
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just(String::new()),
            "[a-z/]{1,12}",
            "\\PC{0,300}",
        ],
        0..24,
    )
}

fn nonces() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        (1u32..8).prop_map(|n| n.to_string()),
        "\\PC{0,20}",
    ]
}

fn error_details() -> impl Strategy<Value = Option<RpcStatus>> {
    proptest::option::weighted(
        0.2,
        ("\\PC{0,200}", any::<i32>()).prop_map(|(message, code)| RpcStatus {
            code,
            message,
            details: vec![],
        }),
    )
}

fn nodes() -> impl Strategy<Value = Option<Node>> {
    proptest::option::weighted(
        0.9,
        (
            prop_oneof![
                6 => Just(Some(GROUP)),
                1 => Just(Some("")),
                1 => Just(Some("made/up")),
                1 => Just(None),
            ],
            "\\PC{0,64}",
        )
            .prop_map(|(group, id)| node(group, id)),
    )
}

fn sotw_requests() -> impl Strategy<Value = Vec<DiscoveryRequest>> {
    proptest::collection::vec(
        (
            nodes(),
            "\\PC{0,20}",
            names(),
            type_urls(),
            nonces(),
            error_details(),
        )
            .prop_map(
                |(node, version_info, resource_names, type_url, response_nonce, error_detail)| {
                    DiscoveryRequest {
                        node,
                        version_info,
                        resource_names,
                        type_url,
                        response_nonce,
                        error_detail,
                        ..Default::default()
                    }
                },
            ),
        1..16,
    )
}

fn delta_requests() -> impl Strategy<Value = Vec<DeltaDiscoveryRequest>> {
    proptest::collection::vec(
        (
            nodes(),
            type_urls(),
            names(),
            names(),
            proptest::collection::hash_map("\\PC{0,12}", "\\PC{0,12}", 0..8),
            nonces(),
            error_details(),
        )
            .prop_map(
                |(node, type_url, subscribe, unsubscribe, initial, nonce, error_detail)| {
                    DeltaDiscoveryRequest {
                        node,
                        type_url,
                        resource_names_subscribe: subscribe,
                        resource_names_unsubscribe: unsubscribe,
                        initial_resource_versions: initial.into_iter().collect::<HashMap<_, _>>(),
                        response_nonce: nonce,
                        error_detail,
                        ..Default::default()
                    }
                },
            ),
        1..16,
    )
}

/// Sends `requests` on a new stream of the protocol `open` starts,
/// half-closes it and collects (type, nonce) of what comes back until the
/// stream ends or goes quiet.
async fn exchange<Req, Resp, Fut>(
    requests: Vec<Req>,
    open: impl FnOnce(UnboundedReceiverStream<Req>) -> Fut,
    key: fn(&Resp) -> (String, String),
) -> Vec<(String, String)>
where
    Fut: std::future::Future<Output = Result<tonic::Response<tonic::Streaming<Resp>>, tonic::Status>>,
{
    let (tx, rx) = mpsc::unbounded_channel();
    for r in requests {
        let _ = tx.send(r);
    }
    drop(tx);
    let Ok(response) = open(UnboundedReceiverStream::new(rx)).await else {
        return vec![];
    };
    let mut stream = response.into_inner();
    let mut seen = Vec::new();
    while let Ok(Some(Ok(r))) = tokio::time::timeout(QUIET, stream.next()).await {
        seen.push(key(&r));
    }
    seen
}

async fn sotw_exchange(
    channel: &Channel,
    requests: Vec<DiscoveryRequest>,
) -> Vec<(String, String)> {
    let mut client = AggregatedDiscoveryServiceClient::new(channel.clone());
    exchange(
        requests,
        |rx| async move { client.stream_aggregated_resources(rx).await },
        |r: &DiscoveryResponse| (r.type_url.clone(), r.nonce.clone()),
    )
    .await
}

async fn delta_exchange(
    channel: &Channel,
    requests: Vec<DeltaDiscoveryRequest>,
) -> Vec<(String, String)> {
    let mut client = AggregatedDiscoveryServiceClient::new(channel.clone());
    exchange(
        requests,
        |rx| async move { client.delta_aggregated_resources(rx).await },
        |r: &DeltaDiscoveryResponse| (r.type_url.clone(), r.nonce.clone()),
    )
    .await
}

/// A well-behaved client gets the group's clusters.
async fn still_serving(channel: &Channel) -> Result<(), String> {
    let request = DiscoveryRequest {
        node: Some(node(Some(GROUP), "healthy".to_owned())),
        type_url: type_url::CLUSTER.to_owned(),
        ..Default::default()
    };
    let mut client = AggregatedDiscoveryServiceClient::new(channel.clone());
    // Keep the request side open until the answer is read.
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(request).map_err(|e| e.to_string())?;
    let mut stream = client
        .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await
        .map_err(|e| format!("open: {e}"))?
        .into_inner();
    let first: Option<Result<DiscoveryResponse, tonic::Status>> =
        tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .map_err(|_| "no answer within 5 s".to_owned())?;
    match first {
        Some(Ok(r)) if r.resources.len() == 2 => Ok(()),
        other => Err(format!("unexpected answer: {other:?}")),
    }
}

/// The checks after every case.
fn check(seen: &[(String, String)]) -> Result<(), TestCaseError> {
    let mut nonces = BTreeSet::new();
    for (type_url, nonce) in seen {
        prop_assert!(
            SERVED.contains(&type_url.as_str()),
            "answered type {type_url:?}"
        );
        prop_assert!(nonces.insert(nonce.clone()), "nonce {nonce:?} used twice");
    }
    prop_assert_eq!(PANICS.load(Ordering::SeqCst), 0, "the server panicked");
    let s = server();
    s.rt.block_on(still_serving(&s.channel))
        .map_err(|e| TestCaseError::fail(format!("server no longer serves: {e}")))?;
    // Streams of made-up groups leave nothing behind once they end.
    let groups = s.cache.group_count();
    prop_assert!(groups <= 1 + 64, "{groups} groups in the cache");
    Ok(())
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/proptest-regressions/fuzz_ads.txt"
        )))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn hostile_sotw_streams_harm_nothing(requests in sotw_requests()) {
        let s = server();
        let seen = s.rt.block_on(sotw_exchange(&s.channel, requests));
        check(&seen)?;
    }

    #[test]
    fn hostile_delta_streams_harm_nothing(requests in delta_requests()) {
        let s = server();
        let seen = s.rt.block_on(delta_exchange(&s.channel, requests));
        check(&seen)?;
    }

    #[test]
    fn bytes_that_are_not_protobuf_harm_nothing(
        frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..256), 1..4),
        delta in any::<bool>(),
    ) {
        let s = server();
        let status = s.rt.block_on(raw_exchange(&s.channel, frames, delta));
        // Undecodable input ends the stream with an error, never with OK
        // and never by dropping the connection.
        if let Some(status) = status {
            prop_assert_ne!(status.code(), tonic::Code::Internal, "{:?}", status);
        }
        check(&[])?;
    }
}

/// Sends raw `frames` as gRPC messages on the ADS method; returns the
/// stream's final status, if it ended with one.
async fn raw_exchange(
    channel: &Channel,
    frames: Vec<Vec<u8>>,
    delta: bool,
) -> Option<tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.ok()?;
    let method = if delta {
        "DeltaAggregatedResources"
    } else {
        "StreamAggregatedResources"
    };
    let path = tonic::codegen::http::uri::PathAndQuery::from_maybe_shared(format!(
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/{method}"
    ))
    .ok()?;
    let request = tonic::Request::new(tokio_stream::iter(frames));
    let response = match grpc.streaming(request, path, RawCodec).await {
        Ok(r) => r,
        Err(status) => return Some(status),
    };
    let mut stream = response.into_inner();
    loop {
        match tokio::time::timeout(QUIET, stream.next()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(status))) => return Some(status),
            Ok(None) | Err(_) => return None,
        }
    }
}

/// A codec that sends bytes as they are and receives bytes.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Self::Item,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Self::Error> {
        use bytes::BufMut as _;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Self::Item>, Self::Error> {
        use bytes::Buf as _;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}
