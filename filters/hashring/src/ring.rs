//! Consistent-hash ring (Karger et al.): every host owns `vnodes × weight` points on a 64-bit
//! circle; a key belongs to the first point at or after its hash, walking clockwise. Lookup is a
//! binary search over a sorted point array, narrowed first by a bucket index on the hash's top
//! bits so it touches one or two cache lines instead of ~17 (160k points at 1000 hosts).

use crate::config::Host;
use crate::walk::DistinctWalk;
use std::fmt::Write as _;
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
        let mut pairs: Vec<(u64, u32)> = Vec::new();
        let mut name = String::new();
        for (idx, host) in hosts.iter().enumerate() {
            let count = u64::from(vnodes) * u64::from(host.weight);
            for i in 0..count {
                name.clear();
                let _ = write!(name, "{}#{i}", host.address);
                pairs.push((stable_hash64(name.as_bytes()), idx as u32));
            }
        }
        // Ties (astronomically rare) break by host index so the ring does not depend on order
        // of construction beyond the host list itself.
        pairs.sort_unstable();
        let points: Vec<u64> = pairs.iter().map(|p| p.0).collect();
        // About one point per bucket, between 2^4 and 2^20 buckets.
        let bucket_bits = (usize::BITS - points.len().leading_zeros()).clamp(4, 20);
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
            owners: pairs.iter().map(|p| p.1).collect(),
            points,
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

    fn start(&self, key: u64) -> usize {
        let b = (key >> (64 - self.bucket_bits)) as usize;
        let (lo, hi) = match (self.buckets.get(b), self.buckets.get(b + 1)) {
            (Some(lo), Some(hi)) => (*lo as usize, *hi as usize),
            _ => (0, self.points.len()),
        };
        // Every point before `lo` is below the key's bucket, every point from `hi` on above it.
        let i = lo + self.points[lo..hi].partition_point(|p| *p < key);
        if i == self.points.len() {
            0
        } else {
            i
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
