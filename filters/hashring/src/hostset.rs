//! The dynamic host set (`hosts_from`): one shared-data record per configuration holding the
//! last good host list, its version and ETag, and the fetch lease. One worker at a time fetches
//! (whoever wins the CAS on the lease); every worker rebuilds its table when the version it
//! sees changes, so a table is rebuilt once per change per worker, never per request.
//!
//! Record format: `v1`, version, next fetch time (ns), ETag (may be empty), then the host list
//! as canonical JSON (empty until the first good fetch).

use crate::config::{check_table_limits, validate_hosts, Config, Host, HostSpec, HostsFrom};
use crate::metrics::{Effects, Metric};
use serde::{Deserialize, Serialize};

/// The initial record: version 0, fetch due immediately, no hosts.
pub const EMPTY: &[u8] = b"v1\n0\n0\n\n";

/// Largest `hosts_from` body accepted (1024 hosts need well under 100 KiB).
pub const MAX_HOST_LIST_BYTES: usize = 1 << 20;

/// What a `hosts_from` answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchAnswer {
    /// `304`: the list is unchanged.
    NotModified,
    /// A `200` with a body over [`MAX_HOST_LIST_BYTES`]: rejected unread, the last good set stays.
    TooLarge,
    /// A `200` with a body to check and store ([`check_fetched`], [`apply_fetched`]).
    List,
    /// Any other status (0: none): a failed fetch, the last good set stays.
    Failed(u16),
}

impl FetchAnswer {
    pub fn of(status: u16, body_size: usize) -> FetchAnswer {
        match status {
            304 => FetchAnswer::NotModified,
            200 if body_size > MAX_HOST_LIST_BYTES => FetchAnswer::TooLarge,
            200 => FetchAnswer::List,
            other => FetchAnswer::Failed(other),
        }
    }

    /// The answer's counter (a list is counted once checked and stored).
    pub fn effects(self) -> Effects {
        let counter = match self {
            FetchAnswer::NotModified => Some(Metric::HostsFromNotModified),
            FetchAnswer::TooLarge => Some(Metric::HostsFromRejected),
            FetchAnswer::List => None,
            FetchAnswer::Failed(_) => Some(Metric::HostsFromErrors),
        };
        let mut fx = Effects::new();
        if let Some(m) = counter {
            fx.count(m);
        }
        fx
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostSetRecord {
    pub version: u64,
    pub next_fetch_at: u64,
    pub etag: String,
    /// Canonical JSON of the last good host list; empty before the first good fetch.
    pub hosts_json: String,
}

impl HostSetRecord {
    pub fn decode(bytes: Option<&[u8]>) -> HostSetRecord {
        let text = bytes
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("");
        let mut parts = text.splitn(5, '\n');
        if parts.next() != Some("v1") {
            return HostSetRecord::default();
        }
        let version = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let next_fetch_at = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let etag = parts.next().unwrap_or("").to_string();
        let hosts_json = parts.next().unwrap_or("").to_string();
        HostSetRecord {
            version,
            next_fetch_at,
            etag,
            hosts_json,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        format!(
            "v1\n{}\n{}\n{}\n{}",
            self.version,
            self.next_fetch_at,
            self.etag.replace('\n', ""),
            self.hosts_json
        )
        .into_bytes()
    }

    /// The stored host list (already validated by the writer; re-validated anyway).
    pub fn hosts(&self) -> Option<Vec<Host>> {
        if self.hosts_json.is_empty() {
            return None;
        }
        parse_host_list(self.hosts_json.as_bytes()).ok()
    }
}

#[derive(Serialize)]
struct CanonicalHost<'a> {
    address: &'a str,
    weight: u32,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum HostListBody {
    List(Vec<HostSpec>),
    Object { hosts: Vec<HostSpec> },
}

/// Parses and validates a fetched host list: `[{"address": "10.0.0.1:80", "weight": 2}, ...]`
/// (or `{"hosts": [...]}`), with the same rules as the configured `hosts`.
pub fn parse_host_list(body: &[u8]) -> Result<Vec<Host>, String> {
    let parsed: HostListBody = serde_json::from_slice(body)
        .map_err(|e| format!("not a JSON list of {{\"address\", \"weight\"}} hosts: {e}"))?;
    let specs = match parsed {
        HostListBody::List(l) => l,
        HostListBody::Object { hosts } => hosts,
    };
    validate_hosts(&specs).map_err(|e| e.under("hosts").to_string())
}

/// Canonical JSON of a host list, so equal lists compare equal as text.
pub fn canonical_json(hosts: &[Host]) -> String {
    let list: Vec<CanonicalHost<'_>> = hosts
        .iter()
        .map(|h| CanonicalHost {
            address: &h.address,
            weight: h.weight,
        })
        .collect();
    serde_json::to_string(&list).unwrap_or_default()
}

/// The fetch lease: if a fetch is due at `now`, returns the record with the next fetch pushed
/// to `now + interval` (the caller CAS-writes it; the winner fetches).
pub fn claim_fetch(cur: &HostSetRecord, now: u64, interval_nanos: u64) -> Option<HostSetRecord> {
    if now < cur.next_fetch_at {
        return None;
    }
    let mut next = cur.clone();
    next.next_fetch_at = now.saturating_add(interval_nanos.max(1));
    Some(next)
}

/// Stores a freshly fetched good list: a new version only if the list changed.
pub fn apply_fetched(cur: &HostSetRecord, hosts: &[Host], etag: &str) -> Option<HostSetRecord> {
    let json = canonical_json(hosts);
    if json == cur.hosts_json && etag == cur.etag {
        return None;
    }
    let mut next = cur.clone();
    if json != cur.hosts_json {
        next.version = cur.version.saturating_add(1);
        next.hosts_json = json;
    }
    next.etag = etag.to_string();
    Some(next)
}

/// A fetched body checked like a configuration's `hosts` plus the table limits of `config`.
pub fn check_fetched(config: &Config, body: &[u8]) -> Result<Vec<Host>, String> {
    parse_host_list(body).and_then(|hosts| {
        check_table_limits(config.algorithm, &hosts, config.vnodes, config.table_size)
            .map_err(|e| e.to_string())
            .map(|_| hosts)
    })
}

/// The request headers of a `hosts_from` fetch (`If-None-Match` with the last ETag, if any).
pub fn fetch_headers(hf: &HostsFrom, etag: &str) -> Vec<(&'static str, String)> {
    let authority = hf.authority.clone().unwrap_or_else(|| hf.cluster.clone());
    let mut headers = vec![
        (":method", "GET".to_string()),
        (":path", hf.path.clone()),
        (":authority", authority),
        ("accept", "application/json".to_string()),
    ];
    if !etag.is_empty() {
        headers.push(("if-none-match", etag.to_string()));
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_answers_and_their_counters() {
        use switchyard_core::Stat;
        let cases = [
            (
                304,
                10,
                FetchAnswer::NotModified,
                Some(Metric::HostsFromNotModified),
            ),
            (
                200,
                MAX_HOST_LIST_BYTES + 1,
                FetchAnswer::TooLarge,
                Some(Metric::HostsFromRejected),
            ),
            (200, MAX_HOST_LIST_BYTES, FetchAnswer::List, None),
            (
                503,
                0,
                FetchAnswer::Failed(503),
                Some(Metric::HostsFromErrors),
            ),
            (0, 0, FetchAnswer::Failed(0), Some(Metric::HostsFromErrors)),
        ];
        for (status, size, answer, counter) in cases {
            assert_eq!(FetchAnswer::of(status, size), answer);
            let fx = answer.effects();
            assert_eq!(fx.stats.len(), usize::from(counter.is_some()));
            if let Some(m) = counter {
                assert_eq!(fx.added(Stat::Fixed(m)), 1);
            }
            assert!(fx.request.is_empty() && fx.response.is_empty() && fx.reply.is_none());
        }
    }

    #[test]
    fn record_round_trips() {
        let r = HostSetRecord {
            version: 3,
            next_fetch_at: 42,
            etag: "\"abc\"".into(),
            hosts_json: r#"[{"address":"10.0.0.1:80","weight":1}]"#.into(),
        };
        assert_eq!(HostSetRecord::decode(Some(&r.encode())), r);
        assert_eq!(HostSetRecord::decode(Some(EMPTY)), HostSetRecord::default());
        assert_eq!(
            HostSetRecord::decode(Some(b"junk")),
            HostSetRecord::default()
        );
        assert_eq!(r.hosts().unwrap()[0].address, "10.0.0.1:80");
        assert_eq!(HostSetRecord::default().hosts(), None);
    }

    #[test]
    fn host_lists_are_validated_like_the_config() {
        let ok = parse_host_list(
            br#"[{"address": "10.0.0.1:80", "weight": 2}, {"address": "10.0.0.2:80"}]"#,
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].weight, 1);
        assert!(parse_host_list(br#"{"hosts": [{"address": "10.0.0.1:80"}]}"#).is_ok());
        for bad in [
            &br#"[]"#[..],
            br#"not json"#,
            br#"[{"address": "10.0.0.1:80", "weight": 0}]"#,
            br#"[{"address": "10.0.0.1:80"}, {"address": "10.0.0.1:80"}]"#,
            br#"[{"address": "nope"}]"#,
        ] {
            let e = parse_host_list(bad).unwrap_err();
            assert!(!e.is_empty());
        }
        let e = parse_host_list(br#"[{"address": "10.0.0.1:80", "weight": 0}]"#).unwrap_err();
        assert!(e.contains("[0].weight"), "{e}");
    }

    #[test]
    fn one_claim_per_interval() {
        let cur = HostSetRecord::default();
        let claimed = claim_fetch(&cur, 100, 50).unwrap();
        assert_eq!(claimed.next_fetch_at, 150);
        assert_eq!(claim_fetch(&claimed, 149, 50), None);
        assert!(claim_fetch(&claimed, 150, 50).is_some());
    }

    #[test]
    fn version_changes_only_when_the_list_changes() {
        let hosts = parse_host_list(br#"[{"address": "10.0.0.1:80"}]"#).unwrap();
        let v1 = apply_fetched(&HostSetRecord::default(), &hosts, "\"e1\"").unwrap();
        assert_eq!(v1.version, 1);
        assert_eq!(apply_fetched(&v1, &hosts, "\"e1\""), None);
        // Same list, new ETag: remembered, but no rebuild.
        let same = apply_fetched(&v1, &hosts, "\"e2\"").unwrap();
        assert_eq!(same.version, 1);
        let more = parse_host_list(br#"[{"address": "10.0.0.1:80"}, {"address": "10.0.0.2:80"}]"#)
            .unwrap();
        assert_eq!(apply_fetched(&same, &more, "\"e3\"").unwrap().version, 2);
    }

    #[test]
    fn fetched_lists_meet_the_table_limits_and_fetches_send_the_etag() {
        let config = Config::parse(
            br#"{"hosts": [{"address": "10.0.0.1:80"}], "hash_key": [{"header": "k"}],
                "vnodes": 10000,
                "hosts_from": {"cluster": "cfg", "path": "/hosts.json"}}"#,
        )
        .unwrap();
        assert!(check_fetched(&config, br#"[{"address": "10.0.0.2:80"}]"#).is_ok());
        // 10000 vnodes x weight 1000 is beyond the ring's point limit.
        let heavy = br#"[{"address": "10.0.0.2:80", "weight": 1000}]"#;
        assert!(check_fetched(&config, heavy).is_err());
        assert!(check_fetched(&config, b"nope").is_err());
        let hf = config.hosts_from.unwrap();
        let names = |h: &[(&'static str, String)]| h.iter().map(|(k, _)| *k).collect::<Vec<_>>();
        let first = fetch_headers(&hf, "");
        assert_eq!(names(&first), [":method", ":path", ":authority", "accept"]);
        assert_eq!(first[2].1, "cfg");
        let again = fetch_headers(&hf, "\"e1\"");
        assert_eq!(
            again.last().unwrap(),
            &("if-none-match", "\"e1\"".to_string())
        );
    }
}
