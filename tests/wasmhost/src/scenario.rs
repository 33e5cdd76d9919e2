//! Filter scenarios defined once and run on two backends: this host ([`run_on_host`]) and a real
//! Envoy (the fidelity tests drive `switchyard-harness` with the same [`Scenario`]). Both
//! backends turn each step's response into an [`Observed`]; the fidelity tests assert that every
//! step meets its expectations on both and that the two observations are identical.
//!
//! The host emulates the project's upstream test server (`switchyard-upstream`) just enough for
//! the observations: status from `?status=` or `x-echo-status`, `x-upstream-id`, extra
//! `?header=Name:Value` headers, and a JSON echo body.

use crate::host::Host;
use crate::types::{header_lossy, Message};
use std::time::Duration;

/// Looks up a request header as the upstream saw it.
pub type HeaderLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Upstream id both backends use.
pub const UPSTREAM_ID: &str = "u1";
/// Cluster name both backends route to.
pub const CLUSTER: &str = "backend";

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

    /// Builds the observation from a backend's view of the response.
    pub fn observe(
        &self,
        status: u32,
        response_header: impl Fn(&str) -> Option<String>,
        upstream_header: Option<HeaderLookup<'_>>,
        body: &str,
    ) -> Observed {
        Observed {
            status,
            recorded: self
                .record_headers
                .iter()
                .map(|name| (name.clone(), response_header(name)))
                .chain(self.record_upstream_headers.iter().map(|name| {
                    (
                        format!("upstream {name}"),
                        upstream_header.and_then(|get| get(name)),
                    )
                }))
                .collect(),
            headers: self
                .expect_headers
                .iter()
                .map(|(name, _)| (name.clone(), response_header(name)))
                .collect(),
            upstream_reached: upstream_header.is_some(),
            upstream_headers: match upstream_header {
                Some(get) => self
                    .expect_upstream_headers
                    .iter()
                    .map(|(name, _)| (name.clone(), get(name)))
                    .collect(),
                None => Vec::new(),
            },
            body_matches: self
                .expect_body_contains
                .as_ref()
                .map(|text| body.contains(text.as_str())),
        }
    }

    /// Checks an observation against this step's expectations.
    pub fn check(&self, observed: &Observed) -> Result<(), String> {
        let mut problems = Vec::new();
        if let Some(status) = self.expect_status {
            if observed.status != status {
                problems.push(format!("status {} (expected {status})", observed.status));
            }
        }
        for ((name, expected), (_, got)) in self.expect_headers.iter().zip(&observed.headers) {
            if expected != got {
                problems.push(format!(
                    "response header {name}: {got:?} (expected {expected:?})"
                ));
            }
        }
        if let Some(reached) = self.expect_upstream {
            if observed.upstream_reached != reached {
                problems.push(format!(
                    "upstream reached: {} (expected {reached})",
                    observed.upstream_reached
                ));
            }
        }
        if observed.upstream_reached {
            for ((name, expected), (_, got)) in self
                .expect_upstream_headers
                .iter()
                .zip(&observed.upstream_headers)
            {
                if expected != got {
                    problems.push(format!(
                        "upstream header {name}: {got:?} (expected {expected:?})"
                    ));
                }
            }
        }
        if observed.body_matches == Some(false) {
            problems.push(format!(
                "body does not contain {:?}",
                self.expect_body_contains.as_deref().unwrap_or("")
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// What a backend showed for one step (only what the step's expectations look at).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub status: u32,
    /// Values of the recorded headers (`upstream <name>` for upstream request headers).
    pub recorded: Vec<(String, Option<String>)>,
    pub headers: Vec<(String, Option<String>)>,
    pub upstream_reached: bool,
    pub upstream_headers: Vec<(String, Option<String>)>,
    pub body_matches: Option<bool>,
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

/// Emulates `switchyard-upstream`'s answer to a request.
pub fn emulate_upstream(request: &Message) -> Message {
    let path = request.header(":path").unwrap_or("/");
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
    let mut headers = vec![
        (":status".to_string(), status.to_string().into_bytes()),
        ("x-upstream-id".to_string(), UPSTREAM_ID.as_bytes().to_vec()),
        ("content-type".to_string(), b"application/json".to_vec()),
    ];
    for (_, v) in query.iter().filter(|(k, _)| k == "header") {
        if let Some((name, value)) = v.split_once(':') {
            headers.push((
                name.trim().to_ascii_lowercase(),
                value.trim().as_bytes().to_vec(),
            ));
        }
    }
    let mut echoed = serde_json::Map::new();
    for (k, v) in request.headers.iter().filter(|(k, _)| !k.starts_with(':')) {
        let v = String::from_utf8_lossy(v);
        let joined = match echoed.get(k).and_then(|e| e.as_str()) {
            Some(prev) => format!("{prev}, {v}"),
            None => v.into_owned(),
        };
        echoed.insert(k.clone(), serde_json::Value::String(joined));
    }
    let body = serde_json::json!({
        "upstream": UPSTREAM_ID,
        "method": request.header(":method").unwrap_or("GET"),
        "path": path.split('?').next().unwrap_or("/"),
        "headers": echoed,
        "body_len": request.body.len(),
    });
    Message {
        headers,
        body: body.to_string().into_bytes(),
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

/// Runs a scenario on this host with `workers` worker VMs, alternating requests across them
/// (Envoy spreads connections over its workers too). Fails on a host error, not on unmet
/// expectations: those are for [`check_all`].
pub fn run_on_host(scenario: &Scenario, workers: usize) -> Result<Vec<Observed>, String> {
    let config = scenario.config.to_string();
    let mut host = Host::filter(&scenario.filter)
        .map_err(|e| e.to_string())?
        .workers(workers)
        .property("cluster_name", CLUSTER)
        .configure(config)
        .map_err(|e| e.to_string())?;
    host.set_upstream(emulate_upstream);
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
        let upstream = out.upstream.clone();
        let upstream_get = upstream.as_ref().map(|m| {
            move |name: &str| -> Option<String> {
                let values: Vec<String> = m
                    .headers
                    .iter()
                    .filter(|(k, _)| k == name)
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                    .collect();
                (!values.is_empty()).then(|| values.join(", "))
            }
        });
        let upstream_dyn: Option<HeaderLookup<'_>> = upstream_get
            .as_ref()
            .map(|f| f as &dyn Fn(&str) -> Option<String>);
        observed.push(step.observe(
            response.status().unwrap_or(0),
            |name| header_lossy(&response.headers, name),
            upstream_dyn,
            &response.body_text(),
        ));
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
        let by_header = emulate_upstream(&msg(&[(":path", "/"), ("x-echo-status", "201")]));
        assert_eq!(by_header.status(), Some(201));
    }

    #[test]
    fn check_reports_each_unmet_expectation() {
        let step = Step::get("/")
            .status(429)
            .expect_header("x-a", "1")
            .expect_no_header("x-b")
            .upstream(false);
        let good = step.observe(429, |n| (n == "x-a").then(|| "1".to_string()), None, "");
        assert_eq!(step.check(&good), Ok(()));
        let get = |_: &str| Some("v".to_string());
        let bad = step.observe(200, |_| Some("2".to_string()), Some(&get), "");
        let err = step.check(&bad).err().unwrap_or_default();
        assert!(err.contains("status 200"), "{err}");
        assert!(err.contains("x-a"), "{err}");
        assert!(err.contains("x-b"), "{err}");
        assert!(err.contains("upstream reached: true"), "{err}");
    }
}
