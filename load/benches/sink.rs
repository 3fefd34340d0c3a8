//! ClickHouse insert throughput of the sink's rows, on the local server.
//!
//!   CARGO_TARGET_DIR=~/.cache/threatpipe/target cargo bench --bench sink [-- ROWS]
//!
//! (Runs only under `cargo bench`, which passes `--bench`; as a test target it does nothing.)
//!
//! Inserts ROWS (default 1,000,000) `events` rows built from generator-shaped events, in
//! batches of 10,000 (the sink's default), into a fresh database, and reports rows/s; the
//! baseline in the same run is the same number of rows of a two-column table (id, time),
//! what the server takes when row width is not the cost.

use std::time::Instant;

use threatpipe::db::rows::EventRow;
use threatpipe::db::{migrate, ClickHouseConfig};
use threatpipe::event::{Actor, Endpoint, Event, EventClass, Match};

#[derive(clickhouse::Row, serde::Serialize)]
struct Thin {
    id: String,
    time: u32,
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rows: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(1_000_000);
    let url = std::env::var("CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into());
    let config = ClickHouseConfig { url, database: format!("tp_bench_{}", std::process::id()), ..ClickHouseConfig::default() };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        migrate(&config).await.unwrap();
        let db = &config.database;
        let client = config.client().with_database(db);
        client.query(&format!("CREATE TABLE {db}.thin (id String, time DateTime) ENGINE = MergeTree ORDER BY id")).execute().await.unwrap();
        let now = chrono::Utc::now().timestamp_micros();
        let template = |i: usize| Event {
            id: format!("bench-{i}"),
            class: EventClass::Authentication,
            time_us: now + i as i64,
            tenant: "acme".into(),
            partition_key: format!("acme|user{}", i % 1000),
            outcome: Some("failure".into()),
            actor: Some(Actor { user: Some(format!("user{}", i % 1000)), ..Actor::default() }),
            src: Some(Endpoint { ip: Some(format!("10.0.{}.{}", i % 250, i % 200)), ..Endpoint::default() }),
            matches: if i.is_multiple_of(50) { vec![Match { rule_id: "r1".into(), kind: "sigma".into(), level: "high".into(), ..Match::default() }] } else { vec![] },
            ..Event::default()
        };
        for round in 1..=2 {
            let t = Instant::now();
            for start in (0..rows).step_by(10_000) {
                let mut insert = client.insert::<Thin>("thin").await.unwrap();
                for i in start..(start + 10_000).min(rows) {
                    insert.write(&Thin { id: format!("bench-{i}"), time: (now / 1_000_000) as u32 }).await.unwrap();
                }
                insert.end().await.unwrap();
            }
            let thin = rows as f64 / t.elapsed().as_secs_f64();
            let t = Instant::now();
            for start in (0..rows).step_by(10_000) {
                let mut insert = client.insert::<EventRow>("events").await.unwrap();
                for i in start..(start + 10_000).min(rows) {
                    insert.write(&EventRow::from_event(&template(i), now)).await.unwrap();
                }
                insert.end().await.unwrap();
            }
            let events = rows as f64 / t.elapsed().as_secs_f64();
            println!("round {round}: events rows {events:>9.0} rows/s   baseline thin rows {thin:>9.0} rows/s   ratio {:.2}", events / thin);
        }
        client.query(&format!("DROP DATABASE {db}")).execute().await.unwrap();
    });
}
