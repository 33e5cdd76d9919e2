//! The `wrk` backend of `bench proxy`: used when `wrk` is on PATH (or with `--load wrk`), never
//! installed by xtask. Each measurement is one `wrk` process driven by a generated Lua script
//! that sends what the built-in generator (`load.rs`) sends and prints one JSON result line.
//!
//! Equivalence with the built-in generator, per request:
//! - request number `n` counts 0, 1, 2, ... over the run; the built-in generator shares one
//!   counter between its connections, wrk's threads cannot share state, so thread `t` of `T`
//!   numbers its requests `t`, `t + T`, `t + 2T`, ... (together: every number, once);
//! - `key = n % keys`; every `{n}` in the path becomes the key, and the request carries
//!   `Host: bench` and `x-user-id: u<key>` (the same bytes as the built-in request);
//! - non-2xx counts every status outside 200..=299, 3xx included (wrk's own "Non-2xx or 3xx"
//!   line counts only statuses above 399), through a per-thread `response()` tally summed in
//!   `done()` over the `threads` table filled by `setup()`;
//! - latency percentiles are nearest-rank over the raw samples. wrk corrects its latency
//!   histogram for coordinated omission before `done()` (every sample at or above twice the
//!   mean per-connection interval is also counted at lower values); the script undoes that so
//!   the figures stay comparable with the built-in generator's raw samples.

use super::load::Summary;
use crate::util::Result;
use serde_json::Value;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// First key of the script's JSON result line; the parser looks for the line starting with it.
const MARKER: &str = "{\"switchyard_wrk\":1,";

/// Above this many steps (latency bins x latency range) undoing wrk's correction would take
/// seconds in wrk's O(range) bin lookup; the script then reports wrk's corrected percentiles.
const MAX_UNCORRECT_WORK: u64 = 500_000_000;

/// An installed `wrk`.
pub struct Wrk {
    pub bin: PathBuf,
    /// As `wrk --version` prints it, without a packager's prefix (`debian/4.1.0-3` -> `4.1.0-3`).
    pub version: String,
}

impl Wrk {
    /// The first executable `wrk` on PATH.
    pub fn find() -> Option<Wrk> {
        let path = std::env::var_os("PATH")?;
        let bin = std::env::split_paths(&path)
            .map(|dir| dir.join("wrk"))
            .find(|p| is_executable(p))?;
        // `wrk --version` prints the version line, then the usage, and exits with 1.
        let version = Command::new(&bin)
            .arg("--version")
            .output()
            .ok()
            .and_then(|out| parse_version(&String::from_utf8_lossy(&out.stdout)))
            .unwrap_or_else(|| "(unknown version)".to_owned());
        Some(Wrk { bin, version })
    }

    /// One closed-loop run of `duration` (whole seconds, rounded up) with the script at `script`.
    pub fn run(
        &self,
        script: &Path,
        addr: SocketAddr,
        connections: usize,
        duration: Duration,
    ) -> Result<Summary> {
        let out = Command::new(&self.bin)
            .arg("-t")
            .arg(threads(connections).to_string())
            .arg("-c")
            .arg(connections.to_string())
            .arg("-d")
            .arg(format!("{}s", whole_seconds(duration)))
            // The built-in generator's read timeout.
            .args(["--timeout", "10s", "--latency", "-s"])
            .arg(script)
            .arg(format!("http://{addr}/"))
            .output()
            .map_err(|e| format!("run {}: {e}", self.bin.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "{} exited with {}: {}{}",
                self.bin.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr),
                stdout
            ));
        }
        parse(&stdout).map_err(|e| {
            format!(
                "{e}\nwrk's stderr: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `4.1.0` from `wrk 4.1.0 [epoll] Copyright ...`, `4.1.0-3+b2` from `wrk debian/4.1.0-3+b2 ...`.
fn parse_version(text: &str) -> Option<String> {
    let mut words = text.lines().next()?.split_whitespace();
    if words.next()? != "wrk" {
        return None;
    }
    let version = words.next()?;
    let version = version.rsplit('/').next().unwrap_or(version);
    version
        .starts_with(|c: char| c.is_ascii_digit())
        .then(|| version.to_owned())
}

/// wrk's thread count for `connections`: 2 when that splits them evenly, else 1 (wrk gives each
/// thread `connections / threads` connections and drops the remainder).
pub fn threads(connections: usize) -> usize {
    if connections >= 2 && connections.is_multiple_of(2) {
        2
    } else {
        1
    }
}

/// wrk's `-d` and `--timeout` count whole seconds: round up, at least 1.
pub fn whole_seconds(d: Duration) -> u64 {
    (d.as_millis().div_ceil(1000) as u64).max(1)
}

/// A Lua string literal for `s` (any bytes; non-printable ones as decimal escapes).
fn lua_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for b in s.bytes() {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(char::from(b));
            }
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\{b:03}");
            }
        }
    }
    out.push('"');
    out
}

/// The Lua script for one variant: requests to `path` (each `{n}` replaced by the request's
/// key), keys cycling over `0..keys` (`keys` below 2^53, Lua numbers are doubles), run with
/// `connections` connections (the same value as `-c`: the latency correction needs it).
pub fn script(path: &str, keys: u64, connections: usize) -> String {
    let parts: Vec<String> = path.split("{n}").map(lua_string).collect();
    format!(
        r#"-- Generated by `cargo xtask bench proxy` (xtask/src/bench/wrk.rs); edits are overwritten.
-- Sends what the built-in load generator (xtask/src/bench/load.rs) sends.
local THREADS = {threads}
local CONNECTIONS = {connections}
local KEYS = {keys}
local MAX_UNCORRECT_WORK = {max_work}
-- The path split at each "{{n}}": the key goes between the parts.
local PARTS = {{ {parts} }}

-- Main state: every thread, for done(). Thread states: `first` is set by setup().
threads = {{}}
non_2xx = 0
local number = nil

function setup(thread)
  thread:set("first", #threads)
  table.insert(threads, thread)
end

function request()
  if number == nil then
    number = first
  end
  local key = tostring(number % KEYS)
  number = number + THREADS
  return "GET " .. table.concat(PARTS, key) .. " HTTP/1.1\r\nHost: bench\r\nx-user-id: u" .. key .. "\r\n\r\n"
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non_2xx = non_2xx + 1
  end
end

-- Percentiles 50 and 99 (nearest rank) over the raw latency samples, by undoing wrk's
-- coordinated-omission correction (stats_correct: each sample n >= 2e was also added at
-- n - e, n - 2e, ... while above e, with e = duration / (requests / connections)). The highest
-- bin is never a copy, so walking down from it recovers each bin's own count.
local function raw_percentiles(summary, latency)
  local bins = #latency
  if bins == 0 then
    return 0, 0, 0, "raw"
  end
  if bins * (latency.max - latency.min + 1) > MAX_UNCORRECT_WORK then
    return latency:percentile(50), latency:percentile(99), #latency, "wrk-corrected"
  end
  local values, counts, at = {{}}, {{}}, {{}}
  for i = 1, bins do
    local v, c = latency(i)
    values[i], counts[i], at[v] = v, c, i
  end
  local per_connection = math.floor(summary.requests / CONNECTIONS)
  if per_connection > 0 then
    local e = math.floor(summary.duration / per_connection)
    if e > 0 then
      for i = bins, 1, -1 do
        local v = values[i]
        if v >= 2 * e then
          local m = v - e
          while m > e do
            local j = at[m]
            if j then
              counts[j] = counts[j] - counts[i]
            end
            m = m - e
          end
        end
      end
    end
  end
  local total = 0
  for i = 1, bins do
    total = total + counts[i]
  end
  local function percentile(p)
    local rank = math.max(1, math.min(total, math.ceil(p / 100 * total)))
    local seen = 0
    for i = 1, bins do
      seen = seen + counts[i]
      if seen >= rank then
        return values[i]
      end
    end
    return values[bins]
  end
  return percentile(50), percentile(99), total, "raw"
end

function done(summary, latency, requests)
  local tally = 0
  for _, thread in ipairs(threads) do
    tally = tally + (thread:get("non_2xx") or 0)
  end
  local p50, p99, samples, kind = raw_percentiles(summary, latency)
  local e = summary.errors
  io.write(string.format(
    '{marker}"requests":%d,"duration_us":%d,"non_2xx":%d,' ..
    '"errors":{{"connect":%d,"read":%d,"write":%d,"timeout":%d}},' ..
    '"p50_us":%d,"p99_us":%d,"samples":%d,"latency":"%s"}}\n',
    summary.requests, summary.duration, tally, e.connect, e.read, e.write, e.timeout,
    p50, p99, samples, kind))
  io.flush()
end
"#,
        threads = threads(connections),
        max_work = MAX_UNCORRECT_WORK,
        parts = parts.join(", "),
        marker = MARKER,
    )
}

/// The script's result line in wrk's output.
pub fn parse(stdout: &str) -> Result<Summary> {
    let line = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with(MARKER))
        .ok_or_else(|| {
            format!(
                "wrk printed no result line (the script's done() did not run?); its output:\n{}",
                stdout.trim()
            )
        })?;
    let bad = |what: &str| format!("wrk result line {line:?}: {what}");
    let json: Value = serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
    let number = |path: &[&str]| {
        path.iter()
            .try_fold(&json, |v, key| v.get(key))
            .and_then(Value::as_u64)
            .ok_or_else(|| bad(&format!("no whole number at {}", path.join("."))))
    };
    let completed = number(&["requests"])?;
    let non_2xx = number(&["non_2xx"])?;
    if non_2xx > completed {
        return Err(bad("more non-2xx answers than requests"));
    }
    let mut errors = 0;
    for kind in ["connect", "read", "write", "timeout"] {
        errors += number(&["errors", kind])?;
    }
    if json.get("latency").and_then(Value::as_str) == Some("raw") {
        // Without the correction's copies the histogram holds one sample per answer read
        // (fewer when answers took longer than the timeout).
        if number(&["samples"])? > completed {
            return Err(bad("more latency samples than requests"));
        }
    } else {
        eprintln!("bench: latency percentiles of this wrk run include wrk's coordinated-omission correction (too many latency bins to undo it)");
    }
    Ok(Summary {
        completed,
        elapsed: Duration::from_micros(number(&["duration_us"])?),
        non_2xx,
        errors,
        p50_us: number(&["p50_us"])?,
        p99_us: number(&["p99_us"])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    #[test]
    fn script_builds_the_built_in_generators_request_around_each_key() {
        let s = script("/svc19/items?k={n}&again={n}", 10_000, 4);
        assert!(
            s.contains(r#"local PARTS = { "/svc19/items?k=", "&again=", "" }"#),
            "{s}"
        );
        assert!(s.contains("local KEYS = 10000\n"), "{s}");
        assert!(s.contains("local THREADS = 2\n"), "{s}");
        assert!(s.contains("local CONNECTIONS = 4\n"), "{s}");
        assert!(
            s.contains(r#""GET " .. table.concat(PARTS, key) .. " HTTP/1.1\r\nHost: bench\r\nx-user-id: u" .. key .. "\r\n\r\n""#),
            "{s}"
        );
        // The callbacks wrk looks for, and the result line the parser expects.
        for f in [
            "function setup(thread)",
            "function request()",
            "function response(status, headers, body)",
            "function done(summary, latency, requests)",
        ] {
            assert!(s.contains(f), "{f} missing:\n{s}");
        }
        assert!(s.contains(&format!("'{MARKER}\"requests\":%d,")), "{s}");
        // format! braces are all resolved: no `{{` left in the Lua text.
        assert!(!s.contains("{{") && !s.contains("}}"), "{s}");
    }

    #[test]
    fn a_path_without_placeholder_is_one_part_and_odd_connections_use_one_thread() {
        let s = script("/cached?header=Cache-Control:max-age%3D3600", 10_000, 3);
        assert!(
            s.contains(r#"local PARTS = { "/cached?header=Cache-Control:max-age%3D3600" }"#),
            "{s}"
        );
        assert!(s.contains("local THREADS = 1\n"), "{s}");
        assert_eq!(
            (threads(1), threads(2), threads(3), threads(8)),
            (1, 2, 1, 2)
        );
    }

    #[test]
    fn lua_strings_escape_quotes_backslashes_and_control_bytes() {
        assert_eq!(lua_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(lua_string("x\ny\u{e9}"), r#""x\010y\195\169""#);
    }

    #[test]
    fn durations_round_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::from_millis(500)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(4)), 4);
        assert_eq!(whole_seconds(Duration::from_millis(4001)), 5);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
    }

    #[test]
    fn version_is_read_from_upstream_and_packaged_builds() {
        let debian = "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer\nUsage: ...";
        assert_eq!(parse_version(debian).as_deref(), Some("4.1.0-3+b2"));
        let upstream = "wrk 4.2.0 [epoll] Copyright (C) 2012 Will Glozer";
        assert_eq!(parse_version(upstream).as_deref(), Some("4.2.0"));
        assert_eq!(parse_version("Usage: wrk <options> <url>"), None);
        assert_eq!(parse_version(""), None);
    }

    const RESULT: &str = r#"{"switchyard_wrk":1,"requests":1000,"duration_us":2000000,"non_2xx":7,"errors":{"connect":1,"read":2,"write":3,"timeout":4},"p50_us":310,"p99_us":1570,"samples":1000,"latency":"raw"}"#;

    #[test]
    fn parses_the_result_line_among_wrks_own_output() {
        let stdout = format!(
            "Running 2s test @ http://127.0.0.1:1/\n  2 threads and 4 connections\n  1000 requests in 2.00s, 1.00MB read\nRequests/sec:    500.00\n{RESULT}\n"
        );
        let s = parse(&stdout).unwrap();
        assert_eq!(
            s,
            Summary {
                completed: 1000,
                elapsed: Duration::from_secs(2),
                non_2xx: 7,
                errors: 10,
                p50_us: 310,
                p99_us: 1570,
            }
        );
        assert_eq!(s.rps(), 500.0);
    }

    #[test]
    fn malformed_output_is_an_error_that_shows_it() {
        let none = parse("Running 2s test @ http://127.0.0.1:1/\nunable to connect\n").unwrap_err();
        assert!(none.contains("no result line"), "{none}");
        assert!(none.contains("unable to connect"), "{none}");
        let cut = parse(&RESULT[..RESULT.len() - 20]).unwrap_err();
        assert!(cut.contains("wrk result line"), "{cut}");
        let missing = parse(&RESULT.replace(r#""p99_us":1570,"#, "")).unwrap_err();
        assert!(missing.contains("no whole number at p99_us"), "{missing}");
        let nested = parse(&RESULT.replace(r#""timeout":4"#, r#""timeout":-1"#)).unwrap_err();
        assert!(nested.contains("errors.timeout"), "{nested}");
        let too_many = parse(&RESULT.replace(r#""non_2xx":7"#, r#""non_2xx":1001"#)).unwrap_err();
        assert!(too_many.contains("more non-2xx"), "{too_many}");
        let corrected = RESULT.replace(r#""samples":1000"#, r#""samples":1300"#);
        let copies = parse(&corrected).unwrap_err();
        assert!(copies.contains("more latency samples"), "{copies}");
        // When the script could not undo wrk's correction it says so, and the line still counts.
        assert!(parse(&corrected.replace(r#""raw""#, r#""wrk-corrected""#)).is_ok());
    }

    /// What the test server saw: each request's target and `x-user-id`, and each status sent.
    #[derive(Default)]
    struct Seen {
        requests: Vec<(String, String, String)>,
        statuses: Vec<u16>,
    }

    /// A keep-alive server answering the i-th request on each connection with `answer(i)`:
    /// (status, delay in ms).
    fn serve(answer: fn(usize) -> (u16, u64)) -> (SocketAddr, Arc<Mutex<Seen>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let seen = Arc::clone(&shared);
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut writer = stream;
                    for i in 0.. {
                        let (mut target, mut user, mut host) =
                            (String::new(), String::new(), String::new());
                        let mut head = Vec::new();
                        loop {
                            let mut line = String::new();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            head.push(line);
                        }
                        for (n, line) in head.iter().enumerate() {
                            let line = line.trim_end();
                            if n == 0 {
                                target = line.to_owned();
                            } else if let Some(v) = line.strip_prefix("x-user-id: ") {
                                v.clone_into(&mut user);
                            } else if let Some(v) = line.strip_prefix("Host: ") {
                                host = v.to_owned();
                            }
                        }
                        let (status, delay) = answer(i);
                        std::thread::sleep(Duration::from_millis(delay));
                        {
                            let mut seen = seen.lock().unwrap();
                            seen.requests.push((target, user, host));
                            seen.statuses.push(status);
                        }
                        let response =
                            format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\nok");
                        if writer.write_all(response.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, seen)
    }

    fn installed() -> Option<Wrk> {
        let wrk = Wrk::find();
        if wrk.is_none() {
            eprintln!("note: wrk is not on PATH; skipping the test that runs it");
        }
        wrk
    }

    fn run_script(wrk: &Wrk, addr: SocketAddr, path: &str, keys: u64) -> Summary {
        let dir = std::env::temp_dir().join(format!("xtask-wrk-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{}.lua", addr.port()));
        std::fs::write(&file, script(path, keys, 2)).unwrap();
        let summary = wrk.run(&file, addr, 2, Duration::from_secs(1)).unwrap();
        let _ = std::fs::remove_file(&file);
        summary
    }

    #[test]
    fn wrk_sends_the_built_in_requests_and_counts_3xx_as_non_2xx() {
        let Some(wrk) = installed() else { return };
        // Per connection: 200, 302, 404, 204, 200, 302, ...
        let (addr, seen) = serve(|i| ([200, 302, 404, 204][i % 4], 0));
        let s = run_script(&wrk, addr, "/x/{n}?k={n}", 7);
        let seen = seen.lock().unwrap();
        assert_eq!(s.errors, 0);
        // Each of the 2 connections may leave its last answer unread when wrk stops.
        let sent = seen.statuses.len() as u64;
        assert!(
            s.completed <= sent && s.completed + 2 >= sent,
            "{s:?}, sent {sent}"
        );
        let sent_non_2xx = seen.statuses.iter().filter(|s| **s >= 300).count() as u64;
        assert!(sent_non_2xx > 0);
        assert!(
            s.non_2xx <= sent_non_2xx && s.non_2xx + 2 >= sent_non_2xx,
            "{s:?}, sent {sent_non_2xx} non-2xx"
        );
        let mut keys = std::collections::BTreeSet::new();
        for (target, user, host) in &seen.requests {
            let key = user.strip_prefix('u').unwrap();
            assert_eq!(target, &format!("GET /x/{key}?k={key} HTTP/1.1"));
            assert_eq!(host, "bench");
            keys.insert(key.parse::<u64>().unwrap());
        }
        assert!(seen.requests.len() >= 14, "{}", seen.requests.len());
        assert_eq!(
            keys.into_iter().collect::<Vec<_>>(),
            (0..7).collect::<Vec<_>>()
        );
    }

    #[test]
    fn wrk_latency_percentiles_are_the_raw_samples() {
        let Some(wrk) = installed() else { return };
        // Every third answer per connection takes 300 ms: wrk's correction would add samples
        // between the fast and the slow ones (and count more samples than requests).
        let (addr, _seen) = serve(|i| (200, if i % 3 == 2 { 300 } else { 0 }));
        let s = run_script(&wrk, addr, "/plain", 10_000);
        assert!(s.completed >= 3, "{s:?}");
        assert!(s.p99_us >= 300_000, "{s:?}");
        assert!(s.p50_us < 150_000, "{s:?}");
    }
}
