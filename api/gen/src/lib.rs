//! Generates the `gatewright-api` crate's types from the Gateway API CRD
//! bundle checked in under `crds/`.
//!
//! Each CRD of the `gateway.networking.k8s.io` group in the experimental
//! channel (a superset of the standard one) becomes one module, written by
//! kopium's library for the CRD's storage version and formatted by rustfmt.
//! kopium derives `Default` on structs only, so a struct holding a required
//! enum would not compile; `enum_defaults.rs` gives each such enum a
//! `Default` (its first variant, which carries no meaning: it only lets the
//! enclosing struct derive `Default`).
//!
//! `cargo run -p gatewright-api-gen` writes the files; the crate's test
//! fails when the checked-in files differ from what it would write.

use anyhow::{Context as _, bail};
use heck::ToUpperCamelCase as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kopium::{Container, Derive, SchemaMode, TypeGenerator};
use serde::Deserialize as _;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The Gateway API release the types are generated from.
pub const GATEWAY_API_VERSION: &str = "v1.7.0";

/// The API group whose CRDs get types; the `x-k8s.io` incubation group's
/// kinds are not read by Gatewright.
const GROUP: &str = "gateway.networking.k8s.io";

/// The traits derived on every generated type besides kopium's own.
const DERIVES: [&str; 2] = ["Default", "PartialEq"];

/// The repository root (this crate lives in `api/gen`).
pub fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The CRD folder the types come from, relative to the repository root.
pub fn crd_folder() -> PathBuf {
    PathBuf::from(format!(
        "crds/gateway-api-{GATEWAY_API_VERSION}/experimental"
    ))
}

/// The folder the generated modules go to, relative to the repository root.
pub fn output_folder() -> PathBuf {
    PathBuf::from("api/src/generated")
}

/// Every generated file (name within [`output_folder`], formatted text),
/// from the CRDs under `root`.
pub fn generate(root: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let folder = crd_folder();
    let mut crds = Vec::new();
    for entry in std::fs::read_dir(root.join(&folder))
        .with_context(|| format!("reading {}", folder.display()))?
    {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let file = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let file = file.unwrap_or_default();
            for crd in read_crds(&path)? {
                if crd.spec.group == GROUP {
                    crds.push((file.clone(), crd));
                }
            }
        }
    }
    crds.sort_by(|a, b| a.1.spec.names.plural.cmp(&b.1.spec.names.plural));
    if crds.is_empty() {
        bail!("no {GROUP} CRD under {}", folder.display());
    }

    let mut files = BTreeMap::new();
    let mut modules = Vec::new();
    let mut defaults: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (file, crd) in &crds {
        let module = crd.spec.names.plural.clone();
        let version = storage_version(crd)?;
        let generator = generator(&version);
        let source = format!("{}/{file}", folder.display());
        let text = generator
            .generate_rust_types_for(crd, Some(format!("(library) for {version} of {source}")))
            .with_context(|| format!("generating types for {source}"))?;
        files.insert(format!("{module}.rs"), rustfmt(&text)?);
        let needing =
            enums_needing_default(crd, &version).with_context(|| format!("analysing {source}"))?;
        if !needing.is_empty() {
            defaults.insert(module.clone(), needing);
        }
        modules.push(module);
    }
    files.insert(
        "enum_defaults.rs".into(),
        rustfmt(&enum_defaults(&defaults))?,
    );
    files.insert("mod.rs".into(), rustfmt(&module_list(&modules))?);
    Ok(files)
}

/// Writes [`generate`]'s files, removing generated files no longer made.
pub fn write(root: &Path) -> anyhow::Result<Vec<String>> {
    let files = generate(root)?;
    let out = root.join(output_folder());
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    for entry in std::fs::read_dir(&out)? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| !files.contains_key(&n)) {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    for (name, text) in &files {
        let path = out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(files.into_keys().collect())
}

/// The CustomResourceDefinitions of a YAML file (which may hold other
/// objects, such as the bundle's ValidatingAdmissionPolicy).
fn read_crds(path: &Path) -> anyhow::Result<Vec<CustomResourceDefinition>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut crds = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(document)
            .with_context(|| format!("parsing {}", path.display()))?;
        if value.get("kind").and_then(|k| k.as_str()) == Some("CustomResourceDefinition") {
            crds.push(
                serde_yaml::from_value(value)
                    .with_context(|| format!("decoding a CRD of {}", path.display()))?,
            );
        }
    }
    Ok(crds)
}

/// The version the API server stores: the one Gatewright reads and writes.
fn storage_version(crd: &CustomResourceDefinition) -> anyhow::Result<String> {
    crd.spec
        .versions
        .iter()
        .find(|v| v.storage)
        .map(|v| v.name.clone())
        .with_context(|| format!("CRD {} has no storage version", crd.spec.names.plural))
}

fn generator(version: &str) -> TypeGenerator {
    TypeGenerator::builder()
        .api_version(Some(version.to_owned()))
        .emit_docs(true)
        .schema_mode(SchemaMode::Disabled)
        .derive_all(DERIVES.iter().map(|d| Derive::all(d)))
        .build()
}

/// The enums that some struct holds as a required field, each with its
/// first variant.
fn enums_needing_default(
    crd: &CustomResourceDefinition,
    version: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let Some(schema) = crd
        .spec
        .versions
        .iter()
        .find(|v| v.name == version)
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.clone())
    else {
        bail!("no schema for version {version}");
    };
    // kopium names nested types after the kind, not `<Kind>Spec`, when it
    // writes them out; the analysis still has the longer names.
    let kind = crd.spec.names.kind.to_upper_camel_case();
    let spec = format!("{kind}Spec");
    let containers: Vec<Container> =
        kopium::analyze(schema, &crd.spec.names.kind, Default::default())?
            .rename()
            .output();
    let enums: BTreeMap<&str, &Container> = containers
        .iter()
        .filter(|c| c.is_enum)
        .map(|c| (c.name.as_str(), c))
        .collect();
    let required: BTreeSet<&str> = containers
        .iter()
        .filter(|c| !c.is_enum)
        .flat_map(|c| &c.members)
        .map(|m| m.type_.as_str())
        .filter(|t| enums.contains_key(t))
        .collect();
    required
        .into_iter()
        .map(|name| {
            let first = enums[name]
                .members
                .first()
                .with_context(|| format!("enum {name} has no variant"))?;
            Ok((name.replace(&spec, &kind), first.name.clone()))
        })
        .collect()
}

fn enum_defaults(defaults: &BTreeMap<String, Vec<(String, String)>>) -> String {
    let mut text = String::from(
        "// WARNING: generated by gatewright-api-gen - manual changes will be overwritten\n\n\
         //! `Default` for the enums that structs hold as required fields, so that\n\
         //! those structs can derive `Default`. The first variant is chosen; it\n\
         //! means nothing beyond that.\n\n",
    );
    for (module, enums) in defaults {
        for (name, variant) in enums {
            let _ = write!(
                text,
                "impl Default for super::{module}::{name} {{\n    \
                 fn default() -> Self {{\n        Self::{variant}\n    }}\n}}\n\n"
            );
        }
    }
    text
}

fn module_list(modules: &[String]) -> String {
    let mut text = format!(
        "// WARNING: generated by gatewright-api-gen - manual changes will be overwritten\n\n\
         //! The Gateway API {GATEWAY_API_VERSION} kinds of the experimental channel, one\n\
         //! module per CRD.\n\n\
         mod enum_defaults;\n"
    );
    for module in modules {
        let _ = writeln!(text, "pub mod {module};");
    }
    text
}

/// Formats Rust source as `cargo fmt` does (edition 2024, default style).
fn rustfmt(source: &str) -> anyhow::Result<String> {
    let mut child = Command::new("rustfmt")
        .args(["--edition", "2024", "--emit", "stdout"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running rustfmt (rustup component add rustfmt)")?;
    let mut stdin = child.stdin.take().context("rustfmt's stdin")?;
    let input = source.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().context("waiting for rustfmt")?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the thread feeding rustfmt panicked"))?
        .context("feeding rustfmt")?;
    if !output.status.success() {
        bail!(
            "rustfmt failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).context("rustfmt's output is not UTF-8")
}
