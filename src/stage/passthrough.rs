//! Stand-ins: [`Passthrough`] forwards each record unchanged (same key, same bytes) to the
//! next topic, the transport baseline load tests measure against (`pipeline.passthrough`).
//! [`AlertPlaceholder`], until the alert stage is built, raises an alert for every event that carries a match, a
//! correlation or a high risk score, without the real alert stage's policy or
//! deduplication; it dead-letters records that are not events, as the real stage will.

use crate::bus::{OutMessage, Record};
use crate::event::{avro, Alert, Severity};

use super::{Stage, StageError, StageKind};

pub struct Passthrough {
    kind: StageKind,
    output_topic: String,
}

impl Passthrough {
    pub fn new(kind: StageKind, output_topic: String) -> Self {
        Self { kind, output_topic }
    }
}

impl Stage for Passthrough {
    fn kind(&self) -> StageKind {
        self.kind
    }

    fn process(&mut self, record: &Record, _now_us: i64, out: &mut Vec<OutMessage>) -> Result<(), StageError> {
        out.push(OutMessage { topic: self.output_topic.clone(), key: record.key.clone(), payload: record.payload.clone() });
        Ok(())
    }
}

/// Risk at or above which the placeholder raises an alert.
const ALERT_RISK_THRESHOLD: f64 = 80.0;

pub struct AlertPlaceholder {
    output_topic: String,
    dlq_topic: String,
}

impl AlertPlaceholder {
    pub fn new(output_topic: String, dlq_topic: String) -> Self {
        Self { output_topic, dlq_topic }
    }
}

impl Stage for AlertPlaceholder {
    fn kind(&self) -> StageKind {
        StageKind::Alert
    }

    fn process(&mut self, record: &Record, now_us: i64, out: &mut Vec<OutMessage>) -> Result<(), StageError> {
        let event = match avro::decode_event(&record.payload) {
            Ok(event) => event,
            Err(e) => {
                let dead = crate::normalize::dead_letter("alert", record, "bad_avro", e.to_string(), 1024 * 1024, now_us);
                let payload = avro::encode_dead_letter(&dead).map_err(|e| StageError::Internal(e.to_string()))?;
                out.push(OutMessage { topic: self.dlq_topic.clone(), key: record.key.clone(), payload });
                return Ok(());
            }
        };
        let risk = event.score.as_ref().map(|s| s.risk);
        if event.matches.is_empty() && event.correlations.is_empty() && risk.is_none_or(|r| r < ALERT_RISK_THRESHOLD) {
            return Ok(());
        }
        let mut rule_ids: Vec<String> = event.matches.iter().map(|m| m.rule_id.clone()).collect();
        rule_ids.extend(event.correlations.iter().map(|c| c.rule_id.clone()));
        let title = event
            .correlations
            .first()
            .map(|c| c.title.clone())
            .or_else(|| event.matches.first().map(|m| m.title.clone()))
            .unwrap_or_else(|| "High risk score".into());
        let alert = Alert {
            id: format!("{:032x}", xxhash_rust::xxh3::xxh3_128(format!("{}|{}", event.tenant, event.id).as_bytes())),
            tenant: event.tenant.clone(),
            time_us: event.time_us,
            last_seen_us: event.time_us,
            severity: if risk.is_some_and(|r| r >= 90.0) { Severity::High } else { Severity::Medium },
            title,
            rule_ids,
            entity: event.partition_key.clone(),
            risk,
            count: 1,
            event_ids: vec![event.id.clone()],
            ..Alert::default()
        };
        let payload = avro::encode_alert(&alert).map_err(|e| StageError::Internal(e.to_string()))?;
        out.push(OutMessage { topic: self.output_topic.clone(), key: Some(event.partition_key.into_bytes()), payload });
        Ok(())
    }
}
