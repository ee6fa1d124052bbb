//! Frontend client-certificate validation (Gateway `spec.tls.frontend`):
//! which HTTPS ports validate clients, against which CA bundle, and how a
//! bad reference is reported.
//!
//! The setting is per port, not per listener, because HTTP/2 connection
//! coalescing lets a client reuse one connection for every listener on a
//! port: a listener that validated and one that did not would leak into
//! each other (GEP-91, GEP-3567).

use crate::api::gateways::{
    Gateway, GatewayTlsFrontendDefaultValidationMode, GatewayTlsFrontendPerPortTlsValidationMode,
};
use crate::conditions::Reason;
use crate::index::{Index, RefTarget};

/// One CA certificate reference, as both the default and the per-port
/// forms write it.
#[derive(Clone, Debug)]
struct CaRef {
    group: String,
    kind: String,
    name: String,
    namespace: Option<String>,
}

/// The validation asked for on one port.
#[derive(Clone, Debug)]
struct Asked {
    refs: Vec<CaRef>,
    insecure_fallback: bool,
}

/// The frontend validation of one Gateway, by port.
#[derive(Clone, Debug, Default)]
pub(crate) struct Frontend {
    default: Option<Asked>,
    /// Ports with their own entry; `None` there means "no validation",
    /// which overrides the default.
    per_port: Vec<(i32, Option<Asked>)>,
}

/// Client validation ready for Envoy: the SDS secret holding the trusted
/// CAs, and whether a missing or untrusted certificate is let through.
#[derive(Clone, Debug)]
pub(crate) struct ClientValidation {
    /// The Envoy secret name of the CA bundle (one per port).
    pub(crate) secret: String,
    /// The PEM CA certificates, concatenated.
    pub(crate) bundle: Vec<u8>,
    /// `AllowInsecureFallback`: request a certificate but accept none or
    /// an untrusted one.
    pub(crate) insecure_fallback: bool,
}

/// Why a port's validation cannot be programmed.
#[derive(Clone, Debug)]
pub(crate) struct Invalid {
    /// The listener `ResolvedRefs=False` reason and message.
    pub(crate) resolved: (Reason, String),
    /// Whether no reference at all was usable: the listener is then also
    /// `Accepted=False`/`NoValidCACertificate`.
    pub(crate) none_valid: bool,
}

impl Frontend {
    /// Reads `gateway.spec.tls.frontend`.
    pub(crate) fn of(gateway: &Gateway) -> Self {
        let Some(frontend) = gateway.spec.tls.as_ref().and_then(|t| t.frontend.as_ref()) else {
            return Self::default();
        };
        // The default and per-port settings are distinct generated types of
        // the same shape.
        macro_rules! asked {
            ($v:expr, $fallback:path) => {
                Asked {
                    refs: $v
                        .ca_certificate_refs
                        .iter()
                        .map(|r| CaRef {
                            group: r.group.clone(),
                            kind: r.kind.clone(),
                            name: r.name.clone(),
                            namespace: r.namespace.clone(),
                        })
                        .collect(),
                    insecure_fallback: matches!($v.mode, Some($fallback)),
                }
            };
        }
        let default = frontend.default.validation.as_ref().map(|v| {
            asked!(
                v,
                GatewayTlsFrontendDefaultValidationMode::AllowInsecureFallback
            )
        });
        let per_port = frontend
            .per_port
            .iter()
            .flatten()
            .map(|p| {
                let asked = p.tls.validation.as_ref().map(|v| {
                    asked!(
                        v,
                        GatewayTlsFrontendPerPortTlsValidationMode::AllowInsecureFallback
                    )
                });
                (p.port, asked)
            })
            .collect();
        Self { default, per_port }
    }

    fn asked(&self, port: i32) -> Option<&Asked> {
        match self.per_port.iter().find(|(p, _)| *p == port) {
            Some((_, asked)) => asked.as_ref(),
            None => self.default.as_ref(),
        }
    }

    /// Whether any setting lets clients through unverified: the Gateway's
    /// `InsecureFrontendValidationMode` condition.
    pub(crate) fn insecure_fallback(&self) -> bool {
        self.default
            .iter()
            .chain(self.per_port.iter().filter_map(|(_, a)| a.as_ref()))
            .any(|a| a.insecure_fallback)
    }

    /// The client validation of HTTPS listeners on `port` of a Gateway in
    /// `gateway_ns`: `Ok(None)` when none is asked for. Any bad reference
    /// makes the port's HTTPS listeners unprogrammable (fail closed): a
    /// bundle missing a CA that was asked for would refuse clients the
    /// user meant to admit, one with a CA not asked for never happens.
    pub(crate) fn resolve(
        &self,
        index: &Index<'_>,
        gateway_ns: &str,
        port: i32,
    ) -> Result<Option<ClientValidation>, Invalid> {
        let Some(asked) = self.asked(port) else {
            return Ok(None);
        };
        let mut bundle = Vec::new();
        let mut first_error = None;
        let mut valid = 0usize;
        for r in &asked.refs {
            match read_ca(index, gateway_ns, r) {
                Ok(pem) => {
                    valid += 1;
                    bundle.extend_from_slice(&pem);
                    if !bundle.ends_with(b"\n") {
                        bundle.push(b'\n');
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(resolved) => Err(Invalid {
                resolved,
                none_valid: valid == 0,
            }),
            None if valid == 0 => Err(Invalid {
                resolved: (
                    Reason::InvalidCaCertificateRef,
                    "client validation lists no CA certificate reference".to_owned(),
                ),
                none_valid: true,
            }),
            None => Ok(Some(ClientValidation {
                secret: format!("client-ca/port-{port}"),
                bundle,
                insecure_fallback: asked.insecure_fallback,
            })),
        }
    }
}

/// The PEM of one CA reference: the `ca.crt` of a core ConfigMap, in the
/// Gateway's namespace or one whose ReferenceGrant allows it.
fn read_ca(index: &Index<'_>, gateway_ns: &str, r: &CaRef) -> Result<Vec<u8>, (Reason, String)> {
    let ns = r.namespace.as_deref().unwrap_or(gateway_ns);
    if !r.group.is_empty() || r.kind != "ConfigMap" {
        return Err((
            Reason::InvalidCaCertificateKind,
            format!(
                "caCertificateRef {} {ns}/{} (group {:?}): only core ConfigMaps hold CA \
                 certificates",
                r.kind, r.name, r.group
            ),
        ));
    }
    let target = RefTarget {
        group: "",
        kind: "ConfigMap",
        namespace: ns,
        name: &r.name,
    };
    if !index.reference_permitted("Gateway", gateway_ns, target) {
        return Err((
            Reason::RefNotPermitted,
            format!(
                "ConfigMap {ns}/{} is in another namespace and no ReferenceGrant allows it",
                r.name
            ),
        ));
    }
    let bad = |why: &str| {
        (
            Reason::InvalidCaCertificateRef,
            format!("ConfigMap {ns}/{}: {why}", r.name),
        )
    };
    let map = index
        .config_map(ns, &r.name)
        .ok_or_else(|| bad("does not exist"))?;
    crate::backend_tls::ca_bundle(map).map_err(|e| bad(&e))
}
