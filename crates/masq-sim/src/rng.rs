//! The simulator's decisions: SplitMix64, seeded, so the same seed makes
//! the same choices in the same order. (Not for keys: the core's
//! randomness comes from `crypto::entropy::SeededEntropy`, its own stream
//! of the same seed.)

/// A seeded stream of choices.
#[derive(Debug, Clone)]
pub struct SimRng {
    /// SplitMix64's state.
    state: u64,
}

impl SimRng {
    /// The stream of `seed`.
    pub fn new(seed: u64) -> Self {
        SimRng {
            state: seed ^ 0x6d61_7371_2073_696d, // "masq sim"
        }
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `lo..hi` (`lo` if the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo)
    }

    /// An index below `n` (`n` > 0).
    pub fn index(&mut self, n: usize) -> usize {
        self.range(0, n as u64) as usize
    }

    /// True with probability `p` (0 to 1).
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }
}
