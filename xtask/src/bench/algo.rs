//! `cargo xtask bench algo`: the filter crates' native benches. The timings are criterion
//! benches; their results are read back from criterion's `<target>/criterion/**/new/` files
//! into one table. The quality measurements (hash quality, cache hit ratios) are plain programs
//! printing markdown, appended as they are. Output: `target/bench/algo.md` and `algo.json`.

use super::{machine, write_outputs};
use crate::util::{self, Result};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Criterion timings, collected into the one table.
    Criterion,
    /// A `harness = false` program printing markdown, quoted as it is.
    Markdown,
}

/// The filter crates' native benches: package, bench, kind.
const ALGO_BENCHES: [(&str, &str, Kind); 7] = [
    ("switchyard-ratelimit", "tiers", Kind::Criterion),
    ("switchyard-ratelimit", "decide", Kind::Criterion),
    ("switchyard-hashring", "lookup", Kind::Criterion),
    ("switchyard-router", "decide", Kind::Criterion),
    ("switchyard-cache", "decide", Kind::Criterion),
    ("switchyard-hashring", "quality", Kind::Markdown),
    ("switchyard-cache", "hit_ratio", Kind::Markdown),
];

/// Criterion's warm-up and measurement time per benchmark, in seconds: about 3.5 s per
/// benchmark with the analysis, so the whole run stays within a few minutes.
const WARM_UP_S: u32 = 1;
const MEASUREMENT_S: u32 = 2;

pub(super) fn algo(out_dir: &Path) -> Result<()> {
    // Criterion writes under `<target dir>/criterion` (honouring CARGO_TARGET_DIR); set it
    // explicitly so the bench binaries and this reader agree.
    let criterion_dir = util::metadata()?.target_dir.join("criterion");
    let started = SystemTime::now();
    let mut quality = Vec::new();
    for (package, bench, kind) in ALGO_BENCHES {
        let mut cmd = util::cargo();
        cmd.args(["bench", "-p", package, "--bench", bench]);
        match kind {
            Kind::Criterion => {
                cmd.args(["--", "--noplot", "--warm-up-time", &WARM_UP_S.to_string()])
                    .args(["--measurement-time", &MEASUREMENT_S.to_string()])
                    .env("CRITERION_HOME", &criterion_dir);
                util::run(&mut cmd)?;
            }
            Kind::Markdown => {
                let text = util::output(&mut cmd)?;
                println!("{text}");
                quality.push((package, bench, text));
            }
        }
    }
    let timings = collect(&criterion_dir, started)?;
    if timings.is_empty() {
        return Err(format!(
            "no criterion results written under {} by this run",
            criterion_dir.display()
        ));
    }
    let mut md = format!(
        "Machine: {}. Native, release build (`cargo bench`); criterion with {WARM_UP_S} s \
         warm-up and {MEASUREMENT_S} s measurement per benchmark.\n\n",
        machine()
    );
    md.push_str(&timings_table(&timings));
    for (package, bench, text) in &quality {
        let _ = write!(md, "\n## {package} `{bench}`\n\n{text}");
        if !text.ends_with('\n') {
            md.push('\n');
        }
    }
    let json = json!({
        "machine": machine(),
        "criterion": {
            "warm_up_s": WARM_UP_S,
            "measurement_s": MEASUREMENT_S,
            "directory": criterion_dir.display().to_string(),
        },
        "timings": timings.iter().map(Timing::to_json).collect::<Vec<_>>(),
        "quality": quality
            .iter()
            .map(|(package, bench, text)| json!({"package": package, "bench": bench, "markdown": text}))
            .collect::<Vec<_>>(),
    });
    write_outputs(out_dir, "algo", &md, &json)?;
    println!("{md}");
    Ok(())
}

/// One statistic of criterion's `estimates.json`, in ns.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Estimate {
    point: f64,
    low: f64,
    high: f64,
    /// Confidence level of `low..high`, e.g. 0.95.
    level: f64,
}

/// One criterion benchmark's result.
#[derive(Debug, Clone, PartialEq)]
struct Timing {
    /// Criterion's full id, e.g. `hashring/lookup/ring/1000`.
    id: String,
    median: Estimate,
    mean: Estimate,
}

impl Timing {
    fn to_json(&self) -> Value {
        json!({
            "benchmark": self.id,
            "median_ns": self.median.point,
            "median_low_ns": self.median.low,
            "median_high_ns": self.median.high,
            "mean_ns": self.mean.point,
            "mean_low_ns": self.mean.low,
            "mean_high_ns": self.mean.high,
            "confidence_level": self.median.level,
        })
    }
}

fn estimate(json: &Value, name: &str) -> Result<Estimate> {
    let e = &json[name];
    let number = |v: &Value, what: &str| {
        v.as_f64()
            .ok_or_else(|| format!("estimates.json: no number {name}.{what}"))
    };
    let ci = &e["confidence_interval"];
    Ok(Estimate {
        point: number(&e["point_estimate"], "point_estimate")?,
        low: number(&ci["lower_bound"], "confidence_interval.lower_bound")?,
        high: number(&ci["upper_bound"], "confidence_interval.upper_bound")?,
        level: number(
            &ci["confidence_level"],
            "confidence_interval.confidence_level",
        )?,
    })
}

/// Parses criterion's `new/estimates.json`: the median and the mean with their confidence
/// intervals (criterion writes nanoseconds for wall-time measurements).
fn parse_estimates(text: &str) -> Result<(Estimate, Estimate)> {
    let json: Value =
        serde_json::from_str(text).map_err(|e| format!("estimates.json: invalid JSON: {e}"))?;
    Ok((estimate(&json, "median")?, estimate(&json, "mean")?))
}

/// Every `new/` directory under `dir` (criterion's latest result of one benchmark).
fn new_dirs(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        if entry.file_name() == "new" {
            found.push(path);
        } else {
            new_dirs(&path, found);
        }
    }
}

/// The criterion results written since `since` (this run's), in the order they were written.
fn collect(criterion_dir: &Path, since: SystemTime) -> Result<Vec<Timing>> {
    let mut dirs = Vec::new();
    new_dirs(criterion_dir, &mut dirs);
    let mut timings = Vec::new();
    for dir in dirs {
        let estimates = dir.join("estimates.json");
        let Some(written) = std::fs::metadata(&estimates)
            .and_then(|m| m.modified())
            .ok()
            .filter(|t| *t >= since)
        else {
            continue;
        };
        let text = std::fs::read_to_string(&estimates)
            .map_err(|e| format!("read {}: {e}", estimates.display()))?;
        let (median, mean) =
            parse_estimates(&text).map_err(|e| format!("{}: {e}", estimates.display()))?;
        // `benchmark.json` holds the id as written in the bench (the directory names replace
        // `/` and other characters); fall back to the directory path.
        let id = std::fs::read_to_string(dir.join("benchmark.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|j| j["full_id"].as_str().map(str::to_owned))
            .unwrap_or_else(|| {
                let bench_dir = dir.parent().unwrap_or(&dir);
                let relative = bench_dir.strip_prefix(criterion_dir).unwrap_or(bench_dir);
                relative.display().to_string()
            });
        timings.push((written, Timing { id, median, mean }));
    }
    timings.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
    Ok(timings.into_iter().map(|(_, t)| t).collect())
}

/// A duration in ns with three significant digits and a unit that keeps it below 1000.
fn format_ns(ns: f64) -> String {
    let (value, unit) = scaled(ns);
    format!("{} {unit}", digits(value))
}

fn scaled(ns: f64) -> (f64, &'static str) {
    let abs = ns.abs();
    if abs < 1e3 {
        (ns, "ns")
    } else if abs < 1e6 {
        (ns / 1e3, "µs")
    } else if abs < 1e9 {
        (ns / 1e6, "ms")
    } else {
        (ns / 1e9, "s")
    }
}

fn digits(value: f64) -> String {
    let abs = value.abs();
    if abs < 10.0 {
        format!("{value:.2}")
    } else if abs < 100.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

/// `low – high`, with the unit once when both bounds share it.
fn format_interval(low: f64, high: f64) -> String {
    let ((lv, lu), (hv, hu)) = (scaled(low), scaled(high));
    if lu == hu {
        format!("{} – {} {hu}", digits(lv), digits(hv))
    } else {
        format!("{} – {}", format_ns(low), format_ns(high))
    }
}

/// The one markdown table of criterion timings: median per operation and its interval.
fn timings_table(timings: &[Timing]) -> String {
    let level = timings.first().map_or(0.95, |t| t.median.level);
    let mut md = format!(
        "| benchmark | median | {:.0} % interval of the median |\n|---|---|---|\n",
        level * 100.0
    );
    for t in timings {
        let _ = writeln!(
            md,
            "| `{}` | {} | {} |",
            t.id,
            format_ns(t.median.point),
            format_interval(t.median.low, t.median.high)
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from a criterion 0.8 `new/estimates.json`.
    const ESTIMATES: &str = r#"{
      "mean": {"confidence_interval": {"confidence_level": 0.95, "lower_bound": 8.61, "upper_bound": 9.02},
               "point_estimate": 8.8, "standard_error": 0.1},
      "median": {"confidence_interval": {"confidence_level": 0.95, "lower_bound": 8.5, "upper_bound": 8.75},
                 "point_estimate": 8.6, "standard_error": 0.05},
      "median_abs_dev": {"confidence_interval": {"confidence_level": 0.95, "lower_bound": 0.1, "upper_bound": 0.3},
                         "point_estimate": 0.2, "standard_error": 0.05},
      "slope": null,
      "std_dev": {"confidence_interval": {"confidence_level": 0.95, "lower_bound": 0.2, "upper_bound": 0.6},
                  "point_estimate": 0.4, "standard_error": 0.1}
    }"#;

    #[test]
    fn estimates_give_the_median_and_mean_with_their_intervals() {
        let (median, mean) = parse_estimates(ESTIMATES).unwrap();
        assert_eq!(
            median,
            Estimate {
                point: 8.6,
                low: 8.5,
                high: 8.75,
                level: 0.95
            }
        );
        assert_eq!((mean.point, mean.low, mean.high), (8.8, 8.61, 9.02));
    }

    #[test]
    fn estimates_without_a_median_or_not_json_are_errors() {
        let no_median = ESTIMATES.replace("\"median\"", "\"other\"");
        let err = parse_estimates(&no_median).unwrap_err();
        assert!(err.contains("median.point_estimate"), "{err}");
        assert!(parse_estimates("not json").is_err());
    }

    #[test]
    fn durations_have_three_significant_digits_and_a_unit_below_1000() {
        assert_eq!(format_ns(8.6), "8.60 ns");
        assert_eq!(format_ns(31.14), "31.1 ns");
        assert_eq!(format_ns(552.4), "552 ns");
        assert_eq!(format_ns(4_903.0), "4.90 µs");
        assert_eq!(format_ns(229_000.0), "229 µs");
        assert_eq!(format_ns(16_440_000.0), "16.4 ms");
        assert_eq!(format_ns(2.5e9), "2.50 s");
        assert_eq!(format_interval(8.5, 8.75), "8.50 – 8.75 ns");
        assert_eq!(format_interval(990.0, 1_020.0), "990 ns – 1.02 µs");
    }

    #[test]
    fn table_has_one_row_per_benchmark_in_order() {
        let (median, mean) = parse_estimates(ESTIMATES).unwrap();
        let slow = Estimate {
            point: 16_440_000.0,
            low: 16_100_000.0,
            high: 16_900_000.0,
            level: 0.95,
        };
        let table = timings_table(&[
            Timing {
                id: "hashring/lookup/ring/1000".to_owned(),
                median,
                mean,
            },
            Timing {
                id: "hashring/build/ring/1000".to_owned(),
                median: slow,
                mean: slow,
            },
        ]);
        assert_eq!(
            table,
            "| benchmark | median | 95 % interval of the median |\n|---|---|---|\n\
             | `hashring/lookup/ring/1000` | 8.60 ns | 8.50 – 8.75 ns |\n\
             | `hashring/build/ring/1000` | 16.4 ms | 16.1 – 16.9 ms |\n"
        );
    }

    #[test]
    fn collect_reads_this_runs_results_by_full_id_in_written_order() {
        let dir = std::env::temp_dir().join(format!("xtask-algo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let write = |rel: &str, full_id: Option<&str>| {
            let new = dir.join(rel).join("new");
            std::fs::create_dir_all(&new).unwrap();
            std::fs::write(new.join("estimates.json"), ESTIMATES).unwrap();
            if let Some(id) = full_id {
                std::fs::write(
                    new.join("benchmark.json"),
                    json!({"full_id": id}).to_string(),
                )
                .unwrap();
            }
            // A baseline copy next to `new/` is not a result of its own.
            let base = dir.join(rel).join("base");
            std::fs::create_dir_all(&base).unwrap();
            std::fs::write(base.join("estimates.json"), ESTIMATES).unwrap();
        };
        write("router_decide/regex/10", Some("router/decide/regex/10"));
        std::thread::sleep(std::time::Duration::from_millis(50));
        let since = SystemTime::now();
        std::thread::sleep(std::time::Duration::from_millis(50));
        write(
            "hashring_lookup/ring/1000",
            Some("hashring/lookup/ring/1000"),
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
        write("cache_key/primary", None);
        let timings = collect(&dir, since).unwrap();
        let ids: Vec<&str> = timings.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["hashring/lookup/ring/1000", "cache_key/primary"]);
        assert_eq!(timings[0].median.point, 8.6);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
