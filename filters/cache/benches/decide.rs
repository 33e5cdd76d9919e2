//! Cache decision costs (native, release): `cargo bench -p switchyard-cache --bench decide`.
//! Key computation, the freshness decision for a stored response, and the store lookup a hit
//! pays (the index read and decode, then the slot read and decode) at the default 1024 slots.

use std::hint::black_box;
use std::time::Instant;
use switchyard_cache::entry::Entry;
use switchyard_cache::key::{KeySpec, QueryKey};
use switchyard_cache::rfc::{
    freshness_lifetime, serve_decision, AgeClock, Policy, RequestFacts, ResponseFacts,
};
use switchyard_cache::store::{Eviction, Store, StoreConfig};
use switchyard_core::shared::MemStore;
use switchyard_core::RequestView;

fn per_op(label: &str, iters: usize, mut op: impl FnMut(usize)) {
    let start = Instant::now();
    for i in 0..iters {
        op(i);
    }
    let ns = start.elapsed().as_nanos() as f64 / iters as f64;
    println!("| {label} | {ns:.0} |");
}

fn main() {
    println!("| operation | ns/op |\n|---|---|");
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
    };
    per_op(
        "primary key (authority, path, sorted query minus 1 param, 1 header)",
        1_000_000,
        |i| {
            black_box(spec.key(black_box(&requests[i & 1023])));
        },
    );

    let now_s = 1_700_000_000u64;
    let headers: Vec<(String, String)> = vec![
        (
            "cache-control".to_owned(),
            "public, max-age=600, stale-while-revalidate=30".to_owned(),
        ),
        (
            "date".to_owned(),
            "Tue, 14 Nov 2023 22:13:20 GMT".to_owned(),
        ),
        ("etag".to_owned(), "\"v1\"".to_owned()),
        ("content-type".to_owned(), "application/json".to_owned()),
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
    per_op(
        "freshness decision (age + serve_decision on a parsed entry)",
        5_000_000,
        |i| {
            let now = (now_s + (i % 900) as u64) * 1_000_000_000;
            let age = clock.current_age(black_box(now));
            black_box(serve_decision(&req_facts, &stored.cc, lifetime, age));
        },
    );
    per_op(
        "freshness from headers (parse Cache-Control/Date/ETag + lifetime + decision)",
        1_000_000,
        |i| {
            let facts = ResponseFacts::from_headers(200, black_box(&headers));
            let lifetime = freshness_lifetime(&facts, &policy);
            let age = clock.current_age((now_s + (i % 900) as u64) * 1_000_000_000);
            black_box(serve_decision(&req_facts, &facts.cc, lifetime, age));
        },
    );

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
    per_op(
        "store lookup, hit (1024 slots full, 1 KiB bodies; in-memory shared data)",
        20_000,
        |i| {
            black_box(store.lookup(black_box(keys[i & 1023].hash)));
        },
    );
    per_op("store touch (LRU, same second: no write)", 20_000, |i| {
        store.touch(i & 1023, 0, now_s * 1000);
    });
}
