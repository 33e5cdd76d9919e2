//! The container backend: `SWITCHYARD_ENVOY=docker` runs each [`crate::Envoy`] in a container
//! (testcontainers) instead of a child process, with the same command line and configuration.
//!
//! - Image: `SWITCHYARD_ENVOY_IMAGE`, else `switchyard/envoy:1.40.0` (`cargo xtask images`
//!   builds it from the pinned binary; nothing is pulled when it is present).
//! - Host networking: the loopback addresses in the generated config (listener, admin, the
//!   in-process upstream servers) mean the same inside the container as in the test.
//! - The scratch directory and the filters' directory are bind-mounted at their host paths, so
//!   every path in the config is valid inside; the scratch directory is writable (log file,
//!   file-based xDS updates), the filters are read-only. Envoy runs as the test's uid/gid, so
//!   the files it writes can be cleaned up.
//! - The container is removed when the [`crate::Envoy`] is stopped or dropped. If the test
//!   process is killed outright (no Drop), a watchdog inside the container (`--pid host`) sees
//!   the test process gone and stops Envoy, which ends the container. Sharing the host's pid
//!   namespace also makes [`crate::Envoy::pid`] a real host pid, as with the process backend.
//! - Envoy's console output (startup errors before the log file opens) is streamed into the
//!   instance's stderr file, so [`crate::Envoy::log`] shows it.
//!
//! Docker missing is a test failure with instructions, never a skip.

use std::io::Write;
use std::path::{Path, PathBuf};
use testcontainers::core::logs::LogFrame;
use testcontainers::core::{AccessMode, Mount};
use testcontainers::runners::SyncRunner;
use testcontainers::{Container, GenericImage, ImageExt};

/// The variable that selects the backend: unset or `process` → child process, `docker` →
/// container.
pub const BACKEND_VAR: &str = "SWITCHYARD_ENVOY";

/// Overrides the Envoy image of the container backend.
pub const IMAGE_VAR: &str = "SWITCHYARD_ENVOY_IMAGE";

/// The image `cargo xtask images` builds from the pinned Envoy binary.
pub const DEFAULT_IMAGE: &str = "switchyard/envoy:1.40.0";

/// How Envoy runs for the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A child process of the test (the default).
    Process,
    /// A container started through testcontainers.
    Docker,
}

impl Backend {
    /// The backend chosen by `SWITCHYARD_ENVOY`; panics on an unknown value (a typo must not
    /// silently test the other backend).
    pub fn from_env() -> Backend {
        let value = std::env::var(BACKEND_VAR).unwrap_or_default();
        match parse_backend(&value) {
            Ok(backend) => backend,
            Err(e) => panic!("{e}"),
        }
    }
}

fn parse_backend(value: &str) -> Result<Backend, String> {
    match value.trim() {
        "" | "process" => Ok(Backend::Process),
        "docker" => Ok(Backend::Docker),
        other => Err(format!(
            "{BACKEND_VAR}={other:?} is not a backend: use `process` (default) or `docker`"
        )),
    }
}

/// The image of the container backend (`SWITCHYARD_ENVOY_IMAGE` or [`DEFAULT_IMAGE`]).
pub fn envoy_image() -> String {
    std::env::var(IMAGE_VAR)
        .ok()
        .filter(|i| !i.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_IMAGE.to_string())
}

/// Splits `name:tag` (a registry port in the name is kept in the name).
fn split_image(image: &str) -> (&str, &str) {
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (image, "latest"),
    }
}

/// Becomes Envoy (`exec`, so Envoy is the container's main process and gets `docker stop`'s
/// SIGTERM) after writing its host pid (`--pid host`) to `$2` and leaving a watcher behind that
/// stops Envoy once the test process `$1` is gone.
const WATCHDOG: &str = r#"parent=$1; pidfile=$2; shift 2
echo $$ > "$pidfile"
(while kill -0 "$parent" 2>/dev/null && kill -0 $$ 2>/dev/null; do sleep 1; done
 kill -TERM $$ 2>/dev/null) &
exec "$@""#;

/// The file in the scratch directory that holds Envoy's pid (container backend).
const PID_FILE: &str = "envoy.pid";

/// Envoy running in a container; removed on drop.
pub(crate) struct EnvoyContainer {
    container: Option<Container<GenericImage>>,
    /// Written by [`WATCHDOG`]: Envoy's pid on the host.
    pid_path: PathBuf,
}

impl EnvoyContainer {
    /// Starts `envoy <args>` in a container with `mounts` (host path = container path; the
    /// first is writable, the rest read-only). Returns once the container runs; readiness is
    /// the caller's admin `/ready` poll, as for the process backend.
    pub(crate) fn start(
        args: &[String],
        writable: &Path,
        read_only: &[PathBuf],
        console_path: &Path,
    ) -> Result<EnvoyContainer, String> {
        let image = envoy_image();
        let (name, tag) = split_image(&image);
        let console = console_path.to_path_buf();
        // SAFETY: getuid/getgid have no preconditions and cannot fail.
        let user = unsafe { format!("{}:{}", libc::getuid(), libc::getgid()) };
        let mut cmd = vec![
            "sh".to_string(),
            "-c".to_string(),
            WATCHDOG.to_string(),
            "switchyard-envoy".to_string(),
            std::process::id().to_string(),
            writable.join(PID_FILE).to_string_lossy().into_owned(),
            "envoy".to_string(),
        ];
        cmd.extend(args.iter().cloned());
        let writable_path = writable.to_string_lossy().into_owned();
        let mut request = GenericImage::new(name, tag)
            .with_cmd(cmd)
            .with_network("host")
            .with_user(user)
            .with_label("org.switchyard.test-pid", std::process::id().to_string())
            .with_mount(Mount::bind_mount(writable_path.clone(), writable_path))
            .with_log_consumer(move |frame: &LogFrame| append_console(&console, frame))
            .with_host_config_modifier(|host| {
                host.pid_mode = Some("host".to_string());
                // Docker removes the container when Envoy exits, also after the watchdog
                // stopped it because the test process was killed (no Drop ran).
                host.auto_remove = Some(true);
            });
        for dir in read_only {
            let path = dir.to_string_lossy().into_owned();
            request = request.with_mount(
                Mount::bind_mount(path.clone(), path).with_access_mode(AccessMode::ReadOnly),
            );
        }
        let container = request
            .start()
            .map_err(|e| explain_start_error(&image, &e))?;
        Ok(EnvoyContainer {
            container: Some(container),
            pid_path: writable.join(PID_FILE),
        })
    }

    /// `Some(exit code)` once Envoy (and so the container) has exited.
    pub(crate) fn exited(&self) -> Option<i64> {
        let container = self.container.as_ref()?;
        match container.is_running() {
            Ok(true) => None,
            // Gone or unreachable counts as exited, with the code when Docker still has it.
            _ => Some(container.exit_code().ok().flatten().unwrap_or(-1)),
        }
    }

    /// Envoy's process id on the host (the container shares the host's pid namespace).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.container.as_ref()?;
        std::fs::read_to_string(&self.pid_path)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Stops Envoy (SIGTERM with a 5 s grace period); Docker then removes the container.
    pub(crate) fn stop(&mut self) {
        let Some(container) = self.container.take() else {
            return;
        };
        // Errors mean the container is gone already (Envoy exited, auto-removed).
        let _ = container.stop_with_timeout(Some(5));
        let _ = container.rm();
    }
}

impl Drop for EnvoyContainer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Appends Envoy's console output (what it prints before its log file opens) to the
/// instance's stderr file, which [`crate::Envoy::log`] shows.
fn append_console(path: &Path, frame: &LogFrame) {
    let bytes = match frame {
        LogFrame::StdOut(b) | LogFrame::StdErr(b) => b,
    };
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = file.write_all(bytes);
    }
}

fn explain_start_error(image: &str, error: &testcontainers::TestcontainersError) -> String {
    format!(
        "{BACKEND_VAR}=docker: cannot start Envoy in a container from image {image}: {error}\n\
         To run the container backend: start a Docker engine (`dockerd`, check `docker info`) and \
         build the image offline with `cargo xtask images`.\n\
         To run Envoy as a child process instead, unset {BACKEND_VAR} (or set it to `process`)."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names() {
        assert_eq!(parse_backend(""), Ok(Backend::Process));
        assert_eq!(parse_backend("process"), Ok(Backend::Process));
        assert_eq!(parse_backend("docker"), Ok(Backend::Docker));
        let err = parse_backend("dokcer").unwrap_err();
        assert!(err.contains("dokcer") && err.contains("docker"), "{err}");
    }

    #[test]
    fn image_names_split_into_name_and_tag() {
        assert_eq!(
            split_image("switchyard/envoy:1.40.0"),
            ("switchyard/envoy", "1.40.0")
        );
        assert_eq!(
            split_image("localhost:5000/envoy"),
            ("localhost:5000/envoy", "latest")
        );
        assert_eq!(
            split_image("localhost:5000/envoy:v1"),
            ("localhost:5000/envoy", "v1")
        );
    }
}
