//! Alerts per second through each SIEM connector, batched, against local receivers.
//!
//!   CARGO_TARGET_DIR=~/.cache/threatpipe/target cargo bench --bench connectors [-- ALERTS]
//!
//! (Runs only under `cargo bench`; needs the broker of scripts/services.sh.)
//!
//! ALERTS (default 50,000) Avro alerts go to a fresh topic once. Each connector then reads
//! all of them with its own consumer group and delivers them (batches of 500) to a receiver
//! in this process that does the least a receiver can (answers 200, counts alerts; HEC's
//! receiver also gunzips). The baseline in the same run is a consumer of the same topic
//! that only decodes the Avro: what the broker and the decoding allow before any delivery.
//! Every lane runs from the topic's start, so each reads the same records.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use threatpipe::connect::{ConnectorConfig, DestinationConfig};
use threatpipe::event::{avro, Alert, Severity};
use tokio::io::AsyncReadExt;

type Count = Arc<AtomicU64>;

async fn hec(State(n): State<Count>, body: Bytes) -> String {
    let mut text = String::new();
    let _ = std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut text);
    n.fetch_add(text.lines().count() as u64, Ordering::Relaxed);
    r#"{"text":"Success","code":0}"#.into()
}

async fn bulk(State(n): State<Count>, body: Bytes) -> String {
    let actions = body.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count() / 2;
    n.fetch_add(actions as u64, Ordering::Relaxed);
    let items: Vec<String> = (0..actions).map(|_| r#"{"create":{"status":201}}"#.to_string()).collect();
    format!(r#"{{"errors":false,"items":[{}]}}"#, items.join(","))
}

async fn array(State(n): State<Count>, body: Bytes) -> &'static str {
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap_or_default();
    n.fetch_add(rows.len() as u64, Ordering::Relaxed);
    "ok"
}

fn alert(i: usize) -> Alert {
    Alert {
        id: format!("alert-bench-{i}"),
        tenant: "acme".into(),
        time_us: chrono::Utc::now().timestamp_micros(),
        last_seen_us: chrono::Utc::now().timestamp_micros(),
        severity: Severity::High,
        title: format!("Encoded PowerShell download cradle on host-{}", i % 500),
        rule_ids: vec!["6f1d3c2a-7b1e-4c55-9a53-0d3e5f8a1b01".into(), "risk".into()],
        entity: format!("acme|host-{}", i % 500),
        risk: Some(87.5),
        count: 1,
        attack_tactics: vec!["execution".into(), "defense-evasion".into()],
        attack_techniques: vec!["T1059.001".into(), "T1027".into()],
        event_ids: vec![format!("ev-{i}")],
        summary: Some("powershell.exe -nop -w hidden -enc SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoAZQBjAHQAIABOAGUAdAAuAFcAZQBiAEMAbABpAGUAbgB0ACkA".into()),
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let total: u64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(50_000);
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let topic = format!("connbench{}.alerts", std::process::id());
    let settings = {
        let mut config = threatpipe::config::AppConfig::load(None, threatpipe::cli::no_scan_overrides()).unwrap();
        config.kafka.brokers = brokers.clone();
        config.kafka_settings()
    };
    rt.block_on(async {
        threatpipe::bus::kafka::ensure_topics(&settings, std::slice::from_ref(&topic), 2).await.unwrap();
        let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &brokers).set("linger.ms", "20").create().unwrap();
        let mut acks = Vec::new();
        for i in 0..total as usize {
            let payload = avro::encode_alert(&alert(i)).unwrap();
            let key = format!("k{i}");
            acks.push(producer.send_result(FutureRecord::to(&topic).key(&key).payload(&payload)).unwrap());
            if acks.len() >= 10_000 {
                for ack in acks.drain(..) {
                    ack.await.unwrap().unwrap();
                }
            }
        }
        for ack in acks {
            ack.await.unwrap().unwrap();
        }
    });

    // Receivers.
    let http_count: Count = Arc::default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http_port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let app = Router::new()
        .route("/services/collector/event", post(hec))
        .route("/_bulk", post(bulk))
        .route("/api/logs", post(array))
        .route("/hook", post(array))
        .with_state(http_count.clone());
    rt.spawn(async move { axum::serve(tokio::net::TcpListener::from_std(listener).unwrap(), app).await });
    let syslog_count: Count = Arc::default();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_port = tcp.local_addr().unwrap().port();
    tcp.set_nonblocking(true).unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    udp.set_nonblocking(true).unwrap();
    {
        let count = syslog_count.clone();
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(tcp).unwrap();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                let count = count.clone();
                tokio::spawn(async move {
                    // Octet-counted frames: "<len> <message>".
                    let mut buffer = Vec::new();
                    let mut chunk = vec![0u8; 64 * 1024];
                    loop {
                        let Ok(n) = stream.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                        let mut at = 0;
                        while let Some(space) = buffer[at..].iter().position(|b| *b == b' ') {
                            let Ok(len) = std::str::from_utf8(&buffer[at..at + space]).unwrap_or("x").parse::<usize>() else { return };
                            if buffer.len() < at + space + 1 + len {
                                break;
                            }
                            at += space + 1 + len;
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        buffer.drain(..at);
                    }
                });
            }
        });
        let count = syslog_count.clone();
        rt.spawn(async move {
            let socket = tokio::net::UdpSocket::from_std(udp).unwrap();
            let mut datagram = vec![0u8; 65_536];
            while socket.recv(&mut datagram).await.is_ok() {
                count.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    // Baseline: read and decode every alert, deliver nothing.
    let baseline = rt.block_on(async {
        let group = format!("connbench{}-baseline", std::process::id());
        let mut consumer = threatpipe::bus::kafka::KafkaConsumer::subscribe(&settings, &group, std::slice::from_ref(&topic)).unwrap();
        let mut t0 = None;
        for _ in 0..total {
            let record = consumer.recv().await.unwrap();
            t0.get_or_insert_with(Instant::now);
            avro::decode_alert(&record.payload).unwrap();
        }
        total as f64 / t0.unwrap().elapsed().as_secs_f64()
    });
    println!("connectors: {total} alerts, batches of 500, receivers in this process, 2 cores shared");
    println!("  {:<28} {:>9.0} alerts/s  1.00x", "baseline (consume + decode)", baseline);

    let lanes: Vec<(&str, String, &Count)> = vec![
        ("splunk_hec (gzip)", format!("[splunk_hec]\nurl = \"http://127.0.0.1:{http_port}\"\ntoken = \"t\"\nindex = \"security\"\n"), &http_count),
        ("elasticsearch bulk (ECS)", format!("[elasticsearch]\nurl = \"http://127.0.0.1:{http_port}\"\n"), &http_count),
        ("sentinel", format!("[sentinel]\nworkspace_id = \"ws\"\nshared_key = \"c2VjcmV0\"\nurl = \"http://127.0.0.1:{http_port}\"\n"), &http_count),
        ("webhook (batch, signed)", format!("[webhook]\nurl = \"http://127.0.0.1:{http_port}/hook\"\nsecret = \"s\"\n"), &http_count),
        ("syslog tcp cef", format!("[syslog]\ntransport = \"tcp\"\naddress = \"127.0.0.1:{tcp_port}\"\nformat = \"cef\"\n"), &syslog_count),
        ("syslog tcp leef", format!("[syslog]\ntransport = \"tcp\"\naddress = \"127.0.0.1:{tcp_port}\"\nformat = \"leef\"\n"), &syslog_count),
        ("syslog udp json", format!("[syslog]\ntransport = \"udp\"\naddress = \"127.0.0.1:{udp_port}\"\nformat = \"json\"\n"), &syslog_count),
    ];
    for (n, (label, section, count)) in lanes.into_iter().enumerate() {
        let file = format!(
            "name = \"bench{n}\"\n[source]\nbrokers = \"{brokers}\"\ntopic = \"{topic}\"\ngroup = \"connbench{}-{n}\"\n[batch]\nmax_alerts = 500\nmax_wait = \"50ms\"\n{section}",
            std::process::id()
        );
        let config: ConnectorConfig = toml::from_str(&file).unwrap();
        assert!(matches!(config.destination, DestinationConfig::SplunkHec(_) | DestinationConfig::Elasticsearch(_) | DestinationConfig::Sentinel(_) | DestinationConfig::Webhook(_) | DestinationConfig::Syslog(_)));
        count.store(0, Ordering::Relaxed);
        let stop = tokio_util::sync::CancellationToken::new();
        let run = rt.spawn(threatpipe::connect::run(config, settings.clone(), stop.clone()));
        let mut started = None;
        let deadline = Instant::now() + Duration::from_secs(300);
        // UDP drops what the receiver's socket buffer cannot hold: stop once nothing more
        // arrives for a second, and time up to the last arrival.
        let (mut last_count, mut last_change) = (0, Instant::now());
        while count.load(Ordering::Relaxed) < total && Instant::now() < deadline {
            let now = count.load(Ordering::Relaxed);
            if started.is_none() && now > 0 {
                started = Some(Instant::now());
            }
            if now != last_count {
                (last_count, last_change) = (now, Instant::now());
            } else if now > 0 && last_change.elapsed() > Duration::from_secs(1) {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let end = if count.load(Ordering::Relaxed) < total { last_change } else { Instant::now() };
        let elapsed = started.map_or(f64::NAN, |s| end.duration_since(s).as_secs_f64());
        let received = count.load(Ordering::Relaxed);
        stop.cancel();
        let _ = rt.block_on(run);
        let rate = received as f64 / elapsed;
        let lost = if received < total { format!(", {} lost in the receiver's socket buffer", total - received) } else { String::new() };
        println!("  {label:<28} {rate:>9.0} alerts/s  {:.2}x  ({received} received{lost})", rate / baseline);
    }
}
