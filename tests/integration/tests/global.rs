//! The global rate limit service `switchyard-rls` (docs/global.md) behind Envoy's NATIVE
//! `envoy.filters.http.ratelimit` filter (RLS v3 over gRPC), with a real `redis-server` per
//! test: protocol fidelity, one limit shared exactly by two service replicas and three Envoys,
//! Redis outages (answers follow `redis_failure`, nothing hangs) and recovery without a restart.
//!
//! Needs `redis-server` (`cargo xtask test` installs it as root) and the `switchyard-rls`
//! binary (`SWITCHYARD_RLS_BIN`, else `target/{release,debug}/switchyard-rls`).
//!
//! Windows are a day long, so the test's own duration cannot move a window boundary in practice.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};
use switchyard_harness::{eventually, parallel, Redis, Rls};
use switchyard_integration::{upstream, Cluster, Envoy, Response, Upstream};

/// `generic_key: api` + the `x-user` header; `limit` requests per day per user.
fn rls_config(limit: u32) -> String {
    format!(
        r#"
domain: edge
descriptors:
  - key: generic_key
    value: api
    descriptors:
      - key: user
        rate_limit: {{ unit: day, requests_per_unit: {limit} }}
"#
    )
}

/// A service for `rls_config(limit)`. The Redis timeout is generous (1 s instead of the 50 ms
/// default): on a busy test machine a timed-out call would be a failure answer, not a count.
fn rls(limit: u32, redis: &Redis) -> Rls {
    Rls::builder(&rls_config(limit))
        .redis(&redis.url())
        .arg("--redis-timeout-ms")
        .arg("1000")
        .start()
}

/// An Envoy whose native rate limit filter asks the `rls` cluster (HTTP/2) for domain `edge`
/// with the descriptor (generic_key=api, user=<x-user>).
fn envoy(up: &Upstream, rls: &[&Rls], failure_mode_deny: bool) -> Envoy {
    let endpoints: Vec<String> = rls.iter().map(|r| r.grpc_addr().to_string()).collect();
    Envoy::builder()
        .native_filter(&format!(
            r#"
            name: envoy.filters.http.ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
              domain: edge
              failure_mode_deny: {failure_mode_deny}
              timeout: 2s
              rate_limit_service:
                transport_api_version: V3
                grpc_service:
                  envoy_grpc: {{ cluster_name: rls }}
                  timeout: 2s
            "#
        ))
        .cluster("backend", [up.addr()])
        .cluster_with(Cluster::new("rls", endpoints).extra(
            r#"
            typed_extension_protocol_options:
              envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
                "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
                explicit_http_config:
                  http2_protocol_options: {}
            "#,
        ))
        .route(
            r#"
            match: { prefix: "/" }
            route:
              cluster: backend
              rate_limits:
                - actions:
                    - generic_key: { descriptor_value: api }
                    - request_headers: { header_name: x-user, descriptor_key: user }
            "#,
        )
        .concurrency(2)
        .start()
}

fn get(envoy: &Envoy, user: &str) -> Response {
    envoy.get("/r").header("x-user", user).send()
}

#[test]
fn native_filter_admits_exactly_the_limit_then_429() {
    let redis = Redis::start();
    let mut rls = rls(5, &redis);
    let up = upstream("u1");
    let envoy = envoy(&up, &[&rls], false);

    for i in 0..5 {
        let r = get(&envoy, "alice");
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert!(r.header("x-envoy-ratelimited").is_none());
        assert_eq!(
            r.header("ratelimit").and_then(|v| v.split(';').nth(1)),
            Some(format!("r={}", 4 - i).as_str()),
            "{:?}",
            r.headers
        );
    }
    for i in 0..3 {
        let r = get(&envoy, "alice");
        assert_eq!(r.status, 429, "request {} over the limit", 5 + i);
        assert_eq!(r.header("x-envoy-ratelimited"), Some("true"));
        // The service's IETF headers reach the client on the local reply.
        assert_eq!(
            r.header("ratelimit-policy"),
            Some("\"generic_key_api.user\";q=5;w=86400"),
            "{:?}",
            r.headers
        );
        assert!(r
            .header("ratelimit")
            .is_some_and(|v| v.starts_with("\"generic_key_api.user\";r=0;t=")));
    }
    assert_eq!(up.count_path("/r"), 5);
    // Another user has a counter of its own; no x-user → no descriptor → not limited.
    assert_eq!(get(&envoy, "bob").status, 200);
    for _ in 0..7 {
        assert_eq!(envoy.get("/r").send().status, 200);
    }
    assert_eq!(
        envoy.stat_or_zero("cluster.backend.ratelimit.over_limit"),
        3
    );
    assert_eq!(envoy.stat_or_zero("cluster.backend.ratelimit.ok"), 6);
    assert_eq!(
        rls.metric("switchyard_rls_over_limit_total{domain=\"edge\"}"),
        Some(3.0)
    );
    assert_eq!(
        rls.metric("switchyard_rls_ok_total{domain=\"edge\"}"),
        Some(6.0)
    );
    assert!(rls.stop(), "graceful shutdown on SIGTERM");
}

#[test]
fn two_replicas_and_three_envoys_share_one_limit_exactly() {
    let limit = 20;
    let redis = Redis::start();
    let a = rls(limit, &redis);
    let b = rls(limit, &redis);
    let up = upstream("u1");
    let envoys: Vec<Envoy> = (0..3).map(|_| envoy(&up, &[&a, &b], false)).collect();

    let total = 3 * limit as usize;
    let results = parallel(total, 6, |i| {
        envoys[i % 3]
            .get("/shared")
            .header("x-user", "carol")
            .timeout(Duration::from_secs(10))
    });
    let (ok, limited) = switchyard_integration::ok_and_limited(&results);
    assert_eq!((ok, limited), (limit as usize, total - limit as usize));
    assert_eq!(up.count_path("/shared"), u64::from(limit));
    for (name, rls) in [("a", &a), ("b", &b)] {
        let calls = rls
            .metric("switchyard_rls_requests_total{domain=\"edge\"}")
            .unwrap();
        assert!(calls > 0.0, "replica {name} answered no call");
    }
    let sum = |metric: &str| {
        a.metric(&format!("switchyard_rls_{metric}_total{{domain=\"edge\"}}"))
            .unwrap()
            + b.metric(&format!("switchyard_rls_{metric}_total{{domain=\"edge\"}}"))
                .unwrap()
    };
    assert_eq!(sum("ok"), f64::from(limit));
    assert_eq!(sum("over_limit"), f64::from(2 * limit));
}

/// Sends one request, returning its status and how long it took.
fn timed(envoy: &Envoy, user: &str) -> (u16, Duration) {
    let started = Instant::now();
    let r = envoy
        .get("/o")
        .header("x-user", user)
        .timeout(Duration::from_secs(10))
        .send();
    (r.status, started.elapsed())
}

#[test]
fn redis_outage_follows_redis_failure_and_recovers_without_restart() {
    let limit = 3;
    let mut redis = Redis::start();
    let start = |mode: &str| {
        Rls::builder(&rls_config(limit))
            .redis(&redis.url())
            .arg("--redis-timeout-ms")
            .arg("250")
            .arg("--redis-failure")
            .arg(mode)
            .start()
    };
    let allow = start("allow");
    let deny = start("deny");
    let error = start("error");
    let up = upstream("u1");
    let via_allow = envoy(&up, &[&allow], false);
    let via_deny = envoy(&up, &[&deny], false);
    // `error` → gRPC UNAVAILABLE → Envoy's own failure mode decides.
    let via_error_open = envoy(&up, &[&error], false);
    let via_error_closed = envoy(&up, &[&error], true);

    // Redis up: the limit holds (one user per Envoy, the counters live in the one Redis).
    for rls in [&allow, &deny, &error] {
        assert!(rls.ready(), "/readyz with Redis up");
    }
    for (envoy, user) in [(&via_allow, "u-allow"), (&via_deny, "u-deny")] {
        for _ in 0..limit {
            assert_eq!(timed(envoy, user).0, 200);
        }
        assert_eq!(timed(envoy, user).0, 429);
    }

    redis.stop();
    for rls in [&allow, &deny, &error] {
        assert!(
            eventually(Duration::from_secs(5), || !rls.ready()),
            "/readyz must fail while Redis is down"
        );
        assert_eq!(rls.get("/healthz").map(|(s, _)| s), Some(200));
    }
    let cases: [(&Envoy, u16, &str); 4] = [
        (&via_allow, 200, "redis_failure: allow"),
        (&via_deny, 429, "redis_failure: deny"),
        (&via_error_open, 200, "error + failure_mode_deny: false"),
        (&via_error_closed, 500, "error + failure_mode_deny: true"),
    ];
    let mut slowest = Duration::ZERO;
    for (envoy, status, what) in cases {
        for i in 0..5 {
            let (got, took) = timed(envoy, "u-outage");
            assert_eq!(got, status, "{what}, request {i}");
            slowest = slowest.max(took);
        }
    }
    assert!(
        slowest < Duration::from_millis(1000),
        "a request took {slowest:?} during the outage"
    );
    assert!(
        via_error_open.stat_or_zero("cluster.backend.ratelimit.failure_mode_allowed") >= 5,
        "Envoy saw the UNAVAILABLE answers as errors"
    );
    assert!(
        allow
            .metric("switchyard_rls_redis_errors_total{domain=\"edge\"}")
            .unwrap()
            >= 5.0
    );
    assert_eq!(
        allow.metric("switchyard_rls_redis_up"),
        Some(0.0),
        "redis_up gauge while down"
    );

    // Redis back on the same port (empty: no persistence): the services reconnect by
    // themselves and the limit holds again.
    redis.start_again();
    for rls in [&allow, &deny, &error] {
        assert!(
            eventually(Duration::from_secs(10), || rls.ready()),
            "/readyz after Redis came back; log:\n{}",
            rls.log()
        );
    }
    for (envoy, user) in [
        (&via_allow, "after-allow"),
        (&via_deny, "after-deny"),
        (&via_error_closed, "after-error"),
    ] {
        for i in 0..limit {
            assert_eq!(
                timed(envoy, user).0,
                200,
                "{user} request {i} after recovery"
            );
        }
        assert_eq!(
            timed(envoy, user).0,
            429,
            "{user} over the limit after recovery"
        );
    }
}

#[test]
fn service_starts_before_redis_and_becomes_ready_when_it_appears() {
    let mut redis = Redis::start();
    redis.stop();
    let rls = Rls::builder(&rls_config(2))
        .redis(&redis.url())
        .arg("--redis-timeout-ms")
        .arg("1000")
        .arg("--redis-failure")
        .arg("deny")
        .start();
    assert!(!rls.ready());
    let up = upstream("u1");
    let envoy = envoy(&up, &[&rls], false);
    assert_eq!(
        timed(&envoy, "dave").0,
        429,
        "deny while Redis was never up"
    );
    redis.start_again();
    assert!(
        eventually(Duration::from_secs(10), || rls.ready()),
        "{}",
        rls.log()
    );
    assert_eq!(timed(&envoy, "dave").0, 200);
    assert_eq!(timed(&envoy, "dave").0, 200);
    assert_eq!(timed(&envoy, "dave").0, 429);
}
