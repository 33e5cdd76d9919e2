//! Envoy bootstrap generation: a builder for the common shape (one listener, an HTTP connection
//! manager with wasm/native filters and a router, static clusters) and a template escape hatch.

use crate::paths;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

/// One wasm HTTP filter (`envoy.filters.http.wasm`) in the chain.
#[derive(Debug, Clone)]
pub struct WasmFilter {
    name: String,
    path: Option<PathBuf>,
    config: String,
    root_id: Option<String>,
    vm_id: Option<String>,
    extra: Option<String>,
}

impl WasmFilter {
    /// Filter `name` loaded from `dist/<name>.wasm` (see [`crate::wasm_path`]) with no
    /// configuration. The root id and vm id default to `name`.
    pub fn new(name: &str) -> WasmFilter {
        WasmFilter {
            name: name.to_string(),
            path: None,
            config: String::new(),
            root_id: None,
            vm_id: None,
            extra: None,
        }
    }

    /// The filter's JSON configuration.
    pub fn config(mut self, config: &serde_json::Value) -> WasmFilter {
        self.config = config.to_string();
        self
    }

    /// The configuration as raw text (for invalid-JSON tests).
    pub fn config_raw(mut self, config: &str) -> WasmFilter {
        self.config = config.to_string();
        self
    }

    /// Loads the module from this file instead of `dist/`.
    pub fn path(mut self, path: impl Into<PathBuf>) -> WasmFilter {
        self.path = Some(path.into());
        self
    }

    pub fn root_id(mut self, root_id: &str) -> WasmFilter {
        self.root_id = Some(root_id.to_string());
        self
    }

    pub fn vm_id(mut self, vm_id: &str) -> WasmFilter {
        self.vm_id = Some(vm_id.to_string());
        self
    }

    /// Extra YAML fields of the wasm `PluginConfig` (siblings of `root_id`), e.g.
    /// `failure_policy: FAIL_CLOSED`. Without a `failure_policy` here the filter gets
    /// `failure_policy: FAIL_RELOAD`, the policy every shipped configuration uses, so tests run
    /// like production.
    pub fn extra(mut self, yaml: &str) -> WasmFilter {
        self.extra = Some(yaml.to_string());
        self
    }

    fn render(&self, indent: usize) -> String {
        let path = match &self.path {
            Some(p) => p.clone(),
            None => paths::wasm_path(&self.name),
        };
        let root_id = self.root_id.as_deref().unwrap_or(&self.name);
        let vm_id = self.vm_id.as_deref().unwrap_or(&self.name);
        let mut y = format!(
            "name: {name}\n\
             typed_config:\n  \
               \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\n  \
               config:\n    \
                 name: {name}\n    \
                 root_id: {root_id}\n    \
                 vm_config:\n      \
                   vm_id: {vm_id}\n      \
                   runtime: envoy.wasm.runtime.v8\n      \
                   code:\n        \
                     local:\n          \
                       filename: {path}\n    \
                 configuration:\n      \
                   \"@type\": type.googleapis.com/google.protobuf.StringValue\n      \
                   value: {config}\n",
            name = yaml_str(&self.name),
            root_id = yaml_str(root_id),
            vm_id = yaml_str(vm_id),
            path = yaml_str(&path.to_string_lossy()),
            config = yaml_str(&self.config),
        );
        let sets_policy = self.extra.as_deref().is_some_and(|extra| {
            extra
                .lines()
                .any(|l| l.trim_start().starts_with("failure_policy:"))
        });
        if !sets_policy {
            y.push_str(&block("failure_policy: FAIL_RELOAD", 4));
        }
        if let Some(extra) = &self.extra {
            y.push_str(&block(extra, 4));
        }
        list_item(&y, indent)
    }
}

/// A static cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    name: String,
    endpoints: Vec<String>,
    connect_timeout: String,
    extra: Option<String>,
    raw: Option<String>,
}

impl Cluster {
    /// A `STATIC` cluster with the given `host:port` endpoints (one locality, round robin).
    pub fn new<E: ToString>(name: &str, endpoints: impl IntoIterator<Item = E>) -> Cluster {
        Cluster {
            name: name.to_string(),
            endpoints: endpoints.into_iter().map(|e| e.to_string()).collect(),
            connect_timeout: "1s".to_string(),
            extra: None,
            raw: None,
        }
    }

    /// A cluster written entirely by hand (a YAML mapping: `name`, `type`, ... ), e.g. an
    /// `ORIGINAL_DST` cluster.
    pub fn raw(name: &str, yaml: &str) -> Cluster {
        Cluster {
            name: name.to_string(),
            endpoints: Vec::new(),
            connect_timeout: String::new(),
            extra: None,
            raw: Some(yaml.to_string()),
        }
    }

    pub fn connect_timeout(mut self, timeout: &str) -> Cluster {
        self.connect_timeout = timeout.to_string();
        self
    }

    /// Extra YAML fields of the cluster (siblings of `name`): `lb_policy`,
    /// `load_balancing_policy` (e.g. override_host), `outlier_detection`,
    /// `typed_extension_protocol_options` (upstream HTTP filters), `health_checks`, ...
    pub fn extra(mut self, yaml: &str) -> Cluster {
        self.extra = Some(yaml.to_string());
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn render(&self, indent: usize) -> Result<String, String> {
        if let Some(raw) = &self.raw {
            return Ok(list_item(&dedent(raw), indent));
        }
        let mut y = format!(
            "name: {name}\ntype: STATIC\nconnect_timeout: {timeout}\nload_assignment:\n  cluster_name: {name}\n  endpoints:\n  - lb_endpoints:\n",
            name = yaml_str(&self.name),
            timeout = self.connect_timeout,
        );
        if self.endpoints.is_empty() {
            y.push_str("    []\n");
        }
        for ep in &self.endpoints {
            let (host, port) = ep.rsplit_once(':').ok_or_else(|| {
                format!("cluster {}: endpoint {ep:?} is not host:port", self.name)
            })?;
            let port: u16 = port
                .parse()
                .map_err(|_| format!("cluster {}: endpoint {ep:?} has a bad port", self.name))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let _ = writeln!(
                y,
                "    - endpoint:\n        address:\n          socket_address: {{ address: {}, port_value: {port} }}",
                yaml_str(host)
            );
        }
        if let Some(extra) = &self.extra {
            y.push_str(&dedent(extra));
        }
        Ok(list_item(&y, indent))
    }
}

#[derive(Debug, Clone)]
enum HttpFilter {
    Wasm(WasmFilter),
    Native(String),
}

/// Everything needed to write one bootstrap file. Built through [`crate::EnvoyBuilder`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Spec {
    pub(crate) template: Option<String>,
    filters: Vec<HttpFilter>,
    clusters: Vec<Cluster>,
    default_cluster: Option<String>,
    default_route: bool,
    routes: Vec<String>,
    route_config: Option<String>,
    vhost_extra: Option<String>,
    hcm_extra: Option<String>,
    bootstrap_extra: Option<String>,
    upstream_filters: Vec<String>,
}

impl Spec {
    pub(crate) fn generated() -> Spec {
        Spec {
            default_route: true,
            ..Spec::default()
        }
    }

    pub(crate) fn wasm(&mut self, f: WasmFilter) {
        self.filters.push(HttpFilter::Wasm(f));
    }
    pub(crate) fn native(&mut self, yaml: &str) {
        self.filters.push(HttpFilter::Native(yaml.to_string()));
    }
    pub(crate) fn cluster(&mut self, c: Cluster) {
        self.clusters.push(c);
    }
    pub(crate) fn route_to(&mut self, cluster: &str) {
        self.default_cluster = Some(cluster.to_string());
    }
    pub(crate) fn route(&mut self, yaml: &str) {
        self.routes.push(yaml.to_string());
    }
    pub(crate) fn no_default_route(&mut self) {
        self.default_route = false;
    }
    pub(crate) fn route_config(&mut self, yaml: &str) {
        self.route_config = Some(yaml.to_string());
    }
    pub(crate) fn vhost_extra(&mut self, yaml: &str) {
        self.vhost_extra = Some(yaml.to_string());
    }
    pub(crate) fn hcm_extra(&mut self, yaml: &str) {
        self.hcm_extra = Some(yaml.to_string());
    }
    pub(crate) fn bootstrap_extra(&mut self, yaml: &str) {
        self.bootstrap_extra = Some(yaml.to_string());
    }
    pub(crate) fn upstream_filter(&mut self, yaml: &str) {
        self.upstream_filters.push(yaml.to_string());
    }

    /// The YAML with placeholders still in it (`{{LISTENER_PORT}}`, `{{ADMIN_PORT}}`, ...).
    pub(crate) fn template_text(&self) -> Result<String, String> {
        if let Some(t) = &self.template {
            return Ok(t.clone());
        }
        let mut y = String::new();
        // File-based xDS (CDS/LDS/ECDS from {{DIR}}) requires a node id and cluster.
        y.push_str("node: { id: switchyard-test, cluster: switchyard-test }\n");
        y.push_str(
            "admin:\n  address:\n    socket_address: { address: 127.0.0.1, port_value: {{ADMIN_PORT}} }\n",
        );
        y.push_str("static_resources:\n  listeners:\n  - name: main\n    address:\n      socket_address: { address: 127.0.0.1, port_value: {{LISTENER_PORT}} }\n");
        y.push_str("    filter_chains:\n    - filters:\n      - name: envoy.filters.network.http_connection_manager\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n          stat_prefix: ingress\n          codec_type: AUTO\n");
        // As every shipped configuration: filters see normalised paths (README "Paths are
        // normalised by Envoy"). `use_remote_address` stays false so tests can choose the
        // client address with X-Forwarded-For.
        if !self
            .hcm_extra
            .as_deref()
            .is_some_and(|e| e.contains("normalize_path"))
        {
            y.push_str("          normalize_path: true\n          merge_slashes: true\n          path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT\n");
        }
        if let Some(extra) = &self.hcm_extra {
            y.push_str(&block(extra, 10));
        }
        if let Some(rc) = &self.route_config {
            y.push_str("          route_config:\n");
            y.push_str(&block(rc, 12));
        } else {
            let default_cluster = self
                .default_cluster
                .clone()
                .or_else(|| self.clusters.first().map(|c| c.name.clone()));
            y.push_str("          route_config:\n            name: local\n");
            // A route to a cluster that only dynamic resources (CDS) will provide cannot be
            // checked at startup; routes to static clusters keep the check.
            if default_cluster
                .as_ref()
                .is_some_and(|d| !self.clusters.iter().any(|c| &c.name == d))
            {
                y.push_str("            validate_clusters: false\n");
            }
            y.push_str("            virtual_hosts:\n            - name: all\n              domains: [\"*\"]\n");
            if let Some(extra) = &self.vhost_extra {
                y.push_str(&block(extra, 14));
            }
            y.push_str("              routes:\n");
            for r in &self.routes {
                y.push_str(&list_item(&dedent(r), 14));
            }
            match (self.default_route, default_cluster) {
                (true, Some(c)) => {
                    let _ = writeln!(
                        y,
                        "              - match: {{ prefix: \"/\" }}\n                route: {{ cluster: {} }}",
                        yaml_str(&c)
                    );
                }
                (true, None) => {
                    y.push_str("              - match: { prefix: \"/\" }\n                direct_response: { status: 503, body: { inline_string: \"no cluster configured\" } }\n");
                }
                (false, _) if self.routes.is_empty() => y.push_str("              []\n"),
                (false, _) => {}
            }
        }
        y.push_str("          http_filters:\n");
        for f in &self.filters {
            match f {
                HttpFilter::Wasm(w) => y.push_str(&w.render(10)),
                HttpFilter::Native(n) => y.push_str(&list_item(&dedent(n), 10)),
            }
        }
        y.push_str("          - name: envoy.filters.http.router\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router\n");
        if !self.upstream_filters.is_empty() {
            y.push_str("              upstream_http_filters:\n");
            for f in &self.upstream_filters {
                y.push_str(&list_item(&dedent(f), 14));
            }
            y.push_str("              - name: envoy.filters.http.upstream_codec\n                typed_config:\n                  \"@type\": type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec\n");
        }
        y.push_str("  clusters:\n");
        if self.clusters.is_empty() {
            y.push_str("  []\n");
        }
        for c in &self.clusters {
            y.push_str(&c.render(2)?);
        }
        if let Some(extra) = &self.bootstrap_extra {
            y.push_str(&dedent(extra));
        }
        Ok(y)
    }
}

/// Replaces every `{{NAME}}` in `template` from `vars`, plus `{{WASM:<filter>}}` with the
/// module path. Unknown placeholders are an error (a typo would otherwise reach Envoy).
pub(crate) fn substitute(
    template: &str,
    vars: &BTreeMap<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unclosed placeholder near {:?}", truncate(&rest[start..])))?;
        let key = after[..end].trim();
        if let Some(v) = vars.get(key) {
            out.push_str(v);
        } else if let Some(filter) = key.strip_prefix("WASM:") {
            out.push_str(&paths::wasm_path(filter.trim()).to_string_lossy());
        } else {
            let known: Vec<&str> = vars.keys().map(String::as_str).collect();
            return Err(format!(
                "unknown placeholder {{{{{key}}}}} (known: {}, WASM:<filter>)",
                known.join(", ")
            ));
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// A YAML double-quoted scalar. JSON string syntax is valid YAML, and it escapes everything.
pub(crate) fn yaml_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// Removes the common leading indentation so snippets can be written indented in raw strings.
/// A first line written right after the opening quote (`r#"match: ...` followed by indented
/// lines) counts as being at the indentation of the lines after it.
pub(crate) fn dedent(s: &str) -> String {
    let mut lines: Vec<&str> = s.lines().collect();
    let mut out = String::new();
    let first_on_quote_line = lines
        .first()
        .is_some_and(|l| !l.trim().is_empty() && !l.starts_with(' '));
    if first_on_quote_line && lines.len() > 1 {
        out.push_str(lines.remove(0).trim_end());
        out.push('\n');
    }
    let indent = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    for l in lines {
        if l.trim().is_empty() {
            continue;
        }
        out.push_str(l.get(indent..).unwrap_or(l.trim_start()).trim_end());
        out.push('\n');
    }
    out
}

/// Indents a snippet as a mapping block at `indent` columns.
pub(crate) fn block(s: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    dedent(s).lines().map(|l| format!("{pad}{l}\n")).collect()
}

/// Turns a mapping snippet into a list item (`- ` before its first line) at `indent` columns.
pub(crate) fn list_item(s: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut out = String::new();
    for (i, l) in dedent(s).lines().enumerate() {
        if i == 0 {
            let _ = writeln!(out, "{pad}- {l}");
        } else {
            let _ = writeln!(out, "{pad}  {l}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedent_and_list_item_keep_relative_indentation() {
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
    }

    #[test]
    fn substitution_replaces_known_and_rejects_unknown() {
        let mut vars = BTreeMap::new();
        vars.insert("LISTENER_PORT".to_string(), "1234".to_string());
        assert_eq!(
            substitute("port: {{LISTENER_PORT}} again {{ LISTENER_PORT }}", &vars).unwrap(),
            "port: 1234 again 1234"
        );
        let err = substitute("x: {{LISTNER_PORT}}", &vars).unwrap_err();
        assert!(err.contains("LISTNER_PORT"), "{err}");
        assert!(substitute("x: {{OPEN", &vars).is_err());
    }

    #[test]
    fn yaml_strings_escape_json_configs() {
        assert_eq!(yaml_str(r#"{"a":"b"}"#), r#""{\"a\":\"b\"}""#);
    }

    #[test]
    fn cluster_rejects_endpoint_without_port() {
        assert!(Cluster::new("c", ["localhost"]).render(2).is_err());
        let y = Cluster::new("c", ["127.0.0.1:80"]).render(2).unwrap();
        assert!(y.contains("port_value: 80"), "{y}");
    }
}
