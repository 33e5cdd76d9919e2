//! Envoy bootstrap generation: a builder for the common shape (one listener, an HTTP connection
//! manager with wasm/native filters and a router, static clusters) and a template escape hatch.
//! The YAML comes from `switchyard-bootstrap`, the generator `cargo xtask` uses too; this module
//! holds the harness's defaults (modules from `dist/`, root id = name, the catch-all route,
//! `{{...}}` placeholders).

use crate::paths;
use std::collections::BTreeMap;
use std::path::PathBuf;
use switchyard_bootstrap::{self as bootstrap, Bootstrap};

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

    /// The shared generator's filter: the module from `dist/` unless [`WasmFilter::path`] is
    /// set, root id and vm id `name` unless set.
    fn plugin(&self) -> bootstrap::WasmFilter {
        let path = match &self.path {
            Some(p) => p.clone(),
            None => paths::wasm_path(&self.name),
        };
        bootstrap::WasmFilter {
            root_id: Some(self.root_id.clone().unwrap_or_else(|| self.name.clone())),
            vm_id: self.vm_id.clone(),
            extra: self.extra.clone(),
            ..bootstrap::WasmFilter::new(&self.name, path, &self.config)
        }
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

    /// The `clusters` entry (a mapping); an error for an endpoint that is not `host:port`.
    fn yaml(&self) -> Result<String, String> {
        if let Some(raw) = &self.raw {
            return Ok(raw.clone());
        }
        let mut endpoints = Vec::new();
        for ep in &self.endpoints {
            let (host, port) = ep.rsplit_once(':').ok_or_else(|| {
                format!("cluster {}: endpoint {ep:?} is not host:port", self.name)
            })?;
            let port: u16 = port
                .parse()
                .map_err(|_| format!("cluster {}: endpoint {ep:?} has a bad port", self.name))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            endpoints.push((host.to_string(), port));
        }
        Ok(bootstrap::Cluster {
            connect_timeout: self.connect_timeout.clone(),
            extra: self.extra.clone(),
            ..bootstrap::Cluster::new(&self.name, endpoints)
        }
        .yaml())
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
        let mut routes: Vec<String> = self.routes.clone();
        let default_cluster = self
            .default_cluster
            .clone()
            .or_else(|| self.clusters.first().map(|c| c.name.clone()));
        if self.default_route {
            routes.push(match &default_cluster {
                Some(c) => bootstrap::catch_all(c),
                None => "match: { prefix: \"/\" }\ndirect_response: { status: 503, body: { inline_string: \"no cluster configured\" } }\n".to_string(),
            });
        }
        let http_filters = self
            .filters
            .iter()
            .map(|f| match f {
                HttpFilter::Wasm(w) => w.plugin().yaml(),
                HttpFilter::Native(n) => n.clone(),
            })
            .collect();
        Ok(Bootstrap {
            // File-based xDS (CDS/LDS/ECDS from {{DIR}}) requires a node id and cluster.
            node: Some("switchyard-test".to_string()),
            stat_prefix: "ingress".to_string(),
            route_config_name: "local".to_string(),
            // As every shipped configuration: filters see normalised paths (README "Paths are
            // normalised by Envoy"), unless `hcm_extra` sets `normalize_path`.
            // `use_remote_address` stays false so tests can choose the client address with
            // X-Forwarded-For.
            hcm_extra: std::iter::once("codec_type: AUTO".to_string())
                .chain(self.hcm_extra.clone())
                .collect(),
            route_config: self.route_config.clone(),
            // A route to a cluster that only dynamic resources (CDS) will provide cannot be
            // checked at startup; routes to static clusters keep the check.
            validate_clusters: default_cluster
                .is_none_or(|d| self.clusters.iter().any(|c| c.name == d)),
            virtual_host_extra: self.vhost_extra.clone(),
            routes,
            http_filters,
            upstream_http_filters: self.upstream_filters.clone(),
            clusters: self
                .clusters
                .iter()
                .map(Cluster::yaml)
                .collect::<Result<_, _>>()?,
            extra: self.bootstrap_extra.clone(),
            ..Bootstrap::new("main", "{{ADMIN_PORT}}", "{{LISTENER_PORT}}")
        }
        .yaml())
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn cluster_rejects_endpoint_without_port() {
        assert!(Cluster::new("c", ["localhost"]).yaml().is_err());
        assert!(Cluster::new("c", ["[::1]:x"]).yaml().is_err());
        let y = Cluster::new("c", ["127.0.0.1:80"]).yaml().unwrap();
        assert!(y.contains("port_value: 80"), "{y}");
    }
}
