//! The training loop: model dir set-up (fresh, resume, overwrite, warm start), the optimisation
//! steps (a [`Trainer`] fed by the input pipeline), periodic evaluation, atomic checkpoints,
//! TensorBoard summaries and interruption; and `bench_train`, the same step on random inputs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use quickdraw_data::events::EventWriter;
use quickdraw_data::lock::{DirLock, LOCK_FILE};
use serde::{Deserialize, Serialize};

use crate::augment::Augment;
use crate::device::{DeviceChoice, inference_device, training_device};
use crate::error::{Result, TrainError};
use crate::eval::{EvalOptions, evaluate_model};
use crate::metrics::{MetricsReport, WindowAccumulator, confusion_chart};
use crate::model::{ConvLayer, Model, ModelConfig, ModelInput, ModelKind, to_host};
use crate::modeldir::{
    self, CONFIG_FILE, CheckpointSel, CheckpointState, DataInfo, LABELS_FILE, OptimizerKind,
    TrainConfig,
};
use crate::pipeline::{
    self, DEFAULT_PREFETCH, DEFAULT_SHUFFLE_BUFFER, DataSource, DecodeOptions, OrderOptions,
    Pipeline, PipelineOptions, StreamPosition,
};
use crate::precision::Precision;
use crate::schedule::{EarlyStopping, LrSchedule, MonitorState, Monitored, ScheduleKind};
use crate::trainer::Trainer;
use quickdraw_data::wide::WideSpec;

/// Everything `quickdraw train` asks for.
#[derive(Debug, Clone)]
pub struct TrainRequest {
    pub model: ModelKind,
    /// DNN hidden layers (default [1000]).
    pub hidden: Option<Vec<usize>>,
    /// CNN blocks (default the lecture's).
    pub conv: Option<Vec<ConvLayer>>,
    /// CNN dense width (default 256).
    pub dense: Option<usize>,
    /// Dropout before the output layer (CNN default 0.4, DNN 0).
    pub dropout: Option<f64>,
    /// `--batch-norm` after each CNN block.
    pub batch_norm: bool,
    /// LSTM units per direction (default 256).
    pub rnn_units: Option<usize>,
    /// Checked against labels.txt when given.
    pub n_classes: Option<usize>,
    pub optimizer: OptimizerKind,
    /// Default depends on the optimizer.
    pub learning_rate: Option<f64>,
    pub batch_size: usize,
    pub seed: u64,
    pub shuffle_buffer: usize,
    pub model_dir: PathBuf,
    pub train_files: String,
    pub eval_files: Option<String>,
    /// Train until this global step.
    pub train_steps: u64,
    /// Train for this many epochs instead of `train_steps` (an epoch: ceil(train examples /
    /// batch size) steps); evaluates at every epoch's end unless `eval_every` says otherwise.
    pub epochs: Option<u64>,
    /// The learning-rate schedule (default: constant).
    pub lr_schedule: LrSchedule,
    /// `--weight-decay` (see [`OptimizerKind::init_with`]).
    pub weight_decay: Option<f64>,
    /// `--label-smoothing` in [0, 1).
    pub label_smoothing: Option<f64>,
    /// `--class-weight`: `balanced` or a JSON file `{"class": weight, ...}`.
    pub class_weight: Option<String>,
    /// `--early-stopping-patience` / `--early-stopping-metric`.
    pub early_stopping: Option<EarlyStopping>,
    /// `--augment` of the training images.
    pub augment: Augment,
    /// `--precision` of the forward and backward passes ([`crate::precision`]).
    pub precision: Precision,
    /// Batches per evaluation (default: the whole eval set).
    pub eval_steps: Option<u64>,
    /// Evaluate every N steps (and always at the end when eval files are given).
    pub eval_every: Option<u64>,
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
    pub overwrite: bool,
    pub warm_start_from: Option<PathBuf>,
    pub device: DeviceChoice,
    /// The devices after the first of `--device a,b,...`: each step's batch is split by rows
    /// over `device` and these ([`crate::parallel`]). Empty: one device.
    pub parallel_devices: Vec<DeviceChoice>,
    pub prefetch: usize,
    /// Write training scalars every N steps.
    pub log_every: u64,
    /// Set (e.g. by Ctrl-C) to stop after the current step with a checkpoint.
    pub stop: Option<Arc<AtomicBool>>,
}

impl TrainRequest {
    /// Every device of `--device`, the model's first.
    pub fn devices(&self) -> impl Iterator<Item = DeviceChoice> + '_ {
        std::iter::once(self.device).chain(self.parallel_devices.iter().copied())
    }

    /// A request with the documented defaults.
    pub fn new(
        model: ModelKind,
        model_dir: impl Into<PathBuf>,
        train_files: impl Into<String>,
    ) -> Self {
        TrainRequest {
            model,
            hidden: None,
            conv: None,
            dense: None,
            dropout: None,
            batch_norm: false,
            rnn_units: None,
            n_classes: None,
            optimizer: OptimizerKind::Adam,
            learning_rate: None,
            batch_size: 64,
            seed: 0,
            shuffle_buffer: DEFAULT_SHUFFLE_BUFFER,
            model_dir: model_dir.into(),
            train_files: train_files.into(),
            eval_files: None,
            train_steps: 1000,
            epochs: None,
            lr_schedule: LrSchedule::default(),
            weight_decay: None,
            label_smoothing: None,
            class_weight: None,
            early_stopping: None,
            augment: Augment::None,
            precision: Precision::F32,
            eval_steps: None,
            eval_every: None,
            checkpoint_every: 100,
            keep_checkpoints: 5,
            overwrite: false,
            warm_start_from: None,
            device: DeviceChoice::Cpu,
            parallel_devices: Vec::new(),
            prefetch: DEFAULT_PREFETCH,
            log_every: 10,
            stop: None,
        }
    }
}

/// Running figures reported after every step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepStats {
    pub step: u64,
    pub total_steps: u64,
    /// Mean over the steps since the last report window started.
    pub loss: f64,
    pub accuracy: f64,
    pub steps_per_sec: f64,
    pub examples_per_sec: f64,
    /// Share of wall time spent waiting for input batches.
    pub data_wait_share: f64,
    pub epoch: f64,
    /// `--epochs`, when the run counts in epochs.
    pub epochs: Option<u64>,
    /// Steps of one epoch (ceil(train examples / batch size)).
    pub steps_per_epoch: u64,
    /// The rate the step used.
    pub learning_rate: f64,
    /// The last evaluation's loss and accuracy (Keras's val_loss, val_accuracy).
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
}

/// Hooks for progress display (the CLI's progress bar).
pub trait TrainObserver {
    /// Important notices (resume, warm start, overwrite): always worth showing.
    fn notice(&mut self, _msg: &str) {}
    fn start(&mut self, _start_step: u64, _total_steps: u64) {}
    fn step(&mut self, _s: &StepStats) {}
    fn eval_start(&mut self, _step: u64) {}
    fn evaluated(&mut self, _step: u64, _r: &MetricsReport) {}
    fn checkpoint(&mut self, _step: u64, _path: &Path) {}
}

/// An observer that ignores everything.
pub struct NoObserver;
impl TrainObserver for NoObserver {}

/// Evaluation figures in the summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    pub step: u64,
    pub examples: u64,
    pub loss: f64,
    pub accuracy: f64,
    pub top3_accuracy: f64,
    pub map3: f64,
}

impl EvalSummary {
    fn new(step: u64, r: &MetricsReport) -> Self {
        EvalSummary {
            step,
            examples: r.examples,
            loss: r.loss,
            accuracy: r.accuracy,
            top3_accuracy: r.top3_accuracy,
            map3: r.map3,
        }
    }
}

/// What a training run did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainSummary {
    pub model_dir: PathBuf,
    pub model: ModelKind,
    pub parameters: usize,
    pub resumed_from: Option<u64>,
    pub start_step: u64,
    pub final_step: u64,
    pub steps_run: u64,
    pub examples_seen: u64,
    pub epochs: f64,
    pub seconds: f64,
    pub steps_per_sec: f64,
    pub examples_per_sec: f64,
    pub data_wait_seconds: f64,
    pub data_wait_share: f64,
    /// Seconds spent in training steps alone (batch wait, forward, backward, optimiser), without
    /// evaluations and checkpoints: what a throughput benchmark compares.
    pub step_seconds: f64,
    /// Examples per second over `step_seconds`.
    pub step_examples_per_sec: f64,
    pub train_loss: Option<f64>,
    pub train_accuracy: Option<f64>,
    pub eval: Option<EvalSummary>,
    pub checkpoint: Option<PathBuf>,
    pub interrupted: bool,
    /// Set when early stopping ended the run.
    pub stopped_early: Option<StoppedEarly>,
}

/// How early stopping ended a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoppedEarly {
    /// The step the run stopped at (its last checkpoint holds the restored weights).
    pub step: u64,
    pub metric: Monitored,
    pub best: f64,
    /// The step whose weights were restored.
    pub best_step: u64,
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Installs a Ctrl-C / SIGTERM handler: the first signal sets the returned flag (the loop
/// finishes its step, checkpoints and stops), a second one exits at once with status 130.
pub fn install_interrupt_handler() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    ctrlc::set_handler(move || {
        if f.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond interrupt: exiting now (the last complete checkpoint is intact)");
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: finishing the current step and writing a checkpoint (Ctrl-C again to quit at once)");
    })
    .map_err(|e| TrainError::Config(format!("cannot install the Ctrl-C handler: {e}")))?;
    Ok(flag)
}

/// Builds the config a request trains (model hyper-parameters completed from the dataset).
pub fn build_config(
    req: &TrainRequest,
    src: &DataSource,
    eval: Option<&DataSource>,
) -> Result<TrainConfig> {
    let classes = src.labels.clone();
    if let Some(n) = req.n_classes
        && n != classes.len()
    {
        return Err(TrainError::Config(format!(
            "--n-classes {n}, but {} lists {} classes",
            src.dir.join(LABELS_FILE).display(),
            classes.len()
        )));
    }
    if let Some(e) = eval {
        if e.labels != classes {
            return Err(TrainError::Config(format!(
                "the eval shards ({}) have other classes than the training shards ({})",
                e.dir.display(),
                src.dir.display()
            )));
        }
        if e.spec() != src.spec() {
            return Err(TrainError::Config(format!(
                "the eval shards ({}) were preprocessed differently from the training shards ({}): feature specs differ",
                e.dir.display(),
                src.dir.display()
            )));
        }
    }
    if req.model.uses_strokes() && src.spec().strokes.is_none() {
        return Err(TrainError::Config(format!(
            "--model rnn needs stroke features, but {} has none: convert with `quickdraw convert --strokes`",
            src.dir.display()
        )));
    }
    let mut model = ModelConfig::new(req.model, classes.len(), src.image_size());
    model.batch_norm = req.batch_norm;
    match req.model {
        ModelKind::Dnn => {
            if let Some(h) = &req.hidden {
                model.hidden = Some(h.clone());
            }
            if let Some(d) = req.dropout {
                model.dropout = Some(d);
            }
        }
        ModelKind::Cnn | ModelKind::WideDeep => {
            if let Some(c) = &req.conv {
                model.conv = Some(c.clone());
            }
            if let Some(d) = req.dense {
                model.dense = Some(d);
            }
            if let Some(d) = req.dropout {
                model.dropout = Some(d);
            }
        }
        ModelKind::Rnn => {
            if let Some(u) = req.rnn_units {
                model.rnn_units = Some(u);
            }
        }
        ModelKind::Baseline | ModelKind::Linear => {}
    }
    model.validate()?;
    if req.batch_size == 0 {
        return Err(TrainError::Config("--batch-size must be at least 1".into()));
    }
    let learning_rate = req
        .learning_rate
        .unwrap_or(req.optimizer.default_learning_rate());
    if !(learning_rate.is_finite() && learning_rate > 0.0) {
        return Err(TrainError::Config(format!(
            "--learning-rate {learning_rate} must be > 0"
        )));
    }
    check_policies(req)?;
    if req.model == ModelKind::Rnn && !req.precision.is_f32() {
        // burn 0.22's LSTM creates its states and output buffer in float32 whatever its input.
        return Err(TrainError::Config(format!(
            "--precision {}: the rnn model trains in f32 only (burn's LSTM keeps its states in float32)",
            req.precision
        )));
    }
    if req.batch_norm && (!req.precision.is_f32() || !req.parallel_devices.is_empty()) {
        // burn 0.22's BatchNorm keeps its running statistics in state that every copy of the
        // model shares: a cast copy (--precision) would cast them, and the data-parallel copies
        // would each update them.
        return Err(TrainError::Config(
            "--batch-norm trains on one device in f32 only (burn's BatchNorm shares its running statistics between copies of the model): drop --precision or the extra --device, or pass --batch-norm false (--preset quickdraw28 sets it)".into(),
        ));
    }
    let class_weights = req
        .class_weight
        .as_deref()
        .map(|w| class_weights(w, src, &classes))
        .transpose()?;
    Ok(TrainConfig {
        config_version: modeldir::CONFIG_VERSION,
        model,
        optimizer: req.optimizer,
        learning_rate,
        batch_size: req.batch_size,
        seed: req.seed,
        shuffle_buffer: req.shuffle_buffer.max(1),
        classes,
        features: *src.spec(),
        data: DataInfo {
            train_files: req.train_files.clone(),
            eval_files: req.eval_files.clone(),
            dataset_dir: src.dir.display().to_string(),
            train_examples: src.n_examples(),
        },
        warm_started_from: None,
        lr_schedule: frozen_schedule(req, src.n_examples()),
        weight_decay: req.weight_decay,
        label_smoothing: req.label_smoothing.filter(|&a| a > 0.0),
        class_weights,
        early_stopping: req.early_stopping,
        augment: req.augment,
        precision: req.precision,
    })
}

/// The request's schedule with a cosine's default length (the run's steps after the warm-up)
/// written in, so that the curve is part of the recorded configuration.
fn frozen_schedule(req: &TrainRequest, train_examples: u64) -> LrSchedule {
    let mut s = req.lr_schedule;
    if s.kind == ScheduleKind::Cosine && s.decay_steps.is_none() {
        let total = total_steps(req, train_examples, req.batch_size);
        s.decay_steps = Some(total.saturating_sub(s.warmup_steps).max(1));
    }
    s
}

/// Checks the schedule, regularisation and stopping flags against each other.
fn check_policies(req: &TrainRequest) -> Result<()> {
    let bad = |m: String| Err(TrainError::Config(m));
    req.lr_schedule.validate().map_err(TrainError::Config)?;
    if let Some(a) = req.label_smoothing
        && !(0.0..1.0).contains(&a)
    {
        return bad(format!("--label-smoothing {a} must be in [0, 1)"));
    }
    if let Some(w) = req.weight_decay
        && !(w.is_finite() && w >= 0.0)
    {
        return bad(format!("--weight-decay {w} must be >= 0"));
    }
    if !req.augment.is_none() && req.model.uses_strokes() {
        return bad(format!(
            "--augment {} transforms images; --model {} reads stroke sequences",
            req.augment, req.model
        ));
    }
    if req.epochs == Some(0) {
        return bad("--epochs must be at least 1".into());
    }
    let watcher = if let Some(e) = &req.early_stopping {
        if e.patience == 0 {
            return bad("--early-stopping-patience must be at least 1".into());
        }
        Some("--early-stopping-patience")
    } else {
        (req.lr_schedule.kind == ScheduleKind::Plateau).then_some("--lr-schedule plateau")
    };
    if let Some(flag) = watcher {
        if req.eval_files.is_none() {
            return bad(format!("{flag} watches the evaluations: give --eval-files"));
        }
        if req.eval_every.is_none() && req.epochs.is_none() {
            return bad(format!(
                "{flag} watches periodic evaluations: give --eval-every N or --epochs N"
            ));
        }
    }
    Ok(())
}

/// `--class-weight`: `balanced` (n / (classes present * n_c), as scikit-learn's
/// `compute_class_weight` that Keras users pass) or a JSON file mapping class names to weights (others get 1).
fn class_weights(
    how: &str,
    src: &DataSource,
    classes: &[String],
) -> Result<modeldir::ClassWeights> {
    let weights = if how == "balanced" {
        let counts = pipeline::count_labels(src, classes.len())?;
        let n: u64 = counts.iter().sum();
        // Over the classes present, as scikit-learn's compute_class_weight (np.unique(y)).
        let present = counts.iter().filter(|&&c| c > 0).count().max(1);
        counts
            .iter()
            .map(|&c| match c {
                // A class absent from the training shards contributes no loss term at all.
                0 => 1.0,
                c => (n as f64 / (present as f64 * c as f64)) as f32,
            })
            .collect()
    } else {
        let path = Path::new(how);
        let text = quickdraw_data::storage::read(path).map_err(TrainError::io(path))?;
        let map: std::collections::BTreeMap<String, f64> =
            serde_json::from_slice(&text).map_err(|e| {
                TrainError::Config(format!(
                    "--class-weight {how}: expected `balanced` or a JSON object {{\"class\": weight}}: {e}"
                ))
            })?;
        let mut w = vec![1.0f32; classes.len()];
        for (name, v) in map {
            let i = classes.iter().position(|c| *c == name).ok_or_else(|| {
                TrainError::Config(format!(
                    "--class-weight {how}: {name:?} is not one of the dataset's classes"
                ))
            })?;
            if !(v.is_finite() && v > 0.0) {
                return Err(TrainError::Config(format!(
                    "--class-weight {how}: the weight of {name:?} is {v}; weights must be > 0"
                )));
            }
            w[i] = v as f32;
        }
        w
    };
    Ok(modeldir::ClassWeights {
        source: how.to_string(),
        weights,
    })
}

/// The global step a request trains to: `--train-steps`, or `--epochs` whole epochs of
/// ceil(examples / batch) steps each.
pub fn total_steps(req: &TrainRequest, train_examples: u64, batch_size: usize) -> u64 {
    match req.epochs {
        Some(e) => e * steps_per_epoch(train_examples, batch_size),
        None => req.train_steps,
    }
}

/// Steps of one epoch: ceil(examples / batch), at least 1.
pub fn steps_per_epoch(train_examples: u64, batch_size: usize) -> u64 {
    train_examples.div_ceil(batch_size.max(1) as u64).max(1)
}

/// Decides fresh / resume / overwrite for the model dir; returns whether to resume.
fn prepare_model_dir(
    req: &TrainRequest,
    cfg: &TrainConfig,
    obs: &mut dyn TrainObserver,
) -> Result<bool> {
    let dir = &req.model_dir;
    let dir_err = |what: String| TrainError::ModelDir {
        dir: dir.clone(),
        what,
    };
    if dir.exists() && !dir.is_dir() {
        return Err(dir_err("exists and is not a directory".into()));
    }
    let has_config = dir.join(CONFIG_FILE).is_file();
    let entries = || -> Result<usize> {
        Ok(std::fs::read_dir(dir)
            .map_err(TrainError::io(dir))?
            .filter(|e| e.as_ref().map_or(true, |e| e.file_name() != LOCK_FILE))
            .count())
    };
    let non_empty = dir.is_dir() && entries()? > 0;
    if has_config {
        let old = TrainConfig::load(dir)?;
        let diffs = old.differences(cfg);
        if req.overwrite {
            let removed = modeldir::artifacts(dir)?;
            for p in &removed {
                if p.is_dir() {
                    std::fs::remove_dir_all(p).map_err(TrainError::io(p))?;
                } else {
                    std::fs::remove_file(p).map_err(TrainError::io(p))?;
                }
            }
            obs.notice(&format!(
                "--overwrite: removed the previous run from {} ({})",
                dir.display(),
                removed
                    .iter()
                    .filter_map(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        } else if !diffs.is_empty() {
            return Err(dir_err(format!(
                "holds a model trained with another configuration:\n  {}\nrefusing to mix them; pass --overwrite to discard the old run, or choose another --model-dir",
                diffs.join("\n  ")
            )));
        } else {
            return Ok(!modeldir::list_checkpoints(dir)?.is_empty());
        }
    } else if non_empty {
        let ours = modeldir::artifacts(dir)?;
        let all = entries()?;
        if ours.len() != all && !req.overwrite {
            return Err(dir_err(
                "is not empty and is not a model directory (no config.json); refusing to write into it (pass --overwrite to use it anyway; nothing of yours is deleted)".into(),
            ));
        }
        for p in ours {
            if p.is_dir() {
                std::fs::remove_dir_all(&p).map_err(TrainError::io(&p))?;
            } else {
                std::fs::remove_file(&p).map_err(TrainError::io(&p))?;
            }
        }
    }
    Ok(false)
}

/// Writes every float parameter as a TensorBoard histogram, tagged by its module path.
struct HistogramVisitor<'a> {
    writer: &'a mut EventWriter,
    step: i64,
    path: Vec<String>,
    error: Option<TrainError>,
}

impl ModuleVisitor for HistogramVisitor<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.error.is_some() {
            return;
        }
        let values = to_host(param.val());
        if let Err(e) = self.writer.add_histogram(
            &format!("weights/{}", self.path.join("/")),
            &values,
            self.step,
        ) {
            self.error = Some(e.into());
        }
    }
}

fn write_histograms(model: &Model, writer: &mut EventWriter, step: u64) -> Result<()> {
    let mut v = HistogramVisitor {
        writer,
        step: step as i64,
        path: Vec::new(),
        error: None,
    };
    model.visit(&mut v);
    v.error.map_or(Ok(()), Err)
}

/// Trains as requested; see the module docs.
pub fn train(req: &TrainRequest, obs: &mut dyn TrainObserver) -> Result<TrainSummary> {
    if quickdraw_data::storage::is_url(&req.model_dir) {
        return crate::remote::train_mirrored(req, obs);
    }
    let setup = set_up(req, obs)?;
    let summary = TrainSummary::starting(req, &setup);
    if setup.start.monitor.stopped {
        let m = setup.start.monitor;
        obs.notice(&format!(
            "early stopping ended this run at step {} (best {} at step {}): nothing to do; pass --overwrite to train again",
            setup.start.step,
            m.best.unwrap_or(f64::NAN),
            m.best_step.unwrap_or(0)
        ));
        return Ok(summary);
    }
    if setup.start.step >= setup.total_steps {
        obs.notice(&format!(
            "already trained to step {} ({}): nothing to do",
            setup.start.step,
            match req.epochs {
                Some(e) => format!("--epochs {e} = {} steps", setup.total_steps),
                None => format!("--train-steps {}", req.train_steps),
            }
        ));
        return Ok(summary);
    }
    Run::new(req, setup, summary)?.train(obs)
}

/// How many of the first training examples have each metadata column of the wide part (a
/// missing value adds nothing to the logits, so a column missing everywhere is worth a notice).
fn wide_coverage(src: &DataSource, cfg: &TrainConfig, w: WideSpec) -> Result<String> {
    let Some(batch) = pipeline::first_batch(src, &cfg.model, 256)? else {
        return Ok("wide part: no training examples".into());
    };
    let rows: Vec<&[f32]> = batch.wide.iter().flat_map(|v| v.chunks(w.dim())).collect();
    let counts: Vec<String> = w
        .columns()
        .into_iter()
        .map(|(name, r)| {
            let n = rows
                .iter()
                .filter(|row| row[r.clone()].iter().any(|&v| v > 0.0));
            format!("{name} {}", n.count())
        })
        .collect();
    let mut msg = format!(
        "wide part: of the first {} training examples, these have the metadata column: {} (a missing value adds nothing to the logits)",
        rows.len(),
        counts.join(", ")
    );
    let (_, strokes) = &w.columns()[2];
    if !rows.is_empty()
        && rows
            .iter()
            .all(|row| row[strokes.clone()].iter().all(|&v| v == 0.0))
    {
        msg.push_str("; no stroke_count feature: shards written before it, or image-only inputs (convert them again to use it)");
    }
    Ok(msg)
}

/// The model and optimiser a run starts from, and where.
struct Start {
    model: Model,
    optimizer: ModuleOptimizer,
    step: u64,
    position: StreamPosition,
    resumed_from: Option<u64>,
    /// Early stopping's and the plateau's state (from the checkpoint when resuming).
    monitor: MonitorState,
}

/// A locked model directory ready to train in.
struct Setup {
    /// One writer per model directory; held until the run ends (or the process dies).
    lock: DirLock,
    train_src: DataSource,
    eval_src: Option<DataSource>,
    /// The model dir's config (read back when resuming).
    cfg: TrainConfig,
    device: Device,
    /// The other data-parallel devices (autodiff), in `--device` order.
    parallel_devices: Vec<Device>,
    eval_device: Device,
    start: Start,
    /// The global step the run trains to (`--train-steps` or `--epochs`).
    total_steps: u64,
    /// Evaluate every N steps (`--eval-every`, or each epoch with `--epochs`).
    eval_every: Option<u64>,
}

/// Opens the data, checks the request, locks and prepares the model dir, and initialises,
/// warm-starts or resumes the model.
fn set_up(req: &TrainRequest, obs: &mut dyn TrainObserver) -> Result<Setup> {
    let train_src = DataSource::open(&req.train_files)?;
    let eval_src = req
        .eval_files
        .as_deref()
        .map(DataSource::open)
        .transpose()?;
    let mut cfg = build_config(req, &train_src, eval_src.as_ref())?;
    check_batch(req, &cfg, &train_src, obs)?;
    // Before the model dir is touched: a device that cannot run leaves a previous run intact,
    // even with --overwrite.
    let (device, eval_device, parallel_devices) = open_devices(req, &cfg, obs)?;
    let dir = &req.model_dir;
    let lock = DirLock::acquire(dir, "model directory")?;
    let resume = prepare_model_dir(req, &cfg, obs)?;
    std::fs::create_dir_all(dir).map_err(TrainError::io(dir))?;
    let cleaned = modeldir::clean_temporary(dir)?;
    if cleaned > 0 {
        obs.notice(&format!(
            "removed {cleaned} incomplete checkpoint(s) left by an interrupted run"
        ));
    }

    let optimizer = cfg.init_optimizer();
    let start = if resume {
        resume_run(req, &mut cfg, &device, optimizer, &train_src, obs)?
    } else {
        fresh_run(req, &mut cfg, &device, optimizer, &train_src, obs)?
    };
    obs.notice(&format!(
        "model {}: {} parameters ({} classes, {}x{} input)",
        cfg.model.kind,
        start.model.num_params(),
        cfg.classes.len(),
        cfg.model.image_size,
        cfg.model.image_size
    ));
    if let Some(w) = cfg.model.wide.filter(|_| cfg.model.kind.uses_wide()) {
        obs.notice(&wide_coverage(&train_src, &cfg, w)?);
    }
    let n = train_src.n_examples();
    let total_steps = total_steps(req, n, cfg.batch_size);
    let eval_every = req
        .eval_every
        .or(req.epochs.map(|_| steps_per_epoch(n, cfg.batch_size)));
    Ok(Setup {
        lock,
        train_src,
        eval_src,
        cfg,
        device,
        parallel_devices,
        eval_device,
        start,
        total_steps,
        eval_every,
    })
}

/// Opens `--device`'s devices: the first one's training (autodiff) and inference sides, and the
/// other data-parallel devices' training sides; checks `--precision` on each.
fn open_devices(
    req: &TrainRequest,
    cfg: &TrainConfig,
    obs: &mut dyn TrainObserver,
) -> Result<(Device, Device, Vec<Device>)> {
    let device = training_device(req.device)?;
    let eval_device = inference_device(req.device)?;
    let parallel_devices = req
        .parallel_devices
        .iter()
        .map(|&d| training_device(d))
        .collect::<Result<Vec<_>>>()?;
    cfg.precision.check(&device, req.device)?;
    for (d, &choice) in parallel_devices.iter().zip(&req.parallel_devices) {
        cfg.precision.check(d, choice)?;
    }
    if !parallel_devices.is_empty() {
        let n = parallel_devices.len() + 1;
        obs.notice(&format!(
            "data-parallel over {n} devices ({}): each batch of {} split into parts of {}-{} rows, gradients summed on {}",
            req.devices()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            cfg.batch_size,
            cfg.batch_size / n,
            cfg.batch_size.div_ceil(n),
            req.device
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for d in req.devices() {
        if !seen.insert(d) && !d.uses_host_memory() {
            obs.notice(&format!(
                "--device names {d} more than once: its parts of each batch run one after the other"
            ));
        }
    }
    Ok((device, eval_device, parallel_devices))
}

/// Continues from the model dir's latest checkpoint: its config, model, optimiser state and
/// data position.
fn resume_run(
    req: &TrainRequest,
    cfg: &mut TrainConfig,
    device: &Device,
    optimizer: ModuleOptimizer,
    train_src: &DataSource,
    obs: &mut dyn TrainObserver,
) -> Result<Start> {
    let dir = &req.model_dir;
    *cfg = TrainConfig::load(dir)?;
    let ck = modeldir::select_checkpoint(dir, CheckpointSel::Latest)?;
    let model = modeldir::load_model(&cfg.model, &ck, device)?;
    ck.verify(modeldir::OPTIMIZER_FILE)?;
    let of = ck.optimizer_file();
    let optimizer = optimizer.load(&of).map_err(|e| TrainError::Checkpoint {
        path: of.clone(),
        what: e.to_string(),
    })?;
    let (step, position) = (ck.state.step, ck.state.position);
    let dropped = modeldir::truncate_metrics(dir, step)?;
    obs.notice(&format!(
        "resuming from step {step} (checkpoint {}; data position: epoch {}, example {} of {}){}",
        ck.dir.display(),
        position.epoch,
        position.offset,
        train_src.n_examples(),
        if dropped > 0 {
            format!("; dropped {dropped} metrics line(s) written after that checkpoint")
        } else {
            String::new()
        }
    ));
    if let Some(w) = &req.warm_start_from {
        obs.notice(&format!(
            "--warm-start-from {} ignored: the model dir already has checkpoints",
            w.display()
        ));
    }
    Ok(Start {
        model,
        optimizer,
        step,
        position,
        resumed_from: Some(step),
        monitor: ck.state.monitor.unwrap_or_else(MonitorState::new),
    })
}

/// Starts at step 0: a seeded initialisation, the weights of `--warm-start-from`, or the class
/// counts (baseline); writes `config.json` and `labels.txt`.
fn fresh_run(
    req: &TrainRequest,
    cfg: &mut TrainConfig,
    device: &Device,
    optimizer: ModuleOptimizer,
    train_src: &DataSource,
    obs: &mut dyn TrainObserver,
) -> Result<Start> {
    let dir = &req.model_dir;
    device.seed(cfg.seed);
    let mut model = cfg.model.init(device)?;
    if let Some(w) = &req.warm_start_from {
        let wcfg = TrainConfig::load(w)?;
        if wcfg.model != cfg.model {
            return Err(TrainError::Config(format!(
                "--warm-start-from {}: its model ({}) differs from this one ({})",
                w.display(),
                serde_json::to_string(&wcfg.model).unwrap_or_default(),
                serde_json::to_string(&cfg.model).unwrap_or_default()
            )));
        }
        let ck = modeldir::select_checkpoint(w, CheckpointSel::Latest)?;
        model = modeldir::load_model(&cfg.model, &ck, device)?;
        obs.notice(&format!(
            "WARM START: weights initialised from {} (step {}); optimizer state and step start afresh at 0",
            ck.dir.display(),
            ck.state.step
        ));
        cfg.warm_started_from = Some(ck.dir.display().to_string());
    } else if let Model::Baseline(b) = model {
        let counts = pipeline::count_labels(train_src, cfg.classes.len())?;
        model = Model::Baseline(b.with_counts(&counts));
    }
    cfg.save(dir)?;
    let labels_dst = dir.join(LABELS_FILE);
    let labels_src = train_src.dir.join(LABELS_FILE);
    let labels = quickdraw_data::storage::read(&labels_src).map_err(TrainError::io(&labels_src))?;
    std::fs::write(&labels_dst, labels).map_err(TrainError::io(&labels_dst))?;
    Ok(Start {
        model,
        optimizer,
        step: 0,
        position: StreamPosition::default(),
        resumed_from: None,
        monitor: MonitorState::new(),
    })
}

impl TrainSummary {
    /// The summary of a run that has not stepped yet.
    fn starting(req: &TrainRequest, setup: &Setup) -> Self {
        let (start_step, bs) = (setup.start.step, setup.cfg.batch_size as u64);
        TrainSummary {
            model_dir: req.model_dir.clone(),
            model: setup.cfg.model.kind,
            parameters: setup.start.model.num_params(),
            resumed_from: setup.start.resumed_from,
            start_step,
            final_step: start_step,
            steps_run: 0,
            examples_seen: start_step * bs,
            epochs: (start_step * bs) as f64 / setup.train_src.n_examples() as f64,
            seconds: 0.0,
            steps_per_sec: 0.0,
            examples_per_sec: 0.0,
            data_wait_seconds: 0.0,
            data_wait_share: 0.0,
            step_seconds: 0.0,
            step_examples_per_sec: 0.0,
            train_loss: None,
            train_accuracy: None,
            eval: None,
            checkpoint: None,
            interrupted: false,
            stopped_early: None,
        }
    }
}

/// The periodic evaluation of a run: eval shards, the plain (inference) device and the
/// `eval/` TensorBoard events.
struct PeriodicEval {
    src: DataSource,
    device: Device,
    events: EventWriter,
    opts: EvalOptions,
}

impl PeriodicEval {
    /// Evaluates `model` (in validation mode) and writes its scalars and confusion matrix.
    fn run(
        &mut self,
        model: &Model,
        config: &ModelConfig,
        classes: &[String],
        step: u64,
        obs: &mut dyn TrainObserver,
    ) -> Result<MetricsReport> {
        obs.eval_start(step);
        let valid = model.valid();
        let (report, _) = evaluate_model(
            &valid,
            config,
            &self.device,
            &self.src,
            classes,
            &self.opts,
            false,
        )?;
        self.events.add_scalars(
            &[
                ("loss", report.loss as f32),
                ("accuracy", report.accuracy as f32),
                ("top3_accuracy", report.top3_accuracy as f32),
                ("map3", report.map3 as f32),
            ],
            step as i64,
        )?;
        let title = format!(
            "{} at step {step}: accuracy {:.4} on {} eval examples",
            config.kind, report.accuracy, report.examples
        );
        let (px, w, h) = confusion_chart(&title, classes, &report.confusion);
        self.events
            .add_png_gray("confusion_matrix", &px, w, h, step as i64)?;
        obs.evaluated(step, &report);
        Ok(report)
    }
}

/// A training run in progress: the [`Trainer`] fed by the input pipeline, the logging window,
/// the evaluation and checkpoint policy, and the summary being filled in.
struct Run<'a> {
    req: &'a TrainRequest,
    cfg: TrainConfig,
    trainer: Trainer,
    device: Device,
    pipeline: Pipeline,
    events: EventWriter,
    eval: Option<PeriodicEval>,
    window: WindowAccumulator,
    summary: TrainSummary,
    /// Global step (steps done).
    step: u64,
    /// Data position after the last batch.
    position: StreamPosition,
    epoch_size: u64,
    t0: Instant,
    last_eval: Option<(u64, MetricsReport)>,
    inputs_logged: bool,
    total_steps: u64,
    eval_every: Option<u64>,
    /// Early stopping's and the plateau's view of the evaluations.
    monitor: MonitorState,
    /// Set by an evaluation after which early stopping ends the run.
    stop_early: bool,
    /// Released last, when the run is dropped.
    _lock: DirLock,
}

impl<'a> Run<'a> {
    fn new(req: &'a TrainRequest, setup: Setup, summary: TrainSummary) -> Result<Self> {
        let Setup {
            lock,
            train_src,
            eval_src,
            cfg,
            device,
            parallel_devices,
            eval_device,
            start,
            total_steps,
            eval_every,
        } = setup;
        let dir = &req.model_dir;
        let mut events = EventWriter::create(dir)?;
        write_run_description(&mut events, &cfg, &train_src, start.step)?;
        let eval = match eval_src {
            Some(src) => Some(PeriodicEval {
                events: EventWriter::create(&dir.join(modeldir::EVAL_DIR))?,
                src,
                device: eval_device,
                opts: EvalOptions {
                    batch_size: cfg.batch_size,
                    max_batches: req.eval_steps,
                    prefetch: req.prefetch,
                },
            }),
            None => None,
        };
        let pipeline = Pipeline::spawn(
            &train_src,
            PipelineOptions {
                order: OrderOptions::train(cfg.seed, cfg.shuffle_buffer),
                decode: DecodeOptions::for_model(cfg.features, &cfg.model),
                batch_size: cfg.batch_size,
                start: start.position,
                prefetch: req.prefetch,
                max_batches: None,
                augment: Some((cfg.augment, cfg.seed)),
            },
        )?;
        let trainer = Trainer::new(start.model, start.optimizer, cfg.learning_rate, &device)
            .with_loss(
                cfg.label_smoothing,
                cfg.class_weights.as_ref().map(|w| w.weights.as_slice()),
            )
            .with_data_parallel(parallel_devices)
            .with_precision(cfg.precision);
        Ok(Run {
            req,
            trainer,
            device,
            pipeline,
            events,
            eval,
            window: WindowAccumulator::new(),
            summary,
            step: start.step,
            position: start.position,
            epoch_size: train_src.n_examples(),
            t0: Instant::now(),
            last_eval: None,
            inputs_logged: false,
            total_steps,
            eval_every,
            monitor: start.monitor,
            stop_early: false,
            cfg,
            _lock: lock,
        })
    }

    /// Steps to `--train-steps` (or an interruption), evaluating and checkpointing on the way.
    fn train(mut self, obs: &mut dyn TrainObserver) -> Result<TrainSummary> {
        obs.start(self.step, self.total_steps);
        self.t0 = Instant::now();
        self.window = WindowAccumulator::new();
        let stop = self.req.stop.clone().unwrap_or_default();
        while self.step < self.total_steps {
            self.step_once(obs)?;
            let interrupted = stop.load(Ordering::SeqCst);
            // An interruption skips the evaluation, unless early stopping or the plateau
            // watch it: a resumed run would never see that step's evaluation.
            let eval = if interrupted && !self.watching() {
                None
            } else {
                self.maybe_eval(obs)?
            };
            self.maybe_checkpoint(eval, interrupted, obs)?;
            if interrupted {
                self.summary.interrupted = true;
                break;
            }
            if self.stop_early {
                break;
            }
        }
        self.finish()
    }

    /// One optimisation step on the next batch, with its bookkeeping and logging.
    fn step_once(&mut self, obs: &mut dyn TrainObserver) -> Result<()> {
        let step_start = Instant::now();
        let batch = self
            .pipeline
            .next_batch()?
            .ok_or(TrainError::PipelineGone)?;
        if !self.inputs_logged {
            let n = batch.size.min(16);
            let imgs: Vec<Vec<u8>> = (0..n).map(|i| batch.image_u8(i)).collect();
            let (px, w, h) = quickdraw_data::image::tile(&imgs, batch.image_size);
            self.events
                .add_png_gray("inputs", &px, w, h, self.step as i64)?;
            self.inputs_logged = true;
        }
        let b = batch.size;
        // Random state (dropout masks) is a function of (seed, step), so a resumed run draws
        // exactly what an uninterrupted one would.
        let seed = step_seed(self.cfg.seed, self.step);
        self.device.seed(seed);
        self.trainer.set_step_seed(seed);
        let lr = self
            .cfg
            .lr_schedule
            .lr(self.cfg.learning_rate, self.step, self.total_steps)
            * self.monitor.lr_scale;
        self.trainer.set_learning_rate(lr);
        let input = ModelInput::from_batch(&batch, self.cfg.model.kind, &self.device)?;
        let targets =
            Tensor::<1, Int>::from_data(TensorData::new(batch.labels.clone(), [b]), &self.device);
        let out = self
            .trainer
            .step(input, targets)
            .map_err(|e| TrainError::NonFinite {
                step: self.step + 1,
                what: e.to_string(),
                last_good: last_checkpoint(&self.req.model_dir),
            })?;
        let logits = to_host(out.logits);
        self.window
            .add_batch(&logits, &batch.labels, self.cfg.classes.len(), out.loss);
        self.summary.step_seconds += step_start.elapsed().as_secs_f64();
        self.step += 1;
        self.position = batch.position;
        self.summary.steps_run += 1;
        self.summary.examples_seen += b as u64;
        self.report_step(obs)
    }

    /// Progress after a step; the window's scalars every `--log-every` steps and at the end.
    fn report_step(&mut self, obs: &mut dyn TrainObserver) -> Result<()> {
        let s = &mut self.summary;
        let elapsed = self.t0.elapsed().as_secs_f64().max(1e-9);
        let wait_share = self.pipeline.wait().as_secs_f64() / elapsed;
        let new_examples = s.examples_seen - s.start_step * self.cfg.batch_size as u64;
        let stats = StepStats {
            step: self.step,
            total_steps: self.total_steps,
            loss: self.window.loss(),
            accuracy: self.window.accuracy(),
            steps_per_sec: s.steps_run as f64 / elapsed,
            examples_per_sec: new_examples as f64 / elapsed,
            data_wait_share: wait_share,
            epoch: s.examples_seen as f64 / self.epoch_size as f64,
            epochs: self.req.epochs,
            steps_per_epoch: steps_per_epoch(self.epoch_size, self.cfg.batch_size),
            learning_rate: self.trainer.learning_rate(),
            val_loss: self.last_eval.as_ref().map(|e| e.1.loss),
            val_accuracy: self.last_eval.as_ref().map(|e| e.1.accuracy),
        };
        obs.step(&stats);
        if self.step.is_multiple_of(self.req.log_every.max(1)) || self.step == self.total_steps {
            self.events.add_scalars(
                &[
                    ("loss", stats.loss as f32),
                    ("accuracy", stats.accuracy as f32),
                    ("top3_accuracy", self.window.top3_accuracy() as f32),
                    ("learning_rate", self.trainer.learning_rate() as f32),
                    ("examples_per_sec", self.window.examples_per_sec() as f32),
                    ("data_wait_share", wait_share as f32),
                    ("epoch", stats.epoch as f32),
                ],
                self.step as i64,
            )?;
            s.train_loss = Some(stats.loss);
            s.train_accuracy = Some(stats.accuracy);
            self.window = WindowAccumulator::new();
        }
        Ok(())
    }

    /// Evaluates at the end and every `--eval-every` steps (with eval shards); appends the
    /// figures to `metrics.jsonl`. Returns the eval accuracy and loss when it evaluated.
    fn maybe_eval(&mut self, obs: &mut dyn TrainObserver) -> Result<Option<(f64, f64)>> {
        let step = self.step;
        let due = step == self.total_steps
            || self
                .eval_every
                .is_some_and(|e| e > 0 && step.is_multiple_of(e));
        let Some(eval) = self.eval.as_mut().filter(|_| due) else {
            return Ok(None);
        };
        let model = self.trainer.model();
        let report = eval.run(model, &self.cfg.model, &self.cfg.classes, step, obs)?;
        let line = serde_json::json!({
            "step": step,
            "wall_time": now_secs(),
            "epoch": self.summary.examples_seen as f64 / self.epoch_size as f64,
            "examples": report.examples,
            "loss": report.loss,
            "accuracy": report.accuracy,
            "top3_accuracy": report.top3_accuracy,
            "map3": report.map3,
            "macro_f1": report.macro_f1,
            "train_loss": self.summary.train_loss,
            "train_accuracy": self.summary.train_accuracy,
        });
        modeldir::append_metrics(&self.req.model_dir, &line)?;
        let figures = (report.accuracy, report.loss);
        // Only the scheduled evaluations feed early stopping and the plateau: the extra one at
        // the end of a shorter run would otherwise make its resumption differ from a run that
        // never stopped there.
        if self
            .eval_every
            .is_some_and(|e| e > 0 && step.is_multiple_of(e))
        {
            self.watch(figures, obs);
        }
        self.last_eval = Some((step, report));
        Ok(Some(figures))
    }

    /// Writes a checkpoint (and the weight histograms) after an evaluation, at the end, on
    /// interruption and every `--checkpoint-every` steps; refuses non-finite weights.
    fn maybe_checkpoint(
        &mut self,
        eval: Option<(f64, f64)>,
        interrupted: bool,
        obs: &mut dyn TrainObserver,
    ) -> Result<()> {
        let step = self.step;
        let due = eval.is_some()
            || step == self.total_steps
            || interrupted
            || step.is_multiple_of(self.req.checkpoint_every.max(1));
        if !due {
            return Ok(());
        }
        let mut eval = eval;
        let mut restored_from_step = None;
        if self.stop_early
            && let Some((best_step, figures)) = self.restore_best(obs)?
        {
            restored_from_step = Some(best_step);
            eval = figures.or(eval);
        }
        let dir = &self.req.model_dir;
        let model = self.trainer.model();
        let bad = crate::export::non_finite_params(model);
        if !bad.is_empty() {
            return Err(TrainError::NonFinite {
                step,
                what: format!("weights became NaN or infinite ({})", bad.join(", ")),
                last_good: last_checkpoint(dir),
            });
        }
        let state = CheckpointState {
            step,
            position: self.position,
            examples_seen: self.summary.examples_seen,
            epoch_size: self.epoch_size,
            eval_accuracy: eval.map(|a| a.0),
            eval_loss: eval.map(|a| a.1),
            wall_time: now_secs(),
            sha256: Default::default(),
            monitor: self.watching().then_some(self.monitor),
            restored_from_step,
        };
        let ck = modeldir::write_checkpoint(
            dir,
            model,
            self.trainer.optimizer(),
            state,
            self.req.keep_checkpoints,
        )?;
        write_histograms(model, &mut self.events, step)?;
        obs.checkpoint(step, &ck.dir);
        self.summary.checkpoint = Some(ck.dir);
        Ok(())
    }

    /// Whether early stopping or the plateau schedule watch the evaluations.
    fn watching(&self) -> bool {
        self.cfg.early_stopping.is_some() || self.cfg.lr_schedule.kind == ScheduleKind::Plateau
    }

    /// Feeds an evaluation's (accuracy, loss) to early stopping and the plateau schedule.
    fn watch(&mut self, (accuracy, loss): (f64, f64), obs: &mut dyn TrainObserver) {
        if !self.watching() {
            return;
        }
        let early = self.cfg.early_stopping;
        let metric = early.map_or(self.cfg.lr_schedule.monitor, |e| e.metric);
        let d = self.monitor.observe(
            metric,
            metric.of(accuracy, loss),
            self.step,
            &self.cfg.lr_schedule,
            early.as_ref(),
        );
        if d.cut {
            obs.notice(&format!(
                "step {}: {metric} has not improved for {} evaluations: learning rate x{} (now x{} of the base)",
                self.step, self.cfg.lr_schedule.patience, self.cfg.lr_schedule.rate, self.monitor.lr_scale
            ));
        }
        if d.stop {
            self.stop_early = true;
        }
    }

    /// Early stopping: puts the weights of the best evaluation back into the trainer (the
    /// optimizer state stays the current one); returns that step and its eval figures.
    fn restore_best(
        &mut self,
        obs: &mut dyn TrainObserver,
    ) -> Result<Option<(u64, Option<(f64, f64)>)>> {
        let m = self.monitor;
        // No evaluation ever counted (every value NaN): nothing to restore; the non-finite
        // check that follows says why.
        let Some(best_step) = m.best_step else {
            return Ok(None);
        };
        let ck = modeldir::select_checkpoint(&self.req.model_dir, CheckpointSel::Step(best_step))?;
        let model = modeldir::load_model(&self.cfg.model, &ck, &self.device)?;
        self.trainer.set_model(model);
        // The summary describes the weights the run ends with: evaluate the restored ones
        // (without TensorBoard events: the step's own evaluation is already logged).
        if let Some(eval) = self.eval.as_mut() {
            let valid = self.trainer.model().valid();
            let (report, _) = evaluate_model(
                &valid,
                &self.cfg.model,
                &eval.device,
                &eval.src,
                &self.cfg.classes,
                &eval.opts,
                false,
            )?;
            self.last_eval = Some((self.step, report));
        }
        let metric = self
            .cfg
            .early_stopping
            .map_or(self.cfg.lr_schedule.monitor, |e| e.metric);
        obs.notice(&format!(
            "early stopping at step {}: {metric} has not improved for {} evaluations; restored the weights of step {best_step} ({metric} {:.4})",
            self.step,
            m.since_best,
            m.best.unwrap_or(f64::NAN)
        ));
        self.summary.stopped_early = Some(StoppedEarly {
            step: self.step,
            metric,
            best: m.best.unwrap_or(f64::NAN),
            best_step,
        });
        let figures = ck.state.eval_accuracy.zip(ck.state.eval_loss);
        Ok(Some((best_step, figures)))
    }

    /// The summary's totals; flushes the training events.
    fn finish(mut self) -> Result<TrainSummary> {
        let secs = self.t0.elapsed().as_secs_f64();
        let s = &mut self.summary;
        let new_examples = (s.examples_seen - s.start_step * self.cfg.batch_size as u64) as f64;
        s.final_step = self.step;
        s.seconds = secs;
        s.steps_per_sec = s.steps_run as f64 / secs.max(1e-9);
        s.examples_per_sec = new_examples / secs.max(1e-9);
        s.step_examples_per_sec = new_examples / s.step_seconds.max(1e-9);
        s.data_wait_seconds = self.pipeline.wait().as_secs_f64();
        s.data_wait_share = s.data_wait_seconds / secs.max(1e-9);
        s.epochs = s.examples_seen as f64 / self.epoch_size as f64;
        s.eval = self.last_eval.take().map(|(s, r)| EvalSummary::new(s, &r));
        if !s.interrupted {
            quickdraw_data::hparams::write_session_end(
                &mut self.events,
                quickdraw_data::hparams::Status::Success,
                now_secs(),
            )?;
        }
        self.events.flush()?;
        Ok(self.summary)
    }
}

/// The run's hyper-parameters for TensorBoard's HParams tab, and its config and dataset manifest
/// as text summaries.
fn write_run_description(
    events: &mut EventWriter,
    cfg: &TrainConfig,
    src: &DataSource,
    step: u64,
) -> Result<()> {
    use quickdraw_data::hparams::{HParam, Metric, write_session_start};
    let mut flat = serde_json::Map::new();
    if let serde_json::Value::Object(m) = serde_json::to_value(&cfg.model).unwrap_or_default() {
        flat.extend(m);
    }
    let mut top = serde_json::to_value(cfg).unwrap_or_default();
    for k in [
        "model",
        "classes",
        "features",
        "data",
        "config_version",
        "warm_started_from",
        "class_weights",
    ] {
        top.as_object_mut().map(|o| o.remove(k));
    }
    if let serde_json::Value::Object(m) = top {
        for (k, v) in m {
            match v {
                // One level of nesting (lr_schedule, early_stopping) as "parent.child".
                serde_json::Value::Object(inner) => {
                    flat.extend(inner.into_iter().map(|(k2, v2)| (format!("{k}.{k2}"), v2)))
                }
                v => {
                    flat.insert(k, v);
                }
            }
        }
    }
    if let Some(w) = &cfg.class_weights {
        flat.insert("class_weights".into(), w.source.clone().into());
    }
    let hparams = flat
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| {
            let h = match v {
                serde_json::Value::Number(n) => HParam::Number(n.as_f64().unwrap_or(f64::NAN)),
                serde_json::Value::Bool(b) => HParam::Bool(b),
                serde_json::Value::String(s) => HParam::Text(s),
                other => HParam::Text(other.to_string()),
            };
            (k, h)
        })
        .collect();
    let metric = |group: &str, tag: &str| Metric {
        group: group.into(),
        tag: tag.into(),
        validation: group == modeldir::EVAL_DIR,
    };
    let metrics = [
        metric(modeldir::EVAL_DIR, "accuracy"),
        metric(modeldir::EVAL_DIR, "loss"),
        metric(modeldir::EVAL_DIR, "top3_accuracy"),
        metric(modeldir::EVAL_DIR, "map3"),
        metric("", "loss"),
        metric("", "accuracy"),
    ];
    write_session_start(events, &hparams, &metrics, now_secs())?;
    events.add_graph(&cfg.model.layer_graph())?;
    let config = serde_json::to_string_pretty(cfg).unwrap_or_default();
    events.add_text("config", &format!("```json\n{config}\n```"), step as i64)?;
    let manifest = serde_json::to_string_pretty(&src.manifest).unwrap_or_default();
    const MAX_TEXT: usize = 256 * 1024;
    let shown = if manifest.len() > MAX_TEXT {
        let mut cut = MAX_TEXT;
        while !manifest.is_char_boundary(cut) {
            cut -= 1;
        }
        format!(
            "{}\n... ({} of {} bytes shown; the whole file is {}/manifest.json)",
            &manifest[..cut],
            cut,
            manifest.len(),
            src.dir.display()
        )
    } else {
        manifest
    };
    events.add_text(
        "dataset_manifest",
        &format!("```json\n{shown}\n```"),
        step as i64,
    )?;
    Ok(())
}

/// The seed of the device's random state at `step`.
fn step_seed(seed: u64, step: u64) -> u64 {
    quickdraw_data::split::mix64(seed ^ quickdraw_data::split::mix64(step))
}

/// The newest complete checkpoint of a model dir, if any.
fn last_checkpoint(dir: &Path) -> Option<PathBuf> {
    modeldir::list_checkpoints(dir).ok()?.pop().map(|c| c.dir)
}

/// Refuses a batch size that cannot fit in memory (CPU training); notes one larger than the
/// training set (each batch then repeats examples).
fn check_batch(
    req: &TrainRequest,
    cfg: &TrainConfig,
    src: &DataSource,
    obs: &mut dyn TrainObserver,
) -> Result<()> {
    let seq_len = cfg.features.strokes.map_or(0, |s| s.max_points);
    let n_devices = 1 + req.parallel_devices.len();
    if cfg.batch_size < n_devices {
        return Err(TrainError::Config(format!(
            "--batch-size {} cannot be split over the {n_devices} devices of --device: give each device at least one row",
            cfg.batch_size
        )));
    }
    // Host devices hold the whole batch between them (its parts, one after the other).
    let on_host = req.devices().any(DeviceChoice::uses_host_memory);
    if on_host && let Some(avail) = crate::memory::available_memory() {
        crate::memory::check_batch_size(&cfg.model, cfg.batch_size, seq_len, req.prefetch, avail)?;
    }
    if cfg.batch_size as u64 > src.n_examples() {
        obs.notice(&format!(
            "--batch-size {} is larger than the {} training examples: every batch repeats examples",
            cfg.batch_size,
            src.n_examples()
        ));
    }
    Ok(())
}

/// Measured throughput of `bench`.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub model: ModelKind,
    pub parameters: usize,
    pub image_size: usize,
    pub batch_size: usize,
    pub steps: u64,
    pub seconds: f64,
    pub images_per_sec: f64,
    pub steps_per_sec: f64,
}

/// Random model inputs of `batch` examples (images, or 64-step stroke sequences).
fn random_input(config: &ModelConfig, batch: usize, device: &Device) -> ModelInput {
    let random = burn::tensor::Distribution::Default;
    if config.kind.uses_strokes() {
        let t = 64;
        ModelInput::Strokes {
            forward: Tensor::random([batch, t, 3], random, device),
            backward: Tensor::random([batch, t, 3], random, device),
            mask: Tensor::ones([batch, t], device),
        }
    } else {
        let s = config.image_size;
        let images = Tensor::random([batch, 1, s, s], random, device);
        match config.wide {
            Some(w) if config.kind.uses_wide() => {
                let wide = Tensor::random([batch, w.dim()], random, device);
                ModelInput::ImagesWide { images, wide }
            }
            _ => ModelInput::Images(images),
        }
    }
}

/// Times `steps` training steps (after `warmup` untimed ones) on random inputs: the model's
/// compute throughput, without the input pipeline.
pub fn bench_train(
    config: &ModelConfig,
    batch_size: usize,
    warmup: u64,
    steps: u64,
    device: DeviceChoice,
) -> Result<BenchResult> {
    let device = training_device(device)?;
    device.seed(0);
    let mut trainer = Trainer::new(
        config.init(&device)?,
        OptimizerKind::Adam.init(),
        1e-3,
        &device,
    );
    let s = config.image_size;
    let run = |n: u64, trainer: &mut Trainer| -> Result<()> {
        for i in 0..n {
            let input = random_input(config, batch_size, &device);
            let labels: Vec<i64> = (0..batch_size)
                .map(|j| ((i as usize + j) % config.n_classes) as i64)
                .collect();
            let targets =
                Tensor::<1, Int>::from_data(TensorData::new(labels, [batch_size]), &device);
            trainer
                .step(input, targets)
                .map_err(|e| TrainError::NonFinite {
                    step: i + 1,
                    what: e.to_string(),
                    last_good: None,
                })?;
        }
        Ok(())
    };
    run(warmup, &mut trainer)?;
    let t = Instant::now();
    run(steps, &mut trainer)?;
    let secs = t.elapsed().as_secs_f64();
    let model = trainer.into_model();
    Ok(BenchResult {
        model: config.kind,
        parameters: model.num_params(),
        image_size: s,
        batch_size,
        steps,
        seconds: secs,
        images_per_sec: (steps as usize * batch_size) as f64 / secs.max(1e-9),
        steps_per_sec: steps as f64 / secs.max(1e-9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modeldir::list_checkpoints;
    use crate::schedule::ScheduleKind;
    use crate::testdata::{TinyDataset, write_tiny_dataset};

    /// Raises the stop flag (as Ctrl-C does) once step `at` is done, counting evaluations.
    struct StopAt {
        at: u64,
        stop: Arc<AtomicBool>,
        evaluated: Vec<u64>,
    }

    impl TrainObserver for StopAt {
        fn step(&mut self, s: &StepStats) {
            if s.step == self.at {
                self.stop.store(true, Ordering::SeqCst);
            }
        }
        fn evaluated(&mut self, step: u64, _r: &MetricsReport) {
            self.evaluated.push(step);
        }
    }

    fn request(data: &Path, dir: &Path, stop: Option<Arc<AtomicBool>>) -> TrainRequest {
        let mut req = TrainRequest::new(
            ModelKind::Linear,
            dir,
            format!("{}/train-*", data.display()),
        );
        req.eval_files = Some(format!("{}/eval-*", data.display()));
        req.batch_size = 8;
        req.train_steps = 8;
        req.eval_every = Some(4);
        req.checkpoint_every = 100;
        req.lr_schedule = LrSchedule {
            kind: ScheduleKind::Plateau,
            patience: 1,
            rate: 0.5,
            ..LrSchedule::default()
        };
        req.stop = stop;
        req
    }

    /// The plateau watches the evaluations: a run interrupted at a step whose evaluation is due
    /// still runs it (and records it in the checkpoint), so the resumed run ends exactly where an
    /// uninterrupted one does.
    #[test]
    fn an_interrupted_run_still_runs_a_due_watched_evaluation() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let t = TinyDataset {
            classes: 3,
            train_per_class: 12,
            eval_per_class: 4,
            image_size: 8,
            strokes: None,
            train_shards: 1,
            seed: 5,
        };
        write_tiny_dataset(&data, &t).unwrap();
        // Both runs start from the weights of one checkpoint (a warm start) and the linear model
        // draws nothing at random after that, so tests running at the same time, which share
        // the CPU backend's random generator, cannot make the two runs differ.
        let base = tmp.path().join("base");
        let mut first_step = request(&data, &base, None);
        first_step.train_steps = 1;
        train(&first_step, &mut NoObserver).unwrap();
        let request = |dir: &Path, stop| {
            let mut r = request(&data, dir, stop);
            r.warm_start_from = Some(base.clone());
            r
        };
        let whole = train(&request(&tmp.path().join("whole"), None), &mut NoObserver).unwrap();

        let dir = tmp.path().join("cut");
        let stop = Arc::new(AtomicBool::new(false));
        let mut obs = StopAt {
            at: 4,
            stop: stop.clone(),
            evaluated: Vec::new(),
        };
        let first = train(&request(&dir, Some(stop)), &mut obs).unwrap();
        assert!(first.interrupted && first.final_step == 4, "{first:?}");
        assert_eq!(obs.evaluated, vec![4], "the due evaluation ran");
        let cps = list_checkpoints(&dir).unwrap();
        let last = &cps.last().unwrap().state;
        assert_eq!(last.step, 4);
        let m = last
            .monitor
            .expect("the plateau's state is in the checkpoint");
        assert_eq!(m.best_step, Some(4), "{m:?}");

        let resumed = train(&request(&dir, None), &mut NoObserver).unwrap();
        assert_eq!(resumed.resumed_from, Some(4));
        let (a, b) = (whole.eval.unwrap(), resumed.eval.unwrap());
        assert_eq!(a.loss.to_bits(), b.loss.to_bits(), "{a:?} vs {b:?}");
    }
}
