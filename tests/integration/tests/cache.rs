//! The cache filter against a real Envoy 1.40 (`--concurrency 2`) and the upstream test server,
//! which counts requests (a hit never reaches it) and takes its response headers from the
//! query (`header=Cache-Control:max-age%3D60`, `etag=`, ...) or `x-echo-<name>` request headers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};
use switchyard_harness::{eventually, parallel, workspace_root, Envoy};
use switchyard_integration::{age, cc, x_cache};
use switchyard_upstream::Upstream;

const TOKEN: &str = "s3cret";

fn config() -> Value {
    json!({
        "max_bytes": 1 << 20,
        "max_entry_bytes": 65536,
        "eviction": "lru",
        "key": {"query": "all", "headers": []},
        "default_ttl": "0s",
        "bypass": [{"path": {"prefix": "/admin"}}],
        "purge": {"method": "PURGE", "token_header": "x-purge-token", "token": TOKEN, "path": "/__purge"},
        "upstream_cluster": "web"
    })
}

fn start(up: &Upstream, cfg: Value) -> Envoy {
    Envoy::builder()
        .wasm_filter("cache", cfg)
        .cluster("web", [up.addr()])
        .start()
}

#[test]
fn example_config_validates() {
    let file = "envoy/cache.yaml";
    switchyard_integration::assert_envoy_accepts(file);
    let demo: Value = serde_json::from_slice(
        &std::fs::read(workspace_root().join("envoy/demo/cache.json")).unwrap(),
    )
    .unwrap();
    switchyard_cache::validate_config(demo.to_string().as_bytes()).unwrap();
}

#[test]
fn bad_config_is_rejected_naming_the_field() {
    let up = Upstream::start("u1").unwrap();
    let Err(err) = Envoy::builder()
        .wasm_filter("cache", json!({"eviction": "random"}))
        .cluster("web", [up.addr()])
        .try_start()
    else {
        panic!("Envoy must reject the configuration");
    };
    assert!(
        err.log
            .contains("switchyard cache: invalid configuration: eviction"),
        "{}",
        err.log
    );
}

#[test]
fn hit_across_workers_with_age_and_cache_status() {
    let up = Upstream::start("u1").unwrap();
    let envoy = start(&up, config());
    // The upstream says the response is already 100 s old.
    let path = format!("/hit?{}&header=Age:100", cc("max-age=600"));
    let first = envoy.get(&path).send();
    assert_eq!(first.status, 200);
    assert_eq!(x_cache(&first), "MISS");
    assert_eq!(
        first.header("cache-status"),
        Some("switchyard; fwd=miss; stored")
    );
    let started = Instant::now();
    // Connection: close on every request, so both workers serve some of them.
    let hits = parallel(30, 6, |_| envoy.get(&path));
    let elapsed = started.elapsed().as_secs() + 1;
    for r in hits {
        let r = r.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(x_cache(&r), "HIT", "{:?}", r.headers);
        assert_eq!(r.body, first.body);
        // RFC 9111 §4.2.3: at least the upstream's Age, plus at most the time spent here.
        let a = age(&r);
        assert!((100..=100 + elapsed + 1).contains(&a), "age {a}");
        let cs = r.header("cache-status").unwrap();
        let ttl: i64 = cs
            .strip_prefix("switchyard; hit; ttl=")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(ttl, 600 - a as i64, "{cs}");
    }
    assert_eq!(up.count_path("/hit"), 1);
    // Both workers accepted connections, and every one of their requests after the first was
    // a hit: the entry stored by one worker is served by the other.
    let stats = envoy.stats();
    let busy_workers = stats
        .iter()
        .filter(|(k, v)| {
            k.starts_with("listener.127.0.0.1_")
                && k.ends_with(".downstream_cx_total")
                && k.contains(".worker_")
                && **v > 0
        })
        .count();
    assert_eq!(busy_workers, 2, "{stats:?}");
    assert!(eventually(Duration::from_secs(5), || {
        envoy.stat_value("switchyard.cache.hits") == 30
    }));
    assert!(envoy.stat_value("switchyard.cache.bytes_in_use") > 0);
    // HEAD is answered from the GET entry.
    let head = envoy.request("HEAD", &path).send();
    assert_eq!((head.status, x_cache(&head)), (200, "HIT"));
    assert!(head.body.is_empty());
    assert_eq!(up.count_path("/hit"), 1);
}

#[test]
fn vary_keeps_variants_apart_and_vary_star_is_never_served() {
    let up = Upstream::start("u1").unwrap();
    let envoy = start(&up, config());
    let path = format!("/v?{}&header=Vary:Accept-Language", cc("max-age=600"));
    let get = |lang: &str| envoy.get(&path).header("accept-language", lang).send();
    let en = get("en");
    assert_eq!(x_cache(&en), "MISS");
    assert_eq!(x_cache(&get("en")), "HIT");
    let fr = get("fr");
    assert_eq!(x_cache(&fr), "MISS");
    assert_eq!(fr.json()["headers"]["accept-language"], "fr");
    let fr2 = get("fr");
    assert_eq!(x_cache(&fr2), "HIT");
    assert_eq!(fr2.json()["headers"]["accept-language"], "fr");
    assert_eq!(get("en").json()["headers"]["accept-language"], "en");
    assert_eq!(up.count_path("/v"), 2);

    let star = format!("/star?{}&header=Vary:*", cc("max-age=600"));
    for _ in 0..3 {
        let r = envoy.get(&star).send();
        assert_eq!(x_cache(&r), "MISS");
    }
    assert_eq!(up.count_path("/star"), 3);
}

#[test]
fn no_store_private_authorization_and_set_cookie_never_leak() {
    let up = Upstream::start("u1").unwrap();
    let envoy = start(&up, config());
    for (name, query) in [
        ("/nostore", cc("max-age=600, no-store")),
        ("/private", cc("private, max-age=600")),
        (
            "/cookie",
            format!("{}&header=Set-Cookie:sid%3Dalice", cc("max-age=600")),
        ),
    ] {
        let path = format!("{name}?{query}");
        for _ in 0..3 {
            let r = envoy.get(&path).send();
            assert_eq!(r.status, 200);
            assert_eq!(x_cache(&r), "MISS", "{name}");
        }
        assert_eq!(
            up.count_path(name),
            3,
            "{name} must never be served from cache"
        );
    }
    // Authorization: a response without public/s-maxage/must-revalidate is not stored...
    let auth = format!("/auth?{}", cc("max-age=600"));
    let r = envoy
        .get(&auth)
        .header("authorization", "Bearer alice")
        .send();
    assert_eq!(
        r.header("cache-status"),
        Some("switchyard; fwd=miss; detail=authorization")
    );
    let anon = envoy.get(&auth).send();
    assert_eq!(
        x_cache(&anon),
        "MISS",
        "alice's response must not be served to others"
    );
    assert!(anon.json()["headers"].get("authorization").is_none());
    // ...and the entry stored for anonymous requests is not served to a request with credentials.
    assert_eq!(x_cache(&envoy.get(&auth).send()), "HIT");
    let bob = envoy
        .get(&auth)
        .header("authorization", "Bearer bob")
        .send();
    assert_ne!(x_cache(&bob), "HIT");
    assert_eq!(bob.json()["headers"]["authorization"], "Bearer bob");
    // public allows it.
    let public = format!("/authpub?{}", cc("public, max-age=600"));
    envoy
        .get(&public)
        .header("authorization", "Bearer alice")
        .send();
    assert_eq!(
        x_cache(
            &envoy
                .get(&public)
                .header("authorization", "Bearer bob")
                .send()
        ),
        "HIT"
    );
    assert_eq!(up.count_path("/authpub"), 1);
}

#[test]
fn stale_entry_is_revalidated_with_304_and_client_conditionals_get_304() {
    let up = Upstream::start("u1").unwrap();
    let envoy = start(&up, config());
    // max-age=0: stored, but every use is revalidated with the ETag.
    let path = format!("/r?etag=v1&{}", cc("max-age=0"));
    let first = envoy.get(&path).send();
    assert_eq!((first.status, x_cache(&first)), (200, "MISS"));
    let second = envoy.get(&path).send();
    assert_eq!(
        second.status, 200,
        "the client gets the full cached response"
    );
    assert_eq!(x_cache(&second), "EXPIRED");
    assert_eq!(
        second.header("cache-status"),
        Some("switchyard; fwd=stale; fwd-status=304; stored")
    );
    assert_eq!(second.body, first.body);
    assert_eq!(up.count_path("/r"), 2);
    let reqs = up.requests();
    assert_eq!(reqs.last().unwrap().header("if-none-match"), Some("\"v1\""));

    // A fresh entry answers a matching conditional request itself.
    let fresh = format!("/c?etag=v2&{}", cc("max-age=600"));
    envoy.get(&fresh).send();
    let cond = envoy.get(&fresh).header("if-none-match", "\"v2\"").send();
    assert_eq!((cond.status, x_cache(&cond)), (304, "HIT"));
    assert!(cond.body.is_empty());
    let other = envoy.get(&fresh).header("if-none-match", "\"v9\"").send();
    assert_eq!((other.status, x_cache(&other)), (200, "HIT"));
    assert_eq!(up.count_path("/c"), 1);
}

#[test]
fn stale_while_revalidate_serves_stale_and_refreshes_in_background() {
    let up = Upstream::start("u1").unwrap();
    // One worker: background refreshes are deduplicated per worker (docs/cache.md, limits), and
    // this test counts them exactly.
    let envoy = Envoy::builder()
        .concurrency(1)
        .wasm_filter("cache", config())
        .cluster("web", [up.addr()])
        .start();
    // max-age 3: the refreshed entry stays fresh for at least 2 s (Date has 1 s resolution),
    // long enough for the HIT below even on a slow machine.
    let path = format!("/swr?{}", cc("max-age=3, stale-while-revalidate=600"));
    assert_eq!(x_cache(&envoy.get(&path).send()), "MISS");
    // Past the 3 s of freshness (Age >= 4), well inside the 600 s window.
    std::thread::sleep(Duration::from_millis(4100));
    let stale = envoy.get(&path).send();
    assert_eq!((stale.status, x_cache(&stale)), (200, "STALE"));
    assert!(age(&stale) >= 4);
    // The refresh happens without a client waiting for it.
    assert!(eventually(Duration::from_secs(10), || up
        .count_path("/swr")
        == 2));
    assert!(eventually(Duration::from_secs(10), || {
        x_cache(&envoy.get(&path).send()) == "HIT"
    }));
    assert_eq!(up.count_path("/swr"), 2);
}

#[test]
fn stale_if_error_serves_stale_on_5xx_and_connection_failure() {
    let up = Upstream::start("u1").unwrap();
    let envoy = start(&up, config());
    let path = format!("/sie?{}", cc("max-age=1, stale-if-error=600"));
    let first = envoy.get(&path).send();
    assert_eq!(x_cache(&first), "MISS");
    std::thread::sleep(Duration::from_millis(2100));
    // The upstream answers 503 (x-echo-status is not part of the cache key).
    let r = envoy.get(&path).header("x-echo-status", "503").send();
    assert_eq!((r.status, x_cache(&r)), (200, "STALE"), "{:?}", r.headers);
    assert_eq!(r.body, first.body);
    // Without stale-if-error a 5xx goes through.
    let plain = format!("/plain?{}", cc("max-age=1"));
    envoy.get(&plain).send();
    std::thread::sleep(Duration::from_millis(2100));
    let r = envoy.get(&plain).header("x-echo-status", "503").send();
    assert_eq!(r.status, 503);
    // Connection failure.
    up.stop();
    let r = envoy.get(&path).send();
    assert_eq!((r.status, x_cache(&r)), (200, "STALE"), "{:?}", r.headers);
}

#[test]
fn successful_unsafe_request_invalidates_the_uri() {
    let up = Upstream::start("u1").unwrap();
    let envoy = start(&up, config());
    let path = format!("/inv?{}", cc("max-age=600"));
    envoy.get(&path).send();
    assert_eq!(x_cache(&envoy.get(&path).send()), "HIT");
    // A failed POST invalidates nothing.
    let failed = envoy
        .request("POST", "/inv")
        .header("x-echo-status", "500")
        .body("x")
        .send();
    assert_eq!(failed.status, 500);
    assert_eq!(x_cache(&envoy.get(&path).send()), "HIT");
    let ok = envoy.request("POST", "/inv").body("x").send();
    assert_eq!(ok.status, 200);
    assert_eq!(x_cache(&envoy.get(&path).send()), "MISS");
    // Location on the same authority is invalidated too.
    let other = format!("/other?{}", cc("max-age=600"));
    envoy.get(&other).send();
    assert_eq!(x_cache(&envoy.get(&other).send()), "HIT");
    let put = envoy
        .request("PUT", "/inv?header=Location:/other")
        .body("x")
        .send();
    assert_eq!(put.status, 200);
    assert_eq!(x_cache(&envoy.get(&other).send()), "MISS");
}

#[test]
fn purge_by_key_prefix_and_tag_requires_the_token() {
    let up = Upstream::start("u1").unwrap();
    let envoy = start(&up, config());
    let q = cc("max-age=600");
    let paths = [
        format!("/p/a?{q}"),
        format!("/p/b?{q}"),
        format!("/q/c?{q}&header=Cache-Tag:red,blue"),
        format!("/q/d?{q}&header=Surrogate-Key:blue"),
        format!("/q/e?{q}&header=Cache-Tag:green"),
    ];
    let prime = || {
        for p in &paths {
            envoy.get(p).send();
        }
    };
    let cached = |p: &str| x_cache(&envoy.get(p).send()) == "HIT";
    prime();
    assert!(paths.iter().all(|p| cached(p)));
    // Without or with a wrong token: 403 and nothing purged.
    let denied = envoy.request("PURGE", &paths[0]).send();
    assert_eq!(denied.status, 403);
    let wrong = envoy
        .request("PURGE", &paths[0])
        .header("x-purge-token", "nope")
        .send();
    assert_eq!(wrong.status, 403);
    let tag_denied = envoy
        .request("PURGE", "/")
        .header("x-purge-tag", "blue")
        .send();
    assert_eq!(tag_denied.status, 403);
    assert!(paths.iter().all(|p| cached(p)));
    // One key.
    let r = envoy
        .request("PURGE", &paths[0])
        .header("x-purge-token", TOKEN)
        .send();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["purged"], 1);
    assert!(!cached(&paths[0]));
    assert!(cached(&paths[1]));
    // A prefix.
    let r = envoy
        .request("PURGE", "/p/*")
        .header("x-purge-token", TOKEN)
        .send();
    assert_eq!(r.json()["purged"], 2, "/p/a (re-stored above) and /p/b");
    assert!(!cached(&paths[1]));
    assert!(cached(&paths[2]));
    // A tag, from Cache-Tag or Surrogate-Key.
    let r = envoy
        .request("PURGE", "/")
        .header("x-purge-token", TOKEN)
        .header("x-purge-tag", "blue")
        .send();
    assert_eq!(r.json()["purged"], 2);
    assert!(!cached(&paths[2]) && !cached(&paths[3]));
    assert!(cached(&paths[4]));
    // The configured purge path takes the target from the query.
    let denied = envoy.get("/__purge?prefix=/q/").send();
    assert_eq!(denied.status, 403);
    assert!(cached(&paths[4]));
    let r = envoy
        .get("/__purge?prefix=/q/")
        .header("x-purge-token", TOKEN)
        .send();
    // /q/c and /q/d were stored again by the checks above, plus /q/e.
    assert_eq!(r.json()["purged"], 3);
    assert!(!cached(&paths[4]));
    // The target URL is one query value, so it is percent-encoded as a whole.
    let url = paths[1]
        .replace('%', "%25")
        .replace('&', "%26")
        .replace('?', "%3F");
    let r = envoy
        .get(&format!("/__purge?url={url}"))
        .header("x-purge-token", TOKEN)
        .send();
    assert_eq!(r.json()["purged"], 1, "{url}");
    assert!(!cached(&paths[1]));
    assert!(envoy.stat_value("switchyard.cache.purges") >= 5);
}

#[test]
fn max_bytes_holds_under_a_flood_and_large_bodies_stream_intact() {
    let up = Upstream::start("u1").unwrap();
    let mut cfg = config();
    cfg["max_bytes"] = json!(64 * 1024);
    cfg["max_entry_bytes"] = json!(16 * 1024);
    let envoy = start(&up, cfg);
    let q = cc("max-age=600");
    let results = parallel(300, 4, |i| envoy.get(&format!("/flood/{i}?size=2000&{q}")));
    for r in results {
        let r = r.unwrap();
        assert_eq!((r.status, r.body.len()), (200, 2000));
    }
    let used = envoy.stat_value("switchyard.cache.bytes_in_use");
    assert!(used > 0 && used <= 64 * 1024, "bytes in use {used}");
    assert!(
        eventually(Duration::from_secs(5), || envoy
            .stat_value("switchyard.cache.evictions")
            > 0),
        "evictions {} stores {}",
        envoy.stat_value("switchyard.cache.evictions"),
        envoy.stat_value("switchyard.cache.stores")
    );
    // The most recent entries are still served.
    assert_eq!(
        x_cache(&envoy.get(&format!("/flood/299?size=2000&{q}")).send()),
        "HIT"
    );
    // A chunked body within the limit is collected across chunks and stored whole.
    let chunked = format!("/chunked?size=9000&chunked=1&{q}");
    let first = envoy.get(&chunked).send();
    assert_eq!((x_cache(&first), first.body.len()), ("MISS", 9000));
    let again = envoy.get(&chunked).send();
    assert_eq!(x_cache(&again), "HIT");
    assert_eq!(again.body, first.body);
    // Larger than max_entry_bytes: not stored, body intact (known length and chunked).
    for extra in ["", "&chunked=1"] {
        let path = format!("/big?size=100000&{q}{extra}");
        for _ in 0..2 {
            let r = envoy.get(&path).send();
            assert_eq!((r.status, r.body.len()), (200, 100000));
            assert_eq!(x_cache(&r), "MISS");
        }
    }
    let used = envoy.stat_value("switchyard.cache.bytes_in_use");
    assert!(used <= 64 * 1024, "bytes in use {used}");
}

#[test]
fn twenty_concurrent_misses_make_one_upstream_request() {
    let up = Upstream::start("u1").unwrap();
    let envoy = start(&up, config());
    let path = format!("/co?delay=1s&{}", cc("max-age=600"));
    let results = parallel(20, 20, |_| {
        envoy.get(&path).timeout(Duration::from_secs(30))
    });
    let mut kinds = Vec::new();
    for r in results {
        let r = r.unwrap();
        assert_eq!(r.status, 200);
        kinds.push(x_cache(&r).to_string());
    }
    assert_eq!(up.count_path("/co"), 1, "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| *k == "MISS").count(),
        1,
        "{kinds:?}"
    );
}

#[test]
fn only_if_cached_bypass_and_request_directives() {
    let up = Upstream::start("u1").unwrap();
    let envoy = start(&up, config());
    let path = format!("/oic?{}", cc("max-age=600"));
    let r = envoy
        .get(&path)
        .header("cache-control", "only-if-cached")
        .send();
    assert_eq!(r.status, 504);
    assert_eq!(up.count_path("/oic"), 0);
    envoy.get(&path).send();
    let r = envoy
        .get(&path)
        .header("cache-control", "only-if-cached")
        .send();
    assert_eq!((r.status, x_cache(&r)), (200, "HIT"));
    // Request no-cache goes upstream; so does min-fresh beyond the remaining freshness.
    let with_cc =
        |v: &str| x_cache(&envoy.get(&path).header("cache-control", v).send()).to_string();
    assert_eq!(with_cc("no-cache"), "EXPIRED");
    assert_eq!(with_cc("min-fresh=601"), "EXPIRED");
    // max-stale does not turn a fresh entry away.
    assert_eq!(with_cc("max-stale=5"), "HIT");
    assert_eq!(up.count_path("/oic"), 3);
    // Bypass matcher.
    let admin = format!("/admin/x?{}", cc("max-age=600"));
    for _ in 0..2 {
        let r = envoy.get(&admin).send();
        assert_eq!(x_cache(&r), "BYPASS");
        assert_eq!(
            r.header("cache-status"),
            Some("switchyard; fwd=bypass; detail=config")
        );
    }
    assert_eq!(up.count_path("/admin/x"), 2);
}

/// HTTP/2 (h2c prior knowledge, via curl): hits, and large bodies pass through intact.
#[test]
fn http2_clients_get_hits_and_intact_large_bodies() {
    let up = Upstream::start("u1").unwrap();
    let envoy = start(&up, config());
    let curl = |path: &str| {
        let out = Command::new("curl")
            .args(["-s", "-i", "--http2-prior-knowledge", "--max-time", "20"])
            .arg(format!("http://{}{}", envoy.listen_addr(), path))
            .output()
            .expect("curl is needed for the HTTP/2 test");
        assert!(out.status.success(), "curl failed: {out:?}");
        let text = out.stdout;
        let split = text.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&text[..split]).to_lowercase();
        (head, text[split + 4..].to_vec())
    };
    let path = format!("/h2?{}", cc("max-age=600"));
    let (head, first) = curl(&path);
    assert!(head.starts_with("http/2 200"), "{head}");
    assert!(head.contains("x-cache: miss"), "{head}");
    let (head, second) = curl(&path);
    assert!(head.contains("x-cache: hit"), "{head}");
    assert_eq!(first, second);
    assert_eq!(up.count_path("/h2"), 1);
    let big = format!("/h2big?size=200000&chunked=1&{}", cc("max-age=600"));
    let (head, body) = curl(&big);
    assert!(head.starts_with("http/2 200"), "{head}");
    assert_eq!(body.len(), 200000);
}

/// `default_ttl` covers responses without freshness information; `store_set_cookie` stores a
/// response with `Set-Cookie` but never replays the cookie to anyone else.
#[test]
fn default_ttl_and_stored_set_cookie_without_the_cookie() {
    let up = Upstream::start("u1").unwrap();
    let mut cfg = config();
    cfg["default_ttl"] = json!("60s");
    cfg["store_set_cookie"] = json!(true);
    let envoy = start(&up, cfg);
    let started = Instant::now();
    assert_eq!(x_cache(&envoy.get("/dt").send()), "MISS");
    let hit = envoy.get("/dt").send();
    let elapsed = started.elapsed().as_secs() as i64 + 1;
    assert_eq!(x_cache(&hit), "HIT");
    let ttl: i64 = hit
        .header("cache-status")
        .unwrap()
        .strip_prefix("switchyard; hit; ttl=")
        .unwrap()
        .parse()
        .unwrap();
    assert!((60 - elapsed..=60).contains(&ttl), "ttl {ttl}");
    // Explicit freshness wins over default_ttl: max-age=0 without a validator is not stored.
    let zero = format!("/dt0?{}", cc("max-age=0"));
    envoy.get(&zero).send();
    assert_eq!(x_cache(&envoy.get(&zero).send()), "MISS");
    assert_eq!(up.count_path("/dt0"), 2);

    let path = format!("/sc?{}&header=Set-Cookie:sid%3Dalice", cc("max-age=600"));
    let first = envoy.get(&path).send();
    assert_eq!(first.header("set-cookie"), Some("sid=alice"));
    let second = envoy.get(&path).send();
    assert_eq!(x_cache(&second), "HIT");
    assert_eq!(second.header("set-cookie"), None);
    assert_eq!(up.count_path("/sc"), 1);
}

/// Many slow, large misses at once on one worker: the bodies being collected stay within
/// `max_collect_bytes`; misses beyond it stream through uncached, whole and correct.
#[test]
fn concurrent_slow_large_misses_stay_within_the_collect_budget() {
    let up = Upstream::start("u1").unwrap();
    let envoy = Envoy::builder()
        .concurrency(1)
        .wasm_filter(
            "cache",
            json!({"max_bytes": 8 << 20, "max_entry_bytes": 256 << 10,
                   "max_collect_bytes": 512 << 10, "coalesce_timeout": "0s"}),
        )
        .cluster("web", [up.addr()])
        .start();
    const SIZE: usize = 200 << 10;
    let results = parallel(8, 8, |i| {
        envoy
            .get(&format!(
                "/big/{i}?size={SIZE}&chunked=1&chunk_delay=300ms&{}",
                cc("max-age=600")
            ))
            .timeout(Duration::from_secs(30))
    });
    for r in results {
        let r = r.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), SIZE, "every body arrives whole");
    }
    // 8 × 200 KiB in flight against a 512 KiB budget: at most two can be collected at once.
    let exceeded = envoy.stat_value("wasmcustom.switchyard.cache.collect_budget_exceeded");
    let stores = envoy.stat_value("wasmcustom.switchyard.cache.stores");
    assert!(exceeded >= 5, "passed through uncached: {exceeded}");
    assert!(stores <= 3, "stored: {stores}");
    assert_eq!(exceeded + stores, 8);
}

/// RFC 9111 §4.3.5: a `200` to a forwarded HEAD freshens the stored GET response it describes
/// (same validators and length), and a HEAD that describes another representation invalidates
/// it.
#[test]
fn a_head_response_updates_or_invalidates_the_stored_get() {
    let up = Upstream::start("u1").unwrap();
    let envoy = Envoy::builder()
        .concurrency(1)
        .wasm_filter("cache", json!({}))
        .cluster("web", [up.addr()])
        .start();
    let get = |extra: &[(&str, &str)]| {
        let mut r = envoy.get("/head-update?size=5");
        for (k, v) in extra {
            r = r.header(k, v);
        }
        r.send()
    };
    // No validators: the HEAD below is forwarded unconditionally and answered 200.
    let first = get(&[("x-echo-header", "Cache-Control:max-age=1")]);
    assert_eq!(x_cache(&first), "MISS");
    std::thread::sleep(Duration::from_millis(1100));
    // Stale now: the HEAD goes upstream and gets a 200 describing the same representation
    // (no validators, the same length) with new freshness, which freshens the stored GET.
    let head = envoy
        .request("HEAD", "/head-update?size=5")
        .header("x-echo-header", "Cache-Control:max-age=600")
        .header("cache-control", "no-cache")
        .send();
    assert_eq!(head.status, 200);
    let hit = get(&[]);
    assert_eq!(x_cache(&hit), "HIT", "{:?}", hit.headers);
    assert_eq!(hit.body.len(), 5);
    let ttl: i64 = hit
        .header("cache-status")
        .and_then(|c| c.split("ttl=").nth(1))
        .and_then(|t| t.split(';').next())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        ttl > 500,
        "freshened to max-age=600: {:?}",
        hit.header("cache-status")
    );
    // A HEAD describing another representation (new ETag) invalidates the stored GET.
    envoy
        .request("HEAD", "/head-update?size=5")
        .header("x-echo-etag", "v2")
        .header("cache-control", "no-cache")
        .send();
    let after = get(&[("x-echo-header", "Cache-Control:max-age=600")]);
    assert_ne!(x_cache(&after), "HIT");
}
