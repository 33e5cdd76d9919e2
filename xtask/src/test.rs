//! `cargo xtask test`: what CI runs. build → envoy → tools → tests → clippy → fmt, stopping at the
//! first failing step with a line that names it.

use crate::build;
use crate::docker;
use crate::envoy;
use crate::tools;
use crate::util::{self, Result};
use std::process::{Command, Stdio};
use std::time::Instant;

pub struct Options {
    /// Use `cargo test` even when cargo-nextest is installed.
    pub no_nextest: bool,
    /// Passed to the test runner (after `--`).
    pub runner_args: Vec<String>,
}

pub fn test(options: &Options) -> Result<()> {
    let started = Instant::now();
    let artifacts = step("build", build::build)?;
    let envoy_bin = step("envoy", || envoy::ensure(envoy::DEFAULT_VERSION))?;
    let python = step("tools", tools::ensure)?;
    // The global rate limit tests start their own redis-server processes.
    step("redis-server", crate::redis::ensure)?;
    // Docker: installed and started here when the machine allows it (kept running until the
    // end of this function, then stopped if this run started it).
    let mut docker_missing: Option<String> = None;
    let mut _engine: Option<docker::OwnEngine> = None;
    let with_docker = if docker::skipped("the image build and the container tests") {
        false
    } else {
        match step("docker", || Ok(docker::provide()))? {
            docker::Engine::Ready(own) => {
                _engine = own;
                true
            }
            docker::Engine::Unavailable(why) => {
                if docker::required() {
                    return Err(format!(
                        "step `docker` failed ({} or CI is set): {why}",
                        docker::REQUIRE_VAR
                    ));
                }
                eprintln!("\nxtask test: Docker unavailable, container steps skipped: {why}\n");
                docker_missing = Some(why);
                false
            }
        }
    };
    // Images before the tests: the workspace tests include the docker compose test.
    if with_docker {
        step("images", || docker::prepare(&artifacts, &envoy_bin))?;
    }

    // What the test processes need to find the built pieces (the harness reads these).
    let with_env = |cmd: &mut Command| {
        if !with_docker {
            // The compose test deselects itself (loudly) instead of failing.
            cmd.env(docker::SKIP_VAR, "1");
        }
        cmd.env("ENVOY_BIN", &envoy_bin)
            .env("SWITCHYARD_DIST", &artifacts.dist)
            .env("SWITCHYARD_UPSTREAM_BIN", &artifacts.upstream_bin)
            .env("SWITCHYARD_RLS_BIN", &artifacts.rls_bin);
        python.apply(cmd);
    };

    let nextest = !options.no_nextest && nextest_available();
    if nextest {
        step("tests (nextest)", || {
            let mut cmd = util::cargo();
            // No `--all-targets`: the benches are `harness = false` binaries that nextest cannot
            // list and that would run full benchmarks; clippy below still compiles them.
            cmd.args(["nextest", "run", "--workspace", "--no-fail-fast"])
                .args(&options.runner_args);
            with_env(&mut cmd);
            util::run(&mut cmd)
        })?;
        // nextest does not run doctests.
        step("doctests", || {
            let mut cmd = util::cargo();
            cmd.args(["test", "--doc", "--workspace", "--no-fail-fast"]);
            with_env(&mut cmd);
            util::run(&mut cmd)
        })?;
    } else {
        step("tests (cargo test)", || {
            let mut cmd = util::cargo();
            // Default targets (lib, bins, tests, doctests), not the benches; see above.
            cmd.args(["test", "--workspace", "--no-fail-fast"]);
            if !options.runner_args.is_empty() {
                cmd.arg("--").args(&options.runner_args);
            }
            with_env(&mut cmd);
            util::run(&mut cmd)
        })?;
    }
    if with_docker {
        step("container tests (SWITCHYARD_ENVOY=docker)", || {
            docker::container_tests(with_env)
        })?;
    }
    step("clippy", || {
        util::run(util::cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    // The filters' proxy-wasm glue compiles only for wasm32, so native clippy never sees it;
    // the disallowed SDK methods (clippy.toml) are enforced here.
    step("clippy (wasm32-wasip1)", || {
        let mut cmd = util::cargo();
        cmd.args([
            "clippy",
            "--target",
            build::WASM_TARGET,
            "-p",
            "switchyard-core",
        ]);
        for f in build::FILTERS.iter().chain([&build::PROBE]) {
            cmd.args(["-p", &build::package(f)]);
        }
        cmd.args(["-p", build::SUITE_PACKAGE]);
        util::run(cmd.args(["--", "-D", "warnings"]))
    })?;
    step("fmt", || {
        util::run(util::cargo().args(["fmt", "--all", "--check"]))
    })?;
    if let Some(why) = docker_missing {
        eprintln!(
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             !!! xtask test: every step passed EXCEPT the container tests, which did NOT run:\n\
             !!! {why}\n\
             !!! Run them: as root with apt-get, `cargo xtask test` installs and starts Docker\n\
             !!! itself; or start an engine (`dockerd`) and run `cargo xtask test` again.\n\
             !!! Set {} (or CI) to make a missing engine fail the run.\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
            docker::REQUIRE_VAR
        );
    }
    println!(
        "xtask test: all steps passed in {}s",
        started.elapsed().as_secs()
    );
    Ok(())
}

/// Runs one step with a banner; a failure is reported as `xtask test: step <name> failed: ...`.
fn step<T>(name: &str, body: impl FnOnce() -> Result<T>) -> Result<T> {
    println!("\n==> xtask test: {name}");
    let started = Instant::now();
    match body() {
        Ok(value) => {
            println!(
                "==> xtask test: {name} done in {}s",
                started.elapsed().as_secs()
            );
            Ok(value)
        }
        Err(e) => Err(format!("step `{name}` failed: {e}")),
    }
}

fn nextest_available() -> bool {
    util::cargo()
        .args(["nextest", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
