//! The suite module (`dist/switchyard.wasm`) in this host: the same decisions as the separate
//! modules, with far fewer boundary crossings per request.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use switchyard_wasmhost::{Host, Outcome};

const HOSTS: [&str; 3] = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"];

fn ratelimit() -> Value {
    json!({"rules": [{"name": "per-user", "key": [{"header": "x-user-id"}],
                      "limits": [{"requests": 3, "per": "1m"}]}]})
}

fn router() -> Value {
    let mut routes: Vec<Value> = (0..20)
        .map(|i| {
            json!({"name": format!("r{i}"), "match": {"path": {"prefix": format!("/svc{i}/")}},
                        "action": {"cluster": "web"}})
        })
        .collect();
    routes.push(json!({"name": "api", "match": {"path": {"prefix": "/api/"}}, "action": {"cluster": "api"}}));
    json!({"cluster_header": "x-switchyard-cluster", "routes": routes, "default": {"cluster": "web"}})
}

fn cache() -> Value {
    json!({"max_bytes": 1048576, "key": {"query": "all", "headers": []}, "upstream_cluster": "web"})
}

fn hashring() -> Value {
    json!({"algorithm": "ring", "hosts": HOSTS.iter().map(|h| json!({"address": h})).collect::<Vec<_>>(),
           "hash_key": [{"header": "x-user-id"}], "clusters": ["web"],
           "cluster_header": "x-switchyard-cluster", "debug_header": "x-hash-explain"})
}

fn suite(stages: Value) -> Host {
    Host::load("dist/switchyard.wasm")
        .unwrap()
        .workers(2)
        .configure(json!({ "stages": stages }).to_string())
        .unwrap()
}

fn all_four() -> Value {
    json!({"ratelimit": ratelimit(), "router": router(), "cache": cache(), "hashring": hashring()})
}

fn send(host: &mut Host, worker: usize, path: &str, user: &str) -> Outcome {
    host.worker(worker)
        .request()
        .path(path)
        .header("x-user-id", user)
        .upstream_header("cache-control", "max-age=60")
        .upstream_body("hello")
        .send()
        .unwrap()
}

#[test]
fn all_four_stages_decide_as_the_chain_does() {
    let mut host = suite(all_four());
    // Routed to web, chosen host written for Envoy, cached, limited: each stage did its part.
    let first = send(&mut host, 0, "/svc19/items", "alice");
    assert_eq!(first.status(), Some(200));
    let up = first.upstream.as_ref().expect("reached the upstream");
    assert_eq!(up.header("x-switchyard-cluster"), Some("web"));
    assert_eq!(up.header("x-switchyard-route-name"), Some("r19"));
    assert!(up.header("x-upstream-host").is_some(), "{:?}", up.headers);
    assert!(first.response_header("ratelimit").is_some());

    // The second request is a hit from the other worker: the cache stage answered before the
    // hashring ran, and the rate limit still counted it.
    let second = send(&mut host, 1, "/svc19/items", "alice");
    assert!(
        second.upstream.is_none(),
        "a hit never reaches the upstream: {:?} {:?} {:?}",
        first.response,
        second.response,
        host.metrics()
    );
    assert_eq!(second.status(), Some(200));
    assert!(
        second
            .response_header("cache-status")
            .unwrap_or_default()
            .contains("hit"),
        "{:?}",
        second.response
    );
    // The third is allowed, the fourth limited before any later stage runs.
    let _third = send(&mut host, 0, "/svc3/x", "alice");
    let fourth = send(&mut host, 1, "/svc3/y", "alice");
    assert_eq!(fourth.status(), Some(429));
    assert!(fourth.upstream.is_none());
    assert_eq!(
        host.metric("switchyard.ratelimit.per-user.limited"),
        Some(1)
    );

    // Another cluster's request is left alone by the hashring, as in the chain.
    let api = send(&mut host, 0, "/api/orders", "bob");
    let up = api.upstream.as_ref().expect("reached the upstream");
    assert_eq!(up.header("x-switchyard-cluster"), Some("api"));
    assert_eq!(up.header("x-upstream-host"), None);
    assert!(api.response_header("x-hash-explain").is_none());
}

#[test]
fn a_nested_configuration_error_names_the_full_path() {
    let err = Host::load("dist/switchyard.wasm")
        .unwrap()
        .configure(
            json!({"stages": {"router": router(), "cache": {"max_bytes": "lots"}}}).to_string(),
        )
        .err()
        .expect("a bad stage configuration fails the plugin");
    assert!(err.to_string().contains("stages.cache.max_bytes"), "{err}");
}

/// A steady-state miss: three warm-up requests (first-use metric definitions, table builds),
/// then the host calls of one more request with a new cache key.
fn calls_per_miss(host: &mut Host, extra: &[(&str, &str)]) -> BTreeMap<String, u64> {
    let mut calls = BTreeMap::new();
    for k in 0..4 {
        host.reset_host_calls();
        let mut req = host
            .worker(0)
            .request()
            .path(&format!("/svc19/items?k={k}"))
            .header("x-user-id", &format!("u{k}"));
        for (name, value) in extra {
            req = req.header(name, value);
        }
        let out = req
            .upstream_header("cache-control", "max-age=60")
            .upstream_body("hello")
            .send()
            .unwrap();
        assert_eq!(out.status(), Some(200));
        assert!(out.upstream.is_some(), "a miss");
        calls = host.host_calls();
    }
    calls
}

/// A steady-state hit: the same key three times (a miss, then hits that fill the L1), then
/// the host calls of one more hit.
fn calls_per_hit(host: &mut Host) -> BTreeMap<String, u64> {
    let mut calls = BTreeMap::new();
    for _ in 0..4 {
        host.reset_host_calls();
        let out = send(host, 0, "/svc19/hot", "u1");
        assert_eq!(out.status(), Some(200));
        calls = host.host_calls();
    }
    assert!(
        calls.contains_key("proxy_send_local_response"),
        "a hit: {calls:?}"
    );
    calls
}

#[test]
fn a_hot_cache_hit_reads_shared_data_once() {
    let mut suite = suite(json!({"cache": cache()}));
    let mut module = Host::load("dist/cache.wasm")
        .unwrap()
        .workers(2)
        .configure(cache().to_string())
        .unwrap();
    for (name, host) in [("suite (cache stage)", &mut suite), ("cache", &mut module)] {
        let calls = calls_per_hit(host);
        println!(
            "{name}: {} host calls per hit {calls:?}",
            calls.values().sum::<u64>()
        );
        // The key's bucket record vouches for the worker's L1 copy: no entry read.
        assert_eq!(calls.get("proxy_get_shared_data"), Some(&1), "{calls:?}");
        assert_eq!(calls.get("proxy_set_shared_data"), None, "{calls:?}");
    }
}

#[test]
fn the_suite_crosses_the_boundary_less_than_the_four_modules() {
    let mut s = suite(all_four());
    let suite_calls = calls_per_miss(&mut s, &[]);

    let mut separate: BTreeMap<String, u64> = BTreeMap::new();
    for (name, cfg) in [
        ("ratelimit", ratelimit()),
        ("router", router()),
        ("cache", cache()),
        ("hashring", hashring()),
    ] {
        let mut h = Host::load(format!("dist/{name}.wasm"))
            .unwrap()
            .workers(2)
            .configure(cfg.to_string())
            .unwrap();
        // The hashring runs behind the router, as in the chain.
        let extra: &[(&str, &str)] = if name == "hashring" {
            &[("x-switchyard-cluster", "web")]
        } else {
            &[]
        };
        let calls = calls_per_miss(&mut h, extra);
        println!(
            "{name}: {} host calls per miss {calls:?}",
            calls.values().sum::<u64>()
        );
        for (k, v) in calls {
            *separate.entry(k).or_default() += v;
        }
    }
    let total = |m: &BTreeMap<String, u64>| m.values().sum::<u64>();
    println!(
        "suite: {} host calls per miss {suite_calls:?}",
        total(&suite_calls)
    );
    println!(
        "separate: {} host calls per miss {separate:?}",
        total(&separate)
    );
    let get = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    // The request's header map is read once for all stages (plus the response's, which the
    // cache reads), where each separate module reads it again.
    assert!(
        get(&suite_calls, "proxy_get_header_map_pairs") <= 2,
        "{suite_calls:?}"
    );
    assert!(
        get(&separate, "proxy_get_header_map_pairs")
            >= get(&suite_calls, "proxy_get_header_map_pairs") + 3,
        "{separate:?}"
    );
    // One clock read per callback, not one per filter and callback.
    assert!(
        get(&suite_calls, "proxy_get_current_time_nanoseconds")
            < get(&separate, "proxy_get_current_time_nanoseconds"),
        "{suite_calls:?} vs {separate:?}"
    );
    assert!(
        total(&suite_calls) < total(&separate),
        "{suite_calls:?} vs {separate:?}"
    );
}

/// Not a test: a load for profiling the suite's miss path in this host, e.g.
/// `SWITCHYARD_WASM_PERFMAP=1 perf record -g <this test binary> --ignored --exact
/// profile_the_miss_path` with `PROFILE_MODULE` an unstripped build of the suite
/// (`CARGO_PROFILE_RELEASE_STRIP=false`; docs/benchmarks.md). With `SWITCHYARD_WASM_FUEL=1` it
/// prints the wasm instructions one miss executes, which do not move with the machine's load;
/// `PROFILE_STAGES` picks the stages.
#[test]
#[ignore]
fn profile_the_miss_path() {
    let module = std::env::var("PROFILE_MODULE").unwrap_or("dist/switchyard.wasm".into());
    // `PROFILE_STAGES=cache,router`: only these stages (default: all four).
    let mut stages = all_four();
    if let Ok(only) = std::env::var("PROFILE_STAGES") {
        let only: Vec<&str> = only.split(',').collect();
        if let Some(all) = stages.as_object_mut() {
            all.retain(|name, _| only.contains(&name.as_str()));
        }
    }
    let mut host = Host::load(&module)
        .unwrap()
        .workers(2)
        .configure(json!({ "stages": stages }).to_string())
        .unwrap();
    let n: usize = std::env::var("PROFILE_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut before = None;
    for i in 0..n {
        if i == n / 10 {
            // After a warm-up: the tables are built and the cache has started evicting.
            before = host.fuel_used();
        }
        let out = send(
            &mut host,
            i % 2,
            &format!("/svc{}/items/{i}", i % 20),
            &format!("u{i}"),
        );
        assert_eq!(out.status(), Some(200));
    }
    if let (Some(before), Some(after)) = (before, host.fuel_used()) {
        let measured = (n - n / 10) as u64;
        println!(
            "wasm instructions per miss (fuel): {}",
            (after - before) / measured.max(1)
        );
    }
}
