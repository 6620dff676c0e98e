//! Cost charts as SVG, made on the server: one chart per currency (never two
//! currencies on one axis), a stacked bar per period split by provider or
//! country, the provider's actual cost solid and the price table's estimate
//! hatched, so the two stay apart in grey print too. Every label is escaped
//! here: the SVG is put into the page as it is.

use std::fmt::Write as _;

use crate::domain::money::format_micros;

/// One series (a provider or a country) in one bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    /// Its name (the legend's label).
    pub name: String,
    /// The provider's cost, in micro-units.
    pub actual_micros: i64,
    /// The estimated cost, in micro-units.
    pub estimated_micros: i64,
}

/// One period's bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bar {
    /// The period (`2026-11-02`, `2026-11`).
    pub label: String,
    /// Its parts, in legend order.
    pub parts: Vec<Series>,
}

/// Colours that stay apart in print (and in grey, with the hatching).
const PALETTE: [&str; 8] = [
    "#1f5fa8", "#c8581b", "#2e8540", "#8e3d99", "#a3821a", "#177e89", "#b0304a", "#5b5b5b",
];

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 280.0;
const LEFT: f64 = 84.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 64.0;

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A round axis maximum at or above `max`, and its tick step.
fn axis(max: i64) -> (i64, i64) {
    if max <= 0 {
        return (1_000_000, 250_000);
    }
    let raw = max as f64 / 4.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
        .ceil() as i64;
    let step = step.max(1);
    let top = (max + step - 1) / step * step;
    (top, step)
}

/// The chart of `bars` in `currency`, with `series` (names in legend order).
/// `id` makes the hatch patterns' ids unique on a page.
pub fn cost_chart(id: usize, currency: &str, series: &[String], bars: &[Bar]) -> String {
    let max = bars
        .iter()
        .map(|b| {
            b.parts
                .iter()
                .map(|p| p.actual_micros.saturating_add(p.estimated_micros))
                .fold(0i64, i64::saturating_add)
        })
        .max()
        .unwrap_or(0);
    let (top, step) = axis(max);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let y = |v: i64| TOP + plot_h - (v as f64 / top as f64) * plot_h;
    let cur = escape(currency);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="chart-{id}-title"><title id="chart-{id}-title">Cost in {cur} per period</title><defs>"#
    );
    for (i, colour) in PALETTE.iter().enumerate() {
        let _ = write!(
            s,
            r##"<pattern id="hatch-{id}-{i}" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="#ffffff"/><rect width="3" height="6" fill="{colour}"/></pattern>"##
        );
    }
    s.push_str("</defs>");
    // Grid and y axis labels.
    let mut v = 0;
    while v <= top {
        let yy = y(v);
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#d0d4d9" stroke-width="1"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="12" fill="#333">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            yy + 4.0,
            escape(&format_micros(v, 2))
        );
        v += step;
    }
    let _ = write!(
        s,
        r##"<text x="14" y="{:.1}" font-size="12" fill="#333" transform="rotate(-90 14 {:.1})" text-anchor="middle">{cur}</text>"##,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    let n = bars.len().max(1) as f64;
    let slot = plot_w / n;
    let bar_w = (slot * 0.7).clamp(2.0, 48.0);
    let every = ((bars.len() as f64 / 12.0).ceil() as usize).max(1);
    for (i, bar) in bars.iter().enumerate() {
        let x = LEFT + slot * i as f64 + (slot - bar_w) / 2.0;
        let mut base = 0i64;
        for part in &bar.parts {
            let colour_index =
                series.iter().position(|n| n == &part.name).unwrap_or(0) % PALETTE.len();
            for (amount, fill, kind) in [
                (
                    part.actual_micros,
                    PALETTE[colour_index].to_owned(),
                    "actual",
                ),
                (
                    part.estimated_micros,
                    format!("url(#hatch-{id}-{colour_index})"),
                    "estimate",
                ),
            ] {
                if amount <= 0 {
                    continue;
                }
                let y0 = y(base);
                let y1 = y(base.saturating_add(amount));
                let _ = write!(
                    s,
                    r##"<rect x="{x:.1}" y="{y1:.1}" width="{bar_w:.1}" height="{:.1}" fill="{fill}" stroke="{}" stroke-width="1"><title>{} {} {}: {} {cur}</title></rect>"##,
                    (y0 - y1).max(0.5),
                    PALETTE[colour_index],
                    escape(&bar.label),
                    escape(&part.name),
                    kind,
                    escape(&format_micros(amount, 2))
                );
                base = base.saturating_add(amount);
            }
        }
        if i % every == 0 {
            let lx = x + bar_w / 2.0;
            let ly = TOP + plot_h + 14.0;
            let _ = write!(
                s,
                r##"<text x="{lx:.1}" y="{ly:.1}" font-size="11" fill="#333" text-anchor="end" transform="rotate(-40 {lx:.1} {ly:.1})">{}</text>"##,
                escape(&bar.label)
            );
        }
    }
    let _ = write!(
        s,
        r##"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333" stroke-width="1"/></svg>"##,
        TOP + plot_h,
        WIDTH - RIGHT,
        TOP + plot_h
    );
    s
}

/// The legend's entries: each series' colour index, name, and the swatch
/// ids for actual and estimate.
pub fn legend(series: &[String]) -> Vec<(usize, String)> {
    series
        .iter()
        .enumerate()
        .map(|(i, n)| (i % PALETTE.len(), n.clone()))
        .collect()
}

/// A small SVG swatch for the legend: solid (actual) or hatched (estimate).
pub fn swatch(id: usize, colour_index: usize, estimate: bool) -> String {
    let colour = PALETTE[colour_index % PALETTE.len()];
    let fill = if estimate {
        format!("url(#swatch-{id}-{colour_index})")
    } else {
        colour.to_owned()
    };
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" class="swatch" viewBox="0 0 16 16" aria-hidden="true"><defs><pattern id="swatch-{id}-{colour_index}" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="#ffffff"/><rect width="3" height="6" fill="{colour}"/></pattern></defs><rect x="1" y="1" width="14" height="14" fill="{fill}" stroke="{colour}"/></svg>"##
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_in_a_chart_are_escaped() {
        let svg = cost_chart(
            0,
            "KES",
            &["<script>x</script>".to_owned()],
            &[Bar {
                label: "2026-11-01\" onload=\"x".into(),
                parts: vec![Series {
                    name: "<script>x</script>".into(),
                    actual_micros: 800_000,
                    estimated_micros: 0,
                }],
            }],
        );
        assert!(!svg.contains("<script>"), "{svg}");
        assert!(svg.contains("&lt;script&gt;"), "{svg}");
        assert!(!svg.contains("\" onload=\""), "{svg}");
    }

    #[test]
    fn the_axis_is_round_and_covers_the_largest_bar() {
        assert_eq!(axis(1_600_000), (2_000_000, 500_000));
        assert_eq!(axis(7_900), (8_000, 2_000));
        let (top, step) = axis(123_456_789);
        assert!(top >= 123_456_789 && top % step == 0, "{top} {step}");
    }
}
