//! Every report against the real ClickHouse, its numbers checked against the rows loaded
//! (base tables with FINAL: a replayed duplicate row changes nothing).

mod support;

use serde_json::json;
use threatpipe::db::reports::{run, ReportParams, Table};
use threatpipe::db::{migrate, ClickHouseConfig};

const T: u32 = 1_763_596_800; // 2025-11-20T00:00:00Z

fn config() -> ClickHouseConfig {
    let url = std::env::var("CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into());
    ClickHouseConfig { url, database: support::unique("tp_reports").replace('-', "_"), ..ClickHouseConfig::default() }
}

fn params(tenant: &str) -> ReportParams {
    ReportParams { tenant: tenant.into(), from: T, to: T + 7 * 86_400, limit: 20 }
}

fn rows(table: &Table) -> Vec<serde_json::Value> {
    table.to_json().as_array().unwrap().clone()
}

#[test]
fn every_report_matches_the_rows_loaded() {
    let config = config();
    let db = config.database.clone();
    support::runtime().block_on(async {
        migrate(&config).await.unwrap();
        let client = config.client();
        let exec = |sql: String| {
            let client = client.clone();
            async move { client.query(&sql).execute().await.unwrap() }
        };
        // Events: (id, tenant, user, host, src_ip, seconds after T, flagged by a rule?, risk)
        let events = [
            ("e1", "acme", "alice", "web-1", "203.0.113.5", 10, true, 80.0),
            ("e2", "acme", "alice", "web-1", "203.0.113.5", 20, true, 90.0),
            ("e3", "acme", "alice", "web-2", "203.0.113.5", 30, true, 70.0),
            ("e4", "acme", "bob", "web-1", "198.51.100.1", 40, true, 60.0),
            ("e5", "acme", "carol", "db-1", "10.0.0.1", 50, false, 5.0),
            ("e6", "acme", "carol", "db-1", "10.0.0.1", 60, false, 55.0),
            ("e7", "globex", "dave", "app-1", "192.0.2.9", 70, true, 95.0),
        ];
        for (id, tenant, user, host, ip, dt, flagged, risk) in events {
            let matches = if flagged { "['r1']" } else { "[]" };
            let sql = format!(
                "INSERT INTO {db}.events (day, time, time_us, id, tenant, user, host, src_ip, match_rule_ids, risk) VALUES \
                 (toDate({t}), {t}, {us}, '{id}', '{tenant}', '{user}', '{host}', '{ip}', {matches}, {risk})",
                t = T + dt,
                us = i64::from(T + dt) * 1_000_000
            );
            exec(sql.clone()).await;
            if id == "e1" {
                exec(sql).await; // a replayed duplicate: FINAL folds it
            }
        }
        // Alerts: (id, tenant, severity, rules, techniques, event ids, seconds after T, latency ms)
        let alerts = [
            ("a1", "acme", "high", "['r1','r2']", "['T1110']", "['e1']", 10, 150),
            ("a2", "acme", "high", "['r1']", "['T1110','T1078']", "['e2']", 20, 250),
            ("a3", "acme", "critical", "['r3']", "['T1059.001']", "['e4']", 40, 1000),
            ("a4", "globex", "critical", "['r3']", "['T1059.001']", "['e7']", 3_700, 50),
        ];
        for (id, tenant, severity, rules, techniques, event_ids, dt, latency_ms) in alerts {
            let event_us = i64::from(T + dt) * 1_000_000;
            let alert_us = event_us + latency_ms * 1_000;
            exec(format!(
                "INSERT INTO {db}.alerts (day, time, time_us, last_seen_us, id, tenant, severity, rule_ids, attack_techniques, event_ids) VALUES \
                 (toDate({t}), {t}, {alert_us}, {alert_us}, '{id}', '{tenant}', '{severity}', {rules}, {techniques}, {event_ids})",
                t = T + dt
            ))
            .await;
        }
        for (stage, reason, n) in [("normalize", "bad_json", 3), ("quick-scan", "bad_avro", 1)] {
            for i in 0..n {
                exec(format!(
                    "INSERT INTO {db}.dead_letters (day, time, id, stage, reason_code) VALUES (toDate({T}), {T}, '{stage}-{i}', '{stage}', '{reason}')"
                ))
                .await;
            }
        }

        let summary = rows(&run(&config, "threat-summary", &params("acme")).await.unwrap());
        assert_eq!(
            summary,
            vec![
                json!({"severity": "high", "rule_id": "r1", "alerts": "2"}),
                json!({"severity": "critical", "rule_id": "r3", "alerts": "1"}),
                json!({"severity": "high", "rule_id": "r2", "alerts": "1"}),
            ]
        );
        let all = rows(&run(&config, "threat-summary", &params("")).await.unwrap());
        assert_eq!(all[0], json!({"severity": "critical", "rule_id": "r3", "alerts": "2"}), "every tenant: {all:?}");

        let entities = rows(&run(&config, "top-entities", &params("acme")).await.unwrap());
        let users: Vec<_> = entities.iter().filter(|r| r["kind"] == "user").map(|r| (r["entity"].clone(), r["flagged_events"].clone())).collect();
        // alice 3 (e1 once after dedup), bob 1, carol 1 (e6: risk 55 ≥ 50, no rule); dave is another tenant.
        assert_eq!(users, vec![(json!("alice"), json!("3")), (json!("bob"), json!("1")), (json!("carol"), json!("1"))]);
        let hosts: Vec<_> = entities.iter().filter(|r| r["kind"] == "host").map(|r| r["entity"].clone()).collect();
        assert_eq!(hosts, vec![json!("web-1"), json!("db-1"), json!("web-2")]);

        let coverage = rows(&run(&config, "attack-coverage", &params("")).await.unwrap());
        let techniques: Vec<_> = coverage.iter().map(|r| (r["technique"].clone(), r["alerts"].clone())).collect();
        // a1 counts once per rule (r1, r2): 2 rows for T1110 from a1 plus 1 from a2.
        assert_eq!(techniques, vec![(json!("T1110"), json!("3")), (json!("T1059.001"), json!("2")), (json!("T1078"), json!("1"))]);

        let latency = rows(&run(&config, "detection-latency", &params("acme")).await.unwrap());
        assert_eq!(latency[0]["alerts"], json!("3"));
        assert_eq!(latency[0]["p50_ms"], json!(250));
        assert_eq!(latency[0]["max_ms"], json!(1000));

        let dead = rows(&run(&config, "dead-letters", &params("")).await.unwrap());
        assert_eq!(dead, vec![json!({"stage": "normalize", "reason_code": "bad_json", "dead_letters": "3"}), json!({"stage": "quick-scan", "reason_code": "bad_avro", "dead_letters": "1"})]);

        let pattern = rows(&run(&config, "pattern", &params("")).await.unwrap());
        let per_hour: Vec<_> = pattern.iter().map(|r| r["alerts"].clone()).collect();
        assert_eq!(per_hour, vec![json!("3"), json!("1")], "{pattern:?}");

        // The same over HTTP, from a running instance.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_threatpipe"))
            .args(["run", "--no-generator", "--quiet", "--http-listen", &format!("127.0.0.1:{port}")])
            .env("THREATPIPE_CLICKHOUSE__URL", &config.url)
            .env("THREATPIPE_CLICKHOUSE__DATABASE", &db)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let path = "/reports/threat-summary?tenant=acme&from=2025-11-20T00:00:00Z&to=2025-11-27T00:00:00Z";
        let (status, body) = http_get(port, path);
        assert_eq!(status, 200, "{body}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap(), serde_json::Value::Array(summary.clone()));
        let (status, body) = http_get(port, &format!("{path}&format=csv"));
        assert_eq!((status, body.lines().next()), (200, Some("severity,rule_id,alerts")));
        assert_eq!(http_get(port, "/reports/nope").0, 404);
        assert_eq!(http_get(port, "/reports/pattern?since=soon").0, 400);
        server.kill().unwrap();
        server.wait().unwrap();

        // Parameters are bound: a tenant that is SQL text is just a tenant no row has.
        let hostile = rows(&run(&config, "threat-summary", &params("x' OR '1'='1")).await.unwrap());
        assert!(hostile.is_empty());
        assert!(run(&config, "nope", &params("")).await.unwrap_err().to_string().contains("threat-summary"));
        client.query(&format!("DROP DATABASE {db}")).execute().await.unwrap();
    });
}

/// A plain HTTP/1.1 GET on loopback (retried while the server starts): (status, body).
fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
            return (status, body);
        }
        assert!(std::time::Instant::now() < deadline, "no HTTP server on {port}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn tables_render_as_text_csv_and_json() {
    let table = Table { columns: vec!["a".into(), "b".into()], rows: vec![vec![json!("x, \"y\""), json!(2)]] };
    assert_eq!(table.to_csv(), "a,b\n\"x, \"\"y\"\"\",2\n");
    assert_eq!(table.to_json(), json!([{"a": "x, \"y\"", "b": 2}]));
    let text = table.to_text();
    assert_eq!(text, "a       b\n------  -\nx, \"y\"  2\n");
}
