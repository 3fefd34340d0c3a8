//! Command-line interface: subcommands, and flags that become config overrides.
//!
//! Flags are translated into the same `THREATPIPE_*` overrides the environment uses, so a
//! flag, a variable and a file key are validated by one code path and named the same way in
//! errors.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config::AppConfig;

#[derive(Debug, Parser)]
#[command(
    name = "threatpipe",
    version,
    about = "Event-streaming threat detection: Kafka in, scored, deduplicated alerts out.",
    long_about = "Event-streaming threat detection: Kafka in, scored, deduplicated alerts out.\n\n\
        With no arguments, runs every stage in one process over in-memory channels, fed by a \
        built-in generator of realistic traffic with injected attacks, and serves /metrics and \
        /health on 127.0.0.1:8080. Point it at a broker with a config file (see \
        pipelines/kafka.toml) or --bus kafka --brokers HOST:PORT.\n\n\
        Every config key can be set from the environment as THREATPIPE_<SECTION>__<KEY>, e.g. \
        THREATPIPE_KAFKA__BROKERS=10.0.0.5:9092."
)]
pub struct Cli {
    /// Pipeline config (TOML). Default: the built-in embedded pipeline (pipelines/default.toml).
    #[arg(long, short, global = true, env = "THREATPIPE_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run pipeline stages (the default). Ctrl-C / SIGTERM drains in-flight work, commits and exits 0.
    Run(RunArgs),
    /// Produce generated traffic (with attacks) to a Kafka topic, or print it.
    Generate(GenerateArgs),
    /// Normalize raw events from a file or stdin (one per line) and print the result as JSON.
    Normalize(NormalizeArgs),
    /// Print the effective configuration (file + environment + defaults) as TOML.
    Config,
    /// List the Avro schemas with their Confluent schema ids, or print one.
    Schemas {
        /// Print the schema with this id (e.g. 101).
        id: Option<u32>,
    },
    /// Check and try out detection content: Sigma rules (.yml), pattern packs (.toml) and
    /// IoC feeds (.txt, .csv, STIX .json), as files or directories.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Fit the ml-score models on labelled events, print their evaluation on a held-out
    /// split (precision, recall, ROC AUC, confusion matrix, recall at 1% false positives per
    /// class) and write a versioned model file.
    ///
    /// Data (one of): --generated N (the built-in generator; labels are its attack
    /// scenarios), --events FILE (raw NDJSON; label in --label-field, absent = normal),
    /// --nsl-kdd FILE (NSL-KDD connection records; labels are attack families),
    /// --clickhouse DAYS (history in the warehouse; rule-flagged events are `flagged`).
    ///
    /// Example: threatpipe train --generated 50000 --out models/generator.json
    ///          threatpipe train --nsl-kdd ../shared/data/nsl-kdd/KDDTrain+_20Percent.txt --no-classifier
    Train(TrainArgs),
    /// ClickHouse, where events, alerts and dead letters are kept: apply the schema (migrate),
    /// drop days beyond the retention (prune).
    #[command(subcommand)]
    Db(DbCommand),
    /// Reports over ClickHouse: threat-summary (alerts by severity and rule), top-entities,
    /// attack-coverage, detection-latency, dead-letters, pattern (alerts per hour).
    ///
    /// Example: threatpipe report threat-summary --tenant acme --since 7d --format csv
    Report(ReportArgs),
    /// Feed a SIEM from the alert topic, as configured by a connector file (see
    /// connectors/): Splunk HEC, Elasticsearch/OpenSearch bulk, syslog (CEF, LEEF, JSON over
    /// UDP or TCP), Microsoft Sentinel, or a signed webhook. At-least-once; what the SIEM
    /// rejects goes to the connector's dead-letter topic; Ctrl-C stops after the batch in hand.
    ///
    /// Example: threatpipe connect connectors/splunk-hec.toml --brokers kafka:9092
    Connect {
        /// The connector file (TOML).
        file: PathBuf,
        /// Override source.brokers.
        #[arg(long, env = "KAFKA_BROKERS")]
        brokers: Option<String>,
        /// Serve /metrics on this address (e.g. 127.0.0.1:9464).
        #[arg(long)]
        metrics_listen: Option<std::net::SocketAddr>,
        /// Check the file (its consumer group and dead-letter topic are printed) without connecting.
        #[arg(long)]
        check: bool,
    },
    /// Drive a running pipeline with generated traffic (labelled attacks) at a rate and
    /// measure it from the far end: throughput, end-to-end latency, detection recall, lag.
    /// `--passthrough` measures a pass-through deployment: the baseline to quote against.
    Load(crate::load_cli::LoadArgs),
    /// Exit 0 if URL answers 2xx within 3 s, else 1 (container health checks; the image has
    /// no curl). Example: threatpipe probe http://127.0.0.1:8080/ready
    Probe {
        url: String,
    },
    /// Watch the live threat feed in the terminal, one alert per line (the same filters as
    /// the web page). Against a local embedded run it needs no flags.
    Tail(crate::feed::tail::TailArgs),
    /// Mint an HS256 JWT for the live feed, signed with feed.jwt_secret from the config
    /// (or THREATPIPE_FEED__JWT_SECRET).
    ///
    /// Example: threatpipe feed-token --tenant acme --ttl 12h
    FeedToken {
        /// The tenant whose alerts the token shows (`*` = every tenant).
        #[arg(long)]
        tenant: String,
        /// Who the token is for (the `sub` claim, shown in the server's log).
        #[arg(long, default_value = "threatpipe-cli")]
        subject: String,
        /// How long the token is valid.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
    /// Score NDJSON events with a model file: one JSON line per event with its risk (0-100),
    /// the parts (anomaly, classifier) and the features that drove each.
    ///
    /// Example: threatpipe score --model models/generator.json --events events.ndjson
    Score(ScoreArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("data").required(true).args(["generated", "events", "nsl_kdd", "clickhouse"])))]
pub struct TrainArgs {
    /// Train on N events of the built-in generator.
    #[arg(long, value_name = "N")]
    pub generated: Option<usize>,
    /// Train on raw NDJSON events with labels.
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// JSON field holding an event's label in --events (absent or `normal` = benign).
    #[arg(long, default_value = "label")]
    pub label_field: String,
    /// Train on NSL-KDD records (CSV: 41 features, label, difficulty).
    #[arg(long, value_name = "FILE")]
    pub nsl_kdd: Option<PathBuf>,
    /// Train on the last N days of events in ClickHouse (clickhouse.url / database): the
    /// anomaly model learns history; events rules flagged are held out as `flagged`.
    #[arg(long, value_name = "DAYS")]
    pub clickhouse: Option<u32>,
    /// With --clickhouse: only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// With --clickhouse: at most this many events.
    #[arg(long, default_value_t = 1_000_000)]
    pub limit: u64,
    /// Share of rows held out for the evaluation.
    #[arg(long, default_value_t = 0.2)]
    pub holdout: f64,
    /// Components of the anomaly model's Gaussian mixture.
    #[arg(long, default_value_t = 4)]
    pub components: usize,
    /// Seed of the split (and of the generator with --generated).
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// With --generated: one attack burst per about this many events.
    #[arg(long, default_value_t = 40)]
    pub attack_every: u64,
    /// Do not fit the anomaly model.
    #[arg(long)]
    pub no_anomaly: bool,
    /// Do not fit the classifier (anomaly only: learn normal behaviour, no labels needed).
    #[arg(long)]
    pub no_classifier: bool,
    /// Where to write the model file.
    #[arg(long, short, default_value = "models/model.json")]
    pub out: PathBuf,
    /// Also print the evaluation as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Create the database and apply every schema migration not applied yet
    /// (schemas/clickhouse/, recorded in schema_migrations). Safe to run again and from
    /// several instances. Refuses a migration whose text changed after it was applied.
    ///
    /// Example: threatpipe db migrate --url http://127.0.0.1:8123 --database threatpipe
    Migrate {
        /// ClickHouse HTTP interface (default: clickhouse.url).
        #[arg(long)]
        url: Option<String>,
        /// Database (default: clickhouse.database).
        #[arg(long)]
        database: Option<String>,
    },
    /// Drop day partitions older than the retention (clickhouse.retention_days, or --days)
    /// from events, alerts, dead letters and the rollups.
    ///
    /// Example: threatpipe db prune --days 90
    Prune {
        #[arg(long)]
        days: Option<u32>,
    },
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// threat-summary, top-entities, attack-coverage, detection-latency, dead-letters, pattern.
    pub name: String,
    /// Only this tenant (default: all).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Time range ending now, e.g. 24h, 7d (ignored with --from).
    #[arg(long, default_value = "24h")]
    pub since: humantime::Duration,
    /// Range start, RFC 3339 (e.g. 2026-11-01T00:00:00Z).
    #[arg(long)]
    pub from: Option<String>,
    /// Range end, RFC 3339 (default: now).
    #[arg(long)]
    pub to: Option<String>,
    /// Rows per report (per entity kind for top-entities).
    #[arg(long, default_value_t = 20)]
    pub limit: u64,
    /// table, csv or json.
    #[arg(long, default_value = "table", value_parser = ["table", "csv", "json"])]
    pub format: String,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Model file written by `threatpipe train`.
    #[arg(long, short)]
    pub model: PathBuf,
    /// Raw NDJSON events (any format normalize accepts); `-` reads stdin.
    #[arg(long, short)]
    pub events: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Load rules, packs and feeds; list every one that does not load, and why.
    /// Exits 1 when anything failed to load.
    ///
    /// Example: threatpipe rules validate pipelines/ ../shared/data/sigma/rules
    Validate {
        /// Files or directories (searched recursively).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Run NDJSON events (raw, in any format normalize accepts) through the rules and print
    /// what matched, one line per match. Sigma correlation rules among the files then run
    /// over the events in event-time order; each signal is printed with its group key and
    /// window.
    ///
    /// Example: threatpipe rules test pipelines/ --events events.ndjson
    Test {
        /// Files or directories with rules, packs and feeds.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// NDJSON events; `-` reads stdin.
        #[arg(long, short)]
        events: PathBuf,
        /// One JSON object per event ({line, event_id, matches}) instead of text.
        #[arg(long)]
        json: bool,
        /// Also print events that matched nothing.
        #[arg(long)]
        all: bool,
    },
    /// Measure scan throughput on one core over NDJSON events with these rules, packs and
    /// feeds; print one JSON line of figures. Optionally write each event as the flat
    /// document Sigma rules see, and per-rule hit counts, for comparing with other engines.
    ///
    /// Example: threatpipe rules bench pipelines/ ../shared/data/sigma/rules --events e.ndjson
    ///          --synthetic-iocs 1000000 --documents docs.ndjson --hits hits.tsv
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Files or directories with rules, packs and feeds.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// NDJSON events (any format normalize accepts).
    #[arg(long, short)]
    pub events: PathBuf,
    /// Passes over the events for each timed lane.
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// Add this many synthetic IoCs (IPs, domains, SHA-256 hashes, URLs) to the loaded feeds.
    #[arg(long, default_value_t = 0)]
    pub synthetic_iocs: u32,
    /// Write each event's Sigma document (one JSON object per line) to this file.
    #[arg(long)]
    pub documents: Option<PathBuf>,
    /// Write Sigma hits per rule (tab-separated: rule_id, unrouted, routed) to this file.
    #[arg(long)]
    pub hits: Option<PathBuf>,
    /// Timed lanes: ingest (raw line → normalize → scan), scan (normalized event → scan),
    /// unrouted (every Sigma rule on every document, rsigma's semantics). Parts of scan, for
    /// finding where time goes: sigma (routed rules through the literal gate), ungated
    /// (routed rules, each evaluated by rsigma), iocs, patterns.
    #[arg(long, value_delimiter = ',', default_value = "ingest,scan,unrouted")]
    pub lanes: Vec<String>,
}

#[derive(Debug, Args, Default)]
pub struct RunArgs {
    /// Stages to run, comma-separated: normalize,quick-scan,correlate,ml-score,alert; or the
    /// `sink` role (ClickHouse writer, Kafka only).
    #[arg(long)]
    pub stages: Option<String>,
    /// Transport: memory (one process, no services) or kafka.
    #[arg(long)]
    pub bus: Option<String>,
    /// Kafka bootstrap servers (implies --bus kafka).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Address for /metrics, /health, /ready and /reports/NAME, e.g. 127.0.0.1:8080.
    #[arg(long)]
    pub http_listen: Option<String>,
    /// Do not serve HTTP.
    #[arg(long)]
    pub no_http: bool,
    /// Do not run the built-in generator.
    #[arg(long)]
    pub no_generator: bool,
    /// Generator rate in events/s (0 = as fast as possible).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Stop after the generator produced this many events and the pipeline drained.
    #[arg(long)]
    pub events: Option<u64>,
    /// Do not print the progress line.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Topic to produce to.
    #[arg(long, default_value = "events.raw")]
    pub topic: String,
    /// Events per second (0 = as fast as possible).
    #[arg(long, default_value_t = 5_000)]
    pub rate: u64,
    /// Number of events (0 = until Ctrl-C).
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// Seed of the random stream.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Print records to stdout (one per line) instead of producing them.
    #[arg(long)]
    pub stdout: bool,
}

#[derive(Debug, Args)]
pub struct NormalizeArgs {
    /// File with one raw event per line; `-` or absent reads stdin.
    pub input: Option<PathBuf>,
}

fn overrides_from(args: &RunArgs) -> Vec<(String, String)> {
    let mut vars = Vec::new();
    let mut set = |key: &str, value: String| vars.push((format!("THREATPIPE_{key}"), value));
    if let Some(stages) = &args.stages {
        set("PIPELINE__STAGES", stages.clone());
    }
    if let Some(bus) = &args.bus {
        set("PIPELINE__BUS", format!("\"{bus}\""));
    }
    if let Some(brokers) = &args.brokers {
        set("KAFKA__BROKERS", format!("\"{brokers}\""));
        if args.bus.is_none() {
            set("PIPELINE__BUS", "\"kafka\"".into());
        }
    }
    if let Some(listen) = &args.http_listen {
        set("HTTP__LISTEN", format!("\"{listen}\""));
    }
    if args.no_http {
        set("HTTP__ENABLED", "false".into());
    }
    if args.no_generator {
        set("GENERATOR__ENABLED", "false".into());
    }
    if let Some(rate) = args.rate {
        set("GENERATOR__RATE", rate.to_string());
    }
    if let Some(events) = args.events {
        set("GENERATOR__TOTAL", events.to_string());
    }
    if args.quiet {
        set("PROGRESS__ENABLED", "false".into());
    }
    vars
}

pub fn load_config(cli: &Cli, run: Option<&RunArgs>) -> anyhow::Result<AppConfig> {
    let mut vars: Vec<(String, String)> = std::env::vars().collect();
    if let Some(run) = run {
        vars.extend(overrides_from(run));
    }
    Ok(AppConfig::load(cli.config.as_deref(), vars)?)
}

/// The configuration for commands that take their detection content as arguments
/// (`rules test|bench`): the configured `[scan]` paths are not used, so they are not
/// required to exist (these commands run from any directory).
pub fn load_config_without_scan(cli: &Cli) -> anyhow::Result<AppConfig> {
    let mut vars: Vec<(String, String)> = std::env::vars().collect();
    vars.extend(no_scan_overrides());
    Ok(AppConfig::load(cli.config.as_deref(), vars)?)
}

/// Overrides that empty the `[scan]` paths, for commands that load no detection content.
pub fn no_scan_overrides() -> [(String, String); 3] {
    ["THREATPIPE_SCAN__SIGMA", "THREATPIPE_SCAN__INTEL", "THREATPIPE_SCAN__PATTERNS"].map(|k| (k.to_string(), "[]".to_string()))
}

/// `GET url` over plain HTTP, the whole exchange bounded by `timeout`: (status, body).
pub async fn http_get(url: &str, timeout: std::time::Duration) -> anyhow::Result<(hyper::StatusCode, bytes::Bytes)> {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let uri: hyper::Uri = url.parse().with_context(|| format!("not a URL: {url}"))?;
    let exchange = async {
        let response = client.get(uri).await.with_context(|| url.to_string())?;
        let status = response.status();
        let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| anyhow::anyhow!("{url}: no answer within {timeout:?}"))?
}

async fn probe(url: &str) -> anyhow::Result<()> {
    let (status, body) = http_get(url, std::time::Duration::from_secs(3)).await?;
    if status.is_success() {
        Ok(())
    } else {
        anyhow::bail!("{url}: {status} {}", String::from_utf8_lossy(&body).trim())
    }
}

async fn connect(file: &std::path::Path, brokers: Option<&str>, metrics_listen: Option<std::net::SocketAddr>) -> anyhow::Result<()> {
    let mut connector = crate::connect::ConnectorConfig::load(file)?;
    if let Some(brokers) = brokers {
        connector.source.brokers = brokers.to_string();
    }
    // Kafka client settings as the stages use them (the detection content is not needed).
    // THREATPIPE_KAFKA__* from the environment apply (session timeout, client options).
    let mut vars: Vec<(String, String)> = std::env::vars().filter(|(k, _)| k.starts_with("THREATPIPE_KAFKA__")).collect();
    vars.extend(no_scan_overrides());
    let mut app = AppConfig::load(None, vars)?;
    app.kafka.brokers = connector.source.brokers.clone();
    let settings = app.kafka_settings();
    if let Some(addr) = metrics_listen {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder().context("metrics recorder")?;
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        let router = axum::Router::new().route("/metrics", axum::routing::get(move || std::future::ready(handle.render())));
        tokio::spawn(async move { axum::serve(listener, router).await });
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let trigger = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        trigger.cancel();
    });
    let delivered = crate::connect::run(connector, settings, stop).await?;
    eprintln!("connector stopped; {delivered} alerts delivered");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

pub async fn main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => {
            let config = load_config(&cli, Some(&RunArgs::default()))?;
            crate::app::run(config, shutdown_signal()).await?;
            Ok(())
        }
        Some(Command::Run(ref args)) => {
            let config = load_config(&cli, Some(args))?;
            crate::app::run(config, shutdown_signal()).await?;
            Ok(())
        }
        Some(Command::Generate(ref args)) => generate(args).await,
        Some(Command::Normalize(ref args)) => normalize(&cli, args),
        Some(Command::Rules(ref command)) => crate::rules_cli::run(&cli, command),
        Some(Command::Train(ref args)) => crate::ml_cli::train(&cli, args).await,
        Some(Command::Score(ref args)) => crate::ml_cli::score(args),
        Some(Command::Db(DbCommand::Migrate { ref url, ref database })) => {
            let mut config = load_config_without_scan(&cli)?.clickhouse;
            if let Some(url) = url {
                config.url = url.clone();
            }
            if let Some(database) = database {
                config.database = database.clone();
            }
            let errors = config.validate();
            anyhow::ensure!(errors.is_empty(), "{}", errors.join("; "));
            let report = crate::db::migrate(&config).await?;
            for (version, name) in &report.applied {
                println!("applied {version:04} {name}");
            }
            println!("{} applied now, {} already applied; database {} at {}", report.applied.len(), report.already, config.database, config.url);
            Ok(())
        }
        Some(Command::Connect { ref file, ref brokers, metrics_listen, check: true }) => {
            let _ = (brokers, metrics_listen);
            let connector = crate::connect::ConnectorConfig::load(file)?;
            // Not the whole file: it holds tokens and keys.
            println!("{}: ok; group {}, dead letters to {}", file.display(), connector.group(), connector.dead_letter_topic());
            Ok(())
        }
        Some(Command::Connect { ref file, ref brokers, metrics_listen, check: false }) => connect(file, brokers.as_deref(), metrics_listen).await,
        Some(Command::Probe { ref url }) => probe(url).await,
        Some(Command::Load(ref args)) => crate::load_cli::run(args).await,
        Some(Command::Tail(ref args)) => crate::feed::tail::run(args).await,
        Some(Command::FeedToken { ref tenant, ref subject, ttl }) => {
            let config = load_config_without_scan(&cli)?;
            let Some(secret) = config.feed.jwt_secret.filter(|s| !s.is_empty()) else {
                anyhow::bail!("feed.jwt_secret is not set (in the config file or THREATPIPE_FEED__JWT_SECRET)");
            };
            let exp = chrono::Utc::now().timestamp() + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
            let claims = serde_json::json!({"tenant": tenant, "sub": subject, "exp": exp});
            println!("{}", crate::feed::auth::sign_hs256(&claims, secret.as_bytes()));
            Ok(())
        }
        Some(Command::Report(ref args)) => {
            let config = load_config_without_scan(&cli)?.clickhouse;
            let since = args.since.to_string();
            let params = crate::db::reports::ReportParams::parse(args.tenant.as_deref(), Some(&since), args.from.as_deref(), args.to.as_deref(), Some(args.limit))
                .map_err(|e| anyhow::anyhow!(e))?;
            let table = crate::db::reports::run(&config, &args.name, &params).await?;
            match args.format.as_str() {
                "csv" => print!("{}", table.to_csv()),
                "json" => println!("{}", table.to_json()),
                _ => print!("{}", table.to_text()),
            }
            Ok(())
        }
        Some(Command::Db(DbCommand::Prune { days })) => {
            let config = load_config_without_scan(&cli)?.clickhouse;
            let days = days.unwrap_or(config.retention_days);
            let dropped = crate::db::prune(&config, days).await?;
            for (table, partition) in &dropped {
                println!("dropped {}.{table} {partition}", config.database);
            }
            println!("{} partitions older than {days} days dropped", dropped.len());
            Ok(())
        }
        Some(Command::Config) => {
            let config = load_config(&cli, None)?;
            print!("{}", toml::to_string_pretty(&config).context("rendering config")?);
            Ok(())
        }
        Some(Command::Schemas { id }) => {
            for known in crate::event::avro::KNOWN_SCHEMAS {
                match id {
                    Some(wanted) if wanted == known.id => {
                        println!("{}", known.json);
                        return Ok(());
                    }
                    Some(_) => {}
                    None => println!("{:>4}  {:<12} v{}  schemas/avro/{}", known.id, known.kind.as_str(), known.version, known.file),
                }
            }
            match id {
                Some(wanted) => anyhow::bail!("no schema with id {wanted}; run `threatpipe schemas` to list them"),
                None => Ok(()),
            }
        }
    }
}

async fn generate(args: &GenerateArgs) -> anyhow::Result<()> {
    let config = crate::generator::GeneratorConfig {
        rate: args.rate,
        total: args.count,
        seed: args.seed,
        ..Default::default()
    };
    if args.stdout {
        let mut generator = crate::generator::EventGenerator::new(config);
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let mut n = 0u64;
        while args.count == 0 || n < args.count {
            let record = generator.next_record(chrono::Utc::now().timestamp_micros());
            out.write_all(&record.payload)?;
            out.write_all(b"\n")?;
            n += 1;
        }
        return Ok(());
    }
    let settings = crate::config::AppConfig::load(None, std::iter::empty())?.kafka_settings();
    let settings = crate::bus::kafka::KafkaSettings { brokers: args.brokers.clone(), ..settings };
    let producer = crate::bus::BusProducer::Kafka(crate::bus::kafka::KafkaProducer::new(&settings)?);
    let flow = std::sync::Arc::new(crate::telemetry::FlowStats::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        stopper.cancel();
    });
    let started = std::time::Instant::now();
    crate::app::run_generator(config, args.topic.clone(), producer.clone(), flow.clone(), stop).await?;
    producer.flush(std::time::Duration::from_secs(10)).await?;
    let n = flow.generated.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "produced {n} events ({} attacks, {} malformed) to {} in {:.1}s",
        flow.attacks_injected.load(std::sync::atomic::Ordering::Relaxed),
        flow.malformed_injected.load(std::sync::atomic::Ordering::Relaxed),
        args.topic,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn normalize(cli: &Cli, args: &NormalizeArgs) -> anyhow::Result<()> {
    let config = load_config(cli, None)?;
    let normalizer = crate::normalize::Normalizer::new(config.normalize.clone(), config.pipeline.default_tenant.clone());
    let reader: Box<dyn BufRead> = match &args.input {
        Some(path) if path.as_os_str() != "-" => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
        )),
        _ => Box::new(std::io::stdin().lock()),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for (n, line) in reader.split(b'\n').enumerate() {
        let payload = line.context("reading input")?;
        let record = crate::bus::Record::from_line("stdin", n, payload);
        let value = match normalizer.normalize(&record, chrono::Utc::now().timestamp_micros()) {
            Ok(event) => serde_json::to_value(&event)?,
            Err(e) => serde_json::json!({"line": n + 1, "dead_letter": {"reason_code": e.reason_code(), "reason": e.to_string()}}),
        };
        writeln!(out, "{value}")?;
    }
    Ok(())
}
