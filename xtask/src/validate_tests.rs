//! Envoy's own validator (`envoy --mode validate`, which also loads each wasm module and runs its
//! `on_configure`) on the configurations users copy: the generated demo YAML and docs/envoy.md's
//! plain-Envoy snippet. Needs Envoy (`ENVOY_BIN` or `cargo xtask envoy`) and `dist/probe.wasm`
//! (`cargo xtask build`); `cargo xtask test` provides both.

use crate::build::{FILTERS, PROBE};
use crate::envoy;
use crate::envoy_config::{demo_yaml, Ports, WasmFilter};
use crate::util;
use std::path::{Path, PathBuf};
use std::process::Command;

const PROBE_CONFIG: &str = r#"{"mode":"noop"}"#;

/// `ENVOY_BIN`, else the default install path; never installs anything.
fn envoy_bin() -> PathBuf {
    let bin = match std::env::var_os("ENVOY_BIN") {
        Some(bin) if !bin.is_empty() => Some(util::absolute(Path::new(&bin))),
        _ => Some(envoy::install_path(envoy::DEFAULT_VERSION)).filter(|p| p.is_file()),
    };
    match bin {
        Some(bin) => bin,
        None => panic!(
            "no Envoy binary: set ENVOY_BIN or run `cargo xtask envoy` (installs {})",
            envoy::install_path(envoy::DEFAULT_VERSION).display()
        ),
    }
}

fn dist() -> PathBuf {
    std::env::var_os("SWITCHYARD_DIST")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(util::dist_dir)
}

fn probe_wasm() -> PathBuf {
    let probe = dist().join(format!("{PROBE}.wasm"));
    assert!(
        probe.is_file(),
        "{} missing: run `cargo xtask build` (or `cargo xtask test`)",
        probe.display()
    );
    probe
}

/// A scratch directory removed when the test ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `envoy --mode validate` and fails the test with Envoy's output if it rejects the file.
fn assert_valid(yaml: &str, scratch: &Path) {
    let path = scratch.join("envoy.yaml");
    std::fs::write(&path, yaml).unwrap();
    let bin = envoy_bin();
    let out = Command::new(&bin)
        .args(["--mode", "validate", "--use-dynamic-base-id", "-c"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    assert!(
        out.status.success(),
        "envoy rejected the configuration:\n{}\n--- envoy output ---\n{}{}",
        yaml,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Ports nobody listens on: validation never binds them.
const UNUSED_PORTS: Ports = Ports {
    listener: 10000,
    admin: 9901,
    upstreams: [8081, 8082, 8083],
};

#[test]
fn demo_configuration_with_all_four_filters_is_accepted_by_envoy() {
    let demo_dir = util::workspace_root().join("envoy").join("demo");
    let probe = probe_wasm();
    // A filter that is ready for the demo (module built, demo config written) is validated for
    // real, config included; one that is not yet is stood in for by the probe, so the topology
    // and the four-filter chain are always checked.
    let chain: Vec<WasmFilter> = FILTERS
        .iter()
        .map(|name| {
            let wasm = dist().join(format!("{name}.wasm"));
            let json = demo_dir.join(format!("{name}.json"));
            match std::fs::read_to_string(&json) {
                Ok(configuration) if wasm.is_file() => WasmFilter {
                    name: (*name).to_owned(),
                    wasm,
                    configuration,
                },
                _ => WasmFilter {
                    name: (*name).to_owned(),
                    wasm: probe.clone(),
                    configuration: PROBE_CONFIG.to_owned(),
                },
            }
        })
        .collect();
    let scratch = Scratch::new("demo");
    assert_valid(&demo_yaml(&chain, &UNUSED_PORTS), &scratch.0);
}

#[test]
fn envoy_rejects_a_demo_configuration_whose_filter_rejects_its_config() {
    // Guards the test above: validation really runs the module's on_configure.
    let chain = [WasmFilter {
        name: "ratelimit".to_owned(),
        wasm: probe_wasm(),
        configuration: r#"{"mode":"no-such-mode"}"#.to_owned(),
    }];
    let scratch = Scratch::new("bad-demo");
    let path = scratch.0.join("envoy.yaml");
    std::fs::write(&path, demo_yaml(&chain, &UNUSED_PORTS)).unwrap();
    let out = Command::new(envoy_bin())
        .args(["--mode", "validate", "--use-dynamic-base-id", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "envoy accepted a rejected plugin config"
    );
}

/// The YAML block of docs/envoy.md ("Loading a filter in plain Envoy").
fn plain_envoy_snippet() -> String {
    let page = std::fs::read_to_string(util::workspace_root().join("docs/envoy.md")).unwrap();
    let section = page
        .split_once("# Loading a filter in plain Envoy")
        .map(|(_, rest)| rest)
        .expect("docs/envoy.md has no `# Loading a filter in plain Envoy` title");
    section
        .split_once("```yaml\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .map(|(yaml, _)| yaml.to_owned())
        .expect("no ```yaml block in the plain-Envoy section")
}

/// The module path the snippet uses, replaced by a real one in tests.
const SNIPPET_WASM_PATH: &str = "/etc/envoy/switchyard/ratelimit.wasm";

/// Replaces the `value: |` block scalar (the filter configuration) with `replacement`.
fn replace_configuration(yaml: &str, replacement: &str) -> String {
    let lines: Vec<&str> = yaml.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == "value: |")
        .expect("the snippet's configuration is a `value: |` block");
    let indent = lines[start].len() - lines[start].trim_start().len();
    let end = lines[start + 1..]
        .iter()
        .position(|l| !l.trim().is_empty() && l.len() - l.trim_start().len() <= indent)
        .map_or(lines.len(), |n| start + 1 + n);
    let mut out: Vec<String> = lines[..start].iter().map(|l| l.to_string()).collect();
    out.push(format!("{}value: |", " ".repeat(indent)));
    out.push(format!("{}{replacement}", " ".repeat(indent + 2)));
    out.extend(lines[end..].iter().map(|l| l.to_string()));
    out.join("\n") + "\n"
}

#[test]
fn readme_plain_envoy_snippet_is_accepted_by_envoy() {
    let snippet = plain_envoy_snippet();
    assert!(
        snippet.contains(SNIPPET_WASM_PATH),
        "the snippet should load {SNIPPET_WASM_PATH}"
    );
    let scratch = Scratch::new("readme");
    // Structure, with the probe standing in for the module.
    let probe = probe_wasm();
    let with_probe = replace_configuration(
        &snippet.replace(SNIPPET_WASM_PATH, &probe.to_string_lossy()),
        PROBE_CONFIG,
    );
    assert_valid(&with_probe, &scratch.0);

    // The example configuration itself, once the rate limit filter is built for real (its demo
    // config exists from then on).
    let ratelimit = dist().join("ratelimit.wasm");
    let ready = util::workspace_root()
        .join("envoy/demo/ratelimit.json")
        .is_file();
    if ready && ratelimit.is_file() {
        assert_valid(
            &snippet.replace(SNIPPET_WASM_PATH, &ratelimit.to_string_lossy()),
            &scratch.0,
        );
    }
}

#[test]
fn replace_configuration_swaps_only_the_block() {
    let yaml = "a:\n  value: |\n    {\n      \"x\": 1\n    }\n  b: 2\n";
    assert_eq!(
        replace_configuration(yaml, "{}"),
        "a:\n  value: |\n    {}\n  b: 2\n"
    );
}
