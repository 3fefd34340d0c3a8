//! JSON events: generic flat JSON, OCSF, ECS and Windows event JSON (as the `evtx` crate
//! emits it), mapped onto one [`Event`].
//!
//! Each canonical field has an ordered list of paths producers use for it; the first present
//! scalar wins. Paths are dotted and also match a literal dotted key (ECS exporters often
//! flatten `source.ip` into one key). Whatever no alias consumed is kept in `attrs`
//! (bounded), so no producer field is lost.

use std::collections::HashMap;

use super::json_value::{Json as Value, Object};

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

/// The canonical fields read from JSON, each with the ordered paths producers use for it
/// (the first present, usable value wins) and whether an array counts as a value (joined
/// for text; lists such as tags and DNS answers). `F::X` names field X in `map_object`.
macro_rules! fields {
    ($($name:ident $arrays:literal [$($path:literal),+ $(,)?];)+) => {
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy)]
        enum F { $($name),+ }
        const FIELDS: &[(&[&str], bool)] = &[$((&[$($path),+], $arrays)),+];
    };
}

fields! {
    id true ["id", "event_id", "eventId", "uuid", "event.id", "metadata.uid", "_id", "Event.System.EventRecordID"];
    time true [
        "time", "timestamp", "@timestamp", "ts", "event_time", "eventTime", "event.created", "date",
        "Event.System.TimeCreated.#attributes.SystemTime", "Event.System.TimeCreated.SystemTime",
    ];
    tenant true ["tenant", "tenant_id", "tenantId", "organization.id", "metadata.tenant_uid", "labels.tenant", "cloud.account.id"];
    class_uid false ["class_uid"];
    ecs_category true ["event.category"];
    class true ["class", "event_type", "type", "category", "class_name"];
    evtx_event_id false ["Event.System.EventID", "Event.System.EventID.#text"];
    evtx_channel true ["Event.System.Channel"];
    evtx_product true ["Event.System.Provider.#attributes.Name", "Event.System.Channel"];
    severity true ["severity", "level", "log.level", "event.severity", "severity_id"];
    message true ["message", "msg", "description"];
    action true ["action", "event.action", "activity_name"];
    outcome false ["outcome", "result", "event.outcome", "success", "status"];
    host true ["host", "hostname", "host.name", "host.hostname", "device.hostname", "computer", "Event.System.Computer"];
    vendor true ["vendor", "observer.vendor", "metadata.product.vendor_name"];
    product true ["product", "observer.product", "metadata.product.name", "event.module", "event.dataset"];
    user true [
        "user", "username", "user_name", "user.name", "actor.user.name", "account", "src_user",
        "Event.EventData.TargetUserName", "Event.EventData.User", "Event.EventData.SubjectUserName",
    ];
    domain true ["user.domain", "actor.user.domain", "Event.EventData.TargetDomainName"];
    session true ["session_id", "actor.session.uid", "session.id"];
    src_ip true ["src_ip", "source_ip", "client_ip", "src", "source.ip", "src_endpoint.ip", "client.ip", "ip", "remote_addr", "Event.EventData.IpAddress", "Event.EventData.SourceIp"];
    src_port false ["src_port", "source_port", "source.port", "src_endpoint.port", "sport", "Event.EventData.IpPort", "Event.EventData.SourcePort"];
    src_host true ["src_host", "source.domain", "src_endpoint.hostname", "workstation", "Event.EventData.WorkstationName", "Event.EventData.SourceHostname"];
    dst_ip true ["dst_ip", "dest_ip", "destination_ip", "dst", "destination.ip", "dst_endpoint.ip", "server.ip", "Event.EventData.DestinationIp"];
    dst_port false ["dst_port", "dest_port", "destination_port", "destination.port", "dst_endpoint.port", "dport", "port", "Event.EventData.DestinationPort"];
    dst_host true ["dst_host", "dest_host", "destination.domain", "dst_endpoint.hostname", "server.domain", "Event.EventData.DestinationHostname"];
    pid false ["pid", "process_id", "process.pid", "Event.EventData.ProcessId"];
    process_name true ["process_name", "process", "process.name", "image_name"];
    process_path true ["process_path", "image", "process.executable", "process.file.path", "exe", "Event.EventData.Image"];
    command_line true ["command_line", "cmdline", "cmd", "commandline", "process.command_line", "process.cmd_line", "process.args", "Event.EventData.CommandLine"];
    process_user true ["process.user.name"];
    parent_name true ["parent_process", "parent_name", "process.parent.name", "process.parent_process.name", "Event.EventData.ParentImage"];
    parent_command_line true ["parent_command_line", "process.parent.command_line", "process.parent_process.cmd_line", "Event.EventData.ParentCommandLine"];
    method true ["method", "http_method", "request_method", "http.request.method", "http_request.http_method"];
    url true ["url", "uri", "request", "request_uri", "url.original", "url.full", "http_request.url.url_string"];
    status_code false ["status_code", "http_status", "http.response.status_code", "http_response.code"];
    user_agent true ["user_agent", "useragent", "http_user_agent", "user_agent.original", "http_request.user_agent"];
    referrer true ["referrer", "referer", "http.request.referrer", "http_request.referrer"];
    bytes_in false ["bytes_in", "bytes_received", "http.request.bytes"];
    bytes_out false ["bytes_out", "bytes_sent", "bytes", "http.response.bytes"];
    query true ["query", "dns_query", "qname", "dns.question.name", "query.hostname", "Event.EventData.QueryName"];
    answers true ["answers", "dns.answers", "dns.resolved_ip", "Event.EventData.QueryResults"];
    qtype true ["qtype", "query_type", "dns.question.type", "query.type"];
    rcode true ["rcode", "dns.response_code", "rcode_name"];
    file_path true ["file_path", "file.path", "Event.EventData.TargetFilename"];
    file_name true ["file_name", "filename", "file.name"];
    file_size false ["file_size", "file.size"];
    md5 true ["md5", "file.hash.md5", "hash.md5"];
    sha1 true ["sha1", "file.hash.sha1", "hash.sha1"];
    sha256 true ["sha256", "file.hash.sha256", "hash.sha256"];
    model true ["model", "llm.model", "gen_ai.request.model"];
    llm_session true ["llm.session_id", "conversation_id", "gen_ai.conversation.id"];
    prompt true ["prompt", "llm.prompt", "gen_ai.prompt"];
    response true ["response", "completion", "llm.response", "gen_ai.completion"];
    tokens_in false ["tokens_in", "prompt_tokens", "usage.prompt_tokens", "llm.tokens_in"];
    tokens_out false ["tokens_out", "completion_tokens", "usage.completion_tokens", "llm.tokens_out"];
    tags true ["tags"];
}

/// What a dotted path is to the fields: the fields that name it (field, rank in its list),
/// and whether longer paths begin with it (so the walk descends into an object there).
#[derive(Default)]
struct PathUse {
    fields: Vec<(u8, u8)>,
    prefix: bool,
}

/// Every alias path and alias prefix, worked out once. The reader walks an event's keys
/// and looks each one up here: a handful of lookups per event, where asking for each of
/// the ~170 aliases in turn whether the event has it was ~30% of normalize's instructions.
static PATHS: std::sync::LazyLock<HashMap<&'static str, PathUse, crate::FastHasher>> = std::sync::LazyLock::new(|| {
    let mut paths: HashMap<&'static str, PathUse, crate::FastHasher> = HashMap::default();
    for (field, (aliases, _)) in FIELDS.iter().enumerate() {
        for (rank, path) in aliases.iter().enumerate() {
            // Both fit a u8: there are fewer than 256 fields and no list is that long.
            paths.entry(path).or_default().fields.push((field as u8, rank as u8));
            for (at, _) in path.match_indices('.') {
                paths.entry(&path[..at]).or_default().prefix = true;
            }
        }
    }
    paths
});

/// The value found for a field: the best-ranked usable one so far.
#[derive(Clone, Copy)]
struct Found<'a> {
    value: &'a Value<'a>,
    rank: u8,
    path: &'static str,
    /// Found under a root key that is the whole dotted path (`"source.ip": ...`), which
    /// wins over the same path through nested objects.
    literal: bool,
}

struct Reader<'a> {
    root: &'a Object<'a>,
    found: [Option<Found<'a>>; FIELDS.len()],
    /// The alias paths that gave a field (kept out of `attrs`): static strings, so marking
    /// one is a pointer copy, not an allocation; a dozen at most, so a vector searched in
    /// turn, not a hash set.
    used: Vec<&'static str>,
}

/// Whether `v` can be a field's value (`arrays`: whether a non-empty array can).
fn usable(v: &Value<'_>, arrays: bool) -> bool {
    match v {
        Value::Null | Value::Object(_) => false,
        Value::Array(a) => arrays && !a.is_empty(),
        Value::String(s) => !s.trim().is_empty() && s != "-",
        _ => true,
    }
}

impl<'a> Reader<'a> {
    fn new(root: &'a Object<'a>) -> Self {
        let mut reader = Self { root, found: [None; FIELDS.len()], used: Vec::with_capacity(16) };
        let mut path = String::with_capacity(64);
        reader.walk(root, &mut path, 0);
        reader
    }

    /// Offers every key path under `object` (`path` is its own, empty at the root) to the
    /// fields that name it.
    fn walk(&mut self, object: &'a Object<'a>, path: &mut String, depth: usize) {
        let paths = &*PATHS;
        let base = path.len();
        for (key, value) in object.iter() {
            path.truncate(base);
            if base > 0 {
                path.push('.');
            }
            path.push_str(key);
            let Some((&name, path_use)) = paths.get_key_value(path.as_str()) else { continue };
            for &(field, rank) in &path_use.fields {
                let (_, arrays) = FIELDS[usize::from(field)];
                if !usable(value, arrays) {
                    continue;
                }
                let literal = depth == 0;
                let slot = &mut self.found[usize::from(field)];
                let better = match slot {
                    None => true,
                    Some(best) => rank < best.rank || (rank == best.rank && literal && !best.literal),
                };
                if better {
                    *slot = Some(Found { value, rank, path: name, literal });
                }
            }
            if let Value::Object(inner) = value {
                // Only into objects some alias path goes through, so no deeper than the
                // longest alias.
                if path_use.prefix {
                    self.walk(inner, path, depth + 1);
                }
            }
        }
        path.truncate(base);
    }

    /// The value at the dotted `path`: a root key of that exact name (ECS exporters flatten
    /// `source.ip` into one key), else the path through nested objects.
    fn lookup(&self, path: &str) -> Option<&'a Value<'a>> {
        if let Some(v) = self.root.get(path) {
            return Some(v);
        }
        let (head, rest) = path.split_once('.')?;
        let mut current = self.root.get(head)?;
        for part in rest.split('.') {
            current = current.as_object()?.get(part)?;
        }
        Some(current)
    }

    /// The value of `field`: its first path holding a usable value. Marks that path used.
    fn first(&mut self, field: F) -> Option<&'a Value<'a>> {
        let found = self.found[field as usize]?;
        self.used.push(found.path);
        Some(found.value)
    }

    fn text(&mut self, field: F) -> Option<String> {
        let v = self.first(field)?;
        scalar_text(v)
    }

    fn int(&mut self, field: F, name: &'static str) -> Result<Option<i64>, NormalizeError> {
        let Some(v) = self.first(field) else { return Ok(None) };
        let parsed = match v {
            Value::Number(n) => n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
            Value::String(s) => parse_int_text(s),
            _ => None,
        };
        parsed
            .map(Some)
            .ok_or_else(|| NormalizeError::invalid_field(name, &scalar_text(v).unwrap_or_default(), "not an integer"))
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

fn scalar_text(v: &Value<'_>) -> Option<String> {
    match v {
        Value::String(s) => Some(s.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().filter_map(scalar_text).collect();
            (!parts.is_empty()).then(|| parts.join(" "))
        }
        _ => None,
    }
}

fn string_list(v: &Value<'_>) -> Vec<String> {
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

fn detect_format(root: &Object<'_>) -> &'static str {
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
pub(super) fn map_object(root: &Object<'_>, event: &mut Event) -> Result<Parsed, NormalizeError> {
    let format = detect_format(root);
    let mut r = Reader::new(root);
    let mut parsed = Parsed { format, ..Parsed::default() };

    parsed.id = r.text(F::id);
    // Windows: the record id alone is not unique across hosts; qualify it.
    if format == "evtx" {
        if let (Some(id), Some(host)) = (&parsed.id, r.lookup("Event.System.Computer").and_then(scalar_text)) {
            parsed.id = Some(format!("{host}:{id}"));
        }
    }
    parsed.time_text = r.text(F::time);
    parsed.tenant = r.text(F::tenant);

    // Class: explicit names first, then OCSF/ECS/Windows codes, else inferred by the caller.
    if let Some(uid) = r.int(F::class_uid, "class_uid")? {
        event.class = ocsf_class(uid).unwrap_or(EventClass::Other);
        parsed.class_known = true;
    } else if let Some(v) = r.first(F::ecs_category) {
        if let Some(class) = string_list(v).iter().find_map(|c| ecs_class(c)) {
            event.class = class;
            parsed.class_known = true;
        }
    } else if let Some(text) = r.text(F::class) {
        if let Some(class) = EventClass::from_name(&text) {
            event.class = class;
            parsed.class_known = true;
        } else {
            event.attrs.insert("event_type".into(), text);
        }
    }
    if format == "evtx" {
        let event_id = r.int(F::evtx_event_id, "Event.System.EventID").ok().flatten();
        if let Some(event_id) = event_id {
            event.attrs.insert("EventID".into(), event_id.to_string());
            if let Some((class, outcome)) = evtx_class(event_id) {
                event.class = class;
                parsed.class_known = true;
                event.outcome = outcome.map(str::to_string);
            }
        }
        if let Some(channel) = r.text(F::evtx_channel) {
            event.attrs.insert("Channel".into(), channel);
        }
        event.source.product = r.text(F::evtx_product).or(Some("windows".into()));
        event.source.vendor = Some("microsoft".into());
    }

    event.severity = r.text(F::severity);
    event.message = r.text(F::message);
    event.action = r.text(F::action);
    if let Some(v) = r.first(F::outcome) {
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
    event.host = r.text(F::host);
    event.source.vendor = event.source.vendor.take().or_else(|| r.text(F::vendor));
    event.source.product = event.source.product.take().or_else(|| r.text(F::product));

    let user = r.text(F::user);
    let domain = r.text(F::domain);
    let session = r.text(F::session);
    if user.is_some() || domain.is_some() || session.is_some() {
        let actor = event.actor.get_or_insert_with(Default::default);
        actor.user = user;
        actor.domain = domain;
        actor.session_id = session;
    }

    let src_ip = r.text(F::src_ip);
    let src_port = r.int(F::src_port, "src_port")?;
    let src_host = r.text(F::src_host);
    fields::set_endpoint(&mut event.src, "src", src_ip, src_port, src_host)?;
    let dst_ip = r.text(F::dst_ip);
    let dst_port = r.int(F::dst_port, "dst_port")?;
    let dst_host = r.text(F::dst_host);
    fields::set_endpoint(&mut event.dst, "dst", dst_ip, dst_port, dst_host)?;

    let process = crate::event::Process {
        pid: r.int(F::pid, "pid")?,
        name: r.text(F::process_name),
        path: r.text(F::process_path),
        command_line: r.text(F::command_line),
        user: r.text(F::process_user),
        parent_name: r.text(F::parent_name),
        parent_command_line: r.text(F::parent_command_line),
    };
    if process != crate::event::Process::default() {
        event.process = Some(process);
    }

    let method = r.text(F::method);
    let url = r.text(F::url);
    let status = r.int(F::status_code, "status_code")?;
    let user_agent = r.text(F::user_agent);
    let referrer = r.text(F::referrer);
    let bytes_in = r.int(F::bytes_in, "bytes_in")?;
    let bytes_out = r.int(F::bytes_out, "bytes_out")?;
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

    let query = r.text(F::query);
    if query.is_some() {
        let answers = r.first(F::answers).map(string_list).unwrap_or_default();
        event.dns = Some(crate::event::Dns {
            query,
            qtype: r.text(F::qtype),
            rcode: r.text(F::rcode),
            answers,
        });
    }

    let file = crate::event::File {
        path: r.text(F::file_path),
        name: r.text(F::file_name),
        size: r.int(F::file_size, "file_size")?,
        md5: r.text(F::md5),
        sha1: r.text(F::sha1),
        sha256: r.text(F::sha256),
    };
    if file != crate::event::File::default() {
        event.file = Some(file);
    }

    let llm = crate::event::Llm {
        model: r.text(F::model),
        session_id: r.text(F::llm_session),
        prompt: r.text(F::prompt),
        response: r.text(F::response),
        tokens_in: r.int(F::tokens_in, "tokens_in")?,
        tokens_out: r.int(F::tokens_out, "tokens_out")?,
    };
    if llm.prompt.is_some() || llm.response.is_some() {
        event.llm = Some(llm);
    }

    if let Some(v) = r.first(F::tags) {
        event.tags.extend(string_list(v));
    }
    if let Some(Value::Object(features)) = r.lookup("features") {
        r.used.push("features");
        for (name, value) in features.iter().take(MAX_ATTRS) {
            if let Some(number) = value.as_f64() {
                event.features.insert(name.to_string(), number);
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
    object: &Object<'_>,
    path: &mut String,
    depth: usize,
    used: &[&'static str],
    attrs: &mut crate::event::FieldMap<String>,
) {
    let base = path.len();
    for (key, value) in object.iter() {
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
        if used.contains(&path.as_str()) && !path.starts_with(EVTX_DATA) {
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
