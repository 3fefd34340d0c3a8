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
//! - Records that are ready back to back are taken as one burst (at most
//!   `runner.burst_max` records, `runner.burst_max_wait` long) and their outputs handed to
//!   the producer together when no more input is ready, so a fetched batch leaves as one
//!   produce batch per partition (see `Burst`). Records of a burst are registered before
//!   they are processed, so a crash mid-burst replays them like any unacknowledged record.
//!   Before the hand-over the stage finishes the burst ([`Stage::finish_burst`]: the alert
//!   stage joins the burst's alerts in one Redis round trip); if that fails, nothing of the
//!   burst is sent or committed.
//! - Shutdown: stop reading, hand over the open burst, (memory bus only) process what is
//!   already queued in-process, wait up to `drain_timeout` for acks, commit synchronously,
//!   return. What was not acknowledged is not committed and will be replayed.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::TryJoinAll;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Stage, StageError};
use crate::bus::{AckFuture, BusConsumer, BusError, BusProducer, CommitMode, OffsetTracker, OutMessage, Position, Record};
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

/// The acks of one input record's outputs, resolving to its [`AckResult`]. A concrete type,
/// so the runner's set of pending acks holds it without a box per record.
struct PendingAck {
    position: Position,
    generation: u64,
    acks: Acks,
}

enum Acks {
    /// Most records have one output (or none: `Done`).
    One(AckFuture),
    /// Several outputs (an alert and its JSON form, say): done when all are, or at the
    /// first failure.
    Many(Pin<Box<TryJoinAll<AckFuture>>>),
    Done,
}

impl Future for PendingAck {
    type Output = AckResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<AckResult> {
        let this = self.get_mut();
        let outcome = match &mut this.acks {
            Acks::One(ack) => futures::ready!(Pin::new(ack).poll(cx)),
            Acks::Many(acks) => futures::ready!(acks.as_mut().poll(cx)).map(|_| ()),
            Acks::Done => Ok(()),
        };
        Poll::Ready((this.position.clone(), this.generation, outcome))
    }
}

enum SendError {
    Bus(BusError),
    Ack(RunnerError),
}

enum Step {
    Shutdown,
    Acked(AckResult),
    CommitTick,
    Received(Result<Record, BusError>),
    /// No more input is ready (or the burst is full): hand the burst to the transport.
    Flush,
}

/// Input records taken back to back while more were ready, processed, and their outputs
/// not yet handed to the transport.
///
/// Why: librdkafka's batch for a partition leaves when its linger runs out, counted from
/// its first message. A stage that sends each output as soon as it is made spreads one
/// fetched burst over several lingers when processing it takes longer than one, and the
/// broker's cost is per request: flat out, the full pipeline sent ~3.8x the produce
/// batches of a pass-through for the same records (load/README.md, session 24). Handing
/// over a burst at once makes it one batch per partition.
///
/// The burst closes when no input is ready, at `burst_max` records, or when it has lasted
/// `BURST_CAUGHT_UP_WAIT` (a producer linger) — unless the stage is behind: while the
/// records it takes had already waited longer than `burst_max_wait` since they were
/// produced, it goes on up to `burst_max_wait`. So a stage that keeps up (even a busy one,
/// whose input queue is seldom empty) adds at most a linger to a record's wait, and one
/// working off a backlog sends few, large batches, adding less than its input had
/// already waited. Bursts that ran to `burst_max_wait` alone, at 20,000 events/s on this
/// host, raised the pipeline's p99 from 57-86 ms to 99-112 ms (load/README.md, session 24).
#[derive(Default)]
struct Burst {
    /// (input position, assignment generation, end of its outputs in `outputs`)
    records: Vec<(Position, u64, usize)>,
    outputs: Vec<OutMessage>,
    /// Bytes of payload in `outputs`.
    bytes: usize,
    /// When the first record of the burst was taken.
    started: Option<Instant>,
    /// Whether the last record taken had waited longer than `burst_max_wait` since it was
    /// produced (the stage is working off a backlog).
    behind: bool,
    /// The clock as the last record was taken (µs): the burst's time when it is finished,
    /// without reading the clock again.
    last_now_us: i64,
}

/// How long a burst lasts at most while the stage keeps up with its input: librdkafka's
/// linger as threatpipe sets it, so a record waits at most about as long as its batch
/// would have anyway.
const BURST_CAUGHT_UP_WAIT: Duration = Duration::from_millis(2);

/// A burst also closes once its outputs hold this many bytes, whatever `burst_max` allows
/// (events of up to `normalize.max_event_bytes` each).
const BURST_MAX_BYTES: usize = 16 << 20;

pub struct StageRunner {
    stage: Box<dyn Stage>,
    consumer: BusConsumer,
    producer: BusProducer,
    config: RunnerConfig,
    dlq_topic: String,
    stats: Arc<StageStats>,
    tracker: Arc<Mutex<OffsetTracker>>,
    acks: FuturesUnordered<PendingAck>,
    burst: Burst,
    /// The longest burst while the stage keeps up (`BURST_CAUGHT_UP_WAIT`, or less); the
    /// other limits are `config`'s.
    burst_caught_up_wait: Duration,
    last_commit: Instant,
    /// Assignment generation last seen per input partition (to tell the stage about new ones),
    /// keyed by the records' shared topic name.
    generations: crate::FastMap<(crate::bus::Topic, i32), u64>,
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
        mut config: RunnerConfig,
        dlq_topic: String,
        stats: Arc<StageStats>,
    ) -> Self {
        let tracker = Arc::new(Mutex::new(OffsetTracker::new()));
        consumer.attach_tracker(tracker.clone());
        let input_age = metrics::histogram!(crate::telemetry::names::STAGE_INPUT_AGE, "stage" => stats.stage.as_str());
        // One record per burst on the in-process bus, which has no per-request cost to save.
        config.burst_max = match producer {
            BusProducer::Memory(_) => 1,
            BusProducer::Kafka(_) => config.burst_max.max(1),
        };
        let burst_caught_up_wait = BURST_CAUGHT_UP_WAIT.min(config.burst_max_wait);
        Self {
            stage,
            consumer,
            producer,
            config,
            dlq_topic,
            stats,
            tracker,
            acks: FuturesUnordered::new(),
            burst: Burst::default(),
            burst_caught_up_wait,
            last_commit: Instant::now(),
            generations: crate::FastMap::default(),
            input_age,
        }
    }

    /// Sets the burst size and longest wait, behind or not, whatever the transport (tests
    /// exercise bursts on the in-process bus, which otherwise sends each output at once).
    pub fn bursting(mut self, burst_max: usize, burst_max_wait: Duration) -> Self {
        self.config.burst_max = burst_max.max(1);
        self.config.burst_max_wait = burst_max_wait;
        self.burst_caught_up_wait = burst_max_wait;
        self
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
            let can_read = self.acks.len() + self.burst.records.len() < self.config.max_in_flight && self.burst_open();
            let has_burst = !self.burst.records.is_empty();
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Step::Shutdown,
                Some(ack) = self.acks.next(), if !self.acks.is_empty() => Step::Acked(ack),
                _ = commit_tick.tick() => Step::CommitTick,
                received = self.consumer.recv(), if can_read => Step::Received(received),
                // Reached only when no input is ready (or none may be read): the burst ends.
                () = std::future::ready(()), if has_burst => Step::Flush,
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
                Step::Received(Ok(record)) => self.take(record)?,
                Step::Flush => self.flush().await?,
                Step::Received(Err(BusError::Closed(topic))) => {
                    info!(stage = self.name(), %topic, "Input closed.");
                    return Ok(());
                }
                Step::Received(Err(error)) => {
                    warn!(stage = self.name(), %error, "Receive failed; retrying.");
                    self.flush().await?;
                    tokio::time::sleep(RECEIVE_RETRY_BACKOFF).await;
                }
            }
        }
    }

    /// Whether the current burst may take another record.
    fn burst_open(&self) -> bool {
        match self.burst.started {
            None => true,
            Some(started) => {
                let limit = if self.burst.behind { self.config.burst_max_wait } else { self.burst_caught_up_wait };
                self.burst.records.len() < self.config.burst_max && self.burst.bytes < BURST_MAX_BYTES && started.elapsed() < limit
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

    /// Registers and processes one input record; its outputs join the burst.
    fn take(&mut self, record: Record) -> Result<(), RunnerError> {
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
        self.burst.last_now_us = now;
        self.burst.behind = false;
        if let Some(produced_ms) = record.timestamp_ms.filter(|t| *t > 0) {
            let age = Duration::from_millis((now / 1000 - produced_ms).max(0).unsigned_abs());
            self.input_age.record(age.as_secs_f64());
            self.burst.behind = age > self.config.burst_max_wait;
        }
        let stage = self.name();
        let partition = (record.topic.clone(), record.partition);
        if self.generations.get(&partition) != Some(&generation) {
            self.stage
                .partition_assigned(&record.topic, record.partition)
                .map_err(|source| RunnerError::Stage { stage, source })?;
            self.generations.insert(partition, generation);
        }
        if self.burst.started.is_none() {
            self.burst.started = Some(Instant::now());
        }
        let before = self.burst.outputs.len();
        self.stage
            .process(&record, now, &mut self.burst.outputs)
            .map_err(|source| RunnerError::Stage { stage, source })?;
        self.burst.bytes += self.burst.outputs[before..].iter().map(|m| m.payload.len()).sum::<usize>();
        self.burst.records.push((position, generation, self.burst.outputs.len()));
        Ok(())
    }

    /// Hands the burst's outputs to the transport, in order; each input's offset becomes
    /// committable once all of its outputs are acknowledged.
    async fn flush(&mut self) -> Result<(), RunnerError> {
        let stage = self.name();
        let mut records = std::mem::take(&mut self.burst.records);
        let mut outputs = std::mem::take(&mut self.burst.outputs);
        self.burst.started = None;
        self.burst.bytes = 0;
        if !records.is_empty() {
            // The burst is already taken: if the stage cannot finish it, its unfinished
            // outputs are dropped with it (the drain's flush finds nothing to send) and its
            // records stay unacknowledged and replay.
            self.stage.finish_burst(self.burst.last_now_us, &mut outputs).map_err(|source| RunnerError::Stage { stage, source })?;
        }
        let mut messages = outputs.drain(..);
        let mut start = 0;
        for (position, generation, end) in records.drain(..) {
            // Most records have one output: its ack is awaited alone, without a vector and
            // a join (two allocations per record per stage).
            let mut single: Option<AckFuture> = None;
            let mut pending = Vec::new();
            for message in messages.by_ref().take(end - start) {
                if *message.topic == *self.dlq_topic {
                    self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.stats.produced.fetch_add(1, Ordering::Relaxed);
                }
                let ack = self.send_while_acking(message).await.map_err(|source| match source {
                    SendError::Bus(source) => RunnerError::Bus { stage, position: position.to_string(), source },
                    SendError::Ack(e) => e,
                })?;
                match single.take() {
                    None if pending.is_empty() => single = Some(ack),
                    first => pending.extend(first.into_iter().chain([ack])),
                }
            }
            start = end;
            let acks = match single {
                Some(ack) => Acks::One(ack),
                None if pending.is_empty() => Acks::Done,
                None => Acks::Many(Box::pin(futures::future::try_join_all(pending))),
            };
            self.acks.push(PendingAck { position, generation, acks });
        }
        drop(messages);
        // Both buffers go back, empty, to be filled again without growing anew.
        self.burst.records = records;
        self.burst.outputs = outputs;
        Ok(())
    }

    /// Sends one output; while the transport pushes back, keeps applying acks and committing
    /// on schedule, so a long stall downstream does not also stall commits of finished work.
    async fn send_while_acking(&mut self, message: OutMessage) -> Result<AckFuture, SendError> {
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
        let mut result = self.flush().await;
        while result.is_ok() {
            let Some(record) = self.consumer.try_recv_buffered() else { break };
            result = match self.take(record) {
                Ok(()) => self.flush().await,
                Err(e) => Err(e),
            };
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

    /// A runner of `stage` from `in` to `out` on `bus`, with [`config`].
    fn memory_runner(bus: &MemoryBus, stage: Box<dyn Stage>, stats: Arc<crate::telemetry::StageStats>) -> StageRunner {
        StageRunner::new(stage, BusConsumer::Memory(bus.consumer("in").unwrap()), BusProducer::Memory(bus.producer()), config(), "dlq".into(), stats)
    }

    fn config() -> RunnerConfig {
        RunnerConfig { max_in_flight: 100, commit_interval: Duration::from_millis(10), drain_timeout: Duration::from_secs(1), ..RunnerConfig::default() }
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
        let runner = memory_runner(&bus, Box::new(Forward), stats.clone());
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

    /// Forwards every record to `out`, noting for each how many outputs `out` already held
    /// when it was processed.
    struct ForwardWatching {
        bus: MemoryBus,
        seen_downstream: Arc<Mutex<Vec<usize>>>,
    }

    impl Stage for ForwardWatching {
        fn kind(&self) -> StageKind {
            StageKind::QuickScan
        }
        fn process(&mut self, record: &Record, _now_us: i64, out: &mut Vec<OutMessage>) -> Result<(), StageError> {
            self.seen_downstream.lock().unwrap().push(self.bus.backlog("out"));
            out.push(OutMessage { topic: "out".into(), key: None, payload: record.payload.clone() });
            Ok(())
        }
    }

    /// Runs `ForwardWatching` over 20 records that are all ready before it starts, with
    /// bursts of at most `burst_max`; returns what each record saw downstream.
    async fn run_bursting(burst_max: usize) -> Vec<usize> {
        let bus = MemoryBus::new(64);
        let producer = bus.producer();
        for i in 0..20u8 {
            let _ack = producer.send(OutMessage { topic: "in".into(), key: None, payload: vec![i] }).await.unwrap();
        }
        let seen_downstream = Arc::new(Mutex::new(Vec::new()));
        let stage = ForwardWatching { bus: bus.clone(), seen_downstream: seen_downstream.clone() };
        let runner = memory_runner(&bus, Box::new(stage), crate::telemetry::StageStats::new(StageKind::QuickScan))
            .bursting(burst_max, Duration::from_secs(5));
        let stop = CancellationToken::new();
        let task = tokio::spawn(runner.run(stop.clone()));
        let mut out = bus.consumer("out").unwrap();
        for i in 0..20u8 {
            assert_eq!(out.recv().await.unwrap().payload, vec![i], "outputs keep the input order");
        }
        // Everything acknowledged is committed by the next tick.
        tokio::time::timeout(Duration::from_secs(5), async {
            while bus.committed("in") < 20 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("all 20 inputs committed");
        stop.cancel();
        task.await.unwrap().unwrap();
        let seen = seen_downstream.lock().unwrap().clone();
        seen
    }

    #[tokio::test]
    async fn a_burst_hands_its_outputs_over_together_once_no_input_is_ready() {
        // One burst: no output leaves while ready input remains.
        assert_eq!(run_bursting(100).await, vec![0; 20]);
        // Bursts of 8: outputs leave after the 8th and the 16th record.
        let seen = run_bursting(8).await;
        assert_eq!(seen, [vec![0; 8], vec![8; 8], vec![16; 4]].concat());
        // Without bursts each output leaves before the next record is read.
        assert_eq!(run_bursting(1).await, (0..20).collect::<Vec<_>>());
    }

    /// Leaves each record's output empty until the burst is finished, as the alert stage
    /// does; `fail` makes finishing fail once (an outside service down), and what was
    /// waiting is forgotten then, as the alert stage's pending joins are.
    struct FinishLater {
        waiting: Vec<(usize, Vec<u8>)>,
        fail: bool,
    }

    impl Stage for FinishLater {
        fn kind(&self) -> StageKind {
            StageKind::Alert
        }
        fn process(&mut self, record: &Record, _now_us: i64, out: &mut Vec<OutMessage>) -> Result<(), StageError> {
            self.waiting.push((out.len(), record.payload.clone()));
            out.push(OutMessage { topic: "out".into(), key: None, payload: Vec::new() });
            Ok(())
        }
        fn finish_burst(&mut self, _now_us: i64, out: &mut [OutMessage]) -> Result<(), StageError> {
            if self.fail {
                self.fail = false;
                self.waiting.clear();
                return Err(StageError::External("down".into()));
            }
            for (at, payload) in self.waiting.drain(..) {
                out[at].payload = payload;
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn outputs_leave_as_the_burst_finished_them_or_not_at_all() {
        for fail in [false, true] {
            let bus = MemoryBus::new(64);
            let producer = bus.producer();
            for i in 0..20u8 {
                let _ack = producer.send(OutMessage { topic: "in".into(), key: None, payload: vec![i] }).await.unwrap();
            }
            let stage = FinishLater { waiting: Vec::new(), fail };
            let runner = memory_runner(&bus, Box::new(stage), crate::telemetry::StageStats::new(StageKind::Alert)).bursting(8, Duration::from_secs(5));
            let stop = CancellationToken::new();
            let task = tokio::spawn(runner.run(stop.clone()));
            if fail {
                // The first burst cannot be finished: the stage fails, nothing of it leaves
                // (not even through the drain's flush, unfinished) and nothing is committed.
                // The drain hands over what was already queued in-process, finished.
                let outcome = tokio::time::timeout(Duration::from_secs(5), task).await.expect("the stage stops").unwrap();
                assert!(matches!(outcome, Err(RunnerError::Stage { .. })), "{outcome:?}");
                assert_eq!(bus.committed("in"), 0, "the failed burst replays, and all after it");
                let mut out = bus.consumer("out").unwrap();
                let mut left = Vec::new();
                for _ in 0..bus.backlog("out") {
                    left.push(out.recv().await.unwrap().payload);
                }
                assert_eq!(left, (8..20u8).map(|i| vec![i]).collect::<Vec<_>>());
            } else {
                let mut out = bus.consumer("out").unwrap();
                for i in 0..20u8 {
                    assert_eq!(out.recv().await.unwrap().payload, vec![i], "filled in, in order");
                }
                stop.cancel();
                task.await.unwrap().unwrap();
                assert_eq!(bus.committed("in"), 20);
            }
        }
    }
}
