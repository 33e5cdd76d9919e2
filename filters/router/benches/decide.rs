//! Routing decision cost against table size, with criterion (native, release):
//! `cargo bench -p switchyard-router --bench decide`.
//!
//! - `router/decide/prefix_exact/<routes>`: half prefix, half exact routes; these are indexed, so
//!   their cost should stay flat from 10 to 10,000 routes;
//! - `router/decide/regex/<routes>`: regex routes, tried in order, so their cost grows with the
//!   table (shown for contrast).
//!
//! Each benchmark cycles through 64 requests that match routes spread over the table.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use serde_json::{json, Value};
use std::hint::black_box;
use switchyard_core::RequestView;
use switchyard_router::config::parse_router_config;
use switchyard_router::table::Table;

fn table(routes: Vec<Value>) -> Table {
    let cfg = json!({"routes": routes, "default": {"cluster": "web"}});
    match parse_router_config(cfg.to_string().as_bytes()) {
        Ok(c) => c.table,
        Err(e) => {
            eprintln!("bench table invalid: {e}");
            std::process::exit(1)
        }
    }
}

fn indexed(n: usize) -> Table {
    table(
        (0..n)
            .map(|i| {
                let path = if i % 2 == 0 {
                    json!({"prefix": format!("/svc{i}/")})
                } else {
                    json!({"exact": format!("/svc{i}")})
                };
                json!({"name": format!("r{i}"), "match": {"path": path}, "action": {"cluster": format!("c{i}")}})
            })
            .collect(),
    )
}

fn regexes(n: usize) -> Table {
    table(
        (0..n)
            .map(|i| {
                json!({"name": format!("r{i}"), "match": {"path": {"regex": format!("/svc{i}/[a-z]+")}},
                       "action": {"cluster": format!("c{i}")}})
            })
            .collect(),
    )
}

fn decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("router/decide");
    let mut measure = |kind: &str, n: usize, t: &Table, reqs: &[RequestView]| {
        let mut rng = || 0x9E37_79B9_7F4A_7C15u64;
        let mut i = 0usize;
        group.bench_function(BenchmarkId::new(kind, n), |b| {
            b.iter(|| {
                i = (i + 1) % reqs.len();
                t.decide(black_box(&reqs[i]), &mut rng, false)
            })
        });
    };
    for n in [10usize, 100, 1000, 10_000] {
        let reqs: Vec<RequestView> = (0..64)
            .map(|k| {
                let i = (k * 7919) % n;
                let path = if i % 2 == 0 {
                    format!("/svc{i}/items/42")
                } else {
                    format!("/svc{i}")
                };
                RequestView::new("GET", &path)
            })
            .collect();
        measure("prefix_exact", n, &indexed(n), &reqs);
    }
    for n in [10usize, 100, 1000] {
        let reqs: Vec<RequestView> = (0..64)
            .map(|k| RequestView::new("GET", &format!("/svc{}/abc", (k * 7919) % n)))
            .collect();
        measure("regex", n, &regexes(n), &reqs);
    }
    group.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
