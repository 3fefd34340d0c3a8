//! Hand-written decoding of the current event schema: the hot path of every stage after
//! normalize.
//!
//! Quick-scan, correlate and ML score each decode every event they read. Through serde
//! (`avro_plan`'s `Deserializer` and the derived visitors) that cost ~11,000 instructions
//! per event, about a quarter of the pipeline's: each of the ~60 fields went through a
//! union dispatch, an `Option` visitor and a string visitor. Here the fields are read in
//! schema order by straight-line code. It is written for one shape of the schema
//! ([`SHAPE`]); the registry uses it only for a plan of exactly that shape and keeps the
//! serde path for anything else, so a schema edited without this file falls back, slower
//! but right. Two of the three detection fields at the end (`matches`, `correlations`)
//! still go through serde: they are empty on most events.
//!
//! It accepts and refuses exactly what the serde path does (unit tests and a property test
//! compare the two on whole and damaged frames). [`encode`] is the other direction, for
//! normalize (which writes every event whole) and correlate's findings, and writes byte for
//! byte what the serde path writes (tested).

use super::avro_plan::{self, block_count, fail, read_int, read_long, read_str, skip, write_bytes, write_long, FieldPlans, Plan, PlanError};
use super::{Actor, Dns, Endpoint, Event, EventClass, FieldMap, File, Http, Llm, Process, Score, Source};

/// The event schema this decoder reads, as [`shape`] writes it: `s` string, `l` long, `i`
/// int, `d` double, `?x` a union of null and x, `[x]` an array, `{x}` a map of x, `<...>` a
/// record's fields, `e(...)` an enum's symbols. The shapes of `matches` and `correlations`
/// are not fixed here: serde reads them along their own plans.
pub(super) const SHAPE: &str = "<id:s,class:e(authentication,process_activity,network_activity,http_activity,dns_activity,file_activity,llm_activity,finding,other),\
time_us:l,ingest_time_us:l,tenant:s,partition_key:s,\
source:<format:s,topic:s,partition:i,offset:l,vendor:?s,product:?s>,\
severity:?s,message:?s,action:?s,outcome:?s,host:?s,\
actor:?<user:?s,domain:?s,session_id:?s>,\
src:?<ip:?s,port:?i,hostname:?s>,dst:?<ip:?s,port:?i,hostname:?s>,\
process:?<pid:?l,name:?s,path:?s,command_line:?s,user:?s,parent_name:?s,parent_command_line:?s>,\
http:?<method:?s,url:?s,status:?i,user_agent:?s,referrer:?s,bytes_in:?l,bytes_out:?l>,\
dns:?<query:?s,qtype:?s,rcode:?s,answers:[s]>,\
file:?<path:?s,name:?s,size:?l,md5:?s,sha1:?s,sha256:?s>,\
llm:?<model:?s,session_id:?s,prompt:?s,response:?s,tokens_in:?l,tokens_out:?l>,\
tags:[s],attrs:{s},features:{d},raw:?s,matches:*,correlations:*,\
score:?<risk:d,model_version:s,parts:{d},top_features:[s]>>";

/// Index of `matches` among the event's fields: the first of the detection fields
/// (`matches`, `correlations`, `score`), and the first that serde reads.
const DETECTION_FIELDS_AT: usize = 24;

/// The fields of an event plan, and the plans of `matches` and `correlations`.
type EventPlans<'p> = (&'p FieldPlans, &'p Plan, &'p Plan);

/// The fields of the event plan `plan` (which has [`SHAPE`]), and the plans of `matches`
/// and `correlations`, which serde reads.
fn event_fields(plan: &Plan) -> Result<EventPlans<'_>, PlanError> {
    let Plan::Record(fields, _) = plan else { return fail("the event plan is not a record") };
    let [(_, matches), (_, correlations), _] = &fields[DETECTION_FIELDS_AT..] else {
        return fail("the event plan does not end with the three detection fields");
    };
    Ok((fields, matches, correlations))
}

/// `plan`'s shape in [`SHAPE`]'s notation (the detection fields as `*`).
pub(super) fn shape(plan: &Plan) -> String {
    let mut out = String::new();
    write_shape(plan, &mut out, 0);
    out
}

fn write_shape(plan: &Plan, out: &mut String, depth: usize) {
    match plan {
        Plan::Null => out.push('n'),
        Plan::Boolean => out.push('b'),
        Plan::Int => out.push('i'),
        Plan::Long => out.push('l'),
        Plan::Float => out.push('f'),
        Plan::Double => out.push('d'),
        Plan::Bytes => out.push('y'),
        Plan::String => out.push('s'),
        Plan::Array(item) => {
            out.push('[');
            write_shape(item, out, depth + 1);
            out.push(']');
        }
        Plan::Map(item) => {
            out.push('{');
            write_shape(item, out, depth + 1);
            out.push('}');
        }
        Plan::Union(variants) => match variants.as_slice() {
            [Plan::Null, other] => {
                out.push('?');
                write_shape(other, out, depth + 1);
            }
            _ => {
                out.push('(');
                for (i, variant) in variants.iter().enumerate() {
                    if i > 0 {
                        out.push('|');
                    }
                    write_shape(variant, out, depth + 1);
                }
                out.push(')');
            }
        },
        Plan::Record(fields, _) => {
            out.push('<');
            for (i, (name, field)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(name);
                out.push(':');
                if depth == 0 && (i == DETECTION_FIELDS_AT || i == DETECTION_FIELDS_AT + 1) {
                    out.push('*');
                } else {
                    write_shape(field, out, depth + 1);
                }
            }
            out.push('>');
        }
        Plan::Enum(symbols) => {
            out.push_str("e(");
            out.push_str(&symbols.join(","));
            out.push(')');
        }
    }
}

/// Decodes one event datum of `plan` (which has [`SHAPE`]) from the front of `input`, and
/// tells how many bytes came before its `matches` field.
pub(super) fn decode(plan: &Plan, input: &mut &[u8]) -> Result<(Box<Event>, usize), PlanError> {
    let (_, matches, correlations) = event_fields(plan)?;
    let start = input.len();
    let id = string(input)?;
    let class = class(input)?;
    let time_us = read_long(input)?;
    let ingest_time_us = read_long(input)?;
    let tenant = string(input)?;
    let partition_key = string(input)?;
    let source = Source {
        format: string(input)?,
        topic: string(input)?,
        partition: read_int(input)?,
        offset: read_long(input)?,
        vendor: opt_string(input)?,
        product: opt_string(input)?,
    };
    let severity = opt_string(input)?;
    let message = opt_string(input)?;
    let action = opt_string(input)?;
    let outcome = opt_string(input)?;
    let host = opt_string(input)?;
    let actor = if present(input)? {
        Some(Actor { user: opt_string(input)?, domain: opt_string(input)?, session_id: opt_string(input)? })
    } else {
        None
    };
    let src = opt_endpoint(input)?;
    let dst = opt_endpoint(input)?;
    let process = if present(input)? {
        Some(Process {
            pid: opt_long(input)?,
            name: opt_string(input)?,
            path: opt_string(input)?,
            command_line: opt_string(input)?,
            user: opt_string(input)?,
            parent_name: opt_string(input)?,
            parent_command_line: opt_string(input)?,
        })
    } else {
        None
    };
    let http = if present(input)? {
        Some(Http {
            method: opt_string(input)?,
            url: opt_string(input)?,
            status: opt_int(input)?,
            user_agent: opt_string(input)?,
            referrer: opt_string(input)?,
            bytes_in: opt_long(input)?,
            bytes_out: opt_long(input)?,
        })
    } else {
        None
    };
    let dns = if present(input)? {
        Some(Dns { query: opt_string(input)?, qtype: opt_string(input)?, rcode: opt_string(input)?, answers: strings(input)? })
    } else {
        None
    };
    let file = if present(input)? {
        Some(File {
            path: opt_string(input)?,
            name: opt_string(input)?,
            size: opt_long(input)?,
            md5: opt_string(input)?,
            sha1: opt_string(input)?,
            sha256: opt_string(input)?,
        })
    } else {
        None
    };
    let llm = if present(input)? {
        Some(Llm {
            model: opt_string(input)?,
            session_id: opt_string(input)?,
            prompt: opt_string(input)?,
            response: opt_string(input)?,
            tokens_in: opt_long(input)?,
            tokens_out: opt_long(input)?,
        })
    } else {
        None
    };
    let tags = strings(input)?;
    let attrs = map(input, string)?;
    let features = map(input, read_double)?;
    let raw = opt_string(input)?;
    let detections_at = start - input.len();
    // Boxed: an `Event` is ~1.5 KB, and on its way from here to a stage it was moved
    // (copied) about eight times per record, ~4% of the pipeline's instructions.
    let event = Box::new(Event {
        id,
        class,
        time_us,
        ingest_time_us,
        tenant,
        partition_key,
        source,
        severity,
        message,
        action,
        outcome,
        host,
        actor,
        src,
        dst,
        process,
        http,
        dns,
        file,
        llm,
        tags,
        attrs,
        features,
        raw,
        matches: avro_plan::decode(matches, input)?,
        correlations: avro_plan::decode(correlations, input)?,
        score: opt_score(input)?,
    });
    Ok((event, detections_at))
}

/// Decodes one event datum of `plan` (which has [`SHAPE`]) keeping only what the alert
/// stage reads: id, class, times, tenant, partition key, message and the detection fields.
/// The rest is stepped over as serde steps over a field a type lacks (lengths checked,
/// strings not validated, numbers not range-checked), not built, and left at its default.
pub(super) fn decode_summary(plan: &Plan, input: &mut &[u8]) -> Result<Box<Event>, PlanError> {
    let (fields, matches, correlations) = event_fields(plan)?;
    let mut event = Event::default();
    for (index, (_, field)) in fields[..DETECTION_FIELDS_AT].iter().enumerate() {
        match index {
            0 => event.id = string(input)?,
            1 => event.class = class(input)?,
            2 => event.time_us = read_long(input)?,
            3 => event.ingest_time_us = read_long(input)?,
            4 => event.tenant = string(input)?,
            5 => event.partition_key = string(input)?,
            8 => event.message = opt_string(input)?,
            _ => skip(field, input)?,
        }
    }
    event.matches = avro_plan::decode(matches, input)?;
    event.correlations = avro_plan::decode(correlations, input)?;
    event.score = opt_score(input)?;
    Ok(Box::new(event))
}


/// Appends the Avro encoding of `event` along `plan` (which has [`SHAPE`]) to `out`.
pub(super) fn encode(plan: &Plan, event: &Event, out: &mut Vec<u8>) -> Result<(), PlanError> {
    write_bytes(out, event.id.as_bytes());
    // SHAPE lists the symbols in `EventClass::ALL`'s order.
    let class = EventClass::ALL.iter().position(|c| *c == event.class).unwrap_or(EventClass::ALL.len() - 1);
    write_long(out, class as i64);
    write_long(out, event.time_us);
    write_long(out, event.ingest_time_us);
    write_bytes(out, event.tenant.as_bytes());
    write_bytes(out, event.partition_key.as_bytes());
    let source = &event.source;
    write_bytes(out, source.format.as_bytes());
    write_bytes(out, source.topic.as_bytes());
    write_long(out, i64::from(source.partition));
    write_long(out, source.offset);
    put_opt_str(out, &source.vendor);
    put_opt_str(out, &source.product);
    for text in [&event.severity, &event.message, &event.action, &event.outcome, &event.host] {
        put_opt_str(out, text);
    }
    if let Some(actor) = &event.actor {
        write_long(out, 1);
        for text in [&actor.user, &actor.domain, &actor.session_id] {
            put_opt_str(out, text);
        }
    } else {
        write_long(out, 0);
    }
    for endpoint in [&event.src, &event.dst] {
        if let Some(endpoint) = endpoint {
            write_long(out, 1);
            put_opt_str(out, &endpoint.ip);
            put_opt_long(out, endpoint.port.map(i64::from));
            put_opt_str(out, &endpoint.hostname);
        } else {
            write_long(out, 0);
        }
    }
    if let Some(p) = &event.process {
        write_long(out, 1);
        put_opt_long(out, p.pid);
        for text in [&p.name, &p.path, &p.command_line, &p.user, &p.parent_name, &p.parent_command_line] {
            put_opt_str(out, text);
        }
    } else {
        write_long(out, 0);
    }
    if let Some(h) = &event.http {
        write_long(out, 1);
        put_opt_str(out, &h.method);
        put_opt_str(out, &h.url);
        put_opt_long(out, h.status.map(i64::from));
        put_opt_str(out, &h.user_agent);
        put_opt_str(out, &h.referrer);
        put_opt_long(out, h.bytes_in);
        put_opt_long(out, h.bytes_out);
    } else {
        write_long(out, 0);
    }
    if let Some(d) = &event.dns {
        write_long(out, 1);
        put_opt_str(out, &d.query);
        put_opt_str(out, &d.qtype);
        put_opt_str(out, &d.rcode);
        put_strings(out, &d.answers);
    } else {
        write_long(out, 0);
    }
    if let Some(f) = &event.file {
        write_long(out, 1);
        put_opt_str(out, &f.path);
        put_opt_str(out, &f.name);
        put_opt_long(out, f.size);
        for text in [&f.md5, &f.sha1, &f.sha256] {
            put_opt_str(out, text);
        }
    } else {
        write_long(out, 0);
    }
    if let Some(l) = &event.llm {
        write_long(out, 1);
        for text in [&l.model, &l.session_id, &l.prompt, &l.response] {
            put_opt_str(out, text);
        }
        put_opt_long(out, l.tokens_in);
        put_opt_long(out, l.tokens_out);
    } else {
        write_long(out, 0);
    }
    put_strings(out, &event.tags);
    put_map(out, &event.attrs, |out, value| write_bytes(out, value.as_bytes()));
    put_map(out, &event.features, put_double);
    put_opt_str(out, &event.raw);
    encode_detections(plan, event, out)
}

/// Appends the Avro encoding of `event`'s detection fields (`matches`, `correlations`,
/// `score`, the last of `plan`, which has [`SHAPE`]) to `out`.
pub(super) fn encode_detections(plan: &Plan, event: &Event, out: &mut Vec<u8>) -> Result<(), PlanError> {
    let (_, matches, correlations) = event_fields(plan)?;
    avro_plan::encode(matches, &event.matches, out)?;
    avro_plan::encode(correlations, &event.correlations, out)?;
    if let Some(score) = &event.score {
        write_long(out, 1);
        put_double(out, &score.risk);
        write_bytes(out, score.model_version.as_bytes());
        put_map(out, &score.parts, put_double);
        put_strings(out, &score.top_features);
    } else {
        write_long(out, 0);
    }
    Ok(())
}

/// A map in one block (as serde's path writes it), each value written by `value`.
fn put_map<V>(out: &mut Vec<u8>, map: &FieldMap<V>, value: impl Fn(&mut Vec<u8>, &V)) {
    if !map.is_empty() {
        write_long(out, map.len() as i64);
        for (key, v) in map {
            write_bytes(out, key.as_bytes());
            value(out, v);
        }
    }
    write_long(out, 0);
}

fn put_double(out: &mut Vec<u8>, value: &f64) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_opt_str(out: &mut Vec<u8>, text: &Option<String>) {
    if let Some(text) = text {
        write_long(out, 1);
        write_bytes(out, text.as_bytes());
    } else {
        write_long(out, 0);
    }
}

fn put_opt_long(out: &mut Vec<u8>, value: Option<i64>) {
    if let Some(value) = value {
        write_long(out, 1);
        write_long(out, value);
    } else {
        write_long(out, 0);
    }
}

fn put_strings(out: &mut Vec<u8>, items: &[String]) {
    if !items.is_empty() {
        write_long(out, items.len() as i64);
        for item in items {
            write_bytes(out, item.as_bytes());
        }
    }
    write_long(out, 0);
}

fn string(input: &mut &[u8]) -> Result<String, PlanError> {
    read_str(input).map(str::to_owned)
}

/// The branch of a `["null", x]` union: whether an x follows.
#[inline(always)]
fn present(input: &mut &[u8]) -> Result<bool, PlanError> {
    match read_long(input)? {
        0 => Ok(false),
        1 => Ok(true),
        other => fail(format!("union branch {other} of 2")),
    }
}

fn opt_string(input: &mut &[u8]) -> Result<Option<String>, PlanError> {
    if present(input)? { string(input).map(Some) } else { Ok(None) }
}

fn opt_long(input: &mut &[u8]) -> Result<Option<i64>, PlanError> {
    if present(input)? { read_long(input).map(Some) } else { Ok(None) }
}

fn opt_int(input: &mut &[u8]) -> Result<Option<i32>, PlanError> {
    if present(input)? { read_int(input).map(Some) } else { Ok(None) }
}

fn opt_endpoint(input: &mut &[u8]) -> Result<Option<Endpoint>, PlanError> {
    if !present(input)? {
        return Ok(None);
    }
    Ok(Some(Endpoint { ip: opt_string(input)?, port: opt_int(input)?, hostname: opt_string(input)? }))
}

fn class(input: &mut &[u8]) -> Result<EventClass, PlanError> {
    // SHAPE names the symbols in `EventClass::ALL`'s order (a unit test checks).
    let index = read_int(input)?;
    usize::try_from(index)
        .ok()
        .and_then(|i| EventClass::ALL.get(i).copied())
        .map_or_else(|| fail(format!("enum symbol {index} of {}", EventClass::ALL.len())), Ok)
}

fn opt_score(input: &mut &[u8]) -> Result<Option<Score>, PlanError> {
    if !present(input)? {
        return Ok(None);
    }
    Ok(Some(Score { risk: read_double(input)?, model_version: string(input)?, parts: map(input, read_double)?, top_features: strings(input)? }))
}

fn read_double(input: &mut &[u8]) -> Result<f64, PlanError> {
    let bytes = avro_plan::take(input, 8)?;
    let mut le = [0u8; 8];
    le.copy_from_slice(bytes);
    Ok(f64::from_le_bytes(le))
}

/// Calls `item` once per item of an array or map in Avro's blocks.
fn blocks(input: &mut &[u8], mut item: impl FnMut(&mut &[u8]) -> Result<(), PlanError>) -> Result<(), PlanError> {
    let mut announced = 0;
    loop {
        let count = block_count(input, &mut announced)?;
        if count == 0 {
            return Ok(());
        }
        for _ in 0..count {
            item(input)?;
        }
    }
}

fn strings(input: &mut &[u8]) -> Result<Vec<String>, PlanError> {
    let mut out = Vec::new();
    blocks(input, |input| {
        out.push(string(input)?);
        Ok(())
    })?;
    Ok(out)
}

fn map<V>(input: &mut &[u8], mut value: impl FnMut(&mut &[u8]) -> Result<V, PlanError>) -> Result<FieldMap<V>, PlanError> {
    let mut out = FieldMap::with_hasher(map_hasher());
    let mut announced = 0;
    loop {
        let count = block_count(input, &mut announced)?;
        if count == 0 {
            return Ok(out);
        }
        // Room for the block at once (an entry takes at least two bytes, so a forged count
        // cannot reserve more than the input could hold).
        out.reserve((count as usize).min(input.len() / 2));
        for _ in 0..count {
            let key = string(input)?;
            let value = value(input)?;
            out.insert(key, value);
        }
    }
}

/// The hasher of every map an event decodes into: one random seed per process, cloned,
/// instead of `RandomState::new()` drawing keys for each map (~80 instructions, three maps
/// per event per stage). Producers choose `attrs` keys, so the seed stays random.
fn map_hasher() -> ahash::RandomState {
    static SEED: std::sync::LazyLock<ahash::RandomState> = std::sync::LazyLock::new(ahash::RandomState::new);
    SEED.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_names_the_classes_in_the_order_of_event_class_all() {
        let names: Vec<&str> = EventClass::ALL.iter().map(|c| c.as_str()).collect();
        assert!(SHAPE.contains(&format!("class:e({})", names.join(","))));
    }
}
