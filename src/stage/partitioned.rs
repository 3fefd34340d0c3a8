//! The shell every stateful stage puts around its per-partition state: restore on
//! assignment, checkpoint before each commit, report what the checkpoint covers (the runner
//! commits no further), drop what was revoked, forget replay memory below commits.
//!
//! A checkpoint store that is down is an outside failure: the stage keeps processing, its
//! commits stop advancing, and the next checkpoint writes everything changed meanwhile. A
//! restore that keeps failing fails the stage (its input replays on restart).

use crate::FastMap;
use std::time::Duration;

use tracing::{info, warn};

use super::checkpoint::{CheckpointError, CheckpointStore};
use super::StageError;
use crate::bus::CommitOffsets;
use crate::state::Checkpointed;
use crate::telemetry::names;

/// Attempts (with doubling backoff from 200 ms) to read a checkpoint before giving up.
const RESTORE_ATTEMPTS: u32 = 8;

pub struct PartitionedState<S> {
    /// Names the stage in logs and metrics.
    stage: &'static str,
    store: CheckpointStore,
    /// Input topic (one per stage), learnt from the first record or assignment.
    topic: String,
    partitions: FastMap<i32, S>,
    /// Per partition, the offset (exclusive) the last successful checkpoint covers.
    durable: FastMap<i32, i64>,
    /// Whether the last checkpoint attempt failed (to log a failure streak once).
    store_failing: bool,
}

impl<S: Checkpointed> PartitionedState<S> {
    pub fn new(stage: &'static str, store: CheckpointStore) -> Self {
        Self { stage, store, topic: String::new(), partitions: FastMap::default(), durable: FastMap::default(), store_failing: false }
    }

    /// The state of `partition` of `topic` (empty if never assigned: the in-memory bus).
    pub fn get_mut(&mut self, topic: &str, partition: i32) -> &mut S {
        if self.topic.is_empty() {
            self.topic = topic.to_string();
        }
        let durable = self.store.is_durable();
        self.partitions.entry(partition).or_insert_with(|| Self::fresh(durable))
    }

    /// An empty state, noting its changes only for a store that keeps them.
    fn fresh(durable: bool) -> S {
        let mut state = S::default();
        state.entries_mut().set_tracking(durable);
        state
    }

    /// Whether the checkpoint store keeps anything. Without one a (re)assigned partition
    /// starts empty, so no record is ever replayed to a state that has seen it, and what
    /// is remembered for replays would never be asked for.
    pub fn is_durable(&self) -> bool {
        self.store.is_durable()
    }

    pub fn states(&self) -> impl Iterator<Item = &S> {
        self.partitions.values()
    }

    pub fn states_mut(&mut self) -> impl Iterator<Item = (&i32, &mut S)> {
        self.partitions.iter_mut()
    }

    /// Keeps the key budget: when the instance holds more than `max_keys`, `evict` removes
    /// the given number of least recently used keys from `partition` (the one growing), a
    /// hundredth of the budget beyond the excess at a time so the cost is paid rarely.
    /// Returns how many went.
    pub fn enforce_key_budget(&mut self, topic: &str, partition: i32, max_keys: usize, evict: impl FnOnce(&mut S, usize) -> usize) -> usize {
        let total = self.key_count();
        if total <= max_keys {
            return 0;
        }
        let excess = total - max_keys + (max_keys / 100).max(1);
        evict(self.get_mut(topic, partition), excess)
    }

    /// Keys held across all partitions.
    pub fn key_count(&self) -> usize {
        self.partitions.values().map(|s| s.entries().len()).sum()
    }

    fn restore(&mut self, partition: i32) -> Result<S, StageError> {
        let mut backoff = Duration::from_millis(200);
        for attempt in 1..=RESTORE_ATTEMPTS {
            match self.store.load::<S>(&self.topic, partition) {
                Ok(Some(restored)) => {
                    if restored.unreadable_entries > 0 {
                        warn!(stage = self.stage, topic = %self.topic, partition, dropped = restored.unreadable_entries, "Unreadable checkpoint entries were dropped.");
                    }
                    return Ok(restored.state);
                }
                Ok(None) => return Ok(Self::fresh(self.store.is_durable())),
                Err(CheckpointError::Corrupt { key, detail }) => {
                    metrics::counter!(names::STATE_CHECKPOINT_FAILURES, "stage" => self.stage, "op" => "restore").increment(1);
                    tracing::error!(stage = self.stage, %key, %detail, "Checkpoint unreadable; this partition's state starts empty.");
                    return Ok(S::default());
                }
                Err(e) if attempt < RESTORE_ATTEMPTS => {
                    metrics::counter!(names::STATE_CHECKPOINT_FAILURES, "stage" => self.stage, "op" => "restore").increment(1);
                    warn!(stage = self.stage, error = %e, attempt, "Cannot read the checkpoint; retrying.");
                    // Rare (once per assignment) and the partition cannot proceed without it.
                    std::thread::sleep(backoff);
                    backoff *= 2;
                }
                Err(e) => return Err(StageError::External(e.to_string())),
            }
        }
        Err(StageError::External("checkpoint store unreachable".into()))
    }

    /// `partition` of `topic` was (re)assigned: replace what is held with its checkpoint.
    pub fn assigned(&mut self, topic: &str, partition: i32) -> Result<(), StageError> {
        self.topic = topic.to_string();
        self.partitions.remove(&partition);
        self.durable.remove(&partition);
        let state = self.restore(partition)?;
        if let Some(applied) = state.applied_offset() {
            self.durable.insert(partition, applied + 1);
        }
        info!(stage = self.stage, topic, partition, keys = state.entries().len(), applied_offset = ?state.applied_offset(), "State restored.");
        self.partitions.insert(partition, state);
        Ok(())
    }

    /// Drops revoked partitions, writes what changed, and returns the offsets the
    /// checkpoints cover (`None` when nothing is durable: the memory store).
    pub fn checkpoint(&mut self, owned: Option<&[(String, i32)]>) -> Option<CommitOffsets> {
        if let Some(owned) = owned {
            let topic = &self.topic;
            let gone: Vec<i32> = self.partitions.keys().copied().filter(|p| !owned.iter().any(|(t, op)| op == p && t == topic)).collect();
            for partition in gone {
                // Revoked: the new owner restores the last checkpoint and replays the rest.
                self.partitions.remove(&partition);
                self.durable.remove(&partition);
            }
        }
        if !self.store.is_durable() {
            // Nothing to write, and nothing noted to drain: a state held here for such a
            // store is made not to note its changes (`fresh`).
            return None;
        }
        let mut failed = None;
        for (&partition, state) in &mut self.partitions {
            match self.store.save(&self.topic, partition, state) {
                Ok(_) => {
                    if let Some(applied) = state.applied_offset() {
                        self.durable.insert(partition, applied + 1);
                    }
                }
                Err(e) => {
                    metrics::counter!(names::STATE_CHECKPOINT_FAILURES, "stage" => self.stage, "op" => "save").increment(1);
                    failed = Some(e);
                }
            }
        }
        match failed {
            Some(e) if !self.store_failing => {
                warn!(stage = self.stage, error = %e, "Checkpoint failed; commits wait until it succeeds.");
                self.store_failing = true;
            }
            None if self.store_failing => {
                info!(stage = self.stage, "Checkpoints succeed again.");
                self.store_failing = false;
            }
            _ => {}
        }
        Some(self.durable.iter().map(|(&p, &o)| (self.topic.clone(), p, o)).collect())
    }

    /// These offsets were committed: replays start no earlier.
    pub fn committed(&mut self, offsets: &CommitOffsets) {
        for (topic, partition, offset) in offsets {
            if *topic == self.topic {
                if let Some(state) = self.partitions.get_mut(partition) {
                    state.committed_before(*offset);
                }
            }
        }
    }
}
