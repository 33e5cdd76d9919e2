//! The match language every filter shares.
//!
//! ```json
//! {"path": {"prefix": "/api"}, "methods": ["GET", "HEAD"],
//!  "headers": [{"name": "x-canary", "exact": "always"}, {"name": "x-debug", "absent": true}],
//!  "query": [{"name": "v", "regex": "^[0-9]+$"}], "cookies": [{"name": "beta", "present": true}],
//!  "authority": ["api.example.com", "*.example.org"], "client_cidr": ["10.0.0.0/8"],
//!  "not": {...}, "any": [{...}, {...}]}
//! ```
//! Every field is optional; all present fields must match (an empty matcher matches everything).
//! Matchers are compiled once at configure time (regexes included) and evaluated against a
//! [`RequestView`]; errors name the JSON path of the bad field.

use crate::config::{index_path, ConfigError};
use crate::request::{parse_address_ip, text, RequestView};
use serde::Deserialize;
use std::net::IpAddr;

/// A compiled matcher.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matcher {
    #[serde(default)]
    path: Option<PathMatcher>,
    #[serde(default, deserialize_with = "de_methods")]
    methods: Option<Vec<String>>,
    #[serde(default)]
    headers: Vec<ValueMatcher>,
    #[serde(default)]
    query: Vec<ValueMatcher>,
    #[serde(default)]
    cookies: Vec<ValueMatcher>,
    #[serde(default)]
    authority: Option<AuthorityMatcher>,
    #[serde(default)]
    client_cidr: Option<CidrMatcher>,
    #[serde(default)]
    not: Option<Box<Matcher>>,
    #[serde(default)]
    any: Option<Vec<Matcher>>,
}

/// Named values captured by a path template (`/users/{id}`) or named regex groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captures(pub Vec<(String, String)>);

impl Captures {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Matcher {
    /// A matcher that matches every request.
    pub fn always() -> Self {
        Matcher::default()
    }

    /// Compiles a matcher from a JSON value; errors are reported under `at`.
    pub fn from_json(value: &serde_json::Value, at: &str) -> Result<Self, ConfigError> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            ConfigError::new(e.path().to_string(), e.into_inner().to_string()).under(at)
        })
    }

    pub fn matches(&self, req: &RequestView) -> bool {
        self.match_captures(req).is_some()
    }

    /// Evaluates the matcher; on a match returns the path captures (empty if none).
    pub fn match_captures(&self, req: &RequestView) -> Option<Captures> {
        if let Some(methods) = &self.methods {
            if !methods.iter().any(|m| m.eq_ignore_ascii_case(req.method())) {
                return None;
            }
        }
        if let Some(a) = &self.authority {
            if !a.matches(req.authority()) {
                return None;
            }
        }
        if let Some(c) = &self.client_cidr {
            if !c.matches(req) {
                return None;
            }
        }
        for h in &self.headers {
            let values: Vec<&[u8]> = req.header_values(&h.lower_name).collect();
            if !h.matches_values(&values) {
                return None;
            }
        }
        for q in &self.query {
            let values: Vec<&[u8]> = req
                .query_params()
                .iter()
                .filter(|(k, _)| *k == q.name)
                .map(|(_, v)| v.as_bytes())
                .collect();
            if !q.matches_values(&values) {
                return None;
            }
        }
        for c in &self.cookies {
            let v = req.cookie(&c.name);
            if !c.matches_values(v.as_slice()) {
                return None;
            }
        }
        if let Some(not) = &self.not {
            if not.matches(req) {
                return None;
            }
        }
        if let Some(any) = &self.any {
            if !any.iter().any(|m| m.matches(req)) {
                return None;
            }
        }
        match &self.path {
            Some(p) => p.captures(req.path()),
            None => Some(Captures::default()),
        }
    }

    /// The path matcher, for tables that index exact and prefix routes.
    pub fn path_matcher(&self) -> Option<&PathMatcher> {
        self.path.as_ref()
    }
}

fn de_methods<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let v: Vec<String> = Vec::deserialize(d)?;
    if v.is_empty() {
        return Err(serde::de::Error::custom(
            "methods must list at least one method",
        ));
    }
    for m in &v {
        if m.is_empty()
            || !m
                .bytes()
                .all(|b| b.is_ascii_alphabetic() || b == b'-' || b == b'_')
        {
            return Err(serde::de::Error::custom(format!("invalid method {m:?}")));
        }
    }
    Ok(Some(
        v.into_iter().map(|m| m.to_ascii_uppercase()).collect(),
    ))
}

// ---------------------------------------------------------------------------------------------
// Path

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PathSpec {
    exact: Option<String>,
    prefix: Option<String>,
    regex: Option<String>,
    template: Option<String>,
    #[serde(default)]
    ignore_case: bool,
}

/// How a path is matched. `ignore_case` lower-cases both sides for exact/prefix/template.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "PathSpec")]
pub enum PathMatcher {
    Exact { value: String, ignore_case: bool },
    Prefix { value: String, ignore_case: bool },
    Regex(Regex),
    Template(Template),
}

impl TryFrom<PathSpec> for PathMatcher {
    type Error = String;
    fn try_from(s: PathSpec) -> Result<Self, String> {
        let set = [&s.exact, &s.prefix, &s.regex, &s.template]
            .iter()
            .filter(|o| o.is_some())
            .count();
        if set != 1 {
            return Err("path needs exactly one of exact, prefix, regex, template".into());
        }
        let ic = s.ignore_case;
        let lower = |v: String| if ic { v.to_ascii_lowercase() } else { v };
        if let Some(v) = s.exact {
            check_path_literal(&v)?;
            return Ok(PathMatcher::Exact {
                value: lower(v),
                ignore_case: ic,
            });
        }
        if let Some(v) = s.prefix {
            check_path_literal(&v)?;
            return Ok(PathMatcher::Prefix {
                value: lower(v),
                ignore_case: ic,
            });
        }
        if let Some(v) = s.regex {
            let pattern = if ic { format!("(?i){v}") } else { v };
            return Ok(PathMatcher::Regex(
                Regex::new(&pattern).map_err(|e| format!("regex: {e}"))?,
            ));
        }
        if let Some(v) = s.template {
            return Ok(PathMatcher::Template(
                Template::parse(&v, ic).map_err(|e| format!("template: {e}"))?,
            ));
        }
        Err("path needs exactly one of exact, prefix, regex, template".into())
    }
}

fn check_path_literal(v: &str) -> Result<(), String> {
    if !v.starts_with('/') {
        return Err(format!("path {v:?} must start with '/'"));
    }
    Ok(())
}

impl PathMatcher {
    /// Matches `path` (without query) and returns its captures.
    pub fn captures(&self, path: &str) -> Option<Captures> {
        match self {
            PathMatcher::Exact { value, ignore_case } => {
                let ok = if *ignore_case {
                    path.eq_ignore_ascii_case(value)
                } else {
                    path == value
                };
                ok.then(Captures::default)
            }
            PathMatcher::Prefix { value, ignore_case } => {
                let ok = if *ignore_case {
                    path.len() >= value.len()
                        && path.is_char_boundary(value.len())
                        && path[..value.len()].eq_ignore_ascii_case(value)
                } else {
                    path.starts_with(value.as_str())
                };
                ok.then(Captures::default)
            }
            PathMatcher::Regex(re) => re.full_captures(path),
            PathMatcher::Template(t) => t.captures(path),
        }
    }

    /// Capture names this matcher can produce (for validating rewrites).
    pub fn capture_names(&self) -> Vec<String> {
        match self {
            PathMatcher::Regex(re) => re.names(),
            PathMatcher::Template(t) => t.names(),
            _ => Vec::new(),
        }
    }
}

/// A regex compiled once, matched against the whole input (anchored, as Envoy's safe_regex).
#[derive(Debug, Clone)]
pub struct Regex {
    re: regex_lite::Regex,
}

impl Regex {
    pub fn new(pattern: &str) -> Result<Self, String> {
        let anchored = format!("^(?:{pattern})$");
        regex_lite::Regex::new(&anchored)
            .map(|re| Regex { re })
            .map_err(|e| {
                e.to_string()
                    .lines()
                    .last()
                    .unwrap_or("invalid regex")
                    .trim()
                    .to_string()
            })
    }
    pub fn is_match(&self, s: &str) -> bool {
        self.re.is_match(s)
    }
    pub fn full_captures(&self, s: &str) -> Option<Captures> {
        let caps = self.re.captures(s)?;
        let mut out = Captures::default();
        for name in self.re.capture_names().flatten() {
            if let Some(m) = caps.name(name) {
                out.0.push((name.to_string(), m.as_str().to_string()));
            }
        }
        for i in 1..caps.len() {
            if let Some(m) = caps.get(i) {
                out.0.push((i.to_string(), m.as_str().to_string()));
            }
        }
        Some(out)
    }
    /// Replaces the whole-input match with `replacement` (`$1`, `${name}` expand).
    pub fn replace(&self, s: &str, replacement: &str) -> Option<String> {
        if !self.re.is_match(s) {
            return None;
        }
        Some(self.re.replace(s, replacement).into_owned())
    }
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .re
            .capture_names()
            .flatten()
            .map(String::from)
            .collect();
        for i in 1..self.re.captures_len() {
            v.push(i.to_string());
        }
        v
    }
}

impl<'de> Deserialize<'de> for Regex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Regex::new(&s).map_err(|e| serde::de::Error::custom(format!("invalid regex {s:?}: {e}")))
    }
}

/// Whether a path segment would let a capture escape its place when it is substituted into a
/// rewrite: `.` or `..` (also percent-encoded, `%2e`), or an encoded `/` or `\\` (`%2f`, `%5c`).
/// Such a segment never matches a variable or wildcard.
fn unsafe_segment(p: &str) -> bool {
    let lower = p.to_ascii_lowercase();
    let dots = lower.replace("%2e", ".");
    dots == "."
        || dots == ".."
        || lower.contains("%2f")
        || lower.contains("%5c")
        || p.contains('\\')
}

/// A path template: `/users/{id}`, `/files/{rest=**}`, `/a/*/b`, `/static/**`.
/// `{name}` and `*` match one non-empty segment; `{name=**}` and `**` (last only) match the rest.
#[derive(Debug, Clone)]
pub struct Template {
    segments: Vec<Segment>,
    ignore_case: bool,
    source: String,
}

#[derive(Debug, Clone)]
enum Segment {
    Literal(String),
    One(Option<String>),
    Rest(Option<String>),
}

impl Template {
    pub fn parse(t: &str, ignore_case: bool) -> Result<Self, String> {
        let body = t
            .strip_prefix('/')
            .ok_or_else(|| format!("{t:?} must start with '/'"))?;
        let mut segments = Vec::new();
        let mut names = Vec::new();
        let parts: Vec<&str> = body.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let seg = if *part == "*" {
                Segment::One(None)
            } else if *part == "**" {
                Segment::Rest(None)
            } else if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                let (name, kind) = match inner.split_once('=') {
                    Some((n, k)) => (n, k),
                    None => (inner, "*"),
                };
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(format!("bad variable name {name:?} in {t:?}"));
                }
                if names.contains(&name.to_string()) {
                    return Err(format!("variable {name:?} appears twice in {t:?}"));
                }
                names.push(name.to_string());
                match kind {
                    "*" => Segment::One(Some(name.to_string())),
                    "**" => Segment::Rest(Some(name.to_string())),
                    other => {
                        return Err(format!("unsupported variable pattern {other:?} in {t:?}"))
                    }
                }
            } else if part.contains('{') || part.contains('}') || part.contains('*') {
                return Err(format!(
                    "segment {part:?} mixes a variable with text in {t:?}"
                ));
            } else {
                Segment::Literal(if ignore_case {
                    part.to_ascii_lowercase()
                } else {
                    part.to_string()
                })
            };
            if matches!(seg, Segment::Rest(_)) && !last {
                return Err(format!("'**' may only be the last segment in {t:?}"));
            }
            segments.push(seg);
        }
        Ok(Template {
            segments,
            ignore_case,
            source: t.to_string(),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn names(&self) -> Vec<String> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::One(Some(n)) | Segment::Rest(Some(n)) => Some(n.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn captures(&self, path: &str) -> Option<Captures> {
        let body = path.strip_prefix('/')?;
        let mut parts = body.split('/');
        let mut out = Captures::default();
        let mut consumed = 1; // byte offset into path after the leading '/'
        for seg in &self.segments {
            match seg {
                Segment::Literal(l) => {
                    let p = parts.next()?;
                    let ok = if self.ignore_case {
                        p.eq_ignore_ascii_case(l)
                    } else {
                        p == l
                    };
                    if !ok {
                        return None;
                    }
                    consumed += p.len() + 1;
                }
                Segment::One(name) => {
                    let p = parts.next()?;
                    if p.is_empty() || unsafe_segment(p) {
                        return None;
                    }
                    if let Some(n) = name {
                        out.0.push((n.clone(), p.to_string()));
                    }
                    consumed += p.len() + 1;
                }
                Segment::Rest(name) => {
                    let rest = path.get(consumed.min(path.len())..).unwrap_or("");
                    if rest.split('/').any(unsafe_segment) {
                        return None;
                    }
                    if let Some(n) = name {
                        out.0.push((n.clone(), rest.to_string()));
                    }
                    return Some(out);
                }
            }
        }
        parts.next().is_none().then_some(out)
    }

    /// Expands `{name}` references in `pattern` from `caps`.
    pub fn expand(pattern: &str, caps: &Captures) -> String {
        let mut out = String::with_capacity(pattern.len());
        let mut rest = pattern;
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            match rest[start..].find('}') {
                Some(end) => {
                    let name = &rest[start + 1..start + end];
                    out.push_str(caps.get(name).unwrap_or(""));
                    rest = &rest[start + end + 1..];
                }
                None => {
                    out.push_str(&rest[start..]);
                    rest = "";
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// The `{name}` references used by a rewrite pattern.
    pub fn references(pattern: &str) -> Vec<String> {
        let mut v = Vec::new();
        let mut rest = pattern;
        while let Some(start) = rest.find('{') {
            match rest[start..].find('}') {
                Some(end) => {
                    v.push(rest[start + 1..start + end].to_string());
                    rest = &rest[start + end + 1..];
                }
                None => break,
            }
        }
        v
    }
}

// ---------------------------------------------------------------------------------------------
// Header / query / cookie values

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ValueSpec {
    name: String,
    exact: Option<String>,
    prefix: Option<String>,
    suffix: Option<String>,
    contains: Option<String>,
    regex: Option<String>,
    present: Option<bool>,
    absent: Option<bool>,
    #[serde(default)]
    invert: bool,
    #[serde(default)]
    ignore_case: bool,
}

#[derive(Debug, Clone)]
enum ValueTest {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Regex),
    Present,
    Absent,
}

/// Matches a named header, query parameter or cookie. With repeated headers the test passes if
/// any single value, or the comma-joined value, passes. `invert` negates the result.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "ValueSpec")]
pub struct ValueMatcher {
    /// As configured: query parameter and cookie names are case-sensitive.
    pub name: String,
    /// Header names are case-insensitive and looked up lower-case.
    lower_name: String,
    test: ValueTest,
    invert: bool,
    ignore_case: bool,
}

impl TryFrom<ValueSpec> for ValueMatcher {
    type Error = String;
    fn try_from(s: ValueSpec) -> Result<Self, String> {
        if s.name.is_empty() {
            return Err("name must not be empty".into());
        }
        let ic = s.ignore_case;
        let norm = |v: String| if ic { v.to_ascii_lowercase() } else { v };
        let mut tests = Vec::new();
        if let Some(v) = s.exact {
            tests.push(ValueTest::Exact(norm(v)));
        }
        if let Some(v) = s.prefix {
            tests.push(ValueTest::Prefix(norm(v)));
        }
        if let Some(v) = s.suffix {
            tests.push(ValueTest::Suffix(norm(v)));
        }
        if let Some(v) = s.contains {
            tests.push(ValueTest::Contains(norm(v)));
        }
        if let Some(v) = s.regex {
            let p = if ic { format!("(?i){v}") } else { v.clone() };
            tests.push(ValueTest::Regex(
                Regex::new(&p).map_err(|e| format!("invalid regex {v:?}: {e}"))?,
            ));
        }
        match s.present {
            Some(true) => tests.push(ValueTest::Present),
            Some(false) => tests.push(ValueTest::Absent),
            None => {}
        }
        match s.absent {
            Some(true) => tests.push(ValueTest::Absent),
            Some(false) => tests.push(ValueTest::Present),
            None => {}
        }
        if tests.len() != 1 {
            return Err(format!(
                "{:?} needs exactly one of exact, prefix, suffix, contains, regex, present, absent",
                s.name
            ));
        }
        let test = tests.remove(0);
        Ok(ValueMatcher {
            lower_name: s.name.to_ascii_lowercase(),
            name: s.name,
            test,
            invert: s.invert,
            ignore_case: ic,
        })
    }
}

impl ValueMatcher {
    /// Text tests compare bytes (a value may carry obs-text); a regex sees [`text`].
    fn test_one(&self, v: &[u8]) -> bool {
        let lowered;
        let v = if self.ignore_case {
            lowered = v.to_ascii_lowercase();
            lowered.as_slice()
        } else {
            v
        };
        match &self.test {
            ValueTest::Exact(e) => v == e.as_bytes(),
            ValueTest::Prefix(p) => v.starts_with(p.as_bytes()),
            ValueTest::Suffix(p) => v.ends_with(p.as_bytes()),
            ValueTest::Contains(p) => contains(v, p.as_bytes()),
            ValueTest::Regex(re) => re.is_match(&text(v)),
            ValueTest::Present => true,
            ValueTest::Absent => false,
        }
    }

    /// `values`: every value of the named field in the request (empty if absent).
    pub fn matches_values(&self, values: &[&[u8]]) -> bool {
        let raw = match self.test {
            ValueTest::Present => !values.is_empty(),
            ValueTest::Absent => values.is_empty(),
            _ => {
                values.iter().any(|v| self.test_one(v))
                    || (values.len() > 1 && self.test_one(&values.join(&b',')))
            }
        };
        raw != self.invert
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Authority and client CIDR

/// Host names, `*.suffix` wildcards or `*`; compared case-insensitively, port ignored unless
/// the pattern has one.
#[derive(Debug, Clone)]
pub struct AuthorityMatcher {
    patterns: Vec<String>,
}

impl<'de> Deserialize<'de> for AuthorityMatcher {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        let v = match OneOrMany::deserialize(d)? {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        };
        if v.is_empty() {
            return Err(serde::de::Error::custom(
                "authority must list at least one host",
            ));
        }
        for p in &v {
            if p.is_empty()
                || (p.contains('*')
                    && !(p == "*" || (p.starts_with("*.") && !p[2..].contains('*'))))
            {
                return Err(serde::de::Error::custom(format!(
                    "invalid authority pattern {p:?}: use a host, \"*.suffix\" or \"*\""
                )));
            }
        }
        Ok(AuthorityMatcher {
            patterns: v.into_iter().map(|p| p.to_ascii_lowercase()).collect(),
        })
    }
}

impl AuthorityMatcher {
    pub fn matches(&self, authority: &str) -> bool {
        let full = authority.to_ascii_lowercase();
        let host = strip_port(&full);
        self.patterns.iter().any(|p| {
            let target = if has_port(p) { full.as_str() } else { host };
            if p == "*" {
                true
            } else if let Some(suffix) = p.strip_prefix("*.") {
                target.len() > suffix.len() + 1
                    && target.ends_with(suffix)
                    && target.as_bytes()[target.len() - suffix.len() - 1] == b'.'
            } else {
                target == p
            }
        })
    }
}

fn has_port(p: &str) -> bool {
    if p.starts_with('[') {
        p.contains("]:")
    } else {
        p.matches(':').count() == 1
    }
}

fn strip_port(a: &str) -> &str {
    if let Some(end) = a.strip_prefix('[').and_then(|r| r.find(']')) {
        return &a[..end + 2];
    }
    match a.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => a,
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CidrSpec {
    ranges: Vec<String>,
    #[serde(default)]
    trusted_hops: u32,
}

/// Client address ranges: `["10.0.0.0/8", "::1/128"]`, or
/// `{"ranges": [...], "trusted_hops": N}` to test the `X-Forwarded-For` client.
#[derive(Debug, Clone)]
pub struct CidrMatcher {
    ranges: Vec<Cidr>,
    trusted_hops: u32,
}

impl<'de> Deserialize<'de> for CidrMatcher {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            List(Vec<String>),
            Spec(CidrSpec),
        }
        let (ranges, trusted_hops) = match Form::deserialize(d)? {
            Form::List(v) => (v, 0),
            Form::Spec(s) => (s.ranges, s.trusted_hops),
        };
        if ranges.is_empty() {
            return Err(serde::de::Error::custom(
                "client_cidr must list at least one range",
            ));
        }
        let mut out = Vec::new();
        for (i, r) in ranges.iter().enumerate() {
            out.push(Cidr::parse(r).map_err(|e| {
                serde::de::Error::custom(format!("{}: {e}", index_path("client_cidr", i)))
            })?);
        }
        Ok(CidrMatcher {
            ranges: out,
            trusted_hops,
        })
    }
}

impl CidrMatcher {
    pub fn matches(&self, req: &RequestView) -> bool {
        match req.client_ip(self.trusted_hops) {
            Some(ip) => self.ranges.iter().any(|c| c.contains(ip)),
            None => false,
        }
    }
}

/// An IPv4 or IPv6 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let net = parse_address_ip(addr)
            .filter(|_| !addr.contains(']') && (addr.parse::<IpAddr>().is_ok()))
            .ok_or_else(|| format!("invalid CIDR {s:?}"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("invalid prefix length in {s:?}"))?,
            None => max,
        };
        Ok(Cidr { net, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.net, ip) {
            (IpAddr::V6(_), IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            _ => ip,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = (bits / 8) as usize;
    if a[..full] != b[..full] {
        return false;
    }
    let rem = bits % 8;
    if rem == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rem);
    (a[full] & mask) == (b[full] & mask)
}

#[cfg(test)]
mod tests {
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
        let q = m(
            json!({"query": [{"name": "v", "regex": "[0-9]+"}, {"name": "empty", "present": true}]}),
        );
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
}
