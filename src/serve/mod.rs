//! The HTTP side of every instance: `/metrics` for Prometheus, `/health` and `/ready` for
//! orchestrators, `/reports/{name}` over ClickHouse, and the live feed (`/` the web page,
//! `/feed` its WebSocket; see [`crate::feed`]).

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
    clickhouse: Arc<crate::db::ClickHouseConfig>,
    feed: crate::feed::ws::FeedState,
}

impl axum::extract::FromRef<AppState> for crate::feed::ws::FeedState {
    fn from_ref(state: &AppState) -> Self {
        state.feed.clone()
    }
}

/// `GET /`: the live threat-feed page (compiled into the binary).
async fn page_handler(State(state): State<AppState>) -> Response {
    if state.feed.feed.is_none() {
        return (StatusCode::NOT_FOUND, "the live feed is disabled (feed.enabled = false)\n").into_response();
    }
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], include_str!("../feed/page.html")).into_response()
}

/// `GET /reports/{name}?tenant=&since=24h&from=&to=&limit=&format=json|csv`.
async fn report_handler(
    State(state): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    use crate::db::reports::{run, ReportError, ReportParams};
    let get = |k: &str| query.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let limit = match get("limit").map(str::parse::<u64>).transpose() {
        Ok(limit) => limit,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("limit: {e}\n")).into_response(),
    };
    let params = match ReportParams::parse(get("tenant"), get("since"), get("from"), get("to"), limit) {
        Ok(params) => params,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    match run(&state.clickhouse, &name, &params).await {
        Ok(table) if get("format") == Some("csv") => ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], table.to_csv()).into_response(),
        Ok(table) => axum::Json(table.to_json()).into_response(),
        Err(e @ ReportError::Unknown { .. }) => (StatusCode::NOT_FOUND, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
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
    clickhouse: crate::db::ClickHouseConfig,
    feed: Option<Arc<crate::feed::Feed>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let feed = crate::feed::ws::FeedState { feed, shutdown: shutdown.clone() };
    let router = Router::new()
        .route("/", get(page_handler))
        .route("/feed", get(crate::feed::ws::handler))
        .route("/metrics", get(metrics_handler))
        .route("/health", get(health_handler))
        .route("/ready", get(ready_handler))
        .route("/reports/{name}", get(report_handler))
        .with_state(AppState { telemetry, prometheus, clickhouse: Arc::new(clickhouse), feed });
    // No Nagle: a live-feed write must not wait for the client's (possibly delayed) ACK of
    // the previous one; the feed batches its writes itself (`feed.coalesce`).
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on an accepted connection");
        }
    });
    axum::serve(listener, router).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}
