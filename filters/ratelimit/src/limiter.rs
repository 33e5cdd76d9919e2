//! The limiter math for one rule's key: GCRA token buckets and exact sliding logs, evaluated
//! over all of the rule's tiers at once so admission is all-or-nothing.

use crate::config::{Algorithm, Rule, Tier};

use switchyard_core::duration::NS_PER_MS;

/// Per-tier state of one key under one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleState {
    /// GCRA theoretical arrival time (ns since the epoch) per tier.
    Gcra(Vec<u64>),
    /// Admission timestamps (ms since the epoch, oldest first) per tier, live ones only.
    Sliding(Vec<Vec<u64>>),
}

/// What a tier reports in the response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierView {
    pub requests: u64,
    pub per_ns: u64,
    /// Requests that would still be admitted right now.
    pub remaining: u64,
    /// Time until the tier's full quota is available again.
    pub reset_ns: u64,
}

impl TierView {
    /// The view of the most constrained tier: fewest remaining, then longest until reset.
    pub fn tightest(views: &[TierView]) -> Option<TierView> {
        views.iter().copied().min_by(|a, b| {
            a.remaining
                .cmp(&b.remaining)
                .then(b.reset_ns.cmp(&a.reset_ns))
        })
    }
}

/// The decision of one rule for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub admitted: bool,
    /// When rejected: time until every tier would admit the request.
    pub retry_after_ns: u64,
    /// The state to store when admitted.
    pub next: RuleState,
    /// Per tier, before this request.
    pub before: Vec<TierView>,
    /// Per tier, after this request if admitted (equal to `before` when rejected).
    pub after: Vec<TierView>,
}

impl RuleState {
    /// The state of a key never seen (or idle long enough to be fully refilled).
    pub fn fresh(rule: &Rule) -> RuleState {
        match rule.algorithm {
            Algorithm::TokenBucket => RuleState::Gcra(vec![0; rule.tiers.len()]),
            Algorithm::SlidingWindow => RuleState::Sliding(vec![Vec::new(); rule.tiers.len()]),
        }
    }

    /// Decides whether a request at `now_ns` is admitted by every tier. Pure: the caller stores
    /// `next` only when admitted, so a rejection consumes nothing from any tier.
    pub fn evaluate(&self, rule: &Rule, now_ns: u64) -> Evaluation {
        let mut admitted = true;
        let mut retry_after_ns = 0u64;
        let mut before = Vec::with_capacity(rule.tiers.len());
        let mut after = Vec::with_capacity(rule.tiers.len());
        let next = match self {
            RuleState::Gcra(tats) => {
                let mut next = Vec::with_capacity(rule.tiers.len());
                for (i, tier) in rule.tiers.iter().enumerate() {
                    let g = gcra(tier, tats.get(i).copied().unwrap_or(0), now_ns);
                    admitted &= g.admitted;
                    if !g.admitted {
                        retry_after_ns = retry_after_ns.max(g.retry_after_ns);
                    }
                    before.push(g.before);
                    after.push(g.after);
                    next.push(g.next_tat);
                }
                RuleState::Gcra(next)
            }
            RuleState::Sliding(logs) => {
                let now_ms = now_ns / NS_PER_MS;
                let mut next = Vec::with_capacity(rule.tiers.len());
                for (i, tier) in rule.tiers.iter().enumerate() {
                    let empty = Vec::new();
                    let log = logs.get(i).unwrap_or(&empty);
                    let s = sliding(tier, log, now_ms);
                    admitted &= s.admitted;
                    if !s.admitted {
                        retry_after_ns = retry_after_ns.max(s.retry_after_ns);
                    }
                    before.push(s.before);
                    after.push(s.after);
                    next.push(s.next_log);
                }
                RuleState::Sliding(next)
            }
        };
        if !admitted {
            after.clone_from(&before);
        }
        Evaluation {
            admitted,
            retry_after_ns,
            next: if admitted { next } else { self.clone() },
            before,
            after,
        }
    }

    /// Takes back one request admitted at `admitted_ns` (used when a later rule of the same
    /// request rejects it). GCRA: the TAT moves back by one interval, exactly the amount the
    /// admission added. Sliding log: the request's timestamp is removed.
    pub fn undo(&mut self, rule: &Rule, admitted_ns: u64) {
        match self {
            RuleState::Gcra(tats) => {
                for (tat, tier) in tats.iter_mut().zip(&rule.tiers) {
                    *tat = tat.saturating_sub(tier.interval_ns());
                }
            }
            RuleState::Sliding(logs) => {
                let ts = admitted_ns / NS_PER_MS;
                for log in logs.iter_mut() {
                    if let Some(pos) = log.iter().rposition(|t| *t == ts) {
                        log.remove(pos);
                    }
                }
            }
        }
    }

    /// When this state becomes indistinguishable from a fresh one (ms since the epoch):
    /// dropping the entry from then on loses nothing.
    pub fn idle_at_ms(&self, rule: &Rule) -> u64 {
        match self {
            RuleState::Gcra(tats) => tats.iter().max().copied().unwrap_or(0).div_ceil(NS_PER_MS),
            RuleState::Sliding(logs) => logs
                .iter()
                .zip(&rule.tiers)
                .filter_map(|(log, tier)| log.last().map(|t| t + tier.per_ms() + 1))
                .max()
                .unwrap_or(0),
        }
    }

    /// The eviction priority: `now` plus the "debt" of this key, the time the limit's rate needs
    /// to earn back what the key consumed (GCRA: its TAT; sliding log: live requests x
    /// per/requests). The entry with the smallest debt is evicted first.
    pub fn drain_at_ms(&self, rule: &Rule, now_ns: u64) -> u64 {
        match self {
            RuleState::Gcra(_) => self.idle_at_ms(rule),
            RuleState::Sliding(logs) => {
                let debt = logs
                    .iter()
                    .zip(&rule.tiers)
                    .map(|(log, tier)| {
                        (log.len() as u128 * tier.per_ms() as u128 / tier.requests.max(1) as u128)
                            as u64
                    })
                    .max()
                    .unwrap_or(0);
                now_ns / NS_PER_MS + debt
            }
        }
    }

    /// Serialises the state; sliding timestamps become 32-bit ages relative to `base_ms`.
    pub fn encode(&self, base_ms: u64) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            RuleState::Gcra(tats) => {
                for t in tats {
                    out.extend_from_slice(&t.to_le_bytes());
                }
            }
            RuleState::Sliding(logs) => {
                for log in logs {
                    let n = log.len().min(u16::MAX as usize);
                    out.extend_from_slice(&(n as u16).to_le_bytes());
                    for ts in &log[log.len() - n..] {
                        let age = base_ms.saturating_sub(*ts).min(u32::MAX as u64) as u32;
                        out.extend_from_slice(&age.to_le_bytes());
                    }
                }
            }
        }
        out
    }

    /// Parses a state written by [`RuleState::encode`] for `rule`; `None` if it does not fit the
    /// rule's shape (the caller then starts fresh).
    pub fn decode(rule: &Rule, bytes: &[u8], base_ms: u64) -> Option<RuleState> {
        match rule.algorithm {
            Algorithm::TokenBucket => {
                if bytes.len() != 8 * rule.tiers.len() {
                    return None;
                }
                let tats = bytes
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect();
                Some(RuleState::Gcra(tats))
            }
            Algorithm::SlidingWindow => {
                let mut logs = Vec::with_capacity(rule.tiers.len());
                let mut rest = bytes;
                for _ in &rule.tiers {
                    let (n, tail) = rest.split_first_chunk::<2>()?;
                    let n = u16::from_le_bytes(*n) as usize;
                    let body = tail.get(..4 * n)?;
                    logs.push(
                        body.chunks_exact(4)
                            .map(|c| {
                                let age = u32::from_le_bytes(c.try_into().unwrap_or([0; 4]));
                                base_ms.saturating_sub(age as u64)
                            })
                            .collect(),
                    );
                    rest = &tail[4 * n..];
                }
                rest.is_empty().then_some(RuleState::Sliding(logs))
            }
        }
    }
}

struct GcraStep {
    admitted: bool,
    retry_after_ns: u64,
    next_tat: u64,
    before: TierView,
    after: TierView,
}

/// GCRA: each request moves the theoretical arrival time (TAT) forward by one emission interval
/// `T = per / requests`; a request is admitted while `TAT - now <= burst x T`.
fn gcra(tier: &Tier, stored_tat: u64, now: u64) -> GcraStep {
    let t = tier.interval_ns();
    let capacity = t.saturating_mul(tier.burst);
    let tat = stored_tat.max(now);
    let new_tat = tat.saturating_add(t);
    let view = |tat: u64| TierView {
        requests: tier.requests,
        per_ns: tier.per_ns,
        remaining: capacity.saturating_sub(tat - now) / t,
        reset_ns: tat - now,
    };
    let before = view(tat);
    if new_tat - now <= capacity {
        GcraStep {
            admitted: true,
            retry_after_ns: 0,
            next_tat: new_tat,
            before,
            after: view(new_tat),
        }
    } else {
        GcraStep {
            admitted: false,
            retry_after_ns: new_tat - capacity - now,
            next_tat: stored_tat,
            before,
            after: before,
        }
    }
}

struct SlidingStep {
    admitted: bool,
    retry_after_ns: u64,
    next_log: Vec<u64>,
    before: TierView,
    after: TierView,
}

/// Exact sliding log at millisecond resolution. A timestamp counts while `now - ts <= per`
/// (in whole ms, `per` rounded up), so two admissions less than `per` apart always see each
/// other: never more than `requests` in any interval of length `per`.
fn sliding(tier: &Tier, log: &[u64], now_ms: u64) -> SlidingStep {
    let per = tier.per_ms();
    let live: Vec<u64> = log
        .iter()
        .copied()
        .filter(|ts| now_ms.saturating_sub(*ts) <= per)
        .collect();
    let view = |live: &[u64]| TierView {
        requests: tier.requests,
        per_ns: tier.per_ns,
        remaining: tier.requests.saturating_sub(live.len() as u64),
        reset_ns: live
            .last()
            .map(|t| (t + per + 1).saturating_sub(now_ms) * NS_PER_MS)
            .unwrap_or(0),
    };
    let before = view(&live);
    if (live.len() as u64) < tier.requests {
        let mut next = live;
        // Keep the log sorted even if another worker's clock read was a little ahead.
        let pos = next.partition_point(|t| *t <= now_ms);
        next.insert(pos, now_ms);
        let after = view(&next);
        SlidingStep {
            admitted: true,
            retry_after_ns: 0,
            next_log: next,
            before,
            after,
        }
    } else {
        // Admissible again once the oldest request that keeps the count at the limit expires.
        let blocking = live[live.len() - tier.requests as usize];
        SlidingStep {
            admitted: false,
            retry_after_ns: (blocking + per + 1).saturating_sub(now_ms) * NS_PER_MS,
            next_log: live,
            before,
            after: before,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const S: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;
    const T0: u64 = 1_700_000_000 * S;

    fn rule(json_limits: &str, algorithm: &str) -> Rule {
        let json = format!(
            r#"{{"rules":[{{"name":"r","algorithm":"{algorithm}","limits":{json_limits}}}]}}"#
        );
        parse(json.as_bytes()).unwrap().rules.remove(0)
    }

    /// Runs requests at the given times, storing state only on admission; returns admissions.
    fn run(rule: &Rule, times: &[u64]) -> Vec<bool> {
        let mut state = RuleState::fresh(rule);
        times
            .iter()
            .map(|&t| {
                let e = state.evaluate(rule, t);
                if e.admitted {
                    // Round-trip through the stored form, as the filter does.
                    let base = t / MS;
                    state = RuleState::decode(rule, &e.next.encode(base), base).unwrap();
                }
                e.admitted
            })
            .collect()
    }

    #[test]
    fn gcra_tiers_1s_5_10s_10_1m() {
        let r = rule(
            r#"[{"requests":1,"per":"1s"},{"requests":5,"per":"10s"},{"requests":10,"per":"1m"}]"#,
            "token_bucket",
        );
        // One request every second for a minute.
        let times: Vec<u64> = (0..60).map(|i| T0 + i * S).collect();
        let admitted: Vec<u64> = run(&r, &times)
            .iter()
            .zip(&times)
            .filter(|(a, _)| **a)
            .map(|(_, t)| (t - T0) / S)
            .collect();
        // The 10s tier (5 tokens, +0.5/s) holds at 1/s until 9 are admitted (5 - 0.5k >= 1 for
        // k <= 8); then one per 2s while the minute tier (10 tokens, +1/6 per s) has tokens; it
        // runs dry after t=14 and then admits one every 6s.
        assert_eq!(
            admitted,
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 18, 24, 30, 36, 42, 48, 54]
        );
    }

    #[test]
    fn rejected_request_consumes_nothing_from_any_tier() {
        let r = rule(
            r#"[{"requests":1,"per":"1s"},{"requests":3,"per":"1m"}]"#,
            "token_bucket",
        );
        let mut st = RuleState::fresh(&r);
        let e = st.evaluate(&r, T0);
        assert!(e.admitted);
        st = e.next;
        // A burst of rejected requests within the first second...
        for i in 1..100 {
            let e = st.evaluate(&r, T0 + i * 5 * MS);
            assert!(!e.admitted);
            assert_eq!(e.next, st);
        }
        // ...has not used up the minute tier: two more are admitted a second apart.
        for k in 1..=2 {
            let e = st.evaluate(&r, T0 + k * S);
            assert!(e.admitted, "request {k}");
            st = e.next;
        }
        let e = st.evaluate(&r, T0 + 3 * S);
        assert!(!e.admitted);
        // The minute tier (3/min, one token per 20s) frees its first token 20s after T0.
        assert_eq!(e.retry_after_ns, 17 * S);
    }

    #[test]
    fn gcra_burst_and_views() {
        let r = rule(r#"[{"requests":10,"per":"1m","burst":3}]"#, "token_bucket");
        let mut st = RuleState::fresh(&r);
        let mut remaining = vec![];
        for _ in 0..3 {
            let e = st.evaluate(&r, T0);
            assert!(e.admitted);
            remaining.push(e.after[0].remaining);
            st = e.next;
        }
        assert_eq!(remaining, [2, 1, 0]);
        let e = st.evaluate(&r, T0);
        assert!(!e.admitted);
        assert_eq!(e.retry_after_ns, 6 * S);
        assert_eq!(e.before[0].reset_ns, 18 * S);
        assert!(st.evaluate(&r, T0 + 6 * S).admitted);
    }

    #[test]
    fn sliding_window_retry_after_and_reset() {
        let r = rule(r#"[{"requests":3,"per":"10s"}]"#, "sliding_window");
        let mut st = RuleState::fresh(&r);
        for t in [0, 2, 4] {
            let e = st.evaluate(&r, T0 + t * S);
            assert!(e.admitted);
            st = e.next;
        }
        let e = st.evaluate(&r, T0 + 5 * S);
        assert!(!e.admitted);
        // The request at 0 stops counting once more than 10s have passed.
        assert_eq!(e.retry_after_ns, 5 * S + MS);
        assert_eq!(e.before[0].remaining, 0);
        assert!(!st.evaluate(&r, T0 + 10 * S).admitted);
        assert!(st.evaluate(&r, T0 + 10 * S + MS).admitted);
    }

    /// Reference model of the sliding window: admit iff fewer than `n` admissions in the
    /// closed interval `[t - per, t]` (ms resolution, as documented).
    #[test]
    fn sliding_window_matches_reference_model() {
        let mut rng = Rng(7);
        for case in 0..200 {
            let n = 1 + rng.below(6);
            let per_ms = 1 + rng.below(3000);
            let r = rule(
                &format!(r#"[{{"requests":{n},"per":"{per_ms}ms"}}]"#),
                "sliding_window",
            );
            let mut t = T0;
            let mut times = vec![];
            for _ in 0..80 {
                t += rng.below(per_ms * MS / n + MS);
                times.push(t);
            }
            let got = run(&r, &times);
            let mut admitted_ms: Vec<u64> = vec![];
            for (i, &t) in times.iter().enumerate() {
                let now = t / MS;
                let live = admitted_ms.iter().filter(|a| now - **a <= per_ms).count() as u64;
                let want = live < n;
                assert_eq!(got[i], want, "case {case} request {i}");
                if want {
                    admitted_ms.push(now);
                }
            }
            // The guarantee users rely on: never more than n in any window of length per.
            for (i, a) in admitted_ms.iter().enumerate() {
                let within = admitted_ms[i..].iter().filter(|b| **b - a < per_ms).count();
                assert!(within as u64 <= n, "case {case}");
            }
        }
    }

    /// Reference model of GCRA as a continuous token bucket (in exact rational arithmetic):
    /// capacity `burst`, refill `requests/per`; a request takes one token.
    #[test]
    fn gcra_matches_token_bucket_reference_model() {
        let mut rng = Rng(11);
        for case in 0..200 {
            let requests = 1 + rng.below(20);
            let per_ms = 1000 * (1 + rng.below(60));
            let burst = 1 + rng.below(10);
            let r = rule(
                &format!(r#"[{{"requests":{requests},"per":"{per_ms}ms","burst":{burst}}}]"#),
                "token_bucket",
            );
            let interval = r.tiers[0].interval_ns() as u128;
            // Tokens scaled by `interval` ns: the bucket holds burst*interval and gains 1/ns.
            let cap = burst as u128 * interval;
            let mut level = cap;
            let mut last = T0;
            let mut t = T0;
            let mut times = vec![];
            for _ in 0..100 {
                t += rng.below(2 * interval as u64 + 1);
                times.push(t);
            }
            let got = run(&r, &times);
            for (i, &t) in times.iter().enumerate() {
                level = (level + (t - last) as u128).min(cap);
                last = t;
                let want = level >= interval;
                assert_eq!(got[i], want, "case {case} request {i}");
                if want {
                    level -= interval;
                }
            }
        }
    }

    #[test]
    fn undo_restores_the_admission() {
        for (limits, alg) in [
            (
                r#"[{"requests":2,"per":"1s"},{"requests":5,"per":"1m"}]"#,
                "token_bucket",
            ),
            (
                r#"[{"requests":2,"per":"1s"},{"requests":5,"per":"1m"}]"#,
                "sliding_window",
            ),
        ] {
            let r = rule(limits, alg);
            let st = RuleState::fresh(&r).evaluate(&r, T0).next;
            let e = st.evaluate(&r, T0 + MS);
            let mut undone = e.next.clone();
            undone.undo(&r, T0 + MS);
            let before = st.evaluate(&r, T0 + 2 * MS);
            let again = undone.evaluate(&r, T0 + 2 * MS);
            assert_eq!(before.after, again.after, "{alg}");
        }
    }

    #[test]
    fn idle_and_debt() {
        let r = rule(r#"[{"requests":10,"per":"10s"}]"#, "token_bucket");
        let st = RuleState::fresh(&r).evaluate(&r, T0).next;
        assert_eq!(st.idle_at_ms(&r), (T0 + S) / MS);
        let r = rule(r#"[{"requests":10,"per":"10s"}]"#, "sliding_window");
        let mut st = RuleState::fresh(&r);
        for i in 0..4 {
            st = st.evaluate(&r, T0 + i * MS).next;
        }
        assert_eq!(st.idle_at_ms(&r), T0 / MS + 3 + 10_001);
        assert_eq!(st.drain_at_ms(&r, T0 + 3 * MS), T0 / MS + 3 + 4000);
    }

    #[test]
    fn decode_rejects_mismatched_shapes() {
        let r = rule(r#"[{"requests":2,"per":"1s"}]"#, "sliding_window");
        assert_eq!(RuleState::decode(&r, &[1, 0], 0), None);
        assert_eq!(RuleState::decode(&r, &[0, 0, 9], 0), None);
        let g = rule(r#"[{"requests":2,"per":"1s"}]"#, "token_bucket");
        assert_eq!(RuleState::decode(&g, &[0; 7], 0), None);
    }

    /// Small deterministic PRNG (xorshift64*) for the model tests.
    pub struct Rng(pub u64);
    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        pub fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }
}
