//! Direct Avro decoding: bytes to our Rust types in one pass, without `apache_avro::Value`.
//!
//! Every stage decodes each record it reads, so decoding is the largest single cost of the
//! pipeline: apache-avro first builds a `Value` tree (an allocation per field, per string,
//! per map entry) and then deserializes our types from that tree, about a third of the
//! whole pipeline's CPU in a profile of the embedded run. This module compiles a schema
//! once into a [`Plan`] (the schema with references resolved and only what decoding needs)
//! and implements a serde `Deserializer` that walks the plan over the bytes, handing the
//! derived `Deserialize` impls borrowed strings and numbers straight from the input.
//!
//! It decodes data written with the *same* schema it was planned from; data written with
//! an older version still goes through apache-avro's schema resolution (see `avro.rs`).
//!
//! [`encode`] is the other direction, a serde `Serializer` that writes Avro binary along the
//! plan. apache-avro's schema-aware serializer looks every struct field up by name in the
//! schema; here fields are expected in schema order and each name is checked against the
//! plan's. Each Rust value must meet exactly its Avro type (no promotions). Anything else
//! (a field out of order, a union with several non-null branches, an int for a double) is
//! an error that names the field. There is deliberately no fallback to apache-avro: its
//! 0.20 writer places struct fields by their position in the Rust type, so a type out of
//! step with its schema would be written with values in the wrong fields.
//! Input comes from outside, so nothing here panics or trusts a length: every length and
//! block count is checked against the bytes that remain before anything is allocated.

use std::collections::HashMap;

use apache_avro::schema::{Name, Schema};
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

/// A schema reduced to what decoding needs, references resolved.
#[derive(Debug)]
pub enum Plan {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Array(Box<Plan>),
    Map(Box<Plan>),
    Union(Vec<Plan>),
    /// The fields in schema order, and the Rust type known to declare the same fields in the
    /// same order ([`SameFields`]).
    Record(Vec<(String, Plan)>, SameFields),
    Enum(Vec<String>),
}

/// The field list (serde's `FIELDS` of a derived `Deserialize`) last found to name a
/// record's fields exactly in schema order, by address. For such a type a field is handed
/// to serde by its index, and serde's derived code picks the field with a jump instead of
/// comparing the name with each field's in turn (those comparisons were ~4% of the
/// pipeline's instructions: every stage decodes every event, ~60 fields each).
#[derive(Debug, Default)]
pub struct SameFields(std::sync::atomic::AtomicUsize);

impl SameFields {
    /// Whether `fields` are exactly `plan`'s names in order (checked once per type).
    fn check(&self, plan: &[(String, Plan)], fields: &'static [&'static str]) -> bool {
        use std::sync::atomic::Ordering;
        let address = fields.as_ptr() as usize;
        if self.0.load(Ordering::Relaxed) == address {
            return true;
        }
        let same = plan.len() == fields.len() && plan.iter().zip(fields).all(|((name, _), field)| name == field);
        if same {
            self.0.store(address, Ordering::Relaxed);
        }
        same
    }
}

/// Nesting deeper than this is refused when planning (a recursive schema would never end).
const MAX_PLAN_DEPTH: usize = 32;

impl Plan {
    /// Plans `schema`, or `None` when it uses something the direct decoder does not handle
    /// (fixed, decimal, uuid, durations, recursive types): those schemas keep the generic
    /// path.
    pub fn new(schema: &Schema) -> Option<Plan> {
        let resolved = apache_avro::schema::ResolvedSchema::try_from(schema).ok()?;
        Self::build(schema, resolved.get_names(), 0)
    }

    fn build(schema: &Schema, names: &HashMap<Name, &Schema>, depth: usize) -> Option<Plan> {
        if depth > MAX_PLAN_DEPTH {
            return None;
        }
        let plan = |s: &Schema| Self::build(s, names, depth + 1);
        Some(match schema {
            Schema::Null => Plan::Null,
            Schema::Boolean => Plan::Boolean,
            Schema::Int | Schema::Date | Schema::TimeMillis => Plan::Int,
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Plan::Long,
            Schema::Float => Plan::Float,
            Schema::Double => Plan::Double,
            Schema::Bytes => Plan::Bytes,
            Schema::String => Plan::String,
            Schema::Array(array) => Plan::Array(Box::new(plan(&array.items)?)),
            Schema::Map(map) => Plan::Map(Box::new(plan(&map.types)?)),
            Schema::Union(union) => Plan::Union(union.variants().iter().map(plan).collect::<Option<_>>()?),
            Schema::Record(record) => {
                Plan::Record(record.fields.iter().map(|f| Some((f.name.clone(), plan(&f.schema)?))).collect::<Option<_>>()?, SameFields::default())
            }
            Schema::Enum(e) => Plan::Enum(e.symbols.clone()),
            Schema::Ref { name } => {
                let target = names.get(name).or_else(|| names.iter().find(|(n, _)| n.name == name.name).map(|(_, s)| s))?;
                plan(target)?
            }
            _ => return None,
        })
    }
}

/// Why a datum did not decode.
#[derive(Debug)]
pub struct PlanError(String);

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PlanError {}

impl de::Error for PlanError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        PlanError(msg.to_string())
    }
}

pub(super) fn fail<T>(what: impl Into<String>) -> Result<T, PlanError> {
    Err(PlanError(what.into()))
}

/// Decodes one datum of `plan` from the front of `input` into `T`, advancing `input`.
pub fn decode<'de, T: de::Deserialize<'de>>(plan: &Plan, input: &mut &'de [u8]) -> Result<T, PlanError> {
    T::deserialize(Datum { plan, input })
}

/// Decodes one record of `plan` like [`decode`], and tells where its field `field` began:
/// the number of bytes of `input` before it. Noted on the way (no second pass), so a stage
/// that changes only a record's last fields can copy the bytes before them as they came.
/// `None` when the type read the record some other way than field by field.
pub fn decode_marking<'de, T: de::Deserialize<'de>>(plan: &Plan, input: &mut &'de [u8], field: &str) -> Result<(T, Option<usize>), PlanError> {
    let (fields, position) = record_field(plan, field)?;
    let noted = std::cell::Cell::new(None);
    let start = input.len();
    let value = T::deserialize(Marked { plan, input: &mut *input, mark: (fields.len() - position, &noted) })?;
    Ok((value, noted.get().map(|left| start - left)))
}

/// The top record of [`decode_marking`]: a [`Datum`] whose record fields note one position.
struct Marked<'p, 'a, 'de> {
    plan: &'p Plan,
    input: &'a mut &'de [u8],
    mark: (usize, &'a std::cell::Cell<Option<usize>>),
}

impl<'de> de::Deserializer<'de> for Marked<'_, '_, 'de> {
    type Error = PlanError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PlanError> {
        match self.plan {
            Plan::Record(fields, _) => visit_record(fields, false, self.input, Some(self.mark), visitor),
            plan => Datum { plan, input: self.input }.deserialize_any(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        names: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, PlanError> {
        match self.plan {
            Plan::Record(fields, same) => visit_record(fields, same.check(fields, names), self.input, Some(self.mark), visitor),
            plan => Datum { plan, input: self.input }.deserialize_struct(name, names, visitor),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

/// Hands a record's fields to `visitor`: by index when the type declares them in schema
/// order (`by_index`, from [`SameFields`]), otherwise by name; `mark` as in [`decode_marking`].
fn visit_record<'de, V: Visitor<'de>>(
    fields: &[(String, Plan)],
    by_index: bool,
    input: &mut &'de [u8],
    mark: Option<(usize, &std::cell::Cell<Option<usize>>)>,
    visitor: V,
) -> Result<V::Value, PlanError> {
    visitor.visit_map(Fields { fields: fields.iter(), by_index: by_index.then_some(0), value: None, input, mark })
}

/// Avro's variable-length zig-zag long. Read ~9 million times in the embedded run (every
/// length, union branch and count), so the one-byte case is inlined into each caller and
/// the rest kept out of line.
#[inline(always)]
pub(super) fn read_long(input: &mut &[u8]) -> Result<i64, PlanError> {
    // Most longs on the wire (lengths, union branches, small numbers) take one byte.
    if let Some((&byte, rest)) = input.split_first() {
        if byte & 0x80 == 0 {
            *input = rest;
            return Ok(i64::from(byte >> 1) ^ -i64::from(byte & 1));
        }
    }
    read_long_multibyte(input)
}

#[inline(never)]
fn read_long_multibyte(input: &mut &[u8]) -> Result<i64, PlanError> {
    // Times (microseconds since 1970: 8 bytes) and offsets are the common long ones. Up to
    // eight bytes are read as one word: the first byte without its high bit ends the
    // number, and the 7-bit groups are packed by three shift-and-mask steps. Read a byte
    // at a time, a timestamp took ~130 instructions, 2.4% of the stages' in all (each
    // decoding stage reads two per event); read as a word, `decode_head` fell from 106M
    // to 82M instructions in the embedded run (load/README.md, session 27).
    if let Some(word) = input.first_chunk::<8>().map(|b| u64::from_le_bytes(*b)) {
        let ends = !word & 0x8080_8080_8080_8080;
        if ends != 0 {
            let len = ends.trailing_zeros() as usize / 8 + 1;
            let kept = if len == 8 { word } else { word & ((1u64 << (len * 8)) - 1) };
            let value = pack_groups(kept & 0x7f7f_7f7f_7f7f_7f7f);
            *input = &input[len..];
            return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    read_long_bytewise(input)
}

/// Packs the 7-bit groups of eight little-endian bytes (high bits clear) into 56 bits.
#[inline(always)]
fn pack_groups(x: u64) -> u64 {
    let x = (x & 0x007f_007f_007f_007f) | ((x & 0x7f00_7f00_7f00_7f00) >> 1);
    let x = (x & 0x0000_3fff_0000_3fff) | ((x & 0x3fff_0000_3fff_0000) >> 2);
    (x & 0x0000_0000_0fff_ffff) | ((x & 0x0fff_ffff_0000_0000) >> 4)
}

/// A long one byte at a time: fewer than eight bytes left, or nine and ten byte numbers.
fn read_long_bytewise(input: &mut &[u8]) -> Result<i64, PlanError> {
    // One branch per byte and no bounds check inside the loop.
    let bytes = &input[..input.len().min(10)];
    let mut value: u64 = 0;
    let mut shift = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            *input = &input[i + 1..];
            return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
        shift += 7;
    }
    fail("truncated or overlong variable-length integer")
}

pub(super) fn read_int(input: &mut &[u8]) -> Result<i32, PlanError> {
    let value = read_long(input)?;
    i32::try_from(value).or_else(|_| fail(format!("int out of range: {value}")))
}

/// `n` bytes from the front of `input`; a length beyond what remains is an error.
pub(super) fn take<'de>(input: &mut &'de [u8], n: i64) -> Result<&'de [u8], PlanError> {
    let n = usize::try_from(n).or_else(|_| fail(format!("negative length {n}")))?;
    if n > input.len() {
        return fail(format!("length {n} exceeds the {} bytes left", input.len()));
    }
    let (head, tail) = input.split_at(n);
    *input = tail;
    Ok(head)
}

pub(super) fn read_str<'de>(input: &mut &'de [u8]) -> Result<&'de str, PlanError> {
    let len = read_long(input)?;
    let bytes = take(input, len)?;
    if bytes.is_ascii() {
        // SAFETY: every byte is below 0x80, so the bytes are ASCII and ASCII is UTF-8. Most
        // strings on our topics are ASCII; `is_ascii` checks a word at a time where
        // `from_utf8` walked short strings byte by byte (~3% of the pipeline's instructions).
        return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    std::str::from_utf8(bytes).or_else(|e| fail(format!("string is not UTF-8: {e}")))
}

/// The schema node and the bytes still to read.
struct Datum<'p, 'a, 'de> {
    plan: &'p Plan,
    input: &'a mut &'de [u8],
}

impl<'de> de::Deserializer<'de> for Datum<'_, '_, 'de> {
    type Error = PlanError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PlanError> {
        match self.plan {
            Plan::Null => visitor.visit_unit(),
            Plan::Boolean => match take(self.input, 1)?[0] {
                0 => visitor.visit_bool(false),
                1 => visitor.visit_bool(true),
                other => fail(format!("boolean byte {other}")),
            },
            Plan::Int => visitor.visit_i32(read_int(self.input)?),
            Plan::Long => visitor.visit_i64(read_long(self.input)?),
            Plan::Float => {
                let b = take(self.input, 4)?;
                visitor.visit_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            Plan::Double => {
                let b = take(self.input, 8)?;
                visitor.visit_f64(f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            }
            Plan::Bytes => {
                let len = read_long(self.input)?;
                visitor.visit_borrowed_bytes(take(self.input, len)?)
            }
            Plan::String => visitor.visit_borrowed_str(read_str(self.input)?),
            Plan::Array(items) => visitor.visit_seq(Blocks::new(items, self.input)),
            Plan::Map(values) => visitor.visit_map(Blocks::new(values, self.input)),
            Plan::Union(variants) => {
                let variant = branch(variants, self.input)?;
                Datum { plan: variant, input: self.input }.deserialize_any(visitor)
            }
            Plan::Record(fields, _) => visit_record(fields, false, self.input, None, visitor),
            Plan::Enum(symbols) => visitor.visit_str(symbol(symbols, self.input)?),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PlanError> {
        match self.plan {
            Plan::Union(variants) => match branch(variants, self.input)? {
                Plan::Null => visitor.visit_none(),
                variant => visitor.visit_some(Datum { plan: variant, input: self.input }),
            },
            Plan::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, PlanError> {
        match self.plan {
            Plan::Enum(symbols) => visitor.visit_enum(symbol(symbols, self.input)?.into_deserializer()),
            Plan::String => visitor.visit_enum(read_str(self.input)?.into_deserializer()),
            Plan::Union(union) => {
                let variant = branch(union, self.input)?;
                Datum { plan: variant, input: self.input }.deserialize_enum(name, variants, visitor)
            }
            _ => fail(format!("enum {name} is not an Avro enum or string in this schema")),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        names: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, PlanError> {
        match self.plan {
            Plan::Record(fields, same) => visit_record(fields, same.check(fields, names), self.input, None, visitor),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, PlanError> {
        visitor.visit_newtype_struct(self)
    }

    /// A field the type being read does not have: stepped over, nothing built.
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PlanError> {
        skip(self.plan, self.input)?;
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier
    }
}

fn branch<'p>(variants: &'p [Plan], input: &mut &[u8]) -> Result<&'p Plan, PlanError> {
    let index = read_long(input)?;
    usize::try_from(index).ok().and_then(|i| variants.get(i)).map_or_else(|| fail(format!("union branch {index} of {}", variants.len())), Ok)
}

fn symbol<'p>(symbols: &'p [String], input: &mut &[u8]) -> Result<&'p str, PlanError> {
    let index = read_int(input)?;
    usize::try_from(index).ok().and_then(|i| symbols.get(i)).map_or_else(|| fail(format!("enum symbol {index} of {}", symbols.len())), |s| Ok(s.as_str()))
}

/// An array's or map's items, in Avro's blocks: a count (negative: followed by the block's
/// size in bytes), the items, ..., a zero count.
struct Blocks<'p, 'a, 'de> {
    item: &'p Plan,
    input: &'a mut &'de [u8],
    left_in_block: u64,
    /// Items announced so far, over all blocks.
    announced: u64,
    done: bool,
}

/// At most this many items in one array or map: items of an empty type take no bytes, so
/// the input's length cannot bound the count.
const MAX_ITEMS: u64 = 1 << 24;

impl<'p, 'a, 'de> Blocks<'p, 'a, 'de> {
    fn new(item: &'p Plan, input: &'a mut &'de [u8]) -> Self {
        Blocks { item, input, left_in_block: 0, announced: 0, done: false }
    }

    /// Whether another item follows (reading the next block header when needed).
    fn next_item(&mut self) -> Result<bool, PlanError> {
        while self.left_in_block == 0 {
            if self.done {
                return Ok(false);
            }
            let count = block_count(self.input, &mut self.announced)?;
            if count == 0 {
                self.done = true;
                return Ok(false);
            }
            self.left_in_block = count;
        }
        self.left_in_block -= 1;
        Ok(true)
    }
}

/// Reads the header of an array's or map's next block: its item count, 0 at the end (a
/// negative count is followed by the block's size in bytes, read and not needed).
/// `announced` counts the items of all blocks so far; more than [`MAX_ITEMS`] is an error.
#[inline(always)]
pub(super) fn block_count(input: &mut &[u8], announced: &mut u64) -> Result<u64, PlanError> {
    let count = read_long(input)?;
    if count < 0 {
        read_long(input)?;
    }
    let count = count.unsigned_abs();
    *announced = announced.saturating_add(count);
    if *announced > MAX_ITEMS {
        return fail(format!("more than {MAX_ITEMS} items in one array or map"));
    }
    Ok(count)
}

impl<'de> de::SeqAccess<'de> for Blocks<'_, '_, 'de> {
    type Error = PlanError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, PlanError> {
        if !self.next_item()? {
            return Ok(None);
        }
        seed.deserialize(Datum { plan: self.item, input: self.input }).map(Some)
    }
}

impl<'de> de::MapAccess<'de> for Blocks<'_, '_, 'de> {
    type Error = PlanError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, PlanError> {
        if !self.next_item()? {
            return Ok(None);
        }
        seed.deserialize(de::value::BorrowedStrDeserializer::new(read_str(self.input)?)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, PlanError> {
        seed.deserialize(Datum { plan: self.item, input: self.input })
    }
}

/// A record's fields, as a map keyed by field name (what derived `Deserialize` impls read).
struct Fields<'p, 'a, 'de> {
    fields: std::slice::Iter<'p, (String, Plan)>,
    /// The next field's index, when the type being read declares the record's fields in
    /// schema order ([`SameFields`]); otherwise fields are named.
    by_index: Option<u64>,
    value: Option<&'p Plan>,
    input: &'a mut &'de [u8],
    /// (fields left when the marked field is next, where to note the bytes then left).
    mark: Option<(usize, &'a std::cell::Cell<Option<usize>>)>,
}

impl<'de> de::MapAccess<'de> for Fields<'_, '_, 'de> {
    type Error = PlanError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, PlanError> {
        if let Some((left, noted)) = self.mark {
            if self.fields.len() == left {
                noted.set(Some(self.input.len()));
            }
        }
        let Some((name, plan)) = self.fields.next() else { return Ok(None) };
        self.value = Some(plan);
        match &mut self.by_index {
            Some(index) => {
                *index += 1;
                seed.deserialize(de::value::U64Deserializer::new(*index - 1)).map(Some)
            }
            None => seed.deserialize(de::value::StrDeserializer::new(name)).map(Some),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, PlanError> {
        let Some(plan) = self.value.take() else { return fail("record value before its field name") };
        seed.deserialize(Datum { plan, input: self.input })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.fields.len())
    }
}

/// Writes the fields of record `plan` from `from` on, in schema order, to `out`: with
/// [`decode_marking`], a record is re-encoded with only its last fields replaced (the bytes
/// before them copied as they are). `end` fails unless every field to the last was written.
pub fn suffix_writer<'p, 'o>(plan: &'p Plan, from: &str, out: &'o mut Vec<u8>) -> Result<impl serde::ser::SerializeStruct<Ok = (), Error = PlanError> + use<'p, 'o>, PlanError> {
    let (fields, first) = record_field(plan, from)?;
    Ok(Record { fields: fields[first..].iter(), out })
}

/// A record's fields in schema order, as [`Plan::Record`] holds them.
pub(super) type FieldPlans = [(String, Plan)];

/// The fields of record `plan` and the index of its field `name`.
fn record_field<'p>(plan: &'p Plan, name: &str) -> Result<(&'p FieldPlans, usize), PlanError> {
    let Plan::Record(fields, _) = plan else { return fail("not a record") };
    let Some(position) = fields.iter().position(|(field, _)| field == name) else { return fail(format!("no field {name} in the record")) };
    Ok((fields, position))
}

/// Steps over one datum of `plan` without building anything: lengths are read and checked,
/// strings are not validated (a field skipped is a field not read).
pub(super) fn skip(plan: &Plan, input: &mut &[u8]) -> Result<(), PlanError> {
    let Some(plan) = skip_scalar(plan, input)? else { return Ok(()) };
    match plan {
        Plan::Array(item) | Plan::Map(item) => {
            let keyed = matches!(plan, Plan::Map(_));
            let mut blocks = Blocks::new(item, input);
            while blocks.next_item()? {
                if keyed {
                    skip_scalar(&Plan::String, blocks.input)?;
                }
                if let Some(compound) = skip_scalar(item, blocks.input)? {
                    skip(compound, blocks.input)?;
                }
            }
        }
        Plan::Record(fields, _) => {
            for (_, field) in fields {
                if let Some(compound) = skip_scalar(field, input)? {
                    skip(compound, input)?;
                }
            }
        }
        // A union within a union (not valid Avro, but a plan can hold one).
        other => skip(other, input)?,
    }
    Ok(())
}

/// Steps over `plan` when it is a scalar, or a union whose branch here is one; otherwise
/// reads the union's branch, if any, and gives back what is still to step over. Inlined
/// into [`skip`]'s loops: most skipped fields are `["null", x]` unions of scalars, and a
/// call per field cost more than the field.
#[inline(always)]
fn skip_scalar<'p>(plan: &'p Plan, input: &mut &[u8]) -> Result<Option<&'p Plan>, PlanError> {
    let plan = match plan {
        Plan::Union(variants) => branch(variants, input)?,
        other => other,
    };
    match plan {
        Plan::Null => {}
        Plan::Boolean => drop(take(input, 1)?),
        Plan::Float => drop(take(input, 4)?),
        Plan::Double => drop(take(input, 8)?),
        Plan::Int | Plan::Long => drop(read_long(input)?),
        Plan::Enum(symbols) => drop(symbol(symbols, input)?),
        Plan::Bytes | Plan::String => {
            let len = read_long(input)?;
            take(input, len)?;
        }
        compound => return Ok(Some(compound)),
    }
    Ok(None)
}

pub(super) fn write_long(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.push((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
}

pub(super) fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_long(out, bytes.len() as i64);
    out.extend_from_slice(bytes);
}

/// Appends the Avro encoding of `value` along `plan` to `out`. On error `out` may hold a
/// partial datum; the caller discards it.
pub fn encode<T: serde::Serialize + ?Sized>(plan: &Plan, value: &T, out: &mut Vec<u8>) -> Result<(), PlanError> {
    value.serialize(Writer { plan, out })
}

/// Writes one value of `plan`.
struct Writer<'p, 'o> {
    plan: &'p Plan,
    out: &'o mut Vec<u8>,
}

impl<'p, 'o> Writer<'p, 'o> {
    /// The plan a present value is written with: the plan itself, or inside a union its one
    /// non-null branch (after writing the branch index).
    fn present(self) -> Result<Writer<'p, 'o>, PlanError> {
        match self.plan {
            Plan::Union(variants) => {
                let mut non_null = variants.iter().enumerate().filter(|(_, v)| !matches!(v, Plan::Null));
                match (non_null.next(), non_null.next()) {
                    (Some((index, plan)), None) => {
                        write_long(self.out, index as i64);
                        Ok(Writer { plan, out: self.out })
                    }
                    _ => fail("a union with more than one non-null branch"),
                }
            }
            _ => Ok(self),
        }
    }

    fn integer(self, value: i64) -> Result<(), PlanError> {
        let w = self.present()?;
        match w.plan {
            Plan::Long => write_long(w.out, value),
            Plan::Int if i32::try_from(value).is_ok() => write_long(w.out, value),
            _ => return fail(format!("integer {value} for {:?}", w.plan)),
        }
        Ok(())
    }
}

impl<'p, 'o> serde::Serializer for Writer<'p, 'o> {
    type Ok = ();
    type Error = PlanError;
    type SerializeSeq = Items<'p, 'o>;
    type SerializeTuple = serde::ser::Impossible<(), PlanError>;
    type SerializeTupleStruct = serde::ser::Impossible<(), PlanError>;
    type SerializeTupleVariant = serde::ser::Impossible<(), PlanError>;
    type SerializeMap = Items<'p, 'o>;
    type SerializeStruct = Record<'p, 'o>;
    type SerializeStructVariant = serde::ser::Impossible<(), PlanError>;

    fn serialize_bool(self, v: bool) -> Result<(), PlanError> {
        let w = self.present()?;
        match w.plan {
            Plan::Boolean => w.out.push(u8::from(v)),
            _ => return fail("boolean for a non-boolean field"),
        }
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), PlanError> {
        self.integer(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<(), PlanError> {
        self.integer(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<(), PlanError> {
        self.integer(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<(), PlanError> {
        self.integer(v)
    }
    fn serialize_u8(self, v: u8) -> Result<(), PlanError> {
        self.integer(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<(), PlanError> {
        self.integer(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<(), PlanError> {
        self.integer(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<(), PlanError> {
        self.integer(i64::try_from(v).or_else(|_| fail(format!("{v} does not fit a long")))?)
    }
    fn serialize_f32(self, v: f32) -> Result<(), PlanError> {
        let w = self.present()?;
        match w.plan {
            Plan::Float => w.out.extend_from_slice(&v.to_le_bytes()),
            _ => return fail("float for a non-float field"),
        }
        Ok(())
    }
    fn serialize_f64(self, v: f64) -> Result<(), PlanError> {
        let w = self.present()?;
        match w.plan {
            Plan::Double => w.out.extend_from_slice(&v.to_le_bytes()),
            _ => return fail("double for a non-double field"),
        }
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), PlanError> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> Result<(), PlanError> {
        let w = self.present()?;
        match w.plan {
            Plan::String => write_bytes(w.out, v.as_bytes()),
            Plan::Enum(symbols) => match symbols.iter().position(|s| s == v) {
                Some(index) => write_long(w.out, index as i64),
                None => return fail(format!("{v:?} is not a symbol of the enum")),
            },
            _ => return fail("string for a non-string field"),
        }
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), PlanError> {
        let w = self.present()?;
        match w.plan {
            Plan::Bytes => write_bytes(w.out, v),
            _ => return fail("bytes for a non-bytes field"),
        }
        Ok(())
    }
    fn serialize_none(self) -> Result<(), PlanError> {
        match self.plan {
            Plan::Union(variants) => match variants.iter().position(|v| matches!(v, Plan::Null)) {
                Some(index) => write_long(self.out, index as i64),
                None => return fail("none for a union without null"),
            },
            Plan::Null => {}
            _ => return fail("none for a field that is not nullable"),
        }
        Ok(())
    }
    fn serialize_some<T: serde::Serialize + ?Sized>(self, value: &T) -> Result<(), PlanError> {
        value.serialize(self.present()?)
    }
    fn serialize_unit(self) -> Result<(), PlanError> {
        self.serialize_none()
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), PlanError> {
        self.serialize_none()
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<(), PlanError> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: serde::Serialize + ?Sized>(self, _: &'static str, value: &T) -> Result<(), PlanError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: serde::Serialize + ?Sized>(self, name: &'static str, _: u32, _: &'static str, _: &T) -> Result<(), PlanError> {
        fail(format!("enum {name} with data"))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Items<'p, 'o>, PlanError> {
        let w = self.present()?;
        match (w.plan, len) {
            (Plan::Array(item), Some(len)) => Ok(Items::start(item, len, w.out)),
            (Plan::Array(_), None) => fail("a sequence of unknown length"),
            _ => fail("sequence for a non-array field"),
        }
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, PlanError> {
        fail("tuples")
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeTupleStruct, PlanError> {
        fail("tuple structs")
    }
    fn serialize_tuple_variant(self, _: &'static str, _: u32, _: &'static str, _: usize) -> Result<Self::SerializeTupleVariant, PlanError> {
        fail("tuple variants")
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Items<'p, 'o>, PlanError> {
        let w = self.present()?;
        match (w.plan, len) {
            (Plan::Map(value), Some(len)) => Ok(Items::start(value, len, w.out)),
            (Plan::Map(_), None) => fail("a map of unknown length"),
            _ => fail("map for a non-map field"),
        }
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Record<'p, 'o>, PlanError> {
        let w = self.present()?;
        match w.plan {
            Plan::Record(fields, _) => Ok(Record { fields: fields.iter(), out: w.out }),
            _ => fail(format!("struct {name} for a non-record field")),
        }
    }
    fn serialize_struct_variant(self, name: &'static str, _: u32, _: &'static str, _: usize) -> Result<Self::SerializeStructVariant, PlanError> {
        fail(format!("enum {name} with fields"))
    }
}

/// An array's items or a map's entries: one block of the known length, then the end.
struct Items<'p, 'o> {
    item: &'p Plan,
    left: usize,
    out: &'o mut Vec<u8>,
}

impl<'p, 'o> Items<'p, 'o> {
    fn start(item: &'p Plan, len: usize, out: &'o mut Vec<u8>) -> Self {
        if len > 0 {
            write_long(out, len as i64);
        }
        Items { item, left: len, out }
    }

    fn item<T: serde::Serialize + ?Sized>(&mut self, value: &T) -> Result<(), PlanError> {
        value.serialize(Writer { plan: self.item, out: self.out })
    }

    fn end(self) -> Result<(), PlanError> {
        if self.left != 0 {
            return fail("fewer items than announced");
        }
        self.out.push(0);
        Ok(())
    }
}

impl serde::ser::SerializeSeq for Items<'_, '_> {
    type Ok = ();
    type Error = PlanError;

    fn serialize_element<T: serde::Serialize + ?Sized>(&mut self, value: &T) -> Result<(), PlanError> {
        self.left = self.left.checked_sub(1).map_or_else(|| fail("more items than announced"), Ok)?;
        self.item(value)
    }

    fn end(self) -> Result<(), PlanError> {
        Items::end(self)
    }
}

impl serde::ser::SerializeMap for Items<'_, '_> {
    type Ok = ();
    type Error = PlanError;

    fn serialize_key<T: serde::Serialize + ?Sized>(&mut self, key: &T) -> Result<(), PlanError> {
        self.left = self.left.checked_sub(1).map_or_else(|| fail("more entries than announced"), Ok)?;
        key.serialize(Writer { plan: &Plan::String, out: self.out })
    }

    fn serialize_value<T: serde::Serialize + ?Sized>(&mut self, value: &T) -> Result<(), PlanError> {
        self.item(value)
    }

    fn end(self) -> Result<(), PlanError> {
        Items::end(self)
    }
}

/// A record's fields, which must come in schema order.
struct Record<'p, 'o> {
    fields: std::slice::Iter<'p, (String, Plan)>,
    out: &'o mut Vec<u8>,
}

impl serde::ser::SerializeStruct for Record<'_, '_> {
    type Ok = ();
    type Error = PlanError;

    fn serialize_field<T: serde::Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), PlanError> {
        match self.fields.next() {
            Some((name, plan)) if name == key => value.serialize(Writer { plan, out: self.out }),
            Some((name, _)) => fail(format!("field {key} where the schema has {name}")),
            None => fail(format!("field {key} is not in the schema")),
        }
    }

    fn end(mut self) -> Result<(), PlanError> {
        match self.fields.next() {
            None => Ok(()),
            Some((name, _)) => fail(format!("field {name} was not written")),
        }
    }
}

impl serde::ser::Error for PlanError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        PlanError(msg.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longs_round_trip_and_bad_input_is_an_error() {
        for v in [0i64, 1, -1, 63, -64, 64, i64::MAX, i64::MIN, 1_700_000_000_123_456] {
            let mut buf = Vec::new();
            apache_avro::to_avro_datum(&Schema::Long, apache_avro::types::Value::Long(v)).map(|b| buf = b).unwrap();
            let mut input = buf.as_slice();
            assert_eq!(read_long(&mut input).unwrap(), v);
            assert!(input.is_empty());
        }
        assert!(read_long(&mut &[0x80u8, 0x80][..]).is_err(), "truncated");
        assert!(read_long(&mut &[0xffu8; 11][..]).is_err(), "overlong");
        // A string whose length prefix claims more than is there.
        assert!(read_str(&mut &[0x7eu8, b'a'][..]).is_err());
        assert!(read_str(&mut &[0x01u8][..]).is_err(), "negative length");
    }

    proptest::proptest! {
        /// The word-at-a-time path reads what the byte loop reads, and leaves the same rest:
        /// every length from one to ten bytes, overlong encodings, and whatever follows.
        #[test]
        fn multibyte_longs_read_as_the_byte_loop_reads(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..16), ends_at in 0usize..12) {
            let mut bytes = bytes;
            // A continuation bit on every byte before `ends_at`, so every length is met.
            for (i, b) in bytes.iter_mut().enumerate() {
                if i < ends_at { *b |= 0x80 } else if i == ends_at { *b &= 0x7f }
            }
            let (mut fast, mut slow) = (bytes.as_slice(), bytes.as_slice());
            let (a, b) = (read_long_multibyte(&mut fast), read_long_bytewise(&mut slow));
            proptest::prop_assert_eq!(a.as_ref().ok(), b.as_ref().ok());
            proptest::prop_assert_eq!(a.is_err(), b.is_err());
            proptest::prop_assert_eq!(fast.len(), slow.len());
        }
    }

    #[test]
    fn blocks_with_sizes_and_forged_counts() {
        let plan = Plan::Array(Box::new(Plan::Long));
        // One block of -2 items (with a byte size), then the end.
        let bytes = [0x03u8, 0x04, 0x02, 0x04, 0x00];
        let v: Vec<i64> = decode(&plan, &mut &bytes[..]).unwrap();
        assert_eq!(v, vec![1, 2]);
        let nulls = Plan::Array(Box::new(Plan::Null));
        // 2^40 items of null: refused, not looped over.
        let mut forged = Vec::new();
        let mut n: u64 = (1u64 << 40) << 1;
        while n >= 0x80 {
            forged.push((n as u8) | 0x80);
            n >>= 7;
        }
        forged.push(n as u8);
        assert!(decode::<Vec<()>>(&nulls, &mut forged.as_slice()).is_err());
        // Many blocks of 2^23 nulls each (4 bytes per block header): refused once the
        // total passes the cap, not looped over block after block.
        let mut blocks = Vec::new();
        for _ in 0..64 {
            blocks.extend_from_slice(&[0x80, 0x80, 0x80, 0x08]); // 2^23, zig-zag encoded
        }
        blocks.push(0);
        let error = decode::<Vec<()>>(&nulls, &mut blocks.as_slice()).unwrap_err().to_string();
        assert!(error.contains("items in one array"), "{error}");
    }
}
