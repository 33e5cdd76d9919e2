//! What the client sees: rate limit headers, the rejection body and `Retry-After`.

use crate::config::{HeaderStyle, Settings};
use crate::engine::{Outcome, RuleReport, Verdict};

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
            let policy: Vec<String> = reports
                .iter()
                .map(|r| {
                    format!(
                        "\"{}\";q={};w={}",
                        name(r),
                        r.view.requests,
                        ceil_secs(r.view.per_ns).max(1)
                    )
                })
                .collect();
            let state: Vec<String> = reports
                .iter()
                .map(|r| {
                    format!(
                        "\"{}\";r={};t={}",
                        name(r),
                        r.view.remaining,
                        ceil_secs(r.view.reset_ns)
                    )
                })
                .collect();
            vec![
                ("ratelimit-policy".to_string(), policy.join(", ")),
                ("ratelimit".to_string(), state.join(", ")),
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
