//! Deterministic Zipf(s) request traces for the benchmarks (hash quality, cache hit ratios), so
//! every run replays the same trace. No proxy-wasm dependency; nothing at request time uses it.

/// xorshift64*: small, fast, and reproducible from its seed.
struct Rng(u64);

impl Rng {
    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `len` ranks in `0..n` drawn from Zipf(s) (rank 0 the most popular) by inverting the CDF with
/// one uniform draw per request. The same `(n, len, s, seed)` always gives the same trace.
pub fn zipf_ranks(n: usize, len: usize, s: f64, seed: u64) -> Vec<usize> {
    let mut cdf = Vec::with_capacity(n);
    let mut total = 0.0;
    for r in 1..=n {
        total += 1.0 / (r as f64).powf(s);
        cdf.push(total);
    }
    // xorshift must not start from 0.
    let mut rng = Rng(seed | 1);
    (0..len)
        .map(|_| {
            let u = rng.unit() * total;
            cdf.partition_point(|c| *c < u).min(n.saturating_sub(1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_are_reproducible_in_range_and_skewed() {
        let a = zipf_ranks(1000, 50_000, 1.1, 7);
        assert_eq!(a, zipf_ranks(1000, 50_000, 1.1, 7));
        assert_ne!(a, zipf_ranks(1000, 50_000, 1.1, 8));
        assert!(a.iter().all(|r| *r < 1000));
        let count = |rank: usize| a.iter().filter(|r| **r == rank).count();
        // Zipf(1.1) over 1000 ranks: rank 0 is about 15 % of the trace, rank 1 about 7 %.
        assert!(
            count(0) > 2 * count(9) && count(0) > a.len() / 10,
            "{}",
            count(0)
        );
        assert!(count(0) > count(1));
    }
}
