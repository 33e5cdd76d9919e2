//! The bounded cache store in proxy-wasm shared data, shared by every worker.
//!
//! Layout (all keys under the store's prefix):
//! - `b.<n>`: bucket `n` of a set-associative index. The `slots` slots are split into
//!   `ceil(slots / WAYS)` buckets of at most [`WAYS`] consecutive slots; the primary key hash
//!   picks the bucket, so every variant of a key lives in one bucket. A bucket record holds one
//!   56-byte record per slot (primary hash, variant hash, URI hash, bytes, state, generation,
//!   hits, insert time, access time), then the coalescing locks of the bucket's keys (at most
//!   [`LOCKS`], 16 bytes each: primary hash, expiry). Created at configure time, afterwards
//!   only CAS-updated. A miss takes its key's lock with the CAS token of the record its lookup
//!   read (one write, no read, when nobody wrote the record since), and the write that marks
//!   its stored entry ready also releases the lock.
//! - `used`: the bytes in use across all buckets (8 bytes), CAS-updated only when entries are
//!   inserted or removed, never on a hit.
//! - `slot.<i>`: the encoded [`Entry`] of slot `i`, tagged with the generation it was written
//!   for. A reader trusts it only if its bucket says the slot is ready with that generation and
//!   the full key matches, so hash collisions and half-written slots are never served.
//!
//! A hit reads one bucket record and the entry's slot, whatever the slot count; through a
//! worker's [`L1`] ([`Store::find_cached`]) only the bucket record when the L1 holds a copy of
//! the entry that record still vouches for. Recording the hit for LRU writes the bucket at most
//! once per entry and second (and not at all when the lookup already saw this second's access
//! time); LFU writes the bucket on every hit; FIFO never writes.
//!
//! Entries are immutable in place: a slot's data is written only right after its slot was
//! reserved under a new generation, and every change of an entry (a replacement, a `304` or
//! HEAD freshening, which are inserts, a purge, an invalidation, an eviction) frees its slot
//! in the bucket (a freed slot keeps its generation; the next reservation bumps it). So a ready
//! slot record with an unchanged generation vouches for the very bytes read under it, which is
//! what the workers' L1s rely on.
//!
//! Writing first reserves a slot in the bucket with CAS (replacing the same variant, else taking
//! a free slot, else evicting the bucket's worst slot by the policy), empties the data of the
//! slots it freed, then reserves the entry's bytes in `used` with CAS, releasing the freed
//! bytes in the same update. If `used + bytes` would exceed `max_bytes`, it evicts more entries
//! (the bucket's own first, then `eviction_sample` slots drawn from random buckets: the worst by
//! the policy go), empties their data and retries. Only then is the data written and the slot
//! marked ready. Bytes are released only after the data holding them was emptied, and data is
//! written only after its bytes were reserved, so physical bytes never exceed `used`, which
//! never exceeds `max_bytes`. Slots are reused, never leaked (shared data has no delete): a slot
//! reserved by a writer that never finished is reclaimable after `writing_timeout_ms` (its bytes
//! are then not released, so accounting stays on the safe side).
//!
//! Eviction for slots is exact within a bucket (the cache is set-associative); eviction for bytes
//! is sampled when the table is larger than the sample (Redis-style), exact when
//! `sample >= slots`.

use crate::entry::Entry;
use crate::l1::L1;
use std::rc::Rc;
use switchyard_core::decimal::push_decimal_str;
/// Sampling draws from the filters' one generator.
pub use switchyard_core::rng::XorShift as Rng;
use switchyard_core::shared::{
    cas_update, cas_update_from, ensure_key, CasOutcome, Seen, SharedStore, StoreError, Update,
};

mod layout;
mod reserve;

use layout::{locked, read_locks, with_locks, CAS_RETRIES, LRU_RESOLUTION_MS, READY, WRITING};
pub use layout::{Acquire, Bucket, Geometry, Lock, Slot, LOCKS, WAYS};
use reserve::{decode_used, victim_rank, Reserve};
pub use reserve::{reserve_slot, Reservation};

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

/// Store settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Shared-data key prefix (filter name plus configuration hash).
    pub prefix: String,
    pub max_bytes: u64,
    pub slots: usize,
    pub eviction: Eviction,
    /// Slots examined per eviction for bytes.
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
    /// Nothing could be evicted (every slot of the bucket, or every sampled slot, is being
    /// written).
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

/// A stored entry found by [`Store::find`], with the slot record it was read under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub slot: usize,
    pub meta: Slot,
    /// Shared with the worker's [`L1`] when it holds a copy.
    pub entry: Rc<Entry>,
    /// Taken from the worker's [`L1`]: the entry's data was not read.
    pub l1: bool,
}

/// A key's bucket record as a lookup read it, value and CAS token: a miss takes its coalescing
/// lock by writing over exactly this, without reading the record again
/// ([`Store::acquire`]).
#[derive(Debug, Clone)]
pub struct SeenBucket {
    primary: u64,
    read: Seen,
}

/// The store over a [`SharedStore`] (Envoy's shared data, or [`switchyard_core::shared::MemStore`]
/// in tests).
pub struct Store<'a, S: SharedStore + ?Sized> {
    pub shared: &'a S,
    pub cfg: &'a StoreConfig,
    geo: Geometry,
    /// Inserts are by their key's coalescing leader: marking the entry ready also releases
    /// the lock ([`Store::releasing_lock`]).
    unlock: bool,
}

impl<'a, S: SharedStore + ?Sized> Store<'a, S> {
    pub fn new(shared: &'a S, cfg: &'a StoreConfig) -> Self {
        Store {
            shared,
            cfg,
            geo: Geometry::new(cfg.slots),
            unlock: false,
        }
    }

    /// This store's inserts are made by the coalescing leader of their key: a successful
    /// [`Store::insert`] releases the key's lock in the same write that marks the entry ready
    /// (one read and write fewer than [`Store::unlock`] after it). A failed one leaves the
    /// lock to the caller.
    pub fn releasing_lock(mut self) -> Self {
        self.unlock = true;
        self
    }

    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    fn used_key(&self) -> String {
        self.record_key("used", None)
    }

    fn bucket_key(&self, b: usize) -> String {
        self.record_key("b.", Some(b))
    }

    fn slot_key(&self, i: usize) -> String {
        self.record_key("slot.", Some(i))
    }

    /// `<prefix><kind><n>`: built several times per request, so without `format!`.
    fn record_key(&self, kind: &str, n: Option<usize>) -> String {
        let mut key = String::with_capacity(self.cfg.prefix.len() + kind.len() + 20);
        key.push_str(&self.cfg.prefix);
        key.push_str(kind);
        if let Some(n) = n {
            push_decimal_str(&mut key, n as u64);
        }
        key
    }

    /// Creates the records once (at configure time). The first worker to create them also
    /// empties whatever an earlier layout left under the same prefix (its single `index` record
    /// and unaccounted slot data), so those bytes do not linger outside the bound.
    pub fn init(&self) -> Result<(), StoreError> {
        for b in 0..self.geo.buckets {
            ensure_key(
                self.shared,
                &self.bucket_key(b),
                &Bucket::new(self.geo.range(b)).encode(),
            )?;
        }
        let created = ensure_key(self.shared, &self.used_key(), &0u64.to_le_bytes())?;
        if created {
            // Earlier layouts: one `index` record; the coalescing locks in a record of their own.
            let mut stale: Vec<String> = vec![
                format!("{}index", self.cfg.prefix),
                format!("{}locks", self.cfg.prefix),
            ];
            stale.extend((0..self.geo.slots).map(|i| self.slot_key(i)));
            for k in stale {
                if let Ok((Some(v), _)) = self.shared.get(&k) {
                    if !v.is_empty() {
                        self.shared.set(&k, &[], None)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Bucket `b`, as stored.
    pub fn bucket(&self, b: usize) -> Option<Bucket> {
        let (v, _) = self.shared.get(&self.bucket_key(b)).ok()?;
        Bucket::decode(&v?)
    }

    /// Bytes in use across all workers.
    pub fn used(&self) -> Option<u64> {
        let (v, _) = self.shared.get(&self.used_key()).ok()?;
        decode_used(&v?)
    }

    /// Ready entries (reads every bucket: for gauges after purges, not for the request path).
    pub fn entries(&self) -> usize {
        (0..self.geo.buckets)
            .filter_map(|b| self.bucket(b))
            .map(|b| b.entries())
            .sum()
    }

    /// Every ready entry stored under `primary` (all its variants). Reads the key's bucket and
    /// the data of its matching slots, nothing else.
    pub fn find(&self, primary: u64) -> Vec<Hit> {
        self.find_with(primary, None).0
    }

    /// [`Store::find`] through a worker's [`L1`]: reads the key's bucket and only the data of
    /// the matching slots the L1 holds no valid copy of (a copy is valid while the slot's
    /// record says it still holds the entry the copy was read from, [`Slot::same_entry`]);
    /// what it reads goes into the L1.
    pub fn find_cached(&self, primary: u64, l1: &mut L1) -> Vec<Hit> {
        self.find_with(primary, Some(l1)).0
    }

    /// [`Store::find`] (through `l1` if given) that also returns the bucket record it read,
    /// for a miss to take its coalescing lock with ([`Store::acquire`]).
    pub fn find_with(
        &self,
        primary: u64,
        mut l1: Option<&mut L1>,
    ) -> (Vec<Hit>, Option<SeenBucket>) {
        let Ok((Some(raw), cas)) = self
            .shared
            .get(&self.bucket_key(self.geo.bucket_of(primary)))
        else {
            return (Vec::new(), None);
        };
        let Some(bucket) = Bucket::decode(&raw) else {
            return (Vec::new(), None);
        };
        let seen = SeenBucket {
            primary,
            read: (Some(raw), cas),
        };
        let hits = bucket
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_ready() && s.primary == primary)
            .filter_map(|(j, s)| {
                let slot = bucket.first + j;
                let meta = *s;
                if let Some(entry) = l1.as_deref_mut().and_then(|l1| l1.get(slot, s)) {
                    return Some(Hit {
                        slot,
                        meta,
                        entry,
                        l1: true,
                    });
                }
                let (data, _) = self.shared.get(&self.slot_key(slot)).ok()?;
                let (generation, entry) = Entry::decode(&data?)?;
                if generation != s.generation {
                    return None;
                }
                let entry = Rc::new(entry);
                if let Some(l1) = l1.as_deref_mut() {
                    l1.admit(slot, s, &entry);
                }
                Some(Hit {
                    slot,
                    meta,
                    entry,
                    l1: false,
                })
            })
            .collect();
        (hits, Some(seen))
    }

    /// Takes the coalescing lock of `primary` until `now_ms + ttl_ms`, or says who has it. The
    /// lock lives in the key's bucket record: with `seen` (the record this request's lookup
    /// read) it is one write when nobody changed the record since, else a read and a write.
    pub fn acquire(
        &self,
        primary: u64,
        now_ms: u64,
        ttl_ms: u64,
        seen: Option<SeenBucket>,
    ) -> Acquire {
        let key = self.bucket_key(self.geo.bucket_of(primary));
        let seen = seen.filter(|s| s.primary == primary).map(|s| s.read);
        let outcome = cas_update_from(self.shared, &key, seen, CAS_RETRIES, |cur| {
            let Some((record, (at, mut locks))) = cur.and_then(|r| Some((r, read_locks(r)?)))
            else {
                return Update::Keep(Acquire::Unavailable);
            };
            match layout::acquire(&mut locks, primary, now_ms, ttl_ms) {
                (acquire, true) => Update::Write(with_locks(record, at, &locks), acquire),
                (acquire, false) => Update::Keep(acquire),
            }
        });
        outcome.result().unwrap_or(Acquire::Unavailable)
    }

    /// Whether a live coalescing lock for `primary` exists.
    pub fn lock_held(&self, primary: u64, now_ms: u64) -> bool {
        let key = self.bucket_key(self.geo.bucket_of(primary));
        let Ok((Some(record), _)) = self.shared.get(&key) else {
            return false;
        };
        read_locks(&record).is_some_and(|(_, locks)| locked(&locks, primary, now_ms))
    }

    /// Releases the coalescing lock of `primary` (if it is still there).
    pub fn unlock(&self, primary: u64) {
        let key = self.bucket_key(self.geo.bucket_of(primary));
        let _ = cas_update(self.shared, &key, CAS_RETRIES, |cur| {
            let Some((record, (at, mut locks))) = cur.and_then(|r| Some((r, read_locks(r)?)))
            else {
                return Update::Keep(());
            };
            if layout::release(&mut locks, primary) {
                Update::Write(with_locks(record, at, &locks), ())
            } else {
                Update::Keep(())
            }
        });
    }

    /// [`Store::find`] as (slot, generation, entry).
    pub fn lookup(&self, primary: u64) -> Vec<(usize, u32, Entry)> {
        self.find(primary)
            .into_iter()
            .map(|h| (h.slot, h.meta.generation, Rc::unwrap_or_clone(h.entry)))
            .collect()
    }

    /// Records a hit found by [`Store::find`]: for LRU nothing at all is read or written when
    /// the lookup already saw an access in the same second.
    pub fn touch_hit(&self, hit: &Hit, now_ms: u64) {
        self.touch_seen(hit.slot, &hit.meta, now_ms);
    }

    /// [`Store::touch_hit`] with the slot and the record the lookup saw.
    pub fn touch_seen(&self, slot: usize, seen: &Slot, now_ms: u64) {
        match self.cfg.eviction {
            Eviction::Fifo => {}
            Eviction::Lru if same_second(seen.access_ms, now_ms) => {}
            _ => self.touch(slot, seen.generation, now_ms),
        }
    }

    /// Records a hit for LRU/LFU in the slot's bucket. Best effort: gives up after a couple of
    /// CAS conflicts.
    pub fn touch(&self, slot: usize, generation: u32, now_ms: u64) {
        if self.cfg.eviction == Eviction::Fifo || slot >= self.geo.slots {
            return;
        }
        let policy = self.cfg.eviction;
        let b = self.bucket_of_slot(slot);
        let _ = cas_update(self.shared, &self.bucket_key(b), 2, |cur| {
            let Some(mut bucket) = cur.and_then(Bucket::decode) else {
                return Update::Keep(());
            };
            let j = slot.wrapping_sub(bucket.first);
            match bucket.slots.get_mut(j) {
                Some(s) if s.is_ready() && s.generation == generation => {
                    // LRU recency has one-second resolution: at most one bucket write per
                    // entry and second, instead of one per hit.
                    if policy == Eviction::Lru && same_second(s.access_ms, now_ms) {
                        return Update::Keep(());
                    }
                    s.access_ms = now_ms;
                    s.hits = s.hits.saturating_add(1);
                    Update::Write(bucket.encode(), ())
                }
                _ => Update::Keep(()),
            }
        });
    }

    fn bucket_of_slot(&self, slot: usize) -> usize {
        ((slot + 1) * self.geo.buckets - 1) / self.geo.slots
    }

    /// Empties the data of freed slots and returns the bytes that may now be released (those
    /// whose data is known to be gone).
    fn empty(&self, freed: &[(usize, u64)]) -> u64 {
        freed
            .iter()
            .filter(|(i, _)| self.shared.set(&self.slot_key(*i), &[], None).is_ok())
            .map(|(_, bytes)| *bytes)
            .sum()
    }

    /// Returns `bytes` to `used`. If the update cannot be made the bytes stay accounted (the
    /// bound holds; the capacity shrinks by that much).
    fn release(&self, bytes: u64) -> Option<u64> {
        if bytes == 0 {
            return self.used();
        }
        cas_update(
            self.shared,
            &self.used_key(),
            CAS_RETRIES,
            |cur| match cur.and_then(decode_used) {
                Some(used) => {
                    let after = used.saturating_sub(bytes);
                    Update::Write(after.to_le_bytes().to_vec(), Some(after))
                }
                None => Update::Keep(None),
            },
        )
        .result()
        .flatten()
    }

    /// Gives up a reserved slot (if still ours) so it is free again.
    fn abandon(&self, slot: usize, generation: u32) {
        let b = self.bucket_of_slot(slot);
        let _ = cas_update(self.shared, &self.bucket_key(b), CAS_RETRIES, |cur| {
            let Some(mut bucket) = cur.and_then(Bucket::decode) else {
                return Update::Keep(());
            };
            let j = slot.wrapping_sub(bucket.first);
            match bucket.slots.get(j) {
                Some(s) if s.state == WRITING && s.generation == generation => {
                    bucket.free(j);
                    Update::Write(bucket.encode(), ())
                }
                _ => Update::Keep(()),
            }
        });
    }

    /// Evicts ready entries holding at least `need` bytes if it can: the worst by the policy
    /// among the bucket `own` and, if it does not hold `sample` candidates or enough bytes, slots
    /// of random other buckets. Empties their data; returns (bytes released by emptying, entries
    /// evicted), or `None` if no candidate was found.
    fn evict_for(&self, need: u64, own: usize, rng: &mut Rng) -> Option<(u64, usize)> {
        let mut candidates: Vec<(usize, Slot)> = Vec::new();
        let mut seen = vec![own];
        let add = |b: usize, candidates: &mut Vec<(usize, Slot)>| {
            if let Some(bucket) = self.bucket(b) {
                candidates.extend(
                    bucket
                        .slots
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.is_ready())
                        .map(|(j, s)| (bucket.first + j, *s)),
                );
            }
        };
        add(own, &mut candidates);
        let enough = |c: &[(usize, Slot)]| {
            c.len() >= self.cfg.sample
                && c.iter().map(|(_, s)| u64::from(s.bytes)).sum::<u64>() >= need
        };
        if self.geo.slots <= self.cfg.sample {
            for b in (0..self.geo.buckets).filter(|b| *b != own) {
                add(b, &mut candidates);
            }
        } else {
            let mut draws = 0;
            while !enough(&candidates)
                && seen.len() < self.geo.buckets
                && draws < self.cfg.sample * 4
            {
                draws += 1;
                let b = rng.below(self.geo.buckets as u64) as usize;
                if !seen.contains(&b) {
                    seen.push(b);
                    add(b, &mut candidates);
                }
            }
        }
        if candidates.is_empty() {
            return None;
        }
        let policy = self.cfg.eviction;
        candidates.sort_by_key(|(i, s)| (victim_rank(s, policy), *i));
        let mut picked: Vec<(usize, u32)> = Vec::new();
        let mut sum = 0u64;
        for (i, s) in &candidates {
            if sum >= need && !picked.is_empty() {
                break;
            }
            picked.push((*i, s.generation));
            sum += u64::from(s.bytes);
        }
        picked.sort_unstable();
        let mut freed: Vec<(usize, u64)> = Vec::new();
        let mut evicted = 0;
        let mut k = 0;
        while k < picked.len() {
            let b = self.bucket_of_slot(picked[k].0);
            let mut end = k;
            while end < picked.len() && self.bucket_of_slot(picked[end].0) == b {
                end += 1;
            }
            let group = &picked[k..end];
            k = end;
            let outcome = cas_update(self.shared, &self.bucket_key(b), CAS_RETRIES, |cur| {
                let Some(mut bucket) = cur.and_then(Bucket::decode) else {
                    return Update::Keep(Vec::new());
                };
                let mut out = Vec::new();
                for (i, g) in group {
                    let j = i.wrapping_sub(bucket.first);
                    // Only the exact generation sampled: a slot reused meanwhile is left alone.
                    if bucket
                        .slots
                        .get(j)
                        .is_some_and(|s| s.is_ready() && s.generation == *g)
                    {
                        out.push((*i, bucket.free(j)));
                    }
                }
                if out.is_empty() {
                    Update::Keep(out)
                } else {
                    Update::Write(bucket.encode(), out)
                }
            });
            let done = outcome.result().unwrap_or_default();
            evicted += done.len();
            freed.extend(done);
        }
        Some((self.empty(&freed), evicted))
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
        let own = self.geo.bucket_of(primary);
        // 1. A slot in the key's bucket.
        let outcome = cas_update(self.shared, &self.bucket_key(own), CAS_RETRIES, |cur| {
            let Some(mut bucket) = cur.and_then(Bucket::decode) else {
                return Update::Keep(Err(InsertError::Store(StoreError::Other(
                    "missing bucket".into(),
                ))));
            };
            match reserve_slot(&mut bucket, self.cfg, primary, variant, uri, bytes, now_ms) {
                Ok(r) => Update::Write(bucket.encode(), Ok(r)),
                Err(e) => Update::Keep(Err(e)),
            }
        });
        let Reservation {
            slot,
            generation,
            freed,
            mut evicted,
        } = match outcome {
            CasOutcome::Written { result, .. } | CasOutcome::Kept { result, .. } => result?,
            CasOutcome::Exhausted { .. } => return Err(InsertError::Contended),
            CasOutcome::Failed(e) => return Err(InsertError::Store(e)),
        };
        // 2. The freed slots' data goes before their bytes are released.
        let mut release = self.empty(&freed);
        // 3. The bytes, releasing the freed ones in the same update and evicting until they fit.
        let mut rng = Rng::new(seed);
        let rounds = self.geo.slots.div_ceil(self.cfg.sample.max(1)) + 4;
        let mut used = None;
        for _ in 0..rounds {
            let max = self.cfg.max_bytes;
            let outcome = cas_update(self.shared, &self.used_key(), CAS_RETRIES, |cur| {
                let Some(before) = cur.and_then(decode_used) else {
                    return Update::Keep(Reserve::Missing);
                };
                let after = before.saturating_sub(release);
                if after + bytes <= max {
                    Update::Write(
                        (after + bytes).to_le_bytes().to_vec(),
                        Reserve::Reserved(after + bytes),
                    )
                } else if release > 0 {
                    Update::Write(
                        after.to_le_bytes().to_vec(),
                        Reserve::Short(after + bytes - max),
                    )
                } else {
                    Update::Keep(Reserve::Short(after + bytes - max))
                }
            });
            let need = match outcome {
                CasOutcome::Written { result, .. } | CasOutcome::Kept { result, .. } => {
                    release = 0;
                    match result {
                        Reserve::Reserved(u) => {
                            used = Some(u);
                            break;
                        }
                        Reserve::Short(need) => need,
                        Reserve::Missing => break,
                    }
                }
                // `release` stays owed and is retried (or, failing that, stays accounted).
                CasOutcome::Exhausted { .. } | CasOutcome::Failed(_) => break,
            };
            match self.evict_for(need, own, &mut rng) {
                Some((freed_bytes, n)) => {
                    release += freed_bytes;
                    evicted += n;
                }
                None => break,
            }
        }
        let Some(used) = used else {
            self.abandon(slot, generation);
            self.release(release);
            return Err(InsertError::Full);
        };
        // 4. The data, then 5. ready.
        if let Err(e) = self
            .shared
            .set(&self.slot_key(slot), &entry.encode(generation), None)
        {
            self.abandon(slot, generation);
            self.release(bytes);
            return Err(InsertError::Store(e));
        }
        let outcome = cas_update(self.shared, &self.bucket_key(own), CAS_RETRIES, |cur| {
            let Some(mut bucket) = cur.and_then(Bucket::decode) else {
                return Update::Keep(false);
            };
            let j = slot.wrapping_sub(bucket.first);
            match bucket.slots.get_mut(j) {
                Some(s) if s.state == WRITING && s.generation == generation => {
                    s.state = READY;
                    if self.unlock {
                        bucket.release(primary);
                    }
                    Update::Write(bucket.encode(), true)
                }
                _ => Update::Keep(false),
            }
        });
        if outcome.result() != Some(true) {
            // Reclaimed meanwhile (or contended): take the data back out, then its bytes.
            // The slot, if still ours, is reclaimable after the writing timeout.
            if self.shared.set(&self.slot_key(slot), &[], None).is_ok() {
                self.release(bytes);
            }
            return Err(InsertError::Contended);
        }
        Ok(Inserted {
            slot,
            generation,
            evicted,
            used,
        })
    }

    /// Frees the ready slots of bucket `b` matching `pred(slot, record)`, empties them and
    /// releases their bytes; returns how many.
    fn free_in_bucket(&self, b: usize, pred: &dyn Fn(usize, &Slot) -> bool) -> usize {
        let outcome = cas_update(self.shared, &self.bucket_key(b), CAS_RETRIES, |cur| {
            let Some(mut bucket) = cur.and_then(Bucket::decode) else {
                return Update::Keep(Vec::new());
            };
            let hit: Vec<usize> = (0..bucket.slots.len())
                .filter(|j| {
                    let s = &bucket.slots[*j];
                    s.is_ready() && pred(bucket.first + *j, s)
                })
                .collect();
            if hit.is_empty() {
                return Update::Keep(Vec::new());
            }
            let freed: Vec<(usize, u64)> = hit
                .iter()
                .map(|j| (bucket.first + *j, bucket.free(*j)))
                .collect();
            Update::Write(bucket.encode(), freed)
        });
        let freed = outcome.result().unwrap_or_default();
        let released = self.empty(&freed);
        self.release(released);
        freed.len()
    }

    /// Frees every ready entry of `primary` (all variants): one bucket.
    pub fn remove_primary(&self, primary: u64) -> usize {
        self.free_in_bucket(self.geo.bucket_of(primary), &|_, s| s.primary == primary)
    }

    /// Frees every ready slot whose record matches `pred` (reads every bucket); returns how many.
    pub fn remove_where(&self, pred: impl Fn(&Slot) -> bool) -> usize {
        (0..self.geo.buckets)
            .map(|b| match self.bucket(b) {
                Some(bucket) if bucket.slots.iter().any(|s| s.is_ready() && pred(s)) => {
                    self.free_in_bucket(b, &|_, s| pred(s))
                }
                _ => 0,
            })
            .sum()
    }

    /// Frees every ready entry whose stored data matches `pred` (reads each entry: for purges).
    pub fn remove_entries_where(&self, pred: impl Fn(&Entry) -> bool) -> usize {
        let mut total = 0;
        for b in 0..self.geo.buckets {
            let Some(bucket) = self.bucket(b) else {
                continue;
            };
            let matches: Vec<(usize, u32)> = bucket
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.is_ready())
                .filter_map(|(j, s)| {
                    let i = bucket.first + j;
                    let (data, _) = self.shared.get(&self.slot_key(i)).ok()?;
                    let (generation, entry) = Entry::decode(&data?)?;
                    (generation == s.generation && pred(&entry)).then_some((i, generation))
                })
                .collect();
            if matches.is_empty() {
                continue;
            }
            // Only the exact generations that matched: a slot reused meanwhile is left alone.
            total += self.free_in_bucket(b, &|i, s| matches.contains(&(i, s.generation)));
        }
        total
    }
}

fn same_second(a_ms: u64, b_ms: u64) -> bool {
    a_ms / LRU_RESOLUTION_MS == b_ms / LRU_RESOLUTION_MS
}

#[cfg(test)]
mod tests;
