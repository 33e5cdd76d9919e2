//! Decision cost with 1 tier against 3 tiers, with criterion (GCRA, 10,000 existing keys, limits
//! never reached, in-memory store with Envoy's CAS semantics):
//! `cargo bench -p switchyard-ratelimit --bench tiers`. Benchmarks `ratelimit/tiers/1` and
//! `ratelimit/tiers/3`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;
use switchyard_core::shared::{ensure_key, MemStore};
use switchyard_core::RequestView;
use switchyard_ratelimit::bucket::Bucket;
use switchyard_ratelimit::config::parse;
use switchyard_ratelimit::engine::Limiter;

const ONE_TIER: &str = r#"{"max_keys": 100000, "rules": [{"name": "per-user",
  "key": [{"header": "x-user-id"}], "limits": [{"requests": 1000000000, "per": "1s"}]}]}"#;
const THREE_TIERS: &str = r#"{"max_keys": 100000, "rules": [{"name": "per-user",
  "key": [{"header": "x-user-id"}], "limits": [{"requests": 1000000000, "per": "1s"},
  {"requests": 1000000000, "per": "1m"}, {"requests": 1000000000, "per": "1h"}]}]}"#;

const T0: u64 = 1_700_000_000_000_000_000;

/// A limiter over a fresh store with every key's state already created by one pass over
/// `requests`, one request per simulated microsecond from `T0`.
fn prepared(config: &str, requests: &[RequestView]) -> Option<(Limiter, MemStore)> {
    let settings = parse(config.as_bytes()).ok()?;
    let limiter = Limiter::new(settings, "bench");
    let store = MemStore::new();
    for i in 0..limiter.bucket_count() {
        let _ = ensure_key(&store, limiter.bucket_key(i), &Bucket::default().encode());
    }
    for (i, req) in requests.iter().enumerate() {
        black_box(limiter.decide(&store, req, T0 + i as u64 * 1000));
    }
    Some((limiter, store))
}

fn tiers(c: &mut Criterion) {
    let requests: Vec<RequestView> = (0..200_000)
        .map(|i| {
            RequestView::new("GET", "/api").with_header("x-user-id", &format!("u{}", i % 10_000))
        })
        .collect();
    let mut group = c.benchmark_group("ratelimit/tiers");
    for (tiers, config) in [(1, ONE_TIER), (3, THREE_TIERS)] {
        let Some((limiter, store)) = prepared(config, &requests) else {
            eprintln!("invalid bench configuration ({tiers} tiers)");
            continue;
        };
        // The clock runs on after the preparing pass.
        let mut now = T0 + requests.len() as u64 * 1000;
        let mut i = 0usize;
        group.bench_function(BenchmarkId::from_parameter(tiers), |b| {
            b.iter(|| {
                i = (i + 1) % requests.len();
                now += 1000;
                limiter.decide(&store, black_box(&requests[i]), now)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, tiers);
criterion_main!(benches);
