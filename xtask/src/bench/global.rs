//! `cargo xtask bench global`: what a global rate limit (`"scope": "global"`, docs/ratelimit.md)
//! costs and how exactly it holds (issue #18). One `redis-server` and one `switchyard-rls` on
//! loopback; then
//!
//! - **cost**: three Envoys (`--concurrency 1`, pinned as in the proxy benchmark) with the same
//!   ratelimit rule, local only, global, and global with `"lease": 100`, measured in interleaved
//!   rounds: Envoy CPU µs/request under the proxy benchmark's closed-loop load (`super::measure`),
//!   p50/p99 of an open-loop fixed-rate load (`rate.rs`), service calls per request (the rule's
//!   `global_calls` stat ÷ Envoy's `downstream_rq_total`) and the CPU of the service and Redis
//!   per request. Limits are far above the load: nothing is rejected.
//! - **accuracy**: three Envoys with `--concurrency 2` sharing one limit per 1 s window (the
//!   service's windows), an open-loop load above it spread round-robin over them; admitted ÷
//!   limit per whole window, without and with the lease, against the documented bound
//!   limit + (N − 1) × instances × workers.
//!
//! Reports `target/bench/global.{md,json}`; nothing is asserted.

use super::load::{Generator, Outcome as LoadOutcome};
use super::rate::{self, Outcome, RatePlan, Record};
use super::variants::{Routes, Variant};
use super::{
    cpu_us, envoy_version, free_port, log_file, loopback, machine, median, pin, spread, wait_for,
    write_outputs, wrk, Env, Running, Sample,
};
use crate::envoy_config::{catch_all, edge_bootstrap, Bootstrap, Cluster, WasmFilter};
use crate::procs::Supervisor;
use crate::util::{self, Result};
use crate::{build, envoy, http};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const USAGE: &str = "\
usage: cargo xtask bench global [options]
  one redis-server and one switchyard-rls on loopback, then
  cost:     the same ratelimit rule local only, global, and global with \"lease\": 100, one
            Envoy each (--concurrency 1), interleaved rounds: Envoy CPU us/request (closed
            loop), p50/p99 (open loop), service calls/request, service + Redis CPU/request
  accuracy: 3 Envoys x --concurrency 2 sharing one limit per 1 s window, open-loop load above
            it round-robin over them: admitted / limit per window, without and with the lease
options:
  --quick            2 rounds of 2 s; accuracy runs of 5 s
  --rounds N         cost rounds (default 5)
  --seconds S        measured seconds per variant and round (default 4)
  --connections C    closed-loop connections (default 4)
  --latency-rate R   open-loop requests/s of the latency measurement (default 500)
  --limit L          accuracy: the shared limit per 1 s window (default 1000)
  --over X           accuracy: offered load = X times the limit (default 1.5)
  --accuracy-seconds S  accuracy: seconds of load per variant (default 12)
  --no-pin           do not pin the cost Envoys to a CPU of their own
  --load wrk|builtin closed-loop load generator (default: wrk when it is on PATH)";

/// Hits per call of the leasing variants.
const LEASE: u32 = 100;
/// Accuracy topology.
const INSTANCES: usize = 3;
const WORKERS: usize = 2;
/// Each Envoy's rule timeout: far above a loopback call, so only a broken service fails.
const CALL_TIMEOUT: &str = "250ms";
/// `requests_per_unit` of the cost rule: never reached.
const UNLIMITED: u64 = u32::MAX as u64;
/// The closed loop's keys (`x-user-id`); the rule's key is a literal, so they do not matter.
const KEYS: u64 = 10_000;

struct Options {
    bench: super::Options,
    pin: bool,
    load_choice: Option<String>,
    latency_rate: f64,
    limit: u64,
    over: f64,
    accuracy: Duration,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        bench: super::Options {
            rounds: 5,
            measure: Duration::from_secs(4),
            warmup: Duration::from_secs(1),
            connections: 4,
            memory_requests: 0,
            only: None,
            load: Generator::Builtin,
            pin: None,
        },
        pin: true,
        load_choice: None,
        latency_rate: 500.0,
        limit: 1000,
        over: 1.5,
        accuracy: Duration::from_secs(12),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || super::option_value(&mut it, arg, USAGE);
        let number = |v: String| super::positive_number(arg, &v, USAGE);
        match arg.as_str() {
            "global" => {}
            "--quick" => {
                o.bench.rounds = 2;
                o.bench.measure = Duration::from_secs(2);
                o.bench.warmup = Duration::from_millis(500);
                o.accuracy = Duration::from_secs(5);
            }
            "--rounds" => o.bench.rounds = number(value()?)?.max(1.0) as usize,
            "--seconds" => {
                let seconds = number(value()?)?.max(1.0) as u64;
                o.bench.measure = Duration::from_secs(seconds);
            }
            "--connections" => o.bench.connections = number(value()?)?.max(1.0) as usize,
            "--latency-rate" => o.latency_rate = number(value()?)?,
            "--limit" => {
                o.limit = number(value()?)?.clamp(1.0, UNLIMITED as f64 / 2.0) as u64;
            }
            "--over" => o.over = number(value()?)?,
            "--accuracy-seconds" => {
                let seconds = number(value()?)?.max(2.0) as u64;
                o.accuracy = Duration::from_secs(seconds);
            }
            "--no-pin" => o.pin = false,
            "--load" => o.load_choice = Some(value()?),
            _ => return Err(format!("unknown argument {arg:?}\n{USAGE}")),
        }
    }
    Ok(o)
}

/// The three cost variants: `(name, what, lease)`; `None` = local only.
const COST_VARIANTS: [(&str, &str, Option<u32>); 3] = [
    (
        "local",
        "ratelimit, one local rule (literal key, 10^9/s: never reached)",
        None,
    ),
    (
        "global",
        "the same rule with \"scope\": \"global\" against switchyard-rls, lease 1",
        Some(1),
    ),
    (
        "global-lease100",
        "the same global rule with \"lease\": 100",
        Some(LEASE),
    ),
];

/// One rule of the ratelimit filter: a literal key (one counter shared by every request, every
/// worker and every Envoy), a local tier never reached, and for a global rule the service.
fn rule(name: &str, prefix: &str, lease: Option<u32>) -> Value {
    let mut r = json!({
        "name": name,
        "match": {"path": {"prefix": prefix}},
        "key": [{"literal": name}],
        "limits": [{"requests": 1_000_000_000u64, "per": "1s"}],
    });
    if let Some(lease) = lease {
        r["scope"] = json!("global");
        r["lease"] = json!(lease);
        r["service"] = json!({
            "cluster": "rls", "domain": "bench", "timeout": CALL_TIMEOUT,
            // A failed call is a visible 429, never a silent admission.
            "failure_mode": "deny", "descriptor_keys": ["generic_key"],
        });
    }
    r
}

fn filter_config(rules: Vec<Value>) -> String {
    json!({"mode": "enforce", "status": 429, "max_keys": 100_000, "rules": rules}).to_string()
}

/// The service's configuration: one `generic_key` descriptor per rule name.
fn rls_yaml(limits: &[(&str, u64)]) -> String {
    let mut yaml = "domain: bench\ndescriptors:\n".to_owned();
    for (name, limit) in limits {
        let _ = writeln!(
            yaml,
            "  - key: generic_key\n    value: {name}\n    rate_limit: {{ unit: second, requests_per_unit: {limit} }}"
        );
    }
    yaml
}

/// The service's cluster as docs/ratelimit.md recommends: HTTP/2, a short connect timeout,
/// circuit breakers.
fn rls_cluster(grpc: u16) -> Cluster {
    Cluster {
        connect_timeout: "0.25s".to_owned(),
        http2: true,
        extra: Some(
            "circuit_breakers:\n  thresholds:\n  - max_connections: 64\n    max_pending_requests: 1024\n    max_requests: 1024\n"
                .to_owned(),
        ),
        ..Cluster::loopback("rls", &[grpc])
    }
}

fn envoy_yaml(
    name: &str,
    filter: &WasmFilter,
    listener: u16,
    admin: u16,
    upstreams: &[u16; 3],
    grpc: u16,
) -> String {
    Bootstrap {
        routes: vec![catch_all("web")],
        http_filters: vec![filter.plugin().yaml()],
        clusters: vec![
            Cluster::loopback("web", upstreams).yaml(),
            rls_cluster(grpc).yaml(),
        ],
        ..edge_bootstrap(
            "bench",
            format!("Generated by `cargo xtask bench global` ({name}); edits are overwritten."),
            admin,
            listener,
        )
    }
    .yaml()
}

/// Redis, the service and the upstreams every Envoy of the run shares.
struct Backends {
    upstreams: [u16; 3],
    grpc: u16,
    redis_pid: u32,
    rls_pid: u32,
}

fn start_backends(
    env: &Env,
    rls_bin: &Path,
    children: &mut Supervisor,
    run_dir: &Path,
    limit: u64,
) -> Result<Backends> {
    let upstreams = super::start_upstreams(env, children, run_dir)?;
    let redis_port = free_port()?;
    let mut redis = Command::new("redis-server");
    redis
        .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(log_file(&run_dir.join("redis.log"))?)
        .stderr(log_file(&run_dir.join("redis.err"))?);
    let redis_pid = children.spawn("redis-server", redis)?;
    wait_for("redis-server", Duration::from_secs(20), || {
        TcpStream::connect(loopback(redis_port)).is_ok()
    })?;
    let config = run_dir.join("rls.yaml");
    std::fs::write(
        &config,
        rls_yaml(&[("bench", UNLIMITED), ("acc", limit), ("acc-lease", limit)]),
    )
    .map_err(|e| format!("write {}: {e}", config.display()))?;
    let (grpc, http_port) = (free_port()?, free_port()?);
    let mut rls = Command::new(rls_bin);
    rls.arg("--config")
        .arg(&config)
        .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
        .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
        .args(["--redis", &format!("redis://127.0.0.1:{redis_port}")])
        .stdout(log_file(&run_dir.join("rls.log"))?)
        .stderr(log_file(&run_dir.join("rls.err"))?);
    let rls_pid = children.spawn("switchyard-rls", rls)?;
    wait_for(
        &format!("switchyard-rls (log in {})", run_dir.display()),
        Duration::from_secs(20),
        || matches!(http::get(loopback(http_port), "/readyz"), Ok((200, _))),
    )?;
    children.check_alive()?;
    Ok(Backends {
        upstreams,
        grpc,
        redis_pid,
        rls_pid,
    })
}

/// A started Envoy and its admin port.
struct Proxy {
    running: Running,
    admin: u16,
}

fn start_envoy(
    env: &Env,
    children: &mut Supervisor,
    run_dir: &Path,
    name: &str,
    yaml: impl FnOnce(u16, u16) -> String,
    pin: Option<&pin::Pinning>,
    workers: usize,
) -> Result<Proxy> {
    let (listener, admin) = (free_port()?, free_port()?);
    let config = run_dir.join(format!("{name}.yaml"));
    std::fs::write(&config, yaml(listener, admin))
        .map_err(|e| format!("write {}: {e}", config.display()))?;
    let cmd = super::envoy_command_workers(
        &env.envoy_bin,
        &config,
        pin,
        &run_dir.join(format!("{name}.log")),
        workers,
    )?;
    let pid = children.spawn(&format!("envoy {name}"), cmd)?;
    wait_for(
        &format!("envoy {name} (log in {})", run_dir.display()),
        Duration::from_secs(90),
        || matches!(http::get(loopback(admin), "/ready"), Ok((200, _))),
    )?;
    children.check_alive()?;
    Ok(Proxy {
        running: Running { pid, listener },
        admin,
    })
}

/// The ratelimit filter's counters and Envoy's `downstream_rq_total`, by name without the
/// `wasmcustom.switchyard.ratelimit.` prefix.
fn stats(admin: u16) -> Result<BTreeMap<String, u64>> {
    stats_matching(
        admin,
        "switchyard%5C.ratelimit%5C.%7Chttp%5C.bench%5C.downstream_rq_total",
    )
}

/// Envoy's counters and gauges whose names match `filter` (a URL-encoded regex).
fn stats_matching(admin: u16, filter: &str) -> Result<BTreeMap<String, u64>> {
    let (status, body) = http::get(loopback(admin), &format!("/stats?filter={filter}"))?;
    if status != 200 {
        return Err(format!("envoy admin /stats answered {status}: {body}"));
    }
    Ok(body
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter_map(|(k, v)| {
            let k = k.trim();
            let k = k
                .strip_prefix("wasmcustom.switchyard.ratelimit.")
                .unwrap_or(k);
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect())
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, name: &str) -> u64 {
    let get = |m: &BTreeMap<String, u64>| m.get(name).copied().unwrap_or(0);
    get(after).saturating_sub(get(before))
}

const REQUESTS: &str = "http.bench.downstream_rq_total";

/// Nearest-rank percentiles (ms) of the 2xx answers' latencies, through `load::Outcome`.
fn percentiles_ms(records: &[Record], ps: &[f64]) -> Vec<f64> {
    let mut latencies: Vec<u32> = records
        .iter()
        .filter(|r| r.outcome == Outcome::Ok)
        .map(|r| r.latency_us.min(u64::from(u32::MAX)) as u32)
        .collect();
    latencies.sort_unstable();
    let outcome = LoadOutcome {
        latencies_us: latencies,
        ..LoadOutcome::default()
    };
    ps.iter()
        .map(|p| outcome.percentile_us(*p) as f64 / 1000.0)
        .collect()
}

/// One round of one cost variant.
struct CostSample {
    closed: Sample,
    open_p50_ms: f64,
    open_p99_ms: f64,
    open_requests: u64,
    /// Open-loop answers that were not 2xx in time (non-2xx, timeouts, errors).
    open_failed: u64,
    /// Over the closed-loop run (warm-up included): Envoy requests, calls, lease hits,
    /// coalesced, failures, and the service's plus Redis's CPU µs.
    requests: u64,
    calls: u64,
    lease_hits: u64,
    coalesced: u64,
    failures: u64,
    service_cpu_us: u64,
}

fn measure_cost(
    proxy: &Proxy,
    variant: &Variant,
    opts: &Options,
    backends: &Backends,
    run_dir: &Path,
) -> Result<CostSample> {
    let service_cpu =
        || -> Result<u64> { Ok(cpu_us(backends.rls_pid)? + cpu_us(backends.redis_pid)?) };
    let before = stats(proxy.admin)?;
    let cpu_before = service_cpu()?;
    let closed = super::measure(&proxy.running, variant, &opts.bench, run_dir)?;
    let cpu_after = service_cpu()?;
    let after = stats(proxy.admin)?;
    let d = |name: &str| delta(&before, &after, &format!("bench.{name}"));
    let plan = RatePlan {
        addr: loopback(proxy.running.listener),
        path: variant.path.to_owned(),
        rate: opts.latency_rate,
        workers: 16,
        duration: opts.bench.measure,
        timeout: Duration::from_secs(1),
        keys: KEYS,
    };
    let records = rate::run(&plan, Instant::now() + Duration::from_millis(50));
    let p = percentiles_ms(&records, &[50.0, 99.0]);
    Ok(CostSample {
        requests: delta(&before, &after, REQUESTS),
        calls: d("global_calls"),
        lease_hits: d("lease_hits"),
        coalesced: d("global_coalesced"),
        failures: d("global_failure_allowed") + d("global_failure_denied"),
        service_cpu_us: cpu_after.saturating_sub(cpu_before),
        closed,
        open_p50_ms: p[0],
        open_p99_ms: p[1],
        open_requests: records.len() as u64,
        open_failed: records.iter().filter(|r| r.outcome != Outcome::Ok).count() as u64,
    })
}

fn cost(
    env: &Env,
    opts: &Options,
    backends: &Backends,
    run_dir: &Path,
) -> Result<Vec<(Variant, Vec<CostSample>)>> {
    let mut envoys = Supervisor::new();
    let mut started = Vec::new();
    for (name, what, lease) in COST_VARIANTS {
        let variant = Variant {
            name,
            what,
            wasm: vec![WasmFilter {
                name: "ratelimit".to_owned(),
                wasm: env.dist.join("ratelimit.wasm"),
                configuration: filter_config(vec![rule("bench", "/", lease)]),
            }],
            native: String::new(),
            routes: Routes::Default,
            path: "/global",
            counterpart: None,
        };
        println!("bench global: starting envoy for {name}");
        let proxy = start_envoy(
            env,
            &mut envoys,
            run_dir,
            name,
            |listener, admin| {
                envoy_yaml(
                    name,
                    &variant.wasm[0],
                    listener,
                    admin,
                    &backends.upstreams,
                    backends.grpc,
                )
            },
            opts.bench.pin.as_ref(),
            1,
        )?;
        // The rule really asks the service (or really does not).
        let before = stats(proxy.admin)?;
        let (status, body) = http::get(loopback(proxy.running.listener), variant.path)?;
        let calls = delta(&before, &stats(proxy.admin)?, "bench.global_calls");
        if status != 200 || calls != u64::from(lease.is_some()) {
            return Err(format!(
                "bench global: {name}: first request answered {status} after {calls} service calls \
                 (log in {}): {body}",
                run_dir.display()
            ));
        }
        started.push((variant, proxy));
    }
    let mut samples: Vec<Vec<CostSample>> = started.iter().map(|_| Vec::new()).collect();
    for round in 1..=opts.bench.rounds {
        for (i, (variant, proxy)) in started.iter().enumerate() {
            let s = measure_cost(proxy, variant, opts, backends, run_dir)?;
            println!(
                "round {round}/{}: {:<16} {:>6.1} us/req {:>7.0} req/s closed p50 {:.2} p99 {:.2} ms | open {} req/s p50 {:.2} p99 {:.2} ms | calls/req {:.4} service {:.1} us/req | non-2xx {} failed {}",
                opts.bench.rounds,
                variant.name,
                s.closed.cpu_us_per_req,
                s.closed.rps,
                s.closed.p50_ms,
                s.closed.p99_ms,
                opts.latency_rate,
                s.open_p50_ms,
                s.open_p99_ms,
                s.calls as f64 / s.requests.max(1) as f64,
                s.service_cpu_us as f64 / s.requests.max(1) as f64,
                s.closed.non_2xx,
                s.open_failed + s.failures,
            );
            samples[i].push(s);
        }
        envoys.check_alive()?;
    }
    Ok(started.into_iter().map(|(v, _)| v).zip(samples).collect())
}

/// The accuracy variants: `(name, rule and service descriptor, lease)`.
const ACCURACY_VARIANTS: [(&str, &str, u32); 2] = [
    ("global", "acc", 1),
    ("global-lease100", "acc-lease", LEASE),
];

/// One accuracy variant's outcome.
struct Accuracy {
    name: &'static str,
    lease: u32,
    /// `(window start, Unix seconds; admitted)` for every whole window of the run.
    windows: Vec<(u64, u64)>,
    requests: u64,
    admitted: u64,
    rejected: u64,
    /// Timeouts and transport errors.
    failed: u64,
    calls: u64,
    lease_hits: u64,
    failures: u64,
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Admitted requests per 1 s window (the service's windows are aligned to the Unix epoch),
/// counted at each answer's arrival (the decision lies between the request's due time and
/// its answer), for the windows wholly inside `[from, to)`.
fn admitted_per_window(
    answers: &[(Duration, Outcome)],
    from: Duration,
    to: Duration,
) -> Vec<(u64, u64)> {
    let first = from.as_secs() + u64::from(from.subsec_nanos() > 0);
    let last = to.as_secs(); // exclusive
    (first..last)
        .map(|w| {
            let n = answers
                .iter()
                .filter(|(at, o)| *o == Outcome::Ok && at.as_secs() == w)
                .count() as u64;
            (w, n)
        })
        .collect()
}

fn accuracy_run(
    name: &'static str,
    rule_name: &str,
    lease: u32,
    proxies: &[Proxy],
    opts: &Options,
) -> Result<Accuracy> {
    let before: Vec<_> = proxies
        .iter()
        .map(|p| stats(p.admin))
        .collect::<Result<_>>()?;
    let rate = opts.limit as f64 * opts.over;
    // The load starts on a window boundary (at least 200 ms ahead), so the window before the
    // first counted one has no traffic and every boundary after it follows a window whose limit
    // ran out at 1 / `over` of it: an answer arriving after a boundary was decided after it.
    let (now, now_unix) = (Instant::now(), unix_now());
    let start_unix = Duration::from_secs((now_unix + Duration::from_millis(200)).as_secs() + 1);
    let start = now + (start_unix - now_unix);
    // Round robin: Envoy i gets requests i, i + 3, i + 6, ... of one schedule at `rate`.
    let loads: Vec<_> = proxies
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let offset = Duration::from_secs_f64(i as f64 / rate);
            let plan = RatePlan {
                addr: loopback(p.running.listener),
                path: format!("/{rule_name}/x"),
                rate: rate / proxies.len() as f64,
                workers: 16,
                duration: opts.accuracy,
                timeout: Duration::from_secs(1),
                keys: KEYS,
            };
            let handle = std::thread::spawn(move || rate::run(&plan, start + offset));
            (offset, handle)
        })
        .collect();
    let mut answers = Vec::new();
    for (offset, handle) in loads {
        let records = handle
            .join()
            .map_err(|_| "the load generator panicked".to_owned())?;
        answers.extend(records.iter().map(|r| {
            (
                start_unix + offset + Duration::from_micros(r.due_us + r.latency_us),
                r.outcome,
            )
        }));
    }
    let after: Vec<_> = proxies
        .iter()
        .map(|p| stats(p.admin))
        .collect::<Result<_>>()?;
    let sum = |stat: &str| -> u64 {
        before
            .iter()
            .zip(&after)
            .map(|(b, a)| delta(b, a, &format!("{rule_name}.{stat}")))
            .sum()
    };
    let count = |o: Outcome| answers.iter().filter(|(_, x)| *x == o).count() as u64;
    Ok(Accuracy {
        name,
        lease,
        windows: admitted_per_window(&answers, start_unix, start_unix + opts.accuracy),
        requests: answers.len() as u64,
        admitted: count(Outcome::Ok),
        rejected: count(Outcome::Non2xx),
        failed: count(Outcome::Timeout) + count(Outcome::Error),
        calls: sum("global_calls"),
        lease_hits: sum("lease_hits"),
        failures: sum("global_failure_allowed") + sum("global_failure_denied"),
    })
}

fn accuracy(
    env: &Env,
    opts: &Options,
    backends: &Backends,
    run_dir: &Path,
) -> Result<(Vec<Accuracy>, Vec<Vec<u64>>)> {
    let mut envoys = Supervisor::new();
    // The two variants' rules on their own paths, with separate counters in the service.
    let filter = WasmFilter {
        name: "ratelimit".to_owned(),
        wasm: env.dist.join("ratelimit.wasm"),
        configuration: filter_config(
            ACCURACY_VARIANTS
                .iter()
                .map(|(_, rule_name, lease)| {
                    rule(rule_name, &format!("/{rule_name}/"), Some(*lease))
                })
                .collect(),
        ),
    };
    let mut proxies = Vec::new();
    for i in 1..=INSTANCES {
        let name = format!("accuracy-{i}");
        println!("bench global: starting envoy {name} (--concurrency {WORKERS})");
        proxies.push(start_envoy(
            env,
            &mut envoys,
            run_dir,
            &name,
            |listener, admin| {
                envoy_yaml(
                    &name,
                    &filter,
                    listener,
                    admin,
                    &backends.upstreams,
                    backends.grpc,
                )
            },
            None,
            WORKERS,
        )?);
    }
    let mut out = Vec::new();
    let mut per_worker = Vec::new();
    for (name, rule_name, lease) in ACCURACY_VARIANTS {
        let a = accuracy_run(name, rule_name, lease, &proxies, opts)?;
        println!(
            "accuracy {:<16} admitted per window {:?} (limit {}), requests {} admitted {} rejected {} failed {} calls {} lease hits {}",
            a.name,
            a.windows.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
            opts.limit,
            a.requests,
            a.admitted,
            a.rejected,
            a.failed,
            a.calls,
            a.lease_hits
        );
        out.push(a);
        envoys.check_alive()?;
    }
    // Both workers of every Envoy took connections (the kernel spreads them, SO_REUSEPORT).
    for p in &proxies {
        let counts = stats_matching(p.admin, "worker_%5B0-9%5D%2B%5C.downstream_cx_total")?;
        per_worker.push(counts.into_values().collect::<Vec<u64>>());
    }
    Ok((out, per_worker))
}

pub fn global(args: &[String]) -> Result<()> {
    let mut opts = parse(args)?;
    // Before the build, so a missing wrk fails fast.
    opts.bench.load = Generator::select(opts.load_choice.as_deref(), wrk::Wrk::find())?;
    crate::redis::ensure()?;
    let out_dir = util::workspace_root().join("target").join("bench");
    let run_dir = out_dir.join("global");
    std::fs::create_dir_all(&run_dir).map_err(|e| format!("create {}: {e}", run_dir.display()))?;
    let artifacts = build::build()?;
    let envoy_bin = envoy::ensure(envoy::DEFAULT_VERSION)?;
    let env = Env {
        envoy_bin,
        upstream_bin: artifacts.upstream_bin,
        dist: artifacts.dist,
        out_dir: out_dir.clone(),
    };
    let allowed = pin::allowed_cpus()?;
    if opts.pin {
        opts.bench.pin = pin::split(&allowed);
    }
    if let Some(p) = &opts.bench.pin {
        pin::set_self(&p.others)?;
    }
    let started = Instant::now();
    let result = run(&env, &artifacts.rls_bin, &opts, &run_dir, &allowed);
    pin::set_self(&allowed)?;
    let (md, json) = report(&env, &opts, &result?, started.elapsed());
    write_outputs(&out_dir, "global", &md, &json)?;
    println!("{md}");
    Ok(())
}

/// The cost variants with their rounds, the accuracy variants, and the connections each
/// accuracy Envoy's workers accepted.
type Results = (
    Vec<(Variant, Vec<CostSample>)>,
    Vec<Accuracy>,
    Vec<Vec<u64>>,
);

fn run(
    env: &Env,
    rls_bin: &Path,
    opts: &Options,
    run_dir: &Path,
    allowed: &[usize],
) -> Result<Results> {
    let mut children = Supervisor::new();
    // Started on the others' CPUs (the service and Redis are not Envoy's cost).
    let backends = start_backends(env, rls_bin, &mut children, run_dir, opts.limit)?;
    let costs = cost(env, opts, &backends, run_dir)?;
    // The accuracy Envoys (and the load) may use every CPU.
    pin::set_self(allowed)?;
    let (accuracies, per_worker) = accuracy(env, opts, &backends, run_dir)?;
    children.check_alive()?;
    Ok((costs, accuracies, per_worker))
}

fn report(
    env: &Env,
    opts: &Options,
    (costs, accuracies, per_worker): &Results,
    took: Duration,
) -> (String, Value) {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Machine: {}. Envoy {}. One redis-server and one switchyard-rls on loopback. Cost: \
         `--concurrency 1`, {} rounds x {} s per variant (after {} ms warm-up), {} keep-alive \
         connections from {} (CPU, closed-loop p50/p99), then {} s of open-loop load at {} req/s \
         (open p50/p99; 2xx answers, latency from each request's due time). {}. Medians over \
         rounds; calls, lease hits and the service's CPU are totals over the closed-loop runs \
         ÷ Envoy's requests. Run took {:.0} s.\n",
        machine(),
        envoy_version(&env.envoy_bin),
        opts.bench.rounds,
        opts.bench.measure.as_secs(),
        opts.bench.load.warmup(opts.bench.warmup).as_millis(),
        opts.bench.connections,
        opts.bench.load.label(opts.bench.connections),
        opts.bench.measure.as_secs(),
        opts.latency_rate,
        pin::describe(opts.bench.pin.as_ref()),
        took.as_secs_f64(),
    );
    md.push_str("| variant | Envoy CPU us/req (min-max) | added over local | req/s | closed p50 ms | closed p99 ms | open p50 ms | open p99 ms | open p99 added | service calls/req | requests/call | lease hits/req | rls + Redis CPU us/req | non-2xx / failed calls |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    let med =
        |s: &[CostSample], f: fn(&CostSample) -> f64| median(&s.iter().map(f).collect::<Vec<_>>());
    let total = |s: &[CostSample], f: fn(&CostSample) -> u64| s.iter().map(f).sum::<u64>();
    let base_cpu = costs
        .first()
        .map_or(0.0, |(_, s)| med(s, |x| x.closed.cpu_us_per_req));
    let base_p99 = costs
        .first()
        .map_or(0.0, |(_, s)| med(s, |x| x.open_p99_ms));
    let mut rows = Vec::new();
    for (v, s) in costs {
        let cpu = med(s, |x| x.closed.cpu_us_per_req);
        let (lo, hi) = spread(
            &s.iter()
                .map(|x| x.closed.cpu_us_per_req)
                .collect::<Vec<_>>(),
        );
        let requests = total(s, |x| x.requests);
        let calls = total(s, |x| x.calls);
        let per = |n: u64| n as f64 / requests.max(1) as f64;
        let open_p99 = med(s, |x| x.open_p99_ms);
        let non2xx = total(s, |x| x.closed.non_2xx + x.open_failed);
        let failures = total(s, |x| x.failures);
        let _ = writeln!(
            md,
            "| {} | {cpu:.1} ({lo:.1}-{hi:.1}) | {:+.1} | {:.0} | {:.2} | {:.2} | {:.2} | {open_p99:.2} | {:+.2} | {:.4} | {} | {:.4} | {:.1} | {non2xx} / {failures} |",
            v.name,
            cpu - base_cpu,
            med(s, |x| x.closed.rps),
            med(s, |x| x.closed.p50_ms),
            med(s, |x| x.closed.p99_ms),
            med(s, |x| x.open_p50_ms),
            open_p99 - base_p99,
            per(calls),
            if calls == 0 { "-".to_owned() } else { format!("{:.0}", requests as f64 / calls as f64) },
            per(total(s, |x| x.lease_hits)),
            per(total(s, |x| x.service_cpu_us)),
        );
        rows.push(json!({
            "variant": v.name, "what": v.what,
            "cpu_us_per_req": {"median": cpu, "min": lo, "max": hi, "rounds": s.iter().map(|x| x.closed.cpu_us_per_req).collect::<Vec<_>>()},
            "added_cpu_us_per_req": cpu - base_cpu,
            "rps": med(s, |x| x.closed.rps),
            "closed_p50_ms": med(s, |x| x.closed.p50_ms), "closed_p99_ms": med(s, |x| x.closed.p99_ms),
            "open_p50_ms": med(s, |x| x.open_p50_ms), "open_p99_ms": open_p99,
            "open_p99_added_ms": open_p99 - base_p99,
            "open_requests": total(s, |x| x.open_requests),
            "requests": requests, "service_calls": calls, "calls_per_request": per(calls),
            "lease_hits": total(s, |x| x.lease_hits), "coalesced": total(s, |x| x.coalesced),
            "service_cpu_us_per_req": per(total(s, |x| x.service_cpu_us)),
            "non_2xx_or_failed": non2xx, "failed_calls": failures,
        }));
    }
    let _ = writeln!(
        md,
        "\nAccuracy: {INSTANCES} Envoys x `--concurrency {WORKERS}`, one shared limit of {} per 1 s \
         window (switchyard-rls, windows aligned to the Unix second), open-loop load of {:.0} req/s \
         ({}x the limit) spread round-robin over the Envoys for {} s per variant; admitted requests \
         counted per whole window by their answer's arrival. Bound: limit + (N - 1) x {INSTANCES} x \
         {WORKERS}. Connections accepted per worker, per Envoy: {}.\n",
        opts.limit,
        opts.limit as f64 * opts.over,
        opts.over,
        opts.accuracy.as_secs(),
        per_worker
            .iter()
            .map(|w| format!("{w:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    md.push_str("| variant | lease N | bound | admitted per window | admitted / limit (min-max) | requests | admitted | rejected | failed | service calls/req | failed calls |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    let limit = opts.limit.max(1);
    let mut acc_rows = Vec::new();
    let mut within_all = true;
    for a in accuracies {
        let bound = opts.limit + u64::from(a.lease - 1) * (INSTANCES * WORKERS) as u64;
        let counts: Vec<u64> = a.windows.iter().map(|(_, n)| *n).collect();
        let (lo, hi) = (
            counts.iter().min().copied().unwrap_or(0),
            counts.iter().max().copied().unwrap_or(0),
        );
        within_all &= !counts.is_empty() && hi <= bound;
        let _ = writeln!(
            md,
            "| {} | {} | {bound} ({:.3}) | {} | {:.3}-{:.3} | {} | {} | {} | {} | {:.4} | {} |",
            a.name,
            a.lease,
            bound as f64 / limit as f64,
            counts
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            lo as f64 / limit as f64,
            hi as f64 / limit as f64,
            a.requests,
            a.admitted,
            a.rejected,
            a.failed,
            a.calls as f64 / a.requests.max(1) as f64,
            a.failures,
        );
        acc_rows.push(json!({
            "variant": a.name, "lease": a.lease, "bound": bound,
            "windows": a.windows.iter().map(|(w, n)| json!({"unix_second": w, "admitted": n, "ratio": *n as f64 / limit as f64})).collect::<Vec<_>>(),
            "requests": a.requests, "admitted": a.admitted, "rejected": a.rejected, "failed": a.failed,
            "service_calls": a.calls, "lease_hits": a.lease_hits, "failed_calls": a.failures,
        }));
    }
    // Goals (reported, never asserted).
    let row = |name: &str| costs.iter().find(|(v, _)| v.name == name).map(|(_, s)| s);
    let p99_added = |name: &str| row(name).map(|s| med(s, |x| x.open_p99_ms) - base_p99);
    let lease_calls = row("global-lease100")
        .map(|s| total(s, |x| x.calls) as f64 / total(s, |x| x.requests).max(1) as f64);
    let met = |ok: bool| if ok { "yes" } else { "**no**" };
    md.push_str(
        "\nGoals (reported, never asserted):\n\n| goal | measured | met? |\n|---|---|---|\n",
    );
    let mut goals = Vec::new();
    for name in ["global", "global-lease100"] {
        if let Some(added) = p99_added(name) {
            let _ = writeln!(
                md,
                "| {name}: p99 added <= 1 ms on loopback (open loop, over `local`) | {added:+.2} ms | {} |",
                met(added <= 1.0)
            );
            goals.push(json!({"goal": format!("{name}: p99 added <= 1 ms"), "measured_ms": added, "met": added <= 1.0}));
        }
    }
    if let Some(c) = lease_calls {
        let _ = writeln!(
            md,
            "| lease 100: <= 1 service call per 50 requests at steady state | 1 per {:.0} ({c:.4}/req) | {} |",
            1.0 / c.max(1e-9),
            met(c <= 1.0 / 50.0)
        );
        goals.push(json!({"goal": "lease 100: <= 1 call per 50 requests", "calls_per_request": c, "met": c <= 0.02}));
    }
    if !accuracies.is_empty() {
        let _ = writeln!(
            md,
            "| admitted / limit within limit + (N - 1) x instances x workers, every whole window | {} | {} |",
            accuracies
                .iter()
                .map(|a| format!(
                    "{}: max {:.3}",
                    a.name,
                    a.windows.iter().map(|(_, n)| *n).max().unwrap_or(0) as f64 / limit as f64
                ))
                .collect::<Vec<_>>()
                .join("; "),
            met(within_all)
        );
        goals.push(json!({"goal": "admitted within the bound", "met": within_all}));
    }
    md.push_str("\nVariants:\n\n");
    for (v, _) in costs {
        let _ = writeln!(md, "- `{}`: {} (`GET {}`)", v.name, v.what, v.path);
    }
    let json = json!({
        "machine": machine(), "envoy": envoy_version(&env.envoy_bin),
        "rounds": opts.bench.rounds, "measure_seconds": opts.bench.measure.as_secs_f64(),
        "connections": opts.bench.connections, "load": opts.bench.load.name(),
        "latency_rate": opts.latency_rate, "cpu_pinning": pin::describe(opts.bench.pin.as_ref()),
        "cost": rows,
        "accuracy": {"instances": INSTANCES, "workers": WORKERS, "limit": opts.limit,
                     "window_seconds": 1, "offered_rps": opts.limit as f64 * opts.over,
                     "seconds": opts.accuracy.as_secs(), "variants": acc_rows,
                     "connections_per_worker": per_worker},
        "goals": goals, "took_seconds": took.as_secs_f64(),
    });
    (md, json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_have_defaults_and_quick_mode() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let o = parse(&args(&["global"])).unwrap();
        assert_eq!(
            (o.bench.rounds, o.accuracy.as_secs(), o.limit),
            (5, 12, 1000)
        );
        let o = parse(&args(&["--quick", "--limit", "300"])).unwrap();
        assert_eq!((o.bench.rounds, o.accuracy.as_secs(), o.limit), (2, 5, 300));
        assert!(parse(&args(&["--bogus"])).is_err());
        assert!(parse(&args(&["--over", "0"])).is_err());
    }

    #[test]
    fn rules_and_service_configuration_agree() {
        let local = rule("bench", "/", None);
        assert!(local.get("scope").is_none() && local.get("service").is_none());
        let global = rule("acc-lease", "/acc-lease", Some(LEASE));
        assert_eq!(global["scope"], "global");
        assert_eq!(global["lease"], LEASE);
        assert_eq!(global["key"][0]["literal"], "acc-lease");
        assert_eq!(global["service"]["failure_mode"], "deny");
        let yaml = rls_yaml(&[("bench", UNLIMITED), ("acc-lease", 1000)]);
        assert!(
            yaml.contains(
                "value: acc-lease\n    rate_limit: { unit: second, requests_per_unit: 1000 }"
            ),
            "{yaml}"
        );
        let cluster = rls_cluster(8081).yaml();
        assert!(cluster.contains("http2_protocol_options: {}"));
        assert!(cluster.contains("connect_timeout: 0.25s"));
        assert!(cluster.contains("port_value: 8081 }"));
    }

    #[test]
    fn windows_count_admitted_answers_in_whole_seconds_only() {
        let at = |ms: u64| Duration::from_millis(ms);
        let answers = vec![
            (at(10_900), Outcome::Ok),     // before the first whole window
            (at(11_000), Outcome::Ok),     // window 11
            (at(11_999), Outcome::Ok),     // window 11
            (at(11_500), Outcome::Non2xx), // rejected: not counted
            (at(12_100), Outcome::Ok),     // window 12
            (at(13_200), Outcome::Ok),     // after the last whole window
        ];
        let w = admitted_per_window(&answers, at(10_500), at(13_300));
        assert_eq!(w, vec![(11, 2), (12, 1)]);
        assert_eq!(
            admitted_per_window(&answers, at(11_000), at(12_000)),
            vec![(11, 2)]
        );
    }
}
