//! What the workspace's tests share. Only tests depend on this crate.
//!
//! Every test that needs Envoy finds it here, so they all agree on which
//! Envoy runs and all fail, rather than pass, when there is none.

use std::path::{Path, PathBuf};

/// The workspace's root folder.
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The Envoy tests run: `$ENVOY_BIN` if set (it must exist), else the
/// pinned one `make envoy` installs in `.tools/envoy/bin/envoy`, else
/// `envoy` on `PATH`. `Err` says how to install it.
pub fn find_envoy() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("ENVOY_BIN").filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!(
                "ENVOY_BIN={} does not exist; run `make envoy` to install Envoy",
                bin.display()
            ))
        };
    }
    let tools = workspace_dir().join(".tools/envoy/bin/envoy");
    if tools.is_file() {
        return Ok(tools);
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("envoy"))
                .find(|candidate| candidate.is_file())
        })
        .ok_or_else(|| {
            format!(
                "no Envoy found (ENVOY_BIN unset, no {}, no envoy on PATH); run `make envoy`",
                tools.display()
            )
        })
}

/// [`find_envoy`], failing the calling test when there is no Envoy: a
/// machine without one must not pass the tests that need it.
pub fn envoy() -> PathBuf {
    find_envoy().unwrap_or_else(|e| panic!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_dir_holds_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(workspace_dir().join("Cargo.toml"))
            .expect("the workspace's Cargo.toml");
        assert!(manifest.contains("[workspace]"), "{manifest}");
    }
}
