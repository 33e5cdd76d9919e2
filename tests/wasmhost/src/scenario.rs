//! Filter scenarios defined once and run on two backends: this host ([`run_on_host`]) and a real
//! Envoy (the fidelity tests drive `switchyard-harness` with the same [`Scenario`]). Both
//! backends turn each step into an [`Observed`]: the whole observation (status, every response
//! header, the body, the request as the upstream saw it, the filter's metrics after the step),
//! normalised the same way. The fidelity tests assert that every step meets its expectations on
//! both and that [`compare_all`] finds no difference; the only fields left out are listed, each
//! with its reason, in [`EXCLUDED_RESPONSE_HEADERS`], [`MASKED_RESPONSE_VALUES`] (the
//! clock-derived part of a value only)
//! and [`EXCLUDED_UPSTREAM_HEADERS`].
//!
//! The host emulates the project's upstream test server (`switchyard-upstream`) just enough for
//! the observations: status from `?status=` or `x-echo-status`, `x-upstream-id`, extra
//! `?header=Name:Value` headers, `content-length`, no body for 204/304/`HEAD`, and its JSON
//! echo body. What Envoy adds around the filter chain is added on the host too: to the
//! requests, `content-length` as the test client sends it, then `x-forwarded-proto: http` and an
//! `x-request-id` from the connection manager; after the filter, the router's
//! `x-envoy-expected-rq-timeout-ms`; and `upstream.address` once a request reached the upstream.
//! The host runs Envoy's main-thread VMs too ([`crate::HostBuilder::main_thread`]).

use crate::host::Host;
use crate::types::{header_lossy, Message};
use std::time::Duration;

/// Upstream id both backends use.
pub const UPSTREAM_ID: &str = "u1";
/// Cluster name both backends route to.
pub const CLUSTER: &str = "backend";
/// `upstream.address` on the host once a request reached the (emulated) upstream.
pub const UPSTREAM_ADDRESS: &str = "127.0.0.1:40000";

/// A named sequence of requests through one filter with one configuration.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    /// Filter name: module `dist/<filter>.wasm`.
    pub filter: String,
    pub config: serde_json::Value,
    pub steps: Vec<Step>,
}

impl Scenario {
    pub fn new(name: &str, filter: &str, config: serde_json::Value) -> Self {
        Scenario {
            name: name.to_string(),
            filter: filter.to_string(),
            config,
            steps: Vec::new(),
        }
    }

    pub fn step(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }

    /// Adds the same step `n` times.
    pub fn repeat(mut self, n: usize, step: Step) -> Self {
        for _ in 0..n {
            self.steps.push(step.clone());
        }
        self
    }
}

/// One request and what must be observed.
#[derive(Debug, Clone)]
pub struct Step {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    /// Time that passes before the request (virtual on the host, a sleep on Envoy; keep short).
    pub wait: Option<Duration>,
    pub expect_status: Option<u32>,
    /// Response headers the client sees: `Some(v)` must equal, `None` must be absent.
    pub expect_headers: Vec<(String, Option<String>)>,
    /// Request headers the upstream sees (only checked when it was reached).
    pub expect_upstream_headers: Vec<(String, Option<String>)>,
    pub expect_upstream: Option<bool>,
    pub expect_body_contains: Option<String>,
    /// Response / upstream request headers recorded without an expected value: the backends
    /// must agree on them.
    pub record_headers: Vec<String>,
    pub record_upstream_headers: Vec<String>,
}

impl Step {
    pub fn new(method: &str, path: &str) -> Self {
        Step {
            method: method.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body: None,
            wait: None,
            expect_status: None,
            expect_headers: Vec::new(),
            expect_upstream_headers: Vec::new(),
            expect_upstream: None,
            expect_body_contains: None,
            record_headers: Vec::new(),
            record_upstream_headers: Vec::new(),
        }
    }
    pub fn get(path: &str) -> Self {
        Step::new("GET", path)
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }
    pub fn after(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }
    pub fn status(mut self, status: u32) -> Self {
        self.expect_status = Some(status);
        self
    }
    pub fn expect_header(mut self, name: &str, value: &str) -> Self {
        self.expect_headers
            .push((name.to_ascii_lowercase(), Some(value.to_string())));
        self
    }
    pub fn expect_no_header(mut self, name: &str) -> Self {
        self.expect_headers.push((name.to_ascii_lowercase(), None));
        self
    }
    pub fn expect_upstream_header(mut self, name: &str, value: &str) -> Self {
        self.expect_upstream_headers
            .push((name.to_ascii_lowercase(), Some(value.to_string())));
        self
    }
    pub fn expect_no_upstream_header(mut self, name: &str) -> Self {
        self.expect_upstream_headers
            .push((name.to_ascii_lowercase(), None));
        self
    }
    /// The request reaches the upstream (`true`) or is answered by the filter (`false`).
    pub fn upstream(mut self, reached: bool) -> Self {
        self.expect_upstream = Some(reached);
        self
    }
    pub fn body_contains(mut self, text: &str) -> Self {
        self.expect_body_contains = Some(text.to_string());
        self
    }

    /// Records a response header: any value, but both backends must show the same.
    pub fn record_header(mut self, name: &str) -> Self {
        self.record_headers.push(name.to_ascii_lowercase());
        self
    }
    /// Records a request header as the upstream saw it (both backends must agree).
    pub fn record_upstream_header(mut self, name: &str) -> Self {
        self.record_upstream_headers.push(name.to_ascii_lowercase());
        self
    }

    /// Builds the observation from a backend's whole view of the step: the response the client
    /// got (status, every header, body), the request as the upstream saw it (`None`: never
    /// reached) and the metrics after the step (Envoy's `wasmcustom.` prefix is dropped). The
    /// exclusions ([`EXCLUDED_RESPONSE_HEADERS`], [`MASKED_RESPONSE_VALUES`],
    /// [`EXCLUDED_UPSTREAM_HEADERS`]) are applied here,
    /// so both backends' observations are normalised the same way.
    pub fn observe(
        &self,
        status: u32,
        headers: impl IntoIterator<Item = (String, String)>,
        body: &[u8],
        upstream: Option<UpstreamView>,
        metrics: impl IntoIterator<Item = (String, u64)>,
    ) -> Observed {
        let mut metrics: Vec<(String, u64)> = metrics
            .into_iter()
            .map(|(k, v)| (k.strip_prefix("wasmcustom.").unwrap_or(&k).to_string(), v))
            .filter(|(k, _)| k.starts_with(METRIC_PREFIX))
            .filter(|(k, _)| !EXCLUDED_METRICS.iter().any(|(m, _)| m == k))
            .collect();
        metrics.sort();
        let mut observed = Observed {
            status,
            headers: normalise_headers(headers, EXCLUDED_RESPONSE_HEADERS, MASKED_RESPONSE_VALUES),
            body: normalise_body(body),
            metrics,
            upstream: upstream.map(|u| UpstreamView {
                headers: normalise_headers(u.headers, EXCLUDED_UPSTREAM_HEADERS, &[]),
                ..u
            }),
            recorded: Vec::new(),
        };
        observed.recorded = self
            .record_headers
            .iter()
            .map(|name| (name.clone(), observed.header(name)))
            .chain(self.record_upstream_headers.iter().map(|name| {
                (
                    format!("upstream {name}"),
                    observed
                        .upstream
                        .as_ref()
                        .and_then(|u| joined(&u.headers, name)),
                )
            }))
            .collect();
        observed
    }

    /// Checks an observation against this step's expectations.
    pub fn check(&self, observed: &Observed) -> Result<(), String> {
        let mut problems = Vec::new();
        if let Some(status) = self.expect_status {
            if observed.status != status {
                problems.push(format!("status {} (expected {status})", observed.status));
            }
        }
        for (name, expected) in &self.expect_headers {
            let got = observed.header(name);
            if *expected != got {
                problems.push(format!(
                    "response header {name}: {got:?} (expected {expected:?})"
                ));
            }
        }
        if let Some(reached) = self.expect_upstream {
            if observed.upstream.is_some() != reached {
                problems.push(format!(
                    "upstream reached: {} (expected {reached})",
                    observed.upstream.is_some()
                ));
            }
        }
        if let Some(upstream) = &observed.upstream {
            for (name, expected) in &self.expect_upstream_headers {
                let got = joined(&upstream.headers, name);
                if *expected != got {
                    problems.push(format!(
                        "upstream header {name}: {got:?} (expected {expected:?})"
                    ));
                }
            }
        }
        if let Some(text) = &self.expect_body_contains {
            if !observed.body.contains(text.as_str()) {
                problems.push(format!("body does not contain {text:?}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// Prefix of the metrics compared: the filter's own (`switchyard.<filter>.*`; a scenario loads
/// one filter, so every `switchyard.` metric is that filter's). Envoy shows them as
/// `wasmcustom.switchyard.<filter>.*`.
pub const METRIC_PREFIX: &str = "switchyard.";

/// Metrics left out of the comparison, each with the reason it legitimately differs. Every
/// response, header and other metric is still compared; keep this list short.
pub const EXCLUDED_METRICS: &[(&str, &str)] = &[
    (
        "switchyard.cache.l1_hits",
        "counts hits a worker answers from its own L1, so it depends on which worker takes each \
         request: the host alternates its workers, Envoy assigns each connection to a worker of \
         its choosing (the hits themselves, in `hits`, are compared; the L1 is tested \
         deterministically in tests/cache.rs)",
    ),
    (
        "switchyard.cache.uncacheable_passes",
        "counts misses a worker sends straight upstream because it remembers the key's last \
         answer was not storable; that memory is per worker, so the count depends on which \
         worker takes each request, as with `l1_hits` (the responses themselves are compared; \
         the pass is tested deterministically in tests/cache.rs)",
    ),
];

/// Response headers left out of the comparison, each with the reason it legitimately differs
/// between a real proxy and the module host. None is set by a filter in any scenario (one a
/// filter set would be dropped too), so keep this list short.
pub const EXCLUDED_RESPONSE_HEADERS: &[(&str, &str)] = &[
    (
        "date",
        "Envoy's codec adds the wall-clock time to every response (the host has no codec, and \
         its clock is virtual)",
    ),
    (
        "server",
        "Envoy's connection manager adds `server: envoy` to every response",
    ),
    (
        "connection",
        "hop-by-hop: Envoy answers the test client's `Connection: close` in kind; the host has \
         no connections",
    ),
    (
        "x-envoy-upstream-service-time",
        "Envoy's router adds the upstream's real latency in milliseconds",
    ),
];

/// Response header values derived from a clock, compared with the clock-derived part masked
/// (`(clock)`): Envoy's wall clock (and the upstream's `date`, whole seconds) can cross a second
/// boundary between two steps, where the host's virtual clock stands still unless a step waits.
/// Presence, number and the rest of the value are still compared. `(header, parameter or the
/// whole value, reason)`.
pub const MASKED_RESPONSE_VALUES: &[(&str, Option<&str>, &str)] = &[
    ("age", None, "a stored response's age in whole seconds"),
    (
        "cache-status",
        Some("ttl"),
        "RFC 9211 `ttl`: the freshness lifetime minus the age",
    ),
];

/// Request headers as the upstream saw them (also inside the upstream's JSON echo body) left
/// out of the comparison.
pub const EXCLUDED_UPSTREAM_HEADERS: &[(&str, &str)] = &[(
    "x-request-id",
    "Envoy's connection manager generates a random UUID per request (the host's requests carry \
     a fixed one of the same length)",
)];

/// The request as the upstream saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamView {
    pub method: String,
    /// Path with the query string.
    pub path: String,
    /// Every header (`host` for `:authority`, no other pseudo headers), names lowercase; after
    /// [`Step::observe`] sorted by name, repeats in arrival order.
    pub headers: Vec<(String, String)>,
}

/// What a backend showed for one step: the whole observation, normalised by [`Step::observe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub status: u32,
    /// Every response header but the [`EXCLUDED_RESPONSE_HEADERS`] (the values of the
    /// [`MASKED_RESPONSE_VALUES`] masked), names lowercase, sorted by
    /// name with repeats in order.
    pub headers: Vec<(String, String)>,
    /// The response body (lossy UTF-8); in the upstream's JSON echo (also when replayed from a
    /// cache) without the [`EXCLUDED_UPSTREAM_HEADERS`].
    pub body: String,
    /// The filter's metrics (counters and gauges) after the step, sorted by name.
    pub metrics: Vec<(String, u64)>,
    /// `None`: the request never reached the upstream.
    pub upstream: Option<UpstreamView>,
    /// Values of the step's recorded headers (`upstream <name>` for upstream request headers).
    pub recorded: Vec<(String, Option<String>)>,
}

impl Observed {
    /// A response header's values joined with `, ` (`None` when absent).
    pub fn header(&self, name: &str) -> Option<String> {
        joined(&self.headers, name)
    }
}

fn joined(headers: &[(String, String)], name: &str) -> Option<String> {
    let values: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

fn normalise_headers(
    headers: impl IntoIterator<Item = (String, String)>,
    excluded: &[(&str, &str)],
    masked: &[(&str, Option<&str>, &str)],
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = headers
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .filter(|(k, _)| !excluded.iter().any(|(x, _)| x == k))
        .map(|(k, v)| {
            let v = masked
                .iter()
                .filter(|(name, _, _)| *name == k)
                .fold(v, |v, (_, param, _)| mask(&v, *param));
            (k, v)
        })
        .collect();
    // Stable: repeats of one name keep their order.
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// `value` with the whole of it (`param` `None`) or each `param=` item of a `;`-separated list
/// replaced by `(clock)`.
fn mask(value: &str, param: Option<&str>) -> String {
    let Some(param) = param else {
        return "(clock)".to_string();
    };
    value
        .split(';')
        .map(|item| {
            let trimmed = item.trim_start();
            match trimmed.split_once('=') {
                Some((name, _)) if name.trim() == param => {
                    format!("{}{param}=(clock)", &item[..item.len() - trimmed.len()])
                }
                _ => item.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// The body as text; the upstream's JSON echo without the excluded request headers,
/// re-serialised (keys sorted).
fn normalise_body(body: &[u8]) -> String {
    if let Ok(serde_json::Value::Object(mut echo)) = serde_json::from_slice(body) {
        if echo.get("upstream").and_then(|u| u.as_str()) == Some(UPSTREAM_ID) {
            if let Some(serde_json::Value::Object(headers)) = echo.get_mut("headers") {
                for (name, _) in EXCLUDED_UPSTREAM_HEADERS {
                    headers.remove(*name);
                }
                return serde_json::Value::Object(echo).to_string();
            }
        }
    }
    String::from_utf8_lossy(body).into_owned()
}

fn header_differences(
    what: &str,
    (a_name, a): (&str, &[(String, String)]),
    (b_name, b): (&str, &[(String, String)]),
    out: &mut Vec<String>,
) {
    let mut names: Vec<&String> = a.iter().chain(b).map(|(k, _)| k).collect();
    names.sort();
    names.dedup();
    for name in names {
        let (x, y) = (joined(a, name), joined(b, name));
        if x != y {
            out.push(format!("{what} {name}: {a_name} {x:?} vs {b_name} {y:?}"));
        }
    }
}

/// Every difference between two backends' observations of one step, field by field.
pub fn differences(a_name: &str, a: &Observed, b_name: &str, b: &Observed) -> Vec<String> {
    let mut out = Vec::new();
    if a.status != b.status {
        out.push(format!(
            "status: {a_name} {} vs {b_name} {}",
            a.status, b.status
        ));
    }
    header_differences(
        "response header",
        (a_name, &a.headers),
        (b_name, &b.headers),
        &mut out,
    );
    if a.body != b.body {
        out.push(format!(
            "body: {a_name} {:?} vs {b_name} {:?}",
            a.body, b.body
        ));
    }
    let mut metrics: Vec<&String> = a.metrics.iter().chain(&b.metrics).map(|(k, _)| k).collect();
    metrics.sort();
    metrics.dedup();
    for name in metrics {
        let value = |m: &[(String, u64)]| m.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
        let (x, y) = (value(&a.metrics), value(&b.metrics));
        if x != y {
            out.push(format!("metric {name}: {a_name} {x:?} vs {b_name} {y:?}"));
        }
    }
    match (&a.upstream, &b.upstream) {
        (Some(x), Some(y)) => {
            if (&x.method, &x.path) != (&y.method, &y.path) {
                out.push(format!(
                    "upstream request: {a_name} {} {} vs {b_name} {} {}",
                    x.method, x.path, y.method, y.path
                ));
            }
            header_differences(
                "upstream header",
                (a_name, &x.headers),
                (b_name, &y.headers),
                &mut out,
            );
        }
        (None, None) => {}
        (x, y) => out.push(format!(
            "upstream reached: {a_name} {} vs {b_name} {}",
            x.is_some(),
            y.is_some()
        )),
    }
    if a.recorded != b.recorded {
        out.push(format!(
            "recorded: {a_name} {:?} vs {b_name} {:?}",
            a.recorded, b.recorded
        ));
    }
    out
}

/// Compares two backends' observations of a scenario step by step; the error lists every
/// difference of every step.
pub fn compare_all(
    scenario: &Scenario,
    (a_name, a): (&str, &[Observed]),
    (b_name, b): (&str, &[Observed]),
) -> Result<(), String> {
    let mut problems = Vec::new();
    if a.len() != b.len() {
        problems.push(format!(
            "{a_name} observed {} steps, {b_name} {}",
            a.len(),
            b.len()
        ));
    }
    for (i, ((step, x), y)) in scenario.steps.iter().zip(a).zip(b).enumerate() {
        for d in differences(a_name, x, b_name, y) {
            problems.push(format!("step {i} ({} {}): {d}", step.method, step.path));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "scenario {:?}: {a_name} and {b_name} disagree:\n  {}",
            scenario.name,
            problems.join("\n  ")
        ))
    }
}

/// Checks every step's observation; the error names the scenario, backend and step.
pub fn check_all(scenario: &Scenario, backend: &str, observed: &[Observed]) -> Result<(), String> {
    for (i, (step, obs)) in scenario.steps.iter().zip(observed).enumerate() {
        step.check(obs).map_err(|e| {
            format!(
                "scenario {:?} on {backend}, step {i} ({} {}): {e}",
                scenario.name, step.method, step.path
            )
        })?;
    }
    Ok(())
}

/// Emulates `switchyard-upstream`'s answer to a request (an HTTP/1.1 upstream: `:authority`
/// arrives as `host`).
pub fn emulate_upstream(request: &Message) -> Message {
    let path = request.header(":path").unwrap_or("/");
    let method = request.header(":method").unwrap_or("GET");
    let query: Vec<(String, String)> = path
        .split_once('?')
        .map(|(_, q)| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), percent_decode(v)))
                .collect()
        })
        .unwrap_or_default();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| header_lossy(&request.headers, &format!("x-echo-{name}")))
    };
    let status = param("status")
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(200);
    let bodyless = matches!(status, 100..=199 | 204 | 304) || method == "HEAD";
    let mut headers = vec![
        (":status".to_string(), status.to_string().into_bytes()),
        ("x-upstream-id".to_string(), UPSTREAM_ID.as_bytes().to_vec()),
    ];
    if !bodyless {
        headers.push(("content-type".to_string(), b"application/json".to_vec()));
    }
    for (_, v) in query.iter().filter(|(k, _)| k == "header") {
        if let Some((name, value)) = v.split_once(':') {
            let name = name.trim().to_ascii_lowercase();
            // As the server: framing is its own business, a chosen content-type replaces the
            // default.
            if name == "content-length" || name == "transfer-encoding" {
                continue;
            }
            if name == "content-type" {
                headers.retain(|(k, _)| k != "content-type");
            }
            headers.push((name, value.trim().as_bytes().to_vec()));
        }
    }
    if bodyless {
        return Message {
            headers,
            body: Vec::new(),
            trailers: Vec::new(),
        };
    }
    let mut echoed = serde_json::Map::new();
    for (k, v) in &request.headers {
        let k = match k.as_str() {
            ":authority" => "host",
            k if k.starts_with(':') => continue,
            k => k,
        };
        let v = String::from_utf8_lossy(v);
        let joined = match echoed.get(k).and_then(|e| e.as_str()) {
            Some(prev) => format!("{prev}, {v}"),
            None => v.into_owned(),
        };
        echoed.insert(k.to_string(), serde_json::Value::String(joined));
    }
    let body = serde_json::json!({
        "upstream": UPSTREAM_ID,
        "method": method,
        "version": "HTTP/1.1",
        "path": path.split('?').next().unwrap_or("/"),
        "query": path.split_once('?').map(|(_, q)| q),
        "headers": echoed,
        "body_len": request.body.len(),
    });
    let body = body.to_string().into_bytes();
    // The server frames its whole bodies with a length (Envoy passes it on to the filters).
    headers.push((
        "content-length".to_string(),
        body.len().to_string().into_bytes(),
    ));
    Message {
        headers,
        body,
        trailers: Vec::new(),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) => hex(h).zip(hex(l)).map(|(h, l)| (h * 16 + l) as u8),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The request as it leaves Envoy's router after the filter chain: with the route's timeout
/// (the default, 15 s).
fn routed(request: &Message) -> Message {
    let mut request = request.clone();
    request.headers.push((
        "x-envoy-expected-rq-timeout-ms".to_string(),
        b"15000".to_vec(),
    ));
    request
}

/// The request as the upstream saw it, from the host's upstream message.
fn upstream_view(m: &Message) -> UpstreamView {
    let m = &routed(m);
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    UpstreamView {
        method: m.header(":method").unwrap_or("GET").to_string(),
        path: m.header(":path").unwrap_or("/").to_string(),
        headers: m
            .headers
            .iter()
            .filter_map(|(k, v)| match k.as_str() {
                ":authority" => Some(("host".to_string(), text(v))),
                k if k.starts_with(':') => None,
                k => Some((k.to_string(), text(v))),
            })
            .collect(),
    }
}

/// Runs a scenario on this host with `workers` worker VMs, alternating requests across them
/// (Envoy spreads connections over its workers too). Fails on a host error, not on unmet
/// expectations: those are for [`check_all`].
pub fn run_on_host(scenario: &Scenario, workers: usize) -> Result<Vec<Observed>, String> {
    let config = scenario.config.to_string();
    let mut host = Host::filter(&scenario.filter)
        .map_err(|e| e.to_string())?
        .workers(workers)
        .main_thread()
        .property("cluster_name", CLUSTER)
        // Envoy reports the upstream test server's loopback address, with an ephemeral (five
        // digit) port: what a filter records of it (the cache stores it with each entry, which
        // `bytes_in_use` counts) has the same length.
        .property("upstream.address", UPSTREAM_ADDRESS)
        .configure(config)
        .map_err(|e| e.to_string())?;
    host.set_upstream(|request| emulate_upstream(&routed(request)));
    let mut observed = Vec::new();
    for (i, step) in scenario.steps.iter().enumerate() {
        if let Some(wait) = step.wait {
            host.advance(wait).map_err(|e| e.to_string())?;
        }
        let mut request = host
            .worker(i % workers.max(1))
            .request()
            .method(&step.method)
            .path(&step.path)
            .authority("localhost");
        for (k, v) in &step.headers {
            request = request.header(k, v);
        }
        // What the Envoy side's test client adds (`switchyard_harness::Request`) ...
        let has = |name: &str| step.headers.iter().any(|(k, _)| k == name);
        if (step.body.is_some() || matches!(step.method.as_str(), "POST" | "PUT" | "PATCH"))
            && !has("content-length")
            && !has("transfer-encoding")
        {
            let len = step.body.as_ref().map_or(0, Vec::len);
            request = request.header("content-length", &len.to_string());
        }
        // ... and what Envoy's connection manager adds before the filter chain (a request id
        // of the same length as Envoy's random UUIDs).
        if !has("x-forwarded-proto") {
            request = request.header("x-forwarded-proto", "http");
        }
        if !has("x-request-id") {
            request = request.header("x-request-id", &format!("00000000-0000-4000-8000-{i:012}"));
        }
        if let Some(body) = &step.body {
            request = request.body(body.clone());
        }
        let out = request.send().map_err(|e| e.to_string())?;
        if out.is_paused() {
            return Err(format!(
                "scenario {:?} step {i}: the request is still paused (waiting on {:?}); scenarios cannot answer callouts",
                scenario.name,
                host.callouts()
            ));
        }
        let response = out.response.clone().unwrap_or_default();
        let metrics: Vec<(String, u64)> = host
            .metrics()
            .into_iter()
            .filter(|(name, _)| host.histogram(name).is_none())
            .collect();
        observed.push(
            step.observe(
                response.status().unwrap_or(0),
                response
                    .headers
                    .iter()
                    .filter(|(k, _)| !k.starts_with(':'))
                    .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned())),
                &response.body,
                out.upstream.as_ref().map(upstream_view),
                metrics,
            ),
        );
    }
    Ok(observed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(headers: &[(&str, &str)]) -> Message {
        Message {
            headers: crate::types::text_headers(headers),
            ..Message::default()
        }
    }

    #[test]
    fn upstream_emulation_follows_the_test_server() {
        let answer = emulate_upstream(&msg(&[
            (":path", "/x?status=503&header=Cache-Control:max-age%3D60"),
            (":method", "GET"),
            ("x-a", "1"),
            ("x-a", "2"),
        ]));
        assert_eq!(answer.status(), Some(503));
        assert_eq!(answer.header("x-upstream-id"), Some(UPSTREAM_ID));
        assert_eq!(answer.header("cache-control"), Some("max-age=60"));
        let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
        assert_eq!(body["headers"]["x-a"], "1, 2");
        assert_eq!(body["path"], "/x");
        assert_eq!(
            body["query"],
            "status=503&header=Cache-Control:max-age%3D60"
        );
        assert_eq!(
            answer.header("content-length"),
            Some(answer.body.len().to_string().as_str())
        );
        let by_header = emulate_upstream(&msg(&[
            (":path", "/"),
            (":authority", "localhost"),
            ("x-echo-status", "201"),
        ]));
        assert_eq!(by_header.status(), Some(201));
        let body: serde_json::Value = serde_json::from_slice(&by_header.body).unwrap_or_default();
        assert_eq!(body["headers"]["host"], "localhost");
        let empty = emulate_upstream(&msg(&[(":path", "/?status=204")]));
        assert_eq!((empty.status(), empty.body.len()), (Some(204), 0));
        assert_eq!(empty.header("content-type"), None);
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn check_reports_each_unmet_expectation() {
        let step = Step::get("/")
            .status(429)
            .expect_header("x-a", "1")
            .expect_no_header("x-b")
            .upstream(false);
        let good = step.observe(429, pairs(&[("x-a", "1")]), b"", None, Vec::new());
        assert_eq!(step.check(&good), Ok(()));
        let reached = UpstreamView {
            method: "GET".into(),
            path: "/".into(),
            headers: Vec::new(),
        };
        let bad = step.observe(
            200,
            pairs(&[("x-a", "2"), ("x-b", "v")]),
            b"",
            Some(reached),
            Vec::new(),
        );
        let err = step.check(&bad).err().unwrap_or_default();
        assert!(err.contains("status 200"), "{err}");
        assert!(err.contains("x-a"), "{err}");
        assert!(err.contains("x-b"), "{err}");
        assert!(err.contains("upstream reached: true"), "{err}");
    }

    /// The comparison looks at the whole observation, not only what a step expects: a planted
    /// extra header, a changed body, metric or upstream header are each reported; the excluded
    /// headers and the order of distinct headers are not.
    #[test]
    fn comparison_reports_a_planted_difference() {
        let scenario = Scenario::new("planted", "probe", serde_json::json!({}))
            .step(Step::get("/").status(200));
        let step = &scenario.steps[0];
        let upstream = |extra: &[(&str, &str)]| {
            let mut headers = pairs(&[("host", "localhost"), ("x-request-id", "a")]);
            headers.extend(pairs(extra));
            Some(UpstreamView {
                method: "GET".into(),
                path: "/".into(),
                headers,
            })
        };
        let base = |headers: &[(&str, &str)], body: &[u8], count: u64, up: &[(&str, &str)]| {
            vec![step.observe(
                200,
                pairs(headers),
                body,
                upstream(up),
                vec![
                    ("wasmcustom.switchyard.probe.requests".to_string(), count),
                    ("cluster.backend.upstream_rq_total".to_string(), count + 7),
                ],
            )]
        };
        let host = base(
            &[
                ("x-a", "1"),
                ("content-length", "2"),
                ("age", "0"),
                ("cache-status", "switchyard; hit; ttl=300"),
            ],
            b"ok",
            1,
            &[],
        );
        // Only excluded headers, clock-derived values and the order of distinct names differ.
        let same = base(
            &[
                ("server", "envoy"),
                ("cache-status", "switchyard; hit; ttl=299"),
                ("age", "1"),
                ("content-length", "2"),
                ("X-A", "1"),
                ("date", "Thu, 01 Jan 1970 00:00:00 GMT"),
            ],
            b"ok",
            1,
            &[],
        );
        assert_eq!(
            compare_all(&scenario, ("wasmhost", &host), ("envoy", &same)),
            Ok(())
        );
        // The step expects nothing about these, and each is still a difference.
        let planted = base(&[("x-a", "1"), ("x-planted", "1")], b"ok", 1, &[]);
        let err = compare_all(&scenario, ("wasmhost", &host), ("envoy", &planted))
            .err()
            .unwrap_or_default();
        assert!(
            err.contains(r#"response header x-planted: wasmhost None vs envoy Some("1")"#),
            "{err}"
        );
        let others = base(&[("x-a", "1")], b"ko", 2, &[("x-extra", "1")]);
        let err = compare_all(&scenario, ("wasmhost", &host), ("envoy", &others))
            .err()
            .unwrap_or_default();
        assert!(err.contains("body: "), "{err}");
        assert!(
            err.contains("metric switchyard.probe.requests: wasmhost Some(1) vs envoy Some(2)"),
            "{err}"
        );
        assert!(err.contains("upstream header x-extra"), "{err}");
        assert!(err.contains("response header content-length"), "{err}");
        assert!(!err.contains("upstream_rq_total"), "{err}");
        // Masking keeps the rest of a value compared.
        let miss = base(
            &[
                ("x-a", "1"),
                ("content-length", "2"),
                ("age", "0"),
                ("cache-status", "switchyard; fwd=miss; ttl=300"),
            ],
            b"ok",
            1,
            &[],
        );
        let err = compare_all(&scenario, ("wasmhost", &host), ("envoy", &miss))
            .err()
            .unwrap_or_default();
        assert!(
            err.contains(r#"wasmhost Some("switchyard; hit; ttl=(clock)") vs envoy Some("switchyard; fwd=miss; ttl=(clock)")"#),
            "{err}"
        );
    }
}
