//! ArcSight Common Event Format: `CEF:Version|Vendor|Product|Version|SignatureID|Name|Severity|Extension`.
//!
//! Header fields escape `|` and `\` with a backslash; extension values escape `=` and `\`
//! and may contain spaces, so a value runs until the next ` key=`. A header with fewer
//! than seven fields is truncated input and is rejected.

use std::borrow::Cow;

use super::{fields, NormalizeError, Parsed};
use crate::event::{Event, EventClass};

/// Splits the seven header fields and returns them with the extension text. A field
/// without escapes is a slice of `text`.
fn split_header(text: &str) -> Result<(Vec<Cow<'_, str>>, &str), NormalizeError> {
    let body = text.strip_prefix("CEF:").ok_or_else(|| NormalizeError::BadCef("missing `CEF:` prefix".into()))?;
    let bytes = body.as_bytes();
    let mut fields = Vec::with_capacity(7);
    let (mut start, mut escaped, mut i) = (0, false, 0);
    // Byte by byte: `|` and `\` are ASCII, never part of a multi-byte character.
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => {
                escaped = true;
                i += 1;
            }
            b'|' => {
                let raw = &body[start..i];
                fields.push(if escaped { Cow::Owned(unescape_header(raw)) } else { Cow::Borrowed(raw) });
                if fields.len() == 7 {
                    return Ok((fields, &body[i + 1..]));
                }
                (start, escaped) = (i + 1, false);
            }
            _ => {}
        }
        i += 1;
    }
    Err(NormalizeError::BadCef(format!(
        "header has {} of 7 `|`-separated fields (truncated?)",
        fields.len()
    )))
}

/// A header field with its escapes resolved: `\x` is `x`.
fn unescape_header(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next().unwrap_or('\\')),
            other => out.push(other),
        }
    }
    out
}

/// The `key=value key2=value with spaces` extensions, in order, values still escaped; a
/// repeated key keeps its first place and its last value. Keys and values are slices of
/// the text, copied (and unescaped) only when taken.
struct Extension<'a> {
    /// In order of first appearance; the value is `None` once taken.
    entries: Vec<(&'a str, Option<&'a str>)>,
    /// Key → its place in `entries`: a lookup stays O(1) however many keys an event holds
    /// (a 1 MiB event can hold 200,000).
    index: crate::FastMap<&'a str, usize>,
}

impl<'a> Extension<'a> {
    fn parse(text: &'a str) -> Self {
        let bytes = text.as_bytes();
        // Find every `key=` start: a run of [A-Za-z0-9_.\[\]-] preceded by start or space
        // and followed by an `=`.
        let mut starts: Vec<(usize, usize)> = Vec::with_capacity(16); // (key_start, eq_index)
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
        let mut extension = Self { entries: Vec::with_capacity(starts.len()), index: crate::FastMap::default() };
        extension.index.reserve(starts.len());
        for (n, &(key_start, eq)) in starts.iter().enumerate() {
            let value_end = starts.get(n + 1).map(|&(next, _)| next).unwrap_or(bytes.len());
            let (key, value) = (&text[key_start..eq], text[eq + 1..value_end].trim_end());
            match extension.index.entry(key) {
                std::collections::hash_map::Entry::Occupied(at) => extension.entries[*at.get()].1 = Some(value),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(extension.entries.len());
                    extension.entries.push((key, Some(value)));
                }
            }
        }
        extension
    }

    /// Takes `key`'s value, unescaped.
    fn remove(&mut self, key: &str) -> Option<String> {
        let at = *self.index.get(key)?;
        self.entries[at].1.take().map(unescape_value)
    }

    /// The entries not taken, in order.
    fn remaining(&self) -> impl Iterator<Item = (&'a str, &'a str)> + '_ {
        self.entries.iter().filter_map(|&(key, value)| Some((key, value?)))
    }
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
    let mut ext = Extension::parse(extension);
    let mut parsed = Parsed { format: "cef", ..Parsed::default() };
    let mut take = |key: &str| ext.remove(key).filter(|v| !v.is_empty());

    event.source.vendor = Some(header[1].to_string()).filter(|v| !v.is_empty());
    event.source.product = Some(header[2].to_string()).filter(|v| !v.is_empty());
    event.severity = Some(severity_name(&header[6]));
    parsed.id = take("externalId").or_else(|| take("eventId"));
    parsed.time_text = take("rt").or_else(|| take("end")).or_else(|| take("start"));
    parsed.tenant = take("deviceCustomString6Tenant").or_else(|| take("tenant"));
    event.message = take("msg").or_else(|| Some(header[5].to_string()).filter(|v| !v.is_empty()));
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

    event.attrs.insert("cef.signature_id".into(), header[4].to_string());
    event.attrs.insert("cef.name".into(), header[5].to_string());
    event.attrs.insert("cef.device_version".into(), header[3].to_string());
    // Custom strings carry their label: cs1Label=Policy cs1=Default → attrs["Policy"]; a
    // custom string labelled Tenant names the tenant.
    let labels: Vec<(&str, String)> =
        ext.remaining().filter(|(k, _)| k.ends_with("Label")).map(|(k, v)| (k.trim_end_matches("Label"), unescape_value(v))).collect();
    for (slot, label) in labels {
        if let Some(value) = ext.remove(slot) {
            ext.remove(&format!("{slot}Label"));
            // Firewalls that serve several tenants label a custom string with the tenant.
            if parsed.tenant.is_none() && label.eq_ignore_ascii_case("tenant") && !value.is_empty() {
                parsed.tenant = Some(value);
                continue;
            }
            event.attrs.insert(label, value);
        }
    }
    for (key, value) in ext.remaining().take(super::json::MAX_ATTRS) {
        event.attrs.insert(key.to_string(), fields::truncate(unescape_value(value), super::json::MAX_ATTR_VALUE_BYTES));
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
    fn escaped_backslashes_repeated_keys_and_custom_strings() {
        let mut event = Event::default();
        let text = r"CEF:1|Ven\\dor|Pro\|duct|2.0|sig-7|Odd\ name|5|src=10.0.0.1 msg=first msg=a\\b c\nd cs2Label=Zone cs2=dmz extra=kept dst=10.0.0.2";
        map(text, &mut event).unwrap();
        assert_eq!(event.source.vendor.as_deref(), Some(r"Ven\dor"));
        assert_eq!(event.source.product.as_deref(), Some("Pro|duct"));
        assert_eq!(event.severity.as_deref(), Some("medium"));
        assert_eq!(event.message.as_deref(), Some("a\\b c\nd"), "the last value of a repeated key");
        assert_eq!(event.attrs.get("cef.name").map(String::as_str), Some("Odd name"));
        assert_eq!(event.attrs.get("cef.signature_id").map(String::as_str), Some("sig-7"));
        assert_eq!(event.attrs.get("cef.device_version").map(String::as_str), Some("2.0"));
        assert_eq!(event.attrs.get("Zone").map(String::as_str), Some("dmz"));
        assert_eq!(event.attrs.get("extra").map(String::as_str), Some("kept"));
        assert!(!event.attrs.contains_key("cs2") && !event.attrs.contains_key("cs2Label") && !event.attrs.contains_key("msg"));
        assert_eq!(event.dst_ip(), Some("10.0.0.2"));
        assert!(map(r"CEF:0|a|b|c|d|e|f\|", &mut Event::default()).is_err(), "an escaped last bar ends no field");
    }

    #[test]
    fn many_extensions_are_found_and_attrs_stay_bounded() {
        // ~1 MiB of extensions: every lookup by key, not by scanning them all.
        let mut text = String::from("CEF:0|V|P|1|sig|name|3|");
        for n in 0..100_000 {
            text.push_str(&format!("k{n}=v{n} "));
        }
        text.push_str("k7=last cs1Label=Tenant cs1=globex msg=at the end");
        let mut event = Event::default();
        let parsed = map(&text, &mut event).unwrap();
        assert_eq!(parsed.tenant.as_deref(), Some("globex"));
        assert_eq!(event.message.as_deref(), Some("at the end"));
        assert_eq!(event.attrs.get("k7").map(String::as_str), Some("last"), "a repeated key keeps its first place and its last value");
        assert_eq!(event.attrs.len(), 3 + super::super::json::MAX_ATTRS, "the header's three, then the first 64 extensions left");
        assert!(event.attrs.contains_key("k63") && !event.attrs.contains_key("k64"));
    }

    #[test]
    fn truncated_header_is_rejected() {
        let err = map("CEF:0|Vendor|Product|1.0", &mut Event::default()).unwrap_err();
        assert!(err.to_string().contains("3 of 7"), "{err}");
    }
}
