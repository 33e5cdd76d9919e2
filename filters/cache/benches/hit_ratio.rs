//! Hit ratio of the lru / lfu / fifo eviction policies on a Zipf(1.1) trace, with the cache
//! holding 1%, 5% and 20% of the key space: `cargo bench -p switchyard-cache --bench hit_ratio`.
//! It drives the real store (sampled eviction, LRU with one-second recency, in-memory shared
//! data) with one request per simulated millisecond.

use switchyard_cache::entry::Entry;
use switchyard_cache::store::{Eviction, Store, StoreConfig};
use switchyard_core::shared::MemStore;
use switchyard_core::zipf::zipf_ranks;

const KEY_SPACE: usize = 5_000;
const REQUESTS: usize = 60_000;
const WARMUP: usize = 10_000;
const ZIPF_S: f64 = 1.1;

/// Zipf(s) ranks over `0..n` (`switchyard_core::zipf`); rank r is mapped to a scattered key so
/// popularity does not follow insertion order.
fn zipf_trace(n: usize, len: usize, s: f64, seed: u64) -> Vec<u64> {
    zipf_ranks(n, len, s, seed)
        .into_iter()
        .map(|rank| (rank as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        .collect()
}

fn hit_ratio(trace: &[u64], slots: usize, eviction: Eviction) -> f64 {
    let shared = MemStore::new();
    let cfg = StoreConfig {
        prefix: "switchyard.cache.sim.".to_owned(),
        max_bytes: 1 << 40,
        slots,
        eviction,
        sample: 16,
        writing_timeout_ms: 30_000,
    };
    let store = Store::new(&shared, &cfg);
    if store.init().is_err() {
        return f64::NAN;
    }
    let mut hits = 0usize;
    for (t, key) in trace.iter().enumerate() {
        let now_ms = t as u64;
        let text = format!("k{key}");
        let hit = store
            .lookup(*key)
            .into_iter()
            .find(|(_, _, e)| e.key == text);
        match hit {
            Some((slot, generation, _)) => {
                store.touch(slot, generation, now_ms);
                if t >= WARMUP {
                    hits += 1;
                }
            }
            None => {
                let entry = Entry {
                    key: text,
                    status: 200,
                    ..Entry::default()
                };
                let _ = store.insert(&entry, *key, 0, *key, now_ms, t as u64);
            }
        }
    }
    hits as f64 / (trace.len() - WARMUP) as f64
}

fn main() {
    let trace = zipf_trace(KEY_SPACE, REQUESTS, ZIPF_S, 42);
    println!(
        "Zipf({ZIPF_S}) over {KEY_SPACE} keys, {REQUESTS} requests (first {WARMUP} warm the cache), eviction sample 16\n"
    );
    println!("| cache size | lru | lfu | fifo |\n|---|---|---|---|");
    for pct in [1usize, 5, 20] {
        let slots = KEY_SPACE * pct / 100;
        let row: Vec<String> = [Eviction::Lru, Eviction::Lfu, Eviction::Fifo]
            .into_iter()
            .map(|e| format!("{:.1}%", 100.0 * hit_ratio(&trace, slots, e)))
            .collect();
        println!("| {pct}% ({slots} entries) | {} |", row.join(" | "));
    }
}
