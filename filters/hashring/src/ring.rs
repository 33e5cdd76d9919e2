//! Consistent-hash ring (Karger et al.): every host owns `vnodes × weight` points on a 64-bit
//! circle; a key belongs to the first point at or after its hash, walking clockwise. Lookup is a
//! binary search over a sorted point array, narrowed first by a bucket index on the hash's top
//! bits so it touches one or two cache lines instead of ~19 (the default ring holds up to 2^19
//! points: see `config::default_vnodes`).

use crate::config::Host;
use crate::walk::DistinctWalk;
use switchyard_core::decimal::push_decimal;
use switchyard_core::hash::stable_hash64;

#[derive(Debug, Clone)]
pub struct Ring {
    /// Sorted point hashes; `owners[i]` owns `points[i]`. Two arrays keep the binary search
    /// within dense `u64`s.
    points: Vec<u64>,
    owners: Vec<u32>,
    /// `buckets[b]` = index of the first point whose top `bucket_bits` bits are >= `b`;
    /// `2^bucket_bits + 1` entries.
    buckets: Vec<u32>,
    bucket_bits: u32,
    hosts: usize,
}

impl Ring {
    /// Point `i` of a host hashes `"<address>#<i>"`, so a host's points do not depend on the
    /// other hosts: adding or removing one moves only the keys next to its points.
    pub fn build(hosts: &[Host], vnodes: u32) -> Ring {
        let total: u64 = hosts
            .iter()
            .map(|h| u64::from(vnodes) * u64::from(h.weight))
            .sum();
        let mut name: Vec<u8> = Vec::new();
        let mut points: Vec<u64> = Vec::with_capacity(total as usize);
        let mut owners: Vec<u32> = Vec::with_capacity(total as usize);
        for (idx, host) in hosts.iter().enumerate() {
            for_each_point(host, vnodes, &mut name, |p| {
                points.push(p);
                owners.push(idx as u32);
            });
        }
        // Ties (astronomically rare) break by host index so the ring does not depend on order
        // of construction beyond the host list itself: the points are in host order and the
        // radix sort is stable, the small-ring sort compares (hash, host).
        if points.len() >= RADIX_SORT_MIN {
            radix_sort(&mut points, &mut owners);
        } else {
            let mut pairs: Vec<(u64, u32)> = points.iter().copied().zip(owners).collect();
            pairs.sort_unstable();
            (points, owners) = pairs.into_iter().unzip();
        }
        // One or two points per bucket, between 2^4 and 2^20 buckets.
        let bucket_bits = (usize::BITS - points.len().leading_zeros())
            .saturating_sub(1)
            .clamp(4, 20);
        let shift = 64 - bucket_bits;
        let bucket_count = 1usize << bucket_bits;
        let mut buckets = Vec::with_capacity(bucket_count + 1);
        let mut i = 0usize;
        for b in 0..bucket_count as u64 {
            while i < points.len() && (points[i] >> shift) < b {
                i += 1;
            }
            buckets.push(i as u32);
        }
        buckets.push(points.len() as u32);
        Ring {
            points,
            owners,
            buckets,
            bucket_bits,
            hosts: hosts.len(),
        }
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Index of the first point at or after `key` (`len()` if none).
    fn lower_bound(&self, key: u64) -> usize {
        let b = (key >> (64 - self.bucket_bits)) as usize;
        let (lo, hi) = match (self.buckets.get(b), self.buckets.get(b + 1)) {
            (Some(lo), Some(hi)) => (*lo as usize, *hi as usize),
            _ => (0, self.points.len()),
        };
        // Every point before `lo` is below the key's bucket, every point from `hi` on above it.
        lo + self.points[lo..hi].partition_point(|p| *p < key)
    }

    fn start(&self, key: u64) -> usize {
        let i = self.lower_bound(key);
        if i == self.points.len() {
            0
        } else {
            i
        }
    }

    /// Each host's exact share of the hash space (what its share of keys tends to with
    /// infinitely many uniform keys), indexed like the host list.
    pub fn shares(&self) -> Vec<f64> {
        let mut shares = vec![0.0; self.hosts];
        let n = self.points.len();
        for i in 0..n {
            // Point `i` owns the arc after the previous point, up to and including itself.
            let prev = self.points[if i == 0 { n - 1 } else { i - 1 }];
            let arc = if n == 1 {
                1.0
            } else {
                self.points[i].wrapping_sub(prev) as f64 / 2f64.powi(64)
            };
            if let Some(s) = shares.get_mut(self.owners[i] as usize) {
                *s += arc;
            }
        }
        shares
    }

    /// Exact fraction of the hash space whose primary host (by address) differs between this
    /// ring over `hosts` and `other` over `other_hosts`: what the fraction of keys that move
    /// tends to with infinitely many uniform keys.
    pub fn moved_fraction(&self, hosts: &[Host], other: &Ring, other_hosts: &[Host]) -> f64 {
        let mut bounds: Vec<u64> = Vec::with_capacity(self.len() + other.len());
        bounds.extend_from_slice(&self.points);
        bounds.extend_from_slice(&other.points);
        bounds.sort_unstable();
        bounds.dedup();
        fn owner<'a>(ring: &Ring, list: &'a [Host], at: u64) -> Option<&'a str> {
            ring.owners
                .get(ring.start(at))
                .and_then(|o| list.get(*o as usize))
                .map(|h| h.address.as_str())
        }
        let mut moved = 0.0;
        for (j, b) in bounds.iter().enumerate() {
            // Keys in (previous bound, b] have the same successor point in either ring: the
            // first point at or after b.
            let prev = bounds[if j == 0 { bounds.len() - 1 } else { j - 1 }];
            let arc = if bounds.len() == 1 {
                1.0
            } else {
                b.wrapping_sub(prev) as f64 / 2f64.powi(64)
            };
            if owner(self, hosts, *b) != owner(other, other_hosts, *b) {
                moved += arc;
            }
        }
        moved
    }

    /// Bytes held by the table (points, owners, bucket index).
    pub fn memory_bytes(&self) -> usize {
        self.points.len() * 8 + self.owners.len() * 4 + self.buckets.len() * 4
    }

    /// The key's primary host (one binary search).
    pub fn primary(&self, key: u64) -> Option<usize> {
        self.owners.get(self.start(key)).map(|o| *o as usize)
    }

    /// The key's distinct hosts in clockwise order, primary first.
    pub fn walk(&self, key: u64) -> DistinctWalk<'_> {
        DistinctWalk::new(&self.owners, self.hosts, self.start(key))
    }
}

/// From this many points on, the ring is sorted by a radix sort (4 passes of 16 bits) rather
/// than a comparison sort: several times faster for the large default rings.
const RADIX_SORT_MIN: usize = 1 << 14;

/// Calls `f` with the hash of each of `host`'s points, `xxh64("<address>#<i>")` for `i` in
/// `0..vnodes × weight`. `name` is scratch space.
fn for_each_point(host: &Host, vnodes: u32, name: &mut Vec<u8>, mut f: impl FnMut(u64)) {
    name.clear();
    name.extend_from_slice(host.address.as_bytes());
    name.push(b'#');
    let prefix = name.len();
    for i in 0..u64::from(vnodes) * u64::from(host.weight) {
        name.truncate(prefix);
        push_decimal(name, i);
        f(stable_hash64(name));
    }
}

/// Stable LSD radix sort of `keys` (16 bits per pass), moving `owners` along: equal keys keep
/// their input order. Needs as much scratch space again as the two arrays, for the sort only.
fn radix_sort(keys: &mut Vec<u64>, owners: &mut Vec<u32>) {
    let mut keys_out: Vec<u64> = vec![0; keys.len()];
    let mut owners_out: Vec<u32> = vec![0; owners.len()];
    let mut counts = vec![0usize; 1 << 16];
    for pass in 0..4 {
        let shift = pass * 16;
        counts.iter_mut().for_each(|c| *c = 0);
        for k in keys.iter() {
            counts[((k >> shift) & 0xffff) as usize] += 1;
        }
        let mut sum = 0usize;
        for c in counts.iter_mut() {
            let n = *c;
            *c = sum;
            sum += n;
        }
        for (k, o) in keys.iter().zip(owners.iter()) {
            let digit = ((k >> shift) & 0xffff) as usize;
            keys_out[counts[digit]] = *k;
            owners_out[counts[digit]] = *o;
            counts[digit] += 1;
        }
        std::mem::swap(keys, &mut keys_out);
        std::mem::swap(owners, &mut owners_out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The built ring as (hash, owner) pairs in ring order.
    fn pairs(ring: &Ring) -> Vec<(u64, u32)> {
        ring.points
            .iter()
            .copied()
            .zip(ring.owners.iter().copied())
            .collect()
    }

    /// The ring as first specified: `format!` names and a comparison sort of (hash, owner).
    fn reference_points(hosts: &[Host], vnodes: u32) -> Vec<(u64, u32)> {
        let mut pairs = Vec::new();
        for (idx, host) in hosts.iter().enumerate() {
            for i in 0..u64::from(vnodes) * u64::from(host.weight) {
                let name = format!("{}#{i}", host.address);
                pairs.push((stable_hash64(name.as_bytes()), idx as u32));
            }
        }
        pairs.sort_unstable();
        pairs
    }

    /// The fast build (decimal digits by hand, radix sort for large rings) must place exactly
    /// the points the documented `xxh64("<address>#<i>")` ring has, in the same order.
    #[test]
    fn fast_build_equals_the_reference_ring() {
        for (n, vnodes) in [(3usize, 7u32), (5, 160), (40, 600)] {
            let hosts: Vec<Host> = (0..n)
                .map(|i| Host {
                    address: format!("[2001:db8::{:x}]:{}", i + 1, 8000 + i),
                    weight: 1 + (i % 4) as u32,
                })
                .collect();
            let ring = Ring::build(&hosts, vnodes);
            let reference = reference_points(&hosts, vnodes);
            assert!(
                n < 40 || reference.len() >= RADIX_SORT_MIN,
                "radix path not covered"
            );
            assert_eq!(pairs(&ring), reference, "n={n} vnodes={vnodes}");
        }
        // Equal hashes break ties by host index: a listed-twice address (weights 1 and 2)
        // collides on every point of its first entry.
        let twice: Vec<Host> = [("10.0.0.1:80", 1), ("10.0.0.2:80", 1), ("10.0.0.1:80", 2)]
            .iter()
            .map(|(a, w)| Host {
                address: a.to_string(),
                weight: *w,
            })
            .collect();
        for vnodes in [50u32, 5000] {
            let ring = Ring::build(&twice, vnodes);
            let got = pairs(&ring);
            assert_eq!(got, reference_points(&twice, vnodes), "vnodes={vnodes}");
            assert!(got.windows(2).any(|w| w[0].0 == w[1].0 && w[0].1 < w[1].1));
        }
        // Many equal keys (i % 50,000), over the full 64 bits and shifted ones.
        let mut keys: Vec<u64> = (0..70_000u64)
            .map(|i| stable_hash64(&(i % 50_000).to_le_bytes()) >> (i % 3 * 20))
            .collect();
        let mut owners: Vec<u32> = (0..70_000u32).collect();
        let mut want: Vec<(u64, u32)> = keys.iter().copied().zip(owners.clone()).collect();
        want.sort_unstable();
        radix_sort(&mut keys, &mut owners);
        let got: Vec<(u64, u32)> = keys.into_iter().zip(owners).collect();
        assert_eq!(got, want);
        let mut digits = Vec::new();
        for v in [0u64, 7, 10, 160, 8191, u64::MAX] {
            digits.clear();
            push_decimal(&mut digits, v);
            assert_eq!(digits, v.to_string().into_bytes());
        }
    }

    /// Exact shares add up to the whole circle and match what keys see.
    #[test]
    fn exact_shares_cover_the_circle_and_match_keys() {
        let hosts: Vec<Host> = (0..4)
            .map(|i| Host {
                address: format!("10.0.0.{}:80", i + 1),
                weight: 1,
            })
            .collect();
        let ring = Ring::build(&hosts, 20);
        let shares = ring.shares();
        assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        let keys = 200_000u64;
        let mut counts = [0u64; 4];
        for k in 0..keys {
            counts[ring.primary(stable_hash64(&k.to_le_bytes())).unwrap()] += 1;
        }
        for (c, s) in counts.iter().zip(&shares) {
            // 20 points per host: shares differ a lot; keys agree within sampling noise.
            assert!(
                (*c as f64 / keys as f64 - s).abs() < 0.01,
                "{counts:?} {shares:?}"
            );
        }
        assert_eq!(Ring::build(&hosts[..1], 1).shares(), vec![1.0]);
    }

    /// The bucket index must give exactly what a plain binary search over all points gives.
    #[test]
    fn bucketed_lookup_equals_plain_binary_search() {
        for n in [1usize, 3, 50] {
            let hosts: Vec<Host> = (0..n)
                .map(|i| Host {
                    address: format!("10.0.0.{}:80", i + 1),
                    weight: 1 + (i % 3) as u32,
                })
                .collect();
            let ring = Ring::build(&hosts, 7);
            let plain = |key: u64| {
                let i = ring.points.partition_point(|p| *p < key);
                ring.owners[if i == ring.points.len() { 0 } else { i }] as usize
            };
            let mut keys: Vec<u64> = (0..20_000u64)
                .map(|i| stable_hash64(&i.to_le_bytes()))
                .collect();
            // Exact point values, their neighbours and the ends of the circle.
            for p in ring.points.iter().take(200) {
                keys.extend([*p, p.wrapping_sub(1), p.wrapping_add(1)]);
            }
            keys.extend([0, u64::MAX, *ring.points.last().unwrap()]);
            for k in keys {
                assert_eq!(ring.primary(k), Some(plain(k)), "n={n} key={k:#x}");
            }
        }
    }
}
