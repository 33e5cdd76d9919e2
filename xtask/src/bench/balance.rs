//! `cargo xtask bench balance`: how each load-balancing choice copes with one slow host (issue
//! #19). Ten upstream servers with the same latency profile (base + exponential jitter); per
//! variant one Envoy with a cluster over all ten; an open-loop fixed-rate load (`rate.rs`)
//! through warm-up, healthy, slow (host u1 `--slow-factor` times slower, switched at run time
//! through its `/__latency` endpoint) and recovered phases. Reports p50/p99/p99.9, the share
//! answered within the timeout and u1's share of the traffic per variant and phase
//! (`target/bench/balance.{md,json}`), and p99 per 1 s window as an SVG chart
//! (`target/bench/balance.svg`). Nothing is asserted.

use super::rate::{self, Outcome, RatePlan, Record};
use super::svg;
use super::{envoy_version, free_port, log_file, loopback, machine, pin, wait_for, write_outputs};
use crate::envoy_config::{
    catch_all, edge_bootstrap, web_cluster, Bootstrap, Cluster, WasmFilter, OVERRIDE_HOST_HEADER,
};
use crate::procs::Supervisor;
use crate::util::{self, Result};
use crate::{build, envoy, http};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

pub const USAGE: &str = "\
usage: cargo xtask bench balance [options]
  10 upstreams (base latency + exponential jitter), one Envoy per variant, open-loop fixed-rate
  load through warm-up, healthy, slow (u1 N times slower) and recovered phases
options:
  --quick              warm-up 3 s, phases 8 s
  --phase-seconds N    seconds of the healthy, slow and recovered phases (default 20)
  --warmup-seconds N   warm-up seconds (default 10; half the phase with --phase-seconds)
  --rate R             requests per second (default 500)
  --workers W          load worker threads, one keep-alive connection each (default 64)
  --timeout-ms T       an answer slower than this counts as timed out (default 1000)
  --latency L          upstream base latency (default 5ms)
  --jitter J           upstream jitter: exp:D, uniform:D or none (default exp:1ms)
  --slow-factor F      how many times slower u1 gets in the slow phase (default 20)
  --only A,B           run only these variants (envoy-round-robin, envoy-least-request,
                       switchyard-ring, switchyard-p2c, switchyard-p2c-affinity)
  --no-pin             do not pin Envoy to a CPU of its own";

const HOSTS: usize = 10;
/// The host made slow (index into the upstreams; its id is `u1`).
const SLOW: usize = 0;
const PHASES: [&str; 4] = ["warm-up", "healthy", "slow", "recovered"];

struct Options {
    warmup: Duration,
    phase: Duration,
    rate: f64,
    workers: usize,
    timeout: Duration,
    latency: String,
    jitter: String,
    slow_factor: f64,
    only: Option<Vec<String>>,
    pin: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        warmup: Duration::from_secs(10),
        phase: Duration::from_secs(20),
        rate: 500.0,
        workers: 64,
        timeout: Duration::from_secs(1),
        latency: "5ms".to_owned(),
        jitter: "exp:1ms".to_owned(),
        slow_factor: 20.0,
        only: None,
        pin: true,
    };
    let mut warmup_set = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || super::option_value(&mut it, arg, USAGE);
        let number = |v: String| super::positive_number(arg, &v, USAGE);
        match arg.as_str() {
            "balance" => {}
            "--quick" => {
                o.warmup = Duration::from_secs(3);
                o.phase = Duration::from_secs(8);
                warmup_set = true;
            }
            "--phase-seconds" => {
                o.phase = Duration::from_secs_f64(number(value()?)?);
                if !warmup_set {
                    o.warmup = (o.phase / 2).max(Duration::from_secs(2));
                }
            }
            "--warmup-seconds" => {
                o.warmup = Duration::from_secs_f64(number(value()?)?);
                warmup_set = true;
            }
            "--rate" => o.rate = number(value()?)?,
            "--workers" => o.workers = number(value()?)? as usize,
            "--timeout-ms" => o.timeout = Duration::from_secs_f64(number(value()?)? / 1000.0),
            "--latency" => o.latency = value()?,
            "--jitter" => o.jitter = value()?,
            "--slow-factor" => o.slow_factor = number(value()?)?,
            "--only" => o.only = Some(value()?.split(',').map(str::to_owned).collect()),
            "--no-pin" => o.pin = false,
            _ => return Err(format!("unknown argument {arg:?}\n{USAGE}")),
        }
    }
    Ok(o)
}

struct Variant {
    name: &'static str,
    what: &'static str,
    /// The hashring filter's configuration; `None` = Envoy's own `lb_policy`.
    hashring: Option<String>,
    lb_policy: &'static str,
}

fn hosts_json(ports: &[u16]) -> String {
    let hosts: Vec<String> = ports
        .iter()
        .map(|p| format!(r#"{{"address":"127.0.0.1:{p}","weight":1}}"#))
        .collect();
    format!("[{}]", hosts.join(","))
}

fn variants(ports: &[u16]) -> Vec<Variant> {
    let hosts = hosts_json(ports);
    let p2c = r#""p2c":{"decay":"10s","failure_penalty":"1s""#;
    vec![
        Variant {
            name: "envoy-round-robin",
            what: "Envoy ROUND_ROBIN",
            hashring: None,
            lb_policy: "ROUND_ROBIN",
        },
        Variant {
            name: "envoy-least-request",
            what: "Envoy LEAST_REQUEST (power of two choices on active requests)",
            hashring: None,
            lb_policy: "LEAST_REQUEST",
        },
        Variant {
            name: "switchyard-ring",
            what: "hashring ring on x-user-id (random-looking keys) + override_host",
            hashring: Some(format!(
                r#"{{"algorithm":"ring","hosts":{hosts},"hash_key":[{{"header":"x-user-id"}}],"output":{{"header":"{OVERRIDE_HOST_HEADER}"}}}}"#
            )),
            lb_policy: "",
        },
        Variant {
            name: "switchyard-p2c",
            what: "hashring p2c_ewma, no affinity + override_host",
            hashring: Some(format!(
                r#"{{"algorithm":"p2c_ewma","hosts":{hosts},{p2c}}}}}"#
            )),
            lb_policy: "",
        },
        Variant {
            name: "switchyard-p2c-affinity",
            what: "hashring p2c_ewma, affinity 2.0 on x-user-id + override_host",
            hashring: Some(format!(
                r#"{{"algorithm":"p2c_ewma","hosts":{hosts},"hash_key":[{{"header":"x-user-id"}}],{p2c},"affinity":2.0}}}}"#
            )),
            lb_policy: "",
        },
    ]
}

fn envoy_yaml(v: &Variant, dist: &Path, listener: u16, admin: u16, ports: &[u16]) -> String {
    let (filters, cluster) = match &v.hashring {
        Some(config) => {
            let hashring = WasmFilter {
                name: "hashring".to_owned(),
                wasm: dist.join("hashring.wasm"),
                configuration: config.clone(),
            };
            (vec![hashring.plugin().yaml()], web_cluster(ports, false))
        }
        None => (
            Vec::new(),
            Cluster {
                lb_policy: Some(v.lb_policy.to_owned()),
                ..Cluster::loopback("web", ports)
            },
        ),
    };
    Bootstrap {
        routes: vec![catch_all("web")],
        http_filters: filters,
        clusters: vec![cluster.yaml()],
        ..edge_bootstrap(
            "balance",
            format!(
                "Generated by `cargo xtask bench balance` (variant {}); edits are overwritten.",
                v.name
            ),
            admin,
            listener,
        )
    }
    .yaml()
}

/// Per variant: every request's record, and the offsets (from the load's start) where the
/// healthy, slow and recovered phases began.
struct Run {
    records: Vec<Record>,
    bounds: [Duration; 3],
    end: Duration,
}

pub fn balance(args: &[String]) -> Result<()> {
    let opts = parse(args)?;
    // Validates the upstream flags before building anything.
    for (flag, text) in [("--latency", &opts.latency), ("--jitter", &opts.jitter)] {
        if text.is_empty() || text.starts_with('-') {
            return Err(format!("{flag}: bad value {text:?}\n{USAGE}"));
        }
    }
    let out_dir = util::workspace_root().join("target").join("bench");
    let run_dir = out_dir.join("balance");
    std::fs::create_dir_all(&run_dir).map_err(|e| format!("create {}: {e}", run_dir.display()))?;
    let artifacts = build::build()?;
    let envoy_bin = envoy::ensure(envoy::DEFAULT_VERSION)?;
    let allowed = pin::allowed_cpus()?;
    let pinning = if opts.pin { pin::split(&allowed) } else { None };
    if let Some(p) = &pinning {
        pin::set_self(&p.others)?;
    }
    let result = run_all(
        &opts,
        &artifacts.upstream_bin,
        &artifacts.dist,
        &envoy_bin,
        &run_dir,
        pinning.as_ref(),
    );
    pin::set_self(&allowed)?;
    let (variants, runs) = result?;
    let setup = format!(
        "Machine: {}. Envoy {}, `--concurrency 1`. {}. {HOSTS} upstreams, latency {} + jitter {}; \
         u1 x{} in the slow phase. Open-loop load: {} req/s from {} keep-alive HTTP/1.1 \
         connections, latency counted from each request's due time, timeout {} ms. Warm-up {} s, \
         then healthy, slow and recovered phases of {} s each.",
        machine(),
        envoy_version(&envoy_bin),
        pin::describe(pinning.as_ref()),
        opts.latency,
        opts.jitter,
        opts.slow_factor,
        opts.rate,
        opts.workers,
        opts.timeout.as_millis(),
        opts.warmup.as_secs_f64(),
        opts.phase.as_secs_f64(),
    );
    let names: Vec<&str> = variants.iter().map(|v| v.name).collect();
    let whats: Vec<&str> = variants.iter().map(|v| v.what).collect();
    let (md, json) = report(&setup, &names, &whats, &runs, opts.timeout);
    write_outputs(&out_dir, "balance", &md, &json)?;
    let svg_path = out_dir.join("balance.svg");
    std::fs::write(&svg_path, chart(&names, &runs, opts.timeout))
        .map_err(|e| format!("write {}: {e}", svg_path.display()))?;
    println!("bench: wrote {}", svg_path.display());
    println!("{md}");
    Ok(())
}

fn run_all(
    opts: &Options,
    upstream_bin: &Path,
    dist: &Path,
    envoy_bin: &Path,
    run_dir: &Path,
    pinning: Option<&pin::Pinning>,
) -> Result<(Vec<Variant>, Vec<Run>)> {
    let mut upstreams = Supervisor::new();
    let mut ports = Vec::new();
    for i in 0..HOSTS {
        let port = free_port()?;
        let id = format!("u{}", i + 1);
        let mut cmd = Command::new(upstream_bin);
        cmd.args(["--id", &id, "--listen", &format!("127.0.0.1:{port}")])
            .args(["--workers", "1", "--latency", &opts.latency])
            .args(["--jitter", &opts.jitter])
            .stdout(log_file(&run_dir.join(format!("{id}.log")))?)
            .stderr(log_file(&run_dir.join(format!("{id}.err")))?);
        upstreams.spawn(&format!("upstream {id}"), cmd)?;
        ports.push(port);
    }
    for port in &ports {
        wait_for("upstream", Duration::from_secs(20), || {
            TcpStream::connect(loopback(*port)).is_ok()
        })?;
    }
    upstreams.check_alive()?;
    let mut variants = variants(&ports);
    super::keep_only(&mut variants, opts.only.as_deref(), |v| v.name)?;
    let mut runs = Vec::new();
    for v in &variants {
        set_factor(ports[SLOW], 1.0)?;
        let mut envoy = Supervisor::new();
        let (listener, admin) = (free_port()?, free_port()?);
        let config = run_dir.join(format!("{}.yaml", v.name));
        std::fs::write(&config, envoy_yaml(v, dist, listener, admin, &ports))
            .map_err(|e| format!("write {}: {e}", config.display()))?;
        let cmd = super::envoy_command(
            envoy_bin,
            &config,
            pinning,
            &run_dir.join(format!("{}.log", v.name)),
        )?;
        println!("bench balance: starting envoy for {}", v.name);
        envoy.spawn(&format!("envoy {}", v.name), cmd)?;
        wait_for(
            &format!("envoy {} (log in {})", v.name, run_dir.display()),
            Duration::from_secs(90),
            || matches!(http::get(loopback(admin), "/ready"), Ok((200, _))),
        )?;
        envoy.check_alive()?;
        let run = run_variant(opts, listener, ports[SLOW])?;
        envoy.check_alive()?;
        upstreams.check_alive()?;
        print_run(v.name, &run, opts.timeout);
        runs.push(run);
        // Dropping the supervisor stops this variant's Envoy.
    }
    set_factor(ports[SLOW], 1.0)?;
    Ok((variants, runs))
}

fn set_factor(port: u16, factor: f64) -> Result<()> {
    match http::get(loopback(port), &format!("/__latency?factor={factor}"))? {
        (200, _) => Ok(()),
        (status, body) => Err(format!(
            "upstream on port {port}: /__latency answered {status}: {body}"
        )),
    }
}

/// One continuous load through the four phases; this thread switches the slow host.
fn run_variant(opts: &Options, listener: u16, slow_port: u16) -> Result<Run> {
    let bounds = [
        opts.warmup,
        opts.warmup + opts.phase,
        opts.warmup + 2 * opts.phase,
    ];
    let end = opts.warmup + 3 * opts.phase;
    let plan = RatePlan {
        addr: loopback(listener),
        path: "/balance?size=64".to_owned(),
        rate: opts.rate,
        workers: opts.workers,
        duration: end,
        timeout: opts.timeout,
        keys: 100_000,
    };
    let start = Instant::now() + Duration::from_millis(100);
    let load = std::thread::spawn(move || rate::run(&plan, start));
    let sleep_until = |at: Duration| {
        let when = start + at;
        let now = Instant::now();
        if when > now {
            std::thread::sleep(when - now);
        }
    };
    sleep_until(bounds[1]);
    let slow = set_factor(slow_port, opts.slow_factor);
    sleep_until(bounds[2]);
    let fast = set_factor(slow_port, 1.0);
    let records = load
        .join()
        .map_err(|_| "the load generator panicked".to_owned())?;
    slow?;
    fast?;
    Ok(Run {
        records,
        bounds,
        end,
    })
}

/// Phase index (0 = warm-up) of a request due at `due_us`.
fn phase_of(run: &Run, due_us: u64) -> usize {
    run.bounds
        .iter()
        .filter(|b| due_us >= b.as_micros() as u64)
        .count()
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Debug, Default, Clone, PartialEq)]
struct PhaseStats {
    count: u64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    /// 2xx answers within the timeout ÷ requests.
    within_timeout: f64,
    non_2xx: u64,
    timeouts: u64,
    errors: u64,
    /// Share of the answers (with an `x-upstream-id`) that came from u1, the slow host.
    slow_host_share: f64,
}

fn stats(records: &[&Record]) -> PhaseStats {
    let mut latencies: Vec<u64> = records.iter().map(|r| r.latency_us).collect();
    latencies.sort_unstable();
    let count = records.len() as u64;
    let n = |o: Outcome| records.iter().filter(|r| r.outcome == o).count() as u64;
    let answered = records.iter().filter(|r| r.host != 0).count();
    let from_slow = records
        .iter()
        .filter(|r| usize::from(r.host) == SLOW + 1)
        .count();
    let ms = |p| percentile(&latencies, p) as f64 / 1000.0;
    PhaseStats {
        count,
        p50_ms: ms(50.0),
        p99_ms: ms(99.0),
        p999_ms: ms(99.9),
        within_timeout: n(Outcome::Ok) as f64 / count.max(1) as f64,
        non_2xx: n(Outcome::Non2xx),
        timeouts: n(Outcome::Timeout),
        errors: n(Outcome::Error),
        slow_host_share: from_slow as f64 / answered.max(1) as f64,
    }
}

fn phase_stats(run: &Run) -> Vec<PhaseStats> {
    (0..PHASES.len())
        .map(|phase| {
            let of: Vec<&Record> = run
                .records
                .iter()
                .filter(|r| phase_of(run, r.due_us) == phase)
                .collect();
            stats(&of)
        })
        .collect()
}

/// p99 per whole second of the run (by due time): `(second, p99 ms, requests)`.
fn windows(run: &Run) -> Vec<(u64, f64, usize)> {
    let seconds = run.end.as_secs_f64().ceil() as usize;
    let mut buckets: Vec<Vec<u64>> = vec![Vec::new(); seconds.max(1)];
    for r in &run.records {
        let s = (r.due_us / 1_000_000) as usize;
        if let Some(b) = buckets.get_mut(s) {
            b.push(r.latency_us);
        }
    }
    buckets
        .into_iter()
        .enumerate()
        .filter(|(_, b)| !b.is_empty())
        .map(|(s, mut b)| {
            b.sort_unstable();
            (s as u64, percentile(&b, 99.0) as f64 / 1000.0, b.len())
        })
        .collect()
}

fn ms_text(v: f64, timeout: Duration) -> String {
    if v >= timeout.as_secs_f64() * 1000.0 {
        format!(">= {} (timeout)", timeout.as_millis())
    } else {
        format!("{v:.1}")
    }
}

fn print_run(name: &str, run: &Run, timeout: Duration) {
    for (phase, s) in PHASES.iter().zip(phase_stats(run)) {
        println!(
            "{name:<24} {phase:<9} n {:>6} p50 {:>6.1} ms p99 {:>8} ms p99.9 {:>8} ms within timeout {:.2} % u1 share {:.1} %",
            s.count,
            s.p50_ms,
            ms_text(s.p99_ms, timeout),
            ms_text(s.p999_ms, timeout),
            s.within_timeout * 100.0,
            s.slow_host_share * 100.0
        );
    }
}

fn report(
    setup: &str,
    names: &[&str],
    whats: &[&str],
    runs: &[Run],
    timeout: Duration,
) -> (String, Value) {
    let mut md = String::new();
    let _ = writeln!(md, "{setup}\n");
    md.push_str("| variant | phase | requests | p50 ms | p99 ms | p99.9 ms | within timeout | non-2xx / timeouts / errors | u1 share |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|\n");
    let all: Vec<Vec<PhaseStats>> = runs.iter().map(phase_stats).collect();
    let mut rows = Vec::new();
    for ((name, what), (run, phases)) in names.iter().zip(whats).zip(runs.iter().zip(&all)) {
        let mut phase_rows = Vec::new();
        // The warm-up is in the JSON and the chart, not the table.
        for (phase, s) in PHASES.iter().zip(phases).skip(1) {
            let _ = writeln!(
                md,
                "| {name} | {phase} | {} | {:.1} | {} | {} | {:.2} % | {} / {} / {} | {:.1} % |",
                s.count,
                s.p50_ms,
                ms_text(s.p99_ms, timeout),
                ms_text(s.p999_ms, timeout),
                s.within_timeout * 100.0,
                s.non_2xx,
                s.timeouts,
                s.errors,
                s.slow_host_share * 100.0
            );
        }
        for (phase, s) in PHASES.iter().zip(phases) {
            phase_rows.push(json!({
                "phase": phase, "requests": s.count, "p50_ms": s.p50_ms, "p99_ms": s.p99_ms,
                "p999_ms": s.p999_ms, "within_timeout": s.within_timeout, "non_2xx": s.non_2xx,
                "timeouts": s.timeouts, "errors": s.errors, "slow_host_share": s.slow_host_share,
            }));
        }
        let w: Vec<Value> = windows(run)
            .into_iter()
            .map(|(s, p99, n)| json!({"second": s, "p99_ms": p99, "requests": n}))
            .collect();
        rows.push(json!({"variant": name, "what": what, "phases": phase_rows, "windows": w}));
    }
    // The goal: p2c's slow-phase p99 within 1.5x its healthy p99, and clearly below the
    // Envoy policies' slow-phase p99.
    let slow_p99 = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .map(|i| (all[i][1].p99_ms, all[i][2].p99_ms))
    };
    let mut goals = Vec::new();
    md.push_str("\nSlow-phase p99 against the same variant's healthy p99 (goal for p2c_ewma: <= 1.5x, and clearly below LEAST_REQUEST and ROUND_ROBIN):\n\n");
    md.push_str("| variant | healthy p99 ms | slow p99 ms | slow / healthy |\n|---|---|---|---|\n");
    for name in names {
        if let Some((healthy, slow)) = slow_p99(name) {
            let ratio = slow / healthy.max(1e-9);
            let _ = writeln!(
                md,
                "| {name} | {healthy:.1} | {} | {ratio:.2} |",
                ms_text(slow, timeout)
            );
            goals.push(json!({"variant": name, "healthy_p99_ms": healthy, "slow_p99_ms": slow, "ratio": ratio}));
        }
    }
    let envoy_best = ["envoy-least-request", "envoy-round-robin"]
        .iter()
        .filter_map(|n| slow_p99(n).map(|(_, s)| s))
        .fold(f64::INFINITY, f64::min);
    for p2c in ["switchyard-p2c", "switchyard-p2c-affinity"] {
        if let Some((healthy, slow)) = slow_p99(p2c) {
            let within = slow <= 1.5 * healthy;
            let better = envoy_best.is_finite().then_some(slow < envoy_best);
            let _ = writeln!(
                md,
                "\n{p2c}: slow/healthy {:.2} ({}); {}",
                slow / healthy.max(1e-9),
                if within { "met" } else { "**not met**" },
                match better {
                    Some(true) =>
                        format!("below the best Envoy policy's slow p99 ({envoy_best:.1} ms)"),
                    Some(false) => format!(
                        "**not** below the best Envoy policy's slow p99 ({envoy_best:.1} ms)"
                    ),
                    None => "no Envoy policy in this run to compare with".to_owned(),
                }
            );
        }
    }
    md.push_str("\nVariants:\n\n");
    for (name, what) in names.iter().zip(whats) {
        let _ = writeln!(md, "- `{name}`: {what}");
    }
    md.push_str("\nChart: target/bench/balance.svg (p99 per 1 s window, log scale, clipped at the timeout).\n");
    let json = json!({
        "setup": setup, "timeout_ms": timeout.as_millis() as u64, "variants": rows, "goals": goals,
    });
    (md, json)
}

fn chart(names: &[&str], runs: &[Run], timeout: Duration) -> String {
    let series = names
        .iter()
        .zip(runs)
        .map(|(name, run)| svg::Series {
            name: (*name).to_owned(),
            // A window's point sits at its middle.
            points: windows(run)
                .into_iter()
                .map(|(s, p99, _)| (s as f64 + 0.5, p99))
                .collect(),
        })
        .collect();
    let markers = runs
        .first()
        .map(|run| {
            run.bounds
                .iter()
                .zip(&PHASES[1..])
                .map(|(b, p)| (b.as_secs_f64(), (*p).to_owned()))
                .collect()
        })
        .unwrap_or_default();
    svg::render(&svg::Chart {
        title: "p99 latency per 1 s window; u1 slow in the slow phase".to_owned(),
        x_label: "seconds since the start of the load (warm-up first)".to_owned(),
        y_label: "p99 ms (log scale)".to_owned(),
        series,
        markers,
        log_y: true,
        y_max: Some(timeout.as_secs_f64() * 1000.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(due_ms: u64, latency_ms: u64, outcome: Outcome, host: u16) -> Record {
        Record {
            due_us: due_ms * 1000,
            latency_us: latency_ms * 1000,
            outcome,
            host,
        }
    }

    fn fake_run() -> Run {
        let mut records = Vec::new();
        for i in 0..4000u64 {
            let due = i; // one per ms over 4 s
            let phase = i / 1000;
            let host = (i % 10) as u16 + 1;
            let slow = phase == 2 && host == 1;
            let latency = if slow { 120 } else { 6 };
            records.push(record(due, latency, Outcome::Ok, host));
        }
        records.push(record(2500, 1000, Outcome::Timeout, 0));
        Run {
            records,
            bounds: [
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(3),
            ],
            end: Duration::from_secs(4),
        }
    }

    #[test]
    fn options_have_defaults_quick_mode_and_phase_seconds() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let o = parse(&args(&["balance"])).unwrap();
        assert_eq!((o.warmup.as_secs(), o.phase.as_secs()), (10, 20));
        let o = parse(&args(&["--quick"])).unwrap();
        assert_eq!((o.warmup.as_secs(), o.phase.as_secs()), (3, 8));
        let o = parse(&args(&[
            "--phase-seconds",
            "30",
            "--rate",
            "200",
            "--only",
            "a,b",
        ]))
        .unwrap();
        assert_eq!((o.warmup.as_secs(), o.phase.as_secs()), (15, 30));
        assert_eq!(o.rate, 200.0);
        assert_eq!(o.only, Some(vec!["a".to_owned(), "b".to_owned()]));
        assert!(parse(&args(&["--rate", "-3"])).is_err());
        assert!(parse(&args(&["--bogus"])).is_err());
    }

    #[test]
    fn phases_split_by_due_time_and_the_slow_host_shows() {
        let run = fake_run();
        let s = phase_stats(&run);
        assert_eq!(s.len(), 4);
        assert_eq!(s[1].count, 1000);
        assert_eq!(s[2].count, 1001);
        assert_eq!(s[1].p99_ms, 6.0);
        // 10 % of the slow phase's answers come from u1 at 120 ms.
        assert_eq!(s[2].p99_ms, 120.0);
        assert!((s[2].slow_host_share - 0.1).abs() < 1e-9);
        assert_eq!(s[2].timeouts, 1);
        assert!((s[2].within_timeout - 1000.0 / 1001.0).abs() < 1e-9);
        let w = windows(&run);
        assert_eq!(w.len(), 4);
        assert_eq!(w[2], (2, 120.0, 1001));
    }

    #[test]
    fn report_has_a_row_per_variant_and_phase_and_the_chart_a_line_per_variant() {
        let runs = vec![fake_run(), fake_run()];
        let names = ["envoy-round-robin", "switchyard-p2c"];
        let (md, json) = report("setup", &names, &["a", "b"], &runs, Duration::from_secs(1));
        assert_eq!(md.matches("| envoy-round-robin | ").count(), 4, "{md}");
        assert!(md.contains("| switchyard-p2c | slow | 1001 |"), "{md}");
        assert!(
            md.contains("switchyard-p2c: slow/healthy 20.00 (**not met**)"),
            "{md}"
        );
        assert_eq!(json["variants"][1]["phases"][2]["requests"], 1001);
        assert_eq!(json["variants"][0]["windows"].as_array().unwrap().len(), 4);
        let svg = chart(&names, &runs, Duration::from_secs(1));
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("stroke-dasharray").count(), 3);
    }

    #[test]
    fn every_variant_balances_over_all_ten_hosts() {
        let ports: Vec<u16> = (9001..=9010).collect();
        let dist = Path::new("/opt/dist");
        for v in variants(&ports) {
            let yaml = envoy_yaml(&v, dist, 1, 2, &ports);
            for p in &ports {
                assert!(yaml.contains(&format!("port_value: {p} }}")), "{}", v.name);
            }
            match &v.hashring {
                Some(config) => {
                    let c: Value = serde_json::from_str(config).unwrap();
                    assert_eq!(c["hosts"].as_array().unwrap().len(), HOSTS);
                    assert!(yaml.contains("override_host"));
                    assert!(yaml.contains("switchyard.hashring"));
                    if v.name.starts_with("switchyard-p2c") {
                        assert_eq!(c["algorithm"], "p2c_ewma");
                        assert_eq!(c["p2c"]["decay"], "10s");
                        assert_eq!(c["p2c"]["failure_penalty"], "1s");
                    }
                    if v.name == "switchyard-p2c-affinity" {
                        assert_eq!(c["p2c"]["affinity"], 2.0);
                        assert_eq!(c["hash_key"][0]["header"], "x-user-id");
                    }
                    if v.name == "switchyard-p2c" {
                        assert!(c.get("hash_key").is_none());
                    }
                }
                None => {
                    assert!(yaml.contains(&format!("lb_policy: {}", v.lb_policy)));
                    assert!(!yaml.contains("wasm"));
                }
            }
        }
    }
}
