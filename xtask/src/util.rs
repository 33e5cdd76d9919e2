//! Small helpers shared by the subcommands: workspace paths, running commands, cargo metadata.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Errors are reported to the user as one line; every failure path adds its own context.
pub type Result<T> = std::result::Result<T, String>;

/// The workspace root (the directory holding the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest_dir.to_path_buf())
}

/// Where downloaded tools live: `target/tools/` in the workspace, or `SWITCHYARD_TOOLS_DIR`.
/// Deliberately not under `CARGO_TARGET_DIR`: the tools are shared by every target dir.
pub fn tools_dir() -> PathBuf {
    match std::env::var_os("SWITCHYARD_TOOLS_DIR") {
        Some(dir) if !dir.is_empty() => absolute(Path::new(&dir)),
        _ => workspace_root().join("target").join("tools"),
    }
}

/// `dist/` in the workspace: the built filters.
pub fn dist_dir() -> PathBuf {
    workspace_root().join("dist")
}

/// Makes `path` absolute relative to the current directory (without touching the file system).
pub fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}

/// The cargo that runs us (cargo sets `CARGO` for `cargo run`), so nested builds use the same toolchain.
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root());
    cmd
}

/// Renders a command for log lines: `cargo build --release ...`.
pub fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `cmd` with inherited stdio (output streams live) and fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    eprintln!("xtask: $ {line}");
    let status = cmd
        .status()
        .map_err(|e| format!("could not start `{line}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{line}` failed ({status})"))
    }
}

/// Runs `cmd` and returns its stdout; fails with its stderr unless it exits 0.
pub fn output(cmd: &mut Command) -> Result<String> {
    let line = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not start `{line}`: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// What xtask needs from `cargo metadata`: the workspace's package names and the target directory
/// (which honours `CARGO_TARGET_DIR` and `.cargo/config.toml`).
pub struct Metadata {
    pub packages: Vec<String>,
    pub target_dir: PathBuf,
}

pub fn metadata() -> Result<Metadata> {
    let text = output(cargo().args(["metadata", "--format-version", "1", "--no-deps"]))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("cargo metadata: invalid JSON: {e}"))?;
    let packages = json["packages"]
        .as_array()
        .map(|pkgs| {
            pkgs.iter()
                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let target_dir = json["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .ok_or("cargo metadata: no target_directory")?;
    Ok(Metadata {
        packages,
        target_dir,
    })
}

/// Size in KiB with one decimal, for build summaries.
pub fn kib(bytes: u64) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

/// Whether `tool` is on `PATH`.
pub fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `apt-get update`, then `apt-get install` of `packages` without recommends, non-interactive
/// (the caller checked for root and apt-get).
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        run(&mut cmd)
    };
    apt(&["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(packages);
    apt(&args)
}
