//! The live threat feed: alerts reach people's screens within milliseconds of being raised.
//!
//! Every instance that serves HTTP runs the feed. On Kafka, the alert stage (on whichever
//! instance) publishes each alert on a Redis channel and appends it to a bounded Redis
//! stream; every instance's [`redis_source`] subscribes to the channel and hands alerts to
//! its [`hub::FeedHub`], which fans them out to that instance's WebSocket clients
//! ([`ws`]). Embedded, the alert stage hands alerts to the hub directly. A client
//! authenticates with a token ([`auth`]) that fixes its tenant, filters by severity and
//! rule, and may resume after a disconnect from the last alert id it saw (from the Redis
//! stream, or the hub's own recent buffer when there is no Redis). `/` serves the web page
//! (`page.html`); `threatpipe tail` ([`tail`]) is the terminal client.

pub mod auth;
pub mod hub;
pub mod redis_source;
pub mod tail;
pub mod ws;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use hub::{FeedHub, FeedItem, Filter, SlowClientPolicy};

/// `[feed]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedConfig {
    /// Serve the live feed (`/feed` WebSocket, `/` web page) with the HTTP server.
    pub enabled: bool,
    /// Static tokens: token → tenant (`*` = every tenant). From the environment:
    /// THREATPIPE_FEED__TOKENS__<token>=<tenant> (the token is lowercased there). In
    /// production prefer JWTs (`jwt_secret`), which carry their tenant and expire.
    pub tokens: BTreeMap<String, String>,
    /// Secret for HS256 JWTs whose `tenant` claim names the tenant (set it from the
    /// environment: THREATPIPE_FEED__JWT_SECRET).
    pub jwt_secret: Option<String>,
    /// Redis the alerts come from. Unset: `alert.dedupe` if that is Redis, else the local
    /// Redis on Kafka and none embedded (the alert stage then hands alerts over in-process).
    pub redis: Option<String>,
    /// Alerts queued per client before the slow-client policy applies.
    pub client_queue: usize,
    /// `skip` (the client misses alerts and is told how many) or `drop` (disconnected).
    pub slow_client: SlowClientPolicy,
    /// How often the server pings each client.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A client silent (no pong, no message) this long is disconnected as dead.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Embedded runs create a development token (every tenant) and write it where
    /// `threatpipe tail` finds it.
    pub dev_token: bool,
    /// At most one write per client per this window (while `coalesce_min_clients` or more
    /// are connected): an alert after a quiet spell is written at once, one that follows a
    /// write more closely waits for the window's end and goes with whatever else came by
    /// then. Each write is a syscall on the server and a wake-up on the client, and with a
    /// thousand clients those, not the alerts, were most of the feed's CPU. Adds at most
    /// this much latency; `0s` writes every alert at once.
    #[serde(with = "humantime_serde")]
    pub coalesce: Duration,
    /// Coalesce only while this instance serves at least this many clients: with a few,
    /// writes cost nothing worth a wait, and each alert is written at once.
    pub coalesce_min_clients: usize,
}

impl Default for FeedConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            tokens: BTreeMap::new(),
            jwt_secret: None,
            redis: None,
            client_queue: 256,
            slow_client: SlowClientPolicy::Skip,
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            dev_token: true,
            coalesce: Duration::from_millis(50),
            coalesce_min_clients: 100,
        }
    }
}

impl FeedConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.client_queue == 0 {
            errors.push("feed.client_queue must be at least 1".into());
        }
        if self.ping_interval.is_zero() || self.idle_timeout <= self.ping_interval {
            errors.push("feed.ping_interval must be above zero and below feed.idle_timeout".into());
        }
        if self.jwt_secret.as_deref().is_some_and(|s| s.len() < 16) {
            errors.push("feed.jwt_secret must be at least 16 bytes".into());
        }
        if self.coalesce >= self.ping_interval {
            errors.push(format!(
                "feed.coalesce ({:?}) must be below feed.ping_interval ({:?}): it is how long an alert may wait for others to share its write",
                self.coalesce, self.ping_interval
            ));
        }
        errors
    }
}

/// Where a resuming client's missed alerts come from.
pub enum ResumeSource {
    /// The hub's own buffer of recent alerts (embedded).
    Hub,
    /// The bounded stream the alert stage appends to.
    Redis { client: redis::Client, stream: String },
}

/// Everything the `/feed` endpoint needs.
pub struct Feed {
    pub hub: Arc<FeedHub>,
    pub auth: auth::Authenticator,
    pub resume: ResumeSource,
    pub config: FeedConfig,
}

impl Feed {
    /// The alerts of `tenant` after `since`, oldest first, and whether `since` was found.
    pub async fn missed_since(&self, since: &str, tenant: &str) -> Result<(Vec<Arc<FeedItem>>, bool), String> {
        match &self.resume {
            ResumeSource::Hub => Ok(self.hub.recent_since(since, tenant)),
            ResumeSource::Redis { client, stream } => {
                let (client, stream, since, tenant) = (client.clone(), stream.clone(), since.to_string(), tenant.to_string());
                tokio::task::spawn_blocking(move || redis_source::stream_since(&client, &stream, &since, &tenant))
                    .await
                    .map_err(|e| format!("resume task: {e}"))?
            }
        }
    }
}

/// Where the embedded run writes its development token for the server on `port`:
/// `$XDG_RUNTIME_DIR/threatpipe/`, else `~/.cache/threatpipe/`, else the temp directory.
pub fn dev_token_path(port: u16) -> PathBuf {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join("threatpipe"))
        .or_else(|| std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".cache/threatpipe")))
        .unwrap_or_else(|| std::env::temp_dir().join("threatpipe"));
    dir.join(format!("dev-token-{port}"))
}

/// Writes the development token (owner-only) and returns the path.
pub fn write_dev_token(port: u16, token: &str) -> std::io::Result<PathBuf> {
    use std::io::Write;
    let path = dev_token_path(port);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(&path)?.write_all(token.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_is_valid_and_a_coalesce_window_past_the_heartbeat_is_not() {
        assert_eq!(FeedConfig::default().validate(), Vec::<String>::new());
        let slow = FeedConfig { coalesce: Duration::from_secs(20), ..FeedConfig::default() };
        assert!(slow.validate().iter().any(|e| e.starts_with("feed.coalesce")), "{:?}", slow.validate());
    }
}
