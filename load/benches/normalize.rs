//! Normalize throughput per input format, on one core (criterion runs single-threaded).
//!
//! `normalize` is parsing + mapping + validation; `normalize+encode` adds the Avro encoding
//! the stage does before producing, i.e. the full per-event CPU cost of the stage minus the
//! transport. The JSON lane uses ~1 KB events, the size the acceptance criterion names.
//! Baseline in the same run: `serde_json::from_slice` of the same 1 KB event (the floor any
//! JSON normalizer pays), so results can be read as a ratio on a noisy shared machine.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use threatpipe::bus::Record;
use threatpipe::event::avro;
use threatpipe::normalize::{NormalizeConfig, Normalizer};

const NOW: i64 = 1_736_676_000_000_000;

fn json_1kb(i: usize) -> Vec<u8> {
    let padding = "x".repeat(560);
    format!(
        r#"{{"id":"evt-{i}","time":"2025-01-12T10:00:00.123Z","tenant":"acme","type":"http","host":"web-1","client_ip":"203.0.113.{}","method":"GET","url":"/api/v1/orders/{i}?expand=items&page=2","status_code":200,"user_agent":"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36","bytes_out":5123,"user":"alice","session_id":"s-{i}","note":"{padding}"}}"#,
        i % 250 + 1
    )
    .into_bytes()
}

fn inputs() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("json_1kb", json_1kb(1)),
        ("ecs", br#"{"@timestamp":"2025-01-12T10:00:00Z","ecs":{"version":"8.11"},"event":{"category":["process"],"id":"e"},"host":{"name":"pc-7"},"user":{"name":"bob"},"process":{"pid":42,"name":"powershell.exe","command_line":"powershell -enc SQBFAFgA","parent":{"name":"winword.exe"}}}"#.to_vec()),
        ("cef", b"CEF:0|Palo Alto Networks|PAN-OS|11.1|TRAFFIC|Connection allowed|3|rt=1736676000000 externalId=x1 src=10.0.0.1 spt=51234 dst=8.8.8.8 dpt=53 proto=UDP act=allowed cs1Label=Tenant cs1=acme".to_vec()),
        ("syslog3164", b"<38>Jan 12 09:58:01 bastion sshd[811]: Failed password for invalid user admin from 203.0.113.9 port 52113 ssh2".to_vec()),
        ("syslog5424", br#"<165>1 2025-01-12T09:59:00.003Z web-1 nginx 4242 ID47 [meta tenant="acme"] GET /admin"#.to_vec()),
    ]
}

fn record(payload: &[u8]) -> Record {
    Record { topic: "events.raw".into(), partition: 0, offset: 1, key: None, payload: payload.to_vec(), timestamp_ms: None }
}

fn bench_normalize(c: &mut Criterion) {
    let normalizer = Normalizer::new(NormalizeConfig::default(), "default");
    let mut group = c.benchmark_group("normalize");
    group.throughput(Throughput::Elements(1));
    let json = json_1kb(1);
    group.bench_function(BenchmarkId::new("baseline_serde_json_parse", "json_1kb"), |b| {
        b.iter(|| black_box(serde_json::from_slice::<serde_json::Value>(black_box(&json)).unwrap()))
    });
    for (name, payload) in inputs() {
        group.bench_with_input(BenchmarkId::new("normalize", name), &payload, |b, payload| {
            b.iter_batched(|| record(payload), |r| black_box(normalizer.normalize(&r, NOW).unwrap()), BatchSize::SmallInput)
        });
        group.bench_with_input(BenchmarkId::new("normalize+encode", name), &payload, |b, payload| {
            b.iter_batched(
                || record(payload),
                |r| black_box(avro::encode_event(&normalizer.normalize(&r, NOW).unwrap()).unwrap()),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench_normalize);
criterion_main!(benches);
