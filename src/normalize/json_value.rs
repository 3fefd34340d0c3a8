//! A parsed JSON event that borrows its strings from the input.
//!
//! `serde_json::Value` owns every key and string (an allocation each) and keeps objects in
//! B-trees (more allocations); parsing a ~200-byte event that way and dropping it again
//! cost ~12,000 instructions, a quarter of normalize. Here a key or string without escapes
//! is a slice of the input, and an object is a vector of entries sorted by key once parsed,
//! so lookups, iteration order (sorted) and duplicate keys (the last one wins) behave as
//! they did with `serde_json::Map`.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

/// One JSON value of a document parsed from `&'a str`.
#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Object<'a>),
}

/// A JSON object: its entries sorted by key, one per key.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Object<'a> {
    entries: Vec<(Cow<'a, str>, Json<'a>)>,
}

impl<'a> Json<'a> {
    /// Parses `text`, which must hold exactly one JSON value.
    pub fn parse(text: &'a str) -> Result<Json<'a>, serde_json::Error> {
        serde_json::from_str(text)
    }

    pub fn as_object(&self) -> Option<&Object<'a>> {
        match self {
            Json::Object(object) => Some(object),
            _ => None,
        }
    }

    /// The member `key` of an object (`None` for anything else).
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        self.as_object()?.get(key)
    }

    pub fn is_object(&self) -> bool {
        matches!(self, Json::Object(_))
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Json::Number(n) => n.as_f64(),
            _ => None,
        }
    }
}

impl<'a> Object<'a> {
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        self.entries.binary_search_by(|(k, _)| k.as_ref().cmp(key)).ok().map(|i| &self.entries[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Json<'a>)> {
        self.entries.iter().map(|(k, v)| (k.as_ref(), v))
    }
}

impl<'de> de::Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Json<'de>, E> {
        // JSON has no NaN or infinity, so this is always a number.
        Ok(Number::from_f64(v).map_or(Json::Null, Json::Number))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        // serde_json gives no size hint; most event objects have a few to a dozen keys.
        let mut entries: Vec<(Cow<'de, str>, Json<'de>)> = Vec::with_capacity(map.size_hint().unwrap_or(12).min(64));
        while let Some(Key(key)) = map.next_key()? {
            entries.push((key, map.next_value()?));
        }
        // One entry per key, the last one given (what inserting them in turn into a map
        // leaves), in key order: reversed, then a stable sort puts the last of equal keys
        // first, and `dedup_by` keeps the first of each run.
        entries.reverse();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|later, first| later.0 == first.0);
        Ok(Json::Object(Object { entries }))
    }
}

/// An object key: borrowed from the input unless it had escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same document through `serde_json::Value`, for comparison.
    fn same_as_serde_json(text: &str) {
        fn convert(v: &serde_json::Value) -> Json<'static> {
            match v {
                serde_json::Value::Null => Json::Null,
                serde_json::Value::Bool(b) => Json::Bool(*b),
                serde_json::Value::Number(n) => Json::Number(n.clone()),
                serde_json::Value::String(s) => Json::String(Cow::Owned(s.clone())),
                serde_json::Value::Array(items) => Json::Array(items.iter().map(convert).collect()),
                serde_json::Value::Object(map) => Json::Object(Object { entries: map.iter().map(|(k, v)| (Cow::Owned(k.clone()), convert(v))).collect() }),
            }
        }
        let ours = Json::parse(text);
        let theirs: Result<serde_json::Value, _> = serde_json::from_str(text);
        match (ours, theirs) {
            (Ok(ours), Ok(theirs)) => assert_eq!(ours, convert(&theirs), "{text}"),
            (Err(_), Err(_)) => {}
            (ours, theirs) => panic!("{text}: ours {ours:?}, serde_json {theirs:?}"),
        }
    }

    #[test]
    fn parses_as_serde_json_does() {
        for text in [
            r#"{"b":1,"a":"x","c":{"z":null,"y":[true,false,1.5,-2,18446744073709551615]}}"#,
            r#"{"k":"first","k":"last","esc\"aped":"a\nb\u00e9","":""}"#,
            r#"[1,{"a":{}},[]]"#,
            r#""just a string""#,
            r#"{"a":1,}"#,
            r#"{"a":1} trailing"#,
            r#"{"deep":[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]}"#,
        ] {
            same_as_serde_json(text);
        }
    }

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let text = r#"{"plain":"value","esc":"a\"b"}"#;
        let json = Json::parse(text).unwrap();
        let object = json.as_object().unwrap();
        assert!(matches!(object.get("plain"), Some(Json::String(Cow::Borrowed("value")))));
        assert!(matches!(object.get("esc"), Some(Json::String(Cow::Owned(_)))));
        assert_eq!(object.iter().map(|(k, _)| k).collect::<Vec<_>>(), ["esc", "plain"]);
    }
}
