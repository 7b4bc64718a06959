//! Training throughput of a model on random inputs (compute only, no input pipeline).
//!
//! ```text
//! cargo run --release -p quickdraw-train --example bench_train -- [MODEL] [SIZE] [BATCH] [STEPS] [DEVICE]
//! cargo run --release -p quickdraw-train --example bench_train -- cnn 64 64 20 cpu
//! ```

use quickdraw_train::model::{ModelConfig, ModelKind};
use quickdraw_train::train::bench_train;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: &str| args.get(i).cloned().unwrap_or_else(|| d.to_string());
    let kind: ModelKind = arg(0, "cnn").parse()?;
    let size: usize = arg(1, "64").parse()?;
    let batch: usize = arg(2, "64").parse()?;
    let steps: u64 = arg(3, "20").parse()?;
    let device = arg(4, "cpu").parse()?;
    let cfg = ModelConfig::new(kind, 10, size);
    let r = bench_train(&cfg, batch, 3, steps, device)?;
    println!(
        "{kind} {size}x{size} batch {batch} on {}: {} parameters, {steps} steps in {:.2} s = {:.1} img/s ({:.2} steps/s)",
        arg(4, "cpu"),
        r.parameters,
        r.seconds,
        r.images_per_sec,
        r.steps_per_sec
    );
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}
