//! Export of a trained checkpoint as a serving version folder (`quickdraw export`): the whole
//! inference graph as ONNX plus the files of [`quickdraw_data::signature`], behind the lecture's
//! export gate ("detect problems before exporting models").
//!
//! [`stage`] loads the checkpoint, refuses non-finite weights, evaluates it (and the class-prior
//! baseline) on the eval shards, applies the gate, builds `model.onnx` and writes everything to
//! `<base>/.<version>.tmp/`; [`StagedExport::publish`] renames that folder to `<base>/<version>/`
//! (dropping a [`StagedExport`] unpublished removes it). Between the two a caller can check the
//! ONNX graph against burn on [`StagedExport::sample`] with an inference engine of its own (the
//! CLI uses the server's tract `Predictor`; this crate has no ONNX runtime).
//!
//! The ONNX graphs:
//! - `cnn`, `dnn`, `linear`, `baseline`: burn-onnx captures the model's forward pass (dynamic
//!   batch `N`, opset 18, weights as initialisers); the input is renamed `img_<S>`, the output
//!   `logits`, and `Softmax` (`probabilities`) and `ArgMax` (`classes`, int64) nodes are appended.
//! - `rnn`: burn-onnx cannot capture a loop over a dynamic time axis, so the graph is written
//!   here from the LSTM weights: the backward input (each sequence reversed within its length)
//!   and the padding mask are computed from `lengths` in the graph, two forward `LSTM` nodes
//!   (no `sequence_lens`, which tract does not support), masked sums over time, the output layer.

use std::fs;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::activation::Activation;
use burn::nn::{Linear, Lstm};
use burn::tensor::{Tensor, TensorData};
use burn_onnx::export::{AxisSpec, InputSpec, OnnxExporter};
use onnx_ir::{
    AttributeProto, AttributeType, Message, ModelProto, NodeProto, TensorProto, ValueInfoProto,
};
use quickdraw_data::manifest::DatasetManifest;
use quickdraw_data::signature::{
    self, ModelInfo, ModelType, Signature, SignatureError, list_versions, write_export_metadata,
};
use quickdraw_data::strokes::StrokeFeatures;
use serde::Serialize;
use serde_json::json;

use crate::device::DeviceChoice;
use crate::error::TrainError;
use crate::eval::{EvalOptions, check_compatible, evaluate_model};
use crate::infer::TrainedModel;
use crate::metrics::MetricsReport;
use crate::model::{Model, ModelInput, ModelKind, Rnn};
use crate::modeldir::CheckpointSel;
use crate::pipeline::{
    Batch, DataSource, DecodeOptions, OrderOptions, Pipeline, PipelineOptions, StreamPosition,
};

/// Default base folder of the versions, inside the model dir.
pub const EXPORT_DIR: &str = "export";
/// Examples of the eval set kept (with burn's outputs) to check the ONNX graph.
pub const DEFAULT_SAMPLE: usize = 8;
/// ONNX operator set of every exported graph.
pub const OPSET: i64 = 18;
const IR_VERSION: i64 = 8;
const ONNX_FLOAT: i32 = 1;
const ONNX_INT64: i32 = 7;

/// Errors of `quickdraw export`.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The export gate refused the model (`--force` overrides).
    #[error("refusing to export {}: {}; pass --force to export anyway", what, reasons.join("; "))]
    Refused { what: String, reasons: Vec<String> },
    /// NaN or infinite weights (never exported, even with `--force`).
    #[error(
        "refusing to export {what}: non-finite weights (NaN or infinity) in {} (training diverged; export an earlier checkpoint with --checkpoint)",
        params.join(", ")
    )]
    NonFinite { what: String, params: Vec<String> },
    #[error("the {0} model cannot be exported to ONNX: {1}")]
    Unsupported(ModelKind, String),
    #[error("building the ONNX graph: {0}")]
    Onnx(String),
    #[error("{0}")]
    Config(String),
}

impl From<burn_onnx::export::ExportError> for ExportError {
    fn from(e: burn_onnx::export::ExportError) -> Self {
        ExportError::Onnx(e.to_string())
    }
}

pub type Result<T, E = ExportError> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What to export and how.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    pub model_dir: PathBuf,
    pub checkpoint: CheckpointSel,
    /// Base folder of the versions (`<model_dir>/export` by default).
    pub export_base: PathBuf,
    /// Eval shards (default: those recorded in the model dir's `config.json`).
    pub eval_files: Option<String>,
    /// Evaluate only this many batches.
    pub eval_steps: Option<u64>,
    pub batch_size: Option<usize>,
    /// Export even when the gate refuses (never with non-finite weights).
    pub force: bool,
    pub device: DeviceChoice,
    /// Eval examples kept in [`StagedExport::sample`].
    pub sample_size: usize,
}

impl ExportRequest {
    pub fn new(model_dir: impl Into<PathBuf>) -> Self {
        let model_dir = model_dir.into();
        ExportRequest {
            export_base: model_dir.join(EXPORT_DIR),
            model_dir,
            checkpoint: CheckpointSel::Best,
            eval_files: None,
            eval_steps: None,
            batch_size: None,
            force: false,
            device: DeviceChoice::Cpu,
            sample_size: DEFAULT_SAMPLE,
        }
    }
}

/// The class-prior baseline: always predict the most frequent training class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BaselineInfo {
    /// Its accuracy on the eval set.
    pub accuracy: f64,
    pub majority_class: String,
    pub label: usize,
    /// Where the class counts came from.
    pub counts_from: String,
}

/// The newest version already in the base folder.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PreviousExport {
    pub version: u64,
    pub dir: PathBuf,
    /// `accuracy` of its `metrics.json` (absent when unreadable).
    pub accuracy: Option<f64>,
    pub eval_files: Option<String>,
}

/// Eval examples with burn's outputs, to compare an ONNX runtime against.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckSample {
    pub n: usize,
    pub n_classes: usize,
    pub inputs: SampleInputs,
    pub labels: Vec<i64>,
    /// `[n, n_classes]` burn logits.
    pub logits: Vec<f32>,
    /// `[n, n_classes]` burn probabilities (`TrainedModel::predict_batch`).
    pub probabilities: Vec<f32>,
}

/// The model inputs of a [`CheckSample`], as the signature names them.
#[derive(Debug, Clone, PartialEq)]
pub enum SampleInputs {
    /// `key` = `img_<size>`, `pixels` = `[n, 1, size, size]` floats (pixel * PIXEL_SCALE).
    Images {
        key: String,
        size: usize,
        pixels: Vec<f32>,
    },
    /// `strokes` `[n, steps, 3]` zero-padded, `lengths` `[n]`.
    Strokes {
        steps: usize,
        strokes: Vec<f32>,
        lengths: Vec<i64>,
    },
}

impl CheckSample {
    /// Images as one `Vec` per example (what `Predictor::predict_pixels` takes).
    pub fn image_rows(&self) -> Option<Vec<Vec<f32>>> {
        match &self.inputs {
            SampleInputs::Images { pixels, .. } => Some(
                pixels
                    .chunks(pixels.len() / self.n.max(1))
                    .map(<[f32]>::to_vec)
                    .collect(),
            ),
            SampleInputs::Strokes { .. } => None,
        }
    }

    /// Stroke sequences, one per example (what `Predictor::predict_strokes` takes).
    pub fn stroke_rows(&self) -> Option<Vec<StrokeFeatures>> {
        let SampleInputs::Strokes {
            steps,
            strokes,
            lengths,
        } = &self.inputs
        else {
            return None;
        };
        Some(
            lengths
                .iter()
                .enumerate()
                .map(|(b, &len)| {
                    let len = len as usize;
                    let row = &strokes[b * steps * 3..][..len * 3];
                    StrokeFeatures {
                        dx: row.iter().step_by(3).copied().collect(),
                        dy: row.iter().skip(1).step_by(3).copied().collect(),
                        pen: row.iter().skip(2).step_by(3).copied().collect(),
                        len,
                        truncated: false,
                    }
                })
                .collect(),
        )
    }

    /// Row `i` of the burn probabilities.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.probabilities[i * self.n_classes..(i + 1) * self.n_classes]
    }

    /// JSON for `tests/python/check_onnx.py`: `{"inputs": {name: {"dtype", "shape", "data"}},
    /// "logits": {..}, "probabilities": {..}, "labels": [..]}` with flat row-major `data`.
    pub fn to_json(&self) -> serde_json::Value {
        let t = |dtype: &str, shape: Vec<usize>, data: serde_json::Value| json!({"dtype": dtype, "shape": shape, "data": data});
        let inputs = match &self.inputs {
            SampleInputs::Images { key, size, pixels } => {
                json!({ key.clone(): t("float32", vec![self.n, 1, *size, *size], json!(pixels)) })
            }
            SampleInputs::Strokes {
                steps,
                strokes,
                lengths,
            } => json!({
                signature::STROKES: t("float32", vec![self.n, *steps, 3], json!(strokes)),
                signature::LENGTHS: t("int64", vec![self.n], json!(lengths)),
            }),
        };
        let c = self.n_classes;
        json!({
            "inputs": inputs,
            "labels": self.labels,
            "logits": t("float32", vec![self.n, c], json!(self.logits)),
            "probabilities": t("float32", vec![self.n, c], json!(self.probabilities)),
        })
    }
}

/// A version written to its temporary folder, not yet visible to servers.
#[derive(Debug)]
pub struct StagedExport {
    pub version: u64,
    pub base: PathBuf,
    /// `<base>/.<version>.tmp`.
    pub tmp_dir: PathBuf,
    /// `<base>/<version>` (after [`StagedExport::publish`]).
    pub final_dir: PathBuf,
    pub kind: ModelKind,
    pub step: u64,
    pub checkpoint_dir: PathBuf,
    pub eval_files: String,
    pub evaluation: MetricsReport,
    pub baseline: BaselineInfo,
    pub previous: Option<PreviousExport>,
    /// Gate problems overridden by `--force` (empty when the gate passed).
    pub overridden: Vec<String>,
    pub signature: Signature,
    /// Size of `model.onnx` in bytes.
    pub onnx_bytes: usize,
    pub sample: CheckSample,
    published: bool,
}

impl StagedExport {
    /// Renames the temporary folder to `<base>/<version>/`; returns that path.
    pub fn publish(&mut self) -> Result<PathBuf> {
        if self.published {
            return Ok(self.final_dir.clone());
        }
        if self.final_dir.exists() {
            return Err(ExportError::Config(format!(
                "{} appeared while exporting (another export ran at the same time); run the export again",
                self.final_dir.display()
            )));
        }
        fs::rename(&self.tmp_dir, &self.final_dir).map_err(io(&self.final_dir))?;
        sync_dir(&self.base);
        self.published = true;
        Ok(self.final_dir.clone())
    }

    pub fn is_published(&self) -> bool {
        self.published
    }
}

impl Drop for StagedExport {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_dir_all(&self.tmp_dir);
        }
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// The model type of the export contract.
pub fn model_type(kind: ModelKind) -> ModelType {
    match kind {
        ModelKind::Baseline => ModelType::Baseline,
        ModelKind::Linear => ModelType::Linear,
        ModelKind::Dnn => ModelType::Dnn,
        ModelKind::Cnn => ModelType::Cnn,
        ModelKind::Rnn => ModelType::Rnn,
    }
}

/// Names of the parameters holding NaN or infinite values (empty when all are finite).
pub fn non_finite_params(model: &Model) -> Vec<String> {
    #[derive(Default)]
    struct V {
        path: Vec<String>,
        bad: Vec<String>,
    }
    impl ModuleVisitor for V {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let data = param.val().into_data();
            let bad = match data.as_slice::<f32>() {
                Ok(v) => v.iter().filter(|x| !x.is_finite()).count(),
                Err(_) => data.iter::<f64>().filter(|x| !x.is_finite()).count(),
            };
            if bad > 0 {
                self.bad
                    .push(format!("{} ({bad} values)", self.path.join(".")));
            }
        }
    }
    let mut v = V::default();
    model.visit(&mut v);
    v.bad
}

/// The next version number of a base folder: newest integer version + 1 (1 when none).
pub fn next_version(base: &Path) -> Result<u64> {
    if !base.exists() {
        return Ok(1);
    }
    Ok(list_versions(base)?.last().map(|(v, _)| v + 1).unwrap_or(1))
}

/// The newest version of a base folder with the accuracy its `metrics.json` records.
pub fn previous_export(base: &Path) -> Result<Option<PreviousExport>> {
    if !base.exists() {
        return Ok(None);
    }
    let Some((version, dir)) = list_versions(base)?.pop() else {
        return Ok(None);
    };
    let metrics: Option<serde_json::Value> = fs::read_to_string(dir.join(signature::METRICS_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let accuracy = metrics
        .as_ref()
        .and_then(|m| m.get("accuracy"))
        .and_then(|a| a.as_f64());
    let eval_files = metrics
        .as_ref()
        .and_then(|m| m.get("eval_files"))
        .and_then(|a| a.as_str())
        .map(String::from);
    Ok(Some(PreviousExport {
        version,
        dir,
        accuracy,
        eval_files,
    }))
}

/// The class-prior baseline on an evaluation: the majority class of the training counts in the
/// dataset manifest when they are known, else of the eval set itself.
pub fn baseline_of(tm: &TrainedModel, report: &MetricsReport) -> BaselineInfo {
    let classes = tm.labels();
    let train_counts: Option<(Vec<u64>, String)> = {
        let dir = PathBuf::from(&tm.config.data.dataset_dir);
        DatasetManifest::load(&dir).ok().and_then(|m| {
            let counts: Vec<u64> = classes
                .iter()
                .map(|c| {
                    m.per_class
                        .get(c)
                        .and_then(|cc| cc.splits.get("train"))
                        .copied()
                        .unwrap_or(0)
                })
                .collect();
            (counts.iter().sum::<u64>() > 0).then(|| {
                (
                    counts,
                    format!(
                        "training counts of {}",
                        dir.join(quickdraw_data::manifest::MANIFEST_FILE).display()
                    ),
                )
            })
        })
    };
    let (counts, counts_from) = train_counts.unwrap_or_else(|| {
        (
            report.per_class.iter().map(|c| c.support).collect(),
            "class counts of the eval set".to_string(),
        )
    });
    // Most frequent class; ties go to the lower label (as an argmax would).
    let label = counts
        .iter()
        .enumerate()
        .fold(0, |best, (i, &c)| if c > counts[best] { i } else { best });
    let support = report.per_class.get(label).map(|c| c.support).unwrap_or(0);
    BaselineInfo {
        accuracy: if report.examples > 0 {
            support as f64 / report.examples as f64
        } else {
            0.0
        },
        majority_class: classes.get(label).cloned().unwrap_or_default(),
        label,
        counts_from,
    }
}

/// The gate's objections (empty when the model may be exported).
pub fn gate_problems(
    report: &MetricsReport,
    baseline: &BaselineInfo,
    previous: Option<&PreviousExport>,
) -> Vec<String> {
    let mut p = Vec::new();
    let acc = report.accuracy;
    if !acc.is_finite() || !report.loss.is_finite() {
        p.push(format!(
            "its eval accuracy/loss is not finite (accuracy {acc}, loss {})",
            report.loss
        ));
    }
    if report.examples == 0 {
        p.push("the eval set is empty".into());
    }
    if acc <= baseline.accuracy {
        p.push(format!(
            "its eval accuracy {acc:.4} is not above the baseline's {:.4} (always predicting {:?}, the most frequent class)",
            baseline.accuracy, baseline.majority_class
        ));
    }
    if let Some(prev) = previous {
        match prev.accuracy {
            // serde_json's default float parser is not exact (0.9310344827586207 written comes
            // back as ...208), so the same accuracy read from metrics.json must not look higher.
            Some(pa) if acc < pa - 1e-12 => p.push(format!(
                "its eval accuracy {acc:.4} is below that of the newest exported version {} ({pa:.4}, {})",
                prev.version,
                prev.dir.display()
            )),
            _ => {}
        }
    }
    p
}

/// The first `n` examples of the eval stream as one batch.
fn first_batch(
    src: &DataSource,
    kind: ModelKind,
    n_classes: usize,
    n: usize,
) -> Result<Option<Batch>> {
    let mut p = Pipeline::spawn(
        src,
        PipelineOptions {
            order: OrderOptions::eval(),
            decode: DecodeOptions {
                spec: *src.spec(),
                n_classes,
                strokes: kind.uses_strokes(),
            },
            batch_size: n.max(1),
            start: StreamPosition::default(),
            prefetch: 1,
            max_batches: Some(1),
        },
    )?;
    Ok(p.next_batch()?)
}

fn to_vec(t: Tensor<2>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 data")
}

fn check_sample(tm: &TrainedModel, batch: &Batch) -> Result<CheckSample> {
    let kind = tm.kind();
    let n = batch.size;
    let logits = to_vec(
        tm.model()
            .forward(ModelInput::from_batch(batch, kind, tm.device())?),
    );
    let probabilities = tm.predict_batch(batch)?;
    let inputs = if kind.uses_strokes() {
        let s = batch
            .strokes
            .as_ref()
            .ok_or_else(|| ExportError::Config("the eval shards have no stroke features".into()))?;
        SampleInputs::Strokes {
            steps: s.steps,
            strokes: s.forward.clone(),
            lengths: s.lens.iter().map(|&l| l as i64).collect(),
        }
    } else {
        let size = tm.image_size();
        SampleInputs::Images {
            key: quickdraw_data::features::image_key(size as u32),
            size,
            pixels: batch.images.clone(),
        }
    };
    Ok(CheckSample {
        n,
        n_classes: tm.n_classes(),
        inputs,
        labels: batch.labels.clone(),
        logits,
        probabilities,
    })
}

/// Loads, checks, evaluates, gates and writes a version to its temporary folder.
pub fn stage(req: &ExportRequest) -> Result<StagedExport> {
    let tm = TrainedModel::load(&req.model_dir, req.checkpoint, req.device)?;
    let kind = tm.kind();
    let what = format!(
        "{} ({} model, checkpoint step {})",
        req.model_dir.display(),
        kind,
        tm.step()
    );
    let bad = non_finite_params(tm.model());
    if !bad.is_empty() {
        return Err(ExportError::NonFinite { what, params: bad });
    }

    // Evaluation of the checkpoint and of the class-prior baseline.
    let eval_files = req.eval_files.clone().or_else(|| tm.config.data.eval_files.clone()).ok_or_else(|| {
        ExportError::Config(format!(
            "{}: no eval files recorded in config.json (trained without --eval-files); pass --eval-files GLOB",
            req.model_dir.display()
        ))
    })?;
    let src = DataSource::open(&eval_files)?;
    check_compatible(&tm, &src)?;
    let opts = EvalOptions {
        batch_size: req.batch_size.unwrap_or(tm.config.batch_size.max(64)),
        max_batches: req.eval_steps,
        ..EvalOptions::default()
    };
    let (evaluation, _) = evaluate_model(
        tm.model(),
        kind,
        tm.device(),
        &src,
        tm.labels(),
        &opts,
        false,
    )?;
    let baseline = baseline_of(&tm, &evaluation);
    let previous = previous_export(&req.export_base)?;
    let problems = gate_problems(&evaluation, &baseline, previous.as_ref());
    if !problems.is_empty() && !req.force {
        return Err(ExportError::Refused {
            what,
            reasons: problems,
        });
    }

    // The graph and the check sample.
    let onnx = build_onnx(&tm)?;
    let batch = first_batch(&src, kind, tm.n_classes(), req.sample_size)?
        .ok_or_else(|| ExportError::Config(format!("{eval_files:?}: the eval set is empty")))?;
    let sample = check_sample(&tm, &batch)?;

    let model_config = serde_json::to_value(&tm.config.model).unwrap_or(serde_json::Value::Null);
    let info = ModelInfo {
        kind: model_type(kind),
        config: model_config,
    };
    let signature = if kind.uses_strokes() {
        Signature::strokes(info, tm.n_classes())
    } else {
        Signature::image(info, tm.image_size() as u32, tm.n_classes())
    };
    let metrics = metrics_json(
        &tm,
        &eval_files,
        &evaluation,
        &baseline,
        previous.as_ref(),
        &problems,
        req.force,
    );

    // Write `<base>/.<version>.tmp/`.
    fs::create_dir_all(&req.export_base).map_err(io(&req.export_base))?;
    let version = next_version(&req.export_base)?;
    let tmp_dir = req.export_base.join(format!(".{version}.tmp"));
    if tmp_dir.exists() {
        // Left by a killed export.
        fs::remove_dir_all(&tmp_dir).map_err(io(&tmp_dir))?;
    }
    let staged = StagedExport {
        version,
        base: req.export_base.clone(),
        final_dir: req.export_base.join(version.to_string()),
        tmp_dir: tmp_dir.clone(),
        kind,
        step: tm.step(),
        checkpoint_dir: tm.checkpoint.dir.clone(),
        eval_files,
        evaluation,
        baseline,
        previous,
        overridden: problems,
        signature,
        onnx_bytes: onnx.len(),
        sample,
        published: false,
    };
    fs::create_dir_all(&tmp_dir).map_err(io(&tmp_dir))?;
    write_export_metadata(
        &tmp_dir,
        &staged.signature,
        tm.labels(),
        tm.feature_spec(),
        &metrics,
    )?;
    let model_path = tmp_dir.join(signature::MODEL_FILE);
    fs::write(&model_path, &onnx).map_err(io(&model_path))?;
    for f in [
        model_path,
        tmp_dir.join(signature::SIGNATURE_FILE),
        tmp_dir.join(signature::METRICS_FILE),
    ] {
        fs::File::open(&f)
            .and_then(|f| f.sync_all())
            .map_err(io(&f))?;
    }
    sync_dir(&tmp_dir);
    Ok(staged)
}

fn metrics_json(
    tm: &TrainedModel,
    eval_files: &str,
    m: &MetricsReport,
    baseline: &BaselineInfo,
    previous: Option<&PreviousExport>,
    problems: &[String],
    force: bool,
) -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let per_class: Vec<serde_json::Value> = m
        .per_class
        .iter()
        .map(|c| json!({"class": c.class, "support": c.support, "precision": c.precision, "recall": c.recall, "f1": c.f1}))
        .collect();
    json!({
        "accuracy": m.accuracy,
        "top3_accuracy": m.top3_accuracy,
        "map3": m.map3,
        "loss": m.loss,
        "macro_f1": m.macro_f1,
        "examples": m.examples,
        "eval_files": eval_files,
        "model_dir": tm.model_dir.display().to_string(),
        "checkpoint": tm.checkpoint.dir.display().to_string(),
        "step": tm.step(),
        "baseline": baseline,
        "previous_version": previous.map(|p| json!({"version": p.version, "accuracy": p.accuracy})),
        "gate": {"passed": problems.is_empty(), "forced": force && !problems.is_empty(), "problems": problems},
        "per_class": per_class,
        "exported_at": now,
    })
}

/// [`stage`] then [`StagedExport::publish`], without a check in between.
pub fn export(req: &ExportRequest) -> Result<StagedExport> {
    let mut staged = stage(req)?;
    staged.publish()?;
    Ok(staged)
}

// ---------------------------------------------------------------------------------------------
// ONNX graphs

/// `model.onnx` bytes of a loaded model (see the module docs for what each kind becomes).
pub fn build_onnx(tm: &TrainedModel) -> Result<Vec<u8>> {
    let kind = tm.kind();
    let mut model = match tm.model() {
        Model::Rnn(rnn) => rnn_graph(rnn, tm.n_classes())?,
        m => capture_image_model(m, tm.image_size(), tm.device())?,
    };
    finish_model(&mut model, kind, tm.n_classes());
    let bytes = model
        .write_to_bytes()
        .map_err(|e| ExportError::Onnx(e.to_string()))?;
    Ok(bytes)
}

/// Captures an image model's forward pass with burn-onnx (batch axis `N` dynamic) and names
/// its input `img_<S>` and its output `logits`.
fn capture_image_model(
    model: &Model,
    size: usize,
    device: &burn::tensor::Device,
) -> Result<ModelProto> {
    let sample = Tensor::<4>::zeros([2, 1, size, size], device);
    let validation = Tensor::<4>::zeros([3, 1, size, size], device);
    let specs = [InputSpec::new([
        AxisSpec::dynamic("N"),
        AxisSpec::Static,
        AxisSpec::Static,
        AxisSpec::Static,
    ])];
    let onnx = OnnxExporter::new().export_dynamic(
        model,
        sample,
        validation,
        &specs,
        |m: &Model, x: Tensor<4>| match m {
            // The baseline's logits do not depend on the image; a graph output must, so they are
            // written as `0 * sum(pixels) + log_prior` (batch-shaped, exactly the log prior).
            Model::Baseline(b) => {
                let c = b.log_prior.val().dims()[0];
                let zero = x.flatten::<2>(1, 3).sum_dim(1).mul_scalar(0.0); // [N, 1]
                zero + b.log_prior.val().reshape([1, c]) // [N, C]
            }
            // burn's Conv2d in every layer, so the graph has ONNX `Conv` nodes.
            Model::Cnn(c) => c.forward_standard(x),
            m => m.forward(ModelInput::Images(x)),
        },
    )?;
    let mut proto = ModelProto::parse_from_bytes(onnx.as_bytes())
        .map_err(|e| ExportError::Onnx(e.to_string()))?;
    let g = proto.graph.mut_or_insert_default();
    if g.input.len() != 1 || g.output.len() != 1 {
        return Err(ExportError::Onnx(format!(
            "captured graph has {} inputs and {} outputs, expected 1 and 1",
            g.input.len(),
            g.output.len()
        )));
    }
    let key = quickdraw_data::features::image_key(size as u32);
    let old_in = std::mem::replace(&mut g.input[0].name, key.clone());
    let old_out = std::mem::replace(&mut g.output[0].name, signature::LOGITS.to_string());
    for node in &mut g.node {
        for i in node.input.iter_mut().chain(node.output.iter_mut()) {
            if *i == old_in {
                *i = key.clone();
            } else if *i == old_out {
                *i = signature::LOGITS.to_string();
            }
        }
    }
    Ok(proto)
}

/// Appends `probabilities` (Softmax) and `classes` (ArgMax, int64) to a graph whose only output
/// is `logits` `[N, C]`, and fills in the model's metadata.
fn finish_model(model: &mut ModelProto, kind: ModelKind, n_classes: usize) {
    model.producer_name = "quickdraw".into();
    model.producer_version = env!("CARGO_PKG_VERSION").into();
    model.doc_string =
        format!("QuickDraw {kind} classifier over {n_classes} classes (quickdraw export)");
    let g = model.graph.mut_or_insert_default();
    g.name = format!("quickdraw_{kind}");
    g.node.push(node(
        "softmax",
        "Softmax",
        &[signature::LOGITS],
        &[signature::PROBABILITIES],
        vec![int_attr("axis", 1)],
    ));
    g.node.push(node(
        "argmax",
        "ArgMax",
        &[signature::LOGITS],
        &[signature::CLASSES],
        vec![int_attr("axis", 1), int_attr("keepdims", 0)],
    ));
    g.output.truncate(1);
    g.output[0] = value_info(
        signature::LOGITS,
        ONNX_FLOAT,
        &[Dim::Sym("N"), Dim::Fixed(n_classes as i64)],
    );
    g.output.push(value_info(
        signature::PROBABILITIES,
        ONNX_FLOAT,
        &[Dim::Sym("N"), Dim::Fixed(n_classes as i64)],
    ));
    g.output
        .push(value_info(signature::CLASSES, ONNX_INT64, &[Dim::Sym("N")]));
}

enum Dim {
    Fixed(i64),
    Sym(&'static str),
}

fn value_info(name: &str, elem_type: i32, dims: &[Dim]) -> ValueInfoProto {
    let mut v = ValueInfoProto::new();
    v.name = name.to_string();
    let tt = v.type_.mut_or_insert_default().mut_tensor_type();
    tt.elem_type = elem_type;
    let shape = tt.shape.mut_or_insert_default();
    for d in dims {
        shape.dim.push(Default::default());
        let last = shape.dim.last_mut().expect("pushed");
        match d {
            Dim::Fixed(v) => last.set_dim_value(*v),
            Dim::Sym(s) => last.set_dim_param(s.to_string()),
        }
    }
    v
}

fn node(
    name: &str,
    op: &str,
    inputs: &[&str],
    outputs: &[&str],
    attribute: Vec<AttributeProto>,
) -> NodeProto {
    let mut n = NodeProto::new();
    n.name = name.to_string();
    n.op_type = op.to_string();
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = outputs.iter().map(|s| s.to_string()).collect();
    n.attribute = attribute;
    n
}

fn int_attr(name: &str, v: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.to_string();
    a.type_ = AttributeType::INT.into();
    a.i = v;
    a
}

fn ints_attr(name: &str, v: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.to_string();
    a.type_ = AttributeType::INTS.into();
    a.ints = v.to_vec();
    a
}

fn string_attr(name: &str, v: &str) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.to_string();
    a.type_ = AttributeType::STRING.into();
    a.s = v.to_string().into();
    a
}

fn tensor_attr(name: &str, t: TensorProto) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.to_string();
    a.type_ = AttributeType::TENSOR.into();
    *a.t.mut_or_insert_default() = t;
    a
}

fn f32_init(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.to_string();
    t.data_type = ONNX_FLOAT;
    t.dims = dims.iter().map(|&d| d as i64).collect();
    t.raw_data = data
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect::<Vec<u8>>()
        .into();
    t
}

fn i64_init(name: &str, dims: &[usize], data: &[i64]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.to_string();
    t.data_type = ONNX_INT64;
    t.dims = dims.iter().map(|&d| d as i64).collect();
    t.raw_data = data
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect::<Vec<u8>>()
        .into();
    t
}

fn floats<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    let d: TensorData = t.into_data().convert::<f32>();
    d.try_to_vec::<f32>().expect("f32 data")
}

/// Weight `[in, out]` (burn's layout) and bias `[out]` of a linear layer (zeros without bias).
fn linear_parts(l: &Linear) -> (Vec<f32>, [usize; 2], Vec<f32>) {
    let w = l.weight.val();
    let dims = w.dims();
    let bias = l
        .bias
        .as_ref()
        .map(|b| floats(b.val()))
        .unwrap_or_else(|| vec![0.0; dims[1]]);
    (floats(w), dims, bias)
}

/// `[in, out]` row-major -> `[out, in]` row-major.
fn transpose(w: &[f32], [rows, cols]: [usize; 2]) -> Vec<f32> {
    let mut t = vec![0.0; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}

/// ONNX `LSTM` weights of one direction: `w [1, 4H, d_in]`, `r [1, 4H, H]`, `b [1, 8H]`, gates
/// in ONNX's order (input, output, forget, cell).
struct OnnxLstm {
    w: Vec<f32>,
    r: Vec<f32>,
    b: Vec<f32>,
    d_in: usize,
    hidden: usize,
}

/// The ONNX `LSTM` weights of a burn LSTM.
fn lstm_weights(l: &Lstm) -> Result<OnnxLstm> {
    if l.input_forget || l.clip.is_some() {
        return Err(ExportError::Unsupported(
            ModelKind::Rnn,
            "coupled input/forget gates or cell clipping".into(),
        ));
    }
    let forget = l
        .forget_gate
        .as_ref()
        .ok_or_else(|| ExportError::Unsupported(ModelKind::Rnn, "no forget gate".into()))?;
    let standard = matches!(l.gate_activation, Activation::Sigmoid(_))
        && matches!(l.cell_activation, Activation::Tanh(_))
        && matches!(l.hidden_activation, Activation::Tanh(_));
    if !standard {
        return Err(ExportError::Unsupported(
            ModelKind::Rnn,
            "LSTM activations other than sigmoid/tanh/tanh".into(),
        ));
    }
    let h = l.d_hidden;
    let (mut w, mut r, mut wb, mut rb) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut d_in = 0;
    for g in [&l.input_gate, &l.output_gate, forget, &l.cell_gate] {
        let (iw, idims, ib) = linear_parts(&g.input_transform);
        let (hw, hdims, hb) = linear_parts(&g.hidden_transform);
        d_in = idims[0];
        w.extend(transpose(&iw, idims));
        r.extend(transpose(&hw, hdims));
        wb.extend(ib);
        rb.extend(hb);
    }
    wb.extend(rb);
    Ok(OnnxLstm {
        w,
        r,
        b: wb,
        d_in,
        hidden: h,
    })
}

/// The bidirectional LSTM as an ONNX graph on `strokes [N, T, 3]`, `lengths [N]` -> `logits`.
fn rnn_graph(rnn: &Rnn, n_classes: usize) -> Result<ModelProto> {
    let fwd = lstm_weights(&rnn.forward)?;
    let bwd = lstm_weights(&rnn.backward)?;
    let (d_in, h) = (fwd.d_in, fwd.hidden);
    if (bwd.d_in, bwd.hidden) != (d_in, h) {
        return Err(ExportError::Onnx(
            "the two LSTM directions differ in size".into(),
        ));
    }
    if d_in != 3 {
        return Err(ExportError::Unsupported(
            ModelKind::Rnn,
            format!("LSTM input width {d_in}, the strokes input has 3"),
        ));
    }
    let (ow, odims, ob) = linear_parts(&rnn.output);
    if odims != [2 * h, n_classes] {
        return Err(ExportError::Onnx(format!(
            "output layer is {odims:?}, expected [{}, {n_classes}]",
            2 * h
        )));
    }
    let mut model = ModelProto::new();
    model.ir_version = IR_VERSION;
    model.opset_import.push(Default::default());
    model.opset_import[0].version = OPSET;
    let g = model.graph.mut_or_insert_default();
    let (s, l) = (signature::STROKES, signature::LENGTHS);
    g.input.push(value_info(
        s,
        ONNX_FLOAT,
        &[Dim::Sym("N"), Dim::Sym("T"), Dim::Fixed(3)],
    ));
    g.input.push(value_info(l, ONNX_INT64, &[Dim::Sym("N")]));
    g.initializer.extend([
        f32_init("forward.W", &[1, 4 * h, d_in], &fwd.w),
        f32_init("forward.R", &[1, 4 * h, h], &fwd.r),
        f32_init("forward.B", &[1, 8 * h], &fwd.b),
        f32_init("backward.W", &[1, 4 * h, d_in], &bwd.w),
        f32_init("backward.R", &[1, 4 * h, h], &bwd.r),
        f32_init("backward.B", &[1, 8 * h], &bwd.b),
        f32_init("output.weight", &odims, &ow),
        f32_init("output.bias", &[n_classes], &ob),
        i64_init("c_one", &[1], &[1]),
        i64_init("c_zero", &[], &[0]),
        i64_init("c_one_scalar", &[], &[1]),
        i64_init("c_axis0", &[1], &[0]),
        i64_init("c_axis1", &[1], &[1]),
        i64_init("c_axis2", &[1], &[2]),
        i64_init("c_hidden", &[1], &[h as i64]),
    ]);
    let n = &mut g.node;
    // T = shape(strokes)[1]; t = [0, 1, .., T-1] as [1, T].
    n.push(node("shape", "Shape", &[s], &["shape"], vec![]));
    n.push(node(
        "steps",
        "Gather",
        &["shape", "c_one_scalar"],
        &["steps"],
        vec![int_attr("axis", 0)],
    ));
    n.push(node(
        "range",
        "Range",
        &["c_zero", "steps", "c_one_scalar"],
        &["t"],
        vec![],
    ));
    n.push(node(
        "t_row",
        "Unsqueeze",
        &["t", "c_axis0"],
        &["t_row"],
        vec![],
    ));
    // len [N, 1]; valid = t < len; reversed index within the length: len - 1 - t.
    n.push(node(
        "len_col",
        "Unsqueeze",
        &[l, "c_axis1"],
        &["len_col"],
        vec![],
    ));
    n.push(node(
        "valid",
        "Less",
        &["t_row", "len_col"],
        &["valid"],
        vec![],
    ));
    n.push(node(
        "len_m1",
        "Sub",
        &["len_col", "c_one"],
        &["len_m1"],
        vec![],
    ));
    n.push(node("rev", "Sub", &["len_m1", "t_row"], &["rev"], vec![]));
    n.push(node(
        "rev_idx",
        "Where",
        &["valid", "rev", "t_row"],
        &["rev_idx"],
        vec![],
    ));
    n.push(node(
        "rev_idx3",
        "Unsqueeze",
        &["rev_idx", "c_axis2"],
        &["rev_idx3"],
        vec![],
    ));
    n.push(node(
        "rev_idx_x",
        "Expand",
        &["rev_idx3", "shape"],
        &["rev_idx_x"],
        vec![],
    ));
    n.push(node(
        "reversed",
        "GatherElements",
        &[s, "rev_idx_x"],
        &["reversed"],
        vec![int_attr("axis", 1)],
    ));
    // mask [N, T, 1]
    n.push(node(
        "mask2",
        "Cast",
        &["valid"],
        &["mask2"],
        vec![int_attr("to", ONNX_FLOAT as i64)],
    ));
    n.push(node(
        "mask",
        "Unsqueeze",
        &["mask2", "c_axis2"],
        &["mask"],
        vec![],
    ));
    // Zero initial states [1, N, H], given explicitly: tract needs them for a symbolic batch.
    n.push(node(
        "batch",
        "Gather",
        &["shape", "c_axis0"],
        &["batch"],
        vec![int_attr("axis", 0)],
    ));
    n.push(node(
        "state_shape",
        "Concat",
        &["c_one", "batch", "c_hidden"],
        &["state_shape"],
        vec![int_attr("axis", 0)],
    ));
    n.push(node(
        "state0",
        "ConstantOfShape",
        &["state_shape"],
        &["state0"],
        vec![tensor_attr("value", f32_init("", &[1], &[0.0]))],
    ));
    for (dir, x) in [("forward", s), ("backward", "reversed")] {
        let names = |suffix: &str| format!("{dir}_{suffix}");
        let (xt, y, y3, yb, ym, hsum) = (
            names("x"),
            names("y"),
            names("y3"),
            names("yb"),
            names("ym"),
            names("sum"),
        );
        let (w, r, b) = (format!("{dir}.W"), format!("{dir}.R"), format!("{dir}.B"));
        // [N, T, 3] -> [T, N, 3] -> LSTM Y [T, 1, N, H] -> [T, N, H] -> [N, T, H]
        n.push(node(
            &xt,
            "Transpose",
            &[x],
            &[&xt],
            vec![ints_attr("perm", &[1, 0, 2])],
        ));
        n.push(node(
            &y,
            "LSTM",
            &[&xt, &w, &r, &b, "", "state0", "state0"],
            &[&y],
            vec![
                int_attr("hidden_size", h as i64),
                string_attr("direction", "forward"),
            ],
        ));
        n.push(node(&y3, "Squeeze", &[&y, "c_one"], &[&y3], vec![]));
        n.push(node(
            &yb,
            "Transpose",
            &[&y3],
            &[&yb],
            vec![ints_attr("perm", &[1, 0, 2])],
        ));
        // Outputs in the padding zeroed, summed over time -> [N, H]
        n.push(node(&ym, "Mul", &[&yb, "mask"], &[&ym], vec![]));
        n.push(node(
            &hsum,
            "ReduceSum",
            &[&ym, "c_one"],
            &[&hsum],
            vec![int_attr("keepdims", 0)],
        ));
    }
    n.push(node(
        "features",
        "Concat",
        &["forward_sum", "backward_sum"],
        &["features"],
        vec![int_attr("axis", 1)],
    ));
    n.push(node(
        "matmul",
        "MatMul",
        &["features", "output.weight"],
        &["matmul"],
        vec![],
    ));
    n.push(node(
        "logits",
        "Add",
        &["matmul", "output.bias"],
        &[signature::LOGITS],
        vec![],
    ));
    g.output.push(value_info(
        signature::LOGITS,
        ONNX_FLOAT,
        &[Dim::Sym("N"), Dim::Fixed(n_classes as i64)],
    ));
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ClassMetrics;

    fn report(acc: f64, supports: &[u64]) -> MetricsReport {
        let per_class = supports
            .iter()
            .enumerate()
            .map(|(i, &s)| ClassMetrics {
                label: i,
                class: format!("c{i}"),
                support: s,
                predicted: 0,
                precision: 0.0,
                recall: 0.0,
                f1: 0.0,
            })
            .collect();
        MetricsReport {
            examples: supports.iter().sum(),
            invalid_predictions: 0,
            loss: 1.0,
            accuracy: acc,
            top3_accuracy: 1.0,
            map3: acc,
            macro_precision: 0.0,
            macro_recall: 0.0,
            macro_f1: 0.0,
            classes: (0..supports.len()).map(|i| format!("c{i}")).collect(),
            per_class,
            confusion: vec![],
        }
    }

    #[test]
    fn gate() {
        let base = BaselineInfo {
            accuracy: 0.5,
            majority_class: "c0".into(),
            label: 0,
            counts_from: "x".into(),
        };
        assert!(gate_problems(&report(0.6, &[5, 5]), &base, None).is_empty());
        assert_eq!(
            gate_problems(&report(0.5, &[5, 5]), &base, None).len(),
            1,
            "equal to the baseline is refused"
        );
        let prev = PreviousExport {
            version: 3,
            dir: "b/3".into(),
            accuracy: Some(0.7),
            eval_files: None,
        };
        let p = gate_problems(&report(0.6, &[5, 5]), &base, Some(&prev));
        assert!(p.len() == 1 && p[0].contains("version 3"), "{p:?}");
        assert!(
            gate_problems(&report(0.7, &[5, 5]), &base, Some(&prev)).is_empty(),
            "equal to the previous is fine"
        );
        assert!(!gate_problems(&report(f64::NAN, &[5, 5]), &base, None).is_empty());
    }

    #[test]
    fn versions() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(next_version(&tmp.path().join("missing")).unwrap(), 1);
        assert_eq!(next_version(tmp.path()).unwrap(), 1);
        for d in ["1", "7", ".8.tmp", "x"] {
            fs::create_dir(tmp.path().join(d)).unwrap();
        }
        assert_eq!(next_version(tmp.path()).unwrap(), 8);
        fs::write(
            tmp.path().join("7").join(signature::METRICS_FILE),
            r#"{"accuracy": 0.25}"#,
        )
        .unwrap();
        let p = previous_export(tmp.path()).unwrap().unwrap();
        assert_eq!((p.version, p.accuracy), (7, Some(0.25)));
    }

    #[test]
    fn transpose_is_row_major() {
        // [[1, 2, 3], [4, 5, 6]] -> [[1, 4], [2, 5], [3, 6]]
        assert_eq!(
            transpose(&[1., 2., 3., 4., 5., 6.], [2, 3]),
            vec![1., 4., 2., 5., 3., 6.]
        );
    }
}
