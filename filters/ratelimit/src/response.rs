//! What the client sees: rate limit headers, the rejection body and `Retry-After`.

use crate::config::{HeaderStyle, Settings};
use crate::engine::{Outcome, RuleReport, Verdict};
use crate::global::GlobalCounts;
use crate::metrics::{Effects, Event, Metric};
use switchyard_core::{HeaderEdit, LocalReply};

use switchyard_core::decimal::push_decimal_str;
use switchyard_core::duration::NS_PER_S;

/// Whole seconds, rounded up (a client waiting this long is never early).
pub fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(NS_PER_S)
}

/// `Retry-After` in seconds: at least 1, since the request was rejected now.
pub fn retry_after_secs(ns: u64) -> u64 {
    ceil_secs(ns).max(1)
}

/// The rate limit headers for a response on a limited route (empty when no rule matched).
pub fn rate_limit_headers(settings: &Settings, outcome: &Outcome) -> Vec<(String, String)> {
    let reports = &outcome.reports;
    if reports.is_empty() {
        return Vec::new();
    }
    let name = |r: &RuleReport| {
        settings
            .rules
            .get(r.rule)
            .map(|x| x.name.as_str())
            .unwrap_or("")
    };
    match settings.headers {
        HeaderStyle::None => Vec::new(),
        HeaderStyle::Ietf => {
            // Structured-field lists, one item per matching rule (its tightest tier). Rule
            // names are validated to [A-Za-z0-9_-], so they need no escaping.
            // Built by hand: `format!` per item was a visible share of a request's work.
            let (mut policy, mut state) = (String::new(), String::new());
            for (i, r) in reports.iter().enumerate() {
                let sep = if i == 0 { "\"" } else { ", \"" };
                policy.push_str(sep);
                policy.push_str(name(r));
                policy.push_str("\";q=");
                push_decimal_str(&mut policy, r.view.requests);
                policy.push_str(";w=");
                push_decimal_str(&mut policy, ceil_secs(r.view.per_ns).max(1));
                state.push_str(sep);
                state.push_str(name(r));
                state.push_str("\";r=");
                push_decimal_str(&mut state, r.view.remaining);
                state.push_str(";t=");
                push_decimal_str(&mut state, ceil_secs(r.view.reset_ns));
            }
            vec![
                ("ratelimit-policy".to_string(), policy),
                ("ratelimit".to_string(), state),
            ]
        }
        HeaderStyle::Legacy => {
            // One set of numbers: the tightest tier across all matching rules.
            let Some(t) = reports.iter().map(|r| r.view).min_by(|a, b| {
                a.remaining
                    .cmp(&b.remaining)
                    .then(b.reset_ns.cmp(&a.reset_ns))
            }) else {
                return Vec::new();
            };
            vec![
                ("x-ratelimit-limit".to_string(), t.requests.to_string()),
                ("x-ratelimit-remaining".to_string(), t.remaining.to_string()),
                (
                    "x-ratelimit-reset".to_string(),
                    ceil_secs(t.reset_ns).to_string(),
                ),
            ]
        }
    }
}

/// The local reply for a rejected request: status, headers and JSON body.
pub struct Rejection {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

pub fn rejection(settings: &Settings, outcome: &Outcome) -> Option<Rejection> {
    let (rule, retry_ns) = match outcome.verdict {
        Verdict::Reject {
            rule,
            retry_after_ns,
        } => (rule, Some(retry_after_ns)),
        Verdict::FailureDeny { rule } => (rule, None),
        Verdict::Allow | Verdict::ShadowReject { .. } => return None,
    };
    let name = settings
        .rules
        .get(rule)
        .map(|r| r.name.as_str())
        .unwrap_or("");
    // Failure-mode denials have no computed wait; one second is a polite hint.
    let retry = retry_ns.map(retry_after_secs).unwrap_or(1);
    let body = serde_json::json!({
        "error": "rate_limited",
        "rule": name,
        "retry_after": retry,
    })
    .to_string();
    let mut headers = vec![
        ("retry-after".to_string(), retry.to_string()),
        ("content-type".to_string(), "application/json".to_string()),
    ];
    headers.extend(rate_limit_headers(settings, outcome));
    Some(Rejection {
        status: u32::from(settings.status),
        headers,
        body,
    })
}

/// `x-ratelimit-shadow` value for a shadow-mode would-be rejection.
pub fn shadow_header(settings: &Settings, outcome: &Outcome) -> Option<String> {
    match outcome.verdict {
        Verdict::ShadowReject {
            rule,
            retry_after_ns,
        } => {
            let name = settings
                .rules
                .get(rule)
                .map(|r| r.name.as_str())
                .unwrap_or("");
            Some(format!(
                "\"{name}\";retry_after={}",
                retry_after_secs(retry_after_ns)
            ))
        }
        _ => None,
    }
}

/// Envoy's response code details for our rejections.
pub const DETAILS: &str = "switchyard_ratelimit";

/// Counts a local decision's events: per rule, and the shared-state housekeeping.
pub fn count_local(outcome: &Outcome, e: &mut Effects) {
    for (rule, c) in outcome.counts.iter().enumerate() {
        e.count_of(rule, Event::Allowed, c.allowed)
            .count_of(rule, Event::Limited, c.limited)
            .count_of(rule, Event::ShadowLimited, c.shadow_limited)
            .count_of(rule, Event::FailureAllowed, c.failure_allowed)
            .count_of(rule, Event::FailureDenied, c.failure_denied)
            .count_of(rule, Event::CasRetries, c.cas_retries);
    }
    e.gauge_by(Metric::SlotsInUse, outcome.slots_delta)
        .count_n(Metric::EvictedIdle, outcome.evicted_idle)
        .count_n(Metric::EvictedActive, outcome.evicted_active)
        .count_n(Metric::RollbackFailures, outcome.rollback_failures);
}

/// Counts the global part's events per rule.
pub fn count_global(counts: &[(usize, GlobalCounts)], e: &mut Effects) {
    for (rule, c) in counts {
        e.count_of(*rule, Event::Allowed, c.allowed)
            .count_of(*rule, Event::GlobalOverLimit, c.over_limit)
            .count_of(*rule, Event::GlobalFailureAllowed, c.failure_allowed)
            .count_of(*rule, Event::GlobalFailureDenied, c.failure_denied)
            .count_of(*rule, Event::Limited, c.limited)
            .count_of(*rule, Event::ShadowLimited, c.shadow_limited);
    }
}

/// What a request's final outcome does.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Now: the counts passed in, and the rejection if the outcome rejects.
    pub effects: Effects,
    /// On the upstream's response, if the request goes on: our rate limit (and shadow) headers
    /// set, then the service's `response_headers_to_add` appended, ours winning by name.
    pub on_response: Vec<HeaderEdit>,
}

pub fn decision(
    settings: &Settings,
    outcome: &Outcome,
    service_headers: &[(String, Vec<u8>)],
    mut effects: Effects,
) -> Decision {
    let mut ours: Vec<(String, String)> = Vec::new();
    if let Some(reject) = rejection(settings, outcome) {
        let mut reply = LocalReply::new(reject.status, DETAILS).body(reject.body);
        for (k, v) in &reject.headers {
            reply = reply.header(k.as_str(), v.as_bytes());
        }
        for (k, v) in service_headers {
            if !reject.headers.iter().any(|(own, _)| own == k) {
                reply = reply.header(k.as_str(), v.as_slice());
            }
        }
        effects = effects.reply(reply);
    }
    if let Some(shadow) = shadow_header(settings, outcome) {
        ours.push(("x-ratelimit-shadow".to_string(), shadow));
    }
    ours.extend(rate_limit_headers(settings, outcome));
    let mut on_response: Vec<HeaderEdit> = service_headers
        .iter()
        .filter(|(k, _)| !ours.iter().any(|(own, _)| own == k))
        .map(|(k, v)| HeaderEdit::add(k.as_str(), v.as_slice()))
        .collect();
    on_response.splice(
        0..0,
        ours.into_iter()
            .map(|(k, v)| HeaderEdit::Set(k, v.into_bytes())),
    );
    Decision {
        effects,
        on_response,
    }
}
