//! The decision for one request across every matching rule, over any [`SharedStore`].
//!
//! Atomicity across rules: a read-only pass evaluates every matching rule (no writes); if any
//! rejects, the request is rejected and nothing is written. Otherwise each rule's entry is
//! committed with compare-and-swap in configuration order; if a commit finds that the state
//! changed and the rule now rejects, the rules already committed are rolled back (GCRA: TAT
//! minus one interval; sliding log: the timestamp removed) and the request is rejected.
//! A single matching rule needs no read pass: its one CAS is the decision.

use crate::bucket::{self, bucket_index, capacities, key_id, Bucket, Entry, Insert};
use crate::config::{FailureMode, Mode, Rule, Settings};
use crate::limiter::{Evaluation, RuleState, TierView};
use switchyard_core::shared::{cas_update, CasOutcome, SharedStore, Update};
use switchyard_core::RequestView;

use switchyard_core::duration::NS_PER_MS;

/// The limiter of one plugin configuration.
pub struct Limiter {
    pub settings: Settings,
    /// The shared-data key of each bucket.
    keys: Vec<String>,
    capacities: Vec<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No rule matched, or every matching rule admitted the request.
    Allow,
    /// `rule` rejected the request (the first rejecting rule in configuration order).
    Reject { rule: usize, retry_after_ns: u64 },
    /// Shadow mode: `rule` would have rejected the request; it is admitted.
    ShadowReject { rule: usize, retry_after_ns: u64 },
    /// Shared state for `rule` could not be updated; `failure_mode: deny` rejects.
    FailureDeny { rule: usize },
}

/// What the response reports for one matching rule: its tightest tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleReport {
    pub rule: usize,
    pub view: TierView,
}

/// Per-rule counter increments for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RuleCounts {
    pub allowed: u64,
    pub limited: u64,
    pub shadow_limited: u64,
    pub failure_allowed: u64,
    pub failure_denied: u64,
    pub cas_retries: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// One per matching rule, in configuration order (empty: the route is not limited).
    pub reports: Vec<RuleReport>,
    /// Indexed by rule.
    pub counts: Vec<RuleCounts>,
    /// Change in the number of occupied slots.
    pub slots_delta: i64,
    pub evicted_idle: u64,
    pub evicted_active: u64,
    /// Rollbacks that could not be written (the request stays rejected; the other rule keeps
    /// one extra admission).
    pub rollback_failures: u64,
}

struct Matched {
    rule: usize,
    key_id: Vec<u8>,
    bucket: usize,
}

/// What one rule's CAS closure reports back.
struct Step {
    eval: Evaluation,
    insert: Option<Insert>,
    slots_delta: i64,
}

impl Limiter {
    /// `namespace` separates the state of different plugin instances in one Envoy.
    pub fn new(settings: Settings, namespace: &str) -> Limiter {
        let capacities = capacities(settings.max_keys);
        let keys = (0..capacities.len())
            .map(|i| format!("switchyard.ratelimit.{namespace}.b{i}"))
            .collect();
        Limiter {
            settings,
            keys,
            capacities,
        }
    }

    pub fn bucket_count(&self) -> usize {
        self.capacities.len()
    }

    pub fn bucket_key(&self, i: usize) -> &str {
        self.keys.get(i).map_or("", String::as_str)
    }

    /// Decides a request at `now_ns` (Envoy's clock). Never blocks: the decision is made with
    /// at most `max_cas_retries` retries per rule.
    pub fn decide<S: SharedStore + ?Sized>(
        &self,
        store: &S,
        req: &RequestView,
        now_ns: u64,
    ) -> Outcome {
        let rules = &self.settings.rules;
        let matched: Vec<Matched> = rules
            .iter()
            .enumerate()
            // A `scope: global` rule without local tiers is decided by its service only.
            .filter(|(_, r)| !r.tiers.is_empty() && r.matcher.matches(req))
            .filter_map(|(i, r)| {
                // A missing key part skips the rule.
                let key = r.key.composite(req)?;
                let key_id = key_id(&key);
                let bucket = bucket_index(r.tag, &key_id, self.capacities.len());
                Some(Matched {
                    rule: i,
                    key_id,
                    bucket,
                })
            })
            .collect();
        let mut out = Outcome {
            verdict: Verdict::Allow,
            reports: Vec::new(),
            counts: vec![RuleCounts::default(); rules.len()],
            slots_delta: 0,
            evicted_idle: 0,
            evicted_active: 0,
            rollback_failures: 0,
        };
        if matched.is_empty() {
            return out;
        }
        if matched.len() > 1 && self.read_pass_rejects(store, &matched, now_ns, &mut out) {
            return out;
        }

        let mut committed: Vec<&Matched> = Vec::new();
        let mut reports: Vec<RuleReport> = Vec::new();
        for m in &matched {
            let rule = &rules[m.rule];
            let attempt = |retries: u32| {
                cas_update(store, self.bucket_key(m.bucket), retries, |cur| {
                    self.step(rule, m, cur, now_ns)
                })
            };
            let mut outcome = attempt(self.settings.max_cas_retries);
            out.counts[m.rule].cas_retries += u64::from(outcome.retries());
            if matches!(outcome, CasOutcome::Exhausted { .. })
                && self.settings.failure_mode == FailureMode::Allow
            {
                // Best effort before failing open: contention alone (e.g. a client flooding
                // its own bucket) must not let requests through uncounted.
                outcome = attempt(self.settings.max_cas_retries.saturating_mul(4));
                out.counts[m.rule].cas_retries += u64::from(outcome.retries());
            }
            match outcome {
                CasOutcome::Written { result, .. } => {
                    out.slots_delta += result.slots_delta;
                    match result.insert {
                        Some(Insert::ReplacedIdle) => out.evicted_idle += 1,
                        Some(Insert::ReplacedActive) => out.evicted_active += 1,
                        _ => {}
                    }
                    reports.push(report(m.rule, &result.eval.after));
                    committed.push(m);
                }
                CasOutcome::Kept { result, .. } => {
                    // The state changed since the read pass and this rule now rejects.
                    self.rollback(store, &committed, now_ns, &mut out);
                    let mut reports = self.current_reports(store, &matched, now_ns);
                    if reports.is_empty() {
                        reports.push(report(m.rule, &result.eval.before));
                    }
                    out.reports = reports;
                    self.reject(m.rule, result.eval.retry_after_ns, &mut out);
                    return out;
                }
                CasOutcome::Exhausted { .. } | CasOutcome::Failed(_) => {
                    match self.settings.failure_mode {
                        FailureMode::Allow => out.counts[m.rule].failure_allowed += 1,
                        FailureMode::Deny => {
                            out.counts[m.rule].failure_denied += 1;
                            self.rollback(store, &committed, now_ns, &mut out);
                            out.verdict = Verdict::FailureDeny { rule: m.rule };
                            out.reports = reports;
                            return out;
                        }
                    }
                }
            }
        }
        for m in &committed {
            out.counts[m.rule].allowed += 1;
        }
        out.reports = reports;
        out
    }

    /// Evaluates every matching rule without writing. Returns true (and fills `out`) when the
    /// request is rejected.
    fn read_pass_rejects<S: SharedStore + ?Sized>(
        &self,
        store: &S,
        matched: &[Matched],
        now_ns: u64,
        out: &mut Outcome,
    ) -> bool {
        let mut reports = Vec::with_capacity(matched.len());
        let mut rejecting: Option<(usize, u64)> = None;
        for m in matched {
            let Some(eval) = self.read(store, m, now_ns) else {
                // Unreadable state: the commit pass decides (and applies the failure mode).
                return false;
            };
            if !eval.admitted {
                let (first, retry) = rejecting.unwrap_or((m.rule, 0));
                rejecting = Some((first, retry.max(eval.retry_after_ns)));
            }
            reports.push(report(m.rule, &eval.before));
        }
        match rejecting {
            Some((rule, retry)) => {
                out.reports = reports;
                self.reject(rule, retry, out);
                true
            }
            None => false,
        }
    }

    fn read<S: SharedStore + ?Sized>(
        &self,
        store: &S,
        m: &Matched,
        now_ns: u64,
    ) -> Option<Evaluation> {
        let rule = &self.settings.rules[m.rule];
        let (bytes, _) = store.get(self.bucket_key(m.bucket)).ok()?;
        let state = bytes
            .as_deref()
            .and_then(|b| bucket::locate(b, rule.tag, &m.key_id))
            .and_then(|at| RuleState::decode(rule, at.state, at.last_seen_ms))
            .unwrap_or_else(|| RuleState::fresh(rule));
        Some(state.evaluate(rule, now_ns))
    }

    /// Reports of every matching rule as they stand (after a rejection, nothing consumed).
    fn current_reports<S: SharedStore + ?Sized>(
        &self,
        store: &S,
        matched: &[Matched],
        now_ns: u64,
    ) -> Vec<RuleReport> {
        matched
            .iter()
            .filter_map(|m| {
                self.read(store, m, now_ns)
                    .map(|e| report(m.rule, &e.before))
            })
            .collect()
    }

    fn reject(&self, rule: usize, retry_after_ns: u64, out: &mut Outcome) {
        match self.settings.mode {
            Mode::Enforce => {
                out.counts[rule].limited += 1;
                out.verdict = Verdict::Reject {
                    rule,
                    retry_after_ns,
                };
            }
            Mode::Shadow => {
                out.counts[rule].shadow_limited += 1;
                out.verdict = Verdict::ShadowReject {
                    rule,
                    retry_after_ns,
                };
            }
        }
    }

    /// One CAS attempt for one rule: find or insert the key's entry, evaluate, write if admitted.
    fn step(&self, rule: &Rule, m: &Matched, cur: Option<&[u8]>, now_ns: u64) -> Update<Step> {
        let now_ms = now_ns / NS_PER_MS;
        let at = cur.and_then(|b| bucket::locate(b, rule.tag, &m.key_id));
        let eval = at
            .and_then(|a| RuleState::decode(rule, a.state, a.last_seen_ms))
            .unwrap_or_else(|| RuleState::fresh(rule))
            .evaluate(rule, now_ns);
        if !eval.admitted {
            return Update::Keep(Step {
                eval,
                insert: None,
                slots_delta: 0,
            });
        }
        // The common case, a known key: its entry is updated in place, nothing else decoded.
        if let (Some(stored), Some(at)) = (cur, at) {
            // Never move backwards: another worker may have read the clock a little later.
            let last_seen_ms = at.last_seen_ms.max(now_ms);
            let times = [
                last_seen_ms,
                eval.next.idle_at_ms(rule),
                eval.next.drain_at_ms(rule, now_ns),
            ];
            let state = eval.next.encode(last_seen_ms);
            if let Some(bytes) = bucket::patched(stored, &at, times, &state) {
                let step = Step {
                    eval,
                    insert: None,
                    slots_delta: 0,
                };
                return Update::Write(bytes, step);
            }
        }
        // A new key (or a state of another size): decode the bucket, insert, encode.
        let mut bucket = Bucket::decode(cur);
        let before_len = bucket.entries.len() as i64;
        let found = bucket.find(rule.tag, &m.key_id);
        let entry = make_entry(
            rule,
            &m.key_id,
            &eval.next,
            now_ns,
            found.map(|i| &bucket.entries[i]),
        );
        let insert = match found {
            Some(i) => {
                bucket.entries[i] = entry;
                None
            }
            None => {
                let capacity = self.capacities.get(m.bucket).copied().unwrap_or(1) as usize;
                Some(bucket.insert(entry, capacity, now_ms).1)
            }
        };
        let slots_delta = bucket.entries.len() as i64 - before_len;
        Update::Write(
            bucket.encode(),
            Step {
                eval,
                insert,
                slots_delta,
            },
        )
    }

    /// Takes back the admissions of `committed` rules. Best effort within the retry bound.
    fn rollback<S: SharedStore + ?Sized>(
        &self,
        store: &S,
        committed: &[&Matched],
        now_ns: u64,
        out: &mut Outcome,
    ) {
        for m in committed {
            let rule = &self.settings.rules[m.rule];
            let outcome = cas_update(
                store,
                self.bucket_key(m.bucket),
                self.settings.max_cas_retries,
                |cur| {
                    let mut bucket = Bucket::decode(cur);
                    let Some(i) = bucket.find(rule.tag, &m.key_id) else {
                        // Evicted meanwhile: its state restarted from full, nothing to undo.
                        return Update::Keep(());
                    };
                    let e = &bucket.entries[i];
                    let Some(mut state) = RuleState::decode(rule, &e.state, e.last_seen_ms) else {
                        return Update::Keep(());
                    };
                    state.undo(rule, now_ns);
                    let entry = make_entry(rule, &m.key_id, &state, now_ns, Some(e));
                    bucket.entries[i] = entry;
                    Update::Write(bucket.encode(), ())
                },
            );
            out.counts[m.rule].cas_retries += u64::from(outcome.retries());
            if outcome.result().is_none() {
                out.rollback_failures += 1;
            }
        }
    }
}

fn make_entry(
    rule: &Rule,
    key_id: &[u8],
    state: &RuleState,
    now_ns: u64,
    previous: Option<&Entry>,
) -> Entry {
    let now_ms = now_ns / NS_PER_MS;
    // Never move backwards: another worker may have read the clock a little later.
    let last_seen_ms = previous.map_or(now_ms, |p| p.last_seen_ms.max(now_ms));
    Entry {
        tag: rule.tag,
        key_id: key_id.to_vec(),
        last_seen_ms,
        idle_at_ms: state.idle_at_ms(rule),
        drain_at_ms: state.drain_at_ms(rule, now_ns),
        state: state.encode(last_seen_ms),
    }
}

fn report(rule: usize, views: &[TierView]) -> RuleReport {
    RuleReport {
        rule,
        view: TierView::tightest(views).unwrap_or(TierView {
            requests: 0,
            per_ns: 0,
            remaining: 0,
            reset_ns: 0,
        }),
    }
}
