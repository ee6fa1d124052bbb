//! Kubernetes mode on a cluster that still runs the Gateway API v1.5.1 CRDs
//! (standard channel): Gatewright's types, generated from v1.7.0's
//! experimental CRDs, read and write the objects such a cluster stores.
//!
//! A test binary of its own because the cluster (shared by a binary's
//! tests) is installed with one CRD bundle.

// Re-exports the other test binaries use.
#[allow(unused_imports)]
mod kube_support;

use kube_support::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
const BUNDLE: &str = "gateway-api-v1.5.1/standard";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_stored_through_the_v1_5_1_standard_crds_are_served() {
    const NS: &str = "t-v151";
    const NAME: &str = "gatewright.dev/t-v151";
    crds::use_bundle(BUNDLE);
    let cluster = Cluster::shared();
    let kube = cluster.kube().await;
    let crd = kube
        .get(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            None,
            "httproutes.gateway.networking.k8s.io",
        )
        .await
        .expect("reading the HTTPRoute CRD")
        .expect("the HTTPRoute CRD is installed");
    let annotations = &crd["metadata"]["annotations"];
    assert_eq!(
        (
            annotations["gateway.networking.k8s.io/bundle-version"].as_str(),
            annotations["gateway.networking.k8s.io/channel"].as_str()
        ),
        (Some("v1.5.1"), Some("standard")),
        "the cluster runs another bundle: {annotations}"
    );

    let dir = TestDir::new(NS);
    kube.apply(&namespace(NS))
        .await
        .expect("creating the namespace");
    kube.apply(
        &[
            gateway_with_echo(NS, NAME, 28101, "10.244.9.10"),
            "---\n".into(),
            http_route(NS, "web", "gw", "web.example.test", "/", "echo"),
        ]
        .concat(),
    )
    .await
    .expect("creating the objects");
    let _c = Controller::start(
        &dir.path,
        controller_spec(cluster, "a", NS, NAME, Infra::Host),
    );
    wait_for("the GatewayClass: Accepted", WAIT, || {
        class_accepted(&kube, NS)
    })
    .await;
    wait_for("the route: Accepted and ResolvedRefs", WAIT, || {
        route_status(&kube, NS, "web", NAME, "gw", ("True", None))
    })
    .await;
    wait_for(
        "the Gateway: Accepted and Programmed, 1 attached route",
        WAIT,
        || gateway_programmed(&kube, NS, "gw", 1),
    )
    .await;
}
