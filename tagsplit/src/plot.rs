//! Leak against load as a picture: the outstanding bytes of every split tag over a split's
//! samples, one line per patched site, drawn as SVG with `plotters`.
//!
//! A leaking site's line climbs from sample to sample; a site under load levels off (its
//! frees catch up with its allocations); an idle site stays at zero.
//!
//! ```no_run
//! # fn show(report: &tagsplit::split::Report) -> Result<(), tagsplit::plot::PlotError> {
//! tagsplit::plot::write_svg(report, std::path::Path::new("split.svg"))?;
//! # Ok(()) }
//! ```

use std::path::Path;

use crate::split::{Report, SiteResult, Verdict};

/// Width and height of the picture, in pixels.
pub const SIZE: (u32, u32) = (900, 480);

/// A picture that could not be drawn or written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The split patched no site, so there is nothing to draw.
    #[error("the split patched no site: nothing to plot")]
    NoSites,
    /// Drawing failed (for a file: it could not be written).
    #[error("drawing the plot: {0}")]
    Draw(String),
}

fn draw_err(e: impl std::fmt::Display) -> PlotError {
    PlotError::Draw(e.to_string())
}

/// The line of one site: `(sample, outstanding bytes)`, sample 0 being the baseline.
pub fn series(site: &SiteResult) -> Vec<(u32, u64)> {
    (0u32..)
        .zip(&site.samples)
        .map(|(i, usage)| (i, usage.bytes()))
        .collect()
}

/// The legend of one site: `Lea2  drv+0x1234  LEAK`.
pub fn label(site: &SiteResult) -> String {
    let verdict = match site.verdict {
        Verdict::Leak => "LEAK",
        Verdict::Load => "load",
        Verdict::Idle => "idle",
    };
    format!(
        "{}  {}+{:#x}  {verdict}",
        site.new_tag, site.hit.module, site.hit.offset
    )
}

/// `263168000` as `251.0 MiB`: bytes in the largest binary unit that keeps a digit before
/// the point.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    let name = UNITS.get(unit).copied().unwrap_or("B");
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {name}")
    }
}

/// Draws the report as an SVG document and returns it.
pub fn render_svg(report: &Report) -> Result<String, PlotError> {
    let mut svg = String::new();
    draw(
        report,
        plotters::prelude::SVGBackend::with_string(&mut svg, SIZE),
    )?;
    Ok(svg)
}

/// Draws the report into the SVG file `path` (replacing it).
pub fn write_svg(report: &Report, path: &Path) -> Result<(), PlotError> {
    draw(report, plotters::prelude::SVGBackend::new(path, SIZE))
}

/// One site's line: its legend, its points, and whether it leaks.
struct Line {
    name: String,
    points: Vec<(u32, u64)>,
    leak: bool,
}

fn draw(report: &Report, backend: plotters::prelude::SVGBackend<'_>) -> Result<(), PlotError> {
    use plotters::prelude::*;

    if report.sites.is_empty() {
        return Err(PlotError::NoSites);
    }
    let lines: Vec<Line> = report
        .sites
        .iter()
        .map(|s| Line {
            name: label(s),
            points: series(s),
            leak: s.verdict == Verdict::Leak,
        })
        .collect();
    let last = lines
        .iter()
        .filter_map(|l| l.points.last().map(|p| p.0))
        .max()
        .unwrap_or(0)
        .max(1);
    let top = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .max()
        .unwrap_or(0)
        .max(1);
    let root = backend.into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let title = format!(
        "Split of {} on {}: outstanding bytes per new tag",
        report.tag, report.target
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0u32..last, 0u64..top.saturating_add(top / 8))
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc(format!("sample (0 = baseline; run: {})", report.run))
        .y_desc("outstanding bytes")
        .y_label_formatter(&|v| human_bytes(*v))
        .x_labels(
            usize::try_from(last)
                .unwrap_or(usize::MAX)
                .saturating_add(1),
        )
        .draw()
        .map_err(draw_err)?;
    let leak_color = RGBColor(200, 30, 30);
    let palette = [
        RGBColor(30, 90, 200),
        RGBColor(20, 140, 60),
        RGBColor(230, 140, 0),
        RGBColor(120, 60, 170),
        RGBColor(90, 90, 90),
    ];
    let mut calm = palette.iter().cycle();
    for Line { name, points, leak } in lines {
        let color = if leak {
            leak_color
        } else {
            calm.next().copied().unwrap_or(BLACK)
        };
        let width = if leak { 3 } else { 2 };
        draw_line(&mut chart, points, color, width, name)?;
    }
    draw_legend(&mut chart)?;
    root.present().map_err(draw_err)?;
    Ok(())
}

/// Draws one labelled line with a dot at each point (the line `width` pixels wide), as
/// every chart of this project draws its series.
pub fn draw_line<'a, DB, X, Y>(
    chart: &mut plotters::prelude::ChartContext<'a, DB, plotters::prelude::Cartesian2d<X, Y>>,
    points: Vec<(X::ValueType, Y::ValueType)>,
    color: plotters::prelude::RGBColor,
    width: u32,
    name: impl Into<String>,
) -> Result<(), PlotError>
where
    DB: plotters::prelude::DrawingBackend + 'a,
    X: plotters::prelude::Ranged,
    Y: plotters::prelude::Ranged,
    X::ValueType: Clone + 'static,
    Y::ValueType: Clone + 'static,
{
    use plotters::prelude::*;

    chart
        .draw_series(LineSeries::new(points.clone(), color.stroke_width(width)))
        .map_err(draw_err)?
        .label(name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    chart
        .draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 3, color.filled())),
        )
        .map_err(draw_err)?;
    Ok(())
}

/// Draws the legend of the lines drawn with [`draw_line`], in the upper left corner.
pub fn draw_legend<'a, DB, X, Y>(
    chart: &mut plotters::prelude::ChartContext<'a, DB, plotters::prelude::Cartesian2d<X, Y>>,
) -> Result<(), PlotError>
where
    DB: plotters::prelude::DrawingBackend + 'a,
    X: plotters::prelude::Ranged,
    Y: plotters::prelude::Ranged,
{
    use plotters::prelude::*;

    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()
        .map_err(draw_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_as_people_write_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(5120), "5.0 KiB");
        assert_eq!(human_bytes(263_168_000), "251.0 MiB");
        assert_eq!(human_bytes(u64::MAX), "16777216.0 TiB");
    }
}
