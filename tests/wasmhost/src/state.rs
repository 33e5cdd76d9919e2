//! Host state: what all workers share (like one Envoy process) and what each worker's VM owns.

use crate::types::{Callout, Headers, LocalReply, LogEntry, Message, StreamId};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use wasmtime::{Memory, TypedFunc};

/// `MetricType` numbering of the ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetricKind {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

#[derive(Debug, Clone)]
pub(crate) struct Metric {
    pub name: String,
    pub kind: MetricKind,
    pub value: u64,
    pub samples: Vec<u64>,
}

pub(crate) struct Queue {
    pub vm_id: String,
    pub name: String,
    pub items: VecDeque<Vec<u8>>,
    /// The worker and root context notified on enqueue: the last one that registered, as in Envoy.
    pub owner: (usize, u32),
}

/// A callout the filter dispatched and the test has not answered.
pub(crate) struct PendingCallout {
    pub callout: Callout,
    /// Virtual time (ns) at which it times out, if it has a timeout.
    pub deadline: Option<u64>,
}

pub(crate) type Interference = Box<dyn FnMut(&str) -> bool + Send>;

/// State shared by every worker: Envoy's process-wide shared data, queues, stats, the clock.
pub(crate) struct Shared {
    pub now_nanos: u64,
    pub vm_id: String,
    pub data: HashMap<String, (Vec<u8>, u32)>,
    pub next_cas: u32,
    pub interfere: Option<Interference>,
    pub queues: Vec<Queue>,
    /// (worker, root context, queue id) notifications to deliver after the current callback.
    pub queue_ready: VecDeque<(usize, u32, u32)>,
    pub metrics: Vec<Metric>,
    pub logs: Vec<LogEntry>,
    pub callouts: Vec<PendingCallout>,
    pub next_token: u32,
    /// Host-level properties (`plugin_name`, `route_name`, `source.address`, ...), dotted paths.
    pub properties: HashMap<String, Vec<u8>>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub rng: u64,
    /// Clusters `dispatch_http_call` accepts; `None` accepts every name.
    pub clusters: Option<Vec<String>>,
    /// How many times the modules called each host function (`proxy_*` and WASI).
    pub host_calls: std::collections::BTreeMap<String, u64>,
}

impl Shared {
    pub fn new(start_nanos: u64) -> Self {
        Shared {
            now_nanos: start_nanos,
            vm_id: String::new(),
            data: HashMap::new(),
            next_cas: 1,
            interfere: None,
            queues: Vec::new(),
            queue_ready: VecDeque::new(),
            metrics: Vec::new(),
            logs: Vec::new(),
            callouts: Vec::new(),
            next_token: 1,
            properties: HashMap::new(),
            stdout: Vec::new(),
            stderr: Vec::new(),
            rng: 0x5eed_5eed_5eed_5eed,
            clusters: None,
            host_calls: Default::default(),
        }
    }

    /// Envoy's CAS counter: global, never 0.
    pub fn bump_cas(&mut self) -> u32 {
        let cas = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        cas
    }

    /// Envoy's `SharedData::set`: a token of 0 or a missing key writes unconditionally, a stale
    /// token is a mismatch.
    pub fn set_shared(&mut self, key: &str, value: Vec<u8>, cas: u32) -> bool {
        if cas != 0 && self.data.contains_key(key) {
            let interfered = match self.interfere.as_mut() {
                Some(f) => f(key),
                None => false,
            };
            if interfered {
                let token = self.bump_cas();
                if let Some(entry) = self.data.get_mut(key) {
                    entry.1 = token;
                }
            }
        }
        let token = self.bump_cas();
        match self.data.get_mut(key) {
            Some(entry) => {
                if cas != 0 && cas != entry.1 {
                    return false;
                }
                *entry = (value, token);
            }
            None => {
                self.data.insert(key.to_string(), (value, token));
            }
        }
        true
    }

    pub fn next_random(&mut self) -> u64 {
        // Deterministic so module tests replay exactly.
        crate::fuzz::xorshift_star(&mut self.rng)
    }
}

pub(crate) type SharedRef = Arc<Mutex<Shared>>;

pub(crate) fn lock(shared: &SharedRef) -> MutexGuard<'_, Shared> {
    // A poisoned lock only means a test thread panicked; the state is still usable.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// The next callback a stream runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Step {
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    Upstream,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
    Finish,
    Done,
}

/// Per-request state in a worker.
pub(crate) struct Stream {
    pub id: StreamId,
    pub step: Step,
    pub paused: bool,
    /// `proxy_continue_stream` asked to resume (0 = request, 1 = response).
    pub resume: Option<i32>,
    /// A local reply sent during the last callback, applied when it returns.
    pub pending_reply: Option<LocalReply>,
    pub local_reply: Option<LocalReply>,
    pub reset_requested: bool,
    pub reset: bool,
    pub request_headers: Option<Headers>,
    pub request_body: Vec<u8>,
    pub request_trailers: Option<Headers>,
    /// Body and trailers the client sends, delivered after the headers.
    pub client_body: Option<Vec<u8>>,
    pub client_trailers: Headers,
    pub response_headers: Option<Headers>,
    pub response_body: Vec<u8>,
    pub response_trailers: Option<Headers>,
    /// What the upstream answers, delivered once the request reaches it.
    pub upstream_answer: Option<Message>,
    /// The upstream holds its answer until the test releases it (the request stays in flight).
    pub hold_upstream: bool,
    pub upstream: Option<Message>,
    /// Request-level properties set by the test or the filter.
    pub properties: HashMap<String, Vec<u8>>,
    pub log_phase: bool,
    /// The last callback the stream ran (where it waits when paused).
    pub last_phase: Option<crate::types::Phase>,
    /// The response came from a local reply (no upstream body or trailers follow).
    pub replying_locally: bool,
}

/// `proxy_on_http_call_response(context, token, headers, body size, trailers)`.
pub(crate) type CallResponseFn = TypedFunc<(i32, i32, i32, i32, i32), ()>;

/// Exported callbacks of a proxy-wasm module (missing optional ones are skipped, as in Envoy).
pub(crate) struct Exports {
    pub on_context_create: TypedFunc<(i32, i32), ()>,
    pub on_vm_start: Option<TypedFunc<(i32, i32), i32>>,
    pub on_configure: Option<TypedFunc<(i32, i32), i32>>,
    pub on_request_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    pub on_request_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    pub on_request_trailers: Option<TypedFunc<(i32, i32), i32>>,
    pub on_response_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    pub on_response_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    pub on_response_trailers: Option<TypedFunc<(i32, i32), i32>>,
    pub on_log: Option<TypedFunc<i32, ()>>,
    pub on_done: Option<TypedFunc<i32, i32>>,
    pub on_delete: Option<TypedFunc<i32, ()>>,
    pub on_tick: Option<TypedFunc<i32, ()>>,
    pub on_queue_ready: Option<TypedFunc<(i32, i32), ()>>,
    pub on_http_call_response: Option<CallResponseFn>,
    pub on_grpc_receive: Option<TypedFunc<(i32, i32, i32), ()>>,
    pub on_grpc_close: Option<TypedFunc<(i32, i32, i32), ()>>,
}

/// The answer of a callout while its callback runs (read through the call-response buffers).
#[derive(Default)]
pub(crate) struct CallResponse {
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
}

/// One worker's VM state (the wasmtime store data).
pub(crate) struct Vm {
    pub shared: SharedRef,
    pub worker: usize,
    pub memory: Option<Memory>,
    pub malloc: Option<TypedFunc<i32, i32>>,
    pub root_id: u32,
    /// Root contexts that exist (the current one plus any being replaced).
    pub roots: Vec<u32>,
    pub plugin_config: Vec<u8>,
    pub vm_config: Vec<u8>,
    /// The context the host called into and the one `set_effective_context` selected.
    pub effective: u32,
    pub streams: HashMap<u32, Stream>,
    pub tick_period: Option<Duration>,
    pub next_tick_at: Option<u64>,
    pub call_response: Option<CallResponse>,
    pub grpc_status: (u32, Option<String>),
    pub next_context: u32,
    pub done_called: bool,
    /// `_initialize`/`_start` is running: host calls are restricted as in Envoy.
    pub initializing: bool,
}

impl Vm {
    pub fn stream_mut(&mut self) -> Option<&mut Stream> {
        let id = self.effective;
        self.streams.get_mut(&id)
    }
    pub fn stream(&self) -> Option<&Stream> {
        self.streams.get(&self.effective)
    }
}
