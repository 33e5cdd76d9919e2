//! Public value types of the test host: outcomes, local replies, callouts, logs and errors.

use std::fmt;
use std::time::Duration;

/// Header list in wire order: names lower case as Envoy stores them, values as bytes (an HTTP
/// field value is bytes: obs-text such as a lone `\xE9` is legal, RFC 9110 §5.5, and Envoy passes
/// it to the module unchanged). Every host call reads and writes values as bytes.
pub type Headers = Vec<(String, Vec<u8>)>;

/// First value of `name` (case-insensitive) in a header list, as bytes.
pub fn header_bytes<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    let name = name.to_ascii_lowercase();
    headers
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.as_slice())
}

/// First value of `name` (case-insensitive) in a header list, as text: `None` when the header is
/// absent **or its value is not valid UTF-8** (use [`header_bytes`] to tell the two apart, or
/// [`header_lossy`]).
pub fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
    header_bytes(headers, name).and_then(|v| std::str::from_utf8(v).ok())
}

/// First value of `name`, invalid UTF-8 replaced by U+FFFD (for messages and reports).
pub fn header_lossy(headers: &[(String, Vec<u8>)], name: &str) -> Option<String> {
    header_bytes(headers, name).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// A header list from text pairs (names lower-cased).
pub fn text_headers(pairs: &[(&str, &str)]) -> Headers {
    pairs
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec()))
        .collect()
}

/// Log level of a filter log line (proxy-wasm numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Critical,
}

impl LogLevel {
    pub(crate) fn from_abi(level: i32) -> LogLevel {
        match level {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            _ => LogLevel::Critical,
        }
    }
}

/// One line a filter logged (or wrote to stdout/stderr, which Envoy logs at info/error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub worker: usize,
    pub level: LogLevel,
    pub message: String,
}

/// Identifies a request: the worker it runs on and its context id in that worker's VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamId {
    pub worker: usize,
    pub context: u32,
}

/// What the filter chain did with a request, as a test sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The request ran to completion (upstream answered or a local reply was sent).
    Continue,
    /// The filter paused the stream and has not resumed or answered it yet.
    Pause,
}

/// Where a stream is waiting when it is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
}

/// A reply the filter sent with `send_local_response`, as the filter asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub details: String,
    /// `None` when the filter passed -1 (no gRPC status).
    pub grpc_status: Option<i32>,
}

impl LocalReply {
    /// `None` when absent or not UTF-8 (see [`header`]).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
    pub fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        header_bytes(&self.headers, name)
    }
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A request or response message (headers incl. pseudo headers, body, trailers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
}

impl Message {
    /// `None` when absent or not UTF-8 (see [`header`]).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
    pub fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        header_bytes(&self.headers, name)
    }
    /// A message with only a `:status` header.
    pub fn with_status(status: u32) -> Self {
        Message {
            headers: vec![(":status".to_string(), status.to_string().into_bytes())],
            ..Message::default()
        }
    }
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The `:status` pseudo header as a number.
    pub fn status(&self) -> Option<u32> {
        self.header(":status").and_then(|s| s.parse().ok())
    }
}

/// The observable result of a request so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stream: StreamId,
    pub action: Action,
    /// Where the stream waits, if paused.
    pub paused_at: Option<Phase>,
    /// The local reply the filter sent, if any.
    pub local_reply: Option<LocalReply>,
    /// The request headers as the filter left them (what the upstream sees).
    pub request_headers: Headers,
    /// The request as it reached the upstream; `None` if it never did.
    pub upstream: Option<Message>,
    /// The response the client receives after the filter's response callbacks; `None` while the
    /// request is still in flight.
    pub response: Option<Message>,
    /// The filter reset the stream (`proxy_close_stream`).
    pub reset: bool,
}

impl Outcome {
    pub fn is_paused(&self) -> bool {
        self.action == Action::Pause
    }
    /// The request ended: a response reached the client or the stream was reset.
    pub fn is_complete(&self) -> bool {
        self.response.is_some() || self.reset
    }
    pub fn upstream_reached(&self) -> bool {
        self.upstream.is_some()
    }
    /// Status the client received.
    pub fn status(&self) -> Option<u32> {
        self.response.as_ref().and_then(Message::status)
    }
    /// A request header as the filter left it; `None` when absent or not UTF-8 (see [`header`]).
    pub fn request_header(&self, name: &str) -> Option<&str> {
        header(&self.request_headers, name)
    }
    pub fn request_header_bytes(&self, name: &str) -> Option<&[u8]> {
        header_bytes(&self.request_headers, name)
    }
    /// A response header the client receives; `None` when absent or not UTF-8 (see [`header`]).
    pub fn response_header(&self, name: &str) -> Option<&str> {
        self.response.as_ref().and_then(|r| r.header(name))
    }
    pub fn response_header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.response.as_ref().and_then(|r| r.header_bytes(name))
    }
    pub fn response_body(&self) -> String {
        self.response
            .as_ref()
            .map(Message::body_text)
            .unwrap_or_default()
    }
}

/// What kind of callout the filter dispatched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalloutKind {
    Http {
        headers: Headers,
        body: Vec<u8>,
        trailers: Headers,
    },
    Grpc {
        service: String,
        method: String,
        metadata: Headers,
        message: Vec<u8>,
    },
}

/// A callout waiting for the test to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callout {
    /// The token the filter got; use it to answer.
    pub id: u32,
    pub worker: usize,
    /// The context that dispatched it (root or stream).
    pub context: u32,
    pub cluster: String,
    pub kind: CalloutKind,
    /// `None` for a zero timeout (Envoy: no timeout).
    pub timeout: Option<Duration>,
}

impl Callout {
    /// An HTTP callout header (`:path`, `:method`, ...); `None` when absent or not UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }
    pub fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        match &self.kind {
            CalloutKind::Http { headers, .. } => header_bytes(headers, name),
            CalloutKind::Grpc { metadata, .. } => header_bytes(metadata, name),
        }
    }
    pub fn body(&self) -> &[u8] {
        match &self.kind {
            CalloutKind::Http { body, .. } => body,
            CalloutKind::Grpc { message, .. } => message,
        }
    }
}

/// How the test answers a callout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalloutReply {
    /// An HTTP response (`:status` is added from `status`).
    Http {
        status: u32,
        headers: Headers,
        body: Vec<u8>,
        trailers: Headers,
    },
    /// A successful gRPC reply message.
    GrpcOk { message: Vec<u8> },
    /// A gRPC failure with status code and message.
    GrpcFailure { status: u32, message: String },
    /// The connection failed (Envoy: the callback without headers, or gRPC `Unavailable`).
    Failure,
    /// The callout timed out (Envoy: same callback as a failure; gRPC `DeadlineExceeded`).
    Timeout,
}

impl CalloutReply {
    pub fn http(status: u32) -> Self {
        CalloutReply::Http {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            trailers: Vec::new(),
        }
    }
    pub fn grpc_ok(message: impl Into<Vec<u8>>) -> Self {
        CalloutReply::GrpcOk {
            message: message.into(),
        }
    }
    /// Adds a header to an HTTP reply.
    pub fn header(self, name: &str, value: &str) -> Self {
        self.header_bytes(name, value.as_bytes())
    }
    /// Adds a header with any value bytes (obs-text included) to an HTTP reply.
    pub fn header_bytes(mut self, name: &str, value: &[u8]) -> Self {
        if let CalloutReply::Http { headers, .. } = &mut self {
            headers.push((name.to_ascii_lowercase(), value.to_vec()));
        }
        self
    }
    /// Sets the body of an HTTP reply.
    pub fn body(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        if let CalloutReply::Http { body, .. } = &mut self {
            *body = bytes.into();
        }
        self
    }
}

/// Everything that can go wrong loading or driving a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostError {
    /// The module file is missing or unreadable.
    Load(String),
    /// The module imports functions this host does not provide.
    UnknownImports(Vec<String>),
    /// The module is not a proxy-wasm ABI 0.2.1 module or failed to instantiate.
    Instantiate(String),
    /// `proxy_on_vm_start` returned false.
    VmStartFailed { worker: usize, logs: Vec<String> },
    /// `proxy_on_configure` returned false; `logs` are the error lines the filter logged.
    ConfigRejected { worker: usize, logs: Vec<String> },
    /// The module trapped (a Rust panic aborts); the VM is unusable afterwards, as in Envoy.
    Trap {
        worker: usize,
        callback: String,
        message: String,
        logs: Vec<String>,
    },
    /// The test asked for something that does not exist (unknown worker, stream or callout).
    Usage(String),
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::Load(m) => write!(f, "cannot load module: {m}"),
            HostError::UnknownImports(names) => write!(
                f,
                "module imports functions the test host does not provide: {}",
                names.join(", ")
            ),
            HostError::Instantiate(m) => write!(f, "cannot instantiate module: {m}"),
            HostError::VmStartFailed { worker, logs } => {
                write!(f, "worker {worker}: proxy_on_vm_start returned false; logs: {logs:?}")
            }
            HostError::ConfigRejected { worker, logs } => write!(
                f,
                "worker {worker}: configuration rejected (proxy_on_configure returned false); logs: {}",
                logs.join(" | ")
            ),
            HostError::Trap {
                worker,
                callback,
                message,
                logs,
            } => write!(
                f,
                "worker {worker}: module trapped in {callback}: {message}; critical logs: {logs:?}"
            ),
            HostError::Usage(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for HostError {}

pub type HostResult<T> = Result<T, HostError>;
