//! Hash quality of ring / maglev / rendezvous (native, deterministic):
//! `cargo bench -p switchyard-hashring --bench quality`. Prints markdown tables:
//! - keys remapped when one of N hosts is added or removed, against the ideal 1/N (goal: within 10%);
//! - max/mean load and its standard deviation for uniform and Zipf(1.1) keys, without and with
//!   bounded loads (factor 1.25; every request stays in flight, the worst case for the bound);
//! - weights honoured: configured share vs actual share of keys.

use switchyard_core::hash::stable_hash64;
use switchyard_hashring::config::{Algorithm, Host, DEFAULT_TABLE_SIZE, DEFAULT_VNODES};
use switchyard_hashring::select::{select, Loads};
use switchyard_hashring::table::Table;

const ALGORITHMS: [Algorithm; 3] = [Algorithm::Ring, Algorithm::Maglev, Algorithm::Rendezvous];
const KEYS: u64 = 200_000;

fn hosts(weights: &[u32]) -> Vec<Host> {
    weights
        .iter()
        .enumerate()
        .map(|(i, w)| Host {
            address: format!("10.{}.{}.{}:8080", i / 65536, (i / 256) % 256, i % 256),
            weight: *w,
        })
        .collect()
}

fn build(a: Algorithm, h: &[Host]) -> Table {
    Table::build(a, h, DEFAULT_VNODES, DEFAULT_TABLE_SIZE)
}

fn key_hashes() -> Vec<u64> {
    (0..KEYS)
        .map(|i| stable_hash64(format!("user-{i}").as_bytes()))
        .collect()
}

/// Fraction of keys whose primary host address changes between two host lists.
fn remapped(a: Algorithm, before: &[Host], after: &[Host], keys: &[u64]) -> f64 {
    let (t0, t1) = (build(a, before), build(a, after));
    let moved = keys
        .iter()
        .filter(|k| {
            let p0 = t0.primary(**k).map(|i| &before[i].address);
            let p1 = t1.primary(**k).map(|i| &after[i].address);
            p0 != p1
        })
        .count();
    moved as f64 / keys.len() as f64
}

fn remap_table(keys: &[u64]) {
    println!("### Keys remapped when one host is added or removed (ideal 1/N)\n");
    println!("| algorithm | N | removed | added | ideal 1/N | worst deviation |\n|---|---|---|---|---|---|");
    for a in ALGORITHMS {
        for n in [10usize, 100] {
            let all = hosts(&vec![1; n + 1]);
            let base = &all[..n];
            // Remove a host from the middle, add the (n+1)-th.
            let mut removed_list = base.to_vec();
            removed_list.remove(n / 2);
            let removed = remapped(a, base, &removed_list, keys);
            let added = remapped(a, base, &all, keys);
            let (ideal_rm, ideal_add) = (1.0 / n as f64, 1.0 / (n + 1) as f64);
            let dev = ((removed / ideal_rm - 1.0).abs()).max((added / ideal_add - 1.0).abs());
            println!(
                "| {} | {n} | {:.4} | {:.4} | {:.4} | {:.1}% |",
                a.name(),
                removed,
                added,
                ideal_rm,
                dev * 100.0
            );
        }
    }
    println!();
}

/// Deterministic xorshift64*.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `len` requests whose keys follow Zipf(s) over `n` distinct keys.
fn zipf_requests(n: usize, len: usize, s: f64) -> Vec<u64> {
    let mut cdf = Vec::with_capacity(n);
    let mut total = 0.0;
    for r in 1..=n {
        total += 1.0 / (r as f64).powf(s);
        cdf.push(total);
    }
    let mut rng = Rng(0x5EED);
    (0..len)
        .map(|_| {
            let rank = cdf.partition_point(|c| *c < rng.unit() * total).min(n - 1);
            stable_hash64(format!("user-{rank}").as_bytes())
        })
        .collect()
}

/// Requests per host: primary only, or with bounded loads where every request stays in flight.
fn loads(table: &Table, n: usize, requests: &[u64], bound: Option<f64>) -> Vec<u64> {
    let mut per_host = vec![0u64; n];
    let healthy = vec![true; n];
    for (i, key) in requests.iter().enumerate() {
        let chosen = match bound {
            None => table.primary(*key),
            Some(factor) => {
                let l = Loads {
                    per_host: &per_host,
                    total: i as u64,
                    factor,
                };
                select(table.walk(*key), &healthy, Some(l), 0).chosen()
            }
        };
        if let Some(h) = chosen {
            per_host[h] += 1;
        }
    }
    per_host
}

fn stats(per_host: &[u64]) -> (f64, f64) {
    let n = per_host.len() as f64;
    let mean = per_host.iter().sum::<u64>() as f64 / n;
    let max = per_host.iter().copied().max().unwrap_or(0) as f64;
    let var = per_host
        .iter()
        .map(|l| (*l as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    (max / mean, var.sqrt() / mean)
}

fn load_table(uniform: &[u64]) {
    let zipf = zipf_requests(100_000, KEYS as usize, 1.1);
    println!("### Load per host (max/mean, stddev/mean), {KEYS} requests\n");
    println!("| algorithm | hosts | keys | bounded load | max/mean | stddev/mean |\n|---|---|---|---|---|---|");
    for a in ALGORITHMS {
        for n in [10usize, 100] {
            let table = build(a, &hosts(&vec![1; n]));
            for (label, reqs) in [("uniform", uniform), ("zipf(1.1)", &zipf[..])] {
                for bound in [None, Some(1.25)] {
                    let (max_mean, sd) = stats(&loads(&table, n, reqs, bound));
                    println!(
                        "| {} | {n} | {label} | {} | {max_mean:.3} | {sd:.3} |",
                        a.name(),
                        bound.map_or("off".to_owned(), |f| format!("factor {f}"))
                    );
                }
            }
        }
    }
    println!();
}

fn weight_table(keys: &[u64]) {
    let weights = [1u32, 2, 3, 4];
    let h = hosts(&weights);
    let total_w: u32 = weights.iter().sum();
    println!("### Weights honoured (hosts weighted 1:2:3:4; configured share vs actual)\n");
    println!(
        "| algorithm | w=1 | w=2 | w=3 | w=4 | worst relative error |\n|---|---|---|---|---|---|"
    );
    for a in ALGORITHMS {
        let table = build(a, &h);
        let counts = loads(&table, h.len(), keys, None);
        let mut worst = 0.0f64;
        let cells: Vec<String> = weights
            .iter()
            .zip(&counts)
            .map(|(w, c)| {
                let want = f64::from(*w) / f64::from(total_w);
                let got = *c as f64 / keys.len() as f64;
                worst = worst.max((got / want - 1.0).abs());
                format!("{:.1}% vs {:.1}%", want * 100.0, got * 100.0)
            })
            .collect();
        println!(
            "| {} | {} | {:.1}% |",
            a.name(),
            cells.join(" | "),
            worst * 100.0
        );
    }
    println!();
}

fn main() {
    let keys = key_hashes();
    println!(
        "Defaults: vnodes {DEFAULT_VNODES}, maglev table {DEFAULT_TABLE_SIZE}; keys `user-<i>`.\n"
    );
    remap_table(&keys);
    load_table(&keys);
    weight_table(&keys);
}
