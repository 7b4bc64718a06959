//! The model directory: configuration, labels, checkpoints, TensorBoard events and metrics.
//!
//! ```text
//! <model-dir>/
//!   config.json                    TrainConfig: model + optimizer hyper-parameters, classes,
//!                                  the dataset's FeatureSpec (how inputs are preprocessed)
//!   labels.txt                     copied from the dataset; label = line index
//!   checkpoints/
//!     step-00000100/               one complete checkpoint (written as .tmp-*, then renamed)
//!       model.bpk                  weights (burnpack)
//!       optimizer.bpk              optimizer state (burnpack)
//!       state.json                 step, data position, eval accuracy at that step
//!   events.out.tfevents.*          TensorBoard: training scalars, input images, histograms
//!   eval/events.out.tfevents.*     TensorBoard: evaluation scalars, confusion matrix image
//!   metrics.jsonl                  one JSON line per evaluation during training
//!   evaluation.json                the last `quickdraw evaluate` report
//! ```
//!
//! Checkpoints are renamed into place only when complete, so a killed run never leaves a
//! half-written one; the last `K` (by step) are kept, plus the best one by eval accuracy.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use burn::module::Module;
use burn::optim::{
    AdaGradConfig, AdamConfig, AdamWConfig, ModuleOptimizer, RmsPropConfig, SgdConfig,
    decay::WeightDecayConfig, momentum::MomentumConfig,
};
use quickdraw_data::features::FeatureSpec;
use serde::{Deserialize, Serialize};

use crate::augment::Augment;
use crate::error::{Result, TrainError};
use crate::model::{Model, ModelConfig};
use crate::pipeline::StreamPosition;
use crate::precision::Precision;
use crate::schedule::{EarlyStopping, LrSchedule, MonitorState, ScheduleKind};

pub const CONFIG_FILE: &str = "config.json";
/// The class names, copied from the dataset (the one definition is the dataset manifest's).
pub use quickdraw_data::manifest::LABELS_FILE;
pub const CHECKPOINTS_DIR: &str = "checkpoints";
pub const EVAL_DIR: &str = "eval";
/// One JSON line per logged step and evaluation (not the export's `metrics.json`).
pub const METRICS_LOG_FILE: &str = "metrics.jsonl";
pub const EVALUATION_FILE: &str = "evaluation.json";
/// A checkpoint's weights (burn record); not the export's `model.onnx`.
pub const WEIGHTS_FILE: &str = "model.bpk";
pub const OPTIMIZER_FILE: &str = "optimizer.bpk";
pub const STATE_FILE: &str = "state.json";
/// Bumped when config.json changes meaning.
pub const CONFIG_VERSION: u32 = 1;

/// Optimizers (`--optimizer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adam,
    AdamW,
    Sgd,
    /// SGD with momentum 0.9.
    Momentum,
    RmsProp,
    AdaGrad,
}

impl OptimizerKind {
    pub const ALL: [OptimizerKind; 6] = [
        OptimizerKind::Adam,
        OptimizerKind::AdamW,
        OptimizerKind::Sgd,
        OptimizerKind::Momentum,
        OptimizerKind::RmsProp,
        OptimizerKind::AdaGrad,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::Adam => "adam",
            OptimizerKind::AdamW => "adamw",
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Momentum => "momentum",
            OptimizerKind::RmsProp => "rmsprop",
            OptimizerKind::AdaGrad => "adagrad",
        }
    }

    /// Learning rate used when `--learning-rate` is not given.
    pub fn default_learning_rate(self) -> f64 {
        match self {
            OptimizerKind::Adam | OptimizerKind::AdamW | OptimizerKind::RmsProp => 1e-3,
            OptimizerKind::Sgd | OptimizerKind::Momentum | OptimizerKind::AdaGrad => 1e-2,
        }
    }

    /// A fresh optimizer (no state) with burn's defaults (AdamW: decoupled decay 1e-4).
    pub fn init(self) -> ModuleOptimizer {
        self.init_with(None)
    }

    /// A fresh optimizer; `weight_decay` is AdamW's decoupled decay (default 1e-4, burn's),
    /// and an L2 penalty added to the gradient for the others (default none), as
    /// `--weight-decay` documents.
    pub fn init_with(self, weight_decay: Option<f64>) -> ModuleOptimizer {
        let l2 = weight_decay.map(|w| WeightDecayConfig::new(w as f32));
        match self {
            // One fused pass per parameter on the CPU, burn's Adam elsewhere (same results,
            // same checkpoint records: see `fused_adam`, which declines weight decay).
            OptimizerKind::Adam => {
                let c = AdamConfig::new().with_weight_decay(l2);
                crate::fused_adam::FusedAdam::new(&c)
                    .map_or_else(|| c.init(), ModuleOptimizer::from)
            }
            OptimizerKind::AdamW => match weight_decay {
                Some(w) => AdamWConfig::new().with_weight_decay(w as f32).init(),
                None => AdamWConfig::new().init(),
            },
            OptimizerKind::Sgd => SgdConfig::new().with_weight_decay(l2).init(),
            OptimizerKind::Momentum => SgdConfig::new()
                .with_weight_decay(l2)
                .with_momentum(Some(
                    MomentumConfig::new().with_momentum(0.9).with_dampening(0.0),
                ))
                .init(),
            OptimizerKind::RmsProp => RmsPropConfig::new().with_weight_decay(l2).init(),
            OptimizerKind::AdaGrad => AdaGradConfig::new().with_weight_decay(l2).init(),
        }
    }
}

impl FromStr for OptimizerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        OptimizerKind::ALL.into_iter().find(|k| k.name() == s.to_ascii_lowercase()).ok_or_else(|| {
            format!("unknown optimizer {s:?} (expected adam, adamw, sgd, momentum, rmsprop or adagrad)")
        })
    }
}

impl std::fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the training data came from (recorded, not compared on resume).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    pub train_files: String,
    #[serde(default)]
    pub eval_files: Option<String>,
    pub dataset_dir: String,
    pub train_examples: u64,
}

/// `config.json`: everything that defines a training run. Re-running `train` on a model dir
/// with a different config is refused unless `--overwrite`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub config_version: u32,
    pub model: ModelConfig,
    pub optimizer: OptimizerKind,
    pub learning_rate: f64,
    pub batch_size: usize,
    pub seed: u64,
    pub shuffle_buffer: usize,
    /// Class names (label = index), as in labels.txt.
    pub classes: Vec<String>,
    /// How the dataset was preprocessed; `predict` and the server preprocess inputs the same way.
    pub features: FeatureSpec,
    /// Informational.
    #[serde(default)]
    pub data: DataInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_started_from: Option<String>,
    /// `--lr-schedule` and its parameters (absent: constant rate, no warm-up).
    #[serde(default, skip_serializing_if = "LrSchedule::is_default")]
    pub lr_schedule: LrSchedule,
    /// `--weight-decay` (absent: the optimizer's default; see [`OptimizerKind::init_with`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// `--label-smoothing` of the training loss (evaluation reports the plain loss).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_smoothing: Option<f64>,
    /// `--class-weight`: the per-class weights of the training loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_weights: Option<ClassWeights>,
    /// `--early-stopping-patience` and `--early-stopping-metric`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopping>,
    /// `--augment` of the training images.
    #[serde(default, skip_serializing_if = "Augment::is_none")]
    pub augment: Augment,
    /// `--precision` of the forward and backward passes (the weights are float32 always).
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

/// Per-class loss weights and where they came from (`balanced` or a file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassWeights {
    pub source: String,
    /// One weight per class, in label order.
    pub weights: Vec<f32>,
}

impl TrainConfig {
    /// The run's optimizer, fresh.
    pub fn init_optimizer(&self) -> ModuleOptimizer {
        self.optimizer.init_with(self.weight_decay)
    }
}

impl TrainConfig {
    /// Human-readable list of the differences that matter for resuming.
    pub fn differences(&self, other: &TrainConfig) -> Vec<String> {
        let mut d = Vec::new();
        let mut cmp = |name: &str, a: String, b: String| {
            if a != b {
                d.push(format!("{name}: {a} -> {b}"));
            }
        };
        fn j<T: Serialize>(v: &T) -> String {
            serde_json::to_string(v).unwrap_or_default()
        }
        cmp("model", j(&self.model), j(&other.model));
        cmp(
            "optimizer",
            self.optimizer.to_string(),
            other.optimizer.to_string(),
        );
        cmp(
            "learning_rate",
            self.learning_rate.to_string(),
            other.learning_rate.to_string(),
        );
        cmp(
            "batch_size",
            self.batch_size.to_string(),
            other.batch_size.to_string(),
        );
        cmp("seed", self.seed.to_string(), other.seed.to_string());
        cmp(
            "shuffle_buffer",
            self.shuffle_buffer.to_string(),
            other.shuffle_buffer.to_string(),
        );
        cmp("classes", self.classes.join(","), other.classes.join(","));
        cmp("features", j(&self.features), j(&other.features));
        cmp("lr_schedule", j(&self.lr_schedule), j(&other.lr_schedule));
        cmp(
            "weight_decay",
            j(&self.weight_decay),
            j(&other.weight_decay),
        );
        cmp(
            "label_smoothing",
            j(&self.label_smoothing),
            j(&other.label_smoothing),
        );
        cmp(
            "class_weights",
            j(&self.class_weights),
            j(&other.class_weights),
        );
        cmp(
            "early_stopping",
            j(&self.early_stopping),
            j(&other.early_stopping),
        );
        cmp("augment", j(&self.augment), j(&other.augment));
        cmp("precision", j(&self.precision), j(&other.precision));
        let (a, b) = (&self.lr_schedule, &other.lr_schedule);
        let only_length = LrSchedule {
            decay_steps: b.decay_steps,
            ..*a
        } == *b;
        if a.kind == ScheduleKind::Cosine && a.decay_steps != b.decay_steps && only_length {
            d.push(format!(
                "(a cosine schedule's length is fixed when its run starts: add --lr-decay-steps {} to train on past it at its final rate)",
                a.decay_steps.unwrap_or(0)
            ));
        }
        d
    }

    pub fn load(model_dir: &Path) -> Result<Self> {
        let path = model_dir.join(CONFIG_FILE);
        let text = fs::read_to_string(&path).map_err(TrainError::io(&path))?;
        serde_json::from_str(&text).map_err(TrainError::json(&path))
    }

    pub fn save(&self, model_dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("config serialises") + "\n";
        write_atomic(&model_dir.join(CONFIG_FILE), text.as_bytes())
    }
}

/// Writes a file atomically: temporary name in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    {
        let mut f = fs::File::create(&tmp).map_err(TrainError::io(&tmp))?;
        f.write_all(bytes).map_err(TrainError::io(&tmp))?;
        f.sync_all().map_err(TrainError::io(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(TrainError::io(path))
}

/// What a checkpoint records besides the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Optimizer steps taken.
    pub step: u64,
    /// Where the training stream continues.
    pub position: StreamPosition,
    pub examples_seen: u64,
    /// Examples per epoch when written.
    pub epoch_size: u64,
    /// Eval metrics when the checkpoint was written right after an evaluation.
    #[serde(default)]
    pub eval_accuracy: Option<f64>,
    #[serde(default)]
    pub eval_loss: Option<f64>,
    /// Seconds since the Unix epoch.
    pub wall_time: f64,
    /// SHA-256 (hex) of each file of the checkpoint, verified before the file is used
    /// (evaluate, resume, export). Empty for checkpoints written before checksums existed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sha256: BTreeMap<String, String>,
    /// Early stopping's and the plateau schedule's view of the evaluations so far (absent when
    /// the run uses neither).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor: Option<MonitorState>,
    /// Set on the checkpoint early stopping writes: the step whose weights it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from_step: Option<u64>,
}

/// A checkpoint on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointInfo {
    pub dir: PathBuf,
    pub state: CheckpointState,
}

impl CheckpointInfo {
    pub fn model_file(&self) -> PathBuf {
        self.dir.join(WEIGHTS_FILE)
    }
    pub fn optimizer_file(&self) -> PathBuf {
        self.dir.join(OPTIMIZER_FILE)
    }

    /// Checks `file` (WEIGHTS_FILE or OPTIMIZER_FILE) against the SHA-256 recorded in state.json.
    pub fn verify(&self, file: &str) -> Result<()> {
        let Some(expected) = self.state.sha256.get(file) else {
            return Ok(()); // written before checksums existed
        };
        let path = self.dir.join(file);
        let actual = sha256_file(&path)?;
        if &actual != expected {
            return Err(TrainError::Corrupted {
                path,
                state: self.dir.join(STATE_FILE),
                expected: expected.clone(),
                actual,
            });
        }
        Ok(())
    }
}

/// SHA-256 of a file, streamed, in lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    let mut f = fs::File::open(path).map_err(TrainError::io(path))?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(TrainError::io(path))?;
    Ok(format!("{:x}", h.finalize()))
}

/// Which checkpoint to load (`--checkpoint best|latest|N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CheckpointSel {
    #[default]
    Latest,
    Best,
    Step(u64),
}

impl FromStr for CheckpointSel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "latest" | "last" => Ok(CheckpointSel::Latest),
            "best" => Ok(CheckpointSel::Best),
            _ => s
                .trim_start_matches("step-")
                .parse()
                .map(CheckpointSel::Step)
                .map_err(|_| {
                    format!("unknown checkpoint {s:?} (expected best, latest or a step number)")
                }),
        }
    }
}

fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// The complete checkpoints of a model dir, by increasing step.
pub fn list_checkpoints(model_dir: &Path) -> Result<Vec<CheckpointInfo>> {
    let dir = model_dir.join(CHECKPOINTS_DIR);
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in fs::read_dir(&dir).map_err(TrainError::io(&dir))? {
        let entry = entry.map_err(TrainError::io(&dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("step-") || !entry.path().is_dir() {
            continue;
        }
        let state_path = entry.path().join(STATE_FILE);
        if [WEIGHTS_FILE, OPTIMIZER_FILE, STATE_FILE]
            .iter()
            .any(|f| !entry.path().join(f).is_file())
        {
            continue; // not a complete checkpoint (never produced by this module)
        }
        let text = fs::read_to_string(&state_path).map_err(TrainError::io(&state_path))?;
        let state: CheckpointState =
            serde_json::from_str(&text).map_err(TrainError::json(&state_path))?;
        out.push(CheckpointInfo {
            dir: entry.path(),
            state,
        });
    }
    out.sort_by_key(|c| c.state.step);
    Ok(out)
}

fn best_of(cks: &[CheckpointInfo]) -> Option<&CheckpointInfo> {
    cks.iter()
        .filter(|c| c.state.eval_accuracy.is_some())
        .max_by(|a, b| {
            a.state
                .eval_accuracy
                .partial_cmp(&b.state.eval_accuracy)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.state.step.cmp(&b.state.step))
        })
}

/// Finds a checkpoint; `Best` falls back to the latest when none was evaluated.
pub fn select_checkpoint(model_dir: &Path, sel: CheckpointSel) -> Result<CheckpointInfo> {
    let cks = list_checkpoints(model_dir)?;
    let none = || TrainError::ModelDir {
        dir: model_dir.to_path_buf(),
        what: "no checkpoint found (train a model first: `quickdraw train --model-dir ...`)".into(),
    };
    let found = match sel {
        CheckpointSel::Latest => cks.last(),
        CheckpointSel::Best => best_of(&cks).or(cks.last()),
        CheckpointSel::Step(s) => {
            return cks
                .iter()
                .find(|c| c.state.step == s)
                .cloned()
                .ok_or_else(|| TrainError::ModelDir {
                    dir: model_dir.to_path_buf(),
                    what: format!(
                        "no checkpoint at step {s} (have: {})",
                        cks.iter()
                            .map(|c| c.state.step.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
        }
    };
    found.cloned().ok_or_else(none)
}

/// Removes temporary checkpoint directories left by a killed run; returns how many.
pub fn clean_temporary(model_dir: &Path) -> Result<usize> {
    let dir = model_dir.join(CHECKPOINTS_DIR);
    if !dir.is_dir() {
        return Ok(0);
    }
    let mut n = 0;
    for entry in fs::read_dir(&dir).map_err(TrainError::io(&dir))? {
        let entry = entry.map_err(TrainError::io(&dir))?;
        if entry.file_name().to_string_lossy().starts_with(".tmp-") {
            fs::remove_dir_all(entry.path()).map_err(TrainError::io(entry.path()))?;
            n += 1;
        }
    }
    Ok(n)
}

fn sync_dir(dir: &Path) {
    // Best effort: makes the rename durable on Linux; not supported everywhere.
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

fn sync_file(path: &Path) -> Result<()> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(TrainError::io(path))
}

/// Writes a checkpoint atomically and applies the retention policy (keep the last `keep`
/// plus the best by eval accuracy).
pub fn write_checkpoint(
    model_dir: &Path,
    model: &Model,
    optimizer: &ModuleOptimizer,
    state: CheckpointState,
    keep: usize,
) -> Result<CheckpointInfo> {
    let root = model_dir.join(CHECKPOINTS_DIR);
    fs::create_dir_all(&root).map_err(TrainError::io(&root))?;
    let name = step_dir_name(state.step);
    let tmp = root.join(format!(".tmp-{name}-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(TrainError::io(&tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(TrainError::io(&tmp))?;
    let ck_err = |path: &Path| {
        let path = path.to_path_buf();
        move |e: burn::store::RecordError| TrainError::Checkpoint {
            path,
            what: e.to_string(),
        }
    };
    let mf = tmp.join(WEIGHTS_FILE);
    model.clone().save_file(&mf).map_err(ck_err(&mf))?;
    let of = tmp.join(OPTIMIZER_FILE);
    optimizer.save(&of).map_err(ck_err(&of))?;
    let mut state = state;
    for (name, path) in [(WEIGHTS_FILE, &mf), (OPTIMIZER_FILE, &of)] {
        state.sha256.insert(name.to_string(), sha256_file(path)?);
    }
    let sf = tmp.join(STATE_FILE);
    fs::write(
        &sf,
        serde_json::to_string_pretty(&state).expect("state serialises") + "\n",
    )
    .map_err(TrainError::io(&sf))?;
    for f in [&mf, &of, &sf] {
        sync_file(f)?;
    }
    sync_dir(&tmp);
    let dest = root.join(&name);
    if dest.exists() {
        let old = root.join(format!(".tmp-old-{name}-{}", std::process::id()));
        fs::rename(&dest, &old).map_err(TrainError::io(&dest))?;
        fs::rename(&tmp, &dest).map_err(TrainError::io(&dest))?;
        fs::remove_dir_all(&old).map_err(TrainError::io(&old))?;
    } else {
        fs::rename(&tmp, &dest).map_err(TrainError::io(&dest))?;
    }
    sync_dir(&root);
    apply_retention(model_dir, keep)?;
    Ok(CheckpointInfo { dir: dest, state })
}

/// Deletes the checkpoints that are neither among the last `keep` nor the best.
pub fn apply_retention(model_dir: &Path, keep: usize) -> Result<Vec<u64>> {
    let cks = list_checkpoints(model_dir)?;
    let keep = keep.max(1);
    let best = best_of(&cks).map(|c| c.state.step);
    // Early stopping restores the best checkpoint by its own metric: keep that one too.
    let monitored = cks
        .last()
        .and_then(|c| c.state.monitor)
        .and_then(|m| m.best_step);
    let cut = cks.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for c in &cks[..cut] {
        if Some(c.state.step) != best && Some(c.state.step) != monitored {
            // Renamed out of the way first (atomic), so a kill during the deletion never leaves
            // a half-deleted `step-*` directory behind; `clean_temporary` removes leftovers.
            let name = c
                .dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let doomed = c
                .dir
                .with_file_name(format!(".tmp-del-{name}-{}", std::process::id()));
            fs::rename(&c.dir, &doomed).map_err(TrainError::io(&c.dir))?;
            fs::remove_dir_all(&doomed).map_err(TrainError::io(&doomed))?;
            removed.push(c.state.step);
        }
    }
    Ok(removed)
}

/// Loads the weights of a checkpoint into a freshly built model.
pub fn load_model(
    config: &ModelConfig,
    ck: &CheckpointInfo,
    device: &burn::tensor::Device,
) -> Result<Model> {
    ck.verify(WEIGHTS_FILE)?;
    let path = ck.model_file();
    config
        .init(device)?
        .try_load_file(&path)
        .map_err(|e| TrainError::Checkpoint {
            path,
            what: e.to_string(),
        })
}

/// Reads `metrics.jsonl` (a truncated last line from a killed run is skipped).
pub fn read_metrics(model_dir: &Path) -> Result<Vec<serde_json::Value>> {
    let path = model_dir.join(METRICS_LOG_FILE);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = fs::read_to_string(&path).map_err(TrainError::io(&path))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Keeps only the `metrics.jsonl` lines of evaluations at or before `step` (a resumed run
/// redoes the later ones).
pub fn truncate_metrics(model_dir: &Path, step: u64) -> Result<usize> {
    let path = model_dir.join(METRICS_LOG_FILE);
    if !path.exists() {
        return Ok(0);
    }
    let text = fs::read_to_string(&path).map_err(TrainError::io(&path))?;
    let mut kept = String::new();
    let mut dropped = 0;
    for line in text.lines() {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v)
                if v.get("step")
                    .and_then(|s| s.as_u64())
                    .is_some_and(|s| s <= step) =>
            {
                kept.push_str(line);
                kept.push('\n');
            }
            _ => dropped += 1,
        }
    }
    if dropped > 0 {
        write_atomic(&path, kept.as_bytes())?;
    }
    Ok(dropped)
}

/// Appends one line to `metrics.jsonl` and flushes it to disk.
pub fn append_metrics(model_dir: &Path, line: &serde_json::Value) -> Result<()> {
    let path = model_dir.join(METRICS_LOG_FILE);
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(TrainError::io(&path))?;
    let mut s = serde_json::to_string(line).expect("json");
    s.push('\n');
    f.write_all(s.as_bytes()).map_err(TrainError::io(&path))?;
    f.sync_data().map_err(TrainError::io(&path))
}

/// The files and directories training writes (what `--overwrite` removes).
pub fn artifacts(model_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if !model_dir.is_dir() {
        return Ok(out);
    }
    for entry in fs::read_dir(model_dir).map_err(TrainError::io(model_dir))? {
        let entry = entry.map_err(TrainError::io(model_dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if [
            CONFIG_FILE,
            LABELS_FILE,
            CHECKPOINTS_DIR,
            EVAL_DIR,
            METRICS_LOG_FILE,
            EVALUATION_FILE,
        ]
        .contains(&name.as_str())
            || name.contains("tfevents")
            || (name.starts_with('.') && name.contains(".tmp-"))
        {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// quickdraw-data recognises a model dir passed as an export (`model show`, `serve`) by these
    /// names, and points to the folder `export` writes by default.
    #[test]
    fn the_export_format_knows_the_model_dir_layout() {
        use quickdraw_data::signature::{MODEL_DIR_EXPORT, MODEL_DIR_MARKERS};
        assert_eq!(MODEL_DIR_MARKERS, [CONFIG_FILE, CHECKPOINTS_DIR]);
        assert_eq!(MODEL_DIR_EXPORT, crate::export::EXPORT_DIR);
    }

    #[test]
    fn checkpoint_selector() {
        assert_eq!(
            "best".parse::<CheckpointSel>().unwrap(),
            CheckpointSel::Best
        );
        assert_eq!(
            "latest".parse::<CheckpointSel>().unwrap(),
            CheckpointSel::Latest
        );
        assert_eq!(
            "120".parse::<CheckpointSel>().unwrap(),
            CheckpointSel::Step(120)
        );
        assert!("x".parse::<CheckpointSel>().is_err());
    }

    #[test]
    fn optimizer_names_round_trip() {
        for k in OptimizerKind::ALL {
            assert_eq!(k.name().parse::<OptimizerKind>().unwrap(), k);
        }
    }
}
