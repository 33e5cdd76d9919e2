//! The one pseudo-random generator of the filters and their tests: xorshift64* seeded through
//! splitmix64. Fast and good enough for traffic splits, sampling, the power of two choices and
//! generated test cases; not for anything secret. Deterministic from its seed, so tests replay.

/// splitmix64: spreads a seed (or any counter) over all 64 bits.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// xorshift64* (Vigna, 2016). `Copy`, so a filter keeps it in a `Cell`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from any seed (0 included: the state is never 0).
    pub fn new(seed: u64) -> Self {
        XorShift(splitmix64(seed) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// The next number of a generator kept in a `Cell` (filters hold it behind `&self`).
    pub fn next_in(cell: &std::cell::Cell<XorShift>) -> u64 {
        let mut r = cell.get();
        let x = r.next_u64();
        cell.set(r);
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_no_zero_state() {
        let (mut a, mut b) = (XorShift::new(7), XorShift::new(7));
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(XorShift::new(0).next_u64(), 0);
        assert_ne!(XorShift::new(7).next_u64(), XorShift::new(8).next_u64());
    }

    #[test]
    fn below_spreads_over_its_range() {
        let mut r = XorShift::new(1);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[r.below(10) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
        assert_eq!(r.below(0), 0);
    }

    #[test]
    fn a_cell_advances() {
        let cell = std::cell::Cell::new(XorShift::new(3));
        let a = XorShift::next_in(&cell);
        let b = XorShift::next_in(&cell);
        assert_ne!(a, b);
    }
}
