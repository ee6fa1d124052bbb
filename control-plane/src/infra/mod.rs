//! Infrastructure: where the Envoys of Gateways run.
//!
//! - [`host`]: Envoy child processes of this process, each Gateway on a
//!   loopback address of its own (`gatewright run`, and `gatewright
//!   controller --infrastructure host`).
//! - [`kubernetes`]: an Envoy Deployment and Service per Gateway in the
//!   cluster, provisioned by the leader (`--infrastructure kubernetes`).
//!
//! Both are driven the same way by the pipeline ([`Infra`]): before
//! translation they may fix what the translator needs to know (the host's
//! bind addresses), after it they make the Envoys match the output and
//! return what they learned per Gateway ([`Learned`]), which [`merge`]
//! writes into the statuses: the one place infrastructure touches status.

pub mod host;
pub mod kubernetes;

use crate::source::Snapshot;
use gatewright_translator::api::gateways::{GatewayStatus, GatewayStatusAddresses};
use gatewright_translator::{Input, ObjectKey, Output};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What infrastructure learned about one Gateway in a round.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Learned {
    /// The Gateway's `status.addresses`, when the infrastructure knows them.
    pub addresses: Option<Vec<GatewayStatusAddresses>>,
    /// Why a Gateway whose configuration is valid is not programmed.
    pub not_programmed: Option<(NotProgrammed, String)>,
}

/// Gateway `Programmed=False` reasons that come from infrastructure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotProgrammed {
    /// The Envoys could not be provisioned.
    Invalid,
    /// The Envoy Service has no address yet.
    AddressNotAssigned,
}

impl std::fmt::Display for NotProgrammed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Invalid => "Invalid",
            Self::AddressNotAssigned => "AddressNotAssigned",
        })
    }
}

/// Writes what infrastructure learned into the Gateways' statuses.
pub fn merge(output: &mut Output, learned: BTreeMap<ObjectKey, Learned>) {
    for (key, learned) in learned {
        let Some(status) = output.statuses.gateways.get_mut(&key) else {
            continue;
        };
        if let Some(addresses) = learned.addresses {
            status.addresses = Some(addresses);
        }
        if let Some((reason, message)) = learned.not_programmed {
            not_programmed(status, reason, message);
        }
    }
}

/// Turns a Gateway's Programmed condition False with `reason`.
fn not_programmed(status: &mut GatewayStatus, reason: NotProgrammed, message: String) {
    for c in status.conditions.iter_mut().flatten() {
        if c.type_ == "Programmed" {
            c.status = "False".to_owned();
            c.reason = reason.to_string();
            c.message.clone_from(&message);
        }
    }
}

/// The infrastructure a control plane runs its Envoys on.
pub enum Infra {
    /// Envoy child processes on loopback addresses.
    Host(host::Host),
    /// Envoy Deployments and Services in the cluster.
    Kubernetes(Box<kubernetes::KubeMode>),
}

impl Infra {
    /// Sets what the translator must know from the infrastructure before
    /// it runs: on the host, the loopback address each Gateway binds to.
    pub fn prepare(&mut self, input: &mut Input) {
        if let Self::Host(host) = self {
            input.bind_addresses = host
                .plan(input)
                .iter()
                .map(|(k, ip)| (k.clone(), ip.to_string()))
                .collect();
        }
    }

    /// Makes the Envoys match `output` (the Kubernetes infrastructure only
    /// while `leading`) and returns what it learned per Gateway.
    pub async fn reconcile(
        &mut self,
        snapshot: &Snapshot,
        output: &Output,
        leading: bool,
    ) -> BTreeMap<ObjectKey, Learned> {
        match self {
            Self::Host(host) => host.reconcile_output(output).await,
            Self::Kubernetes(kube) if leading => kube.provision(snapshot, output).await,
            Self::Kubernetes(_) => BTreeMap::new(),
        }
    }

    /// The Envoys this process runs itself (none on Kubernetes).
    pub fn envoys(&self) -> BTreeMap<ObjectKey, Arc<host::EnvoyState>> {
        match self {
            Self::Host(host) => host.states(),
            Self::Kubernetes(_) => BTreeMap::new(),
        }
    }

    /// Whether Envoys run elsewhere, so readiness does not wait for local
    /// ones.
    pub fn remote(&self) -> bool {
        matches!(self, Self::Kubernetes(_))
    }

    /// Drains and stops the Envoys this process runs.
    pub async fn shutdown(&mut self) {
        if let Self::Host(host) = self {
            host.shutdown().await;
        }
    }
}
