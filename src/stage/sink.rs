//! The sink role: `events.scored`, `alerts` and `events.dlq` into ClickHouse, in batches,
//! committing input offsets only after the rows holding them were inserted.
//!
//! It is a stateful stage in the runner's terms: records are buffered (no output); before
//! every commit the runner asks for a checkpoint, the sink inserts what it holds and reports
//! the offsets now in ClickHouse, and the runner commits no further. A batch is also
//! inserted as soon as it holds `batch_rows` rows (size), and at every commit tick (time).
//!
//! ClickHouse down: the batch stays, commits wait, and inserts are retried at each tick; at
//! `max_buffered_rows` the sink stops taking input and retries with backoff until the
//! server is back (overflow policy: block). A crash between insert and commit re-inserts
//! rows with the same ids, which the ReplacingMergeTree tables fold (exact counts with
//! FINAL). Records that are not our Avro are counted and skipped: they come from our own
//! topics, and dead-lettering a dead letter would loop.

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{Stage, StageError, StageKind};
use crate::bus::{CommitOffsets, OutMessage, Record};
use crate::db::rows::{AlertRow, DeadLetterRow, EventRow};
use crate::db::ClickHouseConfig;
use crate::event::avro;
use crate::telemetry::names;

/// `[sink]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// Rows per insert (size trigger; the commit interval is the time trigger).
    pub batch_rows: usize,
    /// Rows held while ClickHouse is unreachable before the sink stops reading.
    pub max_buffered_rows: usize,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self { batch_rows: 10_000, max_buffered_rows: 500_000 }
    }
}

#[derive(Default)]
struct Batch {
    events: Vec<EventRow>,
    alerts: Vec<AlertRow>,
    dead_letters: Vec<DeadLetterRow>,
}

impl Batch {
    fn rows(&self) -> usize {
        self.events.len() + self.alerts.len() + self.dead_letters.len()
    }
}

type Reply = mpsc::SyncSender<Result<(), (Batch, String)>>;

/// Inserts batches on a thread of its own (the async client; the stage core is synchronous).
struct Writer {
    requests: mpsc::SyncSender<(Batch, Reply)>,
}

impl Writer {
    fn start(config: &ClickHouseConfig) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        let client = config.client().with_database(&config.database);
        let (requests, inbox) = mpsc::sync_channel::<(Batch, Reply)>(1);
        std::thread::Builder::new()
            .name("clickhouse-sink".into())
            .spawn(move || {
                while let Ok((batch, reply)) = inbox.recv() {
                    let result = runtime.block_on(insert_all(&client, &batch)).map_err(|e| (batch, e.to_string()));
                    let _ = reply.send(result);
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(Self { requests })
    }

    fn insert(&self, batch: Batch) -> Result<(), (Batch, String)> {
        let (reply, answer) = mpsc::sync_channel(1);
        if let Err(mpsc::SendError((batch, _))) = self.requests.send((batch, reply)) {
            return Err((batch, "the ClickHouse writer thread stopped".into()));
        }
        answer.recv().unwrap_or_else(|_| Err((Batch::default(), "the ClickHouse writer thread stopped".into())))
    }
}

async fn insert_all(client: &clickhouse::Client, batch: &Batch) -> clickhouse::error::Result<()> {
    if !batch.events.is_empty() {
        let mut insert = client.insert::<EventRow>("events").await?;
        for row in &batch.events {
            insert.write(row).await?;
        }
        insert.end().await?;
    }
    if !batch.alerts.is_empty() {
        let mut insert = client.insert::<AlertRow>("alerts").await?;
        for row in &batch.alerts {
            insert.write(row).await?;
        }
        insert.end().await?;
    }
    if !batch.dead_letters.is_empty() {
        let mut insert = client.insert::<DeadLetterRow>("dead_letters").await?;
        for row in &batch.dead_letters {
            insert.write(row).await?;
        }
        insert.end().await?;
    }
    Ok(())
}

pub struct SinkStage {
    writer: Writer,
    config: SinkConfig,
    events_topic: String,
    alerts_topic: String,
    dlq_topic: String,
    batch: Batch,
    /// Highest offset per input partition held in `batch` (by the records' shared topic
    /// name: noted for every record, so never copied).
    buffered: HashMap<(crate::bus::Topic, i32), i64>,
    /// Per input partition, the offset (exclusive) through which rows are in ClickHouse.
    inserted: HashMap<(crate::bus::Topic, i32), i64>,
    failing: bool,
}

impl SinkStage {
    pub fn new(clickhouse: &ClickHouseConfig, config: SinkConfig, events_topic: String, alerts_topic: String, dlq_topic: String) -> Result<Self, StageError> {
        let writer = Writer::start(clickhouse).map_err(StageError::External)?;
        Ok(Self {
            writer,
            config,
            events_topic,
            alerts_topic,
            dlq_topic,
            batch: Batch::default(),
            buffered: HashMap::new(),
            inserted: HashMap::new(),
            failing: false,
        })
    }

    /// Inserts the batch; on success everything buffered counts as inserted.
    fn flush(&mut self) -> bool {
        if self.batch.rows() == 0 {
            self.inserted.extend(self.buffered.drain().map(|(k, v)| (k, v + 1)));
            return true;
        }
        let rows = self.batch.rows();
        let started = std::time::Instant::now();
        match self.writer.insert(std::mem::take(&mut self.batch)) {
            Ok(()) => {
                metrics::counter!(names::SINK_ROWS).increment(rows as u64);
                metrics::histogram!(names::SINK_INSERT_SECONDS).record(started.elapsed().as_secs_f64());
                self.inserted.extend(self.buffered.drain().map(|(k, v)| (k, v + 1)));
                if self.failing {
                    info!("ClickHouse inserts succeed again.");
                    self.failing = false;
                }
                true
            }
            Err((batch, error)) => {
                self.batch = batch;
                metrics::counter!(names::SINK_INSERT_FAILURES).increment(1);
                if !self.failing {
                    warn!(%error, rows, "ClickHouse insert failed; keeping the batch and retrying (commits wait).");
                    self.failing = true;
                }
                false
            }
        }
    }
}

impl Stage for SinkStage {
    fn kind(&self) -> StageKind {
        StageKind::Sink
    }

    fn process(&mut self, record: &Record, now_us: i64, _out: &mut Vec<OutMessage>) -> Result<(), StageError> {
        let row_added = if *record.topic == *self.events_topic {
            avro::decode_event(&record.payload).map(|e| self.batch.events.push(EventRow::from_event(&e, now_us))).is_ok()
        } else if *record.topic == *self.alerts_topic {
            avro::decode_alert(&record.payload).map(|a| self.batch.alerts.push(AlertRow::from_alert(&a, now_us))).is_ok()
        } else if *record.topic == *self.dlq_topic {
            avro::decode_dead_letter(&record.payload).map(|d| self.batch.dead_letters.push(DeadLetterRow::from_dead_letter(&d, now_us))).is_ok()
        } else {
            false
        };
        if !row_added {
            metrics::counter!(names::SINK_SKIPPED).increment(1);
            warn!(topic = %record.topic, partition = record.partition, offset = record.offset, "Not one of our records; skipped.");
        }
        self.buffered.insert((record.topic.clone(), record.partition), record.offset);
        if self.batch.rows() >= self.config.batch_rows {
            self.flush();
        }
        // Overflow policy: block. Hold no more than max_buffered_rows; wait for ClickHouse.
        let mut backoff = Duration::from_millis(200);
        while self.batch.rows() >= self.config.max_buffered_rows && !self.flush() {
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        Ok(())
    }

    fn checkpoint(&mut self, owned: Option<&[(String, i32)]>) -> Result<Option<CommitOffsets>, StageError> {
        self.flush();
        if let Some(owned) = owned {
            self.inserted.retain(|(t, p), _| owned.iter().any(|(ot, op)| **ot == **t && op == p));
        }
        Ok(Some(self.inserted.iter().map(|((t, p), o)| (t.to_string(), *p, *o)).collect()))
    }
}
