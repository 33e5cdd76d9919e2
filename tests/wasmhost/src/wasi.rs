//! The `wasi_snapshot_preview1` imports a `wasm32-wasip1` proxy-wasm module needs, as Envoy
//! provides them: no files or arguments, stdout/stderr logged at info/error, clocks reading the
//! host's virtual clock, deterministic random bytes.

use crate::abi::{read, restricted, write, write_u32};
use crate::state::{lock, Vm};
use crate::types::{LogEntry, LogLevel};
use wasmtime::{Caller, Error, Linker, Result};

const WASI: &str = "wasi_snapshot_preview1";
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_SPIPE: i32 = 70;

type C<'a> = Caller<'a, Vm>;

/// Writes a zero count and zero size (empty argument / environment lists).
fn empty_list(c: &mut C<'_>, count_ptr: i32, size_ptr: i32) -> Result<i32> {
    write_u32(c, count_ptr, 0)?;
    write_u32(c, size_ptr, 0)?;
    Ok(ERRNO_SUCCESS)
}

pub(crate) fn link(linker: &mut Linker<Vm>) -> Result<()> {
    linker.func_wrap(
        WASI,
        "fd_write",
        |mut c: C<'_>, fd: i32, iovs: i32, iovs_len: i32, written_ptr: i32| -> Result<i32> {
            restricted(c.data(), WASI, "fd_write")?;
            if fd != 1 && fd != 2 {
                return Ok(ERRNO_BADF);
            }
            let mut bytes = Vec::new();
            for i in 0..iovs_len {
                let iov = read(&c, iovs + i * 8, 8)?;
                let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                bytes.extend_from_slice(&read(&c, ptr, len)?);
            }
            write_u32(&mut c, written_ptr, bytes.len() as u32)?;
            let worker = c.data().worker;
            let mut shared = lock(&c.data().shared);
            let (level, sink) = if fd == 1 {
                (LogLevel::Info, &mut shared.stdout)
            } else {
                (LogLevel::Error, &mut shared.stderr)
            };
            sink.extend_from_slice(&bytes);
            let text = String::from_utf8_lossy(&bytes).trim_end().to_string();
            if !text.is_empty() {
                shared.logs.push(LogEntry {
                    worker,
                    level,
                    message: text,
                });
            }
            Ok(ERRNO_SUCCESS)
        },
    )?;
    linker.func_wrap(
        WASI,
        "fd_read",
        |mut c: C<'_>, fd: i32, _iovs: i32, _len: i32, read_ptr: i32| -> Result<i32> {
            restricted(c.data(), WASI, "fd_read")?;
            if fd != 0 {
                return Ok(ERRNO_BADF);
            }
            write_u32(&mut c, read_ptr, 0)?;
            Ok(ERRNO_SUCCESS)
        },
    )?;
    linker.func_wrap(WASI, "fd_close", |c: C<'_>, _fd: i32| -> Result<i32> {
        restricted(c.data(), WASI, "fd_close")?;
        Ok(ERRNO_SUCCESS)
    })?;
    linker.func_wrap(
        WASI,
        "fd_seek",
        |c: C<'_>, _fd: i32, _offset: i64, _whence: i32, _ptr: i32| -> Result<i32> {
            restricted(c.data(), WASI, "fd_seek")?;
            Ok(ERRNO_SPIPE)
        },
    )?;
    linker.func_wrap(
        WASI,
        "fd_fdstat_get",
        |mut c: C<'_>, fd: i32, ptr: i32| -> Result<i32> {
            restricted(c.data(), WASI, "fd_fdstat_get")?;
            if !(0..=2).contains(&fd) {
                return Ok(ERRNO_BADF);
            }
            // fdstat: filetype character device, no flags, no rights restrictions.
            let mut stat = [0u8; 24];
            stat[0] = 2;
            write(&mut c, ptr, &stat)?;
            Ok(ERRNO_SUCCESS)
        },
    )?;
    linker.func_wrap(
        WASI,
        "fd_prestat_get",
        |c: C<'_>, _fd: i32, _ptr: i32| -> Result<i32> {
            restricted(c.data(), WASI, "fd_prestat_get")?;
            Ok(ERRNO_BADF)
        },
    )?;
    linker.func_wrap(
        WASI,
        "fd_prestat_dir_name",
        |c: C<'_>, _fd: i32, _ptr: i32, _len: i32| -> Result<i32> {
            restricted(c.data(), WASI, "fd_prestat_dir_name")?;
            Ok(ERRNO_BADF)
        },
    )?;
    linker.func_wrap(
        WASI,
        "environ_sizes_get",
        |mut c: C<'_>, count: i32, size: i32| -> Result<i32> {
            restricted(c.data(), WASI, "environ_sizes_get")?;
            empty_list(&mut c, count, size)
        },
    )?;
    linker.func_wrap(
        WASI,
        "environ_get",
        |c: C<'_>, _environ: i32, _buf: i32| -> Result<i32> {
            restricted(c.data(), WASI, "environ_get")?;
            Ok(ERRNO_SUCCESS)
        },
    )?;
    linker.func_wrap(
        WASI,
        "args_sizes_get",
        |mut c: C<'_>, count: i32, size: i32| -> Result<i32> {
            restricted(c.data(), WASI, "args_sizes_get")?;
            empty_list(&mut c, count, size)
        },
    )?;
    linker.func_wrap(
        WASI,
        "args_get",
        |c: C<'_>, _argv: i32, _buf: i32| -> Result<i32> {
            restricted(c.data(), WASI, "args_get")?;
            Ok(ERRNO_SUCCESS)
        },
    )?;
    linker.func_wrap(
        WASI,
        "clock_time_get",
        |mut c: C<'_>, _clock: i32, _precision: i64, ptr: i32| -> Result<i32> {
            restricted(c.data(), WASI, "clock_time_get")?;
            // Realtime and monotonic clocks both follow the virtual clock.
            let now = lock(&c.data().shared).now_nanos;
            write(&mut c, ptr, &now.to_le_bytes())?;
            Ok(ERRNO_SUCCESS)
        },
    )?;
    linker.func_wrap(
        WASI,
        "clock_res_get",
        |mut c: C<'_>, _clock: i32, ptr: i32| -> Result<i32> {
            restricted(c.data(), WASI, "clock_res_get")?;
            write(&mut c, ptr, &1u64.to_le_bytes())?;
            Ok(ERRNO_SUCCESS)
        },
    )?;
    linker.func_wrap(
        WASI,
        "random_get",
        |mut c: C<'_>, ptr: i32, len: i32| -> Result<i32> {
            restricted(c.data(), WASI, "random_get")?;
            let bytes: Vec<u8> = {
                let mut shared = lock(&c.data().shared);
                (0..len as u32)
                    .map(|_| shared.next_random() as u8)
                    .collect()
            };
            write(&mut c, ptr, &bytes)?;
            Ok(ERRNO_SUCCESS)
        },
    )?;
    linker.func_wrap(WASI, "sched_yield", |c: C<'_>| -> Result<i32> {
        restricted(c.data(), WASI, "sched_yield")?;
        Ok(ERRNO_SUCCESS)
    })?;
    linker.func_wrap(WASI, "proc_exit", |c: C<'_>, code: i32| -> Result<()> {
        restricted(c.data(), WASI, "proc_exit")?;
        Err(Error::msg(format!("module called proc_exit({code})")))
    })?;
    Ok(())
}
