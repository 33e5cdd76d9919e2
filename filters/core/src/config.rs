//! Configuration parsing with errors that name the JSON path of the bad field.

use serde::de::DeserializeOwned;
use std::fmt;

/// A configuration error: `path` is the JSON path of the offending field
/// (`rules[2].limits[0].per`), `message` says what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }

    /// Prefixes the path with `parent` (for errors raised while validating a nested value).
    pub fn under(mut self, parent: &str) -> Self {
        self.path = join_path(parent, &self.path);
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() || self.path == "." {
            write!(f, "configuration: {}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Joins a parent path and a child (`field`, `[3]` or `a.b`) into one JSON path.
pub fn join_path(parent: &str, child: &str) -> String {
    if parent.is_empty() || parent == "." {
        child.to_string()
    } else if child.is_empty() || child == "." {
        parent.to_string()
    } else if child.starts_with('[') {
        format!("{parent}{child}")
    } else {
        format!("{parent}.{child}")
    }
}

/// `parent[i]`.
pub fn index_path(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// Parses a JSON configuration into `T`. Errors carry the JSON path of the bad field, including
/// errors raised by `TryFrom` conversions of nested values (compiled matchers, durations, ...).
pub fn parse_config<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ConfigError::new("", "configuration is not valid UTF-8"))?;
    if text.trim().is_empty() {
        return Err(ConfigError::new(
            "",
            "configuration is empty: expected a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        ConfigError::new(path, strip_location(&e.into_inner().to_string()))
    })?;
    de.end()
        .map_err(|e| ConfigError::new("", strip_location(&e.to_string())))?;
    Ok(value)
}

/// serde_json appends " at line L column C"; the JSON path already says where.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) if msg[i..].contains(" column ") => msg[..i].to_string(),
        _ => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Limit {
        #[allow(dead_code)]
        per: crate::Duration,
    }
    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Rule {
        #[allow(dead_code)]
        limits: Vec<Limit>,
    }
    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        #[allow(dead_code)]
        rules: Vec<Rule>,
    }

    #[test]
    fn error_names_json_path_of_bad_duration() {
        let json = r#"{"rules":[{"limits":[]},{"limits":[]},{"limits":[{"per":"ten"}]}]}"#;
        let err = parse_config::<Cfg>(json.as_bytes()).unwrap_err();
        assert_eq!(err.path, "rules[2].limits[0].per");
        assert!(
            err.to_string()
                .starts_with("rules[2].limits[0].per: expected a duration like \"10s\""),
            "{err}"
        );
    }

    #[test]
    fn unknown_field_is_named() {
        let err = parse_config::<Cfg>(br#"{"rules":[{"limits":[], "limitz": 1}]}"#).unwrap_err();
        assert_eq!(err.path, "rules[0].limitz");
        assert!(err.message.contains("unknown field `limitz`"), "{err}");
        assert!(!err.message.contains("line"), "{err}");
    }

    #[test]
    fn empty_and_trailing_garbage_rejected() {
        assert!(parse_config::<Cfg>(b"").is_err());
        assert!(parse_config::<Cfg>(br#"{"rules":[]} x"#).is_err());
        assert!(parse_config::<Cfg>(br#"{"rules":[]}"#).is_ok());
    }

    #[test]
    fn join_paths() {
        assert_eq!(join_path("rules[0]", "match"), "rules[0].match");
        assert_eq!(join_path("rules", "[1]"), "rules[1]");
        assert_eq!(join_path("", "x"), "x");
        assert_eq!(
            ConfigError::new("headers[0].regex", "bad")
                .under("rules[1].match")
                .to_string(),
            "rules[1].match.headers[0].regex: bad"
        );
    }
}
