//! A blocked bloom filter: the probabilistic pre-screen in front of the exact IoC sets.
//!
//! Almost every lookup in the hot path is a miss (benign IPs, domains, hashes). A miss in
//! a blocked bloom filter costs one hash and one cache line: all `k` bits of a key live in
//! the same 512-bit block, so the exact hash-set probe (a string compare behind a pointer)
//! only runs for keys that are present or, at the configured rate, false positives.

use xxhash_rust::xxh3::xxh3_64;

const BLOCK_WORDS: usize = 8; // 8 × 64 bits = one 64-byte cache line
const BITS_PER_KEY: usize = 12; // ≈ 0.5–1% false positives with 8 probes in a block
const PROBES: u32 = 8;

/// Bloom filter over byte strings, sized when built.
#[derive(Debug, Clone)]
pub struct BlockedBloom {
    blocks: Vec<[u64; BLOCK_WORDS]>,
}

impl BlockedBloom {
    /// A filter sized for `expected` keys.
    pub fn with_capacity(expected: usize) -> Self {
        let bits = expected.max(64) * BITS_PER_KEY;
        let blocks = bits.div_ceil(BLOCK_WORDS * 64).next_power_of_two();
        Self { blocks: vec![[0; BLOCK_WORDS]; blocks] }
    }

    fn locate(&self, key: &[u8]) -> (usize, u64) {
        let hash = xxh3_64(key);
        let block = (hash as usize) & (self.blocks.len() - 1);
        (block, hash.rotate_left(32))
    }

    fn bit_positions(seed: u64) -> impl Iterator<Item = (usize, u64)> {
        let (mut h, step) = (seed, seed.rotate_left(17) | 1);
        (0..PROBES).map(move |_| {
            let bit = (h >> 55) as usize; // 9 bits: 0..512
            h = h.wrapping_add(step).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            (bit / 64, 1u64 << (bit % 64))
        })
    }

    pub fn insert(&mut self, key: &[u8]) {
        let (block, seed) = self.locate(key);
        let words = &mut self.blocks[block];
        for (word, mask) in Self::bit_positions(seed) {
            words[word] |= mask;
        }
    }

    /// `false` means certainly absent; `true` means probably present.
    pub fn may_contain(&self, key: &[u8]) -> bool {
        let (block, seed) = self.locate(key);
        let words = &self.blocks[block];
        Self::bit_positions(seed).all(|(word, mask)| words[word] & mask != 0)
    }

    pub fn size_bytes(&self) -> usize {
        self.blocks.len() * BLOCK_WORDS * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let mut bloom = BlockedBloom::with_capacity(100_000);
        for i in 0..100_000u32 {
            bloom.insert(format!("present-{i}").as_bytes());
        }
        assert!((0..100_000u32).all(|i| bloom.may_contain(format!("present-{i}").as_bytes())));
        let false_positives =
            (0..100_000u32).filter(|i| bloom.may_contain(format!("absent-{i}").as_bytes())).count();
        assert!(false_positives < 2_000, "false positive rate too high: {false_positives} / 100000");
    }
}
