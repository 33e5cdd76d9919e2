//! Proxy-wasm glue: reads the request, runs the RFC 9111 logic, serves hits with a local reply,
//! stores misses as they stream, revalidates, coalesces, purges. Exercised by the Envoy tests.

use crate::config::{self, Config, PurgeConfig};
use crate::entry::Entry;
use crate::key::{
    key_origin, normalise_authority, uri_hash, variant_hash, vary_names, vary_values,
    without_routing, CacheKey,
};
use crate::locks::{Acquire, Locks};
use crate::respond::{self, Outcome, RangeReply};
use crate::rfc::{
    authorization_allows, freshness_lifetime, not_modified, serve_decision, stale_if_error_allows,
    storable, AgeClock, Field, Policy, RequestFacts, ResponseFacts, Serve,
};
use crate::store::{Hit, InsertError, Store, StoreConfig};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;
use switchyard_core::abi::{Buffer, Map};
use switchyard_core::hash::stable_hash64;
use switchyard_core::host::{self, HostStore};
use switchyard_core::metrics::Metrics;
use switchyard_core::routing::RoutingRecord;
use switchyard_core::RequestView;

const NAME: &str = "cache";
const TICK: Duration = Duration::from_millis(20);
const LOCK_CAPACITY: usize = 256;
const NS_PER_MS: u64 = 1_000_000;

const COUNTERS: &[&str] = &[
    "hits",
    "misses",
    "stale",
    "revalidations",
    "revalidated",
    "background_revalidations",
    "stores",
    "store_failures",
    "evictions",
    "purges",
    "purge_denied",
    "invalidations",
    "bypass",
    "coalesced",
    "too_large",
    "collect_budget_exceeded",
];

/// A request waiting for another request's upstream fetch of the same key.
struct Waiter {
    context_id: u32,
    key: CacheKey,
    view: RequestView,
    facts: RequestFacts,
    deadline_ms: u64,
}

/// A stale-while-revalidate refresh to run in the background.
struct Background {
    key: CacheKey,
    /// The routed cluster (routing record), else `upstream_cluster`.
    cluster: String,
    view: RequestView,
    stale: Entry,
    request_time: u64,
}

#[derive(Default)]
struct VmState {
    waiters: Vec<Waiter>,
    /// Waiting contexts the root answered from the cache (their local reply passes through
    /// this filter and must be left alone).
    served: HashSet<u32>,
    queued: Vec<Background>,
    in_flight: HashMap<u32, Background>,
    in_flight_keys: HashSet<u64>,
}

/// Per-VM state shared by the root and HTTP contexts.
struct Runtime {
    cfg: Config,
    store_cfg: StoreConfig,
    locks_key: String,
    policy: Policy,
    metrics: Metrics,
    state: RefCell<VmState>,
    /// Body bytes this VM holds for misses being collected (bounded by `max_collect_bytes`).
    collecting: Rc<Cell<u64>>,
}

impl Runtime {
    fn store(&self) -> Store<'_, HostStore> {
        Store::new(&HostStore, &self.store_cfg)
    }

    fn locks(&self) -> Locks<'_, HostStore> {
        Locks {
            shared: &HostStore,
            key: self.locks_key.clone(),
            capacity: LOCK_CAPACITY,
        }
    }

    /// The stored entry for this request: same full key and matching `Vary` values.
    fn find(&self, key: &CacheKey, view: &RequestView) -> Option<Hit> {
        self.store().find(key.hash).into_iter().find(|h| {
            let e = &h.entry;
            let names: Vec<String> = e.vary.iter().map(|(n, _)| n.clone()).collect();
            e.key == key.text && vary_values(&names, view) == e.vary
        })
    }

    /// Reads every bucket: only at configure time and after purges / invalidations.
    fn update_gauges(&self) {
        let store = self.store();
        if let Some(used) = store.used() {
            self.metrics.set_gauge("bytes_in_use", used);
            self.metrics.set_gauge("entries", store.entries() as u64);
        }
    }

    /// Stores an entry for `key`, returning whether it was stored.
    fn insert(&self, entry: &Entry, key: &CacheKey, now: u64) -> bool {
        let variant = variant_hash(&entry.vary);
        match self.store().insert(
            entry,
            key.hash,
            variant,
            key.uri_hash,
            now / NS_PER_MS,
            now ^ key.hash,
        ) {
            Ok(ins) => {
                self.metrics.inc("stores");
                self.metrics.add("evictions", ins.evicted as u64);
                self.metrics.set_gauge("bytes_in_use", ins.used);
                true
            }
            Err(InsertError::TooLarge) => {
                self.metrics.inc("too_large");
                false
            }
            Err(e) => {
                log::debug!("switchyard cache: not stored: {e:?}");
                self.metrics.inc("store_failures");
                false
            }
        }
    }

    /// A response's facts as this cache reads them (honouring `targeted_cache_control`).
    fn facts(&self, status: u16, headers: &[Field]) -> ResponseFacts {
        ResponseFacts::targeted(status, headers, &self.cfg.targeted_cache_control)
    }

    /// [`facts`](Self::facts) with the receipt time standing in for a missing `Date` (RFC 9110
    /// §6.6.1).
    fn facts_with_date(&self, status: u16, headers: &[Field], now: u64) -> ResponseFacts {
        let mut f = self.facts(status, headers);
        if f.date.is_none() {
            f.date = Some(now / 1_000_000_000);
        }
        f
    }

    fn lifetime_and_age(&self, entry: &Entry, now: u64) -> (ResponseFacts, u64, u64) {
        let facts = self.facts(entry.status, &entry.headers);
        let lifetime = freshness_lifetime(&facts, &self.policy);
        (facts, lifetime, entry.clock.current_age(now))
    }

    /// Answers the current (effective) context from `entry`: a 304 if the client's conditional
    /// matches, else the stored response with `Age`, `Cache-Status` and `x-cache`.
    /// Returns whether the host took the reply.
    fn serve(&self, view: &RequestView, entry: &Entry, now: u64, stale: bool) -> bool {
        let (_, lifetime, age) = self.lifetime_and_age(entry, now);
        let ttl = i64::try_from(lifetime).unwrap_or(i64::MAX) - i64::try_from(age).unwrap_or(0);
        let outcome = Outcome::Hit { ttl, stale };
        self.metrics.inc(if stale { "stale" } else { "hits" });
        let name = &self.cfg.cache_status_name;
        if not_modified(
            view.header("if-none-match"),
            view.header("if-modified-since"),
            entry.header("etag"),
            entry.header("last-modified"),
        ) {
            let h = respond::not_modified_headers(entry, age, &outcome, name);
            reply(304, &h, &[])
        } else {
            let mut h = respond::served_headers(entry, age, &outcome, name);
            let len = entry.body.len();
            match respond::range_reply(view.header("range"), view.header("if-range"), entry) {
                RangeReply::Full => reply(u32::from(entry.status), &h, &entry.body),
                RangeReply::Partial { start, end } => {
                    let (s, e) = (start as usize, end as usize);
                    let part = entry.body.get(s..=e).unwrap_or(&[]);
                    let cr = format!("bytes {start}-{end}/{len}");
                    h.push(("content-range".into(), cr.into_bytes()));
                    reply(206, &h, part)
                }
                RangeReply::Unsatisfiable => {
                    h.retain(|(k, _)| k != "content-type");
                    h.push((
                        "content-range".into(),
                        format!("bytes */{len}").into_bytes(),
                    ));
                    reply(416, &h, &[])
                }
            }
        }
    }

    /// Builds the entry for a response to `view` (headers already lower-cased).
    fn build_entry(
        &self,
        key: &CacheKey,
        view: &RequestView,
        status: u16,
        headers: &[Field],
        request_time: u64,
        now: u64,
    ) -> Entry {
        let facts = self.facts(status, headers);
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
            headers: respond::stored_headers(headers, now / 1_000_000_000),
            body: Vec::new(),
            clock: AgeClock::new(&facts, request_time, now),
            tags: respond::tags(headers, &self.cfg.tag_headers),
            upstream_host: String::new(),
        }
    }
}

/// Answers the current (effective) context locally; whether the host took the reply.
fn reply(status: u32, headers: &[Field], body: &[u8]) -> bool {
    let h: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    host::send_local_response(status, "switchyard_cache", &h, body)
}

/// A header map as fields with lower-case names.
fn lower(headers: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<Field> {
    headers
        .into_iter()
        .map(|(k, v)| (String::from_utf8_lossy(&k).to_ascii_lowercase(), v))
        .collect()
}

fn status_of(headers: &[Field]) -> u16 {
    headers
        .iter()
        .find(|(k, _)| k == ":status")
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub struct CacheRoot {
    context_id: u32,
    rt: Option<Rc<Runtime>>,
}

impl CacheRoot {
    pub fn new(context_id: u32) -> Self {
        CacheRoot {
            context_id,
            rt: None,
        }
    }

    fn run_waiters(&self, rt: &Runtime, now: u64) {
        let waiters = std::mem::take(&mut rt.state.borrow_mut().waiters);
        if waiters.is_empty() {
            return;
        }
        let now_ms = now / NS_PER_MS;
        let mut keep = Vec::new();
        for w in waiters {
            if let Some(Hit { entry, .. }) = rt.find(&w.key, &w.view) {
                let (facts, lifetime, age) = rt.lifetime_and_age(&entry, now);
                let usable = matches!(
                    serve_decision(&w.facts, &facts.cc, lifetime, age),
                    Serve::Fresh | Serve::StaleAllowed
                ) && (!w.facts.has_authorization || authorization_allows(&facts.cc));
                if usable && host::set_effective_context(w.context_id) {
                    rt.state.borrow_mut().served.insert(w.context_id);
                    if rt.serve(&w.view, &entry, now, age >= lifetime) {
                        rt.metrics.inc("coalesced");
                        continue;
                    }
                    // The host refused the reply: let the request go upstream.
                    rt.state.borrow_mut().served.remove(&w.context_id);
                    host::resume_request();
                    continue;
                }
            }
            if now_ms >= w.deadline_ms || !rt.locks().held(w.key.hash, now_ms) {
                // The leader is done without a usable entry, or we waited long enough.
                if host::set_effective_context(w.context_id) {
                    host::resume_request();
                }
            } else {
                keep.push(w);
            }
        }
        rt.state.borrow_mut().waiters.extend(keep);
        host::set_effective_context(self.context_id);
    }

    fn run_background(&self, rt: &Runtime, now: u64) {
        let queued = std::mem::take(&mut rt.state.borrow_mut().queued);
        for mut bg in queued {
            let headers = respond::refresh_headers(&bg.view, &bg.stale, &rt.cfg.host_header);
            let cluster = bg.cluster.clone();
            bg.request_time = now;
            let pairs: Vec<(&str, &[u8])> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_slice()))
                .collect();
            match host::dispatch_http_call_bytes(
                &cluster,
                &pairs,
                &[],
                rt.cfg.upstream_timeout.std(),
            ) {
                Ok(token) => {
                    rt.state.borrow_mut().in_flight.insert(token, bg);
                }
                Err(e) => {
                    log::warn!("switchyard cache: background revalidation not sent: {e:?}");
                    rt.state.borrow_mut().in_flight_keys.remove(&bg.key.hash);
                }
            }
        }
    }
}

impl Context for CacheRoot {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some(rt) = self.rt.clone() else { return };
        let Some(bg) = rt.state.borrow_mut().in_flight.remove(&token) else {
            return;
        };
        rt.state.borrow_mut().in_flight_keys.remove(&bg.key.hash);
        rt.metrics.inc("background_revalidations");
        if num_headers == 0 {
            log::warn!("switchyard cache: background revalidation failed");
            return;
        }
        let now = host::now_nanos();
        let headers = lower(host::http_call_headers());
        let status = status_of(&headers);
        if status == 304 {
            let mut fresh = bg.stale.clone();
            respond::merge_not_modified(&mut fresh.headers, &headers);
            fresh.clock = AgeClock::new(&rt.facts(304, &headers), bg.request_time, now);
            rt.metrics.inc("revalidated");
            rt.insert(&fresh, &bg.key, now);
        } else if status < 500 {
            let facts = rt.facts_with_date(status, &headers, now);
            if storable(
                &RequestFacts::from_headers(bg.view.headers()),
                &facts,
                &rt.policy,
            )
            .is_ok()
                && body_size as u64 <= rt.cfg.max_entry_bytes
            {
                let mut entry =
                    rt.build_entry(&bg.key, &bg.view, status, &headers, bg.request_time, now);
                entry.body = host::http_call_body(body_size).unwrap_or_default();
                entry.upstream_host = bg.stale.upstream_host.clone();
                rt.insert(&entry, &bg.key, now);
            }
        }
    }
}

impl RootContext for CacheRoot {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        // Not in `main!`: Envoy refuses most host calls while the module initialises.
        host::init_vm(NAME, env!("CARGO_PKG_VERSION"));
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = host::plugin_configuration();
        let mut cfg = match config::parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                log::error!("switchyard cache: invalid configuration: {e}");
                return false;
            }
        };
        // Plugin instances with different configurations never share entries.
        let prefix = format!("switchyard.cache.{:016x}.", stable_hash64(&bytes));
        // The key hash places entries in buckets: seeded per process so it cannot be aimed at.
        let fresh = switchyard_core::abi::random_u64()
            .unwrap_or_else(|_| host::now_nanos() ^ u64::from(self.context_id).rotate_left(32));
        cfg.key.seed = match switchyard_core::shared::process_seed(
            &HostStore,
            &format!("{prefix}seed"),
            fresh,
        ) {
            Ok(seed) => seed,
            Err(e) => {
                log::error!("switchyard cache: shared data unavailable: {e:?}");
                return false;
            }
        };
        let store_cfg = StoreConfig {
            prefix: prefix.clone(),
            max_bytes: cfg.max_bytes,
            slots: cfg.slots,
            eviction: cfg.eviction,
            sample: cfg.eviction_sample,
            writing_timeout_ms: 60_000,
        };
        let rt = Runtime {
            policy: Policy {
                default_ttl: cfg.default_ttl,
                heuristic_max: cfg.heuristic_max_ttl,
                store_set_cookie: cfg.store_set_cookie,
            },
            cfg,
            store_cfg,
            locks_key: format!("{prefix}locks"),
            metrics: Metrics::new(NAME),
            state: RefCell::new(VmState::default()),
            collecting: Rc::new(Cell::new(0)),
        };
        if let Err(e) = rt.store().init().and_then(|_| rt.locks().init()) {
            log::error!("switchyard cache: shared data unavailable: {e:?}");
            return false;
        }
        for c in COUNTERS {
            rt.metrics.define_counter(c);
        }
        rt.metrics.define_gauge("bytes_in_use");
        rt.metrics.define_gauge("entries");
        rt.update_gauges();
        host::set_tick_period(TICK);
        self.rt = Some(Rc::new(rt));
        true
    }

    fn on_tick(&mut self) {
        let Some(rt) = self.rt.clone() else { return };
        let now = host::now_nanos();
        self.run_background(&rt, now);
        self.run_waiters(&rt, now);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(CacheHttp {
            context_id,
            rt: self.rt.clone(),
            stage: Stage::Pass(None),
            req: None,
            collect: None,
            lock: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// What this request is doing with the cache.
enum Stage {
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

struct Request {
    view: RequestView,
    key: CacheKey,
    facts: RequestFacts,
    head: bool,
    request_time: u64,
}

/// A response body being collected for storage. Its bytes count against the VM's
/// `max_collect_bytes` until it is dropped, however the stream ends.
struct Collect {
    entry: Entry,
    budget: Rc<Cell<u64>>,
}

impl Collect {
    /// Appends a chunk if the VM's budget allows; `false` (nothing appended) if not.
    fn append(&mut self, chunk: &[u8], max: u64) -> bool {
        let n = chunk.len() as u64;
        let held = self.budget.get();
        if held.saturating_add(n) > max {
            return false;
        }
        self.budget.set(held + n);
        self.entry.body.extend_from_slice(chunk);
        true
    }
}

impl Drop for Collect {
    fn drop(&mut self) {
        let held = self.budget.get();
        self.budget
            .set(held.saturating_sub(self.entry.body.len() as u64));
    }
}

pub struct CacheHttp {
    context_id: u32,
    rt: Option<Rc<Runtime>>,
    stage: Stage,
    req: Option<Request>,
    collect: Option<Collect>,
    lock: Option<u64>,
}

impl CacheHttp {
    fn release_lock(&mut self, rt: &Runtime) {
        if let Some(h) = self.lock.take() {
            rt.locks().release(h);
        }
    }

    fn local(&mut self, status: u32, outcome: Outcome, rt: &Runtime, body: &str) -> Action {
        let cs = outcome.cache_status(&rt.cfg.cache_status_name);
        let sent = host::send_local_response(
            status,
            "switchyard_cache",
            &[
                ("cache-status", cs.as_bytes()),
                ("x-cache", outcome.x_cache().as_bytes()),
                ("content-type", b"text/plain"),
            ],
            body.as_bytes(),
        );
        if !sent {
            return Action::Continue;
        }
        self.stage = Stage::Served;
        Action::Pause
    }

    fn purge(&mut self, rt: &Runtime, view: &RequestView, p: &PurgeConfig) -> Action {
        let outcome = Outcome::Forward {
            fwd: "method",
            status: None,
            stored: false,
            detail: Some("purge"),
        };
        let token_ok = view
            .header(&p.token_header)
            .is_some_and(|t| constant_time_eq(t, p.token.as_bytes()));
        if !token_ok {
            rt.metrics.inc("purge_denied");
            return self.local(403, outcome, rt, "purge: missing or wrong token\n");
        }
        let store = rt.store();
        let split_tags = |tags: &str| -> Vec<String> {
            tags.split([',', ' '])
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect()
        };
        let by_path = p.path.as_deref() == Some(view.path());
        let (tags, prefix, key_view) = if by_path {
            // `<purge.path>?url=/x?a=1`, `?prefix=/x/` or `?tag=a,b`.
            match (
                view.query_param("tag"),
                view.query_param("prefix"),
                view.query_param("url"),
            ) {
                (Some(t), _, _) => (Some(split_tags(t)), None, None),
                (None, Some(pre), _) => (None, Some(pre.to_string()), None),
                (None, None, Some(url)) => {
                    let mut target = RequestView::new("GET", url).with_authority(view.authority());
                    for (k, v) in view.headers() {
                        target = target.with_header_bytes(k, v);
                    }
                    (None, None, Some(target))
                }
                _ => {
                    return self.local(
                        400,
                        outcome,
                        rt,
                        "purge: expected ?url=, ?prefix= or ?tag=\n",
                    );
                }
            }
        } else if let Some(t) = view.header_joined(&p.tag_header) {
            (Some(split_tags(&String::from_utf8_lossy(&t))), None, None)
        } else if let Some(pre) = view.path().strip_suffix('*') {
            (None, Some(pre.to_string()), None)
        } else {
            (None, None, Some(view.clone()))
        };
        let purged = if let Some(wanted) = tags {
            store.remove_entries_where(|e| e.tags.iter().any(|t| wanted.contains(t)))
        } else if let Some(pre) = prefix {
            // Entries of either scheme under this authority, whatever their routing.
            let origins: Vec<String> = ["http", "https"]
                .iter()
                .map(|scheme| key_origin(scheme, view.authority()))
                .collect();
            store.remove_entries_where(|e| {
                e.path.starts_with(&pre) && origins.iter().any(|o| e.key.starts_with(o))
            })
        } else if let Some(target) = key_view {
            // Every routed variant of the URL (each cluster or route stores its own entry).
            let wanted = without_routing(&rt.cfg.key.key(&target).text);
            store.remove_entries_where(|e| without_routing(&e.key) == wanted)
        } else {
            0
        };
        rt.metrics.add("purges", purged as u64);
        rt.update_gauges();
        self.local(200, outcome, rt, &format!("{{\"purged\":{purged}}}\n"))
    }

    fn lookup(&mut self, rt: &Runtime, view: RequestView, head: bool, now: u64) -> Action {
        let facts = RequestFacts::from_headers(view.headers());
        let key = rt.cfg.key.key(&view);
        let found = rt.find(&key, &view);
        let only_if_cached = facts.cc.only_if_cached;
        let req = Request {
            view,
            key,
            facts,
            head,
            request_time: now,
        };
        if let Some(Hit { slot, meta, entry }) = found {
            let (rfacts, lifetime, age) = rt.lifetime_and_age(&entry, now);
            if req.facts.has_authorization && !authorization_allows(&rfacts.cc) {
                // RFC 9111 §3.5: not for requests with credentials; the response goes by.
                self.req = Some(req);
                self.stage = Stage::Forward("request");
                rt.metrics.inc("misses");
                return Action::Continue;
            }
            let mut decision = serve_decision(&req.facts, &rfacts.cc, lifetime, age);
            // A refresh goes where the router sent the request, else to `upstream_cluster`.
            let refresh_cluster = RoutingRecord::read(&req.view, &rt.cfg.key.cluster_header)
                .cluster
                .or_else(|| rt.cfg.upstream_cluster.clone());
            if decision == Serve::StaleWhileRevalidate && refresh_cluster.is_none() {
                decision = Serve::Revalidate;
            }
            match decision {
                Serve::Fresh | Serve::StaleAllowed => {
                    rt.store().touch_seen(slot, &meta, now / NS_PER_MS);
                    if !rt.serve(&req.view, &entry, now, decision == Serve::StaleAllowed) {
                        return Action::Continue;
                    }
                    self.stage = Stage::Served;
                    return Action::Pause;
                }
                Serve::StaleWhileRevalidate => {
                    rt.store().touch_seen(slot, &meta, now / NS_PER_MS);
                    if !rt.serve(&req.view, &entry, now, true) {
                        return Action::Continue;
                    }
                    let mut st = rt.state.borrow_mut();
                    if st.in_flight_keys.insert(req.key.hash) {
                        st.queued.push(Background {
                            key: req.key.clone(),
                            cluster: refresh_cluster.unwrap_or_default(),
                            view: req.view.clone(),
                            stale: entry,
                            request_time: now,
                        });
                    }
                    self.stage = Stage::Served;
                    return Action::Pause;
                }
                Serve::Revalidate => {
                    if only_if_cached {
                        self.req = Some(req);
                        let o = Outcome::Forward {
                            fwd: "stale",
                            status: None,
                            stored: false,
                            detail: Some("only-if-cached"),
                        };
                        return self.local(504, o, rt, "not cached\n");
                    }
                    let client_conditional = req.view.header("if-none-match").is_some()
                        || req.view.header("if-modified-since").is_some();
                    let mut ours = false;
                    if !client_conditional {
                        if let Some(etag) = entry.header("etag") {
                            host::set_header(Map::RequestHeaders, "if-none-match", Some(etag));
                            ours = true;
                        }
                        if let Some(lm) = entry.header("last-modified") {
                            host::set_header(Map::RequestHeaders, "if-modified-since", Some(lm));
                            ours = true;
                        }
                    }
                    rt.metrics.inc("revalidations");
                    self.req = Some(req);
                    self.stage = Stage::Revalidate {
                        entry: Box::new(entry),
                        ours,
                    };
                    return Action::Continue;
                }
            }
        }
        if only_if_cached {
            self.req = Some(req);
            let o = Outcome::Forward {
                fwd: "miss",
                status: None,
                stored: false,
                detail: Some("only-if-cached"),
            };
            return self.local(504, o, rt, "not cached\n");
        }
        rt.metrics.inc("misses");
        let coalesce = !head && !rt.cfg.coalesce_timeout.is_zero() && !req.facts.no_cache();
        if coalesce {
            let now_ms = now / NS_PER_MS;
            let ttl = rt.cfg.coalesce_timeout.as_millis();
            match rt.locks().acquire(req.key.hash, now_ms, ttl) {
                Acquire::Leader => self.lock = Some(req.key.hash),
                Acquire::Follower => {
                    rt.state.borrow_mut().waiters.push(Waiter {
                        context_id: self.context_id,
                        key: req.key.clone(),
                        view: req.view.clone(),
                        facts: req.facts.clone(),
                        deadline_ms: now_ms + ttl,
                    });
                    self.req = Some(req);
                    self.stage = Stage::Waiting;
                    return Action::Pause;
                }
                Acquire::Unavailable => {}
            }
        }
        self.req = Some(req);
        self.stage = Stage::Forward("miss");
        Action::Continue
    }

    fn set_status_headers(&self, rt: &Runtime, outcome: &Outcome) {
        let cs = outcome.cache_status(&rt.cfg.cache_status_name);
        host::set_header(Map::ResponseHeaders, "cache-status", Some(cs.as_bytes()));
        host::set_header(
            Map::ResponseHeaders,
            "x-cache",
            Some(outcome.x_cache().as_bytes()),
        );
    }

    /// Decides whether to store the forwarded response and starts collecting its body.
    fn forward_response(
        &mut self,
        rt: &Runtime,
        fwd: &'static str,
        status: u16,
        headers: &[Field],
        now: u64,
        from_upstream: bool,
    ) {
        let Some(req) = &self.req else { return };
        let facts = rt.facts_with_date(status, headers, now);
        if req.head && from_upstream && status == 200 {
            // RFC 9111 §4.3.5: a HEAD answer updates the stored GET response it describes, and
            // invalidates it otherwise.
            if let Some(Hit { mut entry, .. }) = rt.find(&req.key, &req.view) {
                if respond::head_describes(&entry, headers) {
                    respond::merge_not_modified(&mut entry.headers, headers);
                    entry.clock = AgeClock::new(&facts, req.request_time, now);
                    rt.insert(&entry, &req.key, now);
                } else {
                    rt.store().remove_primary(req.key.hash);
                    rt.metrics.inc("invalidations");
                }
            }
        }
        let mut outcome = Outcome::Forward {
            fwd,
            status: (fwd == "stale").then_some(status),
            stored: false,
            detail: None,
        };
        let verdict = if !from_upstream {
            Err("local-reply")
        } else if req.head {
            Err("head")
        } else {
            storable(&req.facts, &facts, &rt.policy).map_err(|r| r.as_str())
        };
        let content_length = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let too_large = content_length.is_some_and(|n| n > rt.cfg.max_entry_bytes);
        let verdict = if too_large {
            verdict.and(Err("too-large"))
        } else {
            verdict
        };
        match verdict {
            Ok(()) => {
                let mut entry =
                    rt.build_entry(&req.key, &req.view, status, headers, req.request_time, now);
                entry.upstream_host =
                    host::property_text(&["upstream", "address"]).unwrap_or_default();
                self.collect = Some(Collect {
                    entry,
                    budget: rt.collecting.clone(),
                });
                if let Outcome::Forward { stored, .. } = &mut outcome {
                    *stored = content_length.is_some();
                }
            }
            Err(detail) => {
                if detail == "too-large" {
                    rt.metrics.inc("too_large");
                }
                if let Outcome::Forward { detail: d, .. } = &mut outcome {
                    *d = Some(detail);
                }
                self.release_lock(rt);
            }
        }
        self.set_status_headers(rt, &outcome);
    }

    fn finish_store(&mut self, rt: &Runtime) {
        if let (Some(c), Some(req)) = (self.collect.take(), &self.req) {
            rt.insert(&c.entry, &req.key, host::now_nanos());
        }
        self.release_lock(rt);
    }

    fn invalidate(&self, rt: &Runtime, status: u16, headers: &[Field]) {
        // RFC 9111 §4.4: only after a non-error response.
        if !(200..400).contains(&status) {
            return;
        }
        let Some(view) = self.req.as_ref().map(|r| &r.view) else {
            return;
        };
        let authority = normalise_authority(view.authority());
        let mut uris = vec![uri_hash(&authority, view.path())];
        for (k, v) in headers {
            if k == "location" || k == "content-location" {
                if let Some(p) =
                    respond::same_authority_path(&String::from_utf8_lossy(v), &authority)
                {
                    uris.push(uri_hash(&authority, &p));
                }
            }
        }
        let n = rt.store().remove_where(|s| uris.contains(&s.uri));
        rt.metrics.add("invalidations", n as u64);
        if n > 0 {
            rt.update_gauges();
        }
    }
}

impl Context for CacheHttp {}

impl HttpContext for CacheHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(rt) = self.rt.clone() else {
            return Action::Continue;
        };
        let view = host::request_view();
        let now = host::now_nanos();
        // Methods are case-sensitive (RFC 9110 §9.1): `get` is not `GET` and is not cached.
        let method = view.method().to_string();
        if let Some(p) = &rt.cfg.purge {
            if method == p.method || p.path.as_deref() == Some(view.path()) {
                return self.purge(&rt, &view, p);
            }
        }
        let bypass = |fwd: &'static str, detail: Option<&'static str>| {
            Stage::Pass(Some(Outcome::Forward {
                fwd,
                status: None,
                stored: false,
                detail,
            }))
        };
        match method.as_str() {
            "GET" | "HEAD" => {}
            "POST" | "PUT" | "PATCH" | "DELETE" => {
                self.req = Some(Request {
                    key: rt.cfg.key.key(&view),
                    facts: RequestFacts::default(),
                    view,
                    head: false,
                    request_time: now,
                });
                self.stage = Stage::Invalidate;
                rt.metrics.inc("bypass");
                return Action::Continue;
            }
            _ => {
                self.stage = bypass("method", None);
                rt.metrics.inc("bypass");
                return Action::Continue;
            }
        }
        if rt.cfg.bypass.iter().any(|m| m.matches(&view)) {
            self.stage = bypass("bypass", Some("config"));
            rt.metrics.inc("bypass");
            return Action::Continue;
        }
        self.lookup(&rt, view, method == "HEAD", now)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(rt) = self.rt.clone() else {
            return Action::Continue;
        };
        if let Stage::Waiting = self.stage {
            if rt.state.borrow_mut().served.remove(&self.context_id) {
                self.stage = Stage::Served;
            } else {
                // Resumed by the root: forwarded on its own after all.
                self.stage = Stage::Forward("miss");
            }
        }
        if let Stage::Served = self.stage {
            return Action::Continue;
        }
        let now = host::now_nanos();
        let headers = lower(host::headers(Map::ResponseHeaders));
        let status = status_of(&headers);
        // Only what an upstream answered is stored or invalidates: never a local reply of
        // Envoy (no healthy upstream, timeout) or of a filter.
        let from_upstream =
            host::property_text(&["response", "code_details"]).as_deref() == Some("via_upstream");
        match std::mem::replace(&mut self.stage, Stage::Pass(None)) {
            Stage::Pass(outcome) => {
                if let Some(o) = outcome {
                    self.set_status_headers(&rt, &o);
                }
            }
            Stage::Invalidate => {
                if from_upstream {
                    self.invalidate(&rt, status, &headers);
                }
                let o = Outcome::Forward {
                    fwd: "method",
                    status: None,
                    stored: false,
                    detail: None,
                };
                self.set_status_headers(&rt, &o);
            }
            Stage::Forward(fwd) => {
                self.forward_response(&rt, fwd, status, &headers, now, from_upstream)
            }
            Stage::Revalidate { entry, ours } => {
                let Some(req) = &self.req else {
                    return Action::Continue;
                };
                if status == 304 && ours && from_upstream {
                    let mut fresh = *entry;
                    respond::merge_not_modified(&mut fresh.headers, &headers);
                    fresh.clock = AgeClock::new(&rt.facts(304, &headers), req.request_time, now);
                    let stored = rt.insert(&fresh, &req.key, now);
                    rt.metrics.inc("revalidated");
                    let age = fresh.clock.current_age(now);
                    let o = Outcome::Forward {
                        fwd: "stale",
                        status: Some(304),
                        stored,
                        detail: None,
                    };
                    let h = respond::served_headers(&fresh, age, &o, &rt.cfg.cache_status_name);
                    if !reply(u32::from(fresh.status), &h, &fresh.body) {
                        return Action::Continue;
                    }
                    self.stage = Stage::Served;
                    return Action::Pause;
                }
                let (rfacts, lifetime, age) = rt.lifetime_and_age(&entry, now);
                if status >= 500 && stale_if_error_allows(&req.facts, &rfacts.cc, lifetime, age) {
                    let view = req.view.clone();
                    if !rt.serve(&view, &entry, now, true) {
                        return Action::Continue;
                    }
                    self.stage = Stage::Served;
                    return Action::Pause;
                }
                self.forward_response(&rt, "stale", status, &headers, now, from_upstream);
            }
            Stage::Waiting | Stage::Served => {}
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(rt) = self.rt.clone() else {
            return Action::Continue;
        };
        if self.collect.is_none() {
            return Action::Continue;
        }
        if body_size > 0 {
            let chunk = switchyard_core::abi::buffer(Buffer::ResponseBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default();
            let (too_large, over_budget) = match &mut self.collect {
                Some(c) => {
                    let appended = c.append(&chunk, rt.cfg.max_collect_bytes);
                    (
                        c.entry.body.len() as u64 > rt.cfg.max_entry_bytes,
                        !appended,
                    )
                }
                None => (false, false),
            };
            if over_budget {
                // Too many large misses in flight on this worker: this one passes uncached.
                self.collect = None;
                rt.metrics.inc("collect_budget_exceeded");
                self.release_lock(&rt);
                return Action::Continue;
            }
            if too_large {
                // Give up storing; the body keeps streaming to the client untouched.
                self.collect = None;
                rt.metrics.inc("too_large");
                self.release_lock(&rt);
                return Action::Continue;
            }
        }
        if end_of_stream {
            self.finish_store(&rt);
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        // Trailers are not stored, so a response with trailers is not stored either.
        if let Some(rt) = self.rt.clone() {
            self.collect = None;
            self.release_lock(&rt);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if let Some(rt) = self.rt.clone() {
            self.release_lock(&rt);
            let id = self.context_id;
            let mut st = rt.state.borrow_mut();
            st.waiters.retain(|w| w.context_id != id);
            st.served.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collect_budget_is_shared_per_vm_and_released_on_drop() {
        let budget = Rc::new(Cell::new(0));
        let new = || Collect {
            entry: Entry::default(),
            budget: budget.clone(),
        };
        let (mut a, mut b) = (new(), new());
        assert!(a.append(&[0; 600], 1000));
        // The second miss would take the VM past its budget: refused, nothing appended.
        assert!(!b.append(&[0; 600], 1000));
        assert!(b.entry.body.is_empty());
        assert!(b.append(&[0; 400], 1000));
        assert_eq!(budget.get(), 1000);
        drop(a);
        assert_eq!(budget.get(), 400);
        drop(b);
        assert_eq!(budget.get(), 0);
    }
}
