//! The proxy-wasm ABI calls the filters make, byte-safe and panic-free.
//!
//! The proxy-wasm SDK's `hostcalls` (and the `Context` trait methods built on them) panic on any
//! status they do not expect and `unwrap` UTF-8 conversions of header values, so one obs-text
//! byte (`X-User-Id: caf\xe9`, legal per RFC 9110 §5.5) killed a filter's VM. This module is the
//! one place with `unsafe` host calls: every call returns a [`HostResult`], header values are
//! bytes, and a malformed answer from the host is an error, never a trap. Workspace clippy
//! (`clippy.toml`, `disallowed-methods`) forbids the SDK's panicking calls everywhere else.
//!
//! HTTP and gRPC callouts are the exception: the SDK's dispatcher delivers their answers only
//! for tokens its own `dispatch_*_call` registered, so they go through `host::dispatch_*`.
//!
//! Memory the host returns was allocated through the SDK's exported `proxy_on_memory_allocate`
//! (a boxed slice of exactly the returned size), so it is taken back as a `Vec` of that length.

use std::ptr::{null, null_mut};

/// A proxy-wasm status other than `Ok`, or a host answer this module could not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    NotFound,
    BadArgument,
    SerializationFailure,
    ParseFailure,
    Empty,
    CasMismatch,
    InternalFailure,
    Unimplemented,
    /// A status code this ABI version does not define.
    Unknown(u32),
    /// The host returned data this module could not decode (e.g. a truncated header map).
    Malformed,
}

pub type HostResult<T> = Result<T, HostError>;

fn status(code: u32) -> HostResult<()> {
    Err(match code {
        0 => return Ok(()),
        1 => HostError::NotFound,
        2 => HostError::BadArgument,
        3 => HostError::SerializationFailure,
        4 => HostError::ParseFailure,
        7 => HostError::Empty,
        8 => HostError::CasMismatch,
        10 => HostError::InternalFailure,
        12 => HostError::Unimplemented,
        other => HostError::Unknown(other),
    })
}

/// Header maps of the ABI (`proxy_wasm::types::MapType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Map {
    RequestHeaders = 0,
    RequestTrailers = 1,
    ResponseHeaders = 2,
    ResponseTrailers = 3,
    HttpCallResponseHeaders = 6,
    HttpCallResponseTrailers = 7,
}

/// Buffers of the ABI (`proxy_wasm::types::BufferType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Buffer {
    RequestBody = 0,
    ResponseBody = 1,
    HttpCallResponseBody = 4,
    VmConfiguration = 6,
    PluginConfiguration = 7,
}

/// Log levels of the ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum Level {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

/// Metric kinds of the ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum MetricKind {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

/// A header list as bytes: names are lower-case in Envoy, values are whatever the codec let
/// through (obs-text included).
pub type Headers = Vec<(Vec<u8>, Vec<u8>)>;

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, data: *const u8, size: usize) -> u32;
    fn proxy_get_log_level(level: *mut u32) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        buffer: u32,
        start: usize,
        max_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_add_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_get_property(
        path: *const u8,
        path_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_register_shared_queue(name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_enqueue_shared_queue(id: u32, value: *const u8, value_size: usize) -> u32;
    fn proxy_dequeue_shared_queue(id: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_continue_stream(stream: u32) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_call_foreign_function(
        name: *const u8,
        name_size: usize,
        args: *const u8,
        args_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
    fn proxy_get_metric(id: u32, value: *mut u64) -> u32;
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    /// WASI `random_get` (Envoy and the test host provide it); returns a WASI errno.
    fn random_get(buf: *mut u8, len: usize) -> u16;
}

/// Random bytes from the host (WASI `random_get`) as a u64. Called directly rather than
/// through std, whose hash-map seeding panics if the host refuses.
pub fn random_u64() -> HostResult<u64> {
    #[cfg(target_arch = "wasm32")]
    {
        let mut b = [0u8; 8];
        // SAFETY: pointer and length of a live local buffer.
        let errno = unsafe { random_get(b.as_mut_ptr(), b.len()) };
        if errno != 0 {
            return Err(HostError::Unknown(u32::from(errno)));
        }
        Ok(u64::from_le_bytes(b))
    }
    // No host natively.
    #[cfg(not(target_arch = "wasm32"))]
    Err(HostError::Unimplemented)
}

/// Native builds (unit tests of crates that link this module) have no host: every call says
/// `Unimplemented`. The glue is exercised by the wasmtime-host and Envoy tests.
#[cfg(not(target_arch = "wasm32"))]
#[allow(clippy::too_many_arguments)]
mod native {
    macro_rules! no_host {
        ($($name:ident($($arg:ty),*) $(-> $ret:ty)?;)*) => {
            $(pub unsafe fn $name($(_: $arg),*) -> u32 { 12 })*
        };
    }
    no_host! {
        proxy_log(u32, *const u8, usize);
        proxy_get_log_level(*mut u32);
        proxy_get_current_time_nanoseconds(*mut u64);
        proxy_set_tick_period_milliseconds(u32);
        proxy_get_buffer_bytes(u32, usize, usize, *mut *mut u8, *mut usize);
        proxy_get_header_map_pairs(u32, *mut *mut u8, *mut usize);
        proxy_get_header_map_value(u32, *const u8, usize, *mut *mut u8, *mut usize);
        proxy_replace_header_map_value(u32, *const u8, usize, *const u8, usize);
        proxy_add_header_map_value(u32, *const u8, usize, *const u8, usize);
        proxy_remove_header_map_value(u32, *const u8, usize);
        proxy_get_property(*const u8, usize, *mut *mut u8, *mut usize);
        proxy_get_shared_data(*const u8, usize, *mut *mut u8, *mut usize, *mut u32);
        proxy_set_shared_data(*const u8, usize, *const u8, usize, u32);
        proxy_register_shared_queue(*const u8, usize, *mut u32);
        proxy_enqueue_shared_queue(u32, *const u8, usize);
        proxy_dequeue_shared_queue(u32, *mut *mut u8, *mut usize);
        proxy_continue_stream(u32);
        proxy_send_local_response(u32, *const u8, usize, *const u8, usize, *const u8, usize, i32);
        proxy_set_effective_context(u32);
        proxy_call_foreign_function(*const u8, usize, *const u8, usize, *mut *mut u8, *mut usize);
        proxy_define_metric(u32, *const u8, usize, *mut u32);
        proxy_increment_metric(u32, i64);
        proxy_record_metric(u32, u64);
        proxy_get_metric(u32, *mut u64);
    }
}
#[cfg(not(target_arch = "wasm32"))]
use native::*;

/// Takes ownership of a host-allocated buffer (null means "no data").
///
/// # Safety
/// `data` is null or was returned by the host for exactly `size` bytes allocated through
/// `proxy_on_memory_allocate`.
unsafe fn take(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        // SAFETY: see the function's contract.
        unsafe { Vec::from_raw_parts(data, size, size) }
    }
}

/// Runs a call that returns a host buffer; `Ok(None)` for `NotFound`.
fn buffer_call(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> HostResult<Option<Vec<u8>>> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    match status(call(&mut data, &mut size)) {
        // SAFETY: on Ok the host returned a buffer of `size` bytes (or null).
        Ok(()) => Ok(Some(unsafe { take(data, size) })),
        Err(HostError::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn log(level: Level, message: &str) -> HostResult<()> {
    // SAFETY: pointer and length of a live &str.
    status(unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) })
}

pub fn log_level() -> HostResult<Level> {
    let mut level = 0u32;
    // SAFETY: out-pointer to a local.
    status(unsafe { proxy_get_log_level(&mut level) })?;
    Ok(match level {
        0 => Level::Trace,
        1 => Level::Debug,
        2 => Level::Info,
        3 => Level::Warn,
        4 => Level::Error,
        _ => Level::Critical,
    })
}

/// Envoy's clock in nanoseconds since the Unix epoch.
pub fn now_nanos() -> HostResult<u64> {
    let mut t = 0u64;
    // SAFETY: out-pointer to a local.
    status(unsafe { proxy_get_current_time_nanoseconds(&mut t) })?;
    Ok(t)
}

pub fn set_tick_period_ms(period_ms: u32) -> HostResult<()> {
    // SAFETY: plain value.
    status(unsafe { proxy_set_tick_period_milliseconds(period_ms) })
}

/// Up to `max` bytes of a buffer from `start`; `Ok(None)` when the buffer does not exist.
pub fn buffer(kind: Buffer, start: usize, max: usize) -> HostResult<Option<Vec<u8>>> {
    // SAFETY: out-pointers to locals.
    buffer_call(|d, s| unsafe { proxy_get_buffer_bytes(kind as u32, start, max, d, s) })
}

/// Every entry of a header map, as bytes, in order (repeated names kept).
pub fn headers(map: Map) -> HostResult<Headers> {
    // SAFETY: out-pointers to locals.
    let bytes = buffer_call(|d, s| unsafe { proxy_get_header_map_pairs(map as u32, d, s) })?;
    match bytes {
        Some(b) => decode_pairs(&b).ok_or(HostError::Malformed),
        None => Ok(Vec::new()),
    }
}

/// One header's value (Envoy answers with the first of repeated values).
pub fn header(map: Map, name: &str) -> HostResult<Option<Vec<u8>>> {
    // SAFETY: pointer and length of a live &str; out-pointers to locals.
    buffer_call(|d, s| unsafe {
        proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), d, s)
    })
}

/// Sets `name` to `value`, replacing every existing value.
pub fn set_header(map: Map, name: &str, value: &[u8]) -> HostResult<()> {
    // SAFETY: pointers and lengths of live slices.
    status(unsafe {
        proxy_replace_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// Appends a value for `name`, keeping existing ones.
pub fn add_header(map: Map, name: &str, value: &[u8]) -> HostResult<()> {
    // SAFETY: pointers and lengths of live slices.
    status(unsafe {
        proxy_add_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

pub fn remove_header(map: Map, name: &str) -> HostResult<()> {
    // SAFETY: pointer and length of a live &str.
    status(unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
}

/// A property (`["source", "address"]`); `Ok(None)` when Envoy does not have it.
pub fn property(path: &[&str]) -> HostResult<Option<Vec<u8>>> {
    let encoded = path.join("\0");
    // SAFETY: pointer and length of a live String; out-pointers to locals.
    buffer_call(|d, s| unsafe { proxy_get_property(encoded.as_ptr(), encoded.len(), d, s) })
}

/// A shared-data value and its CAS token; `(None, None)` when the key does not exist.
pub fn shared_get(key: &str) -> HostResult<(Option<Vec<u8>>, Option<u32>)> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    let mut cas: u32 = 0;
    // SAFETY: pointer and length of a live &str; out-pointers to locals.
    let code =
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    match status(code) {
        // SAFETY: on Ok the host returned a buffer of `size` bytes (or null).
        Ok(()) => Ok((Some(unsafe { take(data, size) }), (cas != 0).then_some(cas))),
        Err(HostError::NotFound) => Ok((None, None)),
        Err(e) => Err(e),
    }
}

/// Writes a shared-data value; with `cas = Some(token)` only if the token still matches.
pub fn shared_set(key: &str, value: &[u8], cas: Option<u32>) -> HostResult<()> {
    // SAFETY: pointers and lengths of live slices.
    status(unsafe {
        proxy_set_shared_data(
            key.as_ptr(),
            key.len(),
            value.as_ptr(),
            value.len(),
            cas.unwrap_or(0),
        )
    })
}

pub fn register_queue(name: &str) -> HostResult<u32> {
    let mut id = 0u32;
    // SAFETY: pointer and length of a live &str; out-pointer to a local.
    status(unsafe { proxy_register_shared_queue(name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn enqueue(id: u32, value: &[u8]) -> HostResult<()> {
    // SAFETY: pointer and length of a live slice.
    status(unsafe { proxy_enqueue_shared_queue(id, value.as_ptr(), value.len()) })
}

/// The next queued message; `Ok(None)` when the queue is empty.
pub fn dequeue(id: u32) -> HostResult<Option<Vec<u8>>> {
    // SAFETY: out-pointers to locals.
    match buffer_call(|d, s| unsafe { proxy_dequeue_shared_queue(id, d, s) }) {
        Err(HostError::Empty) => Ok(None),
        other => other,
    }
}

/// Resumes a paused request (`proxy_continue_stream(HttpRequest)`).
pub fn resume_request() -> HostResult<()> {
    // SAFETY: plain value.
    status(unsafe { proxy_continue_stream(0) })
}

/// Resumes a paused response.
pub fn resume_response() -> HostResult<()> {
    // SAFETY: plain value.
    status(unsafe { proxy_continue_stream(1) })
}

/// Answers the current request locally. `details` shows in Envoy's access log
/// (`%RESPONSE_CODE_DETAILS%`).
pub fn send_local_response(
    status_code: u32,
    details: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> HostResult<()> {
    let encoded = encode_pairs(headers);
    // SAFETY: pointers and lengths of live slices.
    status(unsafe {
        proxy_send_local_response(
            status_code,
            details.as_ptr(),
            details.len(),
            if body.is_empty() {
                null()
            } else {
                body.as_ptr()
            },
            body.len(),
            encoded.as_ptr(),
            encoded.len(),
            -1,
        )
    })
}

pub fn set_effective_context(context_id: u32) -> HostResult<()> {
    // SAFETY: plain value.
    status(unsafe { proxy_set_effective_context(context_id) })
}

pub fn call_foreign_function(name: &str, args: &[u8]) -> HostResult<Option<Vec<u8>>> {
    // SAFETY: pointers and lengths of live slices; out-pointers to locals.
    buffer_call(|d, s| unsafe {
        proxy_call_foreign_function(name.as_ptr(), name.len(), args.as_ptr(), args.len(), d, s)
    })
}

pub fn define_metric(kind: MetricKind, name: &str) -> HostResult<u32> {
    let mut id = 0u32;
    // SAFETY: pointer and length of a live &str; out-pointer to a local.
    status(unsafe { proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, by: i64) -> HostResult<()> {
    // SAFETY: plain values.
    status(unsafe { proxy_increment_metric(id, by) })
}

pub fn record_metric(id: u32, value: u64) -> HostResult<()> {
    // SAFETY: plain values.
    status(unsafe { proxy_record_metric(id, value) })
}

pub fn get_metric(id: u32) -> HostResult<u64> {
    let mut v = 0u64;
    // SAFETY: out-pointer to a local.
    status(unsafe { proxy_get_metric(id, &mut v) })?;
    Ok(v)
}

/// Decodes the ABI's header-map serialization: a u32 count, `count` pairs of u32 sizes, then
/// each name and value followed by a NUL. `None` when the bytes do not add up.
pub fn decode_pairs(bytes: &[u8]) -> Option<Headers> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let u32_at = |at: usize| -> Option<usize> {
        let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(b)).ok()
    };
    let count = u32_at(0)?;
    let mut data = count.checked_mul(8)?.checked_add(4)?;
    if data > bytes.len() {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let sizes = 4 + i * 8;
        let (name_len, value_len) = (u32_at(sizes)?, u32_at(sizes + 4)?);
        let name = bytes.get(data..data.checked_add(name_len)?)?.to_vec();
        data = data.checked_add(name_len)?.checked_add(1)?;
        let value = bytes.get(data..data.checked_add(value_len)?)?.to_vec();
        data = data.checked_add(value_len)?.checked_add(1)?;
        out.push((name, value));
    }
    Some(out)
}

/// Encodes a header list in the ABI's header-map serialization.
pub fn encode_pairs(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(k, v)| k.len() + v.len() + 10)
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    let len32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&len32(pairs.len()));
    for (k, v) in pairs {
        out.extend_from_slice(&len32(k.len()));
        out.extend_from_slice(&len32(v.len()));
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_with_any_bytes() {
        let pairs: Vec<(&str, &[u8])> = vec![
            ("x-user-id", b"caf\xe9"),
            ("if-none-match", b"\"abc\xfc\""),
            ("empty", b""),
        ];
        let decoded = decode_pairs(&encode_pairs(&pairs)).unwrap();
        assert_eq!(decoded.len(), 3);
        assert_eq!(decoded[0], (b"x-user-id".to_vec(), b"caf\xe9".to_vec()));
        assert_eq!(decoded[1].1, b"\"abc\xfc\"".to_vec());
        assert_eq!(decoded[2].1, Vec::<u8>::new());
    }

    #[test]
    fn malformed_maps_are_errors_not_panics() {
        let good = encode_pairs(&[("a", b"1"), ("b", b"22")]);
        for cut in 1..good.len() {
            // Every truncation either decodes to fewer bytes' worth or is rejected; never panics.
            let _ = decode_pairs(&good[..cut]);
        }
        assert!(decode_pairs(&[0xff, 0xff, 0xff, 0xff]).is_none());
        assert!(decode_pairs(&[1, 0, 0]).is_none());
        let mut huge = good.clone();
        huge[4] = 0xff;
        huge[5] = 0xff;
        assert!(decode_pairs(&huge).is_none());
    }
}
