//! In-process topics for embedded mode: one bounded channel per topic.
//!
//! Embedded mode runs every stage in one process with no broker. Each topic is a bounded
//! `tokio::mpsc` channel (overflow policy: `OnFull::Block`, the producer waits, which is how
//! backpressure reaches the generator). A topic has one partition and one consumer.
//!
//! # Durability
//!
//! None beyond the process: an ack means "accepted by the downstream channel". Shutdown
//! drains the pipeline in stage order so a clean stop loses nothing; a crash loses what was
//! in memory, which is why production runs on Kafka.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::{AckFuture, BusError, CommitOffsets, OutMessage, Record, Topic};

/// Default capacity of each in-memory topic, in messages. Big enough to absorb scheduling
/// jitter between stages, small enough that a stalled stage stops the generator quickly.
pub const DEFAULT_TOPIC_CAPACITY: usize = 4096;

struct Channel {
    sender: mpsc::Sender<OutMessage>,
    receiver: Option<mpsc::Receiver<OutMessage>>,
    committed: Arc<AtomicI64>,
}

/// The set of in-memory topics of one process.
#[derive(Clone)]
pub struct MemoryBus {
    topics: Arc<Mutex<HashMap<String, Channel>>>,
    capacity: usize,
}

impl MemoryBus {
    pub fn new(capacity: usize) -> Self {
        Self { topics: Arc::new(Mutex::new(HashMap::new())), capacity: capacity.max(1) }
    }

    fn with_topic<R>(&self, name: &str, f: impl FnOnce(&mut Channel) -> R) -> R {
        // The lock is only held for map access, never across an await or a panic-prone call.
        let mut topics = self.topics.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let topic = topics.entry(name.to_string()).or_insert_with(|| {
            let (sender, receiver) = mpsc::channel(self.capacity);
            Channel { sender, receiver: Some(receiver), committed: Arc::new(AtomicI64::new(0)) }
        });
        f(topic)
    }

    /// The single consumer of `topic`. Errors if it was already taken.
    pub fn consumer(&self, topic: &str) -> Result<MemoryConsumer, BusError> {
        self.with_topic(topic, |t| {
            let receiver = t.receiver.take().ok_or_else(|| {
                BusError::Setup(format!("in-memory topic {topic} already has a consumer"))
            })?;
            Ok(MemoryConsumer {
                topic: topic.into(),
                receiver,
                next_offset: 0,
                committed: t.committed.clone(),
            })
        })
    }

    pub fn producer(&self) -> MemoryProducer {
        MemoryProducer { bus: self.clone(), senders: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// Committed offset of a topic's consumer (for progress and tests).
    pub fn committed(&self, topic: &str) -> i64 {
        self.with_topic(topic, |t| t.committed.load(Ordering::Relaxed))
    }

    /// Messages waiting in a topic's channel.
    pub fn backlog(&self, topic: &str) -> usize {
        self.with_topic(topic, |t| t.sender.max_capacity() - t.sender.capacity())
    }
}

pub struct MemoryConsumer {
    topic: Topic,
    receiver: mpsc::Receiver<OutMessage>,
    next_offset: i64,
    committed: Arc<AtomicI64>,
}

impl MemoryConsumer {
    fn stamp(&mut self, message: OutMessage) -> Record {
        let offset = self.next_offset;
        self.next_offset += 1;
        Record {
            topic: self.topic.clone(),
            partition: 0,
            offset,
            key: message.key,
            payload: message.payload,
            timestamp_ms: None,
        }
    }

    pub async fn recv(&mut self) -> Result<Record, BusError> {
        match self.receiver.recv().await {
            Some(message) => Ok(self.stamp(message)),
            None => Err(BusError::Closed(self.topic.to_string())),
        }
    }

    pub fn try_recv(&mut self) -> Option<Record> {
        let message = self.receiver.try_recv().ok()?;
        Some(self.stamp(message))
    }

    pub fn commit(&self, offsets: &CommitOffsets) -> Result<(), BusError> {
        for (_, _, offset) in offsets {
            self.committed.fetch_max(*offset, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct MemoryProducer {
    bus: MemoryBus,
    /// Per-producer cache of senders so the bus lock is not taken per message.
    senders: Arc<Mutex<HashMap<String, mpsc::Sender<OutMessage>>>>,
}

impl MemoryProducer {
    fn sender(&self, topic: &str) -> mpsc::Sender<OutMessage> {
        let mut senders = self.senders.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Looked up before an entry is made: an entry needs an owned key, a copy of the
        // topic's name per message.
        if let Some(sender) = senders.get(topic) {
            return sender.clone();
        }
        let sender = self.bus.with_topic(topic, |t| t.sender.clone());
        senders.insert(topic.to_string(), sender.clone());
        sender
    }

    pub async fn send(&self, message: OutMessage) -> Result<AckFuture, BusError> {
        let sender = self.sender(&message.topic);
        // A closed channel hands the message back: its topic names the error.
        sender.send(message).await.map_err(|returned| BusError::Closed(returned.0.topic.to_string()))?;
        Ok(AckFuture::Accepted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivers_in_order_with_increasing_offsets() {
        let bus = MemoryBus::new(8);
        let producer = bus.producer();
        let mut consumer = bus.consumer("a").unwrap();
        for i in 0..3u8 {
            let ack = producer
                .send(OutMessage { topic: "a".into(), key: None, payload: vec![i] })
                .await
                .unwrap();
            ack.await.unwrap();
        }
        for i in 0..3u8 {
            let record = consumer.recv().await.unwrap();
            assert_eq!((record.offset, record.payload), (i as i64, vec![i]));
        }
        assert!(bus.consumer("a").is_err(), "a topic has one consumer");
    }

    #[tokio::test]
    async fn a_full_topic_blocks_the_producer() {
        let bus = MemoryBus::new(2);
        let producer = bus.producer();
        let message = OutMessage { topic: "b".into(), key: None, payload: vec![] };
        let _accepted = producer.send(message.clone()).await.unwrap();
        let _accepted = producer.send(message.clone()).await.unwrap();
        let third = tokio::time::timeout(std::time::Duration::from_millis(50), producer.send(message));
        assert!(third.await.is_err(), "third send must wait for room");
        assert_eq!(bus.backlog("b"), 2);
    }
}
