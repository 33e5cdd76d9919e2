//! The proxy-wasm ABI 0.2.1 host functions (module `env`), with Envoy's semantics: status codes,
//! header-map and buffer rules, shared-data CAS, queues, metrics and callouts. Nothing here calls
//! back into the module except its allocator; effects on streams (local replies, resumes, resets)
//! are recorded and applied by the host after the callback returns, as Envoy defers them.

use crate::state::{lock, CallResponse, Metric, MetricKind, PendingCallout, Queue, Stream, Vm};
use crate::types::{Callout, CalloutKind, Headers, LocalReply, LogEntry, LogLevel};
use std::time::Duration;
use wasmtime::{Caller, Error, Linker, Result};

pub(crate) const OK: i32 = 0;
pub(crate) const NOT_FOUND: i32 = 1;
pub(crate) const BAD_ARGUMENT: i32 = 2;
pub(crate) const SERIALIZATION_FAILURE: i32 = 3;
pub(crate) const PARSE_FAILURE: i32 = 4;
pub(crate) const EMPTY: i32 = 7;
pub(crate) const CAS_MISMATCH: i32 = 8;

type C<'a> = Caller<'a, Vm>;

fn trap(msg: impl Into<String>) -> Error {
    Error::msg(msg.into())
}

/// Host calls Envoy allows while the module initialises (`_initialize`/`_start`, i.e. the body
/// of the Rust SDK's `proxy_wasm::main!`): proxy-wasm-cpp-host `WasmBase::startVm` sets a
/// restricted-callback list of exactly these; any other host call traps with
/// `restricted_callback` and the VM fails to start.
pub(crate) const ALLOWED_DURING_INIT: &[(&str, &str)] = &[
    ("env", "proxy_log"),
    ("wasi_snapshot_preview1", "fd_write"),
    ("wasi_snapshot_preview1", "args_sizes_get"),
    ("wasi_snapshot_preview1", "args_get"),
    ("wasi_snapshot_preview1", "environ_sizes_get"),
    ("wasi_snapshot_preview1", "environ_get"),
    ("wasi_snapshot_preview1", "fd_prestat_get"),
    ("wasi_snapshot_preview1", "fd_prestat_dir_name"),
    ("wasi_snapshot_preview1", "clock_time_get"),
    ("wasi_snapshot_preview1", "random_get"),
];

/// Traps, as Envoy does, when the module makes a host call it may not make during
/// initialisation; the trap fails the worker like any other (a module test fails with it).
pub(crate) fn restricted(vm: &Vm, module: &str, name: &str) -> Result<()> {
    *lock(&vm.shared)
        .host_calls
        .entry(name.to_owned())
        .or_default() += 1;
    if !vm.initializing || ALLOWED_DURING_INIT.contains(&(module, name)) {
        return Ok(());
    }
    Err(trap(format!(
        "restricted_callback: {module}.{name} called during module initialisation \
         (_initialize / the body of proxy_wasm::main!); Envoy fails the VM here and only allows \
         proxy_log, fd_write, args/environ, fd_prestat, clock_time_get and random_get: make the \
         call from on_vm_start or on_configure instead"
    )))
}

pub(crate) fn read(c: &C<'_>, ptr: i32, len: i32) -> Result<Vec<u8>> {
    let memory = c
        .data()
        .memory
        .ok_or_else(|| trap("module exports no memory"))?;
    let start = ptr as u32 as usize;
    let end = start
        .checked_add(len as u32 as usize)
        .ok_or_else(|| trap("pointer overflow"))?;
    memory
        .data(c)
        .get(start..end)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| trap(format!("guest pointer {start}..{end} out of bounds")))
}

fn read_string(c: &C<'_>, ptr: i32, len: i32) -> Result<String> {
    Ok(String::from_utf8_lossy(&read(c, ptr, len)?).into_owned())
}

pub(crate) fn write(c: &mut C<'_>, ptr: i32, bytes: &[u8]) -> Result<()> {
    let memory = c
        .data()
        .memory
        .ok_or_else(|| trap("module exports no memory"))?;
    let start = ptr as u32 as usize;
    let end = start + bytes.len();
    let data = memory.data_mut(c);
    let slot = data
        .get_mut(start..end)
        .ok_or_else(|| trap(format!("guest pointer {start}..{end} out of bounds")))?;
    slot.copy_from_slice(bytes);
    Ok(())
}

pub(crate) fn write_u32(c: &mut C<'_>, ptr: i32, value: u32) -> Result<()> {
    write(c, ptr, &value.to_le_bytes())
}

/// Copies `bytes` into memory the module allocates and stores pointer and size, as the SDK
/// expects (an empty value is a null pointer).
fn copy_out(c: &mut C<'_>, bytes: &[u8], ptr_ptr: i32, size_ptr: i32) -> Result<()> {
    if bytes.is_empty() {
        write_u32(c, ptr_ptr, 0)?;
        return write_u32(c, size_ptr, 0);
    }
    let malloc = c
        .data()
        .malloc
        .clone()
        .ok_or_else(|| trap("module exports no proxy_on_memory_allocate/malloc"))?;
    let len = i32::try_from(bytes.len()).map_err(|_| trap("value too large"))?;
    let ptr = malloc.call(&mut *c, len)?;
    if ptr == 0 {
        return Err(trap("module allocator returned null"));
    }
    write(c, ptr, bytes)?;
    write_u32(c, ptr_ptr, ptr as u32)?;
    write_u32(c, size_ptr, bytes.len() as u32)
}

/// The ABI's map encoding: count, (key len, value len) pairs, then NUL-terminated keys/values.
pub(crate) fn serialize_map(map: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(map.len() as u32).to_le_bytes());
    for (k, v) in map {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in map {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

pub(crate) fn deserialize_map(bytes: &[u8]) -> Option<Headers> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let word = |at: usize| -> Option<usize> {
        bytes
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(|b| u32::from_le_bytes(b) as usize)
    };
    let count = word(0)?;
    let mut data = 4usize.checked_add(count.checked_mul(8)?)?;
    let mut map = Vec::with_capacity(count);
    for i in 0..count {
        let klen = word(4 + i * 8)?;
        let vlen = word(8 + i * 8)?;
        let key = bytes.get(data..data + klen)?;
        data += klen + 1;
        let value = bytes.get(data..data + vlen)?;
        data += vlen + 1;
        // Names are tokens (Envoy validates them); values are bytes, passed through unchanged.
        map.push((String::from_utf8_lossy(key).into_owned(), value.to_vec()));
    }
    Some(map)
}

/// Map types 0-3 are the stream's; 6-7 the callout response's; 4-5 gRPC metadata (empty).
fn map_ref(vm: &Vm, map_type: i32) -> Result<&Headers, i32> {
    const NO_GRPC_METADATA: &Headers = &Vec::new();
    match map_type {
        0..=3 => {
            let stream = vm.stream().ok_or(BAD_ARGUMENT)?;
            stream_map(stream, map_type).ok_or(if stream.log_phase {
                NOT_FOUND
            } else {
                BAD_ARGUMENT
            })
        }
        4 | 5 => Ok(NO_GRPC_METADATA),
        6 => vm
            .call_response
            .as_ref()
            .map(|r| &r.headers)
            .ok_or(BAD_ARGUMENT),
        7 => vm
            .call_response
            .as_ref()
            .map(|r| &r.trailers)
            .ok_or(BAD_ARGUMENT),
        _ => Err(BAD_ARGUMENT),
    }
}

fn stream_map(stream: &Stream, map_type: i32) -> Option<&Headers> {
    match map_type {
        0 => stream.request_headers.as_ref(),
        1 => stream.request_trailers.as_ref(),
        2 => stream.response_headers.as_ref(),
        _ => stream.response_trailers.as_ref(),
    }
}

fn map_mut(vm: &mut Vm, map_type: i32) -> Result<&mut Headers, i32> {
    match map_type {
        0..=3 => {
            let stream = vm.stream_mut().ok_or(BAD_ARGUMENT)?;
            let map = match map_type {
                0 => stream.request_headers.as_mut(),
                1 => stream.request_trailers.as_mut(),
                2 => stream.response_headers.as_mut(),
                _ => stream.response_trailers.as_mut(),
            };
            map.ok_or(BAD_ARGUMENT)
        }
        6 => vm
            .call_response
            .as_mut()
            .map(|r| &mut r.headers)
            .ok_or(BAD_ARGUMENT),
        7 => vm
            .call_response
            .as_mut()
            .map(|r| &mut r.trailers)
            .ok_or(BAD_ARGUMENT),
        _ => Err(BAD_ARGUMENT),
    }
}

/// Envoy's `setCopy`: one value under the name, at the first occurrence's position.
pub(crate) fn replace_header(map: &mut Headers, key: &str, value: &[u8]) {
    match map.iter().position(|(k, _)| k == key) {
        Some(first) => {
            map[first].1 = value.to_vec();
            let mut i = 0;
            map.retain(|(k, _)| {
                let keep = k != key || i == first;
                i += 1;
                keep
            });
        }
        None => map.push((key.to_string(), value.to_vec())),
    }
}

fn buffer(vm: &Vm, buffer_type: i32) -> Option<Vec<u8>> {
    match buffer_type {
        0 => vm.stream().map(|s| s.request_body.clone()),
        1 => vm.stream().map(|s| s.response_body.clone()),
        4 | 5 => vm.call_response.as_ref().map(|r| r.body.clone()),
        6 => Some(vm.vm_config.clone()),
        7 => Some(vm.plugin_config.clone()),
        _ => None,
    }
}

/// Envoy's body replacement rules for `proxy_set_buffer_bytes`.
fn splice(buffer: &mut Vec<u8>, start: usize, size: usize, data: &[u8]) -> bool {
    if start == 0 {
        if size == 0 {
            let mut next = data.to_vec();
            next.extend_from_slice(buffer);
            *buffer = next;
        } else if size >= buffer.len() {
            *buffer = data.to_vec();
        } else {
            return false;
        }
    } else if start >= buffer.len() {
        buffer.extend_from_slice(data);
    } else {
        return false;
    }
    true
}

/// Resolves a property: the stream's own, then values derived from its headers, then host-level.
pub(crate) fn property(vm: &Vm, path: &str) -> Option<Vec<u8>> {
    let stream = vm.stream();
    if let Some(v) = stream.and_then(|s| s.properties.get(path)) {
        return Some(v.clone());
    }
    if let Some(stream) = stream {
        let req = |name: &str| {
            stream
                .request_headers
                .as_ref()
                .and_then(|h| crate::types::header_bytes(h, name))
                .map(<[u8]>::to_vec)
        };
        let query_at = |p: &[u8]| p.iter().position(|&b| b == b'?');
        let derived = match path {
            "request.path" => req(":path"),
            "request.url_path" => req(":path").map(|p| match query_at(&p) {
                Some(at) => p[..at].to_vec(),
                None => p,
            }),
            "request.query" => req(":path").map(|p| match query_at(&p) {
                Some(at) => p[at + 1..].to_vec(),
                None => Vec::new(),
            }),
            "request.method" => req(":method"),
            "request.host" => req(":authority"),
            "request.scheme" => req(":scheme"),
            "request.id" => req("x-request-id"),
            "request.useragent" => req("user-agent"),
            "request.referer" => req("referer"),
            _ => None,
        };
        if let Some(v) = derived {
            return Some(v);
        }
        if path == "upstream.address" && stream.upstream.is_none() {
            // As Envoy: no upstream host before the request reached one (a local reply never
            // does), whatever the host-level property says.
            return None;
        }
        if path == "response.code_details" {
            // As Envoy: `via_upstream` for a response from the upstream, else the details the
            // local reply was sent with.
            if let Some(reply) = &stream.local_reply {
                return Some(reply.details.clone().into_bytes());
            }
            if stream.upstream.is_some() && stream.response_headers.is_some() {
                return Some(b"via_upstream".to_vec());
            }
        }
        if path == "response.code" {
            let code: Option<i64> = stream
                .response_headers
                .as_ref()
                .and_then(|h| crate::types::header(h, ":status"))
                .and_then(|s| s.parse().ok());
            return code.map(|c| c.to_le_bytes().to_vec());
        }
    }
    lock(&vm.shared).properties.get(path).cloned()
}

/// Links every host function the modules import, by area.
pub(crate) fn link(linker: &mut Linker<Vm>) -> Result<()> {
    link_log_and_time(linker)?;
    link_buffers_and_headers(linker)?;
    link_properties_and_shared_data(linker)?;
    link_streams(linker)?;
    link_callouts(linker)?;
    link_context_and_metrics(linker)?;
    Ok(())
}

/// The host functions for log, log level, clock and tick.
fn link_log_and_time(linker: &mut Linker<Vm>) -> Result<()> {
    linker.func_wrap(
        "env",
        "proxy_log",
        |c: C<'_>, level: i32, ptr: i32, len: i32| -> Result<i32> {
            restricted(c.data(), "env", "proxy_log")?;
            let message = read_string(&c, ptr, len)?;
            let worker = c.data().worker;
            lock(&c.data().shared).logs.push(LogEntry {
                worker,
                level: LogLevel::from_abi(level),
                message,
            });
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut c: C<'_>, ptr: i32| -> Result<i32> {
            restricted(c.data(), "env", "proxy_get_log_level")?;
            // Everything is captured; filtering is the test's business.
            write_u32(&mut c, ptr, 0)?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: C<'_>, ptr: i32| -> Result<i32> {
            restricted(c.data(), "env", "proxy_get_current_time_nanoseconds")?;
            let now = lock(&c.data().shared).now_nanos;
            write(&mut c, ptr, &now.to_le_bytes())?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, ms: i32| -> Result<i32> {
            restricted(c.data(), "env", "proxy_set_tick_period_milliseconds")?;
            let now = lock(&c.data().shared).now_nanos;
            let ms = ms as u32;
            let vm = c.data_mut();
            if ms == 0 {
                vm.tick_period = None;
                vm.next_tick_at = None;
            } else {
                let period = Duration::from_millis(u64::from(ms));
                vm.tick_period = Some(period);
                vm.next_tick_at = Some(now + period.as_nanos() as u64);
            }
            Ok(OK)
        },
    )?;
    Ok(())
}

/// The host functions for buffers and header maps.
fn link_buffers_and_headers(linker: &mut Linker<Vm>) -> Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: C<'_>,
         buffer_type: i32,
         start: i32,
         max: i32,
         ptr_ptr: i32,
         size_ptr: i32|
         -> Result<i32> {
            restricted(c.data(), "env", "proxy_get_buffer_bytes")?;
            let Some(bytes) = buffer(c.data(), buffer_type) else {
                return Ok(NOT_FOUND);
            };
            let start = (start as u32 as usize).min(bytes.len());
            let end = start.saturating_add(max as u32 as usize).min(bytes.len());
            copy_out(&mut c, &bytes[start..end], ptr_ptr, size_ptr)?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: C<'_>,
         buffer_type: i32,
         start: i32,
         size: i32,
         ptr: i32,
         len: i32|
         -> Result<i32> {
            restricted(c.data(), "env", "proxy_set_buffer_bytes")?;
            let data = read(&c, ptr, len)?;
            let (start, size) = (start as u32 as usize, size as u32 as usize);
            let vm = c.data_mut();
            let target = match buffer_type {
                0 => vm.stream_mut().map(|s| &mut s.request_body),
                1 => vm.stream_mut().map(|s| &mut s.response_body),
                4 | 5 => vm.call_response.as_mut().map(|r| &mut r.body),
                _ => None,
            };
            Ok(match target {
                Some(buf) => {
                    if splice(buf, start, size, &data) {
                        OK
                    } else {
                        BAD_ARGUMENT
                    }
                }
                None => NOT_FOUND,
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: C<'_>, map_type: i32, ptr_ptr: i32, size_ptr: i32| -> Result<i32> {
            restricted(c.data(), "env", "proxy_get_header_map_pairs")?;
            let bytes = match map_ref(c.data(), map_type) {
                Ok(map) if map.is_empty() => Vec::new(),
                Ok(map) => serialize_map(map),
                Err(status) => return Ok(status),
            };
            copy_out(&mut c, &bytes, ptr_ptr, size_ptr)?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: C<'_>, map_type: i32, ptr: i32, len: i32| -> Result<i32> {
            restricted(c.data(), "env", "proxy_set_header_map_pairs")?;
            let bytes = read(&c, ptr, len)?;
            let Some(pairs) = deserialize_map(&bytes) else {
                return Ok(SERIALIZATION_FAILURE);
            };
            Ok(match map_mut(c.data_mut(), map_type) {
                Ok(map) => {
                    *map = pairs
                        .into_iter()
                        .map(|(k, v)| (k.to_ascii_lowercase(), v))
                        .collect();
                    OK
                }
                Err(status) => status,
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: C<'_>,
         map_type: i32,
         kptr: i32,
         klen: i32,
         ptr_ptr: i32,
         size_ptr: i32|
         -> Result<i32> {
            restricted(c.data(), "env", "proxy_get_header_map_value")?;
            let key = read_string(&c, kptr, klen)?.to_ascii_lowercase();
            let value = match map_ref(c.data(), map_type) {
                // Envoy returns the first value of a repeated header.
                Ok(map) => match map.iter().find(|(k, _)| *k == key) {
                    Some((_, v)) => v.clone(),
                    None => return Ok(NOT_FOUND),
                },
                Err(status) => return Ok(status),
            };
            copy_out(&mut c, &value, ptr_ptr, size_ptr)?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: C<'_>, map_type: i32, kptr: i32, klen: i32| -> Result<i32> {
            restricted(c.data(), "env", "proxy_remove_header_map_value")?;
            let key = read_string(&c, kptr, klen)?.to_ascii_lowercase();
            Ok(match map_mut(c.data_mut(), map_type) {
                Ok(map) => {
                    map.retain(|(k, _)| *k != key);
                    OK
                }
                Err(status) => status,
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: C<'_>, map_type: i32, kptr: i32, klen: i32, vptr: i32, vlen: i32| -> Result<i32> {
            restricted(c.data(), "env", "proxy_replace_header_map_value")?;
            let key = read_string(&c, kptr, klen)?.to_ascii_lowercase();
            let value = read(&c, vptr, vlen)?;
            Ok(match map_mut(c.data_mut(), map_type) {
                Ok(map) => {
                    replace_header(map, &key, &value);
                    OK
                }
                Err(status) => status,
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: C<'_>, map_type: i32, kptr: i32, klen: i32, vptr: i32, vlen: i32| -> Result<i32> {
            restricted(c.data(), "env", "proxy_add_header_map_value")?;
            let key = read_string(&c, kptr, klen)?.to_ascii_lowercase();
            let value = read(&c, vptr, vlen)?;
            Ok(match map_mut(c.data_mut(), map_type) {
                Ok(map) => {
                    map.push((key, value));
                    OK
                }
                Err(status) => status,
            })
        },
    )?;
    Ok(())
}

/// The host functions for properties, shared data and shared queues.
fn link_properties_and_shared_data(linker: &mut Linker<Vm>) -> Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: C<'_>, pptr: i32, plen: i32, ptr_ptr: i32, size_ptr: i32| -> Result<i32> {
            restricted(c.data(), "env", "proxy_get_property")?;
            let path = read_string(&c, pptr, plen)?.replace('\0', ".");
            match property(c.data(), &path) {
                Some(value) => {
                    copy_out(&mut c, &value, ptr_ptr, size_ptr)?;
                    Ok(OK)
                }
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: C<'_>, pptr: i32, plen: i32, vptr: i32, vlen: i32| -> Result<i32> {
            restricted(c.data(), "env", "proxy_set_property")?;
            let path = read_string(&c, pptr, plen)?.replace('\0', ".");
            let value = read(&c, vptr, vlen)?;
            let vm = c.data_mut();
            match vm.stream_mut() {
                Some(stream) => {
                    stream.properties.insert(path, value);
                }
                None => {
                    lock(&vm.shared).properties.insert(path, value);
                }
            }
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: C<'_>,
         kptr: i32,
         klen: i32,
         ptr_ptr: i32,
         size_ptr: i32,
         cas_ptr: i32|
         -> Result<i32> {
            restricted(c.data(), "env", "proxy_get_shared_data")?;
            let key = read_string(&c, kptr, klen)?;
            let entry = lock(&c.data().shared).data.get(&key).cloned();
            match entry {
                Some((value, cas)) => {
                    copy_out(&mut c, &value, ptr_ptr, size_ptr)?;
                    write_u32(&mut c, cas_ptr, cas)?;
                    Ok(OK)
                }
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |c: C<'_>, kptr: i32, klen: i32, vptr: i32, vlen: i32, cas: i32| -> Result<i32> {
            restricted(c.data(), "env", "proxy_set_shared_data")?;
            let key = read_string(&c, kptr, klen)?;
            let value = read(&c, vptr, vlen)?;
            let written = lock(&c.data().shared).set_shared(&key, value, cas as u32);
            Ok(if written { OK } else { CAS_MISMATCH })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: C<'_>, nptr: i32, nlen: i32, id_ptr: i32| -> Result<i32> {
            restricted(c.data(), "env", "proxy_register_shared_queue")?;
            let name = read_string(&c, nptr, nlen)?;
            let owner = (c.data().worker, c.data().root_id);
            let id = {
                let mut shared = lock(&c.data().shared);
                let vm_id = shared.vm_id.clone();
                match shared
                    .queues
                    .iter()
                    .position(|q| q.vm_id == vm_id && q.name == name)
                {
                    Some(i) => {
                        shared.queues[i].owner = owner;
                        i
                    }
                    None => {
                        shared.queues.push(Queue {
                            vm_id,
                            name,
                            items: Default::default(),
                            owner,
                        });
                        shared.queues.len() - 1
                    }
                }
            };
            write_u32(&mut c, id_ptr, id as u32 + 1)?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: C<'_>, vptr: i32, vlen: i32, nptr: i32, nlen: i32, id_ptr: i32| -> Result<i32> {
            restricted(c.data(), "env", "proxy_resolve_shared_queue")?;
            let vm_id = read_string(&c, vptr, vlen)?;
            let name = read_string(&c, nptr, nlen)?;
            let found = lock(&c.data().shared)
                .queues
                .iter()
                .position(|q| q.vm_id == vm_id && q.name == name);
            match found {
                Some(i) => {
                    write_u32(&mut c, id_ptr, i as u32 + 1)?;
                    Ok(OK)
                }
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |c: C<'_>, id: i32, ptr: i32, len: i32| -> Result<i32> {
            restricted(c.data(), "env", "proxy_enqueue_shared_queue")?;
            let value = read(&c, ptr, len)?;
            let mut shared = lock(&c.data().shared);
            let index = (id as u32 as usize).wrapping_sub(1);
            let Some(queue) = shared.queues.get_mut(index) else {
                return Ok(NOT_FOUND);
            };
            queue.items.push_back(value);
            let (worker, root) = queue.owner;
            shared.queue_ready.push_back((worker, root, id as u32));
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: C<'_>, id: i32, ptr_ptr: i32, size_ptr: i32| -> Result<i32> {
            restricted(c.data(), "env", "proxy_dequeue_shared_queue")?;
            let item = {
                let mut shared = lock(&c.data().shared);
                let index = (id as u32 as usize).wrapping_sub(1);
                match shared.queues.get_mut(index) {
                    None => return Ok(NOT_FOUND),
                    Some(q) => q.items.pop_front(),
                }
            };
            match item {
                Some(value) => {
                    copy_out(&mut c, &value, ptr_ptr, size_ptr)?;
                    Ok(OK)
                }
                None => Ok(EMPTY),
            }
        },
    )?;
    Ok(())
}

/// The host functions for stream control and local replies.
fn link_streams(linker: &mut Linker<Vm>) -> Result<()> {
    linker.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut c: C<'_>, stream_type: i32| -> Result<i32> {
            restricted(c.data(), "env", "proxy_continue_stream")?;
            if !(0..=1).contains(&stream_type) {
                return Ok(BAD_ARGUMENT);
            }
            if let Some(stream) = c.data_mut().stream_mut() {
                stream.resume = Some(stream_type);
            }
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_close_stream",
        |mut c: C<'_>, _stream_type: i32| -> Result<i32> {
            restricted(c.data(), "env", "proxy_close_stream")?;
            if let Some(stream) = c.data_mut().stream_mut() {
                stream.reset_requested = true;
            }
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: C<'_>,
         status: i32,
         dptr: i32,
         dlen: i32,
         bptr: i32,
         blen: i32,
         hptr: i32,
         hlen: i32,
         grpc_status: i32|
         -> Result<i32> {
            restricted(c.data(), "env", "proxy_send_local_response")?;
            let details = read_string(&c, dptr, dlen)?;
            let body = read(&c, bptr, blen)?;
            let headers = deserialize_map(&read(&c, hptr, hlen)?)
                .ok_or_else(|| trap("send_local_response: malformed header map"))?;
            let reply = LocalReply {
                status: status as u32,
                headers: headers
                    .into_iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v))
                    .collect(),
                body,
                details,
                grpc_status: (grpc_status >= 0).then_some(grpc_status),
            };
            // A root context has no stream to answer: Envoy ignores it.
            if let Some(stream) = c.data_mut().stream_mut() {
                stream.pending_reply = Some(reply);
            }
            Ok(OK)
        },
    )?;
    Ok(())
}

/// The host functions for HTTP and gRPC callouts.
fn link_callouts(linker: &mut Linker<Vm>) -> Result<()> {
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: C<'_>,
         uptr: i32,
         ulen: i32,
         hptr: i32,
         hlen: i32,
         bptr: i32,
         blen: i32,
         tptr: i32,
         tlen: i32,
         timeout_ms: i32,
         token_ptr: i32|
         -> Result<i32> {
            restricted(c.data(), "env", "proxy_http_call")?;
            let cluster = read_string(&c, uptr, ulen)?;
            let Some(headers) = deserialize_map(&read(&c, hptr, hlen)?) else {
                return Ok(BAD_ARGUMENT);
            };
            let body = read(&c, bptr, blen)?;
            let trailers = deserialize_map(&read(&c, tptr, tlen)?).unwrap_or_default();
            // Envoy refuses a callout without these (and to an unknown cluster).
            let required = [":method", ":path", ":authority"];
            if required
                .iter()
                .any(|name| crate::types::header(&headers, name).is_none())
            {
                return Ok(BAD_ARGUMENT);
            }
            let kind = CalloutKind::Http {
                headers,
                body,
                trailers,
            };
            match register_callout(&c, cluster, kind, timeout_ms as u32) {
                Some(token) => {
                    write_u32(&mut c, token_ptr, token)?;
                    Ok(OK)
                }
                None => Ok(BAD_ARGUMENT),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_call",
        |mut c: C<'_>,
         uptr: i32,
         ulen: i32,
         sptr: i32,
         slen: i32,
         mptr: i32,
         mlen: i32,
         mdptr: i32,
         mdlen: i32,
         msgptr: i32,
         msglen: i32,
         timeout_ms: i32,
         token_ptr: i32|
         -> Result<i32> {
            restricted(c.data(), "env", "proxy_grpc_call")?;
            let cluster = read_string(&c, uptr, ulen)?;
            let kind = CalloutKind::Grpc {
                service: read_string(&c, sptr, slen)?,
                method: read_string(&c, mptr, mlen)?,
                metadata: deserialize_map(&read(&c, mdptr, mdlen)?).unwrap_or_default(),
                message: read(&c, msgptr, msglen)?,
            };
            match register_callout(&c, cluster, kind, timeout_ms as u32) {
                Some(token) => {
                    write_u32(&mut c, token_ptr, token)?;
                    Ok(OK)
                }
                // Envoy's `Context::grpcCall`: an unknown cluster is `ParseFailure` (HTTP
                // callouts say `BadArgument`).
                None => Ok(PARSE_FAILURE),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_stream",
        |mut c: C<'_>,
         uptr: i32,
         ulen: i32,
         sptr: i32,
         slen: i32,
         mptr: i32,
         mlen: i32,
         mdptr: i32,
         mdlen: i32,
         token_ptr: i32|
         -> Result<i32> {
            restricted(c.data(), "env", "proxy_grpc_stream")?;
            let cluster = read_string(&c, uptr, ulen)?;
            let kind = CalloutKind::Grpc {
                service: read_string(&c, sptr, slen)?,
                method: read_string(&c, mptr, mlen)?,
                metadata: deserialize_map(&read(&c, mdptr, mdlen)?).unwrap_or_default(),
                message: Vec::new(),
            };
            match register_callout(&c, cluster, kind, 0) {
                Some(token) => {
                    write_u32(&mut c, token_ptr, token)?;
                    Ok(OK)
                }
                None => Ok(BAD_ARGUMENT),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_send",
        |c: C<'_>, token: i32, ptr: i32, len: i32, _end: i32| -> Result<i32> {
            restricted(c.data(), "env", "proxy_grpc_send")?;
            let message = read(&c, ptr, len)?;
            let mut shared = lock(&c.data().shared);
            match shared
                .callouts
                .iter_mut()
                .find(|p| p.callout.id == token as u32)
            {
                Some(p) => {
                    if let CalloutKind::Grpc { message: m, .. } = &mut p.callout.kind {
                        m.extend_from_slice(&message);
                    }
                    Ok(OK)
                }
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    for name in ["proxy_grpc_cancel", "proxy_grpc_close"] {
        linker.func_wrap("env", name, move |c: C<'_>, token: i32| -> Result<i32> {
            restricted(c.data(), "env", name)?;
            let mut shared = lock(&c.data().shared);
            let before = shared.callouts.len();
            shared.callouts.retain(|p| p.callout.id != token as u32);
            Ok(if shared.callouts.len() < before {
                OK
            } else {
                NOT_FOUND
            })
        })?;
    }
    linker.func_wrap(
        "env",
        "proxy_get_status",
        |mut c: C<'_>, code_ptr: i32, ptr_ptr: i32, size_ptr: i32| -> Result<i32> {
            restricted(c.data(), "env", "proxy_get_status")?;
            let (code, message) = c.data().grpc_status.clone();
            write_u32(&mut c, code_ptr, code)?;
            copy_out(
                &mut c,
                message.as_deref().unwrap_or("").as_bytes(),
                ptr_ptr,
                size_ptr,
            )?;
            Ok(OK)
        },
    )?;
    Ok(())
}

/// The host functions for effective context, foreign functions and metrics.
fn link_context_and_metrics(linker: &mut Linker<Vm>) -> Result<()> {
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut c: C<'_>, id: i32| -> Result<i32> {
            restricted(c.data(), "env", "proxy_set_effective_context")?;
            let id = id as u32;
            let vm = c.data_mut();
            if vm.streams.contains_key(&id) || vm.roots.contains(&id) {
                vm.effective = id;
                Ok(OK)
            } else {
                Ok(BAD_ARGUMENT)
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |c: C<'_>, _np: i32, _nl: i32, _ap: i32, _al: i32, _rp: i32, _rs: i32| -> Result<i32> {
            restricted(c.data(), "env", "proxy_call_foreign_function")?;
            // No foreign functions are registered in the test host.
            Ok(NOT_FOUND)
        },
    )?;
    linker.func_wrap("env", "proxy_done", |mut c: C<'_>| -> Result<i32> {
        restricted(c.data(), "env", "proxy_done")?;
        c.data_mut().done_called = true;
        Ok(OK)
    })?;
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: C<'_>, metric_type: i32, nptr: i32, nlen: i32, id_ptr: i32| -> Result<i32> {
            restricted(c.data(), "env", "proxy_define_metric")?;
            let name = read_string(&c, nptr, nlen)?;
            let kind = match metric_type {
                0 => MetricKind::Counter,
                1 => MetricKind::Gauge,
                2 => MetricKind::Histogram,
                _ => return Ok(BAD_ARGUMENT),
            };
            let index = {
                let mut shared = lock(&c.data().shared);
                // Stats are process-wide by name, as in Envoy.
                match shared
                    .metrics
                    .iter()
                    .position(|m| m.name == name && m.kind == kind)
                {
                    Some(i) => i,
                    None => {
                        shared.metrics.push(Metric {
                            name,
                            kind,
                            value: 0,
                            samples: Vec::new(),
                        });
                        shared.metrics.len() - 1
                    }
                }
            };
            write_u32(&mut c, id_ptr, ((index as u32 + 1) << 2) | kind as u32)?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: C<'_>, id: i32, ptr: i32| -> Result<i32> {
            restricted(c.data(), "env", "proxy_get_metric")?;
            let value = {
                let shared = lock(&c.data().shared);
                match metric_index(&shared.metrics, id) {
                    None => return Ok(NOT_FOUND),
                    Some(i) if shared.metrics[i].kind == MetricKind::Histogram => {
                        return Ok(BAD_ARGUMENT)
                    }
                    Some(i) => shared.metrics[i].value,
                }
            };
            write(&mut c, ptr, &value.to_le_bytes())?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |c: C<'_>, id: i32, value: i64| -> Result<i32> {
            restricted(c.data(), "env", "proxy_record_metric")?;
            let mut shared = lock(&c.data().shared);
            let Some(i) = metric_index(&shared.metrics, id) else {
                return Ok(NOT_FOUND);
            };
            let metric = &mut shared.metrics[i];
            let value = value as u64;
            match metric.kind {
                MetricKind::Counter => metric.value = metric.value.saturating_add(value),
                MetricKind::Gauge => metric.value = value,
                MetricKind::Histogram => metric.samples.push(value),
            }
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |c: C<'_>, id: i32, offset: i64| -> Result<i32> {
            restricted(c.data(), "env", "proxy_increment_metric")?;
            let mut shared = lock(&c.data().shared);
            let Some(i) = metric_index(&shared.metrics, id) else {
                return Ok(NOT_FOUND);
            };
            let metric = &mut shared.metrics[i];
            match metric.kind {
                MetricKind::Counter if offset < 0 => return Ok(BAD_ARGUMENT),
                MetricKind::Counter | MetricKind::Gauge => {
                    metric.value = if offset >= 0 {
                        metric.value.saturating_add(offset as u64)
                    } else {
                        metric.value.saturating_sub(offset.unsigned_abs())
                    }
                }
                MetricKind::Histogram => return Ok(BAD_ARGUMENT),
            }
            Ok(OK)
        },
    )?;
    Ok(())
}

fn metric_index(metrics: &[Metric], id: i32) -> Option<usize> {
    let id = id as u32;
    let index = (id >> 2).checked_sub(1)? as usize;
    let metric = metrics.get(index)?;
    (metric.kind as u32 == id & 3).then_some(index)
}

/// Records a callout; `None` if the cluster is unknown to the host.
fn register_callout(c: &C<'_>, cluster: String, kind: CalloutKind, timeout_ms: u32) -> Option<u32> {
    let vm = c.data();
    let mut shared = lock(&vm.shared);
    if let Some(known) = &shared.clusters {
        if !known.contains(&cluster) {
            return None;
        }
    }
    let id = shared.next_token;
    shared.next_token += 1;
    let timeout = (timeout_ms > 0).then(|| Duration::from_millis(u64::from(timeout_ms)));
    let deadline = timeout.map(|t| shared.now_nanos + t.as_nanos() as u64);
    shared.callouts.push(PendingCallout {
        callout: Callout {
            id,
            worker: vm.worker,
            context: vm.effective,
            cluster,
            kind,
            timeout,
        },
        deadline,
    });
    Some(id)
}

/// Puts a callout's answer where the call-response host functions read it.
pub(crate) fn set_call_response(vm: &mut Vm, response: Option<CallResponse>) {
    vm.call_response = response;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        crate::types::text_headers(pairs)
    }

    #[test]
    fn map_encoding_round_trips_like_the_sdk() {
        let map = h(&[(":method", "GET"), ("x", ""), ("k", "v")]);
        let bytes = serialize_map(&map);
        assert_eq!(&bytes[..4], &3u32.to_le_bytes());
        assert_eq!(deserialize_map(&bytes), Some(map));
        assert_eq!(deserialize_map(&[]), Some(vec![]));
        assert_eq!(deserialize_map(&[9, 0, 0, 0]), None);
        // Values are bytes: a lone obs-text byte survives both ways unchanged.
        let raw: Headers = vec![("x-user-id".to_string(), b"caf\xe9".to_vec())];
        let bytes = serialize_map(&raw);
        assert!(bytes.windows(5).any(|w| w == b"caf\xe9\0"));
        assert_eq!(deserialize_map(&bytes), Some(raw));
    }

    #[test]
    fn replace_keeps_first_position_and_drops_repeats() {
        let mut map = h(&[("a", "1"), ("b", "2"), ("a", "3")]);
        replace_header(&mut map, "a", b"x");
        assert_eq!(map, h(&[("a", "x"), ("b", "2")]));
        replace_header(&mut map, "c", b"y");
        assert_eq!(map, h(&[("a", "x"), ("b", "2"), ("c", "y")]));
    }

    #[test]
    fn body_splice_follows_envoy() {
        let mut b = b"hello".to_vec();
        assert!(splice(&mut b, 0, 5, b"bye"));
        assert_eq!(b, b"bye");
        assert!(splice(&mut b, 0, 0, b">"));
        assert_eq!(b, b">bye");
        assert!(splice(&mut b, 4, 0, b"!"));
        assert_eq!(b, b">bye!");
        assert!(!splice(&mut b, 1, 2, b"x"));
        assert!(!splice(&mut b, 0, 2, b"x"));
    }
}
