//! A seeded generator of realistic security traffic with injected attacks.
//!
//! It feeds embedded mode (so `threatpipe` shows a live pipeline with no services), the
//! `threatpipe generate` command (to load a real broker) and the benchmarks. Background
//! traffic mixes logins, SSH, process starts, HTTP, DNS, firewall and LLM prompts, in every
//! input format normalize accepts (generic JSON, ECS, OCSF, CEF, syslog). Attack scenarios
//! (brute force, password spraying, port scan, encoded PowerShell from Office, SQL
//! injection, prompt injection, C2 lookups) arrive as bursts, the way real ones do.
//!
//! Pure and synchronous: the caller supplies the clock; the same seed gives the same stream.

pub mod scenarios;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// What a generated record is, so counts of injected attacks can be shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Background,
    Attack(&'static str),
    Malformed,
}

#[derive(Debug, Clone)]
pub struct GeneratedRecord {
    pub key: String,
    pub payload: Vec<u8>,
    pub origin: Origin,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeneratorConfig {
    /// Feed the pipeline from the built-in generator (embedded mode).
    pub enabled: bool,
    /// Events per second; 0 = as fast as the pipeline takes them.
    pub rate: u64,
    /// Stop after this many events (0 = run until stopped).
    pub total: u64,
    /// Seed of the random stream.
    pub seed: u64,
    /// One attack scenario starts, on average, every this many background events.
    pub attack_every: u64,
    /// Fraction of records made deliberately malformed, to exercise the dead-letter path.
    pub malformed_ratio: f64,
    /// Tenants events are spread over.
    pub tenants: Vec<String>,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            rate: 2_000,
            total: 0,
            seed: 7,
            attack_every: 400,
            malformed_ratio: 0.002,
            tenants: vec!["acme".into(), "globex".into(), "initech".into()],
        }
    }
}

impl GeneratorConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if !(0.0..=1.0).contains(&self.malformed_ratio) {
            errors.push(format!("generator.malformed_ratio must be within 0..1, got {}", self.malformed_ratio));
        }
        if self.tenants.is_empty() {
            errors.push("generator.tenants needs at least one tenant".into());
        }
        if self.attack_every == 0 {
            errors.push("generator.attack_every must be at least 1".into());
        }
        errors
    }
}

/// splitmix64: tiny, fast, good enough for synthetic traffic, and reproducible.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

pub struct EventGenerator {
    config: GeneratorConfig,
    rng: Rng,
    queued: VecDeque<GeneratedRecord>,
    sequence: u64,
}

impl EventGenerator {
    pub fn new(config: GeneratorConfig) -> Self {
        let rng = Rng::new(config.seed);
        Self { config, rng, queued: VecDeque::new(), sequence: 0 }
    }

    /// One burst of the attack scenario `name` (one of [`scenarios::ATTACKS`]), stamped with
    /// event time `now_us`, for tests and load scenarios that need a known attack. `None`
    /// for an unknown name.
    pub fn attack_burst(&mut self, name: &str, now_us: i64) -> Option<Vec<GeneratedRecord>> {
        let kind = scenarios::ATTACKS.iter().position(|a| *a == name)?;
        self.sequence += 1;
        let tenant = self.rng.pick(&self.config.tenants).clone();
        let mut ctx = scenarios::Ctx { rng: &mut self.rng, now_us, tenant: &tenant, sequence: self.sequence, serial: 0 };
        Some(scenarios::attack_of_kind(&mut ctx, kind))
    }

    /// The next record, stamped with event time `now_us`.
    pub fn next_record(&mut self, now_us: i64) -> GeneratedRecord {
        if let Some(record) = self.queued.pop_front() {
            return record;
        }
        self.sequence += 1;
        let tenant = self.rng.pick(&self.config.tenants).clone();
        let mut ctx = scenarios::Ctx { rng: &mut self.rng, now_us, tenant: &tenant, sequence: self.sequence, serial: 0 };
        if ctx.rng.chance(self.config.malformed_ratio) {
            return scenarios::malformed(&mut ctx);
        }
        if ctx.rng.below(self.config.attack_every) == 0 {
            let mut burst = scenarios::attack(&mut ctx);
            let first = burst.remove(0);
            self.queued.extend(burst);
            return first;
        }
        scenarios::background(&mut ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Record;
    use crate::normalize::{NormalizeConfig, Normalizer};

    #[test]
    fn same_seed_same_stream() {
        let mut a = EventGenerator::new(GeneratorConfig::default());
        let mut b = EventGenerator::new(GeneratorConfig::default());
        for _ in 0..200 {
            assert_eq!(a.next_record(1).payload, b.next_record(1).payload);
        }
    }

    #[test]
    fn generated_traffic_normalizes_except_the_deliberately_malformed() {
        let config = GeneratorConfig { attack_every: 20, malformed_ratio: 0.02, ..GeneratorConfig::default() };
        let mut generator = EventGenerator::new(config);
        let normalizer = Normalizer::new(NormalizeConfig::default(), "default");
        let now = 1_736_676_000_000_000;
        let (mut attacks, mut malformed) = (0, 0);
        let mut formats = std::collections::BTreeSet::new();
        for offset in 0..5_000 {
            let generated = generator.next_record(now);
            let record = Record { topic: "raw".into(), partition: 0, offset, key: None, payload: generated.payload.clone(), timestamp_ms: None };
            let result = normalizer.normalize(&record, now);
            match generated.origin {
                Origin::Malformed => {
                    malformed += 1;
                    assert!(result.is_err(), "malformed record normalized: {:?}", String::from_utf8_lossy(&generated.payload));
                }
                origin => {
                    let event = result.unwrap_or_else(|e| panic!("{origin:?}: {e}: {}", String::from_utf8_lossy(&generated.payload)));
                    formats.insert(event.source.format.clone());
                    if matches!(origin, Origin::Attack(_)) {
                        attacks += 1;
                    }
                }
            }
        }
        assert!(attacks > 100 && malformed > 20, "attacks {attacks}, malformed {malformed}");
        for format in ["json", "ecs", "ocsf", "cef", "syslog3164", "syslog5424"] {
            assert!(formats.contains(format), "{format} missing from {formats:?}");
        }
    }
}
