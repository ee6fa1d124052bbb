//! Golden translation cases: every `testdata/translator/<case>.yaml` is
//! translated and its rendered output compared with the snapshot beside it,
//! `testdata/translator/<case>.snap`; then every Gateway's Envoy resources are
//! loaded by a real Envoy (`envoy --mode validate`).
//!
//! Regenerate the snapshots with `make golden` and review `git diff testdata`.

mod support;

use gatewright_translator::{
    GatewayResources, KUBERNETES_FEATURES, Output, SUPPORTED_FEATURES, translate,
};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How many Envoy validations run at once.
const ENVOY_PARALLELISM: usize = 2;

/// The one case whose snapshot shows GatewayClass `supportedFeatures`; the
/// others would all change with every feature added, so for them the list
/// is checked against [`SUPPORTED_FEATURES`] here and left out of the
/// snapshot.
const SUPPORTED_FEATURES_CASE: &str = "gatewayclass-supported-features";

/// Checks every GatewayClass status lists exactly [`SUPPORTED_FEATURES`],
/// then removes the list so the snapshot does not repeat it.
fn strip_supported_features(case: &str, output: &mut Output) -> Result<(), String> {
    for (class, status) in &mut output.statuses.gateway_classes {
        let listed: Vec<&str> = status
            .supported_features
            .iter()
            .flatten()
            .map(|f| f.name.as_str())
            .collect();
        if listed != SUPPORTED_FEATURES {
            return Err(format!(
                "{case}: GatewayClass {class} lists supportedFeatures {listed:?}, \
                 not SUPPORTED_FEATURES"
            ));
        }
        status.supported_features = None;
    }
    Ok(())
}

/// Where each feature Gatewright claims is shown: `(feature, case, text
/// the case's objects must contain)`. The text ties the case to the field
/// or value that exercises the feature, so renaming or rewriting the case
/// cannot silently drop its coverage.
const FEATURE_CASES: &[(&str, &str, &str)] = &[
    (
        "BackendTLSPolicy",
        "backendtlspolicy-hostname",
        "kind: BackendTLSPolicy",
    ),
    (
        "BackendTLSPolicySANValidation",
        "backendtlspolicy-san-dns",
        "subjectAltNames:",
    ),
    (
        "BackendTLSPolicySANValidation",
        "backendtlspolicy-san-uri",
        "subjectAltNames:",
    ),
    ("GRPCRoute", "grpcroute-method-exact", "kind: GRPCRoute"),
    (
        "GRPCRouteRequestHeaderModifier",
        "grpcroute-request-header-modifier",
        "type: RequestHeaderModifier",
    ),
    (
        "GRPCRouteNamedRouteRule",
        "grpcroute-named-rule",
        "- name: say-hello",
    ),
    ("Gateway", "gateway-single-http-listener", "kind: Gateway\n"),
    (
        "GatewayAddressEmpty",
        "gateway-address-empty-value",
        "addresses:\n  - type: IPAddress\n  listeners:",
    ),
    (
        "GatewayBackendClientCertificate",
        "gateway-backend-client-certificate",
        "clientCertificateRef:",
    ),
    (
        "GatewayFrontendClientCertificateValidation",
        "frontend-validation-default",
        "frontend:\n      default:",
    ),
    (
        "GatewayFrontendClientCertificateValidation",
        "frontend-validation-per-port",
        "perPort:",
    ),
    (
        "GatewayFrontendClientCertificateValidationInsecureFallback",
        "frontend-validation-insecure-fallback",
        "AllowInsecureFallback",
    ),
    (
        "GatewayHTTPListenerIsolation",
        "hostname-listener-isolation",
        "hostname:",
    ),
    (
        "GatewayHTTPSListenerDetectMisdirectedRequests",
        "listener-https-misdirected-requests",
        "protocol: HTTPS",
    ),
    (
        "GatewayInfrastructure",
        "gateway-infrastructure-parameters",
        "infrastructure:",
    ),
    ("GatewayPort8080", "attach-port", "port: 8080"),
    (
        "GatewayRouteHostnameIntersectionPrecedence",
        "hostname-precedence-across-routes",
        "- foo.example.com",
    ),
    (
        "GatewayStaticAddresses",
        "gateway-address-unsupported-type",
        "- value: 10.245.0.200",
    ),
    ("HTTPRoute", "httproute-path-exact", "kind: HTTPRoute"),
    (
        "HTTPRoute303RedirectStatusCode",
        "httproute-redirect-status-codes-extended",
        "statusCode: 303",
    ),
    (
        "HTTPRoute307RedirectStatusCode",
        "httproute-redirect-status-codes-extended",
        "statusCode: 307",
    ),
    (
        "HTTPRoute308RedirectStatusCode",
        "httproute-redirect-status-codes-extended",
        "statusCode: 308",
    ),
    (
        "HTTPRouteBackendProtocolH2C",
        "httproute-backend-app-protocol",
        "appProtocol: kubernetes.io/h2c",
    ),
    (
        "HTTPRouteBackendProtocolWebSocket",
        "httproute-backend-app-protocol",
        "appProtocol: kubernetes.io/ws",
    ),
    (
        "HTTPRouteBackendURLRewrite",
        "httproute-backend-url-rewrite",
        "replaceFullPath: /rewritten-full",
    ),
    (
        "HTTPRouteBackendRequestHeaderModification",
        "httproute-backend-request-header-modifier",
        "type: RequestHeaderModifier",
    ),
    (
        "HTTPRouteBackendTimeout",
        "httproute-timeout-backend-request",
        "backendRequest:",
    ),
    ("HTTPRouteCORS", "httproute-cors", "type: CORS"),
    (
        "HTTPRouteDestinationPortMatching",
        "attach-port-not-found",
        "port: 9999",
    ),
    (
        "HTTPRouteHostRewrite",
        "httproute-rewrite-hostname",
        "hostname: rewritten.example.com",
    ),
    (
        "HTTPRouteMethodMatching",
        "httproute-method-match",
        "method:",
    ),
    (
        "HTTPRouteNamedRouteRule",
        "httproute-named-rule",
        "name: checkout",
    ),
    (
        "HTTPRouteParentRefPort",
        "attach-port",
        "  - name: gw\n    port: 8080",
    ),
    (
        "HTTPRoutePathRedirect",
        "httproute-redirect-port-follows-listener-scheme",
        "type: ReplaceFullPath",
    ),
    (
        "HTTPRoutePathRewrite",
        "httproute-rewrite-path",
        "type: ReplacePrefixMatch",
    ),
    (
        "HTTPRoutePathRewrite",
        "httproute-rewrite-path",
        "type: ReplaceFullPath",
    ),
    (
        "HTTPRoutePortRedirect",
        "httproute-redirect-port-follows-listener-scheme",
        "type: RequestRedirect",
    ),
    (
        "HTTPRouteQueryParamMatching",
        "httproute-query-param-match",
        "queryParams:",
    ),
    (
        "HTTPRouteRequestMirror",
        "httproute-request-mirror-keeps-host",
        "type: RequestMirror",
    ),
    (
        "HTTPRouteRequestMultipleMirrors",
        "httproute-request-mirror-multiple",
        "name: mirror-b",
    ),
    (
        "HTTPRouteRequestPercentageMirror",
        "httproute-request-mirror-percentage",
        "percent: 25",
    ),
    (
        "HTTPRouteRequestPercentageMirror",
        "httproute-request-mirror-percentage",
        "fraction:",
    ),
    (
        "HTTPRouteRequestTimeout",
        "httproute-timeout-request",
        "request: 500ms",
    ),
    (
        "HTTPRouteResponseHeaderModification",
        "httproute-response-header-modifier",
        "type: ResponseHeaderModifier",
    ),
    (
        "HTTPRouteRetryCodes",
        "httproute-retry-codes-attempts-backoff",
        "codes:",
    ),
    (
        "HTTPRouteRetryConnectionError",
        "httproute-retry-codes-attempts-backoff",
        "attempts: 3",
    ),
    (
        "HTTPRouteSchemeRedirect",
        "httproute-redirect-scheme-https",
        "scheme: https",
    ),
    (
        "ListenerSet",
        "listenerset-allowed-all",
        "kind: ListenerSet",
    ),
    ("ReferenceGrant", "refgrant-to-name", "kind: ReferenceGrant"),
    ("TCPRoute", "tcproute-basic", "kind: TCPRoute"),
    (
        "TLSRoute",
        "tlsroute-passthrough-exact-sni",
        "kind: TLSRoute",
    ),
    (
        "TLSRouteModeMixed",
        "tlsroute-mixed-terminate-and-passthrough",
        "mode: Passthrough",
    ),
    (
        "TLSRouteModeTerminate",
        "tlsroute-terminate",
        "mode: Terminate",
    ),
    ("UDPRoute", "udproute-weighted-split", "kind: UDPRoute"),
];

/// A claimed feature needs a golden case that exercises it, and the table
/// above names no feature Gatewright does not claim.
#[test]
fn every_supported_feature_has_a_golden_case() {
    let claimed: std::collections::BTreeSet<&str> = SUPPORTED_FEATURES
        .iter()
        .chain(KUBERNETES_FEATURES)
        .copied()
        .collect();
    let mut failures = Vec::new();
    for feature in &claimed {
        if !FEATURE_CASES.iter().any(|(f, _, _)| f == feature) {
            failures.push(format!(
                "{feature}: claimed, but no golden case is listed for it"
            ));
        }
    }
    for (feature, case, text) in FEATURE_CASES {
        if !claimed.contains(feature) {
            failures.push(format!("{feature}: listed with {case}, but not claimed"));
        }
        let path = support::cases_dir().join(format!("{case}.yaml"));
        let Ok(body) = std::fs::read_to_string(&path) else {
            failures.push(format!("{feature}: case {} is missing", path.display()));
            continue;
        };
        // Only the objects count, not the comment that describes them.
        let objects: String = body
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .fold(String::new(), |mut s, line| {
                s.push_str(line);
                s.push('\n');
                s
            });
        if !objects.contains(text) {
            failures.push(format!("{feature}: case {case} does not contain {text:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn case_files() -> Vec<PathBuf> {
    let dir = support::cases_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
}

fn case_name(path: &std::path::Path) -> String {
    path.file_stem()
        .expect("case file has a stem")
        .to_string_lossy()
        .into_owned()
}

/// Compares `rendered` with `<case>.snap` beside the input; `Err` if insta
/// rejects it (its diff is already printed).
fn check_snapshot(case: &str, input_file: &std::path::Path, rendered: &str) -> Result<(), String> {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(support::cases_dir());
    settings.set_prepend_module_to_snapshot(false);
    settings.set_input_file(input_file);
    settings.set_omit_expression(true);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        settings.bind(|| insta::assert_snapshot!(case, rendered));
    }));
    result.map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "snapshot assertion failed".to_owned());
        format!("{case}: snapshot mismatch (run `make golden` and review `git diff testdata`): {message}")
    })
}

#[test]
fn golden_cases() {
    // Fail, never skip, when there is no Envoy to validate with.
    let envoy = support::envoy_binary().unwrap_or_else(|e| panic!("{e}"));

    let files = case_files();
    assert!(
        !files.is_empty(),
        "no test cases in {}",
        support::cases_dir().display()
    );
    let mut failures = Vec::new();

    // Snapshots without an input are stale.
    for entry in std::fs::read_dir(support::cases_dir()).expect("list testdata/translator") {
        let path = entry.expect("directory entry").path();
        if path.extension().is_some_and(|ext| ext == "snap")
            && !path.with_extension("yaml").exists()
        {
            failures.push(format!(
                "{}: snapshot without an input file; delete it",
                path.display()
            ));
        }
    }

    let mut outputs: Vec<(String, Output)> = Vec::new();
    for file in &files {
        let case = case_name(file);
        let input = match support::load_case(file) {
            Ok(input) => input,
            Err(e) => {
                failures.push(format!("{case}: cannot load case: {e:#}"));
                continue;
            }
        };
        // A panic fails the case, not the whole run.
        let translated = std::panic::catch_unwind(|| {
            let mut output = translate(&input);
            let stripped = if case == SUPPORTED_FEATURES_CASE {
                Ok(())
            } else {
                strip_supported_features(&case, &mut output)
            };
            let rendered = gatewright_render::render(&output);
            (output, rendered, stripped)
        });
        let Ok((output, rendered, stripped)) = translated else {
            failures.push(format!(
                "{case}: translate or render panicked (see the output above)"
            ));
            continue;
        };
        if let Err(e) = stripped {
            failures.push(e);
        }
        if let Err(e) = check_snapshot(&case, file, &rendered) {
            failures.push(e);
        }
        outputs.push((case, output));
    }

    // Envoy must accept every Gateway's configuration.
    let next = AtomicUsize::new(0);
    let envoy_failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..ENVOY_PARALLELISM {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some((case, output)) = outputs.get(index) else {
                        break;
                    };
                    if let Err(e) = support::envoy_validate(output) {
                        envoy_failures
                            .lock()
                            .unwrap()
                            .push((index, format!("{case}: Envoy rejects the output:\n{e}")));
                    }
                }
            });
        }
    });
    let mut envoy_failures = envoy_failures.into_inner().unwrap();
    envoy_failures.sort();
    failures.extend(envoy_failures.into_iter().map(|(_, message)| message));

    let gateways: usize = outputs
        .iter()
        .map(|(_, output)| output.gateways.len())
        .sum();
    eprintln!(
        "golden: {} cases, {gateways} gateways validated with {}",
        files.len(),
        envoy.display()
    );
    assert!(
        failures.is_empty(),
        "{} golden failure(s):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn envoy_validate_accepts_a_minimal_gateway() {
    let output = support::output_of(support::minimal_http_gateway("route", "127.0.0.1"));
    support::envoy_validate(&output).expect("Envoy accepts a minimal listener with its route");
    let rendered = gatewright_render::render(&output);
    assert!(rendered.contains("routeConfigName: route"), "{rendered}");
}

#[test]
fn envoy_validate_rejects_a_route_that_is_not_in_the_output() {
    let output = support::output_of(support::minimal_http_gateway("missing", "127.0.0.1"));
    let error = support::envoy_validate(&output).expect_err("an unknown RDS route is an error");
    assert!(error.contains("\"missing\""), "{error}");
}

#[test]
fn envoy_validate_rejects_an_invalid_listener_address() {
    let output = support::output_of(support::minimal_http_gateway("route", "not-an-ip"));
    let error = support::envoy_validate(&output).expect_err("Envoy rejects a malformed address");
    assert!(error.contains("envoy --mode validate failed"), "{error}");
}

/// Puts a DownstreamTlsContext on the first filter chain whose certificate is
/// the SDS secret `secret` (over ADS, as the translator emits it).
fn with_sds_certificate(mut resources: GatewayResources, secret: &str) -> GatewayResources {
    use envoy_types::pb::envoy::config::core::v3::{
        AggregatedConfigSource, ConfigSource, TransportSocket, config_source, transport_socket,
    };
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    };
    use envoy_types::pb::google::protobuf::Any;
    use prost::Message;

    let tls = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![SdsSecretConfig {
                name: secret.to_owned(),
                sds_config: Some(ConfigSource {
                    resource_api_version: 2, // V3
                    config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                        AggregatedConfigSource {},
                    )),
                    ..Default::default()
                }),
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    resources.listeners[0].filter_chains[0].transport_socket = Some(TransportSocket {
        name: "envoy.transport_sockets.tls".to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(Any {
            type_url:
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
                    .to_owned(),
            value: tls.encode_to_vec(),
        })),
    });
    resources
}

/// A TLS certificate secret with (fake) inline PEM bytes.
fn fake_certificate_secret(
    name: &str,
) -> envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret {
    use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        Secret, TlsCertificate, secret,
    };
    let inline = |bytes: &[u8]| DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes.to_vec())),
        ..Default::default()
    };
    Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(b"-----BEGIN CERTIFICATE-----\nnot a certificate\n")),
            private_key: Some(inline(b"-----BEGIN PRIVATE KEY-----\nnot a key\n")),
            ..Default::default()
        })),
    }
}

#[test]
fn envoy_validate_resolves_sds_references_from_the_output_secrets() {
    // The referenced secret is missing: Envoy must look for it among the
    // static secrets (not over SDS) and reject the listener.
    let output = support::output_of(with_sds_certificate(
        support::minimal_http_gateway("route", "127.0.0.1"),
        "default/cert",
    ));
    let error = support::envoy_validate(&output).expect_err("a missing static secret is an error");
    assert!(
        error.contains("Unknown static secret: default/cert"),
        "{error}"
    );

    // Present but not a certificate: Envoy loads it and rejects the PEM,
    // which shows the secret was resolved.
    let mut resources = with_sds_certificate(
        support::minimal_http_gateway("route", "127.0.0.1"),
        "default/cert",
    );
    resources
        .secrets
        .push(fake_certificate_secret("default/cert"));
    let error = support::envoy_validate(&support::output_of(resources))
        .expect_err("a bogus certificate is an error");
    assert!(
        error.contains("Failed to load certificate chain"),
        "{error}"
    );
}

#[test]
fn render_redacts_private_keys() {
    let mut resources = support::minimal_http_gateway("route", "127.0.0.1");
    resources
        .secrets
        .push(fake_certificate_secret("default/cert"));
    let rendered = gatewright_render::render(&support::output_of(resources));
    assert!(rendered.contains("[redacted]"), "{rendered}");
    assert!(!rendered.contains("not a key"), "{rendered}");
    let key_base64 = "LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0t"; // "-----BEGIN PRIVATE KEY-----"
    assert!(!rendered.contains(key_base64), "{rendered}");
    // Certificates stay.
    assert!(rendered.contains("certificateChain"), "{rendered}");
    let statuses = rendered.find("statuses:").expect("statuses section");
    let gateways = rendered.find("gateways:").expect("gateways section");
    assert!(statuses < gateways, "{rendered}");
}
