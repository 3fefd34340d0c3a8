//! JSON events: generic flat JSON, OCSF, ECS and Windows event JSON (as the `evtx` crate
//! emits it), mapped onto one [`Event`].
//!
//! Each canonical field has an ordered list of paths producers use for it; the first present
//! scalar wins. Paths are dotted and also match a literal dotted key (ECS exporters often
//! flatten `source.ip` into one key). Whatever no alias consumed is kept in `attrs`
//! (bounded), so no producer field is lost.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use super::{fields, NormalizeError, Parsed};
use crate::event::{EventClass, Event};

/// Most producer fields kept in `attrs` per event.
pub const MAX_ATTRS: usize = 64;
/// Longest `attrs` value kept, in bytes; longer values are cut on a character boundary.
pub const MAX_ATTR_VALUE_BYTES: usize = 1024;
/// Deepest nesting walked when collecting `attrs`.
const MAX_ATTR_DEPTH: usize = 6;

const EVTX_DATA: &str = "Event.EventData.";
const EVTX_USER_DATA: &str = "Event.UserData.";

/// One bit of a 128-bit presence mask for the key `bytes[..len]`: cheap (length and two
/// bytes, no hashing of the whole key) because it runs for every alias of every event. A
/// `const fn`, so each alias's bits are worked out at compile time ([`Alias::new`]).
const fn key_bit(bytes: &[u8], len: usize) -> u128 {
    if len == 0 {
        return 1;
    }
    let (first, last) = (bytes[0] as u64, bytes[len - 1] as u64);
    let h = (len as u64).wrapping_mul(0x9E37_79B9) ^ first.wrapping_mul(31) ^ last.wrapping_mul(131);
    1u128 << (h % 128)
}

/// A path producers use for a field (`"src_ip"`, `"src_endpoint.ip"`), with the position of
/// its first dot and the presence bits of the whole path and of its head worked out when
/// compiling, not for each of the ~170 aliases looked up per event (finding the dot alone
/// was ~5% of normalize).
#[derive(Clone, Copy)]
struct Alias {
    path: &'static str,
    /// Index of the first `.`, or the path's length when it has none.
    dot: usize,
    bit: u128,
    head_bit: u128,
}

impl Alias {
    const fn new(path: &'static str) -> Self {
        let bytes = path.as_bytes();
        let mut dot = 0;
        while dot < bytes.len() && bytes[dot] != b'.' {
            dot += 1;
        }
        Self { path, dot, bit: key_bit(bytes, bytes.len()), head_bit: key_bit(bytes, dot) }
    }
}

/// `paths!["a", "b.c"]`: a `&'static [Alias]`, built at compile time.
macro_rules! paths {
    ($($path:literal),+ $(,)?) => {
        const { &[$(Alias::new($path)),+] }
    };
}

struct Reader<'a> {
    /// The root's keys in a hash index: `serde_json::Map` is a BTreeMap, and ~170 alias
    /// lookups per event as ordered searches were over half of normalize's time.
    index: HashMap<&'a str, &'a Value, ahash::RandomState>,
    /// The alias paths that gave a field (kept out of `attrs`): static strings, so marking
    /// one is a pointer copy, not an allocation.
    used: HashSet<&'static str, ahash::RandomState>,
    /// Presence mask of the root's keys. Most alias paths name a key the event does not
    /// have; the mask rejects them without a map search.
    present: u128,
}

impl<'a> Reader<'a> {
    fn new(root: &'a Map<String, Value>) -> Self {
        let present = root.keys().fold(0, |mask, k| mask | key_bit(k.as_bytes(), k.len()));
        let index = root.iter().map(|(k, v)| (k.as_str(), v)).collect();
        Self { index, used: HashSet::default(), present }
    }

    /// The value at `alias`: a root key of that exact name (ECS exporters flatten
    /// `source.ip` into one key), else the dotted path through nested objects.
    fn lookup(&self, alias: &Alias) -> Option<&'a Value> {
        if self.present & alias.bit != 0 {
            if let Some(v) = self.index.get(alias.path) {
                return Some(v);
            }
        }
        if alias.dot == alias.path.len() || self.present & alias.head_bit == 0 {
            return None;
        }
        let mut current = *self.index.get(&alias.path[..alias.dot])?;
        for part in alias.path[alias.dot + 1..].split('.') {
            current = current.as_object()?.get(part)?;
        }
        Some(current)
    }

    /// First path holding a non-null scalar (or array, when `allow_array`).
    fn first(&mut self, paths: &[Alias], allow_array: bool) -> Option<&'a Value> {
        for alias in paths {
            if let Some(v) = self.lookup(alias) {
                let usable = match v {
                    Value::Null | Value::Object(_) => false,
                    Value::Array(a) => allow_array && !a.is_empty(),
                    Value::String(s) => !s.trim().is_empty() && s != "-",
                    _ => true,
                };
                if usable {
                    self.used.insert(alias.path);
                    return Some(v);
                }
            }
        }
        None
    }

    fn text(&mut self, paths: &[Alias]) -> Option<String> {
        let v = self.first(paths, true)?;
        scalar_text(v)
    }

    fn int(&mut self, paths: &[Alias], field: &'static str) -> Result<Option<i64>, NormalizeError> {
        let Some(v) = self.first(paths, false) else { return Ok(None) };
        let parsed = match v {
            Value::Number(n) => n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
            Value::String(s) => parse_int_text(s),
            _ => None,
        };
        parsed
            .map(Some)
            .ok_or_else(|| NormalizeError::invalid_field(field, &scalar_text(v).unwrap_or_default(), "not an integer"))
    }
}

/// Decimal, or `0x` hex as Windows Security events write process ids (`0x378`).
fn parse_int_text(text: &str) -> Option<i64> {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => i64::from_str_radix(hex, 16).ok(),
        None => text.parse::<i64>().ok(),
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().filter_map(scalar_text).collect();
            (!parts.is_empty()).then(|| parts.join(" "))
        }
        _ => None,
    }
}

fn string_list(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items
            .iter()
            .filter_map(|item| match item {
                Value::Object(o) => o.get("data").or_else(|| o.get("rdata")).and_then(scalar_text),
                other => scalar_text(other),
            })
            .collect(),
        other => scalar_text(other).into_iter().collect(),
    }
}

fn detect_format(root: &Map<String, Value>) -> &'static str {
    if root.get("Event").and_then(|e| e.get("System")).is_some() {
        "evtx"
    } else if root.contains_key("class_uid") || root.get("metadata").and_then(|m| m.get("product")).is_some() {
        "ocsf"
    } else if root.contains_key("@timestamp")
        && (root.contains_key("ecs") || root.contains_key("ecs.version") || root.get("event").is_some_and(Value::is_object))
    {
        "ecs"
    } else {
        "json"
    }
}

fn ocsf_class(uid: i64) -> Option<EventClass> {
    Some(match uid {
        3002 => EventClass::Authentication,
        1007 => EventClass::ProcessActivity,
        4001 => EventClass::NetworkActivity,
        4002 => EventClass::HttpActivity,
        4003 => EventClass::DnsActivity,
        1001 => EventClass::FileActivity,
        2001..=2099 => EventClass::Finding,
        _ => return None,
    })
}

fn ecs_class(category: &str) -> Option<EventClass> {
    Some(match category {
        "authentication" | "iam" | "session" => EventClass::Authentication,
        "process" => EventClass::ProcessActivity,
        "network" => EventClass::NetworkActivity,
        "web" => EventClass::HttpActivity,
        "file" => EventClass::FileActivity,
        "intrusion_detection" | "malware" | "threat" => EventClass::Finding,
        _ => return None,
    })
}

fn evtx_class(event_id: i64) -> Option<(EventClass, Option<&'static str>)> {
    Some(match event_id {
        4624 => (EventClass::Authentication, Some("success")),
        4625 => (EventClass::Authentication, Some("failure")),
        4688 => (EventClass::ProcessActivity, None),
        _ => return None,
    })
}

/// Maps a parsed JSON object onto `event`. Returns the detected format name.
pub(super) fn map_object(root: &Map<String, Value>, event: &mut Event) -> Result<Parsed, NormalizeError> {
    let format = detect_format(root);
    let mut r = Reader::new(root);
    let mut parsed = Parsed { format, ..Parsed::default() };

    parsed.id = r.text(paths!["id", "event_id", "eventId", "uuid", "event.id", "metadata.uid", "_id", "Event.System.EventRecordID"]);
    // Windows: the record id alone is not unique across hosts; qualify it.
    if format == "evtx" {
        if let (Some(id), Some(host)) = (&parsed.id, r.lookup(&Alias::new("Event.System.Computer")).and_then(scalar_text)) {
            parsed.id = Some(format!("{host}:{id}"));
        }
    }
    parsed.time_text = r.text(paths![
        "time", "timestamp", "@timestamp", "ts", "event_time", "eventTime", "event.created", "date",
        "Event.System.TimeCreated.#attributes.SystemTime", "Event.System.TimeCreated.SystemTime",
    ]);
    parsed.tenant = r.text(paths!["tenant", "tenant_id", "tenantId", "organization.id", "metadata.tenant_uid", "labels.tenant", "cloud.account.id"]);

    // Class: explicit names first, then OCSF/ECS/Windows codes, else inferred by the caller.
    if let Some(uid) = r.int(paths!["class_uid"], "class_uid")? {
        event.class = ocsf_class(uid).unwrap_or(EventClass::Other);
        parsed.class_known = true;
    } else if let Some(v) = r.first(paths!["event.category"], true) {
        if let Some(class) = string_list(v).iter().find_map(|c| ecs_class(c)) {
            event.class = class;
            parsed.class_known = true;
        }
    } else if let Some(text) = r.text(paths!["class", "event_type", "type", "category", "class_name"]) {
        if let Some(class) = EventClass::from_name(&text) {
            event.class = class;
            parsed.class_known = true;
        } else {
            event.attrs.insert("event_type".into(), text);
        }
    }
    if format == "evtx" {
        let event_id = r.int(paths!["Event.System.EventID", "Event.System.EventID.#text"], "Event.System.EventID").ok().flatten();
        if let Some(event_id) = event_id {
            event.attrs.insert("EventID".into(), event_id.to_string());
            if let Some((class, outcome)) = evtx_class(event_id) {
                event.class = class;
                parsed.class_known = true;
                event.outcome = outcome.map(str::to_string);
            }
        }
        if let Some(channel) = r.text(paths!["Event.System.Channel"]) {
            event.attrs.insert("Channel".into(), channel);
        }
        event.source.product = r.text(paths!["Event.System.Provider.#attributes.Name", "Event.System.Channel"]).or(Some("windows".into()));
        event.source.vendor = Some("microsoft".into());
    }

    event.severity = r.text(paths!["severity", "level", "log.level", "event.severity", "severity_id"]);
    event.message = r.text(paths!["message", "msg", "description"]);
    event.action = r.text(paths!["action", "event.action", "activity_name"]);
    if let Some(v) = r.first(paths!["outcome", "result", "event.outcome", "success", "status"], false) {
        match v {
            Value::Bool(b) => event.outcome = Some(if *b { "success" } else { "failure" }.into()),
            Value::String(s) => {
                event.outcome = Some(fields::canonical_outcome(s));
            }
            // A numeric `status` is an HTTP status code, not an outcome.
            Value::Number(n) => {
                let http = event.http.get_or_insert_with(Default::default);
                http.status = n.as_i64().and_then(|s| i32::try_from(s).ok());
            }
            _ => {}
        }
    }
    event.host = r.text(paths!["host", "hostname", "host.name", "host.hostname", "device.hostname", "computer", "Event.System.Computer"]);
    event.source.vendor = event.source.vendor.take().or_else(|| r.text(paths!["vendor", "observer.vendor", "metadata.product.vendor_name"]));
    event.source.product = event.source.product.take().or_else(|| r.text(paths!["product", "observer.product", "metadata.product.name", "event.module", "event.dataset"]));

    let user = r.text(paths![
        "user", "username", "user_name", "user.name", "actor.user.name", "account", "src_user",
        "Event.EventData.TargetUserName", "Event.EventData.User", "Event.EventData.SubjectUserName",
    ]);
    let domain = r.text(paths!["user.domain", "actor.user.domain", "Event.EventData.TargetDomainName"]);
    let session = r.text(paths!["session_id", "actor.session.uid", "session.id"]);
    if user.is_some() || domain.is_some() || session.is_some() {
        let actor = event.actor.get_or_insert_with(Default::default);
        actor.user = user;
        actor.domain = domain;
        actor.session_id = session;
    }

    let src_ip = r.text(paths!["src_ip", "source_ip", "client_ip", "src", "source.ip", "src_endpoint.ip", "client.ip", "ip", "remote_addr", "Event.EventData.IpAddress", "Event.EventData.SourceIp"]);
    let src_port = r.int(paths!["src_port", "source_port", "source.port", "src_endpoint.port", "sport", "Event.EventData.IpPort", "Event.EventData.SourcePort"], "src_port")?;
    let src_host = r.text(paths!["src_host", "source.domain", "src_endpoint.hostname", "workstation", "Event.EventData.WorkstationName", "Event.EventData.SourceHostname"]);
    fields::set_endpoint(&mut event.src, "src", src_ip, src_port, src_host)?;
    let dst_ip = r.text(paths!["dst_ip", "dest_ip", "destination_ip", "dst", "destination.ip", "dst_endpoint.ip", "server.ip", "Event.EventData.DestinationIp"]);
    let dst_port = r.int(paths!["dst_port", "dest_port", "destination_port", "destination.port", "dst_endpoint.port", "dport", "port", "Event.EventData.DestinationPort"], "dst_port")?;
    let dst_host = r.text(paths!["dst_host", "dest_host", "destination.domain", "dst_endpoint.hostname", "server.domain", "Event.EventData.DestinationHostname"]);
    fields::set_endpoint(&mut event.dst, "dst", dst_ip, dst_port, dst_host)?;

    let process = crate::event::Process {
        pid: r.int(paths!["pid", "process_id", "process.pid", "Event.EventData.ProcessId"], "pid")?,
        name: r.text(paths!["process_name", "process", "process.name", "image_name"]),
        path: r.text(paths!["process_path", "image", "process.executable", "process.file.path", "exe", "Event.EventData.Image"]),
        command_line: r.text(paths!["command_line", "cmdline", "cmd", "commandline", "process.command_line", "process.cmd_line", "process.args", "Event.EventData.CommandLine"]),
        user: r.text(paths!["process.user.name"]),
        parent_name: r.text(paths!["parent_process", "parent_name", "process.parent.name", "process.parent_process.name", "Event.EventData.ParentImage"]),
        parent_command_line: r.text(paths!["parent_command_line", "process.parent.command_line", "process.parent_process.cmd_line", "Event.EventData.ParentCommandLine"]),
    };
    if process != crate::event::Process::default() {
        event.process = Some(process);
    }

    let method = r.text(paths!["method", "http_method", "request_method", "http.request.method", "http_request.http_method"]);
    let url = r.text(paths!["url", "uri", "request", "request_uri", "url.original", "url.full", "http_request.url.url_string"]);
    let status = r.int(paths!["status_code", "http_status", "http.response.status_code", "http_response.code"], "status_code")?;
    let user_agent = r.text(paths!["user_agent", "useragent", "http_user_agent", "user_agent.original", "http_request.user_agent"]);
    let referrer = r.text(paths!["referrer", "referer", "http.request.referrer", "http_request.referrer"]);
    let bytes_in = r.int(paths!["bytes_in", "bytes_received", "http.request.bytes"], "bytes_in")?;
    let bytes_out = r.int(paths!["bytes_out", "bytes_sent", "bytes", "http.response.bytes"], "bytes_out")?;
    if method.is_some() || url.is_some() || status.is_some() || user_agent.is_some() || bytes_in.is_some() || bytes_out.is_some() {
        let http = event.http.get_or_insert_with(Default::default);
        http.method = method;
        http.url = url;
        http.status = match status {
            Some(s) => Some(i32::try_from(s).map_err(|_| NormalizeError::invalid_field("status_code", &s.to_string(), "out of range"))?),
            None => http.status,
        };
        http.user_agent = user_agent;
        http.referrer = referrer;
        http.bytes_in = bytes_in;
        http.bytes_out = bytes_out;
    }

    let query = r.text(paths!["query", "dns_query", "qname", "dns.question.name", "query.hostname", "Event.EventData.QueryName"]);
    if query.is_some() {
        let answers = r.first(paths!["answers", "dns.answers", "dns.resolved_ip", "Event.EventData.QueryResults"], true).map(string_list).unwrap_or_default();
        event.dns = Some(crate::event::Dns {
            query,
            qtype: r.text(paths!["qtype", "query_type", "dns.question.type", "query.type"]),
            rcode: r.text(paths!["rcode", "dns.response_code", "rcode_name"]),
            answers,
        });
    }

    let file = crate::event::File {
        path: r.text(paths!["file_path", "file.path", "Event.EventData.TargetFilename"]),
        name: r.text(paths!["file_name", "filename", "file.name"]),
        size: r.int(paths!["file_size", "file.size"], "file_size")?,
        md5: r.text(paths!["md5", "file.hash.md5", "hash.md5"]),
        sha1: r.text(paths!["sha1", "file.hash.sha1", "hash.sha1"]),
        sha256: r.text(paths!["sha256", "file.hash.sha256", "hash.sha256"]),
    };
    if file != crate::event::File::default() {
        event.file = Some(file);
    }

    let llm = crate::event::Llm {
        model: r.text(paths!["model", "llm.model", "gen_ai.request.model"]),
        session_id: r.text(paths!["llm.session_id", "conversation_id", "gen_ai.conversation.id"]),
        prompt: r.text(paths!["prompt", "llm.prompt", "gen_ai.prompt"]),
        response: r.text(paths!["response", "completion", "llm.response", "gen_ai.completion"]),
        tokens_in: r.int(paths!["tokens_in", "prompt_tokens", "usage.prompt_tokens", "llm.tokens_in"], "tokens_in")?,
        tokens_out: r.int(paths!["tokens_out", "completion_tokens", "usage.completion_tokens", "llm.tokens_out"], "tokens_out")?,
    };
    if llm.prompt.is_some() || llm.response.is_some() {
        event.llm = Some(llm);
    }

    if let Some(v) = r.first(paths!["tags"], true) {
        event.tags.extend(string_list(v));
    }
    if let Some(Value::Object(features)) = r.lookup(&Alias::new("features")) {
        r.used.insert("features");
        for (name, value) in features.iter().take(MAX_ATTRS) {
            if let Some(number) = value.as_f64() {
                event.features.insert(name.clone(), number);
            }
        }
    }

    collect_attrs(root, &mut String::with_capacity(64), 0, &r.used, &mut event.attrs);
    Ok(parsed)
}

/// Keeps producer fields no alias consumed, flattened to dotted keys, within bounds.
/// `path` is the dotted path of `object` (empty at the root); it is grown and cut back in
/// place, so a key costs an allocation only when it is kept.
fn collect_attrs(
    object: &Map<String, Value>,
    path: &mut String,
    depth: usize,
    used: &HashSet<&'static str, ahash::RandomState>,
    attrs: &mut crate::event::FieldMap<String>,
) {
    let base = path.len();
    for (key, value) in object {
        if attrs.len() >= MAX_ATTRS {
            break;
        }
        path.truncate(base);
        if base > 0 {
            path.push('.');
        }
        path.push_str(key);
        // Windows EventData fields stay in attrs under their own names even when mapped: they
        // are exactly what Sigma rules for Windows name (CommandLine, Image, TargetUserName).
        if used.contains(path.as_str()) && !path.starts_with(EVTX_DATA) {
            continue;
        }
        match value {
            Value::Object(inner) if depth < MAX_ATTR_DEPTH => collect_attrs(inner, path, depth + 1, used, attrs),
            Value::Null | Value::Object(_) => {}
            other => {
                if let Some(text) = scalar_text(other) {
                    // Windows EventData fields are what Sigma rules name; keep them by bare name.
                    // UserData holds one provider-named element (`UserData.LogFileCleared.…`,
                    // `UserData.Operation_ClientFailure.…`) whose children rules name bare too.
                    let name = match path.strip_prefix(EVTX_DATA) {
                        Some(bare) => bare.to_string(),
                        None => match path.strip_prefix(EVTX_USER_DATA).and_then(|rest| rest.split_once('.')) {
                            Some((_, bare)) if !attrs.contains_key(bare) => bare.to_string(),
                            _ => path.clone(),
                        },
                    };
                    attrs.insert(name, fields::truncate(text, MAX_ATTR_VALUE_BYTES));
                }
            }
        }
    }
    path.truncate(base);
}
