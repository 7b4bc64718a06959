//! `quickdraw convert`: QuickDraw files in, TFRecord shards + labels + manifest out.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context;
use quickdraw_data::classes::parse_class_spec;
use quickdraw_data::convert::{self, ConvertConfig, ConvertError, Progress, WorkerSlot};
use quickdraw_data::features::{FeatureSpec, ImageEncoding};
use quickdraw_data::ingest::LabelFrom;
use quickdraw_data::manifest::DatasetManifest;
use quickdraw_data::raster::{RasterMode, RasterSpec};
use quickdraw_data::split::{self, SPLITS, SplitPolicy};
use quickdraw_data::strokes::{DEFAULT_MAX_POINTS, StrokeSpec};
use quickdraw_data::validate::SpecError;

use super::{Ctx, expand_globs};
use crate::progress;

#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// Input files, directories or quoted globs (NDJSON, .bin, .npy, each optionally .gz);
    /// object-store URLs too (`s3://bucket/prefix`, `gs://...`, `az://...`, `https://...`).
    #[arg(long, short, num_args = 1.., required_unless_present = "finalize")]
    pub input: Vec<String>,
    /// Output directory for shards, labels.txt, rejects.jsonl and manifest.json; or an
    /// object-store URL (written locally, then uploaded, manifest.json last).
    #[arg(long, short)]
    pub output: PathBuf,
    /// Convert only worker I's share of N (whole classes, dealt by input size) into the same
    /// --output; then `convert --finalize` merges the workers' partial manifests.
    #[arg(long, value_name = "I/N", conflicts_with_all = ["workers", "finalize"])]
    pub worker: Option<String>,
    /// As --worker I/N, with I from $JOB_COMPLETION_INDEX (set by a Kubernetes Indexed Job).
    #[arg(long, value_name = "N", conflicts_with = "finalize")]
    pub workers: Option<usize>,
    /// Check that every worker of --output finished and publish the dataset's manifest.json.
    #[arg(long)]
    pub finalize: bool,
    /// Classes in label order: `cat,dog`, a group (`pets`, `zoo`, `animals`) or `@file`.
    /// Default: every class found in the inputs (file names, and words of mixed files), sorted.
    /// With mixed files it is a filter: records of other words are counted as filtered.
    #[arg(long)]
    pub classes: Option<String>,
    /// Where an NDJSON record's class comes from: `file` (its file's name, as Google's
    /// per-class files: a record with another word is rejected as label_mismatch), `word` (the
    /// record's own word, for files that mix classes: exports, request logs) or `auto` (`file`
    /// when at least 90% of a file's first 1000 records carry its name, else `word`; said in
    /// the summary). Binary and npy records have no word and always take the file's name.
    #[arg(long, value_enum, default_value_t = LabelFromArg::Auto)]
    pub label_from: LabelFromArg,
    /// Per-class quotas `train=5000,eval=1000,test=1000` (the default) or shares
    /// `train=0.8,eval=0.1,test=0.1`. With --eval-after, quotas apply only when given.
    #[arg(long)]
    pub split: Option<String>,
    /// Split by time: drawings before DATE (YYYY-MM-DD, UTC) train, later ones eval/test.
    #[arg(long, value_name = "DATE")]
    pub eval_after: Option<String>,
    /// Shards per split.
    #[arg(long, default_value_t = 10)]
    pub shards: usize,
    /// `amld` (the lecture's conversion) or `default` (aspect-preserving, anti-aliased).
    #[arg(long, default_value = "default")]
    pub raster: RasterMode,
    /// Image side in pixels.
    #[arg(long, default_value_t = 64)]
    pub size: u32,
    /// Line width in pixels (default: 4 for amld, 3 at 64 px scaled with --size for default).
    #[arg(long)]
    pub line_width: Option<f32>,
    /// Image feature encoding: int64 (as the lecture), bytes (raw uint8) or png.
    #[arg(long, default_value = "int64")]
    pub image_encoding: ImageEncoding,
    /// Also write stroke features (stroke_x, stroke_y, stroke_z, stroke_len) for sequence models.
    #[arg(long)]
    pub strokes: bool,
    /// Longest stroke sequence kept with --strokes (longer ones are cut and counted).
    #[arg(long, default_value_t = DEFAULT_MAX_POINTS)]
    pub max_points: usize,
    /// Do not simplify raw drawings before rasterising (by default raw input is simplified with
    /// Google's algorithm, so raw and simplified files give the same examples).
    #[arg(long)]
    pub no_simplify: bool,
    /// Keep drawings the game did not recognise (excluded by default, as in the lecture).
    #[arg(long)]
    pub include_unrecognized: bool,
    /// Fail when more than this share of records is rejected.
    #[arg(long, default_value_t = 0.05)]
    pub max_reject_rate: f64,
    /// Rejected records listed in rejects.jsonl per reason (all are counted in the manifest).
    #[arg(long, value_name = "N", default_value_t = convert::DEFAULT_MAX_LISTED_REJECTS)]
    pub max_listed_rejects: u64,
    /// Seed of the shuffle across shards.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Write {records, seconds, peak_rss_bytes, bytes_per_example} to this file (benchmarks).
    #[arg(long, hide = true)]
    pub timing_json: Option<PathBuf>,
}

/// `--label-from`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelFromArg {
    Auto,
    File,
    Word,
}

impl LabelFromArg {
    fn rule(self) -> Option<LabelFrom> {
        match self {
            LabelFromArg::Auto => None,
            LabelFromArg::File => Some(LabelFrom::File),
            LabelFromArg::Word => Some(LabelFrom::Word),
        }
    }
}

pub fn config(a: &ConvertArgs) -> anyhow::Result<ConvertConfig> {
    let inputs = expand_globs(&a.input)?;
    let classes = a.classes.as_deref().map(parse_class_spec).transpose()?;
    let given = a.split.as_deref().map(split::parse_split).transpose()?;
    let policy = match (&a.eval_after, given) {
        (None, p) => p.unwrap_or_default(),
        (Some(d), p) => {
            let eval_after = split::parse_date(d)?;
            let (eval_test, counts) = match p {
                None => ([1.0, 1.0], None),
                Some(SplitPolicy::Counts { counts }) => {
                    ([counts[1] as f64, counts[2] as f64], Some(counts))
                }
                Some(SplitPolicy::Fractions { fractions }) => ([fractions[1], fractions[2]], None),
                Some(SplitPolicy::ByTime { .. }) => {
                    unreachable!("parse_split never returns ByTime")
                }
            };
            SplitPolicy::ByTime {
                eval_after,
                eval_test,
                counts,
            }
        }
    };
    anyhow::ensure!(
        (0.0..=1.0).contains(&a.max_reject_rate),
        "--max-reject-rate must be a share between 0 and 1, got {}",
        a.max_reject_rate
    );
    let features = FeatureSpec {
        raster: RasterSpec::new(a.raster, a.size, a.line_width),
        image_encoding: a.image_encoding,
        strokes: a.strokes.then_some(StrokeSpec {
            max_points: a.max_points,
        }),
        simplify_raw: !a.no_simplify,
    };
    features.validate().map_err(flag_error)?;
    Ok(ConvertConfig {
        inputs,
        output: a.output.clone(),
        classes,
        label_from: a.label_from.rule(),
        split: policy,
        shards: a.shards,
        features,
        seed: a.seed,
        include_unrecognized: a.include_unrecognized,
        max_reject_rate: a.max_reject_rate,
        max_listed_rejects: a.max_listed_rejects,
        tool: format!("quickdraw {}", env!("CARGO_PKG_VERSION")),
        worker: worker_slot(a)?,
    })
}

/// `--worker I/N`, or `--workers N` with I from `JOB_COMPLETION_INDEX`.
fn worker_slot(a: &ConvertArgs) -> anyhow::Result<Option<WorkerSlot>> {
    if let Some(s) = &a.worker {
        return Ok(Some(
            WorkerSlot::parse(s).map_err(|e| anyhow::anyhow!("--worker {e}"))?,
        ));
    }
    let Some(n) = a.workers else {
        return Ok(None);
    };
    let index = std::env::var("JOB_COMPLETION_INDEX").map_err(|_| {
        anyhow::anyhow!(
            "--workers {n} takes the worker index from $JOB_COMPLETION_INDEX (set by a Kubernetes Indexed Job), which is not set: use --worker I/{n}"
        )
    })?;
    let index: usize = index
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("$JOB_COMPLETION_INDEX is {index:?}, not a worker index"))?;
    Ok(Some(
        WorkerSlot::new(index, n).map_err(|e| anyhow::anyhow!("--workers {n}: {e}"))?,
    ))
}

/// A preprocessing parameter error in the words of the command line: the flag and why.
fn flag_error(e: SpecError) -> anyhow::Error {
    anyhow::anyhow!("--{} {}: {}", e.field.replace('_', "-"), e.value, e.why)
}

pub fn run(a: ConvertArgs, ctx: Ctx) -> anyhow::Result<()> {
    if a.finalize {
        let m = convert::finalize(&a.output)
            .with_context(|| format!("finalizing {}", a.output.display()))?;
        if !ctx.quiet {
            print_summary(&m, 0);
        }
        eprintln!(
            "published {}",
            a.output
                .join(quickdraw_data::manifest::MANIFEST_FILE)
                .display()
        );
        return Ok(());
    }
    let cfg = config(&a)?;
    let start = Instant::now();
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    })
    .context("installing the Ctrl-C handler")?;
    let report = match convert_cancellable(&cfg, ctx, cancel) {
        Err(e)
            if matches!(
                e.downcast_ref::<ConvertError>(),
                Some(ConvertError::Interrupted)
            ) =>
        {
            // The run has removed its scratch directory and .tmp shards on the way out.
            eprintln!("interrupted: no dataset written; scratch removed");
            std::process::exit(130);
        }
        r => r?,
    };
    if let Some(p) = &a.timing_json {
        let t = serde_json::json!({
            "records": report.manifest.totals.read,
            "seconds": start.elapsed().as_secs_f64(),
            "read_seconds": report.read_seconds,
            "encode_write_seconds": report.encode_write_seconds,
            "peak_rss_bytes": super::bench::peak_rss_bytes(),
            "cpu_seconds": super::bench::cpu_seconds(),
            "bytes_per_example": report.manifest.bytes_per_example,
        });
        std::fs::write(p, t.to_string()).with_context(|| format!("writing {}", p.display()))?;
    }
    if !ctx.quiet {
        print_summary(&report.manifest, report.skipped.len());
        eprintln!(
            "rejected records are listed in {}",
            report.rejects_path.display()
        );
    }
    Ok(())
}

/// Runs a conversion with a byte-progress bar, stopped (with [`ConvertError::Interrupted`])
/// once `cancel` is set.
fn convert_cancellable(
    cfg: &ConvertConfig,
    ctx: Ctx,
    cancel: Arc<AtomicBool>,
) -> anyhow::Result<convert::ConvertReport> {
    let plan = convert::plan(cfg)?;
    if !ctx.quiet {
        print_duplicates(&plan.duplicates);
    }
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    if !ctx.quiet && !plan.mixed.is_empty() {
        let names: Vec<String> = plan
            .mixed
            .iter()
            .map(|f| f.path.display().to_string())
            .collect();
        eprintln!(
            "labels from each record's word (files that mix classes): {}; from file names: the other {} files",
            names.join(", "),
            plan.groups.iter().map(Vec::len).sum::<usize>()
        );
    }
    let progress = Progress {
        cancel,
        ..Progress::default()
    };
    let start = Instant::now();
    let bar = progress::bytes_bar(ctx.quiet, Some(plan.total_bytes));
    bar.set_message(format!("converting {} classes", plan.classes.len()));
    let report = progress::with_ticker(
        || bar.set_position(progress.bytes_read.load(Ordering::Relaxed)),
        || convert::run(cfg, &plan, &progress),
    )
    .with_context(|| format!("converting into {}", cfg.output.display()))?;
    bar.finish_and_clear();
    // What the run found on its way (a lock it waited for or took over).
    for n in &report.notices {
        eprintln!("{n}");
    }
    if !ctx.quiet {
        let secs = start.elapsed().as_secs_f64();
        let read = report.manifest.totals.read;
        eprintln!(
            "read {read} records in {secs:.1} s ({:.0} records/s), wrote {} examples ({:.0} bytes each)",
            read as f64 / secs.max(1e-9),
            report.manifest.totals.kept,
            report.manifest.bytes_per_example
        );
    }
    Ok(report)
}

/// The input paths a conversion did not read because they repeat another input.
fn print_duplicates(duplicates: &[(PathBuf, String)]) {
    for (p, why) in duplicates {
        eprintln!("skipped input {}: {why}", p.display());
    }
}

/// The per-class table printed at the end of a conversion (and by `stats` on a shard dir).
pub fn print_summary(m: &DatasetManifest, skipped_files: usize) {
    println!(
        "{:<24} {:>9} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "class", "read", "kept", "train", "eval", "test", "filtered", "rejected"
    );
    let row = |name: &str, c: &quickdraw_data::manifest::ClassCounts| {
        let sp = |s: &str| c.splits.get(s).copied().unwrap_or(0);
        println!(
            "{:<24} {:>9} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9}{}",
            name,
            c.read,
            c.kept,
            sp(SPLITS[0]),
            sp(SPLITS[1]),
            sp(SPLITS[2]),
            c.filtered_total(),
            c.rejected_total(),
            if c.quota_filled_early {
                "  (quotas full: rest of input hashed, not parsed)"
            } else {
                ""
            }
        );
    };
    for (name, c) in &m.per_class {
        row(name, c);
    }
    row("TOTAL", &m.totals);
    if !m.totals.filtered.is_empty() {
        let f: Vec<String> = m
            .totals
            .filtered
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("filtered by reason: {}", f.join(", "));
    }
    if !m.totals.rejected.is_empty() {
        let r: Vec<String> = m
            .totals
            .rejected
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("rejected by reason: {}", r.join(", "));
    }
    if m.totals.rejects_not_listed > 0 {
        println!(
            "rejected records counted but not listed in rejects.jsonl (over --max-listed-rejects): {}",
            m.totals.rejects_not_listed
        );
    }
    if m.totals.strokes_truncated > 0 {
        println!(
            "stroke sequences cut at --max-points: {}",
            m.totals.strokes_truncated
        );
    }
    if skipped_files > 0 {
        println!("input files of classes not selected (not read): {skipped_files}");
    }
    let by_word: Vec<&str> = m
        .inputs
        .iter()
        .filter(|i| i.label_from == LabelFrom::Word)
        .map(|i| i.path.as_str())
        .collect();
    if !by_word.is_empty() {
        println!(
            "labels: from each record's word in {} (mixed classes), from the file name in the other {} files",
            by_word.join(", "),
            m.inputs.len() - by_word.len()
        );
    }
    let shards: usize = m.shards.values().map(Vec::len).sum();
    println!(
        "{} shards, {:.0} bytes per example ({:?} images {}x{}, raster {:?})",
        shards,
        m.bytes_per_example,
        m.features.image_encoding,
        m.features.raster.size,
        m.features.raster.size,
        m.features.raster.mode
    );
}
