//! Synthetic translator inputs, shared by the benchmark
//! (`benches/translate.rs`, which includes this file with `#[path]`) and the
//! tests (`mod workload;`).
//!
//! Objects are written as the JSON a user would apply and go through
//! [`Input::add_document`], so they exercise the same decoding as real input;
//! Secrets are built as typed objects because their data is binary.

#![allow(dead_code)]

use gatewright_translator::{DEFAULT_CONTROLLER_NAME, Input};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The GatewayClass every workload Gateway uses.
pub const GATEWAY_CLASS: &str = "gatewright";

/// A self-signed ECDSA P-256 certificate for `*.example.com` and
/// `example.com`, valid until 2126.
pub const EXAMPLE_CERT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBrjCCAVSgAwIBAgIUTyLNWlRNMXHa16ADTbw2/X3FzSIwCgYIKoZIzj0EAwIw
GDEWMBQGA1UEAwwNKi5leGFtcGxlLmNvbTAgFw0yNjExMjEyMTI0NDhaGA8yMTI2
MTAyODIxMjQ0OFowGDEWMBQGA1UEAwwNKi5leGFtcGxlLmNvbTBZMBMGByqGSM49
AgEGCCqGSM49AwEHA0IABPK+AstN5tywx0MMlKdw9WdwCAXQOiBR7+REJxjeyT3/
3XeAqOSU5qXnY2D+b2hFNk+rpRBM+/lBIOmdiXmskz2jejB4MB0GA1UdDgQWBBSF
zzTLiFUsbjGAyW9UWdDqTyUp0DAfBgNVHSMEGDAWgBSFzzTLiFUsbjGAyW9UWdDq
TyUp0DAPBgNVHRMBAf8EBTADAQH/MCUGA1UdEQQeMByCDSouZXhhbXBsZS5jb22C
C2V4YW1wbGUuY29tMAoGCCqGSM49BAMCA0gAMEUCIGmxHqzkFL4YNQLuujyJ0Cal
zxNnKQeKBm8fKLQCDkEMAiEA987BpWpX2Z3yfX2FJePo2nLssFHFdBb0svxM/O/I
QGY=
-----END CERTIFICATE-----
";

/// The private key of [`EXAMPLE_CERT_PEM`].
pub const EXAMPLE_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgMecht56JXGooh10O
MdUzkWjs6lWhms/S3/TldD1kejGhRANCAATyvgLLTebcsMdDDJSncPVncAgF0Dog
Ue/kRCcY3sk9/913gKjklOal52Ng/m9oRTZPq6UQTPv5QSDpnYl5rJM9
-----END PRIVATE KEY-----
";

/// Adds one document, panicking with the document if the translator's
/// decoder rejects it (a bug in the generator, not in the input under test).
pub fn add(input: &mut Input, doc: Value) {
    let shown = doc.to_string();
    if let Err(err) = input.add_document(doc) {
        panic!("workload document rejected: {err}: {shown}");
    }
}

/// A GatewayClass with the given controllerName.
pub fn gateway_class(name: &str, controller_name: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GatewayClass",
        "metadata": {"name": name},
        "spec": {"controllerName": controller_name},
    })
}

/// A Namespace with labels.
pub fn namespace(name: &str, labels: &[(&str, &str)]) -> Value {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels},
    })
}

/// A `kubernetes.io/tls` Secret.
pub fn tls_secret(namespace: &str, name: &str, cert_pem: &str, key_pem: &str) -> Secret {
    let mut data = BTreeMap::new();
    data.insert(
        "tls.crt".to_owned(),
        ByteString(cert_pem.as_bytes().to_vec()),
    );
    data.insert(
        "tls.key".to_owned(),
        ByteString(key_pem.as_bytes().to_vec()),
    );
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

/// The `n`-th distinct IPv4 address of 10.0.0.0/8 (skipping .0 host parts,
/// so `n` up to 2^24 - 2^16 is enough for any workload).
pub fn ipv4(n: u32) -> String {
    let host = n % 255 + 1;
    let rest = n / 255;
    format!("10.{}.{}.{host}", (rest >> 8) & 0xff, rest & 0xff)
}

/// A Service port: (name, port, appProtocol).
pub type ServicePort<'a> = (&'a str, i32, Option<&'a str>);

/// A ClusterIP Service with the given ports (targetPort = port).
pub fn service(namespace: &str, name: &str, ports: &[ServicePort<'_>]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|&(port_name, port, app_protocol)| {
            let mut p = json!({
                "name": port_name,
                "port": port,
                "targetPort": port,
                "protocol": "TCP",
            });
            if let Some(app) = app_protocol {
                p["appProtocol"] = json!(app);
            }
            p
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"namespace": namespace, "name": name},
        "spec": {"type": "ClusterIP", "selector": {"app": name}, "ports": ports},
    })
}

/// An IPv4 EndpointSlice of Service `service` with the given endpoints
/// (address, ready) and ports (name, port).
pub fn endpoint_slice(
    namespace: &str,
    service: &str,
    suffix: &str,
    endpoints: &[(String, bool)],
    ports: &[(&str, i32)],
) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(address, ready)| {
            json!({
                "addresses": [address],
                "conditions": {"ready": ready, "serving": ready, "terminating": false},
            })
        })
        .collect();
    let ports: Vec<Value> = ports
        .iter()
        .map(|&(name, port)| json!({"name": name, "port": port, "protocol": "TCP"}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "namespace": namespace,
            "name": format!("{service}-{suffix}"),
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    })
}

/// A ReferenceGrant in `namespace` letting `from` (kind, namespace) pairs
/// refer to every object of the `to` kinds (core group) in `namespace`.
pub fn reference_grant(namespace: &str, name: &str, from: &[(&str, &str)], to: &[&str]) -> Value {
    let from: Vec<Value> = from
        .iter()
        .map(|&(kind, ns)| json!({"group": "gateway.networking.k8s.io", "kind": kind, "namespace": ns}))
        .collect();
    let to: Vec<Value> = to
        .iter()
        .map(|&kind| json!({"group": "", "kind": kind}))
        .collect();
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": {"namespace": namespace, "name": name},
        "spec": {"from": from, "to": to},
    })
}

/// `http_routes(n)`: one Gateway (`gateway/gw`, HTTP on port 80, routes
/// from all namespaces) and `n` HTTPRoutes in `default`, route `i` matching
/// PathPrefix `/svc-i` and sending to its own Service `svc-i` (port 8080)
/// with two ready endpoints.
pub fn http_routes(n: usize) -> Input {
    let mut input = Input::new();
    add(
        &mut input,
        gateway_class(GATEWAY_CLASS, DEFAULT_CONTROLLER_NAME),
    );
    add(&mut input, namespace("gateway", &[]));
    add(&mut input, namespace("default", &[]));
    add(
        &mut input,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"namespace": "gateway", "name": "gw"},
            "spec": {
                "gatewayClassName": GATEWAY_CLASS,
                "listeners": [{
                    "name": "http",
                    "protocol": "HTTP",
                    "port": 80,
                    "allowedRoutes": {"namespaces": {"from": "All"}},
                }],
            },
        }),
    );
    for i in 0..n {
        let svc = format!("svc-{i}");
        add(
            &mut input,
            service("default", &svc, &[("http", 8080, None)]),
        );
        let ip = u32::try_from(2 * i).expect("workload too large for 10.0.0.0/8");
        add(
            &mut input,
            endpoint_slice(
                "default",
                &svc,
                "abcde",
                &[(ipv4(ip), true), (ipv4(ip + 1), true)],
                &[("http", 8080)],
            ),
        );
        add(
            &mut input,
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": {"namespace": "default", "name": format!("route-{i}")},
                "spec": {
                    "parentRefs": [{"name": "gw", "namespace": "gateway"}],
                    "rules": [{
                        "matches": [{"path": {"type": "PathPrefix", "value": format!("/svc-{i}")}}],
                        "backendRefs": [{"name": svc, "port": 8080}],
                    }],
                },
            }),
        );
    }
    input
}

/// [`http_routes`] spread over `gateways` Gateways, `routes_each` routes
/// on each: `gateway/gw` takes the first `routes_each` routes, then
/// `gateway/gw-1`, `gateway/gw-2` and so on, all alike but for the name.
pub fn many_gateways(gateways: usize, routes_each: usize) -> Input {
    let mut input = http_routes(gateways * routes_each);
    let first = (*input.gateways[0]).clone();
    for g in 1..gateways {
        let mut gateway = first.clone();
        gateway.metadata.name = Some(format!("gw-{g}"));
        input.gateways.push(std::sync::Arc::new(gateway));
    }
    for (i, route) in input.http_routes.iter_mut().enumerate() {
        let g = i / routes_each.max(1);
        if g == 0 {
            continue;
        }
        let route = std::sync::Arc::make_mut(route);
        if let Some(parent) = route.spec.parent_refs.as_mut().and_then(|p| p.first_mut()) {
            parent.name = format!("gw-{g}");
        }
    }
    input
}

/// Number of application namespaces in [`large_mixed`].
pub const LARGE_NAMESPACES: usize = 10;
/// Number of Services (each with an EndpointSlice) in [`large_mixed`].
pub const LARGE_SERVICES: usize = 500;
/// Number of HTTPRoutes in [`large_mixed`].
pub const LARGE_HTTP_ROUTES: usize = 500;
/// Number of GRPCRoutes in [`large_mixed`].
pub const LARGE_GRPC_ROUTES: usize = 250;

/// A large mixed snapshot shaped like Envoy Gateway's "large" translation
/// benchmark: see [`mixed`] with the `LARGE_*` sizes.
pub fn large_mixed() -> Input {
    mixed(
        LARGE_NAMESPACES,
        LARGE_SERVICES,
        LARGE_HTTP_ROUTES,
        LARGE_GRPC_ROUTES,
    )
}

/// [`large_mixed`] with only its HTTP listener: every route is programmed
/// once instead of once per listener, the output size the issue's "500
/// HTTPRoutes, 250 GRPCRoutes, 500 Services" shape implies.
pub fn large_mixed_http_only() -> Input {
    let mut input = large_mixed();
    for gateway in input.gateways.iter_mut().map(std::sync::Arc::make_mut) {
        gateway.spec.listeners.retain(|l| l.protocol == "HTTP");
    }
    input
}

/// A mixed snapshot:
///
/// - Gateway `gateway-system/eg` with an HTTP listener on 80 and an HTTPS
///   listener on 443 for `*.example.com` (certificate from a Secret), both
///   admitting routes from all namespaces;
/// - `services` Services `svc-j` in namespace `ns-(j % namespaces)`, each
///   with an `http` port 8080 and an `h2c` `grpc` port 9090, and an
///   EndpointSlice of three endpoints (two ready);
/// - `http_routes` HTTPRoutes `http-i` in `ns-(i % namespaces)` for host
///   `app-i.example.com`: a header-matched rule with a weighted 80/20 split
///   over two Services, a `/static` Exact rule with a request header
///   modifier, and a catch-all rule; every 10th route sends its split's
///   second half to a Service in the next namespace (allowed by a
///   ReferenceGrant);
/// - `grpc_routes` GRPCRoutes `grpc-g` in `ns-(g % namespaces)` for host
///   `grpc-g.example.com`: a method match, a service match with a header
///   match and a weighted split, every 10th also crossing namespaces.
pub fn mixed(namespaces: usize, services: usize, http_routes: usize, grpc_routes: usize) -> Input {
    assert!(
        namespaces > 0 && services >= namespaces,
        "mixed workload needs a Service per namespace"
    );
    let mut input = Input::new();
    let ns = |k: usize| format!("ns-{}", k % namespaces);
    // Services in namespace `k`: k, k + namespaces, k + 2 * namespaces, ...
    let per_ns = services / namespaces;
    // The `m`-th Service (mod per_ns) of namespace `k`.
    let svc_in = |k: usize, m: usize| format!("svc-{}", (m % per_ns) * namespaces + k % namespaces);

    add(
        &mut input,
        gateway_class(GATEWAY_CLASS, DEFAULT_CONTROLLER_NAME),
    );
    add(
        &mut input,
        namespace(
            "gateway-system",
            &[("kubernetes.io/metadata.name", "gateway-system")],
        ),
    );
    for k in 0..namespaces {
        let name = ns(k);
        add(
            &mut input,
            namespace(
                &name,
                &[
                    ("kubernetes.io/metadata.name", &name),
                    ("team", &format!("team-{}", k % 3)),
                ],
            ),
        );
    }
    input.secrets.push(std::sync::Arc::new(tls_secret(
        "gateway-system",
        "example-com-tls",
        EXAMPLE_CERT_PEM,
        EXAMPLE_KEY_PEM,
    )));
    add(
        &mut input,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"namespace": "gateway-system", "name": "eg"},
            "spec": {
                "gatewayClassName": GATEWAY_CLASS,
                "listeners": [
                    {
                        "name": "http",
                        "protocol": "HTTP",
                        "port": 80,
                        "allowedRoutes": {"namespaces": {"from": "All"}},
                    },
                    {
                        "name": "https",
                        "protocol": "HTTPS",
                        "port": 443,
                        "hostname": "*.example.com",
                        "tls": {
                            "mode": "Terminate",
                            "certificateRefs": [{"kind": "Secret", "name": "example-com-tls"}],
                        },
                        "allowedRoutes": {"namespaces": {"from": "All"}},
                    },
                ],
            },
        }),
    );

    // Services `svc-j` live in namespace `j % namespaces`.
    for j in 0..services {
        let name = format!("svc-{j}");
        let namespace = ns(j);
        add(
            &mut input,
            service(
                &namespace,
                &name,
                &[
                    ("http", 8080, None),
                    ("grpc", 9090, Some("kubernetes.io/h2c")),
                ],
            ),
        );
        let ip = u32::try_from(3 * j).expect("workload too large for 10.0.0.0/8");
        add(
            &mut input,
            endpoint_slice(
                &namespace,
                &name,
                "x7k2p",
                &[
                    (ipv4(ip), true),
                    (ipv4(ip + 1), true),
                    (ipv4(ip + 2), false),
                ],
                &[("http", 8080), ("grpc", 9090)],
            ),
        );
    }

    // Namespace k + 1 lets routes of namespace k use its Services.
    for k in 0..namespaces {
        let from = ns(k);
        add(
            &mut input,
            reference_grant(
                &ns(k + 1),
                &format!("from-{from}"),
                &[("HTTPRoute", &from), ("GRPCRoute", &from)],
                &["Service"],
            ),
        );
    }

    let parent_refs = json!([{"name": "eg", "namespace": "gateway-system"}]);
    for i in 0..http_routes {
        let k = i % namespaces;
        let m = i / namespaces;
        let primary = svc_in(k, m);
        let (split_ns, split_svc) = if i % 10 == 9 {
            (ns(k + 1), svc_in(k + 1, m))
        } else {
            (ns(k), svc_in(k, m + 1))
        };
        add(
            &mut input,
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": {"namespace": ns(k), "name": format!("http-{i}")},
                "spec": {
                    "parentRefs": parent_refs,
                    "hostnames": [format!("app-{i}.example.com")],
                    "rules": [
                        {
                            "matches": [{
                                "path": {"type": "PathPrefix", "value": format!("/api/v{}", i % 3 + 1)},
                                "headers": [{"name": "x-tenant", "value": format!("tenant-{}", i % 7)}],
                            }],
                            "backendRefs": [
                                {"name": primary, "port": 8080, "weight": 80},
                                {"name": split_svc, "namespace": split_ns, "port": 8080, "weight": 20},
                            ],
                        },
                        {
                            "matches": [{"path": {"type": "Exact", "value": "/static"}}],
                            "filters": [{
                                "type": "RequestHeaderModifier",
                                "requestHeaderModifier": {
                                    "set": [{"name": "x-route", "value": format!("http-{i}")}],
                                    "remove": ["x-debug"],
                                },
                            }],
                            "backendRefs": [{"name": primary, "port": 8080}],
                        },
                        {
                            "backendRefs": [{"name": primary, "port": 8080}],
                        },
                    ],
                },
            }),
        );
    }

    for g in 0..grpc_routes {
        let k = g % namespaces;
        let m = g / namespaces;
        let primary = svc_in(k, m + 7);
        let (split_ns, split_svc) = if g % 10 == 9 {
            (ns(k + 1), svc_in(k + 1, m + 7))
        } else {
            (ns(k), svc_in(k, m + 8))
        };
        add(
            &mut input,
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "GRPCRoute",
                "metadata": {"namespace": ns(k), "name": format!("grpc-{g}")},
                "spec": {
                    "parentRefs": parent_refs,
                    "hostnames": [format!("grpc-{g}.example.com")],
                    "rules": [
                        {
                            "matches": [{"method": {"service": format!("pkg{g}.Service"), "method": "Get"}}],
                            "backendRefs": [{"name": primary, "port": 9090}],
                        },
                        {
                            "matches": [{
                                "method": {"service": format!("pkg{g}.Service")},
                                "headers": [{"name": "x-canary", "value": "true"}],
                            }],
                            "backendRefs": [
                                {"name": primary, "port": 9090, "weight": 90},
                                {"name": split_svc, "namespace": split_ns, "port": 9090, "weight": 10},
                            ],
                        },
                    ],
                },
            }),
        );
    }
    input
}

/// `listener_sets(sets, per_set)`: Gateway `gateway/gw` (HTTP on 80,
/// ListenerSets from all namespaces) and `sets` ListenerSets `set-s` in
/// `team-(s % 10)`, each with `per_set` listeners: listener `j` is HTTP on
/// port `8000 + j % 5` when `j` is even, HTTPS on `8443 + j % 5` (the
/// namespace's certificate) when odd, for `l-j.set-s.example.com`. Each set
/// has one HTTPRoute attached to it (to every listener of the set) sending
/// to its own Service.
pub fn listener_sets(sets: usize, per_set: usize) -> Input {
    let mut input = Input::new();
    add(
        &mut input,
        gateway_class(GATEWAY_CLASS, DEFAULT_CONTROLLER_NAME),
    );
    add(&mut input, namespace("gateway", &[]));
    add(
        &mut input,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"namespace": "gateway", "name": "gw"},
            "spec": {
                "gatewayClassName": GATEWAY_CLASS,
                "allowedListeners": {"namespaces": {"from": "All"}},
                "listeners": [{
                    "name": "http",
                    "protocol": "HTTP",
                    "port": 80,
                    "allowedRoutes": {"namespaces": {"from": "All"}},
                }],
            },
        }),
    );
    for t in 0..10.min(sets) {
        let ns = format!("team-{t}");
        add(&mut input, namespace(&ns, &[]));
        input.secrets.push(std::sync::Arc::new(tls_secret(
            &ns,
            "cert",
            EXAMPLE_CERT_PEM,
            EXAMPLE_KEY_PEM,
        )));
    }
    for s in 0..sets {
        let ns = format!("team-{}", s % 10);
        let set = format!("set-{s}");
        let listeners: Vec<Value> = (0..per_set)
            .map(|j| {
                let hostname = format!("l-{j}.{set}.example.com");
                let offset = i32::try_from(j % 5).unwrap_or(0);
                if j % 2 == 0 {
                    json!({
                        "name": format!("l-{j}"),
                        "protocol": "HTTP",
                        "port": 8000 + offset,
                        "hostname": hostname,
                    })
                } else {
                    json!({
                        "name": format!("l-{j}"),
                        "protocol": "HTTPS",
                        "port": 8443 + offset,
                        "hostname": hostname,
                        "tls": {"certificateRefs": [{"name": "cert"}]},
                    })
                }
            })
            .collect();
        add(
            &mut input,
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "ListenerSet",
                "metadata": {"namespace": ns, "name": set},
                "spec": {
                    "parentRef": {"name": "gw", "namespace": "gateway"},
                    "listeners": listeners,
                },
            }),
        );
        let svc = format!("svc-{s}");
        add(&mut input, service(&ns, &svc, &[("http", 8080, None)]));
        let ip = u32::try_from(2 * s).expect("workload too large for 10.0.0.0/8");
        add(
            &mut input,
            endpoint_slice(
                &ns,
                &svc,
                "abcde",
                &[(ipv4(ip), true), (ipv4(ip + 1), true)],
                &[("http", 8080)],
            ),
        );
        add(
            &mut input,
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": {"namespace": ns, "name": format!("route-{s}")},
                "spec": {
                    "parentRefs": [{
                        "group": "gateway.networking.k8s.io",
                        "kind": "ListenerSet",
                        "name": set,
                    }],
                    "rules": [{"backendRefs": [{"name": svc, "port": 8080}]}],
                },
            }),
        );
    }
    input
}
