//! HTTP connectors against a local receiver that checks each documented wire format and
//! can be told to fail: Splunk HEC (token, gzip, channel, indexer acknowledgement),
//! Elasticsearch bulk (NDJSON, create actions with ids, ECS documents, per-item results),
//! Sentinel's HTTP Data Collector (SharedKey signature recomputed here) and a signed,
//! templated webhook. 5xx and timeouts are retried, 4xx go to the connector's dead-letter
//! topic, and nothing is lost when a connector is killed and restarted.

mod support;

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use support::{connector_file, create_topics, produce_all, start_connector, unique, TopicReader};
use threatpipe::event::{avro, Alert, Severity};

const HEC_TOKEN: &str = "hec-token-1";
const SENTINEL_KEY: &str = "c2VudGluZWwtc2hhcmVkLWtleQ=="; // base64("sentinel-shared-key")
const HOOK_SECRET: &str = "hook-secret";

#[derive(Default)]
struct Receiver {
    /// alert id → times received, per route
    received: Mutex<HashMap<&'static str, HashMap<String, usize>>>,
    /// Wire-format violations, reported by the test at the end.
    problems: Mutex<Vec<String>>,
    /// The next N HEC requests answer 503; then the next M stall past the client's timeout.
    hec_fail: AtomicUsize,
    hec_stall: AtomicUsize,
    /// Milliseconds every HEC request takes (to kill a connector mid-stream).
    hec_delay_ms: AtomicU64,
    next_ack: AtomicU64,
    requests: AtomicUsize,
}

impl Receiver {
    fn note(&self, route: &'static str, id: String) {
        *self.received.lock().unwrap().entry(route).or_default().entry(id).or_default() += 1;
    }
    fn problem(&self, p: String) {
        self.problems.lock().unwrap().push(p);
    }
    fn ids(&self, route: &'static str) -> HashMap<String, usize> {
        self.received.lock().unwrap().get(route).cloned().unwrap_or_default()
    }
}

type Shared = Arc<Receiver>;

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

async fn hec(State(r): State<Shared>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    r.requests.fetch_add(1, Ordering::Relaxed);
    if r.hec_fail.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
        return (StatusCode::SERVICE_UNAVAILABLE, r#"{"text":"Server is busy","code":9}"#.into());
    }
    if r.hec_stall.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    tokio::time::sleep(Duration::from_millis(r.hec_delay_ms.load(Ordering::Relaxed))).await;
    if header(&headers, "authorization") != format!("Splunk {HEC_TOKEN}") {
        return (StatusCode::UNAUTHORIZED, r#"{"text":"Invalid token","code":4}"#.into());
    }
    if header(&headers, "x-splunk-request-channel").is_empty() {
        r.problem("HEC with ack but no X-Splunk-Request-Channel".into());
    }
    if header(&headers, "content-encoding") != "gzip" {
        r.problem("HEC body not gzip".into());
        return (StatusCode::BAD_REQUEST, "expected gzip".into());
    }
    let mut text = String::new();
    if flate2::read::GzDecoder::new(&body[..]).read_to_string(&mut text).is_err() {
        r.problem("HEC body does not gunzip".into());
        return (StatusCode::BAD_REQUEST, r#"{"text":"Invalid data format","code":6}"#.into());
    }
    for event in serde_json::Deserializer::from_str(&text).into_iter::<serde_json::Value>() {
        let Ok(event) = event else {
            r.problem(format!("HEC body is not concatenated JSON: {text:.200}"));
            return (StatusCode::BAD_REQUEST, r#"{"text":"Invalid data format","code":6}"#.into());
        };
        let ok = event["time"].is_f64() && event["sourcetype"] == "threatpipe:alert" && event["index"] == "security" && event["source"] == "threatpipe" && event["host"].is_string();
        if !ok {
            r.problem(format!("HEC event shape: {event}"));
        }
        r.note("hec", format!("{}#{}", event["event"]["id"].as_str().unwrap_or(""), event["event"]["count"]));
    }
    let ack = r.next_ack.fetch_add(1, Ordering::Relaxed);
    (StatusCode::OK, format!(r#"{{"text":"Success","code":0,"ackId":{ack}}}"#))
}

async fn hec_ack(State(r): State<Shared>, Query(q): Query<HashMap<String, String>>, body: Bytes) -> (StatusCode, String) {
    if q.get("channel").is_none_or(|c| c.is_empty()) {
        r.problem("ack poll without a channel".into());
    }
    let asked: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let acks: serde_json::Map<String, serde_json::Value> = asked["acks"].as_array().into_iter().flatten().map(|a| (a.to_string(), true.into())).collect();
    (StatusCode::OK, serde_json::json!({ "acks": acks }).to_string())
}

async fn bulk(State(r): State<Shared>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    if header(&headers, "content-type") != "application/x-ndjson" {
        r.problem("bulk content-type".into());
    }
    let basic = base64::engine::general_purpose::STANDARD.encode("elastic:changeme");
    if header(&headers, "authorization") != format!("Basic {basic}") {
        return (StatusCode::UNAUTHORIZED, "auth".into());
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    let today = chrono::DateTime::from_timestamp_micros(1_764_000_000_000_000).unwrap().format("tp-alerts-%Y.%m.%d").to_string();
    let mut items = Vec::new();
    for pair in lines.chunks(2) {
        let action: serde_json::Value = serde_json::from_str(pair[0]).unwrap_or_default();
        let doc: serde_json::Value = serde_json::from_str(pair.get(1).copied().unwrap_or("")).unwrap_or_default();
        let create = &action["create"];
        if create["_index"] != today.as_str() || !create["_id"].is_string() {
            r.problem(format!("bulk action {action}"));
        }
        if doc["event"]["kind"] != "alert" || !doc["@timestamp"].is_string() || doc["kibana.alert.rule.name"].is_null() {
            r.problem(format!("ECS document {doc}"));
        }
        let id = create["_id"].as_str().unwrap_or("").to_string();
        let status = if doc["rule"]["name"].as_str().unwrap_or("").contains("REJECT") {
            400
        } else if r.ids("es").contains_key(&id) {
            409
        } else {
            r.note("es", id);
            201
        };
        let mut item = serde_json::json!({"create": {"_index": today, "status": status}});
        if status == 400 {
            item["create"]["error"] = serde_json::json!({"type": "mapper_parsing_exception", "reason": "failed to parse field [risk]"});
        }
        items.push(item);
    }
    (StatusCode::OK, serde_json::json!({"took": 1, "errors": true, "items": items}).to_string())
}

async fn sentinel(State(r): State<Shared>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    let date = header(&headers, "x-ms-date");
    let key = base64::engine::general_purpose::STANDARD.decode(SENTINEL_KEY).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("POST\n{}\napplication/json\nx-ms-date:{date}\n/api/logs", body.len()).as_bytes());
    let expected = format!("SharedKey ws-test:{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()));
    if header(&headers, "authorization") != expected {
        return (StatusCode::FORBIDDEN, "InvalidAuthorization".into());
    }
    if header(&headers, "log-type") != "ThreatpipeAlert" || header(&headers, "content-type") != "application/json" || chrono::DateTime::parse_from_rfc2822(date).is_err() {
        r.problem(format!("sentinel headers {headers:?}"));
    }
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap_or_default();
    for row in rows {
        if !row["TimeGenerated"].is_string() {
            r.problem("sentinel row without TimeGenerated".into());
        }
        r.note("sentinel", row["id"].as_str().unwrap_or("").into());
    }
    (StatusCode::OK, String::new())
}

async fn hook(State(r): State<Shared>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    let timestamp = header(&headers, "x-threatpipe-timestamp");
    let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(&body);
    let expected = format!("sha256={}", mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>());
    if header(&headers, "x-threatpipe-signature") != expected {
        r.problem("webhook signature".into());
        return (StatusCode::UNAUTHORIZED, "bad signature".into());
    }
    if header(&headers, "x-team") != "soc" {
        r.problem("webhook custom header".into());
    }
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            r.problem(format!("webhook body is not JSON: {e}"));
            return (StatusCode::BAD_REQUEST, "json".into());
        }
    };
    let text = value["text"].as_str().unwrap_or("");
    if text.contains("REJECT") {
        return (StatusCode::UNPROCESSABLE_ENTITY, "rejected by policy".into());
    }
    r.note("hook", value["id"].as_str().unwrap_or("").into());
    (StatusCode::OK, "ok".into())
}

fn start_receiver(receiver: Shared) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let app = Router::new()
                .route("/services/collector/event", post(hec))
                .route("/services/collector/ack", post(hec_ack))
                .route("/_bulk", post(bulk))
                .route("/api/logs", post(sentinel))
                .route("/hook", post(hook))
                .with_state(receiver);
            axum::serve(tokio::net::TcpListener::from_std(listener).unwrap(), app).await.unwrap();
        });
    });
    port
}

fn alerts(tag: &str, n: usize, reject_every: usize) -> Vec<Alert> {
    (0..n)
        .map(|i| Alert {
            id: format!("alert-{tag}-{i}"),
            tenant: "acme".into(),
            time_us: 1_764_000_000_000_000,
            last_seen_us: 1_764_000_000_000_000,
            severity: Severity::High,
            title: if reject_every > 0 && i % reject_every == 0 { format!("REJECT me {i}") } else { format!("Detection \"{i}\"\n") },
            rule_ids: vec!["r1".into()],
            entity: format!("acme|h{i}"),
            count: 1,
            event_ids: vec![format!("e{i}")],
            ..Alert::default()
        })
        .collect()
}

fn produce(topic: &str, alerts: &[Alert]) {
    create_topics(&[topic], 2);
    produce_all(topic, &alerts.iter().map(|a| (a.id.clone(), avro::encode_alert(a).unwrap())).collect::<Vec<_>>());
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The alert ids on a connector's dead-letter topic, with their reasons.
fn dead_letters(topic: &str, expected: usize) -> Vec<(String, String)> {
    let mut reader = TopicReader::new(topic);
    reader.read_until(Duration::from_secs(30), |r| r.len() >= expected);
    reader
        .records
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
            (v["alert"]["id"].as_str().unwrap_or("").to_string(), v["reason"].as_str().unwrap_or("").to_string())
        })
        .collect()
}

const RETRY: &str = "[retry]\ninitial = \"50ms\"\nmax = \"500ms\"\ntimeout = \"1s\"";

#[test]
fn splunk_hec_retries_5xx_and_timeouts_and_loses_nothing_across_a_restart() {
    support::require_broker();
    let receiver: Shared = Arc::default();
    let port = start_receiver(receiver.clone());
    receiver.hec_fail.store(2, Ordering::SeqCst);
    receiver.hec_stall.store(1, Ordering::SeqCst);
    receiver.hec_delay_ms.store(40, Ordering::SeqCst);
    let topic = unique("hec.alerts");
    let sent = alerts("hec", 400, 0);
    produce(&topic, &sent);
    let dir = tempfile::tempdir().unwrap();
    let body = format!("[splunk_hec]\nurl = \"http://127.0.0.1:{port}\"\ntoken = \"{HEC_TOKEN}\"\nindex = \"security\"\ngzip = true\nack = true\n");
    let file = connector_file(dir.path(), "hec", &topic, RETRY, &body);
    let mut first = start_connector("hec", &file);
    // Kill it mid-stream (SIGKILL: no drain, no final commit).
    wait_for("a quarter of the alerts", Duration::from_secs(60), || receiver.ids("hec").len() >= 100);
    first.sigkill();
    let before_restart = receiver.ids("hec").len();
    receiver.hec_delay_ms.store(0, Ordering::SeqCst);
    let second = start_connector("hec", &file);
    wait_for("every alert", Duration::from_secs(60), || receiver.ids("hec").len() >= sent.len());
    let got = receiver.ids("hec");
    let want: HashSet<String> = sent.iter().map(|a| format!("{}#1", a.id)).collect();
    assert_eq!(got.keys().cloned().collect::<HashSet<_>>(), want);
    let duplicates: usize = got.values().map(|n| n - 1).sum();
    eprintln!("HEC: {} alerts, {before_restart} before the kill, {duplicates} delivered twice (the uncommitted batch), {} requests", got.len(), receiver.requests.load(Ordering::Relaxed));
    assert!(duplicates <= 60, "at most the batches in hand at the kill are redelivered: {duplicates}");
    assert!(first.log_text().contains("delivery failed; retrying"), "the 503s and the timeout were retried:\n{}", first.log_text());
    assert!(first.log_text().contains("HTTP 503") && first.log_text().contains("no response within"));
    assert!(receiver.problems.lock().unwrap().is_empty(), "{:?}", receiver.problems.lock().unwrap());
    drop(second);
}

#[test]
fn rejected_alerts_go_to_the_dead_letter_topic_and_the_rest_is_delivered() {
    support::require_broker();
    let receiver: Shared = Arc::default();
    let port = start_receiver(receiver.clone());
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = support::free_port();
    let mut running = Vec::new();
    let mut cases = Vec::new();
    for (name, route, body) in [
        ("es", "es", format!("[elasticsearch]\nurl = \"http://127.0.0.1:{port}\"\nindex = \"tp-alerts-%Y.%m.%d\"\nusername = \"elastic\"\npassword = \"changeme\"\n")),
        (
            "hook",
            "hook",
            format!(
                "[webhook]\nurl = \"http://127.0.0.1:{port}/hook\"\nsecret = \"{HOOK_SECRET}\"\ntemplate = '{{\"id\":\"{{{{id}}}}\",\"text\":\"[{{{{severity}}}}] {{{{title}}}} on {{{{entity}}}}\"}}'\nheaders = {{ x-team = \"soc\" }}\n"
            ),
        ),
        ("sentinel", "sentinel", format!("[sentinel]\nworkspace_id = \"ws-test\"\nshared_key = \"{SENTINEL_KEY}\"\nurl = \"http://127.0.0.1:{port}\"\n")),
    ] {
        let topic = unique(&format!("{name}.alerts"));
        let reject_every = if name == "sentinel" { 0 } else { 10 };
        let sent = alerts(name, 100, reject_every);
        produce(&topic, &sent);
        let file = connector_file(dir.path(), name, &topic, RETRY, &body);
        // The Elasticsearch connector also serves its metrics.
        let args = if name == "es" { vec!["--metrics-listen".to_string(), format!("127.0.0.1:{metrics_port}")] } else { vec![] };
        running.push(support::start_connector_with(name, &file, &args.iter().map(String::as_str).collect::<Vec<_>>()));
        cases.push((name, route, topic, sent, reject_every));
    }
    for (name, route, topic, sent, reject_every) in cases {
        let rejected: HashSet<String> = sent.iter().filter(|a| a.title.starts_with("REJECT")).map(|a| a.id.clone()).collect();
        let accepted = sent.len() - rejected.len();
        wait_for(&format!("{name} deliveries"), Duration::from_secs(60), || receiver.ids(route).len() >= accepted);
        // Elasticsearch documents are keyed `<alert id>-<count>`.
        let got: HashSet<String> = receiver.ids(route).into_keys().map(|id| if route == "es" { id.strip_suffix("-1").unwrap_or(&id).to_string() } else { id }).collect();
        let want: HashSet<String> = sent.iter().filter(|a| !rejected.contains(&a.id)).map(|a| a.id.clone()).collect();
        assert_eq!(got, want, "{name}");
        if reject_every > 0 {
            let dead = dead_letters(&format!("{topic}.dlq.{name}"), rejected.len());
            assert_eq!(dead.iter().map(|(id, _)| id.clone()).collect::<HashSet<_>>(), rejected, "{name} dead letters");
            let code = if name == "es" { "HTTP 400" } else { "HTTP 422" };
            assert!(dead.iter().all(|(_, reason)| reason.contains(code)), "{name}: {dead:?}");
        }
    }
    assert!(receiver.problems.lock().unwrap().is_empty(), "{:?}", receiver.problems.lock().unwrap());
    // sent / failed (dead-lettered) / lag, per connector, on /metrics (lag is read every 5 s).
    let metric = |text: &str, name: &str| {
        text.lines().find(|l| l.starts_with(name) && l.contains("connector=\"es\"")).and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    let mut text = String::new();
    wait_for("connector metrics", Duration::from_secs(20), || {
        text = support::http_get(metrics_port, "/metrics").map(|(_, b)| b).unwrap_or_default();
        metric(&text, "threatpipe_connector_lag") == Some(0.0) && metric(&text, "threatpipe_connector_sent_total") == Some(90.0)
    });
    assert_eq!(metric(&text, "threatpipe_connector_sent_total"), Some(90.0), "{text}");
    assert_eq!(metric(&text, "threatpipe_connector_failed_total"), Some(10.0), "{text}");
    assert_eq!(metric(&text, "threatpipe_connector_lag"), Some(0.0), "{text}");
    drop(running);
}

/// A minimal HTTPS server (rustls, the test CA's certificate for localhost): reads each
/// HTTP/1.1 request on a connection, records its body, answers 200.
fn start_https_receiver(dir: &std::path::Path, bodies: Arc<Mutex<Vec<String>>>) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(dir.join("server.pem")).unwrap().map(Result::unwrap).collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, bodies) = (acceptor.clone(), bodies.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 16 * 1024];
                    loop {
                        // Headers, then Content-Length bytes of body.
                        let head_end = loop {
                            if let Some(p) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                                break p + 4;
                            }
                            match tls.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
                        let length: usize = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
                        while buffer.len() < head_end + length {
                            match tls.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                        }
                        bodies.lock().unwrap().push(String::from_utf8_lossy(&buffer[head_end..head_end + length]).into_owned());
                        buffer.drain(..head_end + length);
                        if tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    });
    port
}

#[test]
fn webhook_over_https_trusts_the_configured_ca() {
    support::require_broker();
    let dir = tempfile::tempdir().unwrap();
    support::make_certificates(dir.path());
    let bodies: Arc<Mutex<Vec<String>>> = Arc::default();
    let port = start_https_receiver(dir.path(), bodies.clone());
    let topic = unique("https.alerts");
    let sent = alerts("https", 50, 0);
    produce(&topic, &sent);
    let tls = format!("[tls]\nca_file = \"{}\"", dir.path().join("ca.pem").display());
    let body = format!("[webhook]\nurl = \"https://localhost:{port}/hook\"\n");
    let connector = start_connector("https", &connector_file(dir.path(), "https", &topic, &format!("{RETRY}\n{tls}"), &body));
    let count = || bodies.lock().unwrap().iter().map(|b| serde_json::from_str::<Vec<Alert>>(b).map_or(0, |v| v.len())).sum::<usize>();
    wait_for("alerts over https", Duration::from_secs(60), || count() >= sent.len());
    let ids: HashSet<String> = bodies.lock().unwrap().iter().flat_map(|b| serde_json::from_str::<Vec<Alert>>(b).unwrap()).map(|a| a.id).collect();
    assert_eq!(ids, sent.iter().map(|a| a.id.clone()).collect(), "{}", connector.log_text());
}
