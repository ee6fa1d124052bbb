//! HTTPRoute `ExternalAuth` filters (GEP-1494) as Envoy `ext_authz` HTTP
//! filters.
//!
//! Envoy's filter-level settings (allowed headers, body buffering, the
//! service) cannot be changed per route, so every distinct configuration a
//! connection manager's routes use is one `ext_authz` filter there, named
//! after its content. Each is disabled by default and enabled only by the
//! per-route configuration of the routes using it: a route without the
//! filter never calls the authorization service.
//!
//! Every failure denies: `failure_mode_allow` is off, a service that does
//! not answer within [`AUTH_TIMEOUT`] (down, slow, or answering 5xx) gives
//! [`STATUS_ON_ERROR`], and a rule whose service does not resolve answers
//! 500 without being routed at all (`emit::routes`).

use super::any;
use crate::backend::ClusterRef;
use crate::model::{AuthProtocol, ExternalAuth};
use envoy_types::pb::envoy::config::core::v3::{
    ApiVersion, GrpcService, HttpUri, grpc_service, http_uri,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{
    AuthorizationResponse, BufferSettings, CheckSettings, ExtAuthz, ExtAuthzPerRoute, HttpService,
    ext_authz, ext_authz_per_route,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    ListStringMatcher, RegexMatcher, StringMatcher, string_matcher,
};
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode};
use envoy_types::pb::google::protobuf::{Any, Duration};
use std::collections::BTreeMap;

/// How long a check may take before the request is denied. Bounded so a
/// slow service cannot hold requests forever, long enough for a service
/// that looks a token up remotely.
pub(super) const AUTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What the client gets when the service cannot be asked (down, timed out,
/// answered 5xx): a denial, like any other failed check. Envoy's default,
/// written out so the behaviour does not hang on it.
const STATUS_ON_ERROR: StatusCode = StatusCode::Forbidden;

/// Headers never copied from a service's answer onto the request when
/// `allowedResponseHeaders` is empty ("all headers"): Host (the spec's
/// exception) and the headers describing the answer's own framing and
/// connection, which would corrupt the request to the backend.
const NOT_COPIED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "te",
    "trailer",
];

/// The `ext_authz` filters of one connection manager, by filter name.
pub(super) type AuthFilters = BTreeMap<String, ExtAuthz>;

/// The filter for `auth`, whose service is `cluster`: its name (content
/// derived: one configuration is one filter, whichever routes share it)
/// and its configuration.
pub(super) fn filter(auth: &ExternalAuth, cluster: &ClusterRef) -> (String, ExtAuthz) {
    let timeout = Some(Duration {
        seconds: i64::try_from(AUTH_TIMEOUT.as_secs()).unwrap_or(i64::MAX),
        nanos: 0,
    });
    let (services, allowed) = match &auth.protocol {
        AuthProtocol::Http {
            path,
            allowed_headers,
            allowed_response_headers,
        } => {
            let upstream = if allowed_response_headers.is_empty() {
                all_but(NOT_COPIED)
                    .into_iter()
                    .map(|regex| StringMatcher {
                        match_pattern: Some(string_matcher::MatchPattern::SafeRegex(
                            RegexMatcher {
                                regex,
                                ..Default::default()
                            },
                        )),
                        ignore_case: false,
                    })
                    .collect()
            } else {
                exact_names(allowed_response_headers)
            };
            let service = HttpService {
                server_uri: Some(HttpUri {
                    // Only the cluster is used to connect; the URI must
                    // still be a valid one.
                    uri: format!("http://{}", authority(cluster)),
                    http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster(
                        cluster.name().to_owned(),
                    )),
                    timeout,
                }),
                path_prefix: path.clone(),
                authorization_response: Some(AuthorizationResponse {
                    allowed_upstream_headers: Some(ListStringMatcher { patterns: upstream }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            (ext_authz::Services::HttpService(service), allowed_headers)
        }
        AuthProtocol::Grpc { allowed_headers } => {
            let service = GrpcService {
                target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                    grpc_service::EnvoyGrpc {
                        cluster_name: cluster.name().to_owned(),
                        // Envoy's default is the cluster name, whose slashes
                        // make an invalid :authority that servers (hyper's,
                        // for one) refuse by resetting the stream.
                        authority: authority(cluster),
                        ..Default::default()
                    },
                )),
                timeout,
                ..Default::default()
            };
            (ext_authz::Services::GrpcService(service), allowed_headers)
        }
    };
    let config = ExtAuthz {
        transport_api_version: ApiVersion::V3 as i32,
        failure_mode_allow: false,
        status_on_error: Some(HttpStatus {
            code: STATUS_ON_ERROR as i32,
        }),
        // Unset: gRPC services get every header, HTTP ones only Host,
        // Method, Path, Content-Length and Authorization (as the spec asks
        // of an empty list); set: those plus the list.
        allowed_headers: (!allowed.is_empty()).then(|| ListStringMatcher {
            patterns: exact_names(allowed),
        }),
        // The spec's "bodies over maxSize must be rejected with a 4xx":
        // without partial messages Envoy answers 413 and never asks the
        // service. Bytes, not UTF-8 text, so a binary body reaches a gRPC
        // service intact.
        with_request_body: (auth.forward_body > 0).then_some(BufferSettings {
            max_request_bytes: auth.forward_body,
            allow_partial_message: false,
            pack_as_bytes: true,
        }),
        services: Some(services),
        ..Default::default()
    };
    let name = format!(
        "envoy.filters.http.ext_authz/{}/{:016x}",
        cluster.name(),
        fnv1a(&prost::Message::encode_to_vec(&config))
    );
    (name, config)
}

/// The `host:port` the service is asked under: its Service's
/// `name.namespace` and port, as a client inside the cluster could write it.
fn authority(cluster: &ClusterRef) -> String {
    format!("{}.{}:{}", cluster.service, cluster.namespace, cluster.port)
}

/// The per-route configuration enabling a filter the connection manager
/// disables by default. Check settings rather than `disabled: false`,
/// which Envoy's validation refuses.
pub(super) fn enabled_on_route() -> Any {
    any(&ExtAuthzPerRoute {
        r#override: Some(ext_authz_per_route::Override::CheckSettings(
            CheckSettings::default(),
        )),
    })
}

/// The connection manager's `ext_authz` filters, in name order, each
/// disabled until a route enables it.
pub(super) fn http_filters(filters: &AuthFilters) -> impl Iterator<Item = HttpFilter> + '_ {
    filters.iter().map(|(name, config)| HttpFilter {
        name: name.clone(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(config))),
        disabled: true,
        ..Default::default()
    })
}

/// Exact, case-insensitive matchers for header `names` (already lowercase).
fn exact_names(names: &[String]) -> Vec<StringMatcher> {
    names
        .iter()
        .map(|n| StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::Exact(n.clone())),
            ignore_case: true,
        })
        .collect()
}

/// The longest pattern [`all_but`] writes. Envoy refuses an RE2 program
/// above 100 instructions (`re2.max_program_size.error_level`); these
/// patterns compile to about half an instruction per character.
const MAX_PATTERN_LEN: usize = 160;

/// RE2 patterns that together (any of them) match every header name except
/// `excluded` (lowercase names of `[a-z0-9-]`) and pseudo-headers
/// (`:`-led). RE2 has no negative lookahead, so the patterns spell out the
/// complement along the trie of the excluded names: any name that leaves
/// the trie, or stops where no excluded name ends. A subtree whose pattern
/// would be too long for Envoy is split into its node's own pattern and one
/// per child.
fn all_but(excluded: &[&str]) -> Vec<String> {
    #[derive(Default)]
    struct Node {
        end: bool,
        next: BTreeMap<char, Node>,
    }
    fn escape(c: char) -> String {
        if c.is_ascii_alphanumeric() {
            c.to_string()
        } else {
            format!("\\{c}")
        }
    }
    /// What may follow a node's prefix, leaving the trie right there: a
    /// character none of its children starts with (or any, at a leaf).
    fn leave(node: &Node, root: bool) -> String {
        let mut firsts: String = node.next.keys().map(|c| escape(*c)).collect();
        if root {
            firsts.push(':');
        }
        if firsts.is_empty() {
            ".+".to_owned()
        } else {
            format!("[^{firsts}].*")
        }
    }
    /// The whole subtree below `node`, as one pattern for what follows its
    /// prefix.
    fn nested(node: &Node, root: bool) -> String {
        let mut alternatives = vec![leave(node, root)];
        for (c, child) in &node.next {
            alternatives.push(format!("{}(?:{})", escape(*c), nested(child, false)));
        }
        // Stopping here is fine unless an excluded name ends here (the
        // root's empty name is no header name at all).
        if !node.end && !root {
            alternatives.push(String::new());
        }
        alternatives.join("|")
    }
    fn patterns(node: &Node, prefix: &str, out: &mut Vec<String>) {
        let root = prefix.is_empty();
        let whole = if root {
            nested(node, true)
        } else {
            format!("{prefix}(?:{})", nested(node, false))
        };
        if whole.len() <= MAX_PATTERN_LEN || node.next.is_empty() {
            out.push(whole);
            return;
        }
        out.push(match (root, node.end) {
            (true, _) => leave(node, true),
            (false, true) => format!("{prefix}{}", leave(node, false)),
            (false, false) => format!("{prefix}(?:{})?", leave(node, false)),
        });
        for (c, child) in &node.next {
            patterns(child, &format!("{prefix}{}", escape(*c)), out);
        }
    }
    let mut root = Node::default();
    for name in excluded {
        let mut node = &mut root;
        for c in name.chars() {
            node = node.next.entry(c).or_default();
        }
        node.end = true;
    }
    let mut out = Vec::new();
    patterns(&root, "", &mut out);
    out
}

/// FNV-1a (64 bits) of `bytes`: a stable digest for filter names (the
/// standard library's hashers may change between releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::{MAX_PATTERN_LEN, NOT_COPIED, all_but};

    /// Whether any of the patterns matches all of `name`, as Envoy's
    /// safe_regex matchers do.
    fn matches(name: &str) -> bool {
        all_but(NOT_COPIED).iter().any(|p| {
            regex::Regex::new(&format!("^(?:{p})$"))
                .expect("compiles")
                .is_match(name)
        })
    }

    #[test]
    fn all_but_patterns_stay_short() {
        let patterns = all_but(NOT_COPIED);
        assert!(patterns.len() > 1, "the list needs splitting: {patterns:?}");
        for p in patterns {
            assert!(p.len() <= MAX_PATTERN_LEN, "{p}");
        }
    }

    #[test]
    fn all_but_leaves_out_exactly_the_excluded_names() {
        for name in NOT_COPIED {
            assert!(!matches(name), "{name} must not match");
        }
        assert!(!matches(":authority"));
        assert!(!matches(":status"));
        for name in [
            "x-user",
            "h",
            "ho",
            "hosts",
            "t",
            "tea",
            "trailers",
            "content-type",
            "content-lengthy",
            "connectio",
            "con",
            "conn",
            "tr",
            "tra",
            "transfer",
            "trailerx",
            "keep",
            "proxy-connectio",
            "proxy-connections",
            "upgraded",
            "x-content-length",
            "authorization",
            "a",
            "0",
        ] {
            assert!(matches(name), "{name} must match");
        }
    }

    #[test]
    fn all_but_nothing_excluded_matches_every_name() {
        assert_eq!(all_but(&[]), vec!["[^:].*".to_owned()]);
    }
}
