//! Command-line interface: the subcommands and their flags (clap derive).

use clap::{Parser, Subcommand};

use crate::cmd;

#[derive(Debug, Parser)]
#[command(
    name = "quickdraw",
    version,
    about = "Quick, Draw! end to end: convert, train, evaluate, export and serve a sketch classifier"
)]
pub struct Cli {
    /// No progress bars or summaries on stderr (for scripts).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands, in pipeline order (clap lists them as declared): get data, convert it, look
/// at it, train, evaluate, export, serve, then the tools around them.
#[derive(Debug, Subcommand)]
pub enum Command {
    // -- data stage --
    /// Download QuickDraw files (network), resuming and verifying each.
    Download(cmd::download::DownloadArgs),
    /// Generate deterministic QuickDraw-format NDJSON of procedural doodles.
    Synth(cmd::synth::SynthArgs),
    /// Simplify raw drawings with Google's algorithm; writes simplified NDJSON.
    Simplify(cmd::simplify::SimplifyArgs),
    /// Convert QuickDraw files (NDJSON, binary, numpy_bitmap, .gz) into TFRecord shards.
    Convert(cmd::convert::ConvertArgs),
    /// Print records of any supported input or TFRecord shard; --png renders a grid.
    Inspect(cmd::inspect::InspectArgs),
    /// Per-class statistics of input files, or a check of a shard directory.
    Stats(cmd::stats::StatsArgs),
    // -- training stage (feature `train`) --
    /// Train a model (baseline, linear, dnn, cnn, rnn, wide_deep) on TFRecord shards; re-running
    /// resumes.
    #[cfg(feature = "train")]
    Train(cmd::train::TrainArgs),
    /// Evaluate a trained model: loss, accuracy, top-3, MAP@3, per-class P/R/F1, confusion matrix.
    #[cfg(feature = "train")]
    Evaluate(cmd::evaluate::EvaluateArgs),
    /// Compare two trained models on the same eval shards (deltas and flipped examples).
    #[cfg(feature = "train")]
    Compare(cmd::compare::CompareArgs),
    /// Export a model dir's TensorBoard scalars (--csv) or summarise its evaluations.
    #[cfg(feature = "train")]
    Metrics(cmd::metrics::MetricsArgs),
    /// Export a checkpoint as a new serving version <export-dir>/<version>/ (ONNX, signature,
    /// assets, metrics), refused unless better than the baseline and the newest version.
    #[cfg(feature = "train")]
    Export(cmd::export::ExportArgs),
    // -- serving stage (exported ONNX models; no training stack) --
    /// Show or run an exported model (`export/<version>/`), like saved_model_cli show/run.
    Model(cmd::model::ModelArgs),
    /// Top-k predictions of a trained model for drawings (TFRecord or any QuickDraw format).
    #[cfg(feature = "train")]
    Predict(cmd::predict::PredictArgs),
    /// Serve exported models with TensorFlow Serving's REST API and a drawing page.
    Serve(cmd::serve::ServeArgs),
    /// Training/serving skew: feature drift of a request log against the training data.
    Skew(cmd::skew::SkewArgs),
    // -- around the pipeline --
    /// Reproducible performance measurements (convert throughput and memory, ...).
    Bench(cmd::bench::BenchArgs),
    /// The whole pipeline on built-in synthetic data, no network: synth, convert, train the
    /// baseline and a CNN, evaluate, compare, export, serve the drawing page.
    #[cfg(feature = "train")]
    Demo(cmd::demo::DemoArgs),
    /// Print a shell completion script (`quickdraw completions bash > ~/.local/share/bash-completion/completions/quickdraw`).
    Completions(cmd::completions::CompletionsArgs),
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every flag and positional argument of every subcommand says what it is for.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let builtin = matches!(a.get_id().as_str(), "help" | "version");
                if !builtin && a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {}", a.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "quickdraw", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:#?}");
    }

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
