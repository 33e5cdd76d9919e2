//! proxy-wasm glue of the suite: one root context and one HTTP context per request, each
//! holding the configured stages' own contexts and handing every host callback to them in
//! chain order (the response phase in reverse, as Envoy runs encoder filters).
//!
//! What makes the stages behave as the separate chain does:
//! - a stage that pauses the request stops the stages after it; when it asks to resume
//!   (`host::resume_request`, deferred by `switchyard_core::stages`), the suite runs the
//!   remaining stages first and resumes the stream only if none of them paused or replied;
//! - a local reply ends the request-header phase, as it ends Envoy's filter iteration;
//! - callout answers and ticks go to the stage that asked for them.
//!
//! `filter/pipeline.rs` holds one request's stages and runs them.

use crate::config::{self, Stage};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;
use switchyard_core::duration::NS_PER_MS;
use switchyard_core::{host, stages};

mod pipeline;
use pipeline::{run_resumes, Pipeline, PIPELINES};

fn stage_root(stage: Stage, context_id: u32) -> Box<dyn RootContext> {
    match stage {
        Stage::RateLimit => Box::<switchyard_ratelimit::filter::RateLimitRoot>::default(),
        Stage::Router => Box::new(switchyard_router::filter::RouterRoot::new(context_id)),
        Stage::Cache => Box::new(switchyard_cache::filter::CacheRoot::new(context_id)),
        Stage::Hashring => Box::<switchyard_hashring::filter::HashringRoot>::default(),
    }
}

struct RootStage {
    stage: Stage,
    root: Box<dyn RootContext>,
    tick: Option<Duration>,
    next_tick_ms: u64,
}

pub struct SuiteRoot {
    context_id: u32,
    stages: Vec<RootStage>,
    /// Root callout tokens → the stage that sent them.
    tokens: HashMap<u32, usize>,
    host_tick: Option<Duration>,
}

impl SuiteRoot {
    pub fn new(context_id: u32) -> Self {
        SuiteRoot {
            context_id,
            stages: Vec::new(),
            tokens: HashMap::new(),
            host_tick: None,
        }
    }

    /// Records what stage `i` asked of the host while it ran: callouts and a tick period.
    fn adopt(&mut self, i: usize) {
        for token in stages::take_dispatched() {
            self.tokens.insert(token, i);
        }
        if let Some(period) = stages::take_tick() {
            if let Some(s) = self.stages.get_mut(i) {
                s.tick = Some(period);
            }
            self.update_host_tick();
        }
    }

    /// The host ticks at the shortest period any stage asked for.
    fn update_host_tick(&mut self) {
        let shortest = self.stages.iter().filter_map(|s| s.tick).min();
        if shortest != self.host_tick {
            if let Some(p) = shortest {
                host::set_tick_period_now(p);
            }
            self.host_tick = shortest;
        }
    }

    /// Runs `f` on stage `i`'s root as the root context, then adopts its requests and runs
    /// any resumes it asked for.
    fn with_stage(&mut self, i: usize, f: impl FnOnce(&mut dyn RootContext)) {
        stages::enter(self.context_id);
        if let Some(s) = self.stages.get_mut(i) {
            f(s.root.as_mut());
        }
        self.adopt(i);
        run_resumes();
        host::set_effective_context(self.context_id);
    }
}

impl Context for SuiteRoot {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body: usize, trailers: usize) {
        if let Some(i) = self.tokens.remove(&token) {
            self.with_stage(i, |r| {
                r.on_http_call_response(token, headers, body, trailers)
            });
        }
    }

    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        if let Some(i) = self.tokens.remove(&token) {
            self.with_stage(i, |r| r.on_grpc_call_response(token, status, size));
        }
    }

    fn on_done(&mut self) -> bool {
        for i in 0..self.stages.len() {
            self.with_stage(i, |r| {
                r.on_done();
            });
        }
        true
    }
}

impl RootContext for SuiteRoot {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        stages::enable();
        host::init_vm("suite", env!("CARGO_PKG_VERSION"));
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let suite = match config::parse(&host::plugin_configuration()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("switchyard suite: invalid configuration: {e}");
                return false;
            }
        };
        self.stages.clear();
        self.tokens.clear();
        for (stage, json) in suite.stages {
            let i = self.stages.len();
            self.stages.push(RootStage {
                stage,
                root: stage_root(stage, self.context_id),
                tick: None,
                next_tick_ms: 0,
            });
            let mut ok = false;
            self.with_stage(i, |r| {
                r.on_vm_start(0);
                let size = json.len();
                ok = stages::with_config(json, || r.on_configure(size));
            });
            if !ok {
                log::error!(
                    "switchyard suite: stage {} rejected its configuration",
                    stage.name()
                );
                return false;
            }
        }
        // The stages' `on_vm_start` named themselves in the panic hook; the VM is the suite's.
        host::init_vm("suite", env!("CARGO_PKG_VERSION"));
        let names: Vec<&str> = self.stages.iter().map(|s| s.stage.name()).collect();
        log::info!("switchyard suite: stages {}", names.join(" → "));
        true
    }

    fn on_tick(&mut self) {
        stages::enter(self.context_id);
        let now_ms = host::now_nanos() / NS_PER_MS;
        for i in 0..self.stages.len() {
            let due = match self.stages.get_mut(i) {
                Some(s) => match s.tick {
                    Some(p) if now_ms >= s.next_tick_ms => {
                        s.next_tick_ms = now_ms + u64::try_from(p.as_millis()).unwrap_or(u64::MAX);
                        true
                    }
                    _ => false,
                },
                None => false,
            };
            if due {
                self.with_stage(i, |r| r.on_tick());
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let stages = self
            .stages
            .iter()
            .filter_map(|s| s.root.create_http_context(context_id))
            .collect();
        let p = Rc::new(RefCell::new(Pipeline {
            context_id,
            stages,
            tokens: HashMap::new(),
            paused_at: None,
            headers_args: (0, false),
        }));
        PIPELINES.with(|m| m.borrow_mut().insert(context_id, Rc::downgrade(&p)));
        Some(Box::new(SuiteHttp { context_id, p }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct SuiteHttp {
    context_id: u32,
    p: Rc<RefCell<Pipeline>>,
}

impl SuiteHttp {
    fn run<R>(&self, f: impl FnOnce(&mut Pipeline) -> R) -> R {
        let r = f(&mut self.p.borrow_mut());
        run_resumes();
        r
    }
}

impl Context for SuiteHttp {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body: usize, trailers: usize) {
        self.run(|p| {
            p.answer(token, |s| {
                s.on_http_call_response(token, headers, body, trailers)
            })
        });
    }

    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        self.run(|p| p.answer(token, |s| s.on_grpc_call_response(token, status, size)));
    }

    fn on_done(&mut self) -> bool {
        self.run(|p| {
            stages::enter(p.context_id);
            for s in p.stages.iter_mut() {
                s.on_done();
            }
        });
        true
    }
}

impl Drop for SuiteHttp {
    fn drop(&mut self) {
        PIPELINES.with(|m| m.borrow_mut().remove(&self.context_id));
        stages::forget(self.context_id);
    }
}

impl HttpContext for SuiteHttp {
    fn on_http_request_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        self.run(|p| {
            stages::enter(p.context_id);
            p.headers_args = (num_headers, end_of_stream);
            p.request_headers_from(0)
        })
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.run(|p| {
            let order = p.request_side();
            p.each(order, |s| s.on_http_request_body(body_size, end_of_stream))
        })
    }

    fn on_http_request_trailers(&mut self, num_trailers: usize) -> Action {
        self.run(|p| {
            let order = p.request_side();
            p.each(order, |s| s.on_http_request_trailers(num_trailers))
        })
    }

    fn on_http_response_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        self.run(|p| {
            let order = (0..p.stages.len()).rev();
            p.each(order, |s| {
                s.on_http_response_headers(num_headers, end_of_stream)
            })
        })
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.run(|p| {
            let order = (0..p.stages.len()).rev();
            p.each(order, |s| s.on_http_response_body(body_size, end_of_stream))
        })
    }

    fn on_http_response_trailers(&mut self, num_trailers: usize) -> Action {
        self.run(|p| {
            let order = (0..p.stages.len()).rev();
            p.each(order, |s| s.on_http_response_trailers(num_trailers))
        })
    }

    fn on_log(&mut self) {
        self.run(|p| {
            stages::enter(p.context_id);
            for s in p.stages.iter_mut() {
                s.on_log();
            }
        });
    }
}
