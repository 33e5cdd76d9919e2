//! proxy-wasm glue: read the configuration, create the shared-data buckets, decide each request
//! and apply the decision. Local rules decide synchronously; a request that a `scope: global`
//! rule applies to (and that the local tiers admitted) pauses until the rate limit service
//! answered (or a lease or a call in flight on this worker serves it), and is resumed with
//! `host::resume_request` from `on_grpc_call_response`.

use crate::bucket::Bucket;
use crate::config;
use crate::engine::{Limiter, Outcome, Verdict};
use crate::global::{self, GlobalResult, Inflight, LeaseKey, Leases};
use crate::response;
use crate::rls_proto;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::cell::RefCell;
use std::rc::Rc;
use switchyard_core::abi::Map;
use switchyard_core::host::{self, HostStore};
use switchyard_core::metrics::Metrics;
use switchyard_core::shared::ensure_key;

const COUNTERS: [&str; 6] = [
    "allowed",
    "limited",
    "shadow_limited",
    "failure_allowed",
    "failure_denied",
    "cas_retries",
];

/// Counters of `scope: global` rules.
const GLOBAL_COUNTERS: [&str; 7] = [
    "global_calls",
    "global_over_limit",
    "global_failure_allowed",
    "global_failure_denied",
    "lease_hits",
    "global_coalesced",
    "global_denied_remembered",
];

/// Largest answer read from the service.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A request waiting for the answer to a call another request of this worker dispatched.
struct Waiter {
    context_id: u32,
    state: Rc<RefCell<ReqState>>,
}

/// One worker's global-limit state: leases and calls in flight.
#[derive(Default)]
struct Worker {
    leases: Leases,
    inflight: Inflight<Waiter>,
}

pub struct RateLimitRoot {
    limiter: Option<Rc<Limiter>>,
    metrics: Rc<Metrics>,
    worker: Rc<RefCell<Worker>>,
}

impl Default for RateLimitRoot {
    fn default() -> Self {
        RateLimitRoot {
            limiter: None,
            metrics: Rc::new(Metrics::new("ratelimit")),
            worker: Rc::new(RefCell::new(Worker::default())),
        }
    }
}

impl Context for RateLimitRoot {}

impl RootContext for RateLimitRoot {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        host::init_vm("ratelimit", env!("CARGO_PKG_VERSION"));
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let settings = match config::parse(&host::plugin_configuration()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("switchyard ratelimit: invalid configuration: {e}");
                return false;
            }
        };
        // State is per plugin instance; keys survive reconfiguration, and entries of rules
        // whose limits changed are ignored (see `Rule::tag`).
        let namespace = host::property_text(&["plugin_name"])
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".to_string());
        let limiter = Limiter::new(settings, &namespace);
        let empty = Bucket::default().encode();
        for i in 0..limiter.bucket_count() {
            if let Err(e) = ensure_key(&HostStore, &limiter.bucket_key(i), &empty) {
                log::error!("switchyard ratelimit: cannot create shared data bucket {i}: {e:?}");
                return false;
            }
        }
        for rule in &limiter.settings.rules {
            for c in COUNTERS {
                self.metrics.define_counter(&format!("{}.{c}", rule.name));
            }
            if rule.global.is_some() {
                for c in GLOBAL_COUNTERS {
                    self.metrics.define_counter(&format!("{}.{c}", rule.name));
                }
            }
        }
        self.metrics.define_gauge("slots_in_use");
        for c in ["evicted_idle", "evicted_active", "rollback_failures"] {
            self.metrics.define_counter(c);
        }
        log::info!(
            "switchyard ratelimit: {} rules, {} keys in {} buckets, mode {:?}",
            limiter.settings.rules.len(),
            limiter.settings.max_keys,
            limiter.bucket_count(),
            limiter.settings.mode
        );
        self.limiter = Some(Rc::new(limiter));
        // Leases and calls in flight are keyed by rule index: start afresh with new rules.
        self.worker = Rc::new(RefCell::new(Worker::default()));
        true
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(RateLimitHttp {
            context_id,
            limiter: self.limiter.clone(),
            metrics: self.metrics.clone(),
            worker: self.worker.clone(),
            state: Rc::new(RefCell::new(ReqState::default())),
            calls: Vec::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// What one request is waiting for and what its response gets; shared with the context that
/// answers it (itself, or the dispatcher of the call it joined).
#[derive(Default)]
struct ReqState {
    /// The local decision (it admitted the request).
    local: Option<Outcome>,
    /// Global answers still awaited.
    outstanding: usize,
    results: Vec<(usize, GlobalResult)>,
    /// Headers to set on the upstream's response.
    response_headers: Vec<(String, String)>,
    /// `response_headers_to_add` of the service, appended to the upstream's response.
    service_headers: Vec<(String, Vec<u8>)>,
    replied_locally: bool,
    /// `<method> <path>` for the shadow-mode log line (shadow mode only).
    request_line: String,
}

struct RateLimitHttp {
    context_id: u32,
    limiter: Option<Rc<Limiter>>,
    metrics: Rc<Metrics>,
    worker: Rc<RefCell<Worker>>,
    state: Rc<RefCell<ReqState>>,
    /// Calls this request dispatched and not answered yet: token, key, hits asked for.
    calls: Vec<(u32, LeaseKey, u32)>,
}

impl Context for RateLimitHttp {
    fn on_grpc_call_response(&mut self, token: u32, status_code: u32, response_size: usize) {
        let Some(limiter) = self.limiter.clone() else {
            return;
        };
        let Some(pos) = self.calls.iter().position(|(t, _, _)| *t == token) else {
            return;
        };
        let (_, key, hits) = self.calls.swap_remove(pos);
        let message = if status_code == 0 {
            host::grpc_call_message(response_size.min(MAX_ANSWER_BYTES))
        } else {
            None
        };
        let result = global::interpret(status_code, message.as_deref());
        let rule = key.0;
        let name = limiter
            .settings
            .rules
            .get(rule)
            .map(|r| r.name.clone())
            .unwrap_or_default();
        if let GlobalResult::Failure { reason } = &result {
            log::debug!(
                "switchyard ratelimit: rate limit service call for rule {name} failed: {reason}"
            );
        }
        let now = host::now_nanos();
        let waiters = {
            let mut worker = self.worker.borrow_mut();
            let waiters = worker
                .inflight
                .finish(token)
                .map(|c| c.waiters)
                .unwrap_or_default();
            if matches!(result, GlobalResult::Ok { .. }) {
                let spare = global::leftover(hits, waiters.len());
                worker.leases.grant(key.clone(), spare, now, &result);
            }
            worker.leases.deny(key.clone(), now, &result);
            waiters
        };
        let served = 1 + waiters.len() as u32;
        let unspent_after = |i: u32| hits.saturating_sub(i.min(served));
        // The waiters first (each in its own context), then this request.
        for (i, w) in waiters.into_iter().enumerate() {
            let r = global::share(&result, unspent_after(i as u32 + 2));
            let ready = deliver(&w.state, rule, r);
            if ready && host::set_effective_context(w.context_id) {
                finish_paused(&limiter, &self.metrics, &w.state);
            }
        }
        if served > 1 {
            host::set_effective_context(self.context_id);
        }
        if deliver(&self.state, rule, global::share(&result, unspent_after(1))) {
            finish_paused(&limiter, &self.metrics, &self.state);
        }
    }
}

/// Records a rule's result for a request; true when it was the last one awaited.
fn deliver(state: &RefCell<ReqState>, rule: usize, result: GlobalResult) -> bool {
    let mut st = state.borrow_mut();
    if st.outstanding == 0 {
        return false;
    }
    st.results.push((rule, result));
    st.outstanding -= 1;
    st.outstanding == 0
}

/// Decides a paused request whose last answer arrived (the effective context is the
/// request's): a local reply, or resume it.
fn finish_paused(limiter: &Limiter, metrics: &Metrics, state: &RefCell<ReqState>) {
    if !conclude(limiter, metrics, state) {
        host::resume_request();
    }
}

/// Combines the local decision with the global results and applies it to the current
/// (effective) request: sends the rejection, or stores the headers for the response.
/// Returns whether the request was answered locally.
fn conclude(limiter: &Limiter, metrics: &Metrics, state: &RefCell<ReqState>) -> bool {
    let settings = &limiter.settings;
    let (local, results) = {
        let mut st = state.borrow_mut();
        (st.local.take(), std::mem::take(&mut st.results))
    };
    let Some(local) = local else {
        return false;
    };
    let combined = global::combine(settings, &local, &results);
    for (rule, c) in &combined.counts {
        let Some(r) = settings.rules.get(*rule) else {
            continue;
        };
        for (name, n) in [
            ("allowed", c.allowed),
            ("global_over_limit", c.over_limit),
            ("global_failure_allowed", c.failure_allowed),
            ("global_failure_denied", c.failure_denied),
            ("limited", c.limited),
            ("shadow_limited", c.shadow_limited),
        ] {
            if n > 0 {
                metrics.add(&format!("{}.{name}", r.name), n);
            }
        }
    }
    let outcome = &combined.outcome;
    if let Some(reject) = response::rejection(settings, outcome) {
        let mut headers: Vec<(&str, &[u8])> = reject
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .collect();
        for (k, v) in &combined.service_headers {
            if !reject.headers.iter().any(|(ours, _)| ours == k) {
                headers.push((k.as_str(), v.as_slice()));
            }
        }
        if host::send_local_response(
            reject.status,
            "switchyard_ratelimit",
            &headers,
            reject.body.as_bytes(),
        ) {
            state.borrow_mut().replied_locally = true;
            return true;
        }
    }
    let mut st = state.borrow_mut();
    if let Some(shadow) = response::shadow_header(settings, outcome) {
        log::info!(
            "switchyard ratelimit: shadow mode would reject {}: {shadow}",
            st.request_line
        );
        st.response_headers
            .push(("x-ratelimit-shadow".to_string(), shadow));
    }
    st.response_headers
        .extend(response::rate_limit_headers(settings, outcome));
    // Our own headers win over the service's of the same name (its IETF headers, say).
    let ours: Vec<String> = st.response_headers.iter().map(|(k, _)| k.clone()).collect();
    st.service_headers = combined
        .service_headers
        .into_iter()
        .filter(|(k, _)| !ours.contains(k))
        .collect();
    false
}

impl Drop for RateLimitHttp {
    /// The request ended. Requests waiting on a call it dispatched would never hear back
    /// (Envoy cancels a context's calls with it): they get the rule's failure mode now.
    fn drop(&mut self) {
        let Some(limiter) = self.limiter.clone() else {
            return;
        };
        let me = self.context_id;
        let orphans: Vec<(usize, Vec<Waiter>)> = {
            let Ok(mut worker) = self.worker.try_borrow_mut() else {
                return;
            };
            worker.inflight.remove_waiters(|w| w.context_id == me);
            self.calls
                .iter()
                .filter_map(|(t, key, _)| worker.inflight.finish(*t).map(|c| (key.0, c.waiters)))
                .collect()
        };
        for (rule, waiters) in orphans {
            for w in waiters {
                let failure = GlobalResult::Failure {
                    reason: "the request that sent the call ended first".to_string(),
                };
                if deliver(&w.state, rule, failure) && host::set_effective_context(w.context_id) {
                    finish_paused(&limiter, &self.metrics, &w.state);
                }
            }
        }
    }
}

impl RateLimitHttp {
    fn record(&self, limiter: &Limiter, outcome: &Outcome) {
        for (rule, c) in limiter.settings.rules.iter().zip(&outcome.counts) {
            let pairs = [
                ("allowed", c.allowed),
                ("limited", c.limited),
                ("shadow_limited", c.shadow_limited),
                ("failure_allowed", c.failure_allowed),
                ("failure_denied", c.failure_denied),
                ("cas_retries", c.cas_retries),
            ];
            for (name, n) in pairs {
                if n > 0 {
                    self.metrics.add(&format!("{}.{name}", rule.name), n);
                }
            }
        }
        if outcome.slots_delta != 0 {
            self.metrics.add_gauge("slots_in_use", outcome.slots_delta);
        }
        for (name, n) in [
            ("evicted_idle", outcome.evicted_idle),
            ("evicted_active", outcome.evicted_active),
            ("rollback_failures", outcome.rollback_failures),
        ] {
            if n > 0 {
                self.metrics.add(name, n);
            }
        }
    }

    /// Starts the global part for the rules in `asks`: from a lease, by joining a call in
    /// flight, or with a call of its own. Returns the results known now and the number of
    /// answers to wait for.
    fn ask_globals(
        &mut self,
        limiter: &Limiter,
        asks: Vec<global::GlobalAsk>,
        now: u64,
    ) -> (Vec<(usize, GlobalResult)>, usize) {
        let mut results = Vec::new();
        let mut outstanding = 0;
        for ask in asks {
            let Some(rule) = limiter.settings.rules.get(ask.rule) else {
                continue;
            };
            let Some(spec) = rule.global.as_ref() else {
                continue;
            };
            if let Some(r) = self.worker.borrow_mut().leases.denied(&ask.key, now) {
                self.metrics
                    .inc(&format!("{}.global_denied_remembered", rule.name));
                results.push((ask.rule, r));
                continue;
            }
            if spec.lease > 1 {
                let mut worker = self.worker.borrow_mut();
                if let Some(r) = worker.leases.take(&ask.key, now) {
                    self.metrics.inc(&format!("{}.lease_hits", rule.name));
                    results.push((ask.rule, r));
                    continue;
                }
                let waiter = Waiter {
                    context_id: self.context_id,
                    state: self.state.clone(),
                };
                if worker.inflight.join(&ask.key, waiter).is_ok() {
                    self.metrics.inc(&format!("{}.global_coalesced", rule.name));
                    outstanding += 1;
                    continue;
                }
            }
            let message = global::request_message(spec, &ask);
            match host::dispatch_grpc_call(
                &spec.cluster,
                rls_proto::SERVICE,
                rls_proto::METHOD,
                &[],
                &message,
                std::time::Duration::from_nanos(spec.timeout_ns),
            ) {
                Ok(token) => {
                    self.metrics.inc(&format!("{}.global_calls", rule.name));
                    self.worker
                        .borrow_mut()
                        .inflight
                        .start(token, ask.key.clone(), spec.lease);
                    self.calls.push((token, ask.key, spec.lease));
                    outstanding += 1;
                }
                Err(e) => {
                    log::debug!(
                        "switchyard ratelimit: cannot call the rate limit service {} for rule {}: {e:?}",
                        spec.cluster,
                        rule.name
                    );
                    results.push((
                        ask.rule,
                        GlobalResult::Failure {
                            reason: format!("dispatch failed: {e:?}"),
                        },
                    ));
                }
            }
        }
        (results, outstanding)
    }
}

impl HttpContext for RateLimitHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(limiter) = self.limiter.clone() else {
            return Action::Continue;
        };
        let req = host::request_view();
        let now = host::now_nanos();
        let outcome = limiter.decide(&HostStore, &req, now);
        self.record(&limiter, &outcome);
        let settings = &limiter.settings;
        // Local first: a request the local tiers reject never leaves the proxy.
        if let Some(reject) = response::rejection(settings, &outcome) {
            if let Verdict::FailureDeny { rule } = outcome.verdict {
                log::warn!(
                    "switchyard ratelimit: shared state unavailable for rule {}; denying (failure_mode deny)",
                    settings.rules.get(rule).map(|r| r.name.as_str()).unwrap_or("")
                );
            }
            if host::send_local_text(
                reject.status,
                "switchyard_ratelimit",
                &reject.headers,
                reject.body.as_bytes(),
            ) {
                self.state.borrow_mut().replied_locally = true;
                return Action::Pause;
            }
            return Action::Continue;
        }
        let asks = global::asks(settings, &req);
        let (results, outstanding) = if asks.is_empty() {
            (Vec::new(), 0)
        } else {
            self.ask_globals(&limiter, asks, now)
        };
        {
            let mut st = self.state.borrow_mut();
            st.local = Some(outcome);
            st.results = results;
            st.outstanding = outstanding;
            if settings.mode == crate::config::Mode::Shadow {
                st.request_line = format!("{} {}", req.method(), req.path());
            }
        }
        if outstanding > 0 {
            return Action::Pause;
        }
        if conclude(&limiter, &self.metrics, &self.state) {
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let st = self.state.borrow();
        if st.replied_locally {
            return Action::Continue;
        }
        for (name, value) in &st.response_headers {
            host::set_header(Map::ResponseHeaders, name, Some(value.as_bytes()));
        }
        for (name, value) in &st.service_headers {
            host::add_header(Map::ResponseHeaders, name, value);
        }
        Action::Continue
    }
}
