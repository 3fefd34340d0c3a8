//! `GET /feed`: one WebSocket client of the live feed.
//!
//! Query: `token` (or `Authorization: Bearer`), `severity` (minimum), `rule` (comma-separated
//! rule ids), `since` (an alert id: first send what was missed after it). The token is
//! checked before the upgrade, so a refused client gets a plain 401 with the reason.
//!
//! Frames the server sends (JSON text): `hello` (tenant and filter), `alert`, `resumed`
//! (after the missed alerts: how many, and whether `since` was still held), `lagged` (this
//! client was too slow and skipped N alerts), `filter` (acknowledges a filter change),
//! `error`. A client may send `{"type":"filter","min_severity":"high","rules":[..]}`.
//! The server pings every `feed.ping_interval`; a client silent for `feed.idle_timeout` is
//! closed as dead. A slow client only ever delays itself (see [`super::hub`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

use super::auth::Grant;
use super::{Feed, Filter};
use crate::event::Severity;

/// Close code for a client disconnected by the `drop` slow-client policy.
pub const CLOSE_LAGGED: u16 = 4008;
/// Per-connection buffers (tungstenite's defaults are 128 KiB each).
const READ_BUFFER: usize = 4 * 1024;
const WRITE_BUFFER: usize = 16 * 1024;
/// The largest message a client may send (a filter command is well under 1 KiB).
const MAX_CLIENT_MESSAGE: usize = 16 * 1024;
/// Alerts written to a client before one flush, when it has a backlog.
const BATCH: usize = 64;

/// Parses `severity=` and `rule=` into a filter.
pub fn parse_filter(severity: Option<&str>, rules: Option<&str>) -> Result<Filter, String> {
    let min_severity = match severity.filter(|s| !s.is_empty()) {
        None => Severity::Informational,
        Some(s) => serde_json::from_value::<Severity>(serde_json::Value::String(s.to_ascii_lowercase()))
            .map_err(|_| format!("severity {s:?}: expected informational, low, medium, high or critical"))?,
    };
    let rules = rules.map(|r| r.split(',').map(str::trim).filter(|r| !r.is_empty()).map(String::from).collect()).unwrap_or_default();
    Ok(Filter { min_severity, rules })
}

/// What the endpoint is given by the router.
#[derive(Clone)]
pub struct FeedState {
    pub feed: Option<Arc<Feed>>,
    /// Cancelled at shutdown: every client is sent a close frame.
    pub shutdown: CancellationToken,
}

pub async fn handler(
    State(FeedState { feed, shutdown }): State<FeedState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let Some(feed) = feed else { return (StatusCode::NOT_FOUND, "the live feed is disabled (feed.enabled = false)\n").into_response() };
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let token = bearer.or(query.get("token").map(String::as_str));
    let grant = match feed.auth.authenticate(token, chrono::Utc::now().timestamp()) {
        Ok(grant) => grant,
        Err(error) => {
            metrics::counter!(crate::telemetry::names::FEED_REFUSED).increment(1);
            tracing::info!(%error, "live feed connection refused");
            return (StatusCode::UNAUTHORIZED, format!("{error}\n")).into_response();
        }
    };
    let filter = match parse_filter(query.get("severity").map(String::as_str), query.get("rule").map(String::as_str)) {
        Ok(filter) => filter,
        Err(error) => return (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response(),
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let since = query.get("since").filter(|s| !s.is_empty()).cloned();
    // Clients only send small commands: a small read buffer and a hard cap on what they may
    // send keep a thousand idle connections cheap and a hostile one bounded.
    let upgrade = upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE);
    upgrade.on_upgrade(move |socket| session(socket, feed, grant, filter, since, shutdown))
}

fn notice(value: serde_json::Value) -> Message {
    Message::Text(value.to_string().into())
}

async fn session(mut socket: WebSocket, feed: Arc<Feed>, grant: Grant, filter: Filter, since: Option<String>, shutdown: CancellationToken) {
    let mut subscription = feed.hub.register(&grant.tenant, filter.clone());
    tracing::debug!(tenant = %grant.tenant, subject = %grant.subject, "live feed client connected");
    let hello = notice(serde_json::json!({"type": "hello", "tenant": grant.tenant, "filter": filter}));
    if socket.send(hello).await.is_err() {
        return;
    }
    // Registered before reading the backlog, so nothing falls between the two; an alert in
    // both is sent once.
    let mut replayed: HashSet<(String, i64)> = HashSet::new();
    if let Some(since) = since {
        match feed.missed_since(&since, &grant.tenant).await {
            Ok((items, found)) => {
                let mut sent = 0usize;
                for item in items.iter().filter(|i| filter.admits(i)) {
                    replayed.insert((item.id.clone(), item.count));
                    if socket.send(Message::Text(item.frame.clone())).await.is_err() {
                        return;
                    }
                    sent += 1;
                }
                let resumed = notice(serde_json::json!({"type": "resumed", "since": since, "found": found, "replayed": sent}));
                if socket.send(resumed).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "live feed: cannot serve a resume");
                let message = notice(serde_json::json!({"type": "error", "message": format!("cannot resume: {error}")}));
                if socket.send(message).await.is_err() {
                    return;
                }
            }
        }
    }
    let mut ping = tokio::time::interval(feed.config.ping_interval);
    ping.tick().await;
    let mut last_heard = Instant::now();
    let close = |code: u16, reason: &'static str| Message::Close(Some(CloseFrame { code, reason: reason.into() }));
    // Made once, not per pass of the loop: a fresh `cancelled()` future registers with the
    // token under its lock each time it is polled first, and the loop passes once per alert.
    let shutting_down = shutdown.cancelled();
    let dropped = subscription.slot.dropped.clone();
    let lagged_out = dropped.cancelled();
    tokio::pin!(shutting_down, lagged_out);
    let mut last_write: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = &mut shutting_down => {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), socket.send(close(1001, "server shutting down"))).await;
                break;
            }
            _ = &mut lagged_out => {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), socket.send(close(CLOSE_LAGGED, "lagged: too slow; reconnect with since=<last alert id>"))).await;
                break;
            }
            item = subscription.queue.recv() => {
                let Some(item) = item else { break };
                // Whatever else is queued goes out with it, under one flush (one write
                // syscall instead of one per alert when the client has a backlog). With
                // `feed.coalesce`, as Nagle's algorithm does for packets: an alert after a
                // quiet spell goes at once, one within the window of the last write waits
                // for the window's end and goes with whatever else came by then.
                let mut batch = vec![item];
                take_queued(&mut subscription.queue, &mut batch);
                let coalescing = feed.hub.client_count() >= feed.config.coalesce_min_clients;
                if let Some(due) = last_write.filter(|_| coalescing).map(|at| at + feed.config.coalesce) {
                    if batch.len() < BATCH && due > tokio::time::Instant::now() {
                        tokio::time::sleep_until(due).await;
                        take_queued(&mut subscription.queue, &mut batch);
                    }
                }
                let skipped = subscription.slot.take_skipped();
                let mut frames = Vec::with_capacity(batch.len() + 1);
                if skipped > 0 {
                    frames.push(notice(serde_json::json!({"type": "lagged", "skipped": skipped})));
                }
                for item in batch {
                    if !replayed.is_empty() && replayed.remove(&(item.id.clone(), item.count)) {
                        continue;
                    }
                    frames.push(Message::Text(item.frame.clone()));
                }
                if send_all(&mut socket, frames).await.is_err() {
                    break;
                }
                metrics::counter!(crate::telemetry::names::FEED_WRITES).increment(1);
                last_write = Some(tokio::time::Instant::now());
            }
            message = socket.recv() => {
                last_heard = Instant::now();
                match message {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Text(text))) => {
                        let reply = command(&text, &subscription.slot);
                        if socket.send(notice(reply)).await.is_err() {
                            break;
                        }
                    }
                    // Pings are answered by the library; pongs and binary frames only
                    // prove the peer is alive.
                    Some(Ok(_)) => {}
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > feed.config.idle_timeout {
                    tracing::info!(tenant = %grant.tenant, "live feed client silent past feed.idle_timeout; closing");
                    metrics::counter!(crate::telemetry::names::FEED_DEAD_CLIENTS).increment(1);
                    break;
                }
                let skipped = subscription.slot.take_skipped();
                if skipped > 0 && socket.send(notice(serde_json::json!({"type": "lagged", "skipped": skipped}))).await.is_err() {
                    break;
                }
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Moves queued alerts into `batch`, up to [`BATCH`].
fn take_queued(queue: &mut tokio::sync::mpsc::Receiver<Arc<super::hub::FeedItem>>, batch: &mut Vec<Arc<super::hub::FeedItem>>) {
    while batch.len() < BATCH {
        match queue.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
}

/// Writes `frames` and flushes once.
async fn send_all(socket: &mut WebSocket, frames: Vec<Message>) -> Result<(), axum::Error> {
    use futures::SinkExt;
    for frame in frames {
        socket.feed(frame).await?;
    }
    socket.flush().await
}

/// A message from the client: a filter change.
fn command(text: &str, slot: &super::hub::ClientSlot) -> serde_json::Value {
    #[derive(serde::Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Command {
        Filter {
            #[serde(default)]
            min_severity: Option<String>,
            #[serde(default)]
            rules: Vec<String>,
        },
    }
    match serde_json::from_str::<Command>(text) {
        Ok(Command::Filter { min_severity, rules }) => match parse_filter(min_severity.as_deref(), Some(&rules.join(","))) {
            Ok(filter) => {
                slot.set_filter(filter.clone());
                serde_json::json!({"type": "filter", "filter": filter})
            }
            Err(message) => serde_json::json!({"type": "error", "message": message}),
        },
        Err(e) => serde_json::json!({"type": "error", "message": format!("unknown command: {e} (expected {{\"type\":\"filter\",\"min_severity\":..,\"rules\":[..]}})")}),
    }
}
