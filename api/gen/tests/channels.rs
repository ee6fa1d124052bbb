//! The types come from the experimental channel only. That is sound while
//! each standard-channel schema is contained in the experimental one: every
//! property the standard channel has is there, with no enum value missing.

use gatewright_api_gen::{GATEWAY_API_VERSION, repository_root};
use serde::Deserialize as _;
use serde_yaml::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// Every CRD of a channel folder: (plural, version) → openAPIV3Schema.
fn schemas(folder: &Path) -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(folder).expect("reading the CRD folder") {
        let path = entry.expect("a folder entry").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("reading a CRD file");
        for document in serde_yaml::Deserializer::from_str(&text) {
            let crd = Value::deserialize(document).expect("YAML");
            if crd["kind"] != "CustomResourceDefinition" {
                continue;
            }
            let plural = crd["spec"]["names"]["plural"].as_str().unwrap_or_default();
            for version in crd["spec"]["versions"].as_sequence().into_iter().flatten() {
                let name = version["name"].as_str().unwrap_or_default();
                out.insert(
                    (plural.to_owned(), name.to_owned()),
                    version["schema"]["openAPIV3Schema"].clone(),
                );
            }
        }
    }
    out
}

/// Where `standard` has something `experimental` lacks, below `path`.
fn missing(standard: &Value, experimental: &Value, path: &str, out: &mut Vec<String>) {
    if let Some(values) = standard["enum"].as_sequence() {
        let wider = experimental["enum"].as_sequence();
        for v in values {
            if wider.is_some_and(|w| !w.contains(v)) {
                out.push(format!("{path}: enum value {v:?}"));
            }
        }
    }
    if let Some(properties) = standard["properties"].as_mapping() {
        for (name, schema) in properties {
            let name = name.as_str().unwrap_or_default();
            let child = format!("{path}.{name}");
            match experimental["properties"].get(name) {
                Some(other) => missing(schema, other, &child, out),
                None => out.push(child),
            }
        }
    }
    for key in ["items", "additionalProperties"] {
        if let (Some(s), Some(e)) = (standard.get(key), experimental.get(key)) {
            missing(s, e, &format!("{path}[{key}]"), out);
        }
    }
}

#[test]
fn the_standard_channel_is_contained_in_the_experimental_one() {
    let root = repository_root().join(format!("crds/gateway-api-{GATEWAY_API_VERSION}"));
    let standard = schemas(&root.join("standard"));
    let experimental = schemas(&root.join("experimental"));
    assert!(
        standard.len() >= 10,
        "only {} standard schemas",
        standard.len()
    );
    let mut gaps = Vec::new();
    for ((plural, version), schema) in &standard {
        match experimental.get(&(plural.clone(), version.clone())) {
            Some(wider) => missing(schema, wider, &format!("{plural}/{version}"), &mut gaps),
            None => gaps.push(format!("{plural}/{version}: no experimental CRD")),
        }
    }
    assert!(gaps.is_empty(), "only in the standard channel: {gaps:#?}");
}
