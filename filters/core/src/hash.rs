//! A stable, seed-free 64-bit hash (xxHash64 with seed 0), the same on every worker, every
//! restart and every Envoy instance. Used for consistent hashing and sticky splits.

pub fn stable_hash64(data: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(data, 0)
}

pub fn stable_hash64_seeded(data: &[u8], seed: u64) -> u64 {
    xxhash_rust::xxh64::xxh64(data, seed)
}

/// Maps a hash onto `[0, 1)`, for percentage splits.
pub fn unit_interval(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // xxHash64 reference values, seed 0.
        assert_eq!(stable_hash64(b""), 0xEF46DB3751D8E999);
        assert_eq!(stable_hash64(b"a"), 0xD24EC4F1A98C6E5B);
    }

    #[test]
    fn unit_interval_in_range() {
        for h in [0, 1, u64::MAX, 1 << 63] {
            let u = unit_interval(h);
            assert!((0.0..1.0).contains(&u));
        }
    }
}
