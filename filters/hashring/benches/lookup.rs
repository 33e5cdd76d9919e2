//! Lookup cost per algorithm at 10, 100 and 1000 hosts (native, release):
//! `cargo bench -p switchyard-hashring --bench lookup`. Goal: ring primary < 100 ns at 1000 hosts.

use std::hint::black_box;
use std::time::Instant;
use switchyard_core::hash::stable_hash64;
use switchyard_hashring::config::{Algorithm, Host};
use switchyard_hashring::table::Table;

fn hosts(n: usize) -> Vec<Host> {
    (0..n)
        .map(|i| Host {
            address: format!("10.{}.{}.{}:8080", i / 65536, (i / 256) % 256, i % 256),
            weight: 1,
        })
        .collect()
}

fn main() {
    let keys: Vec<u64> = (0..4096u64)
        .map(|i| stable_hash64(format!("user-{i}").as_bytes()))
        .collect();
    for n in [10usize, 100, 1000] {
        let h = hosts(n);
        for a in [Algorithm::Ring, Algorithm::Maglev, Algorithm::Rendezvous] {
            let build_start = Instant::now();
            let table = Table::build(a, &h, 160, 65_537);
            let build = build_start.elapsed();
            let iters: usize = if a == Algorithm::Rendezvous && n >= 1000 {
                20_000
            } else {
                2_000_000
            };
            let start = Instant::now();
            let mut acc = 0usize;
            for i in 0..iters {
                acc = acc.wrapping_add(table.primary(black_box(keys[i & 4095])).unwrap_or(0));
            }
            let primary_ns = start.elapsed().as_nanos() as f64 / iters as f64;
            let walk_iters = iters / 10;
            let start = Instant::now();
            for i in 0..walk_iters {
                acc =
                    acc.wrapping_add(table.walk(black_box(keys[i & 4095])).take(3).sum::<usize>());
            }
            let walk_ns = start.elapsed().as_nanos() as f64 / walk_iters as f64;
            black_box(acc);
            println!(
                "{:<10} hosts={n:<5} build={:>8.2} ms  primary={primary_ns:>9.1} ns  first-3-walk={walk_ns:>9.1} ns",
                a.name(),
                build.as_secs_f64() * 1000.0
            );
        }
    }
}
