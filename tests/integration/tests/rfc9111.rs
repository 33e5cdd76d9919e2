//! RFC 9111 (and RFC 9213) behaviours of the cache filter as a user sees them, against a real
//! Envoy 1.40 and the upstream test server, one test per behaviour of docs/cache.md "What is cached
//! (RFC 9111)". Each test asserts the status, `x-cache` / `Cache-Status`, `Age`, the body and
//! whether the upstream was reached (`count_path`, `requests`).
//!
//! Every Envoy here runs with `--concurrency 2` (the harness default): the store is
//! process-wide shared data, so none of these behaviours depends on which worker serves a
//! request, and none counts per-worker work (such as background refreshes).
//!
//! Validators with obs-text compared as bytes (RFC 9110 §13.1, `If-None-Match` against a stored
//! `ETag` such as `"abc\xfc"`) are covered in real Envoy by
//! `hostile.rs::cache_survives_obs_text_headers_and_still_hits_and_validates`; not repeated here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime};
use switchyard_harness::{Envoy, Response};
use switchyard_integration::{age, cc, query_escape, upstream_header, x_cache};
use switchyard_upstream::{http_date, Upstream};

fn config() -> Value {
    json!({
        "max_bytes": 1 << 20,
        "max_entry_bytes": 65536,
        "key": {"query": "all", "headers": []},
        "default_ttl": "0s",
        "upstream_cluster": "web"
    })
}

fn start(up: &Upstream, cfg: Value) -> Envoy {
    Envoy::builder()
        .wasm_filter("cache", cfg)
        .cluster("web", [up.addr()])
        .start()
}

fn cache_status(r: &Response) -> &str {
    r.header("cache-status").unwrap_or("<none>")
}

/// The `ttl=` of a hit's `Cache-Status`.
fn hit_ttl(r: &Response) -> i64 {
    let cs = cache_status(r);
    cs.strip_prefix("switchyard; hit; ttl=")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("not a hit: {cs:?} {:?}", r.headers))
}

fn secs_from_now(delta: i64) -> SystemTime {
    let now = SystemTime::now();
    if delta >= 0 {
        now + Duration::from_secs(delta as u64)
    } else {
        now - Duration::from_secs(delta.unsigned_abs())
    }
}

/// Sends `path` twice; asserts the first is a MISS and returns the second.
fn twice(envoy: &Envoy, path: &str) -> (Response, Response) {
    let first = envoy.get(path).send();
    assert_eq!(first.status, 200, "{path}: {:?}", first.headers);
    assert_eq!(x_cache(&first), "MISS", "{path}: {:?}", first.headers);
    let second = envoy.get(path).send();
    (first, second)
}

/// Asserts `path` is never reused: two GETs, both MISS, both reach the upstream.
fn assert_not_stored(envoy: &Envoy, up: &Upstream, name: &str, path: &str) {
    let before = up.count_path(name);
    for _ in 0..2 {
        let r = envoy.get(path).send();
        assert_eq!(x_cache(&r), "MISS", "{path}: {:?}", r.headers);
        assert!(
            !cache_status(&r).ends_with("stored"),
            "{path}: {}",
            cache_status(&r)
        );
    }
    assert_eq!(
        up.count_path(name) - before,
        2,
        "{path} must go upstream each time"
    );
}

/// Asserts `path` is stored: a MISS, then a HIT with the same body; the upstream saw it once.
fn assert_stored(envoy: &Envoy, up: &Upstream, name: &str, path: &str) -> Response {
    let before = up.count_path(name);
    let (first, second) = twice(envoy, path);
    assert_eq!(
        cache_status(&first),
        "switchyard; fwd=miss; stored",
        "{path}"
    );
    assert_eq!(x_cache(&second), "HIT", "{path}: {:?}", second.headers);
    assert_eq!(second.status, 200);
    assert_eq!(second.body, first.body, "{path}");
    assert_eq!(up.count_path(name) - before, 1, "{path} must be reused");
    second
}

/// `Expires` that is not exactly an RFC 9110 §5.6.7 HTTP-date means "already expired"
/// (RFC 9111 §5.3): never reused. A valid future `Expires` is.
#[test]
fn invalid_expires_is_already_expired_and_valid_expires_is_reused() {
    let up = Upstream::start("u1").unwrap();
    let envoy = start(&up, config());
    // Far in the future, with an hour below 10 (so it can be written with one digit).
    let future = "Fri, 01 Jan 2100 08:49:37 GMT";
    assert_eq!(
        http_date(
            SystemTime::UNIX_EPOCH + Duration::from_secs(4102444800 + 8 * 3600 + 49 * 60 + 37)
        ),
        future
    );
    for (i, bad) in [
        "Fri 01 Jan 2100 08:49:37 GMT",   // missing comma
        "Fri,  01 Jan 2100 08:49:37 GMT", // extra space
        "Fri, 01 Jan 2100  08:49:37 GMT", // extra space before the time
        "Fri, 01-Jan-2100 08:49:37 GMT",  // dashes in an IMF-fixdate
        "Fri, 01 Jan 2100 8:49:37 GMT",   // one-digit hour
        "0",
    ]
    .iter()
    .enumerate()
    {
        let name = format!("/exp-bad/{i}");
        let path = format!("{name}?{}", upstream_header("Expires", bad));
        let r = envoy.get(&path).send();
        assert_eq!(
            r.header("expires"),
            Some(*bad),
            "the upstream sent it as is"
        );
        assert_eq!(x_cache(&r), "MISS");
        // The first request above counted once; assert_not_stored sends two more.
        assert_not_stored(&envoy, &up, &name, &path);
        assert_eq!(up.count_path(&name), 3, "{bad:?}");
    }
    // The same date, valid: reused, with Expires - Date of freshness.
    let path = format!("/exp-good?{}", upstream_header("Expires", future));
    let hit = assert_stored(&envoy, &up, "/exp-good", &path);
    assert!(hit_ttl(&hit) > 365 * 86400, "{}", cache_status(&hit));
    // A near future Expires: the lifetime is Expires - Date.
    let soon = http_date(secs_from_now(600));
    let path = format!("/exp-soon?{}", upstream_header("Expires", &soon));
    let hit = assert_stored(&envoy, &up, "/exp-soon", &path);
    let ttl = hit_ttl(&hit);
    assert!((590..=601).contains(&ttl), "ttl {ttl}");
}

/// `Age` (RFC 9111 §5.1): a value with a trailing suffix is ignored; of a list or repeated
/// lines the first member counts. The response is reused either way, and the served `Age`
/// reflects the value read.
#[test]
fn age_with_suffix_is_ignored_and_age_lists_use_the_first_member() {
    let up = Upstream::start("u1").unwrap();
    let envoy = start(&up, config());
    let started = Instant::now();
    let max = cc("max-age=600");
    let suffix = format!("/age-suffix?{max}&{}", upstream_header("Age", "10abc"));
    let list = format!("/age-list?{max}&{}", upstream_header("Age", "10, 20"));
    let lines = format!(
        "/age-lines?{max}&{}&{}",
        upstream_header("Age", "10"),
        upstream_header("Age", "20")
    );

    let hit = assert_stored(&envoy, &up, "/age-suffix", &suffix);
    let slack = started.elapsed().as_secs() + 2;
    let a = age(&hit);
    assert!(
        a <= slack,
        "an invalid Age is ignored, not read as 10: age {a}"
    );
    assert_eq!(hit_ttl(&hit), 600 - a as i64);

    for (name, path) in [("/age-list", &list), ("/age-lines", &lines)] {
        let started = Instant::now();
        let hit = assert_stored(&envoy, &up, name, path);
        let slack = started.elapsed().as_secs() + 2;
        let a = age(&hit);
        assert!(
            (10..=10 + slack).contains(&a),
            "{name}: the first member (10) counts: age {a}"
        );
        assert_eq!(hit_ttl(&hit), 600 - a as i64, "{name}");
        assert_eq!(hit.header_all("age").len(), 1, "{name}: one Age on a hit");
    }
}

/// Targeted cache-control fields (RFC 9213): `CDN-Cache-Control` replaces `Cache-Control`
/// for this cache; `targeted_cache_control` names others, and `[]` turns targeting off.
#[test]
fn cdn_cache_control_overrides_cache_control_and_is_configurable() {
    let up = Upstream::start("u1").unwrap();
    let cdn = |v: &str| upstream_header("CDN-Cache-Control", v);
    let edge = |v: &str| upstream_header("Edge-Cache-Control", v);

    // Default: CDN-Cache-Control.
    let envoy = start(&up, config());
    let path = format!("/cdn/store?{}&{}", cdn("max-age=600"), cc("no-store"));
    let hit = assert_stored(&envoy, &up, "/cdn/store", &path);
    assert!(
        (595..=600).contains(&hit_ttl(&hit)),
        "{}",
        cache_status(&hit)
    );
    for (name, target) in [("/cdn/private", "private"), ("/cdn/nostore", "no-store")] {
        let path = format!("{name}?{}&{}", cdn(target), cc("public, max-age=600"));
        assert_not_stored(&envoy, &up, name, &path);
    }
    // An empty targeted field is not there: Cache-Control applies.
    let path = format!(
        "/cdn/empty?{}&{}",
        upstream_header("CDN-Cache-Control", ""),
        cc("max-age=600")
    );
    assert_stored(&envoy, &up, "/cdn/empty", &path);
    drop(envoy);

    // Another targeted name: that one is obeyed, CDN-Cache-Control is not.
    let mut cfg = config();
    cfg["targeted_cache_control"] = json!(["edge-cache-control"]);
    let envoy = start(&up, cfg);
    let path = format!("/edge/store?{}&{}", edge("max-age=600"), cc("no-store"));
    assert_stored(&envoy, &up, "/edge/store", &path);
    let path = format!(
        "/edge/private?{}&{}",
        edge("private"),
        cc("public, max-age=600")
    );
    assert_not_stored(&envoy, &up, "/edge/private", &path);
    let path = format!(
        "/edge/cdn-ignored?{}&{}",
        cdn("max-age=600"),
        cc("no-store")
    );
    assert_not_stored(&envoy, &up, "/edge/cdn-ignored", &path);
    let path = format!(
        "/edge/cdn-private-ignored?{}&{}",
        cdn("private"),
        cc("public, max-age=600")
    );
    assert_stored(&envoy, &up, "/edge/cdn-private-ignored", &path);
    drop(envoy);

    // Targeting off: only Cache-Control counts.
    let mut cfg = config();
    cfg["targeted_cache_control"] = json!([]);
    let envoy = start(&up, cfg);
    let path = format!("/off/store?{}&{}", cdn("max-age=600"), cc("no-store"));
    assert_not_stored(&envoy, &up, "/off/store", &path);
    let path = format!(
        "/off/private?{}&{}",
        cdn("private"),
        cc("public, max-age=600")
    );
    assert_stored(&envoy, &up, "/off/private", &path);
}

/// Qualified `no-cache="…"` / `private="…"` (RFC 9111 §5.2.2.4, §5.2.2.7): the response is
/// stored and reused without the named fields; the other fields are replayed.
#[test]
fn qualified_no_cache_and_private_store_without_the_named_fields() {
    let up = Upstream::start("u1").unwrap();
    let envoy = start(&up, config());
    for (name, directive, named) in [
        ("/q/no-cache", "no-cache=\"x-token\"", vec!["x-token"]),
        ("/q/private", "private=\"x-user\"", vec!["x-user"]),
        (
            "/q/both",
            "no-cache=\"X-Token, X-Trace\", private=\"x-user\"",
            vec!["x-token", "x-trace", "x-user"],
        ),
    ] {
        let path = format!(
            "{name}?{}&{}&{}&{}&{}",
            cc(&format!("max-age=600, {directive}")),
            upstream_header("X-Token", "secret-token"),
            upstream_header("X-Trace", "trace-1"),
            upstream_header("X-User", "alice"),
            upstream_header("X-Other", "kept"),
        );
        let first = envoy.get(&path).send();
        assert_eq!(x_cache(&first), "MISS");
        // The client whose request went upstream gets every field.
        for f in ["x-token", "x-trace", "x-user", "x-other"] {
            assert!(first.header(f).is_some(), "{name}: {f} on the miss");
        }
        let hit = envoy.get(&path).send();
        assert_eq!(
            (hit.status, x_cache(&hit)),
            (200, "HIT"),
            "{name}: {:?}",
            hit.headers
        );
        assert_eq!(hit.body, first.body);
        for f in ["x-token", "x-trace", "x-user"] {
            if named.contains(&f) {
                assert_eq!(hit.header(f), None, "{name}: {f} must not be replayed");
            } else {
                assert_eq!(hit.header(f), first.header(f), "{name}: {f} is replayed");
            }
        }
        assert_eq!(hit.header("x-other"), Some("kept"), "{name}");
        assert_eq!(hit.header("cache-control"), first.header("cache-control"));
        assert_eq!(up.count_path(name), 1, "{name}");
    }
}

/// Unknown response fields are stored and replayed as received; `Set-Cookie` is never
/// replayed, and by default a response carrying it is not stored at all.
#[test]
fn unknown_fields_are_replayed_and_set_cookie_is_not_stored() {
    let up = Upstream::start("u1").unwrap();
    let envoy = start(&up, config());
    let path = format!(
        "/unknown?{}&{}&{}&{}&{}",
        cc("max-age=600"),
        upstream_header("Set-Cookie2", "a=1; Version=1"),
        upstream_header("X-Custom", "v;  q=\"a, b\""),
        upstream_header("X-Multi", "one"),
        upstream_header("X-Multi", "two"),
    );
    let hit = assert_stored(&envoy, &up, "/unknown", &path);
    assert_eq!(hit.header("set-cookie2"), Some("a=1; Version=1"));
    assert_eq!(hit.header("x-custom"), Some("v;  q=\"a, b\""));
    assert_eq!(hit.header_all("x-multi"), vec!["one", "two"]);
    assert_eq!(hit.header("x-upstream-id"), Some("u1"));

    let cookie = format!(
        "/cookie?{}&{}",
        cc("max-age=600"),
        upstream_header("Set-Cookie", "sid=alice")
    );
    for _ in 0..2 {
        let r = envoy.get(&cookie).send();
        assert_eq!(x_cache(&r), "MISS");
        assert_eq!(cache_status(&r), "switchyard; fwd=miss; detail=set-cookie");
        assert_eq!(r.header("set-cookie"), Some("sid=alice"));
    }
    assert_eq!(up.count_path("/cookie"), 2);
}

/// A `304` during revalidation freshens the stored headers (RFC 9111 §3.2, §4.3.4): new
/// field values and the new `Cache-Control` are used by later hits.
#[test]
fn a_304_from_revalidation_updates_the_stored_headers() {
    let up = Upstream::start("u1").unwrap();
    let envoy = start(&up, config());
    // The response headers come from x-echo-header (not part of the key), so the 304 can carry
    // other values than the stored 200 while the request URL stays the same.
    let path = "/rv?etag=v1";
    let get = |cc: &str, version: &str| {
        envoy
            .get(path)
            .header("x-echo-header", format!("Cache-Control:{cc}"))
            .header("x-echo-header", format!("X-Version:{version}"))
            .send()
    };
    // max-age=2: still fresh right after (Age <= 1 with 1 s Date resolution).
    let first = get("max-age=2", "1");
    assert_eq!((first.status, x_cache(&first)), (200, "MISS"));
    assert_eq!(first.header("x-version"), Some("1"));
    let hit = envoy.get(path).send();
    assert_eq!(x_cache(&hit), "HIT");
    assert_eq!(hit.header("x-version"), Some("1"));
    // Past max-age=2 (Age >= 3).
    std::thread::sleep(Duration::from_millis(3100));
    let revalidated = get("max-age=600", "2");
    assert_eq!(revalidated.status, 200, "{:?}", revalidated.headers);
    assert_eq!(x_cache(&revalidated), "EXPIRED");
    assert_eq!(
        cache_status(&revalidated),
        "switchyard; fwd=stale; fwd-status=304; stored"
    );
    assert_eq!(revalidated.body, first.body);
    assert_eq!(revalidated.header("x-version"), Some("2"));
    let reqs = up.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].header("if-none-match"), Some("\"v1\""));

    // Later hits carry the 304's fields and freshness (600 s: with the old 2 s this entry,
    // Age >= 3, would be stale).
    let hit = envoy.get(path).send();
    assert_eq!(
        (hit.status, x_cache(&hit)),
        (200, "HIT"),
        "{:?}",
        hit.headers
    );
    assert_eq!(hit.header("x-version"), Some("2"));
    assert_eq!(hit.header_all("x-version").len(), 1);
    assert_eq!(hit.header("cache-control"), Some("max-age=600"));
    assert_eq!(hit.header("etag"), Some("\"v1\""));
    assert_eq!(hit.body, first.body);
    let ttl = hit_ttl(&hit);
    assert!((590..=600).contains(&ttl), "ttl {ttl}");
    assert_eq!(up.count_path("/rv"), 2);
}

/// A successful unsafe request invalidates its `Location` and `Content-Location` targets on
/// the same authority (RFC 9111 §4.4), never those on another authority.
#[test]
fn unsafe_methods_invalidate_location_and_content_location_on_the_same_authority() {
    let up = Upstream::start("u1").unwrap();
    let envoy = start(&up, config());
    let a = format!("/a?{}", cc("max-age=600"));
    let b = format!("/b?{}", cc("max-age=600"));
    let cached = |p: &str| x_cache(&envoy.get(p).send()) == "HIT";
    envoy.get(&a).send();
    envoy.get(&b).send();
    assert!(cached(&a) && cached(&b));

    // Another authority: nothing is invalidated.
    let post = format!(
        "/c?{}&{}",
        upstream_header("Location", "http://other.example/a"),
        upstream_header("Content-Location", "http://other.example:8080/b")
    );
    let r = envoy.request("POST", &post).body("x").send();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("location"), Some("http://other.example/a"));
    assert!(cached(&a), "/a on another authority must stay");
    assert!(cached(&b), "/b on another authority must stay");

    // Same authority: Location (relative) and Content-Location (absolute) both go.
    let host = envoy.listen_addr().to_string();
    let post = format!(
        "/c?{}&{}",
        upstream_header("Location", "/a"),
        upstream_header("Content-Location", &format!("http://{host}/b"))
    );
    let r = envoy.request("POST", &post).body("x").send();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-location").unwrap(),
        format!("http://{host}/b")
    );
    for p in [&a, &b] {
        let r = envoy.get(p).send();
        assert_eq!(x_cache(&r), "MISS", "{p} must be invalidated");
    }
    assert_eq!(up.count_path("/a"), 2);
    assert_eq!(up.count_path("/b"), 2);
    assert_eq!(up.count_path("/c"), 2);
}

/// Ranges (RFC 9110 §14) from a complete stored 200: one range is a 206 from the cache,
/// a range past the end a 416, several ranges or a stale `If-Range` the whole 200. A range
/// request that misses is forwarded as it is and its 206 is not stored.
#[test]
fn ranges_are_served_from_a_complete_stored_response() {
    let up = Upstream::start("u1").unwrap();
    let envoy = start(&up, config());
    let path = format!("/rg?size=100&etag=v1&{}", cc("max-age=600"));
    let full = envoy.get(&path).send();
    assert_eq!(
        (full.status, x_cache(&full), full.body.len()),
        (200, "MISS", 100)
    );
    let range = |r: &str| envoy.get(&path).header("range", r);

    let r = range("bytes=0-9").send();
    assert_eq!(r.status, 206, "{:?}", r.headers);
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(r.header("content-range"), Some("bytes 0-9/100"));
    assert_eq!(r.body, full.body[..10]);
    assert_eq!(r.header("content-length"), Some("10"));

    let r = range("bytes=-5").send();
    assert_eq!((r.status, x_cache(&r)), (206, "HIT"));
    assert_eq!(r.header("content-range"), Some("bytes 95-99/100"));
    assert_eq!(r.body, full.body[95..]);

    let r = range("bytes=200-").send();
    assert_eq!((r.status, x_cache(&r)), (416, "HIT"), "{:?}", r.headers);
    assert_eq!(r.header("content-range"), Some("bytes */100"));
    assert!(r.body.is_empty());

    let r = range("bytes=0-1,5-6").send();
    assert_eq!((r.status, x_cache(&r)), (200, "HIT"));
    assert_eq!(r.header("content-range"), None);
    assert_eq!(r.body, full.body);

    // If-Range: a non-matching entity tag gets the whole response, the matching one the range.
    let r = range("bytes=0-9").header("if-range", "\"v2\"").send();
    assert_eq!((r.status, x_cache(&r)), (200, "HIT"));
    assert_eq!(r.body, full.body);
    let r = range("bytes=0-9").header("if-range", "\"v1\"").send();
    assert_eq!((r.status, x_cache(&r)), (206, "HIT"));
    assert_eq!(r.body, full.body[..10]);
    assert_eq!(
        up.count_path("/rg"),
        1,
        "every range was served from the cache"
    );

    // A range request that misses goes upstream with its Range; the upstream's 206 is not stored.
    let partial = format!(
        "/rg206?status=206&size=10&{}&{}",
        upstream_header("Content-Range", "bytes 0-9/100"),
        cc("max-age=600")
    );
    for i in 1..=2 {
        let r = envoy.get(&partial).header("range", "bytes=0-9").send();
        assert_eq!((r.status, x_cache(&r)), (206, "MISS"), "{:?}", r.headers);
        assert_eq!(r.header("content-range"), Some("bytes 0-9/100"));
        assert_eq!(r.body.len(), 10);
        assert!(
            !cache_status(&r).ends_with("stored"),
            "{}",
            cache_status(&r)
        );
        assert_eq!(up.count_path("/rg206"), i);
        let seen = up.requests();
        assert_eq!(seen.last().unwrap().header("range"), Some("bytes=0-9"));
    }
    // Nor is it served to a request without Range.
    let r = envoy.get(&partial).send();
    assert_eq!(x_cache(&r), "MISS");
    assert_eq!(up.count_path("/rg206"), 3);
}

/// `must-understand` (RFC 9111 §5.2.2.3): stored despite `no-store` for a status code whose
/// caching rules this cache implements (200), never for one it does not (299).
#[test]
fn must_understand_stores_understood_statuses_only() {
    let up = Upstream::start("u1").unwrap();
    let envoy = start(&up, config());
    let directives = cc("max-age=60, no-store, must-understand");
    let path = format!("/mu?{directives}");
    let hit = assert_stored(&envoy, &up, "/mu", &path);
    assert!((55..=60).contains(&hit_ttl(&hit)), "{}", cache_status(&hit));

    let path = format!("/mu299?status=299&{directives}");
    for i in 1..=2 {
        let r = envoy.get(&path).send();
        assert_eq!((r.status, x_cache(&r)), (299, "MISS"), "{:?}", r.headers);
        assert!(
            !cache_status(&r).ends_with("stored"),
            "{}",
            cache_status(&r)
        );
        assert_eq!(up.count_path("/mu299"), i);
    }
}

/// Heuristic freshness (RFC 9111 §4.2.2): without explicit freshness, a heuristically
/// cacheable status with `Last-Modified` gets 10% of `Date - Last-Modified`, capped by
/// `heuristic_max_ttl`; other statuses (302) are not stored.
#[test]
fn heuristic_freshness_is_a_tenth_of_the_age_of_last_modified_capped() {
    let up = Upstream::start("u1").unwrap();
    let mut cfg = config();
    cfg["heuristic_max_ttl"] = json!("2h");
    let envoy = start(&up, cfg);
    // Last-Modified 10 hours ago: 10% = 1 h, under the 2 h cap.
    let lm = http_date(secs_from_now(-10 * 3600));
    let path = format!("/heur/10h?last_modified={}", query_escape(&lm));
    let started = Instant::now();
    let hit = assert_stored(&envoy, &up, "/heur/10h", &path);
    let slack = started.elapsed().as_secs() as i64 + 2;
    let ttl = hit_ttl(&hit);
    assert!((3600 - slack..=3600).contains(&ttl), "ttl {ttl}");
    assert_eq!(hit.header("last-modified"), Some(lm.as_str()));

    // Last-Modified 10 days ago: 10% = 1 day, capped at 2 h.
    let lm = http_date(secs_from_now(-10 * 86400));
    let path = format!("/heur/10d?last_modified={}", query_escape(&lm));
    let started = Instant::now();
    let hit = assert_stored(&envoy, &up, "/heur/10d", &path);
    let slack = started.elapsed().as_secs() as i64 + 2;
    let ttl = hit_ttl(&hit);
    assert!((7200 - slack..=7200).contains(&ttl), "ttl {ttl}");

    // 302 is not heuristically cacheable: without explicit freshness it is not stored.
    let path = format!(
        "/heur/302?status=302&last_modified={}&{}",
        query_escape(&lm),
        upstream_header("Location", "/elsewhere")
    );
    for i in 1..=2 {
        let r = envoy.get(&path).send();
        assert_eq!((r.status, x_cache(&r)), (302, "MISS"), "{:?}", r.headers);
        assert!(
            !cache_status(&r).ends_with("stored"),
            "{}",
            cache_status(&r)
        );
        assert_eq!(up.count_path("/heur/302"), i);
    }
}
