//! obs-text in request headers (RFC 9110 §5.5: a field value may hold bytes 0x80-0xFF, e.g.
//! `X-User-Id: caf\xE9` as a lone Latin-1 byte, which is not UTF-8). Envoy passes such bytes to
//! the module unchanged; the proxy-wasm SDK's `String` getters unwrap a UTF-8 conversion and
//! panic on them, which traps the VM. This host carries header values as bytes, so each filter
//! (with its demo configuration, `envoy/demo/<f>.json`) gets exactly these bytes here and must
//! not trap, must keep serving normal requests, and must treat the bytes as bytes (a key made of
//! `caf\xE9` is not the key `café` in UTF-8).
//!
//! `SWITCHYARD_DIST=dir` runs the modules of `dir` instead of `<workspace>/dist`.

use serde_json::{json, Value};
use std::path::PathBuf;
use switchyard_wasmhost::{CalloutReply, Host, HostError, Outcome};

/// Lone obs-text bytes (never valid UTF-8) in the headers the filters read.
const OBS_HEADERS: &[(&str, &[u8])] = &[
    ("x-user-id", b"caf\xe9"),
    ("if-none-match", b"\"\xe9\""),
    ("cookie", b"session=caf\xe9; theme=\xff"),
    ("x-forwarded-for", b"10.0.0.1\xe9, 10.0.0.2"),
    ("authorization", b"Basic \xe9\xe9\xe9"),
];

fn module_path(filter: &str) -> PathBuf {
    match std::env::var_os("SWITCHYARD_DIST") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join(format!("{filter}.wasm")),
        _ => switchyard_wasmhost::workspace_root().join(format!("dist/{filter}.wasm")),
    }
}

fn demo_config(filter: &str) -> Value {
    let path = switchyard_wasmhost::workspace_root().join(format!("envoy/demo/{filter}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("demo config is JSON")
}

fn host(filter: &str, config: &Value) -> Host {
    Host::load(module_path(filter))
        .unwrap_or_else(|e| panic!("{filter}: {e}"))
        .workers(2)
        .property("cluster_name", "web")
        .configure(config.to_string())
        .unwrap_or_else(|e| panic!("{filter}: the demo configuration: {e}"))
}

/// Fails every callout the filter made (route-table reloads, revalidations): the request must
/// still end.
fn settle(host: &mut Host, out: Result<Outcome, HostError>, filter: &str) -> Outcome {
    let out = out.unwrap_or_else(|e| panic!("{filter}: {e}"));
    for call in host.callouts() {
        host.answer(call.id, CalloutReply::Failure)
            .unwrap_or_else(|e| panic!("{filter}: answering callout {}: {e}", call.id));
    }
    let out = host
        .outcome(out.stream)
        .unwrap_or_else(|e| panic!("{filter}: {e}"));
    assert!(
        out.is_complete(),
        "{filter}: the request never ended: {out:?}"
    );
    out
}

/// A request carrying every obs-text header.
fn obs_request(host: &mut Host, worker: usize, path: &str, filter: &str) -> Outcome {
    let mut request = host.worker(worker).request().path(path);
    for (name, value) in OBS_HEADERS {
        request = request.header_bytes(name, value);
    }
    let out = request
        .source("10.1.2.3:40000")
        .upstream_header("cache-control", "max-age=60")
        .upstream_header_bytes("etag", b"\"v\xe9\"")
        .upstream_body("obs")
        .send();
    settle(host, out, filter)
}

/// A plain request the filter must serve from the upstream.
fn normal(host: &mut Host, worker: usize, path: &str, filter: &str) -> Outcome {
    let out = host
        .worker(worker)
        .request()
        .path(path)
        .header("x-user-id", "alice")
        .source("10.9.9.9:5555")
        .send();
    let out = settle(host, out, filter);
    assert_eq!(out.status(), Some(200), "{filter}: normal request: {out:?}");
    assert!(out.upstream_reached(), "{filter}: normal request: {out:?}");
    out
}

/// Runs the obs-text request on both workers, a few times, then a normal request.
fn survives(filter: &str, config: &Value, path: &str) -> Host {
    let mut host = host(filter, config);
    for i in 0..4 {
        let out = obs_request(&mut host, i % 2, path, filter);
        if let Some(upstream) = &out.upstream {
            // The bytes reached the upstream unchanged (no transcoding anywhere).
            assert_eq!(
                upstream.header_bytes("x-user-id"),
                Some(&b"caf\xe9"[..]),
                "{filter}"
            );
            assert_eq!(
                upstream.header("x-user-id"),
                None,
                "not UTF-8: no &str view"
            );
        }
    }
    normal(&mut host, 0, path, filter);
    normal(&mut host, 1, "/fine", filter);
    host
}

#[test]
fn ratelimit_survives_obs_text_and_keys_by_bytes() {
    let mut config = demo_config("ratelimit");
    config["rules"].as_array_mut().expect("rules").push(json!({
        "name": "per-user",
        "match": {"path": {"prefix": "/api"}},
        "key": [{"header": "x-user-id"}],
        "limits": [{"requests": 2, "per": "1m"}]
    }));
    survives("ratelimit", &config, "/limited");

    let mut host = host("ratelimit", &config);
    let hit = |host: &mut Host, worker: usize, user: &[u8]| {
        let out = host
            .worker(worker)
            .request()
            .path("/api/x")
            .header_bytes("x-user-id", user)
            .send();
        settle(host, out, "ratelimit").status().unwrap_or(0)
    };
    // One bucket for the bytes `caf\xE9`, across both workers.
    assert_eq!(hit(&mut host, 0, b"caf\xe9"), 200);
    assert_eq!(hit(&mut host, 1, b"caf\xe9"), 200);
    assert_eq!(hit(&mut host, 0, b"caf\xe9"), 429);
    assert_eq!(hit(&mut host, 1, b"caf\xe9"), 429);
    // Other byte strings are other buckets: UTF-8 `café` (what a Latin-1 transcoding would have
    // made of the same value), another lone byte, the value with the byte dropped.
    for other in [&b"caf\xc3\xa9"[..], b"caf\xe8", b"caf", b"caf\xe9\xe9"] {
        assert_eq!(hit(&mut host, 0, other), 200, "{other:?}");
        assert_eq!(hit(&mut host, 1, other), 200, "{other:?}");
        assert_eq!(hit(&mut host, 0, other), 429, "{other:?}");
    }
    assert_eq!(hit(&mut host, 1, b"caf\xe9"), 429, "still limited");
    normal(&mut host, 0, "/fine", "ratelimit");
}

#[test]
fn cache_survives_obs_text_and_still_hits() {
    let config = demo_config("cache");
    let mut host = survives("cache", &config, "/item");
    // With `authorization` nothing is stored (RFC 9111 §3.5); without it, the other obs-text
    // request headers and an obs-text ETag from the upstream are stored and served.
    let get = |host: &mut Host, worker: usize| {
        let mut request = host.worker(worker).request().path("/stored");
        for (name, value) in OBS_HEADERS.iter().filter(|(n, _)| *n != "authorization") {
            request = request.header_bytes(name, value);
        }
        let out = request
            .upstream_header("cache-control", "max-age=60")
            .upstream_header_bytes("etag", b"\"v\xe9\"")
            .upstream_body("obs")
            .send();
        settle(host, out, "cache")
    };
    let miss = get(&mut host, 0);
    assert_eq!(miss.response_header("x-cache"), Some("MISS"), "{miss:?}");
    let hit = get(&mut host, 1);
    assert_eq!(hit.status(), Some(200), "{hit:?}");
    assert!(!hit.upstream_reached(), "a hit: {hit:?}");
    assert_eq!(hit.response_header("x-cache"), Some("HIT"));
    assert_eq!(hit.response_header_bytes("etag"), Some(&b"\"v\xe9\""[..]));
    assert_eq!(hit.response_header("etag"), None, "not UTF-8: no &str view");
    // A conditional request with the stored validator's exact bytes: 304; other bytes: 200.
    let conditional = |host: &mut Host, etag: &[u8]| {
        let out = host
            .request()
            .path("/stored")
            .header_bytes("if-none-match", etag)
            .send();
        settle(host, out, "cache").status()
    };
    assert_eq!(conditional(&mut host, b"\"v\xe9\""), Some(304));
    assert_eq!(conditional(&mut host, b"\"v\xc3\xa9\""), Some(200));
    normal(&mut host, 0, "/fine", "cache");
}

#[test]
fn router_survives_obs_text_and_sticks_by_bytes() {
    let config = demo_config("router");
    survives("router", &config, "/api/x");
    survives("router", &config, "/users/7");
    let mut host = host("router", &config);
    let cluster = |host: &mut Host, worker: usize, user: &[u8]| {
        let out = host
            .worker(worker)
            .request()
            .path("/api/x")
            .header_bytes("x-user-id", user)
            .send();
        let out = settle(host, out, "router");
        let upstream = out.upstream.expect("routed to the upstream");
        upstream
            .header("x-switchyard-cluster")
            .unwrap_or("<none>")
            .to_string()
    };
    // Sticky by the key's bytes: the same bytes always land on the same cluster.
    let first = cluster(&mut host, 0, b"caf\xe9");
    assert!(["api-v1", "api-v2"].contains(&first.as_str()), "{first}");
    for worker in [1, 0, 1] {
        assert_eq!(cluster(&mut host, worker, b"caf\xe9"), first);
    }
    normal(&mut host, 0, "/api/x", "router");
}

#[test]
fn hashring_survives_obs_text_and_hashes_by_bytes() {
    // Alone, nothing writes the routing record: without the demo's `clusters` the filter picks a
    // host for every request, which is what this test looks at.
    let mut config = demo_config("hashring");
    if let Some(c) = config.as_object_mut() {
        c.remove("clusters");
    }
    let mut host = survives("hashring", &config, "/");
    let chosen = |host: &mut Host, worker: usize, user: &[u8]| {
        let out = host
            .worker(worker)
            .request()
            .header_bytes("x-user-id", user)
            .send();
        let out = settle(host, out, "hashring");
        let upstream = out.upstream.expect("reached the upstream");
        upstream
            .header("x-upstream-host")
            .expect("routing header")
            .to_string()
    };
    let first = chosen(&mut host, 0, b"caf\xe9");
    for worker in [1, 0, 1] {
        assert_eq!(chosen(&mut host, worker, b"caf\xe9"), first);
    }
    normal(&mut host, 1, "/", "hashring");
}
