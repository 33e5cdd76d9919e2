//! The bounded cache store in proxy-wasm shared data, shared by every worker.
//!
//! Layout (all keys under the store's prefix):
//! - `b.<n>`: bucket `n` of a set-associative index. The `slots` slots are split into
//!   `ceil(slots / WAYS)` buckets of at most [`WAYS`] consecutive slots; the primary key hash
//!   picks the bucket, so every variant of a key lives in one bucket. A bucket record holds one
//!   56-byte record per slot (primary hash, variant hash, URI hash, bytes, state, generation,
//!   hits, insert time, access time). Created at configure time, afterwards only CAS-updated.
//! - `used`: the bytes in use across all buckets (8 bytes), CAS-updated only when entries are
//!   inserted or removed, never on a hit.
//! - `slot.<i>`: the encoded [`Entry`] of slot `i`, tagged with the generation it was written
//!   for. A reader trusts it only if its bucket says the slot is ready with that generation and
//!   the full key matches, so hash collisions and half-written slots are never served.
//!
//! A hit reads one bucket record and the entry's slot, whatever the slot count. Recording the hit
//! for LRU writes the bucket at most once per entry and second (and not at all when the lookup
//! already saw this second's access time); LFU writes the bucket on every hit; FIFO never writes.
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
use std::ops::Range;
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

/// Slots per bucket (at most): the unit a lookup reads and a hit writes.
pub const WAYS: usize = 16;
const FREE: u32 = 0;
const WRITING: u32 = 1;
const READY: u32 = 2;
const SLOT_LEN: usize = 56;
const BUCKET_HEADER: usize = 8;
const CAS_RETRIES: u32 = 16;
const LRU_RESOLUTION_MS: u64 = 1000;

/// One slot record of a bucket.
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

/// One bucket record: the slots `first..first + slots.len()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    pub first: usize,
    pub slots: Vec<Slot>,
}

impl Bucket {
    pub fn new(range: Range<usize>) -> Self {
        Bucket {
            first: range.start,
            slots: vec![Slot::default(); range.len()],
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(BUCKET_HEADER + self.slots.len() * SLOT_LEN);
        out.extend_from_slice(&(self.first as u32).to_le_bytes());
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

    pub fn decode(b: &[u8]) -> Option<Bucket> {
        let u64_at = |o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
        let u32_at = |o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
        let first = u32_at(0)? as usize;
        let n = u32_at(4)? as usize;
        if n > WAYS || b.len() != BUCKET_HEADER + n * SLOT_LEN {
            return None;
        }
        let mut slots = Vec::with_capacity(n);
        for i in 0..n {
            let o = BUCKET_HEADER + i * SLOT_LEN;
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
        Some(Bucket { first, slots })
    }

    /// Frees local slot `j`, keeping its generation; returns the bytes it held if it was ready
    /// (a slot being written holds no accounted bytes: its writer owns them).
    fn free(&mut self, j: usize) -> u64 {
        match self.slots.get_mut(j) {
            Some(s) => {
                let held = if s.is_ready() { u64::from(s.bytes) } else { 0 };
                *s = Slot {
                    generation: s.generation,
                    ..Slot::default()
                };
                held
            }
            None => 0,
        }
    }

    pub fn entries(&self) -> usize {
        self.slots.iter().filter(|s| s.is_ready()).count()
    }
}

/// How `slots` slots split into buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub slots: usize,
    pub buckets: usize,
}

impl Geometry {
    pub fn new(slots: usize) -> Self {
        let slots = slots.max(1);
        Geometry {
            slots,
            buckets: slots.div_ceil(WAYS),
        }
    }

    /// The slots of bucket `b` (sizes differ by at most one).
    pub fn range(&self, b: usize) -> Range<usize> {
        b * self.slots / self.buckets..(b + 1) * self.slots / self.buckets
    }

    /// The bucket of a primary key hash.
    pub fn bucket_of(&self, primary: u64) -> usize {
        let mixed = (primary ^ (primary >> 31)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((u128::from(mixed) * self.buckets as u128) >> 64) as usize
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
    pub entry: Entry,
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

/// Orders victims: the smallest value is evicted first. Generation breaks ties (insert order
/// within a slot), then the slot number.
fn victim_rank(s: &Slot, policy: Eviction) -> (u64, u64, u32) {
    match policy {
        Eviction::Lru => (s.access_ms, 0, s.generation),
        Eviction::Lfu => (u64::from(s.hits), s.access_ms, s.generation),
        Eviction::Fifo => (s.inserted_ms, 0, s.generation),
    }
}

/// A slot reserved in a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub slot: usize,
    pub generation: u32,
    /// Freed slots whose data must be emptied, with the accounted bytes to release after that.
    pub freed: Vec<(usize, u64)>,
    /// Entries evicted to make room (replacing the same variant is not an eviction).
    pub evicted: usize,
}

/// Reserves a slot of `bucket` for an entry of `bytes` (pure; run inside a CAS update): frees
/// the same variant, takes a free slot or evicts the bucket's worst by the policy, and marks the
/// slot as being written. Bytes are reserved separately (see [`Store::insert`]).
#[allow(clippy::too_many_arguments)]
pub fn reserve_slot(
    bucket: &mut Bucket,
    cfg: &StoreConfig,
    primary: u64,
    variant: u64,
    uri: u64,
    bytes: u64,
    now_ms: u64,
) -> Result<Reservation, InsertError> {
    if bytes > cfg.max_bytes || bytes > u64::from(u32::MAX) {
        return Err(InsertError::TooLarge);
    }
    let mut freed = Vec::new();
    for j in 0..bucket.slots.len() {
        let s = bucket.slots[j];
        if s.primary == primary && s.variant == variant && s.state != FREE {
            if !evictable(&s, now_ms, cfg.writing_timeout_ms) {
                return Err(InsertError::Busy);
            }
            freed.push((bucket.first + j, bucket.free(j)));
        }
    }
    let mut evicted = 0;
    let target = match bucket.slots.iter().position(|s| s.state == FREE) {
        Some(j) => j,
        None => {
            let victim = (0..bucket.slots.len())
                .filter(|j| evictable(&bucket.slots[*j], now_ms, cfg.writing_timeout_ms))
                .min_by_key(|j| victim_rank(&bucket.slots[*j], cfg.eviction));
            let Some(j) = victim else {
                return Err(InsertError::Full);
            };
            if bucket.slots[j].is_ready() {
                evicted += 1;
            }
            freed.push((bucket.first + j, bucket.free(j)));
            j
        }
    };
    let generation = bucket.slots[target].generation.wrapping_add(1).max(1);
    bucket.slots[target] = Slot {
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
    Ok(Reservation {
        slot: bucket.first + target,
        generation,
        freed,
        evicted,
    })
}

fn decode_used(b: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(0..8)?.try_into().ok()?))
}

/// The outcome of one attempt to reserve bytes in `used`.
enum Reserve {
    Reserved(u64),
    /// `used` after the release, and how many more bytes must be freed.
    Short(u64),
    Missing,
}

/// The store over a [`SharedStore`] (Envoy's shared data, or [`switchyard_core::shared::MemStore`]
/// in tests).
pub struct Store<'a, S: SharedStore + ?Sized> {
    pub shared: &'a S,
    pub cfg: &'a StoreConfig,
    geo: Geometry,
}

impl<'a, S: SharedStore + ?Sized> Store<'a, S> {
    pub fn new(shared: &'a S, cfg: &'a StoreConfig) -> Self {
        Store {
            shared,
            cfg,
            geo: Geometry::new(cfg.slots),
        }
    }

    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    fn used_key(&self) -> String {
        format!("{}used", self.cfg.prefix)
    }

    fn bucket_key(&self, b: usize) -> String {
        format!("{}b.{}", self.cfg.prefix, b)
    }

    fn slot_key(&self, i: usize) -> String {
        format!("{}slot.{}", self.cfg.prefix, i)
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
            let mut stale: Vec<String> = vec![format!("{}index", self.cfg.prefix)];
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
        let Some(bucket) = self.bucket(self.geo.bucket_of(primary)) else {
            return Vec::new();
        };
        bucket
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_ready() && s.primary == primary)
            .filter_map(|(j, s)| {
                let slot = bucket.first + j;
                let (data, _) = self.shared.get(&self.slot_key(slot)).ok()?;
                let (generation, entry) = Entry::decode(&data?)?;
                (generation == s.generation).then_some(Hit {
                    slot,
                    meta: *s,
                    entry,
                })
            })
            .collect()
    }

    /// [`Store::find`] as (slot, generation, entry).
    pub fn lookup(&self, primary: u64) -> Vec<(usize, u32, Entry)> {
        self.find(primary)
            .into_iter()
            .map(|h| (h.slot, h.meta.generation, h.entry))
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
                let b = rng.below(self.geo.buckets);
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
mod tests {
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
                    5_000 + rng.below(10_000)
                } else {
                    20 + rng.below(400)
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
                put(w, &k, 50 + rng.below(500), i * 10).unwrap();
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
}
