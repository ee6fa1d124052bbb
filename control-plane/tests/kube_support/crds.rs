//! Installs the CRDs: a Gateway API bundle (by default v1.7.0's
//! experimental channel, with its ValidatingAdmissionPolicy) and
//! Gatewright's own, and waits for them to be Established.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::cluster::repo_root;
use super::objects::Kube;

/// The Gateway API bundle installed unless a test binary chooses another.
pub const DEFAULT_BUNDLE: &str = "gateway-api-v1.7.0/experimental";

static BUNDLE: OnceLock<&'static str> = OnceLock::new();

/// Makes this test binary's cluster install `folder` (under `crds/`)
/// instead of [`DEFAULT_BUNDLE`]. Every test of the binary must call it
/// before [`super::Cluster::shared`]; panics if another bundle was chosen
/// (or the default already used).
pub fn use_bundle(folder: &'static str) {
    let chosen = *BUNDLE.get_or_init(|| folder);
    assert_eq!(chosen, folder, "this test binary's cluster runs {chosen}");
}

/// The Gateway API bundle this binary's cluster runs.
pub fn bundle() -> &'static str {
    BUNDLE.get_or_init(|| DEFAULT_BUNDLE)
}

/// The YAML files to install, in order.
pub fn crd_files() -> Result<Vec<PathBuf>, String> {
    let root = repo_root();
    let mut files = yaml_files(&root.join("crds").join(bundle()), true)?;
    let own = root.join("crds/gatewright");
    if own.is_dir() {
        files.extend(yaml_files(&own, false)?);
    }
    Ok(files)
}

fn yaml_files(dir: &Path, required: bool) -> Result<Vec<PathBuf>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("reading {}: {e}", dir.display())),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            (name.ends_with(".yaml") || name.ends_with(".yml"))
                && name != "kustomization.yaml"
                && !name.starts_with('.')
        })
        .collect();
    files.sort();
    if required && files.is_empty() {
        return Err(format!("no CRD files in {}", dir.display()));
    }
    Ok(files)
}

/// Applies every CRD file and waits (up to 60 s) for each CRD to be
/// Established. Returns the CRD names.
pub async fn install(kube: &Kube) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for file in crd_files()? {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("reading {}: {e}", file.display()))?;
        let applied = kube
            .apply(&text)
            .await
            .map_err(|e| format!("{}: {e}", file.display()))?;
        for obj in applied {
            if obj["kind"] == "CustomResourceDefinition"
                && let Some(name) = obj["metadata"]["name"].as_str()
            {
                names.push(name.to_string());
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for name in &names {
        loop {
            let crd = kube
                .get(
                    "apiextensions.k8s.io/v1",
                    "CustomResourceDefinition",
                    None,
                    name,
                )
                .await?;
            let established = crd.as_ref().is_some_and(|c| {
                c["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Established" && c["status"] == "True")
                })
            });
            if established {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("CRD {name} not Established within 60 s"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(names)
}
