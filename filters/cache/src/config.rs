//! The cache filter's configuration and its validation.

use crate::key::{KeySpec, QueryKey};
use crate::l1::L1Config;
use crate::store::{Eviction, StoreConfig};
use serde::Deserialize;
use switchyard_core::config::index_path;
use switchyard_core::{parse_config, ConfigError, Duration, Matcher};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_max_bytes")]
    max_bytes: u64,
    #[serde(default = "default_max_entry_bytes")]
    max_entry_bytes: u64,
    #[serde(default)]
    max_entries: Option<u64>,
    #[serde(default)]
    max_collect_bytes: Option<u64>,
    #[serde(default = "default_eviction")]
    eviction: String,
    #[serde(default = "default_sample")]
    eviction_sample: u64,
    #[serde(default)]
    key: RawKey,
    #[serde(default)]
    default_ttl: Duration,
    #[serde(default = "default_heuristic_max")]
    heuristic_max_ttl: Duration,
    #[serde(default)]
    bypass: Vec<Matcher>,
    #[serde(default)]
    purge: Option<RawPurge>,
    #[serde(default)]
    store_set_cookie: bool,
    #[serde(default)]
    upstream_cluster: Option<String>,
    #[serde(default)]
    cluster_header: Option<String>,
    #[serde(default = "default_targeted")]
    targeted_cache_control: Vec<String>,
    #[serde(default)]
    host_header: Option<String>,
    #[serde(default = "default_upstream_timeout")]
    upstream_timeout: Duration,
    #[serde(default = "default_coalesce_timeout")]
    coalesce_timeout: Duration,
    #[serde(default = "default_uncacheable_ttl")]
    uncacheable_ttl: Duration,
    #[serde(default = "default_tag_headers")]
    tag_headers: Vec<String>,
    #[serde(default = "default_status_name")]
    cache_status_name: String,
    /// Absent: the default L1; `null`: none.
    #[serde(default = "default_l1")]
    l1: Option<RawL1>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawL1 {
    #[serde(default = "default_l1_bytes")]
    max_bytes: u64,
    #[serde(default = "default_l1_entries")]
    max_entries: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    #[serde(default)]
    query: Option<serde_json::Value>,
    #[serde(default)]
    headers: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPurge {
    #[serde(default = "default_purge_method")]
    method: String,
    #[serde(default = "default_token_header")]
    token_header: String,
    token: String,
    #[serde(default = "default_tag_header")]
    tag_header: String,
    #[serde(default)]
    path: Option<String>,
}

fn default_targeted() -> Vec<String> {
    vec!["cdn-cache-control".into()]
}
fn default_max_bytes() -> u64 {
    64 << 20
}
fn default_max_entry_bytes() -> u64 {
    1 << 20
}
fn default_eviction() -> String {
    "lru".into()
}
fn default_sample() -> u64 {
    16
}
fn default_heuristic_max() -> Duration {
    Duration::from_secs(86_400)
}
fn default_upstream_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_coalesce_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_uncacheable_ttl() -> Duration {
    Duration::from_secs(10)
}
fn default_tag_headers() -> Vec<String> {
    vec!["cache-tag".into(), "surrogate-key".into()]
}
fn default_status_name() -> String {
    "switchyard".into()
}
fn default_l1() -> Option<RawL1> {
    Some(RawL1 {
        max_bytes: default_l1_bytes(),
        max_entries: default_l1_entries(),
    })
}
fn default_l1_bytes() -> u64 {
    L1Config::DEFAULT.max_bytes
}
fn default_l1_entries() -> u64 {
    L1Config::DEFAULT.max_entries as u64
}
fn default_purge_method() -> String {
    "PURGE".into()
}
fn default_token_header() -> String {
    "x-purge-token".into()
}
fn default_tag_header() -> String {
    "x-purge-tag".into()
}

/// Purge settings.
#[derive(Debug, Clone)]
pub struct PurgeConfig {
    pub method: String,
    pub token_header: String,
    pub token: String,
    pub tag_header: String,
    /// Requests to this exact path (any method) are purges too, target in the query.
    pub path: Option<String>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub max_bytes: u64,
    pub max_entry_bytes: u64,
    /// Bytes of response bodies one VM (worker) may hold while collecting misses to store.
    pub max_collect_bytes: u64,
    pub slots: usize,
    pub eviction: Eviction,
    pub eviction_sample: usize,
    pub key: KeySpec,
    pub default_ttl: u64,
    pub heuristic_max_ttl: u64,
    pub bypass: Vec<Matcher>,
    pub purge: Option<PurgeConfig>,
    pub store_set_cookie: bool,
    pub upstream_cluster: Option<String>,
    /// The header carrying the host choice for Envoy's `override_host` (hashring's output).
    pub host_header: String,
    /// Targeted cache-control fields this cache obeys instead of `Cache-Control` (RFC 9213),
    /// lower-case, in preference order.
    pub targeted_cache_control: Vec<String>,
    pub upstream_timeout: Duration,
    pub coalesce_timeout: Duration,
    /// How long a worker sends a key's misses upstream without coalescing after an answer that
    /// could not be stored ([`crate::uncacheable`]); 0: never.
    pub uncacheable_ttl: Duration,
    pub tag_headers: Vec<String>,
    pub cache_status_name: String,
    /// Each worker's L1 of hot entries ([`crate::l1`]).
    pub l1: L1Config,
}

impl Config {
    /// The store's settings, its shared-data keys under `prefix`.
    pub fn store_config(&self, prefix: &str) -> StoreConfig {
        StoreConfig {
            prefix: prefix.to_string(),
            max_bytes: self.max_bytes,
            slots: self.slots,
            eviction: self.eviction,
            sample: self.eviction_sample,
            writing_timeout_ms: 60_000,
        }
    }
}

/// Smallest entry the default slot count plans for: one slot per 16 KiB of `max_bytes`.
const BYTES_PER_DEFAULT_SLOT: u64 = 16 * 1024;
const MAX_SLOTS: u64 = 16_384;
/// Largest L1 per worker.
const MAX_L1_BYTES: u64 = 1 << 30;

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn parse_query_key(v: Option<&serde_json::Value>) -> Result<QueryKey, ConfigError> {
    let names = |list: &serde_json::Value, field: &str| -> Result<Vec<String>, ConfigError> {
        let path = format!("key.query.{field}");
        let arr = list
            .as_array()
            .ok_or_else(|| ConfigError::new(&path, "expected a list of parameter names"))?;
        arr.iter()
            .enumerate()
            .map(|(i, n)| match n.as_str() {
                Some(s) if !s.is_empty() => Ok(s.to_string()),
                _ => Err(ConfigError::new(
                    index_path(&path, i),
                    "expected a non-empty parameter name",
                )),
            })
            .collect()
    };
    match v {
        None => Ok(QueryKey::All),
        Some(serde_json::Value::String(s)) if s == "all" => Ok(QueryKey::All),
        Some(serde_json::Value::String(s)) if s == "none" => Ok(QueryKey::None),
        Some(serde_json::Value::Object(o)) if o.len() == 1 => {
            if let Some(list) = o.get("include") {
                Ok(QueryKey::Include(names(list, "include")?))
            } else if let Some(list) = o.get("exclude") {
                Ok(QueryKey::Exclude(names(list, "exclude")?))
            } else {
                Err(ConfigError::new(
                    "key.query",
                    "expected {\"include\": [...]} or {\"exclude\": [...]}",
                ))
            }
        }
        Some(_) => Err(ConfigError::new(
            "key.query",
            "expected \"all\", \"none\", {\"include\": [names]} or {\"exclude\": [names]}",
        )),
    }
}

/// Parses and validates a configuration (exactly what `on_configure` runs).
pub fn parse(json: &[u8]) -> Result<Config, ConfigError> {
    let raw: RawConfig = parse_config(json)?;
    if raw.max_bytes < 4096 {
        return Err(ConfigError::new("max_bytes", "must be at least 4096"));
    }
    if raw.max_entry_bytes == 0 || raw.max_entry_bytes > raw.max_bytes {
        return Err(ConfigError::new(
            "max_entry_bytes",
            "must be between 1 and max_bytes",
        ));
    }
    let max_collect_bytes = raw
        .max_collect_bytes
        .unwrap_or(raw.max_entry_bytes.saturating_mul(16).max(16 << 20));
    if max_collect_bytes < raw.max_entry_bytes {
        return Err(ConfigError::new(
            "max_collect_bytes",
            "must be at least max_entry_bytes",
        ));
    }
    let slots = match raw.max_entries {
        Some(n) if (1..=MAX_SLOTS).contains(&n) => n,
        Some(_) => {
            return Err(ConfigError::new(
                "max_entries",
                format!("must be between 1 and {MAX_SLOTS}"),
            ))
        }
        None => (raw.max_bytes / BYTES_PER_DEFAULT_SLOT).clamp(16, 1024),
    } as usize;
    let eviction = match raw.eviction.as_str() {
        "lru" => Eviction::Lru,
        "lfu" => Eviction::Lfu,
        "fifo" => Eviction::Fifo,
        _ => {
            return Err(ConfigError::new(
                "eviction",
                "expected \"lru\", \"lfu\" or \"fifo\"",
            ))
        }
    };
    if !(1..=1024).contains(&raw.eviction_sample) {
        return Err(ConfigError::new(
            "eviction_sample",
            "must be between 1 and 1024",
        ));
    }
    let query = parse_query_key(raw.key.query.as_ref())?;
    let mut headers = Vec::new();
    for (i, h) in raw.key.headers.iter().enumerate() {
        if !is_token(h) {
            return Err(ConfigError::new(
                index_path("key.headers", i),
                "expected a header name",
            ));
        }
        headers.push(h.to_ascii_lowercase());
    }
    let purge = match raw.purge {
        None => None,
        Some(p) => {
            if !is_token(&p.method) {
                return Err(ConfigError::new("purge.method", "expected an HTTP method"));
            }
            if matches!(
                p.method.to_ascii_uppercase().as_str(),
                "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS"
            ) {
                return Err(ConfigError::new(
                    "purge.method",
                    "must not be a standard method (use e.g. PURGE)",
                ));
            }
            if !is_token(&p.token_header) {
                return Err(ConfigError::new(
                    "purge.token_header",
                    "expected a header name",
                ));
            }
            if !is_token(&p.tag_header) {
                return Err(ConfigError::new(
                    "purge.tag_header",
                    "expected a header name",
                ));
            }
            if let Some(path) = &p.path {
                if !path.starts_with('/') || path.contains('?') {
                    return Err(ConfigError::new(
                        "purge.path",
                        "expected a path starting with / and without a query",
                    ));
                }
            }
            if p.token.is_empty() {
                return Err(ConfigError::new("purge.token", "must not be empty"));
            }
            Some(PurgeConfig {
                method: p.method.to_ascii_uppercase(),
                token_header: p.token_header.to_ascii_lowercase(),
                token: p.token,
                tag_header: p.tag_header.to_ascii_lowercase(),
                path: p.path,
            })
        }
    };
    let header_name =
        |field: &str, v: Option<String>, default: &str| -> Result<String, ConfigError> {
            let h = v.unwrap_or_else(|| default.to_string());
            if h.is_empty()
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            {
                return Err(ConfigError::new(
                    field,
                    format!("{h:?} is not a lower-case header name"),
                ));
            }
            Ok(h)
        };
    let cluster_header = header_name(
        "cluster_header",
        raw.cluster_header.clone(),
        switchyard_core::routing::CLUSTER_HEADER,
    )?;
    let host_header = header_name("host_header", raw.host_header.clone(), "x-upstream-host")?;
    let targeted_cache_control = raw
        .targeted_cache_control
        .iter()
        .enumerate()
        .map(|(i, h)| {
            header_name(
                &index_path("targeted_cache_control", i),
                Some(h.to_ascii_lowercase()),
                "",
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(c) = &raw.upstream_cluster {
        if c.is_empty() {
            return Err(ConfigError::new("upstream_cluster", "must not be empty"));
        }
    }
    if raw.upstream_timeout.is_zero() {
        return Err(ConfigError::new("upstream_timeout", "must be positive"));
    }
    if raw.uncacheable_ttl > Duration::from_secs(3600) {
        return Err(ConfigError::new("uncacheable_ttl", "at most 1h"));
    }
    for (i, h) in raw.tag_headers.iter().enumerate() {
        if !is_token(h) {
            return Err(ConfigError::new(
                index_path("tag_headers", i),
                "expected a header name",
            ));
        }
    }
    let l1 = match raw.l1 {
        None => L1Config::OFF,
        Some(RawL1 { max_bytes, .. }) if max_bytes > MAX_L1_BYTES => {
            return Err(ConfigError::new(
                "l1.max_bytes",
                format!("must be at most {MAX_L1_BYTES} (1 GiB)"),
            ))
        }
        Some(RawL1 { max_entries, .. }) if max_entries > MAX_SLOTS => {
            return Err(ConfigError::new(
                "l1.max_entries",
                format!("must be at most {MAX_SLOTS}"),
            ))
        }
        Some(r) => L1Config {
            max_bytes: r.max_bytes,
            max_entries: r.max_entries as usize,
        },
    };
    if !is_token(&raw.cache_status_name) {
        return Err(ConfigError::new(
            "cache_status_name",
            "expected a token (RFC 9211 cache name)",
        ));
    }
    Ok(Config {
        max_bytes: raw.max_bytes,
        max_entry_bytes: raw.max_entry_bytes,
        max_collect_bytes,
        slots,
        eviction,
        eviction_sample: raw.eviction_sample as usize,
        key: KeySpec {
            query,
            headers,
            cluster_header,
            seed: 0,
        },
        default_ttl: raw.default_ttl.as_secs(),
        heuristic_max_ttl: raw.heuristic_max_ttl.as_secs(),
        bypass: raw.bypass,
        purge,
        store_set_cookie: raw.store_set_cookie,
        upstream_cluster: raw.upstream_cluster,
        host_header,
        targeted_cache_control,
        upstream_timeout: raw.upstream_timeout,
        coalesce_timeout: raw.coalesce_timeout,
        uncacheable_ttl: raw.uncacheable_ttl,
        tag_headers: raw
            .tag_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        cache_status_name: raw.cache_status_name,
        l1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUE_EXAMPLE: &str = r#"{
      "max_bytes": 67108864,
      "max_entry_bytes": 1048576,
      "eviction": "lru",
      "key": {"query": "all", "headers": []},
      "default_ttl": "0s",
      "bypass": [{"path": {"prefix": "/admin"}}],
      "purge": {"method": "PURGE", "token_header": "x-purge-token", "token": "change-me"}
    }"#;

    #[test]
    fn accepts_the_issue_example_exactly() {
        let c = parse(ISSUE_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(c.max_bytes, 64 << 20);
        assert_eq!(c.eviction, Eviction::Lru);
        assert_eq!(c.key.query, QueryKey::All);
        assert_eq!(c.default_ttl, 0);
        assert_eq!(c.slots, 1024);
        let p = c.purge.unwrap();
        assert_eq!(
            (p.method.as_str(), p.token.as_str()),
            ("PURGE", "change-me")
        );
        assert_eq!(c.bypass.len(), 1);
    }

    #[test]
    fn defaults_and_query_forms() {
        let c = parse(b"{}").unwrap();
        assert_eq!(c.max_entry_bytes, 1 << 20);
        assert!(c.purge.is_none());
        let c = parse(br#"{"key": {"query": {"include": ["id", "page"]}}}"#).unwrap();
        assert_eq!(
            c.key.query,
            QueryKey::Include(vec!["id".into(), "page".into()])
        );
        let c = parse(br#"{"key": {"query": {"exclude": ["utm"]}}, "eviction": "fifo"}"#).unwrap();
        assert_eq!(c.key.query, QueryKey::Exclude(vec!["utm".into()]));
        assert_eq!(c.eviction, Eviction::Fifo);
    }

    #[test]
    fn l1_is_on_by_default_and_null_or_zero_turns_it_off() {
        assert_eq!(parse(b"{}").unwrap().l1, L1Config::DEFAULT);
        let c = parse(br#"{"l1": {"max_bytes": 4096}}"#).unwrap();
        assert_eq!((c.l1.max_bytes, c.l1.max_entries), (4096, 256));
        let c = parse(br#"{"l1": {"max_entries": 8}}"#).unwrap();
        assert_eq!((c.l1.max_bytes, c.l1.max_entries), (1 << 20, 8));
        for off in [
            r#"{"l1": null}"#,
            r#"{"l1": {"max_bytes": 0}}"#,
            r#"{"l1": {"max_entries": 0}}"#,
        ] {
            assert!(!parse(off.as_bytes()).unwrap().l1.enabled(), "{off}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&str, &str)] = &[
            (r#"{"eviction": "random"}"#, "eviction"),
            (r#"{"max_bytes": 10}"#, "max_bytes"),
            (
                r#"{"max_bytes": 8192, "max_entry_bytes": 9000}"#,
                "max_entry_bytes",
            ),
            (r#"{"max_entries": 0}"#, "max_entries"),
            (r#"{"key": {"query": "some"}}"#, "key.query"),
            (
                r#"{"key": {"query": {"include": [1]}}}"#,
                "key.query.include[0]",
            ),
            (r#"{"key": {"headers": ["bad header"]}}"#, "key.headers[0]"),
            (r#"{"default_ttl": "soon"}"#, "default_ttl"),
            (
                r#"{"bypass": [{"path": {"prefx": "/"}}]}"#,
                "bypass[0].path",
            ),
            (r#"{"purge": {"token": ""}}"#, "purge.token"),
            (r#"{"purge": {"token": "t", "path": "x"}}"#, "purge.path"),
            (
                r#"{"purge": {"method": "GET", "token": "x"}}"#,
                "purge.method",
            ),
            (r#"{"purge": {"method": "PURGE"}}"#, "purge"),
            (r#"{"upstream_cluster": ""}"#, "upstream_cluster"),
            (r#"{"eviction_sample": 0}"#, "eviction_sample"),
            (r#"{"max_byte": 1}"#, "max_byte"),
            (r#"{"l1": {"max_bytes": -1}}"#, "l1.max_bytes"),
            (r#"{"l1": {"max_bytes": 2147483648}}"#, "l1.max_bytes"),
            (r#"{"l1": {"max_entries": 16385}}"#, "l1.max_entries"),
            (r#"{"l1": {"max_entrys": 1}}"#, "l1.max_entrys"),
            (r#"{"l1": 5}"#, "l1"),
            (r#"{"uncacheable_ttl": "2h"}"#, "uncacheable_ttl"),
            (r#"{"uncacheable_ttl": "often"}"#, "uncacheable_ttl"),
        ];
        for (json, path) in cases {
            let err = parse(json.as_bytes()).unwrap_err();
            assert!(err.path.starts_with(path), "{json}: {err}");
        }
    }
}
