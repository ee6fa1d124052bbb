//! Shared support for the translator's integration tests: include it with
//! `mod support;`.
//!
//! - [`load_case`] reads a multi-document YAML test case into an [`Input`].
//! - The golden format itself (statuses plus each Gateway's Envoy resources in
//!   Envoy's canonical proto3 JSON, as YAML) is `gatewright_render::render`.
//! - [`envoy_validate`] loads each Gateway's Envoy resources into a real Envoy
//!   (`envoy --mode validate`) through a static bootstrap built from them.

#![allow(dead_code)]

use anyhow::Context as _;
use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::bootstrap::v3::bootstrap::StaticResources;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::{Node, TransportSocket, transport_socket};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::downstream_tls_context::SessionTicketKeysType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, UpstreamTlsContext,
};
use envoy_types::pb::google::protobuf::Any;
use gatewright_translator::{EdgeSettings, GatewayResources, Input, ObjectKey, Output};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use prost::Message;
use serde::Deserialize as _;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The `now` every golden case is translated at, so conditions'
/// `lastTransitionTime` is stable.
pub const CASE_NOW: &str = "2026-01-01T00:00:00Z";

const HCM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const DOWNSTREAM_TLS_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const UPSTREAM_TLS_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

/// The workspace root (the parent of the translator crate).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("translator crate has a parent directory")
        .to_path_buf()
}

/// `testdata/translator` in the workspace.
pub fn cases_dir() -> PathBuf {
    workspace_dir().join("testdata").join("translator")
}

/// Every test case (`testdata/translator/*.yaml`), sorted.
pub fn case_paths() -> Vec<PathBuf> {
    let entries = std::fs::read_dir(cases_dir()).expect("list testdata/translator");
    let mut cases: Vec<PathBuf> = entries
        .map(|entry| entry.expect("readable testdata/translator entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    cases.sort();
    cases
}

// ---------------------------------------------------------------------------
// Test cases
// ---------------------------------------------------------------------------

/// Reads one test case: a multi-document YAML file of Kubernetes objects.
/// Empty documents (and a leading comment-only block) are skipped. The
/// input's `now` is fixed at [`CASE_NOW`].
pub fn load_case(path: &Path) -> anyhow::Result<Input> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut input = Input::new();
    input.now = Some(case_now());
    // What the control plane resolves from ProxyParameters and hands the
    // translator (`Input::edge_settings`) is given by a header line:
    // `# Input.edge_settings: {"<ns>/<gateway>": {"Ok": {...}} | {"Err": "..."}}`.
    for line in text.lines() {
        if let Some(json) = line.strip_prefix("# Input.edge_settings:") {
            let settings: std::collections::BTreeMap<String, Result<EdgeSettings, String>> =
                serde_json::from_str(json.trim())
                    .with_context(|| format!("{}: Input.edge_settings", path.display()))?;
            for (key, value) in settings {
                let (ns, name) = key
                    .split_once('/')
                    .with_context(|| format!("{}: {key} is not ns/name", path.display()))?;
                input.edge_settings.insert(ObjectKey::new(ns, name), value);
            }
        }
    }
    for (index, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let yaml = serde_yaml::Value::deserialize(document)
            .with_context(|| format!("{}: parsing YAML document {}", path.display(), index + 1))?;
        if yaml.is_null() {
            continue;
        }
        let json: Value = serde_json::to_value(&yaml).with_context(|| {
            format!(
                "{}: converting YAML document {} to JSON",
                path.display(),
                index + 1
            )
        })?;
        let what = describe_document(&json);
        input
            .add_document(json)
            .with_context(|| format!("{}: document {} ({what})", path.display(), index + 1))?;
    }
    Ok(input)
}

/// [`CASE_NOW`] as a Kubernetes `Time`.
pub fn case_now() -> Time {
    Time(
        CASE_NOW
            .parse()
            .expect("CASE_NOW is a valid RFC 3339 timestamp"),
    )
}

fn describe_document(doc: &Value) -> String {
    let field = |pointer: &str| {
        doc.pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned()
    };
    format!(
        "{} {}/{}",
        field("/kind"),
        field("/metadata/namespace"),
        field("/metadata/name")
    )
}

// ---------------------------------------------------------------------------
// Envoy validation
// ---------------------------------------------------------------------------

/// The Envoy to validate with (the workspace's one lookup).
pub use gatewright_testkit::find_envoy as envoy_binary;

/// Loads every Gateway's resources into Envoy (`--mode validate`) through a
/// static bootstrap (see [`bootstrap_for`]). `Err` names each Gateway Envoy
/// (or the bootstrap conversion) rejected, with Envoy's output.
pub fn envoy_validate(output: &Output) -> Result<(), String> {
    if output.gateways.is_empty() {
        return Ok(());
    }
    let envoy = envoy_binary()?;
    let mut errors = Vec::new();
    for (key, resources) in &output.gateways {
        let node = key.to_string();
        let result = bootstrap_for(&node, resources)
            .and_then(|bootstrap| run_envoy_validate(&envoy, &bootstrap));
        if let Err(e) = result {
            errors.push(format!("gateway {node}: {e}"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

/// A static Envoy bootstrap equivalent to what one Gateway's Envoy gets over
/// ADS: RDS references inlined, EDS clusters made STATIC with their
/// ClusterLoadAssignment, SDS references resolved from static secrets.
pub fn bootstrap_for(node: &str, resources: &GatewayResources) -> Result<Bootstrap, String> {
    let routes: BTreeMap<&str, &RouteConfiguration> = resources
        .routes
        .iter()
        .map(|r| (r.name.as_str(), r))
        .collect();
    let endpoints: BTreeMap<&str, &ClusterLoadAssignment> = resources
        .endpoints
        .iter()
        .map(|e| (e.cluster_name.as_str(), e))
        .collect();

    let listeners = resources
        .listeners
        .iter()
        .map(|listener| {
            static_listener(listener, &routes)
                .map_err(|e| format!("listener {}: {e}", listener.name))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let clusters = resources
        .clusters
        .iter()
        .map(|cluster| {
            static_cluster(cluster, &endpoints)
                .map_err(|e| format!("cluster {}: {e}", cluster.name))
        })
        .collect::<Result<Vec<_>, _>>()?;

    Ok(Bootstrap {
        node: Some(Node {
            id: node.to_owned(),
            cluster: node.to_owned(),
            ..Default::default()
        }),
        static_resources: Some(StaticResources {
            listeners,
            clusters,
            secrets: resources.secrets.clone(),
        }),
        ..Default::default()
    })
}

fn static_listener(
    listener: &Listener,
    routes: &BTreeMap<&str, &RouteConfiguration>,
) -> Result<Listener, String> {
    let mut listener = listener.clone();
    for (index, chain) in listener.filter_chains.iter_mut().enumerate() {
        static_filter_chain(chain, routes)
            .map_err(|e| format!("filter chain {index} ({:?}): {e}", chain.name))?;
    }
    if let Some(chain) = listener.default_filter_chain.as_mut() {
        static_filter_chain(chain, routes).map_err(|e| format!("default filter chain: {e}"))?;
    }
    Ok(listener)
}

fn static_filter_chain(
    chain: &mut FilterChain,
    routes: &BTreeMap<&str, &RouteConfiguration>,
) -> Result<(), String> {
    for filter in &mut chain.filters {
        let Some(filter::ConfigType::TypedConfig(any)) = filter.config_type.as_mut() else {
            continue;
        };
        if any.type_url != HCM_TYPE_URL {
            continue;
        }
        let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).map_err(|e| {
            format!(
                "filter {}: cannot decode HttpConnectionManager: {e}",
                filter.name
            )
        })?;
        if let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier {
            let route = routes.get(rds.route_config_name.as_str()).ok_or_else(|| {
                format!(
                    "filter {}: HttpConnectionManager references RouteConfiguration {:?}, which is not among the \
                     Gateway's routes",
                    filter.name, rds.route_config_name
                )
            })?;
            hcm.route_specifier = Some(RouteSpecifier::RouteConfig((*route).clone()));
        }
        any.value = hcm.encode_to_vec();
    }
    if let Some(socket) = chain.transport_socket.as_mut() {
        static_transport_socket(socket)?;
    }
    Ok(())
}

fn static_cluster(
    cluster: &Cluster,
    endpoints: &BTreeMap<&str, &ClusterLoadAssignment>,
) -> Result<Cluster, String> {
    let mut cluster = cluster.clone();
    if cluster.cluster_discovery_type == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
    {
        cluster.cluster_discovery_type =
            Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
        // EDS asks for the cluster's service_name, or its name if unset.
        let eds_name = cluster
            .eds_cluster_config
            .take()
            .map(|eds| eds.service_name)
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| cluster.name.clone());
        let assignment = endpoints
            .get(eds_name.as_str())
            .map(|cla| (*cla).clone())
            .unwrap_or_default();
        cluster.load_assignment = Some(ClusterLoadAssignment {
            cluster_name: cluster.name.clone(),
            ..assignment
        });
    }
    if let Some(socket) = cluster.transport_socket.as_mut() {
        static_transport_socket(socket)?;
    }
    for socket_match in &mut cluster.transport_socket_matches {
        if let Some(socket) = socket_match.transport_socket.as_mut() {
            static_transport_socket(socket)?;
        }
    }
    Ok(cluster)
}

/// Drops `sds_config` from the SDS references of a TLS transport socket, so
/// Envoy resolves them from `static_resources.secrets`.
fn static_transport_socket(socket: &mut TransportSocket) -> Result<(), String> {
    let Some(transport_socket::ConfigType::TypedConfig(any)) = socket.config_type.as_mut() else {
        return Ok(());
    };
    match any.type_url.as_str() {
        DOWNSTREAM_TLS_TYPE_URL => {
            let mut tls = DownstreamTlsContext::decode(any.value.as_slice())
                .map_err(|e| format!("cannot decode DownstreamTlsContext: {e}"))?;
            if let Some(common) = tls.common_tls_context.as_mut() {
                static_common_tls_context(common);
            }
            if let Some(SessionTicketKeysType::SessionTicketKeysSdsSecretConfig(sds)) =
                tls.session_ticket_keys_type.as_mut()
            {
                static_sds(sds);
            }
            *any = Any {
                type_url: any.type_url.clone(),
                value: tls.encode_to_vec(),
            };
        }
        UPSTREAM_TLS_TYPE_URL => {
            let mut tls = UpstreamTlsContext::decode(any.value.as_slice())
                .map_err(|e| format!("cannot decode UpstreamTlsContext: {e}"))?;
            if let Some(common) = tls.common_tls_context.as_mut() {
                static_common_tls_context(common);
            }
            *any = Any {
                type_url: any.type_url.clone(),
                value: tls.encode_to_vec(),
            };
        }
        _ => {}
    }
    Ok(())
}

fn static_common_tls_context(common: &mut CommonTlsContext) {
    common
        .tls_certificate_sds_secret_configs
        .iter_mut()
        .for_each(static_sds);
    match common.validation_context_type.as_mut() {
        Some(ValidationContextType::ValidationContextSdsSecretConfig(sds)) => static_sds(sds),
        Some(ValidationContextType::CombinedValidationContext(combined)) => {
            if let Some(sds) = combined.validation_context_sds_secret_config.as_mut() {
                static_sds(sds);
            }
        }
        _ => {}
    }
}

fn static_sds(sds: &mut SdsSecretConfig) {
    sds.sds_config = None;
}

/// Writes `bootstrap` as JSON and runs `envoy --mode validate` on it.
pub fn run_envoy_validate(envoy: &Path, bootstrap: &Bootstrap) -> Result<(), String> {
    let json =
        gatewright_render::to_canonical_json(bootstrap, "envoy.config.bootstrap.v3.Bootstrap")
            .map_err(|e| format!("cannot write the bootstrap as JSON: {e}"))?;
    let dir = tempfile::Builder::new()
        .prefix("gatewright-envoy-validate-")
        .tempdir()
        .map_err(|e| format!("cannot create a temp dir: {e}"))?;
    let file = dir.path().join("bootstrap.json");
    let text = serde_json::to_string_pretty(&json).expect("JSON values always serialise");
    std::fs::write(&file, text).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    let output = Command::new(envoy)
        .arg("--mode")
        .arg("validate")
        .arg("-c")
        .arg(&file)
        .args(["--log-level", "error", "--disable-hot-restart"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", envoy.display()))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "envoy --mode validate failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    ))
}

/// A minimal Gateway's resources: one HTTP listener whose connection manager
/// uses RDS route `route`, and the matching RouteConfiguration.
pub fn minimal_http_gateway(route_in_listener: &str, listen_address: &str) -> GatewayResources {
    use envoy_types::pb::envoy::config::core::v3::{
        Address, AggregatedConfigSource, ConfigSource, SocketAddress, address, config_source,
        socket_address,
    };
    use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
    };
    use envoy_types::pb::google::protobuf::Any;
    use prost::Message;

    let ads = ConfigSource {
        resource_api_version: 2, // V3
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    };
    let hcm = HttpConnectionManager {
        stat_prefix: "http".to_owned(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads),
            route_config_name: route_in_listener.to_owned(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".to_owned(),
            config_type: Some(http_filter::ConfigType::TypedConfig(Any {
                type_url: "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                    .to_owned(),
                value: Router::default().encode_to_vec(),
            })),
            ..Default::default()
        }],
        ..Default::default()
    };
    let listener = Listener {
        name: "http-8080".to_owned(),
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: listen_address.to_owned(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(8080)),
                ..Default::default()
            })),
        }),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".to_owned(),
                config_type: Some(filter::ConfigType::TypedConfig(Any {
                    type_url: "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.\
                               HttpConnectionManager"
                        .to_owned(),
                    value: hcm.encode_to_vec(),
                })),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    GatewayResources {
        listeners: vec![listener],
        routes: vec![RouteConfiguration {
            name: "route".to_owned(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// `resources` as the only Gateway (`default/gw`) of an [`Output`].
pub fn output_of(resources: GatewayResources) -> Output {
    let mut output = Output::default();
    output.gateways.insert(
        ObjectKey::new("default", "gw"),
        std::sync::Arc::new(resources),
    );
    output
}
