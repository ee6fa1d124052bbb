//! ADS protocol tests: a real tonic client talks to the server over HTTP/2 on
//! loopback, in both the state-of-the-world (`StreamAggregatedResources`) and
//! the delta (`DeltaAggregatedResources`) variants, and plays the part of an
//! Envoy: it subscribes, ACKs, NACKs and reconnects.
//!
//! Every wait is bounded. The only timed waits are the "nothing arrives"
//! checks ([`QUIET`]); everything else waits for a message that must come.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier as DataSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, DataSource, Node, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, Rds,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type as SecretType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, TlsCertificate};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Any, Duration, Struct, Value};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use gatewright_xds::{AdsServer, Cache, GROUP_METADATA_KEY, Limits, Resources, type_url};
use prost::{Message, Name};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::transport::Channel;
use tonic::{Code, Streaming};

use type_url::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};

/// The longest any expected message may take (the machine may be busy).
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);
/// How long "nothing arrives" is watched for.
const QUIET: std::time::Duration = std::time::Duration::from_millis(300);

const GROUP: &str = "default/gateway";

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

// ---------------------------------------------------------------------------
// Server and streams

struct Harness {
    cache: Cache,
    channel: Channel,
    client: AggregatedDiscoveryServiceClient<Channel>,
}

/// Serves a fresh cache on a loopback port and connects a client to it.
async fn start() -> Harness {
    start_with(|server| server).await
}

/// [`start`], with the server configured by `configure`.
async fn start_with(configure: impl FnOnce(AdsServer) -> AdsServer) -> Harness {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    let cache = Cache::new();
    let service = configure(AdsServer::new(cache.clone())).into_service();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let endpoint = Channel::from_shared(format!("http://{addr}")).expect("an endpoint");
    let channel = within("the connection", endpoint.connect())
        .await
        .expect("connect");
    let client = AggregatedDiscoveryServiceClient::new(channel.clone());
    Harness {
        cache,
        channel,
        client,
    }
}

/// A node in `group` (by the metadata key), as Gatewright's Envoys are.
fn node(id: &str, group: &str) -> Node {
    let fields = [(
        GROUP_METADATA_KEY.to_owned(),
        Value {
            kind: Some(Kind::StringValue(group.to_owned())),
        },
    )];
    Node {
        id: id.to_owned(),
        cluster: "ignored-when-metadata-names-a-group".to_owned(),
        metadata: Some(Struct {
            fields: fields.into_iter().collect(),
        }),
        ..Default::default()
    }
}

fn error(message: &str) -> Option<RpcStatus> {
    Some(RpcStatus {
        code: Code::InvalidArgument as i32,
        message: message.to_owned(),
        details: vec![],
    })
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// A state-of-the-world stream, driven by hand.
struct Sotw {
    requests: mpsc::UnboundedSender<DiscoveryRequest>,
    responses: Streaming<DiscoveryResponse>,
    /// Sent with the first request only, as Envoy may.
    node: Option<Node>,
}

impl Sotw {
    async fn open(h: &Harness, node: Option<Node>) -> Self {
        let (requests, rx) = mpsc::unbounded_channel();
        let responses = within(
            "the stream to open",
            h.client
                .clone()
                .stream_aggregated_resources(UnboundedReceiverStream::new(rx)),
        )
        .await
        .expect("open a state-of-the-world stream")
        .into_inner();
        Self {
            requests,
            responses,
            node,
        }
    }

    fn send(&mut self, mut request: DiscoveryRequest) {
        request.node = self.node.take();
        self.requests.send(request).expect("stream open");
    }

    /// A first request (or a change of subscription without an ACK).
    fn subscribe(&mut self, type_url: &str, names: &[&str]) {
        self.send(DiscoveryRequest {
            type_url: type_url.to_owned(),
            resource_names: strings(names),
            ..Default::default()
        });
    }

    /// ACKs `response`, subscribed to `names`.
    fn ack(&mut self, response: &DiscoveryResponse, names: &[&str]) {
        self.send(DiscoveryRequest {
            version_info: response.version_info.clone(),
            type_url: response.type_url.clone(),
            resource_names: strings(names),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        });
    }

    /// NACKs `response`: Envoy keeps the version it had (`kept`).
    fn nack(&mut self, response: &DiscoveryResponse, kept: &str, names: &[&str], message: &str) {
        self.send(DiscoveryRequest {
            version_info: kept.to_owned(),
            type_url: response.type_url.clone(),
            resource_names: strings(names),
            response_nonce: response.nonce.clone(),
            error_detail: error(message),
            ..Default::default()
        });
    }

    async fn recv(&mut self) -> DiscoveryResponse {
        match within("a response", self.responses.message()).await {
            Ok(Some(r)) => r,
            Ok(None) => panic!("the stream ended"),
            Err(status) => panic!("the stream failed: {status:?}"),
        }
    }

    /// Receives a response, which must be of `type_url`.
    async fn recv_type(&mut self, type_url: &str) -> DiscoveryResponse {
        let r = self.recv().await;
        assert_eq!(r.type_url, type_url, "unexpected response: {}", show(&r));
        r
    }

    /// Asserts that nothing arrives for a while.
    async fn quiet(&mut self) {
        if let Ok(msg) = tokio::time::timeout(QUIET, self.responses.message()).await {
            match msg {
                Ok(Some(r)) => panic!("expected nothing, got {}", show(&r)),
                other => panic!("expected nothing, the stream ended: {other:?}"),
            }
        }
    }

    /// The status the stream ends with.
    async fn status(&mut self) -> tonic::Status {
        match within("the stream to fail", self.responses.message()).await {
            Err(status) => status,
            Ok(other) => panic!("expected an error status, got {other:?}"),
        }
    }
}

/// A delta stream, driven by hand.
struct Delta {
    requests: mpsc::UnboundedSender<DeltaDiscoveryRequest>,
    responses: Streaming<DeltaDiscoveryResponse>,
    node: Option<Node>,
}

impl Delta {
    async fn open(h: &Harness, node: Option<Node>) -> Self {
        let (requests, rx) = mpsc::unbounded_channel();
        let responses = within(
            "the stream to open",
            h.client
                .clone()
                .delta_aggregated_resources(UnboundedReceiverStream::new(rx)),
        )
        .await
        .expect("open a delta stream")
        .into_inner();
        Self {
            requests,
            responses,
            node,
        }
    }

    fn send(&mut self, mut request: DeltaDiscoveryRequest) {
        request.node = self.node.take();
        self.requests.send(request).expect("stream open");
    }

    fn subscribe(&mut self, type_url: &str, names: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            type_url: type_url.to_owned(),
            resource_names_subscribe: strings(names),
            ..Default::default()
        });
    }

    fn unsubscribe(&mut self, type_url: &str, names: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            type_url: type_url.to_owned(),
            resource_names_unsubscribe: strings(names),
            ..Default::default()
        });
    }

    fn ack(&mut self, response: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        });
    }

    fn nack(&mut self, response: &DeltaDiscoveryResponse, message: &str) {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            error_detail: error(message),
            ..Default::default()
        });
    }

    async fn recv(&mut self) -> DeltaDiscoveryResponse {
        match within("a response", self.responses.message()).await {
            Ok(Some(r)) => r,
            Ok(None) => panic!("the stream ended"),
            Err(status) => panic!("the stream failed: {status:?}"),
        }
    }

    async fn recv_type(&mut self, type_url: &str) -> DeltaDiscoveryResponse {
        let r = self.recv().await;
        assert_eq!(
            r.type_url,
            type_url,
            "unexpected response: {}",
            show_delta(&r)
        );
        r
    }

    async fn quiet(&mut self) {
        if let Ok(msg) = tokio::time::timeout(QUIET, self.responses.message()).await {
            match msg {
                Ok(Some(r)) => panic!("expected nothing, got {}", show_delta(&r)),
                other => panic!("expected nothing, the stream ended: {other:?}"),
            }
        }
    }

    async fn status(&mut self) -> tonic::Status {
        match within("the stream to fail", self.responses.message()).await {
            Err(status) => status,
            Ok(other) => panic!("expected an error status, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Resources: real Envoy protos

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn socket(ip: &str, port: u32) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: ip.to_owned(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn cluster(name: &str, timeout_secs: i64) -> Cluster {
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        connect_timeout: Some(Duration {
            seconds: timeout_secs,
            nanos: 0,
        }),
        ..Default::default()
    }
}

fn endpoints(cluster: &str, port: u32) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: cluster.to_owned(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                    address: Some(socket("10.0.0.1", port)),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn listener(name: &str, port: u32, route: &str) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: name.to_owned(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route.to_owned(),
        })),
        ..Default::default()
    };
    Listener {
        name: name.to_owned(),
        address: Some(socket("0.0.0.0", port)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".to_owned(),
                config_type: Some(ConfigType::TypedConfig(Any {
                    type_url: HttpConnectionManager::type_url(),
                    value: hcm.encode_to_vec(),
                })),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn route(name: &str, clusters: &[String]) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: name.to_owned(),
            domains: vec!["*".to_owned()],
            routes: clusters
                .iter()
                .map(|c| Route {
                    r#match: Some(RouteMatch {
                        path_specifier: Some(PathSpecifier::Prefix(format!("/{c}"))),
                        ..Default::default()
                    }),
                    action: Some(Action::Route(RouteAction {
                        cluster_specifier: Some(ClusterSpecifier::Cluster(c.clone())),
                        ..Default::default()
                    })),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn secret(name: &str, pem: &str) -> Secret {
    Secret {
        name: name.to_owned(),
        r#type: Some(SecretType::TlsCertificate(TlsCertificate {
            certificate_chain: Some(DataSource {
                specifier: Some(DataSpecifier::InlineString(pem.to_owned())),
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}

/// A group's configuration, described briefly; [`Config::resources`] turns
/// it into Envoy protos.
#[derive(Clone, Default)]
struct Config {
    /// name → connect timeout (seconds)
    clusters: BTreeMap<String, i64>,
    /// cluster → endpoint port
    endpoints: BTreeMap<String, u32>,
    /// name → certificate text
    secrets: BTreeMap<String, String>,
    /// name → (port, route configuration name)
    listeners: BTreeMap<String, (u32, String)>,
    /// name → clusters routed to
    routes: BTreeMap<String, Vec<String>>,
}

impl Config {
    fn cluster(mut self, name: &str, timeout_secs: i64) -> Self {
        self.clusters.insert(name.to_owned(), timeout_secs);
        self
    }
    fn endpoint(mut self, cluster: &str, port: u32) -> Self {
        self.endpoints.insert(cluster.to_owned(), port);
        self
    }
    fn secret(mut self, name: &str, pem: &str) -> Self {
        self.secrets.insert(name.to_owned(), pem.to_owned());
        self
    }
    fn listener(mut self, name: &str, port: u32, route: &str) -> Self {
        self.listeners
            .insert(name.to_owned(), (port, route.to_owned()));
        self
    }
    fn route(mut self, name: &str, clusters: &[&str]) -> Self {
        self.routes.insert(name.to_owned(), strings(clusters));
        self
    }
    fn without_cluster(mut self, name: &str) -> Self {
        self.clusters.remove(name);
        self.endpoints.remove(name);
        self
    }
    fn without_listener(mut self, name: &str) -> Self {
        self.listeners.remove(name);
        self
    }

    fn resources(&self) -> Resources {
        let mut r = Resources::new();
        for (name, timeout) in &self.clusters {
            r.add(name, &cluster(name, *timeout));
        }
        for (name, port) in &self.endpoints {
            r.add(name, &endpoints(name, *port));
        }
        for (name, pem) in &self.secrets {
            r.add(name, &secret(name, pem));
        }
        for (name, (port, rds)) in &self.listeners {
            r.add(name, &listener(name, *port, rds));
        }
        for (name, clusters) in &self.routes {
            r.add(name, &route(name, clusters));
        }
        r
    }

    /// Sets this configuration as `group`'s; it must be a change.
    fn set(&self, cache: &Cache, group: &str) {
        assert!(cache.set(group, self.resources()), "expected a change");
    }
}

/// Two clusters with endpoints, a secret, a listener and its routes.
fn base() -> Config {
    Config::default()
        .cluster("a", 1)
        .endpoint("a", 8080)
        .cluster("b", 1)
        .endpoint("b", 8081)
        .secret("cert", "certificate one")
        .listener("http", 80, "http-routes")
        .route("http-routes", &["a", "b"])
}

/// The name of a resource in a state-of-the-world response.
fn name_of(any: &Any) -> String {
    let bytes = any.value.as_slice();
    match any.type_url.as_str() {
        CLUSTER => Cluster::decode(bytes).expect("a Cluster").name,
        ENDPOINT => {
            ClusterLoadAssignment::decode(bytes)
                .expect("a ClusterLoadAssignment")
                .cluster_name
        }
        LISTENER => Listener::decode(bytes).expect("a Listener").name,
        ROUTE => {
            RouteConfiguration::decode(bytes)
                .expect("a RouteConfiguration")
                .name
        }
        SECRET => Secret::decode(bytes).expect("a Secret").name,
        other => panic!("unexpected type {other}"),
    }
}

fn names(r: &DiscoveryResponse) -> Vec<String> {
    r.resources.iter().map(name_of).collect()
}

fn delta_names(r: &DeltaDiscoveryResponse) -> Vec<String> {
    r.resources
        .iter()
        .map(|res| {
            let any = res.resource.as_ref().expect("a resource body");
            assert_eq!(any.type_url, r.type_url);
            let name = name_of(any);
            assert_eq!(res.name, name, "resource name matches its body");
            name
        })
        .collect()
}

/// The endpoint port in an EDS response, by cluster.
fn ports(resources: &[Any]) -> BTreeMap<String, u32> {
    resources
        .iter()
        .map(|any| {
            let cla = ClusterLoadAssignment::decode(any.value.as_slice()).expect("a CLA");
            let endpoint = &cla.endpoints[0].lb_endpoints[0];
            let Some(HostIdentifier::Endpoint(e)) = &endpoint.host_identifier else {
                panic!("no endpoint")
            };
            let Some(AddressKind::SocketAddress(s)) =
                e.address.as_ref().and_then(|a| a.address.as_ref())
            else {
                panic!("no socket address")
            };
            let Some(PortSpecifier::PortValue(port)) = s.port_specifier else {
                panic!("no port")
            };
            (cla.cluster_name, port)
        })
        .collect()
}

fn short(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

fn show(r: &DiscoveryResponse) -> String {
    format!(
        "{} {:?} (version {}, nonce {})",
        short(&r.type_url),
        names(r),
        r.version_info,
        r.nonce
    )
}

fn show_delta(r: &DeltaDiscoveryResponse) -> String {
    format!(
        "{} +{:?} -{:?} (nonce {})",
        short(&r.type_url),
        r.resources.iter().map(|x| &x.name).collect::<Vec<_>>(),
        r.removed_resources,
        r.nonce
    )
}

fn v(names: &[&str]) -> Vec<String> {
    strings(names)
}

// ---------------------------------------------------------------------------
// Subscriptions

#[tokio::test]
async fn sotw_wildcard_and_explicit_subscriptions() {
    let h = start().await;
    base()
        .cluster("c", 1)
        .endpoint("c", 8082)
        .listener("https", 443, "https-routes")
        .route("https-routes", &["c"])
        .set(&h.cache, GROUP);
    let mut s = Sotw::open(&h, Some(node("envoy-1", GROUP))).await;

    // Wildcard: an empty first request gets every cluster and listener.
    s.subscribe(CLUSTER, &[]);
    let cds = s.recv_type(CLUSTER).await;
    assert_eq!(names(&cds), v(&["a", "b", "c"]));
    assert!(!cds.version_info.is_empty() && !cds.nonce.is_empty());
    s.ack(&cds, &[]);
    s.subscribe(LISTENER, &[]);
    let lds = s.recv_type(LISTENER).await;
    assert_eq!(names(&lds), v(&["http", "https"]));
    s.ack(&lds, &[]);

    // Explicit names get only those.
    s.subscribe(ROUTE, &["https-routes"]);
    let rds = s.recv_type(ROUTE).await;
    assert_eq!(names(&rds), v(&["https-routes"]));
    s.ack(&rds, &["https-routes"]);
    s.subscribe(ENDPOINT, &["a", "c"]);
    let eds = s.recv_type(ENDPOINT).await;
    assert_eq!(names(&eds), v(&["a", "c"]));
    s.ack(&eds, &["a", "c"]);
    s.quiet().await;

    // A wider subscription (with an ACK of the last response) answers with
    // the new set.
    s.ack(&eds, &["a", "b", "c"]);
    let eds2 = s.recv_type(ENDPOINT).await;
    assert_eq!(names(&eds2), v(&["a", "b", "c"]));
    assert_ne!(eds2.nonce, eds.nonce);
    s.ack(&eds2, &["a", "b", "c"]);
    s.quiet().await;
}

#[tokio::test]
async fn delta_wildcard_and_explicit_subscriptions() {
    let h = start().await;
    base()
        .cluster("c", 1)
        .endpoint("c", 8082)
        .listener("https", 443, "https-routes")
        .route("https-routes", &["c"])
        .set(&h.cache, GROUP);
    let mut s = Delta::open(&h, Some(node("envoy-1", GROUP))).await;

    s.subscribe(CLUSTER, &[]);
    let cds = s.recv_type(CLUSTER).await;
    assert_eq!(delta_names(&cds), v(&["a", "b", "c"]));
    assert!(cds.removed_resources.is_empty());
    assert!(cds.resources.iter().all(|r| !r.version.is_empty()));
    s.ack(&cds);
    s.subscribe(LISTENER, &["*"]);
    let lds = s.recv_type(LISTENER).await;
    assert_eq!(delta_names(&lds), v(&["http", "https"]));
    s.ack(&lds);

    s.subscribe(ROUTE, &["https-routes"]);
    let rds = s.recv_type(ROUTE).await;
    assert_eq!(delta_names(&rds), v(&["https-routes"]));
    s.ack(&rds);
    s.subscribe(ENDPOINT, &["a", "c"]);
    let eds = s.recv_type(ENDPOINT).await;
    assert_eq!(delta_names(&eds), v(&["a", "c"]));
    s.ack(&eds);
    s.quiet().await;

    // Subscribing to one more name sends just that one.
    s.subscribe(ENDPOINT, &["b"]);
    let eds2 = s.recv_type(ENDPOINT).await;
    assert_eq!(delta_names(&eds2), v(&["b"]));
    s.ack(&eds2);
    // Unsubscribing sends nothing; a change to what is no longer watched
    // is not sent either.
    s.unsubscribe(ENDPOINT, &["c"]);
    s.quiet().await;
    base()
        .cluster("c", 1)
        .endpoint("c", 9999)
        .listener("https", 443, "https-routes")
        .route("https-routes", &["c"])
        .set(&h.cache, GROUP);
    s.quiet().await;
}

#[tokio::test]
async fn sotw_names_requested_before_they_exist_are_sent_when_they_appear() {
    let h = start().await;
    base().set(&h.cache, GROUP);
    let mut s = Sotw::open(&h, Some(node("envoy-1", GROUP))).await;
    s.subscribe(ENDPOINT, &["a", "later"]);
    let eds = s.recv_type(ENDPOINT).await;
    assert_eq!(names(&eds), v(&["a"]));
    s.ack(&eds, &["a", "later"]);
    s.subscribe(ROUTE, &["later-routes"]);
    let rds = s.recv_type(ROUTE).await;
    assert!(rds.resources.is_empty(), "{}", show(&rds));
    s.ack(&rds, &["later-routes"]);
    s.quiet().await;

    base()
        .cluster("later", 1)
        .endpoint("later", 9000)
        .route("later-routes", &["later"])
        .set(&h.cache, GROUP);
    let eds = s.recv_type(ENDPOINT).await;
    assert_eq!(names(&eds), v(&["a", "later"]));
    let rds = s.recv_type(ROUTE).await;
    assert_eq!(names(&rds), v(&["later-routes"]));
    s.ack(&eds, &["a", "later"]);
    s.ack(&rds, &["later-routes"]);
    s.quiet().await;
}

#[tokio::test]
async fn delta_names_requested_before_they_exist_are_sent_when_they_appear() {
    let h = start().await;
    base().set(&h.cache, GROUP);
    let mut s = Delta::open(&h, Some(node("envoy-1", GROUP))).await;
    s.subscribe(ENDPOINT, &["a", "later"]);
    let eds = s.recv_type(ENDPOINT).await;
    assert_eq!(delta_names(&eds), v(&["a"]));
    s.ack(&eds);
    s.subscribe(ROUTE, &["later-routes"]);
    s.quiet().await;

    base()
        .cluster("later", 1)
        .endpoint("later", 9000)
        .route("later-routes", &["later"])
        .set(&h.cache, GROUP);
    let eds = s.recv_type(ENDPOINT).await;
    assert_eq!(delta_names(&eds), v(&["later"]));
    assert!(eds.removed_resources.is_empty());
    let rds = s.recv_type(ROUTE).await;
    assert_eq!(delta_names(&rds), v(&["later-routes"]));
    s.ack(&eds);
    s.ack(&rds);
    s.quiet().await;
}

#[tokio::test]
async fn group_comes_from_metadata_else_node_cluster() {
    let h = start().await;
    Config::default()
        .cluster("by-cluster", 1)
        .set(&h.cache, "fleet");
    Config::default()
        .cluster("by-metadata", 1)
        .set(&h.cache, GROUP);

    let plain = Node {
        id: "envoy-1".to_owned(),
        cluster: "fleet".to_owned(),
        ..Default::default()
    };
    let mut s = Sotw::open(&h, Some(plain)).await;
    s.subscribe(CLUSTER, &[]);
    assert_eq!(names(&s.recv_type(CLUSTER).await), v(&["by-cluster"]));

    let mut with_metadata = node("envoy-2", GROUP);
    with_metadata.cluster = "fleet".to_owned();
    let mut d = Delta::open(&h, Some(with_metadata)).await;
    d.subscribe(CLUSTER, &[]);
    assert_eq!(
        delta_names(&d.recv_type(CLUSTER).await),
        v(&["by-metadata"])
    );
}

#[tokio::test]
async fn wildcard_subscriptions_of_an_empty_group_are_answered() {
    // An Envoy waits for its first CDS and LDS responses before it finishes
    // initialising: an empty configuration must still be sent, or it hangs
    // until its initial fetch timeout.
    let h = start().await;
    let mut s = Sotw::open(&h, Some(node("envoy-1", GROUP))).await;
    s.subscribe(CLUSTER, &[]);
    let cds = s.recv_type(CLUSTER).await;
    assert!(cds.resources.is_empty());
    s.ack(&cds, &[]);
    s.subscribe(LISTENER, &[]);
    let lds = s.recv_type(LISTENER).await;
    assert!(lds.resources.is_empty());
    s.ack(&lds, &[]);
    s.quiet().await;

    let mut d = Delta::open(&h, Some(node("envoy-2", GROUP))).await;
    d.subscribe(CLUSTER, &[]);
    let cds = d.recv_type(CLUSTER).await;
    assert!(cds.resources.is_empty() && cds.removed_resources.is_empty());
    assert!(!cds.nonce.is_empty());
    d.ack(&cds);
    d.subscribe(LISTENER, &["*"]);
    let lds = d.recv_type(LISTENER).await;
    assert!(lds.resources.is_empty() && lds.removed_resources.is_empty());
    d.ack(&lds);
    // Only the first time: afterwards an empty delta says nothing.
    d.quiet().await;

    // A reconnecting delta client that holds exactly the current state is
    // answered too.
    Config::default().cluster("a", 1).set(&h.cache, GROUP);
    let cds = d.recv_type(CLUSTER).await;
    d.ack(&cds);
    let sotw_cds = s.recv_type(CLUSTER).await;
    assert_eq!(names(&sotw_cds), v(&["a"]));
    s.ack(&sotw_cds, &[]);
    drop(d);
    let mut d = Delta::open(&h, Some(node("envoy-2", GROUP))).await;
    d.send(DeltaDiscoveryRequest {
        type_url: CLUSTER.to_owned(),
        initial_resource_versions: HashMap::from([(
            "a".to_owned(),
            cds.resources[0].version.clone(),
        )]),
        ..Default::default()
    });
    let cds = d.recv_type(CLUSTER).await;
    assert!(cds.resources.is_empty() && cds.removed_resources.is_empty());
    d.ack(&cds);
    d.quiet().await;

    // The configuration, once there, is sent.
    base().set(&h.cache, GROUP);
    assert_eq!(names(&s.recv_type(CLUSTER).await), v(&["a", "b"]));
    assert_eq!(delta_names(&d.recv_type(CLUSTER).await), v(&["b"]));
}

// ---------------------------------------------------------------------------
// Changes

/// Subscribes a state-of-the-world stream to everything in [`base`] and
/// ACKs it all.
async fn sotw_all(s: &mut Sotw) {
    for (type_url, names) in [
        (CLUSTER, &[][..]),
        (ENDPOINT, &["a", "b"][..]),
        (SECRET, &["cert"][..]),
        (LISTENER, &[][..]),
        (ROUTE, &["http-routes"][..]),
    ] {
        s.subscribe(type_url, names);
        let r = s.recv_type(type_url).await;
        s.ack(&r, names);
    }
    s.quiet().await;
}

/// The same for a delta stream.
async fn delta_all(s: &mut Delta) {
    for (type_url, names) in [
        (CLUSTER, &[][..]),
        (ENDPOINT, &["a", "b"][..]),
        (SECRET, &["cert"][..]),
        (LISTENER, &[][..]),
        (ROUTE, &["http-routes"][..]),
    ] {
        s.subscribe(type_url, names);
        let r = s.recv_type(type_url).await;
        s.ack(&r);
    }
    s.quiet().await;
}

#[tokio::test]
async fn sotw_identical_set_sends_nothing_and_an_endpoint_change_sends_only_eds() {
    let h = start().await;
    base().set(&h.cache, GROUP);
    let mut s = Sotw::open(&h, Some(node("envoy-1", GROUP))).await;
    sotw_all(&mut s).await;

    assert!(!h.cache.set(GROUP, base().resources()));
    s.quiet().await;

    base().endpoint("b", 9091).set(&h.cache, GROUP);
    let eds = s.recv_type(ENDPOINT).await;
    // State of the world: every requested name, with the new content.
    assert_eq!(
        ports(&eds.resources),
        BTreeMap::from([("a".to_owned(), 8080), ("b".to_owned(), 9091)])
    );
    s.ack(&eds, &["a", "b"]);
    s.quiet().await;
}

#[tokio::test]
async fn delta_identical_set_sends_nothing_and_an_endpoint_change_sends_only_that_resource() {
    let h = start().await;
    base().set(&h.cache, GROUP);
    let mut s = Delta::open(&h, Some(node("envoy-1", GROUP))).await;
    delta_all(&mut s).await;

    assert!(!h.cache.set(GROUP, base().resources()));
    s.quiet().await;

    base().endpoint("b", 9091).set(&h.cache, GROUP);
    let eds = s.recv_type(ENDPOINT).await;
    assert_eq!(delta_names(&eds), v(&["b"]));
    assert!(eds.removed_resources.is_empty());
    let only: Vec<Any> = eds
        .resources
        .iter()
        .flat_map(|r| r.resource.clone())
        .collect();
    assert_eq!(ports(&only), BTreeMap::from([("b".to_owned(), 9091)]));
    s.ack(&eds);
    s.quiet().await;
}

// ---------------------------------------------------------------------------
// Versions, nonces, ACKs

#[tokio::test]
async fn sotw_versions_are_per_type_and_nonces_per_stream() {
    let h = start().await;
    base().set(&h.cache, GROUP);
    let mut s = Sotw::open(&h, Some(node("envoy-1", GROUP))).await;
    s.subscribe(CLUSTER, &[]);
    let cds = s.recv_type(CLUSTER).await;
    s.subscribe(ENDPOINT, &["a", "b"]);
    let eds = s.recv_type(ENDPOINT).await;
    assert_ne!(cds.nonce, eds.nonce, "a nonce names one response");
    assert_ne!(cds.version_info, eds.version_info);

    // An ACK of the latest response produces nothing.
    s.ack(&cds, &[]);
    s.ack(&eds, &["a", "b"]);
    s.quiet().await;

    // An endpoint change moves the EDS version only.
    base().endpoint("a", 9090).set(&h.cache, GROUP);
    let eds2 = s.recv_type(ENDPOINT).await;
    assert_ne!(eds2.version_info, eds.version_info);
    assert!(![cds.nonce.as_str(), eds.nonce.as_str()].contains(&eds2.nonce.as_str()));
    s.ack(&eds2, &["a", "b"]);
    s.quiet().await;

    // Versions come from content: going back gives the old version again.
    base().set(&h.cache, GROUP);
    let eds3 = s.recv_type(ENDPOINT).await;
    assert_eq!(eds3.version_info, eds.version_info);
    s.ack(&eds3, &["a", "b"]);
    s.quiet().await;

    // A second stream has its own nonces but the same versions.
    let mut other = Sotw::open(&h, Some(node("envoy-2", GROUP))).await;
    other.subscribe(CLUSTER, &[]);
    let cds_other = other.recv_type(CLUSTER).await;
    assert_eq!(cds_other.version_info, cds.version_info);
}

#[tokio::test]
async fn sotw_stale_nonces_are_ignored() {
    let h = start().await;
    base().set(&h.cache, GROUP);
    let mut s = Sotw::open(&h, Some(node("envoy-1", GROUP))).await;
    s.subscribe(ENDPOINT, &["a"]);
    let first = s.recv_type(ENDPOINT).await;
    // A change before the Envoy answered: a second response is in flight.
    base().endpoint("a", 9090).set(&h.cache, GROUP);
    let second = s.recv_type(ENDPOINT).await;
    assert_ne!(first.nonce, second.nonce);

    // An answer to the first (stale) response is ignored: its new names are
    // not applied, and its error is not a NACK of what the Envoy has now.
    s.ack(&first, &["a", "b"]);
    s.quiet().await;
    s.nack(&first, "", &["a", "b"], "stale complaint");
    s.quiet().await;
    assert!(h.cache.nacks(GROUP).is_empty());

    // The same request answering the latest response counts.
    s.ack(&second, &["a", "b"]);
    let third = s.recv_type(ENDPOINT).await;
    assert_eq!(names(&third), v(&["a", "b"]));
    s.ack(&third, &["a", "b"]);
    s.quiet().await;
}

#[tokio::test]
async fn delta_acks_send_nothing_and_nonces_are_unique() {
    let h = start().await;
    base().set(&h.cache, GROUP);
    let mut s = Delta::open(&h, Some(node("envoy-1", GROUP))).await;
    s.subscribe(CLUSTER, &[]);
    let cds = s.recv_type(CLUSTER).await;
    s.subscribe(ENDPOINT, &["a", "b"]);
    let eds = s.recv_type(ENDPOINT).await;
    assert_ne!(cds.nonce, eds.nonce);
    s.ack(&cds);
    s.ack(&eds);
    s.quiet().await;
    // Acknowledging something twice, or a nonce never sent, changes nothing.
    s.ack(&cds);
    s.send(DeltaDiscoveryRequest {
        type_url: CLUSTER.to_owned(),
        response_nonce: "no-such-nonce".to_owned(),
        ..Default::default()
    });
    s.quiet().await;

    base().endpoint("a", 9090).set(&h.cache, GROUP);
    let eds2 = s.recv_type(ENDPOINT).await;
    assert!(![cds.nonce.as_str(), eds.nonce.as_str()].contains(&eds2.nonce.as_str()));
    let versions: HashMap<_, _> = eds
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    assert_ne!(eds2.resources[0].version, versions["a"]);
}

#[tokio::test]
async fn sotw_nonce_from_an_earlier_stream_is_not_stale() {
    let h = start().await;
    base().set(&h.cache, GROUP);
    let mut s = Sotw::open(&h, Some(node("envoy-1", GROUP))).await;
    s.subscribe(CLUSTER, &[]);
    let cds = s.recv_type(CLUSTER).await;
    s.ack(&cds, &[]);
    s.subscribe(ENDPOINT, &["a"]);
    let eds = s.recv_type(ENDPOINT).await;
    s.ack(&eds, &["a"]);
    drop(s);

    // A client that carries its last nonces over to a new stream must
    // still be answered: this stream has sent nothing they could be stale
    // against, and ignoring them would leave the client waiting forever.
    let mut s = Sotw::open(&h, Some(node("envoy-1", GROUP))).await;
    s.ack(&cds, &[]);
    let cds2 = s.recv_type(CLUSTER).await;
    assert_eq!(names(&cds2), v(&["a", "b"]));
    s.ack(&eds, &["a", "b"]);
    let eds2 = s.recv_type(ENDPOINT).await;
    assert_eq!(names(&eds2), v(&["a", "b"]));
    s.ack(&cds2, &[]);
    s.ack(&eds2, &["a", "b"]);
    s.quiet().await;
}

// ---------------------------------------------------------------------------
// NACKs

#[tokio::test]
async fn sotw_nack_is_recorded_and_not_resent() {
    let h = start().await;
    base().set(&h.cache, GROUP);
    let mut events = h.cache.nack_events();
    let mut s = Sotw::open(&h, Some(node("envoy-1", GROUP))).await;
    sotw_all(&mut s).await;

    base().cluster("a", 7).set(&h.cache, GROUP);
    let cds = s.recv_type(CLUSTER).await;
    // A changed cluster warms again and gets its endpoints.
    let eds = s.recv_type(ENDPOINT).await;
    s.ack(&eds, &["a", "b"]);
    s.nack(&cds, "previous", &[], "cluster a: bad timeout");

    let event = within("a NACK event", events.recv())
        .await
        .expect("NACK event");
    assert_eq!(event.group, GROUP);
    assert_eq!(event.node, "envoy-1");
    assert_eq!(event.type_url, CLUSTER);
    assert_eq!(event.version, cds.version_info);
    assert_eq!(event.message, "cluster a: bad timeout");
    assert_eq!(h.cache.nacks(GROUP), vec![event]);
    assert_eq!(
        h.cache
            .stats()
            .nacks
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // The rejected version is not sent again: not on its own, not when
    // Envoy repeats its request, and not when another type changes.
    s.quiet().await;
    s.nack(&cds, "previous", &[], "cluster a: bad timeout");
    s.quiet().await;
    base()
        .cluster("a", 7)
        .endpoint("b", 9091)
        .set(&h.cache, GROUP);
    let eds = s.recv_type(ENDPOINT).await;
    s.ack(&eds, &["a", "b"]);
    s.quiet().await;

    // A content change is sent.
    base()
        .cluster("a", 8)
        .endpoint("b", 9091)
        .set(&h.cache, GROUP);
    let cds2 = s.recv_type(CLUSTER).await;
    assert_ne!(cds2.version_info, cds.version_info);
    assert_eq!(names(&cds2), v(&["a", "b"]));
    s.ack(&cds2, &[]);
    let eds = s.recv_type(ENDPOINT).await;
    s.ack(&eds, &["a", "b"]);
    s.quiet().await;
    assert_eq!(h.cache.nacks(GROUP).len(), 1);
}

#[tokio::test]
async fn delta_nack_is_recorded_and_not_resent() {
    let h = start().await;
    base().set(&h.cache, GROUP);
    let mut events = h.cache.nack_events();
    let mut s = Delta::open(&h, Some(node("envoy-1", GROUP))).await;
    delta_all(&mut s).await;

    base()
        .listener("http", 81, "http-routes")
        .set(&h.cache, GROUP);
    let lds = s.recv_type(LISTENER).await;
    assert_eq!(delta_names(&lds), v(&["http"]));
    s.nack(&lds, "listener http: address in use");

    let event = within("a NACK event", events.recv())
        .await
        .expect("NACK event");
    assert_eq!(event.type_url, LISTENER);
    assert_eq!(event.node, "envoy-1");
    assert_eq!(event.version, lds.resources[0].version);
    assert_eq!(event.message, "listener http: address in use");
    assert_eq!(h.cache.nacks(GROUP), vec![event]);

    s.quiet().await;
    // Another change elsewhere does not bring the rejected listener back.
    base()
        .listener("http", 81, "http-routes")
        .endpoint("a", 9090)
        .set(&h.cache, GROUP);
    let eds = s.recv_type(ENDPOINT).await;
    assert_eq!(delta_names(&eds), v(&["a"]));
    s.ack(&eds);
    s.quiet().await;

    // A new version of it is sent.
    base()
        .listener("http", 82, "http-routes")
        .endpoint("a", 9090)
        .set(&h.cache, GROUP);
    let lds2 = s.recv_type(LISTENER).await;
    assert_eq!(delta_names(&lds2), v(&["http"]));
    assert_ne!(lds2.resources[0].version, lds.resources[0].version);
    s.ack(&lds2);
    s.quiet().await;
}

#[tokio::test]
async fn delta_nack_of_an_older_response_keeps_a_newer_accepted_one() {
    let h = start().await;
    base().set(&h.cache, GROUP);
    let mut s = Delta::open(&h, Some(node("envoy-1", GROUP))).await;
    delta_all(&mut s).await;

    // Two responses for `a` in flight; the Envoy rejects the first and
    // accepts the second (delta responses are applied independently).
    base().endpoint("a", 9090).set(&h.cache, GROUP);
    let first = s.recv_type(ENDPOINT).await;
    base().endpoint("a", 9091).set(&h.cache, GROUP);
    let second = s.recv_type(ENDPOINT).await;
    assert_eq!(delta_names(&second), v(&["a"]));
    s.nack(&first, "endpoint a: rejected");
    s.ack(&second);
    // The Envoy holds what the second response sent: nothing to resend.
    s.quiet().await;
    let nacks = h.cache.nacks(GROUP);
    assert_eq!(nacks.len(), 1);
    assert_eq!(nacks[0].version, first.resources[0].version);

    // And the rejected content, should it come back, is not sent.
    base().endpoint("a", 9090).set(&h.cache, GROUP);
    s.quiet().await;
    base().endpoint("a", 9092).set(&h.cache, GROUP);
    let third = s.recv_type(ENDPOINT).await;
    assert_eq!(delta_names(&third), v(&["a"]));
    s.ack(&third);
    s.quiet().await;
}

#[tokio::test]
async fn delta_unused_cluster_goes_once_the_newest_listener_is_accepted() {
    let h = start().await;
    base().set(&h.cache, GROUP);
    let mut s = Delta::open(&h, Some(node("envoy-1", GROUP))).await;
    delta_all(&mut s).await;

    base()
        .listener("http", 81, "http-routes")
        .set(&h.cache, GROUP);
    let lds1 = s.recv_type(LISTENER).await;
    // Before the Envoy answers: the routes stop using `b`, which goes.
    let next = base()
        .listener("http", 82, "http-routes")
        .route("http-routes", &["a"])
        .without_cluster("b");
    next.set(&h.cache, GROUP);
    let lds2 = s.recv_type(LISTENER).await;
    let rds = s.recv_type(ROUTE).await;
    s.nack(&lds1, "listener http: port 81 in use");
    s.quiet().await;
    s.ack(&lds2);
    s.quiet().await;
    s.ack(&rds);
    // The listener and routes the Envoy holds are the newest: `b` can go,
    // the earlier rejection notwithstanding.
    let cds = s.recv_type(CLUSTER).await;
    assert_eq!(cds.removed_resources, v(&["b"]));
    s.ack(&cds);
    let eds = s.recv_type(ENDPOINT).await;
    assert_eq!(eds.removed_resources, v(&["b"]));
    s.ack(&eds);
    s.quiet().await;
}

// ---------------------------------------------------------------------------
// Make before break

/// The update of the make-before-break tests: cluster `b` goes away, `c`
/// comes, `a` changes, and the secret, listener and routes all change.
fn moved() -> Config {
    Config::default()
        .cluster("a", 2)
        .endpoint("a", 9080)
        .cluster("c", 1)
        .endpoint("c", 8082)
        .secret("cert", "certificate two")
        .listener("http", 8080, "http-routes")
        .route("http-routes", &["a", "c"])
}

#[tokio::test]
async fn sotw_make_before_break() {
    let h = start().await;
    base().set(&h.cache, GROUP);
    let mut s = Sotw::open(&h, Some(node("envoy-1", GROUP))).await;
    sotw_all(&mut s).await;
    let mut order = Vec::new();

    moved().set(&h.cache, GROUP);
    let cds = s.recv_type(CLUSTER).await;
    // `b` stays until the listeners and routes no longer use it.
    assert_eq!(names(&cds), v(&["a", "b", "c"]));
    // A changed cluster warms again and gets its endpoints.
    let eds = s.recv_type(ENDPOINT).await;
    assert_eq!(ports(&eds.resources)["a"], 9080);
    let sds = s.recv_type(SECRET).await;
    order.extend([&cds.type_url, &eds.type_url, &sds.type_url].map(|t| short(t).to_owned()));
    // Listeners and routes wait: the new cluster `c` is not warm yet.
    s.quiet().await;
    s.ack(&cds, &[]);
    s.ack(&sds, &["cert"]);
    s.quiet().await;

    // The Envoy asks for `c`'s endpoints; they are sent.
    s.ack(&eds, &["a", "b", "c"]);
    let eds = s.recv_type(ENDPOINT).await;
    assert_eq!(ports(&eds.resources)["c"], 8082);
    order.push(short(&eds.type_url).to_owned());
    s.quiet().await;
    // Once the Envoy has them, listeners and routes follow.
    s.ack(&eds, &["a", "b", "c"]);
    let lds = s.recv_type(LISTENER).await;
    let rds = s.recv_type(ROUTE).await;
    order.extend([&lds.type_url, &rds.type_url].map(|t| short(t).to_owned()));
    assert_eq!(
        order,
        [
            "Cluster",
            "ClusterLoadAssignment",
            "Secret",
            "ClusterLoadAssignment",
            "Listener",
            "RouteConfiguration"
        ]
    );

    s.ack(&lds, &[]);
    // Routes still in flight: `b` may still be in use.
    s.quiet().await;
    s.ack(&rds, &["http-routes"]);
    let cds = s.recv_type(CLUSTER).await;
    assert_eq!(names(&cds), v(&["a", "c"]));
    s.ack(&cds, &[]);
    // The Envoy stops watching `b`'s endpoints.
    s.ack(&eds, &["a", "c"]);
    let eds = s.recv_type(ENDPOINT).await;
    assert_eq!(names(&eds), v(&["a", "c"]));
    s.ack(&eds, &["a", "c"]);
    s.quiet().await;
}

#[tokio::test]
async fn delta_make_before_break() {
    let h = start().await;
    base().set(&h.cache, GROUP);
    let mut s = Delta::open(&h, Some(node("envoy-1", GROUP))).await;
    delta_all(&mut s).await;
    let mut order = Vec::new();

    moved().set(&h.cache, GROUP);
    let cds = s.recv_type(CLUSTER).await;
    assert_eq!(delta_names(&cds), v(&["a", "c"]));
    assert!(cds.removed_resources.is_empty(), "{}", show_delta(&cds));
    let eds = s.recv_type(ENDPOINT).await;
    // The endpoints of `b` stay too: xDS removes a cluster's endpoints only
    // with the cluster, and the old routes still send traffic to it.
    assert_eq!(delta_names(&eds), v(&["a"]));
    assert!(eds.removed_resources.is_empty(), "{}", show_delta(&eds));
    let sds = s.recv_type(SECRET).await;
    assert_eq!(delta_names(&sds), v(&["cert"]));
    order.extend([&cds.type_url, &eds.type_url, &sds.type_url].map(|t| short(t).to_owned()));
    s.quiet().await;

    // Processing the CDS response, the Envoy subscribes to `c`'s endpoints,
    // then ACKs.
    s.subscribe(ENDPOINT, &["c"]);
    let eds_c = s.recv_type(ENDPOINT).await;
    assert_eq!(delta_names(&eds_c), v(&["c"]));
    order.push(short(&eds_c.type_url).to_owned());
    s.ack(&cds);
    s.ack(&eds);
    s.ack(&sds);
    // `c` is not warm until the Envoy has its endpoints.
    s.quiet().await;
    s.ack(&eds_c);
    let lds = s.recv_type(LISTENER).await;
    assert_eq!(delta_names(&lds), v(&["http"]));
    let rds = s.recv_type(ROUTE).await;
    assert_eq!(delta_names(&rds), v(&["http-routes"]));
    order.extend([&lds.type_url, &rds.type_url].map(|t| short(t).to_owned()));
    assert_eq!(
        order,
        [
            "Cluster",
            "ClusterLoadAssignment",
            "Secret",
            "ClusterLoadAssignment",
            "Listener",
            "RouteConfiguration"
        ]
    );

    s.ack(&lds);
    s.quiet().await;
    s.ack(&rds);
    let cds = s.recv_type(CLUSTER).await;
    assert!(cds.resources.is_empty(), "{}", show_delta(&cds));
    assert_eq!(cds.removed_resources, v(&["b"]));
    s.ack(&cds);
    // Now `b`'s endpoints may go as well (Envoy would also unsubscribe).
    let eds = s.recv_type(ENDPOINT).await;
    assert_eq!(eds.removed_resources, v(&["b"]));
    s.ack(&eds);
    s.unsubscribe(ENDPOINT, &["b"]);
    s.quiet().await;
}

#[tokio::test]
async fn a_secret_stays_until_listeners_and_routes_are_replaced() {
    let h = start().await;
    base().set(&h.cache, GROUP);
    let mut s = Sotw::open(&h, Some(node("envoy-1", GROUP))).await;
    sotw_all(&mut s).await;
    let mut d = Delta::open(&h, Some(node("envoy-2", GROUP))).await;
    delta_all(&mut d).await;

    // The listener stops using the certificate, which goes.
    let mut next = base().listener("http", 8080, "http-routes");
    next.secrets.clear();
    next.set(&h.cache, GROUP);
    let lds = s.recv_type(LISTENER).await;
    let dlds = d.recv_type(LISTENER).await;
    s.quiet().await;
    d.quiet().await;

    s.ack(&lds, &[]);
    let sds = s.recv_type(SECRET).await;
    assert!(sds.resources.is_empty(), "{}", show(&sds));
    s.ack(&sds, &["cert"]);
    s.quiet().await;

    d.ack(&dlds);
    let sds = d.recv_type(SECRET).await;
    assert_eq!(sds.removed_resources, v(&["cert"]));
    d.ack(&sds);
    d.quiet().await;
}

// ---------------------------------------------------------------------------
// Removal

#[tokio::test]
async fn sotw_removal_sends_full_state_then_empty() {
    let h = start().await;
    let two = base().listener("https", 443, "http-routes");
    two.set(&h.cache, GROUP);
    let mut s = Sotw::open(&h, Some(node("envoy-1", GROUP))).await;
    s.subscribe(CLUSTER, &[]);
    let cds = s.recv_type(CLUSTER).await;
    s.ack(&cds, &[]);
    s.subscribe(LISTENER, &[]);
    let lds = s.recv_type(LISTENER).await;
    assert_eq!(names(&lds), v(&["http", "https"]));
    s.ack(&lds, &[]);

    let one = two.clone().without_listener("https").without_cluster("b");
    one.set(&h.cache, GROUP);
    let lds = s.recv_type(LISTENER).await;
    assert_eq!(names(&lds), v(&["http"]));
    s.ack(&lds, &[]);
    // `b` goes once the listeners are settled.
    let cds = s.recv_type(CLUSTER).await;
    assert_eq!(names(&cds), v(&["a"]));
    s.ack(&cds, &[]);
    s.quiet().await;

    let none = one.without_listener("http").without_cluster("a");
    none.set(&h.cache, GROUP);
    let lds = s.recv_type(LISTENER).await;
    assert!(lds.resources.is_empty(), "{}", show(&lds));
    s.ack(&lds, &[]);
    let cds = s.recv_type(CLUSTER).await;
    assert!(cds.resources.is_empty(), "{}", show(&cds));
    s.ack(&cds, &[]);
    s.quiet().await;

    // And back.
    base().set(&h.cache, GROUP);
    let cds = s.recv_type(CLUSTER).await;
    assert_eq!(names(&cds), v(&["a", "b"]));
}

#[tokio::test]
async fn delta_removal_sends_removed_resources() {
    let h = start().await;
    let two = base().listener("https", 443, "http-routes");
    two.set(&h.cache, GROUP);
    let mut s = Delta::open(&h, Some(node("envoy-1", GROUP))).await;
    s.subscribe(CLUSTER, &[]);
    let cds = s.recv_type(CLUSTER).await;
    s.ack(&cds);
    s.subscribe(LISTENER, &[]);
    let lds = s.recv_type(LISTENER).await;
    s.ack(&lds);

    let one = two.clone().without_listener("https").without_cluster("b");
    one.set(&h.cache, GROUP);
    let lds = s.recv_type(LISTENER).await;
    assert!(lds.resources.is_empty());
    assert_eq!(lds.removed_resources, v(&["https"]));
    s.ack(&lds);
    let cds = s.recv_type(CLUSTER).await;
    assert!(cds.resources.is_empty());
    assert_eq!(cds.removed_resources, v(&["b"]));
    s.ack(&cds);
    s.quiet().await;

    h.cache.clear(GROUP);
    let lds = s.recv_type(LISTENER).await;
    assert_eq!(lds.removed_resources, v(&["http"]));
    s.ack(&lds);
    let cds = s.recv_type(CLUSTER).await;
    assert_eq!(cds.removed_resources, v(&["a"]));
    s.ack(&cds);
    s.quiet().await;
}

// ---------------------------------------------------------------------------
// Reconnect

#[tokio::test]
async fn sotw_reconnect_gets_full_state() {
    let h = start().await;
    base().set(&h.cache, GROUP);
    let mut s = Sotw::open(&h, Some(node("envoy-1", GROUP))).await;
    s.subscribe(CLUSTER, &[]);
    let cds = s.recv_type(CLUSTER).await;
    s.ack(&cds, &[]);
    drop(s);

    // Changed while the Envoy was away.
    let now = base().cluster("c", 1).endpoint("c", 8082);
    now.set(&h.cache, GROUP);

    let mut s = Sotw::open(&h, Some(node("envoy-1", GROUP))).await;
    // Envoy reconnects with the version it has.
    s.send(DiscoveryRequest {
        version_info: cds.version_info.clone(),
        type_url: CLUSTER.to_owned(),
        ..Default::default()
    });
    let cds2 = s.recv_type(CLUSTER).await;
    assert_eq!(names(&cds2), v(&["a", "b", "c"]));
    s.ack(&cds2, &[]);
    s.subscribe(ENDPOINT, &["a", "b", "c"]);
    let eds = s.recv_type(ENDPOINT).await;
    assert_eq!(names(&eds), v(&["a", "b", "c"]));
    s.ack(&eds, &["a", "b", "c"]);
    s.subscribe(LISTENER, &[]);
    assert_eq!(names(&s.recv_type(LISTENER).await), v(&["http"]));

    // Even unchanged content is sent on a new stream: the server cannot
    // know what a state-of-the-world client holds.
    let mut again = Sotw::open(&h, Some(node("envoy-1", GROUP))).await;
    again.send(DiscoveryRequest {
        version_info: cds2.version_info.clone(),
        type_url: CLUSTER.to_owned(),
        ..Default::default()
    });
    let cds3 = again.recv_type(CLUSTER).await;
    assert_eq!(cds3.version_info, cds2.version_info);
    assert_eq!(names(&cds3), v(&["a", "b", "c"]));
}

#[tokio::test]
async fn delta_reconnect_with_initial_versions_sends_only_differences() {
    let h = start().await;
    base().cluster("gone", 1).set(&h.cache, GROUP);
    let mut s = Delta::open(&h, Some(node("envoy-1", GROUP))).await;
    s.subscribe(CLUSTER, &[]);
    let cds = s.recv_type(CLUSTER).await;
    s.ack(&cds);
    s.subscribe(ENDPOINT, &["a", "b"]);
    let eds = s.recv_type(ENDPOINT).await;
    s.ack(&eds);
    let held = |r: &DeltaDiscoveryResponse| -> HashMap<String, String> {
        r.resources
            .iter()
            .map(|x| (x.name.clone(), x.version.clone()))
            .collect()
    };
    let clusters = held(&cds);
    let endpoints = held(&eds);
    drop(s);

    // Without initial versions a new stream gets everything.
    let mut fresh = Delta::open(&h, Some(node("envoy-2", GROUP))).await;
    fresh.subscribe(CLUSTER, &[]);
    assert_eq!(
        delta_names(&fresh.recv_type(CLUSTER).await),
        v(&["a", "b", "gone"])
    );
    drop(fresh);

    // While the Envoy was away: `b` changed, `gone` went.
    base()
        .cluster("b", 5)
        .endpoint("b", 9091)
        .set(&h.cache, GROUP);

    let mut s = Delta::open(&h, Some(node("envoy-1", GROUP))).await;
    s.send(DeltaDiscoveryRequest {
        type_url: CLUSTER.to_owned(),
        initial_resource_versions: clusters,
        ..Default::default()
    });
    let cds = s.recv_type(CLUSTER).await;
    assert_eq!(delta_names(&cds), v(&["b"]));
    // `gone` stays until the client has said which listeners and routes it
    // holds: a resuming client's old routes may still send traffic to it.
    assert!(cds.removed_resources.is_empty(), "{}", show_delta(&cds));
    s.ack(&cds);
    s.send(DeltaDiscoveryRequest {
        type_url: ENDPOINT.to_owned(),
        resource_names_subscribe: v(&["a", "b"]),
        initial_resource_versions: endpoints.clone(),
        ..Default::default()
    });
    let eds = s.recv_type(ENDPOINT).await;
    assert_eq!(delta_names(&eds), v(&["b"]));
    assert!(eds.removed_resources.is_empty());
    s.ack(&eds);
    // It held no listeners or routes; once those are in place, `gone` goes.
    s.subscribe(LISTENER, &[]);
    let lds = s.recv_type(LISTENER).await;
    assert_eq!(delta_names(&lds), v(&["http"]));
    s.ack(&lds);
    s.subscribe(ROUTE, &["http-routes"]);
    let rds = s.recv_type(ROUTE).await;
    assert_eq!(delta_names(&rds), v(&["http-routes"]));
    s.ack(&rds);
    let cds = s.recv_type(CLUSTER).await;
    assert!(cds.resources.is_empty(), "{}", show_delta(&cds));
    assert_eq!(cds.removed_resources, v(&["gone"]));
    s.ack(&cds);
    s.quiet().await;

    // Nothing changed at all: nothing is sent.
    let mut s2 = Delta::open(&h, Some(node("envoy-1", GROUP))).await;
    s2.send(DeltaDiscoveryRequest {
        type_url: ENDPOINT.to_owned(),
        resource_names_subscribe: v(&["a"]),
        initial_resource_versions: HashMap::from([("a".to_owned(), endpoints["a"].clone())]),
        ..Default::default()
    });
    s2.quiet().await;
}

// ---------------------------------------------------------------------------
// Malformed requests

fn assert_invalid(status: &tonic::Status, mentions: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains(mentions),
        "message {:?} should mention {mentions:?}",
        status.message()
    );
}

const BOGUS: &str = "type.googleapis.com/envoy.config.bogus.v3.Bogus";

#[tokio::test]
async fn malformed_requests_end_only_their_own_stream() {
    let h = start().await;
    base().set(&h.cache, GROUP);
    let mut good = Sotw::open(&h, Some(node("envoy-1", GROUP))).await;
    good.subscribe(CLUSTER, &[]);
    let cds = good.recv_type(CLUSTER).await;
    good.ack(&cds, &[]);
    let mut good_delta = Delta::open(&h, Some(node("envoy-2", GROUP))).await;
    good_delta.subscribe(CLUSTER, &[]);
    let dcds = good_delta.recv_type(CLUSTER).await;
    good_delta.ack(&dcds);

    // Unknown type URL, first request and later.
    let mut bad = Sotw::open(&h, Some(node("bad-1", GROUP))).await;
    bad.subscribe(BOGUS, &[]);
    assert_invalid(&bad.status().await, BOGUS);
    let mut bad = Sotw::open(&h, Some(node("bad-2", GROUP))).await;
    bad.subscribe(CLUSTER, &[]);
    bad.recv_type(CLUSTER).await;
    bad.subscribe(BOGUS, &["x"]);
    assert_invalid(&bad.status().await, BOGUS);
    let mut bad = Delta::open(&h, Some(node("bad-3", GROUP))).await;
    bad.subscribe(BOGUS, &[]);
    assert_invalid(&bad.status().await, BOGUS);
    let mut bad = Delta::open(&h, Some(node("bad-4", GROUP))).await;
    bad.subscribe(CLUSTER, &[]);
    bad.recv_type(CLUSTER).await;
    bad.subscribe("", &[]);
    assert_invalid(&bad.status().await, "unknown type URL");
    // Whatever the client sends ends up in the message safely.
    let mut bad = Sotw::open(&h, Some(node("bad-5", GROUP))).await;
    bad.subscribe("type.googleapis.com/\u{1f980}\n\r\0%", &[]);
    assert_invalid(&bad.status().await, "\u{1f980}");

    // No node on the first request.
    let mut bad = Sotw::open(&h, None).await;
    bad.subscribe(CLUSTER, &[]);
    assert_invalid(&bad.status().await, "node");
    let mut bad = Delta::open(&h, None).await;
    bad.subscribe(CLUSTER, &[]);
    assert_invalid(&bad.status().await, "node");

    // A node without a group.
    let groupless = Node {
        id: "lost".to_owned(),
        ..Default::default()
    };
    let mut bad = Sotw::open(&h, Some(groupless.clone())).await;
    bad.subscribe(CLUSTER, &[]);
    assert_invalid(&bad.status().await, GROUP_METADATA_KEY);
    let mut empty_metadata = groupless.clone();
    empty_metadata.metadata = Some(Struct {
        fields: [(
            GROUP_METADATA_KEY.to_owned(),
            Value {
                kind: Some(Kind::StringValue(String::new())),
            },
        )]
        .into_iter()
        .collect(),
    });
    let mut bad = Delta::open(&h, Some(empty_metadata)).await;
    bad.subscribe(CLUSTER, &[]);
    assert_invalid(&bad.status().await, "lost");

    // A stream that closes before its first request is not an error.
    drop(Sotw::open(&h, Some(node("shy", GROUP))).await);

    // The other streams are unaffected: they get the next update...
    base().cluster("c", 1).set(&h.cache, GROUP);
    let cds = good.recv_type(CLUSTER).await;
    assert_eq!(names(&cds), v(&["a", "b", "c"]));
    let dcds = good_delta.recv_type(CLUSTER).await;
    assert_eq!(delta_names(&dcds), v(&["c"]));
    // ...and new streams are served.
    let mut new = Sotw::open(&h, Some(node("envoy-3", GROUP))).await;
    new.subscribe(CLUSTER, &[]);
    assert_eq!(names(&new.recv_type(CLUSTER).await), v(&["a", "b", "c"]));
}

/// Sends requests as raw bytes, to put what no protobuf library would
/// write on the wire; decodes responses normally.
struct RawCodec;

struct RawEncoder;

struct ResponseDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = DiscoveryResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for ResponseDecoder {
    type Item = DiscoveryResponse;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<DiscoveryResponse>, tonic::Status> {
        DiscoveryResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

#[tokio::test]
async fn undecodable_requests_end_their_stream_with_invalid_argument() {
    let h = start().await;
    base().set(&h.cache, GROUP);
    let mut good = Delta::open(&h, Some(node("envoy-1", GROUP))).await;
    good.subscribe(CLUSTER, &[]);
    let cds = good.recv_type(CLUSTER).await;
    good.ack(&cds);

    let first = DiscoveryRequest {
        node: Some(node("raw", GROUP)),
        type_url: CLUSTER.to_owned(),
        ..Default::default()
    }
    .encode_to_vec();
    for (what, messages) in [
        // A truncated varint.
        ("garbage", vec![vec![0xff, 0xff, 0xff]]),
        // version_info (field 1) that is not UTF-8.
        ("bad UTF-8", vec![vec![0x0a, 0x02, 0xff, 0xfe]]),
        // A good first request, then garbage.
        ("garbage later", vec![first, vec![0x0a, 0x7f]]),
    ] {
        let mut grpc = tonic::client::Grpc::new(h.channel.clone());
        within("the channel", grpc.ready()).await.expect("ready");
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
        );
        let later = messages.len() > 1;
        let request = tonic::Request::new(tokio_stream::iter(messages));
        let mut responses = within(
            "the stream to open",
            grpc.streaming(request, path, RawCodec),
        )
        .await
        .expect("open")
        .into_inner();
        if later {
            let r = within("a response", responses.message()).await;
            assert!(matches!(r, Ok(Some(_))), "{what}: {r:?}");
        }
        let end = within("the stream to end", responses.message()).await;
        let status = end.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    }

    // The other stream is unaffected.
    base().cluster("c", 1).set(&h.cache, GROUP);
    assert_eq!(delta_names(&good.recv_type(CLUSTER).await), v(&["c"]));
}

#[tokio::test]
async fn groups_are_isolated() {
    let h = start().await;
    base().set(&h.cache, GROUP);
    Config::default()
        .cluster("other", 1)
        .set(&h.cache, "other/gateway");
    let mut s = Sotw::open(&h, Some(node("envoy-1", GROUP))).await;
    s.subscribe(CLUSTER, &[]);
    let cds = s.recv_type(CLUSTER).await;
    s.ack(&cds, &[]);
    let mut o = Delta::open(&h, Some(node("envoy-2", "other/gateway"))).await;
    o.subscribe(CLUSTER, &[]);
    let ocds = o.recv_type(CLUSTER).await;
    assert_eq!(delta_names(&ocds), v(&["other"]));
    o.ack(&ocds);

    // A change to one group wakes only its streams.
    base().cluster("c", 1).set(&h.cache, GROUP);
    assert_eq!(names(&s.recv_type(CLUSTER).await), v(&["a", "b", "c"]));
    o.quiet().await;
    assert_eq!(
        h.cache
            .stats()
            .streams
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

// ---------------------------------------------------------------------------
// Limits: no client exhausts the server

fn limits(max_streams: u64, max_names: usize, max_unacked: usize, ack_ms: u64) -> Limits {
    Limits {
        max_streams,
        max_names,
        max_unacked,
        ack_timeout: std::time::Duration::from_millis(ack_ms),
    }
}

#[tokio::test]
async fn delta_client_that_never_acks_is_held_back_then_cut_off() {
    let h = start_with(|s| s.with_limits(limits(100, 100, 2, 1_500))).await;
    base().set(&h.cache, GROUP);
    let mut s = Delta::open(&h, Some(node("envoy-1", GROUP))).await;
    s.subscribe(ENDPOINT, &["a", "b"]);
    s.recv_type(ENDPOINT).await;
    // Never acknowledged: after max_unacked responses, changes wait.
    for port in 9000..9005 {
        base().endpoint("a", port).set(&h.cache, GROUP);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    s.recv_type(ENDPOINT).await;
    s.quiet().await;
    let status = s.status().await;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("acknowledged"), "{status:?}");
    assert_eq!(h.cache.stats().cut_off.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_delta_client_that_catches_up_gets_the_latest_state() {
    let h = start_with(|s| s.with_limits(limits(100, 100, 1, 60_000))).await;
    base().set(&h.cache, GROUP);
    let mut s = Delta::open(&h, Some(node("envoy-1", GROUP))).await;
    s.subscribe(ENDPOINT, &["a", "b"]);
    let first = s.recv_type(ENDPOINT).await;
    for port in 9000..9005 {
        base().endpoint("a", port).set(&h.cache, GROUP);
    }
    s.quiet().await;
    s.ack(&first);
    let latest = s.recv_type(ENDPOINT).await;
    let only: Vec<Any> = latest
        .resources
        .iter()
        .flat_map(|r| r.resource.clone())
        .collect();
    assert_eq!(ports(&only), BTreeMap::from([("a".to_owned(), 9004)]));
    s.ack(&latest);
    s.quiet().await;
    assert_eq!(h.cache.stats().cut_off.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn subscribing_too_many_names_closes_the_stream() {
    let h = start_with(|s| s.with_limits(limits(100, 3, 8, 60_000))).await;
    base().set(&h.cache, GROUP);
    let mut s = Sotw::open(&h, Some(node("envoy-1", GROUP))).await;
    s.subscribe(ENDPOINT, &["a", "b", "c", "d"]);
    let status = s.status().await;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    let mut d = Delta::open(&h, Some(node("envoy-2", GROUP))).await;
    d.subscribe(ENDPOINT, &["a", "b", "c", "d"]);
    let status = d.status().await;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(h.cache.stats().cut_off.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn streams_beyond_the_limit_are_refused() {
    let h = start_with(|s| s.with_limits(limits(1, 100, 8, 60_000))).await;
    base().set(&h.cache, GROUP);
    let mut first = Sotw::open(&h, Some(node("envoy-1", GROUP))).await;
    first.subscribe(CLUSTER, &[]);
    first.recv_type(CLUSTER).await;
    let mut second = Sotw::open(&h, Some(node("envoy-2", GROUP))).await;
    second.subscribe(CLUSTER, &[]);
    let status = second.status().await;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(h.cache.stats().streams.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn groups_nobody_publishes_are_forgotten_when_their_streams_end() {
    let h = start().await;
    base().set(&h.cache, GROUP);
    let mut s = Sotw::open(&h, Some(node("envoy-1", "made/up"))).await;
    s.subscribe(CLUSTER, &[]);
    s.recv_type(CLUSTER).await;
    assert_eq!(h.cache.group_count(), 2);
    drop(s);
    within("the made-up group to be forgotten", async {
        while h.cache.group_count() != 1 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    // A published group stays without streams; cleared, it goes.
    assert!(!h.cache.resources(GROUP).is_empty());
    h.cache.clear(GROUP);
    assert_eq!(h.cache.group_count(), 0);
}

#[tokio::test]
async fn secrets_are_withheld_from_unauthenticated_clients_when_denied() {
    let h = start_with(AdsServer::deny_unauthenticated_secrets).await;
    base().set(&h.cache, GROUP);
    let mut s = Sotw::open(&h, Some(node("envoy-1", GROUP))).await;
    s.subscribe(SECRET, &["cert"]);
    let sds = s.recv_type(SECRET).await;
    assert!(
        sds.resources.is_empty(),
        "a secret was sent: {}",
        show(&sds)
    );
    s.ack(&sds, &["cert"]);
    s.subscribe(CLUSTER, &[]);
    let cds = s.recv_type(CLUSTER).await;
    assert_eq!(names(&cds), v(&["a", "b"]));
    assert_eq!(h.cache.stats().secrets_refused.load(Ordering::Relaxed), 1);
}
