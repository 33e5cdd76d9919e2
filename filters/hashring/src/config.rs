//! Configuration of the hashring filter: serde types, validation and the compiled form.

use serde::Deserialize;
use std::collections::HashSet;
use std::net::SocketAddr;
use switchyard_core::config::index_path;
use switchyard_core::{parse_config, ConfigError, Duration, KeySources};

/// Upper bound on hosts in one set: every table and every shared-state record scales with it.
pub const MAX_HOSTS: usize = 1024;
/// Upper bound on one host's weight (ring points and Maglev turns scale with it).
pub const MAX_WEIGHT: u32 = 1000;
/// Upper bound on `vnodes`.
pub const MAX_VNODES: u32 = 10_000;
/// Upper bound on ring points (`vnodes × Σweight`), about 16 MiB of table.
pub const MAX_RING_POINTS: u64 = 1 << 20;
/// Default and upper bound of the Maglev table size.
pub const DEFAULT_TABLE_SIZE: u64 = 65_537;
pub const MAX_TABLE_SIZE: u64 = 1_000_003;
/// Upper bound on `fallbacks`.
pub const MAX_FALLBACKS: u32 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    #[default]
    Ring,
    Maglev,
    Rendezvous,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Ring => "ring",
            Algorithm::Maglev => "maglev",
            Algorithm::Rendezvous => "rendezvous",
        }
    }
}

/// One upstream host as configured (or served by `hosts_from`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    pub address: String,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// A validated host: the address in canonical `ip:port` / `[ipv6]:port` form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub address: String,
    pub weight: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoundedLoad {
    pub factor: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub failures: u32,
    pub cooldown: Duration,
}

/// Where the decision goes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum OutputSpec {
    /// `{"header": "x-upstream-host"}`: chosen host then fallbacks, comma-separated, for the
    /// cluster's `override_host` load-balancing policy.
    Header(String),
    /// `{"original_dst": true}`: the chosen host as filter state
    /// `envoy.network.transport_socket.original_dst_address`, for an `ORIGINAL_DST` cluster.
    OriginalDst(bool),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Header(String),
    OriginalDst,
}

/// What to do with a request none of the key sources is present in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NoKey {
    /// Round robin over healthy hosts (per worker).
    #[default]
    RoundRobin,
    /// A random healthy host.
    Random,
}

/// Dynamic host set: fetched from `GET <path>` on Envoy cluster `cluster` every `interval`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostsFrom {
    pub cluster: String,
    pub path: String,
    #[serde(default = "default_interval")]
    pub interval: Duration,
    /// `:authority` of the fetch (default: the cluster name).
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default = "default_fetch_timeout")]
    pub timeout: Duration,
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_fetch_timeout() -> Duration {
    Duration::from_secs(2)
}

/// Shortest `hosts_from.interval` (every worker ticks at most this often).
pub const MIN_INTERVAL_MS: u64 = 100;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    algorithm: Algorithm,
    #[serde(default)]
    hosts: Vec<HostSpec>,
    #[serde(default)]
    hosts_from: Option<HostsFrom>,
    #[serde(default)]
    hash_key: KeySources,
    #[serde(default)]
    vnodes: Option<u32>,
    #[serde(default)]
    table_size: Option<u64>,
    #[serde(default)]
    bounded_load: Option<BoundedLoad>,
    #[serde(default)]
    health: Option<Health>,
    #[serde(default)]
    fallbacks: Option<u32>,
    #[serde(default)]
    output: Option<OutputSpec>,
    #[serde(default)]
    debug_header: Option<String>,
    #[serde(default)]
    no_key: NoKey,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub algorithm: Algorithm,
    pub hosts: Vec<Host>,
    pub hosts_from: Option<HostsFrom>,
    pub hash_key: KeySources,
    pub vnodes: u32,
    pub table_size: u64,
    pub bounded_load: Option<f64>,
    pub health: Option<Health>,
    pub fallbacks: u32,
    pub output: Output,
    pub debug_header: Option<String>,
    pub no_key: NoKey,
}

pub const DEFAULT_VNODES: u32 = 160;
pub const DEFAULT_FALLBACKS: u32 = 2;
pub const DEFAULT_OUTPUT_HEADER: &str = "x-upstream-host";

impl Config {
    pub fn parse(json: &[u8]) -> Result<Config, ConfigError> {
        let raw: RawConfig = parse_config(json)?;
        let hosts = validate_hosts(&raw.hosts).map_err(|e| e.under("hosts"))?;
        if raw.hash_key.is_empty() {
            return Err(ConfigError::new(
                "hash_key",
                "must list at least one key source",
            ));
        }
        let vnodes = raw.vnodes.unwrap_or(DEFAULT_VNODES);
        if vnodes == 0 || vnodes > MAX_VNODES {
            return Err(ConfigError::new(
                "vnodes",
                format!("must be between 1 and {MAX_VNODES}, got {vnodes}"),
            ));
        }
        let table_size = raw.table_size.unwrap_or(DEFAULT_TABLE_SIZE);
        if !is_prime(table_size) || table_size > MAX_TABLE_SIZE {
            return Err(ConfigError::new(
                "table_size",
                format!("must be a prime no larger than {MAX_TABLE_SIZE}, got {table_size}"),
            ));
        }
        check_table_limits(raw.algorithm, &hosts, vnodes, table_size)?;
        let bounded_load = match raw.bounded_load {
            None => None,
            Some(b) => {
                if !(b.factor.is_finite() && (1.0..=100.0).contains(&b.factor)) {
                    return Err(ConfigError::new(
                        "bounded_load.factor",
                        format!("must be between 1.0 and 100.0, got {}", b.factor),
                    ));
                }
                Some(b.factor)
            }
        };
        if let Some(h) = &raw.health {
            if h.failures == 0 || h.failures > 1000 {
                return Err(ConfigError::new(
                    "health.failures",
                    format!("must be between 1 and 1000, got {}", h.failures),
                ));
            }
            if h.cooldown.is_zero() {
                return Err(ConfigError::new(
                    "health.cooldown",
                    "must be greater than zero",
                ));
            }
        }
        if let Some(hf) = &raw.hosts_from {
            if hf.cluster.is_empty() {
                return Err(ConfigError::new("hosts_from.cluster", "must not be empty"));
            }
            if !hf.path.starts_with('/') {
                return Err(ConfigError::new(
                    "hosts_from.path",
                    format!("must start with '/', got {:?}", hf.path),
                ));
            }
            if hf.interval.as_millis() < MIN_INTERVAL_MS {
                return Err(ConfigError::new(
                    "hosts_from.interval",
                    format!("must be at least {MIN_INTERVAL_MS}ms"),
                ));
            }
            if hf.timeout.is_zero() {
                return Err(ConfigError::new(
                    "hosts_from.timeout",
                    "must be greater than zero",
                ));
            }
        }
        let fallbacks = raw.fallbacks.unwrap_or(DEFAULT_FALLBACKS);
        if fallbacks > MAX_FALLBACKS {
            return Err(ConfigError::new(
                "fallbacks",
                format!("must be at most {MAX_FALLBACKS}, got {fallbacks}"),
            ));
        }
        let output = match raw.output {
            None => Output::Header(DEFAULT_OUTPUT_HEADER.to_string()),
            Some(OutputSpec::Header(h)) => Output::Header(
                validate_header_name(&h).map_err(|m| ConfigError::new("output.header", m))?,
            ),
            Some(OutputSpec::OriginalDst(true)) => Output::OriginalDst,
            Some(OutputSpec::OriginalDst(false)) => {
                return Err(ConfigError::new(
                    "output.original_dst",
                    "must be true; use {\"header\": ...} for the header output",
                ))
            }
        };
        let debug_header = match raw.debug_header {
            None => None,
            Some(h) => {
                Some(validate_header_name(&h).map_err(|m| ConfigError::new("debug_header", m))?)
            }
        };
        Ok(Config {
            algorithm: raw.algorithm,
            hosts,
            hosts_from: raw.hosts_from,
            hash_key: raw.hash_key,
            vnodes,
            table_size,
            bounded_load,
            health: raw.health,
            fallbacks,
            output,
            debug_header,
            no_key: raw.no_key,
        })
    }
}

/// Checks that a host set fits the table limits: ring points (`vnodes × Σweight`) at most
/// [`MAX_RING_POINTS`], Maglev table at least twice the number of hosts. Applies to the
/// configured hosts and to every fetched host set.
pub fn check_table_limits(
    algorithm: Algorithm,
    hosts: &[Host],
    vnodes: u32,
    table_size: u64,
) -> Result<(), ConfigError> {
    match algorithm {
        Algorithm::Ring => {
            let weight_sum: u64 = hosts.iter().map(|h| u64::from(h.weight)).sum();
            let points = weight_sum * u64::from(vnodes);
            if points > MAX_RING_POINTS {
                return Err(ConfigError::new(
                    "vnodes",
                    format!(
                        "vnodes × total weight = {points} ring points, more than {MAX_RING_POINTS}"
                    ),
                ));
            }
        }
        Algorithm::Maglev => {
            if table_size < 2 * hosts.len() as u64 {
                return Err(ConfigError::new(
                    "table_size",
                    format!(
                        "must be at least twice the number of hosts ({}), got {table_size}",
                        hosts.len()
                    ),
                ));
            }
        }
        Algorithm::Rendezvous => {}
    }
    Ok(())
}

/// Validates a host list: non-empty, at most [`MAX_HOSTS`], `ip:port` addresses with a non-zero
/// port, weights in `1..=MAX_WEIGHT`, no duplicates. Errors are relative (`[2].weight`).
pub fn validate_hosts(specs: &[HostSpec]) -> Result<Vec<Host>, ConfigError> {
    if specs.is_empty() {
        return Err(ConfigError::new("", "must list at least one host"));
    }
    if specs.len() > MAX_HOSTS {
        return Err(ConfigError::new(
            "",
            format!("at most {MAX_HOSTS} hosts, got {}", specs.len()),
        ));
    }
    let mut seen = HashSet::new();
    let mut hosts = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let at = index_path("", i);
        let addr: SocketAddr = spec.address.trim().parse().map_err(|_| {
            ConfigError::new(
                format!("{at}.address"),
                format!(
                    "expected an IP:PORT address like 10.0.0.2:8080 or [::1]:80, got {:?}",
                    spec.address
                ),
            )
        })?;
        if addr.port() == 0 {
            return Err(ConfigError::new(
                format!("{at}.address"),
                format!("port must not be 0 in {:?}", spec.address),
            ));
        }
        if spec.weight == 0 || spec.weight > MAX_WEIGHT {
            return Err(ConfigError::new(
                format!("{at}.weight"),
                format!("must be between 1 and {MAX_WEIGHT}, got {}", spec.weight),
            ));
        }
        let address = addr.to_string();
        if !seen.insert(address.clone()) {
            return Err(ConfigError::new(
                format!("{at}.address"),
                format!("duplicate host {address}"),
            ));
        }
        hosts.push(Host {
            address,
            weight: spec.weight,
        });
    }
    Ok(hosts)
}

fn validate_header_name(name: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(format!(
            "expected a header name (letters, digits, '-', '_'), got {name:?}"
        ))
    }
}

pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n < 4 {
        return true;
    }
    if n.is_multiple_of(2) {
        return false;
    }
    let mut d = 3;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const ISSUE_EXAMPLE: &str = r#"{
      "algorithm": "ring",
      "hosts": [
        {"address": "127.0.0.1:8081", "weight": 1},
        {"address": "127.0.0.1:8082", "weight": 1},
        {"address": "127.0.0.1:8083", "weight": 2}
      ],
      "hash_key": [{"header": "x-user-id"}, {"cookie": "session"}, {"client_ip": {"trusted_hops": 0}}],
      "vnodes": 160,
      "bounded_load": {"factor": 1.25},
      "health": {"failures": 3, "cooldown": "10s"},
      "fallbacks": 2,
      "output": {"header": "x-upstream-host"},
      "debug_header": "x-hash-explain"
    }"#;

    #[test]
    fn issue_example_is_accepted_as_written() {
        let c = Config::parse(ISSUE_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(c.algorithm, Algorithm::Ring);
        assert_eq!(c.hosts.len(), 3);
        assert_eq!(c.hosts[2].weight, 2);
        assert_eq!(c.vnodes, 160);
        assert_eq!(c.bounded_load, Some(1.25));
        assert_eq!(c.health.as_ref().unwrap().failures, 3);
        assert_eq!(c.health.as_ref().unwrap().cooldown, Duration::from_secs(10));
        assert_eq!(c.fallbacks, 2);
        assert_eq!(c.output, Output::Header("x-upstream-host".into()));
        assert_eq!(c.debug_header.as_deref(), Some("x-hash-explain"));
        assert_eq!(c.no_key, NoKey::RoundRobin);
    }

    fn err(json: &str) -> ConfigError {
        Config::parse(json.as_bytes()).unwrap_err()
    }

    const KEY: &str = r#""hash_key": [{"header": "x"}]"#;

    #[test]
    fn bad_configs_name_the_field() {
        let cases = [
            (format!(r#"{{"hosts": [], {KEY}}}"#), "hosts"),
            (format!(r#"{{{KEY}}}"#), "hosts"),
            (
                format!(r#"{{"hosts": [{{"address": "10.0.0.1"}}], {KEY}}}"#),
                "hosts[0].address",
            ),
            (
                format!(r#"{{"hosts": [{{"address": "example.com:80"}}], {KEY}}}"#),
                "hosts[0].address",
            ),
            (
                format!(r#"{{"hosts": [{{"address": "10.0.0.1:0"}}], {KEY}}}"#),
                "hosts[0].address",
            ),
            (
                format!(
                    r#"{{"hosts": [{{"address": "10.0.0.1:80"}}, {{"address": "10.0.0.2:80", "weight": 0}}], {KEY}}}"#
                ),
                "hosts[1].weight",
            ),
            (
                format!(
                    r#"{{"hosts": [{{"address": "10.0.0.1:80"}}, {{"address": " 10.0.0.1:80"}}], {KEY}}}"#
                ),
                "hosts[1].address",
            ),
            (
                format!(
                    r#"{{"algorithm": "maglev", "table_size": 65536, "hosts": [{{"address": "10.0.0.1:80"}}], {KEY}}}"#
                ),
                "table_size",
            ),
            (
                format!(
                    r#"{{"algorithm": "maglev", "table_size": 3, "hosts": [{{"address": "10.0.0.1:80"}}, {{"address": "10.0.0.2:80"}}], {KEY}}}"#
                ),
                "table_size",
            ),
            (
                format!(
                    r#"{{"algorithm": "bogus", "hosts": [{{"address": "10.0.0.1:80"}}], {KEY}}}"#
                ),
                "algorithm",
            ),
            (
                r#"{"hosts": [{"address": "10.0.0.1:80"}], "hash_key": []}"#.to_string(),
                "hash_key",
            ),
            (
                format!(r#"{{"hosts": [{{"address": "10.0.0.1:80"}}], "vnodes": 0, {KEY}}}"#),
                "vnodes",
            ),
            (
                format!(
                    r#"{{"hosts": [{{"address": "10.0.0.1:80"}}], "bounded_load": {{"factor": 0.9}}, {KEY}}}"#
                ),
                "bounded_load.factor",
            ),
            (
                format!(
                    r#"{{"hosts": [{{"address": "10.0.0.1:80"}}], "health": {{"failures": 0, "cooldown": "1s"}}, {KEY}}}"#
                ),
                "health.failures",
            ),
            (
                format!(
                    r#"{{"hosts": [{{"address": "10.0.0.1:80"}}], "health": {{"failures": 1, "cooldown": "0s"}}, {KEY}}}"#
                ),
                "health.cooldown",
            ),
            (
                format!(r#"{{"hosts": [{{"address": "10.0.0.1:80"}}], "fallbacks": 99, {KEY}}}"#),
                "fallbacks",
            ),
            (
                format!(
                    r#"{{"hosts": [{{"address": "10.0.0.1:80"}}], "output": {{"header": "bad header"}}, {KEY}}}"#
                ),
                "output.header",
            ),
            (
                format!(
                    r#"{{"hosts": [{{"address": "10.0.0.1:80"}}], "debug_header": "", {KEY}}}"#
                ),
                "debug_header",
            ),
            (
                format!(r#"{{"hosts": [{{"address": "10.0.0.1:80"}}], "vnodez": 3, {KEY}}}"#),
                "vnodez",
            ),
            (
                format!(
                    r#"{{"hosts": [{{"address": "10.0.0.1:80"}}], "hosts_from": {{"cluster": "c", "path": "hosts"}}, {KEY}}}"#
                ),
                "hosts_from.path",
            ),
            (
                format!(
                    r#"{{"hosts": [{{"address": "10.0.0.1:80"}}], "hosts_from": {{"cluster": "c", "path": "/h", "interval": "10ms"}}, {KEY}}}"#
                ),
                "hosts_from.interval",
            ),
        ];
        for (json, path) in cases {
            let e = err(&json);
            assert_eq!(e.path, path, "{json}: {e}");
        }
    }

    #[test]
    fn addresses_are_canonical_and_ipv6_ok() {
        let c = Config::parse(
            br#"{"hosts": [{"address": "[::1]:80"}, {"address": "10.0.0.1:8080", "weight": 3}],
                 "hash_key": [{"cookie": "s"}], "output": {"original_dst": true}, "algorithm": "rendezvous"}"#,
        )
        .unwrap();
        assert_eq!(c.hosts[0].address, "[::1]:80");
        assert_eq!(c.hosts[0].weight, 1);
        assert_eq!(c.output, Output::OriginalDst);
        assert_eq!(c.algorithm, Algorithm::Rendezvous);
        assert_eq!(c.fallbacks, DEFAULT_FALLBACKS);
        assert!(c.hosts_from.is_none());
        let c = Config::parse(
            br#"{"hosts": [{"address": "10.0.0.1:80"}], "hash_key": [{"cookie": "s"}],
                 "hosts_from": {"cluster": "cfg", "path": "/hosts"}}"#,
        )
        .unwrap();
        let hf = c.hosts_from.unwrap();
        assert_eq!(hf.interval, Duration::from_secs(5));
        assert_eq!(hf.timeout, Duration::from_secs(2));
    }

    #[test]
    fn primes() {
        let primes: Vec<u64> = (0..30).filter(|n| is_prime(*n)).collect();
        assert_eq!(primes, vec![2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65_537));
        assert!(!is_prime(65_535));
        assert!(is_prime(MAX_TABLE_SIZE));
    }
}
