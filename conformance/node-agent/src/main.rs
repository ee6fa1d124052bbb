//! `gatewright-node-agent`: a kubelet stand-in for the local conformance
//! cluster. It registers a Node, binds pending pods to it and runs each pod
//! as processes in its own network namespace on a bridge.

mod imagemap;
mod ipam;
mod logs;
mod netns;
mod node;
mod pods;
mod server;
mod spec;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
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
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cidr: ipam::Cidr = args.pod_cidr.parse()?;
    let images = imagemap::ImageMap::load(&args.image_map)?;
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating {}", args.state_dir.display()))?;
    let kubeconfig = Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading kubeconfig {}", args.kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("loading kubeconfig")?;
    let client = kube::Client::try_from(config).context("building API client")?;

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
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping all pods");
    heartbeat.abort();
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
