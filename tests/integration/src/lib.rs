//! Shared helpers for the integration tests in `tests/`. The harness itself is
//! `switchyard_harness` (real Envoy) and the upstream is `switchyard_upstream`; both are
//! re-exported here so a test file needs one `use switchyard_integration::*`.

pub use serde_json::{json, Value};
pub use switchyard_harness::{
    eventually, parallel, wait_until, Cluster, Connection, Envoy, EnvoyBuilder, Request, Response,
    StartError, WasmFilter,
};
pub use switchyard_upstream::{RecordedRequest, Upstream};

/// Starts an upstream named `id`, panicking (failing the test) if it cannot bind.
pub fn upstream(id: &str) -> Upstream {
    match Upstream::start(id) {
        Ok(up) => up,
        Err(e) => panic!("cannot start upstream {id}: {e}"),
    }
}

/// Upstreams `u1`, `u2`, `u3`, each on a free loopback port.
pub fn three_upstreams() -> Vec<Upstream> {
    ["u1", "u2", "u3"].iter().map(|id| upstream(id)).collect()
}

/// Envoy with no filters proxying everything to `up` (cluster `backend`).
pub fn plain_proxy(up: &Upstream) -> Envoy {
    Envoy::builder().cluster("backend", [up.addr()]).start()
}

/// Asserts that Envoy accepts the repository's configuration file `file` (a path relative to the
/// workspace root) with `envoy --mode validate`, which also loads every wasm module it names.
pub fn assert_envoy_accepts(file: &str) {
    let out = std::process::Command::new(switchyard_harness::envoy_bin())
        .args(["--mode", "validate", "-c", file, "--disable-hot-restart"])
        .current_dir(switchyard_harness::workspace_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run envoy --mode validate: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{file} rejected:\n{text}");
    assert!(
        text.contains(&format!("configuration '{file}' OK")),
        "{text}"
    );
}

/// The cache's `x-cache` on a response (`<none>` if absent).
pub fn x_cache(r: &Response) -> &str {
    r.header("x-cache").unwrap_or("<none>")
}

/// A response's `Age`, failing the test if it has none.
pub fn age(r: &Response) -> u64 {
    r.header("age")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no Age: {:?}", r.headers))
}

/// Percent-encodes everything but unreserved characters and `:` / `/`, for a query value.
pub fn query_escape(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~:/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `header=<name>:<value>` for the upstream test server (the response gets that header).
pub fn upstream_header(name: &str, value: &str) -> String {
    format!("header={name}:{}", query_escape(value))
}

/// `Cache-Control: <value>` on the upstream's response, as a query parameter.
pub fn cc(value: &str) -> String {
    upstream_header("Cache-Control", value)
}

/// How many of `results` were admitted (200) and rejected (429); any other status or a failed
/// request fails the test.
pub fn ok_and_limited(results: &[std::io::Result<Response>]) -> (usize, usize) {
    let mut ok = 0;
    let mut limited = 0;
    for r in results {
        match r {
            Ok(r) if r.status == 200 => ok += 1,
            Ok(r) if r.status == 429 => limited += 1,
            Ok(r) => panic!("unexpected status {} {}", r.status, r.text()),
            Err(e) => panic!("request failed: {e}"),
        }
    }
    (ok, limited)
}
