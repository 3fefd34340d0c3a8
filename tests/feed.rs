//! The live feed on the real broker and Redis: two instances each run the alert stage and
//! serve the feed. A client on either instance gets every alert of its tenant exactly once
//! and none of another tenant's, whichever instance raised it; bad tokens are refused; a
//! client that stops reading does not hold up the others; a reconnecting client resumes
//! from an alert id.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use support::{create_topics, free_port, http_get, produce_all, stage_env, unique, wait_assigned, StageProcess, TopicReader};
use threatpipe::event::{avro, Event, Match};
use threatpipe::feed::auth::sign_hs256;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const SECRET: &str = "feed-test-secret-0123456789";

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

async fn connect(port: u16, query: &str) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let request = format!("ws://127.0.0.1:{port}/feed?{query}").into_client_request()?;
    tokio_tungstenite::connect_async(request).await.map(|(socket, _)| socket)
}

fn refused_status(result: Result<Socket, tokio_tungstenite::tungstenite::Error>) -> u16 {
    match result {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("the connection was accepted"),
    }
}

/// What one client saw: alerts (id, tenant, latency from being raised to arriving, µs)
/// and every other frame.
#[derive(Default)]
struct Seen {
    alerts: Vec<(String, String, i64)>,
    notices: Vec<serde_json::Value>,
}

/// Reads until `want` alerts arrived or `quiet` passed without one (pings do not count).
async fn collect(mut socket: Socket, want: usize, quiet: Duration) -> (Seen, Socket) {
    let mut seen = Seen::default();
    let mut deadline = tokio::time::Instant::now() + quiet;
    while seen.alerts.len() < want {
        let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, socket.next()).await else { break };
        let Message::Text(text) = message else { continue };
        deadline = tokio::time::Instant::now() + quiet;
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        if value["type"] == "alert" {
            let alert = &value["alert"];
            let latency = now_us() - alert["time_us"].as_i64().unwrap();
            seen.alerts.push((alert["id"].as_str().unwrap().into(), alert["tenant"].as_str().unwrap().into(), latency));
        } else {
            seen.notices.push(value);
        }
    }
    (seen, socket)
}

fn scored(round: usize, i: usize, tenant: &str) -> Event {
    Event {
        id: format!("feed-ev-{round}-{i}"),
        tenant: tenant.into(),
        partition_key: format!("{tenant}|host-{round}-{i}"),
        time_us: now_us(),
        // 4 KB summaries: the stalled client's socket buffers fill within the run.
        message: Some(format!("event {i} {}", "x".repeat(4096))),
        matches: vec![Match {
            rule_id: "r-feed-test".into(),
            title: "Feed test detection".into(),
            level: "high".into(),
            kind: "sigma".into(),
            tags: vec!["attack.execution".into(), "attack.t1059".into()],
            ..Match::default()
        }],
        ..Event::default()
    }
}

fn percentile(mut values: Vec<i64>, p: f64) -> i64 {
    values.sort_unstable();
    values[((values.len() as f64 - 1.0) * p).round() as usize]
}

#[test]
fn two_instances_deliver_each_tenant_its_alerts_once_and_a_slow_client_delays_nobody() {
    support::require_broker();
    let (scored_topic, alerts, alerts_json, dlq) = (unique("feed.scored"), unique("feed.alerts"), unique("feed.alerts.json"), unique("feed.dlq"));
    create_topics(&[&scored_topic, &alerts, &alerts_json, &dlq], 2);
    let mut env = stage_env("feed", "alert");
    let (channel, stream) = (unique("tp-test:feed:channel"), unique("tp-test:feed:stream"));
    let (acme_token, globex_token) = (unique("tok-acme"), unique("tok-globex"));
    for (key, value) in [
        ("TOPICS__SCORED", scored_topic.clone()),
        ("TOPICS__ALERTS", alerts.clone()),
        ("TOPICS__ALERTS_JSON", alerts_json.clone()),
        ("TOPICS__DLQ", dlq.clone()),
        ("ALERT__DEDUPE", redis_url()),
        ("ALERT__DEDUPE_PREFIX", unique("tp-test:feed:dedupe")),
        ("ALERT__CHANNEL", channel.clone()),
        ("ALERT__STREAM", stream.clone()),
        ("FEED__JWT_SECRET", SECRET.into()),
        ("FEED__PING_INTERVAL", "1s".into()),
        ("FEED__IDLE_TIMEOUT", "120s".into()),
        (&format!("FEED__TOKENS__{acme_token}"), "acme".into()),
        (&format!("FEED__TOKENS__{globex_token}"), "globex".into()),
    ] {
        env.insert(format!("THREATPIPE_{key}"), value);
    }
    let (port_a, port_b) = (free_port(), free_port());
    let a = StageProcess::start_serving("feed-a", &format!("127.0.0.1:{port_a}"), &[], &env);
    let b = StageProcess::start_serving("feed-b", &format!("127.0.0.1:{port_b}"), &[], &env);
    wait_assigned(&[&a, &b]);
    // Both instances subscribed to the channel.
    let mut redis = redis::Client::open(redis_url()).unwrap().get_connection().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, subscribers): (String, i64) = redis::cmd("PUBSUB").arg("NUMSUB").arg(&channel).query::<Vec<(String, i64)>>(&mut redis).unwrap().remove(0);
        if subscribers == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "instances did not subscribe to {channel}:\n{}\n---\n{}", a.log_text(), b.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, page) = http_get(port_a, "/").unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("live threat feed"));

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let jwt = |tenant: &str, secret: &str, exp: i64| sign_hs256(&serde_json::json!({"tenant": tenant, "sub": "test", "exp": exp}), secret.as_bytes());
    let later = chrono::Utc::now().timestamp() + 3600;

    rt.block_on(async {
        // Refused: no token, an unknown token, a JWT signed with another key, an expired JWT.
        assert_eq!(refused_status(connect(port_a, "").await), 401);
        assert_eq!(refused_status(connect(port_b, "token=nope").await), 401);
        assert_eq!(refused_status(connect(port_a, &format!("token={}", jwt("acme", "some-other-secret-value", later))).await), 401);
        assert_eq!(refused_status(connect(port_b, &format!("token={}", jwt("acme", SECRET, 1000))).await), 401);
        assert_eq!(refused_status(connect(port_a, &format!("token={acme_token}&severity=severe")).await), 400);
    });

    // Round 1: the stalled client on instance a.
    let tokens = Tokens { acme_static: acme_token.clone(), globex_static: globex_token.clone(), acme_jwt: jwt("acme", SECRET, later), globex_jwt: jwt("globex", SECRET, later) };
    let mut topic = TopicReader::new(&alerts_json);
    let mut raised = HashSet::new();
    let first = run_round(&rt, 1, (port_a, port_b), &tokens, &scored_topic, &mut topic, &mut raised);

    // The stalled client really fell behind: once it reads, it is told what it missed.
    let (stalled_seen, _) = rt.block_on(collect(first.stalled, usize::MAX, Duration::from_secs(5)));
    let skipped: u64 = stalled_seen.notices.iter().filter(|n| n["type"] == "lagged").map(|n| n["skipped"].as_u64().unwrap()).sum();
    assert!(skipped > 0, "the stalled client never overflowed (got {} alerts)", stalled_seen.alerts.len());
    assert_eq!(stalled_seen.alerts.len() as u64 + skipped, PER_TENANT as u64, "stalled: delivered + skipped = all of its tenant's");
    eprintln!("stalled client: {} delivered, {skipped} skipped and reported", stalled_seen.alerts.len());
    let acme_order = first.acme_order;

    // Resume: a client reconnecting with the 500th alert id it saw gets exactly what followed
    // it on the stream (from the other instance).
    // The stream may hold an alert twice (a rebalance replayed it): what a resuming client
    // is owed is what follows the newest copy of `since` and was not already before it.
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE").arg(&stream).arg("-").arg("+").query(&mut redis).unwrap();
    let stream_acme: Vec<(String, i64)> = entries
        .iter()
        .map(|(_, fields)| serde_json::from_str::<serde_json::Value>(&fields[1]).unwrap())
        .filter(|a| a["tenant"] == "acme")
        .map(|a| (a["id"].as_str().unwrap().to_string(), a["count"].as_i64().unwrap()))
        .collect();
    assert_eq!(stream_acme.iter().collect::<HashSet<_>>().len(), PER_TENANT);
    let since = &acme_order[499];
    let position = stream_acme.iter().rposition(|(id, _)| id == since).unwrap();
    let mut before: HashSet<&(String, i64)> = stream_acme[..=position].iter().collect();
    let want: Vec<String> = stream_acme[position + 1..].iter().filter(|e| before.insert(e)).map(|(id, _)| id.clone()).collect();
    let socket = rt.block_on(connect(port_b, &format!("token={acme_token}&since={since}"))).unwrap();
    let (resumed, _) = rt.block_on(collect(socket, want.len(), Duration::from_secs(10)));
    assert_eq!(resumed.alerts.iter().map(|(id, _, _)| id.clone()).collect::<Vec<_>>(), want);
    let (_, socket) = rt.block_on(collect(rt.block_on(connect(port_b, &format!("token={acme_token}&since={since}"))).unwrap(), want.len(), Duration::from_secs(10)));
    let (after, _) = rt.block_on(collect(socket, 1, Duration::from_secs(2)));
    let done = after.notices.iter().find(|n| n["type"] == "resumed").expect("a resumed notice");
    assert_eq!((done["found"].as_bool(), done["replayed"].as_u64()), (Some(true), Some(want.len() as u64)));

    // Round 2: the stalled client on instance b. What a stalled client causes follows it
    // from one instance to the other; a moment's stall of one instance on two busy cores
    // (once 212 ms against 23 ms at p99 in CI) does not. So the readers beside it may get
    // an alert at most 50 ms after the readers on the other instance get it (at p99) in
    // at least one of the two rounds: a client that holds up its neighbours does so in both.
    let second = run_round(&rt, 2, (port_b, port_a), &tokens, &scored_topic, &mut topic, &mut raised);
    assert!(counter(port_b, "threatpipe_feed_skipped_total") > 0, "round 2: the stalled client never overflowed");
    drop(second.stalled);
    assert!(
        first.excess_p99 < 50_000 || second.excess_p99 < 50_000,
        "the stalled client delayed the readers beside it in both rounds: at p99 they got an alert {} / {} µs after the other instance's readers",
        first.excess_p99, second.excess_p99
    );

    let metrics = http_get(port_a, "/metrics").unwrap().1;
    assert!(metrics.contains("threatpipe_feed_skipped_total"), "skips are counted in /metrics");
    let _: () = redis::cmd("DEL").arg(&stream).query(&mut redis).unwrap();
}

/// The readers' credentials: each tenant on each instance, one by static token and one by JWT.
struct Tokens {
    acme_static: String,
    globex_static: String,
    acme_jwt: String,
    globex_jwt: String,
}

struct Round {
    /// How much later (µs, p99 over alerts) the readers beside the stalled client got an
    /// alert than the reader of its tenant on the other instance.
    excess_p99: i64,
    /// The stalled client, still connected and unread.
    stalled: Socket,
    /// The acme alert ids in the order the acme reader beside the stalled client got them.
    acme_order: Vec<String>,
}

const PER_TENANT: usize = 2_000;

/// One measured round: four readers (each tenant on each instance) and a stalled client
/// on `ports.0`; 2 × `PER_TENANT` alerts raised across both instances. Checks that every
/// reader got its tenant's alerts of this round once each, none of another tenant's, and
/// never lagged. `raised` holds the alert ids of earlier rounds.
fn run_round(rt: &tokio::runtime::Runtime, round: usize, ports: (u16, u16), tokens: &Tokens, scored_topic: &str, topic: &mut TopicReader, raised: &mut HashSet<String>) -> Round {
    let (beside, away) = ports;
    let clients = [
        ("acme@beside", beside, &tokens.acme_static),
        ("globex@beside", beside, &tokens.globex_jwt),
        ("acme@away", away, &tokens.acme_jwt),
        ("globex@away", away, &tokens.globex_static),
    ];
    let readers: Vec<_> = clients
        .iter()
        .map(|(name, port, token)| {
            let socket = rt.block_on(connect(*port, &format!("token={token}"))).unwrap_or_else(|e| panic!("round {round}, {name}: {e}"));
            (name.to_string(), rt.spawn(collect(socket, PER_TENANT, Duration::from_secs(15))))
        })
        .collect();
    // The stalled client: a tiny receive buffer and nobody reading, on the busiest path.
    let stalled = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(2048).unwrap();
        let stream = socket.connect(([127, 0, 0, 1], beside).into()).await.unwrap();
        let request = format!("ws://127.0.0.1:{beside}/feed?token={}", tokens.acme_static).into_client_request().unwrap();
        tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream)).await.unwrap().0
    });

    let events: Vec<(String, Vec<u8>)> = (0..2 * PER_TENANT)
        .map(|i| {
            let e = scored(round, i, if i % 2 == 0 { "acme" } else { "globex" });
            (e.partition_key.clone(), avro::encode_event(&e).unwrap())
        })
        .collect();
    produce_all(scored_topic, &events);

    // What was raised: the JSON alert topic.
    // At least once: a rebalance can put an alert on the topic twice; count distinct ids.
    let id = |r: &support::ReadRecord| serde_json::from_slice::<serde_json::Value>(&r.payload).unwrap()["id"].as_str().unwrap().to_string();
    let want = raised.len() + 2 * PER_TENANT;
    assert!(
        topic.read_until(Duration::from_secs(90), |r| r.iter().map(id).collect::<HashSet<_>>().len() >= want),
        "round {round}: alerts on the topic: {}",
        topic.records.len()
    );
    let mut expected: HashMap<String, HashSet<String>> = HashMap::new();
    for record in &topic.records {
        let alert: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
        let id = alert["id"].as_str().unwrap();
        if !raised.contains(id) {
            expected.entry(alert["tenant"].as_str().unwrap().into()).or_default().insert(id.into());
        }
    }
    assert_eq!(expected["acme"].len(), PER_TENANT);
    assert_eq!(expected["globex"].len(), PER_TENANT);

    // Raised → delivered, per instance.
    let (mut latencies_beside, mut latencies_away) = (HashMap::new(), HashMap::new());
    let mut acme_order = Vec::new();
    for (name, handle) in readers {
        let (seen, _socket) = rt.block_on(handle).unwrap();
        eprintln!("[feed test] round {round}, {name}: {} alerts, notices {:?}", seen.alerts.len(), seen.notices);
        let tenant = name.split('@').next().unwrap();
        let ids: Vec<&String> = seen.alerts.iter().map(|(id, _, _)| id).collect();
        let unique_ids: HashSet<String> = ids.iter().map(|s| s.to_string()).collect();
        assert_eq!(ids.len(), unique_ids.len(), "round {round}: {name} received an alert twice");
        assert!(seen.alerts.iter().all(|(_, t, _)| t == tenant), "round {round}: {name} saw another tenant's alert");
        assert!(seen.notices.iter().all(|n| n["type"] != "lagged"), "round {round}: {name} lagged: {:?}", seen.notices);
        assert_eq!(unique_ids, expected[tenant], "round {round}, {name}: {} of {} alerts", unique_ids.len(), expected[tenant].len());
        let latencies = if name.ends_with("@beside") { &mut latencies_beside } else { &mut latencies_away };
        latencies.extend(seen.alerts.iter().map(|(id, _, l)| (id.clone(), *l)));
        if name == "acme@beside" {
            acme_order = seen.alerts.iter().map(|(id, _, _)| id.clone()).collect();
        }
    }
    raised.extend(expected.into_values().flatten());
    // The delay the stalled client causes is how much later a reader beside it gets an
    // alert than the reader of the same tenant on the other instance gets the same alert
    // (same Redis, same machine, same moment): what both wait, from the alert being
    // raised to the two instances' Redis subscribers, does not count against it.
    let excess: Vec<i64> = latencies_beside.iter().map(|(id, beside)| beside - latencies_away[id]).collect();
    let summary = |l: Vec<i64>| (percentile(l.clone(), 0.5), percentile(l.clone(), 0.99), percentile(l, 1.0));
    let ((p50_b, p99_b, max_b), (p50_o, p99_o, max_o)) = (summary(latencies_beside.into_values().collect()), summary(latencies_away.into_values().collect()));
    let (p50_e, p99_e, max_e) = summary(excess);
    eprintln!("round {round}: raised → delivered beside a stalled client: p50 {p50_b} µs, p99 {p99_b} µs, max {max_b} µs");
    eprintln!("round {round}: raised → delivered on the other instance:   p50 {p50_o} µs, p99 {p99_o} µs, max {max_o} µs");
    eprintln!("round {round}: the same alert, beside less away:           p50 {p50_e} µs, p99 {p99_e} µs, max {max_e} µs");
    // Beside the stalled client, what counts is the comparison the caller makes; away from
    // it, a slow feed is slow for everyone.
    assert!(p99_o < 500_000, "round {round}: the feed is slow even away from the stalled client: p99 {p99_o} µs");
    Round { excess_p99: p99_e, stalled, acme_order }
}

#[test]
fn a_resume_from_the_stream_skips_what_the_client_saw_even_when_replayed_later() {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut c = client.get_connection().unwrap();
    let stream = unique("tp-test:feed:resume");
    let alert = |id: &str, count: i64| serde_json::json!({"id": id, "tenant": "acme", "severity": "high", "count": count}).to_string();
    // b#1 appears again after a#2: a replay of an alert the client saw before `a`.
    for (id, count) in [("a", 1), ("b", 1), ("a", 2), ("c", 1), ("b", 1), ("d", 1), ("c", 1)] {
        let _: String = redis::cmd("XADD").arg(&stream).arg("*").arg("alert").arg(alert(id, count)).query(&mut c).unwrap();
    }
    let ids = |(items, found): (Vec<std::sync::Arc<threatpipe::feed::FeedItem>>, bool)| (items.iter().map(|i| i.id.clone()).collect::<Vec<_>>(), found);
    let resume = |since: &str, tenant: &str| ids(threatpipe::feed::redis_source::stream_since(&client, &stream, since, tenant).unwrap());
    assert_eq!(resume("a", "acme"), (vec!["c".to_string(), "d".to_string()], true));
    assert_eq!(resume("a", "globex"), (vec![], true));
    assert_eq!(resume("zzz", "acme").0, ["a", "b", "a", "c", "d"], "unknown id: everything held, once each");
    let _: () = redis::cmd("DEL").arg(&stream).query(&mut c).unwrap();
}

/// The value of an unlabelled counter on `/metrics` (0 before its first increment).
fn counter(port: u16, name: &str) -> u64 {
    let (_, text) = http_get(port, "/metrics").unwrap();
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok()).unwrap_or(0.0) as u64
}

#[test]
fn feed_coalesce_writes_a_burst_together_and_an_alert_after_a_quiet_spell_at_once() {
    support::require_broker();
    let topics = [unique("feedw.scored"), unique("feedw.alerts"), unique("feedw.alerts.json"), unique("feedw.dlq")];
    create_topics(&topics.iter().map(String::as_str).collect::<Vec<_>>(), 1);
    let (channel, token) = (unique("tp-test:feedw:channel"), unique("tok-feedw"));
    let mut env = stage_env("feedw", "alert");
    for (key, value) in [
        ("TOPICS__SCORED", topics[0].clone()),
        ("TOPICS__ALERTS", topics[1].clone()),
        ("TOPICS__ALERTS_JSON", topics[2].clone()),
        ("TOPICS__DLQ", topics[3].clone()),
        ("ALERT__DEDUPE", redis_url()),
        ("ALERT__DEDUPE_PREFIX", unique("tp-test:feedw:dedupe")),
        ("ALERT__CHANNEL", channel.clone()),
        ("ALERT__STREAM", unique("tp-test:feedw:stream")),
        // Long enough that the burst below (~0.5 s) falls inside one window anywhere.
        ("FEED__COALESCE", "3s".into()),
        ("FEED__COALESCE_MIN_CLIENTS", "1".into()),
        (&format!("FEED__TOKENS__{token}"), "acme".into()),
    ] {
        env.insert(format!("THREATPIPE_{key}"), value);
    }
    let port = free_port();
    let instance = StageProcess::start_serving("feedw", &format!("127.0.0.1:{port}"), &[], &env);
    let mut redis = redis::Client::open(redis_url()).unwrap().get_connection().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while redis::cmd("PUBSUB").arg("NUMSUB").arg(&channel).query::<Vec<(String, i64)>>(&mut redis).unwrap()[0].1 < 1 {
        assert!(Instant::now() < deadline, "the instance did not subscribe to {channel}:\n{}", instance.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let publish = |redis: &mut redis::Connection, n: usize| {
        let alert = serde_json::json!({"id": format!("coalesce-{n}"), "tenant": "acme", "severity": "high", "rule_ids": ["r"], "count": 1, "time_us": now_us()});
        let _: i64 = redis::cmd("PUBLISH").arg(&channel).arg(alert.to_string()).query(redis).unwrap();
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut socket = rt.block_on(connect(port, &format!("token={token}"))).unwrap();
    let writes_before = counter(port, "threatpipe_feed_writes_total");

    // The first alert after a quiet spell goes at once: well inside the 3 s window.
    let sent = Instant::now();
    publish(&mut redis, 0);
    let (seen, back) = rt.block_on(collect(socket, 1, Duration::from_secs(10)));
    socket = back;
    assert_eq!(seen.alerts.len(), 1);
    assert!(sent.elapsed() < Duration::from_millis(1500), "an alert after a quiet spell waited {:?}", sent.elapsed());
    // Ten more, 50 ms apart, inside the window of that write: written together at its end.
    for n in 1..=10 {
        publish(&mut redis, n);
        std::thread::sleep(Duration::from_millis(50));
    }
    let (seen, _socket) = rt.block_on(collect(socket, 10, Duration::from_secs(10)));
    let ids: Vec<&str> = seen.alerts.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ids, (1..=10).map(|n| format!("coalesce-{n}")).collect::<Vec<_>>(), "every alert, in order");
    // Without coalescing each of the ten would be its own write.
    let writes = counter(port, "threatpipe_feed_writes_total") - writes_before;
    assert_eq!(writes, 2, "eleven alerts in {writes} writes: expected one for the first and one for the burst");
    drop(instance);
}
