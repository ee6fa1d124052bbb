//! `gatewright-node-agent`: a kubelet stand-in for the local conformance
//! cluster. It registers a Node, binds pending pods to it and runs each pod
//! as processes in its own network namespace on a bridge.

mod dns;
mod imagemap;
mod ipam;
mod lbpool;
mod logs;
mod netns;
mod nft;
mod node;
mod pods;
mod server;
mod services;
mod spec;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::signal::unix::{SignalKind, signal};

/// Command line, agreed with conformance/cluster.sh.
#[derive(Debug, Parser)]
#[command(name = "gatewright-node-agent", version, about)]
struct Args {
    /// Kubeconfig of the API server.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Name of the Node to register.
    #[arg(long, default_value = "gwr-node")]
    node_name: String,
    /// The node IP: the bridge address, the pods' default gateway.
    #[arg(long, default_value = "10.244.0.1")]
    node_ip: Ipv4Addr,
    /// The CIDR pod IPs come from.
    #[arg(long, default_value = "10.244.0.0/16")]
    pod_cidr: String,
    /// The bridge the pod veths join.
    #[arg(long, default_value = "gwr0")]
    bridge: String,
    /// Folder for volumes, logs and IP allocations.
    #[arg(long)]
    state_dir: PathBuf,
    /// YAML list of {image, binary, args?}.
    #[arg(long)]
    image_map: PathBuf,
    /// Port of the kubelet API (HTTPS) on the node IP.
    #[arg(long, default_value_t = 10250)]
    kubelet_port: u16,
    /// The Service CIDR (kube-apiserver's --service-cluster-ip-range).
    #[arg(long, default_value = "10.96.0.0/16")]
    service_cidr: String,
    /// Addresses for LoadBalancer Services.
    #[arg(long, default_value = "10.245.0.0/24")]
    lb_pool: String,
    /// Pool addresses from this host offset on are given only to Services
    /// that ask for them (spec.loadBalancerIP).
    #[arg(long, default_value_t = 200)]
    lb_reserved_from: u32,
    /// A spec.loadBalancerClass to serve besides none (repeatable).
    #[arg(long)]
    lb_class: Vec<String>,
    /// Port of the cluster DNS server on the node IP (UDP and TCP).
    #[arg(long, default_value_t = 53)]
    dns_port: u16,
    /// ClusterIP of the kube-system/kube-dns Service created at start
    /// ("none" to skip it).
    #[arg(long, default_value = "10.96.0.10")]
    kube_dns_ip: String,
}

/// `gatewright-node-agent dns`: the cluster DNS server alone, for the
/// coredns image's pod.
#[derive(Debug, Parser)]
#[command(name = "gatewright-node-agent dns")]
struct DnsArgs {
    /// Address to serve on (UDP and TCP).
    #[arg(long, default_value = "0.0.0.0:53")]
    listen: SocketAddr,
    /// A zone where every name answers with the client's address (repeatable).
    #[arg(long)]
    whoami: Vec<String>,
    /// Kubeconfig: with it, cluster.local names are answered from the API.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

async fn client_from(path: &std::path::Path) -> Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("loading kubeconfig")?;
    kube::Client::try_from(config).context("building API client")
}

/// The DNS-only mode: whoami zones, and the cluster zone if there is API
/// access; never forwards.
async fn run_dns(args: DnsArgs) -> Result<()> {
    let zone: dns::SharedZone = Arc::new(RwLock::new(dns::Zone::default()));
    let opts = dns::Options {
        whoami: args
            .whoami
            .iter()
            .map(|z| format!("{}.", z.trim_end_matches('.').to_ascii_lowercase()))
            .collect(),
    };
    let server = dns::serve(args.listen, zone.clone(), opts);
    let Some(path) = args.kubeconfig else {
        return server.await;
    };
    let client = client_from(&path).await?;
    let cfg = services::Config {
        net: nft::NetConfig {
            node_ip: std::net::Ipv4Addr::UNSPECIFIED,
            bridge: String::new(),
            service_cidr: "10.96.0.0/16".parse()?,
            lb_pool: "10.245.0.0/24".parse()?,
        },
        lb_reserved_from: 0,
        lb_classes: Vec::new(),
        kube_dns_ip: None,
        manage_network: false,
    };
    tokio::select! {
        r = server => r,
        r = services::run(client, cfg, zone) => r,
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    if std::env::args().nth(1).as_deref() == Some("dns") {
        return run_dns(DnsArgs::parse_from(std::env::args().skip(1))).await;
    }
    let args = Args::parse();
    let service_cidr: ipam::Cidr = args.service_cidr.parse().context("--service-cidr")?;
    let lb_pool: ipam::Cidr = args.lb_pool.parse().context("--lb-pool")?;
    let kube_dns_ip = match args.kube_dns_ip.as_str() {
        "" | "none" => None,
        ip => Some(ip.parse().context("--kube-dns-ip")?),
    };
    let cidr: ipam::Cidr = args.pod_cidr.parse()?;
    let images = imagemap::ImageMap::load(&args.image_map)?;
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating {}", args.state_dir.display()))?;
    let client = client_from(&args.kubeconfig).await?;

    let info = node::NodeInfo {
        name: args.node_name.clone(),
        ip: args.node_ip,
        pod_cidr: cidr.to_string(),
        kubelet_port: args.kubelet_port,
    };
    let ctx = Arc::new(pods::Ctx {
        client: client.clone(),
        node_name: args.node_name.clone(),
        node_ip: args.node_ip,
        cidr,
        bridge: args.bridge.clone(),
        state_dir: args.state_dir.clone(),
        images,
        image_map_path: args.image_map.clone(),
        ipam: Mutex::new(ipam::Ipam::load(cidr, &args.state_dir)?),
    });
    let mut manager = pods::Manager::new(ctx);
    manager
        .cleanup_stale()
        .await
        .context("cleaning up after an earlier run")?;

    let addr = SocketAddr::from((args.node_ip, args.kubelet_port));
    let server = tokio::spawn(server::serve(addr, args.state_dir.clone()));
    node::register(&client, &info).await?;
    node::renew_lease(&client, &info).await?;
    let heartbeat = tokio::spawn(node::heartbeat(client.clone(), info));

    // Cluster DNS on the node IP and Service routing (instead of kube-proxy).
    let zone: dns::SharedZone = Arc::new(RwLock::new(dns::Zone::default()));
    let dns_addr = SocketAddr::from((args.node_ip, args.dns_port));
    let dns_server = tokio::spawn(dns::serve(dns_addr, zone.clone(), dns::Options::default()));
    let svc_cfg = services::Config {
        net: nft::NetConfig {
            node_ip: args.node_ip,
            bridge: args.bridge.clone(),
            service_cidr,
            lb_pool,
        },
        lb_reserved_from: args.lb_reserved_from,
        lb_classes: args.lb_class.clone(),
        kube_dns_ip,
        manage_network: true,
    };
    let services = tokio::spawn(services::run(client.clone(), svc_cfg, zone));
    tracing::info!(node = %args.node_name, "node registered; running pods");

    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = manager.sync().await {
                    tracing::warn!("sync: {e:#}");
                }
                if server.is_finished() {
                    break;
                }
                if dns_server.is_finished() || services.is_finished() {
                    // Both run forever; an early end is a setup error.
                    let (name, task) = if dns_server.is_finished() {
                        ("DNS server", dns_server)
                    } else {
                        ("service controller", services)
                    };
                    heartbeat.abort();
                    manager.shutdown().await;
                    server.abort();
                    return match task.await {
                        Ok(Ok(())) => anyhow::bail!("{name} stopped"),
                        Ok(Err(e)) => Err(e.context(name)),
                        Err(e) => Err(e).context(name),
                    };
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping all pods");
    heartbeat.abort();
    dns_server.abort();
    services.abort();
    manager.shutdown().await;
    if server.is_finished() {
        return match server.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(e).context("kubelet API task"),
        };
    }
    server.abort();
    tracing::info!("stopped");
    Ok(())
}
