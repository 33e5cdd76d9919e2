//! `cargo xtask bench [proxy|algo|memory|all] [--quick] [--rounds N] [--seconds S]
//! [--connections C] [--requests N] [--only A,B] [--load wrk|builtin]`: the benchmarks of
//! docs/benchmarks.md. Results go to `target/bench/` (markdown and JSON). Nothing here asserts a goal: the numbers are reported.

mod algo;
mod balance;
mod global;
mod hostcalls;
mod load;
mod pin;
mod rate;
mod svg;
mod variants;
mod wrk;

use crate::procs::Supervisor;
use crate::util::{self, Result};
use crate::{build, envoy, http};
use load::{Generator, Plan, Summary};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use variants::Variant;

pub const USAGE: &str = "\
usage: cargo xtask bench [proxy|algo|memory|hostcalls|all] [options]
       cargo xtask bench balance [options]   (its options: cargo xtask bench balance --help)
       cargo xtask bench global [options]    (its options: cargo xtask bench global --help)
  proxy    every variant (plain, no-op wasm, each filter, the chain, native counterparts) in
           interleaved rounds: Envoy CPU us/request, req/s, p50/p99, non-2xx, RSS
  algo     the native benches of the filter crates: criterion timings (decision, lookup, build
           costs), hash quality, cache hit ratios
  memory   Envoy RSS before/after N requests with distinct keys through all four filters
  hostcalls what one proxy-wasm host call costs in this Envoy (the probe filter's cost mode
           against the no-op filter, Envoy answering itself): where the filters' time goes
  all      (default) proxy, then memory, then algo
  balance  10 upstreams, one made 20x slower mid-run: p50/p99/p99.9 per phase for Envoy's
           ROUND_ROBIN / LEAST_REQUEST and the hashring's ring and p2c_ewma, plus an SVG chart
  global   ratelimit local vs global (switchyard-rls + Redis) vs global with a lease of 100:
           Envoy CPU us/request, p50/p99, service calls/request; 3 Envoys x 2 workers sharing
           one limit: admitted / limit per window
options:
  --quick            2 rounds of 2 s (proxy) and 200000 requests (memory)
  --rounds N         proxy rounds (default 5)
  --seconds S        measured seconds per variant and round (default 4)
  --connections C    load connections (default 4)
  --requests N       memory run requests (default 1000000)
  --only A,B         proxy, hostcalls: run only these variants (names as in docs/benchmarks.md)
  --no-pin           do not pin Envoy to a CPU of its own (default: pinned with 2+ CPUs)
  --load wrk|builtin proxy load generator (default: wrk when it is on PATH, else the built-in
                     one; nothing is installed). The memory run always uses the built-in one";

struct Options {
    rounds: usize,
    measure: Duration,
    warmup: Duration,
    connections: usize,
    memory_requests: u64,
    only: Option<Vec<String>>,
    /// The proxy benchmark's load generator.
    load: Generator,
    /// Envoy on a CPU of its own (see `pin`); `None` with `--no-pin` or a single CPU.
    pin: Option<pin::Pinning>,
}

pub fn bench(args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "balance") {
        if args.iter().any(|a| a == "--help" || a == "-h") {
            println!("{}", balance::USAGE);
            return Ok(());
        }
        return balance::balance(args);
    }
    if args.iter().any(|a| a == "global") {
        if args.iter().any(|a| a == "--help" || a == "-h") {
            println!("{}", global::USAGE);
            return Ok(());
        }
        return global::global(args);
    }
    let mut what = "all";
    let mut opts = Options {
        rounds: 5,
        measure: Duration::from_secs(4),
        warmup: Duration::from_secs(1),
        connections: 4,
        memory_requests: 1_000_000,
        only: None,
        load: Generator::Builtin,
        pin: None,
    };
    let mut pinning = true;
    let mut load_choice = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut number = |name: &str| -> Result<u64> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a number\n{USAGE}"))
        };
        match arg.as_str() {
            "proxy" | "algo" | "memory" | "hostcalls" | "all" => what = arg.as_str(),
            "--quick" => {
                opts.rounds = 2;
                opts.measure = Duration::from_secs(2);
                opts.warmup = Duration::from_millis(500);
                opts.memory_requests = 200_000;
            }
            "--rounds" => opts.rounds = number(arg)?.max(1) as usize,
            "--seconds" => opts.measure = Duration::from_secs(number(arg)?.max(1)),
            "--connections" => opts.connections = number(arg)?.max(1) as usize,
            "--requests" => opts.memory_requests = number(arg)?.max(1),
            "--only" => {
                let list = it
                    .next()
                    .ok_or_else(|| format!("--only needs variant names\n{USAGE}"))?;
                opts.only = Some(list.split(',').map(str::to_owned).collect());
            }
            "--no-pin" => pinning = false,
            "--load" => {
                let choice = it
                    .next()
                    .ok_or_else(|| format!("--load needs wrk or builtin\n{USAGE}"))?;
                load_choice = Some(choice.as_str());
            }
            _ => return Err(format!("unknown argument {arg:?}\n{USAGE}")),
        }
    }
    if matches!(what, "proxy" | "hostcalls" | "all") {
        // Before the build, so a missing wrk fails fast.
        opts.load = Generator::select(load_choice, wrk::Wrk::find())?;
    }
    let allowed = pin::allowed_cpus()?;
    if pinning {
        opts.pin = pin::split(&allowed);
    }
    let out_dir = util::workspace_root().join("target").join("bench");
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("create {}: {e}", out_dir.display()))?;
    if matches!(what, "proxy" | "memory" | "hostcalls" | "all") {
        let artifacts = build::build()?;
        let envoy_bin = envoy::ensure(envoy::DEFAULT_VERSION)?;
        let env = Env {
            envoy_bin,
            upstream_bin: artifacts.upstream_bin,
            dist: artifacts.dist,
            out_dir: out_dir.clone(),
        };
        if let Some(p) = &opts.pin {
            pin::set_self(&p.others)?;
        }
        let run = || -> Result<()> {
            if matches!(what, "proxy" | "all") {
                proxy(&env, &opts)?;
            }
            if matches!(what, "memory" | "all") {
                memory(&env, &opts)?;
            }
            if what == "hostcalls" {
                hostcalls(&env, &opts)?;
            }
            Ok(())
        };
        let result = run();
        // The algorithm benches (and their build) get every CPU again.
        pin::set_self(&allowed)?;
        result?;
    }
    if matches!(what, "algo" | "all") {
        algo::algo(&out_dir)?;
    }
    Ok(())
}

struct Env {
    envoy_bin: PathBuf,
    upstream_bin: PathBuf,
    dist: PathBuf,
    out_dir: PathBuf,
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("{what} not ready after {timeout:?}"))
}

fn log_file(path: &Path) -> Result<Stdio> {
    std::fs::File::create(path)
        .map(Stdio::from)
        .map_err(|e| format!("create {}: {e}", path.display()))
}

fn start_upstreams(env: &Env, children: &mut Supervisor, run_dir: &Path) -> Result<[u16; 3]> {
    let mut ports = [0u16; 3];
    for (i, port) in ports.iter_mut().enumerate() {
        *port = free_port()?;
        let id = format!("u{}", i + 1);
        let mut cmd = Command::new(&env.upstream_bin);
        cmd.args(["--id", &id, "--listen", &format!("127.0.0.1:{port}")])
            .stdout(log_file(&run_dir.join(format!("{id}.log")))?)
            .stderr(Stdio::null());
        children.spawn(&format!("upstream {id}"), cmd)?;
    }
    for port in ports {
        wait_for("upstream", Duration::from_secs(20), || {
            TcpStream::connect(loopback(port)).is_ok()
        })?;
    }
    Ok(ports)
}

/// One running Envoy of a variant.
struct Running {
    pid: u32,
    listener: u16,
}

fn start_envoy(
    env: &Env,
    children: &mut Supervisor,
    run_dir: &Path,
    variant: &Variant,
    upstreams: &[u16; 3],
    pin: Option<&pin::Pinning>,
) -> Result<Running> {
    let (listener, admin) = (free_port()?, free_port()?);
    let config = run_dir.join(format!("{}.yaml", variant.name));
    std::fs::write(
        &config,
        variants::envoy_yaml(variant, listener, admin, upstreams),
    )
    .map_err(|e| format!("write {}: {e}", config.display()))?;
    let cmd = envoy_command(
        &env.envoy_bin,
        &config,
        pin,
        &run_dir.join(format!("{}.log", variant.name)),
    )?;
    let pid = children.spawn(&format!("envoy {}", variant.name), cmd)?;
    wait_for(
        &format!("envoy {} (log in {})", variant.name, run_dir.display()),
        Duration::from_secs(90),
        || matches!(http::get(loopback(admin), "/ready"), Ok((200, _))),
    )?;
    children.check_alive()?;
    Ok(Running { pid, listener })
}

/// A cache-hit variant must really hit: the second request for its path carries `Age` (both
/// Switchyard's cache and Envoy's add it to every hit), or the run stops instead of timing
/// misses under a hit label.
fn verify_cache_hit(variant: &Variant, listener: u16) -> Result<()> {
    if !variant.name.contains("cache-hit") {
        return Ok(());
    }
    let addr = loopback(listener);
    for attempt in 0..2 {
        let (status, has_age) = http::get_has_header(addr, variant.path, "age")?;
        if attempt == 1 && (status != 200 || !has_age) {
            return Err(format!(
                "bench: {} is not a cache hit (second GET {}: status {status}, Age header {has_age})",
                variant.name, variant.path
            ));
        }
    }
    Ok(())
}

/// The value after option `arg` on a bench command line.
pub(crate) fn option_value(
    it: &mut std::slice::Iter<'_, String>,
    arg: &str,
    usage: &str,
) -> Result<String> {
    it.next()
        .cloned()
        .ok_or_else(|| format!("{arg} needs a value\n{usage}"))
}

/// A positive, finite number given to option `arg`.
pub(crate) fn positive_number(arg: &str, v: &str, usage: &str) -> Result<f64> {
    v.parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n > 0.0)
        .ok_or_else(|| format!("{arg}: {v:?} is not a positive number\n{usage}"))
}

/// utime + stime of a process, in microseconds.
fn cpu_us(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("read /proc/{pid}/stat: {e}"))?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let total = ticks(11) + ticks(12);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(total * 1_000_000 / hz)
}

/// Resident set size in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("read /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no VmRSS for pid {pid}"))
}

struct Sample {
    completed: u64,
    pub(crate) cpu_us_per_req: f64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
    errors: u64,
    rss_kib: u64,
}

/// Warm-up, then the measured interval, with the selected generator. Envoy's CPU time is read
/// just before and after the measured load, so CPU/request divides it by the requests completed
/// in that interval.
fn measure(running: &Running, variant: &Variant, opts: &Options, run_dir: &Path) -> Result<Sample> {
    let addr = loopback(running.listener);
    const KEYS: u64 = 10_000;
    let run: Box<dyn Fn(Duration) -> Result<Summary>> = match &opts.load {
        Generator::Builtin => Box::new(|duration| {
            Ok(load::run(&Plan {
                addr,
                path: variant.path.to_owned(),
                connections: opts.connections,
                keys: KEYS,
                duration,
                max_requests: None,
            })
            .summary())
        }),
        Generator::Wrk(wrk) => {
            let script = run_dir.join(format!("{}.wrk.lua", variant.name));
            std::fs::write(&script, wrk::script(variant.path, KEYS, opts.connections))
                .map_err(|e| format!("write {}: {e}", script.display()))?;
            Box::new(move |duration| wrk.run(&script, addr, opts.connections, duration))
        }
    };
    run(opts.warmup)?;
    let before = cpu_us(running.pid)?;
    let outcome = run(opts.measure)?;
    let after = cpu_us(running.pid)?;
    Ok(Sample {
        completed: outcome.completed,
        cpu_us_per_req: (after - before) as f64 / outcome.completed.max(1) as f64,
        rps: outcome.rps(),
        p50_ms: outcome.p50_us as f64 / 1000.0,
        p99_ms: outcome.p99_us as f64 / 1000.0,
        non_2xx: outcome.non_2xx,
        errors: outcome.errors,
        rss_kib: rss_kib(running.pid)?,
    })
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn spread(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        })
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    // Counted from /proc/cpuinfo: the benchmark pins itself, which narrows
    // `available_parallelism` to the CPUs it may use.
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    format!(
        "{cores} cores, {model}, {:.0} GiB RAM",
        mem_kib as f64 / 1024.0 / 1024.0
    )
}

fn proxy(env: &Env, opts: &Options) -> Result<()> {
    let variants = |upstreams: &[u16; 3]| variants::all(&env.dist, upstreams);
    let (variants, samples) = interleaved_rounds(env, opts, "proxy", variants)?;
    let envoy_version = envoy_version(&env.envoy_bin);
    let report = proxy_report(&variants, &samples, opts, &envoy_version);
    write_outputs(&env.out_dir, "proxy", &report.0, &report.1)?;
    println!("{}", report.0);
    Ok(())
}

/// The host-call benchmark: what one proxy-wasm host call costs in this Envoy.
fn hostcalls(env: &Env, opts: &Options) -> Result<()> {
    let variants = |_: &[u16; 3]| variants::hostcalls(&env.dist);
    let (variants, samples) = interleaved_rounds(env, opts, "hostcalls", variants)?;
    let report = hostcalls::report(
        &variants,
        &samples,
        &format!(
            "Machine: {}. Envoy {}, `--concurrency 1`, Envoy answering 200 itself. {} rounds x {} s \
             per variant, {} connections from {}. {}.",
            machine(),
            envoy_version(&env.envoy_bin),
            opts.rounds,
            opts.measure.as_secs(),
            opts.connections,
            opts.load.label(opts.connections),
            pin::describe(opts.pin.as_ref())
        ),
    );
    write_outputs(&env.out_dir, "hostcalls", &report.0, &report.1)?;
    println!("{}", report.0);
    Ok(())
}

/// Starts every variant's Envoy (narrowed by `--only`) and measures them in interleaved rounds.
/// Every variant's Envoy runs for the whole benchmark, so rounds interleave the variants without
/// restarts; idle Envoys cost next to nothing.
fn interleaved_rounds(
    env: &Env,
    opts: &Options,
    dir: &str,
    variants_for: impl Fn(&[u16; 3]) -> Vec<Variant>,
) -> Result<(Vec<Variant>, Vec<Vec<Sample>>)> {
    let run_dir = env.out_dir.join(dir);
    std::fs::create_dir_all(&run_dir).map_err(|e| format!("create {}: {e}", run_dir.display()))?;
    let mut children = Supervisor::new();
    let upstreams = start_upstreams(env, &mut children, &run_dir)?;
    let mut variants = variants_for(&upstreams);
    keep_only(&mut variants, opts.only.as_deref(), |v| v.name)?;
    let mut running = Vec::new();
    for v in &variants {
        println!("bench: starting envoy for {}", v.name);
        let r = start_envoy(
            env,
            &mut children,
            &run_dir,
            v,
            &upstreams,
            opts.pin.as_ref(),
        )?;
        verify_cache_hit(v, r.listener)?;
        running.push(r);
    }
    let mut samples: Vec<Vec<Sample>> = variants.iter().map(|_| Vec::new()).collect();
    for round in 1..=opts.rounds {
        for (i, v) in variants.iter().enumerate() {
            let s = measure(&running[i], v, opts, &run_dir)?;
            println!(
                "round {round}/{}: {:<24} {:>7.1} us/req {:>8.0} req/s p50 {:.2} ms p99 {:.2} ms non-2xx {} errors {}",
                opts.rounds, v.name, s.cpu_us_per_req, s.rps, s.p50_ms, s.p99_ms, s.non_2xx, s.errors
            );
            samples[i].push(s);
        }
        children.check_alive()?;
    }
    Ok((variants, samples))
}

/// `1.40.0/Clean/RELEASE/BoringSSL (9e55…)` from Envoy's `--version` line.
fn envoy_version(bin: &Path) -> String {
    match envoy::version_of(bin) {
        Ok(line) => line
            .split_once("version: ")
            .and_then(|(_, v)| v.split_once('/'))
            .map_or(line.clone(), |(sha, rest)| format!("{rest} ({sha})")),
        Err(e) => e,
    }
}

/// Markdown and JSON of the proxy benchmark.
fn proxy_report(
    variants: &[Variant],
    samples: &[Vec<Sample>],
    opts: &Options,
    envoy_version: &str,
) -> (String, Value) {
    let col = |i: usize, f: fn(&Sample) -> f64| -> Vec<f64> { samples[i].iter().map(f).collect() };
    let cpu: Vec<f64> = (0..variants.len())
        .map(|i| median(&col(i, |s| s.cpu_us_per_req)))
        .collect();
    let index = |name: &str| variants.iter().position(|v| v.name == name);
    let plain = index("plain").map_or(0.0, |i| cpu[i]);
    // Each variant's baseline: plain Envoy with the same kind of cluster (see
    // `Variant::baseline`); `plain` when that variant did not run.
    let base = |i: usize| -> f64 { index(variants[i].baseline()).map_or(plain, |b| cpu[b]) };
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Machine: {}. Envoy {envoy_version}, `--concurrency 1`. {} rounds x {} s per variant \
         (after {} ms warm-up), {} keep-alive HTTP/1.1 connections from {}. Medians over \
         rounds; CPU spread is min-max. {}.\n",
        machine(),
        opts.rounds,
        opts.measure.as_secs(),
        opts.load.warmup(opts.warmup).as_millis(),
        opts.connections,
        opts.load.label(opts.connections),
        pin::describe(opts.pin.as_ref())
    );
    md.push_str("| variant | Envoy CPU us/req (min-max) | added over its baseline | req/s | p50 ms | p99 ms | non-2xx | Envoy RSS MiB |\n");
    md.push_str("|---|---|---|---|---|---|---|---|\n");
    let mut rows = Vec::new();
    for (i, v) in variants.iter().enumerate() {
        let (lo, hi) = spread(&col(i, |s| s.cpu_us_per_req));
        let rps = median(&col(i, |s| s.rps));
        let p50 = median(&col(i, |s| s.p50_ms));
        let p99 = median(&col(i, |s| s.p99_ms));
        let non2xx: u64 = samples[i].iter().map(|s| s.non_2xx).sum();
        let total: u64 = samples[i].iter().map(|s| s.completed).sum();
        let errors: u64 = samples[i].iter().map(|s| s.errors).sum();
        let rss = median(&col(i, |s| s.rss_kib as f64)) / 1024.0;
        let _ = writeln!(
            md,
            "| {} | {:.1} ({lo:.1}-{hi:.1}) | {:+.1} | {rps:.0} | {p50:.2} | {p99:.2} | {non2xx} of {total} | {rss:.1} |",
            v.name,
            cpu[i],
            cpu[i] - base(i)
        );
        rows.push(json!({
            "variant": v.name, "what": v.what, "path": v.path,
            "cpu_us_per_req": {"median": cpu[i], "min": lo, "max": hi,
                               "rounds": col(i, |s| s.cpu_us_per_req)},
            "added_cpu_us_per_req": cpu[i] - base(i), "baseline": v.baseline(),
            "rps": rps, "p50_ms": p50, "p99_ms": p99, "non_2xx": non2xx,
            "transport_errors": errors, "rss_mib": rss,
        }));
    }
    md.push_str("\nRatios in the same run (Switchyard / native; `added` = added CPU/request over the variant's baseline, plain Envoy with the same kind of cluster (`plain`, or `plain-static` for the natively hashed variants), `total` = whole CPU/request when the native variant is cheaper than its baseline; below 1.0 = Switchyard cheaper):\n\n");
    md.push_str("| Switchyard | native | Switchyard added us/req | native added us/req | ratio |\n|---|---|---|---|---|\n");
    let mut ratios = Vec::new();
    let mut pairs: Vec<(&str, &str)> = variants
        .iter()
        .filter_map(|v| v.counterpart.map(|c| (v.name, c)))
        .collect();
    pairs.push(("hashring", "native-maglev"));
    for (ours, theirs) in pairs {
        let (Some(a), Some(b)) = (index(ours), index(theirs)) else {
            continue;
        };
        let (added_a, added_b) = (cpu[a] - base(a), cpu[b] - base(b));
        // The run's noise: plain Envoy's own CPU spread over the rounds. A native added cost
        // inside it is no denominator.
        let noise = index(variants[b].baseline()).map_or(0.0, |i| {
            let (lo, hi) = spread(&col(i, |s| s.cpu_us_per_req));
            hi - lo
        });
        if added_b > 0.0 && added_b < noise {
            let _ = writeln!(
                md,
                "| {ours} | {theirs} | {added_a:+.1} | {added_b:+.1} | within noise (native added cost below plain's spread of {noise:.1}) |"
            );
            ratios.push(
                json!({"switchyard": ours, "native": theirs, "added_switchyard": added_a,
                               "added_native": added_b, "ratio": null, "within_noise": noise}),
            );
            continue;
        }
        // A native filter that answers without the upstream (a cache hit, a rejection) costs
        // less than plain proxying; its "added" cost is negative and a ratio of added costs
        // means nothing, so those pairs compare total CPU/request instead.
        let (ratio, basis) = if added_b > 0.0 {
            (added_a / added_b, "added")
        } else {
            (cpu[a] / cpu[b].max(1e-9), "total")
        };
        let _ = writeln!(
            md,
            "| {ours} | {theirs} | {added_a:+.1} | {added_b:+.1} | {ratio:.2} ({basis}) |"
        );
        ratios.push(
            json!({"switchyard": ours, "native": theirs, "added_switchyard": added_a,
                           "added_native": added_b, "ratio": ratio}),
        );
    }
    if let Some(c) = index("chain-miss") {
        let _ = writeln!(
            md,
            "\nAll four chained as four plugins (miss path): {:.2}x plain Envoy's CPU/request.",
            cpu[c] / plain.max(1e-9)
        );
    }
    if let Some(c) = index("suite-miss") {
        let _ = writeln!(
            md,
            "All four as stages of the suite module (miss path): {:.2}x plain Envoy's CPU/request (goal <= 1.5x).",
            cpu[c] / plain.max(1e-9)
        );
    }
    let variants_md: String = variants.iter().fold(String::new(), |mut out, v| {
        let _ = writeln!(out, "- `{}`: {} (`GET {}`)", v.name, v.what, v.path);
        out
    });
    md.push_str("\nVariants:\n\n");
    md.push_str(&variants_md);
    let json = json!({
        "machine": machine(), "envoy": envoy_version, "rounds": opts.rounds,
        "measure_seconds": opts.measure.as_secs_f64(), "connections": opts.connections,
        "warmup_seconds": opts.load.warmup(opts.warmup).as_secs_f64(),
        "load": opts.load.name(),
        "cpu_pinning": pin::describe(opts.pin.as_ref()),
        "load_generator": format!("{} (closed loop, keep-alive HTTP/1.1)", opts.load.label(opts.connections)),
        "variants": rows, "ratios": ratios,
    });
    (md, json)
}

fn write_outputs(dir: &Path, name: &str, md: &str, json: &Value) -> Result<()> {
    let md_path = dir.join(format!("{name}.md"));
    std::fs::write(&md_path, md).map_err(|e| format!("write {}: {e}", md_path.display()))?;
    let json_path = dir.join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(json).map_err(|e| e.to_string())?;
    std::fs::write(&json_path, text).map_err(|e| format!("write {}: {e}", json_path.display()))?;
    println!(
        "bench: wrote {} and {}",
        md_path.display(),
        json_path.display()
    );
    Ok(())
}

/// RSS of the four chained filters before and after many requests with distinct keys: every
/// request has a new `x-user-id` (a new rate-limit bucket key) and a new cacheable path (a new
/// cache entry), so every bounded store fills up and must evict.
fn memory(env: &Env, opts: &Options) -> Result<()> {
    let run_dir = env.out_dir.join("memory");
    std::fs::create_dir_all(&run_dir).map_err(|e| format!("create {}: {e}", run_dir.display()))?;
    let mut children = Supervisor::new();
    let upstreams = start_upstreams(env, &mut children, &run_dir)?;
    let variant = Variant {
        name: "memory-chain",
        what: "all four filters, distinct keys",
        wasm: variants::chain(&env.dist, &upstreams),
        native: String::new(),
        routes: variants::Routes::Default,
        path: "/svc19/m{n}?header=Cache-Control:max-age%3D3600",
        counterpart: None,
    };
    let running = start_envoy(
        env,
        &mut children,
        &run_dir,
        &variant,
        &upstreams,
        opts.pin.as_ref(),
    )?;
    let plan = |max: u64| Plan {
        addr: loopback(running.listener),
        path: variant.path.to_owned(),
        connections: opts.connections,
        keys: u64::MAX,
        duration: Duration::from_secs(3600),
        max_requests: Some(max),
    };
    let rss_start = rss_kib(running.pid)?;
    let warm = load::run(&plan(10_000));
    let rss_before = rss_kib(running.pid)?;
    println!(
        "bench memory: RSS at start {rss_start} KiB, after {} warm-up requests {rss_before} KiB",
        warm.completed
    );
    // Sample RSS while the load runs, so the report shows the curve, not just the end points.
    let pid = running.pid;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = std::sync::Arc::clone(&done);
        std::thread::spawn(move || {
            let mut curve = Vec::new();
            let start = Instant::now();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(rss) = rss_kib(pid) {
                    curve.push((start.elapsed().as_secs(), rss));
                }
                std::thread::sleep(Duration::from_secs(5));
            }
            curve
        })
    };
    let cpu_before = cpu_us(pid)?;
    let outcome = load::run(&plan(opts.memory_requests));
    let cpu_after = cpu_us(pid)?;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let curve = sampler.join().unwrap_or_default();
    let rss_after = rss_kib(pid)?;
    let peak = curve
        .iter()
        .map(|(_, r)| *r)
        .max()
        .unwrap_or(rss_after)
        .max(rss_after);
    children.check_alive()?;
    let mut sizes = Vec::new();
    if let Ok(dir) = std::fs::read_dir(&env.dist) {
        for entry in dir.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "wasm") {
                let bytes = entry.metadata().map_or(0, |m| m.len());
                sizes.push((entry.file_name().to_string_lossy().into_owned(), bytes));
            }
        }
    }
    sizes.sort();
    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Machine: {}. All four filters chained (ratelimit, router, cache, hashring), {} connections \
         from the built-in load generator, every request a new `x-user-id` and a new cacheable path. {}.\n",
        machine(),
        opts.connections,
        pin::describe(opts.pin.as_ref())
    );
    let _ = writeln!(
        md,
        "| requests | non-2xx | errors | Envoy CPU us/req | RSS at start | RSS after 10k warm-up | RSS peak | RSS after | growth after warm-up |\n|---|---|---|---|---|---|---|---|---|\n| {} | {} | {} | {:.1} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:+.1} MiB |",
        outcome.completed,
        outcome.non_2xx,
        outcome.errors,
        (cpu_after - cpu_before) as f64 / outcome.completed.max(1) as f64,
        mib(rss_start),
        mib(rss_before),
        mib(peak),
        mib(rss_after),
        mib(rss_after) - mib(rss_before)
    );
    md.push_str("\nRSS over the run (seconds: MiB): ");
    // At most ~20 points (plus the last) keep the line readable for long runs.
    let step = curve.len().div_ceil(20).max(1);
    let points: Vec<String> = curve
        .iter()
        .enumerate()
        .filter(|(i, _)| i % step == 0 || *i + 1 == curve.len())
        .map(|(_, (s, r))| format!("{s}: {:.1}", mib(*r)))
        .collect();
    md.push_str(&points.join(", "));
    md.push_str("\n\n| module | size |\n|---|---|\n");
    for (name, bytes) in &sizes {
        let _ = writeln!(md, "| dist/{name} | {} |", util::kib(*bytes));
    }
    let json = json!({
        "machine": machine(), "load": "builtin", "requests": outcome.completed, "non_2xx": outcome.non_2xx,
        "errors": outcome.errors, "rss_kib": {"start": rss_start, "after_warmup": rss_before,
        "peak": peak, "after": rss_after}, "curve": curve,
        "wasm_bytes": sizes.iter().map(|(n, b)| json!({"module": n, "bytes": b})).collect::<Vec<_>>(),
    });
    write_outputs(&env.out_dir, "memory", &md, &json)?;
    println!("{md}");
    Ok(())
}

/// A benchmark Envoy: one worker, a dynamic base id, warnings only, stderr to `log`, pinned to
/// its own CPU when `pin` is set.
fn envoy_command(
    envoy_bin: &Path,
    config: &Path,
    pin: Option<&pin::Pinning>,
    log: &Path,
) -> Result<Command> {
    envoy_command_workers(envoy_bin, config, pin, log, 1)
}

/// [`envoy_command`] with `workers` worker threads (`--concurrency`).
fn envoy_command_workers(
    envoy_bin: &Path,
    config: &Path,
    pin: Option<&pin::Pinning>,
    log: &Path,
    workers: usize,
) -> Result<Command> {
    let mut cmd = Command::new(envoy_bin);
    if let Some(p) = pin {
        pin::pin_command(&mut cmd, p);
    }
    cmd.arg("-c")
        .arg(config)
        .args(["--concurrency", &workers.to_string()])
        .args(["--use-dynamic-base-id", "--log-level", "warn"]);
    cmd.stdout(Stdio::null()).stderr(log_file(log)?);
    Ok(cmd)
}

/// `--only`: keeps the named variants, failing on a name no variant has.
fn keep_only<V>(
    variants: &mut Vec<V>,
    only: Option<&[String]>,
    name: impl Fn(&V) -> &str,
) -> Result<()> {
    let Some(only) = only else {
        return Ok(());
    };
    let unknown: Vec<&String> = only
        .iter()
        .filter(|n| !variants.iter().any(|v| name(v) == n.as_str()))
        .collect();
    if !unknown.is_empty() {
        let known: Vec<&str> = variants.iter().map(&name).collect();
        return Err(format!(
            "--only: unknown variant(s) {unknown:?}; known: {}",
            known.join(", ")
        ));
    }
    variants.retain(|v| only.iter().any(|n| n == name(v)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(spread(&[3.0, 1.0, 2.0]), (1.0, 3.0));
    }

    #[test]
    fn process_figures_come_from_proc_and_a_missing_process_is_an_error() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(cpu_us(pid).is_ok());
        // PIDs never exceed 2^22 on Linux.
        assert!(cpu_us(u32::MAX).is_err());
        assert!(rss_kib(u32::MAX).is_err());
    }
}
