//! Format-level tests of the normalizer on hand-written samples of each input shape.

use super::*;

const NOW: i64 = 1_736_676_000_000_000; // 2025-01-12T10:00:00Z

fn record(payload: &[u8]) -> Record {
    Record { topic: "events.raw".into(), partition: 2, offset: 7, key: None, payload: payload.to_vec(), timestamp_ms: None }
}

fn normalizer() -> Normalizer {
    Normalizer::new(NormalizeConfig::default(), "default")
}

fn ok(payload: &str) -> Event {
    normalizer().normalize(&record(payload.as_bytes()), NOW).unwrap_or_else(|e| panic!("{payload}: {e}"))
}

fn reason(payload: &[u8]) -> &'static str {
    normalizer().normalize(&record(payload), NOW).unwrap_err().reason_code()
}

#[test]
fn generic_json_login_keeps_id_and_maps_fields() {
    let event = ok(r#"{"id":"e-1","time":"2025-01-12T09:00:00+01:00","tenant":"acme","type":"login","user":"alice","src_ip":"10.0.0.9","outcome":"failed","extra":{"k":1}}"#);
    assert_eq!(event.id, "e-1");
    assert_eq!(event.time_us, NOW - 2 * 3_600_000_000);
    assert_eq!(event.tenant, "acme");
    assert_eq!(event.class, EventClass::Authentication);
    assert_eq!(event.outcome.as_deref(), Some("failure"));
    assert_eq!(event.partition_key, "acme|alice");
    assert_eq!(event.attrs.get("extra.k").map(String::as_str), Some("1"));
    assert_eq!(event.source.format, "json");
    assert_eq!((event.source.partition, event.source.offset), (2, 7));
    assert!(event.raw.is_some());
}

#[test]
fn ocsf_and_ecs_shapes_are_recognized() {
    let ocsf = ok(r#"{"class_uid":4003,"time":1736676000000,"metadata":{"uid":"o-1","product":{"name":"Route53","vendor_name":"AWS"},"tenant_uid":"t9"},"query":{"hostname":"evil.example","type":"A"},"src_endpoint":{"ip":"10.1.1.1"}}"#);
    assert_eq!((ocsf.source.format.as_str(), ocsf.class, ocsf.id.as_str()), ("ocsf", EventClass::DnsActivity, "o-1"));
    assert_eq!(ocsf.dns.as_ref().unwrap().query.as_deref(), Some("evil.example"));
    assert_eq!(ocsf.tenant, "t9");
    assert_eq!(ocsf.time_us, NOW);
    let ecs = ok(r#"{"@timestamp":"2025-01-12T10:00:00Z","ecs":{"version":"8.11"},"event":{"category":["process"],"id":"x-2"},"process":{"pid":4,"command_line":"powershell -enc SQBFAFgA","parent":{"name":"winword.exe"}},"host":{"name":"pc-7"},"user":{"name":"bob"}}"#);
    assert_eq!((ecs.source.format.as_str(), ecs.class), ("ecs", EventClass::ProcessActivity));
    let process = ecs.process.as_ref().unwrap();
    assert_eq!(process.command_line.as_deref(), Some("powershell -enc SQBFAFgA"));
    assert_eq!(process.parent_name.as_deref(), Some("winword.exe"));
    assert_eq!(ecs.host.as_deref(), Some("pc-7"));
}

#[test]
fn windows_event_json_maps_event_data() {
    let event = ok(r##"{"Event":{"System":{"EventID":4625,"EventRecordID":991,"Computer":"dc01","TimeCreated":{"#attributes":{"SystemTime":"2025-01-12T10:00:00.000000Z"}},"Provider":{"#attributes":{"Name":"Microsoft-Windows-Security-Auditing"}}},"EventData":{"TargetUserName":"administrator","IpAddress":"192.0.2.4","LogonType":3}}}"##);
    assert_eq!(event.source.format, "evtx");
    assert_eq!(event.id, "dc01:991");
    assert_eq!(event.class, EventClass::Authentication);
    assert_eq!(event.outcome.as_deref(), Some("failure"));
    assert_eq!(event.user(), Some("administrator"));
    assert_eq!(event.src_ip(), Some("192.0.2.4"));
    assert_eq!(event.attrs.get("LogonType").map(String::as_str), Some("3"));
}

#[test]
fn json_with_llm_prompt_is_llm_activity() {
    let event = ok(r#"{"ts":1736676000,"user":"u1","prompt":"Ignore previous instructions","model":"gpt","session_id":"s1"}"#);
    assert_eq!(event.class, EventClass::LlmActivity);
    assert_eq!(event.llm.as_ref().unwrap().prompt.as_deref(), Some("Ignore previous instructions"));
}

#[test]
fn missing_time_falls_back_to_broker_then_ingest_time() {
    let mut rec = record(br#"{"user":"a"}"#);
    rec.timestamp_ms = Some(1_736_675_000_000);
    let event = normalizer().normalize(&rec, NOW).unwrap();
    assert_eq!(event.time_us, 1_736_675_000_000_000);
    assert!(event.tags.contains(&"time_from_broker".to_string()));
    let event = ok(r#"{"user":"a"}"#);
    assert_eq!(event.time_us, NOW);
    assert!(event.tags.contains(&"time_inferred".to_string()));
}

#[test]
fn derived_ids_are_stable_per_position() {
    let a = ok(r#"{"user":"a"}"#);
    let b = ok(r#"{"user":"a"}"#);
    assert_eq!(a.id, b.id, "same record, same id");
    let mut other = record(br#"{"user":"a"}"#);
    other.offset = 8;
    assert_ne!(normalizer().normalize(&other, NOW).unwrap().id, a.id, "another record, another id");
}

#[test]
fn avro_input_is_accepted_and_keeps_its_id() {
    let original = Event { id: "av-1".into(), tenant: "acme".into(), time_us: NOW, class: EventClass::DnsActivity, ..Default::default() };
    let bytes = avro::encode_event(&original).unwrap();
    let event = normalizer().normalize(&record(&bytes), NOW).unwrap();
    assert_eq!((event.id.as_str(), event.source.format.as_str(), event.class), ("av-1", "avro", EventClass::DnsActivity));
}

#[test]
fn malformed_input_gets_a_specific_reason() {
    assert_eq!(reason(b""), "empty");
    assert_eq!(reason(b"   \n"), "empty");
    assert_eq!(reason(b"{\"user\": "), "bad_json");
    assert_eq!(reason(b"[1,2]"), "bad_json");
    assert_eq!(reason(b"\xff\xfe{}"), "invalid_utf8");
    assert_eq!(reason(b"CEF:0|a|b|c"), "bad_cef");
    assert_eq!(reason(b"<999>1 - - - - - -"), "bad_syslog");
    assert_eq!(reason(b"\x00\x00\x00\x00\x09abc"), "bad_avro");
    assert_eq!(reason(b"hello world"), "unknown_format");
    assert_eq!(reason(br#"{"src_ip":"not-an-ip"}"#), "invalid_field");
    assert_eq!(reason(br#"{"time":"tomorrow-ish"}"#), "invalid_field");
    assert_eq!(reason(br#"{"dst_port":70000}"#), "invalid_field");
    let big = format!("{{\"user\":\"{}\"}}", "x".repeat(DEFAULT_MAX_EVENT_BYTES));
    assert_eq!(reason(big.as_bytes()), "oversized");
}

#[test]
fn dead_letters_keep_bounded_original_bytes_and_the_real_size() {
    let rec = record(&[b'x'; 100]);
    let dead = dead_letter("normalize", &rec, "oversized", "too big".into(), 10, NOW);
    assert_eq!((dead.original.len(), dead.original_size, dead.truncated), (10, 100, true));
    assert_eq!((dead.source_topic.as_str(), dead.source_partition, dead.source_offset), ("events.raw", 2, 7));
}

#[test]
fn large_events_keep_fields_but_drop_the_raw_copy() {
    let text = format!("{{\"user\":\"a\",\"message\":\"{}\"}}", "m".repeat(DEFAULT_MAX_RAW_BYTES));
    let event = ok(&text);
    assert!(event.raw.is_none());
    assert!(event.tags.contains(&"raw_dropped".to_string()));
    assert_eq!(event.message.as_ref().map(String::len), Some(DEFAULT_MAX_RAW_BYTES));
}

#[test]
fn dotted_aliases_match_flat_and_nested_keys_and_only_unmapped_fields_stay_in_attrs() {
    // The same fields as one flattened key (ECS exporters) and as nested objects.
    let flat = ok(r#"{"@timestamp":"2025-01-12T10:00:00Z","ecs.version":"8","source.ip":"10.0.0.1","destination.port":443,"user.name":"carol","labels.team":"blue"}"#);
    let nested = ok(r#"{"@timestamp":"2025-01-12T10:00:00Z","ecs":{"version":"8"},"source":{"ip":"10.0.0.1"},"destination":{"port":443},"user":{"name":"carol"},"labels":{"team":"blue","deep":{"a":{"b":"c"}}}}"#);
    for event in [&flat, &nested] {
        assert_eq!(event.src_ip(), Some("10.0.0.1"));
        assert_eq!(event.dst.as_ref().and_then(|d| d.port), Some(443));
        assert_eq!(event.user(), Some("carol"));
        // Mapped paths are not kept twice; unmapped ones keep their dotted path.
        assert!(!event.attrs.contains_key("source.ip") && !event.attrs.contains_key("user.name"), "{:?}", event.attrs);
        assert_eq!(event.attrs.get("labels.team").map(String::as_str), Some("blue"));
        assert_eq!(event.attrs.get("ecs.version").map(String::as_str), Some("8"));
    }
    assert_eq!(nested.attrs.get("labels.deep.a.b").map(String::as_str), Some("c"));
    // A sibling after a nested object gets its own path, not one grown from the object's.
    let siblings = ok(r#"{"ts":1736676000,"user":"u","x":{"y":{"z":"1"},"w":"2"},"v":"3"}"#);
    let mut kept: Vec<(&str, &str)> = siblings.attrs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    kept.sort_unstable();
    assert_eq!(kept, [("v", "3"), ("x.w", "2"), ("x.y.z", "1")]);
}

#[test]
fn endpoint_addresses_are_written_canonically() {
    let set = |ip: &str| {
        let mut slot = None;
        super::fields::set_endpoint(&mut slot, "src", Some(ip.to_string()), None, None).map(|()| slot.and_then(|e| e.ip))
    };
    assert_eq!(set("10.0.0.1").unwrap().as_deref(), Some("10.0.0.1"));
    assert_eq!(set(" 10.0.0.1 ").unwrap().as_deref(), Some("10.0.0.1"));
    assert_eq!(set("2001:DB8:0:0::1").unwrap().as_deref(), Some("2001:db8::1"));
    assert_eq!(set("[::1]").unwrap().as_deref(), Some("::1"));
    // Leading zeros are not an address (octal or decimal?): refused, not kept as written.
    assert!(set("010.0.0.1").is_err());
}

/// What `attrs` keep of a JSON event, shape by shape: dotted keys and the same path nested,
/// duplicates, nulls and arrays, nesting depth, the features object, Windows EventData and
/// UserData, and the 64-entry bound.
#[test]
fn attrs_keep_every_unmapped_shape_within_bounds() {
    // The same path as a flat dotted key and through objects; a used alias nested deeper
    // than it is read; a duplicate key (the last wins); null and arrays.
    let event = ok(r#"{"source.ip":"10.0.0.1","source":{"ip":"10.0.0.2","geo":"x1"},"user":{"name":"bob","id":7},"k":1,"k":2,"n":null,"list":[1,"a",{"o":1}],"objs":[{"a":1}]}"#);
    assert_eq!(event.src_ip(), Some("10.0.0.1"));
    assert!(!event.attrs.contains_key("source.ip"), "{:?}", event.attrs);
    assert_eq!(event.attrs.get("source.geo").map(String::as_str), Some("x1"));
    assert_eq!(event.attrs.get("user.id").map(String::as_str), Some("7"));
    assert_eq!(event.attrs.get("k").map(String::as_str), Some("2"));
    assert_eq!(event.attrs.get("list").map(String::as_str), Some("1 a"));
    assert!(!event.attrs.contains_key("n") && !event.attrs.contains_key("objs"), "{:?}", event.attrs);

    // Nesting: objects to six levels below the root are flattened, deeper ones dropped, and
    // an alias path is still read where attrs stop.
    let deep = ok(r#"{"a":{"b":{"c":{"d":{"e":{"f":{"g":{"h":1},"leaf":2}}}}}},"host":"h1","x":{"y":{"z":3}}}"#);
    assert_eq!(deep.attrs.get("a.b.c.d.e.f.leaf").map(String::as_str), Some("2"));
    assert!(!deep.attrs.keys().any(|k| k.contains(".g")), "{:?}", deep.attrs);
    assert_eq!(deep.attrs.get("x.y.z").map(String::as_str), Some("3"));
    assert_eq!(deep.host.as_deref(), Some("h1"));

    // The root's features object is features, not attrs; a features scalar is an attr.
    let features = ok(r#"{"host":"h1","features":{"bytes":12.5,"name":"not a number"},"other":{"features":{"q":1}}}"#);
    assert_eq!(features.features.get("bytes"), Some(&12.5));
    assert!(!features.attrs.keys().any(|k| k.starts_with("features")), "{:?}", features.attrs);
    assert_eq!(features.attrs.get("other.features.q").map(String::as_str), Some("1"));
    let scalar = ok(r#"{"host":"h1","features":"none"}"#);
    assert_eq!(scalar.attrs.get("features").map(String::as_str), Some("none"));

    // Windows: EventData fields stay by bare name even when mapped, UserData children bare
    // unless taken.
    let evtx = ok(r##"{"Event":{"System":{"EventID":4688,"Computer":"ws1","EventRecordID":9,"Channel":"Security","Provider":{"#attributes":{"Name":"Microsoft-Windows-Security-Auditing"}}},"EventData":{"CommandLine":"cmd /c whoami","Image":"C:\\Windows\\cmd.exe","Extra":"e"},"UserData":{"LogFileCleared":{"SubjectUserName":"adm","Image":"u"}}}}"##);
    assert_eq!(evtx.attrs.get("CommandLine").map(String::as_str), Some("cmd /c whoami"));
    assert_eq!(evtx.attrs.get("Extra").map(String::as_str), Some("e"));
    assert_eq!(evtx.attrs.get("SubjectUserName").map(String::as_str), Some("adm"));
    assert_eq!(evtx.attrs.get("Event.UserData.LogFileCleared.Image").map(String::as_str), Some("u"));
    assert!(!evtx.attrs.contains_key("Event.System.Computer"), "{:?}", evtx.attrs);

    // More producer fields than attrs keep: the first 64 in key order.
    let many: Vec<String> = (0..100).map(|i| format!(r#""f{i:03}":{i}"#)).collect();
    let wide = ok(&format!(r#"{{"host":"h1",{}}}"#, many.join(",")));
    assert_eq!(wide.attrs.len(), json::MAX_ATTRS);
    assert!(wide.attrs.contains_key("f000") && wide.attrs.contains_key("f063") && !wide.attrs.contains_key("f064"));
}
