//! The service configuration: rate limit domains in the YAML format of envoyproxy/ratelimit,
//! plus a few service settings, validated at load; and descriptor matching (pure).
//!
//! A file is either
//! - one or more YAML documents (separated by `---`), each one domain:
//!   `{domain, descriptors}` exactly as envoyproxy/ratelimit writes them; or
//! - one document with `domains:` (a list of such domains) and optional service settings
//!   (`redis_failure`, `redis_timeout_ms`, `redis_connect_timeout_ms`).

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

/// A configuration error naming the offending field (`domains[0].descriptors[1].rate_limit.unit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// What the service answers when Redis cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RedisFailure {
    /// Answer OK (fail open).
    Allow,
    /// Answer OVER_LIMIT (fail closed).
    Deny,
    /// Answer gRPC UNAVAILABLE: the client's own failure mode decides (Envoy's
    /// `failure_mode_deny`).
    #[default]
    Error,
}

impl RedisFailure {
    pub fn parse(s: &str) -> Option<RedisFailure> {
        match s {
            "allow" => Some(RedisFailure::Allow),
            "deny" => Some(RedisFailure::Deny),
            "error" => Some(RedisFailure::Error),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RedisFailure::Allow => "allow",
            RedisFailure::Deny => "deny",
            RedisFailure::Error => "error",
        }
    }
}

/// The unit of a fixed window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
}

impl Unit {
    pub fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3600,
            Unit::Day => 86400,
        }
    }

    /// The RLS v3 `RateLimitResponse.RateLimit.Unit` value.
    pub fn proto(self) -> i32 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 2,
            Unit::Hour => 3,
            Unit::Day => 4,
        }
    }

    fn parse(s: &str) -> Option<Unit> {
        match s.to_ascii_lowercase().as_str() {
            "second" => Some(Unit::Second),
            "minute" => Some(Unit::Minute),
            "hour" => Some(Unit::Hour),
            "day" => Some(Unit::Day),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw (serde) shapes.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServiceFile {
    domains: Vec<RawDomain>,
    #[serde(default)]
    redis_failure: Option<RedisFailure>,
    #[serde(default)]
    redis_timeout_ms: Option<u64>,
    #[serde(default)]
    redis_connect_timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDomain {
    domain: String,
    #[serde(default)]
    descriptors: Vec<RawDescriptor>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDescriptor {
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    descriptors: Vec<RawDescriptor>,
    #[serde(default)]
    shadow_mode: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    unit: String,
    requests_per_unit: u32,
    #[serde(default)]
    name: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Validated shapes.

/// A rate limit attached to a descriptor node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub unit: Unit,
    pub requests_per_unit: u32,
    /// `rate_limit.name`, else the descriptor path (`key_value.key`).
    pub name: String,
    pub shadow_mode: bool,
}

/// One node of a domain's descriptor tree.
#[derive(Debug, Clone, Default)]
pub struct Node {
    pub limit: Option<Limit>,
    /// Children by `key` then value: `Some(v)` exact, `None` any value of the key.
    children: BTreeMap<String, Children>,
}

#[derive(Debug, Clone, Default)]
struct Children {
    exact: BTreeMap<String, Node>,
    /// Values ending in `*` (prefix match), in configuration order.
    prefix: Vec<(String, Node)>,
    any: Option<Box<Node>>,
}

/// One domain: its descriptor tree.
#[derive(Debug, Clone)]
pub struct Domain {
    pub name: String,
    root: Node,
}

/// The whole service configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub domains: BTreeMap<String, Domain>,
    /// From the file (`domains:` form); the CLI may override it.
    pub redis_failure: Option<RedisFailure>,
    pub redis_timeout: Option<Duration>,
    pub redis_connect_timeout: Option<Duration>,
}

/// The limit a request descriptor matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched<'a> {
    pub limit: &'a Limit,
}

impl Domain {
    /// envoyproxy/ratelimit's lookup: walk the tree entry by entry, preferring `key`+`value`,
    /// then a `value` prefix ending in `*`, then `key` alone (any value); the limit applies
    /// when the last entry lands on a node with a `rate_limit`. No match → no limit.
    pub fn lookup(&self, entries: &[(&str, &str)]) -> Option<&Limit> {
        let mut node = &self.root;
        for (i, (key, value)) in entries.iter().enumerate() {
            let children = node.children.get(*key)?;
            let next = children
                .exact
                .get(*value)
                .or_else(|| {
                    children
                        .prefix
                        .iter()
                        .find(|(p, _)| value.starts_with(p.as_str()))
                        .map(|(_, n)| n)
                })
                .or(children.any.as_deref())?;
            if i + 1 == entries.len() {
                return next.limit.as_ref();
            }
            node = next;
        }
        None
    }
}

impl Config {
    /// Parses and validates a configuration file's text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut docs = Vec::new();
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value = serde_yaml::Value::deserialize(doc)
                .map_err(|e| ConfigError::new(format!("document {}", i + 1), e.to_string()))?;
            if !value.is_null() {
                docs.push(value);
            }
        }
        if docs.is_empty() {
            return Err(ConfigError::new("", "the configuration is empty"));
        }
        let has_domains_key = |v: &serde_yaml::Value| {
            v.as_mapping()
                .is_some_and(|m| m.contains_key(serde_yaml::Value::from("domains")))
        };
        if docs.len() == 1 && has_domains_key(&docs[0]) {
            let raw: RawServiceFile = from_value(docs.remove(0), "")?;
            let mut config = build(raw.domains, "domains")?;
            config.redis_failure = raw.redis_failure;
            config.redis_timeout = positive_ms(raw.redis_timeout_ms, "redis_timeout_ms")?;
            config.redis_connect_timeout =
                positive_ms(raw.redis_connect_timeout_ms, "redis_connect_timeout_ms")?;
            return Ok(config);
        }
        let mut raws = Vec::new();
        for (i, doc) in docs.into_iter().enumerate() {
            if has_domains_key(&doc) {
                return Err(ConfigError::new(
                    format!("document {}.domains", i + 1),
                    "a `domains:` file must be the only document",
                ));
            }
            raws.push(from_value::<RawDomain>(
                doc,
                &format!("document {}", i + 1),
            )?);
        }
        build(raws, "document")
    }

    pub fn domain(&self, name: &str) -> Option<&Domain> {
        self.domains.get(name)
    }
}

fn positive_ms(ms: Option<u64>, field: &str) -> Result<Option<Duration>, ConfigError> {
    match ms {
        Some(0) => Err(ConfigError::new(field, "must be at least 1")),
        Some(ms) => Ok(Some(Duration::from_millis(ms))),
        None => Ok(None),
    }
}

fn from_value<T: serde::de::DeserializeOwned>(
    value: serde_yaml::Value,
    prefix: &str,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let path = match (prefix.is_empty(), inner == ".") {
            (true, _) => inner,
            (false, true) => prefix.to_string(),
            (false, false) => format!("{prefix}.{inner}"),
        };
        ConfigError::new(path, e.into_inner().to_string())
    })
}

/// `label` is `domains` (→ `domains[i]`) or `document` (→ `document i+1`).
fn build(raws: Vec<RawDomain>, label: &str) -> Result<Config, ConfigError> {
    let mut domains = BTreeMap::new();
    for (i, raw) in raws.into_iter().enumerate() {
        let at = if label == "domains" {
            format!("domains[{i}]")
        } else {
            format!("document {}", i + 1)
        };
        if raw.domain.is_empty() {
            return Err(ConfigError::new(
                format!("{at}.domain"),
                "must not be empty",
            ));
        }
        if domains.contains_key(&raw.domain) {
            return Err(ConfigError::new(
                format!("{at}.domain"),
                format!("domain {:?} is configured twice", raw.domain),
            ));
        }
        let root = build_children(&raw.descriptors, &format!("{at}.descriptors"), "")?;
        domains.insert(
            raw.domain.clone(),
            Domain {
                name: raw.domain,
                root,
            },
        );
    }
    Ok(Config {
        domains,
        redis_failure: None,
        redis_timeout: None,
        redis_connect_timeout: None,
    })
}

fn build_children(
    raws: &[RawDescriptor],
    at: &str,
    parent_name: &str,
) -> Result<Node, ConfigError> {
    let mut node = Node::default();
    let mut seen = BTreeSet::new();
    for (i, raw) in raws.iter().enumerate() {
        let here = format!("{at}[{i}]");
        if raw.key.is_empty() {
            return Err(ConfigError::new(format!("{here}.key"), "must not be empty"));
        }
        if !seen.insert((raw.key.clone(), raw.value.clone())) {
            return Err(ConfigError::new(
                here,
                format!(
                    "duplicate descriptor key {:?} value {:?} at this level",
                    raw.key, raw.value
                ),
            ));
        }
        let segment = match &raw.value {
            Some(v) => format!("{}_{}", raw.key, v),
            None => raw.key.clone(),
        };
        let name = if parent_name.is_empty() {
            segment
        } else {
            format!("{parent_name}.{segment}")
        };
        let mut child = build_children(&raw.descriptors, &format!("{here}.descriptors"), &name)?;
        if let Some(rl) = &raw.rate_limit {
            let unit = Unit::parse(&rl.unit).ok_or_else(|| {
                ConfigError::new(
                    format!("{here}.rate_limit.unit"),
                    format!(
                        "unknown unit {:?}: expected second, minute, hour or day",
                        rl.unit
                    ),
                )
            })?;
            child.limit = Some(Limit {
                unit,
                requests_per_unit: rl.requests_per_unit,
                name: rl.name.clone().unwrap_or_else(|| name.clone()),
                shadow_mode: raw.shadow_mode,
            });
        } else if raw.shadow_mode {
            return Err(ConfigError::new(
                format!("{here}.shadow_mode"),
                "shadow_mode needs a rate_limit on the same descriptor",
            ));
        }
        let children = node.children.entry(raw.key.clone()).or_default();
        match &raw.value {
            None => children.any = Some(Box::new(child)),
            Some(v) if v.ends_with('*') => {
                children
                    .prefix
                    .push((v.trim_end_matches('*').to_string(), child));
            }
            Some(v) => {
                children.exact.insert(v.clone(), child);
            }
        }
    }
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
domain: edge
descriptors:
  - key: generic_key
    value: api
    rate_limit: { unit: minute, requests_per_unit: 10 }
    descriptors:
      - key: user
        rate_limit: { unit: second, requests_per_unit: 2 }
      - key: user
        value: admin
        rate_limit: { unit: second, requests_per_unit: 100, name: admins }
      - key: user
        value: "bot-*"
        rate_limit: { unit: hour, requests_per_unit: 1 }
        shadow_mode: true
  - key: remote_address
    rate_limit: { unit: DAY, requests_per_unit: 1000 }
  - key: path
    descriptors:
      - key: method
        value: GET
        rate_limit: { unit: second, requests_per_unit: 5 }
"#;

    fn sample() -> Config {
        Config::parse(SAMPLE).unwrap()
    }

    #[test]
    fn single_document_parses() {
        let c = sample();
        assert_eq!(c.domains.len(), 1);
        assert!(c.redis_failure.is_none());
        let d = c.domain("edge").unwrap();
        let l = d.lookup(&[("generic_key", "api")]).unwrap();
        assert_eq!((l.unit, l.requests_per_unit), (Unit::Minute, 10));
        assert_eq!(l.name, "generic_key_api");
    }

    #[test]
    fn nested_exact_beats_prefix_beats_any() {
        let c = sample();
        let d = c.domain("edge").unwrap();
        let admin = d
            .lookup(&[("generic_key", "api"), ("user", "admin")])
            .unwrap();
        assert_eq!(admin.requests_per_unit, 100);
        assert_eq!(admin.name, "admins");
        let bot = d
            .lookup(&[("generic_key", "api"), ("user", "bot-7")])
            .unwrap();
        assert_eq!((bot.unit, bot.shadow_mode), (Unit::Hour, true));
        let alice = d
            .lookup(&[("generic_key", "api"), ("user", "alice")])
            .unwrap();
        assert_eq!(alice.requests_per_unit, 2);
        assert_eq!(alice.name, "generic_key_api.user");
    }

    #[test]
    fn limit_applies_only_at_the_last_entry() {
        let c = sample();
        let d = c.domain("edge").unwrap();
        // Deeper than the tree: no limit.
        assert!(d
            .lookup(&[("generic_key", "api"), ("user", "a"), ("x", "y")])
            .is_none());
        // Unknown key / value: no limit.
        assert!(d.lookup(&[("generic_key", "other")]).is_none());
        assert!(d.lookup(&[("nope", "x")]).is_none());
        // Intermediate node without a limit.
        assert!(d.lookup(&[("path", "/a")]).is_none());
        let get = d.lookup(&[("path", "/a"), ("method", "GET")]).unwrap();
        assert_eq!(get.requests_per_unit, 5);
        assert!(d.lookup(&[("path", "/a"), ("method", "POST")]).is_none());
        assert!(d.lookup(&[]).is_none());
        // Unit is case-insensitive.
        assert_eq!(
            d.lookup(&[("remote_address", "1.2.3.4")]).unwrap().unit,
            Unit::Day
        );
    }

    #[test]
    fn several_documents_and_domains_file() {
        let two = "domain: a\ndescriptors: []\n---\ndomain: b\n";
        let c = Config::parse(two).unwrap();
        assert_eq!(c.domains.keys().collect::<Vec<_>>(), ["a", "b"]);

        let file = r#"
redis_failure: allow
redis_timeout_ms: 20
domains:
  - domain: a
    descriptors:
      - key: k
        rate_limit: { unit: second, requests_per_unit: 1 }
  - domain: b
"#;
        let c = Config::parse(file).unwrap();
        assert_eq!(c.redis_failure, Some(RedisFailure::Allow));
        assert_eq!(c.redis_timeout, Some(Duration::from_millis(20)));
        assert!(c.redis_connect_timeout.is_none());
        assert!(c.domain("a").unwrap().lookup(&[("k", "v")]).is_some());
    }

    fn err(text: &str) -> ConfigError {
        Config::parse(text).unwrap_err()
    }

    #[test]
    fn errors_name_the_field() {
        let e = err("domain: a\ndescriptors:\n  - key: k\n    rate_limit: { unit: week, requests_per_unit: 1 }\n");
        assert_eq!(e.path, "document 1.descriptors[0].rate_limit.unit");
        assert!(e.message.contains("week"), "{e}");

        let e = err("domains:\n  - domain: a\n    descriptors:\n      - key: k\n        rate_limit: { unit: second }\n");
        assert!(e.path.starts_with("domains[0].descriptors[0]"), "{e}");
        assert!(e.message.contains("requests_per_unit"), "{e}");

        let e = err("domains:\n  - domain: a\n    descriptors:\n      - key: k\n        rate_limit: { unit: second, requests_per_unit: -1 }\n");
        assert!(e.to_string().contains("requests_per_unit"), "{e}");

        let e = err("domain: a\ndescriptors:\n  - key: k\n    valu: x\n");
        assert!(e.message.contains("valu"), "{e}");
        assert_eq!(e.path, "document 1.descriptors[0].valu");

        let e = err("domain: a\n---\ndomain: a\n");
        assert_eq!(e.path, "document 2.domain");

        let e = err("domain: ''\n");
        assert_eq!(e.path, "document 1.domain");

        let e =
            err("domain: a\ndescriptors:\n  - key: k\n    value: v\n  - key: k\n    value: v\n");
        assert_eq!(e.path, "document 1.descriptors[1]");

        let e = err("domain: a\ndescriptors:\n  - key: ''\n");
        assert_eq!(e.path, "document 1.descriptors[0].key");

        let e = err("domain: a\ndescriptors:\n  - key: k\n    shadow_mode: true\n");
        assert_eq!(e.path, "document 1.descriptors[0].shadow_mode");

        let e = err("domains: []\nredis_failure: maybe\n");
        assert_eq!(e.path, "redis_failure");

        let e = err("domains: []\nredis_timeout_ms: 0\n");
        assert_eq!(e.path, "redis_timeout_ms");

        assert!(err("").message.contains("empty"));
        assert!(err("domain: [").path.starts_with("document 1"));
    }
}
