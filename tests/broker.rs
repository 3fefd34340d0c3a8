//! The broker under every Kafka test: the patched Tansu that `scripts/services.sh` builds.
//!
//! Each "nothing lost" test of a stage trusts the broker to hand a consumer every record
//! it stored. Tansu 0.6.0 as released did not always: when several producers wrote to one
//! partition, a fetch could skip a batch that was still being written (a produce advances
//! the high watermark before it stores its batch), and the consumer never saw that batch.
//! The stage tests showed it as a few records missing out of tens of thousands, on a busy
//! machine only. This test shows it on its own: many producers, one partition, a consumer
//! reading right behind them.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use support::{DeliveryCounter, TopicReader, brokers, create_topics, require_broker, send_queued, unique};

const PRODUCERS: usize = 8;
const RECORDS_EACH: usize = 5_000;

#[test]
fn concurrent_producers_to_one_partition_lose_nothing_for_a_consumer_reading_behind_them() {
    require_broker();
    let topic = unique("broker.one-partition");
    create_topics(&[&topic], 1);
    // Subscribed before the first record, so it reads at the head of the partition while
    // the producers are still writing: the window in which a batch is counted but not stored.
    let mut reader = TopicReader::new(&topic);
    reader.poll_for(Duration::from_secs(3));

    let topic = Arc::new(topic);
    let writers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let topic = Arc::clone(&topic);
            std::thread::spawn(move || {
                let counter = DeliveryCounter::default();
                // One record per batch, no linger: as many batches as records, each one more chance
                // for two producers' batches to be stored out of order.
                let producer: ThreadedProducer<DeliveryCounter> = ClientConfig::new()
                    .set("bootstrap.servers", brokers())
                    .set("linger.ms", "0")
                    .set("batch.num.messages", "1")
                    .create_with_context(counter.clone())
                    .unwrap();
                for i in 0..RECORDS_EACH {
                    let key = format!("p{p}-{i}");
                    send_queued(&producer, BaseRecord::to(topic.as_str()).key(key.as_bytes()).payload(key.as_bytes()));
                }
                producer.flush(Duration::from_secs(120)).expect("every record acknowledged");
                assert_eq!(counter.failed.load(Ordering::Relaxed), 0, "producer {p}: a delivery failed");
            })
        })
        .collect();

    let total = PRODUCERS * RECORDS_EACH;
    // Read while they write (the reader is polled on this thread as the writers run), then
    // until everything is in or nothing more comes: what is missing then was skipped.
    let deadline = Instant::now() + Duration::from_secs(180);
    while reader.records.len() < total && !writers.iter().all(|w| w.is_finished()) && Instant::now() < deadline {
        reader.poll_for(Duration::from_millis(200));
    }
    for writer in writers {
        writer.join().expect("producer thread");
    }
    reader.read_until(Duration::from_secs(10), |records| records.len() >= total);

    let offsets: Vec<i64> = reader.records.iter().map(|r| r.offset).collect();
    let gaps: Vec<(i64, i64)> = offsets.windows(2).filter(|w| w[1] != w[0] + 1).map(|w| (w[0], w[1])).collect();
    assert!(gaps.is_empty(), "the consumer skipped offsets (last read, next read): {gaps:?}");
    let keys: HashSet<Vec<u8>> = reader.records.iter().filter_map(|r| r.key.clone()).collect();
    assert_eq!(reader.records.len(), total, "every record read exactly once");
    assert_eq!(keys.len(), total, "every produced key read");
    assert_eq!(offsets.first(), Some(&0));
}

/// A pipeline pointed at a broker that is not there says so and exits, instead of waiting
/// silently (librdkafka's admin request would wait 60 s and log nothing).
#[test]
fn run_against_an_unreachable_broker_fails_with_a_clear_error() {
    // Nothing listens on port 9 (discard) on these machines.
    let started = Instant::now();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_threatpipe"))
        .args(["run", "--config", "pipelines/kafka.toml", "--brokers", "127.0.0.1:9", "--no-http", "--quiet"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(45), "took {:?}", started.elapsed());
    assert!(stderr.contains("on 127.0.0.1:9") && stderr.contains("is the broker up?"), "{stderr}");
}

/// threatpipe's own Kafka transport end to end: each produced message's ack resolves once
/// the broker has stored it, the records come back in order with their keys and payloads,
/// and records of one topic share one copy of its name (the consumer hands the last
/// record's on instead of copying it for every record).
#[test]
fn the_kafka_bus_acknowledges_what_the_broker_stored_and_shares_the_topic_name_between_records() {
    use threatpipe::bus::OutMessage;
    use threatpipe::bus::kafka::{KafkaConsumer, KafkaProducer, KafkaSettings};

    require_broker();
    let topic = unique("broker.bus");
    create_topics(&[&topic], 1);
    let settings = KafkaSettings {
        brokers: brokers(),
        session_timeout: Duration::from_secs(10),
        max_poll_interval: Duration::from_secs(30),
        max_message_bytes: 1 << 20,
        consumer_options: Default::default(),
        producer_options: Default::default(),
    };
    let expected: Vec<(i64, Option<Vec<u8>>, Vec<u8>)> = (0..3u8).map(|i| (i64::from(i), Some(vec![b'k', i]), vec![i; 3])).collect();
    support::runtime().block_on(async {
        let producer = KafkaProducer::new(&settings).unwrap();
        for (_, key, payload) in &expected {
            let ack = producer.send(OutMessage { topic: topic.as_str().into(), key: key.clone(), payload: payload.clone() }).await.unwrap();
            ack.await.expect("the broker acknowledged the message");
        }
        let mut consumer = KafkaConsumer::subscribe(&settings, &unique("broker.bus-group"), std::slice::from_ref(&topic)).unwrap();
        let mut records = Vec::new();
        while records.len() < expected.len() {
            let record = tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await.expect("the records within 60 s").unwrap();
            records.push(record);
        }
        let read: Vec<_> = records.iter().map(|r| (r.offset, r.key.clone(), r.payload.clone())).collect();
        assert_eq!(read, expected);
        assert_eq!(&*records[0].topic, topic.as_str());
        assert!(records.windows(2).all(|w| Arc::ptr_eq(&w[0].topic, &w[1].topic)), "records of one topic share its name");
    });
}
