//! The live-feed page in a real browser: headless Chromium (Debian's package, installed by
//! scripts/services.sh) opens the page an instance serves, an event produced on the broker
//! raises an alert, and the alert appears on the page with its severity, count and detail
//! view. The screenshot is kept as a test artifact (`$THREATPIPE_ARTIFACTS`, default
//! `<target>/tmp/artifacts/live-feed.png`).
//!
//! Chromium is driven over the DevTools protocol on a WebSocket, with the same
//! tokio-tungstenite the feed's clients use, so no WebDriver is needed.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use futures::{SinkExt, StreamExt};
use support::{create_topics, free_port, http_get, produce_all, stage_env, unique, wait_assigned, StageProcess};
use threatpipe::event::{avro, Event, Match};
use tokio_tungstenite::tungstenite::Message;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    devtools: String,
}

impl Browser {
    fn start() -> Self {
        let binary = ["chromium", "chromium-browser", "google-chrome"]
            .into_iter()
            .find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
            .expect("no Chromium: scripts/services.sh installs Debian's chromium package");
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(binary)
            .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars"])
            .args(["--remote-debugging-port=0", "--window-size=1400,800"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let devtools = rx.recv_timeout(Duration::from_secs(30)).expect("Chromium did not open its DevTools endpoint within 30 s");
        Self { child, _profile: profile, devtools }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A DevTools session attached to one page.
struct Page {
    socket: Socket,
    session: String,
    next_id: u64,
}

async fn call(socket: &mut Socket, next_id: &mut u64, session: Option<&str>, method: &str, params: serde_json::Value) -> serde_json::Value {
    *next_id += 1;
    let id = *next_id;
    let mut message = serde_json::json!({"id": id, "method": method, "params": params});
    if let Some(session) = session {
        message["sessionId"] = session.into();
    }
    socket.send(Message::Text(message.to_string().into())).await.unwrap();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), socket.next()).await.expect("DevTools did not answer").unwrap().unwrap();
        let Message::Text(text) = frame else { continue };
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        if value["id"] == id {
            assert!(value.get("error").is_none(), "{method}: {}", value["error"]);
            return value["result"].clone();
        }
    }
}

impl Page {
    async fn open(browser: &Browser, url: &str) -> Self {
        let (mut socket, _) = tokio_tungstenite::connect_async(browser.devtools.as_str()).await.unwrap();
        let mut next_id = 0;
        let target = call(&mut socket, &mut next_id, None, "Target.createTarget", serde_json::json!({"url": url})).await;
        let attached = call(&mut socket, &mut next_id, None, "Target.attachToTarget", serde_json::json!({"targetId": target["targetId"], "flatten": true})).await;
        let session = attached["sessionId"].as_str().unwrap().to_string();
        Self { socket, session, next_id }
    }

    async fn eval(&mut self, expression: &str) -> serde_json::Value {
        let params = serde_json::json!({"expression": expression, "returnByValue": true});
        let result = call(&mut self.socket, &mut self.next_id, Some(&self.session), "Runtime.evaluate", params).await;
        result["result"]["value"].clone()
    }

    /// Evaluates `expression` until `done` holds of its value (or panics after `timeout`).
    async fn wait_for(&mut self, expression: &str, timeout: Duration, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.eval(expression).await;
            if done(&value) {
                return value;
            }
            assert!(Instant::now() < deadline, "page never satisfied `{expression}`; last value {value}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&mut self, path: &std::path::Path) {
        let shot = call(&mut self.socket, &mut self.next_id, Some(&self.session), "Page.captureScreenshot", serde_json::json!({"format": "png"})).await;
        let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

fn artifact(name: &str) -> PathBuf {
    std::env::var_os("THREATPIPE_ARTIFACTS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("artifacts")).join(name)
}

fn scored(id: &str, host: &str, level: &str, title: &str) -> (String, Vec<u8>) {
    let e = Event {
        id: id.into(),
        tenant: "acme".into(),
        partition_key: format!("acme|{host}"),
        time_us: chrono::Utc::now().timestamp_micros(),
        message: Some(format!("powershell -enc ... on {host}")),
        matches: vec![Match {
            rule_id: "r-browser-test".into(),
            title: title.into(),
            level: level.into(),
            kind: "sigma".into(),
            tags: vec!["attack.execution".into(), "attack.t1059.001".into()],
            ..Match::default()
        }],
        ..Event::default()
    };
    (e.partition_key.clone(), avro::encode_event(&e).unwrap())
}

#[test]
fn an_alert_raised_on_the_broker_appears_on_the_live_page() {
    support::require_broker();
    let (scored_topic, alerts, alerts_json, dlq) = (unique("page.scored"), unique("page.alerts"), unique("page.alerts.json"), unique("page.dlq"));
    create_topics(&[&scored_topic, &alerts, &alerts_json, &dlq], 1);
    let token = unique("tok-page");
    let mut env = stage_env("page", "alert");
    for (key, value) in [
        ("TOPICS__SCORED", scored_topic.clone()),
        ("TOPICS__ALERTS", alerts),
        ("TOPICS__ALERTS_JSON", alerts_json),
        ("TOPICS__DLQ", dlq),
        ("ALERT__DEDUPE_PREFIX", unique("tp-test:page:dedupe")),
        ("ALERT__CHANNEL", unique("tp-test:page:channel")),
        ("ALERT__STREAM", unique("tp-test:page:stream")),
        (&format!("FEED__TOKENS__{token}"), "acme".into()),
    ] {
        env.insert(format!("THREATPIPE_{key}"), value);
    }
    let port = free_port();
    let instance = StageProcess::start_serving("page", &format!("127.0.0.1:{port}"), &[], &env);
    wait_assigned(&[&instance]);
    assert_eq!(http_get(port, "/health").map(|(s, _)| s), Some(200));

    let browser = Browser::start();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut page = Page::open(&browser, &format!("http://127.0.0.1:{port}/#token={token}")).await;
        page.wait_for("document.getElementById('status').textContent", Duration::from_secs(20), |v| v == "live").await;
        // The token left the address bar once read.
        assert_eq!(page.eval("location.hash").await, "");

        produce_all(&scored_topic, &[scored("page-ev-1", "ws-042", "high", "Encoded PowerShell download cradle")]);
        let rows = page
            .wait_for("[...document.querySelectorAll('tr.alert-row')].map(r => r.innerText)", Duration::from_secs(30), |v| {
                v.as_array().is_some_and(|rows| !rows.is_empty())
            })
            .await;
        let row = rows[0].as_str().unwrap().to_string();
        assert!(row.contains("Encoded PowerShell download cradle") && row.contains("acme|ws-042"), "row: {row}");
        assert_eq!(page.eval("document.querySelector('tr.alert-row .badge').className").await, "badge sev-high");
        assert_eq!(page.eval("document.getElementById('count-high').textContent").await, "H 1");

        // A repeat on the same entity updates the row's count instead of adding one.
        produce_all(&scored_topic, &[scored("page-ev-2", "ws-042", "high", "Encoded PowerShell download cradle")]);
        page.wait_for("document.querySelector('tr.alert-row .count-cell').textContent", Duration::from_secs(30), |v| v == "2").await;
        produce_all(&scored_topic, &[scored("page-ev-3", "db-007", "critical", "Credential dumping from LSASS")]);
        page.wait_for("document.querySelectorAll('tr.alert-row').length", Duration::from_secs(30), |v| v == 2).await;
        assert_eq!(page.eval("document.getElementById('count-critical').textContent").await, "C 1");

        // The detail view.
        let detail = page.eval("document.querySelector('tr.alert-row').click(); document.getElementById('detail').innerText").await;
        let detail = detail.as_str().unwrap();
        assert!(detail.contains("Credential dumping from LSASS") && detail.contains("T1059.001") && detail.contains("page-ev-3"), "detail: {detail}");

        // The severity filter hides what is below it.
        let hidden = page
            .eval("const s = document.getElementById('severity'); s.value = 'critical'; s.onchange(); [...document.querySelectorAll('tr.alert-row')].filter(r => !r.hidden).length")
            .await;
        assert_eq!(hidden, 1);
        page.eval("const t = document.getElementById('severity'); t.value = 'informational'; t.onchange(); 0").await;

        let path = artifact("live-feed.png");
        page.screenshot(&path).await;
        eprintln!("screenshot: {}", path.display());
    });
}
