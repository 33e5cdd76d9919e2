//! Choosing a slot for a new entry inside one bucket (pure; runs inside a CAS update).

use super::layout::*;
use super::{Eviction, InsertError, StoreConfig};

pub(super) fn evictable(s: &Slot, now_ms: u64, writing_timeout_ms: u64) -> bool {
    s.state == READY
        || (s.state == WRITING && now_ms.saturating_sub(s.inserted_ms) > writing_timeout_ms)
}

/// Orders victims: the smallest value is evicted first. Generation breaks ties (insert order
/// within a slot), then the slot number.
pub(super) fn victim_rank(s: &Slot, policy: Eviction) -> (u64, u64, u32) {
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

pub(super) fn decode_used(b: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(0..8)?.try_into().ok()?))
}

/// The outcome of one attempt to reserve bytes in `used`.
pub(super) enum Reserve {
    Reserved(u64),
    /// `used` after the release, and how many more bytes must be freed.
    Short(u64),
    Missing,
}
