//! The in-process fan-out from one alert to every connected client that may see it.
//!
//! Publishing never waits: each client has a bounded queue (`feed.client_queue`) and a
//! publish that finds it full applies the named overflow policy (`feed.slow_client`):
//! `skip` drops this alert for that client only and counts it, so the client is told how
//! many it missed ("lagged" notice) once it drains; `drop` disconnects the client, which
//! reconnects and resumes from its last alert id. Either way the other clients never wait
//! for a slow one. Clients are indexed by tenant so an alert is only offered to the clients
//! of its tenant (and to all-tenant clients). The frame is serialized once per alert and
//! shared by every client.
//!
//! The alert stage publishes every alert it emits, replays after a crash included, so that
//! a crash between counting an event and publishing it cannot cost the feed an alert; the
//! hub drops a frame whose (alert id, count) it already published (within the last
//! [`SEEN_CAPACITY`] frames), so the replay is not seen twice either.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::auth::ALL_TENANTS;
use crate::event::Severity;

/// What a publish does when a client's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SlowClientPolicy {
    /// Skip this alert for the slow client; it gets a `lagged` notice with the number skipped.
    #[default]
    Skip,
    /// Disconnect the slow client (close reason `lagged`); it resumes from its last alert.
    Drop,
}

/// One alert (or an update of its count), ready to send.
#[derive(Debug)]
pub struct FeedItem {
    pub id: String,
    pub count: i64,
    pub tenant: String,
    pub severity: Severity,
    pub rule_ids: Vec<String>,
    /// `{"type":"alert","alert":{...}}`
    pub frame: Utf8Bytes,
}

/// The parts of an alert's JSON the hub routes on.
#[derive(Deserialize)]
struct Routing {
    id: String,
    tenant: String,
    severity: Severity,
    #[serde(default)]
    rule_ids: Vec<String>,
    #[serde(default)]
    count: i64,
}

impl FeedItem {
    /// From an alert as the alert stage serializes it.
    pub fn from_alert_json(json: &str) -> Result<Self, String> {
        let r: Routing = serde_json::from_str(json).map_err(|e| format!("not an alert: {e}"))?;
        let frame = format!(r#"{{"type":"alert","alert":{json}}}"#);
        Ok(Self { id: r.id, count: r.count, tenant: r.tenant, severity: r.severity, rule_ids: r.rule_ids, frame: frame.into() })
    }
}

/// What a client wants to see, within its tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// Alerts below this severity are not sent.
    #[serde(default)]
    pub min_severity: Severity,
    /// Only alerts naming one of these rules (empty: every rule).
    #[serde(default)]
    pub rules: Vec<String>,
}

impl Filter {
    pub fn admits(&self, item: &FeedItem) -> bool {
        item.severity >= self.min_severity && (self.rules.is_empty() || item.rule_ids.iter().any(|r| self.rules.contains(r)))
    }
}

/// The hub's side of one connected client.
pub struct ClientSlot {
    id: u64,
    tenant: String,
    filter: Mutex<Filter>,
    queue: mpsc::Sender<Arc<FeedItem>>,
    skipped: AtomicU64,
    /// Cancelled when the `drop` policy disconnects the client.
    pub dropped: CancellationToken,
}

impl ClientSlot {
    /// Alerts skipped since the last call (for the `lagged` notice).
    pub fn take_skipped(&self) -> u64 {
        self.skipped.swap(0, Ordering::Relaxed)
    }

    pub fn set_filter(&self, filter: Filter) {
        if let Ok(mut f) = self.filter.lock() {
            *f = filter;
        }
    }

    pub fn filter(&self) -> Filter {
        self.filter.lock().map(|f| f.clone()).unwrap_or_default()
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }
}

/// A registered client: its queue, and its slot (unregistered on drop).
pub struct Subscription {
    pub slot: Arc<ClientSlot>,
    pub queue: mpsc::Receiver<Arc<FeedItem>>,
    hub: Arc<FeedHub>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unregister(&self.slot);
    }
}

/// (alert id, count) pairs remembered to drop replayed frames.
pub const SEEN_CAPACITY: usize = 100_000;

/// The recently published (alert id, count) pairs, oldest evicted first.
#[derive(Default)]
struct Seen {
    set: std::collections::HashSet<(String, i64)>,
    order: VecDeque<(String, i64)>,
}

impl Seen {
    /// True if `key` is new (and remembers it).
    fn insert(&mut self, key: (String, i64)) -> bool {
        if self.set.contains(&key) {
            return false;
        }
        if self.order.len() >= SEEN_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.order.push_back(key.clone());
        self.set.insert(key);
        true
    }
}

pub struct FeedHub {
    seen: Mutex<Seen>,
    /// tenant (or `*`) → its clients
    clients: RwLock<HashMap<String, Vec<Arc<ClientSlot>>>>,
    next_client: AtomicU64,
    /// Registered clients, kept beside `clients` so counting them takes no lock.
    connected: std::sync::atomic::AtomicUsize,
    client_queue: usize,
    policy: SlowClientPolicy,
    /// The latest alerts published here, for resuming clients when there is no Redis
    /// stream (embedded mode).
    recent: Mutex<VecDeque<Arc<FeedItem>>>,
    recent_capacity: usize,
}

impl FeedHub {
    pub fn new(client_queue: usize, policy: SlowClientPolicy, recent_capacity: usize) -> Arc<Self> {
        metrics::gauge!(crate::telemetry::names::FEED_CLIENTS).set(0.0);
        Arc::new(Self {
            seen: Mutex::new(Seen::default()),
            clients: RwLock::new(HashMap::new()),
            next_client: AtomicU64::new(1),
            connected: std::sync::atomic::AtomicUsize::new(0),
            client_queue: client_queue.max(1),
            policy,
            recent: Mutex::new(VecDeque::new()),
            recent_capacity,
        })
    }

    pub fn register(self: &Arc<Self>, tenant: &str, filter: Filter) -> Subscription {
        let (tx, rx) = mpsc::channel(self.client_queue);
        let slot = Arc::new(ClientSlot {
            id: self.next_client.fetch_add(1, Ordering::Relaxed),
            tenant: tenant.to_string(),
            filter: Mutex::new(filter),
            queue: tx,
            skipped: AtomicU64::new(0),
            dropped: CancellationToken::new(),
        });
        if let Ok(mut clients) = self.clients.write() {
            clients.entry(tenant.to_string()).or_default().push(slot.clone());
            let count = clients.values().map(Vec::len).sum::<usize>();
            self.connected.store(count, Ordering::Relaxed);
            metrics::gauge!(crate::telemetry::names::FEED_CLIENTS).set(count as f64);
        }
        Subscription { slot, queue: rx, hub: self.clone() }
    }

    fn unregister(&self, slot: &ClientSlot) {
        if let Ok(mut clients) = self.clients.write() {
            if let Some(list) = clients.get_mut(&slot.tenant) {
                list.retain(|s| s.id != slot.id);
                if list.is_empty() {
                    clients.remove(&slot.tenant);
                }
            }
            let count = clients.values().map(Vec::len).sum::<usize>();
            self.connected.store(count, Ordering::Relaxed);
            metrics::gauge!(crate::telemetry::names::FEED_CLIENTS).set(count as f64);
        }
    }

    /// Clients connected now (an atomic read: asked once per write by every client).
    pub fn client_count(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    /// Parses and publishes an alert as the alert stage serialized it.
    pub fn publish_json(&self, json: &str) -> Result<(), String> {
        self.publish(Arc::new(FeedItem::from_alert_json(json)?));
        Ok(())
    }

    /// Offers `item` to every client of its tenant (and every all-tenant client) whose
    /// filter admits it; never waits.
    pub fn publish(&self, item: Arc<FeedItem>) {
        if !self.seen.lock().is_ok_and(|mut seen| seen.insert((item.id.clone(), item.count))) {
            metrics::counter!(crate::telemetry::names::FEED_REPLAYS_DROPPED).increment(1);
            return;
        }
        let (mut delivered, mut skipped, mut dropped) = (0u64, 0u64, 0u64);
        if let Ok(clients) = self.clients.read() {
            let tenant = clients.get(&item.tenant).into_iter().flatten();
            let everyone = clients.get(ALL_TENANTS).into_iter().flatten();
            for slot in tenant.chain(everyone) {
                if slot.dropped.is_cancelled() || !slot.filter.lock().is_ok_and(|f| f.admits(&item)) {
                    continue;
                }
                match slot.queue.try_send(item.clone()) {
                    Ok(()) => delivered += 1,
                    Err(mpsc::error::TrySendError::Full(_)) => match self.policy {
                        SlowClientPolicy::Skip => {
                            slot.skipped.fetch_add(1, Ordering::Relaxed);
                            skipped += 1;
                        }
                        SlowClientPolicy::Drop => {
                            slot.dropped.cancel();
                            dropped += 1;
                        }
                    },
                    // The connection is closing; its slot goes with it.
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        }
        metrics::counter!(crate::telemetry::names::FEED_ALERTS).increment(1);
        metrics::counter!(crate::telemetry::names::FEED_DELIVERED).increment(delivered);
        if skipped > 0 {
            metrics::counter!(crate::telemetry::names::FEED_SKIPPED).increment(skipped);
        }
        if dropped > 0 {
            metrics::counter!(crate::telemetry::names::FEED_DROPPED_CLIENTS).increment(dropped);
        }
        if self.recent_capacity > 0 {
            if let Ok(mut recent) = self.recent.lock() {
                if recent.len() >= self.recent_capacity {
                    recent.pop_front();
                }
                recent.push_back(item);
            }
        }
    }

    /// The alerts of `tenant` published here after the latest one with id `since`
    /// (oldest first), and whether `since` was found (if not, every alert held is returned).
    pub fn recent_since(&self, since: &str, tenant: &str) -> (Vec<Arc<FeedItem>>, bool) {
        let Ok(recent) = self.recent.lock() else { return (Vec::new(), false) };
        let start = recent.iter().rposition(|i| i.id == since);
        let items = recent
            .iter()
            .skip(start.map_or(0, |p| p + 1))
            .filter(|i| tenant == ALL_TENANTS || i.tenant == tenant)
            .cloned()
            .collect();
        (items, start.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(id: &str, tenant: &str, severity: &str, rule: &str) -> String {
        serde_json::json!({"id": id, "tenant": tenant, "severity": severity, "rule_ids": [rule], "count": 1, "title": "t"}).to_string()
    }

    #[tokio::test]
    async fn routes_by_tenant_and_filter() {
        let hub = FeedHub::new(8, SlowClientPolicy::Skip, 100);
        let mut acme = hub.register("acme", Filter::default());
        let mut acme_high = hub.register("acme", Filter { min_severity: Severity::High, rules: vec![] });
        let mut acme_rule = hub.register("acme", Filter { min_severity: Severity::Informational, rules: vec!["r2".into()] });
        let mut all = hub.register(ALL_TENANTS, Filter::default());
        let mut globex = hub.register("globex", Filter::default());
        hub.publish_json(&alert("a1", "acme", "medium", "r1")).unwrap();
        hub.publish_json(&alert("a2", "acme", "critical", "r2")).unwrap();
        hub.publish_json(&alert("g1", "globex", "low", "r1")).unwrap();
        let drain = |s: &mut Subscription| {
            let mut ids = Vec::new();
            while let Ok(i) = s.queue.try_recv() {
                ids.push(i.id.clone());
            }
            ids
        };
        assert_eq!(drain(&mut acme), ["a1", "a2"]);
        assert_eq!(drain(&mut acme_high), ["a2"]);
        assert_eq!(drain(&mut acme_rule), ["a2"]);
        assert_eq!(drain(&mut all), ["a1", "a2", "g1"]);
        assert_eq!(drain(&mut globex), ["g1"]);
        assert!(hub.publish_json("{\"not\": 1}").is_err());
        assert_eq!(hub.client_count(), 5);
        drop(globex);
        assert_eq!(hub.client_count(), 4);
    }

    #[tokio::test]
    async fn a_full_queue_skips_or_drops_only_that_client() {
        for policy in [SlowClientPolicy::Skip, SlowClientPolicy::Drop] {
            let hub = FeedHub::new(2, policy, 0);
            let slow = hub.register("t", Filter::default());
            let mut fast = hub.register("t", Filter::default());
            for n in 0..5 {
                hub.publish_json(&alert(&format!("a{n}"), "t", "high", "r")).unwrap();
                assert_eq!(fast.queue.try_recv().map(|i| i.id.clone()).ok(), Some(format!("a{n}")));
            }
            match policy {
                SlowClientPolicy::Skip => assert_eq!(slow.slot.take_skipped(), 3),
                SlowClientPolicy::Drop => assert!(slow.slot.dropped.is_cancelled()),
            }
        }
    }

    #[tokio::test]
    async fn a_replayed_frame_is_published_once() {
        let hub = FeedHub::new(8, SlowClientPolicy::Skip, 0);
        let mut client = hub.register("t", Filter::default());
        let update = |count: i64| serde_json::json!({"id": "a", "tenant": "t", "severity": "high", "count": count}).to_string();
        for count in [1, 1, 2, 1, 2, 3] {
            hub.publish_json(&update(count)).unwrap();
        }
        let mut counts = Vec::new();
        while let Ok(item) = client.queue.try_recv() {
            counts.push(item.count);
        }
        assert_eq!(counts, [1, 2, 3]);
    }

    #[test]
    fn resume_returns_what_followed_the_last_copy_of_an_id() {
        let hub = FeedHub::new(1, SlowClientPolicy::Skip, 4);
        let with_count = |id: &str, tenant: &str, count: i64| {
            serde_json::json!({"id": id, "tenant": tenant, "severity": "high", "rule_ids": ["r"], "count": count}).to_string()
        };
        for (id, tenant, count) in [("a", "t", 1), ("b", "t", 1), ("a", "t", 2), ("c", "u", 1), ("d", "t", 1)] {
            hub.publish_json(&with_count(id, tenant, count)).unwrap();
        }
        let ids = |(items, found): (Vec<Arc<FeedItem>>, bool)| (items.iter().map(|i| i.id.clone()).collect::<Vec<_>>(), found);
        assert_eq!(ids(hub.recent_since("a", "t")), (vec!["d".to_string()], true));
        assert_eq!(ids(hub.recent_since("a", ALL_TENANTS)), (vec!["c".to_string(), "d".to_string()], true));
        // "zzz" is unknown (or rolled out of the buffer of 4): everything held is returned.
        assert_eq!(ids(hub.recent_since("zzz", "t")), (vec!["b".to_string(), "a".to_string(), "d".to_string()], false));
    }
}
