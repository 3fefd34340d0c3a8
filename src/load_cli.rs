//! `threatpipe load`: drive a running pipeline and measure it from the far end.
//!
//! It produces generated traffic (realistic mixed events with labelled attacks) to
//! `events.raw` at a target rate (or as fast as the broker takes it) with a progress line,
//! and reads the alerts as they come out (`alerts.json`, from the end). Each produced record
//! is normalized locally at its acknowledged position, which yields the exact event id the
//! pipeline will give it; so every alert maps back to the events it names and their send
//! times. Reported: produce and alert throughput, end-to-end latency percentiles (send →
//! alert read from the topic), detection recall on the labelled attacks (per event and per
//! scenario), and the pipeline's consumer lag when `--metrics` URLs are given.
//!
//! With `--feed URL --feed-token T` a WebSocket client on an instance's live feed (`/feed`)
//! is measured too: send → alert shown to a feed client, the latency a person watching sees.
//! The token should carry the tenant `*` (all tenants) so every alert counts.
//!
//! `--passthrough` measures a pass-through deployment (`pipeline.passthrough = true`, same
//! hops, same broker) instead: there every raw record arrives unchanged on the measured
//! topic (`alerts`), and is matched by its bytes. That is the baseline a full run is quoted
//! against.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::generator::{EventGenerator, GeneratorConfig, Origin};

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    threatpipe load --brokers 127.0.0.1:9092 --rate 5000 --duration 30s\n  \
    threatpipe load --rate 0 --count 200000 --json result.json\n  \
    threatpipe load --passthrough --rate 0 --count 200000     # against a pass-through deployment")]
pub struct LoadArgs {
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Events per second; 0 = as fast as the broker acknowledges.
    #[arg(long, default_value_t = 5000)]
    pub rate: u64,
    /// How long to produce (ignored with --count).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Produce exactly this many events.
    #[arg(long)]
    pub count: Option<u64>,
    #[arg(long, default_value = "events.raw")]
    pub raw_topic: String,
    /// Where results are read: alerts.json (JSON alerts) or, with --passthrough, alerts.
    #[arg(long)]
    pub measure_topic: Option<String>,
    /// Measure a pass-through deployment (every raw record arrives on the measured topic).
    #[arg(long)]
    pub passthrough: bool,
    /// After producing, wait up to this long for the pipeline to take every event.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// Also measure a live-feed client: an instance's feed (ws://HOST:PORT; /feed is added).
    #[arg(long, value_name = "URL", requires = "feed_token")]
    pub feed: Option<String>,
    /// Token for --feed; one whose tenant is `*` sees every tenant's alerts.
    #[arg(long, env = "THREATPIPE_TOKEN", hide_env_values = true)]
    pub feed_token: Option<String>,
    /// Instances' /metrics URLs: their threatpipe_stage_lag is sampled (repeatable).
    #[arg(long)]
    pub metrics: Vec<String>,
    /// Generator seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// A produce result: (partition, offset) or the error, the record, its label, send time.
type Acked = (Result<(i32, i64), String>, Vec<u8>, String, Origin, i64);

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// The nearest-rank `p` quantile of a sorted, non-empty slice.
fn nearest_rank(sorted: &[i64], p: f64) -> i64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn percentiles_ms(mut v: Vec<i64>) -> serde_json::Value {
    if v.is_empty() {
        return serde_json::Value::Null;
    }
    v.sort_unstable();
    let at = |p: f64| nearest_rank(&v, p) as f64 / 1000.0;
    serde_json::json!({"p50": at(0.5), "p95": at(0.95), "p99": at(0.99), "max": at(1.0), "samples": v.len()})
}

/// Latency per second of arrival, from the first result: whether a run's tail comes from a
/// few stalls (one or two seconds far above the rest) or from steady queueing. Each entry
/// is `[second, results, p50 ms, p99 ms, max ms]`; `worst` names the second with the
/// highest p99.
fn latency_by_second(pairs: &[(i64, i64)]) -> serde_json::Value {
    let Some(first) = pairs.iter().map(|(received, _)| *received).min() else {
        return serde_json::Value::Null;
    };
    let mut seconds: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (received, latency) in pairs {
        seconds.entry((received - first) / 1_000_000).or_default().push(*latency);
    }
    let ms = |us: i64| (us as f64 / 1000.0 * 10.0).round() / 10.0;
    let mut rows = Vec::with_capacity(seconds.len());
    let mut worst: Option<(i64, i64)> = None;
    for (second, mut latencies) in seconds {
        latencies.sort_unstable();
        let at = |p: f64| nearest_rank(&latencies, p);
        let p99 = at(0.99);
        if worst.is_none_or(|(_, w)| p99 > w) {
            worst = Some((second, p99));
        }
        rows.push(serde_json::json!([second, latencies.len(), ms(at(0.5)), ms(p99), ms(at(1.0))]));
    }
    serde_json::json!({
        "columns": ["second", "results", "p50_ms", "p99_ms", "max_ms"],
        "rows": rows,
        "worst": worst.map(|(second, p99)| serde_json::json!({"second": second, "p99_ms": ms(p99)})),
    })
}

/// Sum over the given /metrics URLs of the series whose line starts with `prefix`.
async fn sample(urls: &[String], prefix: &str) -> Option<f64> {
    if urls.is_empty() {
        return None;
    }
    let mut total = 0.0;
    for url in urls {
        let (_, body) = crate::cli::http_get(url, Duration::from_secs(2)).await.ok()?;
        for line in String::from_utf8_lossy(&body).lines().filter(|l| l.starts_with(prefix)) {
            total += line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        }
    }
    Some(total)
}

async fn sample_lag(urls: &[String]) -> Option<f64> {
    sample(urls, crate::telemetry::names::STAGE_LAG).await
}

/// Records the alert stage (the last hop) has taken, over the instances.
async fn last_stage_in(urls: &[String]) -> Option<f64> {
    sample(urls, &format!("{}{{stage=\"alert\"}}", crate::telemetry::names::STAGE_RECORDS_IN)).await
}

pub async fn run(args: &LoadArgs) -> anyhow::Result<()> {
    let measure_topic = args.measure_topic.clone().unwrap_or_else(|| if args.passthrough { "alerts".into() } else { "alerts.json".into() });
    let total = args.count.unwrap_or_else(|| if args.rate == 0 { 100_000 } else { args.rate * args.duration.as_secs().max(1) });
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("linger.ms", if args.rate == 0 { "20" } else { "1" })
        .set("message.max.bytes", "10000000")
        // One request out at a time (`LOAD_PRODUCER_MAX_IN_FLIGHT`), so at a fixed rate
        // the broker is not sent a request per millisecond per partition (on Tansu at 5,000
        // events/s, unbounded, this producer's requests backlogged the pass-through).
        .set("max.in.flight.requests.per.connection", crate::bus::kafka::LOAD_PRODUCER_MAX_IN_FLIGHT)
        .create()
        .context("producer")?;
    // The reader starts at the end of the measured topic, before anything is produced.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", format!("threatpipe-load-{}-{}", std::process::id(), now_us()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "latest")
        .set("fetch.wait.max.ms", "20")
        .create()
        .context("consumer")?;
    consumer.subscribe(&[&measure_topic]).with_context(|| format!("subscribe {measure_topic}"))?;
    let join_deadline = Instant::now() + Duration::from_secs(30);
    while consumer.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
        if Instant::now() > join_deadline {
            anyhow::bail!("no partitions of {measure_topic} assigned within 30 s (does the topic exist on {}?)", args.brokers);
        }
        // Polling drives the group join.
        let _ = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // What arrives: alerts (receive time, event ids they name) from a pipeline, or every
    // record's bytes hash from a pass-through; only what the mode reads is made, so the
    // load tool, on the same cores, spends in one lane no work the other does not need
    // (a pass-through lane used to try every raw event as an alert too).
    let stop_reading = tokio_util::sync::CancellationToken::new();
    let stop = stop_reading.clone();
    let passthrough = args.passthrough;
    let reader = tokio::spawn(async move {
        let mut arrivals: Vec<Arrival> = Vec::new();
        // (receive time, bytes hash, create time) of every record.
        let mut hashes: Vec<(i64, u64, Option<i64>)> = Vec::new();
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => break,
                m = consumer.recv() => m,
            };
            let Ok(message) = message else { continue };
            let received = now_us();
            let payload = message.payload().unwrap_or_default();
            let created = message.timestamp().to_millis().map(|ms| ms * 1000);
            if passthrough {
                hashes.push((received, xxhash_rust::xxh3::xxh3_64(payload), created));
            } else if let Ok(alert) = serde_json::from_slice::<crate::event::Alert>(payload) {
                arrivals.push(Arrival { received, created, event_ids: alert.event_ids });
            }
        }
        (arrivals, hashes)
    });

    let feed_reader = match (&args.feed, &args.feed_token) {
        (Some(url), Some(token)) if !args.passthrough => {
            let url = format!("{}/feed", crate::feed::tail::base_url(url));
            let socket = crate::feed::tail::connect(&url, token, "--feed-token").await?;
            eprintln!("[load] watching the live feed at {url}");
            Some(tokio::spawn(read_feed(socket, stop_reading.clone())))
        }
        _ => None,
    };

    let last_in_before = last_stage_in(&args.metrics).await;
    let dead_before = sample(&args.metrics, crate::telemetry::names::STAGE_DEAD_LETTERED).await.unwrap_or(0.0);
    // Produce.
    let mut generator = EventGenerator::new(GeneratorConfig { seed: args.seed, ..GeneratorConfig::default() });
    let normalizer = crate::normalize::Normalizer::new(crate::normalize::NormalizeConfig::default(), "default");
    let mut acks = FuturesUnordered::new();
    // event id → (send time, attack scenario)
    let mut sent: HashMap<String, (i64, Option<&'static str>)> = HashMap::new();
    let mut sent_by_hash: HashMap<u64, (i64, bool)> = HashMap::new();
    let mut attacks_per_scenario: BTreeMap<&'static str, u64> = BTreeMap::new();
    let started = Instant::now();
    let mut produced = 0u64;
    let mut last_progress = Instant::now();
    let mut lag_samples = Vec::new();
    let record_ack = |result: Acked,
                      sent: &mut HashMap<String, (i64, Option<&'static str>)>,
                      sent_by_hash: &mut HashMap<u64, (i64, bool)>|
     -> anyhow::Result<()> {
        let (delivery, payload, key, origin, send_us) = result;
        let (partition, offset) = delivery.map_err(|e| anyhow::anyhow!("produce failed: {e}"))?;
        sent_by_hash.insert(xxhash_rust::xxh3::xxh3_64(&payload), (send_us, matches!(origin, Origin::Attack(_))));
        let record = crate::bus::Record { topic: args.raw_topic.as_str().into(), partition, offset, key: Some(key.into_bytes()), payload, timestamp_ms: None };
        if let Ok(event) = normalizer.normalize(&record, send_us) {
            let scenario = match origin {
                Origin::Attack(name) => Some(name),
                _ => None,
            };
            sent.insert(event.id, (send_us, scenario));
        }
        Ok(())
    };
    while produced < total {
        if args.rate > 0 {
            let due = started + Duration::from_secs_f64(produced as f64 / args.rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        }
        let record = generator.next_record(now_us());
        if let Origin::Attack(name) = record.origin {
            *attacks_per_scenario.entry(name).or_default() += 1;
        }
        let send_us = now_us();
        let (payload, key, origin) = (record.payload, record.key, record.origin);
        let delivery = producer.send_result(FutureRecord::to(&args.raw_topic).key(&key).payload(&payload)).map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
        acks.push(async move {
            let position = match delivery.await {
                Ok(Ok(d)) => Ok((d.partition, d.offset)),
                Ok(Err((e, _))) => Err(e.to_string()),
                Err(_) => Err("delivery canceled".to_string()),
            };
            (position, payload, key, origin, send_us)
        });
        produced += 1;
        while acks.len() > 20_000 {
            if let Some(done) = acks.next().await {
                record_ack(done, &mut sent, &mut sent_by_hash)?;
            }
        }
        while let Some(Some(done)) = futures::FutureExt::now_or_never(acks.next()) {
            record_ack(done, &mut sent, &mut sent_by_hash)?;
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            let elapsed = started.elapsed().as_secs_f64();
            eprint!("\r[load] {produced}/{total} events, {:.0}/s, {:.0}s   ", produced as f64 / elapsed, elapsed);
            if let Some(lag) = sample_lag(&args.metrics).await {
                lag_samples.push(lag);
            }
        }
    }
    while let Some(done) = acks.next().await {
        record_ack(done, &mut sent, &mut sent_by_hash)?;
    }
    let produce_secs = started.elapsed().as_secs_f64();
    eprintln!("\r[load] {produced} events produced in {produce_secs:.1} s; waiting for the pipeline to take them (up to {:?} after the last)", args.drain);
    // Throughput at the far end: when the last stage has taken every event (with --metrics),
    // else the drain time passes. Records the last stage had before we began are subtracted.
    let mut through_secs = None;
    let drain_deadline = Instant::now() + args.drain;
    loop {
        // Dead letters leave the pipeline early (malformed input at normalize).
        let dead = sample(&args.metrics, crate::telemetry::names::STAGE_DEAD_LETTERED).await.unwrap_or(0.0);
        if let (Some(now), Some(before)) = (last_stage_in(&args.metrics).await, last_in_before) {
            if now - before + (dead - dead_before) >= produced as f64 {
                through_secs = Some(started.elapsed().as_secs_f64());
                break;
            }
        }
        if Instant::now() >= drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The last alerts need a moment to reach the measured topic.
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let Some(lag) = sample_lag(&args.metrics).await {
        lag_samples.push(lag);
    }
    stop_reading.cancel();
    let (arrivals, hashes) = reader.await.context("the result reader stopped")?;
    let mut result = summarize(args, produced, produce_secs, &sent, &sent_by_hash, &attacks_per_scenario, &arrivals, &hashes, &lag_samples);
    if let Some(feed_reader) = feed_reader {
        let (feed_arrivals, lagged) = feed_reader.await.context("the feed reader stopped")?;
        let latencies: Vec<i64> = first_sightings(&feed_arrivals, &sent).iter().map(|s| s.received - s.send).collect();
        result["feed"] = serde_json::json!({
            "alerts": feed_arrivals.len(),
            "events_named": latencies.len(),
            "lagged_notices": lagged,
            "latency_ms": percentiles_ms(latencies),
        });
    }
    result["pipeline_events_per_second"] = through_secs.map(|t| produced as f64 / t).into();
    result["all_taken_by_last_stage"] = through_secs.is_some().into();
    print_table(&result);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&result)? + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("[load] results written to {}", path.display());
    }
    Ok(())
}

fn print_table(r: &serde_json::Value) {
    let f = |v: &serde_json::Value| v.as_f64().map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into());
    println!("{:<28} {}", "mode", r["mode"].as_str().unwrap_or(""));
    println!("{:<28} {} at {}/s target ({:.0}/s achieved)", "events produced", r["produced"], r["target_rate"], r["produce_rate"].as_f64().unwrap_or(0.0));
    match r["pipeline_events_per_second"].as_f64() {
        Some(rate) => println!("{:<28} {rate:.0} events/s (produced / time until the last stage took them all)", "pipeline throughput"),
        None => println!("{:<28} unknown (no --metrics, or the last stage had not taken every event by the end of --drain)", "pipeline throughput"),
    }
    println!("{:<28} {} ({:.0}/s while arriving)", "results read", r["results"], r["results_per_second"].as_f64().unwrap_or(f64::NAN));
    let l = &r["latency_ms"];
    println!("{:<28} p50 {} ms, p95 {} ms, p99 {} ms, max {} ms", "end-to-end latency", f(&l["p50"]), f(&l["p95"]), f(&l["p99"]), f(&l["max"]));
    let (to_last, last_hop, attacks) = (&r["split_ms"]["to_last_stage"], &r["split_ms"]["last_hop"], &r["attack_latency_ms"]);
    println!("{:<28} to the last stage's produce p50 {} / p99 {} ms; from there to here p50 {} / p99 {} ms", "  of which", f(&to_last["p50"]), f(&to_last["p99"]), f(&last_hop["p50"]), f(&last_hop["p99"]));
    println!("{:<28} p50 {} ms, p99 {} ms ({} events)", "  attack events alone", f(&attacks["p50"]), f(&attacks["p99"]), attacks["samples"]);
    if let Some(rows) = r["latency_by_second"]["rows"].as_array() {
        // A tail made of a few bad seconds (stalls) reads differently from one spread evenly.
        let p99s: Vec<f64> = rows.iter().filter_map(|row| row[3].as_f64()).collect();
        let mut sorted = p99s.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
        let over = p99s.iter().filter(|p| **p > 2.0 * median).count();
        // Seconds between the first result and the last in which none arrived: a stall.
        let span = rows.last().and_then(|row| row[0].as_u64()).map_or(0, |last| last + 1);
        let silent = span.saturating_sub(rows.len() as u64);
        let worst = &r["latency_by_second"]["worst"];
        println!(
            "{:<28} median of the per-second p99s {median:.1} ms; worst second {} (p99 {} ms); {over} of {} seconds over twice the median; {silent} without a result",
            "latency per second",
            worst["second"],
            f(&worst["p99_ms"]),
            p99s.len()
        );
    }
    if !r["recall"].is_null() {
        let rc = &r["recall"];
        println!("{:<28} {:.3} of attack events in alerts ({} of {}); scenarios detected {} of {}", "detection recall", rc["event_recall"].as_f64().unwrap_or(0.0), rc["attack_events_in_alerts"], rc["attack_events"], rc["scenarios_detected"], rc["scenarios_total"]);
        if let Some(scenarios) = rc["scenarios"].as_object() {
            for (name, v) in scenarios {
                println!("{:<28}   {name}: {} of {} events", "", v["in_alerts"], v["events"]);
            }
        }
    }
    if !r["feed"].is_null() {
        let feed = &r["feed"];
        let l = &feed["latency_ms"];
        println!("{:<28} p50 {} ms, p95 {} ms, p99 {} ms, max {} ms ({} alerts naming {} events; {} lagged notices)", "to a live-feed client", f(&l["p50"]), f(&l["p95"]), f(&l["p99"]), f(&l["max"]), feed["alerts"], feed["events_named"], feed["lagged_notices"]);
    }
    if !r["lag_max"].is_null() {
        println!("{:<28} max {} records, {} at the end", "consumer lag (all stages)", r["lag_max"], r["lag_end"]);
    }
}

/// An alert read at the far end: off the measured topic or a live-feed socket.
struct Arrival {
    received: i64,
    /// When the last stage produced it (the Kafka record's create time, to the
    /// millisecond); none from the live feed.
    created: Option<i64>,
    event_ids: Vec<String>,
}

/// A sent event named by an arriving alert for the first time.
struct Sighting {
    received: i64,
    created: Option<i64>,
    send: i64,
    scenario: Option<&'static str>,
}

/// The first time each sent event was named by an arriving alert, in arrival order.
fn first_sightings(arrivals: &[Arrival], sent: &HashMap<String, (i64, Option<&'static str>)>) -> Vec<Sighting> {
    let mut seen: HashSet<&str> = HashSet::new();
    let mut sightings = Vec::new();
    for Arrival { received, created, event_ids } in arrivals {
        for id in event_ids {
            if let Some((send, scenario)) = sent.get(id) {
                if seen.insert(id.as_str()) {
                    sightings.push(Sighting { received: *received, created: *created, send: *send, scenario: *scenario });
                }
            }
        }
    }
    sightings
}

/// Reads alerts off a live-feed socket until `stop`: (receive time, event ids) per alert,
/// and how many "lagged" notices (alerts the server skipped for this client) came.
async fn read_feed(
    mut socket: crate::feed::tail::FeedSocket,
    stop: tokio_util::sync::CancellationToken,
) -> (Vec<Arrival>, u64) {
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    #[derive(serde::Deserialize)]
    struct Frame {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        alert: Option<crate::event::Alert>,
        #[serde(default)]
        skipped: Option<u64>,
    }
    let (mut arrivals, mut lagged) = (Vec::new(), 0u64);
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => break,
            m = socket.next() => m,
        };
        let text = match message {
            Some(Ok(WsMessage::Text(text))) => text,
            Some(Ok(WsMessage::Close(_))) | None => {
                eprintln!("\n[load] the live feed closed the connection");
                break;
            }
            Some(Err(e)) => {
                eprintln!("\n[load] the live feed failed: {e}");
                break;
            }
            Some(Ok(_)) => continue,
        };
        let received = now_us();
        let Ok(frame) = serde_json::from_str::<Frame>(&text) else { continue };
        match (frame.kind.as_str(), frame.alert) {
            ("alert", Some(alert)) => arrivals.push(Arrival { received, created: None, event_ids: alert.event_ids }),
            ("lagged", _) => lagged += frame.skipped.unwrap_or(1),
            _ => {}
        }
    }
    let _ = socket.close(None).await;
    (arrivals, lagged)
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    args: &LoadArgs,
    produced: u64,
    produce_secs: f64,
    sent: &HashMap<String, (i64, Option<&'static str>)>,
    sent_by_hash: &HashMap<u64, (i64, bool)>,
    attacks_per_scenario: &BTreeMap<&'static str, u64>,
    arrivals: &[Arrival],
    hashes: &[(i64, u64, Option<i64>)],
    lag_samples: &[f64],
) -> serde_json::Value {
    // (arrival, latency) of each result; of each, send → produced by the last stage and
    // produced → read here (a record without a create time counts as produced on arrival);
    // and the latency of results that are attack events.
    let mut timed: Vec<(i64, i64)> = Vec::new();
    let (mut to_last_stage, mut last_hop, mut attack_latency) = (Vec::new(), Vec::new(), Vec::new());
    let mut time = |received: i64, created: Option<i64>, send: i64, attack: bool| {
        let created = created.unwrap_or(received);
        timed.push((received, received - send));
        to_last_stage.push(created - send);
        last_hop.push(received - created);
        if attack {
            attack_latency.push(received - send);
        }
    };
    let mut scenarios_detected: BTreeMap<&'static str, u64> = BTreeMap::new();
    if args.passthrough {
        let mut seen = HashSet::new();
        for (received, hash, created) in hashes {
            if let Some((send, attack)) = sent_by_hash.get(hash) {
                if seen.insert(*hash) {
                    time(*received, *created, *send, *attack);
                }
            }
        }
    } else {
        for Sighting { received, created, send, scenario } in first_sightings(arrivals, sent) {
            time(received, created, send, scenario.is_some());
            if let Some(s) = scenario {
                *scenarios_detected.entry(s).or_default() += 1;
            }
        }
    }
    let first = timed.iter().map(|(received, _)| *received).min().unwrap_or(i64::MAX);
    let last = timed.iter().map(|(received, _)| *received).max().unwrap_or(i64::MIN);
    let latencies: Vec<i64> = timed.iter().map(|(_, latency)| *latency).collect();
    let arrived = latencies.len();
    let span = if last > first { (last - first) as f64 / 1e6 } else { f64::NAN };
    let attack_events: u64 = attacks_per_scenario.values().sum();
    let detected_attack_events: u64 = scenarios_detected.values().sum();
    serde_json::json!({
        "mode": if args.passthrough { "pass-through" } else { "pipeline" },
        "target_rate": args.rate,
        "produced": produced,
        "produce_rate": produced as f64 / produce_secs,
        "results": arrived,
        "results_per_second": arrived as f64 / span,
        "latency_ms": percentiles_ms(latencies),
        "latency_by_second": latency_by_second(&timed),
        // Where the time went (the last stage's produce time has millisecond resolution),
        // and the latency of attack events alone: the pipeline measures only those.
        "split_ms": {"to_last_stage": percentiles_ms(to_last_stage), "last_hop": percentiles_ms(last_hop)},
        "attack_latency_ms": percentiles_ms(attack_latency),
        "recall": if args.passthrough { serde_json::Value::Null } else { serde_json::json!({
            "attack_events": attack_events,
            "attack_events_in_alerts": detected_attack_events,
            "event_recall": detected_attack_events as f64 / attack_events.max(1) as f64,
            "scenarios": attacks_per_scenario.keys().map(|s| (s.to_string(), serde_json::json!({"events": attacks_per_scenario[s], "in_alerts": scenarios_detected.get(s).copied().unwrap_or(0)}))).collect::<serde_json::Map<_, _>>(),
            "scenarios_detected": scenarios_detected.len(),
            "scenarios_total": attacks_per_scenario.len(),
        })},
        "lag_max": lag_samples.iter().cloned().fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v)))),
        "lag_end": lag_samples.last(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use clap::Parser;

    use super::{latency_by_second, summarize, Arrival, LoadArgs};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        load: LoadArgs,
    }

    fn args(extra: &[&str]) -> LoadArgs {
        Cli::parse_from(["load"].iter().chain(extra)).load
    }

    #[test]
    fn each_result_splits_at_the_last_stage_and_attack_events_are_timed_alone() {
        // Sent at 0, 1,000 and 2,000 µs; "b" is an attack event. The alerts naming them were
        // produced 7, 9 and 8 ms after the sends and read 2, 3 and 1 ms later; the second
        // alert's repeat of "a" counts no more.
        let sent: HashMap<String, (i64, Option<&'static str>)> =
            HashMap::from([("a".into(), (0, None)), ("b".into(), (1_000, Some("brute_force"))), ("c".into(), (2_000, None))]);
        let arrival = |received: i64, created: i64, ids: &[&str]| Arrival { received, created: Some(created), event_ids: ids.iter().map(|id| id.to_string()).collect() };
        let arrivals = [arrival(9_000, 7_000, &["a"]), arrival(13_000, 10_000, &["b", "a"]), arrival(11_000, 10_000, &["c"])];
        let r = summarize(&args(&[]), 3, 1.0, &sent, &HashMap::new(), &BTreeMap::from([("brute_force", 1)]), &arrivals, &[], &[]);
        assert_eq!(r["latency_ms"]["samples"], 3);
        assert_eq!(r["latency_ms"]["max"], 12.0);
        assert_eq!(r["split_ms"]["to_last_stage"]["p50"], 8.0);
        assert_eq!(r["split_ms"]["to_last_stage"]["max"], 9.0);
        assert_eq!(r["split_ms"]["last_hop"]["p50"], 2.0);
        assert_eq!(r["split_ms"]["last_hop"]["max"], 3.0);
        assert_eq!(r["attack_latency_ms"]["samples"], 1);
        assert_eq!(r["attack_latency_ms"]["p50"], 12.0);
        assert_eq!(r["recall"]["attack_events_in_alerts"], 1);

        // Pass-through: results matched by their bytes' hash; only the attack's is timed alone.
        let by_hash = HashMap::from([(1u64, (0i64, false)), (2u64, (1_000i64, true))]);
        let hashes = [(5_000, 1u64, Some(4_000)), (6_000, 2u64, Some(5_000)), (6_500, 2u64, Some(5_000))];
        let r = summarize(&args(&["--passthrough"]), 2, 1.0, &HashMap::new(), &by_hash, &BTreeMap::new(), &[], &hashes, &[]);
        assert_eq!(r["latency_ms"]["samples"], 2);
        assert_eq!(r["split_ms"]["to_last_stage"]["max"], 4.0);
        assert_eq!(r["split_ms"]["last_hop"]["max"], 1.0);
        assert_eq!(r["attack_latency_ms"]["samples"], 1);
        assert_eq!(r["attack_latency_ms"]["p50"], 5.0);
    }

    #[test]
    fn latency_by_second_buckets_by_arrival_and_names_the_worst_second() {
        // Second 0: 3 ms and 5 ms; second 1: a 900 ms stall; second 2: 4 ms.
        let pairs = [(10_000_000, 3_000), (10_500_000, 5_000), (11_200_000, 900_000), (12_000_001, 4_000)];
        let timeline = latency_by_second(&pairs);
        let rows = timeline["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0], serde_json::json!([0, 2, 5.0, 5.0, 5.0]));
        assert_eq!(rows[1], serde_json::json!([1, 1, 900.0, 900.0, 900.0]));
        assert_eq!(timeline["worst"], serde_json::json!({"second": 1, "p99_ms": 900.0}));
        assert!(latency_by_second(&[]).is_null());
    }
}
