//! `redis-server` for the global rate limit service's tests (`tests/integration/tests/global.rs`):
//! installed with apt-get when it is missing and this run is root, like Docker in `docker.rs`.

use crate::util::{self, Result};

const PACKAGE: &str = "redis-server";

/// Makes `redis-server` available on `PATH` (tests start their own servers on free ports;
/// nothing is started here).
pub fn ensure() -> Result<()> {
    if util::on_path("redis-server") {
        return Ok(());
    }
    if !util::is_root() || !util::on_path("apt-get") {
        return Err(format!(
            "redis-server is missing and installing it needs root and apt-get; \
             install it (Debian: `apt-get install {PACKAGE}`) or set REDIS_SERVER_BIN"
        ));
    }
    println!("==> installing {PACKAGE} with apt-get");
    util::apt_install(&[PACKAGE])?;
    if util::on_path("redis-server") {
        Ok(())
    } else {
        Err(format!(
            "apt-get installed {PACKAGE} but redis-server is not on PATH"
        ))
    }
}
