//! ADS benchmark over real gRPC on 127.0.0.1 (a plain `main`; no criterion).
//!
//! The configuration is one Gateway's worth of resources: 5,000 EDS
//! Clusters, 5,000 ClusterLoadAssignments (two endpoints each), one Listener
//! whose HttpConnectionManager takes its routes from RDS over ADS, and one
//! RouteConfiguration with 5,000 routes in one virtual host. Clients speak
//! ADS the way Envoy does: CDS and LDS wildcard first, then EDS for the
//! cluster names CDS returned and RDS for the route configuration the
//! listener names; every response is ACKed. State-of-the-world clients
//! repeat their subscription in every request; delta clients subscribe and
//! unsubscribe by difference.
//!
//! 1. **Memory per stream**, state-of-the-world and delta: the server's RSS
//!    before and after 100 synced streams of one group, with the clients in
//!    a child process (this binary re-executed with `--clients`), so the
//!    figure is the server's alone.
//! 2. **Push**: 100 connected state-of-the-world streams of one group hold
//!    an empty configuration; the time from `Cache::set` of the full
//!    configuration to the moment all 100 clients hold all four types
//!    (fresh clients and a fresh group each repeat). An in-process RSS
//!    figure (server and clients together) is printed as a cross-check.
//!    Then the same with the clients in a child process, which also gives
//!    the server's own CPU time for the push (its ACKs included): on two
//!    cores the clients' decoding is most of the wall time.
//! 3. **One-endpoint change**: with 100 synced streams, one
//!    ClusterLoadAssignment's endpoint changes; the time until all 100
//!    clients have the EDS update, the bytes each client received for it,
//!    and a check that nothing but EDS was sent; over state-of-the-world
//!    and over delta streams.
//! 4. **One-cluster change**: the same for one Cluster's connect timeout,
//!    which sends that cluster and (as a changed cluster warms anew) its
//!    endpoints again: a CDS and an EDS response per client, nothing else.
//!
//! Before each timed step the bench waits until the process is idle, so a
//! measurement does not include the server still handling the ACKs of the
//! previous step. Clients share the machine's cores with the server (2 on
//! the reference machine), so the times include their decoding and ACKs.
//! Every wait has a deadline. Run with `cargo bench -p gatewright-xds --bench
//! ads`.

use anyhow::{Context, Result, anyhow, bail, ensure};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, Node, SocketAddress, address,
    config_source, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter as NetworkFilter, FilterChain, Listener, filter,
};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use gatewright_xds::{AdsServer, Cache, Resources, type_url};
use prost::Message;
use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// Routes, clusters and ClusterLoadAssignments in the configuration.
const SIZE: usize = 5_000;
/// Concurrent ADS streams.
const STREAMS: usize = 100;
/// Repeats of the full push (fresh clients each time).
const PUSH_REPEATS: usize = 5;
/// Repeats of the one-endpoint change.
const EDS_REPEATS: usize = 20;
/// Repeats of the one-endpoint change over delta streams (a comparison).
const DELTA_REPEATS: usize = 5;
/// Deadline of any single wait.
const WAIT: Duration = Duration::from_secs(60);
/// How long to watch for stray responses after an EDS update arrived.
const SETTLE: Duration = Duration::from_millis(100);
/// The listener and its route configuration.
const LISTENER_NAME: &str = "http-8080";

// ---------------------------------------------------------------------------
// The configuration.

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

fn socket(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn any<M: Message + prost::Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn cluster_name(i: usize) -> String {
    format!("httproute-default-app-{i:04}-rule-0-backend-8080")
}

/// `generation` moves the connect timeout.
fn cluster(i: usize, generation: u32) -> Cluster {
    Cluster {
        name: cluster_name(i),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        connect_timeout: Some(PbDuration {
            seconds: 10 + i64::from(generation),
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// Two endpoints; `generation` moves the second one's port.
fn load_assignment(i: usize, generation: u32) -> ClusterLoadAssignment {
    let ip = |host: usize| format!("10.{}.{}.{host}", (i >> 8) & 255, i & 255);
    let endpoint = |ip: String, port: u32| LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(socket(&ip, port)),
            ..Default::default()
        })),
        ..Default::default()
    };
    ClusterLoadAssignment {
        cluster_name: cluster_name(i),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![endpoint(ip(1), 8080), endpoint(ip(2), 8080 + generation)],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn listener() -> Listener {
    let manager = HttpConnectionManager {
        stat_prefix: LISTENER_NAME.to_owned(),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: LISTENER_NAME.to_owned(),
        })),
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
        name: LISTENER_NAME.to_owned(),
        address: Some(socket("0.0.0.0", 8080)),
        filter_chains: vec![FilterChain {
            filters: vec![NetworkFilter {
                name: "envoy.filters.network.http_connection_manager".to_owned(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&manager))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn route_configuration(n: usize) -> RouteConfiguration {
    let routes = (0..n)
        .map(|i| Route {
            name: format!("httproute/default/app-{i:04}/rule/0/match/0"),
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix(format!("/app-{i:04}/"))),
                ..Default::default()
            }),
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster_name(i))),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect();
    RouteConfiguration {
        name: LISTENER_NAME.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: "http-8080-any".to_owned(),
            domains: vec!["*".to_owned()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The full configuration, and its encoded size per type (CDS, EDS, LDS, RDS).
fn configuration(n: usize) -> (Resources, [usize; 4]) {
    let mut r = Resources::new();
    let mut sizes = [0; 4];
    for i in 0..n {
        let c = cluster(i, 0);
        sizes[0] += c.encoded_len();
        r.add(cluster_name(i), &c);
        let e = load_assignment(i, 0);
        sizes[1] += e.encoded_len();
        r.add(cluster_name(i), &e);
    }
    let l = listener();
    sizes[2] = l.encoded_len();
    r.add(LISTENER_NAME, &l);
    let rc = route_configuration(n);
    sizes[3] = rc.encoded_len();
    r.add(LISTENER_NAME, &rc);
    (r, sizes)
}

// ---------------------------------------------------------------------------
// The server and process memory.

async fn start_server(cache: Cache) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(async move {
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(AdsServer::new(cache).into_service())
            .serve_with_incoming(incoming)
            .await
        {
            eprintln!("server failed: {e}");
        }
    });
    Ok(addr)
}

/// A field of /proc/self/status in KiB (VmRSS, VmHWM).
fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn rss_kib() -> u64 {
    status_kib("VmRSS")
}

/// Returns freed heap memory to the OS, so RSS shows live memory rather than
/// what glibc keeps for reuse.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: malloc_trim only releases free memory of the allocator in
        // use (Rust's default global allocator is glibc malloc here).
        unsafe {
            malloc_trim(0);
        }
    }
}

/// CPU time this process has used (user + system), in clock ticks.
fn cpu_ticks() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name (which is in parentheses);
            // utime and stime are fields 14 and 15 of the whole line.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

/// Waits (at most [`WAIT`]) until the process is idle: at most one clock
/// tick of CPU in 100 ms, so the server has finished handling the ACKs of
/// the last push before the next measurement starts.
async fn quiesce() {
    let deadline = Instant::now() + WAIT;
    let mut before = cpu_ticks();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = cpu_ticks();
        if now - before <= 1 {
            return;
        }
        before = now;
    }
}

async fn wait_streams(cache: &Cache, n: u64) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while cache.stats().streams.load(Ordering::Relaxed) != n {
        ensure!(
            Instant::now() < deadline,
            "server still has {} streams, expected {n}",
            cache.stats().streams.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The clients.

/// Any resource whose name is field 1 (Cluster, ClusterLoadAssignment,
/// Listener, RouteConfiguration): decoding skips everything else.
#[derive(Clone, PartialEq, prost::Message)]
struct Named {
    #[prost(string, tag = "1")]
    name: String,
}

const CDS: usize = 0;
const EDS: usize = 1;
const LDS: usize = 2;
const RDS: usize = 3;
const TYPES: [&str; 4] = [
    type_url::CLUSTER,
    type_url::ENDPOINT,
    type_url::LISTENER,
    type_url::ROUTE,
];

/// One response a client received.
#[derive(Debug)]
struct Event {
    client: usize,
    /// Index into [`TYPES`]; 4 for anything else.
    kind: usize,
    /// Encoded size of the DiscoveryResponse.
    bytes: usize,
    resources: usize,
    /// This response completed the client's configuration.
    synced: bool,
    at: Instant,
}

#[derive(Default)]
struct ClientState {
    /// (version_info, nonce) of the last response per type.
    last: [(String, String); 4],
    clusters: BTreeSet<String>,
    eds_names: BTreeSet<String>,
    endpoints: BTreeSet<String>,
    listeners: BTreeSet<String>,
    rds_names: BTreeSet<String>,
    routes: BTreeSet<String>,
    synced: bool,
}

impl ClientState {
    fn holds_everything(&self, expected: usize) -> bool {
        self.clusters.len() == expected
            && self.endpoints.len() == expected
            && self.clusters == self.endpoints
            && !self.listeners.is_empty()
            && !self.rds_names.is_empty()
            && self.rds_names.is_subset(&self.routes)
    }

    /// Reports a response; `synced` is set on the one that completed the
    /// configuration.
    fn event(
        &mut self,
        client: usize,
        kind: usize,
        bytes: usize,
        resources: usize,
        expected: usize,
    ) -> Event {
        let synced = !self.synced && self.holds_everything(expected);
        self.synced |= synced;
        Event {
            client,
            kind,
            bytes,
            resources,
            synced,
            at: Instant::now(),
        }
    }
}

fn request(kind: usize, last: &(String, String), names: &BTreeSet<String>) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: last.0.clone(),
        response_nonce: last.1.clone(),
        type_url: TYPES[kind].to_owned(),
        resource_names: names.iter().cloned().collect(),
        ..Default::default()
    }
}

fn node(id: usize, group: String) -> Node {
    Node {
        id: format!("envoy-{id}"),
        cluster: group,
        ..Default::default()
    }
}

async fn connect(
    addr: SocketAddr,
) -> Result<AggregatedDiscoveryServiceClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .context("connect")?;
    Ok(AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20))
}

/// The route configurations the listeners' HTTP connection managers name.
fn rds_names<'a>(listeners: impl IntoIterator<Item = &'a Any>) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for l in listeners {
        let Ok(l) = Listener::decode(l.value.as_slice()) else {
            continue;
        };
        for f in l.filter_chains.iter().flat_map(|c| &c.filters) {
            if let Some(filter::ConfigType::TypedConfig(tc)) = &f.config_type
                && let Ok(hcm) = HttpConnectionManager::decode(tc.value.as_slice())
                && let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = hcm.route_specifier
            {
                names.insert(rds.route_config_name);
            }
        }
    }
    names
}

/// One Envoy-like state-of-the-world ADS client; reports every response.
async fn run_client(
    id: usize,
    addr: SocketAddr,
    group: String,
    expected: usize,
    events: mpsc::UnboundedSender<Event>,
) -> Result<()> {
    let mut client = connect(addr).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let mut st = ClientState::default();
    let none = BTreeSet::new();
    let mut first = request(CDS, &st.last[CDS], &none);
    first.node = Some(node(id, group));
    let send = |r: DiscoveryRequest| tx.send(r).map_err(|_| anyhow!("request stream closed"));
    send(first)?;
    send(request(LDS, &st.last[LDS], &none))?;
    let mut responses = client
        .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    while let Some(resp) = responses.message().await? {
        let bytes = resp.encoded_len();
        let Some(kind) = TYPES.iter().position(|t| *t == resp.type_url) else {
            let _ = events.send(Event {
                client: id,
                kind: TYPES.len(),
                bytes,
                resources: resp.resources.len(),
                synced: false,
                at: Instant::now(),
            });
            continue;
        };
        st.last[kind] = (resp.version_info.clone(), resp.nonce.clone());
        let names = resp
            .resources
            .iter()
            .map(|r| Named::decode(r.value.as_slice()).map(|n| n.name))
            .collect::<Result<BTreeSet<_>, _>>()?;
        match kind {
            CDS => {
                // Like Envoy: subscribe to the new clusters' endpoints, then
                // ACK the clusters.
                if names != st.eds_names && !names.is_empty() {
                    st.eds_names = names.clone();
                    send(request(EDS, &st.last[EDS], &st.eds_names))?;
                }
                st.clusters = names;
                send(request(CDS, &st.last[CDS], &none))?;
            }
            EDS => {
                st.endpoints = names;
                send(request(EDS, &st.last[EDS], &st.eds_names))?;
            }
            LDS => {
                st.listeners = names;
                let wanted = rds_names(&resp.resources);
                if wanted != st.rds_names && !wanted.is_empty() {
                    st.rds_names = wanted;
                    send(request(RDS, &st.last[RDS], &st.rds_names))?;
                }
                send(request(LDS, &st.last[LDS], &none))?;
            }
            _ => {
                st.routes = names;
                send(request(RDS, &st.last[RDS], &st.rds_names))?;
            }
        }
        let _ = events.send(st.event(id, kind, bytes, resp.resources.len(), expected));
    }
    Ok(())
}

/// One Envoy-like delta ADS client; reports every response.
async fn run_delta_client(
    id: usize,
    addr: SocketAddr,
    group: String,
    expected: usize,
    events: mpsc::UnboundedSender<Event>,
) -> Result<()> {
    let mut client = connect(addr).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let send = |r: DeltaDiscoveryRequest| tx.send(r).map_err(|_| anyhow!("request stream closed"));
    let subscribe = |kind: usize, add: Vec<String>, remove: Vec<String>| DeltaDiscoveryRequest {
        type_url: TYPES[kind].to_owned(),
        resource_names_subscribe: add,
        resource_names_unsubscribe: remove,
        ..Default::default()
    };
    let ack = |kind: usize, nonce: String| DeltaDiscoveryRequest {
        type_url: TYPES[kind].to_owned(),
        response_nonce: nonce,
        ..Default::default()
    };
    let mut first = subscribe(CDS, vec![], vec![]);
    first.node = Some(node(id, group));
    send(first)?;
    send(subscribe(LDS, vec![], vec![]))?;
    let mut responses = client
        .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut st = ClientState::default();
    // Listeners by name, to find the route configurations they use.
    let mut listeners: std::collections::BTreeMap<String, Any> = Default::default();
    while let Some(resp) = responses.message().await? {
        let bytes = resp.encoded_len();
        let kind = TYPES
            .iter()
            .position(|t| *t == resp.type_url)
            .unwrap_or(TYPES.len());
        let held = match kind {
            CDS => &mut st.clusters,
            EDS => &mut st.endpoints,
            LDS => &mut st.listeners,
            RDS => &mut st.routes,
            _ => {
                let _ = events.send(st.event(id, kind, bytes, resp.resources.len(), expected));
                continue;
            }
        };
        for name in &resp.removed_resources {
            held.remove(name);
            if kind == LDS {
                listeners.remove(name);
            }
        }
        for r in &resp.resources {
            held.insert(r.name.clone());
            if kind == LDS
                && let Some(body) = &r.resource
            {
                listeners.insert(r.name.clone(), body.clone());
            }
        }
        // Like Envoy: follow clusters with endpoint subscriptions and
        // listeners with route subscriptions, then ACK.
        let (follow, wanted) = match kind {
            CDS => (EDS, Some(st.clusters.clone())),
            LDS => (RDS, Some(rds_names(listeners.values()))),
            _ => (kind, None),
        };
        if let Some(wanted) = wanted {
            let current = if follow == EDS {
                &mut st.eds_names
            } else {
                &mut st.rds_names
            };
            let add: Vec<String> = wanted.difference(current).cloned().collect();
            let remove: Vec<String> = current.difference(&wanted).cloned().collect();
            if !add.is_empty() || !remove.is_empty() {
                *current = wanted;
                send(subscribe(follow, add, remove))?;
            }
        }
        send(ack(kind, resp.nonce.clone()))?;
        let _ = events.send(st.event(id, kind, bytes, resp.resources.len(), expected));
    }
    Ok(())
}

struct Clients {
    tasks: Vec<JoinHandle<()>>,
    events: mpsc::UnboundedReceiver<Event>,
}

impl Clients {
    fn spawn(addr: SocketAddr, group: &str, n: usize, expected: usize, delta: bool) -> Self {
        let (tx, events) = mpsc::unbounded_channel();
        let tasks = (0..n)
            .map(|id| {
                let (tx, group) = (tx.clone(), group.to_owned());
                tokio::spawn(async move {
                    let result = if delta {
                        run_delta_client(id, addr, group, expected, tx).await
                    } else {
                        run_client(id, addr, group, expected, tx).await
                    };
                    if let Err(e) = result {
                        eprintln!("client {id}: {e:#}");
                    }
                })
            })
            .collect();
        Self { tasks, events }
    }

    /// The next event, or an error at `deadline`.
    async fn next(&mut self, deadline: Instant) -> Result<Event> {
        match tokio::time::timeout_at(deadline.into(), self.events.recv()).await {
            Ok(Some(e)) => Ok(e),
            Ok(None) => bail!("all clients ended"),
            Err(_) => bail!("timed out waiting for the clients"),
        }
    }

    /// Waits until every client has completed its configuration; returns
    /// the time the last one did, and the events seen on the way.
    async fn until_synced(&mut self) -> Result<(Instant, Vec<Event>)> {
        let deadline = Instant::now() + WAIT;
        let mut synced = vec![false; self.tasks.len()];
        let mut left = self.tasks.len();
        let mut last = Instant::now();
        let mut seen = Vec::new();
        while left > 0 {
            let e = self.next(deadline).await?;
            if e.synced && !synced[e.client] {
                synced[e.client] = true;
                left -= 1;
                last = e.at;
            }
            seen.push(e);
        }
        Ok((last, seen))
    }

    /// Waits until every client has had a response of each of `kinds`.
    async fn until_each_has(&mut self, kinds: &[usize]) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        let mut got = vec![0u8; self.tasks.len()];
        let want: u8 = kinds.iter().map(|k| 1 << k).sum();
        while got.iter().any(|g| *g & want != want) {
            let e = self.next(deadline).await?;
            got[e.client] |= 1 << e.kind;
        }
        Ok(())
    }

    /// Events arriving within `window`.
    async fn drain(&mut self, window: Duration) -> Vec<Event> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        while let Ok(e) = self.next(deadline).await {
            out.push(e);
        }
        out
    }

    async fn close(self, cache: &Cache) -> Result<()> {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        wait_streams(cache, 0).await
    }
}

// ---------------------------------------------------------------------------
// The child process holding the clients of the memory measurement.

/// `--clients ADDR GROUP N EXPECTED sotw|delta|push`: connects N clients,
/// prints `synced <ms> <rss_before_kib> <rss_after_kib>` once all are
/// synced, and exits when stdin closes (or after a deadline). With `push`
/// (state-of-the-world) it first prints `ready` once every client holds the
/// group's (empty) clusters and listeners, for the parent to set the
/// configuration.
fn child_main(args: &[String]) -> Result<()> {
    let [addr, group, n, expected, mode] = args else {
        bail!("usage: ads --clients ADDR GROUP N EXPECTED sotw|delta|push");
    };
    let (delta, push) = match mode.as_str() {
        "sotw" => (false, false),
        "delta" => (true, false),
        "push" => (false, true),
        other => bail!("unknown protocol {other:?}"),
    };
    let addr: SocketAddr = addr.parse()?;
    let n: usize = n.parse()?;
    let expected: usize = expected.parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        trim_heap();
        let before = rss_kib();
        let start = Instant::now();
        let mut clients = Clients::spawn(addr, group, n, expected, delta);
        if push {
            clients.until_each_has(&[CDS, LDS]).await?;
            quiesce().await;
            let mut out = std::io::stdout().lock();
            writeln!(out, "ready")?;
            out.flush()?;
        }
        let (last, _) = clients.until_synced().await?;
        quiesce().await;
        clients.drain(SETTLE).await;
        trim_heap();
        let after = rss_kib();
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "synced {} {before} {after}",
            (last - start).as_secs_f64() * 1e3
        )?;
        out.flush()?;
        // The clients stay on the runtime's workers after this returns.
        std::mem::forget(clients);
        anyhow::Ok(())
    })?;
    // Keep the streams open until the parent closes stdin.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(Duration::from_secs(150));
    // Exit without waiting for the runtime's tasks or the stdin reader.
    std::process::exit(0)
}

struct ChildReport {
    sync_ms: f64,
    rss_before: u64,
    rss_after: u64,
}

/// Starts the client process in `mode` (see [`child_main`]); returns it and
/// its lines as they come.
fn start_child(
    addr: SocketAddr,
    group: &str,
    n: usize,
    mode: &str,
) -> Result<(std::process::Child, mpsc::UnboundedReceiver<String>)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "--clients",
            &addr.to_string(),
            group,
            &n.to_string(),
            &SIZE.to_string(),
            mode,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().context("child stdout")?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok((child, rx))
}

/// The child's next line, starting with `word`; kills the child if none
/// comes within [`WAIT`].
async fn child_line(
    child: &mut std::process::Child,
    lines: &mut mpsc::UnboundedReceiver<String>,
    word: &str,
) -> Result<String> {
    match tokio::time::timeout(WAIT, lines.recv()).await {
        Ok(Some(line)) if line.split_whitespace().next() == Some(word) => Ok(line),
        other => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the client process did not report {word:?} ({other:?})");
        }
    }
}

/// Runs `n` clients in a child process until they are all synced; returns
/// the child (still connected) and what it reported.
async fn spawn_child(
    addr: SocketAddr,
    group: &str,
    n: usize,
    delta: bool,
) -> Result<(std::process::Child, ChildReport)> {
    let (mut child, mut lines) = start_child(addr, group, n, if delta { "delta" } else { "sotw" })?;
    let line = child_line(&mut child, &mut lines, "synced").await?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let report = match f.as_slice() {
        ["synced", ms, before, after] => ChildReport {
            sync_ms: ms.parse()?,
            rss_before: before.parse()?,
            rss_after: after.parse()?,
        },
        _ => bail!("unexpected line from the client process: {line:?}"),
    };
    Ok((child, report))
}

fn stop_child(mut child: std::process::Child) {
    drop(child.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------------------
// The measurements.

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("nproc {cpus}, {model}")
}

/// Memory: the clients in a child process, so the server's RSS is its own.
async fn memory(cache: &Cache, addr: SocketAddr, config: &Resources, delta: bool) -> Result<()> {
    let (group, protocol) = if delta {
        ("memory-delta", "delta")
    } else {
        ("memory-sotw", "state-of-the-world")
    };
    cache.set(group, config.clone());
    // Warm up: one stream, so one-time costs (lazily built server state,
    // first allocations of the runtime's threads) are not counted per stream.
    let (child, _) = spawn_child(addr, group, 1, delta).await?;
    stop_child(child);
    wait_streams(cache, 0).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let raw_before = rss_kib();
    trim_heap();
    let before = rss_kib();

    let (child, report) = spawn_child(addr, group, STREAMS, delta).await?;
    let streams = cache.stats().streams.load(Ordering::Relaxed);
    // Let the last ACKs be handled and the send buffers drain.
    quiesce().await;
    let raw_after = rss_kib();
    trim_heap();
    let after = rss_kib();
    let peak = status_kib("VmHWM");
    stop_child(child);
    wait_streams(cache, 0).await?;
    cache.clear(group);
    ensure!(
        streams == STREAMS as u64,
        "server counted {streams} streams"
    );

    let per = |b: u64, a: u64| (a as f64 - b as f64) / STREAMS as f64;
    println!(
        "initial sync of {STREAMS} new {protocol} streams (config already set, clients in a child process): {:.0} ms",
        report.sync_ms
    );
    println!(
        "server memory per synced {protocol} stream: {:.0} KiB  (server RSS {before} -> {after} KiB with {STREAMS} streams, \
         clients in a child process, RSS after malloc_trim(0); without trimming {raw_before} -> {raw_after} KiB = {:.0} KiB/stream; \
         server peak RSS so far {peak} KiB)",
        per(before, after),
        per(raw_before, raw_after),
    );
    println!(
        "client memory per stream (child process, for reference): {:.0} KiB  (child RSS {} -> {} KiB)",
        per(report.rss_before, report.rss_after),
        report.rss_before,
        report.rss_after
    );
    Ok(())
}

/// The full push to fresh clients, repeated; the first repeat also gives
/// the in-process RSS figure.
async fn push(
    cache: &Cache,
    addr: SocketAddr,
    config: &Resources,
    sizes: [usize; 4],
) -> Result<()> {
    let mut times = Vec::new();
    let mut per_client_bytes = 0;
    let mut in_process = None;
    for rep in 0..PUSH_REPEATS {
        let group = format!("push-{rep}");
        trim_heap();
        let rss_before = rss_kib();
        let mut clients = Clients::spawn(addr, &group, STREAMS, SIZE, false);
        // Connected: each has had its (empty) clusters and listeners.
        clients.until_each_has(&[CDS, LDS]).await?;
        let resources = config.clone();
        quiesce().await;
        let t0 = Instant::now();
        ensure!(cache.set(&group, resources), "set changed nothing");
        let (last, seen) = clients.until_synced().await?;
        times.push(ms(last - t0));
        per_client_bytes = seen
            .iter()
            .filter(|e| e.client == 0 && e.kind < 4)
            .map(|e| e.bytes)
            .sum::<usize>();
        if rep == 0 {
            quiesce().await;
            clients.drain(SETTLE).await;
            trim_heap();
            in_process = Some((rss_before, rss_kib()));
        }
        clients.close(cache).await?;
        cache.clear(&group);
    }
    println!(
        "push {SIZE} routes+clusters to {STREAMS} streams: median {:.0} ms, max {:.0} ms  ({} repeats: {})",
        median(&times),
        max(&times),
        times.len(),
        times
            .iter()
            .map(|t| format!("{t:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  config: CDS {} KiB, EDS {} KiB, LDS {} B, RDS {} KiB; received per client {} KiB, {:.0} MiB over all streams",
        sizes[0] / 1024,
        sizes[1] / 1024,
        sizes[2],
        sizes[3] / 1024,
        per_client_bytes / 1024,
        (per_client_bytes * STREAMS) as f64 / (1 << 20) as f64
    );
    if let Some((b, a)) = in_process {
        println!(
            "  cross-check, in-process RSS per stream (server + client together): {:.0} KiB  ({b} -> {a} KiB)",
            (a as f64 - b as f64) / STREAMS as f64
        );
    }
    Ok(())
}

/// The push again with the clients in a child process, so this process is
/// the server alone: its CPU time for the push, beside the wall time.
async fn push_from_child(cache: &Cache, addr: SocketAddr, config: &Resources) -> Result<()> {
    let mut times = Vec::new();
    let mut cpu = Vec::new();
    for rep in 0..PUSH_REPEATS {
        let group = format!("push-child-{rep}");
        let (mut child, mut lines) = start_child(addr, &group, STREAMS, "push")?;
        child_line(&mut child, &mut lines, "ready").await?;
        let resources = config.clone();
        quiesce().await;
        let ticks = cpu_ticks();
        let t0 = Instant::now();
        ensure!(cache.set(&group, resources), "set changed nothing");
        child_line(&mut child, &mut lines, "synced").await?;
        times.push(ms(t0.elapsed()));
        // The last ACKs are the server's work too.
        quiesce().await;
        // /proc reports CPU time in USER_HZ ticks, 100 per second on Linux.
        cpu.push((cpu_ticks() - ticks) as f64 * 10.0);
        stop_child(child);
        wait_streams(cache, 0).await?;
        cache.clear(&group);
    }
    let list = |v: &[f64]| {
        v.iter()
            .map(|t| format!("{t:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "push {SIZE} routes+clusters to {STREAMS} streams, clients in a child process: median {:.0} ms, max {:.0} ms  ({})",
        median(&times),
        max(&times),
        list(&times)
    );
    println!(
        "  server CPU time for the push (its ACKs included): median {:.0} ms, max {:.0} ms  ({})",
        median(&cpu),
        max(&cpu),
        list(&cpu)
    );
    Ok(())
}

/// What one change under 100 synced streams alters.
#[derive(Clone, Copy, PartialEq)]
enum Change {
    /// One ClusterLoadAssignment's second endpoint.
    Endpoint,
    /// One Cluster's connect timeout: its endpoints must be sent again too,
    /// as a changed cluster warms anew.
    Cluster,
}

/// One resource changes under 100 synced streams: the time until every
/// client has the update (an EDS response; for a cluster, a CDS and an EDS
/// response), the bytes each received, and whether anything else was sent.
async fn change(
    cache: &Cache,
    addr: SocketAddr,
    config: &Resources,
    delta: bool,
    what: Change,
) -> Result<()> {
    let protocol = if delta { "delta" } else { "state-of-the-world" };
    let (noun, kinds): (&str, &[usize]) = match what {
        Change::Endpoint => ("one-endpoint", &[EDS]),
        Change::Cluster => ("one-cluster", &[CDS, EDS]),
    };
    let group = format!("{noun}-{protocol}");
    // Each changed response carries every resource of its type
    // (state-of-the-world) or the changed one alone (delta).
    let per_response = if delta { 1 } else { SIZE };
    cache.set(&group, config.clone());
    let mut clients = Clients::spawn(addr, &group, STREAMS, SIZE, delta);
    clients.until_synced().await?;
    clients.drain(SETTLE).await;
    let repeats = if delta { DELTA_REPEATS } else { EDS_REPEATS };

    let want: u8 = kinds.iter().map(|k| 1 << k).sum();
    let mut times = Vec::new();
    let mut bytes_per_client = BTreeSet::new();
    let mut server_responses = BTreeSet::new();
    let mut stray = 0;
    let mut changed_bytes = 0;
    let mut current = config.clone();
    for rep in 0..repeats {
        let i = (rep * 241) % SIZE;
        let generation = rep as u32 + 1;
        // Exactly one resource differs from what is set.
        match what {
            Change::Endpoint => {
                let cla = load_assignment(i, generation);
                changed_bytes = cla.encoded_len();
                current.add(cluster_name(i), &cla);
            }
            Change::Cluster => {
                let c = cluster(i, generation);
                changed_bytes = c.encoded_len();
                current.add(cluster_name(i), &c);
            }
        }
        let resources = current.clone();
        quiesce().await;
        let sent_before = cache.stats().responses.load(Ordering::Relaxed);
        let t0 = Instant::now();
        ensure!(cache.set(&group, resources), "set changed nothing");
        let deadline = Instant::now() + WAIT;
        let mut bytes = vec![0usize; STREAMS];
        let mut got = [0u8; STREAMS];
        let mut left = STREAMS;
        let mut last = t0;
        while left > 0 {
            let e = clients.next(deadline).await?;
            if want & (1 << e.kind) == 0 {
                stray += 1;
                continue;
            }
            ensure!(
                e.resources == per_response,
                "update with {} resources",
                e.resources
            );
            bytes[e.client] += e.bytes;
            let before = got[e.client];
            got[e.client] |= 1 << e.kind;
            if before != want && got[e.client] == want {
                left -= 1;
                last = e.at;
            }
        }
        times.push(ms(last - t0));
        for e in clients.drain(SETTLE).await {
            if want & (1 << e.kind) != 0 {
                bytes[e.client] += e.bytes;
            } else {
                stray += 1;
            }
        }
        bytes_per_client.extend(bytes);
        server_responses.insert(cache.stats().responses.load(Ordering::Relaxed) - sent_before);
    }
    clients.close(cache).await?;
    cache.clear(&group);

    let types = if what == Change::Endpoint {
        "EDS"
    } else {
        "CDS and EDS"
    };
    println!(
        "{noun} change under {STREAMS} {protocol} streams: median {:.1} ms, max {:.1} ms until all {STREAMS} clients have it ({} repeats)",
        median(&times),
        max(&times),
        times.len()
    );
    let bytes: Vec<String> = bytes_per_client.iter().map(|b| b.to_string()).collect();
    let responses: Vec<String> = server_responses.iter().map(|r| r.to_string()).collect();
    println!(
        "  bytes per client per change: {} B  ({types}, each response carrying {per_response} \
         resource(s); the changed one alone encodes to {changed_bytes} B)",
        bytes.join(" / ")
    );
    println!(
        "  only {types} sent: {}  (responses of other types seen by clients: {stray}; server responses per change: {})",
        if stray == 0 && responses == [(STREAMS * kinds.len()).to_string()] {
            "yes"
        } else {
            "NO"
        },
        responses.join(" / ")
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(rest) = args.strip_prefix(&["--clients".to_owned()]) {
        return child_main(rest);
    }
    let start = Instant::now();
    println!("machine: {}", machine());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let cache = Cache::new();
        let addr = start_server(cache.clone()).await?;
        let built = Instant::now();
        let (config, sizes) = configuration(SIZE);
        println!(
            "config: {SIZE} clusters, {SIZE} ClusterLoadAssignments (2 endpoints each), 1 listener, \
             1 route configuration with {SIZE} routes; built and encoded in {:.0} ms",
            ms(built.elapsed())
        );
        // Memory first, while the heap has not yet held the other phases.
        memory(&cache, addr, &config, false).await?;
        memory(&cache, addr, &config, true).await?;
        push(&cache, addr, &config, sizes).await?;
        push_from_child(&cache, addr, &config).await?;
        for what in [Change::Endpoint, Change::Cluster] {
            change(&cache, addr, &config, false, what).await?;
            change(&cache, addr, &config, true, what).await?;
        }
        anyhow::Ok(())
    })?;
    println!("total bench time: {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
