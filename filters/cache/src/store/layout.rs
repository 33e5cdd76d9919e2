//! The records in shared data: slot and bucket layouts and how slots split into buckets.

use std::ops::Range;

/// What a miss should do about coalescing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquire {
    /// Go upstream and release the lock when done.
    Leader,
    /// Another request is fetching this key: wait for it.
    Follower,
    /// The bucket's locks are all taken (or contended): go upstream without coalescing.
    Unavailable,
}

/// Slots per bucket (at most): the unit a lookup reads and a hit writes.
pub const WAYS: usize = 16;
pub(super) const FREE: u32 = 0;
pub(super) const WRITING: u32 = 1;
pub(super) const READY: u32 = 2;
pub(super) const SLOT_LEN: usize = 56;
pub(super) const BUCKET_HEADER: usize = 8;
pub(super) const CAS_RETRIES: u32 = 16;
/// Coalescing locks per bucket (at most): keys of the bucket with a miss in flight upstream.
pub const LOCKS: usize = 8;
pub(super) const LOCK_LEN: usize = 16;
pub(super) const LRU_RESOLUTION_MS: u64 = 1000;

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

    /// `now` (the record as read now) is ready and holds the entry written for `self` (the
    /// record it was read under). A slot's data is written only under a freshly reserved
    /// generation and never rewritten in place, so a ready slot with the same generation holds
    /// the same bytes. The other fields a reservation sets (key hashes, size, insert time) are
    /// compared too, so not even a generation wrapping around (2^32 reuses of one slot) can
    /// pass for the old entry. Hits and access time change on hits, not with the entry.
    pub fn same_entry(&self, now: &Slot) -> bool {
        now.is_ready()
            && now.generation == self.generation
            && now.primary == self.primary
            && now.variant == self.variant
            && now.uri == self.uri
            && now.bytes == self.bytes
            && now.inserted_ms == self.inserted_ms
    }
}

/// A coalescing lock: a miss for `primary` is in flight upstream until `expires_ms` at the
/// latest (a leader that vanished blocks nobody for longer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lock {
    pub primary: u64,
    pub expires_ms: u64,
}

/// One bucket record: the slots `first..first + slots.len()`, then the coalescing locks of
/// the bucket's keys. The locks live in the record a miss reads anyway, so taking one is a
/// write with the lookup's CAS token, and releasing it rides on the write that marks the
/// stored entry ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    pub first: usize,
    pub slots: Vec<Slot>,
    pub locks: Vec<Lock>,
}

impl Bucket {
    pub fn new(range: Range<usize>) -> Self {
        Bucket {
            first: range.start,
            slots: vec![Slot::default(); range.len()],
            locks: Vec::new(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let len = BUCKET_HEADER + self.slots.len() * SLOT_LEN + self.locks.len() * LOCK_LEN;
        let mut out = Vec::with_capacity(len);
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
        for l in self.locks.iter().take(LOCKS) {
            out.extend_from_slice(&l.primary.to_le_bytes());
            out.extend_from_slice(&l.expires_ms.to_le_bytes());
        }
        out
    }

    pub fn decode(b: &[u8]) -> Option<Bucket> {
        let (header, rest) = b.split_first_chunk::<BUCKET_HEADER>()?;
        let (first, n) = header.split_at(4);
        let first = u32::from_le_bytes(first.try_into().ok()?) as usize;
        let n = u32::from_le_bytes(n.try_into().ok()?) as usize;
        if n > WAYS {
            return None;
        }
        let (records, tail) = rest.split_at_checked(n * SLOT_LEN)?;
        // Most records hold no lock.
        let locks = if tail.is_empty() {
            Vec::new()
        } else {
            read_locks(b)?.1
        };
        let slots = records
            .chunks_exact(SLOT_LEN)
            .map(|r| {
                let r: &[u8; SLOT_LEN] = r.try_into().ok()?;
                let mut fields = Fields(r);
                Some(Slot {
                    primary: fields.u64()?,
                    variant: fields.u64()?,
                    uri: fields.u64()?,
                    bytes: fields.u32()?,
                    state: fields.u32()?,
                    generation: fields.u32()?,
                    hits: fields.u32()?,
                    inserted_ms: fields.u64()?,
                    access_ms: fields.u64()?,
                })
            })
            .collect::<Option<Vec<Slot>>>()?;
        Some(Bucket {
            first,
            slots,
            locks,
        })
    }

    /// Frees local slot `j`, keeping its generation; returns the bytes it held if it was ready
    /// (a slot being written holds no accounted bytes: its writer owns them).
    pub(super) fn free(&mut self, j: usize) -> u64 {
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

    /// Drops the lock for `primary`; whether there was one.
    pub(super) fn release(&mut self, primary: u64) -> bool {
        release(&mut self.locks, primary)
    }
}

/// Little-endian fields read one after another from a slot record.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn u64(&mut self) -> Option<u64> {
        let (v, rest) = self.0.split_first_chunk::<8>()?;
        self.0 = rest;
        Some(u64::from_le_bytes(*v))
    }
    fn u32(&mut self) -> Option<u32> {
        let (v, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_le_bytes(*v))
    }
}

/// A bucket record's locks without decoding its slots (taking or checking a lock needs only
/// them): where they start in `b`, and the locks. `None` if `b` is not a bucket record.
pub(super) fn read_locks(b: &[u8]) -> Option<(usize, Vec<Lock>)> {
    let n = u32::from_le_bytes(b.get(4..8)?.try_into().ok()?) as usize;
    let at = BUCKET_HEADER + n.checked_mul(SLOT_LEN)?;
    let tail = b.get(at..)?;
    if n > WAYS || tail.len() % LOCK_LEN != 0 || tail.len() / LOCK_LEN > LOCKS {
        return None;
    }
    let locks = tail
        .chunks_exact(LOCK_LEN)
        .map(|c| {
            let (p, e) = c.split_at(8);
            Some(Lock {
                primary: u64::from_le_bytes(p.try_into().ok()?),
                expires_ms: u64::from_le_bytes(e.try_into().ok()?),
            })
        })
        .collect::<Option<Vec<Lock>>>()?;
    Some((at, locks))
}

/// Bucket record `b` with the locks from `at` on replaced by `locks` (its slots copied as
/// they are).
pub(super) fn with_locks(b: &[u8], at: usize, locks: &[Lock]) -> Vec<u8> {
    let slots = b.get(..at).unwrap_or(b);
    let mut out = Vec::with_capacity(slots.len() + locks.len() * LOCK_LEN);
    out.extend_from_slice(slots);
    for l in locks.iter().take(LOCKS) {
        out.extend_from_slice(&l.primary.to_le_bytes());
        out.extend_from_slice(&l.expires_ms.to_le_bytes());
    }
    out
}

/// Whether a live lock for `primary` exists at `now_ms`.
pub(super) fn locked(locks: &[Lock], primary: u64, now_ms: u64) -> bool {
    locks
        .iter()
        .any(|l| l.primary == primary && l.expires_ms > now_ms)
}

/// Tries to take the lock for `primary` until `now_ms + ttl_ms`, dropping expired locks; also
/// says whether the locks changed (and must be written).
pub(super) fn acquire(
    locks: &mut Vec<Lock>,
    primary: u64,
    now_ms: u64,
    ttl_ms: u64,
) -> (Acquire, bool) {
    let before = locks.len();
    locks.retain(|l| l.expires_ms > now_ms);
    let pruned = locks.len() != before;
    if locks.iter().any(|l| l.primary == primary) {
        return (Acquire::Follower, pruned);
    }
    if locks.len() >= LOCKS {
        return (Acquire::Unavailable, pruned);
    }
    locks.push(Lock {
        primary,
        expires_ms: now_ms.saturating_add(ttl_ms),
    });
    (Acquire::Leader, true)
}

/// Drops the lock for `primary`; whether there was one.
pub(super) fn release(locks: &mut Vec<Lock>, primary: u64) -> bool {
    let before = locks.len();
    locks.retain(|l| l.primary != primary);
    locks.len() != before
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
