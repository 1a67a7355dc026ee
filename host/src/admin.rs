//! The admin HTTP endpoint on the metrics port: `/metrics` (Prometheus), `/plugins` (status
//! JSON), `/healthz` (the process answers) and `/readyz` (serving, as gRPC health "").

use std::sync::Arc;

use axum::{extract::State, routing::get, Json, Router};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::Host;

async fn plugins(State(host): State<Arc<Host>>) -> Json<Value> {
    let files: Vec<_> = host.statuses.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
    let draining: Vec<_> = host
        .draining
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(plugin, version, generation, in_flight)| json!({"plugin": plugin, "version": version, "generation": generation, "in_flight": in_flight}))
        .collect();
    // Each serving version's own runtime (ABI 1.1; null for plugins built for 1.0).
    let serving: Vec<_> = host
        .service
        .registry
        .snapshot()
        .plugins
        .iter()
        .map(|p| {
            let runtime = p.runtime_stats().map(|r| json!({"alive_tasks": r.alive_tasks, "workers": r.workers}));
            json!({"plugin": p.name(), "version": p.version(), "abi": p.abi(), "generation": p.generation, "in_flight": p.in_flight(), "runtime": runtime})
        })
        .collect();
    Json(json!({
        "plugin_dir": host.config.loader.plugin_dir,
        "mapped_libraries": host.loader.mapped_libraries(),
        "max_libraries": host.config.loader.max_libraries,
        "files": files,
        "serving": serving,
        "draining": draining,
        "leaked": *host.leaked.lock().unwrap_or_else(|p| p.into_inner()),
        "watch": *host.watch.lock().unwrap_or_else(|p| p.into_inner()),
    }))
}

async fn metrics(State(host): State<Arc<Host>>) -> ([(http::header::HeaderName, &'static str); 1], String) {
    let text = host.service.metrics.render(&host.gauges());
    ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
}

/// 200 once the first plugin scan is done and until shutdown starts; 503 otherwise (the same
/// answer as gRPC health for "").
async fn readyz(State(host): State<Arc<Host>>) -> (http::StatusCode, &'static str) {
    if host.ready.load(std::sync::atomic::Ordering::SeqCst) {
        (http::StatusCode::OK, "ready\n")
    } else {
        (http::StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Serves the admin endpoints on `listener`.
pub async fn serve(host: Arc<Host>, listener: TcpListener) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/plugins", get(plugins))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(host);
    axum::serve(listener, app).await
}
