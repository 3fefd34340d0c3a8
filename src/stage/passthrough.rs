//! [`Passthrough`] forwards each record unchanged (same key, same bytes) to the next topic:
//! the transport baseline load tests measure against (`pipeline.passthrough`).

use crate::bus::{OutMessage, Record};

use super::{Stage, StageError, StageKind};

pub struct Passthrough {
    kind: StageKind,
    output_topic: crate::bus::Topic,
}

impl Passthrough {
    pub fn new(kind: StageKind, output_topic: String) -> Self {
        Self { kind, output_topic: output_topic.into() }
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
