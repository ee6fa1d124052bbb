//! The embedded CRD bundle: every rule compiles, the list of files is
//! complete, and objects that break real schema and CEL rules of the
//! Gateway API are refused with the rule's message and field path.

use gatewright_validate::{Checked, FieldErrorKind, installed, validate};
use serde_json::{Value, json};
use std::path::Path;

/// Reading the bundle compiles every schema and every CEL rule (transition
/// rules included) and checks each function a rule calls is one we can
/// evaluate; any failure fails the whole bundle, and so this test.
#[test]
fn every_rule_of_every_crd_compiles() {
    let crds = match installed() {
        Ok(crds) => crds,
        Err(e) => panic!("the bundle does not compile: {e}"),
    };
    let rules = crds.rules();
    let transition = rules.iter().filter(|(_, _, t)| *t).count();
    // Over 300 rule entries across the served versions of v1.7.0's CRDs.
    assert!(rules.len() > 300, "only {} rules read", rules.len());
    assert!(transition >= 1, "the bundle has `self == oldSelf` rules");
    let kinds: Vec<_> = crds.kinds().map(|(_, k)| k).collect();
    for kind in [
        "Gateway",
        "GatewayClass",
        "HTTPRoute",
        "GRPCRoute",
        "TLSRoute",
        "TCPRoute",
        "UDPRoute",
        "ListenerSet",
        "ReferenceGrant",
        "BackendTLSPolicy",
        "XBackendTrafficPolicy",
        "XMesh",
        "ProxyParameters",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
}

/// A refreshed bundle (`make crds`) with a new CRD file must be embedded
/// too, or its kind would go unchecked.
#[test]
fn the_embedded_list_names_every_crd_file() {
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let embedded: Vec<&str> = gatewright_validate::bundle_files().collect();
    for folder in ["gateway-api-v1.7.0/experimental", "gatewright"] {
        for entry in std::fs::read_dir(crds.join(folder)).expect("crds folder") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("read");
            if !text.contains("kind: CustomResourceDefinition") {
                continue;
            }
            let name = format!(
                "{folder}/{}",
                path.file_name().and_then(|n| n.to_str()).expect("name")
            );
            assert!(embedded.contains(&name.as_str()), "{name} is not embedded");
        }
    }
}

fn gateway(listeners: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "g", "namespace": "default"},
        "spec": {"gatewayClassName": "c", "listeners": listeners},
    })
}

fn route(rules: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r", "namespace": "default"},
        "spec": {"parentRefs": [{"name": "g"}], "rules": rules},
    })
}

/// The refusal's text, failing when the object is accepted.
fn refused(object: &Value) -> String {
    match validate(object) {
        Ok(checked) => panic!("accepted ({checked:?}): {object}"),
        Err(refusal) => refusal.to_string(),
    }
}

#[test]
fn valid_objects_and_core_kinds_pass() {
    let g = gateway(json!([{"name": "http", "port": 80, "protocol": "HTTP"}]));
    assert_eq!(validate(&g), Ok(Checked::Valid));
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"whatever": 1}});
    assert_eq!(validate(&svc), Ok(Checked::NoCrd));
}

#[test]
fn schema_rules_are_enforced() {
    let port = |p: i64| gateway(json!([{"name": "http", "port": p, "protocol": "HTTP"}]));
    assert_eq!(
        refused(&port(0)),
        "spec.listeners[0].port: Invalid value: 0: should be greater than or equal to 1"
    );
    assert_eq!(
        refused(&port(65536)),
        "spec.listeners[0].port: Invalid value: 65536: should be less than or equal to 65535"
    );

    let mut missing = gateway(json!([{"name": "http", "port": 80, "protocol": "HTTP"}]));
    missing["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("gatewayClassName");
    assert_eq!(refused(&missing), "spec.gatewayClassName: Required value");

    let long = format!("{}.example.com", "a".repeat(250));
    let host = gateway(json!([{"name": "http", "port": 80, "protocol": "HTTP", "hostname": long}]));
    assert!(
        refused(&host).starts_with(
            "spec.listeners[0].hostname: Too long: may not be more than 253 characters"
        ),
        "{}",
        refused(&host)
    );
    let bad_host = gateway(
        json!([{"name": "http", "port": 80, "protocol": "HTTP", "hostname": "Not_A_Host"}]),
    );
    assert!(
        refused(&bad_host)
            .starts_with("spec.listeners[0].hostname: Invalid value: \"Not_A_Host\": should match"),
        "{}",
        refused(&bad_host)
    );

    let protocol = gateway(json!([{"name": "http", "port": 80, "protocol": "http/2!"}]));
    assert!(refused(&protocol).starts_with("spec.listeners[0].protocol: Invalid value"));

    let mut unknown = gateway(json!([{"name": "http", "port": 80, "protocol": "HTTP"}]));
    unknown["spec"]["listeners"][0]["portt"] = json!(81);
    assert_eq!(
        refused(&unknown),
        "spec.listeners[0].portt: unknown field (not in the CRD's schema; a cluster would drop it)"
    );

    let typed = gateway(json!([{"name": "http", "port": "80", "protocol": "HTTP"}]));
    assert_eq!(
        refused(&typed),
        "spec.listeners[0].port: Invalid value: \"80\": must be of type integer"
    );

    // x-kubernetes-list-type: map keyed by name.
    let dup = gateway(json!([
        {"name": "http", "port": 80, "protocol": "HTTP"},
        {"name": "http", "port": 81, "protocol": "HTTP"},
    ]));
    assert!(
        refused(&dup).starts_with("spec.listeners[1]: Duplicate value: {\"name\":\"http\"}"),
        "{}",
        refused(&dup)
    );

    // maxItems: a Gateway has at most 64 listeners.
    let many: Vec<Value> = (0..65)
        .map(|i| json!({"name": format!("l{i}"), "port": 1000 + i, "protocol": "HTTP"}))
        .collect();
    assert!(
        refused(&gateway(Value::Array(many))).contains("Too many: 65: must have at most 64 items")
    );

    // oneOf / anyOf with format: an IPAddress address must be an IP.
    let mut addr = gateway(json!([{"name": "http", "port": 80, "protocol": "HTTP"}]));
    addr["spec"]["addresses"] = json!([{"value": "not-an-ip"}]);
    assert!(
        refused(&addr).contains("spec.addresses[0]"),
        "{}",
        refused(&addr)
    );
    addr["spec"]["addresses"] = json!([{"value": "10.0.0.1"}]);
    assert_eq!(validate(&addr), Ok(Checked::Valid));

    // Versions and kinds the CRDs do not serve.
    let mut version = gateway(json!([{"name": "http", "port": 80, "protocol": "HTTP"}]));
    version["apiVersion"] = json!("gateway.networking.k8s.io/v9");
    assert!(refused(&version).starts_with("apiVersion: version v9 is not served"));
    let kind = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateways", "metadata": {"name": "x"}});
    assert!(refused(&kind).starts_with("kind: no CRD of group gateway.networking.k8s.io"));
}

#[test]
fn cel_rules_are_enforced_with_their_message_and_path() {
    let tcp = gateway(
        json!([{"name": "tcp", "port": 9000, "protocol": "TCP", "hostname": "a.example.com"}]),
    );
    assert_eq!(
        refused(&tcp),
        "spec.listeners: hostname must not be specified for protocols ['TCP', 'UDP']"
    );

    // ReplacePrefixMatch needs exactly one PathPrefix match.
    let redirect = route(json!([{
        "matches": [{"path": {"type": "Exact", "value": "/a"}}],
        "filters": [{"type": "RequestRedirect", "requestRedirect": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/b"}}}],
    }]));
    assert_eq!(
        refused(&redirect),
        "spec.rules[0]: When using RequestRedirect filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified"
    );
    // The same with a PathPrefix match is fine.
    let ok = route(json!([{
        "matches": [{"path": {"type": "PathPrefix", "value": "/a"}}],
        "filters": [{"type": "RequestRedirect", "requestRedirect": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/b"}}}],
    }]));
    assert_eq!(validate(&ok), Ok(Checked::Valid));

    let path = route(json!([{
        "filters": [{"type": "RequestRedirect", "requestRedirect": {"path": {"type": "ReplaceFullPath", "replacePrefixMatch": "/b"}}}],
    }]));
    let text = refused(&path);
    assert!(
        text.contains("spec.rules[0].filters[0].requestRedirect.path: type must be 'ReplacePrefixMatch' when replacePrefixMatch is set"),
        "{text}"
    );

    let missing = route(json!([{"filters": [{"type": "RequestRedirect"}]}]));
    assert_eq!(
        refused(&missing),
        "spec.rules[0].filters[0]: filter.requestRedirect must be specified for RequestRedirect filter.type"
    );

    // isIP, a Kubernetes library function: TLSRoute hostnames must not be
    // IPs (the pattern alone lets 10.0.0.1 through).
    let tls = |host: &str| {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "TLSRoute",
            "metadata": {"name": "t", "namespace": "default"},
            "spec": {"parentRefs": [{"name": "g"}], "hostnames": [host], "rules": [{"backendRefs": [{"name": "s", "port": 443}]}]},
        })
    };
    assert_eq!(
        refused(&tls("10.0.0.1")),
        "spec.hostnames: Hostnames cannot contain an IP"
    );
    assert_eq!(validate(&tls("a.example.com")), Ok(Checked::Valid));
}

/// Defaults are applied before rules run, as the API server does: a
/// listener's TLS mode defaults to Terminate, which then needs a
/// certificate; the rule reads `options`, absent here, so (as in a
/// cluster) it cannot be evaluated, which refuses the object too.
#[test]
fn defaults_apply_before_rules() {
    let https = gateway(
        json!([{"name": "https", "port": 443, "protocol": "HTTPS", "tls": {"certificateRefs": []}}]),
    );
    let text = refused(&https);
    assert!(
        text.starts_with("spec.listeners[0].tls: certificateRefs or options must be specified when mode is Terminate (rule `"),
        "{text}"
    );
    let passthrough = gateway(
        json!([{"name": "tls", "port": 443, "protocol": "TLS", "tls": {"mode": "Passthrough"}}]),
    );
    assert_eq!(validate(&passthrough), Ok(Checked::Valid));
}

/// Golden cases whose input the CRDs refuse, on purpose, with the refusal.
const KNOWN_INVALID: &[(&str, &str)] = &[
    (
        "gateway-xff-trusted-hops-invalid",
        "spec.envoy.xffNumTrustedHops: Invalid value: 99: should be less than or equal to 16",
    ),
    (
        "listener-hostname-conflict",
        "spec.listeners: Combination of port, protocol and hostname must be unique for each listener",
    ),
    (
        "listenerset-indistinct-within-set",
        "spec.listeners: Combination of port, protocol and hostname must be unique for each listener",
    ),
    (
        "httproute-replace-prefix-match-needs-path-prefix",
        "spec.rules[0]: When using URLRewrite filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified",
    ),
    (
        "httproute-replace-prefix-match-needs-path-prefix",
        "spec.rules[0]: When using RequestRedirect filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified",
    ),
    (
        "httproute-timeout-invalid",
        "spec.rules[0].timeouts: backendRequest timeout cannot be longer than request timeout",
    ),
    (
        "httproute-timeout-invalid",
        "spec.rules[0].timeouts.request: Invalid value: \"5 minutes\": should match '^([0-9]{1,5}(h|m|s|ms)){1,4}$'",
    ),
    (
        "httproute-cors-invalid-origin",
        "spec.rules[0].filters[0].cors.allowOrigins[0]: Invalid value: \"www.foo.com/path\": should match '(^\\*$)|(^(http(s)?):\\/\\/(((\\*\\.)?([a-zA-Z0-9\\-]+\\.)*[a-zA-Z0-9-]+|\\*)(:([0-9]{1,5}))?)$)'",
    ),
    (
        "httproute-retry-invalid",
        "spec.rules[0].retry.codes[0]: Invalid value: 302: should be greater than or equal to 400",
    ),
    (
        "httproute-retry-invalid",
        "spec.rules[0].retry.attempts: Invalid value: -1: should be greater than or equal to 0",
    ),
    (
        "httproute-retry-invalid",
        "spec.rules[0].retry.backoff: Invalid value: \"1 second\": should match '^([0-9]{1,5}(h|m|s|ms)){1,4}$'",
    ),
];

/// No golden case's input is refused: the false-positive check.
#[test]
fn every_golden_input_is_valid() {
    let cases = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/translator");
    let mut refusals = Vec::new();
    let mut checked = 0;
    for entry in std::fs::read_dir(&cases).expect("testdata") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        for document in serde_yaml::Deserializer::from_str(&text) {
            let yaml: serde_yaml::Value = serde::Deserialize::deserialize(document).expect("yaml");
            if yaml.is_null() {
                continue;
            }
            let json: Value = serde_json::to_value(yaml).expect("json");
            match validate(&json) {
                Ok(Checked::Valid) => checked += 1,
                Ok(Checked::NoCrd) => {}
                Err(refusal) => refusals.push(format!(
                    "{}: {} {}: {refusal}",
                    path.display(),
                    json["kind"],
                    json["metadata"]["name"]
                )),
            }
        }
    }
    assert!(checked > 200, "only {checked} objects checked");
    // The cases whose input a cluster refuses on purpose: they show the
    // translator's own defences (standalone now refuses them first).
    refusals.retain(|r| {
        !KNOWN_INVALID
            .iter()
            .any(|(case, message)| r.contains(&format!("/{case}.yaml:")) && r.ends_with(message))
    });
    assert!(refusals.is_empty(), "refused:\n{}", refusals.join("\n"));
}

#[test]
fn unevaluable_rules_refuse() {
    // A rule whose evaluation errors refuses the object (fail closed).
    let crds = gatewright_validate::Crds::from_yaml([r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
spec:
  group: example.com
  names: {kind: Widget}
  versions:
  - name: v1
    served: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              a: {type: string}
            x-kubernetes-validations:
            - rule: self.a == 'x'
              message: a must be x
            - rule: self == oldSelf
              message: immutable
"#])
    .expect("compiles");
    let object = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}});
    let refusal = crds.validate(&object).expect_err("refused");
    assert!(
        matches!(
            refusal.errors[0].kind,
            FieldErrorKind::RuleNotEvaluated { .. }
        ),
        "{refusal}"
    );
    let object = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"a": "x"}});
    assert_eq!(
        crds.validate(&object),
        Ok(Checked::Valid),
        "the transition rule is skipped"
    );

    let unknown = gatewright_validate::Crds::from_yaml([r#"
kind: CustomResourceDefinition
spec:
  group: example.com
  names: {kind: Widget}
  versions:
  - name: v1
    served: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-validations:
        - rule: self.spec.a.quantityValue() > 1
"#]);
    let e = unknown.expect_err("an unknown function fails the bundle");
    assert!(e.to_string().contains("quantityValue"), "{e}");
}

/// Timing, for the record (`cargo test --release -p gatewright-validate
/// --test bundle -- --ignored --nocapture`): reading the bundle, the
/// largest golden input, and 1,000 HTTPRoutes.
#[test]
#[ignore = "a measurement, not a check"]
fn timing() {
    use std::time::Instant;
    let start = Instant::now();
    installed().expect("bundle");
    println!("bundle read and compiled: {:?}", start.elapsed());

    let cases = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/translator");
    let mut largest = (0, std::path::PathBuf::new());
    for entry in std::fs::read_dir(&cases).expect("testdata") {
        let path = entry.expect("entry").path();
        let len = std::fs::metadata(&path).map_or(0, |m| m.len());
        if path.extension().is_some_and(|e| e == "yaml") && len > largest.0 {
            largest = (len, path);
        }
    }
    let text = std::fs::read_to_string(&largest.1).expect("read");
    let objects: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .filter_map(|d| {
            let yaml: serde_yaml::Value = serde::Deserialize::deserialize(d).ok()?;
            (!yaml.is_null()).then(|| serde_json::to_value(yaml).ok())?
        })
        .collect();
    let start = Instant::now();
    for object in &objects {
        let _ = validate(object);
    }
    println!(
        "largest golden input {} ({} objects): {:?}",
        largest.1.display(),
        objects.len(),
        start.elapsed()
    );

    let routes: Vec<Value> = (0..1000)
        .map(|i| {
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": {"name": format!("r{i}"), "namespace": "default"},
                "spec": {
                    "parentRefs": [{"name": "gw", "sectionName": "http"}],
                    "hostnames": [format!("r{i}.example.com")],
                    "rules": [{
                        "matches": [
                            {"path": {"type": "PathPrefix", "value": format!("/app/{i}")},
                             "headers": [{"name": "x-tenant", "value": "a"}]},
                            {"path": {"type": "Exact", "value": format!("/exact/{i}")}},
                        ],
                        "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-r", "value": "1"}]}}],
                        "backendRefs": [{"name": "svc", "port": 8080, "weight": 1}],
                        "timeouts": {"request": "10s", "backendRequest": "5s"},
                    }],
                },
            })
        })
        .collect();
    let start = Instant::now();
    for route in &routes {
        assert_eq!(validate(route), Ok(Checked::Valid));
    }
    println!("1,000 HTTPRoutes: {:?}", start.elapsed());
}
