//! `gatewright-pod-exec PLAN -- BINARY [ARGS...]`: run by the node agent as
//! `ip netns exec <pod netns> gatewright-pod-exec ...`. Sets up the
//! container's mount namespace from the JSON mount plan (volumes at their
//! mount paths, /etc/resolv.conf, /etc/hosts, hostname), then execs BINARY
//! with the environment it was given. A separate, single-threaded program
//! because mount namespaces cannot be set up safely from the agent's
//! multi-threaded runtime.

use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use gatewright_node_agent::mountns::{self, MountPlan};

fn run() -> Result<std::convert::Infallible> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let (plan_path, rest) = match args.as_slice() {
        [plan, sep, rest @ ..] if sep == "--" && !rest.is_empty() => (plan, rest),
        _ => bail!("usage: gatewright-pod-exec PLAN -- BINARY [ARGS...]"),
    };
    let text = std::fs::read_to_string(plan_path)
        .with_context(|| format!("reading mount plan {}", plan_path.to_string_lossy()))?;
    let plan: MountPlan = serde_json::from_str(&text).context("parsing the mount plan")?;
    mountns::apply(&plan)?;
    let err = std::process::Command::new(&rest[0]).args(&rest[1..]).exec();
    Err(err).with_context(|| format!("executing {}", rest[0].to_string_lossy()))
}

fn main() -> ExitCode {
    match run() {
        Ok(never) => match never {},
        Err(e) => {
            // Goes to the container's log.
            eprintln!("gatewright-pod-exec: {e:#}");
            ExitCode::from(127)
        }
    }
}
