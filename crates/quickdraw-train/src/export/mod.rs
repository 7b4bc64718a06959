//! Export of a trained checkpoint as a serving version folder (`quickdraw export`): the whole
//! inference graph as ONNX ([`onnx`]) plus the files of [`quickdraw_data::signature`], behind the
//! lecture's export gate ([`gate`]: "detect problems before exporting models").
//!
//! [`stage`] loads the checkpoint, refuses non-finite weights, evaluates it (with
//! [`crate::eval`]) and the class-prior baseline on the eval shards, applies the gate, builds
//! `model.onnx` and writes everything to `<base>/.<version>.tmp/` (dropping a [`StagedExport`]
//! unpublished removes it). [`export`] stages, checks the staged graph against burn on
//! [`StagedExport::sample`] with an [`ExportVerifier`] (an ONNX runtime the caller provides: the
//! CLI's is the server's tract `Predictor`; this crate has no ONNX runtime), and only then
//! renames the folder to `<base>/<version>/`.

use std::fs;
use std::path::{Path, PathBuf};

use quickdraw_data::signature::{
    self, ModelInfo, ModelType, Signature, SignatureError, list_versions, write_export_metadata,
};
use quickdraw_data::strokes::StrokeFeatures;
use serde_json::json;

use crate::device::DeviceChoice;
use crate::error::TrainError;
use crate::eval::{EvaluateRequest, evaluate_loaded};
use crate::infer::TrainedModel;
use crate::metrics::{MetricsReport, ranking};
use crate::model::{ModelInput, ModelKind, to_host};
use crate::modeldir::CheckpointSel;
use crate::pipeline::{Batch, DataSource, first_batch};

pub mod gate;
pub mod onnx;

pub use gate::{
    BaselineInfo, PreviousExport, baseline_of, gate_problems, non_finite_params, previous_export,
};
pub use onnx::{OPSET, build_onnx};

/// Default base folder of the versions, inside the model dir.
pub const EXPORT_DIR: &str = "export";
/// Examples of the eval set kept (with burn's outputs) to check the ONNX graph.
pub const DEFAULT_SAMPLE: usize = 8;
/// Largest difference allowed between burn's probabilities and the verifier's on the check
/// sample.
pub const CHECK_TOLERANCE: f32 = 1e-4;

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
    /// The staged graph failed the [`ExportVerifier`]'s check (it was not published).
    #[error("checking {}: {what}", dir.display())]
    Check { dir: PathBuf, what: String },
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
    /// `key` = `img_<size>`, `pixels` = `[n, 1, size, size]` floats (pixel * PIXEL_SCALE);
    /// `wide` = `[n, W]` metadata vectors (the `wide` input of wide & deep models).
    Images {
        key: String,
        size: usize,
        pixels: Vec<f32>,
        wide: Option<Vec<f32>>,
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

    /// The `wide` input as one `Vec` per example (wide & deep models only).
    pub fn wide_rows(&self) -> Option<Vec<Vec<f32>>> {
        match &self.inputs {
            SampleInputs::Images {
                wide: Some(wide), ..
            } => Some(
                wide.chunks(wide.len() / self.n.max(1))
                    .map(<[f32]>::to_vec)
                    .collect(),
            ),
            _ => None,
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
            SampleInputs::Images {
                key,
                size,
                pixels,
                wide,
            } => {
                let mut m = json!({ key.clone(): t("float32", vec![self.n, 1, *size, *size], json!(pixels)) });
                if let Some(w) = wide {
                    let dim = w.len() / self.n.max(1);
                    m[signature::WIDE] = t("float32", vec![self.n, dim], json!(w));
                }
                m
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

/// A version written to its temporary folder by [`stage`] (not yet visible to servers), or, as
/// [`export`] returns it, checked and published as `final_dir`.
#[derive(Debug)]
pub struct StagedExport {
    pub version: u64,
    pub base: PathBuf,
    /// `<base>/.<version>.tmp`.
    pub tmp_dir: PathBuf,
    /// `<base>/<version>` (once [`export`] has published it).
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
    /// What the [`ExportVerifier`] found (`None`: published unchecked, `--no-verify`).
    pub verified: Option<Verified>,
    published: bool,
}

impl StagedExport {
    /// Renames the temporary folder to `<base>/<version>/`; returns that path. Called after
    /// [`verify`] (as [`export`] does) and after the caller added its files to `tmp_dir` (the
    /// CLI adds the server's warm-up requests).
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
        ModelKind::WideDeep => ModelType::WideDeep,
    }
}

/// The next version number of a base folder: newest integer version + 1 (1 when none).
pub fn next_version(base: &Path) -> Result<u64> {
    if !base.exists() {
        return Ok(1);
    }
    Ok(list_versions(base)?.last().map(|(v, _)| v + 1).unwrap_or(1))
}

fn check_sample(tm: &TrainedModel, batch: &Batch) -> Result<CheckSample> {
    let kind = tm.kind();
    let n = batch.size;
    let logits = to_host(
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
            wide: batch.wide.clone(),
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
    let gated = evaluate_and_gate(req, &tm, what)?;

    // The graph and the check sample.
    let onnx = build_onnx(&tm)?;
    let batch = first_batch(&gated.src, &tm.config.model, req.sample_size)?.ok_or_else(|| {
        ExportError::Config(format!("{:?}: the eval set is empty", gated.eval_files))
    })?;
    let sample = check_sample(&tm, &batch)?;
    let metrics = metrics_json(
        &tm,
        &gated.src,
        &gated.eval_files,
        &gated.evaluation,
        &gated.baseline,
        gated.previous.as_ref(),
        &gated.problems,
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
        eval_files: gated.eval_files,
        evaluation: gated.evaluation,
        baseline: gated.baseline,
        previous: gated.previous,
        overridden: gated.problems,
        signature: signature_of(&tm),
        onnx_bytes: onnx.len(),
        sample,
        verified: None,
        published: false,
    };
    write_version(&tmp_dir, &staged.signature, &tm, &metrics, &onnx)?;
    Ok(staged)
}

/// What the gate saw: the evaluation of the checkpoint, the baseline, the newest version, and
/// the objections (overridden by `--force`).
struct Gated {
    eval_files: String,
    src: DataSource,
    evaluation: MetricsReport,
    baseline: BaselineInfo,
    previous: Option<PreviousExport>,
    problems: Vec<String>,
}

/// Evaluates the checkpoint (and the class-prior baseline) on the eval shards and applies the
/// gate; refuses unless it passes or `--force` is given.
fn evaluate_and_gate(req: &ExportRequest, tm: &TrainedModel, what: String) -> Result<Gated> {
    let eval_files = req.eval_files.clone().or_else(|| tm.config.data.eval_files.clone()).ok_or_else(|| {
        ExportError::Config(format!(
            "{}: no eval files recorded in config.json (trained without --eval-files); pass --eval-files GLOB",
            req.model_dir.display()
        ))
    })?;
    let src = DataSource::open(&eval_files)?;
    let eval_req = EvaluateRequest {
        model_dir: req.model_dir.clone(),
        eval_files: eval_files.clone(),
        checkpoint: req.checkpoint,
        eval_steps: req.eval_steps,
        batch_size: req.batch_size,
        device: req.device,
        write_report: false,
    };
    let evaluation = evaluate_loaded(tm, &src, &eval_req, false)?.0.metrics;
    let baseline = baseline_of(tm, &evaluation);
    let previous = previous_export(&req.export_base)?;
    let problems = gate_problems(&evaluation, &baseline, previous.as_ref());
    if !problems.is_empty() && !req.force {
        return Err(ExportError::Refused {
            what,
            reasons: problems,
        });
    }
    Ok(Gated {
        eval_files,
        src,
        evaluation,
        baseline,
        previous,
        problems,
    })
}

/// The serving signature of a loaded model.
fn signature_of(tm: &TrainedModel) -> Signature {
    let kind = tm.kind();
    let model_config = serde_json::to_value(&tm.config.model).unwrap_or(serde_json::Value::Null);
    let info = ModelInfo {
        kind: model_type(kind),
        config: model_config,
    };
    if kind.uses_strokes() {
        Signature::strokes(info, tm.n_classes())
    } else if let Some(w) = tm.wide_spec() {
        Signature::image_wide(info, tm.image_size() as u32, tm.n_classes(), w.dim())
    } else {
        Signature::image(info, tm.image_size() as u32, tm.n_classes())
    }
}

/// Writes a version's files into `dir` (signature, labels, preprocessing, metrics, `model.onnx`)
/// and syncs them.
fn write_version(
    dir: &Path,
    signature: &Signature,
    tm: &TrainedModel,
    metrics: &serde_json::Value,
    onnx: &[u8],
) -> Result<()> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    write_export_metadata(
        dir,
        signature,
        tm.labels(),
        tm.feature_spec(),
        tm.wide_spec(),
        metrics,
    )?;
    let model_path = dir.join(signature::MODEL_FILE);
    fs::write(&model_path, onnx).map_err(io(&model_path))?;
    for f in [
        model_path,
        dir.join(signature::SIGNATURE_FILE),
        dir.join(signature::METRICS_FILE),
    ] {
        fs::File::open(&f)
            .and_then(|f| f.sync_all())
            .map_err(io(&f))?;
    }
    sync_dir(dir);
    Ok(())
}

fn metrics_json(
    tm: &TrainedModel,
    src: &DataSource,
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
        "train_files": tm.config.data.train_files,
        "model_dir": tm.model_dir.display().to_string(),
        "checkpoint": tm.checkpoint.dir.display().to_string(),
        "step": tm.step(),
        "baseline": baseline,
        "previous_version": previous.map(|p| json!({"version": p.version, "accuracy": p.accuracy})),
        "gate": {"passed": problems.is_empty(), "forced": force && !problems.is_empty(), "problems": problems},
        "per_class": per_class,
        "exported_at": now,
        // When the dataset was written (its manifest's modification time): the server exports
        // the training data's age from it (rule #8, freshness).
        "dataset_written_at": dataset_written_at(src),
    })
}

fn dataset_written_at(src: &DataSource) -> Option<f64> {
    let m = std::fs::metadata(src.dir.join(quickdraw_data::manifest::MANIFEST_FILE)).ok()?;
    let t = m
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some(t.as_secs_f64())
}

/// An ONNX runtime that runs a staged version folder, to check the exported graph against burn
/// before it is published (the CLI's runs it with the server's tract `Predictor`).
pub trait ExportVerifier {
    /// The engine's name in messages (`tract`).
    fn engine(&self) -> &str;
    /// Loads the version folder `dir` and runs its graph on the inputs of `sample`; the error is
    /// a message with its causes.
    fn run(&self, dir: &Path, sample: &CheckSample) -> std::result::Result<EngineOutputs, String>;
}

/// The outputs an [`ExportVerifier`] got for a [`CheckSample`].
#[derive(Debug, Clone, PartialEq)]
pub struct EngineOutputs {
    /// `[n, n_classes]` row-major.
    pub probabilities: Vec<f32>,
    /// The graph's `classes` output `[n]`.
    pub classes: Vec<i64>,
}

/// A passed check: the engine's outputs match burn's on the check sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub engine: String,
    pub examples: usize,
    /// Largest |burn - engine| probability difference (at most [`CHECK_TOLERANCE`]).
    pub max_difference: f32,
}

/// Runs the staged graph with `verifier` on the check sample: the probabilities must match
/// burn's within [`CHECK_TOLERANCE`] and `classes` must be their argmax.
pub fn verify(staged: &StagedExport, verifier: &dyn ExportVerifier) -> Result<Verified> {
    let fail = |what: String| ExportError::Check {
        dir: staged.tmp_dir.clone(),
        what,
    };
    let out = verifier
        .run(&staged.tmp_dir, &staged.sample)
        .map_err(fail)?;
    compare_outputs(&staged.sample, &out, verifier.engine()).map_err(fail)
}

/// Compares an engine's outputs on the check sample with burn's (see [`verify`]).
fn compare_outputs(
    s: &CheckSample,
    out: &EngineOutputs,
    engine: &str,
) -> std::result::Result<Verified, String> {
    let c = s.n_classes;
    if out.classes.len() != s.n || out.probabilities.len() != s.n * c {
        return Err(format!(
            "{engine} returned {} rows for {} inputs",
            out.classes.len(),
            s.n
        ));
    }
    let mut max = 0f32;
    for i in 0..s.n {
        let row = &out.probabilities[i * c..(i + 1) * c];
        for (a, b) in s.row(i).iter().zip(row) {
            let d = (a - b).abs();
            // NaN on either side is a disagreement (f32::max would skip it).
            max = if d.is_nan() {
                f32::INFINITY
            } else {
                max.max(d)
            };
        }
        let argmax = ranking(row)[0] as i64;
        if out.classes[i] != argmax {
            return Err(format!(
                "example {i}: the classes output {} is not the argmax {argmax}",
                out.classes[i]
            ));
        }
    }
    if max > CHECK_TOLERANCE {
        return Err(format!(
            "the exported graph disagrees with burn: probabilities differ by up to {max:e} (> {CHECK_TOLERANCE:e}) on {} eval examples",
            s.n
        ));
    }
    Ok(Verified {
        engine: engine.to_string(),
        examples: s.n,
        max_difference: max,
    })
}

/// [`stage`], [`verify`] with `verifier`, then publish as `<base>/<version>/` (the returned
/// export's `final_dir`). `None` publishes unchecked: only for an explicit `--no-verify`.
pub fn export(req: &ExportRequest, verifier: Option<&dyn ExportVerifier>) -> Result<StagedExport> {
    let mut staged = stage(req)?;
    staged.verified = verifier.map(|v| verify(&staged, v)).transpose()?;
    staged.publish()?;
    Ok(staged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(next_version(&tmp.path().join("missing")).unwrap(), 1);
        assert_eq!(next_version(tmp.path()).unwrap(), 1);
        for d in ["1", "7", ".8.tmp", "x"] {
            fs::create_dir(tmp.path().join(d)).unwrap();
        }
        assert_eq!(next_version(tmp.path()).unwrap(), 8);
    }

    /// Two examples over three classes, as burn computed them.
    fn sample() -> CheckSample {
        CheckSample {
            n: 2,
            n_classes: 3,
            inputs: SampleInputs::Images {
                key: "img_1".into(),
                size: 1,
                pixels: vec![0.0, 1.0],
                wide: None,
            },
            labels: vec![0, 2],
            logits: vec![0.0; 6],
            probabilities: vec![0.7, 0.2, 0.1, 0.1, 0.3, 0.6],
        }
    }

    #[test]
    fn engine_outputs_must_match_burn() {
        let s = sample();
        let out = |probabilities: Vec<f32>, classes: Vec<i64>| EngineOutputs {
            probabilities,
            classes,
        };
        let close = vec![0.70001, 0.2, 0.09999, 0.1, 0.3, 0.6];
        let v = compare_outputs(&s, &out(close.clone(), vec![0, 2]), "e").unwrap();
        assert_eq!((v.engine.as_str(), v.examples), ("e", 2));
        assert!(v.max_difference > 0.0 && v.max_difference <= CHECK_TOLERANCE);

        let far = vec![0.6, 0.3, 0.1, 0.1, 0.3, 0.6];
        let e = compare_outputs(&s, &out(far, vec![0, 2]), "e").unwrap_err();
        assert!(e.contains("disagrees with burn"), "{e}");
        // A NaN probability is a disagreement even where the argmax still agrees.
        let mut nan = close.clone();
        nan[2] = -f32::NAN;
        let e = compare_outputs(&s, &out(nan, vec![0, 2]), "e").unwrap_err();
        assert!(e.contains("disagrees with burn"), "{e}");
        let e = compare_outputs(&s, &out(close.clone(), vec![0, 1]), "e").unwrap_err();
        assert!(
            e.contains("example 1") && e.contains("not the argmax 2"),
            "{e}"
        );
        let e = compare_outputs(&s, &out(close[..3].to_vec(), vec![0]), "e").unwrap_err();
        assert!(e.contains("e returned 1 rows for 2 inputs"), "{e}");
    }
}
