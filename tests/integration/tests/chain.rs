//! The whole chain against a real Envoy 1.40 (`--concurrency 2`), in the order the README's
//! *Filters in a chain* section specifies:
//!
//! ```text
//! ratelimit -> router -> cache -> hashring -> Envoy router
//! ```
//!
//! The router writes the routing record (`x-switchyard-cluster`, `x-switchyard-route-name`); the
//! Envoy route forwards by `cluster_header`; the hashring's cluster (`web`) uses Envoy's
//! `override_host` policy reading `x-upstream-host` and strips that header with an upstream
//! `header_mutation` filter. Every upstream answers with `x-upstream-id: <its id>`.
//!
//! Each test is one scenario where the filters used to get the chain wrong: another cluster
//! sharing the hashring's hosts, canaries and the cache, stale-while-revalidate refreshes after a
//! rewrite, stale-if-error hiding a host's failure, and local replies invalidating entries.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use switchyard_harness::yaml::{OVERRIDE_HOST_CLUSTER, RETRIES, ROUTE_BY_CLUSTER_HEADER};
use switchyard_harness::{eventually, wait_until, Cluster, Envoy, EnvoyBuilder, Response};
use switchyard_upstream::Upstream;

/// A bound on waiting for asynchronous effects (stats, background refreshes).
const WAIT: Duration = Duration::from_secs(10);

/// A rate limit nobody reaches, for tests about the other filters.
fn generous_ratelimit() -> Value {
    json!({"rules": [{"name": "edge", "key": [{"client_ip": {"trusted_hops": 0}}],
                      "limits": [{"requests": 100000, "per": "1s"}]}]})
}

fn cache_config() -> Value {
    json!({"max_bytes": 1 << 20, "max_entry_bytes": 65536})
}

fn hashring_config(hosts: &[&Upstream]) -> Value {
    json!({
        "algorithm": "ring",
        "hosts": hosts.iter().map(|u| json!({"address": u.addr().to_string()})).collect::<Vec<_>>(),
        "hash_key": [{"header": "x-user-id"}],
        "health": {"failures": 2, "cooldown": "60s"},
        "fallbacks": 2,
        "debug_header": "x-hash-explain"
    })
}

/// How the four filters are loaded: one plugin each, or as the stages of one suite module.
#[derive(Clone, Copy)]
enum Mode {
    Separate,
    Suite,
}

/// The four filters in chain order: four plugins, or `dist/switchyard.wasm` with the same four
/// configurations nested under `stages`.
fn chain(
    mode: Mode,
    ratelimit: Value,
    router: Value,
    cache: Value,
    hashring: Value,
) -> EnvoyBuilder {
    match mode {
        Mode::Separate => Envoy::builder()
            .wasm_filter("ratelimit", ratelimit)
            .wasm_filter("router", router)
            .wasm_filter("cache", cache)
            .wasm_filter("hashring", hashring),
        Mode::Suite => Envoy::builder().wasm_filter(
            "switchyard",
            json!({"stages": {"ratelimit": ratelimit, "router": router, "cache": cache, "hashring": hashring}}),
        ),
    }
}

fn web_cluster(hosts: &[&Upstream]) -> Cluster {
    Cluster::new("web", hosts.iter().map(|u| u.addr())).extra(OVERRIDE_HOST_CLUSTER)
}

fn start_upstreams(ids: &[&str]) -> Vec<Upstream> {
    ids.iter()
        .map(|id| Upstream::start(id).unwrap_or_else(|e| panic!("upstream {id}: {e}")))
        .collect()
}

fn x_cache(r: &Response) -> &str {
    r.header("x-cache").unwrap_or("<none>")
}

fn upstream_of(r: &Response) -> &str {
    r.upstream().unwrap_or("<none>")
}

/// `Cache-Control:<value>` as a query parameter for the upstream.
fn cc(value: &str) -> String {
    let enc = value
        .replace('=', "%3D")
        .replace(',', "%2C")
        .replace(' ', "%20");
    format!("header=Cache-Control:{enc}")
}

/// `x-hash-explain: key=...; hash=...; host=...; reason=...; order=a,b,c` as a map.
fn explain(resp: &Response) -> BTreeMap<String, String> {
    let raw = resp
        .header("x-hash-explain")
        .unwrap_or_else(|| panic!("no x-hash-explain in {:?}", resp.headers));
    raw.split("; ")
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The filter's stat for one host (`127.0.0.1:8081` → `host.127_0_0_1_8081.<stat>`).
fn host_stat(envoy: &Envoy, up: &Upstream, stat: &str) -> u64 {
    let label = up.addr().to_string().replace(['.', ':'], "_");
    envoy.stat_value(&format!("switchyard.hashring.host.{label}.{stat}"))
}

/// For each upstream, a key whose primary host (per the filter's explain header) it is.
fn key_per_host(envoy: &Envoy, ups: &[&Upstream], path: &str) -> BTreeMap<String, String> {
    let mut keys: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..300 {
        if keys.len() == ups.len() {
            break;
        }
        let key = format!("k-{i}");
        let r = envoy.get(path).header("x-user-id", &key).send();
        assert_eq!(r.status, 200, "{}", r.text());
        let e = explain(&r);
        assert_eq!(e["reason"], "primary", "{e:?}");
        let up = ups
            .iter()
            .find(|u| u.addr().to_string() == e["host"])
            .unwrap_or_else(|| panic!("{} is not a web host", e["host"]));
        assert_eq!(upstream_of(&r), up.id(), "{e:?}");
        keys.entry(up.id().to_string()).or_insert(key);
    }
    assert_eq!(keys.len(), ups.len(), "no key for some host: {keys:?}");
    keys
}

/// Scenario 1. `/api/*` goes to `api-v1`, plain round robin over two of `web`'s three hosts;
/// everything else to `web` (override_host, hashring with `health` and `clusters: ["web"]`).
/// API traffic — successes, 5xx and resets with retries, spoofed host choices — never reaches
/// the hashring's health record: `web` keys keep their primary hosts, nothing is ejected, the
/// API requests are counted in `other_cluster`, and a client's `x-upstream-host` never reaches
/// an API upstream.
fn api_traffic_on_shared_hosts_never_ejects_or_skips_web_hosts(mode: Mode) {
    let ups = start_upstreams(&["u1", "u2", "u3"]);
    let web: Vec<&Upstream> = ups.iter().collect();
    let mut hashring = hashring_config(&web);
    hashring["clusters"] = json!(["web"]);
    let router = json!({
        "routes": [{"name": "api", "match": {"path": {"prefix": "/api/"}}, "action": {"cluster": "api-v1"}}],
        "default": {"cluster": "web"}
    });
    let envoy = chain(mode, generous_ratelimit(), router, cache_config(), hashring)
        .cluster_with(web_cluster(&web))
        .cluster("api-v1", [ups[0].addr(), ups[1].addr()])
        .route(ROUTE_BY_CLUSTER_HEADER)
        .route_to("web")
        .virtual_host_extra(RETRIES)
        .start();

    let keys = key_per_host(&envoy, &web, "/item");
    let before_other = envoy.stat_value("switchyard.hashring.other_cluster");

    // API traffic with the web keys (a hashring acting on it would pick their web hosts).
    let mut api_requests = 0u64;
    for (round, key) in keys.values().cycle().take(12).enumerate() {
        let r = match round % 4 {
            // 5xx from the API hosts: Envoy retries on the next API host, all fail.
            0 => envoy
                .get("/api/orders")
                .header("x-user-id", key)
                .header("x-echo-status", "503")
                .send(),
            // Connection resets on the API hosts, retried.
            1 => envoy
                .get("/api/orders?reset=1")
                .header("x-user-id", key)
                .send(),
            // A client's own host choice: neither obeyed nor forwarded.
            2 => envoy
                .get("/api/orders")
                .header("x-user-id", key)
                .header("x-upstream-host", ups[2].addr().to_string())
                .send(),
            _ => envoy.get("/api/orders").header("x-user-id", key).send(),
        };
        api_requests += 1;
        match round % 4 {
            0 | 1 => assert_eq!(r.status, 503, "round {round}: {}", r.text()),
            _ => {
                assert_eq!(r.status, 200, "round {round}: {}", r.text());
                assert!(
                    ["u1", "u2"].contains(&upstream_of(&r)),
                    "api-v1 is u1 and u2, got {}",
                    upstream_of(&r)
                );
                let seen = r.json();
                assert!(
                    seen["headers"].get("x-upstream-host").is_none(),
                    "a host choice reached the API upstream: {seen}"
                );
                assert_eq!(seen["headers"]["x-switchyard-cluster"], "api-v1");
                assert!(
                    r.header("x-hash-explain").is_none(),
                    "the hashring decided an api-v1 request: {:?}",
                    r.headers
                );
            }
        }
    }
    // Every API request was left alone by the hashring, and counted as another cluster's.
    wait_until("other_cluster counts the API requests", WAIT, || {
        envoy.stat_value("switchyard.hashring.other_cluster") == before_other + api_requests
    });
    // No client-sent x-upstream-host reached any API host.
    for up in &ups[..2] {
        for req in up.requests() {
            if req.path.starts_with("/api/") {
                assert_eq!(req.header("x-upstream-host"), None, "{req:?}");
            }
        }
    }

    // The web keys still go to their primary hosts, which nothing ejected.
    for (id, key) in &keys {
        for _ in 0..3 {
            let r = envoy.get("/item").header("x-user-id", key).send();
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(upstream_of(&r), id, "key {key}");
            let e = explain(&r);
            assert_eq!(e["reason"], "primary", "key {key}: {e:?}");
            assert!(!e["reason"].contains("health_skip"), "{e:?}");
        }
    }
    for up in &ups {
        assert_eq!(host_stat(&envoy, up, "ejections"), 0, "{}", up.id());
        assert_eq!(host_stat(&envoy, up, "health_skips"), 0, "{}", up.id());
    }
}

/// Scenario 1 without `clusters` (a configuration the previous hashring also accepts): a
/// request served by another cluster's round robin from a host later in the key's list was
/// taken as proof that the hosts before it had failed. Only hosts actually tried count: API
/// successes must not eject the web host their key hashes to.
fn api_successes_on_shared_hosts_are_not_failures_of_other_web_hosts(mode: Mode) {
    let ups = start_upstreams(&["u1", "u2", "u3"]);
    let web: Vec<&Upstream> = ups.iter().collect();
    let router = json!({
        "routes": [{"name": "api", "match": {"path": {"prefix": "/api/"}}, "action": {"cluster": "api-v1"}}],
        "default": {"cluster": "web"}
    });
    let envoy = chain(
        mode,
        generous_ratelimit(),
        router,
        cache_config(),
        hashring_config(&web),
    )
    .cluster_with(web_cluster(&web))
    .cluster("api-v1", [ups[0].addr(), ups[1].addr()])
    .route(ROUTE_BY_CLUSTER_HEADER)
    .route_to("web")
    .virtual_host_extra(RETRIES)
    .start();

    // A key whose web host (u3) is not an API host: API requests with it are served by u1/u2,
    // which come later in its host list.
    let keys = key_per_host(&envoy, &web, "/item");
    let key = &keys["u3"];
    for i in 0..6 {
        let r = envoy.get("/api/orders").header("x-user-id", key).send();
        assert_eq!(r.status, 200, "#{i}: {}", r.text());
        assert!(["u1", "u2"].contains(&upstream_of(&r)), "#{i}");
    }
    // u3 served nothing of it and failed nothing: its web key still reaches it.
    assert_eq!(ups[2].count_path("/api/orders"), 0);
    for _ in 0..3 {
        let r = envoy.get("/item").header("x-user-id", key).send();
        assert_eq!(upstream_of(&r), "u3", "{:?}", r.headers);
        assert_eq!(explain(&r)["reason"], "primary", "{:?}", explain(&r));
    }
    for up in &ups {
        assert_eq!(host_stat(&envoy, up, "ejections"), 0, "{}", up.id());
    }
}

/// Scenario 2. `x-canary: always` goes to `api-v2`, other API requests to `api-v1`; the cache
/// (with `default_ttl`) keys on the routing record, so neither side's response is ever served
/// to the other. The router's own replies (`respond`, 404) and Envoy's own local replies are
/// never stored, although `default_ttl` would make them cacheable.
fn canary_responses_are_never_served_to_other_users_and_local_replies_are_not_stored(mode: Mode) {
    let ups = start_upstreams(&["v1", "v2", "w1"]);
    let (v1, v2, w1) = (&ups[0], &ups[1], &ups[2]);
    let router = json!({
        "routes": [
            {"name": "ping", "match": {"path": {"exact": "/api/ping"}},
             "action": {"respond": {"status": 200, "body": "pong", "headers": {"content-type": "text/plain"}}}},
            {"name": "canary", "match": {"path": {"prefix": "/api/"}, "headers": [{"name": "x-canary", "exact": "always"}]},
             "action": {"cluster": "api-v2"}},
            {"name": "api", "match": {"path": {"prefix": "/api/"}}, "action": {"cluster": "api-v1"}},
            {"name": "web", "match": {"path": {"prefix": "/web/"}}, "action": {"cluster": "web"}}
        ]
    });
    let mut cache = cache_config();
    cache["default_ttl"] = json!("60s");
    let envoy = chain(
        mode,
        generous_ratelimit(),
        router,
        cache,
        hashring_config(&[w1]),
    )
    .cluster_with(web_cluster(&[w1]))
    .cluster("api-v1", [v1.addr()])
    .cluster("api-v2", [v2.addr()])
    // Envoy answers /web/static/ itself (a local reply after the cache saw the request).
    .route(
        r#"
            match: { prefix: "/web/static/" }
            direct_response: { status: 200, body: { inline_string: "static" } }
            "#,
    )
    .route(ROUTE_BY_CLUSTER_HEADER)
    .no_default_route()
    .start();

    let canary = |path: &str| envoy.get(path).header("x-canary", "always").send();
    let normal = |path: &str| envoy.get(path).send();

    // Canary first, then a normal user on the same URL.
    let r = canary("/api/list");
    assert_eq!((upstream_of(&r), x_cache(&r)), ("v2", "MISS"));
    let r = normal("/api/list");
    assert_eq!(
        upstream_of(&r),
        "v1",
        "the canary's response was served to a normal user ({})",
        x_cache(&r)
    );
    assert_eq!(x_cache(&r), "MISS");
    // Both are cached, each on its own side.
    for _ in 0..3 {
        let r = canary("/api/list");
        assert_eq!((upstream_of(&r), x_cache(&r)), ("v2", "HIT"));
        let r = normal("/api/list");
        assert_eq!((upstream_of(&r), x_cache(&r)), ("v1", "HIT"));
    }
    // And the other way round: a normal user first.
    let r = normal("/api/detail?id=7");
    assert_eq!((upstream_of(&r), x_cache(&r)), ("v1", "MISS"));
    let r = canary("/api/detail?id=7");
    assert_eq!(
        upstream_of(&r),
        "v2",
        "a normal user's response was served to the canary ({})",
        x_cache(&r)
    );
    assert_eq!(x_cache(&r), "MISS");
    let r = canary("/api/detail?id=7");
    assert_eq!((upstream_of(&r), x_cache(&r)), ("v2", "HIT"));
    let r = normal("/api/detail?id=7");
    assert_eq!((upstream_of(&r), x_cache(&r)), ("v1", "HIT"));
    assert_eq!(v1.count_path("/api/list") + v1.count_path("/api/detail"), 2);
    assert_eq!(v2.count_path("/api/list") + v2.count_path("/api/detail"), 2);

    // Local replies are never stored, although default_ttl makes 200 and 404 cacheable.
    let stores = || envoy.stat_value("switchyard.cache.stores");
    wait_until("the four API entries are counted", WAIT, || stores() == 4);
    for _ in 0..3 {
        let r = normal("/api/ping");
        assert_eq!((r.status, r.text().as_str()), (200, "pong"));
        assert_ne!(x_cache(&r), "HIT", "{:?}", r.headers);
        let r = normal("/nowhere");
        assert_eq!(r.status, 404, "{}", r.text());
        assert_ne!(x_cache(&r), "HIT", "{:?}", r.headers);
        let r = normal("/web/static/logo");
        assert_eq!((r.status, r.text().as_str()), (200, "static"));
        assert_ne!(x_cache(&r), "HIT", "{:?}", r.headers);
    }
    // Give a (wrong) store time to be counted before checking that none happened.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(stores(), 4, "a local reply was stored");
    assert_eq!(w1.count(), 0);
}

/// Scenario 3. The router rewrites `/v1/x` to `/internal/x` and routes to `web` (override_host
/// plus hashring); the cache's `upstream_cluster` is another cluster (`fallback`). A stale hit
/// within `stale-while-revalidate`, sent with credentials and a host choice of its own, is
/// refreshed in the background: to the routed cluster and the host that served the entry, with
/// the rewritten path, without `Authorization` / `Cookie`, ignoring the client's host choice.
fn stale_while_revalidate_refresh_follows_the_routing_without_credentials(mode: Mode) {
    let ups = start_upstreams(&["w1", "w2", "w3", "fb"]);
    let web: Vec<&Upstream> = ups[..3].iter().collect();
    let fallback = &ups[3];
    let router = json!({
        "routes": [{"name": "v1", "match": {"path": {"prefix": "/v1/"}},
                    "action": {"cluster": "web", "rewrite": {"prefix": "/internal/"}}}],
        "default": {"cluster": "web"}
    });
    let mut cache = cache_config();
    cache["upstream_cluster"] = json!("fallback");
    let envoy = chain(
        mode,
        generous_ratelimit(),
        router,
        cache,
        hashring_config(&web),
    )
    .cluster_with(web_cluster(&web))
    .cluster("fallback", [fallback.addr()])
    .route(ROUTE_BY_CLUSTER_HEADER)
    .route_to("web")
    .start();

    let path = format!(
        "/v1/x?{}",
        cc("public, max-age=1, stale-while-revalidate=60")
    );
    let first = envoy.get(&path).header("x-user-id", "alice").send();
    assert_eq!((first.status, x_cache(&first)), (200, "MISS"));
    let served_by = upstream_of(&first).to_string();
    let owner = web.iter().find(|u| u.id() == served_by).unwrap();
    let other = web.iter().find(|u| u.id() != served_by).unwrap();
    assert_eq!(owner.requests()[0].path, "/internal/x");

    let everywhere = |u: &Upstream| {
        u.requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect::<Vec<_>>()
    };
    // Two rounds: without the serving host in the refresh, the cluster's round-robin fallback
    // would not send both refreshes to the same host.
    for round in 1..=2usize {
        // Stale (Age >= 2 > max-age) but well inside the stale-while-revalidate window.
        std::thread::sleep(Duration::from_millis(2100));
        let stale = envoy
            .get(&path)
            .header("x-user-id", "alice")
            .header("authorization", "Bearer alice-secret")
            .header("cookie", "session=alice-session")
            .header("x-upstream-host", other.addr().to_string())
            .send();
        assert_eq!(
            (stale.status, x_cache(&stale)),
            (200, "STALE"),
            "round {round}: {:?}",
            stale.headers
        );
        let refreshed = eventually(WAIT, || owner.count_path("/internal/x") > round as u64);
        assert!(
            refreshed,
            "round {round}: no refresh reached {} (the host that served the entry); fallback saw \
             {:?}, {} (the client's choice) saw {:?}",
            owner.id(),
            everywhere(fallback),
            other.id(),
            everywhere(other)
        );
        let seen = owner.requests();
        assert_eq!(
            seen.len(),
            round + 1,
            "one refresh per round: {:?}",
            everywhere(owner)
        );
        let refresh = seen[round].clone();
        assert_eq!(refresh.method, "GET");
        assert_eq!(refresh.path, "/internal/x", "{refresh:?}");
        assert_eq!(refresh.header("authorization"), None, "{refresh:?}");
        assert_eq!(refresh.header("cookie"), None, "{refresh:?}");
        assert_eq!(refresh.header("x-upstream-host"), None, "{refresh:?}");
        assert_eq!(refresh.header("x-switchyard-cluster"), Some("web"));
        // The refresh replaced the entry. No request polls for it: a stale hit on the other
        // worker would start a refresh of its own (they are deduplicated per worker).
        wait_until("the refresh is stored", WAIT, || {
            envoy.stat_value("switchyard.cache.stores") == 1 + round as u64
        });
    }
    // Nothing went to the fallback cluster or to any other web host (the client's choice).
    assert_eq!(fallback.count(), 0, "{:?}", everywhere(fallback));
    for u in &web {
        if u.id() != owner.id() {
            assert_eq!(u.count(), 0, "{}: {:?}", u.id(), everywhere(u));
        }
    }
    assert_eq!(owner.count(), 3, "{:?}", everywhere(owner));
    assert_eq!(
        envoy.stat_value("switchyard.cache.background_revalidations"),
        2
    );
}

/// Scenario 4. The cache serves `stale-if-error` entries when the key's host answers 5xx; the
/// hashring still sees the host's 5xx (not the cache's stored 200) and ejects the host after
/// `health.failures`.
fn a_failing_host_behind_stale_if_error_is_still_ejected(mode: Mode) {
    let ups = start_upstreams(&["u1", "u2", "u3"]);
    let web: Vec<&Upstream> = ups.iter().collect();
    let envoy = chain(
        mode,
        generous_ratelimit(),
        json!({"default": {"cluster": "web"}}),
        cache_config(),
        hashring_config(&web),
    )
    .cluster_with(web_cluster(&web))
    .route(ROUTE_BY_CLUSTER_HEADER)
    .route_to("web")
    .start();

    let path = format!("/doc?{}", cc("max-age=1, stale-if-error=600"));
    let first = envoy.get(&path).header("x-user-id", "reader").send();
    assert_eq!((first.status, x_cache(&first)), (200, "MISS"));
    let host = explain(&first)["host"].clone();
    let owner = ups
        .iter()
        .find(|u| u.addr().to_string() == host)
        .expect("a web host");
    assert_eq!(upstream_of(&first), owner.id());
    std::thread::sleep(Duration::from_millis(2100));

    // The host now fails every request (x-echo-status is not part of the cache key); the
    // client gets the stale entry each time.
    let mut served_stale = 0;
    wait_until("the failing host is ejected", WAIT, || {
        let r = envoy
            .get(&path)
            .header("x-user-id", "reader")
            .header("x-echo-status", "503")
            .send();
        assert_eq!((r.status, x_cache(&r)), (200, "STALE"), "{:?}", r.headers);
        assert_eq!(r.body, first.body);
        served_stale += 1;
        assert!(
            served_stale <= 10,
            "still not ejected after 10 stale serves"
        );
        host_stat(&envoy, owner, "ejections") >= 1
    });
    assert!(
        served_stale >= 2,
        "ejected after {served_stale} failures (health.failures is 2)"
    );
    assert!(owner.count_path("/doc") >= 3);
    // The filter itself now skips the host for the key.
    let r = envoy.get("/fresh").header("x-user-id", "reader").send();
    assert_eq!(r.status, 200);
    let e = explain(&r);
    assert_eq!(e["reason"], "health_skip", "{e:?}");
    assert_ne!(upstream_of(&r), owner.id());
    assert!(envoy.stat_value("switchyard.cache.stale") >= 2);
}

/// Scenario 5. A POST answered without an upstream — by the router (`respond`), by the rate
/// limit (429) or by Envoy itself (a route's `direct_response`) — never invalidates cached
/// entries; a POST that reaches the upstream and succeeds does.
fn local_replies_to_unsafe_requests_never_invalidate(mode: Mode) {
    let ups = start_upstreams(&["w1"]);
    let web: Vec<&Upstream> = ups.iter().collect();
    let ratelimit = json!({"rules": [
        {"name": "noisy", "match": {"headers": [{"name": "x-tenant", "exact": "noisy"}]},
         "key": [{"header": "x-tenant"}], "limits": [{"requests": 1, "per": "1h"}]}
    ]});
    let router = json!({
        "routes": [
            {"name": "accept", "match": {"path": {"prefix": "/items"}, "methods": ["POST"],
                                         "headers": [{"name": "x-answer", "exact": "router"}]},
             "action": {"respond": {"status": 201, "body": "accepted"}}},
            {"name": "ok", "match": {"path": {"prefix": "/items"}, "methods": ["POST"],
                                     "headers": [{"name": "x-answer", "exact": "router-200"}]},
             "action": {"respond": {"status": 200, "body": "ok"}}}
        ],
        "default": {"cluster": "web"}
    });
    let envoy = chain(
        mode,
        ratelimit,
        router,
        cache_config(),
        hashring_config(&web),
    )
    .cluster_with(web_cluster(&web))
    // Envoy answers POSTs carrying x-direct itself, after the cache saw the request.
    .route(
        r#"
            match:
              prefix: "/items"
              headers:
              - name: x-direct
                present_match: true
            direct_response: { status: 200, body: { inline_string: "direct" } }
            "#,
    )
    .route(ROUTE_BY_CLUSTER_HEADER)
    .route_to("web")
    .start();

    let page = format!("/items?{}", cc("max-age=600"));
    let get = || x_cache(&envoy.get(&page).send()).to_string();
    assert_eq!(get(), "MISS");
    assert_eq!(get(), "HIT");
    let invalidations = || envoy.stat_value("switchyard.cache.invalidations");

    // The router's own answers.
    let r = envoy
        .request("POST", "/items")
        .header("x-answer", "router")
        .body("x")
        .send();
    assert_eq!((r.status, r.text().as_str()), (201, "accepted"));
    assert_eq!(get(), "HIT", "the router's 201 invalidated the entry");
    let r = envoy
        .request("POST", "/items")
        .header("x-answer", "router-200")
        .body("x")
        .send();
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert_eq!(get(), "HIT", "the router's 200 invalidated the entry");

    // The rate limit's 429 (the tenant's one request is spent on a GET elsewhere).
    let spend = envoy.get("/spend").header("x-tenant", "noisy").send();
    assert_eq!(spend.status, 200);
    let r = envoy
        .request("POST", "/items")
        .header("x-tenant", "noisy")
        .body("x")
        .send();
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(get(), "HIT", "the 429 invalidated the entry");

    // Envoy's own local reply.
    let r = envoy
        .request("POST", "/items")
        .header("x-direct", "1")
        .body("x")
        .send();
    assert_eq!((r.status, r.text().as_str()), (200, "direct"));
    assert_eq!(
        get(),
        "HIT",
        "Envoy's direct response invalidated the entry"
    );

    assert_eq!(
        ups[0].count_path("/items"),
        1,
        "only the first GET went upstream"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(invalidations(), 0);

    // A POST the upstream answers successfully invalidates.
    let r = envoy.request("POST", "/items").body("x").send();
    assert_eq!((r.status, upstream_of(&r)), (200, "w1"));
    assert_eq!(get(), "MISS");
    wait_until("the invalidation is counted", WAIT, || invalidations() >= 1);
}

/// Every scenario twice: with the four plugins, and with the suite module running the same four
/// configurations as stages. The same assertions hold for both.
macro_rules! in_both_modes {
    ($($name:ident),* $(,)?) => {
        mod separate {
            $(#[test]
            fn $name() {
                super::$name(super::Mode::Separate)
            })*
        }
        mod suite {
            $(#[test]
            fn $name() {
                super::$name(super::Mode::Suite)
            })*
        }
    };
}

in_both_modes!(
    api_traffic_on_shared_hosts_never_ejects_or_skips_web_hosts,
    api_successes_on_shared_hosts_are_not_failures_of_other_web_hosts,
    canary_responses_are_never_served_to_other_users_and_local_replies_are_not_stored,
    stale_while_revalidate_refresh_follows_the_routing_without_credentials,
    a_failing_host_behind_stale_if_error_is_still_ejected,
    local_replies_to_unsafe_requests_never_invalidate,
);
