//! Performance-based selection (`"algorithm": "p2c_ewma"`): a peak-sensitive EWMA of each
//! host's latency, the cost `latency × (in-flight + 1)`, and the power of two choices.
//!
//! Pure logic: the glue measures latencies, keeps the shared EWMA map
//! (`switchyard.hashring.<scope>.ewma`, one line per host) and the per-worker in-flight counts,
//! and draws the random numbers.

use std::collections::BTreeMap;

/// One host's latency estimate (nanoseconds) and when it was last updated.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Ewma {
    pub value_ns: f64,
    pub stamp_ns: u64,
}

impl Ewma {
    /// Folds in one sample. Peak-sensitive: a sample above the estimate replaces it at once (a
    /// host turning slow is avoided from its first slow answer); a sample below pulls it down with
    /// weight `1 - exp(-Δt / decay)`, so recovery is judged over about `decay`.
    pub fn observe(self, sample_ns: u64, now_ns: u64, decay_ns: u64) -> Ewma {
        let sample = sample_ns as f64;
        // From the estimate as of now (it faded while nothing refreshed it, see `current`).
        let current = self.current(now_ns, decay_ns);
        let value = if self.stamp_ns == 0 || sample >= current {
            sample
        } else {
            let dt = now_ns.saturating_sub(self.stamp_ns) as f64;
            let w = (-dt / decay_ns.max(1) as f64).exp();
            current * w + sample * (1.0 - w)
        };
        Ewma {
            value_ns: value,
            stamp_ns: now_ns.max(1),
        }
    }
}

impl Ewma {
    /// The estimate as of `now`: it fades by `exp(-Δt / decay)` while no answer updates it, so a
    /// host that was avoided for being slow is tried (and measured) again after a few decays.
    pub fn current(&self, now_ns: u64, decay_ns: u64) -> f64 {
        let dt = now_ns.saturating_sub(self.stamp_ns) as f64;
        self.value_ns * (-dt / decay_ns.max(1) as f64).exp()
    }
}

/// What choosing a host costs: its current latency estimate times its in-flight requests plus
/// this one. A host with no estimate yet counts 1 ns, so it is tried (and measured) soon.
pub fn cost(ewma: Option<&Ewma>, in_flight: u64, now_ns: u64, decay_ns: u64) -> f64 {
    let latency = ewma.map_or(1.0, |e| e.current(now_ns, decay_ns).max(1.0));
    latency * (in_flight.saturating_add(1)) as f64
}

/// Picks a host from `eligible` with probability proportional to its weight, from `r` (uniform
/// on all of u64). `None` when nothing is eligible.
pub fn weighted_pick(
    eligible: &[usize],
    weights: &[u32],
    r: u64,
    exclude: Option<usize>,
) -> Option<usize> {
    let pool: Vec<usize> = eligible
        .iter()
        .copied()
        .filter(|h| Some(*h) != exclude)
        .collect();
    let total: u64 = pool
        .iter()
        .map(|h| u64::from(weights.get(*h).copied().unwrap_or(1).max(1)))
        .sum();
    if total == 0 {
        return None;
    }
    let mut point = r % total;
    for h in &pool {
        let w = u64::from(weights.get(*h).copied().unwrap_or(1).max(1));
        if point < w {
            return Some(*h);
        }
        point -= w;
    }
    pool.last().copied()
}

/// The outcome of one choice, for the output header and the debug header.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// Chosen host first, then fallbacks in increasing cost.
    pub order: Vec<usize>,
    /// The two candidates drawn and their costs.
    pub candidates: Vec<(usize, f64)>,
    /// `p2c` (the cheaper candidate) or `affinity` (the key's consistent-hash host kept).
    pub reason: &'static str,
}

/// Chooses among `eligible` hosts (healthy ones, by index). `costs[h]` is host `h`'s cost;
/// `r1`/`r2` are two random draws; `affinity` is `(the key's consistent-hash host, k)`: that
/// host is kept unless its cost exceeds `k` times the best candidate's.
pub fn choose(
    eligible: &[usize],
    weights: &[u32],
    costs: &[f64],
    r1: u64,
    r2: u64,
    affinity: Option<(usize, f64)>,
    fallbacks: usize,
) -> Option<Choice> {
    let a = weighted_pick(eligible, weights, r1, None)?;
    let b = weighted_pick(eligible, weights, r2, Some(a));
    let cost_of = |h: usize| costs.get(h).copied().unwrap_or(f64::MAX);
    let mut candidates = vec![(a, cost_of(a))];
    if let Some(b) = b {
        candidates.push((b, cost_of(b)));
    }
    let best = candidates
        .iter()
        .copied()
        .min_by(|x, y| x.1.total_cmp(&y.1))
        .map_or(a, |(h, _)| h);
    let (chosen, reason) = match affinity {
        Some((home, k)) if eligible.contains(&home) && cost_of(home) <= k * cost_of(best) => {
            (home, "affinity")
        }
        _ => (best, "p2c"),
    };
    // Fallbacks: the other eligible hosts, cheapest first (retries go where it is cheapest).
    let mut rest: Vec<usize> = eligible.iter().copied().filter(|h| *h != chosen).collect();
    rest.sort_by(|x, y| cost_of(*x).total_cmp(&cost_of(*y)));
    let mut order = vec![chosen];
    order.extend(rest.into_iter().take(fallbacks));
    Some(Choice {
        order,
        candidates,
        reason,
    })
}

/// The shared map of estimates: `v1`, then `address value_ns stamp_ns` lines.
pub fn decode(bytes: Option<&[u8]>) -> BTreeMap<String, Ewma> {
    let mut map = BTreeMap::new();
    let Some(text) = bytes.and_then(|b| std::str::from_utf8(b).ok()) else {
        return map;
    };
    let mut lines = text.lines();
    if lines.next() != Some("v1") {
        return map;
    }
    for line in lines {
        let f: Vec<&str> = line.split(' ').collect();
        if let [addr, value, stamp] = f[..] {
            if let (Ok(value_ns), Ok(stamp_ns)) = (value.parse::<f64>(), stamp.parse::<u64>()) {
                if value_ns.is_finite() && value_ns >= 0.0 {
                    map.insert(addr.to_string(), Ewma { value_ns, stamp_ns });
                }
            }
        }
    }
    map
}

pub fn encode(map: &BTreeMap<String, Ewma>) -> Vec<u8> {
    let mut out = String::from("v1\n");
    for (addr, e) in map {
        out.push_str(&format!("{addr} {:.0} {}\n", e.value_ns, e.stamp_ns));
    }
    out.into_bytes()
}

/// Initial value of the shared key.
pub const EMPTY: &[u8] = b"v1\n";

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const DECAY: u64 = 10_000 * MS;

    #[test]
    fn the_estimate_jumps_up_at_once_and_comes_down_over_the_decay() {
        let e = Ewma::default().observe(5 * MS, 1, DECAY);
        assert_eq!(e.value_ns, (5 * MS) as f64);
        // A slow answer replaces the estimate immediately (peak-sensitive).
        let slow = e.observe(100 * MS, 2 * MS, DECAY);
        assert_eq!(slow.value_ns, (100 * MS) as f64);
        // A fast answer soon after pulls it down by 1 - exp(-dt/decay) from its (slightly
        // faded) current value.
        let soon = slow.observe(5 * MS, 2 * MS + DECAY / 10, DECAY);
        let faded = 100.0 * (-0.1f64).exp();
        let want = faded * (-0.1f64).exp() + 5.0 * (1.0 - (-0.1f64).exp());
        assert!((soon.value_ns / MS as f64 - want).abs() < 1e-6);
        // Long after, the faded estimate is below the sample: the sample is taken as it is.
        let later = slow.observe(5 * MS, 2 * MS + 5 * DECAY, DECAY);
        assert_eq!(later.value_ns, (5 * MS) as f64);
        // Many decays later it is back near the fast latency.
        let mut e = slow;
        for i in 1..=10 {
            e = e.observe(5 * MS, 2 * MS + i * DECAY, DECAY);
        }
        assert!(e.value_ns < (5.01 * MS as f64), "{}", e.value_ns);
    }

    #[test]
    fn cost_weighs_latency_by_in_flight_requests() {
        let e = Ewma {
            value_ns: 10.0,
            stamp_ns: 1,
        };
        assert_eq!(cost(Some(&e), 0, 1, DECAY), 10.0);
        assert_eq!(cost(Some(&e), 3, 1, DECAY), 40.0);
        // No estimate yet: cheap, so it gets measured.
        assert_eq!(cost(None, 0, 1, DECAY), 1.0);
        // An estimate nobody refreshed fades: after three decays a slow host is 20x cheaper.
        let slow = Ewma {
            value_ns: 100.0 * MS as f64,
            stamp_ns: 1,
        };
        let faded = cost(Some(&slow), 0, 1 + 3 * DECAY, DECAY);
        assert!((faded / MS as f64 - 100.0 * (-3.0f64).exp()).abs() < 1e-6);
    }

    #[test]
    fn two_choices_take_the_cheaper_and_respect_weights() {
        let costs = [10.0, 1.0, 5.0];
        let c = choose(&[0, 1, 2], &[1, 1, 1], &costs, 0, 1, None, 2).unwrap();
        // Draws: host 0, then host 2 from {1, 2} (r2 = 1): the cheaper of (0, 2) is 2.
        assert_eq!(c.candidates, vec![(0, 10.0), (2, 5.0)]);
        assert_eq!(c.order, vec![2, 1, 0]);
        assert_eq!(c.reason, "p2c");
        // Weights: with weights 1:1:2 host 2 is drawn about half the time.
        let mut hits = [0u32; 3];
        for r in 0..4000u64 {
            hits[weighted_pick(&[0, 1, 2], &[1, 1, 2], r, None).unwrap()] += 1;
        }
        assert_eq!(hits, [1000, 1000, 2000]);
        // Only eligible (healthy) hosts are drawn; one host: no second candidate.
        let c = choose(&[1], &[1, 1, 1], &costs, 7, 9, None, 2).unwrap();
        assert_eq!(c.order, vec![1]);
        assert_eq!(c.candidates.len(), 1);
        assert!(choose(&[], &[1], &costs, 0, 0, None, 2).is_none());
    }

    #[test]
    fn affinity_keeps_the_key_host_until_it_costs_k_times_the_best() {
        let costs = [10.0, 4.0, 5.0];
        // Home host 0 costs 10, the best candidate 4: kept with k = 3, not with k = 2.
        let keep = choose(&[0, 1, 2], &[1, 1, 1], &costs, 1, 0, Some((0, 3.0)), 2).unwrap();
        assert_eq!((keep.order[0], keep.reason), (0, "affinity"));
        let leave = choose(&[0, 1, 2], &[1, 1, 1], &costs, 1, 0, Some((0, 2.0)), 2).unwrap();
        assert_eq!((leave.order[0], leave.reason), (1, "p2c"));
        // An ejected home host is never kept.
        let ejected = choose(&[1, 2], &[1, 1, 1], &costs, 0, 0, Some((0, 100.0)), 2).unwrap();
        assert_ne!(ejected.order[0], 0);
    }

    #[test]
    fn the_shared_map_round_trips_and_tolerates_garbage() {
        let mut m = BTreeMap::new();
        m.insert(
            "10.0.0.1:80".to_string(),
            Ewma {
                value_ns: 5_000_000.0,
                stamp_ns: 42,
            },
        );
        assert_eq!(decode(Some(&encode(&m))), m);
        assert!(decode(Some(b"junk")).is_empty());
        assert!(decode(Some(b"v1\na b c\nx NaN 1\ny -1 2\n")).is_empty());
    }
}
