//! Drives one stage over a bus with at-least-once delivery and bounded in-flight work.
//!
//! # Correctness
//!
//! - Each input record is registered with the [`OffsetTracker`] before it is processed; its
//!   offset becomes committable only when every message produced from it was acknowledged,
//!   and only as part of a contiguous run (so a crash replays the oldest unfinished record).
//! - Acks are polled before new input (`biased` select), so a slow transport is drained
//!   before more work is taken on; at `max_in_flight` unacknowledged records the stage stops
//!   reading (overflow policy `OnFull::Block`), which is the backpressure.
//! - Shutdown: stop reading, (memory bus only) process what is already queued in-process,
//!   wait up to `drain_timeout` for acks, commit synchronously, return. What was not
//!   acknowledged is not committed and will be replayed.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Stage, StageError};
use crate::bus::{BusConsumer, BusError, BusProducer, CommitMode, OffsetTracker, OutMessage, Position, Record};
use crate::config::RunnerConfig;
use crate::telemetry::{StageState, StageStats};

/// Pause after a failed receive before trying again.
const RECEIVE_RETRY_BACKOFF: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("stage {stage}: {source}")]
    Stage { stage: &'static str, source: StageError },
    #[error("stage {stage}: {source} (input {position} stays uncommitted and will be replayed)")]
    Bus { stage: &'static str, position: String, source: BusError },
    #[error("stage {stage}: {source}")]
    Setup { stage: &'static str, source: BusError },
}

/// (input position, assignment generation, outcome of every output's delivery)
type AckResult = (Position, u64, Result<(), BusError>);

enum SendError {
    Bus(BusError),
    Ack(RunnerError),
}

enum Step {
    Shutdown,
    Acked(AckResult),
    CommitTick,
    Received(Result<Record, BusError>),
}

pub struct StageRunner {
    stage: Box<dyn Stage>,
    consumer: BusConsumer,
    producer: BusProducer,
    config: RunnerConfig,
    dlq_topic: String,
    stats: Arc<StageStats>,
    tracker: Arc<Mutex<OffsetTracker>>,
    acks: FuturesUnordered<BoxFuture<'static, AckResult>>,
    outputs: Vec<OutMessage>,
    last_commit: Instant,
    /// Assignment generation last seen per input partition (to tell the stage about new ones).
    generations: crate::FastMap<(String, i32), u64>,
    /// How old input records are when taken (their produce time to now).
    input_age: metrics::Histogram,
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl StageRunner {
    pub fn new(
        stage: Box<dyn Stage>,
        mut consumer: BusConsumer,
        producer: BusProducer,
        config: RunnerConfig,
        dlq_topic: String,
        stats: Arc<StageStats>,
    ) -> Self {
        let tracker = Arc::new(Mutex::new(OffsetTracker::new()));
        consumer.attach_tracker(tracker.clone());
        let input_age = metrics::histogram!(crate::telemetry::names::STAGE_INPUT_AGE, "stage" => stats.stage.as_str());
        Self {
            stage,
            consumer,
            producer,
            config,
            dlq_topic,
            stats,
            tracker,
            acks: FuturesUnordered::new(),
            outputs: Vec::new(),
            last_commit: Instant::now(),
            generations: crate::FastMap::default(),
            input_age,
        }
    }

    fn name(&self) -> &'static str {
        self.stage.kind().as_str()
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, OffsetTracker> {
        // Never held across an await; a poisoned lock only means another thread panicked
        // while holding it, and the tracker's state is still consistent per call.
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs until `shutdown` is cancelled, then drains and commits.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), RunnerError> {
        let stage = self.name();
        self.stats.set_state(StageState::Running);
        info!(stage, "Stage started.");
        let result = self.run_inner(&shutdown).await;
        let drained = self.drain().await;
        let outcome = result.and(drained);
        match &outcome {
            Ok(()) => {
                self.stats.set_state(StageState::Stopped);
                info!(stage, "Stage stopped.");
            }
            Err(e) => {
                self.stats.set_state(StageState::Failed);
                tracing::error!(stage, error = %e, "Stage failed.");
            }
        }
        outcome
    }

    async fn run_inner(&mut self, shutdown: &CancellationToken) -> Result<(), RunnerError> {
        let mut commit_tick = tokio::time::interval(self.config.commit_interval);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let can_read = self.acks.len() < self.config.max_in_flight;
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Step::Shutdown,
                Some(ack) = self.acks.next(), if !self.acks.is_empty() => Step::Acked(ack),
                _ = commit_tick.tick() => Step::CommitTick,
                received = self.consumer.recv(), if can_read => Step::Received(received),
            };
            match step {
                Step::Shutdown => return Ok(()),
                Step::Acked(ack) => self.on_ack(ack)?,
                Step::CommitTick => {
                    if let Some(lag) = self.consumer.lag() {
                        self.stats.lag.store(lag, Ordering::Relaxed);
                    }
                    self.commit(CommitMode::Background)?
                }
                Step::Received(Ok(record)) => self.handle(record).await?,
                Step::Received(Err(BusError::Closed(topic))) => {
                    info!(stage = self.name(), %topic, "Input closed.");
                    return Ok(());
                }
                Step::Received(Err(error)) => {
                    warn!(stage = self.name(), %error, "Receive failed; retrying.");
                    tokio::time::sleep(RECEIVE_RETRY_BACKOFF).await;
                }
            }
        }
    }

    fn on_ack(&mut self, (position, generation, result): AckResult) -> Result<(), RunnerError> {
        match result {
            Ok(()) => {
                self.tracker().acked(&position, generation);
                self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                Ok(())
            }
            Err(source) => Err(RunnerError::Bus { stage: self.name(), position: position.to_string(), source }),
        }
    }

    async fn handle(&mut self, record: Record) -> Result<(), RunnerError> {
        let position = record.position();
        let Some(generation) = self.tracker().received(&position) else {
            // A straggler from a partition revoked in a rebalance: its new owner reads it
            // from the committed offset, so processing it here would only race that owner.
            tracing::debug!(stage = self.name(), %position, "Skipping record of a revoked partition.");
            return Ok(());
        };
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let now = now_us();
        if let Some(produced_ms) = record.timestamp_ms.filter(|t| *t > 0) {
            self.input_age.record((now / 1000 - produced_ms).max(0) as f64 / 1000.0);
        }
        self.outputs.clear();
        let stage = self.name();
        let partition = (record.topic.clone(), record.partition);
        if self.generations.get(&partition) != Some(&generation) {
            self.stage
                .partition_assigned(&record.topic, record.partition)
                .map_err(|source| RunnerError::Stage { stage, source })?;
            self.generations.insert(partition, generation);
        }
        self.stage
            .process(&record, now, &mut self.outputs)
            .map_err(|source| RunnerError::Stage { stage, source })?;
        let mut pending = Vec::with_capacity(self.outputs.len());
        let mut outputs = std::mem::take(&mut self.outputs);
        for message in outputs.drain(..) {
            if message.topic == self.dlq_topic {
                self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            } else {
                self.stats.produced.fetch_add(1, Ordering::Relaxed);
            }
            let ack = self.send_while_acking(message).await.map_err(|source| match source {
                SendError::Bus(source) => RunnerError::Bus { stage, position: position.to_string(), source },
                SendError::Ack(e) => e,
            })?;
            pending.push(ack);
        }
        self.outputs = outputs;
        let ack = futures::future::try_join_all(pending).map(move |r| (position, generation, r.map(|_| ())));
        self.acks.push(Box::pin(ack));
        Ok(())
    }

    /// Sends one output; while the transport pushes back, keeps applying acks and committing
    /// on schedule, so a long stall downstream does not also stall commits of finished work.
    async fn send_while_acking(&mut self, message: OutMessage) -> Result<crate::bus::AckFuture, SendError> {
        let producer = self.producer.clone();
        let send = producer.send(message);
        tokio::pin!(send);
        loop {
            tokio::select! {
                biased;
                sent = &mut send => return sent.map_err(SendError::Bus),
                Some(ack) = self.acks.next(), if !self.acks.is_empty() => {
                    self.on_ack(ack).map_err(SendError::Ack)?;
                }
                _ = tokio::time::sleep_until((self.last_commit + self.config.commit_interval).into()) => {
                    self.commit(CommitMode::Background).map_err(SendError::Ack)?;
                }
            }
        }
    }

    fn commit(&mut self, mode: CommitMode) -> Result<(), RunnerError> {
        // Set even when nothing is committed, so the blocked-send timer re-arms, not spins.
        self.last_commit = Instant::now();
        let stage = self.name();
        // A stateful stage checkpoints first; commits never pass what its checkpoint covers.
        let owned = self.tracker().owned_partitions();
        let durable = self.stage.checkpoint(owned.as_deref()).map_err(|source| RunnerError::Stage { stage, source })?;
        if let Some(durable) = durable {
            self.tracker().set_durable(&durable);
        }
        let offsets = match mode {
            CommitMode::Background => self.tracker().take_commits(),
            CommitMode::Blocking => self.tracker().all_commits(),
        };
        if offsets.is_empty() {
            return Ok(());
        }
        match self.consumer.commit(&offsets, mode) {
            Ok(()) => {
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.stage.committed(&offsets);
            }
            Err(error) => warn!(stage, %error, "Commit failed; will retry with the next one."),
        }
        Ok(())
    }

    /// Processes what is already queued in-process (memory bus), waits for acks up to the
    /// drain timeout, and commits what is finished.
    async fn drain(&mut self) -> Result<(), RunnerError> {
        let stage = self.name();
        let mut result = Ok(());
        while let Some(record) = self.consumer.try_recv_buffered() {
            if let Err(e) = self.handle(record).await {
                result = Err(e);
                break;
            }
        }
        let deadline = Instant::now() + self.config.drain_timeout;
        while !self.acks.is_empty() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, self.acks.next()).await {
                Ok(Some(ack)) => {
                    if let Err(e) = self.on_ack(ack) {
                        warn!(stage, error = %e, "Delivery failed while draining.");
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    warn!(stage, unacknowledged = self.acks.len(), "Drain timeout; unacknowledged input will be replayed.");
                    break;
                }
            }
        }
        let committed = self.commit(CommitMode::Blocking);
        result.and(committed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::memory::MemoryBus;
    use crate::stage::StageKind;

    /// Forwards every record to `out`.
    struct Forward;

    impl Stage for Forward {
        fn kind(&self) -> StageKind {
            StageKind::QuickScan
        }
        fn process(&mut self, record: &Record, _now_us: i64, out: &mut Vec<OutMessage>) -> Result<(), StageError> {
            out.push(OutMessage { topic: "out".into(), key: None, payload: record.payload.clone() });
            Ok(())
        }
    }

    fn config() -> RunnerConfig {
        RunnerConfig { max_in_flight: 100, commit_interval: Duration::from_millis(10), drain_timeout: Duration::from_secs(1) }
    }

    #[tokio::test]
    async fn a_stalled_downstream_bounds_intake_exactly() {
        const CAPACITY: usize = 8;
        let bus = MemoryBus::new(CAPACITY);
        let producer = bus.producer();
        // Fill the input with more than the pipeline can hold while `out` is never read.
        let feeder = tokio::spawn({
            let producer = producer.clone();
            async move {
                for i in 0..50u8 {
                    let ack = producer.send(OutMessage { topic: "in".into(), key: None, payload: vec![i] }).await.unwrap();
                    ack.await.unwrap();
                }
            }
        });
        let stats = crate::telemetry::StageStats::new(StageKind::QuickScan);
        let runner = StageRunner::new(
            Box::new(Forward),
            BusConsumer::Memory(bus.consumer("in").unwrap()),
            BusProducer::Memory(producer),
            config(),
            "dlq".into(),
            stats.clone(),
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn(runner.run(stop.clone()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        // `out` holds CAPACITY messages; the runner is blocked sending the next one.
        assert_eq!(bus.backlog("out"), CAPACITY);
        assert_eq!(stats.received.load(Ordering::Relaxed), CAPACITY as u64 + 1);
        assert_eq!(bus.committed("in"), CAPACITY as i64, "only acknowledged input is committed");
        // Let downstream drain: everything flows, nothing is lost.
        let mut out = bus.consumer("out").unwrap();
        let mut seen = Vec::new();
        while seen.len() < 50 {
            seen.push(out.recv().await.unwrap().payload[0]);
        }
        assert_eq!(seen, (0..50u8).collect::<Vec<_>>());
        feeder.await.unwrap();
        stop.cancel();
        task.await.unwrap().unwrap();
        assert_eq!(bus.committed("in"), 50);
    }
}
