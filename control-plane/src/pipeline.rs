//! The one pipeline both modes run, written once:
//!
//! provider snapshot → translate → publish to the xDS cache →
//! infrastructure → acknowledgements (`crate::acks`) → statuses (merged
//! with what infrastructure and the acknowledgements say) → status sink →
//! admin view and metrics.
//!
//! `gatewright run` and `gatewright controller` differ only in what they
//! plug in: the provider that produces [`Snapshot`]s (files, or the API
//! server's watches), the [`StatusSink`] (status files, or the status
//! subresource) and the [`Infra`] (host processes, or Kubernetes objects).

use crate::acks::Acks;
use crate::admin::{Shared, View};
use crate::infra::{Infra, Learned, NotProgrammed, merge};
use crate::source::{ObjectId, Snapshot};
use crate::status::{ObjectStatus, collect, loose_problems};
use crate::xds::{Publisher, group_of};
use anyhow::Context as _;
use gatewright_translator::{Input, ObjectKey, Output, Statuses, Translator, refresh_endpoints};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Where a round's statuses go.
pub trait StatusSink {
    /// Writes the statuses of one round: the translator's, with
    /// infrastructure's merged in, and `collected`, the same per object with
    /// input problems.
    fn write<'a>(
        &'a mut self,
        statuses: &'a Statuses,
        collected: &'a BTreeMap<ObjectId, ObjectStatus>,
    ) -> impl Future<Output = ()> + 'a;
}

/// The pipeline's state across rounds.
pub struct Pipeline {
    shared: Arc<Shared>,
    publisher: Publisher,
    infra: Infra,
    /// Problems of the last round, logged again only when they change.
    last_problems: Vec<String>,
    /// The CA bundle file for `wellKnownCACertificates: System`, given to
    /// every translation (the translator's default when None).
    system_ca_file: Option<String>,
    /// What Envoys hold: a Gateway is Programmed only once one holds its
    /// current configuration.
    acks: Acks,
    /// The last translation, for rounds whose input did not change.
    last: Option<Translated>,
    /// Reuses the last translation's work on routes that did not change.
    translator: Translator,
}

/// A translation and what it was made from.
struct Translated {
    /// The provider's [`Snapshot::revision`].
    revision: u64,
    bind_addresses: BTreeMap<ObjectKey, String>,
    edge_settings: BTreeMap<ObjectKey, Result<gatewright_translator::EdgeSettings, String>>,
    output: Arc<Output>,
}

impl Pipeline {
    /// A pipeline publishing into `shared`'s cache and view, running Envoys
    /// on `infra`.
    pub fn new(shared: Arc<Shared>, infra: Infra) -> Self {
        Self {
            publisher: Publisher::new(shared.cache.clone()),
            acks: Acks::local(shared.cache.clone()),
            shared,
            infra,
            last_problems: Vec::new(),
            system_ca_file: None,
            last: None,
            translator: Translator::new(),
        }
    }

    /// Looks acknowledgements up in `acks` (which may know other
    /// replicas' streams) instead of this process's streams alone.
    pub fn set_acks(&mut self, acks: Acks) {
        self.acks = acks;
    }

    /// Where the loop learns that an awaited acknowledgement came: the
    /// next round then turns the Gateway Programmed.
    pub fn acks(&self) -> &Acks {
        &self.acks
    }

    /// Sets the CA bundle file (on the Envoys' hosts) that BackendTLSPolicies
    /// with `wellKnownCACertificates: System` trust.
    pub fn set_system_ca_file(&mut self, path: String) {
        self.system_ca_file = Some(path);
    }

    /// Runs one full round on `snapshot`. Status is written only while
    /// `leading` (always, in standalone mode); the Kubernetes
    /// infrastructure provisions only then too.
    pub async fn apply(
        &mut self,
        mut snapshot: Snapshot,
        sink: &mut impl StatusSink,
        leading: bool,
    ) {
        let started = Instant::now();
        snapshot
            .input
            .system_ca_file
            .clone_from(&self.system_ca_file);
        // Translating is CPU work: keep it off the threads serving xDS.
        let (output, fresh) = tokio::task::block_in_place(|| {
            self.infra
                .prepare(&mut snapshot.input, &snapshot.proxy_parameters);
            self.translation(&mut snapshot)
        });

        let problems: Vec<String> = snapshot.problems.iter().map(ToString::to_string).collect();
        if problems != self.last_problems {
            for p in &problems {
                tracing::warn!("{p}");
            }
            self.last_problems = problems;
        }

        let translated = started.elapsed();
        if fresh {
            self.publisher.publish(&output);
        }
        let published = started.elapsed();
        let mut learned = self.infra.reconcile(&snapshot, &output, leading).await;
        let reconciled = started.elapsed();
        if leading {
            self.await_acks(&output, &mut learned);
        }
        let mut statuses = output.statuses.clone();
        merge(&mut statuses, learned);
        *self
            .shared
            .envoys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = self.infra.envoys();

        let collected = collect(&statuses, &snapshot, &self.shared.view().statuses);
        if leading {
            sink.write(&statuses, &collected).await;
        }
        self.shared
            .metrics
            .record_translation(started.elapsed(), output.gateways.len());
        self.shared
            .metrics
            .config_problems
            .set(i64::try_from(snapshot.problems.len()).unwrap_or(i64::MAX));
        let us = |d: std::time::Duration| d.as_micros() as u64;
        tracing::info!(
            gateways = output.gateways.len(),
            problems = snapshot.problems.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            translated = fresh,
            leading,
            "configuration applied"
        );
        // Where a round's time went, cumulatively, for profiling.
        tracing::debug!(
            translate_us = us(translated),
            publish_us = us(published),
            reconcile_us = us(reconciled),
            statuses_us = us(started.elapsed()),
            "round timings"
        );
        self.shared.publish(View {
            applied: true,
            loose_problems: loose_problems(&snapshot.problems),
            statuses: collected,
            output,
        });
    }

    /// The translation of `snapshot`'s input: the last one again when the
    /// provider says its input did not change since (a round woken by an
    /// acknowledgement or a resync) and infrastructure prepared it the same
    /// way, else a new one. True when new.
    fn translation(&mut self, snapshot: &mut Snapshot) -> (Arc<Output>, bool) {
        let input = &mut snapshot.input;
        if let (Some(last), Some(revision)) = (&self.last, snapshot.revision)
            && last.revision == revision
            && last.bind_addresses == input.bind_addresses
            && last.edge_settings == input.edge_settings
        {
            return (Arc::clone(&last.output), false);
        }
        input.now = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        let output = Arc::new(self.translator.translate(input));
        let reuse = self.translator.last_reuse();
        tracing::debug!(
            routes_reused = reuse.routes_reused,
            routes_resolved = reuse.routes_resolved,
            "translated"
        );
        self.last = snapshot.revision.map(|revision| Translated {
            revision,
            bind_addresses: input.bind_addresses.clone(),
            edge_settings: input.edge_settings.clone(),
            output: Arc::clone(&output),
        });
        (output, true)
    }

    /// Keeps every Gateway that would be Programmed `Pending` until an
    /// Envoy holds its current configuration (`Invalid` with Envoy's
    /// message once one rejected it), and tells [`Acks`] which versions to
    /// wait for. Infrastructure's own reasons come first.
    fn await_acks(&self, output: &Output, learned: &mut BTreeMap<ObjectKey, Learned>) {
        let mut awaited = BTreeMap::new();
        for key in output.gateways.keys() {
            let programmed = output.statuses.gateways.get(key).is_some_and(|s| {
                s.conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Programmed" && c.status == "True")
            });
            let entry = learned.entry(key.clone()).or_default();
            if !programmed || entry.not_programmed.is_some() {
                continue;
            }
            let group = group_of(key);
            let Some(version) = self.shared.cache.config_version(&group) else {
                continue;
            };
            if self.acks.held(&group, &version) {
                continue;
            }
            // The Envoy keeps serving what it had; the version is not sent
            // to it again, and the next translation that differs replaces it.
            if let Some(message) = self.acks.rejection(&group, &version) {
                entry.not_programmed = Some((
                    NotProgrammed::Invalid,
                    format!("Envoy rejected configuration version {version}: {message}"),
                ));
                continue;
            }
            entry.not_programmed = Some((
                NotProgrammed::Pending,
                format!(
                    "waiting for an Envoy of the Gateway to acknowledge its configuration \
                     (version {version}) over xDS"
                ),
            ));
            awaited.insert(group, version);
        }
        self.acks.await_versions(awaited);
    }

    /// Recomputes only the endpoints of `services` (from `input`, which
    /// needs to hold just those Services and their EndpointSlices) in the
    /// last output and serves them to the Gateways that use them: pods come
    /// and go far more often than anything else changes. Statuses do not
    /// depend on endpoints. Needs a full round first.
    pub fn refresh_endpoints(&mut self, input: &Input, services: &BTreeSet<ObjectKey>) {
        let started = Instant::now();
        let view = self.shared.view();
        let mut output = Output::clone(&view.output);
        let changed = refresh_endpoints(input, &mut output, services);
        self.publisher.publish_some(&output, &changed);
        let output = Arc::new(output);
        if let Some(last) = &mut self.last {
            last.output = Arc::clone(&output);
        }
        tracing::debug!(
            services = services.len(),
            gateways = changed.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "endpoints refreshed"
        );
        self.shared.publish(View {
            applied: true,
            output,
            statuses: view.statuses.clone(),
            loose_problems: view.loose_problems.clone(),
        });
    }

    /// Drains and stops the Envoys this process runs.
    pub async fn shutdown(&mut self) {
        self.infra.shutdown().await;
    }
}

/// Writes the `xds-address` and `admin-address` files tests and
/// `gatewright status` read.
pub fn write_addresses(dir: &Path, xds: SocketAddr, admin: SocketAddr) -> anyhow::Result<()> {
    write_atomically(&dir.join("admin-address"), &admin.to_string())?;
    write_atomically(&dir.join("xds-address"), &xds.to_string())
}

/// Removes what [`write_addresses`] wrote.
pub fn remove_addresses(dir: &Path) {
    let _ = std::fs::remove_file(dir.join("admin-address"));
    let _ = std::fs::remove_file(dir.join("xds-address"));
}

/// Writes a small file so that readers never see it half-written.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))?;
    Ok(())
}
