//! The Kubernetes manifests in `k8s/`, checked offline.
//!
//! `k8s/validate.py` renders every Kustomize overlay, validates built-in kinds against the
//! Kubernetes schemas and Istio kinds against Istio's CRD schemas, cross-checks the wiring, and
//! writes every filter configuration it finds. These tests run it and then feed each
//! configuration to the parser of the filter it configures (and the limits of the global rate
//! limit service, switchyard-rls, to the service's own parser, checking that they cover every
//! global rule), and load the plain-Envoy bootstrap with the built filters in a real Envoy
//! (`--mode validate`).
//!
//! Needs the Python tools of tests/requirements.txt (`cargo xtask tools`), and for the Envoy
//! tests the built filters (`cargo xtask build`) and Envoy (`cargo xtask envoy`). Istio's CRDs
//! are vendored at `k8s/schemas/istio-crd-all.gen.yaml` (see `k8s/schemas/README.md`).

#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use serde_json::{json, Value};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;
use switchyard_core::KeySource;
use switchyard_harness::{
    envoy_bin, wait_until, wasm_path, workspace_root, Envoy, Redis, Response, Rls,
};
use switchyard_upstream::Upstream;

/// In the required chain order (README "Filters in a chain").
const FILTERS: [&str; 4] = ["ratelimit", "router", "cache", "hashring"];
const OVERLAYS: [&str; 3] = ["envoy", "istio", "istio-suite"];

/// The Python tools `cargo xtask tools` installs into `SWITCHYARD_TOOLS_DIR` (default
/// target/tools): a venv at `venv/`, or (where Python has no venv module) a `pip --target` tree
/// at `pylib/` used with the system python3.
struct Tools {
    python: PathBuf,
    kubectl: PathBuf,
    pythonpath: Option<PathBuf>,
}

fn tools() -> Tools {
    let dir = match std::env::var_os("SWITCHYARD_TOOLS_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => workspace_root().join("target/tools"),
    };
    let venv = dir.join("venv/bin");
    if venv.join("python").is_file() && venv.join("kubectl").is_file() {
        return Tools {
            python: venv.join("python"),
            kubectl: venv.join("kubectl"),
            pythonpath: None,
        };
    }
    let pylib = dir.join("pylib");
    if pylib.join("bin/kubectl").is_file() {
        return Tools {
            python: PathBuf::from("python3"),
            kubectl: pylib.join("bin/kubectl"),
            pythonpath: Some(pylib),
        };
    }
    panic!(
        "python tools (kubectl, kubernetes-validate, jsonschema, PyYAML) not found in {} — run \
         `cargo xtask tools` (installs tests/requirements.txt into target/tools/venv)",
        dir.display()
    );
}

fn istio_crds() -> PathBuf {
    let path = workspace_root().join("k8s/schemas/istio-crd-all.gen.yaml");
    if !path.is_file() {
        panic!(
            "Istio CRD schemas not found at {} (vendored in k8s/schemas/, see its README.md)",
            path.display()
        );
    }
    path
}

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("switchyard-k8s-{}-{tag}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A temporary copy of `k8s/` with `find` replaced by `replace` in `file` (relative to `k8s/`).
fn broken_copy(tmp: &TempDir, file: &str, find: &str, replace: &str) -> PathBuf {
    edited_copy(tmp, file, |text| {
        assert!(
            text.contains(find),
            "{file} no longer contains {find:?}: update this test"
        );
        text.replacen(find, replace, 1)
    })
}

/// A temporary copy of `k8s/` with `file` (relative to `k8s/`) rewritten by `edit`.
fn edited_copy(tmp: &TempDir, file: &str, edit: impl FnOnce(&str) -> String) -> PathBuf {
    let k8s = tmp.0.join("k8s");
    copy_tree(&workspace_root().join("k8s"), &k8s);
    let path = k8s.join(file);
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, edit(&text)).unwrap();
    k8s
}

/// Runs k8s/validate.py from `k8s_dir` on the given overlays (all when empty).
fn run_validator(k8s_dir: &Path, overlays: &[&str], out: &Path) -> Output {
    let tools = tools();
    let mut cmd = Command::new(&tools.python);
    if let Some(path) = &tools.pythonpath {
        cmd.env("PYTHONPATH", path);
    }
    cmd.arg(k8s_dir.join("validate.py"));
    for overlay in overlays {
        cmd.arg("--overlay").arg(overlay);
    }
    cmd.arg("--k8s-dir")
        .arg(k8s_dir)
        .arg("--istio-crds")
        .arg(istio_crds())
        .arg("--kubectl")
        .arg(&tools.kubectl)
        .arg("--out")
        .arg(out)
        .output()
        .expect("run k8s/validate.py")
}

fn text(output: &Output) -> String {
    format!(
        "exit: {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// One row of the validator's index.tsv.
#[derive(Debug, Clone)]
struct Extracted {
    overlay: String,
    filter: String,
    kind: String,
    file: PathBuf,
    resource: String,
    field: String,
}

fn read_index(out: &Path) -> Vec<Extracted> {
    let index = fs::read_to_string(out.join("index.tsv")).expect("validate.py wrote index.tsv");
    index
        .lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            assert_eq!(cols.len(), 6, "index.tsv row {line:?}");
            Extracted {
                overlay: cols[0].into(),
                filter: cols[1].into(),
                kind: cols[2].into(),
                file: out.join(cols[3]),
                resource: cols[4].into(),
                field: cols[5].into(),
            }
        })
        .collect()
}

/// Feeds every extracted configuration to its filter's parser; one message per rejection,
/// naming the overlay, the resource, the field holding the configuration and the parser's
/// JSON path and reason.
fn filter_config_errors(entries: &[Extracted]) -> Vec<String> {
    let mut errors = Vec::new();
    for e in entries {
        let json = fs::read(&e.file).unwrap();
        let result = match (e.filter.as_str(), e.kind.as_str()) {
            ("ratelimit", "config") => {
                switchyard_ratelimit::validate_config(&json).map_err(|e| e.to_string())
            }
            ("cache", "config") => {
                switchyard_cache::validate_config(&json).map_err(|e| e.to_string())
            }
            ("router", "config") => {
                switchyard_router::validate_config(&json).map_err(|e| e.to_string())
            }
            ("hashring", "config") => {
                switchyard_hashring::validate_config(&json).map_err(|e| e.to_string())
            }
            ("router", "table") => router_table(entries, e, &json).map_err(|e| e.to_string()),
            ("rls", "limits") => rls_limits(&json).map(|_| ()),
            ("envoy", "bootstrap") => continue,
            other => panic!("validate.py extracted an unknown configuration {other:?} ({e:?})"),
        };
        if let Err(err) = result {
            errors.push(format!(
                "{}: {}: {}: rejected by the {} filter: {err}",
                e.overlay, e.resource, e.field, e.filter
            ));
        }
    }
    errors
}

/// A reloaded route table is checked as the router checks it: against the known clusters and
/// cluster header of the router configuration in the same overlay.
fn router_table(entries: &[Extracted], table: &Extracted, json: &[u8]) -> Result<(), String> {
    let router = entries
        .iter()
        .find(|e| e.overlay == table.overlay && e.filter == "router" && e.kind == "config")
        .expect("a route table without a router configuration in the same overlay");
    let config = switchyard_router::config::parse_router_config(&fs::read(&router.file).unwrap())
        .map_err(|e| format!("(the router configuration itself) {e}"))?;
    switchyard_router::config::parse_table(
        json,
        config.known_clusters.as_deref(),
        &config.cluster_header,
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// The limits file of a switchyard-rls Deployment (extracted as a JSON string holding the file's
/// text), parsed by the service's own parser.
fn rls_limits(json: &[u8]) -> Result<switchyard_rls::config::Config, String> {
    let text: String = serde_json::from_slice(json)
        .map_err(|e| format!("validate.py wrote no JSON string: {e}"))?;
    switchyard_rls::config::Config::parse(&text).map_err(|e| e.to_string())
}

/// Every `scope: global` rule of an overlay's ratelimit configuration must be answered by the
/// overlay's switchyard-rls: its `domain` is configured there, and the descriptor it sends
/// (its key parts under `descriptor_keys`; a sample value for parts read from the request) lands
/// on a limit. One message per rule that would be limited by nothing.
fn global_rule_errors(entries: &[Extracted]) -> Vec<String> {
    let mut errors = Vec::new();
    for e in entries
        .iter()
        .filter(|e| e.filter == "ratelimit" && e.kind == "config")
    {
        let Ok(settings) = switchyard_ratelimit::config::parse(&fs::read(&e.file).unwrap()) else {
            continue; // reported by filter_config_errors
        };
        for rule in &settings.rules {
            let Some(global) = &rule.global else {
                continue;
            };
            let at = format!(
                "{}: {}: {}: rule {:?}",
                e.overlay, e.resource, e.field, rule.name
            );
            let limits: Vec<&Extracted> = entries
                .iter()
                .filter(|l| l.overlay == e.overlay && l.filter == "rls" && l.kind == "limits")
                .collect();
            let [limits] = limits.as_slice() else {
                errors.push(format!(
                    "{at}: expected one switchyard-rls limits file in the overlay, found {}",
                    limits.len()
                ));
                continue;
            };
            let config = match rls_limits(&fs::read(&limits.file).unwrap()) {
                Ok(config) => config,
                Err(err) => {
                    errors.push(format!("{at}: the service's limits are invalid: {err}"));
                    continue;
                }
            };
            let Some(domain) = config.domain(&global.domain) else {
                errors.push(format!(
                    "{at}: domain {:?} is not configured in {} {} (domains: {:?})",
                    global.domain,
                    limits.resource,
                    limits.field,
                    config.domains.keys().collect::<Vec<_>>()
                ));
                continue;
            };
            let values: Vec<String> = rule
                .key
                .0
                .iter()
                .map(|part| match part {
                    KeySource::Literal(v) => v.clone(),
                    _ => "sample-user".to_string(),
                })
                .collect();
            let descriptor: Vec<(&str, &str)> = global
                .descriptor_keys
                .iter()
                .map(String::as_str)
                .zip(values.iter().map(String::as_str))
                .collect();
            if domain.lookup(&descriptor).is_none() {
                errors.push(format!(
                    "{at}: the descriptor {descriptor:?} matches no limit of domain {:?} in {} {}, so the service never limits it",
                    global.domain, limits.resource, limits.field
                ));
            }
        }
    }
    errors
}

/// The shipped manifests, validated once for the tests that only read the result.
fn shipped() -> &'static Path {
    static OUT: OnceLock<PathBuf> = OnceLock::new();
    OUT.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("k8s-{}-shipped", std::process::id()));
        let _ = fs::remove_dir_all(&out);
        let output = run_validator(&workspace_root().join("k8s"), &[], &out);
        assert!(
            output.status.success(),
            "k8s/validate.py failed:\n{}",
            text(&output)
        );
        out
    })
}

#[test]
fn manifests_validate_and_every_filter_accepts_its_configuration() {
    let entries = read_index(shipped());
    for overlay in OVERLAYS {
        for filter in FILTERS {
            let n = entries
                .iter()
                .filter(|e| e.overlay == overlay && e.filter == filter && e.kind == "config")
                .count();
            assert_eq!(
                n, 1,
                "overlay {overlay}: expected one {filter} configuration, found {n}: {entries:#?}"
            );
        }
        assert!(
            entries
                .iter()
                .any(|e| e.overlay == overlay && e.kind == "table"),
            "overlay {overlay}: the router's reloaded route table was not found: {entries:#?}"
        );
        let limits = entries
            .iter()
            .filter(|e| e.overlay == overlay && e.filter == "rls" && e.kind == "limits")
            .count();
        assert_eq!(
            limits, 1,
            "overlay {overlay}: expected the limits of one switchyard-rls Deployment: {entries:#?}"
        );
    }
    let errors = filter_config_errors(&entries);
    assert!(
        errors.is_empty(),
        "filter configurations rejected:\n{}",
        errors.join("\n")
    );
}

/// Every overlay ships a global rule, the service's own parser accepts the limits ConfigMap, and
/// every global rule's domain and descriptor land on a limit there.
#[test]
fn rls_limits_are_accepted_by_the_service_and_cover_every_global_rule() {
    let entries = read_index(shipped());
    for overlay in OVERLAYS {
        let config = entries
            .iter()
            .find(|e| e.overlay == overlay && e.filter == "ratelimit" && e.kind == "config")
            .expect("a ratelimit configuration");
        let settings = switchyard_ratelimit::config::parse(&fs::read(&config.file).unwrap())
            .expect("the ratelimit configuration parses");
        assert!(
            settings.rules.iter().any(|r| r.global.is_some()),
            "overlay {overlay}: no scope: global rule in {} {}",
            config.resource,
            config.field
        );
        let limits = entries
            .iter()
            .find(|e| e.overlay == overlay && e.filter == "rls" && e.kind == "limits")
            .expect("the switchyard-rls limits");
        let parsed = rls_limits(&fs::read(&limits.file).unwrap()).unwrap_or_else(|e| {
            panic!(
                "{overlay}: {}: rejected by switchyard-rls: {e}",
                limits.field
            )
        });
        assert!(parsed.domain("switchyard").is_some(), "{overlay}");
    }
    let errors = global_rule_errors(&entries);
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn plain_envoy_bootstrap_loads_in_envoy_with_the_built_filters() {
    let out = TempDir::new("envoy");
    let bootstrap = read_index(shipped())
        .into_iter()
        .find(|e| e.overlay == "envoy" && e.kind == "bootstrap")
        .expect("the envoy overlay's bootstrap");

    // In the pod the modules are image volumes at /etc/envoy/filters/<f>/plugin.wasm.
    let mut config = fs::read_to_string(&bootstrap.file).unwrap();
    for filter in FILTERS {
        let in_pod = format!("/etc/envoy/filters/{filter}/plugin.wasm");
        assert!(config.contains(&in_pod), "bootstrap does not load {in_pod}");
        config = config.replace(&in_pod, &wasm_path(filter).display().to_string());
    }
    let local = out.0.join("envoy-local.json");
    fs::write(&local, config).unwrap();

    // Validate mode builds every listener and filter (each filter's on_configure runs on the
    // real configuration) without binding ports or resolving DNS.
    let output = Command::new(envoy_bin())
        .args(["--mode", "validate", "--log-level", "warn", "-c"])
        .arg(&local)
        .output()
        .expect("run envoy --mode validate");
    assert!(
        output.status.success(),
        "Envoy rejected the plain-Envoy bootstrap of k8s/overlays/envoy:\n{}",
        text(&output)
    );
}

#[test]
fn invalid_wasmplugin_phase_is_reported_with_resource_field_and_reason() {
    let tmp = TempDir::new("phase");
    let k8s = broken_copy(
        &tmp,
        "overlays/istio/wasmplugins.yaml",
        "phase: AUTHZ",
        "phase: AUTHORIZATION",
    );
    let output = run_validator(&k8s, &["istio"], &tmp.0.join("out"));
    let report = text(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(
        report.contains(
            "ERROR istio: WasmPlugin/switchyard-ratelimit: spec.phase: 'AUTHORIZATION' is not one of"
        ),
        "{report}"
    );
}

/// The router must run before the cache on Istio: with the router's priority below the cache's,
/// the cache would key on requests the router has not routed yet.
#[test]
fn cache_before_router_on_istio_is_reported() {
    let tmp = TempDir::new("istio-order");
    let k8s = broken_copy(
        &tmp,
        "overlays/istio/wasmplugins.yaml",
        "priority: 300",
        "priority: 150",
    );
    let output = run_validator(&k8s, &["istio"], &tmp.0.join("out"));
    let report = text(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(
        report.contains(
            "ERROR istio: WasmPlugin/switchyard-cache: spec.phase/spec.priority: runs before or together with \
             WasmPlugin/switchyard-router (STATS/200 vs STATS/150); required order: ratelimit -> router -> cache -> hashring"
        ),
        "{report}"
    );
}

/// The previous order (ratelimit -> cache -> router -> hashring) is rejected on plain Envoy.
#[test]
fn cache_before_router_on_plain_envoy_is_reported() {
    let tmp = TempDir::new("envoy-order");
    let k8s = edited_copy(&tmp, "overlays/envoy/envoy.yaml", |text| {
        let at = |needle: &str| {
            text.find(needle)
                .unwrap_or_else(|| panic!("{needle:?} not in envoy.yaml: update this test"))
        };
        let router = at("                  - name: switchyard.router\n");
        let cache = at("                  - name: switchyard.cache\n");
        // The cache's block ends where the hashring's (with its leading comment) begins.
        let end = at("                  # Shard identifiers");
        assert!(router < cache && cache < end, "update this test");
        format!(
            "{}{}{}{}",
            &text[..router],
            &text[cache..end],
            &text[router..cache],
            &text[end..]
        )
    });
    let output = run_validator(&k8s, &["envoy"], &tmp.0.join("out"));
    let report = text(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(
        report.contains(
            "Wasm filters run ratelimit -> cache -> router -> hashring; required order: ratelimit -> router -> cache -> hashring"
        ),
        "{report}"
    );
}

/// The hashring's `clusters` must name clusters the proxy has, like every other cluster reference.
#[test]
fn hashring_cluster_missing_from_envoy_is_reported() {
    let tmp = TempDir::new("hashring-clusters");
    let k8s = broken_copy(
        &tmp,
        "overlays/envoy/envoy.yaml",
        r#""clusters": ["upstream"]"#,
        r#""clusters": ["upstream-v2"]"#,
    );
    let output = run_validator(&k8s, &["envoy"], &tmp.0.join("out"));
    let report = text(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(
        report.contains(
            "configuration.value:clusters[0]: cluster 'upstream-v2' is not defined in static_resources.clusters"
        ),
        "{report}"
    );
}

#[test]
fn unknown_field_in_a_builtin_kind_is_reported() {
    let tmp = TempDir::new("field");
    let k8s = broken_copy(&tmp, "base/upstream.yaml", "replicas: 3", "replica: 3");
    let output = run_validator(&k8s, &[], &tmp.0.join("out"));
    let report = text(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    // The base is part of both overlays.
    for overlay in OVERLAYS {
        assert!(
            report.contains(&format!("ERROR {overlay}: Deployment/upstream: spec: "))
                && report.contains("'replica' was unexpected"),
            "{report}"
        );
    }
}

#[test]
fn unserved_istio_version_is_rejected() {
    let tmp = TempDir::new("version");
    let k8s = broken_copy(
        &tmp,
        "overlays/istio/routing.yaml",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule",
        "apiVersion: networking.istio.io/v2\nkind: DestinationRule",
    );
    let output = run_validator(&k8s, &["istio"], &tmp.0.join("out"));
    let report = text(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(
        report.contains("DestinationRule/upstream: apiVersion: networking.istio.io/v2 does not serve DestinationRule"),
        "{report}"
    );
}

#[test]
fn route_that_ignores_the_router_cluster_header_is_reported() {
    let tmp = TempDir::new("header");
    let k8s = broken_copy(
        &tmp,
        "overlays/istio/routing.yaml",
        "cluster_header: x-switchyard-cluster",
        "cluster_header: x-cluster",
    );
    let output = run_validator(&k8s, &["istio"], &tmp.0.join("out"));
    let report = text(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(
        report.contains("EnvoyFilter/switchyard-cluster-header: spec.configPatches[0].patch.value.route.cluster_header: 'x-cluster' differs from the router filter's cluster_header 'x-switchyard-cluster'"),
        "{report}"
    );
}

#[test]
fn filter_cluster_missing_from_the_mesh_is_reported() {
    let tmp = TempDir::new("cluster");
    let k8s = broken_copy(
        &tmp,
        "overlays/istio/wasmplugins.yaml",
        "upstream_cluster: outbound|8080||upstream.switchyard-demo.svc.cluster.local",
        "upstream_cluster: outbound|8081||upstream.switchyard-demo.svc.cluster.local",
    );
    let output = run_validator(&k8s, &["istio"], &tmp.0.join("out"));
    let report = text(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(
        report.contains("WasmPlugin/switchyard-cache: spec.pluginConfig.upstream_cluster: cluster 'outbound|8081||upstream.switchyard-demo.svc.cluster.local': Service upstream.switchyard-demo.svc.cluster.local has no port 8081"),
        "{report}"
    );
}

#[test]
fn bad_duration_in_plugin_config_is_rejected_by_the_filter_parser() {
    let tmp = TempDir::new("duration");
    let k8s = broken_copy(
        &tmp,
        "overlays/istio/wasmplugins.yaml",
        "per: 10s",
        "per: ten seconds",
    );
    let out = tmp.0.join("out");
    // pluginConfig is free-form to Istio's schema: only the filter's parser can catch this.
    let output = run_validator(&k8s, &["istio"], &out);
    assert!(output.status.success(), "{}", text(&output));
    let errors = filter_config_errors(&read_index(&out));
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with(
            "istio: WasmPlugin/switchyard-ratelimit: spec.pluginConfig: rejected by the ratelimit filter: rules[0].limits[1].per: "
        ),
        "{}",
        errors[0]
    );
}

#[test]
fn route_table_naming_an_unknown_cluster_is_rejected_by_the_router_parser() {
    let tmp = TempDir::new("table");
    let k8s = broken_copy(
        &tmp,
        "overlays/envoy/routes.json",
        r#""default": {"cluster": "upstream"}"#,
        r#""default": {"cluster": "upstream-v2"}"#,
    );
    let out = tmp.0.join("out");
    let output = run_validator(&k8s, &["envoy"], &out);
    let report = text(&output);
    // The validator sees the cluster is not in Envoy's configuration...
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(
        report.contains("data.routes.json:default.cluster: cluster 'upstream-v2' is not defined in the Envoy configuration's clusters"),
        "{report}"
    );
    // ...and the router itself would refuse the table (it is not in known_clusters).
    let errors = filter_config_errors(&read_index(&out));
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("envoy: ConfigMap/routes-config-")
                && e.contains("data.routes.json: rejected by the router filter: default")),
        "{errors:#?}"
    );
}

/// A global rule naming a cluster the proxy does not have: every call would fail at once and the
/// rule would never limit anything.
#[test]
fn global_rule_naming_a_missing_rls_cluster_is_reported() {
    let tmp = TempDir::new("global-cluster");
    let k8s = broken_copy(
        &tmp,
        "overlays/envoy/envoy.yaml",
        r#""service": {"cluster": "switchyard-rls""#,
        r#""service": {"cluster": "ratelimit""#,
    );
    let output = run_validator(&k8s, &["envoy"], &tmp.0.join("out"));
    let report = text(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(
        report.contains(
            "configuration.value:rules[2].service.cluster: cluster 'ratelimit' is not defined in static_resources.clusters"
        ),
        "{report}"
    );
}

/// Istio's own cluster for the service exists, but its name is not a valid `:authority`, which is
/// what a Wasm gRPC call sends: the service's HTTP/2 server would reject every call.
#[test]
fn global_rule_through_an_istio_cluster_name_is_reported() {
    let tmp = TempDir::new("global-authority");
    let k8s = broken_copy(
        &tmp,
        "overlays/istio/wasmplugins.yaml",
        "cluster: switchyard-rls",
        "cluster: outbound|8081||switchyard-rls.switchyard-demo.svc.cluster.local",
    );
    let output = run_validator(&k8s, &["istio"], &tmp.0.join("out"));
    let report = text(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(
        report.contains(
            "ERROR istio: WasmPlugin/switchyard-ratelimit: spec.pluginConfig.rules[2].service.cluster: cluster \
             'outbound|8081||switchyard-rls.switchyard-demo.svc.cluster.local': a Wasm gRPC call sends the cluster \
             name as :authority, and this one is not a valid authority"
        ),
        "{report}"
    );
}

/// The gRPC cluster must speak HTTP/2; an HTTP/1.1 cluster is reported on the plain-Envoy bootstrap.
#[test]
fn global_rule_over_http1_is_reported() {
    let tmp = TempDir::new("global-h2");
    let k8s = broken_copy(
        &tmp,
        "overlays/envoy/envoy.yaml",
        "            http2_protocol_options:\n              connection_keepalive: { interval: 30s, timeout: 5s }\n",
        "            http_protocol_options: {}\n",
    );
    let output = run_validator(&k8s, &["envoy"], &tmp.0.join("out"));
    let report = text(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(
        report.contains("rules[2].service.cluster: cluster 'switchyard-rls' does not speak HTTP/2"),
        "{report}"
    );
}

/// Limits the service would refuse at start, and a domain the global rules do not ask about.
#[test]
fn bad_rls_limits_are_rejected_by_the_service_parser_and_the_rule_check() {
    let tmp = TempDir::new("rls-limits");
    let k8s = broken_copy(
        &tmp,
        "base/rls-limits.yaml",
        "rate_limit: { unit: minute, requests_per_unit: 100, name: per-user-global }",
        "rate_limit: { unit: week, requests_per_unit: 100, name: per-user-global }",
    );
    let out = tmp.0.join("out");
    // The limits are free-form to Kubernetes: only the service's parser can catch this.
    let output = run_validator(&k8s, &["envoy"], &out);
    assert!(output.status.success(), "{}", text(&output));
    let errors = filter_config_errors(&read_index(&out));
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with("envoy: ConfigMap/switchyard-rls-")
            && errors[0].contains(
                "data.limits.yaml: rejected by the rls filter: domains[0].descriptors[0].descriptors[0].rate_limit.unit: "
            ),
        "{}",
        errors[0]
    );

    let tmp = TempDir::new("rls-domain");
    let k8s = broken_copy(
        &tmp,
        "base/rls-limits.yaml",
        "  - domain: switchyard\n",
        "  - domain: edge\n",
    );
    let out = tmp.0.join("out");
    let output = run_validator(&k8s, &["envoy"], &out);
    assert!(output.status.success(), "{}", text(&output));
    let entries = read_index(&out);
    assert!(filter_config_errors(&entries).is_empty());
    let errors = global_rule_errors(&entries);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains("rule \"per-user-global\": domain \"switchyard\" is not configured in ConfigMap/switchyard-rls-"),
        "{}",
        errors[0]
    );
}

/// The plain-Envoy overlay's bootstrap, rewired to loopback: listener and admin on free ports,
/// the `upstream` cluster on `upstreams`, `routes-config` on `config` (serving the overlay's
/// routes.json from its store), `switchyard-rls` on `rls` (gRPC), modules from dist/.
/// Everything else is as shipped.
fn loopback_bootstrap(upstreams: &[&Upstream], config: &Upstream, rls: SocketAddr) -> String {
    let entry = read_index(shipped())
        .into_iter()
        .find(|e| e.overlay == "envoy" && e.kind == "bootstrap")
        .expect("the envoy overlay's bootstrap");
    let mut boot: Value = serde_json::from_slice(&fs::read(&entry.file).unwrap()).unwrap();
    boot["admin"]["address"]["socket_address"] =
        json!({"address": "127.0.0.1", "port_value": "@ADMIN@"});
    let listener = &mut boot["static_resources"]["listeners"][0];
    listener["address"]["socket_address"] =
        json!({"address": "127.0.0.1", "port_value": "@LISTENER@"});
    let hcm = &mut listener["filter_chains"][0]["filters"][0]["typed_config"];
    for filter in hcm["http_filters"].as_array_mut().unwrap() {
        // Only the Wasm filters have a `config` (indexing with [] would insert one).
        let Some(plugin) = filter["typed_config"].get_mut("config") else {
            continue;
        };
        let code = &mut plugin["vm_config"]["code"]["local"]["filename"];
        let name = code
            .as_str()
            .unwrap()
            .split('/')
            .nth_back(1)
            .unwrap()
            .to_string();
        *code = json!(format!("{{{{WASM:{name}}}}}"));
        if name == "router" {
            // The test upstream serves stored objects under /__store/.
            let value = &mut plugin["configuration"]["value"];
            let mut router: Value = serde_json::from_str(value.as_str().unwrap()).unwrap();
            router["reload"]["path"] = json!("/__store/routes.json");
            *value = json!(router.to_string());
        }
    }
    let endpoints = |ups: &[&Upstream]| -> Value {
        json!([{"lb_endpoints": ups.iter().map(|u| json!({"endpoint": {"address": {"socket_address":
            {"address": "127.0.0.1", "port_value": u.port()}}}})).collect::<Vec<_>>()}])
    };
    for cluster in boot["static_resources"]["clusters"].as_array_mut().unwrap() {
        let eps = match cluster["name"].as_str().unwrap() {
            "upstream" => endpoints(upstreams),
            "routes-config" => endpoints(&[config]),
            "switchyard-rls" => {
                json!([{"lb_endpoints": [{"endpoint": {"address": {"socket_address":
                {"address": "127.0.0.1", "port_value": rls.port()}}}}]}])
            }
            other => panic!("unexpected cluster {other} in the plain-Envoy bootstrap"),
        };
        cluster["type"] = json!("STATIC");
        cluster["load_assignment"]["endpoints"] = eps;
    }
    serde_json::to_string_pretty(&boot)
        .unwrap()
        .replace("\"@ADMIN@\"", "{{ADMIN_PORT}}")
        .replace("\"@LISTENER@\"", "{{LISTENER_PORT}}")
}

#[test]
fn plain_envoy_overlay_configuration_serves_every_filter_end_to_end() {
    let ups = [
        Upstream::start("pod-a").unwrap(),
        Upstream::start("pod-b").unwrap(),
        Upstream::start("pod-c").unwrap(),
    ];
    let config = Upstream::start("routes-config").unwrap();
    let table = fs::read(workspace_root().join("k8s/overlays/envoy/routes.json")).unwrap();
    config.store_put("routes.json", "application/json", table);
    // switchyard-rls with the shipped limits (k8s/base/rls-limits.yaml), on a real Redis.
    let redis = Redis::start();
    let limits = fs::read_to_string(workspace_root().join("k8s/base/rls-limits.yaml")).unwrap();
    let rls = Rls::builder(&limits).redis(&redis.url()).start();
    wait_until("switchyard-rls is ready", Duration::from_secs(10), || {
        rls.ready()
    });
    let envoy = Envoy::from_yaml(&loopback_bootstrap(
        &ups.iter().collect::<Vec<_>>(),
        &config,
        rls.grpc_addr(),
    ))
    .start();

    // router: direct response, redirect, rewrite with response headers.
    let health = envoy.get("/healthz").send();
    assert_eq!((health.status, health.text().as_str()), (200, "ok"));
    let redirect = envoy.get("/docs/v1/intro").send();
    assert_eq!(redirect.status, 301);
    assert!(
        redirect
            .header("location")
            .unwrap_or_default()
            .ends_with("/docs/v2/intro"),
        "{redirect:?}"
    );
    let user = envoy.get("/users/42").send();
    assert_eq!(user.status, 200);
    assert_eq!(user.header("x-served-by"), Some("users"));
    assert_eq!(user.json()["path"], "/v1/users/42");

    // router reload: the table served by routes-config takes over (it adds /routes/source).
    wait_until(
        "the reloaded route table answers /routes/source",
        Duration::from_secs(30),
        || {
            let r = envoy.get("/routes/source").send();
            r.status == 200 && r.text() == "routes-config"
        },
    );

    // hashring + Maglev on its header: one user always reaches the same pod, and the shard
    // header does not leave the proxy.
    let first = envoy.get("/profile").header("x-user-id", "alice").send();
    let pod = first
        .header("x-upstream-id")
        .expect("x-upstream-id")
        .to_string();
    for _ in 0..5 {
        let again = envoy.get("/profile").header("x-user-id", "alice").send();
        assert_eq!(
            again.header("x-upstream-id"),
            Some(pod.as_str()),
            "{again:?}"
        );
    }
    for up in &ups {
        for req in up.requests() {
            assert_eq!(
                req.header("x-upstream-host"),
                None,
                "shard header leaked upstream: {req:?}"
            );
        }
    }

    // cache: the second GET of a cacheable URL is a hit the upstream never sees.
    let url = "/catalog?header=Cache-Control:max-age%3D60";
    assert_eq!(envoy.get(url).header("x-user-id", "bob").send().status, 200);
    let hit = envoy.get(url).header("x-user-id", "bob").send();
    assert_eq!(hit.header("x-cache"), Some("HIT"), "{hit:?}");
    assert_eq!(ups.iter().map(|u| u.count_path("/catalog")).sum::<u64>(), 1);

    // ratelimit, global rule: a request to /api with x-user-id is asked of switchyard-rls (after
    // the local per-ip tiers admitted it); the service's demo value is always rejected. One
    // second apart, so the per-ip 1/s tier admits both.
    let sample = |name: &str| rls.metric(&format!("{name}{{domain=\"switchyard\"}}"));
    let admitted = envoy.get("/api/items").header("x-user-id", "alice").send();
    assert_eq!(admitted.status, 200, "{admitted:?}");
    assert_eq!(
        sample("switchyard_rls_ok_total"),
        Some(1.0),
        "{}",
        rls.metrics()
    );
    std::thread::sleep(Duration::from_millis(1100));
    let blocked = envoy
        .get("/api/items")
        .header("x-user-id", "demo-blocked")
        .send();
    assert_eq!(blocked.status, 429, "{blocked:?}");
    assert_eq!(
        sample("switchyard_rls_over_limit_total"),
        Some(1.0),
        "{}",
        rls.metrics()
    );
    assert!(
        blocked.text().contains(r#""rule":"per-user-global""#),
        "{blocked:?}"
    );

    // ratelimit: 11 requests to /api from one client exceed the 10-per-minute tier whatever the
    // timing, and rejections carry the IETF RateLimit headers.
    let statuses: Vec<Response> = (0..11)
        .map(|i| envoy.get(&format!("/api/items/{i}")).send())
        .collect();
    let limited: Vec<&Response> = statuses.iter().filter(|r| r.status == 429).collect();
    assert!(
        !limited.is_empty(),
        "no 429 among {:?}",
        statuses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(
        limited[0].header("ratelimit-policy").is_some(),
        "{:?}",
        limited[0]
    );
}
