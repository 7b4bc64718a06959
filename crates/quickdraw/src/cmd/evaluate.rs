//! `quickdraw evaluate`: loss, accuracy, top-3, MAP@3, per-class precision/recall/F1 and the
//! confusion matrix of a trained model on eval shards.

use std::path::PathBuf;

use anyhow::Context;
use quickdraw_data::convert::WorkerSlot;
use quickdraw_data::storage;
use quickdraw_train::errors::{ErrorsOptions, evaluate_with_errors};
use quickdraw_train::metrics::{MetricsReport, confusion_chart};
use quickdraw_train::pipeline::file_list;
use quickdraw_train::{CheckpointSel, EvalPart, EvaluateRequest};

use super::Ctx;

#[derive(Debug, clap::Args)]
pub struct EvaluateArgs {
    /// Model directory written by `quickdraw train`.
    #[arg(long, alias = "job-dir")]
    pub model_dir: PathBuf,
    /// Evaluation shards: files, globs ('data/zoo/eval-*') or a dataset directory (its eval
    /// shards, from manifest.json); several values, or the flag repeated, are one set.
    #[arg(long, num_args = 1.., required_unless_present = "merge", value_name = "FILES")]
    pub eval_files: Vec<String>,
    /// Which checkpoint: best (by eval accuracy during training), latest, or a step number.
    #[arg(long, default_value = "latest")]
    pub checkpoint: CheckpointSel,
    /// Evaluate only this many batches (default: the whole eval set).
    #[arg(long)]
    pub eval_steps: Option<u64>,
    /// Batch size (default: max(64, the training batch size)).
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[command(flatten)]
    pub device: super::DeviceArg,
    /// Print one JSON object (accuracy, top3_accuracy, map3, loss, examples, per_class, confusion, ...).
    #[arg(long)]
    pub json: bool,
    /// Also write the confusion matrix as a labelled PNG: class names on both axes, counts in
    /// the cells, shaded by the share of the row (the 30 most confused classes when there are
    /// more), and the most confused pairs.
    #[arg(long, value_name = "FILE")]
    pub png: Option<PathBuf>,
    /// Write every misclassified example to DIR/errors.jsonl (key_id, true, predicted, top-5
    /// probabilities) and a PNG grid of drawings for each of the most confused pairs.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["worker", "merge"])]
    pub errors: Option<PathBuf>,
    /// With --errors: how many confused pairs get a grid.
    #[arg(long, default_value_t = 12, value_name = "N")]
    pub error_pairs: usize,
    /// With --errors: drawings per grid.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub errors_per_pair: usize,
    /// Evaluate only worker I's share of N (the shards whose sorted index is I mod N) and
    /// write its counts to <model-dir>/evaluation-parts/; then `evaluate --merge`.
    #[arg(long, value_name = "I/N", conflicts_with = "merge")]
    pub worker: Option<String>,
    /// Merge the parts of every worker (exact counts, confusion matrix included) into the
    /// report and evaluation.json, as one process would have written them.
    #[arg(long)]
    pub merge: bool,
}

/// Human-readable report: overall figures, per-class table, small confusion matrices.
pub fn report_table(m: &MetricsReport) -> String {
    let mut s = format!(
        "examples {}  loss {:.4}  accuracy {:.4}  top3 {:.4}  map@3 {:.4}  macro-F1 {:.4}\n\n",
        m.examples, m.loss, m.accuracy, m.top3_accuracy, m.map3, m.macro_f1
    );
    let w = m.classes.iter().map(|c| c.len()).max().unwrap_or(5).max(5);
    s.push_str(&format!(
        "{:<w$}  {:>7}  {:>9}  {:>6}  {:>6}\n",
        "class", "support", "precision", "recall", "f1"
    ));
    for c in &m.per_class {
        s.push_str(&format!(
            "{:<w$}  {:>7}  {:>9.4}  {:>6.4}  {:>6.4}\n",
            c.class, c.support, c.precision, c.recall, c.f1
        ));
    }
    if m.classes.len() <= 20 {
        s.push_str("\nconfusion matrix (rows: true class, columns: predicted, in label order)\n");
        for (name, row) in m.classes.iter().zip(&m.confusion) {
            let cells: Vec<String> = row.iter().map(|v| format!("{v:>5}")).collect();
            s.push_str(&format!("{name:<w$} {}\n", cells.join("")));
        }
    }
    s
}

/// A loud line when some of the model's outputs were NaN / +inf (counted as wrong).
pub fn invalid_warning(m: &MetricsReport) -> Option<String> {
    (m.invalid_predictions > 0).then(|| {
        format!(
            "WARNING: {} of {} predictions were NaN or infinite (the model has diverged or its weights are corrupted); they count as wrong, and the loss is undefined (NaN)",
            m.invalid_predictions, m.examples
        )
    })
}

/// `--png`: the labelled confusion chart, titled with the model, checkpoint and eval files.
pub fn write_confusion_png(ev: &quickdraw_train::Evaluation, path: &PathBuf) -> anyhow::Result<()> {
    let m = &ev.metrics;
    let files: String = ev.eval_files.replace('\n', " ").chars().take(60).collect();
    let title = format!(
        "{} ({}, step {}) on {files}: accuracy {:.4}, {} examples",
        ev.model_dir, ev.model, ev.step, m.accuracy, m.examples
    );
    let (px, w, h) = confusion_chart(&title, &m.classes, &m.confusion);
    let png = quickdraw_data::image::encode_grey(&px, w, h);
    std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
}

pub fn run(mut a: EvaluateArgs, ctx: Ctx) -> anyhow::Result<()> {
    // Parts and the merged evaluation.json go to the model dir as given (a URL too).
    let given = a.model_dir.clone();
    if a.merge {
        let ev = quickdraw_train::merge_parts(&given)
            .with_context(|| format!("merging the evaluation parts of {}", given.display()))?;
        let path = given.join(quickdraw_train::modeldir::EVALUATION_FILE);
        let text = serde_json::to_string_pretty(&ev)? + "\n";
        storage::write(&path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        return print_evaluation(&a, &ev);
    }
    let mut copy = super::local_copy(&mut a.model_dir)?;
    let mut req = EvaluateRequest::new(a.model_dir.clone(), file_list(&a.eval_files, "eval")?);
    req.checkpoint = a.checkpoint;
    req.eval_steps = a.eval_steps;
    req.batch_size = a.batch_size;
    req.device = a.device.choice;
    if let Some(w) = &a.worker {
        let slot = WorkerSlot::parse(w).map_err(|e| anyhow::anyhow!("--worker {e}"))?;
        let part = quickdraw_train::evaluate_part(&req, slot)
            .with_context(|| format!("evaluating {}", given.display()))?;
        let path = given.join(EvalPart::file_name(&slot));
        storage::write(&path, serde_json::to_string_pretty(&part)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "worker {w}: {} examples in {} of {} shard files; counts in {}",
            part.counts.examples(),
            part.files.len(),
            part.total_files,
            path.display()
        );
        return Ok(());
    }
    let pb = crate::progress::bar(ctx.quiet, None, "");
    pb.set_message(format!("evaluating {}", a.model_dir.display()));
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    let (ev, errors) = match &a.errors {
        Some(dir) => {
            let opts = ErrorsOptions {
                dir: dir.clone(),
                pairs: a.error_pairs,
                per_pair: a.errors_per_pair.max(1),
            };
            let (ev, report) = evaluate_with_errors(&req, &opts)
                .with_context(|| format!("evaluating {}", a.model_dir.display()))?;
            (ev, Some(report))
        }
        None => {
            let (ev, _) = quickdraw_train::evaluate(&req, false)
                .with_context(|| format!("evaluating {}", a.model_dir.display()))?;
            (ev, None)
        }
    };
    pb.finish_and_clear();
    if let Some(r) = &errors
        && !ctx.quiet
    {
        eprintln!(
            "{} misclassified examples in {}",
            r.errors,
            r.errors_file.display()
        );
        for (t, p, n, png) in &r.grids {
            eprintln!("  {t} -> {p}: {n}  {}", png.display());
        }
    }
    if let Some(m) = copy.as_mut() {
        m.push()
            .with_context(|| format!("uploading evaluation.json to {}", given.display()))?;
    }
    print_evaluation(&a, &ev)
}

fn print_evaluation(a: &EvaluateArgs, ev: &quickdraw_train::Evaluation) -> anyhow::Result<()> {
    if let Some(w) = invalid_warning(&ev.metrics) {
        eprintln!("{w}");
    }
    if let Some(p) = &a.png {
        write_confusion_png(ev, p)?;
    }
    if a.json {
        println!("{}", serde_json::to_string(ev)?);
    } else {
        println!(
            "model {} ({}), checkpoint step {}, eval files {:?}\n",
            ev.model_dir, ev.model, ev.step, ev.eval_files
        );
        print!("{}", report_table(&ev.metrics));
    }
    Ok(())
}
