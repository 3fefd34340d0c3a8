//! The HTTP side of every instance: `/metrics` for Prometheus, `/health` and `/ready` for
//! orchestrators. Later issues add the live feed and reports to the same router.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::telemetry::{StageState, Telemetry};

#[derive(Clone)]
struct AppState {
    telemetry: Telemetry,
    prometheus: Option<Arc<PrometheusHandle>>,
}

async fn metrics_handler(State(state): State<AppState>) -> Response {
    state.telemetry.publish();
    match &state.prometheus {
        Some(handle) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "metrics recorder not installed\n").into_response(),
    }
}

fn stage_report(telemetry: &Telemetry) -> (bool, serde_json::Value) {
    let stages: Vec<serde_json::Value> = telemetry
        .stages
        .iter()
        .map(|s| serde_json::json!({"stage": s.stage.as_str(), "state": s.state().as_str()}))
        .collect();
    let all_running = telemetry.stages.iter().all(|s| s.state() == StageState::Running);
    (all_running, serde_json::Value::Array(stages))
}

/// Liveness: 200 unless a stage failed.
async fn health_handler(State(state): State<AppState>) -> Response {
    let (_, stages) = stage_report(&state.telemetry);
    let failed = state.telemetry.stages.iter().any(|s| s.state() == StageState::Failed);
    let status = if failed { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    let body = serde_json::json!({"status": if failed { "failed" } else { "ok" }, "stages": stages});
    (status, axum::Json(body)).into_response()
}

/// Readiness: 200 once every stage of this instance is running.
async fn ready_handler(State(state): State<AppState>) -> Response {
    let (ready, stages) = stage_report(&state.telemetry);
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(serde_json::json!({"ready": ready, "stages": stages}))).into_response()
}

/// Binds `listener` and serves until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    telemetry: Telemetry,
    prometheus: Option<Arc<PrometheusHandle>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/health", get(health_handler))
        .route("/ready", get(ready_handler))
        .with_state(AppState { telemetry, prometheus });
    axum::serve(listener, router).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}
