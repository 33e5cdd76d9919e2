//! The service over gRPC (its own RLS v3 client, no Envoy) against a real `redis-server`:
//! all-or-nothing across descriptors, quota leasing, per-descriptor `hits_addend`, shadow
//! mode, unknown domains, the response fields, and a latency sample.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    quota::ExpirationSpecifier, Code,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use std::time::{Duration, Instant};
use switchyard_harness::{Redis, Rls};
use switchyard_rls::descriptor as desc;
use tonic::transport::Channel;

const CONFIG: &str = r#"
domains:
  - domain: svc
    descriptors:
      - key: user
        rate_limit: { unit: day, requests_per_unit: 10 }
      - key: tenant
        rate_limit: { unit: day, requests_per_unit: 3 }
      - key: probe
        rate_limit: { unit: day, requests_per_unit: 1 }
        shadow_mode: true
      - key: fast
        rate_limit: { unit: second, requests_per_unit: 1000000 }
  - domain: other
"#;

/// `SWITCHYARD_RLS_BIN` (set by `cargo xtask test`: the release build), else this package's
/// debug binary.
fn bin() -> String {
    std::env::var("SWITCHYARD_RLS_BIN")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_switchyard-rls").to_string())
}

/// The binary of [`bin`]; generous Redis timeout (the machine may be busy; the outage test
/// needs no timeout: a killed Redis refuses connections at once).
fn rls(redis: &Redis) -> Rls {
    Rls::builder(CONFIG)
        .bin(bin())
        .redis(&redis.url())
        .arg("--redis-timeout-ms")
        .arg("1000")
        .start()
}

fn request(hits: u32, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: "svc".into(),
        descriptors,
        hits_addend: hits,
    }
}

async fn client(rls: &Rls) -> RateLimitServiceClient<Channel> {
    RateLimitServiceClient::connect(format!("http://{}", rls.grpc_addr()))
        .await
        .unwrap()
}

async fn ask(c: &mut RateLimitServiceClient<Channel>, req: RateLimitRequest) -> RateLimitResponse {
    c.should_rate_limit(req).await.unwrap().into_inner()
}

fn ok(r: &RateLimitResponse) -> bool {
    r.overall_code == Code::Ok as i32
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn all_or_nothing_across_descriptors() {
    let redis = Redis::start();
    let rls = rls(&redis);
    rt().block_on(async {
        let mut c = client(&rls).await;
        let both = || request(0, vec![desc(&[("user", "u1")]), desc(&[("tenant", "t1")])]);
        for i in 0..3 {
            let r = ask(&mut c, both()).await;
            assert!(ok(&r), "request {i}");
            assert_eq!(r.statuses.len(), 2);
            assert_eq!(r.statuses[0].limit_remaining, 10 - (i + 1));
            assert_eq!(r.statuses[1].limit_remaining, 3 - (i + 1));
            let limit = r.statuses[1].current_limit.as_ref().unwrap();
            assert_eq!(
                (limit.requests_per_unit, limit.unit, limit.name.as_str()),
                (3, 4, "tenant")
            );
            let reset = r.statuses[0].duration_until_reset.unwrap();
            assert!(reset.seconds > 0 && reset.seconds <= 86400);
        }
        // The tenant is exhausted: the user's counter must not move.
        for _ in 0..4 {
            let r = ask(&mut c, both()).await;
            assert!(!ok(&r));
            assert_eq!(r.statuses[0].code, Code::Ok as i32);
            assert_eq!(r.statuses[0].limit_remaining, 7);
            assert_eq!(r.statuses[1].code, Code::OverLimit as i32);
            assert_eq!(r.statuses[1].limit_remaining, 0);
        }
        // The user alone still has exactly 7.
        for i in 0..7 {
            assert!(
                ok(&ask(&mut c, request(0, vec![desc(&[("user", "u1")])])).await),
                "{i}"
            );
        }
        assert!(!ok(
            &ask(&mut c, request(0, vec![desc(&[("user", "u1")])])).await
        ));
        // hits_addend counts N at once, all or nothing per descriptor.
        let mut d = desc(&[("user", "u2")]);
        d.hits_addend = Some(UInt64Value { value: 9 });
        let r = ask(&mut c, request(0, vec![d.clone()])).await;
        assert!(ok(&r));
        assert_eq!(r.statuses[0].limit_remaining, 1);
        assert!(r.statuses[0].quota.is_none());
        assert!(
            !ok(&ask(&mut c, request(0, vec![d])).await),
            "9 more do not fit in 1"
        );
        assert!(ok(
            &ask(&mut c, request(0, vec![desc(&[("user", "u2")])])).await
        ));
        // Two descriptors on one counter add up: 2 of 3, then 2 more do not fit, 1 does.
        let twice = || {
            request(
                0,
                vec![desc(&[("tenant", "t2")]), desc(&[("tenant", "t2")])],
            )
        };
        let r = ask(&mut c, twice()).await;
        assert!(ok(&r));
        assert_eq!(r.statuses[1].limit_remaining, 1);
        let r = ask(&mut c, twice()).await;
        assert!(!ok(&r));
        assert_eq!(r.statuses[0].code, Code::OverLimit as i32);
        assert!(ok(&ask(
            &mut c,
            request(0, vec![desc(&[("tenant", "t2")])])
        )
        .await));
    });
}

#[test]
fn quota_leasing_grants_what_is_left() {
    let redis = Redis::start();
    let rls = rls(&redis);
    rt().block_on(async {
        let mut c = client(&rls).await;
        let lease = |n| request(n, vec![desc(&[("user", "l1")]), desc(&[("tenant", "l1")])]);
        let r = ask(&mut c, lease(2)).await;
        assert!(ok(&r));
        for s in &r.statuses {
            let q = s.quota.clone().unwrap();
            assert_eq!(q.requests, 2);
            let Some(ExpirationSpecifier::ValidUntil(t)) = q.expiration_specifier else {
                panic!("no valid_until");
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            assert!(t.seconds > now - 2 && t.seconds <= now + 86400 + 2, "{t:?}");
        }
        // Tenant has 1 left: a lease of 5 gets 1, on both descriptors.
        let r = ask(&mut c, lease(5)).await;
        assert!(ok(&r));
        assert_eq!(r.statuses[0].quota.clone().unwrap().requests, 1);
        assert_eq!(r.statuses[0].limit_remaining, 7);
        assert_eq!(r.statuses[1].limit_remaining, 0);
        // Nothing left: OVER_LIMIT, nothing counted.
        let r = ask(&mut c, lease(5)).await;
        assert!(!ok(&r));
        assert!(r.statuses[0].quota.is_none());
        assert_eq!(r.statuses[0].limit_remaining, 7);
        assert_eq!(r.statuses[1].code, Code::OverLimit as i32);
    });
}

#[test]
fn shadow_mode_unknown_domains_and_unmatched_descriptors_pass() {
    let redis = Redis::start();
    let rls = rls(&redis);
    rt().block_on(async {
        let mut c = client(&rls).await;
        for _ in 0..3 {
            let r = ask(&mut c, request(0, vec![desc(&[("probe", "p")])])).await;
            assert!(ok(&r));
            assert_eq!(r.statuses[0].code, Code::Ok as i32);
        }
        let r = ask(
            &mut c,
            request(0, vec![desc(&[("nothing", "x")]), desc(&[])]),
        )
        .await;
        assert!(ok(&r));
        assert_eq!(r.statuses.len(), 2);
        assert!(r.statuses[0].current_limit.is_none());
        let r = ask(
            &mut c,
            RateLimitRequest {
                domain: "nope".into(),
                ..request(0, vec![desc(&[("user", "x")])])
            },
        )
        .await;
        assert!(ok(&r));
    });
    let m = rls.metrics();
    assert!(
        m.contains("switchyard_rls_shadow_over_limit_total{domain=\"svc\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("switchyard_rls_requests_total{domain=\"_unknown_\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("switchyard_rls_request_duration_seconds_count 5"),
        "{m}"
    );
}

#[test]
fn redis_failure_error_is_unavailable_and_reconnects() {
    let mut redis = Redis::start();
    let rls = rls(&redis);
    rt().block_on(async {
        let mut c = client(&rls).await;
        let one = || request(0, vec![desc(&[("tenant", "r")])]);
        assert!(ok(&ask(&mut c, one()).await));
        redis.stop();
        let mut took = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            let e = c.should_rate_limit(one()).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unavailable);
            took.push((started.elapsed(), e.message().to_string()));
        }
        eprintln!("outage answers: {took:?}");
        assert!(
            took.iter().all(|(t, _)| *t < Duration::from_millis(500)),
            "{took:?}"
        );
        redis.start_again();
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.should_rate_limit(one()).await.is_err() {
            assert!(Instant::now() < deadline, "no reconnect: {}", rls.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Fresh Redis: that success counted 1 of 3.
        assert!(ok(&ask(&mut c, one()).await));
        assert!(ok(&ask(&mut c, one()).await));
        assert!(!ok(&ask(&mut c, one()).await));
    });
}

/// Latency of ShouldRateLimit on loopback (one descriptor, one Redis round trip), sequential
/// calls on one HTTP/2 connection. Prints p50/p99; asserts only a generous bound.
#[test]
fn latency_sample() {
    let redis = Redis::start();
    let rls = rls(&redis);
    let mut samples = rt().block_on(async {
        let mut c = client(&rls).await;
        let mut samples = Vec::new();
        for i in 0..2000 {
            let req = request(0, vec![desc(&[("fast", &format!("k{}", i % 50))])]);
            let started = Instant::now();
            let r = ask(&mut c, req).await;
            samples.push(started.elapsed());
            assert!(ok(&r));
        }
        samples
    });
    samples.sort();
    let p = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    eprintln!(
        "ShouldRateLimit latency over {} calls: p50 {:?}, p99 {:?}, max {:?}",
        samples.len(),
        p(0.5),
        p(0.99),
        p(1.0)
    );
    assert!(p(0.5) < Duration::from_millis(50));
}

/// A frozen Redis (SIGSTOP: connection open, no answers) costs each call the response
/// timeout (default 50 ms), never more; answers resume after SIGCONT.
#[test]
fn frozen_redis_answers_within_the_timeout() {
    let redis = Redis::start();
    let rls = Rls::builder(CONFIG)
        .bin(bin())
        .redis(&redis.url())
        .arg("--redis-failure")
        .arg("allow")
        .start();
    let pid = redis.pid().unwrap().to_string();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    };
    rt().block_on(async {
        let mut c = client(&rls).await;
        let one = || request(0, vec![desc(&[("user", "frozen")])]);
        assert!(ok(&ask(&mut c, one()).await));
        signal("-STOP");
        let mut took = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            let r = ask(&mut c, one()).await;
            took.push(started.elapsed());
            assert!(ok(&r), "redis_failure: allow");
        }
        signal("-CONT");
        eprintln!("frozen Redis: {took:?}");
        assert!(
            took.iter().all(|t| *t < Duration::from_millis(400)),
            "{took:?}"
        );
    });
    assert!(
        rls.metric("switchyard_rls_redis_failure_allowed_total{domain=\"svc\"}")
            .unwrap()
            >= 5.0
    );
    assert!(rls.ready());
}

/// The CLI: an invalid configuration ends the process with status 2 and a message naming the
/// field; `--check` validates and exits 0.
#[test]
fn cli_rejects_bad_configuration_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("switchyard-rls-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: fortnight, requests_per_unit: 1 }\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("document 1.descriptors[0].rate_limit.unit")
            && stderr.contains("fortnight"),
        "{stderr}"
    );
    let good = dir.join("good.yaml");
    std::fs::write(&good, CONFIG).unwrap();
    let out = std::process::Command::new(bin())
        .args(["--check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 domain(s) OK"));
    let out = std::process::Command::new(bin())
        .arg("--config")
        .arg(&good)
        .args(["--grpc-addr", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--grpc-addr"));
    let _ = std::fs::remove_dir_all(&dir);
}
