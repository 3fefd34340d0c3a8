//! Wires configuration into running tasks and owns the one shutdown path.
//!
//! [`run`] builds the transport, one [`StageRunner`] per configured stage, the generator
//! (embedded mode), the HTTP server and the progress line, then waits for the shutdown
//! trigger (a parameter, so tests drive it), a failed stage, or the generator's last event.
//! Stages run as tasks on the shared runtime, except one that waits on an outside service
//! for every record (the alert stage with Redis): it gets a thread of its own.
//!
//! # Shutdown
//!
//! In pipeline order: stop the generator; then for each stage, stop reading, drain, commit;
//! then the sinks for topics nobody in-process reads; then HTTP. Each step has a deadline
//! (`runner.drain_timeout` plus slack); a task still running at its deadline is aborted and
//! named in the log. Stopping in order means embedded mode loses nothing on a clean stop.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::bus::kafka::{ensure_topics, KafkaConsumer, KafkaProducer};
use crate::bus::memory::MemoryBus;
use crate::bus::{BusConsumer, BusError, BusProducer, OutMessage};
use crate::config::{AppConfig, BusKind};
use crate::generator::{EventGenerator, GeneratorConfig, Origin};
use crate::stage::runner::RunnerError;
use crate::stage::{self, StageKind, StageRunner};
use crate::telemetry::{FlowStats, StageStats, Telemetry};

/// Most generated records awaiting a transport ack before the generator waits.
const GENERATOR_MAX_IN_FLIGHT: usize = 10_000;
/// Extra time beyond `runner.drain_timeout` a stage gets to finish before it is aborted.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Bus(#[from] BusError),
    #[error(transparent)]
    Stage(#[from] RunnerError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("task {0} panicked or was aborted")]
    Task(String),
    #[error("live feed: {0}")]
    Feed(String),
    #[error("stage {stage}: cannot start its thread: {source}")]
    Thread { stage: &'static str, source: std::io::Error },
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Runs a stage on a thread of its own (a current-thread runtime), for a stage that blocks
/// on an outside service as it works ([`stage::Stage::waits_on_outside_service`]): on the
/// shared runtime each wait took one of its workers (two on a two-core machine) from the
/// other stages and the live feed's clients. The handle behaves as `tokio::spawn`'s: it
/// yields the stage's result, a panic on the thread fails it, and aborting it drops the
/// stage's future on its thread.
fn spawn_on_own_thread<F>(stage: &'static str, run: F) -> Result<tokio::task::JoinHandle<Result<(), RunnerError>>, AppError>
where
    F: Future<Output = Result<(), RunnerError>> + Send + 'static,
{
    let thread_error = |source| AppError::Thread { stage, source };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(thread_error)?;
    let (result_tx, result_rx) = tokio::sync::oneshot::channel();
    let aborted = CancellationToken::new();
    let abort_on_drop = aborted.clone().drop_guard();
    std::thread::Builder::new()
        .name(format!("stage-{stage}"))
        .spawn(move || {
            let outcome = runtime.block_on(async move {
                tokio::select! {
                    result = run => Some(result),
                    _ = aborted.cancelled() => None,
                }
            });
            if let Some(result) = outcome {
                let _ = result_tx.send(result);
            }
        })
        .map_err(thread_error)?;
    Ok(tokio::spawn(async move {
        let _abort_on_drop = abort_on_drop;
        match result_rx.await {
            Ok(result) => result,
            Err(_) => panic!("stage {stage} ended without a result (its thread panicked)"),
        }
    }))
}

fn install_prometheus() -> Option<Arc<PrometheusHandle>> {
    match PrometheusBuilder::new().install_recorder() {
        Ok(handle) => Some(Arc::new(handle)),
        Err(e) => {
            warn!(error = %e, "Prometheus recorder not installed; /metrics will be unavailable.");
            None
        }
    }
}

struct StageTask {
    kind: StageKind,
    stop: CancellationToken,
    handle: JoinHandle<Result<(), RunnerError>>,
}

/// Final counts of a run, for callers (tests, the CLI summary).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    pub generated: u64,
    pub malformed_injected: u64,
    pub alerts: u64,
    pub dead_letters: u64,
    /// (stage, received, produced, dead-lettered)
    pub stages: Vec<(StageKind, u64, u64, u64)>,
}

impl RunReport {
    fn from(telemetry: &Telemetry) -> Self {
        let flow = &telemetry.flow;
        Self {
            generated: flow.generated.load(Ordering::Relaxed),
            malformed_injected: flow.malformed_injected.load(Ordering::Relaxed),
            alerts: flow.alerts.load(Ordering::Relaxed),
            dead_letters: flow.dead_letters.load(Ordering::Relaxed),
            stages: telemetry
                .stages
                .iter()
                .map(|s| {
                    (
                        s.stage,
                        s.received.load(Ordering::Relaxed),
                        s.produced.load(Ordering::Relaxed),
                        s.dead_lettered.load(Ordering::Relaxed),
                    )
                })
                .collect(),
        }
    }
}

/// The known-threat index: Qdrant when configured and reachable, else the embedded one.
async fn similarity_index(config: &crate::stage::ml_score::MlConfig, exemplars: Vec<crate::ml::similarity::Exemplar>) -> Arc<dyn crate::ml::similarity::ThreatIndex> {
    let count = exemplars.len();
    if let Some(url) = config.qdrant.clone() {
        let collection = config.qdrant_collection.clone();
        let copy = exemplars.clone();
        // The client's setup blocks on its own runtime: keep it off this one.
        match tokio::task::spawn_blocking(move || crate::ml::qdrant::QdrantIndex::connect(&url, &collection, copy)).await {
            Ok(Ok(index)) => {
                tracing::info!(exemplars = count, url = config.qdrant.as_deref().unwrap_or_default(), "known-threat exemplars on Qdrant");
                return Arc::new(index);
            }
            Ok(Err(error)) => tracing::warn!(%error, "Qdrant unavailable; using the embedded exemplar index"),
            Err(error) => tracing::warn!(%error, "Qdrant setup panicked; using the embedded exemplar index"),
        }
    }
    tracing::info!(exemplars = count, "known-threat exemplars loaded (embedded index)");
    Arc::new(crate::ml::similarity::ExactIndex::new(exemplars))
}

/// Runs the configured pipeline until `shutdown_signal` resolves (or a stage fails, or a
/// generator with a `total` finished and the pipeline drained).
pub async fn run(config: AppConfig, shutdown_signal: impl Future<Output = ()> + Send) -> Result<RunReport, AppError> {
    let prometheus = install_prometheus();
    let telemetry = Telemetry {
        stages: config.pipeline.stages.iter().map(|k| StageStats::new(*k)).collect(),
        flow: Arc::new(FlowStats::default()),
    };
    let stage_failed = CancellationToken::new();
    let started = Instant::now();

    // Transport.
    let memory = (config.pipeline.bus == BusKind::Memory).then(|| MemoryBus::new(config.pipeline.memory_topic_capacity));
    let producer = match &memory {
        Some(bus) => BusProducer::Memory(bus.producer()),
        None => {
            let settings = config.kafka_settings();
            if config.kafka.create_topics {
                ensure_topics(&settings, &config.topics.all(), config.topics.partitions).await?;
            }
            BusProducer::Kafka(KafkaProducer::new(&settings)?)
        }
    };

    // Detection resources, loaded once and shared by every quick-scan stage.
    let reload_stop = CancellationToken::new();
    let mut reload_thread = None;
    let detector = if config.pipeline.stages.contains(&StageKind::QuickScan) {
        let (detector, report) = crate::detect::Detector::load(&config.scan);
        for problem in report.problems.iter().take(20) {
            tracing::warn!(%problem, "not loaded");
        }
        tracing::info!(%report, "quick-scan rules loaded");
        let handle = crate::detect::DetectorHandle::new(detector);
        reload_thread = handle.watch(config.scan.clone(), report, reload_stop.clone());
        handle
    } else {
        crate::detect::DetectorHandle::new(crate::detect::Detector::empty())
    };
    let correlations = if config.pipeline.stages.contains(&StageKind::Correlate) {
        let (rules, problems) = crate::detect::correlation::CorrelationRules::load_all(&config.correlate.rules);
        for problem in problems.iter().take(20) {
            tracing::warn!(path = %problem.path.display(), reason = %problem.reason, "correlation rule not loaded");
        }
        tracing::info!(correlations = rules.rule_count(), detections = rules.detection_rule_count(), "correlation rules loaded");
        Arc::new(rules)
    } else {
        Arc::new(crate::detect::correlation::CorrelationRules::empty())
    };
    let mut model_thread = None;
    let (model, exemplars): (crate::ml::handle::ModelHandle, Arc<dyn crate::ml::similarity::ThreatIndex>) =
        if config.pipeline.stages.contains(&StageKind::MlScore) {
            let (model, error) = crate::ml::handle::ModelHandle::open(config.ml.model.clone());
            match (error, model.current()) {
                (Some(error), _) => tracing::warn!(%error, "no model loaded; scores use rules, baselines and similarity (train one with `threatpipe train`)"),
                (None, Some(m)) => tracing::info!(version = %m.version(), "model loaded"),
                (None, None) => {}
            }
            model_thread = model.watch(config.ml.reload_interval, reload_stop.clone());
            let (exemplars, problems) = crate::ml::similarity::load_exemplars(&config.ml.exemplars);
            for (path, reason) in &problems {
                tracing::warn!(path = %path.display(), %reason, "exemplar file not loaded");
            }
            (model, similarity_index(&config.ml, exemplars).await)
        } else {
            (crate::ml::handle::ModelHandle::none(), Arc::new(crate::ml::similarity::ExactIndex::default()))
        };
    // Live feed (served with HTTP): the hub, its way in from Redis, its tokens.
    let feed_stop = CancellationToken::new();
    let mut feed_thread = None;
    let mut dev_token = None;
    let feed = if config.http.enabled && config.feed.enabled {
        let redis_url = config
            .feed
            .redis
            .clone()
            .or_else(|| config.alert.dedupe.clone().filter(|d| d != "memory"))
            .or_else(|| (config.pipeline.bus == BusKind::Kafka).then(|| stage::default_checkpoint(BusKind::Kafka)));
        let redis_client = match &redis_url {
            Some(url) => Some(redis::Client::open(url.as_str()).map_err(|e| AppError::Feed(format!("feed.redis {url}: {e}")))?),
            None => None,
        };
        // Without Redis the hub keeps the recent alerts itself, for resuming clients.
        let recent = if redis_client.is_none() { config.alert.stream_max_len } else { 0 };
        let hub = crate::feed::FeedHub::new(config.feed.client_queue, config.feed.slow_client, recent);
        let resume = match (redis_client, redis_url) {
            (Some(client), Some(url)) => {
                feed_thread = Some(crate::feed::redis_source::spawn_subscriber(
                    client.clone(),
                    url,
                    config.alert.channel.clone(),
                    config.alert.stream.clone(),
                    hub.clone(),
                    feed_stop.clone(),
                ));
                crate::feed::ResumeSource::Redis { client, stream: config.alert.stream.clone() }
            }
            _ => crate::feed::ResumeSource::Hub,
        };
        let mut auth = crate::feed::auth::Authenticator::new(config.feed.tokens.clone(), config.feed.jwt_secret.as_deref());
        if config.pipeline.bus == BusKind::Memory && config.feed.dev_token {
            let token = crate::feed::auth::random_token();
            auth.add_token(token.clone(), crate::feed::auth::ALL_TENANTS.into());
            match crate::feed::write_dev_token(config.http.listen.port(), &token) {
                Ok(path) => dev_token = Some((token, Some(path))),
                Err(error) => {
                    warn!(%error, "cannot write the development token; `threatpipe tail` needs --token");
                    dev_token = Some((token, None));
                }
            }
        }
        if auth.is_closed() {
            warn!("live feed: no feed.tokens and no feed.jwt_secret, so every connection will be refused");
        }
        Some(Arc::new(crate::feed::Feed { hub, auth, resume, config: config.feed.clone() }))
    } else {
        None
    };

    let resources = stage::StageResources { detector, correlations, model, exemplars, feed: feed.as_ref().map(|f| f.hub.clone()) };

    // Stages.
    let mut stages = Vec::new();
    for stats in &telemetry.stages {
        let kind = stats.stage;
        let inputs = kind.inputs(&config);
        let consumer = match &memory {
            // Config validation keeps multi-topic roles (the sink) off the in-process bus.
            Some(bus) => BusConsumer::Memory(bus.consumer(&inputs[0])?),
            None => {
                let group = format!("{}.{}", config.kafka.group_prefix, kind.as_str());
                BusConsumer::Kafka(KafkaConsumer::subscribe(&config.kafka_settings(), &group, &inputs)?)
            }
        };
        let built = stage::build(kind, &config, &resources).map_err(|source| RunnerError::Stage { stage: kind.as_str(), source })?;
        let own_thread = built.waits_on_outside_service();
        let runner = StageRunner::new(built, consumer, producer.clone(), config.runner.clone(), config.topics.dlq.clone(), stats.clone());
        let stop = CancellationToken::new();
        let failed = stage_failed.clone();
        let token = stop.clone();
        let run = async move {
            let result = runner.run(token).await;
            if result.is_err() {
                failed.cancel();
            }
            result
        };
        let handle = if own_thread { spawn_on_own_thread(kind.as_str(), run)? } else { tokio::spawn(run) };
        stages.push(StageTask { kind, stop, handle });
    }

    // Embedded mode: count and release what no stage here consumes (alerts, dead letters).
    let sinks_stop = CancellationToken::new();
    let mut sinks = Vec::new();
    if let Some(bus) = &memory {
        let consumed: Vec<String> = config.pipeline.stages.iter().flat_map(|k| k.inputs(&config)).collect();
        for topic in config.topics.all() {
            if consumed.contains(&topic) {
                continue;
            }
            let consumer = bus.consumer(&topic)?;
            let counter = if topic == config.topics.dlq {
                CountInto::DeadLetters
            } else if topic == config.topics.alerts {
                CountInto::Alerts
            } else {
                CountInto::Nothing
            };
            sinks.push(tokio::spawn(drain_topic(consumer, counter, telemetry.flow.clone(), sinks_stop.clone())));
        }
    }

    // Generator.
    let generator_stop = CancellationToken::new();
    let generator_done = CancellationToken::new();
    let generator = if config.generator.enabled {
        let (cfg, topic, producer, flow, stop, done) = (
            config.generator.clone(),
            config.topics.raw.clone(),
            producer.clone(),
            telemetry.flow.clone(),
            generator_stop.clone(),
            generator_done.clone(),
        );
        Some(tokio::spawn(async move {
            let result = run_generator(cfg, topic, producer, flow, stop).await;
            done.cancel();
            result
        }))
    } else {
        None
    };

    // HTTP and progress.
    let service_stop = CancellationToken::new();
    let http = if config.http.enabled {
        let listener = tokio::net::TcpListener::bind(config.http.listen)
            .await
            .map_err(|source| AppError::Listen { addr: config.http.listen, source })?;
        info!(addr = %config.http.listen, "Serving /metrics, /health, /ready, /reports and the live feed (/ and /feed).");
        if let Some((token, path)) = &dev_token {
            let listen = config.http.listen;
            info!("Live threat feed: http://{listen}/#token={token}");
            if let Some(path) = path {
                info!("`threatpipe tail` watches it from a terminal (development token in {}).", path.display());
            }
        }
        Some(tokio::spawn(crate::serve::serve(listener, telemetry.clone(), prometheus, config.clickhouse.clone(), feed.clone(), service_stop.clone())))
    } else {
        None
    };
    let progress = config.progress.enabled.then(|| {
        tokio::spawn(crate::progress::run(telemetry.clone(), config.progress.interval, service_stop.clone()))
    });

    // Wait for a reason to stop.
    let generator_finishes = config.generator.enabled && config.generator.total > 0;
    tokio::select! {
        _ = shutdown_signal => info!("Shutdown requested; draining."),
        _ = stage_failed.cancelled() => error!("A stage failed; shutting down."),
        _ = generator_done.cancelled(), if generator_finishes => info!("Generator finished; draining the pipeline."),
    }

    // Ordered shutdown.
    let mut first_error: Option<AppError> = None;
    generator_stop.cancel();
    if let Some(handle) = generator {
        match handle.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => first_error = first_error.or(Some(e.into())),
            Err(e) => first_error = first_error.or(Some(AppError::Task(format!("generator: {e}")))),
        }
    }
    let stage_deadline = config.runner.drain_timeout + SHUTDOWN_SLACK;
    for task in stages {
        task.stop.cancel();
        let mut handle = task.handle;
        match tokio::time::timeout(stage_deadline, &mut handle).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => first_error = first_error.or(Some(e.into())),
            Ok(Err(e)) => first_error = first_error.or(Some(AppError::Task(format!("stage {}: {e}", task.kind)))),
            Err(_) => {
                error!(stage = %task.kind, "Stage still running at the shutdown deadline; aborting it (its uncommitted input will be replayed).");
                handle.abort();
            }
        }
    }
    reload_stop.cancel();
    drop(reload_thread); // wakes within one reload interval and exits; nothing to flush
    drop(model_thread);
    sinks_stop.cancel();
    for sink in sinks {
        let _ = tokio::time::timeout(SHUTDOWN_SLACK, sink).await;
    }
    if let Err(e) = producer.flush(SHUTDOWN_SLACK).await {
        warn!(error = %e, "Producer flush incomplete.");
    }
    service_stop.cancel();
    if let Some(progress) = progress {
        let _ = progress.await;
    }
    if let Some(http) = http {
        let _ = tokio::time::timeout(SHUTDOWN_SLACK, http).await;
    }
    feed_stop.cancel();
    if let Some(thread) = feed_thread {
        // Wakes within its read timeout (250 ms).
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    if let Some((_, Some(path))) = &dev_token {
        let _ = std::fs::remove_file(path);
    }
    if config.progress.enabled {
        crate::progress::print_summary(&telemetry, started.elapsed());
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(RunReport::from(&telemetry)),
    }
}

#[derive(Clone, Copy)]
enum CountInto {
    Alerts,
    DeadLetters,
    Nothing,
}

async fn drain_topic(mut consumer: crate::bus::memory::MemoryConsumer, counter: CountInto, flow: Arc<FlowStats>, stop: CancellationToken) {
    let count = |flow: &FlowStats| match counter {
        CountInto::Alerts => {
            flow.alerts.fetch_add(1, Ordering::Relaxed);
        }
        CountInto::DeadLetters => {
            flow.dead_letters.fetch_add(1, Ordering::Relaxed);
        }
        CountInto::Nothing => {}
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            received = consumer.recv() => match received {
                Ok(_) => count(&flow),
                Err(_) => return,
            },
        }
    }
    while consumer.try_recv().is_some() {
        count(&flow);
    }
}

/// Produces generated traffic to `topic` at the configured rate until stopped or `total`.
pub async fn run_generator(
    config: GeneratorConfig,
    topic: String,
    producer: BusProducer,
    flow: Arc<FlowStats>,
    stop: CancellationToken,
) -> Result<(), BusError> {
    let topic = crate::bus::Topic::from(topic);
    let mut generator = EventGenerator::new(config.clone());
    let mut acks = FuturesUnordered::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut budget = 0.0_f64;
    let mut sent = 0u64;
    'outer: loop {
        let batch = if config.rate == 0 {
            tokio::task::yield_now().await;
            256
        } else {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticker.tick() => {}
            }
            budget += config.rate as f64 / 100.0;
            let whole = budget.floor();
            budget -= whole;
            whole as u64
        };
        for _ in 0..batch {
            if stop.is_cancelled() || (config.total > 0 && sent >= config.total) {
                break 'outer;
            }
            let record = generator.next_record(now_us());
            let origin = record.origin;
            let message = OutMessage { topic: topic.clone(), key: Some(record.key.into_bytes()), payload: record.payload };
            let ack = tokio::select! {
                ack = producer.send(message) => ack?,
                _ = stop.cancelled() => break 'outer,
            };
            acks.push(ack);
            sent += 1;
            flow.generated.fetch_add(1, Ordering::Relaxed);
            match origin {
                Origin::Attack(_) => flow.attacks_injected.fetch_add(1, Ordering::Relaxed),
                Origin::Malformed => flow.malformed_injected.fetch_add(1, Ordering::Relaxed),
                Origin::Background => 0,
            };
            while acks.len() >= GENERATOR_MAX_IN_FLIGHT {
                if let Some(result) = acks.next().await {
                    result?;
                }
            }
        }
        while let Some(Some(result)) = acks.next().now_or_never() {
            result?;
        }
    }
    while let Some(result) = acks.next().await {
        result?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_stage_on_its_own_thread_returns_its_result_and_blocks_no_worker() {
        // The stage blocks its thread, as a slow outside round trip would, until a task on
        // the shared runtime's one worker has run. With `tokio::spawn` the stage would hold
        // that worker and the task would never run. (Waited for with a std timeout on the
        // test's own thread: a tokio timer would need the blocked worker to fire.)
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let handle = spawn_on_own_thread("test", async move {
            let _ = blocked.recv();
            Err(RunnerError::Setup { stage: "test", source: BusError::Setup("failed as asked".into()) })
        })
        .expect("thread starts");
        let (ran, task_ran) = std::sync::mpsc::channel::<()>();
        tokio::spawn(async move {
            let _ = ran.send(());
        });
        assert!(task_ran.recv_timeout(Duration::from_secs(10)).is_ok(), "a task on the shared runtime did not run while the stage blocked");
        release.send(()).expect("the stage is waiting");
        match handle.await {
            Ok(Err(RunnerError::Setup { stage: "test", .. })) => {}
            other => panic!("expected the stage's own error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_panic_on_the_thread_fails_the_handle_and_an_abort_drops_the_stage() {
        let handle = spawn_on_own_thread("test", async { panic!("stage bug") }).expect("thread starts");
        assert!(handle.await.is_err_and(|e| e.is_panic()));

        let dropped = CancellationToken::new();
        let guard = dropped.clone().drop_guard();
        let handle = spawn_on_own_thread("test", async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            Ok(())
        })
        .expect("thread starts");
        handle.abort();
        tokio::time::timeout(Duration::from_secs(5), dropped.cancelled()).await.expect("the stage's future was dropped on its thread");
    }
}
