//! The loss curve as a PNG: per-step losses (and optionally the learning rate) drawn on a
//! white canvas with a title, axes, grid lines and tick labels, in a built-in 5x7 bitmap font
//! ([`font`]), encoded with the `png` crate and written through a temporary file and a rename.
//!
//! Layout: [`WIDTH`] x [`HEIGHT`] pixels; the plot area is [`plot_area`]. The loss is drawn in
//! [`LOSS_COLOR`] (left axis), the learning rate in [`LR_COLOR`] (right axis). Non-finite
//! losses are left out of the line.

mod font;

use crate::{Result, TrainError};
use serde_json::Value;
use std::path::Path;

pub const WIDTH: usize = 800;
pub const HEIGHT: usize = 480;
pub const LOSS_COLOR: [u8; 3] = [31, 119, 180];
pub const LR_COLOR: [u8; 3] = [255, 127, 14];
/// Darker shades for the axis names and LR tick labels, so that only the lines use the series colors.
const LOSS_TEXT: [u8; 3] = [20, 80, 130];
const LR_TEXT: [u8; 3] = [190, 90, 10];
const WHITE: [u8; 3] = [255, 255, 255];
const BLACK: [u8; 3] = [0, 0, 0];
const GRID: [u8; 3] = [225, 225, 225];

const LEFT: usize = 80;
const RIGHT: usize = 24;
const RIGHT_WITH_LR: usize = 80;
const TOP: usize = 44;
const BOTTOM: usize = 52;

/// The plot area `(x0, y0, x1, y1)` in pixels (x to the right, y down), inclusive.
pub fn plot_area(with_lr: bool) -> (usize, usize, usize, usize) {
    let right = if with_lr { RIGHT_WITH_LR } else { RIGHT };
    (LEFT, TOP, WIDTH - 1 - right, HEIGHT - 1 - BOTTOM)
}

/// One record of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRecord {
    pub step: usize,
    pub loss: f64,
    /// `learning_rate`, when the record has it.
    pub lr: Option<f64>,
}

impl From<&crate::train::StepLog> for MetricRecord {
    fn from(l: &crate::train::StepLog) -> Self {
        MetricRecord { step: l.step, loss: l.loss, lr: Some(l.lr) }
    }
}

/// `(step, loss)` of every record of a `metrics.jsonl` file.
pub fn read_metrics(path: &Path) -> Result<Vec<(usize, f64)>> {
    Ok(read_metric_records(path)?.into_iter().map(|r| (r.step, r.loss)).collect())
}

/// Every record of a `metrics.jsonl` file (one JSON object per line, blank lines skipped):
/// `step` (a non-negative integer), `loss` (a number; `null` or a string like `"NaN"` reads
/// as NaN) and optionally `learning_rate`. Errors name the file, the line and the field.
pub fn read_metric_records(path: &Path) -> Result<Vec<MetricRecord>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |msg: String| TrainError::Data(format!("{}:{}: {msg}", path.display(), i + 1));
        let v: Value = serde_json::from_str(line).map_err(|e| at(format!("invalid JSON: {e}")))?;
        let step = match v.get("step") {
            Some(s) => s.as_u64().ok_or_else(|| at(format!("\"step\" is {s}, not a non-negative integer")))?,
            None => return Err(at("missing field \"step\"".into())),
        };
        let loss = match v.get("loss") {
            Some(Value::Null) => f64::NAN,
            Some(Value::String(s)) => s.parse().map_err(|_| at(format!("\"loss\" is \"{s}\", not a number")))?,
            Some(l) => l.as_f64().ok_or_else(|| at(format!("\"loss\" is {l}, not a number")))?,
            None => return Err(at("missing field \"loss\"".into())),
        };
        let lr = v.get("learning_rate").and_then(Value::as_f64);
        out.push(MetricRecord { step: step as usize, loss, lr });
    }
    Ok(out)
}

/// Writes the loss curve of `points` (step, loss) with `title` as a PNG at `path`.
pub fn write_loss_png(path: &Path, points: &[(usize, f64)], title: &str) -> Result<()> {
    let records: Vec<MetricRecord> = points.iter().map(|&(step, loss)| MetricRecord { step, loss, lr: None }).collect();
    write_metrics_png(path, &records, title)
}

/// Writes the loss curve of `records`, with the learning rate on a right-hand axis when any
/// record has one, as a PNG at `path`.
pub fn write_metrics_png(path: &Path, records: &[MetricRecord], title: &str) -> Result<()> {
    let bytes = render_png(records, title).map_err(|m| TrainError::Config(format!("{}: {m}", path.display())))?;
    let tmp = crate::st::tmp_path(path);
    std::fs::write(&tmp, bytes).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

/// The PNG bytes of the chart.
pub fn render_png(records: &[MetricRecord], title: &str) -> std::result::Result<Vec<u8>, String> {
    let canvas = render(records, title)?;
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, WIDTH as u32, HEIGHT as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().map_err(|e| format!("PNG encoding: {e}"))?;
    w.write_image_data(&canvas.rgb).map_err(|e| format!("PNG encoding: {e}"))?;
    w.finish().map_err(|e| format!("PNG encoding: {e}"))?;
    Ok(out)
}

/// An RGB image.
struct Canvas {
    rgb: Vec<u8>,
}

impl Canvas {
    fn new() -> Canvas {
        Canvas { rgb: WHITE.repeat(WIDTH * HEIGHT) }
    }
    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if (0..WIDTH as i64).contains(&x) && (0..HEIGHT as i64).contains(&y) {
            let i = 3 * (y as usize * WIDTH + x as usize);
            self.rgb[i..i + 3].copy_from_slice(&c);
        }
    }
    fn hline(&mut self, x0: usize, x1: usize, y: usize, c: [u8; 3]) {
        (x0..=x1).for_each(|x| self.set(x as i64, y as i64, c));
    }
    fn vline(&mut self, x: usize, y0: usize, y1: usize, c: [u8; 3]) {
        (y0..=y1).for_each(|y| self.set(x as i64, y as i64, c));
    }
    /// A 2-pixel-wide line from `a` to `b`, clipped to `clip` (x0, y0, x1, y1).
    fn line(&mut self, a: (f64, f64), b: (f64, f64), c: [u8; 3], clip: (usize, usize, usize, usize)) {
        let n = (b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil().max(1.0) as usize;
        for i in 0..=n {
            let t = i as f64 / n as f64;
            let (x, y) = ((a.0 + t * (b.0 - a.0)).round() as i64, (a.1 + t * (b.1 - a.1)).round() as i64);
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                let (px, py) = (x + dx, y + dy);
                if px >= clip.0 as i64 && px <= clip.2 as i64 && py >= clip.1 as i64 && py <= clip.3 as i64 {
                    self.set(px, py, c);
                }
            }
        }
    }
    /// `text` with its top-left corner at (x, y), each font pixel `scale` pixels wide.
    fn text(&mut self, text: &str, x: i64, y: i64, scale: usize, c: [u8; 3]) {
        for (k, ch) in text.chars().enumerate() {
            let gx = x + (k * (font::WIDTH + 1) * scale) as i64;
            for (row, bits) in font::glyph(ch).iter().enumerate() {
                for (col, bit) in bits.bytes().enumerate() {
                    if bit == b'#' {
                        for sy in 0..scale {
                            for sx in 0..scale {
                                self.set(gx + (col * scale + sx) as i64, y + (row * scale + sy) as i64, c);
                            }
                        }
                    }
                }
            }
        }
    }
}

fn text_width(text: &str, scale: usize) -> usize {
    (text.chars().count() * (font::WIDTH + 1)).saturating_sub(1) * scale
}

/// About `n` round tick values covering `[lo, hi]`, and the step between them.
fn ticks(lo: f64, hi: f64, n: usize) -> (Vec<f64>, f64) {
    let raw = (hi - lo) / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    ((first..=last).map(|k| k as f64 * step).collect(), step)
}

/// A tick label: plain with as many decimals as the step needs, or scientific for tiny or
/// huge values.
fn label(v: f64, step: f64) -> String {
    let a = v.abs();
    if a < step * 1e-6 {
        return "0".into();
    }
    if !(1e-3..1e6).contains(&a) {
        return format!("{v:.1e}");
    }
    let decimals = if step >= 1.0 { 0 } else { (-step.log10()).ceil() as usize };
    format!("{v:.decimals$}")
}

/// A value range padded by 5% (a flat range by ±0.5, or ±5% of its value).
fn padded(lo: f64, hi: f64) -> (f64, f64) {
    if hi > lo {
        let pad = 0.05 * (hi - lo);
        (lo - pad, hi + pad)
    } else {
        let pad = if lo == 0.0 { 0.5 } else { 0.05 * lo.abs() };
        (lo - pad, hi + pad)
    }
}

fn range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.filter(|v| v.is_finite()).fold(None, |r, v| match r {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

fn render(records: &[MetricRecord], title: &str) -> std::result::Result<Canvas, String> {
    let (loss_lo, loss_hi) =
        range(records.iter().map(|r| r.loss)).ok_or("no finite loss values to plot (is the metrics file empty?)")?;
    let lr_range = range(records.iter().filter_map(|r| r.lr));
    let with_lr = lr_range.is_some();
    let area = plot_area(with_lr);
    let (x0, y0, x1, y1) = area;
    let steps = records.iter().map(|r| r.step as f64);
    let (s_lo, s_hi) = (steps.clone().fold(f64::INFINITY, f64::min), steps.fold(f64::NEG_INFINITY, f64::max));
    let (s_lo, s_hi) = if s_hi > s_lo { (s_lo, s_hi) } else { (s_lo - 1.0, s_hi + 1.0) };
    let (l_lo, l_hi) = padded(loss_lo, loss_hi);
    let px = |s: f64| x0 as f64 + (s - s_lo) / (s_hi - s_lo) * (x1 - x0) as f64;
    let py = |v: f64, lo: f64, hi: f64| y1 as f64 - (v - lo) / (hi - lo) * (y1 - y0) as f64;

    let mut c = Canvas::new();
    // Grid and tick labels.
    let (yt, ystep) = ticks(l_lo, l_hi, 6);
    for v in &yt {
        let y = py(*v, l_lo, l_hi).round() as usize;
        c.hline(x0, x1, y, GRID);
        c.hline(x0 - 5, x0, y, BLACK);
        let t = label(*v, ystep);
        c.text(&t, (x0 - 8 - text_width(&t, 1)) as i64, y as i64 - 3, 1, BLACK);
    }
    // Steps are integers: no tick between two of them.
    let (xt, xstep) = match ticks(s_lo, s_hi, 8) {
        (_, st) if st < 1.0 => ((s_lo.ceil() as i64..=s_hi.floor() as i64).map(|v| v as f64).collect(), 1.0),
        t => t,
    };
    for s in &xt {
        let x = px(*s).round() as usize;
        c.vline(x, y0, y1, GRID);
        c.vline(x, y1, y1 + 5, BLACK);
        let t = label(*s, xstep);
        c.text(&t, x as i64 - text_width(&t, 1) as i64 / 2, (y1 + 9) as i64, 1, BLACK);
    }
    // Axes, title and axis names.
    c.hline(x0, x1, y1, BLACK);
    c.vline(x0, y0, y1, BLACK);
    c.text(title, (WIDTH / 2) as i64 - text_width(title, 2) as i64 / 2, 12, 2, BLACK);
    c.text("STEP", ((x0 + x1) / 2) as i64 - text_width("STEP", 1) as i64 / 2, (y1 + 26) as i64, 1, BLACK);
    c.text("LOSS", 8, (y0 - 16) as i64, 1, LOSS_TEXT);

    if let Some((lo, hi)) = lr_range {
        let (r_lo, r_hi) = padded(lo, hi);
        c.vline(x1, y0, y1, BLACK);
        let (rt, rstep) = ticks(r_lo, r_hi, 6);
        for v in &rt {
            let y = py(*v, r_lo, r_hi).round() as usize;
            c.hline(x1, x1 + 5, y, BLACK);
            c.text(&label(*v, rstep), (x1 + 8) as i64, y as i64 - 3, 1, LR_TEXT);
        }
        c.text("LR", (WIDTH - 8 - text_width("LR", 1)) as i64, (y0 - 16) as i64, 1, LR_TEXT);
        let pts: Vec<(f64, f64)> = records
            .iter()
            .filter_map(|r| Some((px(r.step as f64), py(r.lr.filter(|v| v.is_finite())?, r_lo, r_hi))))
            .collect();
        draw_series(&mut c, &pts, LR_COLOR, area);
    }
    let pts: Vec<(f64, f64)> =
        records.iter().filter(|r| r.loss.is_finite()).map(|r| (px(r.step as f64), py(r.loss, l_lo, l_hi))).collect();
    draw_series(&mut c, &pts, LOSS_COLOR, area);
    Ok(c)
}

/// Joins `pts` by lines; a single point is drawn as a small square.
fn draw_series(c: &mut Canvas, pts: &[(f64, f64)], color: [u8; 3], area: (usize, usize, usize, usize)) {
    if let [p] = pts {
        c.line((p.0 - 2.0, p.1), (p.0 + 2.0, p.1), color, area);
        c.line((p.0, p.1 - 2.0), (p.0, p.1 + 2.0), color, area);
    }
    for w in pts.windows(2) {
        c.line(w[0], w[1], color, area);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_inside() {
        let (t, s) = ticks(0.23, 3.1, 6);
        assert_eq!(s, 0.5);
        assert_eq!(t, vec![0.5, 1.0, 1.5, 2.0, 2.5, 3.0]);
        assert_eq!(label(2.5, 0.5), "2.5");
        assert_eq!(label(40.0, 10.0), "40");
        assert_eq!(label(2e-4, 1e-4), "2.0e-4");
        assert_eq!(label(0.0, 5e-5), "0");
        assert_eq!(label(-1e-17, 0.5), "0");
    }
}
