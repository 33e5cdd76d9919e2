//! The built-in closed-loop load generator: a fixed number of keep-alive HTTP/1.1 connections,
//! one std thread each, every thread sending its next request as soon as the previous answer is
//! read. `bench proxy` uses it when `wrk` is not installed or with `--load builtin` (xtask
//! installs nothing itself; see `wrk.rs` for the other backend), and the memory run always uses
//! it because it stops after an exact number of requests, each with its own key.

use super::wrk::Wrk;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to send. `{n}` in `path` is replaced by the request's key number; every request also
/// carries `x-user-id: u<key>` (the key of the hashing and rate-limit configurations).
#[derive(Clone)]
pub struct Plan {
    pub addr: SocketAddr,
    pub path: String,
    pub connections: usize,
    /// Key numbers cycle through `0..keys`; `u64::MAX` makes every request's key distinct.
    pub keys: u64,
    /// Stop after this long ...
    pub duration: Duration,
    /// ... or after this many requests in total, whichever comes first.
    pub max_requests: Option<u64>,
}

#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub completed: u64,
    pub non_2xx: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latencies in microseconds, sorted.
    pub latencies_us: Vec<u32>,
}

impl Outcome {
    /// Latency percentile in microseconds (nearest rank; 0 without samples).
    pub fn percentile_us(&self, p: f64) -> u64 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        let rank = ((p / 100.0) * self.latencies_us.len() as f64).ceil() as usize;
        let idx = rank.clamp(1, self.latencies_us.len()) - 1;
        u64::from(self.latencies_us[idx])
    }

    pub fn summary(&self) -> Summary {
        Summary {
            completed: self.completed,
            elapsed: self.elapsed,
            non_2xx: self.non_2xx,
            errors: self.errors,
            p50_us: self.percentile_us(50.0),
            p99_us: self.percentile_us(99.0),
        }
    }
}

/// One timed load run as the proxy benchmark reports it, from either generator.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Answers read (any status).
    pub completed: u64,
    pub elapsed: Duration,
    /// Answers with a status outside 200..=299 (3xx included).
    pub non_2xx: u64,
    /// Transport errors: connect, read, write, timeout.
    pub errors: u64,
    /// Latency percentiles (nearest rank over the raw samples), microseconds.
    pub p50_us: u64,
    pub p99_us: u64,
}

impl Summary {
    pub fn rps(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Which load generator drives the proxy benchmark.
pub enum Generator {
    Builtin,
    Wrk(Wrk),
}

impl Generator {
    /// `--load wrk|builtin`, or without it `wrk` when it was found on PATH.
    pub fn select(choice: Option<&str>, found: Option<Wrk>) -> crate::util::Result<Generator> {
        match (choice, found) {
            (None | Some("wrk"), Some(wrk)) => Ok(Generator::Wrk(wrk)),
            (None | Some("builtin"), _) => Ok(Generator::Builtin),
            (Some("wrk"), None) => Err("--load wrk: no executable `wrk` on PATH (the benchmark \
                installs nothing; install it, e.g. `apt-get install wrk`, or use --load builtin)"
                .to_owned()),
            (Some(other), _) => Err(format!("--load {other:?}: expected wrk or builtin")),
        }
    }

    /// `wrk` or `builtin`, as recorded in proxy.json.
    pub fn name(&self) -> &'static str {
        match self {
            Generator::Builtin => "builtin",
            Generator::Wrk(_) => "wrk",
        }
    }

    /// How the report's header names the generator ("... connections from {label}").
    pub fn label(&self, connections: usize) -> String {
        match self {
            Generator::Builtin => "the built-in load generator".to_owned(),
            Generator::Wrk(wrk) => format!(
                "wrk {} ({} threads)",
                wrk.version,
                super::wrk::threads(connections)
            ),
        }
    }

    /// The warm-up actually run: wrk's `-d` counts whole seconds.
    pub fn warmup(&self, requested: Duration) -> Duration {
        match self {
            Generator::Builtin => requested,
            Generator::Wrk(_) => Duration::from_secs(super::wrk::whole_seconds(requested)),
        }
    }
}

/// Runs the plan and returns when every connection has stopped.
pub fn run(plan: &Plan) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..plan.connections)
        .map(|_| {
            let plan = plan.clone();
            let stop = Arc::clone(&stop);
            let issued = Arc::clone(&issued);
            std::thread::spawn(move || connection(&plan, &stop, &issued, start))
        })
        .collect();
    let mut total = Outcome::default();
    for worker in workers {
        if let Ok(part) = worker.join() {
            total.completed += part.completed;
            total.non_2xx += part.non_2xx;
            total.errors += part.errors;
            total.latencies_us.extend(part.latencies_us);
        }
    }
    total.elapsed = start.elapsed();
    total.latencies_us.sort_unstable();
    total
}

fn connection(plan: &Plan, stop: &AtomicBool, issued: &AtomicU64, start: Instant) -> Outcome {
    let mut out = Outcome::default();
    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
    let mut request = Vec::with_capacity(256);
    while !stop.load(Ordering::Relaxed) && start.elapsed() < plan.duration {
        let n = issued.fetch_add(1, Ordering::Relaxed);
        if plan.max_requests.is_some_and(|max| n >= max) {
            stop.store(true, Ordering::Relaxed);
            break;
        }
        let key = if plan.keys == u64::MAX {
            n
        } else {
            n % plan.keys.max(1)
        };
        request.clear();
        let path = plan.path.replace("{n}", &key.to_string());
        let _ = write!(
            request,
            "GET {path} HTTP/1.1\r\nHost: bench\r\nx-user-id: u{key}\r\n\r\n"
        );
        if conn.is_none() {
            conn = connect(plan.addr);
        }
        let Some((writer, reader)) = conn.as_mut() else {
            out.errors += 1;
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let sent = Instant::now();
        match writer
            .write_all(&request)
            .map_err(|e| e.to_string())
            .and_then(|()| read_response(reader))
        {
            Ok((status, keep_alive)) => {
                let us = sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                out.latencies_us.push(us);
                out.completed += 1;
                if !(200..300).contains(&status) {
                    out.non_2xx += 1;
                }
                if !keep_alive {
                    conn = None;
                }
            }
            Err(_) => {
                out.errors += 1;
                conn = None;
            }
        }
    }
    out
}

fn connect(addr: SocketAddr) -> Option<(TcpStream, BufReader<TcpStream>)> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_nodelay(true).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let reader = BufReader::with_capacity(64 * 1024, stream.try_clone().ok()?);
    Some((stream, reader))
}

/// Reads one response (status line, headers, body by `content-length` or chunked) and says
/// whether the connection may be reused.
fn read_response(reader: &mut BufReader<TcpStream>) -> Result<(u16, bool), String> {
    let mut line = String::new();
    read_line(reader, &mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let mut content_length = 0usize;
    let mut chunked = false;
    let mut keep_alive = true;
    loop {
        read_line(reader, &mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.parse().map_err(|_| "bad content-length")?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                keep_alive = !value.eq_ignore_ascii_case("close");
            }
        }
    }
    if chunked {
        loop {
            read_line(reader, &mut line)?;
            let size_text = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
            skip(reader, size + 2)?;
            if size == 0 {
                break;
            }
        }
    } else {
        skip(reader, content_length)?;
    }
    Ok((status, keep_alive))
}

fn read_line(reader: &mut BufReader<TcpStream>, line: &mut String) -> Result<(), String> {
    line.clear();
    match reader.read_line(line) {
        Ok(0) => Err("connection closed".to_owned()),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

fn skip(reader: &mut BufReader<TcpStream>, mut n: usize) -> Result<(), String> {
    let mut buf = [0u8; 8192];
    while n > 0 {
        let want = n.min(buf.len());
        let got = reader.read(&mut buf[..want]).map_err(|e| e.to_string())?;
        if got == 0 {
            return Err("connection closed in body".to_owned());
        }
        n -= got;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A server that answers every request on each connection with the given raw responses,
    /// in turn.
    fn serve(responses: Vec<&'static str>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let responses = responses.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut writer = stream;
                    for response in responses.iter().cycle() {
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        if writer.write_all(response.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn plan(addr: SocketAddr, max: u64) -> Plan {
        Plan {
            addr,
            path: "/x/{n}".to_owned(),
            connections: 2,
            keys: 10,
            duration: Duration::from_secs(30),
            max_requests: Some(max),
        }
    }

    #[test]
    fn counts_answers_over_keep_alive_with_both_body_framings() {
        let addr = serve(vec![
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            "HTTP/1.1 429 Too Many Requests\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ]);
        let out = run(&plan(addr, 100));
        assert_eq!(out.completed, 100);
        assert_eq!(out.errors, 0);
        // Each connection alternates 200 and 429, so about half are non-2xx.
        assert!((48..=52).contains(&out.non_2xx), "{}", out.non_2xx);
        assert_eq!(out.latencies_us.len(), 100);
        assert!(out.percentile_us(50.0) <= out.percentile_us(99.0));
    }

    #[test]
    fn reconnects_when_the_server_closes() {
        let addr = serve(vec![
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
        ]);
        let out = run(&plan(addr, 20));
        assert_eq!(out.completed, 20);
        assert_eq!(out.non_2xx, 0);
    }

    fn fake_wrk() -> Wrk {
        Wrk {
            bin: "/usr/bin/wrk".into(),
            version: "4.1.0".to_owned(),
        }
    }

    #[test]
    fn the_generator_is_wrk_when_found_unless_builtin_is_asked_for() {
        let pick = |choice, found: Option<Wrk>| Generator::select(choice, found).map(|g| g.name());
        assert_eq!(pick(None, Some(fake_wrk())), Ok("wrk"));
        assert_eq!(pick(None, None), Ok("builtin"));
        assert_eq!(pick(Some("builtin"), Some(fake_wrk())), Ok("builtin"));
        assert_eq!(pick(Some("builtin"), None), Ok("builtin"));
        assert_eq!(pick(Some("wrk"), Some(fake_wrk())), Ok("wrk"));
        let missing = pick(Some("wrk"), None).unwrap_err();
        assert!(missing.contains("no executable `wrk` on PATH"), "{missing}");
        let unknown = pick(Some("ab"), None).unwrap_err();
        assert!(unknown.contains("expected wrk or builtin"), "{unknown}");
    }

    #[test]
    fn the_report_names_the_generator_and_the_warm_up_it_really_ran() {
        let wrk = Generator::Wrk(fake_wrk());
        assert_eq!(wrk.label(4), "wrk 4.1.0 (2 threads)");
        assert_eq!(
            wrk.warmup(Duration::from_millis(500)),
            Duration::from_secs(1)
        );
        assert_eq!(Generator::Builtin.label(4), "the built-in load generator");
        let half = Duration::from_millis(500);
        assert_eq!(Generator::Builtin.warmup(half), half);
    }

    #[test]
    fn summary_carries_the_outcome_figures() {
        let out = Outcome {
            completed: 4,
            non_2xx: 1,
            errors: 2,
            elapsed: Duration::from_secs(2),
            latencies_us: vec![100, 200, 300, 400],
        };
        let s = out.summary();
        assert_eq!((s.completed, s.non_2xx, s.errors), (4, 1, 2));
        assert_eq!((s.p50_us, s.p99_us), (200, 400));
        assert_eq!(s.rps(), 2.0);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let out = Outcome {
            latencies_us: (1..=100).map(|i| i * 1000).collect(),
            ..Outcome::default()
        };
        assert_eq!(out.percentile_us(50.0), 50_000);
        assert_eq!(out.percentile_us(99.0), 99_000);
        assert_eq!(Outcome::default().percentile_us(99.0), 0);
    }
}
