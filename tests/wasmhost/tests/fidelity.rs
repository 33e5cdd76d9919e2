//! Fidelity: the same scenarios run on this host and on a real Envoy (via `switchyard-harness`)
//! must meet their expectations on both and produce the same whole observation at every step:
//! status, every response header, body, the request as the upstream saw it and the filter's
//! metrics (`scenario::compare_all`; the few fields left out, each with its reason, are
//! `scenario::EXCLUDED_RESPONSE_HEADERS` and `EXCLUDED_UPSTREAM_HEADERS`).

use serde_json::json;
use std::time::Duration;
use switchyard_harness::Envoy;
use switchyard_upstream::Upstream;
use switchyard_wasmhost::scenario::{
    check_all, compare_all, run_on_host, Observed, Scenario, Step, UpstreamView, CLUSTER,
    METRIC_PREFIX, UPSTREAM_ID,
};
use switchyard_wasmhost::{Host, HostError};

/// The filter's metrics once the step is over. A filter may count in `on_log`, which Envoy runs
/// after the response reached the client: wait until no request is active and two reads agree.
fn settled_metrics(envoy: &Envoy) -> Vec<(String, u64)> {
    let read = || -> (bool, Vec<(String, u64)>) {
        let stats = envoy.stats();
        let idle = stats.get("http.ingress.downstream_rq_active") == Some(&0);
        let prefix = format!("wasmcustom.{METRIC_PREFIX}");
        let metrics = stats
            .into_iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .collect();
        (idle, metrics)
    };
    let mut last = read();
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(20));
        let now = read();
        if now.0 && now == last {
            return now.1;
        }
        last = now;
    }
    panic!("Envoy's metrics did not settle: {:?}", last.1)
}

fn run_on_envoy(scenario: &Scenario) -> Vec<Observed> {
    let upstream = Upstream::start(UPSTREAM_ID).expect("upstream starts");
    let envoy = Envoy::builder()
        .wasm_filter(&scenario.filter, scenario.config.clone())
        .cluster(CLUSTER, [upstream.addr()])
        .start();
    scenario
        .steps
        .iter()
        .map(|step| {
            if let Some(wait) = step.wait {
                std::thread::sleep(wait);
            }
            let mut request = envoy.request(&step.method, &step.path);
            // The host's requests have `:authority: localhost`; the client would send the
            // listener's address.
            if !step.headers.iter().any(|(k, _)| k == "host") {
                request = request.header("host", "localhost");
            }
            for (k, v) in &step.headers {
                request = request.header(k, v);
            }
            if let Some(body) = &step.body {
                request = request.body(body.clone());
            }
            let before = upstream.count();
            let response = request.send();
            // Recorded by the upstream itself: a cached response replays `x-upstream-id`.
            let seen = (upstream.count() > before)
                .then(|| upstream.requests().pop())
                .flatten()
                .map(|r| UpstreamView {
                    method: r.method,
                    path: match r.query {
                        Some(q) => format!("{}?{q}", r.path),
                        None => r.path,
                    },
                    headers: r.headers,
                });
            step.observe(
                u32::from(response.status),
                response.headers.clone(),
                &response.body,
                seen,
                settled_metrics(&envoy),
            )
        })
        .collect()
}

/// Runs on both backends; each must meet the expectations and the whole observations must agree.
fn assert_same_on_both(scenario: Scenario) {
    let host = run_on_host(&scenario, 2).unwrap_or_else(|e| panic!("{e}"));
    check_all(&scenario, "wasmhost", &host).unwrap_or_else(|e| panic!("{e}"));
    let envoy = run_on_envoy(&scenario);
    check_all(&scenario, "envoy", &envoy).unwrap_or_else(|e| panic!("{e}"));
    compare_all(&scenario, ("wasmhost", &host), ("envoy", &envoy))
        .unwrap_or_else(|e| panic!("{e}"));
}

fn probe() -> serde_json::Value {
    json!({"mode": "probe"})
}

#[test]
fn probe_noop_passes_through() {
    assert_same_on_both(
        Scenario::new("noop", "probe", json!({"mode": "noop"})).step(
            Step::get("/a")
                .header("x-probe-reply", "500")
                .status(200)
                .upstream(true)
                .expect_no_header("x-probe-response")
                .expect_header("x-upstream-id", UPSTREAM_ID),
        ),
    );
}

#[test]
fn probe_local_reply_runs_own_response_callbacks() {
    assert_same_on_both(
        Scenario::new("local reply", "probe", probe()).step(
            Step::get("/r")
                .header("x-probe-reply", "429")
                .status(429)
                .upstream(false)
                .expect_header("x-probe-reply", "1")
                .expect_header("x-probe-response", "1")
                .expect_header("x-probe-response-code", "429")
                .body_contains("probe local reply"),
        ),
    );
}

#[test]
fn probe_header_mutation_reaches_upstream() {
    assert_same_on_both(
        Scenario::new("header mutation", "probe", probe()).step(
            Step::get("/m?status=203")
                .header("x-probe-add", "x-added=yes")
                .header("x-probe-remove", "x-gone")
                .header("x-gone", "1")
                .status(203)
                .upstream(true)
                .expect_upstream_header("x-added", "yes")
                .expect_no_upstream_header("x-gone")
                .expect_header("x-probe-response", "1")
                .expect_header("x-probe-response-code", "203"),
        ),
    );
}

#[test]
fn probe_shared_counter_is_exact_across_workers() {
    let mut scenario = Scenario::new("shared counter", "probe", probe());
    for n in 1..=5 {
        scenario = scenario.step(
            Step::get("/c")
                .header("x-probe-count", "fidelity")
                .status(200)
                .expect_header("x-probe-counted", &n.to_string())
                .expect_upstream_header("x-probe-counted", &n.to_string()),
        );
    }
    assert_same_on_both(scenario);
}

#[test]
fn probe_properties_and_bodies() {
    assert_same_on_both(
        Scenario::new("properties and bodies", "probe", probe())
            .step(
                Step::get("/p?q=1")
                    .header("x-probe-property", "request.path")
                    .expect_header("x-probe-property-value", "/p?q=1"),
            )
            .step(
                Step::new("PUT", "/p")
                    .header("x-probe-property", "request.method")
                    .expect_header("x-probe-property-value", "PUT"),
            )
            .step(
                Step::new("POST", "/echo")
                    .header("x-probe-body", "echo")
                    .body("hello fidelity")
                    .status(200)
                    .upstream(false)
                    .body_contains("hello fidelity"),
            )
            .step(
                Step::new("POST", "/upper")
                    .header("x-probe-body", "upper")
                    .body("shout")
                    .status(200)
                    .upstream(true)
                    .body_contains("\"body_len\":5"),
            )
            .step(
                Step::get("/later")
                    .after(Duration::from_millis(10))
                    .header("x-probe-reply", "418")
                    .status(418)
                    .upstream(false),
            ),
    );
}

// ---- ratelimit -------------------------------------------------------------------------------

fn per_user(mode: &str) -> serde_json::Value {
    json!({"mode": mode, "rules": [{
        "name": "per-user",
        "key": [{"header": "x-user-id"}],
        "limits": [{"requests": 3, "per": "1m"}]
    }]})
}

#[test]
fn ratelimit_exact_limit_then_429() {
    let allowed = Step::get("/api")
        .header("x-user-id", "alice")
        .status(200)
        .upstream(true)
        .expect_header("ratelimit-policy", "\"per-user\";q=3;w=60");
    assert_same_on_both(
        Scenario::new("ratelimit 3 per minute", "ratelimit", per_user("enforce"))
            .repeat(3, allowed)
            .step(
                Step::get("/api")
                    .header("x-user-id", "alice")
                    .status(429)
                    .upstream(false)
                    .expect_header("retry-after", "20")
                    .expect_header("content-type", "application/json")
                    .body_contains("\"rule\":\"per-user\""),
            )
            .step(
                Step::get("/api")
                    .header("x-user-id", "bob")
                    .status(200)
                    .upstream(true),
            )
            .step(
                Step::get("/no-key")
                    .status(200)
                    .upstream(true)
                    .expect_no_header("ratelimit"),
            ),
    );
}

#[test]
fn ratelimit_shadow_mode_only_tags() {
    let step = Step::get("/api")
        .header("x-user-id", "carol")
        .status(200)
        .upstream(true);
    assert_same_on_both(
        Scenario::new("ratelimit shadow", "ratelimit", per_user("shadow"))
            .repeat(3, step.clone().expect_no_header("x-ratelimit-shadow"))
            .step(step.expect_header("x-ratelimit-shadow", "\"per-user\";retry_after=20")),
    );
}

// ---- cache -----------------------------------------------------------------------------------

#[test]
fn cache_miss_then_hit_then_no_store() {
    let cached = "/item?header=Cache-Control:max-age%3D300";
    assert_same_on_both(
        Scenario::new("cache hit", "cache", json!({}))
            .step(
                Step::get(cached)
                    .status(200)
                    .upstream(true)
                    .expect_header("x-cache", "MISS"),
            )
            .step(
                Step::get(cached)
                    .status(200)
                    .upstream(false)
                    .expect_header("x-cache", "HIT")
                    .expect_header("cache-control", "max-age=300")
                    .body_contains("\"upstream\":\"u1\""),
            )
            .step(
                Step::get("/nostore?header=Cache-Control:no-store")
                    .status(200)
                    .upstream(true)
                    .expect_header("x-cache", "MISS"),
            )
            .step(
                Step::get("/nostore?header=Cache-Control:no-store")
                    .status(200)
                    .upstream(true)
                    .expect_header("x-cache", "MISS"),
            )
            .step(
                Step::new("POST", cached)
                    .body("x")
                    .status(200)
                    .upstream(true)
                    .expect_header("x-cache", "BYPASS"),
            ),
    );
}

// ---- router ----------------------------------------------------------------------------------

#[test]
fn router_local_answers_and_default_route() {
    let config = json!({
        "routes": [
            {"name": "health", "match": {"path": {"exact": "/healthz"}},
             "action": {"respond": {"status": 200, "body": "ok", "headers": {"x-from": "router"}}}},
            {"name": "old", "match": {"path": {"prefix": "/old/"}},
             "action": {"redirect": {"path_prefix": "/new/"}}},
            {"name": "api", "match": {"path": {"prefix": "/api/"}},
             "action": {"cluster": CLUSTER, "request_headers": {"set": {"x-route": "api"}}}}
        ],
        "default": {"cluster": CLUSTER}
    });
    assert_same_on_both(
        Scenario::new("router", "router", config)
            .step(
                Step::get("/healthz")
                    .status(200)
                    .upstream(false)
                    .expect_header("x-from", "router")
                    .body_contains("ok"),
            )
            .step(Step::get("/old/page").status(301).upstream(false))
            .step(
                Step::get("/api/users")
                    .status(200)
                    .upstream(true)
                    .expect_upstream_header("x-switchyard-cluster", CLUSTER)
                    .expect_upstream_header("x-route", "api"),
            )
            .step(
                Step::get("/elsewhere")
                    .status(200)
                    .upstream(true)
                    .expect_upstream_header("x-switchyard-cluster", CLUSTER)
                    .expect_no_upstream_header("x-route"),
            ),
    );
}

// ---- hashring --------------------------------------------------------------------------------

#[test]
fn hashring_same_key_same_host_list() {
    let config = json!({
        "algorithm": "maglev",
        "table_size": 307,
        "hosts": [{"address": "10.0.0.1:80"}, {"address": "10.0.0.2:80"}, {"address": "10.0.0.3:80"}],
        "hash_key": [{"header": "x-user-id"}],
        "fallbacks": 2
    });
    let mut scenario = Scenario::new("hashring", "hashring", config);
    for user in ["alice", "bob", "alice", "carol", "dave"] {
        scenario = scenario.step(
            Step::get("/")
                .header("x-user-id", user)
                // A client-sent value never survives: the filter always overwrites it.
                .header("x-upstream-host", "1.2.3.4:5")
                .status(200)
                .upstream(true)
                .record_upstream_header("x-upstream-host"),
        );
    }
    let host = run_on_host(&scenario, 2).unwrap_or_else(|e| panic!("{e}"));
    check_all(&scenario, "wasmhost", &host).unwrap_or_else(|e| panic!("{e}"));
    // Same key, same list; and never the client's value.
    assert_eq!(host[0].recorded, host[2].recorded);
    assert!(host.iter().all(|o| o.recorded[0]
        .1
        .as_deref()
        .is_some_and(|v| v.starts_with("10.0.0."))));
    let envoy = run_on_envoy(&scenario);
    check_all(&scenario, "envoy", &envoy).unwrap_or_else(|e| panic!("{e}"));
    compare_all(&scenario, ("wasmhost", &host), ("envoy", &envoy))
        .unwrap_or_else(|e| panic!("{e}"));
}

// ---- configuration rejection -----------------------------------------------------------------

/// A configuration the filter rejects: the host reports it, Envoy refuses to start, and both
/// logs carry the filter's message naming the field.
fn assert_rejected_on_both(filter: &str, config: serde_json::Value, needle: &str) {
    let err = Host::filter(filter)
        .unwrap_or_else(|e| panic!("{e}"))
        .configure(config.to_string())
        .err()
        .unwrap_or_else(|| panic!("{filter}: the host accepted {config}"));
    match &err {
        HostError::ConfigRejected { logs, .. } => assert!(
            logs.iter().any(|l| l.contains(needle)),
            "{filter}: host logs {logs:?} lack {needle:?}"
        ),
        other => panic!("{filter}: expected a rejected configuration, got {other}"),
    }
    let upstream = Upstream::start(UPSTREAM_ID).expect("upstream starts");
    match Envoy::builder()
        .wasm_filter(filter, config.clone())
        .cluster(CLUSTER, [upstream.addr()])
        .try_start()
    {
        Ok(_) => panic!("{filter}: Envoy accepted {config}"),
        Err(e) => assert!(
            e.log.contains(needle),
            "{filter}: Envoy log lacks {needle:?}: {}",
            e.log
        ),
    }
}

#[test]
fn rejected_configurations_on_both() {
    assert_rejected_on_both(
        "probe",
        json!({"mode": "loud"}),
        "invalid configuration: mode: unknown mode",
    );
    assert_rejected_on_both(
        "ratelimit",
        json!({"rules": [{"name": "r", "limits": [{"requests": 1, "per": "1s"}], "extra": 1}]}),
        "switchyard ratelimit: invalid configuration: rules[0]",
    );
    assert_rejected_on_both(
        "cache",
        json!({"eviction": "random"}),
        "switchyard cache: invalid configuration: eviction",
    );
    assert_rejected_on_both(
        "hashring",
        json!({"hosts": [{"address": "10.0.0.1:80", "weight": 0}], "hash_key": [{"header": "x"}]}),
        "switchyard hashring: invalid configuration: hosts[0].weight",
    );
    assert_rejected_on_both(
        "router",
        json!({"routes": [{"name": "x", "action": {}}], "nope": true}),
        "switchyard router: invalid configuration",
    );
}

// ---- more per-filter scenarios ---------------------------------------------------------------

#[test]
fn ratelimit_matchers_and_legacy_headers() {
    let config = json!({
        "headers": "legacy",
        "rules": [
            {"name": "writes", "match": {"methods": ["POST"]}, "key": [{"header": "x-user-id"}],
             "algorithm": "sliding_window", "limits": [{"requests": 1, "per": "1m"}]},
            {"name": "api", "match": {"path": {"prefix": "/api/"}}, "key": [{"literal": "all"}],
             "limits": [{"requests": 4, "per": "1m"}]}
        ]
    });
    assert_same_on_both(
        Scenario::new("ratelimit matchers", "ratelimit", config)
            .step(
                Step::new("POST", "/api/a")
                    .header("x-user-id", "u")
                    .body("1")
                    .status(200)
                    .expect_header("x-ratelimit-limit", "1")
                    .expect_header("x-ratelimit-remaining", "0"),
            )
            .step(
                // The retry time counts from the first POST: Envoy's clock always moves between
                // two requests, the host's only when a step waits.
                Step::new("POST", "/api/a")
                    .after(Duration::from_millis(5))
                    .header("x-user-id", "u")
                    .body("2")
                    .status(429)
                    .expect_header("retry-after", "60"),
            )
            .step(
                Step::new("POST", "/other")
                    .header("x-user-id", "v")
                    .body("3")
                    .status(200),
            )
            // The rejected POST consumed nothing from "api" (the decision is atomic): 3 left.
            .repeat(
                3,
                Step::get("/api/b")
                    .status(200)
                    .record_header("x-ratelimit-remaining"),
            )
            .step(Step::get("/api/b").status(429).upstream(false))
            .step(
                Step::get("/free")
                    .status(200)
                    .expect_no_header("x-ratelimit-limit"),
            ),
    );
}

#[test]
fn cache_purge_and_bypass() {
    let config = json!({
        "bypass": [{"path": {"prefix": "/admin"}}],
        "purge": {"method": "PURGE", "token_header": "x-purge-token", "token": "s3cret"}
    });
    let cached = "/doc?header=Cache-Control:max-age%3D300";
    assert_same_on_both(
        Scenario::new("cache purge", "cache", config)
            .step(
                Step::get(cached)
                    .upstream(true)
                    .expect_header("x-cache", "MISS"),
            )
            .step(
                Step::get(cached)
                    .upstream(false)
                    .expect_header("x-cache", "HIT"),
            )
            .step(
                Step::new("PURGE", cached)
                    .header("x-purge-token", "wrong")
                    .status(403)
                    .upstream(false),
            )
            .step(
                Step::get(cached)
                    .upstream(false)
                    .expect_header("x-cache", "HIT"),
            )
            .step(
                Step::new("PURGE", cached)
                    .header("x-purge-token", "s3cret")
                    .status(200)
                    .upstream(false)
                    .body_contains("\"purged\":1"),
            )
            .step(
                Step::get(cached)
                    .upstream(true)
                    .expect_header("x-cache", "MISS"),
            )
            .step(
                Step::get("/admin/x?header=Cache-Control:max-age%3D300")
                    .upstream(true)
                    .expect_header("x-cache", "BYPASS"),
            )
            .step(
                Step::get("/admin/x?header=Cache-Control:max-age%3D300")
                    .upstream(true)
                    .expect_header("x-cache", "BYPASS"),
            ),
    );
}

#[test]
fn router_rewrites_and_header_operations() {
    let config = json!({
        "explain": true,
        "routes": [
            {"name": "v1", "match": {"path": {"prefix": "/v1/"}},
             "action": {"cluster": CLUSTER, "rewrite": {"prefix": "/v2/"},
                        "request_headers": {"set": {"x-api": "v2"}, "remove": ["x-drop"]},
                        "response_headers": {"set": {"x-served-by": "router"}}}},
            {"name": "teapot", "match": {"path": {"exact": "/tea"}, "methods": ["POST"]},
             "action": {"respond": {"status": 418, "body": "short and stout"}}}
        ],
        "default": {"cluster": CLUSTER}
    });
    assert_same_on_both(
        Scenario::new("router rewrites", "router", config)
            .step(
                Step::get("/v1/items?x=1")
                    .header("x-drop", "1")
                    .status(200)
                    .upstream(true)
                    .body_contains("\"path\":\"/v2/items\"")
                    .expect_upstream_header("x-api", "v2")
                    .expect_no_upstream_header("x-drop")
                    .expect_header("x-served-by", "router")
                    .record_header("x-switchyard-route"),
            )
            .step(
                Step::new("POST", "/tea")
                    .body("x")
                    .status(418)
                    .upstream(false)
                    .body_contains("stout"),
            )
            .step(
                Step::get("/tea")
                    .status(200)
                    .upstream(true)
                    .record_header("x-switchyard-route"),
            ),
    );
}

#[test]
fn hashring_key_fallbacks_and_explain() {
    let config = json!({
        "hosts": [{"address": "10.0.0.1:80"}, {"address": "10.0.0.2:80", "weight": 2}, {"address": "10.0.0.3:80"}],
        "hash_key": [{"header": "x-user-id"}, {"cookie": "session"}],
        "fallbacks": 1,
        "debug_header": "x-hash-explain"
    });
    let mut scenario = Scenario::new("hashring fallbacks", "hashring", config);
    for (header, value) in [
        ("x-user-id", "u1"),
        ("cookie", "session=s1"),
        ("x-user-id", "u2"),
        ("cookie", "session=s1"),
    ] {
        scenario = scenario.step(
            Step::get("/")
                .header(header, value)
                .status(200)
                .upstream(true)
                .record_header("x-hash-explain")
                .record_upstream_header("x-upstream-host"),
        );
    }
    assert_same_on_both(scenario);
}

#[test]
fn probe_upstream_statuses_and_repeated_headers() {
    assert_same_on_both(
        Scenario::new("probe statuses", "probe", probe())
            .step(
                Step::get("/s?status=404")
                    .status(404)
                    .upstream(true)
                    .expect_header("x-probe-response-code", "404"),
            )
            .step(
                Step::get("/s")
                    .header("x-echo-status", "503")
                    .status(503)
                    .expect_header("x-probe-response-code", "503"),
            )
            .step(
                Step::get("/h")
                    .header("x-probe-add", "x-multi=b")
                    .header("x-multi", "a")
                    .status(200)
                    .expect_upstream_header("x-multi", "a, b"),
            ),
    );
}
