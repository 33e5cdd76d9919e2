//! The bounded cache store in proxy-wasm shared data, shared by every worker.
//!
//! Layout (all keys under the store's prefix):
//! - `index`: one record, created at configure time and afterwards only CAS-updated. It holds the
//!   bytes in use, a generation counter and a fixed table of `slots` records (primary hash,
//!   variant hash, URI hash, bytes, state, generation, insert time, access time, hits).
//! - `slot.<i>`: the encoded [`Entry`] of slot `i`, tagged with the generation it was written for.
//!   A reader trusts it only if the index says the slot is ready with that generation and the
//!   full key matches, so hash collisions and half-written slots are never served.
//!
//! Writing reserves bytes and a slot in the index with CAS first (evicting victims as needed so
//! `used + bytes <= max_bytes`), then overwrites the victims' data with an empty value, then
//! writes the new data and marks the slot ready. Physical bytes therefore never exceed what the
//! index accounts for, and slots are reused, never leaked (shared data has no delete).
//!
//! Eviction is sampled when the table is larger than the sample (Redis-style): `sample` random
//! slots are examined and the worst by the policy is evicted. With `sample >= slots` it is exact.

use crate::entry::Entry;
use switchyard_core::shared::{
    cas_update, ensure_key, CasOutcome, SharedStore, StoreError, Update,
};

/// Victim choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// Least recently used (oldest access time).
    Lru,
    /// Least frequently used (fewest hits; ties: oldest access).
    Lfu,
    /// First in, first out (oldest insertion).
    Fifo,
}

const FREE: u32 = 0;
const WRITING: u32 = 1;
const READY: u32 = 2;
const SLOT_LEN: usize = 56;
const HEADER_LEN: usize = 16;
const CAS_RETRIES: u32 = 16;
const LRU_RESOLUTION_MS: u64 = 1000;

/// One slot record of the index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slot {
    pub primary: u64,
    pub variant: u64,
    pub uri: u64,
    pub bytes: u32,
    pub state: u32,
    pub generation: u32,
    pub hits: u32,
    pub inserted_ms: u64,
    pub access_ms: u64,
}

impl Slot {
    pub fn is_ready(&self) -> bool {
        self.state == READY
    }
}

/// The index record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    pub used: u64,
    pub next_generation: u32,
    pub slots: Vec<Slot>,
}

impl Index {
    pub fn new(slots: usize) -> Self {
        Index {
            used: 0,
            next_generation: 1,
            slots: vec![Slot::default(); slots],
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.slots.len() * SLOT_LEN);
        out.extend_from_slice(&self.used.to_le_bytes());
        out.extend_from_slice(&self.next_generation.to_le_bytes());
        out.extend_from_slice(&(self.slots.len() as u32).to_le_bytes());
        for s in &self.slots {
            out.extend_from_slice(&s.primary.to_le_bytes());
            out.extend_from_slice(&s.variant.to_le_bytes());
            out.extend_from_slice(&s.uri.to_le_bytes());
            out.extend_from_slice(&s.bytes.to_le_bytes());
            out.extend_from_slice(&s.state.to_le_bytes());
            out.extend_from_slice(&s.generation.to_le_bytes());
            out.extend_from_slice(&s.hits.to_le_bytes());
            out.extend_from_slice(&s.inserted_ms.to_le_bytes());
            out.extend_from_slice(&s.access_ms.to_le_bytes());
        }
        out
    }

    pub fn decode(b: &[u8]) -> Option<Index> {
        let u64_at = |o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
        let u32_at = |o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
        let n = u32_at(12)? as usize;
        if b.len() != HEADER_LEN + n * SLOT_LEN {
            return None;
        }
        let mut slots = Vec::with_capacity(n);
        for i in 0..n {
            let o = HEADER_LEN + i * SLOT_LEN;
            slots.push(Slot {
                primary: u64_at(o)?,
                variant: u64_at(o + 8)?,
                uri: u64_at(o + 16)?,
                bytes: u32_at(o + 24)?,
                state: u32_at(o + 28)?,
                generation: u32_at(o + 32)?,
                hits: u32_at(o + 36)?,
                inserted_ms: u64_at(o + 40)?,
                access_ms: u64_at(o + 48)?,
            });
        }
        Some(Index {
            used: u64_at(0)?,
            next_generation: u32_at(8)?,
            slots,
        })
    }

    fn free(&mut self, i: usize) {
        if let Some(s) = self.slots.get_mut(i) {
            self.used = self.used.saturating_sub(u64::from(s.bytes));
            *s = Slot {
                generation: s.generation,
                ..Slot::default()
            };
        }
    }

    pub fn entries(&self) -> usize {
        self.slots.iter().filter(|s| s.is_ready()).count()
    }
}

/// Store settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Shared-data key prefix (filter name plus configuration hash).
    pub prefix: String,
    pub max_bytes: u64,
    pub slots: usize,
    pub eviction: Eviction,
    /// Slots examined per eviction.
    pub sample: usize,
    /// A slot reserved for writing by a worker that never finished is reclaimable after this.
    pub writing_timeout_ms: u64,
}

/// Why an insert stored nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertError {
    TooLarge,
    /// Another worker is writing the same variant right now.
    Busy,
    /// Nothing could be evicted (every slot is being written).
    Full,
    Contended,
    Store(StoreError),
}

/// A successful insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inserted {
    pub slot: usize,
    pub generation: u32,
    pub evicted: usize,
    /// Bytes in use after the insert.
    pub used: u64,
}

/// A small deterministic generator for sampling (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1) as u64) as usize
    }
}

fn evictable(s: &Slot, now_ms: u64, writing_timeout_ms: u64) -> bool {
    s.state == READY
        || (s.state == WRITING && now_ms.saturating_sub(s.inserted_ms) > writing_timeout_ms)
}

/// Orders victims: the smallest value is evicted first. Generation breaks ties (insert order).
fn victim_rank(s: &Slot, policy: Eviction) -> (u64, u64, u32) {
    match policy {
        Eviction::Lru => (s.access_ms, 0, s.generation),
        Eviction::Lfu => (u64::from(s.hits), s.access_ms, s.generation),
        Eviction::Fifo => (s.inserted_ms, 0, s.generation),
    }
}

/// Picks a victim among `sample` random slots (or all slots when the table is small).
pub fn choose_victim(
    idx: &Index,
    cfg: &StoreConfig,
    rng: &mut Rng,
    now_ms: u64,
    exclude: Option<usize>,
) -> Option<usize> {
    let ok =
        |i: usize| Some(i) != exclude && evictable(&idx.slots[i], now_ms, cfg.writing_timeout_ms);
    let best = |it: &mut dyn Iterator<Item = usize>| {
        it.filter(|i| ok(*i))
            .min_by_key(|i| victim_rank(&idx.slots[*i], cfg.eviction))
    };
    let n = idx.slots.len();
    if n <= cfg.sample {
        return best(&mut (0..n));
    }
    let mut picks = Vec::with_capacity(cfg.sample);
    // A few extra draws so sparse tables still yield a full sample.
    for _ in 0..cfg.sample * 4 {
        let i = rng.below(n);
        if ok(i) {
            picks.push(i);
            if picks.len() == cfg.sample {
                break;
            }
        }
    }
    best(&mut picks.into_iter()).or_else(|| best(&mut (0..n)))
}

/// Reserves a slot for `bytes` in the index (pure; run inside a CAS update). Returns the slot,
/// its new generation and the slots whose data must be emptied.
#[allow(clippy::too_many_arguments)]
pub fn reserve(
    idx: &mut Index,
    cfg: &StoreConfig,
    primary: u64,
    variant: u64,
    uri: u64,
    bytes: u64,
    now_ms: u64,
    rng: &mut Rng,
) -> Result<Reservation, InsertError> {
    if bytes > cfg.max_bytes || bytes > u64::from(u32::MAX) {
        return Err(InsertError::TooLarge);
    }
    let mut victims = Vec::new();
    for i in 0..idx.slots.len() {
        let s = idx.slots[i];
        if s.primary == primary && s.variant == variant && s.state != FREE {
            if s.state == WRITING && !evictable(&s, now_ms, cfg.writing_timeout_ms) {
                return Err(InsertError::Busy);
            }
            idx.free(i);
            victims.push(i);
        }
    }
    let mut target = idx.slots.iter().position(|s| s.state == FREE);
    let mut evicted = 0;
    while idx.used + bytes > cfg.max_bytes || target.is_none() {
        let Some(v) = choose_victim(idx, cfg, rng, now_ms, None) else {
            return Err(InsertError::Full);
        };
        idx.free(v);
        victims.push(v);
        evicted += 1;
        if target.is_none() {
            target = Some(v);
        }
    }
    let Some(t) = target else {
        return Err(InsertError::Full);
    };
    let generation = idx.next_generation;
    idx.next_generation = idx.next_generation.wrapping_add(1).max(1);
    idx.slots[t] = Slot {
        primary,
        variant,
        uri,
        bytes: bytes as u32,
        state: WRITING,
        generation,
        hits: 0,
        inserted_ms: now_ms,
        access_ms: now_ms,
    };
    idx.used += bytes;
    victims.retain(|v| *v != t);
    Ok(Reservation {
        slot: t,
        generation,
        empty: victims,
        evicted,
    })
}

/// A slot reserved in the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub slot: usize,
    pub generation: u32,
    /// Freed slots whose data must be overwritten with an empty value.
    pub empty: Vec<usize>,
    /// Entries evicted to make room (replacing the same variant is not an eviction).
    pub evicted: usize,
}

/// The store over a [`SharedStore`] (Envoy's shared data, or [`switchyard_core::shared::MemStore`]
/// in tests).
pub struct Store<'a, S: SharedStore + ?Sized> {
    pub shared: &'a S,
    pub cfg: &'a StoreConfig,
}

impl<'a, S: SharedStore + ?Sized> Store<'a, S> {
    pub fn new(shared: &'a S, cfg: &'a StoreConfig) -> Self {
        Store { shared, cfg }
    }

    fn index_key(&self) -> String {
        format!("{}index", self.cfg.prefix)
    }

    fn slot_key(&self, i: usize) -> String {
        format!("{}slot.{}", self.cfg.prefix, i)
    }

    /// Creates the index once (at configure time).
    pub fn init(&self) -> Result<(), StoreError> {
        ensure_key(
            self.shared,
            &self.index_key(),
            &Index::new(self.cfg.slots).encode(),
        )
        .map(|_| ())
    }

    pub fn index(&self) -> Option<Index> {
        let (v, _) = self.shared.get(&self.index_key()).ok()?;
        Index::decode(&v?)
    }

    /// Every ready entry stored under `primary` (all its variants), with slot and generation.
    pub fn lookup(&self, primary: u64) -> Vec<(usize, u32, Entry)> {
        let Some(idx) = self.index() else {
            return Vec::new();
        };
        idx.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_ready() && s.primary == primary)
            .filter_map(|(i, s)| {
                let (data, _) = self.shared.get(&self.slot_key(i)).ok()?;
                let (generation, entry) = Entry::decode(&data?)?;
                (generation == s.generation).then_some((i, generation, entry))
            })
            .collect()
    }

    /// Records a hit for LRU/LFU. Best effort: gives up after a couple of CAS conflicts.
    pub fn touch(&self, slot: usize, generation: u32, now_ms: u64) {
        if self.cfg.eviction == Eviction::Fifo {
            return;
        }
        let policy = self.cfg.eviction;
        let _ = cas_update(self.shared, &self.index_key(), 2, |cur| {
            let Some(mut idx) = cur.and_then(Index::decode) else {
                return Update::Keep(());
            };
            match idx.slots.get_mut(slot) {
                Some(s) if s.is_ready() && s.generation == generation => {
                    // LRU recency has one-second resolution: at most one index write per
                    // entry and second, instead of one per hit.
                    if policy == Eviction::Lru
                        && s.access_ms / LRU_RESOLUTION_MS == now_ms / LRU_RESOLUTION_MS
                    {
                        return Update::Keep(());
                    }
                    s.access_ms = now_ms;
                    s.hits = s.hits.saturating_add(1);
                    Update::Write(idx.encode(), ())
                }
                _ => Update::Keep(()),
            }
        });
    }

    /// Stores an entry (replacing the same primary+variant). `seed` drives eviction sampling.
    pub fn insert(
        &self,
        entry: &Entry,
        primary: u64,
        variant: u64,
        uri: u64,
        now_ms: u64,
        seed: u64,
    ) -> Result<Inserted, InsertError> {
        // The generation is fixed-width, so the size is known before it is assigned.
        let bytes = entry.encode(0).len() as u64;
        if bytes > self.cfg.max_bytes {
            return Err(InsertError::TooLarge);
        }
        let mut evicted_used = None;
        let outcome = cas_update(self.shared, &self.index_key(), CAS_RETRIES, |cur| {
            let Some(mut idx) = cur.and_then(Index::decode) else {
                return Update::Keep(Err(InsertError::Store(StoreError::Other(
                    "missing index".into(),
                ))));
            };
            let mut rng = Rng::new(seed);
            match reserve(
                &mut idx, self.cfg, primary, variant, uri, bytes, now_ms, &mut rng,
            ) {
                Ok(r) => {
                    let used = idx.used;
                    Update::Write(idx.encode(), Ok((r, used)))
                }
                Err(e) => Update::Keep(Err(e)),
            }
        });
        let (
            Reservation {
                slot,
                generation,
                empty,
                evicted,
            },
            used,
        ) = match outcome {
            CasOutcome::Written { result, .. } | CasOutcome::Kept { result, .. } => result?,
            CasOutcome::Exhausted { .. } => return Err(InsertError::Contended),
            CasOutcome::Failed(e) => return Err(InsertError::Store(e)),
        };
        for v in &empty {
            let _ = self.shared.set(&self.slot_key(*v), &[], None);
        }
        self.shared
            .set(&self.slot_key(slot), &entry.encode(generation), None)
            .map_err(InsertError::Store)?;
        let _ = cas_update(self.shared, &self.index_key(), CAS_RETRIES, |cur| {
            let Some(mut idx) = cur.and_then(Index::decode) else {
                return Update::Keep(());
            };
            match idx.slots.get_mut(slot) {
                Some(s) if s.state == WRITING && s.generation == generation => {
                    s.state = READY;
                    evicted_used = Some(idx.used);
                    Update::Write(idx.encode(), ())
                }
                _ => Update::Keep(()),
            }
        });
        Ok(Inserted {
            slot,
            generation,
            evicted,
            used: evicted_used.unwrap_or(used),
        })
    }

    /// Frees every ready slot whose index record matches `pred`; returns how many.
    pub fn remove_where(&self, pred: impl Fn(&Slot) -> bool) -> usize {
        let outcome = cas_update(self.shared, &self.index_key(), CAS_RETRIES, |cur| {
            let Some(mut idx) = cur.and_then(Index::decode) else {
                return Update::Keep(Vec::new());
            };
            let hit: Vec<usize> = (0..idx.slots.len())
                .filter(|i| idx.slots[*i].is_ready() && pred(&idx.slots[*i]))
                .collect();
            if hit.is_empty() {
                return Update::Keep(hit);
            }
            for i in &hit {
                idx.free(*i);
            }
            Update::Write(idx.encode(), hit)
        });
        let freed = outcome.result().unwrap_or_default();
        for i in &freed {
            let _ = self.shared.set(&self.slot_key(*i), &[], None);
        }
        freed.len()
    }

    /// Frees every ready entry whose stored data matches `pred` (reads each entry: for purges).
    pub fn remove_entries_where(&self, pred: impl Fn(&Entry) -> bool) -> usize {
        let Some(idx) = self.index() else { return 0 };
        let matches: Vec<(usize, u32)> = idx
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_ready())
            .filter_map(|(i, s)| {
                let (data, _) = self.shared.get(&self.slot_key(i)).ok()?;
                let (generation, entry) = Entry::decode(&data?)?;
                (generation == s.generation && pred(&entry)).then_some((i, generation))
            })
            .collect();
        if matches.is_empty() {
            return 0;
        }
        // Only the exact generations that matched: a slot reused meanwhile is left alone.
        let outcome = cas_update(self.shared, &self.index_key(), CAS_RETRIES, |cur| {
            let Some(mut idx) = cur.and_then(Index::decode) else {
                return Update::Keep(Vec::new());
            };
            let hit: Vec<usize> = matches
                .iter()
                .filter(|(i, g)| {
                    idx.slots
                        .get(*i)
                        .is_some_and(|s| s.is_ready() && s.generation == *g)
                })
                .map(|(i, _)| *i)
                .collect();
            for i in &hit {
                idx.free(*i);
            }
            Update::Write(idx.encode(), hit)
        });
        let freed = outcome.result().unwrap_or_default();
        for i in &freed {
            let _ = self.shared.set(&self.slot_key(*i), &[], None);
        }
        freed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    fn put(st: &Store<MemStore>, key: &str, len: usize, now: u64) -> Result<Inserted, InsertError> {
        st.insert(
            &entry(key, len),
            h(key),
            0,
            h(key),
            now,
            now.wrapping_mul(31) + 7,
        )
    }

    fn has(st: &Store<MemStore>, key: &str) -> bool {
        st.lookup(h(key)).iter().any(|(_, _, e)| e.key == key)
    }

    /// Physical bytes of all slot values (what Envoy holds), excluding the index.
    fn slot_bytes(m: &MemStore, st: &Store<MemStore>) -> u64 {
        (0..st.cfg.slots)
            .map(|i| {
                m.get(&st.slot_key(i))
                    .unwrap()
                    .0
                    .map_or(0, |v| v.len() as u64)
            })
            .sum()
    }

    fn entry_size(len: usize) -> u64 {
        entry("a", len).encode(0).len() as u64
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
        assert!(st.index().unwrap().used <= c.max_bytes);
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

    #[test]
    fn replacing_a_key_reuses_bytes_and_slot() {
        let m = MemStore::new();
        let c = cfg(10_000, 8, Eviction::Lru, 8);
        let st = Store::new(&m, &c);
        st.init().unwrap();
        for i in 0..20 {
            put(&st, "same", 100 + i, i as u64).unwrap();
        }
        let idx = st.index().unwrap();
        assert_eq!(idx.entries(), 1);
        assert_eq!(idx.used, entry("same", 119).encode(0).len() as u64);
        assert_eq!(st.lookup(h("same"))[0].2.body.len(), 119);
    }

    #[test]
    fn too_large_is_refused_and_bytes_never_exceed_the_bound() {
        let m = MemStore::new();
        let c = cfg(5_000, 32, Eviction::Lru, 4);
        let st = Store::new(&m, &c);
        st.init().unwrap();
        assert_eq!(put(&st, "huge", 6_000, 1), Err(InsertError::TooLarge));
        let mut rng = Rng::new(5);
        for i in 0..500u64 {
            let len = 50 + rng.below(900);
            put(&st, &format!("k{i}"), len, i).unwrap();
            let idx = st.index().unwrap();
            assert!(idx.used <= c.max_bytes, "used {} at {i}", idx.used);
            // Accounting matches the data actually held.
            assert_eq!(slot_bytes(&m, &st), idx.used, "at {i}");
        }
        // The most recent entry is always retrievable.
        assert!(has(&st, "k499"));
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
    fn remove_by_index_and_by_entry() {
        let m = MemStore::new();
        let c = cfg(100_000, 16, Eviction::Lru, 16);
        let st = Store::new(&m, &c);
        st.init().unwrap();
        for k in ["a1", "a2", "b1"] {
            put(&st, k, 10, 1).unwrap();
        }
        assert_eq!(st.remove_where(|s| s.uri == h("a1")), 1);
        assert!(!has(&st, "a1") && has(&st, "a2"));
        assert_eq!(st.remove_entries_where(|e| e.path.starts_with("/a")), 1);
        assert!(!has(&st, "a2") && has(&st, "b1"));
        let idx = st.index().unwrap();
        assert_eq!(idx.entries(), 1);
        assert_eq!(idx.used, slot_bytes(&m, &st));
    }

    #[test]
    fn a_concurrent_writer_of_the_same_variant_is_not_clobbered() {
        let mut idx = Index::new(4);
        let c = cfg(10_000, 4, Eviction::Lru, 4);
        let mut rng = Rng::new(1);
        reserve(&mut idx, &c, 1, 0, 0, 100, 0, &mut rng).unwrap();
        assert_eq!(
            reserve(&mut idx, &c, 1, 0, 0, 100, 10, &mut rng),
            Err(InsertError::Busy)
        );
        // A writer that vanished is reclaimed after the timeout.
        assert!(reserve(&mut idx, &c, 1, 0, 0, 100, 70_000, &mut rng).is_ok());
        assert_eq!(idx.used, 100);
    }

    #[test]
    fn index_round_trips_and_rejects_truncation() {
        let mut idx = Index::new(3);
        idx.slots[1] = Slot {
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
        idx.used = 4;
        let b = idx.encode();
        assert_eq!(Index::decode(&b), Some(idx));
        assert_eq!(Index::decode(&b[..b.len() - 1]), None);
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
                let found = st.lookup(h(&key));
                reqs += 1;
                if let Some((slot, g, _)) = found.into_iter().find(|(_, _, e)| e.key == key) {
                    hits += 1;
                    st.touch(slot, g, t * 1000);
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
}
