//! Hashring module tests Envoy cannot do deterministically: bounded-load decisions with requests
//! held in flight across interleaved workers, and the release of their load at stream end.

use serde_json::json;
use switchyard_wasmhost::{Host, Outcome, StreamId};

const HOSTS: [&str; 3] = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"];

fn hashring(config: serde_json::Value) -> Host {
    Host::load("dist/hashring.wasm")
        .unwrap()
        .workers(2)
        .configure(config.to_string())
        .unwrap()
}

fn config(factor: f64) -> serde_json::Value {
    json!({
        "algorithm": "ring",
        "hosts": HOSTS.iter().map(|h| json!({"address": h})).collect::<Vec<_>>(),
        "hash_key": [{"header": "x-user-id"}],
        "bounded_load": {"factor": factor},
        "fallbacks": 2,
        "debug_header": "x-hash-explain"
    })
}

/// Sends a request for `user` that stays in flight at the upstream.
fn held(host: &mut Host, worker: usize, user: &str) -> Outcome {
    host.worker(worker)
        .request()
        .header("x-user-id", user)
        .hold()
        .send()
        .unwrap()
}

fn chosen(out: &Outcome) -> String {
    let upstream = out.upstream.as_ref().expect("reached the upstream");
    let list = upstream.header("x-upstream-host").expect("routing header");
    list.split(',').next().unwrap_or_default().to_string()
}

#[test]
fn bounded_load_spills_exactly_and_recovers_when_requests_end() {
    let mut host = hashring(config(1.0));
    // An idle request shows the key's own order.
    let probe = host.request().header("x-user-id", "hot").send().unwrap();
    let order: Vec<String> = probe
        .upstream
        .as_ref()
        .unwrap()
        .header("x-upstream-host")
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect();
    assert_eq!(order.len(), 3);
    let explain = probe
        .response_header("x-hash-explain")
        .unwrap_or_default()
        .to_string();
    assert!(explain.contains("reason=primary"), "{explain}");

    // factor 1.0: with n requests in flight no host may hold more than ceil(n / 3).
    let mut in_flight: Vec<StreamId> = Vec::new();
    let mut picks = Vec::new();
    for i in 0..6 {
        let out = held(&mut host, i % 2, "hot");
        picks.push(chosen(&out));
        in_flight.push(out.stream);
    }
    assert_eq!(
        picks,
        [0, 1, 2, 0, 1, 2].map(|i| order[i].clone()),
        "the hot key spills along its own order, exactly, across both workers"
    );
    let spilled = host
        .metric(&format!(
            "switchyard.hashring.host.{}.spills",
            order[0].replace(['.', ':'], "_")
        ))
        .unwrap_or(0);
    assert!(
        spilled >= 2,
        "primary host passed over at least twice, got {spilled}"
    );

    // Ending requests releases their load: the key goes back to its primary.
    for id in in_flight.drain(..) {
        let done = host.release(id).unwrap();
        assert!(done.is_complete());
    }
    let after = held(&mut host, 1, "hot");
    assert_eq!(chosen(&after), order[0]);
    host.release(after.stream).unwrap();
}

#[test]
fn released_requests_free_their_slot() {
    let mut host = hashring(config(1.0));
    let first = held(&mut host, 0, "k");
    let primary = chosen(&first);
    let second = held(&mut host, 1, "k");
    assert_ne!(chosen(&second), primary, "second in-flight request spills");
    host.release(first.stream).unwrap();
    host.release(second.stream).unwrap();
    let third = held(&mut host, 0, "k");
    assert_eq!(chosen(&third), primary);
    host.release(third.stream).unwrap();
}

#[test]
fn keys_are_sticky_across_workers_without_load() {
    let mut host = hashring(config(1.25));
    let mut seen = std::collections::HashMap::new();
    for i in 0..30 {
        let user = format!("user-{}", i % 10);
        let out = host
            .worker(i % 2)
            .request()
            .header("x-user-id", &user)
            .send()
            .unwrap();
        let host_for_user = chosen(&out);
        assert!(HOSTS.contains(&host_for_user.as_str()));
        let first = seen.entry(user).or_insert_with(|| host_for_user.clone());
        assert_eq!(*first, host_for_user);
    }
}

/// `p2c_ewma` on a virtual clock: one request at a time, each answered after its host's latency.
/// A host that turns slow loses its share at once (its first slow answer raises its estimate);
/// after it heals and its estimate fades, it is tried again and gets its share back.
#[test]
fn p2c_ewma_avoids_a_slow_host_and_takes_it_back_after_it_heals() {
    use std::collections::BTreeMap;
    use std::time::Duration;
    let mut host = hashring(json!({
        "algorithm": "p2c_ewma",
        "hosts": HOSTS.iter().map(|h| json!({"address": h})).collect::<Vec<_>>(),
        "p2c": {"decay": "2s"},
        "debug_header": "x-hash-explain"
    }));
    let slow = HOSTS[1];
    // Runs `n` requests, the given host answering after `slow_ms`, the others after 5 ms.
    let run = |host: &mut Host, n: usize, slow_ms: u64| -> BTreeMap<String, usize> {
        let mut shares = BTreeMap::new();
        for i in 0..n {
            let out = host
                .worker(i % 2)
                .request()
                .header("x-user-id", &format!("u{i}"))
                .hold()
                .send()
                .unwrap();
            let to = chosen(&out);
            host.set_property("upstream.address", &to);
            // 4-6 ms with a little deterministic jitter, the slow host `slow_ms` (plus jitter).
            let jitter = (i as u64 * 7919) % 3;
            let ms = if to == slow {
                slow_ms + jitter
            } else {
                4 + jitter
            };
            host.advance(Duration::from_millis(ms)).unwrap();
            host.release(out.stream).unwrap();
            *shares.entry(to).or_insert(0) += 1;
        }
        shares
    };
    let healthy = run(&mut host, 300, 5);
    let during = run(&mut host, 300, 100);
    host.advance(Duration::from_secs(10)).unwrap();
    let after = run(&mut host, 300, 5);
    eprintln!("healthy {healthy:?}\nduring {during:?}\nafter {after:?}");
    let picks = |m: &BTreeMap<String, usize>, h: &str| m.get(h).copied().unwrap_or(0);
    // Every host is measured and used while all are fast.
    for h in HOSTS {
        assert!(picks(&healthy, h) >= 5, "{h} is tried: {healthy:?}");
    }
    // A 20x slower host is avoided from its first slow answer: at most 5 % of the requests
    // (it is re-tried only when its estimate has faded below the others').
    assert!(picks(&during, slow) <= 15, "{during:?}");
    // Healed, its faded estimate brings it back into rotation, and fast answers keep it there.
    assert!(
        picks(&after, slow) >= picks(&during, slow) + 10,
        "{during:?} -> {after:?}"
    );
    let explain = host
        .request()
        .header("x-user-id", "x")
        .send()
        .unwrap()
        .response_header("x-hash-explain")
        .unwrap_or_default()
        .to_string();
    assert!(explain.contains("p2c; candidates="), "{explain}");
}
