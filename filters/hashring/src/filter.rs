//! proxy-wasm glue: builds the table at configure time, reads each request's facts, asks the
//! pure plans (`crate::plan` for the host choice, `crate::outcome` for the end of the stream),
//! carries out what is not an effect (shared-data CAS, the ORIGINAL_DST filter state) and hands
//! each callback's [`Effects`] (header edits, counters) to `host::apply` once. The `hosts_from`
//! fetch glue is in `fetch`.

mod fetch;
mod runtime;

use crate::config::Config;
use crate::metrics::{Effects, Metric};
use crate::outcome::{self, Held, UpstreamFacts};
use crate::output::{set_filter_state_args, ORIGINAL_DST_KEY};
use crate::plan::{self, HostSet, Verdict};
use proxy_wasm::traits::{HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
pub use runtime::Runtime;
use std::cell::Cell;
use std::rc::Rc;
use switchyard_core::abi::{self, Map};
use switchyard_core::hash::stable_hash64;
use switchyard_core::host;
use switchyard_core::routing::RoutingRecord;

#[derive(Default)]
pub struct HashringRoot {
    runtime: Option<Rc<Runtime>>,
    /// Round-robin position for requests without a key (per worker).
    round_robin: Rc<Cell<u64>>,
    /// A `hosts_from` fetch of this worker is in flight.
    fetching: bool,
}

impl RootContext for HashringRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        // Not in `main!`: Envoy refuses most host calls while the module initialises.
        host::init_vm("hashring", env!("CARGO_PKG_VERSION"));
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = host::plugin_configuration();
        let config = match Config::parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                log::error!("switchyard hashring: invalid configuration: {e}");
                return false;
            }
        };
        // State is shared by every worker (and every listener) running this configuration.
        let scope = format!("{:016x}", stable_hash64(&bytes));
        let mut fx = Effects::new();
        let runtime = Runtime::start(config, &scope, &mut fx);
        host::apply(fx, &runtime.metrics);
        if let Some(hf) = &runtime.config.hosts_from {
            // Check for host-set changes regularly.
            let tick = hf.interval.std().min(std::time::Duration::from_secs(1));
            host::set_tick_period(tick);
        }
        log::info!(
            "switchyard hashring: {} over {} hosts",
            if runtime.config.p2c.is_some() {
                "p2c_ewma"
            } else {
                runtime.config.algorithm.name()
            },
            runtime.current().hosts.len()
        );
        self.runtime = Some(Rc::new(runtime));
        true
    }

    fn on_tick(&mut self) {
        let Some(rt) = self.runtime.clone() else {
            return;
        };
        let mut fx = Effects::new();
        rt.sync_host_set(&mut fx);
        if let Some(hf) = &rt.config.hosts_from {
            self.maybe_fetch(&rt, hf, &mut fx);
        }
        host::apply(fx, &rt.metrics);
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(HashringHttp {
            runtime: self.runtime.clone(),
            set: None,
            round_robin: self.round_robin.clone(),
            held: Held::default(),
            upstream_status: None,
            responded_at: None,
            explain: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

pub struct HashringHttp {
    runtime: Option<Rc<Runtime>>,
    /// The host set this request was decided on.
    set: Option<Rc<HostSet>>,
    round_robin: Rc<Cell<u64>>,
    /// What the host choice holds: the listed hosts and the in-flight counts to release
    /// exactly once in `on_log`.
    held: Held,
    /// The response status as it reached this filter from the upstream.
    upstream_status: Option<u64>,
    /// When the response headers arrived (for the latency sample).
    responded_at: Option<u64>,
    explain: Option<String>,
}

impl proxy_wasm::traits::Context for HashringHttp {}

impl HttpContext for HashringHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(rt) = self.runtime.clone() else {
            return Action::Continue;
        };
        let view = host::request_view();
        if rt.config.clusters.is_some() {
            let record = RoutingRecord::read(&view, &rt.config.cluster_header);
            let verdict = plan::verdict(&rt.config, record.cluster.as_deref());
            if matches!(verdict, Verdict::OtherCluster { .. }) {
                return host::apply(verdict.effects(), &rt.metrics).action;
            }
        }
        let now = host::now_nanos();
        let set = rt.current();
        self.set = Some(set.clone());
        let mut fx = Effects::new();
        let healthy = rt.healthy(&set, now, &mut fx);
        let key = rt.config.hash_key.first_present(&view);
        let round_robin = self.round_robin.get();
        let key = key.as_ref().map(|(i, v)| (*i, v.as_str()));
        let keying = plan::keying(&rt.config, key, round_robin, now);
        if keying.advances_round_robin() {
            self.round_robin.set(round_robin.wrapping_add(1));
        }
        let plan = rt.plan(&set, &keying, &healthy, now, &mut fx);
        fx.append(plan.effects);
        if let Some(chosen) = &plan.original_dst {
            // Filter state, not a header: a foreign function, outside the effects.
            let args = set_filter_state_args(ORIGINAL_DST_KEY, chosen);
            if let Err(e) = abi::call_foreign_function("set_envoy_filter_state", &args) {
                log::warn!("switchyard hashring: set_envoy_filter_state failed: {e:?}");
                fx.count(Metric::OutputErrors);
            }
        }
        if let Some(address) = &plan.hold_in_flight {
            *rt.in_flight
                .borrow_mut()
                .entry(address.clone())
                .or_insert(0) += 1;
        }
        self.held = Held {
            listed: plan.selection.hosts,
            load: plan.hold_load,
            in_flight: plan.hold_in_flight.map(|a| (a, now)),
        };
        self.explain = plan.explain;
        host::apply(fx, &rt.metrics).action
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // The status as the upstream sent it: later in the response path the cache may replace
        // a 5xx with a stored response (stale-if-error), and `response.code` in `on_log` would
        // then hide the host's failure.
        // Only passive health and p2c latency read the outcome (`on_log`).
        let outcome_read = self
            .runtime
            .as_ref()
            .is_some_and(|rt| rt.config.health.is_some() || rt.config.p2c.is_some());
        if outcome_read && self.set.is_some() && self.upstream_status.is_none() {
            self.upstream_status = host::header(Map::ResponseHeaders, ":status")
                .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok());
            if self.held.in_flight.is_some() {
                self.responded_at = Some(host::now_nanos());
            }
        }
        if let (Some(rt), Some(explain)) = (&self.runtime, &self.explain) {
            return host::apply(plan::explain_effects(&rt.config, explain), &rt.metrics).action;
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let (Some(rt), Some(set)) = (self.runtime.clone(), self.set.clone()) else {
            return;
        };
        let held = std::mem::take(&mut self.held);
        let p2c = held.in_flight.is_some() && rt.config.p2c.is_some();
        let facts = if rt.config.health.is_some() || p2c {
            self.upstream_facts(rt.config.health.is_some(), p2c)
        } else {
            UpstreamFacts::default()
        };
        let plan = outcome::plan_outcome(&rt.config, &set.hosts, &held, &facts);
        let needs_clock =
            plan.release_load.is_some() || !plan.health.is_empty() || plan.latency.is_some();
        let now = if needs_clock { host::now_nanos() } else { 0 };
        host::apply(rt.settle(&set, plan, now), &rt.metrics);
    }
}

impl HashringHttp {
    /// What Envoy reports about the upstream exchange. Nothing beyond `upstream.address` when
    /// the request never reached an upstream (a local reply).
    fn upstream_facts(&self, attempts: bool, retry_after: bool) -> UpstreamFacts {
        let Some(served) = host::property_text(&["upstream", "address"]).filter(|s| !s.is_empty())
        else {
            return UpstreamFacts::default();
        };
        let status = self
            .upstream_status
            .or_else(|| host::property_u64(&["response", "code"]))
            .unwrap_or(0);
        UpstreamFacts {
            served: Some(served),
            status,
            flags: host::property_u64(&["response", "flags"]).unwrap_or(0),
            attempts: if attempts {
                host::property_u64(&["upstream", "request_attempt_count"]).unwrap_or(1)
            } else {
                1
            },
            retry_after: retry_after
                && (status == 429 || status == 503)
                && host::header(Map::ResponseHeaders, "retry-after").is_some(),
            responded_at: self.responded_at,
        }
    }
}
