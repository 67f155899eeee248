//! The concurrency sweep as an SVG: logins/s and p99 against callers (log scale), one line per
//! scenario. Hand-written SVG so that the plot needs no extra crate and diffs as text.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::drive::Outcome;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 450.0;
const PANEL_W: f64 = 380.0;
const PANEL_H: f64 = 280.0;
const TOP: f64 = 70.0;
const LEFTS: [f64; 2] = [80.0, 560.0];
const COLORS: [&str; 6] = [
    "#1f77b4", "#2ca02c", "#d62728", "#ff7f0e", "#9467bd", "#8c564b",
];

/// Renders the sweep; `subtitle` says what was measured (date, commit, pool, round trip).
pub fn svg(outcomes: &[Outcome], subtitle: &str) -> String {
    // Scenario order as first seen.
    let mut order: Vec<&str> = Vec::new();
    let mut series: BTreeMap<&str, Vec<&Outcome>> = BTreeMap::new();
    for o in outcomes {
        if !order.contains(&o.description.as_str()) {
            order.push(&o.description);
        }
        series.entry(&o.description).or_default().push(o);
    }
    let mut xs: Vec<usize> = outcomes.iter().map(|o| o.concurrency.max(1)).collect();
    xs.sort_unstable();
    xs.dedup();
    let (x_min, x_max) = (
        xs.first().copied().unwrap_or(1) as f64,
        xs.last().copied().unwrap_or(1) as f64,
    );
    let x_of = |left: f64, c: usize| -> f64 {
        if x_max <= x_min {
            return left + PANEL_W / 2.0;
        }
        left + ((c.max(1) as f64).ln() - x_min.ln()) / (x_max.ln() - x_min.ln()) * PANEL_W
    };

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r##"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>
<text x="{}" y="22" font-size="16" text-anchor="middle">Logins against concurrent callers</text>
<text x="{}" y="40" text-anchor="middle" fill="#555">{}</text>"##,
        WIDTH / 2.0,
        WIDTH / 2.0,
        escape(subtitle)
    );
    type Value = fn(&Outcome) -> f64;
    let panels: [(&str, Value); 2] = [
        ("logins/s", |o| o.per_second),
        ("p99 latency, ms", |o| o.p99_ms),
    ];
    for (panel, (title, value)) in panels.iter().enumerate() {
        let left = LEFTS[panel];
        let y_max = nice_ceiling(outcomes.iter().map(value).fold(0.0, f64::max));
        let y_of = |v: f64| TOP + PANEL_H - v / y_max * PANEL_H;
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{title}</text>
<rect x="{left}" y="{TOP}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#999"/>"##,
            left + PANEL_W / 2.0,
            TOP - 8.0
        );
        for i in 0..=5 {
            let v = y_max * f64::from(i) / 5.0;
            let y = y_of(v);
            let _ = writeln!(
                out,
                r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                left + PANEL_W,
                left - 6.0,
                y + 4.0,
                format_tick(v)
            );
        }
        for &c in &xs {
            let x = x_of(left, c);
            let _ = writeln!(
                out,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{c}</text>"##,
                TOP + PANEL_H,
                TOP + PANEL_H + 16.0
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">concurrent callers (log scale)</text>"#,
            left + PANEL_W / 2.0,
            TOP + PANEL_H + 34.0
        );
        for (i, name) in order.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let mut points: Vec<&&Outcome> = series[name].iter().collect();
            points.sort_by_key(|o| o.concurrency);
            let path: Vec<String> = points
                .iter()
                .map(|o| format!("{:.1},{:.1}", x_of(left, o.concurrency), y_of(value(o))))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                path.join(" ")
            );
            for point in &path {
                let (x, y) = point.split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(out, r#"<circle cx="{x}" cy="{y}" r="3" fill="{color}"/>"#);
            }
        }
    }
    // Legend under the panels.
    let legend_y = TOP + PANEL_H + 56.0;
    for (i, name) in order.iter().enumerate() {
        let x = LEFTS[0] + (i % 3) as f64 * 300.0;
        let y = legend_y + (i / 3) as f64 * 18.0;
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="{:.1}" width="14" height="4" fill="{}"/><text x="{:.1}" y="{y:.1}">{}</text>"#,
            y - 5.0,
            COLORS[i % COLORS.len()],
            x + 20.0,
            escape(name)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// 1, 2 or 5 times a power of ten, at least `v` (and at least 1).
fn nice_ceiling(v: f64) -> f64 {
    if v <= 1.0 || !v.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * power)
}

fn format_tick(v: f64) -> String {
    if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(name: &str, c: usize, rate: f64, p99: f64) -> Outcome {
        Outcome {
            scenario: name.into(),
            description: name.into(),
            concurrency: c,
            statements_per_login: Some(1.0),
            logins: 1,
            per_second: rate,
            p50_ms: 1.0,
            p95_ms: 1.0,
            p99_ms: p99,
            missed_deadline: 0,
            missed_share: 0.0,
            pool_wait_ms_mean: None,
            depth_in_use: None,
            errors: BTreeMap::new(),
        }
    }

    #[test]
    fn one_line_per_scenario_in_both_panels_with_escaped_text() {
        let outcomes = [
            outcome("ours", 1, 100.0, 2.0),
            outcome("ours", 10, 900.0, 20.0),
            outcome("v2.32 <7>", 1, 80.0, 3.0),
            outcome("v2.32 <7>", 10, 400.0, 40.0),
        ];
        let svg = svg(&outcomes, "a & b");
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains("v2.32 &lt;7&gt;") && svg.contains("a &amp; b"));
        // Axis maximum of the throughput panel is the next 1-2-5 step.
        assert!(svg.contains(">1000</text>"));
        assert_eq!(nice_ceiling(3967.0), 5000.0);
        assert_eq!(nice_ceiling(0.2), 1.0);
    }
}
