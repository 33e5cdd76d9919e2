//! Counters and a latency histogram, rendered in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Per-domain counters (`domain="..."`); requests for unconfigured domains count under
/// [`UNKNOWN_DOMAIN`] so a client cannot grow the label set.
#[derive(Debug, Default)]
pub struct DomainCounters {
    pub requests: AtomicU64,
    pub ok: AtomicU64,
    pub over_limit: AtomicU64,
    pub shadow_over_limit: AtomicU64,
    pub redis_errors: AtomicU64,
    pub failure_allowed: AtomicU64,
    pub failure_denied: AtomicU64,
    pub failure_error: AtomicU64,
}

pub const UNKNOWN_DOMAIN: &str = "_unknown_";

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

#[derive(Debug)]
pub struct Metrics {
    domains: BTreeMap<String, DomainCounters>,
    unknown: DomainCounters,
    buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

impl Metrics {
    pub fn new<'a>(domains: impl IntoIterator<Item = &'a String>) -> Metrics {
        Metrics {
            domains: domains
                .into_iter()
                .map(|d| (d.clone(), DomainCounters::default()))
                .collect(),
            unknown: DomainCounters::default(),
            buckets: Default::default(),
            latency_count: AtomicU64::new(0),
            latency_sum_us: AtomicU64::new(0),
        }
    }

    pub fn domain(&self, name: &str) -> &DomainCounters {
        self.domains.get(name).unwrap_or(&self.unknown)
    }

    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_us.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Relaxed,
        );
    }

    pub fn render(&self, redis_up: bool) -> String {
        let mut out = String::new();
        type Get = fn(&DomainCounters) -> &AtomicU64;
        let families: [(&str, &str, Get); 8] = [
            ("requests", "ShouldRateLimit calls", |c| &c.requests),
            ("ok", "answers OK", |c| &c.ok),
            ("over_limit", "answers OVER_LIMIT", |c| &c.over_limit),
            (
                "shadow_over_limit",
                "descriptors over their limit in shadow mode (answered OK)",
                |c| &c.shadow_over_limit,
            ),
            (
                "redis_errors",
                "calls whose Redis round trip failed or timed out",
                |c| &c.redis_errors,
            ),
            (
                "redis_failure_allowed",
                "calls answered OK because of redis_failure: allow",
                |c| &c.failure_allowed,
            ),
            (
                "redis_failure_denied",
                "calls answered OVER_LIMIT because of redis_failure: deny",
                |c| &c.failure_denied,
            ),
            (
                "redis_failure_unavailable",
                "calls answered gRPC UNAVAILABLE because of redis_failure: error",
                |c| &c.failure_error,
            ),
        ];
        for (name, help, get) in families {
            let _ = writeln!(out, "# HELP switchyard_rls_{name}_total {help}");
            let _ = writeln!(out, "# TYPE switchyard_rls_{name}_total counter");
            let all = self
                .domains
                .iter()
                .map(|(d, c)| (d.as_str(), c))
                .chain([(UNKNOWN_DOMAIN, &self.unknown)]);
            for (domain, counters) in all {
                let _ = writeln!(
                    out,
                    "switchyard_rls_{name}_total{{domain=\"{}\"}} {}",
                    label(domain),
                    get(counters).load(Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP switchyard_rls_request_duration_seconds ShouldRateLimit handling time"
        );
        let _ = writeln!(
            out,
            "# TYPE switchyard_rls_request_duration_seconds histogram"
        );
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "switchyard_rls_request_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Relaxed)
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(
            out,
            "switchyard_rls_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "switchyard_rls_request_duration_seconds_sum {}",
            self.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "switchyard_rls_request_duration_seconds_count {count}");
        let _ = writeln!(
            out,
            "# HELP switchyard_rls_redis_up 1 when Redis answered PING for this scrape"
        );
        let _ = writeln!(out, "# TYPE switchyard_rls_redis_up gauge");
        let _ = writeln!(out, "switchyard_rls_redis_up {}", u8::from(redis_up));
        out
    }
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histogram() {
        let names = vec!["a\"b".to_string()];
        let m = Metrics::new(&names);
        m.domain("a\"b").requests.fetch_add(2, Relaxed);
        m.domain("nope").requests.fetch_add(1, Relaxed);
        m.observe(Duration::from_micros(300));
        let text = m.render(true);
        assert!(text.contains("switchyard_rls_requests_total{domain=\"a\\\"b\"} 2"));
        assert!(text.contains("switchyard_rls_requests_total{domain=\"_unknown_\"} 1"));
        assert!(text.contains("switchyard_rls_request_duration_seconds_bucket{le=\"0.00025\"} 0"));
        assert!(text.contains("switchyard_rls_request_duration_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(text.contains("switchyard_rls_request_duration_seconds_count 1"));
        assert!(text.contains("switchyard_rls_redis_up 1"));
    }
}
