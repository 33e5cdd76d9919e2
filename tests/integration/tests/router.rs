//! The router filter against a real Envoy 1.40 (`--concurrency 2`) and several upstream test
//! servers: every action, canaries by header and by sticky weight, live reload from a config
//! endpoint (with a bad table keeping the old routing), mirroring, and a plugin configuration
//! change through ECDS (file-based dynamic resources) without a restart.
//!
//! The filter writes the chosen cluster to `x-switchyard-cluster`; the Envoy route forwards by
//! that header (`cluster_header`). Every upstream answers with `x-upstream-id: <its id>`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::time::Duration;
use switchyard_harness::yaml::ROUTE_BY_CLUSTER_HEADER;
use switchyard_harness::{eventually, wait_until, workspace_root, Envoy, EnvoyBuilder, Response};
use switchyard_upstream::Upstream;

/// A bound on waiting for asynchronous effects (reloads, mirrors), not a speed assertion.
const WAIT: Duration = Duration::from_secs(60);

/// One upstream per role, so a response's `x-upstream-id` says which cluster served it.
struct Upstreams {
    web: Upstream,
    v1: Upstream,
    v2: Upstream,
    users: Upstream,
    shadow: Upstream,
    cfg: Upstream,
}

impl Upstreams {
    fn start() -> Upstreams {
        let up = |id: &str| Upstream::start(id).unwrap_or_else(|e| panic!("upstream {id}: {e}"));
        Upstreams {
            web: up("web"),
            v1: up("v1"),
            v2: up("v2"),
            users: up("users"),
            shadow: up("shadow"),
            cfg: up("cfg"),
        }
    }

    /// The clusters of the issue's example: `search` shares the `web` upstream.
    fn clusters(&self, b: EnvoyBuilder) -> EnvoyBuilder {
        b.cluster("web", [self.web.addr()])
            .cluster("api-v1", [self.v1.addr()])
            .cluster("api-v2", [self.v2.addr()])
            .cluster("users", [self.users.addr()])
            .cluster("search", [self.web.addr()])
            .cluster("search-next", [self.shadow.addr()])
            .cluster("routes-config", [self.cfg.addr()])
            .route(ROUTE_BY_CLUSTER_HEADER)
            .route_to("web")
    }
}

const KNOWN: [&str; 6] = ["web", "api-v1", "api-v2", "users", "search", "search-next"];

/// The issue's example routes, plus rewrites and matchers the example does not show.
fn routes() -> Value {
    json!([
        {"name": "health", "match": {"path": {"exact": "/healthz"}},
         "action": {"respond": {"status": 200, "body": "ok", "headers": {"content-type": "text/plain"}}}},
        {"name": "old-docs", "match": {"path": {"prefix": "/docs/v1/"}},
         "action": {"redirect": {"path_prefix": "/docs/v2/", "status": 301}}},
        {"name": "canary-by-header", "match": {"path": {"prefix": "/api/"}, "headers": [{"name": "x-canary", "exact": "always"}]},
         "action": {"cluster": "api-v2"}},
        {"name": "api-split", "match": {"path": {"prefix": "/api/"}},
         "action": {"weighted": [{"cluster": "api-v1", "weight": 90}, {"cluster": "api-v2", "weight": 10}],
                    "sticky": [{"header": "x-user-id"}, {"cookie": "session"}]}},
        {"name": "random-split", "match": {"path": {"prefix": "/coin/"}},
         "action": {"weighted": [{"cluster": "api-v1", "weight": 50}, {"cluster": "api-v2", "weight": 50}]}},
        {"name": "users", "match": {"path": {"template": "/users/{id}"}, "methods": ["GET"]},
         "action": {"cluster": "users", "rewrite": {"path": "/v1/users/{id}"},
                    "request_headers": {"set": {"x-route": "users"}, "append": {"x-trace": "router"}, "remove": ["x-debug"]},
                    "response_headers": {"set": {"x-served-by": "users"}, "remove": ["x-upstream-id"]}}},
        {"name": "legacy", "match": {"path": {"prefix": "/legacy/"}},
         "action": {"cluster": "users", "rewrite": {"prefix": "/modern/", "host": "modern.internal"}}},
        {"name": "items", "match": {"path": {"regex": "/items/([0-9]+)/(?P<part>[a-z]+)"}},
         "action": {"cluster": "users", "rewrite": {"regex": {"pattern": "/items/([0-9]+)/(?P<part>[a-z]+)", "substitution": "/catalog/${part}/$1"}}}},
        {"name": "beta", "match": {"query": [{"name": "beta", "exact": "1"}], "cookies": [{"name": "tier", "exact": "gold"}]},
         "action": {"cluster": "api-v2"}},
        {"name": "shadow", "match": {"path": {"prefix": "/search"}},
         "action": {"cluster": "search", "mirror": {"cluster": "search-next", "percent": 100}}}
    ])
}

fn config() -> Value {
    json!({
        "cluster_header": "x-switchyard-cluster",
        "known_clusters": KNOWN,
        "routes": routes(),
        "default": {"cluster": "web"},
        "explain": true,
        "version_header": true
    })
}

fn start(ups: &Upstreams, cfg: Value) -> Envoy {
    ups.clusters(Envoy::builder().wasm_filter("router", cfg))
        .start()
}

fn upstream_of(r: &Response) -> &str {
    r.upstream().unwrap_or("<none>")
}

#[test]
fn example_configs_validate() {
    for file in ["envoy/router.yaml", "envoy/router-ecds/envoy.yaml"] {
        switchyard_integration::assert_envoy_accepts(file);
    }
    // The demo configuration goes through the same parser as on_configure.
    let demo = std::fs::read(workspace_root().join("envoy/demo/router.json")).unwrap();
    switchyard_router::validate_config(&demo).unwrap();
}

#[test]
fn every_action_in_envoy() {
    let ups = Upstreams::start();
    let envoy = start(&ups, config());

    // respond: a direct response, the upstreams never see it.
    let r = envoy.get("/healthz").send();
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.upstream(), None);
    let explain = r.header("x-switchyard-route").unwrap();
    assert!(explain.contains("route=health"), "{explain}");
    assert_eq!(r.header("x-switchyard-table-version"), Some("0"));

    // redirect: the matched prefix is replaced, the query kept.
    let r = envoy
        .get("/docs/v1/intro?lang=en")
        .header("host", "docs.example.com")
        .send();
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some("http://docs.example.com/docs/v2/intro?lang=en")
    );

    // cluster + template rewrite + request/response header changes.
    let r = envoy
        .get("/users/42?full=1")
        .header("x-debug", "1")
        .header("x-trace", "client")
        .send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-served-by"), Some("users"));
    assert_eq!(
        r.upstream(),
        None,
        "x-upstream-id is removed from the response"
    );
    let seen = ups.users.requests();
    let req = seen.last().unwrap();
    assert_eq!(req.path, "/v1/users/42");
    assert_eq!(req.query.as_deref(), Some("full=1"));
    assert_eq!(req.header("x-route"), Some("users"));
    assert_eq!(req.header("x-debug"), None);
    assert_eq!(req.header_all("x-trace").join(","), "client,router");
    assert_eq!(req.header("x-switchyard-cluster"), Some("users"));
    // Methods are part of the match: POST falls through to the default.
    let r = envoy.request("POST", "/users/42").body("x").send();
    assert_eq!(upstream_of(&r), "web");

    // prefix rewrite + host rewrite.
    let r = envoy.get("/legacy/a/b").send();
    assert_eq!(upstream_of(&r), "users");
    let req = ups.users.requests().last().cloned().unwrap();
    assert_eq!(req.path, "/modern/a/b");
    assert_eq!(req.header("host"), Some("modern.internal"));

    // regex rewrite with numbered and named groups.
    let r = envoy.get("/items/17/specs").send();
    assert_eq!(upstream_of(&r), "users");
    assert_eq!(
        ups.users.requests().last().unwrap().path,
        "/catalog/specs/17"
    );

    // canary by header; query + cookie matching.
    let r = envoy.get("/api/orders").header("x-canary", "always").send();
    assert_eq!(upstream_of(&r), "v2");
    let r = envoy
        .get("/home?beta=1")
        .header("cookie", "a=b; tier=gold")
        .send();
    assert_eq!(upstream_of(&r), "v2");
    let r = envoy
        .get("/home?beta=1")
        .header("cookie", "tier=silver")
        .send();
    assert_eq!(upstream_of(&r), "web");

    // Clients cannot choose a cluster: the filter overwrites the header.
    let r = envoy
        .get("/anything")
        .header("x-switchyard-cluster", "api-v2")
        .send();
    assert_eq!(upstream_of(&r), "web");
    assert_eq!(
        ups.web
            .requests()
            .last()
            .unwrap()
            .header("x-switchyard-cluster"),
        Some("web")
    );

    // Per-route metrics for each outcome.
    let stat = |n: &str| envoy.stat_value(&format!("switchyard.router.route.{n}"));
    assert!(eventually(WAIT, || stat("health.responded") == 1));
    assert_eq!(stat("old-docs.redirected"), 1);
    assert_eq!(stat("users.routed"), 1);
    assert_eq!(stat("default.routed"), 3);
    assert_eq!(envoy.stat_value("switchyard.router.table_version"), 0);
}

#[test]
fn weighted_canary_is_sticky_per_user() {
    let ups = Upstreams::start();
    let envoy = start(&ups, config());

    // 400 distinct users: the split follows the 90/10 weights (the hash is deterministic, so
    // this is a fixed sample; the bounds leave several standard deviations of room).
    let mut side: HashMap<String, String> = HashMap::new();
    for i in 0..400 {
        let user = format!("user-{i}");
        let r = envoy.get("/api/cart").header("x-user-id", &user).send();
        assert_eq!(r.status, 200);
        side.insert(user, upstream_of(&r).to_string());
    }
    let v2 = side.values().filter(|s| *s == "v2").count();
    let v1 = side.values().filter(|s| *s == "v1").count();
    assert_eq!(v1 + v2, 400);
    assert!((16..=72).contains(&v2), "v2 got {v2} of 400 users");

    // The same user always lands on the same side, on any connection and worker.
    for i in (0..400).step_by(20) {
        let user = format!("user-{i}");
        for _ in 0..4 {
            let r = envoy.get("/api/cart").header("x-user-id", &user).send();
            assert_eq!(upstream_of(&r), side[&user], "{user}");
        }
    }
    // The session cookie is the fallback key.
    let first =
        upstream_of(&envoy.get("/api/x").header("cookie", "session=s-77").send()).to_string();
    for _ in 0..10 {
        let r = envoy.get("/api/x").header("cookie", "session=s-77").send();
        assert_eq!(upstream_of(&r), first);
    }
    let explain = envoy
        .get("/api/x")
        .header("x-user-id", "user-1")
        .send()
        .header("x-switchyard-route")
        .unwrap()
        .to_string();
    assert!(explain.contains("sticky on header:x-user-id"), "{explain}");

    // Without a sticky key the split is a uniform draw: both sides get traffic.
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..200 {
        let r = envoy.get("/coin/flip").send();
        *counts.entry(upstream_of(&r).to_string()).or_default() += 1;
    }
    assert!(counts.get("v1").copied().unwrap_or(0) >= 50, "{counts:?}");
    assert!(counts.get("v2").copied().unwrap_or(0) >= 50, "{counts:?}");
}

#[test]
fn mirror_copies_requests_without_affecting_the_response() {
    let ups = Upstreams::start();
    let envoy = start(&ups, config());

    let r = envoy.get("/search?q=shoes").header("x-user", "ann").send();
    assert_eq!((r.status, upstream_of(&r)), (200, "web"));
    let r = envoy
        .request("POST", "/search/index")
        .header("content-type", "application/json")
        .body(r#"{"doc": 1}"#)
        .send();
    assert_eq!((r.status, upstream_of(&r)), (200, "web"));

    wait_until("the shadow upstream received both copies", WAIT, || {
        ups.shadow.count() >= 2
    });
    let copies = ups.shadow.requests();
    let get = copies.iter().find(|c| c.path == "/search").unwrap();
    assert_eq!(get.query.as_deref(), Some("q=shoes"));
    assert_eq!(get.header("x-user"), Some("ann"));
    assert!(
        get.header("host").unwrap().ends_with("-shadow"),
        "{:?}",
        get.headers
    );
    let post = copies.iter().find(|c| c.path == "/search/index").unwrap();
    assert_eq!(post.method, "POST");
    assert_eq!(post.body, br#"{"doc": 1}"#);
    // The original went to the main cluster exactly once each.
    assert_eq!(ups.web.count_path("/search"), 1);
    assert_eq!(ups.web.count_path("/search/index"), 1);
    assert!(eventually(WAIT, || envoy
        .stat_value("switchyard.router.route.shadow.mirrored")
        == 2));

    // A dead shadow neither fails nor changes the original.
    ups.shadow.stop();
    for i in 0..10 {
        let r = envoy.get(&format!("/search?q={i}")).send();
        assert_eq!((r.status, upstream_of(&r)), (200, "web"));
    }
    assert_eq!(ups.web.count_path("/search"), 11);
}

/// A route table as the reload endpoint serves it.
fn table(all_to: &str) -> String {
    json!({"routes": [{"name": "everything", "match": {"path": {"prefix": "/"}}, "action": {"cluster": all_to}}],
           "default": {"cluster": "web"}})
    .to_string()
}

#[test]
fn reload_swaps_tables_and_rejects_bad_ones() {
    let ups = Upstreams::start();
    let mut cfg = config();
    cfg["reload"] =
        json!({"cluster": "routes-config", "path": "/__store/routes.json", "interval": "1s"});
    let envoy = start(&ups, cfg);

    // Nothing served yet (404): the configured table (version 0) stays in force.
    let r = envoy.get("/page").send();
    assert_eq!(
        (upstream_of(&r), r.header("x-switchyard-table-version")),
        ("web", Some("0"))
    );
    wait_until("a failed fetch is counted", WAIT, || {
        envoy.stat_value("switchyard.router.reloads_failed") >= 1
    });
    assert_eq!(upstream_of(&envoy.get("/page").send()), "web");

    // A valid table: routing changes on every worker.
    ups.cfg
        .store_put("routes.json", "application/json", table("users"));
    wait_until("version 1 routes /page to users", WAIT, || {
        upstream_of(&envoy.get("/page").send()) == "users"
    });
    for _ in 0..20 {
        let r = envoy.get("/page").send();
        assert_eq!(upstream_of(&r), "users");
        assert_eq!(r.header("x-switchyard-table-version"), Some("1"));
        let explain = r.header("x-switchyard-route").unwrap();
        assert!(explain.starts_with("v1 route=everything"), "{explain}");
    }
    assert_eq!(envoy.stat_value("switchyard.router.table_version"), 1);
    assert!(envoy.stat_value("switchyard.router.reloads_ok") >= 1);
    // Unchanged table: the endpoint answers 304 to If-None-Match.
    wait_until("a 304 is counted", WAIT, || {
        envoy.stat_value("switchyard.router.reloads_not_modified") >= 1
    });

    // A bad table (unknown cluster) is rejected with the field named; version 1 stays.
    ups.cfg
        .store_put("routes.json", "application/json", table("no-such-cluster"));
    wait_until("the bad table is rejected", WAIT, || {
        envoy.stat_value("switchyard.router.reloads_rejected") >= 1
    });
    // Envoy flushes its log file asynchronously.
    assert!(
        envoy.wait_for_log(
            "routes[0].action.cluster: unknown cluster \"no-such-cluster\"",
            WAIT
        ),
        "the log must name the field"
    );
    let fetches = ups.cfg.store_fetches("routes.json");
    wait_until("the endpoint is polled again", WAIT, || {
        ups.cfg.store_fetches("routes.json") >= fetches + 2
    });
    for _ in 0..10 {
        let r = envoy.get("/page").send();
        assert_eq!(upstream_of(&r), "users");
        assert_eq!(r.header("x-switchyard-table-version"), Some("1"));
    }
    // The rejected table is not re-counted while it does not change (its ETag is remembered).
    assert_eq!(envoy.stat_value("switchyard.router.reloads_rejected"), 1);

    // An unparsable table too.
    ups.cfg
        .store_put("routes.json", "application/json", "{\"routes\": [");
    wait_until("the broken table is rejected", WAIT, || {
        envoy.stat_value("switchyard.router.reloads_rejected") >= 2
    });
    assert_eq!(upstream_of(&envoy.get("/page").send()), "users");

    // The next good table wins.
    ups.cfg
        .store_put("routes.json", "application/json", table("api-v2"));
    wait_until("version 2 routes /page to v2", WAIT, || {
        upstream_of(&envoy.get("/page").send()) == "v2"
    });
    let r = envoy.get("/page").send();
    assert_eq!(r.header("x-switchyard-table-version"), Some("2"));
    assert_eq!(envoy.stat_value("switchyard.router.table_version"), 2);
}

/// The ECDS resource file with the router's plugin configuration.
fn ecds_resource(cfg: &Value) -> String {
    let wasm = switchyard_harness::wasm_path("router");
    format!(
        r#"version_info: "{version}"
resources:
- "@type": type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig
  name: switchyard.router
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
    config:
      name: switchyard.router
      root_id: router
      vm_config:
        vm_id: router
        runtime: envoy.wasm.runtime.v8
        code:
          local:
            filename: {wasm}
      configuration:
        "@type": type.googleapis.com/google.protobuf.StringValue
        value: {value}
"#,
        version = {
            let mut h = DefaultHasher::new();
            cfg.to_string().hash(&mut h);
            h.finish()
        },
        wasm = json!(wasm.to_string_lossy()),
        value = json!(cfg.to_string()),
    )
}

const ECDS_BOOTSTRAP: &str = r#"
node: { id: router-test, cluster: switchyard }
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: {{ADMIN_PORT}} }
static_resources:
  listeners:
  - name: main
    address:
      socket_address: { address: 127.0.0.1, port_value: {{LISTENER_PORT}} }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/", headers: [{ name: x-switchyard-cluster, present_match: true }] }
                route: { cluster_header: x-switchyard-cluster }
              - match: { prefix: "/" }
                route: { cluster: web }
          http_filters:
          - name: switchyard.router
            config_discovery:
              config_source:
                resource_api_version: V3
                path_config_source:
                  path: {{DIR}}/router-filter.yaml
                  watched_directory: { path: "{{DIR}}" }
              type_urls: [type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm]
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: web
    type: STATIC
    load_assignment:
      cluster_name: web
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {{WEB}} } } } }] }]
  - name: users
    type: STATIC
    load_assignment:
      cluster_name: users
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {{USERS}} } } } }] }]
"#;

#[test]
fn ecds_update_takes_effect_without_restart() {
    let ups = Upstreams::start();
    let v1 = json!({"routes": [{"name": "a", "match": {"path": {"prefix": "/a/"}}, "action": {"cluster": "web"}}],
                    "default": {"cluster": "web"}, "version_header": true});
    let mut envoy = Envoy::from_yaml(ECDS_BOOTSTRAP)
        .var("WEB", ups.web.port())
        .var("USERS", ups.users.port())
        .file("router-filter.yaml", ecds_resource(&v1))
        .start();
    let pid = envoy.pid();
    assert_eq!(upstream_of(&envoy.get("/a/1").send()), "web");
    assert_eq!(upstream_of(&envoy.get("/elsewhere").send()), "web");

    // New plugin configuration: /a/ goes to users and there is no default any more.
    let v2 = json!({"routes": [{"name": "a", "match": {"path": {"prefix": "/a/"}}, "action": {"cluster": "users"}}],
                    "explain": true});
    envoy
        .write_file("router-filter.yaml", ecds_resource(&v2))
        .unwrap();
    wait_until("the new configuration routes /a/ to users", WAIT, || {
        upstream_of(&envoy.get("/a/1").send()) == "users"
    });
    let r = envoy.get("/elsewhere").send();
    assert_eq!(r.status, 404);
    assert!(r.text().contains("no route matches"), "{}", r.text());
    assert!(r.header("x-switchyard-route").is_some());
    // Same process: no restart happened.
    assert!(envoy.is_running());
    assert_eq!(envoy.pid(), pid);

    // An invalid configuration is refused; the last good one keeps routing.
    let bad = json!({"routes": [{"name": "a", "action": {"cluster": "users", "rewrite": {"path": "/{nope}"}}}]});
    envoy
        .write_file("router-filter.yaml", ecds_resource(&bad))
        .unwrap();
    wait_until("the invalid configuration is logged", WAIT, || {
        envoy
            .log()
            .contains("routes[0].action.rewrite.path: \"/{nope}\" uses undefined capture {nope}")
    });
    assert_eq!(upstream_of(&envoy.get("/a/2").send()), "users");
}
