//! The quick-scan stage: every normalized event meets the Sigma rules, IoC sets and pattern
//! packs once, and leaves for `events.scanned` with its matches attached.
//!
//! All events go on, matched or not: later stages (correlate, ml-score) need the unmatched
//! ones too. A record that is not one of our Avro events is dead-lettered as `bad_avro`.
//!
//! Events leave without their original text (`raw`) unless `scan.forward_raw`: this is the
//! last stage with rules, and nothing after it reads the text, which was about half of an
//! event's bytes on each of the three hops that follow (the pipeline's throughput flat out,
//! load/README.md session 23).

use crate::bus::{OutMessage, Record};
use crate::detect::DetectorHandle;
use crate::event::avro;

use super::{Stage, StageError, StageKind};


pub struct QuickScanStage {
    detector: DetectorHandle,
    output_topic: crate::bus::Topic,
    dlq_topic: crate::bus::Topic,
    slot: avro::EventSlot,
    /// Keep `raw` on the events passed on (`scan.forward_raw`).
    forward_raw: bool,
}

impl QuickScanStage {
    pub fn new(detector: DetectorHandle, output_topic: String, dlq_topic: String) -> Self {
        Self { detector, output_topic: output_topic.into(), dlq_topic: dlq_topic.into(), slot: avro::EventSlot::default(), forward_raw: false }
    }

    /// Keep (`true`) or drop the original text of the events passed on.
    pub fn forwarding_raw(mut self, forward_raw: bool) -> Self {
        self.forward_raw = forward_raw;
        self
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
        if !self.forward_raw {
            event.raw = None;
        }
        let payload = avro::encode_event_detections(&record.payload, detections_at, event).map_err(|e| StageError::Internal(e.to_string()))?;
        out.push(OutMessage { topic: self.output_topic.clone(), key: record.key.clone(), payload });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    fn scan_one(stage: &mut QuickScanStage, event: &Event) -> Event {
        let payload = avro::encode_event(event).unwrap();
        let record = Record { topic: "events.normalized".into(), partition: 0, offset: 7, key: Some(b"k".to_vec()), payload, timestamp_ms: None };
        let mut out = Vec::new();
        stage.process(&record, 0, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!((&*out[0].topic, out[0].key.as_deref()), ("events.scanned", Some(&b"k"[..])));
        avro::decode_event(&out[0].payload).unwrap()
    }

    #[test]
    fn the_original_text_stops_here_unless_forwarded() {
        let event = Event {
            id: "e1".into(),
            tenant: "acme".into(),
            host: Some("web-1".into()),
            raw: Some(r#"{"host":"web-1","msg":"hello"}"#.into()),
            ..Default::default()
        };
        let stage = || QuickScanStage::new(DetectorHandle::new(crate::detect::Detector::empty()), "events.scanned".into(), "events.dlq".into());
        let dropped = scan_one(&mut stage(), &event);
        assert_eq!(dropped, Event { raw: None, ..event.clone() }, "everything else passes unchanged");
        let kept = scan_one(&mut stage().forwarding_raw(true), &event);
        assert_eq!(kept, event);
        // Twice through the same stage (its decoding slot reused): still dropped.
        let mut one = stage();
        scan_one(&mut one, &event);
        assert_eq!(scan_one(&mut one, &event).raw, None);
    }
}
