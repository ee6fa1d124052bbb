//! The admin HTTP server: health, readiness, metrics, status and the
//! Envoy configuration served to each Gateway.

use crate::metrics::{Envoys, Metrics};
use crate::source::ObjectId;
use crate::status::ObjectStatus;
use crate::xds::group_of;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use gatewright_translator::Output;
use gatewright_xds::Cache;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

/// What the last translation produced.
#[derive(Debug, Default)]
pub struct View {
    /// Whether a translation has been published yet.
    pub applied: bool,
    /// The translator's output.
    pub output: Arc<Output>,
    /// Status of every object.
    pub statuses: BTreeMap<ObjectId, ObjectStatus>,
    /// Problems that name no object.
    pub loose_problems: Vec<String>,
}

/// State shared by the run loop and the admin server.
#[derive(Debug)]
pub struct Shared {
    /// The xDS cache.
    pub cache: Cache,
    /// Metrics.
    pub metrics: Metrics,
    /// The managed Envoys.
    pub envoys: Envoys,
    /// The last translation.
    pub view: RwLock<Arc<View>>,
    /// Whether this replica leads, when replicas elect a leader.
    pub leader: Option<watch::Receiver<bool>>,
    /// Envoys run elsewhere (Kubernetes Deployments), so readiness does not
    /// wait for local ones.
    pub remote_envoys: bool,
}

impl Shared {
    /// The last published view.
    pub fn view(&self) -> Arc<View> {
        Arc::clone(
            &self
                .view
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Replaces the published view.
    pub fn publish(&self, view: View) {
        *self
            .view
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(view);
    }

    /// Ready once a translation is published and every Gateway's Envoy has
    /// told its admin interface it is LIVE (it has its first configuration).
    pub fn ready(&self) -> bool {
        let view = self.view();
        if !view.applied {
            return false;
        }
        let envoys = self
            .envoys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.remote_envoys {
            return true;
        }
        view.output.gateways.keys().all(|key| {
            envoys
                .get(key)
                .is_some_and(|e| e.live.load(Ordering::Relaxed))
        })
    }

    /// `/debug/status` as JSON.
    pub fn status_json(&self) -> Value {
        let view = self.view();
        let envoys: Vec<Value> = {
            let envoys = self
                .envoys
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            envoys
                .iter()
                .map(|(key, e)| {
                    let group = group_of(key);
                    let nacks: Vec<Value> = self
                        .cache
                        .nacks(&group)
                        .into_iter()
                        .map(|n| json!({"type": n.type_url, "version": n.version, "message": n.message}))
                        .collect();
                    json!({
                        "gateway": group,
                        "address": e.address.to_string(),
                        "pid": e.pid.load(Ordering::Relaxed),
                        "live": e.live.load(Ordering::Relaxed),
                        "restarts": e.restarts.load(Ordering::Relaxed),
                        "adopted": e.adopted.load(Ordering::Relaxed),
                        "admin": e.admin_address().map(|a| a.to_string()),
                        "log": e.log.display().to_string(),
                        "nacks": nacks,
                    })
                })
                .collect()
        };
        let mut out = json!({
            "ready": self.ready(),
            "envoys": envoys,
            "objects": view.statuses.values().collect::<Vec<_>>(),
            "problems": view.loose_problems,
        });
        if let Some(leader) = &self.leader {
            out["leader"] = json!(*leader.borrow());
        }
        out
    }
}

/// The admin router.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/debug/status", get(status))
        .route("/debug/config_dump", get(config_dump))
        .with_state(shared)
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    match shared.metrics.render() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response(),
    }
}

async fn status(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(shared.status_json())
}

#[derive(serde::Deserialize)]
struct DumpQuery {
    gateway: Option<String>,
}

async fn config_dump(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<DumpQuery>,
) -> Response {
    let view = shared.view();
    let names: Vec<String> = view.output.gateways.keys().map(group_of).collect();
    let Some(wanted) = query.gateway else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "give ?gateway=NAMESPACE/NAME", "gateways": names})),
        )
            .into_response();
    };
    let Some((key, resources)) = view
        .output
        .gateways
        .iter()
        .find(|(key, _)| group_of(key) == wanted)
    else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no programmed Gateway {wanted}"), "gateways": names})),
        )
            .into_response();
    };
    // The translator only emits types the embedded descriptor pool knows, so
    // this fails only on a bug; answer 500 rather than panic the handler.
    let mut dump = match gatewright_render::try_render_gateway(resources) {
        Ok(dump) => dump,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": format!("cannot render {wanted}: {e}")})),
            )
                .into_response();
        }
    };
    // The admin port may be reachable from beyond the host (a pod's port):
    // private keys never leave through it.
    gatewright_render::redact_private_keys(&mut dump);
    if let Value::Object(map) = &mut dump {
        map.insert("gateway".into(), json!(group_of(key)));
        let nacks: Vec<Value> = shared
            .cache
            .nacks(&group_of(key))
            .into_iter()
            .map(|n| json!({"type": n.type_url, "version": n.version, "message": n.message}))
            .collect();
        map.insert("nacks".into(), json!(nacks));
    }
    Json(dump).into_response()
}

/// Serves the admin HTTP API on `listener` until `stop` turns true.
pub fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let router = router(shared);
    tokio::spawn(async move {
        let result = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!("admin server failed: {e}");
        }
    })
}
