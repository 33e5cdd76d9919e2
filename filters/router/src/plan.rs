//! From a routing decision to its effects, purely: the routing record and rewrites on the
//! request, the local answers (redirect, direct response, 404), the response headers of a
//! forwarded request, the mirror copy and every stat. The glue applies them with
//! `switchyard_core::host::apply`.

use crate::metrics::{subject, Effects, Event, Metric};
use crate::table::{Decision, HeaderOps, Matched, MirrorPlan, Outcome, Table, NOT_FOUND_BODY};
use switchyard_core::routing::ROUTE_HEADER;
use switchyard_core::{HeaderEdit, LocalReply};

pub const EXPLAIN_HEADER: &str = "x-switchyard-route";
pub const VERSION_HEADER: &str = "x-switchyard-table-version";
/// Envoy's response code details of the router's local answers.
pub const DETAILS: &str = "switchyard_router";
/// Longest explain header value: a large `match` must not produce a huge response header.
const MAX_EXPLAIN: usize = 1024;
/// Hop-by-hop and framing headers that must not be copied into a mirrored request.
const MIRROR_SKIP: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "upgrade",
    "expect",
    "proxy-connection",
];

/// What the answer to a request shows about its routing: the explain header and the table
/// version header, each only when configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shown {
    explain: Option<String>,
    version: Option<u64>,
}

impl Shown {
    /// `explain` is the decision's (present only when the explain header is on).
    pub fn new(explain: Option<String>, version: u64, version_header: bool) -> Self {
        Shown {
            explain: explain.map(|e| truncate(format!("v{version} {e}"), MAX_EXPLAIN)),
            version: version_header.then_some(version),
        }
    }

    /// The headers, in the order they are added.
    fn headers(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(e) = &self.explain {
            out.push((EXPLAIN_HEADER.to_string(), e.clone()));
        }
        if let Some(v) = self.version {
            out.push((VERSION_HEADER.to_string(), v.to_string()));
        }
        out
    }
}

/// What the request phase does.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestPlan {
    pub effects: Effects,
    /// Forwarded upstream: the response phase adds the action's response headers.
    pub forwarded: bool,
    /// The sampled mirror, copied once the request headers are edited.
    pub mirror: Option<MirrorPlan>,
}

/// The effects of a routing decision on the request (stats, request header edits, or a local
/// answer). `cluster_header` carries the chosen cluster.
pub fn plan_request(
    table: &Table,
    decision: Decision,
    shown: &Shown,
    cluster_header: &str,
) -> RequestPlan {
    let matched = decision.matched;
    let subject = subject(table, matched);
    // A route's requests are its one action's counter (`routed`, `redirected` or `responded`):
    // no separate per-request `matches` write.
    let mut effects = Effects::new();
    let response_ops = table.action(matched).map(|a| &a.response_headers);
    let (status, mut headers, body) = match decision.outcome {
        Outcome::Forward {
            cluster,
            path,
            authority,
            mirror,
        } => {
            // The routing record (`switchyard_core::routing`), always overwritten so clients
            // can neither pick a cluster nor forge what later filters read.
            let edits = &mut effects.request;
            edits.push(HeaderEdit::set(cluster_header, cluster));
            edits.push(HeaderEdit::set(ROUTE_HEADER, table.name(matched)));
            if let Some(p) = path {
                edits.push(HeaderEdit::set(":path", p));
            }
            if let Some(a) = authority {
                edits.push(HeaderEdit::set(":authority", a));
            }
            if let Some(a) = table.action(matched) {
                op_edits(&a.request_headers, edits);
            }
            count_event(&mut effects, subject, Event::Routed);
            return RequestPlan {
                effects,
                forwarded: true,
                mirror,
            };
        }
        Outcome::Redirect { status, location } => {
            let mut h = vec![("location".to_string(), location)];
            local_headers(&mut h, response_ops);
            count_event(&mut effects, subject, Event::Redirected);
            (u32::from(status), h, String::new())
        }
        Outcome::Respond {
            status,
            body,
            headers: mut h,
        } => {
            local_headers(&mut h, response_ops);
            count_event(&mut effects, subject, Event::Responded);
            (u32::from(status), h, body)
        }
        Outcome::NotFound => {
            effects.count(Metric::NoRoute);
            let h = vec![("content-type".to_string(), "text/plain".to_string())];
            (404, h, NOT_FOUND_BODY.to_string())
        }
    };
    // Answered here: the request carries no routing record.
    effects.request.push(HeaderEdit::remove(cluster_header));
    effects.request.push(HeaderEdit::remove(ROUTE_HEADER));
    headers.extend(shown.headers());
    let reply = headers
        .into_iter()
        .fold(LocalReply::new(status, DETAILS), |r, (k, v)| r.header(k, v))
        .body(body);
    RequestPlan {
        effects: effects.reply(reply),
        forwarded: false,
        mirror: None,
    }
}

/// The response header edits of a forwarded request: the action's response headers, then the
/// explain and version headers.
pub fn plan_response(table: &Table, matched: Matched, shown: &Shown) -> Effects {
    let mut effects = Effects::new();
    if let Some(a) = table.action(matched) {
        op_edits(&a.response_headers, &mut effects.response);
    }
    for (k, v) in shown.headers() {
        effects.response.push(HeaderEdit::set(k, v));
    }
    effects
}

/// Counts a route's event (nothing when no route matched).
fn count_event(effects: &mut Effects, subject: Option<usize>, event: Event) {
    if let Some(s) = subject {
        effects.count_of(s, event, 1);
    }
}

/// Header operations as edits: remove, then set, then append.
fn op_edits(ops: &HeaderOps, out: &mut Vec<HeaderEdit>) {
    out.extend(ops.remove.iter().map(HeaderEdit::remove));
    out.extend(ops.set.iter().map(|(k, v)| HeaderEdit::set(k, v.as_str())));
    out.extend(
        ops.append
            .iter()
            .map(|(k, v)| HeaderEdit::add(k, v.as_str())),
    );
}

/// Response headers as a list for a local reply: remove, then set, then append.
fn local_headers(base: &mut Vec<(String, String)>, ops: Option<&HeaderOps>) {
    let Some(ops) = ops else { return };
    base.retain(|(k, _)| !ops.remove.contains(k));
    for (name, value) in &ops.set {
        base.retain(|(k, _)| k != name);
        base.push((name.clone(), value.clone()));
    }
    base.extend(ops.append.iter().cloned());
}

/// A mirror copy waiting for the request body.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingMirror {
    pub plan: MirrorPlan,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl PendingMirror {
    /// The copy of a request with these (edited) headers: without hop-by-hop and framing
    /// headers and the routing record, and, as Envoy does, with `-shadow` after the host.
    pub fn new(plan: MirrorPlan, request: Vec<(Vec<u8>, Vec<u8>)>, cluster_header: &str) -> Self {
        let mut headers = Vec::new();
        for (k, mut v) in request {
            let k = String::from_utf8_lossy(&k).into_owned();
            if MIRROR_SKIP.contains(&k.as_str()) || k == cluster_header || k == ROUTE_HEADER {
                continue;
            }
            if k == ":authority" {
                v.extend_from_slice(b"-shadow");
            }
            headers.push((k, v));
        }
        PendingMirror {
            plan,
            headers,
            body: Vec::new(),
        }
    }

    /// Adds a body chunk; `false` (nothing added) when the body would exceed the mirror's
    /// `max_body_bytes`: the copy is skipped.
    pub fn push(&mut self, chunk: &[u8]) -> bool {
        if self.body.len() + chunk.len() > self.plan.max_body_bytes {
            return false;
        }
        self.body.extend_from_slice(chunk);
        true
    }
}

/// The stats of a mirror copy: skipped (body too large), dispatched (counted for the route) or
/// failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorOutcome {
    Skipped,
    Sent,
    Failed,
}

pub fn mirror_effects(outcome: MirrorOutcome, subject: Option<usize>) -> Effects {
    let mut effects = Effects::new();
    match outcome {
        MirrorOutcome::Skipped => {
            effects.count(Metric::MirrorSkipped);
        }
        MirrorOutcome::Sent => count_event(&mut effects, subject, Event::Mirrored),
        MirrorOutcome::Failed => {
            effects.count(Metric::MirrorFailed);
        }
    }
    effects
}

/// How a reload attempt ended, for the stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The fetch could not be sent, failed, or the table could not be published.
    Failed,
    /// `304`, or the table fetched is the one in force.
    NotModified,
    /// The table fetched does not validate.
    Rejected,
    /// A new table version is in force.
    Accepted(u64),
}

pub fn reload_effects(r: Reload) -> Effects {
    let mut effects = Effects::new();
    match r {
        Reload::Failed => effects.count(Metric::ReloadsFailed),
        Reload::NotModified => effects.count(Metric::ReloadsNotModified),
        Reload::Rejected => effects.count(Metric::ReloadsRejected),
        Reload::Accepted(version) => effects
            .count(Metric::ReloadsOk)
            .gauge(Metric::TableVersion, version),
    };
    effects
}

/// The table version in force (a table another worker published, or the configured one).
pub fn version_effects(version: u64) -> Effects {
    let mut effects = Effects::new();
    effects.gauge(Metric::TableVersion, version);
    effects
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut with `...`.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str("...");
    s
}
