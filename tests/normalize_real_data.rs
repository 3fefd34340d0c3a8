//! Normalize on real public data: every SigmaHQ regression sample (Windows events in the JSON
//! shape of the `evtx` crate) must normalize, keep its event time and host, and keep its
//! EventData fields where rules will look for them. Data is read by path from
//! `THREATPIPE_DATA` (scripts/test.sh sets it; default `../shared/data`), never copied in.

mod support;

use support::{data_dir, files_under};
use threatpipe::bus::Record;
use threatpipe::normalize::{NormalizeConfig, Normalizer};

#[test]
fn every_sigma_regression_sample_normalizes_with_its_windows_fields() {
    let files = files_under(&data_dir().join("sigma/regression_data"), &|p| p.extension().is_some_and(|e| e == "json"));
    assert!(files.len() >= 100, "expected the SigmaHQ regression samples, found {}", files.len());
    let normalizer = Normalizer::new(NormalizeConfig::default(), "default");
    let mut samples = Vec::new();
    for path in &files {
        // A sample file holds one or more concatenated events; each is one message on the bus.
        let bytes = std::fs::read(path).unwrap();
        for value in serde_json::Deserializer::from_slice(&bytes).into_iter::<serde_json::Value>() {
            samples.push((path.clone(), value.unwrap_or_else(|e| panic!("{}: {e}", path.display()))));
        }
    }
    eprintln!("{} events from {} sample files", samples.len(), files.len());
    for (offset, (path, value)) in samples.iter().enumerate() {
        let payload = serde_json::to_vec(value).unwrap();
        let record = Record { topic: "raw".into(), partition: 0, offset: offset as i64, key: None, payload, timestamp_ms: None };
        let event = normalizer
            .normalize(&record, 1_800_000_000_000_000)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(event.source.format, "evtx", "{}", path.display());
        let system = &value["Event"]["System"];
        assert_eq!(event.host.as_deref(), system["Computer"].as_str(), "{}", path.display());
        assert!(!event.tags.contains(&"time_inferred".to_string()), "{}: time not read", path.display());
        assert_eq!(event.attrs.get("EventID").map(String::as_str), Some(system["EventID"].to_string().as_str()), "{}", path.display());
        if let Some(data) = value["Event"]["EventData"].as_object() {
            for (field, v) in data {
                let Some(text) = v.as_str() else { continue };
                if text.is_empty() || text == "-" {
                    continue;
                }
                // Each EventData field is either mapped onto the model or kept by name.
                let kept = event.attrs.get(field).is_some_and(|a| text.starts_with(a.trim_end_matches('…')) || a == text);
                let mapped = [
                    event.process.as_ref().and_then(|p| p.command_line.as_deref()),
                    event.process.as_ref().and_then(|p| p.path.as_deref()),
                    event.process.as_ref().and_then(|p| p.parent_name.as_deref()),
                    event.process.as_ref().and_then(|p| p.parent_command_line.as_deref()),
                    event.user(),
                    event.src_ip(),
                    event.dst_ip(),
                    event.src.as_ref().and_then(|s| s.hostname.as_deref()),
                    event.dst.as_ref().and_then(|s| s.hostname.as_deref()),
                    event.file.as_ref().and_then(|f| f.path.as_deref()),
                    event.dns.as_ref().and_then(|d| d.query.as_deref()),
                    event.actor.as_ref().and_then(|a| a.domain.as_deref()),
                ]
                .iter()
                .flatten()
                .any(|m| *m == text || text.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.to_string() == *m));
                let truncated_or_capped = event.attrs.len() >= threatpipe_attr_cap();
                assert!(kept || mapped || truncated_or_capped, "{}: EventData.{field} lost", path.display());
            }
        }
    }
}

fn threatpipe_attr_cap() -> usize {
    64
}
