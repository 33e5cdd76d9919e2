//! VM-wide glue: the state shared by the root and HTTP contexts, and the effects the plans
//! (`plan`, `response_plan`) ask for, applied through `switchyard_core::host`: store reads and
//! writes, coalescing locks and waiters, background refreshes, metrics, local replies.

use crate::config::{self, Config};
use crate::entry::Entry;
use crate::key::{variant_hash, CacheKey};
use crate::locks::Locks;
use crate::plan::{self, Reply, Request};
use crate::respond::{self, Outcome};
use crate::response_plan::{self as rp, lower, status_of, Refresh};
use crate::rfc::Field;
use crate::store::{Hit, InsertError, Store, StoreConfig};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;
use switchyard_core::hash::stable_hash64;
use switchyard_core::host::{self, HostStore};
use switchyard_core::metrics::Metrics;
use switchyard_core::RequestView;

pub(crate) const NAME: &str = "cache";
const TICK: Duration = Duration::from_millis(20);
const LOCK_CAPACITY: usize = 256;
pub(crate) use switchyard_core::duration::NS_PER_MS;

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
pub(crate) struct Waiter {
    pub(crate) context_id: u32,
    pub(crate) req: Request,
    pub(crate) deadline_ms: u64,
}

/// A stale-while-revalidate refresh to run in the background.
pub(crate) struct Background {
    /// The routed cluster (routing record), else `upstream_cluster`.
    pub(crate) cluster: String,
    /// The request it repeats (`request_time`: when the refresh is sent).
    pub(crate) req: Request,
    pub(crate) stale: Entry,
}

#[derive(Default)]
pub(crate) struct VmState {
    pub(crate) waiters: Vec<Waiter>,
    /// Waiting contexts the root answered from the cache (their local reply passes through
    /// this filter and must be left alone).
    pub(crate) served: HashSet<u32>,
    pub(crate) queued: Vec<Background>,
    in_flight: HashMap<u32, Background>,
    pub(crate) in_flight_keys: HashSet<u64>,
}

/// Per-VM state shared by the root and HTTP contexts, and the effects the plans ask for.
pub(crate) struct Runtime {
    pub(crate) cfg: Config,
    store_cfg: StoreConfig,
    locks_key: String,
    pub(crate) metrics: Metrics,
    pub(crate) state: RefCell<VmState>,
    /// Body bytes this VM holds for misses being collected (bounded by `max_collect_bytes`).
    pub(crate) collecting: Rc<Cell<u64>>,
}

impl Runtime {
    pub(crate) fn store(&self) -> Store<'_, HostStore> {
        Store::new(&HostStore, &self.store_cfg)
    }

    pub(crate) fn locks(&self) -> Locks<'_, HostStore> {
        Locks {
            shared: &HostStore,
            key: self.locks_key.clone(),
            capacity: LOCK_CAPACITY,
        }
    }

    /// The stored entry for this request: same full key and matching `Vary` values.
    pub(crate) fn find(&self, key: &CacheKey, view: &RequestView) -> Option<Hit> {
        let hits = self.store().find(key.hash);
        hits.into_iter()
            .find(|h| plan::entry_matches(&h.entry, key, view))
    }

    /// Reads every bucket: only at configure time and after purges / invalidations.
    pub(crate) fn update_gauges(&self) {
        let store = self.store();
        if let Some(used) = store.used() {
            self.metrics.set_gauge("bytes_in_use", used);
            self.metrics.set_gauge("entries", store.entries() as u64);
        }
    }

    /// Stores an entry for `key`, returning whether it was stored.
    pub(crate) fn insert(&self, entry: &Entry, key: &CacheKey, now: u64) -> bool {
        let variant = variant_hash(&entry.vary);
        let at = now / NS_PER_MS;
        match self
            .store()
            .insert(entry, key.hash, variant, key.uri_hash, at, now ^ key.hash)
        {
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

    /// Answers the current (effective) context with `reply` from `entry`, counting a hit or a
    /// stale serve. Returns whether the host took the reply.
    pub(crate) fn serve(&self, entry: &Entry, reply: &Reply, stale: bool) -> bool {
        self.metrics.inc(if stale { "stale" } else { "hits" });
        send(reply, entry)
    }

    /// A plain-text local reply reporting `outcome`; whether the host took it.
    pub(crate) fn local(&self, status: u32, outcome: &Outcome, body: &str) -> bool {
        let cs = outcome.cache_status(&self.cfg.cache_status_name);
        let headers: [(&str, &[u8]); 3] = [
            ("cache-status", cs.as_bytes()),
            ("x-cache", outcome.x_cache().as_bytes()),
            ("content-type", b"text/plain"),
        ];
        host::send_local_response(status, "switchyard_cache", &headers, body.as_bytes())
    }

    /// Reads and checks the plugin configuration, prepares shared data, defines metrics and
    /// starts the tick. `None` (logged) if the plugin must not run.
    pub(crate) fn configure(root_context_id: u32) -> Option<Runtime> {
        let bytes = host::plugin_configuration();
        let mut cfg = match config::parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                log::error!("switchyard cache: invalid configuration: {e}");
                return None;
            }
        };
        // Plugin instances with different configurations never share entries.
        let prefix = format!("switchyard.cache.{:016x}.", stable_hash64(&bytes));
        // The key hash places entries in buckets: seeded per process so it cannot be aimed at.
        let fresh = switchyard_core::abi::random_u64()
            .unwrap_or_else(|_| host::now_nanos() ^ u64::from(root_context_id).rotate_left(32));
        let seed_key = format!("{prefix}seed");
        cfg.key.seed = match switchyard_core::shared::process_seed(&HostStore, &seed_key, fresh) {
            Ok(seed) => seed,
            Err(e) => {
                log::error!("switchyard cache: shared data unavailable: {e:?}");
                return None;
            }
        };
        let rt = Runtime {
            store_cfg: cfg.store_config(&prefix),
            cfg,
            locks_key: format!("{prefix}locks"),
            metrics: Metrics::new(NAME),
            state: RefCell::new(VmState::default()),
            collecting: Rc::new(Cell::new(0)),
        };
        if let Err(e) = rt.store().init().and_then(|_| rt.locks().init()) {
            log::error!("switchyard cache: shared data unavailable: {e:?}");
            return None;
        }
        for c in COUNTERS {
            rt.metrics.define_counter(c);
        }
        rt.metrics.define_gauge("bytes_in_use");
        rt.metrics.define_gauge("entries");
        rt.update_gauges();
        host::set_tick_period(TICK);
        Some(rt)
    }

    /// Answers the waiters whose key now has a usable entry, resumes those whose leader is done
    /// or whose time is up, then returns to the root context.
    pub(crate) fn run_waiters(&self, root_context_id: u32, now: u64) {
        let waiters = std::mem::take(&mut self.state.borrow_mut().waiters);
        if waiters.is_empty() {
            return;
        }
        let now_ms = now / NS_PER_MS;
        let mut keep = Vec::new();
        for w in waiters {
            if let Some(Hit { entry, .. }) = self.find(&w.req.key, &w.req.view) {
                let (view, facts) = (&w.req.view, &w.req.facts);
                if let Some((reply, stale)) =
                    plan::coalesced_reply(&self.cfg, view, facts, &entry, now)
                {
                    if host::set_effective_context(w.context_id) {
                        self.state.borrow_mut().served.insert(w.context_id);
                        if self.serve(&entry, &reply, stale) {
                            self.metrics.inc("coalesced");
                            continue;
                        }
                        // The host refused the reply: let the request go upstream.
                        self.state.borrow_mut().served.remove(&w.context_id);
                        host::resume_request();
                        continue;
                    }
                }
            }
            if now_ms >= w.deadline_ms || !self.locks().held(w.req.key.hash, now_ms) {
                // The leader is done without a usable entry, or we waited long enough.
                if host::set_effective_context(w.context_id) {
                    host::resume_request();
                }
            } else {
                keep.push(w);
            }
        }
        self.state.borrow_mut().waiters.extend(keep);
        host::set_effective_context(root_context_id);
    }

    /// Sends the queued stale-while-revalidate refreshes.
    pub(crate) fn run_background(&self, now: u64) {
        let queued = std::mem::take(&mut self.state.borrow_mut().queued);
        for mut bg in queued {
            let headers = respond::refresh_headers(&bg.req.view, &bg.stale, &self.cfg.host_header);
            bg.req.request_time = now;
            let timeout = self.cfg.upstream_timeout.std();
            match host::dispatch_http_call_bytes(&bg.cluster, &pairs(&headers), &[], timeout) {
                Ok(token) => {
                    self.state.borrow_mut().in_flight.insert(token, bg);
                }
                Err(e) => {
                    log::warn!("switchyard cache: background revalidation not sent: {e:?}");
                    let mut st = self.state.borrow_mut();
                    st.in_flight_keys.remove(&bg.req.key.hash);
                }
            }
        }
    }

    /// Applies a background refresh's answer ([`rp::refresh_plan`]).
    pub(crate) fn refreshed(&self, token: u32, num_headers: usize, body_size: usize) {
        let Some(bg) = self.state.borrow_mut().in_flight.remove(&token) else {
            return;
        };
        let key = bg.req.key.hash;
        self.state.borrow_mut().in_flight_keys.remove(&key);
        self.metrics.inc("background_revalidations");
        if num_headers == 0 {
            log::warn!("switchyard cache: background revalidation failed");
            return;
        }
        let now = host::now_nanos();
        let headers = lower(host::http_call_headers());
        let status = status_of(&headers);
        let size = body_size as u64;
        match rp::refresh_plan(&self.cfg, &bg.req, &bg.stale, status, &headers, size, now) {
            Refresh::Replace(fresh) => {
                self.metrics.inc("revalidated");
                self.insert(&fresh, &bg.req.key, now);
            }
            Refresh::Store(mut entry) => {
                entry.body = host::http_call_body(body_size).unwrap_or_default();
                self.insert(&entry, &bg.req.key, now);
            }
            Refresh::Keep => {}
        }
    }
}

fn pairs(headers: &[Field]) -> Vec<(&str, &[u8])> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect()
}

/// Answers the current (effective) context locally; whether the host took the reply.
pub(crate) fn send(reply: &Reply, entry: &Entry) -> bool {
    let body = reply.body.of(&entry.body);
    host::send_local_response(
        reply.status,
        "switchyard_cache",
        &pairs(&reply.headers),
        body,
    )
}
