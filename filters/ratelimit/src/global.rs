//! Global limits (`scope: global`), the pure part: which global rules a request asks about and
//! with which descriptor, what a service answer means, how an answer combines with the local
//! decision, per-worker quota leases, and the table of calls in flight that later requests for
//! the same key wait on (coalescing).
//!
//! Protocol: `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` (see
//! [`crate::rls_proto`]), one call per rule and key, one descriptor whose entries are the
//! rule's key parts, `hits_addend` = the rule's `lease` (1 without leasing).

use crate::config::{FailureMode, GlobalSpec, Mode, Settings};
use crate::engine::{Outcome, RuleReport, Verdict};
use crate::limiter::TierView;
use crate::rls_proto::{self, Code, Descriptor, Request, Response};
use std::collections::HashMap;
use switchyard_core::RequestView;

use switchyard_core::duration::NS_PER_S;
/// Lifetime of a lease when the service reports neither a window nor a reset time.
pub const DEFAULT_LEASE_TTL_NS: u64 = NS_PER_S;
/// `Retry-After` of a global rejection whose answer carries no reset time.
pub const DEFAULT_RETRY_NS: u64 = NS_PER_S;
/// Keys whose leases one worker keeps (oldest expiry evicted first).
pub const MAX_LEASE_KEYS: usize = 10_000;
/// Calls one worker keeps in flight for coalescing (more are sent uncoalesced).
pub const MAX_INFLIGHT: usize = 10_000;

/// Identifies a rule's limit for one key: rule index and the composite key value.
pub type LeaseKey = (usize, String);

/// One global rule that applies to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalAsk {
    pub rule: usize,
    pub key: LeaseKey,
    pub entries: Vec<(String, String)>,
}

/// The global rules that apply to `req`, in configuration order: the rule matches and every
/// key part is present (as for local rules, a missing part skips the rule).
pub fn asks(settings: &Settings, req: &RequestView) -> Vec<GlobalAsk> {
    settings
        .rules
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let spec = r.global.as_ref()?;
            if !r.matcher.matches(req) {
                return None;
            }
            let mut entries = Vec::with_capacity(r.key.0.len());
            for (part, name) in r.key.0.iter().zip(&spec.descriptor_keys) {
                entries.push((name.clone(), part.extract(req)?));
            }
            let key = r.key.composite(req)?;
            Some(GlobalAsk {
                rule: i,
                key: (i, key),
                entries,
            })
        })
        .collect()
}

/// The `RateLimitRequest` message for one ask.
pub fn request_message(spec: &GlobalSpec, ask: &GlobalAsk) -> Vec<u8> {
    rls_proto::encode_request(&Request {
        domain: spec.domain.clone(),
        descriptors: vec![Descriptor {
            entries: ask.entries.clone(),
        }],
        hits_addend: spec.lease,
    })
}

/// What one service answer (or a lease hit) decides for a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlobalResult {
    Ok {
        view: Option<TierView>,
        /// Time until the service's window resets (bounds a lease's life).
        reset_ns: Option<u64>,
        headers: Vec<(String, Vec<u8>)>,
    },
    OverLimit {
        view: Option<TierView>,
        retry_after_ns: u64,
        headers: Vec<(String, Vec<u8>)>,
    },
    /// Unreachable, timed out, non-OK gRPC status, undecodable or `UNKNOWN` answer.
    Failure { reason: String },
}

/// The tightest limit the answer reports, as a tier view.
fn view_of(resp: &Response) -> Option<TierView> {
    let views: Vec<TierView> = resp
        .statuses
        .iter()
        .filter_map(|s| {
            let l = s.current_limit.as_ref()?;
            let per_ns = rls_proto::unit_seconds(l.unit)? * NS_PER_S;
            Some(TierView {
                requests: u64::from(l.requests_per_unit),
                per_ns,
                remaining: u64::from(s.limit_remaining),
                reset_ns: s.duration_until_reset_ns.unwrap_or(per_ns),
            })
        })
        .collect();
    TierView::tightest(&views)
}

/// Interprets a finished call: gRPC status (0 = OK) and the message bytes.
pub fn interpret(grpc_status: u32, message: Option<&[u8]>) -> GlobalResult {
    if grpc_status != 0 {
        return GlobalResult::Failure {
            reason: format!("gRPC status {grpc_status}"),
        };
    }
    let resp = match rls_proto::decode_response(message.unwrap_or_default()) {
        Ok(r) => r,
        Err(e) => {
            return GlobalResult::Failure {
                reason: format!("undecodable answer: {e:?}"),
            }
        }
    };
    let view = view_of(&resp);
    let reset = |over_only: bool| {
        resp.statuses
            .iter()
            .filter(|s| !over_only || s.code == Code::OverLimit)
            .filter_map(|s| s.duration_until_reset_ns)
            .max()
    };
    match resp.overall_code {
        Code::Ok => GlobalResult::Ok {
            view,
            reset_ns: reset(false),
            headers: resp.response_headers,
        },
        Code::OverLimit => GlobalResult::OverLimit {
            view,
            retry_after_ns: reset(true)
                .or(reset(false))
                .filter(|ns| *ns > 0)
                .unwrap_or(DEFAULT_RETRY_NS),
            headers: resp.response_headers,
        },
        Code::Unknown => GlobalResult::Failure {
            reason: "answer without overall_code".to_string(),
        },
    }
}

/// Per-rule counter increments of the global part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GlobalCounts {
    /// The service (or a lease) admitted the request and the rule has no local tiers (whose
    /// admissions the local decision counts), for `<rule>.allowed`.
    pub allowed: u64,
    pub over_limit: u64,
    pub failure_allowed: u64,
    pub failure_denied: u64,
    /// Requests the rule rejected (first rejecting rule), counted in `<rule>.limited`.
    pub limited: u64,
    pub shadow_limited: u64,
}

/// The final decision of a request: the local outcome (which admitted it) combined with the
/// global results, in configuration order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Combined {
    pub outcome: Outcome,
    /// `response_headers_to_add` of every answer, for the response the client gets.
    pub service_headers: Vec<(String, Vec<u8>)>,
    pub counts: Vec<(usize, GlobalCounts)>,
}

pub fn combine(
    settings: &Settings,
    local: &Outcome,
    results: &[(usize, GlobalResult)],
) -> Combined {
    let mut outcome = local.clone();
    let mut service_headers = Vec::new();
    let mut counts: Vec<(usize, GlobalCounts)> = Vec::new();
    let mut sorted: Vec<&(usize, GlobalResult)> = results.iter().collect();
    sorted.sort_by_key(|(rule, _)| *rule);
    let mut first_reject: Option<(usize, Option<u64>)> = None;
    let add_view = |reports: &mut Vec<RuleReport>, rule: usize, view: Option<TierView>| {
        let Some(view) = view else { return };
        match reports.iter_mut().find(|r| r.rule == rule) {
            Some(r) => {
                r.view = TierView::tightest(&[r.view, view]).unwrap_or(view);
            }
            None => reports.push(RuleReport { rule, view }),
        }
    };
    for (rule, result) in sorted {
        let mut c = GlobalCounts::default();
        let failure_mode = settings
            .rules
            .get(*rule)
            .and_then(|r| r.global.as_ref())
            .map_or(FailureMode::Allow, |g| g.failure_mode);
        match result {
            GlobalResult::Ok { view, headers, .. } => {
                let local_tiers = settings
                    .rules
                    .get(*rule)
                    .is_some_and(|r| !r.tiers.is_empty());
                if !local_tiers {
                    c.allowed += 1;
                }
                add_view(&mut outcome.reports, *rule, *view);
                service_headers.extend(headers.iter().cloned());
            }
            GlobalResult::OverLimit {
                view,
                retry_after_ns,
                headers,
            } => {
                c.over_limit += 1;
                add_view(&mut outcome.reports, *rule, *view);
                service_headers.extend(headers.iter().cloned());
                if first_reject.is_none() {
                    first_reject = Some((*rule, Some(*retry_after_ns)));
                }
            }
            GlobalResult::Failure { .. } => match failure_mode {
                FailureMode::Allow => c.failure_allowed += 1,
                FailureMode::Deny => {
                    c.failure_denied += 1;
                    if first_reject.is_none() {
                        first_reject = Some((*rule, None));
                    }
                }
            },
        }
        counts.push((*rule, c));
    }
    outcome.reports.sort_by_key(|r| r.rule);
    if let Some((rule, retry)) = first_reject {
        let verdict = match (retry, settings.mode) {
            (None, _) => Verdict::FailureDeny { rule },
            (Some(retry_after_ns), Mode::Enforce) => Verdict::Reject {
                rule,
                retry_after_ns,
            },
            (Some(retry_after_ns), Mode::Shadow) => Verdict::ShadowReject {
                rule,
                retry_after_ns,
            },
        };
        // A local shadow rejection already told its story; the global one replaces it only
        // when it actually rejects.
        if !matches!(
            (outcome.verdict, verdict),
            (Verdict::ShadowReject { .. }, Verdict::ShadowReject { .. })
        ) {
            outcome.verdict = verdict;
        }
        if let Some((_, c)) = counts.iter_mut().find(|(r, _)| *r == rule) {
            match verdict {
                Verdict::Reject { .. } => c.limited += 1,
                Verdict::ShadowReject { .. } => c.shadow_limited += 1,
                _ => {}
            }
        }
    }
    Combined {
        outcome,
        service_headers,
        counts,
    }
}

/// When a lease granted now expires: at the service's window reset if it says, else after its
/// window, else after [`DEFAULT_LEASE_TTL_NS`]. Leased hits are never spent in a later window
/// than the one they were granted in (up to the call's latency).
pub fn lease_expiry(now_ns: u64, result: &GlobalResult) -> u64 {
    let ttl = match result {
        GlobalResult::Ok { view, reset_ns, .. } => reset_ns
            .or(view.map(|v| v.per_ns))
            .unwrap_or(DEFAULT_LEASE_TTL_NS),
        _ => 0,
    };
    now_ns.saturating_add(ttl)
}

/// A hit from a lease: the service's count left plus the hits still leased here.
fn lease_view(view: Option<TierView>, left: u32) -> Option<TierView> {
    view.map(|mut v| {
        v.remaining = v.remaining.saturating_add(u64::from(left));
        v
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub remaining: u32,
    pub expires_at_ns: u64,
    pub view: Option<TierView>,
}

/// An `OVER_LIMIT` answer remembered until the service said its limit resets.
#[derive(Debug)]
struct Denial {
    until_ns: u64,
    view: Option<TierView>,
    headers: Vec<(String, Vec<u8>)>,
}

/// One worker's leases: hits granted by the service and not spent yet, and the keys the
/// service rejected until their reset (so over-limit traffic does not call it again before
/// anything can change). Bounded.
#[derive(Debug, Default)]
pub struct Leases {
    map: HashMap<LeaseKey, Lease>,
    denied: HashMap<LeaseKey, Denial>,
}

impl Leases {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Spends one leased hit of `key`, if a live one is left: the result the request gets.
    pub fn take(&mut self, key: &LeaseKey, now_ns: u64) -> Option<GlobalResult> {
        let lease = self.map.get_mut(key)?;
        if now_ns >= lease.expires_at_ns || lease.remaining == 0 {
            self.map.remove(key);
            return None;
        }
        lease.remaining -= 1;
        Some(GlobalResult::Ok {
            view: lease_view(lease.view, lease.remaining),
            reset_ns: Some(lease.expires_at_ns - now_ns),
            headers: Vec::new(),
        })
    }

    /// The service's earlier `OVER_LIMIT` for `key`, while its reset has not come: the result
    /// the request gets without a call.
    pub fn denied(&mut self, key: &LeaseKey, now_ns: u64) -> Option<GlobalResult> {
        let d = self.denied.get(key)?;
        if now_ns >= d.until_ns {
            self.denied.remove(key);
            return None;
        }
        Some(GlobalResult::OverLimit {
            view: d.view.map(|v| TierView {
                reset_ns: d.until_ns - now_ns,
                ..v
            }),
            retry_after_ns: d.until_ns - now_ns,
            headers: d.headers.clone(),
        })
    }

    /// Remembers an `OVER_LIMIT` answer for `key` until the reset it reports. A fixed-window
    /// service cannot admit `key` before then (and one that counts rejected calls, like
    /// envoyproxy/ratelimit, would only count them), so asking again would change nothing.
    pub fn deny(&mut self, key: LeaseKey, now_ns: u64, result: &GlobalResult) {
        let GlobalResult::OverLimit {
            view,
            retry_after_ns,
            headers,
        } = result
        else {
            return;
        };
        if *retry_after_ns == 0 {
            return;
        }
        if !self.denied.contains_key(&key) && self.denied.len() >= MAX_LEASE_KEYS {
            self.denied.retain(|_, d| d.until_ns > now_ns);
            if self.denied.len() >= MAX_LEASE_KEYS {
                let first = self
                    .denied
                    .iter()
                    .min_by_key(|(_, d)| d.until_ns)
                    .map(|(k, _)| k.clone());
                if let Some(k) = first {
                    self.denied.remove(&k);
                }
            }
        }
        self.denied.insert(
            key,
            Denial {
                until_ns: now_ns.saturating_add(*retry_after_ns),
                view: *view,
                headers: headers.clone(),
            },
        );
    }

    /// Adds `hits` to `key`'s lease (a fresher grant replaces an expired one).
    pub fn grant(&mut self, key: LeaseKey, hits: u32, now_ns: u64, result: &GlobalResult) {
        if hits == 0 {
            return;
        }
        let expires_at_ns = lease_expiry(now_ns, result);
        let view = match result {
            GlobalResult::Ok { view, .. } => *view,
            _ => None,
        };
        if !self.map.contains_key(&key) && self.map.len() >= MAX_LEASE_KEYS {
            self.map
                .retain(|_, l| l.expires_at_ns > now_ns && l.remaining > 0);
            if self.map.len() >= MAX_LEASE_KEYS {
                let oldest = self
                    .map
                    .iter()
                    .min_by_key(|(_, l)| l.expires_at_ns)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    self.map.remove(&k);
                }
            }
        }
        let lease = self.map.entry(key).or_insert(Lease {
            remaining: 0,
            expires_at_ns,
            view,
        });
        if lease.expires_at_ns <= now_ns {
            lease.remaining = 0;
        }
        // Hits from two windows cannot be mixed safely: keep the earlier expiry.
        if lease.remaining == 0 {
            lease.expires_at_ns = expires_at_ns;
        } else {
            lease.expires_at_ns = lease.expires_at_ns.min(expires_at_ns);
        }
        lease.remaining = lease.remaining.saturating_add(hits);
        lease.view = view.or(lease.view);
    }
}

/// A call in flight and the requests waiting for its answer.
#[derive(Debug)]
pub struct Call<W> {
    pub key: LeaseKey,
    /// Hits the call asks for (the dispatcher takes one, each waiter one).
    pub hits: u32,
    pub waiters: Vec<W>,
}

/// One worker's calls in flight, by token, and per key the call later requests may join.
#[derive(Debug)]
pub struct Inflight<W> {
    calls: HashMap<u32, Call<W>>,
    open: HashMap<LeaseKey, u32>,
}

impl<W> Default for Inflight<W> {
    fn default() -> Self {
        Inflight {
            calls: HashMap::new(),
            open: HashMap::new(),
        }
    }
}

impl<W> Inflight<W> {
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Joins the open call for `key` if its answer has a hit to spare for one more request
    /// (a call for `hits` serves the dispatcher and at most `hits - 1` waiters). Returns the
    /// waiter back when it cannot join.
    pub fn join(&mut self, key: &LeaseKey, waiter: W) -> Result<u32, W> {
        let Some(token) = self.open.get(key).copied() else {
            return Err(waiter);
        };
        match self.calls.get_mut(&token) {
            Some(call) if (call.waiters.len() as u64) + 1 < u64::from(call.hits) => {
                call.waiters.push(waiter);
                Ok(token)
            }
            _ => Err(waiter),
        }
    }

    /// Records a dispatched call; it becomes the one later requests for `key` join.
    pub fn start(&mut self, token: u32, key: LeaseKey, hits: u32) {
        if self.calls.len() >= MAX_INFLIGHT {
            // Not tracked for coalescing; its answer still reaches its dispatcher.
            return;
        }
        self.open.insert(key.clone(), token);
        self.calls.insert(
            token,
            Call {
                key,
                hits,
                waiters: Vec::new(),
            },
        );
    }

    /// The call of `token` is over (answered, or its dispatcher went away).
    pub fn finish(&mut self, token: u32) -> Option<Call<W>> {
        let call = self.calls.remove(&token)?;
        if self.open.get(&call.key) == Some(&token) {
            self.open.remove(&call.key);
        }
        Some(call)
    }

    /// Removes every waiter `gone` says went away (its request ended before the answer).
    pub fn remove_waiters(&mut self, mut gone: impl FnMut(&W) -> bool) {
        for call in self.calls.values_mut() {
            call.waiters.retain(|w| !gone(w));
        }
    }
}

/// How an answer's hits are shared: the dispatcher and every waiter get one if the answer is
/// OK; what is left goes to the lease.
pub fn leftover(hits: u32, waiters: usize) -> u32 {
    hits.saturating_sub(1)
        .saturating_sub(u32::try_from(waiters).unwrap_or(u32::MAX))
}

/// The result a request served from an answer gets, `unspent` leased hits still left after it:
/// the service's count (which already took the whole lease) plus those.
pub fn share(result: &GlobalResult, unspent: u32) -> GlobalResult {
    match result {
        GlobalResult::Ok {
            view,
            reset_ns,
            headers,
        } => GlobalResult::Ok {
            view: view.map(|mut v| {
                v.remaining = v.remaining.saturating_add(u64::from(unspent));
                v
            }),
            reset_ns: *reset_ns,
            headers: headers.clone(),
        },
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use crate::rls_proto::{encode_response, CurrentLimit, DescriptorStatus};

    const S: u64 = NS_PER_S;

    fn settings(extra: &str) -> Settings {
        let json = format!(
            r#"{{"rules":[
              {{"name":"local","key":[{{"header":"x-user-id"}}],"limits":[{{"requests":5,"per":"1s"}}]}},
              {{"name":"global","scope":"global","key":[{{"client_ip":{{"trusted_hops":0}}}},{{"header":"x-user-id"}},{{"literal":"api"}}],
                "service":{{"cluster":"rls","domain":"edge"{extra}}},"lease":10,
                "limits":[{{"requests":100,"per":"1s"}}]}}
            ]}}"#
        );
        parse(json.as_bytes()).unwrap()
    }

    fn req() -> RequestView {
        RequestView::new("GET", "/api")
            .with_source("10.0.0.1:1234")
            .with_header("x-user-id", "alice")
    }

    #[test]
    fn descriptor_from_key_parts() {
        let s = settings("");
        let a = asks(&s, &req());
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].rule, 1);
        assert_eq!(
            a[0].entries,
            vec![
                ("remote_address".to_string(), "10.0.0.1".to_string()),
                ("x-user-id".to_string(), "alice".to_string()),
                ("generic_key".to_string(), "api".to_string()),
            ]
        );
        let msg = request_message(s.rules[1].global.as_ref().unwrap(), &a[0]);
        let back = rls_proto::decode_request(&msg).unwrap();
        assert_eq!(back.domain, "edge");
        assert_eq!(back.hits_addend, 10);
        assert_eq!(back.descriptors[0].entries, a[0].entries);
        // A missing key part skips the rule.
        assert!(asks(&s, &RequestView::new("GET", "/").with_source("10.0.0.1:1")).is_empty());
    }

    #[test]
    fn descriptor_keys_rename() {
        let s = settings(r#","descriptor_keys":["ip","user","kind"]"#);
        let a = asks(&s, &req());
        let names: Vec<&str> = a[0].entries.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["ip", "user", "kind"]);
    }

    fn answer(code: Code, remaining: u32, reset_s: u64) -> Vec<u8> {
        encode_response(&Response {
            overall_code: code,
            statuses: vec![DescriptorStatus {
                code,
                current_limit: Some(CurrentLimit {
                    name: String::new(),
                    requests_per_unit: 10,
                    unit: 2,
                }),
                limit_remaining: remaining,
                duration_until_reset_ns: Some(reset_s * S),
            }],
            response_headers: vec![("x-rls".into(), b"1".to_vec())],
        })
    }

    #[test]
    fn interpret_answers() {
        let ok = interpret(0, Some(&answer(Code::Ok, 4, 30)));
        let view = TierView {
            requests: 10,
            per_ns: 60 * S,
            remaining: 4,
            reset_ns: 30 * S,
        };
        assert_eq!(
            ok,
            GlobalResult::Ok {
                view: Some(view),
                reset_ns: Some(30 * S),
                headers: vec![("x-rls".into(), b"1".to_vec())]
            }
        );
        match interpret(0, Some(&answer(Code::OverLimit, 0, 12))) {
            GlobalResult::OverLimit { retry_after_ns, .. } => assert_eq!(retry_after_ns, 12 * S),
            other => panic!("{other:?}"),
        }
        // Limitador-style answer: only the overall code.
        let bare = encode_response(&Response {
            overall_code: Code::OverLimit,
            ..Default::default()
        });
        match interpret(0, Some(&bare)) {
            GlobalResult::OverLimit {
                retry_after_ns,
                view,
                ..
            } => {
                assert_eq!(retry_after_ns, DEFAULT_RETRY_NS);
                assert_eq!(view, None);
            }
            other => panic!("{other:?}"),
        }
        for (status, msg) in [
            (14u32, None),
            (4, None),
            (0, Some(&b"\xff\xff"[..])),
            (0, Some(&b""[..])),
            (0, None),
        ] {
            assert!(
                matches!(interpret(status, msg), GlobalResult::Failure { .. }),
                "{status} {msg:?}"
            );
        }
    }

    fn local_allow() -> Outcome {
        Outcome {
            verdict: Verdict::Allow,
            reports: vec![RuleReport {
                rule: 1,
                view: TierView {
                    requests: 100,
                    per_ns: S,
                    remaining: 99,
                    reset_ns: 10_000_000,
                },
            }],
            counts: vec![Default::default(); 2],
            slots_delta: 0,
            evicted_idle: 0,
            evicted_active: 0,
            rollback_failures: 0,
        }
    }

    #[test]
    fn combine_over_limit_rejects_with_the_service_view_and_headers() {
        let s = settings("");
        let over = interpret(0, Some(&answer(Code::OverLimit, 0, 12)));
        let c = combine(&s, &local_allow(), &[(1, over)]);
        assert_eq!(
            c.outcome.verdict,
            Verdict::Reject {
                rule: 1,
                retry_after_ns: 12 * S
            }
        );
        // The global view (0 left) is tighter than the local tier's.
        assert_eq!(c.outcome.reports.len(), 1);
        assert_eq!(c.outcome.reports[0].view.remaining, 0);
        assert_eq!(c.service_headers, vec![("x-rls".into(), b"1".to_vec())]);
        assert_eq!(c.counts[0].1.over_limit, 1);
        assert_eq!(c.counts[0].1.limited, 1);
        let ok = interpret(0, Some(&answer(Code::Ok, 3, 12)));
        let c = combine(&s, &local_allow(), &[(1, ok)]);
        assert_eq!(c.outcome.verdict, Verdict::Allow);
        assert_eq!(c.outcome.reports[0].view.remaining, 3);
        // The rule has local tiers: the local decision counted its admission.
        assert_eq!(c.counts[0].1.allowed, 0);
    }

    #[test]
    fn combine_failure_follows_failure_mode() {
        let fail = GlobalResult::Failure { reason: "x".into() };
        let allow = settings("");
        let c = combine(&allow, &local_allow(), &[(1, fail.clone())]);
        assert_eq!(c.outcome.verdict, Verdict::Allow);
        assert_eq!(c.counts[0].1.failure_allowed, 1);
        let deny = settings(r#","failure_mode":"deny""#);
        let c = combine(&deny, &local_allow(), &[(1, fail)]);
        assert_eq!(c.outcome.verdict, Verdict::FailureDeny { rule: 1 });
        assert_eq!(c.counts[0].1.failure_denied, 1);
    }

    #[test]
    fn shadow_mode_never_rejects_globally() {
        let json = r#"{"mode":"shadow","rules":[{"name":"g","scope":"global","key":[{"literal":"x"}],
            "service":{"cluster":"rls","domain":"d"}}]}"#;
        let s = parse(json.as_bytes()).unwrap();
        let mut local = local_allow();
        local.reports.clear();
        let over = interpret(0, Some(&answer(Code::OverLimit, 0, 2)));
        let c = combine(&s, &local, &[(0, over)]);
        assert!(matches!(
            c.outcome.verdict,
            Verdict::ShadowReject { rule: 0, .. }
        ));
        assert_eq!(c.counts[0].1.shadow_limited, 1);
        let ok = interpret(0, Some(&answer(Code::Ok, 3, 2)));
        let c = combine(&s, &local, &[(0, ok)]);
        assert_eq!(c.counts[0].1.allowed, 1, "no local tiers: counted here");
    }

    #[test]
    fn leases_spend_exactly_what_was_granted_and_expire_with_the_window() {
        let mut l = Leases::default();
        let key: LeaseKey = (1, "k".into());
        let ok = interpret(0, Some(&answer(Code::Ok, 10, 2)));
        assert_eq!(l.take(&key, 0), None);
        l.grant(key.clone(), 3, 0, &ok);
        let taken = (0..5).filter(|_| l.take(&key, S).is_some()).count();
        assert_eq!(taken, 3);
        l.grant(key.clone(), 3, 0, &ok);
        // Expired at the window reset (2 s): nothing left to spend.
        assert_eq!(l.take(&key, 2 * S), None);
        assert!(l.is_empty());
    }

    #[test]
    fn leases_are_bounded() {
        let mut l = Leases::default();
        let ok = interpret(0, Some(&answer(Code::Ok, 10, 2)));
        for i in 0..(MAX_LEASE_KEYS + 50) {
            l.grant((0, i.to_string()), 1, i as u64, &ok);
        }
        assert_eq!(l.len(), MAX_LEASE_KEYS);
    }

    #[test]
    fn coalescing_serves_at_most_the_hits_of_the_call() {
        let mut f: Inflight<u32> = Inflight::default();
        let key: LeaseKey = (0, "k".into());
        assert_eq!(f.join(&key, 1), Err(1));
        f.start(7, key.clone(), 3);
        assert_eq!(f.join(&key, 1), Ok(7));
        assert_eq!(f.join(&key, 2), Ok(7));
        // The dispatcher and two waiters use the three hits: a fourth request calls itself.
        assert_eq!(f.join(&key, 3), Err(3));
        f.start(8, key.clone(), 3);
        assert_eq!(f.join(&key, 3), Ok(8));
        f.remove_waiters(|w| *w == 2);
        let call = f.finish(7).unwrap();
        assert_eq!(call.waiters, vec![1]);
        assert_eq!(leftover(call.hits, call.waiters.len()), 1);
        // The newer call stays open.
        assert_eq!(f.join(&key, 4), Ok(8));
        assert!(f.finish(7).is_none());
        // Without leasing (1 hit) nothing ever joins.
        f.start(9, (0, "x".into()), 1);
        assert_eq!(f.join(&(0, "x".into()), 5), Err(5));
        assert_eq!(leftover(1, 0), 0);
        assert_eq!(leftover(10, 20), 0);
    }

    #[test]
    fn share_counts_down_remaining() {
        let ok = interpret(0, Some(&answer(Code::Ok, 5, 2)));
        match share(&ok, 2) {
            GlobalResult::Ok { view, .. } => assert_eq!(view.unwrap().remaining, 7),
            other => panic!("{other:?}"),
        }
    }
}

#[cfg(test)]
mod denial_tests {
    use super::*;

    #[test]
    fn a_denial_lasts_until_the_reported_reset_and_counts_down() {
        let mut leases = Leases::default();
        let key: LeaseKey = (0, "k".into());
        let over = GlobalResult::OverLimit {
            view: None,
            retry_after_ns: 10 * NS_PER_S,
            headers: vec![("x".into(), b"y".to_vec())],
        };
        leases.deny(key.clone(), 100, &over);
        match leases.denied(&key, 100 + 4 * NS_PER_S) {
            Some(GlobalResult::OverLimit {
                retry_after_ns,
                headers,
                ..
            }) => {
                assert_eq!(retry_after_ns, 6 * NS_PER_S);
                assert_eq!(headers, vec![("x".to_string(), b"y".to_vec())]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(leases.denied(&key, 100 + 10 * NS_PER_S), None);
        // OK answers and zero resets are never remembered.
        leases.deny(
            key.clone(),
            0,
            &GlobalResult::Ok {
                view: None,
                reset_ns: None,
                headers: vec![],
            },
        );
        assert_eq!(leases.denied(&key, 1), None);
        let now = GlobalResult::OverLimit {
            view: None,
            retry_after_ns: 0,
            headers: vec![],
        };
        leases.deny(key.clone(), 0, &now);
        assert_eq!(leases.denied(&key, 0), None);
    }

    #[test]
    fn denials_are_bounded() {
        let mut leases = Leases::default();
        let over = GlobalResult::OverLimit {
            view: None,
            retry_after_ns: NS_PER_S,
            headers: vec![],
        };
        for i in 0..(MAX_LEASE_KEYS + 10) {
            leases.deny((0, format!("k{i}")), i as u64, &over);
        }
        assert!(leases.denied.len() <= MAX_LEASE_KEYS);
    }
}
