//! Thin glue between the pure logic and the proxy-wasm host, over the byte-safe calls of
//! [`crate::abi`]. Nothing here holds logic worth testing natively; it is exercised by the
//! module and Envoy integration tests. Every function here returns or swallows host errors:
//! none can trap the VM.

use crate::abi::{self, HostError, Level, Map};
use crate::effects::{Effects, Flow, HeaderEdit};
use crate::metrics::{Metric, Metrics};
use crate::request::RequestView;
use crate::shared::{SharedStore, StoreError};
use crate::stages::{self, Edit};

pub use crate::abi::{Headers, HostResult};

/// Process-wide shared data of the Envoy the module runs in.
pub struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        abi::shared_get(key).map_err(store_error)
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        abi::shared_set(key, value, cas).map_err(store_error)
    }
}

fn store_error(e: HostError) -> StoreError {
    match e {
        HostError::CasMismatch => StoreError::CasMismatch,
        other => StoreError::Other(format!("{other:?}")),
    }
}

/// Routes the `log` crate to Envoy without the SDK's logger (whose `log` unwraps the host's
/// status).
struct HostLogger;

static LOGGER: HostLogger = HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }
    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Trace => Level::Trace,
            log::Level::Debug => Level::Debug,
            log::Level::Info => Level::Info,
            log::Level::Warn => Level::Warn,
            log::Level::Error => Level::Error,
        };
        let _ = abi::log(level, &record.args().to_string());
    }
    fn flush(&self) {}
}

/// Sets up logging for a filter's VM: routes the `log` crate to Envoy at the level Envoy runs
/// its wasm logger at when the VM starts, logs panics at critical level with the filter's name
/// (a panic aborts the VM; the log line is what remains, and the plugin's `failure_policy`
/// decides what happens next), and logs the version once.
pub fn init_vm(filter: &'static str, version: &'static str) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(match abi::log_level() {
        Ok(Level::Trace) => log::LevelFilter::Trace,
        Ok(Level::Debug) => log::LevelFilter::Debug,
        Ok(Level::Info) | Err(_) => log::LevelFilter::Info,
        Ok(Level::Warn) => log::LevelFilter::Warn,
        Ok(Level::Error) => log::LevelFilter::Error,
        Ok(Level::Critical) => log::LevelFilter::Off,
    });
    std::panic::set_hook(Box::new(move |info| {
        let _ = abi::log(
            Level::Critical,
            &format!("switchyard {filter} panicked: {info}"),
        );
    }));
    log::info!("switchyard {filter} {version} loaded");
}

/// Current host time in nanoseconds since the Unix epoch (Envoy's clock, per worker); 0 if
/// the host cannot tell.
pub fn now_nanos() -> u64 {
    stages::now(|| abi::now_nanos().unwrap_or(0))
}

/// A property as UTF-8 text, if Envoy has it and it is text.
pub fn property_text(path: &[&str]) -> Option<String> {
    abi::property(path)
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
}

/// The downstream peer address as Envoy reports it (`source.address`).
pub fn source_address() -> Option<String> {
    stages::source_address(|| property_text(&["source", "address"]))
}

/// The current request as a lazy, byte-safe view: the header map is read on the first
/// question that needs it (one host call), the peer address only if a matcher or key asks.
/// A host error reads as an empty map.
pub fn request_view() -> RequestView {
    if stages::sharing_views() {
        // The suite: every stage's view of the unedited request shares one parse.
        return RequestView::lazy_parsed(
            Box::new(|| {
                stages::parsed_request(|| {
                    std::rc::Rc::new(crate::request::Parts::from_list(headers(
                        Map::RequestHeaders,
                    )))
                })
            }),
            source_address,
        );
    }
    RequestView::lazy(Box::new(|| headers(Map::RequestHeaders)), source_address)
}

/// Reads the plugin configuration bytes (empty if none).
pub fn plugin_configuration() -> Vec<u8> {
    if let Some(stage_config) = stages::config() {
        return stage_config;
    }
    abi::buffer(abi::Buffer::PluginConfiguration, 0, usize::MAX)
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Every header of a map (empty on a host error, e.g. a map not available in this phase).
pub fn headers(map: Map) -> Headers {
    if map == Map::RequestHeaders {
        return stages::request_headers(|| abi::headers(map).unwrap_or_default());
    }
    abi::headers(map).unwrap_or_default()
}

/// One header's value (the first, if repeated).
pub fn header(map: Map, name: &str) -> Option<Vec<u8>> {
    if map == Map::RequestHeaders {
        if let Some(shared) = stages::shared_request_header(name) {
            return shared;
        }
    }
    abi::header(map, name).ok().flatten()
}

/// Sets (`Some`) or removes (`None`) a header; a host error is logged at debug level.
pub fn set_header(map: Map, name: &str, value: Option<&[u8]>) {
    if map == Map::RequestHeaders {
        stages::edit_request_header(name, value.map_or(Edit::Remove, Edit::Set));
    }
    let r = match value {
        Some(v) => abi::set_header(map, name, v),
        None => abi::remove_header(map, name),
    };
    if let Err(e) = r {
        log::debug!("switchyard: cannot set header {name} in {map:?}: {e:?}");
    }
}

/// Appends a header value; a host error is logged at debug level.
pub fn add_header(map: Map, name: &str, value: &[u8]) {
    if map == Map::RequestHeaders {
        stages::edit_request_header(name, Edit::Add(value));
    }
    if let Err(e) = abi::add_header(map, name, value) {
        log::debug!("switchyard: cannot add header {name} in {map:?}: {e:?}");
    }
}

/// Answers the current request locally. Returns whether the host took the reply; a filter
/// that gets `false` lets the request continue (the host refused, e.g. the response already
/// started).
pub fn send_local_response(
    status: u32,
    details: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> bool {
    match abi::send_local_response(status, details, headers, body) {
        Ok(()) => {
            stages::record_local_reply();
            true
        }
        Err(e) => {
            log::warn!("switchyard: local reply {status} refused by the host: {e:?}");
            false
        }
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The callback's answer to the host.
    pub action: proxy_wasm::types::Action,
    /// Whether the host took a local reply (the request is answered: no response edits).
    pub replied: bool,
}

/// Carries out a decision's effects on the current (effective) request: the one place where a
/// filter's decision reaches the host. Stats first, then request header edits, then the local
/// reply (which, if the host takes it, replaces the response edits and pauses the request),
/// then response header edits and the flow.
pub fn apply<M: Metric, S: Metric>(effects: Effects<M, S>, metrics: &Metrics<M, S>) -> Applied {
    use proxy_wasm::types::Action;
    metrics.apply(&effects.stats);
    edit_headers(Map::RequestHeaders, &effects.request);
    if let Some(r) = &effects.reply {
        let headers: Vec<(&str, &[u8])> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        if send_local_response(r.status, r.details, &headers, &r.body) {
            return Applied {
                action: Action::Pause,
                replied: true,
            };
        }
    }
    edit_headers(Map::ResponseHeaders, &effects.response);
    Applied {
        action: match effects.flow {
            Flow::Continue => Action::Continue,
            Flow::Pause => Action::Pause,
        },
        replied: false,
    }
}

/// Applies header edits to one map, in order.
pub fn edit_headers(map: Map, edits: &[HeaderEdit]) {
    for e in edits {
        match e {
            HeaderEdit::Set(name, value) => set_header(map, name, Some(value)),
            HeaderEdit::Add(name, value) => add_header(map, name, value),
            HeaderEdit::Remove(name) => set_header(map, name, None),
        }
    }
}

/// [`send_local_response`] for string headers.
pub fn send_local_text(
    status: u32,
    details: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> bool {
    let h: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect();
    send_local_response(status, details, &h, body)
}

/// The response body of a finished `dispatch_http_call` (up to `max` bytes), if any.
pub fn http_call_body(max: usize) -> Option<Vec<u8>> {
    abi::buffer(abi::Buffer::HttpCallResponseBody, 0, max)
        .ok()
        .flatten()
}

/// One header of a finished `dispatch_http_call`'s response, as text (`None` if absent or not
/// UTF-8: the values filters read there are status codes, ETags and dates).
pub fn http_call_header(name: &str) -> Option<String> {
    header(Map::HttpCallResponseHeaders, name).and_then(|v| String::from_utf8(v).ok())
}

/// Every header of a finished `dispatch_http_call`'s response.
pub fn http_call_headers() -> Headers {
    headers(Map::HttpCallResponseHeaders)
}

/// Sets the root context's tick period (a host error is logged).
pub fn set_tick_period(period: std::time::Duration) {
    if stages::defer_tick(period) {
        return;
    }
    set_tick_period_now(period);
}

/// Sets the tick period now, even in suite mode (the suite does, for the shortest its stages
/// asked for).
pub fn set_tick_period_now(period: std::time::Duration) {
    let ms = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    if let Err(e) = abi::set_tick_period_ms(ms) {
        log::warn!("switchyard: cannot set the tick period: {e:?}");
    }
}

/// A property that Envoy encodes as a little-endian u64 (`response.code`, `response.flags`).
pub fn property_u64(path: &[&str]) -> Option<u64> {
    let bytes = abi::property(path).ok().flatten()?;
    let arr: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(arr))
}

/// Makes `context_id` the context later host calls act on (to resume or answer another
/// request from a root callback). Returns whether the host accepted it.
pub fn set_effective_context(context_id: u32) -> bool {
    let ok = abi::set_effective_context(context_id).is_ok();
    if ok {
        stages::set_current(context_id);
    }
    ok
}

/// Resumes the current (effective) paused request; a host error is logged.
pub fn resume_request() {
    if stages::defer_resume() {
        return;
    }
    resume_request_now();
}

/// Resumes the current (effective) paused request now, even in suite mode (the suite does,
/// once every stage has run).
pub fn resume_request_now() {
    if let Err(e) = abi::resume_request() {
        log::debug!("switchyard: cannot resume the request: {e:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Callouts whose answers reach a context, and the buffers the probe filter reads and rewrites.
// ---------------------------------------------------------------------------------------------

/// The SDK's status as a [`HostError`].
fn sdk_error(s: proxy_wasm::types::Status) -> HostError {
    use proxy_wasm::types::Status;
    match s {
        Status::NotFound => HostError::NotFound,
        Status::BadArgument => HostError::BadArgument,
        Status::SerializationFailure => HostError::SerializationFailure,
        Status::ParseFailure => HostError::ParseFailure,
        Status::Empty => HostError::Empty,
        Status::CasMismatch => HostError::CasMismatch,
        Status::InternalFailure => HostError::InternalFailure,
        other => HostError::Unknown(other as u32),
    }
}

/// Sends an HTTP callout whose answer the SDK delivers to the calling context's
/// `on_http_call_response`; returns the call's token.
///
/// This goes through the SDK's `dispatch_http_call` on purpose: the SDK's dispatcher routes an
/// answer by a token table that only that function fills, and it `expect`s every answered token
/// to be in it, so the answer to a token from a raw `proxy_http_call` panics the VM in
/// `proxy_on_http_call_response`. The SDK function itself panics only on a status other than
/// `Ok`, `BadArgument` and `InternalFailure`, which Envoy's `proxy_http_call` returns only for
/// pointers outside the module's memory (`InvalidMemoryAccess`), never for these live slices.
#[allow(clippy::disallowed_methods)]
pub fn dispatch_http_call(
    cluster: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: std::time::Duration,
) -> HostResult<u32> {
    proxy_wasm::hostcalls::dispatch_http_call(
        cluster,
        headers.to_vec(),
        (!body.is_empty()).then_some(body),
        Vec::new(),
        timeout,
    )
    .map_err(sdk_error)
    .inspect(|&token| stages::record_dispatch(token))
}

/// [`dispatch_http_call`] for header values as bytes. The SDK's call takes text, so a value
/// that is not UTF-8 cannot be sent: it is left out (logged at debug level) rather than
/// altered.
pub fn dispatch_http_call_bytes(
    cluster: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
    timeout: std::time::Duration,
) -> HostResult<u32> {
    let text: Vec<(&str, &str)> = headers
        .iter()
        .filter_map(|(k, v)| match std::str::from_utf8(v) {
            Ok(v) => Some((*k, v)),
            Err(_) => {
                log::debug!("switchyard: callout to {cluster} leaves out header {k}: not UTF-8");
                None
            }
        })
        .collect();
    dispatch_http_call(cluster, &text, body, timeout)
}

/// Sends a unary gRPC callout whose answer the SDK delivers to the calling context's
/// `on_grpc_call_response`; returns the call's token.
///
/// Through the SDK's `dispatch_grpc_call` for the same reason as [`dispatch_http_call`] (an
/// unregistered gRPC token's answer is silently dropped and the paused request hangs). The SDK
/// panics on a status other than `Ok`, `ParseFailure` (Envoy: unknown cluster) and
/// `InternalFailure`.
#[allow(clippy::disallowed_methods)]
pub fn dispatch_grpc_call(
    cluster: &str,
    service: &str,
    method: &str,
    metadata: &[(&str, &[u8])],
    message: &[u8],
    timeout: std::time::Duration,
) -> HostResult<u32> {
    proxy_wasm::hostcalls::dispatch_grpc_call(
        cluster,
        service,
        method,
        metadata.to_vec(),
        Some(message),
        timeout,
    )
    .map_err(sdk_error)
    .inspect(|&token| stages::record_dispatch(token))
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_buffer_bytes(
        buffer: u32,
        start: usize,
        max_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_set_buffer_bytes(
        buffer: u32,
        start: usize,
        size: usize,
        data: *const u8,
        data_size: usize,
    ) -> u32;
}

/// No host natively: every call says `Unimplemented` (as in [`abi`]).
#[cfg(not(target_arch = "wasm32"))]
unsafe fn proxy_get_buffer_bytes(
    _: u32,
    _: usize,
    _: usize,
    _: *mut *mut u8,
    _: *mut usize,
) -> u32 {
    12
}

#[cfg(not(target_arch = "wasm32"))]
unsafe fn proxy_set_buffer_bytes(_: u32, _: usize, _: usize, _: *const u8, _: usize) -> u32 {
    12
}

/// `proxy_wasm::types::BufferType::GrpcReceiveBuffer` ([`abi::Buffer`] has no variant for it).
const GRPC_RECEIVE_BUFFER: u32 = 5;

/// The message of a finished `dispatch_grpc_call` (up to `max` bytes), if any.
pub fn grpc_call_message(max: usize) -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: out-pointers to locals.
    let code = unsafe { proxy_get_buffer_bytes(GRPC_RECEIVE_BUFFER, 0, max, &mut data, &mut size) };
    if code != 0 || data.is_null() {
        return None;
    }
    // SAFETY: on Ok the host returned a buffer of exactly `size` bytes allocated through the
    // SDK's `proxy_on_memory_allocate` (the contract `abi` relies on too).
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// The request body received so far (up to `max` bytes; empty on a host error).
pub fn request_body(max: usize) -> Vec<u8> {
    abi::buffer(abi::Buffer::RequestBody, 0, max)
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Replaces `size` bytes of the request body from `start` with `value`; a host error is logged
/// at debug level.
pub fn set_request_body(start: usize, size: usize, value: &[u8]) {
    // SAFETY: pointer and length of a live slice.
    let code = unsafe {
        proxy_set_buffer_bytes(
            abi::Buffer::RequestBody as u32,
            start,
            size,
            value.as_ptr(),
            value.len(),
        )
    };
    if code != 0 {
        log::debug!("switchyard: cannot set the request body: status {code}");
    }
}
