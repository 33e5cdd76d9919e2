//! `cargo xtask build`: every filter for wasm32-wasip1 in release, copied to `dist/`, plus the
//! upstream test server.

use crate::util::{self, Result};
use std::path::PathBuf;
use std::process::Command;

pub const WASM_TARGET: &str = "wasm32-wasip1";

/// Filters in chain order (README "Filters in a chain"): rate limit first to reject cheaply (a
/// cache hit never bypasses a limit), then the router, which writes the routing record, then the
/// cache, which keys on that record (a response routed to one cluster is never served to a
/// request routed to another), host selection last (inside the routed cluster).
pub const FILTERS: [&str; 4] = ["ratelimit", "router", "cache", "hashring"];

/// Test fixture filter, built like the others (→ `dist/probe.wasm`).
pub const PROBE: &str = "probe";

/// The suite: every filter as a stage of one module (→ `dist/switchyard.wasm`).
pub const SUITE_PACKAGE: &str = "switchyard-suite";
pub const SUITE_MODULE: &str = "switchyard.wasm";

pub const UPSTREAM_PACKAGE: &str = "switchyard-upstream";

/// The global rate limit service (`services/rls`), started by `tests/integration/tests/global.rs`.
pub const RLS_PACKAGE: &str = "switchyard-rls";

/// What a build produced, for the subcommands that run things afterwards.
pub struct Artifacts {
    pub dist: PathBuf,
    pub upstream_bin: PathBuf,
    pub rls_bin: PathBuf,
}

pub fn build() -> Result<Artifacts> {
    ensure_wasm_target()?;
    let meta = util::metadata()?;

    let wanted: Vec<&str> = FILTERS.iter().copied().chain([PROBE]).collect();
    let present: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|f| meta.packages.iter().any(|p| *p == package(f)))
        .collect();
    for missing in wanted.iter().filter(|f| !present.contains(f)) {
        eprintln!(
            "xtask: package {} is not in the workspace; skipping",
            package(missing)
        );
    }

    if !present.is_empty() {
        let mut cmd = util::cargo();
        cmd.args(["build", "--release", "--target", WASM_TARGET]);
        for f in &present {
            cmd.args(["-p", &package(f)]);
        }
        util::run(&mut cmd)?;
    }

    let dist = util::dist_dir();
    std::fs::create_dir_all(&dist).map_err(|e| format!("create {}: {e}", dist.display()))?;
    let wasm_dir = meta.target_dir.join(WASM_TARGET).join("release");
    println!("Filters in {}:", dist.display());
    for f in &present {
        let from = wasm_dir.join(format!("{}.wasm", package(f).replace('-', "_")));
        let to = dist.join(format!("{f}.wasm"));
        let bytes = std::fs::copy(&from, &to)
            .map_err(|e| format!("copy {} to {}: {e}", from.display(), to.display()))?;
        println!("  {:<16} {:>10}", format!("{f}.wasm"), util::kib(bytes));
    }

    // A cargo invocation of its own: built together with the standalone modules, cargo would
    // unify the filter crates' features and link their four entry points into the suite.
    util::run(util::cargo().args([
        "build",
        "--release",
        "--target",
        WASM_TARGET,
        "-p",
        SUITE_PACKAGE,
    ]))?;
    let from = wasm_dir.join(format!("{}.wasm", SUITE_PACKAGE.replace('-', "_")));
    let to = dist.join(SUITE_MODULE);
    let bytes = std::fs::copy(&from, &to)
        .map_err(|e| format!("copy {} to {}: {e}", from.display(), to.display()))?;
    println!("  {:<16} {:>10}", SUITE_MODULE, util::kib(bytes));

    util::run(util::cargo().args(["build", "--release", "-p", UPSTREAM_PACKAGE]))?;
    let upstream_bin = meta.target_dir.join("release").join(UPSTREAM_PACKAGE);
    if !upstream_bin.is_file() {
        return Err(format!(
            "upstream server binary missing after build: {}",
            upstream_bin.display()
        ));
    }
    println!("Upstream server: {}", upstream_bin.display());
    util::run(util::cargo().args(["build", "--release", "-p", RLS_PACKAGE]))?;
    let rls_bin = meta.target_dir.join("release").join(RLS_PACKAGE);
    if !rls_bin.is_file() {
        return Err(format!(
            "rate limit service binary missing after build: {}",
            rls_bin.display()
        ));
    }
    println!("Rate limit service: {}", rls_bin.display());
    Ok(Artifacts {
        dist,
        upstream_bin,
        rls_bin,
    })
}

pub fn package(filter: &str) -> String {
    format!("switchyard-{filter}")
}

/// Installs the wasm target through rustup when it is missing. Without rustup (a distro
/// toolchain) the build itself reports a missing target clearly enough.
fn ensure_wasm_target() -> Result<()> {
    let installed = match util::output(
        Command::new("rustup")
            .current_dir(util::workspace_root())
            .args(["target", "list", "--installed"]),
    ) {
        Ok(list) => list,
        Err(e) => {
            eprintln!("xtask: rustup unavailable ({e}); assuming {WASM_TARGET} is installed");
            return Ok(());
        }
    };
    if installed.lines().any(|l| l.trim() == WASM_TARGET) {
        return Ok(());
    }
    util::run(
        Command::new("rustup")
            .current_dir(util::workspace_root())
            .args(["target", "add", WASM_TARGET]),
    )
}
