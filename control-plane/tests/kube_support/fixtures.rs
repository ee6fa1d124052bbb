//! Objects the Kubernetes-mode tests create and the checks they make on
//! them, shared by every test binary that starts the cluster.

use serde_json::Value;

use std::time::Duration;

use super::{
    Cluster, ControllerSpec, Infra, Kube, clip, expect_condition, kube_error, listener_status,
    objects, route_parent,
};

/// Lease duration the tests give the controllers.
pub const LEASE_SECONDS: u32 = 4;

// ---------------------------------------------------------------------------
// YAML builders.

pub fn namespace(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n")
}

pub fn gateway_class(
    name: &str,
    controller: &str,
    params: Option<(&str, &str, &str, &str)>,
) -> String {
    let mut out = format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: {name}
spec:
  controllerName: {controller}
"
    );
    if let Some((group, kind, ns, pname)) = params {
        out.push_str(&format!(
            "  parametersRef:
    group: {group}
    kind: {kind}
    namespace: {ns}
    name: {pname}
"
        ));
    }
    out
}

/// A Gateway with one HTTP listener `http` on `port`; `extra` is appended
/// to its spec (two-space indented).
pub fn gateway(ns: &str, name: &str, class: &str, port: u16, extra: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: {name}
  namespace: {ns}
spec:
  gatewayClassName: {class}
  listeners:
  - name: http
    protocol: HTTP
    port: {port}
    allowedRoutes:
      namespaces:
        from: Same
{extra}"
    )
}

/// A Service with port 8080 and an EndpointSlice with one (non-loopback:
/// the API server rejects loopback endpoint addresses) address.
pub fn service(ns: &str, name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {ns}
spec:
  ports:
  - name: http
    port: 8080
    targetPort: 8080
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: {ns}
  labels:
    kubernetes.io/service-name: {name}
addressType: IPv4
endpoints:
- addresses: [\"{ip}\"]
  conditions:
    ready: true
ports:
- name: http
  port: 8080
  protocol: TCP
"
    )
}

/// GatewayClass `ns` of `controller`, Gateway `gw` (class `ns`, listener
/// `http` on `port`) and Service `echo` with one endpoint at `ip`.
pub fn gateway_with_echo(ns: &str, controller: &str, port: u16, ip: &str) -> String {
    [
        gateway_class(ns, controller, None),
        "---\n".into(),
        gateway(ns, "gw", ns, port, ""),
        "---\n".into(),
        service(ns, "echo", ip),
    ]
    .concat()
}

/// An HTTPRoute on Gateway `gw` sending `path` to `backend`:8080.
pub fn http_route(
    ns: &str,
    name: &str,
    gw: &str,
    hostname: &str,
    path: &str,
    backend: &str,
) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: {name}
  namespace: {ns}
spec:
  parentRefs:
  - name: {gw}
  hostnames: [\"{hostname}\"]
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: {path}
    backendRefs:
    - name: {backend}
      port: 8080
"
    )
}

// ---------------------------------------------------------------------------
// Reading objects.

pub async fn get(
    kube: &Kube,
    api_version: &str,
    kind: &str,
    ns: Option<&str>,
    name: &str,
) -> Result<Value, String> {
    kube.get(api_version, kind, ns, name).await?.ok_or_else(|| {
        format!(
            "{kind} {}{name} does not exist",
            ns.map(|n| format!("{n}/")).unwrap_or_default()
        )
    })
}

pub async fn gateway_class_obj(kube: &Kube, name: &str) -> Result<Value, String> {
    get(
        kube,
        "gateway.networking.k8s.io/v1",
        "GatewayClass",
        None,
        name,
    )
    .await
}

pub async fn gateway_obj(kube: &Kube, ns: &str, name: &str) -> Result<Value, String> {
    get(
        kube,
        "gateway.networking.k8s.io/v1",
        "Gateway",
        Some(ns),
        name,
    )
    .await
}

pub async fn route_obj(kube: &Kube, ns: &str, name: &str) -> Result<Value, String> {
    get(
        kube,
        "gateway.networking.k8s.io/v1",
        "HTTPRoute",
        Some(ns),
        name,
    )
    .await
}

/// GatewayClass Accepted=True for its generation, supportedFeatures set.
pub async fn class_accepted(kube: &Kube, name: &str) -> Result<Value, String> {
    let gc = gateway_class_obj(kube, name).await?;
    expect_condition(
        &gc["status"]["conditions"],
        "Accepted",
        "True",
        None,
        &gc["metadata"]["generation"],
    )?;
    let features = gc["status"]["supportedFeatures"]
        .as_array()
        .map_or(0, Vec::len);
    if features == 0 {
        return Err(format!(
            "GatewayClass {name} has no status.supportedFeatures: {}",
            gc["status"]
        ));
    }
    Ok(gc)
}

/// Gateway Accepted and Programmed for its generation, with addresses and
/// `attached` routes on listener `http`.
pub async fn gateway_programmed(
    kube: &Kube,
    ns: &str,
    name: &str,
    attached: u64,
) -> Result<Value, String> {
    let gw = gateway_obj(kube, ns, name).await?;
    let generation = &gw["metadata"]["generation"];
    let conds = &gw["status"]["conditions"];
    expect_condition(conds, "Accepted", "True", None, generation)?;
    expect_condition(conds, "Programmed", "True", None, generation)?;
    if gw["status"]["addresses"]
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        return Err(format!(
            "Gateway {ns}/{name} has no status.addresses: {}",
            gw["status"]
        ));
    }
    let listener = listener_status(&gw, "http")
        .ok_or_else(|| format!("no status of listener http: {}", gw["status"]))?;
    if listener["attachedRoutes"] != attached {
        return Err(format!(
            "listener http has attachedRoutes {}, want {attached}",
            listener["attachedRoutes"]
        ));
    }
    Ok(gw)
}

/// The route's parent entry for (`controller`, `gw`) with Accepted and
/// ResolvedRefs as given, for the route's current generation.
pub async fn route_status(
    kube: &Kube,
    ns: &str,
    name: &str,
    controller: &str,
    gw: &str,
    resolved: (&str, Option<&str>),
) -> Result<Value, String> {
    kind_route_status(kube, "HTTPRoute", ns, name, controller, gw, resolved).await
}

/// [`route_status`] for a route of any `kind` (HTTPRoute, TCPRoute, ...).
pub async fn kind_route_status(
    kube: &Kube,
    kind: &str,
    ns: &str,
    name: &str,
    controller: &str,
    gw: &str,
    resolved: (&str, Option<&str>),
) -> Result<Value, String> {
    let route = get(kube, "gateway.networking.k8s.io/v1", kind, Some(ns), name).await?;
    let parent = route_parent(&route, controller, gw).ok_or_else(|| {
        format!(
            "{kind} {ns}/{name} has no parents entry of {controller} for Gateway {gw}: {}",
            clip(&route["status"].to_string(), 800)
        )
    })?;
    let generation = &route["metadata"]["generation"];
    expect_condition(&parent["conditions"], "Accepted", "True", None, generation)?;
    expect_condition(
        &parent["conditions"],
        "ResolvedRefs",
        resolved.0,
        resolved.1,
        generation,
    )?;
    Ok(route)
}

pub fn resource_version(obj: &Value) -> String {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Adds a parents entry of another controller to a route's status (retrying
/// on conflicts with the controller's own writes).
pub async fn add_foreign_parent(kube: &Kube, ns: &str, name: &str, foreign: &Value) {
    for _ in 0..20 {
        let mut route = route_obj(kube, ns, name).await.expect("reading the route");
        let parents = route["status"]["parents"]
            .as_array_mut()
            .expect("the route has status.parents");
        parents.retain(|p| p["controllerName"] != foreign["controllerName"]);
        parents.push(foreign.clone());
        match kube.replace_status(&route).await {
            Ok(_) => return,
            Err(e) if objects::is_code(&e, 409) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("writing the route's status: {}", kube_error(&e)),
        }
    }
    panic!("could not write the route's status: 20 conflicts in a row");
}

pub fn controller_spec(
    cluster: &Cluster,
    label: &str,
    ns: &str,
    controller_name: &str,
    infra: Infra,
) -> ControllerSpec {
    ControllerSpec {
        label: label.into(),
        kubeconfig: cluster.kubeconfig.clone(),
        infrastructure: infra,
        namespace: ns.into(),
        identity: format!("{ns}-{label}"),
        controller_name: controller_name.into(),
        lease_seconds: LEASE_SECONDS,
        extra_args: Vec::new(),
    }
}
