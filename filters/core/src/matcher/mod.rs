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

use crate::config::ConfigError;
use crate::request::RequestView;
use serde::Deserialize;

mod network;
mod path;
mod value;

pub use network::{AuthorityMatcher, Cidr, CidrMatcher};
pub use path::{PathMatcher, Regex, Template};
pub use value::ValueMatcher;

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

#[cfg(test)]
mod tests;
