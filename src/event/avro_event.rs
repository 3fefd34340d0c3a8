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

use super::avro_plan::{self, block_count, fail, read_int, read_long, read_str, write_bytes, write_long, FieldPlans, Plan, PlanError};
use super::{Actor, Dns, Endpoint, Event, EventClass, FieldMap, File, Http, Llm, Process, Score};

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
/// tells how many bytes came before its `raw` field (the first a detection stage rewrites).
pub(super) fn decode(plan: &Plan, input: &mut &[u8]) -> Result<(Box<Event>, usize), PlanError> {
    let mut event = Box::<Event>::default();
    let at = decode_into(plan, input, &mut event, &mut Vec::new(), Attrs::Read)?;
    Ok((event, at))
}

/// Whether [`decode_into`] builds the event's `attrs` or steps over them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Attrs {
    #[default]
    Read,
    /// Stepped over as [`skip_middle`] steps over fields (lengths checked, strings not
    /// validated), `attrs` left empty: for a stage that reads none of them.
    StepOver,
}

/// [`decode`] into `event`, which holds an earlier record's decoding: every field is
/// written, and its strings are written over in place instead of allocated anew. Strings a
/// record lacks go to `spare` and come back from it where a later record has them. A stage
/// decodes every event it reads, ~45 strings each; allocating and freeing them (on memory a
/// busy stage had not touched lately) was ~10% of a pipeline instance's CPU time under load.
/// After an error `event` holds a mix of two records; the next decoding writes it whole.
pub(super) fn decode_into(plan: &Plan, input: &mut &[u8], event: &mut Event, spare: &mut Vec<String>, attrs: Attrs) -> Result<usize, PlanError> {
    let (_, matches, correlations) = event_fields(plan)?;
    let start = input.len();
    decode_head(input, event)?;
    let source = &mut event.source;
    set_string(&mut source.format, input)?;
    set_string(&mut source.topic, input)?;
    source.partition = read_int(input)?;
    source.offset = read_long(input)?;
    set_opt_string(&mut source.vendor, input, spare)?;
    set_opt_string(&mut source.product, input, spare)?;
    for text in [&mut event.severity, &mut event.message, &mut event.action, &mut event.outcome, &mut event.host] {
        set_opt_string(text, input, spare)?;
    }
    set_opt_record(&mut event.actor, input, spare, |actor, input, spare| {
        for text in [&mut actor.user, &mut actor.domain, &mut actor.session_id] {
            set_opt_string(text, input, spare)?;
        }
        Ok(())
    })?;
    for endpoint in [&mut event.src, &mut event.dst] {
        set_opt_record(endpoint, input, spare, |endpoint, input, spare| {
            set_opt_string(&mut endpoint.ip, input, spare)?;
            endpoint.port = opt_int(input)?;
            set_opt_string(&mut endpoint.hostname, input, spare)
        })?;
    }
    set_opt_record(&mut event.process, input, spare, |p, input, spare| {
        p.pid = opt_long(input)?;
        for text in [&mut p.name, &mut p.path, &mut p.command_line, &mut p.user, &mut p.parent_name, &mut p.parent_command_line] {
            set_opt_string(text, input, spare)?;
        }
        Ok(())
    })?;
    set_opt_record(&mut event.http, input, spare, |h, input, spare| {
        set_opt_string(&mut h.method, input, spare)?;
        set_opt_string(&mut h.url, input, spare)?;
        h.status = opt_int(input)?;
        set_opt_string(&mut h.user_agent, input, spare)?;
        set_opt_string(&mut h.referrer, input, spare)?;
        h.bytes_in = opt_long(input)?;
        h.bytes_out = opt_long(input)?;
        Ok(())
    })?;
    set_opt_record(&mut event.dns, input, spare, |d, input, spare| {
        for text in [&mut d.query, &mut d.qtype, &mut d.rcode] {
            set_opt_string(text, input, spare)?;
        }
        set_strings(&mut d.answers, input, spare)
    })?;
    set_opt_record(&mut event.file, input, spare, |f, input, spare| {
        set_opt_string(&mut f.path, input, spare)?;
        set_opt_string(&mut f.name, input, spare)?;
        f.size = opt_long(input)?;
        for text in [&mut f.md5, &mut f.sha1, &mut f.sha256] {
            set_opt_string(text, input, spare)?;
        }
        Ok(())
    })?;
    set_opt_record(&mut event.llm, input, spare, |l, input, spare| {
        for text in [&mut l.model, &mut l.session_id, &mut l.prompt, &mut l.response] {
            set_opt_string(text, input, spare)?;
        }
        l.tokens_in = opt_long(input)?;
        l.tokens_out = opt_long(input)?;
        Ok(())
    })?;
    set_strings(&mut event.tags, input, spare)?;
    match attrs {
        Attrs::Read => set_map(&mut event.attrs, input, spare, |input, spare| Ok(reuse(spare, read_str(input)?)), recycle)?,
        Attrs::StepOver => {
            for (key, value) in event.attrs.drain() {
                recycle(spare, key);
                recycle(spare, value);
            }
            skip_string_map(input)?;
        }
    }
    set_map(&mut event.features, input, spare, |input, _| read_double(input), |_, _| ())?;
    let detections_at = start - input.len();
    set_opt_string(&mut event.raw, input, spare)?;
    event.matches = avro_plan::decode(matches, input)?;
    event.correlations = avro_plan::decode(correlations, input)?;
    set_opt_score(&mut event.score, input, spare, ScoreParts::Read)?;
    Ok(detections_at)
}

/// Reads the fields every decoding of an event keeps, the first six of [`SHAPE`] (id,
/// class, times, tenant, partition key), into `event`.
fn decode_head(input: &mut &[u8], event: &mut Event) -> Result<(), PlanError> {
    set_string(&mut event.id, input)?;
    event.class = class(input)?;
    event.time_us = read_long(input)?;
    event.ingest_time_us = read_long(input)?;
    set_string(&mut event.tenant, input)?;
    set_string(&mut event.partition_key, input)
}

/// Decodes one event datum of `plan` (which has [`SHAPE`]) into `event` keeping only what
/// the alert stage reads: id, class, times, tenant, partition key, message and the
/// detection fields (the score without its parts), written over `event`'s. The rest is
/// stepped over as serde steps over a field a type lacks (lengths checked, strings not
/// validated, numbers not range-checked), not built; in `event` it must be at its
/// defaults (it is, when only this writes to it).
pub(super) fn decode_summary_into(plan: &Plan, input: &mut &[u8], event: &mut Event, spare: &mut Vec<String>) -> Result<(), PlanError> {
    let (_, matches, correlations) = event_fields(plan)?;
    decode_head(input, event)?;
    skip_middle(input, &mut event.message, spare)?;
    event.matches = avro_plan::decode(matches, input)?;
    event.correlations = avro_plan::decode(correlations, input)?;
    set_opt_score(&mut event.score, input, spare, ScoreParts::StepOver)?;
    Ok(())
}

/// Steps over the fields of [`SHAPE`] from `source` to `raw`, reading only `message` (into
/// `message`), as [`avro_plan::skip`] steps over them along the plan: lengths and union
/// branches checked, strings not validated, numbers not range-checked. `avro_plan::skip`
/// walks the plan, 17 calls per event and ~40% of the alert stage's decoding; written out
/// for the shape, the same takes a fraction of that.
fn skip_middle(input: &mut &[u8], message: &mut Option<String>, spare: &mut Vec<String>) -> Result<(), PlanError> {
    // source: <format:s,topic:s,partition:i,offset:l,vendor:?s,product:?s>
    skip_str(input)?;
    skip_str(input)?;
    read_long(input)?;
    read_long(input)?;
    skip_opt_strs(input, 2)?;
    // severity, message, action, outcome, host
    skip_opt_strs(input, 1)?;
    set_opt_string(message, input, spare)?;
    skip_opt_strs(input, 3)?;
    // actor: ?<user:?s,domain:?s,session_id:?s>
    if present(input)? {
        skip_opt_strs(input, 3)?;
    }
    // src, dst: ?<ip:?s,port:?i,hostname:?s>
    for _ in 0..2 {
        if present(input)? {
            skip_opt_strs(input, 1)?;
            skip_opt_long(input)?;
            skip_opt_strs(input, 1)?;
        }
    }
    // process: ?<pid:?l,name:?s,path:?s,command_line:?s,user:?s,parent_name:?s,parent_command_line:?s>
    if present(input)? {
        skip_opt_long(input)?;
        skip_opt_strs(input, 6)?;
    }
    // http: ?<method:?s,url:?s,status:?i,user_agent:?s,referrer:?s,bytes_in:?l,bytes_out:?l>
    if present(input)? {
        skip_opt_strs(input, 2)?;
        skip_opt_long(input)?;
        skip_opt_strs(input, 2)?;
        skip_opt_long(input)?;
        skip_opt_long(input)?;
    }
    // dns: ?<query:?s,qtype:?s,rcode:?s,answers:[s]>
    if present(input)? {
        skip_opt_strs(input, 3)?;
        blocks(input, skip_str)?;
    }
    // file: ?<path:?s,name:?s,size:?l,md5:?s,sha1:?s,sha256:?s>
    if present(input)? {
        skip_opt_strs(input, 2)?;
        skip_opt_long(input)?;
        skip_opt_strs(input, 3)?;
    }
    // llm: ?<model:?s,session_id:?s,prompt:?s,response:?s,tokens_in:?l,tokens_out:?l>
    if present(input)? {
        skip_opt_strs(input, 4)?;
        skip_opt_long(input)?;
        skip_opt_long(input)?;
    }
    // tags: [s], attrs: {s}, features: {d}, raw: ?s
    blocks(input, skip_str)?;
    skip_string_map(input)?;
    skip_double_map(input)?;
    skip_opt_strs(input, 1)
}

/// Steps over a map of strings (`{s}`: an event's attrs).
fn skip_string_map(input: &mut &[u8]) -> Result<(), PlanError> {
    blocks(input, |input| {
        skip_str(input)?;
        skip_str(input)
    })
}

/// Steps over a map of doubles (`{d}`: an event's features, a score's parts).
fn skip_double_map(input: &mut &[u8]) -> Result<(), PlanError> {
    blocks(input, |input| {
        skip_str(input)?;
        avro_plan::take(input, 8).map(drop)
    })
}

#[inline(always)]
fn skip_str(input: &mut &[u8]) -> Result<(), PlanError> {
    let len = read_long(input)?;
    avro_plan::take(input, len).map(drop)
}

/// Steps over `n` fields of type `["null", "string"]`.
#[inline(always)]
fn skip_opt_strs(input: &mut &[u8], n: usize) -> Result<(), PlanError> {
    for _ in 0..n {
        if present(input)? {
            skip_str(input)?;
        }
    }
    Ok(())
}

/// Steps over a `["null", "long"]` or `["null", "int"]`.
#[inline(always)]
fn skip_opt_long(input: &mut &[u8]) -> Result<(), PlanError> {
    if present(input)? {
        read_long(input)?;
    }
    Ok(())
}

/// Whether [`set_opt_score`] reads the score's `parts` or steps over them.
#[derive(Clone, Copy)]
enum ScoreParts {
    Read,
    /// The alert stage's summary: it reads the risk and the top features, never the parts
    /// (about 900 of the 1,350 instructions its score cost per event: three hashed map
    /// entries). They are stepped over as [`skip_middle`] steps, and stay empty.
    StepOver,
}

/// Reads a `score` (`["null", record]`) into `score`, which holds an earlier record's: its
/// map and strings are written over instead of allocated anew (every event the alert stage
/// reads has a score).
fn set_opt_score(score: &mut Option<Score>, input: &mut &[u8], spare: &mut Vec<String>, parts: ScoreParts) -> Result<(), PlanError> {
    if !present(input)? {
        // Dropped, not recycled: the ML stage puts a score on every event it decodes, and
        // handing its strings to `spare` for the next (scoreless) input cost it ~600
        // instructions per event more than freeing them.
        *score = None;
        return Ok(());
    }
    let score = score.get_or_insert_with(|| Score { risk: 0.0, model_version: String::new(), parts: FieldMap::default(), top_features: Vec::new() });
    score.risk = read_double(input)?;
    set_string(&mut score.model_version, input)?;
    match parts {
        ScoreParts::Read => set_map(&mut score.parts, input, spare, |input, _| read_double(input), |_, _| ())?,
        ScoreParts::StepOver => skip_double_map(input)?,
    }
    set_strings(&mut score.top_features, input, spare)
}

/// Appends the Avro encoding of `event` along `plan` (which has [`SHAPE`]) to `out`.
pub(super) fn encode(plan: &Plan, event: &Event, out: &mut Vec<u8>) -> Result<(), PlanError> {
    write_bytes(out, event.id.as_bytes());
    // SHAPE lists the symbols in `EventClass::ALL`'s order.
    write_long(out, event.class.index() as i64);
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
    encode_detections(plan, event, out)
}

/// Appends the Avro encoding of the fields a detection stage may rewrite (`raw`, which
/// quick-scan drops, and the detection fields `matches`, `correlations`, `score`: the last
/// of `plan`, which has [`SHAPE`]) to `out`.
pub(super) fn encode_detections(plan: &Plan, event: &Event, out: &mut Vec<u8>) -> Result<(), PlanError> {
    let (_, matches, correlations) = event_fields(plan)?;
    put_opt_str(out, &event.raw);
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

/// Most strings an [`EventSlot`](super::avro::EventSlot) keeps for reuse, and the largest
/// capacity it keeps: enough for any usual event, while one with 100,000 `attrs` or a
/// 64 KiB `raw` does not leave that much memory held after it.
const SPARE_STRINGS: usize = 512;
const SPARE_CAPACITY: usize = 4096;

/// Keeps `text` (no longer needed where it was) for a later [`reuse`].
fn recycle(spare: &mut Vec<String>, text: String) {
    if spare.len() < SPARE_STRINGS && text.capacity() <= SPARE_CAPACITY {
        spare.push(text);
    }
}

/// `text` in a string from `spare` (allocating only when there is none).
fn reuse(spare: &mut Vec<String>, text: &str) -> String {
    let mut out = spare.pop().unwrap_or_default();
    overwrite(&mut out, text);
    out
}

/// `text` in `target`, in its buffer.
fn overwrite(target: &mut String, text: &str) {
    target.clear();
    target.push_str(text);
}

/// Reads a string over `target`'s.
fn set_string(target: &mut String, input: &mut &[u8]) -> Result<(), PlanError> {
    overwrite(target, read_str(input)?);
    Ok(())
}

/// Reads a `["null", "string"]` over `target`, reusing its string or one from `spare`.
fn set_opt_string(target: &mut Option<String>, input: &mut &[u8], spare: &mut Vec<String>) -> Result<(), PlanError> {
    if present(input)? {
        let text = read_str(input)?;
        match target {
            Some(existing) => overwrite(existing, text),
            None => *target = Some(reuse(spare, text)),
        }
    } else if let Some(old) = target.take() {
        recycle(spare, old);
    }
    Ok(())
}

/// Reads a `["null", record]` over `target` with `fill`, which must write every field.
fn set_opt_record<T: Default + Strings>(
    target: &mut Option<T>,
    input: &mut &[u8],
    spare: &mut Vec<String>,
    fill: impl FnOnce(&mut T, &mut &[u8], &mut Vec<String>) -> Result<(), PlanError>,
) -> Result<(), PlanError> {
    if present(input)? {
        fill(target.get_or_insert_with(T::default), input, spare)
    } else {
        if let Some(old) = target.take() {
            old.recycle(spare);
        }
        Ok(())
    }
}

/// Reads an array of strings over `items`.
fn set_strings(items: &mut Vec<String>, input: &mut &[u8], spare: &mut Vec<String>) -> Result<(), PlanError> {
    let mut count = 0;
    blocks(input, |input| {
        let text = read_str(input)?;
        match items.get_mut(count) {
            Some(existing) => overwrite(existing, text),
            None => items.push(reuse(spare, text)),
        }
        count += 1;
        Ok(())
    })?;
    for old in items.drain(count.min(items.len())..) {
        recycle(spare, old);
    }
    Ok(())
}

/// Reads a map over `map`: its entries are emptied out (keys and, through `recycle_value`,
/// values kept in `spare`) and the record's put in, the table keeping its room.
fn set_map<V>(
    map: &mut FieldMap<V>,
    input: &mut &[u8],
    spare: &mut Vec<String>,
    mut value: impl FnMut(&mut &[u8], &mut Vec<String>) -> Result<V, PlanError>,
    recycle_value: impl Fn(&mut Vec<String>, V),
) -> Result<(), PlanError> {
    for (key, old) in map.drain() {
        recycle(spare, key);
        recycle_value(spare, old);
    }
    if map.capacity() > 4 * SPARE_STRINGS {
        map.shrink_to(SPARE_STRINGS);
    }
    let mut announced = 0;
    loop {
        let count = block_count(input, &mut announced)?;
        if count == 0 {
            return Ok(());
        }
        // Room for the block at once, no more than the input could hold (an entry takes at
        // least two bytes, so a forged count cannot reserve more).
        map.reserve((count as usize).min(input.len() / 2));
        for _ in 0..count {
            let key = reuse(spare, read_str(input)?);
            let value = value(input, spare)?;
            // A repeated key keeps the first key string and the last value, as inserting
            // each entry in turn into a map does (serde's path).
            if let Some(old) = map.insert(key, value) {
                recycle_value(spare, old);
            }
        }
    }
}

/// The strings of an optional part of an event, handed to `spare` when a record lacks it.
trait Strings {
    fn recycle(self, spare: &mut Vec<String>);
}

fn recycle_all<const N: usize>(spare: &mut Vec<String>, texts: [Option<String>; N]) {
    for text in texts.into_iter().flatten() {
        recycle(spare, text);
    }
}

impl Strings for Actor {
    fn recycle(self, spare: &mut Vec<String>) {
        recycle_all(spare, [self.user, self.domain, self.session_id]);
    }
}

impl Strings for Endpoint {
    fn recycle(self, spare: &mut Vec<String>) {
        recycle_all(spare, [self.ip, self.hostname]);
    }
}

impl Strings for Process {
    fn recycle(self, spare: &mut Vec<String>) {
        recycle_all(spare, [self.name, self.path, self.command_line, self.user, self.parent_name, self.parent_command_line]);
    }
}

impl Strings for Http {
    fn recycle(self, spare: &mut Vec<String>) {
        recycle_all(spare, [self.method, self.url, self.user_agent, self.referrer]);
    }
}

impl Strings for Dns {
    fn recycle(self, spare: &mut Vec<String>) {
        recycle_all(spare, [self.query, self.qtype, self.rcode]);
        for answer in self.answers {
            recycle(spare, answer);
        }
    }
}

impl Strings for File {
    fn recycle(self, spare: &mut Vec<String>) {
        recycle_all(spare, [self.path, self.name, self.md5, self.sha1, self.sha256]);
    }
}

impl Strings for Llm {
    fn recycle(self, spare: &mut Vec<String>) {
        recycle_all(spare, [self.model, self.session_id, self.prompt, self.response]);
    }
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

fn opt_long(input: &mut &[u8]) -> Result<Option<i64>, PlanError> {
    if present(input)? { read_long(input).map(Some) } else { Ok(None) }
}

fn opt_int(input: &mut &[u8]) -> Result<Option<i32>, PlanError> {
    if present(input)? { read_int(input).map(Some) } else { Ok(None) }
}

fn class(input: &mut &[u8]) -> Result<EventClass, PlanError> {
    // SHAPE names the symbols in `EventClass::ALL`'s order (a unit test checks).
    let index = read_int(input)?;
    usize::try_from(index)
        .ok()
        .and_then(|i| EventClass::ALL.get(i).copied())
        .map_or_else(|| fail(format!("enum symbol {index} of {}", EventClass::ALL.len())), Ok)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_names_the_classes_in_the_order_of_event_class_all() {
        let names: Vec<&str> = EventClass::ALL.iter().map(|c| c.as_str()).collect();
        assert!(SHAPE.contains(&format!("class:e({})", names.join(","))));
        // And the index the encoder writes is the position in `ALL`.
        for (i, class) in EventClass::ALL.iter().enumerate() {
            assert_eq!(class.index(), i, "{class:?}");
        }
    }
}
