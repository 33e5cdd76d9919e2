//! Cache decision costs, with criterion (native, release):
//! `cargo bench -p switchyard-cache --bench decide`.
//!
//! - `cache/key/primary`: the primary key (authority, path, sorted query minus 1 parameter,
//!   1 header);
//! - `cache/freshness/parsed_entry`: the freshness decision for a stored response (age +
//!   `serve_decision` on a parsed entry);
//! - `cache/freshness/from_headers`: the same from the response headers (parse `Cache-Control`,
//!   `Date`, `ETag`, lifetime, decision);
//! - `cache/store/lookup_hit`: the store lookup a hit pays (the key's bucket read and decode, at
//!   most 16 slot records or 904 bytes, then the slot read and decode), 1024 slots full of 1 KiB
//!   bodies, in-memory shared data;
//! - `cache/store/lookup_hit_l1`: the same lookup through a worker's L1 that holds the entry
//!   (the bucket read and decode, then the L1's copy checked against the slot record);
//! - `cache/store/touch`: the LRU touch of a hit within the same second (no write).

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use switchyard_cache::entry::Entry;
use switchyard_cache::key::{KeySpec, QueryKey};
use switchyard_cache::l1::{L1Config, L1};
use switchyard_cache::rfc::{
    freshness_lifetime, serve_decision, AgeClock, Policy, RequestFacts, ResponseFacts,
};
use switchyard_cache::store::{Eviction, Store, StoreConfig};
use switchyard_core::shared::MemStore;
use switchyard_core::RequestView;

fn decide(c: &mut Criterion) {
    let requests: Vec<RequestView> = (0..1024)
        .map(|i| {
            RequestView::new("GET", &format!("/products/{i}?b=2&a=1&utm_source=x"))
                .with_authority("Shop.Example.com:80")
                .with_header("accept-encoding", "gzip")
        })
        .collect();
    let spec = KeySpec {
        query: QueryKey::Exclude(vec!["utm_source".to_owned()]),
        headers: vec!["accept-encoding".to_owned()],
        cluster_header: "x-switchyard-cluster".to_owned(),
        seed: 0,
    };
    let mut i = 0usize;
    let mut group = c.benchmark_group("cache/key");
    group.bench_function("primary", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            spec.key(black_box(&requests[i & 1023]))
        })
    });
    group.finish();

    let now_s = 1_700_000_000u64;
    let headers: Vec<(String, Vec<u8>)> = vec![
        (
            "cache-control".to_owned(),
            b"public, max-age=600, stale-while-revalidate=30".to_vec(),
        ),
        ("date".to_owned(), b"Tue, 14 Nov 2023 22:13:20 GMT".to_vec()),
        ("etag".to_owned(), b"\"v1\"".to_vec()),
        ("content-type".to_owned(), b"application/json".to_vec()),
    ];
    let policy = Policy {
        default_ttl: 0,
        heuristic_max: 86_400,
        store_set_cookie: false,
    };
    let req_facts = RequestFacts::from_headers(&[]);
    let stored = ResponseFacts::from_headers(200, &headers);
    let clock = AgeClock::new(&stored, now_s * 1_000_000_000, now_s * 1_000_000_000);
    let lifetime = freshness_lifetime(&stored, &policy);
    // The response's age runs through 0..900 s: fresh, then stale within and past
    // stale-while-revalidate.
    let at = |i: usize| (now_s + (i % 900) as u64) * 1_000_000_000;
    let mut group = c.benchmark_group("cache/freshness");
    group.bench_function("parsed_entry", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let age = clock.current_age(black_box(at(i)));
            serve_decision(&req_facts, &stored.cc, lifetime, age)
        })
    });
    group.bench_function("from_headers", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let facts = ResponseFacts::from_headers(200, black_box(&headers));
            let lifetime = freshness_lifetime(&facts, &policy);
            let age = clock.current_age(at(i));
            serve_decision(&req_facts, &facts.cc, lifetime, age)
        })
    });
    group.finish();

    let shared = MemStore::new();
    let cfg = StoreConfig {
        prefix: "switchyard.cache.bench.".to_owned(),
        max_bytes: 64 << 20,
        slots: 1024,
        eviction: Eviction::Lru,
        sample: 16,
        writing_timeout_ms: 30_000,
    };
    let store = Store::new(&shared, &cfg);
    if store.init().is_err() {
        eprintln!("store init failed");
        return;
    }
    let keys: Vec<_> = requests.iter().map(|r| spec.key(r)).collect();
    for (i, key) in keys.iter().enumerate() {
        let entry = Entry {
            key: key.text.clone(),
            path: requests[i].path().to_owned(),
            status: 200,
            headers: headers.clone(),
            body: vec![b'x'; 1024],
            clock,
            ..Entry::default()
        };
        let _ = store.insert(&entry, key.hash, 0, key.uri_hash, now_s * 1000, i as u64);
    }
    let mut group = c.benchmark_group("cache/store");
    group.bench_function("lookup_hit", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            store.lookup(black_box(keys[i & 1023].hash))
        })
    });
    // Big enough for every key: each lookup is an L1 hit.
    let mut l1 = L1::new(L1Config {
        max_bytes: 16 << 20,
        max_entries: 1024,
    });
    group.bench_function("lookup_hit_l1", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            store.find_cached(black_box(keys[i & 1023].hash), &mut l1)
        })
    });
    group.bench_function("touch", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            store.touch(black_box(i & 1023), 0, now_s * 1000)
        })
    });
    group.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
