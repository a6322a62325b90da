//! The loss-curve PNG decoded back: size, and where the line's pixels are.

use std::path::Path;
use trainer::plot::{
    plot_area, read_metric_records, read_metrics, write_loss_png, write_metrics_png, MetricRecord, HEIGHT, LOSS_COLOR,
    LR_COLOR, WIDTH,
};

/// Width, height and RGB bytes of a PNG file.
fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut reader = png::Decoder::new(file).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

/// Pixels of `color` in each quadrant of the plot area: [upper-left, upper-right,
/// lower-left, lower-right].
fn quadrants(rgb: &[u8], color: [u8; 3], with_lr: bool) -> [usize; 4] {
    let (x0, y0, x1, y1) = plot_area(with_lr);
    let (xm, ym) = ((x0 + x1) / 2, (y0 + y1) / 2);
    let mut q = [0; 4];
    for y in 0..HEIGHT {
        for x in 0..WIDTH {
            let i = 3 * (y * WIDTH + x);
            if rgb[i..i + 3] == color {
                assert!(
                    (x0..=x1).contains(&x) && (y0..=y1).contains(&y),
                    "line pixel outside the plot area at ({x}, {y})"
                );
                q[(x > xm) as usize + 2 * (y > ym) as usize] += 1;
            }
        }
    }
    q
}

fn falling() -> Vec<(usize, f64)> {
    (1..=60).map(|s| (s, 0.6 + 2.4 * (-(s as f64) / 12.0).exp())).collect()
}

#[test]
fn plot_falling_loss_runs_from_upper_left_to_lower_right() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loss.png");
    write_loss_png(&path, &falling(), "demo loss").unwrap();
    assert!(!dir.path().join("loss.png.tmp").exists());
    let (w, h, rgb) = decode(&path);
    assert_eq!((w as usize, h as usize), (WIDTH, HEIGHT));
    let [ul, ur, ll, lr] = quadrants(&rgb, LOSS_COLOR, false);
    println!("loss pixels per quadrant: UL {ul} UR {ur} LL {ll} LR {lr}");
    assert!(ul > 50 && lr > 50, "the line starts high and ends low");
    assert_eq!(ur, 0, "a falling line has nothing in the upper right");
    // Text is drawn: dark pixels above the plot area (title) and left of it (tick labels).
    let (x0, y0, _, _) = plot_area(false);
    let dark = |xr: std::ops::Range<usize>, yr: std::ops::Range<usize>| {
        yr.flat_map(|y| xr.clone().map(move |x| (x, y))).filter(|&(x, y)| rgb[3 * (y * WIDTH + x)] < 64).count()
    };
    assert!(dark(0..WIDTH, 0..y0) > 100, "title");
    assert!(dark(0..x0 - 4, y0..HEIGHT) > 100, "tick labels");
}

#[test]
fn plot_rising_loss_fails_the_falling_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("up.png");
    let rising: Vec<(usize, f64)> = falling().into_iter().map(|(s, l)| (61 - s, l)).collect();
    let mut rising = rising;
    rising.sort_by_key(|p| p.0);
    write_loss_png(&path, &rising, "up").unwrap();
    let [ul, ur, _, lr] = quadrants(&decode(&path).2, LOSS_COLOR, false);
    assert!(ur > 50 && ul == 0 && lr > 0, "UL {ul} UR {ur} LR {lr}");
}

#[test]
fn plot_learning_rate_on_its_own_axis() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lr.png");
    // Warm-up then linear decay: the LR line is high in the middle of the run.
    let recs: Vec<MetricRecord> = falling()
        .into_iter()
        .map(|(step, loss)| {
            let lr = if step <= 5 { 2e-4 * step as f64 / 5.0 } else { 2e-4 * (60 - step) as f64 / 55.0 };
            MetricRecord { step, loss, lr: Some(lr) }
        })
        .collect();
    write_metrics_png(&path, &recs, "with lr").unwrap();
    // To look at it: FERROTUNE_PLOT_OUT=/tmp/lr.png cargo test -p trainer --test plot
    if let Some(out) = std::env::var_os("FERROTUNE_PLOT_OUT") {
        std::fs::copy(&path, out).unwrap();
    }
    let rgb = decode(&path).2;
    let [ul, ur, ll, lr] = quadrants(&rgb, LR_COLOR, true);
    assert!(ul > 20 && ur > 0 && ll > 0 && lr > 20, "UL {ul} UR {ur} LL {ll} LR {lr}");
    assert!(quadrants(&rgb, LOSS_COLOR, true)[0] > 50);
}

#[test]
fn plot_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = write_loss_png(&dir.path().join("x.png"), &[(1, f64::NAN)], "t").unwrap_err().to_string();
    assert!(e.contains("x.png") && e.contains("no finite loss"), "{e}");
    let e = write_loss_png(&dir.path().join("missing/x.png"), &falling(), "t").unwrap_err().to_string();
    assert!(e.contains("missing"), "{e}");
    // One point, and a NaN among finite values, still draw.
    write_loss_png(&dir.path().join("one.png"), &[(3, 1.5)], "t").unwrap();
    write_loss_png(&dir.path().join("nan.png"), &[(1, 2.0), (2, f64::NAN), (3, 1.0)], "t").unwrap();
}

#[test]
fn plot_reads_metrics_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.jsonl");
    std::fs::write(
        &path,
        "{\"step\": 1, \"loss\": 2.5, \"learning_rate\": 0.0001}\n\n{\"step\": 2, \"loss\": 2.0, \"learning_rate\": 0.0002}\n",
    )
    .unwrap();
    assert_eq!(read_metrics(&path).unwrap(), vec![(1, 2.5), (2, 2.0)]);
    assert_eq!(read_metric_records(&path).unwrap()[1].lr, Some(0.0002));
    for (text, want) in [
        ("{\"step\": 1, \"loss\": 2.5}\n{\"step\": 2, \"loss\": 2.0\n", "metrics.jsonl:2: invalid JSON"),
        ("{\"step\": 1}\n", "metrics.jsonl:1: missing field \"loss\""),
        ("{\"loss\": 1}\n", "metrics.jsonl:1: missing field \"step\""),
        ("{\"step\": -3, \"loss\": 1}\n", "metrics.jsonl:1: \"step\""),
        ("{\"step\": 1, \"loss\": \"high\"}\n", "metrics.jsonl:1: \"loss\""),
    ] {
        std::fs::write(&path, text).unwrap();
        let e = read_metrics(&path).unwrap_err().to_string();
        assert!(e.contains(want), "{e} (wanted {want})");
    }
    let e = read_metrics(&dir.path().join("absent.jsonl")).unwrap_err().to_string();
    assert!(e.contains("absent.jsonl"), "{e}");
}
