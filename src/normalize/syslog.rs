//! Syslog: RFC 5424 (`<PRI>1 TIMESTAMP HOST APP PROCID MSGID [SD] MSG`) and RFC 3164 / BSD
//! (`<PRI>Mmm dd hh:mm:ss HOST TAG[PID]: MSG`).
//!
//! A message body that carries CEF is parsed as CEF, with syslog's host and time filling
//! what CEF left empty. OpenSSH login lines become authentication events, since they are the
//! most common security signal in plain syslog.

use super::{cef, fields, time, NormalizeError, Parsed};
use crate::event::{Event, EventClass};

const SEVERITY_NAMES: [&str; 8] = ["emergency", "alert", "critical", "error", "warning", "notice", "informational", "debug"];

/// Splits `<PRI>` off; returns (facility, severity, rest).
fn split_pri(text: &str) -> Result<(u8, u8, &str), NormalizeError> {
    let rest = text.strip_prefix('<').ok_or_else(|| NormalizeError::BadSyslog("missing `<PRI>`".into()))?;
    let end = rest.find('>').filter(|&e| e <= 3).ok_or_else(|| NormalizeError::BadSyslog("unterminated `<PRI>`".into()))?;
    let pri: u8 = rest[..end]
        .parse()
        .ok()
        .filter(|p| *p <= 191)
        .ok_or_else(|| NormalizeError::BadSyslog(format!("PRI `{}` is not 0-191", fields::preview(&rest[..end], 8))))?;
    Ok((pri / 8, pri % 8, &rest[end + 1..]))
}

fn nil(token: &str) -> Option<String> {
    (token != "-" && !token.is_empty()).then(|| token.to_string())
}

/// `sd.<id>.<name>` → value pairs of RFC 5424 structured data.
type StructuredData = Vec<(String, String)>;

/// Structured data: `[id k="v" k2="v2"][id2 ...]` or `-`. Returns (pairs, rest).
fn split_structured_data(text: &str) -> Result<(StructuredData, &str), NormalizeError> {
    if let Some(rest) = text.strip_prefix('-') {
        return Ok((Vec::new(), rest.strip_prefix(' ').unwrap_or(rest)));
    }
    let mut pairs = Vec::new();
    let mut rest = text;
    while let Some(body) = rest.strip_prefix('[') {
        // Find the closing `]` that is not inside a quoted value.
        let mut in_quotes = false;
        let mut escaped = false;
        let mut close = None;
        for (i, c) in body.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_quotes = !in_quotes,
                ']' if !in_quotes => {
                    close = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let close = close.ok_or_else(|| NormalizeError::BadSyslog("unterminated structured data".into()))?;
        let element = &body[..close];
        let (id, params) = element.split_once(' ').unwrap_or((element, ""));
        let mut remaining = params.trim();
        while let Some(eq) = remaining.find("=\"") {
            let name = remaining[..eq].trim();
            let after = &remaining[eq + 2..];
            let mut end = None;
            let mut esc = false;
            for (i, c) in after.char_indices() {
                match c {
                    _ if esc => esc = false,
                    '\\' => esc = true,
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end.ok_or_else(|| NormalizeError::BadSyslog("unterminated structured data value".into()))?;
            pairs.push((format!("sd.{id}.{name}"), after[..end].replace("\\\"", "\"").replace("\\]", "]")));
            remaining = after[end + 1..].trim_start();
        }
        rest = &body[close + 1..];
    }
    Ok((pairs, rest.strip_prefix(' ').unwrap_or(rest)))
}

/// Parses any syslog message; `now_us` resolves BSD's missing year.
pub(super) fn map(text: &str, now_us: i64, event: &mut Event) -> Result<Parsed, NormalizeError> {
    let (facility, severity, rest) = if text.starts_with('<') { split_pri(text)? } else { (1, 5, text) };
    event.severity = Some(SEVERITY_NAMES[usize::from(severity)].to_string());
    event.attrs.insert("syslog.facility".into(), facility.to_string());

    let (mut parsed, app, message) = if let Some(body) = rest.strip_prefix("1 ") {
        let mut parts = body.splitn(6, ' ');
        let mut next = |what: &str| parts.next().ok_or_else(|| NormalizeError::BadSyslog(format!("RFC 5424 message ends before {what}")));
        let timestamp = next("TIMESTAMP")?;
        let host = next("HOSTNAME")?;
        let app = next("APP-NAME")?;
        let procid = next("PROCID")?;
        let msgid = next("MSGID")?;
        let remainder = parts.next().unwrap_or("-");
        let (sd, message) = split_structured_data(remainder)?;
        let mut parsed = Parsed { format: "syslog5424", ..Parsed::default() };
        parsed.time_text = nil(timestamp);
        event.host = nil(host);
        if let Some(pid) = nil(procid).and_then(|p| p.parse::<i64>().ok()) {
            event.process.get_or_insert_with(Default::default).pid = Some(pid);
        }
        if let Some(msgid) = nil(msgid) {
            event.attrs.insert("syslog.msgid".into(), msgid);
        }
        for (key, value) in sd.into_iter().take(super::json::MAX_ATTRS) {
            if key.ends_with(".tenant") {
                parsed.tenant = Some(value.clone());
            }
            event.attrs.insert(key, value);
        }
        (parsed, nil(app), message.trim_start_matches('\u{feff}').to_string())
    } else {
        // BSD: `Mmm dd hh:mm:ss` is 15 characters ("Oct  1 22:14:15").
        let stamp = rest.get(..15).ok_or_else(|| NormalizeError::BadSyslog("too short for a BSD timestamp".into()))?;
        let time_us = time::parse_bsd(stamp, now_us).ok_or_else(|| {
            NormalizeError::BadSyslog(format!("`{}` is not a BSD timestamp (Mmm dd hh:mm:ss)", fields::preview(stamp, 20)))
        })?;
        let mut parsed = Parsed { format: "syslog3164", time_us: Some(time_us), ..Parsed::default() };
        let after = rest[15..].trim_start();
        let (host, tail) = after.split_once(' ').unwrap_or((after, ""));
        let (host, tail) = if host.ends_with(':') { (None, after) } else { (Some(host.to_string()), tail) };
        event.host = host;
        let (tag, message) = match tail.split_once(": ") {
            Some((tag, msg)) if !tag.contains(' ') && !tag.is_empty() => (Some(tag), msg),
            _ => (None, tail),
        };
        let app = tag.map(|t| {
            if let Some((name, pid)) = t.split_once('[') {
                if let Ok(pid) = pid.trim_end_matches(']').parse::<i64>() {
                    event.process.get_or_insert_with(Default::default).pid = Some(pid);
                }
                name.to_string()
            } else {
                t.to_string()
            }
        });
        parsed.format = "syslog3164";
        (parsed, app, message.to_string())
    };

    if let Some(start) = message.find("CEF:") {
        let host = event.host.take();
        let cef_parsed = cef::map(&message[start..], event)?;
        event.host = event.host.take().or(host);
        parsed.id = cef_parsed.id;
        parsed.time_text = cef_parsed.time_text.or(parsed.time_text);
        parsed.tenant = cef_parsed.tenant.or(parsed.tenant);
        parsed.class_known = cef_parsed.class_known;
        event.attrs.insert("syslog.format".into(), parsed.format.into());
        parsed.format = "cef";
        return Ok(parsed);
    }

    if let Some(app) = &app {
        event.process.get_or_insert_with(Default::default).name = Some(app.clone());
        if app == "sshd" {
            map_sshd(&message, event, &mut parsed);
        }
    }
    event.message = Some(message).filter(|m| !m.is_empty());
    Ok(parsed)
}

/// `Failed password for [invalid user ]NAME from IP port N ssh2` / `Accepted publickey for NAME from IP port N ssh2`.
fn map_sshd(message: &str, event: &mut Event, parsed: &mut Parsed) {
    let (outcome, rest) = if let Some(rest) = message.strip_prefix("Failed ") {
        ("failure", rest)
    } else if let Some(rest) = message.strip_prefix("Accepted ") {
        ("success", rest)
    } else {
        return;
    };
    let Some((_, after_for)) = rest.split_once(" for ") else { return };
    let after_for = after_for.strip_prefix("invalid user ").unwrap_or(after_for);
    let Some((user, after_from)) = after_for.split_once(" from ") else { return };
    let mut words = after_from.split(' ');
    let ip = words.next().map(str::to_string);
    let port = match (words.next(), words.next()) {
        (Some("port"), Some(p)) => p.parse::<i64>().ok(),
        _ => None,
    };
    if fields::set_endpoint(&mut event.src, "src", ip, port, None).is_err() {
        return;
    }
    event.class = EventClass::Authentication;
    parsed.class_known = true;
    event.outcome = Some(outcome.into());
    event.action = Some("logon".into());
    event.actor = Some(crate::event::Actor { user: Some(user.to_string()), ..Default::default() });
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_736_676_000_000_000; // 2025-01-12T10:00:00Z

    #[test]
    fn parses_rfc5424_with_structured_data() {
        let mut event = Event::default();
        let text = r#"<165>1 2025-01-12T09:59:00.003Z web-1 nginx 4242 ID47 [meta tenant="acme" note="a \"q\""] GET /admin"#;
        let parsed = map(text, NOW, &mut event).unwrap();
        assert_eq!(parsed.format, "syslog5424");
        assert_eq!(parsed.time_text.as_deref(), Some("2025-01-12T09:59:00.003Z"));
        assert_eq!(parsed.tenant.as_deref(), Some("acme"));
        assert_eq!(event.host.as_deref(), Some("web-1"));
        assert_eq!(event.severity.as_deref(), Some("notice"));
        assert_eq!(event.process.as_ref().unwrap().pid, Some(4242));
        assert_eq!(event.attrs.get("sd.meta.note").map(String::as_str), Some("a \"q\""));
        assert_eq!(event.message.as_deref(), Some("GET /admin"));
    }

    #[test]
    fn parses_bsd_sshd_failure_as_authentication() {
        let mut event = Event::default();
        let text = "<38>Jan 12 09:58:01 bastion sshd[811]: Failed password for invalid user admin from 203.0.113.9 port 52113 ssh2";
        let parsed = map(text, NOW, &mut event).unwrap();
        assert_eq!(parsed.format, "syslog3164");
        assert_eq!(parsed.time_us, Some(NOW - 119_000_000));
        assert_eq!(event.class, EventClass::Authentication);
        assert_eq!(event.outcome.as_deref(), Some("failure"));
        assert_eq!(event.user(), Some("admin"));
        assert_eq!(event.src_ip(), Some("203.0.113.9"));
        assert_eq!(event.host.as_deref(), Some("bastion"));
    }

    #[test]
    fn cef_inside_syslog_is_parsed_as_cef() {
        let mut event = Event::default();
        let text = "<134>Jan 12 09:00:00 fw01 CEF:0|V|P|1|7|Port scan|9|src=198.51.100.7 dst=10.0.0.2";
        let parsed = map(text, NOW, &mut event).unwrap();
        assert_eq!(parsed.format, "cef");
        assert_eq!(event.host.as_deref(), Some("fw01"));
        assert_eq!(event.src_ip(), Some("198.51.100.7"));
    }

    #[test]
    fn rejects_bad_pri_and_truncated_headers() {
        for text in ["<999>1 x", "<12", "<1>1 2025-01-12T00:00:00Z", "<13>Jan 12"] {
            assert!(map(text, NOW, &mut Event::default()).is_err(), "{text}");
        }
    }
}
