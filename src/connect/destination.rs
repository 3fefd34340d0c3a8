//! Where a connector delivers, and how each SIEM says yes, no, or not now.
//!
//! Every delivery returns one [`Outcome`] per alert: `Delivered`, `Rejected` (permanent:
//! a 4xx, or a per-item refusal; the alert goes to the dead-letter topic) or `Retry`
//! (transient: 5xx, 408, 429, a timeout, a broken connection). HTTP/1.1 over hyper, with
//! rustls for `https://` and syslog over TLS (RFC 5425), trusting the system's CA store plus
//! `tls.ca_file`.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::AsyncWriteExt;

use super::format;
use super::RetryConfig;
use crate::event::Alert;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Rejected(String),
    Retry(String),
}

/// The destination section of a connector file: exactly one of these.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DestinationConfig {
    SplunkHec(SplunkHecConfig),
    Elasticsearch(ElasticsearchConfig),
    Syslog(SyslogConfig),
    Sentinel(SentinelConfig),
    Webhook(WebhookConfig),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplunkHecConfig {
    /// Base URL of the collector, e.g. http://splunk:8088.
    pub url: String,
    pub token: String,
    pub index: Option<String>,
    #[serde(default = "default_sourcetype")]
    pub sourcetype: String,
    #[serde(default = "default_source")]
    pub source: String,
    /// Gzip the request body.
    #[serde(default = "yes")]
    pub gzip: bool,
    /// Indexer acknowledgement: send on a channel and wait until Splunk confirms the batch
    /// was indexed (`/services/collector/ack`); unconfirmed batches are retried.
    #[serde(default)]
    pub ack: bool,
    #[serde(default = "default_ack_timeout", with = "humantime_serde")]
    pub ack_timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchConfig {
    /// e.g. http://elasticsearch:9200 (OpenSearch alike).
    pub url: String,
    /// Index name; `%Y`, `%m`, `%d` are the alert's UTC date (an index per day).
    #[serde(default = "default_index")]
    pub index: String,
    /// Write to this data stream instead of `index`.
    pub data_stream: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub api_key: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyslogTransport {
    Udp,
    Tcp,
    /// TCP with TLS (RFC 5425), octet-counted like TCP.
    Tls,
}

/// `[tls]`: what TLS connections trust.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file of extra CA certificates (a private CA); the system's store is always used.
    pub ca_file: Option<std::path::PathBuf>,
    /// Name the server's certificate must carry; default the host of the address or URL.
    pub server_name: Option<String>,
}

/// The client TLS configuration: system roots plus `tls.ca_file`.
pub fn tls_client_config(tls: &TlsConfig) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = &tls.ca_file {
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path).map_err(|e| format!("tls.ca_file {}: {e}", path.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("tls.ca_file {}: {e}", path.display()))?;
            roots.add(cert).map_err(|e| format!("tls.ca_file {}: {e}", path.display()))?;
        }
    }
    if roots.is_empty() {
        return Err("no CA certificates: the system store is empty and tls.ca_file is not set".into());
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyslogFormat {
    Cef,
    Leef,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    pub transport: SyslogTransport,
    /// host:port
    pub address: String,
    pub format: SyslogFormat,
    /// Syslog facility number (13 = log audit).
    #[serde(default = "default_facility")]
    pub facility: u8,
    #[serde(default = "default_app_name")]
    pub app_name: String,
    /// HOSTNAME field; default this machine's name.
    pub hostname: Option<String>,
    /// LEEF attribute delimiter (default tab).
    #[serde(default = "default_leef_delimiter")]
    pub leef_delimiter: char,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelConfig {
    pub workspace_id: String,
    /// The workspace's primary or secondary key (base64).
    pub shared_key: String,
    /// Custom log table (`<log_type>_CL`).
    #[serde(default = "default_log_type")]
    pub log_type: String,
    /// Default https://<workspace_id>.ods.opinsights.azure.com (set for a proxy or a test).
    pub url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// HMAC-SHA256 key: requests carry `X-Threatpipe-Signature: sha256=<hex>` over
    /// `<timestamp>.<body>` and `X-Threatpipe-Timestamp`.
    pub secret: Option<String>,
    /// Body per alert (`{{title}}`, `{{severity}}`, `{{alert}}`…); unset: the batch as a
    /// JSON array of alerts in one request.
    pub template: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}
fn default_sourcetype() -> String {
    "threatpipe:alert".into()
}
fn default_source() -> String {
    "threatpipe".into()
}
fn default_ack_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_index() -> String {
    "threatpipe-alerts-%Y.%m.%d".into()
}
fn default_facility() -> u8 {
    13
}
fn default_app_name() -> String {
    "threatpipe".into()
}
fn default_leef_delimiter() -> char {
    '\t'
}
fn default_log_type() -> String {
    "ThreatpipeAlert".into()
}

fn check_http(url: &str) -> Result<(), String> {
    if !url.starts_with("http://") && !url.starts_with("https://") {
        return Err(format!("{url}: expected an http:// or https:// URL"));
    }
    Ok(())
}

impl DestinationConfig {
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Self::SplunkHec(c) => check_http(&c.url),
            Self::Elasticsearch(c) => check_http(&c.url),
            Self::Webhook(c) => {
                check_http(&c.url)?;
                if let Some(template) = &c.template {
                    format::render_template(template, &Alert::default()).map_err(|e| format!("webhook.template: {e}"))?;
                }
                Ok(())
            }
            Self::Sentinel(c) => {
                STANDARD.decode(&c.shared_key).map_err(|_| "sentinel.shared_key must be base64 (the workspace key)".to_string())?;
                if !c.log_type.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_') || c.log_type.len() > 100 {
                    return Err("sentinel.log_type: letters, digits and _ only, at most 100".into());
                }
                c.url.as_deref().map_or(Ok(()), check_http)
            }
            Self::Syslog(c) => {
                if c.facility > 23 {
                    return Err("syslog.facility must be 0-23".into());
                }
                Ok(())
            }
        }
    }
}

type HttpClient = Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Full<Bytes>>;

/// A syslog stream: plain TCP or TLS over it.
type SyslogStream = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;

pub enum Destination {
    Http { config: Box<DestinationConfig>, client: HttpClient, timeout: Duration, hostname: String },
    Syslog {
        config: SyslogConfig,
        hostname: String,
        udp: Option<tokio::net::UdpSocket>,
        tcp: Option<SyslogStream>,
        timeout: Duration,
        tls: Option<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)>,
    },
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "threatpipe".into())
}

/// A response status's verdict.
fn classify(status: u16, body: &str) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        408 | 429 | 500..=599 => Outcome::Retry(format!("HTTP {status}: {}", truncate(body))),
        _ => Outcome::Rejected(format!("HTTP {status}: {}", truncate(body))),
    }
}

fn truncate(body: &str) -> &str {
    let end = body.char_indices().nth(300).map_or(body.len(), |(i, _)| i);
    body[..end].trim()
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(body);
    encoder.finish().unwrap_or_default()
}

impl Destination {
    pub async fn open(config: &DestinationConfig, retry: &RetryConfig, tls: &TlsConfig) -> Result<Self, String> {
        config.validate()?;
        match config {
            DestinationConfig::Syslog(syslog) => {
                let tls = if syslog.transport == SyslogTransport::Tls {
                    let host = tls.server_name.clone().unwrap_or_else(|| syslog.address.rsplit_once(':').map_or(syslog.address.clone(), |(h, _)| h.trim_matches(['[', ']']).to_string()));
                    let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| format!("tls.server_name {host:?}: {e}"))?;
                    Some((tokio_rustls::TlsConnector::from(tls_client_config(tls)?), name))
                } else {
                    None
                };
                Ok(Self::Syslog { config: syslog.clone(), hostname: syslog.hostname.clone().unwrap_or_else(hostname), udp: None, tcp: None, timeout: retry.timeout, tls })
            }
            _ => {
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config((*tls_client_config(tls)?).clone())
                    .https_or_http()
                    .enable_http1()
                    .build();
                Ok(Self::Http {
                    config: Box::new(config.clone()),
                    client: Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector),
                    timeout: retry.timeout,
                    hostname: hostname(),
                })
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Syslog { config, .. } => format!("syslog {:?}/{:?} {}", config.transport, config.format, config.address),
            Self::Http { config, .. } => match config.as_ref() {
                DestinationConfig::SplunkHec(c) => format!("Splunk HEC {}", c.url),
                DestinationConfig::Elasticsearch(c) => format!("Elasticsearch {}", c.url),
                DestinationConfig::Sentinel(c) => format!("Sentinel {}", c.workspace_id),
                DestinationConfig::Webhook(c) => format!("webhook {}", c.url),
                DestinationConfig::Syslog(_) => "syslog".into(),
            },
        }
    }

    /// Delivers `alerts`; one outcome per alert, in order.
    pub async fn deliver(&mut self, alerts: &[&Alert]) -> Vec<Outcome> {
        match self {
            Self::Syslog { .. } => self.deliver_syslog(alerts).await,
            Self::Http { config, client, timeout, hostname } => match config.as_ref() {
                DestinationConfig::SplunkHec(c) => hec(client, *timeout, c, hostname, alerts).await,
                DestinationConfig::Elasticsearch(c) => elasticsearch(client, *timeout, c, alerts).await,
                DestinationConfig::Sentinel(c) => sentinel(client, *timeout, c, alerts).await,
                DestinationConfig::Webhook(c) => webhook(client, *timeout, c, alerts).await,
                DestinationConfig::Syslog(_) => unreachable!("syslog is not an HTTP destination"),
            },
        }
    }

    async fn deliver_syslog(&mut self, alerts: &[&Alert]) -> Vec<Outcome> {
        let Self::Syslog { config, hostname, udp, tcp, timeout, tls } = self else { return Vec::new() };
        let messages: Vec<String> = alerts
            .iter()
            .map(|alert| {
                let payload = match config.format {
                    SyslogFormat::Cef => format::cef(alert),
                    SyslogFormat::Leef => format::leef(alert, config.leef_delimiter),
                    SyslogFormat::Json => serde_json::to_string(alert).unwrap_or_default(),
                };
                format::syslog_5424(alert, config.facility, hostname, &config.app_name, &payload)
            })
            .collect();
        let retry_all = |reason: String| vec![Outcome::Retry(reason); alerts.len()];
        match config.transport {
            SyslogTransport::Udp => {
                if udp.is_none() {
                    match tokio::net::UdpSocket::bind("0.0.0.0:0").await {
                        Ok(socket) => match socket.connect(&config.address).await {
                            Ok(()) => *udp = Some(socket),
                            Err(e) => return retry_all(format!("udp {}: {e}", config.address)),
                        },
                        Err(e) => return retry_all(format!("udp socket: {e}")),
                    }
                }
                let Some(socket) = udp.as_ref() else { return retry_all("no socket".into()) };
                let mut outcomes = Vec::with_capacity(messages.len());
                for message in &messages {
                    // One message per datagram; larger than a datagram can carry is refused.
                    if message.len() > 65_000 {
                        outcomes.push(Outcome::Rejected(format!("{} bytes do not fit a UDP datagram", message.len())));
                        continue;
                    }
                    outcomes.push(match socket.send(message.as_bytes()).await {
                        Ok(_) => Outcome::Delivered,
                        Err(e) => Outcome::Retry(format!("udp send: {e}")),
                    });
                }
                if outcomes.iter().any(|o| matches!(o, Outcome::Retry(_))) {
                    *udp = None;
                }
                outcomes
            }
            SyslogTransport::Tcp | SyslogTransport::Tls => {
                if tcp.is_none() {
                    let connect = async {
                        let stream = tokio::net::TcpStream::connect(&config.address).await.map_err(|e| format!("tcp {}: {e}", config.address))?;
                        let _ = stream.set_nodelay(true);
                        Ok::<SyslogStream, String>(match tls {
                            Some((connector, name)) => Box::new(connector.connect(name.clone(), stream).await.map_err(|e| format!("tls {}: {e}", config.address))?),
                            None => Box::new(stream),
                        })
                    };
                    match tokio::time::timeout(*timeout, connect).await {
                        Ok(Ok(stream)) => *tcp = Some(stream),
                        Ok(Err(e)) => return retry_all(e),
                        Err(_) => return retry_all(format!("{}: connect timed out", config.address)),
                    }
                }
                let Some(stream) = tcp.as_mut() else { return retry_all("no connection".into()) };
                let mut framed = Vec::with_capacity(messages.iter().map(|m| m.len() + 8).sum());
                for message in &messages {
                    framed.extend(format::octet_counted(message));
                }
                let write = async {
                    stream.write_all(&framed).await?;
                    stream.flush().await
                };
                match tokio::time::timeout(*timeout, write).await {
                    Ok(Ok(())) => vec![Outcome::Delivered; alerts.len()],
                    Ok(Err(e)) => {
                        *tcp = None;
                        retry_all(format!("tcp write: {e}"))
                    }
                    Err(_) => {
                        *tcp = None;
                        retry_all("tcp write timed out".into())
                    }
                }
            }
        }
    }
}

/// One POST; Err is a transient failure (connection, timeout).
async fn post(client: &HttpClient, timeout: Duration, url: &str, headers: &[(&str, String)], body: Vec<u8>) -> Result<(u16, String), String> {
    let mut request = hyper::Request::post(url);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let request = request.body(Full::new(Bytes::from(body))).map_err(|e| format!("request: {e}"))?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| format!("{url}: {e}"))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(|e| format!("{url}: reading the response: {e}"))?.to_bytes();
        Ok::<_, String>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| format!("{url}: no response within {timeout:?}"))?
}

fn all(outcome: Outcome, n: usize) -> Vec<Outcome> {
    vec![outcome; n]
}

async fn hec(client: &HttpClient, timeout: Duration, c: &SplunkHecConfig, hostname: &str, alerts: &[&Alert]) -> Vec<Outcome> {
    let mut body = Vec::new();
    for alert in alerts {
        let event = format::hec_event(alert, hostname, &c.sourcetype, c.index.as_deref(), &c.source);
        body.extend(event.to_string().into_bytes());
        body.push(b'\n');
    }
    let mut headers = vec![("authorization", format!("Splunk {}", c.token)), ("content-type", "application/json".into())];
    let channel = format!("{:08x}-0000-4000-8000-{:012x}", std::process::id(), xxhash_rust::xxh3::xxh3_64(c.url.as_bytes()) & 0xffff_ffff_ffff);
    if c.ack {
        headers.push(("x-splunk-request-channel", channel.clone()));
    }
    if c.gzip {
        body = gzip(&body);
        headers.push(("content-encoding", "gzip".into()));
    }
    let url = format!("{}/services/collector/event", c.url.trim_end_matches('/'));
    let (status, text) = match post(client, timeout, &url, &headers, body).await {
        Ok(r) => r,
        Err(e) => return all(Outcome::Retry(e), alerts.len()),
    };
    let verdict = classify(status, &text);
    if verdict != Outcome::Delivered || !c.ack {
        return all(verdict, alerts.len());
    }
    // Indexer acknowledgement: poll until the batch's ack id is confirmed.
    let Some(ack_id) = serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| v.get("ackId").and_then(|a| a.as_u64())) else {
        return all(Outcome::Retry(format!("HEC answered without an ackId: {}", truncate(&text))), alerts.len());
    };
    let ack_url = format!("{}/services/collector/ack?channel={channel}", c.url.trim_end_matches('/'));
    let deadline = tokio::time::Instant::now() + c.ack_timeout;
    let ack_headers = [("authorization", format!("Splunk {}", c.token)), ("x-splunk-request-channel", channel.clone()), ("content-type", "application/json".into())];
    loop {
        let query = serde_json::json!({"acks": [ack_id]}).to_string().into_bytes();
        if let Ok((200, text)) = post(client, timeout, &ack_url, &ack_headers, query).await {
            let confirmed = serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| v["acks"][ack_id.to_string()].as_bool()).unwrap_or(false);
            if confirmed {
                return all(Outcome::Delivered, alerts.len());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return all(Outcome::Retry(format!("ack {ack_id} not confirmed within {:?}", c.ack_timeout)), alerts.len());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn index_name(pattern: &str, alert: &Alert) -> String {
    let date = chrono::DateTime::from_timestamp_micros(alert.time_us).unwrap_or_default();
    pattern.replace("%Y", &date.format("%Y").to_string()).replace("%m", &date.format("%m").to_string()).replace("%d", &date.format("%d").to_string())
}

async fn elasticsearch(client: &HttpClient, timeout: Duration, c: &ElasticsearchConfig, alerts: &[&Alert]) -> Vec<Outcome> {
    let mut body = Vec::new();
    for alert in alerts {
        let index = c.data_stream.clone().unwrap_or_else(|| index_name(&c.index, alert));
        // `create` with an id per (alert, count): a retried batch cannot index twice.
        let action = serde_json::json!({"create": {"_index": index, "_id": format!("{}-{}", alert.id, alert.count)}});
        body.extend(action.to_string().into_bytes());
        body.push(b'\n');
        body.extend(format::ecs(alert).to_string().into_bytes());
        body.push(b'\n');
    }
    let mut headers = vec![("content-type", "application/x-ndjson".to_string())];
    if let Some(key) = &c.api_key {
        headers.push(("authorization", format!("ApiKey {key}")));
    } else if let Some(user) = &c.username {
        let credentials = STANDARD.encode(format!("{user}:{}", c.password.clone().unwrap_or_default()));
        headers.push(("authorization", format!("Basic {credentials}")));
    }
    let url = format!("{}/_bulk", c.url.trim_end_matches('/'));
    let (status, text) = match post(client, timeout, &url, &headers, body).await {
        Ok(r) => r,
        Err(e) => return all(Outcome::Retry(e), alerts.len()),
    };
    let verdict = classify(status, &text);
    if verdict != Outcome::Delivered {
        return all(verdict, alerts.len());
    }
    // 200 with per-item results.
    let Ok(response) = serde_json::from_str::<serde_json::Value>(&text) else {
        return all(Outcome::Retry(format!("bulk response is not JSON: {}", truncate(&text))), alerts.len());
    };
    let items = response["items"].as_array().cloned().unwrap_or_default();
    if items.len() != alerts.len() {
        return all(Outcome::Retry(format!("bulk response has {} items for {} actions", items.len(), alerts.len())), alerts.len());
    }
    items
        .iter()
        .map(|item| {
            let result = &item["create"];
            let status = result["status"].as_u64().unwrap_or(0) as u16;
            match status {
                // 409: this (alert, count) is already indexed: a retry of a delivered item.
                200..=299 | 409 => Outcome::Delivered,
                _ => classify(status, &result["error"].to_string()),
            }
        })
        .collect()
}

/// The `Authorization` header of the Azure Monitor HTTP Data Collector API.
pub fn sentinel_signature(workspace_id: &str, shared_key: &str, date: &str, content_length: usize) -> Result<String, String> {
    let key = STANDARD.decode(shared_key).map_err(|e| format!("shared_key: {e}"))?;
    let string_to_sign = format!("POST\n{content_length}\napplication/json\nx-ms-date:{date}\n/api/logs");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(string_to_sign.as_bytes());
    Ok(format!("SharedKey {workspace_id}:{}", STANDARD.encode(mac.finalize().into_bytes())))
}

async fn sentinel(client: &HttpClient, timeout: Duration, c: &SentinelConfig, alerts: &[&Alert]) -> Vec<Outcome> {
    let rows: Vec<serde_json::Value> = alerts
        .iter()
        .map(|a| {
            let mut row = serde_json::to_value(a).unwrap_or_default();
            row["TimeGenerated"] = chrono::DateTime::from_timestamp_micros(a.time_us).map(|t| t.to_rfc3339()).unwrap_or_default().into();
            row
        })
        .collect();
    let body = serde_json::Value::Array(rows).to_string().into_bytes();
    let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    let authorization = match sentinel_signature(&c.workspace_id, &c.shared_key, &date, body.len()) {
        Ok(a) => a,
        Err(e) => return all(Outcome::Rejected(e), alerts.len()),
    };
    let base = c.url.clone().unwrap_or_else(|| format!("https://{}.ods.opinsights.azure.com", c.workspace_id));
    let url = format!("{}/api/logs?api-version=2016-04-01", base.trim_end_matches('/'));
    let headers = [
        ("content-type", "application/json".to_string()),
        ("log-type", c.log_type.clone()),
        ("x-ms-date", date),
        ("time-generated-field", "TimeGenerated".into()),
        ("authorization", authorization),
    ];
    match post(client, timeout, &url, &headers, body).await {
        Ok((status, text)) => all(classify(status, &text), alerts.len()),
        Err(e) => all(Outcome::Retry(e), alerts.len()),
    }
}

/// `sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`
pub fn webhook_signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!("sha256={}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

async fn webhook(client: &HttpClient, timeout: Duration, c: &WebhookConfig, alerts: &[&Alert]) -> Vec<Outcome> {
    let send = |body: Vec<u8>| {
        let timestamp = chrono::Utc::now().timestamp();
        let mut headers: Vec<(&str, String)> = vec![("content-type", "application/json".into()), ("x-threatpipe-timestamp", timestamp.to_string())];
        if let Some(secret) = &c.secret {
            headers.push(("x-threatpipe-signature", webhook_signature(secret, timestamp, &body)));
        }
        for (name, value) in &c.headers {
            headers.push((name.as_str(), value.clone()));
        }
        async move {
            match post(client, timeout, &c.url, &headers, body).await {
                Ok((status, text)) => classify(status, &text),
                Err(e) => Outcome::Retry(e),
            }
        }
    };
    match &c.template {
        None => {
            let body = serde_json::to_vec(alerts).unwrap_or_default();
            all(send(body).await, alerts.len())
        }
        Some(template) => {
            let mut outcomes = Vec::with_capacity(alerts.len());
            for alert in alerts {
                outcomes.push(match format::render_template(template, alert) {
                    Ok(body) => send(body.into_bytes()).await,
                    Err(e) => Outcome::Rejected(format!("template: {e}")),
                });
            }
            outcomes
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        assert_eq!(classify(200, ""), Outcome::Delivered);
        assert!(matches!(classify(503, "busy"), Outcome::Retry(_)));
        assert!(matches!(classify(429, ""), Outcome::Retry(_)));
        assert!(matches!(classify(400, "bad"), Outcome::Rejected(_)));
        assert!(matches!(classify(403, ""), Outcome::Rejected(_)));
    }

    #[test]
    fn sentinel_signature_matches_the_documented_construction() {
        // Key "secret" (base64 c2VjcmV0); HMAC-SHA256 over the documented string-to-sign.
        let sig = sentinel_signature("ws-1", "c2VjcmV0", "Mon, 30 Nov 2026 10:00:00 GMT", 42).unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(b"secret").unwrap();
        mac.update(b"POST\n42\napplication/json\nx-ms-date:Mon, 30 Nov 2026 10:00:00 GMT\n/api/logs");
        assert_eq!(sig, format!("SharedKey ws-1:{}", STANDARD.encode(mac.finalize().into_bytes())));
    }

    #[test]
    fn urls_must_be_http_or_https() {
        let hook = |url: &str| DestinationConfig::Webhook(WebhookConfig { url: url.into(), secret: None, template: None, headers: BTreeMap::new() });
        assert!(hook("https://x").validate().is_ok());
        assert!(hook("ftp://x").validate().unwrap_err().contains("http"));
    }
}
