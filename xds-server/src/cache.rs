//! The versioned resource cache, keyed by node group.

use crate::share::{Name, Share, View};
use envoy_types::pb::google::protobuf::Any;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{broadcast, watch};

/// One named resource with a version derived from its content.
#[derive(Debug, PartialEq)]
pub struct Resource {
    /// The resource name, shared with the maps and streams that refer to it.
    pub name: Arc<str>,
    /// Version of this resource: a hash of its encoded bytes.
    pub version: String,
    /// The resource, ready to send.
    pub body: Any,
}

/// Resources of one type, by name.
pub type TypeResources = BTreeMap<Arc<str>, Arc<Resource>>;

/// All resources of one node group, by type URL then name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    /// Shared, so a type whose content did not change keeps its identity
    /// across [`Cache::set`] calls and streams can skip it cheaply; streams
    /// hold these views rather than copies.
    by_type: BTreeMap<String, Arc<View>>,
    /// [`Resources::config_version`], set when the cache takes the set.
    config_version: String,
}

fn content_version(bytes: &[u8]) -> String {
    // The std SipHash with its fixed default keys: the same bytes give the
    // same version in every process built from this source, so a version an
    // Envoy reports after a server restart still means the same content.
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    format!("{:016x}", h.finish())
}

impl Resources {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) `message` under `name`; its type URL comes from
    /// the message type.
    pub fn add<M: prost::Message + prost::Name>(&mut self, name: impl Into<String>, message: &M) {
        self.add_encoded(M::type_url(), name, message.encode_to_vec());
    }

    /// Adds (or replaces) an already encoded resource.
    pub fn add_encoded(
        &mut self,
        type_url: impl Into<String>,
        name: impl Into<String>,
        value: Vec<u8>,
    ) {
        let type_url = type_url.into();
        let name: Name = Arc::from(name.into());
        let version = content_version(&value);
        let resource = Resource {
            name: Arc::clone(&name),
            version,
            body: Any {
                type_url: type_url.clone(),
                value,
            },
        };
        Arc::make_mut(self.by_type.entry(type_url).or_default()).insert(name, Arc::new(resource));
    }

    /// The resources of one type (empty if there are none).
    pub fn of_type(&self, type_url: &str) -> Option<&TypeResources> {
        self.by_type.get(type_url).map(|t| t.map())
    }

    /// The shared view of one type, whose identity changes only with its
    /// content.
    pub(crate) fn shared_type(&self, type_url: &str) -> Option<&Arc<View>> {
        self.by_type.get(type_url)
    }

    /// Takes over `old`'s view for every type whose content is the same,
    /// and within a changed type `old`'s resources (and names) that are the
    /// same: streams holding the old view then share all but what changed,
    /// and tell unchanged resources apart by identity.
    fn share_unchanged(&mut self, old: &Resources) {
        for (type_url, mine) in &mut self.by_type {
            let Some(theirs) = old.by_type.get(type_url) else {
                continue;
            };
            if same_type_content(mine.map(), theirs.map()) {
                *mine = Arc::clone(theirs);
                continue;
            }
            let map = mine
                .map()
                .iter()
                .map(|(name, r)| match theirs.map().get_key_value(name) {
                    Some((n, o)) if o.version == r.version => (Arc::clone(n), Arc::clone(o)),
                    Some((n, _)) => (Arc::clone(n), Arc::clone(r)),
                    None => (Arc::clone(name), Arc::clone(r)),
                })
                .collect();
            *mine = Arc::new(View::new(map));
        }
    }

    /// Number of resources of all types.
    pub fn len(&self) -> usize {
        self.by_type.values().map(|t| t.map().len()).sum()
    }

    /// Whether there are no resources at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The version of the configuration in this set: a hash of every
    /// name and version but the endpoints'. Endpoints follow pods and are
    /// not configuration; an Envoy holding this version holds everything
    /// else exactly. Empty until [`Cache::set`] has taken the set.
    pub fn config_version(&self) -> &str {
        &self.config_version
    }

    fn compute_config_version(&self) -> String {
        let mut h = std::hash::DefaultHasher::new();
        for (type_url, resources) in &self.by_type {
            if type_url == crate::session::type_url::ENDPOINT || resources.map().is_empty() {
                continue;
            }
            type_url.hash(&mut h);
            for (name, r) in resources.map() {
                // `str` hashes like the `String` it once was.
                (**name).hash(&mut h);
                r.version.hash(&mut h);
            }
        }
        format!("{:016x}", h.finish())
    }

    /// Whether both sets hold the same names and versions, type by type.
    fn same_content(&self, other: &Resources) -> bool {
        let nonempty = |r: &Resources| {
            r.by_type
                .iter()
                .filter(|(_, m)| !m.map().is_empty())
                .count()
        };
        nonempty(self) == nonempty(other)
            && self
                .by_type
                .iter()
                .filter(|(_, m)| !m.map().is_empty())
                .all(|(t, mine)| {
                    other
                        .by_type
                        .get(t)
                        .is_some_and(|theirs| same_type_content(mine.map(), theirs.map()))
                })
    }
}

fn same_type_content(a: &TypeResources, b: &TypeResources) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((na, ra), (nb, rb))| na == nb && ra.version == rb.version)
}

/// A configuration an Envoy rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nack {
    /// The node group.
    pub group: String,
    /// The Envoy node id that rejected it.
    pub node: String,
    /// The resource type.
    pub type_url: String,
    /// The version that was rejected (type version for state-of-the-world,
    /// the rejected resources' versions for delta).
    pub version: String,
    /// Envoy's error message.
    pub message: String,
}

/// How many NACKs are kept per group.
const NACKS_KEPT: usize = 16;

struct Group {
    /// Set by [`Cache::set`] and cleared by [`Cache::clear`]: the group
    /// is served by choice, not only because a client asked for it. A
    /// group that is neither published nor watched is removed, so clients
    /// naming groups that do not exist cannot grow the cache.
    published: bool,
    resources: Arc<Resources>,
    notify: watch::Sender<u64>,
    nacks: VecDeque<Nack>,
    /// What the group's streams share and work out once for all of them.
    share: Arc<Share>,
}

impl Group {
    fn new() -> Self {
        Self {
            published: false,
            resources: Arc::new(Resources::new()),
            notify: watch::channel(0).0,
            nacks: VecDeque::new(),
            share: Arc::new(Share::default()),
        }
    }
}

/// Which configuration the streams of one node group hold, as far as
/// this server knows: a stream holds a version once the Envoy has
/// acknowledged every listener, route, cluster and secret of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupSync {
    /// Streams of the group open now.
    pub streams: usize,
    /// Config version ([`Resources::config_version`]) → streams holding it.
    pub holding: BTreeMap<String, usize>,
    /// Config version → Envoy's message, for versions some stream's Envoy
    /// rejected (part of) and still does not hold.
    pub rejected: BTreeMap<String, String>,
}

/// What one stream's Envoy holds of its group's configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum StreamState {
    /// Neither held nor rejected (yet): in flight, or never sent.
    #[default]
    Waiting,
    /// Holds this config version.
    Holds(String),
    /// Rejected (part of) this config version, with Envoy's message.
    Rejected(String, String),
}

/// Counters the control plane turns into metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Streams open now.
    pub streams: AtomicU64,
    /// Responses sent.
    pub responses: AtomicU64,
    /// NACKs received.
    pub nacks: AtomicU64,
    /// Streams refused by the authorizer (see `AdsServer::with_authorizer`).
    pub denied: AtomicU64,
    /// Streams closed for exceeding a [`crate::Limits`] bound: too many
    /// streams, names, or responses left unacknowledged.
    pub cut_off: AtomicU64,
    /// Secret subscriptions left unanswered because the client is not
    /// authenticated (see `AdsServer::deny_unauthenticated_secrets`).
    pub secrets_refused: AtomicU64,
}

/// The cache every stream reads from. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    groups: Mutex<HashMap<String, Group>>,
    nack_events: broadcast::Sender<Nack>,
    stats: Stats,
    /// Per group, per open stream: the config version it holds, if any.
    streams: Mutex<HashMap<String, BTreeMap<u64, StreamState>>>,
    /// Bumped whenever a stream opens, closes, or holds another version.
    sync_notify: watch::Sender<u64>,
    next_stream: AtomicU64,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("groups", &self.groups().len())
            .field("stats", &self.inner.stats)
            .finish()
    }
}

impl Default for Cache {
    fn default() -> Self {
        Self::new()
    }
}

impl Cache {
    /// An empty cache.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                groups: Mutex::new(HashMap::new()),
                nack_events: broadcast::channel(256).0,
                stats: Stats::default(),
                streams: Mutex::new(HashMap::new()),
                sync_notify: watch::channel(0).0,
                next_stream: AtomicU64::new(0),
            }),
        }
    }

    fn groups(&self) -> MutexGuard<'_, HashMap<String, Group>> {
        // A panic while holding the lock cannot leave a group half-written
        // (every update is a single assignment), so a poisoned lock is safe
        // to keep using.
        self.inner
            .groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sets the resources of `group`. Returns whether anything changed;
    /// setting identical content is a no-op that wakes no stream.
    pub fn set(&self, group: &str, resources: Resources) -> bool {
        let mut groups = self.groups();
        let g = groups.entry(group.to_owned()).or_insert_with(Group::new);
        g.published = true;
        if g.resources.same_content(&resources) {
            return false;
        }
        let mut resources = resources;
        resources.share_unchanged(&g.resources);
        resources.config_version = resources.compute_config_version();
        g.resources = Arc::new(resources);
        g.notify.send_modify(|generation| *generation += 1);
        true
    }

    /// Drops a group's resources (its Envoys then get empty
    /// configuration) and forgets the group once nothing watches it.
    pub fn clear(&self, group: &str) -> bool {
        let changed = self.set(group, Resources::new());
        let mut groups = self.groups();
        if let Some(g) = groups.get_mut(group) {
            g.published = false;
            if g.notify.receiver_count() == 0 {
                groups.remove(group);
            }
        }
        changed
    }

    /// Forgets `group` if it is not published and nothing watches it any
    /// more (called when a stream's receiver from [`Cache::watch`] is gone).
    pub(crate) fn release(&self, group: &str) {
        let mut groups = self.groups();
        if groups
            .get(group)
            .is_some_and(|g| !g.published && g.notify.receiver_count() == 0)
        {
            groups.remove(group);
        }
    }

    /// How many node groups the cache holds.
    pub fn group_count(&self) -> usize {
        self.groups().len()
    }

    /// The current resources of `group` and a receiver that changes when
    /// they do.
    pub fn watch(&self, group: &str) -> (Arc<Resources>, watch::Receiver<u64>) {
        let mut groups = self.groups();
        let g = groups.entry(group.to_owned()).or_insert_with(Group::new);
        (Arc::clone(&g.resources), g.notify.subscribe())
    }

    /// What the streams of `group` share (see [`crate::share`]).
    pub(crate) fn share(&self, group: &str) -> Arc<Share> {
        let mut groups = self.groups();
        let g = groups.entry(group.to_owned()).or_insert_with(Group::new);
        Arc::clone(&g.share)
    }

    /// The current resources of `group`.
    pub fn resources(&self, group: &str) -> Arc<Resources> {
        self.groups()
            .get(group)
            .map_or_else(|| Arc::new(Resources::new()), |g| Arc::clone(&g.resources))
    }

    /// The config version of `group`'s current resources
    /// ([`Resources::config_version`]), if the group was ever set.
    pub fn config_version(&self, group: &str) -> Option<String> {
        self.groups()
            .get(group)
            .map(|g| g.resources.config_version.clone())
            .filter(|v| !v.is_empty())
    }

    fn streams(&self) -> MutexGuard<'_, HashMap<String, BTreeMap<u64, StreamState>>> {
        // Every update is a single insert or remove: safe after a panic.
        self.inner
            .streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What the streams of `group` hold.
    pub fn sync_of(&self, group: &str) -> GroupSync {
        self.streams()
            .get(group)
            .map(group_sync)
            .unwrap_or_default()
    }

    /// What the streams of every group with an open stream hold.
    pub fn sync(&self) -> BTreeMap<String, GroupSync> {
        self.streams()
            .iter()
            .map(|(group, streams)| (group.clone(), group_sync(streams)))
            .collect()
    }

    /// A receiver that changes whenever [`Cache::sync`] may have.
    pub fn sync_changes(&self) -> watch::Receiver<u64> {
        self.inner.sync_notify.subscribe()
    }

    /// Registers a new stream of `group`, holding nothing yet.
    pub(crate) fn open_stream(&self, group: &str) -> u64 {
        let id = self.inner.next_stream.fetch_add(1, Ordering::Relaxed);
        self.streams()
            .entry(group.to_owned())
            .or_default()
            .insert(id, StreamState::Waiting);
        self.inner.sync_notify.send_modify(|n| *n += 1);
        id
    }

    /// Records what stream `id` of `group` holds now.
    pub(crate) fn stream_state(&self, group: &str, id: u64, state: StreamState) {
        if let Some(held) = self
            .streams()
            .get_mut(group)
            .and_then(|streams| streams.get_mut(&id))
        {
            *held = state;
        }
        self.inner.sync_notify.send_modify(|n| *n += 1);
    }

    /// Forgets stream `id` of `group`.
    pub(crate) fn close_stream(&self, group: &str, id: u64) {
        {
            let mut streams = self.streams();
            if let Some(of_group) = streams.get_mut(group) {
                of_group.remove(&id);
                if of_group.is_empty() {
                    streams.remove(group);
                }
            }
        }
        self.inner.sync_notify.send_modify(|n| *n += 1);
    }

    /// The last NACKs of `group`, oldest first.
    pub fn nacks(&self, group: &str) -> Vec<Nack> {
        self.groups()
            .get(group)
            .map(|g| g.nacks.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Every NACK as it arrives.
    pub fn nack_events(&self) -> broadcast::Receiver<Nack> {
        self.inner.nack_events.subscribe()
    }

    /// Counters for metrics.
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    pub(crate) fn record_nack(&self, nack: Nack) {
        self.inner.stats.nacks.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(group = %nack.group, node = %nack.node, type_url = %nack.type_url, version = %nack.version, message = %nack.message, "Envoy rejected configuration");
        {
            let mut groups = self.groups();
            let g = groups.entry(nack.group.clone()).or_insert_with(Group::new);
            if g.nacks.len() == NACKS_KEPT {
                g.nacks.pop_front();
            }
            g.nacks.push_back(nack.clone());
        }
        // No subscriber is not an error.
        let _ = self.inner.nack_events.send(nack);
    }
}

fn group_sync(streams: &BTreeMap<u64, StreamState>) -> GroupSync {
    let mut sync = GroupSync {
        streams: streams.len(),
        ..GroupSync::default()
    };
    for state in streams.values() {
        match state {
            StreamState::Waiting => {}
            StreamState::Holds(version) => {
                *sync.holding.entry(version.clone()).or_insert(0) += 1;
            }
            StreamState::Rejected(version, message) => {
                sync.rejected
                    .entry(version.clone())
                    .or_insert_with(|| message.clone());
            }
        }
    }
    sync
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_content_is_a_no_op() {
        let cache = Cache::new();
        let mut r = Resources::new();
        r.add_encoded("t", "a", vec![1, 2, 3]);
        assert!(cache.set("g", r.clone()));
        assert!(!cache.set("g", r.clone()));
        r.add_encoded("t", "a", vec![1, 2, 4]);
        assert!(cache.set("g", r));
        assert!(cache.clear("g"));
        assert!(!cache.clear("g"));
    }

    #[test]
    fn versions_follow_content() {
        let mut a = Resources::new();
        a.add_encoded("t", "x", vec![9]);
        let mut b = Resources::new();
        b.add_encoded("t", "x", vec![9]);
        assert_eq!(a, b);
        b.add_encoded("t", "x", vec![8]);
        assert_ne!(
            a.of_type("t").unwrap()["x"].version,
            b.of_type("t").unwrap()["x"].version
        );
    }
}
