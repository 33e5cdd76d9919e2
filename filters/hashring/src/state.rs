//! Process-wide state in Envoy shared data: in-flight counts (bounded loads) and passive health.
//!
//! Each is one shared-data key holding a small text map keyed by host address, so a single CAS
//! decides atomically (the bound is exact across workers) and the map stays bounded: an entry
//! exists only while a host has requests in flight or a failure streak / ejection.
//! Format: a version line, then one `address value...` line per entry.
//!
//! In-flight counts (`v2`) are kept per worker VM: `address worker count stamp_ms`. Each VM
//! claims a unique worker number at configure time, refreshes the stamps of its own entries on
//! every write it makes, and entries not refreshed for [`LOAD_LEASE_MS`] are dropped: the counts
//! of a VM that died (or was reloaded) expire instead of holding capacity forever. A release
//! that cannot be written is kept by the VM and applied with its next write.

use crate::config::Host;
use crate::select::{select, Loads, Selection};
use std::collections::BTreeMap;
use switchyard_core::shared::{cas_update, CasOutcome, SharedStore, StoreError, Update};

/// CAS attempts per update before giving up (and failing open).
pub const CAS_RETRIES: u32 = 16;
const HEADER: &str = "v1";

/// The initial value of the health key, written once at configure time.
pub const EMPTY: &[u8] = b"v1\n";

const LOADS_HEADER: &str = "v2";
/// The initial value of the in-flight key.
pub const LOADS_EMPTY: &[u8] = b"v2\n";

/// In-flight entries of a worker that has written nothing for this long are dropped (its VM
/// is gone, or it has been idle that long while requests stayed in flight: then the bound
/// loosens, never tightens).
pub const LOAD_LEASE_MS: u64 = 300_000;

/// Shared-data key names of one filter configuration.
#[derive(Debug, Clone)]
pub struct Keys {
    pub loads: String,
    pub health: String,
    /// Counter from which each worker VM claims its number.
    pub workers: String,
    /// `p2c_ewma`: the shared latency estimates.
    pub ewma: String,
}

impl Keys {
    /// `scope` separates plugin configurations (a hash of the configuration).
    pub fn new(scope: &str) -> Keys {
        Keys {
            loads: format!("switchyard.hashring.{scope}.loads2"),
            health: format!("switchyard.hashring.{scope}.health"),
            workers: format!("switchyard.hashring.{scope}.workers"),
            ewma: format!("switchyard.hashring.{scope}.ewma"),
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

/// One worker's in-flight requests to one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadEntry {
    pub count: u64,
    pub stamp_ms: u64,
}

/// In-flight counts by (host address, worker number).
pub type LoadMap = BTreeMap<(String, u64), LoadEntry>;

pub fn decode_loads(bytes: Option<&[u8]>) -> LoadMap {
    let mut map = LoadMap::new();
    let Some(text) = bytes.and_then(|b| std::str::from_utf8(b).ok()) else {
        return map;
    };
    let mut lines = text.lines();
    if lines.next() != Some(LOADS_HEADER) {
        return map;
    }
    for line in lines {
        let f: Vec<&str> = line.split(' ').collect();
        if let [addr, worker, count, stamp] = f[..] {
            if let (Ok(w), Ok(count), Ok(stamp_ms)) = (worker.parse(), count.parse(), stamp.parse())
            {
                map.insert((addr.to_string(), w), LoadEntry { count, stamp_ms });
            }
        }
    }
    map
}

pub fn encode_loads(map: &LoadMap) -> Vec<u8> {
    let mut out = String::from(LOADS_HEADER);
    out.push('\n');
    for ((addr, worker), e) in map {
        out.push_str(&format!("{addr} {worker} {} {}\n", e.count, e.stamp_ms));
    }
    out.into_bytes()
}

/// Live in-flight requests per host address, summed over workers.
pub fn host_totals(map: &LoadMap) -> BTreeMap<&str, u64> {
    let mut totals = BTreeMap::new();
    for ((addr, _), e) in map {
        *totals.entry(addr.as_str()).or_insert(0) += e.count;
    }
    totals
}

/// One worker VM's identity and the releases it still owes the shared map.
#[derive(Debug, Default)]
pub struct Worker {
    pub id: u64,
    /// Releases whose write failed; applied with this worker's next write.
    pub pending: std::cell::RefCell<Vec<String>>,
}

impl Worker {
    /// Claims a worker number unique in this Envoy process (a shared counter).
    pub fn claim<S: SharedStore + ?Sized>(
        store: &S,
        counter_key: &str,
    ) -> Result<Worker, StoreError> {
        let out = cas_update(store, counter_key, CAS_RETRIES, |cur| {
            let n = cur
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_le_bytes)
                .wrapping_add(1);
            Update::Write(n.to_le_bytes().to_vec(), n)
        });
        Ok(Worker {
            id: outcome(out)?,
            pending: Default::default(),
        })
    }

    /// The common part of every write: expire other workers' stale entries, apply this
    /// worker's owed releases, refresh the stamps of its own entries.
    fn maintain(&self, map: &mut LoadMap, now_ms: u64) {
        map.retain(|(_, w), e| *w == self.id || e.stamp_ms.saturating_add(LOAD_LEASE_MS) >= now_ms);
        for addr in self.pending.borrow().iter() {
            decrement(map, addr, self.id);
        }
        for ((_, w), e) in map.iter_mut() {
            if *w == self.id {
                e.stamp_ms = now_ms;
            }
        }
    }
}

fn decrement(map: &mut LoadMap, address: &str, worker: u64) {
    let k = (address.to_string(), worker);
    if let Some(e) = map.get_mut(&k) {
        e.count = e.count.saturating_sub(1);
        if e.count == 0 {
            map.remove(&k);
        }
    }
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
#[allow(clippy::too_many_arguments)]
pub fn admit<S, I, O>(
    store: &S,
    key: &str,
    worker: &Worker,
    now_ms: u64,
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
    admit_with(store, key, worker, now_ms, hosts, factor, |loads| {
        let sel = select(order(), healthy, Some(loads), fallbacks);
        let chosen = sel.chosen();
        (sel, chosen)
    })
}

/// [`admit`] with the choice left to `choose`: it gets the current in-flight counts of `hosts`
/// (as [`Loads`] with `factor`) and returns its result and the index of the host to charge.
/// It runs once per CAS attempt, so it must be pure; the result of the attempt that wrote is
/// returned.
pub fn admit_with<S, R, F>(
    store: &S,
    key: &str,
    worker: &Worker,
    now_ms: u64,
    hosts: &[Host],
    factor: f64,
    mut choose: F,
) -> Result<R, StoreError>
where
    S: SharedStore + ?Sized,
    F: FnMut(Loads<'_>) -> (R, Option<usize>),
{
    let out = cas_update(store, key, CAS_RETRIES, |cur| {
        let mut map = decode_loads(cur);
        worker.maintain(&mut map, now_ms);
        let totals = host_totals(&map);
        let per_host: Vec<u64> = hosts
            .iter()
            .map(|h| totals.get(h.address.as_str()).copied().unwrap_or(0))
            .collect();
        // Counts of hosts no longer in the set still occupy the proxy, but not this set's
        // capacity: only the current hosts' total feeds the bound.
        let total = per_host.iter().sum();
        let loads = Loads {
            per_host: &per_host,
            total,
            factor,
        };
        let (result, chosen) = choose(loads);
        if let Some(host) = chosen.and_then(|c| hosts.get(c)) {
            let e = map
                .entry((host.address.clone(), worker.id))
                .or_insert(LoadEntry {
                    count: 0,
                    stamp_ms: now_ms,
                });
            e.count += 1;
        }
        // Written even without a choice when owed releases were applied.
        Update::Write(encode_loads(&map), result)
    });
    let r = outcome(out);
    if r.is_ok() {
        worker.pending.borrow_mut().clear();
    }
    r
}

/// Releases one in-flight request of `address` held by `worker` (entries at zero are
/// dropped). If the write fails, the release is kept and applied with the worker's next
/// write, so it happens exactly once.
pub fn release<S: SharedStore + ?Sized>(
    store: &S,
    key: &str,
    worker: &Worker,
    now_ms: u64,
    address: &str,
) -> Result<(), StoreError> {
    worker.pending.borrow_mut().push(address.to_string());
    let out = cas_update(store, key, CAS_RETRIES, |cur| {
        let mut map = decode_loads(cur);
        worker.maintain(&mut map, now_ms);
        Update::Write(encode_loads(&map), ())
    });
    let r = outcome(out);
    if r.is_ok() {
        worker.pending.borrow_mut().clear();
    }
    r
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
        let mut loads = LoadMap::new();
        let e = |count, stamp_ms| LoadEntry { count, stamp_ms };
        loads.insert(("[::1]:80".to_string(), 1), e(3, 10));
        loads.insert(("10.0.0.1:80".to_string(), 2), e(1, 20));
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
        assert_eq!(decode_loads(Some(b"v2\na b\nx 1 2 3\n")).len(), 1);
        // The v1 format (one count per host, no worker) is not read as counts.
        assert!(decode_loads(Some(b"v1\n10.0.0.1:80 3\n")).is_empty());
    }

    fn worker(s: &MemStore) -> Worker {
        Worker::claim(s, "workers").unwrap()
    }

    fn admit3(s: &MemStore, keys: &Keys, w: &Worker, now_ms: u64, h: &[Host]) -> Selection {
        admit(
            s,
            &keys.loads,
            w,
            now_ms,
            h,
            || [0, 1, 2].into_iter(),
            &[true; 3],
            1.25,
            1,
        )
        .unwrap()
    }

    fn totals(s: &MemStore, keys: &Keys) -> BTreeMap<String, u64> {
        let map = decode_loads(s.get(&keys.loads).unwrap().0.as_deref());
        host_totals(&map)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    #[test]
    fn admit_and_release_keep_exact_counts_across_workers() {
        let s = MemStore::new();
        let keys = Keys::new("t");
        ensure_key(&s, &keys.loads, LOADS_EMPTY).unwrap();
        let h = hosts(3);
        let (w1, w2) = (worker(&s), worker(&s));
        assert_ne!(w1.id, w2.id);
        // Another worker writes between our read and write every other time: CAS retries.
        let mut flip = false;
        s.interfere(move |_| {
            flip = !flip;
            flip
        });
        let mut chosen = Vec::new();
        for i in 0..30 {
            let w = if i % 2 == 0 { &w1 } else { &w2 };
            chosen.push((i % 2, admit3(&s, &keys, w, 1000, &h).chosen().unwrap()));
        }
        let t = totals(&s, &keys);
        assert_eq!(t.values().sum::<u64>(), 30);
        // Every key prefers host 0, but the bound ⌈1.25 × 30 / 3⌉ = 13 caps it.
        assert_eq!(t["127.0.0.1:8081"], 13);
        for (wi, c) in chosen {
            let w = if wi == 0 { &w1 } else { &w2 };
            release(&s, &keys.loads, w, 2000, &h[c].address).unwrap();
        }
        assert!(totals(&s, &keys).is_empty());
        // A release without a matching admit never goes negative.
        release(&s, &keys.loads, &w1, 2000, &h[0].address).unwrap();
        assert!(totals(&s, &keys).is_empty());
    }

    #[test]
    fn a_failed_release_is_applied_with_the_next_write() {
        let s = MemStore::new();
        let keys = Keys::new("t");
        ensure_key(&s, &keys.loads, LOADS_EMPTY).unwrap();
        let h = hosts(3);
        let w = worker(&s);
        let c = admit3(&s, &keys, &w, 1000, &h).chosen().unwrap();
        s.fail_with(Some(StoreError::Other("down".into())));
        assert!(release(&s, &keys.loads, &w, 1001, &h[c].address).is_err());
        s.fail_with(None);
        assert_eq!(totals(&s, &keys).values().sum::<u64>(), 1);
        // The next admission writes the owed release too: one request in flight, not two.
        admit3(&s, &keys, &w, 1002, &h);
        assert_eq!(totals(&s, &keys).values().sum::<u64>(), 1);
        assert!(w.pending.borrow().is_empty());
    }

    #[test]
    fn counts_of_a_worker_that_died_expire() {
        let s = MemStore::new();
        let keys = Keys::new("t");
        ensure_key(&s, &keys.loads, LOADS_EMPTY).unwrap();
        let h = hosts(3);
        let (dead, live) = (worker(&s), worker(&s));
        for _ in 0..5 {
            admit3(&s, &keys, &dead, 1000, &h);
        }
        // The live worker keeps writing; the dead one's entries count until their lease ends.
        admit3(&s, &keys, &live, 1000 + LOAD_LEASE_MS, &h);
        assert_eq!(totals(&s, &keys).values().sum::<u64>(), 6);
        admit3(&s, &keys, &live, 1001 + LOAD_LEASE_MS, &h);
        assert_eq!(totals(&s, &keys).values().sum::<u64>(), 2);
        // The live worker's own entries never expire while it writes.
        admit3(&s, &keys, &live, 10 * LOAD_LEASE_MS, &h);
        assert_eq!(totals(&s, &keys).values().sum::<u64>(), 3);
    }

    #[test]
    fn store_failure_surfaces_so_the_filter_can_fail_open() {
        let s = MemStore::new();
        s.fail_with(Some(StoreError::Other("down".into())));
        let h = hosts(2);
        let w = Worker::default();
        assert!(admit(
            &s,
            "k",
            &w,
            0,
            &h,
            || [0, 1].into_iter(),
            &[true; 2],
            1.25,
            1
        )
        .is_err());
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
