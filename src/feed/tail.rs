//! `threatpipe tail`: the live feed in a terminal, one alert per line.
//!
//! It connects to an instance's `/feed` (127.0.0.1:8080 by default) with a token from
//! `--token` / `THREATPIPE_TOKEN`, or, for a local embedded run, the development token that
//! run wrote. If the connection drops it reconnects with backoff and resumes after the last
//! alert it printed, so a restart of the server costs no alerts the server still holds.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use futures::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::event::Alert;

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  threatpipe tail                                  # the local embedded run\n  \
    threatpipe tail --severity high --max 10\n  \
    threatpipe tail --url ws://feed.internal:8080 --token \"$JWT\" --json | jq .title")]
pub struct TailArgs {
    /// The instance to watch (ws://, http:// or HOST:PORT).
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    pub url: String,
    /// Feed token (static token or HS256 JWT). Default: the development token of an
    /// embedded run on that port.
    #[arg(long, env = "THREATPIPE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Only alerts at or above this severity (informational, low, medium, high, critical).
    #[arg(long)]
    pub severity: Option<String>,
    /// Only alerts naming this rule id (repeat or comma-separate for several).
    #[arg(long, value_delimiter = ',')]
    pub rule: Vec<String>,
    /// First print the alerts after this alert id that the server still holds.
    #[arg(long)]
    pub since: Option<String>,
    /// Exit after this many alerts.
    #[arg(long)]
    pub max: Option<u64>,
    /// One JSON alert per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Exit when the connection drops instead of reconnecting.
    #[arg(long)]
    pub no_reconnect: bool,
}

/// `ws://host:port` from what the user typed.
pub(crate) fn base_url(url: &str) -> String {
    let url = url.trim_end_matches('/');
    if let Some(rest) = url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if url.starts_with("ws://") || url.starts_with("wss://") {
        url.to_string()
    } else {
        format!("ws://{url}")
    }
}

fn port_of(base: &str) -> u16 {
    let authority = base.split("://").nth(1).unwrap_or_default().split('/').next().unwrap_or_default();
    authority.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(if base.starts_with("wss") { 443 } else { 80 })
}

fn is_loopback(base: &str) -> bool {
    let authority = base.split("://").nth(1).unwrap_or_default();
    ["127.0.0.1:", "localhost:", "[::1]:"].iter().any(|p| authority.starts_with(p))
}

/// The token to present, and where it came from (for the error if it is refused).
fn resolve_token(args: &TailArgs, base: &str) -> anyhow::Result<(String, String)> {
    if let Some(token) = args.token.clone().filter(|t| !t.is_empty()) {
        return Ok((token, "--token / THREATPIPE_TOKEN".into()));
    }
    let path = super::dev_token_path(port_of(base));
    if is_loopback(base) {
        if let Ok(token) = std::fs::read_to_string(&path) {
            return Ok((token.trim().to_string(), format!("the development token in {}", path.display())));
        }
    }
    bail!(
        "no feed token: pass --token or set THREATPIPE_TOKEN (a static token from [feed.tokens] or a JWT signed with feed.jwt_secret). \
         An embedded run on this machine writes its development token to {}; none is there, so is one running?",
        path.display()
    )
}

fn feed_url(base: &str, args: &TailArgs, since: Option<&str>) -> String {
    let mut query = Vec::new();
    if let Some(severity) = &args.severity {
        query.push(format!("severity={severity}"));
    }
    if !args.rule.is_empty() {
        query.push(format!("rule={}", args.rule.join(",")));
    }
    if let Some(since) = since {
        query.push(format!("since={since}"));
    }
    let query = if query.is_empty() { String::new() } else { format!("?{}", query.join("&")) };
    format!("{base}/feed{query}")
}

/// One alert as a terminal line.
pub fn format_line(alert: &Alert) -> String {
    let time = chrono::DateTime::from_timestamp_micros(alert.time_us).map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()).unwrap_or_default();
    let severity = serde_json::to_value(alert.severity).ok().and_then(|v| v.as_str().map(str::to_ascii_uppercase)).unwrap_or_default();
    let count = if alert.count > 1 { format!(" x{}", alert.count) } else { String::new() };
    format!("{time} {severity:<13} {tenant} {title}{count} [{rules}] entity={entity} id={id}",
        tenant = alert.tenant, title = alert.title, rules = alert.rule_ids.join(","), entity = alert.entity, id = alert.id)
}

enum SessionEnd {
    Done,
    Dropped(String),
}

pub async fn run(args: &TailArgs) -> anyhow::Result<()> {
    let base = base_url(&args.url);
    let (token, token_source) = resolve_token(args, &base)?;
    if let Some(severity) = &args.severity {
        super::ws::parse_filter(Some(severity), None).map_err(anyhow::Error::msg)?;
    }
    let mut since = args.since.clone();
    let mut printed = 0u64;
    let mut backoff = Duration::from_millis(250);
    let mut connected_once = false;
    loop {
        let end = session(&base, args, &token, &token_source, &mut since, &mut printed, &mut connected_once).await;
        match end {
            Ok(SessionEnd::Done) => return Ok(()),
            Err(e) if !connected_once => return Err(e),
            Err(e) if args.no_reconnect => return Err(e),
            Ok(SessionEnd::Dropped(_)) if args.no_reconnect => bail!("connection closed"),
            Ok(SessionEnd::Dropped(reason)) => eprintln!("tail: {reason}; reconnecting"),
            Err(e) => eprintln!("tail: {e:#}; reconnecting in {backoff:?}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// A live-feed WebSocket, open at `url` (`ws://host:port/feed?...`).
pub(crate) type FeedSocket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the feed at `url` with `token` as the bearer; a refusal names the server's reason
/// and where the token came from.
pub(crate) async fn connect(url: &str, token: &str, token_source: &str) -> anyhow::Result<FeedSocket> {
    let mut request = url.into_client_request().with_context(|| format!("bad feed URL {url}"))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}")).context("the token holds characters a header cannot")?;
    request.headers_mut().insert("authorization", bearer);
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default().trim().to_string();
            bail!("{url} refused the connection ({}): {body} [token from {token_source}]", response.status());
        }
        Err(e) => bail!("cannot connect to {url}: {e}"),
    }
}

async fn session(
    base: &str,
    args: &TailArgs,
    token: &str,
    token_source: &str,
    since: &mut Option<String>,
    printed: &mut u64,
    connected_once: &mut bool,
) -> anyhow::Result<SessionEnd> {
    let url = feed_url(base, args, since.as_deref());
    let mut socket = connect(&url, token, token_source).await?;
    *connected_once = true;
    let mut stdout = std::io::stdout();
    loop {
        let message = tokio::select! {
            m = socket.next() => m,
            _ = tokio::signal::ctrl_c() => {
                let _ = socket.close(None).await;
                return Ok(SessionEnd::Done);
            }
        };
        let text = match message {
            None => return Ok(SessionEnd::Dropped("connection closed".into())),
            Some(Err(e)) => return Ok(SessionEnd::Dropped(e.to_string())),
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                let reason = frame.map(|f| format!("server closed the connection: {}", f.reason)).unwrap_or_else(|| "server closed the connection".into());
                return Ok(SessionEnd::Dropped(reason));
            }
            Some(Ok(_)) => continue,
        };
        let value: serde_json::Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(_) => continue,
        };
        match value.get("type").and_then(|t| t.as_str()) {
            Some("alert") => {
                let Some(alert) = value.get("alert") else { continue };
                let line = if args.json {
                    alert.to_string()
                } else {
                    match serde_json::from_value::<Alert>(alert.clone()) {
                        Ok(a) => format_line(&a),
                        Err(_) => alert.to_string(),
                    }
                };
                use std::io::Write;
                if writeln!(stdout, "{line}").and_then(|_| stdout.flush()).is_err() {
                    // stdout closed (e.g. `| head`): done.
                    return Ok(SessionEnd::Done);
                }
                *since = alert.get("id").and_then(|i| i.as_str()).map(String::from);
                *printed += 1;
                if args.max.is_some_and(|max| *printed >= max) {
                    let _ = socket.close(None).await;
                    return Ok(SessionEnd::Done);
                }
            }
            Some("lagged") => eprintln!("tail: too slow; the server skipped {} alerts", value.get("skipped").unwrap_or(&serde_json::Value::Null)),
            Some("resumed") if value.get("found") == Some(&serde_json::Value::Bool(false)) => {
                eprintln!("tail: the server no longer holds alert {}; some alerts may have been missed", value.get("since").unwrap_or(&serde_json::Value::Null))
            }
            Some("error") => eprintln!("tail: server: {}", value.get("message").unwrap_or(&serde_json::Value::Null)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(base_url("http://h:1/"), "ws://h:1");
        assert_eq!(base_url("127.0.0.1:8080"), "ws://127.0.0.1:8080");
        assert_eq!(port_of("ws://127.0.0.1:9000"), 9000);
        assert_eq!(port_of("wss://feed.example"), 443);
        assert!(is_loopback("ws://localhost:8080"));
        assert!(!is_loopback("ws://10.0.0.1:8080"));
    }
}
