//! The training loop: model dir set-up (fresh, resume, overwrite, warm start), the optimisation
//! steps, periodic evaluation, atomic checkpoints, TensorBoard summaries and interruption.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::prelude::*;
use quickdraw_data::events::EventWriter;
use quickdraw_data::lock::{DirLock, LOCK_FILE};
use serde::{Deserialize, Serialize};

use crate::device::{DeviceChoice, inference_device, training_device};
use crate::error::{Result, TrainError};
use crate::eval::{EvalOptions, evaluate_model};
use crate::metrics::{MetricsReport, confusion_image, rank_of};
use crate::model::{ConvLayer, Model, ModelConfig, ModelInput, ModelKind, to_host};
use crate::modeldir::{
    self, CONFIG_FILE, CheckpointSel, CheckpointState, DataInfo, LABELS_FILE, OptimizerKind,
    TrainConfig,
};
use crate::pipeline::{
    self, DEFAULT_PREFETCH, DEFAULT_SHUFFLE_BUFFER, DataSource, DecodeOptions, OrderOptions,
    Pipeline, PipelineOptions, StreamPosition,
};

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
    /// Batches per evaluation (default: the whole eval set).
    pub eval_steps: Option<u64>,
    /// Evaluate every N steps (and always at the end when eval files are given).
    pub eval_every: Option<u64>,
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
    pub overwrite: bool,
    pub warm_start_from: Option<PathBuf>,
    pub device: DeviceChoice,
    pub prefetch: usize,
    /// Write training scalars every N steps.
    pub log_every: u64,
    /// Set (e.g. by Ctrl-C) to stop after the current step with a checkpoint.
    pub stop: Option<Arc<AtomicBool>>,
}

impl TrainRequest {
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
            eval_steps: None,
            eval_every: None,
            checkpoint_every: 100,
            keep_checkpoints: 5,
            overwrite: false,
            warm_start_from: None,
            device: DeviceChoice::Cpu,
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
    match req.model {
        ModelKind::Dnn => {
            if let Some(h) = &req.hidden {
                model.hidden = Some(h.clone());
            }
            if let Some(d) = req.dropout {
                model.dropout = Some(d);
            }
        }
        ModelKind::Cnn => {
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
    })
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

/// Tiles grey images into one grid image (1 px gaps); returns pixels and (width, height).
pub fn image_grid(images: &[Vec<u8>], side: usize) -> (Vec<u8>, u32, u32) {
    let n = images.len().max(1);
    let cols = (n as f64).sqrt().ceil() as usize;
    let rows = n.div_ceil(cols);
    let (w, h) = (cols * (side + 1) + 1, rows * (side + 1) + 1);
    let mut px = vec![64u8; w * h];
    for (i, img) in images.iter().enumerate() {
        let (r, c) = (i / cols, i % cols);
        for y in 0..side {
            let dst = (1 + r * (side + 1) + y) * w + 1 + c * (side + 1);
            px[dst..dst + side].copy_from_slice(&img[y * side..(y + 1) * side]);
        }
    }
    (px, w as u32, h as u32)
}

/// Trains as requested; see the module docs.
pub fn train(req: &TrainRequest, obs: &mut dyn TrainObserver) -> Result<TrainSummary> {
    let train_src = DataSource::open(&req.train_files)?;
    let eval_src = req
        .eval_files
        .as_deref()
        .map(DataSource::open)
        .transpose()?;
    let mut cfg = build_config(req, &train_src, eval_src.as_ref())?;
    check_batch(req, &cfg, &train_src, obs)?;
    let dir = req.model_dir.clone();
    // One writer per model directory; released when this function returns (or the process dies).
    let _lock = DirLock::acquire(&dir, "model directory")?;
    let resume = prepare_model_dir(req, &cfg, obs)?;
    std::fs::create_dir_all(&dir).map_err(TrainError::io(&dir))?;
    let cleaned = modeldir::clean_temporary(&dir)?;
    if cleaned > 0 {
        obs.notice(&format!(
            "removed {cleaned} incomplete checkpoint(s) left by an interrupted run"
        ));
    }

    let device = training_device(req.device)?;
    let eval_device = inference_device(req.device)?;
    let kind = cfg.model.kind;
    let mut optimizer = cfg.optimizer.init();
    let mut start_step = 0u64;
    let mut position = StreamPosition::default();
    let mut resumed_from = None;
    let mut model;
    if resume {
        cfg = TrainConfig::load(&dir)?;
        let ck = modeldir::select_checkpoint(&dir, CheckpointSel::Latest)?;
        model = modeldir::load_model(&cfg.model, &ck, &device)?;
        ck.verify(modeldir::OPTIMIZER_FILE)?;
        let of = ck.optimizer_file();
        optimizer = optimizer.load(&of).map_err(|e| TrainError::Checkpoint {
            path: of.clone(),
            what: e.to_string(),
        })?;
        start_step = ck.state.step;
        position = ck.state.position;
        resumed_from = Some(start_step);
        let dropped = modeldir::truncate_metrics(&dir, start_step)?;
        obs.notice(&format!(
            "resuming from step {start_step} (checkpoint {}; data position: epoch {}, example {} of {}){}",
            ck.dir.display(),
            position.epoch,
            position.offset,
            train_src.n_examples(),
            if dropped > 0 { format!("; dropped {dropped} metrics line(s) written after that checkpoint") } else { String::new() }
        ));
        if let Some(w) = &req.warm_start_from {
            obs.notice(&format!(
                "--warm-start-from {} ignored: the model dir already has checkpoints",
                w.display()
            ));
        }
    } else {
        device.seed(cfg.seed);
        model = cfg.model.init(&device)?;
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
            model = modeldir::load_model(&cfg.model, &ck, &device)?;
            obs.notice(&format!(
                "WARM START: weights initialised from {} (step {}); optimizer state and step start afresh at 0",
                ck.dir.display(),
                ck.state.step
            ));
            cfg.warm_started_from = Some(ck.dir.display().to_string());
        } else if let Model::Baseline(b) = model {
            let counts = pipeline::count_labels(&train_src, cfg.classes.len())?;
            model = Model::Baseline(b.with_counts(&counts));
        }
        cfg.save(&dir)?;
        let labels_dst = dir.join(LABELS_FILE);
        std::fs::copy(train_src.dir.join(LABELS_FILE), &labels_dst)
            .map_err(TrainError::io(&labels_dst))?;
    }
    let parameters = model.num_params();
    obs.notice(&format!(
        "model {kind}: {parameters} parameters ({} classes, {}x{} input)",
        cfg.classes.len(),
        cfg.model.image_size,
        cfg.model.image_size
    ));

    let epoch_size = train_src.n_examples();
    let bs = cfg.batch_size as u64;
    let mut summary = TrainSummary {
        model_dir: dir.clone(),
        model: kind,
        parameters,
        resumed_from,
        start_step,
        final_step: start_step,
        steps_run: 0,
        examples_seen: start_step * bs,
        epochs: (start_step * bs) as f64 / epoch_size as f64,
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
    };
    if start_step >= req.train_steps {
        obs.notice(&format!(
            "already trained to step {start_step} (--train-steps {}): nothing to do",
            req.train_steps
        ));
        return Ok(summary);
    }

    let mut train_events = EventWriter::create(&dir)?;
    let mut eval_events = if eval_src.is_some() {
        Some(EventWriter::create(&dir.join(modeldir::EVAL_DIR))?)
    } else {
        None
    };
    let decode = DecodeOptions {
        spec: cfg.features,
        n_classes: cfg.classes.len(),
        strokes: kind.uses_strokes(),
    };
    let mut pipeline = Pipeline::spawn(
        &train_src,
        PipelineOptions {
            order: OrderOptions::train(cfg.seed, cfg.shuffle_buffer),
            decode: decode.clone(),
            batch_size: cfg.batch_size,
            start: position,
            prefetch: req.prefetch,
            max_batches: None,
        },
    )?;
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let lr = cfg.learning_rate;
    let eval_opts = EvalOptions {
        batch_size: cfg.batch_size,
        max_batches: req.eval_steps,
        prefetch: req.prefetch,
    };
    let checkpoint_every = req.checkpoint_every.max(1);
    let log_every = req.log_every.max(1);

    obs.start(start_step, req.train_steps);
    let t0 = Instant::now();
    let mut step = start_step;
    let (mut w_loss, mut w_correct, mut w_top3, mut w_n) = (0.0f64, 0u64, 0u64, 0u64);
    let mut window_start = Instant::now();
    let mut last_eval: Option<(u64, MetricsReport)> = None;
    let stop = req.stop.clone().unwrap_or_default();

    let mut evaluate_now =
        |model: &Model, step: u64, obs: &mut dyn TrainObserver| -> Result<Option<MetricsReport>> {
            let Some(src) = eval_src.as_ref() else {
                return Ok(None);
            };
            obs.eval_start(step);
            let valid = model.valid();
            let (report, _) = evaluate_model(
                &valid,
                kind,
                &eval_device,
                src,
                &cfg.classes,
                &eval_opts,
                false,
            )?;
            let ev = eval_events.as_mut().expect("eval writer");
            ev.add_scalars(
                &[
                    ("loss", report.loss as f32),
                    ("accuracy", report.accuracy as f32),
                    ("top3_accuracy", report.top3_accuracy as f32),
                    ("map3", report.map3 as f32),
                ],
                step as i64,
            )?;
            let cell = (256 / report.confusion.len().max(1)).clamp(2, 32);
            let (px, side) = confusion_image(&report.confusion, cell);
            ev.add_png_gray("confusion_matrix", &px, side, side, step as i64)?;
            obs.evaluated(step, &report);
            Ok(Some(report))
        };

    let mut first_batch = true;
    while step < req.train_steps {
        let step_start = Instant::now();
        let batch = pipeline.next_batch()?.ok_or(TrainError::PipelineGone)?;
        if first_batch {
            let n = batch.size.min(16);
            let imgs: Vec<Vec<u8>> = (0..n).map(|i| batch.image_u8(i)).collect();
            let (px, w, h) = image_grid(&imgs, batch.image_size);
            train_events.add_png_gray("inputs", &px, w, h, step as i64)?;
            first_batch = false;
        }
        let b = batch.size;
        // Random state (dropout masks) is a function of (seed, step), so a resumed run draws
        // exactly what an uninterrupted one would.
        device.seed(step_seed(cfg.seed, step));
        let input = ModelInput::from_batch(&batch, kind, &device)?;
        let targets =
            Tensor::<1, Int>::from_data(TensorData::new(batch.labels.clone(), [b]), &device);
        let logits = model.forward(input);
        let loss = loss_fn.forward(logits.clone(), targets);
        let grads = model.is_trainable().then(|| loss.backward());
        let loss_v: f32 = loss.into_scalar();
        if !loss_v.is_finite() {
            return Err(TrainError::NonFinite {
                step: step + 1,
                what: format!("the training loss became {loss_v}"),
                last_good: last_checkpoint(&dir),
            });
        }
        if let Some(grads) = grads {
            let grads = GradientsParams::from_grads(grads, &model);
            model = optimizer.step(lr, model, grads);
        }
        let host = to_host(logits.detach());
        let c = cfg.classes.len();
        for (row, &l) in host.chunks_exact(c).zip(&batch.labels) {
            let r = rank_of(row, l as usize);
            w_correct += (r == 0) as u64;
            w_top3 += (r < 3) as u64;
        }
        summary.step_seconds += step_start.elapsed().as_secs_f64();
        step += 1;
        position = batch.position;
        w_loss += loss_v as f64 * b as f64;
        w_n += b as u64;
        summary.steps_run += 1;
        summary.examples_seen += b as u64;

        let elapsed = t0.elapsed().as_secs_f64().max(1e-9);
        let wait_share = pipeline.wait().as_secs_f64() / elapsed;
        let stats = StepStats {
            step,
            total_steps: req.train_steps,
            loss: w_loss / w_n.max(1) as f64,
            accuracy: w_correct as f64 / w_n.max(1) as f64,
            steps_per_sec: summary.steps_run as f64 / elapsed,
            examples_per_sec: (summary.examples_seen - start_step * bs) as f64 / elapsed,
            data_wait_share: wait_share,
            epoch: summary.examples_seen as f64 / epoch_size as f64,
        };
        obs.step(&stats);
        if step.is_multiple_of(log_every) || step == req.train_steps {
            let window = window_start.elapsed().as_secs_f64().max(1e-9);
            train_events.add_scalars(
                &[
                    ("loss", stats.loss as f32),
                    ("accuracy", stats.accuracy as f32),
                    ("top3_accuracy", (w_top3 as f64 / w_n.max(1) as f64) as f32),
                    ("learning_rate", lr as f32),
                    ("examples_per_sec", (w_n as f64 / window) as f32),
                    ("data_wait_share", wait_share as f32),
                    ("epoch", stats.epoch as f32),
                ],
                step as i64,
            )?;
            summary.train_loss = Some(stats.loss);
            summary.train_accuracy = Some(stats.accuracy);
            (w_loss, w_correct, w_top3, w_n) = (0.0, 0, 0, 0);
            window_start = Instant::now();
        }

        let interrupted = stop.load(Ordering::SeqCst);
        let at_end = step == req.train_steps;
        let eval_due = eval_src.is_some()
            && (at_end
                || req
                    .eval_every
                    .is_some_and(|e| e > 0 && step.is_multiple_of(e)));
        let mut eval_acc = None;
        if eval_due
            && !interrupted
            && let Some(report) = evaluate_now(&model, step, &mut *obs)?
        {
            let line = serde_json::json!({
                "step": step,
                "wall_time": now_secs(),
                "epoch": stats.epoch,
                "examples": report.examples,
                "loss": report.loss,
                "accuracy": report.accuracy,
                "top3_accuracy": report.top3_accuracy,
                "map3": report.map3,
                "macro_f1": report.macro_f1,
                "train_loss": summary.train_loss,
                "train_accuracy": summary.train_accuracy,
            });
            modeldir::append_metrics(&dir, &line)?;
            eval_acc = Some((report.accuracy, report.loss));
            last_eval = Some((step, report));
        }
        if eval_acc.is_some() || at_end || interrupted || step.is_multiple_of(checkpoint_every) {
            let bad = crate::export::non_finite_params(&model);
            if !bad.is_empty() {
                return Err(TrainError::NonFinite {
                    step,
                    what: format!("weights became NaN or infinite ({})", bad.join(", ")),
                    last_good: last_checkpoint(&dir),
                });
            }
            let state = CheckpointState {
                step,
                position,
                examples_seen: summary.examples_seen,
                epoch_size,
                eval_accuracy: eval_acc.map(|a| a.0),
                eval_loss: eval_acc.map(|a| a.1),
                wall_time: now_secs(),
                sha256: Default::default(),
            };
            let ck =
                modeldir::write_checkpoint(&dir, &model, &optimizer, state, req.keep_checkpoints)?;
            write_histograms(&model, &mut train_events, step)?;
            obs.checkpoint(step, &ck.dir);
            summary.checkpoint = Some(ck.dir);
        }
        if interrupted {
            summary.interrupted = true;
            break;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    summary.final_step = step;
    summary.seconds = secs;
    summary.steps_per_sec = summary.steps_run as f64 / secs.max(1e-9);
    summary.examples_per_sec = (summary.examples_seen - start_step * bs) as f64 / secs.max(1e-9);
    summary.step_examples_per_sec =
        (summary.examples_seen - start_step * bs) as f64 / summary.step_seconds.max(1e-9);
    summary.data_wait_seconds = pipeline.wait().as_secs_f64();
    summary.data_wait_share = summary.data_wait_seconds / secs.max(1e-9);
    summary.epochs = summary.examples_seen as f64 / epoch_size as f64;
    summary.eval = last_eval.map(|(s, r)| EvalSummary::new(s, &r));
    train_events.flush()?;
    Ok(summary)
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
    if matches!(req.device, DeviceChoice::Cpu)
        && let Some(avail) = crate::memory::available_memory()
    {
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
    let mut model = config.init(&device)?;
    let mut optimizer = OptimizerKind::Adam.init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let s = config.image_size;
    let mut run = |n: u64, model: Model| -> Model {
        let mut model = model;
        for i in 0..n {
            let input = if config.kind.uses_strokes() {
                let t = 64;
                ModelInput::Strokes {
                    forward: Tensor::random(
                        [batch_size, t, 3],
                        burn::tensor::Distribution::Default,
                        &device,
                    ),
                    backward: Tensor::random(
                        [batch_size, t, 3],
                        burn::tensor::Distribution::Default,
                        &device,
                    ),
                    mask: Tensor::ones([batch_size, t], &device),
                }
            } else {
                ModelInput::Images(Tensor::random(
                    [batch_size, 1, s, s],
                    burn::tensor::Distribution::Default,
                    &device,
                ))
            };
            let labels: Vec<i64> = (0..batch_size)
                .map(|j| ((i as usize + j) % config.n_classes) as i64)
                .collect();
            let targets =
                Tensor::<1, Int>::from_data(TensorData::new(labels, [batch_size]), &device);
            let loss = loss_fn.forward(model.forward(input), targets);
            if model.is_trainable() {
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                model = optimizer.step(1e-3, model, grads);
            }
            let _: f32 = loss.into_scalar();
        }
        model
    };
    model = run(warmup, model);
    let t = Instant::now();
    let model = run(steps, model);
    let secs = t.elapsed().as_secs_f64();
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
