//! VM failure recovery in a real Envoy: the probe filter panics on `x-probe-trap: 1`, which
//! aborts its VM on the worker that ran the request. With `failure_policy: FAIL_RELOAD` (what
//! every shipped configuration and every harness-generated filter uses) Envoy starts a fresh VM
//! and the filter serves again; with `FAIL_CLOSED` the worker keeps answering 503.
//!
//! Needs the built probe (`cargo xtask build`, `dist/probe.wasm`) and Envoy (`cargo xtask envoy`).

#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};
use switchyard_integration::*;

const PROBE: &str = "probe";
/// A trapped request must be answered well before this.
const TRAP_TIMEOUT: Duration = Duration::from_secs(5);
/// Recovery must happen within this (the reload backoff is 1 s, jittered up to 1.5 s).
const RECOVERY_WINDOW: Duration = Duration::from_secs(10);
/// Consecutive good requests that prove the recovery is not a fluke of one worker.
const STEADY: usize = 20;

fn probe_envoy(up: &Upstream, extra: Option<&str>, concurrency: u32) -> Envoy {
    let mut filter = WasmFilter::new(PROBE).config(&json!({"mode": "probe"}));
    if let Some(extra) = extra {
        filter = filter.extra(extra);
    }
    Envoy::builder()
        .concurrency(concurrency)
        .wasm(filter)
        .cluster("backend", [up.addr()])
        .start()
}

/// A request that went through the probe and the upstream: 200 and the probe's response header
/// (a filter that was skipped, as with FAIL_OPEN, would not add it).
fn served(r: &Response) -> bool {
    r.status == 200 && r.header("x-probe-response") == Some("1") && r.upstream() == Some("u1")
}

fn normal(envoy: &Envoy, i: usize) -> std::io::Result<Response> {
    envoy
        .get(&format!("/ok/{i}"))
        .timeout(Duration::from_secs(5))
        .try_send()
}

/// How many times the probe's panic hook has logged so far.
fn panics(envoy: &Envoy) -> usize {
    envoy.log().matches("switchyard probe panicked").count()
}

/// Sends `n` trapping requests and asserts each is answered promptly with a 5xx.
fn trap(envoy: &Envoy, n: usize) {
    for i in 0..n {
        let started = Instant::now();
        let resp = envoy
            .get(&format!("/trap/{i}"))
            .header("x-probe-trap", "1")
            .timeout(TRAP_TIMEOUT)
            .try_send()
            .unwrap_or_else(|e| {
                panic!(
                    "trap request {i} got no response in {:?}: {e}\n{}",
                    started.elapsed(),
                    envoy.log()
                )
            });
        assert!(
            (500..600).contains(&resp.status),
            "trap request {i} answered {} {:?}: {}",
            resp.status,
            resp.headers,
            resp.text()
        );
        assert!(started.elapsed() < TRAP_TIMEOUT);
        eprintln!(
            "trap {i}: {} in {:?} ({:?})",
            resp.status,
            started.elapsed(),
            resp.text()
        );
    }
}

#[test]
fn a_crashed_vm_is_reloaded_and_traffic_recovers() {
    let up = upstream("u1");
    let envoy = probe_envoy(&up, None, 2);
    assert!(
        envoy.config().contains("failure_policy: FAIL_RELOAD"),
        "the harness must default to FAIL_RELOAD:\n{}",
        envoy.config()
    );
    for i in 0..5 {
        let r = normal(&envoy, i).unwrap();
        assert!(served(&r), "{} {:?} {}", r.status, r.headers, r.text());
    }

    // Two rounds: a VM reloaded once can crash and be reloaded again.
    for round in 0..2 {
        let before = panics(&envoy);
        // Several connections, so both workers are likely to run (and lose) a VM.
        trap(&envoy, 6);
        assert!(
            eventually(Duration::from_secs(5), || panics(&envoy) > before),
            "round {round}: the probe's panic is not in Envoy's log:\n{}",
            envoy.log()
        );

        // Requests reaching a worker whose VM is down and whose reload backoff has not elapsed
        // fail closed; within the window every worker must serve again.
        let started = Instant::now();
        let mut last = String::new();
        let recovered = loop {
            match normal(&envoy, 1000 + round) {
                Ok(r) if served(&r) => {
                    // One good answer may come from a worker that never crashed: only a run of
                    // consecutive good answers (over both workers) counts.
                    let run: Vec<Response> = (0..STEADY)
                        .filter_map(|i| normal(&envoy, 2000 + i).ok())
                        .collect();
                    if run.len() == STEADY && run.iter().all(served) {
                        break true;
                    }
                    last = run
                        .iter()
                        .map(|r| r.status.to_string())
                        .collect::<Vec<_>>()
                        .join(",");
                }
                Ok(r) => last = format!("{} {}", r.status, r.text()),
                Err(e) => last = e.to_string(),
            }
            if started.elapsed() > RECOVERY_WINDOW {
                break false;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            recovered,
            "round {round}: no recovery within {RECOVERY_WINDOW:?} (last: {last})\n{}",
            envoy.log()
        );
        eprintln!(
            "round {round}: {} VM panic(s), recovered after {:?}",
            panics(&envoy) - before,
            started.elapsed()
        );
    }
    assert_eq!(
        up.count_path("/trap/0"),
        0,
        "a trapped request reached the upstream"
    );
}

#[test]
fn without_reload_a_crashed_vm_keeps_failing_closed() {
    let up = upstream("u1");
    // One worker, so every later request meets the crashed VM.
    let envoy = probe_envoy(&up, Some("failure_policy: FAIL_CLOSED"), 1);
    assert!(
        !envoy.config().contains("FAIL_RELOAD"),
        "{}",
        envoy.config()
    );
    assert!(served(&normal(&envoy, 0).unwrap()));
    trap(&envoy, 1);
    // Well past the reload backoff FAIL_RELOAD would use: still 503.
    let started = Instant::now();
    let mut statuses = Vec::new();
    while started.elapsed() < Duration::from_secs(3) {
        statuses.push(normal(&envoy, 100 + statuses.len()).unwrap().status);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        statuses.iter().all(|s| *s == 503),
        "FAIL_CLOSED answered {statuses:?}"
    );
    assert_eq!(
        up.count_path("/ok/100"),
        0,
        "a request passed the crashed VM"
    );
}
