//! Fuzzes every compiled filter module (`dist/<filter>.wasm`) in this host, alone and chained
//! ratelimit → router → cache → hashring, with requests and upstream answers carrying the bytes
//! Envoy's codecs let through (obs-text, 64 KiB values, 150 headers, odd methods and paths,
//! malformed dates, validators, cache directives, cookies, ...).
//!
//! Asserted for every case: no trap, no VM failure, the request ends (a response or a reset; a
//! paused stream is resumed once its callouts are answered), and a normal request right after
//! it is still served by the filter.
//!
//! The host runs one module per `Host`, so the chain is emulated: each stage's upstream is the
//! next stage's host (the request as the filter left it goes in, the next stage's response comes
//! back through this filter's response callbacks), as Envoy's filter chain would run them.
//!
//! Reproducible: the fixed corpus ([`fuzz::corpus`]) then generated cases [`fuzz::generate`]
//! `(seed, 0..)`. Environment:
//! - `SWITCHYARD_FUZZ_SEED=S` (default 20260101) — the generated cases' seed;
//! - `SWITCHYARD_FUZZ_SECONDS=N` — run generated cases for about N s in total instead of the
//!   fixed count (the targets share the time: each gets N × test threads / targets);
//! - `SWITCHYARD_FUZZ_CASES=K` — generated cases per target in the fixed mode (default 500);
//! - `SWITCHYARD_FUZZ_ONLY=I` — replay generated case I only (no corpus; on a fresh host);
//! - `SWITCHYARD_DIST=dir` — where the modules are (default `<workspace>/dist`).
//! - `SWITCHYARD_FUZZ_VERBOSE=1` — print every failing case (default: the first three of each
//!   distinct failure).
//!
//! A failure prints the seed, the case index and the case (bytes escaped as `\xNN`); cases run
//! in order on one host per target, so `SWITCHYARD_FUZZ_CASES=<index + 1>` with the same seed
//! replays the exact sequence that failed.
//!
//! Every value is sent as raw bytes: the host's header maps hold bytes end to end, so a lone
//! `\xE9` reaches the module as the single byte `E9`, exactly as Envoy passes obs-text on. The
//! summary counts how many of the values sent (request and upstream/callout answers) were not
//! valid UTF-8.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use switchyard_wasmhost::fuzz::{self, Case, Escaped, Field, Response};
use switchyard_wasmhost::{CalloutReply, Host, HostError, Message, Outcome};

const DEFAULT_SEED: u64 = 20_260_101;
const DEFAULT_CASES: u64 = 500;
const WORKERS: usize = 2;
/// The chain, outermost first: the documented order (README "Filters in a chain"), as the demo,
/// compose and `k8s/` run it.
const CHAIN: [&str; 4] = ["ratelimit", "router", "cache", "hashring"];
/// The suite module (`dist/switchyard.wasm`) running [`CHAIN`]'s configurations as stages.
const SUITE: &str = "switchyard";

// ---- settings ----------------------------------------------------------------------------------

struct Settings {
    seed: u64,
    seconds: Option<f64>,
    cases: u64,
    only: Option<u64>,
    /// Print every failing case, not only the first three of each kind.
    verbose: bool,
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={v:?}: {e}")))
}

fn settings() -> Settings {
    Settings {
        seed: env_u64("SWITCHYARD_FUZZ_SEED").unwrap_or(DEFAULT_SEED),
        seconds: std::env::var("SWITCHYARD_FUZZ_SECONDS")
            .ok()
            .map(|s| {
                s.trim()
                    .parse::<f64>()
                    .expect("SWITCHYARD_FUZZ_SECONDS: a number")
            })
            .filter(|s| *s > 0.0),
        cases: env_u64("SWITCHYARD_FUZZ_CASES").unwrap_or(DEFAULT_CASES),
        only: env_u64("SWITCHYARD_FUZZ_ONLY"),
        verbose: env_u64("SWITCHYARD_FUZZ_VERBOSE").is_some_and(|v| v != 0),
    }
}

fn module_path(filter: &str) -> PathBuf {
    match std::env::var_os("SWITCHYARD_DIST") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join(format!("{filter}.wasm")),
        _ => switchyard_wasmhost::workspace_root().join(format!("dist/{filter}.wasm")),
    }
}

// ---- configurations ------------------------------------------------------------------------------

/// Each filter's demo configuration (`envoy/demo/<f>.json`), widened to reach more code.
/// `chained`: the filter runs in [`CHAIN`], behind the router.
fn config(filter: &str, chained: bool) -> Value {
    if filter == SUITE {
        let stages: serde_json::Map<String, Value> = CHAIN
            .iter()
            .map(|f| (f.to_string(), config(f, true)))
            .collect();
        return json!({ "stages": stages });
    }
    let path = switchyard_wasmhost::workspace_root().join(format!("envoy/demo/{filter}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut config: Value = serde_json::from_str(&text).expect("demo config is JSON");
    match filter {
        "ratelimit" => {
            let rules = config["rules"].as_array_mut().expect("rules");
            // A key is absent when any of its parts is: one rule per kind of key.
            rules.push(json!({
                "name": "per-user",
                "match": {"path": {"prefix": "/api"}},
                "key": [{"header": "x-user-id"}],
                "algorithm": "sliding_window",
                "limits": [{"requests": 5, "per": "1s"}, {"requests": 50, "per": "1m"}]
            }));
            rules.push(json!({
                "name": "per-session",
                "key": [{"cookie": "session"}, {"query": "a"}],
                "limits": [{"requests": 3, "per": "1s", "burst": 3}]
            }));
            rules.push(json!({
                "name": "per-forwarded-ip",
                "match": {"path": {"prefix": "/users"}},
                "key": [{"client_ip": {"trusted_hops": 1}}],
                "limits": [{"requests": 3, "per": "10s"}]
            }));
            rules.push(json!({
                "name": "per-token",
                "match": {"headers": [{"name": "authorization", "present": true}]},
                "key": [{"header": "authorization"}],
                "limits": [{"requests": 2, "per": "1s"}]
            }));
        }
        "cache" => {
            config["key"] = json!({"query": "all", "headers": ["x-tenant", "accept-encoding"]});
            config["default_ttl"] = json!("30s");
            config["upstream_timeout"] = json!("2s");
        }
        // Alone, nothing writes the routing record, so the demo's `clusters` would leave most
        // requests alone: pick a host for every request. In the chain the router decides.
        "hashring" if !chained => {
            if let Some(c) = config.as_object_mut() {
                c.remove("clusters");
            }
        }
        _ => {}
    }
    config
}

// ---- targets: one filter, or the chain -----------------------------------------------------------

/// What the stages of one target share while a case runs.
#[derive(Default)]
struct Slot {
    worker: usize,
    source: String,
    response: Response,
    callout_replies: Vec<Response>,
    replies_used: usize,
    /// Host errors of inner stages (they cannot return them through the upstream function).
    errors: Vec<String>,
    /// Values sent that are not valid UTF-8 (obs-text as lone bytes).
    non_utf8: u64,
    resets: u64,
    local_replies: u64,
    upstream_answers: u64,
    reached_innermost: bool,
}

type Shared<T> = Arc<Mutex<T>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Target {
    name: String,
    filters: Vec<&'static str>,
    /// Outermost first.
    stages: Vec<Shared<Host>>,
    slot: Shared<Slot>,
}

fn message(
    status: u32,
    headers: &[Field],
    body: &[u8],
    trailers: &[Field],
    slot: &mut Slot,
) -> Message {
    slot.non_utf8 += count_non_utf8(headers) + count_non_utf8(trailers);
    let mut all = vec![(":status".to_string(), status.to_string().into_bytes())];
    all.extend(headers.iter().cloned());
    Message {
        headers: all,
        body: body.to_vec(),
        trailers: trailers.to_vec(),
    }
}

fn is_utf8(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok()
}

fn count_non_utf8(fields: &[Field]) -> u64 {
    fields.iter().filter(|(_, v)| !is_utf8(v)).count() as u64
}

fn callout_reply(slot: &mut Slot) -> CalloutReply {
    if slot.callout_replies.is_empty() {
        return CalloutReply::Failure;
    }
    let r = slot.callout_replies[slot.replies_used % slot.callout_replies.len()].clone();
    slot.replies_used += 1;
    match r.status {
        590.. => CalloutReply::Failure,
        580.. => CalloutReply::Timeout,
        _ => {
            let m = message(r.status, &r.headers, &r.body, &r.trailers, slot);
            CalloutReply::Http {
                status: r.status,
                headers: m.headers.into_iter().skip(1).collect(),
                body: m.body,
                trailers: m.trailers,
            }
        }
    }
}

/// Answers every pending callout of `host` (a few rounds: answers may cause new ones).
fn answer_callouts(host: &mut Host, slot: &Shared<Slot>) -> Result<(), HostError> {
    for _ in 0..8 {
        let pending = host.callouts();
        if pending.is_empty() {
            return Ok(());
        }
        for call in pending {
            let reply = callout_reply(&mut lock(slot));
            host.answer(call.id, reply)?;
        }
    }
    Ok(())
}

/// Drives a sent request to its end: answers the callouts it waits on. Errors if it stays paused.
fn finish(host: &mut Host, out: Outcome, slot: &Shared<Slot>) -> Result<Outcome, String> {
    if !out.is_paused() {
        return Ok(out);
    }
    answer_callouts(host, slot).map_err(|e| e.to_string())?;
    let out = host.outcome(out.stream).map_err(|e| e.to_string())?;
    if out.is_paused() {
        Err(format!(
            "the request never ends: paused at {:?} with no callout left to answer",
            out.paused_at
        ))
    } else {
        Ok(out)
    }
}

/// Sends `request` (a message as the previous stage left it) through `host`.
fn forward(filter: &str, host: &Shared<Host>, slot: &Shared<Slot>, request: &Message) -> Message {
    let mut host = lock(host);
    let (worker, source) = {
        let s = lock(slot);
        (s.worker, s.source.clone())
    };
    let pseudo = |name: &str| request.header_bytes(name).unwrap_or(b"").to_vec();
    let mut builder = host
        .worker(worker)
        .request()
        .method_bytes(&pseudo(":method"))
        .path_bytes(&pseudo(":path"))
        .authority_bytes(&pseudo(":authority"))
        .source(&source);
    for (k, v) in request.headers.iter().filter(|(k, _)| !k.starts_with(':')) {
        builder = builder.header_bytes(k, v);
    }
    if !request.body.is_empty() {
        builder = builder.body(request.body.clone());
    }
    for (k, v) in &request.trailers {
        builder = builder.trailer_bytes(k, v);
    }
    let result = builder
        .send()
        .map_err(|e| e.to_string())
        .and_then(|out| finish(&mut host, out, slot));
    match result {
        Ok(out) => match out.response {
            Some(response) => response,
            None => {
                lock(slot).resets += 1;
                status_only(502)
            }
        },
        Err(e) => {
            lock(slot).errors.push(format!("{filter}: {e}"));
            status_only(500)
        }
    }
}

fn status_only(status: u32) -> Message {
    Message::with_status(status)
}

impl Target {
    fn new(filters: &[&'static str]) -> Target {
        let slot: Shared<Slot> = Arc::default();
        let mut stages: Vec<Shared<Host>> = Vec::new();
        // Innermost first: each stage's upstream is the stage after it.
        for (i, filter) in filters.iter().enumerate().rev() {
            let mut host = Host::load(module_path(filter))
                .unwrap_or_else(|e| panic!("{filter}: {e}"))
                .workers(WORKERS)
                .property("cluster_name", "web")
                .configure(config(filter, filters.len() > 1).to_string())
                .unwrap_or_else(|e| panic!("{filter}: the representative configuration: {e}"));
            let s = slot.clone();
            if i + 1 == filters.len() {
                host.set_upstream(move |_request| {
                    let mut slot = lock(&s);
                    slot.reached_innermost = true;
                    let r = slot.response.clone();
                    message(r.status, &r.headers, &r.body, &r.trailers, &mut slot)
                });
            } else {
                let next = stages[0].clone();
                let next_filter = filters[i + 1];
                host.set_upstream(move |request| forward(next_filter, &next, &s, request));
            }
            stages.insert(0, Arc::new(Mutex::new(host)));
        }
        Target {
            name: filters.join("→"),
            filters: filters.to_vec(),
            stages,
            slot,
        }
    }

    /// Runs one case; the error says what went wrong.
    fn run(&mut self, case: &Case, index: u64) -> Result<(), String> {
        {
            let mut slot = lock(&self.slot);
            slot.worker = (index as usize) % WORKERS;
            slot.source = case.source.clone();
            slot.response = case.response.clone();
            slot.callout_replies = case.callout_replies.clone();
            slot.replies_used = 0;
            slot.errors.clear();
            slot.reached_innermost = false;
        }
        if case.wait_ms > 0 {
            for (stage, filter) in self.stages.iter().zip(&self.filters) {
                let mut host = lock(stage);
                host.advance(Duration::from_millis(case.wait_ms))
                    .map_err(|e| format!("{filter}: advancing the clock: {e}"))?;
                answer_callouts(&mut host, &self.slot)
                    .map_err(|e| format!("{filter}: answering callouts: {e}"))?;
            }
        }
        for _ in 0..case.repeat.max(1) {
            self.send(case)?;
        }
        Ok(())
    }

    /// Sends the case's request once through the target and drives it to its end.
    fn send(&mut self, case: &Case) -> Result<(), String> {
        lock(&self.slot).reached_innermost = false;
        let outcome = {
            let mut host = lock(&self.stages[0]);
            let worker = {
                let mut slot = lock(&self.slot);
                slot.non_utf8 += [&case.method, &case.path, &case.authority]
                    .iter()
                    .filter(|v| !is_utf8(v))
                    .count() as u64
                    + count_non_utf8(&case.headers)
                    + count_non_utf8(&case.trailers);
                slot.worker
            };
            // Raw bytes all the way: the module reads exactly what the case holds.
            let mut builder = host
                .worker(worker)
                .request()
                .method_bytes(&case.method)
                .path_bytes(&case.path)
                .authority_bytes(&case.authority)
                .source(&case.source);
            for (k, v) in &case.headers {
                builder = builder.header_bytes(k, v);
            }
            if let Some(body) = &case.body {
                builder = builder.body(body.clone());
            }
            for (k, v) in &case.trailers {
                builder = builder.trailer_bytes(k, v);
            }
            let filter = self.filters[0];
            let out = builder.send().map_err(|e| format!("{filter}: {e}"));
            let out = out.and_then(|out| {
                finish(&mut host, out, &self.slot).map_err(|e| format!("{filter}: {e}"))
            });
            out
        };
        // Root-context callouts (reloads, revalidations) the request started, in every stage.
        let mut answered = Ok(());
        for (stage, filter) in self.stages.iter().zip(&self.filters) {
            if let Err(e) = answer_callouts(&mut lock(stage), &self.slot) {
                answered = Err(format!("{filter}: answering callouts: {e}"));
                break;
            }
        }
        let outcome = outcome.and_then(|o| answered.map(|_| o));
        let inner_errors = std::mem::take(&mut lock(&self.slot).errors);
        let outcome = match (outcome, inner_errors.is_empty()) {
            (Ok(o), true) => o,
            (Ok(_), false) => return Err(inner_errors.join("; ")),
            (Err(e), _) => {
                return Err(std::iter::once(e)
                    .chain(inner_errors)
                    .collect::<Vec<_>>()
                    .join("; "))
            }
        };
        if !outcome.is_complete() {
            return Err(format!("the request did not end: {:?}", outcome.action));
        }
        let mut slot = lock(&self.slot);
        if outcome.reset {
            slot.resets += 1;
        } else if slot.reached_innermost {
            slot.upstream_answers += 1;
        } else {
            slot.local_replies += 1;
        }
        Ok(())
    }

    /// A plain request that the filters must still serve from the upstream.
    fn normal(&mut self, n: u64) -> Result<(), String> {
        {
            let mut slot = lock(&self.slot);
            slot.worker = (n as usize) % WORKERS;
            slot.source = "10.9.9.9:5555".to_string();
            slot.response = Response {
                status: 200,
                headers: vec![("content-type".to_string(), b"text/plain".to_vec())],
                body: b"normal".to_vec(),
                trailers: Vec::new(),
            };
            slot.callout_replies.clear();
            slot.errors.clear();
            slot.reached_innermost = false;
        }
        let worker = lock(&self.slot).worker;
        let out = {
            let mut host = lock(&self.stages[0]);
            let out = host
                .worker(worker)
                .request()
                .path(&format!("/fuzz-normal/{n}"))
                .header("x-user-id", &format!("normal-{n}"))
                .source("10.9.9.9:5555")
                .send();
            out.map_err(|e| e.to_string())
                .and_then(|o| finish(&mut host, o, &self.slot))
        };
        let slot = lock(&self.slot);
        let problem = match &out {
            Err(e) => Some(e.clone()),
            Ok(_) if !slot.errors.is_empty() => Some(slot.errors.join("; ")),
            Ok(o) if !slot.reached_innermost || o.status() != Some(200) => Some(format!(
                "not served: status {:?}, upstream reached {}, local reply {:?}, response headers {:?}",
                o.status(),
                slot.reached_innermost,
                o.local_reply.as_ref().map(|r| (r.status, r.body_text())),
                o.response
                    .iter()
                    .flat_map(|m| m.headers.iter())
                    .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v)))
                    .collect::<Vec<_>>()
            )),
            Ok(_) => None,
        };
        match problem {
            Some(p) => Err(format!("a normal request after the case failed: {p}")),
            None => Ok(()),
        }
    }
}

// ---- the run ---------------------------------------------------------------------------------

/// One distinct failure: its signature, how often, and the first case that showed it.
struct Failure {
    count: u64,
    first: String,
}

/// An error without the host's Rust backtrace: the first line, the wasm trap and the panic
/// message the filter logged.
fn brief(error: &str) -> String {
    let mut out = Vec::new();
    let mut skipping = false;
    for line in error.lines() {
        if line.starts_with("Stack backtrace:") {
            skipping = true;
        }
        if let Some(at) = line.find("; critical logs:") {
            out.push(line[at + 2..].to_string());
            skipping = false;
            continue;
        }
        if !skipping && !line.trim().is_empty() && !line.trim_start().starts_with(char::is_numeric)
        {
            out.push(line.to_string());
        }
    }
    out.join("\n    ")
}

/// The part of an error that identifies it (the filter, the callback and the panic message),
/// without the worker number or the backtraces.
fn signature(error: &str) -> String {
    let first_line = error.lines().next().unwrap_or("");
    let filter = first_line.split(':').next().unwrap_or("");
    let callback = error
        .find("trapped in ")
        .map(|at| error[at..].split(':').next().unwrap_or("").to_string());
    let panicked = error.find("panicked at").map(|at| {
        let p = error[at..].split("\"]").next().unwrap_or("");
        // `FromUtf8Error { bytes: [...], ... }`: the bytes differ per case, the bug does not.
        let p = p.split(" { bytes: [").next().unwrap_or(p);
        p.replace("\\n", " ").chars().take(240).collect::<String>()
    });
    match (callback, panicked) {
        (Some(cb), Some(p)) => format!("{filter}: {cb}: {p}"),
        (Some(cb), None) => format!("{filter}: {cb}"),
        _ => first_line
            .chars()
            .filter(|c| !c.is_ascii_digit())
            .take(240)
            .collect(),
    }
}

fn fuzz_target(filters: &[&'static str]) {
    let settings = settings();
    let mut target = Target::new(filters);
    let name = target.name.clone();
    let threads = std::env::var("RUST_TEST_THREADS")
        .ok()
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let targets = 6.0;
    let budget = settings
        .seconds
        .map(|s| Duration::from_secs_f64(s * (threads as f64).min(targets) / targets));

    let corpus = if settings.only.is_some() {
        Vec::new()
    } else {
        fuzz::corpus()
    };
    let generated: Box<dyn Iterator<Item = u64>> = match (settings.only, budget) {
        (Some(i), _) => Box::new(std::iter::once(i)),
        (None, Some(_)) => Box::new(0..),
        (None, None) => Box::new(0..settings.cases),
    };
    let started = Instant::now();
    let mut failures: BTreeMap<String, Failure> = BTreeMap::new();
    let mut run = 0u64;
    let mut normal = 0u64;
    let mut non_utf8_before = 0u64;
    let mut check = |target: &mut Target, case: &Case, index: u64, kind: &str| {
        run += 1;
        let result = target.run(case, index).and_then(|_| {
            normal += 1;
            target.normal(normal)
        });
        if let Err(error) = result {
            let sig = signature(&error);
            let entry = failures.entry(sig).or_insert_with(|| Failure {
                count: 0,
                first: format!(
                    "{kind} {index} of target {name} (seed {}):\n  error: {}\n  {case}",
                    settings.seed,
                    brief(&error)
                ),
            });
            entry.count += 1;
            if entry.count <= 3 || settings.verbose {
                eprintln!(
                    "fuzz {name}: FAILED {} — {}",
                    case.label,
                    error.lines().next().unwrap_or("")
                );
            }
            // A trapped VM stays unusable, as in Envoy: start the target afresh and go on.
            non_utf8_before += lock(&target.slot).non_utf8;
            *target = Target::new(filters);
        }
    };
    for (i, case) in corpus.iter().enumerate() {
        check(&mut target, case, i as u64, "corpus case");
    }
    let corpus_len = corpus.len() as u64;
    for index in generated {
        if budget.is_some_and(|b| started.elapsed() >= b) {
            break;
        }
        let case = fuzz::generate(settings.seed, index);
        check(&mut target, &case, index, "generated case");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (non_utf8, local, upstream, resets) = {
        let slot = lock(&target.slot);
        (
            non_utf8_before + slot.non_utf8,
            slot.local_replies,
            slot.upstream_answers,
            slot.resets,
        )
    };
    println!(
        "fuzz {name}: {run} cases ({corpus_len} corpus + {} generated, seed {}) in {elapsed:.1}s = {:.1} cases/s; {} distinct failures; {} values sent were not UTF-8 (raw obs-text bytes); since the last restart {upstream} answered by the upstream, {local} by a filter, {resets} reset",
        run - corpus_len,
        settings.seed,
        run as f64 / elapsed.max(1e-9),
        failures.len(),
        non_utf8,
    );
    if !failures.is_empty() {
        let mut report = format!(
            "fuzz {name}: {} distinct failures in {run} cases (seed {}; replay a generated case with SWITCHYARD_FUZZ_SEED={} SWITCHYARD_FUZZ_ONLY=<case>, or the sequence with SWITCHYARD_FUZZ_CASES=<case + 1>):\n",
            failures.len(),
            settings.seed,
            settings.seed
        );
        for (sig, f) in &failures {
            report.push_str(&format!(
                "\n== {sig} ({} cases); first: {}\n",
                f.count, f.first
            ));
        }
        panic!("{report}");
    }
}

#[test]
fn fuzz_ratelimit() {
    fuzz_target(&["ratelimit"]);
}

#[test]
fn fuzz_router() {
    fuzz_target(&["router"]);
}

#[test]
fn fuzz_cache() {
    fuzz_target(&["cache"]);
}

#[test]
fn fuzz_hashring() {
    fuzz_target(&["hashring"]);
}

#[test]
fn fuzz_chain() {
    fuzz_target(&CHAIN);
}

#[test]
fn fuzz_suite() {
    fuzz_target(&[SUITE]);
}

#[test]
fn the_corpus_covers_the_worst_cases() {
    let corpus = fuzz::corpus();
    let has = |f: &dyn Fn(&Case) -> bool| corpus.iter().any(f);
    assert!(has(&|c| c.headers.len() >= 150));
    assert!(has(&|c| c.headers.iter().any(|(_, v)| v.len() >= 65_536)));
    assert!(has(&|c| c
        .headers
        .iter()
        .any(|(k, v)| k == "x-user-id" && v == b"caf\xe9")));
    assert!(has(&|c| c.method == b"get"));
    assert!(has(&|c| c.method == b"PURGE"));
    let _ = Escaped(b"");
}

/// The representative configurations do what the fuzz relies on (limits bite, hits happen,
/// hosts are chosen, routes apply), so the fuzzed requests reach the filters' interesting code.
#[test]
fn the_representative_configurations_engage() {
    let mut target = Target::new(&["ratelimit"]);
    let statuses: Vec<u32> = (0..7)
        .map(|i| {
            let case = Case::get("burst", "/api/x").header("x-user-id", b"alice");
            target.run(&case, i).unwrap();
            let mut host = lock(&target.stages[0]);
            let out = host
                .request()
                .path("/api/x")
                .header("x-user-id", "alice")
                .send()
                .unwrap();
            out.status().unwrap()
        })
        .collect();
    assert!(statuses.contains(&429), "{statuses:?}");

    let mut target = Target::new(&CHAIN);
    let case = Case::get("cacheable", "/cacheable").upstream_header("cache-control", b"max-age=60");
    target.run(&case, 0).unwrap();
    let slot_upstream = lock(&target.slot).upstream_answers;
    target.run(&case, 1).unwrap();
    assert_eq!(
        lock(&target.slot).upstream_answers,
        slot_upstream,
        "the second request is a cache hit"
    );
    let mut host = lock(&target.stages[1]);
    let out = host.request().path("/users/7").send().unwrap();
    let upstream = out.upstream.expect("routed");
    assert_eq!(upstream.header(":path"), Some("/v1/users/7"));
    assert_eq!(upstream.header("x-switchyard-cluster"), Some("users"));
}
