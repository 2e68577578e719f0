//! Trend charts: `vitalwatch history … --plot trend.svg|trend.png`.
//!
//! Reads nothing itself: `history` hands it what it read from the warehouse (the
//! patient's readings per vital, NEWS2 scores, alert events) and the patient's threshold
//! bands from the catalog. One panel per vital, stacked on one time axis (UTC): the
//! readings as a line, every reference band of the patient's age shaded (green where no
//! alarm is due, yellow/orange/red by the band's alarm priority), alert events marked
//! where they happened, units on the value axis and a legend in each panel.

use std::path::Path;

use anyhow::{Context, bail};
use plotters::coord::Shift;
use plotters::coord::combinators::BindKeyPoints;
use plotters::prelude::*;
use vitalwatch_core::alert::Priority;
use vitalwatch_core::reference::ThresholdBand;

/// The font every label uses, compiled in so a chart looks the same on every machine
/// (DejaVu Sans Condensed, Bitstream Vera licence: `assets/DejaVu-LICENSE`).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSansCondensed.ttf");

/// Width of a chart, pixels (SVG user units).
pub const WIDTH: u32 = 1200;
/// Height of one panel.
pub const PANEL_HEIGHT: u32 = 280;
/// Height of the title strip.
const TITLE_HEIGHT: u32 = 50;

/// Shade of a band where no alarm is due.
pub const NORMAL_BAND: RGBColor = RGBColor(46, 160, 67);
/// Line of the readings.
const LINE: RGBColor = RGBColor(31, 119, 180);

/// The colour of an alarm priority (bands and event markers): IEC 60601-1-8's yellow
/// for low/medium is split so the two can be told apart on a chart.
pub fn priority_colour(p: Priority) -> RGBColor {
    match p {
        Priority::Low => RGBColor(222, 184, 0),
        Priority::Medium => RGBColor(240, 128, 0),
        Priority::High => RGBColor(214, 39, 40),
    }
}

/// Opacity of a shaded band.
pub const BAND_ALPHA: f64 = 0.22;

/// One panel: a series of readings with its bands and events.
#[derive(Debug, Clone, Default)]
pub struct Panel {
    /// Panel title, e.g. `heart_rate`.
    pub title: String,
    /// The value axis' unit, e.g. `/min`.
    pub unit: String,
    /// (microseconds since the epoch, value), oldest first.
    pub points: Vec<(i64, f64)>,
    /// Shaded ranges: (low, high, alarm priority or `None` for no alarm).
    pub bands: Vec<Band>,
    /// Alert events shown in this panel.
    pub events: Vec<Event>,
}

/// A shaded value range.
#[derive(Debug, Clone, PartialEq)]
pub struct Band {
    /// Lowest value, inclusive.
    pub low: f64,
    /// Highest value, inclusive (`f64::INFINITY` for none).
    pub high: f64,
    /// The alarm a value here raises, `None` for a normal band.
    pub priority: Option<Priority>,
}

impl Band {
    /// A reference-table band (its 9999 "no upper limit" read as unbounded).
    pub fn of(b: &ThresholdBand) -> Self {
        Band {
            low: b.low_range_value,
            high: if b.high_range_value >= 9999.0 {
                f64::INFINITY
            } else {
                b.high_range_value
            },
            priority: b.alert_flag.then_some(b.priority),
        }
    }
}

/// An alert event at an instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Microseconds since the epoch.
    pub at: i64,
    /// `triggered`, `acknowledged`, `resolved`, …
    pub kind: String,
    /// The alert's priority.
    pub priority: Priority,
}

/// Draws `panels` over `[from, to]` (microseconds) into `path`: SVG or PNG by its
/// extension. Returns the image's size.
pub fn render(
    path: &Path,
    title: &str,
    from: i64,
    to: i64,
    panels: &[Panel],
) -> anyhow::Result<(u32, u32)> {
    if panels.is_empty() {
        bail!("nothing to plot: no readings in the span");
    }
    // Registering twice is harmless; it fails only on a corrupt font.
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow::anyhow!("the built-in font is unreadable"))?;
    let height = TITLE_HEIGHT + PANEL_HEIGHT * panels.len() as u32;
    let size = (WIDTH, height);
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let to = to.max(from + 1);
    match ext.as_deref() {
        Some("svg") => {
            let root = SVGBackend::new(path, size).into_drawing_area();
            draw(&root, title, from, to, panels)?;
            root.present()
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Some("png") => {
            let root = BitMapBackend::new(path, size).into_drawing_area();
            draw(&root, title, from, to, panels)?;
            root.present()
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        _ => bail!(
            "--plot {}: the file must end in .svg or .png",
            path.display()
        ),
    }
    Ok(size)
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    from: i64,
    to: i64,
    panels: &[Panel],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("drawing failed: {e}");
    root.fill(&WHITE).map_err(err)?;
    let (top, rest) = root.split_vertically(TITLE_HEIGHT);
    top.titled(title, ("sans-serif", 24)).map_err(err)?;
    let long = to - from > 36 * 3_600_000_000;
    let time_label = move |t: &i64| {
        chrono::DateTime::from_timestamp_micros(*t)
            .map(|d| {
                d.format(if long { "%m-%d %H:%M" } else { "%H:%M:%S" })
                    .to_string()
            })
            .unwrap_or_default()
    };
    let day = |t: i64| {
        chrono::DateTime::from_timestamp_micros(t)
            .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default()
    };
    let x_desc = format!("time (UTC), {} to {}", day(from), day(to));
    let ticks = time_ticks(from, to);
    for (area, p) in rest.split_evenly((panels.len(), 1)).iter().zip(panels) {
        let (lo, hi) = value_range(p);
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{} ({})", p.title, p.unit), ("sans-serif", 18))
            .margin(8)
            .x_label_area_size(42)
            .y_label_area_size(64)
            .build_cartesian_2d((from..to).with_key_points(ticks.clone()), lo..hi)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_labels(8)
            .y_labels(6)
            .x_label_formatter(&time_label)
            .x_desc(x_desc.as_str())
            .y_desc(p.unit.as_str())
            .label_style(("sans-serif", 13))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(err)?;
        // Bands first (under the line), one legend entry per kind.
        let mut labelled: Vec<Option<Priority>> = Vec::new();
        for b in &closed_gaps(&p.bands) {
            let (b_lo, b_hi) = (b.low.max(lo), b.high.min(hi));
            if b_lo >= b_hi {
                continue;
            }
            let colour = b.priority.map_or(NORMAL_BAND, priority_colour);
            let s = chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(from, b_lo), (to, b_hi)],
                    colour.mix(BAND_ALPHA).filled(),
                )))
                .map_err(err)?;
            if !labelled.contains(&b.priority) {
                labelled.push(b.priority);
                let name = match b.priority {
                    None => "band: no alarm".to_owned(),
                    Some(pr) => format!("band: {} priority alarm", pr.as_str()),
                };
                s.label(name).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], colour.mix(0.5).filled())
                });
            }
        }
        chart
            .draw_series(LineSeries::new(
                p.points.iter().copied(),
                LINE.stroke_width(2),
            ))
            .map_err(err)?
            .label(format!("{} ({})", p.title, p.unit))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], LINE.stroke_width(2)));
        // Events: a thin line across the panel and a marker at the top, in the alarm's
        // colour: a triangle where an alarm sounded, a circle where it was acknowledged,
        // a cross where it resolved.
        let mut kinds: Vec<&str> = Vec::new();
        for e in &p.events {
            if e.at < from || e.at > to {
                continue;
            }
            let c = priority_colour(e.priority);
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(e.at, lo), (e.at, hi)],
                    c.mix(0.6).stroke_width(1),
                )))
                .map_err(err)?;
            let top = hi - (hi - lo) * 0.04;
            let kind = marker_kind(&e.kind);
            let s = match kind {
                "alarm" => chart.draw_series(std::iter::once(TriangleMarker::new(
                    (e.at, top),
                    7,
                    c.filled(),
                ))),
                "acknowledged" => {
                    chart.draw_series(std::iter::once(Circle::new((e.at, top), 5, c.filled())))
                }
                _ => chart.draw_series(std::iter::once(Cross::new(
                    (e.at, top),
                    5,
                    c.stroke_width(2),
                ))),
            }
            .map_err(err)?;
            if !kinds.contains(&kind) {
                kinds.push(kind);
                let grey = RGBColor(90, 90, 90);
                match kind {
                    "alarm" => s
                        .label("alert raised / escalated")
                        .legend(move |(x, y)| TriangleMarker::new((x + 7, y), 6, grey.filled())),
                    "acknowledged" => s
                        .label("alert acknowledged")
                        .legend(move |(x, y)| Circle::new((x + 7, y), 4, grey.filled())),
                    _ => s
                        .label("alert resolved")
                        .legend(move |(x, y)| Cross::new((x + 7, y), 4, grey.stroke_width(2))),
                };
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 12))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(160, 160, 160))
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

/// Time-axis ticks on round clock times (every 1, 5, 10, 15, 30 minutes, 1, 2, 3, 6, 12
/// hours or days), at most about eight.
fn time_ticks(from: i64, to: i64) -> Vec<i64> {
    const MIN: i64 = 60_000_000;
    let steps = [
        MIN / 6,
        MIN / 2,
        MIN,
        5 * MIN,
        10 * MIN,
        15 * MIN,
        30 * MIN,
        60 * MIN,
        120 * MIN,
        180 * MIN,
        360 * MIN,
        720 * MIN,
        1440 * MIN,
    ];
    let step = steps
        .into_iter()
        .find(|s| (to - from) / s <= 8)
        .unwrap_or_else(|| ((to - from) / 8).max(1));
    let first = from.div_euclid(step) * step + if from.rem_euclid(step) == 0 { 0 } else { step };
    (0..)
        .map(|k| first + k * step)
        .take_while(|&t| t <= to)
        .collect()
}

/// The bands in value order, each reaching up to the next when only the table's integer
/// step lies between them (60–100 then 101–120 is one surface, not a white stripe).
fn closed_gaps(bands: &[Band]) -> Vec<Band> {
    let mut out = bands.to_vec();
    out.sort_by(|a, b| a.low.total_cmp(&b.low));
    for i in 1..out.len() {
        let next = out[i].low;
        let prev = &mut out[i - 1];
        if next > prev.high && next - prev.high <= 1.0 {
            prev.high = next;
        }
    }
    out
}

/// Which marker an event gets.
fn marker_kind(event: &str) -> &'static str {
    match event {
        "acknowledged" => "acknowledged",
        "resolved" => "resolved",
        _ => "alarm",
    }
}

/// The value axis: every reading, and the finite edges of the bands next to them, with
/// a margin (a flat series still gets a visible range).
fn value_range(p: &Panel) -> (f64, f64) {
    let (mut lo, mut hi) = p
        .points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &(_, v)| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    // Show the edges of the band the readings are in and of the bands around them, so a
    // reading's distance to the next alarm is visible, but not a band far away (9999).
    let span = (hi - lo).max(1.0);
    for b in &p.bands {
        for edge in [b.low, b.high] {
            if edge.is_finite() && edge > lo - span && edge < hi + span {
                lo = lo.min(edge);
                hi = hi.max(edge);
            }
        }
    }
    let pad = ((hi - lo) * 0.08).max(0.5);
    (lo - pad, hi + pad)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A known series: heart rate climbing from 70 to 130 over an hour, the classic
    /// adult bands (normal 60–100, alarm above), one alert raised and resolved.
    fn panel() -> Panel {
        let t0 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z
        Panel {
            title: "heart_rate".into(),
            unit: "/min".into(),
            points: (0..=60)
                .map(|m| (t0 + m * 60_000_000, 70.0 + m as f64))
                .collect(),
            bands: vec![
                Band {
                    low: 0.0,
                    high: 59.0,
                    priority: Some(Priority::Medium),
                },
                Band {
                    low: 60.0,
                    high: 100.0,
                    priority: None,
                },
                Band {
                    low: 101.0,
                    high: f64::INFINITY,
                    priority: Some(Priority::High),
                },
            ],
            events: vec![
                Event {
                    at: t0 + 31 * 60_000_000,
                    kind: "triggered".into(),
                    priority: Priority::High,
                },
                Event {
                    at: t0 + 45 * 60_000_000,
                    kind: "acknowledged".into(),
                    priority: Priority::High,
                },
            ],
        }
    }

    fn span() -> (i64, i64) {
        let t0 = 1_767_225_600_000_000;
        (t0, t0 + 3_600_000_000)
    }

    fn hex(c: RGBColor) -> String {
        format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
    }

    #[test]
    fn an_svg_trend_has_its_bands_line_events_units_and_legend() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trend.svg");
        let (from, to) = span();
        let size = render(&path, "patient 3", from, to, &[panel(), panel()]).unwrap();
        assert_eq!(size, (WIDTH, TITLE_HEIGHT + 2 * PANEL_HEIGHT));
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(
            svg.contains(&format!("width=\"{}\"", size.0)),
            "{}",
            &svg[..200]
        );
        assert!(svg.contains(&format!("height=\"{}\"", size.1)));
        for c in [
            NORMAL_BAND,
            priority_colour(Priority::High),
            priority_colour(Priority::Medium),
            LINE,
        ] {
            assert!(svg.contains(&hex(c)), "colour {} missing", hex(c));
        }
        // Low priority has no band here: its colour must not appear.
        assert!(!svg.contains(&hex(priority_colour(Priority::Low))));
        for text in [
            "heart_rate (/min)",
            "band: no alarm",
            "band: high priority alarm",
            "alert raised",
            "alert acknowledged",
            "time (UTC)",
            "00:30:00",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
    }

    #[test]
    fn a_png_trend_has_its_size_and_the_band_colours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trend.png");
        let (from, to) = span();
        render(&path, "patient 3", from, to, &[panel()]).unwrap();
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(
            (info.width, info.height),
            (WIDTH, TITLE_HEIGHT + PANEL_HEIGHT)
        );
        assert_eq!(info.color_type, png::ColorType::Rgb);
        let pixels: std::collections::HashSet<[u8; 3]> = buf[..info.buffer_size()]
            .chunks_exact(3)
            .map(|p| [p[0], p[1], p[2]])
            .collect();
        // A band over white: white blended with the band colour at BAND_ALPHA.
        let over_white = |c: RGBColor| {
            [c.0, c.1, c.2]
                .map(|v| (f64::from(v) * BAND_ALPHA + 255.0 * (1.0 - BAND_ALPHA)).round() as i32)
        };
        for c in [NORMAL_BAND, priority_colour(Priority::High)] {
            let want = over_white(c);
            assert!(
                pixels.iter().any(|p| p
                    .iter()
                    .zip(want)
                    .all(|(&a, b)| (i32::from(a) - b).abs() <= 2)),
                "no pixel of band colour {want:?}"
            );
        }
        assert!(
            pixels.len() > 20,
            "an image, not a blank: {} colours",
            pixels.len()
        );
    }

    #[test]
    fn an_unknown_extension_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trend.jpg");
        let (from, to) = span();
        let e = render(&path, "p", from, to, &[panel()]).unwrap_err();
        assert!(e.to_string().contains(".svg or .png"), "{e}");
        assert!(!path.exists());
    }
}
