//! Envoy resources and translator output in the golden format: Envoy's
//! canonical proto3 JSON, with private keys redacted.
//!
//! - [`descriptor_pool`]: Envoy's protobuf schema, compiled at build time from
//!   the `.proto` files of the envoy-types this crate depends on (see
//!   `build.rs`) and embedded, so nothing is read from disk at run time.
//! - [`to_canonical_json`] and [`any_to_json`]: one message (typed, or as the
//!   bytes of a protobuf `Any`) as canonical proto3 JSON.
//! - [`redact_private_keys`]: replaces private key material with
//!   [`REDACTED`].
//! - [`render`]: a translator [`Output`] as the YAML of the golden snapshots
//!   (`testdata/translator/<case>.snap`); [`render_statuses`] and
//!   [`render_gateway`] are its two parts.

use gatewright_translator::{GatewayResources, Output};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// What replaces private key material in rendered output.
pub const REDACTED: &str = "[redacted]";

/// Messages the descriptor pool always holds: the build fails unless each
/// compiled.
pub const REQUIRED_MESSAGES: &[&str] = include!("required_messages.rs");

/// The encoded `FileDescriptorSet` written by `build.rs`.
static DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptor_set.bin"));

/// A JSON array of the `.proto` files `build.rs` left out, with the error.
static SKIPPED_JSON: &str =
    include_str!(concat!(env!("OUT_DIR"), "/envoy_descriptor_skipped.json"));

/// Why a message could not be rendered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// `full_name` names no message in [`descriptor_pool`].
    #[error("message {full_name} is not in the Envoy descriptor pool")]
    UnknownMessage {
        /// The protobuf full name asked for.
        full_name: String,
    },
    /// A type URL without the `/` that precedes the message name.
    #[error("type URL {type_url:?} has no '/' before a message name")]
    MalformedTypeUrl {
        /// The type URL given.
        type_url: String,
    },
    /// The bytes are not a valid encoding of the message.
    #[error("cannot decode a {full_name}: {error}")]
    Decode {
        /// The protobuf full name of the message.
        full_name: String,
        /// What the decoder reported.
        error: prost::DecodeError,
    },
    /// The message has no JSON form: the bytes of an `Any` (the one given to
    /// [`any_to_json`], or one nested) do not decode as its type, or name a
    /// type outside [`descriptor_pool`].
    #[error("cannot write a {full_name} as JSON: {error}{note}", note = skipped_note())]
    Json {
        /// The protobuf full name of the message.
        full_name: String,
        /// What the serialiser reported.
        error: serde_json::Error,
    },
}

/// A hint naming how many `.proto` files the pool lacks, if any.
fn skipped_note() -> String {
    match skipped_proto_files().len() {
        0 => String::new(),
        n => format!(
            " ({n} .proto files were left out of the descriptor pool; see \
             gatewright_render::skipped_proto_files)"
        ),
    }
}

// ---------------------------------------------------------------------------
// Descriptor pool and canonical JSON
// ---------------------------------------------------------------------------

/// Every protobuf package envoy-types generates Rust types for (so any `Any`
/// the translator can build resolves), with their imports. Decoded from the
/// embedded descriptor set on first use.
pub fn descriptor_pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(DESCRIPTOR_SET)
            .expect("the descriptor set written by build.rs decodes")
    })
}

/// The `.proto` files (each with its compile error) that `build.rs` left out
/// of [`descriptor_pool`]; none of them defines a [`REQUIRED_MESSAGES`] entry.
pub fn skipped_proto_files() -> &'static [String] {
    static SKIPPED: OnceLock<Vec<String>> = OnceLock::new();
    SKIPPED.get_or_init(|| {
        serde_json::from_str(SKIPPED_JSON).expect("the skipped list written by build.rs parses")
    })
}

/// `message` in Envoy's canonical proto3 JSON form. `full_name` is its
/// protobuf name (e.g. `envoy.config.listener.v3.Listener`).
pub fn to_canonical_json<M: Message>(message: &M, full_name: &str) -> Result<Value, RenderError> {
    let descriptor = descriptor_pool()
        .get_message_by_name(full_name)
        .ok_or_else(|| RenderError::UnknownMessage {
            full_name: full_name.to_owned(),
        })?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice()).map_err(
        |error| RenderError::Decode {
            full_name: full_name.to_owned(),
            error,
        },
    )?;
    dynamic_to_json(&dynamic, full_name)
}

/// The protobuf `Any` made of `type_url` and `value` (the encoded message) in
/// canonical proto3 JSON: the message's fields plus `"@type": type_url` (or
/// `"@type"` and `"value"` for a well-known type such as `Duration`).
pub fn any_to_json(type_url: &str, value: &[u8]) -> Result<Value, RenderError> {
    const ANY: &str = "google.protobuf.Any";
    let Some((_, full_name)) = type_url.rsplit_once('/') else {
        return Err(RenderError::MalformedTypeUrl {
            type_url: type_url.to_owned(),
        });
    };
    let pool = descriptor_pool();
    if pool.get_message_by_name(full_name).is_none() {
        return Err(RenderError::UnknownMessage {
            full_name: full_name.to_owned(),
        });
    }
    let Some(any_descriptor) = pool.get_message_by_name(ANY) else {
        return Err(RenderError::UnknownMessage {
            full_name: ANY.to_owned(),
        });
    };
    // Serialising the Any decodes `value` (bad bytes are a `Json` error).
    let mut any = DynamicMessage::new(any_descriptor);
    any.set_field_by_name(
        "type_url",
        prost_reflect::Value::String(type_url.to_owned()),
    );
    any.set_field_by_name(
        "value",
        prost_reflect::Value::Bytes(prost::bytes::Bytes::copy_from_slice(value)),
    );
    dynamic_to_json(&any, full_name)
}

fn dynamic_to_json(message: &DynamicMessage, full_name: &str) -> Result<Value, RenderError> {
    serde_json::to_value(message).map_err(|error| RenderError::Json {
        full_name: full_name.to_owned(),
        error,
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

/// The golden form of an [`Output`]: YAML with `statuses` (see
/// [`render_statuses`]) then `gateways` (keyed `namespace/name`, each as
/// [`render_gateway`]), private keys redacted.
///
/// # Panics
///
/// If a resource has no JSON form ([`try_render`] says why), which means the
/// translator emitted an `Any` the descriptor pool cannot resolve: a bug.
pub fn render(output: &Output) -> String {
    try_render(output).unwrap_or_else(|e| panic!("cannot render the translator output: {e}"))
}

/// [`render`], failing instead of panicking.
pub fn try_render(output: &Output) -> Result<String, RenderError> {
    let gateways = output
        .gateways
        .iter()
        .map(|(key, resources)| Ok((key.to_string(), try_render_gateway(resources)?)))
        .collect::<Result<serde_json::Map<_, _>, RenderError>>()?;
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
    Ok(out)
}

/// The statuses of an [`Output`] as JSON: one map per object kind
/// (`gateway_classes`, `gateways`, `listener_sets`, `http_routes`,
/// `grpc_routes`, `tls_routes`, `tcp_routes`, `udp_routes`,
/// `backend_tls_policies`; empty ones left out),
/// each keyed by the object's `namespace/name` (or name). Not redacted.
pub fn render_statuses(output: &Output) -> Value {
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
                // Status types hold only strings, numbers and string-keyed
                // maps, which always have a JSON form.
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
    section(&mut statuses, "tcp_routes", &s.tcp_routes);
    section(&mut statuses, "udp_routes", &s.udp_routes);
    section(
        &mut statuses,
        "backend_tls_policies",
        &s.backend_tls_policies,
    );
    Value::Object(statuses)
}

/// One Gateway's Envoy resources as JSON: `listeners`, `routes`, `clusters`,
/// `endpoints` and `secrets`, each a list of canonical proto3 JSON messages.
/// Not redacted.
///
/// # Panics
///
/// As [`render`]; [`try_render_gateway`] fails instead.
pub fn render_gateway(resources: &GatewayResources) -> Value {
    try_render_gateway(resources).unwrap_or_else(|e| panic!("cannot render a Gateway: {e}"))
}

/// [`render_gateway`], failing instead of panicking.
pub fn try_render_gateway(resources: &GatewayResources) -> Result<Value, RenderError> {
    fn list<M: Message>(items: &[M], full_name: &str) -> Result<Value, RenderError> {
        items
            .iter()
            .map(|item| to_canonical_json(item, full_name))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array)
    }
    Ok(serde_json::json!({
        "listeners": list(&resources.listeners, "envoy.config.listener.v3.Listener")?,
        "routes": list(&resources.routes, "envoy.config.route.v3.RouteConfiguration")?,
        "clusters": list(&resources.clusters, "envoy.config.cluster.v3.Cluster")?,
        "endpoints": list(&resources.endpoints, "envoy.config.endpoint.v3.ClusterLoadAssignment")?,
        "secrets": list(&resources.secrets, "envoy.extensions.transport_sockets.tls.v3.Secret")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::google::protobuf::Duration;

    const CLUSTER_TYPE_URL: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

    #[test]
    fn embedded_pool_holds_the_required_messages() {
        let pool = descriptor_pool();
        let missing: Vec<&str> = REQUIRED_MESSAGES
            .iter()
            .copied()
            .filter(|name| pool.get_message_by_name(name).is_none())
            .collect();
        assert!(missing.is_empty(), "missing from the pool: {missing:?}");
        assert!(pool.get_message_by_name("google.protobuf.Any").is_some());
    }

    #[test]
    fn any_to_json_renders_a_cluster_with_its_type() {
        let cluster = Cluster {
            name: "default/backend:8080".to_owned(),
            connect_timeout: Some(Duration {
                seconds: 5,
                nanos: 0,
            }),
            ..Default::default()
        };
        let json = any_to_json(CLUSTER_TYPE_URL, &cluster.encode_to_vec()).expect("renders");
        assert_eq!(
            json,
            serde_json::json!({
                "@type": CLUSTER_TYPE_URL,
                "name": "default/backend:8080",
                "connectTimeout": "5s",
            })
        );
        // The same as the typed message, plus `@type`.
        let mut typed =
            to_canonical_json(&cluster, "envoy.config.cluster.v3.Cluster").expect("renders");
        typed["@type"] = Value::String(CLUSTER_TYPE_URL.to_owned());
        assert_eq!(json, typed);
    }

    #[test]
    fn any_to_json_renders_a_well_known_type_under_value() {
        let duration = Duration {
            seconds: 1,
            nanos: 500_000_000,
        };
        let type_url = "type.googleapis.com/google.protobuf.Duration";
        let json = any_to_json(type_url, &duration.encode_to_vec()).expect("renders");
        assert_eq!(
            json,
            serde_json::json!({ "@type": type_url, "value": "1.500s" })
        );
    }

    #[test]
    fn any_to_json_reports_what_it_cannot_render() {
        let error = any_to_json("envoy.config.cluster.v3.Cluster", &[]).unwrap_err();
        assert!(
            matches!(error, RenderError::MalformedTypeUrl { .. }),
            "{error}"
        );
        let error = any_to_json("type.googleapis.com/no.such.Message", &[]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "message no.such.Message is not in the Envoy descriptor pool"
        );
        // Field 1 (name, a string) with a length running past the end.
        let error = any_to_json(CLUSTER_TYPE_URL, &[0x0a, 0x05, b'x']).unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("cannot write a envoy.config.cluster.v3.Cluster as JSON: ")
                && message.contains("decod"),
            "{message}"
        );
    }

    #[test]
    fn to_canonical_json_rejects_an_unknown_message_name() {
        let error = to_canonical_json(&Cluster::default(), "no.such.Message").unwrap_err();
        assert!(
            matches!(error, RenderError::UnknownMessage { .. }),
            "{error}"
        );
    }

    #[test]
    fn redacts_inline_private_keys_only() {
        let mut value = serde_json::json!({
            "tlsCertificate": {
                "certificateChain": { "inlineBytes": "Y2VydA==" },
                "privateKey": { "inlineBytes": "a2V5" },
            },
            "sessionTicketKeys": { "keys": [{ "inlineString": "t" }, { "filename": "/k" }] },
        });
        redact_private_keys(&mut value);
        assert_eq!(
            value,
            serde_json::json!({
                "tlsCertificate": {
                    "certificateChain": { "inlineBytes": "Y2VydA==" },
                    "privateKey": { "inlineBytes": REDACTED },
                },
                "sessionTicketKeys": { "keys": [{ "inlineString": REDACTED }, { "filename": "/k" }] },
            })
        );
    }
}
