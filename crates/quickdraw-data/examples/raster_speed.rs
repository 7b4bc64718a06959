//! Per-stage CPU cost of conversion (parse, preprocess, encode, validate) on the shared real samples:
//! `cargo run --release -p quickdraw-data --example raster_speed`.
use std::time::Instant;
fn cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}
use quickdraw_data::features::*;
use quickdraw_data::ingest::ndjson::parse_line;
fn main() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/data/quickdraw/simplified"
    );
    if !std::path::Path::new(dir).exists() {
        eprintln!("SKIP: {dir} not found");
        return;
    }
    let mut lines = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let t = std::fs::read_to_string(e.unwrap().path()).unwrap();
        lines.extend(t.lines().map(|s| s.to_string()));
    }
    let n = lines.len();
    let t = Instant::now();
    let c0 = cpu();
    let mut ds = vec![];
    for _ in 0..10 {
        ds.clear();
        for l in &lines {
            ds.push(parse_line(l.as_bytes()).unwrap());
        }
    }
    println!(
        "parse {:.1} us",
        (cpu() - c0 + 0.0 * t.elapsed().as_secs_f64()) * 1e6 / (10 * n) as f64
    );
    let spec = FeatureSpec::default();
    let t = Instant::now();
    let c0 = cpu();
    let mut ps = vec![];
    for _ in 0..10 {
        ps.clear();
        for d in &ds {
            ps.push(preprocess(&d.ink, &spec).unwrap());
        }
    }
    println!(
        "preprocess {:.1} us",
        (cpu() - c0 + 0.0 * t.elapsed().as_secs_f64()) * 1e6 / (10 * n) as f64
    );
    let t = Instant::now();
    let c0 = cpu();
    let mut k = 0usize;
    for _ in 0..10 {
        for d in &ds {
            k += quickdraw_data::features::is_raw(d.strokes().unwrap()) as usize;
        }
    }
    println!(
        "is_raw {:.1} us ({k})",
        (cpu() - c0 + 0.0 * t.elapsed().as_secs_f64()) * 1e6 / (10 * n) as f64
    );
    let t = Instant::now();
    let c0 = cpu();
    for _ in 0..10 {
        for d in &ds {
            k += quickdraw_data::raster::rasterize_strokes(d.strokes().unwrap(), &spec.raster)[0]
                as usize;
        }
    }
    println!(
        "rasterize_strokes {:.1} us ({k})",
        (cpu() - c0 + 0.0 * t.elapsed().as_secs_f64()) * 1e6 / (10 * n) as f64
    );
    let t = Instant::now();
    let c0 = cpu();
    let mut tot = 0;
    for _ in 0..10 {
        for (d, p) in ds.iter().zip(&ps) {
            tot += encode_example(d, 1, p, &spec).len();
        }
    }
    println!(
        "encode {:.1} us ({tot})",
        (cpu() - c0 + 0.0 * t.elapsed().as_secs_f64()) * 1e6 / (10 * n) as f64
    );
    let t = Instant::now();
    let c0 = cpu();
    for _ in 0..10 {
        for d in &ds {
            quickdraw_data::validate::check_drawing(d, None).unwrap();
        }
    }
    println!(
        "validate {:.1} us",
        (cpu() - c0 + 0.0 * t.elapsed().as_secs_f64()) * 1e6 / (10 * n) as f64
    );
}
