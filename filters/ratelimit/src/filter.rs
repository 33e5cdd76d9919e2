//! proxy-wasm glue: read the configuration, create the shared-data buckets, decide each request
//! and apply the decision. Local rules decide synchronously; a request that a `scope: global`
//! rule applies to (and that the local tiers admitted) pauses until the rate limit service
//! answered (or a lease or a call in flight on this worker serves it), and is resumed with
//! `host::resume_request` from `on_grpc_call_response` (the calls are in `filter/calls.rs`).

use crate::bucket::Bucket;
use crate::config;
use crate::engine::{Limiter, Outcome, Verdict};
use crate::global::{self, GlobalResult, LeaseKey};
use crate::metrics::{Effects, Metrics, GLOBAL_EVENTS, RULE_EVENTS};
use crate::response;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::cell::RefCell;
use std::rc::Rc;
use switchyard_core::host::{self, HostStore};
use switchyard_core::shared::ensure_key;
use switchyard_core::HeaderEdit;

mod calls;
use calls::Worker;

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
            if let Err(e) = ensure_key(&HostStore, limiter.bucket_key(i), &empty) {
                log::error!("switchyard ratelimit: cannot create shared data bucket {i}: {e:?}");
                return false;
            }
        }
        let rules = &limiter.settings.rules;
        self.metrics
            .set_subjects(rules.iter().map(|r| r.name.clone()), &RULE_EVENTS);
        for (i, _) in rules.iter().enumerate().filter(|(_, r)| r.global.is_some()) {
            self.metrics.define_for(i, &GLOBAL_EVENTS);
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
    /// Edits of the upstream's response: our headers, then the service's
    /// `response_headers_to_add`.
    on_response: Vec<HeaderEdit>,
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
        self.answered(token, status_code, response_size);
    }
}

/// Combines the local decision with the global results and applies it, with `effects` (counts
/// so far), to the current (effective) request: the rejection now, or the headers kept for the
/// response.
fn conclude(
    limiter: &Limiter,
    metrics: &Metrics,
    state: &RefCell<ReqState>,
    mut effects: Effects,
) -> host::Applied {
    let settings = &limiter.settings;
    let (local, results) = {
        let mut st = state.borrow_mut();
        (st.local.take(), std::mem::take(&mut st.results))
    };
    let Some(local) = local else {
        return host::apply(effects, metrics);
    };
    let combined = global::combine(settings, &local, &results);
    response::count_global(&combined.counts, &mut effects);
    let decision = response::decision(
        settings,
        &combined.outcome,
        &combined.service_headers,
        effects,
    );
    let applied = host::apply(decision.effects, metrics);
    let mut st = state.borrow_mut();
    if applied.replied {
        st.replied_locally = true;
        return applied;
    }
    if settings.mode == crate::config::Mode::Shadow {
        if let Some(shadow) = response::shadow_header(settings, &combined.outcome) {
            log::info!(
                "switchyard ratelimit: shadow mode would reject {}: {shadow}",
                st.request_line
            );
        }
    }
    st.on_response = decision.on_response;
    applied
}

impl HttpContext for RateLimitHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(limiter) = self.limiter.clone() else {
            return Action::Continue;
        };
        let req = host::request_view();
        let now = host::now_nanos();
        let outcome = limiter.decide(&HostStore, &req, now);
        let mut effects = Effects::new();
        response::count_local(&outcome, &mut effects);
        let settings = &limiter.settings;
        // Local first: a request the local tiers reject never leaves the proxy.
        if !matches!(
            outcome.verdict,
            Verdict::Allow | Verdict::ShadowReject { .. }
        ) {
            if let Verdict::FailureDeny { rule } = outcome.verdict {
                log::warn!(
                    "switchyard ratelimit: shared state unavailable for rule {}; denying (failure_mode deny)",
                    settings.rules.get(rule).map(|r| r.name.as_str()).unwrap_or("")
                );
            }
            self.state.borrow_mut().local = Some(outcome);
            return conclude(&limiter, &self.metrics, &self.state, effects).action;
        }
        let asks = global::asks(settings, &req);
        let (results, outstanding) = if asks.is_empty() {
            (Vec::new(), 0)
        } else {
            self.ask_globals(&limiter, asks, now, &mut effects)
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
            return host::apply(effects.pause(), &self.metrics).action;
        }
        conclude(&limiter, &self.metrics, &self.state, effects).action
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let mut st = self.state.borrow_mut();
        if st.replied_locally {
            return Action::Continue;
        }
        let effects = Effects {
            response: std::mem::take(&mut st.on_response),
            ..Effects::new()
        };
        host::apply(effects, &self.metrics).action
    }
}
