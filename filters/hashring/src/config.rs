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
/// Default `vnodes` of host sets up to a total weight of 128: 4096 points per unit of weight
/// (exact max/mean load 1.022 at 10 hosts, 1.038 at 100).
pub const DEFAULT_RING_VNODES_MAX: u32 = 4096;
/// Ring points the default `vnodes` aims at for large host sets (about 6 MiB of points and
/// owners plus the bucket index, per VM): see [`default_vnodes`].
pub const DEFAULT_RING_POINTS: u64 = 1 << 19;
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

/// `algorithm` as written: a hash table, or performance-based `p2c_ewma` (whose affinity uses a
/// ring).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
enum AlgorithmSpec {
    #[default]
    Ring,
    Maglev,
    Rendezvous,
    P2cEwma,
}

/// `p2c` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawP2c {
    #[serde(default)]
    decay: Option<Duration>,
    #[serde(default)]
    failure_penalty: Option<Duration>,
    #[serde(default)]
    affinity: Option<f64>,
}

/// Performance-based selection (`"algorithm": "p2c_ewma"`): see [`crate::p2c`].
#[derive(Debug, Clone, PartialEq)]
pub struct P2c {
    /// Time constant of the latency EWMA.
    pub decay_ns: u64,
    /// The latency a failure counts as (5xx, reset, 429/503 with `Retry-After`).
    pub failure_penalty_ns: u64,
    /// With `hash_key`: keep the consistent-hash host unless its cost exceeds this many times the
    /// best candidate's.
    pub affinity: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    algorithm: AlgorithmSpec,
    #[serde(default)]
    p2c: Option<RawP2c>,
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
    #[serde(default)]
    clusters: Option<Vec<String>>,
    #[serde(default)]
    cluster_header: Option<String>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The hash table (for `p2c_ewma`: the ring its affinity uses).
    pub algorithm: Algorithm,
    /// `Some` for `"algorithm": "p2c_ewma"`.
    pub p2c: Option<P2c>,
    pub hosts: Vec<Host>,
    pub hosts_from: Option<HostsFrom>,
    pub hash_key: KeySources,
    /// `vnodes` as configured; `None`: sized per host set by [`default_vnodes`].
    pub vnodes: Option<u32>,
    pub table_size: u64,
    pub bounded_load: Option<f64>,
    pub health: Option<Health>,
    pub fallbacks: u32,
    pub output: Output,
    pub debug_header: Option<String>,
    pub no_key: NoKey,
    /// The clusters this filter picks hosts for (from the routing record); `None`: every request.
    pub clusters: Option<Vec<String>>,
    /// Where the router writes the routed cluster (`switchyard_core::routing`).
    pub cluster_header: String,
}

pub const DEFAULT_FALLBACKS: u32 = 2;
pub const DEFAULT_OUTPUT_HEADER: &str = "x-upstream-host";

impl Config {
    pub fn parse(json: &[u8]) -> Result<Config, ConfigError> {
        let raw: RawConfig = parse_config(json)?;
        let hosts = validate_hosts(&raw.hosts).map_err(|e| e.under("hosts"))?;
        let p2c_wanted = raw.algorithm == AlgorithmSpec::P2cEwma;
        if raw.hash_key.is_empty() && !p2c_wanted {
            return Err(ConfigError::new(
                "hash_key",
                "must list at least one key source",
            ));
        }
        if raw.p2c.is_some() && !p2c_wanted {
            return Err(ConfigError::new(
                "p2c",
                "only with \"algorithm\": \"p2c_ewma\"",
            ));
        }
        let p2c = if p2c_wanted {
            let r = raw.p2c.clone().unwrap_or_default();
            let decay = r.decay.unwrap_or(Duration::from_secs(10));
            let penalty = r.failure_penalty.unwrap_or(Duration::from_secs(1));
            if decay.as_nanos() < 1_000_000 {
                return Err(ConfigError::new("p2c.decay", "must be at least 1ms"));
            }
            if penalty.as_nanos() == 0 {
                return Err(ConfigError::new("p2c.failure_penalty", "must be positive"));
            }
            if let Some(k) = r.affinity {
                if !(k.is_finite() && (1.0..=1000.0).contains(&k)) {
                    return Err(ConfigError::new(
                        "p2c.affinity",
                        format!("must be between 1.0 and 1000.0, got {k}"),
                    ));
                }
                if raw.hash_key.is_empty() {
                    return Err(ConfigError::new(
                        "p2c.affinity",
                        "needs hash_key (the affinity keeps the key's consistent-hash host)",
                    ));
                }
            }
            if raw.bounded_load.is_some() {
                return Err(ConfigError::new(
                    "bounded_load",
                    "not with p2c_ewma (its cost already weighs in-flight requests)",
                ));
            }
            Some(P2c {
                decay_ns: decay.as_nanos(),
                failure_penalty_ns: penalty.as_nanos(),
                affinity: r.affinity,
            })
        } else {
            None
        };
        if let Some(vnodes) = raw.vnodes {
            if vnodes == 0 || vnodes > MAX_VNODES {
                return Err(ConfigError::new(
                    "vnodes",
                    format!("must be between 1 and {MAX_VNODES}, got {vnodes}"),
                ));
            }
        }
        let vnodes = raw.vnodes;
        let table_size = raw.table_size.unwrap_or(DEFAULT_TABLE_SIZE);
        if !is_prime(table_size) || table_size > MAX_TABLE_SIZE {
            return Err(ConfigError::new(
                "table_size",
                format!("must be a prime no larger than {MAX_TABLE_SIZE}, got {table_size}"),
            ));
        }
        let algorithm = match raw.algorithm {
            AlgorithmSpec::Maglev => Algorithm::Maglev,
            AlgorithmSpec::Rendezvous => Algorithm::Rendezvous,
            AlgorithmSpec::Ring | AlgorithmSpec::P2cEwma => Algorithm::Ring,
        };
        check_table_limits(algorithm, &hosts, vnodes, table_size)?;
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
        if let Some(c) = &raw.clusters {
            if c.is_empty() {
                return Err(ConfigError::new(
                    "clusters",
                    "must list at least one cluster (or be left out to act on every request)",
                ));
            }
            for (i, name) in c.iter().enumerate() {
                if name.is_empty()
                    || name
                        .bytes()
                        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
                {
                    return Err(ConfigError::new(
                        switchyard_core::config::index_path("clusters", i),
                        format!("{name:?} is not a cluster name"),
                    ));
                }
            }
        }
        let cluster_header = match raw.cluster_header {
            None => switchyard_core::routing::CLUSTER_HEADER.to_string(),
            Some(h) => {
                validate_header_name(&h).map_err(|m| ConfigError::new("cluster_header", m))?
            }
        };
        Ok(Config {
            clusters: raw.clusters,
            cluster_header,
            algorithm,
            p2c,
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

impl Config {
    /// The ring's points per unit of weight for `hosts`: the configured `vnodes`, or
    /// [`default_vnodes`] when it was omitted.
    pub fn vnodes_for(&self, hosts: &[Host]) -> u32 {
        self.vnodes.unwrap_or_else(|| default_vnodes(hosts))
    }
}

/// The ring's `vnodes` when the configuration omits it: 4096 points per unit of weight while
/// the total weight is at most 128, then halved each time the total weight passes the next
/// power of two, so the ring holds at most [`DEFAULT_RING_POINTS`] (2^19) points:
/// `max(1, min(4096, 2^19 / Σweight rounded up to a power of two))`.
///
/// It is a step function on purpose: points per host must not change with every host added
/// or removed, or each change would move about 1/N of the keys on top of the changed host's
/// own 1/N. Within a step (e.g. 129–256 hosts of weight 1) adding or removing a host moves only
/// that host's keys; crossing a step halves or doubles every host's points and moves about
/// half of the keys once. An explicit `vnodes` never changes.
pub fn default_vnodes(hosts: &[Host]) -> u32 {
    let weight_sum: u64 = hosts.iter().map(|h| u64::from(h.weight)).sum();
    let per_weight = DEFAULT_RING_POINTS / weight_sum.max(1).next_power_of_two();
    per_weight.clamp(1, u64::from(DEFAULT_RING_VNODES_MAX)) as u32
}

/// Checks that a host set fits the table limits: ring points (`vnodes × Σweight`) at most
/// [`MAX_RING_POINTS`], Maglev table at least twice the number of hosts. Applies to the
/// configured hosts and to every fetched host set. `vnodes` is the configured value (`None`:
/// [`default_vnodes`], which always fits).
pub fn check_table_limits(
    algorithm: Algorithm,
    hosts: &[Host],
    vnodes: Option<u32>,
    table_size: u64,
) -> Result<(), ConfigError> {
    match algorithm {
        Algorithm::Ring => {
            let weight_sum: u64 = hosts.iter().map(|h| u64::from(h.weight)).sum();
            let vnodes = vnodes.unwrap_or_else(|| default_vnodes(hosts));
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
        assert_eq!(c.vnodes, Some(160));
        assert_eq!(c.vnodes_for(&c.hosts), 160);
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

    #[test]
    fn p2c_ewma_parses_with_defaults_and_names_bad_fields() {
        let hosts = r#""hosts": [{"address": "10.0.0.1:80"}, {"address": "10.0.0.2:80"}]"#;
        let c =
            Config::parse(format!(r#"{{"algorithm": "p2c_ewma", {hosts}}}"#).as_bytes()).unwrap();
        let p = c.p2c.unwrap();
        assert_eq!(
            (p.decay_ns, p.failure_penalty_ns, p.affinity),
            (10_000_000_000, 1_000_000_000, None)
        );
        // The affinity keeps the consistent-hash (ring) choice.
        assert_eq!(c.algorithm, Algorithm::Ring);
        let c = Config::parse(
            format!(r#"{{"algorithm": "p2c_ewma", {hosts}, {KEY}, "p2c": {{"decay": "2s", "affinity": 2.5}}}}"#).as_bytes(),
        )
        .unwrap();
        assert_eq!(c.p2c.unwrap().affinity, Some(2.5));
        for (json, path) in [
            (
                format!(r#"{{"algorithm": "p2c_ewma", {hosts}, "p2c": {{"affinity": 2}}}}"#),
                "p2c.affinity",
            ),
            (
                format!(
                    r#"{{"algorithm": "p2c_ewma", {hosts}, {KEY}, "p2c": {{"affinity": 0.5}}}}"#
                ),
                "p2c.affinity",
            ),
            (
                format!(r#"{{"algorithm": "p2c_ewma", {hosts}, "p2c": {{"decay": "0s"}}}}"#),
                "p2c.decay",
            ),
            (
                format!(
                    r#"{{"algorithm": "p2c_ewma", {hosts}, "bounded_load": {{"factor": 1.5}}}}"#
                ),
                "bounded_load",
            ),
            (
                format!(r#"{{"algorithm": "ring", {hosts}, {KEY}, "p2c": {{}}}}"#),
                "p2c",
            ),
            (
                format!(r#"{{"algorithm": "p2c_ewma", {hosts}, "p2c": {{"decy": "1s"}}}}"#),
                "p2c.decy",
            ),
        ] {
            assert_eq!(err(&json).path, path, "{json}");
        }
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

    fn weighted(weights: &[u32]) -> Vec<Host> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Host {
                address: format!("10.0.{}.{}:80", i / 250, i % 250 + 1),
                weight: *w,
            })
            .collect()
    }

    #[test]
    fn default_vnodes_steps_with_the_total_weight() {
        // (hosts of weight 1, vnodes): 4096 up to 128, then halved per power of two.
        for (n, want) in [
            (1usize, 4096u32),
            (3, 4096),
            (10, 4096),
            (64, 4096),
            (65, 4096),
            (100, 4096),
            (128, 4096),
            (129, 2048),
            (256, 2048),
            (257, 1024),
            (512, 1024),
            (513, 512),
            (1000, 512),
            (MAX_HOSTS, 512),
        ] {
            let hosts = weighted(&vec![1; n]);
            assert_eq!(default_vnodes(&hosts), want, "{n} hosts");
        }
        // Weights count, not hosts: 3 hosts of weight 1, 1, 2 → total 4.
        assert_eq!(default_vnodes(&weighted(&[1, 1, 2])), 4096);
        // 40 hosts of weight 3: total 120 → 4096 per unit of weight.
        assert_eq!(default_vnodes(&weighted(&[3; 40])), 4096);
        // Heavy weights: never 0, and the points always fit the hard limit.
        assert_eq!(default_vnodes(&weighted(&[MAX_WEIGHT; MAX_HOSTS])), 1);
        assert_eq!(default_vnodes(&[]), 4096);
    }

    #[test]
    fn default_vnodes_stay_within_the_point_budget() {
        for weights in [
            vec![1u32; 1],
            vec![1; 64],
            vec![1; 65],
            vec![1; 700],
            vec![7; 300],
            vec![1000; 3],
            vec![1000; 600],
            vec![MAX_WEIGHT; MAX_HOSTS],
        ] {
            let hosts = weighted(&weights);
            let v = u64::from(default_vnodes(&hosts));
            let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
            assert!(v >= 1);
            // At most 2^19 points, unless one point per unit of weight is already more.
            assert!(
                v * total <= DEFAULT_RING_POINTS.max(total),
                "{} hosts: {v} × {total}",
                weights.len()
            );
            assert!(v * total <= MAX_RING_POINTS);
            check_table_limits(Algorithm::Ring, &hosts, None, DEFAULT_TABLE_SIZE).unwrap();
        }
    }

    fn with_hosts(n: usize, weight: u32, extra: &str) -> String {
        let hosts: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    r#"{{"address": "10.0.{}.{}:80", "weight": {weight}}}"#,
                    i / 250,
                    i % 250 + 1
                )
            })
            .collect();
        format!(r#"{{"hosts": [{}], {KEY}{extra}}}"#, hosts.join(","))
    }

    #[test]
    fn explicit_vnodes_win_over_the_default() {
        let c = Config::parse(with_hosts(10, 1, "").as_bytes()).unwrap();
        assert_eq!(c.vnodes, None);
        assert_eq!(c.vnodes_for(&c.hosts), 4096);
        // The default follows the host set it is applied to (a `hosts_from` set).
        assert_eq!(c.vnodes_for(&weighted(&[1; 100])), 4096);
        for v in [1u32, 160, 10_000] {
            let c = Config::parse(with_hosts(10, 1, &format!(r#", "vnodes": {v}"#)).as_bytes())
                .unwrap();
            assert_eq!(c.vnodes, Some(v));
            assert_eq!(c.vnodes_for(&c.hosts), v);
            assert_eq!(c.vnodes_for(&weighted(&[1; 100])), v);
        }
    }

    #[test]
    fn ring_point_limit_applies_to_explicit_vnodes_only() {
        // 20 hosts of weight 1000 with the old fixed 160 vnodes would be 3.2M points: an
        // explicit vnodes is rejected naming the field, the default sizes itself to fit.
        let explicit = err(&with_hosts(20, 1000, r#", "vnodes": 160"#));
        assert_eq!(explicit.path, "vnodes");
        assert!(explicit.to_string().contains("ring points"), "{explicit}");
        let c = Config::parse(with_hosts(20, 1000, "").as_bytes()).unwrap();
        assert_eq!(c.vnodes_for(&c.hosts), 16);
        // The same rule for a fetched host set (`hosts_from`).
        let heavy = weighted(&[1000; 20]);
        assert_eq!(
            check_table_limits(Algorithm::Ring, &heavy, Some(160), DEFAULT_TABLE_SIZE)
                .unwrap_err()
                .path,
            "vnodes"
        );
        assert!(check_table_limits(Algorithm::Ring, &heavy, None, DEFAULT_TABLE_SIZE).is_ok());
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
