//! Reports over the warehouse: the questions analysts ask after the fact. Every report reads
//! the base tables with FINAL (exact after deduplication), takes its tenant and time range
//! as bound parameters (never interpolated; only our validated database name is), and
//! returns a [`Table`] that renders as a terminal table, CSV or JSON.

use std::fmt::Write as _;

use serde_json::Value;

use super::{valid_identifier, ClickHouseConfig, DbError};

/// The reports there are.
pub const REPORTS: &[(&str, &str)] = &[
    ("threat-summary", "alerts by severity and rule"),
    ("top-entities", "users, hosts and source addresses with the most flagged events"),
    ("attack-coverage", "MITRE ATT&CK techniques and tactics of the alerts that fired"),
    ("detection-latency", "event time to alert time: median, p95, p99, max (ms)"),
    ("dead-letters", "dead letters by stage and reason"),
    ("pattern", "alerts per hour"),
];

/// Bound parameters of a report.
#[derive(Debug, Clone)]
pub struct ReportParams {
    /// Empty: every tenant.
    pub tenant: String,
    /// Time range, seconds since the epoch, `[from, to)`.
    pub from: u32,
    pub to: u32,
    pub limit: u64,
}

impl ReportParams {
    /// Parameters from what a user types (CLI flags, URL query): a tenant (empty: all), a
    /// range either as `since` (humantime, e.g. `24h`, `7d`) ending at `to` or now, or as
    /// RFC 3339 `from` / `to`.
    pub fn parse(tenant: Option<&str>, since: Option<&str>, from: Option<&str>, to: Option<&str>, limit: Option<u64>) -> Result<Self, String> {
        let parse = |s: &str| -> Result<u32, String> {
            let t = chrono::DateTime::parse_from_rfc3339(s).map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))?;
            u32::try_from(t.timestamp()).map_err(|_| format!("{s:?} is out of range"))
        };
        let now = u32::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
        let to = to.map(parse).transpose()?.unwrap_or(now + 1);
        let from = match from {
            Some(from) => parse(from)?,
            None => {
                let since = humantime::parse_duration(since.unwrap_or("24h")).map_err(|e| format!("since: {e} (e.g. 24h, 7d)"))?;
                to.saturating_sub(u32::try_from(since.as_secs()).unwrap_or(u32::MAX))
            }
        };
        if from >= to {
            return Err("the range is empty (from must be before to)".into());
        }
        let limit = limit.unwrap_or(20);
        if limit == 0 || limit > 100_000 {
            return Err("limit must be within 1..=100000".into());
        }
        Ok(Self { tenant: tenant.unwrap_or_default().to_string(), from, to, limit })
    }
}

/// A report's result: named columns, rows of JSON values.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

fn sql(name: &str, db: &str) -> Option<String> {
    let range = "time >= ? AND time < ? AND (? = '' OR tenant = ?)";
    Some(match name {
        "threat-summary" => format!(
            "SELECT severity, rule_id, count() AS alerts FROM {db}.alerts FINAL ARRAY JOIN rule_ids AS rule_id \
             WHERE {range} GROUP BY severity, rule_id ORDER BY alerts DESC, severity, rule_id LIMIT ?"
        ),
        "top-entities" => {
            let part = |kind: &str, column: &str| {
                format!(
                    "SELECT '{kind}' AS kind, {column} AS entity, count() AS flagged_events, max(risk) AS max_risk FROM {db}.events FINAL \
                     WHERE {range} AND {column} != '' AND (notEmpty(match_rule_ids) OR notEmpty(correlation_rule_ids) OR risk >= 50) \
                     GROUP BY {column} ORDER BY flagged_events DESC, entity LIMIT ?"
                )
            };
            format!("SELECT * FROM ({} UNION ALL {} UNION ALL {}) ORDER BY kind, flagged_events DESC, entity", part("user", "user"), part("host", "host"), part("src_ip", "src_ip"))
        }
        "attack-coverage" => format!(
            "SELECT technique, count() AS alerts, uniqExact(rule) AS rules FROM \
             (SELECT attack_techniques, arrayJoin(if(empty(rule_ids), [''], rule_ids)) AS rule FROM {db}.alerts FINAL WHERE {range}) \
             ARRAY JOIN attack_techniques AS technique GROUP BY technique ORDER BY alerts DESC, technique LIMIT ?"
        ),
        "detection-latency" => format!(
            "SELECT count() AS alerts, round(quantileExact(0.5)(latency_ms), 1) AS p50_ms, round(quantileExact(0.95)(latency_ms), 1) AS p95_ms, \
             round(quantileExact(0.99)(latency_ms), 1) AS p99_ms, round(max(latency_ms), 1) AS max_ms FROM \
             (SELECT id, (any(alert_us) - min(event_us)) / 1000 AS latency_ms FROM \
              (SELECT id, time_us AS alert_us, arrayJoin(event_ids) AS event_id FROM {db}.alerts FINAL WHERE {range}) \
              ANY INNER JOIN (SELECT id AS event_id, time_us AS event_us FROM {db}.events FINAL \
              WHERE time >= toDateTime(? - 86400) AND time < ? AND (? = '' OR tenant = ?)) USING event_id GROUP BY id)"
        ),
        "dead-letters" => format!(
            "SELECT stage, reason_code, count() AS dead_letters FROM {db}.dead_letters FINAL \
             WHERE time >= ? AND time < ? GROUP BY stage, reason_code ORDER BY dead_letters DESC, stage, reason_code LIMIT ?"
        ),
        "pattern" => format!(
            "SELECT toStartOfHour(time) AS hour, count() AS alerts FROM {db}.alerts FINAL WHERE {range} GROUP BY hour ORDER BY hour LIMIT ?"
        ),
        _ => return None,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("no report `{name}`; reports: {known}", known = REPORTS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "))]
    Unknown { name: String },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("unreadable answer from ClickHouse: {0}")]
    Answer(String),
}

/// Runs report `name`.
pub async fn run(config: &ClickHouseConfig, name: &str, params: &ReportParams) -> Result<Table, ReportError> {
    let db = &config.database;
    if !valid_identifier(db) {
        return Err(DbError::BadName(db.clone()).into());
    }
    let sql = sql(name, db).ok_or_else(|| ReportError::Unknown { name: name.to_string() })?;
    let mut query = config.client().query(&sql);
    let binds_range = |q: clickhouse::query::Query| q.bind(params.from).bind(params.to).bind(params.tenant.as_str()).bind(params.tenant.as_str());
    query = match name {
        // Three unions, each with the range and a limit.
        "top-entities" => {
            let mut q = query;
            for _ in 0..3 {
                q = binds_range(q).bind(params.limit);
            }
            q
        }
        // Dead letters carry no tenant; the tenant parameter is accepted and ignored.
        "dead-letters" => query.bind(params.from).bind(params.to).bind(params.limit),
        // Alerts in the range, joined with their events of up to a day before it.
        "detection-latency" => binds_range(binds_range(query)),
        // Every hour of the range, whatever the row limit.
        "pattern" => binds_range(query).bind(u64::from((params.to - params.from) / 3600 + 1)),
        _ => binds_range(query).bind(params.limit),
    };
    let err = |source| ReportError::Db(DbError::Query { url: config.url.clone(), source });
    // JSONCompact: column names in `meta`, rows as arrays in `data` (order kept).
    let bytes = query.fetch_bytes("JSONCompact").map_err(err)?.collect().await.map_err(err)?;
    let answer: Value = serde_json::from_slice(&bytes).map_err(|e| ReportError::Answer(e.to_string()))?;
    let columns = answer["meta"].as_array().map(|m| m.iter().filter_map(|c| c["name"].as_str().map(str::to_string)).collect()).unwrap_or_default();
    let rows = answer["data"].as_array().map(|d| d.iter().filter_map(|r| r.as_array().cloned()).collect()).unwrap_or_default();
    Ok(Table { columns, rows })
}

fn cell(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

impl Table {
    /// Aligned columns for a terminal.
    pub fn to_text(&self) -> String {
        if self.columns.is_empty() {
            return "(no rows)\n".into();
        }
        let cells: Vec<Vec<String>> = self.rows.iter().map(|r| r.iter().map(cell).collect()).collect();
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| cells.iter().map(|r| r[i].chars().count()).chain([c.len()]).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        let line = |values: Vec<&str>, out: &mut String| {
            let padded: Vec<String> = values.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect();
            let _ = writeln!(out, "{}", padded.join("  ").trim_end());
        };
        line(self.columns.iter().map(String::as_str).collect(), &mut out);
        line(widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().iter().map(String::as_str).collect(), &mut out);
        for row in &cells {
            line(row.iter().map(String::as_str).collect(), &mut out);
        }
        out
    }

    /// RFC 4180 CSV with a header row.
    pub fn to_csv(&self) -> String {
        let quote = |s: &str| if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() };
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.columns.iter().map(|c| quote(c)).collect::<Vec<_>>().join(","));
        for row in &self.rows {
            let _ = writeln!(out, "{}", row.iter().map(|v| quote(&cell(v))).collect::<Vec<_>>().join(","));
        }
        out
    }

    /// A JSON array of objects.
    pub fn to_json(&self) -> Value {
        Value::Array(self.rows.iter().map(|row| Value::Object(self.columns.iter().cloned().zip(row.iter().cloned()).collect())).collect())
    }
}
