//! Command-line interface: the subcommands and their flags (clap derive).

use clap::{Parser, Subcommand};

use crate::cmd;

#[derive(Debug, Parser)]
#[command(name = "quickdraw", version, about = "Quick, Draw! end to end: convert, train, evaluate, export and serve a sketch classifier")]
pub struct Cli {
    /// No progress bars or summaries on stderr (for scripts).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Convert QuickDraw files (NDJSON, binary, numpy_bitmap, .gz) into TFRecord shards.
    Convert(cmd::convert::ConvertArgs),
    /// Simplify raw drawings with Google's algorithm; writes simplified NDJSON.
    Simplify(cmd::simplify::SimplifyArgs),
    /// Print records of any supported input or TFRecord shard; --png renders a grid.
    Inspect(cmd::inspect::InspectArgs),
    /// Per-class statistics of input files, or a check of a shard directory.
    Stats(cmd::stats::StatsArgs),
    /// Generate deterministic QuickDraw-format NDJSON of procedural doodles.
    Synth(cmd::synth::SynthArgs),
    /// Download QuickDraw files (network), resuming and verifying each.
    Download(cmd::download::DownloadArgs),
    // -- training stage (feature `train`) --
    /// Train a model (baseline, linear, dnn, cnn, rnn) on TFRecord shards; re-running resumes.
    #[cfg(feature = "train")]
    Train(cmd::train::TrainArgs),
    /// Evaluate a trained model: loss, accuracy, top-3, MAP@3, per-class P/R/F1, confusion matrix.
    #[cfg(feature = "train")]
    Evaluate(cmd::evaluate::EvaluateArgs),
    /// Compare two trained models on the same eval shards (deltas and flipped examples).
    #[cfg(feature = "train")]
    Compare(cmd::compare::CompareArgs),
    /// Top-k predictions of a trained model for drawings (TFRecord or any QuickDraw format).
    #[cfg(feature = "train")]
    Predict(cmd::predict::PredictArgs),
    /// Export a model dir's TensorBoard scalars (--csv) or summarise its evaluations.
    #[cfg(feature = "train")]
    Metrics(cmd::metrics::MetricsArgs),
}
