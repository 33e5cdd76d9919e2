//! Proxy-wasm glue, per request: reads what the plans need (`plan` for the request,
//! `response_plan` for the response), asks them, and applies their effects through the VM-wide
//! glue (`runtime`) and `switchyard_core::host`: local replies, header writes, shared data,
//! metrics, pauses and resumes.

use crate::collect::Collect;
use crate::locks::Acquire;
use crate::plan::{self, LookupPlan, PurgePlan, Request, RequestPlan};
use crate::respond::Outcome;
use crate::response_plan::{self as rp, lower, status_of, Response, ResponsePlan, Stage};
use crate::runtime::{send, Background, Runtime, Waiter, NAME, NS_PER_MS};
use crate::store::Hit;
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
            rt.locks().release(h);
        }
    }

    /// After a local reply: pause if the host took it, else let the request go on.
    fn answered(&mut self, sent: bool) -> Action {
        if !sent {
            return Action::Continue;
        }
        self.stage = Stage::Served;
        Action::Pause
    }

    /// A plain-text local reply reporting `outcome`.
    fn local(&mut self, status: u32, outcome: Outcome, rt: &Runtime, body: &str) -> Action {
        let sent = rt.local(status, &outcome, body);
        self.answered(sent)
    }

    fn purge(&mut self, rt: &Runtime, view: &RequestView) -> Action {
        let Some(p) = &rt.cfg.purge else {
            return Action::Continue;
        };
        let outcome = plan::PURGE;
        let purged = match plan::purge_plan(&rt.cfg, p, view) {
            PurgePlan::Denied => {
                rt.metrics.inc("purge_denied");
                return self.local(403, outcome, rt, "purge: missing or wrong token\n");
            }
            PurgePlan::BadRequest => {
                let body = "purge: expected ?url=, ?prefix= or ?tag=\n";
                return self.local(400, outcome, rt, body);
            }
            purge => rt.store().remove_entries_where(|e| purge.removes(e)),
        };
        rt.metrics.add("purges", purged as u64);
        rt.update_gauges();
        self.local(200, outcome, rt, &format!("{{\"purged\":{purged}}}\n"))
    }

    fn lookup(&mut self, rt: &Runtime, view: RequestView, head: bool, now: u64) -> Action {
        let req = Request::lookup(&rt.cfg, view, head, now);
        let found = rt.find(&req.key, &req.view);
        let decision = plan::lookup_plan(&rt.cfg, &req, found.as_ref().map(|h| &h.entry), now);
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
                if !rt.serve(&hit.entry, &reply, stale) {
                    return Action::Continue;
                }
                if let Some(cluster) = refresh {
                    let mut st = rt.state.borrow_mut();
                    if st.in_flight_keys.insert(req.key.hash) {
                        let stale = hit.entry;
                        st.queued.push(Background {
                            cluster,
                            req,
                            stale,
                        });
                    }
                }
                self.answered(true)
            }
            (LookupPlan::Revalidate { validators }, Some(hit)) => {
                for (k, v) in &validators {
                    host::set_header(Map::RequestHeaders, k, Some(v));
                }
                rt.metrics.inc("revalidations");
                self.req = Some(req);
                let (entry, ours) = (Box::new(hit.entry), !validators.is_empty());
                self.stage = Stage::Revalidate { entry, ours };
                Action::Continue
            }
            (LookupPlan::NotCached(outcome), _) => {
                self.req = Some(req);
                self.local(504, outcome, rt, "not cached\n")
            }
            (LookupPlan::Forward { fwd, coalesce }, _) => {
                rt.metrics.inc("misses");
                self.stage = Stage::Forward(fwd);
                if coalesce {
                    let (now_ms, ttl) = (now / NS_PER_MS, rt.cfg.coalesce_timeout.as_millis());
                    match rt.locks().acquire(req.key.hash, now_ms, ttl) {
                        Acquire::Leader => self.lock = Some(req.key.hash),
                        Acquire::Follower => {
                            let (context_id, deadline_ms) = (self.context_id, now_ms + ttl);
                            let waiter = Waiter {
                                context_id,
                                req: req.clone(),
                                deadline_ms,
                            };
                            rt.state.borrow_mut().waiters.push(waiter);
                            self.req = Some(req);
                            self.stage = Stage::Waiting;
                            return Action::Pause;
                        }
                        Acquire::Unavailable => {}
                    }
                }
                self.req = Some(req);
                Action::Continue
            }
            // Serving and revalidating come only with an entry.
            (LookupPlan::Serve { .. } | LookupPlan::Revalidate { .. }, None) => Action::Continue,
        }
    }

    fn set_status_headers(&self, rt: &Runtime, outcome: &Outcome) {
        let cs = outcome.cache_status(&rt.cfg.cache_status_name);
        host::set_header(Map::ResponseHeaders, "cache-status", Some(cs.as_bytes()));
        let x_cache = outcome.x_cache().as_bytes();
        host::set_header(Map::ResponseHeaders, "x-cache", Some(x_cache));
    }

    /// Applies [`rp::forward_plan`]: the HEAD update, then collecting the body to store.
    fn forward_response(&mut self, rt: &Runtime, fwd: &'static str, resp: &Response<'_>) {
        let Some(req) = &self.req else { return };
        let plan = rp::forward_plan(&rt.cfg, req, fwd, resp);
        if plan.head_update {
            if let Some(Hit { entry, .. }) = rt.find(&req.key, &req.view) {
                let (headers, now) = (resp.headers, resp.now);
                match rp::head_update(&rt.cfg, entry, headers, req.request_time, now) {
                    Some(fresh) => {
                        rt.insert(&fresh, &req.key, now);
                    }
                    None => {
                        rt.store().remove_primary(req.key.hash);
                        rt.metrics.inc("invalidations");
                    }
                }
            }
        }
        if let Some(mut entry) = plan.store {
            entry.upstream_host = host::property_text(&["upstream", "address"]).unwrap_or_default();
            let budget = rt.collecting.clone();
            self.collect = Some(Collect { entry, budget });
        } else {
            if plan.too_large {
                rt.metrics.inc("too_large");
            }
            self.release_lock(rt);
        }
        self.set_status_headers(rt, &plan.outcome);
    }

    fn finish_store(&mut self, rt: &Runtime) {
        if let (Some(c), Some(req)) = (self.collect.take(), &self.req) {
            rt.insert(&c.entry, &req.key, host::now_nanos());
        }
        self.release_lock(rt);
    }

    /// Stops collecting (the response passes uncached), counting why.
    fn give_up_store(&mut self, rt: &Runtime, metric: &str) {
        self.collect = None;
        rt.metrics.inc(metric);
        self.release_lock(rt);
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
                rt.metrics.inc("bypass");
                Action::Continue
            }
            RequestPlan::Bypass(outcome) => {
                self.stage = Stage::Pass(Some(outcome));
                rt.metrics.inc("bypass");
                Action::Continue
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
        match rp::response_plan(&rt.cfg, stage, self.req.as_ref(), &resp) {
            ResponsePlan::Pass(outcome) => {
                if let Some(o) = outcome {
                    self.set_status_headers(&rt, &o);
                }
            }
            ResponsePlan::Invalidate(uris) => {
                if let Some(uris) = uris {
                    let n = rt.store().remove_where(|s| uris.contains(&s.uri));
                    rt.metrics.add("invalidations", n as u64);
                    if n > 0 {
                        rt.update_gauges();
                    }
                }
                self.set_status_headers(&rt, &rp::METHOD);
            }
            ResponsePlan::Forward(fwd) => self.forward_response(&rt, fwd, &resp),
            ResponsePlan::Replace(fresh) => {
                let Some(req) = &self.req else {
                    return Action::Continue;
                };
                let stored = rt.insert(&fresh, &req.key, now);
                rt.metrics.inc("revalidated");
                let sent = send(&rp::replaced_reply(&rt.cfg, &fresh, now, stored), &fresh);
                return self.answered(sent);
            }
            ResponsePlan::ServeStale { entry, reply } => {
                let sent = rt.serve(&entry, &reply, true);
                return self.answered(sent);
            }
        }
        Action::Continue
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
                self.give_up_store(&rt, "collect_budget_exceeded");
                return Action::Continue;
            }
            if c.entry.body.len() as u64 > rt.cfg.max_entry_bytes {
                // Give up storing; the body keeps streaming to the client untouched.
                self.give_up_store(&rt, "too_large");
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
