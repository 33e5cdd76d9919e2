//! The ratelimit filter against a real Envoy 1.40 with `--concurrency 2` (two worker VMs sharing
//! state through shared data) and the upstream test server.
//!
//! Time-window semantics are asserted either with windows long enough that the test's duration
//! cannot matter (1h, 24h), or against a reference GCRA model that knows each request was
//! decided somewhere between its send and its receive instant (exact whenever those bounds
//! determine the decision; ambiguous decisions are accepted either way and followed).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use switchyard_harness::{parallel, wait_until, workspace_root, Envoy, Response};
use switchyard_upstream::Upstream;

fn start(config: Value) -> (Upstream, Envoy) {
    let up = Upstream::start("u1").unwrap();
    let envoy = Envoy::builder()
        .wasm_filter("ratelimit", config)
        .cluster("backend", [up.addr()])
        .start();
    (up, envoy)
}

fn stat(envoy: &Envoy, name: &str) -> u64 {
    envoy.stat_value(&format!("switchyard.ratelimit.{name}"))
}

/// `"a";r=1;t=2, "b";r=3;t=4` → {a: {r: 1, t: 2}, b: {...}}.
fn sf_list(value: &str) -> BTreeMap<String, BTreeMap<String, u64>> {
    value
        .split(',')
        .map(|item| {
            let mut parts = item.trim().split(';');
            let name = parts.next().unwrap().trim_matches('"').to_string();
            let params = parts
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap();
                    (k.to_string(), v.parse().unwrap())
                })
                .collect();
            (name, params)
        })
        .collect()
}

fn retry_after(r: &Response) -> u64 {
    r.header("retry-after")
        .unwrap_or_else(|| panic!("no retry-after: {:?}", r.headers))
        .parse()
        .unwrap()
}

#[test]
fn example_config_validates() {
    let file = "envoy/ratelimit.yaml";
    switchyard_integration::assert_envoy_accepts(file);
}

#[test]
fn example_and_demo_configurations_pass_validation() {
    let yaml = std::fs::read_to_string(workspace_root().join("envoy/ratelimit.yaml")).unwrap();
    let start = yaml.find("value: |").unwrap() + "value: |".len();
    let end = yaml[start..]
        .find("- name: envoy.filters.http.router")
        .unwrap()
        + start;
    switchyard_ratelimit::validate_config(&yaml.as_bytes()[start..end]).unwrap();
    let demo = std::fs::read(workspace_root().join("envoy/demo/ratelimit.json")).unwrap();
    switchyard_ratelimit::validate_config(&demo).unwrap();
}

#[test]
fn invalid_configuration_is_rejected_naming_the_field() {
    let up = Upstream::start("u1").unwrap();
    let rule = |limits: Value| json!({"rules": [{"name": "r", "limits": limits}]});
    let cases = [
        (
            rule(json!([{"requests": 0, "per": "1s"}])),
            "rules[0].limits[0].requests",
        ),
        (
            rule(json!([{"requests": 1, "per": "soon"}])),
            "rules[0].limits[0].per",
        ),
        (
            rule(json!([{"requests": 1, "per": "1s", "brust": 2}])),
            "rules[0].limits[0].brust",
        ),
        (
            json!({"rules": [{"name": "r", "match": {"path": {"regex": "(["}},
                   "limits": [{"requests": 1, "per": "1s"}]}]}),
            "rules[0].match.path",
        ),
        (
            json!({"rules": [{"name": "r", "limits": [{"requests": 1, "per": "1s"}]},
                             {"name": "r", "limits": [{"requests": 1, "per": "1s"}]}]}),
            "rules[1].name",
        ),
    ];
    for (config, field) in cases {
        let err = Envoy::builder()
            .wasm_filter("ratelimit", config.clone())
            .cluster("backend", [up.addr()])
            .try_start()
            .err()
            .unwrap_or_else(|| panic!("Envoy accepted {config}"));
        let needle = format!("switchyard ratelimit: invalid configuration: {field}");
        assert!(err.log.contains(&needle), "no {needle:?} in\n{}", err.log);
    }
}

/// Reference GCRA for one tier with interval bounds on the unknown decision time.
struct TierModel {
    interval: i128,
    capacity: i128,
    /// Bounds of the theoretical arrival time; `None` = fresh.
    tat: Option<(i128, i128)>,
}

impl TierModel {
    fn new(requests: i128, per_s: i128) -> TierModel {
        let interval = per_s * 1_000_000_000 / requests;
        TierModel {
            interval,
            capacity: interval * requests,
            tat: None,
        }
    }
    /// (certainly admits, certainly rejects) for a decision somewhere in [s, r].
    fn bounds(&self, s: i128, r: i128) -> (bool, bool) {
        match self.tat {
            None => (true, false),
            Some((lo, hi)) => (
                hi - s <= self.capacity - self.interval,
                lo - r > self.capacity - self.interval,
            ),
        }
    }
    fn admit(&mut self, s: i128, r: i128) {
        let (lo, hi) = self.tat.unwrap_or((s, r));
        self.tat = Some((lo.max(s) + self.interval, hi.max(r) + self.interval));
    }
    /// Bounds of the wait until this tier admits.
    fn retry(&self, s: i128, r: i128) -> (i128, i128) {
        match self.tat {
            None => (0, 0),
            Some((lo, hi)) => (
                (lo - r + self.interval - self.capacity).max(0),
                (hi - s + self.interval - self.capacity).max(0),
            ),
        }
    }
}

fn ceil_s(ns: i128) -> u64 {
    ((ns + 999_999_999) / 1_000_000_000).max(1) as u64
}

/// The issue's tiers (1/s + 5/10s + 10/min, token bucket), keyed by client IP behind one
/// trusted proxy so each phase is a fresh client.
#[test]
fn tiered_limits_admit_exactly_what_gcra_allows() {
    let (_up, envoy) = start(json!({
        "rules": [{
            "name": "per-ip",
            "match": {"path": {"prefix": "/api"}},
            "key": [{"client_ip": {"trusted_hops": 1}}],
            "limits": [
                {"requests": 1, "per": "1s"},
                {"requests": 5, "per": "10s"},
                {"requests": 10, "per": "1m"}
            ]
        }]
    }));

    // Phase 1: a parallel burst from one client. The 1s tier admits one request per second of
    // burst duration; the 10s tier at most 5.
    let began = Instant::now();
    let burst = parallel(40, 16, |_| {
        envoy
            .get("/api/burst")
            .header("x-forwarded-for", "198.51.100.1")
    });
    let elapsed = began.elapsed();
    let (ok, limited) = switchyard_integration::ok_and_limited(&burst);
    assert_eq!(ok + limited, 40);
    let bound = (1 + elapsed.as_secs() as usize).min(5);
    assert!(ok >= 1 && ok <= bound, "{ok} admitted in {elapsed:?}");
    if elapsed < Duration::from_secs(1) {
        assert_eq!(ok, 1, "a burst within one second admits exactly one");
    }
    // Paths outside the rule's match are never limited.
    for _ in 0..5 {
        let r = envoy
            .get("/health")
            .header("x-forwarded-for", "198.51.100.1")
            .send();
        assert_eq!(r.status, 200);
        assert!(r.header("ratelimit").is_none());
    }

    // Phase 2: a fresh client sends sequentially for 20s; every decision the model can
    // determine from the send/receive bounds must match, and so must Retry-After.
    let mut tiers = [
        TierModel::new(1, 1),
        TierModel::new(5, 10),
        TierModel::new(10, 60),
    ];
    let origin = Instant::now();
    let ns = |t: Instant| t.duration_since(origin).as_nanos() as i128;
    let (mut admitted, mut rejected, mut ambiguous) = (0, 0, 0);
    let mut admitted_at = vec![];
    while origin.elapsed() < Duration::from_secs(20) {
        let s = ns(Instant::now());
        let resp = envoy
            .get("/api/orders")
            .header("x-forwarded-for", "198.51.100.2")
            .send();
        let r = ns(Instant::now());
        let got = match resp.status {
            200 => true,
            429 => false,
            other => panic!("status {other}: {}", resp.text()),
        };
        let bounds: Vec<(bool, bool)> = tiers.iter().map(|t| t.bounds(s, r)).collect();
        let certain_reject = bounds.iter().any(|b| b.1);
        let certain_admit = bounds.iter().all(|b| b.0);
        if certain_reject || certain_admit {
            assert_eq!(
                got, certain_admit,
                "request at {s}ns..{r}ns: model {bounds:?}"
            );
        } else {
            ambiguous += 1;
        }
        if got {
            admitted += 1;
            admitted_at.push(s / 1_000_000);
            for t in &mut tiers {
                t.admit(s, r);
            }
            let rl = sf_list(resp.header("ratelimit").unwrap());
            assert!(rl.contains_key("per-ip"), "{rl:?}");
        } else {
            rejected += 1;
            let (lo, hi) = tiers
                .iter()
                .map(|t| t.retry(s, r))
                .fold((0, 0), |a, b| (a.0.max(b.0), a.1.max(b.1)));
            let ra = retry_after(&resp);
            assert!(
                (ceil_s(lo)..=ceil_s(hi)).contains(&ra),
                "Retry-After {ra} outside [{lo}, {hi}]ns"
            );
            assert_eq!(resp.json()["retry_after"], ra);
            assert_eq!(resp.json()["rule"], "per-ip");
        }
        std::thread::sleep(Duration::from_millis(40));
    }
    eprintln!(
        "tiered: {admitted} admitted at {admitted_at:?} ms, {rejected} rejected, {ambiguous} ambiguous"
    );
    // In 20s the three tiers allow at least 9 (1/s while the 10s tier lasts) and at most
    // 10 + 20/6 (minute tier) requests.
    assert!((9..=13).contains(&admitted), "{admitted}");
    assert!(rejected > 100);
}

/// Many parallel connections spread over both workers: the admitted count for one key must
/// equal the limit exactly, for both algorithms.
#[test]
fn limits_are_exact_across_workers() {
    let (up, envoy) = start(json!({
        "rules": [
            {"name": "bucket", "match": {"path": {"prefix": "/tb"}}, "key": [{"header": "x-user-id"}],
             "limits": [{"requests": 40, "per": "24h"}]},
            {"name": "window", "match": {"path": {"prefix": "/sw"}}, "key": [{"header": "x-user-id"}],
             "algorithm": "sliding_window", "limits": [{"requests": 40, "per": "24h"}]}
        ]
    }));
    for (path, rule) in [("/tb", "bucket"), ("/sw", "window")] {
        let results = parallel(400, 24, |_| envoy.get(path).header("x-user-id", "alice"));
        let (ok, limited) = switchyard_integration::ok_and_limited(&results);
        assert_eq!((ok, limited), (40, 360), "{rule}");
        assert_eq!(
            up.count_path(path),
            40,
            "{rule}: upstream saw only admitted requests"
        );
        wait_until("metrics", Duration::from_secs(5), || {
            stat(&envoy, &format!("{rule}.allowed")) == 40
                && stat(&envoy, &format!("{rule}.limited")) == 360
        });
        eprintln!(
            "{rule}: cas_retries={}",
            stat(&envoy, &format!("{rule}.cas_retries"))
        );
    }
    // Both workers served: Envoy's per-worker connection stats.
    let stats = envoy.stats();
    let workers = stats
        .iter()
        .filter(|(k, v)| {
            k.starts_with("listener.")
                && k.contains("worker_")
                && k.ends_with("downstream_cx_total")
                && **v > 0
        })
        .count();
    assert!(
        workers >= 2,
        "both workers must serve connections: {workers}"
    );
}

#[test]
fn per_ip_and_per_user_limits_are_isolated() {
    let (_up, envoy) = start(json!({
        "rules": [
            {"name": "per-ip", "key": [{"client_ip": {"trusted_hops": 1}}],
             "limits": [{"requests": 3, "per": "1h"}]},
            {"name": "per-user", "key": [{"header": "x-user-id"}],
             "limits": [{"requests": 2, "per": "1h"}]}
        ]
    }));
    let send = |ip: &str, user: &str| {
        let r = envoy
            .get("/")
            .header("x-forwarded-for", ip)
            .header("x-user-id", user)
            .send();
        match r.status {
            200 => "ok".to_string(),
            429 => r.json()["rule"].as_str().unwrap().to_string(),
            s => panic!("status {s}"),
        }
    };
    let a = "203.0.113.1";
    let b = "203.0.113.2";
    assert_eq!(send(a, "alice"), "ok");
    assert_eq!(send(a, "alice"), "ok");
    // Alice's third request is over the per-user limit; it must not use ip a's quota.
    assert_eq!(send(a, "alice"), "per-user");
    assert_eq!(send(a, "bob"), "ok");
    // ip a has used its 3; bob's quota is untouched by this rejection.
    assert_eq!(send(a, "bob"), "per-ip");
    // Alice's limit follows her to another IP; another user there is unaffected.
    assert_eq!(send(b, "alice"), "per-user");
    assert_eq!(send(b, "bob"), "ok");
    assert_eq!(send(b, "carol"), "ok");
    assert_eq!(send(b, "dave"), "ok");
    assert_eq!(send(b, "erin"), "per-ip");
    // Requests without x-user-id skip the per-user rule but still count per IP.
    let r = envoy
        .get("/")
        .header("x-forwarded-for", "203.0.113.3")
        .send();
    assert_eq!(r.status, 200);
    let policy = sf_list(r.header("ratelimit-policy").unwrap());
    assert_eq!(policy.keys().collect::<Vec<_>>(), ["per-ip"]);
}

/// The recommended edge setup (`use_remote_address: true`): Envoy appends the peer address to
/// `X-Forwarded-For` and reports the real peer as `source.address`.
#[test]
fn trusted_hops_resist_spoofed_forwarded_for() {
    let up = Upstream::start("u1").unwrap();
    let envoy = Envoy::builder()
        .wasm_filter(
            "ratelimit",
            json!({"rules": [
                {"name": "behind-proxy", "match": {"path": {"prefix": "/proxied"}},
                 "key": [{"client_ip": {"trusted_hops": 2}}], "limits": [{"requests": 2, "per": "1h"}]},
                {"name": "direct", "match": {"path": {"prefix": "/direct"}},
                 "key": [{"client_ip": {"trusted_hops": 0}}], "limits": [{"requests": 2, "per": "1h"}]}
            ]}),
        )
        .cluster("backend", [up.addr()])
        .hcm_extra("use_remote_address: true")
        .start();
    // A trusted proxy in front of Envoy appended the real client (192.0.2.7) and Envoy
    // appended the proxy; the client forged everything to the left.
    let forged = ["1.1.1.1", "2.2.2.2, 3.3.3.3", "4.4.4.4", "192.0.2.8"];
    let codes: Vec<u16> = forged
        .iter()
        .map(|f| {
            let xff = format!("{f}, 192.0.2.7");
            envoy
                .get("/proxied")
                .header("x-forwarded-for", &xff)
                .send()
                .status
        })
        .collect();
    assert_eq!(codes, [200, 200, 429, 429]);
    // A genuinely different client behind the proxy has its own limit.
    let r = envoy
        .get("/proxied")
        .header("x-forwarded-for", "192.0.2.8")
        .send();
    assert_eq!(r.status, 200);
    // Clients talking to Envoy directly: whatever X-Forwarded-For they send, the key is
    // their own address.
    let codes: Vec<u16> = (0..4)
        .map(|i| {
            envoy
                .get("/direct")
                .header("x-forwarded-for", format!("9.9.9.{i}"))
                .send()
                .status
        })
        .collect();
    assert_eq!(codes, [200, 200, 429, 429]);
}

#[test]
fn rejected_requests_consume_nothing_from_other_tiers_or_rules() {
    let (_up, envoy) = start(json!({
        "rules": [
            {"name": "tiers", "match": {"path": {"prefix": "/tiers"}}, "key": [{"header": "x-user-id"}],
             "limits": [{"requests": 1, "per": "1s"}, {"requests": 3, "per": "1h"}]},
            {"name": "per-user", "match": {"path": {"prefix": "/rules"}}, "key": [{"header": "x-user-id"}],
             "limits": [{"requests": 1, "per": "1h"}]},
            {"name": "global", "match": {"path": {"prefix": "/rules"}},
             "limits": [{"requests": 3, "per": "1h"}]}
        ]
    }));
    // Tiers: a burst rejected by the 1s tier leaves the hour tier intact (Envoy's native
    // local rate limiter would drain it here).
    let burst = parallel(50, 16, |_| envoy.get("/tiers").header("x-user-id", "alice"));
    let (mut ok, _) = switchyard_integration::ok_and_limited(&burst);
    assert!((1..=3).contains(&ok));
    let mut later = vec![];
    while ok < 3 {
        std::thread::sleep(Duration::from_millis(1100));
        let r = envoy.get("/tiers").header("x-user-id", "alice").send();
        later.push(r.status);
        if r.status == 200 {
            ok += 1;
        }
        assert!(
            later.len() <= 3,
            "hour tier lost tokens to rejected requests: {later:?}"
        );
    }
    assert!(later.iter().all(|s| *s == 200), "{later:?}");
    std::thread::sleep(Duration::from_millis(1100));
    let r = envoy.get("/tiers").header("x-user-id", "alice").send();
    assert_eq!(r.status, 429, "the hour tier allows exactly 3");
    // 3/h refills one request every 1200s, counted from the first admission.
    let ra = retry_after(&r);
    assert!((1100..=1200).contains(&ra), "{ra}");

    // Rules: alice's burst is rejected by per-user; the global rule keeps 2 for others.
    let burst = parallel(30, 16, |_| envoy.get("/rules").header("x-user-id", "alice"));
    assert_eq!(switchyard_integration::ok_and_limited(&burst), (1, 29));
    for (user, want) in [("bob", 200), ("carol", 200), ("dave", 429)] {
        let r = envoy.get("/rules").header("x-user-id", user).send();
        assert_eq!(r.status, want, "{user}");
    }
    wait_until("metrics", Duration::from_secs(5), || {
        stat(&envoy, "per-user.limited") == 29
            && stat(&envoy, "global.allowed") == 3
            && stat(&envoy, "global.limited") == 1
    });
}

#[test]
fn shadow_mode_tags_but_never_rejects() {
    let (up, envoy) = start(json!({
        "mode": "shadow",
        "rules": [{"name": "shadowed", "key": [{"header": "x-user-id"}],
                   "limits": [{"requests": 2, "per": "1h"}]}]
    }));
    let results = parallel(6, 3, |_| envoy.get("/s").header("x-user-id", "alice"));
    let tagged = results
        .iter()
        .map(|r| r.as_ref().unwrap())
        .inspect(|r| assert_eq!(r.status, 200))
        .filter(|r| r.header("x-ratelimit-shadow").is_some())
        .count();
    assert_eq!(tagged, 4);
    assert_eq!(up.count_path("/s"), 6);
    wait_until("metrics", Duration::from_secs(5), || {
        stat(&envoy, "shadowed.shadow_limited") == 4 && stat(&envoy, "shadowed.allowed") == 2
    });
    assert!(envoy.wait_for_log("shadow mode would reject", Duration::from_secs(5)));
}

#[test]
fn ietf_headers_and_retry_after() {
    let (_up, envoy) = start(json!({
        "headers": "ietf",
        "rules": [{"name": "api", "key": [{"header": "x-user-id"}], "algorithm": "sliding_window",
                   "limits": [{"requests": 3, "per": "1h"}, {"requests": 100, "per": "24h"}]}]
    }));
    let began = Instant::now();
    for k in 1..=3u64 {
        let r = envoy.get("/").header("x-user-id", "alice").send();
        assert_eq!(r.status, 200);
        let policy = sf_list(r.header("ratelimit-policy").unwrap());
        assert_eq!(
            policy["api"],
            BTreeMap::from([("q".into(), 3), ("w".into(), 3600)])
        );
        let state = sf_list(r.header("ratelimit").unwrap());
        assert_eq!(state["api"]["r"], 3 - k);
        // Full quota returns when the newest request leaves the hour window.
        assert!((3600..=3601).contains(&state["api"]["t"]), "{state:?}");
    }
    let r = envoy.get("/").header("x-user-id", "alice").send();
    let waited = began.elapsed().as_secs() + 1;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let ra = retry_after(&r);
    // The first request leaves the window 3600s (+1ms) after it was admitted.
    assert!((3600 - waited..=3601).contains(&ra), "{ra}");
    assert_eq!(
        r.json(),
        json!({"error": "rate_limited", "rule": "api", "retry_after": ra})
    );
    let state = sf_list(r.header("ratelimit").unwrap());
    assert_eq!(state["api"]["r"], 0);
    assert_eq!(
        r.header_all("ratelimit").len(),
        1,
        "headers are not duplicated"
    );

    let (_up2, legacy) = start(json!({
        "headers": "legacy", "status": 503,
        "rules": [{"name": "api", "limits": [{"requests": 2, "per": "1h"}]}]
    }));
    let r = legacy.get("/").send();
    assert_eq!(r.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("1"));
    assert!(r.header("ratelimit").is_none());
    legacy.get("/").send();
    let r = legacy.get("/").send();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    // Token bucket 2/h: the next token is due 30 minutes after the first request.
    assert!(
        (1790..=1800).contains(&retry_after(&r)),
        "{}",
        retry_after(&r)
    );
}

fn memory_allocated(envoy: &Envoy) -> u64 {
    envoy.stat("server.memory_allocated").unwrap_or(0)
}

#[test]
fn key_flood_keeps_memory_bounded_and_active_keys_limited() {
    let (_up, envoy) = start(json!({
        "max_keys": 1000,
        "rules": [{"name": "flood", "key": [{"header": "x-client"}],
                   "limits": [{"requests": 5, "per": "1h"}]}]
    }));
    // The active client uses 3 of its 5.
    for _ in 0..3 {
        assert_eq!(
            envoy.get("/").header("x-client", "victim").send().status,
            200
        );
    }
    let before = memory_allocated(&envoy);
    let flood = parallel(20_000, 16, |i| {
        envoy.get("/").header("x-client", format!("attacker-{i}"))
    });
    let (ok, _) = switchyard_integration::ok_and_limited(&flood);
    assert_eq!(ok, 20_000, "every new key gets its first request");
    wait_until("slots metric", Duration::from_secs(5), || {
        stat(&envoy, "slots_in_use") == 1000
    });
    let after = memory_allocated(&envoy);
    eprintln!(
        "memory_allocated before {before} after {after}; evicted_active {}",
        stat(&envoy, "evicted_active")
    );
    assert!(stat(&envoy, "evicted_active") > 15_000);
    // Bounded state: 1000 slots of ~50 bytes per worker copy; allow generous allocator slack.
    assert!(after < before + 16 * 1024 * 1024, "{before} -> {after}");
    // The victim consumed more than any single-request key, so it kept its state: exactly 2
    // more requests are admitted.
    let codes: Vec<u16> = (0..4)
        .map(|_| envoy.get("/").header("x-client", "victim").send().status)
        .collect();
    assert_eq!(codes, [200, 200, 429, 429]);
}
