//! Unit tests of the pure parts: names, objects, bootstrap (loaded by a real
//! Envoy), addresses.

use super::objects::*;
use super::*;
use serde_json::{Value, json};

fn config() -> KubeInfraConfig {
    KubeInfraConfig {
        controller_namespace: "gatewright-system".into(),
        xds_service: "gatewright".into(),
        xds_port: 18000,
        envoy_image: "envoyproxy/envoy:v1.40.0".into(),
    }
}

fn gateway(name: &str, infrastructure: Value) -> Gateway {
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": { "name": name, "namespace": "apps", "uid": "0d9e1c5a-uid" },
        "spec": {
            "gatewayClassName": "gatewright",
            "infrastructure": infrastructure,
            "listeners": [{ "name": "http", "port": 80, "protocol": "HTTP" }]
        }
    }))
    .expect("gateway")
}

fn ports() -> Vec<ListenerPort> {
    [
        (80, "HTTP"),
        (443, "HTTPS"),
        (443, "TLS"),
        (80, "HTTP"),
        (53, "UDP"),
        (5353, "TCP"),
    ]
    .into_iter()
    .map(|(port, protocol)| ListenerPort {
        port,
        protocol: protocol.into(),
    })
    .collect()
}

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("json")
}

#[test]
fn names_are_valid_stable_and_distinct() {
    assert_eq!(object_name("web"), "gatewright-web");
    assert_eq!(object_name("web"), object_name("web"));
    let long_a = format!("{}a", "x".repeat(252));
    let long_b = format!("{}b", "x".repeat(252));
    let dotted = "my.gateway.example";
    let digit = "1gw";
    let names: Vec<String> = [
        long_a.as_str(),
        long_b.as_str(),
        dotted,
        "my-gateway-example",
        digit,
    ]
    .iter()
    .map(|n| object_name(n))
    .collect();
    for name in &names {
        assert!(name.len() <= 63, "{name} is too long");
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "{name} is not a DNS label"
        );
        assert!(name.starts_with("gatewright-") && !name.ends_with('-'));
        assert!(client_secret_name(name).len() <= 253);
    }
    let distinct: BTreeSet<&String> = names.iter().collect();
    assert_eq!(distinct.len(), names.len(), "{names:?}");
    // A name that fits exactly is kept; one character more is shortened.
    let fits = "a".repeat(63 - "gatewright-".len());
    assert_eq!(object_name(&fits), format!("gatewright-{fits}"));
    assert_ne!(
        object_name(&format!("{fits}a")),
        format!("gatewright-{fits}a")
    );

    assert_eq!(label_value("web"), "web");
    let long = label_value(&long_a);
    assert!(long.len() <= 63);
    assert_ne!(long, label_value(&long_b));
}

#[test]
fn a_requested_ip_address_is_asked_of_the_load_balancer() {
    let mut gw = gateway("web", json!({}));
    let service = |gw: &Gateway| {
        to_json(
            &build(gw, &ProxyParametersSpec::default(), &ports(), &config())
                .expect("build")
                .service,
        )
    };
    assert_eq!(service(&gw)["spec"].get("loadBalancerIP"), None);
    gw.spec.addresses = Some(
        serde_json::from_value(json!([
            { "type": "IPAddress", "value": "" },
            { "value": "10.245.0.200" },
            { "type": "IPAddress", "value": "10.245.0.201" },
        ]))
        .expect("addresses"),
    );
    // The first non-empty one: a Service asks for a single IP.
    assert_eq!(service(&gw)["spec"]["loadBalancerIP"], "10.245.0.200");
    let cluster_ip = ProxyParametersSpec {
        service: Some(
            serde_json::from_value(json!({ "type": "ClusterIP" })).expect("service parameters"),
        ),
        ..ProxyParametersSpec::default()
    };
    let objects = build(&gw, &cluster_ip, &ports(), &config()).expect("build");
    assert_eq!(
        to_json(&objects.service)["spec"].get("loadBalancerIP"),
        None
    );
}

#[test]
fn objects_are_owned_labelled_and_named() {
    let gw = gateway(
        "web",
        json!({
            "labels": { "team": "a", "app.kubernetes.io/managed-by": "someone-else" },
            "annotations": { "note": "hi" }
        }),
    );
    let objects = build(&gw, &ProxyParametersSpec::default(), &ports(), &config()).expect("build");
    let metas = [
        &objects.service_account.metadata,
        &objects.config_map.metadata,
        &objects.deployment.metadata,
        &objects.service.metadata,
    ];
    for meta in metas {
        assert_eq!(meta.name.as_deref(), Some("gatewright-web"));
        assert_eq!(meta.namespace.as_deref(), Some("apps"));
        let labels = meta.labels.as_ref().expect("labels");
        assert_eq!(labels[MANAGED_BY_LABEL], "gatewright", "ours win");
        assert_eq!(labels[GATEWAY_NAME_LABEL], "web");
        assert_eq!(labels[GATEWAY_API_NAME_LABEL], "web");
        assert_eq!(labels["team"], "a");
        assert_eq!(
            meta.annotations.as_ref().expect("annotations")["note"],
            "hi"
        );
        let owner = &meta.owner_references.as_ref().expect("owners")[0];
        assert_eq!(owner.kind, "Gateway");
        assert_eq!(owner.api_version, "gateway.networking.k8s.io/v1");
        assert_eq!(owner.uid, "0d9e1c5a-uid");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.block_owner_deletion, Some(true));
        assert!(is_ours(meta, "gatewright-system"));
        assert!(!is_ours(meta, "other"));
    }
    assert_eq!(
        objects.service_account.automount_service_account_token,
        Some(false)
    );

    let deployment = to_json(&objects.deployment);
    let pod = &deployment["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["team"], "a");
    assert_eq!(pod["metadata"]["annotations"]["note"], "hi");
    assert!(pod["metadata"]["annotations"][BOOTSTRAP_HASH_ANNOTATION].is_string());
    let selector = &deployment["spec"]["selector"]["matchLabels"];
    for (k, v) in selector.as_object().expect("selector") {
        assert_eq!(&pod["metadata"]["labels"][k], v, "pods match the selector");
    }
    assert_eq!(deployment["spec"]["replicas"], 1);
    let spec = &pod["spec"];
    assert_eq!(spec["serviceAccountName"], "gatewright-web");
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert_eq!(
        spec["securityContext"]["sysctls"],
        json!([{ "name": "net.ipv4.ip_unprivileged_port_start", "value": "0" }])
    );
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(spec["terminationGracePeriodSeconds"], 45);
    let container = &spec["containers"][0];
    assert_eq!(container["image"], "envoyproxy/envoy:v1.40.0");
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(
        container["args"],
        json!([
            "--config-path",
            "/etc/gatewright/bootstrap/envoy.json",
            "--log-level",
            "info",
            "--concurrency",
            "2",
            "--drain-time-s",
            "15",
            "--disable-hot-restart"
        ])
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"],
        json!({ "path": "/ready", "port": 19001 })
    );
    let pre_stop = container["lifecycle"]["preStop"]["exec"]["command"][2]
        .as_str()
        .expect("preStop");
    assert!(
        pre_stop.contains("/dev/tcp/127.0.0.1/19000")
            && pre_stop.contains("/drain_listeners?graceful")
    );
    assert_eq!(
        spec["volumes"][1]["secret"]["secretName"],
        json!(client_secret_name("web"))
    );
    assert_eq!(
        container["volumeMounts"][1]["mountPath"],
        "/etc/gatewright/xds"
    );

    let service = to_json(&objects.service);
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    assert_eq!(service["spec"]["selector"], *selector);
    assert_eq!(
        service["spec"]["ports"],
        json!([
            { "name": "udp-53", "protocol": "UDP", "port": 53, "targetPort": 53 },
            { "name": "tcp-80", "protocol": "TCP", "port": 80, "targetPort": 80 },
            { "name": "tcp-443", "protocol": "TCP", "port": 443, "targetPort": 443 },
            { "name": "tcp-5353", "protocol": "TCP", "port": 5353, "targetPort": 5353 },
        ])
    );
}

#[test]
fn parameters_shape_the_objects() {
    let params: ProxyParametersSpec = serde_json::from_value(json!({
        "service": {
            "type": "ClusterIP",
            "annotations": { "lb": "x" },
            "labels": { "svc": "y" },
            "loadBalancerClass": "dropped-on-clusterip",
            "externalTrafficPolicy": "Local"
        },
        "deployment": {
            "replicas": 3,
            "image": "mirror/envoy:v1.40.0",
            "resources": { "limits": { "cpu": "1500m" } },
            "nodeSelector": { "pool": "edge" },
            "tolerations": [{ "key": "edge", "operator": "Exists", "effect": "NoSchedule" }],
            "podLabels": { "p": "1" },
            "podAnnotations": { "q": "2" }
        },
        "envoy": { "logLevel": "debug" }
    }))
    .expect("params");
    let objects = build(&gateway("web", Value::Null), &params, &ports(), &config()).expect("build");
    let service = to_json(&objects.service);
    assert_eq!(service["spec"]["type"], "ClusterIP");
    assert!(service["spec"].get("loadBalancerClass").is_none());
    assert!(service["spec"].get("externalTrafficPolicy").is_none());
    assert_eq!(service["metadata"]["annotations"]["lb"], "x");
    assert_eq!(service["metadata"]["labels"]["svc"], "y");
    let deployment = to_json(&objects.deployment);
    assert_eq!(deployment["spec"]["replicas"], 3);
    let pod = &deployment["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["p"], "1");
    assert_eq!(pod["metadata"]["annotations"]["q"], "2");
    assert_eq!(pod["spec"]["nodeSelector"]["pool"], "edge");
    assert_eq!(pod["spec"]["tolerations"][0]["key"], "edge");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], "mirror/envoy:v1.40.0");
    assert_eq!(container["resources"]["limits"]["cpu"], "1500m");
    let args = container["args"].as_array().expect("args");
    assert!(
        args.windows(2)
            .any(|w| w[0] == "--log-level" && w[1] == "debug")
    );
    assert!(
        args.windows(2)
            .any(|w| w[0] == "--concurrency" && w[1] == "2")
    );

    let lb: ProxyParametersSpec = serde_json::from_value(json!({
        "service": { "loadBalancerClass": "metal", "externalTrafficPolicy": "Local" },
        "envoy": { "concurrency": 3 }
    }))
    .expect("params");
    let objects = build(&gateway("web", Value::Null), &lb, &ports(), &config()).expect("build");
    let service = to_json(&objects.service);
    assert_eq!(service["spec"]["loadBalancerClass"], "metal");
    assert_eq!(service["spec"]["externalTrafficPolicy"], "Local");
    let args =
        to_json(&objects.deployment)["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    assert!(
        args.as_array()
            .expect("args")
            .windows(2)
            .any(|w| w[0] == "--concurrency" && w[1] == "3")
    );
}

#[test]
fn envoy_ports_avoid_listener_ports() {
    let listeners: Vec<ListenerPort> = [19000u16, 19001, 19002]
        .into_iter()
        .map(|port| ListenerPort {
            port,
            protocol: "HTTP".into(),
        })
        .collect();
    let bootstrap = kube_bootstrap(
        &ObjectKey::new("a", "b"),
        &config(),
        &ProxyParametersSpec::default(),
        &listeners,
        "/x",
        "/y",
    )
    .bootstrap;
    assert_eq!(
        bootstrap["admin"]["address"]["socket_address"]["port_value"],
        19003
    );
    assert_eq!(
        bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"],
        19004
    );
}

#[test]
fn gateways_without_uid_are_refused() {
    let mut gw = gateway("web", Value::Null);
    gw.metadata.uid = None;
    let err = build(&gw, &ProxyParametersSpec::default(), &ports(), &config()).expect_err("no uid");
    assert!(format!("{err:#}").contains("uid"));
}

#[test]
fn bootstrap_identifies_the_gateway_and_uses_mutual_tls() {
    let objects = build(
        &gateway("web", Value::Null),
        &ProxyParametersSpec::default(),
        &ports(),
        &config(),
    )
    .expect("build");
    let text = &objects.config_map.data.as_ref().expect("data")[BOOTSTRAP_KEY];
    let bootstrap: Value = serde_json::from_str(text).expect("bootstrap json");
    assert_eq!(bootstrap["node"]["id"], "gatewright/apps/web");
    assert_eq!(bootstrap["node"]["cluster"], "apps/web");
    assert_eq!(
        bootstrap["node"]["metadata"][gatewright_xds::GROUP_METADATA_KEY],
        "apps/web"
    );
    assert_eq!(
        bootstrap["admin"]["address"]["socket_address"]["address"],
        "127.0.0.1"
    );
    assert_eq!(
        bootstrap["dynamic_resources"]["ads_config"]["api_type"],
        "DELTA_GRPC"
    );
    let xds = &bootstrap["static_resources"]["clusters"][0];
    assert_eq!(xds["type"], "STRICT_DNS");
    let socket = &xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"];
    assert_eq!(socket["address"], "gatewright.gatewright-system.svc");
    assert_eq!(socket["port_value"], 18000);
    let tls = &xds["transport_socket"]["typed_config"]["common_tls_context"];
    // No certificate file is named in the bootstrap (it would be read only
    // once): both come through SDS from files in the ConfigMap's mount.
    assert!(tls.get("tls_certificates").is_none(), "{tls:#}");
    assert!(tls.get("validation_context").is_none(), "{tls:#}");
    let sds_source = |file: &str| {
        json!({
            "path_config_source": {
                "path": format!("{BOOTSTRAP_DIR}/{file}"),
                "watched_directory": { "path": BOOTSTRAP_DIR }
            },
            "resource_api_version": "V3"
        })
    };
    assert_eq!(
        tls["tls_certificate_sds_secret_configs"],
        json!([{ "name": "gatewright-xds-client-cert", "sds_config": sds_source(XDS_CLIENT_SDS_KEY) }])
    );
    let combined = &tls["combined_validation_context"];
    assert_eq!(
        combined["validation_context_sds_secret_config"],
        json!({ "name": "gatewright-xds-server-ca", "sds_config": sds_source(XDS_CA_SDS_KEY) })
    );
    assert_eq!(
        combined["default_validation_context"]["match_typed_subject_alt_names"],
        json!([{ "san_type": "DNS", "matcher": { "exact": "gatewright.gatewright-system.svc" } }])
    );

    // The SDS files, in the same ConfigMap: the Secret's files, watched
    // through the Secret's mount point (the kubelet's `..data` swap).
    let data = objects.config_map.data.as_ref().expect("data");
    let client: Value = serde_json::from_str(&data[XDS_CLIENT_SDS_KEY]).expect("client SDS json");
    assert_eq!(
        client,
        json!({ "resources": [{
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
            "name": "gatewright-xds-client-cert",
            "tls_certificate": {
                "certificate_chain": { "filename": "/etc/gatewright/xds/tls.crt" },
                "private_key": { "filename": "/etc/gatewright/xds/tls.key" },
                "watched_directory": { "path": "/etc/gatewright/xds" }
            }
        }] })
    );
    let ca: Value = serde_json::from_str(&data[XDS_CA_SDS_KEY]).expect("CA SDS json");
    assert_eq!(
        ca,
        json!({ "resources": [{
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
            "name": "gatewright-xds-server-ca",
            "validation_context": {
                "trusted_ca": { "filename": "/etc/gatewright/xds/ca.crt" },
                "watched_directory": { "path": "/etc/gatewright/xds" }
            }
        }] })
    );
    assert_eq!(data.len(), 3, "{:?}", data.keys());
}

/// The Envoy the bootstrap tests validate with (host.rs's too).
pub(crate) use gatewright_testkit::envoy as envoy_binary;

#[test]
fn real_envoy_accepts_the_bootstrap() {
    let envoy = envoy_binary();
    let dir = tempfile::tempdir().expect("temp dir");
    let cert =
        rcgen::generate_simple_self_signed(vec!["gatewright.gatewright-system.svc".to_owned()])
            .expect("certificate");
    let tls_dir = dir.path().join("xds");
    std::fs::create_dir_all(&tls_dir).expect("mkdir");
    std::fs::write(tls_dir.join("tls.crt"), cert.cert.pem()).expect("write cert");
    std::fs::write(tls_dir.join("tls.key"), cert.signing_key.serialize_pem()).expect("write key");
    std::fs::write(tls_dir.join("ca.crt"), cert.cert.pem()).expect("write ca");

    let long_name = "g".repeat(253);
    // Parameters that set the connection limit and a memory limit: the
    // overload manager gets both monitors and the heap actions.
    let limited: ProxyParametersSpec = serde_json::from_value(json!({
        "envoy": { "maxDownstreamConnections": 100 },
        "deployment": { "resources": { "limits": { "memory": "256Mi" } } }
    }))
    .expect("params");
    for (name, listeners, params) in [
        ("web", ports(), ProxyParametersSpec::default()),
        (long_name.as_str(), vec![], ProxyParametersSpec::default()),
        (
            "edge",
            vec![ListenerPort {
                port: 19001,
                protocol: "HTTP".into(),
            }],
            ProxyParametersSpec::default(),
        ),
        ("limited", ports(), limited.clone()),
    ] {
        let objects =
            build(&gateway(name, Value::Null), &params, &listeners, &config()).expect("build");
        // The very texts that go into the ConfigMap, with the Secret's
        // mount point moved to the temporary certificate files and the
        // ConfigMap's to a temporary folder holding the SDS files, so that
        // Envoy really reads them.
        let bootstrap_dir = dir.path().join("bootstrap");
        std::fs::create_dir_all(&bootstrap_dir).expect("mkdir");
        let localise = |text: &str| {
            text.replace(XDS_TLS_DIR, &tls_dir.display().to_string())
                .replace(BOOTSTRAP_DIR, &bootstrap_dir.display().to_string())
        };
        let data = objects.config_map.data.as_ref().expect("data");
        for (key, text) in data {
            std::fs::write(bootstrap_dir.join(key), localise(text)).expect("write a ConfigMap key");
        }
        let file = bootstrap_dir.join(BOOTSTRAP_KEY);
        let output = std::process::Command::new(&envoy)
            .arg("--mode")
            .arg("validate")
            .arg("-c")
            .arg(&file)
            .arg("--log-level")
            .arg("warning")
            .output()
            .expect("run envoy");
        assert!(
            output.status.success(),
            "Envoy rejected the bootstrap of {name}:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    // Envoy really reads the SDS file: without it, the same bootstrap fails.
    let bootstrap_dir = dir.path().join("bootstrap");
    std::fs::remove_file(bootstrap_dir.join(XDS_CLIENT_SDS_KEY)).expect("remove the SDS file");
    let output = std::process::Command::new(&envoy)
        .args(["--mode", "validate", "--log-level", "warning", "-c"])
        .arg(bootstrap_dir.join(BOOTSTRAP_KEY))
        .output()
        .expect("run envoy");
    assert!(
        !output.status.success(),
        "Envoy accepted a bootstrap whose SDS file is missing:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn overload_manager_limits_connections_and_watches_a_known_heap() {
    let bootstrap_of = |params: &ProxyParametersSpec| -> Value {
        let objects =
            build(&gateway("web", Value::Null), params, &ports(), &config()).expect("build");
        let text = &objects.config_map.data.as_ref().expect("data")[BOOTSTRAP_KEY];
        serde_json::from_str(text).expect("bootstrap json")
    };
    let default = bootstrap_of(&ProxyParametersSpec::default());
    let manager = &default["overload_manager"];
    let monitors = manager["resource_monitors"].as_array().expect("monitors");
    assert_eq!(monitors.len(), 1, "no heap monitor without a memory limit");
    assert_eq!(
        monitors[0]["name"],
        "envoy.resource_monitors.global_downstream_max_connections"
    );
    assert_eq!(
        monitors[0]["typed_config"]["max_active_downstream_connections"],
        50_000
    );
    assert!(manager.get("actions").is_none(), "{manager:#}");
    // The probe and the admin interface are never refused for load.
    assert_eq!(default["admin"]["ignore_global_conn_limit"], true);
    assert_eq!(
        default["static_resources"]["listeners"][0]["ignore_global_conn_limit"],
        true
    );

    let limited: ProxyParametersSpec = serde_json::from_value(json!({
        "envoy": { "maxDownstreamConnections": 100 },
        "deployment": { "resources": { "limits": { "memory": "1.5Gi" } } }
    }))
    .expect("params");
    let manager = bootstrap_of(&limited)["overload_manager"].clone();
    assert_eq!(
        manager["resource_monitors"][0]["typed_config"]["max_active_downstream_connections"],
        100
    );
    assert_eq!(
        manager["resource_monitors"][1]["typed_config"]["max_heap_size_bytes"],
        1_610_612_736u64
    );
    let actions: Vec<&str> = manager["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "envoy.overload_actions.shrink_heap",
            "envoy.overload_actions.stop_accepting_requests"
        ]
    );
}

#[test]
fn addresses_come_from_the_load_balancer_else_the_cluster_ip() {
    let service: Service = serde_json::from_value(json!({
        "spec": { "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::10"] },
        "status": { "loadBalancer": { "ingress": [{ "ip": "203.0.113.7" }, { "hostname": "lb.example.com" }] } }
    }))
    .expect("service");
    let addresses = service_addresses(&service);
    assert_eq!(
        addresses,
        vec![
            address("IPAddress", "203.0.113.7"),
            address("Hostname", "lb.example.com")
        ]
    );
    let pending: Service = serde_json::from_value(json!({
        "spec": { "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::10"] }
    }))
    .expect("service");
    assert_eq!(
        service_addresses(&pending),
        vec![
            address("IPAddress", "10.96.0.10"),
            address("IPAddress", "fd00::10")
        ]
    );
}

/// The Service of a Gateway follows its ListenerSets: a port only a set
/// uses is opened while the set is there and closed when it goes. A port of
/// the Gateway's own is open even while no route gives it an Envoy
/// listener (the TLS listener here).
#[test]
fn service_ports_follow_listener_sets() {
    let docs = [
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": { "name": "gatewright" },
            "spec": { "controllerName": gatewright_translator::DEFAULT_CONTROLLER_NAME }
        }),
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": { "name": "web", "namespace": "apps", "uid": "0d9e1c5a-uid" },
            "spec": {
                "gatewayClassName": "gatewright",
                "allowedListeners": { "namespaces": { "from": "Same" } },
                "listeners": [
                    { "name": "http", "port": 80, "protocol": "HTTP" },
                    { "name": "tls", "port": 8443, "protocol": "TLS", "tls": { "mode": "Passthrough" } }
                ]
            }
        }),
    ];
    let set = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "ListenerSet",
        "metadata": { "name": "team", "namespace": "apps" },
        "spec": {
            "parentRef": { "name": "web" },
            "listeners": [{ "name": "extra", "port": 8081, "protocol": "HTTP" }]
        }
    });
    let ports_of = |with_set: bool| {
        let mut input = gatewright_translator::Input::new();
        for d in docs.iter().chain(with_set.then_some(&set)) {
            input.add_document(d.clone()).expect("document");
        }
        let output = gatewright_translator::translate(&input);
        let key = ObjectKey::new("apps", "web");
        let resources = output.gateways.get(&key).expect("Gateway resources");
        let gw: &Gateway = input.gateways.first().expect("Gateway");
        listener_ports(gw, resources)
            .into_iter()
            .map(|p| (p.port, p.protocol))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ports_of(true),
        vec![
            (80, "HTTP".to_owned()),
            (8081, "TCP".to_owned()),
            (8443, "TLS".to_owned())
        ]
    );
    assert_eq!(
        ports_of(false),
        vec![(80, "HTTP".to_owned()), (8443, "TLS".to_owned())]
    );
}
