//! The proxy benchmark's variants and their Envoy configurations. Every variant is the same
//! listener, the same three upstreams and the same clusters; only the HTTP filters and the route
//! table differ, so the differences in CPU per request are the filters' cost.

use crate::envoy_config::{
    catch_all, edge_bootstrap, web_cluster, Bootstrap, Cluster, WasmFilter, CLUSTER_HEADER,
    OVERRIDE_HOST_HEADER, ROUTE_BY_CLUSTER_HEADER,
};
use std::path::Path;

/// The Switchyard router's and Envoy's route tables both have this many prefix routes; requests go
/// to the last one so neither table short-circuits.
pub const ROUTES: usize = 20;
/// Request path that matches the last of the [`ROUTES`] routes.
const ROUTED_PATH: &str = "/svc19/items";
/// Upstream answer the caches may store for an hour (the upstream echoes `header=` as a response header).
const CACHEABLE_PATH: &str = "/cached?header=Cache-Control:max-age%3D3600";
/// Upstream answer without freshness information: a cache lookup misses and nothing is stored.
/// The key varies (`{n}` cycles over 10 000 values) so concurrent misses are not coalesced.
const UNCACHEABLE_PATH: &str = "/nocache?k={n}";
/// The same, one key for every request: concurrent misses wait for one leader (coalescing).
const UNCACHEABLE_SAME_KEY_PATH: &str = "/nocache";
/// The chain's request: matches the last router route, misses the cache with varying keys.
const CHAIN_PATH: &str = "/svc19/items?k={n}";

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// `x-switchyard-cluster` when set (router filter), else cluster `web`.
    Default,
    /// Everything to the RING_HASH cluster, hashing `x-user-id`.
    RingHash,
    /// Everything to the MAGLEV cluster, hashing `x-user-id`.
    Maglev,
    /// [`ROUTES`] native prefix routes to `web`.
    Native20,
    /// Envoy answers 200 itself (`direct_response`): no upstream, so the host-call benchmark
    /// sees only the filter's cost.
    Direct,
    /// Everything to a plain ROUND_ROBIN cluster over the same hosts: the baseline of the
    /// natively hashed variants (whose clusters are plain too, not `web`'s override-host one).
    PlainStatic,
}

impl Variant {
    /// The variant whose CPU this one's "added" cost is measured against: the one with the
    /// same kind of cluster. The natively hashed variants use plain clusters, so theirs is
    /// `plain-static`; everything routed to `web` (override-host policy) is measured against
    /// `plain`.
    pub fn baseline(&self) -> &'static str {
        match self.routes {
            Routes::RingHash | Routes::Maglev | Routes::PlainStatic => "plain-static",
            _ => "plain",
        }
    }
}

pub struct Variant {
    pub name: &'static str,
    pub what: &'static str,
    pub wasm: Vec<WasmFilter>,
    /// A native HTTP filter (a YAML mapping) ahead of the wasm ones; empty for none.
    pub native: String,
    pub routes: Routes,
    pub path: &'static str,
    /// The native variant this one is compared with (`ratio` column).
    pub counterpart: Option<&'static str>,
}

fn wasm(dist: &Path, name: &str, configuration: String) -> WasmFilter {
    WasmFilter {
        name: name.to_owned(),
        wasm: dist.join(format!("{name}.wasm")),
        configuration,
    }
}

fn ratelimit_config(reject: bool) -> String {
    if reject {
        // One request per hour per client IP: all traffic comes from 127.0.0.1, so all but the
        // first request is rejected.
        r#"{"mode":"enforce","status":429,"max_keys":100000,"rules":[{"name":"strict","key":[{"client_ip":{"trusted_hops":0}}],"limits":[{"requests":1,"per":"1h"}]}]}"#.to_owned()
    } else {
        r#"{"mode":"enforce","status":429,"max_keys":100000,"rules":[{"name":"per-user","key":[{"header":"x-user-id"}],"limits":[{"requests":1000000000,"per":"1s"}]}]}"#.to_owned()
    }
}

fn hashring_config(upstreams: &[u16; 3]) -> String {
    let hosts: Vec<String> = upstreams
        .iter()
        .map(|p| format!(r#"{{"address":"127.0.0.1:{p}","weight":1}}"#))
        .collect();
    format!(
        r#"{{"algorithm":"ring","hosts":[{}],"hash_key":[{{"header":"x-user-id"}}],"output":{{"header":"{OVERRIDE_HOST_HEADER}"}}}}"#,
        hosts.join(",")
    )
}

/// The hashring choosing by latency (`p2c_ewma`, no hash key): what the shared per-host
/// estimates cost per request against `ring`.
fn p2c_config(upstreams: &[u16; 3]) -> String {
    let hosts: Vec<String> = upstreams
        .iter()
        .map(|p| format!(r#"{{"address":"127.0.0.1:{p}"}}"#))
        .collect();
    format!(
        r#"{{"algorithm":"p2c_ewma","hosts":[{}],"output":{{"header":"{OVERRIDE_HOST_HEADER}"}}}}"#,
        hosts.join(",")
    )
}

/// The hashring of the chain: as [`hashring_config`], acting only on requests routed to `web`.
fn chained_hashring_config(upstreams: &[u16; 3]) -> String {
    let alone = hashring_config(upstreams);
    let body = alone.strip_suffix('}').unwrap_or(&alone);
    format!(r#"{body},"clusters":["web"],"cluster_header":"{CLUSTER_HEADER}"}}"#)
}

fn cache_config() -> String {
    r#"{"max_bytes":67108864,"max_entry_bytes":1048576,"eviction":"lru","key":{"query":"all","headers":[]},"default_ttl":"0s","upstream_cluster":"web"}"#.to_owned()
}

fn router_config() -> String {
    let routes: Vec<String> = (0..ROUTES)
        .map(|i| {
            format!(
                r#"{{"name":"r{i}","match":{{"path":{{"prefix":"/svc{i}/"}}}},"action":{{"cluster":"web"}}}}"#
            )
        })
        .collect();
    format!(
        r#"{{"cluster_header":"{CLUSTER_HEADER}","routes":[{}],"default":{{"cluster":"web"}}}}"#,
        routes.join(",")
    )
}

fn native_local_ratelimit(reject: bool) -> String {
    let (tokens, interval) = if reject {
        (1u64, "3600s")
    } else {
        (1_000_000_000, "1s")
    };
    format!(
        r#"
            name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: bench_rl
              token_bucket: {{ max_tokens: {tokens}, tokens_per_fill: {tokens}, fill_interval: {interval} }}
              filter_enabled:
                runtime_key: bench_rl_enabled
                default_value: {{ numerator: 100, denominator: HUNDRED }}
              filter_enforced:
                runtime_key: bench_rl_enforced
                default_value: {{ numerator: 100, denominator: HUNDRED }}
"#
    )
}

const NATIVE_CACHE: &str = r#"
            name: envoy.filters.http.cache
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.cache.v3.CacheConfig
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig
"#;

/// Every variant, in the order they are run within a round.
pub fn all(dist: &Path, upstreams: &[u16; 3]) -> Vec<Variant> {
    let v = |name, what, wasm, native: &str, routes, path, counterpart| Variant {
        name,
        what,
        wasm,
        native: native.to_owned(),
        routes,
        path,
        counterpart,
    };
    let d = Routes::Default;
    vec![
        v(
            "plain",
            "Envoy, no extra filter",
            vec![],
            "",
            d,
            "/plain",
            None,
        ),
        v(
            "plain-static",
            "Envoy, no extra filter, a plain ROUND_ROBIN cluster (the baseline of native-ring-hash and native-maglev)",
            vec![],
            "",
            Routes::PlainStatic,
            "/plain",
            None,
        ),
        v(
            "wasm-noop",
            "no-op wasm filter (probe, mode noop): the wasm boundary's floor",
            vec![wasm(dist, "probe", r#"{"mode":"noop"}"#.to_owned())],
            "",
            d,
            "/plain",
            None,
        ),
        v(
            "ratelimit",
            "Switchyard ratelimit, per-user limit never reached",
            vec![wasm(dist, "ratelimit", ratelimit_config(false))],
            "",
            d,
            "/plain",
            Some("native-ratelimit"),
        ),
        v(
            "native-ratelimit",
            "local_ratelimit, bucket never empty",
            vec![],
            &native_local_ratelimit(false),
            d,
            "/plain",
            None,
        ),
        v(
            "ratelimit-reject",
            "Switchyard ratelimit, 1 request/h: all but the first rejected (429)",
            vec![wasm(dist, "ratelimit", ratelimit_config(true))],
            "",
            d,
            "/plain",
            Some("native-ratelimit-reject"),
        ),
        v(
            "native-ratelimit-reject",
            "local_ratelimit, 1 token/h: all but the first rejected (429)",
            vec![],
            &native_local_ratelimit(true),
            d,
            "/plain",
            None,
        ),
        v(
            "hashring",
            "Switchyard hashring (ring, 3 hosts, x-user-id) + override_host cluster",
            vec![wasm(dist, "hashring", hashring_config(upstreams))],
            "",
            d,
            "/plain",
            Some("native-ring-hash"),
        ),
        v(
            "hashring-p2c",
            "Switchyard hashring p2c_ewma (3 hosts): latency estimates shared by all workers, read and updated per request",
            vec![wasm(dist, "hashring", p2c_config(upstreams))],
            "",
            d,
            "/plain",
            None,
        ),
        v(
            "native-ring-hash",
            "RING_HASH cluster, hash_policy header x-user-id",
            vec![],
            "",
            Routes::RingHash,
            "/plain",
            None,
        ),
        v(
            "native-maglev",
            "MAGLEV cluster, hash_policy header x-user-id",
            vec![],
            "",
            Routes::Maglev,
            "/plain",
            None,
        ),
        v(
            "cache-hit",
            "Switchyard cache, every request a hit",
            vec![wasm(dist, "cache", cache_config())],
            "",
            d,
            CACHEABLE_PATH,
            Some("native-cache-hit"),
        ),
        v(
            "native-cache-hit",
            "envoy.filters.http.cache + simple in-memory cache, every request a hit",
            vec![],
            NATIVE_CACHE,
            d,
            CACHEABLE_PATH,
            None,
        ),
        v(
            "cache-miss",
            "Switchyard cache, uncacheable answers: lookup miss + upstream",
            vec![wasm(dist, "cache", cache_config())],
            "",
            d,
            UNCACHEABLE_PATH,
            None,
        ),
        v(
            "cache-miss-same-key",
            "Switchyard cache, one uncacheable URL: concurrent misses coalesce behind one leader",
            vec![wasm(dist, "cache", cache_config())],
            "",
            d,
            UNCACHEABLE_SAME_KEY_PATH,
            None,
        ),
        v(
            "router",
            "Switchyard router, 20 prefix routes, request matches the last",
            vec![wasm(dist, "router", router_config())],
            "",
            d,
            ROUTED_PATH,
            Some("native-routes"),
        ),
        v(
            "native-routes",
            "Envoy route table with the same 20 prefix routes",
            vec![],
            "",
            Routes::Native20,
            ROUTED_PATH,
            None,
        ),
        v(
            "chain-miss",
            "ratelimit + router + cache (miss) + hashring chained",
            chain(dist, upstreams),
            "",
            d,
            CHAIN_PATH,
            None,
        ),
        v(
            "suite-miss",
            "the suite module (dist/switchyard.wasm) with the same four stages and configurations as chain-miss",
            vec![suite(dist, &chain(dist, upstreams))],
            "",
            d,
            CHAIN_PATH,
            None,
        ),
        v(
            "suite-cache-hit",
            "the suite module with only the cache stage, every request a hit",
            vec![suite(dist, &[wasm(dist, "cache", cache_config())])],
            "",
            d,
            CACHEABLE_PATH,
            Some("native-cache-hit"),
        ),
    ]
}

/// The suite module running `filters` (standalone configurations, chain order) as its stages.
pub fn suite(dist: &Path, filters: &[WasmFilter]) -> WasmFilter {
    let stages: Vec<String> = filters
        .iter()
        .map(|f| format!("{:?}: {}", f.name, f.configuration))
        .collect();
    WasmFilter {
        name: "switchyard".to_owned(),
        wasm: dist.join("switchyard.wasm"),
        configuration: format!("{{\"stages\": {{{}}}}}", stages.join(", ")),
    }
}

/// The four filters chained in the documented order (`build::FILTERS`, README "Filters in a
/// chain"); the hashring picks hosts for `web` only, the cluster the router sends everything to.
pub fn chain(dist: &Path, upstreams: &[u16; 3]) -> Vec<WasmFilter> {
    vec![
        wasm(dist, "ratelimit", ratelimit_config(false)),
        wasm(dist, "router", router_config()),
        wasm(dist, "cache", cache_config()),
        wasm(dist, "hashring", chained_hashring_config(upstreams)),
    ]
}

/// The same `web` cluster as the demo (host override on `x-upstream-host`, round robin
/// otherwise; without the demo's upstream filter that strips that header), plus the natively
/// hashed clusters over the same three upstreams.
fn clusters(upstreams: &[u16; 3]) -> Vec<String> {
    let hashed = |name: &str, lb_policy: &str| Cluster {
        lb_policy: Some(lb_policy.to_owned()),
        ..Cluster::loopback(name, upstreams)
    };
    [
        web_cluster(upstreams, false),
        Cluster::loopback("web_rr", upstreams),
        hashed("web_ring", "RING_HASH"),
        hashed("web_maglev", "MAGLEV"),
    ]
    .iter()
    .map(Cluster::yaml)
    .collect()
}

fn routes(kind: Routes) -> Vec<String> {
    let hashed = |cluster: &str| {
        vec![format!(
            "match: {{ prefix: \"/\" }}\nroute:\n  cluster: {cluster}\n  hash_policy:\n  - header: {{ header_name: x-user-id }}\n"
        )]
    };
    match kind {
        Routes::Default => vec![ROUTE_BY_CLUSTER_HEADER.to_owned(), catch_all("web")],
        Routes::RingHash => hashed("web_ring"),
        Routes::Maglev => hashed("web_maglev"),
        Routes::PlainStatic => vec![catch_all("web_rr")],
        Routes::Direct => vec![
            "match: { prefix: \"/\" }\ndirect_response: { status: 200, body: { inline_string: \"ok\" } }\n"
                .to_owned(),
        ],
        Routes::Native20 => (0..ROUTES)
            .map(|i| format!("match: {{ prefix: \"/svc{i}/\" }}\nroute: {{ cluster: web }}\n"))
            .collect(),
    }
}

/// Host calls the probe filter's `cost` mode makes per request in the host-call benchmark.
pub const HOSTCALL_REPEAT: u32 = 20;

/// The host-call benchmark: Envoy answering itself, without and with the no-op filter, and the
/// probe's `cost` mode making one kind of host call [`HOSTCALL_REPEAT`] times per request.
/// Names are `direct-<op>`; the op's price is its added CPU over `direct-noop` / the repeat.
pub fn hostcalls(dist: &Path) -> Vec<Variant> {
    let direct = |name, what, wasm| Variant {
        name,
        what,
        wasm,
        native: String::new(),
        routes: Routes::Direct,
        path: "/plain",
        counterpart: None,
    };
    let cost = |op: &str, value_bytes: usize| {
        vec![wasm(
            dist,
            "probe",
            format!(
                r#"{{"mode":"cost","op":"{op}","repeat":{HOSTCALL_REPEAT},"value_bytes":{value_bytes}}}"#
            ),
        )]
    };
    vec![
        direct(
            "direct-plain",
            "Envoy answers 200 itself, no extra filter",
            vec![],
        ),
        direct(
            "direct-noop",
            "the no-op wasm filter, Envoy answers 200",
            vec![wasm(dist, "probe", r#"{"mode":"noop"}"#.to_owned())],
        ),
        direct(
            "direct-time",
            "proxy_get_current_time_nanoseconds",
            cost("time", 0),
        ),
        direct(
            "direct-header",
            "one request header (`:path`)",
            cost("header", 0),
        ),
        direct(
            "direct-headers",
            "all request headers (a map of ~6)",
            cost("headers", 0),
        ),
        direct(
            "direct-property",
            "property `source.address`",
            cost("property", 0),
        ),
        direct("direct-metric", "counter increment", cost("metric", 0)),
        direct(
            "direct-log",
            "debug log line Envoy filters out",
            cost("log_debug", 0),
        ),
        direct(
            "direct-get-1k",
            "shared data get, 1 KiB value",
            cost("shared_get", 1024),
        ),
        direct(
            "direct-get-64k",
            "shared data get, 64 KiB value",
            cost("shared_get", 65536),
        ),
        direct(
            "direct-cas-1k",
            "shared data get + CAS set, 1 KiB value",
            cost("shared_cas", 1024),
        ),
    ]
}

/// The complete Envoy configuration of one variant.
pub fn envoy_yaml(variant: &Variant, listener: u16, admin: u16, upstreams: &[u16; 3]) -> String {
    let native = Some(variant.native.clone()).filter(|n| !n.is_empty());
    Bootstrap {
        routes: routes(variant.routes),
        http_filters: native
            .into_iter()
            .chain(variant.wasm.iter().map(|f| f.plugin().yaml()))
            .collect(),
        clusters: clusters(upstreams),
        ..edge_bootstrap(
            "bench",
            format!(
                "Generated by `cargo xtask bench` (variant {}); edits are overwritten.",
                variant.name
            ),
            admin,
            listener,
        )
    }
    .yaml()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml_of(name: &str) -> String {
        let variants = all(Path::new("/opt/dist"), &[1, 2, 3]);
        let v = variants.iter().find(|v| v.name == name).unwrap();
        envoy_yaml(v, 10, 11, &[1, 2, 3])
    }

    #[test]
    fn every_switchyard_variant_with_a_counterpart_names_an_existing_native_variant() {
        let variants = all(Path::new("/opt/dist"), &[1, 2, 3]);
        for v in &variants {
            if let Some(c) = v.counterpart {
                assert!(variants.iter().any(|n| n.name == c), "{} -> {c}", v.name);
            }
        }
    }

    #[test]
    fn native_and_switchyard_routers_have_the_same_twenty_prefixes() {
        let native = yaml_of("native-routes");
        let ours = yaml_of("router");
        for i in 0..ROUTES {
            assert!(
                native.contains(&format!("prefix: \"/svc{i}/\"")),
                "{native}"
            );
            assert!(
                ours.contains(&format!("\\\"prefix\\\":\\\"/svc{i}/\\\"")),
                "{ours}"
            );
        }
        assert!(!native.contains("switchyard.router"));
    }

    #[test]
    fn only_the_chosen_filters_are_configured() {
        let plain = yaml_of("plain");
        assert!(!plain.contains("envoy.filters.http.wasm"));
        assert!(!plain.contains("local_ratelimit"));
        let chain = yaml_of("chain-miss");
        let at = |s: &str| chain.find(s).unwrap();
        assert!(at("switchyard.ratelimit") < at("switchyard.router"));
        assert!(at("switchyard.router") < at("switchyard.cache"));
        assert!(at("switchyard.cache") < at("switchyard.hashring"));
        assert!(at("switchyard.hashring") < at("envoy.filters.http.router"));
        assert!(yaml_of("native-maglev").contains("cluster: web_maglev"));
        assert!(yaml_of("native-cache-hit").contains("SimpleHttpCacheConfig"));
    }

    #[test]
    fn the_chained_hashring_acts_only_on_web() {
        let chained: serde_json::Value =
            serde_json::from_str(&chained_hashring_config(&[1, 2, 3])).unwrap();
        let alone: serde_json::Value = serde_json::from_str(&hashring_config(&[1, 2, 3])).unwrap();
        assert_eq!(chained["clusters"], serde_json::json!(["web"]));
        assert_eq!(chained["cluster_header"], CLUSTER_HEADER);
        assert_eq!(chained["hosts"], alone["hosts"]);
        assert!(alone.get("clusters").is_none());
    }
}
