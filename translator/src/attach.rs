//! Route attachment to Gateway listeners, and route status per parent.

use crate::backend::{self, ClusterRef, Unresolved};
use crate::conditions::{Conditions, reason};
use crate::gateway::GatewayInfo;
use crate::hostname;
use crate::index::Index;
use crate::model::{Filter, ParentRef, Route};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use std::collections::HashMap;

/// A rule's backends after resolution, with their weights.
#[derive(Debug)]
pub(crate) struct ResolvedRule {
    pub(crate) backends: Vec<(Result<ClusterRef, Unresolved>, u32)>,
    /// Mirror targets that resolved, with their fraction.
    pub(crate) mirrors: Vec<(ClusterRef, Option<(u32, u32)>)>,
}

/// A route with its backends resolved.
#[derive(Debug)]
pub(crate) struct ResolvedRoute {
    pub(crate) route: Route,
    pub(crate) rules: Vec<ResolvedRule>,
    /// The first unresolved reference, with a message naming all of them.
    pub(crate) refs_error: Option<Unresolved>,
}

pub(crate) fn resolve_route(index: &Index<'_>, route: Route) -> ResolvedRoute {
    let ns = route.key.namespace.clone();
    let mut errors: Vec<Unresolved> = Vec::new();
    let rules = route
        .rules
        .iter()
        .map(|rule| {
            let backends = rule
                .backends
                .iter()
                .map(|b| {
                    let r = backend::resolve(index, route.kind, &ns, b);
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
                    } => match backend::resolve(index, route.kind, &ns, b) {
                        Ok(c) => Some((c, *fraction)),
                        Err(e) => {
                            errors.push(e);
                            None
                        }
                    },
                    _ => None,
                })
                .collect();
            ResolvedRule { backends, mirrors }
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

/// Attaches every route to the listeners of our Gateways. Returns the
/// attachments per Gateway (same order as `gateways`) and, per route, the
/// status of each parentRef that names one of our Gateways.
pub(crate) fn attach(
    index: &Index<'_>,
    gateways: &mut [GatewayInfo<'_>],
    routes: &[ResolvedRoute],
    now: &Time,
) -> (Vec<Vec<Attachment>>, Vec<Vec<ParentStatus>>) {
    let by_key: HashMap<(String, String), usize> = gateways
        .iter()
        .enumerate()
        .map(|(i, g)| ((g.key.namespace.clone(), g.key.name.clone()), i))
        .collect();
    let mut attachments: Vec<Vec<Attachment>> = gateways.iter().map(|_| Vec::new()).collect();
    let mut statuses = Vec::with_capacity(routes.len());
    for (ri, rr) in routes.iter().enumerate() {
        let route = &rr.route;
        let mut parents: Vec<ParentStatus> = Vec::new();
        // (gateway, listener) pairs this route already counts towards.
        let mut counted: Vec<(usize, usize)> = Vec::new();
        for parent in &route.parents {
            if !parent.is_gateway() {
                continue;
            }
            let Some(&gi) = by_key.get(&(parent.namespace.clone(), parent.name.clone())) else {
                continue;
            };
            // The same parentRef twice gets one status entry.
            if parents.iter().any(|p| p.parent == *parent) {
                continue;
            }
            let gw = &mut gateways[gi];
            let gw_ns = gw.key.namespace.clone();
            let candidates: Vec<usize> = gw
                .listeners
                .iter()
                .enumerate()
                .filter(|(_, l)| {
                    parent.section_name.as_ref().is_none_or(|s| *s == l.name)
                        && parent.port.is_none_or(|p| p == l.port)
                })
                .map(|(i, _)| i)
                .collect();
            let mut c = Conditions::new(now, route.generation);
            let accepted: Result<Vec<(usize, Vec<String>)>, (&str, String)> =
                if candidates.is_empty() {
                    Err((
                        reason::NO_MATCHING_PARENT,
                        "no listener matches the parentRef's sectionName and port".to_owned(),
                    ))
                } else {
                    let allowed: Vec<usize> = candidates
                        .into_iter()
                        .filter(|&i| {
                            let l = &gw.listeners[i];
                            l.kinds.contains(&route.kind)
                                && l.allows_namespace(index, &gw_ns, &route.key.namespace)
                        })
                        .collect();
                    if allowed.is_empty() {
                        Err((
                            reason::NOT_ALLOWED_BY_LISTENERS,
                            format!(
                                "no listener allows a {} from namespace {}",
                                route.kind.kind(),
                                route.key.namespace
                            ),
                        ))
                    } else {
                        for &li in &allowed {
                            if !counted.contains(&(gi, li)) {
                                counted.push((gi, li));
                                gw.listeners[li].attached_routes += 1;
                            }
                        }
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
                                reason::NO_MATCHING_LISTENER_HOSTNAME,
                                "no listener hostname intersects the route's hostnames".to_owned(),
                            ))
                        } else if !route.unsupported.is_empty() {
                            Err((reason::UNSUPPORTED_VALUE, route.unsupported.join("; ")))
                        } else {
                            Ok(matched)
                        }
                    }
                };
            match accepted {
                Ok(matched) => {
                    c.set(reason::ACCEPTED, true, reason::ACCEPTED, "route accepted");
                    for (li, hostnames) in matched {
                        let dup = attachments[gi]
                            .iter()
                            .any(|a| a.route == ri && a.listener == li);
                        if gw.listeners[li].programmable() && !dup {
                            attachments[gi].push(Attachment {
                                route: ri,
                                listener: li,
                                hostnames,
                            });
                        }
                    }
                }
                Err((r, m)) => c.set(reason::ACCEPTED, false, r, m),
            }
            match &rr.refs_error {
                None => c.set(
                    reason::RESOLVED_REFS,
                    true,
                    reason::RESOLVED_REFS,
                    "all references resolved",
                ),
                Some((r, m)) => c.set(reason::RESOLVED_REFS, false, r, m.clone()),
            }
            parents.push(ParentStatus {
                parent: parent.clone(),
                conditions: c.into_vec(),
            });
        }
        statuses.push(parents);
    }
    (attachments, statuses)
}
