//! The server-level latency profile: every ordinary request waits `factor × (base + jitter)`
//! before it is answered (on top of any per-request `delay`). Set at start (`--latency`,
//! `--jitter`), from code ([`crate::Upstream::set_latency`]) or at run time through
//! `/__latency?factor=20` (see the crate docs).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The random part of the latency.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Jitter {
    /// No random part (`none`).
    #[default]
    None,
    /// Exponentially distributed with this mean (`exp:2ms`).
    Exp(Duration),
    /// Uniform on `[0, max)` (`uniform:2ms`).
    Uniform(Duration),
}

impl Jitter {
    /// `none`, `exp:<duration>` or `uniform:<duration>` (durations as in `delay=`: `2ms`,
    /// `1.5s`, a bare number is milliseconds).
    pub fn parse(text: &str) -> Result<Jitter, String> {
        let text = text.trim();
        if text.is_empty() || text == "none" || text == "0" {
            return Ok(Jitter::None);
        }
        let (kind, value) = text.split_once(':').ok_or_else(|| {
            format!("jitter {text:?}: expected none, exp:<duration> or uniform:<duration>")
        })?;
        let d = parse_duration(value)
            .ok_or_else(|| format!("jitter {text:?}: bad duration {value:?}"))?;
        match kind.trim() {
            "exp" => Ok(Jitter::Exp(d)),
            "uniform" => Ok(Jitter::Uniform(d)),
            other => Err(format!(
                "jitter {text:?}: unknown distribution {other:?} (exp or uniform)"
            )),
        }
    }

    /// The jitter for a uniform random number `u` in `[0, 1)`.
    fn sample(&self, u: f64) -> Duration {
        match *self {
            Jitter::None => Duration::ZERO,
            // Inverse CDF; `1 - u` is in (0, 1], so the logarithm is finite (at most ~37 × mean).
            Jitter::Exp(mean) => mean.mul_f64(-(1.0 - u).ln()),
            Jitter::Uniform(max) => max.mul_f64(u),
        }
    }
}

impl fmt::Display for Jitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Jitter::None => f.write_str("none"),
            Jitter::Exp(d) => write!(f, "exp:{}", millis(*d)),
            Jitter::Uniform(d) => write!(f, "uniform:{}", millis(*d)),
        }
    }
}

fn millis(d: Duration) -> String {
    format!("{}ms", d.as_secs_f64() * 1000.0)
}

/// A duration as the upstream's controls take it: a bare number is milliseconds (`2.5` too),
/// else the core duration syntax (`250ms`, `1.5s`).
pub fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(ms) = v.parse::<f64>() {
        return (ms.is_finite() && ms >= 0.0).then(|| Duration::from_secs_f64(ms / 1000.0));
    }
    if let Some(ms) = v
        .strip_suffix("ms")
        .and_then(|n| n.trim().parse::<f64>().ok())
    {
        return (ms.is_finite() && ms >= 0.0).then(|| Duration::from_secs_f64(ms / 1000.0));
    }
    switchyard_core::Duration::parse(v).map(|d| d.std())
}

/// What every ordinary request waits before it is answered: `factor × (base + jitter)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyProfile {
    pub base: Duration,
    pub jitter: Jitter,
    /// Multiplier on the whole latency (1 = as configured; 20 = a host twenty times slower).
    pub factor: f64,
}

impl Default for LatencyProfile {
    fn default() -> Self {
        LatencyProfile {
            base: Duration::ZERO,
            jitter: Jitter::None,
            factor: 1.0,
        }
    }
}

impl LatencyProfile {
    /// No added latency at all (the default): requests are answered as before.
    pub fn is_zero(&self) -> bool {
        self.factor == 0.0 || (self.base.is_zero() && self.jitter == Jitter::None)
    }

    /// The latency of one request for a uniform random number `u` in `[0, 1)`.
    pub fn sample(&self, u: f64) -> Duration {
        if self.is_zero() {
            return Duration::ZERO;
        }
        (self.base + self.jitter.sample(u)).mul_f64(self.factor)
    }

    /// `{"base_ms": 5.0, "jitter": "exp:1ms", "factor": 1.0}`, as `/__latency` answers.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "base_ms": self.base.as_secs_f64() * 1000.0,
            "jitter": self.jitter.to_string(),
            "factor": self.factor,
        })
    }

    /// Applies one `/__latency` query parameter (`factor`, `base`, `jitter`); unknown names are
    /// errors so a typo never silently leaves the host fast.
    pub fn apply(&mut self, name: &str, value: &str) -> Result<(), String> {
        match name {
            "factor" => {
                let f: f64 = value
                    .trim()
                    .parse()
                    .map_err(|_| format!("factor {value:?}: expected a number"))?;
                if !f.is_finite() || !(0.0..=10_000.0).contains(&f) {
                    return Err(format!("factor {value:?}: expected 0 to 10000"));
                }
                self.factor = f;
            }
            "base" | "latency" => {
                self.base =
                    parse_duration(value).ok_or_else(|| format!("base {value:?}: bad duration"))?;
            }
            "jitter" => self.jitter = Jitter::parse(value)?,
            other => {
                return Err(format!(
                    "unknown parameter {other:?} (factor, base, jitter)"
                ))
            }
        }
        Ok(())
    }
}

/// A lock-free splitmix64 stream: uniform numbers in `[0, 1)` for the jitter.
pub(crate) struct Random(AtomicU64);

impl Random {
    pub(crate) fn new(seed: u64) -> Random {
        Random(AtomicU64::new(seed))
    }

    pub(crate) fn next_f64(&self) -> f64 {
        let mut z = self
            .0
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // The top 53 bits: exactly representable, strictly below 1.
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_syntax() {
        assert_eq!(Jitter::parse("none"), Ok(Jitter::None));
        assert_eq!(
            Jitter::parse("exp:2ms"),
            Ok(Jitter::Exp(Duration::from_millis(2)))
        );
        assert_eq!(
            Jitter::parse("uniform:1.5"),
            Ok(Jitter::Uniform(Duration::from_micros(1500)))
        );
        assert!(Jitter::parse("normal:2ms").is_err());
        assert!(Jitter::parse("exp:soon").is_err());
        assert!(Jitter::parse("2ms").is_err());
        assert_eq!(Jitter::Exp(Duration::from_millis(2)).to_string(), "exp:2ms");
        assert_eq!(
            Jitter::parse(&Jitter::Uniform(Duration::from_micros(500)).to_string()),
            Ok(Jitter::Uniform(Duration::from_micros(500)))
        );
    }

    #[test]
    fn durations_take_fractional_milliseconds() {
        assert_eq!(parse_duration("0.5ms"), Some(Duration::from_micros(500)));
        assert_eq!(parse_duration("5"), Some(Duration::from_millis(5)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("-1"), None);
    }

    #[test]
    fn samples_scale_with_the_factor_and_follow_the_distribution() {
        let mut p = LatencyProfile {
            base: Duration::from_millis(5),
            jitter: Jitter::Exp(Duration::from_millis(2)),
            factor: 1.0,
        };
        assert_eq!(p.sample(0.0), Duration::from_millis(5));
        // Median of an exponential: mean × ln 2.
        let median = p.sample(0.5).as_secs_f64() * 1000.0;
        assert!((median - (5.0 + 2.0 * 2f64.ln())).abs() < 1e-6, "{median}");
        p.factor = 20.0;
        assert_eq!(p.sample(0.0), Duration::from_millis(100));
        let rng = Random::new(7);
        let n = 20_000;
        let mean = (0..n)
            .map(|_| {
                LatencyProfile { factor: 1.0, ..p }
                    .sample(rng.next_f64())
                    .as_secs_f64()
            })
            .sum::<f64>()
            / f64::from(n)
            * 1000.0;
        assert!((mean - 7.0).abs() < 0.1, "mean {mean} ms");
        assert!(LatencyProfile::default().is_zero());
        assert_eq!(LatencyProfile::default().sample(0.9), Duration::ZERO);
    }

    #[test]
    fn apply_sets_one_field_and_rejects_nonsense() {
        let mut p = LatencyProfile::default();
        p.apply("factor", "20").unwrap();
        p.apply("base", "5ms").unwrap();
        p.apply("jitter", "uniform:1ms").unwrap();
        assert_eq!(p.factor, 20.0);
        assert_eq!(p.base, Duration::from_millis(5));
        assert_eq!(p.jitter, Jitter::Uniform(Duration::from_millis(1)));
        assert!(p.apply("factor", "-1").is_err());
        assert!(p.apply("factor", "NaN").is_err());
        assert!(p.apply("speed", "1").is_err());
        assert_eq!(p.factor, 20.0);
        let rng = Random::new(1);
        assert!((0..1000)
            .map(|_| rng.next_f64())
            .all(|u| (0.0..1.0).contains(&u)));
    }
}
