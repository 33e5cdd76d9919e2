//! `cargo xtask tools`: the Python tools the tests use (`tests/requirements.txt`), installed into
//! a venv at `target/tools/venv`, or with `pip install --target` where `ensurepip` is missing
//! (Debian's python3 without python3-venv).

use crate::util::{self, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the tools ended up, and what a child process needs in its environment to use them.
pub struct PythonTools {
    /// The interpreter that can import the installed packages.
    pub python: PathBuf,
    /// Console scripts (e.g. `kubectl`); prepended to `PATH` for tests.
    pub bin_dir: PathBuf,
    /// Set for a `--target` install: the directory to put on `PYTHONPATH`.
    pub pythonpath: Option<PathBuf>,
}

impl PythonTools {
    /// Environment for child processes: `PATH`, `PYTHONPATH` (fallback only) and
    /// `SWITCHYARD_PYTHON`.
    pub fn apply(&self, cmd: &mut Command) {
        cmd.env("PATH", prepend_path(&self.bin_dir));
        cmd.env("SWITCHYARD_PYTHON", &self.python);
        if let Some(dir) = &self.pythonpath {
            cmd.env("PYTHONPATH", dir);
        }
    }
}

const STAMP: &str = ".requirements-stamp";

pub fn ensure() -> Result<PythonTools> {
    let requirements = util::workspace_root()
        .join("tests")
        .join("requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)
        .map_err(|e| format!("read {}: {e}", requirements.display()))?;
    let tools = util::tools_dir();
    let venv = tools.join("venv");
    let target = tools.join("pylib");
    let venv_python = venv.join("bin").join("python");

    let as_venv = PythonTools {
        python: venv_python.clone(),
        bin_dir: venv.join("bin"),
        pythonpath: None,
    };
    let as_target = PythonTools {
        python: PathBuf::from("python3"),
        bin_dir: target.join("bin"),
        pythonpath: Some(target.clone()),
    };

    // Up to date: nothing to do (the stamp holds the requirements it was installed from).
    if venv_python.is_file() && stamp_matches(&venv, &wanted) {
        println!("Python tools up to date: {}", venv.display());
        return Ok(as_venv);
    }
    if !venv_python.is_file() && stamp_matches(&target, &wanted) {
        println!("Python tools up to date: {}", target.display());
        return Ok(as_target);
    }

    if !venv_python.is_file() {
        let created = util::run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        if let Err(e) = created {
            eprintln!("xtask: no venv ({e}); installing with pip --target instead");
            let _ = std::fs::remove_dir_all(&venv);
            return install_target(&requirements, &target, &wanted).map(|()| as_target);
        }
    }
    util::run(
        Command::new(&venv_python)
            .args(["-m", "pip", "install", "--disable-pip-version-check", "-r"])
            .arg(&requirements),
    )?;
    write_stamp(&venv, &wanted)?;
    println!("Python tools installed: {}", venv.display());
    Ok(as_venv)
}

fn install_target(requirements: &Path, target: &Path, wanted: &str) -> Result<()> {
    util::run(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--upgrade",
            ])
            .arg("--target")
            .arg(target)
            .arg("-r")
            .arg(requirements),
    )?;
    write_stamp(target, wanted)?;
    println!("Python tools installed: {}", target.display());
    Ok(())
}

fn stamp_matches(dir: &Path, wanted: &str) -> bool {
    std::fs::read_to_string(dir.join(STAMP)).is_ok_and(|s| s == wanted)
}

fn write_stamp(dir: &Path, wanted: &str) -> Result<()> {
    let stamp = dir.join(STAMP);
    std::fs::write(&stamp, wanted).map_err(|e| format!("write {}: {e}", stamp.display()))
}

/// `PATH` with `dir` in front.
pub fn prepend_path(dir: &Path) -> OsString {
    let mut paths = vec![dir.to_path_buf()];
    if let Some(existing) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&existing));
    }
    std::env::join_paths(paths).unwrap_or_else(|_| dir.as_os_str().to_owned())
}
