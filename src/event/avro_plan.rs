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
    Record(Vec<(String, Plan)>),
    Enum(Vec<String>),
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
                Plan::Record(record.fields.iter().map(|f| Some((f.name.clone(), plan(&f.schema)?))).collect::<Option<_>>()?)
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

fn fail<T>(what: impl Into<String>) -> Result<T, PlanError> {
    Err(PlanError(what.into()))
}

/// Decodes one datum of `plan` from the front of `input` into `T`, advancing `input`.
pub fn decode<'de, T: de::Deserialize<'de>>(plan: &Plan, input: &mut &'de [u8]) -> Result<T, PlanError> {
    T::deserialize(Datum { plan, input })
}

/// Avro's variable-length zig-zag long.
fn read_long(input: &mut &[u8]) -> Result<i64, PlanError> {
    let mut value: u64 = 0;
    for (i, &byte) in input.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *input = &input[i + 1..];
            return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    fail("truncated or overlong variable-length integer")
}

fn read_int(input: &mut &[u8]) -> Result<i32, PlanError> {
    let value = read_long(input)?;
    i32::try_from(value).or_else(|_| fail(format!("int out of range: {value}")))
}

/// `n` bytes from the front of `input`; a length beyond what remains is an error.
fn take<'de>(input: &mut &'de [u8], n: i64) -> Result<&'de [u8], PlanError> {
    let n = usize::try_from(n).or_else(|_| fail(format!("negative length {n}")))?;
    if n > input.len() {
        return fail(format!("length {n} exceeds the {} bytes left", input.len()));
    }
    let (head, tail) = input.split_at(n);
    *input = tail;
    Ok(head)
}

fn read_str<'de>(input: &mut &'de [u8]) -> Result<&'de str, PlanError> {
    let len = read_long(input)?;
    let bytes = take(input, len)?;
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
            Plan::Record(fields) => visitor.visit_map(Fields { fields: fields.iter(), value: None, input: self.input }),
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

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, PlanError> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
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
    done: bool,
}

/// At most this many items in one array or map: items of an empty type take no bytes, so
/// the input's length cannot bound the count.
const MAX_ITEMS: u64 = 1 << 24;

impl<'p, 'a, 'de> Blocks<'p, 'a, 'de> {
    fn new(item: &'p Plan, input: &'a mut &'de [u8]) -> Self {
        Blocks { item, input, left_in_block: 0, done: false }
    }

    /// Whether another item follows (reading the next block header when needed).
    fn next_item(&mut self) -> Result<bool, PlanError> {
        while self.left_in_block == 0 {
            if self.done {
                return Ok(false);
            }
            let count = read_long(self.input)?;
            if count == 0 {
                self.done = true;
                return Ok(false);
            }
            if count < 0 {
                read_long(self.input)?; // the block's size in bytes, not needed
            }
            let count = count.unsigned_abs();
            if count > MAX_ITEMS {
                return fail(format!("block of {count} items"));
            }
            self.left_in_block = count;
        }
        self.left_in_block -= 1;
        Ok(true)
    }
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
    value: Option<&'p Plan>,
    input: &'a mut &'de [u8],
}

impl<'de> de::MapAccess<'de> for Fields<'_, '_, 'de> {
    type Error = PlanError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, PlanError> {
        let Some((name, plan)) = self.fields.next() else { return Ok(None) };
        self.value = Some(plan);
        seed.deserialize(de::value::StrDeserializer::new(name)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, PlanError> {
        let Some(plan) = self.value.take() else { return fail("record value before its field name") };
        seed.deserialize(Datum { plan, input: self.input })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.fields.len())
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
    }
}
