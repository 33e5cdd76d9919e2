//! Decision cost per request (native, release, in-memory store with Envoy's CAS semantics):
//! `cargo bench -p switchyard-ratelimit --bench decide`. It includes decoding and re-encoding
//! the key's bucket (up to 16 entries), which is what every request pays inside Envoy besides
//! the two shared-data host calls.

use std::hint::black_box;
use std::time::Instant;
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

fn main() {
    let Ok(settings) = parse(CONFIG.as_bytes()) else {
        return;
    };
    let limiter = Limiter::new(settings, "bench");
    let store = MemStore::new();
    for i in 0..limiter.bucket_count() {
        let _ = ensure_key(&store, &limiter.bucket_key(i), &Bucket::default().encode());
    }
    let keys = 200_000usize;
    let requests: Vec<(RequestView, RequestView)> = (0..keys)
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
    let t0 = 1_700_000_000_000_000_000u64;
    for (label, pick) in [
        ("per-ip (3 GCRA tiers)", 0usize),
        ("per-user-endpoint (sliding 100/1m)", 1),
    ] {
        let n = requests.len();
        let start = Instant::now();
        for (i, pair) in requests.iter().enumerate() {
            let req = if pick == 0 { &pair.0 } else { &pair.1 };
            black_box(limiter.decide(&store, req, t0 + i as u64 * 1000));
        }
        let ns = start.elapsed().as_nanos() / n as u128;
        println!("{label}: {ns} ns/request over {n} requests ({keys} keys, buckets filling up)");
    }
}
