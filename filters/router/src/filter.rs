//! Thin proxy-wasm glue: build the request view, ask the table, plan the effects, apply them.

use crate::config::parse_router_config;
use crate::metrics::subject;
use crate::plan::{
    mirror_effects, plan_request, plan_response, MirrorOutcome, PendingMirror, Shown,
};
use crate::runtime::{Fetcher, InForce, Plugin};
use crate::table::Matched;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::rc::Rc;
use std::time::Duration as StdDuration;
use switchyard_core::abi::Map;
use switchyard_core::host;

pub use crate::plan::{EXPLAIN_HEADER, VERSION_HEADER};

/// Longest tick: bounds how late a worker notices a due fetch.
const MAX_TICK: StdDuration = StdDuration::from_secs(1);

pub struct RouterRoot {
    context_id: u32,
    plugin: Option<Rc<Plugin>>,
    fetcher: Fetcher,
}

impl RouterRoot {
    pub fn new(context_id: u32) -> Self {
        RouterRoot {
            context_id,
            plugin: None,
            fetcher: Fetcher::default(),
        }
    }
}

impl Context for RouterRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if let Some(plugin) = self.plugin.clone() {
            self.fetcher.finish(&plugin, token_id, body_size);
        }
    }
}

impl RootContext for RouterRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        host::init_vm("router", env!("CARGO_PKG_VERSION"));
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = host::plugin_configuration();
        let config = match parse_router_config(&bytes) {
            Ok(c) => c,
            Err(e) => {
                log::error!("switchyard router: invalid configuration: {e}");
                return false;
            }
        };
        let tick = config
            .reload
            .as_ref()
            .map(|r| r.interval.std().min(MAX_TICK));
        let plugin = Plugin::new(config, self.context_id);
        self.plugin = Some(plugin.clone());
        if let Some(t) = tick {
            // The first fetch waits for the first tick: during configuration Envoy's cluster
            // manager may not be ready, and a call dispatched then can stay unanswered.
            host::set_tick_period(t);
        }
        log::info!(
            "switchyard router: configured with {} routes",
            plugin.current().table.routes().len()
        );
        true
    }

    fn on_tick(&mut self) {
        if let Some(plugin) = self.plugin.clone() {
            plugin.refresh();
            self.fetcher.start(&plugin);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let plugin = self.plugin.clone()?;
        Some(Box::new(RouterHttp {
            context_id,
            plugin,
            decided: None,
            forwarded: false,
            mirror: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// What the request phase decided, kept for the later phases.
struct Decided {
    /// The table the request was decided with (kept across reloads).
    in_force: Rc<InForce>,
    matched: Matched,
    shown: Shown,
}

struct RouterHttp {
    context_id: u32,
    plugin: Rc<Plugin>,
    decided: Option<Decided>,
    forwarded: bool,
    mirror: Option<PendingMirror>,
}

impl RouterHttp {
    fn send_mirror(&self, m: PendingMirror) {
        let Some(d) = &self.decided else { return };
        let headers: Vec<(&str, &[u8])> = m
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        // Dispatched as the root context: Envoy cancels a stream context's calls when the
        // request ends, and a mirror must outlive a fast original.
        host::set_effective_context(self.plugin.root_context_id);
        let sent = host::dispatch_http_call_bytes(
            &m.plan.cluster,
            &headers,
            &m.body,
            m.plan.timeout.std(),
        );
        host::set_effective_context(self.context_id);
        let outcome = match sent {
            Ok(_) => MirrorOutcome::Sent,
            Err(e) => {
                log::warn!(
                    "switchyard router: mirror to cluster {:?} failed: {e:?}",
                    m.plan.cluster
                );
                MirrorOutcome::Failed
            }
        };
        let subject = subject(&d.in_force.table, d.matched);
        d.in_force.apply(mirror_effects(outcome, subject));
    }
}

impl Context for RouterHttp {}

impl HttpContext for RouterHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.plugin.refresh();
        let in_force = self.plugin.current();
        let req = host::request_view();
        let plugin = self.plugin.clone();
        let mut rng = || plugin.random();
        let config = &self.plugin.config;
        let mut decision = in_force.table.decide(&req, &mut rng, config.explain);
        let matched = decision.matched;
        let shown = Shown::new(
            decision.explain.take(),
            in_force.version,
            config.version_header,
        );
        let plan = plan_request(&in_force.table, decision, &shown, &config.cluster_header);
        let applied = in_force.apply(plan.effects);
        self.forwarded = plan.forwarded;
        self.decided = Some(Decided {
            in_force,
            matched,
            shown,
        });
        if let Some(mirror) = plan.mirror {
            // Copied from the edited request: the rewritten path and header operations included.
            let pending = PendingMirror::new(
                mirror,
                host::headers(Map::RequestHeaders),
                &self.plugin.config.cluster_header,
            );
            if end_of_stream {
                self.send_mirror(pending);
            } else {
                self.mirror = Some(pending);
            }
        }
        applied.action
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if let Some(mut m) = self.mirror.take() {
            // The original streams on untouched; the copy keeps what it has seen so far.
            if !m.push(&host::request_body(body_size)) {
                if let Some(d) = &self.decided {
                    d.in_force
                        .apply(mirror_effects(MirrorOutcome::Skipped, None));
                }
                return Action::Continue;
            }
            if end_of_stream {
                self.send_mirror(m);
            } else {
                self.mirror = Some(m);
            }
        }
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if let Some(m) = self.mirror.take() {
            self.send_mirror(m);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if !self.forwarded {
            return Action::Continue;
        }
        let Some(d) = &self.decided else {
            return Action::Continue;
        };
        d.in_force
            .apply(plan_response(&d.in_force.table, d.matched, &d.shown));
        Action::Continue
    }
}
