//! Waiting for asynchronous effects, firing requests in parallel, free ports.

use crate::http::{Request, Response};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Polls `condition` every 20 ms until it is true (→ `true`) or `timeout` passed (→ `false`).
/// For effects that happen asynchronously (a config reload, a health check); the timeout is a
/// bound on waiting, not an assertion about speed.
pub fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Like [`eventually`] but panics with `what` on timeout.
pub fn wait_until(what: &str, timeout: Duration, condition: impl FnMut() -> bool) {
    if !eventually(timeout, condition) {
        panic!("timed out after {timeout:?} waiting until {what}");
    }
}

/// Sends `total` requests from `threads` threads (each request on its own connection) and
/// returns the outcomes in request order: `make(i)` builds request `i`.
///
/// ```no_run
/// # let envoy: switchyard_harness::Envoy = unimplemented!();
/// let results = switchyard_harness::parallel(200, 8, |i| envoy.get(&format!("/r/{i}")));
/// let ok = results.iter().filter(|r| matches!(r, Ok(r) if r.status == 200)).count();
/// ```
pub fn parallel<F>(total: usize, threads: usize, make: F) -> Vec<io::Result<Response>>
where
    F: Fn(usize) -> Request + Sync,
{
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<io::Result<Response>>>> =
        (0..total).map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, total.max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let result = make(i).try_send();
                if let Some(slot) = slots.get(i) {
                    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
                }
            });
        }
    });
    slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or_else(|| Err(io::Error::other("request was not sent")))
        })
        .collect()
}

/// A loopback port that was free a moment ago (bind `127.0.0.1:0`, then release it).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?
        .local_addr()?
        .port())
}
