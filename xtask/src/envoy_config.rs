//! The demo's Envoy configuration. The topology is fixed so filter engineers can rely on it (see
//! `envoy/demo-topology.md`): three upstreams, cluster `web` over all three with host override
//! for the hash filter, single-host clusters for routing, and a route that honours
//! `x-switchyard-cluster` (set only by the router filter), plus routes under `/<scope>/` for a
//! filter's second plugin scope ([`DEMO_SCOPES`]).
//!
//! The YAML comes from `switchyard-bootstrap` (`tests/bootstrap`), the generator the
//! integration-test harness uses too; the benchmarks build theirs from the same pieces.

use std::path::PathBuf;
pub use switchyard_bootstrap::{
    catch_all, Bootstrap, Cluster, CLUSTER_HEADER, OVERRIDE_HOST_HEADER, ROUTE_BY_CLUSTER_HEADER,
};
use switchyard_bootstrap::{OVERRIDE_HOST_CLUSTER, OVERRIDE_HOST_POLICY};

/// One proxy-wasm filter in the chain.
#[derive(Clone)]
pub struct WasmFilter {
    /// Short name (`ratelimit`); the plugin is called `switchyard.<name>`.
    pub name: String,
    /// Absolute path of the `.wasm` module.
    pub wasm: PathBuf,
    /// The filter's JSON configuration, passed to the plugin verbatim.
    pub configuration: String,
}

impl WasmFilter {
    /// Its `envoy.filters.http.wasm` entry: filter, plugin and VM `switchyard.<name>`, with
    /// `failure_policy: FAIL_RELOAD` like the shipped configurations in `envoy/` and `k8s/`
    /// (see [`switchyard_bootstrap::WasmFilter`]).
    pub fn plugin(&self) -> switchyard_bootstrap::WasmFilter {
        switchyard_bootstrap::WasmFilter::new(
            format!("switchyard.{}", self.name),
            &self.wasm,
            &self.configuration,
        )
    }
}

/// Listening ports of the topology.
pub struct Ports {
    pub listener: u16,
    pub admin: u16,
    /// u1, u2, u3.
    pub upstreams: [u16; 3],
}

pub const DEMO_PORTS: Ports = Ports {
    listener: 10000,
    admin: 9901,
    upstreams: [8081, 8082, 8083],
};

/// Single-host clusters: name and index of the upstream (0 = u1).
const SINGLE_HOST_CLUSTERS: [(&str, usize); 6] = [
    ("api-v1", 0),
    ("api-v2", 1),
    ("users", 2),
    ("search", 0),
    ("search-next", 1),
    ("routes-config", 0),
];

/// The bootstrap every xtask configuration starts from: an edge proxy (the client address is the
/// TCP peer) on 127.0.0.1 called `name`, with `comment` on top.
pub fn edge_bootstrap(name: &str, comment: String, admin: u16, listener: u16) -> Bootstrap {
    Bootstrap {
        comment: Some(comment),
        use_remote_address: true,
        ..Bootstrap::new(name, admin, listener)
    }
}

/// Cluster `web` over `ports` (u1..u3 in the demo), host chosen by the `x-upstream-host` request
/// header when present (round robin otherwise). Shared by the demo and the proxy and balance
/// benchmarks. With `strip_override_header` (the demo) an upstream filter removes that header so
/// upstreams never see it; the benchmark leaves it out (its upstreams ignore the header).
pub fn web_cluster(ports: &[u16], strip_override_header: bool) -> Cluster {
    let extra = if strip_override_header {
        OVERRIDE_HOST_CLUSTER
    } else {
        OVERRIDE_HOST_POLICY
    };
    Cluster {
        extra: Some(extra.to_owned()),
        ..Cluster::loopback("web", ports)
    }
}

/// Second plugin scopes of a filter's module in the demo, `(filter, scope)`: plugin
/// `switchyard.<filter>-<scope>` (configuration `envoy/demo/<filter>-<scope>.json`), chained right
/// after `switchyard.<filter>`, disabled by default and enabled in its place on the routes for
/// paths under `/<scope>/` (Envoy picks a stream's filters by the route it first matches).
pub const DEMO_SCOPES: [(&str, &str); 1] = [("hashring", "p2c")];

/// The scope a chained filter is, if it is one of [`DEMO_SCOPES`] and its filter is chained too:
/// `(base plugin, scope)`. With the suite module (`cargo xtask demo --suite`) the base is the
/// suite plugin `switchyard` and the scope plugin `switchyard-<scope>` is a second suite whose
/// stage is the scope's configuration.
fn scope_of(filter: &str, chain: &[WasmFilter]) -> Option<(String, &'static str)> {
    DEMO_SCOPES.iter().find_map(|(base, scope)| {
        [*base, "switchyard"].into_iter().find_map(|b| {
            (filter == format!("{b}-{scope}") && chain.iter().any(|f| f.name == b))
                .then(|| (b.to_owned(), *scope))
        })
    })
}

/// Routes for `/<scope>/`, ahead of the others: the same two routes (the router's
/// `x-switchyard-cluster`, else `web`), with `switchyard.<filter>` disabled and
/// `switchyard.<filter>-<scope>` enabled.
fn scope_routes(filter: &str, scope: &str) -> [String; 2] {
    let per_filter = format!(
        r#"typed_per_filter_config:
  switchyard.{filter}:
    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
    disabled: true
  switchyard.{filter}-{scope}:
    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
    config: {{}}
"#
    );
    let prefix = format!("prefix: \"/{scope}/\"");
    let by_header = ROUTE_BY_CLUSTER_HEADER.replacen("prefix: \"/\"", &prefix, 1);
    [
        format!("# /{scope}/: switchyard.{filter}-{scope} picks the host instead of switchyard.{filter}.{by_header}{per_filter}"),
        format!("match:\n  {prefix}\nroute:\n  cluster: web\n{per_filter}"),
    ]
}

/// The whole demo configuration: one listener with `filters` chained in the given order, then
/// Envoy's router. A filter named as one of [`DEMO_SCOPES`] is disabled by default and gets its
/// routes.
pub fn demo_yaml(filters: &[WasmFilter], ports: &Ports) -> String {
    let mut routes = Vec::new();
    let mut http_filters = Vec::new();
    for f in filters {
        let mut plugin = f.plugin();
        if let Some((base, scope)) = scope_of(&f.name, filters) {
            routes.extend(scope_routes(&base, scope));
            plugin.disabled = true;
        }
        http_filters.push(plugin.yaml());
    }
    routes.push(format!(
        "# Only the router filter sets this header (it overwrites or removes what clients send).{ROUTE_BY_CLUSTER_HEADER}"
    ));
    routes.push(catch_all("web"));
    let mut clusters = vec![web_cluster(&ports.upstreams, true).yaml()];
    for (name, upstream) in SINGLE_HOST_CLUSTERS {
        clusters.push(Cluster::loopback(name, &[ports.upstreams[upstream]]).yaml());
    }
    Bootstrap {
        access_log: true,
        routes,
        http_filters,
        clusters,
        ..edge_bootstrap(
            "switchyard",
            "Generated by `cargo xtask demo`; edits are overwritten. Topology: envoy/demo-topology.md"
                .to_owned(),
            ports.admin,
            ports.listener,
        )
    }
    .yaml()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(name: &str, configuration: &str) -> WasmFilter {
        WasmFilter {
            name: name.to_owned(),
            wasm: PathBuf::from(format!("/opt/dist/{name}.wasm")),
            configuration: configuration.to_owned(),
        }
    }

    #[test]
    fn filters_are_chained_in_the_given_order_before_the_router() {
        let yaml = demo_yaml(
            &[filter("ratelimit", "{}"), filter("hashring", "{}")],
            &DEMO_PORTS,
        );
        let at = |needle: &str| {
            yaml.find(needle)
                .unwrap_or_else(|| panic!("{needle} missing in:\n{yaml}"))
        };
        assert!(at("name: switchyard.ratelimit") < at("name: switchyard.hashring"));
        assert!(at("name: switchyard.hashring") < at("name: envoy.filters.http.router"));
        assert!(!yaml.contains("switchyard.cache"));
    }

    #[test]
    fn configuration_is_embedded_as_one_escaped_string() {
        let yaml = filter("router", "{\n  \"a\": \"b: c\"\n}").plugin().yaml();
        assert!(
            yaml.contains(r#"value: "{\n  \"a\": \"b: c\"\n}""#),
            "{yaml}"
        );
    }

    #[test]
    fn every_filter_reloads_a_crashed_vm() {
        let yaml = demo_yaml(
            &[filter("ratelimit", "{}"), filter("hashring", "{}")],
            &DEMO_PORTS,
        );
        assert_eq!(
            yaml.matches("\n                failure_policy: FAIL_RELOAD\n                reload_config:\n                  backoff: { base_interval: 1s }\n").count(),
            2,
            "{yaml}"
        );
    }

    #[test]
    fn shared_clusters_list_every_port_and_only_the_demo_strips_the_override_header() {
        let remove = format!("- remove: {OVERRIDE_HOST_HEADER}");
        let bench = web_cluster(&[3, 4, 5], false).yaml();
        assert!(!bench.contains(&remove), "{bench}");
        assert!(bench.contains(&format!("- header: {OVERRIDE_HOST_HEADER}")));
        for port in [3, 4, 5] {
            assert!(bench.contains(&format!("port_value: {port} }}")), "{bench}");
        }
        let demo = demo_yaml(&[], &DEMO_PORTS);
        assert_eq!(demo.matches(&remove).count(), 1, "{demo}");
        assert!(demo.contains("  - name: web\n    type: STATIC\n"), "{demo}");
        assert!(!demo.contains("lb_policy"));
    }

    #[test]
    fn a_second_plugin_scope_is_off_by_default_and_swapped_in_on_its_routes() {
        let chain = [filter("hashring", "{}"), filter("hashring-p2c", "{}")];
        let yaml = demo_yaml(&chain, &DEMO_PORTS);
        assert!(
            yaml.contains("- name: switchyard.hashring-p2c\n            disabled: true\n            typed_config:\n"),
            "{yaml}"
        );
        assert!(!yaml.contains("- name: switchyard.hashring\n            disabled"));
        // Both /p2c/ routes come first and swap the scopes; the other routes stay as they were.
        let routes = yaml.split("http_filters:").next().unwrap();
        assert_eq!(routes.matches("prefix: \"/p2c/\"").count(), 2, "{routes}");
        assert_eq!(routes.matches("switchyard.hashring:\n").count(), 2);
        assert_eq!(routes.matches("switchyard.hashring-p2c:\n").count(), 2);
        assert!(routes.find("/p2c/").unwrap() < routes.find("prefix: \"/\"").unwrap());
        // Without the filter it belongs to, a scope is chained as an ordinary filter, no routes.
        let alone = demo_yaml(&[filter("hashring-p2c", "{}")], &DEMO_PORTS);
        assert!(
            !alone.contains("/p2c/") && !alone.contains("disabled: true"),
            "{alone}"
        );
    }

    #[test]
    fn ports_come_from_the_topology() {
        let ports = Ports {
            listener: 1,
            admin: 2,
            upstreams: [3, 4, 5],
        };
        let yaml = demo_yaml(&[], &ports);
        assert!(yaml.contains("port_value: 1 }"));
        assert!(yaml.contains("port_value: 2 }"));
        for port in [3, 4, 5] {
            assert!(yaml.contains(&format!("port_value: {port} }}")));
        }
        assert!(!yaml.contains("port_value: 8081"));
    }
}
