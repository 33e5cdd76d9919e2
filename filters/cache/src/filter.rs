//! Proxy-wasm glue, per request: reads what the plans need (`plan` for the request,
//! `response_plan` for the response), asks them, does the shared-data work they ask for through
//! the VM-wide glue (`runtime`), and applies the resulting [`effects`] (local replies, header
//! writes, stats, pauses) with `switchyard_core::host::apply`, once per callback.

use crate::collect::Collect;
use crate::effects::{self, HeadUpdate};
use crate::metrics::{Effects, Metric};
use crate::plan::{self, LookupPlan, PurgePlan, Request, RequestPlan};
use crate::response_plan::{self as rp, lower, status_of, Response, ResponsePlan, Stage};
use crate::runtime::{Runtime, Waiter, NAME, NS_PER_MS};
use crate::store::{Acquire, Hit, SeenBucket};
use crate::uncacheable;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::rc::Rc;
use switchyard_core::abi::{Buffer, Map};
use switchyard_core::host;
use switchyard_core::RequestView;

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
}

impl Context for CacheRoot {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body_size: usize, _: usize) {
        if let Some(rt) = &self.rt {
            rt.refreshed(token, headers, body_size);
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
        let Some(rt) = Runtime::configure(self.context_id) else {
            return false;
        };
        self.rt = Some(Rc::new(rt));
        true
    }

    fn on_tick(&mut self) {
        let Some(rt) = self.rt.clone() else { return };
        let now = host::now_nanos();
        rt.run_background(now);
        rt.run_waiters(self.context_id, now);
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
            rt.store().unlock(h);
        }
    }

    /// Applies a decision's effects; a local reply the host took ends this filter's part.
    fn apply(&mut self, rt: &Runtime, fx: Effects) -> Action {
        let applied = host::apply(fx, &rt.metrics);
        if applied.replied {
            self.stage = Stage::Served;
        }
        applied.action
    }

    fn purge(&mut self, rt: &Runtime, view: &RequestView) -> Action {
        let Some(p) = &rt.cfg.purge else {
            return Action::Continue;
        };
        let purge = plan::purge_plan(&rt.cfg, p, view);
        let (purged, after) = match purge {
            PurgePlan::Denied | PurgePlan::BadRequest => (0, None),
            _ => {
                let n = rt.store().remove_entries_where(|e| purge.removes(e));
                (n, rt.gauges())
            }
        };
        let fx = effects::purge(&rt.cfg.cache_status_name, &purge, purged, after);
        self.apply(rt, fx)
    }

    fn lookup(&mut self, rt: &Runtime, view: RequestView, head: bool, now: u64) -> Action {
        let req = Request::lookup(&rt.cfg, view, head, now);
        let (found, seen) = rt.find_seen(&req.key, &req.view);
        let decision = plan::lookup_plan(&rt.cfg, &req, found.as_ref().map(|h| &*h.entry), now);
        match (decision, found) {
            (
                LookupPlan::Serve {
                    reply,
                    stale,
                    refresh,
                },
                Some(hit),
            ) => {
                rt.store().touch_seen(hit.slot, &hit.meta, now / NS_PER_MS);
                // A background refresh keeps the stale entry (the reply then copies the body).
                let keep = refresh.as_ref().map(|_| Rc::clone(&hit.entry));
                let fx = effects::serve(reply, hit.entry, stale, hit.l1);
                let action = self.apply(rt, fx);
                if let (Some(cluster), Some(entry), Stage::Served) = (refresh, keep, &self.stage) {
                    rt.refresh_later(cluster, req, entry);
                }
                action
            }
            (LookupPlan::Revalidate { validators }, Some(hit)) => {
                self.req = Some(req);
                let entry = Box::new(Rc::unwrap_or_clone(hit.entry));
                let ours = !validators.is_empty();
                self.stage = Stage::Revalidate { entry, ours };
                self.apply(rt, effects::revalidate(validators))
            }
            (LookupPlan::NotCached(outcome), _) => {
                self.req = Some(req);
                self.apply(rt, effects::not_cached(&rt.cfg.cache_status_name, &outcome))
            }
            (LookupPlan::Forward { fwd, coalesce }, _) => {
                self.stage = Stage::Forward(fwd);
                let passed = coalesce
                    && (rt.uncacheable.borrow_mut())
                        .skips_coalescing(req.key.hash, now / NS_PER_MS);
                let wait = coalesce && !passed && self.coalesce(rt, &req, seen, now);
                self.req = Some(req);
                self.apply(rt, effects::miss(wait, passed))
            }
            // Serving and revalidating come only with an entry.
            (LookupPlan::Serve { .. } | LookupPlan::Revalidate { .. }, None) => Action::Continue,
        }
    }

    /// Takes the key's lock (in the bucket record the lookup read: `seen`), or queues behind
    /// the request holding it (`true`: wait).
    fn coalesce(
        &mut self,
        rt: &Runtime,
        req: &Request,
        seen: Option<SeenBucket>,
        now: u64,
    ) -> bool {
        let (now_ms, ttl) = (now / NS_PER_MS, rt.cfg.coalesce_timeout.as_millis());
        match rt.store().acquire(req.key.hash, now_ms, ttl, seen) {
            Acquire::Leader => self.lock = Some(req.key.hash),
            Acquire::Follower => {
                let (context_id, deadline_ms) = (self.context_id, now_ms + ttl);
                let waiter = Waiter {
                    context_id,
                    req: req.clone(),
                    deadline_ms,
                };
                rt.state.borrow_mut().waiters.push(waiter);
                self.stage = Stage::Waiting;
                return true;
            }
            Acquire::Unavailable => {}
        }
        false
    }

    /// [`rp::forward_plan`]: the HEAD update, then collecting the body to store.
    fn forward_response(
        &mut self,
        rt: &Runtime,
        fwd: &'static str,
        resp: &Response<'_>,
    ) -> Effects {
        let Some(req) = &self.req else {
            return Effects::new();
        };
        let plan = rp::forward_plan(&rt.cfg, req, fwd, resp);
        let mut head = None;
        if plan.head_update {
            if let Some(Hit { entry, .. }) = rt.find(&req.key, &req.view) {
                let (headers, now, stored) = (resp.headers, resp.now, Rc::unwrap_or_clone(entry));
                head = Some(
                    match rp::head_update(&rt.cfg, stored, headers, req.request_time, now) {
                        Some(fresh) => HeadUpdate::Freshened(rt.insert(&fresh, &req.key, now)),
                        None => {
                            rt.store().remove_primary(req.key.hash);
                            HeadUpdate::Invalidated
                        }
                    },
                );
            }
        }
        let fx = effects::forwarded(&rt.cfg.cache_status_name, &plan, head.as_ref());
        if !req.head {
            let stored = plan.store.is_some();
            let uncacheable = uncacheable::marks(resp.from_upstream, resp.status, stored);
            let now_ms = resp.now / NS_PER_MS;
            (rt.uncacheable.borrow_mut()).record(req.key.hash, uncacheable, stored, now_ms);
        }
        if let Some(mut entry) = plan.store {
            if plan.refreshable {
                let address = host::property_text(&["upstream", "address"]);
                entry.upstream_host = address.unwrap_or_default();
            }
            let budget = rt.collecting.clone();
            self.collect = Some(Collect { entry, budget });
        } else {
            self.release_lock(rt);
        }
        fx
    }

    /// The collected response is complete: store it.
    fn finish_store(&mut self, rt: &Runtime) -> Effects {
        let mut fx = Effects::new();
        if let (Some(c), Some(req)) = (self.collect.take(), &self.req) {
            let now = host::now_nanos();
            let inserted = match self.lock {
                // A successful insert released the lock in the same write.
                Some(_) => rt.insert_as_leader(&c.entry, &req.key, now),
                None => rt.insert(&c.entry, &req.key, now),
            };
            if inserted.is_ok() {
                self.lock = None;
            }
            effects::stored(&mut fx, &inserted);
        }
        self.release_lock(rt);
        fx
    }

    /// Stops collecting (the response passes uncached), counting why.
    fn give_up_store(&mut self, rt: &Runtime, why: Metric) -> Effects {
        self.collect = None;
        self.release_lock(rt);
        effects::counted(why)
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
        match plan::request_plan(&rt.cfg, &view) {
            RequestPlan::Purge => self.purge(&rt, &view),
            RequestPlan::Invalidate => {
                self.req = Some(Request::unsafe_method(&rt.cfg, view, now));
                self.stage = Stage::Invalidate;
                self.apply(&rt, effects::bypass())
            }
            RequestPlan::Bypass(outcome) => {
                self.stage = Stage::Pass(Some(outcome));
                self.apply(&rt, effects::bypass())
            }
            RequestPlan::Lookup { head } => self.lookup(&rt, view, head, now),
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(rt) = self.rt.clone() else {
            return Action::Continue;
        };
        if let Stage::Waiting = self.stage {
            self.stage = if rt.state.borrow_mut().served.remove(&self.context_id) {
                Stage::Served
            } else {
                // Resumed by the root: forwarded on its own after all.
                Stage::Forward("miss")
            };
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
        let resp = Response {
            status,
            headers: &headers,
            from_upstream,
            now,
        };
        let stage = std::mem::replace(&mut self.stage, Stage::Pass(None));
        let name = &rt.cfg.cache_status_name;
        let fx = match rp::response_plan(&rt.cfg, stage, self.req.as_ref(), &resp) {
            ResponsePlan::Pass(outcome) => effects::passed(name, outcome.as_ref()),
            ResponsePlan::Invalidate(uris) => {
                let removed = uris.map_or(0, |u| rt.store().remove_where(|s| u.contains(&s.uri)));
                let after = if removed > 0 { rt.gauges() } else { None };
                effects::invalidated(name, removed, after)
            }
            ResponsePlan::Forward(fwd) => self.forward_response(&rt, fwd, &resp),
            ResponsePlan::Replace(fresh) => {
                let Some(req) = &self.req else {
                    return Action::Continue;
                };
                let insert = rt.insert(&fresh, &req.key, now);
                effects::replaced(&rt.cfg, *fresh, now, &insert)
            }
            ResponsePlan::ServeStale { entry, reply } => {
                effects::serve(reply, Rc::from(entry), true, false)
            }
        };
        self.apply(&rt, fx)
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(rt) = self.rt.clone() else {
            return Action::Continue;
        };
        let Some(c) = &mut self.collect else {
            return Action::Continue;
        };
        if body_size > 0 {
            let chunk = switchyard_core::abi::buffer(Buffer::ResponseBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default();
            if !c.append(&chunk, rt.cfg.max_collect_bytes) {
                // Too many large misses in flight on this worker: this one passes uncached.
                let fx = self.give_up_store(&rt, Metric::CollectBudgetExceeded);
                return self.apply(&rt, fx);
            }
            if c.entry.body.len() as u64 > rt.cfg.max_entry_bytes {
                // Give up storing; the body keeps streaming to the client untouched.
                let fx = self.give_up_store(&rt, Metric::TooLarge);
                return self.apply(&rt, fx);
            }
        }
        if end_of_stream {
            let fx = self.finish_store(&rt);
            return self.apply(&rt, fx);
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
