//! Runs a real Envoy (1.40, V8) child process with Switchyard wasm filters, for integration
//! tests. Each [`Envoy`] gets free loopback ports, its own scratch directory and log, and is
//! killed when dropped, so tests run in parallel safely.
//!
//! ```no_run
//! use switchyard_harness::{Envoy, eventually};
//! use switchyard_upstream::Upstream;
//! use serde_json::json;
//! use std::time::Duration;
//!
//! let up = Upstream::start("u1").unwrap();
//! let envoy = Envoy::builder()
//!     .wasm_filter("ratelimit", json!({"rules": []}))   // dist/ratelimit.wasm, root_id "ratelimit"
//!     .cluster("backend", [up.addr()])                    // first cluster = catch-all route
//!     .start();                                           // panics with Envoy's log if it fails
//!
//! let resp = envoy.get("/hello?status=201").header("x-user", "alice").send();
//! assert_eq!(resp.status, 201);
//! assert_eq!(resp.header("x-upstream-id"), Some("u1"));
//! assert_eq!(resp.json()["headers"]["x-user"], "alice");
//! assert_eq!(up.count_path("/hello"), 1);
//!
//! // Filter metrics: name with or without the `wasmcustom.` prefix Envoy adds.
//! assert!(eventually(Duration::from_secs(5), || envoy.stat_value("switchyard.ratelimit.allowed") == 1));
//! ```
//!
//! # Pieces
//! - [`Envoy::builder`] → [`EnvoyBuilder`]: `wasm_filter(name, json)` / `wasm(WasmFilter)` /
//!   `native_filter(yaml)` in chain order, then the router; `cluster(name, endpoints)` /
//!   `cluster_with(Cluster::new(..).extra(yaml))` / `Cluster::raw(name, yaml)`; routes
//!   (`route_to`, `route(yaml)`, `no_default_route`, `route_config(yaml)`,
//!   `virtual_host_extra`), `hcm_extra`, `bootstrap_extra`, `upstream_http_filter`;
//!   `concurrency(n)` (default 2), `log_level`, `component_log_level`. YAML snippets are
//!   mappings written at any indentation (they are dedented and placed for you).
//!   `render()` shows the YAML, `validate()` runs `envoy --mode validate`, `start()` runs it,
//!   `try_start()` returns a [`StartError`] with the log instead of panicking.
//! - [`Envoy::from_yaml`] for hand-written bootstraps (ECDS / file-based xDS, `ORIGINAL_DST`,
//!   several listeners). Placeholders: `{{LISTENER_PORT}}`, `{{ADMIN_PORT}}` (required in the
//!   admin block), `{{PORT:<name>}}` (reserve with `.port(name)`), `{{DIR}}` (the instance's
//!   scratch directory; seed files with `.file(name, contents)`, update them later with
//!   [`Envoy::write_file`], an atomic rename as Envoy's file watcher needs),
//!   `{{WASM:<filter>}}` (module path) and your own `.var(name, value)`. Unknown placeholders
//!   are an error. Placeholders also work inside the generated config's snippets.
//! - [`Envoy`]: `listen_addr()`, `admin_addr()`, `get(path)` / `request(method, path)` →
//!   [`Request`]; `admin(path)`, `admin_post(path)`; `stats()`, `stat(name)`,
//!   `stat_value(name)` (a missing stat fails), `stat_or_zero(name)` (Envoy's lazily created counters only); `log()`, `wait_for_log(needle, timeout)`; `stop()`, `restart()`
//!   (same config and ports); `dir()`, `config()`.
//! - [`Request`] (raw HTTP/1.1 over `TcpStream`): `.header(k, v)` (repeats kept, sent exactly
//!   as given), `.body(..)`, `.json(&value)`, `.timeout(d)`, `.send()` (panics on I/O error) or
//!   `.try_send()` (→ `io::Result`). Adds `Host`, `Connection: close` and `Content-Length`
//!   unless you set them. [`Response`]: `status`, `headers` (wire order, repeats),
//!   `body`; `header(name)`, `header_all(name)`, `text()`, `json()`, `upstream()`.
//!   [`Connection`] keeps one connection open for several requests.
//! - [`parallel`]`(total, threads, |i| request)` for exactness under concurrency;
//!   [`eventually`]`(timeout, || cond)` / [`wait_until`] for asynchronous effects.
//!
//! # Environment
//! - Envoy: `ENVOY_BIN`, else `<workspace>/target/tools/envoy-1.40.0/envoy`; missing → the test
//!   fails telling you to run `cargo xtask envoy`.
//! - Filters: `$SWITCHYARD_DIST/<filter>.wasm`, else `<workspace>/dist/<filter>.wasm`; missing →
//!   the test fails telling you to run `cargo xtask build`.
//! - Backend: `SWITCHYARD_ENVOY=docker` runs every Envoy in a container (testcontainers, image
//!   `SWITCHYARD_ENVOY_IMAGE` or `switchyard/envoy:1.40.0` from `cargo xtask images`, host
//!   network, scratch directory and workspace bind-mounted at their host paths); unset or
//!   `process` runs a child process. The tests are the same on both (see `docs/docker.md`).
//!
//! # Envoy facts the harness relies on
//! - Proxy-wasm metrics defined as `switchyard.<filter>.<name>` show up in `/stats` as
//!   `wasmcustom.switchyard.<filter>.<name>` (Envoy 1.40). Counters and gauges appear as soon
//!   as the filter defines them. [`Envoy::stat`] accepts either spelling.
//! - The generated bootstrap sets `node: { id: switchyard-test, cluster: switchyard-test }`, which
//!   file-based dynamic resources need (`bootstrap_extra` a `dynamic_resources` block whose
//!   `path_config_source` is under `{{DIR}}`; see the smoke test
//!   `file_based_dynamic_resources_follow_write_file`). Templates must set `node` themselves.
//! - The wasm configuration is passed as a `google.protobuf.StringValue` holding the JSON text.
//! - Envoy runs with `--disable-hot-restart` (no shared memory, so parallel instances never
//!   collide) plus a unique `--base-id`, `--concurrency 2` by default, and logs to
//!   `<dir>/envoy.log` (`-l info` by default, which includes filters' `info` logs as
//!   `[info][wasm] [...context.cc:NNNN] wasm log <root_id> <vm_id>: <message>`; stream-context
//!   logs may carry the plugin name first, logs from VM start have just `wasm log: <message>`).
//!   Match on the message text with [`Envoy::wait_for_log`] / `log().contains(..)`.
//! - Ready means admin `/ready` answers 200 (Envoy binds and listens before going live; the
//!   harness opens no probe connection, so connection stats start at 0).
//! - Envoy dies with the test process (`PR_SET_PDEATHSIG`), even when the test runner is killed.

// A test harness reports failures by panicking with a useful message.
#![allow(clippy::panic, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod config;
mod docker;
mod envoy;
mod http;
mod paths;
pub mod redis;
pub mod rls;
mod util;
pub mod yaml;

pub use config::{Cluster, WasmFilter};
pub use docker::Backend;
pub use envoy::{Envoy, EnvoyBuilder, StartError};
pub use http::{Connection, Request, Response, DEFAULT_TIMEOUT};
pub use paths::{dist_dir, envoy_bin, wasm_path, workspace_root};
pub use redis::Redis;
pub use rls::{Rls, RlsBuilder};
pub use util::{eventually, free_port, parallel, wait_until};
