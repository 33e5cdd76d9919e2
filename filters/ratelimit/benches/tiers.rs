//! Decision cost with 1 tier against 3 tiers (GCRA, limits never reached, in-memory store with
//! Envoy's CAS semantics): `cargo bench -p switchyard-ratelimit --bench tiers`.

use std::hint::black_box;
use std::time::Instant;
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

/// A limiter over a fresh store with every key's state already created.
fn prepared(config: &str, requests: &[RequestView]) -> Option<(Limiter, MemStore)> {
    let settings = parse(config.as_bytes()).ok()?;
    let limiter = Limiter::new(settings, "bench");
    let store = MemStore::new();
    for i in 0..limiter.bucket_count() {
        let _ = ensure_key(&store, &limiter.bucket_key(i), &Bucket::default().encode());
    }
    for (i, req) in requests.iter().enumerate() {
        black_box(limiter.decide(&store, req, T0 + i as u64 * 1000));
    }
    Some((limiter, store))
}

const T0: u64 = 1_700_000_000_000_000_000;

/// One measured pass over existing keys, in ns per decision.
fn pass(limiter: &Limiter, store: &MemStore, requests: &[RequestView], round: usize) -> f64 {
    let base = T0 + ((round + 1) * requests.len()) as u64 * 1000;
    let start = Instant::now();
    for (i, req) in requests.iter().enumerate() {
        black_box(limiter.decide(store, black_box(req), base + i as u64 * 1000));
    }
    start.elapsed().as_nanos() as f64 / requests.len() as f64
}

fn main() {
    let requests: Vec<RequestView> = (0..200_000)
        .map(|i| {
            RequestView::new("GET", "/api").with_header("x-user-id", &format!("u{}", i % 10_000))
        })
        .collect();
    let (Some(one), Some(three)) = (
        prepared(ONE_TIER, &requests),
        prepared(THREE_TIERS, &requests),
    ) else {
        eprintln!("invalid bench configuration");
        return;
    };
    // Alternating passes, best of five each, so a noisy neighbour skews both alike.
    let (mut best_one, mut best_three) = (f64::INFINITY, f64::INFINITY);
    for round in 0..5 {
        best_one = best_one.min(pass(&one.0, &one.1, &requests, round));
        best_three = best_three.min(pass(&three.0, &three.1, &requests, round));
    }
    println!("| GCRA, 10 000 keys, allowed | ns/decision (best of 5) |\n|---|---|");
    println!("| 1 tier | {best_one:.0} |\n| 3 tiers | {best_three:.0} |");
}
