use super::*;
use serde_json::json;

fn m(v: serde_json::Value) -> Matcher {
    Matcher::from_json(&v, "match").unwrap()
}
fn err(v: serde_json::Value) -> String {
    Matcher::from_json(&v, "rules[1].match")
        .unwrap_err()
        .to_string()
}
fn get(path: &str) -> RequestView {
    RequestView::new("GET", path)
        .with_authority("api.example.com")
        .with_source("10.1.2.3:4000")
}

#[test]
fn empty_matches_all() {
    assert!(m(json!({})).matches(&get("/anything")));
    assert!(Matcher::always().matches(&get("/")));
}

#[test]
fn path_kinds() {
    assert!(m(json!({"path": {"exact": "/a"}})).matches(&get("/a?x=1")));
    assert!(!m(json!({"path": {"exact": "/a"}})).matches(&get("/a/")));
    assert!(m(json!({"path": {"prefix": "/api"}})).matches(&get("/api/v1")));
    assert!(m(json!({"path": {"prefix": "/api"}})).matches(&get("/apis")));
    assert!(!m(json!({"path": {"prefix": "/api/"}})).matches(&get("/api")));
    assert!(m(json!({"path": {"prefix": "/API", "ignore_case": true}})).matches(&get("/api/x")));
    assert!(m(json!({"path": {"regex": "/v[0-9]+/.*"}})).matches(&get("/v12/x")));
    // Regexes are anchored on the whole path.
    assert!(!m(json!({"path": {"regex": "/v[0-9]+"}})).matches(&get("/x/v1")));
}

#[test]
fn templates_capture() {
    let t = m(json!({"path": {"template": "/users/{id}"}}));
    assert_eq!(
        t.match_captures(&get("/users/42")).unwrap().get("id"),
        Some("42")
    );
    assert!(t.match_captures(&get("/users/")).is_none());
    assert!(t.match_captures(&get("/users/42/x")).is_none());
    assert!(t.match_captures(&get("/users")).is_none());
    let r = m(json!({"path": {"template": "/files/{rest=**}"}}));
    assert_eq!(
        r.match_captures(&get("/files/a/b/c")).unwrap().get("rest"),
        Some("a/b/c")
    );
    // Captures never carry dot segments or encoded slashes into a rewrite.
    for bad in [
        "/users/..",
        "/users/.",
        "/users/%2e%2E",
        "/users/a%2Fb",
        "/users/a%5cb",
    ] {
        assert!(t.match_captures(&get(bad)).is_none(), "{bad}");
    }
    assert!(r.match_captures(&get("/files/a/../../etc")).is_none());
    assert!(r.match_captures(&get("/files/a/%2e%2e/b")).is_none());
    assert!(r.match_captures(&get("/files/a%2f..")).is_none());
    assert!(t.match_captures(&get("/users/a.b")).is_some());
    let w = m(json!({"path": {"template": "/a/*/c"}}));
    assert!(w.matches(&get("/a/b/c")));
    assert!(!w.matches(&get("/a/b/d")));
    let caps = Captures(vec![("id".into(), "7".into())]);
    assert_eq!(Template::expand("/v1/users/{id}", &caps), "/v1/users/7");
    assert_eq!(Template::references("/x/{a}/{b}"), vec!["a", "b"]);
}

#[test]
fn regex_named_captures() {
    let r = m(json!({"path": {"regex": "/item/(?P<sku>[a-z]+)"}}));
    assert_eq!(
        r.match_captures(&get("/item/abc")).unwrap().get("sku"),
        Some("abc")
    );
}

#[test]
fn methods_headers_query_cookies() {
    let mm = m(json!({"methods": ["get", "HEAD"]}));
    assert!(mm.matches(&get("/")));
    assert!(!mm.matches(&RequestView::new("POST", "/")));
    let h = m(
        json!({"headers": [{"name": "x-canary", "exact": "always"}, {"name": "x-debug", "absent": true}]}),
    );
    assert!(h.matches(&get("/").with_header("X-Canary", "always")));
    assert!(!h.matches(
        &get("/")
            .with_header("x-canary", "always")
            .with_header("x-debug", "1")
    ));
    assert!(!h.matches(&get("/")));
    let inv = m(json!({"headers": [{"name": "x-a", "prefix": "foo", "invert": true}]}));
    assert!(inv.matches(&get("/")));
    assert!(!inv.matches(&get("/").with_header("x-a", "foobar")));
    let rep = m(json!({"headers": [{"name": "x-a", "exact": "b"}]}));
    assert!(rep.matches(&get("/").with_header("x-a", "a").with_header("x-a", "b")));
    let joined = m(json!({"headers": [{"name": "x-a", "exact": "a,b"}]}));
    assert!(joined.matches(&get("/").with_header("x-a", "a").with_header("x-a", "b")));
    let q =
        m(json!({"query": [{"name": "v", "regex": "[0-9]+"}, {"name": "empty", "present": true}]}));
    assert!(q.matches(&get("/?v=12&empty=")));
    assert!(!q.matches(&get("/?v=x&empty")));
    let c = m(json!({"cookies": [{"name": "beta", "exact": "1"}]}));
    assert!(c.matches(&get("/").with_header("cookie", "a=b; beta=1")));
    assert!(!c.matches(&get("/").with_header("cookie", "beta=2")));
    let ic = m(json!({"headers": [{"name": "x-a", "exact": "YES", "ignore_case": true}]}));
    assert!(ic.matches(&get("/").with_header("x-a", "yes")));
}

#[test]
fn authority_and_cidr() {
    let a = m(json!({"authority": ["*.example.com", "exact.org"]}));
    assert!(a.matches(&get("/")));
    assert!(a.matches(&get("/").with_authority("EXACT.org:8080")));
    assert!(!a.matches(&get("/").with_authority("example.com")));
    assert!(!a.matches(&get("/").with_authority("badexample.com")));
    let c = m(json!({"client_cidr": ["10.0.0.0/8", "::1/128"]}));
    assert!(c.matches(&get("/")));
    assert!(!c.matches(&get("/").with_source("11.0.0.1:1")));
    assert!(c.matches(&get("/").with_source("[::1]:1")));
    let x = m(json!({"client_cidr": {"ranges": ["192.168.0.0/16"], "trusted_hops": 1}}));
    assert!(x.matches(&get("/").with_header("x-forwarded-for", "1.1.1.1, 192.168.4.4")));
    assert!(!x.matches(&get("/").with_header("x-forwarded-for", "192.168.4.4, 1.1.1.1")));
    assert!(Cidr::parse("10.0.0.0/33").is_err());
    assert!(Cidr::parse("10.0.0.1")
        .unwrap()
        .contains("10.0.0.1".parse().unwrap()));
    assert!(Cidr::parse("10.0.0.0/20")
        .unwrap()
        .contains("10.0.15.255".parse().unwrap()));
    assert!(!Cidr::parse("10.0.0.0/20")
        .unwrap()
        .contains("10.0.16.0".parse().unwrap()));
}

#[test]
fn not_and_any() {
    let n = m(json!({"not": {"path": {"prefix": "/admin"}}}));
    assert!(n.matches(&get("/x")));
    assert!(!n.matches(&get("/admin/x")));
    let a = m(json!({"any": [{"path": {"exact": "/a"}}, {"path": {"exact": "/b"}}]}));
    assert!(a.matches(&get("/b")));
    assert!(!a.matches(&get("/c")));
}

#[test]
fn errors_name_the_field() {
    let e = err(json!({"headers": [{"name": "x", "exact": "a"}, {"name": "y", "regex": "("}]}));
    assert!(
        e.starts_with("rules[1].match.headers[1]: invalid regex"),
        "{e}"
    );
    let e = err(json!({"path": {"exact": "/a", "prefix": "/b"}}));
    assert!(
        e.starts_with("rules[1].match.path: path needs exactly one"),
        "{e}"
    );
    let e = err(json!({"pth": {}}));
    assert!(e.starts_with("rules[1].match.pth: unknown field"), "{e}");
    let e = err(json!({"client_cidr": ["10.0.0.0/99"]}));
    assert!(e.contains("client_cidr"), "{e}");
    let e = err(json!({"path": {"template": "/a/{x}/{x}"}}));
    assert!(e.contains("appears twice"), "{e}");
    let e = err(json!({"headers": [{"name": "x"}]}));
    assert!(e.contains("exactly one of"), "{e}");
}
