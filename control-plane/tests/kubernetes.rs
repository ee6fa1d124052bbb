//! Integration tests of Kubernetes mode: real `gatewright controller`
//! processes against a real, local kube-apiserver (etcd, kube-apiserver and
//! kube-controller-manager on 127.0.0.1, started once for this binary by
//! `kube_support` and shared by its tests).
//!
//! Each test has its own namespace, its own GatewayClass with a controller
//! name of its own (only the status test uses the default one), its own
//! Lease namespace and its own listener ports, so the tests run in parallel
//! without seeing each other's controllers.
//!
//! Needs the Kubernetes binaries (`bash conformance/cluster.sh build`, or
//! `GATEWRIGHT_K8S_BIN`) and Envoy (`make envoy`, or `ENVOY_BIN`); fails
//! saying so when they are missing.

mod kube_support;

use std::time::{Duration, Instant};

use kube_support::*;
use serde_json::{Value, json};

/// The longest any one wait for the controller may take.
const WAIT: Duration = Duration::from_secs(30);
/// The default controller name.
const CONTROLLER_NAME: &str = "gatewright.dev/gateway-controller";

// ---------------------------------------------------------------------------
// 0. The harness itself.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_serves_gateway_api() {
    let t = Instant::now();
    let cluster = Cluster::shared();
    eprintln!(
        "kube harness: waited {:.2} s; cluster start-up took {} in {}",
        t.elapsed().as_secs_f64(),
        cluster.timings_summary(),
        cluster.dir.display()
    );
    let kube = cluster.kube().await;
    // Every CRD is Established (install waited for it), and served.
    for crd in [
        "gatewayclasses",
        "gateways",
        "httproutes",
        "grpcroutes",
        "tlsroutes",
        "listenersets",
        "referencegrants",
        "backendtlspolicies",
        "tcproutes",
        "udproutes",
    ] {
        let name = format!("{crd}.gateway.networking.k8s.io");
        let obj = kube
            .get(
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                None,
                &name,
            )
            .await
            .expect("reading a CRD")
            .unwrap_or_else(|| panic!("CRD {name} is not installed"));
        assert_eq!(
            obj["metadata"]["annotations"]["gateway.networking.k8s.io/bundle-version"], "v1.7.0",
            "CRD {name}"
        );
        expect_condition(
            &obj["status"]["conditions"],
            "Established",
            "True",
            None,
            &Value::Null,
        )
        .or_else(|e| {
            if e.contains("observedGeneration") {
                Ok(())
            } else {
                Err(e)
            }
        })
        .unwrap_or_else(|e| panic!("CRD {name}: {e}"));
    }
    kube.apply(&namespace("t0-harness"))
        .await
        .expect("creating a namespace");
    let t = Instant::now();
    kube.apply(
        &[
            gateway_class("t0-harness", "example.test/nobody", None),
            "---\n".into(),
            gateway("t0-harness", "gw", "t0-harness", 80, ""),
        ]
        .concat(),
    )
    .await
    .expect("creating a Gateway");
    let gw = gateway_obj(&kube, "t0-harness", "gw")
        .await
        .expect("reading the Gateway back");
    assert_eq!(gw["spec"]["listeners"][0]["port"], 80, "{gw}");
    assert_eq!(gw["metadata"]["generation"], 1, "{gw}");
    eprintln!("kube harness: create + read a Gateway: {:?}", t.elapsed());

    // A kubeconfig with `as:` makes kube-rs impersonate: a ServiceAccount
    // without any RBAC may not list Gateways.
    let dir = TestDir::new("t0-harness");
    let path = cluster.impersonating_kubeconfig(
        &dir.path.join("kubeconfig"),
        "system:serviceaccount:t0-harness:nobody",
        &[],
    );
    let nobody = Kube::from_kubeconfig(&path)
        .await
        .expect("impersonating client");
    let err = nobody
        .list(
            "gateway.networking.k8s.io/v1",
            "Gateway",
            Some("t0-harness"),
        )
        .await
        .expect_err("an impersonated ServiceAccount without RBAC listed Gateways");
    assert!(
        err.contains("403") && err.contains("system:serviceaccount:t0-harness:nobody"),
        "want a 403 naming the impersonated user, got: {err}"
    );
}

// ---------------------------------------------------------------------------
// 1. Status round trip (host infrastructure).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_round_trip() {
    const NS: &str = "t1-status";
    let cluster = Cluster::shared();
    let kube = cluster.kube().await;
    let dir = TestDir::new(NS);
    kube.apply(&namespace(NS))
        .await
        .expect("creating the namespace");
    kube.apply(
        &[
            gateway_with_echo(NS, CONTROLLER_NAME, 28001, "10.244.1.10"),
            "---\n".into(),
            http_route(NS, "route", "gw", "t1.example.test", "/", "echo"),
        ]
        .concat(),
    )
    .await
    .expect("creating the objects");
    let c = Controller::start(
        &dir.path,
        controller_spec(cluster, "a", NS, CONTROLLER_NAME, Infra::Host),
    );

    wait_for("GatewayClass Accepted with supportedFeatures", WAIT, || {
        class_accepted(&kube, NS)
    })
    .await;
    let gw = wait_for(
        "Gateway Accepted and Programmed, 1 attached route",
        WAIT,
        || gateway_programmed(&kube, NS, "gw", 1),
    )
    .await;
    eprintln!("Gateway status: {}", gw["status"]);
    wait_for("HTTPRoute Accepted and ResolvedRefs", WAIT, || {
        route_status(&kube, NS, "route", CONTROLLER_NAME, "gw", ("True", None))
    })
    .await;

    // A spec change bumps the generation; observedGeneration follows.
    let before = route_obj(&kube, NS, "route")
        .await
        .expect("reading the route");
    kube.apply(&http_route(
        NS,
        "route",
        "gw",
        "t1.example.test",
        "/v2",
        "echo",
    ))
    .await
    .expect("changing the route");
    let route = wait_for(
        "the route's observedGeneration to follow its generation",
        WAIT,
        || route_status(&kube, NS, "route", CONTROLLER_NAME, "gw", ("True", None)),
    )
    .await;
    assert!(
        route["metadata"]["generation"].as_i64() > before["metadata"]["generation"].as_i64(),
        "the route's generation did not change: {} then {}",
        before["metadata"]["generation"],
        route["metadata"]["generation"]
    );

    // Another controller's parents entry survives Gatewright's next write.
    let foreign = json!({
        "parentRef": {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": "other-gw",
            "namespace": NS,
        },
        "controllerName": "example.test/other",
        "conditions": [{
            "type": "Accepted", "status": "True", "reason": "Accepted",
            "message": "accepted by another controller",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
            "observedGeneration": route["metadata"]["generation"],
        }],
    });
    add_foreign_parent(&kube, NS, "route", &foreign).await;
    kube.apply(&http_route(
        NS,
        "route",
        "gw",
        "t1.example.test",
        "/v3",
        "echo",
    ))
    .await
    .expect("changing the route again");
    let route = wait_for(
        "Gatewright's write for the route's third generation",
        WAIT,
        || route_status(&kube, NS, "route", CONTROLLER_NAME, "gw", ("True", None)),
    )
    .await;
    let kept = route["status"]["parents"].as_array().is_some_and(|ps| {
        ps.iter()
            .any(|p| p["controllerName"] == "example.test/other")
    });
    assert!(
        kept,
        "Gatewright dropped the parents entry of example.test/other: {}",
        route["status"]
    );

    // A change that alters no status writes none: the controller runs full
    // rounds over a re-annotated Service (counted by its translations
    // metric, so the check cannot pass by having run nothing) and leaves
    // every status as it was.
    let annotated = |n: u32| {
        service(NS, "echo", "10.244.1.10").replacen(
            "metadata:\n",
            &format!("metadata:\n  annotations:\n    test.gatewright.dev/round: \"{n}\"\n"),
            1,
        )
    };
    let rounds_before = translations(&c).await.expect("the translations metric");
    kube.apply(&annotated(1))
        .await
        .expect("annotating the echo Service");
    round_after(&c, rounds_before, "a round over the annotated Service").await;
    let read_all = async || {
        [
            gateway_class_obj(&kube, NS)
                .await
                .expect("reading the GatewayClass"),
            gateway_obj(&kube, NS, "gw")
                .await
                .expect("reading the Gateway"),
            route_obj(&kube, NS, "route")
                .await
                .expect("reading the route"),
        ]
    };
    // A Gateway waits for its Envoy's acknowledgement before it is
    // Programmed (one more write); compare from then on.
    wait_for("the Gateway to be Programmed", WAIT, || async {
        let gw = gateway_obj(&kube, NS, "gw").await?;
        let programmed = gw["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Programmed" && c["status"] == "True")
        });
        if programmed {
            Ok(())
        } else {
            Err(format!("Gateway status {}", gw["status"]))
        }
    })
    .await;
    let first = read_all().await;
    let rounds_before = translations(&c).await.expect("the translations metric");
    kube.apply(&annotated(2))
        .await
        .expect("annotating the echo Service again");
    round_after(
        &c,
        rounds_before,
        "a round over the Service annotated again",
    )
    .await;
    let second = read_all().await;
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(
            resource_version(a),
            resource_version(b),
            "{} {} was written although nothing changed; status before: {}\nstatus after: {}",
            a["kind"],
            a["metadata"]["name"],
            a["status"],
            b["status"]
        );
    }
}

// ---------------------------------------------------------------------------
// 2. Bad input: a missing backend.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_backend_is_reported_and_others_still_work() {
    const NS: &str = "t2-bad-input";
    const NAME: &str = "gatewright.dev/t2-bad-input";
    let cluster = Cluster::shared();
    let kube = cluster.kube().await;
    let dir = TestDir::new(NS);
    kube.apply(&namespace(NS))
        .await
        .expect("creating the namespace");
    kube.apply(
        &[
            gateway_with_echo(NS, NAME, 28002, "10.244.2.10"),
            "---\n".into(),
            http_route(
                NS,
                "missing-backend",
                "gw",
                "bad.example.test",
                "/",
                "no-such-service",
            ),
            "---\n".into(),
            http_route(NS, "good", "gw", "good.example.test", "/", "echo"),
        ]
        .concat(),
    )
    .await
    .expect("creating the objects");
    let _c = Controller::start(
        &dir.path,
        controller_spec(cluster, "a", NS, NAME, Infra::Host),
    );

    wait_for(
        "the route to a missing Service: ResolvedRefs False BackendNotFound",
        WAIT,
        || {
            route_status(
                &kube,
                NS,
                "missing-backend",
                NAME,
                "gw",
                ("False", Some("BackendNotFound")),
            )
        },
    )
    .await;
    wait_for("the other route: Accepted and ResolvedRefs", WAIT, || {
        route_status(&kube, NS, "good", NAME, "gw", ("True", None))
    })
    .await;
    wait_for(
        "the Gateway: Accepted and Programmed, 2 attached routes",
        WAIT,
        || gateway_programmed(&kube, NS, "gw", 2),
    )
    .await;
}

// ---------------------------------------------------------------------------
// 2b. TCPRoute and UDPRoute (Gateway API v1.7.0, v1).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_udp_route_statuses_are_written() {
    const NS: &str = "t2-l4";
    const NAME: &str = "gatewright.dev/t2-l4";
    let cluster = Cluster::shared();
    let kube = cluster.kube().await;
    let dir = TestDir::new(NS);
    kube.apply(&namespace(NS))
        .await
        .expect("creating the namespace");
    let stream_route = |kind: &str, name: &str, section: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: {kind}
metadata:
  name: {name}
  namespace: {NS}
spec:
  parentRefs:
  - name: gw
    sectionName: {section}
  rules:
  - backendRefs:
    - name: echo
      port: 8080
"
        )
    };
    kube.apply(
        &[
            gateway_class(NS, NAME, None),
            "---\n".into(),
            format!(
                "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: gw
  namespace: {NS}
spec:
  gatewayClassName: {NS}
  listeners:
  - name: tcp
    protocol: TCP
    port: 28005
  - name: udp
    protocol: UDP
    port: 28005
"
            ),
            "---\n".into(),
            service(NS, "echo", "10.244.2.20"),
            "---\n".into(),
            stream_route("TCPRoute", "stream", "tcp"),
            "---\n".into(),
            stream_route("UDPRoute", "datagrams", "udp"),
        ]
        .concat(),
    )
    .await
    .expect("creating the objects");
    let _c = Controller::start(
        &dir.path,
        controller_spec(cluster, "a", NS, NAME, Infra::Host),
    );
    for (kind, name) in [("TCPRoute", "stream"), ("UDPRoute", "datagrams")] {
        wait_for(
            &format!("{kind} {name}: Accepted and ResolvedRefs"),
            WAIT,
            || kind_route_status(&kube, kind, NS, name, NAME, "gw", ("True", None)),
        )
        .await;
    }
    wait_for("the Gateway: one route on each listener", WAIT, || async {
        let gw = gateway_obj(&kube, NS, "gw").await?;
        for listener in ["tcp", "udp"] {
            let status = listener_status(&gw, listener)
                .ok_or_else(|| format!("no status of listener {listener}: {}", gw["status"]))?;
            if status["attachedRoutes"] != 1 {
                return Err(format!("listener {listener}: {status}"));
            }
        }
        Ok(())
    })
    .await;
}

// ---------------------------------------------------------------------------
// 3. Leader hand-over.

async fn lease_holder(kube: &Kube, ns: &str) -> Result<String, String> {
    let lease = get(
        kube,
        "coordination.k8s.io/v1",
        "Lease",
        Some(ns),
        "gatewright-controller",
    )
    .await?;
    lease["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("the Lease has no holderIdentity: {}", lease["spec"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_hand_over() {
    const NS: &str = "t3-leader";
    const NAME: &str = "gatewright.dev/t3-leader";
    let cluster = Cluster::shared();
    let kube = cluster.kube().await;
    let dir = TestDir::new(NS);
    kube.apply(&namespace(NS))
        .await
        .expect("creating the namespace");
    kube.apply(
        &[
            gateway_class(NS, NAME, None),
            "---\n".into(),
            gateway(NS, "gw", NS, 28003, ""),
            "---\n".into(),
            service(NS, "echo", "10.244.3.10"),
            "---\n".into(),
            http_route(NS, "before", "gw", "before.example.test", "/", "echo"),
        ]
        .concat(),
    )
    .await
    .expect("creating the objects");
    let mut controllers = [
        Controller::start(
            &dir.path,
            controller_spec(cluster, "a", NS, NAME, Infra::Host),
        ),
        Controller::start(
            &dir.path,
            controller_spec(cluster, "b", NS, NAME, Infra::Host),
        ),
    ];

    // Exactly one leader, named by the Lease.
    let leader = wait_for("exactly one leader, named by the Lease", WAIT, async || {
        let mut leaders = Vec::new();
        for (i, c) in controllers.iter().enumerate() {
            if c.is_leader().await? {
                leaders.push(i);
            }
        }
        let [i] = leaders[..] else {
            return Err(format!("{} replicas say they lead", leaders.len()));
        };
        let holder = lease_holder(&kube, NS).await?;
        if holder != controllers[i].identity {
            return Err(format!(
                "{} says it leads, the Lease names {holder}",
                controllers[i].identity
            ));
        }
        Ok(i)
    })
    .await;
    let follower = 1 - leader;
    wait_for("the first route's status", WAIT, || {
        route_status(&kube, NS, "before", NAME, "gw", ("True", None))
    })
    .await;
    assert!(
        !controllers[follower]
            .is_leader()
            .await
            .expect("asking the follower"),
        "both replicas say they lead"
    );

    // Kill the leader; the other takes over within the lease time + slack.
    controllers[leader].signal(libc::SIGKILL);
    let killed = Instant::now();
    let slack = Duration::from_secs(15);
    let new_leader = controllers[follower].identity.clone();
    wait_for(
        "the follower to take over the Lease",
        Duration::from_secs(u64::from(LEASE_SECONDS)) + slack,
        async || {
            if !controllers[follower].is_leader().await? {
                return Err("the follower does not say it leads yet".into());
            }
            let holder = lease_holder(&kube, NS).await?;
            if holder != new_leader {
                return Err(format!("the Lease names {holder}"));
            }
            Ok(())
        },
    )
    .await;
    eprintln!(
        "hand-over: {} took over {:.2} s after {} was killed (lease {LEASE_SECONDS} s)",
        new_leader,
        killed.elapsed().as_secs_f64(),
        controllers[leader].identity
    );
    controllers[leader].stop();

    // Status writes continue under the new leader.
    kube.apply(&http_route(
        NS,
        "after",
        "gw",
        "after.example.test",
        "/",
        "echo",
    ))
    .await
    .expect("creating a route after the hand-over");
    wait_for("the new route's status from the new leader", WAIT, || {
        route_status(&kube, NS, "after", NAME, "gw", ("True", None))
    })
    .await;
    wait_for("the Gateway to count both routes", WAIT, async || {
        let gw = gateway_obj(&kube, NS, "gw").await?;
        let l = listener_status(&gw, "http").ok_or("no listener status")?;
        if l["attachedRoutes"] == 2 {
            Ok(())
        } else {
            Err(format!("attachedRoutes is {}", l["attachedRoutes"]))
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// 4. Provisioned objects and garbage collection (Kubernetes infrastructure).

/// The kinds the Kubernetes infrastructure provisions per Gateway, and
/// whether each is required.
const PROVISIONED: [(&str, &str, bool); 5] = [
    ("v1", "ServiceAccount", true),
    ("v1", "ConfigMap", true),
    ("apps/v1", "Deployment", true),
    ("v1", "Service", true),
    ("v1", "Secret", false),
];

/// Every object of [`PROVISIONED`] kinds in `ns` with an ownerReference to
/// `owner_uid`: (kind, object).
async fn owned_objects(
    kube: &Kube,
    ns: &str,
    owner_uid: &str,
) -> Result<Vec<(String, Value)>, String> {
    let mut out = Vec::new();
    for (api_version, kind, _) in PROVISIONED {
        for obj in kube.list(api_version, kind, Some(ns)).await? {
            let owned = obj["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|rs| rs.iter().any(|r| r["uid"] == owner_uid));
            if owned {
                out.push((kind.to_string(), obj));
            }
        }
    }
    Ok(out)
}

/// ProxyParameters from Gatewright's CRD file: (group, version), if the
/// CRD exists.
fn proxy_parameters_kind() -> Option<(String, String)> {
    let dir = repo_root().join("crds/gatewright");
    for entry in std::fs::read_dir(dir).ok()?.filter_map(Result::ok) {
        let text = std::fs::read_to_string(entry.path()).ok()?;
        for doc in yaml_docs(&text).ok()? {
            if doc["kind"] == "CustomResourceDefinition"
                && doc["spec"]["names"]["kind"] == "ProxyParameters"
            {
                let group = doc["spec"]["group"].as_str()?.to_string();
                let version = doc["spec"]["versions"]
                    .as_array()?
                    .iter()
                    .find(|v| v["storage"] == true)?["name"]
                    .as_str()?
                    .to_string();
                return Some((group, version));
            }
        }
    }
    None
}

/// Where the ProxyParameters are referenced from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ParamsRef {
    /// The GatewayClass's `spec.parametersRef`.
    Class,
    /// The Gateway's `spec.infrastructure.parametersRef`.
    Gateway,
}

/// The provisioning flow: a Gateway with infrastructure labels and
/// annotations (and ProxyParameters asking for a ClusterIP Service,
/// referenced from its class or from itself, when the CRD exists) gets a
/// ServiceAccount, ConfigMap, Deployment and Service owned by it, carrying
/// them; its status.addresses holds the Service's ClusterIP; an HTTPRoute
/// on it is Accepted; deleting the Gateway garbage-collects them. The
/// controller must already run.
async fn provisioning_flow(
    kube: &Kube,
    ns: &str,
    controller_name: &str,
    port: u16,
    at: ParamsRef,
    controller: &mut Controller,
    gc_only: bool,
) {
    let params = proxy_parameters_kind();
    let mut objects = vec![namespace(ns)];
    let mut infrastructure = "  infrastructure:
    labels:
      test.gatewright.dev/team: blue
    annotations:
      test.gatewright.dev/note: provisioned-by-test
"
    .to_string();
    let mut class_params = None;
    match &params {
        Some((group, version)) => {
            objects.push(format!(
                "apiVersion: {group}/{version}
kind: ProxyParameters
metadata:
  name: proxy
  namespace: {ns}
spec:
  service:
    type: ClusterIP
"
            ));
            match at {
                ParamsRef::Class => {
                    class_params = Some((group.as_str(), "ProxyParameters", ns, "proxy"));
                }
                ParamsRef::Gateway => infrastructure.push_str(&format!(
                    "    parametersRef:
      group: {group}
      kind: ProxyParameters
      name: proxy
"
                )),
            }
        }
        None => {
            eprintln!("no ProxyParameters CRD in crds/gatewright: the Service type is not set");
        }
    }
    objects.push(gateway_class(ns, controller_name, class_params));
    objects.push(gateway(ns, "gw", ns, port, &infrastructure));
    objects.push(service(ns, "echo", "10.244.4.10"));
    objects.push(http_route(
        ns,
        "route",
        "gw",
        "prov.example.test",
        "/",
        "echo",
    ));
    kube.apply(&objects.join("---\n"))
        .await
        .expect("creating the objects");
    let uid = gateway_obj(kube, ns, "gw")
        .await
        .expect("reading the Gateway")["metadata"]["uid"]
        .as_str()
        .expect("the Gateway has a uid")
        .to_string();

    wait_for("GatewayClass Accepted with supportedFeatures", WAIT, || {
        class_accepted(kube, ns)
    })
    .await;
    wait_for("HTTPRoute Accepted and ResolvedRefs", WAIT, || {
        route_status(kube, ns, "route", controller_name, "gw", ("True", None))
    })
    .await;
    let owned = wait_for(
        "a ServiceAccount, ConfigMap, Deployment and Service owned by the Gateway",
        WAIT,
        async || {
            let owned = owned_objects(kube, ns, &uid).await?;
            let missing: Vec<&str> = PROVISIONED
                .iter()
                .filter(|(_, kind, required)| *required && !owned.iter().any(|(k, _)| k == kind))
                .map(|(_, kind, _)| *kind)
                .collect();
            if missing.is_empty() {
                Ok(owned)
            } else {
                Err(format!(
                    "no {} owned by the Gateway yet",
                    missing.join(", ")
                ))
            }
        },
    )
    .await;
    let names: Vec<String> = owned
        .iter()
        .map(|(k, o)| format!("{k} {}", o["metadata"]["name"].as_str().unwrap_or("?")))
        .collect();
    eprintln!("{ns}: owned by the Gateway: {}", names.join(", "));
    for (kind, obj) in &owned {
        let name = &obj["metadata"]["name"];
        if *kind == "Secret" {
            continue;
        }
        assert_eq!(
            obj["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"], "gw",
            "{kind} {name} lacks the GEP-1762 gateway-name label: {}",
            obj["metadata"]
        );
        assert_eq!(
            obj["metadata"]["labels"]["test.gatewright.dev/team"], "blue",
            "{kind} {name} lacks the Gateway's infrastructure label: {}",
            obj["metadata"]
        );
        assert_eq!(
            obj["metadata"]["annotations"]["test.gatewright.dev/note"], "provisioned-by-test",
            "{kind} {name} lacks the Gateway's infrastructure annotation: {}",
            obj["metadata"]
        );
        let controller_refs = obj["metadata"]["ownerReferences"]
            .as_array()
            .map_or(0, |rs| {
                rs.iter()
                    .filter(|r| r["uid"] == uid.as_str() && r["controller"] == true)
                    .count()
            });
        assert_eq!(
            controller_refs, 1,
            "{kind} {name}: the Gateway is not its controller owner: {}",
            obj["metadata"]
        );
    }
    let services: Vec<&Value> = owned
        .iter()
        .filter(|(k, _)| k == "Service")
        .map(|(_, o)| o)
        .collect();
    if params.is_some() {
        for s in &services {
            assert_eq!(
                s["spec"]["type"], "ClusterIP",
                "ProxyParameters asked for a ClusterIP Service: {}",
                s["spec"]
            );
        }
    }
    let cluster_ips: Vec<String> = services
        .iter()
        .filter_map(|s| s["spec"]["clusterIP"].as_str().map(str::to_string))
        .collect();
    // This cluster runs no pods, so no Envoy of the Gateway is ever ready:
    // the Gateway must not claim to be programmed.
    wait_for(
        "Gateway Accepted, Programmed=False/Pending (no Envoy ready), with the Service's ClusterIP in status.addresses",
        WAIT,
        async || {
            let gw = gateway_obj(kube, ns, "gw").await?;
            expect_condition(
                &gw["status"]["conditions"],
                "Accepted",
                "True",
                None,
                &gw["metadata"]["generation"],
            )?;
            expect_condition(
                &gw["status"]["conditions"],
                "Programmed",
                "False",
                Some("Pending"),
                &gw["metadata"]["generation"],
            )?;
            let addresses: Vec<&str> = gw["status"]["addresses"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x["value"].as_str()).collect())
                .unwrap_or_default();
            if cluster_ips
                .iter()
                .any(|ip| addresses.contains(&ip.as_str()))
            {
                Ok(())
            } else {
                Err(format!(
                    "status.addresses {addresses:?}, the Service's ClusterIP {cluster_ips:?}"
                ))
            }
        },
    )
    .await;

    // Deleting the Gateway: its objects are garbage-collected. With
    // `gc_only` the controller is stopped first, so that only
    // kube-controller-manager's garbage collector can remove them.
    if gc_only {
        controller.stop();
        let still = owned_objects(kube, ns, &uid)
            .await
            .expect("listing the Gateway's objects");
        assert_eq!(
            still.len(),
            owned.len(),
            "the Gateway's objects changed when the controller stopped"
        );
    }
    kube.delete("gateway.networking.k8s.io/v1", "Gateway", Some(ns), "gw")
        .await
        .expect("deleting the Gateway");
    let t = Instant::now();
    wait_for("the Gateway and its objects to be gone", WAIT, async || {
        if let Some(gw) = kube
            .get("gateway.networking.k8s.io/v1", "Gateway", Some(ns), "gw")
            .await?
        {
            return Err(format!(
                "the Gateway is still there (finalizers {}, deletionTimestamp {})",
                gw["metadata"]["finalizers"], gw["metadata"]["deletionTimestamp"]
            ));
        }
        let left = owned_objects(kube, ns, &uid).await?;
        if left.is_empty() {
            Ok(())
        } else {
            let names: Vec<String> = left
                .iter()
                .map(|(k, o)| format!("{k} {}", o["metadata"]["name"]))
                .collect();
            Err(format!("still there: {}", names.join(", ")))
        }
    })
    .await;
    eprintln!(
        "{ns}: the Gateway's {} objects were gone {:.2} s after it was deleted ({})",
        owned.len(),
        t.elapsed().as_secs_f64(),
        if gc_only {
            "controller stopped: garbage collector"
        } else {
            "controller running"
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioned_objects_and_garbage_collection() {
    const NS: &str = "t4-provision";
    const NAME: &str = "gatewright.dev/t4-provision";
    let cluster = Cluster::shared();
    let kube = cluster.kube().await;
    let dir = TestDir::new(NS);
    kube.apply(&namespace(NS))
        .await
        .expect("creating the namespace");
    let mut c = Controller::start(
        &dir.path,
        controller_spec(cluster, "a", NS, NAME, Infra::Kubernetes),
    );
    provisioning_flow(&kube, NS, NAME, 28004, ParamsRef::Gateway, &mut c, true).await;
}

// ---------------------------------------------------------------------------
// 5. Least-privilege RBAC: only the chart's.

/// Renders the chart and returns its RBAC objects and ServiceAccount.
fn chart_rbac(dir: &std::path::Path, ns: &str) -> Vec<Value> {
    let helm = repo_root().join(".tools/helm/bin/helm");
    let chart = repo_root().join("charts/gatewright");
    assert!(
        helm.is_file(),
        "no Helm at {}: run `bash charts/check.sh` (or `make chart`) to build it",
        helm.display()
    );
    assert!(
        chart.join("Chart.yaml").is_file(),
        "no chart at {}",
        chart.display()
    );
    let out = std::process::Command::new(&helm)
        .args(["template", "gatewright"])
        .arg(&chart)
        .args(["--namespace", ns])
        .env("HELM_CACHE_HOME", dir.join("helm/cache"))
        .env("HELM_CONFIG_HOME", dir.join("helm/config"))
        .env("HELM_DATA_HOME", dir.join("helm/data"))
        .output()
        .expect("running helm template");
    assert!(
        out.status.success(),
        "helm template failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("helm's output is UTF-8");
    let docs = yaml_docs(&text).expect("the rendered chart parses");
    let kinds = [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    ];
    let picked: Vec<Value> = docs
        .into_iter()
        .filter(|d| kinds.iter().any(|k| d["kind"] == *k))
        .collect();
    for k in kinds {
        assert!(
            picked.iter().any(|d| d["kind"] == k),
            "the rendered chart has no {k}"
        );
    }
    picked
}

/// Whether `line` has `403` as a number of its own (an HTTP status).
fn has_403(line: &str) -> bool {
    line.match_indices("403").any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = line[i + 3..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric())
            && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_privilege_rbac_of_the_chart() {
    const NS: &str = "gatewright-system";
    const NAME: &str = "gatewright.dev/t5-rbac";
    let cluster = Cluster::shared();
    let kube = cluster.kube().await;
    let dir = TestDir::new("t5-rbac");
    let rbac = chart_rbac(&dir.path, NS);
    kube.apply(&namespace(NS))
        .await
        .expect("creating the namespace");
    for obj in &rbac {
        kube.apply_value(obj)
            .await
            .expect("applying the chart's RBAC");
    }
    let sa = rbac
        .iter()
        .find(|d| d["kind"] == "ServiceAccount")
        .and_then(|d| d["metadata"]["name"].as_str())
        .expect("the ServiceAccount has a name");
    let user = format!("system:serviceaccount:{NS}:{sa}");
    let kubeconfig = cluster.impersonating_kubeconfig(&dir.path.join("kubeconfig"), &user, &[]);
    let mut spec = controller_spec(cluster, "a", NS, NAME, Infra::Kubernetes);
    spec.kubeconfig = kubeconfig;
    // The kubeconfig really is limited to the chart's RBAC.
    let limited = Kube::from_kubeconfig(&spec.kubeconfig)
        .await
        .expect("a client as the chart's ServiceAccount");
    let err = limited
        .list("v1", "Pod", Some("default"))
        .await
        .expect_err("the chart's ServiceAccount may list Pods");
    assert!(
        err.contains("403"),
        "want 403 listing Pods as {user}, got: {err}"
    );
    let mut c = Controller::start(&dir.path, spec);

    // The status and provisioning flows, in a namespace of their own.
    provisioning_flow(
        &kube,
        "t5-rbac",
        NAME,
        28005,
        ParamsRef::Class,
        &mut c,
        false,
    )
    .await;
    assert!(
        c.is_leader().await.expect("asking the controller"),
        "the controller does not lead"
    );
    // The Warning Event on an object it cannot decode (section 6).
    allow_future_filter(&kube).await;
    create_future_route(
        &kube,
        &future_route(
            "t5-rbac",
            "undecodable",
            "gw",
            "undecodable.example.test",
            "echo",
        ),
    )
    .await;
    wait_for(
        "an Undecodable Warning Event published with the chart's RBAC",
        WAIT,
        || undecodable_event(&kube, NAME, "t5-rbac", "undecodable"),
    )
    .await;
    kube.delete(
        "gateway.networking.k8s.io/v1",
        "HTTPRoute",
        Some("t5-rbac"),
        "undecodable",
    )
    .await
    .expect("deleting the undecodable route");
    let log = c.log_text();
    let denied: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Forbidden") || l.contains("forbidden") || has_403(l))
        .collect();
    assert!(
        denied.is_empty(),
        "the controller was denied something with the chart's RBAC ({user}):\n{}",
        denied.join("\n")
    );
}

// ---------------------------------------------------------------------------
// 6. One object the Rust types cannot decode never stops a watch.

/// A filter type of a pretend newer Gateway API release: the HTTPRoute CRD
/// allows it after [`allow_future_filter`], Gatewright's types do not know
/// it, so a route using it cannot be decoded.
const FUTURE_FILTER: &str = "FutureFilter";

/// Makes the shared cluster's HTTPRoute CRD allow [`FUTURE_FILTER`] in
/// `spec.rules[].filters[].type`, in every version, as a newer release
/// would. Only adds an enum value, so routes of other tests are as valid as
/// before; retries when another test changes the CRD at the same time.
async fn allow_future_filter(kube: &Kube) {
    const CRD: &str = "httproutes.gateway.networking.k8s.io";
    let api = kube
        .api("apiextensions.k8s.io/v1", "CustomResourceDefinition", None)
        .await
        .expect("an API for CRDs");
    for _ in 0..20 {
        let mut crd = api.get(CRD).await.unwrap_or_else(|e| {
            panic!("reading the CRD {CRD}: {}", kube_error(&e));
        });
        let versions = crd.data["spec"]["versions"]
            .as_array_mut()
            .unwrap_or_else(|| panic!("the CRD {CRD} has no spec.versions"));
        let mut changed = false;
        for version in versions {
            let name = version["name"].clone();
            let values = version
                .pointer_mut(
                    "/schema/openAPIV3Schema/properties/spec/properties/rules/items/properties\
                     /filters/items/properties/type/enum",
                )
                .and_then(Value::as_array_mut)
                .unwrap_or_else(|| {
                    panic!("version {name} of the CRD {CRD} has no enum of filter types")
                });
            if !values.iter().any(|v| v == FUTURE_FILTER) {
                values.push(json!(FUTURE_FILTER));
                changed = true;
            }
        }
        if !changed {
            return;
        }
        match api.replace(CRD, &Default::default(), &crd).await {
            Ok(_) => return,
            Err(e) if objects::is_code(&e, 409) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!(
                "allowing {FUTURE_FILTER} in the CRD {CRD}: {}",
                kube_error(&e)
            ),
        }
    }
    panic!("could not change the CRD {CRD}: 20 conflicts in a row");
}

/// An HTTPRoute like [`http_route`] whose rule has a [`FUTURE_FILTER`].
fn future_route(ns: &str, name: &str, gw: &str, hostname: &str, backend: &str) -> String {
    format!(
        "{}    filters:\n    - type: {FUTURE_FILTER}\n",
        http_route(ns, name, gw, hostname, "/", backend)
    )
}

/// Creates a route with a [`FUTURE_FILTER`], retrying while the API server
/// still validates with the CRD's previous schema.
async fn create_future_route(kube: &Kube, yaml: &str) {
    wait_for(
        "the API server to accept an HTTPRoute with a FutureFilter",
        WAIT,
        async || kube.apply(yaml).await.map(|_| ()),
    )
    .await;
}

/// The Warning Events with reason Undecodable on HTTPRoute `ns/name` from
/// the controller named `controller` (every test's controller watches every
/// namespace, so others may report the same route).
async fn undecodable_events(
    kube: &Kube,
    controller: &str,
    ns: &str,
    name: &str,
) -> Result<Vec<Value>, String> {
    let events = kube.list("events.k8s.io/v1", "Event", Some(ns)).await?;
    Ok(events
        .into_iter()
        .filter(|e| {
            e["regarding"]["kind"] == "HTTPRoute"
                && e["regarding"]["name"] == name
                && e["reason"] == "Undecodable"
                && e["type"] == "Warning"
                && e["reportingController"] == controller
        })
        .collect())
}

/// The one Undecodable Event of `controller` on HTTPRoute `ns/name`,
/// naming the unknown filter type.
async fn undecodable_event(
    kube: &Kube,
    controller: &str,
    ns: &str,
    name: &str,
) -> Result<Value, String> {
    let events = undecodable_events(kube, controller, ns, name).await?;
    let [event] = &events[..] else {
        return Err(format!(
            "{} Undecodable Warning Events of {controller} on HTTPRoute {ns}/{name}, want 1: {}",
            events.len(),
            clip(&Value::from(events.clone()).to_string(), 1500)
        ));
    };
    let note = event["note"].as_str().unwrap_or_default();
    if !note.contains(FUTURE_FILTER) {
        return Err(format!(
            "the Event's note does not name {FUTURE_FILTER}: {note}"
        ));
    }
    Ok(event.clone())
}

/// Waits until the controller has run a round after the `before`th.
async fn round_after(c: &Controller, before: u64, what: &str) {
    wait_for(what, WAIT, || async {
        let now = translations(c).await?;
        if now > before {
            Ok(now)
        } else {
            Err(format!("translations still {now}"))
        }
    })
    .await;
}

/// How many rounds (`gatewright_translations_total`) the controller ran.
async fn translations(c: &Controller) -> Result<u64, String> {
    let (status, body) = c.admin_get("/metrics").await?;
    if status != 200 {
        return Err(format!("/metrics answered {status}"));
    }
    body.lines()
        .find_map(|l| l.strip_prefix("gatewright_translations_total "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| "no gatewright_translations_total in /metrics".to_owned())
}

/// The value of `gatewright_undecodable_objects{kind="HTTPRoute"}` on the
/// controller's /metrics.
async fn undecodable_routes_metric(c: &Controller) -> Result<String, String> {
    let (status, body) = c.admin_get("/metrics").await?;
    if status != 200 {
        return Err(format!("/metrics answered {status}"));
    }
    body.lines()
        .find_map(|l| l.strip_prefix("gatewright_undecodable_objects{kind=\"HTTPRoute\"} "))
        .map(str::to_string)
        .ok_or_else(|| {
            let ours: Vec<&str> = body.lines().filter(|l| l.contains("undecodable")).collect();
            format!("no HTTPRoute series of gatewright_undecodable_objects: {ours:?}")
        })
}

/// Whether the configuration served to Gateway `ns/gw` has `hostname`.
async fn served(c: &Controller, ns: &str, gw: &str, hostname: &str) -> Result<bool, String> {
    let (status, body) = c
        .admin_get(&format!("/debug/config_dump?gateway={ns}/{gw}"))
        .await?;
    if status != 200 {
        return Err(format!(
            "config_dump of {ns}/{gw}: {status} {}",
            clip(&body, 300)
        ));
    }
    Ok(body.contains(hostname))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_route_never_stops_the_others() {
    const NS: &str = "t6-undecodable";
    const NAME: &str = "gatewright.dev/t6-undecodable";
    /// How soon valid routes must be served despite an undecodable one.
    const SOON: Duration = Duration::from_secs(15);
    let cluster = Cluster::shared();
    let kube = cluster.kube().await;
    let dir = TestDir::new(NS);
    allow_future_filter(&kube).await;
    kube.apply(&namespace(NS))
        .await
        .expect("creating the namespace");

    // A: an undecodable route is stored before the controller starts.
    create_future_route(
        &kube,
        &future_route(NS, "bad-a", "gw", "bad-a.example.test", "echo"),
    )
    .await;
    kube.apply(
        &[
            gateway_class(NS, NAME, None),
            "---\n".into(),
            gateway(NS, "gw", NS, 28006, ""),
            "---\n".into(),
            service(NS, "echo", "10.244.6.10"),
            "---\n".into(),
            http_route(NS, "good-a", "gw", "good-a.example.test", "/", "echo"),
        ]
        .concat(),
    )
    .await
    .expect("creating the objects");
    let c = Controller::start(
        &dir.path,
        controller_spec(cluster, "a", NS, NAME, Infra::Host),
    );
    wait_for(
        "A: the valid route Accepted next to an undecodable one",
        SOON,
        || route_status(&kube, NS, "good-a", NAME, "gw", ("True", None)),
    )
    .await;
    wait_for(
        "A: the Gateway Programmed with 1 attached route",
        SOON,
        || gateway_programmed(&kube, NS, "gw", 1),
    )
    .await;
    wait_for("A: the valid route served", SOON, async || {
        served(&c, NS, "gw", "good-a.example.test")
            .await?
            .then_some(())
            .ok_or_else(|| "good-a.example.test is not in the served configuration".to_string())
    })
    .await;
    eprintln!(
        "A: good-a Accepted, the Gateway Programmed and good-a served {:.2} s after the \
         controller started",
        c.started.elapsed().as_secs_f64()
    );
    let event_a = wait_for("A: an Undecodable Warning Event on bad-a", SOON, || {
        undecodable_event(&kube, NAME, NS, "bad-a")
    })
    .await;
    eprintln!("A: the Event on bad-a: {}", event_a["note"]);
    wait_for(
        "A: the metric counting 1 undecodable HTTPRoute",
        SOON,
        async || match undecodable_routes_metric(&c).await? {
            v if v == "1" => Ok(()),
            v => Err(format!("the metric is {v}")),
        },
    )
    .await;
    assert!(
        !served(&c, NS, "gw", "bad-a.example.test")
            .await
            .expect("reading the served configuration"),
        "the undecodable route is in the served configuration"
    );

    // B: another undecodable route while the controller runs, then a valid
    // one.
    create_future_route(
        &kube,
        &future_route(NS, "bad-b", "gw", "bad-b.example.test", "echo"),
    )
    .await;
    kube.apply(&http_route(
        NS,
        "good-b",
        "gw",
        "good-b.example.test",
        "/",
        "echo",
    ))
    .await
    .expect("creating a valid route after the undecodable one");
    let t = Instant::now();
    wait_for(
        "B: the valid route created after an undecodable one Accepted",
        SOON,
        || route_status(&kube, NS, "good-b", NAME, "gw", ("True", None)),
    )
    .await;
    wait_for("B: the valid route served", SOON, async || {
        served(&c, NS, "gw", "good-b.example.test")
            .await?
            .then_some(())
            .ok_or_else(|| "good-b.example.test is not in the served configuration".to_string())
    })
    .await;
    wait_for("B: the Gateway counting 2 attached routes", SOON, || {
        gateway_programmed(&kube, NS, "gw", 2)
    })
    .await;
    eprintln!(
        "B: good-b Accepted and served {:.2} s after it was created",
        t.elapsed().as_secs_f64()
    );
    wait_for("B: an Undecodable Warning Event on bad-b", SOON, || {
        undecodable_event(&kube, NAME, NS, "bad-b")
    })
    .await;
    wait_for(
        "B: the metric counting 2 undecodable HTTPRoutes",
        SOON,
        async || match undecodable_routes_metric(&c).await? {
            v if v == "2" => Ok(()),
            v => Err(format!("the metric is {v}")),
        },
    )
    .await;
    // Every change since A ran a round: still one Event on bad-a, never
    // repeated (a repeat would be a new Event or a series on this one).
    let again = undecodable_event(&kube, NAME, NS, "bad-a")
        .await
        .unwrap_or_else(|e| panic!("after B: {e}"));
    assert_eq!(
        (&again["metadata"]["name"], &again["series"]),
        (&event_a["metadata"]["name"], &Value::Null),
        "bad-a's Event was published again for the same version: {again}"
    );
    let log = c.log_text();
    for name in ["bad-a", "bad-b"] {
        let warned = log
            .lines()
            .filter(|l| l.contains("cannot decode") && l.contains(&format!("{NS}/{name}")))
            .count();
        assert_eq!(
            warned, 1,
            "want one `cannot decode` warning naming {NS}/{name} in the controller's log"
        );
    }

    // Fixed or deleted: no longer reported, and the fixed one is served.
    kube.apply(&http_route(
        NS,
        "bad-a",
        "gw",
        "bad-a.example.test",
        "/",
        "echo",
    ))
    .await
    .expect("fixing bad-a");
    kube.delete(
        "gateway.networking.k8s.io/v1",
        "HTTPRoute",
        Some(NS),
        "bad-b",
    )
    .await
    .expect("deleting bad-b");
    wait_for("the fixed route Accepted", SOON, || {
        route_status(&kube, NS, "bad-a", NAME, "gw", ("True", None))
    })
    .await;
    wait_for(
        "the metric back to 0",
        SOON,
        async || match undecodable_routes_metric(&c).await? {
            v if v == "0" => Ok(()),
            v => Err(format!("the metric is {v}")),
        },
    )
    .await;
}
