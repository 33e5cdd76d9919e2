//! The Switchyard upstream test server: a small HTTP/1.1 + h2c (prior knowledge) server used by
//! the integration tests, the demo, docker compose and the benchmarks.
//!
//! ```no_run
//! let up = switchyard_upstream::Upstream::start("u1").unwrap();
//! // ... point Envoy at up.addr(), send traffic ...
//! assert_eq!(up.count_path("/x"), 1);
//! let seen = up.requests();
//! assert_eq!(seen[0].header("x-user"), Some("alice"));
//! up.stop(); // Envoy now sees connection failures
//! up.restart().unwrap(); // same port again
//! ```
//!
//! # What it answers
//! Every response carries `x-upstream-id: <id>`. The default body is JSON:
//! `{"upstream": id, "method", "version", "path", "query", "headers": {name: value}, "body_len"}`
//! (header names lowercase, repeated headers joined with `", "`; `version` is `HTTP/1.1` or
//! `HTTP/2.0`).
//!
//! The request chooses the response with query parameters, or the same names as `x-echo-<name>`
//! request headers (query parameters win; `header` accumulates from both):
//!
//! | parameter | effect |
//! |---|---|
//! | `status=503` | response status |
//! | `delay=200ms` | wait before answering (`250ms`, `1s`, `1.5s`; a bare number is milliseconds) |
//! | `size=10000` | body of exactly that many bytes (`abc…xyz` repeated) instead of the JSON echo |
//! | `header=Name:Value` | add a response header; repeatable (`Cache-Control:max-age%3D60`, `Set-Cookie:a=1`, …) |
//! | `etag="v1"` | `ETag` header; `If-None-Match` matching it answers `304` |
//! | `last_modified=<http-date>` | `Last-Modified` header; `If-Modified-Since` not older answers `304` |
//! | `chunked=1` | stream the body in several chunks (`Transfer-Encoding: chunked`) |
//! | `chunk_delay=300ms` | pause between those chunks (default 5 ms): a slow body |
//! | `reset=1` | read the request, then drop the connection without answering |
//!
//! `304` answers have no body; they are counted and recorded like any other request.
//!
//! # Server latency profile
//! Besides a request's own `delay`, the server can make *every* ordinary request wait
//! `factor × (base + jitter)` (control endpoints never wait). It is off by default (nothing
//! changes for servers that do not set it).
//!
//! | set with | meaning |
//! |---|---|
//! | `--latency 5ms` (binary), [`LatencyProfile::base`] | base latency of every request (`5ms`, `0.5ms`, `1s`; a bare number is milliseconds) |
//! | `--jitter exp:2ms` | plus an exponentially distributed random part with mean 2 ms |
//! | `--jitter uniform:2ms` | plus a uniform random part in `[0, 2 ms)`; `none` (default) for no random part |
//! | `GET /__latency` | answers the profile in force: `{"base_ms": 5.0, "jitter": "exp:2ms", "factor": 1.0}` |
//! | `GET /__latency?factor=20` | multiply the whole latency by 20 from now on (a slow host, without a restart); `factor=1` restores it |
//! | `GET /__latency?base=100ms&jitter=none` | replace the base or the jitter at run time |
//!
//! `/__latency` takes any method; a bad parameter answers `400` and changes nothing. The
//! per-request `delay` comes on top of the profile. Tokio's timer rounds each wait up to the
//! next millisecond. From code: [`Upstream::set_latency`], [`Upstream::latency`].
//!
//! # Control endpoints (never counted or recorded)
//! - `GET /__count` → `{"total": N, "paths": {"/x": 3, ...}}`
//! - `POST /__reset` → clears counts and recorded requests (the store is kept)
//! - `PUT /__store/<name>` stores the body (and its `content-type`); `GET /__store/<name>` serves it
//!   with a strong `ETag` (hash of the content) and answers a matching `If-None-Match` with `304`;
//!   a missing name is `404`; `DELETE /__store/<name>` removes it. Fetches are counted separately
//!   ([`Upstream::store_fetches`]).
//! - `GET /__health` → `200 {"status": "ok", "upstream": id}`
//! - `GET /__latency[?factor=F&base=D&jitter=J]` → sets and answers the latency profile (above)
//!
//! The methods of [`Upstream`] block; call them from ordinary (non-async) test code.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod latency;
mod server;

pub use latency::{Jitter, LatencyProfile};
pub use server::{http_date, RecordedRequest, StoredObject};

use server::{Running, State};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::runtime::Runtime;

/// An upstream server running on its own tokio runtime (own worker threads).
/// Dropping it stops the server.
pub struct Upstream {
    state: Arc<State>,
    addr: SocketAddr,
    rt: Option<Runtime>,
    running: Mutex<Option<Running>>,
}

impl Upstream {
    /// Starts an upstream named `id` on a free loopback port (`127.0.0.1:0`).
    pub fn start(id: &str) -> io::Result<Upstream> {
        Self::start_with(id, SocketAddr::from(([127, 0, 0, 1], 0)), 1)
    }

    /// Starts an upstream named `id` on `addr` (port 0 picks a free port).
    pub fn start_on(id: &str, addr: SocketAddr) -> io::Result<Upstream> {
        Self::start_with(id, addr, 1)
    }

    /// Starts an upstream with `workers` runtime threads (benchmarks want more than the
    /// default of one).
    pub fn start_with(id: &str, addr: SocketAddr, workers: usize) -> io::Result<Upstream> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name(format!("upstream-{id}"))
            .enable_all()
            .build()?;
        let state = Arc::new(State::new(id));
        let running = rt.block_on(server::bind_and_serve(state.clone(), addr))?;
        let addr = running.addr;
        Ok(Upstream {
            state,
            addr,
            rt: Some(rt),
            running: Mutex::new(Some(running)),
        })
    }

    /// The bound address (the real port, also while stopped).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The id sent back in `x-upstream-id`.
    pub fn id(&self) -> &str {
        &self.state.id
    }

    /// `http://127.0.0.1:<port><path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Requests received (control endpoints excluded), counted on arrival.
    pub fn count(&self) -> u64 {
        self.state.count()
    }

    /// Requests received for exactly this path (without the query string).
    pub fn count_path(&self, path: &str) -> u64 {
        self.state.count_path(path)
    }

    /// Every request received since start or the last reset, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests()
    }

    /// Clears counts and recorded requests (not the store).
    pub fn reset(&self) {
        self.state.reset();
    }

    /// Stores `body` under `name`, served at `GET /__store/<name>`.
    pub fn store_put(&self, name: &str, content_type: &str, body: impl Into<Vec<u8>>) {
        self.state.store_put(name, content_type, body.into());
    }

    pub fn store_delete(&self, name: &str) {
        self.state.store_delete(name);
    }

    pub fn store_get(&self, name: &str) -> Option<StoredObject> {
        self.state.store_get(name)
    }

    /// How many times `GET /__store/<name>` was asked (including `304` answers).
    pub fn store_fetches(&self, name: &str) -> u64 {
        self.state.store_fetches(name)
    }

    /// The latency profile in force (see *Server latency profile*).
    pub fn latency(&self) -> LatencyProfile {
        self.state.latency()
    }

    /// Replaces the latency profile; requests already waiting keep their latency.
    pub fn set_latency(&self, profile: LatencyProfile) {
        self.state.set_latency(profile);
    }

    pub fn is_running(&self) -> bool {
        lock(&self.running).is_some()
    }

    /// Closes the listener and every open connection (in-flight requests are dropped), so a
    /// proxy sees connection failures. Returns once the port is closed. No-op when stopped.
    pub fn stop(&self) {
        let running = lock(&self.running).take();
        if let (Some(running), Some(rt)) = (running, self.rt.as_ref()) {
            rt.block_on(running.shutdown());
        }
    }

    /// Starts serving again on the same port (stops first if running). Counts and the store
    /// survive a restart.
    pub fn restart(&self) -> io::Result<()> {
        self.stop();
        let rt = self
            .rt
            .as_ref()
            .ok_or_else(|| io::Error::other("upstream runtime is gone"))?;
        let running = rt.block_on(server::bind_and_serve(self.state.clone(), self.addr))?;
        *lock(&self.running) = Some(running);
        Ok(())
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
        if let Some(rt) = self.rt.take() {
            // Delayed responses may still be sleeping; do not wait for them.
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("id", &self.state.id)
            .field("addr", &self.addr)
            .field("running", &self.is_running())
            .finish()
    }
}

/// Locks a mutex, ignoring poisoning: the guarded data stays consistent because every critical
/// section is a plain read or replace.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
