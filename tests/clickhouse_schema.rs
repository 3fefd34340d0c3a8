//! The warehouse schema on the real ClickHouse (18.16 here, per DESIGN.md): `db migrate`
//! creates every table and rollup, is idempotent, refuses an applied migration whose text
//! changed, and the rollups count what is inserted.

mod support;

use threatpipe::db::{migrate, ClickHouseConfig, DbError, MIGRATIONS};

fn config() -> ClickHouseConfig {
    let url = std::env::var("CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into());
    ClickHouseConfig { url, database: support::unique("tp_schema").replace('-', "_"), ..ClickHouseConfig::default() }
}

async fn count(config: &ClickHouseConfig, sql: &str) -> u64 {
    config.client().query(sql).fetch_one::<u64>().await.unwrap()
}

#[test]
fn migrate_creates_the_schema_once_and_the_rollups_count_inserts() {
    let config = config();
    support::runtime().block_on(async {
        let first = migrate(&config).await.unwrap();
        assert_eq!(first.applied.len(), MIGRATIONS.len());
        let again = migrate(&config).await.unwrap();
        assert!(again.applied.is_empty(), "idempotent: {again:?}");
        assert_eq!(again.already, MIGRATIONS.len());
        let db = &config.database;
        for table in ["events", "alerts", "dead_letters", "alerts_per_minute", "alerts_per_hour", "events_per_class_minute", "schema_migrations"] {
            let n = count(&config, &format!("SELECT count() FROM system.tables WHERE database = '{db}' AND name = '{table}'")).await;
            assert_eq!(n, 1, "{table} exists");
        }

        // The rollups count what lands in the base tables.
        let client = config.client();
        client
            .query(&format!("INSERT INTO {db}.alerts (day, time, id, tenant, severity, rule_ids) VALUES (today(), now(), 'a1', 'acme', 'high', ['r1', 'r2'])"))
            .execute()
            .await
            .unwrap();
        assert_eq!(count(&config, &format!("SELECT sum(alerts) FROM {db}.alerts_per_hour WHERE rule_id = 'r2'")).await, 1);

        client.query(&format!("DROP DATABASE {db}")).execute().await.unwrap();
    });
}

#[test]
fn a_migration_changed_after_it_was_applied_is_refused() {
    let config = config();
    let db = config.database.clone();
    support::runtime().block_on(async {
        let client = config.client();
        // A database where version 1 was applied from different text.
        client.query(&format!("CREATE DATABASE {db}")).execute().await.unwrap();
        client
            .query(&format!("CREATE TABLE {db}.schema_migrations (version UInt32, name String, checksum String, applied_at DateTime) ENGINE = MergeTree ORDER BY version"))
            .execute()
            .await
            .unwrap();
        client.query(&format!("INSERT INTO {db}.schema_migrations (version, name, checksum) VALUES (1, 'events', 'not-the-same')")).execute().await.unwrap();
        match migrate(&config).await {
            Err(DbError::Changed { version: 1, .. }) => {}
            other => panic!("a changed migration must be refused, got {other:?}"),
        }
        assert_eq!(count(&config, &format!("SELECT count() FROM system.tables WHERE database = '{db}' AND name = 'alerts'")).await, 0, "nothing after it ran");
        client.query(&format!("DROP DATABASE {db}")).execute().await.unwrap();
    });
}

#[test]
fn events_round_trip_through_the_events_table_and_train_from_history() {
    use threatpipe::db::rows::{EventRow, EVENT_COLUMNS};
    use threatpipe::detect::{Detector, ScanConfig};
    use threatpipe::generator::{EventGenerator, GeneratorConfig};
    use threatpipe::normalize::{NormalizeConfig, Normalizer};

    let config = config();
    let db = config.database.clone();
    // Generator traffic as ml-score sees it, stamped over the last day.
    let (detector, _) = Detector::load(&ScanConfig::default());
    let normalizer = Normalizer::new(NormalizeConfig::default(), "default");
    let mut generator = EventGenerator::new(GeneratorConfig { seed: 3, attack_every: 30, malformed_ratio: 0.0, ..GeneratorConfig::default() });
    let now = chrono::Utc::now().timestamp_micros();
    let events: Vec<_> = (0..3_000)
        .map(|i| {
            let t = now - 86_400_000_000 + i * 20_000_000;
            let record = threatpipe::bus::Record::from_line("g", i as usize, generator.next_record(t).payload);
            let mut event = normalizer.normalize(&record, t).unwrap();
            event.matches = detector.scan(&event);
            event
        })
        .collect();
    support::runtime().block_on(async {
        migrate(&config).await.unwrap();
        let client = config.client().with_database(&db);
        let mut insert = client.insert::<EventRow>("events").await.unwrap();
        for event in &events {
            insert.write(&EventRow::from_event(event, now)).await.unwrap();
        }
        insert.end().await.unwrap();
        let back: Vec<EventRow> = client.query(&format!("SELECT {EVENT_COLUMNS} FROM events FINAL ORDER BY time_us")).fetch_all().await.unwrap();
        assert_eq!(back.len(), events.len());
        let first = back[0].to_event();
        assert_eq!((first.id.as_str(), first.class, first.user()), (events[0].id.as_str(), events[0].class, events[0].user()));
        let flagged = back.iter().filter(|r| !r.match_rule_ids.is_empty()).count();
        assert!(flagged > 10, "attacks carry their matches: {flagged}");
    });

    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("history.json");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_threatpipe"))
        .args(["train", "--clickhouse", "7", "--components", "1", "--out"])
        .arg(&model)
        .env("THREATPIPE_CLICKHOUSE__URL", &config.url)
        .env("THREATPIPE_CLICKHOUSE__DATABASE", &db)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("flagged") && stdout.contains("ROC AUC"), "{stdout}");
    let loaded = threatpipe::ml::model::Model::load(&model).unwrap();
    assert!(loaded.version().starts_with("clickhouse-"), "{}", loaded.version());
    support::runtime().block_on(async { config.client().query(&format!("DROP DATABASE {db}")).execute().await.unwrap() });
}

#[test]
fn prune_drops_only_day_partitions_beyond_the_retention() {
    let config = config();
    let db = config.database.clone();
    support::runtime().block_on(async {
        migrate(&config).await.unwrap();
        let client = config.client();
        for days_ago in [40, 0] {
            client
                .query(&format!(
                    "INSERT INTO {db}.events (day, time, id, tenant) VALUES (today() - {days_ago}, now() - {days_ago} * 86400, 'e{days_ago}', 'acme')"
                ))
                .execute()
                .await
                .unwrap();
        }
        let dropped = threatpipe::db::prune(&config, 30).await.unwrap();
        assert!(dropped.iter().any(|(table, _)| table == "events"), "{dropped:?}");
        assert!(dropped.iter().all(|(table, _)| table != "schema_migrations"));
        assert_eq!(count(&config, &format!("SELECT count() FROM {db}.events")).await, 1, "today's row stays");
        assert!(threatpipe::db::prune(&config, 0).await.unwrap().is_empty(), "0 keeps everything");
        client.query(&format!("DROP DATABASE {db}")).execute().await.unwrap();
    });
}
