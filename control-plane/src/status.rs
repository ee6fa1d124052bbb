//! Status a person can read: one document per object (status as the
//! translator computed it, plus problems found in the input), written to a
//! folder and served by the admin endpoint.

use crate::source::{ObjectId, Problem, Snapshot};
use anyhow::Context as _;
use gatewright_translator::{ObjectKey, Statuses};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// The status of one object.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ObjectStatus {
    /// Which object.
    #[serde(flatten)]
    pub id: ObjectId,
    /// `file:line` it was read from, if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The status stanza as it would be written to the API server.
    pub status: Value,
    /// Problems with this object's input.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// Collects the status of every object the translator has an opinion on,
/// and of every object with a problem.
pub fn collect(
    statuses: &Statuses,
    snapshot: &Snapshot,
    previous: &BTreeMap<ObjectId, ObjectStatus>,
) -> BTreeMap<ObjectId, ObjectStatus> {
    let mut out = BTreeMap::new();
    let s = statuses;
    let id = |kind: &str, key: &ObjectKey| ObjectId {
        group: GATEWAY_GROUP.to_owned(),
        kind: kind.to_owned(),
        namespace: key.namespace.clone(),
        name: key.name.clone(),
    };
    let mut put = |id: ObjectId, status: Value| {
        let source = snapshot.objects.get(&id).map(ToString::to_string);
        out.insert(
            id.clone(),
            ObjectStatus {
                id,
                source,
                status,
                problems: Vec::new(),
            },
        );
    };
    let to_value = |v: Result<Value, serde_json::Error>| v.unwrap_or(Value::Null);
    for (name, status) in &s.gateway_classes {
        put(
            id("GatewayClass", &ObjectKey::new("", name.clone())),
            to_value(serde_json::to_value(status)),
        );
    }
    for (key, status) in &s.gateways {
        put(id("Gateway", key), to_value(serde_json::to_value(status)));
    }
    for (key, status) in &s.listener_sets {
        put(
            id("ListenerSet", key),
            to_value(serde_json::to_value(status)),
        );
    }
    for (key, status) in &s.http_routes {
        put(id("HTTPRoute", key), to_value(serde_json::to_value(status)));
    }
    for (key, status) in &s.grpc_routes {
        put(id("GRPCRoute", key), to_value(serde_json::to_value(status)));
    }
    for (key, status) in &s.tls_routes {
        put(id("TLSRoute", key), to_value(serde_json::to_value(status)));
    }
    for (key, status) in &s.tcp_routes {
        put(id("TCPRoute", key), to_value(serde_json::to_value(status)));
    }
    for (key, status) in &s.udp_routes {
        put(id("UDPRoute", key), to_value(serde_json::to_value(status)));
    }
    for (key, status) in &s.backend_tls_policies {
        put(
            id("BackendTLSPolicy", key),
            to_value(serde_json::to_value(status)),
        );
    }
    for problem in &snapshot.problems {
        let Some(object) = problem.object.as_ref().filter(|o| has_status(o)) else {
            continue;
        };
        let entry = out.entry(object.clone()).or_insert_with(|| ObjectStatus {
            id: object.clone(),
            source: Some(problem.location.clone()),
            // Nothing of this object was accepted: say so where a reader
            // looks first.
            status: json!({ "conditions": [{
                "type": "Accepted",
                "status": "False",
                "reason": "Invalid",
                "message": problem.message,
            }]}),
            problems: Vec::new(),
        });
        entry
            .problems
            .push(format!("{}: {}", problem.location, problem.message));
    }
    for (id, status) in &mut out {
        if let Some(old) = previous.get(id) {
            keep_transition_times(&mut status.status, &old.status);
        }
    }
    out
}

/// Carries `lastTransitionTime` over from `old` to every condition in `new`
/// whose status did not change, so that re-translating unchanged input
/// leaves status unchanged. Conditions are matched by `type`; list items
/// (listeners, route parents, policy ancestors) by `name`, `parentRef` or
/// `ancestorRef`.
pub fn keep_transition_times(new: &mut Value, old: &Value) {
    match (new, old) {
        (Value::Object(n), Value::Object(o)) => {
            if n.contains_key("type") && n.contains_key("lastTransitionTime") {
                if n.get("status") == o.get("status")
                    && let Some(t) = o.get("lastTransitionTime")
                {
                    n.insert("lastTransitionTime".into(), t.clone());
                }
                return;
            }
            for (key, value) in n.iter_mut() {
                if let Some(old_value) = o.get(key) {
                    keep_transition_times(value, old_value);
                }
            }
        }
        (Value::Array(n), Value::Array(o)) => {
            for item in n.iter_mut() {
                let same = |candidate: &&Value| {
                    ["type", "name", "parentRef", "ancestorRef"]
                        .iter()
                        .find_map(|k| Some(item.get(*k)? == candidate.get(*k)?))
                        .unwrap_or(false)
                };
                if let Some(old_item) = o.iter().find(same) {
                    keep_transition_times(item, old_item);
                }
            }
        }
        _ => {}
    }
}

/// The path of an object's status file under `dir`.
pub fn file_of(dir: &Path, id: &ObjectId) -> PathBuf {
    let kind = dir.join(&id.kind);
    let folder = if id.namespace.is_empty() {
        kind
    } else {
        kind.join(&id.namespace)
    };
    folder.join(format!("{}.yaml", id.name))
}

/// Writes status files, touching only those whose content changed and
/// removing those of objects that are gone.
#[derive(Debug)]
pub struct StatusWriter {
    dir: PathBuf,
    written: BTreeMap<PathBuf, String>,
}

impl StatusWriter {
    /// A writer into `dir` (created on first write).
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            written: BTreeMap::new(),
        }
    }

    /// Brings the folder in line with `statuses`.
    pub fn write(&mut self, statuses: &BTreeMap<ObjectId, ObjectStatus>) -> anyhow::Result<()> {
        let mut next = BTreeMap::new();
        for (id, status) in statuses {
            let api_version = if id.group.is_empty() {
                "v1".to_owned()
            } else {
                format!("{}/v1", id.group)
            };
            let mut metadata = serde_json::Map::new();
            metadata.insert("name".into(), json!(id.name));
            if !id.namespace.is_empty() {
                metadata.insert("namespace".into(), json!(id.namespace));
            }
            let mut doc = json!({
                "apiVersion": api_version,
                "kind": id.kind,
                "metadata": metadata,
                "status": status.status,
            });
            if let Some(source) = &status.source {
                doc["source"] = json!(source);
            }
            if !status.problems.is_empty() {
                doc["problems"] = json!(status.problems);
            }
            let text = serde_yaml::to_string(&doc).context("encoding status as YAML")?;
            next.insert(file_of(&self.dir, id), text);
        }
        for (path, text) in &next {
            if self.written.get(path) == Some(text) {
                continue;
            }
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            let tmp = path.with_extension("yaml.tmp");
            std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))?;
        }
        for path in self.written.keys() {
            if !next.contains_key(path) {
                let _ = std::fs::remove_file(path);
            }
        }
        self.written = next;
        Ok(())
    }
}

/// Whether objects of this kind get a status document: the Gateway API
/// kinds with a status. Problems with other objects (a Service, an unknown
/// kind) are listed on their own.
fn has_status(id: &ObjectId) -> bool {
    id.group == GATEWAY_GROUP
        && matches!(
            id.kind.as_str(),
            "GatewayClass"
                | "Gateway"
                | "ListenerSet"
                | "HTTPRoute"
                | "GRPCRoute"
                | "TLSRoute"
                | "TCPRoute"
                | "UDPRoute"
                | "BackendTLSPolicy"
        )
}

/// Problems not shown in any object's status, for `/debug/status`.
pub fn loose_problems(problems: &[Problem]) -> Vec<String> {
    problems
        .iter()
        .filter(|p| !p.object.as_ref().is_some_and(has_status))
        .map(ToString::to_string)
        .collect()
}

/// Prints `/debug/status` JSON for a person: Envoys, then every object
/// with its conditions (those not in their good state in full).
pub fn print_human(status: &Value, out: &mut impl std::fmt::Write) -> std::fmt::Result {
    writeln!(
        out,
        "ready: {}",
        status
            .get("ready")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    )?;
    let empty = Vec::new();
    let list = |key: &str| status.get(key).and_then(Value::as_array).unwrap_or(&empty);
    writeln!(out, "\nENVOYS")?;
    for e in list("envoys") {
        let s = |k: &str| {
            e.get(k)
                .map_or(String::new(), |v| v.to_string().replace('"', ""))
        };
        writeln!(
            out,
            "  {}  address={} pid={} live={} restarts={} log={}",
            s("gateway"),
            s("address"),
            s("pid"),
            s("live"),
            s("restarts"),
            s("log")
        )?;
        for nack in e.get("nacks").and_then(Value::as_array).unwrap_or(&empty) {
            writeln!(out, "    NACK: {nack}")?;
        }
    }
    writeln!(out, "\nOBJECTS")?;
    for o in list("objects") {
        let s = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or("");
        let name = if s("namespace").is_empty() {
            s("name").to_owned()
        } else {
            format!("{}/{}", s("namespace"), s("name"))
        };
        writeln!(out, "  {} {}  ({})", s("kind"), name, s("source"))?;
        let st = o.get("status").unwrap_or(&Value::Null);
        print_conditions(out, "    ", st.get("conditions"))?;
        for l in st
            .get("listeners")
            .and_then(Value::as_array)
            .unwrap_or(&empty)
        {
            let name = l.get("name").and_then(Value::as_str).unwrap_or("?");
            let attached = l.get("attachedRoutes").and_then(Value::as_i64).unwrap_or(0);
            writeln!(out, "    listener {name}: {attached} route(s)")?;
            print_conditions(out, "      ", l.get("conditions"))?;
        }
        for p in st
            .get("parents")
            .and_then(Value::as_array)
            .unwrap_or(&empty)
        {
            let r = p.get("parentRef").unwrap_or(&Value::Null);
            let f = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("");
            let section = match f("sectionName") {
                "" => String::new(),
                s => format!(" section {s}"),
            };
            writeln!(out, "    parent {}/{}{section}", f("namespace"), f("name"))?;
            print_conditions(out, "      ", p.get("conditions"))?;
        }
        for problem in o
            .get("problems")
            .and_then(Value::as_array)
            .unwrap_or(&empty)
        {
            writeln!(out, "    problem: {}", problem.as_str().unwrap_or(""))?;
        }
    }
    let loose = list("problems");
    if !loose.is_empty() {
        writeln!(out, "\nPROBLEMS")?;
        for p in loose {
            writeln!(out, "  {}", p.as_str().unwrap_or(""))?;
        }
    }
    Ok(())
}

fn print_conditions(
    out: &mut impl std::fmt::Write,
    indent: &str,
    conditions: Option<&Value>,
) -> std::fmt::Result {
    for c in conditions.and_then(Value::as_array).into_iter().flatten() {
        let f = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("");
        // Conditions whose good state is False.
        let good = if matches!(f("type"), "Conflicted" | "OverlappingTLSConfig") {
            "False"
        } else {
            "True"
        };
        if f("status") == good {
            write!(out, "{indent}{}={}", f("type"), f("status"))?;
            writeln!(out)?;
        } else {
            writeln!(
                out,
                "{indent}{}={} ({}): {}",
                f("type"),
                f("status"),
                f("reason"),
                f("message")
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_conditions_keep_their_transition_time() {
        let old = json!({"listeners": [{"name": "a", "conditions": [
            {"type": "Programmed", "status": "True", "lastTransitionTime": "T1"},
            {"type": "Accepted", "status": "True", "lastTransitionTime": "T1"}]}]});
        let mut new = json!({"listeners": [{"name": "a", "conditions": [
            {"type": "Accepted", "status": "True", "lastTransitionTime": "T2"},
            {"type": "Programmed", "status": "False", "lastTransitionTime": "T2"}]}]});
        keep_transition_times(&mut new, &old);
        let c = &new["listeners"][0]["conditions"];
        assert_eq!(c[0]["lastTransitionTime"], "T1");
        assert_eq!(c[1]["lastTransitionTime"], "T2");
    }
}
