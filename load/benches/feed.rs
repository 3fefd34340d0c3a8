//! The live feed under load: 1,000 WebSocket clients across two instances while raw events
//! that each raise an alert enter `events.raw` at 2,000/s.
//!
//!   CARGO_TARGET_DIR=~/.cache/threatpipe/target cargo bench --bench feed [-- CLIENTS RATE SECONDS TENANTS]
//!
//!   FEED_MODE=fanout cargo bench --bench feed      # the feed alone: alerts published on Redis
//!   FEED_STAGES=one cargo bench --bench feed       # five stages on one instance, alert on both
//!   FEED_PARTITIONS=2 cargo bench --bench feed     # partitions per topic (default 4; 2 = one per instance)
//!
//! (Runs only under `cargo bench`; needs the broker and Redis of scripts/services.sh.)
//! Defaults: 1000 clients, 2000 events/s, 30 s, 20 tenants (each alert goes to the 50
//! clients of its tenant, 25 per instance: 100,000 deliveries/s).
//!
//! Two instances run every stage (same consumer groups, so each raises the alerts of its
//! partitions; with FEED_STAGES=one the second runs only the alert stage) and serve the
//! feed; every client belongs to one tenant. Each event is a DNS query for a known-bad
//! domain from its own address, so each raises its own alert. The producer keeps the send
//! time of every event; a client computes, for every alert, the time from its event's send
//! to the alert's arrival. Reported: p50/p95/p99/max of that
//! end-to-end latency; the same for a plain Redis subscriber on the alert channel (the
//! pipeline alone, before fan-out: the baseline the fan-out cost is read against); the
//! deliveries made and missed; and the servers' memory per client (RSS growth while the
//! clients connect, the instances' allocator keeping what it frees: an upper bound).
//!
//! `FEED_MODE=fanout` leaves the pipeline out: the tool publishes the alerts on the Redis
//! channel itself, as the alert stage does, and the latency is from that publish to the
//! client: what the feed adds, whatever broker is underneath.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use tokio_tungstenite::tungstenite::Message;

const DOMAIN: &str = "update-check.badcdn-threatpipe.test";

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            Some(after.get(11)?.parse::<u64>().ok()? + after.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

fn percentiles(mut v: Vec<i64>) -> String {
    if v.is_empty() {
        return "no samples".into();
    }
    v.sort_unstable();
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0;
    format!("p50 {:6.1} ms  p95 {:6.1} ms  p99 {:6.1} ms  max {:7.1} ms  ({} samples)", at(0.5), at(0.95), at(0.99), at(1.0), v.len())
}

/// The event index in an alert frame (`"event_ids":["feedload-<i>"`), without a full parse.
fn event_index(text: &str) -> Option<usize> {
    let start = text.find("\"event_ids\":[\"feedload-")? + "\"event_ids\":[\"feedload-".len();
    let digits: String = text[start..].chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

struct Instance {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let numbers: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let clients = numbers.first().copied().unwrap_or(1000) as usize;
    let rate = numbers.get(1).copied().unwrap_or(2000);
    let seconds = numbers.get(2).copied().unwrap_or(30);
    let tenants = numbers.get(3).copied().unwrap_or(20) as usize;
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let fanout_only = std::env::var("FEED_MODE").is_ok_and(|m| m == "fanout");
    let partitions: i32 = match std::env::var("FEED_PARTITIONS") {
        Ok(p) => p.parse().ok().filter(|p| *p > 0).unwrap_or_else(|| panic!("FEED_PARTITIONS must be a positive integer, not {p:?}")),
        Err(_) => 4,
    };
    let run = format!("feedload{}", std::process::id());
    let topic = |name: &str| format!("{run}.{name}");

    // Topics.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let names = ["raw", "normalized", "scanned", "correlated", "scored", "alerts", "alerts.json", "dlq"].map(topic);
    let new: Vec<NewTopic<'_>> = names.iter().map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1))).collect();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for result in rt.block_on(admin.create_topics(&new, &AdminOptions::new())).unwrap() {
        result.unwrap();
    }

    // Two instances, every stage, serving the feed.
    let channel = format!("threatpipe:{run}:alerts");
    let mut env: HashMap<String, String> = HashMap::new();
    for (key, name) in [("RAW", "raw"), ("NORMALIZED", "normalized"), ("SCANNED", "scanned"), ("CORRELATED", "correlated"), ("SCORED", "scored"), ("ALERTS", "alerts"), ("ALERTS_JSON", "alerts.json"), ("DLQ", "dlq")] {
        env.insert(format!("THREATPIPE_TOPICS__{key}"), topic(name));
    }
    for (key, value) in [
        ("KAFKA__GROUP_PREFIX", run.clone()),
        ("KAFKA__CREATE_TOPICS", "false".into()),
        ("ALERT__DEDUPE", redis_url.clone()),
        ("ALERT__DEDUPE_PREFIX", format!("threatpipe:{run}:dedupe")),
        ("ALERT__CHANNEL", channel.clone()),
        ("ALERT__STREAM", format!("threatpipe:{run}:stream")),
        ("CORRELATE__CHECKPOINT", "memory".into()),
        ("ML__CHECKPOINT", "memory".into()),
    ] {
        env.insert(format!("THREATPIPE_{key}"), value);
    }
    // The stages' fetch.wait.max.ms, when given (librdkafka's default otherwise; with the
    // patched Tansu of scripts/services.sh a fetch answers as soon as records are there).
    if let Ok(wait) = std::env::var("FEED_FETCH_WAIT_MS") {
        env.insert("THREATPIPE_KAFKA__CONSUMER__FETCH_WAIT_MAX_MS".into(), wait);
    }
    for t in 0..tenants {
        env.insert(format!("THREATPIPE_FEED__TOKENS__tok-tenant-{t:02}"), format!("tenant-{t:02}"));
    }
    // FEED_STAGES=one: the first instance runs the five stages, the second only the alert
    // stage (sharing its partitions with the first's) and the feed: half the consumers and
    // producers on the broker, for the same work.
    let one_pipeline = std::env::var("FEED_STAGES").is_ok_and(|m| m == "one");
    let start_instance = |port: u16, stages: &[&str]| {
        let log = std::env::temp_dir().join(format!("{run}-{port}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_threatpipe"))
            .args(["run", "--brokers", &brokers, "--no-generator", "--quiet", "--http-listen", &format!("127.0.0.1:{port}")])
            .args(stages)
            .envs(&env)
            .env("THREATPIPE_LOG", "warn,threatpipe::bus=info")
            // mimalloc keeps what it frees (no purge), so RSS only grows and memory per client
            // is the growth while the clients connect: with purging on, startup memory handed
            // back in that window made it negative in some runs (-7.5 KiB per client).
            .env("MIMALLOC_PURGE_DELAY", "-1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Instance { child, port, log }
    };
    let free_port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let alert_only: &[&str] = &["--stages", "alert"];
    let (first, second) = match (fanout_only, one_pipeline) {
        (true, _) => (alert_only, alert_only),
        (false, true) => (&[][..], alert_only),
        (false, false) => (&[][..], &[][..]),
    };
    let instances = [start_instance(free_port(), first), start_instance(free_port(), second)];
    let deadline = Instant::now() + Duration::from_secs(120);
    let stages = [first, second].map(|s| if s.is_empty() { 5 } else { 1 });
    while !instances.iter().zip(stages).all(|(i, n)| std::fs::read_to_string(&i.log).unwrap_or_default().matches("Partitions assigned.").count() >= n) {
        assert!(Instant::now() < deadline, "instances did not get their partitions; logs in {:?}", instances.iter().map(|i| &i.log).collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(3)); // let the rebalance settle

    let total = (rate * seconds) as usize;
    let sent_at: Arc<Vec<AtomicI64>> = Arc::new((0..total).map(|_| AtomicI64::new(0)).collect());
    let rss_before: Vec<u64> = instances.iter().map(|i| rss_kib(i.child.id())).collect();

    // The clients, and a plain Redis subscriber (the pipeline alone, before fan-out).
    let latencies: Arc<std::sync::Mutex<Vec<i64>>> = Arc::default();
    let delivered = Arc::new(AtomicU64::new(0));
    let lagged = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let port = instances[c % 2].port;
        let tenant = (c / 2) % tenants;
        let (sent_at, latencies, delivered, lagged, connected, stop) = (sent_at.clone(), latencies.clone(), delivered.clone(), lagged.clone(), connected.clone(), stop.clone());
        tasks.push(rt.spawn(async move {
            let url = format!("ws://127.0.0.1:{port}/feed?token=tok-tenant-{tenant:02}");
            // A 4 KiB read buffer, as the server's: tungstenite's default 128 KiB is zeroed as
            // it is used, and that memset was ~15% of this process's CPU (a browser or
            // `threatpipe tail` runs elsewhere; this load tool shares the cores measured).
            let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096);
            let (mut socket, _) = tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true).await.unwrap();
            connected.fetch_add(1, Ordering::Relaxed);
            let mut mine = Vec::new();
            loop {
                let message = tokio::select! {
                    m = socket.next() => m,
                    _ = stop.cancelled() => break,
                };
                let Some(Ok(Message::Text(text))) = message else {
                    if matches!(message, None | Some(Err(_))) { break } else { continue }
                };
                let received = now_us();
                if let Some(i) = event_index(&text) {
                    let sent = sent_at.get(i).map_or(0, |s| s.load(Ordering::Relaxed));
                    if sent > 0 {
                        mine.push(received - sent);
                    }
                    delivered.fetch_add(1, Ordering::Relaxed);
                } else if text.contains("\"lagged\"") {
                    lagged.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies.lock().unwrap().extend(mine);
        }));
    }
    while (connected.load(Ordering::Relaxed) as usize) < clients {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    let rss_after: Vec<u64> = instances.iter().map(|i| rss_kib(i.child.id())).collect();
    let direct: Arc<std::sync::Mutex<Vec<i64>>> = Arc::default();
    let direct_thread = {
        let (client, channel, sent_at, direct, stop) = (redis::Client::open(redis_url.as_str()).unwrap(), channel.clone(), sent_at.clone(), direct.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut connection = client.get_connection().unwrap();
            let mut pubsub = connection.as_pubsub();
            pubsub.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            pubsub.subscribe(&channel).unwrap();
            let mut mine = Vec::new();
            while !stop.is_cancelled() {
                let Ok(message) = pubsub.get_message() else { continue };
                let received = now_us();
                let payload: String = message.get_payload().unwrap_or_default();
                if let Some(i) = payload.find("\"event_ids\":[\"feedload-").and_then(|_| event_index(&payload)) {
                    let sent = sent_at.get(i).map_or(0, |s| s.load(Ordering::Relaxed));
                    if sent > 0 {
                        mine.push(received - sent);
                    }
                }
            }
            direct.lock().unwrap().extend(mine);
        })
    };

    // Produce at the rate: every event its own source address, tenants round-robin.
    let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
        ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("linger.ms", "1")
            // One request out at a time, as `threatpipe load` (an application writing one
            // topic): at a fixed rate a request per millisecond per partition backlogs Tansu.
            .set("max.in.flight.requests.per.connection", threatpipe::bus::kafka::LOAD_PRODUCER_MAX_IN_FLIGHT)
            .create()
            .unwrap();
    let cpu_before: Vec<u64> = instances.iter().map(|i| cpu_ticks(i.child.id())).collect();
    let started = Instant::now();
    let raw = topic("raw");
    let mut publisher = redis::Client::open(redis_url.as_str()).unwrap().get_connection().unwrap();
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let tenant = format!("tenant-{:02}", i % tenants);
        let ip = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        let payload = serde_json::json!({
            "class_uid": 4003, "activity_id": 1, "time": now_us() / 1000,
            "metadata": {"uid": format!("feedload-{i}"), "product": {"name": "Route 53 Resolver", "vendor_name": "AWS"}, "tenant_uid": tenant},
            "query": {"hostname": DOMAIN, "type": "A"}, "src_endpoint": {"ip": ip}, "rcode": "NoError",
        })
        .to_string();
        let key = format!("{tenant}|{ip}");
        if fanout_only {
            let alert = threatpipe::event::Alert {
                id: format!("alert-feedload-{i}"),
                tenant: tenant.clone(),
                time_us: now_us(),
                last_seen_us: now_us(),
                severity: threatpipe::event::Severity::High,
                title: format!("Known-bad domain {DOMAIN}"),
                rule_ids: vec![format!("ioc:domain:{DOMAIN}")],
                entity: key.clone(),
                count: 1,
                event_ids: vec![format!("feedload-{i}")],
                ..Default::default()
            };
            let json = serde_json::to_string(&alert).unwrap();
            sent_at[i].store(now_us(), Ordering::Relaxed);
            let _: () = redis::pipe().cmd("XADD").arg(format!("threatpipe:{run}:stream")).arg("MAXLEN").arg("~").arg(10_000).arg("*").arg("alert").arg(&json).ignore()
                .cmd("PUBLISH").arg(&channel).arg(&json).ignore().query(&mut publisher).unwrap();
            continue;
        }
        sent_at[i].store(now_us(), Ordering::Relaxed);
        let mut record = BaseRecord::to(&raw).key(key.as_bytes()).payload(payload.as_bytes());
        while let Err((_, back)) = producer.send(record) {
            record = back;
            std::thread::sleep(Duration::from_millis(1));
        }
        if i > 0 && i % (rate as usize * 10) == 0 {
            eprintln!("  {i} events sent, {} deliveries so far", delivered.load(Ordering::Relaxed));
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let produce_secs = started.elapsed().as_secs_f64();
    // Wait for deliveries to stop.
    let mut last = u64::MAX;
    loop {
        std::thread::sleep(Duration::from_secs(3));
        let now = delivered.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    let cpu_secs: Vec<f64> = instances.iter().zip(&cpu_before).map(|(i, b)| (cpu_ticks(i.child.id()) - b) as f64 / 100.0).collect();
    stop.cancel();
    for task in tasks {
        let _ = rt.block_on(task);
    }
    let _ = direct_thread.join();

    let expected = total as u64 * (clients / tenants) as u64;
    let delivered = delivered.load(Ordering::Relaxed);
    let _: () = redis::cmd("DEL").arg(format!("threatpipe:{run}:stream")).query(&mut publisher).unwrap_or(());
    let what = if fanout_only { "alerts published on Redis" } else { "events" };
    println!("live feed: {clients} clients on 2 instances, {tenants} tenants, {total} {what} at {rate}/s over {produce_secs:.1} s");
    println!("  deliveries         {delivered} of {expected} expected ({:.4}); lagged notices {}", delivered as f64 / expected as f64, lagged.load(Ordering::Relaxed));
    println!("  {} → client    {}", if fanout_only { "publish" } else { "event  " }, percentiles(std::mem::take(&mut latencies.lock().unwrap())));
    let baseline = if fanout_only { "publish → a plain Redis subscriber (baseline: Redis alone)" } else { "event → a plain Redis subscriber (baseline: the pipeline before fan-out)" };
    println!("  {baseline}\n                     {}", percentiles(std::mem::take(&mut direct.lock().unwrap())));
    for (n, (before, after)) in rss_before.iter().zip(&rss_after).enumerate() {
        let per = (*after as f64 - *before as f64) / (clients as f64 / 2.0);
        println!("  instance {n}: RSS {before} KiB → {after} KiB with {} clients ({per:.1} KiB per client); CPU {:.1} s", clients / 2, cpu_secs[n]);
    }
}
