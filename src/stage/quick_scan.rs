//! The quick-scan stage: every normalized event meets the Sigma rules, IoC sets and pattern
//! packs once, and leaves for `events.scanned` with its matches attached.
//!
//! All events go on, matched or not: later stages (correlate, ml-score) need the unmatched
//! ones too. A record that is not one of our Avro events is dead-lettered as `bad_avro`.

use crate::bus::{OutMessage, Record};
use crate::detect::DetectorHandle;
use crate::event::avro;

use super::{Stage, StageError, StageKind};

/// Bytes of the original record kept in a dead letter.
const DLQ_ORIGINAL_BYTES: usize = 64 * 1024;

pub struct QuickScanStage {
    detector: DetectorHandle,
    output_topic: String,
    dlq_topic: String,
}

impl QuickScanStage {
    pub fn new(detector: DetectorHandle, output_topic: String, dlq_topic: String) -> Self {
        Self { detector, output_topic, dlq_topic }
    }
}

impl Stage for QuickScanStage {
    fn kind(&self) -> StageKind {
        StageKind::QuickScan
    }

    fn process(&mut self, record: &Record, now_us: i64, out: &mut Vec<OutMessage>) -> Result<(), StageError> {
        let mut event = match avro::decode_event(&record.payload) {
            Ok(event) => event,
            Err(e) => {
                let dead = crate::normalize::dead_letter("quick-scan", record, "bad_avro", e.to_string(), DLQ_ORIGINAL_BYTES, now_us);
                let payload = avro::encode_dead_letter(&dead).map_err(|e| StageError::Internal(e.to_string()))?;
                out.push(OutMessage { topic: self.dlq_topic.clone(), key: record.key.clone(), payload });
                return Ok(());
            }
        };
        let detector = self.detector.current();
        let found = detector.scan(&event);
        for m in &found {
            metrics::counter!(crate::telemetry::names::SCAN_MATCHES, "kind" => m.kind.clone()).increment(1);
        }
        // A replayed record may already carry our matches: replace, never duplicate.
        event.matches.retain(|m| !matches!(m.kind.as_str(), "sigma" | "ioc" | "pattern"));
        event.matches.extend(found);
        let payload = avro::encode_event(&event).map_err(|e| StageError::Internal(e.to_string()))?;
        out.push(OutMessage { topic: self.output_topic.clone(), key: record.key.clone(), payload });
        Ok(())
    }
}
