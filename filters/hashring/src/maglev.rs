//! Maglev hashing (Eisenbud et al., NSDI 2016): a lookup table of prime size `M` filled by each
//! host's pseudo-random permutation of the slots, hosts taking turns in proportion to their
//! weight. Lookup is one modulo and one array read; the key's fallbacks are the next distinct
//! hosts walking the table forward from its slot.

use crate::config::Host;
use crate::walk::DistinctWalk;
use switchyard_core::hash::{stable_hash64, stable_hash64_seeded};

#[derive(Debug, Clone)]
pub struct Maglev {
    table: Vec<u32>,
    hosts: usize,
}

/// Seed of the second permutation hash (the skip); any fixed constant works.
const SKIP_SEED: u64 = 0x6d61676c6576; // "maglev"

impl Maglev {
    /// `size` must be a prime larger than the number of hosts (validated by the config).
    pub fn build(hosts: &[Host], size: u64) -> Maglev {
        let m = size.max(2);
        let n = hosts.len();
        let mut table = vec![u32::MAX; m as usize];
        if n == 0 {
            return Maglev {
                table: Vec::new(),
                hosts: 0,
            };
        }
        let offsets: Vec<u64> = hosts
            .iter()
            .map(|h| stable_hash64(h.address.as_bytes()) % m)
            .collect();
        let skips: Vec<u64> = hosts
            .iter()
            .map(|h| stable_hash64_seeded(h.address.as_bytes(), SKIP_SEED) % (m - 1) + 1)
            .collect();
        let max_weight = hosts.iter().map(|h| u64::from(h.weight)).max().unwrap_or(1);
        let mut next = vec![0u64; n];
        let mut credit = vec![0u64; n];
        let mut filled = 0u64;
        // Each round every host earns its weight in credit and claims one slot per
        // `max_weight` of credit, so slots are shared in proportion to weight.
        while filled < m {
            for i in 0..n {
                credit[i] += u64::from(hosts[i].weight);
                if credit[i] < max_weight {
                    continue;
                }
                credit[i] -= max_weight;
                // A permutation visits every slot once (m prime, skip in 1..m), so a free
                // slot is always found while filled < m.
                while next[i] < m {
                    let slot = ((offsets[i] + next[i] * skips[i]) % m) as usize;
                    next[i] += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = i as u32;
                        filled += 1;
                        break;
                    }
                }
                if filled == m {
                    break;
                }
            }
        }
        Maglev { table, hosts: n }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Each host's exact share of the hash space (its share of table slots), indexed like the
    /// host list.
    pub fn shares(&self) -> Vec<f64> {
        let mut shares = vec![0.0; self.hosts];
        let slot = 1.0 / self.table.len().max(1) as f64;
        for owner in &self.table {
            if let Some(s) = shares.get_mut(*owner as usize) {
                *s += slot;
            }
        }
        shares
    }

    /// The host index of every slot.
    pub fn slots(&self) -> &[u32] {
        &self.table
    }

    /// Bytes held by the table.
    pub fn memory_bytes(&self) -> usize {
        self.table.len() * 4
    }

    pub fn primary(&self, key: u64) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        Some(self.table[(key % self.table.len() as u64) as usize] as usize)
    }

    pub fn walk(&self, key: u64) -> DistinctWalk<'_> {
        let pos = if self.table.is_empty() {
            0
        } else {
            (key % self.table.len() as u64) as usize
        };
        DistinctWalk::new(&self.table, self.hosts, pos)
    }
}
