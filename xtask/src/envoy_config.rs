//! The demo's Envoy configuration. The topology is fixed so filter engineers can rely on it (see
//! `envoy/demo-topology.md`): three upstreams, cluster `web` over all three with host override
//! for the hash filter, single-host clusters for routing, and a route that honours
//! `x-switchyard-cluster` (set only by the router filter), plus routes under `/<scope>/` for a
//! filter's second plugin scope ([`DEMO_SCOPES`]).

use std::fmt::Write as _;
use std::path::PathBuf;

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

/// Request header the hash filter sets to `ip:port` of the chosen `web` host.
pub const OVERRIDE_HOST_HEADER: &str = "x-upstream-host";
/// Request header the router filter sets to the chosen cluster.
pub const CLUSTER_HEADER: &str = "x-switchyard-cluster";

/// Single-host clusters: name and index of the upstream (0 = u1).
const SINGLE_HOST_CLUSTERS: [(&str, usize); 6] = [
    ("api-v1", 0),
    ("api-v2", 1),
    ("users", 2),
    ("search", 0),
    ("search-next", 1),
    ("routes-config", 0),
];

/// YAML double-quoted scalar. JSON string syntax is a subset of it, so serde_json's escaping is
/// exactly right (and keeps configuration JSON on one line).
fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// The `envoy.filters.http.wasm` entry for one filter, indented for an `http_filters` list.
///
/// Every filter gets `failure_policy: FAIL_RELOAD`, like the shipped configurations in `envoy/`
/// and `k8s/`: a panic aborts the filter's VM, and Envoy starts a fresh one for later requests
/// (at most once per `reload_config.backoff.base_interval`, default 1 s) instead of failing
/// every request on that worker (FAIL_CLOSED) or skipping the filter (FAIL_OPEN, which would let
/// a crash lift the rate limits) until the next configuration change.
pub fn wasm_filter_yaml(filter: &WasmFilter, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let name = format!("switchyard.{}", filter.name);
    let lines = [
        format!("- name: {name}"),
        "  typed_config:".to_owned(),
        "    \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm".to_owned(),
        "    config:".to_owned(),
        format!("      name: {name}"),
        "      failure_policy: FAIL_RELOAD".to_owned(),
        "      reload_config:".to_owned(),
        "        backoff: { base_interval: 1s }".to_owned(),
        "      vm_config:".to_owned(),
        format!("        vm_id: {name}"),
        "        runtime: envoy.wasm.runtime.v8".to_owned(),
        "        code:".to_owned(),
        "          local:".to_owned(),
        format!(
            "            filename: {}",
            quote(&filter.wasm.to_string_lossy())
        ),
        "      configuration:".to_owned(),
        "        \"@type\": type.googleapis.com/google.protobuf.StringValue".to_owned(),
        format!("        value: {}", quote(&filter.configuration)),
    ];
    lines.iter().fold(String::new(), |mut out, line| {
        let _ = writeln!(out, "{pad}{line}");
        out
    })
}

fn endpoint(port: u16) -> String {
    format!(
        "        - endpoint:\n            address:\n              socket_address: {{ address: 127.0.0.1, port_value: {port} }}\n"
    )
}

/// A `STATIC` cluster over `ports` on 127.0.0.1, with Envoy's default load balancing or the given
/// `lb_policy` (`RING_HASH`, `MAGLEV`, ...). Shared by the demo and the proxy benchmark.
pub fn static_cluster(name: &str, lb_policy: Option<&str>, ports: &[u16]) -> String {
    let policy = lb_policy.map_or(String::new(), |p| format!("    lb_policy: {p}\n"));
    let endpoints: String = ports.iter().map(|p| endpoint(*p)).collect();
    format!(
        "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n{policy}    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n{endpoints}"
    )
}

/// Cluster `web` over `ports` (u1..u3 in the demo), host chosen by the `x-upstream-host` request
/// header when present (round robin otherwise). Shared by the demo and the proxy and balance
/// benchmarks. With
/// `strip_override_header` (the demo) an upstream filter removes that header so upstreams never
/// see it; the benchmark leaves it out (its upstreams ignore the header).
pub fn web_cluster(ports: &[u16], strip_override_header: bool) -> String {
    let endpoints: String = ports.iter().map(|p| endpoint(*p)).collect();
    let mut yaml = format!(
        r#"  - name: web
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: web
      endpoints:
      - lb_endpoints:
{endpoints}    load_balancing_policy:
      policies:
      - typed_extension_config:
          name: envoy.load_balancing_policies.override_host
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost
            override_host_sources:
            - header: {OVERRIDE_HOST_HEADER}
            fallback_policy:
              policies:
              - typed_extension_config:
                  name: envoy.load_balancing_policies.round_robin
                  typed_config:
                    "@type": type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin
"#
    );
    if strip_override_header {
        yaml.push_str(&format!(
            r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http_protocol_options: {{}}
        http_filters:
        - name: envoy.filters.http.header_mutation
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
            mutations:
              request_mutations:
              - remove: {OVERRIDE_HOST_HEADER}
        - name: envoy.filters.http.upstream_codec
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec
"#
        ));
    }
    yaml
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
fn scope_routes(filter: &str, scope: &str) -> String {
    let per_filter = format!(
        r#"                typed_per_filter_config:
                  switchyard.{filter}:
                    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    disabled: true
                  switchyard.{filter}-{scope}:
                    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    config: {{}}
"#
    );
    format!(
        r#"              # /{scope}/: switchyard.{filter}-{scope} picks the host instead of switchyard.{filter}.
              - match:
                  prefix: "/{scope}/"
                  headers:
                  - name: {CLUSTER_HEADER}
                    present_match: true
                route:
                  cluster_header: {CLUSTER_HEADER}
{per_filter}              - match:
                  prefix: "/{scope}/"
                route:
                  cluster: web
{per_filter}"#
    )
}

/// The whole demo configuration: one listener with `filters` chained in the given order, then
/// Envoy's router. A filter named as one of [`DEMO_SCOPES`] is disabled by default and gets its
/// routes.
pub fn demo_yaml(filters: &[WasmFilter], ports: &Ports) -> String {
    let mut scope_route_yaml = String::new();
    let mut http_filters = String::new();
    for f in filters {
        let yaml = wasm_filter_yaml(f, 10);
        match scope_of(&f.name, filters) {
            Some((base, scope)) => {
                scope_route_yaml.push_str(&scope_routes(&base, scope));
                let (first, rest) = yaml.split_once('\n').unwrap_or((&yaml, ""));
                let _ = write!(http_filters, "{first}\n            disabled: true\n{rest}");
            }
            None => http_filters.push_str(&yaml),
        }
    }
    let mut clusters = web_cluster(&ports.upstreams, true);
    for (name, upstream) in SINGLE_HOST_CLUSTERS {
        clusters.push_str(&static_cluster(name, None, &[ports.upstreams[upstream]]));
    }
    bootstrap_yaml(&Bootstrap {
        comment: "Generated by `cargo xtask demo`; edits are overwritten. Topology: envoy/demo-topology.md",
        name: "switchyard",
        admin: ports.admin,
        listener: ports.listener,
        access_log: true,
        routes: &format!(
            r#"{scope_route_yaml}              # Only the router filter sets this header (it overwrites or removes what clients send).
              - match:
                  prefix: "/"
                  headers:
                  - name: {CLUSTER_HEADER}
                    present_match: true
                route:
                  cluster_header: {CLUSTER_HEADER}
              - match:
                  prefix: "/"
                route:
                  cluster: web
"#
        ),
        http_filters: &http_filters,
        clusters: &clusters,
    })
}

/// One listener on 127.0.0.1 with an HTTP connection manager: `routes` in one virtual host,
/// `http_filters` then Envoy's router, and `clusters`. The demo and the benchmarks differ only
/// in these parts.
pub struct Bootstrap<'a> {
    /// First line, after `# `.
    pub comment: &'a str,
    /// Listener, stat prefix and route configuration name.
    pub name: &'a str,
    pub admin: u16,
    pub listener: u16,
    /// Access log to stdout.
    pub access_log: bool,
    /// Route list items, indented 14.
    pub routes: &'a str,
    /// HTTP filter list items, indented 10.
    pub http_filters: &'a str,
    /// Cluster list items, indented 2.
    pub clusters: &'a str,
}

pub fn bootstrap_yaml(b: &Bootstrap) -> String {
    let access_log = if b.access_log {
        r#"          access_log:
          - name: envoy.access_loggers.stdout
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
"#
    } else {
        ""
    };
    format!(
        r#"# {comment}
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin} }}
static_resources:
  listeners:
  - name: {name}
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {listener} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          # Edge proxy: the client address is the TCP peer; filters see normalised paths.
          use_remote_address: true
          normalize_path: true
          merge_slashes: true
          path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT
{access_log}          route_config:
            name: {name}
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
{routes}          http_filters:
{http_filters}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
{clusters}"#,
        comment = b.comment,
        name = b.name,
        admin = b.admin,
        listener = b.listener,
        routes = b.routes,
        http_filters = b.http_filters,
        clusters = b.clusters,
    )
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
        let yaml = wasm_filter_yaml(&filter("router", "{\n  \"a\": \"b: c\"\n}"), 0);
        assert!(
            yaml.contains(r#"value: "{\n  \"a\": \"b: c\"\n}""#),
            "{yaml}"
        );
    }

    #[test]
    fn every_filter_reloads_a_crashed_vm() {
        let yaml = wasm_filter_yaml(&filter("ratelimit", "{}"), 0);
        assert!(
            yaml.contains("\n      failure_policy: FAIL_RELOAD\n      reload_config:\n        backoff: { base_interval: 1s }\n      vm_config:\n"),
            "{yaml}"
        );
    }

    #[test]
    fn shared_clusters_list_every_port_and_only_the_demo_strips_the_override_header() {
        let ring = static_cluster("web_ring", Some("RING_HASH"), &[3, 4]);
        assert!(ring.starts_with("  - name: web_ring\n"), "{ring}");
        assert!(ring.contains("    lb_policy: RING_HASH\n"), "{ring}");
        assert!(ring.contains("port_value: 3 }") && ring.contains("port_value: 4 }"));
        assert!(!static_cluster("users", None, &[5]).contains("lb_policy"));
        let remove = format!("- remove: {OVERRIDE_HOST_HEADER}");
        assert!(web_cluster(&[3, 4, 5], true).contains(&remove));
        let bench = web_cluster(&[3, 4, 5], false);
        assert!(!bench.contains(&remove), "{bench}");
        assert!(bench.contains(&format!("- header: {OVERRIDE_HOST_HEADER}")));
        let demo = demo_yaml(&[], &DEMO_PORTS);
        assert!(demo.contains(&web_cluster(&DEMO_PORTS.upstreams, true)));
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
