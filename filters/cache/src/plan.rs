//! The request side of the cache as pure functions (RFC 9111 §4, RFC 5861, RFC 9211): what a
//! request does with the cache ([`request_plan`]), what a lookup leads to ([`lookup_plan`]:
//! serve fresh, serve stale and refresh in the background, revalidate with validators, forward
//! as a miss, answer `504`), what a coalesced waiter gets ([`coalesced_reply`]) and what a purge
//! removes ([`purge_plan`]). No host calls: the glue (`filter`) reads the facts, asks here and
//! applies the answer (local replies, header writes, shared data, metrics).
//!
//! Times are nanoseconds of the host clock (`host::now_nanos()`), passed in.

use crate::config::{Config, PurgeConfig};
use crate::entry::Entry;
use crate::key::{key_origin, vary_names, vary_values, without_routing, CacheKey};
use crate::respond::{self, Outcome, RangeReply};
use crate::rfc::{
    authorization_allows, freshness_lifetime, not_modified, serve_decision, AgeClock, Field,
    Policy, RequestFacts, ResponseFacts, Serve,
};
use switchyard_core::routing::RoutingRecord;
use switchyard_core::RequestView;

use switchyard_core::duration::NS_PER_S;

/// The storage settings of the configuration.
pub fn policy(cfg: &Config) -> Policy {
    Policy {
        default_ttl: cfg.default_ttl,
        heuristic_max: cfg.heuristic_max_ttl,
        store_set_cookie: cfg.store_set_cookie,
    }
}

/// A response's facts as this cache reads them (honouring `targeted_cache_control`).
pub fn facts(cfg: &Config, status: u16, headers: &[Field]) -> ResponseFacts {
    ResponseFacts::targeted(status, headers, &cfg.targeted_cache_control)
}

/// [`facts`] with the receipt time standing in for a missing `Date` (RFC 9110 §6.6.1).
pub fn facts_with_date(cfg: &Config, status: u16, headers: &[Field], now: u64) -> ResponseFacts {
    let mut f = facts(cfg, status, headers);
    if f.date.is_none() {
        f.date = Some(now / NS_PER_S);
    }
    f
}

/// A stored entry's facts, freshness lifetime and current age (seconds) at `now`.
pub fn lifetime_and_age(cfg: &Config, entry: &Entry, now: u64) -> (ResponseFacts, u64, u64) {
    let f = facts(cfg, entry.status, &entry.headers);
    let lifetime = freshness_lifetime(&f, &policy(cfg));
    (f, lifetime, entry.clock.current_age(now))
}

/// A request the cache looked up (or will invalidate for).
#[derive(Clone)]
pub struct Request {
    pub view: RequestView,
    pub key: CacheKey,
    pub facts: RequestFacts,
    pub head: bool,
    /// When the request arrived (nanoseconds): the start of the upstream exchange.
    pub request_time: u64,
}

impl Request {
    /// A GET or HEAD to look up.
    pub fn lookup(cfg: &Config, view: RequestView, head: bool, now: u64) -> Self {
        let facts = RequestFacts::from_headers(view.headers());
        let key = cfg.key.key(&view);
        Request {
            view,
            key,
            facts,
            head,
            request_time: now,
        }
    }

    /// An unsafe method, whose successful answer invalidates its URIs.
    pub fn unsafe_method(cfg: &Config, view: RequestView, now: u64) -> Self {
        Request {
            key: cfg.key.key(&view),
            facts: RequestFacts::default(),
            view,
            head: false,
            request_time: now,
        }
    }
}

/// What a request does with the cache, before any lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestPlan {
    /// A purge (the purge method, or any method to `purge.path`): see [`purge_plan`].
    Purge,
    /// POST, PUT, PATCH, DELETE: forwarded; a successful answer invalidates (RFC 9111 §4.4).
    Invalidate,
    /// Neither looked up nor stored (other methods, `bypass`): the outcome is reported on the
    /// response.
    Bypass(Outcome),
    /// GET or HEAD: look the key up, then [`lookup_plan`].
    Lookup { head: bool },
}

fn forward(fwd: &'static str, detail: Option<&'static str>) -> Outcome {
    Outcome::Forward {
        fwd,
        status: None,
        stored: false,
        detail,
    }
}

/// Classifies a request. Methods are case-sensitive (RFC 9110 §9.1): `get` is not `GET`.
pub fn request_plan(cfg: &Config, view: &RequestView) -> RequestPlan {
    let method = view.method();
    if let Some(p) = &cfg.purge {
        if method == p.method || p.path.as_deref() == Some(view.path()) {
            return RequestPlan::Purge;
        }
    }
    match method {
        "GET" | "HEAD" => {}
        "POST" | "PUT" | "PATCH" | "DELETE" => return RequestPlan::Invalidate,
        _ => return RequestPlan::Bypass(forward("method", None)),
    }
    if cfg.bypass.iter().any(|m| m.matches(view)) {
        return RequestPlan::Bypass(forward("bypass", Some("config")));
    }
    RequestPlan::Lookup {
        head: method == "HEAD",
    }
}

/// Which bytes of the served entry's body a reply carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    Empty,
    Full,
    /// Bytes `start..=end` (empty if the entry is shorter).
    Part {
        start: usize,
        end: usize,
    },
}

impl Body {
    pub fn of<'a>(&self, body: &'a [u8]) -> &'a [u8] {
        match *self {
            Body::Empty => &[],
            Body::Full => body,
            Body::Part { start, end } => body.get(start..=end).unwrap_or(&[]),
        }
    }
}

/// A local reply from a stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u32,
    pub headers: Vec<Field>,
    pub body: Body,
}

/// The answer to `view` from `entry`: a `304` if the client's conditional matches (RFC 9110
/// §13.1), else the stored response (or the requested range of it) with `Age`,
/// `Cache-Status` and `x-cache`.
pub fn serve_reply(
    cfg: &Config,
    view: &RequestView,
    entry: &Entry,
    now: u64,
    stale: bool,
) -> Reply {
    let (_, lifetime, age) = lifetime_and_age(cfg, entry, now);
    let ttl = i64::try_from(lifetime).unwrap_or(i64::MAX) - i64::try_from(age).unwrap_or(0);
    let outcome = Outcome::Hit { ttl, stale };
    let name = &cfg.cache_status_name;
    if not_modified(
        view.header("if-none-match"),
        view.header("if-modified-since"),
        entry.header("etag"),
        entry.header("last-modified"),
    ) {
        let headers = respond::not_modified_headers(entry, age, &outcome, name);
        return Reply {
            status: 304,
            headers,
            body: Body::Empty,
        };
    }
    let mut headers = respond::served_headers(entry, age, &outcome, name);
    let len = entry.body.len();
    match respond::range_reply(view.header("range"), view.header("if-range"), entry) {
        RangeReply::Full => Reply {
            status: u32::from(entry.status),
            headers,
            body: Body::Full,
        },
        RangeReply::Partial { start, end } => {
            let cr = format!("bytes {start}-{end}/{len}");
            headers.push(("content-range".into(), cr.into_bytes()));
            Reply {
                status: 206,
                headers,
                body: Body::Part {
                    start: start as usize,
                    end: end as usize,
                },
            }
        }
        RangeReply::Unsatisfiable => {
            headers.retain(|(k, _)| k != "content-type");
            let cr = format!("bytes */{len}");
            headers.push(("content-range".into(), cr.into_bytes()));
            Reply {
                status: 416,
                headers,
                body: Body::Empty,
            }
        }
    }
}

/// What a looked-up GET or HEAD does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupPlan {
    /// Answer from the stored entry (`stale`: past its freshness). With `refresh`, also
    /// revalidate it in the background in that cluster (stale-while-revalidate, RFC 5861 §3).
    Serve {
        reply: Reply,
        stale: bool,
        refresh: Option<String>,
    },
    /// Forward to revalidate the stored entry, adding these request headers (the entry's
    /// validators; none when the client sent its own conditional).
    Revalidate { validators: Vec<Field> },
    /// `only-if-cached` without a usable entry: `504` (RFC 9111 §5.2.1.7).
    NotCached(Outcome),
    /// Forward (`fwd`: the RFC 9211 reason) and store the answer if storable; `coalesce`: first
    /// take the key's lock, or wait behind the request holding it.
    Forward { fwd: &'static str, coalesce: bool },
}

/// RFC 9111 §4: how to answer `req` given the entry found for it (same key, matching `Vary`).
pub fn lookup_plan(cfg: &Config, req: &Request, found: Option<&Entry>, now: u64) -> LookupPlan {
    let only_if_cached = req.facts.cc.only_if_cached;
    if let Some(entry) = found {
        let (rfacts, lifetime, age) = lifetime_and_age(cfg, entry, now);
        if req.facts.has_authorization && !authorization_allows(&rfacts.cc) {
            // RFC 9111 §3.5: not for requests with credentials; the response goes by.
            return LookupPlan::Forward {
                fwd: "request",
                coalesce: false,
            };
        }
        let mut decision = serve_decision(&req.facts, &rfacts.cc, lifetime, age);
        // A refresh goes where the router sent the request, else to `upstream_cluster`.
        let refresh = RoutingRecord::read(&req.view, &cfg.key.cluster_header)
            .cluster
            .or_else(|| cfg.upstream_cluster.clone());
        if decision == Serve::StaleWhileRevalidate && refresh.is_none() {
            decision = Serve::Revalidate;
        }
        match decision {
            Serve::Fresh | Serve::StaleAllowed => {
                let stale = decision == Serve::StaleAllowed;
                return LookupPlan::Serve {
                    reply: serve_reply(cfg, &req.view, entry, now, stale),
                    stale,
                    refresh: None,
                };
            }
            Serve::StaleWhileRevalidate => {
                return LookupPlan::Serve {
                    reply: serve_reply(cfg, &req.view, entry, now, true),
                    stale: true,
                    refresh,
                };
            }
            Serve::Revalidate => {
                if only_if_cached {
                    return LookupPlan::NotCached(forward("stale", Some("only-if-cached")));
                }
                let client_conditional = req.view.header("if-none-match").is_some()
                    || req.view.header("if-modified-since").is_some();
                let mut validators = Vec::new();
                if !client_conditional {
                    if let Some(etag) = entry.header("etag") {
                        validators.push(("if-none-match".to_string(), etag.to_vec()));
                    }
                    if let Some(lm) = entry.header("last-modified") {
                        validators.push(("if-modified-since".to_string(), lm.to_vec()));
                    }
                }
                return LookupPlan::Revalidate { validators };
            }
        }
    }
    if only_if_cached {
        return LookupPlan::NotCached(forward("miss", Some("only-if-cached")));
    }
    LookupPlan::Forward {
        fwd: "miss",
        coalesce: !req.head && !cfg.coalesce_timeout.is_zero() && !req.facts.no_cache(),
    }
}

/// The answer for a request that waited behind another request's fetch, if the entry now
/// stored serves it as the request itself would have been served (fresh, or stale within its
/// `max-stale`; credentials only as RFC 9111 §3.5 allows). The flag: served stale.
pub fn coalesced_reply(
    cfg: &Config,
    view: &RequestView,
    facts: &RequestFacts,
    entry: &Entry,
    now: u64,
) -> Option<(Reply, bool)> {
    let (rfacts, lifetime, age) = lifetime_and_age(cfg, entry, now);
    let usable = matches!(
        serve_decision(facts, &rfacts.cc, lifetime, age),
        Serve::Fresh | Serve::StaleAllowed
    ) && (!facts.has_authorization || authorization_allows(&rfacts.cc));
    let stale = age >= lifetime;
    usable.then(|| (serve_reply(cfg, view, entry, now, stale), stale))
}

/// The entry to store for a response to `view` (headers lower-cased); its body is collected
/// afterwards.
pub fn build_entry(
    cfg: &Config,
    key: &CacheKey,
    view: &RequestView,
    status: u16,
    headers: &[Field],
    request_time: u64,
    now: u64,
) -> Entry {
    let f = facts(cfg, status, headers);
    let vary_text: Vec<String> = headers
        .iter()
        .filter(|(k, _)| k == "vary")
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect();
    let vary_list: Vec<&str> = vary_text.iter().map(String::as_str).collect();
    Entry {
        key: key.text.clone(),
        path: view.path().to_string(),
        vary: vary_values(&vary_names(&vary_list), view),
        status,
        headers: respond::stored_headers(headers, now / NS_PER_S),
        body: Vec::new(),
        clock: AgeClock::new(&f, request_time, now),
        tags: respond::tags(headers, &cfg.tag_headers),
        upstream_host: String::new(),
    }
}

/// Whether a stored entry is the one for a request: same full key and matching `Vary` values.
pub fn entry_matches(entry: &Entry, key: &CacheKey, view: &RequestView) -> bool {
    let names: Vec<String> = entry.vary.iter().map(|(n, _)| n.clone()).collect();
    entry.key == key.text && vary_values(&names, view) == entry.vary
}

/// The `Cache-Status` outcome of every answer to a purge request.
pub const PURGE: Outcome = Outcome::Forward {
    fwd: "method",
    status: None,
    stored: false,
    detail: Some("purge"),
};

/// What a purge request does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgePlan {
    /// Missing or wrong token: `403`, nothing purged.
    Denied,
    /// `purge.path` without `?url=`, `?prefix=` or `?tag=`: `400`.
    BadRequest,
    /// Remove the entries carrying any of these tags.
    Tags(Vec<String>),
    /// Remove the entries under `prefix` whose key starts with one of `origins` (either
    /// scheme on the request's authority, whatever their routing).
    Prefix {
        prefix: String,
        origins: Vec<String>,
    },
    /// Remove every routed variant of this key (its text without the routing line).
    Key(String),
}

impl PurgePlan {
    /// Whether the purge removes `e`.
    pub fn removes(&self, e: &Entry) -> bool {
        match self {
            PurgePlan::Tags(wanted) => e.tags.iter().any(|t| wanted.contains(t)),
            PurgePlan::Prefix { prefix, origins } => {
                e.path.starts_with(prefix.as_str()) && origins.iter().any(|o| e.key.starts_with(o))
            }
            PurgePlan::Key(wanted) => without_routing(&e.key) == *wanted,
            PurgePlan::Denied | PurgePlan::BadRequest => false,
        }
    }
}

/// Compares in time independent of where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn split_tags(tags: &str) -> Vec<String> {
    tags.split([',', ' '])
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect()
}

/// What the purge request `view` removes (see docs/cache.md, *Purge*).
pub fn purge_plan(cfg: &Config, p: &PurgeConfig, view: &RequestView) -> PurgePlan {
    let token_ok = view
        .header(&p.token_header)
        .is_some_and(|t| constant_time_eq(t, p.token.as_bytes()));
    if !token_ok {
        return PurgePlan::Denied;
    }
    let prefix = |pre: &str| PurgePlan::Prefix {
        prefix: pre.to_string(),
        origins: ["http", "https"]
            .iter()
            .map(|scheme| key_origin(scheme, view.authority()))
            .collect(),
    };
    let key = |target: &RequestView| PurgePlan::Key(without_routing(&cfg.key.key(target).text));
    if p.path.as_deref() == Some(view.path()) {
        // `<purge.path>?url=/x?a=1`, `?prefix=/x/` or `?tag=a,b`.
        return match (
            view.query_param("tag"),
            view.query_param("prefix"),
            view.query_param("url"),
        ) {
            (Some(t), _, _) => PurgePlan::Tags(split_tags(t)),
            (None, Some(pre), _) => prefix(pre),
            (None, None, Some(url)) => {
                let mut target = RequestView::new("GET", url).with_authority(view.authority());
                for (k, v) in view.headers() {
                    target = target.with_header_bytes(k, v);
                }
                key(&target)
            }
            _ => PurgePlan::BadRequest,
        };
    }
    if let Some(t) = view.header_joined(&p.tag_header) {
        PurgePlan::Tags(split_tags(&String::from_utf8_lossy(&t)))
    } else if let Some(pre) = view.path().strip_suffix('*') {
        prefix(pre)
    } else {
        key(view)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config;

    pub const NS: u64 = 1_000_000_000;
    /// When the test entries are stored.
    pub const T0: u64 = 1_700_000_000 * NS;

    pub fn cfg(json: &str) -> Config {
        config::parse(json.as_bytes()).unwrap()
    }

    pub fn get(path: &str) -> RequestView {
        RequestView::new("GET", path).with_authority("example.com")
    }

    pub fn fields(headers: &[(&str, &str)]) -> Vec<Field> {
        headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    /// The entry a `200` with `headers` and body `hello` to `view` leaves, stored at `T0`.
    pub fn stored(cfg: &Config, view: &RequestView, headers: &[(&str, &str)]) -> Entry {
        let req = Request::lookup(cfg, view.clone(), false, T0);
        let mut e = build_entry(cfg, &req.key, view, 200, &fields(headers), T0, T0);
        e.body = b"hello".to_vec();
        e
    }

    fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
        reply
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    fn lookup(cfg: &Config, view: RequestView, entry: Option<&Entry>, secs: u64) -> LookupPlan {
        let now = T0 + secs * NS;
        lookup_plan(cfg, &Request::lookup(cfg, view, false, now), entry, now)
    }

    #[test]
    fn requests_are_classified_before_any_lookup() {
        let c = cfg(r#"{"bypass": [{"path": {"prefix": "/admin"}}],
                        "purge": {"token": "t", "path": "/_purge"}}"#);
        let plan = |m: &str, p: &str| request_plan(&c, &RequestView::new(m, p));
        assert_eq!(plan("GET", "/a"), RequestPlan::Lookup { head: false });
        assert_eq!(plan("HEAD", "/a"), RequestPlan::Lookup { head: true });
        assert_eq!(plan("PURGE", "/a"), RequestPlan::Purge);
        assert_eq!(plan("GET", "/_purge"), RequestPlan::Purge);
        for m in ["POST", "PUT", "PATCH", "DELETE"] {
            assert_eq!(plan(m, "/a"), RequestPlan::Invalidate);
        }
        // Methods are case-sensitive: `get` is not GET.
        for m in ["get", "OPTIONS"] {
            assert_eq!(plan(m, "/a"), RequestPlan::Bypass(forward("method", None)));
        }
        let bypass = RequestPlan::Bypass(forward("bypass", Some("config")));
        assert_eq!(plan("GET", "/admin/x"), bypass);
        // Without a purge section, PURGE is just another method.
        let plain = cfg("{}");
        let purge = request_plan(&plain, &RequestView::new("PURGE", "/a"));
        assert_eq!(purge, RequestPlan::Bypass(forward("method", None)));
    }

    #[test]
    fn a_fresh_entry_is_served_with_age_and_ttl() {
        let c = cfg("{}");
        let e = stored(&c, &get("/a"), &[("cache-control", "max-age=60")]);
        let LookupPlan::Serve {
            reply,
            stale,
            refresh,
        } = lookup(&c, get("/a"), Some(&e), 10)
        else {
            panic!("not served")
        };
        assert!(!stale);
        assert_eq!(refresh, None);
        assert_eq!((reply.status, reply.body), (200, Body::Full));
        assert_eq!(header(&reply, "age"), Some("10"));
        assert_eq!(
            header(&reply, "cache-status"),
            Some("switchyard; hit; ttl=50")
        );
        assert_eq!(header(&reply, "x-cache"), Some("HIT"));
        assert_eq!(reply.body.of(&e.body), b"hello");
    }

    #[test]
    fn a_hit_answers_conditionals_and_ranges() {
        let c = cfg("{}");
        let e = stored(
            &c,
            &get("/a"),
            &[("cache-control", "max-age=60"), ("etag", "\"v1\"")],
        );
        let serve = |view: RequestView| serve_reply(&c, &view, &e, T0 + NS, false);
        let not_modified = serve(get("/a").with_header("if-none-match", "\"v1\""));
        assert_eq!((not_modified.status, not_modified.body), (304, Body::Empty));
        let part = serve(get("/a").with_header("range", "bytes=1-2"));
        assert_eq!(part.status, 206);
        assert_eq!(part.body.of(&e.body), b"el");
        assert_eq!(header(&part, "content-range"), Some("bytes 1-2/5"));
        let past = serve(get("/a").with_header("range", "bytes=9-"));
        assert_eq!((past.status, past.body), (416, Body::Empty));
        assert_eq!(header(&past, "content-range"), Some("bytes */5"));
    }

    #[test]
    fn stale_while_revalidate_serves_stale_and_refreshes_where_the_request_was_routed() {
        let headers = [
            ("cache-control", "max-age=10, stale-while-revalidate=60"),
            ("etag", "\"v1\""),
        ];
        let c = cfg(r#"{"upstream_cluster": "web"}"#);
        let e = stored(&c, &get("/a"), &headers);
        let LookupPlan::Serve {
            reply,
            stale,
            refresh,
        } = lookup(&c, get("/a"), Some(&e), 30)
        else {
            panic!("not served")
        };
        assert!(stale);
        assert_eq!(refresh.as_deref(), Some("web"));
        assert_eq!(header(&reply, "x-cache"), Some("STALE"));
        assert_eq!(
            header(&reply, "cache-status"),
            Some("switchyard; hit; ttl=-20")
        );
        // A routed request is refreshed in its cluster (the routing record is part of the key).
        let routed = get("/a").with_header("x-switchyard-cluster", "api");
        let e = stored(&c, &routed, &headers);
        let plan = lookup(&c, routed, Some(&e), 30);
        assert!(matches!(plan, LookupPlan::Serve { refresh: Some(r), .. } if r == "api"));
        // Nowhere to refresh: revalidated synchronously.
        let c = cfg("{}");
        let e = stored(&c, &get("/a"), &headers);
        let plan = lookup(&c, get("/a"), Some(&e), 30);
        let validators = fields(&[("if-none-match", "\"v1\"")]);
        assert_eq!(plan, LookupPlan::Revalidate { validators });
        // Past the window: revalidated.
        let c = cfg(r#"{"upstream_cluster": "web"}"#);
        let plan = lookup(&c, get("/a"), Some(&e), 80);
        assert!(matches!(plan, LookupPlan::Revalidate { .. }));
    }

    #[test]
    fn must_revalidate_is_never_served_stale() {
        let c = cfg(r#"{"upstream_cluster": "web"}"#);
        let headers = [
            (
                "cache-control",
                "max-age=10, must-revalidate, stale-while-revalidate=60",
            ),
            ("etag", "\"v1\""),
            ("last-modified", "Tue, 14 Nov 2023 22:00:00 GMT"),
        ];
        let e = stored(&c, &get("/a"), &headers);
        let validators = fields(&[
            ("if-none-match", "\"v1\""),
            ("if-modified-since", "Tue, 14 Nov 2023 22:00:00 GMT"),
        ]);
        let expected = LookupPlan::Revalidate { validators };
        assert_eq!(lookup(&c, get("/a"), Some(&e), 30), expected);
        // Not even to a request that accepts any staleness.
        let lenient = get("/a").with_header("cache-control", "max-stale");
        assert_eq!(lookup(&c, lenient, Some(&e), 30), expected);
        // The client's own conditional goes upstream as it is.
        let conditional = get("/a").with_header("if-none-match", "\"v0\"");
        let plan = lookup(&c, conditional, Some(&e), 30);
        assert_eq!(plan, LookupPlan::Revalidate { validators: vec![] });
        // Fresh, it is served.
        assert!(matches!(
            lookup(&c, get("/a"), Some(&e), 5),
            LookupPlan::Serve { stale: false, .. }
        ));
    }

    #[test]
    fn max_stale_and_no_cache_requests() {
        let c = cfg("{}");
        let e = stored(&c, &get("/a"), &[("cache-control", "max-age=10")]);
        let lenient = get("/a").with_header("cache-control", "max-stale=30");
        let plan = lookup(&c, lenient, Some(&e), 30);
        assert!(matches!(
            plan,
            LookupPlan::Serve {
                stale: true,
                refresh: None,
                ..
            }
        ));
        let no_cache = get("/a").with_header("cache-control", "no-cache");
        let plan = lookup(&c, no_cache.clone(), Some(&e), 1);
        assert_eq!(plan, LookupPlan::Revalidate { validators: vec![] });
        // A miss with no-cache is not coalesced behind another request's fetch.
        let plan = lookup(&c, no_cache, None, 1);
        let uncoalesced = LookupPlan::Forward {
            fwd: "miss",
            coalesce: false,
        };
        assert_eq!(plan, uncoalesced);
    }

    #[test]
    fn credentials_are_served_only_what_the_response_allows() {
        let c = cfg("{}");
        let with_auth = || get("/a").with_header("authorization", "Bearer x");
        let e = stored(&c, &get("/a"), &[("cache-control", "max-age=60")]);
        let plan = lookup(&c, with_auth(), Some(&e), 1);
        let passed = LookupPlan::Forward {
            fwd: "request",
            coalesce: false,
        };
        assert_eq!(plan, passed);
        let facts = RequestFacts::from_headers(with_auth().headers());
        assert_eq!(coalesced_reply(&c, &with_auth(), &facts, &e, T0 + NS), None);
        let public = stored(&c, &get("/a"), &[("cache-control", "public, max-age=60")]);
        let plan = lookup(&c, with_auth(), Some(&public), 1);
        assert!(matches!(plan, LookupPlan::Serve { stale: false, .. }));
        let served = coalesced_reply(&c, &with_auth(), &facts, &public, T0 + NS);
        assert!(matches!(served, Some((_, false))));
    }

    #[test]
    fn misses_coalesce_and_only_if_cached_gets_504() {
        let c = cfg("{}");
        let miss = LookupPlan::Forward {
            fwd: "miss",
            coalesce: true,
        };
        assert_eq!(lookup(&c, get("/a"), None, 0), miss);
        let now = T0;
        let head = Request::lookup(&c, RequestView::new("HEAD", "/a"), true, now);
        let plan = lookup_plan(&c, &head, None, now);
        let uncoalesced = LookupPlan::Forward {
            fwd: "miss",
            coalesce: false,
        };
        assert_eq!(plan, uncoalesced);
        let off = cfg(r#"{"coalesce_timeout": "0s"}"#);
        assert_eq!(lookup(&off, get("/a"), None, 0), uncoalesced);
        let only = || get("/a").with_header("cache-control", "only-if-cached");
        let plan = lookup(&c, only(), None, 0);
        assert_eq!(
            plan,
            LookupPlan::NotCached(forward("miss", Some("only-if-cached")))
        );
        let e = stored(&c, &get("/a"), &[("cache-control", "max-age=10")]);
        let plan = lookup(&c, only(), Some(&e), 30);
        assert_eq!(
            plan,
            LookupPlan::NotCached(forward("stale", Some("only-if-cached")))
        );
    }

    #[test]
    fn a_vary_mismatch_is_not_the_entry() {
        let c = cfg("{}");
        let gzip = get("/a").with_header("accept-encoding", "gzip, br");
        let e = stored(
            &c,
            &gzip,
            &[("cache-control", "max-age=60"), ("vary", "Accept-Encoding")],
        );
        let key = Request::lookup(&c, gzip.clone(), false, T0).key;
        assert!(entry_matches(&e, &key, &gzip));
        // Whitespace inside the value does not split variants.
        let same = get("/a").with_header("accept-encoding", "gzip,br");
        assert!(entry_matches(&e, &key, &same));
        let other = get("/a").with_header("accept-encoding", "br");
        assert!(!entry_matches(&e, &key, &other));
        assert!(!entry_matches(&e, &key, &get("/a")));
        let other_key = Request::lookup(&c, get("/b"), false, T0).key;
        assert!(!entry_matches(&e, &other_key, &gzip));
    }

    #[test]
    fn purges_need_the_token_and_pick_their_targets() {
        let c = cfg(r#"{"purge": {"token": "secret", "path": "/_purge"}}"#);
        let p = c.purge.clone().unwrap();
        let purge = |path: &str| RequestView::new("PURGE", path).with_authority("example.com");
        let with_token = |path: &str| purge(path).with_header("x-purge-token", "secret");
        assert_eq!(purge_plan(&c, &p, &purge("/a")), PurgePlan::Denied);
        let wrong = purge("/a").with_header("x-purge-token", "secreT");
        assert_eq!(purge_plan(&c, &p, &wrong), PurgePlan::Denied);

        let a = stored(&c, &get("/a?x=1"), &[("cache-tag", "red, blue")]);
        let b = stored(&c, &get("/docs/b"), &[]);
        let by_key = purge_plan(&c, &p, &with_token("/a?x=1"));
        assert!(by_key.removes(&a) && !by_key.removes(&b));
        let by_prefix = purge_plan(&c, &p, &with_token("/docs/*"));
        assert!(!by_prefix.removes(&a) && by_prefix.removes(&b));
        let tagged = with_token("/").with_header("x-purge-tag", "green, blue");
        let by_tag = purge_plan(&c, &p, &tagged);
        assert_eq!(by_tag, PurgePlan::Tags(vec!["green".into(), "blue".into()]));
        assert!(by_tag.removes(&a) && !by_tag.removes(&b));
        // `purge.path` takes the target from the query.
        let by_url = purge_plan(&c, &p, &with_token("/_purge?url=%2Fa%3Fx%3D1"));
        assert!(by_url.removes(&a) && !by_url.removes(&b));
        let bad = purge_plan(&c, &p, &with_token("/_purge"));
        assert_eq!(bad, PurgePlan::BadRequest);
        assert!(!PurgePlan::Denied.removes(&a));
    }
}
