//! The native cost of a cache hit (lookup + touch) and the shared-data traffic it causes, at
//! several slot counts. A measurement, not an assertion on time: run it with
//! `cargo test --release -p switchyard-cache --test hit_cost -- --ignored --nocapture`.
//! The traffic tests (not ignored) assert that a hit's shared-data traffic does not grow with
//! the slot count, and that a hit through a worker's L1 reads only the key's bucket.

#![allow(clippy::unwrap_used)]

use std::cell::Cell;
use std::hint::black_box;
use std::time::Instant;
use switchyard_cache::entry::Entry;
use switchyard_cache::l1::{L1Config, L1};
use switchyard_cache::store::{Eviction, Store, StoreConfig};
use switchyard_core::shared::{MemStore, SharedStore, StoreError};

/// A [`MemStore`] that counts calls and bytes, like the copies Envoy makes across the ABI.
#[derive(Default)]
struct Counting {
    inner: MemStore,
    gets: Cell<u64>,
    sets: Cell<u64>,
    bytes_read: Cell<u64>,
    bytes_written: Cell<u64>,
}

impl Counting {
    fn reset(&self) {
        self.gets.set(0);
        self.sets.set(0);
        self.bytes_read.set(0);
        self.bytes_written.set(0);
    }
}

impl SharedStore for Counting {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        let r = self.inner.get(key)?;
        self.gets.set(self.gets.get() + 1);
        let n = r.0.as_ref().map_or(0, |v| v.len() as u64);
        self.bytes_read.set(self.bytes_read.get() + n);
        Ok(r)
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        self.sets.set(self.sets.get() + 1);
        self.bytes_written
            .set(self.bytes_written.get() + value.len() as u64);
        self.inner.set(key, value, cas)
    }
}

fn cfg(slots: usize, eviction: Eviction) -> StoreConfig {
    StoreConfig {
        prefix: "switchyard.cache.hitcost.".to_owned(),
        max_bytes: 64 << 20,
        slots,
        eviction,
        sample: 16,
        writing_timeout_ms: 30_000,
    }
}

fn entry(i: usize) -> Entry {
    Entry {
        key: format!("GET\nshop.example.com\n/products/{i}"),
        path: format!("/products/{i}"),
        status: 200,
        headers: vec![
            ("cache-control".into(), "public, max-age=600".into()),
            ("content-type".into(), "application/json".into()),
        ],
        body: vec![b'x'; 1024],
        ..Entry::default()
    }
}

fn hash(i: usize) -> u64 {
    switchyard_core::hash::stable_hash64(entry(i).key.as_bytes())
}

/// A full store of `slots` entries; returns the keys that are actually stored.
fn filled(shared: &Counting, c: &StoreConfig) -> Vec<usize> {
    let st = Store::new(shared, c);
    st.init().unwrap();
    for i in 0..c.slots {
        let _ = st.insert(&entry(i), hash(i), 0, hash(i), 1_000, i as u64);
    }
    (0..c.slots)
        .filter(|i| {
            st.lookup(hash(*i))
                .iter()
                .any(|(_, _, e)| e.key == entry(*i).key)
        })
        .collect()
}

/// (gets, sets, bytes read, bytes written) per hit, averaged over every stored key, with one
/// lookup and one touch per hit at `now_ms`.
fn traffic_per_hit(slots: usize, eviction: Eviction, now_ms: u64) -> (f64, f64, f64, f64) {
    let shared = Counting::default();
    let c = cfg(slots, eviction);
    let keys = filled(&shared, &c);
    assert!(!keys.is_empty());
    let st = Store::new(&shared, &c);
    shared.reset();
    for i in &keys {
        let found = st.lookup(hash(*i));
        let (slot, g, _) = found
            .into_iter()
            .find(|(_, _, e)| e.key == entry(*i).key)
            .unwrap();
        st.touch(slot, g, now_ms);
    }
    let n = keys.len() as f64;
    (
        shared.gets.get() as f64 / n,
        shared.sets.get() as f64 / n,
        shared.bytes_read.get() as f64 / n,
        shared.bytes_written.get() as f64 / n,
    )
}

#[test]
fn hit_traffic_does_not_grow_with_the_slot_count() {
    // Same second as the inserts: LRU recency does not change, so a hit writes nothing.
    let small = traffic_per_hit(64, Eviction::Lru, 1_000);
    let large = traffic_per_hit(4096, Eviction::Lru, 1_000);
    assert_eq!(small.1, 0.0, "a same-second LRU hit writes nothing");
    assert_eq!(large.1, 0.0, "a same-second LRU hit writes nothing");
    assert!(
        large.2 <= small.2 * 1.05,
        "bytes read per hit: {} at 64 slots, {} at 4096",
        small.2,
        large.2
    );
    // A later hit (LFU counts every hit) writes only a small record, not a table.
    let lfu = traffic_per_hit(4096, Eviction::Lfu, 5_000);
    let entry_len = entry(0).encode(0).len() as f64;
    assert!(lfu.3 < entry_len, "bytes written per LFU hit: {}", lfu.3);
}

#[test]
fn an_l1_hit_reads_only_the_bucket() {
    let shared = Counting::default();
    let c = cfg(1024, Eviction::Lru);
    let keys = filled(&shared, &c);
    let st = Store::new(&shared, &c);
    let mut l1 = L1::new(L1Config::DEFAULT);
    let hot = &keys[..8];
    for i in hot {
        let first = st.find_cached(hash(*i), &mut l1);
        assert!(first.iter().all(|h| !h.l1) && !first.is_empty());
    }
    shared.reset();
    for i in hot {
        let hits = st.find_cached(hash(*i), &mut l1);
        assert!(hits.iter().any(|h| h.l1 && h.entry.key == entry(*i).key));
    }
    let n = hot.len() as u64;
    assert_eq!(shared.gets.get(), n, "one bucket read per hit");
    assert!(
        shared.bytes_read.get() <= 904 * n,
        "{}",
        shared.bytes_read.get()
    );
    assert_eq!(shared.sets.get(), 0);
}

/// How a measured hit looks its entry up.
#[derive(Clone, Copy)]
enum Path {
    /// `lookup` + `touch` (slot and generation).
    Lookup,
    /// What the filter does without an L1: `find` + `touch_hit` (the record the lookup saw).
    Find,
    /// `find_cached` through an L1 of these bounds + `touch_hit`.
    Cached(L1Config),
}

#[test]
#[ignore = "measurement: run with --release -- --ignored --nocapture"]
fn measure_hit_cost() {
    println!("| slots | policy | ns/hit | gets | sets | bytes read | bytes written |");
    println!("|---|---|---|---|---|---|---|");
    let all = L1Config {
        max_bytes: 64 << 20,
        max_entries: 4096,
    };
    for slots in [64usize, 1024, 4096] {
        for (eviction, now_ms, label, path) in [
            (Eviction::Lru, 1_000u64, "lru, same second", Path::Lookup),
            (
                Eviction::Lru,
                1_000u64,
                "lru, same second, find + touch_hit",
                Path::Find,
            ),
            (
                Eviction::Lru,
                1_000u64,
                "lru, same second, L1 hit (L1 holds every key)",
                Path::Cached(all),
            ),
            (
                Eviction::Lru,
                1_000u64,
                "lru, same second, default L1 (256 entries) cycling over every key",
                Path::Cached(L1Config::DEFAULT),
            ),
            (
                Eviction::Lru,
                0,
                "lru, every hit a new second",
                Path::Lookup,
            ),
            (Eviction::Lfu, 0, "lfu", Path::Lookup),
        ] {
            let shared = Counting::default();
            let c = cfg(slots, eviction);
            let keys = filled(&shared, &c);
            let st = Store::new(&shared, &c);
            let hashes: Vec<u64> = keys.iter().map(|i| hash(*i)).collect();
            let iters = 20_000usize;
            let mut l1 = match path {
                Path::Cached(bounds) => L1::new(bounds),
                _ => L1::new(L1Config::OFF),
            };
            // Warm: the L1 holds what it can.
            for h in &hashes {
                st.find_cached(*h, &mut l1);
            }
            shared.reset();
            let start = Instant::now();
            for n in 0..iters {
                let t = if now_ms == 0 {
                    2_000 + 1_000 * n as u64
                } else {
                    now_ms
                };
                let h = black_box(hashes[n % hashes.len()]);
                match path {
                    Path::Lookup => {
                        if let Some((slot, g, _)) = st.lookup(h).into_iter().next() {
                            st.touch(slot, g, t);
                        }
                    }
                    // What the filter does: the touch reuses the record the lookup saw.
                    Path::Find => {
                        if let Some(hit) = st.find(h).into_iter().next() {
                            st.touch_hit(&hit, t);
                        }
                    }
                    Path::Cached(_) => {
                        if let Some(hit) = st.find_cached(h, &mut l1).into_iter().next() {
                            st.touch_hit(&hit, t);
                        }
                    }
                }
            }
            let ns = start.elapsed().as_nanos() as f64 / iters as f64;
            let per = |c: &Cell<u64>| c.get() as f64 / iters as f64;
            println!(
                "| {slots} | {label} | {ns:.0} | {:.2} | {:.2} | {:.0} | {:.0} |",
                per(&shared.gets),
                per(&shared.sets),
                per(&shared.bytes_read),
                per(&shared.bytes_written)
            );
        }
    }
}
