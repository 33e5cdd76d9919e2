//! The response side of the cache as pure functions (RFC 9111 §3, §4.3, §4.4, RFC 5861 §4):
//! what an upstream answer does to the cache ([`response_plan`]: store, replace after a `304`,
//! serve stale on error, invalidate, pass through), whether and how a forwarded response is
//! stored ([`forward_plan`]), what a `200` to a HEAD does to the stored GET ([`head_update`]) and
//! what a background revalidation's answer does ([`refresh_plan`]). No host calls.

use crate::config::Config;
use crate::entry::Entry;
use crate::key::{normalise_authority, uri_hash};
use crate::plan::{self, build_entry, facts, facts_with_date, Body, Reply, Request};
use crate::respond::{self, Outcome};
use crate::rfc::{stale_if_error_allows, storable, AgeClock, Field};
use switchyard_core::RequestView;

/// What a request is doing with the cache, from its request headers to its response headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// Not cached; the outcome (if any) is reported on the response.
    Pass(Option<Outcome>),
    /// An unsafe method: invalidate on success.
    Invalidate,
    /// Forwarded as a miss (`fwd` is the RFC 9211 reason).
    Forward(&'static str),
    /// A stale entry is being revalidated upstream; `ours` if the validators are ours.
    Revalidate { entry: Box<Entry>, ours: bool },
    /// Paused behind another request's fetch of the same key.
    Waiting,
    /// Answered by this filter.
    Served,
}

/// The upstream (or local) response as the glue read it.
pub struct Response<'a> {
    pub status: u16,
    /// Lower-case names.
    pub headers: &'a [Field],
    /// Envoy says an upstream answered (`response.code_details` = `via_upstream`): only such
    /// a response is stored or invalidates, never a local reply of Envoy or of a filter.
    pub from_upstream: bool,
    pub now: u64,
}

/// What a response does to the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponsePlan {
    /// Pass through, reporting the outcome (if any) in `Cache-Status` / `x-cache`.
    Pass(Option<Outcome>),
    /// An unsafe method's answer: remove the entries of these URIs (when it succeeded, came
    /// from upstream), then report `fwd=method`.
    Invalidate(Option<Vec<u64>>),
    /// A `304` to our revalidation: store the freshened entry and answer the client with it
    /// ([`replaced_reply`]).
    Replace(Box<Entry>),
    /// The upstream failed and `stale-if-error` allows: answer with the stale entry.
    ServeStale { entry: Box<Entry>, reply: Reply },
    /// Forwarded: store it or not as [`forward_plan`] says.
    Forward(&'static str),
}

/// The `Cache-Status` outcome of an unsafe method.
pub const METHOD: Outcome = Outcome::Forward {
    fwd: "method",
    status: None,
    stored: false,
    detail: None,
};

/// Decides what `resp` does, given the request's stage (not `Waiting` or `Served`, which the
/// glue settles first) and the looked-up request.
pub fn response_plan(
    cfg: &Config,
    stage: Stage,
    req: Option<&Request>,
    resp: &Response<'_>,
) -> ResponsePlan {
    match stage {
        Stage::Pass(outcome) => ResponsePlan::Pass(outcome),
        Stage::Invalidate => ResponsePlan::Invalidate(
            req.filter(|_| resp.from_upstream)
                .and_then(|r| invalidated_uris(resp.status, &r.view, resp.headers)),
        ),
        Stage::Forward(fwd) => ResponsePlan::Forward(fwd),
        Stage::Revalidate { entry, ours } => {
            let Some(req) = req else {
                return ResponsePlan::Pass(None);
            };
            if resp.status == 304 && ours && resp.from_upstream {
                let mut fresh = *entry;
                respond::merge_not_modified(&mut fresh.headers, resp.headers);
                fresh.clock =
                    AgeClock::new(&facts(cfg, 304, resp.headers), req.request_time, resp.now);
                return ResponsePlan::Replace(Box::new(fresh));
            }
            let (rfacts, lifetime, age) = plan::lifetime_and_age(cfg, &entry, resp.now);
            if resp.status >= 500 && stale_if_error_allows(&req.facts, &rfacts.cc, lifetime, age) {
                let reply = plan::serve_reply(cfg, &req.view, &entry, resp.now, true);
                return ResponsePlan::ServeStale { entry, reply };
            }
            ResponsePlan::Forward("stale")
        }
        Stage::Waiting | Stage::Served => ResponsePlan::Pass(None),
    }
}

/// The answer to the client after a `304` refreshed `fresh` (`stored`: whether the refreshed
/// entry was stored): the full stored response (RFC 9111 §4.3.4).
pub fn replaced_reply(cfg: &Config, fresh: &Entry, now: u64, stored: bool) -> Reply {
    let age = fresh.clock.current_age(now);
    let o = Outcome::Forward {
        fwd: "stale",
        status: Some(304),
        stored,
        detail: None,
    };
    Reply {
        status: u32::from(fresh.status),
        headers: respond::served_headers(fresh, age, &o, &cfg.cache_status_name),
        body: Body::Full,
    }
}

/// RFC 9111 §4.4: the URIs a successful (2xx/3xx) unsafe request invalidates: its own and the
/// `Location` / `Content-Location` on the same authority. `None` after an error.
pub fn invalidated_uris(status: u16, view: &RequestView, headers: &[Field]) -> Option<Vec<u64>> {
    if !(200..400).contains(&status) {
        return None;
    }
    let authority = normalise_authority(view.authority());
    let mut uris = vec![uri_hash(&authority, view.path())];
    for (k, v) in headers {
        if k == "location" || k == "content-location" {
            if let Some(p) = respond::same_authority_path(&String::from_utf8_lossy(v), &authority) {
                uris.push(uri_hash(&authority, &p));
            }
        }
    }
    Some(uris)
}

/// What to do with a forwarded response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardPlan {
    /// A `200` from upstream to a HEAD: first update the stored GET response ([`head_update`]).
    pub head_update: bool,
    /// Reported in `Cache-Status` / `x-cache`.
    pub outcome: Outcome,
    /// Collect the body into this entry and store it at the end. `None`: not stored
    /// (`outcome` says why).
    pub store: Option<Entry>,
    /// The entry allows `stale-while-revalidate`, so it may be refreshed in the background,
    /// which asks the host that served it: the glue records [`Entry::upstream_host`] (a
    /// property read, so only then).
    pub refreshable: bool,
    /// Not stored because `Content-Length` exceeds `max_entry_bytes`.
    pub too_large: bool,
}

/// Decides whether a forwarded response is stored (RFC 9111 §3) and what `Cache-Status` says.
pub fn forward_plan(
    cfg: &Config,
    req: &Request,
    fwd: &'static str,
    resp: &Response<'_>,
) -> ForwardPlan {
    let Response {
        status,
        headers,
        from_upstream,
        now,
    } = *resp;
    let mut outcome = Outcome::Forward {
        fwd,
        status: (fwd == "stale").then_some(status),
        stored: false,
        detail: None,
    };
    let mut refreshable = false;
    let verdict = if !from_upstream {
        Err("local-reply")
    } else if req.head {
        Err("head")
    } else {
        let f = facts_with_date(cfg, status, headers, now);
        refreshable = f.cc.stale_while_revalidate.is_some_and(|s| s > 0);
        storable(&req.facts, &f, &plan::policy(cfg)).map_err(|r| r.as_str())
    };
    let content_length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let too_large = content_length.is_some_and(|n| n > cfg.max_entry_bytes);
    let verdict = if too_large {
        verdict.and(Err("too-large"))
    } else {
        verdict
    };
    let too_large = verdict == Err("too-large");
    let store = match verdict {
        Ok(()) => {
            if let Outcome::Forward { stored, .. } = &mut outcome {
                *stored = content_length.is_some();
            }
            Some(build_entry(
                cfg,
                &req.key,
                &req.view,
                status,
                headers,
                req.request_time,
                now,
            ))
        }
        Err(detail) => {
            if let Outcome::Forward { detail: d, .. } = &mut outcome {
                *d = Some(detail);
            }
            None
        }
    };
    ForwardPlan {
        head_update: req.head && from_upstream && status == 200,
        outcome,
        store,
        too_large,
        refreshable,
    }
}

/// RFC 9111 §4.3.5: a `200` to a HEAD freshens the stored GET response it describes (the
/// freshened entry) and invalidates it otherwise (`None`).
pub fn head_update(
    cfg: &Config,
    mut stored: Entry,
    headers: &[Field],
    request_time: u64,
    now: u64,
) -> Option<Entry> {
    if !respond::head_describes(&stored, headers) {
        return None;
    }
    respond::merge_not_modified(&mut stored.headers, headers);
    stored.clock = AgeClock::new(&facts_with_date(cfg, 200, headers, now), request_time, now);
    Some(stored)
}

/// What a background (stale-while-revalidate) revalidation's answer does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refresh {
    /// A `304`: store the stale entry freshened.
    Replace(Entry),
    /// A new storable response: store this entry with the answer's body.
    Store(Entry),
    /// Nothing (5xx, not storable, too large): the stale entry stays.
    Keep,
}

/// Decides what a background revalidation's answer (`status`, `headers`, a body of
/// `body_size` bytes) does to the stale entry it refreshes (`req`: the request it repeats).
pub fn refresh_plan(
    cfg: &Config,
    req: &Request,
    stale: &Entry,
    status: u16,
    headers: &[Field],
    body_size: u64,
    now: u64,
) -> Refresh {
    if status == 304 {
        let mut fresh = stale.clone();
        respond::merge_not_modified(&mut fresh.headers, headers);
        fresh.clock = AgeClock::new(&facts(cfg, 304, headers), req.request_time, now);
        return Refresh::Replace(fresh);
    }
    if status >= 500 {
        return Refresh::Keep;
    }
    let f = facts_with_date(cfg, status, headers, now);
    if storable(&req.facts, &f, &plan::policy(cfg)).is_err() || body_size > cfg.max_entry_bytes {
        return Refresh::Keep;
    }
    let mut entry = build_entry(
        cfg,
        &req.key,
        &req.view,
        status,
        headers,
        req.request_time,
        now,
    );
    entry.upstream_host = stale.upstream_host.clone();
    Refresh::Store(entry)
}

/// A header map as fields with lower-case names.
pub fn lower(headers: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<Field> {
    headers
        .into_iter()
        .map(|(k, v)| (String::from_utf8_lossy(&k).to_ascii_lowercase(), v))
        .collect()
}

/// The `:status` of a response header map (0 if missing or invalid).
pub fn status_of(headers: &[Field]) -> u16 {
    headers
        .iter()
        .find(|(k, _)| k == ":status")
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::{cfg, fields, get, stored, NS, T0};

    fn request(c: &Config, view: RequestView) -> Request {
        Request::lookup(c, view, false, T0 + 30 * NS)
    }

    fn resp<'a>(status: u16, headers: &'a [Field], secs: u64) -> Response<'a> {
        Response {
            status,
            headers,
            from_upstream: true,
            now: T0 + secs * NS,
        }
    }

    fn detail(o: &Outcome) -> Option<&'static str> {
        match o {
            Outcome::Forward { detail, .. } => *detail,
            Outcome::Hit { .. } => None,
        }
    }

    fn revalidating(entry: &Entry, ours: bool) -> Stage {
        Stage::Revalidate {
            entry: Box::new(entry.clone()),
            ours,
        }
    }

    #[test]
    fn a_storable_miss_is_collected_and_announced() {
        let c = cfg("{}");
        let req = request(&c, get("/a"));
        let h = fields(&[("cache-control", "max-age=60"), ("content-length", "5")]);
        let plan = forward_plan(&c, &req, "miss", &resp(200, &h, 31));
        let entry = plan.store.unwrap();
        assert_eq!(
            (entry.status, entry.key.as_str()),
            (200, req.key.text.as_str())
        );
        assert!(!plan.head_update && !plan.too_large);
        assert_eq!(
            plan.outcome.cache_status("switchyard"),
            "switchyard; fwd=miss; stored"
        );
        // Chunked: stored when it ends within the limit, without announcing it.
        let chunked = fields(&[("cache-control", "max-age=60")]);
        let plan = forward_plan(&c, &req, "miss", &resp(200, &chunked, 31));
        assert!(plan.store.is_some());
        assert_eq!(
            plan.outcome.cache_status("switchyard"),
            "switchyard; fwd=miss"
        );
        // Neither may be refreshed in the background, so the upstream host is not read.
        assert!(!plan.refreshable);
    }

    #[test]
    fn only_entries_that_allow_stale_while_revalidate_record_their_upstream_host() {
        let c = cfg("{}");
        let req = request(&c, get("/a"));
        let swr = fields(&[("cache-control", "max-age=60, stale-while-revalidate=30")]);
        let plan = forward_plan(&c, &req, "miss", &resp(200, &swr, 31));
        assert!(plan.store.is_some() && plan.refreshable);
        let zero = fields(&[("cache-control", "max-age=60, stale-while-revalidate=0")]);
        assert!(!forward_plan(&c, &req, "miss", &resp(200, &zero, 31)).refreshable);
    }

    #[test]
    fn no_store_private_and_credentials_are_not_stored() {
        let c = cfg("{}");
        let not_stored = |view: RequestView, cc: &str| {
            let h = fields(&[("cache-control", cc)]);
            let plan = forward_plan(&c, &request(&c, view), "miss", &resp(200, &h, 31));
            // Stored exactly when there is no reason not to.
            assert_eq!(plan.store.is_none(), detail(&plan.outcome).is_some());
            detail(&plan.outcome)
        };
        assert_eq!(
            not_stored(get("/a"), "max-age=60, no-store"),
            Some("no-store")
        );
        assert_eq!(
            not_stored(get("/a"), "private, max-age=60"),
            Some("private")
        );
        let no_store_request = get("/a").with_header("cache-control", "no-store");
        assert_eq!(not_stored(no_store_request, "max-age=60"), Some("no-store"));
        let auth = || get("/a").with_header("authorization", "Bearer x");
        assert_eq!(not_stored(auth(), "max-age=60"), Some("authorization"));
        assert_eq!(not_stored(auth(), "public, max-age=60"), None);
        assert_eq!(not_stored(auth(), "s-maxage=60"), None);
    }

    #[test]
    fn heads_local_replies_and_large_bodies_are_not_stored() {
        let c = cfg(r#"{"max_entry_bytes": 4096}"#);
        let h = fields(&[("cache-control", "max-age=60"), ("content-length", "5000")]);
        let plan = forward_plan(&c, &request(&c, get("/a")), "miss", &resp(200, &h, 31));
        assert!(plan.store.is_none() && plan.too_large);
        assert_eq!(detail(&plan.outcome), Some("too-large"));
        let small = fields(&[("cache-control", "max-age=60")]);
        let head = Request::lookup(&c, RequestView::new("HEAD", "/a"), true, T0);
        let plan = forward_plan(&c, &head, "miss", &resp(200, &small, 1));
        assert!(plan.store.is_none() && plan.head_update && !plan.too_large);
        assert_eq!(detail(&plan.outcome), Some("head"));
        let local = Response {
            from_upstream: false,
            ..resp(200, &small, 1)
        };
        let plan = forward_plan(&c, &request(&c, get("/a")), "miss", &local);
        assert_eq!(detail(&plan.outcome), Some("local-reply"));
        assert!(plan.store.is_none() && !plan.head_update);
        // An earlier verdict is the reason, not the size.
        let both = fields(&[("cache-control", "no-store"), ("content-length", "5000")]);
        let plan = forward_plan(&c, &request(&c, get("/a")), "miss", &resp(200, &both, 1));
        assert_eq!(detail(&plan.outcome), Some("no-store"));
        assert!(!plan.too_large);
    }

    #[test]
    fn a_304_to_our_revalidation_replaces_the_entry() {
        let c = cfg("{}");
        let e = stored(
            &c,
            &get("/a"),
            &[("cache-control", "max-age=10"), ("etag", "\"v1\"")],
        );
        let req = request(&c, get("/a"));
        let h = fields(&[
            (":status", "304"),
            ("cache-control", "max-age=100"),
            ("etag", "\"v1\""),
        ]);
        let ResponsePlan::Replace(fresh) =
            response_plan(&c, revalidating(&e, true), Some(&req), &resp(304, &h, 31))
        else {
            panic!("not replaced")
        };
        assert_eq!(fresh.header("cache-control"), Some(&b"max-age=100"[..]));
        assert_eq!(fresh.body, e.body);
        assert_eq!(fresh.clock.current_age(T0 + 31 * NS), 1);
        let reply = replaced_reply(&c, &fresh, T0 + 31 * NS, true);
        assert_eq!((reply.status, reply.body), (200, Body::Full));
        let status = reply.headers.iter().find(|(k, _)| k == "cache-status");
        let expected = &b"switchyard; fwd=stale; fwd-status=304; stored"[..];
        assert_eq!(status.map(|(_, v)| v.as_slice()), Some(expected));
        // The client's own validators: its 304 goes back to it untouched.
        let plan = response_plan(&c, revalidating(&e, false), Some(&req), &resp(304, &h, 31));
        assert_eq!(plan, ResponsePlan::Forward("stale"));
        let local = Response {
            from_upstream: false,
            ..resp(304, &h, 31)
        };
        let plan = response_plan(&c, revalidating(&e, true), Some(&req), &local);
        assert_eq!(plan, ResponsePlan::Forward("stale"));
    }

    #[test]
    fn stale_if_error_serves_the_stale_entry_on_5xx_within_its_window() {
        let c = cfg("{}");
        let cc = [("cache-control", "max-age=10, stale-if-error=60")];
        let e = stored(&c, &get("/a"), &cc);
        let req = request(&c, get("/a"));
        let h = fields(&[(":status", "503")]);
        let plan = response_plan(&c, revalidating(&e, true), Some(&req), &resp(503, &h, 30));
        let ResponsePlan::ServeStale { entry, reply } = plan else {
            panic!("not served stale")
        };
        assert_eq!(*entry, e);
        assert_eq!(reply.status, 200);
        let x_cache = reply.headers.iter().find(|(k, _)| k == "x-cache");
        assert_eq!(x_cache.map(|(_, v)| v.as_slice()), Some(&b"STALE"[..]));
        // Past the window, or a 4xx: the error goes to the client.
        let plan = response_plan(&c, revalidating(&e, true), Some(&req), &resp(503, &h, 80));
        assert_eq!(plan, ResponsePlan::Forward("stale"));
        let plan = response_plan(&c, revalidating(&e, true), Some(&req), &resp(404, &h, 30));
        assert_eq!(plan, ResponsePlan::Forward("stale"));
        // must-revalidate forbids it.
        let strict = stored(
            &c,
            &get("/a"),
            &[(
                "cache-control",
                "max-age=10, stale-if-error=60, must-revalidate",
            )],
        );
        let plan = response_plan(
            &c,
            revalidating(&strict, true),
            Some(&req),
            &resp(503, &h, 30),
        );
        assert_eq!(plan, ResponsePlan::Forward("stale"));
        // The request's own stale-if-error opens the window.
        let plain = stored(&c, &get("/a"), &[("cache-control", "max-age=10")]);
        let asking = request(
            &c,
            get("/a").with_header("cache-control", "stale-if-error=60"),
        );
        let plan = response_plan(
            &c,
            revalidating(&plain, true),
            Some(&asking),
            &resp(500, &h, 30),
        );
        assert!(matches!(plan, ResponsePlan::ServeStale { .. }));
    }

    #[test]
    fn successful_unsafe_methods_invalidate_their_uris() {
        let c = cfg("{}");
        let view = RequestView::new("POST", "/items/1?x=1").with_authority("Example.com");
        let req = Request::unsafe_method(&c, view.clone(), T0);
        let h = fields(&[
            ("location", "/items/2"),
            ("content-location", "http://other.example/items/3"),
        ]);
        let plan = response_plan(&c, Stage::Invalidate, Some(&req), &resp(201, &h, 1));
        let own = crate::key::uri_hash("example.com", "/items/1");
        let located = crate::key::uri_hash("example.com", "/items/2");
        assert_eq!(plan, ResponsePlan::Invalidate(Some(vec![own, located])));
        // Not after an error, nor after a local reply.
        let plan = response_plan(&c, Stage::Invalidate, Some(&req), &resp(500, &h, 1));
        assert_eq!(plan, ResponsePlan::Invalidate(None));
        let local = Response {
            from_upstream: false,
            ..resp(201, &h, 1)
        };
        let plan = response_plan(&c, Stage::Invalidate, Some(&req), &local);
        assert_eq!(plan, ResponsePlan::Invalidate(None));
        let bypass = Stage::Pass(Some(METHOD));
        let plan = response_plan(&c, bypass, None, &resp(200, &h, 1));
        assert_eq!(plan, ResponsePlan::Pass(Some(METHOD)));
    }

    #[test]
    fn a_head_answer_freshens_or_invalidates_the_stored_get() {
        let c = cfg("{}");
        let e = stored(
            &c,
            &get("/a"),
            &[("cache-control", "max-age=10"), ("etag", "\"v1\"")],
        );
        let same = fields(&[("cache-control", "max-age=99"), ("etag", "\"v1\"")]);
        let fresh = head_update(&c, e.clone(), &same, T0, T0 + NS).unwrap();
        assert_eq!(fresh.header("cache-control"), Some(&b"max-age=99"[..]));
        let changed = fields(&[("etag", "\"v2\"")]);
        assert_eq!(head_update(&c, e, &changed, T0, T0 + NS), None);
    }

    #[test]
    fn background_refreshes_replace_store_or_keep() {
        let c = cfg("{}");
        let mut e = stored(
            &c,
            &get("/a"),
            &[("cache-control", "max-age=10"), ("etag", "\"v1\"")],
        );
        e.upstream_host = "10.0.0.1:80".into();
        let req = request(&c, get("/a"));
        let now = T0 + 31 * NS;
        let h304 = fields(&[(":status", "304"), ("cache-control", "max-age=100")]);
        let Refresh::Replace(fresh) = refresh_plan(&c, &req, &e, 304, &h304, 0, now) else {
            panic!("not replaced")
        };
        assert_eq!(fresh.body, e.body);
        let h200 = fields(&[(":status", "200"), ("cache-control", "max-age=100")]);
        let Refresh::Store(new) = refresh_plan(&c, &req, &e, 200, &h200, 3, now) else {
            panic!("not stored")
        };
        assert_eq!(new.upstream_host, "10.0.0.1:80");
        assert!(new.body.is_empty());
        let large = c.max_entry_bytes + 1;
        assert_eq!(
            refresh_plan(&c, &req, &e, 200, &h200, large, now),
            Refresh::Keep
        );
        let h503 = fields(&[(":status", "503")]);
        assert_eq!(
            refresh_plan(&c, &req, &e, 503, &h503, 0, now),
            Refresh::Keep
        );
        let private = fields(&[(":status", "200"), ("cache-control", "private")]);
        assert_eq!(
            refresh_plan(&c, &req, &e, 200, &private, 0, now),
            Refresh::Keep
        );
    }

    #[test]
    fn statuses_are_read_from_lower_cased_maps() {
        let h = lower(vec![
            (b":status".to_vec(), b"204".to_vec()),
            (b"ETag".to_vec(), b"x".to_vec()),
        ]);
        assert_eq!(status_of(&h), 204);
        assert_eq!(h[1].0, "etag");
        assert_eq!(status_of(&fields(&[(":status", "abc")])), 0);
    }
}
