//! Pure builders of the Kubernetes objects that run one Gateway's Envoy
//! fleet: a ServiceAccount, a ConfigMap with the bootstrap, a Deployment
//! and a Service. No IO; the same input always gives the same objects.

use super::bootstrap::{BootstrapOptions, XdsEndpoint, XdsTls, bootstrap_json, xds_sds_files};
use super::params::{EnvoyParameters, ProxyParametersSpec, ServiceType};
use super::{KubeInfraConfig, ListenerPort};
use anyhow::Context as _;
use gatewright_translator::ObjectKey;
use gatewright_translator::api::gateways::Gateway;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

/// The prefix of every object name: it keeps names recognisable and makes
/// them start with a letter, as Service names (DNS-1035 labels) must.
const NAME_PREFIX: &str = "gatewright-";
/// Service names are DNS labels; the other objects share the Service's name.
const MAX_NAME: usize = 63;
/// Label values are at most 63 characters.
const MAX_LABEL_VALUE: usize = 63;
/// Hex digits of the hash appended to shortened names (40 bits).
const HASH_LEN: usize = 10;

/// `app.kubernetes.io/managed-by` on every object Gatewright provisions.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "gatewright";
/// The (possibly shortened) name of the Gateway an object belongs to.
pub const GATEWAY_NAME_LABEL: &str = "gatewright.dev/gateway-name";
/// The label Gateway API (GEP-1762) asks implementations to put on every
/// object they provision for a Gateway: the Gateway's name.
pub const GATEWAY_API_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// The namespace of the Gateway an object belongs to.
pub const GATEWAY_NAMESPACE_LABEL: &str = "gatewright.dev/gateway-namespace";
/// The namespace of the controller that provisioned the object, so that two
/// Gatewright installations in one cluster never delete each other's
/// objects.
pub const CONTROLLER_LABEL: &str = "gatewright.dev/controller-namespace";
/// Pod template annotation: a hash of the bootstrap ConfigMap's data, so
/// that a changed bootstrap rolls the pods (Envoy reads it only at start).
pub const BOOTSTRAP_HASH_ANNOTATION: &str = "gatewright.dev/bootstrap-hash";
/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "gatewright";

/// Where the bootstrap ConfigMap is mounted.
pub const BOOTSTRAP_DIR: &str = "/etc/gatewright/bootstrap";
/// The bootstrap's key in the ConfigMap.
pub const BOOTSTRAP_KEY: &str = "envoy.json";
/// The ConfigMap key of the SDS file that gives Envoy its xDS client
/// certificate (from [`XDS_TLS_DIR`], watched for renewals).
pub const XDS_CLIENT_SDS_KEY: &str = "xds-client-sds.json";
/// The ConfigMap key of the SDS file that gives Envoy the xDS server's CA.
pub const XDS_CA_SDS_KEY: &str = "xds-ca-sds.json";
/// Where the xDS client certificate Secret is mounted.
pub const XDS_TLS_DIR: &str = "/etc/gatewright/xds";

/// Envoy's preferred admin port (on 127.0.0.1 only).
const ADMIN_PORT: u16 = 19000;
/// Envoy's preferred readiness port.
const READY_PORT: u16 = 19001;
/// How long Envoy drains listeners (on shutdown and on listener changes).
const DRAIN_SECONDS: u32 = 15;
/// Time for Envoy to exit after the drain, before the kubelet kills it.
const EXIT_GRACE_SECONDS: u32 = 30;
/// The unprivileged uid/gid Envoy runs as.
const ENVOY_UID: i64 = 65532;

/// The objects for one Gateway, ready for server-side apply.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyObjects {
    /// The pods' identity (no API token is mounted: Envoy needs none).
    pub service_account: ServiceAccount,
    /// The Envoy bootstrap.
    pub config_map: ConfigMap,
    /// The Envoy pods.
    pub deployment: Deployment,
    /// The Gateway's listeners, exposed.
    pub service: Service,
}

/// The name of every object provisioned for the Gateway `gateway_name`:
/// `gatewright-<name>` when that is a DNS label of at most 63 characters,
/// otherwise a shortened, sanitised form with a hash of the full name
/// appended. Gateways in one namespace have distinct names, so they get
/// distinct objects (a hash collision, or a Gateway deliberately named like
/// another's shortened form, is caught at apply time: see `reconcile`).
pub fn object_name(gateway_name: &str) -> String {
    let plain = format!("{NAME_PREFIX}{gateway_name}");
    if plain.len() <= MAX_NAME && is_dns_label(&plain) {
        return plain;
    }
    let keep = MAX_NAME - NAME_PREFIX.len() - 1 - HASH_LEN;
    let stem: String = gateway_name
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(keep)
        .collect();
    let stem = stem.trim_end_matches('-');
    let hash = short_hash(gateway_name.as_bytes());
    if stem.is_empty() {
        format!("{NAME_PREFIX}{hash}")
    } else {
        format!("{NAME_PREFIX}{stem}-{hash}")
    }
}

/// The Secret (in the Gateway's namespace) holding the xDS client
/// certificate of a Gateway's Envoys, with keys `tls.crt`, `tls.key` and
/// `ca.crt`; `crate::pki` issues it and owns the naming rule.
pub fn client_secret_name(gateway_name: &str) -> String {
    crate::pki::client_secret_name(gateway_name)
}

/// A label value naming `value`: itself if it fits in 63 characters,
/// otherwise a shortened form with a hash of the whole.
pub fn label_value(value: &str) -> String {
    if value.len() <= MAX_LABEL_VALUE {
        return value.to_owned();
    }
    let keep = MAX_LABEL_VALUE - 1 - HASH_LEN;
    let stem: String = value.chars().take(keep).collect();
    let stem = stem.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{stem}-{}", short_hash(value.as_bytes()))
}

fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// FNV-1a, 64 bits: stable across Rust versions and platforms (unlike
/// `DefaultHasher`), which names and annotations must be.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn short_hash(bytes: &[u8]) -> String {
    let full = format!("{:016x}", fnv1a(bytes));
    full[..HASH_LEN].to_owned()
}

/// The Service ports of a Gateway: one per distinct listener port and L4
/// protocol (UDP listeners are UDP, everything else TCP), sorted, named
/// `tcp-<port>` / `udp-<port>` (at most 9 characters).
fn service_ports(ports: &[ListenerPort]) -> Vec<(u16, &'static str)> {
    let set: BTreeSet<(u16, &'static str)> = ports
        .iter()
        .filter(|p| p.port != 0)
        .map(|p| {
            let l4 = if p.protocol.eq_ignore_ascii_case("UDP") {
                "UDP"
            } else {
                "TCP"
            };
            (p.port, l4)
        })
        .collect();
    set.into_iter().collect()
}

/// The lowest port from `preferred` up that no listener and no port in
/// `also_taken` uses, so Envoy's own admin and readiness sockets never
/// clash with a Gateway listener.
fn free_port(preferred: u16, taken: &BTreeSet<u16>, also_taken: &[u16]) -> u16 {
    let mut port = preferred;
    while taken.contains(&port) || also_taken.contains(&port) {
        // Wrap into the unprivileged range rather than overflow.
        port = if port == u16::MAX { 1024 } else { port + 1 };
    }
    port
}

/// Envoy's admin and readiness ports for these listener ports.
fn envoy_ports(ports: &[ListenerPort]) -> (u16, u16) {
    let taken: BTreeSet<u16> = ports.iter().map(|p| p.port).collect();
    let admin = free_port(ADMIN_PORT, &taken, &[]);
    let ready = free_port(READY_PORT, &taken, &[admin]);
    (admin, ready)
}

/// A Gateway's Envoy bootstrap and the SDS files it names.
#[derive(Clone, Debug, PartialEq)]
pub struct KubeBootstrap {
    /// The bootstrap ([`BOOTSTRAP_KEY`]).
    pub bootstrap: serde_json::Value,
    /// The SDS documents, by ConfigMap key ([`XDS_CLIENT_SDS_KEY`],
    /// [`XDS_CA_SDS_KEY`]); the bootstrap expects them in `bootstrap_dir`.
    pub sds: BTreeMap<String, serde_json::Value>,
}

/// The Envoy bootstrap for a Gateway's pods, its xDS TLS files under
/// `tls_dir` (the Secret's mount point) and its SDS files under
/// `bootstrap_dir` (the ConfigMap's); tests point them elsewhere.
pub fn kube_bootstrap(
    key: &ObjectKey,
    config: &KubeInfraConfig,
    params: &ProxyParametersSpec,
    ports: &[ListenerPort],
    tls_dir: &str,
    bootstrap_dir: &str,
) -> KubeBootstrap {
    let (admin, ready) = envoy_ports(ports);
    let host = format!("{}.{}.svc", config.xds_service, config.controller_namespace);
    let tls = XdsTls {
        // The Secret's keys, as `crate::pki` writes them.
        cert_file: format!("{tls_dir}/{}", crate::pki::TLS_CERT_KEY),
        key_file: format!("{tls_dir}/{}", crate::pki::TLS_KEY_KEY),
        ca_file: format!("{tls_dir}/{}", crate::pki::CA_CERT_KEY),
        tls_dir: tls_dir.to_owned(),
        client_sds_file: format!("{bootstrap_dir}/{XDS_CLIENT_SDS_KEY}"),
        ca_sds_file: format!("{bootstrap_dir}/{XDS_CA_SDS_KEY}"),
        sds_dir: bootstrap_dir.to_owned(),
        server_san: host.clone(),
    };
    // Their paths are `client_sds_file` and `ca_sds_file` above: the keys.
    let [(_, client_sds), (_, ca_sds)] = xds_sds_files(&tls);
    let bootstrap = bootstrap_json(
        key,
        &BootstrapOptions {
            admin_port: admin,
            readiness_port: Some(ready),
            xds: XdsEndpoint::Dns {
                host,
                port: config.xds_port,
                tls,
            },
            // Another replica takes over when one goes; provisioned
            // Envoys keep Envoy's default reconnect back-off.
            fast_reconnect: false,
            max_downstream_connections: EnvoyParameters::max_downstream_connections(Some(params)),
            max_heap_bytes: memory_limit(params),
        },
    );
    KubeBootstrap {
        bootstrap,
        sds: BTreeMap::from([
            (XDS_CLIENT_SDS_KEY.to_owned(), client_sds),
            (XDS_CA_SDS_KEY.to_owned(), ca_sds),
        ]),
    }
}

/// Envoy's `--concurrency`: the parameter, else the CPU limit rounded up,
/// else 2 (Envoy's own default is the node's core count, far too many for
/// a pod sharing a large node).
fn concurrency(params: &ProxyParametersSpec) -> u32 {
    if let Some(n) = params.envoy.as_ref().and_then(|e| e.concurrency) {
        return n.max(1);
    }
    let limit = params
        .deployment
        .as_ref()
        .and_then(|d| d.resources.as_ref())
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("cpu"))
        .and_then(|q| cpu_cores(&q.0));
    limit.unwrap_or(2)
}

/// Whole cores (rounded up, at least 1) of a CPU quantity such as `2`,
/// `1.5` or `500m`.
fn cpu_cores(quantity: &str) -> Option<u32> {
    let quantity = quantity.trim();
    let cores = if let Some(milli) = quantity.strip_suffix('m') {
        milli.parse::<f64>().ok()? / 1000.0
    } else {
        quantity.parse::<f64>().ok()?
    };
    if !cores.is_finite() || cores <= 0.0 {
        return None;
    }
    // At most 256 workers, as the CRD allows; the cast cannot truncate.
    Some(cores.ceil().clamp(1.0, 256.0) as u32)
}

/// The Envoy container's memory limit in bytes, if its parameters set one.
fn memory_limit(params: &ProxyParametersSpec) -> Option<u64> {
    let quantity = params
        .deployment
        .as_ref()
        .and_then(|d| d.resources.as_ref())
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))?;
    memory_bytes(&quantity.0)
}

/// A Kubernetes memory quantity (`512Mi`, `1G`, `1e9`, `1.5Gi`) in bytes;
/// None for what is not one (the API server would have refused it).
fn memory_bytes(quantity: &str) -> Option<u64> {
    let quantity = quantity.trim();
    let (number, factor) = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("E", 1_000_000_000_000_000_000),
    ]
    .into_iter()
    .find_map(|(suffix, factor)| Some((quantity.strip_suffix(suffix)?, factor)))
    .unwrap_or((quantity, 1));
    let bytes = number.parse::<f64>().ok()? * factor as f64;
    // Below a mebibyte is no Envoy's memory; the cast saturates.
    (bytes.is_finite() && bytes >= f64::from(1u32 << 20)).then_some(bytes as u64)
}

/// `base` with `top`'s entries added, `top` winning.
fn layered(layers: &[Option<&BTreeMap<String, String>>]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for layer in layers.iter().flatten() {
        out.extend(layer.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    out
}

/// Builds the objects of one Gateway. Fails only if the Gateway lacks a
/// namespace or uid (it was not read from an API server).
pub fn build(
    gateway: &Gateway,
    params: &ProxyParametersSpec,
    ports: &[ListenerPort],
    config: &KubeInfraConfig,
) -> anyhow::Result<ProxyObjects> {
    let gw_name = gateway
        .metadata
        .name
        .as_deref()
        .context("the Gateway has no name")?;
    let namespace = gateway
        .metadata
        .namespace
        .as_deref()
        .with_context(|| format!("Gateway {gw_name} has no namespace"))?;
    let uid = gateway
        .metadata
        .uid
        .as_deref()
        .with_context(|| format!("Gateway {namespace}/{gw_name} has no uid"))?;
    let key = ObjectKey::new(namespace, gw_name);
    let name = object_name(gw_name);

    let owner = OwnerReference {
        api_version: "gateway.networking.k8s.io/v1".into(),
        kind: "Gateway".into(),
        name: gw_name.into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let ours = BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (GATEWAY_NAME_LABEL.to_owned(), label_value(gw_name)),
        (GATEWAY_API_NAME_LABEL.to_owned(), label_value(gw_name)),
        (GATEWAY_NAMESPACE_LABEL.to_owned(), namespace.to_owned()),
        (
            CONTROLLER_LABEL.to_owned(),
            label_value(&config.controller_namespace),
        ),
    ]);
    // The Deployment's selector is immutable, so it holds only labels that
    // never change for a Gateway.
    let selector = BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (GATEWAY_NAME_LABEL.to_owned(), label_value(gw_name)),
    ]);
    let infra = gateway.spec.infrastructure.as_ref();
    let infra_labels = infra.and_then(|i| i.labels.as_ref());
    let infra_annotations = infra.and_then(|i| i.annotations.as_ref());
    // Our labels come last so that a Gateway's labels cannot break the
    // selectors or the clean-up that rely on them.
    let labels = layered(&[infra_labels, Some(&ours)]);
    let annotations = layered(&[infra_annotations]);
    let meta =
        |labels: BTreeMap<String, String>, annotations: BTreeMap<String, String>| ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: Some(vec![owner.clone()]),
            ..ObjectMeta::default()
        };

    let service_account = ServiceAccount {
        metadata: meta(labels.clone(), annotations.clone()),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    };

    let KubeBootstrap { bootstrap, sds } =
        kube_bootstrap(&key, config, params, ports, XDS_TLS_DIR, BOOTSTRAP_DIR);
    let mut data = BTreeMap::from([(
        BOOTSTRAP_KEY.to_owned(),
        serde_json::to_string_pretty(&bootstrap).context("serialising the Envoy bootstrap")?,
    )]);
    for (file, document) in sds {
        let text = serde_json::to_string_pretty(&document)
            .with_context(|| format!("serialising the SDS file {file}"))?;
        data.insert(file, text);
    }
    // Every key, in key order, each followed by a NUL (which JSON text
    // never contains), so that no two ConfigMaps hash the same input.
    let hash_input: Vec<u8> = data
        .iter()
        .flat_map(|(k, v)| [k.as_bytes(), b"\0", v.as_bytes(), b"\0"])
        .flatten()
        .copied()
        .collect();
    let config_map = ConfigMap {
        metadata: meta(labels.clone(), annotations.clone()),
        data: Some(data),
        ..ConfigMap::default()
    };

    let deployment = deployment(DeploymentInput {
        meta: meta(labels.clone(), annotations.clone()),
        name: &name,
        gateway_name: gw_name,
        params,
        ports,
        config,
        selector: &selector,
        pod_labels: layered(&[
            infra_labels,
            params
                .deployment
                .as_ref()
                .and_then(|d| d.pod_labels.as_ref()),
            Some(&ours),
        ]),
        pod_annotations: layered(&[
            infra_annotations,
            params
                .deployment
                .as_ref()
                .and_then(|d| d.pod_annotations.as_ref()),
            Some(&BTreeMap::from([(
                BOOTSTRAP_HASH_ANNOTATION.to_owned(),
                short_hash(&hash_input),
            )])),
        ]),
    })?;

    let service_params = params.service.clone().unwrap_or_default();
    let service_meta = meta(
        layered(&[infra_labels, service_params.labels.as_ref(), Some(&ours)]),
        layered(&[infra_annotations, service_params.annotations.as_ref()]),
    );
    let service_type = service_params.type_.unwrap_or_default();
    let mut spec = json!({
        "type": service_type.as_str(),
        "selector": selector,
        "ports": service_ports(ports).iter().map(|(port, l4)| json!({
            "name": format!("{}-{port}", l4.to_ascii_lowercase()),
            "protocol": l4,
            "port": port,
            "targetPort": port,
        })).collect::<Vec<_>>(),
    });
    // The API server rejects these fields on Service types they do not
    // apply to, so they are only set where they mean something.
    if service_type == ServiceType::LoadBalancer
        && let Some(class) = &service_params.load_balancer_class
    {
        spec["loadBalancerClass"] = json!(class);
    }
    // A Gateway's requested IP address is asked of the load balancer; if it
    // cannot give it, the Gateway says AddressNotUsable (infra::merge).
    if service_type == ServiceType::LoadBalancer
        && let Some(ip) = requested_ip(gateway)
    {
        spec["loadBalancerIP"] = json!(ip);
    }
    if service_type != ServiceType::ClusterIp
        && let Some(policy) = service_params.external_traffic_policy
    {
        spec["externalTrafficPolicy"] = json!(policy.as_str());
    }
    let service = Service {
        metadata: service_meta,
        spec: Some(serde_json::from_value(spec).context("building the Service spec")?),
        ..Service::default()
    };

    Ok(ProxyObjects {
        service_account,
        config_map,
        deployment,
        service,
    })
}

/// The first non-empty `IPAddress` of a Gateway's `spec.addresses`: a
/// Service can ask for one load-balancer IP only; any others are reported
/// as not usable.
fn requested_ip(gateway: &Gateway) -> Option<&str> {
    gateway
        .spec
        .addresses
        .iter()
        .flatten()
        .filter(|a| a.r#type.as_deref().is_none_or(|t| t == "IPAddress"))
        .find_map(|a| a.value.as_deref().filter(|v| !v.is_empty()))
}

struct DeploymentInput<'a> {
    meta: ObjectMeta,
    name: &'a str,
    gateway_name: &'a str,
    params: &'a ProxyParametersSpec,
    ports: &'a [ListenerPort],
    config: &'a KubeInfraConfig,
    selector: &'a BTreeMap<String, String>,
    pod_labels: BTreeMap<String, String>,
    pod_annotations: BTreeMap<String, String>,
}

fn deployment(input: DeploymentInput<'_>) -> anyhow::Result<Deployment> {
    let params = input.params;
    let deploy = params.deployment.clone().unwrap_or_default();
    let log_level = params
        .envoy
        .as_ref()
        .and_then(|e| e.log_level)
        .unwrap_or_default();
    let image = deploy
        .image
        .clone()
        .unwrap_or_else(|| input.config.envoy_image.clone());
    let (admin, ready) = envoy_ports(input.ports);
    let resources = match &deploy.resources {
        Some(r) => serde_json::to_value(r).context("serialising the container resources")?,
        None => json!({ "requests": { "cpu": "100m", "memory": "128Mi" } }),
    };
    let mut container_ports: Vec<serde_json::Value> = service_ports(input.ports)
        .iter()
        .map(|(port, l4)| {
            json!({ "name": format!("{}-{port}", l4.to_ascii_lowercase()), "containerPort": port, "protocol": l4 })
        })
        .collect();
    container_ports.push(json!({ "name": "ready", "containerPort": ready, "protocol": "TCP" }));
    // A graceful drain before the kubelet's SIGTERM (on which Envoy exits at
    // once): existing HTTP/1 connections get `Connection: close`, HTTP/2
    // ones GOAWAY, while the pod leaves the Service's endpoints. The Envoy
    // image has neither curl nor wget, so bash's /dev/tcp makes the POST.
    let pre_stop = format!(
        "{{ exec 3<>/dev/tcp/127.0.0.1/{admin} && \
         printf 'POST /drain_listeners?graceful HTTP/1.1\\r\\nHost: admin\\r\\nContent-Length: 0\\r\\nConnection: close\\r\\n\\r\\n' >&3 && \
         read -t 5 -u 3 _; }} 2>/dev/null; sleep {DRAIN_SECONDS}"
    );
    let spec = json!({
        "replicas": deploy.replicas.unwrap_or(1),
        "selector": { "matchLabels": input.selector },
        "template": {
            "metadata": {
                "labels": input.pod_labels,
                "annotations": input.pod_annotations,
            },
            "spec": {
                "serviceAccountName": input.name,
                "automountServiceAccountToken": false,
                "terminationGracePeriodSeconds": DRAIN_SECONDS + EXIT_GRACE_SECONDS,
                "securityContext": {
                    "runAsNonRoot": true,
                    "runAsUser": ENVOY_UID,
                    "runAsGroup": ENVOY_UID,
                    "fsGroup": ENVOY_UID,
                    "seccompProfile": { "type": "RuntimeDefault" },
                    // Lets the non-root Envoy bind the Gateway's ports below
                    // 1024 without NET_BIND_SERVICE. A "safe" sysctl, allowed
                    // by default since Kubernetes 1.22.
                    "sysctls": [{ "name": "net.ipv4.ip_unprivileged_port_start", "value": "0" }],
                },
                "nodeSelector": deploy.node_selector,
                "tolerations": deploy.tolerations,
                "containers": [{
                    "name": "envoy",
                    "image": image,
                    "command": ["envoy"],
                    "args": [
                        "--config-path", format!("{BOOTSTRAP_DIR}/{BOOTSTRAP_KEY}"),
                        "--log-level", log_level.as_str(),
                        "--concurrency", concurrency(params).to_string(),
                        "--drain-time-s", DRAIN_SECONDS.to_string(),
                        "--disable-hot-restart",
                    ],
                    "ports": container_ports,
                    "resources": resources,
                    "readinessProbe": {
                        "httpGet": { "path": "/ready", "port": ready },
                        "periodSeconds": 5,
                        "timeoutSeconds": 3,
                        "failureThreshold": 2,
                    },
                    "lifecycle": {
                        "preStop": { "exec": { "command": ["bash", "-c", pre_stop] } }
                    },
                    "securityContext": {
                        "allowPrivilegeEscalation": false,
                        "readOnlyRootFilesystem": true,
                        "capabilities": { "drop": ["ALL"] },
                    },
                    "volumeMounts": [
                        { "name": "bootstrap", "mountPath": BOOTSTRAP_DIR, "readOnly": true },
                        { "name": "xds-tls", "mountPath": XDS_TLS_DIR, "readOnly": true },
                    ],
                }],
                "volumes": [
                    { "name": "bootstrap", "configMap": { "name": input.name } },
                    { "name": "xds-tls", "secret": {
                        "secretName": client_secret_name(input.gateway_name),
                        // Readable by Envoy's group (fsGroup) only.
                        "defaultMode": 0o440,
                    } },
                ],
            }
        }
    });
    Ok(Deployment {
        metadata: input.meta,
        spec: Some(serde_json::from_value(spec).context("building the Deployment spec")?),
        ..Deployment::default()
    })
}

/// Whether an object was provisioned by the Gatewright installation whose
/// controller runs in `controller_namespace`.
pub fn is_ours(meta: &ObjectMeta, controller_namespace: &str) -> bool {
    let labels = meta.labels.as_ref();
    let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    label(MANAGED_BY_LABEL) == Some(MANAGED_BY)
        && label(CONTROLLER_LABEL) == Some(label_value(controller_namespace).as_str())
}
