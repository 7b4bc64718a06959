//! Writes a sample TensorBoard log directory (scalars, grey PNG images, histograms) plus the
//! `expected.json` that `tests/python/check_events.py --expect` compares TensorBoard's reading to.
//!
//! ```text
//! cargo run -p quickdraw-data --example write_events -- /tmp/events-demo
//! python3 tests/python/check_events.py /tmp/events-demo/logs --expect /tmp/events-demo/expected.json
//! ```

use std::path::PathBuf;

use quickdraw_data::events::{EventWriter, histogram};
use serde_json::{Value, json};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: write_events OUT_DIR")?,
    );
    let logdir = out.join("logs");
    let mut w = EventWriter::create(&logdir)?;

    let mut scalars = serde_json::Map::new();
    let mut series = |tag: &str, points: Vec<(i64, f32)>, w: &mut EventWriter| {
        for &(step, v) in &points {
            w.add_scalar(tag, v, step).expect("write scalar");
        }
        let pts: Vec<Value> = points.iter().map(|&(s, v)| json!([s, v])).collect();
        scalars.insert(tag.to_string(), Value::Array(pts));
    };
    series(
        "loss/train",
        (0..20)
            .map(|s| (s * 10, 2.3 / (1.0 + s as f32 * 0.4)))
            .collect(),
        &mut w,
    );
    series(
        "accuracy/val",
        (1..=4).map(|s| (s * 50, 0.2 * s as f32 + 0.01)).collect(),
        &mut w,
    );
    series("lr", vec![(0, 1e-3), (100, 5e-4), (190, 1.25e-4)], &mut w);

    let mut images = serde_json::Map::new();
    let mut imgs = Vec::new();
    for (step, (wd, ht)) in [(0i64, (28u32, 28u32)), (100, (64, 32))] {
        let px: Vec<u8> = (0..wd * ht)
            .map(|i| {
                let (x, y) = (i % wd, i / wd);
                if (x / 4 + y / 4) % 2 == 0 {
                    255
                } else {
                    (x * 255 / wd) as u8
                }
            })
            .collect();
        w.add_png_gray("samples/raster", &px, wd, ht, step)?;
        imgs.push(json!({"step": step, "width": wd, "height": ht}));
    }
    images.insert("samples/raster".into(), Value::Array(imgs));

    let mut histograms = serde_json::Map::new();
    let mut hs = Vec::new();
    for step in [0i64, 100, 190] {
        // A deterministic bell-ish distribution that widens with the step.
        let spread = 0.05 + step as f32 / 1000.0;
        let values: Vec<f32> = (0..2000)
            .map(|i| {
                let u = (i as f32 + 0.5) / 2000.0;
                let z = (u - 0.5) * 2.0;
                spread * z * z.abs().sqrt() * 3.0 - 0.01
            })
            .collect();
        w.add_histogram("weights/conv1", &values, step)?;
        let h = histogram(values.iter().map(|&v| v as f64));
        hs.push(
            json!({"step": step, "num": h.num, "min": h.min, "max": h.max, "sum": h.sum,
                       "sum_squares": h.sum_squares, "buckets": h.bucket.len()}),
        );
    }
    histograms.insert("weights/conv1".into(), Value::Array(hs));
    w.flush()?;

    let expected = json!({
        "file_version": "brain.Event:2",
        "scalars": scalars,
        "images": images,
        "histograms": histograms,
    });
    std::fs::write(
        out.join("expected.json"),
        serde_json::to_string_pretty(&expected)?,
    )?;
    println!("{}", w.path().display());
    Ok(())
}
