//! Rate limit module tests Envoy cannot do deterministically: exact multi-tier limits with
//! interleaved workers under a frozen clock, token refill by virtual time, CAS contention that
//! exhausts the retries under both failure modes.

use serde_json::json;
use std::time::Duration;
use switchyard_wasmhost::{Host, HostError, LogLevel, Outcome};

fn ratelimit(workers: usize, config: serde_json::Value) -> Host {
    Host::load("dist/ratelimit.wasm")
        .unwrap()
        .workers(workers)
        .configure(config.to_string())
        .unwrap()
}

fn hit(host: &mut Host, worker: usize, user: &str) -> Outcome {
    host.worker(worker)
        .request()
        .path("/api")
        .header("x-user-id", user)
        .send()
        .unwrap()
}

fn statuses(host: &mut Host, n: usize, user: &str) -> Vec<u32> {
    (0..n)
        .map(|i| hit(host, i % host.worker_count(), user).status().unwrap())
        .collect()
}

fn two_tier(algorithm: &str) -> serde_json::Value {
    json!({"rules": [{
        "name": "per-user",
        "key": [{"header": "x-user-id"}],
        "algorithm": algorithm,
        "limits": [{"requests": 3, "per": "1s"}, {"requests": 5, "per": "1m"}]
    }]})
}

#[test]
fn sliding_window_tiers_are_exact_across_interleaved_workers() {
    let mut host = ratelimit(3, two_tier("sliding_window"));
    // Frozen clock: the second tier never gets a chance to be the tighter one yet.
    assert_eq!(
        statuses(&mut host, 6, "alice"),
        [200, 200, 200, 429, 429, 429]
    );
    // Another key is independent.
    assert_eq!(statuses(&mut host, 1, "bob"), [200]);
    // One second later the 1s tier has room again, but only 2 more fit in the minute.
    host.advance(Duration::from_millis(1001)).unwrap();
    assert_eq!(statuses(&mut host, 3, "alice"), [200, 200, 429]);
    host.advance(Duration::from_secs(2)).unwrap();
    assert_eq!(statuses(&mut host, 1, "alice"), [429]);
    // After the minute everything is admitted again, 3 per second.
    host.advance(Duration::from_secs(60)).unwrap();
    assert_eq!(statuses(&mut host, 4, "alice"), [200, 200, 200, 429]);
    assert_eq!(
        host.metric("switchyard.ratelimit.per-user.allowed"),
        Some(9)
    );
    assert_eq!(
        host.metric("switchyard.ratelimit.per-user.limited"),
        Some(6)
    );
}

#[test]
fn rejection_carries_retry_after_and_headers() {
    let mut host = ratelimit(2, two_tier("sliding_window"));
    let ok = hit(&mut host, 0, "carol");
    assert!(ok.upstream_reached());
    assert_eq!(
        ok.response_header("ratelimit-policy"),
        Some("\"per-user\";q=3;w=1")
    );
    assert!(ok
        .response_header("ratelimit")
        .is_some_and(|v| v.starts_with("\"per-user\";r=2;")));
    statuses(&mut host, 2, "carol");
    host.advance(Duration::from_millis(400)).unwrap();
    let limited = hit(&mut host, 1, "carol");
    assert!(!limited.upstream_reached());
    assert_eq!(limited.status(), Some(429));
    // The oldest admitted request leaves the 1s window in 600ms: rounded up to 1s.
    assert_eq!(limited.response_header("retry-after"), Some("1"));
    assert_eq!(
        limited.response_header("content-type"),
        Some("application/json")
    );
    let body: serde_json::Value = serde_json::from_str(&limited.response_body()).unwrap();
    assert_eq!(body["rule"], "per-user");
    assert_eq!(body["error"], "rate_limited");
}

#[test]
fn waiting_retry_after_seconds_is_always_enough() {
    // Both tiers take turns being the binding one; the promise holds for each.
    let mut host = ratelimit(2, two_tier("sliding_window"));
    let mut waits = Vec::new();
    for round in 0..4 {
        let limited = (0..10)
            .map(|i| hit(&mut host, (round + i) % 2, "hank"))
            .find(|o| o.status() == Some(429))
            .expect("the limit is reached within 10 requests");
        let wait: u64 = limited
            .response_header("retry-after")
            .unwrap()
            .parse()
            .unwrap();
        waits.push(wait);
        host.advance(Duration::from_secs(wait)).unwrap();
        let retried = hit(&mut host, round % 2, "hank");
        assert_eq!(
            retried.status(),
            Some(200),
            "retry after {wait}s was too early"
        );
    }
    assert!(
        waits.iter().any(|w| *w > 1),
        "the minute tier bound at least once: {waits:?}"
    );
}

#[test]
fn token_bucket_refills_only_as_virtual_time_passes() {
    let config = json!({"rules": [{
        "name": "tb",
        "key": [{"header": "x-user-id"}],
        "limits": [{"requests": 2, "per": "1s", "burst": 2}]
    }]});
    let mut host = ratelimit(2, config);
    assert_eq!(statuses(&mut host, 3, "dave"), [200, 200, 429]);
    // Half a second refills exactly one token (2 per second).
    host.advance(Duration::from_millis(499)).unwrap();
    assert_eq!(statuses(&mut host, 1, "dave"), [429]);
    host.advance(Duration::from_millis(1)).unwrap();
    assert_eq!(statuses(&mut host, 2, "dave"), [200, 429]);
    host.advance(Duration::from_secs(10)).unwrap();
    // Never more than the burst, however long the idle time.
    assert_eq!(statuses(&mut host, 3, "dave"), [200, 200, 429]);
}

fn contended(failure_mode: &str) -> (Host, Outcome) {
    let config = json!({
        "failure_mode": failure_mode,
        "max_cas_retries": 3,
        "rules": [{"name": "r", "key": [{"header": "x-user-id"}], "limits": [{"requests": 100, "per": "1s"}]}]
    });
    let mut host = ratelimit(2, config);
    // Every CAS-guarded write loses the race: the bounded retries run out.
    host.interfere_shared(|_| true);
    let out = hit(&mut host, 1, "erin");
    host.stop_interfering();
    (host, out)
}

#[test]
fn cas_retries_exhausted_deny_in_failure_mode_deny() {
    let (mut host, out) = contended("deny");
    assert_eq!(out.status(), Some(429));
    assert!(!out.upstream_reached());
    assert_eq!(
        host.metric("switchyard.ratelimit.r.failure_denied"),
        Some(1)
    );
    assert!(host
        .log_messages(LogLevel::Warn)
        .iter()
        .any(|m| m.contains("shared state unavailable for rule r")));
    // Once the contention is over requests flow again.
    assert_eq!(hit(&mut host, 0, "erin").status(), Some(200));
}

#[test]
fn cas_retries_exhausted_allow_in_failure_mode_allow() {
    let (mut host, out) = contended("allow");
    assert_eq!(out.status(), Some(200));
    assert!(out.upstream_reached());
    assert_eq!(
        host.metric("switchyard.ratelimit.r.failure_allowed"),
        Some(1)
    );
    assert_eq!(hit(&mut host, 0, "erin").status(), Some(200));
    assert_eq!(host.metric("switchyard.ratelimit.r.allowed"), Some(1));
}

#[test]
fn a_few_lost_races_are_retried_without_changing_the_decision() {
    let mut host = ratelimit(2, two_tier("sliding_window"));
    let mut lost = 0;
    host.interfere_shared(move |_| {
        lost += 1;
        lost % 2 == 1
    });
    assert_eq!(statuses(&mut host, 4, "frank"), [200, 200, 200, 429]);
    assert!(
        host.metric("switchyard.ratelimit.per-user.cas_retries")
            .unwrap()
            >= 3
    );
}

#[test]
fn shadow_mode_tags_but_never_rejects() {
    let mut config = two_tier("sliding_window");
    config["mode"] = json!("shadow");
    let mut host = ratelimit(2, config);
    let outs: Vec<Outcome> = (0..4).map(|i| hit(&mut host, i % 2, "gina")).collect();
    assert!(outs
        .iter()
        .all(|o| o.status() == Some(200) && o.upstream_reached()));
    assert_eq!(outs[2].response_header("x-ratelimit-shadow"), None);
    let shadow = outs[3]
        .response_header("x-ratelimit-shadow")
        .unwrap_or_default();
    assert!(shadow.starts_with("\"per-user\";retry_after="), "{shadow}");
    assert_eq!(
        host.metric("switchyard.ratelimit.per-user.shadow_limited"),
        Some(1)
    );
}

#[test]
fn invalid_configuration_is_rejected_with_its_json_path() {
    let err = Host::load("dist/ratelimit.wasm")
        .unwrap()
        .configure(
            json!({"rules": [{"name": "bad name", "limits": [{"requests": 1, "per": "1s"}]}]})
                .to_string(),
        )
        .err()
        .unwrap();
    match err {
        HostError::ConfigRejected { logs, .. } => {
            assert!(logs.iter().any(|l| l.contains("rules[0].name")), "{logs:?}")
        }
        other => panic!("expected a rejection, got {other}"),
    }
}
