//! Infrastructure: where the Envoys of Gateways run.
//!
//! - [`host`]: Envoy processes started (or, after a crash, adopted) by this
//!   process, each Gateway on a loopback address of its own (`gatewright
//!   run`, and `gatewright controller --infrastructure host`).
//! - [`kubernetes`]: an Envoy Deployment and Service per Gateway in the
//!   cluster, provisioned by the leader (`--infrastructure kubernetes`).
//!
//! Both are driven the same way by the pipeline ([`Infra`]): before
//! translation they may fix what the translator needs to know (the host's
//! bind addresses), after it they make the Envoys match the output and
//! return what they learned per Gateway ([`Learned`]), which [`merge`]
//! writes into the statuses: the one place infrastructure touches status.

pub mod host;
pub mod kubernetes;

use crate::source::Snapshot;
use gatewright_translator::api::gatewayclasses::GatewayClass;
use gatewright_translator::api::gateways::{GatewayStatus, GatewayStatusAddresses};
use gatewright_translator::{EdgeSettings, Input, ObjectKey, Output, Statuses};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What infrastructure learned about one Gateway in a round.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Learned {
    /// The Gateway's `status.addresses`, when the infrastructure knows them.
    pub addresses: Option<Vec<GatewayStatusAddresses>>,
    /// Why a Gateway whose configuration is valid is not programmed.
    pub not_programmed: Option<(NotProgrammed, String)>,
}

/// Gateway `Programmed=False` reasons that come from infrastructure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotProgrammed {
    /// The Envoys could not be provisioned.
    Invalid,
    /// The Envoy Service has no address yet.
    AddressNotAssigned,
    /// A requested `spec.addresses` value was not given to the Gateway.
    AddressNotUsable,
    /// The Envoys are provisioned but none is ready yet.
    Pending,
}

impl std::fmt::Display for NotProgrammed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Invalid => "Invalid",
            Self::AddressNotAssigned => "AddressNotAssigned",
            Self::AddressNotUsable => "AddressNotUsable",
            Self::Pending => "Pending",
        })
    }
}

/// Writes what infrastructure learned into the Gateways' statuses.
pub fn merge(statuses: &mut Statuses, learned: BTreeMap<ObjectKey, Learned>) {
    for (key, learned) in learned {
        let Some(status) = statuses.gateways.get_mut(&key) else {
            continue;
        };
        if let Some(addresses) = learned.addresses {
            status.addresses = Some(addresses);
        }
        if let Some((reason, message)) = learned.not_programmed {
            not_programmed(status, reason, message);
        }
    }
}

/// Turns a Gateway's Programmed condition False with `reason`.
fn not_programmed(status: &mut GatewayStatus, reason: NotProgrammed, message: String) {
    for c in status.conditions.iter_mut().flatten() {
        if c.type_ == "Programmed" {
            c.status = "False".to_owned();
            c.reason = reason.to_string();
            c.message.clone_from(&message);
        }
    }
}

/// A Gateway whose `spec.addresses` asks for a value its infrastructure did
/// not give it (the host honours the first IP address; Kubernetes
/// infrastructure takes addresses from the Service it provisions) is
/// `Programmed=False`/`AddressNotUsable`, never silently served elsewhere.
/// Only Gateways whose addresses the infrastructure reported are judged.
fn check_requested_addresses(input: &Input, learned: &mut BTreeMap<ObjectKey, Learned>) {
    for gateway in &input.gateways {
        let key = ObjectKey::new(
            gateway.metadata.namespace.clone().unwrap_or_default(),
            gateway.metadata.name.clone().unwrap_or_default(),
        );
        let Some(entry) = learned.get_mut(&key) else {
            continue;
        };
        let (Some(given), None) = (&entry.addresses, &entry.not_programmed) else {
            continue;
        };
        let missing: Vec<&str> = gateway
            .spec
            .addresses
            .iter()
            .flatten()
            .filter_map(|a| a.value.as_deref().filter(|v| !v.is_empty()))
            .filter(|v| !given.iter().any(|g| g.value == *v))
            .collect();
        if !missing.is_empty() {
            entry.not_programmed = Some((
                NotProgrammed::AddressNotUsable,
                format!(
                    "spec.addresses {} cannot be given to this Gateway by its infrastructure; \
                     it has {}",
                    missing.join(", "),
                    given
                        .iter()
                        .map(|g| g.value.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
}

/// Each Gateway's connection-manager settings from its resolved
/// ProxyParameters, for `Input::edge_settings`: the same in every mode, so
/// `gatewright translate` uses it too. Gateways whose class is not in the
/// input are left out (the translator does not serve them); parameters
/// that do not resolve or hold an invalid value give the reason, which the
/// translator turns into `Accepted=False`/`InvalidParameters`.
pub fn edge_settings(
    input: &Input,
    parameters: &kubernetes::ParametersStore,
) -> BTreeMap<ObjectKey, Result<EdgeSettings, String>> {
    let classes: BTreeMap<&str, &GatewayClass> = input
        .gateway_classes
        .iter()
        .filter_map(|c| Some((c.metadata.name.as_deref()?, c.as_ref())))
        .collect();
    input
        .gateways
        .iter()
        .filter_map(|gateway| {
            let class = classes.get(gateway.spec.gateway_class_name.as_str())?;
            let key = ObjectKey::new(
                gateway.metadata.namespace.clone().unwrap_or_default(),
                gateway.metadata.name.clone().unwrap_or_default(),
            );
            let settings =
                kubernetes::resolve_parameters(parameters, class, gateway).map(|params| {
                    EdgeSettings {
                        xff_num_trusted_hops: params
                            .as_ref()
                            .and_then(|p| p.envoy.as_ref())
                            .and_then(|e| e.xff_num_trusted_hops)
                            .unwrap_or(0),
                    }
                });
            Some((key, settings))
        })
        .collect()
}

/// The infrastructure a control plane runs its Envoys on.
pub enum Infra {
    /// Envoy processes on loopback addresses.
    Host(host::Host),
    /// Envoy Deployments and Services in the cluster.
    Kubernetes(Box<kubernetes::KubeMode>),
}

impl Infra {
    /// Sets what the translator must know from the infrastructure before
    /// it runs: each Gateway's edge settings from its ProxyParameters
    /// ([`edge_settings`]), and on the host the loopback address each
    /// Gateway binds to.
    pub fn prepare(&mut self, input: &mut Input, parameters: &kubernetes::ParametersStore) {
        input.edge_settings = edge_settings(input, parameters);
        if let Self::Host(host) = self {
            input.bind_addresses = host
                .plan(input)
                .iter()
                .map(|(k, ip)| (k.clone(), ip.to_string()))
                .collect();
        }
    }

    /// Makes the Envoys match `output` (the Kubernetes infrastructure only
    /// while `leading`) and returns what it learned per Gateway.
    pub async fn reconcile(
        &mut self,
        snapshot: &Snapshot,
        output: &Output,
        leading: bool,
    ) -> BTreeMap<ObjectKey, Learned> {
        let mut learned = match self {
            Self::Host(host) => host.reconcile_output(snapshot, output).await,
            Self::Kubernetes(kube) if leading => kube.provision(snapshot, output).await,
            Self::Kubernetes(_) => BTreeMap::new(),
        };
        check_requested_addresses(&snapshot.input, &mut learned);
        learned
    }

    /// The Envoys this process runs itself (none on Kubernetes).
    pub fn envoys(&self) -> BTreeMap<ObjectKey, Arc<host::EnvoyState>> {
        match self {
            Self::Host(host) => host.states(),
            Self::Kubernetes(_) => BTreeMap::new(),
        }
    }

    /// Whether Envoys run elsewhere, so readiness does not wait for local
    /// ones.
    pub fn remote(&self) -> bool {
        matches!(self, Self::Kubernetes(_))
    }

    /// Drains and stops the Envoys this process runs.
    pub async fn shutdown(&mut self) {
        if let Self::Host(host) = self {
            host.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatewright_translator::api::gateways::{Gateway, GatewayAddresses};

    fn gateway(addresses: &[(&str, &str)]) -> Gateway {
        let mut g = Gateway::default();
        g.metadata.namespace = Some("ns".to_owned());
        g.metadata.name = Some("gw".to_owned());
        g.spec.addresses = Some(
            addresses
                .iter()
                .map(|(t, v)| GatewayAddresses {
                    r#type: Some((*t).to_owned()),
                    value: (!v.is_empty()).then(|| (*v).to_owned()),
                    routability: None,
                })
                .collect(),
        );
        g
    }

    fn given(ip: &str) -> BTreeMap<ObjectKey, Learned> {
        BTreeMap::from([(
            ObjectKey::new("ns", "gw"),
            Learned {
                addresses: Some(vec![GatewayStatusAddresses {
                    r#type: Some("IPAddress".to_owned()),
                    value: ip.to_owned(),
                    routability: None,
                }]),
                not_programmed: None,
            },
        )])
    }

    fn verdict(addresses: &[(&str, &str)], ip: &str) -> Option<(NotProgrammed, String)> {
        let input = Input {
            gateways: vec![gateway(addresses).into()],
            ..Input::default()
        };
        let mut learned = given(ip);
        check_requested_addresses(&input, &mut learned);
        learned.remove(&ObjectKey::new("ns", "gw"))?.not_programmed
    }

    #[test]
    fn edge_settings_come_from_the_resolved_parameters() {
        use gatewright_translator::api::gatewayclasses::GatewayClassParametersRef;
        use gatewright_translator::api::gateways::{
            GatewayInfrastructure, GatewayInfrastructureParametersRef,
        };
        let mut class = GatewayClass::default();
        class.metadata.name = Some("gatewright".to_owned());
        class.spec.parameters_ref = Some(GatewayClassParametersRef {
            group: "gatewright.dev".to_owned(),
            kind: "ProxyParameters".to_owned(),
            name: "class".to_owned(),
            namespace: Some("ns".to_owned()),
        });
        let named = |name: &str, class: &str, params: Option<&str>| {
            let mut g = gateway(&[]);
            g.metadata.name = Some(name.to_owned());
            g.spec.gateway_class_name = class.to_owned();
            g.spec.infrastructure = params.map(|p| GatewayInfrastructure {
                parameters_ref: Some(GatewayInfrastructureParametersRef {
                    group: "gatewright.dev".to_owned(),
                    kind: "ProxyParameters".to_owned(),
                    name: p.to_owned(),
                }),
                ..Default::default()
            });
            g
        };
        let spec = |json: serde_json::Value| -> kubernetes::ProxyParametersSpec {
            serde_json::from_value(json).expect("parameters")
        };
        let store = kubernetes::ParametersStore::from([
            (
                ObjectKey::new("ns", "class"),
                spec(serde_json::json!({"envoy": {"xffNumTrustedHops": 1}})),
            ),
            (
                ObjectKey::new("ns", "two"),
                spec(serde_json::json!({"envoy": {"xffNumTrustedHops": 2}})),
            ),
            (
                ObjectKey::new("ns", "bad"),
                spec(serde_json::json!({"envoy": {"xffNumTrustedHops": 17}})),
            ),
        ]);
        let input = Input {
            gateway_classes: vec![class.into()],
            gateways: vec![
                named("from-class", "gatewright", None).into(),
                named("own", "gatewright", Some("two")).into(),
                named("bad", "gatewright", Some("bad")).into(),
                named("missing", "gatewright", Some("nowhere")).into(),
                named("other-class", "someone-else", Some("two")).into(),
            ],
            ..Input::default()
        };
        let settings = edge_settings(&input, &store);
        let hops = |name: &str| {
            settings
                .get(&ObjectKey::new("ns", name))
                .map(|s| s.as_ref().map(|e| e.xff_num_trusted_hops))
        };
        assert_eq!(hops("from-class"), Some(Ok(1)));
        assert_eq!(hops("own"), Some(Ok(2)));
        let bad = hops("bad")
            .expect("bad is listed")
            .expect_err("17 is refused");
        assert!(bad.contains("xffNumTrustedHops 17"), "{bad}");
        assert!(hops("missing").expect("listed").is_err());
        assert_eq!(hops("other-class"), None);
    }

    #[test]
    fn an_address_that_was_given_or_left_empty_is_fine() {
        assert_eq!(verdict(&[("IPAddress", "127.0.1.9")], "127.0.1.9"), None);
        assert_eq!(verdict(&[("IPAddress", "")], "127.0.1.1"), None);
    }

    #[test]
    fn an_address_that_was_not_given_makes_the_gateway_not_programmed() {
        let (reason, message) = verdict(
            &[("IPAddress", "127.0.1.9"), ("Hostname", "gw.example.com")],
            "127.0.1.9",
        )
        .expect("the Hostname address was not given");
        assert_eq!(reason, NotProgrammed::AddressNotUsable);
        assert!(message.contains("gw.example.com"), "{message}");
        assert!(!message.contains("spec.addresses 127.0.1.9"), "{message}");
    }
}
