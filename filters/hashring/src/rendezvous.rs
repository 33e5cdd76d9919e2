//! Weighted rendezvous (highest random weight) hashing: every host scores the key with
//! `-weight / ln(u)`, `u` a uniform hash of (key, host) in (0, 1) (MurmurHash3's 64-bit
//! finalizer of `key_hash ^ xxh64(address)`: cheap, seed-free, well mixed); hosts in descending score
//! order are the key's primary and fallbacks. Removing a host moves only its own keys; the
//! weighting gives each host a share proportional to its weight (Schindelhauer & Schomaker).

use crate::config::Host;
use switchyard_core::hash::stable_hash64;

#[derive(Debug, Clone)]
pub struct Rendezvous {
    host_hashes: Vec<u64>,
    weights: Vec<f64>,
    /// All weights equal: the score is monotonic in `u`, so the logarithm can be skipped.
    uniform: bool,
}

impl Rendezvous {
    pub fn build(hosts: &[Host]) -> Rendezvous {
        Rendezvous {
            host_hashes: hosts
                .iter()
                .map(|h| stable_hash64(h.address.as_bytes()))
                .collect(),
            weights: hosts.iter().map(|h| f64::from(h.weight)).collect(),
            uniform: hosts.windows(2).all(|w| w[0].weight == w[1].weight),
        }
    }

    /// Bytes held (one hash and one weight per host).
    pub fn memory_bytes(&self) -> usize {
        self.host_hashes.len() * 16
    }

    fn score(&self, key: u64, i: usize) -> f64 {
        let h = fmix64(key ^ self.host_hashes[i]);
        // 53 random bits, shifted off 0 so ln(u) < 0 is finite.
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        if self.uniform {
            // -w / ln(u) increases with u: same order, no logarithm.
            return u;
        }
        -self.weights[i] / u.ln()
    }

    pub fn primary(&self, key: u64) -> Option<usize> {
        let mut best: Option<(f64, usize)> = None;
        for i in 0..self.host_hashes.len() {
            let s = self.score(key, i);
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, i));
            }
        }
        best.map(|(_, i)| i)
    }

    /// Every host, highest score first (ties by index).
    pub fn order(&self, key: u64) -> Vec<usize> {
        let mut scored: Vec<(f64, usize)> = (0..self.host_hashes.len())
            .map(|i| (self.score(key, i), i))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        scored.into_iter().map(|(_, i)| i).collect()
    }
}

/// MurmurHash3's 64-bit finalizer: a bijective mix in which every input bit affects every
/// output bit.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Skipping the logarithm for equal weights must not change any order.
    #[test]
    fn equal_weight_shortcut_gives_the_weighted_order() {
        let hosts: Vec<Host> = (0..7)
            .map(|i| Host {
                address: format!("10.0.0.{}:80", i + 1),
                weight: 3,
            })
            .collect();
        let fast = Rendezvous::build(&hosts);
        assert!(fast.uniform);
        let slow = Rendezvous {
            uniform: false,
            ..fast.clone()
        };
        for k in 0..5000u64 {
            let key = stable_hash64(&k.to_le_bytes());
            assert_eq!(fast.order(key), slow.order(key));
        }
    }
}
