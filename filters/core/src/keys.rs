//! The key-source language: where a filter takes a key from.
//!
//! `{"client_ip": {"trusted_hops": N}}`, `{"header": "x-user-id"}`, `{"cookie": "session"}`,
//! `{"query": "tenant"}`, `{"path": true}`, `{"method": true}`, `{"authority": true}`,
//! `{"literal": "global"}`, `{"composite": [<source>, ...]}`.
//! A list of sources is either a composite key (every part must be present, see
//! [`KeySources::composite`]) or an ordered fallback (the first present one, see
//! [`KeySources::first_present`]); which one is the filter's documented choice.

use crate::request::{key_text, RequestView};
use serde::Deserialize;
use std::fmt;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientIpSpec {
    #[serde(default)]
    pub trusted_hops: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum KeySourceSpec {
    ClientIp(ClientIpSpec),
    Header(String),
    Cookie(String),
    Query(String),
    Path(bool),
    Method(bool),
    Authority(bool),
    Literal(String),
    Composite(Vec<KeySource>),
}

/// One key source. Header and cookie values that are not printable UTF-8 become a hex form
/// ([`key_text`]), so a key is stable and distinct for distinct bytes. Empty values count as absent, so a request with `x-user-id: ""` does not
/// share a key with every other such request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "KeySourceSpec")]
pub enum KeySource {
    ClientIp { trusted_hops: u32 },
    Header(String),
    Cookie(String),
    Query(String),
    Path,
    Method,
    Authority,
    Literal(String),
    Composite(Vec<KeySource>),
}

impl TryFrom<KeySourceSpec> for KeySource {
    type Error = String;
    fn try_from(s: KeySourceSpec) -> Result<Self, String> {
        let nonempty = |kind: &str, v: String| {
            if v.is_empty() {
                Err(format!("{kind} name must not be empty"))
            } else {
                Ok(v)
            }
        };
        let flag = |kind: &str, v: bool, k: KeySource| {
            if v {
                Ok(k)
            } else {
                Err(format!(
                    "{{\"{kind}\": false}} is not a key source; use true or remove it"
                ))
            }
        };
        match s {
            KeySourceSpec::ClientIp(c) => {
                if c.trusted_hops > 64 {
                    return Err("client_ip.trusted_hops must be at most 64".into());
                }
                Ok(KeySource::ClientIp {
                    trusted_hops: c.trusted_hops,
                })
            }
            KeySourceSpec::Header(h) => Ok(KeySource::Header(
                nonempty("header", h)?.to_ascii_lowercase(),
            )),
            KeySourceSpec::Cookie(c) => Ok(KeySource::Cookie(nonempty("cookie", c)?)),
            KeySourceSpec::Query(q) => Ok(KeySource::Query(nonempty("query", q)?)),
            KeySourceSpec::Path(v) => flag("path", v, KeySource::Path),
            KeySourceSpec::Method(v) => flag("method", v, KeySource::Method),
            KeySourceSpec::Authority(v) => flag("authority", v, KeySource::Authority),
            KeySourceSpec::Literal(l) => Ok(KeySource::Literal(l)),
            KeySourceSpec::Composite(parts) => {
                if parts.is_empty() {
                    Err("composite must list at least one key source".into())
                } else {
                    Ok(KeySource::Composite(parts))
                }
            }
        }
    }
}

/// Separates composite key parts; header values cannot contain control characters.
const SEP: char = '\u{1f}';

impl KeySource {
    /// The key's value for this request, or `None` when the source is absent or empty.
    pub fn extract(&self, req: &RequestView) -> Option<String> {
        let v = match self {
            KeySource::ClientIp { trusted_hops } => {
                req.client_ip(*trusted_hops).map(|ip| ip.to_string())
            }
            KeySource::Header(h) => req.header_joined(h).map(|v| key_text(&v).into_owned()),
            KeySource::Cookie(c) => req.cookie(c).map(|v| key_text(v).into_owned()),
            KeySource::Query(q) => req.query_param(q).map(str::to_string),
            KeySource::Path => Some(req.path().to_string()),
            KeySource::Method => Some(req.method().to_string()),
            KeySource::Authority => Some(req.authority().to_ascii_lowercase()),
            KeySource::Literal(l) => Some(l.clone()),
            KeySource::Composite(parts) => composite(parts, req),
        };
        v.filter(|s| !s.is_empty())
    }

    /// A short label for logs, metrics and debug headers (`header:x-user-id`).
    pub fn label(&self) -> String {
        match self {
            KeySource::ClientIp { trusted_hops } => {
                format!("client_ip(trusted_hops={trusted_hops})")
            }
            KeySource::Header(h) => format!("header:{h}"),
            KeySource::Cookie(c) => format!("cookie:{c}"),
            KeySource::Query(q) => format!("query:{q}"),
            KeySource::Path => "path".into(),
            KeySource::Method => "method".into(),
            KeySource::Authority => "authority".into(),
            KeySource::Literal(l) => format!("literal:{l}"),
            KeySource::Composite(p) => {
                let labels: Vec<String> = p.iter().map(KeySource::label).collect();
                format!("composite({})", labels.join("+"))
            }
        }
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

fn composite(parts: &[KeySource], req: &RequestView) -> Option<String> {
    let mut out = String::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(SEP);
        }
        out.push_str(&p.extract(req)?);
    }
    Some(out)
}

/// A list of key sources, as configured (`"key": [...]`, `"hash_key": [...]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct KeySources(pub Vec<KeySource>);

impl KeySources {
    /// The composite of every part, or `None` if any part is absent.
    pub fn composite(&self, req: &RequestView) -> Option<String> {
        composite(&self.0, req)
    }

    /// The first source that is present: its index and value.
    pub fn first_present(&self, req: &RequestView) -> Option<(usize, String)> {
        self.0
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.extract(req).map(|v| (i, v)))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn labels(&self) -> String {
        let l: Vec<String> = self.0.iter().map(KeySource::label).collect();
        l.join("+")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_config;

    fn req() -> RequestView {
        RequestView::new("GET", "/orders/1?tenant=acme&empty=")
            .with_authority("API.example.com")
            .with_source("10.0.0.1:1234")
            .with_header("x-user-id", "alice")
            .with_header("x-forwarded-for", "9.9.9.9, 8.8.8.8")
            .with_header("cookie", "session=s1")
            .with_header("x-empty", "")
    }

    fn src(json: &str) -> KeySources {
        parse_config(json.as_bytes()).unwrap()
    }

    #[test]
    fn each_source() {
        let r = req();
        let cases = [
            (r#"[{"client_ip": {"trusted_hops": 0}}]"#, Some("10.0.0.1")),
            (r#"[{"client_ip": {}}]"#, Some("10.0.0.1")),
            (r#"[{"client_ip": {"trusted_hops": 1}}]"#, Some("8.8.8.8")),
            (r#"[{"header": "X-User-Id"}]"#, Some("alice")),
            (r#"[{"header": "x-missing"}]"#, None),
            (r#"[{"header": "x-empty"}]"#, None),
            (r#"[{"cookie": "session"}]"#, Some("s1")),
            (r#"[{"query": "tenant"}]"#, Some("acme")),
            (r#"[{"query": "empty"}]"#, None),
            (r#"[{"path": true}]"#, Some("/orders/1")),
            (r#"[{"method": true}]"#, Some("GET")),
            (r#"[{"authority": true}]"#, Some("api.example.com")),
            (r#"[{"literal": "global"}]"#, Some("global")),
        ];
        for (json, want) in cases {
            assert_eq!(src(json).composite(&r).as_deref(), want, "{json}");
        }
    }

    #[test]
    fn composite_needs_every_part() {
        let r = req();
        let k = src(r#"[{"header": "x-user-id"}, {"path": true}]"#);
        assert_eq!(k.composite(&r).unwrap(), "alice\u{1f}/orders/1");
        let k = src(r#"[{"header": "x-user-id"}, {"header": "x-nope"}]"#);
        assert_eq!(k.composite(&r), None);
        let nested = src(r#"[{"composite": [{"method": true}, {"path": true}]}]"#);
        assert_eq!(nested.composite(&r).unwrap(), "GET\u{1f}/orders/1");
    }

    #[test]
    fn first_present_in_order() {
        let r = req();
        let k = src(r#"[{"header": "x-nope"}, {"cookie": "session"}, {"client_ip": {}}]"#);
        assert_eq!(k.first_present(&r), Some((1, "s1".to_string())));
        let k = src(r#"[{"header": "x-nope"}]"#);
        assert_eq!(k.first_present(&r), None);
    }

    #[test]
    fn bad_sources_rejected_with_path() {
        let e = parse_config::<KeySources>(br#"[{"path": true}, {"path": false}]"#).unwrap_err();
        assert_eq!(e.path, "[1]");
        let e = parse_config::<KeySources>(br#"[{"hedaer": "x"}]"#).unwrap_err();
        assert!(e.message.contains("unknown variant"), "{e}");
        let e = parse_config::<KeySources>(br#"[{"header": ""}]"#).unwrap_err();
        assert!(e.message.contains("must not be empty"), "{e}");
    }
}
