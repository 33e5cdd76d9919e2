//! Configuration: the JSON the user writes, validated and compiled into [`Settings`].

use serde::Deserialize;
use switchyard_core::config::index_path;
use switchyard_core::{parse_config, ConfigError, Duration, KeySources, Matcher};

/// Highest `requests` of a `sliding_window` limit: the exact sliding log keeps one timestamp
/// (4 bytes) per admitted request in the window.
pub const MAX_SLIDING_REQUESTS: u64 = 10_000;
/// Longest `per` of a `sliding_window` limit (timestamps are stored as 32-bit millisecond ages).
pub const MAX_SLIDING_WINDOW_MS: u64 = 30 * 24 * 3600 * 1000;
/// Highest accepted `max_keys`.
pub const MAX_KEYS_LIMIT: u64 = 10_000_000;
/// Upper bound of the shared memory one configuration may reserve (`max_keys` x largest entry).
pub const MAX_STATE_BYTES: u64 = 512 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Reject requests over the limit.
    #[default]
    Enforce,
    /// Count and log would-be rejections, tag the response, never reject.
    Shadow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Admit the request when shared state cannot be updated.
    #[default]
    Allow,
    /// Reject the request when shared state cannot be updated.
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HeaderStyle {
    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
    #[default]
    Ietf,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    Legacy,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// GCRA: capacity `burst`, refilled at `requests` per `per`.
    #[default]
    TokenBucket,
    /// Exact sliding log: never more than `requests` in any interval of length `per`.
    SlidingWindow,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    failure_mode: FailureMode,
    #[serde(default = "default_status")]
    status: u16,
    #[serde(default)]
    headers: HeaderStyle,
    #[serde(default = "default_max_keys")]
    max_keys: u64,
    #[serde(default = "default_max_cas_retries")]
    max_cas_retries: u32,
    rules: Vec<RawRule>,
}

fn default_status() -> u16 {
    429
}
fn default_max_keys() -> u64 {
    100_000
}
fn default_max_cas_retries() -> u32 {
    32
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Limits kept in this Envoy's shared data.
    #[default]
    Local,
    /// Limits kept by a rate limit service (`envoy.service.ratelimit.v3`), asked per request
    /// after the rule's local tiers admitted it.
    Global,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(default, rename = "match")]
    matcher: Option<Matcher>,
    #[serde(default)]
    key: KeySources,
    #[serde(default)]
    algorithm: Algorithm,
    #[serde(default)]
    limits: Vec<RawLimit>,
    #[serde(default)]
    scope: Scope,
    #[serde(default)]
    service: Option<RawService>,
    #[serde(default)]
    lease: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    cluster: String,
    domain: String,
    #[serde(default)]
    timeout: Option<Duration>,
    #[serde(default)]
    failure_mode: Option<FailureMode>,
    #[serde(default)]
    descriptor_keys: Option<Vec<String>>,
}

/// Default `service.timeout`.
pub const DEFAULT_GLOBAL_TIMEOUT_MS: u64 = 20;
/// Longest `service.timeout`.
pub const MAX_GLOBAL_TIMEOUT_MS: u64 = 10_000;
/// Largest `lease`.
pub const MAX_LEASE: u64 = 10_000;

/// Where and how a `scope: global` rule asks the rate limit service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalSpec {
    /// The Envoy cluster of the service (gRPC, HTTP/2).
    pub cluster: String,
    pub domain: String,
    pub timeout_ns: u64,
    /// What a failed call (unreachable, timeout, non-OK gRPC status, garbage) decides.
    pub failure_mode: FailureMode,
    /// The descriptor entry key of each key part.
    pub descriptor_keys: Vec<String>,
    /// Hits taken from the service per call (1: no leasing).
    pub lease: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    requests: u64,
    per: Duration,
    #[serde(default)]
    burst: Option<u64>,
}

/// One limit ("tier") of a rule, in the units the limiter works with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub requests: u64,
    pub per_ns: u64,
    /// Token bucket capacity; equal to `requests` for sliding windows.
    pub burst: u64,
}

impl Tier {
    /// GCRA emission interval: the time one request's token takes to refill.
    pub fn interval_ns(&self) -> u64 {
        (self.per_ns / self.requests.max(1)).max(1)
    }
    /// Sliding window length in whole milliseconds, rounded up so the guarantee stays exact.
    pub fn per_ms(&self) -> u64 {
        self.per_ns.div_ceil(1_000_000).max(1)
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub matcher: Matcher,
    pub key: KeySources,
    pub algorithm: Algorithm,
    /// Local tiers; may be empty for a `scope: global` rule.
    pub tiers: Vec<Tier>,
    /// `scope: global`: the service to ask once the local tiers admitted the request.
    pub global: Option<GlobalSpec>,
    /// Identifies this rule's entries in shared data; changes when the rule's semantics change,
    /// so a reconfigured rule never reads state written under different limits.
    pub tag: u32,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: Mode,
    pub failure_mode: FailureMode,
    pub status: u16,
    pub headers: HeaderStyle,
    pub max_keys: u64,
    pub max_cas_retries: u32,
    pub rules: Vec<Rule>,
}

/// Parses and validates a configuration exactly as `on_configure` does.
pub fn parse(json: &[u8]) -> Result<Settings, ConfigError> {
    let raw: RawConfig = parse_config(json)?;
    if !(400..=599).contains(&raw.status) {
        return Err(ConfigError::new(
            "status",
            format!("must be an HTTP error status 400-599, got {}", raw.status),
        ));
    }
    if raw.max_keys == 0 || raw.max_keys > MAX_KEYS_LIMIT {
        return Err(ConfigError::new(
            "max_keys",
            format!("must be between 1 and {MAX_KEYS_LIMIT}"),
        ));
    }
    if raw.max_cas_retries == 0 || raw.max_cas_retries > 1000 {
        return Err(ConfigError::new(
            "max_cas_retries",
            "must be between 1 and 1000",
        ));
    }
    if raw.rules.is_empty() {
        return Err(ConfigError::new("rules", "must list at least one rule"));
    }
    let mut rules: Vec<Rule> = Vec::with_capacity(raw.rules.len());
    for (i, r) in raw.rules.into_iter().enumerate() {
        let at = index_path("rules", i);
        let rule = compile_rule(r, &at, raw.failure_mode)?;
        if rules.iter().any(|other| other.name == rule.name) {
            return Err(ConfigError::new(
                format!("{at}.name"),
                format!("duplicate rule name {:?}", rule.name),
            ));
        }
        rules.push(rule);
    }
    let largest_entry = rules.iter().map(max_entry_bytes).max().unwrap_or(0);
    if raw.max_keys.saturating_mul(largest_entry) > MAX_STATE_BYTES {
        return Err(ConfigError::new(
            "max_keys",
            format!(
                "max_keys x largest entry ({largest_entry} bytes) exceeds the {} MiB state budget; lower max_keys or the sliding_window requests",
                MAX_STATE_BYTES / (1024 * 1024)
            ),
        ));
    }
    Ok(Settings {
        mode: raw.mode,
        failure_mode: raw.failure_mode,
        status: raw.status,
        headers: raw.headers,
        max_keys: raw.max_keys,
        max_cas_retries: raw.max_cas_retries,
        rules,
    })
}

fn compile_rule(r: RawRule, at: &str, failure_mode: FailureMode) -> Result<Rule, ConfigError> {
    let name_ok = !r.name.is_empty()
        && r.name.len() <= 64
        && r.name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !name_ok {
        return Err(ConfigError::new(
            format!("{at}.name"),
            "must be 1-64 characters of [A-Za-z0-9_-] (it is used in metric names and headers)",
        ));
    }
    let global = compile_global(&r, at, failure_mode)?;
    if r.limits.is_empty() && global.is_none() {
        return Err(ConfigError::new(
            format!("{at}.limits"),
            "must list at least one limit",
        ));
    }
    if r.limits.len() > 16 {
        return Err(ConfigError::new(
            format!("{at}.limits"),
            "at most 16 limits per rule",
        ));
    }
    let mut tiers = Vec::with_capacity(r.limits.len());
    for (j, l) in r.limits.iter().enumerate() {
        let lat = index_path(&format!("{at}.limits"), j);
        tiers.push(compile_tier(l, r.algorithm, &lat)?);
    }
    let tag = rule_tag(&r.name, r.algorithm, &tiers, &r.key.labels());
    Ok(Rule {
        name: r.name,
        matcher: r.matcher.unwrap_or_default(),
        key: r.key,
        algorithm: r.algorithm,
        tiers,
        global,
        tag,
    })
}

/// The descriptor entry key a key part gets by default (Envoy's own names where it has them).
fn default_descriptor_key(source: &switchyard_core::KeySource) -> String {
    use switchyard_core::KeySource as K;
    match source {
        K::ClientIp { .. } => "remote_address".into(),
        K::Header(h) => h.to_ascii_lowercase(),
        K::Cookie(c) => format!("cookie.{c}"),
        K::Query(q) => format!("query.{q}"),
        K::Path => "path".into(),
        K::Method => "method".into(),
        K::Authority => "authority".into(),
        K::Literal(_) => "generic_key".into(),
        K::Composite(_) => "composite".into(),
    }
}

fn compile_global(
    r: &RawRule,
    at: &str,
    failure_mode: FailureMode,
) -> Result<Option<GlobalSpec>, ConfigError> {
    match (r.scope, &r.service) {
        (Scope::Local, None) => {
            if r.lease.is_some() {
                return Err(ConfigError::new(
                    format!("{at}.lease"),
                    "lease applies to scope \"global\" rules only",
                ));
            }
            Ok(None)
        }
        (Scope::Local, Some(_)) => Err(ConfigError::new(
            format!("{at}.service"),
            "service applies to scope \"global\" rules only; add \"scope\": \"global\"",
        )),
        (Scope::Global, None) => Err(ConfigError::new(
            format!("{at}.service"),
            "a scope \"global\" rule needs a service: {\"cluster\": ..., \"domain\": ...}",
        )),
        (Scope::Global, Some(s)) => {
            let sat = format!("{at}.service");
            if s.cluster.is_empty() {
                return Err(ConfigError::new(
                    format!("{sat}.cluster"),
                    "must name the Envoy cluster of the rate limit service",
                ));
            }
            if s.domain.is_empty() {
                return Err(ConfigError::new(
                    format!("{sat}.domain"),
                    "must not be empty",
                ));
            }
            let timeout_ns = match s.timeout {
                None => DEFAULT_GLOBAL_TIMEOUT_MS * 1_000_000,
                Some(t) => {
                    let ns = t.as_nanos();
                    if !(1_000_000..=MAX_GLOBAL_TIMEOUT_MS * 1_000_000).contains(&ns) {
                        return Err(ConfigError::new(
                            format!("{sat}.timeout"),
                            format!("must be between 1ms and {MAX_GLOBAL_TIMEOUT_MS}ms, got {t}"),
                        ));
                    }
                    ns
                }
            };
            let parts = &r.key.0;
            let descriptor_keys = match &s.descriptor_keys {
                None => parts.iter().map(default_descriptor_key).collect(),
                Some(keys) => {
                    if keys.len() != parts.len() {
                        return Err(ConfigError::new(
                            format!("{sat}.descriptor_keys"),
                            format!(
                                "must name one descriptor key per key part ({} parts, {} names)",
                                parts.len(),
                                keys.len()
                            ),
                        ));
                    }
                    for (j, k) in keys.iter().enumerate() {
                        if k.is_empty() {
                            return Err(ConfigError::new(
                                index_path(&format!("{sat}.descriptor_keys"), j),
                                "must not be empty",
                            ));
                        }
                    }
                    keys.clone()
                }
            };
            if parts.is_empty() {
                return Err(ConfigError::new(
                    format!("{at}.key"),
                    "a scope \"global\" rule needs at least one key part (a descriptor needs an entry); use {\"literal\": \"name\"} for one key for everyone",
                ));
            }
            let lease = match r.lease {
                None => 1,
                Some(n) if (1..=MAX_LEASE).contains(&n) => n as u32,
                Some(_) => {
                    return Err(ConfigError::new(
                        format!("{at}.lease"),
                        format!("must be between 1 and {MAX_LEASE}"),
                    ))
                }
            };
            Ok(Some(GlobalSpec {
                cluster: s.cluster.clone(),
                domain: s.domain.clone(),
                timeout_ns,
                failure_mode: s.failure_mode.unwrap_or(failure_mode),
                descriptor_keys,
                lease,
            }))
        }
    }
}

fn compile_tier(l: &RawLimit, algorithm: Algorithm, at: &str) -> Result<Tier, ConfigError> {
    if l.requests == 0 {
        return Err(ConfigError::new(
            format!("{at}.requests"),
            "must be at least 1",
        ));
    }
    let per_ns = l.per.as_nanos();
    if per_ns < 1_000_000 {
        return Err(ConfigError::new(
            format!("{at}.per"),
            format!("must be at least 1ms, got {}", l.per),
        ));
    }
    let burst =
        match (algorithm, l.burst) {
            (Algorithm::SlidingWindow, Some(_)) => return Err(ConfigError::new(
                format!("{at}.burst"),
                "burst applies to token_bucket only; a sliding window admits `requests` per `per`",
            )),
            (_, Some(0)) => {
                return Err(ConfigError::new(
                    format!("{at}.burst"),
                    "must be at least 1",
                ))
            }
            (_, Some(b)) => b,
            (_, None) => l.requests,
        };
    match algorithm {
        Algorithm::TokenBucket => {
            if l.requests > per_ns {
                return Err(ConfigError::new(
                    format!("{at}.requests"),
                    "more than one request per nanosecond cannot be represented",
                ));
            }
            let tier = Tier {
                requests: l.requests,
                per_ns,
                burst,
            };
            if tier.interval_ns().checked_mul(burst).is_none() {
                return Err(ConfigError::new(format!("{at}.burst"), "too large"));
            }
            Ok(tier)
        }
        Algorithm::SlidingWindow => {
            if l.requests > MAX_SLIDING_REQUESTS {
                return Err(ConfigError::new(
                    format!("{at}.requests"),
                    format!("sliding_window keeps one timestamp per request: at most {MAX_SLIDING_REQUESTS}"),
                ));
            }
            if per_ns / 1_000_000 > MAX_SLIDING_WINDOW_MS {
                return Err(ConfigError::new(
                    format!("{at}.per"),
                    "sliding_window windows are at most 30 days",
                ));
            }
            Ok(Tier {
                requests: l.requests,
                per_ns,
                burst: l.requests,
            })
        }
    }
}

fn rule_tag(name: &str, algorithm: Algorithm, tiers: &[Tier], key_labels: &str) -> u32 {
    let mut s = format!("{name}|{algorithm:?}|{key_labels}");
    for t in tiers {
        s.push_str(&format!("|{}/{}/{}", t.requests, t.per_ns, t.burst));
    }
    // Fold the 64-bit hash; 32 bits only have to tell this configuration's rules apart.
    let h = switchyard_core::hash::stable_hash64(s.as_bytes());
    (h ^ (h >> 32)) as u32
}

/// The largest shared-data entry a rule can produce (see `bucket.rs` for the layout).
pub fn max_entry_bytes(rule: &Rule) -> u64 {
    let state: u64 = match rule.algorithm {
        Algorithm::TokenBucket => 8 * rule.tiers.len() as u64,
        Algorithm::SlidingWindow => rule.tiers.iter().map(|t| 2 + 4 * t.requests).sum(),
    };
    crate::bucket::ENTRY_OVERHEAD as u64 + crate::bucket::MAX_KEY_ID as u64 + state
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const ISSUE_EXAMPLE: &str = r#"{
      "mode": "enforce",
      "failure_mode": "allow",
      "status": 429,
      "headers": "ietf",
      "max_keys": 100000,
      "rules": [
        {
          "name": "per-ip",
          "match": {"path": {"prefix": "/api"}},
          "key": [{"client_ip": {"trusted_hops": 0}}],
          "limits": [
            {"requests": 1, "per": "1s"},
            {"requests": 5, "per": "10s"},
            {"requests": 10, "per": "1m"}
          ]
        },
        {
          "name": "per-user-endpoint",
          "key": [{"header": "x-user-id"}, {"path": true}],
          "algorithm": "sliding_window",
          "limits": [{"requests": 100, "per": "1m"}]
        }
      ]
    }"#;

    fn err(json: &str) -> ConfigError {
        parse(json.as_bytes()).unwrap_err()
    }

    #[test]
    fn issue_example_is_accepted_as_written() {
        let s = parse(ISSUE_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(s.mode, Mode::Enforce);
        assert_eq!(s.failure_mode, FailureMode::Allow);
        assert_eq!(s.status, 429);
        assert_eq!(s.headers, HeaderStyle::Ietf);
        assert_eq!(s.max_keys, 100_000);
        assert_eq!(s.rules.len(), 2);
        let ip = &s.rules[0];
        assert_eq!(ip.algorithm, Algorithm::TokenBucket);
        assert_eq!(
            ip.tiers,
            vec![
                Tier {
                    requests: 1,
                    per_ns: 1_000_000_000,
                    burst: 1
                },
                Tier {
                    requests: 5,
                    per_ns: 10_000_000_000,
                    burst: 5
                },
                Tier {
                    requests: 10,
                    per_ns: 60_000_000_000,
                    burst: 10
                },
            ]
        );
        assert_eq!(s.rules[1].algorithm, Algorithm::SlidingWindow);
        assert_ne!(s.rules[0].tag, s.rules[1].tag);
    }

    #[test]
    fn defaults() {
        let s = parse(br#"{"rules":[{"name":"g","limits":[{"requests":3,"per":"1s"}]}]}"#).unwrap();
        assert_eq!(s.mode, Mode::Enforce);
        assert_eq!(s.failure_mode, FailureMode::Allow);
        assert_eq!(s.status, 429);
        assert_eq!(s.headers, HeaderStyle::Ietf);
        assert_eq!(s.max_keys, 100_000);
        assert_eq!(s.max_cas_retries, 32);
        assert!(s.rules[0].key.is_empty());
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases = [
            (
                r#"{"rules":[{"name":"a","limits":[{"requests":1,"per":"1s"}]}],"modee":"x"}"#,
                "modee",
            ),
            (
                r#"{"rules":[{"name":"a","limits":[{"requests":1,"per":"1s","burts":2}]}]}"#,
                "rules[0].limits[0].burts",
            ),
            (
                r#"{"rules":[{"name":"a","limits":[{"requests":0,"per":"1s"}]}]}"#,
                "rules[0].limits[0].requests",
            ),
            (
                r#"{"rules":[{"name":"a","limits":[{"requests":1,"per":"1s"},{"requests":1,"per":"soon"}]}]}"#,
                "rules[0].limits[1].per",
            ),
            (
                r#"{"rules":[{"name":"a","limits":[{"requests":1,"per":"0s"}]}]}"#,
                "rules[0].limits[0].per",
            ),
            (
                r#"{"rules":[{"name":"a","match":{"path":{"regex":"(["}},"limits":[{"requests":1,"per":"1s"}]}]}"#,
                "rules[0].match.path",
            ),
            (
                r#"{"rules":[{"name":"a","limits":[{"requests":1,"per":"1s"}]},{"name":"a","limits":[{"requests":1,"per":"1s"}]}]}"#,
                "rules[1].name",
            ),
            (
                r#"{"rules":[{"name":"a b","limits":[{"requests":1,"per":"1s"}]}]}"#,
                "rules[0].name",
            ),
            (r#"{"rules":[{"name":"a","limits":[]}]}"#, "rules[0].limits"),
            (r#"{"rules":[]}"#, "rules"),
            (
                r#"{"status":200,"rules":[{"name":"a","limits":[{"requests":1,"per":"1s"}]}]}"#,
                "status",
            ),
            (
                r#"{"max_keys":0,"rules":[{"name":"a","limits":[{"requests":1,"per":"1s"}]}]}"#,
                "max_keys",
            ),
            (
                r#"{"mode":"dry","rules":[{"name":"a","limits":[{"requests":1,"per":"1s"}]}]}"#,
                "mode",
            ),
            (
                r#"{"rules":[{"name":"a","algorithm":"leaky","limits":[{"requests":1,"per":"1s"}]}]}"#,
                "rules[0].algorithm",
            ),
            (
                r#"{"rules":[{"name":"a","algorithm":"sliding_window","limits":[{"requests":1,"per":"1s","burst":3}]}]}"#,
                "rules[0].limits[0].burst",
            ),
            (
                r#"{"rules":[{"name":"a","algorithm":"sliding_window","limits":[{"requests":100000,"per":"1s"}]}]}"#,
                "rules[0].limits[0].requests",
            ),
            (
                r#"{"rules":[{"name":"a","key":[{"header":""}],"limits":[{"requests":1,"per":"1s"}]}]}"#,
                "rules[0].key[0]",
            ),
            (
                r#"{"max_keys":10000000,"rules":[{"name":"a","algorithm":"sliding_window","limits":[{"requests":10000,"per":"1s"}]}]}"#,
                "max_keys",
            ),
        ];
        for (json, path) in cases {
            let e = err(json);
            assert!(e.path.starts_with(path), "{json}: got {e}");
        }
    }

    #[test]
    fn global_rules() {
        let s = parse(
            br#"{"failure_mode":"deny","rules":[{"name":"g","scope":"global",
              "key":[{"client_ip":{"trusted_hops":0}},{"header":"X-User-Id"},{"query":"t"},{"cookie":"s"},{"literal":"api"},{"path":true}],
              "service":{"cluster":"rls","domain":"edge"}}]}"#,
        )
        .unwrap();
        let g = s.rules[0].global.as_ref().unwrap();
        assert!(s.rules[0].tiers.is_empty());
        assert_eq!(g.cluster, "rls");
        assert_eq!(g.domain, "edge");
        assert_eq!(g.timeout_ns, 20_000_000);
        assert_eq!(g.failure_mode, FailureMode::Deny, "inherits the top level");
        assert_eq!(g.lease, 1);
        assert_eq!(
            g.descriptor_keys,
            [
                "remote_address",
                "x-user-id",
                "query.t",
                "cookie.s",
                "generic_key",
                "path"
            ]
        );
        let s = parse(
            br#"{"rules":[{"name":"g","scope":"global","key":[{"header":"x"}],"lease":50,
              "limits":[{"requests":10,"per":"1s"}],
              "service":{"cluster":"rls","domain":"d","timeout":"50ms","failure_mode":"deny","descriptor_keys":["user"]}}]}"#,
        )
        .unwrap();
        let g = s.rules[0].global.as_ref().unwrap();
        assert_eq!(g.timeout_ns, 50_000_000);
        assert_eq!(g.failure_mode, FailureMode::Deny);
        assert_eq!(g.lease, 50);
        assert_eq!(g.descriptor_keys, ["user"]);
        assert_eq!(s.rules[0].tiers.len(), 1);
        assert!(s.rules[0].global.is_some());
    }

    #[test]
    fn bad_global_configs_name_the_field() {
        let g =
            |rule: &str| format!(r#"{{"rules":[{{"name":"g","key":[{{"header":"x"}}],{rule}}}]}}"#);
        let cases = [
            (g(r#""scope":"global""#), "rules[0].service"),
            (g(r#""scope":"global","service":{"cluster":"","domain":"d"}"#), "rules[0].service.cluster"),
            (g(r#""scope":"global","service":{"domain":"d"}"#), "rules[0].service"),
            (g(r#""scope":"global","service":{"cluster":"c","domain":""}"#), "rules[0].service.domain"),
            (g(r#""scope":"global","service":{"cluster":"c","domain":"d","timeout":"0ms"}"#), "rules[0].service.timeout"),
            (g(r#""scope":"global","service":{"cluster":"c","domain":"d","timeout":"1m"}"#), "rules[0].service.timeout"),
            (g(r#""scope":"global","service":{"cluster":"c","domain":"d","failure_mode":"maybe"}"#), "rules[0].service.failure_mode"),
            (g(r#""scope":"global","service":{"cluster":"c","domain":"d","descriptor_keys":["a","b"]}"#), "rules[0].service.descriptor_keys"),
            (g(r#""scope":"global","service":{"cluster":"c","domain":"d","descriptor_keys":[""]}"#), "rules[0].service.descriptor_keys[0]"),
            (g(r#""scope":"global","service":{"cluster":"c","domain":"d","colour":1}"#), "rules[0].service.colour"),
            (g(r#""scope":"global","lease":0,"service":{"cluster":"c","domain":"d"}"#), "rules[0].lease"),
            (g(r#""scope":"global","lease":100000,"service":{"cluster":"c","domain":"d"}"#), "rules[0].lease"),
            (g(r#""scope":"everywhere","limits":[{"requests":1,"per":"1s"}]"#), "rules[0].scope"),
            (g(r#""service":{"cluster":"c","domain":"d"},"limits":[{"requests":1,"per":"1s"}]"#), "rules[0].service"),
            (g(r#""lease":5,"limits":[{"requests":1,"per":"1s"}]"#), "rules[0].lease"),
            (g(r#""limits":[]"#), "rules[0].limits"),
            (
                r#"{"rules":[{"name":"g","scope":"global","service":{"cluster":"c","domain":"d"}}]}"#.to_string(),
                "rules[0].key",
            ),
        ];
        for (json, path) in cases {
            let e = err(&json);
            assert!(e.path.starts_with(path), "{json}: got {e}");
        }
    }

    #[test]
    fn docs_global_example_is_accepted() {
        let s = parse(
            br#"{"rules": [{
  "name": "per-user-global",
  "scope": "global",
  "match": {"path": {"prefix": "/api"}},
  "key": [{"literal": "api"}, {"header": "x-user-id"}],
  "limits": [{"requests": 20, "per": "1s"}],
  "lease": 1,
  "service": {"cluster": "ratelimit", "domain": "edge", "timeout": "20ms",
              "failure_mode": "allow", "descriptor_keys": ["generic_key", "user"]}
}]}"#,
        )
        .unwrap();
        assert!(s.rules[0].global.is_some());
    }
}
