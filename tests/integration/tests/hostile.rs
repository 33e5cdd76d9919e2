//! Hostile-but-legal request bytes against a real Envoy 1.40 (`--concurrency 2`): header values
//! carrying obs-text (bytes >= 0x80, RFC 9110 §5.5), e.g. `X-User-Id: caf\xe9`, used to panic the
//! filters' wasm VMs; every later request on that worker then got Envoy's `503`
//! (`wasm_fail_stream`). For each filter alone and for the whole chain these tests send one request
//! with obs-text in several headers at once (over a raw socket: the bytes are not UTF-8), then
//! normal requests on new connections (so both workers serve some), asserting that every one is
//! served and that the filter still does its job — including for keys and validators made of
//! obs-text bytes (the same bytes are the same key, different bytes a different one).
//!
//! The hostile request also carries a 64 KiB header value (with obs-text); Envoy's default
//! `max_request_headers_kb` (60) would answer it with `431` itself, so these listeners allow 96.
//! Filters run with the harness's `failure_policy: FAIL_RELOAD` (a trap shows as the hostile
//! request's `503`, a `wasm.<vm>.vm_reload*` stat and a log line, all asserted absent); the chain
//! runs once more with `FAIL_CLOSED`, where a trap also fails the worker's later requests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use switchyard_harness::yaml::{OVERRIDE_HOST_CLUSTER, RETRIES, ROUTE_BY_CLUSTER_HEADER};
use switchyard_harness::{eventually, Cluster, Envoy, EnvoyBuilder, WasmFilter};
use switchyard_hashring::config::Config as HashringConfig;
use switchyard_integration::three_upstreams;
use switchyard_upstream::Upstream;

const TIMEOUT: Duration = Duration::from_secs(15);
/// Envoy's default request header limit is 60 KiB; raised so a 64 KiB value reaches the filters.
const HCM_LIMITS: &str = "max_request_headers_kb: 96";
/// Normal requests after the hostile one, each on its own connection.
const NORMAL: usize = 20;

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client: header values are bytes, and so are the response's.

#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
}

impl Req {
    fn get(path: &str) -> Req {
        Req::method("GET", path)
    }

    fn method(method: &str, path: &str) -> Req {
        Req {
            method: method.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
        }
    }

    fn h(mut self, name: &str, value: impl AsRef<[u8]>) -> Req {
        self.headers
            .push((name.to_string(), value.as_ref().to_vec()));
        self
    }

    fn hs(mut self, headers: &[(&str, Vec<u8>)]) -> Req {
        for (k, v) in headers {
            self = self.h(k, v);
        }
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "{} {} HTTP/1.1\r\nHost: switchyard.test\r\n",
            self.method, self.path
        )
        .into_bytes();
        for (k, v) in &self.headers {
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Connection: close\r\n\r\n");
        out
    }

    /// Sends the request on a new connection and reads the whole answer (Envoy closes the
    /// connection after it). Panics with a description when there is no complete HTTP answer.
    fn send(&self, envoy: &Envoy) -> Resp {
        match raw_roundtrip(envoy.listen_addr(), &self.bytes(), &self.method) {
            Ok(r) => r,
            Err(e) => panic!(
                "{} {} (headers {:?}): no HTTP answer: {e}",
                self.method,
                self.path,
                self.headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.len()))
                    .collect::<Vec<_>>()
            ),
        }
    }
}

#[derive(Debug, Clone)]
struct Resp {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// A header as text (obs-text shown lossily), `""` when absent.
    fn text_of(&self, name: &str) -> String {
        self.header(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    }

    fn upstream(&self) -> String {
        self.text_of("x-upstream-id")
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text()))
    }

    fn describe(&self) -> String {
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v)))
            .collect();
        format!("{} {headers:?} {}", self.status, self.text())
    }
}

fn raw_roundtrip(addr: SocketAddr, request: &[u8], method: &str) -> std::io::Result<Resp> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.set_nodelay(true)?;
    stream.write_all(request)?;
    stream.flush()?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                // Complete by its framing: return without waiting for Envoy to close (after a
                // local reply it waits up to `delayed_close_timeout` for the client to close).
                if let Ok(resp) = parse_response(&raw, method, false) {
                    return Ok(resp);
                }
            }
            // A reset after a complete answer is still an answer; parse() decides.
            Err(e) if e.kind() == ErrorKind::ConnectionReset && !raw.is_empty() => break,
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("{e} after {} bytes: {:?}", raw.len(), lossy_head(&raw)),
                ))
            }
        }
    }
    parse_response(&raw, method, true)
}

fn lossy_head(raw: &[u8]) -> String {
    String::from_utf8_lossy(&raw[..raw.len().min(300)]).into_owned()
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(ErrorKind::InvalidData, msg)
}

/// One response from `raw`; an error while it is incomplete. A body delimited by the end of
/// the connection is complete only at `eof`.
fn parse_response(raw: &[u8], method: &str, eof: bool) -> std::io::Result<Resp> {
    let mut rest = raw;
    loop {
        if rest.is_empty() {
            return Err(invalid("connection closed without an answer".into()));
        }
        let end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| invalid(format!("incomplete response head: {:?}", lossy_head(rest))))?;
        let head = &rest[..end];
        let body = &rest[end + 4..];
        let mut lines = head
            .split(|b| *b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let status_line = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
        let mut parts = status_line.splitn(3, ' ');
        if !parts.next().unwrap_or_default().starts_with("HTTP/1.") {
            return Err(invalid(format!(
                "not an HTTP/1.x status line: {status_line:?}"
            )));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        for line in lines {
            let colon = line
                .iter()
                .position(|b| *b == b':')
                .ok_or_else(|| invalid(format!("bad header line {:?}", lossy_head(line))))?;
            let name = String::from_utf8_lossy(&line[..colon]).trim().to_string();
            let value = trim_ows(&line[colon + 1..]).to_vec();
            headers.push((name, value));
        }
        if (100..200).contains(&status) {
            rest = body;
            continue;
        }
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        if method.eq_ignore_ascii_case("HEAD") || status == 204 || status == 304 {
            return Ok(resp);
        }
        let chunked = resp.header("transfer-encoding").is_some_and(|v| {
            String::from_utf8_lossy(v)
                .to_ascii_lowercase()
                .contains("chunked")
        });
        if chunked {
            resp.body = dechunk(body)?;
        } else if let Some(len) = resp.header("content-length") {
            let len: usize = String::from_utf8_lossy(len)
                .parse()
                .map_err(|_| invalid("bad content-length".into()))?;
            if body.len() < len {
                return Err(invalid(format!(
                    "truncated body: {} of {len} bytes",
                    body.len()
                )));
            }
            resp.body = body[..len].to_vec();
        } else if eof {
            resp.body = body.to_vec();
        } else {
            return Err(invalid("body delimited by the connection's end".into()));
        }
        return Ok(resp);
    }
}

fn dechunk(mut data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| invalid("truncated chunk size".into()))?;
        let size_text = String::from_utf8_lossy(&data[..eol]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| invalid(format!("bad chunk size {size_text:?}")))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err(invalid("truncated chunk".into()));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn trim_ows(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !matches!(c, b' ' | b'\t'));
    let end = b.iter().rposition(|c| !matches!(c, b' ' | b'\t'));
    match (start, end) {
        (Some(s), Some(e)) => &b[s..=e],
        _ => &[],
    }
}

// ---------------------------------------------------------------------------------------------
// The hostile request and the checks shared by every setup.

/// `caf\xe9`: "café" in Latin-1, not UTF-8.
const CAFE_LATIN1: &[u8] = b"caf\xe9";

/// 64 KiB of text with an obs-text byte every 61 bytes.
fn big_value() -> Vec<u8> {
    (0..64 * 1024)
        .map(|i| {
            if i % 61 == 60 {
                0xe9
            } else {
                b'a' + (i % 26) as u8
            }
        })
        .collect()
}

/// Obs-text in several headers at once, each one a filter reads somewhere.
fn hostile_headers() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("x-user-id", CAFE_LATIN1.to_vec()),
        ("if-none-match", b"\"abc\xfc\"".to_vec()),
        ("cookie", b"s=\xfc\xfd; session=\xe9\xe8".to_vec()),
        ("x-forwarded-for", b"\xff, 1.2.3.4".to_vec()),
        ("x-canary", b"\xe9".to_vec()),
        ("authorization", b"Bearer \xff".to_vec()),
        ("accept-language", b"fr-\xe9".to_vec()),
        ("x-big", big_value()),
    ]
}

fn builder() -> EnvoyBuilder {
    // The harness default; asserted here because the whole point is a second worker VM.
    Envoy::builder().concurrency(2).hcm_extra(HCM_LIMITS)
}

/// A response that is not Envoy's `503` for a failed wasm VM.
fn assert_served(resp: &Resp, what: &str) {
    assert_ne!(resp.status, 503, "{what}: {}", resp.describe());
    assert!(
        !resp.text().contains("wasm"),
        "{what}: looks like a wasm failure: {}",
        resp.describe()
    );
}

/// Connections accepted by each of the two workers.
fn worker_connections(envoy: &Envoy) -> Vec<u64> {
    let stats = envoy.stats();
    (0..2)
        .map(|w| {
            stats
                .iter()
                .filter(|(name, _)| {
                    name.starts_with("listener.127.0.0.1_")
                        && name.ends_with(&format!(".worker_{w}.downstream_cx_total"))
                })
                .map(|(_, v)| *v)
                .sum()
        })
        .collect()
}

/// `n` requests, each on its own connection, every one served and checked.
fn burst(envoy: &Envoy, n: usize, make: impl Fn(usize) -> Req, check: impl Fn(usize, &Resp)) {
    for i in 0..n {
        let req = make(i);
        let resp = req.send(envoy);
        assert_served(&resp, &format!("normal request #{i} {}", req.path));
        check(i, &resp);
    }
}

/// After the run: both workers served connections, no wasm VM failed (stats and log).
fn assert_healthy_after(envoy: &Envoy) {
    let per_worker = worker_connections(envoy);
    assert!(
        per_worker.iter().all(|c| *c > 0),
        "both workers must have served connections: {per_worker:?}"
    );
    let stats = envoy.stats();
    let wasm: Vec<(&String, &u64)> = stats.iter().filter(|(k, _)| k.contains("wasm")).collect();
    let failures: Vec<_> = wasm
        .iter()
        .filter(|(k, v)| {
            let k = k.to_ascii_lowercase();
            (k.contains("fail") || k.contains("crash") || k.contains("trap") || k.contains("panic"))
                && !k.starts_with("wasmcustom.")
                && **v > 0
        })
        .collect();
    assert!(failures.is_empty(), "wasm failure stats: {failures:?}");
    // Under FAIL_RELOAD (the harness default) a crashed VM is replaced: any reload is a crash.
    let reloads: Vec<_> = wasm
        .iter()
        .filter(|(k, v)| k.starts_with("wasm.") && k.contains(".vm_reload") && **v > 0)
        .collect();
    assert!(reloads.is_empty(), "wasm VM reloads: {reloads:?}");
    let log = envoy.log();
    for needle in ["wasm_fail_stream", "Uncaught", "panicked at", "unreachable"] {
        let hits: Vec<&str> = log.lines().filter(|l| l.contains(needle)).take(5).collect();
        assert!(
            hits.is_empty(),
            "Envoy log mentions {needle:?}:\n{}",
            hits.join("\n")
        );
    }
}

fn stat(envoy: &Envoy, name: &str) -> u64 {
    envoy.stat_value(name)
}

// ---------------------------------------------------------------------------------------------
// ratelimit

#[test]
fn ratelimit_survives_obs_text_headers_and_still_limits_by_exact_bytes() {
    let up = Upstream::start("u1").unwrap();
    let envoy = builder()
        .wasm_filter(
            "ratelimit",
            json!({
                "rules": [
                    {"name": "per-user",
                     "match": {"path": {"prefix": "/limited"},
                               "not": {"headers": [{"name": "x-canary", "exact": "skip"}]}},
                     "key": [{"header": "x-user-id"}],
                     "limits": [{"requests": 4, "per": "1h"}]},
                    {"name": "per-session",
                     "match": {"path": {"prefix": "/limited"}},
                     "key": [{"cookie": "s"}],
                     "limits": [{"requests": 1000, "per": "30d"}]},
                    {"name": "per-ip",
                     "match": {"path": {"prefix": "/limited"}},
                     "key": [{"client_ip": {"trusted_hops": 2}}],
                     "limits": [{"requests": 1000, "per": "30d"}]}
                ]
            }),
        )
        .cluster("backend", [up.addr()])
        .start();

    // The hostile request: admitted (first of 4 for the key `caf\xe9`), answered by the upstream.
    let resp = Req::get("/limited/hostile")
        .hs(&hostile_headers())
        .send(&envoy);
    assert_served(&resp, "hostile request");
    assert_eq!(resp.status, 200, "{}", resp.describe());
    assert_eq!(resp.upstream(), "u1");
    let rl = resp.text_of("ratelimit");
    assert!(rl.contains("\"per-user\";r=3;"), "{rl}");
    assert!(rl.contains("\"per-session\";r=999;"), "{rl}");
    assert!(rl.contains("\"per-ip\";r=999;"), "{rl}");

    // Normal traffic on new connections: every request served.
    burst(
        &envoy,
        NORMAL,
        |i| Req::get(&format!("/free/{i}")),
        |_, r| assert_eq!((r.status, r.upstream().as_str()), (200, "u1")),
    );

    // A key with limit 4 admits exactly 4, then 429.
    let user = |id: &[u8]| Req::get("/limited/x").h("x-user-id", id);
    let statuses = |id: &[u8], n: usize| -> Vec<u16> {
        (0..n).map(|_| user(id).send(&envoy).status).collect()
    };
    assert_eq!(statuses(b"alice", 5), [200, 200, 200, 200, 429]);
    // The obs-text key is one bucket: the hostile request used one of its 4.
    assert_eq!(statuses(CAFE_LATIN1, 4), [200, 200, 200, 429]);
    let limited = user(CAFE_LATIN1).send(&envoy);
    assert_eq!(limited.status, 429, "{}", limited.describe());
    assert!(
        limited.header("retry-after").is_some(),
        "{}",
        limited.describe()
    );
    assert_eq!(limited.json()["rule"], "per-user");
    // Different bytes are different buckets: Latin-1 vs another byte vs UTF-8 "café".
    assert_eq!(statuses(b"caf\xe8", 5), [200, 200, 200, 200, 429]);
    assert_eq!(statuses("café".as_bytes(), 5), [200, 200, 200, 200, 429]);
    // A cookie made of obs-text is a key too (a tight rule would be needed to see its limit;
    // here it must just be counted once per request, see the header's `r`).
    let r = user(b"bob").h("cookie", b"s=\xfc\xfd").send(&envoy);
    assert_eq!(r.status, 200);
    assert!(
        r.text_of("ratelimit").contains("\"per-session\";r=998;"),
        "{}",
        r.describe()
    );

    // The decisions above, counted exactly: 1 + 4 + 3 + 4 + 4 + 1 admitted, 1 + 2 + 1 + 1
    // rejected; the obs-text cookie was a key twice (hostile request and bob).
    let counts = || {
        [
            "per-user.allowed",
            "per-user.limited",
            "per-session.allowed",
            "per-ip.allowed",
        ]
        .map(|n| stat(&envoy, &format!("switchyard.ratelimit.{n}")))
    };
    assert!(
        eventually(Duration::from_secs(5), || counts() == [17, 5, 2, 17]),
        "{:?}",
        counts()
    );
    assert_healthy_after(&envoy);
}

// ---------------------------------------------------------------------------------------------
// cache

fn cc(value: &str) -> String {
    let enc = value
        .replace('=', "%3D")
        .replace(',', "%2C")
        .replace(' ', "%20");
    format!("header=Cache-Control:{enc}")
}

fn cache_config() -> Value {
    json!({
        "max_bytes": 1 << 20,
        "max_entry_bytes": 65536,
        "eviction": "lru",
        "key": {"query": "all", "headers": ["x-user-id"]},
        "default_ttl": "0s",
        "bypass": [{"path": {"prefix": "/admin"}}],
        "purge": {"method": "PURGE", "token_header": "x-purge-token", "token": "s3cret", "path": "/__purge"},
        "upstream_cluster": "web"
    })
}

/// An obs-text ETag such as `"abc\xfc"`, which the upstream test server cannot send (its header
/// values must be visible ASCII) and a bootstrap cannot spell (proto strings are UTF-8;
/// `raw_value` is ignored in `response_headers_to_add`): the route copies the bytes of the
/// request's `x-etag-src` into the response's ETag, before the cache sees the response.
const OBS_ETAG_ROUTE: &str = r#"
match: { prefix: "/obs-etag" }
route: { cluster: web }
response_headers_to_add:
- header: { key: etag, value: "%REQ(x-etag-src)%" }
  append_action: OVERWRITE_IF_EXISTS_OR_ADD
"#;

fn x_cache(r: &Resp) -> String {
    r.text_of("x-cache")
}

#[test]
fn cache_survives_obs_text_headers_and_still_hits_and_validates() {
    let up = Upstream::start("u1").unwrap();
    let envoy = builder()
        .wasm_filter("cache", cache_config())
        .cluster("web", [up.addr()])
        .route(OBS_ETAG_ROUTE)
        .start();

    // The hostile request (with Authorization, If-None-Match, a cache-key header in obs-text):
    // forwarded, answered by the upstream, not stored because of Authorization.
    let hostile_path = format!("/hostile?{}", cc("max-age=600"));
    let resp = Req::get(&hostile_path).hs(&hostile_headers()).send(&envoy);
    assert_served(&resp, "hostile request");
    assert_eq!(resp.status, 200, "{}", resp.describe());
    assert_eq!(resp.upstream(), "u1");
    assert_eq!(x_cache(&resp), "MISS", "{}", resp.describe());
    assert_eq!(
        resp.text_of("cache-status"),
        "switchyard; fwd=miss; detail=authorization"
    );

    // A cacheable GET: MISS, then HIT on every connection (both workers).
    let path = format!("/page?{}", cc("max-age=600"));
    burst(
        &envoy,
        NORMAL,
        |_| Req::get(&path),
        |i, r| {
            assert_eq!(r.status, 200, "{}", r.describe());
            let want = if i == 0 { "MISS" } else { "HIT" };
            assert_eq!(x_cache(r), want, "#{i}: {}", r.describe());
            if i > 0 {
                assert!(r
                    .text_of("cache-status")
                    .starts_with("switchyard; hit; ttl="));
            }
        },
    );
    assert_eq!(up.count_path("/page"), 1);

    // The obs-text cache-key header: the same bytes hit the same entry, other bytes miss.
    let keyed = format!("/keyed?{}", cc("max-age=600"));
    let get_as = |id: &[u8]| Req::get(&keyed).h("x-user-id", id).send(&envoy);
    assert_eq!(x_cache(&get_as(CAFE_LATIN1)), "MISS");
    assert_eq!(x_cache(&get_as(CAFE_LATIN1)), "HIT");
    assert_eq!(x_cache(&get_as(b"caf\xe8")), "MISS");
    assert_eq!(x_cache(&get_as("café".as_bytes())), "MISS");
    assert_eq!(x_cache(&get_as(CAFE_LATIN1)), "HIT");
    assert_eq!(up.count_path("/keyed"), 3);

    // The normal conditional path: a client's If-None-Match against a fresh entry is a 304
    // from the cache.
    let tagged = format!("/tagged?etag=v1&{}", cc("max-age=600"));
    let first = Req::get(&tagged).send(&envoy);
    assert_eq!((first.status, x_cache(&first).as_str()), (200, "MISS"));
    assert_eq!(first.header("etag"), Some(&b"\"v1\""[..]));
    let r = Req::get(&tagged).h("if-none-match", "\"v1\"").send(&envoy);
    assert_eq!(r.status, 304, "{}", r.describe());
    let r = Req::get(&tagged)
        .h("if-none-match", b"\"v1\xfc\"")
        .send(&envoy);
    assert_eq!(
        (r.status, x_cache(&r).as_str()),
        (200, "HIT"),
        "{}",
        r.describe()
    );
    assert_eq!(up.count_path("/tagged"), 1);

    // An obs-text ETag stored by the cache: the same bytes in If-None-Match are a 304, other
    // bytes (or the UTF-8 spelling) get the full response.
    let obs = format!("/obs-etag?{}", cc("max-age=600"));
    let first = Req::get(&obs).h("x-etag-src", b"\"abc\xfc\"").send(&envoy);
    assert_eq!(
        (first.status, x_cache(&first).as_str()),
        (200, "MISS"),
        "{}",
        first.describe()
    );
    assert_eq!(
        first.header("etag"),
        Some(&b"\"abc\xfc\""[..]),
        "{}",
        first.describe()
    );
    let hit = Req::get(&obs).send(&envoy);
    assert_eq!(
        (hit.status, x_cache(&hit).as_str()),
        (200, "HIT"),
        "{}",
        hit.describe()
    );
    assert_eq!(hit.header("etag"), Some(&b"\"abc\xfc\""[..]));
    for inm in [
        &b"\"abc\xfc\""[..],
        &b"W/\"abc\xfc\""[..],
        &b"\"zzz\", \"abc\xfc\""[..],
    ] {
        let r = Req::get(&obs).h("if-none-match", inm).send(&envoy);
        assert_eq!(
            r.status,
            304,
            "{:?}: {}",
            String::from_utf8_lossy(inm),
            r.describe()
        );
        assert_eq!(r.header("etag"), Some(&b"\"abc\xfc\""[..]));
    }
    for inm in [&b"\"abc\xfd\""[..], "\"abcü\"".as_bytes()] {
        let r = Req::get(&obs).h("if-none-match", inm).send(&envoy);
        assert_eq!(
            (r.status, x_cache(&r).as_str()),
            (200, "HIT"),
            "{:?}: {}",
            String::from_utf8_lossy(inm),
            r.describe()
        );
    }
    assert_eq!(up.count_path("/obs-etag"), 1);

    assert!(eventually(Duration::from_secs(5), || stat(
        &envoy,
        "switchyard.cache.hits"
    ) >= NORMAL as u64));
    assert_healthy_after(&envoy);
}

// ---------------------------------------------------------------------------------------------
// router

fn router_routes() -> Value {
    json!([
        {"name": "health", "match": {"path": {"exact": "/healthz"}},
         "action": {"respond": {"status": 200, "body": "ok", "headers": {"content-type": "text/plain"}}}},
        {"name": "canary", "match": {"path": {"prefix": "/api/"}, "headers": [{"name": "x-canary", "exact": "always"}]},
         "action": {"cluster": "api-v2"}},
        {"name": "api-split", "match": {"path": {"prefix": "/api/"}},
         "action": {"weighted": [{"cluster": "api-v1", "weight": 50}, {"cluster": "api-v2", "weight": 50}],
                    "sticky": [{"header": "x-user-id"}, {"cookie": "session"}]}},
        {"name": "users", "match": {"path": {"template": "/users/{id}"}, "methods": ["GET"]},
         "action": {"cluster": "users", "rewrite": {"path": "/v1/users/{id}"},
                    "request_headers": {"set": {"x-route": "users"}, "remove": ["x-debug"]},
                    "response_headers": {"set": {"x-served-by": "users"}}}},
        {"name": "beta", "match": {"cookies": [{"name": "tier", "exact": "gold"}]},
         "action": {"cluster": "api-v2"}},
        {"name": "web", "match": {"path": {"prefix": "/web/"}}, "action": {"cluster": "web"}}
    ])
}

/// Path, request headers, expected status and upstream.
type RouteCase = (
    &'static str,
    &'static [(&'static str, &'static [u8])],
    u16,
    &'static str,
);

const ROUTE_CASES: [RouteCase; 5] = [
    ("/users/42", &[("x-debug", b"1")], 200, "users"),
    ("/api/orders", &[("x-canary", b"always")], 200, "v2"),
    ("/web/index", &[], 200, "web"),
    ("/healthz", &[], 200, ""),
    ("/nowhere/else", &[], 404, ""),
];

#[test]
fn router_survives_obs_text_headers_and_still_routes() {
    let ups: Vec<Upstream> = ["web", "v1", "v2", "users"]
        .iter()
        .map(|id| Upstream::start(id).unwrap())
        .collect();
    // No default: an unmatched path gets the router's 404.
    let envoy = builder()
        .wasm_filter(
            "router",
            json!({
                "cluster_header": "x-switchyard-cluster",
                "known_clusters": ["web", "api-v1", "api-v2", "users"],
                "routes": router_routes(),
                "explain": true,
                "version_header": true
            }),
        )
        .cluster("web", [ups[0].addr()])
        .cluster("api-v1", [ups[1].addr()])
        .cluster("api-v2", [ups[2].addr()])
        .cluster("users", [ups[3].addr()])
        .route(ROUTE_BY_CLUSTER_HEADER)
        .route_to("web")
        .start();

    // The hostile request: x-canary `\xe9` is not "always", so the sticky split on the obs-text
    // user id decides.
    let resp = Req::get("/api/orders").hs(&hostile_headers()).send(&envoy);
    assert_served(&resp, "hostile request");
    assert_eq!(resp.status, 200, "{}", resp.describe());
    let sticky_upstream = resp.upstream();
    assert!(
        ["v1", "v2"].contains(&sticky_upstream.as_str()),
        "{}",
        resp.describe()
    );
    let explain = resp.text_of("x-switchyard-route");
    assert!(explain.contains("route=api-split"), "{explain}");
    // Unmatched, with obs-text everywhere: the router's 404.
    let resp = Req::get("/nowhere").hs(&hostile_headers()).send(&envoy);
    assert_eq!(resp.status, 404, "{}", resp.describe());
    assert!(
        resp.text().contains("no route matches"),
        "{}",
        resp.describe()
    );

    // Normal traffic: every kind of route still works on both workers.
    let cases = ROUTE_CASES;
    burst(
        &envoy,
        NORMAL,
        |i| {
            let (path, headers, _, _) = cases[i % cases.len()];
            let mut req = Req::get(path);
            for (k, v) in headers {
                req = req.h(k, v);
            }
            req
        },
        |i, r| {
            let (path, _, status, upstream) = cases[i % cases.len()];
            assert_eq!(
                (r.status, r.upstream().as_str()),
                (status, upstream),
                "{path}: {}",
                r.describe()
            );
        },
    );
    let seen = ups[3].requests();
    assert!(seen
        .iter()
        .all(|q| q.path == "/v1/users/42" && q.header("x-debug").is_none()));
    assert!(!seen.is_empty());

    // Stickiness on obs-text bytes is stable, on both workers.
    for _ in 0..8 {
        let r = Req::get("/api/orders")
            .h("x-user-id", CAFE_LATIN1)
            .send(&envoy);
        assert_eq!(r.upstream(), sticky_upstream, "{}", r.describe());
        let r = Req::get("/api/orders")
            .h("cookie", b"session=\xe9\xe8")
            .send(&envoy);
        assert!(
            ["v1", "v2"].contains(&r.upstream().as_str()),
            "{}",
            r.describe()
        );
    }
    let cookie_sticky: BTreeSet<String> = (0..6)
        .map(|_| {
            Req::get("/api/x")
                .h("cookie", b"session=\xe9\xe8")
                .send(&envoy)
                .upstream()
        })
        .collect();
    assert_eq!(cookie_sticky.len(), 1, "{cookie_sticky:?}");
    // An obs-text cookie next to the one a route matches on does not hide it.
    let r = Req::get("/other")
        .h("cookie", b"s=\xfc\xfd; tier=gold")
        .send(&envoy);
    assert_eq!(
        (r.status, r.upstream().as_str()),
        (200, "v2"),
        "{}",
        r.describe()
    );

    // The hostile /nowhere plus every fifth request of the burst.
    let no_route = 1 + NORMAL.div_ceil(cases.len()) as u64;
    assert!(
        eventually(Duration::from_secs(5), || stat(
            &envoy,
            "switchyard.router.no_route"
        ) == no_route),
        "no_route {}",
        stat(&envoy, "switchyard.router.no_route")
    );
    assert_healthy_after(&envoy);
}

// ---------------------------------------------------------------------------------------------
// hashring

fn hashring_config(ups: &[Upstream]) -> Value {
    json!({
        "algorithm": "ring",
        "hosts": [
            {"address": ups[0].addr().to_string(), "weight": 1},
            {"address": ups[1].addr().to_string(), "weight": 1},
            {"address": ups[2].addr().to_string(), "weight": 2}
        ],
        "hash_key": [{"header": "x-user-id"}, {"cookie": "session"}, {"client_ip": {"trusted_hops": 0}}],
        "vnodes": 160,
        "fallbacks": 2,
        "output": {"header": "x-upstream-host"},
        "debug_header": "x-hash-explain"
    })
}

/// `key=...; hash=...; host=...; reason=...` → the field.
fn explain_field(r: &Resp, field: &str) -> String {
    let raw = r.text_of("x-hash-explain");
    raw.split("; ")
        .find_map(|kv| kv.strip_prefix(&format!("{field}=")))
        .unwrap_or_else(|| panic!("no {field} in x-hash-explain: {}", r.describe()))
        .to_string()
}

fn id_at(ups: &[Upstream], addr: &str) -> String {
    ups.iter()
        .find(|u| u.addr().to_string() == addr)
        .map(|u| u.id().to_string())
        .unwrap_or_else(|| panic!("{addr} is not a test upstream"))
}

/// The key text of a header value that is not printable UTF-8: a mark and the bytes in hex
/// (the documented key-source rule), so the native table can be asked about it.
fn hex_key(bytes: &[u8]) -> String {
    let mut s = String::from('\u{1e}');
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn native_primary(config: &Value, key: &str) -> String {
    let c = HashringConfig::parse(config.to_string().as_bytes()).unwrap();
    switchyard_hashring::primary_host(&c, key).unwrap()
}

#[test]
fn hashring_survives_obs_text_headers_and_keys_stay_stable() {
    let ups = three_upstreams();
    let config = hashring_config(&ups);
    let envoy = builder()
        .wasm_filter("hashring", config.clone())
        .cluster_with(
            Cluster::new("web", ups.iter().map(|u| u.addr())).extra(OVERRIDE_HOST_CLUSTER),
        )
        .virtual_host_extra(RETRIES)
        .start();

    let resp = Req::get("/item").hs(&hostile_headers()).send(&envoy);
    assert_served(&resp, "hostile request");
    assert_eq!(resp.status, 200, "{}", resp.describe());
    assert_eq!(explain_field(&resp, "key"), "header:x-user-id");
    let host = explain_field(&resp, "host");
    let hash = explain_field(&resp, "hash");
    assert_eq!(resp.upstream(), id_at(&ups, &host));
    // The module in Envoy agrees with the native table on the obs-text key.
    assert_eq!(host, native_primary(&config, &hex_key(CAFE_LATIN1)));

    // Normal traffic: the same key always reaches the same upstream, on both workers; the
    // obs-text key too, with the same hash as in the hostile request.
    let keys: [&[u8]; 5] = [b"alice", b"bob", b"carol", CAFE_LATIN1, b"caf\xe8"];
    let mut seen: Vec<BTreeSet<String>> = vec![BTreeSet::new(); keys.len()];
    let hashes: std::cell::RefCell<Vec<BTreeSet<String>>> =
        std::cell::RefCell::new(vec![BTreeSet::new(); keys.len()]);
    let results: std::cell::RefCell<Vec<(usize, String)>> = std::cell::RefCell::new(Vec::new());
    burst(
        &envoy,
        NORMAL,
        |i| Req::get("/item").h("x-user-id", keys[i % keys.len()]),
        |i, r| {
            assert_eq!(r.status, 200, "{}", r.describe());
            let k = i % keys.len();
            assert_eq!(r.upstream(), id_at(&ups, &explain_field(r, "host")));
            hashes.borrow_mut()[k].insert(explain_field(r, "hash"));
            results.borrow_mut().push((k, r.upstream()));
        },
    );
    for (k, id) in results.into_inner() {
        seen[k].insert(id);
    }
    let hashes = hashes.into_inner();
    for (k, key) in keys.iter().enumerate() {
        let key_text = match std::str::from_utf8(key) {
            Ok(s) => s.to_string(),
            Err(_) => hex_key(key),
        };
        let expected = id_at(&ups, &native_primary(&config, &key_text));
        assert_eq!(
            seen[k],
            BTreeSet::from([expected.clone()]),
            "key {:?}",
            String::from_utf8_lossy(key)
        );
        assert_eq!(hashes[k].len(), 1, "{:?}", hashes[k]);
    }
    assert_eq!(hashes[3], BTreeSet::from([hash]));
    assert_eq!(seen[3], BTreeSet::from([resp.upstream()]));
    // Different bytes, different hashes.
    assert_ne!(hashes[3], hashes[4]);

    // An obs-text session cookie is a key as well (x-user-id absent).
    let by_cookie: BTreeSet<(String, String)> = (0..6)
        .map(|_| {
            let r = Req::get("/item")
                .h("cookie", b"session=\xe9\xe8")
                .send(&envoy);
            assert_eq!(r.status, 200);
            assert_eq!(explain_field(&r, "key"), "cookie:session");
            (explain_field(&r, "hash"), r.upstream())
        })
        .collect();
    assert_eq!(by_cookie.len(), 1, "{by_cookie:?}");

    assert_healthy_after(&envoy);
}

// ---------------------------------------------------------------------------------------------
// the whole chain

/// ratelimit -> router -> cache -> hashring -> Envoy router: the order the README's *Filters in
/// a chain* section requires and `cargo xtask demo` builds, with clusters as in the demo topology
/// and the hashring acting only on `web` (its `clusters`), as in the demo.
/// The harness's (and every shipped configuration's) `failure_policy: FAIL_RELOAD`.
#[test]
fn full_chain_survives_obs_text_headers() {
    full_chain(None, false);
}

/// The same four configurations as stages of the suite module (`dist/switchyard.wasm`).
#[test]
fn suite_survives_obs_text_headers() {
    full_chain(None, true);
}

/// The same with `failure_policy: FAIL_CLOSED`, where a VM that traps fails every later
/// request of its worker with `503` (`wasm_fail_stream`) instead of being reloaded.
#[test]
fn full_chain_survives_obs_text_headers_fail_closed() {
    full_chain(Some("failure_policy: FAIL_CLOSED"), false);
}

#[test]
fn suite_survives_obs_text_headers_fail_closed() {
    full_chain(Some("failure_policy: FAIL_CLOSED"), true);
}

fn full_chain(policy: Option<&str>, suite: bool) {
    let ups = three_upstreams();
    let filter = |name: &str, config: Value| {
        let f = WasmFilter::new(name).config(&config);
        match policy {
            Some(p) => f.extra(p),
            None => f,
        }
    };
    let configs = [
        (
            "ratelimit",
            json!({"rules": [
                {"name": "per-user", "match": {"path": {"prefix": "/api"}},
                 "key": [{"header": "x-user-id"}], "limits": [{"requests": 4, "per": "1h"}]},
                {"name": "per-ip", "match": {"path": {"prefix": "/api"}},
                 "key": [{"client_ip": {"trusted_hops": 2}}], "limits": [{"requests": 1000, "per": "30d"}]}
            ]}),
        ),
        (
            "router",
            json!({
                "cluster_header": "x-switchyard-cluster",
                "known_clusters": ["web", "api-v1", "api-v2", "users"],
                "routes": router_routes(),
                "default": {"cluster": "web"},
                "explain": true
            }),
        ),
        ("cache", cache_config()),
        ("hashring", {
            let mut config = hashring_config(&ups);
            config["clusters"] = json!(["web"]);
            config["cluster_header"] = json!("x-switchyard-cluster");
            config
        }),
    ];
    let mut envoy = builder();
    if suite {
        let stages: serde_json::Map<String, Value> = configs
            .into_iter()
            .map(|(name, config)| (name.to_string(), config))
            .collect();
        envoy = envoy.wasm(filter("switchyard", json!({ "stages": stages })));
    } else {
        for (name, config) in configs {
            envoy = envoy.wasm(filter(name, config));
        }
    }
    let envoy = envoy
        .cluster_with(
            Cluster::new("web", ups.iter().map(|u| u.addr())).extra(OVERRIDE_HOST_CLUSTER),
        )
        .cluster("api-v1", [ups[0].addr()])
        .cluster("api-v2", [ups[1].addr()])
        .cluster("users", [ups[2].addr()])
        .route(ROUTE_BY_CLUSTER_HEADER)
        .route_to("web")
        .start();

    // The hostile request through all four filters: admitted (1 of 4 for `caf\xe9`), routed by
    // the sticky split, not cached (Authorization), and left alone by the hashring (routed to
    // api-v1/api-v2, not `web`).
    let resp = Req::get("/api/orders").hs(&hostile_headers()).send(&envoy);
    assert_served(&resp, "hostile request");
    assert_eq!(resp.status, 200, "{}", resp.describe());
    assert!(
        ["u1", "u2"].contains(&resp.upstream().as_str()),
        "{}",
        resp.describe()
    );
    assert!(
        resp.text_of("ratelimit").contains("\"per-user\";r=3;"),
        "{}",
        resp.describe()
    );
    assert_eq!(x_cache(&resp), "MISS");
    assert!(resp
        .text_of("x-switchyard-route")
        .contains("route=api-split"));
    assert_eq!(
        resp.header("x-hash-explain"),
        None,
        "the hashring acted on a request routed to another cluster: {}",
        resp.describe()
    );
    assert!(stat(&envoy, "wasmcustom.switchyard.hashring.other_cluster") >= 1);
    let sticky = resp.upstream();
    // And one that ends at the default route (`web`), so the hash picks the host.
    let resp = Req::get("/item").hs(&hostile_headers()).send(&envoy);
    assert_eq!(resp.status, 200, "{}", resp.describe());
    assert_eq!(explain_field(&resp, "key"), "header:x-user-id");
    let hashed = resp.upstream();
    assert_eq!(hashed, id_at(&ups, &explain_field(&resp, "host")));

    // Normal traffic: a cacheable page is a MISS and then HITs on both workers (the cache
    // answers after the router, before the hashring runs).
    let page = format!("/page?{}", cc("max-age=600"));
    burst(
        &envoy,
        NORMAL,
        |_| Req::get(&page),
        |i, r| {
            assert_eq!(r.status, 200, "{}", r.describe());
            assert_eq!(x_cache(r), if i == 0 { "MISS" } else { "HIT" }, "#{i}");
        },
    );
    let page_fetches: u64 = ups.iter().map(|u| u.count_path("/page")).sum();
    assert_eq!(page_fetches, 1);

    // The rate limit: 3 more for the obs-text key (sticky to the same cluster), then 429.
    for i in 0..3 {
        let r = Req::get("/api/orders")
            .h("x-user-id", CAFE_LATIN1)
            .send(&envoy);
        assert_eq!(
            (r.status, r.upstream()),
            (200, sticky.clone()),
            "#{i}: {}",
            r.describe()
        );
    }
    let r = Req::get("/api/orders")
        .h("x-user-id", CAFE_LATIN1)
        .send(&envoy);
    assert_eq!(r.status, 429, "{}", r.describe());
    let statuses: Vec<u16> = (0..5)
        .map(|_| {
            Req::get("/api/orders")
                .h("x-user-id", b"caf\xe8")
                .send(&envoy)
                .status
        })
        .collect();
    assert_eq!(statuses, [200, 200, 200, 200, 429]);

    // The router: explicit routes and the router's own responses.
    let r = Req::get("/users/7").send(&envoy);
    assert_eq!(
        (r.status, r.upstream().as_str()),
        (200, "u3"),
        "{}",
        r.describe()
    );
    assert_eq!(ups[2].requests().last().unwrap().path, "/v1/users/7");
    let r = Req::get("/api/x").h("x-canary", "always").send(&envoy);
    assert_eq!(
        (r.status, r.upstream().as_str()),
        (200, "u2"),
        "{}",
        r.describe()
    );
    let r = Req::get("/healthz").send(&envoy);
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));

    // The hashring: the obs-text key keeps its host.
    for _ in 0..6 {
        let r = Req::get("/item").h("x-user-id", CAFE_LATIN1).send(&envoy);
        assert_eq!(
            (r.status, r.upstream()),
            (200, hashed.clone()),
            "{}",
            r.describe()
        );
    }

    assert_healthy_after(&envoy);
}
