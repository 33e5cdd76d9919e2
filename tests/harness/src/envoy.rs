//! The Envoy child process: builder, start/ready, admin queries, restart, kill on drop.

use crate::config::{self, Cluster, Spec, WasmFilter};
use crate::docker::{Backend, EnvoyContainer};
use crate::http::{Request, Response};
use crate::paths;
use crate::util::free_port;
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

static INSTANCE: AtomicU32 = AtomicU32::new(0);

/// Why Envoy did not start: the reason and Envoy's log.
#[derive(Debug, Clone)]
pub struct StartError {
    pub message: String,
    /// Envoy's log (`--log-path` file followed by its stderr).
    pub log: String,
    /// The bootstrap that was used.
    pub config: String,
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        let errors = error_lines(&self.log, 20);
        if !errors.is_empty() {
            write!(f, "\n--- envoy errors ---\n{errors}")?;
        }
        write!(
            f,
            "\n--- envoy log (last 30 lines) ---\n{}",
            tail(&self.log, 30)
        )
    }
}

impl std::error::Error for StartError {}

/// A bootstrap with its placeholders filled, and the ports it uses
/// (`LISTENER_PORT`, `ADMIN_PORT`, `PORT:<name>`).
struct Rendered {
    ports: BTreeMap<String, u16>,
    text: String,
}

/// Builds an Envoy configuration and starts it. See the crate docs for an example.
#[derive(Debug, Clone)]
#[must_use = "call .start() to run Envoy"]
pub struct EnvoyBuilder {
    spec: Spec,
    concurrency: u32,
    log_level: String,
    component_log_level: Option<String>,
    vars: BTreeMap<String, String>,
    port_names: Vec<String>,
    files: Vec<(String, Vec<u8>)>,
    extra_args: Vec<String>,
    ready_timeout: Duration,
}

impl EnvoyBuilder {
    fn new(spec: Spec) -> EnvoyBuilder {
        EnvoyBuilder {
            spec,
            concurrency: 2,
            log_level: "info".to_string(),
            component_log_level: None,
            vars: BTreeMap::new(),
            port_names: Vec::new(),
            files: Vec::new(),
            extra_args: Vec::new(),
            ready_timeout: Duration::from_secs(60),
        }
    }

    /// Worker threads (`--concurrency`, default 2).
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n;
        self
    }

    /// `-l` (default `info`, which includes the filters' `info` logs).
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_string();
        self
    }

    /// `--component-log-level`, e.g. `"wasm:debug,http:debug"`.
    pub fn component_log_level(mut self, levels: &str) -> Self {
        self.component_log_level = Some(levels.to_string());
        self
    }

    /// Appends wasm filter `dist/<name>.wasm` (root id and vm id `name`) with this JSON config.
    pub fn wasm_filter(mut self, name: &str, config: serde_json::Value) -> Self {
        self.spec.wasm(WasmFilter::new(name).config(&config));
        self
    }

    /// Appends a wasm filter with full control (path, root id, vm id, raw config, extras).
    pub fn wasm(mut self, filter: WasmFilter) -> Self {
        self.spec.wasm(filter);
        self
    }

    /// Appends a native HTTP filter: one `http_filters` entry as a YAML mapping
    /// (`name: ...` + `typed_config: ...`).
    pub fn native_filter(mut self, yaml: &str) -> Self {
        self.spec.native(yaml);
        self
    }

    /// Adds a `STATIC` cluster; endpoints are `host:port` (a `SocketAddr` works).
    /// The first cluster is the default route target.
    pub fn cluster<E: ToString>(
        mut self,
        name: &str,
        endpoints: impl IntoIterator<Item = E>,
    ) -> Self {
        self.spec.cluster(Cluster::new(name, endpoints));
        self
    }

    /// Adds a cluster with extras (see [`Cluster::extra`]) or a raw one ([`Cluster::raw`]).
    pub fn cluster_with(mut self, cluster: Cluster) -> Self {
        self.spec.cluster(cluster);
        self
    }

    /// The catch-all route's cluster (default: the first cluster).
    pub fn route_to(mut self, cluster: &str) -> Self {
        self.spec.route_to(cluster);
        self
    }

    /// Adds a route (a YAML mapping: `match:` + `route:`/`direct_response:`), tried in order
    /// before the catch-all, e.g. `match: { prefix: "/" }` with
    /// `route: { cluster_header: x-switchyard-cluster }`.
    pub fn route(mut self, yaml: &str) -> Self {
        self.spec.route(yaml);
        self
    }

    /// Drops the catch-all route (only the routes added with [`EnvoyBuilder::route`] remain).
    pub fn no_default_route(mut self) -> Self {
        self.spec.no_default_route();
        self
    }

    /// Replaces the whole `route_config` (a YAML mapping: `name`, `virtual_hosts`, ...).
    pub fn route_config(mut self, yaml: &str) -> Self {
        self.spec.route_config(yaml);
        self
    }

    /// Extra fields of the virtual host, e.g. `retry_policy: {...}`.
    pub fn virtual_host_extra(mut self, yaml: &str) -> Self {
        self.spec.vhost_extra(yaml);
        self
    }

    /// Extra fields of the HTTP connection manager, e.g. `stream_idle_timeout: 5s`.
    pub fn hcm_extra(mut self, yaml: &str) -> Self {
        self.spec.hcm_extra(yaml);
        self
    }

    /// Extra top-level bootstrap fields, e.g. `layered_runtime: {...}`.
    pub fn bootstrap_extra(mut self, yaml: &str) -> Self {
        self.spec.bootstrap_extra(yaml);
        self
    }

    /// Adds a router `upstream_http_filters` entry (YAML mapping); the required
    /// `upstream_codec` is appended automatically.
    pub fn upstream_http_filter(mut self, yaml: &str) -> Self {
        self.spec.upstream_filter(yaml);
        self
    }

    /// Defines placeholder `{{name}}` for the config (templates and all YAML snippets).
    pub fn var(mut self, name: &str, value: impl ToString) -> Self {
        self.vars.insert(name.to_string(), value.to_string());
        self
    }

    /// Reserves another free port, available as `{{PORT:name}}` and [`Envoy::port`].
    pub fn port(mut self, name: &str) -> Self {
        self.port_names.push(name.to_string());
        self
    }

    /// Writes a file into Envoy's scratch directory (`{{DIR}}`) before start, e.g. the first
    /// version of a file-based xDS resource.
    pub fn file(mut self, name: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.files.push((name.to_string(), contents.into()));
        self
    }

    /// Extra command-line arguments.
    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_string());
        self
    }

    /// How long to wait for admin `/ready` (default 60 s; wasm compilation on a busy machine).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// The bootstrap YAML with placeholders filled (fresh ports, a throwaway `{{DIR}}`).
    pub fn render(&self) -> Result<String, String> {
        let scratch = ScratchDir::create()?;
        let text = self.render_in(&scratch.0)?.text;
        Ok(text)
    }

    /// Runs `envoy --mode validate` on the rendered config: `Ok(output)` when Envoy accepts it,
    /// `Err(output)` with Envoy's explanation otherwise.
    pub fn validate(&self) -> Result<String, String> {
        let scratch = ScratchDir::create()?;
        let text = self.render_in(&scratch.0)?.text;
        let config = scratch.0.join("envoy.yaml");
        std::fs::write(&config, &text).map_err(|e| format!("writing config: {e}"))?;
        let out = Command::new(paths::envoy_bin())
            .arg("--mode")
            .arg("validate")
            .arg("-c")
            .arg(&config)
            .arg("--disable-hot-restart")
            .arg("-l")
            .arg(&self.log_level)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running envoy --mode validate: {e}"))?;
        let output = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(output)
        } else {
            Err(output)
        }
    }

    /// Allocates ports, fills placeholders and writes the scratch files into `dir`.
    fn render_in(&self, dir: &Path) -> Result<Rendered, String> {
        let mut ports = BTreeMap::new();
        for name in ["LISTENER_PORT", "ADMIN_PORT"]
            .iter()
            .map(|s| s.to_string())
            .chain(self.port_names.iter().map(|n| format!("PORT:{n}")))
        {
            let port = free_port().map_err(|e| format!("no free port: {e}"))?;
            ports.insert(name, port);
        }
        let mut vars = self.vars.clone();
        for (k, v) in &ports {
            vars.insert(k.clone(), v.to_string());
        }
        vars.insert("DIR".to_string(), dir.to_string_lossy().into_owned());
        let template = self.spec.template_text()?;
        let text = config::substitute(&template, &vars)?;
        for (name, contents) in &self.files {
            let target = dir.join(name);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("creating {}: {e}", parent.display()))?;
            }
            std::fs::write(&target, contents)
                .map_err(|e| format!("writing {}: {e}", target.display()))?;
        }
        Ok(Rendered { ports, text })
    }

    /// Starts Envoy and waits until it is ready; panics with the reason and Envoy's log when
    /// it does not start.
    pub fn start(self) -> Envoy {
        match self.try_start() {
            Ok(e) => e,
            Err(e) => panic!("Envoy did not start: {e}"),
        }
    }

    /// Starts Envoy; `Err` carries the reason and the log (for tests that expect Envoy to
    /// reject a configuration).
    pub fn try_start(self) -> Result<Envoy, StartError> {
        let backend = Backend::from_env();
        // The container backend runs the image's `envoy`; no binary is needed on the host.
        let bin = match backend {
            Backend::Process => paths::envoy_bin(),
            Backend::Docker => PathBuf::from("envoy"),
        };
        let fail = |message: String| StartError {
            message,
            log: String::new(),
            config: String::new(),
        };
        let dir = ScratchDir::create().map_err(fail)?;
        let mut last_err = None;
        // A reserved port can be taken by someone else before Envoy binds it: retry with new ones.
        for _attempt in 0..3 {
            let Rendered { ports, text } = self.render_in(&dir.0).map_err(fail)?;
            let config_path = dir.0.join("envoy.yaml");
            std::fs::write(&config_path, &text)
                .map_err(|e| fail(format!("writing config: {e}")))?;
            let log_path = dir.0.join("envoy.log");
            let stderr_path = dir.0.join("envoy.stderr");
            let _ = std::fs::remove_file(&log_path);
            let _ = std::fs::remove_file(&stderr_path);
            let mut args: Vec<String> = vec![
                "-c".into(),
                config_path.to_string_lossy().into_owned(),
                "--concurrency".into(),
                self.concurrency.to_string(),
                // No hot restart: no shared memory or domain sockets, so parallel instances
                // cannot collide; the unique base id is belt and braces.
                "--disable-hot-restart".into(),
                "--base-id".into(),
                unique_base_id().to_string(),
                "-l".into(),
                self.log_level.clone(),
                "--log-path".into(),
                log_path.to_string_lossy().into_owned(),
            ];
            if let Some(c) = &self.component_log_level {
                args.push("--component-log-level".into());
                args.push(c.clone());
            }
            // Envoy flushes its log file every 10 s by default; tests read the log to see what a
            // filter logged, so flush promptly unless the test chose its own interval.
            if !self
                .extra_args
                .iter()
                .any(|a| a == "--file-flush-interval-msec")
            {
                args.push("--file-flush-interval-msec".into());
                args.push("100".into());
            }
            args.extend(self.extra_args.iter().cloned());
            let admin = ports.get("ADMIN_PORT").copied().unwrap_or(0);
            let listener = ports.get("LISTENER_PORT").copied().unwrap_or(0);
            let mut envoy = Envoy {
                bin: bin.clone(),
                args,
                backend,
                child: None,
                container: None,
                dir: None,
                config: text.clone(),
                log_path,
                stderr_path,
                admin_addr: SocketAddr::from(([127, 0, 0, 1], admin)),
                listen_addr: SocketAddr::from(([127, 0, 0, 1], listener)),
                ports: ports
                    .iter()
                    .filter_map(|(k, v)| k.strip_prefix("PORT:").map(|n| (n.to_string(), *v)))
                    .collect(),
                ready_timeout: self.ready_timeout,
            };
            match envoy.spawn_and_wait() {
                Ok(()) => {
                    envoy.dir = Some(dir);
                    return Ok(envoy);
                }
                Err(message) => {
                    let log = envoy.log();
                    envoy.kill();
                    let port_clash = log.contains("Address already in use");
                    last_err = Some(StartError {
                        message,
                        log,
                        config: text,
                    });
                    if !port_clash {
                        break;
                    }
                }
            }
        }
        // The error carries the log and config; the scratch directory goes with `dir`.
        Err(last_err.unwrap_or_else(|| fail("Envoy did not start".into())))
    }
}

/// A running Envoy child process. Killed on drop; when the test is failing (the thread is
/// panicking) the drop prints the tail of Envoy's log and keeps its scratch directory.
pub struct Envoy {
    bin: PathBuf,
    args: Vec<String>,
    backend: Backend,
    child: Option<Child>,
    container: Option<EnvoyContainer>,
    dir: Option<ScratchDir>,
    config: String,
    log_path: PathBuf,
    stderr_path: PathBuf,
    admin_addr: SocketAddr,
    listen_addr: SocketAddr,
    ports: BTreeMap<String, u16>,
    ready_timeout: Duration,
}

impl Envoy {
    /// A builder for the generated configuration (listener `main` → HTTP connection manager →
    /// your filters → router → static clusters).
    pub fn builder() -> EnvoyBuilder {
        EnvoyBuilder::new(Spec::generated())
    }

    /// A builder for a hand-written bootstrap. Placeholders: `{{LISTENER_PORT}}`,
    /// `{{ADMIN_PORT}}` (the admin block must use it), `{{PORT:<name>}}` (after
    /// [`EnvoyBuilder::port`]), `{{DIR}}` (Envoy's scratch directory), `{{WASM:<filter>}}`
    /// (module path) and any [`EnvoyBuilder::var`].
    pub fn from_yaml(template: &str) -> EnvoyBuilder {
        let mut spec = Spec::generated();
        spec.template = Some(template.to_string());
        EnvoyBuilder::new(spec)
    }

    /// The main listener (`127.0.0.1:{{LISTENER_PORT}}`).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// A port reserved with [`EnvoyBuilder::port`].
    pub fn port(&self, name: &str) -> Option<u16> {
        self.ports.get(name).copied()
    }

    /// The scratch directory (`{{DIR}}`): config, logs and files written with
    /// [`EnvoyBuilder::file`] / [`Envoy::write_file`].
    pub fn dir(&self) -> &Path {
        self.log_path.parent().unwrap_or(Path::new("."))
    }

    /// The bootstrap YAML Envoy runs with.
    pub fn config(&self) -> &str {
        &self.config
    }

    /// Replaces a file in the scratch directory atomically (write + rename), which is what
    /// Envoy's file-based xDS watches for.
    pub fn write_file(&self, name: &str, contents: impl AsRef<[u8]>) -> io::Result<()> {
        let target = self.dir().join(name);
        let file_name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Same directory as the target, so the rename is atomic.
        let tmp = target.with_file_name(format!(".{file_name}.tmp"));
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&tmp, contents)?;
        std::fs::rename(&tmp, &target)
    }

    /// A GET request to the listener.
    pub fn get(&self, path: &str) -> Request {
        Request::new(self.listen_addr, "GET", path)
    }

    /// A request with any method to the listener.
    pub fn request(&self, method: &str, path: &str) -> Request {
        Request::new(self.listen_addr, method, path)
    }

    /// GET on the admin interface, e.g. `admin("/clusters")`.
    pub fn admin(&self, path: &str) -> Response {
        Request::new(self.admin_addr, "GET", path).send()
    }

    /// POST on the admin interface, e.g. `admin_post("/runtime_modify?key=value")`.
    pub fn admin_post(&self, path: &str) -> Response {
        Request::new(self.admin_addr, "POST", path).send()
    }

    /// All counters and gauges (`/stats?format=json`), by full name.
    pub fn stats(&self) -> BTreeMap<String, u64> {
        let resp = self.admin("/stats?format=json");
        parse_stats(&resp.json())
    }

    /// One counter or gauge. Proxy-wasm metrics appear in Envoy 1.40 as
    /// `wasmcustom.<name as defined>`; `name` may be given with or without that prefix
    /// (`stat("switchyard.ratelimit.allowed")` finds `wasmcustom.switchyard.ratelimit.allowed`).
    pub fn stat(&self, name: &str) -> Option<u64> {
        let stats = self.stats();
        lookup_stat(&stats, name)
    }

    /// One of Envoy's own counters that Envoy creates only when first charged (such as
    /// `cluster.<c>.ratelimit.ok`), 0 before that. Not for Switchyard metrics, which exist from
    /// configuration on: those go through [`Envoy::stat_value`], where a missing one fails.
    pub fn stat_or_zero(&self, name: &str) -> u64 {
        assert!(
            !name.starts_with("switchyard.") && !name.starts_with("wasmcustom."),
            "{name}: a Switchyard metric must exist; use stat_value"
        );
        self.stat(name).unwrap_or(0)
    }

    /// [`Envoy::stat`] for a stat that must exist: a missing stat is a test failure naming it
    /// (and the stats with a similar name), never a silent 0. Every Switchyard metric is defined
    /// when its filter is configured (per-route and per-host ones when the route or host is
    /// known), so a missing one is a misspelt name or a filter that did not load.
    pub fn stat_value(&self, name: &str) -> u64 {
        let stats = self.stats();
        match lookup_stat(&stats, name) {
            Some(v) => v,
            None => {
                let tail = name.rsplit('.').next().unwrap_or(name);
                let similar: Vec<&String> = stats
                    .keys()
                    .filter(|k| k.ends_with(tail))
                    .take(10)
                    .collect();
                panic!("Envoy has no stat {name:?} (similar: {similar:?})")
            }
        }
    }

    /// Envoy's log so far (the `--log-path` file, then anything written to stderr).
    pub fn log(&self) -> String {
        let mut log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        if let Ok(stderr) = std::fs::read_to_string(&self.stderr_path) {
            if !stderr.trim().is_empty() {
                log.push_str("\n--- stderr ---\n");
                log.push_str(&stderr);
            }
        }
        log
    }

    /// Waits until the log contains `needle`; `false` on timeout.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        crate::eventually(timeout, || self.log().contains(needle))
    }

    pub fn is_running(&mut self) -> bool {
        if let Some(container) = &self.container {
            return container.exited().is_none();
        }
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The process id, while running (container backend too: the container shares the host's
    /// pid namespace).
    pub fn pid(&self) -> Option<u32> {
        if let Some(container) = &self.container {
            return container.pid();
        }
        self.child.as_ref().map(Child::id)
    }

    /// Stops Envoy (SIGTERM, then SIGKILL after 5 s). [`Envoy::restart`] starts it again.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Stops Envoy and starts a new process with the same config and ports; panics if it
    /// does not become ready.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn_and_wait() {
            let err = StartError {
                message: format!("Envoy did not restart: {e}"),
                log: self.log(),
                config: self.config.clone(),
            };
            panic!("{err}");
        }
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        if self.backend == Backend::Docker {
            let dir = self.dir().to_path_buf();
            let container = EnvoyContainer::start(
                &self.args,
                &dir,
                &container_read_only_dirs(),
                &self.stderr_path,
            )?;
            self.container = Some(container);
            return self.wait_ready();
        }
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .map_err(|e| format!("opening {}: {e}", self.stderr_path.display()))?;
        let stdout = stderr
            .try_clone()
            .map_err(|e| format!("opening {}: {e}", self.stderr_path.display()))?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let child = spawn_tied_to_process(cmd)
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + self.ready_timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("Envoy exited during startup ({status})"));
                }
            }
            if let Some(code) = self.container.as_ref().and_then(EnvoyContainer::exited) {
                // Its console output is already in the log; make sure the container goes.
                self.kill();
                return Err(format!(
                    "Envoy exited during startup in its container (exit code {code})"
                ));
            }
            let ready = Request::new(self.admin_addr, "GET", "/ready")
                .timeout(Duration::from_secs(2))
                .try_send()
                .is_ok_and(|r| r.status == 200);
            // No TCP probe of the listener: it would show up in connection stats. Envoy calls
            // listen() on the main thread before workers start, so /ready implies listening.
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "Envoy not ready after {:?} (admin {}, listener {})",
                    self.ready_timeout, self.admin_addr, self.listen_addr
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut container) = self.container.take() {
            container.stop();
        }
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: signalling our own child, which has not been reaped yet (pid still ours).
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- envoy log tail ({}) ---\n{}\n--- end of envoy log; files kept in {} ---",
                self.log_path.display(),
                tail(&self.log(), 80),
                self.dir().display()
            );
            if let Some(dir) = self.dir.take() {
                dir.keep();
            }
        }
    }
}

impl fmt::Debug for Envoy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envoy")
            .field("listen_addr", &self.listen_addr)
            .field("admin_addr", &self.admin_addr)
            .field("pid", &self.pid())
            .field("dir", &self.dir())
            .finish()
    }
}

/// What the container backend mounts read-only besides the scratch directory: the workspace
/// (configs may name files in it) and the filters' directory when it lies elsewhere.
fn container_read_only_dirs() -> Vec<PathBuf> {
    let root = paths::workspace_root();
    let mut dirs = vec![root.clone()];
    let dist = paths::dist_dir();
    let dist = dist.canonicalize().unwrap_or(dist);
    if dist.is_dir() && !dist.starts_with(&root) {
        dirs.push(dist);
    }
    dirs
}

pub(crate) fn parse_stats(json: &serde_json::Value) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Some(items) = json.get("stats").and_then(|s| s.as_array()) else {
        return out;
    };
    for item in items {
        if let (Some(name), Some(value)) = (
            item.get("name").and_then(|n| n.as_str()),
            item.get("value").and_then(|v| v.as_u64()),
        ) {
            out.insert(name.to_string(), value);
        }
    }
    out
}

pub(crate) fn lookup_stat(stats: &BTreeMap<String, u64>, name: &str) -> Option<u64> {
    stats
        .get(name)
        .or_else(|| stats.get(&format!("wasmcustom.{name}")))
        .or_else(|| name.strip_prefix("wasmcustom.").and_then(|n| stats.get(n)))
        .copied()
}

/// The first `max` lines logged at `critical`/`error` level (the reason a start failed).
fn error_lines(log: &str, max: usize) -> String {
    log.lines()
        .filter(|l| l.contains("][critical][") || l.contains("][error]["))
        .take(max)
        .collect::<Vec<_>>()
        .join("\n")
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Distinct per Envoy start in this process and, through the pid, across processes.
fn unique_base_id() -> u32 {
    let n = INSTANCE.fetch_add(1, Ordering::Relaxed) % 1000;
    (std::process::id() % 100_000) * 1000 + n
}

/// A per-instance temporary directory, removed on drop unless kept.
#[derive(Debug)]
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn create() -> Result<ScratchDir, String> {
        let n = INSTANCE.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "switchyard-envoy-{}-{}-{n}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        Ok(ScratchDir(dir))
    }

    fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

type SpawnJob = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` so that the kernel kills it when this test process dies (PR_SET_PDEATHSIG),
/// even if the process is killed before any Drop runs. The death signal fires when the
/// spawning *thread* exits, so every spawn happens on one thread that lives as long as the
/// process — an Envoy (or Redis, or the rate limit service) started in one test thread and used
/// from another stays alive.
pub(crate) fn spawn_tied_to_process(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    // SAFETY: prctl and getppid are async-signal-safe; nothing is allocated in the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // The parent may have died before prctl ran.
            if libc::getppid() == 1 {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        let spawned = std::thread::Builder::new()
            .name("process-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            });
        if let Err(e) = spawned {
            eprintln!("switchyard-harness: cannot start the spawner thread: {e}");
        }
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    sender
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("spawner thread is gone"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_parse_counters_and_gauges_and_skip_histograms() {
        let json = serde_json::json!({"stats": [
            {"name": "cluster.a.upstream_rq_total", "value": 3},
            {"name": "wasmcustom.switchyard.x.allowed", "value": 7},
            {"histograms": {"supported_quantiles": [50.0]}}
        ]});
        let stats = parse_stats(&json);
        assert_eq!(stats.len(), 2);
        assert_eq!(lookup_stat(&stats, "cluster.a.upstream_rq_total"), Some(3));
        assert_eq!(lookup_stat(&stats, "switchyard.x.allowed"), Some(7));
        assert_eq!(
            lookup_stat(&stats, "wasmcustom.switchyard.x.allowed"),
            Some(7)
        );
        assert_eq!(lookup_stat(&stats, "switchyard.x.denied"), None);
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
