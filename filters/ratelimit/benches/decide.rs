//! Decision cost per request while keys keep arriving, with criterion (native, release, in-memory
//! store with Envoy's CAS semantics): `cargo bench -p switchyard-ratelimit --bench decide`. It
//! includes the key's bucket (up to 16 entries): scanned and patched in place for a known key,
//! decoded and re-encoded for a new one. That is what every request pays inside Envoy besides
//! the two shared-data host calls.
//!
//! - `ratelimit/decide/per_ip_3_gcra_new_keys`: rule `per-ip` (3 GCRA tiers), 200,000 client
//!   addresses cycled through a 100,000-key table, so nearly every request is a key the table
//!   does not hold (created, evicting another once the table is full);
//! - `ratelimit/decide/per_user_sliding_window`: rule `per-user-endpoint` (sliding window,
//!   100/1m) over 5,000 users on one path.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use switchyard_core::shared::{ensure_key, MemStore};
use switchyard_core::RequestView;
use switchyard_ratelimit::bucket::Bucket;
use switchyard_ratelimit::config::parse;
use switchyard_ratelimit::engine::Limiter;

const CONFIG: &str = r#"{"max_keys": 100000, "rules": [
  {"name": "per-ip", "match": {"path": {"prefix": "/api"}}, "key": [{"client_ip": {"trusted_hops": 0}}],
   "limits": [{"requests": 1, "per": "1s"}, {"requests": 5, "per": "10s"}, {"requests": 10, "per": "1m"}]},
  {"name": "per-user-endpoint", "key": [{"header": "x-user-id"}, {"path": true}],
   "algorithm": "sliding_window", "limits": [{"requests": 100, "per": "1m"}]}]}"#;

const KEYS: usize = 200_000;

fn decide(c: &mut Criterion) {
    let Ok(settings) = parse(CONFIG.as_bytes()) else {
        eprintln!("invalid bench configuration");
        return;
    };
    let limiter = Limiter::new(settings, "bench");
    let store = MemStore::new();
    for i in 0..limiter.bucket_count() {
        let _ = ensure_key(&store, limiter.bucket_key(i), &Bucket::default().encode());
    }
    let requests: Vec<(RequestView, RequestView)> = (0..KEYS)
        .map(|i| {
            let ip = format!("10.{}.{}.{}:1000", i / 65536, (i / 256) % 256, i % 256);
            let user = format!("user-{}", i % 5000);
            (
                RequestView::new("GET", "/api/orders").with_source(&ip),
                RequestView::new("GET", "/other")
                    .with_source(&ip)
                    .with_header("x-user-id", &user),
            )
        })
        .collect();
    // One request per simulated microsecond, the clock running on across both benchmarks.
    let mut now = 1_700_000_000_000_000_000u64;
    let mut i = 0usize;
    let mut group = c.benchmark_group("ratelimit/decide");
    group.bench_function("per_ip_3_gcra_new_keys", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            now += 1000;
            limiter.decide(&store, black_box(&requests[i].0), now)
        })
    });
    group.bench_function("per_user_sliding_window", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            now += 1000;
            limiter.decide(&store, black_box(&requests[i].1), now)
        })
    });
    group.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
