//! proxy-wasm glue of the probe (see the crate docs for what each header does).

use crate::{decode_counter, parse, render_property, split_assignment, ProbeConfig};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use switchyard_core::abi::{self, Map};
use switchyard_core::host;
use switchyard_core::metrics::{Stat, StatWrite};

switchyard_core::metric_enum! {
    /// The probe's stats (`switchyard.probe.<name>`).
    enum Metric {
        Cost = "cost",
        Requests = "requests",
        Logged = "logged",
        Ticks = "ticks",
        QueueReceived = "queue_received",
        Paused = "paused": Gauge,
        BodyBytes = "body_bytes": Histogram,
    }
}

type Metrics = switchyard_core::Metrics<Metric>;
use switchyard_core::shared::{cas_update, CasOutcome, Update};

const NAME: &str = "probe";
const QUEUE_KEY: &str = "switchyard.probe.queue";
const TICKS_KEY: &str = "switchyard.probe.ticks";
const CAS_RETRIES: u32 = 8;
const COST_KEY: &str = "switchyard.probe.cost";

/// A request header's value as text (obs-text bytes become U+FFFD: the probe only compares and
/// echoes these values).
fn request_header(name: &str) -> Option<String> {
    host::header(Map::RequestHeaders, name).map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// `x-probe-trap: 1`: the probe panics on purpose, which aborts its VM. It exists to test VM
/// failure recovery (the plugin's `failure_policy`, e.g. `FAIL_RELOAD`) in a real Envoy.
#[allow(clippy::panic)]
fn trap_on_demand() {
    if request_header("x-probe-trap").is_some_and(|v| v.trim() == "1") {
        panic!("x-probe-trap: 1 (deliberate trap to test VM failure recovery)");
    }
}

struct ProbeRoot {
    config: Option<Rc<ProbeConfig>>,
    queue_id: Option<u32>,
    /// Streams paused by `x-probe-pause`, resumed by the next tick.
    paused: Rc<RefCell<Vec<u32>>>,
    metrics: Rc<Metrics>,
}

impl ProbeRoot {
    fn new() -> Self {
        ProbeRoot {
            config: None,
            queue_id: None,
            paused: Rc::new(RefCell::new(Vec::new())),
            metrics: Rc::new(Metrics::new(NAME)),
        }
    }

    fn probing(&self) -> bool {
        self.config.as_ref().is_some_and(|c| c.mode == "probe")
    }
}

// Only the wasm module registers the entry point: natively several filter rlibs link into one
// test binary and would export the same `_initialize`.
#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    // No host calls here: Envoy refuses them during `_initialize` (`restricted_callback`), so
    // logging is set up in `on_vm_start`.
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(ProbeRoot::new()) });
}}

/// Adds one to a shared little-endian counter with CAS; `None` if every retry lost a race.
fn increment_shared(key: &str) -> Option<u64> {
    let outcome = cas_update(&host::HostStore, key, CAS_RETRIES, |current| {
        let next = decode_counter(current).saturating_add(1);
        Update::Write(next.to_le_bytes().to_vec(), next)
    });
    match outcome {
        CasOutcome::Written { result, .. } => Some(result),
        other => {
            log::warn!("switchyard probe: shared counter {key} not updated: {other:?}");
            None
        }
    }
}

impl Context for ProbeRoot {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        _headers: usize,
        _body: usize,
        _trailers: usize,
    ) {
    }
}

impl RootContext for ProbeRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        host::init_vm(NAME, env!("CARGO_PKG_VERSION"));
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config = match parse(&host::plugin_configuration()) {
            Ok(c) => c,
            Err(e) => {
                log::error!("switchyard probe: invalid configuration: {e}");
                return false;
            }
        };
        if config.mode == "cost" {
            let value = vec![b'x'; config.value_bytes];
            if let Err(e) = switchyard_core::shared::ensure_key(&host::HostStore, COST_KEY, &value)
            {
                log::error!("switchyard probe: cannot create {COST_KEY}: {e:?}");
                return false;
            }
        }
        if config.mode == "probe" {
            if config.tick_ms > 0 {
                host::set_tick_period(Duration::from_millis(config.tick_ms));
            }
            if let Some(queue) = &config.queue {
                self.queue_id = abi::register_queue(queue).ok();
            }
            log::info!("switchyard probe: configured {config:?}");
        }
        self.config = Some(Rc::new(config));
        true
    }

    fn on_tick(&mut self) {
        self.metrics.inc(Metric::Ticks);
        let _ = increment_shared(TICKS_KEY);
        let paused: Vec<u32> = self.paused.borrow_mut().drain(..).collect();
        for context_id in paused {
            // Resuming another context's stream requires making it the effective context.
            if host::set_effective_context(context_id) {
                host::resume_request();
            }
        }
        self.metrics.set_gauge(Metric::Paused, 0);
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(message)) = abi::dequeue(queue_id) {
            self.metrics.inc(Metric::QueueReceived);
            let _ = cas_update(&host::HostStore, QUEUE_KEY, CAS_RETRIES, |current| {
                let mut all = current.map(<[u8]>::to_vec).unwrap_or_default();
                if !all.is_empty() {
                    all.push(b',');
                }
                all.extend_from_slice(&message);
                Update::Write(all, ())
            });
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        if let Some(config) = self.config.as_ref().filter(|c| c.mode == "cost") {
            return Some(Box::new(CostHttp {
                op: config.op.clone().unwrap_or_default(),
                repeat: config.repeat,
                metrics: self.metrics.clone(),
            }));
        }
        if !self.probing() {
            return Some(Box::new(NoopHttp));
        }
        Some(Box::new(ProbeHttp {
            context_id,
            config: self.config.clone()?,
            queue_id: self.queue_id,
            paused: self.paused.clone(),
            metrics: self.metrics.clone(),
            reply_headers: Vec::new(),
            body_mode: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// `{"mode":"noop"}`: every callback continues.
struct NoopHttp;
impl Context for NoopHttp {}
impl HttpContext for NoopHttp {}

/// `{"mode":"cost"}`: one host call, `repeat` times per request.
struct CostHttp {
    op: String,
    repeat: u32,
    metrics: Rc<Metrics>,
}
impl Context for CostHttp {}
impl HttpContext for CostHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let mut sink = 0usize;
        for i in 0..self.repeat {
            sink += match self.op.as_str() {
                "shared_get" => abi::shared_get(COST_KEY)
                    .ok()
                    .and_then(|(v, _)| v)
                    .map_or(0, |v| v.len()),
                "shared_cas" => match abi::shared_get(COST_KEY) {
                    Ok((Some(v), cas)) => usize::from(abi::shared_set(COST_KEY, &v, cas).is_ok()),
                    _ => 0,
                },
                "property" => host::source_address().map_or(0, |a| a.len()),
                "headers" => host::headers(Map::RequestHeaders).len(),
                "header" => host::header(Map::RequestHeaders, ":path").map_or(0, |p| p.len()),
                "time" => (host::now_nanos() & 1) as usize,
                "metric" => {
                    self.metrics.inc(Metric::Cost);
                    1
                }
                "log_debug" => {
                    log::debug!("switchyard probe: cost {i}");
                    1
                }
                _ => 0,
            };
        }
        std::hint::black_box(sink);
        Action::Continue
    }
}

struct ProbeHttp {
    context_id: u32,
    config: Rc<ProbeConfig>,
    queue_id: Option<u32>,
    paused: Rc<RefCell<Vec<u32>>>,
    metrics: Rc<Metrics>,
    /// Headers added to the response (upstream or local) of this request.
    reply_headers: Vec<(String, String)>,
    body_mode: Option<String>,
}

impl ProbeHttp {
    fn local_reply(&self, status: u32, body: &[u8]) {
        let mut headers: Vec<(&str, &[u8])> = vec![("x-probe-reply", b"1")];
        headers.extend(
            self.reply_headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_bytes())),
        );
        host::send_local_response(status, "probe_local_reply", &headers, body);
    }

    /// Passes a value both upstream (request header) and back to the client (response header).
    fn report(&mut self, name: &str, value: String) {
        host::set_header(Map::RequestHeaders, name, Some(value.as_bytes()));
        self.reply_headers.push((name.to_string(), value));
    }
}

impl Context for ProbeHttp {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        num_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        // Envoy reports a failed or timed-out callout as a response without headers.
        if num_headers == 0 {
            self.local_reply(503, b"probe callout failed\n");
            return;
        }
        let status = host::header(Map::HttpCallResponseHeaders, ":status")
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default();
        let body = host::http_call_body(body_size)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        self.report("x-probe-call-status", status);
        self.report("x-probe-call-body", body);
        host::resume_request();
    }

    fn on_grpc_call_response(&mut self, _token: u32, status_code: u32, message_size: usize) {
        if status_code != 0 {
            self.local_reply(
                503,
                format!("probe grpc failed: {status_code}\n").as_bytes(),
            );
            return;
        }
        let message = host::grpc_call_message(message_size)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        self.report("x-probe-grpc", message);
        host::resume_request();
    }
}

impl HttpContext for ProbeHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.metrics.inc(Metric::Requests);
        trap_on_demand();
        let method = request_header(":method").unwrap_or_default();
        let path = request_header(":path").unwrap_or_default();
        log::info!("switchyard probe: request {method} {path}");

        if let Some(status) = request_header("x-probe-reply") {
            let status = status.trim().parse::<u32>().unwrap_or(500);
            self.local_reply(status, b"probe local reply\n");
            return Action::Pause;
        }
        if let Some(name) = request_header("x-probe-count") {
            let key = format!("switchyard.probe.count.{}", name.trim());
            match increment_shared(&key) {
                Some(n) => self.report("x-probe-counted", n.to_string()),
                None => self.report("x-probe-counted", "contended".to_string()),
            }
        }
        if let Some(assignment) = request_header("x-probe-add") {
            if let Some((name, value)) = split_assignment(&assignment) {
                host::add_header(Map::RequestHeaders, name, value.as_bytes());
            }
        }
        if let Some(name) = request_header("x-probe-remove") {
            host::set_header(Map::RequestHeaders, name.trim(), None);
        }
        if let Some(path) = request_header("x-probe-property") {
            let parts: Vec<&str> = path.trim().split('.').collect();
            let value = abi::property(&parts)
                .ok()
                .flatten()
                .map(|b| render_property(&b))
                .unwrap_or_else(|| "<none>".to_string());
            self.reply_headers
                .push(("x-probe-property-value".to_string(), value));
        }
        if let Some(message) = request_header("x-probe-enqueue") {
            if let Some(queue) = self.queue_id {
                let _ = abi::enqueue(queue, message.as_bytes());
            }
        }
        self.body_mode = request_header("x-probe-body");
        if self.body_mode.is_some() && end_of_stream && self.body_mode.as_deref() == Some("echo") {
            self.local_reply(200, b"");
            return Action::Pause;
        }
        if let Some(cluster) = request_header("x-probe-call") {
            let cluster = cluster.trim().to_string();
            let dispatched = host::dispatch_http_call(
                &cluster,
                &[
                    (":method", "GET"),
                    (":path", "/probe"),
                    (":authority", &cluster),
                    ("x-probe-from", "probe"),
                ],
                &[],
                Duration::from_millis(self.config.call_timeout_ms),
            );
            return match dispatched {
                Ok(_) => Action::Pause,
                Err(status) => {
                    self.local_reply(
                        500,
                        format!("probe callout not sent: {status:?}\n").as_bytes(),
                    );
                    Action::Pause
                }
            };
        }
        if let Some(cluster) = request_header("x-probe-grpc") {
            let dispatched = host::dispatch_grpc_call(
                cluster.trim(),
                "probe.Probe",
                "Check",
                &[("x-probe-from", b"probe")],
                b"ping",
                Duration::from_millis(self.config.call_timeout_ms),
            );
            return match dispatched {
                Ok(_) => Action::Pause,
                Err(status) => {
                    self.local_reply(500, format!("probe grpc not sent: {status:?}\n").as_bytes());
                    Action::Pause
                }
            };
        }
        if request_header("x-probe-pause").is_some() {
            self.paused.borrow_mut().push(self.context_id);
            self.metrics
                .apply(&[StatWrite::Add(Stat::Fixed(Metric::Paused), 1)]);
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(mode) = self.body_mode.clone() else {
            return Action::Continue;
        };
        if !end_of_stream {
            // Buffer until the whole body is here.
            return Action::Pause;
        }
        self.metrics.apply(&[StatWrite::Set(
            Stat::Fixed(Metric::BodyBytes),
            body_size as u64,
        )]);
        let body = host::request_body(body_size);
        match mode.as_str() {
            "echo" => {
                self.local_reply(200, &body);
                Action::Pause
            }
            "upper" => {
                host::set_request_body(0, body_size, &body.to_ascii_uppercase());
                Action::Continue
            }
            _ => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        host::set_header(Map::ResponseHeaders, "x-probe-response", Some(b"1"));
        if let Ok(Some(code)) = abi::property(&["response", "code"]) {
            let code = render_property(&code);
            host::set_header(
                Map::ResponseHeaders,
                "x-probe-response-code",
                Some(code.as_bytes()),
            );
        }
        for (name, value) in std::mem::take(&mut self.reply_headers) {
            // A local reply already carries them.
            if host::header(Map::ResponseHeaders, &name).is_none() {
                host::add_header(Map::ResponseHeaders, &name, value.as_bytes());
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.metrics.inc(Metric::Logged);
    }
}
