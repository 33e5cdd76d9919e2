//! The shared-data layout: a fixed set of bucket keys, each a compact binary array of entries.
//!
//! ```text
//! bucket := version:u8 count:u16 entry*
//! entry  := rule_tag:u32 key_len:u8 key_id[key_len] last_seen_ms:u64 idle_at_ms:u64
//!           drain_at_ms:u64 state_len:u32 state[state_len]
//! ```
//! All of a rule's tiers for one key live in one entry, so admitting a request for one rule is
//! one compare-and-swap of one bucket.

use switchyard_core::hash::stable_hash64_seeded;

const VERSION: u8 = 1;
/// Bytes of an entry besides its key id and state.
pub const ENTRY_OVERHEAD: usize = 4 + 1 + 8 + 8 + 8 + 4;
/// Longest key id stored; longer keys are stored as a 128-bit digest.
pub const MAX_KEY_ID: usize = 32;
/// Marks a digest key id; never the first byte of a UTF-8 key.
const DIGEST_MARK: u8 = 0xFF;
/// Slots per bucket: a key can be displaced only by keys that hash to the same bucket.
pub const SLOTS_PER_BUCKET: u64 = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub tag: u32,
    pub key_id: Vec<u8>,
    pub last_seen_ms: u64,
    /// From this time on the state equals a fresh one; evicting it loses nothing.
    pub idle_at_ms: u64,
    /// Eviction priority: the active entry with the earliest drain time goes first.
    pub drain_at_ms: u64,
    pub state: Vec<u8>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bucket {
    pub entries: Vec<Entry>,
}

/// How an insertion made room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// A free slot was used.
    NewSlot,
    /// An idle entry (fully refilled state) was replaced: nothing lost.
    ReplacedIdle,
    /// An active entry was replaced: that key's limits restart from full.
    ReplacedActive,
}

/// The stored identity of a key: the key itself when short, else a 128-bit digest.
pub fn key_id(key: &str) -> Vec<u8> {
    let b = key.as_bytes();
    if b.len() <= MAX_KEY_ID {
        return b.to_vec();
    }
    let mut id = Vec::with_capacity(17);
    id.push(DIGEST_MARK);
    id.extend_from_slice(&stable_hash64_seeded(b, 0x5157_4954).to_le_bytes());
    id.extend_from_slice(&stable_hash64_seeded(b, 0x4348_5944).to_le_bytes());
    id
}

/// Which bucket a rule's key lives in.
pub fn bucket_index(tag: u32, key_id: &[u8], buckets: usize) -> usize {
    (stable_hash64_seeded(key_id, tag as u64) % buckets.max(1) as u64) as usize
}

/// Splits `max_keys` slots over `ceil(max_keys / 16)` buckets; capacities differ by at most
/// one and sum to exactly `max_keys`.
pub fn capacities(max_keys: u64) -> Vec<u16> {
    let n = max_keys.div_ceil(SLOTS_PER_BUCKET).max(1);
    let base = max_keys / n;
    let extra = max_keys % n;
    (0..n)
        .map(|i| (base + u64::from(i < extra)) as u16)
        .collect()
}

impl Bucket {
    /// Parses a stored bucket; anything unreadable (missing key, older layout) is empty.
    pub fn decode(bytes: Option<&[u8]>) -> Bucket {
        bytes.and_then(parse).unwrap_or_default()
    }

    pub fn encode(&self) -> Vec<u8> {
        let size: usize = 3 + self
            .entries
            .iter()
            .map(|e| ENTRY_OVERHEAD + e.key_id.len() + e.state.len())
            .sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.push(VERSION);
        out.extend_from_slice(&(self.entries.len() as u16).to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.tag.to_le_bytes());
            out.push(e.key_id.len() as u8);
            out.extend_from_slice(&e.key_id);
            out.extend_from_slice(&e.last_seen_ms.to_le_bytes());
            out.extend_from_slice(&e.idle_at_ms.to_le_bytes());
            out.extend_from_slice(&e.drain_at_ms.to_le_bytes());
            out.extend_from_slice(&(e.state.len() as u32).to_le_bytes());
            out.extend_from_slice(&e.state);
        }
        out
    }

    pub fn find(&self, tag: u32, key_id: &[u8]) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.tag == tag && e.key_id == key_id)
    }

    /// Adds `entry`, replacing another when the bucket already holds `capacity` entries.
    /// Returns the new entry's index and how room was made. Eviction rule: an idle entry
    /// first (the least recently seen of them); otherwise the active entry with the earliest
    /// drain time, i.e. the key that consumed the least of its limits; ties go to the least
    /// recently seen.
    pub fn insert(&mut self, entry: Entry, capacity: usize, now_ms: u64) -> (usize, Insert) {
        let capacity = capacity.max(1);
        // A smaller capacity after a reconfiguration: shed the cheapest entries first.
        while self.entries.len() > capacity {
            let v = self.victim(now_ms);
            self.entries.swap_remove(v);
        }
        if self.entries.len() < capacity {
            self.entries.push(entry);
            return (self.entries.len() - 1, Insert::NewSlot);
        }
        let v = self.victim(now_ms);
        let how = if self.entries[v].idle_at_ms <= now_ms {
            Insert::ReplacedIdle
        } else {
            Insert::ReplacedActive
        };
        self.entries[v] = entry;
        (v, how)
    }

    fn victim(&self, now_ms: u64) -> usize {
        let mut best = 0;
        for (i, e) in self.entries.iter().enumerate() {
            if rank(e, now_ms) < rank(&self.entries[best], now_ms) {
                best = i;
            }
        }
        best
    }
}

/// Lower ranks are evicted first.
fn rank(e: &Entry, now_ms: u64) -> (bool, u64, u64) {
    let active = e.idle_at_ms > now_ms;
    (
        active,
        if active { e.drain_at_ms } else { 0 },
        e.last_seen_ms,
    )
}

/// One entry of a stored bucket, found without decoding the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located<'a> {
    /// Where the entry's `last_seen_ms` starts in the stored bytes.
    times_at: usize,
    pub last_seen_ms: u64,
    pub state: &'a [u8],
}

/// Finds an entry in a stored bucket by scanning it in place (no allocation). `None` when the
/// key is absent or the bucket is unreadable (which [`Bucket::decode`] reads as empty).
pub fn locate<'a>(b: &'a [u8], tag: u32, key_id: &[u8]) -> Option<Located<'a>> {
    let (&version, rest) = b.split_first()?;
    if version != VERSION {
        return None;
    }
    let (count, mut rest) = rest.split_first_chunk::<2>()?;
    let mut found = None;
    for _ in 0..u16::from_le_bytes(*count) {
        let (t, r) = rest.split_first_chunk::<4>()?;
        let (&klen, r) = r.split_first()?;
        let key = r.get(..klen as usize)?;
        let r = &r[klen as usize..];
        let times_at = b.len() - r.len();
        let (last_seen, r) = r.split_first_chunk::<8>()?;
        let (_times, r) = r.split_first_chunk::<16>()?;
        let (slen, r) = r.split_first_chunk::<4>()?;
        let state = r.get(..u32::from_le_bytes(*slen) as usize)?;
        rest = &r[state.len()..];
        if found.is_none() && u32::from_le_bytes(*t) == tag && key == key_id {
            found = Some(Located {
                times_at,
                last_seen_ms: u64::from_le_bytes(*last_seen),
                state,
            });
        }
    }
    if rest.is_empty() {
        found
    } else {
        None
    }
}

/// The stored bucket with one entry's times and state overwritten in place: one copy of the
/// bytes and no decoding. `None` when the new state's length differs (the caller re-encodes).
pub fn patched(b: &[u8], at: &Located, times: [u64; 3], state: &[u8]) -> Option<Vec<u8>> {
    if state.len() != at.state.len() {
        return None;
    }
    let mut out = b.to_vec();
    let mut i = at.times_at;
    for t in times {
        out.get_mut(i..i + 8)?.copy_from_slice(&t.to_le_bytes());
        i += 8;
    }
    i += 4;
    out.get_mut(i..i + state.len())?.copy_from_slice(state);
    Some(out)
}

fn parse(b: &[u8]) -> Option<Bucket> {
    let (&version, rest) = b.split_first()?;
    if version != VERSION {
        return None;
    }
    let (count, mut rest) = rest.split_first_chunk::<2>()?;
    let count = u16::from_le_bytes(*count) as usize;
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let (tag, r) = rest.split_first_chunk::<4>()?;
        let (&klen, r) = r.split_first()?;
        let key_id = r.get(..klen as usize)?.to_vec();
        let r = &r[klen as usize..];
        let (last_seen, r) = r.split_first_chunk::<8>()?;
        let (idle_at, r) = r.split_first_chunk::<8>()?;
        let (drain_at, r) = r.split_first_chunk::<8>()?;
        let (slen, r) = r.split_first_chunk::<4>()?;
        let slen = u32::from_le_bytes(*slen) as usize;
        let state = r.get(..slen)?.to_vec();
        rest = &r[slen..];
        entries.push(Entry {
            tag: u32::from_le_bytes(*tag),
            key_id,
            last_seen_ms: u64::from_le_bytes(*last_seen),
            idle_at_ms: u64::from_le_bytes(*idle_at),
            drain_at_ms: u64::from_le_bytes(*drain_at),
            state,
        });
    }
    rest.is_empty().then_some(Bucket { entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patching_in_place_equals_decoding_editing_and_encoding() {
        let mut b = Bucket::default();
        for (i, k) in ["a", "bb", "a-much-longer-key-than-thirty-two-bytes!"]
            .iter()
            .enumerate()
        {
            let mut e = entry(k, 10 + i as u64, 20, 30);
            e.state = vec![i as u8; 3 + i];
            b.insert(e, 16, 0);
        }
        let stored = b.encode();
        let id = key_id("bb");
        let at = locate(&stored, 7, &id).unwrap();
        assert_eq!((at.last_seen_ms, at.state), (11, [1u8; 4].as_slice()));
        let patched = patched(&stored, &at, [50, 60, 70], &[9; 4]).unwrap();
        let i = b.find(7, &id).unwrap();
        b.entries[i].last_seen_ms = 50;
        b.entries[i].idle_at_ms = 60;
        b.entries[i].drain_at_ms = 70;
        b.entries[i].state = vec![9; 4];
        assert_eq!(patched, b.encode());
        // A state of another length, a missing key, a corrupt bucket: no patch.
        assert_eq!(super::patched(&stored, &at, [0; 3], &[1; 5]), None);
        assert_eq!(locate(&stored, 8, &id), None);
        assert_eq!(locate(&stored[..stored.len() - 1], 7, &id), None);
        assert_eq!(locate(&[], 7, &id), None);
    }

    fn entry(key: &str, last_seen: u64, idle_at: u64, drain_at: u64) -> Entry {
        Entry {
            tag: 7,
            key_id: key_id(key),
            last_seen_ms: last_seen,
            idle_at_ms: idle_at,
            drain_at_ms: drain_at,
            state: vec![1, 2, 3],
        }
    }

    #[test]
    fn round_trip_and_garbage() {
        let b = Bucket {
            entries: vec![entry("a", 1, 2, 3), entry(&"k".repeat(100), 4, 5, 6)],
        };
        assert_eq!(Bucket::decode(Some(&b.encode())), b);
        assert_eq!(b.entries[1].key_id.len(), 17);
        assert_eq!(Bucket::decode(None), Bucket::default());
        let mut truncated = b.encode();
        truncated.pop();
        assert_eq!(Bucket::decode(Some(&truncated)), Bucket::default());
        assert_eq!(Bucket::decode(Some(&[9, 0, 0])), Bucket::default());
    }

    #[test]
    fn long_keys_get_distinct_digests() {
        let a = key_id(&format!("{}a", "x".repeat(40)));
        let b = key_id(&format!("{}b", "x".repeat(40)));
        assert_ne!(a, b);
        assert_eq!(key_id("short"), b"short");
    }

    #[test]
    fn capacities_sum_to_max_keys() {
        for max in [1, 15, 16, 17, 1000, 100_000, 99_999] {
            let c = capacities(max);
            assert_eq!(c.iter().map(|c| *c as u64).sum::<u64>(), max, "{max}");
            assert!(c.iter().all(|c| (1..=16).contains(c)), "{max}");
        }
        assert_eq!(capacities(1000).len(), 63);
    }

    #[test]
    fn eviction_prefers_idle_then_least_consumed() {
        let now = 1000;
        let mut b = Bucket::default();
        assert_eq!(
            b.insert(entry("busy", 990, 5000, 5000), 3, now).1,
            Insert::NewSlot
        );
        assert_eq!(
            b.insert(entry("idle", 10, 500, 500), 3, now).1,
            Insert::NewSlot
        );
        assert_eq!(
            b.insert(entry("light", 999, 1100, 1100), 3, now).1,
            Insert::NewSlot
        );
        // Full: the idle entry goes first, even when seen more recently than the busy one.
        b.entries[1].last_seen_ms = 998;
        let (i, how) = b.insert(entry("new1", now, 2000, 2000), 3, now);
        assert_eq!((i, how), (1, Insert::ReplacedIdle));
        // No idle entry left: the one that consumed least ("light") goes, not the busy one
        // even though "busy" was seen longer ago.
        let (i, how) = b.insert(entry("new2", now, 3000, 3000), 3, now);
        assert_eq!((i, how), (2, Insert::ReplacedActive));
        assert!(b.find(7, b"busy").is_some());
        assert!(b.find(7, b"light").is_none());
    }

    #[test]
    fn a_flood_of_light_keys_never_displaces_a_heavier_key() {
        let mut b = Bucket::default();
        b.insert(entry("victim", 0, 60_000, 60_000), 4, 0);
        for i in 0..10_000u64 {
            // Each flood key made one request: its debt is one interval (6s here), lower than
            // the victim's until the victim's own debt has nearly drained.
            let now = i;
            b.insert(entry(&format!("f{i}"), now, now + 6000, now + 6000), 4, now);
            assert!(b.find(7, b"victim").is_some(), "evicted at {i}");
            assert!(b.entries.len() <= 4);
        }
    }

    #[test]
    fn shrinking_capacity_sheds_entries() {
        let mut b = Bucket::default();
        for i in 0..5 {
            b.insert(entry(&format!("k{i}"), i, 10 + i, 10 + i), 5, 0);
        }
        b.insert(entry("n", 9, 99, 99), 2, 0);
        assert_eq!(b.entries.len(), 2);
        assert!(b.find(7, b"n").is_some());
    }
}
