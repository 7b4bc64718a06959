//! One module per subcommand; each exposes its clap `Args` and a `run` function.

pub mod bench;
pub mod bench_serve;
#[cfg(feature = "train")]
pub mod compare;
pub mod completions;
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
use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{Cli, Command};

/// `--device` of every command that runs burn (train, evaluate, compare, export, predict): the
/// one definition of the flag and its default.
#[cfg(feature = "train")]
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct DeviceArg {
    /// Where to run the model: cpu (burn's flex backend), cubecl (burn's CubeCL CPU runtime:
    /// the GPU code path on the CPU; a build with --features cubecl), or cuda[:N] (a build with
    /// --features cuda and an NVIDIA driver).
    #[arg(long = "device", value_name = "DEVICE", default_value = "cpu")]
    pub choice: quickdraw_train::DeviceChoice,
}

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
/// A directory argument given as an object-store URL is read through a local copy: downloaded
/// now, it replaces the URL in `dir`; the returned mirror keeps it until the command ends.
pub fn local_copy(dir: &mut PathBuf) -> anyhow::Result<Option<quickdraw_data::storage::Mirror>> {
    if !quickdraw_data::storage::is_url(dir) {
        return Ok(None);
    }
    let m = quickdraw_data::storage::Mirror::open(dir, &[])
        .with_context(|| format!("reading {}", dir.display()))?;
    anyhow::ensure!(
        quickdraw_data::storage::list(m.local()).is_ok_and(|l| !l.is_empty()),
        "{}: no such directory (no object under this prefix)",
        dir.display()
    );
    *dir = m.local().to_path_buf();
    Ok(Some(m))
}

pub fn expand_globs(inputs: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for i in inputs {
        let p = PathBuf::from(i);
        if p.exists() || !i.contains(['*', '?', '[']) {
            out.push(p);
            continue;
        }
        // Local files and object-store URLs alike.
        let matched =
            quickdraw_data::storage::glob(i).with_context(|| format!("bad glob pattern {i:?}"))?;
        anyhow::ensure!(!matched.is_empty(), "no file matches {i:?}");
        out.extend(matched);
    }
    Ok(out)
}

/// A command line as a POSIX shell reads it back: words with anything but letters, digits and
/// `_-+=./:,@%` are single-quoted, so printed globs (`'data/train-*'`) reach the program
/// unexpanded when pasted.
pub fn shell_line<S: AsRef<str>>(words: &[S]) -> String {
    let quote = |w: &str| -> String {
        let plain = !w.is_empty()
            && w.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-+=./:,@%".contains(c));
        if plain {
            w.to_string()
        } else {
            format!("'{}'", w.replace('\'', r"'\''"))
        }
    };
    words
        .iter()
        .map(|w| quote(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
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

/// Runs the parsed command line; on failure prints `error: ` and the causes, each once.
pub fn main(cli: Cli) -> ExitCode {
    // SAFETY: called from `main` before any thread is started.
    #[cfg(feature = "train")]
    unsafe {
        quickdraw_train::device::pin_default_device()
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line (`context: error: cause`), each cause once: a cause
/// whose text is already part of the line is skipped, since library errors often carry their
/// source in their own message too (`"{path}: {source}"`).
pub fn error_chain(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let msg = cause.to_string();
        // A message that already ends with its cause's text (thiserror's "..: {source}").
        if msg.is_empty() || line.ends_with(&msg) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&msg);
    }
    line
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
        Command::Completions(a) => completions::run(a, ctx),
    }
}

#[cfg(test)]
mod tests {
    use super::{error_chain, shell_line};

    #[test]
    fn printed_command_lines_quote_globs_and_spaces() {
        assert_eq!(
            shell_line(&[
                "train",
                "--train-files",
                "data/train-*",
                "--model-dir",
                "my models/a"
            ]),
            "train --train-files 'data/train-*' --model-dir 'my models/a'"
        );
        assert_eq!(shell_line(&["it's", ""]), r"'it'\''s' ''");
    }

    /// `"{path}: {source}"` that also returns `source` from `source()`, as thiserror makes it.
    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "data/x.json: {}", self.0)
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn each_cause_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = anyhow::Error::new(Wrapped(io)).context("reading the manifest");
        assert_eq!(
            error_chain(&err),
            "reading the manifest: data/x.json: no such file"
        );
        let plain = anyhow::Error::new(std::io::Error::other("disk full")).context("writing");
        assert_eq!(error_chain(&plain), "writing: disk full");
    }
}
