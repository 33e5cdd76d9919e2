//! The host-call benchmark's report: the price of one proxy-wasm host call in Envoy, from the
//! probe filter's `cost` mode (one kind of call made `HOSTCALL_REPEAT` times per request)
//! against the no-op filter, with Envoy answering every request itself.

use super::variants::{Variant, HOSTCALL_REPEAT};
use super::{median, spread, Sample};
use serde_json::{json, Value};
use std::fmt::Write as _;

/// Markdown and JSON: per variant the CPU per request, and per host call its price.
pub fn report(variants: &[Variant], samples: &[Vec<Sample>], header: &str) -> (String, Value) {
    let cpu = |i: usize| -> Vec<f64> { samples[i].iter().map(|s| s.cpu_us_per_req).collect() };
    let base = |name: &str| {
        variants
            .iter()
            .position(|v| v.name == name)
            .map(|i| median(&cpu(i)))
    };
    let (plain, noop) = (base("direct-plain"), base("direct-noop"));
    let mut md = format!("{header}\n\n");
    let _ = writeln!(
        md,
        "Each `direct-<op>` variant makes its host call {HOSTCALL_REPEAT} times per request; \
         its price is (its CPU/request - `direct-noop`'s) / {HOSTCALL_REPEAT}.\n"
    );
    md.push_str(
        "| variant | what | Envoy CPU us/req (min-max) | us per host call |\n|---|---|---|---|\n",
    );
    let mut rows = Vec::new();
    for (i, v) in variants.iter().enumerate() {
        let m = median(&cpu(i));
        let (lo, hi) = spread(&cpu(i));
        let per_call = match (v.name, noop) {
            ("direct-plain" | "direct-noop", _) | (_, None) => None,
            (_, Some(n)) => Some((m - n) / f64::from(HOSTCALL_REPEAT)),
        };
        let price = match (v.name, per_call) {
            ("direct-noop", _) => plain.map_or(String::new(), |p| {
                format!("(the wasm filter itself: {:+.1} us/request)", m - p)
            }),
            (_, Some(c)) => format!("{c:.2}"),
            _ => String::new(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {m:.1} ({lo:.1}-{hi:.1}) | {price} |",
            v.name, v.what
        );
        rows.push(json!({
            "variant": v.name, "what": v.what,
            "cpu_us_per_req": {"median": m, "min": lo, "max": hi, "rounds": cpu(i)},
            "us_per_call": per_call,
        }));
    }
    (
        md,
        json!({"header": header, "repeat": HOSTCALL_REPEAT, "variants": rows}),
    )
}
