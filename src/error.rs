//! How a failure is handled, decided by what kind of failure it is.
//!
//! Every module's error enum maps each variant to an [`ErrorClass`], so the runner can act
//! without string matching: bad input is dead-lettered and the offset moves on; an outside
//! failure is retried and nothing is committed meanwhile; a bug fails the task so the input
//! is replayed from the last commit after a restart.

/// What the pipeline does with a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The input is bad: dead-letter it with the reason and move on.
    Input,
    /// Something outside failed (broker, database, network): retry with backoff, do not commit.
    External,
    /// Our own invariant broke: fail the task; the input replays from the last commit.
    Internal,
}
