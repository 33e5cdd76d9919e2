//! Where the Envoy binary and the filter modules are.

use std::path::{Path, PathBuf};

/// The workspace root (`tests/harness/../..`).
pub fn workspace_root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    dir.canonicalize().unwrap_or(dir)
}

/// `ENVOY_BIN`, else `<workspace>/target/tools/envoy-1.40.0/envoy`. Panics (failing the test,
/// never skipping it) when the binary is missing.
pub fn envoy_bin() -> PathBuf {
    let path = match std::env::var_os("ENVOY_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join("target/tools/envoy-1.40.0/envoy"),
    };
    if !path.is_file() {
        panic!(
            "Envoy binary not found at {} — run `cargo xtask envoy` (or set ENVOY_BIN)",
            path.display()
        );
    }
    path
}

/// The directory holding the built filters: `SWITCHYARD_DIST`, else `<workspace>/dist`.
pub fn dist_dir() -> PathBuf {
    match std::env::var_os("SWITCHYARD_DIST") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join("dist"),
    }
}

/// `<dist>/<filter>.wasm`; panics when it is missing, saying how to build it.
pub fn wasm_path(filter: &str) -> PathBuf {
    let path = dist_dir().join(format!("{filter}.wasm"));
    if !path.is_file() {
        panic!(
            "wasm filter {filter:?} not found at {} — run `cargo xtask build` (or set SWITCHYARD_DIST)",
            path.display()
        );
    }
    path.canonicalize().unwrap_or(path)
}
