//! The host: loads a module, runs N worker VMs over shared state and drives requests through the
//! proxy-wasm lifecycle like Envoy's HTTP filter does.

use crate::abi;
use crate::state::{lock, CallResponse, Exports, Shared, SharedRef, Step, Stream, Vm};
use crate::types::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wasmtime::{
    Config, Engine, Instance, Linker, Module, OptLevel, Store, TypedFunc, WasmParams, WasmResults,
};

/// Virtual clock start: a fixed instant so every run sees the same times.
const DEFAULT_START_NANOS: u64 = 1_767_225_600_000_000_000; // 2026-01-01T00:00:00Z
/// Bound on host-side follow-up work after one action (resumes, replies, queue deliveries).
const SETTLE_LIMIT: usize = 100_000;

/// `SWITCHYARD_WASM_FUEL=1`: count the wasm instructions the modules execute (wasmtime fuel,
/// about one unit per instruction), for [`Host::fuel_used`]: a measure of a module's own work
/// that, unlike time, does not move with the machine's load.
fn fuel_metering() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("SWITCHYARD_WASM_FUEL").is_some())
}

/// A store for one VM; with fuel metering, with all the fuel there is.
fn new_store(vm: Vm) -> Store<Vm> {
    let mut store = Store::new(engine(), vm);
    if fuel_metering() {
        let _ = store.set_fuel(u64::MAX);
    }
    store
}

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config.consume_fuel(fuel_metering());
        if std::env::var_os("SWITCHYARD_WASM_PERFMAP").is_some() {
            // Profiling (`perf record` of a test): optimised code, and /tmp/perf-<pid>.map so
            // perf names the module's functions (build it unstripped to get their names).
            config.cranelift_opt_level(OptLevel::Speed);
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        } else {
            // Test modules are compiled once per process; compile speed beats code quality.
            config.cranelift_opt_level(OptLevel::None);
        }
        Engine::new(&config).unwrap_or_else(|_| Engine::default())
    })
}

/// Workspace root (this crate lives in `tests/wasmhost`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")))
}

/// Resolves `path` as given, else relative to the workspace root (`dist/x.wasm` works from any
/// crate's tests).
pub fn resolve_module_path(path: impl AsRef<Path>) -> PathBuf {
    let path = path.as_ref();
    if path.is_absolute() || path.exists() {
        return path.to_path_buf();
    }
    workspace_root().join(path)
}

/// Compiles each module file once per test process.
fn compile(path: &Path) -> HostResult<Module> {
    /// Compiled modules by path, with the bytes they were compiled from.
    type ModuleCache = Mutex<HashMap<PathBuf, (Vec<u8>, Module)>>;
    static CACHE: OnceLock<ModuleCache> = OnceLock::new();
    let bytes = std::fs::read(path).map_err(|e| {
        HostError::Load(format!(
            "{}: {e}; build the filters first with `cargo xtask build`",
            path.display()
        ))
    })?;
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((cached_bytes, module)) = cache.get(path) {
        if *cached_bytes == bytes {
            return Ok(module.clone());
        }
    }
    let module = load_precompiled(&bytes)
        .map_or_else(|| Module::new(engine(), &bytes), Ok)
        .map_err(|e| HostError::Load(format!("{}: {e}", path.display())))?;
    cache.insert(path.to_path_buf(), (bytes, module.clone()));
    Ok(module)
}

/// Compiled code cached on disk across test processes (each test binary would otherwise compile
/// the same modules again), keyed by the module bytes and the engine's compatibility hash.
fn load_precompiled(bytes: &[u8]) -> Option<Module> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    engine().precompile_compatibility_hash().hash(&mut hasher);
    let dir = std::env::temp_dir().join("switchyard-wasmhost-cache");
    let file = dir.join(format!("{:016x}.cwasm", hasher.finish()));
    if file.exists() {
        // SAFETY: the file was written by `precompile_module` of this same engine configuration
        // (the name includes its compatibility hash) and is only ever replaced atomically.
        if let Ok(module) = unsafe { Module::deserialize_file(engine(), &file) } {
            return Some(module);
        }
    }
    let compiled = engine().precompile_module(bytes).ok()?;
    std::fs::create_dir_all(&dir).ok()?;
    let tmp = file.with_extension(format!("{}.tmp", std::process::id()));
    std::fs::write(&tmp, &compiled).ok()?;
    std::fs::rename(&tmp, &file).ok()?;
    // SAFETY: as above; these are the bytes just produced by this engine.
    unsafe { Module::deserialize(engine(), &compiled) }.ok()
}

/// Loads a module and collects settings before the workers start.
pub struct HostBuilder {
    module: Module,
    workers: usize,
    vm_config: Vec<u8>,
    start_nanos: u64,
    properties: Vec<(String, Vec<u8>)>,
    vm_id: String,
    clusters: Option<Vec<String>>,
    main_thread: bool,
}

impl HostBuilder {
    /// Number of worker VMs (Envoy `--concurrency`); default 1. Workers are numbered from 0.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }
    /// `vm_config.configuration` passed to `proxy_on_vm_start`.
    pub fn vm_config(mut self, config: impl AsRef<[u8]>) -> Self {
        self.vm_config = config.as_ref().to_vec();
        self
    }
    /// Virtual clock start.
    pub fn start_time(mut self, at: SystemTime) -> Self {
        self.start_nanos = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        self
    }
    /// A host-level property (dotted path, e.g. `route_name`, `plugin_name`, `source.address`).
    pub fn property(mut self, path: &str, value: impl AsRef<[u8]>) -> Self {
        self.properties
            .push((path.to_string(), value.as_ref().to_vec()));
        self
    }
    /// Envoy `vm_id` (scopes shared queues).
    pub fn vm_id(mut self, id: &str) -> Self {
        self.vm_id = id.to_string();
        self
    }
    /// Restricts callouts to these clusters; others fail with `BadArgument` as in Envoy.
    pub fn clusters(mut self, names: &[&str]) -> Self {
        self.clusters = Some(names.iter().map(|s| s.to_string()).collect());
        self
    }
    /// Also runs the VMs Envoy runs on its main thread besides the workers' (proxy-wasm-cpp-host
    /// `createWasm`, Envoy's thread-local slot): first a configuration canary, started,
    /// configured and ended (`on_done`, `on_delete`); then, after the workers, the main thread's
    /// own VM, numbered after them: it keeps its root context and gets ticks, never requests.
    /// Configure-time effects (metrics, logs, shared data) then happen `workers + 2` times, as
    /// in a real Envoy.
    pub fn main_thread(mut self) -> Self {
        self.main_thread = true;
        self
    }

    /// Starts the workers: instantiate, `_initialize`, root context, `proxy_on_vm_start`,
    /// `proxy_on_configure` with `config`. A rejected configuration is
    /// [`HostError::ConfigRejected`] carrying the filter's error logs.
    pub fn configure(self, config: impl AsRef<[u8]>) -> HostResult<Host> {
        let mut shared = Shared::new(self.start_nanos);
        shared.vm_id = self.vm_id.clone();
        shared.clusters = self.clusters.clone();
        for (k, v) in default_properties(&self.vm_id) {
            shared
                .properties
                .insert(k.to_string(), v.as_bytes().to_vec());
        }
        for (k, v) in &self.properties {
            shared.properties.insert(k.clone(), v.clone());
        }
        let shared = Arc::new(Mutex::new(shared));
        let mut linker = Linker::new(engine());
        abi::link(&mut linker).map_err(|e| HostError::Instantiate(e.to_string()))?;
        crate::wasi::link(&mut linker).map_err(|e| HostError::Instantiate(e.to_string()))?;
        check_imports(&self.module, &linker, &shared)?;
        let mut host = Host {
            module: self.module,
            linker,
            shared,
            workers: Vec::new(),
            finished: HashMap::new(),
            upstream: None,
        };
        let config = config.as_ref().to_vec();
        if self.main_thread {
            host.start_worker(0, &self.vm_config, &config)?;
            let root = host.vm(0)?.root_id;
            host.drop_root(0, root)?;
            host.workers.clear();
            // Envoy destroys the canary's VM with whatever it had pending.
            let mut shared = lock(&host.shared);
            shared.callouts.retain(|c| c.callout.worker != 0);
            shared.queue_ready.retain(|(w, _, _)| *w != 0);
        }
        let vms = self.workers + usize::from(self.main_thread);
        for w in 0..vms {
            host.start_worker(w, &self.vm_config, &config)?;
        }
        Ok(host)
    }
}

fn default_properties(vm_id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("plugin_name", "switchyard".to_string()),
        ("plugin_root_id", String::new()),
        ("plugin_vm_id", vm_id.to_string()),
        ("source.address", "127.0.0.1:50000".to_string()),
        ("destination.address", "127.0.0.1:10000".to_string()),
        ("route_name", "default".to_string()),
        ("cluster_name", "upstream".to_string()),
    ]
}

fn check_imports(module: &Module, linker: &Linker<Vm>, shared: &SharedRef) -> HostResult<()> {
    let mut store = new_store(blank_vm(shared.clone(), 0));
    let missing: Vec<String> = module
        .imports()
        .filter(|i| linker.get(&mut store, i.module(), i.name()).is_err())
        .map(|i| format!("{}::{}", i.module(), i.name()))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(HostError::UnknownImports(missing))
    }
}

fn blank_vm(shared: SharedRef, worker: usize) -> Vm {
    Vm {
        shared,
        worker,
        memory: None,
        malloc: None,
        root_id: 1,
        roots: vec![1],
        plugin_config: Vec::new(),
        vm_config: Vec::new(),
        effective: 0,
        streams: HashMap::new(),
        tick_period: None,
        next_tick_at: None,
        call_response: None,
        grpc_status: (0, None),
        next_context: 2,
        done_called: false,
        initializing: false,
    }
}

struct Worker {
    store: Store<Vm>,
    exports: Exports,
    failed: Option<HostError>,
}

/// A running set of worker VMs of one module, sharing one shared-data store, queues, stats and
/// a virtual clock, like the workers of one Envoy process.
pub struct Host {
    module: Module,
    linker: Linker<Vm>,
    shared: SharedRef,
    workers: Vec<Worker>,
    finished: HashMap<StreamId, Outcome>,
    upstream: Option<Upstream>,
}

/// Computes the upstream's answer from the request as it left the filter.
pub type Upstream = Box<dyn FnMut(&Message) -> Message + Send>;

/// A stream callback to run once the stream's state is updated.
enum Callback {
    Three(
        &'static str,
        Option<TypedFunc<(i32, i32, i32), i32>>,
        (i32, i32, i32),
    ),
    Two(&'static str, Option<TypedFunc<(i32, i32), i32>>, (i32, i32)),
    Nothing,
}

/// Request settings collected by [`RequestBuilder`].
struct RequestSpec {
    headers: Headers,
    body: Option<Vec<u8>>,
    trailers: Headers,
    properties: HashMap<String, Vec<u8>>,
    /// `None`: the host's upstream function (or a plain 200) answers.
    answer: Option<Message>,
    hold: bool,
}

impl Host {
    /// Loads (and compiles, once per process) a module. Relative paths resolve against the
    /// workspace root, so `Host::load("dist/ratelimit.wasm")` works from any test.
    pub fn load(path: impl AsRef<Path>) -> HostResult<HostBuilder> {
        let path = resolve_module_path(path);
        if !path.exists() {
            return Err(HostError::Load(format!(
                "{} does not exist: build the filters first with `cargo xtask build`",
                path.display()
            )));
        }
        Ok(HostBuilder {
            module: compile(&path)?,
            workers: 1,
            vm_config: Vec::new(),
            start_nanos: DEFAULT_START_NANOS,
            properties: Vec::new(),
            vm_id: String::new(),
            clusters: None,
            main_thread: false,
        })
    }

    /// `Host::load("dist/<name>.wasm")`.
    pub fn filter(name: &str) -> HostResult<HostBuilder> {
        Host::load(format!("dist/{name}.wasm"))
    }

    fn start_worker(&mut self, w: usize, vm_config: &[u8], config: &[u8]) -> HostResult<()> {
        let mut vm = blank_vm(self.shared.clone(), w);
        vm.vm_config = vm_config.to_vec();
        vm.plugin_config = config.to_vec();
        let mut store = new_store(vm);
        let instance = self
            .linker
            .instantiate(&mut store, &self.module)
            .map_err(|e| HostError::Instantiate(format!("{e:?}")))?;
        if instance
            .get_func(&mut store, "proxy_abi_version_0_2_1")
            .is_none()
        {
            return Err(HostError::Instantiate(
                "module does not export proxy_abi_version_0_2_1: not a proxy-wasm ABI 0.2.1 module"
                    .into(),
            ));
        }
        let memory = instance.get_memory(&mut store, "memory");
        let malloc = instance
            .get_typed_func::<i32, i32>(&mut store, "proxy_on_memory_allocate")
            .or_else(|_| instance.get_typed_func::<i32, i32>(&mut store, "malloc"))
            .ok();
        store.data_mut().memory = memory;
        store.data_mut().malloc = malloc;
        let exports = exports(&instance, &mut store)?;
        self.workers.push(Worker {
            store,
            exports,
            failed: None,
        });
        // WASI reactor initialisation runs the SDK's `main!` (root context factory, logger).
        for init in ["_initialize", "_start"] {
            let f = instance
                .get_typed_func::<(), ()>(&mut self.workers[w].store, init)
                .ok();
            if f.is_some() {
                // Envoy restricts host calls meanwhile (see `abi::ALLOWED_DURING_INIT`).
                self.workers[w].store.data_mut().initializing = true;
                let result = self.call(w, 0, init, f, ());
                self.workers[w].store.data_mut().initializing = false;
                result?;
                break;
            }
        }
        let root = self.workers[w].store.data().root_id;
        let create = Some(self.workers[w].exports.on_context_create.clone());
        self.call(w, root, "proxy_on_context_create", create, (root as i32, 0))?;
        let f = self.workers[w].exports.on_vm_start.clone();
        let len = vm_config.len() as i32;
        if self.call(w, root, "proxy_on_vm_start", f, (root as i32, len))? == Some(0) {
            return Err(HostError::VmStartFailed {
                worker: w,
                logs: self.error_logs(w),
            });
        }
        let f = self.workers[w].exports.on_configure.clone();
        let len = config.len() as i32;
        if self.call(w, root, "proxy_on_configure", f, (root as i32, len))? == Some(0) {
            return Err(HostError::ConfigRejected {
                worker: w,
                logs: self.error_logs(w),
            });
        }
        self.settle()
    }

    fn error_logs(&self, w: usize) -> Vec<String> {
        lock(&self.shared)
            .logs
            .iter()
            .filter(|l| l.worker == w && l.level >= LogLevel::Error)
            .map(|l| l.message.clone())
            .collect()
    }

    /// Calls into worker `w` with `ctx` as the current context. A trap poisons the worker.
    fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        w: usize,
        ctx: u32,
        name: &str,
        f: Option<TypedFunc<P, R>>,
        params: P,
    ) -> HostResult<Option<R>> {
        let worker = self
            .workers
            .get_mut(w)
            .ok_or_else(|| HostError::Usage(format!("no worker {w}")))?;
        if let Some(e) = &worker.failed {
            return Err(e.clone());
        }
        let Some(f) = f else { return Ok(None) };
        worker.store.data_mut().effective = ctx;
        match f.call(&mut worker.store, params) {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                let logs = lock(&self.shared)
                    .logs
                    .iter()
                    .filter(|l| l.worker == w && l.level == LogLevel::Critical)
                    .map(|l| l.message.clone())
                    .collect();
                let err = HostError::Trap {
                    worker: w,
                    callback: name.to_string(),
                    message: format!("{e:?}"),
                    logs,
                };
                worker.failed = Some(err.clone());
                Err(err)
            }
        }
    }

    fn vm(&self, w: usize) -> HostResult<&Vm> {
        self.workers
            .get(w)
            .map(|wk| wk.store.data())
            .ok_or_else(|| HostError::Usage(format!("no worker {w}")))
    }

    fn stream_mut(&mut self, w: usize, ctx: u32) -> Option<&mut Stream> {
        self.workers
            .get_mut(w)
            .and_then(|wk| wk.store.data_mut().streams.get_mut(&ctx))
    }

    // ---- requests ----------------------------------------------------------------------------

    /// A handle on worker `w` (0-based).
    pub fn worker(&mut self, w: usize) -> WorkerHandle<'_> {
        WorkerHandle {
            host: self,
            worker: w,
        }
    }

    /// A request on worker 0.
    pub fn request(&mut self) -> RequestBuilder<'_> {
        self.worker(0).request()
    }

    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    fn start_stream(&mut self, w: usize, spec: RequestSpec) -> HostResult<Outcome> {
        let vm = self
            .workers
            .get_mut(w)
            .ok_or_else(|| HostError::Usage(format!("no worker {w}")))?
            .store
            .data_mut();
        let ctx = vm.next_context;
        vm.next_context += 1;
        let root = vm.root_id;
        let id = StreamId {
            worker: w,
            context: ctx,
        };
        vm.streams.insert(
            ctx,
            Stream {
                id,
                step: Step::RequestHeaders,
                paused: false,
                resume: None,
                pending_reply: None,
                local_reply: None,
                reset_requested: false,
                reset: false,
                request_headers: Some(spec.headers),
                request_body: Vec::new(),
                request_trailers: None,
                client_body: spec.body,
                client_trailers: spec.trailers,
                response_headers: None,
                response_body: Vec::new(),
                response_trailers: None,
                upstream_answer: spec.answer,
                hold_upstream: spec.hold,
                upstream: None,
                properties: spec.properties,
                log_phase: false,
                replying_locally: false,
                last_phase: None,
            },
        );
        let create = Some(self.workers[w].exports.on_context_create.clone());
        self.call(
            w,
            ctx,
            "proxy_on_context_create",
            create,
            (ctx as i32, root as i32),
        )?;
        self.drive(w, ctx)?;
        self.settle()?;
        self.outcome(id)
    }

    /// Answers every request that reaches the upstream without an explicit `upstream_*` answer
    /// with `f(request as the filter left it)`; default: a bare 200.
    pub fn set_upstream(&mut self, f: impl FnMut(&Message) -> Message + Send + 'static) {
        self.upstream = Some(Box::new(f));
    }

    /// Lets the upstream answer a request sent with [`RequestBuilder::hold`]; the response
    /// callbacks and the end of the stream run now.
    pub fn release(&mut self, id: StreamId) -> HostResult<Outcome> {
        let stream = self
            .stream_mut(id.worker, id.context)
            .ok_or_else(|| HostError::Usage(format!("no request {id:?} in flight")))?;
        if !stream.hold_upstream || stream.upstream.is_none() {
            return Err(HostError::Usage(format!(
                "request {id:?} is not waiting for its upstream"
            )));
        }
        stream.hold_upstream = false;
        self.drive(id.worker, id.context)?;
        self.settle()?;
        self.outcome(id)
    }

    /// The client goes away mid-request (Envoy resets the stream): the stream ends like
    /// [`Host::release`]'s does (`on_done`, `on_log`, `on_delete`; its callouts are cancelled),
    /// then whatever that caused in other streams runs.
    pub fn disconnect(&mut self, id: StreamId) -> HostResult<Outcome> {
        if self.stream_mut(id.worker, id.context).is_none() {
            return Err(HostError::Usage(format!("no request {id:?} in flight")));
        }
        self.finish(id.worker, id.context, true)?;
        self.settle()?;
        self.outcome(id)
    }

    /// The current outcome of a request (final once it completed).
    pub fn outcome(&self, id: StreamId) -> HostResult<Outcome> {
        if let Some(done) = self.finished.get(&id) {
            return Ok(done.clone());
        }
        let stream = self
            .vm(id.worker)?
            .streams
            .get(&id.context)
            .ok_or_else(|| HostError::Usage(format!("no request {id:?}")))?;
        Ok(snapshot(stream))
    }

    /// Runs the stream's next callbacks until it pauses, finishes or waits on nothing.
    fn drive(&mut self, w: usize, ctx: u32) -> HostResult<()> {
        for _ in 0..64 {
            let Some(worker) = self.workers.get_mut(w) else {
                return Ok(());
            };
            let exports = &worker.exports;
            let Some(stream) = worker.store.data_mut().streams.get_mut(&ctx) else {
                return Ok(());
            };
            if stream.reset_requested {
                return self.finish(w, ctx, true);
            }
            if let Some(reply) = stream.pending_reply.take() {
                apply_local_reply(stream, reply);
                continue;
            }
            if stream.paused {
                let in_request = matches!(
                    stream.last_phase,
                    Some(Phase::RequestHeaders | Phase::RequestBody | Phase::RequestTrailers)
                );
                match stream.resume.take() {
                    Some(0) if in_request => stream.paused = false,
                    Some(1) if !in_request => stream.paused = false,
                    _ => return Ok(()),
                }
            }
            let c = ctx as i32;
            // Pause from a body callback before the end of the stream means "buffer" in Envoy
            // (StopIterationAndBuffer): later data and trailers are still delivered.
            let mut buffering = false;
            let next = match stream.step {
                Step::RequestHeaders => {
                    let eos = stream.client_body.is_none() && stream.client_trailers.is_empty();
                    let n = stream.request_headers.as_ref().map_or(0, Vec::len) as i32;
                    stream.step = if stream.client_body.is_some() {
                        Step::RequestBody
                    } else if !stream.client_trailers.is_empty() {
                        Step::RequestTrailers
                    } else {
                        Step::Upstream
                    };
                    stream.last_phase = Some(Phase::RequestHeaders);
                    Callback::Three(
                        "proxy_on_request_headers",
                        exports.on_request_headers.clone(),
                        (c, n, eos as i32),
                    )
                }
                Step::RequestBody => {
                    stream.request_body = stream.client_body.take().unwrap_or_default();
                    let eos = stream.client_trailers.is_empty();
                    let n = stream.request_body.len() as i32;
                    stream.step = if eos {
                        Step::Upstream
                    } else {
                        Step::RequestTrailers
                    };
                    stream.last_phase = Some(Phase::RequestBody);
                    buffering = !eos;
                    Callback::Three(
                        "proxy_on_request_body",
                        exports.on_request_body.clone(),
                        (c, n, eos as i32),
                    )
                }
                Step::RequestTrailers => {
                    let trailers = std::mem::take(&mut stream.client_trailers);
                    let n = trailers.len() as i32;
                    stream.request_trailers = Some(trailers);
                    stream.step = Step::Upstream;
                    stream.last_phase = Some(Phase::RequestTrailers);
                    Callback::Two(
                        "proxy_on_request_trailers",
                        exports.on_request_trailers.clone(),
                        (c, n),
                    )
                }
                Step::Upstream if stream.hold_upstream => {
                    if stream.upstream.is_none() {
                        stream.upstream = Some(Message {
                            headers: stream.request_headers.clone().unwrap_or_default(),
                            body: stream.request_body.clone(),
                            trailers: stream.request_trailers.clone().unwrap_or_default(),
                        });
                    }
                    return Ok(());
                }
                Step::Upstream => {
                    stream.upstream = Some(Message {
                        headers: stream.request_headers.clone().unwrap_or_default(),
                        body: stream.request_body.clone(),
                        trailers: stream.request_trailers.clone().unwrap_or_default(),
                    });
                    let answer = match (
                        &stream.upstream_answer,
                        self.upstream.as_mut(),
                        &stream.upstream,
                    ) {
                        (Some(explicit), _, _) => explicit.clone(),
                        (None, Some(upstream), Some(request)) => upstream(request),
                        _ => Message::with_status(200),
                    };
                    stream.response_headers = Some(answer.headers);
                    stream.response_body = answer.body;
                    stream.response_trailers =
                        (!answer.trailers.is_empty()).then_some(answer.trailers);
                    stream.step = Step::ResponseHeaders;
                    Callback::Nothing
                }
                Step::ResponseHeaders => {
                    let has_body = !stream.response_body.is_empty();
                    let has_trailers = stream.response_trailers.is_some();
                    let n = stream.response_headers.as_ref().map_or(0, Vec::len) as i32;
                    stream.step = if has_body {
                        Step::ResponseBody
                    } else if has_trailers {
                        Step::ResponseTrailers
                    } else {
                        Step::Finish
                    };
                    stream.last_phase = Some(Phase::ResponseHeaders);
                    let eos = !has_body && !has_trailers;
                    Callback::Three(
                        "proxy_on_response_headers",
                        exports.on_response_headers.clone(),
                        (c, n, eos as i32),
                    )
                }
                Step::ResponseBody => {
                    let has_trailers = stream.response_trailers.is_some();
                    let n = stream.response_body.len() as i32;
                    stream.step = if has_trailers {
                        Step::ResponseTrailers
                    } else {
                        Step::Finish
                    };
                    stream.last_phase = Some(Phase::ResponseBody);
                    buffering = has_trailers;
                    Callback::Three(
                        "proxy_on_response_body",
                        exports.on_response_body.clone(),
                        (c, n, !has_trailers as i32),
                    )
                }
                Step::ResponseTrailers => {
                    let n = stream.response_trailers.as_ref().map_or(0, Vec::len) as i32;
                    stream.step = Step::Finish;
                    stream.last_phase = Some(Phase::ResponseTrailers);
                    Callback::Two(
                        "proxy_on_response_trailers",
                        exports.on_response_trailers.clone(),
                        (c, n),
                    )
                }
                Step::Finish => return self.finish(w, ctx, false),
                Step::Done => return Ok(()),
            };
            let action = match next {
                Callback::Three(name, f, args) => self.call(w, ctx, name, f, args)?,
                Callback::Two(name, f, args) => self.call(w, ctx, name, f, args)?,
                Callback::Nothing => None,
            };
            if let Some(stream) = self.stream_mut(w, ctx) {
                // Pause = 1; a resume requested inside the same callback cancels it.
                if action == Some(1) && !buffering && stream.resume.take().is_none() {
                    stream.paused = true;
                } else {
                    stream.resume = None;
                }
            }
        }
        Err(HostError::Usage(format!(
            "worker {w} stream {ctx}: too many steps without completing"
        )))
    }

    /// Ends a stream like Envoy: `on_done`, `on_log`, `on_delete`; pending callouts are cancelled.
    fn finish(&mut self, w: usize, ctx: u32, reset: bool) -> HostResult<()> {
        if let Some(stream) = self.stream_mut(w, ctx) {
            stream.step = Step::Done;
            stream.reset = reset;
            stream.paused = false;
        }
        let c = ctx as i32;
        let f = self.workers[w].exports.on_done.clone();
        self.call(w, ctx, "proxy_on_done", f, c)?;
        if let Some(stream) = self.stream_mut(w, ctx) {
            stream.log_phase = true;
        }
        let f = self.workers[w].exports.on_log.clone();
        self.call(w, ctx, "proxy_on_log", f, c)?;
        let f = self.workers[w].exports.on_delete.clone();
        self.call(w, ctx, "proxy_on_delete", f, c)?;
        if let Some(stream) = self.workers[w].store.data_mut().streams.remove(&ctx) {
            self.finished.insert(stream.id, snapshot(&stream));
        }
        lock(&self.shared)
            .callouts
            .retain(|p| !(p.callout.worker == w && p.callout.context == ctx));
        Ok(())
    }

    /// Applies deferred effects until nothing is left: queue deliveries, local replies, resumes
    /// and resets requested from callbacks of other contexts.
    fn settle(&mut self) -> HostResult<()> {
        for _ in 0..SETTLE_LIMIT {
            let ready = lock(&self.shared).queue_ready.pop_front();
            if let Some((w, root, queue)) = ready {
                let f = self
                    .workers
                    .get(w)
                    .and_then(|wk| wk.exports.on_queue_ready.clone());
                self.call(
                    w,
                    root,
                    "proxy_on_queue_ready",
                    f,
                    (root as i32, queue as i32),
                )?;
                continue;
            }
            let work = self.workers.iter().enumerate().find_map(|(w, wk)| {
                wk.store.data().streams.values().find_map(|s| {
                    let due = s.pending_reply.is_some()
                        || s.reset_requested
                        || (s.paused && s.resume.is_some());
                    due.then_some((w, s.id.context))
                })
            });
            match work {
                Some((w, ctx)) => {
                    let before = self.stream_mut(w, ctx).map(|s| (s.step, s.paused));
                    self.drive(w, ctx)?;
                    // A resume that did not apply (wrong direction) must not spin.
                    if let Some(s) = self.stream_mut(w, ctx) {
                        if before == Some((s.step, s.paused)) {
                            s.resume = None;
                        }
                    }
                }
                None => return Ok(()),
            }
        }
        Err(HostError::Usage("deferred work does not settle".into()))
    }

    // ---- callouts ----------------------------------------------------------------------------

    /// Callouts dispatched and not answered yet, oldest first.
    pub fn callouts(&self) -> Vec<Callout> {
        lock(&self.shared)
            .callouts
            .iter()
            .map(|p| p.callout.clone())
            .collect()
    }

    /// Answers callout `id` and runs whatever the filter does in response.
    pub fn answer(&mut self, id: u32, reply: CalloutReply) -> HostResult<()> {
        let pending = {
            let mut shared = lock(&self.shared);
            let index = shared
                .callouts
                .iter()
                .position(|p| p.callout.id == id)
                .ok_or_else(|| HostError::Usage(format!("no pending callout {id}")))?;
            shared.callouts.remove(index)
        };
        let Callout {
            worker: w,
            context: ctx,
            kind,
            ..
        } = pending.callout;
        let (c, token) = (ctx as i32, id as i32);
        match (kind, reply) {
            (
                CalloutKind::Http { .. },
                CalloutReply::Http {
                    status,
                    headers,
                    body,
                    trailers,
                },
            ) => {
                let mut all = vec![(":status".to_string(), status.to_string().into_bytes())];
                all.extend(headers);
                let counts = (all.len() as i32, body.len() as i32, trailers.len() as i32);
                self.set_call_response(
                    w,
                    Some(CallResponse {
                        headers: all,
                        body,
                        trailers,
                    }),
                )?;
                let f = self.workers[w].exports.on_http_call_response.clone();
                self.call(
                    w,
                    ctx,
                    "proxy_on_http_call_response",
                    f,
                    (c, token, counts.0, counts.1, counts.2),
                )?;
            }
            (CalloutKind::Http { .. }, CalloutReply::Failure | CalloutReply::Timeout) => {
                self.set_call_response(w, Some(CallResponse::default()))?;
                let f = self.workers[w].exports.on_http_call_response.clone();
                self.call(
                    w,
                    ctx,
                    "proxy_on_http_call_response",
                    f,
                    (c, token, 0, 0, 0),
                )?;
            }
            (CalloutKind::Grpc { .. }, CalloutReply::GrpcOk { message }) => {
                let len = message.len() as i32;
                self.set_call_response(
                    w,
                    Some(CallResponse {
                        body: message,
                        ..Default::default()
                    }),
                )?;
                self.workers[w].store.data_mut().grpc_status = (0, None);
                let f = self.workers[w].exports.on_grpc_receive.clone();
                self.call(w, ctx, "proxy_on_grpc_receive", f, (c, token, len))?;
            }
            (
                CalloutKind::Grpc { .. },
                reply @ (CalloutReply::GrpcFailure { .. }
                | CalloutReply::Failure
                | CalloutReply::Timeout),
            ) => {
                let (status, message) = match reply {
                    CalloutReply::GrpcFailure { status, message } => (status, message),
                    CalloutReply::Timeout => (4, "deadline exceeded".to_string()),
                    _ => (14, "unavailable".to_string()),
                };
                self.workers[w].store.data_mut().grpc_status = (status, Some(message));
                let f = self.workers[w].exports.on_grpc_close.clone();
                self.call(w, ctx, "proxy_on_grpc_close", f, (c, token, status as i32))?;
            }
            (kind, reply) => {
                return Err(HostError::Usage(format!(
                    "callout {id} is {kind:?}; cannot answer it with {reply:?}"
                )))
            }
        }
        self.set_call_response(w, None)?;
        self.settle()
    }

    fn set_call_response(&mut self, w: usize, response: Option<CallResponse>) -> HostResult<()> {
        let worker = self
            .workers
            .get_mut(w)
            .ok_or_else(|| HostError::Usage(format!("no worker {w}")))?;
        abi::set_call_response(worker.store.data_mut(), response);
        Ok(())
    }

    /// Answers an HTTP callout with `status` and `body`.
    pub fn respond(&mut self, id: u32, status: u32, body: impl Into<Vec<u8>>) -> HostResult<()> {
        self.answer(id, CalloutReply::http(status).body(body))
    }

    pub fn fail_callout(&mut self, id: u32) -> HostResult<()> {
        self.answer(id, CalloutReply::Failure)
    }

    // ---- time --------------------------------------------------------------------------------

    /// Virtual time in nanoseconds since the Unix epoch.
    pub fn now_nanos(&self) -> u64 {
        lock(&self.shared).now_nanos
    }

    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.now_nanos())
    }

    /// Moves the virtual clock forward, firing every tick and callout timeout that falls due, in
    /// time order (timeouts before ticks at the same instant).
    pub fn advance(&mut self, by: Duration) -> HostResult<()> {
        let target = self.now_nanos().saturating_add(by.as_nanos() as u64);
        loop {
            let timeout = lock(&self.shared)
                .callouts
                .iter()
                .filter_map(|p| p.deadline.map(|t| (t, p.callout.id)))
                .filter(|(t, _)| *t <= target)
                .min();
            let tick = self
                .workers
                .iter()
                .enumerate()
                .filter(|(_, wk)| wk.failed.is_none())
                .filter_map(|(w, wk)| wk.store.data().next_tick_at.map(|t| (t, w)))
                .filter(|(t, _)| *t <= target)
                .min();
            match (timeout, tick) {
                (Some((t, id)), tick) if tick.is_none_or(|(tt, _)| t <= tt) => {
                    lock(&self.shared).now_nanos = t;
                    self.answer(id, CalloutReply::Timeout)?;
                }
                (_, Some((t, w))) => {
                    lock(&self.shared).now_nanos = t;
                    let vm = self.workers[w].store.data_mut();
                    vm.next_tick_at = vm.tick_period.map(|p| t + p.as_nanos() as u64);
                    let root = vm.root_id;
                    let f = self.workers[w].exports.on_tick.clone();
                    self.call(w, root, "proxy_on_tick", f, root as i32)?;
                    self.settle()?;
                }
                _ => break,
            }
        }
        lock(&self.shared).now_nanos = target;
        Ok(())
    }

    // ---- configuration -----------------------------------------------------------------------

    /// Applies a new plugin configuration like an Envoy config update: each worker gets a new
    /// root context configured with it; if any worker rejects it the old configuration stays.
    pub fn reconfigure(&mut self, config: impl AsRef<[u8]>) -> HostResult<()> {
        let config = config.as_ref().to_vec();
        let logs_before = lock(&self.shared).logs.len();
        // What a rejected configuration must not change.
        let saved: Vec<(Vec<u8>, Option<Duration>, Option<u64>)> = self
            .workers
            .iter()
            .map(|wk| {
                let vm = wk.store.data();
                (vm.plugin_config.clone(), vm.tick_period, vm.next_tick_at)
            })
            .collect();
        let mut created = Vec::new();
        for w in 0..self.workers.len() {
            let vm = self.workers[w].store.data_mut();
            let root = vm.next_context;
            vm.next_context += 1;
            vm.roots.push(root);
            vm.plugin_config = config.clone();
            created.push(root);
            let f = Some(self.workers[w].exports.on_context_create.clone());
            self.call(w, root, "proxy_on_context_create", f, (root as i32, 0))?;
            let f = self.workers[w].exports.on_configure.clone();
            let len = config.len() as i32;
            let accepted = self.call(w, root, "proxy_on_configure", f, (root as i32, len))?;
            if accepted == Some(0) {
                let logs = lock(&self.shared)
                    .logs
                    .iter()
                    .skip(logs_before)
                    .filter(|l| l.worker == w && l.level >= LogLevel::Error)
                    .map(|l| l.message.clone())
                    .collect();
                for (w, root) in created.into_iter().enumerate() {
                    self.drop_root(w, root)?;
                    let vm = self.workers[w].store.data_mut();
                    (vm.plugin_config, vm.tick_period, vm.next_tick_at) = saved[w].clone();
                }
                return Err(HostError::ConfigRejected { worker: w, logs });
            }
        }
        for (w, root) in created.into_iter().enumerate() {
            let old = std::mem::replace(&mut self.workers[w].store.data_mut().root_id, root);
            self.drop_root(w, old)?;
        }
        self.settle()
    }

    /// Ends a root context: `on_done`, `on_delete`.
    fn drop_root(&mut self, w: usize, root: u32) -> HostResult<()> {
        let f = self.workers[w].exports.on_done.clone();
        self.call(w, root, "proxy_on_done", f, root as i32)?;
        let f = self.workers[w].exports.on_delete.clone();
        self.call(w, root, "proxy_on_delete", f, root as i32)?;
        self.workers[w]
            .store
            .data_mut()
            .roots
            .retain(|r| *r != root);
        Ok(())
    }

    // ---- observations ------------------------------------------------------------------------

    /// A counter's or gauge's value (full name, e.g. `switchyard.ratelimit.allowed`; a leading
    /// `wasmcustom.` as Envoy shows it is accepted). Histograms give their sample count.
    pub fn metric(&self, name: &str) -> Option<u64> {
        let name = name.strip_prefix("wasmcustom.").unwrap_or(name);
        lock(&self.shared)
            .metrics
            .iter()
            .find(|m| m.name == name)
            .map(|m| {
                if m.kind == crate::state::MetricKind::Histogram {
                    m.samples.len() as u64
                } else {
                    m.value
                }
            })
    }

    /// A histogram's recorded values.
    pub fn histogram(&self, name: &str) -> Option<Vec<u64>> {
        let name = name.strip_prefix("wasmcustom.").unwrap_or(name);
        lock(&self.shared)
            .metrics
            .iter()
            .find(|m| m.name == name && m.kind == crate::state::MetricKind::Histogram)
            .map(|m| m.samples.clone())
    }

    /// How many times the module called each host function since the last
    /// [`reset_host_calls`](Self::reset_host_calls), over all workers: what a request costs in
    /// boundary crossings, deterministic where timings are not.
    pub fn host_calls(&self) -> std::collections::BTreeMap<String, u64> {
        lock(&self.shared).host_calls.clone()
    }

    pub fn reset_host_calls(&mut self) {
        lock(&self.shared).host_calls.clear();
    }

    /// The wasm instructions all workers have executed so far (wasmtime fuel), or `None`
    /// without `SWITCHYARD_WASM_FUEL` set.
    pub fn fuel_used(&self) -> Option<u64> {
        if !fuel_metering() {
            return None;
        }
        let left = self.workers.iter().map(|w| w.store.get_fuel().unwrap_or(0));
        Some(left.map(|l| u64::MAX - l).sum())
    }

    /// Every defined metric with its value, by name.
    pub fn metrics(&self) -> Vec<(String, u64)> {
        lock(&self.shared)
            .metrics
            .iter()
            .map(|m| (m.name.clone(), m.value))
            .collect()
    }

    pub fn logs(&self) -> Vec<LogEntry> {
        lock(&self.shared).logs.clone()
    }

    /// Messages logged at `level` or above.
    pub fn log_messages(&self, level: LogLevel) -> Vec<String> {
        lock(&self.shared)
            .logs
            .iter()
            .filter(|l| l.level >= level)
            .map(|l| l.message.clone())
            .collect()
    }

    pub fn clear_logs(&mut self) {
        lock(&self.shared).logs.clear();
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&lock(&self.shared).stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&lock(&self.shared).stderr).into_owned()
    }

    /// A shared-data value.
    pub fn shared_data(&self, key: &str) -> Option<Vec<u8>> {
        lock(&self.shared).data.get(key).map(|(v, _)| v.clone())
    }

    /// A shared-data value with its CAS token.
    pub fn shared_data_with_cas(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        lock(&self.shared).data.get(key).cloned()
    }

    /// Shared-data keys, sorted.
    pub fn shared_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = lock(&self.shared).data.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Writes shared data as "another worker" would (unconditionally, new CAS token).
    pub fn set_shared_data(&mut self, key: &str, value: impl AsRef<[u8]>) {
        lock(&self.shared).set_shared(key, value.as_ref().to_vec(), 0);
    }

    /// Before every CAS-guarded write of an existing key, `f(key)` runs; when it returns true
    /// the key's token changes first, as if another worker had just written, so the write fails
    /// with `CasMismatch`. `None`-equivalent: pass `|_| false`.
    pub fn interfere_shared(&mut self, f: impl FnMut(&str) -> bool + Send + 'static) {
        lock(&self.shared).interfere = Some(Box::new(f));
    }

    pub fn stop_interfering(&mut self) {
        lock(&self.shared).interfere = None;
    }

    /// Sets a host-level property (e.g. `route_name`) for later callbacks.
    pub fn set_property(&mut self, path: &str, value: impl AsRef<[u8]>) {
        lock(&self.shared)
            .properties
            .insert(path.to_string(), value.as_ref().to_vec());
    }

    /// Whether the filter called `proxy_done` on worker `w` (after `on_done` returned false).
    pub fn done_called(&self, w: usize) -> bool {
        self.vm(w).map(|vm| vm.done_called).unwrap_or(false)
    }

    /// Requests still in flight (paused) on any worker.
    pub fn in_flight(&self) -> Vec<StreamId> {
        let mut ids: Vec<StreamId> = self
            .workers
            .iter()
            .flat_map(|wk| wk.store.data().streams.values().map(|s| s.id))
            .collect();
        ids.sort_by_key(|id| (id.worker, id.context));
        ids
    }
}

fn exports(instance: &Instance, store: &mut Store<Vm>) -> HostResult<Exports> {
    macro_rules! get {
        ($name:literal) => {
            instance.get_typed_func(&mut *store, $name).ok()
        };
    }
    let on_context_create = instance
        .get_typed_func(&mut *store, "proxy_on_context_create")
        .map_err(|e| HostError::Instantiate(format!("proxy_on_context_create: {e}")))?;
    Ok(Exports {
        on_context_create,
        on_vm_start: get!("proxy_on_vm_start"),
        on_configure: get!("proxy_on_configure"),
        on_request_headers: get!("proxy_on_request_headers"),
        on_request_body: get!("proxy_on_request_body"),
        on_request_trailers: get!("proxy_on_request_trailers"),
        on_response_headers: get!("proxy_on_response_headers"),
        on_response_body: get!("proxy_on_response_body"),
        on_response_trailers: get!("proxy_on_response_trailers"),
        on_log: get!("proxy_on_log"),
        on_done: get!("proxy_on_done"),
        on_delete: get!("proxy_on_delete"),
        on_tick: get!("proxy_on_tick"),
        on_queue_ready: get!("proxy_on_queue_ready"),
        on_http_call_response: get!("proxy_on_http_call_response"),
        on_grpc_receive: get!("proxy_on_grpc_receive"),
        on_grpc_close: get!("proxy_on_grpc_close"),
    })
}

/// Turns a local reply into the response the encoder callbacks see. Envoy runs its encoder
/// filters (this one included) on a local reply sent before the response started; one sent while
/// the response is being processed replaces it and ends the stream.
fn apply_local_reply(stream: &mut Stream, reply: LocalReply) {
    // Envoy's local reply: the filter's headers, then the length, and `text/plain` only when
    // the filter set no content type of its own.
    let mut headers = vec![(":status".to_string(), reply.status.to_string().into_bytes())];
    headers.extend(reply.headers.iter().cloned());
    headers.push((
        "content-length".to_string(),
        reply.body.len().to_string().into_bytes(),
    ));
    if !reply.body.is_empty() && header_bytes(&headers, "content-type").is_none() {
        headers.push(("content-type".to_string(), b"text/plain".to_vec()));
    }
    let response_started = stream.step > Step::ResponseHeaders || stream.replying_locally;
    stream.response_headers = Some(headers);
    stream.response_body = reply.body.clone();
    stream.response_trailers = None;
    stream.local_reply = Some(reply);
    stream.paused = false;
    stream.resume = None;
    stream.step = if response_started {
        Step::Finish
    } else {
        Step::ResponseHeaders
    };
    stream.replying_locally = true;
}

fn snapshot(stream: &Stream) -> Outcome {
    let done = stream.step == Step::Done;
    Outcome {
        stream: stream.id,
        action: if stream.paused && !done {
            Action::Pause
        } else {
            Action::Continue
        },
        paused_at: if stream.paused && !done {
            stream.last_phase
        } else {
            None
        },
        local_reply: stream.local_reply.clone(),
        request_headers: stream.request_headers.clone().unwrap_or_default(),
        upstream: stream.upstream.clone(),
        response: (done && !stream.reset).then(|| Message {
            headers: stream.response_headers.clone().unwrap_or_default(),
            body: stream.response_body.clone(),
            trailers: stream.response_trailers.clone().unwrap_or_default(),
        }),
        reset: stream.reset,
    }
}

/// A handle on one worker.
pub struct WorkerHandle<'a> {
    host: &'a mut Host,
    worker: usize,
}

impl<'a> WorkerHandle<'a> {
    /// A `GET /` request to `example.com` unless changed.
    pub fn request(self) -> RequestBuilder<'a> {
        RequestBuilder {
            host: self.host,
            worker: self.worker,
            method: b"GET".to_vec(),
            path: b"/".to_vec(),
            authority: b"example.com".to_vec(),
            scheme: b"http".to_vec(),
            headers: Vec::new(),
            body: None,
            trailers: Vec::new(),
            properties: HashMap::new(),
            answer_status: None,
            answer_headers: Vec::new(),
            answer_body: Vec::new(),
            answer_trailers: Vec::new(),
            hold: false,
        }
    }

    /// Fires this worker's tick now (regardless of its period), as Envoy's timer would.
    pub fn tick(self) -> HostResult<()> {
        let root = self.host.vm(self.worker)?.root_id;
        let f = self.host.workers[self.worker].exports.on_tick.clone();
        self.host
            .call(self.worker, root, "proxy_on_tick", f, root as i32)?;
        self.host.settle()
    }
}

/// Builds and sends one request; the upstream answers with the configured response.
pub struct RequestBuilder<'a> {
    host: &'a mut Host,
    worker: usize,
    method: Vec<u8>,
    path: Vec<u8>,
    authority: Vec<u8>,
    scheme: Vec<u8>,
    headers: Headers,
    body: Option<Vec<u8>>,
    trailers: Headers,
    properties: HashMap<String, Vec<u8>>,
    answer_status: Option<u32>,
    answer_headers: Headers,
    answer_body: Vec<u8>,
    answer_trailers: Headers,
    hold: bool,
}

impl RequestBuilder<'_> {
    /// Keeps the request in flight once it reaches the upstream (as a slow upstream would)
    /// until [`Host::release`]: the filter sees no response and no end of stream meanwhile.
    pub fn hold(mut self) -> Self {
        self.hold = true;
        self
    }
    pub fn method(self, method: &str) -> Self {
        self.method_bytes(method.as_bytes())
    }
    /// `:method` as raw bytes.
    pub fn method_bytes(mut self, method: &[u8]) -> Self {
        self.method = method.to_vec();
        self
    }
    pub fn path(self, path: &str) -> Self {
        self.path_bytes(path.as_bytes())
    }
    /// `:path` as raw bytes.
    pub fn path_bytes(mut self, path: &[u8]) -> Self {
        self.path = path.to_vec();
        self
    }
    pub fn authority(self, authority: &str) -> Self {
        self.authority_bytes(authority.as_bytes())
    }
    /// `:authority` as raw bytes.
    pub fn authority_bytes(mut self, authority: &[u8]) -> Self {
        self.authority = authority.to_vec();
        self
    }
    /// Adds a request header (repeat for repeated headers).
    pub fn header(self, name: &str, value: &str) -> Self {
        self.header_bytes(name, value.as_bytes())
    }
    /// Adds a request header with any value bytes (obs-text such as a lone `\xE9` included);
    /// the module reads exactly these bytes.
    pub fn header_bytes(mut self, name: &str, value: &[u8]) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_vec()));
        self
    }
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }
    pub fn trailer(self, name: &str, value: &str) -> Self {
        self.trailer_bytes(name, value.as_bytes())
    }
    /// Adds a request trailer with any value bytes.
    pub fn trailer_bytes(mut self, name: &str, value: &[u8]) -> Self {
        self.trailers
            .push((name.to_ascii_lowercase(), value.to_vec()));
        self
    }
    /// A request-level property (e.g. `source.address` = `10.0.0.7:4321`).
    pub fn property(mut self, path: &str, value: impl AsRef<[u8]>) -> Self {
        self.properties
            .insert(path.to_string(), value.as_ref().to_vec());
        self
    }
    /// Shorthand for the `source.address` property.
    pub fn source(self, address: &str) -> Self {
        self.property("source.address", address)
    }
    /// The upstream's status (default 200). Any `upstream_*` setting overrides the host's
    /// upstream function for this request.
    pub fn upstream_status(mut self, status: u32) -> Self {
        self.answer_status = Some(status);
        self
    }
    pub fn upstream_header(self, name: &str, value: &str) -> Self {
        self.upstream_header_bytes(name, value.as_bytes())
    }
    /// An upstream response header with any value bytes.
    pub fn upstream_header_bytes(mut self, name: &str, value: &[u8]) -> Self {
        self.answer_headers
            .push((name.to_ascii_lowercase(), value.to_vec()));
        self
    }
    pub fn upstream_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.answer_body = body.into();
        self
    }
    pub fn upstream_trailer(self, name: &str, value: &str) -> Self {
        self.upstream_trailer_bytes(name, value.as_bytes())
    }
    /// An upstream response trailer with any value bytes.
    pub fn upstream_trailer_bytes(mut self, name: &str, value: &[u8]) -> Self {
        self.answer_trailers
            .push((name.to_ascii_lowercase(), value.to_vec()));
        self
    }

    /// Runs the request as far as the filter lets it: to completion, or until it pauses.
    pub fn send(self) -> HostResult<Outcome> {
        let mut headers = vec![
            (":authority".to_string(), self.authority),
            (":path".to_string(), self.path),
            (":method".to_string(), self.method),
            (":scheme".to_string(), self.scheme),
        ];
        headers.extend(self.headers);
        let explicit = self.answer_status.is_some()
            || !self.answer_headers.is_empty()
            || !self.answer_body.is_empty()
            || !self.answer_trailers.is_empty();
        let status = self.answer_status.unwrap_or(200);
        let mut answer_headers = vec![(":status".to_string(), status.to_string().into_bytes())];
        answer_headers.extend(self.answer_headers);
        let spec = RequestSpec {
            headers,
            body: self.body,
            trailers: self.trailers,
            properties: self.properties,
            answer: explicit.then_some(Message {
                headers: answer_headers,
                body: self.answer_body,
                trailers: self.answer_trailers,
            }),
            hold: self.hold,
        };
        self.host.start_stream(self.worker, spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn section(id: u8, items: &[Vec<u8>], out: &mut Vec<u8>) {
        let mut body = Vec::new();
        leb(items.len(), &mut body);
        for item in items {
            body.extend_from_slice(item);
        }
        out.push(id);
        leb(body.len(), out);
        out.extend_from_slice(&body);
    }

    fn name(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        leb(s.len(), &mut out);
        out.extend_from_slice(s.as_bytes());
        out
    }

    /// A minimal proxy-wasm module whose `_initialize` runs `init` (a wasm expression, `end`
    /// included); imports `proxy_get_log_level` (func 0) and `proxy_log` (func 1).
    fn module(init: &[u8]) -> Vec<u8> {
        let mut m = b"\0asm\x01\0\0\0".to_vec();
        section(
            1,
            &[
                vec![0x60, 0, 0],                         // 0: () -> ()
                vec![0x60, 1, 0x7f, 1, 0x7f],             // 1: (i32) -> i32
                vec![0x60, 2, 0x7f, 0x7f, 0],             // 2: (i32, i32) -> ()
                vec![0x60, 3, 0x7f, 0x7f, 0x7f, 1, 0x7f], // 3: (i32, i32, i32) -> i32
            ],
            &mut m,
        );
        let import = |field: &str, ty: u8| [name("env"), name(field), vec![0, ty]].concat();
        section(
            2,
            &[import("proxy_get_log_level", 1), import("proxy_log", 3)],
            &mut m,
        );
        section(3, &[vec![0], vec![0], vec![2], vec![1]], &mut m);
        section(5, &[vec![0, 1]], &mut m);
        let export = |field: &str, kind: u8, index: u8| [name(field), vec![kind, index]].concat();
        section(
            7,
            &[
                export("memory", 2, 0),
                export("_initialize", 0, 2),
                export("proxy_abi_version_0_2_1", 0, 3),
                export("proxy_on_context_create", 0, 4),
                export("proxy_on_memory_allocate", 0, 5),
            ],
            &mut m,
        );
        let body = |expr: &[u8]| {
            let mut code = vec![0]; // no locals
            code.extend_from_slice(expr);
            let mut out = Vec::new();
            leb(code.len(), &mut out);
            out.extend_from_slice(&code);
            out
        };
        section(
            10,
            &[
                body(init),
                body(&[0x0b]),
                body(&[0x0b]),
                body(&[0x41, 0x80, 0x08, 0x0b]), // i32.const 1024
            ],
            &mut m,
        );
        m
    }

    fn start(label: &str, init: &[u8]) -> HostResult<Host> {
        let path = std::env::temp_dir().join(format!(
            "switchyard-wasmhost-init-{label}-{}.wasm",
            std::process::id()
        ));
        std::fs::write(&path, module(init)).map_err(|e| HostError::Load(e.to_string()))?;
        let host = Host::load(&path).and_then(|b| b.configure(""));
        let _ = std::fs::remove_file(&path);
        host
    }

    #[test]
    fn initialisation_may_log_but_makes_no_other_host_call_as_in_envoy() {
        // proxy_log(2, 0, 0): allowed while `_initialize` runs.
        let logs = start("log", &[0x41, 2, 0x41, 0, 0x41, 0, 0x10, 1, 0x1a, 0x0b]);
        assert!(logs.is_ok(), "{:?}", logs.err());
        // proxy_get_log_level(8), as an `init_vm` inside `proxy_wasm::main!` would call: Envoy
        // traps with `restricted_callback` and the VM fails.
        match start("level", &[0x41, 8, 0x10, 0, 0x1a, 0x0b]) {
            Err(HostError::Trap {
                callback, message, ..
            }) => {
                assert_eq!(callback, "_initialize");
                assert!(
                    message.contains("restricted_callback: env.proxy_get_log_level"),
                    "{message}"
                );
            }
            other => panic!("expected a restricted_callback trap, got {:?}", other.err()),
        }
    }
}
