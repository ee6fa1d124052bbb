//! The `gatewright` CLI without Envoy: `translate` against the golden
//! files, and clear errors on bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `now` the golden cases were rendered at.
const CASE_NOW: &str = "2026-01-01T00:00:00Z";

fn gatewright() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gatewright"))
}

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("testdata")
        .join("translator")
}

/// The body of an insta snapshot: everything after its front matter.
fn snapshot_body(text: &str) -> &str {
    let rest = text.strip_prefix("---\n").unwrap_or(text);
    rest.split_once("\n---\n").map_or(rest, |(_, body)| body)
}

/// The one golden case whose snapshot shows GatewayClass
/// `supportedFeatures` (see translator/tests/golden.rs).
const SUPPORTED_FEATURES_CASE: &str = "gatewayclass-supported-features";

/// `gatewright translate` prints every GatewayClass's `supportedFeatures`;
/// the golden snapshots other than [`SUPPORTED_FEATURES_CASE`] leave the
/// list out. Removes each list from `text`, failing unless it is exactly
/// `SUPPORTED_FEATURES`.
fn without_supported_features(text: &str) -> Result<String, String> {
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim_start() != "supportedFeatures:" {
            out.push(line);
            continue;
        }
        let indent = &line[..line.len() - line.trim_start().len()];
        let item = format!("{indent}- name: ");
        let mut names = Vec::new();
        while let Some(name) = lines.peek().and_then(|l| l.strip_prefix(item.as_str())) {
            names.push(name);
            lines.next();
        }
        if names != gatewright_translator::SUPPORTED_FEATURES {
            return Err(format!(
                "supportedFeatures {names:?} is not SUPPORTED_FEATURES"
            ));
        }
    }
    Ok(out.join("\n"))
}

/// Golden cases whose input a cluster's API server would refuse, on
/// purpose: they show the translator's own defences, so `translate` runs
/// them with `--skip-schema-validation` (validate/tests/bundle.rs holds
/// the refusal of each).
const SCHEMA_INVALID_CASES: &[&str] = &[
    "gateway-xff-trusted-hops-invalid",
    "listener-hostname-conflict",
    "listenerset-indistinct-within-set",
    "httproute-replace-prefix-match-needs-path-prefix",
    "httproute-timeout-invalid",
    "httproute-cors-invalid-origin",
    "httproute-retry-invalid",
];

#[test]
fn translate_prints_exactly_the_golden_files() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .expect("testdata/translator exists")
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    assert!(
        cases.len() > 50,
        "expected the golden cases, found {}",
        cases.len()
    );
    let mut mismatches = Vec::new();
    for case in &cases {
        let invalid = case
            .file_stem()
            .and_then(|s| s.to_str())
            .is_some_and(|s| SCHEMA_INVALID_CASES.contains(&s));
        let mut command = gatewright();
        command
            .args(["translate", "--now", CASE_NOW, "-f"])
            .arg(case);
        if invalid {
            command.arg("--skip-schema-validation");
        }
        let out = command.output().expect("gatewright runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("refused by its CRD") {
            mismatches.push(format!("{}: {stderr}", case.display()));
            continue;
        }
        let expected = std::fs::read_to_string(case.with_extension("snap"))
            .unwrap_or_else(|e| panic!("{}: no snapshot: {e}", case.display()));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stdout = if case
            .file_stem()
            .is_some_and(|s| s == SUPPORTED_FEATURES_CASE)
        {
            Ok(stdout)
        } else {
            without_supported_features(&stdout)
        };
        match stdout {
            Ok(stdout) if stdout.trim_end() == snapshot_body(&expected).trim_end() => {}
            Ok(_) => mismatches.push(case.display().to_string()),
            Err(e) => mismatches.push(format!("{}: {e}", case.display())),
        }
    }
    assert!(
        mismatches.is_empty(),
        "`gatewright translate` differs from the golden file for: {mismatches:?}"
    );
}

#[test]
fn translate_names_the_file_and_line_of_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n",
    )
    .expect("write");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: v1\nkind: [\n").expect("write");
    let out = gatewright()
        .args(["translate", "-f"])
        .arg(dir.path())
        .output()
        .expect("gatewright runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!("{}:", bad.display())) && stderr.contains("invalid YAML"),
        "stderr should name bad.yaml and say the YAML is invalid: {stderr}"
    );
    assert!(
        stderr.contains(&format!("{}:5", good.display())) && stderr.contains("Widget"),
        "stderr should point at the unknown kind on line 5 of good.yaml: {stderr}"
    );
    // The rest was still translated.
    assert!(String::from_utf8_lossy(&out.stdout).contains("statuses"));
}

/// Objects their CRD refuses are skipped with a problem naming the file,
/// the line, the field and the rule's message, and exit code 2, as for
/// other bad input; `--skip-schema-validation` translates them.
#[test]
fn translate_refuses_what_the_crds_refuse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("objects.yaml");
    let gateway = |name: &str, listener: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  gatewayClassName: gatewright\n  listeners:\n  - {listener}\n"
        )
    };
    let text = [
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: gatewright}\nspec: {controllerName: gatewright.dev/gateway-controller}\n".to_owned(),
        gateway("good", "{name: http, port: 80, protocol: HTTP}"),
        // Line 14: a schema rule (port 1-65535).
        gateway("port-zero", "{name: http, port: 0, protocol: HTTP}"),
        // Line 22: a CEL rule of the Gateway CRD.
        gateway("tcp-hostname", "{name: tcp, port: 9000, protocol: TCP, hostname: a.example.com}"),
        // Line 30: a CEL rule of the HTTPRoute CRD.
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: redirect, namespace: default}\nspec:\n  parentRefs: [{name: good}]\n  rules:\n  - matches: [{path: {type: Exact, value: /a}}]\n    filters:\n    - type: RequestRedirect\n      requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}\n".to_owned(),
    ]
    .join("---\n");
    std::fs::write(&file, text).expect("write");

    let out = gatewright()
        .args(["translate", "--now", CASE_NOW, "-f"])
        .arg(&file)
        .output()
        .expect("gatewright runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    let f = file.display();
    for expected in [
        format!(
            "{f}:14: Gateway default/port-zero: refused by its CRD: spec.listeners[0].port: Invalid value: 0: should be greater than or equal to 1; skipped"
        ),
        format!(
            "{f}:22: Gateway default/tcp-hostname: refused by its CRD: spec.listeners: hostname must not be specified for protocols ['TCP', 'UDP']; skipped"
        ),
        format!(
            "{f}:30: HTTPRoute default/redirect: refused by its CRD: spec.rules[0]: When using RequestRedirect filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified; skipped"
        ),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in stderr: {stderr}"
        );
    }
    assert_eq!(stderr.lines().count(), 3, "stderr: {stderr}");
    assert!(stdout.contains("default/good:"), "stdout: {stdout}");
    assert!(!stdout.contains("default/port-zero:"), "stdout: {stdout}");
    assert!(
        !stdout.contains("default/tcp-hostname:"),
        "stdout: {stdout}"
    );

    let out = gatewright()
        .args([
            "translate",
            "--skip-schema-validation",
            "--now",
            CASE_NOW,
            "-f",
        ])
        .arg(&file)
        .output()
        .expect("gatewright runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("default/tcp-hostname:"), "stdout: {stdout}");
}

#[test]
fn status_without_a_running_gatewright_says_what_to_do() {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port();
    let out = gatewright()
        .args(["status", "--admin-address", &format!("127.0.0.1:{port}")])
        .output()
        .expect("gatewright runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot reach Gatewright's admin server"),
        "stderr: {stderr}"
    );
}

#[test]
fn run_refuses_a_missing_config_dir() {
    let out = gatewright()
        .args(["run", "--config-dir", "/nonexistent/gatewright-test"])
        .env("ENVOY_BIN", "/bin/true")
        .output()
        .expect("gatewright runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("does not exist"), "stderr: {stderr}");
}
