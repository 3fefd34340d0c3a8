//! Property-based fuzzing of the raw-format parsers: arbitrary bytes and mutations of valid
//! samples of every format must never panic, and whatever normalizes must survive an Avro
//! round trip. The case count comes from `PROPTEST_CASES` (CI sets it; default 2000 in
//! scripts/test.sh), so the fuzz budget is bounded and reproducible (failures persist seeds
//! under `proptest-regressions/`).

use proptest::prelude::*;
use threatpipe::bus::Record;
use threatpipe::event::{avro, Event, EventClass};
use threatpipe::normalize::{NormalizeConfig, Normalizer};

const NOW: i64 = 1_736_676_000_000_000;

fn samples() -> Vec<Vec<u8>> {
    let avro_event = avro::encode_event(&Event { id: "a".into(), class: EventClass::DnsActivity, time_us: NOW, ..Default::default() }).unwrap();
    vec![
        br#"{"id":"e1","time":"2025-01-12T10:00:00Z","user":"alice","src_ip":"10.0.0.1","dst_port":22,"outcome":"failed"}"#.to_vec(),
        br#"{"@timestamp":"2025-01-12T10:00:00Z","ecs":{"version":"8"},"event":{"category":["web"]},"url":{"original":"/a?b=c"},"http":{"response":{"status_code":404}}}"#.to_vec(),
        br#"{"class_uid":3002,"time":1736676000000,"metadata":{"uid":"x","product":{"name":"okta"}},"actor":{"user":{"name":"bob"}},"status":"Failure"}"#.to_vec(),
        br##"{"Event":{"System":{"EventID":1,"Computer":"pc","TimeCreated":{"#attributes":{"SystemTime":"2025-01-12T10:00:00Z"}}},"EventData":{"CommandLine":"cmd /c whoami","Image":"C:\\w\\cmd.exe"}}}"##.to_vec(),
        br"CEF:0|Vendor\|X|Prod|1.0|100|Name|7|src=10.0.0.1 spt=1234 dst=10.0.0.2 msg=hello world cs1Label=L cs1=v rt=1736676000000".to_vec(),
        br#"<165>1 2025-01-12T10:00:00.003Z host app 123 ID1 [sd k="v\"]"] message body"#.to_vec(),
        b"<38>Jan 12 09:58:01 bastion sshd[811]: Failed password for invalid user admin from 203.0.113.9 port 52113 ssh2".to_vec(),
        b"<134>Jan 12 09:00:00 fw CEF:0|V|P|1|7|Scan|9|src=198.51.100.7 dst=10.0.0.2".to_vec(),
        avro_event,
    ]
}

fn check(normalizer: &Normalizer, payload: Vec<u8>) -> Result<(), TestCaseError> {
    let record = Record { topic: "raw".into(), partition: 0, offset: 1, key: None, payload, timestamp_ms: Some(1_736_676_000_000) };
    match normalizer.normalize(&record, NOW) {
        Ok(event) => {
            let bytes = avro::encode_event(&event).map_err(|e| TestCaseError::fail(format!("normalized event does not encode: {e}")))?;
            let back = avro::decode_event(&bytes).map_err(|e| TestCaseError::fail(format!("does not decode: {e}")))?;
            prop_assert_eq!(back, event);
        }
        Err(error) => {
            prop_assert!(!error.to_string().is_empty());
            prop_assert!(!error.reason_code().is_empty());
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), prop::collection::vec(prop_oneof![any::<u8>(), Just(b'|'), Just(b'='), Just(b'"'), Just(b'\\'), Just(b'['), Just(b'{')], 1..8))
            .prop_map(|(i, bytes)| Mutation::Insert(i, bytes)),
        (any::<usize>(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
    ]
}

fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len().max(1);
        match m {
            Mutation::Flip(i, b) => {
                if !bytes.is_empty() {
                    bytes[i % len] ^= b;
                }
            }
            Mutation::Truncate(i) => bytes.truncate(i % len),
            Mutation::Insert(i, more) => {
                let at = i % (bytes.len() + 1);
                bytes.splice(at..at, more.iter().copied());
            }
            Mutation::Delete(i, n) => {
                if !bytes.is_empty() {
                    let at = i % len;
                    let end = (at + n).min(bytes.len());
                    bytes.drain(at..end);
                }
            }
        }
    }
    bytes
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(payload in prop::collection::vec(any::<u8>(), 0..2048)) {
        check(&Normalizer::new(NormalizeConfig::default(), "t"), payload)?;
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        check(&Normalizer::new(NormalizeConfig::default(), "t"), text.into_bytes())?;
    }

    #[test]
    fn mutated_samples_of_every_format_never_panic(sample in 0usize..9, mutations in prop::collection::vec(mutation(), 1..6)) {
        let payload = apply(samples()[sample].clone(), &mutations);
        check(&Normalizer::new(NormalizeConfig::default(), "t"), payload)?;
    }

    #[test]
    fn avro_frames_with_our_schema_id_and_garbage_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut payload = vec![0, 0, 0, 0, 101];
        payload.extend(body);
        check(&Normalizer::new(NormalizeConfig::default(), "t"), payload)?;
    }
}

#[test]
fn every_sample_normalizes() {
    let normalizer = Normalizer::new(NormalizeConfig::default(), "t");
    for (i, sample) in samples().into_iter().enumerate() {
        let record = Record { topic: "raw".into(), partition: 0, offset: 1, key: None, payload: sample, timestamp_ms: None };
        normalizer.normalize(&record, NOW).unwrap_or_else(|e| panic!("sample {i}: {e}"));
    }
}
