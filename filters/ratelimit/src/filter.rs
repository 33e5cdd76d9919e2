//! proxy-wasm glue: read the configuration, create the shared-data buckets, decide each request
//! synchronously (no pause) and apply the decision.

use crate::bucket::Bucket;
use crate::config;
use crate::engine::{Limiter, Outcome, Verdict};
use crate::response;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
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

pub struct RateLimitRoot {
    limiter: Option<Rc<Limiter>>,
    metrics: Rc<Metrics>,
}

impl Default for RateLimitRoot {
    fn default() -> Self {
        RateLimitRoot {
            limiter: None,
            metrics: Rc::new(Metrics::new("ratelimit")),
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
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(RateLimitHttp {
            limiter: self.limiter.clone(),
            metrics: self.metrics.clone(),
            response_headers: Vec::new(),
            replied_locally: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct RateLimitHttp {
    limiter: Option<Rc<Limiter>>,
    metrics: Rc<Metrics>,
    /// Headers to add to the upstream's response.
    response_headers: Vec<(String, String)>,
    replied_locally: bool,
}

impl Context for RateLimitHttp {}

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
}

impl HttpContext for RateLimitHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(limiter) = self.limiter.clone() else {
            return Action::Continue;
        };
        let req = host::request_view();
        let outcome = limiter.decide(&HostStore, &req, host::now_nanos());
        self.record(&limiter, &outcome);
        let settings = &limiter.settings;
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
                self.replied_locally = true;
                return Action::Pause;
            }
            return Action::Continue;
        }
        if let Some(shadow) = response::shadow_header(settings, &outcome) {
            log::info!(
                "switchyard ratelimit: shadow mode would reject {} {}: {shadow}",
                req.method(),
                req.path()
            );
            self.response_headers
                .push(("x-ratelimit-shadow".to_string(), shadow));
        }
        self.response_headers
            .extend(response::rate_limit_headers(settings, &outcome));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.replied_locally {
            return Action::Continue;
        }
        for (name, value) in &self.response_headers {
            host::set_header(Map::ResponseHeaders, name, Some(value.as_bytes()));
        }
        Action::Continue
    }
}
