//! Shared test environment: real services from env (loopback defaults), unique names per
//! test, and helpers to produce, read and run the binary.
//!
//! A missing service fails the test with a fix-it message; nothing is skipped silently.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Counts failed deliveries so a test never mistakes a lost input for a pipeline bug.
#[derive(Clone, Default)]
pub struct DeliveryCounter {
    pub failed: Arc<AtomicUsize>,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        if let Err((e, _)) = result {
            eprintln!("test producer: delivery failed: {e}");
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The shared public test data (`THREATPIPE_DATA`, default `../shared/data`), read by path.
pub fn data_dir() -> PathBuf {
    let dir = std::env::var("THREATPIPE_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    assert!(dir.is_dir(), "public test data not found at {}: set THREATPIPE_DATA", dir.display());
    dir
}

/// Every file under `dir` (recursively) that `wanted` accepts, sorted.
pub fn files_under(dir: &std::path::Path, wanted: &dyn Fn(&std::path::Path) -> bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if wanted(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Fails loudly when the broker is not reachable.
pub fn require_broker() -> String {
    let brokers = brokers();
    let first = brokers.split(',').next().unwrap_or_default().to_string();
    if TcpStream::connect_timeout(&first.parse().expect("KAFKA_BROKERS must be host:port"), Duration::from_secs(2)).is_err() {
        panic!("no Kafka-protocol broker at {brokers}: run scripts/services.sh (or scripts/test.sh) first");
    }
    brokers
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}-{}-{}", std::process::id(), nanos % 1_000_000_000_000)
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

pub fn create_topics(topics: &[&str], partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
    let new: Vec<NewTopic<'_>> = topics.iter().map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1))).collect();
    let results = runtime().block_on(admin.create_topics(&new, &AdminOptions::new())).unwrap();
    for result in results {
        result.unwrap_or_else(|(topic, e)| panic!("create topic {topic}: {e}"));
    }
}

/// Produces every (key, payload) and waits until all are acknowledged.
///
/// Records go in ordinary batches, as applications send them, so a stage that resumes
/// from a committed offset often starts inside a batch. Tansu 0.6.0 as released answered
/// such a fetch with the *next* batch and silently skipped the rest (a fetch from offset 1
/// of a batch 0..1157 returned 1158 onwards); the Tansu that scripts/services.sh builds
/// carries our patch for it (scripts/tansu/tansu-storage/0002-*), and returns the whole batch as Kafka
/// does, librdkafka dropping what lies below the offset.
pub fn produce_all(topic: &str, records: &[(String, Vec<u8>)]) {
    let counter = DeliveryCounter::default();
    let producer: ThreadedProducer<DeliveryCounter> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("message.max.bytes", "10000000")
        .set("linger.ms", "5")
        .create_with_context(counter.clone())
        .unwrap();
    for (key, payload) in records {
        send_queued(&producer, BaseRecord::to(topic).key(key.as_bytes()).payload(payload.as_slice()));
    }
    // Large inputs on a busy machine take a while: the wait grows with the count.
    let patience = Duration::from_secs(60).max(Duration::from_millis(2) * records.len() as u32);
    producer.flush(patience).unwrap_or_else(|e| panic!("producing {} records to {topic}: {e}", records.len()));
    assert_eq!(counter.failed.load(Ordering::Relaxed), 0, "the test's own produce to {topic} failed");
}

/// Queues `record` on `producer`, waiting while its queue is full.
pub fn send_queued(producer: &ThreadedProducer<DeliveryCounter>, mut record: BaseRecord<'_, [u8], [u8]>) {
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, returned)) => {
                record = returned;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// Reads a topic from the beginning with its own consumer group.
pub struct TopicReader {
    consumer: BaseConsumer,
    pub records: Vec<ReadRecord>,
}

impl TopicReader {
    pub fn new(topic: &str) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", unique("reader"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000")
            .create()
            .unwrap();
        consumer.subscribe(&[topic]).unwrap();
        Self { consumer, records: Vec::new() }
    }

    /// Reads whatever is available for up to `wait`.
    pub fn poll_for(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => self.records.push(ReadRecord {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                }),
                Some(Err(e)) => eprintln!("reader: {e}"),
                None => {}
            }
        }
    }

    /// Reads until `done(records)` or `timeout`; returns whether `done` held.
    pub fn read_until(&mut self, timeout: Duration, mut done: impl FnMut(&[ReadRecord]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if done(&self.records) {
                return true;
            }
            self.poll_for(Duration::from_millis(200));
        }
        done(&self.records)
    }
}

/// A `threatpipe` process under test; killed on drop.
pub struct StageProcess {
    pub child: Child,
    pub log: PathBuf,
}

impl StageProcess {
    /// Starts `threatpipe run` with `--bus kafka` and config overrides from `env`.
    pub fn start(name: &str, args: &[&str], env: &HashMap<String, String>) -> Self {
        Self::start_with(name, &["--no-http"], args, env)
    }

    /// Like [`StageProcess::start`], serving HTTP (and the live feed) on `listen`.
    pub fn start_serving(name: &str, listen: &str, args: &[&str], env: &HashMap<String, String>) -> Self {
        Self::start_with(name, &["--http-listen", listen], args, env)
    }

    fn start_with(name: &str, http: &[&str], args: &[&str], env: &HashMap<String, String>) -> Self {
        let log = std::env::temp_dir().join(format!("{}.log", unique(name)));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_threatpipe"))
            .arg("run")
            .args(["--brokers", &brokers(), "--no-generator", "--quiet"])
            .args(http)
            .args(args)
            .envs(env)
            .env("THREATPIPE_LOG", "info,rdkafka=warn")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Self { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn sigkill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and waits up to `timeout` for exit; returns the exit code.
    pub fn sigterm(&mut self, timeout: Duration) -> Option<i32> {
        let status = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("threatpipe did not exit within {timeout:?} of SIGTERM; log:\n{}", self.log_text());
    }
}

impl Drop for StageProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `threatpipe connect FILE` against the test broker; its log is in the process.
pub fn start_connector(name: &str, file: &std::path::Path) -> StageProcess {
    start_connector_with(name, file, &[])
}

/// [`start_connector`] with more command-line arguments.
pub fn start_connector_with(name: &str, file: &std::path::Path, args: &[&str]) -> StageProcess {
    let log = std::env::temp_dir().join(format!("{}.log", unique(name)));
    let child = Command::new(env!("CARGO_BIN_EXE_threatpipe"))
        .arg("connect")
        .arg(file)
        .args(["--brokers", &brokers()])
        .args(args)
        .env("THREATPIPE_LOG", "info,rdkafka=warn")
        // A killed member's partitions move on within seconds, as in the stage tests.
        .env("THREATPIPE_KAFKA__SESSION_TIMEOUT", "6s")
        .env("THREATPIPE_KAFKA__MAX_POLL_INTERVAL", "10s")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    StageProcess { child, log }
}

/// Writes a connector file reading `topic` with its own group, small quick batches, and
/// the destination section `body`.
pub fn connector_file(dir: &std::path::Path, name: &str, topic: &str, extra: &str, body: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "name = \"{name}\"\n[source]\ntopic = \"{topic}\"\ngroup = \"{}\"\n[batch]\nmax_alerts = 20\nmax_wait = \"100ms\"\n{extra}\n{body}",
        unique(name)
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A test CA and a server certificate for `localhost` / 127.0.0.1 signed by it (openssl).
pub fn make_certificates(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let output = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
        assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    };
    run(&["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=threatpipe test CA"]);
    run(&["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n").unwrap();
    run(&["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf"]);
}

/// A free loopback port (bound, then released) for a server under test.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET path` on 127.0.0.1:`port`: (status, body), or None if nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// Config overrides for `stages` under test: every topic unused until the caller names it,
/// the test's own consumer groups, short timeouts so rebalances finish quickly.
pub fn stage_env(test: &str, stages: &str) -> HashMap<String, String> {
    let mut env = HashMap::new();
    for (key, value) in [
        ("TOPICS__RAW", unique("unused.raw")),
        ("TOPICS__NORMALIZED", unique("unused.normalized")),
        ("TOPICS__SCANNED", unique("unused.scanned")),
        ("TOPICS__CORRELATED", unique("unused.correlated")),
        ("TOPICS__SCORED", unique("unused.scored")),
        ("TOPICS__ALERTS", unique("unused.alerts")),
        ("TOPICS__DLQ", unique("unused.dlq")),
        ("KAFKA__GROUP_PREFIX", unique(test)),
        ("KAFKA__CREATE_TOPICS", "false".into()),
        ("KAFKA__SESSION_TIMEOUT", "6s".into()),
        ("KAFKA__MAX_POLL_INTERVAL", "10s".into()),
        ("RUNNER__DRAIN_TIMEOUT", "4s".into()),
        ("RUNNER__COMMIT_INTERVAL", "200ms".into()),
        ("PIPELINE__STAGES", stages.into()),
    ] {
        env.insert(format!("THREATPIPE_{key}"), value);
    }
    env
}

/// Waits until every process logged a partition assignment.
pub fn wait_assigned(processes: &[&StageProcess]) {
    wait_assignments(processes, 1, Duration::from_secs(60));
}

/// Waits until each process has logged `stages` partition assignments (a process running
/// several stages logs one per stage), at most `within`.
pub fn wait_assignments(processes: &[&StageProcess], stages: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if processes.iter().all(|p| p.log_text().matches("Partitions assigned.").count() >= stages) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("instances did not get partitions; logs:\n{}", processes.iter().map(|p| p.log_text()).collect::<Vec<_>>().join("\n---\n"));
}

/// Topic names and overrides for one normalize deployment under test.
pub struct NormalizeEnv {
    pub raw: String,
    pub normalized: String,
    pub dlq: String,
    pub env: HashMap<String, String>,
}

impl NormalizeEnv {
    pub fn new(test: &str, partitions: i32) -> Self {
        require_broker();
        let raw = unique(&format!("{test}.raw"));
        let normalized = unique(&format!("{test}.normalized"));
        let dlq = unique(&format!("{test}.dlq"));
        create_topics(&[&raw, &normalized, &dlq], partitions);
        let mut env = stage_env(test, "normalize");
        for (key, value) in [("TOPICS__RAW", &raw), ("TOPICS__NORMALIZED", &normalized), ("TOPICS__DLQ", &dlq)] {
            env.insert(format!("THREATPIPE_{key}"), value.clone());
        }
        Self { raw, normalized, dlq, env }
    }

    pub fn start(&self, name: &str) -> StageProcess {
        StageProcess::start(name, &[], &self.env)
    }
}

/// A ClickHouse server of the test's own (the same binary scripts/services.sh runs), on
/// free ports with its own data directory, so a test can stop and restart it without
/// touching the shared server other tests use.
pub struct PrivateClickHouse {
    dir: tempfile::TempDir,
    pub http_port: u16,
    child: Option<Child>,
}

impl PrivateClickHouse {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (http_port, tcp_port) = (free_port(), free_port());
        let root = dir.path().display().to_string();
        for sub in ["data", "tmp", "log"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let config = format!(
            r#"<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>{root}/log/server.log</log><errorlog>{root}/log/server.err.log</errorlog><size>10M</size><count>1</count></logger>
    <http_port>{http_port}</http_port>
    <tcp_port>{tcp_port}</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <path>{root}/data/</path>
    <tmp_path>{root}/tmp/</tmp_path>
    <users_config>/etc/clickhouse-server/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mark_cache_size>268435456</mark_cache_size>
</yandex>
"#
        );
        std::fs::write(dir.path().join("config.xml"), config).unwrap();
        let mut server = Self { dir, http_port, child: None };
        server.resume();
        server
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn answers(&self) -> bool {
        TcpStream::connect_timeout(&format!("127.0.0.1:{}", self.http_port).parse().unwrap(), Duration::from_millis(200)).is_ok()
    }

    /// Starts (again) on the same ports and data.
    pub fn resume(&mut self) {
        let child = Command::new("clickhouse-server")
            .arg(format!("--config-file={}", self.dir.path().join("config.xml").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("clickhouse-server (installed by scripts/services.sh)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.answers() {
            assert!(Instant::now() < deadline, "private ClickHouse did not start: {}", std::fs::read_to_string(self.dir.path().join("log/server.err.log")).unwrap_or_default());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills the server (as an outage would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateClickHouse {
    fn drop(&mut self) {
        self.stop();
    }
}
