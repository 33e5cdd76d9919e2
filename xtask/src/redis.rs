//! `redis-server` for the global rate limit service's tests (`tests/integration/tests/global.rs`):
//! installed with apt-get when it is missing and this run is root, like Docker in `docker.rs`.

use crate::util::{self, Result};
use std::process::{Command, Stdio};

const PACKAGE: &str = "redis-server";

/// Makes `redis-server` available on `PATH` (tests start their own servers on free ports;
/// nothing is started here).
pub fn ensure() -> Result<()> {
    if on_path("redis-server") {
        return Ok(());
    }
    if !is_root() || !on_path("apt-get") {
        return Err(format!(
            "redis-server is missing and installing it needs root and apt-get; \
             install it (Debian: `apt-get install {PACKAGE}`) or set REDIS_SERVER_BIN"
        ));
    }
    println!("==> installing {PACKAGE} with apt-get");
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        util::run(&mut cmd)
    };
    apt(&["update", "-q"])?;
    apt(&["install", "-y", "-q", "--no-install-recommends", PACKAGE])?;
    if on_path("redis-server") {
        Ok(())
    } else {
        Err(format!(
            "apt-get installed {PACKAGE} but redis-server is not on PATH"
        ))
    }
}

fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
