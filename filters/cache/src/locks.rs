//! Request coalescing locks: a bounded table in one shared-data key saying which primary keys
//! have a request in flight upstream. The first miss for a key becomes the leader; later misses
//! on any worker wait for its result. Locks expire, so a leader that vanished blocks nobody
//! for longer than the timeout.

use switchyard_core::shared::{
    cas_update, ensure_key, CasOutcome, SharedStore, StoreError, Update,
};

const RECORD: usize = 16;
const CAS_RETRIES: u32 = 16;

/// What a miss should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquire {
    /// Go upstream and release the lock when done.
    Leader,
    /// Another request is fetching this key: wait for it.
    Follower,
    /// The table is full or contended: go upstream without coalescing.
    Unavailable,
}

pub struct Locks<'a, S: SharedStore + ?Sized> {
    pub shared: &'a S,
    pub key: String,
    pub capacity: usize,
}

fn decode(b: Option<&[u8]>) -> Vec<(u64, u64)> {
    b.unwrap_or_default()
        .chunks_exact(RECORD)
        .filter_map(|c| {
            Some((
                u64::from_le_bytes(c.get(0..8)?.try_into().ok()?),
                u64::from_le_bytes(c.get(8..16)?.try_into().ok()?),
            ))
        })
        .collect()
}

fn encode(locks: &[(u64, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(locks.len() * RECORD);
    for (h, e) in locks {
        out.extend_from_slice(&h.to_le_bytes());
        out.extend_from_slice(&e.to_le_bytes());
    }
    out
}

impl<'a, S: SharedStore + ?Sized> Locks<'a, S> {
    pub fn init(&self) -> Result<(), StoreError> {
        ensure_key(self.shared, &self.key, &[]).map(|_| ())
    }

    /// Tries to become the leader for `hash` until `now_ms + ttl_ms`.
    pub fn acquire(&self, hash: u64, now_ms: u64, ttl_ms: u64) -> Acquire {
        let capacity = self.capacity;
        let outcome = cas_update(self.shared, &self.key, CAS_RETRIES, |cur| {
            let mut locks = decode(cur);
            let before = locks.len();
            locks.retain(|(_, expires)| *expires > now_ms);
            if locks.iter().any(|(h, _)| *h == hash) {
                return if locks.len() == before {
                    Update::Keep(Acquire::Follower)
                } else {
                    Update::Write(encode(&locks), Acquire::Follower)
                };
            }
            if locks.len() >= capacity {
                return Update::Keep(Acquire::Unavailable);
            }
            locks.push((hash, now_ms + ttl_ms));
            Update::Write(encode(&locks), Acquire::Leader)
        });
        match outcome {
            CasOutcome::Written { result, .. } | CasOutcome::Kept { result, .. } => result,
            _ => Acquire::Unavailable,
        }
    }

    /// Whether a live lock for `hash` exists.
    pub fn held(&self, hash: u64, now_ms: u64) -> bool {
        match self.shared.get(&self.key) {
            Ok((v, _)) => decode(v.as_deref())
                .iter()
                .any(|(h, e)| *h == hash && *e > now_ms),
            Err(_) => false,
        }
    }

    pub fn release(&self, hash: u64) {
        let _ = cas_update(self.shared, &self.key, CAS_RETRIES, |cur| {
            let mut locks = decode(cur);
            let before = locks.len();
            locks.retain(|(h, _)| *h != hash);
            if locks.len() == before {
                Update::Keep(())
            } else {
                Update::Write(encode(&locks), ())
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::shared::MemStore;

    #[test]
    fn one_leader_followers_wait_release_and_expiry() {
        let m = MemStore::new();
        let l = Locks {
            shared: &m,
            key: "locks".into(),
            capacity: 2,
        };
        l.init().unwrap();
        assert_eq!(l.acquire(1, 0, 100), Acquire::Leader);
        assert_eq!(l.acquire(1, 10, 100), Acquire::Follower);
        assert!(l.held(1, 50));
        assert_eq!(l.acquire(2, 10, 100), Acquire::Leader);
        assert_eq!(l.acquire(3, 10, 100), Acquire::Unavailable, "bounded");
        l.release(1);
        assert!(!l.held(1, 20));
        assert_eq!(l.acquire(3, 20, 100), Acquire::Leader);
        // Lock 2 expired at 110: a new request leads.
        assert!(!l.held(2, 111));
        assert_eq!(l.acquire(2, 111, 100), Acquire::Leader);
    }

    #[test]
    fn racing_workers_elect_one_leader() {
        let m = MemStore::new();
        let l = Locks {
            shared: &m,
            key: "locks".into(),
            capacity: 8,
        };
        l.init().unwrap();
        // Another worker takes the lock between our read and our write.
        let mut once = true;
        m.interfere(move |_| std::mem::take(&mut once));
        // Our first CAS fails; the retry sees the same (empty) table as written by "them"
        // (MemStore only bumps the token), so we lead; a later caller follows.
        assert_eq!(l.acquire(9, 0, 100), Acquire::Leader);
        assert_eq!(l.acquire(9, 1, 100), Acquire::Follower);
    }
}
