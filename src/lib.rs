//! threatpipe: an event-streaming threat-detection pipeline.
//!
//! Apps produce security events to Kafka; stateless stages (normalize → quick-scan →
//! correlate → ml-score → alert) turn them into scored, deduplicated alerts. The same
//! binary runs every stage in one process over in-memory channels (embedded mode) or any
//! subset of stages against a Kafka-protocol broker. See README.md and DESIGN.md.
//!
//! Layout: `event` (the model and its Avro schemas), `bus` (transports; the only module that
//! touches rdkafka), `stage` (the pure stage trait and the at-least-once runner),
//! `normalize` (the first stage), `generator` (synthetic traffic), `serve` (HTTP), `feed` (the live
//! WebSocket feed and `threatpipe tail`),
//! `telemetry`, `config`, `app` (wiring and shutdown).

#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod allocator;
pub mod app;
pub mod bus;
pub mod cli;
pub mod config;
pub mod connect;
pub mod db;
pub mod detect;
pub mod error;
pub mod event;
pub mod feed;
pub mod generator;
pub mod load_cli;
pub mod ml;
pub mod ml_cli;
pub mod normalize;
pub mod progress;
pub mod rules_cli;
pub mod serve;
pub mod stage;
pub mod state;
pub mod telemetry;

/// A hash map for per-record lookups (partitions, schema ids, offsets, per-entity state):
/// std's default SipHash cost ~5% of the embedded pipeline's instructions.
pub type FastMap<K, V> = std::collections::HashMap<K, V, FastHasher>;

/// The hasher of the hot-path maps ([`FastMap`], [`event::FieldMap`], Sigma's and
/// normalize's lookup tables): foldhash's fast variant, keyed once per process from the
/// operating system's random source (through std's `RandomState`), as ahash was before it.
/// foldhash's own `RandomState` seeds itself from addresses and the clock and does not
/// claim resistance to crafted keys; keys here are chosen by producers (`attrs` names,
/// entity keys of per-entity state), so the key is a secret of each process. ahash ran its
/// portable fallback on this target (no AES instructions at compile time); with foldhash
/// the stages spent 1.2% fewer instructions in the embedded run (load/README.md, session
/// 32).
#[derive(Clone, Debug)]
pub struct FastHasher(foldhash::fast::SeedableRandomState);

impl Default for FastHasher {
    #[inline]
    fn default() -> Self {
        use std::hash::BuildHasher;
        static KEY: std::sync::LazyLock<(u64, foldhash::SharedSeed)> = std::sync::LazyLock::new(|| {
            let random = std::collections::hash_map::RandomState::new();
            (random.hash_one(0x7468_7265_6174_7069_u64), foldhash::SharedSeed::from_u64(random.hash_one(1_u64)))
        });
        let (per_map, shared) = &*KEY;
        Self(foldhash::fast::SeedableRandomState::with_seed(*per_map, shared))
    }
}

impl std::hash::BuildHasher for FastHasher {
    type Hasher = foldhash::fast::FoldHasher<'static>;

    #[inline(always)]
    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

/// `prefix` then `value` as 32 lower-case hex digits, as `format!("{prefix}{value:032x}")`
/// writes them, without the formatting machinery (~700 instructions): ids are made for
/// records on the hot path.
pub fn hex_id(prefix: &str, value: u128) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(prefix.len() + 32);
    out.push_str(prefix);
    for nibble in (0..32).rev() {
        out.push(char::from(DIGITS[((value >> (nibble * 4)) & 0xf) as usize]));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_id_writes_what_format_writes() {
        for value in [0u128, 1, 0xdead_beef, u128::MAX, 1 << 127, 0x0123_4567_89ab_cdef_0011_2233_4455_6677] {
            assert_eq!(super::hex_id("alert-", value), format!("alert-{value:032x}"));
        }
    }
}
