//! Choosing a host from a key's preference order, given which hosts are healthy and how many
//! requests each has in flight (consistent hashing with bounded loads, Mirrokni et al. 2018).

/// In-flight request counts, indexed like the host list.
#[derive(Debug, Clone, Copy)]
pub struct Loads<'a> {
    pub per_host: &'a [u64],
    pub total: u64,
    pub factor: f64,
}

/// The outcome of one selection. `hosts[0]` is the chosen host, the rest are fallbacks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub hosts: Vec<usize>,
    /// Unhealthy hosts passed over before the chosen one.
    pub health_skipped: Vec<usize>,
    /// Healthy hosts passed over because they were at the load bound.
    pub spilled: Vec<usize>,
    /// Every host was unhealthy: picked by hash anyway (fail open).
    pub all_unhealthy: bool,
    /// Every healthy host was at the bound (only possible with inconsistent counts): the
    /// first healthy host was used anyway.
    pub over_capacity: bool,
}

impl Selection {
    pub fn chosen(&self) -> Option<usize> {
        self.hosts.first().copied()
    }

    /// Why the chosen host was chosen, for the debug header.
    pub fn reason(&self) -> String {
        let mut parts = Vec::new();
        if self.all_unhealthy {
            parts.push("all_unhealthy");
        }
        if !self.health_skipped.is_empty() {
            parts.push("health_skip");
        }
        if !self.spilled.is_empty() {
            parts.push("bounded_load_spill");
        }
        if self.over_capacity {
            parts.push("over_capacity");
        }
        if parts.is_empty() {
            "primary".to_string()
        } else {
            parts.join(",")
        }
    }
}

/// The most requests one host may carry once the new request is added:
/// `⌈factor × (total + 1) / healthy⌉`. Since `factor ≥ 1`, the healthy hosts' capacities add up
/// to at least `total + 1`, so some healthy host always has room.
pub fn capacity(total: u64, healthy: usize, factor: f64) -> u64 {
    let healthy = healthy.max(1) as f64;
    let cap = (factor * (total as f64 + 1.0) / healthy).ceil();
    if cap.is_finite() && cap >= 1.0 {
        cap as u64
    } else {
        1
    }
}

/// Walks `order` (the key's distinct hosts, primary first) and picks the first healthy host
/// below the load bound, then up to `fallbacks` further healthy hosts in the same order. If no
/// host is healthy, every host counts as healthy (fail open).
pub fn select(
    order: impl Iterator<Item = usize>,
    healthy: &[bool],
    loads: Option<Loads<'_>>,
    fallbacks: usize,
) -> Selection {
    let mut sel = Selection::default();
    let healthy_count = healthy.iter().filter(|h| **h).count();
    sel.all_unhealthy = healthy_count == 0;
    let is_healthy = |h: usize| healthy_count == 0 || healthy.get(h).copied().unwrap_or(false);
    let eligible = if healthy_count == 0 {
        healthy.len()
    } else {
        healthy_count
    };
    let cap = loads.map(|l| capacity(l.total, eligible, l.factor));
    let want = 1 + fallbacks;
    for h in order {
        if !is_healthy(h) {
            if sel.hosts.is_empty() {
                sel.health_skipped.push(h);
            }
            continue;
        }
        if sel.hosts.is_empty() {
            if let (Some(l), Some(cap)) = (loads, cap) {
                let load = l.per_host.get(h).copied().unwrap_or(0);
                if load + 1 > cap {
                    sel.spilled.push(h);
                    continue;
                }
            }
        }
        sel.hosts.push(h);
        if sel.hosts.len() >= want {
            break;
        }
    }
    if sel.hosts.is_empty() {
        // Every healthy host was at the bound: serve the key's first healthy host anyway.
        sel.over_capacity = true;
        sel.hosts = std::mem::take(&mut sel.spilled);
    } else {
        // Hosts spilled over are still good retry targets once the rest are exhausted.
        for h in &sel.spilled {
            if sel.hosts.len() >= want {
                break;
            }
            sel.hosts.push(*h);
        }
    }
    sel.hosts.truncate(want);
    sel
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Algorithm, Host};
    use crate::table::Table;
    use switchyard_core::hash::stable_hash64;

    #[test]
    fn primary_when_nothing_to_skip() {
        let s = select([2, 0, 1].into_iter(), &[true; 3], None, 2);
        assert_eq!(s.hosts, vec![2, 0, 1]);
        assert_eq!(s.reason(), "primary");
        let s = select([2, 0, 1].into_iter(), &[true; 3], None, 0);
        assert_eq!(s.hosts, vec![2]);
    }

    #[test]
    fn unhealthy_hosts_are_skipped_and_not_fallbacks() {
        let s = select([2, 0, 1].into_iter(), &[true, true, false], None, 2);
        assert_eq!(s.hosts, vec![0, 1]);
        assert_eq!(s.health_skipped, vec![2]);
        assert_eq!(s.reason(), "health_skip");
        let s = select([0, 2, 1].into_iter(), &[true, true, false], None, 2);
        assert_eq!(s.hosts, vec![0, 1]);
        assert!(s.health_skipped.is_empty());
    }

    #[test]
    fn all_unhealthy_fails_open_by_hash() {
        let s = select([1, 2, 0].into_iter(), &[false; 3], None, 1);
        assert_eq!(s.hosts, vec![1, 2]);
        assert!(s.all_unhealthy);
        assert_eq!(s.reason(), "all_unhealthy");
    }

    #[test]
    fn spill_walks_to_next_host_below_bound() {
        // 3 hosts, 6 in flight, factor 1.25: cap = ceil(1.25 × 7 / 3) = 3.
        assert_eq!(capacity(6, 3, 1.25), 3);
        let per_host = [3, 3, 0];
        let loads = Loads {
            per_host: &per_host,
            total: 6,
            factor: 1.25,
        };
        let s = select([0, 1, 2].into_iter(), &[true; 3], Some(loads), 2);
        assert_eq!(s.hosts, vec![2, 0, 1]);
        assert_eq!(s.spilled, vec![0, 1]);
        assert_eq!(s.reason(), "bounded_load_spill");
    }

    #[test]
    fn inconsistent_counts_still_pick_a_host() {
        let per_host = [50, 50];
        let loads = Loads {
            per_host: &per_host,
            total: 1,
            factor: 1.0,
        };
        let s = select([1, 0].into_iter(), &[true; 2], Some(loads), 1);
        assert_eq!(s.hosts, vec![1, 0]);
        assert!(s.over_capacity);
    }

    /// Bounded-load invariant, per algorithm: admit many keys one by one (nothing completes)
    /// and every host stays at or below ⌈factor × average⌉ after every admission.
    #[test]
    fn bounded_load_invariant_holds_for_every_algorithm() {
        let hosts: Vec<Host> = [1u32, 1, 2, 1, 3]
            .iter()
            .enumerate()
            .map(|(i, w)| Host {
                address: format!("10.1.0.{}:80", i + 1),
                weight: *w,
            })
            .collect();
        for a in [Algorithm::Ring, Algorithm::Maglev, Algorithm::Rendezvous] {
            for factor in [1.0, 1.25, 2.0] {
                let t = Table::build(a, &hosts, 160, 65_537);
                let mut per_host = vec![0u64; hosts.len()];
                let mut total = 0u64;
                // A skewed key stream: a few hot keys repeat, which is what the bound is for.
                for i in 0..3000u64 {
                    let k = if i % 3 == 0 { i % 7 } else { i };
                    let kh = stable_hash64(format!("k{k}").as_bytes());
                    let loads = Loads {
                        per_host: &per_host,
                        total,
                        factor,
                    };
                    let s = select(t.walk(kh), &[true; 5], Some(loads), 0);
                    assert!(!s.over_capacity);
                    let h = s.chosen().unwrap();
                    per_host[h] += 1;
                    total += 1;
                    let bound = (factor * total as f64 / hosts.len() as f64).ceil() as u64;
                    let max = *per_host.iter().max().unwrap();
                    assert!(max <= bound, "{a:?} f={factor}: {max} > {bound} at {total}");
                }
            }
        }
    }

    #[test]
    fn bound_respects_completions() {
        // Requests finish and new ones arrive: the bound holds at every step.
        let mut per_host = [0u64; 3];
        let mut total = 0;
        let mut inflight: Vec<usize> = Vec::new();
        for i in 0..1000u64 {
            if i % 4 == 3 {
                if let Some(h) = inflight.first().copied() {
                    inflight.remove(0);
                    per_host[h] -= 1;
                    total -= 1;
                }
            }
            let loads = Loads {
                per_host: &per_host,
                total,
                factor: 1.25,
            };
            // Every key prefers host 0 (worst case).
            let s = select([0, 1, 2].into_iter(), &[true; 3], Some(loads), 0);
            let h = s.chosen().unwrap();
            per_host[h] += 1;
            total += 1;
            inflight.push(h);
            let bound = (1.25 * total as f64 / 3.0).ceil() as u64;
            assert!(
                per_host.iter().all(|l| *l <= bound),
                "{per_host:?} > {bound}"
            );
        }
    }
}
