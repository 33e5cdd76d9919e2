use super::*;
use crate::config::Config;
use crate::key::variant_hash;
use crate::plan::tests::{cfg, fields, get, stored, NS, T0};
use crate::plan::Request;
use crate::response_plan::{head_update, response_plan, Response, ResponsePlan, Stage};
use crate::store::{InsertError, Inserted, StoreConfig};
use switchyard_core::duration::NS_PER_MS;
use switchyard_core::rng::XorShift;
use switchyard_core::shared::MemStore;

const READY: u32 = 2;

fn record(generation: u32) -> Slot {
    Slot {
        primary: 7,
        variant: 1,
        uri: 9,
        bytes: 300,
        state: READY,
        generation,
        hits: 0,
        inserted_ms: 1_000,
        access_ms: 1_000,
    }
}

fn body(len: usize) -> Rc<Entry> {
    Rc::new(Entry {
        body: vec![b'x'; len],
        ..Entry::default()
    })
}

fn l1(max_bytes: u64, max_entries: usize) -> L1 {
    L1::new(L1Config {
        max_bytes,
        max_entries,
    })
}

#[test]
fn copies_are_bounded_by_entries_least_recent_first() {
    let mut l1 = l1(1 << 20, 2);
    for slot in 0..2 {
        l1.admit(slot, &record(1), &body(10));
    }
    // Slot 0 is used again, so slot 1 is now the least recent and makes room for slot 2.
    assert!(l1.get(0, &record(1)).is_some());
    l1.admit(2, &record(1), &body(10));
    assert_eq!(l1.len(), 2);
    assert!(l1.get(1, &record(1)).is_none());
    assert!(l1.get(0, &record(1)).is_some() && l1.get(2, &record(1)).is_some());
}

#[test]
fn copies_are_bounded_by_bytes_and_too_large_entries_are_not_kept() {
    let each = body(1000).held_bytes();
    assert_eq!(each, 1000 + Entry::OVERHEAD);
    let mut l1 = l1(3 * each, 100);
    for slot in 0..5 {
        l1.admit(slot, &record(1), &body(1000));
        assert!(l1.bytes() <= 3 * each);
    }
    assert_eq!((l1.len(), l1.bytes()), (3, 3 * each));
    assert!(l1.get(1, &record(1)).is_none() && l1.get(4, &record(1)).is_some());
    // Bigger than the whole L1: not kept, and nothing else is pushed out for it.
    l1.admit(9, &record(1), &body(4 * 1000));
    assert!(l1.get(9, &record(1)).is_none());
    assert_eq!(l1.len(), 3);
    // A new copy of a slot replaces the old one (and its bytes).
    l1.admit(4, &record(2), &body(10));
    assert_eq!((l1.len(), l1.bytes()), (3, 2 * each + 10 + Entry::OVERHEAD));
    l1.forget(4);
    l1.forget(4);
    assert_eq!((l1.len(), l1.bytes()), (2, 2 * each));
}

#[test]
fn a_copy_is_used_only_while_the_slot_record_still_holds_its_entry() {
    let mut l1 = l1(1 << 20, 16);
    let seen = record(5);
    let admit = |l1: &mut L1| l1.admit(3, &seen, &body(10));
    admit(&mut l1);
    // Hits and access time move on hits: still the same entry.
    let touched = Slot {
        hits: 9,
        access_ms: 99_000,
        ..seen
    };
    assert!(l1.get(3, &touched).is_some());
    let changed = [
        Slot { state: 0, ..seen },
        Slot { state: 1, ..seen },
        Slot {
            generation: 6,
            ..seen
        },
        // The generation alone could wrap around; the rest of the reservation must match too.
        Slot {
            inserted_ms: 2_000,
            ..seen
        },
        Slot { bytes: 301, ..seen },
        Slot { primary: 8, ..seen },
        Slot { variant: 2, ..seen },
        Slot { uri: 10, ..seen },
    ];
    for now in changed {
        admit(&mut l1);
        assert!(l1.get(3, &now).is_none(), "{now:?}");
        // The outdated copy is dropped, not just skipped.
        assert!(l1.is_empty() && l1.bytes() == 0, "{now:?}");
    }
}

#[test]
fn off_keeps_nothing() {
    for cfg in [
        L1Config::OFF,
        L1Config {
            max_bytes: 0,
            max_entries: 10,
        },
        L1Config {
            max_bytes: 1 << 20,
            max_entries: 0,
        },
    ] {
        let mut l1 = L1::new(cfg);
        l1.admit(0, &record(1), &body(1));
        assert!(!l1.enabled() && l1.is_empty() && l1.get(0, &record(1)).is_none());
    }
}

/// One worker (VM): its own L1 over the shared store every worker uses.
struct Worker<'a> {
    cfg: &'a Config,
    store: Store<'a, MemStore>,
    l1: L1,
}

impl<'a> Worker<'a> {
    fn new(cfg: &'a Config, shared: &'a MemStore, store_cfg: &'a StoreConfig) -> Self {
        Worker {
            cfg,
            store: Store::new(shared, store_cfg),
            l1: L1::new(cfg.l1),
        }
    }

    /// What `Runtime::find` does.
    fn find(&mut self, view: &RequestView) -> Option<Hit> {
        let key = self.cfg.key.key(view);
        find(&self.store, Some(&mut self.l1), &key, view).0
    }

    /// The body this worker would serve for `path`, and whether it came from its L1.
    fn body(&mut self, path: &str) -> Option<(String, bool)> {
        let hit = self.find(&get(path))?;
        Some((
            String::from_utf8_lossy(&hit.entry.body).into_owned(),
            hit.l1,
        ))
    }

    /// What `Runtime::insert` does.
    fn insert(&self, entry: &Entry, at: u64) -> Result<Inserted, InsertError> {
        let key = self.cfg.key.key(&get(&entry.path));
        let variant = variant_hash(&entry.vary);
        let now_ms = at / NS_PER_MS;
        let seed = at ^ key.hash;
        self.store
            .insert(entry, key.hash, variant, key.uri_hash, now_ms, seed)
    }

    /// Stores `body` for `path` (fresh for a minute) at `at`.
    fn put(&self, path: &str, body: &str, at: u64) -> Inserted {
        let mut e = stored(self.cfg, &get(path), &[("cache-control", "max-age=60")]);
        e.body = body.as_bytes().to_vec();
        self.insert(&e, at).unwrap()
    }

    fn purge(&self, path: &str) -> usize {
        self.store.remove_entries_where(|e| e.path == path)
    }

    /// Reads `path` twice, expecting `body`: from shared data first, then from the L1.
    fn warm(&mut self, path: &str, body: &str) {
        assert_eq!(self.body(path), Some((body.to_owned(), false)));
        assert_eq!(self.body(path), Some((body.to_owned(), true)));
    }
}

/// Two workers over one store.
fn pair<'a>(c: &'a Config, shared: &'a MemStore, sc: &'a StoreConfig) -> (Worker<'a>, Worker<'a>) {
    (Worker::new(c, shared, sc), Worker::new(c, shared, sc))
}

fn setup(json: &str) -> (Config, MemStore, StoreConfig) {
    let c = cfg(json);
    let shared = MemStore::new();
    let store_cfg = c.store_config("t.");
    Store::new(&shared, &store_cfg).init().unwrap();
    (c, shared, store_cfg)
}

/// Runs `test` on two workers over one store, where A stored `/a` = `v1` at `T0` and holds it
/// in its L1.
fn with_hot_a(test: impl FnOnce(&Config, Worker<'_>, Worker<'_>)) {
    let (c, shared, sc) = setup("{}");
    let (mut a, b) = pair(&c, &shared, &sc);
    a.put("/a", "v1", T0);
    a.warm("/a", "v1");
    test(&c, a, b);
}

#[test]
fn a_hot_entry_is_read_once_per_worker_then_served_from_its_l1() {
    with_hot_a(|_, mut a, mut b| {
        b.warm("/a", "v1");
        assert_eq!(a.body("/b"), None);
        // The L1 shares its copy with the hit: no deep copy.
        let (x, y) = (a.find(&get("/a")).unwrap(), a.find(&get("/a")).unwrap());
        assert!(Rc::ptr_eq(&x.entry, &y.entry));
    });
}

#[test]
fn a_purge_or_an_invalidation_on_another_worker_is_never_served_from_the_l1() {
    with_hot_a(|c, mut a, b| {
        let first = a.find(&get("/a")).unwrap();
        assert_eq!(b.purge("/a"), 1);
        assert_eq!(
            a.body("/a"),
            None,
            "purged on B: A's copy must not be served"
        );
        // The copy stays until its slot is looked up again or the LRU pushes it out.
        assert_eq!(a.l1.len(), 1);
        // Stored again in the very same slot, with the same size at the same millisecond: only the
        // generation tells the entries apart.
        let again = b.put("/a", "v2", T0);
        assert_eq!(again.slot, first.slot);
        assert_ne!(again.generation, first.meta.generation);
        a.warm("/a", "v2");
        assert_eq!(a.l1.len(), 1, "the new copy replaced the old one");
        // An unsafe method's invalidation (by URI) on B.
        let uri = c.key.key(&get("/a")).uri_hash;
        assert_eq!(b.store.remove_where(|s| s.uri == uri), 1);
        assert_eq!(a.body("/a"), None);
    });
}

#[test]
fn a_replacement_on_another_worker_is_read_anew() {
    let (c, shared, sc) = setup("{}");
    let (mut a, mut b) = pair(&c, &shared, &sc);
    a.put("/a", "v1", T0);
    a.put("/b", "b1", T0);
    assert_eq!(a.body("/a"), Some(("v1".into(), false)));
    assert_eq!(a.body("/b"), Some(("b1".into(), false)));
    b.put("/a", "v2", T0);
    assert_eq!(a.body("/a"), Some(("v2".into(), false)));
    assert_eq!(
        a.body("/b"),
        Some(("b1".into(), true)),
        "the other entry stays"
    );
    // And back, on B's side too.
    a.put("/a", "v3", T0 + NS);
    assert_eq!(b.body("/a"), Some(("v3".into(), false)));
    assert_eq!(a.body("/a"), Some(("v3".into(), false)));
}

/// The stored entry of `path` freshened by a `304` on `worker`, stored by it.
fn revalidate_304(worker: &mut Worker<'_>, path: &str, headers: &[(&str, &str)], at: u64) {
    let req = Request::lookup(worker.cfg, get(path), false, at);
    let hit = worker.find(&get(path)).unwrap();
    let stage = Stage::Revalidate {
        entry: Box::new(Rc::unwrap_or_clone(hit.entry)),
        ours: true,
    };
    let headers = fields(headers);
    let resp = Response {
        status: 304,
        headers: &headers,
        from_upstream: true,
        now: at,
    };
    let ResponsePlan::Replace(fresh) = response_plan(worker.cfg, stage, Some(&req), &resp) else {
        panic!("a 304 to our revalidation replaces the entry")
    };
    worker.insert(&fresh, at).unwrap();
}

#[test]
fn freshening_by_a_304_or_a_head_on_another_worker_replaces_the_l1_copy() {
    with_hot_a(|c, mut a, mut b| {
        let header = |w: &mut Worker<'_>, name: &str| {
            let hit = w.find(&get("/a")).unwrap();
            let value = hit
                .entry
                .header(name)
                .map(|v| String::from_utf8_lossy(v).into_owned());
            (value, hit.l1)
        };
        // Same body, same key, same size: only the headers and the clock change.
        revalidate_304(
            &mut b,
            "/a",
            &[("cache-control", "max-age=61")],
            T0 + 90 * NS,
        );
        let fresh = header(&mut a, "cache-control");
        assert_eq!(fresh, (Some("max-age=61".into()), false));
        assert_eq!(
            a.find(&get("/a")).unwrap().entry.clock.response_time,
            T0 + 90 * NS
        );
        // A `200` to a HEAD that describes the stored GET freshens it as well.
        let head = fields(&[("cache-control", "max-age=62")]);
        let stale = Rc::unwrap_or_clone(b.find(&get("/a")).unwrap().entry);
        let now = T0 + 95 * NS;
        let freshened = head_update(c, stale, &head, now, now).unwrap();
        b.insert(&freshened, now).unwrap();
        assert_eq!(
            header(&mut a, "cache-control"),
            (Some("max-age=62".into()), false)
        );
        assert_eq!(
            header(&mut a, "cache-control"),
            (Some("max-age=62".into()), true)
        );
    });
}

#[test]
fn an_eviction_on_another_worker_is_never_served_from_the_l1() {
    // Room for about four 1 KiB entries in shared data.
    let (c, shared, mut sc) = setup(r#"{"max_entries": 64}"#);
    sc.max_bytes = 5000;
    let (mut a, b) = pair(&c, &shared, &sc);
    let kib = "x".repeat(1024);
    a.put("/hot", &kib, T0);
    assert!(a.body("/hot").is_some_and(|(_, l1)| !l1));
    assert!(a.body("/hot").is_some_and(|(_, l1)| l1));
    for i in 0..8 {
        b.put(&format!("/flood/{i}"), &kib, T0 + (i + 1) * NS);
    }
    assert!(b.store.find(c.key.key(&get("/hot")).hash).is_empty());
    assert_eq!(
        a.body("/hot"),
        None,
        "evicted on B: A's copy must not be served"
    );
}

#[test]
fn variants_of_one_key_are_kept_and_replaced_apart() {
    let (c, shared, sc) = setup("{}");
    let (mut a, b) = pair(&c, &shared, &sc);
    let view = |lang: &str| get("/v").with_header("accept-language", lang);
    let put = |w: &Worker<'_>, lang: &str, body: &str| {
        let headers = [("cache-control", "max-age=60"), ("vary", "accept-language")];
        let mut e = stored(&c, &view(lang), &headers);
        e.body = body.as_bytes().to_vec();
        w.insert(&e, T0).unwrap();
    };
    let served = |w: &mut Worker<'_>, lang: &str| {
        let hit = w.find(&view(lang)).unwrap();
        (
            String::from_utf8_lossy(&hit.entry.body).into_owned(),
            hit.l1,
        )
    };
    put(&a, "en", "hello");
    put(&a, "fr", "bonjour");
    // A lookup reads every variant of its key: both are now in A's L1.
    assert_eq!(served(&mut a, "en"), ("hello".into(), false));
    assert_eq!(served(&mut a, "fr"), ("bonjour".into(), true));
    assert_eq!(a.l1.len(), 2);
    put(&b, "fr", "salut");
    assert_eq!(served(&mut a, "fr"), ("salut".into(), false));
    assert_eq!(served(&mut a, "en"), ("hello".into(), true));
}

#[test]
fn workers_through_their_l1s_always_serve_what_shared_data_holds() {
    // Two workers insert, replace, purge and read a few keys in a small store (evictions), in a
    // seeded random order; every read through a worker's L1 must return exactly what a read of
    // shared data alone returns at that moment.
    let (c, shared, mut sc) = setup(r#"{"max_entries": 32, "l1": {"max_entries": 4}}"#);
    sc.max_bytes = 6000;
    let (a, b) = pair(&c, &shared, &sc);
    let mut workers = [a, b];
    let mut rng = XorShift::new(17);
    let (mut l1_hits, mut reads) = (0, 0);
    for step in 0..4000u64 {
        let w = rng.below(2) as usize;
        let path = format!("/k{}", rng.below(6));
        let at = T0 + step * NS_PER_MS * 7;
        match rng.below(10) {
            0 | 1 => {
                let len = 1 + rng.below(1500) as usize;
                let body = format!("{step}:{}", "x".repeat(len));
                workers[w].put(&path, &body, at);
            }
            2 => {
                workers[w].purge(&path);
            }
            _ => {
                let view = get(&path);
                let key = c.key.key(&view);
                let truth = find(&workers[w].store, None, &key, &view)
                    .0
                    .map(|h| h.entry);
                let got = workers[w].find(&view);
                reads += 1;
                l1_hits += u32::from(got.as_ref().is_some_and(|h| h.l1));
                assert_eq!(
                    got.map(|h| h.entry),
                    truth,
                    "step {step}, worker {w}, {path}"
                );
                assert!(workers[w].l1.len() <= 4);
            }
        }
    }
    assert!(
        l1_hits > reads / 4,
        "the L1 was exercised: {l1_hits} of {reads}"
    );
}
