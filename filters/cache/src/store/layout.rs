//! The records in shared data: slot and bucket layouts and how slots split into buckets.

use std::ops::Range;

/// Slots per bucket (at most): the unit a lookup reads and a hit writes.
pub const WAYS: usize = 16;
pub(super) const FREE: u32 = 0;
pub(super) const WRITING: u32 = 1;
pub(super) const READY: u32 = 2;
pub(super) const SLOT_LEN: usize = 56;
pub(super) const BUCKET_HEADER: usize = 8;
pub(super) const CAS_RETRIES: u32 = 16;
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
