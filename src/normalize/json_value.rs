//! A parsed JSON event that borrows its strings from the input.
//!
//! `serde_json::Value` owns every key and string (an allocation each) and keeps objects in
//! B-trees (more allocations); parsing a ~200-byte event that way and dropping it again
//! cost ~12,000 instructions, a quarter of normalize. Here a key or string without escapes
//! is a slice of the input, and an object is a vector of entries sorted by key once parsed,
//! so lookups, iteration order (sorted) and duplicate keys (the last one wins) behave as
//! they did with `serde_json::Map`.
//!
//! [`Json::parse`] reads well-formed documents with a parser of its own ([`Fast`]) and
//! hands anything else to serde_json, which builds the same tree or says what is wrong:
//! serde's visitor calls cost ~9,000 instructions for a 230-byte event, most of the
//! parse.

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
        match Fast::document(text) {
            Some(json) => Ok(json),
            // Malformed, or a case the fast parser leaves to serde_json (a lone surrogate
            // escape, nesting deeper than it goes): serde_json's tree, or its error.
            None => serde_json::from_str(text),
        }
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
        Ok(Json::Object(into_object(entries)))
    }
}

/// One entry per key, the last one given (what inserting them in turn into a map leaves),
/// in key order. Producers often write keys sorted, so that is checked first.
fn into_object<'a>(mut entries: Vec<(Cow<'a, str>, Json<'a>)>) -> Object<'a> {
    if !entries.windows(2).all(|pair| pair[0].0 < pair[1].0) {
        // Reversed, then a stable sort puts the last of equal keys first, and `dedup_by`
        // keeps the first of each run.
        entries.reverse();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|later, first| later.0 == first.0);
    }
    Object { entries }
}

/// Deepest nesting [`Fast`] parses; deeper documents go to serde_json (whose limit is 128).
const FAST_MAX_DEPTH: usize = 64;

/// A JSON parser for well-formed documents, building what serde_json and [`JsonVisitor`]
/// build from them. It gives up (`None`) on anything malformed and on the few things it
/// leaves to serde_json (surrogate escapes, deep nesting); numbers with a fraction or an
/// exponent, and integers beyond 64 bits, are read by serde_json's own number parser, so
/// every number is the one serde_json gives.
struct Fast<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Fast<'a> {
    fn document(text: &'a str) -> Option<Json<'a>> {
        let mut parser = Fast { text, at: 0 };
        let value = parser.value(0)?;
        parser.skip_whitespace();
        (parser.at == text.len()).then_some(value)
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Option<Json<'a>> {
        self.skip_whitespace();
        match self.peek()? {
            b'{' => self.object(depth),
            b'[' => self.array(depth),
            b'"' => self.string().map(Json::String),
            b't' => self.literal("true", Json::Bool(true)),
            b'f' => self.literal("false", Json::Bool(false)),
            b'n' => self.literal("null", Json::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn literal(&mut self, word: &str, value: Json<'a>) -> Option<Json<'a>> {
        let rest = self.text.get(self.at..)?;
        rest.starts_with(word).then(|| {
            self.at += word.len();
            value
        })
    }

    fn object(&mut self, depth: usize) -> Option<Json<'a>> {
        if depth >= FAST_MAX_DEPTH {
            return None;
        }
        self.at += 1; // '{'
        self.skip_whitespace();
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(Json::Object(Object::default()));
        }
        // Most event objects have a few to a dozen keys.
        let mut entries = Vec::with_capacity(12);
        loop {
            self.skip_whitespace();
            if self.peek()? != b'"' {
                return None;
            }
            let key = self.string()?;
            self.skip_whitespace();
            if self.peek()? != b':' {
                return None;
            }
            self.at += 1;
            let value = self.value(depth + 1)?;
            entries.push((key, value));
            self.skip_whitespace();
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(Json::Object(into_object(entries)));
                }
                _ => return None,
            }
        }
    }

    fn array(&mut self, depth: usize) -> Option<Json<'a>> {
        if depth >= FAST_MAX_DEPTH {
            return None;
        }
        self.at += 1; // '['
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek()? == b']' {
            self.at += 1;
            return Some(Json::Array(items));
        }
        loop {
            items.push(self.value(depth + 1)?);
            self.skip_whitespace();
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Some(Json::Array(items));
                }
                _ => return None,
            }
        }
    }

    /// A string at `self.at` (its opening quote): a slice of the input unless it has escapes.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        let bytes = self.text.as_bytes();
        let mut at = self.at + 1;
        let mut owned: Option<String> = None;
        let mut run = at; // where the text not yet copied into `owned` begins
        loop {
            at = special_byte(bytes, at);
            match *bytes.get(at)? {
                b'"' => {
                    // Quotes and backslashes are ASCII, so these are character boundaries.
                    let tail = self.text.get(run..at)?;
                    self.at = at + 1;
                    return Some(match owned {
                        None => Cow::Borrowed(tail),
                        Some(mut text) => {
                            text.push_str(tail);
                            Cow::Owned(text)
                        }
                    });
                }
                b'\\' => {
                    let text = owned.get_or_insert_with(String::new);
                    text.push_str(self.text.get(run..at)?);
                    let (c, len) = escape(bytes.get(at + 1..)?)?;
                    text.push(c);
                    at += 1 + len;
                    run = at;
                }
                // Control characters must be escaped in JSON strings.
                _ => return None,
            }
        }
    }

    fn number(&mut self) -> Option<Json<'a>> {
        let bytes = self.text.as_bytes();
        let start = self.at;
        let mut at = start;
        let negative = bytes.get(at) == Some(&b'-');
        if negative {
            at += 1;
        }
        let digits = at;
        at = digits_end(bytes, digits)?;
        if bytes.get(digits) == Some(&b'0') && at - digits > 1 {
            return None; // a leading zero
        }
        let integer = !matches!(bytes.get(at), Some(b'.' | b'e' | b'E'));
        if !integer {
            if bytes.get(at) == Some(&b'.') {
                at = digits_end(bytes, at + 1)?;
            }
            if let Some(b'e' | b'E') = bytes.get(at) {
                at += 1;
                if let Some(b'+' | b'-') = bytes.get(at) {
                    at += 1;
                }
                at = digits_end(bytes, at)?;
            }
        }
        self.at = at;
        let lexeme = self.text.get(start..at)?;
        if integer {
            // As serde_json reads integers: u64 when positive, i64 when negative, else (too
            // large, or -0) a float.
            if let Ok(magnitude) = lexeme.get(usize::from(negative)..)?.parse::<u64>() {
                if !negative {
                    return Some(Json::Number(magnitude.into()));
                }
                let value = (magnitude as i64).wrapping_neg();
                if value < 0 {
                    return Some(Json::Number(value.into()));
                }
            }
        }
        let value: f64 = serde_json::from_str(lexeme).ok()?;
        Some(Number::from_f64(value).map_or(Json::Null, Json::Number))
    }
}

/// Where the run of one or more decimal digits at `at` ends; `None` when there is none.
fn digits_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut at = start;
    while let Some(b'0'..=b'9') = bytes.get(at) {
        at += 1;
    }
    (at > start).then_some(at)
}

/// The position of the first byte from `at` on that ends a run of plain string text (a
/// quote, a backslash or a control character), or `bytes.len()`. Eight bytes at a time: a
/// byte is flagged when it is below 0x20 or equal to either mark; the lowest flag is exact
/// (borrows only carry upwards).
fn special_byte(bytes: &[u8], mut at: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        let quote = word ^ (ONES * u64::from(b'"'));
        let backslash = word ^ (ONES * u64::from(b'\\'));
        let flags = (quote.wrapping_sub(ONES) & !quote
            | backslash.wrapping_sub(ONES) & !backslash
            | word.wrapping_sub(ONES * 0x20) & !word)
            & HIGH;
        if flags != 0 {
            return at + (flags.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    while let Some(&b) = bytes.get(at) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            return at;
        }
        at += 1;
    }
    at
}

/// The character of the escape after a backslash (`rest` starts after it) and the bytes it
/// took. `None` for a bad escape and for surrogates (left to serde_json).
fn escape(rest: &[u8]) -> Option<(char, usize)> {
    Some(match *rest.first()? {
        b'"' => ('"', 1),
        b'\\' => ('\\', 1),
        b'/' => ('/', 1),
        b'b' => ('\u{8}', 1),
        b'f' => ('\u{c}', 1),
        b'n' => ('\n', 1),
        b'r' => ('\r', 1),
        b't' => ('\t', 1),
        b'u' => {
            let hex = std::str::from_utf8(rest.get(1..5)?).ok()?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            let code = u32::from_str_radix(hex, 16).ok()?;
            // A surrogate (half of a pair, or alone) is for serde_json to judge.
            (char::from_u32(code)?, 5)
        }
        _ => return None,
    })
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
            r#"{"a":"first","a":"last","b":1}"#,
            r#"[1,{"a":{}},[]]"#,
            r#""just a string""#,
            r#"{"a":1,}"#,
            r#"{"a":1} trailing"#,
            r#"{"deep":[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]}"#,
        ] {
            same_as_serde_json(text);
            fast_agrees_with_serde(text).unwrap();
        }
    }

    /// serde_json's parse into [`Json`], without the fast parser.
    fn through_serde(text: &str) -> Result<Json<'_>, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// What the fast parser takes it builds as serde_json does; what it leaves is malformed,
    /// holds a `\u` escape (surrogates are left to serde_json) or nests deep. `Json::parse`
    /// gives serde_json's result either way.
    fn fast_agrees_with_serde(text: &str) -> Result<(), String> {
        let deep = text.matches(['[', '{']).count() >= FAST_MAX_DEPTH;
        if Json::parse(text).map_err(|e| e.to_string()) != through_serde(text).map_err(|e| e.to_string()) {
            return Err(format!("{text:?}: Json::parse differs from serde_json"));
        }
        match (Fast::document(text), through_serde(text)) {
            (Some(fast), Ok(serde)) if fast == serde => Ok(()),
            (None, Err(_)) => Ok(()),
            (None, Ok(_)) if text.contains("\\u") || deep => Ok(()),
            (fast, serde) => Err(format!("{text:?}: fast {fast:?}, serde_json {serde:?}")),
        }
    }

    #[test]
    fn the_fast_parser_builds_what_serde_json_builds() {
        for text in [
            r#"{"z":1,"a":2,"z":3,"a":4,"m":5}"#,
            " \t\n{ \"a\" : [ 1 , 2 ] , \"b\" : { } } \r\n",
            r#"[-0, 0, -9223372036854775808, -9223372036854775809, 18446744073709551616, 1e2, 1E-2, 2.5e+3, -0.0]"#,
            r#""\ud83d\ude00 a pair""#,
            r#""\ud83d lone""#,
            r#""\/\b\f\r\t\\\u0041""#,
            // Malformed: each is refused by both.
            r#"{"a":1,}"#, r#"[1,]"#, r#"{"a" 1}"#, r#"{"a":01}"#, r#"{"a":1.}"#, r#"{"a":.5}"#, r#"{"a":-}"#,
            r#"{"a":1e}"#, r#"{"a":+1}"#, r#"{"a":tru}"#, r#"{"a":nul}"#, r#"{"a":"\x"}"#, r#"{"a":"\u12"}"#,
            "{\"a\":\"tab\there\"}", r#"{"a":1} x"#, r#"{"a":1}}"#, r#"{a:1}"#, "", "   ", r#"{"a":1e400}"#,
            &format!("{}1{}", "[".repeat(FAST_MAX_DEPTH + 10), "]".repeat(FAST_MAX_DEPTH + 10)),
            &format!("{}1{}", "[".repeat(200), "]".repeat(200)),
        ] {
            fast_agrees_with_serde(text).unwrap();
        }
        // The usual event takes the fast path.
        assert!(Fast::document(r#"{"b":1,"a":"x","c":{"y":[true,1.5,-2]}}"#).is_some());
    }

    #[test]
    fn the_generators_json_events_take_the_fast_path() {
        let mut generator = crate::generator::EventGenerator::new(crate::generator::GeneratorConfig::default());
        let mut json = 0;
        for _ in 0..2000 {
            let record = generator.next_record(1_700_000_000_000_000);
            let Ok(text) = std::str::from_utf8(&record.payload) else { continue };
            if let Ok(serde) = through_serde(text.trim()) {
                assert_eq!(Fast::document(text.trim()).as_ref(), Some(&serde), "{text}");
                json += 1;
            }
        }
        assert!(json > 1000, "{json} JSON events of 2000");
    }

    fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(serde_json::Value::Number)),
            "[ -~\t\n\u{0}-\u{1f}é☃😀]{0,10}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 40, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                proptest::collection::vec(("[a-c\"\\\\é]{0,3}", inner), 0..6)
                    .prop_map(|entries| serde_json::Value::Object(entries.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// The word-at-a-time scan finds the byte a byte-at-a-time scan finds.
        #[test]
        fn special_byte_finds_the_first_quote_backslash_or_control_byte(
            bytes in proptest::collection::vec(proptest::prop_oneof![0x20u8..0x7f, 0x80u8..=0xff, proptest::strategy::Just(b'"'), proptest::strategy::Just(b'\\'), 0u8..0x20], 0..40),
            from in 0usize..40,
        ) {
            let from = from.min(bytes.len());
            let naive = bytes[from..].iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20).map_or(bytes.len(), |i| from + i);
            proptest::prop_assert_eq!(special_byte(&bytes, from), naive);
        }

        /// JSON documents, written compact or pretty and then damaged (characters that mean
        /// something to JSON replaced, inserted or removed anywhere): the fast parser builds
        /// what serde_json builds, refuses what it refuses, and leaves it only `\u` escapes.
        #[test]
        fn the_fast_parser_agrees_with_serde_json_on_damaged_documents(
            value in arbitrary_json(),
            pretty in proptest::bool::ANY,
            edits in proptest::collection::vec((0usize..4096, 0usize..40, 0u8..3), 0..4),
        ) {
            let mut text = if pretty { serde_json::to_string_pretty(&value) } else { serde_json::to_string(&value) }.unwrap();
            const SIGNIFICANT: &[char] = &['{', '}', '[', ']', '"', ',', ':', '\\', ' ', '\n', '0', '1', '9', '-', '+', '.', 'e', 'E', 't', 'r', 'u', 'f', 'a', 'l', 's', 'n', '/', 'b', 'd', '8', 'D', '\u{1}', '\t', 'x', 'é', '😀', '\r', 'F', 'c', '2'];
            for (at, pick, kind) in edits {
                let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
                let at = boundaries[at % boundaries.len()];
                let next = boundaries.iter().copied().find(|&b| b > at);
                let c = SIGNIFICANT[pick % SIGNIFICANT.len()];
                match (kind, next) {
                    (0, Some(next)) => text.replace_range(at..next, c.encode_utf8(&mut [0; 4])),
                    (1, Some(next)) => text.replace_range(at..next, ""),
                    _ => text.insert(at, c),
                }
            }
            proptest::prop_assert!(fast_agrees_with_serde(&text).is_ok(), "{}", fast_agrees_with_serde(&text).unwrap_err());
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
