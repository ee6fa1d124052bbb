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
        let out = gatewright()
            .args(["translate", "--now", CASE_NOW, "-f"])
            .arg(case)
            .output()
            .expect("gatewright runs");
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
