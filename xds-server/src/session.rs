//! The state of one ADS stream: subscriptions per type, what the Envoy holds,
//! nonces, ACKs and NACKs; and the decision of what to send next.

use crate::cache::{Cache, Nack, Resource, Resources, StreamState};
use crate::grpc::{self, Encoded};
use crate::share::{Name, NameSet, ResourceSet, Share, View};
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;
use tonic::Status;

/// Bounds that keep one client from exhausting the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Streams open at once; more are refused with `RESOURCE_EXHAUSTED`.
    pub max_streams: u64,
    /// Resource names one stream may subscribe to, per type; a stream
    /// asking for more is closed with `RESOURCE_EXHAUSTED`.
    pub max_names: usize,
    /// Delta responses of one type a stream may have unacknowledged; past
    /// it, changes of that type wait (and are coalesced) until it answers.
    /// A state-of-the-world stream only ever has its latest response.
    pub max_unacked: usize,
    /// How long a stream with unacknowledged responses may go without
    /// answering any; then it is cut off with `RESOURCE_EXHAUSTED`.
    pub ack_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_streams: 10_000,
            max_names: 100_000,
            max_unacked: 8,
            ack_timeout: Duration::from_secs(60),
        }
    }
}

/// Type URLs of the resources Gatewright serves.
pub mod type_url {
    /// CDS.
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    /// EDS.
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    /// LDS.
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    /// RDS.
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    /// SDS.
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
}

use type_url::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};

/// Push order: what a resource refers to goes out before it (clusters and
/// their endpoints, and secrets, before the listeners and routes that use
/// them). Removals of clusters and secrets wait until listeners and routes
/// no longer need them.
const ORDER: [&str; 5] = [CLUSTER, ENDPOINT, SECRET, LISTENER, ROUTE];

fn known(type_url: &str) -> Option<usize> {
    ORDER.iter().position(|t| *t == type_url)
}

/// Types whose empty first subscription means "everything" (legacy wildcard).
fn wildcard_by_default(type_url: &str) -> bool {
    type_url == CLUSTER || type_url == LISTENER
}

/// Types whose resources are kept, while listeners and routes are being
/// replaced, for as long as the Envoy still subscribes to them: clusters and
/// secrets, which listeners and routes refer to by name, and in delta the
/// endpoints of the clusters so kept. xDS removes stale clusters "and related
/// EDS endpoints" only once nothing refers to them; a delta
/// `removed_resources` says an assignment is gone, while a
/// state-of-the-world EDS response that lacks one changes nothing.
fn kept_until_settled(mode: Mode, type_url: &str) -> bool {
    type_url == CLUSTER || type_url == SECRET || (mode == Mode::Delta && type_url == ENDPOINT)
}

/// Whether the stream speaks state-of-the-world or delta xDS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Sotw,
    Delta,
}

/// What a response not yet acknowledged carried.
#[derive(Debug)]
enum Sent {
    /// State of the world: everything the Envoy should hold of the type.
    All(ResourceSet),
    /// Delta: these resources, and the removal of these names.
    Changes {
        updated: Vec<Arc<Resource>>,
        removed: Vec<Name>,
    },
}

impl Sent {
    /// Every name the response carried.
    fn names(&self) -> Box<dyn Iterator<Item = &Name> + '_> {
        match self {
            Sent::All(set) => Box::new(set.iter().map(|(n, _)| n)),
            Sent::Changes { updated, removed } => {
                Box::new(updated.iter().map(|r| &r.name).chain(removed))
            }
        }
    }
}

/// A response not yet acknowledged.
#[derive(Debug)]
struct InFlight {
    nonce: String,
    /// Type version (state-of-the-world).
    version: String,
    sent: Sent,
}

#[derive(Debug)]
struct TypeState {
    /// A request for this type has arrived.
    requested: bool,
    wildcard: bool,
    /// Interned per group: streams asking for the same names share them.
    names: Arc<NameSet>,
    /// What the Envoy holds, or will once it accepts what is in flight: a
    /// view shared with the group, plus where this stream differs from it.
    held: ResourceSet,
    /// Type version last sent (state-of-the-world).
    sent_version: Option<String>,
    /// The nonce of the last response of this type.
    last_nonce: String,
    in_flight: Vec<InFlight>,
    /// Content the Envoy rejected: type version (state-of-the-world) and
    /// resource versions (delta). It is not sent again until it changes.
    rejected_version: Option<String>,
    rejected: BTreeMap<Name, String>,
    /// Envoy's message for the last rejection of this type.
    rejection: String,
    /// Send this type's current state even if it has not changed.
    force: bool,
}

impl TypeState {
    fn new(share: &Share) -> Self {
        Self {
            requested: false,
            wildcard: false,
            names: Arc::clone(share.no_names()),
            held: ResourceSet::of(Arc::clone(share.empty())),
            sent_version: None,
            last_nonce: String::new(),
            in_flight: Vec::new(),
            rejected_version: None,
            rejected: BTreeMap::new(),
            rejection: String::new(),
            force: false,
        }
    }

    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// One ADS stream.
pub(crate) struct Session {
    mode: Mode,
    cache: Cache,
    /// What the group's streams share: views, name sets, derived answers.
    share: Arc<Share>,
    group: String,
    node: String,
    types: [TypeState; 5],
    /// Types whose answer may have changed since they were last worked out.
    /// Re-deriving a type costs time in proportion to what changed, and
    /// every ACK is a request: this keeps an ACK from re-deriving its own
    /// type.
    dirty: [bool; 5],
    /// Per type, the view the last push worked from.
    seen: [Option<Arc<View>>; 5],
    nonce: u64,
    /// This stream's id in the cache's record of what streams hold.
    stream: u64,
    /// What was last recorded of this stream in the cache.
    holds: StreamState,
    limits: Limits,
    /// Whether secrets may be sent (see `AdsServer::deny_unauthenticated_secrets`).
    secrets_allowed: bool,
    /// Secret names asked for while secrets are not allowed: refused once.
    secrets_refused: bool,
    /// Whether the client resumed what it held from another stream (a delta
    /// request with `initial_resource_versions`): it may hold listeners and
    /// routes it has not asked about on this stream yet.
    resumed: bool,
    /// The last time the client answered a response, or a response went
    /// out while none was pending.
    last_progress: Instant,
}

fn unknown_type(type_url: &str) -> Status {
    Status::invalid_argument(format!(
        "unknown type URL {type_url:?}; Gatewright serves clusters, endpoints, listeners, routes and secrets (v3)"
    ))
}

/// Whether `requested` (a request's names, `*` aside) are exactly `held`,
/// without building a set: a state-of-the-world Envoy repeats its whole
/// subscription in every ACK.
fn same_names(requested: &[String], held: &NameSet) -> bool {
    if held.is_request(requested) {
        return true;
    }
    let mut count = 0;
    for n in requested.iter().filter(|n| *n != "*") {
        if !held.contains(n) {
            return false;
        }
        count += 1;
    }
    // Duplicates make the count larger than the set; then compare sets.
    count == held.len()
        || requested
            .iter()
            .filter(|n| *n != "*")
            .collect::<BTreeSet<_>>()
            .len()
            == held.len()
}

/// `name` as a shared name: the resources' own when they have it, so that
/// name sets share storage with the cache.
fn shared_name(all: Option<&Arc<View>>, name: &str) -> Name {
    all.and_then(|a| a.map().get_key_value(name))
        .map_or_else(|| Arc::from(name), |(n, _)| Arc::clone(n))
}

impl Session {
    pub(crate) fn new(
        mode: Mode,
        cache: Cache,
        group: String,
        node: String,
        limits: Limits,
        secrets_allowed: bool,
    ) -> Self {
        let stream = cache.open_stream(&group);
        let share = cache.share(&group);
        Self {
            mode,
            cache,
            types: std::array::from_fn(|_| TypeState::new(&share)),
            share,
            group,
            node,
            dirty: [false; 5],
            seen: Default::default(),
            nonce: 0,
            stream,
            holds: StreamState::Waiting,
            limits,
            secrets_allowed,
            secrets_refused: false,
            resumed: false,
            last_progress: Instant::now(),
        }
    }

    /// When this stream is cut off for leaving responses unanswered, if it
    /// has any pending.
    pub(crate) fn ack_deadline(&self) -> Option<Instant> {
        self.types
            .iter()
            .any(|t| !t.in_flight.is_empty())
            .then(|| self.last_progress + self.limits.ack_timeout)
    }

    /// Closes the stream if [`Session::ack_deadline`] has passed.
    pub(crate) fn check_acks(&self) -> Result<(), Status> {
        match self.ack_deadline() {
            Some(deadline) if deadline <= Instant::now() => {
                self.cache.stats().cut_off.fetch_add(1, Ordering::Relaxed);
                Err(Status::resource_exhausted(format!(
                    "no response acknowledged for {:?}; reconnect to resynchronise",
                    self.limits.ack_timeout
                )))
            }
            _ => Ok(()),
        }
    }

    fn too_many_names(&self, count: usize) -> Result<(), Status> {
        if count > self.limits.max_names {
            self.cache.stats().cut_off.fetch_add(1, Ordering::Relaxed);
            return Err(Status::resource_exhausted(format!(
                "{count} resource names subscribed; at most {} per type",
                self.limits.max_names
            )));
        }
        Ok(())
    }

    pub(crate) fn group(&self) -> &str {
        &self.group
    }

    /// Marks the types whose decisions read type `i`'s state: listeners and
    /// routes wait for warm clusters and endpoints; clusters, secrets and
    /// (delta) endpoints are kept until listeners and routes settle.
    fn mark_dependents(&mut self, i: usize) {
        let dependents: &[&str] = match ORDER[i] {
            CLUSTER | ENDPOINT => &[LISTENER, ROUTE],
            LISTENER | ROUTE => &[CLUSTER, ENDPOINT, SECRET],
            _ => &[],
        };
        for t in dependents {
            if let Some(j) = known(t) {
                self.dirty[j] = true;
            }
        }
    }

    fn next_nonce(&mut self) -> String {
        self.nonce += 1;
        self.nonce.to_string()
    }

    fn nack(&self, type_url: &str, version: String, message: String) {
        self.cache.record_nack(Nack {
            group: self.group.clone(),
            node: self.node.clone(),
            type_url: type_url.to_owned(),
            version,
            message,
        });
    }

    /// Applies a state-of-the-world request; `resources` are the group's
    /// current ones.
    pub(crate) fn on_sotw_request(
        &mut self,
        req: &DiscoveryRequest,
        resources: &Resources,
    ) -> Result<(), Status> {
        let i = known(&req.type_url).ok_or_else(|| unknown_type(&req.type_url))?;
        let type_url = ORDER[i];
        if !req.response_nonce.is_empty() {
            self.last_progress = Instant::now();
        }
        let st = &mut self.types[i];
        if !req.response_nonce.is_empty() {
            // Only an answer to our latest response counts; older ones are
            // stale and say nothing about what the Envoy holds now. Nonces
            // belong to a stream: before this stream has sent anything of
            // this type, a nonce (carried over from an earlier stream by the
            // client) answers nothing, and the request is a plain
            // subscription; ignoring it would leave the client waiting.
            if !st.last_nonce.is_empty() && req.response_nonce != st.last_nonce {
                return Ok(());
            }
            if let Some(pos) = st
                .in_flight
                .iter()
                .position(|f| f.nonce == req.response_nonce)
            {
                let f = st.in_flight.remove(pos);
                match &req.error_detail {
                    Some(err) => {
                        st.rejected_version = Some(f.version.clone());
                        st.rejection.clone_from(&err.message);
                        let message = err.message.clone();
                        self.nack(type_url, f.version, message);
                    }
                    None => st.rejected_version = None,
                }
                // An answer changes nothing this type would send, but it can
                // open the way for the types that wait on it.
                self.mark_dependents(i);
            }
        }
        self.too_many_names(req.resource_names.len())?;
        let st = &self.types[i];
        let explicit_wildcard = req.resource_names.iter().any(|n| n == "*");
        let names_changed = !same_names(&req.resource_names, &st.names);
        let wildcard = explicit_wildcard
            || (req.resource_names.is_empty()
                && wildcard_by_default(type_url)
                && (!st.requested || st.wildcard));
        if names_changed {
            // Another stream of the group has usually asked for the same.
            let names = self
                .share
                .find_requested(&req.resource_names)
                .unwrap_or_else(|| {
                    let all = resources.shared_type(type_url);
                    let order = req
                        .resource_names
                        .iter()
                        .filter(|n| *n != "*")
                        .map(|n| shared_name(all, n))
                        .collect();
                    self.share.intern(NameSet::requested(order))
                });
            self.types[i].names = names;
        }
        let st = &mut self.types[i];
        if !st.requested || wildcard != st.wildcard || names_changed {
            st.force = true;
            self.dirty[i] = true;
        }
        st.requested = true;
        st.wildcard = wildcard;
        Ok(())
    }

    /// Applies a delta request; `resources` are the group's current ones.
    pub(crate) fn on_delta_request(
        &mut self,
        req: &DeltaDiscoveryRequest,
        resources: &Resources,
    ) -> Result<(), Status> {
        let i = known(&req.type_url).ok_or_else(|| unknown_type(&req.type_url))?;
        let type_url = ORDER[i];
        let first = !self.types[i].requested;
        if !req.response_nonce.is_empty() {
            self.last_progress = Instant::now();
            let st = &mut self.types[i];
            if let Some(pos) = st
                .in_flight
                .iter()
                .position(|f| f.nonce == req.response_nonce)
            {
                let f = st.in_flight.remove(pos);
                if let Some(err) = &req.error_detail {
                    // The Envoy keeps what it had: forget what we sent, and
                    // do not send those versions again. Delta responses are
                    // applied independently, so a later response may already
                    // have replaced a rejected resource; that one stays held.
                    // (A rejected removal leaves nothing to forget.)
                    let mut versions = Vec::new();
                    if let Sent::Changes { updated, .. } = &f.sent {
                        for r in updated {
                            if st.held.get(&r.name).is_some_and(|h| h.version == r.version) {
                                st.held.remove(&r.name);
                            }
                            st.rejected.insert(Arc::clone(&r.name), r.version.clone());
                            versions.push(r.version.as_str());
                        }
                    }
                    st.rejection.clone_from(&err.message);
                    let version = versions.join(",");
                    let message = err.message.clone();
                    self.nack(type_url, version, message);
                    // What this type holds changed; rare, so look again.
                    self.dirty[i] = true;
                }
                // An answer can open the way for the types that wait on it.
                self.mark_dependents(i);
            }
        }
        if first
            || !req.resource_names_subscribe.is_empty()
            || !req.resource_names_unsubscribe.is_empty()
        {
            self.dirty[i] = true;
        }
        if first && !req.initial_resource_versions.is_empty() {
            self.resumed = true;
        }
        if first && (type_url == LISTENER || type_url == ROUTE) {
            // What clusters may be removed depends on what listeners and
            // routes are held, which this request may have just told.
            self.mark_dependents(i);
        }
        let all = resources.shared_type(type_url);
        let st = &mut self.types[i];
        let mut names = None;
        for name in &req.resource_names_subscribe {
            if name == "*" {
                st.wildcard = true;
            } else if !st.names.contains(name) {
                names
                    .get_or_insert_with(|| st.names.names().clone())
                    .insert(shared_name(all, name));
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                st.wildcard = false;
            } else {
                let name = shared_name(all, name);
                if st.names.contains(&name) || names.is_some() {
                    names
                        .get_or_insert_with(|| st.names.names().clone())
                        .remove(&name);
                }
                // The Envoy drops what it no longer watches.
                if !st.wildcard {
                    st.held.remove(&name);
                }
            }
        }
        if let Some(names) = names {
            st.names = self.share.intern(NameSet::new(names));
        }
        if first {
            if req.resource_names_subscribe.is_empty() && wildcard_by_default(type_url) {
                st.wildcard = true;
            }
            // After a reconnect the Envoy says what it still holds; what is
            // unchanged is not sent again. Where that is what the cache has,
            // the cache's resource stands for it.
            for (name, version) in &req.initial_resource_versions {
                let held = all
                    .and_then(|a| a.map().get(name.as_str()))
                    .filter(|r| r.version == *version)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Resource {
                            name: Arc::from(name.as_str()),
                            version: version.clone(),
                            body: Default::default(),
                        })
                    });
                st.held.insert(Arc::clone(&held.name), held);
            }
            if !req.initial_resource_versions.is_empty() {
                // Kept as the difference from what it should hold, which
                // is usually nothing.
                let view = self.desired_view(i, resources);
                let st = &mut self.types[i];
                st.held = st.held.rebased(&view, &self.share);
            }
        }
        let st = &mut self.types[i];
        st.requested = true;
        let count = st.names.len().max(req.initial_resource_versions.len());
        self.too_many_names(count)
    }

    /// The resources of type `i` the Envoy should hold now: a view shared
    /// by every stream of the group with the same subscription.
    fn desired_view(&self, i: usize, resources: &Resources) -> Arc<View> {
        if ORDER[i] == SECRET && !self.secrets_allowed {
            return Arc::clone(self.share.empty());
        }
        let st = &self.types[i];
        let Some(all) = resources.shared_type(ORDER[i]) else {
            return Arc::clone(self.share.empty());
        };
        if st.wildcard {
            Arc::clone(all)
        } else {
            self.share.select(all, &st.names)
        }
    }

    /// Whether the clusters the Envoy holds are warm, so listeners and routes
    /// that send traffic to them can go out. Envoy only asks for a new
    /// cluster's endpoints once it has processed the CDS response, and a
    /// route to a cluster that is still warming answers 503 ("no cluster").
    /// Warm here means: the latest CDS response is answered, and every held
    /// cluster with an assignment of the same name (clusters name their
    /// assignment after themselves) has been sent it and the Envoy has
    /// answered that. Where waiting could last forever (a rejected CDS or
    /// EDS response, EDS never requested) it does not wait.
    fn clusters_warm(&self, resources: &Resources) -> bool {
        let cds = &self.types[known(CLUSTER).unwrap_or_default()];
        let eds = &self.types[known(ENDPOINT).unwrap_or_default()];
        if !cds.requested {
            return true;
        }
        if !cds.in_flight.is_empty() {
            return false;
        }
        if cds.rejected_version.is_some()
            || !eds.requested
            || eds.rejected_version.is_some()
            || !eds.rejected.is_empty()
        {
            return true;
        }
        let Some(assignments) = resources.shared_type(ENDPOINT) else {
            return true;
        };
        let needed = |c: &str| cds.held.contains(c) && assignments.map().contains_key(c);
        // An endpoint response still unanswered for a held cluster: usually
        // the first name sent tells.
        if eds
            .in_flight
            .iter()
            .any(|f| f.sent.names().any(|n| needed(n)))
        {
            return false;
        }
        if cds.held.is_plain() && eds.held.is_plain() {
            // The same for every stream holding the same: worked out once.
            let names = (!eds.wildcard).then_some(&eds.names);
            return self
                .share
                .warm(cds.held.base(), eds.held.base(), names, assignments);
        }
        cds.held
            .iter()
            .filter(|(cluster, _)| assignments.map().contains_key(*cluster))
            .all(|(cluster, _)| eds.wants(cluster) && eds.held.contains(cluster))
    }

    /// Whether listeners and routes are in their final state, so clusters and
    /// secrets they used to need can go.
    fn referrers_settled(&self, resources: &Resources) -> bool {
        [LISTENER, ROUTE].iter().all(|t| {
            let i = known(t).unwrap_or_default();
            let st = &self.types[i];
            if !st.requested {
                // A new client holds none. A resuming one (an Envoy whose
                // control plane restarted) may still route to clusters this
                // configuration dropped; it asks for its listeners and routes
                // right after its clusters, so wait for that when the
                // configuration has any.
                return !(self.resumed && resources.of_type(t).is_some_and(|r| !r.is_empty()));
            }
            self.settled(i, resources)
        })
    }

    /// Whether type `i` is settled at `resources`: nothing in flight or
    /// rejected, and the Envoy holds exactly what it should.
    ///
    /// Runs after every push: it compares what the stream holds with the
    /// shared view it should hold, which costs what differs between them.
    fn settled(&self, i: usize, resources: &Resources) -> bool {
        let st = &self.types[i];
        // A state-of-the-world NACK leaves `held` at what was rejected,
        // hence the version check. A delta NACK drops the rejected
        // resources from `held`, so the comparison below covers it; a
        // rejection that a later accepted response superseded does not
        // count.
        if !st.in_flight.is_empty() || st.rejected_version.is_some() {
            return false;
        }
        let view = self.desired_view(i, resources);
        st.held.is(&view) || st.held.same(&ResourceSet::of(view), &self.share)
    }

    /// Whether the Envoy holds all of `resources` but the endpoints: for
    /// every such type nothing is in flight or rejected, and what it holds
    /// is exactly what it should. Clusters and listeners (wildcard) count
    /// even before they are asked for; routes and secrets only by the names
    /// the Envoy asks for, which its listeners and clusters determine.
    fn holds_config(&self, resources: &Resources) -> bool {
        [CLUSTER, LISTENER, ROUTE, SECRET].iter().all(|t| {
            let i = known(t).unwrap_or_default();
            let st = &self.types[i];
            if !st.requested {
                return !wildcard_by_default(t)
                    || resources.of_type(t).is_none_or(BTreeMap::is_empty);
            }
            self.settled(i, resources)
        })
    }

    /// Envoy's message if it rejected part of `resources`' configuration
    /// (anything but endpoints) and holds the rejected content still
    /// unreplaced: state-of-the-world, a type whose latest version was
    /// NACKed; delta, a resource whose current version was.
    fn rejection(&self, resources: &Resources) -> Option<String> {
        [CLUSTER, LISTENER, ROUTE, SECRET].iter().find_map(|t| {
            let i = known(t).unwrap_or_default();
            let st = &self.types[i];
            let rejected = match self.mode {
                Mode::Sotw => st.rejected_version.is_some(),
                Mode::Delta if st.rejected.is_empty() => false,
                Mode::Delta => {
                    let desired = self.desired_view(i, resources);
                    st.rejected
                        .iter()
                        .any(|(n, v)| desired.map().get(n).is_some_and(|r| r.version == *v))
                }
            };
            rejected.then(|| st.rejection.clone())
        })
    }

    /// Records in the cache what this stream holds of `resources`'
    /// configuration, when that changed.
    fn record_holding(&mut self, resources: &Resources) {
        let version = resources.config_version();
        let state = if self.holds_config(resources) {
            StreamState::Holds(version.to_owned())
        } else if let Some(message) = self.rejection(resources) {
            StreamState::Rejected(version.to_owned(), message)
        } else {
            StreamState::Waiting
        };
        if state != self.holds {
            self.holds = state.clone();
            self.cache.stream_state(&self.group, self.stream, state);
        }
    }

    /// Everything to send now, in push order; afterwards records whether
    /// the Envoy holds the current configuration.
    pub(crate) fn push(&mut self, resources: &Resources) -> Vec<Encoded> {
        let out = self.push_all(resources);
        self.record_holding(resources);
        out
    }

    fn push_all(&mut self, resources: &Resources) -> Vec<Encoded> {
        // A type whose content changed (a new shared view) is looked at
        // again, with the types that depend on it.
        for (i, type_url) in ORDER.iter().enumerate() {
            let now = resources.shared_type(type_url);
            let same = match (&self.seen[i], now) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if !same {
                self.seen[i] = now.cloned();
                self.dirty[i] = true;
                self.mark_dependents(i);
            }
        }
        if !self.secrets_allowed && !self.secrets_refused {
            let sds = &self.types[known(SECRET).unwrap_or_default()];
            if sds.requested && (sds.wildcard || sds.names.len() > 0) {
                self.secrets_refused = true;
                self.cache
                    .stats()
                    .secrets_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(group = %self.group, node = %self.node, "not sending secrets to a client that is not authenticated");
            }
        }
        let idle = self.types.iter().all(|t| t.in_flight.is_empty());
        let mut out = Vec::new();
        // Listeners and routes come after clusters, endpoints and secrets in
        // ORDER, so this is worked out once, after those have been pushed.
        let mut warm = None;
        for (i, type_url) in ORDER.iter().enumerate() {
            if !self.types[i].requested || !self.dirty[i] {
                continue;
            }
            // Backpressure: a client that is behind gets the latest state
            // once it catches up, not every step in between.
            if self.types[i].in_flight.len() >= self.limits.max_unacked {
                continue;
            }
            if (*type_url == LISTENER || *type_url == ROUTE)
                && !*warm.get_or_insert_with(|| self.clusters_warm(resources))
            {
                // Still dirty: looked at again on the next event.
                // Make before break: what listeners and routes point at must
                // be in place first. The answer that warms the clusters
                // comes back as a request, and that push sends them.
                continue;
            }
            self.dirty[i] = false;
            let mut desired = ResourceSet::of(self.desired_view(i, resources));
            if kept_until_settled(self.mode, type_url) && !self.referrers_settled(resources) {
                // Make before break: keep what listeners and routes may
                // still point at until they are replaced.
                let st = &self.types[i];
                for name in st.held.differing(&desired, &self.share) {
                    if let Some(r) = st.held.get(&name)
                        && !desired.contains(&name)
                        && st.wants(&name)
                    {
                        let r = Arc::clone(r);
                        desired.insert(name, r);
                    }
                }
            }
            let sent = match self.mode {
                Mode::Sotw => self.push_sotw(i, desired),
                Mode::Delta => self.push_delta(i, desired),
            };
            if let Some((response, changed)) = sent {
                // A changed cluster warms again and needs its endpoints, even
                // if they did not change.
                if *type_url == CLUSTER && !changed.is_empty() {
                    let e = known(ENDPOINT).unwrap_or_default();
                    self.dirty[e] = true;
                    let eds = &mut self.types[e];
                    eds.force = true;
                    for name in &changed {
                        eds.held.remove(name);
                    }
                }
                out.push(response);
                self.mark_dependents(i);
            }
        }
        if idle && !out.is_empty() {
            self.last_progress = Instant::now();
        }
        out
    }

    /// A state-of-the-world response for type `i`, and (for clusters) the
    /// names whose version changed in it.
    fn push_sotw(&mut self, i: usize, desired: ResourceSet) -> Option<(Encoded, Vec<Name>)> {
        let version = desired.version();
        let st = &self.types[i];
        let unchanged = st.sent_version.as_deref() == Some(version.as_str());
        let rejected = st.rejected_version.as_deref() == Some(version.as_str());
        if (unchanged || rejected) && !st.force {
            return None;
        }
        let nonce = self.next_nonce();
        let st = &mut self.types[i];
        let changed: Vec<Name> = if ORDER[i] == CLUSTER {
            st.held.changed_in(&desired, &self.share)
        } else {
            Vec::new()
        };
        // The resource list is the view's, encoded once for the group.
        let response = grpc::sotw(&version, desired.encoded(), ORDER[i], &nonce);
        // Only the latest response of a type can be acknowledged.
        st.in_flight.clear();
        st.in_flight.push(InFlight {
            nonce: nonce.clone(),
            version: version.clone(),
            sent: Sent::All(desired.clone()),
        });
        st.last_nonce = nonce;
        st.sent_version = Some(version);
        st.held = desired;
        st.force = false;
        self.cache
            .stats()
            .responses
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some((response, changed))
    }

    /// A delta response for type `i` (changed and removed resources only),
    /// and the names whose version changed in it.
    fn push_delta(&mut self, i: usize, desired: ResourceSet) -> Option<(Encoded, Vec<Name>)> {
        // A rejected resource that is gone is no longer a concern.
        self.types[i].rejected.retain(|n, _| desired.contains(n));
        let st = &self.types[i];
        let mut updated: Vec<Arc<Resource>> = Vec::new();
        let mut removed: Vec<Name> = Vec::new();
        // Names not sent although they differ: they stay as held.
        let mut skipped: Vec<Name> = Vec::new();
        for name in st.held.differing(&desired, &self.share) {
            match desired.get(&name) {
                Some(r) if st.rejected.get(&name) == Some(&r.version) => skipped.push(name),
                Some(r) => updated.push(Arc::clone(r)),
                None => removed.push(name),
            }
        }
        // The first answer to a wildcard subscription goes out even when it
        // is empty (nothing exists, or a reconnecting client already holds
        // it all): the Envoy waits for its first CDS and LDS responses
        // before it finishes initialising.
        let first_wildcard = st.wildcard && st.last_nonce.is_empty();
        self.types[i].force = false;
        if updated.is_empty() && removed.is_empty() && !first_wildcard {
            return None;
        }
        let nonce = self.next_nonce();
        let st = &mut self.types[i];
        for r in &updated {
            st.rejected.remove(&r.name);
        }
        let mut held = desired.clone();
        for name in skipped {
            match st.held.get(&name) {
                Some(h) => {
                    let h = Arc::clone(h);
                    held.insert(name, h);
                }
                None => held.remove(&name),
            }
        }
        st.held = held;
        let response = grpc::delta(&desired.version(), &updated, ORDER[i], &removed, &nonce);
        let changed = updated.iter().map(|r| Arc::clone(&r.name)).collect();
        st.in_flight.push(InFlight {
            nonce: nonce.clone(),
            version: String::new(),
            sent: Sent::Changes { updated, removed },
        });
        st.last_nonce = nonce;
        self.cache
            .stats()
            .responses
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some((response, changed))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.cache.close_stream(&self.group, self.stream);
    }
}
