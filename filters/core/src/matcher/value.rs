//! Header, query and cookie value tests (bytes semantics: docs/matching.md).

use super::path::Regex;
use crate::request::text;
use serde::Deserialize;

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
    pub(super) lower_name: String,
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
