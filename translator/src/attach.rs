//! Route attachment to Gateway listeners, and route status per parent.

use crate::backend::{self, ClusterRef, ServiceRead, ServiceReads, Unresolved};
use crate::conditions::{ConditionType, Conditions, Reason};
use crate::gateway::GatewayInfo;
use crate::hostname;
use crate::index::{GATEWAY_GROUP, Index};
use crate::input::ObjectKey;
use crate::model::{AuthProtocol, Filter, ParentRef, Route, RouteKind};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use std::collections::{BTreeMap, BTreeSet};

/// A rule's backends after resolution, with their weights.
#[derive(Debug)]
pub(crate) struct ResolvedRule {
    pub(crate) backends: Vec<(Result<ClusterRef, Unresolved>, u32)>,
    /// Mirror targets that resolved, with their fraction.
    pub(crate) mirrors: Vec<(ClusterRef, Option<(u32, u32)>)>,
    /// The authorization service of each `ExternalAuth` filter, in filter
    /// order; one that did not resolve makes the rule deny every request.
    pub(crate) auth: Vec<Result<ClusterRef, Unresolved>>,
}

/// A route with its backends resolved.
#[derive(Debug)]
pub(crate) struct ResolvedRoute {
    pub(crate) route: Route,
    pub(crate) rules: Vec<ResolvedRule>,
    /// The first unresolved reference, with a message naming all of them.
    pub(crate) refs_error: Option<Unresolved>,
    /// BackendTLSPolicies that name a Service port this route sends to.
    pub(crate) tls_policies: BTreeSet<ObjectKey>,
    /// Every Service resolution looked up, as found (when recorded).
    pub(crate) services: Vec<ServiceRead>,
    /// The Envoy routes emitted from this route so far, kept with it so a
    /// later translation that reuses the route reuses them too.
    pub(crate) emitted: crate::emit::EmittedRoutes,
}

/// `route` with its backends resolved; with `record`, the Services looked
/// up are kept in [`ResolvedRoute::services`] (for [`crate::memo`]).
pub(crate) fn resolve_route(index: &Index<'_>, route: Route, record: bool) -> ResolvedRoute {
    let ns = route.key.namespace.clone();
    let mut errors: Vec<Unresolved> = Vec::new();
    let mut tls_policies = BTreeSet::new();
    let mut services = ServiceReads::new(record);
    let rules = route
        .rules
        .iter()
        .map(|rule| {
            let backends = rule
                .backends
                .iter()
                .map(|b| {
                    let r = backend::resolve(
                        index,
                        route.kind,
                        &ns,
                        b,
                        &mut tls_policies,
                        &mut services,
                    );
                    if let Err(e) = &r {
                        errors.push(e.clone());
                    }
                    (r, b.weight)
                })
                .collect();
            let mirrors = rule
                .filters
                .iter()
                .filter_map(|f| match f {
                    Filter::Mirror {
                        backend: b,
                        fraction,
                    } => match backend::resolve(
                        index,
                        route.kind,
                        &ns,
                        b,
                        &mut tls_policies,
                        &mut services,
                    ) {
                        Ok(c) => Some((c, *fraction)),
                        Err(e) => {
                            errors.push(e);
                            None
                        }
                    },
                    _ => None,
                })
                .collect();
            let auth = rule
                .filters
                .iter()
                .filter_map(|f| match f {
                    Filter::ExternalAuth(a) => {
                        let r = backend::resolve(
                            index,
                            route.kind,
                            &ns,
                            &a.backend,
                            &mut tls_policies,
                            &mut services,
                        )
                        // Envoy's gRPC client needs HTTP/2, whatever the
                        // port's appProtocol says.
                        .map(|c| match a.protocol {
                            AuthProtocol::Grpc { .. } => c.with_http2(),
                            AuthProtocol::Http { .. } => c,
                        });
                        if let Err(e) = &r {
                            errors.push(e.clone());
                        }
                        Some(r)
                    }
                    _ => None,
                })
                .collect();
            ResolvedRule {
                backends,
                mirrors,
                auth,
            }
        })
        .collect();
    let refs_error = errors.first().map(|(r, _)| {
        let msg = errors
            .iter()
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        (*r, msg)
    });
    ResolvedRoute {
        route,
        rules,
        refs_error,
        tls_policies,
        services: services.reads,
        emitted: Default::default(),
    }
}

/// A route attached to one programmable listener, with the hostnames it
/// serves there.
#[derive(Debug)]
pub(crate) struct Attachment {
    pub(crate) route: usize,
    pub(crate) listener: usize,
    pub(crate) hostnames: Vec<String>,
}

/// The status of one route for one parentRef.
#[derive(Debug)]
pub(crate) struct ParentStatus {
    pub(crate) parent: ParentRef,
    pub(crate) conditions: Vec<Condition>,
}

/// One parentRef of one route that names one of our Gateways.
struct Pending {
    route: usize,
    parent: ParentRef,
    gateway: usize,
    /// Claimed by a default Gateway, not named in the route's parentRefs.
    by_default: bool,
    /// The listeners the route attaches to, with its hostnames on each.
    result: Result<Vec<(usize, Vec<String>)>, Unresolved>,
}

/// Attaches every route to the listeners of our Gateways. Returns the
/// attachments per Gateway (same order as `gateways`) and, per route, the
/// status of each parentRef that names one of our Gateways.
pub(crate) fn attach(
    index: &Index<'_>,
    gateways: &mut [GatewayInfo<'_>],
    routes: &[std::sync::Arc<ResolvedRoute>],
    now: &Time,
) -> (Vec<Vec<Attachment>>, Vec<Vec<ParentStatus>>) {
    // ListenerSet → (Gateway, whether its listeners were merged).
    let mut sets: BTreeMap<(&str, &str), (usize, bool)> = BTreeMap::new();
    for (gi, g) in gateways.iter().enumerate() {
        for s in &g.sets {
            sets.insert(
                (s.key.namespace.as_str(), s.key.name.as_str()),
                (gi, s.admitted.is_ok()),
            );
        }
    }
    let defaults: Vec<ParentRef> = gateways
        .iter()
        .filter(|g| g.default_scope)
        .map(|g| ParentRef {
            group: GATEWAY_GROUP.to_owned(),
            kind: "Gateway".to_owned(),
            namespace: g.key.namespace.clone(),
            name: g.key.name.clone(),
            section_name: None,
            port: None,
        })
        .collect();
    let mut pending: Vec<Pending> = Vec::new();
    for (ri, rr) in routes.iter().enumerate() {
        let route = &rr.route;
        let first = pending.len();
        // A route asking for default Gateways is claimed by each, exactly
        // as if its parentRefs named the whole Gateway (GEP-3793): the
        // Gateway's own listeners, allowedRoutes applying. Its spec is left
        // as written; the claim shows only in its status. A Gateway the
        // route names itself is left to those parentRefs, whose
        // sectionName or port say more precisely what the author wants.
        let claimed = defaults.iter().filter(|d| {
            route.use_default_gateways
                && !route
                    .parents
                    .iter()
                    .any(|p| p.is_gateway() && p.namespace == d.namespace && p.name == d.name)
        });
        let parents = route
            .parents
            .iter()
            .map(|p| (p, false))
            .chain(claimed.map(|d| (d, true)));
        for (parent, by_default) in parents {
            let target = (parent.namespace.as_str(), parent.name.as_str());
            // The listeners a parentRef can reach: a Gateway's own, or one
            // ListenerSet's.
            let (gi, owner, admitted) = if parent.is_gateway() {
                // `gateways` is sorted by key.
                let Ok(gi) = gateways.binary_search_by(|g| {
                    (g.key.namespace.as_str(), g.key.name.as_str()).cmp(&target)
                }) else {
                    continue;
                };
                (gi, None, true)
            } else if parent.is_listener_set() {
                let Some(&(gi, admitted)) = sets.get(&target) else {
                    continue;
                };
                (gi, Some(ObjectKey::new(target.0, target.1)), admitted)
            } else {
                continue;
            };
            // The same parentRef twice gets one status entry.
            if pending[first..].iter().any(|p| p.parent == *parent) {
                continue;
            }
            let gw = &gateways[gi];
            let candidates: Vec<usize> = gw
                .listeners
                .iter()
                .enumerate()
                .filter(|(_, l)| {
                    l.owner == owner
                        && parent.section_name.as_ref().is_none_or(|s| *s == l.name)
                        && parent.port.is_none_or(|p| p == l.port)
                })
                .map(|(i, _)| i)
                .collect();
            let result = if !admitted {
                Err((
                    Reason::NoMatchingParent,
                    format!(
                        "ListenerSet {}/{} is not accepted by its Gateway",
                        target.0, target.1
                    ),
                ))
            } else if candidates.is_empty() {
                Err((
                    Reason::NoMatchingParent,
                    "no listener matches the parentRef's sectionName and port".to_owned(),
                ))
            } else {
                let allowed: Vec<usize> = candidates
                    .into_iter()
                    .filter(|&i| {
                        let l = &gw.listeners[i];
                        l.kinds.contains(&route.kind)
                            && l.allows_namespace(index, &route.key.namespace)
                    })
                    .collect();
                if allowed.is_empty() {
                    Err((
                        Reason::NotAllowedByListeners,
                        format!(
                            "no listener allows a {} from namespace {}",
                            route.kind.kind(),
                            route.key.namespace
                        ),
                    ))
                } else {
                    let matched: Vec<(usize, Vec<String>)> = allowed
                        .into_iter()
                        .filter_map(|li| {
                            hostname::effective(
                                gw.listeners[li].hostname.as_deref(),
                                &route.hostnames,
                            )
                            .map(|h| (li, h))
                        })
                        .collect();
                    if matched.is_empty() {
                        Err((
                            Reason::NoMatchingListenerHostname,
                            "no listener hostname intersects the route's hostnames".to_owned(),
                        ))
                    } else if !route.unsupported.is_empty() {
                        Err((Reason::UnsupportedValue, route.unsupported.join("; ")))
                    } else {
                        Ok(matched)
                    }
                }
            };
            pending.push(Pending {
                route: ri,
                parent: parent.clone(),
                gateway: gi,
                by_default,
                result,
            });
        }
    }
    exclude_http_grpc_overlaps(routes, &mut pending);

    let mut attachments: Vec<Vec<Attachment>> = gateways.iter().map(|_| Vec::new()).collect();
    let mut statuses: Vec<Vec<ParentStatus>> = routes.iter().map(|_| Vec::new()).collect();
    // attachedRoutes counts each accepted route once per listener, whatever
    // the listener's own state.
    let mut counted: std::collections::HashSet<(usize, usize, usize)> =
        std::collections::HashSet::new();
    for p in pending {
        let rr = &routes[p.route];
        let mut c = Conditions::new(now, rr.route.generation);
        match p.result {
            Ok(matched) => {
                c.set(
                    ConditionType::Accepted,
                    true,
                    Reason::Accepted,
                    if p.by_default {
                        "route accepted: bound to this default Gateway by useDefaultGateways"
                    } else {
                        "route accepted"
                    },
                );
                for (li, hostnames) in matched {
                    // Two parentRefs can lead a route to one listener: it
                    // counts and attaches there once.
                    if !counted.insert((p.route, p.gateway, li)) {
                        continue;
                    }
                    let listener = &mut gateways[p.gateway].listeners[li];
                    listener.attached_routes += 1;
                    if listener.programmable() {
                        attachments[p.gateway].push(Attachment {
                            route: p.route,
                            listener: li,
                            hostnames,
                        });
                    }
                }
            }
            Err((r, m)) => c.set(ConditionType::Accepted, false, r, m),
        }
        match &rr.refs_error {
            None => c.set(
                ConditionType::ResolvedRefs,
                true,
                Reason::ResolvedRefs,
                "all references resolved",
            ),
            Some((r, m)) => c.set(ConditionType::ResolvedRefs, false, *r, m.clone()),
        }
        statuses[p.route].push(ParentStatus {
            parent: p.parent,
            conditions: c.into_vec(),
        });
    }
    (attachments, statuses)
}

/// An HTTPRoute and a GRPCRoute whose hostnames intersect on one listener
/// cannot both be accepted there: the older route (then the first by
/// namespace/name) keeps the listener, the other loses it.
fn exclude_http_grpc_overlaps(routes: &[std::sync::Arc<ResolvedRoute>], pending: &mut [Pending]) {
    // (gateway, listener) → pending entries attached there.
    let mut by_listener: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
    for (pi, p) in pending.iter().enumerate() {
        let http_like = matches!(
            routes[p.route].route.kind,
            RouteKind::Http | RouteKind::Grpc
        );
        if let Ok(matched) = &p.result
            && http_like
        {
            for (li, _) in matched {
                by_listener.entry((p.gateway, *li)).or_default().push(pi);
            }
        }
    }
    let mut losers: Vec<(usize, usize, String)> = Vec::new();
    for ((_, li), mut entries) in by_listener {
        entries.sort_by(|&a, &b| {
            routes[pending[a].route]
                .route
                .age_key()
                .cmp(&routes[pending[b].route].route.age_key())
        });
        // Routes kept so far, by kind (a route only conflicts with the other
        // kind), indexed by hostname so exact names need no scan.
        let mut kept: [Kept<'_>; 2] = [Kept::default(), Kept::default()];
        for pi in entries {
            let p = &pending[pi];
            let mine = usize::from(routes[p.route].route.kind == RouteKind::Grpc);
            let Ok(matched) = &p.result else { continue };
            let Some((_, hosts)) = matched.iter().find(|(l, _)| *l == li) else {
                continue;
            };
            match hosts
                .iter()
                .filter_map(|h| kept[1 - mine].winner_over(h))
                .min()
            {
                Some((_, k)) => {
                    let w = &routes[pending[k].route].route;
                    losers.push((
                        pi,
                        li,
                        format!(
                            "{} {} already serves these hostnames on this listener",
                            w.kind.kind(),
                            w.key
                        ),
                    ));
                }
                None => kept[mine].add(pi, hosts),
            }
        }
    }
    for (pi, li, message) in losers {
        if let Ok(matched) = &mut pending[pi].result {
            matched.retain(|(l, _)| *l != li);
            if matched.is_empty() {
                pending[pi].result = Err((Reason::Conflicted, message));
            }
        }
    }
}

/// Hostnames of the routes of one kind kept on a listener, each with the
/// order it was kept in and its pending entry.
#[derive(Default)]
struct Kept<'h> {
    exact: std::collections::HashMap<&'h str, (usize, usize)>,
    /// Wildcards and "*" (no hostname).
    wild: Vec<(&'h str, (usize, usize))>,
    count: usize,
}

impl<'h> Kept<'h> {
    fn add(&mut self, pi: usize, hosts: &'h [String]) {
        let at = (self.count, pi);
        self.count += 1;
        for h in hosts {
            if h.starts_with('*') {
                self.wild.push((h, at));
            } else {
                self.exact.entry(h).or_insert(at);
            }
        }
    }

    /// The earliest kept entry whose hostnames intersect `h`.
    fn winner_over(&self, h: &str) -> Option<(usize, usize)> {
        let covers = |wide: &str, narrow: &str| {
            wide == "*" || hostname::intersect(wide, narrow).as_deref() == Some(narrow)
        };
        let from_wild = self
            .wild
            .iter()
            .filter(|(w, _)| covers(w, h) || covers(h, w))
            .map(|(_, at)| *at)
            .min();
        let from_exact = if h.starts_with('*') {
            self.exact
                .iter()
                .filter(|(e, _)| covers(h, e))
                .map(|(_, at)| *at)
                .min()
        } else {
            self.exact.get(h).copied()
        };
        from_wild.into_iter().chain(from_exact).min()
    }
}
