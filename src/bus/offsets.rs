//! Which input offsets are safe to commit.
//!
//! Records finish out of order (acks for different outputs arrive when they arrive), but a
//! Kafka commit says "everything before this offset is done". [`OffsetTracker`] therefore
//! advances a partition's commit point only over a contiguous run of acknowledged records,
//! so a crash at any moment replays from the oldest unfinished record and loses nothing.
//!
//! # Correctness
//!
//! - An offset is committable only when it and every lower offset received on that
//!   partition since the last reset were acknowledged.
//! - If a partition delivers an offset at or below one already seen (a rebalance handed it
//!   back, or the consumer was reset), the partition's state is dropped and tracking starts
//!   again from the new offset; late acks for the old generation are ignored. Nothing is
//!   committed beyond what the new generation acknowledged.
//! - With a broker that rebalances (Kafka), the tracker also knows the current assignment:
//!   each assignment of a partition starts a new generation. Records of partitions not
//!   assigned (stragglers delivered after a revoke) are refused, acks from an earlier
//!   generation are ignored, and only assigned partitions are committed. Without this, a
//!   straggler acked after a revoke could commit an offset past records the next owner had
//!   not processed yet, and a later owner would skip them (data loss on rebalance storms).

use std::collections::VecDeque;

use crate::FastMap;

use super::{CommitOffsets, Position, Topic};

/// A topic-partition, as the tracker's maps hold it: the topic shared with the records
/// (looked up for every record received and acknowledged, so never copied per record).
type PartitionKey = (Topic, i32);

fn key_of(topic: &str, partition: i32) -> PartitionKey {
    (Topic::from(topic), partition)
}

#[derive(Debug, Default)]
struct PartitionState {
    /// Assignment generation this state belongs to.
    generation: u64,
    /// (offset, acked) for every received, not yet committable record, ascending.
    pending: VecDeque<(i64, bool)>,
    /// Highest offset received in the current generation.
    highest: i64,
    /// Next offset to commit (one past the last contiguous ack), if any progress since reset.
    committable: Option<i64>,
    /// What was last handed out by [`OffsetTracker::take_commits`].
    last_taken: Option<i64>,
}

/// Whether `generation` of a partition is the one currently assigned to us.
fn owns(assignment: &Option<FastMap<PartitionKey, u64>>, key: &PartitionKey, generation: u64) -> bool {
    match assignment {
        None => true,
        Some(assignment) => assignment.get(key) == Some(&generation),
    }
}

/// Where a partition may be committed: its contiguous acknowledged point, capped by the
/// stage's checkpoint when the stage keeps state.
fn commit_point(durable: &Option<FastMap<PartitionKey, i64>>, key: &PartitionKey, committable: Option<i64>) -> Option<i64> {
    match durable {
        None => committable,
        Some(durable) => Some(committable?.min(*durable.get(key)?)),
    }
}

/// Tracks received and acknowledged offsets per topic-partition.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: FastMap<PartitionKey, PartitionState>,
    in_flight: usize,
    /// `None`: every partition is ours (in-memory bus). `Some`: only these, by generation.
    assignment: Option<FastMap<PartitionKey, u64>>,
    next_generation: u64,
    /// Stateful stages: per partition, the offset through which the stage's state is
    /// checkpointed (exclusive). Commits never pass it, so a new owner that restores the
    /// checkpoint resumes exactly where that state ends. `None`: stateless, no cap.
    durable: Option<FastMap<PartitionKey, i64>>,
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on, only partitions passed to [`Self::assigned`] are accepted.
    pub fn track_assignment(&mut self) {
        self.assignment.get_or_insert_with(FastMap::default);
    }

    /// Partitions were assigned: each starts a new generation with fresh state.
    pub fn assigned(&mut self, partitions: &[(String, i32)]) {
        self.track_assignment();
        for (topic, partition) in partitions {
            let key = key_of(topic, *partition);
            self.next_generation += 1;
            if let Some(durable) = self.durable.as_mut() {
                durable.remove(&key);
            }
            if let Some(state) = self.partitions.remove(&key) {
                self.in_flight -= state.pending.iter().filter(|(_, acked)| !acked).count();
            }
            if let Some(assignment) = self.assignment.as_mut() {
                assignment.insert(key, self.next_generation);
            }
        }
    }

    /// Records that a message was received and is now in flight. Returns the generation to
    /// pass to [`Self::acked`], or `None` when the partition is not assigned to us (the
    /// record must then be skipped: its next owner reads it from the committed offset).
    pub fn received(&mut self, position: &Position) -> Option<u64> {
        let key = (position.topic.clone(), position.partition);
        let generation = match &self.assignment {
            None => 0,
            Some(assignment) => *assignment.get(&key)?,
        };
        let state = self.partitions.entry(key).or_default();
        if state.generation != generation {
            self.in_flight -= state.pending.iter().filter(|(_, acked)| !acked).count();
            *state = PartitionState { generation, ..PartitionState::default() };
        }
        let seen_before = !state.pending.is_empty() || state.committable.is_some();
        if seen_before && position.offset <= state.highest {
            // Rewind: a new generation of this partition. Forget the old one.
            self.in_flight -= state.pending.iter().filter(|(_, acked)| !acked).count();
            *state = PartitionState { generation, ..PartitionState::default() };
        }
        state.highest = position.offset;
        state.pending.push_back((position.offset, false));
        self.in_flight += 1;
        Some(generation)
    }

    /// Records that everything produced from the message at `position` was acknowledged.
    /// Unknown positions (from a previous generation) are ignored.
    pub fn acked(&mut self, position: &Position, generation: u64) {
        let Some(state) = self.partitions.get_mut(&(position.topic.clone(), position.partition))
        else {
            return;
        };
        if state.generation != generation {
            return;
        }
        let Ok(index) = state.pending.binary_search_by_key(&position.offset, |(o, _)| *o) else {
            return;
        };
        if state.pending[index].1 {
            return;
        }
        state.pending[index].1 = true;
        self.in_flight -= 1;
        while let Some(&(offset, true)) = state.pending.front() {
            state.pending.pop_front();
            state.committable = Some(offset + 1);
        }
    }

    /// A stateful stage checkpointed its state through these offsets (exclusive); from now
    /// on commits are capped by what was last reported per partition, and a partition never
    /// reported commits nothing.
    pub fn set_durable(&mut self, offsets: &CommitOffsets) {
        let durable = self.durable.get_or_insert_with(FastMap::default);
        for (topic, partition, offset) in offsets {
            durable.insert(key_of(topic, *partition), *offset);
        }
    }

    /// The partitions we own now (`None`: every partition, in-memory bus).
    pub fn owned_partitions(&self) -> Option<Vec<(String, i32)>> {
        self.assignment.as_ref().map(|a| a.keys().map(|(topic, partition)| (topic.to_string(), *partition)).collect())
    }

    /// Messages received but not yet fully acknowledged.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Commit points that advanced since the last call.
    pub fn take_commits(&mut self) -> CommitOffsets {
        let mut out = Vec::new();
        let assignment = &self.assignment;
        for (key, state) in &mut self.partitions {
            let owned = owns(assignment, key, state.generation);
            let point = commit_point(&self.durable, key, state.committable);
            if owned && point.is_some() && point != state.last_taken {
                state.last_taken = point;
                if let Some(offset) = point {
                    out.push((key.0.to_string(), key.1, offset));
                }
            }
        }
        out.sort();
        out
    }

    /// Every commit point we own, whether or not handed out before; used for the final,
    /// blocking commit at shutdown, so an earlier background commit that failed is repaired.
    pub fn all_commits(&mut self) -> CommitOffsets {
        let mut out = Vec::new();
        let assignment = &self.assignment;
        for (key, state) in &mut self.partitions {
            let owned = owns(assignment, key, state.generation);
            if let (true, Some(offset)) = (owned, commit_point(&self.durable, key, state.committable)) {
                state.last_taken = Some(offset);
                out.push((key.0.to_string(), key.1, offset));
            }
        }
        out.sort();
        out
    }

    /// Commit points for the given partitions regardless of what was taken before, and
    /// forgets them; used right before those partitions are revoked.
    pub fn release(&mut self, partitions: &[(String, i32)]) -> CommitOffsets {
        let mut out = Vec::new();
        for (topic, partition) in partitions {
            let key = key_of(topic, *partition);
            if let Some(assignment) = self.assignment.as_mut() {
                assignment.remove(&key);
            }
            if let Some(state) = self.partitions.remove(&key) {
                self.in_flight -= state.pending.iter().filter(|(_, acked)| !acked).count();
                if let Some(offset) = commit_point(&self.durable, &key, state.committable) {
                    out.push((topic.clone(), *partition, offset));
                }
            }
            if let Some(durable) = self.durable.as_mut() {
                durable.remove(&key);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(partition: i32, offset: i64) -> Position {
        Position { topic: "t".into(), partition, offset }
    }

    #[test]
    fn commits_only_contiguous_acknowledged_offsets() {
        let mut tracker = OffsetTracker::new();
        for offset in 10..15 {
            tracker.received(&pos(0, offset));
        }
        tracker.acked(&pos(0, 11), 0);
        tracker.acked(&pos(0, 12), 0);
        assert!(tracker.take_commits().is_empty(), "10 is still in flight");
        tracker.acked(&pos(0, 10), 0);
        assert_eq!(tracker.take_commits(), vec![("t".to_string(), 0, 13)]);
        assert!(tracker.take_commits().is_empty(), "nothing new");
        tracker.acked(&pos(0, 14), 0);
        assert!(tracker.take_commits().is_empty(), "13 is still in flight");
        tracker.acked(&pos(0, 13), 0);
        assert_eq!(tracker.take_commits(), vec![("t".to_string(), 0, 15)]);
        assert_eq!(tracker.in_flight(), 0);
    }

    #[test]
    fn partitions_advance_independently() {
        let mut tracker = OffsetTracker::new();
        tracker.received(&pos(0, 0));
        tracker.received(&pos(1, 100));
        tracker.received(&pos(1, 101));
        tracker.acked(&pos(1, 100), 0);
        assert_eq!(tracker.take_commits(), vec![("t".to_string(), 1, 101)]);
        assert_eq!(tracker.in_flight(), 2);
    }

    #[test]
    fn a_rewound_partition_starts_a_new_generation_and_ignores_stale_acks() {
        let mut tracker = OffsetTracker::new();
        tracker.received(&pos(0, 5));
        tracker.received(&pos(0, 6));
        tracker.acked(&pos(0, 5), 0);
        // Rebalance hands the partition back from the committed offset 6... and 3.
        tracker.received(&pos(0, 3));
        assert_eq!(tracker.in_flight(), 1);
        tracker.acked(&pos(0, 6), 0); // stale ack: not part of this generation
        assert!(tracker.take_commits().is_empty());
        tracker.acked(&pos(0, 3), 0);
        assert_eq!(tracker.take_commits(), vec![("t".to_string(), 0, 4)]);
    }

    #[test]
    fn stragglers_of_revoked_partitions_are_refused_and_old_acks_ignored() {
        let mut tracker = OffsetTracker::new();
        let p0 = ("t".to_string(), 0);
        tracker.assigned(std::slice::from_ref(&p0));
        let g1 = tracker.received(&pos(0, 10)).unwrap();
        tracker.received(&pos(0, 11)).unwrap();
        assert!(tracker.received(&pos(1, 0)).is_none(), "partition 1 is not ours");
        tracker.acked(&pos(0, 10), g1);
        assert_eq!(tracker.release(std::slice::from_ref(&p0)), vec![("t".to_string(), 0, 11)]);
        assert!(tracker.received(&pos(0, 12)).is_none(), "straggler after revoke is refused");
        // Assigned again: a new generation; the old ack for 11 must not count.
        tracker.assigned(std::slice::from_ref(&p0));
        let g2 = tracker.received(&pos(0, 11)).unwrap();
        assert_ne!(g1, g2);
        tracker.acked(&pos(0, 11), g1);
        assert!(tracker.take_commits().is_empty(), "an ack from the old generation does not commit");
        tracker.acked(&pos(0, 11), g2);
        assert_eq!(tracker.take_commits(), vec![("t".to_string(), 0, 12)]);
    }

    #[test]
    fn release_returns_progress_and_forgets_the_partition() {
        let mut tracker = OffsetTracker::new();
        tracker.received(&pos(0, 1));
        tracker.received(&pos(0, 2));
        tracker.acked(&pos(0, 1), 0);
        assert_eq!(tracker.release(&[("t".into(), 0)]), vec![("t".to_string(), 0, 2)]);
        assert_eq!(tracker.in_flight(), 0);
        assert!(tracker.take_commits().is_empty());
    }

    #[test]
    fn commits_never_pass_a_stateful_stage_checkpoint() {
        let mut tracker = OffsetTracker::new();
        for offset in 0..5 {
            tracker.received(&pos(0, offset));
            tracker.acked(&pos(0, offset), 0);
        }
        tracker.received(&pos(1, 0));
        tracker.acked(&pos(1, 0), 0);
        // The stage's state covers partition 0 through offset 2 and nothing of partition 1.
        tracker.set_durable(&vec![("t".to_string(), 0, 3)]);
        assert_eq!(tracker.take_commits(), vec![("t".to_string(), 0, 3)]);
        assert!(tracker.take_commits().is_empty());
        tracker.set_durable(&vec![("t".to_string(), 0, 9), ("t".to_string(), 1, 1)]);
        assert_eq!(tracker.take_commits(), vec![("t".to_string(), 0, 5), ("t".to_string(), 1, 1)]);
        // A revoke commits no further than the checkpoint either.
        tracker.received(&pos(0, 5));
        tracker.acked(&pos(0, 5), 0);
        tracker.set_durable(&vec![("t".to_string(), 0, 4)]);
        assert_eq!(tracker.release(&[("t".into(), 0)]), vec![("t".to_string(), 0, 4)]);
    }
}
