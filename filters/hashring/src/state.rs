//! Process-wide state in Envoy shared data: in-flight counts (bounded loads) and passive health.
//!
//! Each is one shared-data key holding a small text map keyed by host address, so a single CAS
//! decides atomically (the bound is exact across workers) and the map stays bounded: an entry
//! exists only while a host has requests in flight or a failure streak / ejection.
//! Format: a `v1` line, then one `address value...` line per entry.

use crate::config::Host;
use crate::select::{select, Loads, Selection};
use std::collections::BTreeMap;
use switchyard_core::shared::{cas_update, CasOutcome, SharedStore, StoreError, Update};

/// CAS attempts per update before giving up (and failing open).
pub const CAS_RETRIES: u32 = 16;
const HEADER: &str = "v1";

/// The initial value of both keys, written once at configure time.
pub const EMPTY: &[u8] = b"v1\n";

/// Shared-data key names of one filter configuration.
#[derive(Debug, Clone)]
pub struct Keys {
    pub loads: String,
    pub health: String,
}

impl Keys {
    /// `scope` separates plugin configurations (a hash of the configuration).
    pub fn new(scope: &str) -> Keys {
        Keys {
            loads: format!("switchyard.hashring.{scope}.loads"),
            health: format!("switchyard.hashring.{scope}.health"),
        }
    }
}

fn decode_map<V>(
    bytes: Option<&[u8]>,
    parse: impl Fn(&[&str]) -> Option<V>,
) -> BTreeMap<String, V> {
    let mut map = BTreeMap::new();
    let Some(text) = bytes.and_then(|b| std::str::from_utf8(b).ok()) else {
        return map;
    };
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return map;
    }
    for line in lines {
        let fields: Vec<&str> = line.split(' ').collect();
        if let (Some(addr), Some(v)) = (fields.first(), parse(&fields[1..])) {
            map.insert((*addr).to_string(), v);
        }
    }
    map
}

fn encode_map<V>(map: &BTreeMap<String, V>, fmt: impl Fn(&V) -> String) -> Vec<u8> {
    let mut out = String::from(HEADER);
    out.push('\n');
    for (k, v) in map {
        out.push_str(k);
        out.push(' ');
        out.push_str(&fmt(v));
        out.push('\n');
    }
    out.into_bytes()
}

pub fn decode_loads(bytes: Option<&[u8]>) -> BTreeMap<String, u64> {
    decode_map(bytes, |f| f.first()?.parse().ok())
}

pub fn encode_loads(map: &BTreeMap<String, u64>) -> Vec<u8> {
    encode_map(map, |v| v.to_string())
}

/// One host's passive-health record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthRecord {
    /// Consecutive failures since the last success (or ejection).
    pub failures: u32,
    /// Skipped until this time (ns since the epoch); 0 = not ejected.
    pub ejected_until: u64,
}

pub fn decode_health(bytes: Option<&[u8]>) -> BTreeMap<String, HealthRecord> {
    decode_map(bytes, |f| {
        Some(HealthRecord {
            failures: f.first()?.parse().ok()?,
            ejected_until: f.get(1)?.parse().ok()?,
        })
    })
}

pub fn encode_health(map: &BTreeMap<String, HealthRecord>) -> Vec<u8> {
    encode_map(map, |r| format!("{} {}", r.failures, r.ejected_until))
}

/// Which hosts may be picked at `now`.
pub fn healthy_mask(
    hosts: &[Host],
    health: &BTreeMap<String, HealthRecord>,
    now: u64,
) -> Vec<bool> {
    hosts
        .iter()
        .map(|h| {
            health
                .get(&h.address)
                .is_none_or(|r| now >= r.ejected_until)
        })
        .collect()
}

/// What one observed outcome did to a host's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthChange {
    None,
    /// The failure streak reached the threshold: skipped until `now + cooldown`.
    Ejected,
}

/// Applies one outcome to the map. A success clears the streak; a failure extends it and ejects
/// the host at `threshold` consecutive failures (the streak restarts after the ejection, so a
/// host that comes back needs `threshold` new failures to be ejected again).
/// Returns `None` when nothing changes (no write needed).
pub fn apply_outcome(
    map: &BTreeMap<String, HealthRecord>,
    address: &str,
    failed: bool,
    now: u64,
    threshold: u32,
    cooldown_nanos: u64,
) -> Option<(BTreeMap<String, HealthRecord>, HealthChange)> {
    let current = map.get(address).copied().unwrap_or_default();
    let ejected = now < current.ejected_until;
    let mut next = current;
    let mut change = HealthChange::None;
    if failed {
        if ejected {
            // Requests already on their way when it was ejected: no new information.
            return None;
        }
        next.failures = current.failures.saturating_add(1);
        if next.failures >= threshold {
            next.failures = 0;
            next.ejected_until = now.saturating_add(cooldown_nanos);
            change = HealthChange::Ejected;
        }
    } else {
        next.failures = 0;
        if !ejected {
            next.ejected_until = 0;
        }
    }
    if next == current {
        return None;
    }
    let mut out = map.clone();
    if next == HealthRecord::default() {
        out.remove(address);
    } else {
        out.insert(address.to_string(), next);
    }
    Some((out, change))
}

/// Records an outcome with CAS. `Ok(change)`; errors mean the outcome was dropped.
pub fn record_outcome<S: SharedStore + ?Sized>(
    store: &S,
    key: &str,
    address: &str,
    failed: bool,
    now: u64,
    threshold: u32,
    cooldown_nanos: u64,
) -> Result<HealthChange, StoreError> {
    let out = cas_update(store, key, CAS_RETRIES, |cur| {
        let map = decode_health(cur);
        match apply_outcome(&map, address, failed, now, threshold, cooldown_nanos) {
            Some((next, change)) => Update::Write(encode_health(&next), change),
            None => Update::Keep(HealthChange::None),
        }
    });
    outcome(out)
}

/// Reads the health map (empty on error: fail open, the caller counts the error).
pub fn read_health<S: SharedStore + ?Sized>(
    store: &S,
    key: &str,
) -> Result<BTreeMap<String, HealthRecord>, StoreError> {
    store.get(key).map(|(v, _)| decode_health(v.as_deref()))
}

/// Selects a host under the load bound and counts the request against it, atomically across
/// workers. The selection runs inside the CAS loop, so a lost race re-selects on fresh counts.
pub fn admit<S, I, O>(
    store: &S,
    key: &str,
    hosts: &[Host],
    order: O,
    healthy: &[bool],
    factor: f64,
    fallbacks: usize,
) -> Result<Selection, StoreError>
where
    S: SharedStore + ?Sized,
    I: Iterator<Item = usize>,
    O: Fn() -> I,
{
    let out = cas_update(store, key, CAS_RETRIES, |cur| {
        let mut map = decode_loads(cur);
        let per_host: Vec<u64> = hosts
            .iter()
            .map(|h| map.get(&h.address).copied().unwrap_or(0))
            .collect();
        // Counts of hosts no longer in the set still occupy the proxy, but not this set's
        // capacity: only the current hosts' total feeds the bound.
        let total = per_host.iter().sum();
        let loads = Loads {
            per_host: &per_host,
            total,
            factor,
        };
        let sel = select(order(), healthy, Some(loads), fallbacks);
        match sel.chosen().and_then(|c| hosts.get(c)) {
            Some(host) => {
                *map.entry(host.address.clone()).or_insert(0) += 1;
                Update::Write(encode_loads(&map), sel)
            }
            None => Update::Keep(sel),
        }
    });
    outcome(out)
}

/// Releases one in-flight request of `address` (entries at zero are dropped).
pub fn release<S: SharedStore + ?Sized>(
    store: &S,
    key: &str,
    address: &str,
) -> Result<(), StoreError> {
    let out = cas_update(store, key, CAS_RETRIES, |cur| {
        let mut map = decode_loads(cur);
        match map.get(address).copied() {
            None | Some(0) => Update::Keep(()),
            Some(1) => {
                map.remove(address);
                Update::Write(encode_loads(&map), ())
            }
            Some(n) => {
                map.insert(address.to_string(), n - 1);
                Update::Write(encode_loads(&map), ())
            }
        }
    });
    outcome(out)
}

fn outcome<R>(out: CasOutcome<R>) -> Result<R, StoreError> {
    match out {
        CasOutcome::Written { result, .. } | CasOutcome::Kept { result, .. } => Ok(result),
        CasOutcome::Exhausted { retries } => Err(StoreError::Other(format!(
            "CAS lost {retries} times in a row"
        ))),
        CasOutcome::Failed(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::shared::{ensure_key, MemStore};

    fn hosts(n: usize) -> Vec<Host> {
        (0..n)
            .map(|i| Host {
                address: format!("127.0.0.1:{}", 8081 + i),
                weight: 1,
            })
            .collect()
    }

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn codecs_round_trip_and_tolerate_garbage() {
        let mut loads = BTreeMap::new();
        loads.insert("[::1]:80".to_string(), 3u64);
        loads.insert("10.0.0.1:80".to_string(), 1u64);
        assert_eq!(decode_loads(Some(&encode_loads(&loads))), loads);
        let mut health = BTreeMap::new();
        health.insert(
            "10.0.0.1:80".to_string(),
            HealthRecord {
                failures: 2,
                ejected_until: 99,
            },
        );
        assert_eq!(decode_health(Some(&encode_health(&health))), health);
        assert!(decode_loads(Some(b"garbage")).is_empty());
        assert!(decode_loads(None).is_empty());
        assert_eq!(decode_loads(Some(b"v1\na b\nx 2\n")).len(), 1);
    }

    #[test]
    fn admit_and_release_keep_exact_counts_across_workers() {
        let s = MemStore::new();
        let keys = Keys::new("t");
        ensure_key(&s, &keys.loads, EMPTY).unwrap();
        let h = hosts(3);
        // Another worker writes between our read and write every other time: CAS retries.
        let mut flip = false;
        s.interfere(move |_| {
            flip = !flip;
            flip
        });
        let mut chosen = Vec::new();
        for _ in 0..30 {
            let sel = admit(
                &s,
                &keys.loads,
                &h,
                || [0, 1, 2].into_iter(),
                &[true; 3],
                1.25,
                1,
            )
            .unwrap();
            chosen.push(sel.chosen().unwrap());
        }
        let loads = decode_loads(s.get(&keys.loads).unwrap().0.as_deref());
        assert_eq!(loads.values().sum::<u64>(), 30);
        // Every key prefers host 0, but the bound ⌈1.25 × 30 / 3⌉ = 13 caps it.
        assert_eq!(loads["127.0.0.1:8081"], 13);
        for c in chosen {
            release(&s, &keys.loads, &h[c].address).unwrap();
        }
        assert!(decode_loads(s.get(&keys.loads).unwrap().0.as_deref()).is_empty());
        // A release without a matching admit never goes negative.
        release(&s, &keys.loads, &h[0].address).unwrap();
        assert!(decode_loads(s.get(&keys.loads).unwrap().0.as_deref()).is_empty());
    }

    #[test]
    fn store_failure_surfaces_so_the_filter_can_fail_open() {
        let s = MemStore::new();
        s.fail_with(Some(StoreError::Other("down".into())));
        let h = hosts(2);
        assert!(admit(&s, "k", &h, || [0, 1].into_iter(), &[true; 2], 1.25, 1).is_err());
        assert!(read_health(&s, "k").is_err());
    }

    #[test]
    fn ejected_after_consecutive_failures_and_back_after_cooldown() {
        let s = MemStore::new();
        let keys = Keys::new("t");
        ensure_key(&s, &keys.health, EMPTY).unwrap();
        let h = hosts(3);
        let a = &h[1].address;
        let t0 = 100 * SEC;
        let rec = |failed, now| record_outcome(&s, &keys.health, a, failed, now, 3, 10 * SEC);
        assert_eq!(rec(true, t0).unwrap(), HealthChange::None);
        assert_eq!(rec(true, t0).unwrap(), HealthChange::None);
        // A success breaks the streak.
        assert_eq!(rec(false, t0).unwrap(), HealthChange::None);
        assert_eq!(rec(true, t0).unwrap(), HealthChange::None);
        assert_eq!(rec(true, t0).unwrap(), HealthChange::None);
        let mask = healthy_mask(&h, &read_health(&s, &keys.health).unwrap(), t0);
        assert_eq!(mask, vec![true, true, true]);
        assert_eq!(rec(true, t0 + SEC).unwrap(), HealthChange::Ejected);
        let health = read_health(&s, &keys.health).unwrap();
        assert_eq!(healthy_mask(&h, &health, t0 + SEC), vec![true, false, true]);
        assert_eq!(
            healthy_mask(&h, &health, t0 + 11 * SEC - 1),
            vec![true, false, true]
        );
        // Failures of requests still in flight during the ejection do not extend it.
        assert_eq!(rec(true, t0 + 5 * SEC).unwrap(), HealthChange::None);
        assert_eq!(healthy_mask(&h, &health, t0 + 11 * SEC), vec![true; 3]);
        // Back after the cooldown; a success clears the record entirely (bounded map).
        rec(false, t0 + 12 * SEC).unwrap();
        assert!(read_health(&s, &keys.health).unwrap().is_empty());
    }
}
