//! One module per subcommand; each exposes its clap `Args` and a `run` function.

pub mod bench;
#[cfg(feature = "train")]
pub mod compare;
pub mod convert;
#[cfg(feature = "train")]
pub mod demo;
pub mod download;
#[cfg(feature = "train")]
pub mod evaluate;
#[cfg(feature = "train")]
pub mod export;
pub mod inspect;
#[cfg(feature = "train")]
pub mod metrics;
pub mod model;
#[cfg(feature = "train")]
pub mod predict;
pub mod serve;
pub mod simplify;
pub mod skew;
pub mod stats;
pub mod synth;
#[cfg(feature = "train")]
pub mod train;

use std::path::PathBuf;

use anyhow::Context;

use crate::cli::{Cli, Command};

/// Which engine runs an export's `model.onnx` (`serve`, `model run`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RuntimeArgs {
    /// Engine for model.onnx: `tract` (built in, pure Rust), `onnxruntime` (ONNX Runtime, about
    /// twice as fast on the CNN, loaded from --onnxruntime-lib or $ORT_DYLIB_PATH), or `auto`
    /// (onnxruntime when a library is given, else tract).
    #[arg(long, value_enum, default_value_t = RuntimeChoice::Auto)]
    pub runtime: RuntimeChoice,
    /// ONNX Runtime shared library (libonnxruntime.so from an ONNX Runtime release, or
    /// onnxruntime/capi/ of the `onnxruntime` wheel); default: $ORT_DYLIB_PATH.
    #[arg(long, value_name = "FILE")]
    pub onnxruntime_lib: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RuntimeChoice {
    #[default]
    Auto,
    Tract,
    Onnxruntime,
}

impl RuntimeArgs {
    pub fn resolve(&self) -> anyhow::Result<quickdraw_serve::Runtime> {
        use quickdraw_serve::Runtime;
        let lib = self
            .onnxruntime_lib
            .clone()
            .or_else(|| match Runtime::from_env() {
                Runtime::OnnxRuntime(p) => Some(p),
                Runtime::Tract => None,
            });
        let lib = match (self.runtime, lib) {
            (RuntimeChoice::Tract, _) | (RuntimeChoice::Auto, None) => return Ok(Runtime::Tract),
            (RuntimeChoice::Onnxruntime, None) => anyhow::bail!(
                "--runtime onnxruntime needs the ONNX Runtime library: pass --onnxruntime-lib \
                 /path/to/libonnxruntime.so or set ORT_DYLIB_PATH (it ships in ONNX Runtime's \
                 release archives and in the `onnxruntime` wheel's onnxruntime/capi/ folder)"
            ),
            (_, Some(lib)) => lib,
        };
        anyhow::ensure!(
            lib.is_file(),
            "ONNX Runtime library {} not found (from --onnxruntime-lib or ORT_DYLIB_PATH)",
            lib.display()
        );
        Ok(Runtime::OnnxRuntime(lib))
    }
}

/// Expands quoted glob patterns (`'data/*.ndjson'`); plain paths are kept as they are.
pub fn expand_globs(inputs: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for i in inputs {
        let p = PathBuf::from(i);
        if p.exists() || !i.contains(['*', '?', '[']) {
            out.push(p);
            continue;
        }
        let mut matched: Vec<PathBuf> = glob::glob(i)
            .with_context(|| format!("bad glob pattern {i:?}"))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading matches of {i:?}"))?;
        anyhow::ensure!(!matched.is_empty(), "no file matches {i:?}");
        matched.sort();
        out.extend(matched);
    }
    Ok(out)
}

/// The text table of `predict` and `model run`: its header, for the top `k` classes.
pub fn prediction_header(k: usize) -> String {
    format!(
        "{:<24} {:>6} {:>18} {:<12} top {k}",
        "input", "index", "key_id", "label"
    )
}

/// One row of that table: input file name, record index, key_id, the record's own label (`-`
/// when it has none), then the top classes with their probabilities.
pub fn prediction_row<'a>(
    name: &str,
    index: u64,
    key_id: u64,
    label: Option<&str>,
    top: impl IntoIterator<Item = (&'a str, f32)>,
) -> String {
    let tops: Vec<String> = top
        .into_iter()
        .map(|(c, p)| format!("{c} {p:.3}"))
        .collect();
    format!(
        "{name:<24} {index:>6} {key_id:>18} {:<12} {}",
        label.unwrap_or("-"),
        tops.join(", ")
    )
}

/// Global options every command sees.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    pub quiet: bool,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = Ctx { quiet: cli.quiet };
    match cli.command {
        #[cfg(feature = "train")]
        Command::Demo(a) => demo::run(a, ctx),
        Command::Convert(a) => convert::run(a, ctx),
        Command::Bench(a) => bench::run(a, ctx),
        Command::Simplify(a) => simplify::run(a, ctx),
        Command::Inspect(a) => inspect::run(a, ctx),
        Command::Stats(a) => stats::run(a, ctx),
        Command::Synth(a) => synth::run(a, ctx),
        Command::Download(a) => download::run(a, ctx),
        Command::Model(a) => model::run(a, ctx),
        Command::Serve(a) => serve::run(a, ctx),
        Command::Skew(a) => skew::run(a, ctx),
        #[cfg(feature = "train")]
        Command::Train(a) => train::run(a, ctx),
        #[cfg(feature = "train")]
        Command::Evaluate(a) => evaluate::run(a, ctx),
        #[cfg(feature = "train")]
        Command::Compare(a) => compare::run(a, ctx),
        #[cfg(feature = "train")]
        Command::Predict(a) => predict::run(a, ctx),
        #[cfg(feature = "train")]
        Command::Metrics(a) => metrics::run(a, ctx),
        #[cfg(feature = "train")]
        Command::Export(a) => export::run(a, ctx),
    }
}
