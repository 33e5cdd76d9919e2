//! Path matchers: exact, prefix, regex and `{name}` templates with captures.

use super::Captures;
use serde::Deserialize;

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
