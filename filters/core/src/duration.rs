//! Human durations in configuration: `"250ms"`, `"10s"`, `"1m"`, `"1h"`, `"1h30m"`, `"1.5s"`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Nanoseconds per millisecond and per second: the filters count time in host nanoseconds.
pub const NS_PER_MS: u64 = 1_000_000;
pub const NS_PER_S: u64 = 1_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const ZERO: Duration = Duration(std::time::Duration::ZERO);

    pub fn from_secs(s: u64) -> Self {
        Duration(std::time::Duration::from_secs(s))
    }
    pub fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }
    pub fn as_nanos(&self) -> u64 {
        u64::try_from(self.0.as_nanos()).unwrap_or(u64::MAX)
    }
    pub fn as_millis(&self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }
    pub fn as_secs(&self) -> u64 {
        self.0.as_secs()
    }
    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
    pub fn std(&self) -> std::time::Duration {
        self.0
    }

    /// Parses `"250ms"`, `"10s"`, `"1m"`, `"1h"`, `"2d"`, `"1h30m"`, `"1.5s"`, `"0"`.
    pub fn parse(s: &str) -> Option<Duration> {
        let s = s.trim();
        if s == "0" {
            return Some(Duration::ZERO);
        }
        if s.is_empty() {
            return None;
        }
        let mut total_nanos: f64 = 0.0;
        let mut rest = s;
        while !rest.is_empty() {
            let num_end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            if num_end == 0 {
                return None;
            }
            let number: f64 = rest[..num_end].parse().ok()?;
            rest = &rest[num_end..];
            let unit_end = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let unit = &rest[..unit_end];
            rest = &rest[unit_end..];
            let scale = match unit {
                "ns" => 1.0,
                "us" | "µs" => 1e3,
                "ms" => 1e6,
                "s" => 1e9,
                "m" => 60e9,
                "h" => 3600e9,
                "d" => 86400e9,
                _ => return None,
            };
            total_nanos += number * scale;
        }
        if !total_nanos.is_finite() || !(0.0..=1e18).contains(&total_nanos) {
            return None;
        }
        Some(Duration(std::time::Duration::from_nanos(
            total_nanos.round() as u64,
        )))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        let parsed = match &v {
            serde_json::Value::String(s) => Duration::parse(s),
            _ => None,
        };
        parsed.ok_or_else(|| {
            serde::de::Error::custom(format!(
                "expected a duration like \"10s\" (units ms, s, m, h, d), got {v}"
            ))
        })
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(Duration::parse("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(Duration::parse("10s"), Some(Duration::from_secs(10)));
        assert_eq!(Duration::parse("1m"), Some(Duration::from_secs(60)));
        assert_eq!(Duration::parse("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(Duration::parse("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(Duration::parse("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(Duration::parse("0s"), Some(Duration::ZERO));
        assert_eq!(Duration::parse("0"), Some(Duration::ZERO));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "10", "s", "10x", "ten", "-1s", "1s2", "1..2s"] {
            assert_eq!(Duration::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn deserializes_only_strings() {
        assert!(serde_json::from_str::<Duration>("10").is_err());
        assert_eq!(
            serde_json::from_str::<Duration>("\"2s\"").unwrap(),
            Duration::from_secs(2)
        );
    }
}
