//! The response / log side as pure functions: from what Envoy reports about the upstream
//! exchange, which hosts get a success or failure observation (passive health), which host's
//! latency estimate gets a sample or the failure penalty (`p2c_ewma`), and which in-flight
//! counts the stream releases ([`plan_outcome`]). No host calls: the glue reads the facts and
//! applies the plan (health CAS, estimate CAS, releases).

use crate::config::{Config, Host};
use crate::p2c::Ewma;
use std::collections::BTreeMap;

/// Envoy `response.flags` bits that mean the upstream host failed the request: timeout (UT),
/// remote reset (UR), connection failure (UF), connection termination (UC).
pub const UPSTREAM_FAILURE_FLAGS: u64 = 0x4 | 0x10 | 0x20 | 0x40;

/// What this request holds from its host choice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    /// Host indices listed for Envoy, in order (chosen first).
    pub listed: Vec<usize>,
    /// Bounded loads: the host whose shared in-flight count is held.
    pub load: Option<String>,
    /// `p2c_ewma`: the host whose per-worker in-flight count is held, and when the request
    /// started.
    pub in_flight: Option<(String, u64)>,
}

/// What Envoy reports about the upstream exchange, read in `on_log`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamFacts {
    /// `upstream.address`, when not empty: the host that served. `None`: the request never
    /// reached an upstream (a local reply), so nothing is an upstream outcome.
    pub served: Option<String>,
    /// The status as the upstream sent it (seen in the response headers before later filters
    /// could replace it), else `response.code`, else 0.
    pub status: u64,
    /// `response.flags`.
    pub flags: u64,
    /// `upstream.request_attempt_count` (1 when unknown).
    pub attempts: u64,
    /// The response carries `Retry-After`.
    pub retry_after: bool,
    /// When the response headers arrived.
    pub responded_at: Option<u64>,
}

/// Everything the end of one stream does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutcomePlan {
    /// Bounded loads: release this host's shared in-flight count.
    pub release_load: Option<String>,
    /// `p2c_ewma`: release this host's per-worker in-flight count.
    pub release_in_flight: Option<String>,
    /// Passive health: `(host index, failed)` for each host actually tried, in order.
    pub health: Vec<(usize, bool)>,
    /// `p2c_ewma`: `(served address, sample ns)` to fold into the shared estimate (a latency,
    /// or the failure penalty).
    pub latency: Option<(String, u64)>,
}

/// The plan for a finished stream of ours. `hosts` is the set the request was decided on.
pub fn plan_outcome(
    config: &Config,
    hosts: &[Host],
    held: &Held,
    facts: &UpstreamFacts,
) -> OutcomePlan {
    let mut plan = OutcomePlan {
        release_load: held.load.clone(),
        ..Default::default()
    };
    if config.health.is_some() {
        plan.health = health_outcomes(hosts, &held.listed, facts);
    }
    if let (Some((address, started)), Some(p)) = (&held.in_flight, &config.p2c) {
        plan.release_in_flight = Some(address.clone());
        plan.latency = facts.served.as_ref().and_then(|served| {
            let failed = facts.status >= 500
                || facts.flags & UPSTREAM_FAILURE_FLAGS != 0
                || ((facts.status == 429 || facts.status == 503) && facts.retry_after);
            let sample = if failed {
                p.failure_penalty_ns
            } else {
                // No response and no failure: nothing learned.
                facts.responded_at?.saturating_sub(*started).max(1)
            };
            Some((served.clone(), sample))
        });
    }
    plan
}

/// Passive health: the outcome attributed to the host that served (`upstream.address`). With
/// the header output, retries walk the listed hosts in order, so hosts listed before the one
/// that finally served were tried and failed.
fn health_outcomes(hosts: &[Host], listed: &[usize], facts: &UpstreamFacts) -> Vec<(usize, bool)> {
    let Some(served) = &facts.served else {
        // Never reached an upstream (local reply before routing): nothing to attribute.
        return Vec::new();
    };
    let failed = facts.status >= 500 || facts.flags & UPSTREAM_FAILURE_FLAGS != 0;
    if facts.status == 0 && !failed {
        // No response and no upstream fault (e.g. the client went away): unknown.
        return Vec::new();
    }
    let served = hosts.iter().position(|h| &h.address == served);
    tried_hosts(listed, served, facts.attempts, failed)
}

/// The hosts a finished request actually tried, with whether each failed. Envoy's
/// `override_host` walks the listed hosts in order, one per attempt, so when the served host is
/// the `attempts`-th listed one, the hosts before it were tried and failed. Otherwise (a host
/// Envoy skipped without trying, a request that went elsewhere) only the served host is known.
pub fn tried_hosts(
    listed: &[usize],
    served: Option<usize>,
    attempts: u64,
    failed: bool,
) -> Vec<(usize, bool)> {
    let Some(served) = served else {
        return Vec::new();
    };
    let attempts = usize::try_from(attempts).unwrap_or(usize::MAX);
    match attempts.checked_sub(1) {
        Some(pos) if pos > 0 && listed.get(pos) == Some(&served) => listed[..pos]
            .iter()
            .map(|h| (*h, true))
            .chain([(served, failed)])
            .collect(),
        _ => vec![(served, failed)],
    }
}

/// Folds one latency sample into the shared estimates; only hosts of `hosts` keep an estimate
/// (the map stays bounded).
pub fn fold_latency(
    map: &mut BTreeMap<String, Ewma>,
    served: &str,
    sample: u64,
    now: u64,
    decay_ns: u64,
    hosts: Option<&[Host]>,
) {
    let e = map.get(served).copied().unwrap_or_default();
    map.insert(served.to_string(), e.observe(sample, now, decay_ns));
    if let Some(hosts) = hosts {
        map.retain(|addr, _| hosts.iter().any(|h| &h.address == addr));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn config(extra: &str) -> Config {
        let json = format!(
            r#"{{"hosts": [{{"address": "10.0.0.1:80"}}, {{"address": "10.0.0.2:80"}},
                {{"address": "10.0.0.3:80"}}], "hash_key": [{{"header": "k"}}]{extra}}}"#
        );
        Config::parse(json.as_bytes()).unwrap()
    }

    fn facts(served: Option<&str>, status: u64, attempts: u64) -> UpstreamFacts {
        UpstreamFacts {
            served: served.map(str::to_string),
            status,
            attempts,
            ..Default::default()
        }
    }

    const HEALTH: &str = r#", "health": {"failures": 3, "cooldown": "10s"}"#;

    #[test]
    fn only_hosts_actually_tried_are_attributed() {
        // Third attempt served by the third listed host: the first two failed.
        assert_eq!(
            tried_hosts(&[4, 7, 2], Some(2), 3, false),
            vec![(4, true), (7, true), (2, false)]
        );
        // One attempt, served by a later listed host (Envoy skipped the first without trying
        // it): only the served host is known.
        assert_eq!(tried_hosts(&[4, 7, 2], Some(7), 1, true), vec![(7, true)]);
        // Served by a host that is not in the list (another cluster sharing hosts).
        assert_eq!(tried_hosts(&[4, 7], Some(9), 2, false), vec![(9, false)]);
        assert!(tried_hosts(&[4, 7], None, 1, true).is_empty());
    }

    #[test]
    fn health_goes_to_the_hosts_tried() {
        let c = config(HEALTH);
        let held = Held {
            listed: vec![2, 0, 1],
            ..Default::default()
        };
        // Second attempt, served by the second listed host: the first failed.
        let p = plan_outcome(&c, &c.hosts, &held, &facts(Some("10.0.0.1:80"), 200, 2));
        assert_eq!(p.health, vec![(2, true), (0, false)]);
        // A 5xx from the primary on the first attempt: only it failed.
        let p = plan_outcome(&c, &c.hosts, &held, &facts(Some("10.0.0.3:80"), 503, 1));
        assert_eq!(p.health, vec![(2, true)]);
        // An upstream reset without a status is a failure.
        let reset = UpstreamFacts {
            flags: 0x10,
            ..facts(Some("10.0.0.3:80"), 0, 1)
        };
        assert_eq!(
            plan_outcome(&c, &c.hosts, &held, &reset).health,
            vec![(2, true)]
        );
        // A host outside the set is not recorded; neither is a stream without a status or a
        // fault (the client went away).
        let p = plan_outcome(&c, &c.hosts, &held, &facts(Some("10.9.9.9:80"), 500, 1));
        assert!(p.health.is_empty());
        let p = plan_outcome(&c, &c.hosts, &held, &facts(Some("10.0.0.3:80"), 0, 1));
        assert!(p.health.is_empty());
        // Without `health` nothing is observed.
        let p = plan_outcome(
            &config(""),
            &c.hosts,
            &held,
            &facts(Some("10.0.0.3:80"), 500, 1),
        );
        assert!(p.health.is_empty());
    }

    #[test]
    fn local_replies_are_never_upstream_outcomes() {
        let c = config(&format!(r#"{HEALTH}, "algorithm": "p2c_ewma""#));
        let held = Held {
            listed: vec![1, 2],
            load: None,
            in_flight: Some(("10.0.0.2:80".to_string(), 5 * MS)),
        };
        // A 429 or a cache hit answered before any upstream: no `upstream.address`.
        for status in [429, 503, 200] {
            let f = UpstreamFacts {
                retry_after: true,
                responded_at: Some(6 * MS),
                ..facts(None, status, 1)
            };
            let p = plan_outcome(&c, &c.hosts, &held, &f);
            assert!(p.health.is_empty());
            assert_eq!(p.latency, None);
            // The held in-flight count is still released, exactly once.
            assert_eq!(p.release_in_flight.as_deref(), Some("10.0.0.2:80"));
        }
    }

    #[test]
    fn latency_samples_and_penalties() {
        let c = config(r#", "algorithm": "p2c_ewma", "p2c": {"failure_penalty": "2s"}"#);
        let held = Held {
            in_flight: Some(("10.0.0.2:80".to_string(), 5 * MS)),
            ..Default::default()
        };
        let ok = UpstreamFacts {
            responded_at: Some(12 * MS),
            ..facts(Some("10.0.0.2:80"), 200, 1)
        };
        let p = plan_outcome(&c, &c.hosts, &held, &ok);
        assert_eq!(p.latency, Some(("10.0.0.2:80".to_string(), 7 * MS)));
        // 5xx, or 429 with Retry-After: the failure penalty.
        let penalty = Some(("10.0.0.2:80".to_string(), 2000 * MS));
        let p = plan_outcome(&c, &c.hosts, &held, &facts(Some("10.0.0.2:80"), 502, 1));
        assert_eq!(p.latency, penalty);
        let busy = UpstreamFacts {
            retry_after: true,
            ..facts(Some("10.0.0.2:80"), 429, 1)
        };
        assert_eq!(plan_outcome(&c, &c.hosts, &held, &busy).latency, penalty);
        // No response and no failure: nothing learned.
        let gone = facts(Some("10.0.0.2:80"), 0, 1);
        assert_eq!(plan_outcome(&c, &c.hosts, &held, &gone).latency, None);
    }

    #[test]
    fn bounded_load_counts_are_released() {
        let c = config(r#", "bounded_load": {"factor": 1.25}"#);
        let held = Held {
            listed: vec![0],
            load: Some("10.0.0.1:80".to_string()),
            in_flight: None,
        };
        let p = plan_outcome(&c, &c.hosts, &held, &facts(None, 0, 1));
        assert_eq!(p.release_load.as_deref(), Some("10.0.0.1:80"));
        assert_eq!(p.release_in_flight, None);
    }

    #[test]
    fn estimates_stay_bounded_to_the_set() {
        let c = config("");
        let mut map = BTreeMap::new();
        map.insert("10.9.9.9:80".to_string(), Ewma::default());
        fold_latency(
            &mut map,
            "10.0.0.1:80",
            3 * MS,
            10,
            10_000 * MS,
            Some(&c.hosts),
        );
        assert_eq!(map.keys().collect::<Vec<_>>(), vec!["10.0.0.1:80"]);
        assert_eq!(map["10.0.0.1:80"].value_ns, (3 * MS) as f64);
    }
}
