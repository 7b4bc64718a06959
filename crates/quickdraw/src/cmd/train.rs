//! `quickdraw train`: trains a model on TFRecord shards into a model dir (resumable; see
//! `quickdraw_train::modeldir` for the layout).

use std::path::{Path, PathBuf};

use anyhow::Context;
use indicatif::ProgressBar;
use quickdraw_train::metrics::MetricsReport;
use quickdraw_train::model::{ModelKind, parse_conv, parse_widths};
use quickdraw_train::pipeline::{DEFAULT_PREFETCH, DEFAULT_SHUFFLE_BUFFER, file_list};
use quickdraw_train::preset::{Preset, PresetValues};
use quickdraw_train::train::StepStats;
use quickdraw_train::{
    Augment, EarlyStopping, LrSchedule, Monitored, OptimizerKind, ScheduleKind, TrainObserver,
    TrainRequest, TrainSummary,
};

use super::Ctx;
use crate::progress;

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Model: baseline, linear, dnn, cnn, rnn (needs shards converted with --strokes) or
    /// wide_deep (the CNN plus a linear part over countrycode, recognized, stroke count and
    /// drawing duration).
    #[arg(long, default_value = "cnn")]
    pub model: ModelKind,
    /// Model directory (config, checkpoints, TensorBoard events); re-running resumes.
    #[arg(long, alias = "job-dir")]
    pub model_dir: PathBuf,
    /// Training shards: files, globs ('data/zoo/train-*') or a dataset directory (its train
    /// shards, from manifest.json); several values, or the flag repeated, are one set.
    #[arg(long, num_args = 1.., required = true, value_name = "FILES")]
    pub train_files: Vec<String>,
    /// Evaluation shards, given as for --train-files (a directory: its eval shards); evaluated
    /// every --eval-every steps and at the end.
    #[arg(long, num_args = 1.., value_name = "FILES")]
    pub eval_files: Vec<String>,
    /// Train until this global step.
    #[arg(long, default_value_t = 1000)]
    pub train_steps: u64,
    /// Train for N epochs instead (an epoch: ceil(train examples / batch size) steps); also
    /// evaluates at the end of every epoch unless --eval-every says otherwise.
    #[arg(long, value_name = "N", conflicts_with = "train_steps")]
    pub epochs: Option<u64>,
    /// Examples per training step.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Number of classes; defaults to the length of labels.txt and must match it.
    #[arg(long)]
    pub n_classes: Option<usize>,
    /// Batches per evaluation (default: the whole eval set).
    #[arg(long)]
    pub eval_steps: Option<u64>,
    /// Default: 0.001 for adam, adamw, rmsprop; 0.01 for sgd, momentum, adagrad.
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// adam, adamw, sgd, momentum (SGD + 0.9 momentum), rmsprop or adagrad [default: adam].
    #[arg(long)]
    pub optimizer: Option<OptimizerKind>,
    /// A recommended recipe for --model cnn: quickdraw28 (28x28 bitmaps) or quickdraw64 (64x64
    /// rasters); it sets --conv, --dense, --dropout, --optimizer, --learning-rate,
    /// --lr-schedule, --warmup-steps, --label-smoothing and --augment, and any of them given on
    /// the command line wins (docs/benchmarks.md, "A better recipe").
    #[arg(long, value_name = "PRESET")]
    pub preset: Option<Preset>,
    /// Evaluate every N steps (default: only at the end, or every epoch with --epochs).
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Learning-rate schedule: constant, exponential (rate^(t/decay-steps)), cosine (to
    /// --lr-min-ratio over --lr-decay-steps, default the whole run), step (x rate every
    /// --lr-decay-steps) or plateau (x rate after --lr-patience evaluations without improvement).
    /// [default: constant]
    #[arg(long, value_name = "SCHEDULE")]
    pub lr_schedule: Option<ScheduleKind>,
    /// Steps of linear warm-up from 0 to --learning-rate before the schedule starts [default: 0].
    #[arg(long, value_name = "N")]
    pub warmup_steps: Option<u64>,
    /// The schedule's decay period (exponential, step) or length (cosine).
    #[arg(long, value_name = "N")]
    pub lr_decay_steps: Option<u64>,
    /// The schedule's factor (default: exponential 0.96, step 0.1, plateau 0.5).
    #[arg(long, value_name = "RATE")]
    pub lr_decay_rate: Option<f64>,
    /// Cosine's final rate as a share of --learning-rate (Keras's alpha).
    #[arg(long, default_value_t = 0.0, value_name = "SHARE")]
    pub lr_min_ratio: f64,
    /// Plateau: evaluations without improvement of the monitored metric before a cut.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub lr_patience: u32,
    /// Weight decay: AdamW's decoupled decay (default 1e-4), an L2 penalty for the others.
    #[arg(long, value_name = "W")]
    pub weight_decay: Option<f64>,
    /// Label smoothing of the training loss, in [0, 1) (evaluation reports the plain loss).
    #[arg(long, value_name = "ALPHA")]
    pub label_smoothing: Option<f64>,
    /// Per-class loss weights: `balanced` (n / (classes x n_class)) or a JSON file
    /// {"class": weight, ...} (classes not named weigh 1).
    #[arg(long, value_name = "balanced|FILE")]
    pub class_weight: Option<String>,
    /// Stop when --early-stopping-metric has not improved for N evaluations, and restore the
    /// best evaluation's weights as the final checkpoint (needs --eval-files and --eval-every
    /// or --epochs).
    #[arg(long, value_name = "N")]
    pub early_stopping_patience: Option<u32>,
    /// Random affine transforms of the training images (rotation, scale, shear, shift; strong
    /// adds horizontal flips), drawn from --seed and each example's place in the stream
    /// [default: none].
    #[arg(long, value_name = "none|light|strong")]
    pub augment: Option<Augment>,
    /// Precision of the forward and backward passes: f32, bf16 or f16 (mixed precision: the
    /// weights, optimiser state and checkpoints stay float32; no loss scaling, so prefer bf16).
    /// For GPUs: on the CPU the lower precisions are slower.
    #[arg(long, default_value = "f32", value_name = "f32|bf16|f16")]
    pub precision: quickdraw_train::Precision,
    /// The metric early stopping and the plateau schedule watch: val_loss or val_accuracy.
    #[arg(long, default_value = "val_loss", value_name = "METRIC")]
    pub early_stopping_metric: Monitored,
    /// Write a checkpoint every N steps (also after each evaluation, at the end and on Ctrl-C).
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: u64,
    /// Checkpoints kept (the latest K, plus the best by eval accuracy).
    #[arg(long, default_value_t = 5)]
    pub keep_checkpoints: usize,
    /// Seed of the weight initialisation and of the data order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Discard a previous run in --model-dir (only the files training writes are removed).
    #[arg(long)]
    pub overwrite: bool,
    /// Initialise the weights from another model dir's latest checkpoint (same architecture).
    #[arg(long, value_name = "DIR")]
    pub warm_start_from: Option<PathBuf>,
    /// Where to train: cpu (burn's flex backend), cubecl (burn's CubeCL CPU runtime: the GPU
    /// code path on the CPU; a build with --features cubecl), or cuda[:N] (a build with
    /// --features cuda and an NVIDIA driver). Several, comma separated (`cuda:0,cuda:1`), train
    /// data-parallel: each batch is split by rows over the devices and the gradients are summed
    /// on the first, which holds the model, its optimiser state and the evaluation.
    #[arg(
        long = "device",
        value_name = "DEVICE[,DEVICE...]",
        default_value = "cpu"
    )]
    pub devices: quickdraw_train::DeviceList,
    /// DNN hidden layer widths: `1000` or a comma list `512,256`.
    #[arg(long)]
    pub hidden: Option<String>,
    /// CNN blocks as kernel:pool:filters, comma separated (default the lecture's 10:4:32,5:4:64).
    #[arg(long)]
    pub conv: Option<String>,
    /// CNN dense layer width (default 256).
    #[arg(long)]
    pub dense: Option<usize>,
    /// Dropout rate before the output layer (default 0.4 for cnn, 0 for dnn).
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Batch normalization after each CNN block's pooling (cnn, wide_deep): batch statistics in
    /// training, running averages in evaluation and in the export (ONNX BatchNormalization).
    /// `--batch-norm false` turns off a preset's.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub batch_norm: Option<bool>,
    /// LSTM units per direction for rnn (default 256).
    #[arg(long)]
    pub rnn_units: Option<usize>,
    /// Records in the example-level shuffle buffer.
    #[arg(long, default_value_t = DEFAULT_SHUFFLE_BUFFER)]
    pub shuffle_buffer: usize,
    /// Decoded batches queued ahead of the model.
    #[arg(long, default_value_t = DEFAULT_PREFETCH)]
    pub prefetch: usize,
    /// Write training scalars to TensorBoard every N steps.
    #[arg(long, default_value_t = 10)]
    pub log_every: u64,
    /// Print the run summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

struct BarObserver {
    pb: ProgressBar,
    quiet: bool,
    /// --epochs, and the steps of one epoch: the progress speaks in epochs, as Keras's.
    epochs: Option<(u64, u64)>,
    /// The training window's loss and accuracy at the last step (for the epoch line).
    last: Option<(f64, f64)>,
}

impl TrainObserver for BarObserver {
    fn notice(&mut self, msg: &str) {
        self.pb.suspend(|| eprintln!("{msg}"));
    }
    fn start(&mut self, start_step: u64, total_steps: u64) {
        self.pb.set_length(total_steps);
        self.pb.set_position(start_step);
        self.pb.reset_eta();
        self.pb.set_message("training");
    }
    fn step(&mut self, s: &StepStats) {
        self.pb.set_position(s.step);
        self.last = Some((s.loss, s.accuracy));
        self.epochs = s.epochs.map(|n| (n, s.steps_per_epoch));
        let mut m = String::new();
        if let Some((n, per)) = self.epochs {
            let e = (s.step.saturating_sub(1) / per + 1).min(n);
            m.push_str(&format!("epoch {e}/{n} - "));
        }
        m.push_str(&format!("loss {:.4} - accuracy {:.3}", s.loss, s.accuracy));
        if let (Some(l), Some(a)) = (s.val_loss, s.val_accuracy) {
            m.push_str(&format!(" - val_loss {l:.4} - val_accuracy {a:.3}"));
        }
        m.push_str(&format!(
            " - lr {:.2e} | {:.1} steps/s, data wait {:.0}%",
            s.learning_rate,
            s.steps_per_sec,
            100.0 * s.data_wait_share
        ));
        self.pb.set_message(m);
    }
    fn eval_start(&mut self, step: u64) {
        self.pb.set_message(format!("evaluating at step {step}"));
    }
    fn evaluated(&mut self, step: u64, r: &MetricsReport) {
        if self.quiet {
            return;
        }
        if let Some((n, per)) = self.epochs
            && step.is_multiple_of(per)
        {
            let (loss, acc) = self.last.unwrap_or((f64::NAN, f64::NAN));
            self.pb.suspend(|| {
                eprintln!(
                    "epoch {}/{n} (step {step}): loss {loss:.4} - accuracy {acc:.4} - val_loss {:.4} - val_accuracy {:.4} - val_top3 {:.4}",
                    step / per,
                    r.loss,
                    r.accuracy,
                    r.top3_accuracy
                )
            });
        } else {
            self.pb.suspend(|| {
                eprintln!(
                    "step {step}: eval loss {:.4}  accuracy {:.4}  top3 {:.4}  map@3 {:.4}  ({} examples)",
                    r.loss, r.accuracy, r.top3_accuracy, r.map3, r.examples
                )
            });
        }
    }
}

fn summary_table(s: &TrainSummary) -> String {
    let mut t = String::new();
    let mut row = |k: &str, v: String| t.push_str(&format!("  {k:<12} {v}\n"));
    row(
        "model",
        format!("{} ({} parameters)", s.model, s.parameters),
    );
    row("model dir", s.model_dir.display().to_string());
    row(
        "steps",
        format!(
            "{} -> {} ({} run{}; {:.2} epochs seen)",
            s.start_step,
            s.final_step,
            s.steps_run,
            if s.resumed_from.is_some() {
                ", resumed"
            } else {
                ""
            },
            s.epochs
        ),
    );
    row(
        "time",
        format!(
            "{:.1} s ({:.2} steps/s, {:.0} examples/s)",
            s.seconds, s.steps_per_sec, s.examples_per_sec
        ),
    );
    row(
        "data wait",
        format!(
            "{:.2} s ({:.1}% of the time)",
            s.data_wait_seconds,
            100.0 * s.data_wait_share
        ),
    );
    if let (Some(l), Some(a)) = (s.train_loss, s.train_accuracy) {
        row(
            "train",
            format!("loss {l:.4}  accuracy {a:.4} (last logging window)"),
        );
    }
    if let Some(e) = &s.eval {
        row(
            &format!("eval @{}", e.step),
            format!(
                "loss {:.4}  accuracy {:.4}  top3 {:.4}  map@3 {:.4} ({} examples)",
                e.loss, e.accuracy, e.top3_accuracy, e.map3, e.examples
            ),
        );
    }
    if let Some(c) = &s.checkpoint {
        row("checkpoint", c.display().to_string());
    }
    if let Some(e) = &s.stopped_early {
        row(
            "stopped",
            format!(
                "early at step {}: best {} {:.4} at step {}, whose weights the last checkpoint holds",
                e.step, e.metric, e.best, e.best_step
            ),
        );
    }
    if s.interrupted {
        row(
            "status",
            "interrupted (resume by running the same command again)".into(),
        );
    }
    t
}

fn parse_list(
    flag: &str,
    v: &Option<String>,
    f: fn(&str) -> Result<Vec<usize>, String>,
) -> anyhow::Result<Option<Vec<usize>>> {
    v.as_deref()
        .map(|s| f(s).map_err(|e| anyhow::anyhow!("--{flag}: {e}")))
        .transpose()
}

pub fn run(a: TrainArgs, ctx: Ctx) -> anyhow::Result<()> {
    let stop = quickdraw_train::install_interrupt_handler()?;
    let train_files = file_list(&a.train_files, "train")?;
    let mut req = TrainRequest::new(a.model, a.model_dir.clone(), train_files);
    req.hidden = parse_list("hidden", &a.hidden, parse_widths)?;
    req.conv = a
        .conv
        .as_deref()
        .map(|s| parse_conv(s).map_err(|e| anyhow::anyhow!("--conv: {e}")))
        .transpose()?;
    let preset = a.preset.map(|p| p.values());
    if let Some(p) = a.preset {
        anyhow::ensure!(
            a.model.has_cnn(),
            "--preset {p} is a recipe for --model cnn (or wide_deep's CNN), not --model {}",
            a.model
        );
    }
    req.dense = a.dense;
    req.dropout = a.dropout;
    req.batch_norm = a
        .batch_norm
        .or(preset.as_ref().map(|p| p.batch_norm))
        .unwrap_or(false);
    if let Some(p) = &preset {
        req.conv = req.conv.take().or_else(|| Some(p.conv.clone()));
        req.dense = req.dense.or(Some(p.dense));
        req.dropout = req.dropout.or(Some(p.dropout));
        if !ctx.quiet {
            eprintln!(
                "preset {} (meant for {}x{} inputs): {}; flags on the command line win",
                a.preset.expect("preset"),
                p.image_size,
                p.image_size,
                describe(p)
            );
        }
    }
    req.rnn_units = a.rnn_units;
    req.n_classes = a.n_classes;
    req.optimizer = a
        .optimizer
        .or(preset.as_ref().map(|p| p.optimizer))
        .unwrap_or(OptimizerKind::Adam);
    req.learning_rate = a.learning_rate.or(preset.as_ref().map(|p| p.learning_rate));
    req.batch_size = a.batch_size;
    req.seed = a.seed;
    req.shuffle_buffer = a.shuffle_buffer;
    req.eval_files = match a.eval_files.as_slice() {
        [] => None,
        v => Some(file_list(v, "eval")?),
    };
    req.train_steps = a.train_steps;
    req.epochs = a.epochs;
    let kind = a
        .lr_schedule
        .or(preset.as_ref().map(|p| p.lr_schedule))
        .unwrap_or_default();
    req.lr_schedule = LrSchedule {
        kind,
        warmup_steps: a
            .warmup_steps
            .or(preset.as_ref().map(|p| p.warmup_steps))
            .unwrap_or(0),
        decay_steps: a.lr_decay_steps,
        rate: a.lr_decay_rate.unwrap_or_else(|| kind.default_rate()),
        min_ratio: a.lr_min_ratio,
        patience: a.lr_patience,
        // Recorded only where it matters, so other configs stay as they were.
        monitor: match kind {
            ScheduleKind::Plateau => a.early_stopping_metric,
            _ => Monitored::ValLoss,
        },
    };
    req.weight_decay = a.weight_decay;
    req.label_smoothing = a
        .label_smoothing
        .or(preset.as_ref().map(|p| p.label_smoothing));
    req.class_weight = a.class_weight.clone();
    req.early_stopping = a.early_stopping_patience.map(|patience| EarlyStopping {
        patience,
        metric: a.early_stopping_metric,
    });
    req.augment = a
        .augment
        .or(preset.as_ref().map(|p| p.augment))
        .unwrap_or_default();
    req.eval_steps = a.eval_steps;
    req.eval_every = a.eval_every;
    req.checkpoint_every = a.checkpoint_every;
    req.keep_checkpoints = a.keep_checkpoints;
    req.overwrite = a.overwrite;
    req.warm_start_from = a.warm_start_from.clone();
    req.precision = a.precision;
    req.device = a.devices.first();
    req.parallel_devices = a.devices.rest().to_vec();
    req.prefetch = a.prefetch;
    req.log_every = a.log_every;
    req.stop = Some(stop);

    let pb = progress::bar(ctx.quiet, Some(a.train_steps), "steps");
    let mut obs = BarObserver {
        pb: pb.clone(),
        quiet: ctx.quiet,
        epochs: None,
        last: None,
    };

    let summary = quickdraw_train::train(&req, &mut obs)
        .with_context(|| format!("training into {}", display(&a.model_dir)))?;
    pb.finish_and_clear();
    if !ctx.quiet {
        eprintln!("{}", summary_table(&summary));
    }
    if a.json {
        let mut v = serde_json::to_value(&summary)?;
        v["peak_rss_bytes"] = serde_json::json!(super::bench::peak_rss_bytes());
        println!("{v}");
    }
    if summary.interrupted {
        eprintln!(
            "stopped at step {} with a checkpoint; run the same command to resume",
            summary.final_step
        );
        std::process::exit(130);
    }
    Ok(())
}

/// A preset as the flags it stands for.
fn describe(p: &PresetValues) -> String {
    let conv: Vec<String> = p
        .conv
        .iter()
        .map(|c| format!("{}:{}:{}", c.kernel, c.pool, c.filters))
        .collect();
    format!(
        "--conv {}{} --dense {} --dropout {} --optimizer {} --learning-rate {} --lr-schedule {} --warmup-steps {} --label-smoothing {} --augment {}",
        conv.join(","),
        if p.batch_norm { " --batch-norm" } else { "" },
        p.dense,
        p.dropout,
        p.optimizer,
        p.learning_rate,
        p.lr_schedule,
        p.warmup_steps,
        p.label_smoothing,
        p.augment
    )
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
