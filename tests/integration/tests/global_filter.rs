//! The ratelimit filter's global limits (`scope: global`) in a real Envoy 1.40 with
//! `--concurrency 2`, against the `switchyard-rls` service and a real `redis-server`: the limit
//! holds exactly across both worker VMs, a dead or silent service follows `failure_mode` within
//! the `timeout`, and leasing stays within the documented overshoot bound.
//!
//! Needs `redis-server` and the `switchyard-rls` binary (`SWITCHYARD_RLS_BIN`, else
//! `target/{release,debug}/switchyard-rls`; `cargo build -p switchyard-rls`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use switchyard_harness::{free_port, parallel, Cluster, Envoy, Redis, Rls};
use switchyard_upstream::Upstream;

/// envoyproxy/ratelimit YAML: `generic_key: api` + `user`, `limit` per `unit`.
fn rls_config(limit: u32, unit: &str) -> String {
    format!(
        r#"
domain: edge
descriptors:
  - key: generic_key
    value: api
    descriptors:
      - key: user
        rate_limit: {{ unit: {unit}, requests_per_unit: {limit} }}
"#
    )
}

/// The filter's rule: descriptor (generic_key=api, user=<x-user>) in domain `edge`.
fn filter_config(failure_mode: &str, timeout: &str, lease: u32) -> Value {
    json!({"rules": [{
        "name": "global-user",
        "scope": "global",
        "key": [{"literal": "api"}, {"header": "x-user"}],
        "lease": lease,
        "service": {
            "cluster": "rls",
            "domain": "edge",
            "timeout": timeout,
            "failure_mode": failure_mode,
            "descriptor_keys": ["generic_key", "user"]
        }
    }]})
}

/// Envoy with the filter and the `rls` cluster as docs/ratelimit.md recommends: HTTP/2, a short
/// connect timeout, circuit breakers.
fn envoy(up: &Upstream, rls: SocketAddr, config: Value) -> Envoy {
    Envoy::builder()
        .wasm_filter("ratelimit", config)
        .cluster("backend", [up.addr()])
        .cluster_with(
            Cluster::new("rls", [rls.to_string()])
                .connect_timeout("0.25s")
                .extra(
                    r#"
            typed_extension_protocol_options:
              envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
                "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
                explicit_http_config:
                  http2_protocol_options: {}
            circuit_breakers:
              thresholds:
                - max_connections: 64
                  max_pending_requests: 1024
                  max_requests: 1024
            "#,
                ),
        )
        .concurrency(2)
        .start()
}

fn stat(envoy: &Envoy, name: &str) -> u64 {
    envoy.stat_value(&format!("switchyard.ratelimit.global-user.{name}"))
}

#[test]
fn limit_is_exact_across_two_workers() {
    let limit = 20u32;
    let redis = Redis::start();
    let rls = Rls::builder(&rls_config(limit, "day"))
        .redis(&redis.url())
        .start();
    let up = Upstream::start("u1").unwrap();
    let envoy = envoy(&up, rls.grpc_addr(), filter_config("deny", "2s", 1));

    let total = 3 * limit as usize;
    let results = parallel(total, 6, |_| {
        envoy
            .get("/g")
            .header("x-user", "alice")
            .timeout(Duration::from_secs(10))
    });
    let (ok, limited) = switchyard_integration::ok_and_limited(&results);
    assert_eq!((ok, limited), (limit as usize, total - limit as usize));
    assert_eq!(up.count_path("/g"), u64::from(limit));
    // Every request was decided by a call, or by a remembered OVER_LIMIT answer of its worker
    // (the service said the day's limit resets in hours: asking again would change nothing).
    let (calls, remembered) = (
        stat(&envoy, "global_calls"),
        stat(&envoy, "global_denied_remembered"),
    );
    assert_eq!(calls + remembered, total as u64);
    assert!(
        calls >= u64::from(limit) && calls < total as u64,
        "{calls} calls"
    );
    assert_eq!(
        stat(&envoy, "global_over_limit"),
        (total - limit as usize) as u64
    );
    assert_eq!(stat(&envoy, "global_failure_denied"), 0);

    // The rejection carries the service's numbers in the filter's own IETF headers.
    let r = envoy.get("/g").header("x-user", "alice").send();
    assert_eq!(r.status, 429);
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"global-user\";q=20;w=86400"),
        "{:?}",
        r.headers
    );
    assert!(r
        .header("ratelimit")
        .is_some_and(|v| v.starts_with("\"global-user\";r=0;t=")));
    assert!(r.header("retry-after").is_some());
    // Another user has a counter of its own; no x-user header: the rule is skipped.
    assert_eq!(envoy.get("/g").header("x-user", "bob").send().status, 200);
    assert_eq!(envoy.get("/g").send().status, 200);
}

/// Sends `n` requests one after another; returns the statuses and the slowest duration.
fn timed(envoy: &Envoy, n: usize) -> (Vec<u16>, Duration) {
    let mut slowest = Duration::ZERO;
    let mut out = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        let r = envoy
            .get("/d")
            .header("x-user", "carol")
            .timeout(Duration::from_secs(10))
            .send();
        slowest = slowest.max(started.elapsed());
        out.push(r.status);
    }
    (out, slowest)
}

#[test]
fn dead_or_silent_service_follows_failure_mode_within_the_timeout() {
    let up = Upstream::start("u1").unwrap();
    // Nothing listens: connections are refused.
    let refused = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    // Accepts connections (the kernel does) but never answers: only the timeout ends a call.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    for (what, addr) in [("refused", refused), ("silent", silent_addr)] {
        for (mode, status) in [("allow", 200u16), ("deny", 429u16)] {
            let envoy = envoy(&up, addr, filter_config(mode, "100ms", 1));
            let (got, slowest) = timed(&envoy, 5);
            eprintln!("{what} service, failure_mode {mode}: statuses {got:?}, slowest {slowest:?}");
            assert!(got.iter().all(|s| *s == status), "{what} {mode}: {got:?}");
            // 100 ms timeout plus proxying on a loaded 2-core machine.
            assert!(
                slowest < Duration::from_millis(800),
                "{what} {mode}: a request took {slowest:?}"
            );
            let counter = if mode == "allow" {
                "global_failure_allowed"
            } else {
                "global_failure_denied"
            };
            assert_eq!(stat(&envoy, counter), 5, "{what} {mode}");
        }
    }
    drop(silent);
}

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

#[test]
fn lease_overshoot_stays_within_the_documented_bound() {
    let (limit, lease, workers) = (40u32, 5u32, 2u32);
    let redis = Redis::start();
    let rls = Rls::builder(&rls_config(limit, "second"))
        .redis(&redis.url())
        .start();
    let up = Upstream::start("u1").unwrap();
    let envoy = envoy(&up, rls.grpc_addr(), filter_config("deny", "2s", lease));

    // About 3.5 s of traffic from 4 clients, well over the limit. A request counts for a
    // one-second window only if it was sent and answered inside that window (requests that
    // straddle a boundary are left out, so the per-window count is a lower estimate).
    let until = unix_now() + Duration::from_millis(3500);
    let results: Vec<Vec<(u64, u64, u16)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let mut seen = Vec::new();
                    while unix_now() < until {
                        let sent = unix_now().as_secs();
                        let r = envoy
                            .get("/l")
                            .header("x-user", "dave")
                            .timeout(Duration::from_secs(10))
                            .send();
                        seen.push((sent, unix_now().as_secs(), r.status));
                    }
                    seen
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut per_window: BTreeMap<u64, u64> = BTreeMap::new();
    let mut total = 0u64;
    for (sent, done, status) in results.into_iter().flatten() {
        total += 1;
        if status == 200 && sent == done {
            *per_window.entry(sent).or_default() += 1;
        }
    }
    let most = per_window.values().copied().max().unwrap_or(0);
    let bound = u64::from(limit + (lease - 1) * workers);
    eprintln!(
        "limit {limit}/s, lease {lease}, {workers} workers: {total} requests, admitted per window {per_window:?}; most {most}, bound {bound}; calls {}, lease hits {}",
        stat(&envoy, "global_calls"),
        stat(&envoy, "lease_hits")
    );
    assert!(most <= bound, "{most} > {bound}");
    assert!(most > 0);
    assert!(stat(&envoy, "lease_hits") > 0, "leases were used");
    assert!(
        stat(&envoy, "global_calls") < total,
        "fewer calls than requests"
    );
}
