//! Leader election on a coordination.k8s.io Lease.
//!
//! Every write to the Lease carries the resourceVersion it was based on, so
//! two replicas that both find it expired cannot both take it: one of them
//! gets a conflict. A Lease held by someone else counts as expired only
//! when this replica has watched its record stay unchanged for the whole
//! lease duration on its own clock, so clock skew between nodes does not
//! matter. (kube-lease-manager would do this but needs kube 5, and
//! gateway-api pins kube 4; kube-leader-election takes an expired Lease
//! with a merge patch that carries no resourceVersion.)

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use kube::api::PostParams;
use kube::{Api, Client};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What to elect on.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease lasts without renewal.
    pub duration: Duration,
    /// The owner a new Lease gets, so that it is garbage-collected with
    /// the installation (in Kubernetes mode, the xDS Service Helm made).
    pub owner: Option<OwnerReference>,
}

/// Runs the election until `stop` turns true, then releases the Lease if
/// held. The returned receiver says whether this replica leads.
pub fn spawn(
    client: Client,
    config: LeaseConfig,
    mut stop: watch::Receiver<bool>,
) -> (watch::Receiver<bool>, JoinHandle<()>) {
    let (leading_tx, leading_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut elector = Elector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
            last_renewal: None,
        };
        let period = (elector.config.duration / 3).max(Duration::from_millis(200));
        loop {
            let leading = elector.round().await;
            if leading != *leading_tx.borrow() {
                if leading {
                    tracing::info!(lease = %elector.config.name, identity = %elector.config.identity, "became leader");
                } else {
                    tracing::warn!(lease = %elector.config.name, identity = %elector.config.identity, "no longer leader");
                }
                leading_tx.send_replace(leading);
            }
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        if *leading_tx.borrow() {
            leading_tx.send_replace(false);
            elector.release().await;
        }
    });
    (leading_rx, task)
}

struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The other holder's record as last seen, and since when (our clock).
    observed: Option<(Option<String>, Option<MicroTime>, Instant)>,
    /// When this replica last renewed successfully.
    last_renewal: Option<Instant>,
}

impl Elector {
    /// One attempt to take or keep the Lease; whether this replica leads.
    async fn round(&mut self) -> bool {
        match self.try_round().await {
            Ok(leading) => {
                if leading {
                    self.last_renewal = Some(Instant::now());
                }
                leading
            }
            Err(e) => {
                // A failed renewal keeps leadership only while the Lease we
                // last wrote is still valid.
                let still_valid = self
                    .last_renewal
                    .is_some_and(|t| t.elapsed() < self.config.duration);
                tracing::warn!(lease = %self.config.name, still_valid, "lease round failed: {e}");
                if !still_valid {
                    self.last_renewal = None;
                }
                still_valid
            }
        }
    }

    async fn try_round(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let lease = match self.api.get_opt(&self.config.name).await? {
            Some(lease) => lease,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        owner_references: self.config.owner.clone().map(|o| vec![o]),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(now.clone(), now, 0)),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                };
            }
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let transitions = spec.lease_transitions.unwrap_or(0);
        let next = if holder.as_deref() == Some(self.config.identity.as_str()) {
            self.spec(
                spec.acquire_time.clone().unwrap_or(now.clone()),
                now,
                transitions,
            )
        } else {
            if holder.is_some() && !self.expired(&holder, &spec) {
                return Ok(false);
            }
            self.spec(now.clone(), now, transitions + 1)
        };
        let mut updated = lease;
        updated.spec = Some(next);
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => {
                self.observed = None;
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether another holder's record has stood still for a whole lease
    /// duration, as timed here.
    fn expired(&mut self, holder: &Option<String>, spec: &LeaseSpec) -> bool {
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.config.duration, Duration::from_secs);
        match &self.observed {
            Some((h, renew, since)) if h == holder && *renew == spec.renew_time => {
                since.elapsed() > duration
            }
            _ => {
                self.observed = Some((holder.clone(), spec.renew_time.clone(), Instant::now()));
                false
            }
        }
    }

    fn spec(&self, acquired: MicroTime, renewed: MicroTime, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.config.duration.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(acquired),
            renew_time: Some(renewed),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Gives the Lease up so another replica takes over at once, not after
    /// the lease duration.
    async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.config.name, "lease released"),
            Err(e) => tracing::warn!(lease = %self.config.name, "cannot release the lease: {e}"),
        }
    }
}
