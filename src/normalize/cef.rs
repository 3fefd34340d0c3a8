//! ArcSight Common Event Format: `CEF:Version|Vendor|Product|Version|SignatureID|Name|Severity|Extension`.
//!
//! Header fields escape `|` and `\` with a backslash; extension values escape `=` and `\`
//! and may contain spaces, so a value runs until the next ` key=`. A header with fewer
//! than seven fields is truncated input and is rejected.


use super::{fields, NormalizeError, Parsed};
use crate::event::{Event, EventClass};

/// Splits the seven header fields and returns them with the extension text.
fn split_header(text: &str) -> Result<(Vec<String>, &str), NormalizeError> {
    let body = text.strip_prefix("CEF:").ok_or_else(|| NormalizeError::BadCef("missing `CEF:` prefix".into()))?;
    let mut fields = Vec::with_capacity(7);
    let mut current = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, escaped)) => current.push(escaped),
                None => current.push('\\'),
            },
            '|' => {
                fields.push(std::mem::take(&mut current));
                if fields.len() == 7 {
                    return Ok((fields, &body[i + 1..]));
                }
            }
            other => current.push(other),
        }
    }
    Err(NormalizeError::BadCef(format!(
        "header has {} of 7 `|`-separated fields (truncated?)",
        fields.len()
    )))
}

/// Parses `key=value key2=value with spaces` extensions.
fn parse_extension(text: &str) -> crate::FastMap<String, String> {
    let mut out = crate::FastMap::default();
    let bytes = text.as_bytes();
    // Find every `key=` start: a run of [A-Za-z0-9_.\[\]] preceded by start or space and
    // followed by an unescaped `=`.
    let mut starts: Vec<(usize, usize)> = Vec::new(); // (key_start, eq_index)
    let mut i = 0;
    while i < bytes.len() {
        if i == 0 || bytes[i - 1] == b' ' {
            let mut j = i;
            while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || matches!(bytes[j], b'_' | b'.' | b'[' | b']' | b'-')) {
                j += 1;
            }
            if j > i && j < bytes.len() && bytes[j] == b'=' {
                starts.push((i, j));
                i = j + 1;
                continue;
            }
        }
        i += 1;
    }
    for (n, &(key_start, eq)) in starts.iter().enumerate() {
        let value_end = starts.get(n + 1).map(|&(next, _)| next).unwrap_or(bytes.len());
        let raw_value = text[eq + 1..value_end].trim_end();
        let value = unescape_value(raw_value);
        out.insert(text[key_start..eq].to_string(), value);
    }
    out
}

fn unescape_value(raw: &str) -> String {
    if !raw.contains('\\') {
        return raw.to_string();
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn severity_name(raw: &str) -> String {
    match raw.trim().parse::<u8>() {
        Ok(0..=3) => "low".into(),
        Ok(4..=6) => "medium".into(),
        Ok(7..=8) => "high".into(),
        Ok(9..=10) => "critical".into(),
        _ => raw.trim().to_ascii_lowercase(),
    }
}

/// Maps a CEF message onto `event`.
pub(super) fn map(text: &str, event: &mut Event) -> Result<Parsed, NormalizeError> {
    let (header, extension) = split_header(text.trim())?;
    let mut ext = parse_extension(extension);
    let mut parsed = Parsed { format: "cef", ..Parsed::default() };
    let mut take = |key: &str| ext.remove(key).filter(|v| !v.is_empty());

    event.source.vendor = Some(header[1].clone()).filter(|v| !v.is_empty());
    event.source.product = Some(header[2].clone()).filter(|v| !v.is_empty());
    event.severity = Some(severity_name(&header[6]));
    parsed.id = take("externalId").or_else(|| take("eventId"));
    parsed.time_text = take("rt").or_else(|| take("end")).or_else(|| take("start"));
    parsed.tenant = take("deviceCustomString6Tenant").or_else(|| take("tenant"));
    event.message = take("msg").or_else(|| Some(header[5].clone()).filter(|v| !v.is_empty()));
    event.action = take("act");
    event.outcome = take("outcome").map(|o| fields::canonical_outcome(&o));
    event.host = take("dvchost").or_else(|| take("dvc"));

    let user = take("suser").or_else(|| take("duser"));
    if user.is_some() {
        event.actor = Some(crate::event::Actor { user, ..Default::default() });
    }
    let port = |v: Option<String>, name: &'static str| -> Result<Option<i64>, NormalizeError> {
        v.map(|p| p.trim().parse::<i64>().map_err(|_| NormalizeError::invalid_field(name, &p, "not an integer")))
            .transpose()
    };
    let (src, spt, shost) = (take("src").or_else(|| take("c6a2")), take("spt"), take("shost"));
    fields::set_endpoint(&mut event.src, "src", src, port(spt, "spt")?, shost)?;
    let (dst, dpt, dhost) = (take("dst").or_else(|| take("c6a3")), take("dpt"), take("dhost"));
    fields::set_endpoint(&mut event.dst, "dst", dst, port(dpt, "dpt")?, dhost)?;

    let url = take("request");
    let method = take("requestMethod");
    let agent = take("requestClientApplication");
    if url.is_some() || method.is_some() {
        event.http = Some(crate::event::Http { url, method, user_agent: agent, ..Default::default() });
    }
    let process_name = take("sproc").or_else(|| take("dproc"));
    let command_line = take("sourceProcessCommandLine").or_else(|| take("destinationProcessCommandLine"));
    if process_name.is_some() || command_line.is_some() {
        event.process = Some(crate::event::Process { name: process_name, command_line, ..Default::default() });
    }
    let fname = take("fname");
    let fpath = take("filePath");
    let hash = take("fileHash");
    if fname.is_some() || fpath.is_some() || hash.is_some() {
        let mut file = crate::event::File { name: fname, path: fpath, ..Default::default() };
        if let Some(h) = hash {
            match h.len() {
                32 => file.md5 = Some(h),
                40 => file.sha1 = Some(h),
                _ => file.sha256 = Some(h),
            }
        }
        event.file = Some(file);
    }
    if let Some(category) = take("cat") {
        if let Some(class) = EventClass::from_name(&category) {
            event.class = class;
            parsed.class_known = true;
        }
        event.attrs.insert("cat".into(), category);
    }

    event.attrs.insert("cef.signature_id".into(), header[4].clone());
    event.attrs.insert("cef.name".into(), header[5].clone());
    event.attrs.insert("cef.device_version".into(), header[3].clone());
    // Custom strings carry their label: cs1Label=Policy cs1=Default → attrs["Policy"]; a
    // custom string labelled Tenant names the tenant.
    let labels: Vec<(String, String)> = ext
        .iter()
        .filter(|(k, _)| k.ends_with("Label"))
        .map(|(k, v)| (k.trim_end_matches("Label").to_string(), v.clone()))
        .collect();
    for (slot, label) in labels {
        if let Some(value) = ext.remove(&slot) {
            ext.remove(&format!("{slot}Label"));
            // Firewalls that serve several tenants label a custom string with the tenant.
            if parsed.tenant.is_none() && label.eq_ignore_ascii_case("tenant") && !value.is_empty() {
                parsed.tenant = Some(value);
                continue;
            }
            event.attrs.insert(label, value);
        }
    }
    for (key, value) in ext.into_iter().take(super::json::MAX_ATTRS) {
        event.attrs.insert(key, fields::truncate(value, super::json::MAX_ATTR_VALUE_BYTES));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_header_escapes_and_spaced_extension_values() {
        let mut event = Event::default();
        let text = r"CEF:0|Sec\|Co|Fire wall|1.0|100|Blocked conn|8|src=10.0.0.1 spt=4444 dst=8.8.8.8 dpt=53 suser=bob msg=hello world a\=b cs1Label=Policy cs1=Default Deny act=blocked";
        let parsed = map(text, &mut event).unwrap();
        assert_eq!(parsed.format, "cef");
        assert_eq!(event.source.vendor.as_deref(), Some("Sec|Co"));
        assert_eq!(event.source.product.as_deref(), Some("Fire wall"));
        assert_eq!(event.severity.as_deref(), Some("high"));
        assert_eq!(event.src_ip(), Some("10.0.0.1"));
        assert_eq!(event.src.as_ref().unwrap().port, Some(4444));
        assert_eq!(event.dst.as_ref().unwrap().port, Some(53));
        assert_eq!(event.user(), Some("bob"));
        assert_eq!(event.message.as_deref(), Some("hello world a=b"));
        assert_eq!(event.attrs.get("Policy").map(String::as_str), Some("Default Deny"));
        assert_eq!(event.action.as_deref(), Some("blocked"));
    }

    #[test]
    fn a_custom_string_labelled_tenant_names_the_tenant() {
        let mut event = Event::default();
        let parsed = map("CEF:0|PAN|PAN-OS|11.1|TRAFFIC|denied|6|src=1.2.3.4 cs1Label=Tenant cs1=globex cs2Label=Zone cs2=dmz", &mut event).unwrap();
        assert_eq!(parsed.tenant.as_deref(), Some("globex"));
        assert!(!event.attrs.contains_key("Tenant"));
        assert_eq!(event.attrs.get("Zone").map(String::as_str), Some("dmz"));
    }

    #[test]
    fn truncated_header_is_rejected() {
        let err = map("CEF:0|Vendor|Product|1.0", &mut Event::default()).unwrap_err();
        assert!(err.to_string().contains("3 of 7"), "{err}");
    }
}
