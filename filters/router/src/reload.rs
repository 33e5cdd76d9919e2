//! Live reload of the route table through shared data, so every worker switches together.
//!
//! Three keys per reload endpoint (`switchyard.router.<scope>.`):
//! - `fetch`: the fetch lease (next due time) and the ETag last seen, so one worker per interval
//!   fetches and a rejected table is not re-fetched until it changes;
//! - `table`: the accepted table (version + raw JSON);
//! - `version`: the version alone, read on every request (8 bytes) to notice a new table cheaply.
//!
//! Version 0 is the table from the plugin configuration; every accepted change adds one.

use crate::config::parse_table;
use crate::table::Table;
use switchyard_core::shared::{
    cas_update, ensure_key, CasOutcome, SharedStore, StoreError, Update,
};
use switchyard_core::ConfigError;

const MAX_RETRIES: u32 = 8;

/// The shared-data keys of one reload endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub fetch: String,
    pub table: String,
    pub version: String,
}

impl Keys {
    /// `scope` identifies the endpoint (root id, cluster, path), so two plugin instances with
    /// different endpoints never share a table.
    pub fn new(root_id: &str, cluster: &str, path: &str) -> Self {
        let h = switchyard_core::hash::stable_hash64(
            format!("{root_id}\u{1f}{cluster}\u{1f}{path}").as_bytes(),
        );
        let base = format!("switchyard.router.{h:016x}.");
        Keys {
            fetch: format!("{base}fetch"),
            table: format!("{base}table"),
            version: format!("{base}version"),
        }
    }

    /// Creates the keys if missing (configure time); later writes are CAS only.
    pub fn ensure<S: SharedStore + ?Sized>(&self, store: &S) -> Result<(), StoreError> {
        ensure_key(store, &self.fetch, &encode_fetch(0, ""))?;
        ensure_key(store, &self.table, &0u64.to_le_bytes())?;
        ensure_key(store, &self.version, &0u64.to_le_bytes())?;
        Ok(())
    }
}

fn read_u64(b: &[u8]) -> u64 {
    b.get(..8)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

fn encode_fetch(due: u64, etag: &str) -> Vec<u8> {
    let mut v = due.to_le_bytes().to_vec();
    v.extend_from_slice(etag.as_bytes());
    v
}

fn decode_fetch(b: Option<&[u8]>) -> (u64, String) {
    match b {
        Some(b) => (
            read_u64(b),
            String::from_utf8_lossy(b.get(8..).unwrap_or(&[])).into_owned(),
        ),
        None => (0, String::new()),
    }
}

/// Claims the next fetch if it is due: returns the ETag to send as `If-None-Match` ("" for
/// none). Only one worker wins; the lease is held for `hold` (interval + fetch timeout) so no
/// other worker fetches while this fetch is in flight, and lapses if the fetcher never finishes.
pub fn claim_fetch<S: SharedStore + ?Sized>(
    store: &S,
    keys: &Keys,
    now: u64,
    hold: u64,
) -> Option<String> {
    let out = cas_update(store, &keys.fetch, MAX_RETRIES, |cur| {
        let (due, etag) = decode_fetch(cur);
        if now < due {
            Update::Keep(None)
        } else {
            Update::Write(encode_fetch(now.saturating_add(hold), &etag), Some(etag))
        }
    });
    out.result().flatten()
}

/// Ends a fetch: the next one is due `interval` from now, and `etag` (when the endpoint sent a
/// table, accepted or rejected) is what the next fetch sends as `If-None-Match`.
pub fn finish_fetch<S: SharedStore + ?Sized>(
    store: &S,
    keys: &Keys,
    now: u64,
    interval: u64,
    etag: Option<&str>,
) {
    let _ = cas_update(store, &keys.fetch, MAX_RETRIES, |cur| {
        let (_, old) = decode_fetch(cur);
        let etag = etag.unwrap_or(&old);
        Update::Write(encode_fetch(now.saturating_add(interval), etag), ())
    });
}

/// The version currently published.
pub fn read_version<S: SharedStore + ?Sized>(store: &S, keys: &Keys) -> Option<u64> {
    match store.get(&keys.version) {
        Ok((Some(b), _)) => Some(read_u64(&b)),
        _ => None,
    }
}

/// The published table: version and raw JSON (`None` while only the configured table exists).
pub fn read_table<S: SharedStore + ?Sized>(store: &S, keys: &Keys) -> Option<(u64, Vec<u8>)> {
    match store.get(&keys.table) {
        Ok((Some(b), _)) if b.len() > 8 => Some((read_u64(&b), b[8..].to_vec())),
        _ => None,
    }
}

/// Publishes a validated table. An unchanged body keeps its version. Returns the version in force.
pub fn publish<S: SharedStore + ?Sized>(
    store: &S,
    keys: &Keys,
    body: &[u8],
) -> Result<u64, StoreError> {
    let out = cas_update(store, &keys.table, MAX_RETRIES, |cur| {
        let cur = cur.unwrap_or(&[]);
        let version = read_u64(cur);
        if cur.len() > 8 && &cur[8..] == body {
            return Update::Keep(version);
        }
        let next = version + 1;
        let mut v = next.to_le_bytes().to_vec();
        v.extend_from_slice(body);
        Update::Write(v, next)
    });
    let version = match out {
        CasOutcome::Written { result, .. } | CasOutcome::Kept { result, .. } => result,
        CasOutcome::Exhausted { .. } => return Err(StoreError::CasMismatch),
        CasOutcome::Failed(e) => return Err(e),
    };
    // The version key only moves forward, so a slow publisher cannot roll it back.
    let out = cas_update(store, &keys.version, MAX_RETRIES, |cur| {
        let cur = cur.map(read_u64).unwrap_or(0);
        if cur >= version {
            Update::Keep(())
        } else {
            Update::Write(version.to_le_bytes().to_vec(), ())
        }
    });
    match out {
        CasOutcome::Failed(e) => Err(e),
        CasOutcome::Exhausted { .. } => Err(StoreError::CasMismatch),
        _ => Ok(version),
    }
}

/// What a fetch of the reload endpoint produced.
#[derive(Debug)]
pub enum FetchResult {
    /// 304: the table in force is current.
    NotModified,
    /// 200 with a valid table.
    /// `body` is the table document as fetched, to publish for the other workers.
    Accepted {
        table: Box<Table>,
        etag: String,
        body: Vec<u8>,
    },
    /// 200 with an invalid table: the error names the field.
    Rejected { error: ConfigError, etag: String },
    /// The endpoint failed (status, size); nothing changes.
    Failed(String),
}

/// Evaluates a fetch response. The table is validated completely against the plugin's
/// known clusters before anything is published.
///
/// `read_body` copies the body into the VM; it runs only when `body_size` is within
/// `max_bytes`, so an oversized answer is never copied.
pub fn evaluate_fetch(
    status: u16,
    etag: Option<&str>,
    body_size: usize,
    read_body: impl FnOnce() -> Vec<u8>,
    max_bytes: usize,
    known_clusters: Option<&[String]>,
    cluster_header: &str,
) -> FetchResult {
    let etag = etag.unwrap_or("").to_string();
    match status {
        304 => FetchResult::NotModified,
        200 => {
            if body_size > max_bytes {
                return FetchResult::Rejected {
                    error: ConfigError::new(
                        "",
                        format!(
                            "table is {body_size} bytes, more than reload.max_bytes {max_bytes}"
                        ),
                    ),
                    etag,
                };
            }
            let body = read_body();
            match parse_table(&body, known_clusters, cluster_header) {
                // A fetched `{}` (no routes, no default) would answer every request with 404:
                // a broken config endpoint must not take all traffic down.
                Ok(table) if table.routes().is_empty() && table.default_action().is_none() => {
                    FetchResult::Rejected {
                        error: ConfigError::new(
                            "routes",
                            "an empty table (no routes and no default) would answer every request with 404",
                        ),
                        etag,
                    }
                }
                Ok(table) => FetchResult::Accepted {
                    table: Box::new(table),
                    etag,
                    body,
                },
                Err(error) => FetchResult::Rejected { error, etag },
            }
        }
        0 => FetchResult::Failed("no response (timeout or connection failure)".into()),
        s => FetchResult::Failed(format!("status {s}")),
    }
}
