//! Header handling for storing and serving responses (RFC 9111 §3.1, §3.2, §4.3.4, RFC 9211).

use crate::entry::Entry;
use crate::key::normalise_authority;
use crate::rfc::{format_http_date, Field};
use switchyard_core::decimal::push_decimal_str;
use switchyard_core::request::text;

/// Fields that describe one connection, never stored or replayed (RFC 9110 §7.6.1), plus
/// fields this filter sets itself on every response.
const NOT_STORED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "proxy-authenticate",
    "age",
    "x-cache",
    "cache-status",
    "x-envoy-upstream-service-time",
    // Per-request debug fields of the other Switchyard filters (hashring's usual
    // `debug_header`; the router's `x-switchyard-*`): they describe one request's decision
    // and must never be replayed to other users.
    "x-hash-explain",
];

/// Prefix of the router's per-request debug fields (`x-switchyard-route`, ...).
const NOT_STORED_PREFIX: &str = "x-switchyard-";

/// Fields a 304 must not overwrite in the stored response (RFC 9111 §3.2).
const NOT_UPDATED_BY_304: &[&str] = &[
    "content-length",
    "content-encoding",
    "content-range",
    "content-type",
];

/// The headers to store for a response: no pseudo-headers, no connection-specific fields, no
/// `Set-Cookie` (never replayed to other users), none that the response's qualified
/// `no-cache="…"` / `private="…"` name, and a `Date` if the origin sent none. Every other field,
/// known or not (e.g. the obsolete `Set-Cookie2`), is stored and replayed as received.
pub fn stored_headers(headers: &[Field], now_secs: u64) -> Vec<Field> {
    let omit = omitted_fields(headers);
    let connection_listed: Vec<String> = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| {
            text(v)
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut out: Vec<Field> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .filter(|(k, _)| {
            !k.starts_with(':')
                && !NOT_STORED.contains(&k.as_str())
                && !k.starts_with(NOT_STORED_PREFIX)
                && k != "set-cookie"
                && !connection_listed.contains(k)
                && !omit.contains(k)
        })
        .collect();
    if !out.iter().any(|(k, _)| k == "date") {
        out.push(("date".into(), format_http_date(now_secs).into_bytes()));
    }
    out
}

/// Fields a response's qualified `no-cache` / `private` directives exclude from storage.
fn omitted_fields(headers: &[Field]) -> Vec<String> {
    let cc: Vec<std::borrow::Cow<'_, str>> = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("cache-control"))
        .map(|(_, v)| text(v))
        .collect();
    crate::rfc::CacheControl::parse(cc.iter().map(|v| v.as_ref())).omit_fields
}

/// Freshens stored headers with a 304's (RFC 9111 §3.2): each field in the 304 replaces all
/// stored fields of that name.
pub fn merge_not_modified(stored: &mut Vec<Field>, fresh: &[Field]) {
    let fresh: Vec<Field> = stored_headers(fresh, 0)
        .into_iter()
        .filter(|(k, _)| !NOT_UPDATED_BY_304.contains(&k.as_str()))
        .collect();
    // The synthetic Date of an empty 304 must not replace the stored one.
    let fresh_has_date = fresh
        .iter()
        .any(|(k, v)| k == "date" && !v.starts_with(b"Thu, 01 Jan 1970"));
    stored.retain(|(k, _)| !fresh.iter().any(|(f, _)| f == k) || (k == "date" && !fresh_has_date));
    stored.extend(
        fresh
            .into_iter()
            .filter(|(k, _)| k != "date" || fresh_has_date),
    );
}

/// Request fields a background refresh never replays: the client's conditionals and
/// connection fields, its cache directives, and its credentials (a refresh's answer is stored
/// for everyone, so it must not be personalised).
const NOT_REPLAYED: &[&str] = &[
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
    "if-range",
    "range",
    "content-length",
    "connection",
    "transfer-encoding",
    "host",
    "cache-control",
    "pragma",
    "authorization",
    "proxy-authorization",
    "cookie",
];

/// The request a stale-while-revalidate refresh sends: the routed request as this filter saw it
/// (the router already rewrote `:path` and `:authority` and wrote the routing record), without
/// credentials or client conditionals, with the stored validators, and with the host that served
/// the entry in `host_header` (never a client-sent host choice).
pub fn refresh_headers(
    view: &switchyard_core::RequestView,
    stale: &Entry,
    host_header: &str,
) -> Vec<Field> {
    let mut headers: Vec<Field> = vec![
        (":method".into(), b"GET".to_vec()),
        (":path".into(), view.raw_path().as_bytes().to_vec()),
        (":authority".into(), view.authority().as_bytes().to_vec()),
        (":scheme".into(), b"http".to_vec()),
    ];
    headers.extend(
        view.headers()
            .iter()
            .filter(|(k, _)| !NOT_REPLAYED.contains(&k.as_str()) && k != host_header)
            .cloned(),
    );
    if let Some(etag) = stale.header("etag") {
        headers.push(("if-none-match".into(), etag.to_vec()));
    }
    if let Some(lm) = stale.header("last-modified") {
        headers.push(("if-modified-since".into(), lm.to_vec()));
    }
    if !stale.upstream_host.is_empty() {
        headers.push((
            host_header.to_string(),
            stale.upstream_host.as_bytes().to_vec(),
        ));
    }
    headers
}

/// How a response relates to the cache, for `Cache-Status` and `x-cache`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Served from the cache (`stale` when past its freshness).
    Hit { ttl: i64, stale: bool },
    /// Forwarded; `fwd` is the RFC 9211 reason, `stored` whether it is being stored,
    /// `detail` why not.
    Forward {
        fwd: &'static str,
        status: Option<u16>,
        stored: bool,
        detail: Option<&'static str>,
    },
}

impl Outcome {
    /// `x-cache`: HIT, STALE, MISS, EXPIRED or BYPASS.
    pub fn x_cache(&self) -> &'static str {
        match self {
            Outcome::Hit { stale: false, .. } => "HIT",
            Outcome::Hit { stale: true, .. } => "STALE",
            Outcome::Forward {
                fwd: "miss" | "vary-miss",
                ..
            } => "MISS",
            Outcome::Forward { fwd: "stale", .. } => "EXPIRED",
            Outcome::Forward { .. } => "BYPASS",
        }
    }

    /// The RFC 9211 `Cache-Status` member for this cache.
    /// Built by hand, as on every response (`format!` is a visible share of a request's work).
    pub fn cache_status(&self, name: &str) -> String {
        let mut s = String::with_capacity(name.len() + 48);
        s.push_str(name);
        match self {
            Outcome::Hit { ttl, .. } => {
                s.push_str("; hit; ttl=");
                if *ttl < 0 {
                    s.push('-');
                }
                push_decimal_str(&mut s, ttl.unsigned_abs());
            }
            Outcome::Forward {
                fwd,
                status,
                stored,
                detail,
            } => {
                s.push_str("; fwd=");
                s.push_str(fwd);
                if let Some(st) = status {
                    s.push_str("; fwd-status=");
                    push_decimal_str(&mut s, u64::from(*st));
                }
                if *stored {
                    s.push_str("; stored");
                }
                if let Some(d) = detail {
                    s.push_str("; detail=");
                    s.push_str(d);
                }
            }
        }
        s
    }
}

/// The headers of a response served from `entry`: stored fields (minus the length, which the
/// proxy computes from the body), `Age`, `Cache-Status`, `x-cache`.
pub fn served_headers(entry: &Entry, age: u64, outcome: &Outcome, name: &str) -> Vec<Field> {
    let mut h: Vec<Field> = entry
        .headers
        .iter()
        .filter(|(k, _)| k != "content-length")
        .cloned()
        .collect();
    push_status(&mut h, age, outcome, name);
    h
}

fn push_status(h: &mut Vec<Field>, age: u64, outcome: &Outcome, name: &str) {
    h.push(("age".into(), age.to_string().into_bytes()));
    h.push((
        "cache-status".into(),
        outcome.cache_status(name).into_bytes(),
    ));
    h.push(("x-cache".into(), outcome.x_cache().as_bytes().to_vec()));
}

/// The headers of a 304 answered from a stored response (RFC 9110 §15.4.5).
pub fn not_modified_headers(entry: &Entry, age: u64, outcome: &Outcome, name: &str) -> Vec<Field> {
    const KEEP: &[&str] = &[
        "cache-control",
        "content-location",
        "date",
        "etag",
        "expires",
        "vary",
        "last-modified",
    ];
    let mut h: Vec<Field> = entry
        .headers
        .iter()
        .filter(|(k, _)| KEEP.contains(&k.as_str()))
        .cloned()
        .collect();
    push_status(&mut h, age, outcome, name);
    h
}

/// Whether a `200` answer to a forwarded HEAD describes the stored GET response (RFC 9111
/// §4.3.5, selecting as §4.3.4 does): the same strong `ETag`, or without entity tags the same
/// `Last-Modified`, or no validators on either side; and the same `Content-Length` where both
/// have one. Then its fields freshen the stored response; otherwise the stored response is
/// invalidated.
pub fn head_describes(stored: &Entry, head: &[Field]) -> bool {
    let get = |name: &str| {
        head.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| crate::rfc::trim_ows(v))
    };
    let stored_get = |name: &str| stored.header(name).map(crate::rfc::trim_ows);
    let validators_match = match (stored_get("etag"), get("etag")) {
        (Some(a), Some(b)) => a == b && !a.starts_with(b"W/"),
        (None, None) => match (stored_get("last-modified"), get("last-modified")) {
            (Some(a), Some(b)) => a == b,
            (None, None) => true,
            _ => false,
        },
        _ => false,
    };
    let stored_len = stored.body.len().to_string();
    let length_matches = get("content-length").is_none_or(|l| l == stored_len.as_bytes());
    validators_match && length_matches
}

/// What a request with `Range` gets from a complete stored response (RFC 9110 §14).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeReply {
    /// The whole stored response (no range, a stale `If-Range`, several ranges or a range this
    /// cache does not parse: RFC 9110 §14.2 lets a server ignore `Range`).
    Full,
    /// `206` with bytes `start..=end`.
    Partial { start: u64, end: u64 },
    /// `416`: the range starts past the end.
    Unsatisfiable,
}

/// Decides how to answer `range` (with its `If-Range`) from a stored `entry`.
pub fn range_reply(range: Option<&[u8]>, if_range: Option<&[u8]>, entry: &Entry) -> RangeReply {
    let Some(range) = range else {
        return RangeReply::Full;
    };
    if entry.status != 200 {
        return RangeReply::Full;
    }
    if let Some(cond) = if_range {
        let cond = crate::rfc::trim_ows(cond);
        // An entity tag must match strongly; a date must equal Last-Modified.
        let current = if cond.starts_with(b"\"") {
            entry.header("etag").filter(|e| !e.starts_with(b"W/"))
        } else {
            entry.header("last-modified")
        };
        if current.map(crate::rfc::trim_ows) != Some(cond) {
            return RangeReply::Full;
        }
    }
    let len = entry.body.len() as u64;
    let Some(spec) = std::str::from_utf8(range)
        .ok()
        .map(str::trim)
        .and_then(|r| {
            r.get(..6)
                .filter(|u| u.eq_ignore_ascii_case("bytes="))
                .map(|_| &r[6..])
        })
    else {
        return RangeReply::Full;
    };
    if spec.contains(',') {
        return RangeReply::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeReply::Full;
    };
    let num = |v: &str| -> Option<u64> {
        (!v.is_empty() && v.bytes().all(|c| c.is_ascii_digit()))
            .then(|| v.parse().ok())
            .flatten()
    };
    match (a.trim(), b.trim()) {
        ("", n) => match num(n) {
            None => RangeReply::Full,
            Some(0) => RangeReply::Unsatisfiable,
            Some(_) if len == 0 => RangeReply::Unsatisfiable,
            Some(n) => RangeReply::Partial {
                start: len.saturating_sub(n),
                end: len - 1,
            },
        },
        (a, b) => match (
            num(a),
            if b.is_empty() {
                Some(None)
            } else {
                num(b).map(Some)
            },
        ) {
            (Some(start), Some(end)) if end.is_none_or(|e| e >= start) => {
                if start >= len {
                    RangeReply::Unsatisfiable
                } else {
                    RangeReply::Partial {
                        start,
                        end: end.map_or(len - 1, |e| e.min(len - 1)),
                    }
                }
            }
            _ => RangeReply::Full,
        },
    }
}

/// Purge tags from the configured tag headers (comma or space separated).
pub fn tags(headers: &[Field], tag_headers: &[String]) -> Vec<String> {
    let mut out: Vec<String> = headers
        .iter()
        .filter(|(k, _)| tag_headers.iter().any(|t| t.eq_ignore_ascii_case(k)))
        .flat_map(|(_, v)| {
            text(v)
                .split([',', ' '])
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The path of a `Location` / `Content-Location` value if it names the same authority
/// (RFC 9111 §4.4: only same-origin URIs are invalidated).
pub fn same_authority_path(value: &str, authority: &str) -> Option<String> {
    let v = value.trim();
    let strip_query = |p: &str| p.split(['?', '#']).next().unwrap_or("").to_string();
    if v.starts_with('/') && !v.starts_with("//") {
        return Some(strip_query(v));
    }
    let rest = v
        .strip_prefix("http://")
        .or_else(|| v.strip_prefix("https://"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    // Same origin: default ports are the same authority here (RFC 3986 §6.2.3).
    let origin = |a: &str| {
        let a = normalise_authority(a);
        match a.strip_suffix(":80").or_else(|| a.strip_suffix(":443")) {
            Some(s) => s.to_string(),
            None => a,
        }
    };
    (origin(host) == origin(authority)).then(|| strip_query(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(pairs: &[(&str, &str)]) -> Vec<Field> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn stores_no_connection_fields_cookies_or_status() {
        let h = hv(&[
            (":status", "200"),
            ("Connection", "close, x-hop"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("set-cookie", "sid=1"),
            ("age", "4"),
            ("etag", "\"a\""),
        ]);
        let s = stored_headers(&h, 784111777);
        assert_eq!(
            s,
            hv(&[("etag", "\"a\""), ("date", "Sun, 06 Nov 1994 08:49:37 GMT")])
        );
    }

    #[test]
    fn unknown_fields_are_kept_and_qualified_directives_drop_their_fields() {
        let h = hv(&[
            (
                "cache-control",
                "max-age=60, no-cache=\"x-token\", private=\"X-User\"",
            ),
            ("set-cookie2", "legacy=1"),
            ("x-token", "secret"),
            ("x-user", "alice"),
            ("x-unknown", "caf\u{e9}"),
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        let names: Vec<String> = stored_headers(&h, 0).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            names,
            vec!["cache-control", "set-cookie2", "x-unknown", "date"]
        );
    }

    #[test]
    fn a_304_freshens_headers_but_not_the_representation() {
        let mut stored = hv(&[
            ("content-type", "text/plain"),
            ("content-length", "5"),
            ("cache-control", "max-age=1"),
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("x-old", "1"),
        ]);
        merge_not_modified(
            &mut stored,
            &hv(&[
                (":status", "304"),
                ("cache-control", "max-age=60"),
                ("content-length", "0"),
                ("date", "Mon, 07 Nov 1994 08:49:37 GMT"),
            ]),
        );
        let get = |n: &str| {
            stored
                .iter()
                .filter(|(k, _)| k == n)
                .map(|(_, v)| std::str::from_utf8(v).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(get("cache-control"), vec!["max-age=60"]);
        assert_eq!(get("content-length"), vec!["5"]);
        assert_eq!(get("date"), vec!["Mon, 07 Nov 1994 08:49:37 GMT"]);
        assert_eq!(get("x-old"), vec!["1"]);
    }

    #[test]
    fn cache_status_and_x_cache() {
        let hit = Outcome::Hit {
            ttl: 42,
            stale: false,
        };
        assert_eq!(hit.cache_status("switchyard"), "switchyard; hit; ttl=42");
        assert_eq!(hit.x_cache(), "HIT");
        let miss = Outcome::Forward {
            fwd: "miss",
            status: None,
            stored: true,
            detail: None,
        };
        assert_eq!(
            miss.cache_status("switchyard"),
            "switchyard; fwd=miss; stored"
        );
        assert_eq!(miss.x_cache(), "MISS");
        let reval = Outcome::Forward {
            fwd: "stale",
            status: Some(304),
            stored: true,
            detail: None,
        };
        assert_eq!(
            reval.cache_status("c"),
            "c; fwd=stale; fwd-status=304; stored"
        );
        assert_eq!(reval.x_cache(), "EXPIRED");
        let bypass = Outcome::Forward {
            fwd: "bypass",
            status: None,
            stored: false,
            detail: Some("private"),
        };
        assert_eq!(bypass.cache_status("c"), "c; fwd=bypass; detail=private");
        assert_eq!(bypass.x_cache(), "BYPASS");
        assert_eq!(
            Outcome::Hit {
                ttl: -3,
                stale: true
            }
            .x_cache(),
            "STALE"
        );
    }

    #[test]
    fn served_and_304_headers() {
        let e = Entry {
            headers: hv(&[
                ("content-length", "5"),
                ("etag", "\"a\""),
                ("content-type", "text/plain"),
            ]),
            ..Entry::default()
        };
        let o = Outcome::Hit {
            ttl: 1,
            stale: false,
        };
        let s = served_headers(&e, 7, &o, "n");
        assert!(!s.iter().any(|(k, _)| k == "content-length"));
        assert!(s.contains(&("age".into(), "7".into())));
        let nm = not_modified_headers(&e, 7, &o, "n");
        assert!(nm.contains(&("etag".into(), "\"a\"".into())));
        assert!(!nm.iter().any(|(k, _)| k == "content-type"));
    }

    #[test]
    fn other_filters_debug_headers_are_not_stored() {
        let h = hv(&[
            ("content-type", "text/plain"),
            ("x-hash-explain", "key=user; host=10.0.0.1:80"),
            ("x-switchyard-route", "v1 route=api"),
            ("x-switchyard-table-version", "3"),
        ]);
        let names: Vec<String> = stored_headers(&h, 0).into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, vec!["content-type", "date"]);
    }

    #[test]
    fn a_refresh_replays_the_routed_request_without_credentials() {
        use switchyard_core::RequestView;
        let view = RequestView::new("GET", "/v2/items?a=1")
            .with_authority("api.internal")
            .with_header("x-switchyard-cluster", "api-v2")
            .with_header("authorization", "Bearer alice")
            .with_header("cookie", "session=alice")
            .with_header("x-upstream-host", "10.9.9.9:80")
            .with_header("if-none-match", "\"client\"")
            .with_header("accept", "application/json");
        let stale = Entry {
            headers: hv(&[("etag", "\"v1\"")]),
            upstream_host: "10.0.0.2:8080".into(),
            ..Default::default()
        };
        let h = refresh_headers(&view, &stale, "x-upstream-host");
        let get = |n: &str| -> Vec<&[u8]> {
            h.iter()
                .filter(|(k, _)| k == n)
                .map(|(_, v)| v.as_slice())
                .collect()
        };
        assert_eq!(get(":path"), vec![&b"/v2/items?a=1"[..]]);
        assert_eq!(get(":authority"), vec![&b"api.internal"[..]]);
        assert_eq!(get("x-switchyard-cluster"), vec![&b"api-v2"[..]]);
        assert_eq!(get("accept"), vec![&b"application/json"[..]]);
        assert!(get("authorization").is_empty() && get("cookie").is_empty());
        // The stored validator, not the client's; the serving host, not a client's choice.
        assert_eq!(get("if-none-match"), vec![&b"\"v1\""[..]]);
        assert_eq!(get("x-upstream-host"), vec![&b"10.0.0.2:8080"[..]]);
    }

    #[test]
    fn a_head_response_freshens_only_the_response_it_describes() {
        let stored = Entry {
            status: 200,
            headers: hv(&[("etag", "\"v1\"")]),
            body: b"hello".to_vec(),
            ..Default::default()
        };
        assert!(head_describes(
            &stored,
            &hv(&[("etag", "\"v1\""), ("content-length", "5")])
        ));
        assert!(!head_describes(&stored, &hv(&[("etag", "\"v2\"")])));
        assert!(!head_describes(
            &stored,
            &hv(&[("etag", "\"v1\""), ("content-length", "6")])
        ));
        assert!(!head_describes(&stored, &hv(&[])));
        let plain = Entry {
            headers: vec![],
            ..stored.clone()
        };
        assert!(head_describes(&plain, &hv(&[("content-length", "5")])));
        let dated = Entry {
            headers: hv(&[("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")]),
            ..stored.clone()
        };
        assert!(head_describes(
            &dated,
            &hv(&[("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")])
        ));
        assert!(!head_describes(
            &dated,
            &hv(&[("last-modified", "Mon, 07 Nov 1994 08:49:37 GMT")])
        ));
    }

    #[test]
    fn ranges_are_served_from_complete_entries() {
        let e = Entry {
            status: 200,
            headers: hv(&[
                ("etag", "\"v1\""),
                ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ]),
            body: b"0123456789".to_vec(),
            ..Default::default()
        };
        let r = |range: &str, if_range: Option<&str>| {
            range_reply(Some(range.as_bytes()), if_range.map(str::as_bytes), &e)
        };
        use RangeReply::*;
        assert_eq!(range_reply(None, None, &e), Full);
        assert_eq!(r("bytes=0-3", None), Partial { start: 0, end: 3 });
        assert_eq!(r("bytes=5-", None), Partial { start: 5, end: 9 });
        assert_eq!(r("bytes=-3", None), Partial { start: 7, end: 9 });
        assert_eq!(r("bytes=8-100", None), Partial { start: 8, end: 9 });
        assert_eq!(r("BYTES=-100", None), Partial { start: 0, end: 9 });
        assert_eq!(r("bytes=10-", None), Unsatisfiable);
        assert_eq!(r("bytes=-0", None), Unsatisfiable);
        // Ignored (whole response): several ranges, other units, nonsense, reversed ranges.
        for ignored in [
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=x-y",
            "bytes=5-2",
            "bytes=",
        ] {
            assert_eq!(r(ignored, None), Full, "{ignored}");
        }
        // If-Range: a strong ETag or the exact Last-Modified keeps the range, else the whole.
        assert_eq!(r("bytes=0-1", Some("\"v1\"")), Partial { start: 0, end: 1 });
        assert_eq!(r("bytes=0-1", Some("\"v0\"")), Full);
        assert_eq!(
            r("bytes=0-1", Some("Sun, 06 Nov 1994 08:49:37 GMT")),
            Partial { start: 0, end: 1 }
        );
        assert_eq!(r("bytes=0-1", Some("Mon, 07 Nov 1994 08:49:37 GMT")), Full);
        let weak = Entry {
            headers: hv(&[("etag", "W/\"v1\"")]),
            ..e.clone()
        };
        assert_eq!(
            range_reply(Some(b"bytes=0-1"), Some(b"W/\"v1\""), &weak),
            Full
        );
        let not_ok = Entry {
            status: 404,
            ..e.clone()
        };
        assert_eq!(range_reply(Some(b"bytes=0-1"), None, &not_ok), Full);
    }

    #[test]
    fn tags_and_locations() {
        let h = hv(&[("Cache-Tag", "a, b"), ("surrogate-key", "c a"), ("x", "z")]);
        assert_eq!(
            tags(&h, &["cache-tag".into(), "surrogate-key".into()]),
            vec!["a", "b", "c"]
        );
        assert_eq!(same_authority_path("/x?y=1", "h"), Some("/x".into()));
        assert_eq!(same_authority_path("http://H:80/p", "h"), Some("/p".into()));
        assert_eq!(same_authority_path("https://other/p", "h"), None);
        assert_eq!(same_authority_path("//other/p", "h"), None);
    }
}
