//! Pure helpers that turn a pod spec into what a process needs: field
//! references, environment and volume files.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::{KeyToPath, Pod};

/// Runtime facts a field reference may name that are not in the spec.
#[derive(Debug, Clone, Default)]
pub struct PodFacts {
    /// The pod IP.
    pub pod_ip: String,
    /// The node IP.
    pub host_ip: String,
    /// The node name.
    pub node_name: String,
}

/// Resolves a downward-API `fieldRef.fieldPath` for `pod`.
pub fn resolve_field_ref(pod: &Pod, facts: &PodFacts, path: &str) -> Result<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    if let Some(v) = keyed("metadata.labels['", meta.labels.as_ref()) {
        return Ok(v);
    }
    if let Some(v) = keyed("metadata.annotations['", meta.annotations.as_ref()) {
        return Ok(v);
    }
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| facts.node_name.clone()),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".to_string()),
        "status.podIP" | "status.podIPs" => facts.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.clone(),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        other => bail!("unsupported fieldRef fieldPath {other:?}"),
    })
}

fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.map(|m| {
        m.iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect::<Vec<_>>()
            .join("\n")
    })
    .unwrap_or_default()
}

/// Expands `$(NAME)` references from `env`; `$$(` escapes to a literal `$(`,
/// unknown names stay as written (the kubelet's rules).
pub fn expand(input: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix("$(") {
            out.push_str("$(");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('(')
            && let Some(end) = tail.find(')')
        {
            let name = &tail[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The files a Secret/ConfigMap volume holds: every key, or only `items`
/// (each key must exist unless `optional`). Paths are relative and checked.
pub fn project_items(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    optional: bool,
) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let Some(items) = items.filter(|i| !i.is_empty()) else {
        return data
            .iter()
            .map(|(k, v)| Ok((safe_relative(k)?, v.clone())))
            .collect();
    };
    let mut out = Vec::new();
    for item in items {
        match data.get(&item.key) {
            Some(v) => out.push((safe_relative(&item.path)?, v.clone())),
            None if optional => {}
            None => bail!("key {:?} not found", item.key),
        }
    }
    Ok(out)
}

/// `p` as a relative path without `..`, or an error.
pub fn safe_relative(p: &str) -> Result<PathBuf> {
    let path = Path::new(p);
    if p.is_empty()
        || path
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        bail!("invalid volume item path {p:?}");
    }
    Ok(path.to_path_buf())
}

/// Decodes a ConfigMap's data and binaryData into bytes.
pub fn configmap_bytes(
    data: Option<&BTreeMap<String, String>>,
    binary: Option<&BTreeMap<String, k8s_openapi::ByteString>>,
) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = data
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    out.extend(
        binary
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone())),
    );
    out
}

/// Decodes a Secret's data (and stringData) into bytes.
pub fn secret_bytes(
    data: Option<&BTreeMap<String, k8s_openapi::ByteString>>,
    string_data: Option<&BTreeMap<String, String>>,
) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = data
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    out.extend(
        string_data
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes())),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1",
                          "labels": {"app": "echo"}},
            "spec": {"containers": [], "nodeName": "gwr-node", "serviceAccountName": "sa"}
        }))
        .unwrap()
    }

    #[test]
    fn field_refs() {
        let facts = PodFacts {
            pod_ip: "10.244.0.2".into(),
            host_ip: "10.244.0.1".into(),
            node_name: "n".into(),
        };
        let p = pod();
        let r = |path| resolve_field_ref(&p, &facts, path).unwrap();
        assert_eq!(r("metadata.name"), "p");
        assert_eq!(r("metadata.namespace"), "ns");
        assert_eq!(r("status.podIP"), "10.244.0.2");
        assert_eq!(r("spec.nodeName"), "gwr-node");
        assert_eq!(r("spec.serviceAccountName"), "sa");
        assert_eq!(r("metadata.labels['app']"), "echo");
        assert_eq!(r("metadata.labels['none']"), "");
        assert!(resolve_field_ref(&p, &facts, "spec.bogus").is_err());
    }

    #[test]
    fn expansion() {
        let env = vec![
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "x".to_string()),
        ];
        assert_eq!(expand("$(A)-$(B)-$(C)", &env), "1-x-$(C)");
        assert_eq!(expand("$$(A) $ $(A", &env), "$(A) $ $(A");
    }

    #[test]
    fn projection_honours_items() {
        let data: BTreeMap<String, Vec<u8>> = [
            ("tls.crt".to_string(), b"C".to_vec()),
            ("tls.key".to_string(), b"K".to_vec()),
        ]
        .into();
        let all = project_items(&data, None, false).unwrap();
        assert_eq!(all.len(), 2);
        let items = vec![KeyToPath {
            key: "tls.crt".into(),
            path: "certs/server.crt".into(),
            mode: None,
        }];
        let some = project_items(&data, Some(&items), false).unwrap();
        assert_eq!(
            some,
            vec![(PathBuf::from("certs/server.crt"), b"C".to_vec())]
        );
        let missing = vec![KeyToPath {
            key: "nope".into(),
            path: "x".into(),
            mode: None,
        }];
        assert!(project_items(&data, Some(&missing), false).is_err());
        assert!(
            project_items(&data, Some(&missing), true)
                .unwrap()
                .is_empty()
        );
        let evil = vec![KeyToPath {
            key: "tls.crt".into(),
            path: "../x".into(),
            mode: None,
        }];
        assert!(project_items(&data, Some(&evil), false).is_err());
    }
}
