//! Envoy bootstrap YAML for Switchyard: the one generator behind `cargo xtask` (the demo and the
//! benchmarks, `xtask/src/envoy_config.rs`) and the integration-test harness
//! (`switchyard-harness`, `tests/harness/src/config.rs`).
//!
//! Every generated bootstrap has one shape: an admin on 127.0.0.1, one listener on 127.0.0.1
//! with an HTTP connection manager (normalised paths), one virtual host for every domain, the
//! HTTP filters then Envoy's router, and static clusters ([`Bootstrap`]). Its parts are YAML
//! mapping snippets: [`WasmFilter::yaml`] and [`Cluster::yaml`] write the common ones; anything
//! else (a native filter, a route, a hand-written cluster) the caller writes at any indentation
//! and [`Bootstrap::yaml`] places it ([`dedent`], [`block`], [`list_item`]).
//!
//! Std plus `serde_json` (for quoting) only: xtask builds this crate in every CI run.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// Request header the hashring filter sets to `ip:port` of the chosen host; the override-host
/// cluster ([`OVERRIDE_HOST_POLICY`]) routes by it.
pub const OVERRIDE_HOST_HEADER: &str = "x-upstream-host";
/// Request header the router filter sets to the chosen cluster ([`ROUTE_BY_CLUSTER_HEADER`]).
pub const CLUSTER_HEADER: &str = "x-switchyard-cluster";

/// A route (for [`Bootstrap::routes`]) that forwards by the router filter's routing record,
/// [`CLUSTER_HEADER`].
pub const ROUTE_BY_CLUSTER_HEADER: &str = r#"
match:
  prefix: "/"
  headers:
  - name: x-switchyard-cluster
    present_match: true
route:
  cluster_header: x-switchyard-cluster
"#;

/// The `load_balancing_policy` of [`OVERRIDE_HOST_POLICY`], as a literal so that
/// [`OVERRIDE_HOST_CLUSTER`] can be `concat!`ed from it.
macro_rules! override_host_policy {
    () => {
        r#"
load_balancing_policy:
  policies:
  - typed_extension_config:
      name: envoy.load_balancing_policies.override_host
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost
        override_host_sources:
        - header: x-upstream-host
        fallback_policy:
          policies:
          - typed_extension_config:
              name: envoy.load_balancing_policies.round_robin
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin
"#
    };
}

/// Cluster fields ([`Cluster::extra`]) that pick the host named by [`OVERRIDE_HOST_HEADER`]
/// when a request carries it, round robin otherwise (the benchmarks' `web`, whose upstreams
/// ignore the header).
pub const OVERRIDE_HOST_POLICY: &str = override_host_policy!();

/// [`OVERRIDE_HOST_POLICY`] plus an upstream filter that removes [`OVERRIDE_HOST_HEADER`] so
/// upstreams never see it: the cluster half of the override-host setup of `envoy/hashring.yaml`
/// (the demo's `web`, the integration tests).
pub const OVERRIDE_HOST_CLUSTER: &str = concat!(
    override_host_policy!(),
    r#"typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config: { http_protocol_options: {} }
    http_filters:
    - name: envoy.filters.http.header_mutation
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
        mutations:
          request_mutations:
          - remove: x-upstream-host
    - name: envoy.filters.http.upstream_codec
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec
"#
);

/// A route (for [`Bootstrap::routes`]) sending everything to `cluster`.
pub fn catch_all(cluster: &str) -> String {
    format!(
        "match: {{ prefix: \"/\" }}\nroute: {{ cluster: {} }}\n",
        scalar(cluster)
    )
}

/// One `envoy.filters.http.wasm` filter.
///
/// Without a `failure_policy` in [`WasmFilter::extra`] it gets `failure_policy: FAIL_RELOAD`
/// with a 1 s reload backoff, like every shipped configuration in `envoy/` and `k8s/`: a panic
/// aborts the filter's VM, and Envoy starts a fresh one for later requests (at most once per
/// backoff) instead of failing every request on that worker (FAIL_CLOSED) or skipping the
/// filter (FAIL_OPEN, which would let a crash lift the rate limits).
#[derive(Debug, Clone)]
pub struct WasmFilter {
    /// HTTP filter name and plugin name; the VM id unless [`WasmFilter::vm_id`] is set.
    pub name: String,
    /// The `.wasm` module (any text: placeholders such as `{{DIR}}/x.wasm` pass through).
    pub path: PathBuf,
    /// The plugin configuration (JSON), passed verbatim as a `StringValue`.
    pub configuration: String,
    /// `root_id`; none by default (the Rust SDK has one root context).
    pub root_id: Option<String>,
    pub vm_id: Option<String>,
    /// `disabled: true`: off unless a route's `typed_per_filter_config` enables it.
    pub disabled: bool,
    /// Extra `PluginConfig` fields (siblings of `vm_config`), e.g. `failure_policy: FAIL_CLOSED`.
    pub extra: Option<String>,
}

impl WasmFilter {
    pub fn new(
        name: impl Into<String>,
        path: impl Into<PathBuf>,
        configuration: impl Into<String>,
    ) -> WasmFilter {
        WasmFilter {
            name: name.into(),
            path: path.into(),
            configuration: configuration.into(),
            root_id: None,
            vm_id: None,
            disabled: false,
            extra: None,
        }
    }

    /// The `http_filters` entry, a mapping at column 0.
    pub fn yaml(&self) -> String {
        let name = scalar(&self.name);
        let extra = self.extra.as_deref().map(dedent).unwrap_or_default();
        let sets = |key: &str| extra.lines().any(|l| l.starts_with(key));
        let mut config = format!("name: {name}\n");
        if let Some(root_id) = &self.root_id {
            let _ = writeln!(config, "root_id: {}", scalar(root_id));
        }
        if !sets("failure_policy:") {
            config.push_str("failure_policy: FAIL_RELOAD\n");
            if !sets("reload_config:") {
                config.push_str("reload_config:\n  backoff: { base_interval: 1s }\n");
            }
        }
        let _ = write!(
            config,
            "vm_config:\n  vm_id: {vm_id}\n  runtime: envoy.wasm.runtime.v8\n  code:\n    local:\n      filename: {path}\n\
             configuration:\n  \"@type\": type.googleapis.com/google.protobuf.StringValue\n  value: {value}\n{extra}",
            vm_id = self.vm_id.as_deref().map_or_else(|| name.clone(), scalar),
            path = quote(&self.path.to_string_lossy()),
            value = quote(&self.configuration),
        );
        let disabled = if self.disabled {
            "disabled: true\n"
        } else {
            ""
        };
        format!(
            "name: {name}\n{disabled}typed_config:\n  \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\n  config:\n{}",
            indent(&config, 4)
        )
    }
}

/// A `STATIC` cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    /// `(host, port)`, one locality.
    pub endpoints: Vec<(String, u16)>,
    /// Default `1s`.
    pub connect_timeout: String,
    /// `lb_policy` (`RING_HASH`, `MAGLEV`, ...); Envoy's round robin when `None`.
    pub lb_policy: Option<String>,
    /// HTTP/2 to the upstreams (`explicit_http_config: http2_protocol_options`), e.g. for a gRPC
    /// service. Not with an `extra` that has `typed_extension_protocol_options` of its own.
    pub http2: bool,
    /// Extra cluster fields (siblings of `name`): `load_balancing_policy`, `circuit_breakers`,
    /// `typed_extension_protocol_options`, ...
    pub extra: Option<String>,
}

impl Cluster {
    pub fn new(
        name: impl Into<String>,
        endpoints: impl IntoIterator<Item = (String, u16)>,
    ) -> Cluster {
        Cluster {
            name: name.into(),
            endpoints: endpoints.into_iter().collect(),
            connect_timeout: "1s".to_owned(),
            lb_policy: None,
            http2: false,
            extra: None,
        }
    }

    /// A cluster over `ports` on 127.0.0.1.
    pub fn loopback(name: impl Into<String>, ports: &[u16]) -> Cluster {
        Cluster::new(name, ports.iter().map(|p| ("127.0.0.1".to_owned(), *p)))
    }

    /// The `clusters` entry, a mapping at column 0.
    pub fn yaml(&self) -> String {
        let name = scalar(&self.name);
        let mut y = format!(
            "name: {name}\ntype: STATIC\nconnect_timeout: {}\n",
            self.connect_timeout
        );
        if let Some(policy) = &self.lb_policy {
            let _ = writeln!(y, "lb_policy: {policy}");
        }
        if self.http2 {
            y.push_str(
                "typed_extension_protocol_options:\n  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n    \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n    explicit_http_config:\n      http2_protocol_options: {}\n",
            );
        }
        let _ = write!(
            y,
            "load_assignment:\n  cluster_name: {name}\n  endpoints:\n  - lb_endpoints:"
        );
        if self.endpoints.is_empty() {
            y.push_str(" []\n");
        } else {
            y.push('\n');
        }
        for (host, port) in &self.endpoints {
            let _ = writeln!(
                y,
                "    - endpoint:\n        address:\n          socket_address: {{ address: {}, port_value: {port} }}",
                scalar(host)
            );
        }
        if let Some(extra) = &self.extra {
            y.push_str(&dedent(extra));
        }
        y
    }
}

/// Stdout access log of the connection manager.
const ACCESS_LOG: &str = r#"access_log:
- name: envoy.access_loggers.stdout
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
"#;

/// A whole bootstrap: admin and one listener on 127.0.0.1, an HTTP connection manager with
/// normalised paths, `http_filters` then Envoy's router, and `clusters`. Start from
/// [`Bootstrap::new`] and set the fields that differ. Snippet fields are YAML mappings at any
/// indentation; a route or cluster snippet may start with comment lines.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// Comment lines at the top.
    pub comment: Option<String>,
    /// `node: { id: N, cluster: N }` (file-based dynamic resources need a node).
    pub node: Option<String>,
    /// Port text (a number, or a placeholder such as `{{ADMIN_PORT}}`).
    pub admin_port: String,
    pub listener_port: String,
    pub listener_name: String,
    pub stat_prefix: String,
    /// Edge proxy: the client address is the TCP peer (`use_remote_address: true`). Off, the
    /// client may choose its address with `X-Forwarded-For`.
    pub use_remote_address: bool,
    /// Access log to stdout.
    pub access_log: bool,
    /// Extra connection manager fields. One that sets `normalize_path` replaces the default
    /// path normalisation.
    pub hcm_extra: Vec<String>,
    /// A whole `route_config` mapping, instead of the generated one below.
    pub route_config: Option<String>,
    pub route_config_name: String,
    /// `false` writes `validate_clusters: false` (routes to clusters that only CDS provides).
    pub validate_clusters: bool,
    /// Extra fields of the virtual host, e.g. a `retry_policy`.
    pub virtual_host_extra: Option<String>,
    /// Routes of the one virtual host, in order.
    pub routes: Vec<String>,
    /// HTTP filters in chain order ([`WasmFilter::yaml`], native filters); Envoy's router is
    /// appended.
    pub http_filters: Vec<String>,
    /// The router's `upstream_http_filters`; the required `upstream_codec` is appended.
    pub upstream_http_filters: Vec<String>,
    /// [`Cluster::yaml`] or hand-written clusters.
    pub clusters: Vec<String>,
    /// Extra top-level fields, e.g. `layered_runtime` or `dynamic_resources`.
    pub extra: Option<String>,
}

impl Bootstrap {
    /// Listener, stat prefix and route configuration all called `name`; everything else empty
    /// or off.
    pub fn new(name: &str, admin_port: impl ToString, listener_port: impl ToString) -> Bootstrap {
        Bootstrap {
            comment: None,
            node: None,
            admin_port: admin_port.to_string(),
            listener_port: listener_port.to_string(),
            listener_name: name.to_owned(),
            stat_prefix: name.to_owned(),
            use_remote_address: false,
            access_log: false,
            hcm_extra: Vec::new(),
            route_config: None,
            route_config_name: name.to_owned(),
            validate_clusters: true,
            virtual_host_extra: None,
            routes: Vec::new(),
            http_filters: Vec::new(),
            upstream_http_filters: Vec::new(),
            clusters: Vec::new(),
            extra: None,
        }
    }

    pub fn yaml(&self) -> String {
        let mut y = String::new();
        for line in self.comment.iter().flat_map(|c| c.lines()) {
            let _ = writeln!(y, "# {line}");
        }
        if let Some(node) = &self.node {
            let _ = writeln!(
                y,
                "node: {{ id: {node}, cluster: {node} }}",
                node = scalar(node)
            );
        }
        let _ = write!(
            y,
            "admin:\n  address:\n    socket_address: {{ address: 127.0.0.1, port_value: {admin} }}\n\
             static_resources:\n  listeners:\n  - name: {name}\n    address:\n      socket_address: {{ address: 127.0.0.1, port_value: {listener} }}\n    \
             filter_chains:\n    - filters:\n      - name: envoy.filters.network.http_connection_manager\n        typed_config:\n{hcm}  clusters:",
            admin = self.admin_port,
            name = scalar(&self.listener_name),
            listener = self.listener_port,
            hcm = indent(&self.connection_manager(), 10),
        );
        y.push_str(&list(&self.clusters, 2));
        if let Some(extra) = &self.extra {
            y.push_str(&dedent(extra));
        }
        y
    }

    /// The connection manager's `typed_config`, at column 0.
    fn connection_manager(&self) -> String {
        let mut y = format!(
            "\"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\nstat_prefix: {}\n",
            scalar(&self.stat_prefix)
        );
        if self.use_remote_address {
            y.push_str(
                "# Edge proxy: the client address is the TCP peer.\nuse_remote_address: true\n",
            );
        }
        if !self.hcm_extra.iter().any(|e| e.contains("normalize_path")) {
            y.push_str("# Filters see normalised paths, as with every shipped configuration.\nnormalize_path: true\nmerge_slashes: true\npath_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT\n");
        }
        for extra in &self.hcm_extra {
            y.push_str(&dedent(extra));
        }
        if self.access_log {
            y.push_str(ACCESS_LOG);
        }
        y.push_str("route_config:\n");
        match &self.route_config {
            Some(route_config) => y.push_str(&block(route_config, 2)),
            None => {
                let _ = writeln!(y, "  name: {}", scalar(&self.route_config_name));
                if !self.validate_clusters {
                    y.push_str("  validate_clusters: false\n");
                }
                y.push_str("  virtual_hosts:\n  - name: all\n    domains: [\"*\"]\n");
                if let Some(extra) = &self.virtual_host_extra {
                    y.push_str(&block(extra, 4));
                }
                y.push_str("    routes:");
                y.push_str(&list(&self.routes, 4));
            }
        }
        y.push_str("http_filters:\n");
        for filter in &self.http_filters {
            y.push_str(&list_item(filter, 0));
        }
        y.push_str("- name: envoy.filters.http.router\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router\n");
        if !self.upstream_http_filters.is_empty() {
            y.push_str("    upstream_http_filters:\n");
            for filter in &self.upstream_http_filters {
                y.push_str(&list_item(filter, 4));
            }
            y.push_str("    - name: envoy.filters.http.upstream_codec\n      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec\n");
        }
        y
    }
}

/// The value of a key whose text ends right after `key:`: ` []` for no items, else the items
/// as a block list at `indent` columns.
fn list(items: &[String], indent: usize) -> String {
    if items.is_empty() {
        return " []\n".to_owned();
    }
    let mut out = "\n".to_owned();
    for item in items {
        out.push_str(&list_item(item, indent));
    }
    out
}

/// A YAML double-quoted scalar. JSON string syntax is a subset of it, so serde_json's escaping
/// is exactly right (and keeps a JSON configuration on one line).
pub fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// `s` as a YAML scalar that Envoy reads as that string: plain when it is an identifier
/// (letters, digits, `.`, `_`, `-`, starting with a letter, and not a word YAML or Envoy's
/// loader reads as a boolean, null or number, such as `on`, `null` or `nan`) or an IPv4
/// address, double-quoted ([`quote`]) otherwise.
pub fn scalar(s: &str) -> String {
    const NOT_STRINGS: [&str; 12] = [
        "y", "yes", "n", "no", "true", "false", "on", "off", "null", "nan", "inf", "infinity",
    ];
    let identifier = s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !NOT_STRINGS.contains(&s.to_ascii_lowercase().as_str());
    if identifier || s.parse::<Ipv4Addr>().is_ok() {
        s.to_owned()
    } else {
        quote(s)
    }
}

/// Removes the common leading indentation so snippets can be written indented in raw strings,
/// and blank lines. A first line written right after the opening quote (`r#"match: ...`
/// followed by indented lines) counts as being at the indentation of the lines after it,
/// unless it opens a block whose first line is at that indentation (`"a:\n  b: 1"`: the
/// lines after it are its content).
pub fn dedent(s: &str) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    let indent_of = |l: &str| l.len() - l.trim_start().len();
    let min_indent = |ls: &[&str]| ls.iter().map(|l| indent_of(l)).min().unwrap_or(0);
    let (first, rest) = match lines.split_first() {
        Some((first, rest)) if !rest.is_empty() && indent_of(first) == 0 => (*first, rest),
        _ => ("", &lines[..]),
    };
    let rest_indent = min_indent(rest);
    let opens_its_content = first.trim_end().ends_with(':')
        && rest.first().is_some_and(|next| {
            indent_of(next) == rest_indent && !next.trim_start().starts_with("- ")
        });
    let (mut out, strip) = if first.is_empty() {
        (String::new(), rest_indent)
    } else if opens_its_content {
        (format!("{}\n", first.trim_end()), 0)
    } else {
        (format!("{}\n", first.trim_end()), rest_indent)
    };
    for l in rest {
        out.push_str(l.get(strip..).unwrap_or(l.trim_start()).trim_end());
        out.push('\n');
    }
    out
}

/// Every line of `s` indented by `columns`.
fn indent(s: &str, columns: usize) -> String {
    let pad = " ".repeat(columns);
    s.lines().map(|l| format!("{pad}{l}\n")).collect()
}

/// A snippet ([`dedent`]ed) as a mapping block at `columns`.
pub fn block(s: &str, columns: usize) -> String {
    indent(&dedent(s), columns)
}

/// A mapping snippet ([`dedent`]ed) as a list item (`- ` before its first key) at `columns`.
/// Comment lines before the first key stay above the item.
pub fn list_item(s: &str, columns: usize) -> String {
    let pad = " ".repeat(columns);
    let mut out = String::new();
    let mut before_first_key = true;
    for l in dedent(s).lines() {
        let marker = if !before_first_key {
            "  "
        } else if l.starts_with('#') {
            ""
        } else {
            before_first_key = false;
            "- "
        };
        let _ = writeln!(out, "{pad}{marker}{l}");
    }
    out
}

#[cfg(test)]
#[allow(clippy::panic)] // a failed check panics with what was generated
mod tests {
    use super::*;

    /// Every key of `yaml` with its path of parent keys (`[]` for a list item) and value, e.g.
    /// `static_resources.listeners.[].name: main`: the nesting as a YAML parser sees it from the
    /// indentation (block mappings and lists; flow collections stay values).
    fn paths(yaml: &str) -> Vec<String> {
        // (column, label, is a list item)
        let mut stack: Vec<(usize, String, bool)> = Vec::new();
        let mut out = Vec::new();
        for line in yaml.lines() {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let mut col = line.len() - trimmed.len();
            let mut rest = trimmed;
            while let Some(item) = rest.strip_prefix("- ") {
                while stack
                    .last()
                    .is_some_and(|(c, _, is_item)| *c > col || (*c == col && *is_item))
                {
                    stack.pop();
                }
                stack.push((col, "[]".to_owned(), true));
                col += 2;
                rest = item;
            }
            while stack.last().is_some_and(|(c, _, _)| *c >= col) {
                stack.pop();
            }
            let prefix: String = stack.iter().map(|(_, l, _)| format!("{l}.")).collect();
            match rest.split_once(':') {
                Some((key, value)) if !key.starts_with(['{', '[', '"']) || key == "\"@type\"" => {
                    out.push(format!("{prefix}{key}:{value}"));
                    stack.push((col, key.to_owned(), false));
                }
                _ => out.push(format!("{prefix}{rest}")),
            }
        }
        out
    }

    fn has(paths: &[String], wanted: &str) -> usize {
        paths
            .iter()
            .position(|p| p == wanted)
            .unwrap_or_else(|| panic!("no {wanted:?} in\n{}", paths.join("\n")))
    }

    #[test]
    fn the_path_reader_follows_indentation_and_compact_lists() {
        let p = paths("a:\n  b: 1\n  c:\n  - d: 2\n    e: 3\n  - - f: 4\n  h: 5\ng: [1]\n");
        assert_eq!(
            p,
            [
                "a:",
                "a.b: 1",
                "a.c:",
                "a.c.[].d: 2",
                "a.c.[].e: 3",
                "a.c.[].[].f: 4",
                "a.h: 5",
                "g: [1]"
            ]
        );
    }

    const WASM_PATH: &str = "typed_config.config";

    #[test]
    fn a_wasm_filter_reloads_a_crashed_vm_and_passes_its_configuration_verbatim() {
        let f = WasmFilter::new(
            "switchyard.ratelimit",
            "/opt/dist/ratelimit.wasm",
            "{\n \"a\": \"b: c\"\n}",
        );
        assert_eq!(
            f.yaml(),
            r#"name: switchyard.ratelimit
typed_config:
  "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
  config:
    name: switchyard.ratelimit
    failure_policy: FAIL_RELOAD
    reload_config:
      backoff: { base_interval: 1s }
    vm_config:
      vm_id: switchyard.ratelimit
      runtime: envoy.wasm.runtime.v8
      code:
        local:
          filename: "/opt/dist/ratelimit.wasm"
    configuration:
      "@type": type.googleapis.com/google.protobuf.StringValue
      value: "{\n \"a\": \"b: c\"\n}"
"#
        );
        let p = paths(&list_item(&f.yaml(), 10));
        has(&p, &format!("[].{WASM_PATH}.failure_policy: FAIL_RELOAD"));
        has(
            &p,
            &format!("[].{WASM_PATH}.reload_config.backoff: {{ base_interval: 1s }}"),
        );
        has(
            &p,
            &format!("[].{WASM_PATH}.vm_config.code.local.filename: \"/opt/dist/ratelimit.wasm\""),
        );
    }

    #[test]
    fn a_failure_policy_in_extra_replaces_the_default_one() {
        let f = WasmFilter {
            root_id: Some("probe".to_owned()),
            vm_id: Some("shared vm".to_owned()),
            disabled: true,
            extra: Some(
                "\n    failure_policy: FAIL_CLOSED\n    allow_precompiled: true\n".to_owned(),
            ),
            ..WasmFilter::new("probe", "{{DIR}}/probe.wasm", "")
        };
        let p = paths(&f.yaml());
        assert!(!f.yaml().contains("FAIL_RELOAD") && !f.yaml().contains("reload_config"));
        has(&p, "disabled: true");
        has(&p, &format!("{WASM_PATH}.root_id: probe"));
        has(&p, &format!("{WASM_PATH}.vm_config.vm_id: \"shared vm\""));
        has(&p, &format!("{WASM_PATH}.failure_policy: FAIL_CLOSED"));
        has(&p, &format!("{WASM_PATH}.allow_precompiled: true"));
        has(&p, &format!("{WASM_PATH}.configuration.value: \"\""));
        // A reload backoff of one's own keeps FAIL_RELOAD.
        let own = WasmFilter {
            extra: Some("reload_config: { backoff: { base_interval: 2s } }".to_owned()),
            ..WasmFilter::new("w", "/w.wasm", "{}")
        };
        assert_eq!(
            own.yaml().matches("reload_config").count(),
            1,
            "{}",
            own.yaml()
        );
        assert!(own.yaml().contains("failure_policy: FAIL_RELOAD"));
    }

    #[test]
    fn a_cluster_lists_its_endpoints_with_its_options() {
        let c = Cluster {
            lb_policy: Some("RING_HASH".to_owned()),
            ..Cluster::new(
                "web_ring",
                [("127.0.0.1".to_owned(), 3), ("::1".to_owned(), 4)],
            )
        };
        assert_eq!(
            list_item(&c.yaml(), 2),
            r#"  - name: web_ring
    type: STATIC
    connect_timeout: 1s
    lb_policy: RING_HASH
    load_assignment:
      cluster_name: web_ring
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: 3 }
        - endpoint:
            address:
              socket_address: { address: "::1", port_value: 4 }
"#
        );
        let rls = Cluster {
            connect_timeout: "0.25s".to_owned(),
            http2: true,
            extra: Some("circuit_breakers:\n  thresholds:\n  - max_connections: 64\n".to_owned()),
            ..Cluster::loopback("rls", &[9])
        };
        let p = paths(&rls.yaml());
        has(&p, "connect_timeout: 0.25s");
        has(&p, "typed_extension_protocol_options.envoy.extensions.upstreams.http.v3.HttpProtocolOptions.explicit_http_config.http2_protocol_options: {}");
        has(&p, "load_assignment.endpoints.[].lb_endpoints.[].endpoint.address.socket_address: { address: 127.0.0.1, port_value: 9 }");
        has(&p, "circuit_breakers.thresholds.[].max_connections: 64");
        assert!(Cluster::loopback("none", &[])
            .yaml()
            .contains("- lb_endpoints: []\n"));
        let web = Cluster {
            extra: Some(OVERRIDE_HOST_CLUSTER.to_owned()),
            ..Cluster::loopback("web", &[1])
        };
        let p = paths(&web.yaml());
        has(&p, "load_balancing_policy.policies.[].typed_extension_config.typed_config.override_host_sources.[].header: x-upstream-host");
        has(&p, "typed_extension_protocol_options.envoy.extensions.upstreams.http.v3.HttpProtocolOptions.http_filters.[].typed_config.mutations.request_mutations.[].remove: x-upstream-host");
    }

    #[test]
    fn shared_snippets_name_the_shared_headers() {
        assert!(OVERRIDE_HOST_POLICY.contains(&format!("- header: {OVERRIDE_HOST_HEADER}\n")));
        assert!(OVERRIDE_HOST_CLUSTER.starts_with(OVERRIDE_HOST_POLICY));
        assert!(OVERRIDE_HOST_CLUSTER.contains(&format!("- remove: {OVERRIDE_HOST_HEADER}\n")));
        assert!(!OVERRIDE_HOST_POLICY.contains("typed_extension_protocol_options"));
        assert_eq!(ROUTE_BY_CLUSTER_HEADER.matches(CLUSTER_HEADER).count(), 2);
    }

    fn demo_like() -> Bootstrap {
        Bootstrap {
            comment: Some("Generated; edits are overwritten.".to_owned()),
            use_remote_address: true,
            access_log: true,
            routes: vec![
                format!("# Only the router filter sets this header.{ROUTE_BY_CLUSTER_HEADER}"),
                catch_all("web"),
            ],
            http_filters: vec![
                WasmFilter::new("switchyard.ratelimit", "/r.wasm", "{}").yaml(),
                "name: envoy.filters.http.cache\ntyped_config: {}\n".to_owned(),
                WasmFilter::new("switchyard.hashring", "/h.wasm", "{}").yaml(),
            ],
            clusters: vec![
                Cluster::loopback("web", &[8081, 8082]).yaml(),
                Cluster::loopback("users", &[8083]).yaml(),
            ],
            ..Bootstrap::new("switchyard", 9901, 10000)
        }
    }

    #[test]
    fn a_bootstrap_has_admin_the_listener_and_the_filters_in_chain_order() {
        let yaml = demo_like().yaml();
        assert!(
            yaml.starts_with("# Generated; edits are overwritten.\nadmin:\n"),
            "{yaml}"
        );
        let p = paths(&yaml);
        has(
            &p,
            "admin.address.socket_address: { address: 127.0.0.1, port_value: 9901 }",
        );
        let listener = "static_resources.listeners.[]";
        has(&p, &format!("{listener}.name: switchyard"));
        has(
            &p,
            &format!(
                "{listener}.address.socket_address: {{ address: 127.0.0.1, port_value: 10000 }}"
            ),
        );
        let hcm = format!("{listener}.filter_chains.[].filters.[].typed_config");
        has(&p, &format!("{hcm}.stat_prefix: switchyard"));
        has(&p, &format!("{hcm}.use_remote_address: true"));
        has(&p, &format!("{hcm}.normalize_path: true"));
        has(
            &p,
            &format!("{hcm}.path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT"),
        );
        has(
            &p,
            &format!("{hcm}.access_log.[].name: envoy.access_loggers.stdout"),
        );
        let vhost = format!("{hcm}.route_config.virtual_hosts.[]");
        has(&p, &format!("{hcm}.route_config.name: switchyard"));
        has(&p, &format!("{vhost}.domains: [\"*\"]"));
        let by_header = has(
            &p,
            &format!("{vhost}.routes.[].route.cluster_header: x-switchyard-cluster"),
        );
        let catch = has(&p, &format!("{vhost}.routes.[].route: {{ cluster: web }}"));
        assert!(by_header < catch);
        // The chain in order, then the router.
        let filter = |name: &str| has(&p, &format!("{hcm}.http_filters.[].name: {name}"));
        let chain = [
            "switchyard.ratelimit",
            "envoy.filters.http.cache",
            "switchyard.hashring",
            "envoy.filters.http.router",
        ]
        .map(filter);
        assert!(chain.windows(2).all(|w| w[0] < w[1]), "{chain:?}");
        has(
            &p,
            &format!("{hcm}.http_filters.[].{WASM_PATH}.failure_policy: FAIL_RELOAD"),
        );
        let clusters = "static_resources.clusters.[]";
        has(&p, &format!("{clusters}.name: web"));
        has(&p, &format!("{clusters}.name: users"));
        has(&p, &format!("{clusters}.load_assignment.endpoints.[].lb_endpoints.[].endpoint.address.socket_address: {{ address: 127.0.0.1, port_value: 8083 }}"));
        // The route comment stays above its item.
        assert!(
            yaml.contains(
                "      # Only the router filter sets this header.\n              - match:\n"
            ),
            "{yaml}"
        );
    }

    #[test]
    fn a_test_bootstrap_takes_placeholders_extras_and_a_route_config_of_its_own() {
        let b = Bootstrap {
            node: Some("switchyard-test".to_owned()),
            stat_prefix: "ingress".to_owned(),
            hcm_extra: vec![
                "codec_type: AUTO".to_owned(),
                "normalize_path: false".to_owned(),
            ],
            validate_clusters: false,
            virtual_host_extra: Some("retry_policy: { num_retries: 2 }".to_owned()),
            upstream_http_filters: vec!["name: envoy.filters.http.header_mutation".to_owned()],
            extra: Some("\n  layered_runtime:\n    layers: []\n".to_owned()),
            ..Bootstrap::new("main", "{{ADMIN_PORT}}", "{{LISTENER_PORT}}")
        };
        let yaml = b.yaml();
        let p = paths(&yaml);
        has(
            &p,
            "node: { id: switchyard-test, cluster: switchyard-test }",
        );
        has(
            &p,
            "admin.address.socket_address: { address: 127.0.0.1, port_value: {{ADMIN_PORT}} }",
        );
        let hcm = "static_resources.listeners.[].filter_chains.[].filters.[].typed_config";
        has(&p, &format!("{hcm}.stat_prefix: ingress"));
        has(&p, &format!("{hcm}.codec_type: AUTO"));
        has(&p, &format!("{hcm}.normalize_path: false"));
        assert!(!yaml.contains("merge_slashes") && !yaml.contains("use_remote_address"));
        has(&p, &format!("{hcm}.route_config.validate_clusters: false"));
        has(
            &p,
            &format!("{hcm}.route_config.virtual_hosts.[].retry_policy: {{ num_retries: 2 }}"),
        );
        has(
            &p,
            &format!("{hcm}.route_config.virtual_hosts.[].routes: []"),
        );
        let upstream = format!("{hcm}.http_filters.[].typed_config.upstream_http_filters.[].name");
        let mutation = has(
            &p,
            &format!("{upstream}: envoy.filters.http.header_mutation"),
        );
        assert!(
            mutation
                < has(
                    &p,
                    &format!("{upstream}: envoy.filters.http.upstream_codec")
                )
        );
        has(&p, "static_resources.clusters: []");
        has(&p, "layered_runtime.layers: []");

        let own = Bootstrap {
            route_config: Some("name: custom\nvirtual_hosts: []\n".to_owned()),
            ..Bootstrap::new("main", 1, 2)
        };
        let p = paths(&own.yaml());
        has(&p, &format!("{hcm}.route_config.name: custom"));
        has(&p, &format!("{hcm}.route_config.virtual_hosts: []"));
        assert!(!own.yaml().contains("domains"));
    }

    #[test]
    fn scalars_are_plain_only_where_yaml_reads_them_as_that_string() {
        for plain in [
            "web",
            "switchyard.hashring-p2c",
            "api_v1",
            "127.0.0.1",
            "localhost",
        ] {
            assert_eq!(scalar(plain), plain);
        }
        for quoted in [
            "", "on", "No", "NULL", "nan", "Infinity", "1", "1.5", "8080", "1e5", "-a", ".inf",
            "::1", "a b", "a:b", "{{DIR}}", "x#y", "[a]", "é",
        ] {
            assert_eq!(scalar(quoted), quote(quoted), "{quoted}");
        }
        assert_eq!(quote(r#"{"a":"b"}"#), r#""{\"a\":\"b\"}""#);
    }

    #[test]
    fn snippets_are_dedented_and_placed_keeping_relative_indentation() {
        let s = "\n    match: { prefix: \"/a\" }\n    route:\n      cluster: x\n";
        assert_eq!(
            list_item(s, 2),
            "  - match: { prefix: \"/a\" }\n    route:\n      cluster: x\n"
        );
        assert_eq!(
            block("a: 1\nb:\n  c: 2", 4),
            "    a: 1\n    b:\n      c: 2\n"
        );
        // First line on the opening-quote line, the rest indented like it.
        assert_eq!(
            dedent("match: {}\n        route:\n          cluster: a\n      "),
            "match: {}\nroute:\n  cluster: a\n"
        );
        // ... unless it opens a block and the lines after it are that block.
        assert_eq!(
            dedent("circuit_breakers:\n  thresholds:\n  - max_connections: 1\n"),
            "circuit_breakers:\n  thresholds:\n  - max_connections: 1\n"
        );
        assert_eq!(
            dedent("route:\n          cluster: a\n        match: {}\n"),
            "route:\n  cluster: a\nmatch: {}\n"
        );
        assert_eq!(dedent("  \n    a: 1\n\n    b: 2  \n"), "a: 1\nb: 2\n");
        assert_eq!(dedent("a: 1"), "a: 1\n");
        assert_eq!(
            list_item("\n  # why\n  a: 1\n  # inside\n  b: 2\n", 4),
            "    # why\n    - a: 1\n      # inside\n      b: 2\n"
        );
    }
}
