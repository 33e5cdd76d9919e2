//! The `scope: global` side of the glue: calls to the rate limit service, the requests that wait
//! for them (coalesced on this worker), leases, and what happens to waiters when the request
//! that sent a call ends first.

use super::{conclude, RateLimitHttp, ReqState};
use crate::engine::Limiter;
use crate::global::{self, GlobalResult, Inflight, Leases};
use crate::metrics::{Effects, Event, Metrics};
use crate::rls_proto;
use std::cell::RefCell;
use std::rc::Rc;
use switchyard_core::host;

/// Largest answer read from the service.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A request waiting for the answer to a call another request of this worker dispatched.
pub(super) struct Waiter {
    context_id: u32,
    state: Rc<RefCell<ReqState>>,
}

/// One worker's global-limit state: leases and calls in flight.
#[derive(Default)]
pub(super) struct Worker {
    leases: Leases,
    inflight: Inflight<Waiter>,
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
    if !conclude(limiter, metrics, state, Effects::new()).replied {
        host::resume_request();
    }
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
    /// The rate limit service answered call `token`: the result goes to every request that
    /// waits for it (this one last), each decided in its own context.
    pub(super) fn answered(&mut self, token: u32, status_code: u32, response_size: usize) {
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

    /// Starts the global part for the rules in `asks`: from a lease, by joining a call in
    /// flight, or with a call of its own. Returns the results known now and the number of
    /// answers to wait for.
    pub(super) fn ask_globals(
        &mut self,
        limiter: &Limiter,
        asks: Vec<global::GlobalAsk>,
        now: u64,
        effects: &mut Effects,
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
                effects.count_of(ask.rule, Event::GlobalDeniedRemembered, 1);
                results.push((ask.rule, r));
                continue;
            }
            if spec.lease > 1 {
                let mut worker = self.worker.borrow_mut();
                if let Some(r) = worker.leases.take(&ask.key, now) {
                    effects.count_of(ask.rule, Event::LeaseHits, 1);
                    results.push((ask.rule, r));
                    continue;
                }
                let waiter = Waiter {
                    context_id: self.context_id,
                    state: self.state.clone(),
                };
                if worker.inflight.join(&ask.key, waiter).is_ok() {
                    effects.count_of(ask.rule, Event::GlobalCoalesced, 1);
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
                    effects.count_of(ask.rule, Event::GlobalCalls, 1);
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
