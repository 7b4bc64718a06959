//! `quickdraw metrics`: the scalars of a model dir's TensorBoard events (training and eval),
//! as CSV or as a summary of the evaluations in metrics.jsonl.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use quickdraw_data::events::{ScalarPoint, event_files, read_scalars};
use quickdraw_train::modeldir::{EVAL_DIR, read_metrics};

use super::Ctx;

#[derive(Debug, clap::Args)]
pub struct MetricsArgs {
    /// Model directory written by `quickdraw train`.
    #[arg(long, alias = "job-dir")]
    pub model_dir: PathBuf,
    /// Export every scalar as CSV: run,tag,step,wall_time,value (run = train or eval).
    #[arg(long)]
    pub csv: bool,
    /// Write to this file instead of stdout.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

fn scalars(dir: &std::path::Path) -> anyhow::Result<Vec<ScalarPoint>> {
    if !dir.is_dir() || event_files(dir)?.is_empty() {
        return Ok(Vec::new());
    }
    read_scalars(dir).with_context(|| format!("reading TensorBoard events in {}", dir.display()))
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub fn run(mut a: MetricsArgs, _ctx: Ctx) -> anyhow::Result<()> {
    let _copy = super::local_copy(&mut a.model_dir)?;
    if !a.model_dir.is_dir() {
        anyhow::bail!("{}: no such model directory", a.model_dir.display());
    }
    let train = scalars(&a.model_dir)?;
    let eval = scalars(&a.model_dir.join(EVAL_DIR))?;
    let mut out: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    if a.csv {
        writeln!(out, "run,tag,step,wall_time,value")?;
        for (run, points) in [("train", &train), ("eval", &eval)] {
            for p in points {
                writeln!(
                    out,
                    "{run},{},{},{},{}",
                    csv_field(&p.tag),
                    p.step,
                    p.wall_time,
                    p.value
                )?;
            }
        }
        return Ok(out.flush()?);
    }
    let evals = read_metrics(&a.model_dir)?;
    writeln!(out, "evaluations ({}):", evals.len())?;
    writeln!(
        out,
        "{:>8} {:>9} {:>9} {:>9} {:>9}",
        "step", "loss", "accuracy", "top3", "map@3"
    )?;
    for e in &evals {
        let f = |k: &str| e.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        writeln!(
            out,
            "{:>8} {:>9.4} {:>9.4} {:>9.4} {:>9.4}",
            e.get("step").and_then(|v| v.as_u64()).unwrap_or(0),
            f("loss"),
            f("accuracy"),
            f("top3_accuracy"),
            f("map3")
        )?;
    }
    let mut last: std::collections::BTreeMap<&str, &ScalarPoint> = Default::default();
    for p in &train {
        last.insert(&p.tag, p);
    }
    writeln!(out, "\nlatest training scalars:")?;
    for (tag, p) in last {
        writeln!(out, "  {tag:<18} {:>12.6} (step {})", p.value, p.step)?;
    }
    Ok(out.flush()?)
}
