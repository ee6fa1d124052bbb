//! ListenerSets (GEP-1713): which Gateway a set names, whether the Gateway
//! allows it, the order sets are merged in, and each set's status. The
//! listeners themselves are resolved with the Gateway's own, in
//! [`crate::gateway::resolve`].

use crate::api::gateways::{
    Gateway, GatewayAllowedListenersNamespacesFrom, GatewayListeners,
    GatewayListenersAllowedRoutes, GatewayListenersAllowedRoutesKinds,
    GatewayListenersAllowedRoutesNamespaces, GatewayListenersAllowedRoutesNamespacesFrom,
    GatewayListenersAllowedRoutesNamespacesSelector,
    GatewayListenersAllowedRoutesNamespacesSelectorMatchExpressions, GatewayListenersTls,
    GatewayListenersTlsCertificateRefs, GatewayListenersTlsMode,
};
use crate::api::listenersets::{
    ListenerSet, ListenerSetListeners, ListenerSetListenersAllowedRoutesNamespacesFrom,
    ListenerSetListenersTlsMode, ListenerSetStatus, ListenerSetStatusListeners,
    ListenerSetStatusListenersSupportedKinds,
};
use crate::conditions::{ConditionType, Conditions, Reason};
use crate::gateway::{self, GatewayInfo, SetInfo};
use crate::index::{self, GATEWAY_GROUP, Index};
use crate::input::ObjectKey;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// The Gateway a set names (namespace, name), or None when its parentRef
/// is not a Gateway.
pub(crate) fn parent_of(set: &ListenerSet) -> Option<(&str, &str)> {
    let p = &set.spec.parent_ref;
    let is_gateway = p.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
        && p.kind.as_deref().unwrap_or("Gateway") == "Gateway";
    let (set_ns, _) = index::key_of(&set.metadata);
    is_gateway.then(|| (p.namespace.as_deref().unwrap_or(set_ns), p.name.as_str()))
}

/// The merge order: oldest first, then by namespace/name (sets without a
/// creation time last).
pub(crate) fn precedence(set: &ListenerSet) -> (bool, Option<Timestamp>, (&str, &str)) {
    let created = set.metadata.creation_timestamp.as_ref().map(|t| t.0);
    (created.is_none(), created, index::key_of(&set.metadata))
}

/// Whether `gateway`'s `spec.allowedListeners` admits sets from `set_ns`
/// (None unless it says otherwise).
pub(crate) fn allowed(
    index: &Index<'_>,
    gateway: &Gateway,
    set_ns: &str,
) -> Result<(), (Reason, String)> {
    let namespaces = gateway
        .spec
        .allowed_listeners
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    let (gw_ns, gw_name) = index::key_of(&gateway.metadata);
    let ok = match namespaces.and_then(|n| n.from.as_ref()) {
        Some(GatewayAllowedListenersNamespacesFrom::All) => true,
        Some(GatewayAllowedListenersNamespacesFrom::Same) => set_ns == gw_ns,
        Some(GatewayAllowedListenersNamespacesFrom::Selector) => {
            let selector = namespaces.and_then(|n| n.selector.as_ref());
            let labels = selector
                .and_then(|s| s.match_labels.clone())
                .unwrap_or_default();
            let expressions = selector
                .and_then(|s| s.match_expressions.as_deref())
                .unwrap_or(&[]);
            gateway::selector_matches(
                &index.namespace_labels(set_ns),
                &labels,
                expressions
                    .iter()
                    .map(|e| (e.key.as_str(), e.operator.as_str(), e.values.as_deref())),
            )
        }
        Some(GatewayAllowedListenersNamespacesFrom::None) | None => false,
    };
    if ok {
        Ok(())
    } else {
        Err((
            Reason::NotAllowed,
            format!(
                "Gateway {gw_ns}/{gw_name} does not allow ListenerSets from namespace {set_ns} \
                 (spec.allowedListeners)"
            ),
        ))
    }
}

/// A set's listener as a Gateway listener: the two types have the same
/// fields, and one resolution serves both.
pub(crate) fn as_gateway_listener(l: &ListenerSetListeners) -> GatewayListeners {
    GatewayListeners {
        allowed_routes: l
            .allowed_routes
            .as_ref()
            .map(|a| GatewayListenersAllowedRoutes {
                kinds: a.kinds.as_ref().map(|kinds| {
                    kinds
                        .iter()
                        .map(|k| GatewayListenersAllowedRoutesKinds {
                            group: k.group.clone(),
                            kind: k.kind.clone(),
                        })
                        .collect()
                }),
                namespaces: a.namespaces.as_ref().map(|n| {
                    GatewayListenersAllowedRoutesNamespaces {
                        from: n.from.as_ref().map(|f| match f {
                            ListenerSetListenersAllowedRoutesNamespacesFrom::All => {
                                GatewayListenersAllowedRoutesNamespacesFrom::All
                            }
                            ListenerSetListenersAllowedRoutesNamespacesFrom::Selector => {
                                GatewayListenersAllowedRoutesNamespacesFrom::Selector
                            }
                            ListenerSetListenersAllowedRoutesNamespacesFrom::Same => {
                                GatewayListenersAllowedRoutesNamespacesFrom::Same
                            }
                        }),
                        selector: n.selector.as_ref().map(|s| {
                            GatewayListenersAllowedRoutesNamespacesSelector {
                                match_labels: s.match_labels.clone(),
                                match_expressions: s.match_expressions.as_ref().map(|es| {
                                    es.iter()
                                        .map(|e| {
                                            GatewayListenersAllowedRoutesNamespacesSelectorMatchExpressions {
                                                key: e.key.clone(),
                                                operator: e.operator.clone(),
                                                values: e.values.clone(),
                                            }
                                        })
                                        .collect()
                                }),
                            }
                        }),
                    }
                }),
            }),
        hostname: l.hostname.clone(),
        name: l.name.clone(),
        port: l.port,
        protocol: l.protocol.clone(),
        tls: l.tls.as_ref().map(|t| GatewayListenersTls {
            certificate_refs: t.certificate_refs.as_ref().map(|refs| {
                refs.iter()
                    .map(|r| GatewayListenersTlsCertificateRefs {
                        group: r.group.clone(),
                        kind: r.kind.clone(),
                        name: r.name.clone(),
                        namespace: r.namespace.clone(),
                    })
                    .collect()
            }),
            mode: t.mode.as_ref().map(|m| match m {
                ListenerSetListenersTlsMode::Terminate => GatewayListenersTlsMode::Terminate,
                ListenerSetListenersTlsMode::Passthrough => GatewayListenersTlsMode::Passthrough,
            }),
            options: t.options.clone(),
        }),
        // Listener filters have many nested types of the same schema in
        // both kinds; converting through JSON keeps them equal by
        // construction. Were a value not to convert, the listener still
        // says that it sets `filters`, which are refused until implemented.
        filters: l.filters.as_ref().map(|f| {
            serde_json::to_value(f)
                .ok()
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default()
        }),
    }
}

/// Whether a set is accepted: admitted, and at least one of its listeners
/// is served.
pub(crate) fn accepted(info: &GatewayInfo<'_>, set: &SetInfo<'_>) -> bool {
    set.admitted.is_ok()
        && info
            .listeners
            .iter()
            .any(|l| l.owner.as_ref() == Some(&set.key) && l.programmable())
}

/// The status of one set naming a Gateway of ours.
pub(crate) fn status(info: &GatewayInfo<'_>, set: &SetInfo<'_>, now: &Time) -> ListenerSetStatus {
    let generation = set.set.metadata.generation;
    let mut c = Conditions::new(now, generation);
    if let Err((reason, message)) = &set.admitted {
        c.set(ConditionType::Accepted, false, *reason, message.clone());
        c.set(ConditionType::Programmed, false, *reason, message.clone());
        return ListenerSetStatus {
            conditions: Some(c.into_vec()),
            listeners: None,
        };
    }
    let mine: Vec<&gateway::Listener> = info
        .listeners
        .iter()
        .filter(|l| l.owner.as_ref() == Some(&set.key))
        .collect();
    let names = |ok: bool| {
        mine.iter()
            .filter(|l| l.programmable() == ok)
            .map(|l| l.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let valid = mine.iter().filter(|l| l.programmable()).count();
    if valid == mine.len() {
        c.set(
            ConditionType::Accepted,
            true,
            Reason::Accepted,
            "ListenerSet accepted",
        );
        c.set(
            ConditionType::Programmed,
            true,
            Reason::Programmed,
            "ListenerSet programmed",
        );
    } else if valid > 0 {
        c.set(
            ConditionType::Accepted,
            true,
            Reason::ListenersNotValid,
            format!(
                "listeners not valid: {}; listeners accepted: {}",
                names(false),
                names(true)
            ),
        );
        c.set(
            ConditionType::Programmed,
            true,
            Reason::Programmed,
            "ListenerSet programmed",
        );
    } else {
        let message = format!("no listener is valid: {}", names(false));
        c.set(
            ConditionType::Accepted,
            false,
            Reason::ListenersNotValid,
            message.clone(),
        );
        c.set(
            ConditionType::Programmed,
            false,
            Reason::ListenersNotValid,
            message,
        );
    }
    let listeners = mine
        .iter()
        .map(|l| {
            let s = gateway::listener_status(l, now, generation);
            ListenerSetStatusListeners {
                name: s.name,
                attached_routes: s.attached_routes,
                conditions: s.conditions,
                supported_kinds: Some(
                    s.kinds
                        .into_iter()
                        .map(|kind| ListenerSetStatusListenersSupportedKinds {
                            group: Some(GATEWAY_GROUP.to_owned()),
                            kind: kind.to_owned(),
                        })
                        .collect(),
                ),
            }
        })
        .collect();
    ListenerSetStatus {
        conditions: Some(c.into_vec()),
        listeners: Some(listeners),
    }
}

/// The status of a set naming a Gateway of ours that is not accepted (its
/// class or parameters are refused): it contributes nothing.
pub(crate) fn parent_not_accepted(
    set: &ListenerSet,
    gateway: &ObjectKey,
    now: &Time,
) -> ListenerSetStatus {
    let mut c = Conditions::new(now, set.metadata.generation);
    let message = format!("Gateway {gateway} is not accepted");
    c.set(
        ConditionType::Accepted,
        false,
        Reason::ParentNotAccepted,
        message.clone(),
    );
    c.set(
        ConditionType::Programmed,
        false,
        Reason::ParentNotAccepted,
        message,
    );
    ListenerSetStatus {
        conditions: Some(c.into_vec()),
        listeners: None,
    }
}
