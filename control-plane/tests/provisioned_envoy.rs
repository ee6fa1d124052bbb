//! The Kubernetes provisioner's Envoy bootstrap, end to end against our
//! mutual-TLS xDS server, with certificates from our PKI.
//!
//! The bootstrap is taken from the ConfigMap that
//! `infra::kubernetes::build` makes for a Gateway, exactly as written, and
//! so are the SDS files next to it in the ConfigMap that give Envoy its
//! client certificate and the server CA; only what a test machine cannot
//! provide is rewritten (see [`localise_bootstrap`] and [`localise_sds`]):
//! the Service's DNS name resolves to loopback, the Secret's and the
//! ConfigMap's mount points are temporary directories, the fixed admin and
//! readiness ports become free ones, and nothing listens on 0.0.0.0. The
//! server certificate is still verified against the CA and the Service's
//! DNS name, and the Envoy runs with the Deployment's own arguments.
//!
//! - An Envoy of Gateway ns1/gw-a with gw-a's client certificate gets
//!   gw-a's listener (and serves it), and reports ready through the
//!   provisioned readiness listener.
//! - An Envoy whose bootstrap is built for ns1/gw-b but which holds gw-a's
//!   certificate is refused by the server and gets nothing.
//! - Rotation: an Envoy started with a short-lived certificate A, in a
//!   directory laid out as the kubelet lays out a Secret volume, picks up
//!   certificate B when `..data` is swapped, without a failed request on
//!   its listener; once A has expired (the server now refuses it), a
//!   restarted server is reached again, necessarily with B.
//!
//! Needs Envoy: `ENVOY_BIN=/path/to/envoy` (the Makefile sets it); fails
//! saying so when it is missing. Every wait is bounded; every Envoy is
//! killed when its guard drops, also when the test panics.

use envoy_types::pb::envoy::config::core::v3::{
    Address, DataSource, SocketAddress, address, data_source, socket_address,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::direct_response::v3::Config as DirectResponse;
use envoy_types::pb::google::protobuf::Any;
use gatewright::infra::kubernetes::bootstrap::{ADMIN_CLUSTER, READY_LISTENER, XDS_CLUSTER};
use gatewright::infra::kubernetes::objects::{
    BOOTSTRAP_DIR, BOOTSTRAP_KEY, XDS_CA_SDS_KEY, XDS_CLIENT_SDS_KEY, XDS_TLS_DIR,
};
use gatewright::infra::kubernetes::{KubeInfraConfig, ListenerPort, ProxyObjects, build};
use gatewright::pki::{
    CA_CERT_KEY, Ca, GatewayAuthorizer, IssuedCert, TLS_CERT_KEY, TLS_KEY_KEY, service_dns_names,
};
use gatewright_translator::api::gateways::Gateway;
use gatewright_xds::{AdsServer, Cache, ReloadableServerConfig, Resources, serve_tls};
use serde_json::{Value, json};
use std::fs::File;
use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The controller's namespace and xDS Service, as a Helm install names them.
const CONTROLLER_NAMESPACE: &str = "gatewright-system";
const XDS_SERVICE: &str = "gatewright-xds";
/// The longest anything that must happen may take.
const PATIENCE: Duration = Duration::from_secs(20);
/// How long the refused Envoy is watched for configuration it must not get.
const GRACE: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(100);
/// How many lines of an Envoy's log a failure shows.
const LOG_TAIL: usize = 60;

/// The Envoy binary: `$ENVOY_BIN`, which must exist. Never a silent pass.
fn envoy_binary() -> PathBuf {
    let Some(bin) = std::env::var_os("ENVOY_BIN").filter(|v| !v.is_empty()) else {
        panic!(
            "this test runs a real Envoy: set ENVOY_BIN to its path \
             (e.g. ENVOY_BIN=$PWD/.tools/envoy/bin/envoy after `make envoy`)"
        );
    };
    let bin = PathBuf::from(bin);
    assert!(
        bin.is_file(),
        "ENVOY_BIN={} is not a file; run `make envoy`",
        bin.display()
    );
    bin
}

/// `N` distinct ports that were free on 127.0.0.1 a moment ago (all held
/// open together, so they differ).
fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free loopback port"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("local address").port())
}

/// A Gateway as the API server would return it: namespaced, with a uid,
/// one HTTP listener.
fn gateway(namespace: &str, name: &str) -> Gateway {
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": format!("uid-of-{namespace}-{name}"),
        },
        "spec": {
            "gatewayClassName": "gatewright",
            "listeners": [{ "name": "http", "port": 8080, "protocol": "HTTP" }]
        }
    }))
    .expect("a valid Gateway")
}

/// The objects the provisioner makes for Gateway `namespace`/`name`.
fn provision(namespace: &str, name: &str, xds_port: u16) -> ProxyObjects {
    let config = KubeInfraConfig {
        controller_namespace: CONTROLLER_NAMESPACE.to_owned(),
        xds_service: XDS_SERVICE.to_owned(),
        xds_port,
        envoy_image: "envoyproxy/envoy:v1.40.0".to_owned(),
    };
    let ports = [ListenerPort {
        port: 8080,
        protocol: "HTTP".to_owned(),
    }];
    build(
        &gateway(namespace, name),
        &Default::default(),
        &ports,
        &config,
    )
    .unwrap_or_else(|e| panic!("building the objects of {namespace}/{name}: {e:#}"))
}

/// The bootstrap text in the ConfigMap, exactly as written, parsed.
fn bootstrap_of(objects: &ProxyObjects) -> Value {
    let text = objects
        .config_map
        .data
        .as_ref()
        .and_then(|d| d.get(BOOTSTRAP_KEY))
        .unwrap_or_else(|| panic!("the ConfigMap has no {BOOTSTRAP_KEY:?}"));
    serde_json::from_str(text).expect("the ConfigMap's bootstrap is JSON")
}

/// The Envoy container's arguments in the Deployment.
fn envoy_args(objects: &ProxyObjects) -> Vec<String> {
    let deployment = serde_json::to_value(&objects.deployment).expect("Deployment as JSON");
    let args = &deployment["spec"]["template"]["spec"]["containers"][0]["args"];
    args.as_array()
        .unwrap_or_else(|| panic!("the Envoy container has no args: {deployment:#}"))
        .iter()
        .map(|a| a.as_str().expect("string args").to_owned())
        .collect()
}

/// What replaces the in-cluster parts of a bootstrap.
struct Local<'a> {
    /// Holds `tls.crt`, `tls.key` and `ca.crt`, as the Secret mount would.
    tls_dir: &'a Path,
    /// Holds the SDS files, as the ConfigMap mount would.
    sds_dir: &'a Path,
    admin_port: u16,
    ready_port: u16,
}

/// Starts Envoy `tag` with the bootstrap and SDS files of `objects`,
/// localised: the Secret mount is `tls_dir` (already filled), the
/// ConfigMap mount a new `<tag>-bootstrap` folder, and `(admin, ready)` the
/// free ports of [`Local`].
fn start_provisioned(
    dir: &Path,
    tag: &'static str,
    objects: &ProxyObjects,
    tls_dir: &Path,
    (admin_port, ready_port): (u16, u16),
    xds_port: u16,
) -> Envoy {
    let sds_dir = dir.join(format!("{tag}-bootstrap"));
    std::fs::create_dir_all(&sds_dir).expect("create the SDS directory");
    let mut bootstrap = bootstrap_of(objects);
    let local = Local {
        tls_dir,
        sds_dir: &sds_dir,
        admin_port,
        ready_port,
    };
    localise_bootstrap(&mut bootstrap, xds_port, &local);
    localise_sds(objects, &local);
    Envoy::start(dir, tag, &envoy_args(objects), &bootstrap)
}

/// The one endpoint address of a static cluster in the bootstrap.
fn endpoint_of(cluster: &mut Value) -> &mut Value {
    let name = cluster["name"].clone();
    let endpoints = &mut cluster["load_assignment"]["endpoints"];
    assert_eq!(
        endpoints.as_array().map(Vec::len),
        Some(1),
        "cluster {name} should have one locality"
    );
    let lb = &mut endpoints[0]["lb_endpoints"];
    assert_eq!(
        lb.as_array().map(Vec::len),
        Some(1),
        "cluster {name} should have one endpoint"
    );
    &mut lb[0]["endpoint"]["address"]["socket_address"]
}

/// Every string in `value`, for a final check of what is left.
fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        Value::Object(o) => o.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

/// Replaces the mount point `mount` in every string that is it or starts
/// with it and a `/`; returns how many were replaced.
fn relocate_files(value: &mut Value, mount: &str, local_dir: &Path) -> usize {
    match value {
        Value::String(s) if s == mount => {
            *s = local_dir.to_string_lossy().into_owned();
            1
        }
        Value::String(s) => match s.strip_prefix(&format!("{mount}/")) {
            Some(file) => {
                *s = local_dir.join(file).to_string_lossy().into_owned();
                1
            }
            None => 0,
        },
        Value::Array(a) => a
            .iter_mut()
            .map(|v| relocate_files(v, mount, local_dir))
            .sum(),
        Value::Object(o) => o
            .values_mut()
            .map(|v| relocate_files(v, mount, local_dir))
            .sum(),
        _ => 0,
    }
}

/// Fails if anything in-cluster is left in `value`: a mount point or the
/// wildcard address.
fn assert_nothing_in_cluster_left(value: &Value, what: &str) -> Vec<String> {
    let mut left = Vec::new();
    strings(value, &mut left);
    for s in &left {
        assert!(
            !s.contains("/etc/gatewright") && s != "0.0.0.0",
            "{s:?} was left in the localised {what}"
        );
    }
    left
}

/// Writes the ConfigMap's SDS files into `local.sds_dir`, each as written
/// but for the mount points: the Secret's files and watched directory
/// become `local.tls_dir`. Checks each names the Secret's files.
fn localise_sds(objects: &ProxyObjects, local: &Local<'_>) {
    let data = objects.config_map.data.as_ref().expect("ConfigMap data");
    // (key, files it names under the Secret's mount, incl. the watched
    // directory)
    for (key, expected) in [(XDS_CLIENT_SDS_KEY, 3), (XDS_CA_SDS_KEY, 2)] {
        let text = data
            .get(key)
            .unwrap_or_else(|| panic!("the ConfigMap has no {key:?}"));
        let mut sds: Value = serde_json::from_str(text).expect("the SDS file is JSON");
        let moved = relocate_files(&mut sds, XDS_TLS_DIR, local.tls_dir);
        assert_eq!(
            moved, expected,
            "{key}: expected {expected} paths under {XDS_TLS_DIR}: {sds:#}"
        );
        assert_nothing_in_cluster_left(&sds, key);
        std::fs::write(
            local.sds_dir.join(key),
            serde_json::to_vec_pretty(&sds).expect("SDS JSON"),
        )
        .expect("write an SDS file");
    }
}

/// Rewrites the provisioned bootstrap `b` for this machine, changing
/// nothing else; checks on the way that each rewritten field holds what a
/// pod would use, so a changed bootstrap fails here instead of being
/// silently "fixed".
fn localise_bootstrap(b: &mut Value, xds_port: u16, local: &Local<'_>) {
    let service_host = format!("{XDS_SERVICE}.{CONTROLLER_NAMESPACE}.svc");

    // 1. Admin port. In the pod it is a fixed port (19000 unless a listener
    //    takes it) on 127.0.0.1; two Envoys on one test machine (and
    //    whatever else runs there) cannot share it, so each gets a free
    //    loopback port. The address stays loopback.
    let admin = &mut b["admin"]["address"]["socket_address"];
    assert_eq!(admin["address"], "127.0.0.1", "admin must be loopback only");
    let pod_admin_port = admin["port_value"].clone();
    assert!(pod_admin_port.as_u64().is_some_and(|p| p != 0));
    admin["port_value"] = json!(local.admin_port);

    let clusters = b["static_resources"]["clusters"]
        .as_array_mut()
        .expect("static clusters");
    let mut seen_xds = false;
    let mut seen_admin = false;
    for cluster in clusters.iter_mut() {
        if cluster["name"] == XDS_CLUSTER {
            seen_xds = true;
            // 2. The xDS endpoint. In the pod it is the Service's DNS name;
            //    here the server listens on 127.0.0.1. Only the endpoint's
            //    address changes: the cluster stays STRICT_DNS (so Envoy
            //    still resolves it), the port is the one the provisioner
            //    was given, and the SNI and SAN check keep the Service's
            //    name, so the server certificate (issued for that name) is
            //    really verified.
            assert_eq!(cluster["type"], "STRICT_DNS");
            let tls = &cluster["transport_socket"]["typed_config"];
            assert_eq!(tls["sni"], json!(service_host), "SNI");
            assert_eq!(
                tls["common_tls_context"]["combined_validation_context"]["default_validation_context"]
                    ["match_typed_subject_alt_names"],
                json!([{ "san_type": "DNS", "matcher": { "exact": service_host } }]),
                "server SAN check"
            );
            let endpoint = endpoint_of(cluster);
            assert_eq!(endpoint["address"], json!(service_host));
            assert_eq!(endpoint["port_value"], json!(xds_port));
            endpoint["address"] = json!("127.0.0.1");
        } else if cluster["name"] == ADMIN_CLUSTER {
            seen_admin = true;
            // 3. The readiness listener's way to the admin interface
            //    follows the admin port of step 1.
            let endpoint = endpoint_of(cluster);
            assert_eq!(endpoint["address"], "127.0.0.1");
            assert_eq!(endpoint["port_value"], pod_admin_port);
            endpoint["port_value"] = json!(local.admin_port);
        }
    }
    assert!(seen_xds, "no {XDS_CLUSTER} cluster in the bootstrap");
    assert!(seen_admin, "no {ADMIN_CLUSTER} cluster in the bootstrap");

    // 4. Static listeners. In the pod the readiness listener binds
    //    0.0.0.0 on a fixed port for the kubelet; here it binds a free
    //    loopback port, and no listener is exposed off the machine.
    let listeners = b["static_resources"]["listeners"]
        .as_array_mut()
        .expect("static listeners (the readiness listener)");
    let mut seen_ready = false;
    for listener in listeners.iter_mut() {
        let name = listener["name"].clone();
        let socket = &mut listener["address"]["socket_address"];
        if socket["address"] == "0.0.0.0" {
            socket["address"] = json!("127.0.0.1");
        }
        if name == READY_LISTENER {
            seen_ready = true;
            socket["port_value"] = json!(local.ready_port);
        } else {
            panic!("unexpected static listener {name} in the bootstrap: give it a free port here");
        }
    }
    assert!(seen_ready, "no {READY_LISTENER} listener in the bootstrap");

    // 5. The client certificate and the CA come through SDS from files in
    //    the ConfigMap's mount (two paths, each watched through its
    //    directory): here the same file names in a temporary directory,
    //    written by `localise_sds`. The certificate files themselves are
    //    named only there.
    let moved = relocate_files(b, BOOTSTRAP_DIR, local.sds_dir);
    assert_eq!(
        moved, 4,
        "expected two SDS files and their watched directory under {BOOTSTRAP_DIR}"
    );
    assert_eq!(
        relocate_files(b, XDS_TLS_DIR, local.tls_dir),
        0,
        "the bootstrap names no file of the Secret itself"
    );

    // Nothing in-cluster is left, except the Service's name where it is
    // meant to stay: the SNI and the SAN check.
    let left = assert_nothing_in_cluster_left(b, "bootstrap");
    assert_eq!(
        left.iter().filter(|s| s.contains(&service_host)).count(),
        2,
        "{service_host} should remain only as the SNI and the SAN to check"
    );
}

/// Writes what the client Secret of Gateway `ns/name` would hold.
fn write_client_secret(dir: &Path, ca: &Ca, namespace: &str, name: &str) {
    let issued = ca
        .issue_client(namespace, name)
        .unwrap_or_else(|e| panic!("issuing the client certificate of {namespace}/{name}: {e:#}"));
    std::fs::create_dir_all(dir).expect("create the TLS directory");
    std::fs::write(dir.join(TLS_CERT_KEY), issued.cert_pem).expect("write tls.crt");
    std::fs::write(dir.join(TLS_KEY_KEY), issued.key_pem).expect("write tls.key");
    std::fs::write(dir.join(CA_CERT_KEY), ca.cert_pem()).expect("write ca.crt");
}

/// A listener Envoy accepts without any other resource: on a free loopback
/// port, it writes its own name to every connection and closes it.
fn marker_listener(name: &str, port: u16) -> Listener {
    let answer = DirectResponse {
        response: Some(DataSource {
            specifier: Some(data_source::Specifier::InlineString(name.to_owned())),
            ..Default::default()
        }),
    };
    Listener {
        name: name.to_owned(),
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: "127.0.0.1".to_owned(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
                ..Default::default()
            })),
        }),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.direct_response".to_owned(),
                config_type: Some(filter::ConfigType::TypedConfig(Any {
                    type_url: <DirectResponse as prost::Name>::type_url(),
                    value: prost::Message::encode_to_vec(&answer),
                })),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// One Envoy process, killed (and reaped) when dropped.
struct Envoy {
    /// Behind a lock so that waits can check for an exit while the check
    /// itself reads the Envoy.
    child: std::sync::Mutex<Child>,
    admin: SocketAddr,
    log: PathBuf,
    tag: &'static str,
}

impl Envoy {
    /// Starts Envoy with the Deployment's arguments, its `--config-path`
    /// pointed at the localised bootstrap.
    fn start(dir: &Path, tag: &'static str, args: &[String], bootstrap: &Value) -> Envoy {
        let config = dir.join(format!("{tag}-envoy.json"));
        std::fs::write(
            &config,
            serde_json::to_vec_pretty(bootstrap).expect("bootstrap JSON"),
        )
        .expect("write the bootstrap");
        let mut args = args.to_vec();
        let at = args
            .iter()
            .position(|a| a == "--config-path")
            .expect("the Deployment passes --config-path");
        args[at + 1] = config.to_string_lossy().into_owned();
        let log = dir.join(format!("{tag}-envoy.log"));
        let admin_port = bootstrap["admin"]["address"]["socket_address"]["port_value"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .expect("admin port");
        let child = Command::new(envoy_binary())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("create the Envoy log"))
            .spawn()
            .expect("start Envoy");
        eprintln!("[{tag}] Envoy pid {}: {}", child.id(), args.join(" "));
        Envoy {
            child: std::sync::Mutex::new(child),
            admin: SocketAddr::from((Ipv4Addr::LOCALHOST, admin_port)),
            log,
            tag,
        }
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The end of Envoy's log (the start lists its extensions at length).
    fn log_text(&self) -> String {
        let text = match std::fs::read_to_string(&self.log) {
            Ok(text) => text,
            Err(e) => return format!("(no log at {}: {e})", self.log.display()),
        };
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
        format!(
            "(last {} of {} lines)\n{}",
            tail.len(),
            lines.len(),
            tail.join("\n")
        )
    }

    /// Polls `check` until it yields, failing with the log after `PATIENCE`
    /// or if Envoy exits.
    async fn eventually<T>(&self, what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(v) = check().await {
                return v;
            }
            let exited = self.child().try_wait();
            if let Ok(Some(status)) = exited {
                panic!(
                    "[{}] Envoy exited ({status}) before {what}:\n{}",
                    self.tag,
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "[{}] {what} did not happen within {PATIENCE:?}; Envoy log:\n{}",
                self.tag,
                self.log_text()
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        // Only this child, by its pid.
        let mut child = self.child();
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .expect("HTTP client")
}

/// GET `http://addr{path}`: status and body.
async fn get(
    client: &reqwest::Client,
    addr: SocketAddr,
    path: &str,
) -> Result<(u16, String), String> {
    let response = client
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .text()
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    Ok((status, body))
}

/// Names of the dynamic listeners in Envoy's config dump, split into
/// active and not (yet) active.
async fn dynamic_listeners(
    client: &reqwest::Client,
    envoy: &Envoy,
) -> Result<(Vec<String>, Vec<String>), String> {
    let (status, body) = get(
        client,
        envoy.admin,
        "/config_dump?resource=dynamic_listeners",
    )
    .await?;
    if status != 200 {
        return Err(format!("config_dump: {status} {body}"));
    }
    let dump: Value = serde_json::from_str(&body).map_err(|e| format!("config_dump: {e}"))?;
    let (mut active, mut other) = (Vec::new(), Vec::new());
    for entry in dump["configs"].as_array().into_iter().flatten() {
        let Some(name) = entry["name"].as_str() else {
            continue;
        };
        if entry.get("active_state").is_some() {
            active.push(name.to_owned());
        } else {
            other.push(name.to_owned());
        }
    }
    Ok((active, other))
}

/// What a TCP connection to `port` on loopback receives before it closes.
fn read_marker(port: u16) -> Result<String, String> {
    let mut conn = TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_secs(2),
    )
    .map_err(|e| format!("connect: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    conn.read_to_string(&mut text)
        .map_err(|e| format!("read: {e}"))?;
    Ok(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioned_envoy_gets_its_gateway_and_only_its_gateway() {
    let started = Instant::now();
    envoy_binary();
    let dir = tempfile::tempdir().expect("temporary directory");
    let [
        marker_a_port,
        marker_b_port,
        admin_a,
        ready_a,
        admin_b,
        ready_b,
    ] = free_ports::<6>();

    // The xDS server, as a controller replica runs it: a server certificate
    // for the Service's names from the CA, the Gateway authorizer.
    let ca = Ca::generate().expect("a CA");
    let cache = Cache::new();
    let mut a = Resources::new();
    a.add("marker-a", &marker_listener("marker-a", marker_a_port));
    cache.set("ns1/gw-a", a);
    let mut b = Resources::new();
    b.add("marker-b", &marker_listener("marker-b", marker_b_port));
    cache.set("ns1/gw-b", b);
    let server_config = ca
        .server_config(&service_dns_names(XDS_SERVICE, CONTROLLER_NAMESPACE))
        .expect("the server TLS configuration");
    let socket = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind the xDS port");
    let xds_port = socket.local_addr().expect("xDS address").port();
    let server = AdsServer::new(cache.clone()).with_authorizer(Arc::new(GatewayAuthorizer));
    let serving = tokio::spawn(serve_tls(
        server,
        socket,
        Arc::new(ReloadableServerConfig::new(server_config)),
        std::future::pending(),
    ));
    let denied = || cache.stats().denied.load(Ordering::Relaxed);
    let client = http();

    // Envoy A: Gateway ns1/gw-a's bootstrap and its own certificate.
    let objects_a = provision("ns1", "gw-a", xds_port);
    let bootstrap_a = bootstrap_of(&objects_a);
    assert_eq!(bootstrap_a["node"]["cluster"], "ns1/gw-a");
    let tls_a = dir.path().join("a-xds");
    write_client_secret(&tls_a, &ca, "ns1", "gw-a");
    let envoy_a = start_provisioned(
        dir.path(),
        "a",
        &objects_a,
        &tls_a,
        (admin_a, ready_a),
        xds_port,
    );
    let names = envoy_a
        .eventually("marker-a becoming active", async || {
            dynamic_listeners(&client, &envoy_a)
                .await
                .ok()
                .filter(|(active, _)| !active.is_empty())
        })
        .await;
    eprintln!(
        "[a] dynamic listeners after {:?}: {names:?}",
        started.elapsed()
    );
    assert_eq!(names, (vec!["marker-a".to_owned()], vec![]));
    // It serves it: the listener is really Envoy's.
    let answer = envoy_a
        .eventually("marker-a answering", async || {
            read_marker(marker_a_port).ok()
        })
        .await;
    assert_eq!(answer, "marker-a");
    // And the provisioned readiness listener reports it ready.
    let ready = envoy_a
        .eventually("the readiness listener answering 200", async || {
            get(
                &client,
                SocketAddr::from((Ipv4Addr::LOCALHOST, ready_a)),
                "/ready",
            )
            .await
            .ok()
            .filter(|(status, _)| *status == 200)
        })
        .await;
    eprintln!("[a] /ready on the readiness listener: {ready:?}");
    assert_eq!(denied(), 0, "Envoy A was refused");

    // Envoy B: Gateway ns1/gw-b's bootstrap (node group ns1/gw-b), but
    // gw-a's certificate, as if gw-a's Secret were mounted into it.
    let objects_b = provision("ns1", "gw-b", xds_port);
    let bootstrap_b = bootstrap_of(&objects_b);
    assert_eq!(bootstrap_b["node"]["cluster"], "ns1/gw-b");
    let tls_b = dir.path().join("b-xds");
    write_client_secret(&tls_b, &ca, "ns1", "gw-a");
    let envoy_b = start_provisioned(
        dir.path(),
        "b",
        &objects_b,
        &tls_b,
        (admin_b, ready_b),
        xds_port,
    );
    envoy_b
        .eventually("the server refusing Envoy B", async || {
            (denied() >= 1).then_some(())
        })
        .await;
    eprintln!(
        "[b] refused {} time(s) after {:?}",
        denied(),
        started.elapsed()
    );
    // Whatever B does next, it must not get gw-b's (or anyone's) listener.
    let watch_until = Instant::now() + GRACE;
    while Instant::now() < watch_until {
        let (active, other) = dynamic_listeners(&client, &envoy_b)
            .await
            .unwrap_or_else(|e| panic!("Envoy B's config dump: {e}\n{}", envoy_b.log_text()));
        assert!(
            active.is_empty() && other.is_empty(),
            "Envoy B, holding gw-a's certificate, got listeners {active:?} {other:?}"
        );
        assert!(
            !matches!(read_marker(marker_b_port), Ok(t) if !t.is_empty()),
            "something serves marker-b"
        );
        tokio::time::sleep(POLL).await;
    }
    eprintln!(
        "[b] no listeners after {GRACE:?}; refusals so far: {}",
        denied()
    );
    // Envoy itself saw the refusal: gRPC status 7 (PERMISSION_DENIED) on
    // its ADS stream, with the server's reason (URL-encoded).
    let b_log = std::fs::read_to_string(&envoy_b.log).unwrap_or_default();
    let refusal = b_log
        .lines()
        .find(|l| l.contains("stream to gatewright-xds closed: 7,") && l.contains("ns1/gw-b"))
        .unwrap_or_else(|| {
            panic!(
                "Envoy B's log shows no PERMISSION_DENIED for ns1/gw-b:\n{}",
                envoy_b.log_text()
            )
        });
    eprintln!("[b] log: {refusal}");
    // A is untouched.
    let (active, _) = dynamic_listeners(&client, &envoy_a)
        .await
        .expect("Envoy A's config dump");
    assert_eq!(active, ["marker-a"]);

    drop((envoy_a, envoy_b));
    serving.abort();
    eprintln!("done in {:?}", started.elapsed());
}

/// How long certificate A of the rotation test is valid: long enough for
/// Envoy to start with it and be given B, short enough to wait out.
const CERT_A_VALIDITY: Duration = Duration::from_secs(25);

/// A directory laid out as the kubelet lays out a Secret volume: each key
/// a symlink to `..data/<key>`, `..data` a symlink to a timestamped folder
/// holding the files. An update writes a new folder, points a new symlink
/// at it and renames that over `..data` (one atomic move inside the
/// directory), then removes the old folder.
struct KubeletVolume {
    dir: PathBuf,
    current: Option<PathBuf>,
    updates: u32,
}

impl KubeletVolume {
    fn new(dir: &Path) -> KubeletVolume {
        std::fs::create_dir_all(dir).expect("create the volume directory");
        KubeletVolume {
            dir: dir.to_owned(),
            current: None,
            updates: 0,
        }
    }

    /// Publishes `files` (key, content) as the volume's new content.
    fn publish(&mut self, files: &[(&str, &str)]) {
        self.updates += 1;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is after 1970");
        let name = format!(
            "..{}_{:09}_{}",
            now.as_secs(),
            now.subsec_nanos(),
            self.updates
        );
        let folder = self.dir.join(&name);
        std::fs::create_dir(&folder).expect("create the timestamped folder");
        for (key, content) in files {
            std::fs::write(folder.join(key), content).expect("write a volume file");
        }
        let staged = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &staged).expect("symlink ..data_tmp");
        std::fs::rename(&staged, self.dir.join("..data")).expect("swap ..data");
        for (key, _) in files {
            let link = self.dir.join(key);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{key}"), &link).expect("symlink a key");
            }
        }
        if let Some(old) = self.current.replace(folder) {
            std::fs::remove_dir_all(old).expect("remove the old folder");
        }
    }

    /// Publishes what a client Secret holds: `cert` and the CA.
    fn publish_secret(&mut self, ca: &Ca, cert: &IssuedCert) {
        self.publish(&[
            (TLS_CERT_KEY, &cert.cert_pem),
            (TLS_KEY_KEY, &cert.key_pem),
            (CA_CERT_KEY, ca.cert_pem()),
        ]);
    }
}

/// A serial number as lowercase hex without separators or leading zeros,
/// so that x509-parser's and Envoy's spellings compare.
fn normalise_serial(serial: &str) -> String {
    let hex: String = serial
        .chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    match hex.trim_start_matches('0') {
        "" => "0".to_owned(),
        trimmed => trimmed.to_owned(),
    }
}

/// The serial number of a PEM certificate.
fn serial_of(pem: &str) -> String {
    use rustls::pki_types::pem::PemObject as _;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("a PEM certificate");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("an X.509 certificate");
    normalise_serial(&cert.raw_serial_as_string())
}

/// The serial numbers of the certificates (not CAs) Envoy's admin `/certs`
/// reports.
async fn envoy_cert_serials(
    client: &reqwest::Client,
    envoy: &Envoy,
) -> Result<Vec<String>, String> {
    let (status, body) = get(client, envoy.admin, "/certs").await?;
    if status != 200 {
        return Err(format!("/certs: {status} {body}"));
    }
    let certs: Value = serde_json::from_str(&body).map_err(|e| format!("/certs: {e}"))?;
    Ok(certs["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["cert_chain"].as_array().into_iter().flatten())
        .filter_map(|c| c["serial_number"].as_str())
        .map(normalise_serial)
        .collect())
}

/// Sets its flag when dropped, also when a test panics.
struct StopOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// How many connections Envoy has made to the xDS cluster (its
/// `upstream_cx_total` counter).
async fn xds_connections(client: &reqwest::Client, envoy: &Envoy) -> u64 {
    let stat = format!("cluster.{XDS_CLUSTER}.upstream_cx_total");
    let (status, body) = get(client, envoy.admin, &format!("/stats?filter={stat}"))
        .await
        .unwrap_or_else(|e| panic!("Envoy's stats: {e}"));
    assert_eq!(status, 200, "/stats: {body}");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{stat}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {stat} in {body:?}"))
}

/// Whether the xDS server on `port` accepts `cert` as a client certificate:
/// a TLS handshake as Envoy makes it, then the server's first bytes (its
/// HTTP/2 SETTINGS), which it sends only once it has accepted the client.
async fn server_accepts(ca: &Ca, port: u16, cert: &IssuedCert) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::AsyncReadExt as _;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca.cert_der().clone())
        .map_err(|e| e.to_string())?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).map_err(|e| e.to_string())?],
        PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from(format!("{XDS_SERVICE}.{CONTROLLER_NAMESPACE}.svc"))
        .map_err(|e| e.to_string())?;
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let mut first = [0u8; 9];
        match tls.read(&mut first).await {
            Ok(0) => Err("the server closed the connection".to_owned()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("read: {e}")),
        }
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .map_err(|_| "no answer within 5 s".to_owned())?
}

/// A running mutual-TLS xDS server, as a controller replica runs it; it can
/// be stopped (every connection closed) and started again on its port.
struct XdsServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl XdsServer {
    fn start(cache: &Cache, ca: &Ca, socket: tokio::net::TcpListener) -> XdsServer {
        let config = ca
            .server_config(&service_dns_names(XDS_SERVICE, CONTROLLER_NAMESPACE))
            .expect("the server TLS configuration");
        let server = AdsServer::new(cache.clone()).with_authorizer(Arc::new(GatewayAuthorizer));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_tls(
            server,
            socket,
            Arc::new(ReloadableServerConfig::new(config)),
            async move {
                let _ = stopped.await;
            },
        ));
        XdsServer {
            stop: Some(stop),
            task,
        }
    }

    /// Stops accepting, ends every ADS stream and waits (bounded) until
    /// every connection is closed and the port is released.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .unwrap_or_else(|_| panic!("the xDS server did not stop within {PATIENCE:?}"));
        result
            .expect("the xDS server task")
            .expect("the xDS server ran without error");
    }
}

impl Drop for XdsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds 127.0.0.1:`port` again, retrying briefly (bounded).
async fn rebind(port: u16) -> tokio::net::TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
            Ok(socket) => return socket,
            Err(e) if Instant::now() < deadline => {
                eprintln!("[rotation] rebinding port {port}: {e}; retrying");
                tokio::time::sleep(POLL).await;
            }
            Err(e) => panic!("could not bind the xDS port {port} again: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_client_certificate_reaches_the_running_envoy() {
    let started = Instant::now();
    envoy_binary();
    let dir = tempfile::tempdir().expect("temporary directory");
    let [marker_1_port, marker_2_port, admin_port, ready_port] = free_ports::<4>();
    let (namespace, name, group) = ("ns1", "gw-r", "ns1/gw-r");

    let ca = Ca::generate().expect("a CA");
    let cache = Cache::new();
    let mut first = Resources::new();
    first.add("marker-1", &marker_listener("marker-1", marker_1_port));
    cache.set(group, first.clone());
    let socket = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind the xDS port");
    let xds_port = socket.local_addr().expect("xDS address").port();
    let server = XdsServer::start(&cache, &ca, socket);
    let denied = || cache.stats().denied.load(Ordering::Relaxed);
    let client = http();

    // The Secret volume, as the kubelet makes it, with short-lived
    // certificate A.
    let tls_dir = dir.path().join("r-xds");
    let mut volume = KubeletVolume::new(&tls_dir);
    let a_issued = Instant::now();
    let cert_a = ca
        .issue_client_valid_for(namespace, name, CERT_A_VALIDITY)
        .expect("certificate A");
    let a_expires = a_issued + CERT_A_VALIDITY;
    volume.publish_secret(&ca, &cert_a);
    let serial_a = serial_of(&cert_a.cert_pem);

    let objects = provision(namespace, name, xds_port);
    let envoy = start_provisioned(
        dir.path(),
        "r",
        &objects,
        &tls_dir,
        (admin_port, ready_port),
        xds_port,
    );

    envoy
        .eventually("marker-1 answering", async || {
            read_marker(marker_1_port).ok().filter(|t| t == "marker-1")
        })
        .await;
    let serials = envoy
        .eventually("/certs reporting certificate A", async || {
            envoy_cert_serials(&client, &envoy)
                .await
                .ok()
                .filter(|s| s.contains(&serial_a))
        })
        .await;
    eprintln!(
        "[rotation] serving marker-1 with certificate A (serial {serial_a}) after {:?}; /certs: {serials:?}",
        started.elapsed()
    );

    // Requests to the served listener, all through the swap. The loop also
    // ends when the guard drops (a failed check below), and after a bound,
    // so that a failure never leaves the runtime waiting for it forever.
    let stop_traffic = StopOnDrop(Arc::new(std::sync::atomic::AtomicBool::new(false)));
    let traffic = {
        let stop = Arc::clone(&stop_traffic.0);
        let give_up = Instant::now() + 3 * PATIENCE;
        tokio::task::spawn_blocking(move || {
            let (mut served, mut failures) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) && Instant::now() < give_up {
                match read_marker(marker_1_port) {
                    Ok(t) if t == "marker-1" => served += 1,
                    other => failures.push(format!("{other:?}")),
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (served, failures)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Certificate B, swapped in as the kubelet does.
    let cert_b = ca.issue_client(namespace, name).expect("certificate B");
    let serial_b = serial_of(&cert_b.cert_pem);
    assert_ne!(serial_a, serial_b);
    let swapped = Instant::now();
    volume.publish_secret(&ca, &cert_b);
    let serials = envoy
        .eventually("/certs reporting certificate B instead of A", async || {
            envoy_cert_serials(&client, &envoy)
                .await
                .ok()
                .filter(|s| s.contains(&serial_b) && !s.contains(&serial_a))
        })
        .await;
    let pickup = swapped.elapsed();
    eprintln!(
        "[rotation] certificate B (serial {serial_b}) picked up {pickup:?} after the swap; /certs: {serials:?}"
    );
    assert!(
        swapped < a_expires,
        "the machine was too slow: A expired before B was swapped in"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(stop_traffic);
    let (served, failures) = tokio::time::timeout(PATIENCE, traffic)
        .await
        .expect("the request loop stopped in time")
        .expect("the request loop");
    eprintln!(
        "[rotation] requests during the swap: {served} served, {} failed",
        failures.len()
    );
    assert!(served > 0, "no request was made during the swap");
    assert!(
        failures.is_empty(),
        "requests failed during the swap: {failures:?}"
    );

    // Wait until A has expired: the server now refuses it (rustls' client
    // certificate verifier, as the server builds it).
    tokio::time::sleep_until((a_expires + Duration::from_secs(1)).into()).await;
    let refusal = ca
        .verify_client(&cert_a.cert_pem, rustls::pki_types::UnixTime::now())
        .expect_err("certificate A has expired");
    eprintln!(
        "[rotation] A expired at {:?}; the verifier says: {refusal:#}",
        a_expires - started
    );

    // Restart the server: every connection is dropped, so Envoy must
    // reconnect, and the only certificate it can succeed with is B.
    let connections_before = xds_connections(&client, &envoy).await;
    server.stop().await;
    let restarted = Instant::now();
    let server = XdsServer::start(&cache, &ca, rebind(xds_port).await);
    let refused = server_accepts(&ca, xds_port, &cert_a)
        .await
        .expect_err("the restarted server refuses expired certificate A");
    server_accepts(&ca, xds_port, &cert_b)
        .await
        .unwrap_or_else(|e| panic!("the restarted server refuses certificate B: {e}"));
    eprintln!("[rotation] restarted server: A refused ({refused}), B accepted");
    let mut second = first;
    second.add("marker-2", &marker_listener("marker-2", marker_2_port));
    cache.set(group, second);
    envoy
        .eventually("marker-2 answering after the reconnect", async || {
            read_marker(marker_2_port).ok().filter(|t| t == "marker-2")
        })
        .await;
    let connections_after = xds_connections(&client, &envoy).await;
    eprintln!(
        "[rotation] reconnected with B: marker-2 served {:?} after the restart; \
         xDS connections made: {connections_before} before, {connections_after} after",
        restarted.elapsed()
    );
    assert!(
        connections_after > connections_before,
        "Envoy made no new xDS connection"
    );
    assert_eq!(read_marker(marker_1_port).as_deref(), Ok("marker-1"));
    assert_eq!(denied(), 0, "the server refused Envoy's group");

    drop(envoy);
    server.stop().await;
    eprintln!("done in {:?}", started.elapsed());
}
