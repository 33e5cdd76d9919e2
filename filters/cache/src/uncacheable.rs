//! Each worker's memory of keys whose last upstream answer could not be stored (`no-store`,
//! `private`, no freshness, a non-cacheable status): for `uncacheable_ttl` their misses go
//! upstream at once instead of queueing behind another request's fetch, whose answer could not
//! serve them anyway (Varnish calls this "hit-for-pass"). Without it every request for a hot
//! uncacheable URL waits for the one before it, and pays the coalescing lock's two shared-data
//! round trips. Pure: no host calls.

use lru::LruCache;

/// Keys one worker remembers; the least recently marked go first.
pub const MAX_KEYS: usize = 4096;

/// Whether an answer marks its key as uncacheable: an upstream's answer (never a local reply)
/// that was not stored, except a server error (`5xx`), where coalescing keeps protecting a
/// failing upstream from the herd.
pub fn marks(from_upstream: bool, status: u16, stored: bool) -> bool {
    from_upstream && !stored && status < 500
}

/// Keys (primary hashes) marked uncacheable, until when (ms).
pub struct Uncacheable {
    ttl_ms: u64,
    until: LruCache<u64, u64>,
}

impl Uncacheable {
    /// `ttl_ms` 0 turns it off.
    pub fn new(ttl_ms: u64) -> Self {
        Uncacheable {
            ttl_ms,
            until: LruCache::unbounded(),
        }
    }

    /// Whether a miss for `key` at `now_ms` goes upstream without coalescing.
    pub fn skips_coalescing(&mut self, key: u64, now_ms: u64) -> bool {
        match self.until.peek(&key) {
            Some(&until) if now_ms < until => true,
            Some(_) => {
                self.until.pop(&key);
                false
            }
            None => false,
        }
    }

    /// Records what `key`'s answer at `now_ms` showed: uncacheable (see [`marks`]) or stored.
    pub fn record(&mut self, key: u64, uncacheable: bool, stored: bool, now_ms: u64) {
        if stored {
            self.until.pop(&key);
        } else if uncacheable && self.ttl_ms > 0 {
            self.until.put(key, now_ms.saturating_add(self.ttl_ms));
            while self.until.len() > MAX_KEYS {
                self.until.pop_lru();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.until.len()
    }

    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_passed_for_the_ttl_then_coalesced_again() {
        let mut u = Uncacheable::new(10_000);
        assert!(!u.skips_coalescing(7, 0));
        u.record(7, true, false, 1_000);
        assert!(u.skips_coalescing(7, 1_000));
        assert!(u.skips_coalescing(7, 10_999));
        assert!(!u.skips_coalescing(7, 11_000));
        assert!(u.is_empty(), "an expired mark is dropped");
        assert!(!u.skips_coalescing(8, 1_000), "other keys are unaffected");
    }

    #[test]
    fn a_stored_answer_clears_the_mark_and_zero_ttl_never_marks() {
        let mut u = Uncacheable::new(10_000);
        u.record(7, true, false, 0);
        u.record(7, false, true, 5);
        assert!(!u.skips_coalescing(7, 6));
        let mut off = Uncacheable::new(0);
        off.record(7, true, false, 0);
        assert!(!off.skips_coalescing(7, 1));
    }

    #[test]
    fn the_memory_is_bounded_least_recent_first() {
        let mut u = Uncacheable::new(60_000);
        for k in 0..(MAX_KEYS as u64 + 10) {
            u.record(k, true, false, 0);
        }
        assert_eq!(u.len(), MAX_KEYS);
        assert!(!u.skips_coalescing(0, 1), "the oldest marks went first");
        assert!(u.skips_coalescing(MAX_KEYS as u64 + 9, 1));
    }

    #[test]
    fn only_upstream_answers_below_500_that_were_not_stored_mark() {
        assert!(marks(true, 200, false));
        assert!(marks(true, 404, false));
        assert!(!marks(true, 200, true), "stored");
        assert!(
            !marks(true, 503, false),
            "a failing upstream keeps its herd protection"
        );
        assert!(
            !marks(false, 200, false),
            "a local reply says nothing of the upstream"
        );
    }
}
