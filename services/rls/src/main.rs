//! `switchyard-rls --config FILE --grpc-addr 127.0.0.1:8081 --http-addr 127.0.0.1:8080
//! --redis redis://127.0.0.1:6379 [--redis-failure allow|deny|error] [--redis-timeout-ms 50]
//! [--redis-connect-timeout-ms 50] [--no-headers]`
//!
//! Each flag falls back to an environment variable (`SWITCHYARD_RLS_CONFIG`,
//! `SWITCHYARD_RLS_GRPC_ADDR`, `SWITCHYARD_RLS_HTTP_ADDR`, `SWITCHYARD_RLS_REDIS`,
//! `SWITCHYARD_RLS_REDIS_FAILURE`, ...), then to the configuration file, then to the default.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;
use switchyard_rls::config::{Config, RedisFailure};
use switchyard_rls::store::Timeouts;
use switchyard_rls::Options;

const USAGE: &str = "usage: switchyard-rls --config FILE [--grpc-addr ADDR:PORT] \
[--http-addr ADDR:PORT] [--redis URL] [--redis-failure allow|deny|error] \
[--redis-timeout-ms MS] [--redis-connect-timeout-ms MS] [--no-headers] [--check]";

const FLAGS: [(&str, &str); 7] = [
    ("--config", "SWITCHYARD_RLS_CONFIG"),
    ("--grpc-addr", "SWITCHYARD_RLS_GRPC_ADDR"),
    ("--http-addr", "SWITCHYARD_RLS_HTTP_ADDR"),
    ("--redis", "SWITCHYARD_RLS_REDIS"),
    ("--redis-failure", "SWITCHYARD_RLS_REDIS_FAILURE"),
    ("--redis-timeout-ms", "SWITCHYARD_RLS_REDIS_TIMEOUT_MS"),
    (
        "--redis-connect-timeout-ms",
        "SWITCHYARD_RLS_REDIS_CONNECT_TIMEOUT_MS",
    ),
];

struct Args {
    values: Vec<(&'static str, String)>,
    no_headers: bool,
    check: bool,
}

impl Args {
    fn get(&self, flag: &str) -> Option<String> {
        if let Some((_, v)) = self.values.iter().rev().find(|(f, _)| *f == flag) {
            return Some(v.clone());
        }
        let env = FLAGS.iter().find(|(f, _)| *f == flag).map(|(_, e)| *e)?;
        std::env::var(env).ok().filter(|v| !v.is_empty())
    }
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        values: Vec::new(),
        no_headers: false,
        check: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => return Err(String::new()),
            "--no-headers" => args.no_headers = true,
            "--check" => args.check = true,
            other => {
                let (flag, inline) = match other.split_once('=') {
                    Some((f, v)) => (f, Some(v.to_string())),
                    None => (other, None),
                };
                let Some((flag, _)) = FLAGS.iter().find(|(f, _)| *f == flag) else {
                    return Err(format!("unknown argument {other:?}"));
                };
                let value = match inline {
                    Some(v) => v,
                    None => it.next().ok_or_else(|| format!("{flag} needs a value"))?,
                };
                args.values.push((flag, value));
            }
        }
    }
    Ok(args)
}

fn addr(args: &Args, flag: &str, default: &str) -> Result<SocketAddr, String> {
    let value = args.get(flag).unwrap_or_else(|| default.to_string());
    value
        .parse()
        .map_err(|e| format!("{flag} {value:?}: {e} (expected ADDR:PORT)"))
}

fn millis(args: &Args, flag: &str, from_file: Option<Duration>) -> Result<Duration, String> {
    match args.get(flag) {
        Some(v) => match v.parse::<u64>() {
            Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
            _ => Err(format!(
                "{flag} {v:?}: expected a positive number of milliseconds"
            )),
        },
        None => Ok(from_file.unwrap_or(Duration::from_millis(50))),
    }
}

fn options() -> Result<Option<Options>, String> {
    let args = parse_args()?;
    let path = args
        .get("--config")
        .ok_or("--config FILE is required (or SWITCHYARD_RLS_CONFIG)")?;
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("cannot read config {path}: {e}"))?;
    let config = Config::parse(&text).map_err(|e| format!("invalid config {path}: {e}"))?;
    if args.check {
        println!("{path}: {} domain(s) OK", config.domains.len());
        return Ok(None);
    }
    let redis_failure = match args.get("--redis-failure") {
        Some(v) => RedisFailure::parse(&v)
            .ok_or_else(|| format!("--redis-failure {v:?}: expected allow, deny or error"))?,
        None => config.redis_failure.unwrap_or_default(),
    };
    let timeouts = Timeouts {
        connect: millis(
            &args,
            "--redis-connect-timeout-ms",
            config.redis_connect_timeout,
        )?,
        response: millis(&args, "--redis-timeout-ms", config.redis_timeout)?,
    };
    Ok(Some(Options {
        grpc_addr: addr(&args, "--grpc-addr", "127.0.0.1:8081")?,
        http_addr: addr(&args, "--http-addr", "127.0.0.1:8080")?,
        redis_url: args
            .get("--redis")
            .unwrap_or_else(|| "redis://127.0.0.1:6379".to_string()),
        redis_failure,
        timeouts,
        headers: !args.no_headers,
        config,
    }))
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(Some(o)) => o,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("switchyard-rls: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchyard-rls: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(switchyard_rls::run(
        options,
        switchyard_rls::shutdown_signal(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard-rls: {e}");
            ExitCode::FAILURE
        }
    }
}
