//! VM-wide glue: the state shared by the root and HTTP contexts, and the shared-data work the
//! plans (`plan`, `response_plan`) ask for: store reads and writes, coalescing locks and
//! waiters, background refreshes. What that work leads to (local replies, stats) is built by
//! [`crate::effects`] and applied with `switchyard_core::host::apply`.

use crate::config::{self, Config};
use crate::effects::{self, Gauges};
use crate::entry::Entry;
use crate::key::{variant_hash, CacheKey};
use crate::l1::{self, L1};
use crate::metrics::{Effects, Metric, Metrics};
use crate::plan::{self, Request};
use crate::respond;
use crate::response_plan::{self as rp, lower, status_of, Refresh};
use crate::rfc::Field;
use crate::store::{Hit, InsertError, Inserted, SeenBucket, Store, StoreConfig};
use crate::uncacheable::Uncacheable;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;
use switchyard_core::hash::stable_hash64;
use switchyard_core::host::{self, HostStore};
use switchyard_core::RequestView;

pub(crate) const NAME: &str = "cache";
const TICK: Duration = Duration::from_millis(20);
pub(crate) use switchyard_core::duration::NS_PER_MS;

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
    pub(crate) stale: Rc<Entry>,
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

/// Per-VM state shared by the root and HTTP contexts, and the shared-data work the plans ask
/// for.
pub(crate) struct Runtime {
    pub(crate) cfg: Config,
    store_cfg: StoreConfig,
    pub(crate) metrics: Metrics,
    pub(crate) state: RefCell<VmState>,
    /// Body bytes this VM holds for misses being collected (bounded by `max_collect_bytes`).
    pub(crate) collecting: Rc<Cell<u64>>,
    /// This VM's copies of hot entries (`cfg.l1`).
    l1: RefCell<L1>,
    /// Keys whose misses skip coalescing for a while (`cfg.uncacheable_ttl`).
    pub(crate) uncacheable: RefCell<Uncacheable>,
}

impl Runtime {
    pub(crate) fn store(&self) -> Store<'_, HostStore> {
        Store::new(&HostStore, &self.store_cfg)
    }

    /// The stored entry for this request: same full key and matching `Vary` values, through
    /// this VM's L1.
    pub(crate) fn find(&self, key: &CacheKey, view: &RequestView) -> Option<Hit> {
        self.find_seen(key, view).0
    }

    /// [`Runtime::find`] with the bucket record it read, for the miss's coalescing lock.
    pub(crate) fn find_seen(
        &self,
        key: &CacheKey,
        view: &RequestView,
    ) -> (Option<Hit>, Option<SeenBucket>) {
        let mut l1 = self.l1.try_borrow_mut().ok();
        l1::find(&self.store(), l1.as_deref_mut(), key, view)
    }

    /// Reads every bucket: only at configure time and after purges / invalidations. `None` if
    /// the byte counter cannot be read.
    pub(crate) fn gauges(&self) -> Option<Gauges> {
        let store = self.store();
        let bytes_in_use = store.used()?;
        let entries = store.entries() as u64;
        Some(Gauges {
            bytes_in_use,
            entries,
        })
    }

    /// Stores an entry for `key` (its stats: [`effects::stored`]).
    pub(crate) fn insert(
        &self,
        entry: &Entry,
        key: &CacheKey,
        now: u64,
    ) -> Result<Inserted, InsertError> {
        self.insert_with(self.store(), entry, key, now)
    }

    /// [`Runtime::insert`] by the key's coalescing leader: success also releases its lock.
    pub(crate) fn insert_as_leader(
        &self,
        entry: &Entry,
        key: &CacheKey,
        now: u64,
    ) -> Result<Inserted, InsertError> {
        self.insert_with(self.store().releasing_lock(), entry, key, now)
    }

    fn insert_with(
        &self,
        store: Store<'_, HostStore>,
        entry: &Entry,
        key: &CacheKey,
        now: u64,
    ) -> Result<Inserted, InsertError> {
        let variant = variant_hash(&entry.vary);
        let at = now / NS_PER_MS;
        let r = store.insert(entry, key.hash, variant, key.uri_hash, at, now ^ key.hash);
        if let Err(e) = &r {
            if *e != InsertError::TooLarge {
                log::debug!("switchyard cache: not stored: {e:?}");
            }
        }
        r
    }

    /// Queues a stale-while-revalidate refresh of `stale` for `req` in `cluster`, unless one
    /// for the key is already on its way.
    pub(crate) fn refresh_later(&self, cluster: String, req: Request, stale: Rc<Entry>) {
        let mut st = self.state.borrow_mut();
        if st.in_flight_keys.insert(req.key.hash) {
            st.queued.push(Background {
                cluster,
                req,
                stale,
            });
        }
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
        let store_cfg = cfg.store_config(&prefix);
        if let Err(e) = Store::new(&HostStore, &store_cfg).init() {
            log::error!("switchyard cache: shared data unavailable: {e:?}");
            return None;
        }
        let l1 = RefCell::new(L1::new(cfg.l1));
        let uncacheable = RefCell::new(Uncacheable::new(cfg.uncacheable_ttl.as_millis()));
        // Defines every stat (shown as 0 before its first event).
        let rt = Runtime {
            store_cfg,
            cfg,
            metrics: Metrics::new(NAME),
            state: RefCell::new(VmState::default()),
            collecting: Rc::new(Cell::new(0)),
            l1,
            uncacheable,
        };
        let mut fx = Effects::new();
        effects::gauges(&mut fx, rt.gauges());
        host::apply(fx, &rt.metrics);
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
            if let Some(Hit { entry, l1, .. }) = self.find(&w.req.key, &w.req.view) {
                let (view, facts) = (&w.req.view, &w.req.facts);
                if let Some((reply, stale)) =
                    plan::coalesced_reply(&self.cfg, view, facts, &entry, now)
                {
                    if host::set_effective_context(w.context_id) {
                        self.state.borrow_mut().served.insert(w.context_id);
                        let served = effects::serve(reply, entry, stale, l1);
                        if host::apply(served, &self.metrics).replied {
                            host::apply(effects::counted(Metric::Coalesced), &self.metrics);
                            continue;
                        }
                        // The host refused the reply: let the request go upstream.
                        self.state.borrow_mut().served.remove(&w.context_id);
                        host::resume_request();
                        continue;
                    }
                }
            }
            if now_ms >= w.deadline_ms || !self.store().lock_held(w.req.key.hash, now_ms) {
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
        if num_headers == 0 {
            log::warn!("switchyard cache: background revalidation failed");
            host::apply(effects::refreshed(false, None), &self.metrics);
            return;
        }
        let now = host::now_nanos();
        let headers = lower(host::http_call_headers());
        let status = status_of(&headers);
        let size = body_size as u64;
        let fx = match rp::refresh_plan(&self.cfg, &bg.req, &bg.stale, status, &headers, size, now)
        {
            Refresh::Replace(fresh) => {
                let insert = self.insert(&fresh, &bg.req.key, now);
                effects::refreshed(true, Some(&insert))
            }
            Refresh::Store(mut entry) => {
                entry.body = host::http_call_body(body_size).unwrap_or_default();
                let insert = self.insert(&entry, &bg.req.key, now);
                effects::refreshed(false, Some(&insert))
            }
            Refresh::Keep => effects::refreshed(false, None),
        };
        host::apply(fx, &self.metrics);
    }
}

fn pairs(headers: &[Field]) -> Vec<(&str, &[u8])> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect()
}
