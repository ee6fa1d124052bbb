//! Clusters (CDS), one per Service port, protocol and upstream TLS a route
//! sends to, and their endpoints (EDS).

use super::{Emitter, ads, any, secrets, socket};
use crate::attach::ResolvedRule;
use crate::backend::ClusterRef;
use crate::backend_tls::{San, TlsSettings, TrustedCa};
use crate::gateway::Certificate;
use crate::index::Index;
use crate::input::ObjectKey;
use crate::output::{ClusterFeed, GatewayResources, ServicePort};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::Locality;
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, Http2ProtocolOptions, TransportSocket, data_source, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SubjectAltNameMatcher, UpstreamTlsContext,
    common_tls_context, subject_alt_name_matcher,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{Duration, UInt32Value};
use std::collections::{BTreeMap, BTreeSet};

/// Name of the cluster that does not exist: a weighted share pointing at it
/// answers 500, as the spec asks for invalid backendRefs.
pub const INVALID_BACKEND_CLUSTER: &str = "invalid-backend";

impl Emitter<'_, '_> {
    /// Adds to `out` every cluster the routes use, with its endpoints and
    /// the Service port behind it.
    pub(super) fn push_clusters(
        &self,
        clusters: &BTreeSet<ClusterRef>,
        out: &mut GatewayResources,
    ) {
        // Envoy's structs are large (a Cluster is kilobytes): size the lists
        // once instead of copying them as they grow.
        out.clusters.reserve_exact(clusters.len());
        out.endpoints.reserve_exact(clusters.len());
        for c in clusters {
            // A cluster left out answers 500 (route actions set
            // cluster_not_found_response_code; a mirror to it is dropped):
            // that is what a backend whose TLS cannot be honoured gets. Its
            // policy is invalid (routes already point at the invalid
            // backend), or the Gateway's client certificate does not
            // resolve, and no TLS connection goes out without it.
            let client = match (&c.tls, &self.gateway.client_certificate) {
                (Some(t), _) if t.settings.is_none() => continue,
                (Some(_), Err(_)) => continue,
                (Some(_), Ok(cert)) => cert.as_ref(),
                (None, _) => None,
            };
            if let Some(cert) = client {
                out.secrets.push(secrets::tls_certificate(cert));
            }
            out.clusters.push(cluster(c, client));
            let feed = ClusterFeed::Port(service_port(c));
            out.endpoints
                .push(load_assignment(self.index, c.name(), &feed));
            out.backends.insert(c.name().to_owned(), feed);
        }
    }

    /// Adds to `out` the per-flow split clusters of UDPRoutes (`splits`,
    /// by cluster name): one locality per backend, weighted.
    pub(super) fn push_splits(&self, splits: &BTreeMap<String, Split>, out: &mut GatewayResources) {
        for (name, split) in splits {
            let mut c = cluster(&split.parts[0].0, None);
            c.name = name.clone();
            c.common_lb_config = Some(cluster::CommonLbConfig {
                locality_config_specifier: Some(
                    cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                        cluster::common_lb_config::LocalityWeightedLbConfig {},
                    ),
                ),
                ..Default::default()
            });
            out.clusters.push(c);
            let feed = ClusterFeed::Split(
                split
                    .parts
                    .iter()
                    .map(|(c, weight)| (service_port(c), *weight))
                    .collect(),
            );
            out.endpoints.push(load_assignment(self.index, name, &feed));
            out.backends.insert(name.clone(), feed);
        }
    }
}

/// A UDPRoute rule's backends as one cluster: each valid backend (a plain
/// Service port) with its non-zero weight, at least one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Split {
    pub(crate) parts: Vec<(ClusterRef, u32)>,
}

impl Split {
    /// The split of `rule`'s backends, named `name`; None when no backend
    /// with a share is valid (the route then sends to no cluster at all).
    pub(crate) fn of(rule: &ResolvedRule) -> Option<Self> {
        let mut parts: Vec<(ClusterRef, u32)> = Vec::new();
        for (target, weight) in &rule.backends {
            let Ok(c) = target else { continue };
            if *weight == 0 || c.refused() {
                continue;
            }
            match parts.iter_mut().find(|(p, _)| p == c) {
                Some((_, w)) => *w = w.saturating_add(*weight),
                None => parts.push((c.clone(), *weight)),
            }
        }
        parts.sort();
        (!parts.is_empty()).then_some(Self { parts })
    }
}

/// The Service port behind cluster `c`.
fn service_port(c: &ClusterRef) -> ServicePort {
    ServicePort {
        service: ObjectKey::new(c.namespace.as_str(), c.service.as_str()),
        port: c.port,
    }
}

/// The endpoints of cluster `cluster_name`, fed by `feed`: the ready
/// addresses of each Service port's EndpointSlices (see [`ready_endpoints`]),
/// one locality per Service port of a split, weighted. Used both by a full
/// translation and by [`crate::refresh_endpoints`], so the two cannot drift.
pub(crate) fn load_assignment(
    index: &Index<'_>,
    cluster_name: &str,
    feed: &ClusterFeed,
) -> ClusterLoadAssignment {
    let endpoints = match feed {
        ClusterFeed::Port(p) => {
            let lb_endpoints = ready_endpoints(index, p);
            if lb_endpoints.is_empty() {
                vec![]
            } else {
                vec![LocalityLbEndpoints {
                    lb_endpoints,
                    ..Default::default()
                }]
            }
        }
        // A locality without endpoints is left out: Envoy would give it no
        // share anyway, and its weight must be positive.
        ClusterFeed::Split(parts) => parts
            .iter()
            .filter_map(|(p, weight)| {
                let lb_endpoints = ready_endpoints(index, p);
                (!lb_endpoints.is_empty()).then(|| LocalityLbEndpoints {
                    locality: Some(Locality {
                        sub_zone: format!("{}/{}:{}", p.service.namespace, p.service.name, p.port),
                        ..Default::default()
                    }),
                    lb_endpoints,
                    load_balancing_weight: Some(UInt32Value { value: *weight }),
                    ..Default::default()
                })
            })
            .collect(),
    };
    ClusterLoadAssignment {
        cluster_name: cluster_name.to_owned(),
        endpoints,
        ..Default::default()
    }
}

/// The ready addresses of Service port `p`: those of the Service's
/// EndpointSlices at the slice port named like the Service port.
fn ready_endpoints(index: &Index<'_>, p: &ServicePort) -> Vec<LbEndpoint> {
    let (namespace, service, service_port) = (&p.service.namespace, &p.service.name, p.port);
    let port_name = index
        .service(namespace, service)
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.ports.as_ref())
        .and_then(|ps| ps.iter().find(|p| p.port == service_port))
        .and_then(|p| p.name.as_deref())
        .unwrap_or("");
    let mut addrs: BTreeSet<(&str, u32)> = BTreeSet::new();
    for slice in index.slices(namespace, service) {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue;
        }
        let Some(port) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == port_name)
            .and_then(|p| p.port)
            .and_then(|p| u32::try_from(p).ok())
        else {
            continue;
        };
        for e in slice.endpoints.iter().flatten() {
            // An unknown readiness counts as ready, as Kubernetes says.
            if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for a in &e.addresses {
                if a.parse::<std::net::IpAddr>().is_ok() {
                    addrs.insert((a.as_str(), port));
                }
            }
        }
    }
    addrs
        .into_iter()
        .map(|(a, p)| LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(socket(a, p)),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect()
}

/// What a cluster carries to its backend, which decides its form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Carry {
    /// HTTP requests: the cluster as resolved (HTTP/2 or not, TLS with ALPN).
    Http,
    /// A byte stream proxied by a TCP proxy: no HTTP/2, and the policy's TLS
    /// (if any) without ALPN.
    Stream,
    /// A client's TLS passed through: plain, policies do not apply.
    Passthrough,
}

/// A rule's backends as (cluster name, weight), merged by name: weight-0
/// entries dropped, invalid ones pooled under [`INVALID_BACKEND_CLUSTER`].
/// Registers every cluster used, in the form `carry` asks for.
pub(super) fn backend_weights(
    rule: &ResolvedRule,
    clusters: &mut BTreeSet<ClusterRef>,
    carry: Carry,
) -> Vec<(String, u32)> {
    let mut weights: Vec<(String, u32)> = Vec::with_capacity(rule.backends.len());
    for (target, weight) in &rule.backends {
        if *weight == 0 {
            continue;
        }
        weights.push((cluster_name(target, clusters, carry), *weight));
    }
    // Merge repeated clusters, in name order.
    weights.sort_unstable();
    weights.dedup_by(|later, earlier| {
        let same = later.0 == earlier.0;
        if same {
            earlier.1 = earlier.1.saturating_add(later.1);
        }
        same
    });
    weights
}

/// The Envoy cluster one resolved backend sends to, in the form `carry`
/// asks for, added to `clusters`; the invalid-backend cluster when it did
/// not resolve.
pub(super) fn cluster_name(
    target: &Result<ClusterRef, crate::backend::Unresolved>,
    clusters: &mut BTreeSet<ClusterRef>,
    carry: Carry,
) -> String {
    match target {
        Ok(c) if carry == Carry::Passthrough => {
            let c = c.as_passthrough();
            let name = c.name().to_owned();
            clusters.insert(c);
            name
        }
        // A policy that cannot be honoured: fail, never plaintext.
        Ok(c) if c.refused() => INVALID_BACKEND_CLUSTER.to_owned(),
        Ok(c) => {
            let c = if carry == Carry::Stream && (c.http2 || (c.tls.is_some() && !c.stream)) {
                std::borrow::Cow::Owned(c.as_stream())
            } else {
                std::borrow::Cow::Borrowed(c)
            };
            let name = c.name().to_owned();
            if !clusters.contains(c.as_ref()) {
                clusters.insert(c.into_owned());
            }
            name
        }
        Err(_) => INVALID_BACKEND_CLUSTER.to_owned(),
    }
}

/// The cluster of `c`; `client` is the certificate its TLS presents.
fn cluster(c: &ClusterRef, client: Option<&Certificate>) -> Cluster {
    let mut out = Cluster {
        name: c.name().to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        connect_timeout: Some(Duration {
            seconds: 10,
            nanos: 0,
        }),
        transport_socket: c.tls.as_ref().and_then(|t| t.settings.as_ref()).map(|t| {
            let alpn = match (c.stream, c.http2) {
                (true, _) => None,
                (false, true) => Some("h2"),
                (false, false) => Some("http/1.1"),
            };
            upstream_tls(t, alpn, client)
        }),
        ..Default::default()
    };
    if c.http2 {
        let opts = HttpProtocolOptions {
            upstream_protocol_options: Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions::default(),
                    )),
                },
            )),
            ..Default::default()
        };
        out.typed_extension_protocol_options.insert(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
            any(&opts),
        );
    }
    out
}

/// The TLS transport socket of a cluster covered by a valid policy: SNI,
/// the trusted CAs, the SANs the backend's certificate must have, `alpn`
/// (the cluster's HTTP version; none for a byte stream), and the Gateway's
/// client certificate if any.
fn upstream_tls(
    t: &TlsSettings,
    alpn: Option<&str>,
    client: Option<&Certificate>,
) -> TransportSocket {
    let trusted_ca = match &t.ca {
        TrustedCa::Pem(pem) => data_source::Specifier::InlineBytes(pem.clone()),
        TrustedCa::File(path) => data_source::Specifier::Filename(path.clone()),
    };
    let sans = t
        .sans
        .iter()
        .map(|san| {
            let (san_type, value) = match san {
                San::Dns(v) => (subject_alt_name_matcher::SanType::Dns, v),
                San::Uri(v) => (subject_alt_name_matcher::SanType::Uri, v),
            };
            SubjectAltNameMatcher {
                san_type: san_type as i32,
                matcher: Some(StringMatcher {
                    match_pattern: Some(string_matcher::MatchPattern::Exact(value.clone())),
                    ignore_case: false,
                }),
                oid: String::new(),
            }
        })
        .collect();
    let context = UpstreamTlsContext {
        sni: t.sni.clone(),
        common_tls_context: Some(CommonTlsContext {
            alpn_protocols: alpn.map(str::to_owned).into_iter().collect(),
            tls_certificate_sds_secret_configs: client
                .map(secrets::sds_config)
                .into_iter()
                .collect(),
            validation_context_type: Some(
                common_tls_context::ValidationContextType::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: Some(DataSource {
                            specifier: Some(trusted_ca),
                            ..Default::default()
                        }),
                        match_typed_subject_alt_names: sans,
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&context))),
    }
}
