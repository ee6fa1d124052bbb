//! The translator's regex verdicts held to the pinned Envoy's: for each
//! pattern below, Envoy loads a route whose path match is that
//! `safe_regex`, once with its default runtime (accepted or rejected, as the
//! translator's [`re2::check`] must say) and once with
//! `re2.max_program_size.error_level` at 0, so that Envoy names the RE2
//! program size it computed, which [`re2::program_size`] must equal.

mod support;

use envoy_types::pb::envoy::config::bootstrap::v3::{LayeredRuntime, RuntimeLayer, runtime_layer};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, Route, RouteConfiguration, RouteMatch, VirtualHost, route, route_match,
};
use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;
use envoy_types::pb::google::protobuf::{Struct, Value, value};
use gatewright_translator::re2;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Both sides of the limit, syntax Rust's regex-syntax accepts and RE2 does
/// not, RE2-only spellings, and Latin-1 (how this Envoy runs RE2).
const PATTERNS: &[&str] = &[
    // Realistic route regexes.
    "/v[0-9]+/.*",
    "/api/v[0-9]+/users/[a-z0-9-]{1,20}",
    "/api/v[0-9]+/users/[a-z0-9-]{1,40}",
    ".*\\.(jpg|png|gif|css|js)$",
    "(?i)/foo/bar",
    "^/(?:en|de|fr)/docs/.*$",
    "/files/[^/]+\\.tar\\.gz",
    "\\d{3}-\\d{4}",
    // At and just over the limit of 100.
    "[a-z]{96}",
    "[a-z]{97}",
    "/[a-z]{60}",
    "(a|b|c){30}",
    "(a|b|c){31}",
    "(a|b|c){32}",
    "a{1000}",
    "(a{10}){100}",
    // Accepted by Rust's regex-syntax, rejected by RE2.
    "(?x) a b",
    "(?u)a",
    "(?R)a",
    "caf\\u00e9",
    "\\Z",
    "a{1001}",
    "(a{100}){100}",
    // Rejected by both.
    "(?<=a)b",
    "(?!a)b",
    "a\\1",
    "(a",
    "[a",
    "\\p{Foo}",
    "",
    // Accepted by both, with meanings of their own in RE2.
    "[a-z&&[^x]]",
    "[a-z--x]",
    "\\b{start}",
    "\\<word\\>",
    "\\Qa.b\\E",
    "a{,5}",
    // Named groups in both spellings (older RE2 only knew `(?P<`).
    "(?P<id>[0-9]+)",
    "(?<id>[0-9]+)",
    "(?<a>x)(?<b>y)",
    "[(?<a>)]",
    // Classes and Latin-1.
    "[[:alpha:]]+",
    "\\pL+",
    "\\p{Greek}",
    "\\pN",
    "(?s).*",
    "[^\\n]",
    "\\x{e9}",
    "\\x{100}",
    "é+",
    "(?i)strasse",
];

/// One Gateway whose only route matches `pattern` as its path regex.
fn output_with_path_regex(pattern: &str) -> gatewright_translator::Output {
    let mut resources = support::minimal_http_gateway("route", "127.0.0.1");
    resources.routes = vec![RouteConfiguration {
        name: "route".to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: "any".to_owned(),
            domains: vec!["*".to_owned()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::SafeRegex(RegexMatcher {
                        regex: pattern.to_owned(),
                        ..Default::default()
                    })),
                    ..Default::default()
                }),
                action: Some(route::Action::DirectResponse(DirectResponseAction {
                    status: 200,
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }];
    support::output_of(resources)
}

/// Envoy's verdict on `pattern`, with `error_level` as
/// `re2.max_program_size.error_level` if given.
fn envoy_loads(pattern: &str, error_level: Option<f64>) -> Result<(), String> {
    let envoy = support::envoy_binary()?;
    let output = output_with_path_regex(pattern);
    let (node, resources) = output.gateways.iter().next().expect("one gateway");
    let mut bootstrap = support::bootstrap_for(&node.to_string(), resources)?;
    if let Some(level) = error_level {
        let layer = Struct {
            fields: [(
                "re2.max_program_size.error_level".to_owned(),
                Value {
                    kind: Some(value::Kind::NumberValue(level)),
                },
            )]
            .into_iter()
            .collect(),
        };
        bootstrap.layered_runtime = Some(LayeredRuntime {
            layers: vec![RuntimeLayer {
                name: "test".to_owned(),
                layer_specifier: Some(runtime_layer::LayerSpecifier::StaticLayer(layer)),
            }],
        });
    }
    support::run_envoy_validate(&envoy, &bootstrap)
}

/// The program size in Envoy's "RE2 program size of N > max program size"
/// error, if that is why it refused.
fn size_in_envoy_error(error: &str) -> Option<usize> {
    let rest = error.split("RE2 program size of ").nth(1)?;
    rest.split(' ').next()?.parse().ok()
}

/// What went wrong for `pattern`, if anything.
fn compare(pattern: &str) -> Option<String> {
    let ours = re2::check(pattern);
    let envoy = envoy_loads(pattern, None);
    if ours.is_ok() != envoy.is_ok() {
        return Some(format!(
            "{pattern:?}: translator says {ours:?}, Envoy says {}",
            match &envoy {
                Ok(()) => "accepted".to_owned(),
                Err(e) => format!("rejected: {e}"),
            }
        ));
    }
    if pattern.is_empty() {
        // Envoy's schema refuses it before RE2 sees it: no size to compare.
        return None;
    }
    let envoy_size = match envoy_loads(pattern, Some(0.0)) {
        Ok(()) => Some(0),
        Err(e) => size_in_envoy_error(&e),
    };
    let our_size = re2::program_size(pattern).ok();
    (our_size != envoy_size).then(|| {
        format!("{pattern:?}: translator's RE2 program size {our_size:?}, Envoy's {envoy_size:?}")
    })
}

#[test]
fn regex_verdicts_and_program_sizes_match_envoys() {
    // Fail, never skip, when there is no Envoy to compare with.
    support::envoy_binary().unwrap_or_else(|e| panic!("{e}"));
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                while let Some(pattern) = PATTERNS.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if let Some(failure) = compare(pattern) {
                        failures.lock().unwrap().push(failure);
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    // Both verdicts must occur, or the comparison proves little.
    let accepted = PATTERNS.iter().filter(|p| re2::check(p).is_ok()).count();
    assert!(
        accepted > 0 && accepted < PATTERNS.len(),
        "{accepted} of {} accepted",
        PATTERNS.len()
    );
    assert!(
        failures.is_empty(),
        "{} pattern(s) judged unlike Envoy:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn envoy_names_the_program_size_it_refuses() {
    // The parsing above depends on Envoy's wording; a change must show here,
    // not as sizes silently missing.
    let error = envoy_loads("[a-z]{97}", None).expect_err("over the limit");
    assert_eq!(size_in_envoy_error(&error), Some(101), "{error}");
}
