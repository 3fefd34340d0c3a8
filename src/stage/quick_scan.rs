//! The quick-scan stage: every normalized event meets the Sigma rules, IoC sets and pattern
//! packs once, and leaves for `events.scanned` with its matches attached.
//!
//! All events go on, matched or not: later stages (correlate, ml-score) need the unmatched
//! ones too. A record that is not one of our Avro events is dead-lettered as `bad_avro`.

use crate::bus::{OutMessage, Record};
use crate::detect::DetectorHandle;
use crate::event::avro;

use super::{Stage, StageError, StageKind};


pub struct QuickScanStage {
    detector: DetectorHandle,
    output_topic: String,
    dlq_topic: String,
    slot: avro::EventSlot,
}

impl QuickScanStage {
    pub fn new(detector: DetectorHandle, output_topic: String, dlq_topic: String) -> Self {
        Self { detector, output_topic, dlq_topic, slot: avro::EventSlot::default() }
    }
}

impl Stage for QuickScanStage {
    fn kind(&self) -> StageKind {
        StageKind::QuickScan
    }

    fn process(&mut self, record: &Record, now_us: i64, out: &mut Vec<OutMessage>) -> Result<(), StageError> {
        let Some((event, detections_at)) = super::decode_for_detection_or_dead_letter("quick-scan", record, now_us, &self.dlq_topic, &mut self.slot, out)? else { return Ok(()) };
        let detector = self.detector.current();
        let found = detector.scan(event);
        for m in &found {
            metrics::counter!(crate::telemetry::names::SCAN_MATCHES, "kind" => m.kind.clone()).increment(1);
        }
        // A replayed record may already carry our matches: replace, never duplicate.
        event.matches.retain(|m| !matches!(m.kind.as_str(), "sigma" | "ioc" | "pattern"));
        event.matches.extend(found);
        let payload = avro::encode_event_detections(&record.payload, detections_at, event).map_err(|e| StageError::Internal(e.to_string()))?;
        out.push(OutMessage { topic: self.output_topic.clone(), key: record.key.clone(), payload });
        Ok(())
    }
}
