//! Alerts in the shapes SIEMs read: ArcSight CEF, QRadar LEEF 2.0, RFC 5424 syslog framing,
//! Elastic Common Schema documents (Elastic Security's alert fields), Splunk HEC events and
//! templated webhook bodies. Pure functions of an [`Alert`], so every escaping rule is
//! tested field by field without a network.

use crate::event::{Alert, Severity};

pub const VENDOR: &str = "threatpipe";
pub const PRODUCT: &str = "threatpipe";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// CEF severity (0-10) and LEEF/ECS numbers for a severity.
pub fn severity_number(severity: Severity) -> u8 {
    match severity {
        Severity::Informational => 1,
        Severity::Low => 3,
        Severity::Medium => 5,
        Severity::High => 8,
        Severity::Critical => 10,
    }
}

pub fn severity_name(severity: Severity) -> &'static str {
    match severity {
        Severity::Informational => "informational",
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
        Severity::Critical => "critical",
    }
}

fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us).map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()).unwrap_or_default()
}

/// The rule an alert is about (its first rule id), for Event Class ID / EventID fields.
fn primary_rule(alert: &Alert) -> &str {
    alert.rule_ids.first().map(String::as_str).unwrap_or("threatpipe")
}

/// CEF header field: `\` and `|` escaped; line breaks are not allowed there (become spaces).
pub fn cef_header(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// CEF extension value: `\`, `=` escaped, CR and LF as `\r` and `\n`.
pub fn cef_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// `CEF:0|threatpipe|threatpipe|VERSION|rule|title|severity|extension` (ArcSight CEF 25).
pub fn cef(alert: &Alert) -> String {
    let mut ext: Vec<(&str, String)> = vec![
        ("rt", (alert.time_us / 1000).to_string()),
        ("externalId", alert.id.clone()),
        ("cnt", alert.count.to_string()),
        ("cs1Label", "tenant".into()),
        ("cs1", alert.tenant.clone()),
        ("cs2Label", "entity".into()),
        ("cs2", alert.entity.clone()),
        ("cs3Label", "rules".into()),
        ("cs3", alert.rule_ids.join(",")),
        ("cs4Label", "attackTechniques".into()),
        ("cs4", alert.attack_techniques.join(",")),
        ("cs5Label", "attackTactics".into()),
        ("cs5", alert.attack_tactics.join(",")),
    ];
    if let Some(risk) = alert.risk {
        ext.push(("cfp1Label", "risk".into()));
        ext.push(("cfp1", format!("{risk:.1}")));
    }
    if let Some(summary) = &alert.summary {
        ext.push(("msg", summary.clone()));
    }
    let extension: Vec<String> = ext.into_iter().map(|(k, v)| format!("{k}={}", cef_value(&v))).collect();
    format!(
        "CEF:0|{}|{}|{}|{}|{}|{}|{}",
        cef_header(VENDOR),
        cef_header(PRODUCT),
        cef_header(VERSION),
        cef_header(primary_rule(alert)),
        cef_header(&alert.title),
        severity_number(alert.severity),
        extension.join(" ")
    )
}

/// LEEF header field: `\` and `|` escaped (LEEF 2.0), line breaks become spaces.
pub fn leef_header(value: &str) -> String {
    cef_header(value)
}

/// LEEF attribute value: the delimiter, `\`, CR and LF escaped with a backslash, so a value
/// never splits an attribute or a record.
pub fn leef_value(value: &str, delimiter: char) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' if delimiter == '\t' => out.push_str("\\t"),
            c if c == delimiter => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// `LEEF:2.0|threatpipe|threatpipe|VERSION|rule|<delimiter>|attributes` (IBM LEEF 2.0).
/// The delimiter field is written as `x09` for a tab, else as the character.
pub fn leef(alert: &Alert, delimiter: char) -> String {
    let mut attrs: Vec<(&str, String)> = vec![
        ("devTime", rfc3339(alert.time_us)),
        ("devTimeFormat", "yyyy-MM-dd'T'HH:mm:ss.SSSSSSX".into()),
        ("sev", severity_number(alert.severity).to_string()),
        ("cat", alert.attack_tactics.first().cloned().unwrap_or_else(|| "alert".into())),
        ("name", alert.title.clone()),
        ("alertId", alert.id.clone()),
        ("tenant", alert.tenant.clone()),
        ("entity", alert.entity.clone()),
        ("count", alert.count.to_string()),
        ("rules", alert.rule_ids.join(",")),
        ("techniques", alert.attack_techniques.join(",")),
    ];
    if let Some(risk) = alert.risk {
        attrs.push(("risk", format!("{risk:.1}")));
    }
    if let Some(summary) = &alert.summary {
        attrs.push(("msg", summary.clone()));
    }
    let delimiter_field = if delimiter == '\t' { "x09".to_string() } else { delimiter.to_string() };
    let body: Vec<String> = attrs.into_iter().map(|(k, v)| format!("{k}={}", leef_value(&v, delimiter))).collect();
    format!(
        "LEEF:2.0|{}|{}|{}|{}|{}|{}",
        leef_header(VENDOR),
        leef_header(PRODUCT),
        leef_header(VERSION),
        leef_header(primary_rule(alert)),
        delimiter_field,
        body.join(&delimiter.to_string())
    )
}

/// RFC 5424 header fields are printable US-ASCII without spaces, at most `max` long; `-`
/// when empty.
fn syslog_token(value: &str, max: usize) -> String {
    let cleaned: String = value.chars().filter(|c| c.is_ascii_graphic()).take(max).collect();
    if cleaned.is_empty() { "-".into() } else { cleaned }
}

/// SD-PARAM value: `"`, `\` and `]` escaped (RFC 5424 §6.3.3).
pub fn sd_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One RFC 5424 message: `<PRI>1 TIMESTAMP HOST APP PROCID MSGID [threatpipe@32473 ...] MSG`.
/// The structured data carries the alert id, tenant and severity so a receiver can route
/// without parsing the payload.
pub fn syslog_5424(alert: &Alert, facility: u8, hostname: &str, app_name: &str, payload: &str) -> String {
    let level = match alert.severity {
        Severity::Critical => 2,
        Severity::High => 3,
        Severity::Medium => 4,
        Severity::Low => 5,
        Severity::Informational => 6,
    };
    let pri = u16::from(facility.min(23)) * 8 + level;
    let sd = format!(
        "[threatpipe@32473 alertId=\"{}\" tenant=\"{}\" severity=\"{}\"]",
        sd_value(&alert.id),
        sd_value(&alert.tenant),
        severity_name(alert.severity)
    );
    format!(
        "<{pri}>1 {} {} {} {} {} {sd} {payload}",
        rfc3339(alert.time_us),
        syslog_token(hostname, 255),
        syslog_token(app_name, 48),
        std::process::id(),
        syslog_token("alert", 32),
    )
}

/// Octet-counting framing for syslog over TCP/TLS (RFC 6587 §3.4.1, RFC 5425).
pub fn octet_counted(message: &str) -> Vec<u8> {
    let mut framed = format!("{} ", message.len()).into_bytes();
    framed.extend_from_slice(message.as_bytes());
    framed
}

/// The alert as an Elastic Common Schema document, with Elastic Security's `kibana.alert.*`
/// fields so its alert views and rules can read it.
pub fn ecs(alert: &Alert) -> serde_json::Value {
    let timestamp = rfc3339(alert.time_us);
    serde_json::json!({
        "@timestamp": timestamp,
        "message": alert.summary.clone().unwrap_or_else(|| alert.title.clone()),
        "ecs": {"version": "8.11.0"},
        "event": {
            "kind": "alert",
            "category": ["intrusion_detection"],
            "type": ["indicator"],
            "id": alert.id,
            "severity": severity_number(alert.severity),
            "risk_score": alert.risk,
            "created": timestamp,
            "end": rfc3339(alert.last_seen_us),
            "module": "threatpipe",
            "dataset": "threatpipe.alerts",
        },
        "rule": {"id": primary_rule(alert), "name": alert.title, "ruleset": "threatpipe"},
        "threat": {
            "framework": "MITRE ATT&CK",
            "tactic": {"name": alert.attack_tactics},
            "technique": {"id": alert.attack_techniques},
        },
        "organization": {"id": alert.tenant},
        "kibana.alert.uuid": alert.id,
        "kibana.alert.rule.name": alert.title,
        "kibana.alert.rule.rule_id": primary_rule(alert),
        "kibana.alert.severity": severity_name(alert.severity),
        "kibana.alert.risk_score": alert.risk.unwrap_or(f64::from(severity_number(alert.severity)) * 10.0),
        "kibana.alert.status": "active",
        "kibana.alert.workflow_status": "open",
        "kibana.alert.original_time": rfc3339(alert.last_seen_us),
        "threatpipe": {
            "entity": alert.entity,
            "count": alert.count,
            "rule_ids": alert.rule_ids,
            "event_ids": alert.event_ids,
        },
    })
}

/// One Splunk HEC event (`/services/collector/event`).
pub fn hec_event(alert: &Alert, host: &str, sourcetype: &str, index: Option<&str>, source: &str) -> serde_json::Value {
    let mut event = serde_json::json!({
        "time": alert.time_us as f64 / 1_000_000.0,
        "host": host,
        "source": source,
        "sourcetype": sourcetype,
        "event": alert,
        "fields": {"tenant": alert.tenant, "severity": severity_name(alert.severity)},
    });
    if let Some(index) = index {
        event["index"] = index.into();
    }
    event
}

/// Renders a webhook body template: `{{field}}` becomes the alert's field, JSON-escaped
/// (without quotes, so templates put it inside their own string literals); `{{alert}}` is
/// the whole alert as JSON. Unknown placeholders are an error, so a typo is found when the
/// connector starts, not by the receiver.
pub fn render_template(template: &str, alert: &Alert) -> Result<String, String> {
    let value = serde_json::to_value(alert).map_err(|e| e.to_string())?;
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| format!("unclosed {{{{ at byte {}", template.len() - rest.len() + start))?;
        let name = after[..end].trim();
        let replacement = match name {
            "alert" => value.to_string(),
            "severity_number" => severity_number(alert.severity).to_string(),
            "time" => rfc3339(alert.time_us),
            _ => match value.get(name) {
                Some(serde_json::Value::String(s)) => {
                    let quoted = serde_json::Value::String(s.clone()).to_string();
                    quoted[1..quoted.len() - 1].to_string()
                }
                Some(serde_json::Value::Array(items)) => {
                    let joined = items.iter().map(|i| i.as_str().map(String::from).unwrap_or_else(|| i.to_string())).collect::<Vec<_>>().join(", ");
                    let quoted = serde_json::Value::String(joined).to_string();
                    quoted[1..quoted.len() - 1].to_string()
                }
                Some(serde_json::Value::Null) => String::new(),
                Some(other) => other.to_string(),
                None => return Err(format!("unknown placeholder {{{{{name}}}}} (alert fields, `alert`, `time`, `severity_number`)")),
            },
        };
        out.push_str(&replacement);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> Alert {
        Alert {
            id: "alert-1".into(),
            tenant: "acme".into(),
            time_us: 1_764_000_000_123_456,
            last_seen_us: 1_764_000_000_000_000,
            severity: Severity::High,
            title: "Encoded | PowerShell \\ download".into(),
            rule_ids: vec!["r-ps".into(), "risk".into()],
            entity: "acme|ws-1".into(),
            risk: Some(87.5),
            count: 3,
            attack_tactics: vec!["execution".into()],
            attack_techniques: vec!["T1059.001".into()],
            event_ids: vec!["e1".into()],
            summary: Some("cmd=a=b\\c\nnext line\rcr\t\"q\"".into()),
        }
    }

    #[test]
    fn cef_escapes_header_and_extension_per_the_spec() {
        assert_eq!(cef_header("a|b\\c\nd"), "a\\|b\\\\c d");
        assert_eq!(cef_value("a=b\\c\nd\re|f"), "a\\=b\\\\c\\nd\\re|f");
        let line = cef(&alert());
        assert!(line.starts_with("CEF:0|threatpipe|threatpipe|"), "{line}");
        let header: Vec<&str> = split_unescaped(&line, '|', 8);
        assert_eq!(header.len(), 8, "{line}");
        assert_eq!(header[4], "r-ps");
        assert_eq!(header[5], "Encoded \\| PowerShell \\\\ download");
        assert_eq!(header[6], "8");
        let ext = header[7];
        assert!(ext.starts_with("rt=1764000000123 externalId=alert-1 cnt=3 cs1Label=tenant cs1=acme"), "{ext}");
        assert!(ext.contains("cfp1=87.5"));
        assert!(ext.ends_with("msg=cmd\\=a\\=b\\\\c\\nnext line\\rcr\t\"q\""), "{ext}");
        assert!(!line.contains('\n') && !line.contains('\r'));
    }

    /// Splits on `sep` not preceded by a backslash escape, into at most `fields` parts.
    fn split_unescaped(s: &str, sep: char, fields: usize) -> Vec<&str> {
        let mut parts = Vec::new();
        let (mut start, mut escaped) = (0, false);
        for (i, c) in s.char_indices() {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == sep && parts.len() < fields - 1 {
                parts.push(&s[start..i]);
                start = i + 1;
            }
        }
        parts.push(&s[start..]);
        parts
    }

    #[test]
    fn leef_escapes_values_and_names_the_delimiter() {
        assert_eq!(leef_value("a\tb", '\t'), "a\\tb");
        assert_eq!(leef_value("a^b\\c\nd", '^'), "a\\^b\\\\c\\nd");
        let line = leef(&alert(), '\t');
        let fields: Vec<&str> = split_unescaped(&line, '|', 7);
        assert_eq!(&fields[..5], ["LEEF:2.0", "threatpipe", "threatpipe", VERSION, "r-ps"]);
        assert_eq!(fields[5], "x09");
        let attrs: Vec<&str> = fields[6].split('\t').collect();
        assert_eq!(attrs[0], "devTime=2025-11-24T16:00:00.123456Z");
        assert!(attrs.contains(&"sev=8"));
        assert!(attrs.contains(&"name=Encoded | PowerShell \\\\ download"), "{attrs:?}");
        // The summary's tab is escaped, so it is one attribute.
        assert_eq!(*attrs.last().unwrap(), "msg=cmd=a=b\\\\c\\nnext line\\rcr\\t\"q\"");
        let caret = leef(&alert(), '^');
        assert!(caret.contains("|^|devTime="));
    }

    #[test]
    fn syslog_5424_header_structured_data_and_framing() {
        let message = syslog_5424(&alert(), 10, "sensor 1", "threatpipe", "payload");
        // facility 10 (authpriv) * 8 + error (3) for high
        assert!(message.starts_with("<83>1 2025-11-24T16:00:00.123456Z sensor1 threatpipe "), "{message}");
        assert!(message.contains(" alert [threatpipe@32473 alertId=\"alert-1\" tenant=\"acme\" severity=\"high\"] payload"));
        assert_eq!(sd_value("a\"b\\c]d"), "a\\\"b\\\\c\\]d");
        assert_eq!(octet_counted("héllo"), b"6 h\xc3\xa9llo");
    }

    #[test]
    fn ecs_and_hec_shapes() {
        let doc = ecs(&alert());
        assert_eq!(doc["event"]["kind"], "alert");
        assert_eq!(doc["kibana.alert.severity"], "high");
        assert_eq!(doc["threat"]["technique"]["id"][0], "T1059.001");
        assert_eq!(doc["@timestamp"], "2025-11-24T16:00:00.123456Z");
        let hec = hec_event(&alert(), "tp-1", "threatpipe:alert", Some("security"), "threatpipe");
        assert_eq!(hec["index"], "security");
        assert_eq!(hec["event"]["id"], "alert-1");
        assert_eq!(hec["time"].as_f64().unwrap(), 1_764_000_000.123456);
    }

    #[test]
    fn templates_substitute_escaped_fields() {
        let body = render_template(r#"{"text":"[{{severity}}] {{title}} on {{entity}} x{{count}}: {{summary}}"}"#, &alert()).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed["text"], "[high] Encoded | PowerShell \\ download on acme|ws-1 x3: cmd=a=b\\c\nnext line\rcr\t\"q\"");
        assert!(render_template("{{nope}}", &alert()).unwrap_err().contains("unknown placeholder"));
        assert!(render_template("{{alert}}", &alert()).unwrap().starts_with('{'));
    }
}
