//! Native tests of configuration, matching, rewriting, splits and reload state.

use crate::config::{parse_router_config, parse_table};
use crate::reload::{self, evaluate_fetch, FetchResult, Keys};

fn fetch(
    status: u16,
    etag: Option<&str>,
    body: &[u8],
    max_bytes: usize,
    known: Option<&[String]>,
    header: &str,
) -> FetchResult {
    evaluate_fetch(
        status,
        etag,
        body.len(),
        || body.to_vec(),
        max_bytes,
        known,
        header,
    )
}
use crate::table::{split_at, Matched, Outcome, Table};
use serde_json::{json, Value};
use switchyard_core::shared::{MemStore, SharedStore};
use switchyard_core::RequestView;

/// The configuration from the issue, verbatim.
const ISSUE_CONFIG: &str = r#"{
  "cluster_header": "x-switchyard-cluster",
  "routes": [
    {"name": "health", "match": {"path": {"exact": "/healthz"}},
     "action": {"respond": {"status": 200, "body": "ok", "headers": {"content-type": "text/plain"}}}},
    {"name": "old-docs", "match": {"path": {"prefix": "/docs/v1/"}},
     "action": {"redirect": {"path_prefix": "/docs/v2/", "status": 301}}},
    {"name": "canary-by-header", "match": {"path": {"prefix": "/api/"}, "headers": [{"name": "x-canary", "exact": "always"}]},
     "action": {"cluster": "api-v2"}},
    {"name": "api-split", "match": {"path": {"prefix": "/api/"}},
     "action": {"weighted": [{"cluster": "api-v1", "weight": 90}, {"cluster": "api-v2", "weight": 10}],
                "sticky": [{"header": "x-user-id"}, {"cookie": "session"}]}},
    {"name": "users", "match": {"path": {"template": "/users/{id}"}, "methods": ["GET"]},
     "action": {"cluster": "users", "rewrite": {"path": "/v1/users/{id}"},
                "request_headers": {"set": {"x-route": "users"}, "remove": ["x-debug"]},
                "response_headers": {"set": {"x-served-by": "users"}}}},
    {"name": "shadow", "match": {"path": {"prefix": "/search"}},
     "action": {"cluster": "search", "mirror": {"cluster": "search-next", "percent": 5}}}
  ],
  "default": {"cluster": "web"},
  "reload": {"cluster": "routes-config", "path": "/routes.json", "interval": "5s"},
  "known_clusters": ["api-v1", "api-v2", "users", "search", "search-next", "web", "routes-config"]
}"#;

fn issue_table() -> Table {
    parse_router_config(ISSUE_CONFIG.as_bytes()).unwrap().table
}

fn table(v: Value) -> Table {
    parse_router_config(v.to_string().as_bytes()).unwrap().table
}

fn err(v: Value) -> String {
    parse_router_config(v.to_string().as_bytes())
        .unwrap_err()
        .to_string()
}

fn get(path: &str) -> RequestView {
    RequestView::new("GET", path)
        .with_authority("shop.example.com")
        .with_header(":scheme", "http")
        .with_source("10.0.0.1:5000")
}

/// A fixed "random" source: tests that reach it say so by the value they pass.
fn fixed(v: u64) -> impl FnMut() -> u64 {
    move || v
}

fn decide(t: &Table, req: &RequestView) -> (String, Outcome) {
    let d = t.decide(req, &mut fixed(0), true);
    (t.name(d.matched).to_string(), d.outcome)
}

fn forward_cluster(o: &Outcome) -> Option<&str> {
    match o {
        Outcome::Forward { cluster, .. } => Some(cluster),
        _ => None,
    }
}

#[test]
fn issue_example_is_accepted_and_routes() {
    let cfg = parse_router_config(ISSUE_CONFIG.as_bytes()).unwrap();
    assert_eq!(cfg.cluster_header, "x-switchyard-cluster");
    assert_eq!(cfg.table.routes().len(), 6);
    assert!(crate::validate_config(ISSUE_CONFIG.as_bytes()).is_ok());
    let t = cfg.table;
    // (request, route name, expected outcome kind/cluster)
    let cases: Vec<(RequestView, &str, &str)> = vec![
        (get("/healthz"), "health", "respond"),
        (get("/docs/v1/intro"), "old-docs", "redirect"),
        (
            get("/api/x").with_header("x-canary", "always"),
            "canary-by-header",
            "api-v2",
        ),
        (get("/users/42"), "users", "users"),
        (get("/search?q=a"), "shadow", "search"),
        (get("/other"), "default", "web"),
        (RequestView::new("POST", "/users/42"), "default", "web"),
    ];
    for (req, want_route, want) in cases {
        let (route, outcome) = decide(&t, &req);
        assert_eq!(route, want_route, "{}", req.raw_path());
        let kind = match &outcome {
            Outcome::Respond { .. } => "respond",
            Outcome::Redirect { .. } => "redirect",
            Outcome::Forward { cluster, .. } => cluster.as_str(),
            Outcome::NotFound => "404",
        };
        assert_eq!(kind, want, "{}", req.raw_path());
    }
}

#[test]
fn first_match_wins_across_index_and_unindexed_routes() {
    let t = table(json!({"routes": [
        {"name": "regex-first", "match": {"path": {"regex": "/a/.*"}}, "action": {"cluster": "r"}},
        {"name": "prefix-a", "match": {"path": {"prefix": "/a/"}}, "action": {"cluster": "p"}},
        {"name": "exact-b", "match": {"path": {"exact": "/b"}}, "action": {"cluster": "e"}},
        {"name": "any", "match": {"methods": ["GET"]}, "action": {"cluster": "any"}},
        {"name": "exact-c", "match": {"path": {"exact": "/c"}}, "action": {"cluster": "never"}},
        {"name": "short", "match": {"path": {"prefix": "/"}}, "action": {"cluster": "short"}},
        {"name": "long", "match": {"path": {"prefix": "/long/"}}, "action": {"cluster": "long"}}
    ]}));
    let cases = [
        ("/a/x", "regex-first"),
        ("/b", "exact-b"),
        ("/c", "any"),
        ("/long/x", "any"),
    ];
    for (p, want) in cases {
        assert_eq!(decide(&t, &get(p)).0, want, "{p}");
    }
    // Non-GET skips the catch-all "any": the shorter prefix listed first wins over the longer.
    assert_eq!(decide(&t, &RequestView::new("POST", "/long/x")).0, "short");
    assert_eq!(decide(&t, &RequestView::new("POST", "/c")).0, "exact-c");
}

#[test]
fn matching_edge_cases() {
    let t = table(json!({"routes": [
        {"name": "exact", "match": {"path": {"exact": "/exact"}}, "action": {"cluster": "c1"}},
        {"name": "slash", "match": {"path": {"prefix": "/dir/"}}, "action": {"cluster": "c2"}},
        {"name": "ci", "match": {"path": {"prefix": "/CaSe", "ignore_case": true}}, "action": {"cluster": "c3"}},
        {"name": "ci-exact", "match": {"path": {"exact": "/Login", "ignore_case": true}}, "action": {"cluster": "c3b"}},
        {"name": "tmpl", "match": {"path": {"template": "/u/{id}"}}, "action": {"cluster": "c4"}},
        {"name": "empty-q", "match": {"query": [{"name": "debug", "present": true}]}, "action": {"cluster": "c5"}},
        {"name": "qv", "match": {"query": [{"name": "v", "exact": "a b"}]}, "action": {"cluster": "c6"}},
        {"name": "rep", "match": {"headers": [{"name": "x-tier", "exact": "gold"}]}, "action": {"cluster": "c7"}},
        {"name": "enc", "match": {"path": {"exact": "/caf%C3%A9"}}, "action": {"cluster": "c8"}}
    ]}));
    let cases: Vec<(RequestView, Option<&str>)> = vec![
        // Trailing slashes are significant.
        (get("/exact"), Some("c1")),
        (get("/exact/"), None),
        (get("/exact?x=1"), Some("c1")),
        (get("/dir/"), Some("c2")),
        (get("/dir"), None),
        (get("/dir/a/b"), Some("c2")),
        // Case: only where asked for.
        (get("/case/x"), Some("c3")),
        (get("/CASE"), Some("c3")),
        (get("/LOGIN"), Some("c3b")),
        (get("/EXACT"), None),
        (get("/u/1"), Some("c4")),
        (get("/u/1/"), None),
        (get("/u/"), None),
        (get("/U/1"), None),
        // Empty query values count as present; names are decoded.
        (get("/q?debug"), Some("c5")),
        (get("/q?debug="), Some("c5")),
        (get("/q?v=a%20b"), Some("c6")),
        (get("/q?v=a+b"), Some("c6")),
        // Repeated headers: any value matches.
        (
            get("/h")
                .with_header("x-tier", "silver")
                .with_header("x-tier", "gold"),
            Some("c7"),
        ),
        (get("/h").with_header("x-tier", "silver"), None),
        // Percent-encoding: paths compare as received (Envoy normalizes before the filter).
        (get("/caf%C3%A9"), Some("c8")),
        (get("/café"), None),
    ];
    for (req, want) in cases {
        let (_, o) = decide(&t, &req);
        assert_eq!(forward_cluster(&o), want, "{}", req.raw_path());
    }
}

#[test]
fn rewrites() {
    let t = table(json!({"routes": [
        {"name": "tmpl", "match": {"path": {"template": "/users/{id}/files/{rest=**}"}},
         "action": {"cluster": "u", "rewrite": {"path": "/v2/{id}/{rest}"}}},
        {"name": "prefix", "match": {"path": {"prefix": "/old/"}},
         "action": {"cluster": "u", "rewrite": {"prefix": "/new/", "host": "new.internal"}}},
        {"name": "regex", "match": {"path": {"prefix": "/r/"}},
         "action": {"cluster": "u", "rewrite": {"regex": {"pattern": "/r/(?P<a>[^/]+)/(\\d+)", "substitution": "/x/$2/${a}"}}}},
        {"name": "host-only", "match": {"path": {"prefix": "/h"}},
         "action": {"cluster": "u", "rewrite": {"host": "h.internal"}}},
        {"name": "rx-capture", "match": {"path": {"regex": "/item/(?P<sku>[a-z]+)"}},
         "action": {"cluster": "u", "rewrite": {"path": "/catalog/{sku}"}}}
    ]}));
    let cases = [
        (
            "/users/7/files/a/b.txt?dl=1",
            Some("/v2/7/a/b.txt?dl=1"),
            None,
        ),
        ("/old/a/b?q=", Some("/new/a/b?q="), Some("new.internal")),
        ("/old/", Some("/new/"), Some("new.internal")),
        ("/r/abc/42", Some("/x/42/abc"), None),
        // The regex does not match the whole path: the path stays as it is.
        ("/r/abc/x", None, None),
        ("/h/x", None, Some("h.internal")),
        ("/item/shoe", Some("/catalog/shoe"), None),
    ];
    for (p, want_path, want_host) in cases {
        match decide(&t, &get(p)).1 {
            Outcome::Forward {
                path, authority, ..
            } => {
                assert_eq!(path.as_deref(), want_path, "{p}");
                assert_eq!(authority.as_deref(), want_host, "{p}");
            }
            o => panic!("{p}: {o:?}"),
        }
    }
    // A template variable never captures an encoded slash or a dot segment, so a rewrite
    // cannot be steered outside its place: such a path does not match the route.
    for p in [
        "/users/%2F/files/x",
        "/users/../files/x",
        "/users/7/files/a/%2e%2e/b",
    ] {
        assert!(matches!(decide(&t, &get(p)).1, Outcome::NotFound), "{p}");
    }
}

#[test]
fn redirects() {
    let t = table(json!({"routes": [
        {"name": "docs", "match": {"path": {"prefix": "/docs/v1/"}},
         "action": {"redirect": {"path_prefix": "/docs/v2/", "status": 301}}},
        {"name": "https", "match": {"path": {"prefix": "/secure"}},
         "action": {"redirect": {"scheme": "https", "port": 8443, "status": 308}}},
        {"name": "move", "match": {"path": {"template": "/p/{id}"}},
         "action": {"redirect": {"host": "new.example.com", "path": "/products/{id}", "strip_query": true, "status": 302}}}
    ]}));
    let cases = [
        (
            "/docs/v1/a?x=1",
            301,
            "http://shop.example.com/docs/v2/a?x=1",
        ),
        (
            "/secure/x?y",
            308,
            "https://shop.example.com:8443/secure/x?y",
        ),
        ("/p/9?utm=1", 302, "http://new.example.com/products/9"),
    ];
    for (p, want_status, want_loc) in cases {
        match decide(&t, &get(p)).1 {
            Outcome::Redirect { status, location } => {
                assert_eq!(status, want_status, "{p}");
                assert_eq!(location, want_loc, "{p}");
            }
            o => panic!("{p}: {o:?}"),
        }
    }
    let with_port = get("/secure").with_authority("shop.example.com:8080");
    match decide(&t, &with_port).1 {
        Outcome::Redirect { location, .. } => {
            assert_eq!(location, "https://shop.example.com:8443/secure")
        }
        o => panic!("{o:?}"),
    }
}

#[test]
fn missing_default_is_404_and_explain_names_route() {
    let t = table(json!({"routes": [
        {"name": "a", "match": {"path": {"exact": "/a"}}, "action": {"cluster": "x"}}
    ]}));
    let d = t.decide(&get("/b"), &mut fixed(0), true);
    assert_eq!(d.matched, Matched::Nothing);
    assert_eq!(d.outcome, Outcome::NotFound);
    let d = t.decide(&get("/a"), &mut fixed(0), true);
    let explain = d.explain.unwrap();
    assert!(
        explain.starts_with("route=a #0 match={\"path\":{\"exact\":\"/a\"}}"),
        "{explain}"
    );
    assert!(explain.ends_with("-> cluster x"), "{explain}");
    // Without explain nothing is built.
    assert_eq!(t.decide(&get("/a"), &mut fixed(0), false).explain, None);
}

fn split_table() -> Table {
    table(json!({"routes": [
        {"name": "split", "match": {"path": {"prefix": "/"}},
         "action": {"weighted": [{"cluster": "v1", "weight": 90}, {"cluster": "v2", "weight": 10}],
                    "sticky": [{"header": "x-user-id"}, {"cookie": "session"}]}}
    ]}))
}

#[test]
fn sticky_split_proportions_and_stickiness() {
    let t = split_table();
    let n = 20_000;
    let mut v2 = 0;
    for i in 0..n {
        let req = get("/").with_header("x-user-id", &format!("user-{i}"));
        let first = forward_cluster(&decide(&t, &req).1).unwrap().to_string();
        // The same user always gets the same side, whatever the random source says.
        for r in [1u64, u64::MAX / 3, u64::MAX] {
            let again = t.decide(&req, &mut fixed(r), true);
            assert_eq!(forward_cluster(&again.outcome), Some(first.as_str()));
        }
        if first == "v2" {
            v2 += 1;
        }
    }
    // 10% ± 1% for 20k users (the standard deviation is 0.21%).
    let share = v2 as f64 / n as f64;
    assert!((0.09..0.11).contains(&share), "v2 share {share}");
    // The cookie is the fallback key: same cookie, same side.
    let a = get("/").with_header("cookie", "session=abc");
    let side = forward_cluster(&decide(&t, &a).1).unwrap().to_string();
    for r in [1u64, 12345, u64::MAX] {
        assert_eq!(
            forward_cluster(&t.decide(&a, &mut fixed(r), true).outcome),
            Some(side.as_str())
        );
    }
}

#[test]
fn unsticky_split_follows_the_random_source() {
    let t = split_table();
    let req = get("/");
    // Points below 0.9 go to v1, the rest to v2.
    assert_eq!(
        forward_cluster(&t.decide(&req, &mut fixed(0), true).outcome),
        Some("v1")
    );
    assert_eq!(
        forward_cluster(&t.decide(&req, &mut fixed(u64::MAX), true).outcome),
        Some("v2")
    );
    let mut r = switchyard_core::rng::XorShift::new(0x9E37_79B9_7F4A_7C15);
    let mut rng = move || r.next_u64();
    let n = 20_000;
    let v2 = (0..n)
        .filter(|_| forward_cluster(&t.decide(&req, &mut rng, true).outcome) == Some("v2"))
        .count();
    let share = v2 as f64 / n as f64;
    assert!((0.09..0.11).contains(&share), "v2 share {share}");
}

#[test]
fn split_boundaries_are_exact() {
    let s = vec![
        ("a".to_string(), 1),
        ("b".to_string(), 0),
        ("c".to_string(), 1),
    ];
    assert_eq!(split_at(&s, 2, 0.0), "a");
    assert_eq!(split_at(&s, 2, 0.4999), "a");
    assert_eq!(split_at(&s, 2, 0.5), "c");
    assert_eq!(split_at(&s, 2, 0.99999), "c");
}

#[test]
fn mirror_sampling() {
    let t = table(json!({"routes": [
        {"name": "m", "match": {"path": {"prefix": "/"}},
         "action": {"cluster": "main", "mirror": {"cluster": "shadow", "percent": 5}}},
    ]}));
    let mirrored = |r: u64| match t.decide(&get("/"), &mut fixed(r), true).outcome {
        Outcome::Forward { mirror, .. } => mirror.map(|m| m.cluster),
        o => panic!("{o:?}"),
    };
    assert_eq!(mirrored(0).as_deref(), Some("shadow"));
    assert_eq!(mirrored(u64::MAX / 2), None);
}

#[test]
fn validation_errors_name_the_field() {
    let r = |action: Value| json!({"routes": [{"name": "r", "match": {"path": {"prefix": "/"}}, "action": action}]});
    let cases: Vec<(Value, &str)> = vec![
        (json!({"routes": [], "colour": 1}), "colour: unknown field"),
        (
            r(json!({"cluster": "a", "extra": 1})),
            "routes[0].action.extra: unknown field",
        ),
        (
            json!({"routes": [
                {"name": "x", "action": {"cluster": "a"}},
                {"name": "x", "action": {"cluster": "b"}}]}),
            "routes[1].name: duplicate route name \"x\"",
        ),
        (
            json!({"routes": [{"name": "x", "match": {"path": {"regex": "(["}}, "action": {"cluster": "a"}}]}),
            "routes[0].match.path: regex",
        ),
        (
            json!({"routes": [{"name": "u", "match": {"path": {"template": "/u/{id}"}},
                   "action": {"cluster": "a", "rewrite": {"path": "/v1/{uid}"}}}]}),
            "routes[0].action.rewrite.path: \"/v1/{uid}\" uses undefined capture {uid}",
        ),
        (
            r(json!({"weighted": [{"cluster": "a", "weight": 0}, {"cluster": "b", "weight": 0}]})),
            "routes[0].action.weighted: weights sum to zero",
        ),
        (
            r(json!({"cluster": "a", "respond": {"status": 200}})),
            "routes[0].action: needs exactly one",
        ),
        (
            r(json!({"redirect": {"status": 200}})),
            "routes[0].action.redirect.status",
        ),
        (
            r(json!({"cluster": "a", "sticky": [{"header": "x"}]})),
            "routes[0].action.sticky",
        ),
        (
            r(
                json!({"cluster": "a", "rewrite": {"regex": {"pattern": "/(.*)", "substitution": "/$2"}}}),
            ),
            "routes[0].action.rewrite.regex.substitution: substitution uses undefined group $2",
        ),
        (
            json!({"routes": [{"name": "x", "match": {"path": {"exact": "/a"}}, "action": {"cluster": "a", "rewrite": {"prefix": "/b"}}}]}),
            "routes[0].action.rewrite.prefix: replaces the matched prefix",
        ),
        (
            r(json!({"cluster": "a", "mirror": {"cluster": "m", "percent": 101}})),
            "routes[0].action.mirror.percent",
        ),
        (
            r(
                json!({"cluster": "a", "request_headers": {"set": {"x-switchyard-cluster": "evil"}}}),
            ),
            "routes[0].action.request_headers.set.x-switchyard-cluster",
        ),
        (
            json!({"routes": [{"name": "a.b", "action": {"cluster": "a"}}]}),
            "routes[0].name",
        ),
        (
            json!({"default": {"cluster": "a"}, "reload": {"cluster": "c", "path": "x"}}),
            "reload.path",
        ),
        (json!({"cluster_header": "X Bad"}), "cluster_header"),
    ];
    for (cfg, want) in cases {
        let e = err(cfg.clone());
        assert!(e.starts_with(want), "{cfg}\n  got:  {e}\n  want: {want}");
    }
}

#[test]
fn known_clusters_are_enforced_everywhere() {
    let base = |action: Value| {
        json!({"known_clusters": ["web", "api-v1", "api-v2"],
               "routes": [{"name": "r", "action": action}], "default": {"cluster": "web"}})
    };
    assert!(parse_router_config(base(json!({"cluster": "api-v1"})).to_string().as_bytes()).is_ok());
    let cases = [
        (
            json!({"cluster": "nope"}),
            "routes[0].action.cluster: unknown cluster \"nope\"",
        ),
        (
            json!({"weighted": [{"cluster": "api-v1", "weight": 1}, {"cluster": "api-v3", "weight": 1}]}),
            "routes[0].action.weighted[1].cluster: unknown cluster \"api-v3\"",
        ),
        (
            json!({"cluster": "web", "mirror": {"cluster": "shadow"}}),
            "routes[0].action.mirror.cluster: unknown cluster \"shadow\"",
        ),
    ];
    for (action, want) in cases {
        let e = err(base(action));
        assert!(e.starts_with(want), "{e}");
    }
    let e = err(json!({"known_clusters": ["web"], "default": {"cluster": "api"}}));
    assert!(e.starts_with("default.cluster: unknown cluster"), "{e}");
    // A reloaded table is checked against the plugin's known clusters too.
    let known = vec!["web".to_string()];
    let e = parse_table(
        br#"{"default": {"cluster": "nope"}}"#,
        Some(&known),
        "x-switchyard-cluster",
    )
    .unwrap_err();
    assert_eq!(e.path, "default.cluster");
}

#[test]
fn index_scales_without_changing_precedence() {
    // 5000 prefix and exact routes, then a regex; the regex is still found, in order.
    let mut routes: Vec<Value> = (0..5000)
        .map(|i| {
            if i % 2 == 0 {
                json!({"name": format!("p{i}"), "match": {"path": {"prefix": format!("/svc{i}/")}}, "action": {"cluster": format!("c{i}")}})
            } else {
                json!({"name": format!("e{i}"), "match": {"path": {"exact": format!("/svc{i}")}}, "action": {"cluster": format!("c{i}")}})
            }
        })
        .collect();
    routes.push(json!({"name": "rx", "match": {"path": {"regex": "/svc[0-9]+/special"}}, "action": {"cluster": "rx"}}));
    let t = table(json!({"routes": routes}));
    assert_eq!(
        forward_cluster(&decide(&t, &get("/svc4998/x")).1),
        Some("c4998")
    );
    assert_eq!(
        forward_cluster(&decide(&t, &get("/svc4999")).1),
        Some("c4999")
    );
    assert_eq!(
        forward_cluster(&decide(&t, &get("/svc4999/special")).1),
        Some("rx")
    );
    // "/svc4998/special" matches the earlier prefix route first.
    assert_eq!(
        forward_cluster(&decide(&t, &get("/svc4998/special")).1),
        Some("c4998")
    );
    assert_eq!(decide(&t, &get("/nope")).1, Outcome::NotFound);
}

#[test]
fn header_ops_are_compiled_lower_case() {
    let t = issue_table();
    let users = t.routes().iter().find(|r| r.name == "users").unwrap();
    assert_eq!(
        users.action.request_headers.set,
        vec![("x-route".to_string(), "users".to_string())]
    );
    assert_eq!(
        users.action.request_headers.remove,
        vec!["x-debug".to_string()]
    );
    assert_eq!(
        users.action.response_headers.set,
        vec![("x-served-by".to_string(), "users".to_string())]
    );
}

fn keys() -> Keys {
    Keys::new("root", "routes-config", "/routes.json")
}

#[test]
fn fetch_lease_lets_one_worker_fetch_per_interval() {
    let s = MemStore::new();
    let k = keys();
    k.ensure(&s).unwrap();
    let sec = 1_000_000_000;
    // Interval 5 s, timeout 1 s: the lease is held 6 s while a fetch is in flight.
    assert_eq!(
        reload::claim_fetch(&s, &k, 10 * sec, 6 * sec),
        Some(String::new())
    );
    // Other workers while the fetch is in flight: not due.
    assert_eq!(reload::claim_fetch(&s, &k, 10 * sec, 6 * sec), None);
    assert_eq!(reload::claim_fetch(&s, &k, 15 * sec, 6 * sec), None);
    // Finished at 11 s: the next fetch is due at 16 s and sends the ETag.
    reload::finish_fetch(&s, &k, 11 * sec, 5 * sec, Some("\"v1\""));
    assert_eq!(reload::claim_fetch(&s, &k, 15 * sec, 6 * sec), None);
    assert_eq!(
        reload::claim_fetch(&s, &k, 16 * sec, 6 * sec),
        Some("\"v1\"".to_string())
    );
    // A failed fetch keeps the ETag.
    reload::finish_fetch(&s, &k, 17 * sec, 5 * sec, None);
    assert_eq!(
        reload::claim_fetch(&s, &k, 22 * sec, 6 * sec),
        Some("\"v1\"".to_string())
    );
    // A fetcher that never finishes (its VM went away) loses the lease after the hold.
    assert_eq!(reload::claim_fetch(&s, &k, 27 * sec, 6 * sec), None);
    assert!(reload::claim_fetch(&s, &k, 28 * sec, 6 * sec).is_some());
    // Keys are created once; a second ensure keeps the state.
    k.ensure(&s).unwrap();
    assert_eq!(reload::claim_fetch(&s, &k, 29 * sec, 6 * sec), None);
}

#[test]
fn publish_bumps_versions_only_on_change() {
    let s = MemStore::new();
    let k = keys();
    k.ensure(&s).unwrap();
    assert_eq!(reload::read_version(&s, &k), Some(0));
    assert_eq!(reload::read_table(&s, &k), None);
    assert_eq!(reload::publish(&s, &k, b"{\"routes\":[]}").unwrap(), 1);
    assert_eq!(reload::publish(&s, &k, b"{\"routes\":[]}").unwrap(), 1);
    assert_eq!(reload::publish(&s, &k, b"{}").unwrap(), 2);
    assert_eq!(reload::read_version(&s, &k), Some(2));
    assert_eq!(reload::read_table(&s, &k), Some((2, b"{}".to_vec())));
    // A racing writer between read and write forces a retry, not a lost update.
    let mut once = true;
    s.interfere(move |key| key.ends_with(".table") && std::mem::take(&mut once));
    assert_eq!(reload::publish(&s, &k, b"{\"default\":null}").unwrap(), 3);
    assert_eq!(s.get(&k.version).unwrap().0.unwrap(), 3u64.to_le_bytes());
}

#[test]
fn reload_requires_known_clusters_and_never_copies_an_oversized_body() {
    let cfg = json!({"default": {"cluster": "a"}, "reload": {"cluster": "c", "path": "/r"}});
    let err = parse_router_config(cfg.to_string().as_bytes()).unwrap_err();
    assert_eq!(err.path, "known_clusters");
    let r = evaluate_fetch(
        200,
        None,
        1 << 30,
        || panic!("body copied"),
        1 << 20,
        None,
        "h",
    );
    assert!(matches!(r, FetchResult::Rejected { .. }));
    // An empty fetched table would 404 everything: kept out.
    for empty in [&b"{}"[..], br#"{"routes": []}"#] {
        match fetch(200, None, empty, 1 << 20, None, "h") {
            FetchResult::Rejected { error, .. } => assert_eq!(error.path, "routes"),
            o => panic!("{o:?}"),
        }
    }
}

#[test]
fn fetch_results() {
    let good = br#"{"routes": [{"name": "a", "action": {"cluster": "x"}}], "default": {"cluster": "web"}}"#;
    assert!(matches!(
        fetch(200, Some("\"e1\""), good, 1 << 20, None, "x-switchyard-cluster"),
        FetchResult::Accepted { ref etag, .. } if etag == "\"e1\""
    ));
    assert!(matches!(
        fetch(304, None, b"", 1 << 20, None, "x-switchyard-cluster"),
        FetchResult::NotModified
    ));
    match fetch(
        200,
        None,
        br#"{"routes": [{"name": "a", "action": {"cluster": "x", "weightd": []}}]}"#,
        1 << 20,
        None,
        "x-switchyard-cluster",
    ) {
        FetchResult::Rejected { error, .. } => assert_eq!(error.path, "routes[0].action.weightd"),
        o => panic!("{o:?}"),
    }
    // The reloaded document is a table: plugin-level fields are not accepted in it.
    match fetch(200, None, br#"{"reload": {}}"#, 1 << 20, None, "h") {
        FetchResult::Rejected { error, .. } => assert_eq!(error.path, "reload"),
        o => panic!("{o:?}"),
    }
    assert!(matches!(
        fetch(200, None, good, 10, None, "h"),
        FetchResult::Rejected { .. }
    ));
    assert!(matches!(
        fetch(503, None, b"", 10, None, "h"),
        FetchResult::Failed(_)
    ));
    assert!(matches!(
        fetch(0, None, b"", 10, None, "h"),
        FetchResult::Failed(_)
    ));
}

#[test]
fn regex_substitution_references_are_checked() {
    let cfg = |sub: &str| {
        json!({"routes": [{"name": "r", "match": {"path": {"prefix": "/"}},
            "action": {"cluster": "a", "rewrite": {"regex": {"pattern": "/(?P<x>[a-z]+)/([0-9]+)", "substitution": sub}}}}]})
    };
    for ok in ["/$2/${x}", "/$x", "/cost$$/$1", "/${2}", "/$0"] {
        assert!(
            parse_router_config(cfg(ok).to_string().as_bytes()).is_ok(),
            "{ok}"
        );
    }
    for bad in ["/$3", "/${y}", "/${x", "/$"] {
        let e = err(cfg(bad));
        assert!(
            e.starts_with("routes[0].action.rewrite.regex.substitution"),
            "{bad}: {e}"
        );
    }
    let t = table(cfg("/n/$2/${x}/$$"));
    match decide(&t, &get("/abc/12?q=1")).1 {
        Outcome::Forward { path, .. } => assert_eq!(path.as_deref(), Some("/n/12/abc/$?q=1")),
        o => panic!("{o:?}"),
    }
}

#[test]
fn redirect_port_replaces_ipv6_and_named_host_ports() {
    let t = table(
        json!({"routes": [{"name": "r", "match": {"path": {"prefix": "/"}},
        "action": {"redirect": {"scheme": "https", "port": 443, "status": 307}}}]}),
    );
    let cases = [
        ("[::1]:8080", "https://[::1]:443/x"),
        ("example.com", "https://example.com:443/x"),
        ("example.com:80", "https://example.com:443/x"),
    ];
    for (authority, want) in cases {
        match decide(&t, &get("/x").with_authority(authority)).1 {
            Outcome::Redirect { status, location } => {
                assert_eq!(status, 307);
                assert_eq!(location, want, "{authority}");
            }
            o => panic!("{o:?}"),
        }
    }
}

#[test]
fn respond_and_default_actions_validate_like_routes() {
    let e = err(json!({"default": {"respond": {"status": 99}}}));
    assert!(e.starts_with("default.respond.status"), "{e}");
    let e = err(json!({"default": {"redirect": {"path_prefix": "/x"}}}));
    assert!(e.starts_with("default.redirect.path_prefix"), "{e}");
    let e = err(json!({"default": {"respond": {"status": 200}, "mirror": {"cluster": "m"}}}));
    assert!(e.starts_with("default.mirror: only applies"), "{e}");
    let e =
        err(json!({"default": {"respond": {"status": 200, "headers": {"x-a": "line\nbreak"}}}}));
    assert!(e.starts_with("default.respond.headers.x-a"), "{e}");
    let t = table(json!({"default": {"respond": {"status": 418, "body": "teapot"}}}));
    assert_eq!(
        decide(&t, &get("/any")),
        (
            "default".to_string(),
            Outcome::Respond {
                status: 418,
                body: "teapot".into(),
                headers: vec![]
            }
        )
    );
}
