//! Path rules cannot be dodged by spelling a path differently. Every shipped configuration has
//! Envoy normalise the path before the filters run (`normalize_path`, `merge_slashes`,
//! `path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT`; the harness does the same), so
//! `//api/x` and `/x/../api/x` reach the router's `/api/` rule and the cache's `bypass` of
//! `/admin` holds for `//admin`. Real Envoy 1.40, `--concurrency 2`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::json;
use switchyard_harness::yaml::ROUTE_BY_CLUSTER_HEADER;
use switchyard_harness::{Envoy, WasmFilter};
use switchyard_upstream::Upstream;

#[test]
fn dot_segments_and_doubled_slashes_reach_the_api_route() {
    let web = Upstream::start("web").unwrap();
    let api = Upstream::start("api").unwrap();
    let router = WasmFilter::new("router").config(&json!({
        "routes": [{"name": "api", "match": {"path": {"prefix": "/api/"}},
                    "action": {"cluster": "api"}}],
        "default": {"cluster": "web"}
    }));
    let envoy = Envoy::builder()
        .concurrency(2)
        .wasm(router)
        .cluster("web", [web.addr()])
        .cluster("api", [api.addr()])
        .route(ROUTE_BY_CLUSTER_HEADER)
        .route_to("web")
        .start();
    for path in ["/api/x", "//api/x", "/x/../api/x", "/./api//x", "/%61pi/x"] {
        let r = envoy.get(path).send();
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(
            r.upstream(),
            Some("api"),
            "{path} must take the /api/ route"
        );
    }
    // Every one reached the API upstream under its normalised name.
    let seen: Vec<String> = api.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(seen.len(), 5);
    assert!(
        seen.iter().all(|p| p == "/api/x"),
        "the upstream sees what the rule saw: {seen:?}"
    );
    assert!(web.requests().is_empty());
    // An encoded slash is not a path separator a rule could miss: Envoy redirects to the
    // unescaped path instead of forwarding it.
    let r = envoy.get("/api%2Fx").send();
    assert_eq!(r.status, 307, "{}", r.text());
    assert_eq!(r.header("location"), Some("/api/x"));
}

#[test]
fn a_cache_bypass_of_admin_holds_for_every_spelling() {
    let origin = Upstream::start("origin").unwrap();
    let cache = WasmFilter::new("cache").config(&json!({
        "default_ttl": "60s",
        "bypass": [{"path": {"prefix": "/admin"}}]
    }));
    let envoy = Envoy::builder()
        .concurrency(2)
        .wasm(cache)
        .cluster("origin", [origin.addr()])
        .route_to("origin")
        .start();
    for path in [
        "/admin/users",
        "//admin/users",
        "/x/../admin/users",
        "/admin//users",
    ] {
        for _ in 0..2 {
            let r = envoy.get(path).send();
            assert_eq!(r.status, 200, "{path}");
            assert_eq!(
                r.header("x-cache"),
                Some("BYPASS"),
                "{path} is under /admin and must never be cached"
            );
        }
    }
    assert_eq!(
        origin.requests().len(),
        8,
        "every request reached the origin"
    );
}

/// Every shipped Envoy configuration runs its listener as an edge proxy with normalised paths,
/// and every Switchyard filter in it reloads a failed VM.
#[test]
fn every_shipped_configuration_normalises_paths_and_reloads_failed_vms() {
    let root = switchyard_harness::workspace_root();
    let files = [
        "envoy/cache.yaml",
        "envoy/hashring.yaml",
        "envoy/hashring-original-dst.yaml",
        "envoy/ratelimit.yaml",
        "envoy/router.yaml",
        "envoy/compose.yaml",
        "envoy/router-ecds/envoy.yaml",
        "k8s/overlays/envoy/envoy.yaml",
    ];
    for f in files {
        let text = std::fs::read_to_string(root.join(f)).unwrap();
        for setting in [
            "use_remote_address: true",
            "normalize_path: true",
            "merge_slashes: true",
            "path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT",
        ] {
            assert_eq!(
                text.matches(setting).count(),
                text.matches("HttpConnectionManager").count(),
                "{f}: every HTTP connection manager needs `{setting}`"
            );
        }
    }
    for f in files
        .iter()
        .chain(&["envoy/router-ecds/router-filter.yaml"])
    {
        let text = std::fs::read_to_string(root.join(f)).unwrap();
        let filters = text
            .matches("@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm")
            .count();
        assert!(filters > 0 || f.ends_with("router-ecds/envoy.yaml"), "{f}");
        assert_eq!(
            text.matches("failure_policy: FAIL_RELOAD").count(),
            filters,
            "{f}: every wasm filter reloads a failed VM"
        );
    }
}
