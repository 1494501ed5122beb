//! PNG plots drawn with plotters' bitmap backend. Text is rendered through ab_glyph from a
//! TrueType file read at run time (Debian's fonts-dejavu-core), so no fontconfig is needed.

use std::path::Path;

use anyhow::{bail, Context, Result};
use plotters::prelude::*;

/// Where a sans-serif font is looked for.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

/// Registers the first font found under the name "sans-serif".
pub fn init_font() -> Result<()> {
    for f in FONTS {
        if let Ok(bytes) = std::fs::read(f) {
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return Ok(());
            }
        }
    }
    bail!("no usable font among {FONTS:?}: install Debian's fonts-dejavu-core")
}

/// One line of a panel.
pub struct Series {
    pub label: String,
    pub color: RGBColor,
    pub points: Vec<(f64, f64)>,
}

/// One chart of a figure.
pub struct Panel {
    pub title: String,
    pub x_desc: String,
    pub y_desc: String,
    /// Plot x on a log10 axis (labels stay in x's units).
    pub log_x: bool,
    /// Fixed y range; from the data (0 to the maximum) when `None`.
    pub y_range: Option<(f64, f64)>,
    pub series: Vec<Series>,
}

pub const PGRAFT: RGBColor = RGBColor(31, 119, 180);
pub const ETCD: RGBColor = RGBColor(214, 39, 40);

/// A palette for lines that are told apart by colour within one system.
pub fn shade(i: usize) -> RGBColor {
    const P: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(127, 127, 127),
    ];
    P[i % P.len()]
}

/// Draws `panels` side by side into `path` (PNG).
pub fn draw(path: &Path, panels: &[Panel]) -> Result<()> {
    let width = 640 * panels.len().max(1) as u32;
    let root = BitMapBackend::new(path, (width, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    // Side-by-side panels of the same quantity share the x axis, so they compare by eye.
    let shared = panels.windows(2).all(|w| w[0].x_desc == w[1].x_desc && w[0].log_x == w[1].log_x);
    let range = shared.then(|| x_range(panels)).flatten();
    for (panel, area) in panels.iter().zip(areas.iter()) {
        draw_panel(area, panel, range).with_context(|| format!("draw {}", panel.title))?;
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}")).with_context(|| format!("write {}", path.display()))
}

fn tx(log: bool, x: f64) -> f64 {
    if log {
        x.max(1e-9).log10()
    } else {
        x
    }
}

/// The x range (on the plotted, possibly log, scale) covering every panel's points.
fn x_range(panels: &[Panel]) -> Option<(f64, f64)> {
    let xs = panels
        .iter()
        .flat_map(|p| p.series.iter().flat_map(move |s| s.points.iter().map(move |(x, _)| tx(p.log_x, *x))));
    let (x0, x1) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    (x0 <= x1).then_some((x0, x1))
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    p: &Panel,
    range: Option<(f64, f64)>,
) -> Result<()> {
    let err = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("{e}");
    let (x0, mut x1) = range.or_else(|| x_range(std::slice::from_ref(p))).unwrap_or((0.0, 1.0));
    if (x1 - x0).abs() < 1e-9 {
        x1 = x0 + 1.0;
    }
    let pad = (x1 - x0) * 0.04;
    let (y0, y1) = p.y_range.unwrap_or_else(|| {
        let m = p.series.iter().flat_map(|s| s.points.iter().map(|(_, y)| *y)).fold(0.0, f64::max);
        (0.0, if m > 0.0 { m * 1.1 } else { 1.0 })
    });
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((x0 - pad)..(x1 + pad), y0..y1)
        .map_err(err)?;
    let log_x = p.log_x;
    let fmt_x = move |v: &f64| {
        let x = if log_x { 10f64.powf(*v) } else { *v };
        if x >= 100.0 || (x - x.round()).abs() < 1e-6 {
            format!("{x:.0}")
        } else if x >= 1.0 {
            format!("{x:.1}")
        } else {
            format!("{x:.2}")
        }
    };
    let fmt_y = |v: &f64| {
        if *v >= 10_000.0 {
            format!("{:.0}k", v / 1000.0)
        } else if *v >= 10.0 || *v == 0.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.2}")
        }
    };
    let mut mesh = chart.configure_mesh();
    if p.log_x {
        // Few labels on a log axis, so they fall on round decades.
        mesh.x_labels(5);
    }
    mesh.x_desc(&p.x_desc)
        .y_desc(&p.y_desc)
        .x_label_formatter(&fmt_x)
        .y_label_formatter(&fmt_y)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    for s in &p.series {
        let pts: Vec<(f64, f64)> = s.points.iter().map(|(x, y)| (tx(p.log_x, *x), *y)).collect();
        let color = s.color;
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(&s.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        if pts.len() <= 20 {
            chart.draw_series(pts.iter().map(|pt| Circle::new(*pt, 3, color.filled()))).map_err(err)?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// The CDF of sorted latencies (µs) as (milliseconds, fraction) points, thinned to at
/// most ~400 points but keeping the tail.
pub fn cdf(sorted_us: &[u32]) -> Vec<(f64, f64)> {
    let n = sorted_us.len();
    if n == 0 {
        return Vec::new();
    }
    let mut idx: Vec<usize> = (0..400).map(|i| i * n / 400).collect();
    // The tail in finer steps: 99%, 99.9%, ..., the maximum.
    for q in [0.99, 0.995, 0.999, 0.9995, 0.9999] {
        idx.push(((n as f64 * q) as usize).min(n - 1));
    }
    idx.push(n - 1);
    idx.sort_unstable();
    idx.dedup();
    idx.into_iter().map(|i| (f64::from(sorted_us[i]) / 1000.0, (i + 1) as f64 / n as f64)).collect()
}
