//! An open-loop, fixed-rate HTTP/1.1 load generator for `bench balance`. Request `n` is due at
//! `start + n / rate`, whatever happened to earlier ones; a pool of worker threads, each with its
//! own keep-alive connection, takes the next due request when it is free, sleeps until it is
//! due and sends it. A request's latency counts from when it was *due*, so waiting for a free
//! worker counts too (no coordinated omission); with enough workers they rarely wait. An answer
//! slower than the timeout counts as timed out (its connection is dropped and reopened).
//! Every answer's `x-upstream-id` is recorded, so the report can say which host served it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct RatePlan {
    pub addr: SocketAddr,
    pub path: String,
    /// Requests per second, over all workers.
    pub rate: f64,
    pub workers: usize,
    pub duration: Duration,
    pub timeout: Duration,
    /// `x-user-id: u<k>` with `k` a hash of the request number modulo this (random-looking keys
    /// that spread over a hash ring).
    pub keys: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer within the timeout.
    Ok,
    /// An answer outside 200..=299 within the timeout.
    Non2xx,
    /// No (complete) answer within the timeout.
    Timeout,
    /// Connect, write or read error, or a malformed answer.
    Error,
}

#[derive(Debug, Clone, Copy)]
pub struct Record {
    /// When the request was due, µs after the start.
    pub due_us: u64,
    /// From due to answered (or to the error), µs; at least the timeout for timeouts.
    pub latency_us: u64,
    pub outcome: Outcome,
    /// `N` of the answer's `x-upstream-id: uN`; 0 when absent.
    pub host: u16,
}

/// splitmix64: request number → key number.
pub fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Runs the plan from `start` (which may be slightly in the past or future) and returns every
/// request's record, in no particular order.
pub fn run(plan: &RatePlan, start: Instant) -> Vec<Record> {
    let next = Arc::new(AtomicU64::new(0));
    let interval_ns = (1e9 / plan.rate.max(0.001)) as u64;
    let total = (plan.duration.as_nanos() as u64) / interval_ns.max(1);
    let workers: Vec<_> = (0..plan.workers.max(1))
        .map(|_| {
            let plan = plan.clone();
            let next = Arc::clone(&next);
            std::thread::spawn(move || worker(&plan, &next, total, interval_ns, start))
        })
        .collect();
    workers
        .into_iter()
        .filter_map(|w| w.join().ok())
        .flatten()
        .collect()
}

type Conn = (TcpStream, BufReader<TcpStream>);

fn worker(
    plan: &RatePlan,
    next: &AtomicU64,
    total: u64,
    interval_ns: u64,
    start: Instant,
) -> Vec<Record> {
    let mut records = Vec::new();
    let mut conn: Option<Conn> = None;
    let mut request = Vec::with_capacity(256);
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= total {
            break;
        }
        let due = start + Duration::from_nanos(n * interval_ns);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        request.clear();
        let key = mix(n) % plan.keys.max(1);
        let _ = write!(
            request,
            "GET {} HTTP/1.1\r\nHost: bench\r\nx-user-id: u{key}\r\n\r\n",
            plan.path
        );
        let (outcome, host) = exchange(&mut conn, plan, &request);
        let latency_us = due.elapsed().as_micros() as u64;
        let timeout_us = plan.timeout.as_micros() as u64;
        let outcome = match outcome {
            Outcome::Ok | Outcome::Non2xx if latency_us > timeout_us => Outcome::Timeout,
            o => o,
        };
        records.push(Record {
            due_us: due.saturating_duration_since(start).as_micros() as u64,
            latency_us: match outcome {
                Outcome::Timeout | Outcome::Error => latency_us.max(timeout_us),
                _ => latency_us,
            },
            outcome,
            host,
        });
    }
    records
}

fn exchange(conn: &mut Option<Conn>, plan: &RatePlan, request: &[u8]) -> (Outcome, u16) {
    if conn.is_none() {
        *conn = connect(plan.addr, plan.timeout);
    }
    let Some((writer, reader)) = conn.as_mut() else {
        return (Outcome::Error, 0);
    };
    let result = writer
        .write_all(request)
        .map_err(|e| e.kind())
        .and_then(|()| read_response(reader));
    match result {
        Ok(answer) => {
            if !answer.keep_alive {
                *conn = None;
            }
            let outcome = if (200..300).contains(&answer.status) {
                Outcome::Ok
            } else {
                Outcome::Non2xx
            };
            (outcome, answer.host)
        }
        Err(kind) => {
            // The answer may still arrive on this connection: never reuse it.
            *conn = None;
            match kind {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    (Outcome::Timeout, 0)
                }
                _ => (Outcome::Error, 0),
            }
        }
    }
}

fn connect(addr: SocketAddr, timeout: Duration) -> Option<Conn> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_nodelay(true).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    let reader = BufReader::with_capacity(16 * 1024, stream.try_clone().ok()?);
    Some((stream, reader))
}

struct Answer {
    status: u16,
    keep_alive: bool,
    host: u16,
}

fn read_response(reader: &mut BufReader<TcpStream>) -> Result<Answer, std::io::ErrorKind> {
    use std::io::ErrorKind::InvalidData;
    let mut line = String::new();
    read_line(reader, &mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(InvalidData)?;
    let (mut length, mut chunked, mut keep_alive, mut host) = (0usize, false, true, 0u16);
    loop {
        read_line(reader, &mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().map_err(|_| InvalidData)?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            keep_alive = !value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("x-upstream-id") {
            host = value
                .strip_prefix('u')
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    if chunked {
        loop {
            read_line(reader, &mut line)?;
            let size = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size, 16).map_err(|_| InvalidData)?;
            skip(reader, size + 2)?;
            if size == 0 {
                break;
            }
        }
    } else {
        skip(reader, length)?;
    }
    Ok(Answer {
        status,
        keep_alive,
        host,
    })
}

fn read_line(
    reader: &mut BufReader<TcpStream>,
    line: &mut String,
) -> Result<(), std::io::ErrorKind> {
    line.clear();
    match reader.read_line(line) {
        Ok(0) => Err(std::io::ErrorKind::UnexpectedEof),
        Ok(_) => Ok(()),
        Err(e) => Err(e.kind()),
    }
}

fn skip(reader: &mut BufReader<TcpStream>, mut n: usize) -> Result<(), std::io::ErrorKind> {
    let mut buf = [0u8; 4096];
    while n > 0 {
        let want = n.min(buf.len());
        let got = reader.read(&mut buf[..want]).map_err(|e| e.kind())?;
        if got == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof);
        }
        n -= got;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Answers each request after `delay(request index)`, naming itself `u<id>`.
    fn serve(id: u16, slow_every: usize, slow: Duration) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicU64::new(0));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let count = Arc::clone(&count);
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut writer = stream;
                    loop {
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
                        let n = count.fetch_add(1, Ordering::Relaxed) as usize;
                        if slow_every > 0 && n % slow_every == slow_every - 1 {
                            std::thread::sleep(slow);
                        }
                        let answer =
                            format!("HTTP/1.1 200 OK\r\nx-upstream-id: u{id}\r\ncontent-length: 2\r\n\r\nok");
                        if writer.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn plan(addr: SocketAddr) -> RatePlan {
        RatePlan {
            addr,
            path: "/x".to_owned(),
            rate: 200.0,
            workers: 8,
            duration: Duration::from_millis(500),
            timeout: Duration::from_millis(200),
            keys: 1000,
        }
    }

    #[test]
    fn sends_at_the_fixed_rate_and_records_the_host() {
        let addr = serve(7, 0, Duration::ZERO);
        let started = Instant::now();
        let records = run(&plan(addr), started);
        assert_eq!(records.len(), 100);
        assert!(started.elapsed() >= Duration::from_millis(490));
        assert!(records
            .iter()
            .all(|r| r.outcome == Outcome::Ok && r.host == 7));
        let mut due: Vec<u64> = records.iter().map(|r| r.due_us).collect();
        due.sort_unstable();
        assert_eq!(due[1] - due[0], 5000);
        assert_eq!(*due.last().unwrap(), 99 * 5000);
    }

    #[test]
    fn slow_answers_time_out_and_the_rest_keep_their_schedule() {
        // Every 10th answer takes 400 ms, longer than the 200 ms timeout.
        let addr = serve(1, 10, Duration::from_millis(400));
        let records = run(&plan(addr), Instant::now());
        assert_eq!(records.len(), 100);
        let timeouts = records
            .iter()
            .filter(|r| r.outcome == Outcome::Timeout)
            .count();
        assert!((5..=20).contains(&timeouts), "{timeouts}");
        assert!(records
            .iter()
            .filter(|r| r.outcome == Outcome::Timeout)
            .all(|r| r.latency_us >= 200_000));
        let fast = records
            .iter()
            .filter(|r| r.outcome == Outcome::Ok && r.latency_us < 50_000)
            .count();
        assert!(fast >= 70, "{fast}");
    }

    #[test]
    fn errors_when_nothing_listens() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let mut p = plan(addr);
        p.duration = Duration::from_millis(50);
        let records = run(&p, Instant::now());
        assert!(!records.is_empty());
        assert!(records.iter().all(|r| r.outcome == Outcome::Error));
        assert_ne!(mix(1), mix(2));
    }
}
