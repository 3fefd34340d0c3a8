//! Kafka transport over rdkafka (bundled librdkafka).
//!
//! The only module that imports rdkafka. It turns broker messages into [`Record`]s, produced
//! messages into [`AckFuture`]s that resolve on broker acknowledgement, and commits exactly
//! the offsets the runner hands it.
//!
//! # At-least-once
//!
//! `enable.auto.commit` and `enable.auto.offset.store` are always off: offsets move only
//! when [`KafkaConsumer::commit`] is called with what the [`OffsetTracker`] says is fully
//! acknowledged. Before partitions are revoked in a rebalance, the finished prefix of each
//! revoked partition is committed synchronously, so the next owner replays only what was
//! really in flight.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{info, warn};

use super::{AckFuture, BusError, CommitMode, CommitOffsets, OffsetTracker, OutMessage, Record, Topic};

/// How long creating the topics at start may wait for the broker.
const ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// How long to wait before retrying when librdkafka's local produce queue is full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

/// Connection settings shared by consumers, producers and the admin client.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    pub session_timeout: Duration,
    pub max_poll_interval: Duration,
    /// librdkafka's `message.max.bytes` for producers.
    pub max_message_bytes: usize,
    /// Extra librdkafka properties, applied last.
    pub consumer_options: BTreeMap<String, String>,
    pub producer_options: BTreeMap<String, String>,
}

fn base_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.brokers);
    config
}

/// Creates topics that do not exist yet; existing topics are left as they are.
pub async fn ensure_topics(
    settings: &KafkaSettings,
    topics: &[String],
    partitions: i32,
) -> Result<(), BusError> {
    let admin: AdminClient<DefaultClientContext> =
        base_config(settings).create().map_err(|e| BusError::Setup(e.to_string()))?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    // The request timeout bounds the wait for an unreachable broker (librdkafka's default
    // is 60 s, with nothing logged meanwhile).
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(ADMIN_REQUEST_TIMEOUT));
    let results = admin.create_topics(&new_topics, &options).await.map_err(|e| {
        BusError::Admin(format!(
            "create topics {topics:?} on {}: {e} (is the broker up? `scripts/services.sh` starts one on 127.0.0.1:9092)",
            settings.brokers
        ))
    })?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(BusError::Admin(format!("create topic {topic}: {code}")));
            }
        }
    }
    Ok(())
}

/// Commits the finished prefix of revoked partitions before they move to another member.
pub struct RebalanceContext {
    group: String,
    tracker: Mutex<Option<Arc<Mutex<OffsetTracker>>>>,
    /// Records behind the end of the assigned partitions, from librdkafka's statistics
    /// (every 5 s); -1 until the first report.
    lag: std::sync::atomic::AtomicI64,
}

/// Records librdkafka's request latencies (µs windows over the last statistics interval)
/// as gauges: the producer's queueing before a request goes out and the round trip of
/// requests to each broker, so a slow hop can be put down to the client or the broker.
fn record_broker_latencies(client: &str, statistics: &rdkafka::Statistics) {
    use crate::telemetry::names;
    let seconds = |us: i64| us as f64 / 1e6;
    // Bootstrap and coordinator entries (nodeid -1, or no traffic) have empty windows.
    let windows = |pick: fn(&rdkafka::statistics::Broker) -> Option<&rdkafka::statistics::Window>| {
        statistics.brokers.values().filter(|b| b.nodeid >= 0).filter_map(pick).filter(|w| w.cnt > 0).fold(None, |worst: Option<(i64, i64)>, w| {
            Some(worst.map_or((w.p50, w.p99), |(p50, p99)| (p50.max(w.p50), p99.max(w.p99))))
        })
    };
    let set = |name: &'static str, (p50, p99): (i64, i64)| {
        for (quantile, us) in [("0.5", p50), ("0.99", p99)] {
            metrics::gauge!(name, "client" => client.to_string(), "quantile" => quantile).set(seconds(us));
        }
    };
    if let Some(rtt) = windows(|b| b.rtt.as_ref()) {
        set(names::KAFKA_BROKER_RTT, rtt);
    }
    if statistics.client_type == "producer" {
        if let Some(queue) = windows(|b| b.int_latency.as_ref()) {
            set(names::KAFKA_PRODUCER_QUEUE, queue);
        }
    }
}

/// The producer's context: its statistics become latency gauges (`client="producer"`).
pub struct ProducerStats;

impl ClientContext for ProducerStats {
    fn stats(&self, statistics: rdkafka::Statistics) {
        record_broker_latencies("producer", &statistics);
    }
}

impl ClientContext for RebalanceContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        record_broker_latencies(&self.group, &statistics);
        let lag: i64 = statistics
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
            .map(|p| p.consumer_lag)
            .sum();
        self.lag.store(lag, std::sync::atomic::Ordering::Relaxed);
    }
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, base_consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else { return };
        let partitions = partitions_of(revoked);
        info!(group = %self.group, ?partitions, "Partitions revoked.");
        let tracker = self.tracker.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(tracker) = tracker else { return };
        let offsets = tracker.lock().unwrap_or_else(|p| p.into_inner()).release(&partitions);
        if offsets.is_empty() {
            return;
        }
        info!(group = %self.group, ?offsets, "Committing finished work before revoke.");
        match partition_list(&offsets) {
            Ok(list) => {
                if let Err(e) = base_consumer.commit(&list, rdkafka::consumer::CommitMode::Sync) {
                    warn!(group = %self.group, error = %e, "Commit before revoke failed; the next owner replays from the last commit.");
                }
            }
            Err(e) => warn!(group = %self.group, error = %e, "Commit before revoke skipped."),
        }
    }

    fn post_rebalance(&self, _base_consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            let partitions = partitions_of(assigned);
            info!(group = %self.group, ?partitions, "Partitions assigned.");
            let tracker = self.tracker.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(tracker) = tracker {
                tracker.lock().unwrap_or_else(|p| p.into_inner()).assigned(&partitions);
            }
        }
    }
}

fn partitions_of(list: &TopicPartitionList) -> Vec<(String, i32)> {
    list.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect()
}

fn partition_list(offsets: &CommitOffsets) -> Result<TopicPartitionList, BusError> {
    let mut list = TopicPartitionList::new();
    for (topic, partition, offset) in offsets {
        list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .map_err(|e| BusError::Commit(e.to_string()))?;
    }
    Ok(list)
}

pub struct KafkaConsumer {
    consumer: StreamConsumer<RebalanceContext>,
    topics: String,
    /// The topic of the last record received, handed to the next record of the same topic
    /// instead of a fresh copy of its name (a stage reads one topic).
    last_topic: Option<Topic>,
}

impl KafkaConsumer {
    /// Joins `group` and subscribes to `topics`.
    pub fn subscribe(
        settings: &KafkaSettings,
        group: &str,
        topics: &[String],
    ) -> Result<Self, BusError> {
        let mut config = base_config(settings);
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", settings.session_timeout.as_millis().to_string())
            .set("max.poll.interval.ms", settings.max_poll_interval.as_millis().to_string())
            // Statistics feed the lag gauge (RebalanceContext::stats).
            .set("statistics.interval.ms", "5000");
        for (key, value) in &settings.consumer_options {
            config.set(key, value);
        }
        // At-least-once depends on these two; an option map must not turn them back on.
        config.set("enable.auto.commit", "false").set("enable.auto.offset.store", "false");
        let context = RebalanceContext { group: group.to_string(), tracker: Mutex::new(None), lag: std::sync::atomic::AtomicI64::new(-1) };
        let consumer: StreamConsumer<RebalanceContext> = config
            .create_with_context(context)
            .map_err(|e| BusError::Setup(format!("consumer for group {group}: {e}")))?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| BusError::Setup(format!("subscribe {topics:?}: {e}")))?;
        Ok(Self { consumer, topics: topics.join(","), last_topic: None })
    }

    pub fn attach_tracker(&mut self, tracker: Arc<Mutex<OffsetTracker>>) {
        tracker.lock().unwrap_or_else(|p| p.into_inner()).track_assignment();
        *self.consumer.context().tracker.lock().unwrap_or_else(|p| p.into_inner()) = Some(tracker);
    }

    pub async fn recv(&mut self) -> Result<Record, BusError> {
        let message = self.consumer.recv().await.map_err(|e| BusError::Receive {
            topics: self.topics.clone(),
            detail: e.to_string(),
        })?;
        let topic = match &self.last_topic {
            Some(last) if **last == *message.topic() => last.clone(),
            _ => self.last_topic.insert(Topic::from(message.topic())).clone(),
        };
        Ok(Record {
            topic,
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            timestamp_ms: message.timestamp().to_millis(),
        })
    }

    /// Records behind the end of the assigned partitions (librdkafka's statistics, every
    /// 5 s; no request), or None before the first report.
    pub fn lag(&self) -> Option<i64> {
        Some(self.consumer.context().lag.load(std::sync::atomic::Ordering::Relaxed)).filter(|l| *l >= 0)
    }

    pub fn commit(&self, offsets: &CommitOffsets, mode: CommitMode) -> Result<(), BusError> {
        let list = partition_list(offsets)?;
        let mode = match mode {
            CommitMode::Background => rdkafka::consumer::CommitMode::Async,
            CommitMode::Blocking => rdkafka::consumer::CommitMode::Sync,
        };
        self.consumer.commit(&list, mode).map_err(|e| BusError::Commit(e.to_string()))
    }
}

/// The broker's acknowledgement of one produced message (see [`AckFuture`]).
pub struct DeliveryAck {
    delivery: rdkafka::producer::DeliveryFuture,
    /// For the error, should delivery fail.
    topic: Topic,
}

impl std::future::Future for DeliveryAck {
    type Output = Result<(), BusError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let outcome = futures::ready!(std::pin::Pin::new(&mut self.delivery).poll(cx));
        std::task::Poll::Ready(match outcome {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(BusError::Delivery { topic: self.topic.to_string(), detail: e.to_string() }),
            Err(_) => Err(BusError::Delivery { topic: self.topic.to_string(), detail: "producer dropped before delivery".into() }),
        })
    }
}

#[derive(Clone)]
pub struct KafkaProducer {
    producer: FutureProducer<ProducerStats>,
}

/// Produce requests the stages' producer keeps outstanding per broker connection (the
/// Java client's default; librdkafka's is 1,000,000).
///
/// - librdkafka sends one produce request per partition, and the stages of an instance
///   share one producer writing ~20 partitions (five topics of four). With one request in
///   flight, those partitions' batches went out one after another: at 2,000 events/s a
///   record waited 13 ms (p50) to 100-134 ms (p99) in the producer for a 1.5 ms round trip
///   (`threatpipe_kafka_producer_queue_seconds`).
/// - Unbounded, every partition's batch went out when its own linger ran out: a stream of
///   one- and two-record requests, and Tansu's cost is per request (at 5,000 events/s the
///   pass-through backlogged to a 7.2 s p99; load/README.md, session 17).
/// - Five: at 5,000 events/s the queue's p99 fell from 17.9 to 9.5 ms and the pipeline's
///   end-to-end p99 from 66-124 ms (median 74) to 56-109 ms (median 62), ten runs each,
///   for ~10% more instance CPU and Tansu's unchanged. Flat out, smaller requests: the
///   pipeline ~4-5% slower, Tansu ~18% more CPU (load/README.md, session 18). Where
///   throughput matters more than latency, `[kafka.producer]` can set one.
///
/// A request retried while another is out can land after it (as with the Java client
/// without idempotence); delivery stays at least once, and the stages do not depend on
/// the order of records within a partition beyond their allowed lateness.
pub const PRODUCER_MAX_IN_FLIGHT: &str = "5";

/// The same for `threatpipe load`'s and the feed bench's producers, which stand for the
/// applications: one topic of four partitions, where one request in flight keeps the first
/// hop at ~3 ms (p50) and lets batches grow under load.
pub const LOAD_PRODUCER_MAX_IN_FLIGHT: &str = "1";

/// The producer's librdkafka settings: ours, then `[kafka.producer]`, which wins.
fn producer_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = base_config(settings);
    config
        .set("acks", "all")
        // Each hop waits up to this for its batch to fill. 2 ms against librdkafka's
        // 5: at 5,000 events/s through six hops p99 fell from 62-64 to 45-56 ms with the
        // same flat-out throughput (load/README.md, 2026-12-01); 1 ms flooded the broker
        // with requests (p99 150-380 ms).
        .set("linger.ms", "2")
        .set("max.in.flight.requests.per.connection", PRODUCER_MAX_IN_FLIGHT)
        .set("message.max.bytes", settings.max_message_bytes.to_string())
        .set("queue.buffering.max.messages", "100000")
        // For the latency gauges (`record_broker_latencies`); parsed once per interval.
        .set("statistics.interval.ms", "5000");
    for (key, value) in &settings.producer_options {
        config.set(key, value);
    }
    config
}

impl KafkaProducer {
    pub fn new(settings: &KafkaSettings) -> Result<Self, BusError> {
        let producer =
            producer_config(settings).create_with_context(ProducerStats).map_err(|e| BusError::Setup(format!("producer: {e}")))?;
        Ok(Self { producer })
    }

    pub async fn send(&self, message: OutMessage) -> Result<AckFuture, BusError> {
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&message.topic).payload(&message.payload);
        if let Some(key) = &message.key {
            record = record.key(key);
        }
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(AckFuture::Kafka(DeliveryAck { delivery, topic: message.topic.clone() })),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err((e, _)) => {
                    return Err(BusError::Produce { topic: message.topic.to_string(), detail: e.to_string() })
                }
            }
        }
    }

    pub async fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| BusError::Produce { topic: "*".into(), detail: e.to_string() })?
            .map_err(|e| BusError::Produce { topic: "*".into(), detail: format!("flush: {e}") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(producer_options: &[(&str, &str)]) -> KafkaSettings {
        KafkaSettings {
            brokers: "127.0.0.1:9092".into(),
            session_timeout: Duration::from_secs(10),
            max_poll_interval: Duration::from_secs(30),
            max_message_bytes: 1 << 20,
            consumer_options: BTreeMap::new(),
            producer_options: producer_options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn producers_keep_five_requests_in_flight_unless_configured_otherwise() {
        let config = producer_config(&settings(&[]));
        assert_eq!(config.get("max.in.flight.requests.per.connection"), Some("5"));
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("linger.ms"), Some("2"));

        let config = producer_config(&settings(&[("max.in.flight.requests.per.connection", "1"), ("linger.ms", "10")]));
        assert_eq!(config.get("max.in.flight.requests.per.connection"), Some("1"));
        assert_eq!(config.get("linger.ms"), Some("10"));
    }
}
