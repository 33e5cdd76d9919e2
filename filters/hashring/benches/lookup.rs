//! Lookup and table build cost per algorithm at 10, 100 and 1000 hosts of weight 1, at the
//! default settings (ring: `default_vnodes` points per host; Maglev: a table of
//! `DEFAULT_TABLE_SIZE` entries), with criterion (native, release):
//! `cargo bench -p switchyard-hashring --bench lookup`. Goal: ring primary < 100 ns at 1000 hosts.
//!
//! - `hashring/lookup/<algorithm>/<hosts>`: the key's primary host (the fast path);
//! - `hashring/walk3/<algorithm>/<hosts>`: the key's first three distinct hosts (the walk that
//!   bounded-load spill and health skips take);
//! - `hashring/build/<algorithm>/<hosts>`: building the table (once per host-set change).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use std::hint::black_box;
use switchyard_core::hash::stable_hash64;
use switchyard_hashring::config::{default_vnodes, Algorithm, Host, DEFAULT_TABLE_SIZE};
use switchyard_hashring::table::Table;

const ALGORITHMS: [Algorithm; 3] = [Algorithm::Ring, Algorithm::Maglev, Algorithm::Rendezvous];
const HOSTS: [usize; 3] = [10, 100, 1000];

fn hosts(n: usize) -> Vec<Host> {
    (0..n)
        .map(|i| Host {
            address: format!("10.{}.{}.{}:8080", i / 65536, (i / 256) % 256, i % 256),
            weight: 1,
        })
        .collect()
}

/// The table a configuration with these hosts and no `vnodes` / `table_size` builds.
fn table(a: Algorithm, hosts: &[Host]) -> Table {
    Table::build(a, hosts, default_vnodes(hosts), DEFAULT_TABLE_SIZE)
}

/// 4096 key hashes, cycled through so the lookups do not all hit the same cache lines.
fn keys() -> Vec<u64> {
    (0..4096u64)
        .map(|i| stable_hash64(format!("user-{i}").as_bytes()))
        .collect()
}

/// Benchmarks `query` on every algorithm's table at every host count, as group `name`, cycling
/// through the 4096 keys.
fn per_key(c: &mut Criterion, name: &str, query: impl Fn(&Table, u64) -> usize) {
    let keys = keys();
    let mut group = c.benchmark_group(name);
    for n in HOSTS {
        let h = hosts(n);
        for a in ALGORITHMS {
            let table = table(a, &h);
            let mut i = 0usize;
            group.bench_function(BenchmarkId::new(a.name(), n), |b| {
                b.iter(|| {
                    i = i.wrapping_add(1);
                    query(&table, black_box(keys[i & 4095]))
                })
            });
        }
    }
    group.finish();
}

fn lookup(c: &mut Criterion) {
    per_key(c, "hashring/lookup", |table, key| {
        table.primary(key).unwrap_or(usize::MAX)
    });
}

fn walk3(c: &mut Criterion) {
    per_key(c, "hashring/walk3", |table, key| {
        table.walk(key).take(3).sum::<usize>()
    });
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("hashring/build");
    // Builds take up to about 100 ms: few samples with the same iteration count each,
    // else criterion's default (100 samples of 1, 2, ... 100 iterations) takes minutes.
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    for n in HOSTS {
        let h = hosts(n);
        for a in ALGORITHMS {
            group.bench_function(BenchmarkId::new(a.name(), n), |b| {
                // The table is dropped outside the measurement.
                b.iter_with_large_drop(|| table(a, black_box(&h)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, lookup, walk3, build);
criterion_main!(benches);
