//! The `gatewright` command line.

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use gatewright::controller::{ControllerOptions, Infrastructure};
use gatewright::run::{RunOptions, run};
use gatewright::source::FileSource;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Translation builds and drops many small allocations each round; they
/// cost less with mimalloc than with glibc's allocator (docs/performance.md,
/// "Per-Gateway reuse and mimalloc").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay`, which the sys crate does not name:
/// in mimalloc.h's option enum it precedes `mi_option_use_numa_nodes` (a
/// test checks it by its default).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t =
    libmimalloc_sys::mi_option_use_numa_nodes - 1;

/// Makes mimalloc give freed pages back to the system at once. By default
/// it waits a second, and a controller translating every change kept
/// 20–40% more resident memory than with glibc; with no delay it keeps about
/// what glibc keeps, and translates as fast.
fn return_freed_memory_at_once() {
    // SAFETY: sets a process-wide allocator option, which mimalloc allows
    // at any time from any thread.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}

/// Gatewright: a Gateway API implementation that programs Envoy.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Log filter, e.g. `info` or `gatewright=debug,info` [default:
    /// $RUST_LOG, else info].
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run standalone: translate a directory of YAML, serve it to one Envoy
    /// child process per Gateway, and follow changes to the files.
    Run(RunArgs),
    /// Print the statuses and Envoy configuration for some objects, in the
    /// golden files' format, without starting anything.
    Translate(TranslateArgs),
    /// Print the status of a running Gatewright, read from its admin server.
    Status(StatusArgs),
    /// Run as a Kubernetes controller: watch the API server, serve xDS,
    /// write status and run Envoys (as Deployments, or as local processes).
    Controller(ControllerArgs),
}

#[derive(clap::Args, Debug)]
struct ControllerArgs {
    /// kubeconfig file [default: $KUBECONFIG, ~/.kube/config, or the
    /// in-cluster service account].
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Where Envoys run: Deployments per Gateway, or child processes of
    /// this controller on loopback addresses.
    #[arg(long, value_enum, default_value = "kubernetes")]
    infrastructure: Infrastructure,
    /// The controller's namespace: its Lease and xDS CA Secret live here.
    #[arg(long, env = "POD_NAMESPACE", default_value = "gatewright-system")]
    namespace: String,
    /// This replica's identity in leader election [default: host name and
    /// process id].
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// The UID of this replica's Pod (from the downward API): the Pod then
    /// owns the replica's xDS acknowledgement report, which goes with it.
    #[arg(long, env = "POD_UID")]
    pod_uid: Option<String>,
    /// Name of the coordination.k8s.io Lease replicas elect a leader on.
    #[arg(long, default_value = "gatewright-controller")]
    lease_name: String,
    /// Seconds a Lease lasts without renewal.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    /// Address the ADS server listens on [default: 0.0.0.0:18000 with
    /// `--infrastructure kubernetes`, where Envoys in other pods connect
    /// over mutual TLS; 127.0.0.1:18000 with `host`, where Envoys are local
    /// children and the server has no client to authenticate].
    #[arg(long)]
    xds_address: Option<SocketAddr>,
    /// Address of the admin HTTP server (/healthz, /readyz, /metrics,
    /// /debug/status, /debug/config_dump).
    #[arg(long, default_value = "0.0.0.0:18001")]
    admin_address: SocketAddr,
    /// Folder for the listen-address files and, on host infrastructure,
    /// Envoy bootstraps and logs [default: a `gatewright-PID` folder in the
    /// temp directory].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// controllerName of the GatewayClasses this controller owns.
    #[arg(long, default_value = gatewright_translator::DEFAULT_CONTROLLER_NAME)]
    controller_name: String,
    /// Milliseconds the input must be quiet before a change is applied
    /// (0: at once; changes that come during a round are applied together).
    #[arg(long, default_value_t = 0)]
    debounce_ms: u64,
    /// The Envoy binary, for host infrastructure [default: as for `run`].
    #[arg(long)]
    envoy: Option<PathBuf>,
    /// Envoy's log level (host infrastructure).
    #[arg(long, default_value = "warning")]
    envoy_log_level: String,
    /// Envoy worker threads per Gateway (host infrastructure).
    #[arg(long, default_value_t = 1)]
    envoy_concurrency: u32,
    /// Seconds Envoy's listeners drain before it is stopped (host).
    #[arg(long, default_value_t = 1.0)]
    drain_seconds: f64,
    /// The Service in front of this controller's xDS port: provisioned
    /// Envoys dial `<xds-service>.<namespace>.svc` (kubernetes).
    #[arg(long, default_value = "gatewright-xds")]
    xds_service: String,
    /// Envoy image of provisioned Deployments (kubernetes).
    #[arg(long, default_value = "envoyproxy/envoy:v1.40.0")]
    envoy_image: String,
    /// The CA bundle file, on the host where Envoy runs, that
    /// BackendTLSPolicies with `wellKnownCACertificates: System` trust.
    #[arg(long, default_value = gatewright_translator::DEFAULT_SYSTEM_CA_FILE)]
    system_ca_file: String,
    /// Lifetime of the xDS client certificates of provisioned Envoys,
    /// in seconds or with units (`365d`, `12h`, `90m`; at least 10m); each
    /// is reissued when a third of it is left, and running Envoys pick the
    /// new one up from their Secret without a restart (kubernetes).
    #[arg(long, default_value = "365d", value_parser = gatewright::controller::parse_duration)]
    xds_client_cert_validity: Duration,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Directory (or file) of Gateway API YAML; may be given several times.
    #[arg(long = "config-dir", short = 'd', required = true)]
    config: Vec<PathBuf>,
    /// Folder to write one status file per object into
    /// (`KIND/NAMESPACE/NAME.yaml`).
    #[arg(long)]
    status_dir: Option<PathBuf>,
    /// Folder for Envoy bootstraps and logs, and the `admin-address` file
    /// [default: a `gatewright-PID` folder in the temp directory].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Address the ADS server listens on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:18000")]
    xds_address: SocketAddr,
    /// Address of the admin HTTP server (/healthz, /readyz, /metrics,
    /// /debug/status, /debug/config_dump).
    #[arg(long, default_value = "127.0.0.1:18001")]
    admin_address: SocketAddr,
    /// The Envoy binary [default: $ENVOY_BIN, `envoy` on PATH, or the
    /// project's .tools/envoy/bin/envoy].
    #[arg(long)]
    envoy: Option<PathBuf>,
    /// controllerName of the GatewayClasses this instance owns.
    #[arg(long, default_value = gatewright_translator::DEFAULT_CONTROLLER_NAME)]
    controller_name: String,
    /// Milliseconds the files must be quiet before a change is applied
    /// (0: at once; changes that come during a round are applied together).
    #[arg(long, default_value_t = 0)]
    debounce_ms: u64,
    /// Envoy's log level.
    #[arg(long, default_value = "warning")]
    envoy_log_level: String,
    /// Envoy worker threads per Gateway.
    #[arg(long, default_value_t = 1)]
    envoy_concurrency: u32,
    /// Seconds Envoy's listeners drain before it is stopped.
    #[arg(long, default_value_t = 1.0)]
    drain_seconds: f64,
    /// The CA bundle file, on the host where Envoy runs, that
    /// BackendTLSPolicies with `wellKnownCACertificates: System` trust.
    #[arg(long, default_value = gatewright_translator::DEFAULT_SYSTEM_CA_FILE)]
    system_ca_file: String,
}

#[derive(clap::Args, Debug)]
struct TranslateArgs {
    /// YAML files or directories to translate.
    #[arg(short = 'f', long = "file", required = true)]
    files: Vec<PathBuf>,
    /// The time written on conditions (RFC 3339) [default: now].
    #[arg(long)]
    now: Option<String>,
    /// controllerName of the GatewayClasses to translate for.
    #[arg(long, default_value = gatewright_translator::DEFAULT_CONTROLLER_NAME)]
    controller_name: String,
    /// Translate objects their CRD's schema or CEL rules refuse, instead of
    /// skipping them (with a problem each) as a cluster's API server would.
    #[arg(long)]
    skip_schema_validation: bool,
}

#[derive(clap::Args, Debug)]
struct StatusArgs {
    /// Admin address of the running Gatewright.
    #[arg(long, default_value = "127.0.0.1:18001")]
    admin_address: SocketAddr,
    /// Print the raw JSON of /debug/status.
    #[arg(long)]
    json: bool,
}

fn main() -> std::process::ExitCode {
    return_freed_memory_at_once();
    let cli = Cli::parse();
    let filter = match &cli.log_level {
        Some(level) => match tracing_subscriber::EnvFilter::try_new(level) {
            Ok(filter) => filter,
            Err(e) => {
                eprintln!("error: --log-level {level}: {e}");
                return std::process::ExitCode::FAILURE;
            }
        },
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Run(args) => run_command(args),
        Command::Translate(args) => translate_command(args),
        Command::Status(args) => status_command(args),
        Command::Controller(args) => controller_command(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run_command(args: RunArgs) -> anyhow::Result<std::process::ExitCode> {
    let envoy = find_envoy(args.envoy)?;
    for dir in &args.config {
        if !dir.exists() {
            bail!("config path {} does not exist", dir.display());
        }
    }
    let state_dir = args
        .state_dir
        .unwrap_or_else(|| std::env::temp_dir().join(format!("gatewright-{}", std::process::id())));
    if !(args.drain_seconds.is_finite() && (0.0..=600.0).contains(&args.drain_seconds)) {
        bail!("--drain-seconds must be between 0 and 600");
    }
    let options = RunOptions {
        config: args.config,
        status_dir: args.status_dir,
        state_dir,
        xds_address: args.xds_address,
        admin_address: args.admin_address,
        controller_name: args.controller_name,
        debounce: Duration::from_millis(args.debounce_ms),
        envoy,
        envoy_log_level: args.envoy_log_level,
        envoy_concurrency: args.envoy_concurrency.max(1),
        drain: Duration::from_secs_f64(args.drain_seconds),
        system_ca_file: args.system_ca_file,
    };
    runtime()?.block_on(run(options))?;
    Ok(std::process::ExitCode::SUCCESS)
}

fn controller_command(args: ControllerArgs) -> anyhow::Result<std::process::ExitCode> {
    let envoy = match args.infrastructure {
        Infrastructure::Host => Some(find_envoy(args.envoy)?),
        Infrastructure::Kubernetes => None,
    };
    if !(args.drain_seconds.is_finite() && (0.0..=600.0).contains(&args.drain_seconds)) {
        bail!("--drain-seconds must be between 0 and 600");
    }
    if !(1..=3600).contains(&args.lease_seconds) {
        bail!("--lease-seconds must be between 1 and 3600");
    }
    if args.xds_client_cert_validity < gatewright::pki::MIN_CLIENT_VALIDITY {
        bail!(
            "--xds-client-cert-validity must be at least {}s",
            gatewright::pki::MIN_CLIENT_VALIDITY.as_secs()
        );
    }
    let identity = args.identity.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "gatewright".to_owned());
        format!("{host}-{}", std::process::id())
    });
    let state_dir = args
        .state_dir
        .unwrap_or_else(|| std::env::temp_dir().join(format!("gatewright-{}", std::process::id())));
    let options = ControllerOptions {
        kubeconfig: args.kubeconfig,
        infrastructure: args.infrastructure,
        namespace: args.namespace,
        identity,
        pod_uid: args.pod_uid,
        lease_name: args.lease_name,
        lease_duration: Duration::from_secs(args.lease_seconds),
        xds_address: args.xds_address.unwrap_or(match args.infrastructure {
            Infrastructure::Kubernetes => SocketAddr::from(([0, 0, 0, 0], 18000)),
            Infrastructure::Host => SocketAddr::from(([127, 0, 0, 1], 18000)),
        }),
        admin_address: args.admin_address,
        state_dir,
        controller_name: args.controller_name,
        debounce: Duration::from_millis(args.debounce_ms),
        envoy,
        envoy_log_level: args.envoy_log_level,
        envoy_concurrency: args.envoy_concurrency.max(1),
        drain: Duration::from_secs_f64(args.drain_seconds),
        xds_service: args.xds_service,
        envoy_image: args.envoy_image,
        system_ca_file: args.system_ca_file,
        xds_client_cert_validity: args.xds_client_cert_validity,
    };
    runtime()?.block_on(gatewright::controller::run(options))?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// The Envoy binary: the flag, `$ENVOY_BIN`, `envoy` on PATH, then the
/// project-local install next to the working directory or this binary.
fn find_envoy(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = flag {
        if path.is_file() {
            return Ok(path);
        }
        bail!("--envoy {}: no such file", path.display());
    }
    if let Some(path) = std::env::var_os("ENVOY_BIN").map(PathBuf::from) {
        if path.is_file() {
            return Ok(path);
        }
        bail!("ENVOY_BIN={}: no such file", path.display());
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("envoy");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.parent().map(Path::to_path_buf));
    }
    for root in roots {
        for dir in root.ancestors() {
            let candidate = dir.join(".tools/envoy/bin/envoy");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "no Envoy found: pass --envoy PATH, set ENVOY_BIN, put envoy on PATH, or run `make envoy` in the project"
    )
}

fn translate_command(args: TranslateArgs) -> anyhow::Result<std::process::ExitCode> {
    let mut source =
        FileSource::new(args.files).skip_schema_validation(args.skip_schema_validation);
    let mut snapshot = source.load(&args.controller_name);
    let now = match args.now {
        Some(text) => text
            .parse()
            .with_context(|| format!("--now {text}: not an RFC 3339 time"))?,
        None => k8s_openapi::jiff::Timestamp::now(),
    };
    snapshot.input.now = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
    // The edge settings the pipeline would hand the translator, so the
    // printed configuration is the one Gatewright would serve.
    snapshot.input.edge_settings =
        gatewright::infra::edge_settings(&snapshot.input, &snapshot.proxy_parameters);
    let output = gatewright_translator::translate(&snapshot.input);
    print!("{}", gatewright_render::render(&output));
    for problem in &snapshot.problems {
        eprintln!("{problem}");
    }
    Ok(if snapshot.problems.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(2)
    })
}

fn status_command(args: StatusArgs) -> anyhow::Result<std::process::ExitCode> {
    let body = runtime()?.block_on(async {
        let (code, body) =
            gatewright::infra::host::admin_request(args.admin_address, "GET", "/debug/status")
                .await
                .with_context(|| {
                    format!(
                        "cannot reach Gatewright's admin server at {} (is `gatewright run` running? pass --admin-address)",
                        args.admin_address
                    )
                })?;
        if code != 200 {
            bail!("admin server answered {code}: {body}");
        }
        anyhow::Ok(body)
    })?;
    if args.json {
        println!("{body}");
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let value: serde_json::Value =
        serde_json::from_str(&body).context("admin server sent invalid JSON")?;
    let mut out = String::new();
    gatewright::status::print_human(&value, &mut out).context("formatting status")?;
    print!("{out}");
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option set is the purge delay: it has that option's default
    /// (1,000 ms in mimalloc v3) until it is set, and no other option has.
    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        // SAFETY: reads a process-wide allocator option.
        let default = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(
            default, 1000,
            "not mimalloc's purge delay (or MIMALLOC_PURGE_DELAY is set)"
        );
        return_freed_memory_at_once();
        // SAFETY: reads a process-wide allocator option.
        let delay = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(delay, 0);
    }
}
