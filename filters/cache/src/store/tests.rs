use super::layout::{BUCKET_HEADER, SLOT_LEN};
use super::*;
use std::cell::RefCell;
use switchyard_core::shared::MemStore;

fn cfg(max_bytes: u64, slots: usize, eviction: Eviction, sample: usize) -> StoreConfig {
    StoreConfig {
        prefix: "t.".into(),
        max_bytes,
        slots,
        eviction,
        sample,
        writing_timeout_ms: 60_000,
    }
}

fn entry(key: &str, body_len: usize) -> Entry {
    Entry {
        key: key.into(),
        path: format!("/{key}"),
        status: 200,
        body: vec![b'x'; body_len],
        ..Entry::default()
    }
}

fn h(key: &str) -> u64 {
    switchyard_core::hash::stable_hash64(key.as_bytes())
}

fn put<S: SharedStore>(
    st: &Store<S>,
    key: &str,
    len: usize,
    now: u64,
) -> Result<Inserted, InsertError> {
    st.insert(
        &entry(key, len),
        h(key),
        0,
        h(key),
        now,
        now.wrapping_mul(31) + 7,
    )
}

fn has<S: SharedStore>(st: &Store<S>, key: &str) -> bool {
    st.lookup(h(key)).iter().any(|(_, _, e)| e.key == key)
}

/// Physical bytes of all slot values (what Envoy holds), excluding the records.
fn slot_bytes<S: SharedStore>(m: &S, st: &Store<S>) -> u64 {
    (0..st.cfg.slots)
        .map(|i| {
            m.get(&st.slot_key(i))
                .unwrap()
                .0
                .map_or(0, |v| v.len() as u64)
        })
        .sum()
}

/// The bytes the bucket records account for.
fn accounted<S: SharedStore>(st: &Store<S>) -> u64 {
    (0..st.geo.buckets)
        .flat_map(|b| st.bucket(b).unwrap().slots)
        .filter(|s| s.is_ready())
        .map(|s| u64::from(s.bytes))
        .sum()
}

fn entry_size(len: usize) -> u64 {
    entry("a", len).encode(0).len() as u64
}

/// Keys that all hash into the bucket of `first` (so slot pressure is within one bucket).
fn same_bucket_keys(geo: Geometry, n: usize) -> Vec<String> {
    let b = geo.bucket_of(h("k0"));
    (0..100_000)
        .map(|i| format!("k{i}"))
        .filter(|k| geo.bucket_of(h(k)) == b)
        .take(n)
        .collect()
}

/// Three entries of a third of the budget each; the fourth evicts the policy's victim.
fn run_policy(eviction: Eviction) -> Vec<bool> {
    let m = MemStore::new();
    let c = cfg(entry_size(1000) * 3 + 10, 16, eviction, 16);
    let st = Store::new(&m, &c);
    st.init().unwrap();
    put(&st, "a", 1000, 1_000).unwrap();
    put(&st, "b", 1000, 2_000).unwrap();
    put(&st, "c", 1000, 3_000).unwrap();
    // "a" is used most and most recently except for "c", which is used once later.
    for (slot, g, _) in st.lookup(h("a")) {
        st.touch(slot, g, 10_000);
        st.touch(slot, g, 11_000);
    }
    for (slot, g, _) in st.lookup(h("c")) {
        st.touch(slot, g, 12_000);
    }
    let ins = put(&st, "d", 1000, 20_000).unwrap();
    assert_eq!(ins.evicted, 1);
    assert!(st.used().unwrap() <= c.max_bytes);
    assert!(slot_bytes(&m, &st) <= c.max_bytes);
    ["a", "b", "c", "d"].iter().map(|k| has(&st, k)).collect()
}

#[test]
fn lru_evicts_least_recently_used() {
    assert_eq!(run_policy(Eviction::Lru), vec![true, false, true, true]);
}

#[test]
fn lfu_evicts_least_frequently_used() {
    // b has 0 hits, c 1, a 2.
    assert_eq!(run_policy(Eviction::Lfu), vec![true, false, true, true]);
    let m = MemStore::new();
    let c = cfg(entry_size(1000) * 2 + 100, 16, Eviction::Lfu, 16);
    let st = Store::new(&m, &c);
    st.init().unwrap();
    put(&st, "old-popular", 1000, 1_000).unwrap();
    put(&st, "new", 1000, 2_000).unwrap();
    for (slot, g, _) in st.lookup(h("old-popular")) {
        st.touch(slot, g, 3_000);
        st.touch(slot, g, 4_000);
    }
    for (slot, g, _) in st.lookup(h("new")) {
        st.touch(slot, g, 9_000);
    }
    put(&st, "x", 1000, 10_000).unwrap();
    // LRU would evict old-popular (accessed at 4 < 9); LFU keeps it.
    assert!(has(&st, "old-popular") && !has(&st, "new"));
}

#[test]
fn fifo_evicts_oldest_insert_regardless_of_hits() {
    assert_eq!(run_policy(Eviction::Fifo), vec![false, true, true, true]);
}

/// A full bucket evicts its own worst slot by the policy, whatever the other buckets hold.
#[test]
fn slot_eviction_within_a_bucket_follows_the_policy() {
    for (eviction, victim) in [(Eviction::Lru, 2), (Eviction::Lfu, 1), (Eviction::Fifo, 0)] {
        let m = MemStore::new();
        let c = cfg(1 << 30, 4 * WAYS, eviction, 16);
        let st = Store::new(&m, &c);
        st.init().unwrap();
        let geo = st.geometry();
        let keys = same_bucket_keys(geo, WAYS + 1);
        let n = geo.range(geo.bucket_of(h(&keys[0]))).len();
        // Other buckets hold older, never used entries: not candidates for slot eviction.
        for i in 0..3 * WAYS {
            let k = format!("other{i}");
            if geo.bucket_of(h(&k)) != geo.bucket_of(h(&keys[0])) {
                put(&st, &k, 10, 1).unwrap();
            }
        }
        for (t, k) in keys.iter().take(n).enumerate() {
            put(&st, k, 10, 1_000 * (t as u64 + 1)).unwrap();
        }
        let touch = |k: &str, at: u64| {
            for hit in st.find(h(k)) {
                st.touch_hit(&hit, at);
            }
        };
        // Key 2: three early hits (least recent); key 1: one late hit (least frequent);
        // key 0 (first inserted) and the rest: two hits.
        for at in [10_000, 11_000, 12_000] {
            touch(&keys[2], at);
        }
        touch(&keys[1], 900_000);
        for (t, k) in keys
            .iter()
            .take(n)
            .enumerate()
            .filter(|(t, _)| *t != 1 && *t != 2)
        {
            touch(k, 100_000 + t as u64 * 1000);
            touch(k, 200_000 + t as u64 * 1000);
        }
        let ins = put(&st, &keys[n], 10, 2_000_000).unwrap();
        assert_eq!(ins.evicted, 1, "{eviction:?}");
        let gone: Vec<usize> = (0..n).filter(|i| !has(&st, &keys[*i])).collect();
        assert_eq!(gone, vec![victim], "{eviction:?}");
        assert!(has(&st, &keys[n]));
    }
}

#[test]
fn replacing_a_key_reuses_bytes_and_slot() {
    let m = MemStore::new();
    let c = cfg(10_000, 8, Eviction::Lru, 8);
    let st = Store::new(&m, &c);
    st.init().unwrap();
    for i in 0..20 {
        put(&st, "same", 100 + i, i as u64).unwrap();
    }
    assert_eq!(st.entries(), 1);
    assert_eq!(
        st.used().unwrap(),
        entry("same", 119).encode(0).len() as u64
    );
    assert_eq!(st.lookup(h("same"))[0].2.body.len(), 119);
    assert_eq!(slot_bytes(&m, &st), st.used().unwrap());
}

#[test]
fn too_large_is_refused_and_bytes_never_exceed_the_bound() {
    for (slots, sample) in [(32, 4), (300, 16), (300, 1024)] {
        let m = MemStore::new();
        let c = cfg(20_000, slots, Eviction::Lru, sample);
        let st = Store::new(&m, &c);
        st.init().unwrap();
        assert_eq!(put(&st, "huge", 21_000, 1), Err(InsertError::TooLarge));
        let mut rng = Rng::new(5);
        for i in 0..1500u64 {
            // Mostly small, sometimes a large one that needs many evictions.
            let len = if i % 97 == 0 {
                5_000 + rng.below(10_000) as usize
            } else {
                20 + rng.below(400) as usize
            };
            put(&st, &format!("k{i}"), len, i).unwrap();
            let used = st.used().unwrap();
            assert!(used <= c.max_bytes, "used {used} at {i}");
            // Accounting matches the data actually held and the bucket records.
            assert_eq!(slot_bytes(&m, &st), used, "{slots} slots, at {i}");
            assert_eq!(accounted(&st), used, "{slots} slots, at {i}");
            // The most recent entry is always retrievable.
            assert!(has(&st, &format!("k{i}")));
        }
    }
}

#[test]
fn collisions_never_serve_the_wrong_key() {
    let m = MemStore::new();
    let c = cfg(10_000, 8, Eviction::Lru, 8);
    let st = Store::new(&m, &c);
    st.init().unwrap();
    // Two different keys forced onto the same primary hash.
    st.insert(&entry("one", 10), 42, 0, 0, 1, 1).unwrap();
    st.insert(&entry("two", 10), 42, 1, 0, 2, 2).unwrap();
    let found = st.lookup(42);
    assert_eq!(found.len(), 2);
    assert_eq!(found.iter().filter(|(_, _, e)| e.key == "one").count(), 1);
}

#[test]
fn stale_data_of_a_reused_slot_is_never_served() {
    let m = MemStore::new();
    let c = cfg(10_000, 1, Eviction::Lru, 1);
    let st = Store::new(&m, &c);
    st.init().unwrap();
    let first = put(&st, "a", 10, 1).unwrap();
    // Another worker reserved the slot for "b" and has not written yet: "a"'s data is
    // still there under an older generation, and "b" is not ready.
    let mut bucket = st.bucket(0).unwrap();
    let r = reserve_slot(&mut bucket, &c, h("b"), 0, 0, 50, 2).unwrap();
    m.set(&st.bucket_key(0), &bucket.encode(), None).unwrap();
    assert_eq!(r.slot, first.slot);
    m.set(
        &st.slot_key(r.slot),
        &entry("a", 10).encode(first.generation),
        None,
    )
    .unwrap();
    assert!(st.lookup(h("a")).is_empty() && st.lookup(h("b")).is_empty());
    // Written with the new generation but not marked ready: still nothing.
    m.set(
        &st.slot_key(r.slot),
        &entry("b", 10).encode(r.generation),
        None,
    )
    .unwrap();
    assert!(st.lookup(h("b")).is_empty());
}

#[test]
fn remove_by_index_by_key_and_by_entry() {
    let m = MemStore::new();
    let c = cfg(100_000, 64, Eviction::Lru, 16);
    let st = Store::new(&m, &c);
    st.init().unwrap();
    for k in ["a1", "a2", "b1", "b2"] {
        put(&st, k, 10, 1).unwrap();
    }
    assert_eq!(st.remove_where(|s| s.uri == h("a1")), 1);
    assert!(!has(&st, "a1") && has(&st, "a2"));
    assert_eq!(st.remove_entries_where(|e| e.path.starts_with("/a")), 1);
    assert!(!has(&st, "a2") && has(&st, "b1"));
    assert_eq!(st.remove_primary(h("b2")), 1);
    assert_eq!(st.remove_primary(h("b2")), 0);
    assert!(has(&st, "b1") && !has(&st, "b2"));
    assert_eq!(st.entries(), 1);
    assert_eq!(st.used().unwrap(), slot_bytes(&m, &st));
    assert_eq!(st.used().unwrap(), entry("b1", 10).encode(0).len() as u64);
}

#[test]
fn a_concurrent_writer_of_the_same_variant_is_not_clobbered() {
    let c = cfg(10_000, 4, Eviction::Lru, 4);
    let mut bucket = Bucket::new(0..4);
    reserve_slot(&mut bucket, &c, 1, 0, 0, 100, 0).unwrap();
    assert_eq!(
        reserve_slot(&mut bucket, &c, 1, 0, 0, 100, 10),
        Err(InsertError::Busy)
    );
    // A writer that vanished is reclaimed after the timeout, and it held no accounted bytes.
    let r = reserve_slot(&mut bucket, &c, 1, 0, 0, 100, 70_000).unwrap();
    assert_eq!(r.freed, vec![(0, 0)]);
    assert_eq!(
        bucket.slots.iter().filter(|s| s.state == WRITING).count(),
        1
    );
}

/// A store whose records are written by "other workers" between our reads and writes: every
/// CAS on the first `n` attempts loses.
#[test]
fn cas_conflicts_are_retried_and_keep_the_accounting_exact() {
    let m = MemStore::new();
    let c = cfg(entry_size(100) * 5 + 40, 32, Eviction::Lru, 8);
    let st = Store::new(&m, &c);
    st.init().unwrap();
    let mut n = 0u64;
    m.interfere(move |_| {
        n += 1;
        n.is_multiple_of(3)
    });
    for i in 0..200u64 {
        put(&st, &format!("k{i}"), 100, i * 1000).unwrap();
        assert!(st.used().unwrap() <= c.max_bytes);
        assert_eq!(slot_bytes(&m, &st), st.used().unwrap());
    }
    assert_eq!(st.entries(), 5);
    // The bytes record is contended beyond the retries while there is room: the insert
    // fails, takes its slot back and leaves the accounting exactly as it was.
    assert_eq!(st.remove_primary(h("k199")), 1);
    let before = (st.used().unwrap(), st.entries());
    let used_key = st.used_key();
    m.interfere(move |k| k == used_key);
    assert_eq!(put(&st, "lost", 100, 999_000), Err(InsertError::Full));
    m.interfere(|_| false);
    assert!(!has(&st, "lost"));
    assert_eq!((st.used().unwrap(), st.entries()), before);
    assert_eq!(slot_bytes(&m, &st), before.0);
    put(&st, "lost", 100, 1_000_000).unwrap();
    assert!(has(&st, "lost"));
    // Contended while full: the victim evicted for it is gone, but its bytes could not be
    // released, so they stay accounted: the bound and physical <= accounted still hold.
    let used_key = st.used_key();
    m.interfere(move |k| k == used_key);
    assert_eq!(put(&st, "lost2", 100, 1_001_000), Err(InsertError::Full));
    m.interfere(|_| false);
    assert!(!has(&st, "lost2"));
    assert!(slot_bytes(&m, &st) <= st.used().unwrap());
    assert!(st.used().unwrap() <= c.max_bytes);
}

/// Two workers (two stores over one shared map) interleaving whole operations: the bound
/// and the accounting hold after every step.
#[test]
fn two_workers_share_one_bound() {
    let m = MemStore::new();
    let c1 = cfg(entry_size(300) * 10, 64, Eviction::Lfu, 8);
    let c2 = c1.clone();
    let w1 = Store::new(&m, &c1);
    let w2 = Store::new(&m, &c2);
    w1.init().unwrap();
    w2.init().unwrap();
    let mut rng = Rng::new(9);
    for i in 0..400u64 {
        let w = if rng.below(2) == 0 { &w1 } else { &w2 };
        let k = format!("k{}", rng.below(40));
        if let Some(hit) = w.find(h(&k)).into_iter().find(|x| x.entry.key == k) {
            w.touch_hit(&hit, i * 10);
        } else {
            put(w, &k, 50 + rng.below(500) as usize, i * 10).unwrap();
        }
        let used = w1.used().unwrap();
        assert!(used <= c1.max_bytes);
        assert_eq!(slot_bytes(&m, &w1), used);
        assert_eq!(accounted(&w2), used);
    }
}

/// Records which keys were read and written.
#[derive(Default)]
struct Traced {
    inner: MemStore,
    log: RefCell<Vec<(char, String)>>,
}

impl SharedStore for Traced {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        self.log.borrow_mut().push(('r', key.to_string()));
        self.inner.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        self.log.borrow_mut().push(('w', key.to_string()));
        self.inner.set(key, value, cas)
    }
}

#[test]
fn a_hit_touches_only_its_bucket_and_slot() {
    for eviction in [Eviction::Lru, Eviction::Lfu, Eviction::Fifo] {
        let m = Traced::default();
        let c = cfg(1 << 30, 1024, eviction, 16);
        let st = Store::new(&m, &c);
        st.init().unwrap();
        for i in 0..1024u64 {
            put(&st, &format!("k{i}"), 100, 1_000 + i).unwrap();
        }
        let k = (0..1024)
            .map(|i| format!("k{i}"))
            .find(|k| has(&st, k))
            .unwrap();
        let b = st.geometry().bucket_of(h(&k));
        let bucket_key = st.bucket_key(b);
        // Same second as the insert, then a later second.
        for now in [1_999, 5_000] {
            m.log.borrow_mut().clear();
            let hit = st
                .find(h(&k))
                .into_iter()
                .find(|x| x.entry.key == k)
                .unwrap();
            st.touch_hit(&hit, now);
            let slot_key = st.slot_key(hit.slot);
            let log = m.log.borrow().clone();
            let reads: Vec<&str> = log
                .iter()
                .filter(|(op, _)| *op == 'r')
                .map(|(_, k)| k.as_str())
                .collect();
            let writes: Vec<&str> = log
                .iter()
                .filter(|(op, _)| *op == 'w')
                .map(|(_, k)| k.as_str())
                .collect();
            let writes_expected = match (eviction, now) {
                (Eviction::Fifo, _) | (Eviction::Lru, 1_999) => 0,
                _ => 1,
            };
            assert_eq!(
                writes.len(),
                writes_expected,
                "{eviction:?} at {now}: {log:?}"
            );
            assert!(writes.iter().all(|w| *w == bucket_key));
            assert!(
                reads.iter().all(|r| *r == bucket_key || *r == slot_key),
                "{eviction:?} at {now}: {log:?}"
            );
            // One bucket read for the lookup (plus one for the write when there is one).
            assert_eq!(reads.len(), 2 + writes_expected);
        }
        // The bucket record does not grow with the slot count.
        let (v, _) = m.inner.get(&bucket_key).unwrap();
        assert!(v.unwrap().len() <= BUCKET_HEADER + WAYS * SLOT_LEN);
    }
}

#[test]
fn geometry_covers_every_slot_once() {
    for slots in [1, 2, 15, 16, 17, 33, 1000, 1024, 16384] {
        let g = Geometry::new(slots);
        let mut next = 0;
        for b in 0..g.buckets {
            let r = g.range(b);
            assert_eq!(r.start, next);
            assert!(!r.is_empty() && r.len() <= WAYS, "{slots}: {r:?}");
            next = r.end;
        }
        assert_eq!(next, slots);
        let m = MemStore::new();
        let c = cfg(1 << 20, slots, Eviction::Lru, 16);
        let st = Store::new(&m, &c);
        for i in 0..slots {
            assert!(st.geometry().range(st.bucket_of_slot(i)).contains(&i));
        }
    }
}

#[test]
fn bucket_round_trips_and_rejects_truncation() {
    let mut b = Bucket::new(16..19);
    b.slots[1] = Slot {
        primary: 1,
        variant: 2,
        uri: 3,
        bytes: 4,
        state: READY,
        generation: 5,
        hits: 6,
        inserted_ms: 7,
        access_ms: 8,
    };
    let enc = b.encode();
    assert_eq!(Bucket::decode(&enc), Some(b));
    assert_eq!(Bucket::decode(&enc[..enc.len() - 1]), None);
}

#[test]
fn init_empties_an_earlier_layout_once() {
    let m = MemStore::new();
    let c = cfg(10_000, 4, Eviction::Lru, 4);
    m.set("t.index", &[7; 300], None).unwrap();
    m.set("t.slot.2", &[7; 100], None).unwrap();
    let st = Store::new(&m, &c);
    st.init().unwrap();
    assert_eq!(slot_bytes(&m, &st), 0);
    assert_eq!(m.get("t.index").unwrap().0.unwrap().len(), 0);
    put(&st, "a", 10, 1).unwrap();
    // A second worker's init keeps what the first stored.
    Store::new(&m, &c).init().unwrap();
    assert!(has(&st, "a"));
}

/// Sampled eviction against exact eviction on a skewed workload (Zipf-like: key k is
/// requested with weight 1/(k+1)). The sampled policy must come close to the exact one.
#[test]
fn sampled_eviction_hit_ratio_is_close_to_exact() {
    fn hit_ratio(eviction: Eviction, sample: usize) -> f64 {
        let m = MemStore::new();
        let slots = 64;
        let c = cfg(entry_size(100) * 40, slots, eviction, sample);
        let st = Store::new(&m, &c);
        st.init().unwrap();
        let keys = 400usize;
        let weights: Vec<f64> = (0..keys).map(|k| 1.0 / (k as f64 + 1.0)).collect();
        let total: f64 = weights.iter().sum();
        let mut rng = Rng::new(12345);
        let (mut hits, mut reqs) = (0u32, 0u32);
        for t in 1..4000u64 {
            let mut x = rng.below(1 << 30) as f64 / (1u64 << 30) as f64 * total;
            let mut k = 0;
            while k + 1 < keys && x > weights[k] {
                x -= weights[k];
                k += 1;
            }
            let key = format!("k{k}");
            let found = st.find(h(&key));
            reqs += 1;
            if let Some(hit) = found.into_iter().find(|x| x.entry.key == key) {
                hits += 1;
                st.touch_hit(&hit, t * 1000);
            } else {
                put(&st, &key, 100, t * 1000).unwrap();
            }
        }
        f64::from(hits) / f64::from(reqs)
    }
    for policy in [Eviction::Lru, Eviction::Lfu] {
        let exact = hit_ratio(policy, 64);
        let sampled = hit_ratio(policy, 8);
        println!("{policy:?}: exact {exact:.3} sampled(8 of 64) {sampled:.3}");
        assert!(sampled >= exact * 0.9, "{policy:?}: {sampled} vs {exact}");
    }
}

// ---- coalescing locks (in the bucket records) ---------------------------------------------

/// A shared-data store and an initialised cache store of `slots` slots over it (1 MiB, LRU).
fn lock_test_store(slots: usize) -> (MemStore, StoreConfig) {
    (MemStore::new(), cfg(1 << 20, slots, Eviction::Lru, 8))
}

fn ready<'a>(m: &'a MemStore, c: &'a StoreConfig) -> Store<'a, MemStore> {
    let st = Store::new(m, c);
    st.init().unwrap();
    st
}

#[test]
fn one_leader_followers_wait_release_and_expiry() {
    let (m, c) = lock_test_store(16);
    let st = ready(&m, &c);
    assert_eq!(st.acquire(1, 0, 100, None), Acquire::Leader);
    assert_eq!(st.acquire(1, 10, 100, None), Acquire::Follower);
    assert!(st.lock_held(1, 50));
    assert!(!st.lock_held(1, 100), "expired at 100");
    for k in 2..=LOCKS as u64 {
        assert_eq!(st.acquire(k, 10, 100, None), Acquire::Leader);
    }
    // One bucket (16 slots): its locks are all taken.
    assert_eq!(
        st.acquire(99, 10, 100, None),
        Acquire::Unavailable,
        "bounded"
    );
    st.unlock(1);
    assert!(!st.lock_held(1, 20));
    assert_eq!(st.acquire(99, 20, 100, None), Acquire::Leader);
    // Lock 2 expired at 110: a new request leads, and expired locks make room.
    assert!(!st.lock_held(2, 111));
    assert_eq!(st.acquire(2, 111, 100, None), Acquire::Leader);
    assert_eq!(
        st.bucket(0).unwrap().locks.len(),
        2,
        "the others expired at 110"
    );
}

#[test]
fn a_miss_takes_its_lock_with_the_record_its_lookup_read() {
    let (m, c) = lock_test_store(64);
    let st = ready(&m, &c);
    let (hits, seen) = st.find_with(h("a"), None);
    assert!(hits.is_empty());
    let gets = m.gets();
    assert_eq!(st.acquire(h("a"), 0, 100, seen.clone()), Acquire::Leader);
    assert_eq!(m.gets(), gets, "no second read of the bucket");
    // A record seen before another worker wrote it: read again, and the lock is seen.
    assert_eq!(st.acquire(h("a"), 1, 100, seen), Acquire::Follower);
    assert_eq!(m.gets(), gets + 1);
}

#[test]
fn racing_workers_elect_one_leader() {
    let (m, c) = lock_test_store(16);
    let st = ready(&m, &c);
    // Another worker writes the bucket between our read and our write.
    let mut once = true;
    m.interfere(move |_| std::mem::take(&mut once));
    // Our first CAS fails; the retry sees the table as "they" left it (MemStore only bumps
    // the token), so we lead; a later caller follows.
    assert_eq!(st.acquire(9, 0, 100, None), Acquire::Leader);
    assert_eq!(st.acquire(9, 1, 100, None), Acquire::Follower);
}

#[test]
fn the_leaders_insert_releases_its_lock_and_keeps_the_others() {
    let (m, c) = lock_test_store(16);
    let st = ready(&m, &c);
    assert_eq!(st.acquire(h("a"), 0, 1000, None), Acquire::Leader);
    assert_eq!(st.acquire(h("b"), 0, 1000, None), Acquire::Leader);
    // A plain insert (a refresh, a revalidation) leaves the lock alone.
    put(&st, "a", 10, 1).unwrap();
    assert!(st.lock_held(h("a"), 2));
    let leader = Store::new(&m, &c).releasing_lock();
    put(&leader, "a", 10, 3).unwrap();
    assert!(
        !st.lock_held(h("a"), 4),
        "released by the write that made the entry ready"
    );
    assert!(st.lock_held(h("b"), 4));
    assert!(has(&st, "a"));
    // Entries and locks survive each other's updates: evictions, hits, removals.
    st.touch_hit(&st.find(h("a"))[0], 5000);
    st.remove_primary(h("a"));
    assert!(st.lock_held(h("b"), 6));
    let bucket = st.bucket(0).unwrap();
    assert_eq!(Bucket::decode(&bucket.encode()), Some(bucket));
}

#[test]
fn bucket_records_with_locks_round_trip_and_reject_bad_lengths() {
    let mut b = Bucket::new(0..WAYS);
    assert_eq!(b.encode().len(), BUCKET_HEADER + WAYS * SLOT_LEN);
    for k in 0..LOCKS as u64 {
        assert_eq!(
            layout::acquire(&mut b.locks, k, 0, 10),
            (Acquire::Leader, true)
        );
    }
    let full = b.encode();
    assert_eq!(full.len(), BUCKET_HEADER + WAYS * SLOT_LEN + LOCKS * 16);
    assert_eq!(Bucket::decode(&full).as_ref(), Some(&b));
    assert_eq!(
        Bucket::decode(&full[..full.len() - 1]),
        None,
        "a partial lock"
    );
    let mut more = full.clone();
    more.extend_from_slice(&[0; 16]);
    assert_eq!(
        Bucket::decode(&more),
        None,
        "more locks than a bucket holds"
    );
    // Locks are read and replaced without touching the slots.
    let (at, mut locks) = layout::read_locks(&full).unwrap();
    assert_eq!(
        (at, locks.as_slice()),
        (BUCKET_HEADER + WAYS * SLOT_LEN, b.locks.as_slice())
    );
    assert!(layout::release(&mut locks, 3));
    let fewer = Bucket::decode(&layout::with_locks(&full, at, &locks)).unwrap();
    assert_eq!((fewer.slots, fewer.locks.len()), (b.slots, LOCKS - 1));
}
