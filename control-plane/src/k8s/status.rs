//! Writes the translator's statuses to the API server.
//!
//! A status is written only when it differs from the live object's (after
//! carrying over `lastTransitionTime` of conditions whose status did not
//! change), with the live object's resourceVersion, so a write based on a
//! stale view fails with a conflict instead of undoing someone else's
//! change; the watch event of that change brings a fresh round anyway.
//! In Route `status.parents` and BackendTLSPolicy `status.ancestors`,
//! entries of other controllers are kept as they are.

use super::provider::Provider;
use crate::status::keep_transition_times;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use gatewright_translator::{ObjectKey, Statuses};
use kube::api::PostParams;
use kube::core::object::HasStatus;
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

/// How many status writes are in flight at once.
const PARALLEL_WRITES: usize = 8;

/// What one round of writing did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteReport {
    /// Statuses written.
    pub written: usize,
    /// Statuses already as wanted.
    pub unchanged: usize,
    /// Writes refused because the object changed meanwhile (retried on the
    /// next round, which that change triggers).
    pub conflicts: usize,
    /// Writes that failed otherwise.
    pub failed: usize,
}

enum Outcome {
    Written,
    Unchanged,
    Conflict,
    Failed,
}

/// A kind whose status this writer can read, compare and replace.
trait StatusObject:
    Resource<DynamicType = ()>
    + HasStatus<Status: Serialize + DeserializeOwned + Send>
    + Clone
    + Serialize
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> StatusObject for K where
    K: Resource<DynamicType = ()>
        + HasStatus<Status: Serialize + DeserializeOwned + Send>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static
{
}

/// Writes statuses for one controllerName.
#[derive(Clone)]
pub struct StatusWriter {
    client: Client,
    controller_name: String,
}

impl StatusWriter {
    /// A writer for the objects of `controller_name`.
    pub fn new(client: Client, controller_name: String) -> Self {
        Self {
            client,
            controller_name,
        }
    }

    /// Brings every status the translator has an opinion on in line with
    /// `output`, and removes this controller's entries from Routes and
    /// policies it no longer has an opinion on.
    pub async fn write(&self, provider: &Provider, statuses: &Statuses) -> WriteReport {
        let s = statuses;
        let mut jobs: Vec<BoxFuture<'static, Outcome>> = Vec::new();
        for (name, status) in &s.gateway_classes {
            if let Some(live) = provider.gateway_class(name) {
                jobs.push(self.job(Api::all(self.client.clone()), live, to_json(status)));
            }
        }
        for (key, status) in &s.gateways {
            if let Some(live) = provider.gateway(key) {
                let mut desired = to_json(status);
                keep_foreign_conditions(&mut desired, &status_of(&*live));
                jobs.push(self.job(self.namespaced(key), live, desired));
            }
        }
        for (key, status) in &s.listener_sets {
            if let Some(live) = provider.listener_set(key) {
                let mut desired = to_json(status);
                keep_foreign_conditions(&mut desired, &status_of(&*live));
                jobs.push(self.job(self.namespaced(key), live, desired));
            }
        }
        self.merged(&mut jobs, provider.http_routes(), &s.http_routes, "parents");
        self.merged(&mut jobs, provider.grpc_routes(), &s.grpc_routes, "parents");
        self.merged(&mut jobs, provider.tls_routes(), &s.tls_routes, "parents");
        self.merged(&mut jobs, provider.tcp_routes(), &s.tcp_routes, "parents");
        self.merged(&mut jobs, provider.udp_routes(), &s.udp_routes, "parents");
        self.merged(
            &mut jobs,
            provider.backend_tls_policies(),
            &s.backend_tls_policies,
            "ancestors",
        );

        let mut report = WriteReport::default();
        let mut results = futures::stream::iter(jobs).buffer_unordered(PARALLEL_WRITES);
        while let Some(outcome) = results.next().await {
            match outcome {
                Outcome::Written => report.written += 1,
                Outcome::Unchanged => report.unchanged += 1,
                Outcome::Conflict => report.conflicts += 1,
                Outcome::Failed => report.failed += 1,
            }
        }
        report
    }

    fn namespaced<K>(&self, key: &ObjectKey) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        Api::namespaced(self.client.clone(), &key.namespace)
    }

    /// Jobs for a kind whose status is a list of per-controller entries
    /// (`list`): ours come from `ours`, other controllers' stay.
    fn merged<K, S>(
        &self,
        jobs: &mut Vec<BoxFuture<'static, Outcome>>,
        live: Vec<Arc<K>>,
        ours: &BTreeMap<ObjectKey, S>,
        list: &'static str,
    ) where
        K: StatusObject + Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        S: Serialize,
    {
        for object in live {
            let meta = object.meta();
            let key = ObjectKey::new(
                meta.namespace.clone().unwrap_or_default(),
                meta.name.clone().unwrap_or_default(),
            );
            let current = status_of(&*object);
            let others: Vec<Value> = entries(&current, list)
                .into_iter()
                .filter(|e| {
                    e.get("controllerName").and_then(Value::as_str)
                        != Some(self.controller_name.as_str())
                })
                .collect();
            let mine: Vec<Value> = ours
                .get(&key)
                .map(|s| entries(&to_json(s), list))
                .unwrap_or_default();
            if mine.is_empty() && others.len() == entries(&current, list).len() {
                // Nothing of ours, before or now.
                continue;
            }
            let mut desired = if current.is_object() {
                current.clone()
            } else {
                Value::Object(serde_json::Map::new())
            };
            let mut all = others;
            all.extend(mine);
            desired[list] = Value::Array(all);
            jobs.push(self.job(self.namespaced(&key), object, desired));
        }
    }

    fn job<K>(&self, api: Api<K>, live: Arc<K>, desired: Value) -> BoxFuture<'static, Outcome>
    where
        K: StatusObject,
    {
        Box::pin(write_one(api, live, desired))
    }
}

async fn write_one<K>(api: Api<K>, live: Arc<K>, mut desired: Value) -> Outcome
where
    K: StatusObject,
{
    let current = status_of(&*live);
    keep_transition_times(&mut desired, &current);
    if desired == current {
        return Outcome::Unchanged;
    }
    let name = live.meta().name.clone().unwrap_or_default();
    let kind = K::kind(&());
    let status: K::Status = match serde_json::from_value(desired) {
        Ok(status) => status,
        Err(e) => {
            tracing::error!(%kind, %name, "cannot encode the status: {e}");
            return Outcome::Failed;
        }
    };
    let mut body = K::clone(&live);
    *body.status_mut() = Some(status);
    // Our store holds no managedFields; sending none leaves them as they are.
    body.meta_mut().managed_fields = None;
    match api
        .replace_status(&name, &PostParams::default(), &body)
        .await
    {
        Ok(_) => {
            tracing::debug!(%kind, %name, "status written");
            Outcome::Written
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            tracing::debug!(%kind, %name, "status write conflicted; the next round retries");
            Outcome::Conflict
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Outcome::Unchanged,
        Err(e) => {
            tracing::warn!(%kind, %name, "cannot write status: {e}");
            Outcome::Failed
        }
    }
}

/// Adds to `desired` (a Gateway's or ListenerSet's status) the conditions of
/// `current` whose types Gatewright never writes, at the object and per
/// listener (by name): other controllers own them, and they stay exactly
/// as they are.
fn keep_foreign_conditions(desired: &mut Value, current: &Value) {
    fn foreign(conditions: &Value) -> impl Iterator<Item = &Value> {
        conditions.as_array().into_iter().flatten().filter(|c| {
            c.get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| !gatewright_translator::writes_condition_type(t))
        })
    }
    fn append(into: &mut Value, kept: Vec<Value>) {
        if kept.is_empty() {
            return;
        }
        if !into["conditions"].is_array() {
            into["conditions"] = Value::Array(Vec::new());
        }
        if let Some(list) = into["conditions"].as_array_mut() {
            list.extend(kept);
        }
    }
    if !desired.is_object() {
        return;
    }
    append(desired, foreign(&current["conditions"]).cloned().collect());
    let Some(listeners) = desired.get_mut("listeners").and_then(Value::as_array_mut) else {
        return;
    };
    for listener in listeners {
        let name = listener.get("name").cloned();
        let live = current["listeners"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l.get("name") == name.as_ref());
        if let Some(live) = live {
            append(listener, foreign(&live["conditions"]).cloned().collect());
        }
    }
}

fn to_json<S: Serialize>(status: &S) -> Value {
    serde_json::to_value(status).unwrap_or(Value::Null)
}

/// The object's status as JSON (only the status is encoded: this runs for
/// every Route on every round).
fn status_of<K>(object: &K) -> Value
where
    K: HasStatus,
    K::Status: Serialize,
{
    object
        .status()
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(Value::Null)
}

fn entries(status: &Value, list: &str) -> Vec<Value> {
    status
        .get(list)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::keep_foreign_conditions;
    use serde_json::json;

    fn condition(t: &str, status: &str) -> serde_json::Value {
        json!({"type": t, "status": status, "reason": "R", "message": "",
               "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1})
    }

    #[test]
    fn conditions_of_types_gatewright_never_writes_are_kept_as_they_are() {
        let current = json!({
            "conditions": [condition("Accepted", "False"), condition("example.com/Seeded", "True")],
            "listeners": [
                {"name": "http", "conditions": [condition("Programmed", "False"),
                                                 condition("example.com/Seeded", "True")]},
                {"name": "gone", "conditions": [condition("example.com/Other", "True")]},
            ],
        });
        let mut desired = json!({
            "conditions": [condition("Accepted", "True")],
            "listeners": [{"name": "http", "conditions": [condition("Programmed", "True")]}],
        });
        keep_foreign_conditions(&mut desired, &current);
        assert_eq!(
            desired,
            json!({
                "conditions": [condition("Accepted", "True"), condition("example.com/Seeded", "True")],
                "listeners": [{"name": "http", "conditions": [
                    condition("Programmed", "True"), condition("example.com/Seeded", "True")]}],
            }),
            "ours replace ours; a foreign one stays, on the object and on a listener that remains"
        );
    }
}
