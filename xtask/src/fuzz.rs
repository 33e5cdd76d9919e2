//! `cargo xtask fuzz --seconds N [--seed S]`: builds the filters, then fuzzes every module in the
//! wasmtime test host (`tests/wasmhost/tests/fuzz.rs`: each filter alone and the chain) and every
//! configuration parser natively (`tests/integration/tests/config_fuzz.rs`) for about N seconds
//! in all (three quarters for the modules, a quarter for the parsers), and prints one result
//! line per target with its cases/second and the seed.

use crate::build;
use crate::util::{self, Result};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

pub struct Options {
    pub seconds: f64,
    pub seed: Option<u64>,
}

pub const USAGE: &str = "usage: cargo xtask fuzz --seconds N [--seed S]";

pub fn parse(args: &[String]) -> Result<Options> {
    let mut seconds = None;
    let mut seed = None;
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let value = rest
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--seconds" => {
                let s: f64 = value
                    .parse()
                    .map_err(|e| format!("--seconds {value}: {e}\n{USAGE}"))?;
                if s.is_nan() || s <= 0.0 {
                    return Err(format!("--seconds must be positive\n{USAGE}"));
                }
                seconds = Some(s);
            }
            "--seed" => {
                let parsed = match value.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => value.parse(),
                };
                seed = Some(parsed.map_err(|e| format!("--seed {value}: {e}\n{USAGE}"))?);
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(Options {
        seconds: seconds.ok_or_else(|| format!("--seconds is required\n{USAGE}"))?,
        seed,
    })
}

/// A seed from the clock when none is given (printed, so the run can be replayed).
fn fresh_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 % 1_000_000_000_000)
        .unwrap_or(1)
}

pub fn fuzz(options: &Options) -> Result<()> {
    let started = Instant::now();
    let artifacts = build::build()?;
    let seed = options.seed.unwrap_or_else(fresh_seed);
    println!("\n==> xtask fuzz: seed {seed}, about {}s", options.seconds);
    let mut failed = Vec::new();
    let mut results = Vec::new();
    for (package, test, share) in [
        ("switchyard-wasmhost", "fuzz", 0.75),
        ("switchyard-integration", "config_fuzz", 0.25),
    ] {
        let mut cmd = util::cargo();
        cmd.args(["test", "-p", package, "--test", test, "--", "--nocapture"])
            .env(
                "SWITCHYARD_FUZZ_SECONDS",
                (options.seconds * share).to_string(),
            )
            .env("SWITCHYARD_FUZZ_SEED", seed.to_string())
            .env("SWITCHYARD_DIST", &artifacts.dist)
            .env("SWITCHYARD_UPSTREAM_BIN", &artifacts.upstream_bin);
        match run_collecting(&mut cmd, &mut results) {
            Ok(()) => {}
            Err(e) => failed.push(format!("{package} --test {test}: {e}")),
        }
    }
    println!("\n==> xtask fuzz: results (seed {seed}):");
    for line in &results {
        println!("  {line}");
    }
    println!("==> xtask fuzz: done in {}s", started.elapsed().as_secs());
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} (replay with `cargo xtask fuzz --seconds {} --seed {seed}`; the failing cases are printed above)",
            failed.join("; "),
            options.seconds
        ))
    }
}

/// Runs `cmd` with its output streamed live; keeps the tests' `fuzz ...: N cases ...` lines.
fn run_collecting(cmd: &mut Command, results: &mut Vec<String>) -> Result<()> {
    let line = util::describe(cmd);
    eprintln!("xtask: $ {line}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start `{line}`: {e}"))?;
    if let Some(out) = child.stdout.take() {
        for l in BufReader::new(out)
            .lines()
            .map_while(std::result::Result::ok)
        {
            println!("{l}");
            if l.starts_with("fuzz ") && l.contains(" cases (") {
                results.push(l);
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for `{line}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("failed ({status})"))
    }
}
