//! The `ProxyParameters` custom resource (`gatewright.dev/v1alpha1`): how
//! the Envoy fleet of a Gateway is provisioned.
//!
//! It is referenced by `GatewayClass.spec.parametersRef` (group
//! `gatewright.dev`, kind `ProxyParameters`, with a namespace) and/or by a
//! Gateway's `spec.infrastructure.parametersRef` (same namespace as the
//! Gateway). When both are set, the Gateway's object wins **field by
//! field**: every leaf field the Gateway's object sets replaces the class's
//! one, every field it leaves unset keeps the class's value. Maps and lists
//! (annotations, labels, nodeSelector, tolerations, resources) are leaves:
//! they replace the class's value as a whole, they are not merged key by key.

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The API group of Gatewright's own resources.
pub const GROUP: &str = "gatewright.dev";
/// The kind a `parametersRef` must name.
pub const KIND: &str = "ProxyParameters";

/// How the Envoy proxies of a Gateway are provisioned: the Service that
/// exposes them, their Deployment, and Envoy's own options. Every field is
/// optional; an empty object means the defaults.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "gatewright.dev",
    version = "v1alpha1",
    kind = "ProxyParameters",
    namespaced,
    plural = "proxyparameters",
    shortname = "proxyparams",
    category = "gatewright",
    doc = "How Gatewright provisions the Envoy proxies of a Gateway. Referenced by a GatewayClass's spec.parametersRef or a Gateway's spec.infrastructure.parametersRef; a Gateway's reference overrides its class's field by field."
)]
#[serde(rename_all = "camelCase")]
pub struct ProxyParametersSpec {
    /// The Service that exposes the Gateway's listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceParameters>,
    /// The Deployment that runs Envoy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<DeploymentParameters>,
    /// Envoy's own options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy: Option<EnvoyParameters>,
}

/// The Service in front of the Envoy pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceParameters {
    /// The Service type. Default: LoadBalancer.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<ServiceType>,
    /// Extra annotations on the Service (for example a cloud load
    /// balancer's options).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Extra labels on the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// `spec.loadBalancerClass` of the Service; only used with type
    /// LoadBalancer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer_class: Option<String>,
    /// `spec.externalTrafficPolicy` of the Service; only used with types
    /// LoadBalancer and NodePort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<ExternalTrafficPolicy>,
}

/// A Service type Gatewright can provision.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    /// An external load balancer (the default).
    #[default]
    LoadBalancer,
    /// A cluster-internal virtual IP only.
    #[serde(rename = "ClusterIP")]
    ClusterIp,
    /// A port on every node.
    NodePort,
}

impl ServiceType {
    /// The value of a Service's `spec.type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LoadBalancer => "LoadBalancer",
            Self::ClusterIp => "ClusterIP",
            Self::NodePort => "NodePort",
        }
    }
}

/// A Service's `spec.externalTrafficPolicy`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ExternalTrafficPolicy {
    /// Any node forwards to any Envoy pod (source IP is lost).
    Cluster,
    /// Only nodes with an Envoy pod take traffic (source IP is kept).
    Local,
}

impl ExternalTrafficPolicy {
    /// The value of a Service's `spec.externalTrafficPolicy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cluster => "Cluster",
            Self::Local => "Local",
        }
    }
}

/// The Deployment that runs Envoy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentParameters {
    /// How many Envoy pods. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// The Envoy container's resources. Default: requests of 100m CPU and
    /// 128Mi memory, no limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The pods' `nodeSelector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// The pods' tolerations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Extra annotations on the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_annotations: Option<BTreeMap<String, String>>,
    /// Extra labels on the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_labels: Option<BTreeMap<String, String>>,
    /// The Envoy image, instead of the controller's `--envoy-image`. It must
    /// be Envoy 1.40 and contain `bash` (used by the pre-stop drain hook).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// Envoy's own options.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvoyParameters {
    /// Envoy's `--log-level`. Default: info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<EnvoyLogLevel>,
    /// Envoy's `--concurrency` (worker threads). Default: the container's
    /// CPU limit rounded up, else 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub concurrency: Option<u32>,
    /// How many proxies in front of Envoy (load balancers, CDNs) append the
    /// address they saw to `X-Forwarded-For` and are trusted to: Envoy
    /// takes the client address from that many entries from the right of
    /// the header (`xff_num_trusted_hops`). Default: 0, the TCP peer is the
    /// client. Set it only to the number of proxies that really are in
    /// front, since a client can write anything into the header beyond
    /// them. At most 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 16))]
    pub xff_num_trusted_hops: Option<u32>,
    /// The most downstream connections one Envoy holds open across all its
    /// listeners (the overload manager's
    /// `envoy.resource_monitors.global_downstream_max_connections`); a
    /// connection beyond it is closed as soon as it is accepted. Default:
    /// 50000. At least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_downstream_connections: Option<u32>,
}

/// The most trusted `X-Forwarded-For` hops a ProxyParameters may ask for:
/// more than this is a mistake, and trusting hops that are not there lets
/// clients choose their own address.
pub const MAX_XFF_NUM_TRUSTED_HOPS: u32 = 16;
/// The per-Envoy downstream connection limit when ProxyParameters set none.
pub const DEFAULT_MAX_DOWNSTREAM_CONNECTIONS: u32 = 50_000;

impl EnvoyParameters {
    /// Refuses values the CRD schema forbids: file mode has no API server
    /// to enforce the schema, and a value that cannot be honoured must
    /// never be replaced by a default.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(n) = self.xff_num_trusted_hops
            && n > MAX_XFF_NUM_TRUSTED_HOPS
        {
            return Err(format!(
                "spec.envoy.xffNumTrustedHops {n} is above the maximum of {MAX_XFF_NUM_TRUSTED_HOPS}"
            ));
        }
        if self.max_downstream_connections == Some(0) {
            return Err(
                "spec.envoy.maxDownstreamConnections must be at least 1 (0 would refuse every connection)"
                    .to_owned(),
            );
        }
        if let Some(n) = self.concurrency
            && !(1..=256).contains(&n)
        {
            return Err(format!("spec.envoy.concurrency {n} is outside 1 to 256"));
        }
        Ok(())
    }

    /// The per-Envoy downstream connection limit these parameters give.
    pub fn max_downstream_connections(params: Option<&ProxyParametersSpec>) -> u32 {
        params
            .and_then(|p| p.envoy.as_ref())
            .and_then(|e| e.max_downstream_connections)
            .unwrap_or(DEFAULT_MAX_DOWNSTREAM_CONNECTIONS)
    }
}

/// An Envoy log level.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EnvoyLogLevel {
    /// Everything.
    Trace,
    /// Debugging detail.
    Debug,
    /// The default.
    #[default]
    Info,
    /// Warnings and worse.
    Warning,
    /// Errors and worse.
    Error,
    /// Critical errors only.
    Critical,
    /// Nothing.
    Off,
}

impl EnvoyLogLevel {
    /// The value of Envoy's `--log-level`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Error => "error",
            Self::Critical => "critical",
            Self::Off => "off",
        }
    }
}

impl ProxyParametersSpec {
    /// These parameters laid over `base`: each leaf field set here wins,
    /// each one left unset keeps `base`'s value.
    pub fn over(&self, base: &Self) -> Self {
        fn pick<T: Clone>(top: &Option<T>, base: &Option<T>) -> Option<T> {
            top.clone().or_else(|| base.clone())
        }
        // A section missing on either side merges as an empty one, so that
        // setting one field of a section never drops the other side's
        // fields of that section.
        let service = match (&self.service, &base.service) {
            (None, None) => None,
            (top, bottom) => {
                let (top, bottom) = (
                    top.clone().unwrap_or_default(),
                    bottom.clone().unwrap_or_default(),
                );
                Some(ServiceParameters {
                    type_: pick(&top.type_, &bottom.type_),
                    annotations: pick(&top.annotations, &bottom.annotations),
                    labels: pick(&top.labels, &bottom.labels),
                    load_balancer_class: pick(
                        &top.load_balancer_class,
                        &bottom.load_balancer_class,
                    ),
                    external_traffic_policy: pick(
                        &top.external_traffic_policy,
                        &bottom.external_traffic_policy,
                    ),
                })
            }
        };
        let deployment = match (&self.deployment, &base.deployment) {
            (None, None) => None,
            (top, bottom) => {
                let (top, bottom) = (
                    top.clone().unwrap_or_default(),
                    bottom.clone().unwrap_or_default(),
                );
                Some(DeploymentParameters {
                    replicas: pick(&top.replicas, &bottom.replicas),
                    resources: pick(&top.resources, &bottom.resources),
                    node_selector: pick(&top.node_selector, &bottom.node_selector),
                    tolerations: pick(&top.tolerations, &bottom.tolerations),
                    pod_annotations: pick(&top.pod_annotations, &bottom.pod_annotations),
                    pod_labels: pick(&top.pod_labels, &bottom.pod_labels),
                    image: pick(&top.image, &bottom.image),
                })
            }
        };
        let envoy = match (&self.envoy, &base.envoy) {
            (None, None) => None,
            (top, bottom) => {
                let (top, bottom) = (
                    top.clone().unwrap_or_default(),
                    bottom.clone().unwrap_or_default(),
                );
                Some(EnvoyParameters {
                    log_level: pick(&top.log_level, &bottom.log_level),
                    concurrency: pick(&top.concurrency, &bottom.concurrency),
                    xff_num_trusted_hops: pick(
                        &top.xff_num_trusted_hops,
                        &bottom.xff_num_trusted_hops,
                    ),
                    max_downstream_connections: pick(
                        &top.max_downstream_connections,
                        &bottom.max_downstream_connections,
                    ),
                })
            }
        };
        Self {
            service,
            deployment,
            envoy,
        }
    }
}

/// The CRD manifest as YAML, exactly as `crds/gatewright/` holds it: a
/// header saying it is generated, then the CRD that
/// `ProxyParameters::crd()` describes.
pub fn crd_yaml() -> anyhow::Result<String> {
    use kube::CustomResourceExt as _;
    let body = serde_yaml::to_string(&ProxyParameters::crd())
        .map_err(|e| anyhow::anyhow!("serialising the ProxyParameters CRD: {e}"))?;
    Ok(format!(
        "# Generated from the Rust type `ProxyParametersSpec`\n\
         # (control-plane/src/infra/kubernetes/params.rs); do not edit.\n\
         # Regenerate with: GATEWRIGHT_WRITE_CRDS=1 cargo test -p gatewright --test crd\n\
         {body}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_parameters_win_field_by_field() {
        let class: ProxyParametersSpec = serde_json::from_value(serde_json::json!({
            "service": { "type": "NodePort", "annotations": { "a": "1" } },
            "deployment": { "replicas": 3, "image": "class-image" },
            "envoy": { "logLevel": "debug" }
        }))
        .expect("class parameters");
        let gateway: ProxyParametersSpec = serde_json::from_value(serde_json::json!({
            "service": { "type": "ClusterIP" },
            "deployment": { "replicas": 2 },
            "envoy": { "concurrency": 4 }
        }))
        .expect("gateway parameters");
        let merged = gateway.over(&class);
        let service = merged.service.expect("service");
        assert_eq!(service.type_, Some(ServiceType::ClusterIp));
        assert_eq!(service.annotations.expect("annotations")["a"], "1");
        let deployment = merged.deployment.expect("deployment");
        assert_eq!(deployment.replicas, Some(2));
        assert_eq!(deployment.image.as_deref(), Some("class-image"));
        let envoy = merged.envoy.expect("envoy");
        assert_eq!(envoy.log_level, Some(EnvoyLogLevel::Debug));
        assert_eq!(envoy.concurrency, Some(4));
        assert_eq!(
            ProxyParametersSpec::default().over(&ProxyParametersSpec::default()),
            ProxyParametersSpec::default()
        );
    }

    #[test]
    fn envoy_values_outside_the_schema_are_refused() {
        let envoy = |json: serde_json::Value| -> EnvoyParameters {
            serde_json::from_value(json).expect("envoy parameters")
        };
        assert_eq!(EnvoyParameters::default().validate(), Ok(()));
        assert_eq!(
            envoy(serde_json::json!({"xffNumTrustedHops": 16, "maxDownstreamConnections": 1}))
                .validate(),
            Ok(())
        );
        for (json, field) in [
            (
                serde_json::json!({"xffNumTrustedHops": 17}),
                "xffNumTrustedHops",
            ),
            (
                serde_json::json!({"maxDownstreamConnections": 0}),
                "maxDownstreamConnections",
            ),
            (serde_json::json!({"concurrency": 0}), "concurrency"),
        ] {
            let message = envoy(json).validate().expect_err("outside the schema");
            assert!(message.contains(field), "{message}");
        }
        // A negative value does not decode at all: the file provider and
        // the API server refuse the whole object.
        assert!(
            serde_json::from_value::<EnvoyParameters>(serde_json::json!({"xffNumTrustedHops": -1}))
                .is_err()
        );
    }

    #[test]
    fn edge_settings_merge_field_by_field() {
        let class: ProxyParametersSpec = serde_json::from_value(serde_json::json!({
            "envoy": { "xffNumTrustedHops": 1, "maxDownstreamConnections": 10 }
        }))
        .expect("class parameters");
        let gateway: ProxyParametersSpec = serde_json::from_value(serde_json::json!({
            "envoy": { "xffNumTrustedHops": 2 }
        }))
        .expect("gateway parameters");
        let merged = gateway.over(&class);
        let envoy = merged.envoy.as_ref().expect("envoy");
        assert_eq!(envoy.xff_num_trusted_hops, Some(2));
        assert_eq!(
            EnvoyParameters::max_downstream_connections(Some(&merged)),
            10
        );
        assert_eq!(
            EnvoyParameters::max_downstream_connections(None),
            DEFAULT_MAX_DOWNSTREAM_CONNECTIONS
        );
    }

    #[test]
    fn crd_is_namespaced_v1alpha1_with_a_structural_schema() {
        use kube::CustomResourceExt as _;
        let crd = ProxyParameters::crd();
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.names.kind, KIND);
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.versions[0].name, "v1alpha1");
        let yaml = crd_yaml().expect("yaml");
        assert!(yaml.contains("ClusterIP"));
        assert!(yaml.contains("x-kubernetes-int-or-string"));
    }
}
