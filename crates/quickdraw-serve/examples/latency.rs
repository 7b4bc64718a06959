//! Single-image latency of `Predictor` on a model shaped like the lecture's CNN (64x64 input,
//! conv 10x10x32 / pool 4, conv 5x5x64 / pool 4, dense 256, dense C; random weights).
//!
//! `cargo run -p quickdraw-serve --example latency -- [--classes 345] [--size 64] [--iters 300] [--batch 1] [--keep DIR]`
//! (the dev profile already builds tract with opt-level 3; `--release` changes little).

use std::time::Instant;

use quickdraw_data::{Ink, Stroke};
use quickdraw_serve::{Predictor, testing};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn stats(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    format!(
        "median {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, mean {:.3} ms, min {:.3} ms (n={})",
        q(0.5),
        q(0.9),
        q(0.99),
        mean,
        v[0],
        v.len()
    )
}

fn main() {
    let classes = arg("--classes", 345);
    let size = arg("--size", 64) as u32;
    let iters = arg("--iters", 300);
    let batch = arg("--batch", 1).max(1);
    let tmp = tempfile::tempdir().expect("temp dir");
    // `--keep DIR` writes the export to DIR/1 (to try `model show`, `serve` on it) instead.
    let args: Vec<String> = std::env::args().collect();
    let base = args
        .iter()
        .position(|a| a == "--keep")
        .and_then(|i| args.get(i + 1))
        .map(std::path::PathBuf::from);
    let t = Instant::now();
    let dir =
        testing::write_lecture_cnn_export(base.as_deref().unwrap_or(tmp.path()), 1, size, classes)
            .expect("write export");
    let onnx_bytes = std::fs::metadata(dir.join("model.onnx"))
        .map(|m| m.len())
        .unwrap_or(0);
    // ORT_DYLIB_PATH=/path/to/libonnxruntime.so measures ONNX Runtime instead of tract.
    let p = Predictor::load_with(&dir, &quickdraw_serve::Runtime::from_env()).expect("load");
    println!(
        "lecture CNN {size}x{size}, {classes} classes, model.onnx {:.1} MB, {}: loaded and optimised in {:.0} ms ({:?}, {} plan nodes)",
        onnx_bytes as f64 / 1e6,
        p.runtime_name(),
        t.elapsed().as_secs_f64() * 1e3,
        p.batch(),
        p.plan_nodes()
    );
    // A drawing through the whole serving path: preprocess (simplify, rasterise) + inference.
    let mut s = Stroke::new(
        (0..60)
            .map(|i| 100.0 + 80.0 * (i as f32 * 0.1).cos())
            .collect(),
        (0..60)
            .map(|i| 100.0 + 80.0 * (i as f32 * 0.1).sin())
            .collect(),
    );
    s.t = Some((0..60).map(|i| i as f32 * 16.0).collect());
    let ink = Ink::Strokes(vec![s]);
    let image = p.preprocess(&ink).expect("preprocess").image;
    let images = vec![image; batch];
    for _ in 0..10 {
        p.predict_images(&images).expect("warm-up");
    }
    let mut model = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        let out = p.predict_images(&images).expect("predict");
        model.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(out.len(), batch);
    }
    let mut full = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        let img = p.preprocess(&ink).expect("preprocess").image;
        p.predict_images(&[img]).expect("predict");
        full.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!("predict_images, batch {batch}: {}", stats(model));
    println!(
        "raw drawing -> preprocess + predict (batch 1): {}",
        stats(full)
    );
}
