//! Maps container images to local binaries.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

/// One entry of the image map file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ImageEntry {
    /// An exact image reference, or a prefix ending in `*`, `:`, `/` or `@`
    /// (a prefix matches any image starting with it).
    pub image: String,
    /// The local binary that plays this image.
    pub binary: PathBuf,
    /// Fixed arguments; when set, the container's own command and args are
    /// ignored (the binary does not understand them).
    #[serde(default)]
    pub args: Option<Vec<String>>,
}

/// The parsed image map: a list of entries.
#[derive(Debug, Clone, Default)]
pub struct ImageMap {
    entries: Vec<ImageEntry>,
}

impl ImageMap {
    /// Reads a YAML list of entries from `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading image map {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("parsing image map {}", path.display()))
    }

    /// Parses a YAML list of entries.
    pub fn parse(text: &str) -> Result<Self> {
        let entries: Vec<ImageEntry> = serde_yaml::from_str(text).context("image map YAML")?;
        Ok(Self { entries })
    }

    /// The entry for `image`: an exact match wins, then the longest prefix.
    pub fn lookup(&self, image: &str) -> Option<&ImageEntry> {
        if let Some(exact) = self.entries.iter().find(|e| e.image == image) {
            return Some(exact);
        }
        self.entries
            .iter()
            .filter_map(|e| {
                let prefix = e.image.strip_suffix('*').unwrap_or(&e.image);
                let is_prefix = e.image.ends_with(['*', ':', '/', '@']);
                (is_prefix && image.starts_with(prefix)).then_some((prefix.len(), e))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, e)| e)
    }
}

/// The arguments a container's process gets: the mapping's fixed args, or
/// else the container's command (minus its first word, the in-image binary)
/// followed by its args.
pub fn process_args(entry: &ImageEntry, command: &[String], args: &[String]) -> Vec<String> {
    if let Some(fixed) = &entry.args {
        return fixed.clone();
    }
    command.iter().skip(1).chain(args.iter()).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = r#"
- image: images.example.test/gateway-api/echo-basic:v1.5.1
  binary: /exact
- image: images.example.test/gateway-api/echo-basic*
  binary: /echo
- image: images.example.test/gateway-api/
  binary: /any
  args: ["--x"]
- image: busybox
  binary: /bb
"#;

    #[test]
    fn exact_then_longest_prefix() {
        let m = ImageMap::parse(MAP).unwrap();
        let bin = |i: &str| m.lookup(i).map(|e| e.binary.to_string_lossy().into_owned());
        assert_eq!(
            bin("images.example.test/gateway-api/echo-basic:v1.5.1").as_deref(),
            Some("/exact")
        );
        assert_eq!(
            bin("images.example.test/gateway-api/echo-basic:v2").as_deref(),
            Some("/echo")
        );
        assert_eq!(
            bin("images.example.test/gateway-api/echo-advanced:v1").as_deref(),
            Some("/any")
        );
        assert_eq!(bin("busybox").as_deref(), Some("/bb"));
        // A bare name is exact only.
        assert_eq!(bin("busybox:1.36"), None);
        assert_eq!(bin("nginx"), None);
    }

    #[test]
    fn args_from_mapping_or_container() {
        let m = ImageMap::parse(MAP).unwrap();
        let fixed = m.lookup("images.example.test/gateway-api/other").unwrap();
        assert_eq!(
            process_args(fixed, &["/x".into()], &["a".into()]),
            vec!["--x"]
        );
        let free = m.lookup("busybox").unwrap();
        assert_eq!(
            process_args(free, &["/bin/sh".into(), "-c".into()], &["echo".into()]),
            vec!["-c", "echo"]
        );
    }

    #[test]
    fn bad_yaml_is_an_error() {
        assert!(ImageMap::parse("image: 3").is_err());
    }
}
