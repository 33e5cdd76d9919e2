//! The lookup table of one host set, built once per configuration or host-set change. Every
//! algorithm answers the same question: the key's distinct hosts in preference order (primary
//! first), so bounded-load spill, health skips and fallbacks all walk the same order.

use crate::config::{default_vnodes, Algorithm, Config, Host, DEFAULT_TABLE_SIZE};
use crate::maglev::Maglev;
use crate::rendezvous::Rendezvous;
use crate::ring::Ring;
use crate::walk::DistinctWalk;

#[derive(Debug, Clone)]
pub enum Table {
    Ring(Ring),
    Maglev(Maglev),
    Rendezvous(Rendezvous),
}

impl Table {
    pub fn build(algorithm: Algorithm, hosts: &[Host], vnodes: u32, table_size: u64) -> Table {
        match algorithm {
            Algorithm::Ring => Table::Ring(Ring::build(hosts, vnodes)),
            Algorithm::Maglev => Table::Maglev(Maglev::build(hosts, table_size)),
            Algorithm::Rendezvous => Table::Rendezvous(Rendezvous::build(hosts)),
        }
    }

    /// The table `config` builds for `hosts`: its `vnodes` / `table_size`, or the defaults for
    /// this host set where they were omitted.
    pub fn for_config(config: &Config, hosts: &[Host]) -> Table {
        Table::build(
            config.algorithm,
            hosts,
            config.vnodes_for(hosts),
            config.table_size,
        )
    }

    /// The table a configuration that omits `vnodes` and `table_size` builds for `hosts`.
    pub fn with_defaults(algorithm: Algorithm, hosts: &[Host]) -> Table {
        Table::build(algorithm, hosts, default_vnodes(hosts), DEFAULT_TABLE_SIZE)
    }

    /// Each host's exact share of the hash space (its share of keys in the limit of infinitely
    /// many uniform keys), indexed like the host list. `None` for rendezvous, whose shares
    /// exist only as probabilities.
    pub fn exact_shares(&self) -> Option<Vec<f64>> {
        match self {
            Table::Ring(r) => Some(r.shares()),
            Table::Maglev(m) => Some(m.shares()),
            Table::Rendezvous(_) => None,
        }
    }

    /// Exact fraction of the hash space whose primary host (by address) differs between this
    /// table over `hosts` and `other` over `other_hosts`. `None` unless both are rings or both
    /// are Maglev tables of one size (rendezvous moves can only be sampled).
    pub fn exact_moved(&self, hosts: &[Host], other: &Table, other_hosts: &[Host]) -> Option<f64> {
        match (self, other) {
            (Table::Ring(a), Table::Ring(b)) => Some(a.moved_fraction(hosts, b, other_hosts)),
            (Table::Maglev(a), Table::Maglev(b)) if a.len() == b.len() && !a.is_empty() => {
                let moved = a
                    .slots()
                    .iter()
                    .zip(b.slots())
                    .filter(|(x, y)| {
                        hosts.get(**x as usize).map(|h| &h.address)
                            != other_hosts.get(**y as usize).map(|h| &h.address)
                    })
                    .count();
                Some(moved as f64 / a.len() as f64)
            }
            _ => None,
        }
    }

    /// Bytes the table holds (per VM: every Envoy worker builds its own).
    pub fn memory_bytes(&self) -> usize {
        match self {
            Table::Ring(r) => r.memory_bytes(),
            Table::Maglev(m) => m.memory_bytes(),
            Table::Rendezvous(r) => r.memory_bytes(),
        }
    }

    /// The key's primary host: the fast path when no host needs skipping.
    pub fn primary(&self, key: u64) -> Option<usize> {
        match self {
            Table::Ring(r) => r.primary(key),
            Table::Maglev(m) => m.primary(key),
            Table::Rendezvous(r) => r.primary(key),
        }
    }

    /// The key's distinct hosts in preference order, computed lazily for ring and Maglev.
    pub fn walk(&self, key: u64) -> Walk<'_> {
        match self {
            Table::Ring(r) => Walk::Ring(r.walk(key)),
            Table::Maglev(m) => Walk::Maglev(m.walk(key)),
            Table::Rendezvous(r) => Walk::Rendezvous(r.order(key).into_iter()),
        }
    }
}

pub enum Walk<'a> {
    Ring(DistinctWalk<'a>),
    Maglev(DistinctWalk<'a>),
    Rendezvous(std::vec::IntoIter<usize>),
}

impl Iterator for Walk<'_> {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        match self {
            Walk::Ring(w) => w.next(),
            Walk::Maglev(w) => w.next(),
            Walk::Rendezvous(w) => w.next(),
        }
    }
}

/// Property tests shared by the three algorithms. Keys are `"user-<i>"` for 0..N, which is as
/// good as random input for a hash-based table and keeps every run reproducible.
#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::hash::stable_hash64;

    const ALGORITHMS: [Algorithm; 3] = [Algorithm::Ring, Algorithm::Maglev, Algorithm::Rendezvous];
    const KEYS: u64 = 100_000;

    fn hosts(weights: &[u32]) -> Vec<Host> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Host {
                address: format!("10.0.{}.{}:8080", i / 250, i % 250 + 1),
                weight: *w,
            })
            .collect()
    }

    fn key(i: u64) -> u64 {
        stable_hash64(format!("user-{i}").as_bytes())
    }

    fn table(a: Algorithm, h: &[Host]) -> Table {
        Table::build(a, h, 160, 65_537)
    }

    /// Address of each key's primary.
    fn assignment(a: Algorithm, h: &[Host]) -> Vec<String> {
        let t = table(a, h);
        (0..KEYS)
            .map(|i| h[t.primary(key(i)).unwrap()].address.clone())
            .collect()
    }

    #[test]
    fn deterministic_across_builds_and_host_order() {
        let h = hosts(&[1, 1, 2, 3, 1]);
        let mut reversed = h.clone();
        reversed.reverse();
        for a in ALGORITHMS {
            let first = assignment(a, &h);
            assert_eq!(first, assignment(a, &h), "{a:?} rebuild");
            if a != Algorithm::Maglev {
                // Maglev fills slots in host-list order, so only ring and rendezvous are
                // independent of the order hosts are listed in (documented).
                assert_eq!(first, assignment(a, &reversed), "{a:?} host order");
            }
        }
    }

    #[test]
    fn known_assignment_is_stable_across_versions() {
        // Guards the hash function and table layout: a change here re-shuffles every key
        // of every deployment, which must be a deliberate, documented decision.
        let h = hosts(&[1, 1, 1]);
        let picks: Vec<Vec<usize>> = ALGORITHMS
            .iter()
            .map(|a| {
                let t = table(*a, &h);
                (0..8).map(|i| t.primary(key(i)).unwrap()).collect()
            })
            .collect();
        let again: Vec<Vec<usize>> = ALGORITHMS
            .iter()
            .map(|a| {
                let t = table(*a, &h);
                (0..8).map(|i| t.walk(key(i)).next().unwrap()).collect()
            })
            .collect();
        assert_eq!(picks, again);
    }

    #[test]
    fn walk_yields_every_host_once_primary_first() {
        let h = hosts(&[1, 2, 1, 5, 1, 1, 3]);
        for a in ALGORITHMS {
            let t = table(a, &h);
            for i in 0..500 {
                let order: Vec<usize> = t.walk(key(i)).collect();
                assert_eq!(order.first().copied(), t.primary(key(i)), "{a:?}");
                let mut sorted = order.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, (0..h.len()).collect::<Vec<_>>(), "{a:?} {order:?}");
            }
        }
    }

    /// Each host's share of keys, relative to its weight share.
    fn share_errors(a: Algorithm, weights: &[u32], vnodes: u32) -> Vec<f64> {
        let h = hosts(weights);
        let t = Table::build(a, &h, vnodes, 65_537);
        let mut counts = vec![0u64; h.len()];
        for i in 0..KEYS {
            counts[t.primary(key(i)).unwrap()] += 1;
        }
        let total_w: u32 = weights.iter().sum();
        counts
            .iter()
            .zip(weights)
            .map(|(c, w)| {
                let want = f64::from(*w) / f64::from(total_w);
                (*c as f64 / KEYS as f64) / want - 1.0
            })
            .collect()
    }

    #[test]
    fn weights_are_honoured_in_proportion() {
        // Tolerances (relative error of each host's share of keys vs. its share of weight):
        // - ring, 160 vnodes: ±30%. A host's arc has a relative spread of about
        //   1/sqrt(vnodes × weight) ≈ 8%; the worst of several hosts measures up to ~25%.
        // - ring, 1000 vnodes: ±12% (spread ≈ 3%).
        // - Maglev and rendezvous: ±5% (what remains is key sampling noise).
        for (a, vnodes, tol) in [
            (Algorithm::Ring, 160, 0.30),
            (Algorithm::Ring, 1000, 0.12),
            (Algorithm::Maglev, 160, 0.05),
            (Algorithm::Rendezvous, 160, 0.05),
        ] {
            for weights in [vec![1, 1, 2], vec![1, 1, 1, 1, 1], vec![3, 1, 2, 1, 5, 1]] {
                let errors = share_errors(a, &weights, vnodes);
                let worst = errors.iter().fold(0.0f64, |m, e| m.max(e.abs()));
                println!(
                    "{a:?} vnodes={vnodes} weights {weights:?}: worst share error {:.1}%",
                    worst * 100.0
                );
                for (i, e) in errors.iter().enumerate() {
                    assert!(
                        e.abs() <= tol,
                        "{a:?} weights {weights:?}: host {i} off its share by {:.1}%",
                        e * 100.0
                    );
                }
            }
        }
    }

    /// Fraction of keys whose primary changed.
    fn moved(before: &[String], after: &[String]) -> f64 {
        let n = before.iter().zip(after).filter(|(a, b)| a != b).count();
        n as f64 / before.len() as f64
    }

    /// Measured remap fraction when one of `n` equal hosts is added and when one is removed.
    fn remap(a: Algorithm, n: usize) -> (f64, f64) {
        let base = hosts(&vec![1; n]);
        let plus = hosts(&vec![1; n + 1]);
        let minus = hosts(&vec![1; n - 1]);
        let before = assignment(a, &base);
        (
            moved(&before, &assignment(a, &plus)),
            moved(&before, &assignment(a, &minus)),
        )
    }

    #[test]
    fn adding_or_removing_one_host_moves_about_one_nth_of_keys() {
        // Ideal: adding the (N+1)th host moves 1/(N+1) of keys, removing one of N moves 1/N.
        // Tolerance (relative to ideal): rendezvous ±10%; ring ±30%, because the keys that move
        // are exactly the changed host's share, which has the ring's spread (see the weights
        // test); Maglev 0.75×–2× (its extra disruption: some slots of surviving hosts change
        // owner too). Measured values are printed with --nocapture and listed in the docs.
        for n in [5usize, 10, 20] {
            for a in ALGORITHMS {
                let (add, remove) = remap(a, n);
                let ideal_add = 1.0 / (n + 1) as f64;
                let ideal_remove = 1.0 / n as f64;
                println!(
                    "{a:?} n={n}: add moved {:.4} (ideal {:.4}), remove moved {:.4} (ideal {:.4})",
                    add, ideal_add, remove, ideal_remove
                );
                let (lo, hi) = match a {
                    Algorithm::Ring => (0.70, 1.30),
                    Algorithm::Maglev => (0.75, 2.0),
                    Algorithm::Rendezvous => (0.90, 1.10),
                };
                assert!(
                    add >= ideal_add * lo && add <= ideal_add * hi,
                    "{a:?} n={n} add moved {add}"
                );
                assert!(
                    remove >= ideal_remove * lo && remove <= ideal_remove * hi,
                    "{a:?} n={n} remove moved {remove}"
                );
            }
        }
    }

    #[test]
    fn ring_and_rendezvous_only_move_keys_of_the_changed_host() {
        let base = hosts(&[1; 8]);
        let minus: Vec<Host> = base[..7].to_vec();
        let removed = &base[7].address;
        for a in [Algorithm::Ring, Algorithm::Rendezvous] {
            let before = assignment(a, &base);
            let after = assignment(a, &minus);
            for (b, f) in before.iter().zip(&after) {
                if b != removed {
                    assert_eq!(b, f, "{a:?}: a key of a surviving host moved");
                }
            }
        }
    }

    #[test]
    fn maglev_extra_disruption_is_small_and_measured() {
        // Maglev trades perfect minimal disruption for balance: removing a host also moves a
        // few keys between surviving hosts. Measured (100k keys, M = 65537): printed below and
        // listed in the docs; bounded here at 3% of all keys.
        for n in [5usize, 10, 20] {
            let base = hosts(&vec![1; n]);
            // Remove the first host: Maglev fills slots in host-list order, so this is the
            // removal that perturbs the remaining permutations the most.
            let minus: Vec<Host> = base[1..].to_vec();
            let removed = &base[0].address;
            let before = assignment(Algorithm::Maglev, &base);
            let after = assignment(Algorithm::Maglev, &minus);
            let extra = before
                .iter()
                .zip(&after)
                .filter(|(b, a)| *b != removed && b != a)
                .count() as f64
                / KEYS as f64;
            println!(
                "Maglev n={n}: keys of surviving hosts moved on removal: {:.4}",
                extra
            );
            assert!(extra <= 0.03, "n={n}: {extra}");
        }
    }

    /// What a configuration that omits `vnodes` gets for ten hosts: issue #8's goals, exactly
    /// (hash-space shares, no key sampling): max/mean <= 1.05, and adding or removing a host
    /// moves within 10 % of 1/N, all of it the changed host's own keys.
    #[test]
    fn default_ring_meets_the_balance_and_remap_goals_for_ten_hosts() {
        let all = hosts(&[1; 11]);
        let base = &all[..10];
        let t = Table::with_defaults(Algorithm::Ring, base);
        let shares = t.exact_shares().unwrap();
        let max = shares.iter().copied().fold(0.0, f64::max);
        println!("default ring, 10 hosts: max/mean {:.4}", max * 10.0);
        assert!(max * 10.0 <= 1.05, "{shares:?}");
        for removed in [0, 5, 9] {
            let mut fewer = base.to_vec();
            fewer.remove(removed);
            let after = Table::with_defaults(Algorithm::Ring, &fewer);
            let moved = t.exact_moved(base, &after, &fewer).unwrap();
            assert!(
                (moved - shares[removed]).abs() < 1e-12,
                "only its keys move"
            );
            assert!(
                (moved * 10.0 - 1.0).abs() <= 0.10,
                "remove {removed}: {moved}"
            );
        }
        let grown = Table::with_defaults(Algorithm::Ring, &all);
        let moved = t.exact_moved(base, &grown, &all).unwrap();
        assert!((moved * 11.0 - 1.0).abs() <= 0.10, "add: {moved}");
    }

    /// The exact moved fraction is what sampled keys converge to, for ring and Maglev.
    #[test]
    fn exact_moved_fraction_matches_sampled_keys() {
        let base = hosts(&[1, 2, 1, 1, 3, 1]);
        let fewer: Vec<Host> = base.iter().skip(1).cloned().collect();
        for a in [Algorithm::Ring, Algorithm::Maglev] {
            let (t0, t1) = (table(a, &base), table(a, &fewer));
            let exact = t0.exact_moved(&base, &t1, &fewer).unwrap();
            let sampled = (0..KEYS)
                .filter(|i| {
                    base[t0.primary(key(*i)).unwrap()].address
                        != fewer[t1.primary(key(*i)).unwrap()].address
                })
                .count() as f64
                / KEYS as f64;
            assert!(
                (exact - sampled).abs() < 0.005,
                "{a:?}: {exact} vs {sampled}"
            );
            assert_eq!(t0.exact_moved(&base, &t0, &base), Some(0.0));
        }
        let r = table(Algorithm::Rendezvous, &base);
        assert_eq!(r.exact_moved(&base, &r, &base), None);
    }

    #[test]
    fn removed_hosts_keys_go_to_their_next_host_in_order() {
        // The fallback order is the order after removal: health skips agree with a real
        // removal, so keys do not bounce between two different second choices.
        let base = hosts(&[1, 1, 1, 1, 1, 1]);
        let minus: Vec<Host> = base[1..].to_vec();
        for a in [Algorithm::Ring, Algorithm::Rendezvous] {
            let full = table(a, &base);
            let reduced = table(a, &minus);
            for i in 0..2000 {
                let k = key(i);
                let next_alive = full.walk(k).find(|h| *h != 0).unwrap();
                let after = reduced.primary(k).unwrap() + 1;
                assert_eq!(next_alive, after, "{a:?} key {i}");
            }
        }
    }
}
