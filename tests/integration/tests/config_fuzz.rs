//! Fuzzes every filter's configuration parser natively: random JSON, mutations of each filter's
//! valid demo configuration (`envoy/demo/<f>.json`) and byte-level damage to its text go into
//! the same `validate_config` that `on_configure` runs (and the router's reload-table parser).
//! Each must answer `Ok` or `Err`, never panic.
//!
//! Reproducible: input `i` of filter `f` is a function of the seed, `f` and `i`. Environment:
//! `SWITCHYARD_FUZZ_SEED=S` (default 20260101), `SWITCHYARD_FUZZ_SECONDS=N` (run for about N s
//! instead of the fixed count), `SWITCHYARD_FUZZ_CASES=K` (inputs per parser, default 5000).
//! A panic prints the seed, the parser, the input index and the input.

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};
use switchyard_core::rng::{splitmix64, XorShift};

const DEFAULT_SEED: u64 = 20_260_101;
const DEFAULT_CASES: u64 = 5000;

/// The filters' generator (xorshift64* seeded through splitmix64), with the helpers the fuzz
/// uses.
struct Rng(XorShift);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(XorShift::new(seed))
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?}: {e}"))
    })
}

// ---- generation ------------------------------------------------------------------------------

const STRINGS: &[&str] = &[
    "",
    "0s",
    "1s",
    "-1s",
    "1ms",
    "0.5s",
    "1e3s",
    "99999999999999999999h",
    "18446744073709551615s",
    "1m",
    "1h",
    "1d",
    "s",
    "1 s",
    "ring",
    "maglev",
    "rendezvous",
    "lru",
    "lfu",
    "fifo",
    "sliding_window",
    "token_bucket",
    "enforce",
    "shadow",
    "allow",
    "deny",
    "ietf",
    "all",
    "none",
    "GET",
    "PURGE",
    "/",
    "/users/{id}",
    "/users/{id}/{id}",
    "/{",
    "{}",
    "^(a+)+$",
    "[",
    "(",
    "127.0.0.1:8081",
    "[::1]:80",
    "host:99999",
    ":",
    "x-user-id",
    "X-User-Id",
    "bad name",
    "café",
    "\u{0}",
    "\u{ffff}",
    "\u{1F4A9}",
    "a\nb",
];

const NUMBERS: &[f64] = &[
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    2.0,
    100.0,
    65535.0,
    65536.0,
    4294967295.0,
    4294967296.0,
    9007199254740993.0,
    1e19,
    1e308,
    -1e308,
    f64::MIN_POSITIVE,
];

fn random_string(rng: &mut Rng) -> String {
    if rng.one_in(3) {
        let max = if rng.one_in(10) { 5000 } else { 20 };
        let len = rng.below(max);
        (0..len)
            .map(|_| char::from_u32(rng.below(0x3000) as u32).unwrap_or('?'))
            .collect()
    } else {
        rng.pick(STRINGS).to_string()
    }
}

fn random_number(rng: &mut Rng) -> Value {
    match rng.below(4) {
        0 => json!(rng.next_u64()),
        1 => json!(-(rng.below(1_000_000) as i64)),
        2 => json!(rng.below(1000)),
        _ => serde_json::Number::from_f64(*rng.pick(NUMBERS))
            .map(Value::Number)
            .unwrap_or(Value::Null),
    }
}

fn random_value(rng: &mut Rng, keys: &[String], depth: usize) -> Value {
    let kinds = if depth == 0 { 4 } else { 6 };
    match rng.below(kinds) {
        0 => Value::Null,
        1 => Value::Bool(rng.one_in(2)),
        2 => random_number(rng),
        3 => Value::String(random_string(rng)),
        4 => {
            let max = if rng.one_in(20) { 300 } else { 4 };
            Value::Array(
                (0..rng.below(max))
                    .map(|_| random_value(rng, keys, depth - 1))
                    .collect(),
            )
        }
        _ => {
            let mut map = Map::new();
            for _ in 0..rng.below(6) {
                let key = if rng.one_in(5) {
                    random_string(rng)
                } else {
                    rng.pick(keys).clone()
                };
                map.insert(key, random_value(rng, keys, depth - 1));
            }
            Value::Object(map)
        }
    }
}

/// Every object key in `v` (the vocabulary random objects draw from).
fn collect_keys(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if !out.contains(k) {
                    out.push(k.clone());
                }
                collect_keys(child, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_keys(i, out)),
        _ => {}
    }
}

/// Number of nodes under `v` (for picking one uniformly).
fn count(v: &Value) -> usize {
    1 + match v {
        Value::Object(map) => map.values().map(count).sum(),
        Value::Array(items) => items.iter().map(count).sum(),
        _ => 0,
    }
}

/// The `n`-th node in pre-order.
fn nth(v: &mut Value, n: usize) -> Option<&mut Value> {
    if n == 0 {
        return Some(v);
    }
    let mut n = n - 1;
    let children: Vec<&mut Value> = match v {
        Value::Object(map) => map.values_mut().collect(),
        Value::Array(items) => items.iter_mut().collect(),
        _ => return None,
    };
    for child in children {
        let c = count(child);
        if n < c {
            return nth(child, n);
        }
        n -= c;
    }
    None
}

/// Applies 1–4 structural mutations to a valid configuration.
fn mutate(rng: &mut Rng, config: &Value, keys: &[String]) -> Value {
    let mut v = config.clone();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(count(&v));
        let Some(node) = nth(&mut v, at) else {
            continue;
        };
        match rng.below(8) {
            0 => *node = random_value(rng, keys, 2),
            1 => *node = Value::String(random_string(rng)),
            2 => *node = random_number(rng),
            3 => {
                // Delete a field or an element.
                match node {
                    Value::Object(map) if !map.is_empty() => {
                        let k = map.keys().nth(rng.below(map.len())).cloned();
                        if let Some(k) = k {
                            map.remove(&k);
                        }
                    }
                    Value::Array(items) if !items.is_empty() => {
                        items.remove(rng.below(items.len()));
                    }
                    _ => *node = Value::Null,
                }
            }
            4 => {
                // Duplicate elements (many rules, hosts, routes).
                if let Value::Array(items) = node {
                    if let Some(first) = items.first().cloned() {
                        let n = if rng.one_in(5) { 200 } else { 3 };
                        items.extend(std::iter::repeat_n(first, n));
                    }
                }
            }
            5 => {
                if let Value::Object(map) = node {
                    let key = rng.pick(keys).clone();
                    map.insert(key, random_value(rng, keys, 2));
                }
            }
            6 => *node = Value::Array(vec![node.clone()]),
            _ => *node = json!({}),
        }
    }
    v
}

/// Byte-level damage to valid JSON text: truncation, flipped and inserted bytes (obs-text and
/// invalid UTF-8 included), deep nesting.
fn damage(rng: &mut Rng, text: &[u8]) -> Vec<u8> {
    let mut b = text.to_vec();
    match rng.below(5) {
        0 => b.truncate(rng.below(b.len() + 1)),
        1 => {
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(b.len());
                b[at] = rng.next_u64() as u8;
            }
        }
        2 => {
            let at = rng.below(b.len() + 1);
            let insert: &[u8] = rng.pick::<&[u8]>(&[
                &b"\xe9"[..],
                b"\xff\xfe",
                b"\"",
                b"{",
                b"[",
                b",",
                b"\\u0000",
                b"\\ud800",
                b"1e999",
                b"-",
            ]);
            b.splice(at..at, insert.iter().copied());
        }
        3 => {
            let max = if rng.one_in(4) { 5000 } else { 100 };
            let depth = 1 + rng.below(max);
            let mut out = vec![b'['; depth];
            out.extend_from_slice(text);
            out.extend(std::iter::repeat_n(b']', depth));
            b = out;
        }
        _ => {
            b = (0..rng.below(200)).map(|_| rng.next_u64() as u8).collect();
        }
    }
    b
}

/// Input `index` for a parser whose valid example is `config`.
fn input(seed: u64, parser: &str, index: u64, config: &Value, keys: &[String]) -> Vec<u8> {
    let salt = parser
        .bytes()
        .fold(0u64, |h, b| splitmix64(h ^ u64::from(b)));
    let mut rng = Rng::new(splitmix64(seed) ^ salt ^ splitmix64(index.wrapping_add(1)));
    match rng.below(10) {
        0..=5 => mutate(&mut rng, config, keys).to_string().into_bytes(),
        6 | 7 => random_value(&mut rng, keys, 4).to_string().into_bytes(),
        _ => damage(&mut rng, config.to_string().as_bytes()),
    }
}

fn show(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.chars().count() > 2000 {
        format!(
            "{}...<{} bytes>",
            text.chars().take(2000).collect::<String>(),
            bytes.len()
        )
    } else {
        text.into_owned()
    }
}

// ---- the run -----------------------------------------------------------------------------------

type Parser = fn(&[u8]) -> Result<(), String>;

fn router_table(bytes: &[u8]) -> Result<(), String> {
    // The demo router configuration's `known_clusters`.
    let known = ["web", "api-v1", "api-v2", "users", "search", "search-next"].map(String::from);
    switchyard_router::config::parse_table(bytes, Some(&known), "x-switchyard-cluster")
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn demo_config(filter: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../envoy/demo")
        .join(format!("{filter}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("demo config is JSON")
}

#[test]
fn configuration_parsers_never_panic() {
    let seed = env_u64("SWITCHYARD_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let seconds = std::env::var("SWITCHYARD_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| *s > 0.0);
    let cases = env_u64("SWITCHYARD_FUZZ_CASES").unwrap_or(DEFAULT_CASES);

    let router = demo_config("router");
    let table = json!({"routes": router["routes"], "default": router["default"]});
    let parsers: Vec<(&str, Parser, Value)> = vec![
        (
            "ratelimit",
            |b| switchyard_ratelimit::validate_config(b).map_err(|e| e.to_string()),
            demo_config("ratelimit"),
        ),
        (
            "cache",
            |b| switchyard_cache::validate_config(b).map_err(|e| e.to_string()),
            demo_config("cache"),
        ),
        (
            "router",
            |b| switchyard_router::validate_config(b).map_err(|e| e.to_string()),
            router.clone(),
        ),
        ("router-table", router_table, table),
        (
            "hashring",
            |b| switchyard_hashring::validate_config(b).map_err(|e| e.to_string()),
            demo_config("hashring"),
        ),
    ];
    let budget = seconds.map(|s| Duration::from_secs_f64(s / parsers.len() as f64));
    let mut panics: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for (name, parse, config) in &parsers {
        if let Err(e) = parse(config.to_string().as_bytes()) {
            panic!("{name}: the demo configuration itself is rejected: {e}");
        }
        let mut keys = Vec::new();
        collect_keys(config, &mut keys);
        keys.extend(
            [
                "name", "match", "key", "limits", "hosts", "routes", "action", "extra",
            ]
            .map(String::from),
        );
        let started = Instant::now();
        let (mut ok, mut run) = (0u64, 0u64);
        let mut slowest = (Duration::ZERO, 0u64);
        for index in 0.. {
            match budget {
                Some(b) if started.elapsed() >= b => break,
                None if index >= cases => break,
                _ => {}
            }
            let bytes = input(seed, name, index, config, &keys);
            let t = Instant::now();
            let result = catch_unwind(AssertUnwindSafe(|| parse(&bytes)));
            let took = t.elapsed();
            if took > slowest.0 {
                slowest = (took, index);
            }
            run += 1;
            match result {
                Ok(accepted) => ok += u64::from(accepted.is_ok()),
                Err(panic) => {
                    let message = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    let entry = panics
                        .entry(format!("{name}: {message}"))
                        .or_insert_with(|| {
                            (
                                0,
                                format!(
                                    "seed {seed}, parser {name}, input {index}: {}",
                                    show(&bytes)
                                ),
                            )
                        });
                    entry.0 += 1;
                }
            }
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "fuzz config {name}: {run} cases (seed {seed}) in {secs:.1}s = {:.0} cases/s; {ok} accepted, {} rejected; slowest input {} took {:?}",
            run as f64 / secs.max(1e-9),
            run - ok,
            slowest.1,
            slowest.0
        );
    }
    if !panics.is_empty() {
        let mut report = format!("configuration parsers panicked (seed {seed}):\n");
        for (sig, (n, first)) in &panics {
            report.push_str(&format!("\n== {sig} ({n} inputs); first: {first}\n"));
        }
        panic!("{report}");
    }
}
