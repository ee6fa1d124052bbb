//! A small dynamic client for the tests: apply YAML (server-side apply),
//! read objects as JSON, write status, delete; kinds are resolved through
//! API discovery (cached), so any kind the API server serves works,
//! custom resources included.

use std::collections::HashMap;
use std::path::Path;

use kube::api::{
    Api, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::discovery::{ApiResource, Scope};
use serde::Deserialize as _;
use serde_json::Value;

use super::cluster::FIELD_MANAGER;

/// A client plus a cache of discovered kinds.
pub struct Kube {
    pub client: kube::Client,
    kinds: tokio::sync::Mutex<HashMap<(String, String), (ApiResource, bool)>>,
}

/// Formats a kube error: API errors as `CODE Reason: message`.
pub fn kube_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
        other => other.to_string(),
    }
}

/// Whether `e` is an API error with this HTTP code.
pub fn is_code(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Splits `group/version` (or `version` of the core group).
fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

/// Every non-empty document of a multi-document YAML text, as JSON.
pub fn yaml_docs(text: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(doc).map_err(|e| format!("YAML document {}: {e}", i + 1))?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

impl Kube {
    /// A client for the kubeconfig at `path` (its current context).
    pub async fn from_kubeconfig(path: &Path) -> Result<Self, String> {
        let kc = kube::config::Kubeconfig::read_from(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .map_err(|e| format!("loading {}: {e}", path.display()))?;
        let client = kube::Client::try_from(config)
            .map_err(|e| format!("making a client from {}: {e}", path.display()))?;
        Ok(Self {
            client,
            kinds: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// GET /readyz: Ok once it answers 200.
    pub async fn readyz(&self) -> Result<(), String> {
        let req = hyper::Request::get("/readyz")
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        self.client
            .request_text(req)
            .await
            .map(|_| ())
            .map_err(|e| kube_error(&e))
    }

    /// The API resource of a kind and whether it is namespaced.
    pub async fn resource(
        &self,
        api_version: &str,
        kind: &str,
    ) -> Result<(ApiResource, bool), String> {
        let key = (api_version.to_string(), kind.to_string());
        if let Some(hit) = self.kinds.lock().await.get(&key) {
            return Ok(hit.clone());
        }
        let (group, version) = split_api_version(api_version);
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (ar, caps) = kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .map_err(|e| format!("discovering {api_version} {kind}: {}", kube_error(&e)))?;
        let found = (ar, caps.scope == Scope::Namespaced);
        self.kinds.lock().await.insert(key, found.clone());
        Ok(found)
    }

    /// An API for a kind, in `ns` when it is namespaced (`default` if
    /// `ns` is `None`).
    pub async fn api(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
    ) -> Result<Api<DynamicObject>, String> {
        let (ar, namespaced) = self.resource(api_version, kind).await?;
        Ok(if namespaced {
            Api::namespaced_with(self.client.clone(), ns.unwrap_or("default"), &ar)
        } else {
            Api::all_with(self.client.clone(), &ar)
        })
    }

    /// Server-side applies every document of `yaml` (forcing ownership of
    /// conflicting fields), in order.
    pub async fn apply(&self, yaml: &str) -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        for doc in yaml_docs(yaml)? {
            out.push(self.apply_value(&doc).await?);
        }
        Ok(out)
    }

    /// Server-side applies one object.
    pub async fn apply_value(&self, doc: &Value) -> Result<Value, String> {
        let (Some(api_version), Some(kind), Some(name)) = (
            str_at(doc, "/apiVersion"),
            str_at(doc, "/kind"),
            str_at(doc, "/metadata/name"),
        ) else {
            return Err(format!(
                "an object without apiVersion, kind or metadata.name: {}",
                clip(&doc.to_string(), 200)
            ));
        };
        let ns = str_at(doc, "/metadata/namespace");
        let api = self.api(api_version, kind, ns).await?;
        let obj = api
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(doc),
            )
            .await
            .map_err(|e| {
                format!(
                    "applying {kind} {}{name}: {}",
                    ns_prefix(ns),
                    kube_error(&e)
                )
            })?;
        serde_json::to_value(obj).map_err(|e| e.to_string())
    }

    /// The object as JSON, `None` if it does not exist.
    pub async fn get(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, String> {
        let api = self.api(api_version, kind, ns).await?;
        let obj = api
            .get_opt(name)
            .await
            .map_err(|e| format!("getting {kind} {}{name}: {}", ns_prefix(ns), kube_error(&e)))?;
        obj.map(|o| serde_json::to_value(o).map_err(|e| e.to_string()))
            .transpose()
    }

    /// Every object of a kind in `ns` (`default` for `None` on a
    /// namespaced kind).
    pub async fn list(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
    ) -> Result<Vec<Value>, String> {
        let api = self.api(api_version, kind, ns).await?;
        let list = api.list(&Default::default()).await.map_err(|e| {
            format!(
                "listing {kind} in {}: {}",
                ns.unwrap_or("(cluster)"),
                kube_error(&e)
            )
        })?;
        list.items
            .into_iter()
            .map(|o| serde_json::to_value(o).map_err(|e| e.to_string()))
            .collect()
    }

    /// Deletes an object (background propagation); Ok if it is not there.
    pub async fn delete(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Result<(), String> {
        let api = self.api(api_version, kind, ns).await?;
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(e) if is_code(&e, 404) => Ok(()),
            Err(e) => Err(format!(
                "deleting {kind} {}{name}: {}",
                ns_prefix(ns),
                kube_error(&e)
            )),
        }
    }

    /// Replaces the status of `obj` (a full object as read, with its
    /// resourceVersion, so that a concurrent write makes this fail with 409
    /// Conflict instead of being overwritten). Returns the written object.
    pub async fn replace_status(&self, obj: &Value) -> Result<Value, kube::Error> {
        let api_version = str_at(obj, "/apiVersion").unwrap_or_default();
        let kind = str_at(obj, "/kind").unwrap_or_default();
        let name = str_at(obj, "/metadata/name").unwrap_or_default();
        let ns = str_at(obj, "/metadata/namespace");
        let api = self
            .api(api_version, kind, ns)
            .await
            .map_err(|e| kube::Error::Service(e.into()))?;
        let data: DynamicObject =
            serde_json::from_value(obj.clone()).map_err(kube::Error::SerdeError)?;
        let written = api
            .replace_status(name, &PostParams::default(), &data)
            .await?;
        serde_json::to_value(written).map_err(kube::Error::SerdeError)
    }
}

fn ns_prefix(ns: Option<&str>) -> String {
    ns.map(|n| format!("{n}/")).unwrap_or_default()
}

/// At most `n` characters of `s`.
pub fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(n).collect();
        out.push('…');
        out
    }
}
