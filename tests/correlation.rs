//! Sigma correlation rules: every type with events that must and must not trigger,
//! out-of-order events within the allowed lateness, late ones beyond it, group-by and tenant
//! isolation, chains, aliases, and the specification's example rules.

mod support;

use std::time::Duration;

use threatpipe::detect::correlation::{CorrelationRules, PartitionState, StateLimits};
use threatpipe::event::{Actor, Correlation, Endpoint, Event, Match};

const S: i64 = 1_000_000;
const T0: i64 = 1_763_800_000 * S;

fn limits() -> StateLimits {
    StateLimits { allowed_lateness: Duration::from_secs(30), ..StateLimits::default() }
}

fn rules(yaml: &str) -> CorrelationRules {
    let (rules, errors) = CorrelationRules::from_yaml(yaml);
    assert!(errors.is_empty(), "rules must load: {errors:?}");
    assert!(rules.rule_count() > 0);
    rules
}

/// An event at `T0 + secs` by `user` that quick-scan matched with `rule`.
fn hit(n: u32, secs: i64, rule: &str, user: &str) -> Event {
    Event {
        id: format!("e{n}"),
        time_us: T0 + secs * S,
        ingest_time_us: T0 + secs * S,
        tenant: "acme".into(),
        host: Some("web-1".into()),
        actor: Some(Actor { user: Some(user.into()), ..Actor::default() }),
        matches: vec![Match { rule_id: rule.into(), kind: "sigma".into(), ..Match::default() }],
        ..Event::default()
    }
}

/// Feeds events in the given order; returns every signal.
fn run(rules: &CorrelationRules, events: &[Event]) -> Vec<Correlation> {
    let mut state = PartitionState::default();
    events.iter().flat_map(|e| rules.observe(&mut state, e, &limits()).signals).collect()
}

const EVENT_COUNT: &str = r#"
title: Brute force
id: bf-1
correlation:
    type: event_count
    rules: [failed]
    group-by: [User]
    timespan: 1m
    condition:
        gte: 5
"#;

#[test]
fn event_count_fires_at_the_threshold_once_per_window() {
    let rules = rules(EVENT_COUNT);
    let four: Vec<Event> = (0..4).map(|i| hit(i, i as i64, "failed", "alice")).collect();
    assert!(run(&rules, &four).is_empty(), "4 < 5 must not fire");

    let burst: Vec<Event> = (0..12).map(|i| hit(i, i as i64, "failed", "alice")).collect();
    let signals = run(&rules, &burst);
    assert_eq!(signals.len(), 1, "one signal per window, however long the burst: {signals:?}");
    assert_eq!(signals[0].count, 5);
    assert_eq!(signals[0].window_start_us, T0);
    assert_eq!(signals[0].window_end_us, T0 + 4 * S);
    assert_eq!(signals[0].group_key, "User=alice");
    assert_eq!(signals[0].kind, "event_count");
    assert_eq!(signals[0].rule_id, "bf-1");
}

#[test]
fn event_count_needs_the_events_within_the_timespan() {
    let rules = rules(EVENT_COUNT);
    // Five failures, but 20 s apart: never five within one minute.
    let slow: Vec<Event> = (0..5).map(|i| hit(i, i as i64 * 20, "failed", "alice")).collect();
    assert!(run(&rules, &slow).is_empty());
    // Other rules do not count.
    let other: Vec<Event> = (0..6).map(|i| hit(i, i as i64, "success", "alice")).collect();
    assert!(run(&rules, &other).is_empty());
}

#[test]
fn a_new_window_fires_again_after_the_timespan() {
    let rules = rules(EVENT_COUNT);
    let mut events: Vec<Event> = (0..5).map(|i| hit(i, i as i64, "failed", "alice")).collect();
    events.extend((5..10).map(|i| hit(i, 100 + i as i64, "failed", "alice")));
    assert_eq!(run(&rules, &events).len(), 2);
}

#[test]
fn range_and_equality_conditions() {
    let with = |condition: &str| rules(&EVENT_COUNT.replace("        gte: 5", condition));
    let events = |n: u32| -> Vec<Event> { (0..n).map(|i| hit(i, i as i64, "failed", "alice")).collect() };
    // A range: fires when the count enters it, not before.
    let range = with("        gt: 2\n        lte: 4");
    assert!(run(&range, &events(2)).is_empty());
    let signals = run(&range, &events(6));
    assert_eq!(signals.len(), 1);
    assert_eq!(signals[0].count, 3);
    // An empty range never fires.
    assert!(run(&with("        gt: 2\n        lt: 3"), &events(10)).is_empty());
    // Equality.
    let eq = with("        eq: 2");
    assert!(run(&eq, &events(1)).is_empty());
    assert_eq!(run(&eq, &events(2)).iter().map(|s| s.count).collect::<Vec<_>>(), vec![2]);
}

#[test]
fn group_by_keys_and_tenants_are_isolated() {
    let rules = rules(EVENT_COUNT);
    // 3 for alice, 3 for bob: six failures, but five for no single user.
    let mut events: Vec<Event> = (0..3).map(|i| hit(i, i as i64, "failed", "alice")).collect();
    events.extend((3..6).map(|i| hit(i, i as i64, "failed", "bob")));
    assert!(run(&rules, &events).is_empty());
    // Same user name in two tenants: 3 + 3, no signal.
    let mut events: Vec<Event> = (0..3).map(|i| hit(i, i as i64, "failed", "alice")).collect();
    events.extend((3..6).map(|i| Event { tenant: "globex".into(), ..hit(i, i as i64, "failed", "alice") }));
    assert!(run(&rules, &events).is_empty());
    // An event without the group-by field joins no window.
    let anonymous: Vec<Event> = (0..6).map(|i| Event { actor: None, ..hit(i, i as i64, "failed", "x") }).collect();
    assert!(run(&rules, &anonymous).is_empty());
}

#[test]
fn out_of_order_events_within_lateness_count_as_if_in_order() {
    let rules = rules(EVENT_COUNT);
    // Event times 0..5 arrive as 4, 3, 0, 1, 2: still five within the minute.
    let order = [4, 3, 0, 1, 2];
    let events: Vec<Event> = order.iter().map(|&s| hit(s as u32, s, "failed", "alice")).collect();
    let signals = run(&rules, &events);
    assert_eq!(signals.len(), 1, "{signals:?}");
    assert_eq!(signals[0].window_start_us, T0);
    assert_eq!(signals[0].window_end_us, T0 + 4 * S);

    // A late event completes a window that ends at a later entry: times 0, 1, 2 and 50 in
    // order, then 40 (10 s behind, within the 30 s allowed): the minute ending at 50 now
    // holds five.
    let mut events: Vec<Event> = [0, 1, 2, 50].iter().map(|&s| hit(s as u32, s, "failed", "alice")).collect();
    assert!(run(&rules, &events).is_empty());
    events.push(hit(40, 40, "failed", "alice"));
    let signals = run(&rules, &events);
    assert_eq!(signals.len(), 1);
    assert_eq!(signals[0].window_end_us, T0 + 50 * S, "the late event completes the window ending at the newer entry");
}

#[test]
fn events_beyond_the_allowed_lateness_are_counted_not_windowed() {
    let rules = rules(EVENT_COUNT);
    let mut state = PartitionState::default();
    for i in 0..4 {
        assert!(rules.observe(&mut state, &hit(i, 100 + i as i64, "failed", "alice"), &limits()).signals.is_empty());
    }
    // 31 s behind the newest event time: later than the 30 s allowed.
    let late = rules.observe(&mut state, &hit(9, 72, "failed", "alice"), &limits());
    assert!(late.late);
    assert!(late.signals.is_empty(), "a late event must not complete the window");
    // Within lateness it would have.
    let mut state = PartitionState::default();
    for i in 0..4 {
        rules.observe(&mut state, &hit(i, 100 + i as i64, "failed", "alice"), &limits());
    }
    let ok = rules.observe(&mut state, &hit(9, 75, "failed", "alice"), &limits());
    assert!(!ok.late);
    assert_eq!(ok.signals.len(), 1);
}

#[test]
fn value_count_counts_distinct_values() {
    let rules = rules(
        r#"
title: Password spraying
id: spray
correlation:
    type: value_count
    rules: [failed]
    group-by: [SourceIp]
    timespan: 5m
    condition:
        field: User
        gte: 4
"#,
    );
    let from = |n: u32, user: &str, ip: &str| Event { src: Some(Endpoint { ip: Some(ip.into()), ..Endpoint::default() }), ..hit(n, n as i64, "failed", user) };
    // Ten failures from one source, but only three users: no.
    let same: Vec<Event> = (0..10).map(|i| from(i, ["a", "b", "c"][i as usize % 3], "203.0.113.9")).collect();
    assert!(run(&rules, &same).is_empty());
    // Four users from one source: yes, once.
    let spray: Vec<Event> = ["a", "b", "c", "d", "e"].iter().enumerate().map(|(i, u)| from(i as u32, u, "203.0.113.9")).collect();
    let signals = run(&rules, &spray);
    assert_eq!(signals.len(), 1);
    assert_eq!(signals[0].count, 4);
    assert_eq!(signals[0].group_key, "SourceIp=203.0.113.9");
    // Four users, but from four sources: no.
    let spread: Vec<Event> = ["a", "b", "c", "d"].iter().enumerate().map(|(i, u)| from(i as u32, u, &format!("203.0.113.{i}"))).collect();
    assert!(run(&rules, &spread).is_empty());
}

const TEMPORAL: &str = r#"
title: Recon
id: recon
correlation:
    type: temporal
    rules: [recon_a, recon_b, recon_c]
    group-by: [User]
    timespan: 5m
"#;

#[test]
fn temporal_needs_every_rule_in_any_order() {
    let rules = rules(TEMPORAL);
    let events = [hit(1, 0, "recon_c", "bob"), hit(2, 10, "recon_a", "bob"), hit(3, 20, "recon_b", "bob")];
    let signals = run(&rules, &events);
    assert_eq!(signals.len(), 1);
    assert_eq!(signals[0].kind, "temporal");
    // Two of three: no. All three but 10 minutes apart: no.
    assert!(run(&rules, &[hit(1, 0, "recon_a", "bob"), hit(2, 1, "recon_b", "bob"), hit(3, 2, "recon_b", "bob")]).is_empty());
    assert!(run(&rules, &[hit(1, 0, "recon_a", "bob"), hit(2, 300, "recon_b", "bob"), hit(3, 600, "recon_c", "bob")]).is_empty());
    // Split across users: no.
    assert!(run(&rules, &[hit(1, 0, "recon_a", "bob"), hit(2, 1, "recon_b", "eve"), hit(3, 2, "recon_c", "bob")]).is_empty());
}

#[test]
fn temporal_condition_expressions_and_counts() {
    let rules = rules(
        r#"
title: Recon two of three
id: recon2
correlation:
    type: temporal
    rules: [recon_a, recon_b, recon_c]
    group-by: [User]
    timespan: 5m
    condition:
        gte: 2
"#,
    );
    assert_eq!(run(&rules, &[hit(1, 0, "recon_a", "bob"), hit(2, 1, "recon_c", "bob")]).len(), 1);
    assert!(run(&rules, &[hit(1, 0, "recon_a", "bob"), hit(2, 1, "recon_a", "bob")]).is_empty());
}

#[test]
fn temporal_ordered_needs_the_order() {
    let rules = rules(
        r#"
title: Recon ordered
id: recon-ordered
correlation:
    type: temporal_ordered
    rules: [recon_a, recon_b, recon_c]
    group-by: [User]
    timespan: 5m
"#,
    );
    let in_order = [hit(1, 0, "recon_a", "bob"), hit(2, 10, "recon_b", "bob"), hit(3, 20, "recon_c", "bob")];
    assert_eq!(run(&rules, &in_order).len(), 1);
    let wrong = [hit(1, 0, "recon_c", "bob"), hit(2, 10, "recon_b", "bob"), hit(3, 20, "recon_a", "bob")];
    assert!(run(&rules, &wrong).is_empty(), "same rules, wrong order");
    // Event-time order counts, not arrival: b arrives last but happened second.
    let shuffled = [hit(1, 0, "recon_a", "bob"), hit(3, 20, "recon_c", "bob"), hit(2, 10, "recon_b", "bob")];
    assert_eq!(run(&rules, &shuffled).len(), 1);
    // a, then c, b, then c again: the second c completes a, b, c.
    let late_c = [hit(1, 0, "recon_a", "bob"), hit(2, 5, "recon_c", "bob"), hit(3, 10, "recon_b", "bob"), hit(4, 15, "recon_c", "bob")];
    assert_eq!(run(&rules, &late_c).len(), 1);
}

#[test]
fn value_sum_and_avg_aggregate_a_numeric_field() {
    let sum = rules(
        r#"
title: Exfiltration
id: exfil
correlation:
    type: value_sum
    rules: [upload]
    group-by: [User]
    timespan: 1h
    condition:
        field: bytes_sent
        gt: 1000000
"#,
    );
    let upload = |n: u32, bytes: i64| {
        let mut e = hit(n, n as i64, "upload", "carol");
        e.http = Some(threatpipe::event::Http { bytes_out: Some(bytes), ..Default::default() });
        e
    };
    assert!(run(&sum, &[upload(1, 400_000), upload(2, 500_000)]).is_empty());
    let signals = run(&sum, &[upload(1, 400_000), upload(2, 500_000), upload(3, 200_000)]);
    assert_eq!(signals.len(), 1);
    assert_eq!(signals[0].kind, "value_sum");

    let avg = rules(
        r#"
title: Big average
id: avg
correlation:
    type: value_avg
    rules: [upload]
    group-by: [User]
    timespan: 1h
    condition:
        field: bytes_sent
        gt: 500
"#,
    );
    assert!(run(&avg, &[upload(1, 100), upload(2, 800)]).is_empty(), "avg 450");
    assert_eq!(run(&avg, &[upload(1, 300), upload(2, 800)]).len(), 1, "avg 550");
}

#[test]
fn value_percentile_flags_a_rare_value() {
    let rules = rules(
        r#"
title: Rare process
id: rare
correlation:
    type: value_percentile
    rules: [proc]
    group-by: [ComputerName]
    timespan: 24h
    condition:
        field: Image
        lte: 1
"#,
    );
    let proc = |n: u32, image: &str| {
        let mut e = hit(n, n as i64, "proc", "dave");
        e.attrs.insert("Image".into(), image.into());
        e
    };
    let mut events: Vec<Event> = (0..150).map(|i| proc(i, "C:\\Windows\\explorer.exe")).collect();
    assert!(run(&rules, &events).is_empty(), "a common process is not rare");
    events.push(proc(999, "C:\\Users\\dave\\AppData\\x.exe"));
    let signals = run(&rules, &events);
    assert_eq!(signals.len(), 1, "1 of 151 events is under 1%");
}

#[test]
fn aliases_group_different_fields_of_different_rules() {
    // The specification's aliases example: the internal address is the destination of
    // one rule's events and the source of the other's.
    let rules = rules(
        r#"
title: Error then connection
id: alias
correlation:
    type: temporal
    rules: [internal_error, new_network_connection]
    group-by: [internal_ip]
    timespan: 10s
    aliases:
        internal_ip:
            internal_error: destination.ip
            new_network_connection: source.ip
"#,
    );
    let at = |n: u32, rule: &str, src: &str, dst: &str| Event {
        src: Some(Endpoint { ip: Some(src.into()), ..Endpoint::default() }),
        dst: Some(Endpoint { ip: Some(dst.into()), ..Endpoint::default() }),
        ..hit(n, n as i64, rule, "u")
    };
    let joined = [at(1, "internal_error", "198.51.100.7", "10.0.0.5"), at(2, "new_network_connection", "10.0.0.5", "198.51.100.7")];
    assert_eq!(run(&rules, &joined).len(), 1);
    let unrelated = [at(1, "internal_error", "198.51.100.7", "10.0.0.5"), at(2, "new_network_connection", "10.0.0.6", "198.51.100.7")];
    assert!(run(&rules, &unrelated).is_empty());
}

/// The specification's complete example: detection rules by name, a chain of two
/// correlations, evaluated on Windows Security events by the correlate stage's own rules.
const SPEC_EXAMPLE: &str = r#"
title: Correlation - Multiple Failed Logins Followed by Successful Login
id: b180ead8-d58f-40b2-ae54-c8940995b9b6
correlation:
    type: temporal_ordered
    rules:
        - multiple_failed_login
        - successful_login
    group-by:
        - User
    timespan: 10m
level: high
---
title: Multiple failed logons
id: a8418a5a-5fc4-46b5-b23b-6c73beb19d41
name: multiple_failed_login
correlation:
    type: event_count
    rules:
        - failed_login
    group-by:
        - User
    timespan: 10m
    condition:
        gte: 10
---
title: Single failed login
id: 53ba33fd-3a50-4468-a5ef-c583635cfa92
name: failed_login
logsource:
    product: windows
    service: security
detection:
    selection:
        EventID:
            - 529
            - 4625
    condition: selection
---
title: Successful login
id: 4d0a2c83-c62c-4ed4-b475-c7e23a9269b8
name: successful_login
logsource:
    product: windows
    service: security
detection:
    selection:
        EventID:
            - 528
            - 4624
    condition: selection
"#;

fn windows_logon(n: u32, secs: i64, event_id: u32, user: &str) -> Event {
    let mut e = Event {
        id: format!("w{n}"),
        time_us: T0 + secs * S,
        tenant: "acme".into(),
        actor: Some(Actor { user: Some(user.into()), ..Actor::default() }),
        ..Event::default()
    };
    e.source.format = "evtx".into();
    e.attrs.insert("Channel".into(), "Security".into());
    e.attrs.insert("EventID".into(), event_id.to_string());
    e
}

#[test]
fn the_specification_example_chain_fires_on_brute_force_then_success() {
    let rules = rules(SPEC_EXAMPLE);
    assert_eq!(rules.rule_count(), 2);
    assert_eq!(rules.detection_rule_count(), 2);
    let mut events: Vec<Event> = (0..12).map(|i| windows_logon(i, i as i64, 4625, "admin")).collect();
    events.push(windows_logon(99, 30, 4624, "admin"));
    let signals = run(&rules, &events);
    let ids: Vec<&str> = signals.iter().map(|s| s.rule_id.as_str()).collect();
    assert_eq!(ids, ["a8418a5a-5fc4-46b5-b23b-6c73beb19d41", "b180ead8-d58f-40b2-ae54-c8940995b9b6"]);
    assert_eq!(signals[1].level, "high");
    assert_eq!(signals[1].group_key, "User=admin");

    // Success first, failures after: the chain's order is not met.
    let mut reversed = vec![windows_logon(99, 0, 4624, "admin")];
    reversed.extend((0..12).map(|i| windows_logon(i, 1 + i as i64, 4625, "admin")));
    let ids: Vec<String> = run(&rules, &reversed).into_iter().map(|s| s.rule_id).collect();
    assert_eq!(ids, ["a8418a5a-5fc4-46b5-b23b-6c73beb19d41"]);
    // Nine failures then a success: no brute force.
    let mut few: Vec<Event> = (0..9).map(|i| windows_logon(i, i as i64, 4625, "admin")).collect();
    few.push(windows_logon(99, 30, 4624, "admin"));
    assert!(run(&rules, &few).is_empty());
}

#[test]
fn loops_and_bad_rules_are_reported_not_loaded() {
    let (rules, errors) = CorrelationRules::from_yaml(
        r#"
title: A
name: a
correlation:
    type: event_count
    rules: [b]
    group-by: [User]
    timespan: 1m
    condition:
        gte: 2
---
title: B
name: b
correlation:
    type: event_count
    rules: [a]
    group-by: [User]
    timespan: 1m
    condition:
        gte: 2
---
title: No field
name: c
correlation:
    type: value_count
    rules: [x]
    group-by: [User]
    timespan: 1m
    condition:
        gte: 2
"#,
    );
    assert_eq!(rules.rule_count(), 0, "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("loop")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("needs `field`")), "{errors:?}");
}

#[test]
fn every_example_of_the_specification_loads() {
    let dir = support::data_dir().join("sigma-correlation/tests/schema/correlation");
    let files = support::files_under(&dir, &|p| p.extension().is_some_and(|e| e == "yml"));
    assert!(files.len() >= 8, "examples present in {}", dir.display());
    let (rules, errors) = CorrelationRules::load_all(&[dir]);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(rules.rule_count(), files.len());
}

#[test]
fn the_example_rules_behave_as_specified() {
    let dir = support::data_dir().join("sigma-correlation/tests/schema/correlation");
    let load = |name: &str| {
        let (rules, errors) = CorrelationRules::load_all(&[dir.join(name)]);
        assert!(errors.is_empty(), "{name}: {errors:?}");
        rules
    };
    let on = |n: u32, secs: i64, rule: &str, attrs: &[(&str, &str)]| {
        let mut e = hit(n, secs, rule, "u");
        for (k, v) in attrs {
            e.attrs.insert((*k).into(), (*v).into());
        }
        e
    };
    let failed = "5638f7c0-ac70-491d-8465-2a65075e0d86";
    // event_count: ≥ 100 failed logins on one ComputerName in 1 h.
    let rules = load("event_count.yml");
    // 100 failures 40 s apart span 66 minutes: at most 91 in any hour.
    let slow: Vec<Event> = (0..100).map(|i| on(i, i as i64 * 40, failed, &[("ComputerName", "dc1")])).collect();
    assert_eq!(run(&rules, &slow).len(), 0);
    let fast: Vec<Event> = (0..100).map(|i| on(i, i as i64, failed, &[("ComputerName", "dc1")])).collect();
    assert_eq!(run(&rules, &fast).len(), 1);
    // value_count: ≥ 100 distinct User per ComputerName+WorkstationName in a day.
    let rules = load("value_count.yml");
    let users: Vec<Event> = (0..100)
        .map(|i| {
            let mut e = on(i, i as i64, failed, &[("ComputerName", "dc1"), ("WorkstationName", "ws7")]);
            e.actor = Some(Actor { user: Some(format!("user{i}")), ..Actor::default() });
            e
        })
        .collect();
    assert_eq!(run(&rules, &users[..99]).len(), 0);
    assert_eq!(run(&rules, &users).len(), 1);
    // temporal and temporal_ordered: recon_cmd_a/b/c by ComputerName + User in 5 m.
    let recon = |n: u32, secs: i64, rule: &str| on(n, secs, rule, &[("ComputerName", "ws1")]);
    let temporal = load("temporal.yml");
    let ordered = load("temporal_ordered.yml");
    let backwards = [recon(1, 0, "recon_cmd_c"), recon(2, 5, "recon_cmd_b"), recon(3, 9, "recon_cmd_a")];
    assert_eq!(run(&temporal, &backwards).len(), 1);
    assert_eq!(run(&ordered, &backwards).len(), 0);
    let forwards = [recon(1, 0, "recon_cmd_a"), recon(2, 5, "recon_cmd_b"), recon(3, 9, "recon_cmd_c")];
    assert_eq!(run(&ordered, &forwards).len(), 1);
    // value_sum: bytes_sent > 1,000,000 per SourceIP + User in 1 h.
    let sum = load("value_sum.yml");
    let web = |n: u32, bytes: &str| on(n, n as i64, "website_access", &[("SourceIP", "10.1.1.1"), ("bytes_sent", bytes)]);
    assert_eq!(run(&sum, &[web(1, "600000"), web(2, "400000")]).len(), 0, "exactly 1,000,000 is not more");
    assert_eq!(run(&sum, &[web(1, "600000"), web(2, "400001")]).len(), 1);
    // value_avg: BytesOut average > 500.
    let avg = load("value_avg.yml");
    let out = |n: u32, bytes: &str| on(n, n as i64, "rule_a_id", &[("SourceIP", "10.1.1.1"), ("BytesOut", bytes)]);
    assert_eq!(run(&avg, &[out(1, "400"), out(2, "600")]).len(), 0);
    assert_eq!(run(&avg, &[out(1, "400"), out(2, "700")]).len(), 1);
}
