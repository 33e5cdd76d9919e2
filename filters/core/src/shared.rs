//! Compare-and-swap updates of proxy-wasm shared data with bounded retries.
//!
//! Envoy's shared data is one process-wide map: `get` returns the value and a CAS token, `set`
//! with a non-zero token fails with `CasMismatch` if another worker wrote in between, `set` with
//! token 0 (or on a missing key) writes unconditionally. There is no delete and no TTL, so every
//! store built on it must be bounded by its owner. Because inserting a missing key is
//! unconditional, stores should create their keys once (at configure time) and afterwards only
//! update them with [`cas_update`].

use std::cell::RefCell;
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    CasMismatch,
    Other(String),
}

/// The two shared-data calls, so CAS logic runs natively against [`MemStore`] in tests and
/// against Envoy through [`crate::host::HostStore`].
pub trait SharedStore {
    /// The value and its CAS token, or `(None, None)` if the key does not exist.
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError>;
    /// Writes `value`; with `cas = Some(token)` only if the key still has that token.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
}

/// What an update function decides for the value it was shown.
pub enum Update<R> {
    /// Write this value, then return `R`.
    Write(Vec<u8>, R),
    /// Leave the value as it is and return `R` (e.g. a rejected request consumes nothing).
    Keep(R),
}

/// How a CAS update ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome<R> {
    /// The new value was written after `retries` CAS mismatches.
    Written { result: R, retries: u32 },
    /// The update function chose not to write.
    Kept { result: R, retries: u32 },
    /// Every attempt lost a race; nothing was written.
    Exhausted { retries: u32 },
    /// The store failed for another reason.
    Failed(StoreError),
}

impl<R> CasOutcome<R> {
    pub fn retries(&self) -> u32 {
        match self {
            CasOutcome::Written { retries, .. }
            | CasOutcome::Kept { retries, .. }
            | CasOutcome::Exhausted { retries } => *retries,
            CasOutcome::Failed(_) => 0,
        }
    }
    pub fn result(self) -> Option<R> {
        match self {
            CasOutcome::Written { result, .. } | CasOutcome::Kept { result, .. } => Some(result),
            _ => None,
        }
    }
}

/// Reads `key`, lets `f` decide on the current value (`None` if the key is missing) and writes
/// the new value with the read CAS token, retrying up to `max_retries` times on a mismatch.
/// `f` may run several times and must be a pure function of its input.
pub fn cas_update<S, R, F>(store: &S, key: &str, max_retries: u32, f: F) -> CasOutcome<R>
where
    S: SharedStore + ?Sized,
    F: FnMut(Option<&[u8]>) -> Update<R>,
{
    cas_update_from(store, key, None, max_retries, f)
}

/// A value and CAS token read from shared data, as [`SharedStore::get`] returns them.
pub type Seen = (Option<Vec<u8>>, Option<u32>);

/// [`cas_update`] whose first attempt starts from `seen`, a value of `key` read earlier (one
/// host call fewer when nobody wrote the key since); a mismatch reads the key again as usual.
pub fn cas_update_from<S, R, F>(
    store: &S,
    key: &str,
    mut seen: Option<Seen>,
    max_retries: u32,
    mut f: F,
) -> CasOutcome<R>
where
    S: SharedStore + ?Sized,
    F: FnMut(Option<&[u8]>) -> Update<R>,
{
    let mut retries = 0;
    loop {
        let read = match seen.take() {
            Some(v) => Ok(v),
            None => store.get(key),
        };
        let (value, cas) = match read {
            Ok(v) => v,
            Err(e) => return CasOutcome::Failed(e),
        };
        match f(value.as_deref()) {
            Update::Keep(result) => return CasOutcome::Kept { result, retries },
            Update::Write(new, result) => {
                // A missing key has no token: Envoy inserts unconditionally.
                match store.set(key, &new, cas.filter(|c| *c != 0)) {
                    Ok(()) => return CasOutcome::Written { result, retries },
                    Err(StoreError::CasMismatch) => {
                        if retries >= max_retries {
                            return CasOutcome::Exhausted { retries };
                        }
                        retries += 1;
                    }
                    Err(e) => return CasOutcome::Failed(e),
                }
            }
        }
    }
}

/// Creates `key` with `initial` if it does not exist yet. Used at configure time.
pub fn ensure_key<S: SharedStore + ?Sized>(
    store: &S,
    key: &str,
    initial: &[u8],
) -> Result<bool, StoreError> {
    match store.get(key)? {
        (Some(_), _) => Ok(false),
        (None, _) => store.set(key, initial, None).map(|_| true),
    }
}

/// A value shared by every worker of the process: the first worker to ask stores `fresh`
/// (e.g. random bytes), every later one reads what was stored. For per-process secrets such as
/// hash seeds.
pub fn process_seed<S: SharedStore + ?Sized>(
    store: &S,
    key: &str,
    fresh: u64,
) -> Result<u64, StoreError> {
    ensure_key(store, key, &fresh.to_le_bytes())?;
    let (value, _) = store.get(key)?;
    value
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| StoreError::Other(format!("{key}: not a seed")))
}

/// An in-memory store with Envoy's CAS semantics, for native tests. `interfere` can inject a
/// write by "another worker" between a test's get and set.
#[derive(Default)]
pub struct MemStore {
    data: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next_cas: RefCell<u32>,
    #[allow(clippy::type_complexity)]
    interfere: RefCell<Option<Box<dyn FnMut(&str) -> bool>>>,
    fail: RefCell<Option<StoreError>>,
    gets: std::cell::Cell<u64>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Before every `set`, `f(key)` runs; if it returns true the key's token changes as if
    /// another worker had written, so the `set` sees a mismatch.
    pub fn interfere(&self, f: impl FnMut(&str) -> bool + 'static) {
        *self.interfere.borrow_mut() = Some(Box::new(f));
    }

    /// Makes every call fail with `e` (or stop failing with `None`).
    pub fn fail_with(&self, e: Option<StoreError>) {
        *self.fail.borrow_mut() = e;
    }

    pub fn len(&self) -> usize {
        self.data.borrow().len()
    }

    /// The `get` calls so far (each one a host call in Envoy).
    pub fn gets(&self) -> u64 {
        self.gets.get()
    }

    pub fn is_empty(&self) -> bool {
        self.data.borrow().is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.data
            .borrow()
            .iter()
            .map(|(k, v)| k.len() + v.0.len())
            .sum()
    }

    fn bump(&self) -> u32 {
        let mut c = self.next_cas.borrow_mut();
        *c = c.wrapping_add(1).max(1);
        *c
    }
}

impl SharedStore for MemStore {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        self.gets.set(self.gets.get() + 1);
        if let Some(e) = self.fail.borrow().clone() {
            return Err(e);
        }
        Ok(match self.data.borrow().get(key) {
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        })
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        if let Some(e) = self.fail.borrow().clone() {
            return Err(e);
        }
        let interfered = match self.interfere.borrow_mut().as_mut() {
            Some(f) => f(key),
            None => false,
        };
        if interfered {
            let token = self.bump();
            if let Some(entry) = self.data.borrow_mut().get_mut(key) {
                entry.1 = token;
            }
        }
        let token = self.bump();
        let mut data = self.data.borrow_mut();
        match data.get_mut(key) {
            Some(entry) => {
                if let Some(c) = cas {
                    if c != entry.1 {
                        return Err(StoreError::CasMismatch);
                    }
                }
                *entry = (value.to_vec(), token);
            }
            None => {
                data.insert(key.to_string(), (value.to_vec(), token));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incr(store: &MemStore, retries: u32) -> CasOutcome<u64> {
        cas_update(store, "n", retries, |cur| {
            let n = cur
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                .unwrap_or(0)
                + 1;
            Update::Write(n.to_le_bytes().to_vec(), n)
        })
    }

    #[test]
    fn updates_and_counts() {
        let s = MemStore::new();
        assert_eq!(
            incr(&s, 3),
            CasOutcome::Written {
                result: 1,
                retries: 0
            }
        );
        assert_eq!(
            incr(&s, 3),
            CasOutcome::Written {
                result: 2,
                retries: 0
            }
        );
    }

    #[test]
    fn retries_on_mismatch_then_succeeds() {
        let s = MemStore::new();
        incr(&s, 0);
        let mut left = 2;
        s.interfere(move |_| {
            if left > 0 {
                left -= 1;
                true
            } else {
                false
            }
        });
        assert_eq!(
            incr(&s, 5),
            CasOutcome::Written {
                result: 2,
                retries: 2
            }
        );
    }

    #[test]
    fn an_update_from_a_value_already_read_skips_the_read_unless_it_is_stale() {
        let s = MemStore::new();
        incr(&s, 0);
        let add_one = |cur: Option<&[u8]>| {
            let n = u64::from_le_bytes(cur.and_then(|b| b.try_into().ok()).unwrap_or([0; 8]));
            Update::Write((n + 1).to_le_bytes().to_vec(), n + 1)
        };
        let seen = s.get("n").unwrap();
        let gets = s.gets();
        let out = cas_update_from(&s, "n", Some(seen.clone()), 3, add_one);
        assert_eq!(out.result(), Some(2));
        assert_eq!(s.gets(), gets, "written with the token already read");
        // Someone wrote since `seen`: the stale token fails, the key is read again.
        let out = cas_update_from(&s, "n", Some(seen), 3, add_one);
        assert_eq!(out.retries(), 1);
        assert_eq!(
            out.result(),
            Some(3),
            "3, not 2 again: the fresh value was used"
        );
        assert_eq!(s.gets(), gets + 1);
    }

    #[test]
    fn exhausts_bounded_retries() {
        let s = MemStore::new();
        incr(&s, 0);
        s.interfere(|_| true);
        assert_eq!(incr(&s, 4), CasOutcome::Exhausted { retries: 4 });
        s.interfere(|_| false);
        assert_eq!(
            incr(&s, 4),
            CasOutcome::Written {
                result: 2,
                retries: 0
            }
        );
    }

    #[test]
    fn the_first_worker_chooses_the_process_seed() {
        let s = MemStore::new();
        assert_eq!(process_seed(&s, "seed", 7).unwrap(), 7);
        assert_eq!(process_seed(&s, "seed", 9).unwrap(), 7);
    }

    #[test]
    fn keep_writes_nothing_and_failures_surface() {
        let s = MemStore::new();
        let out = cas_update(&s, "k", 3, |_| Update::Keep(7));
        assert_eq!(
            out,
            CasOutcome::Kept {
                result: 7,
                retries: 0
            }
        );
        assert!(s.is_empty());
        s.fail_with(Some(StoreError::Other("down".into())));
        assert!(matches!(incr(&s, 3), CasOutcome::Failed(_)));
    }

    #[test]
    fn ensure_key_creates_once() {
        let s = MemStore::new();
        assert!(ensure_key(&s, "k", b"a").unwrap());
        assert!(!ensure_key(&s, "k", b"b").unwrap());
        assert_eq!(s.get("k").unwrap().0.unwrap(), b"a");
    }

    #[test]
    fn stale_token_mismatches_like_envoy() {
        let s = MemStore::new();
        s.set("k", b"1", None).unwrap();
        let (_, cas) = s.get("k").unwrap();
        s.set("k", b"2", None).unwrap(); // another worker, unconditional
        assert_eq!(s.set("k", b"3", cas), Err(StoreError::CasMismatch));
    }
}
