//! A line chart written as SVG text (xtask has no plotting crate): one `<polyline>` per series,
//! a logarithmic or linear y axis with grid lines, dashed vertical markers (phase boundaries)
//! and a legend. Used by `cargo xtask bench balance` for its latency-over-time chart.

use std::fmt::Write as _;

pub struct Series {
    pub name: String,
    /// `(x, y)` points in data units, in x order; points with a non-finite or (log scale)
    /// non-positive y are skipped.
    pub points: Vec<(f64, f64)>,
}

pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Vertical dashed lines at these x values, each with a label.
    pub markers: Vec<(f64, String)>,
    /// Logarithmic y axis (decades, with 2 and 5 between).
    pub log_y: bool,
    /// y values above this are drawn at it (the line runs along the top); `None` = no clip.
    pub y_max: Option<f64>,
}

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 540.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// Escapes text for SVG element content and attribute values.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

/// The chart as a complete SVG document.
pub fn render(chart: &Chart) -> String {
    let clip = |y: f64| chart.y_max.map_or(y, |m| y.min(m));
    let usable = |y: f64| y.is_finite() && (!chart.log_y || y > 0.0);
    let xs = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .chain(chart.markers.iter().map(|m| m.0))
        .filter(|x| x.is_finite());
    let (x_lo, x_hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    let (x_lo, x_hi) = if x_lo.is_finite() && x_hi > x_lo {
        (x_lo, x_hi)
    } else {
        (0.0, 1.0)
    };
    let ys = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|y| usable(*y))
        .map(clip);
    let (y_lo, y_hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
        (lo.min(y), hi.max(y))
    });
    // The y range: whole decades on a log axis, from zero on a linear one.
    let (y_lo, y_hi) = if !y_lo.is_finite() {
        if chart.log_y {
            (1.0, 10.0)
        } else {
            (0.0, 1.0)
        }
    } else if chart.log_y {
        let lo = 10f64.powf(y_lo.log10().floor());
        let hi = 10f64.powf(y_hi.log10().ceil());
        (lo, if hi > lo { hi } else { lo * 10.0 })
    } else {
        (0.0, if y_hi > 0.0 { y_hi * 1.05 } else { 1.0 })
    };
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let px = |x: f64| LEFT + (x - x_lo) / (x_hi - x_lo) * plot_w;
    let py = |y: f64| {
        let t = if chart.log_y {
            (y.log10() - y_lo.log10()) / (y_hi.log10() - y_lo.log10())
        } else {
            (y - y_lo) / (y_hi - y_lo)
        };
        TOP + (1.0 - t.clamp(0.0, 1.0)) * plot_h
    };

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        escape(&chart.title)
    );
    // y grid and ticks.
    let mut ticks = Vec::new();
    if chart.log_y {
        let mut decade = y_lo;
        while decade <= y_hi * 1.0001 {
            for m in [1.0, 2.0, 5.0] {
                let v = decade * m;
                if v <= y_hi * 1.0001 {
                    ticks.push(v);
                }
            }
            decade *= 10.0;
        }
    } else {
        let step = nice_step(y_hi / 5.0);
        let mut v = 0.0;
        while v <= y_hi * 1.0001 {
            ticks.push(v);
            v += step;
        }
    }
    for v in ticks {
        let y = py(v);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e0e0e0"/>"##,
            LEFT + plot_w
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y + 4.0,
            number(v)
        );
    }
    // x ticks: about ten, at a round step.
    let step = nice_step((x_hi - x_lo) / 10.0);
    let mut v = (x_lo / step).ceil() * step;
    while v <= x_hi + step * 1e-6 {
        let x = px(v);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#888"/>"##,
            TOP + plot_h,
            TOP + plot_h + 5.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            TOP + plot_h + 18.0,
            number(v)
        );
        v += step;
    }
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>"##
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 10.0,
        escape(&chart.x_label)
    );
    let _ = writeln!(
        out,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        escape(&chart.y_label)
    );
    for (x, label) in &chart.markers {
        let x = px(*x);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#666" stroke-dasharray="5,4"/>"##,
            TOP + plot_h
        );
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" fill="#444">{}</text>"##,
            x + 4.0,
            TOP + 14.0,
            escape(label)
        );
    }
    for (i, s) in chart.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = s
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && usable(*y))
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(clip(*y))))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{}"><title>{}</title></polyline>"#,
            points.join(" "),
            escape(&s.name)
        );
        let ly = TOP + 10.0 + i as f64 * 20.0;
        let lx = LEFT + plot_w + 15.0;
        let _ = writeln!(
            out,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="3"/>"#,
            lx + 20.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 26.0,
            ly + 4.0,
            escape(&s.name)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks that every element opened is closed in order (or self-closing), attribute values
    /// are quoted, and text holds no raw `<` or `&` other than entities: enough of XML for the
    /// text this module writes.
    fn well_formed(doc: &str) -> Result<usize, String> {
        let mut stack: Vec<String> = Vec::new();
        let mut elements = 0;
        let mut rest = doc;
        while let Some(open) = rest.find('<') {
            let text = &rest[..open];
            if let Some(amp) = text.find('&') {
                let entity = &text[amp..];
                if !["&amp;", "&lt;", "&gt;", "&quot;"]
                    .iter()
                    .any(|e| entity.starts_with(e))
                {
                    return Err(format!("raw & in text {text:?}"));
                }
            }
            let close = rest[open..].find('>').ok_or("unterminated tag")? + open;
            let tag = &rest[open + 1..close];
            if !tag.matches('"').count().is_multiple_of(2) || tag.contains('<') {
                return Err(format!("bad tag <{tag}>"));
            }
            if let Some(name) = tag.strip_prefix('/') {
                match stack.pop() {
                    Some(top) if top == name => {}
                    other => return Err(format!("</{name}> closes {other:?}")),
                }
            } else {
                elements += 1;
                if !tag.ends_with('/') {
                    let name = tag.split_whitespace().next().unwrap_or("").to_owned();
                    stack.push(name);
                }
            }
            rest = &rest[close + 1..];
        }
        if stack.is_empty() {
            Ok(elements)
        } else {
            Err(format!("unclosed {stack:?}"))
        }
    }

    fn chart(log_y: bool) -> Chart {
        Chart {
            title: "p99 <per> 1 s & more".to_owned(),
            x_label: "seconds".to_owned(),
            y_label: "p99 ms".to_owned(),
            series: vec![
                Series {
                    name: "a".to_owned(),
                    points: vec![(0.0, 5.0), (1.0, 7.0), (2.0, 120.0), (3.0, f64::NAN)],
                },
                Series {
                    name: "b \"quoted\"".to_owned(),
                    points: vec![(0.0, 6.0), (1.0, 0.0), (2.0, 5000.0)],
                },
                Series {
                    name: "empty".to_owned(),
                    points: vec![],
                },
            ],
            markers: vec![(1.0, "slow".to_owned()), (2.5, "recovered".to_owned())],
            log_y,
            y_max: Some(1000.0),
        }
    }

    #[test]
    fn output_is_well_formed_svg_with_one_polyline_per_series() {
        for log_y in [true, false] {
            let svg = render(&chart(log_y));
            assert!(svg.starts_with("<svg"), "{svg}");
            assert!(svg.trim_end().ends_with("</svg>"));
            well_formed(&svg).unwrap();
            assert_eq!(svg.matches("<polyline").count(), 3);
            assert!(svg.contains("p99 &lt;per&gt; 1 s &amp; more"));
            assert!(svg.contains("b &quot;quoted&quot;"));
            assert_eq!(svg.matches("stroke-dasharray").count(), 2);
            assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        }
    }

    #[test]
    fn log_axis_skips_non_positive_values_and_clips_at_the_maximum() {
        let svg = render(&chart(true));
        let first = svg
            .lines()
            .filter(|l| l.starts_with("<polyline"))
            .nth(1)
            .unwrap();
        let points = first
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        // (1, 0) is skipped on the log axis; 5000 is clipped to the top (1000 = a decade).
        assert_eq!(points.split(' ').count(), 2, "{points}");
        assert!(points.ends_with(&format!(",{TOP:.1}")), "{points}");
        // The checker itself rejects broken documents.
        assert!(well_formed("<svg><g></svg>").is_err());
        assert!(well_formed("<svg>a & b</svg>").is_err());
    }

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(7.0), 10.0);
        assert_eq!(nice_step(1.5), 2.0);
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(0.0), 1.0);
    }
}
