//! The message bus: the only door between stages and the outside world.
//!
//! Stage code sees [`Record`]s in and [`OutMessage`]s out, and never knows whether they
//! travel over in-process channels ([`memory`], embedded mode) or Kafka ([`kafka`], the
//! distributed mode; the only module that imports rdkafka). One [`crate::stage::StageRunner`]
//! drives both, so at-least-once behaviour is written and tested once.
//!
//! Dispatch is by enum rather than trait objects because the async methods here are not
//! object-safe, and the set of transports is closed.
//!
//! # Delivery contract
//!
//! [`BusProducer::send`] waits for room (backpressure) and returns an [`AckFuture`] that
//! resolves once the message is durable on the transport (Kafka: acknowledged by the broker
//! with the configured `acks`; memory: accepted by the downstream channel). The runner
//! commits an input offset only after every ack produced from that input resolved `Ok`.

pub mod kafka;
pub mod memory;
pub mod offsets;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

pub use offsets::OffsetTracker;

/// A topic's name as records, positions and outputs carry it: shared, not copied. Every
/// record of every hop names its topic several times over (the record, its position, the
/// offset tracker's two lookups, the output and its ack); as `String`s those were six of the
/// transport's allocations per record per hop.
pub type Topic = Arc<str>;

/// One message read from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: Topic,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// Producer or broker timestamp, milliseconds since the epoch, when the transport has one.
    pub timestamp_ms: Option<i64>,
}

impl Record {
    /// Line `index` (0-based) of a file or stream read outside the bus (`normalize`,
    /// `rules test|bench`), as the record a stage would have received.
    pub fn from_line(source: &str, index: usize, payload: Vec<u8>) -> Self {
        Self { topic: source.into(), partition: 0, offset: index as i64, key: None, payload, timestamp_ms: None }
    }

    pub fn position(&self) -> Position {
        Position { topic: self.topic.clone(), partition: self.partition, offset: self.offset }
    }
}

/// Where a record sits on its topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    pub topic: Topic,
    pub partition: i32,
    pub offset: i64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}@{}", self.topic, self.partition, self.offset)
    }
}

/// One message a stage wants to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct OutMessage {
    pub topic: Topic,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// Resolves when the transport has durably accepted one produced message.
///
/// A concrete future, not a boxed one: one is made per output on every hop, and the box
/// (with the runner's own around it) was two of the transport's allocations per record.
#[must_use = "an output counts as delivered only once its ack resolves"]
pub enum AckFuture {
    /// Accepted when it was handed over (the in-process bus: by the downstream channel).
    Accepted,
    /// Waiting for the broker's acknowledgement.
    Kafka(kafka::DeliveryAck),
}

impl Future for AckFuture {
    type Output = Result<(), BusError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Self::Accepted => Poll::Ready(Ok(())),
            Self::Kafka(delivery) => Pin::new(delivery).poll(cx),
        }
    }
}

/// Offsets to commit: the *next* offset to read per topic-partition (Kafka convention).
pub type CommitOffsets = Vec<(String, i32, i64)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitMode {
    /// Fire and forget; used on the periodic commit tick.
    Background,
    /// Wait for the broker; used on shutdown and before a partition is revoked.
    Blocking,
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("kafka client setup failed: {0}")]
    Setup(String),
    #[error("receiving from {topics} failed: {detail}")]
    Receive { topics: String, detail: String },
    #[error("producing to {topic} failed: {detail}")]
    Produce { topic: String, detail: String },
    #[error("delivery to {topic} was not acknowledged: {detail}")]
    Delivery { topic: String, detail: String },
    #[error("committing offsets failed: {0}")]
    Commit(String),
    #[error("topic {0} is closed")]
    Closed(String),
    #[error("admin request failed: {0}")]
    Admin(String),
}

impl BusError {
    /// Every bus error is an outside failure: retry or replay, never dead-letter the input.
    pub fn class(&self) -> crate::error::ErrorClass {
        crate::error::ErrorClass::External
    }
}

/// A subscription to one or more topics in one consumer group.
pub enum BusConsumer {
    Memory(memory::MemoryConsumer),
    Kafka(kafka::KafkaConsumer),
}

impl BusConsumer {
    /// Waits for the next record.
    pub async fn recv(&mut self) -> Result<Record, BusError> {
        match self {
            Self::Memory(c) => c.recv().await,
            Self::Kafka(c) => c.recv().await,
        }
    }

    /// Records that are already buffered in-process and can be taken without waiting. Used
    /// at shutdown in embedded mode, where upstream has stopped and what is queued would
    /// otherwise be lost. Kafka returns none: unread records stay on the broker.
    pub fn try_recv_buffered(&mut self) -> Option<Record> {
        match self {
            Self::Memory(c) => c.try_recv(),
            Self::Kafka(_) => None,
        }
    }

    pub fn commit(&self, offsets: &CommitOffsets, mode: CommitMode) -> Result<(), BusError> {
        if offsets.is_empty() {
            return Ok(());
        }
        match self {
            Self::Memory(c) => c.commit(offsets),
            Self::Kafka(c) => c.commit(offsets, mode),
        }
    }

    /// Shares the runner's offset tracker so the transport can commit finished work itself
    /// right before a rebalance takes partitions away.
    /// Records behind the end of the input (Kafka: from the client's statistics, every 5 s;
    /// the in-process bus: None).
    pub fn lag(&self) -> Option<i64> {
        match self {
            Self::Kafka(consumer) => consumer.lag(),
            Self::Memory(_) => None,
        }
    }

    pub fn attach_tracker(&mut self, tracker: std::sync::Arc<std::sync::Mutex<OffsetTracker>>) {
        if let Self::Kafka(c) = self {
            c.attach_tracker(tracker);
        }
    }
}

/// A producer shared by the stages of one process.
#[derive(Clone)]
pub enum BusProducer {
    Memory(memory::MemoryProducer),
    Kafka(kafka::KafkaProducer),
}

impl BusProducer {
    /// Hands a message to the transport, waiting while its queue is full (backpressure).
    pub async fn send(&self, message: OutMessage) -> Result<AckFuture, BusError> {
        match self {
            Self::Memory(p) => p.send(message).await,
            Self::Kafka(p) => p.send(message).await,
        }
    }

    /// Waits up to `timeout` for queued messages to be delivered.
    pub async fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Kafka(p) => p.flush(timeout).await,
        }
    }
}
