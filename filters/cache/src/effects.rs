//! What the cache's decisions do to a request, as [`Effects`] values: local replies (a stored
//! entry, a purge's answer, `504`), `Cache-Status` / `x-cache` on forwarded responses, the
//! validators of a revalidation, the pause of a coalesced miss, and stat writes. Pure: the glue
//! (`filter`, `runtime`) does the shared-data work a plan asks for (lookups, stores, removals),
//! hands the results here and applies the effects with `switchyard_core::host::apply`.

use crate::entry::Entry;
use crate::metrics::{Effects, Metric};
use crate::plan::{Body, PurgePlan, Reply};
use crate::respond::Outcome;
use crate::response_plan::{self as rp, ForwardPlan};
use crate::rfc::Field;
use crate::store::{InsertError, Inserted};
use std::rc::Rc;
use switchyard_core::{HeaderEdit, LocalReply};

/// Envoy's response code details of every local reply of the cache.
pub const DETAILS: &str = "switchyard_cache";

/// The store's gauges as read after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gauges {
    pub bytes_in_use: u64,
    pub entries: u64,
}

/// One count of `m`.
pub fn counted(m: Metric) -> Effects {
    let mut fx = Effects::new();
    fx.count(m);
    fx
}

/// Sets the gauges (nothing when they could not be read).
pub fn gauges(fx: &mut Effects, g: Option<Gauges>) {
    if let Some(g) = g {
        fx.gauge(Metric::BytesInUse, g.bytes_in_use)
            .gauge(Metric::Entries, g.entries);
    }
}

/// Counts an insert's result; whether the entry was stored.
pub fn stored(fx: &mut Effects, result: &Result<Inserted, InsertError>) -> bool {
    match result {
        Ok(ins) => {
            fx.count(Metric::Stores)
                .count_n(Metric::Evictions, ins.evicted as u64)
                .gauge(Metric::BytesInUse, ins.used);
            true
        }
        Err(InsertError::TooLarge) => {
            fx.count(Metric::TooLarge);
            false
        }
        Err(_) => {
            fx.count(Metric::StoreFailures);
            false
        }
    }
}

/// `Cache-Status` and `x-cache` reporting `outcome` on the response, in that order.
pub fn status_headers(fx: &mut Effects, name: &str, outcome: &Outcome) {
    fx.response
        .push(HeaderEdit::set("cache-status", outcome.cache_status(name)));
    fx.response
        .push(HeaderEdit::set("x-cache", outcome.x_cache()));
}

/// A response passing by, reporting its outcome (if any).
pub fn passed(name: &str, outcome: Option<&Outcome>) -> Effects {
    let mut fx = Effects::new();
    if let Some(o) = outcome {
        status_headers(&mut fx, name, o);
    }
    fx
}

/// A plain-text local reply reporting `outcome`.
pub fn local_text(name: &str, status: u32, outcome: &Outcome, body: impl Into<Vec<u8>>) -> Effects {
    let reply = LocalReply::new(status, DETAILS)
        .header("cache-status", outcome.cache_status(name))
        .header("x-cache", outcome.x_cache())
        .header("content-type", "text/plain")
        .body(body);
    Effects::new().reply(reply)
}

/// The local reply `reply` from a stored entry: the whole body (taken when nothing else holds
/// the entry, else copied: a worker's L1 keeps its copy), only the bytes of a range, or nothing.
pub fn stored_reply(reply: Reply, stored: Rc<Entry>) -> LocalReply {
    let body = match reply.body {
        Body::Full => Rc::try_unwrap(stored).map_or_else(|shared| shared.body.clone(), |e| e.body),
        part => part.of(&stored.body).to_vec(),
    };
    LocalReply {
        status: reply.status,
        details: DETAILS,
        headers: reply.headers,
        body,
    }
}

/// Answering from a stored entry: a hit (or a stale serve), counted whether or not the host
/// takes the reply; `l1`: the entry came from the worker's L1 (counted in `l1_hits` too).
pub fn serve(reply: Reply, stored: Rc<Entry>, stale: bool, l1: bool) -> Effects {
    let mut fx = counted(if stale { Metric::Stale } else { Metric::Hits });
    if l1 {
        fx.count(Metric::L1Hits);
    }
    fx.reply = Some(stored_reply(reply, stored));
    fx
}

/// The answer to a purge request: `403` (counted) without the token, `400` without a target,
/// else `200` with the number of entries `purged` and the gauges read afterwards.
pub fn purge(name: &str, plan: &PurgePlan, purged: usize, after: Option<Gauges>) -> Effects {
    let outcome = crate::plan::PURGE;
    match plan {
        PurgePlan::Denied => {
            let body = "purge: missing or wrong token\n";
            let mut fx = local_text(name, 403, &outcome, body);
            fx.count(Metric::PurgeDenied);
            fx
        }
        PurgePlan::BadRequest => {
            let body = "purge: expected ?url=, ?prefix= or ?tag=\n";
            local_text(name, 400, &outcome, body)
        }
        _ => {
            let body = format!("{{\"purged\":{purged}}}\n");
            let mut fx = local_text(name, 200, &outcome, body);
            fx.count_n(Metric::Purges, purged as u64);
            gauges(&mut fx, after);
            fx
        }
    }
}

/// A request the cache neither looks up nor stores (other methods, `bypass`, unsafe methods).
pub fn bypass() -> Effects {
    counted(Metric::Bypass)
}

/// Revalidating a stale entry upstream: its validators on the request, in order.
pub fn revalidate(validators: Vec<Field>) -> Effects {
    let mut fx = counted(Metric::Revalidations);
    fx.request = validators
        .into_iter()
        .map(|(k, v)| HeaderEdit::Set(k, v))
        .collect();
    fx
}

/// A miss, forwarded now or (`wait`) paused behind another request's fetch of its key.
/// A miss: forwarded, or (`wait`) queued behind another request's fetch of the key; `passed`:
/// not coalesced because the key's last answer could not be stored.
pub fn miss(wait: bool, passed: bool) -> Effects {
    let mut fx = counted(Metric::Misses);
    if passed {
        fx.count(Metric::UncacheablePasses);
    }
    if wait {
        fx.pause()
    } else {
        fx
    }
}

/// `only-if-cached` without a usable entry.
pub fn not_cached(name: &str, outcome: &Outcome) -> Effects {
    local_text(name, 504, outcome, "not cached\n")
}

/// What a `200` to a HEAD did to the stored GET response it found ([`rp::head_update`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadUpdate {
    /// Freshened and stored again (the insert's result).
    Freshened(Result<Inserted, InsertError>),
    /// It described another response: the stored one was removed.
    Invalidated,
}

/// A forwarded response: what its HEAD update did (if any), a `Content-Length` past
/// `max_entry_bytes`, and its outcome.
pub fn forwarded(name: &str, plan: &ForwardPlan, head: Option<&HeadUpdate>) -> Effects {
    let mut fx = Effects::new();
    match head {
        Some(HeadUpdate::Freshened(insert)) => {
            stored(&mut fx, insert);
        }
        Some(HeadUpdate::Invalidated) => {
            fx.count(Metric::Invalidations);
        }
        None => {}
    }
    if plan.store.is_none() && plan.too_large {
        fx.count(Metric::TooLarge);
    }
    status_headers(&mut fx, name, &plan.outcome);
    fx
}

/// An unsafe method's answer: `removed` entries invalidated (gauges read only if any were),
/// reported as `fwd=method`.
pub fn invalidated(name: &str, removed: usize, after: Option<Gauges>) -> Effects {
    let mut fx = Effects::new();
    fx.count_n(Metric::Invalidations, removed as u64);
    gauges(&mut fx, after);
    status_headers(&mut fx, name, &rp::METHOD);
    fx
}

/// After a `304` to our revalidation: the freshened entry's insert counted, the revalidation
/// counted, and the full stored response as the answer (RFC 9111 §4.3.4).
pub fn replaced(
    cfg: &crate::config::Config,
    fresh: Entry,
    now: u64,
    insert: &Result<Inserted, InsertError>,
) -> Effects {
    let mut fx = Effects::new();
    let ok = stored(&mut fx, insert);
    fx.count(Metric::Revalidated);
    let reply = rp::replaced_reply(cfg, &fresh, now, ok);
    fx.reply = Some(stored_reply(reply, Rc::new(fresh)));
    fx
}

/// A background revalidation's answer: counted, `replaced` when it was a `304`, and the insert
/// it led to (if any).
pub fn refreshed(replaced: bool, insert: Option<&Result<Inserted, InsertError>>) -> Effects {
    let mut fx = counted(Metric::BackgroundRevalidations);
    if replaced {
        fx.count(Metric::Revalidated);
    }
    if let Some(r) = insert {
        stored(&mut fx, r);
    }
    fx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::{cfg, fields, get, stored as entry, NS, T0};
    use crate::plan::{lookup_plan, LookupPlan, Request};
    use switchyard_core::{Flow, Stat, StatWrite};

    fn added(fx: &Effects, m: Metric) -> i64 {
        fx.added(Stat::Fixed(m))
    }

    fn set(name: &str, value: &str) -> HeaderEdit {
        HeaderEdit::set(name, value)
    }

    fn reply_header<'a>(fx: &'a Effects, name: &str) -> Option<&'a str> {
        let r = fx.reply.as_ref()?;
        let (_, v) = r.headers.iter().find(|(k, _)| k == name)?;
        std::str::from_utf8(v).ok()
    }

    /// The stat writes, as `name+n` (counters) and `name=n` (gauges set).
    fn writes(fx: &Effects) -> Vec<String> {
        use switchyard_core::Metric as _;
        let name = |s: &Stat<Metric>| match s {
            Stat::Fixed(m) => m.name(),
            Stat::Of(_, e) => match *e {},
        };
        fx.stats
            .iter()
            .map(|w| match w {
                StatWrite::Add(s, n) => format!("{}+{n}", name(s)),
                StatWrite::Set(s, n) => format!("{}={n}", name(s)),
            })
            .collect()
    }

    /// The local reply's status and body.
    fn answer(fx: &Effects) -> Option<(u32, &str)> {
        let r = fx.reply.as_ref()?;
        Some((r.status, std::str::from_utf8(&r.body).ok()?))
    }

    fn inserted(evicted: usize, used: u64) -> Result<Inserted, InsertError> {
        Ok(Inserted {
            slot: 0,
            generation: 1,
            evicted,
            used,
        })
    }

    #[test]
    fn a_fresh_hit_is_counted_and_answered_with_the_stored_body() {
        let c = cfg("{}");
        let e = entry(&c, &get("/a"), &[("cache-control", "max-age=60")]);
        let now = T0 + 10 * NS;
        let req = Request::lookup(&c, get("/a"), false, now);
        let LookupPlan::Serve { reply, stale, .. } = lookup_plan(&c, &req, Some(&e), now) else {
            panic!("not served")
        };
        let fx = serve(reply.clone(), Rc::new(e.clone()), stale, false);
        assert_eq!(writes(&fx), ["hits+1"]);
        assert_eq!(fx.flow, Flow::Continue);
        assert!(fx.request.is_empty() && fx.response.is_empty());
        assert_eq!(answer(&fx), Some((200, "hello")));
        assert_eq!(fx.reply.as_ref().map(|r| r.details), Some(DETAILS));
        assert_eq!(reply_header(&fx, "x-cache"), Some("HIT"));
        assert_eq!(reply_header(&fx, "age"), Some("10"));
        // From the L1: counted there too, and the L1's copy keeps its body.
        let held = Rc::new(e);
        let fx = serve(reply, Rc::clone(&held), stale, true);
        assert_eq!(writes(&fx), ["hits+1", "l1_hits+1"]);
        assert_eq!(answer(&fx), Some((200, "hello")));
        assert_eq!(held.body, b"hello");
    }

    #[test]
    fn a_stale_serve_of_a_range_carries_only_the_range() {
        let c = cfg("{}");
        let e = entry(&c, &get("/a"), &[("cache-control", "max-age=1")]);
        let view = get("/a").with_header("range", "bytes=1-2");
        let reply = crate::plan::serve_reply(&c, &view, &e, T0 + 5 * NS, true);
        let fx = serve(reply, Rc::new(e), true, false);
        assert_eq!(added(&fx, Metric::Stale), 1);
        assert_eq!(added(&fx, Metric::Hits), 0);
        assert_eq!(answer(&fx), Some((206, "el")));
        assert_eq!(reply_header(&fx, "content-range"), Some("bytes 1-2/5"));
    }

    #[test]
    fn purges_answer_403_400_or_the_count_with_gauges() {
        let c = cfg(r#"{"cache_status_name": "edge"}"#);
        let denied = purge(&c.cache_status_name, &PurgePlan::Denied, 0, None);
        let denial = Some((403, "purge: missing or wrong token\n"));
        assert_eq!(answer(&denied), denial);
        let r = denied.reply.as_ref().unwrap();
        assert_eq!(r.details, DETAILS);
        let expected: Vec<(String, Vec<u8>)> = fields(&[
            ("cache-status", "edge; fwd=method; detail=purge"),
            ("x-cache", "BYPASS"),
            ("content-type", "text/plain"),
        ]);
        assert_eq!(r.headers, expected);
        assert_eq!(writes(&denied), ["purge_denied+1"]);

        let bad = purge("edge", &PurgePlan::BadRequest, 0, None);
        assert_eq!(
            answer(&bad),
            Some((400, "purge: expected ?url=, ?prefix= or ?tag=\n"))
        );
        assert!(bad.stats.is_empty());

        let after = Gauges {
            bytes_in_use: 10,
            entries: 1,
        };
        let done = purge("edge", &PurgePlan::Key("k".into()), 3, Some(after));
        assert_eq!(answer(&done), Some((200, "{\"purged\":3}\n")));
        assert_eq!(writes(&done), ["purges+3", "bytes_in_use=10", "entries=1"]);
        // Nothing purged, gauges unreadable: only the answer.
        let none = purge("edge", &PurgePlan::Tags(vec![]), 0, None);
        assert!(none.stats.is_empty());
        assert_eq!(answer(&none), Some((200, "{\"purged\":0}\n")));
    }

    #[test]
    fn a_revalidation_sets_the_validators_in_order_and_is_counted() {
        let validators = fields(&[("if-none-match", "\"v1\""), ("if-modified-since", "d")]);
        let fx = revalidate(validators);
        assert_eq!(
            fx.request,
            vec![
                set("if-none-match", "\"v1\""),
                set("if-modified-since", "d")
            ]
        );
        assert_eq!(added(&fx, Metric::Revalidations), 1);
        assert!(fx.reply.is_none() && fx.response.is_empty());
        assert_eq!(fx.flow, Flow::Continue);
    }

    #[test]
    fn misses_bypasses_and_504s() {
        assert_eq!(miss(false, false).flow, Flow::Continue);
        let waiting = miss(true, false);
        assert_eq!(
            (waiting.flow, added(&waiting, Metric::Misses)),
            (Flow::Pause, 1)
        );
        let passed = miss(false, true);
        assert_eq!(
            (
                passed.flow,
                added(&passed, Metric::Misses),
                added(&passed, Metric::UncacheablePasses)
            ),
            (Flow::Continue, 1, 1)
        );
        assert_eq!(added(&bypass(), Metric::Bypass), 1);
        let outcome = Outcome::Forward {
            fwd: "miss",
            status: None,
            stored: false,
            detail: Some("only-if-cached"),
        };
        let fx = not_cached("switchyard", &outcome);
        assert_eq!(answer(&fx), Some((504, "not cached\n")));
        assert_eq!(
            reply_header(&fx, "cache-status"),
            Some("switchyard; fwd=miss; detail=only-if-cached")
        );
        assert_eq!(reply_header(&fx, "x-cache"), Some("MISS"));
        assert!(fx.stats.is_empty());
    }

    #[test]
    fn passing_responses_report_their_outcome_in_order() {
        assert!(passed("c", None).is_empty());
        let fx = passed("c", Some(&rp::METHOD));
        assert_eq!(
            fx.response,
            vec![
                set("cache-status", "c; fwd=method"),
                set("x-cache", "BYPASS")
            ]
        );
        assert!(fx.stats.is_empty() && fx.reply.is_none());
    }

    #[test]
    fn inserts_count_stores_evictions_and_failures() {
        let mut fx = Effects::new();
        assert!(stored(&mut fx, &inserted(2, 700)));
        assert_eq!(writes(&fx), ["stores+1", "evictions+2", "bytes_in_use=700"]);
        let mut fx = Effects::new();
        assert!(stored(&mut fx, &inserted(0, 5)));
        assert_eq!(added(&fx, Metric::Evictions), 0);
        assert!(!stored(&mut fx, &Err(InsertError::TooLarge)));
        assert!(!stored(&mut fx, &Err(InsertError::Contended)));
        assert!(!stored(&mut fx, &Err(InsertError::Busy)));
        assert_eq!(added(&fx, Metric::TooLarge), 1);
        assert_eq!(added(&fx, Metric::StoreFailures), 2);
    }

    #[test]
    fn forwarded_responses_count_head_updates_and_sizes_then_report() {
        let c = cfg(r#"{"max_entry_bytes": 4096}"#);
        let req = Request::lookup(&c, get("/a"), false, T0);
        let h = fields(&[("cache-control", "max-age=60"), ("content-length", "5000")]);
        let resp = rp::Response {
            status: 200,
            headers: &h,
            from_upstream: true,
            now: T0 + NS,
        };
        let plan = rp::forward_plan(&c, &req, "miss", &resp);
        let fx = forwarded("switchyard", &plan, None);
        assert_eq!(writes(&fx), ["too_large+1"]);
        assert_eq!(
            fx.response,
            vec![
                set("cache-status", "switchyard; fwd=miss; detail=too-large"),
                set("x-cache", "MISS"),
            ]
        );
        let small = fields(&[("cache-control", "max-age=60")]);
        let resp = rp::Response {
            headers: &small,
            ..resp
        };
        let plan = rp::forward_plan(&c, &req, "miss", &resp);
        assert!(forwarded("s", &plan, None).stats.is_empty());
        let invalidated_head = forwarded("s", &plan, Some(&HeadUpdate::Invalidated));
        assert_eq!(added(&invalidated_head, Metric::Invalidations), 1);
        let head = HeadUpdate::Freshened(inserted(0, 9));
        let freshened = forwarded("s", &plan, Some(&head));
        assert_eq!(added(&freshened, Metric::Stores), 1);
        assert_eq!(freshened.response.len(), 2);
    }

    #[test]
    fn invalidations_count_and_read_gauges_then_report_the_method() {
        let after = Gauges {
            bytes_in_use: 0,
            entries: 0,
        };
        let fx = invalidated("c", 2, Some(after));
        assert_eq!(
            writes(&fx),
            ["invalidations+2", "bytes_in_use=0", "entries=0"]
        );
        assert_eq!(
            fx.response.first(),
            Some(&set("cache-status", "c; fwd=method"))
        );
        let nothing = invalidated("c", 0, None);
        assert!(nothing.stats.is_empty());
        assert_eq!(nothing.response.len(), 2);
    }

    #[test]
    fn a_304_replacement_counts_and_answers_with_the_full_entry() {
        let c = cfg("{}");
        let e = entry(&c, &get("/a"), &[("cache-control", "max-age=10")]);
        let now = T0 + 31 * NS;
        let fx = replaced(&c, e.clone(), now, &inserted(0, 100));
        let counted = ["stores+1", "bytes_in_use=100", "revalidated+1"];
        assert_eq!(writes(&fx), counted);
        assert_eq!(answer(&fx), Some((200, "hello")));
        assert_eq!(
            reply_header(&fx, "cache-status"),
            Some("switchyard; fwd=stale; fwd-status=304; stored")
        );
        let failed = replaced(&c, e, now, &Err(InsertError::Full));
        assert_eq!(writes(&failed), ["store_failures+1", "revalidated+1"]);
        assert_eq!(
            reply_header(&failed, "cache-status"),
            Some("switchyard; fwd=stale; fwd-status=304")
        );
    }

    #[test]
    fn background_refreshes_are_counted_with_what_they_stored() {
        assert_eq!(
            writes(&refreshed(false, None)),
            ["background_revalidations+1"]
        );
        let fx = refreshed(true, Some(&inserted(1, 50)));
        let counted = ["background_revalidations+1", "revalidated+1", "stores+1"];
        assert_eq!(writes(&fx)[..3], counted);
        assert_eq!(writes(&fx)[3..], ["evictions+1", "bytes_in_use=50"]);
        assert!(fx.reply.is_none() && fx.response.is_empty() && fx.request.is_empty());
        let mut g = Effects::new();
        gauges(&mut g, None);
        assert!(g.is_empty());
    }
}
