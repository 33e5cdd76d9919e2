//! HTTP caching rules of RFC 9111 (and the RFC 5861 extensions) as pure functions: Cache-Control
//! parsing, storability, freshness lifetime, age and the serve-or-forward decision.
//!
//! Times are Unix seconds (HTTP dates have one-second resolution) except where noted.

use std::borrow::Cow;
use switchyard_core::request::text;

/// A header field: lower-case name, value as bytes.
pub type Field = (String, Vec<u8>);

/// Trims optional whitespace (SP / HTAB) from both ends.
pub fn trim_ows(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !matches!(c, b' ' | b'\t'))
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !matches!(c, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    b.get(start..end).unwrap_or(&[])
}

/// Parsed `Cache-Control` directives (request or response). Unknown directives are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    /// Unqualified `no-cache`: store, but always revalidate.
    pub no_cache: bool,
    /// Unqualified `private`: a shared cache never stores the response.
    pub private: bool,
    /// Fields named by the qualified forms `no-cache="a, b"` and `private="a, b"` (lower-case):
    /// the response is stored without them (RFC 9111 §5.2.2.4, §5.2.2.7).
    pub omit_fields: Vec<String>,
    /// `must-understand` (§5.2.2.3): stored only by a cache that implements the status code's
    /// rules, which then ignores `no-store`.
    pub must_understand: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
    /// Request `max-stale`: `Some(None)` = any staleness, `Some(Some(n))` = at most n seconds.
    pub max_stale: Option<Option<u64>>,
    pub min_fresh: Option<u64>,
    pub only_if_cached: bool,
}

/// Parses delta-seconds; an invalid value counts as 0 (RFC 9111 §1.2.2: treat as stale), a
/// value too large saturates (§1.2.2: 2^31 is "infinity").
fn delta_seconds(v: Option<&str>) -> u64 {
    match v {
        Some(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse::<u64>().unwrap_or(1 << 31).min(1 << 31)
        }
        _ => 0,
    }
}

/// Splits a header value on commas outside quoted strings.
fn split_directives(value: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts
}

impl CacheControl {
    /// Parses every `Cache-Control` field value of a message.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut cc = CacheControl::default();
        // Conflicting duplicates take the most conservative (smallest) value (§4.2.1).
        let min = |cur: Option<u64>, v: u64| Some(cur.map_or(v, |c| c.min(v)));
        for value in values {
            for part in split_directives(value) {
                let part = part.trim();
                if part.is_empty() {
                    continue;
                }
                let (name, arg) = match part.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (part, None),
                };
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => cc.no_store = true,
                    "no-cache" | "private" => match arg {
                        Some(fields) if !fields.is_empty() => cc.omit_fields.extend(
                            fields
                                .split(',')
                                .map(|f| f.trim().to_ascii_lowercase())
                                .filter(|f| !f.is_empty()),
                        ),
                        _ if name.eq_ignore_ascii_case("no-cache") => cc.no_cache = true,
                        _ => cc.private = true,
                    },
                    "must-understand" => cc.must_understand = true,
                    "public" => cc.public = true,
                    "must-revalidate" => cc.must_revalidate = true,
                    "proxy-revalidate" => cc.proxy_revalidate = true,
                    "max-age" => cc.max_age = min(cc.max_age, delta_seconds(arg)),
                    "s-maxage" => cc.s_maxage = min(cc.s_maxage, delta_seconds(arg)),
                    "stale-while-revalidate" => {
                        cc.stale_while_revalidate =
                            min(cc.stale_while_revalidate, delta_seconds(arg))
                    }
                    "stale-if-error" => {
                        cc.stale_if_error = min(cc.stale_if_error, delta_seconds(arg))
                    }
                    "max-stale" => {
                        cc.max_stale = Some(arg.map(|a| delta_seconds(Some(a))));
                    }
                    "min-fresh" => cc.min_fresh = min(cc.min_fresh, delta_seconds(arg)),
                    "only-if-cached" => cc.only_if_cached = true,
                    _ => {}
                }
            }
        }
        cc
    }
}

/// Status codes whose caching rules this cache implements (for `must-understand`): the
/// heuristically cacheable ones and the redirects it stores with explicit freshness.
pub fn understood(status: u16) -> bool {
    heuristically_cacheable(status) || matches!(status, 302 | 307)
}

/// Status codes a cache may store with heuristic freshness (RFC 9110 §15.1), minus 206: this
/// cache does not store partial content.
pub fn heuristically_cacheable(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// The response facts the caching rules look at.
#[derive(Debug, Clone, Default)]
pub struct ResponseFacts {
    pub status: u16,
    pub cc: CacheControl,
    /// `Date`, Unix seconds, if present and valid.
    pub date: Option<u64>,
    /// `Expires`: `Some(Some(t))` valid, `Some(None)` present but invalid (already expired).
    pub expires: Option<Option<u64>>,
    pub last_modified: Option<u64>,
    /// `Age` in seconds.
    pub age: Option<u64>,
    pub has_set_cookie: bool,
    pub vary_star: bool,
    pub has_validator: bool,
    pub has_content_range: bool,
}

impl ResponseFacts {
    /// Reads the facts from a response's headers (lower-case names).
    pub fn from_headers(status: u16, headers: &[Field]) -> Self {
        Self::targeted(status, headers, &[])
    }

    /// [`from_headers`](Self::from_headers) for a cache that honours the targeted fields
    /// `targeted` (lower-case, in preference order; RFC 9213): the first one present with a
    /// non-empty value replaces `Cache-Control`, and `Expires` is ignored.
    pub fn targeted(status: u16, headers: &[Field], targeted: &[String]) -> Self {
        // Field values are bytes; the fields read here are ASCII grammars, so a value with
        // other bytes simply fails to parse (e.g. an obs-text `Date` is no date).
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| text(v))
        };
        let all = |name: &'static str| -> Vec<Cow<'_, str>> {
            headers
                .iter()
                .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| text(v))
                .collect()
        };
        let target = targeted.iter().find_map(|name| {
            let values: Vec<Cow<'_, str>> = headers
                .iter()
                .filter(|(k, v)| k.eq_ignore_ascii_case(name) && !text(v).trim().is_empty())
                .map(|(_, v)| text(v))
                .collect();
            (!values.is_empty()).then_some(values)
        });
        let (cc, expires) = match target {
            Some(values) => (CacheControl::parse(values.iter().map(|v| v.as_ref())), None),
            None => {
                let cc = all("cache-control");
                (
                    CacheControl::parse(cc.iter().map(|v| v.as_ref())),
                    get("expires").map(|d| parse_http_date(&d)),
                )
            }
        };
        ResponseFacts {
            status,
            cc,
            date: get("date").and_then(|d| parse_http_date(&d)),
            expires,
            last_modified: get("last-modified").and_then(|d| parse_http_date(&d)),
            // RFC 9111 §5.1: the first member of a list (or the first of repeated lines); an
            // invalid value is ignored, not read as an age.
            age: get("age").and_then(|a| {
                let first = a.split(',').next().unwrap_or("").trim();
                (!first.is_empty() && first.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| delta_seconds(Some(first)))
            }),
            has_set_cookie: get("set-cookie").is_some(),
            vary_star: all("vary")
                .iter()
                .any(|v| v.split(',').any(|p| p.trim() == "*")),
            has_validator: get("etag").is_some() || get("last-modified").is_some(),
            has_content_range: get("content-range").is_some(),
        }
    }

    /// Whether the response carries explicit freshness (`s-maxage`, `max-age` or `Expires`).
    pub fn explicit_freshness(&self) -> bool {
        self.cc.s_maxage.is_some() || self.cc.max_age.is_some() || self.expires.is_some()
    }
}

/// The request facts the caching rules look at.
#[derive(Debug, Clone, Default)]
pub struct RequestFacts {
    pub cc: CacheControl,
    /// `Pragma: no-cache` without a `Cache-Control` header (RFC 9111 §5.4).
    pub pragma_no_cache: bool,
    pub has_authorization: bool,
}

impl RequestFacts {
    pub fn from_headers(headers: &[Field]) -> Self {
        let cc_values: Vec<Cow<'_, str>> = headers
            .iter()
            .filter(|(k, _)| k == "cache-control")
            .map(|(_, v)| text(v))
            .collect();
        RequestFacts {
            pragma_no_cache: cc_values.is_empty()
                && headers.iter().any(|(k, v)| {
                    k == "pragma" && text(v).to_ascii_lowercase().contains("no-cache")
                }),
            cc: CacheControl::parse(cc_values.iter().map(|v| v.as_ref())),
            has_authorization: headers.iter().any(|(k, _)| k == "authorization"),
        }
    }

    /// The request asks the cache not to answer from storage without revalidating.
    pub fn no_cache(&self) -> bool {
        self.cc.no_cache || self.pragma_no_cache
    }
}

/// Why a response is not stored, for `Cache-Status: ...; detail=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    Method,
    Status,
    NoStore,
    Private,
    Authorization,
    SetCookie,
    VaryStar,
    NoFreshness,
    PartialContent,
}

impl NotStored {
    pub fn as_str(&self) -> &'static str {
        match self {
            NotStored::Method => "method",
            NotStored::Status => "status",
            NotStored::NoStore => "no-store",
            NotStored::Private => "private",
            NotStored::Authorization => "authorization",
            NotStored::SetCookie => "set-cookie",
            NotStored::VaryStar => "vary-star",
            NotStored::NoFreshness => "no-freshness",
            NotStored::PartialContent => "partial-content",
        }
    }
}

/// Storage-relevant settings from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Freshness for responses without any freshness information (0 = none).
    pub default_ttl: u64,
    /// Upper bound of heuristic freshness, seconds.
    pub heuristic_max: u64,
    /// Store responses carrying `Set-Cookie` (the cookie itself is never stored).
    pub store_set_cookie: bool,
}

/// Whether a shared cache may answer a request carrying `Authorization` with a stored response
/// whose Cache-Control is `cc` (RFC 9111 §3.5).
pub fn authorization_allows(cc: &CacheControl) -> bool {
    cc.public || cc.s_maxage.is_some() || cc.must_revalidate
}

/// RFC 9111 §3: may a shared cache store the response to a GET request?
pub fn storable(
    req: &RequestFacts,
    resp: &ResponseFacts,
    policy: &Policy,
) -> Result<(), NotStored> {
    if resp.status == 206 || resp.has_content_range {
        return Err(NotStored::PartialContent);
    }
    if !(200..600).contains(&resp.status) || resp.status == 304 {
        return Err(NotStored::Status);
    }
    if resp.cc.must_understand && !understood(resp.status) {
        return Err(NotStored::Status);
    }
    // `must-understand` lets a cache that implements the status code ignore `no-store`.
    if req.cc.no_store || (resp.cc.no_store && !resp.cc.must_understand) {
        return Err(NotStored::NoStore);
    }
    if resp.cc.private {
        return Err(NotStored::Private);
    }
    if req.has_authorization && !authorization_allows(&resp.cc) {
        return Err(NotStored::Authorization);
    }
    if resp.has_set_cookie && !policy.store_set_cookie {
        return Err(NotStored::SetCookie);
    }
    if resp.vary_star {
        return Err(NotStored::VaryStar);
    }
    let heuristic = heuristically_cacheable(resp.status);
    if !(resp.explicit_freshness() || resp.cc.public || heuristic) {
        return Err(NotStored::Status);
    }
    // A response that is stale on arrival and cannot be revalidated is of no use.
    if freshness_lifetime(resp, policy) == 0 && !resp.has_validator {
        return Err(NotStored::NoFreshness);
    }
    Ok(())
}

/// RFC 9111 §4.2.1 (shared cache): `s-maxage` > `max-age` > `Expires - Date` > heuristic
/// (10% of `Date - Last-Modified`, capped) > the configured default TTL. A response with
/// `no-cache` is stored but always revalidated, so its lifetime is 0.
pub fn freshness_lifetime(resp: &ResponseFacts, policy: &Policy) -> u64 {
    if resp.cc.no_cache {
        return 0;
    }
    if let Some(s) = resp.cc.s_maxage {
        return s;
    }
    if let Some(m) = resp.cc.max_age {
        return m;
    }
    if let Some(expires) = resp.expires {
        return match (expires, resp.date) {
            (Some(e), Some(d)) => e.saturating_sub(d),
            // Without Date the cache's receipt time stands in; callers pass it as `date`.
            (Some(_), None) => 0,
            (None, _) => 0,
        };
    }
    if heuristically_cacheable(resp.status) || resp.cc.public {
        if let (Some(lm), Some(d)) = (resp.last_modified, resp.date) {
            if d > lm {
                return ((d - lm) / 10).min(policy.heuristic_max);
            }
        }
    }
    policy.default_ttl
}

/// Age bookkeeping of a stored response (RFC 9111 §4.2.3), in nanoseconds of the cache's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AgeClock {
    /// `corrected_initial_age`, nanoseconds.
    pub initial_age: u64,
    /// When the response was received, nanoseconds since the epoch.
    pub response_time: u64,
}

impl AgeClock {
    /// `request_time` and `response_time` are the cache's clock around the upstream exchange.
    pub fn new(resp: &ResponseFacts, request_time: u64, response_time: u64) -> Self {
        const NS: u64 = 1_000_000_000;
        let apparent_age = resp
            .date
            .map(|d| response_time.saturating_sub(d.saturating_mul(NS)))
            .unwrap_or(0);
        let response_delay = response_time.saturating_sub(request_time);
        let corrected_age_value = resp.age.unwrap_or(0).saturating_mul(NS) + response_delay;
        AgeClock {
            initial_age: apparent_age.max(corrected_age_value),
            response_time,
        }
    }

    /// `current_age` in whole seconds at `now` (nanoseconds).
    pub fn current_age(&self, now: u64) -> u64 {
        (self.initial_age + now.saturating_sub(self.response_time)) / 1_000_000_000
    }
}

/// What to do with a stored response for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    /// Fresh enough for this request: answer from the cache.
    Fresh,
    /// Stale, but the request's `max-stale` accepts it.
    StaleAllowed,
    /// Stale within `stale-while-revalidate`: answer stale and refresh in the background.
    StaleWhileRevalidate,
    /// Must go upstream (conditionally, if the entry has validators).
    Revalidate,
}

/// RFC 9111 §4 and RFC 5861 §3: decide how to use a stored response of `age` seconds with
/// `lifetime` seconds of freshness for a request.
pub fn serve_decision(req: &RequestFacts, stored: &CacheControl, lifetime: u64, age: u64) -> Serve {
    if req.no_cache() || stored.no_cache {
        return Serve::Revalidate;
    }
    let fresh = age < lifetime;
    let req_ok = req.cc.max_age.is_none_or(|m| age <= m)
        && req
            .cc
            .min_fresh
            .is_none_or(|mf| lifetime.saturating_sub(age) >= mf);
    if fresh && req_ok {
        return Serve::Fresh;
    }
    if stored.must_revalidate || stored.proxy_revalidate || stored.s_maxage.is_some() {
        // §5.2.2.2/8/10: a shared cache never serves these stale.
        return Serve::Revalidate;
    }
    let staleness = age.saturating_sub(lifetime);
    if !fresh {
        if let Some(max_stale) = req.cc.max_stale {
            if max_stale.is_none_or(|m| staleness <= m) && req.cc.max_age.is_none_or(|m| age <= m) {
                return Serve::StaleAllowed;
            }
        }
        if let Some(swr) = stored.stale_while_revalidate {
            if staleness < swr && req.cc.max_age.is_none() && req.cc.min_fresh.is_none() {
                return Serve::StaleWhileRevalidate;
            }
        }
    }
    Serve::Revalidate
}

/// RFC 5861 §4: may a stale response be served because the upstream failed?
pub fn stale_if_error_allows(
    req: &RequestFacts,
    stored: &CacheControl,
    lifetime: u64,
    age: u64,
) -> bool {
    if stored.must_revalidate || stored.proxy_revalidate || stored.s_maxage.is_some() {
        return false;
    }
    let staleness = age.saturating_sub(lifetime);
    let window = match (req.cc.stale_if_error, stored.stale_if_error) {
        (Some(r), Some(s)) => r.max(s),
        (Some(r), None) => r,
        (None, Some(s)) => s,
        (None, None) => return false,
    };
    staleness <= window
}

/// Does a client's conditional request match the stored response (RFC 9110 §13.1)? Weak
/// comparison for `If-None-Match`; `If-Modified-Since` only when there is no `If-None-Match`.
/// Validators are compared as bytes (an entity tag may carry obs-text), weakly (RFC 9110
/// §13.1.2: `W/` ignored).
pub fn not_modified(
    if_none_match: Option<&[u8]>,
    if_modified_since: Option<&[u8]>,
    etag: Option<&[u8]>,
    last_modified: Option<&[u8]>,
) -> bool {
    if let Some(inm) = if_none_match {
        let Some(etag) = etag else { return false };
        let strip = |t: &'_ [u8]| -> Vec<u8> {
            let t = trim_ows(t);
            t.strip_prefix(b"W/").unwrap_or(t).to_vec()
        };
        let stored = strip(etag);
        return inm
            .split(|b| *b == b',')
            .any(|t| trim_ows(t) == b"*" || strip(t) == stored);
    }
    let date = |v: &[u8]| std::str::from_utf8(v).ok().and_then(parse_http_date);
    match (
        if_modified_since.and_then(date),
        last_modified.and_then(date),
    ) {
        (Some(ims), Some(lm)) => lm <= ims,
        _ => false,
    }
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const LONG_DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Parses an HTTP-date in exactly one of the three RFC 9110 §5.6.7 formats; Unix seconds.
/// Anything else (a missing comma, extra spaces, a one-digit hour, dashes in an IMF-fixdate,
/// a year past 9999) is not a date: for `Expires` that means "already expired" (RFC 9111 §5.3).
pub fn parse_http_date(s: &str) -> Option<u64> {
    let b = s.trim().as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let d = b.get(r)?;
        if d.is_empty() || !d.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(d).ok()?.parse().ok()
    };
    let text = |r: std::ops::Range<usize>| b.get(r).and_then(|t| std::str::from_utf8(t).ok());
    let month = |r: std::ops::Range<usize>| -> Option<u32> {
        let m = text(r)?;
        let i = MONTHS.iter().position(|x| x.eq_ignore_ascii_case(m))?;
        u32::try_from(i + 1).ok()
    };
    let lit = |at: usize, want: &[u8]| b.get(at..at + want.len()) == Some(want);
    // HH:MM:SS at `at`, two digits each.
    let hms = |at: usize| -> Option<(u32, u32, u32)> {
        if !lit(at + 2, b":") || !lit(at + 5, b":") {
            return None;
        }
        let (h, m, sec) = (num(at..at + 2)?, num(at + 3..at + 5)?, num(at + 6..at + 8)?);
        (h <= 23 && m <= 59 && sec <= 60).then_some((h, m, sec))
    };
    let short_day = |r: std::ops::Range<usize>| text(r).is_some_and(|d| DAYS.contains(&d));
    let (y, mo, d, (h, mi, se)) = if b.len() == 29 {
        // IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
        if !short_day(0..3)
            || !lit(3, b", ")
            || !lit(7, b" ")
            || !lit(11, b" ")
            || !lit(16, b" ")
            || !lit(25, b" GMT")
        {
            return None;
        }
        (i64::from(num(12..16)?), month(8..11)?, num(5..7)?, hms(17)?)
    } else if b.len() == 24 && lit(3, b" ") && lit(7, b" ") && lit(10, b" ") && lit(19, b" ") {
        // asctime: Sun Nov  6 08:49:37 1994 (a one-digit day is padded with a space)
        if !short_day(0..3) {
            return None;
        }
        let day = if lit(8, b" ") {
            num(9..10)?
        } else {
            num(8..10)?
        };
        (i64::from(num(20..24)?), month(4..7)?, day, hms(11)?)
    } else {
        // RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
        let comma = b.iter().position(|&c| c == b',')?;
        let day_name = text(0..comma)?;
        if !LONG_DAYS.contains(&day_name) {
            return None;
        }
        let at = comma + 2;
        if b.len() != at + 22
            || !lit(comma, b", ")
            || !lit(at + 2, b"-")
            || !lit(at + 6, b"-")
            || !lit(at + 9, b" ")
            || !lit(at + 18, b" GMT")
        {
            return None;
        }
        let yy = i64::from(num(at + 7..at + 9)?);
        // RFC 9110 §5.6.7: a two-digit year more than 50 years in the future is in the past
        // century; 70 is the conventional pivot for Unix time.
        let y = if yy < 70 { 2000 + yy } else { 1900 + yy };
        (y, month(at + 3..at + 6)?, num(at..at + 2)?, hms(at + 10)?)
    };
    // Four-digit years only (RFC 9110 §5.6.7): a crafted year cannot overflow the arithmetic.
    if !(1..=31).contains(&d) || !(1970..=9999).contains(&y) {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    let secs = days * 86400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(se);
    u64::try_from(secs).ok()
}

/// Formats Unix seconds as an IMF-fixdate.
pub fn format_http_date(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let (y, m, d) = civil_from_days(days);
    let wd = DAYS[(days.rem_euclid(7)) as usize];
    let month = MONTHS[(m - 1) as usize];
    let mut month = month.to_string();
    month[..1].make_ascii_uppercase();
    format!(
        "{wd}, {d:02} {month} {y} {:02}:{:02}:{:02} GMT",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        default_ttl: 0,
        heuristic_max: 86400,
        store_set_cookie: false,
    };
    const T0: u64 = 1_700_000_000;

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseFacts {
        let h: Vec<Field> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        ResponseFacts::from_headers(status, &h)
    }
    fn req(headers: &[(&str, &str)]) -> RequestFacts {
        let h: Vec<Field> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        RequestFacts::from_headers(&h)
    }

    #[test]
    fn parses_directives_with_quotes_case_and_bad_values() {
        let cc = CacheControl::parse([
            "Public, MAX-AGE=60, no-cache=\"set-cookie, x-a\"",
            "s-maxage=\"30\", stale-while-revalidate=5, max-age=10",
        ]);
        // The qualified form names fields to omit; it is not the unqualified no-cache.
        assert!(cc.public && !cc.no_cache && !cc.private);
        assert_eq!(cc.omit_fields, vec!["set-cookie", "x-a"]);
        assert_eq!(cc.max_age, Some(10), "duplicates take the smallest");
        assert_eq!(cc.s_maxage, Some(30));
        assert_eq!(cc.stale_while_revalidate, Some(5));
        assert_eq!(CacheControl::parse(["max-age=abc"]).max_age, Some(0));
        assert_eq!(CacheControl::parse(["max-age=-5"]).max_age, Some(0));
        assert_eq!(
            CacheControl::parse(["max-age=99999999999999999999"]).max_age,
            Some(1 << 31)
        );
        assert_eq!(CacheControl::parse(["max-stale"]).max_stale, Some(None));
        assert_eq!(
            CacheControl::parse(["max-stale=7"]).max_stale,
            Some(Some(7))
        );
    }

    /// The storability and freshness table: header combinations → (stored?, lifetime).
    #[test]
    fn storability_and_freshness_table() {
        let date = format_http_date(T0);
        let lm_1000s = format_http_date(T0 - 1000);
        let lm_long = format_http_date(T0 - 100 * 86400 * 10);
        let exp_120 = format_http_date(T0 + 120);
        let exp_past = format_http_date(T0 - 10);
        type Row<'a> = (
            &'a str,
            u16,
            Vec<(&'a str, &'a str)>,
            Vec<(&'a str, &'a str)>,
            Result<u64, NotStored>,
        );
        let rows: Vec<Row> = vec![
            (
                "max-age",
                200,
                vec![],
                vec![("cache-control", "max-age=60")],
                Ok(60),
            ),
            (
                "s-maxage beats max-age",
                200,
                vec![],
                vec![("cache-control", "max-age=60, s-maxage=10")],
                Ok(10),
            ),
            (
                "max-age beats Expires",
                200,
                vec![],
                vec![
                    ("cache-control", "max-age=5"),
                    ("date", &date),
                    ("expires", &exp_120),
                ],
                Ok(5),
            ),
            (
                "Expires - Date",
                200,
                vec![],
                vec![("date", &date), ("expires", &exp_120)],
                Ok(120),
            ),
            (
                "Expires in the past",
                200,
                vec![],
                vec![("date", &date), ("expires", &exp_past), ("etag", "\"a\"")],
                Ok(0),
            ),
            (
                "invalid Expires is expired",
                200,
                vec![],
                vec![("date", &date), ("expires", "0"), ("etag", "\"a\"")],
                Ok(0),
            ),
            (
                "heuristic 10% of LM age",
                200,
                vec![],
                vec![("date", &date), ("last-modified", &lm_1000s)],
                Ok(100),
            ),
            (
                "heuristic capped",
                200,
                vec![],
                vec![("date", &date), ("last-modified", &lm_long)],
                Ok(86400),
            ),
            (
                "no heuristic for 302",
                302,
                vec![],
                vec![("date", &date), ("last-modified", &lm_1000s)],
                Err(NotStored::Status),
            ),
            (
                "302 with max-age",
                302,
                vec![],
                vec![("cache-control", "max-age=30")],
                Ok(30),
            ),
            (
                "500 without freshness",
                500,
                vec![],
                vec![],
                Err(NotStored::Status),
            ),
            (
                "200 without anything",
                200,
                vec![],
                vec![],
                Err(NotStored::NoFreshness),
            ),
            (
                "404 heuristic via LM",
                404,
                vec![],
                vec![("date", &date), ("last-modified", &lm_1000s)],
                Ok(100),
            ),
            (
                "no-store",
                200,
                vec![],
                vec![("cache-control", "max-age=60, no-store")],
                Err(NotStored::NoStore),
            ),
            (
                "request no-store",
                200,
                vec![("cache-control", "no-store")],
                vec![("cache-control", "max-age=60")],
                Err(NotStored::NoStore),
            ),
            (
                "private",
                200,
                vec![],
                vec![("cache-control", "private, max-age=60")],
                Err(NotStored::Private),
            ),
            (
                "qualified private",
                200,
                vec![],
                vec![("cache-control", "private=\"x-user\", max-age=60")],
                Ok(60),
            ),
            (
                "no-cache stored, lifetime 0",
                200,
                vec![],
                vec![("cache-control", "no-cache, max-age=60"), ("etag", "\"v\"")],
                Ok(0),
            ),
            (
                "max-age=0 with validator",
                200,
                vec![],
                vec![("cache-control", "max-age=0"), ("etag", "\"v\"")],
                Ok(0),
            ),
            (
                "max-age=0 without validator",
                200,
                vec![],
                vec![("cache-control", "max-age=0")],
                Err(NotStored::NoFreshness),
            ),
            (
                "authorization refused",
                200,
                vec![("authorization", "Bearer x")],
                vec![("cache-control", "max-age=60")],
                Err(NotStored::Authorization),
            ),
            (
                "authorization + public",
                200,
                vec![("authorization", "Bearer x")],
                vec![("cache-control", "public, max-age=60")],
                Ok(60),
            ),
            (
                "authorization + s-maxage",
                200,
                vec![("authorization", "Bearer x")],
                vec![("cache-control", "s-maxage=20")],
                Ok(20),
            ),
            (
                "authorization + must-revalidate",
                200,
                vec![("authorization", "Bearer x")],
                vec![("cache-control", "must-revalidate, max-age=9")],
                Ok(9),
            ),
            (
                "set-cookie",
                200,
                vec![],
                vec![("cache-control", "max-age=60"), ("set-cookie", "a=b")],
                Err(NotStored::SetCookie),
            ),
            (
                "vary star",
                200,
                vec![],
                vec![("cache-control", "max-age=60"), ("vary", "accept, *")],
                Err(NotStored::VaryStar),
            ),
            (
                "206",
                206,
                vec![],
                vec![("cache-control", "max-age=60")],
                Err(NotStored::PartialContent),
            ),
            (
                "304 itself",
                304,
                vec![],
                vec![("cache-control", "max-age=60")],
                Err(NotStored::Status),
            ),
        ];
        for (name, status, rq, rs, want) in rows {
            let r = resp(status, &rs);
            let got = storable(&req(&rq), &r, &POLICY).map(|_| freshness_lifetime(&r, &POLICY));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn default_ttl_only_without_freshness_information() {
        let p = Policy {
            default_ttl: 30,
            ..POLICY
        };
        let none = resp(200, &[]);
        assert_eq!(storable(&req(&[]), &none, &p), Ok(()));
        assert_eq!(freshness_lifetime(&none, &p), 30);
        let explicit = resp(200, &[("cache-control", "max-age=5")]);
        assert_eq!(freshness_lifetime(&explicit, &p), 5);
        // Explicit zero stays zero; no-store stays unstorable.
        let zero = resp(200, &[("cache-control", "max-age=0")]);
        assert_eq!(freshness_lifetime(&zero, &p), 0);
        let ns = resp(200, &[("cache-control", "no-store")]);
        assert_eq!(storable(&req(&[]), &ns, &p), Err(NotStored::NoStore));
        // A status that is not heuristically cacheable does not become cacheable by default.
        assert_eq!(
            storable(&req(&[]), &resp(500, &[]), &p),
            Err(NotStored::Status)
        );
    }

    #[test]
    fn age_follows_section_4_2_3() {
        const NS: u64 = 1_000_000_000;
        // Upstream says Age: 10, Date is 5s before receipt, exchange took 2s.
        let r = resp(200, &[("age", "10"), ("date", &format_http_date(T0 - 5))]);
        let clock = AgeClock::new(&r, (T0 - 2) * NS, T0 * NS);
        // corrected_initial_age = max(apparent 5, 10 + 2) = 12
        assert_eq!(clock.current_age(T0 * NS), 12);
        assert_eq!(clock.current_age((T0 + 30) * NS), 42);
        // Clock skew: Date in the future gives apparent_age 0, not negative.
        let r = resp(200, &[("date", &format_http_date(T0 + 100))]);
        let clock = AgeClock::new(&r, T0 * NS, T0 * NS);
        assert_eq!(clock.current_age(T0 * NS + NS / 2), 0);
        // Apparent age dominates when larger.
        let r = resp(200, &[("date", &format_http_date(T0 - 50))]);
        assert_eq!(AgeClock::new(&r, T0 * NS, T0 * NS).current_age(T0 * NS), 50);
    }

    #[test]
    fn serve_decision_table() {
        let cc = |s: &str| CacheControl::parse([s]);
        type Row<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str, u64, u64, Serve);
        let rows: Vec<Row> = vec![
            ("fresh", vec![], "max-age=60", 60, 10, Serve::Fresh),
            (
                "exactly expired",
                vec![],
                "max-age=60",
                60,
                60,
                Serve::Revalidate,
            ),
            ("stale", vec![], "max-age=60", 60, 70, Serve::Revalidate),
            (
                "response no-cache",
                vec![],
                "no-cache",
                0,
                0,
                Serve::Revalidate,
            ),
            (
                "request no-cache",
                vec![("cache-control", "no-cache")],
                "max-age=60",
                60,
                1,
                Serve::Revalidate,
            ),
            (
                "pragma no-cache",
                vec![("pragma", "no-cache")],
                "max-age=60",
                60,
                1,
                Serve::Revalidate,
            ),
            (
                "pragma ignored with CC",
                vec![("pragma", "no-cache"), ("cache-control", "max-stale")],
                "max-age=60",
                60,
                1,
                Serve::Fresh,
            ),
            (
                "request max-age",
                vec![("cache-control", "max-age=5")],
                "max-age=60",
                60,
                10,
                Serve::Revalidate,
            ),
            (
                "request max-age ok",
                vec![("cache-control", "max-age=15")],
                "max-age=60",
                60,
                10,
                Serve::Fresh,
            ),
            (
                "min-fresh",
                vec![("cache-control", "min-fresh=55")],
                "max-age=60",
                60,
                10,
                Serve::Revalidate,
            ),
            (
                "min-fresh ok",
                vec![("cache-control", "min-fresh=50")],
                "max-age=60",
                60,
                10,
                Serve::Fresh,
            ),
            (
                "max-stale any",
                vec![("cache-control", "max-stale")],
                "max-age=60",
                60,
                1000,
                Serve::StaleAllowed,
            ),
            (
                "max-stale bounded",
                vec![("cache-control", "max-stale=5")],
                "max-age=60",
                60,
                70,
                Serve::Revalidate,
            ),
            (
                "max-stale bounded ok",
                vec![("cache-control", "max-stale=15")],
                "max-age=60",
                60,
                70,
                Serve::StaleAllowed,
            ),
            (
                "max-stale vs must-revalidate",
                vec![("cache-control", "max-stale")],
                "max-age=60, must-revalidate",
                60,
                70,
                Serve::Revalidate,
            ),
            (
                "max-stale vs proxy-revalidate",
                vec![("cache-control", "max-stale")],
                "max-age=60, proxy-revalidate",
                60,
                70,
                Serve::Revalidate,
            ),
            (
                "max-stale vs s-maxage",
                vec![("cache-control", "max-stale")],
                "s-maxage=60",
                60,
                70,
                Serve::Revalidate,
            ),
            (
                "swr window",
                vec![],
                "max-age=60, stale-while-revalidate=30",
                60,
                80,
                Serve::StaleWhileRevalidate,
            ),
            (
                "swr window passed",
                vec![],
                "max-age=60, stale-while-revalidate=30",
                60,
                95,
                Serve::Revalidate,
            ),
            (
                "swr vs must-revalidate",
                vec![],
                "max-age=60, stale-while-revalidate=30, must-revalidate",
                60,
                61,
                Serve::Revalidate,
            ),
        ];
        for (name, rq, stored, lifetime, age, want) in rows {
            assert_eq!(
                serve_decision(&req(&rq), &cc(stored), lifetime, age),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn stale_if_error_window() {
        let cc = |s: &str| CacheControl::parse([s]);
        let none = req(&[]);
        assert!(stale_if_error_allows(
            &none,
            &cc("max-age=1, stale-if-error=60"),
            1,
            30
        ));
        assert!(!stale_if_error_allows(
            &none,
            &cc("max-age=1, stale-if-error=60"),
            1,
            100
        ));
        assert!(!stale_if_error_allows(&none, &cc("max-age=1"), 1, 30));
        assert!(stale_if_error_allows(
            &req(&[("cache-control", "stale-if-error=100")]),
            &cc("max-age=1"),
            1,
            30
        ));
        assert!(!stale_if_error_allows(
            &none,
            &cc("max-age=1, stale-if-error=60, must-revalidate"),
            1,
            30
        ));
    }

    #[test]
    fn qualified_no_cache_and_private_store_without_the_named_fields() {
        let r = resp(
            200,
            &[(
                "cache-control",
                "max-age=60, no-cache=\"Set-Cookie, x-token\"",
            )],
        );
        assert!(!r.cc.no_cache);
        assert_eq!(r.cc.omit_fields, vec!["set-cookie", "x-token"]);
        let r = resp(200, &[("cache-control", "max-age=60, private=\"x-user\"")]);
        assert!(!r.cc.private);
        assert_eq!(r.cc.omit_fields, vec!["x-user"]);
        assert_eq!(storable(&req(&[]), &r, &POLICY), Ok(()));
        let r = resp(200, &[("cache-control", "max-age=60, private")]);
        assert!(r.cc.private);
        assert_eq!(storable(&req(&[]), &r, &POLICY), Err(NotStored::Private));
    }

    #[test]
    fn must_understand_overrides_no_store_for_understood_statuses() {
        let cc = "max-age=60, no-store, must-understand";
        assert_eq!(
            storable(&req(&[]), &resp(200, &[("cache-control", cc)]), &POLICY),
            Ok(())
        );
        assert_eq!(
            storable(&req(&[]), &resp(299, &[("cache-control", cc)]), &POLICY),
            Err(NotStored::Status)
        );
        // The request's no-store still wins.
        assert_eq!(
            storable(
                &req(&[("cache-control", "no-store")]),
                &resp(200, &[("cache-control", cc)]),
                &POLICY
            ),
            Err(NotStored::NoStore)
        );
    }

    #[test]
    fn a_targeted_field_overrides_cache_control_and_expires() {
        let t = vec!["cdn-cache-control".to_string()];
        let h = |pairs: &[(&str, &str)]| -> Vec<Field> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect()
        };
        // Fresh for this cache although Cache-Control forbids storing.
        let f = ResponseFacts::targeted(
            200,
            &h(&[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=600"),
            ]),
            &t,
        );
        assert!(!f.cc.no_store);
        assert_eq!(f.cc.max_age, Some(600));
        // `private` / `no-store` in the targeted field win over a permissive Cache-Control.
        for v in ["private", "no-store", "no-cache"] {
            let f = ResponseFacts::targeted(
                200,
                &h(&[
                    ("cache-control", "public, max-age=600"),
                    ("cdn-cache-control", v),
                ]),
                &t,
            );
            assert_ne!(
                storable(&req(&[]), &f, &POLICY).map(|_| freshness_lifetime(&f, &POLICY)),
                Ok(600),
                "{v}"
            );
        }
        // Expires is ignored when a targeted field applies; an empty targeted field does not apply.
        let f = ResponseFacts::targeted(
            200,
            &h(&[("expires", "0"), ("cdn-cache-control", "max-age=5")]),
            &t,
        );
        assert_eq!(f.expires, None);
        let f = ResponseFacts::targeted(
            200,
            &h(&[("cache-control", "max-age=9"), ("cdn-cache-control", " ")]),
            &t,
        );
        assert_eq!(f.cc.max_age, Some(9));
    }

    #[test]
    fn age_fields_follow_section_5_1() {
        assert_eq!(resp(200, &[("age", "10, 20")]).age, Some(10));
        assert_eq!(resp(200, &[("age", "30"), ("age", "99")]).age, Some(30));
        assert_eq!(resp(200, &[("age", "10abc")]).age, None);
        assert_eq!(resp(200, &[("age", "-5")]).age, None);
        assert_eq!(resp(200, &[("age", " 7 ")]).age, Some(7));
    }

    #[test]
    fn http_dates_with_huge_years_are_invalid_not_overflows() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 9223372036854775807 08:49:37 GMT"),
            None
        );
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 99999999999"), None);
        assert_eq!(parse_http_date("Sun, 06 Nov 10000 08:49:37 GMT"), None);
        assert!(parse_http_date("Fri, 31 Dec 9999 23:59:59 GMT").is_some());
    }

    #[test]
    fn conditional_requests() {
        let lm = format_http_date(T0);
        let nm = |inm: Option<&str>, ims: Option<&str>, etag: Option<&str>, lm: Option<&str>| {
            not_modified(
                inm.map(str::as_bytes),
                ims.map(str::as_bytes),
                etag.map(str::as_bytes),
                lm.map(str::as_bytes),
            )
        };
        assert!(nm(Some("\"a\", \"b\""), None, Some("\"b\""), None));
        assert!(nm(Some("W/\"b\""), None, Some("\"b\""), None));
        assert!(nm(Some("*"), None, Some("\"b\""), None));
        assert!(!nm(Some("\"c\""), None, Some("\"b\""), None));
        assert!(!nm(Some("\"c\""), None, None, Some(&lm)));
        assert!(nm(None, Some(&format_http_date(T0 + 5)), None, Some(&lm)));
        assert!(nm(None, Some(&lm), None, Some(&lm)));
        assert!(!nm(None, Some(&format_http_date(T0 - 5)), None, Some(&lm)));
        // If-None-Match takes precedence over If-Modified-Since.
        assert!(!nm(Some("\"x\""), Some(&lm), Some("\"b\""), Some(&lm)));
        // Validators with obs-text compare as bytes: equal bytes match, others do not.
        assert!(not_modified(
            Some(b"\"abc\xfc\""),
            None,
            Some(b"W/\"abc\xfc\""),
            None
        ));
        assert!(!not_modified(
            Some(b"\"abc\xfd\""),
            None,
            Some(b"\"abc\xfc\""),
            None
        ));
        assert!(!not_modified(
            Some("\"abcü\"".as_bytes()),
            None,
            Some(b"\"abc\xfc\""),
            None
        ));
        // An If-Modified-Since that is not a date never matches.
        assert!(!not_modified(
            None,
            Some(b"\xff\xfe"),
            None,
            Some(lm.as_bytes())
        ));
    }

    #[test]
    fn http_dates_in_all_three_formats() {
        let want = 784111777;
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(want));
        assert_eq!(
            parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"),
            Some(want)
        );
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), Some(want));
        assert_eq!(format_http_date(want), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(parse_http_date("yesterday"), None);
        // RFC 9111 §5.3: anything that is not exactly one of the three formats is no date.
        for bad in [
            "Sun 06 Nov 1994 08:49:37 GMT",   // missing comma
            "Sun,  06 Nov 1994 08:49:37 GMT", // extra space
            "Sun, 06 Nov 1994  08:49:37 GMT",
            "Sun, 06-Nov-1994 08:49:37 GMT", // dashes in an IMF-fixdate
            "Sun, 06 Nov 1994 8:49:37 GMT",  // one-digit hour
            "Sun, 6 Nov 1994 08:49:37 GMT",  // one-digit day
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sunday, 06-Nov-94 8:49:37 GMT",
            "Sun Nov 6 08:49:37 1994",
            "Xyz, 06 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
        assert_eq!(parse_http_date("0"), None);
        for t in [0u64, 951782400, T0, 4102444799] {
            assert_eq!(parse_http_date(&format_http_date(t)), Some(t));
        }
    }
}
