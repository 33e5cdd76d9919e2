//! `switchyard-upstream --id u1 --listen 127.0.0.1:8081 [--workers N] [--latency 5ms]
//! [--jitter exp:2ms|uniform:2ms|none]`
//!
//! Prints `LISTENING <addr>` once the port is bound, then serves until killed. `--latency` and
//! `--jitter` set the server's latency profile (see the library docs; `/__latency` changes it
//! at run time).

use std::net::SocketAddr;
use std::process::ExitCode;
use switchyard_upstream::{Jitter, LatencyProfile};

fn usage() -> ExitCode {
    eprintln!(
        "usage: switchyard-upstream [--id ID] [--listen ADDR:PORT] [--workers N] \
         [--latency DURATION] [--jitter none|exp:DURATION|uniform:DURATION]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut id = String::from("upstream");
    let mut listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8081));
    let mut workers = 2usize;
    let mut latency = LatencyProfile::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = match arg.as_str() {
            "-h" | "--help" => return usage(),
            "--id" | "--listen" | "--workers" | "--latency" | "--jitter" => match args.next() {
                Some(v) => v,
                None => return usage(),
            },
            _ => return usage(),
        };
        match arg.as_str() {
            "--id" => id = value,
            "--listen" => match value.parse() {
                Ok(a) => listen = a,
                Err(_) => {
                    eprintln!("invalid --listen address: {value}");
                    return usage();
                }
            },
            "--latency" => {
                if let Err(e) = latency.apply("base", &value) {
                    eprintln!("invalid --latency: {e}");
                    return usage();
                }
            }
            "--jitter" => match Jitter::parse(&value) {
                Ok(j) => latency.jitter = j,
                Err(e) => {
                    eprintln!("invalid --jitter: {e}");
                    return usage();
                }
            },
            _ => match value.parse() {
                Ok(n) => workers = n,
                Err(_) => return usage(),
            },
        }
    }
    let up = match switchyard_upstream::Upstream::start_with(&id, listen, workers) {
        Ok(up) => up,
        Err(e) => {
            eprintln!("switchyard-upstream: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    up.set_latency(latency);
    println!("LISTENING {}", up.addr());
    loop {
        std::thread::park();
    }
}
