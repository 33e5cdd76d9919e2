//! Routing decision cost against table size (native, release):
//! `cargo bench -p switchyard-router --bench decide`.
//! Exact and prefix routes are indexed, so their cost should stay flat from 10 to 10 000 routes;
//! regex routes are tried in order, so their cost grows with the table (shown for contrast).

use serde_json::{json, Value};
use std::hint::black_box;
use std::time::Instant;
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

fn measure(label: &str, t: &Table, reqs: &[RequestView]) {
    let iters = 200_000;
    let mut rng = || 0x9E37_79B9_7F4A_7C15u64;
    let start = Instant::now();
    for i in 0..iters {
        black_box(t.decide(black_box(&reqs[i % reqs.len()]), &mut rng, false));
    }
    let ns = start.elapsed().as_nanos() as f64 / iters as f64;
    println!("{label:<28} {ns:>9.0} ns/decision");
}

fn main() {
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
        measure(&format!("prefix+exact, {n} routes"), &indexed(n), &reqs);
    }
    for n in [10usize, 100, 1000] {
        let reqs: Vec<RequestView> = (0..64)
            .map(|k| RequestView::new("GET", &format!("/svc{}/abc", (k * 7919) % n)))
            .collect();
        measure(&format!("regex, {n} routes"), &regexes(n), &reqs);
    }
}
