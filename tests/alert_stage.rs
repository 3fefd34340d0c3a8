//! The alert stage: severity from rules, correlations and risk; tenant thresholds; ATT&CK
//! from tags; one alert per (tenant, rule, entity) and window across instances through the
//! real Redis, repeats counted once each however often they are replayed.

mod support;

use std::time::Duration;

use threatpipe::bus::{OutMessage, Record};
use threatpipe::event::{avro, Alert, Correlation, Event, Match, Score, Severity};
use threatpipe::stage::alert::{AlertConfig, AlertStage, DedupeStore};
use threatpipe::stage::Stage;

fn event(id: &str, tenant: &str, user: &str) -> Event {
    Event { id: id.into(), tenant: tenant.into(), partition_key: format!("{tenant}|{user}"), time_us: 1_763_596_800_000_000, ..Event::default() }
}

fn with_match(mut e: Event, rule: &str, level: &str, tags: &[&str]) -> Event {
    e.matches.push(Match { rule_id: rule.into(), title: format!("{rule} title"), level: level.into(), kind: "sigma".into(), tags: tags.iter().map(|t| t.to_string()).collect(), ..Match::default() });
    e
}

#[test]
fn the_policy_picks_severity_title_and_attack_tags() {
    let policy = AlertConfig { tenants: [("quiet".to_string(), Severity::Critical)].into_iter().collect(), ..AlertConfig::default() };
    let e = with_match(event("e1", "acme", "alice"), "r-ps", "high", &["attack.execution", "attack.t1059.001", "attack.defense-evasion"]);
    let c = policy.decide(&e).unwrap();
    assert_eq!((c.severity, c.primary.as_str(), c.title.as_str()), (Severity::High, "r-ps", "r-ps title"));
    assert_eq!(c.techniques, vec!["T1059.001"]);
    assert_eq!(c.tactics, vec!["execution", "defense-evasion"]);
    // A critical correlation outranks it.
    let mut chained = e.clone();
    chained.correlations.push(Correlation { rule_id: "c-chain".into(), title: "chain".into(), level: "critical".into(), ..Correlation::default() });
    assert_eq!(policy.decide(&chained).unwrap().primary, "c-chain");
    // Risk alone, by band.
    let mut risky = event("e2", "acme", "bob");
    risky.score = Some(Score { risk: 92.0, top_features: vec!["baseline.new_place".into()], ..Score::default() });
    let c = policy.decide(&risky).unwrap();
    assert_eq!((c.severity, c.primary.as_str()), (Severity::Critical, "risk"));
    assert!(c.title.contains("baseline.new_place"));
    // Below the minimum (medium by default; critical for tenant `quiet`): nothing.
    assert!(policy.decide(&with_match(event("e3", "acme", "x"), "r-low", "low", &[])).is_none());
    assert!(policy.decide(&with_match(event("e4", "quiet", "x"), "r-ps", "high", &[])).is_none());
    assert!(policy.decide(&event("e5", "acme", "x")).is_none());
}

fn record(e: &Event, offset: i64) -> Record {
    Record { topic: "events.scored".into(), partition: 0, offset, key: None, payload: avro::encode_event(e).unwrap(), timestamp_ms: None }
}

fn alert_of(out: &[OutMessage]) -> Alert {
    let avro_out: Vec<_> = out.iter().filter(|m| &*m.topic == "alerts").collect();
    assert_eq!(avro_out.len(), 1);
    let json = out.iter().find(|m| &*m.topic == "alerts.json").expect("JSON companion");
    let alert = avro::decode_alert(&avro_out[0].payload).unwrap();
    assert_eq!(serde_json::from_slice::<Alert>(&json.payload).unwrap(), alert);
    alert
}

fn stage(prefix: &str, window: Duration) -> AlertStage {
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let config = AlertConfig { suppress: window, ..AlertConfig::default() };
    AlertStage::new(config, DedupeStore::open(&redis, prefix).unwrap(), "alerts".into(), "alerts.json".into(), "events.dlq".into())
}

/// One record as a burst of its own: processed, then its alert joined.
fn run(stage: &mut AlertStage, e: &Event, offset: i64) -> Vec<OutMessage> {
    run_burst(stage, &[(e, offset)])
}

/// Records processed back to back, then the burst finished (its alerts joined in one round
/// trip), as the runner does.
fn run_burst(stage: &mut AlertStage, events: &[(&Event, i64)]) -> Vec<OutMessage> {
    let mut out = Vec::new();
    for (e, offset) in events {
        stage.process(&record(e, *offset), 1_763_596_900_000_000, &mut out).unwrap();
    }
    stage.finish_burst(1_763_596_900_000_000, &mut out).unwrap();
    out
}

/// Each alert of a burst's outputs (Avro, checked against its JSON companion), in order.
fn alerts_of(out: &[OutMessage]) -> Vec<Alert> {
    out.chunks(2).map(alert_of).collect()
}

#[test]
fn two_instances_raise_one_alert_and_count_each_repeat_once() {
    let prefix = support::unique("tp-test:alert");
    let (mut a, mut b) = (stage(&prefix, Duration::from_secs(2)), stage(&prefix, Duration::from_secs(2)));
    let brute = |id: &str| with_match(event(id, "acme", "alice"), "r-brute", "high", &["attack.t1110"]);
    let first = alert_of(&run(&mut a, &brute("e1"), 0));
    assert_eq!(first.count, 1);
    let second = alert_of(&run(&mut b, &brute("e2"), 1));
    assert_eq!((second.id.as_str(), second.count), (first.id.as_str(), 2), "the other instance joins the same alert");
    // A replay of e1 (either instance) re-emits the alert but does not count again.
    assert_eq!(alert_of(&run(&mut b, &brute("e1"), 0)).count, 2);
    // Another entity or rule is another alert.
    let other = alert_of(&run(&mut a, &with_match(event("e3", "acme", "bob"), "r-brute", "high", &[]), 2));
    assert_ne!(other.id, first.id);
    // After the window, the same key opens a new alert.
    std::thread::sleep(Duration::from_millis(2_200));
    let later = alert_of(&run(&mut a, &brute("e4"), 3));
    assert_ne!(later.id, first.id);
    assert_eq!(later.count, 1);
    // Nothing alert-worthy: no output.
    assert!(run(&mut a, &event("e5", "acme", "carol"), 4).is_empty());
}

#[test]
fn alerts_are_published_for_the_live_feed() {
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = support::unique("tp-test:alert-pub");
    let channel = format!("{prefix}:channel");
    let stream = format!("{prefix}:stream");
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut subscriber = client.get_connection().unwrap();
    let mut pubsub = subscriber.as_pubsub();
    pubsub.subscribe(&channel).unwrap();
    pubsub.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let config = AlertConfig { channel: channel.clone(), stream: stream.clone(), ..AlertConfig::default() };
    let stage = || AlertStage::new(config.clone(), DedupeStore::open(&redis_url, &prefix).unwrap(), "alerts".into(), "alerts.json".into(), "events.dlq".into());
    let mut stages = [stage(), stage()];
    let x = |id: &str| with_match(event(id, "acme", "alice"), "r-x", "critical", &[]);
    // The stage builds the feed message for the id and count it expects and Redis publishes
    // it with the join only if they are right; the rest are rebuilt and published after.
    // Each case: what goes to the topics is exactly what the feed gets.
    let cases = [
        (0, "p1", 1), // a new alert (expected: new id, count 1)
        (0, "p2", 2), // a repeat on the same stage (expected: same id, count 2)
        (1, "p3", 3), // a repeat on another instance (expected wrong: new id, 1)
        (0, "p4", 4), // back on the first (expected wrong: count 3, it is 4)
        (1, "p1", 4), // a replay of p1 (expected: 3 + 1, right by chance)
        (0, "p2", 4), // a replay of p2 (expected wrong: 5; p2 counts once)
    ];
    let mut first_id = None;
    for (instance, id, count) in cases {
        let e = x(id);
        let alert = alert_of(&run(&mut stages[instance], &e, 0));
        assert_eq!(alert.count, count, "{}", e.id);
        assert_eq!(first_id.get_or_insert_with(|| alert.id.clone()), &alert.id, "one alert for the key");
        let message: String = pubsub.get_message().unwrap().get_payload().unwrap();
        assert_eq!(serde_json::from_str::<Alert>(&message).unwrap(), alert, "{}", e.id);
    }
    // And the resume stream holds the same messages, in order.
    let mut connection = client.get_connection().unwrap();
    let held: Vec<(String, Vec<String>)> = redis::cmd("XRANGE").arg(&stream).arg("-").arg("+").query(&mut connection).unwrap();
    let counts: Vec<i64> = held.iter().map(|(_, fields)| serde_json::from_str::<Alert>(&fields[1]).unwrap().count).collect();
    assert_eq!(counts, [1, 2, 3, 4, 4, 4]);
    let _: () = redis::cmd("DEL").arg(&stream).query(&mut connection).unwrap();
}

#[test]
fn a_burst_joins_its_alerts_as_one_at_a_time_would() {
    // The same events, with replays and two instances, once record by record and once in
    // bursts (each burst's joins one round trip): the same alerts on the topics, and the
    // feed gets, for each alert, the same messages in the same order.
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let brute = |id: &str, user: &str| with_match(event(id, "acme", user), "r-brute", "high", &["attack.t1110"]);
    let events = [brute("b1", "alice"), brute("b2", "alice"), brute("b3", "bob"), brute("b1", "alice"), brute("b4", "alice"), brute("b5", "bob"), brute("b6", "alice"), brute("b7", "alice")];
    // (instance, event index) per record; bursts split as listed. The last burst's first
    // offer is wrong (the other instance counted b6 meanwhile) and its second, a replay, is
    // right by chance: it must still reach the feed after the first.
    let bursts: [&[(usize, usize)]; 4] = [&[(0, 0), (0, 1), (0, 2)], &[(1, 3), (1, 4)], &[(0, 5), (0, 6), (0, 3)], &[(1, 7), (1, 1)]];
    let mut results = Vec::new();
    for batched in [false, true] {
        let prefix = support::unique("tp-test:alert-burst");
        let (channel, stream) = (format!("{prefix}:channel"), format!("{prefix}:stream"));
        let config = AlertConfig { channel: channel.clone(), stream: stream.clone(), ..AlertConfig::default() };
        let stage = || AlertStage::new(config.clone(), DedupeStore::open(&redis_url, &prefix).unwrap(), "alerts".into(), "alerts.json".into(), "events.dlq".into());
        let mut stages = [stage(), stage()];
        let mut topic = Vec::new();
        for burst in bursts {
            if batched {
                // A burst runs on one instance.
                let instance = burst[0].0;
                let records: Vec<(&Event, i64)> = burst.iter().map(|&(_, i)| (&events[i], i as i64)).collect();
                topic.extend(alerts_of(&run_burst(&mut stages[instance], &records)));
            } else {
                for &(instance, i) in burst {
                    topic.extend(alerts_of(&run(&mut stages[instance], &events[i], i as i64)));
                }
            }
        }
        let mut connection = client.get_connection().unwrap();
        let held: Vec<(String, Vec<String>)> = redis::cmd("XRANGE").arg(&stream).arg("-").arg("+").query(&mut connection).unwrap();
        let _: () = redis::cmd("DEL").arg(&stream).query(&mut connection).unwrap();
        let feed: Vec<Alert> = held.iter().map(|(_, fields)| serde_json::from_str(&fields[1]).unwrap()).collect();
        // Ids are named by the events that open alerts: the same in both runs.
        let shape = |alerts: &[Alert]| alerts.iter().map(|a| (a.id.clone(), a.count, a.event_ids.clone())).collect::<Vec<_>>();
        let per_alert = |alerts: &[Alert]| {
            let mut by_id: std::collections::BTreeMap<String, Vec<(i64, String)>> = Default::default();
            for a in alerts {
                by_id.entry(a.id.clone()).or_default().push((a.count, a.event_ids.join(",")));
            }
            by_id
        };
        assert_eq!(topic.len(), 10, "one alert record per alert-worthy record");
        results.push((shape(&topic), per_alert(&feed), feed.len()));
    }
    assert_eq!(results[0], results[1]);
    // alice: b1 1, b2 2, b1 again 2 (counted once), b4 3, b6 4, b1 4, b7 5, b2 5; bob: 1, 2.
    let counts: Vec<Vec<String>> = results[1].1.values().map(|v| v.iter().map(|(c, e)| format!("{e}:{c}")).collect()).collect();
    let alice = ["b1:1", "b2:2", "b1:2", "b4:3", "b6:4", "b1:4", "b7:5", "b2:5"];
    assert!(counts.contains(&alice.map(String::from).to_vec()) && counts.contains(&vec!["b3:1".to_string(), "b5:2".to_string()]), "{counts:?}");
}

#[test]
fn a_replayed_event_reaches_the_feed_once() {
    // Embedded wiring: the memory store hands alerts to this process's feed hub.
    let runtime = support::runtime();
    let _guard = runtime.enter();
    let hub = threatpipe::feed::FeedHub::new(16, threatpipe::feed::SlowClientPolicy::Skip, 100);
    let mut client = hub.register("acme", threatpipe::feed::Filter::default());
    let mut stage = AlertStage::new(AlertConfig::default(), DedupeStore::open("memory", "unused").unwrap(), "alerts".into(), "alerts.json".into(), "events.dlq".into())
        .with_feed(Some(hub.clone()));
    let brute = |id: &str| with_match(event(id, "acme", "alice"), "r-brute", "high", &[]);
    run(&mut stage, &brute("e1"), 0);
    // A crash before the commit: the same record again (the topics get it twice, by design;
    // the feed must not show it twice).
    run(&mut stage, &brute("e1"), 0);
    run(&mut stage, &brute("e2"), 1);
    let mut seen = Vec::new();
    while let Ok(item) = client.queue.try_recv() {
        seen.push(item.count);
    }
    assert_eq!(seen, [1, 2]);
    let (held, found) = hub.recent_since("nothing", "acme");
    assert_eq!((held.len(), found), (2, false));
}
