//! Reports the objects the provider could not decode (see
//! [`Provider::undecodable`](super::provider::Provider::undecodable)): a
//! warning in the log and the `gatewright_undecodable_objects` gauge on
//! every replica, and a Warning Event on the object from the leader.
//!
//! Rounds run on every change and every resync, so each object version
//! (resourceVersion) is logged and given an Event once, not once per round;
//! an object that decodes again or is deleted stops being reported.

use super::provider::Undecodable;
use crate::metrics::Metrics;
use futures::StreamExt as _;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use std::collections::{BTreeMap, BTreeSet};

/// The reason of the Warning Event on an undecodable object.
pub const REASON: &str = "Undecodable";
/// The API server refuses Event notes longer than this (bytes).
const NOTE_LIMIT: usize = 1024;
/// How many Events are published at once.
const PARALLEL_EVENTS: usize = 8;

/// An object, across its versions: (kind, namespace, name).
type Key = (&'static str, Option<String>, String);

fn key_of(u: &Undecodable) -> Key {
    (
        u.kind,
        u.reference.namespace.clone(),
        u.reference.name.clone().unwrap_or_default(),
    )
}

fn describe(key: &Key) -> String {
    match &key.1 {
        Some(ns) => format!("{ns}/{}", key.2),
        None => key.2.clone(),
    }
}

/// What has been reported about undecodable objects so far.
pub struct UndecodableReport {
    recorder: Recorder,
    /// Every undecodable object, as of the last [`Self::observe`].
    current: BTreeMap<Key, Undecodable>,
    /// The resourceVersion each Event was published for.
    published: BTreeMap<Key, Option<String>>,
    /// Kinds the gauge has a series for: set back to 0, not left at their
    /// last count, when their objects are fixed.
    gauged: BTreeSet<&'static str>,
}

impl UndecodableReport {
    /// Events are reported as coming from `controller_name` (the
    /// GatewayClass controllerName, a qualified name as the Events API
    /// wants), instance `identity`.
    pub fn new(client: Client, controller_name: &str, identity: &str) -> Self {
        let reporter = Reporter {
            controller: controller_name.to_owned(),
            instance: Some(identity.to_owned()),
        };
        Self {
            recorder: Recorder::new(client, reporter),
            current: BTreeMap::new(),
            published: BTreeMap::new(),
            gauged: BTreeSet::new(),
        }
    }

    /// Takes the provider's current list of undecodable objects: logs each
    /// object version not seen before and each object that is no longer
    /// undecodable, and sets the gauge.
    pub fn observe(&mut self, found: Vec<Undecodable>, metrics: &Metrics) {
        let next: BTreeMap<Key, Undecodable> = found.into_iter().map(|u| (key_of(&u), u)).collect();
        for (key, u) in &next {
            let known = self
                .current
                .get(key)
                .is_some_and(|old| old.reference.resource_version == u.reference.resource_version);
            if !known {
                tracing::warn!(
                    kind = u.kind,
                    object = %describe(key),
                    resource_version = u.reference.resource_version.as_deref().unwrap_or(""),
                    "cannot decode the object; ignoring it until it changes: {}",
                    u.error
                );
            }
        }
        for key in self.current.keys() {
            if !next.contains_key(key) {
                tracing::info!(
                    kind = key.0,
                    object = %describe(key),
                    "no longer undecodable (changed or deleted)"
                );
            }
        }
        self.published.retain(|key, _| next.contains_key(key));
        self.current = next;

        let mut counts: BTreeMap<&'static str, i64> =
            self.gauged.iter().map(|kind| (*kind, 0)).collect();
        for u in self.current.values() {
            *counts.entry(u.kind).or_default() += 1;
        }
        for (kind, count) in counts {
            metrics
                .undecodable_objects
                .get_or_create(&[("kind", kind)])
                .set(count);
            self.gauged.insert(kind);
        }
    }

    /// Publishes a Warning Event on every undecodable object version that
    /// has none yet. Only the leader calls this; a failed publish is tried
    /// again on the next call.
    pub async fn publish(&mut self) {
        let due: Vec<(Key, Undecodable)> = self
            .current
            .iter()
            .filter(|(key, u)| self.published.get(*key) != Some(&u.reference.resource_version))
            .map(|(key, u)| (key.clone(), u.clone()))
            .collect();
        let recorder = &self.recorder;
        let results: Vec<_> = futures::stream::iter(due)
            .map(|(key, u)| async move {
                let result = recorder.publish(&event(&u), &u.reference).await;
                (key, u, result)
            })
            .buffer_unordered(PARALLEL_EVENTS)
            .collect()
            .await;
        for (key, u, result) in results {
            match result {
                Ok(()) => {
                    self.published.insert(key, u.reference.resource_version);
                }
                Err(e) => tracing::warn!(
                    kind = u.kind,
                    object = %describe(&key),
                    "cannot publish the Undecodable event: {e}"
                ),
            }
        }
    }
}

/// The Warning Event of one undecodable object.
fn event(u: &Undecodable) -> Event {
    let note = format!(
        "Gatewright cannot decode this {} and ignores it until it changes: {}",
        u.kind, u.error
    );
    Event {
        type_: EventType::Warning,
        reason: REASON.to_owned(),
        note: Some(clip(note, NOTE_LIMIT)),
        action: "Decode".to_owned(),
        secondary: None,
    }
}

/// `text` cut to at most `limit` bytes, on a character boundary, marked
/// with an ellipsis when cut.
fn clip(mut text: String, limit: usize) -> String {
    const MORE: &str = "…";
    if text.len() <= limit {
        return text;
    }
    let mut end = limit.saturating_sub(MORE.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(MORE);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_cut_to_the_limit_on_a_character_boundary() {
        assert_eq!(clip("short".to_owned(), 10), "short");
        let cut = clip("é".repeat(600), NOTE_LIMIT);
        assert!(cut.len() <= NOTE_LIMIT, "{} bytes", cut.len());
        assert!(cut.ends_with('…'));
    }
}
