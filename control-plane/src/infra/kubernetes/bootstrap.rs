//! Envoy bootstraps, shared by both infrastructures: the node identity
//! (which xDS group the Envoy belongs to), the admin interface and the
//! delta-ADS connection to Gatewright.
//!
//! In Kubernetes mode the xDS connection is mutual TLS, and Envoy takes its
//! client certificate and the server's CA through SDS from files
//! ([`xds_sds_files`]) rather than naming them in the bootstrap: a
//! `tls_certificates` entry is read once at start, so a certificate the
//! controller renews in the Secret would never reach a running Envoy, and
//! its next reconnect after the old one expired would fail. Each SDS
//! resource sets `watched_directory` to the Secret's mount point: the
//! kubelet updates a Secret volume by atomically swapping its `..data`
//! symlink, a move inside that directory, which makes Envoy re-read the
//! files (certificate and key together). (Without it Envoy watches the
//! files' parent directories, which here is the same directory; naming it
//! keeps the behaviour independent of where the keys sit in the volume.)
//! Likewise the SDS files themselves
//! are watched through their directory, the ConfigMap's mount point. New
//! TLS connections then use the new files; the open ADS stream keeps the
//! handshake it made.
//!
//! `crate::infra::host::bootstrap_json` builds the host-mode bootstrap by hand; a
//! unit test below checks that [`bootstrap_json`] with
//! [`XdsEndpoint::Static`] and an ephemeral admin port yields exactly the
//! same document, so host.rs can be switched over to this function without
//! any behaviour change.

use crate::xds::group_of;
use gatewright_translator::ObjectKey;
use serde_json::{Value, json};
use std::net::SocketAddr;

/// The name of the bootstrap cluster that reaches Gatewright's xDS server.
pub const XDS_CLUSTER: &str = "gatewright-xds";
/// The name of the bootstrap cluster that reaches Envoy's own admin
/// interface (only used by the readiness listener).
pub const ADMIN_CLUSTER: &str = "gatewright-admin";
/// The name of the static readiness listener.
pub const READY_LISTENER: &str = "gatewright-ready";
/// The SDS secret holding the xDS client certificate and key.
pub const XDS_CLIENT_CERT_SECRET: &str = "gatewright-xds-client-cert";
/// The SDS secret holding the CA the xDS server's certificate must chain to.
pub const XDS_SERVER_CA_SECRET: &str = "gatewright-xds-server-ca";
/// The type URL of an SDS secret resource.
const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Where an Envoy finds Gatewright's ADS server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XdsEndpoint {
    /// A fixed address, plaintext (host mode: Gatewright on loopback).
    Static(SocketAddr),
    /// A DNS name (a Kubernetes Service), resolved continuously, over
    /// mutual TLS.
    Dns {
        /// The host name, e.g. `gatewright.gatewright-system.svc`.
        host: String,
        /// The gRPC port.
        port: u16,
        /// The client certificate and the server's CA.
        tls: XdsTls,
    },
}

/// The files of an Envoy's xDS client TLS, the SDS files that name them,
/// and the name the server's certificate must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdsTls {
    /// PEM client certificate chain.
    pub cert_file: String,
    /// PEM client private key.
    pub key_file: String,
    /// PEM CA bundle the server certificate must chain to.
    pub ca_file: String,
    /// The directory Envoy watches for moves to re-read the three files:
    /// the Secret's mount point, where the kubelet swaps `..data`.
    pub tls_dir: String,
    /// The SDS file of the client certificate ([`xds_sds_files`]).
    pub client_sds_file: String,
    /// The SDS file of the server CA ([`xds_sds_files`]).
    pub ca_sds_file: String,
    /// The directory Envoy watches for moves to re-read the SDS files (the
    /// ConfigMap's mount point).
    pub sds_dir: String,
    /// The DNS SAN the server certificate must hold (also sent as SNI).
    pub server_san: String,
}

/// Where Envoy reads SDS secret `file` from, watching `tls.sds_dir`.
fn sds_file_source(file: &str, tls: &XdsTls) -> Value {
    json!({
        "path_config_source": { "path": file, "watched_directory": { "path": tls.sds_dir } },
        "resource_api_version": "V3"
    })
}

/// The SDS files the bootstrap of `tls` names, as `(path, document)`: the
/// client certificate at `tls.client_sds_file`, the CA at
/// `tls.ca_sds_file`. One resource per file, as Envoy's file-based SDS
/// wants. Both watch `tls.tls_dir`, so one `..data` swap in the Secret
/// renews them together (a hand-rotated CA comes with new certificates).
pub fn xds_sds_files(tls: &XdsTls) -> [(String, Value); 2] {
    let watched = json!({ "path": tls.tls_dir });
    [
        (
            tls.client_sds_file.clone(),
            json!({ "resources": [{
                "@type": SECRET_TYPE,
                "name": XDS_CLIENT_CERT_SECRET,
                "tls_certificate": {
                    "certificate_chain": { "filename": tls.cert_file },
                    "private_key": { "filename": tls.key_file },
                    "watched_directory": watched
                }
            }] }),
        ),
        (
            tls.ca_sds_file.clone(),
            json!({ "resources": [{
                "@type": SECRET_TYPE,
                "name": XDS_SERVER_CA_SECRET,
                "validation_context": {
                    "trusted_ca": { "filename": tls.ca_file },
                    "watched_directory": watched
                }
            }] }),
        ),
    ]
}

/// What varies between bootstraps besides the Gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapOptions {
    /// Envoy's admin port on 127.0.0.1 (0: any free port, which
    /// `--admin-address-path` then reports).
    pub admin_port: u16,
    /// If set, a static listener on `0.0.0.0:<port>` that answers
    /// `GET /ready` by asking the admin interface, and nothing else. This is
    /// how a kubelet probes readiness without the admin interface (which
    /// can drain, quit or reconfigure Envoy) being reachable off the pod.
    pub readiness_port: Option<u16>,
    /// The ADS server.
    pub xds: XdsEndpoint,
    /// Re-dial the ADS server every second at most while it is away, rather
    /// than Envoy's default back-off of up to 30 s: on the host, where a
    /// restarted Gatewright adopts the running Envoys and should reach them
    /// at once.
    pub fast_reconnect: bool,
    /// The most downstream connections this Envoy holds open
    /// ([`overload_manager`]).
    pub max_downstream_connections: u32,
    /// The memory Envoy may use, when known (a Kubernetes memory limit):
    /// the overload manager then watches the heap ([`overload_manager`]).
    pub max_heap_bytes: Option<u64>,
}

/// The name of the overload manager's connection-limit resource monitor.
pub const CONNECTION_LIMIT_MONITOR: &str =
    "envoy.resource_monitors.global_downstream_max_connections";

/// The bootstrap's `overload_manager`: at most `max_connections` downstream
/// connections across all listeners of the Envoy. Envoy closes a
/// connection beyond it right after accepting it. Without a limit, a flood
/// of (idle or slow) connections exhausts file descriptors and memory and
/// takes every Gateway listener down together. The admin interface and
/// the readiness listener are exempt (`ignore_global_conn_limit`), so a
/// full Envoy can still be probed, drained and stopped.
///
/// With `max_heap_bytes` (only where a memory limit is known: a host
/// process has none of its own) the heap is watched too: at 90 % of it
/// Envoy returns free memory to the system (`shrink_heap`), at 95 % it
/// answers new requests with 503 (`stop_accepting_requests`) instead of
/// growing into the kernel's OOM killer, which would drop every
/// connection at once. The margin is left for memory outside the heap.
pub fn overload_manager(max_connections: u32, max_heap_bytes: Option<u64>) -> Value {
    let mut monitors = vec![json!({
        "name": CONNECTION_LIMIT_MONITOR,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
            "max_active_downstream_connections": max_connections
        }
    })];
    let mut manager = serde_json::Map::new();
    if let Some(bytes) = max_heap_bytes {
        monitors.push(json!({
            "name": HEAP_MONITOR,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
                "max_heap_size_bytes": bytes
            }
        }));
        let action = |name: &str, threshold: f64| {
            json!({
                "name": name,
                "triggers": [{ "name": HEAP_MONITOR, "threshold": { "value": threshold } }]
            })
        };
        manager.insert("refresh_interval".into(), json!("0.25s"));
        manager.insert(
            "actions".into(),
            json!([
                action("envoy.overload_actions.shrink_heap", 0.90),
                action("envoy.overload_actions.stop_accepting_requests", 0.95),
            ]),
        );
    }
    manager.insert("resource_monitors".into(), Value::Array(monitors));
    Value::Object(manager)
}

/// The name of the overload manager's heap resource monitor.
pub const HEAP_MONITOR: &str = "envoy.resource_monitors.fixed_heap";

/// The Envoy bootstrap for a Gateway's Envoy: node identity and group
/// metadata, the admin interface on loopback, delta ADS to Gatewright, and
/// optionally the readiness listener.
pub fn bootstrap_json(key: &ObjectKey, options: &BootstrapOptions) -> Value {
    let group = group_of(key);
    let mut clusters = vec![xds_cluster(&options.xds)];
    let mut envoy_grpc = json!({ "cluster_name": XDS_CLUSTER });
    if options.fast_reconnect {
        envoy_grpc["retry_policy"] =
            json!({ "retry_back_off": { "base_interval": "0.25s", "max_interval": "1s" } });
    }
    let mut bootstrap = json!({
        "node": {
            "id": format!("gatewright/{group}"),
            "cluster": group,
            "metadata": { gatewright_xds::GROUP_METADATA_KEY: group },
        },
        "admin": {
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": options.admin_port } },
            "ignore_global_conn_limit": true
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{ "envoy_grpc": envoy_grpc }]
            },
            "cds_config": { "ads": {}, "resource_api_version": "V3" },
            "lds_config": { "ads": {}, "resource_api_version": "V3" }
        },
        "overload_manager": overload_manager(options.max_downstream_connections, options.max_heap_bytes),
    });
    let mut static_resources = serde_json::Map::new();
    if let Some(port) = options.readiness_port {
        clusters.push(static_cluster(
            ADMIN_CLUSTER,
            "127.0.0.1",
            options.admin_port,
            false,
        ));
        static_resources.insert("listeners".into(), json!([readiness_listener(port)]));
    }
    static_resources.insert("clusters".into(), Value::Array(clusters));
    bootstrap["static_resources"] = Value::Object(static_resources);
    bootstrap
}

/// A cluster with one fixed endpoint, plaintext, optionally HTTP/2.
fn static_cluster(name: &str, address: &str, port: u16, http2: bool) -> Value {
    let mut cluster = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "socket_address": {
                "address": address, "port_value": port
            } } } }] }]
        }
    });
    if http2 {
        cluster["typed_extension_protocol_options"] = http2_options();
    }
    cluster
}

fn http2_options() -> Value {
    json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": { "http2_protocol_options": {} }
        }
    })
}

fn xds_cluster(xds: &XdsEndpoint) -> Value {
    match xds {
        XdsEndpoint::Static(address) => {
            // Key order matches host.rs's hand-written bootstrap so that the
            // two serialise identically.
            json!({
                "name": XDS_CLUSTER,
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": http2_options(),
                "load_assignment": {
                    "cluster_name": XDS_CLUSTER,
                    "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "socket_address": {
                        "address": address.ip().to_string(), "port_value": address.port()
                    } } } }] }]
                }
            })
        }
        XdsEndpoint::Dns { host, port, tls } => json!({
            "name": XDS_CLUSTER,
            // STRICT_DNS re-resolves the Service name, so a changed
            // ClusterIP (Service re-created) is picked up without a restart.
            "type": "STRICT_DNS",
            "connect_timeout": "5s",
            "typed_extension_protocol_options": http2_options(),
            // The ADS stream is long-lived and mostly idle; keepalives find
            // a controller that vanished without closing the connection.
            "upstream_connection_options": {
                "tcp_keepalive": { "keepalive_time": 30, "keepalive_interval": 10, "keepalive_probes": 3 }
            },
            "load_assignment": {
                "cluster_name": XDS_CLUSTER,
                "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "socket_address": {
                    "address": host, "port_value": port
                } } } }] }]
            },
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "sni": tls.server_san,
                    "common_tls_context": {
                        "alpn_protocols": ["h2"],
                        // Through SDS from files, so renewals reach a running
                        // Envoy (see the module documentation).
                        "tls_certificate_sds_secret_configs": [{
                            "name": XDS_CLIENT_CERT_SECRET,
                            "sds_config": sds_file_source(&tls.client_sds_file, tls)
                        }],
                        // The SAN check is fixed; only the CA comes from SDS.
                        "combined_validation_context": {
                            "default_validation_context": {
                                "match_typed_subject_alt_names": [{
                                    "san_type": "DNS",
                                    "matcher": { "exact": tls.server_san }
                                }]
                            },
                            "validation_context_sds_secret_config": {
                                "name": XDS_SERVER_CA_SECRET,
                                "sds_config": sds_file_source(&tls.ca_sds_file, tls)
                            }
                        }
                    }
                }
            }
        }),
    }
}

/// A listener that forwards exactly `GET /ready` to the admin interface and
/// answers everything else with 404, so probing readiness exposes nothing
/// else of the admin API. Like every listener, it only starts accepting once
/// Envoy has finished initialising (first CDS/LDS answer or their timeout).
fn readiness_listener(port: u16) -> Value {
    json!({
        "name": READY_LISTENER,
        "address": { "socket_address": { "address": "0.0.0.0", "port_value": port } },
        // A kubelet probe is never refused for client load.
        "ignore_global_conn_limit": true,
        "filter_chains": [{ "filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "gatewright_ready",
                "route_config": {
                    "name": READY_LISTENER,
                    "virtual_hosts": [{
                        "name": "ready",
                        "domains": ["*"],
                        "routes": [
                            {
                                "match": {
                                    "path": "/ready",
                                    "headers": [{ "name": ":method", "string_match": { "exact": "GET" } }]
                                },
                                "route": { "cluster": ADMIN_CLUSTER, "timeout": "2s" }
                            },
                            {
                                "match": { "prefix": "/" },
                                "direct_response": { "status": 404 }
                            }
                        ]
                    }]
                },
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
                }]
            }
        }] }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_mode_bootstrap_is_identical_to_host_rs() {
        let key = ObjectKey::new("ns", "gw");
        let xds: SocketAddr = "127.0.0.1:18000".parse().expect("address");
        let ours = bootstrap_json(
            &key,
            &BootstrapOptions {
                admin_port: 0,
                readiness_port: None,
                xds: XdsEndpoint::Static(xds),
                fast_reconnect: true,
                max_downstream_connections: 7,
                max_heap_bytes: None,
            },
        );
        assert_eq!(ours, crate::infra::host::bootstrap_json(&key, xds, 7));
    }
}
