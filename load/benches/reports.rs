//! Report times over a large `events` table on the local ClickHouse.
//!
//!   CARGO_TARGET_DIR=~/.cache/threatpipe/target cargo bench --bench reports [-- EVENTS]
//!
//! (Runs only under `cargo bench`, which passes `--bench`; as a test target it does nothing.)
//!
//! Fills a fresh database with EVENTS events (default 10,000,000; generated server-side with
//! `numbers()`, spread over 7 days, 3 tenants, 1,000 users, 2% flagged) and one alert per
//! flagged event, then times each report over the whole week for one tenant, twice. The
//! baseline in the same run is `SELECT count() FROM events FINAL` (what reading the table
//! deduplicated costs at all).

use std::time::Instant;

use threatpipe::db::reports::{run, ReportParams, REPORTS};
use threatpipe::db::{migrate, ClickHouseConfig};

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n: u64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(10_000_000);
    let url = std::env::var("CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into());
    let config = ClickHouseConfig { url, database: format!("tp_bench_reports_{}", std::process::id()), ..ClickHouseConfig::default() };
    let db = config.database.clone();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        migrate(&config).await.unwrap();
        let client = config.client();
        let start: u32 = 1_763_596_800;
        let t = Instant::now();
        client
            .query(&format!(
                "INSERT INTO {db}.events (day, time, time_us, id, tenant, class, user, host, src_ip, match_rule_ids, risk) \
                 SELECT toDate(toDateTime({start} + intDiv(number * 604800, {n}))), toDateTime({start} + intDiv(number * 604800, {n})), \
                 toInt64({start} + intDiv(number * 604800, {n})) * 1000000, concat('e', toString(number)), \
                 concat('t', toString(number % 3)), 'authentication', concat('user', toString(number % 1000)), \
                 concat('host', toString(number % 300)), concat('10.0.', toString(number % 250), '.', toString(number % 200)), \
                 if(number % 50 = 0, [concat('r', toString(number % 7))], emptyArrayString()), toFloat64(number % 100) FROM system.numbers LIMIT {n}"
            ))
            .execute()
            .await
            .unwrap();
        client
            .query(&format!(
                "INSERT INTO {db}.alerts (day, time, time_us, last_seen_us, id, tenant, severity, rule_ids, attack_techniques, event_ids) \
                 SELECT day, time, time_us + 200000, time_us + 200000, concat('a', id), tenant, if(risk > 90, 'critical', 'high'), \
                 match_rule_ids, ['T1110'], [id] FROM {db}.events WHERE notEmpty(match_rule_ids)"
            ))
            .execute()
            .await
            .unwrap();
        println!("loaded {n} events and their alerts in {:.1} s", t.elapsed().as_secs_f64());
        let params = ReportParams { tenant: "t1".into(), from: start, to: start + 7 * 86_400, limit: 20 };
        for round in 1..=2 {
            let t = Instant::now();
            let _: u64 = client.query(&format!("SELECT count() FROM {db}.events FINAL")).fetch_one().await.unwrap();
            println!("round {round}: baseline count() FINAL {:>8.0} ms", t.elapsed().as_secs_f64() * 1000.0);
            for (name, _) in REPORTS {
                let t = Instant::now();
                let table = run(&config, name, &params).await.unwrap();
                println!("round {round}: {name:<18} {:>8.0} ms ({} rows)", t.elapsed().as_secs_f64() * 1000.0, table.rows.len());
            }
        }
        client.query(&format!("DROP DATABASE {db}")).execute().await.unwrap();
    });
}
