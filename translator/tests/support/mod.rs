//! Shared support for the translator's integration tests: include it with
//! `mod support;`.
//!
//! - [`load_case`] reads a multi-document YAML test case into an [`Input`].
//! - [`render`] writes an [`Output`] in the golden format: statuses plus each
//!   Gateway's Envoy resources in Envoy's canonical proto3 JSON, as YAML.
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
use gatewright_translator::{GatewayResources, Input, Output};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde::Deserialize as _;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The `now` every golden case is translated at, so conditions'
/// `lastTransitionTime` is stable.
pub const CASE_NOW: &str = "2026-01-01T00:00:00Z";

/// What replaces private key material in rendered output.
pub const REDACTED: &str = "[redacted]";

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
// Descriptor pool and canonical JSON
// ---------------------------------------------------------------------------

/// The directory of the envoy-types package this workspace resolves to, found
/// with `cargo metadata`.
pub fn envoy_types_dir() -> Result<PathBuf, String> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(find_envoy_types_dir).clone()
}

fn find_envoy_types_dir() -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{} metadata`: {e}", cargo.to_string_lossy()))?;
    if !output.status.success() {
        return Err(format!(
            "`{} metadata --format-version 1 --offline` failed ({}):\n{}",
            cargo.to_string_lossy(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let metadata: Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("cannot parse `cargo metadata` output: {e}"))?;
    let packages = metadata["packages"].as_array().cloned().unwrap_or_default();
    // Prefer the envoy-types the translator actually depends on.
    let translator_id = packages
        .iter()
        .find(|p| p["name"] == "gatewright-translator")
        .and_then(|p| p["id"].as_str());
    let resolved_id = metadata["resolve"]["nodes"].as_array().and_then(|nodes| {
        let node = nodes.iter().find(|n| n["id"].as_str() == translator_id)?;
        node["deps"]
            .as_array()?
            .iter()
            .find(|d| d["name"] == "envoy_types")
            .and_then(|d| d["pkg"].as_str())
    });
    let package = packages
        .iter()
        .find(|p| resolved_id.is_some() && p["id"].as_str() == resolved_id)
        .or_else(|| packages.iter().find(|p| p["name"] == "envoy-types"))
        .ok_or_else(|| "package envoy-types not found in `cargo metadata` output".to_owned())?;
    let manifest = package["manifest_path"]
        .as_str()
        .ok_or_else(|| "envoy-types has no manifest_path in `cargo metadata` output".to_owned())?;
    let dir = Path::new(manifest)
        .parent()
        .expect("a manifest path has a parent")
        .to_path_buf();
    if !dir.join("proto").is_dir() {
        return Err(format!(
            "envoy-types at {} has no proto/ directory",
            dir.display()
        ));
    }
    Ok(dir)
}

/// A descriptor pool of every protobuf package envoy-types generates Rust
/// types for (so any `Any` the translator can build resolves), compiled once
/// from the `.proto` files envoy-types ships.
pub fn descriptor_pool() -> &'static DescriptorPool {
    &pool_and_skipped().0
}

/// The `.proto` files (with the error) left out of [`descriptor_pool`].
pub fn descriptor_pool_skipped() -> &'static [String] {
    &pool_and_skipped().1
}

fn pool_and_skipped() -> &'static (DescriptorPool, Vec<String>) {
    static POOL: OnceLock<Result<(DescriptorPool, Vec<String>), String>> = OnceLock::new();
    match POOL.get_or_init(build_descriptor_pool) {
        Ok(pool) => pool,
        Err(e) => panic!("cannot build the Envoy descriptor pool: {e}"),
    }
}

fn build_descriptor_pool() -> Result<(DescriptorPool, Vec<String>), String> {
    let dir = envoy_types_dir()?;
    let proto = dir.join("proto");
    let includes = [
        "data-plane-api",
        "xds",
        "protoc-gen-validate",
        "googleapis",
        "cel-spec/proto",
        "opentelemetry-proto",
        "client_model",
    ]
    .map(|include| proto.join(include));

    // The packages envoy-types has Rust types for: one generated file each.
    let generated = dir.join("src").join("generated");
    let packages: BTreeSet<String> = std::fs::read_dir(&generated)
        .map_err(|e| format!("cannot list {}: {e}", generated.display()))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter_map(|name| name.strip_suffix(".rs").map(str::to_owned))
        .collect();
    // Every .proto file of the Envoy and xds trees in one of those packages.
    let mut files = BTreeMap::new();
    for root in [proto.join("data-plane-api"), proto.join("xds")] {
        collect_proto_files(&root, &root, &packages, &mut files)?;
    }
    if files.is_empty() {
        return Err(format!("no .proto files found under {}", proto.display()));
    }

    // prost-reflect resolves the first component of a relative name against
    // every package in the pool, not only the imported ones as protoc does:
    // once e.g. `envoy.extensions.filters.common.fault.v3` is loaded,
    // `common.ratelimit.v3.X` in a later `envoy.extensions.filters.*` file
    // resolves to the missing `envoy.extensions.filters.common.ratelimit.v3.X`.
    // When that happens, the name is resolved the way protoc would (the
    // innermost enclosing package scope where it exists), written into that
    // file's source fully qualified, and the file compiled again.
    let rewrites: Rewrites = Default::default();
    let mut resolver = protox::file::ChainFileResolver::new();
    for include in &includes {
        resolver.add(protox::file::IncludeFileResolver::new(include.clone()));
    }
    resolver.add(protox::file::GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(RewritingResolver {
        inner: resolver,
        rewrites: rewrites.clone(),
    });
    compiler.include_imports(true);
    let mut skipped = Vec::new();
    for file in files.keys() {
        let mut attempts = 0;
        while let Err(e) = compiler.open_file(file) {
            let message = e.to_string();
            attempts += 1;
            let fix =
                e.file()
                    .zip(shadowed_name(&message))
                    .and_then(|(failing, (name, shadowed))| {
                        let full = protoc_resolution(
                            &compiler.descriptor_pool(),
                            &includes,
                            failing,
                            name,
                            shadowed,
                        )?;
                        Some((failing.to_owned(), name.to_owned(), full))
                    });
            match fix {
                Some((failing, name, full)) if attempts < 50 => {
                    rewrites
                        .lock()
                        .unwrap()
                        .entry(failing)
                        .or_default()
                        .push((name, full));
                }
                _ => {
                    skipped.push(format!("{file}: {message}"));
                    break;
                }
            }
        }
    }
    let pool = compiler.descriptor_pool();
    let missing: Vec<&str> = REQUIRED_MESSAGES
        .iter()
        .copied()
        .filter(|m| pool.get_message_by_name(m).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "messages {missing:?} did not compile; files left out:\n{}",
            skipped.join("\n")
        ));
    }
    Ok((pool, skipped))
}

/// Per file name: relative type names to replace with fully-qualified ones.
type Rewrites = std::sync::Arc<std::sync::Mutex<BTreeMap<String, Vec<(String, String)>>>>;

/// Serves `.proto` files from the include paths, with the type names in
/// [`Rewrites`] replaced.
struct RewritingResolver {
    inner: protox::file::ChainFileResolver,
    rewrites: Rewrites,
}

impl protox::file::FileResolver for RewritingResolver {
    fn resolve_path(&self, path: &Path) -> Option<String> {
        self.inner.resolve_path(path)
    }

    fn open_file(&self, name: &str) -> Result<protox::file::File, protox::Error> {
        let file = self.inner.open_file(name)?;
        let rewrites = self.rewrites.lock().unwrap();
        let (Some(replacements), Some(source)) = (rewrites.get(name), file.source()) else {
            return Ok(file);
        };
        let mut source = source.to_owned();
        for (from, to) in replacements {
            source = replace_type_name(&source, from, to);
        }
        protox::file::File::from_source(name, &source)
    }
}

/// Replaces the whole type name `from` (not part of a longer dotted name)
/// with `.to`.
fn replace_type_name(source: &str, from: &str, to: &str) -> String {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find(from) {
        let before = rest[..at].chars().next_back();
        let after = rest[at + from.len()..].chars().next();
        out.push_str(&rest[..at]);
        if before.is_some_and(is_name_char)
            || after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            out.push_str(from);
        } else {
            out.push('.');
            out.push_str(to);
        }
        rest = &rest[at + from.len()..];
    }
    out.push_str(rest);
    out
}

/// From "'a.b.C' resolves to 'x.y.a.b.C', which is not defined": the
/// relative name and what it was wrongly resolved to.
fn shadowed_name(message: &str) -> Option<(&str, &str)> {
    if !message.contains("' resolves to '") {
        return None;
    }
    let mut quoted = message.split('\'').skip(1).step_by(2);
    Some((quoted.next()?, quoted.next()?))
}

/// The full name protoc gives relative type `name` in `file`: the innermost
/// enclosing package scope where the name is defined.
fn protoc_resolution(
    pool: &DescriptorPool,
    includes: &[PathBuf],
    file: &str,
    name: &str,
    shadowed: &str,
) -> Option<String> {
    let text = includes
        .iter()
        .find_map(|include| std::fs::read_to_string(include.join(file)).ok())?;
    let package = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("package "))?
        .trim_end_matches(';')
        .trim();
    let mut scope = Some(package);
    while let Some(current) = scope {
        let candidate = if current.is_empty() {
            name.to_owned()
        } else {
            format!("{current}.{name}")
        };
        let defined = pool.get_message_by_name(&candidate).is_some()
            || pool.get_enum_by_name(&candidate).is_some();
        if candidate != shadowed && defined {
            return Some(candidate);
        }
        scope = match current.rsplit_once('.') {
            Some((parent, _)) => Some(parent),
            None if current.is_empty() => None,
            None => Some(""),
        };
    }
    None
}

/// Messages the golden format and the validation bootstrap cannot do without.
const REQUIRED_MESSAGES: &[&str] = &[
    "envoy.config.bootstrap.v3.Bootstrap",
    "envoy.config.listener.v3.Listener",
    "envoy.config.route.v3.RouteConfiguration",
    "envoy.config.cluster.v3.Cluster",
    "envoy.config.endpoint.v3.ClusterLoadAssignment",
    "envoy.extensions.transport_sockets.tls.v3.Secret",
    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
    "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
    "envoy.extensions.filters.http.router.v3.Router",
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
];

fn collect_proto_files(
    root: &Path,
    dir: &Path,
    packages: &BTreeSet<String>,
    files: &mut BTreeMap<String, String>,
) -> Result<(), String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.is_dir() {
            collect_proto_files(root, &path, packages, files)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let package = text
                .lines()
                .find_map(|line| line.trim().strip_prefix("package "))
                .map(|rest| rest.trim_end_matches(';').trim());
            if let Some(package) = package.filter(|p| packages.contains(*p)) {
                let relative = path
                    .strip_prefix(root)
                    .expect("walked path is under its root");
                files.insert(
                    relative.to_string_lossy().replace('\\', "/"),
                    package.to_owned(),
                );
            }
        }
    }
    Ok(())
}

/// A prost message in Envoy's canonical proto3 JSON form. `full_name` is the
/// protobuf message name (e.g. `envoy.config.listener.v3.Listener`).
pub fn to_canonical_json<M: Message>(message: &M, full_name: &str) -> Value {
    let pool = descriptor_pool();
    let descriptor = pool
        .get_message_by_name(full_name)
        .unwrap_or_else(|| panic!("message {full_name} is not in the Envoy descriptor pool"));
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .unwrap_or_else(|e| panic!("cannot decode a {full_name} as a dynamic message: {e}"));
    serde_json::to_value(&dynamic).unwrap_or_else(|e| {
        panic!(
            "cannot write a {full_name} as JSON: {e}\n(.proto files left out of the descriptor pool:\n{})",
            descriptor_pool_skipped().join("\n")
        )
    })
}

/// Replaces private key material (`privateKey`, `pkcs12`, `password` and
/// session ticket keys given inline) with [`REDACTED`], anywhere in `value`.
pub fn redact_private_keys(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match key.as_str() {
                    "privateKey" | "pkcs12" | "password" => redact_data_source(child),
                    "sessionTicketKeys" => {
                        if let Some(keys) = child.get_mut("keys").and_then(Value::as_array_mut) {
                            keys.iter_mut().for_each(redact_data_source);
                        }
                    }
                    _ => redact_private_keys(child),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_private_keys),
        _ => {}
    }
}

fn redact_data_source(value: &mut Value) {
    if let Value::Object(map) = value {
        for key in ["inlineBytes", "inlineString"] {
            if let Some(inline) = map.get_mut(key) {
                *inline = Value::String(REDACTED.to_owned());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Golden rendering
// ---------------------------------------------------------------------------

/// The golden form of an [`Output`]: YAML with `statuses` (non-empty maps
/// only, keyed `namespace/name`) and `gateways` (keyed `namespace/name`, each
/// with its Envoy resources in canonical proto3 JSON). Private keys are
/// redacted.
pub fn render(output: &Output) -> String {
    let gateways = output
        .gateways
        .iter()
        .map(|(key, resources)| (key.to_string(), render_gateway(resources)))
        .collect::<serde_json::Map<_, _>>();
    // Two documents' worth of keys, written one after the other so that
    // `statuses` comes first (a JSON map would sort it after `gateways`).
    let mut out = String::new();
    for (key, mut value) in [
        ("statuses", render_statuses(output)),
        ("gateways", Value::Object(gateways)),
    ] {
        redact_private_keys(&mut value);
        let section = serde_json::json!({ key: value });
        out.push_str(
            &serde_yaml::to_string(&section).expect("JSON values always serialise as YAML"),
        );
    }
    out
}

fn render_statuses(output: &Output) -> Value {
    fn section<K: ToString, V: serde::Serialize>(
        statuses: &mut serde_json::Map<String, Value>,
        name: &str,
        map: &BTreeMap<K, V>,
    ) {
        if map.is_empty() {
            return;
        }
        let rendered = map
            .iter()
            .map(|(key, status)| {
                let status = serde_json::to_value(status).unwrap_or_else(|e| {
                    panic!(
                        "cannot serialise the {name} status of {}: {e}",
                        key.to_string()
                    )
                });
                (key.to_string(), status)
            })
            .collect::<serde_json::Map<_, _>>();
        statuses.insert(name.to_owned(), Value::Object(rendered));
    }
    let s = &output.statuses;
    let mut statuses = serde_json::Map::new();
    section(&mut statuses, "gateway_classes", &s.gateway_classes);
    section(&mut statuses, "gateways", &s.gateways);
    section(&mut statuses, "listener_sets", &s.listener_sets);
    section(&mut statuses, "http_routes", &s.http_routes);
    section(&mut statuses, "grpc_routes", &s.grpc_routes);
    section(&mut statuses, "tls_routes", &s.tls_routes);
    section(
        &mut statuses,
        "backend_tls_policies",
        &s.backend_tls_policies,
    );
    Value::Object(statuses)
}

fn render_gateway(resources: &GatewayResources) -> Value {
    fn list<M: Message>(items: &[M], full_name: &str) -> Value {
        Value::Array(
            items
                .iter()
                .map(|item| to_canonical_json(item, full_name))
                .collect(),
        )
    }
    serde_json::json!({
        "listeners": list(&resources.listeners, "envoy.config.listener.v3.Listener"),
        "routes": list(&resources.routes, "envoy.config.route.v3.RouteConfiguration"),
        "clusters": list(&resources.clusters, "envoy.config.cluster.v3.Cluster"),
        "endpoints": list(&resources.endpoints, "envoy.config.endpoint.v3.ClusterLoadAssignment"),
        "secrets": list(&resources.secrets, "envoy.extensions.transport_sockets.tls.v3.Secret"),
    })
}

// ---------------------------------------------------------------------------
// Envoy validation
// ---------------------------------------------------------------------------

/// The Envoy binary to validate with: `$ENVOY_BIN`, else the one `make envoy`
/// installs in `.tools/envoy/bin/envoy`, else `envoy` on `PATH`.
pub fn envoy_binary() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("ENVOY_BIN").filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!(
                "ENVOY_BIN={} does not exist; run `make envoy` to install Envoy",
                bin.display()
            ))
        };
    }
    let tools = workspace_dir()
        .join(".tools")
        .join("envoy")
        .join("bin")
        .join("envoy");
    if tools.is_file() {
        return Ok(tools);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("envoy");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(format!(
        "no Envoy found (not in $ENVOY_BIN, {}, nor on PATH); run `make envoy` to install it",
        tools.display()
    ))
}

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
    let json = to_canonical_json(bootstrap, "envoy.config.bootstrap.v3.Bootstrap");
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
