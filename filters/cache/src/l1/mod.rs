//! A per-worker (per-VM) L1 of hot entries: decoded entries of the shared store, so a hit on a
//! hot entry reads only its bucket record (≤ 904 bytes) from shared data, not the entry.
//!
//! Keyed by slot; each copy keeps the slot record it was read under. A copy is used only when
//! the record read *now* from the bucket says the slot is ready and holds that same entry
//! ([`Slot::same_entry`]: same generation, key hashes, size and insert time). The store never
//! changes an entry in place: replacing, freshening (`304`, HEAD), purging, invalidating and
//! evicting all free the slot, and a slot is only rewritten under a new generation (see
//! [`crate::store`]). Whichever worker made the change, the next lookup on this worker reads
//! the changed record and drops its copy, so the L1 is exact across workers: it never serves
//! an entry that the shared store no longer holds.
//!
//! Bounded by entries and by [`Entry::held_bytes`] (least recently used copies go first), and
//! by the store: at most one copy per slot. Pure: no host calls.

use crate::entry::Entry;
use crate::key::CacheKey;
use crate::plan::entry_matches;
use crate::store::{Hit, SeenBucket, Slot, Store};
use lru::LruCache;
use std::rc::Rc;
use switchyard_core::shared::SharedStore;
use switchyard_core::RequestView;

/// One worker's L1 bounds; either at 0 turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L1Config {
    pub max_bytes: u64,
    pub max_entries: usize,
}

impl L1Config {
    /// 1 MiB and 256 entries per worker.
    pub const DEFAULT: L1Config = L1Config {
        max_bytes: 1 << 20,
        max_entries: 256,
    };
    pub const OFF: L1Config = L1Config {
        max_bytes: 0,
        max_entries: 0,
    };

    pub fn enabled(&self) -> bool {
        self.max_bytes > 0 && self.max_entries > 0
    }
}

/// A copy of a slot's entry and the record it was read under.
struct Held {
    seen: Slot,
    entry: Rc<Entry>,
    bytes: u64,
}

/// The L1 of one worker.
pub struct L1 {
    cfg: L1Config,
    copies: LruCache<usize, Held>,
    bytes: u64,
}

impl L1 {
    pub fn new(cfg: L1Config) -> Self {
        L1 {
            cfg,
            copies: LruCache::unbounded(),
            bytes: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.cfg.enabled()
    }

    /// Copies held.
    pub fn len(&self) -> usize {
        self.copies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.copies.is_empty()
    }

    /// Bytes held ([`Entry::held_bytes`] of every copy).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The copy of `slot`'s entry if `now`, the slot's record as just read from its bucket,
    /// still holds the entry it was read from; an outdated copy is dropped.
    pub fn get(&mut self, slot: usize, now: &Slot) -> Option<Rc<Entry>> {
        match self.copies.get(&slot) {
            None => return None,
            Some(held) if held.seen.same_entry(now) => return Some(Rc::clone(&held.entry)),
            Some(_) => {}
        }
        self.forget(slot);
        None
    }

    /// Keeps `entry`, just read from `slot` under the record `seen`, in place of any older copy
    /// of the slot, dropping the least recently used copies until both bounds hold. An entry
    /// bigger than `max_bytes` is not kept.
    pub fn admit(&mut self, slot: usize, seen: &Slot, entry: &Rc<Entry>) {
        self.forget(slot);
        let bytes = entry.held_bytes();
        if !self.enabled() || bytes > self.cfg.max_bytes {
            return;
        }
        while self.copies.len() >= self.cfg.max_entries
            || self.bytes.saturating_add(bytes) > self.cfg.max_bytes
        {
            let Some((_, old)) = self.copies.pop_lru() else {
                break;
            };
            self.bytes = self.bytes.saturating_sub(old.bytes);
        }
        self.bytes = self.bytes.saturating_add(bytes);
        let held = Held {
            seen: *seen,
            entry: Rc::clone(entry),
            bytes,
        };
        self.copies.push(slot, held);
    }

    /// Drops the copy of `slot`, if any.
    pub fn forget(&mut self, slot: usize) {
        if let Some(old) = self.copies.pop(&slot) {
            self.bytes = self.bytes.saturating_sub(old.bytes);
        }
    }
}

/// The stored entry for a request: same full key and matching `Vary` values, through the
/// worker's L1 when it has one (`None` or off: straight from shared data); with the bucket
/// record read for it (a miss takes its coalescing lock with it: [`Store::acquire`]).
pub fn find<S: SharedStore + ?Sized>(
    store: &Store<'_, S>,
    l1: Option<&mut L1>,
    key: &CacheKey,
    view: &RequestView,
) -> (Option<Hit>, Option<SeenBucket>) {
    let (hits, seen) = store.find_with(key.hash, l1.filter(|l1| l1.enabled()));
    let hit = hits
        .into_iter()
        .find(|h| entry_matches(&h.entry, key, view));
    (hit, seen)
}

#[cfg(test)]
mod tests;
