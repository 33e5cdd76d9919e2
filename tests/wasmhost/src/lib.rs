//! Switchyard's own proxy-wasm host for module tests, on wasmtime.
//!
//! Runs a compiled filter (`dist/*.wasm`) in-process with N worker VMs that share one shared-data
//! store (Envoy's CAS semantics), shared queues and stats, under a virtual clock that only moves
//! when the test advances it, with callouts the test answers (or fails, or times out) when it
//! chooses. Everything a real Envoy cannot do deterministically.
//!
//! ```no_run
//! use switchyard_wasmhost::{Host, CalloutReply};
//! let mut host = Host::load("dist/probe.wasm")?.workers(2).configure(r#"{"mode":"probe"}"#)?;
//! let out = host.worker(1).request().header("x-probe-count", "a").send()?;
//! assert_eq!(out.status(), Some(200));
//! host.advance(std::time::Duration::from_secs(1))?;
//! # Ok::<(), switchyard_wasmhost::HostError>(())
//! ```
//!
//! Fidelity notes (what the host does as Envoy does): host effects on streams (local replies,
//! `proxy_continue_stream`, resets) apply after the callback returns; a local reply sent before
//! the response started runs through the filter's own response callbacks; a failed or timed-out
//! HTTP callout calls back with no headers; advancing the clock past a callout's timeout times it
//! out; header lookups of a map that does not exist yet return `BadArgument`; callouts need
//! `:method`, `:path` and `:authority`; stats are shared by name across workers; a stream's
//! pending callouts are cancelled when it ends; header values are bytes end to end (obs-text such
//! as a lone `\xE9` reaches the module unchanged: `header_bytes` builders and accessors; the
//! `&str` accessors return `None` for a value that is not UTF-8); while `_initialize`/`_start`
//! (the SDK's `main!` body) runs, every host call but `proxy_log` and a few WASI calls traps with
//! `restricted_callback`, failing the VM.

mod abi;
pub mod fuzz;
mod host;
pub mod scenario;
mod state;
mod types;
mod wasi;

pub use host::{
    resolve_module_path, workspace_root, Host, HostBuilder, RequestBuilder, Upstream, WorkerHandle,
};
pub use types::*;
