//! `quickdraw skew`: training/serving skew. Per-drawing statistics (strokes, points, ink share,
//! bounding-box aspect, country; predicted class) of a `serve --log-requests` folder compared
//! with the same statistics of the training inputs listed in the dataset manifest (PSI and KS
//! distance per feature). See `quickdraw_serve::skew` for the method.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use quickdraw_data::manifest::DatasetManifest;
use quickdraw_data::storage;
use quickdraw_serve::skew::{self, SkewReport};

use super::{Ctx, expand_globs};

#[derive(Debug, clap::Args)]
pub struct SkewArgs {
    /// Request log folder written by `serve --log-requests` (or one of its files).
    #[arg(long)]
    pub log: PathBuf,
    /// The dataset manifest (`data/manifest.json`) of the model's training data.
    #[arg(long)]
    pub manifest: PathBuf,
    /// Training drawings read from each input file listed in the manifest.
    #[arg(long, default_value_t = 1000)]
    pub sample: usize,
    /// Read the training drawings from these files (quoted globs work) instead of the manifest's
    /// input list (when the inputs moved).
    #[arg(long)]
    pub train_inputs: Vec<String>,
    /// Quantile bins of the PSI.
    #[arg(long, default_value_t = 10)]
    pub bins: usize,
    /// Exit with an error when a feature's PSI is above this (e.g. 0.25) — for scheduled checks.
    #[arg(long)]
    pub fail_above: Option<f64>,
    /// The report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Input paths of the manifest, as recorded or relative to the manifest's folder.
pub(crate) fn manifest_inputs(
    m: &DatasetManifest,
    manifest_path: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    let base = if storage::is_dir(manifest_path) && !storage::is_file(manifest_path) {
        manifest_path.to_path_buf()
    } else {
        manifest_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for i in &m.inputs {
        let p = PathBuf::from(&i.path);
        // Local files and object-store URLs alike (a relative path joins a URL base too).
        let found = if storage::is_file(&p) {
            Some(p.clone())
        } else if p.is_relative() && !storage::is_url(&p) && storage::is_file(&base.join(&p)) {
            Some(base.join(&p))
        } else {
            None
        };
        match found {
            Some(f) => out.push(f),
            None => anyhow::bail!(
                "training input {} listed in the manifest is not found (as is or relative to {}); pass --train-inputs",
                i.path,
                base.display()
            ),
        }
    }
    anyhow::ensure!(
        !out.is_empty(),
        "the manifest lists no input files; pass --train-inputs"
    );
    Ok(out)
}

/// Examples per class in the training split (all kept ones for datasets without splits).
pub(crate) fn train_class_counts(m: &DatasetManifest) -> BTreeMap<String, u64> {
    m.per_class
        .iter()
        .map(|(k, c)| (k.clone(), c.splits.get("train").copied().unwrap_or(c.kept)))
        .collect()
}

fn fmt(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn text(r: &SkewReport) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "training: {} drawings from {} files ({} rejected, {} filtered); serving: {} drawings from {} files ({} rejected, {} repeated key_ids: last kept)",
        r.train.stats.len(),
        r.train.files,
        r.train.rejected,
        r.train.filtered,
        r.serve.stats.len(),
        r.serve.files,
        r.serve.rejected,
        r.serve.duplicates
    );
    let _ = writeln!(
        o,
        "{:<16} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8}  drift",
        "feature", "train mean", "serve mean", "train med", "serve med", "PSI", "KS"
    );
    for f in &r.numeric {
        let _ = writeln!(
            o,
            "{:<16} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8}  {}",
            f.feature,
            fmt(f.train_mean),
            fmt(f.serve_mean),
            fmt(f.train_median),
            fmt(f.serve_median),
            fmt(f.psi),
            fmt(f.ks),
            f.drift
        );
    }
    for c in &r.categorical {
        let top = |v: &[(String, f64)]| {
            v.iter()
                .map(|(k, s)| format!("{k} {:.0}%", s * 100.0))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            o,
            "{:<16} {:>52} {:>8}  {}",
            c.feature,
            "",
            fmt(c.psi),
            c.drift
        );
        let _ = writeln!(o, "    train: {}", top(&c.train_top));
        let _ = writeln!(o, "    serve: {}", top(&c.serve_top));
    }
    let _ = writeln!(
        o,
        "PSI < 0.1: no shift, 0.1-0.25: moderate, > 0.25: major. KS: largest gap between the two CDFs."
    );
    o
}

pub fn run(a: SkewArgs, ctx: Ctx) -> anyhow::Result<()> {
    let m = DatasetManifest::load(&a.manifest)?;
    let train_files = if a.train_inputs.is_empty() {
        manifest_inputs(&m, &a.manifest)?
    } else {
        expand_globs(&a.train_inputs)?
    };
    let log_files =
        skew::log_files(&a.log).with_context(|| format!("reading {}", a.log.display()))?;
    anyhow::ensure!(
        !log_files.is_empty(),
        "{}: no .ndjson request logs",
        a.log.display()
    );
    if !ctx.quiet {
        eprintln!(
            "reading up to {} drawings from each of {} training files and {} log files",
            a.sample,
            train_files.len(),
            log_files.len()
        );
    }
    let train = skew::read_sample(
        &train_files,
        &m.features,
        Some(a.sample),
        m.include_unrecognized,
        false,
    )?;
    let serve = skew::read_sample(&log_files, &m.features, None, true, true)?;
    anyhow::ensure!(
        !serve.stats.is_empty(),
        "{}: no valid drawings in the request logs",
        a.log.display()
    );
    let classes = train_class_counts(&m);
    let report = skew::compare(train, serve, a.bins.max(2), Some(&classes));
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", text(&report));
    }
    if let Some(limit) = a.fail_above {
        let over: Vec<String> = report
            .numeric
            .iter()
            .map(|f| (f.feature, f.psi))
            .chain(report.categorical.iter().map(|c| (c.feature, c.psi)))
            .filter(|(_, p)| *p > limit)
            .map(|(f, p)| format!("{f} ({p:.3})"))
            .collect();
        anyhow::ensure!(over.is_empty(), "PSI above {limit}: {}", over.join(", "));
    }
    Ok(())
}
