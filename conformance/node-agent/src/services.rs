//! Service networking for the local cluster, in place of kube-proxy, a
//! LoadBalancer provider and CoreDNS: watches Services and EndpointSlices,
//! keeps the nftables table `ip gwr-svc` in sync (nft.rs), hands out
//! LoadBalancer addresses from a pool (lbpool.rs) and feeds the cluster DNS
//! zone (dns.rs).
//!
//! Objects are watched untyped and parsed one by one, so a single object
//! that does not decode is skipped (with a warning) instead of stalling the
//! whole watch.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::Notify;

use crate::dns::{self, Rec, SharedZone, Zone};
use crate::lbpool::Pool;
use crate::nft::{self, NetConfig, Proto, VirtualPort};

/// Field manager / event source name.
const MANAGER: &str = "gatewright-node-agent";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the service controller needs to know.
#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses for the ruleset.
    pub net: NetConfig,
    /// Pool host offsets from here on are for explicit requests only.
    pub lb_reserved_from: u32,
    /// `spec.loadBalancerClass` values served besides none.
    pub lb_classes: Vec<String>,
    /// ClusterIP of the `kube-system/kube-dns` Service made at start; none
    /// to skip it.
    pub kube_dns_ip: Option<Ipv4Addr>,
    /// Program nftables and allocate LoadBalancer addresses; false for a
    /// DNS-only server.
    pub manage_network: bool,
}

/// Services and EndpointSlices as the rules and the zone see them.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every routed Service port.
    pub ports: Vec<VirtualPort>,
    /// The cluster DNS zone.
    pub zone: Zone,
}

/// `namespace/name` of an object.
fn key(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or("")
    )
}

/// Ready IPv4 endpoints of a Service port across its slices: (ip, port).
fn endpoints_for(slices: &[&EndpointSlice], port_name: &str, proto: Proto) -> Vec<SocketAddrV4> {
    let mut out = BTreeSet::new();
    for slice in slices {
        let Some(sp) = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name
                && Proto::from_k8s(p.protocol.as_deref()) == Some(proto)
        }) else {
            continue;
        };
        let Some(port) = sp.port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for ip in ready_ips(slice) {
            out.insert(SocketAddrV4::new(ip, port));
        }
    }
    out.into_iter().collect()
}

/// Addresses of the endpoints that are not known to be unready.
fn ready_ips(slice: &EndpointSlice) -> Vec<Ipv4Addr> {
    if slice.address_type != "IPv4" {
        return Vec::new();
    }
    slice
        .endpoints
        .iter()
        .flatten()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .flat_map(|e| e.addresses.iter().filter_map(|a| a.parse().ok()))
        .collect()
}

/// Builds the routed ports and the DNS zone. `lb` maps `namespace/name` to
/// the LoadBalancer address it holds. Pure.
pub fn build(
    services: &[Service],
    slices: &[EndpointSlice],
    lb: &BTreeMap<String, Ipv4Addr>,
) -> Snapshot {
    let mut by_service: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices {
        if let (Some(ns), Some(svc)) = (
            s.metadata.namespace.clone(),
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .cloned(),
        ) {
            by_service.entry((ns, svc)).or_default().push(s);
        }
    }
    let mut snap = Snapshot::default();
    let mut sorted: Vec<&Service> = services.iter().collect();
    sorted.sort_by_key(|s| key(&s.metadata));
    for svc in sorted {
        let (Some(ns), Some(name)) = (
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
        ) else {
            continue;
        };
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let fqdn = format!("{name}.{ns}.svc.{}", dns::DOMAIN);
        let mine = by_service
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
            .unwrap_or_default();
        let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
        if ty == "ExternalName" {
            if let Some(target) = spec.external_name.as_deref().filter(|t| !t.is_empty()) {
                let target = if target.ends_with('.') {
                    target.to_string()
                } else {
                    format!("{target}.")
                };
                snap.zone.add(&fqdn, Rec::Cname(target));
            }
            continue;
        }
        let cluster_ip = spec.cluster_ip.as_deref().unwrap_or("");
        if cluster_ip == "None" {
            // Headless: DNS names the endpoints; nothing to route.
            for ip in mine.iter().flat_map(|s| ready_ips(s)) {
                snap.zone.add(&fqdn, Rec::A(ip));
            }
            continue;
        }
        let Ok(cip) = cluster_ip.parse::<Ipv4Addr>() else {
            continue;
        };
        snap.zone.add(&fqdn, Rec::A(cip));
        let mut vips = vec![cip];
        let svc_key = format!("{ns}/{name}");
        if ty == "LoadBalancer"
            && let Some(ip) = lb.get(&svc_key)
        {
            vips.push(*ip);
        }
        for p in spec.ports.iter().flatten() {
            let Some(proto) = Proto::from_k8s(p.protocol.as_deref()) else {
                continue;
            };
            let Ok(port) = u16::try_from(p.port) else {
                continue;
            };
            let port_name = p.name.as_deref().unwrap_or("");
            if !port_name.is_empty() {
                snap.zone.add(
                    &format!("_{port_name}._{}.{fqdn}", proto.nft()),
                    Rec::Srv(port, fqdn.clone()),
                );
            }
            snap.ports.push(VirtualPort {
                label: format!(
                    "{svc_key}:{}",
                    if port_name.is_empty() { "-" } else { port_name }
                ),
                vips: vips.clone(),
                proto,
                port,
                endpoints: endpoints_for(&mine, port_name, proto),
            });
        }
    }
    snap
}

/// Parses one watched object as `K`; a bad object is skipped.
fn parse<K>(obj: &DynamicObject) -> Option<K>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    let mut v = serde_json::to_value(obj).ok()?;
    if let Some(m) = v.as_object_mut() {
        m.insert("apiVersion".into(), K::api_version(&()).into());
        m.insert("kind".into(), K::kind(&()).into());
    }
    match serde_json::from_value(v) {
        Ok(k) => Some(k),
        Err(e) => {
            tracing::warn!(
                kind = %K::kind(&()),
                object = %key(&obj.metadata),
                "skipping an object that does not decode: {e}"
            );
            None
        }
    }
}

/// Starts a watch of `K` into a store; every change pokes `notify`.
fn watch<K>(client: &Client, notify: Arc<Notify>) -> Store<DynamicObject>
where
    K: Resource<DynamicType = ()>,
{
    let ar = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let writer = reflector::store::Writer::new(ar);
    let store = writer.as_reader();
    let stream =
        reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            if let Err(e) = ev {
                tracing::warn!(kind = %K::kind(&()), "watch: {e}");
            }
            notify.notify_one();
        }
    });
    store
}

/// Runs until an unrecoverable error: watches, programs nftables, keeps
/// LoadBalancer status and the DNS zone current.
pub async fn run(client: Client, cfg: Config, zone: SharedZone) -> Result<()> {
    if cfg.manage_network {
        prepare_netns(&cfg.net).await?;
        if let Some(ip) = cfg.kube_dns_ip
            && let Err(e) = ensure_kube_dns(&client, ip, cfg.net.node_ip).await
        {
            tracing::warn!("kube-dns Service: {e:#}");
        }
    }
    let notify = Arc::new(Notify::new());
    let svc_store = watch::<Service>(&client, notify.clone());
    let slice_store = watch::<EndpointSlice>(&client, notify.clone());
    svc_store
        .wait_until_ready()
        .await
        .context("Service watch ended")?;
    slice_store
        .wait_until_ready()
        .await
        .context("EndpointSlice watch ended")?;
    tracing::info!("services: initial lists done");

    let mut ctl = Controller {
        client,
        pool: Pool::new(cfg.net.lb_pool, cfg.lb_reserved_from),
        cfg,
        zone,
        applied: None,
        warned: HashSet::new(),
        patched: BTreeMap::new(),
    };
    let mut retry = tokio::time::interval(Duration::from_secs(5));
    loop {
        let services: Vec<Service> = svc_store.state().iter().filter_map(|o| parse(o)).collect();
        let slices: Vec<EndpointSlice> = slice_store
            .state()
            .iter()
            .filter_map(|o| parse(o))
            .collect();
        ctl.reconcile(&services, &slices).await;
        tokio::select! {
            _ = notify.notified() => {}
            // Retries a failed nft apply or status patch now and then.
            _ = retry.tick() => {}
        }
        // Debounce: a Deployment rollout changes many objects at once.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

struct Controller {
    client: Client,
    cfg: Config,
    pool: Pool,
    zone: SharedZone,
    /// The ruleset last applied successfully.
    applied: Option<String>,
    /// (Service UID, message) of Warning Events already sent.
    warned: HashSet<(String, String)>,
    /// Status address last written per Service (avoids repeating patches
    /// before the watch catches up).
    patched: BTreeMap<String, Option<Ipv4Addr>>,
}

impl Controller {
    async fn reconcile(&mut self, services: &[Service], slices: &[EndpointSlice]) {
        if self.cfg.manage_network {
            self.allocate(services).await;
        }
        let lb: BTreeMap<String, Ipv4Addr> = self
            .pool
            .allocations()
            .iter()
            .map(|(ip, k)| (k.clone(), *ip))
            .collect();
        let snap = build(services, slices, &lb);
        match self.zone.write() {
            Ok(mut z) => *z = snap.zone,
            Err(poisoned) => *poisoned.into_inner() = snap.zone,
        }
        if !self.cfg.manage_network {
            return;
        }
        let ruleset = nft::render(&self.cfg.net, &snap.ports);
        if self.applied.as_deref() == Some(ruleset.as_str()) {
            return;
        }
        match nft::apply(&ruleset).await {
            Ok(()) => {
                tracing::info!(
                    ports = snap.ports.len(),
                    "nftables table ip {} applied",
                    nft::TABLE
                );
                self.applied = Some(ruleset);
            }
            Err(e) => tracing::warn!("{e:#}"),
        }
    }

    /// Whether this agent allocates for `svc`.
    fn serves(&self, svc: &Service) -> bool {
        let Some(spec) = svc.spec.as_ref() else {
            return false;
        };
        spec.type_.as_deref() == Some("LoadBalancer")
            && spec
                .load_balancer_class
                .as_ref()
                .is_none_or(|c| self.cfg.lb_classes.contains(c))
    }

    /// Brings pool allocations and Service status in line with the Services.
    async fn allocate(&mut self, services: &[Service]) {
        let wanted: BTreeMap<String, &Service> = services
            .iter()
            .filter(|s| self.serves(s))
            .map(|s| (key(&s.metadata), s))
            .collect();
        let requested = |s: &Service| -> Option<Ipv4Addr> {
            s.spec
                .as_ref()
                .and_then(|sp| sp.load_balancer_ip.as_deref())
                .filter(|s| !s.is_empty())
                .and_then(|ip| ip.parse().ok())
        };
        // Release what is no longer wanted, or no longer what was asked for.
        let stale: Vec<String> = self
            .pool
            .allocations()
            .iter()
            .filter(|(ip, k)| match wanted.get(*k) {
                None => true,
                Some(s) => requested(s).is_some_and(|r| r != **ip),
            })
            .map(|(_, k)| k.clone())
            .collect();
        for k in stale {
            tracing::info!(service = %k, "releasing LoadBalancer address");
            self.pool.release(&k);
        }
        // Adopt addresses already in status first (agent restart), so new
        // allocations never hand them to someone else.
        for (k, s) in &wanted {
            if self.pool.address_of(k).is_some() {
                continue;
            }
            for ip in status_ips(s) {
                if requested(s).is_none_or(|r| r == ip) && self.pool.adopt(k, ip) {
                    tracing::info!(service = %k, %ip, "kept LoadBalancer address from status");
                    break;
                }
            }
        }
        for (k, s) in &wanted {
            let req = requested(s);
            let raw_req = s
                .spec
                .as_ref()
                .and_then(|sp| sp.load_balancer_ip.as_deref())
                .filter(|v| !v.is_empty());
            let result = match (raw_req, req) {
                (Some(raw), None) => {
                    Err(format!("requested address {raw:?} is not an IPv4 address"))
                }
                _ => self.pool.allocate(k, req).map_err(|e| e.to_string()),
            };
            match result {
                Ok(ip) => self.set_status(s, Some(ip)).await,
                Err(msg) => {
                    self.set_status(s, None).await;
                    self.warn(s, &msg).await;
                }
            }
        }
        // A Service that is no longer a LoadBalancer loses an address of
        // our pool (one with another class belongs to another provider).
        let foreign: Vec<&Service> = services
            .iter()
            .filter(|s| {
                s.spec.as_ref().and_then(|sp| sp.type_.as_deref()) != Some("LoadBalancer")
                    && status_ips(s).iter().any(|ip| self.pool.contains(*ip))
            })
            .collect();
        for s in foreign {
            self.set_status(s, None).await;
        }
        let live: HashSet<String> = services.iter().map(|s| key(&s.metadata)).collect();
        self.patched.retain(|k, _| live.contains(k));
    }

    /// Writes `status.loadBalancer.ingress` = [ip] (or none) if it differs.
    async fn set_status(&mut self, svc: &Service, ip: Option<Ipv4Addr>) {
        let k = key(&svc.metadata);
        let current = status_ips(svc);
        let up_to_date = match ip {
            Some(ip) => current == [ip],
            None => current.is_empty(),
        };
        if up_to_date || self.patched.get(&k) == Some(&ip) {
            if up_to_date {
                self.patched.insert(k, ip);
            }
            return;
        }
        let (Some(ns), Some(name)) = (
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
        ) else {
            return;
        };
        let body = match ip {
            Some(ip) => {
                json!({"status": {"loadBalancer": {"ingress": [{"ip": ip.to_string(), "ipMode": "VIP"}]}}})
            }
            None => json!({"status": {"loadBalancer": {"ingress": null}}}),
        };
        let api: Api<Service> = Api::namespaced(self.client.clone(), ns);
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(_) => {
                tracing::info!(service = %k, address = ?ip, "LoadBalancer status written");
                self.patched.insert(k, ip);
            }
            Err(e) => tracing::warn!(service = %k, "writing LoadBalancer status: {e}"),
        }
    }

    /// A Warning Event `AllocationFailed` on the Service, once per message.
    async fn warn(&mut self, svc: &Service, msg: &str) {
        let uid = svc.metadata.uid.clone().unwrap_or_default();
        if !self.warned.insert((uid.clone(), msg.to_string())) {
            return;
        }
        let (Some(ns), Some(name)) = (
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
        ) else {
            return;
        };
        tracing::warn!(service = %format!("{ns}/{name}"), "AllocationFailed: {msg}");
        let now = Time(jiff::Timestamp::now());
        let ev = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{name}.")),
                namespace: Some(ns.to_string()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Service".into()),
                name: Some(name.to_string()),
                namespace: Some(ns.to_string()),
                uid: Some(uid),
                resource_version: svc.metadata.resource_version.clone(),
                ..Default::default()
            },
            reason: Some("AllocationFailed".into()),
            message: Some(format!("Failed to allocate IP for \"{ns}/{name}\": {msg}")),
            type_: Some("Warning".into()),
            source: Some(EventSource {
                component: Some(MANAGER.into()),
                host: None,
            }),
            reporting_component: Some(MANAGER.into()),
            reporting_instance: Some(MANAGER.into()),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        if let Err(e) = api.create(&PostParams::default(), &ev).await {
            tracing::warn!("creating Event: {e}");
        }
    }
}

/// IPv4 addresses in `status.loadBalancer.ingress`.
fn status_ips(svc: &Service) -> Vec<Ipv4Addr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref().and_then(|ip| ip.parse().ok()))
        .collect()
}

/// Forwarding on (Service traffic from pods is routed back out the bridge),
/// no ICMP redirects for it, and routes for the Service ranges: locally
/// generated packets need a route before the output NAT hook sees them.
async fn prepare_netns(net: &NetConfig) -> Result<()> {
    let sysctls = [
        ("/proc/sys/net/ipv4/ip_forward".to_string(), "1"),
        (
            "/proc/sys/net/ipv4/conf/all/send_redirects".to_string(),
            "0",
        ),
        (
            format!("/proc/sys/net/ipv4/conf/{}/send_redirects", net.bridge),
            "0",
        ),
    ];
    for (path, value) in sysctls {
        tokio::fs::write(&path, value)
            .await
            .with_context(|| format!("writing {value} to {path}"))?;
    }
    // With br_netfilter, frames bridged between pod ports pass the ip
    // hooks too: a pod reaching a Service that DNATs back to itself would
    // be bridged out of the port it came in on, which a bridge never does
    // (hairpin), so the connection hangs until a SYN retry picks another
    // endpoint. Service traffic is addressed to the node anyway (the pods'
    // gateway), so it is routed without br_netfilter. The sysctl is per
    // network namespace (where a non-initial one shows it); only touched
    // when we are provably in a named one, never the host's.
    let brnf = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    if tokio::fs::metadata(brnf).await.is_ok() {
        if in_named_netns() {
            tokio::fs::write(brnf, "0")
                .await
                .with_context(|| format!("writing 0 to {brnf}"))?;
        } else {
            tracing::warn!(
                "not in a named network namespace: leaving {brnf} alone \
                 (a pod reaching itself through a Service may hang)"
            );
        }
    }
    let src = net.node_ip.to_string();
    for range in [net.service_cidr, net.lb_pool] {
        let r = range.to_string();
        crate::netns::ip(&["route", "replace", &r, "dev", &net.bridge, "src", &src])
            .await
            .with_context(|| format!("adding a route for {r}"))?;
    }
    Ok(())
}

/// Whether this process runs in a named network namespace (one of
/// /run/netns, as gwr-conf is), compared by nsfs device and inode. Reading
/// pid 1's namespace is not allowed everywhere (containers), so this is the
/// proof that a per-namespace sysctl is not the host's.
fn in_named_netns() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(me) = std::fs::metadata("/proc/self/ns/net") else {
        return false;
    };
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return false;
    };
    dir.flatten().any(|e| {
        std::fs::metadata(e.path()).is_ok_and(|m| m.dev() == me.dev() && m.ino() == me.ino())
    })
}

/// The `kube-system/kube-dns` Service (at `ip`) with an EndpointSlice that
/// points at this agent's DNS server on the node IP.
async fn ensure_kube_dns(client: &Client, ip: Ipv4Addr, node_ip: Ipv4Addr) -> Result<()> {
    let pp = PatchParams::apply(MANAGER).force();
    let svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system",
                     "labels": {"k8s-app": "kube-dns"}},
        "spec": {"clusterIP": ip.to_string(), "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}
    });
    Api::<Service>::namespaced(client.clone(), "kube-system")
        .patch("kube-dns", &pp, &Patch::Apply(&svc))
        .await
        .context("applying Service kube-system/kube-dns")?;
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kube-dns-node", "namespace": "kube-system",
                     "labels": {SERVICE_NAME_LABEL: "kube-dns",
                                "endpointslice.kubernetes.io/managed-by": MANAGER}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [node_ip.to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                  {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]
    });
    Api::<EndpointSlice>::namespaced(client.clone(), "kube-system")
        .patch("kube-dns-node", &pp, &Patch::Apply(&slice))
        .await
        .context("applying EndpointSlice kube-system/kube-dns-node")?;
    tracing::info!(%ip, "kube-system/kube-dns points at the node's DNS server");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).expect("service")
    }
    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).expect("slice")
    }

    #[test]
    fn builds_ports_and_zone() {
        let services = vec![
            svc(json!({"metadata": {"name": "web", "namespace": "ns"},
                "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.5", "ports": [
                    {"name": "http", "port": 80, "targetPort": "web"},
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "sctp", "port": 9, "protocol": "SCTP"}]}})),
            svc(json!({"metadata": {"name": "hl", "namespace": "ns"},
                "spec": {"clusterIP": "None", "ports": [{"port": 80}]}})),
            svc(json!({"metadata": {"name": "ext", "namespace": "ns"},
                "spec": {"type": "ExternalName", "externalName": "example.org"}})),
            svc(json!({"metadata": {"name": "bad", "namespace": "ns"},
                "spec": {"clusterIP": "garbage", "ports": [{"port": 80}]}})),
        ];
        let slices = vec![
            slice(json!({"metadata": {"name": "web-1", "namespace": "ns",
                    "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 3000, "protocol": "TCP"},
                          {"name": "dns", "port": 5353, "protocol": "UDP"}],
                "endpoints": [
                    {"addresses": ["10.244.0.3"], "conditions": {"ready": true}},
                    {"addresses": ["10.244.0.2"]},
                    {"addresses": ["10.244.0.4"], "conditions": {"ready": false}}]})),
            slice(json!({"metadata": {"name": "hl-1", "namespace": "ns",
                    "labels": {"kubernetes.io/service-name": "hl"}},
                "addressType": "IPv4", "ports": [{"port": 80}],
                "endpoints": [{"addresses": ["10.244.0.7"]}]})),
            // Same service name, other namespace: must not leak in.
            slice(json!({"metadata": {"name": "web-x", "namespace": "other",
                    "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": 1, "protocol": "TCP"}],
                "endpoints": [{"addresses": ["10.244.9.9"]}]})),
        ];
        let lb = BTreeMap::from([("ns/web".to_string(), Ipv4Addr::new(10, 245, 0, 1))]);
        let snap = build(&services, &slices, &lb);
        assert_eq!(snap.ports.len(), 2, "{:?}", snap.ports);
        let http = &snap.ports[0];
        assert_eq!(http.label, "ns/web:http");
        assert_eq!(
            http.vips,
            [Ipv4Addr::new(10, 96, 0, 5), Ipv4Addr::new(10, 245, 0, 1)]
        );
        assert_eq!(
            http.endpoints,
            [
                "10.244.0.2:3000".parse::<SocketAddrV4>().expect("addr"),
                "10.244.0.3:3000".parse().expect("addr")
            ]
        );
        assert_eq!(snap.ports[1].proto, Proto::Udp);
        assert_eq!(snap.ports[1].endpoints.len(), 2);
        assert_eq!(snap.ports[1].endpoints[0].port(), 5353);

        let z = &snap.zone;
        assert_eq!(
            z.get("web.ns.svc.cluster.local."),
            Some(&[Rec::A(Ipv4Addr::new(10, 96, 0, 5))][..])
        );
        assert_eq!(
            z.get("_http._tcp.web.ns.svc.cluster.local."),
            Some(&[Rec::Srv(80, "web.ns.svc.cluster.local.".into())][..])
        );
        assert_eq!(
            z.get("hl.ns.svc.cluster.local."),
            Some(&[Rec::A(Ipv4Addr::new(10, 244, 0, 7))][..])
        );
        assert_eq!(
            z.get("ext.ns.svc.cluster.local."),
            Some(&[Rec::Cname("example.org.".into())][..])
        );
        assert_eq!(z.get("bad.ns.svc.cluster.local."), None);
    }

    #[test]
    fn bad_objects_are_skipped() {
        let good: DynamicObject = serde_json::from_value(json!({
            "metadata": {"name": "a", "namespace": "n"},
            "spec": {"clusterIP": "10.96.0.9", "ports": [{"port": 80}]}}))
        .expect("dyn");
        let bad: DynamicObject = serde_json::from_value(json!({
            "metadata": {"name": "b", "namespace": "n"},
            "spec": {"ports": "not a list"}}))
        .expect("dyn");
        assert!(parse::<Service>(&good).is_some());
        assert!(parse::<Service>(&bad).is_none());
    }
}
