//! Compiles Envoy's `.proto` files (the ones envoy-types ships) into a
//! `FileDescriptorSet` that the library embeds, so rendering needs neither
//! the sources nor `cargo metadata` at run time.
//!
//! Writes to `OUT_DIR`:
//! - `envoy_descriptor_set.bin`: the encoded `FileDescriptorSet` (imports
//!   included, no source info);
//! - `envoy_descriptor_skipped.json`: a JSON array naming each `.proto` file
//!   left out because it did not compile, with the error.

use serde_json::Value;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;

/// Messages the golden format and the validation bootstrap cannot do
/// without; the build fails unless each compiled.
const REQUIRED_MESSAGES: &[&str] = include!("src/required_messages.rs");

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/required_messages.rs");
    println!("cargo:rerun-if-changed=../Cargo.lock");
    if let Err(e) = run() {
        eprintln!("error: cannot build the Envoy descriptor set: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let out_dir = PathBuf::from(env("OUT_DIR")?);
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR")?);
    let envoy_types = find_envoy_types_dir(&manifest_dir)?;
    let (compiler, skipped) = compile(&envoy_types)?;

    let set = out_dir.join("envoy_descriptor_set.bin");
    std::fs::write(&set, compiler.encode_file_descriptor_set())
        .map_err(|e| format!("cannot write {}: {e}", set.display()))?;
    let skipped_file = out_dir.join("envoy_descriptor_skipped.json");
    let skipped_json = serde_json::to_string(&skipped)
        .map_err(|e| format!("cannot write the skipped files as JSON: {e}"))?;
    std::fs::write(&skipped_file, skipped_json)
        .map_err(|e| format!("cannot write {}: {e}", skipped_file.display()))?;
    Ok(())
}

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|e| format!("${name}: {e}"))
}

// ---------------------------------------------------------------------------
// Finding envoy-types
// ---------------------------------------------------------------------------

/// The directory of the envoy-types package this crate depends on, from
/// `cargo metadata` on the workspace, limited to the target platform (so
/// that packages only other platforms use need not be downloaded). Offline
/// first; should that fail (a clean clone where only this build's packages
/// were downloaded, not every workspace member's), online.
fn find_envoy_types_dir(manifest_dir: &Path) -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target = env("TARGET")?;
    let workspace_manifest = manifest_dir.join("..").join("Cargo.toml");
    let metadata = |offline: bool| -> Result<Value, String> {
        let mut command = Command::new(&cargo);
        command
            .args(["metadata", "--format-version", "1", "--filter-platform"])
            .arg(&target)
            .arg("--manifest-path")
            .arg(&workspace_manifest);
        if offline {
            command.arg("--offline");
        }
        let shown = format!(
            "`{} metadata --format-version 1 --filter-platform {target} --manifest-path {}{}`",
            cargo.to_string_lossy(),
            workspace_manifest.display(),
            if offline { " --offline" } else { "" }
        );
        let output = command
            .current_dir(manifest_dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {shown}: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "{shown} failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        serde_json::from_slice(&output.stdout)
            .map_err(|e| format!("cannot parse the output of {shown}: {e}"))
    };
    let metadata = match metadata(true) {
        Ok(metadata) => metadata,
        Err(offline) => metadata(false).map_err(|online| format!("{offline}\n{online}"))?,
    };
    envoy_types_dir_in(&metadata)
}

/// The envoy-types package `gatewright-render` resolves to in `metadata`
/// (any envoy-types if that dependency edge is not found).
fn envoy_types_dir_in(metadata: &Value) -> Result<PathBuf, String> {
    let no_packages = Vec::new();
    let packages = metadata["packages"].as_array().unwrap_or(&no_packages);
    let render_id = packages
        .iter()
        .find(|p| p["name"] == "gatewright-render")
        .and_then(|p| p["id"].as_str());
    let resolved_id = metadata["resolve"]["nodes"].as_array().and_then(|nodes| {
        let node = nodes.iter().find(|n| n["id"].as_str() == render_id)?;
        node["deps"]
            .as_array()?
            .iter()
            .find(|d| d["name"] == "envoy_types")
            .and_then(|d| d["pkg"].as_str())
    });
    let package = packages
        .iter()
        .find(|p| resolved_id.is_some() && p["id"].as_str() == resolved_id)
        .or_else(|| packages.iter().find(|p| p["name"] == "envoy-types"))
        .ok_or("package envoy-types not found in `cargo metadata` output")?;
    let manifest = package["manifest_path"]
        .as_str()
        .ok_or("envoy-types has no manifest_path in `cargo metadata` output")?;
    let dir = Path::new(manifest)
        .parent()
        .ok_or_else(|| format!("envoy-types manifest path {manifest:?} has no parent"))?
        .to_path_buf();
    if !dir.join("proto").is_dir() {
        return Err(format!(
            "envoy-types at {} has no proto/ directory",
            dir.display()
        ));
    }
    Ok(dir)
}

// ---------------------------------------------------------------------------
// Compiling
// ---------------------------------------------------------------------------

/// Compiles every `.proto` file of the Envoy and xds trees in a package
/// envoy-types generates Rust types for (so any `Any` the translator can
/// build resolves). Returns the compiler and the files left out, with the
/// error; fails if a [`REQUIRED_MESSAGES`] message did not compile.
fn compile(dir: &Path) -> Result<(protox::Compiler, Vec<String>), String> {
    let proto = dir.join("proto");
    let includes = [
        "data-plane-api",
        "xds",
        "protoc-gen-validate",
        "googleapis",
        "cel-spec/proto",
        "opentelemetry-proto",
        "client_model",
    ]
    .map(|include| proto.join(include));

    // The packages envoy-types has Rust types for: one generated file each.
    let generated = dir.join("src").join("generated");
    let packages: BTreeSet<String> = std::fs::read_dir(&generated)
        .map_err(|e| format!("cannot list {}: {e}", generated.display()))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter_map(|name| name.strip_suffix(".rs").map(str::to_owned))
        .collect();
    // Every .proto file of the Envoy and xds trees in one of those packages.
    let mut files = BTreeMap::new();
    for root in [proto.join("data-plane-api"), proto.join("xds")] {
        collect_proto_files(&root, &root, &packages, &mut files)?;
    }
    if files.is_empty() {
        return Err(format!("no .proto files found under {}", proto.display()));
    }

    // prost-reflect resolves the first component of a relative name against
    // every package in the pool, not only the imported ones as protoc does:
    // once e.g. `envoy.extensions.filters.common.fault.v3` is loaded,
    // `common.ratelimit.v3.X` in a later `envoy.extensions.filters.*` file
    // resolves to the missing `envoy.extensions.filters.common.ratelimit.v3.X`.
    // When that happens, the name is resolved the way protoc would (the
    // innermost enclosing package scope where it exists), written into that
    // file's source fully qualified, and the file compiled again.
    let rewrites: Rewrites = Default::default();
    let mut resolver = protox::file::ChainFileResolver::new();
    for include in &includes {
        resolver.add(protox::file::IncludeFileResolver::new(include.clone()));
    }
    resolver.add(protox::file::GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(RewritingResolver {
        inner: resolver,
        rewrites: rewrites.clone(),
    });
    compiler.include_imports(true);
    let mut skipped = Vec::new();
    for file in files.keys() {
        let mut attempts = 0;
        while let Err(e) = compiler.open_file(file) {
            let message = e.to_string();
            attempts += 1;
            let fix =
                e.file()
                    .zip(shadowed_name(&message))
                    .and_then(|(failing, (name, shadowed))| {
                        let full = protoc_resolution(
                            &compiler.descriptor_pool(),
                            &includes,
                            failing,
                            name,
                            shadowed,
                        )?;
                        Some((failing.to_owned(), name.to_owned(), full))
                    });
            match fix {
                Some((failing, name, full)) if attempts < 50 => {
                    rewrites
                        .borrow_mut()
                        .entry(failing)
                        .or_default()
                        .push((name, full));
                }
                _ => {
                    skipped.push(format!("{file}: {message}"));
                    break;
                }
            }
        }
    }
    let pool = compiler.descriptor_pool();
    let missing: Vec<&str> = REQUIRED_MESSAGES
        .iter()
        .copied()
        .filter(|m| pool.get_message_by_name(m).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "messages {missing:?} did not compile; files left out:\n{}",
            skipped.join("\n")
        ));
    }
    Ok((compiler, skipped))
}

/// Per file name: relative type names to replace with fully-qualified ones.
type Rewrites = Rc<RefCell<BTreeMap<String, Vec<(String, String)>>>>;

/// Serves `.proto` files from the include paths, with the type names in
/// [`Rewrites`] replaced.
struct RewritingResolver {
    inner: protox::file::ChainFileResolver,
    rewrites: Rewrites,
}

impl protox::file::FileResolver for RewritingResolver {
    fn resolve_path(&self, path: &Path) -> Option<String> {
        self.inner.resolve_path(path)
    }

    fn open_file(&self, name: &str) -> Result<protox::file::File, protox::Error> {
        let file = self.inner.open_file(name)?;
        let rewrites = self.rewrites.borrow();
        let (Some(replacements), Some(source)) = (rewrites.get(name), file.source()) else {
            return Ok(file);
        };
        let mut source = source.to_owned();
        for (from, to) in replacements {
            source = replace_type_name(&source, from, to);
        }
        protox::file::File::from_source(name, &source)
    }
}

/// Replaces the whole type name `from` (not part of a longer dotted name)
/// with `.to`.
fn replace_type_name(source: &str, from: &str, to: &str) -> String {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find(from) {
        let before = rest[..at].chars().next_back();
        let after = rest[at + from.len()..].chars().next();
        out.push_str(&rest[..at]);
        if before.is_some_and(is_name_char)
            || after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            out.push_str(from);
        } else {
            out.push('.');
            out.push_str(to);
        }
        rest = &rest[at + from.len()..];
    }
    out.push_str(rest);
    out
}

/// From "'a.b.C' resolves to 'x.y.a.b.C', which is not defined": the
/// relative name and what it was wrongly resolved to.
fn shadowed_name(message: &str) -> Option<(&str, &str)> {
    if !message.contains("' resolves to '") {
        return None;
    }
    let mut quoted = message.split('\'').skip(1).step_by(2);
    Some((quoted.next()?, quoted.next()?))
}

/// The full name protoc gives relative type `name` in `file`: the innermost
/// enclosing package scope where the name is defined.
fn protoc_resolution(
    pool: &protox::prost_reflect::DescriptorPool,
    includes: &[PathBuf],
    file: &str,
    name: &str,
    shadowed: &str,
) -> Option<String> {
    let text = includes
        .iter()
        .find_map(|include| std::fs::read_to_string(include.join(file)).ok())?;
    let package = package_of(&text)?;
    let mut scope = Some(package);
    while let Some(current) = scope {
        let candidate = if current.is_empty() {
            name.to_owned()
        } else {
            format!("{current}.{name}")
        };
        let defined = pool.get_message_by_name(&candidate).is_some()
            || pool.get_enum_by_name(&candidate).is_some();
        if candidate != shadowed && defined {
            return Some(candidate);
        }
        scope = match current.rsplit_once('.') {
            Some((parent, _)) => Some(parent),
            None if current.is_empty() => None,
            None => Some(""),
        };
    }
    None
}

/// The `package` a `.proto` file's source declares.
fn package_of(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|line| line.trim().strip_prefix("package "))
        .map(|rest| rest.trim_end_matches(';').trim())
}

/// Adds to `files` every `.proto` file under `dir` whose package is one of
/// `packages`, keyed by its path relative to `root`.
fn collect_proto_files(
    root: &Path,
    dir: &Path,
    packages: &BTreeSet<String>,
    files: &mut BTreeMap<String, String>,
) -> Result<(), String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry
            .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
            .path();
        if path.is_dir() {
            collect_proto_files(root, &path, packages, files)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if let Some(package) = package_of(&text).filter(|p| packages.contains(*p)) {
                let relative = path
                    .strip_prefix(root)
                    .map_err(|_| format!("{} is not under {}", path.display(), root.display()))?;
                files.insert(
                    relative.to_string_lossy().replace('\\', "/"),
                    package.to_owned(),
                );
            }
        }
    }
    Ok(())
}
