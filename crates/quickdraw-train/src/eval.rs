//! Evaluation of a trained model on eval shards (`quickdraw evaluate`) and the comparison of two
//! models on the same shards (`quickdraw compare`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use quickdraw_data::convert::WorkerSlot;
use quickdraw_data::convert::workers::{self, PartsError, finished_count};
use quickdraw_data::storage;
use serde::{Deserialize, Serialize};

use crate::device::DeviceChoice;
use crate::error::{Result, TrainError};
use crate::infer::TrainedModel;
use crate::metrics::{MetricsAccumulator, MetricsReport, predicted_class};
use crate::model::{Model, ModelConfig, ModelInput, ModelKind, log_probs};
use crate::modeldir::{self, CheckpointSel, EVALUATION_FILE};
use crate::pipeline::{
    Batch, DEFAULT_PREFETCH, DataSource, DecodeOptions, OrderOptions, Pipeline, PipelineOptions,
    StreamPosition,
};

/// How to run an evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalOptions {
    pub batch_size: usize,
    /// Stop after this many batches (default: the whole eval set).
    pub max_batches: Option<u64>,
    pub prefetch: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            batch_size: 256,
            max_batches: None,
            prefetch: DEFAULT_PREFETCH,
        }
    }
}

/// One example's prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Position in the (unshuffled) eval stream.
    pub index: u64,
    pub key_id: u64,
    pub label: usize,
    /// `None` when the model's output was not a prediction (NaN / +inf): counted as wrong.
    pub predicted: Option<usize>,
    /// Probability of the predicted class (0 without a prediction).
    pub probability: f32,
    /// Probability of the true class.
    pub true_probability: f32,
}

/// Runs `model` (in validation mode, on the plain `device`) over `src` in file order.
pub fn evaluate_model(
    model: &Model,
    config: &ModelConfig,
    device: &Device,
    src: &DataSource,
    classes: &[String],
    opts: &EvalOptions,
    keep_predictions: bool,
) -> Result<(MetricsReport, Vec<Prediction>)> {
    let c = classes.len();
    let mut preds = Vec::new();
    let mut keep = |batch: &Batch, lp: &[f32], first: u64| {
        if !keep_predictions {
            return;
        }
        let rows = lp.chunks_exact(c).zip(&batch.labels).zip(&batch.key_ids);
        for (i, ((row, &label), &key_id)) in rows.enumerate() {
            let predicted = predicted_class(row);
            preds.push(Prediction {
                index: first + i as u64,
                key_id,
                label: label as usize,
                predicted,
                probability: predicted.map_or(0.0, |p| row[p].exp()),
                true_probability: row[label as usize].exp(),
            });
        }
    };
    let acc = evaluate_batches(model, config, device, src, opts, &mut keep)?;
    Ok((acc.report(classes), preds))
}

/// The evaluation loop: the counts of every batch, and `on_batch(batch, log_probs, index of
/// the batch's first example)` for whoever wants the examples too.
pub fn evaluate_batches(
    model: &Model,
    config: &ModelConfig,
    device: &Device,
    src: &DataSource,
    opts: &EvalOptions,
    on_batch: &mut dyn FnMut(&Batch, &[f32], u64),
) -> Result<MetricsAccumulator> {
    let mut acc = MetricsAccumulator::new(config.n_classes);
    if src.files.is_empty() {
        return Ok(acc);
    }
    let mut pipeline = eval_pipeline(src, config, opts)?;
    let mut index = 0u64;
    while let Some(batch) = pipeline.next_batch()? {
        let lp = log_probs(model, ModelInput::from_batch(&batch, config.kind, device)?);
        acc.add_batch(&lp, &batch.labels);
        on_batch(&batch, &lp, index);
        index += batch.size as u64;
    }
    Ok(acc)
}

/// The eval stream of `src`: every example once, in file order.
pub fn eval_pipeline(
    src: &DataSource,
    model: &ModelConfig,
    opts: &EvalOptions,
) -> Result<Pipeline> {
    Pipeline::spawn(
        src,
        PipelineOptions {
            order: OrderOptions::eval(),
            decode: DecodeOptions::for_model(*src.spec(), model),
            batch_size: opts.batch_size.max(1),
            start: StreamPosition::default(),
            prefetch: opts.prefetch,
            max_batches: opts.max_batches,
            augment: None,
        },
    )
}

/// What `quickdraw evaluate` reports (and writes to `evaluation.json`): the metrics at the top
/// level plus where they came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub model_dir: String,
    pub model: ModelKind,
    pub checkpoint: String,
    pub step: u64,
    pub eval_files: String,
    pub seconds: f64,
    pub examples_per_sec: f64,
    #[serde(flatten)]
    pub metrics: MetricsReport,
}

/// `quickdraw evaluate` options.
#[derive(Debug, Clone)]
pub struct EvaluateRequest {
    pub model_dir: PathBuf,
    pub eval_files: String,
    pub checkpoint: CheckpointSel,
    pub eval_steps: Option<u64>,
    pub batch_size: Option<usize>,
    pub device: DeviceChoice,
    /// Write `evaluation.json` into the model dir.
    pub write_report: bool,
}

impl EvaluateRequest {
    pub fn new(model_dir: impl Into<PathBuf>, eval_files: impl Into<String>) -> Self {
        EvaluateRequest {
            model_dir: model_dir.into(),
            eval_files: eval_files.into(),
            checkpoint: CheckpointSel::Latest,
            eval_steps: None,
            batch_size: None,
            device: DeviceChoice::Cpu,
            write_report: true,
        }
    }
}

impl EvaluateRequest {
    /// How this request runs over `tm`: `--batch-size` (default max(64, the training batch
    /// size)) and `--eval-steps`.
    pub fn options(&self, tm: &TrainedModel) -> EvalOptions {
        EvalOptions {
            batch_size: self.batch_size.unwrap_or(tm.config.batch_size.max(64)),
            max_batches: self.eval_steps,
            prefetch: DEFAULT_PREFETCH,
        }
    }
}

/// Checks that eval shards match what a model was trained on.
pub fn check_compatible(tm: &TrainedModel, src: &DataSource) -> Result<()> {
    if src.labels != tm.config.classes {
        return Err(TrainError::Config(format!(
            "{}: the eval shards' classes ({}) differ from the model's ({})",
            src.dir.display(),
            src.labels.len(),
            tm.config.classes.len()
        )));
    }
    if *src.spec() != tm.config.features {
        return Err(TrainError::Config(format!(
            "{}: the eval shards were preprocessed differently from the model's training data (feature specs differ)",
            src.dir.display()
        )));
    }
    Ok(())
}

/// Evaluates a model dir's checkpoint on eval shards.
pub fn evaluate(
    req: &EvaluateRequest,
    keep_predictions: bool,
) -> Result<(Evaluation, Vec<Prediction>)> {
    let tm = TrainedModel::load(&req.model_dir, req.checkpoint, req.device)?;
    let src = DataSource::open(&req.eval_files)?;
    evaluate_loaded(&tm, &src, req, keep_predictions)
}

pub(crate) fn evaluate_loaded(
    tm: &TrainedModel,
    src: &DataSource,
    req: &EvaluateRequest,
    keep_predictions: bool,
) -> Result<(Evaluation, Vec<Prediction>)> {
    check_compatible(tm, src)?;
    let opts = req.options(tm);
    let t = Instant::now();
    let (metrics, preds) = evaluate_model(
        tm.model(),
        &tm.config.model,
        tm.device(),
        src,
        &tm.config.classes,
        &opts,
        keep_predictions,
    )?;
    let ev = evaluation_of(tm, req, metrics, t.elapsed().as_secs_f64())?;
    Ok((ev, preds))
}

/// The report of an evaluation that took `seconds`; written to `evaluation.json` when the
/// request says so.
pub(crate) fn evaluation_of(
    tm: &TrainedModel,
    req: &EvaluateRequest,
    metrics: MetricsReport,
    seconds: f64,
) -> Result<Evaluation> {
    let ev = Evaluation {
        model_dir: req.model_dir.display().to_string(),
        model: tm.kind(),
        checkpoint: tm.checkpoint.dir.display().to_string(),
        step: tm.step(),
        eval_files: req.eval_files.clone(),
        seconds,
        examples_per_sec: metrics.examples as f64 / seconds.max(1e-9),
        metrics,
    };
    if req.write_report {
        let text = serde_json::to_string_pretty(&ev).expect("evaluation serialises") + "\n";
        modeldir::write_atomic(&req.model_dir.join(EVALUATION_FILE), text.as_bytes())?;
    }
    Ok(ev)
}

/// Where `evaluate --worker I/N` writes its part, inside the model dir.
pub const EVAL_PARTS_DIR: &str = "evaluation-parts";

/// One worker's share of an evaluation split over N (`evaluate --worker I/N`): the shards whose
/// index (sorted) is I mod N, and their counts, merged exactly by [`merge_parts`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalPart {
    pub worker: WorkerSlot,
    pub model: ModelKind,
    /// The checkpoint's folder name (`step-00001000`).
    pub checkpoint: String,
    pub step: u64,
    pub eval_files: String,
    /// The shard files this worker evaluated, of `total_files`.
    pub files: Vec<String>,
    pub total_files: usize,
    pub classes: Vec<String>,
    pub seconds: f64,
    pub counts: MetricsAccumulator,
}

impl EvalPart {
    /// `evaluation-parts/IIIII-of-NNNNN.json`, relative to the model dir.
    pub fn file_name(w: &WorkerSlot) -> String {
        format!("{EVAL_PARTS_DIR}/{}.json", w.name())
    }
}

/// Evaluates worker `worker`'s share of the eval shards.
pub fn evaluate_part(req: &EvaluateRequest, worker: WorkerSlot) -> Result<EvalPart> {
    if req.eval_steps.is_some() {
        return Err(TrainError::Config(
            "--eval-steps cannot be split over workers (each evaluates whole shards)".into(),
        ));
    }
    let tm = TrainedModel::load(&req.model_dir, req.checkpoint, req.device)?;
    let src = DataSource::open(&req.eval_files)?;
    check_compatible(&tm, &src)?;
    let sub = src.subset(|i| i % worker.count == worker.index);
    let opts = req.options(&tm); // eval_steps is None here (refused above)
    let t = Instant::now();
    let counts = evaluate_batches(
        tm.model(),
        &tm.config.model,
        tm.device(),
        &sub,
        &opts,
        &mut |_, _, _| {},
    )?;
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    Ok(EvalPart {
        worker,
        model: tm.kind(),
        checkpoint: name(&tm.checkpoint.dir),
        step: tm.step(),
        eval_files: req.eval_files.clone(),
        files: sub.files.iter().map(|f| name(f)).collect(),
        total_files: src.files.len(),
        classes: tm.config.classes.clone(),
        seconds: t.elapsed().as_secs_f64(),
        counts,
    })
}

/// Reads every part under `model_dir` (a directory or URL) and merges them: all N workers must
/// have finished, on the same checkpoint, eval files and classes, covering every shard once.
pub fn merge_parts(model_dir: &Path) -> Result<Evaluation> {
    let dir = model_dir.join(EVAL_PARTS_DIR);
    let count = finished_count(&dir, ".json").map_err(|e| match e {
        PartsError::Io(e) => TrainError::io(&dir)(e),
        PartsError::NoParts => TrainError::Config(format!(
            "{}: no evaluation parts (run `quickdraw evaluate --worker I/N` first)",
            dir.display()
        )),
        PartsError::MixedCounts(_) => TrainError::Config(format!(
            "{}: parts of evaluations split over different worker counts: remove the old ones",
            dir.display()
        )),
        PartsError::Missing { count, missing } => TrainError::Config(format!(
            "{}: {} of {count} evaluation workers have not finished: worker {}",
            dir.display(),
            missing.len(),
            workers::join(&missing)
        )),
    })?;
    let slots: Vec<WorkerSlot> = (0..count)
        .map(|index| WorkerSlot { index, count })
        .collect();
    let mut parts = Vec::with_capacity(slots.len());
    for w in &slots {
        let path = model_dir.join(EvalPart::file_name(w));
        let text = storage::read_to_string(&path).map_err(TrainError::io(&path))?;
        let part: EvalPart = serde_json::from_str(&text).map_err(TrainError::json(&path))?;
        parts.push(part);
    }
    let first = &parts[0];
    let mut counts = first.counts.clone();
    let mut files: Vec<&String> = Vec::new();
    for p in &parts {
        let same = p.checkpoint == first.checkpoint
            && p.eval_files == first.eval_files
            && p.classes == first.classes
            && p.total_files == first.total_files;
        if !same {
            return Err(TrainError::Config(format!(
                "evaluation worker {} evaluated another checkpoint, eval files or classes than worker 0 ({} on {:?} vs {} on {:?})",
                p.worker.index, p.checkpoint, p.eval_files, first.checkpoint, first.eval_files
            )));
        }
        files.extend(&p.files);
    }
    for p in &parts[1..] {
        counts.merge(&p.counts).map_err(TrainError::Config)?;
    }
    files.sort();
    files.dedup();
    if files.len() != first.total_files {
        return Err(TrainError::Config(format!(
            "the parts cover {} distinct shard files of {}",
            files.len(),
            first.total_files
        )));
    }
    let seconds = parts.iter().map(|p| p.seconds).fold(0.0, f64::max);
    Ok(Evaluation {
        model_dir: model_dir.display().to_string(),
        model: first.model,
        checkpoint: first.checkpoint.clone(),
        step: first.step,
        eval_files: first.eval_files.clone(),
        seconds,
        examples_per_sec: counts.examples() as f64 / seconds.max(1e-9),
        metrics: counts.report(&first.classes),
    })
}

/// Per-class change from model A to model B.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassDelta {
    pub class: String,
    pub support: u64,
    pub recall_a: f64,
    pub recall_b: f64,
    pub f1_a: f64,
    pub f1_b: f64,
    pub delta_recall: f64,
    pub delta_f1: f64,
}

/// What a flip names as the predicted class when a model's output was NaN / +inf.
pub const INVALID_PREDICTION: &str = "(invalid: non-finite output)";

/// An example whose correctness differs between A and B.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flip {
    pub index: u64,
    pub key_id: u64,
    pub label: String,
    pub predicted_a: String,
    pub predicted_b: String,
    /// `true` when B is right and A was wrong.
    pub fixed: bool,
}

/// `quickdraw compare` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub a: Evaluation,
    pub b: Evaluation,
    pub delta_accuracy: f64,
    pub delta_top3_accuracy: f64,
    pub delta_map3: f64,
    pub delta_loss: f64,
    pub per_class: Vec<ClassDelta>,
    /// Examples B gets right that A got wrong.
    pub fixed: u64,
    /// Examples A got right that B gets wrong.
    pub broken: u64,
    pub flips: Vec<Flip>,
}

/// Evaluates two model dirs on the same shards and compares them example by example.
pub fn compare(
    dir_a: &Path,
    dir_b: &Path,
    eval_files: &str,
    checkpoint: CheckpointSel,
    eval_steps: Option<u64>,
    device: DeviceChoice,
) -> Result<Comparison> {
    let src = DataSource::open(eval_files)?;
    let run = |dir: &Path| -> Result<(Evaluation, Vec<Prediction>)> {
        let tm = TrainedModel::load(dir, checkpoint, device)?;
        let mut req = EvaluateRequest::new(dir, eval_files);
        req.checkpoint = checkpoint;
        req.eval_steps = eval_steps;
        req.device = device;
        req.write_report = false;
        req.batch_size = Some(256);
        evaluate_loaded(&tm, &src, &req, true)
    };
    let (a, pa) = run(dir_a)?;
    let (b, pb) = run(dir_b)?;
    if a.metrics.classes != b.metrics.classes {
        return Err(TrainError::Config(
            "the two models were trained on different classes".into(),
        ));
    }
    let names = &a.metrics.classes;
    let per_class = a
        .metrics
        .per_class
        .iter()
        .zip(&b.metrics.per_class)
        .map(|(x, y)| ClassDelta {
            class: x.class.clone(),
            support: x.support,
            recall_a: x.recall,
            recall_b: y.recall,
            f1_a: x.f1,
            f1_b: y.f1,
            delta_recall: y.recall - x.recall,
            delta_f1: y.f1 - x.f1,
        })
        .collect();
    let mut flips = Vec::new();
    let (mut fixed, mut broken) = (0, 0);
    for (x, y) in pa.iter().zip(&pb) {
        debug_assert_eq!(x.key_id, y.key_id);
        let (ra, rb) = (x.predicted == Some(x.label), y.predicted == Some(y.label));
        let name = |p: Option<usize>| {
            p.map_or_else(|| INVALID_PREDICTION.to_string(), |p| names[p].clone())
        };
        if ra != rb {
            if rb {
                fixed += 1;
            } else {
                broken += 1;
            }
            flips.push(Flip {
                index: x.index,
                key_id: x.key_id,
                label: names[x.label].clone(),
                predicted_a: name(x.predicted),
                predicted_b: name(y.predicted),
                fixed: rb,
            });
        }
    }
    Ok(Comparison {
        delta_accuracy: b.metrics.accuracy - a.metrics.accuracy,
        delta_top3_accuracy: b.metrics.top3_accuracy - a.metrics.top3_accuracy,
        delta_map3: b.metrics.map3 - a.metrics.map3,
        delta_loss: b.metrics.loss - a.metrics.loss,
        per_class,
        fixed,
        broken,
        flips,
        a,
        b,
    })
}
