//! What the streams of one node group share, so that a stream costs memory
//! and time in proportion to what differs for it, not to the size of the
//! configuration.
//!
//! - A [`View`] is a set of resources of one type with its type version
//!   worked out once. The cache holds one per type; streams hold the views
//!   they sent by reference, never a copy.
//! - Name sets that streams subscribe to are interned per group, so a
//!   hundred Envoys asking for the same 5,000 endpoint names store them once.
//! - What is derived from views is worked out once per group and reused by
//!   every stream that asks with the same inputs: the view a subscription
//!   selects, the difference between two views, and whether held clusters
//!   are warm.
//! - A [`ResourceSet`] is a view plus the few names where a stream differs
//!   from it (a rejected resource it still holds, an unsubscribed name, a
//!   cluster whose endpoints must be sent again).

use crate::cache::{Resource, TypeResources};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

/// A resource name, shared between the cache, views and streams.
pub(crate) type Name = Arc<str>;

/// Resources of one type, with their type version and their encoding as a
/// state-of-the-world resource list worked out on first use.
#[derive(Clone, Debug, Default)]
pub(crate) struct View {
    map: TypeResources,
    version: OnceLock<String>,
    encoded: OnceLock<Bytes>,
}

impl PartialEq for View {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl View {
    pub(crate) fn new(map: TypeResources) -> Self {
        Self {
            map,
            version: OnceLock::new(),
            encoded: OnceLock::new(),
        }
    }

    pub(crate) fn map(&self) -> &TypeResources {
        &self.map
    }

    /// Adds or replaces one resource (while a set is being built).
    pub(crate) fn insert(&mut self, name: Name, resource: Arc<Resource>) {
        self.map.insert(name, resource);
        self.version = OnceLock::new();
        self.encoded = OnceLock::new();
    }

    /// The type version of exactly these resources.
    pub(crate) fn version(&self) -> &str {
        self.version.get_or_init(|| type_version(self.map.iter()))
    }

    /// These resources as a state-of-the-world response's resource list,
    /// encoded once for every stream that sends them.
    pub(crate) fn encoded(&self) -> Bytes {
        self.encoded
            .get_or_init(|| crate::grpc::any_list(self.map.values().map(|r| &r.body)))
            .clone()
    }
}

/// The version of a set of resources of one type: a hash of every name and
/// resource version, in name order. Envoys report it back after a server
/// restart, so it must stay the same function of the content.
pub(crate) fn type_version<'a>(
    resources: impl Iterator<Item = (&'a Name, &'a Arc<Resource>)>,
) -> String {
    let mut h = std::hash::DefaultHasher::new();
    for (name, r) in resources {
        // `str` hashes like the `String` it once was: same versions.
        (**name).hash(&mut h);
        r.version.hash(&mut h);
    }
    format!("{:016x}", h.finish())
}

/// Resource names a stream subscribes to, for one type.
#[derive(Debug, Default)]
pub(crate) struct NameSet {
    names: BTreeSet<Name>,
    /// The names in the order of the state-of-the-world request that
    /// asked for them first, if one did. Such a client repeats its whole
    /// subscription in every ACK, usually in the same order: comparing in
    /// order is a pass over the bytes rather than a tree lookup per name.
    order: Vec<Name>,
}

impl PartialEq for NameSet {
    fn eq(&self, other: &Self) -> bool {
        self.names == other.names
    }
}

/// A hash of requested names in their order (`*` aside), to find the name
/// set that a state-of-the-world request repeats without building it.
fn order_hash(requested: &[String]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    for n in requested.iter().filter(|n| *n != "*") {
        n.as_str().hash(&mut h);
    }
    h.finish()
}

/// [`order_hash`] of names already shared.
fn order_hash_of(order: &[Name]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    for n in order {
        (**n).hash(&mut h);
    }
    h.finish()
}

impl NameSet {
    pub(crate) fn new(names: BTreeSet<Name>) -> Self {
        Self {
            names,
            order: Vec::new(),
        }
    }

    /// The names of a state-of-the-world request, in its order.
    pub(crate) fn requested(order: Vec<Name>) -> Self {
        Self {
            names: order.iter().cloned().collect(),
            order,
        }
    }

    pub(crate) fn names(&self) -> &BTreeSet<Name> {
        &self.names
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether `requested` (`*` aside) lists exactly [`NameSet::requested`]'s
    /// order; `false` says nothing.
    pub(crate) fn is_request(&self, requested: &[String]) -> bool {
        !self.order.is_empty()
            && requested
                .iter()
                .filter(|n| *n != "*")
                .map(Some)
                .chain(std::iter::once(None))
                .zip(self.order.iter().map(Some).chain(std::iter::once(None)))
                .all(|(r, o)| match (r, o) {
                    (Some(r), Some(o)) => r.as_str() == &**o,
                    (None, None) => true,
                    _ => false,
                })
    }

    fn hash_value(&self) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        self.names.hash(&mut h);
        h.finish()
    }
}

/// Where two views differ, names in order.
#[derive(Debug, Default)]
pub(crate) struct Diff {
    /// Names the second view has and the first lacks or holds at another
    /// version.
    pub(crate) changed: Vec<Name>,
    /// Names only the first view has.
    pub(crate) removed: Vec<Name>,
}

fn diff(a: &View, b: &View) -> Diff {
    let mut out = Diff::default();
    let mut a = a.map.iter().peekable();
    let mut b = b.map.iter().peekable();
    loop {
        match (a.peek(), b.peek()) {
            (Some((na, ra)), Some((nb, rb))) => match na.cmp(nb) {
                std::cmp::Ordering::Less => {
                    out.removed.push(Arc::clone(na));
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    out.changed.push(Arc::clone(nb));
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if !Arc::ptr_eq(ra, rb) && ra.version != rb.version {
                        out.changed.push(Arc::clone(nb));
                    }
                    a.next();
                    b.next();
                }
            },
            (Some((na, _)), None) => {
                out.removed.push(Arc::clone(na));
                a.next();
            }
            (None, Some((nb, _))) => {
                out.changed.push(Arc::clone(nb));
                b.next();
            }
            (None, None) => return out,
        }
    }
}

/// Entries a memo keeps at most; entries whose inputs nobody else holds
/// any more go first, as they can never be asked for again.
const MEMO: usize = 64;

/// Inputs of the warm-clusters check (see [`Share::warm`]).
struct WarmKey {
    clusters: Arc<View>,
    endpoints: Arc<View>,
    /// `None`: endpoints are subscribed by wildcard.
    names: Option<Arc<NameSet>>,
    assignments: Arc<View>,
}

impl WarmKey {
    fn same(&self, other: &WarmKey) -> bool {
        Arc::ptr_eq(&self.clusters, &other.clusters)
            && Arc::ptr_eq(&self.endpoints, &other.endpoints)
            && Arc::ptr_eq(&self.assignments, &other.assignments)
            && match (&self.names, &other.names) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
    }

    fn orphaned(&self) -> bool {
        Arc::strong_count(&self.clusters) == 1
            || Arc::strong_count(&self.endpoints) == 1
            || Arc::strong_count(&self.assignments) == 1
            || self
                .names
                .as_ref()
                .is_some_and(|n| Arc::strong_count(n) == 1)
    }
}

#[derive(Default)]
struct Memo {
    /// Interned name sets by the hash of their names.
    names: HashMap<u64, Vec<Weak<NameSet>>>,
    /// The same sets by [`order_hash`] of the request that asked first.
    orders: HashMap<u64, Vec<Weak<NameSet>>>,
    interned_since_sweep: usize,
    /// (all of a type, names) → the view those names select.
    selected: Vec<(Arc<View>, Arc<NameSet>, Arc<View>)>,
    diffs: Vec<(Arc<View>, Arc<View>, Arc<Diff>)>,
    warm: Vec<(WarmKey, bool)>,
}

/// Drops entries nobody can ask for again, then the oldest past [`MEMO`].
fn prune<T>(entries: &mut Vec<T>, orphaned: impl Fn(&T) -> bool) {
    entries.retain(|e| !orphaned(e));
    if entries.len() >= MEMO {
        let excess = entries.len() + 1 - MEMO;
        entries.drain(..excess);
    }
}

/// What the streams of one group share (see the module documentation).
pub(crate) struct Share {
    empty: Arc<View>,
    no_names: Arc<NameSet>,
    no_diff: Arc<Diff>,
    memo: Mutex<Memo>,
}

impl Default for Share {
    fn default() -> Self {
        Self {
            empty: Arc::new(View::default()),
            no_names: Arc::new(NameSet::default()),
            no_diff: Arc::new(Diff::default()),
            memo: Mutex::new(Memo::default()),
        }
    }
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Share").finish_non_exhaustive()
    }
}

impl Share {
    fn memo(&self) -> MutexGuard<'_, Memo> {
        // Every memo entry is inserted whole; after a panic the memo is
        // still consistent.
        self.memo
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The empty view, shared so that it compares equal by identity.
    pub(crate) fn empty(&self) -> &Arc<View> {
        &self.empty
    }

    /// The empty name set.
    pub(crate) fn no_names(&self) -> &Arc<NameSet> {
        &self.no_names
    }

    /// The group's one copy of `names`.
    pub(crate) fn intern(&self, names: NameSet) -> Arc<NameSet> {
        if names.len() == 0 {
            return Arc::clone(&self.no_names);
        }
        let hash = names.hash_value();
        let mut memo = self.memo();
        memo.interned_since_sweep += 1;
        if memo.interned_since_sweep > MEMO + memo.names.len() {
            memo.interned_since_sweep = 0;
            let memo = &mut *memo;
            for index in [&mut memo.names, &mut memo.orders] {
                index.retain(|_, sets| {
                    sets.retain(|s| s.strong_count() > 0);
                    !sets.is_empty()
                });
            }
        }
        let bucket = memo.names.entry(hash).or_default();
        bucket.retain(|s| s.strong_count() > 0);
        if let Some(existing) = bucket
            .iter()
            .filter_map(Weak::upgrade)
            .find(|s| **s == names)
        {
            return existing;
        }
        let names = Arc::new(names);
        bucket.push(Arc::downgrade(&names));
        if !names.order.is_empty() {
            let order = memo.orders.entry(order_hash_of(&names.order)).or_default();
            order.retain(|s| s.strong_count() > 0);
            order.push(Arc::downgrade(&names));
        }
        names
    }

    /// The interned set a state-of-the-world request lists in the order of
    /// the request that asked for it first, if there is one.
    pub(crate) fn find_requested(&self, requested: &[String]) -> Option<Arc<NameSet>> {
        let hash = order_hash(requested);
        let memo = self.memo();
        memo.orders
            .get(&hash)?
            .iter()
            .filter_map(Weak::upgrade)
            .find(|s| s.is_request(requested))
    }

    /// The resources of `all` that `names` selects.
    pub(crate) fn select(&self, all: &Arc<View>, names: &Arc<NameSet>) -> Arc<View> {
        if all.map.is_empty() || names.len() == 0 {
            return Arc::clone(&self.empty);
        }
        let mut memo = self.memo();
        if let Some((_, _, v)) = memo
            .selected
            .iter()
            .find(|(a, n, _)| Arc::ptr_eq(a, all) && Arc::ptr_eq(n, names))
        {
            return Arc::clone(v);
        }
        let map: TypeResources = if names.len() < all.map.len() {
            names
                .names
                .iter()
                .filter_map(|n| all.map.get_key_value(n))
                .map(|(n, r)| (Arc::clone(n), Arc::clone(r)))
                .collect()
        } else {
            all.map
                .iter()
                .filter(|(n, _)| names.contains(n))
                .map(|(n, r)| (Arc::clone(n), Arc::clone(r)))
                .collect()
        };
        // Names that cover the whole type select the type's own view.
        let view = if map.len() == all.map.len() {
            Arc::clone(all)
        } else if map.is_empty() {
            Arc::clone(&self.empty)
        } else {
            Arc::new(View::new(map))
        };
        prune(&mut memo.selected, |(a, n, _)| {
            Arc::strong_count(a) == 1 || Arc::strong_count(n) == 1
        });
        memo.selected
            .push((Arc::clone(all), Arc::clone(names), Arc::clone(&view)));
        view
    }

    /// Where `b` differs from `a`.
    pub(crate) fn diff(&self, a: &Arc<View>, b: &Arc<View>) -> Arc<Diff> {
        if Arc::ptr_eq(a, b) {
            return Arc::clone(&self.no_diff);
        }
        let mut memo = self.memo();
        if let Some((_, _, d)) = memo
            .diffs
            .iter()
            .find(|(x, y, _)| Arc::ptr_eq(x, a) && Arc::ptr_eq(y, b))
        {
            return Arc::clone(d);
        }
        let d = Arc::new(diff(a, b));
        prune(&mut memo.diffs, |(x, y, _)| {
            Arc::strong_count(x) == 1 || Arc::strong_count(y) == 1
        });
        memo.diffs
            .push((Arc::clone(a), Arc::clone(b), Arc::clone(&d)));
        d
    }

    /// Whether every cluster of `clusters` that has an assignment in
    /// `assignments` is subscribed to (by `names`, or by wildcard when
    /// `None`) and held in `endpoints`.
    pub(crate) fn warm(
        &self,
        clusters: &Arc<View>,
        endpoints: &Arc<View>,
        names: Option<&Arc<NameSet>>,
        assignments: &Arc<View>,
    ) -> bool {
        let key = WarmKey {
            clusters: Arc::clone(clusters),
            endpoints: Arc::clone(endpoints),
            names: names.cloned(),
            assignments: Arc::clone(assignments),
        };
        let mut memo = self.memo();
        if let Some((_, warm)) = memo.warm.iter().find(|(k, _)| k.same(&key)) {
            return *warm;
        }
        let warm = clusters
            .map
            .keys()
            .filter(|c| assignments.map.contains_key(*c))
            .all(|c| names.is_none_or(|n| n.contains(c)) && endpoints.map.contains_key(c));
        prune(&mut memo.warm, |(k, _)| k.orphaned());
        memo.warm.push((key, warm));
        warm
    }
}

/// Two sorted lists of distinct names as one sorted list.
fn merge_sorted(a: Vec<Name>, b: Vec<Name>) -> Vec<Name> {
    if b.is_empty() {
        return a;
    }
    if a.is_empty() {
        return b;
    }
    let mut out = Vec::with_capacity(a.len() + b.len());
    let mut a = a.into_iter().peekable();
    let mut b = b.into_iter().peekable();
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x <= y => a.next(),
            (Some(_), Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, Some(_)) => b.next(),
            (None, None) => return out,
        };
        out.extend(next);
    }
}

/// A view plus where one stream differs from it: `Some` holds that
/// resource instead (or as well), `None` holds nothing of that name.
#[derive(Clone, Debug)]
pub(crate) struct ResourceSet {
    base: Arc<View>,
    overlay: BTreeMap<Name, Option<Arc<Resource>>>,
}

impl ResourceSet {
    /// Exactly `view`.
    pub(crate) fn of(view: Arc<View>) -> Self {
        Self {
            base: view,
            overlay: BTreeMap::new(),
        }
    }

    pub(crate) fn base(&self) -> &Arc<View> {
        &self.base
    }

    /// Whether this is exactly `view`, by identity (cheap, may say no to
    /// an equal set).
    pub(crate) fn is(&self, view: &Arc<View>) -> bool {
        self.overlay.is_empty() && Arc::ptr_eq(&self.base, view)
    }

    /// Whether this is exactly its view.
    pub(crate) fn is_plain(&self) -> bool {
        self.overlay.is_empty()
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Arc<Resource>> {
        match self.overlay.get(name) {
            Some(o) => o.as_ref(),
            None => self.base.map.get(name),
        }
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub(crate) fn insert(&mut self, name: Name, resource: Arc<Resource>) {
        match self.base.map.get(&name) {
            Some(b) if Arc::ptr_eq(b, &resource) || b.version == resource.version => {
                self.overlay.remove(&name);
            }
            _ => {
                self.overlay.insert(name, Some(resource));
            }
        }
    }

    pub(crate) fn remove(&mut self, name: &Name) {
        if self.base.map.contains_key(name) {
            self.overlay.insert(Arc::clone(name), None);
        } else {
            self.overlay.remove(name);
        }
    }

    /// Every name and resource, in name order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Name, &Arc<Resource>)> {
        let mut base = self.base.map.iter().peekable();
        let mut overlay = self.overlay.iter().peekable();
        std::iter::from_fn(move || {
            loop {
                let next = match (base.peek(), overlay.peek()) {
                    (Some((nb, _)), Some((no, _))) => nb.cmp(no),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => return None,
                };
                match next {
                    std::cmp::Ordering::Less => return base.next(),
                    std::cmp::Ordering::Equal => {
                        base.next();
                    }
                    std::cmp::Ordering::Greater => {}
                }
                if let Some((n, Some(r))) = overlay.next() {
                    return Some((n, r));
                }
            }
        })
    }

    /// These resources as a state-of-the-world resource list: the view's
    /// shared encoding when there is no overlay.
    pub(crate) fn encoded(&self) -> Bytes {
        if self.overlay.is_empty() {
            self.base.encoded()
        } else {
            crate::grpc::any_list(self.iter().map(|(_, r)| &r.body))
        }
    }

    /// The type version of these resources.
    pub(crate) fn version(&self) -> String {
        if self.overlay.is_empty() {
            self.base.version().to_owned()
        } else {
            type_version(self.iter())
        }
    }

    /// The names whose resource `other` lacks, has and this lacks, or has
    /// at another version; in name order. Costs what differs, plus a
    /// once-per-group comparison of the two views.
    pub(crate) fn differing(&self, other: &ResourceSet, share: &Share) -> Vec<Name> {
        let d = share.diff(&self.base, &other.base);
        if self.overlay.is_empty() && other.overlay.is_empty() {
            // The views' difference is exact: only put it in name order.
            return merge_sorted(d.changed.clone(), d.removed.clone());
        }
        let mut names: Vec<Name> = Vec::with_capacity(d.changed.len() + d.removed.len());
        names.extend(d.changed.iter().cloned());
        names.extend(d.removed.iter().cloned());
        names.extend(self.overlay.keys().cloned());
        names.extend(other.overlay.keys().cloned());
        names.sort_unstable();
        names.dedup();
        names.retain(|n| match (self.get(n), other.get(n)) {
            (Some(a), Some(b)) => !Arc::ptr_eq(a, b) && a.version != b.version,
            (None, None) => false,
            _ => true,
        });
        names
    }

    /// The names `other` has and this set lacks or has at another version,
    /// in name order.
    pub(crate) fn changed_in(&self, other: &ResourceSet, share: &Share) -> Vec<Name> {
        if self.overlay.is_empty() && other.overlay.is_empty() {
            // Exact already: no lookup per name.
            return share.diff(&self.base, &other.base).changed.clone();
        }
        let mut names = self.differing(other, share);
        names.retain(|n| other.contains(n));
        names
    }

    /// Whether `other` holds the same names at the same versions.
    pub(crate) fn same(&self, other: &ResourceSet, share: &Share) -> bool {
        (self.overlay.is_empty()
            && other.overlay.is_empty()
            && Arc::ptr_eq(&self.base, &other.base))
            || self.differing(other, share).is_empty()
    }

    /// The same set, expressed against `view`, so that the overlay holds
    /// only where this set differs from it.
    pub(crate) fn rebased(&self, view: &Arc<View>, share: &Share) -> ResourceSet {
        let mut out = ResourceSet::of(Arc::clone(view));
        for name in out.differing(self, share) {
            let mine = self.get(&name).cloned();
            out.overlay.insert(name, mine);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::Any;

    fn resource(name: &str, version: &str) -> (Name, Arc<Resource>) {
        let name: Name = Arc::from(name);
        let r = Resource {
            name: Arc::clone(&name),
            version: version.to_owned(),
            body: Any::default(),
        };
        (name, Arc::new(r))
    }

    fn view(entries: &[(&str, &str)]) -> Arc<View> {
        Arc::new(View::new(
            entries.iter().map(|(n, v)| resource(n, v)).collect(),
        ))
    }

    fn names(set: &ResourceSet) -> Vec<(String, String)> {
        set.iter()
            .map(|(n, r)| (n.to_string(), r.version.clone()))
            .collect()
    }

    #[test]
    fn overlay_reads_through_the_view() {
        let share = Share::default();
        let v = view(&[("a", "1"), ("b", "1"), ("c", "1")]);
        let mut set = ResourceSet::of(Arc::clone(&v));
        let (b, b2) = resource("b", "2");
        set.insert(b, b2);
        set.remove(&Arc::from("c"));
        let (d, d1) = resource("d", "1");
        set.insert(d, d1);
        assert_eq!(
            names(&set),
            [("a", "1"), ("b", "2"), ("d", "1")].map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
        assert_eq!(set.version(), type_version(set.iter()));
        let other = ResourceSet::of(view(&[("a", "1"), ("b", "2"), ("d", "1")]));
        assert!(set.same(&other, &share));
        let plain = ResourceSet::of(Arc::clone(&v));
        let changed: Vec<String> = plain
            .changed_in(&other, &share)
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(changed, ["b", "d"]);
        assert!(set.changed_in(&other, &share).is_empty());
        assert_eq!(set.version(), other.version());
        let rebased = set.rebased(other.base(), &share);
        assert!(rebased.is_plain());
        // Back to what the view says: the overlay empties.
        let (b, b1) = resource("b", "1");
        set.insert(b, b1);
        let (c, c1) = resource("c", "1");
        set.insert(c, c1);
        set.remove(&Arc::from("d"));
        assert!(set.is_plain());
        assert!(set.same(&ResourceSet::of(v), &share));
    }

    #[test]
    fn differing_names_every_kind_of_difference() {
        let share = Share::default();
        let a = ResourceSet::of(view(&[("a", "1"), ("b", "1"), ("c", "1")]));
        let b = ResourceSet::of(view(&[("b", "1"), ("c", "2"), ("d", "1")]));
        let d: Vec<String> = a
            .differing(&b, &share)
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(d, ["a", "c", "d"]);
        // Worked out once for the pair.
        assert!(Arc::ptr_eq(
            &share.diff(a.base(), b.base()),
            &share.diff(a.base(), b.base())
        ));
    }

    #[test]
    fn selection_and_interning_are_shared() {
        let share = Share::default();
        let all = view(&[("a", "1"), ("b", "1")]);
        let one = |n: &str| share.intern(NameSet::new([Arc::from(n)].into()));
        let (x, y) = (one("a"), one("a"));
        assert!(Arc::ptr_eq(&x, &y));
        let selected = share.select(&all, &x);
        assert_eq!(selected.map().len(), 1);
        assert!(Arc::ptr_eq(&selected, &share.select(&all, &y)));
        let both = share.intern(NameSet::new(
            [Arc::from("a"), Arc::from("b"), Arc::from("z")].into(),
        ));
        assert!(Arc::ptr_eq(&share.select(&all, &both), &all));
        assert!(share.select(&all, &one("z")).map().is_empty());
    }

    #[test]
    fn a_repeated_request_finds_its_set() {
        let share = Share::default();
        let request = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let first = request(&["b", "a"]);
        assert!(share.find_requested(&first).is_none());
        let set = share.intern(NameSet::requested(
            first.iter().map(|n| Arc::from(n.as_str())).collect(),
        ));
        assert!(set.is_request(&first));
        assert!(Arc::ptr_eq(&share.find_requested(&first).unwrap(), &set));
        // Same names in another order, or fewer, or more: not this request.
        for other in [
            request(&["a", "b"]),
            request(&["b"]),
            request(&["b", "a", "c"]),
        ] {
            assert!(!set.is_request(&other));
            assert!(share.find_requested(&other).is_none());
        }
        // The same set asked for in another order is still the same set.
        let again = share.intern(NameSet::requested(vec![Arc::from("a"), Arc::from("b")]));
        assert!(Arc::ptr_eq(&again, &set));
    }
}
