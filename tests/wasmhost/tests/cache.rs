//! Cache module tests Envoy cannot do deterministically: expiry on a frozen clock, exact `Age`,
//! hits across workers, stale-while-revalidate with a background callout that the test fails,
//! times out or answers, and stale-if-error.

use serde_json::json;
use std::time::Duration;
use switchyard_wasmhost::{CalloutReply, Host, Outcome};

fn cache(config: serde_json::Value) -> Host {
    Host::load("dist/cache.wasm")
        .unwrap()
        .workers(2)
        .configure(config.to_string())
        .unwrap()
}

fn get(host: &mut Host, worker: usize, cache_control: &str, body: &str) -> Outcome {
    host.worker(worker)
        .request()
        .path("/item")
        .upstream_header("cache-control", cache_control)
        .upstream_header("etag", "\"v1\"")
        .upstream_body(body)
        .send()
        .unwrap()
}

fn x_cache(out: &Outcome) -> &str {
    out.response_header("x-cache").unwrap_or("<none>")
}

#[test]
fn entries_are_shared_across_workers_and_expire_exactly() {
    let mut host = cache(json!({}));
    let miss = get(&mut host, 0, "max-age=60", "v1");
    assert!(miss.upstream_reached());
    assert_eq!(x_cache(&miss), "MISS");
    // Stored by worker 0, a hit on worker 1: answered without the upstream.
    let hit = get(&mut host, 1, "max-age=60", "unused");
    assert!(!hit.upstream_reached());
    assert_eq!(x_cache(&hit), "HIT");
    assert_eq!(hit.response_body(), "v1");
    assert_eq!(hit.response_header("age"), Some("0"));
    host.advance(Duration::from_secs(59)).unwrap();
    let old = get(&mut host, 0, "max-age=60", "unused");
    assert_eq!(
        (x_cache(&old), old.response_header("age")),
        ("HIT", Some("59"))
    );
    host.advance(Duration::from_secs(1)).unwrap();
    let expired = get(&mut host, 1, "max-age=60", "v2");
    assert!(
        expired.upstream_reached(),
        "an entry of age 60 is no longer fresh"
    );
    assert_ne!(x_cache(&expired), "HIT");
    assert_eq!(expired.response_body(), "v2");
    assert!(host.metric("switchyard.cache.hits").unwrap() >= 2);
}

fn swr_host() -> Host {
    let mut host = cache(json!({"upstream_cluster": "origin", "upstream_timeout": "2s"}));
    get(&mut host, 0, "max-age=10, stale-while-revalidate=60", "old");
    host.advance(Duration::from_secs(15)).unwrap();
    host
}

/// Serves the stale entry and returns the background revalidation callout it caused.
fn stale_hit(host: &mut Host, worker: usize) -> (Outcome, switchyard_wasmhost::Callout) {
    let out = get(
        host,
        worker,
        "max-age=10, stale-while-revalidate=60",
        "unused",
    );
    assert!(
        !out.upstream_reached(),
        "stale-while-revalidate answers from the cache"
    );
    assert_eq!(x_cache(&out), "STALE");
    assert_eq!(out.response_body(), "old");
    // The revalidation is sent from the root context on the next tick.
    host.advance(Duration::from_millis(20)).unwrap();
    let calls = host.callouts();
    assert_eq!(
        calls.len(),
        1,
        "exactly one background revalidation: {calls:?}"
    );
    let call = calls[0].clone();
    assert_eq!(call.cluster, "origin");
    assert_eq!(call.header(":path"), Some("/item"));
    assert_eq!(call.header("if-none-match"), Some("\"v1\""));
    (out, call)
}

#[test]
fn stale_while_revalidate_keeps_serving_when_the_revalidation_fails() {
    let mut host = swr_host();
    let (_, call) = stale_hit(&mut host, 1);
    host.answer(call.id, CalloutReply::Failure).unwrap();
    assert!(host
        .log_messages(switchyard_wasmhost::LogLevel::Warn)
        .iter()
        .any(|m| m.contains("background revalidation failed")));
    // Still stale, still served, and revalidated again.
    let (again, call) = stale_hit(&mut host, 0);
    assert_eq!(again.response_body(), "old");
    host.answer(
        call.id,
        CalloutReply::http(200)
            .header("cache-control", "max-age=100")
            .header("etag", "\"v2\"")
            .body("new"),
    )
    .unwrap();
    let fresh = get(&mut host, 1, "max-age=10", "unused");
    assert_eq!(
        (x_cache(&fresh), fresh.response_body().as_str()),
        ("HIT", "new")
    );
    assert_eq!(
        host.metric("switchyard.cache.background_revalidations"),
        Some(2)
    );
}

#[test]
fn a_slow_revalidation_times_out_and_the_stale_entry_stays() {
    let mut host = swr_host();
    let (_, call) = stale_hit(&mut host, 0);
    assert_eq!(call.timeout, Some(Duration::from_secs(2)));
    // Nobody answers: virtual time passes the callout's timeout.
    host.advance(Duration::from_secs(2)).unwrap();
    assert!(host.callouts().is_empty(), "the timed-out callout is gone");
    assert_eq!(
        host.metric("switchyard.cache.background_revalidations"),
        Some(1)
    );
    let out = get(
        &mut host,
        1,
        "max-age=10, stale-while-revalidate=60",
        "unused",
    );
    assert_eq!(
        (x_cache(&out), out.response_body().as_str()),
        ("STALE", "old")
    );
}

#[test]
fn a_304_revalidation_refreshes_the_entry() {
    let mut host = swr_host();
    let (_, call) = stale_hit(&mut host, 1);
    host.answer(
        call.id,
        CalloutReply::http(304).header("cache-control", "max-age=30"),
    )
    .unwrap();
    let out = get(&mut host, 0, "unused", "unused");
    assert_eq!(
        (x_cache(&out), out.response_body().as_str()),
        ("HIT", "old")
    );
    assert_eq!(host.metric("switchyard.cache.revalidated"), Some(1));
    // The 304's headers replaced the stored ones: max-age=30 and no stale-while-revalidate.
    host.advance(Duration::from_secs(29)).unwrap();
    let out = get(&mut host, 1, "unused", "unused");
    assert_eq!(
        (x_cache(&out), out.response_header("age")),
        ("HIT", Some("29"))
    );
    host.advance(Duration::from_secs(1)).unwrap();
    let out = get(&mut host, 0, "max-age=30", "newest");
    assert_eq!(x_cache(&out), "EXPIRED");
    assert!(out.upstream_reached());
}

#[test]
fn stale_if_error_serves_the_old_entry_when_the_upstream_fails() {
    let mut host = cache(json!({}));
    get(&mut host, 0, "max-age=10, stale-if-error=60", "good");
    host.advance(Duration::from_secs(20)).unwrap();
    let out = host
        .worker(1)
        .request()
        .path("/item")
        .upstream_status(503)
        .upstream_body("broken")
        .send()
        .unwrap();
    assert!(out.upstream_reached());
    assert_eq!(out.status(), Some(200));
    assert_eq!(out.response_body(), "good");
    // Past the stale-if-error window the error goes through.
    host.advance(Duration::from_secs(60)).unwrap();
    let out = host
        .worker(0)
        .request()
        .path("/item")
        .upstream_status(503)
        .upstream_body("broken")
        .send()
        .unwrap();
    assert_eq!(
        (out.status(), out.response_body().as_str()),
        (Some(503), "broken")
    );
}

#[test]
fn methods_are_case_sensitive_and_the_key_is_the_forwarded_authority() {
    let mut host = cache(json!({}));
    let send = |host: &mut Host, method: &str, authority: &str| {
        host.worker(0)
            .request()
            .method(method)
            .authority(authority)
            .path("/item")
            .upstream_header("cache-control", "max-age=60")
            .upstream_body("x")
            .send()
            .unwrap()
    };
    // `get` is not `GET` (RFC 9110 §9.1): never stored or served from the cache.
    let lower = send(&mut host, "get", "example.com");
    assert_eq!(x_cache(&lower), "BYPASS");
    assert!(send(&mut host, "get", "example.com").upstream_reached());
    assert_eq!(x_cache(&send(&mut host, "GET", "example.com")), "MISS");
    assert_eq!(x_cache(&send(&mut host, "GET", "example.com")), "HIT");
    // The upstream sees `example.com:80` as sent: its entry is its own.
    let port = send(&mut host, "GET", "example.com:80");
    assert!(port.upstream_reached());
    assert_eq!(x_cache(&port), "MISS");
}

// The per-worker L1 (issue #17): a hot hit crosses the boundary for one shared-data read (the
// key's bucket), and a purge, an invalidation or a new version stored by another worker is
// never answered from a worker's L1 copy.
/// Shared-data reads of one request on `worker`.
fn shared_reads(host: &mut Host, worker: usize, body: &str) -> (Outcome, u64) {
    host.reset_host_calls();
    let out = get(host, worker, "max-age=60", body);
    let reads = host
        .host_calls()
        .get("proxy_get_shared_data")
        .copied()
        .unwrap_or(0);
    (out, reads)
}

fn purge(host: &mut Host, worker: usize) -> Outcome {
    host.worker(worker)
        .request()
        .method("PURGE")
        .path("/item")
        .header("x-purge-token", "t")
        .send()
        .unwrap()
}

#[test]
fn an_l1_hit_reads_one_bucket_and_never_outlives_a_change_on_another_worker() {
    let mut host = cache(json!({"purge": {"token": "t"}}));
    assert_eq!(x_cache(&get(&mut host, 0, "max-age=60", "v1")), "MISS");
    // Worker 1's first hit reads the bucket and the entry; its next ones only the bucket.
    let (first, reads) = shared_reads(&mut host, 1, "unused");
    assert_eq!(
        (x_cache(&first), first.response_body().as_str()),
        ("HIT", "v1")
    );
    assert_eq!(reads, 2, "bucket + entry");
    let (hot, reads) = shared_reads(&mut host, 1, "unused");
    assert_eq!((x_cache(&hot), hot.response_body().as_str()), ("HIT", "v1"));
    assert_eq!(
        reads, 1,
        "the bucket only: the entry comes from worker 1's L1"
    );
    assert_eq!(host.metric("switchyard.cache.l1_hits"), Some(1));

    // Worker 0 purges: worker 1 must not answer from its copy.
    let purged = purge(&mut host, 0);
    assert_eq!(purged.status(), Some(200));
    assert_eq!(purged.response_body(), "{\"purged\":1}\n");
    let after = get(&mut host, 1, "max-age=60", "v2");
    assert!(
        after.upstream_reached(),
        "purged on worker 0: a miss on worker 1"
    );
    assert_eq!(
        (x_cache(&after), after.response_body().as_str()),
        ("MISS", "v2")
    );

    // Worker 0 reads v2 (its L1 now holds v2), then worker 1 stores v3 over it after an unsafe
    // request invalidated v2: worker 0 serves v3, never its copy of v2.
    assert_eq!(
        get(&mut host, 0, "max-age=60", "unused").response_body(),
        "v2"
    );
    assert_eq!(
        get(&mut host, 0, "max-age=60", "unused").response_body(),
        "v2"
    );
    let post = host
        .worker(1)
        .request()
        .method("POST")
        .path("/item")
        .send()
        .unwrap();
    assert!(post.upstream_reached());
    let gone = get(&mut host, 0, "max-age=60", "v3");
    assert!(
        gone.upstream_reached(),
        "invalidated on worker 1: a miss on worker 0"
    );
    assert_eq!(gone.response_body(), "v3");
    let (v3, _) = shared_reads(&mut host, 1, "unused");
    assert_eq!((x_cache(&v3), v3.response_body().as_str()), ("HIT", "v3"));
}

#[test]
fn no_l1_reads_the_entry_on_every_hit() {
    let mut host = cache(json!({"l1": null}));
    get(&mut host, 0, "max-age=60", "v1");
    for _ in 0..3 {
        let (hit, reads) = shared_reads(&mut host, 1, "unused");
        assert_eq!((x_cache(&hit), reads), ("HIT", 2));
    }
    assert_eq!(host.metric("switchyard.cache.l1_hits"), Some(0));
}

/// Shared-data writes of one request for `/plain` (answers without validators) on `worker`,
/// and its outcome.
fn shared_writes(host: &mut Host, worker: usize, cache_control: &str) -> (Outcome, u64) {
    host.reset_host_calls();
    let out = host
        .worker(worker)
        .request()
        .path("/plain")
        .upstream_header("cache-control", cache_control)
        .upstream_body("body")
        .send()
        .unwrap();
    let writes = host
        .host_calls()
        .get("proxy_set_shared_data")
        .copied()
        .unwrap_or(0);
    (out, writes)
}

#[test]
fn misses_of_a_key_whose_answer_could_not_be_stored_skip_coalescing_until_it_is_stored() {
    let mut host = cache(json!({}));
    // The first miss takes the coalescing lock (one write) and releases it (another).
    let (first, writes) = shared_writes(&mut host, 0, "no-store");
    assert!(first.upstream_reached());
    assert_eq!((x_cache(&first), writes), ("MISS", 2));
    // Its answer could not be stored: the next miss goes upstream at once, without the lock.
    let (second, writes) = shared_writes(&mut host, 0, "no-store");
    assert!(second.upstream_reached());
    assert_eq!((x_cache(&second), writes), ("MISS", 0));
    assert_eq!(host.metric("switchyard.cache.uncacheable_passes"), Some(1));
    // The memory is the worker's own: the other worker still coalesces its first miss.
    let (other, writes) = shared_writes(&mut host, 1, "no-store");
    assert_eq!((x_cache(&other), writes), ("MISS", 2));
    // A storable answer is still stored (and ends the memory: `uncacheable` unit tests).
    let (stored, writes) = shared_writes(&mut host, 0, "max-age=60");
    assert!(stored.upstream_reached());
    assert!(writes >= 1, "the entry was written: {writes}");
    assert_eq!(host.metric("switchyard.cache.uncacheable_passes"), Some(2));
    assert_eq!(x_cache(&shared_writes(&mut host, 0, "max-age=60").0), "HIT");
}

#[test]
fn the_uncacheable_memory_expires_and_can_be_turned_off() {
    let mut host = cache(json!({"uncacheable_ttl": "5s"}));
    shared_writes(&mut host, 0, "no-store");
    assert_eq!(shared_writes(&mut host, 0, "no-store").1, 0);
    host.advance(Duration::from_secs(5)).unwrap();
    assert_eq!(
        shared_writes(&mut host, 0, "no-store").1,
        2,
        "coalesced again"
    );

    let mut off = cache(json!({"uncacheable_ttl": "0s"}));
    for _ in 0..3 {
        assert_eq!(shared_writes(&mut off, 0, "no-store").1, 2);
    }
    assert_eq!(off.metric("switchyard.cache.uncacheable_passes"), Some(0));
}
