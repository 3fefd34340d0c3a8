//! Alerts from Redis into this instance's hub: the pub/sub channel for live delivery, the
//! bounded stream for what a client (or this subscriber, after a Redis outage) missed.
//!
//! The subscriber is a plain thread on a blocking connection with a short read timeout, so
//! it notices shutdown promptly and never occupies a runtime worker. When the connection
//! breaks it reconnects with backoff and replays from the stream everything after the last
//! alert it delivered, so a Redis blip does not silently cost the live clients alerts.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::auth::ALL_TENANTS;
use super::{FeedHub, FeedItem};

/// Entries read per XREVRANGE page while looking for a resume point.
const PAGE: usize = 1000;

/// The alerts of `tenant` on `stream` that a client which saw everything up to the newest
/// entry with alert id `since` has not seen (oldest first), and whether `since` was found
/// (if not, every entry the stream holds). A replayed alert stage appends an (id, count)
/// again; such a copy is sent only if the client cannot have seen it, and once.
pub fn stream_since(client: &redis::Client, stream: &str, since: &str, tenant: &str) -> Result<(Vec<Arc<FeedItem>>, bool), String> {
    let mut c = client.get_connection_with_timeout(Duration::from_secs(2)).map_err(|e| e.to_string())?;
    // The whole stream (it is bounded by the alert stage's MAXLEN), oldest first.
    let mut entries: Vec<FeedItem> = Vec::new();
    let mut start = "-".to_string();
    loop {
        let page: Vec<(String, Vec<String>)> =
            redis::cmd("XRANGE").arg(stream).arg(&start).arg("+").arg("COUNT").arg(PAGE).query(&mut c).map_err(|e| e.to_string())?;
        let Some((last_entry, _)) = page.last() else { break };
        start = format!("({last_entry}");
        let full = page.len() == PAGE;
        // fields: ["alert", json]
        entries.extend(page.iter().filter_map(|(_, fields)| FeedItem::from_alert_json(fields.get(1)?).ok()));
        if !full {
            break;
        }
    }
    let found = entries.iter().rposition(|item| item.id == since);
    let mut seen: HashSet<(String, i64)> = match found {
        Some(p) => entries[..=p].iter().map(|i| (i.id.clone(), i.count)).collect(),
        None => HashSet::new(),
    };
    let missed = entries
        .into_iter()
        .skip(found.map_or(0, |p| p + 1))
        .filter(|item| tenant == ALL_TENANTS || item.tenant == tenant)
        .filter(|item| seen.insert((item.id.clone(), item.count)))
        .map(Arc::new)
        .collect();
    Ok((missed, found.is_some()))
}

/// Subscribes to `channel` and publishes every alert on it to `hub` until `stop`.
pub fn spawn_subscriber(client: redis::Client, url: String, channel: String, stream: String, hub: Arc<FeedHub>, stop: CancellationToken) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("feed-redis".into())
        .spawn(move || subscribe_loop(&client, &url, &channel, &stream, &hub, &stop))
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot start the live feed's Redis subscriber thread");
            std::thread::spawn(|| {})
        })
}

fn subscribe_loop(client: &redis::Client, url: &str, channel: &str, stream: &str, hub: &FeedHub, stop: &CancellationToken) {
    let mut last_delivered: Option<String> = None;
    let mut backoff = Duration::from_millis(100);
    let mut failing = false;
    while !stop.is_cancelled() {
        let result = (|| -> redis::RedisResult<()> {
            let mut connection = client.get_connection_with_timeout(Duration::from_secs(2))?;
            let mut pubsub = connection.as_pubsub();
            pubsub.set_read_timeout(Some(Duration::from_millis(250)))?;
            pubsub.subscribe(channel)?;
            if failing {
                tracing::info!(url, "live feed: Redis is back");
                failing = false;
            }
            backoff = Duration::from_millis(100);
            // What was published while this subscriber was away (subscribed first, so
            // nothing falls between; what arrives twice is skipped once).
            let mut replayed: HashSet<(String, i64)> = HashSet::new();
            if let Some(since) = &last_delivered {
                match stream_since(client, stream, since, ALL_TENANTS) {
                    Ok((items, _)) => {
                        if !items.is_empty() {
                            tracing::info!(alerts = items.len(), "live feed: replayed alerts published while Redis was unreachable");
                        }
                        for item in items {
                            replayed.insert((item.id.clone(), item.count));
                            last_delivered = Some(item.id.clone());
                            hub.publish(item);
                        }
                    }
                    Err(error) => tracing::warn!(%error, "live feed: cannot read the alert stream to catch up"),
                }
            }
            while !stop.is_cancelled() {
                let message = match pubsub.get_message() {
                    Ok(message) => message,
                    Err(e) if e.is_timeout() => continue,
                    Err(e) => return Err(e),
                };
                let payload: String = match message.get_payload() {
                    Ok(p) => p,
                    Err(error) => {
                        tracing::warn!(%error, "live feed: non-text message on the alert channel skipped");
                        continue;
                    }
                };
                match FeedItem::from_alert_json(&payload) {
                    Ok(item) => {
                        if !replayed.is_empty() && replayed.remove(&(item.id.clone(), item.count)) {
                            continue;
                        }
                        last_delivered = Some(item.id.clone());
                        hub.publish(Arc::new(item));
                    }
                    Err(error) => tracing::warn!(%error, "live feed: message on the alert channel skipped"),
                }
            }
            Ok(())
        })();
        if let Err(error) = result {
            if !failing {
                tracing::warn!(url, %error, "live feed: Redis subscription lost; reconnecting");
                failing = true;
            }
            let deadline = std::time::Instant::now() + backoff;
            while std::time::Instant::now() < deadline && !stop.is_cancelled() {
                std::thread::sleep(Duration::from_millis(50));
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}
