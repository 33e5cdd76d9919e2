//! Runs the `switchyard-rls` global rate limit service as a child process on free loopback
//! ports, for integration tests. Killed by PID when dropped (and by the kernel if the test
//! process dies).
//!
//! The binary: `SWITCHYARD_RLS_BIN`, else the newer of `<target>/release/switchyard-rls` and
//! `<target>/debug/switchyard-rls` (`cargo xtask test` builds the release one and sets the
//! variable; by hand: `cargo build -p switchyard-rls`).
//!
//! ```no_run
//! use switchyard_harness::{Redis, Rls};
//! let redis = Redis::start();
//! let rls = Rls::builder("domain: d\ndescriptors: []\n")
//!     .redis(&redis.url())
//!     .arg("--redis-failure").arg("allow")
//!     .start();
//! assert!(rls.ready());
//! ```

use crate::envoy::spawn_tied_to_process;
use crate::http::Request;
use crate::util::free_port;
use crate::workspace_root;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// `SWITCHYARD_RLS_BIN`, else the most recently built of `target/{release,debug}/switchyard-rls`.
/// Panics when there is none, saying how to build it.
pub fn rls_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SWITCHYARD_RLS_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            panic!("SWITCHYARD_RLS_BIN={} is not a file", p.display());
        }
        return p;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let newest = ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("switchyard-rls"))
        .filter_map(|p| {
            let modified = std::fs::metadata(&p).and_then(|m| m.modified()).ok()?;
            Some((modified, p))
        })
        .max();
    match newest {
        Some((_, p)) => p,
        None => panic!(
            "switchyard-rls binary not found in {}/{{release,debug}} — run \
             `cargo build -p switchyard-rls` (or `cargo xtask build`), or set SWITCHYARD_RLS_BIN",
            target.display()
        ),
    }
}

static INSTANCE: AtomicU64 = AtomicU64::new(0);

/// Options of an [`Rls`] before it starts.
#[derive(Debug, Clone)]
pub struct RlsBuilder {
    config: String,
    redis: String,
    args: Vec<String>,
    bin: Option<PathBuf>,
}

impl RlsBuilder {
    /// `--redis URL` (default `redis://127.0.0.1:1`, nothing listening).
    pub fn redis(mut self, url: &str) -> RlsBuilder {
        self.redis = url.to_string();
        self
    }

    /// This binary instead of [`rls_bin`] (e.g. `env!("CARGO_BIN_EXE_switchyard-rls")` in the
    /// service's own tests).
    pub fn bin(mut self, path: impl Into<PathBuf>) -> RlsBuilder {
        self.bin = Some(path.into());
        self
    }

    /// An extra command-line argument (`--redis-failure`, `allow`, `--redis-timeout-ms`, ...).
    pub fn arg(mut self, arg: &str) -> RlsBuilder {
        self.args.push(arg.to_string());
        self
    }

    /// Starts the service and waits until `/healthz` answers 200 and the gRPC port accepts
    /// connections (not until Redis is reachable: see [`Rls::ready`]). Panics with its log.
    pub fn start(self) -> Rls {
        let n = INSTANCE.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "switchyard-rls-{}-{n}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let config_path = dir.join("config.yaml");
        std::fs::write(&config_path, &self.config)
            .unwrap_or_else(|e| panic!("writing {}: {e}", config_path.display()));
        let grpc = SocketAddr::from(([127, 0, 0, 1], free_port().expect("free port")));
        let http = SocketAddr::from(([127, 0, 0, 1], free_port().expect("free port")));
        let mut rls = Rls {
            bin: self.bin.unwrap_or_else(rls_bin),
            dir,
            grpc,
            http,
            redis: self.redis,
            args: self.args,
            child: None,
        };
        rls.spawn();
        rls
    }
}

/// A running `switchyard-rls`.
#[derive(Debug)]
pub struct Rls {
    bin: PathBuf,
    dir: PathBuf,
    grpc: SocketAddr,
    http: SocketAddr,
    redis: String,
    args: Vec<String>,
    child: Option<Child>,
}

impl Rls {
    /// A service with this configuration file (YAML text, see `docs/global.md`).
    pub fn builder(config_yaml: &str) -> RlsBuilder {
        RlsBuilder {
            config: config_yaml.to_string(),
            redis: "redis://127.0.0.1:1".to_string(),
            args: Vec::new(),
            bin: None,
        }
    }

    fn spawn(&mut self) {
        let log_path = self.log_path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", log_path.display()));
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config")
            .arg(self.dir.join("config.yaml"))
            .args(["--grpc-addr", &self.grpc.to_string()])
            .args(["--http-addr", &self.http.to_string()])
            .args(["--redis", &self.redis])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = spawn_tied_to_process(cmd)
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let healthy = self.get("/healthz").is_some_and(|(s, _)| s == 200);
            if healthy && TcpStream::connect_timeout(&self.grpc, Duration::from_millis(200)).is_ok()
            {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!(
                        "switchyard-rls exited ({status}) at start; log:\n{}",
                        self.log()
                    );
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "switchyard-rls not healthy within 15 s; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("rls.log")
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `GET path` on the operations port → (status, body); `None` when it does not answer.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        Request::new(self.http, "GET", path)
            .timeout(Duration::from_secs(2))
            .try_send()
            .ok()
            .map(|r| (r.status, r.text()))
    }

    /// `/readyz` answers 200 (Redis answers PING).
    pub fn ready(&self) -> bool {
        self.get("/readyz").is_some_and(|(s, _)| s == 200)
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> String {
        match self.get("/metrics") {
            Some((200, body)) => body,
            other => panic!("/metrics answered {other:?}"),
        }
    }

    /// The value of one sample, e.g. `switchyard_rls_over_limit_total{domain="edge"}`.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        self.metrics().lines().find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok())?
        })
    }

    /// SIGTERM (graceful shutdown), then waits up to 5 s; returns whether it exited by itself
    /// with status 0.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: signalling our own child, not yet reaped (the pid is still ours).
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(status)) = child.try_wait() {
                    return status.success();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for Rls {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- switchyard-rls log ({}) ---\n{}", self.grpc, self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
