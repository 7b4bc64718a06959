//! `quickdraw compare`: two models on the same eval shards: overall and per-class deltas, and
//! the examples (key_id) whose prediction flipped between right and wrong.

use std::path::PathBuf;

use anyhow::Context;
use quickdraw_train::CheckpointSel;
use quickdraw_train::pipeline::file_list;

use super::Ctx;

#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// Model A (the reference).
    pub dir_a: PathBuf,
    /// Model B (compared with A: deltas are B - A).
    pub dir_b: PathBuf,
    /// Evaluation shards: files, globs ('data/zoo/eval-*') or a dataset directory (its eval
    /// shards, from manifest.json); several values, or the flag repeated, are one set.
    #[arg(long, num_args = 1.., required = true, value_name = "FILES")]
    pub eval_files: Vec<String>,
    /// Checkpoint of both models: best, latest or a step number.
    #[arg(long, default_value = "latest")]
    pub checkpoint: CheckpointSel,
    /// Evaluate only this many batches (of 256).
    #[arg(long)]
    pub eval_steps: Option<u64>,
    #[command(flatten)]
    pub device: super::DeviceArg,
    /// Flipped examples listed in the table (all are in --json).
    #[arg(long, default_value_t = 20)]
    pub max_flips: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(mut a: CompareArgs, _ctx: Ctx) -> anyhow::Result<()> {
    let _copy_a = super::local_copy(&mut a.dir_a)?;
    let _copy_b = super::local_copy(&mut a.dir_b)?;
    let c = quickdraw_train::compare(
        &a.dir_a,
        &a.dir_b,
        &file_list(&a.eval_files, "eval")?,
        a.checkpoint,
        a.eval_steps,
        a.device.choice,
    )
    .with_context(|| format!("comparing {} and {}", a.dir_a.display(), a.dir_b.display()))?;
    for (name, ev) in [("A", &c.a), ("B", &c.b)] {
        if let Some(w) = super::evaluate::invalid_warning(&ev.metrics) {
            eprintln!("{name} ({}): {w}", ev.model_dir);
        }
    }
    if a.json {
        println!("{}", serde_json::to_string(&c)?);
        return Ok(());
    }
    println!("A = {} ({}, step {})", c.a.model_dir, c.a.model, c.a.step);
    println!("B = {} ({}, step {})", c.b.model_dir, c.b.model, c.b.step);
    println!("{} examples\n", c.a.metrics.examples);
    println!("{:<14} {:>9} {:>9} {:>9}", "metric", "A", "B", "B - A");
    for (name, x, y) in [
        ("accuracy", c.a.metrics.accuracy, c.b.metrics.accuracy),
        (
            "top3_accuracy",
            c.a.metrics.top3_accuracy,
            c.b.metrics.top3_accuracy,
        ),
        ("map3", c.a.metrics.map3, c.b.metrics.map3),
        ("loss", c.a.metrics.loss, c.b.metrics.loss),
        ("macro_f1", c.a.metrics.macro_f1, c.b.metrics.macro_f1),
    ] {
        println!("{name:<14} {x:>9.4} {y:>9.4} {:>+9.4}", y - x);
    }
    let w = c
        .per_class
        .iter()
        .map(|d| d.class.len())
        .max()
        .unwrap_or(5)
        .max(5);
    println!(
        "\n{:<w$} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "class", "support", "recall A", "recall B", "delta", "f1 A", "f1 B"
    );
    for d in &c.per_class {
        println!(
            "{:<w$} {:>7} {:>8.4} {:>8.4} {:>+8.4} {:>8.4} {:>8.4}",
            d.class, d.support, d.recall_a, d.recall_b, d.delta_recall, d.f1_a, d.f1_b
        );
    }
    println!(
        "\nflipped: {} fixed by B, {} broken by B",
        c.fixed, c.broken
    );
    for f in c.flips.iter().take(a.max_flips) {
        println!(
            "  key_id {:<20} {:<w$} A: {:<w$} B: {:<w$} {}",
            f.key_id,
            f.label,
            f.predicted_a,
            f.predicted_b,
            if f.fixed { "fixed" } else { "broken" }
        );
    }
    if c.flips.len() > a.max_flips {
        println!("  ... {} more (see --json)", c.flips.len() - a.max_flips);
    }
    Ok(())
}
