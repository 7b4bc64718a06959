//! `convert`: input files -> validated, preprocessed `tf.train.Example` TFRecord shards, with
//! `labels.txt`, `rejects.jsonl` and `manifest.json` beside them.
//!
//! Two phases keep memory constant whatever the input size and the output byte-identical for the
//! same inputs and seed:
//! 1. per class (classes in parallel; within a file, batches of records are parsed and
//!    rasterised in parallel but decided in input order) every kept example is framed as a
//!    TFRecord record and appended to a spill file per (split, class) in a temporary directory;
//! 2. per split, the class spill files are interleaved in a seeded random order (each pick is
//!    weighted by the records a class has left, i.e. a uniformly random merge) and dealt
//!    round-robin into the shards, each written under a `.tmp` name and renamed when complete.
//!
//! `manifest.json` is written last, so a directory without it is not a finished dataset. The
//! output directory is locked for the whole run ([`DirLock`]), and a run that does not finish
//! (error, Ctrl-C through [`Progress::cancel`], panic) removes its scratch directory and `.tmp`
//! shards.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::drawing::{Drawing, Ink};
use crate::features::{FeatureError, FeatureSpec, encode_example_into, is_raw, preprocess};
use crate::ingest::{
    self, Format, IngestError, LabelFrom, UnitReader, class_from_path, parse_unit,
};
use crate::lock::{DirLock, LockError};
use crate::manifest::{
    ClassCounts, DatasetManifest, InputFile, LABELS_FILE, MANIFEST_FILE, MANIFEST_VERSION,
    REJECTS_FILE, RejectLine, ShardFile, labels_text,
};
use crate::spill;
use crate::split::{Assign, SPLITS, SplitPolicy, Splitter, mix64};
use crate::storage;
use crate::tfrecord::append_record;
use crate::validate::SpecError;

/// Records parsed together in parallel; large enough to amortise scheduling, small enough to
/// keep memory flat.
pub const BATCH_RECORDS: usize = 1024;

mod demux;
mod publish;
pub mod workers;
pub use demux::{FILE_LABEL_SHARE, SNIFF_RECORDS};
pub use workers::{WorkerSlot, finalize};
/// Rejected records listed in `rejects.jsonl` per reason by default (all are counted).
pub const DEFAULT_MAX_LISTED_REJECTS: u64 = 10_000;
/// Most shards per split: phase 2 keeps every shard of a split open at once, each with a
/// 64 KiB buffer (1024 shards = 64 MiB and 1024 descriptors).
pub const MAX_SHARDS: usize = 1024;
/// Deflate's largest compression ratio (a 258-byte match coded in one bit, about 1032:1): a
/// gzip file decompresses to at most this many times its size.
const MAX_GZIP_RATIO: u64 = 1032;

#[derive(Debug, Clone)]
pub struct ConvertConfig {
    /// Input files (directories are expanded by [`expand_inputs`]).
    pub inputs: Vec<PathBuf>,
    pub output: PathBuf,
    /// Classes in label order; `None` = every class found in the inputs, sorted.
    pub classes: Option<Vec<String>>,
    /// Where an NDJSON record's class comes from (binary and npy records: always the file's
    /// name); `None` = decided per file by [`demux::sniff`] (`--label-from auto`).
    pub label_from: Option<LabelFrom>,
    pub split: SplitPolicy,
    pub shards: usize,
    pub features: FeatureSpec,
    pub seed: u64,
    pub include_unrecognized: bool,
    /// Fail when `rejected / read` exceeds this share.
    pub max_reject_rate: f64,
    /// Rejected records listed in `rejects.jsonl` per reason (the rest are only counted).
    pub max_listed_rejects: u64,
    /// `quickdraw <version>` recorded in the manifest.
    pub tool: String,
    /// Convert only this worker's share of the classes (see [`workers`]); `None` = all.
    pub worker: Option<WorkerSlot>,
}

/// Counters a caller can poll to show progress.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes read from disk so far (compare with [`Plan::total_bytes`]).
    pub bytes_read: AtomicU64,
    /// Records read so far.
    pub records: AtomicU64,
    /// Examples written to shards in phase 2.
    pub examples_written: AtomicU64,
    /// Records rejected so far (parsed records only; missing `.npy` rows are added at the end).
    pub rejected: AtomicU64,
    /// Set by the caller (a Ctrl-C handler) to stop the run: it then fails with
    /// [`ConvertError::Interrupted`] after removing its scratch files.
    pub cancel: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("no input files found in {0}")]
    NoInputs(String),
    #[error(
        "class {class:?} was selected but no input holds it (file names give the class, e.g. {class}.ndjson; in files that mix classes, each record's word)"
    )]
    MissingClass { class: String },
    #[error("--strokes needs pen strokes, but {0} is a numpy_bitmap file (images only)")]
    StrokesFromBitmap(PathBuf),
    #[error("--shards must be at least 1")]
    NoShards,
    #[error("--shards {0} is more than {MAX_SHARDS} (every shard of a split is open at once)")]
    TooManyShards(usize),
    #[error(
        "--shards {shards} is more than the {examples} examples of the largest split ({split}): \
         shards would be empty; no shards were written"
    )]
    ShardsExceedExamples {
        shards: usize,
        split: &'static str,
        examples: u64,
    },
    #[error("invalid preprocessing parameter: {0}")]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(
        "the inputs hold no usable records ({read} read, {rejected} rejected, {filtered} filtered \
         out): no dataset written"
    )]
    Empty {
        read: u64,
        rejected: u64,
        filtered: u64,
    },
    #[error(
        "{rejected} records rejected so far: more than --max-reject-rate {max:.2}% of the at most \
         {bound} records the inputs can hold (a bound from their sizes), so the reject rate is \
         certain to exceed it; stopped early, no shards were written"
    )]
    RejectRateCertain { rejected: u64, bound: u64, max: f64 },
    #[error("interrupted")]
    Interrupted,
    /// A split conversion's workers disagree or did not all finish.
    #[error("{0}")]
    Workers(String),
    #[error(
        "--worker splits the work by class file, but {0} mixes classes (labels from each record's word): convert it in one process, or split it by word first"
    )]
    WorkerMixedInput(PathBuf),
    #[error("invalid feature configuration: {0}")]
    Features(#[from] FeatureError),
    #[error(
        "reject rate {rate:.2}% ({rejected} of {read} records) exceeds --max-reject-rate {max:.2}%; \
         no shards were written; the rejected records are listed in {rejects}"
    )]
    TooManyRejects {
        rate: f64,
        rejected: u64,
        read: u64,
        max: f64,
        rejects: PathBuf,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ConvertError + '_ {
    move |source| ConvertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One input file, resolved.
#[derive(Debug, Clone)]
pub struct InputPlan {
    pub path: PathBuf,
    pub format: Format,
    pub gzip: bool,
    /// Its size in bytes when planned (one `len` per input, also one request per object).
    pub bytes: u64,
    /// The class of its records: the file's name, or (scratch files of a mixed input) the word.
    pub class: String,
    pub label_from: LabelFrom,
    /// Set on the scratch files [`demux`] splits a mixed input into.
    pub origin: Option<Arc<demux::Origin>>,
}

/// What `convert` will do, before doing it.
#[derive(Debug, Clone)]
pub struct Plan {
    pub classes: Vec<String>,
    /// Per class (label order), its input files in path order.
    pub groups: Vec<Vec<InputPlan>>,
    /// NDJSON files labelled by each record's word (`--label-from word`, or `auto` on a file
    /// that mixes classes), split by word when the run starts. Their words join `classes` then
    /// (unless `--classes` selected the classes), so `classes` lists only the file-labelled
    /// classes until [`run`] has read them.
    pub mixed: Vec<InputPlan>,
    /// Files whose class was not selected (not read).
    pub skipped: Vec<PathBuf>,
    /// Input paths not read because they are a file already read or a directory loop, each
    /// with why.
    pub duplicates: Vec<(PathBuf, String)>,
    pub total_bytes: u64,
    /// Most records the inputs can hold, from their sizes (see [`max_records`]).
    pub max_records: u64,
    /// What the user should know before the run (printed by the CLI, kept in the manifest).
    pub warnings: Vec<String>,
}

/// Expands directories (recursively, sorted) into the supported files they contain; explicit
/// files are kept whatever their name (the format is then sniffed from the content).
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, ConvertError> {
    Ok(expand_inputs_unique(inputs)?.0)
}

/// [`expand_inputs`], reading each file once: a path naming a file already found (given twice,
/// or through a link) and a directory link back into a directory being walked are left out and
/// returned with why.
pub fn expand_inputs_unique(
    inputs: &[PathBuf],
) -> Result<(Vec<PathBuf>, Vec<(PathBuf, String)>), ConvertError> {
    let mut w = Walk::default();
    for p in inputs {
        if storage::is_url(p) {
            w.url(p)?;
        } else if p.is_dir() {
            let before = w.files.len();
            w.dir(p).map_err(io_err(p))?;
            w.files[before..].sort();
            if w.files.len() == before && !w.skipped.iter().any(|(s, _)| s == p) {
                return Err(ConvertError::NoInputs(p.display().to_string()));
            }
        } else {
            fs::metadata(p).map_err(io_err(p))?;
            w.file(p);
        }
    }
    let mut files = w.files;
    let mut seen = BTreeMap::new();
    let mut skipped = w.skipped;
    files.retain(|p| {
        let canon = fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        match seen.get(&canon) {
            Some(first) => {
                let first: &PathBuf = first;
                skipped.push((p.clone(), format!("same file as {}", first.display())));
                false
            }
            None => {
                seen.insert(canon, p.clone());
                true
            }
        }
    });
    Ok((files, skipped))
}

/// Directory walk state: the canonical directories on the current path (a link to one of them
/// is a loop).
#[derive(Default)]
struct Walk {
    files: Vec<PathBuf>,
    skipped: Vec<(PathBuf, String)>,
    open_dirs: BTreeSet<PathBuf>,
}

impl Walk {
    fn dir(&mut self, dir: &Path) -> io::Result<()> {
        let canon = fs::canonicalize(dir)?;
        if self.open_dirs.contains(&canon) {
            let why = format!("directory loop (it is {})", canon.display());
            self.skipped.push((dir.to_path_buf(), why));
            return Ok(());
        }
        self.open_dirs.insert(canon.clone());
        let mut entries = fs::read_dir(dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<io::Result<Vec<_>>>()?;
        entries.sort();
        for p in entries {
            if p.is_dir() {
                self.dir(&p)?;
            } else if is_supported_name(&p) {
                self.file(&p);
            }
        }
        self.open_dirs.remove(&canon);
        Ok(())
    }

    fn file(&mut self, p: &Path) {
        self.files.push(p.to_path_buf());
    }

    /// An object (taken whatever its name) or a prefix (its objects with supported names,
    /// recursively, sorted). Object stores have no links, hence no loops.
    fn url(&mut self, p: &Path) -> Result<(), ConvertError> {
        if storage::is_file(p) {
            self.file(p);
            return Ok(());
        }
        let listed = storage::list(p).map_err(io_err(p))?;
        let before = self.files.len();
        for (rel, _) in listed {
            let f = p.join(&rel);
            if is_supported_name(&f) {
                self.file(&f);
            }
        }
        if self.files.len() == before {
            return Err(ConvertError::NoInputs(p.display().to_string()));
        }
        Ok(())
    }
}

fn is_supported_name(p: &Path) -> bool {
    let n = p
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let n = n.strip_suffix(".gz").unwrap_or(&n);
    let ext = n.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    ingest::NDJSON_EXTENSIONS.contains(&ext) || ext == "bin" || ext == "npy"
}

/// Resolves formats and classes and checks the configuration, without converting anything.
pub fn plan(cfg: &ConvertConfig) -> Result<Plan, ConvertError> {
    cfg.validate()?;
    let (files, duplicates) = expand_inputs_unique(&cfg.inputs)?;
    if files.is_empty() {
        return Err(ConvertError::NoInputs(format!("{:?}", cfg.inputs)));
    }
    let mut by_class: BTreeMap<String, Vec<InputPlan>> = BTreeMap::new();
    let mut mixed = Vec::new();
    for path in files {
        let (format, gzip) = ingest::detect(&path)?;
        let class = class_from_path(&path);
        let label_from = match (format, cfg.label_from) {
            (Format::Ndjson, Some(rule)) => rule,
            (_, None) => demux::sniff(&path, format, gzip, &class)?,
            _ => LabelFrom::File,
        };
        let f = InputPlan {
            bytes: storage::len(&path).unwrap_or(0),
            path,
            format,
            gzip,
            class: class.clone(),
            label_from,
            origin: None,
        };
        if label_from == LabelFrom::Word {
            mixed.push(f);
        } else {
            by_class.entry(class).or_default().push(f);
        }
    }
    let classes = match &cfg.classes {
        Some(c) => c.clone(),
        None => by_class.keys().cloned().collect(),
    };
    let mut skipped = Vec::new();
    for (c, files) in &by_class {
        if !classes.contains(c) {
            skipped.extend(files.iter().map(|f| f.path.clone()));
        }
    }
    let mut groups = Vec::new();
    for c in &classes {
        // A selected class may come from the mixed files only (checked once they are read).
        let mut files = match by_class.remove(c) {
            Some(f) => f,
            None if !mixed.is_empty() => Vec::new(),
            None => return Err(ConvertError::MissingClass { class: c.clone() }),
        };
        files.sort_by(|a, b| a.path.cmp(&b.path));
        if cfg.features.strokes.is_some() {
            if let Some(f) = files.iter().find(|f| f.format == Format::NumpyBitmap) {
                return Err(ConvertError::StrokesFromBitmap(f.path.clone()));
            }
        }
        groups.push(files);
    }
    // Validate the raster configuration once, up front, rather than per record.
    preprocess(
        &Ink::Strokes(vec![]),
        &FeatureSpec {
            strokes: None,
            ..cfg.features
        },
    )?;
    let size = |f: &InputPlan| f.bytes;
    let total_bytes = groups.iter().flatten().chain(&mixed).map(size).sum();
    let max_records = groups
        .iter()
        .flatten()
        .chain(&mixed)
        .map(|f| max_records(f, size(f)))
        .sum();
    let warnings = bitmap_warning(&groups, &cfg.features).into_iter().collect();
    Ok(Plan {
        classes,
        groups,
        mixed,
        skipped,
        duplicates,
        total_bytes,
        max_records,
        warnings,
    })
}

/// numpy_bitmap files hold 28x28 images already rasterised by Google: at another `--size` they
/// are resized, and the raster mode and line width do not apply to them.
fn bitmap_warning(groups: &[Vec<InputPlan>], features: &FeatureSpec) -> Option<String> {
    let n = groups
        .iter()
        .flatten()
        .filter(|f| f.format == Format::NumpyBitmap)
        .count();
    let side = ingest::npy::NPY_SIDE as u32;
    (n > 0 && features.raster.size != side).then(|| {
        format!(
            "{n} numpy_bitmap input file(s) hold {side}x{side} images: they are resized to \
             {size}x{size}, and the raster mode and line width do not apply to them; use \
             --size {side} to keep Google's pixels",
            size = features.raster.size
        )
    })
}

impl ConvertConfig {
    /// Checks the parameters that need no input: shard count (1..=[`MAX_SHARDS`]) and the
    /// preprocessing ([`FeatureSpec::validate`]).
    pub fn validate(&self) -> Result<(), ConvertError> {
        match self.shards {
            0 => return Err(ConvertError::NoShards),
            n if n > MAX_SHARDS => return Err(ConvertError::TooManyShards(n)),
            _ => {}
        }
        Ok(self.features.validate()?)
    }
}

/// Most records a file of `bytes` bytes on disk can hold: gzip data decompresses to at most
/// [`MAX_GZIP_RATIO`] times its size; every NDJSON record is a non-blank line (a byte and its
/// newline, the last one maybe without) and every binary record at least 2 bytes, so at most
/// `len / 2 + 1` of them; an `.npy` row is 784 bytes. Parsed records never exceed this sum, which
/// makes the early reject-rate stop in [`run`] certain rather than a guess.
pub fn max_records(f: &InputPlan, bytes: u64) -> u64 {
    let len = if f.gzip {
        bytes.saturating_mul(MAX_GZIP_RATIO)
    } else {
        bytes
    };
    match f.format {
        Format::NumpyBitmap => len / crate::ingest::npy::ROW as u64 + 1,
        Format::Ndjson | Format::Binary => len / 2 + 1,
    }
}

/// The result of a successful conversion.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    pub manifest: DatasetManifest,
    pub skipped: Vec<PathBuf>,
    /// Input paths not read (duplicates, directory loops), with why.
    pub duplicates: Vec<(PathBuf, String)>,
    pub rejects_path: PathBuf,
    /// Wall time of phase 1 (read, validate, split and spill the drawings of each class), in
    /// seconds.
    pub read_seconds: f64,
    /// Wall time of phase 2 (shuffle the spilled drawings, rasterise and encode them, write,
    /// fsync and rename the shards), in seconds.
    pub encode_write_seconds: f64,
    /// What the run met on its way that the user should hear of (a lock it waited for or took
    /// over), printed by the CLI.
    pub notices: Vec<String>,
}

struct GroupOut {
    counts: ClassCounts,
    inputs: Vec<InputFile>,
    /// Examples per split in this class's spill files.
    per_split: [u64; 3],
}

/// Runs a planned conversion. An object-store `output` is written locally first and published
/// when complete (see [`publish`]).
pub fn run(
    cfg: &ConvertConfig,
    plan: &Plan,
    progress: &Progress,
) -> Result<ConvertReport, ConvertError> {
    if storage::is_url(&cfg.output) {
        return publish::run_to_store(cfg, plan, progress);
    }
    run_local(cfg, plan, progress)
}

/// Which shard names a run writes: all of them, or one worker's range.
#[derive(Debug, Clone, Copy)]
struct ShardOwner {
    worker: Option<WorkerSlot>,
    shards: usize,
}

impl ShardOwner {
    fn of(cfg: &ConvertConfig) -> Self {
        ShardOwner {
            worker: cfg.worker,
            shards: cfg.shards,
        }
    }

    /// The first global shard index and the total, per split.
    fn range(&self) -> (usize, usize) {
        match self.worker {
            None => (0, self.shards),
            Some(w) => w.shard_range(self.shards),
        }
    }

    /// Is `name` (maybe `.tmp`) a shard this run may remove or write?
    fn owns(&self, name: &str) -> bool {
        if !is_shard_name(name) {
            return false;
        }
        if self.worker.is_none() {
            return true;
        }
        let name = name.strip_suffix(".tmp").unwrap_or(name);
        let parts: Vec<&str> = name.split('-').collect();
        let (first, total) = self.range();
        let (Ok(i), Ok(n)) = (parts[1].parse::<usize>(), parts[3].parse::<usize>()) else {
            return false;
        };
        n == total && (first..first + self.shards).contains(&i)
    }
}

fn run_local(
    cfg: &ConvertConfig,
    plan: &Plan,
    progress: &Progress,
) -> Result<ConvertReport, ConvertError> {
    let out = &cfg.output;
    cfg.validate()?;
    let owner = ShardOwner::of(cfg);
    // A worker keeps its scratch, lock, rejects and partial manifest in its own directory.
    let work = match &cfg.worker {
        None => out.clone(),
        Some(w) => {
            if let Some(f) = plan.mixed.first() {
                return Err(ConvertError::WorkerMixedInput(f.path.clone()));
            }
            let d = workers::worker_dir(out, w);
            fs::create_dir_all(&d).map_err(io_err(&d))?;
            d
        }
    };
    // One writer per output directory (per worker directory), before anything is touched.
    let _lock = DirLock::acquire(&work, "output directory")?;
    // From here on the directory is not a finished dataset until the new manifest appears.
    remove_if_exists(&out.join(MANIFEST_FILE))?;
    if cfg.worker.is_some() {
        remove_if_exists(&work.join(MANIFEST_FILE))?;
        clean_stale(&work, &owner)?;
    }
    clean_stale(out, &owner)?;
    let tmp = work.join(format!(".convert-tmp-{}", std::process::id()));
    let _scratch = Scratch {
        dir: &tmp,
        out,
        owner,
    };
    fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    for s in SPLITS {
        fs::create_dir_all(tmp.join(s)).map_err(io_err(&tmp))?;
    }

    // A bad raster configuration fails now, not after reading every input.
    crate::raster::check(&cfg.features.raster).map_err(FeatureError::from)?;
    // Phase 0: mixed files split by word; their words join the classes.
    let phase1 = std::time::Instant::now();
    let (classes, class_files, mut mixed_out) = label_mixed(cfg, plan, &tmp, progress)?;
    // A worker converts its classes; the others get empty spill files and zero counts.
    let owners = cfg.worker.map(|w| {
        let bytes: Vec<u64> = class_files
            .iter()
            .map(|fs| fs.iter().map(|f| f.bytes).sum())
            .collect();
        (w.index, workers::assign(&bytes, w.count))
    });
    let owned = |label: usize| owners.as_ref().is_none_or(|(i, o)| o[label] == *i);
    // Phase 1: classes in parallel.
    let results: Vec<Result<GroupOut, ConvertError>> = class_files
        .par_iter()
        .enumerate()
        .map(|(label, files)| {
            let class = &classes[label];
            let files = if owned(label) { &files[..] } else { &[] };
            convert_class(cfg, plan, label, class, files, &tmp, progress)
        })
        .collect();
    let mut groups = Vec::with_capacity(results.len());
    for r in results {
        groups.push(r?);
    }

    // Rejects: concatenated in class order (deterministic), those of mixed files without a
    // class last, before the rate check so a failing run still says which records were bad.
    let rejects_path = work.join(REJECTS_FILE);
    let mut logs: Vec<(PathBuf, &mut GroupOut)> = groups
        .iter_mut()
        .enumerate()
        .map(|(label, g)| (tmp.join(format!("rejects-{label}.jsonl")), g))
        .collect();
    if let Some((p, g)) = mixed_out.as_mut() {
        logs.push((p.clone(), g));
    }
    merge_rejects(cfg, &mut logs, &rejects_path)?;
    drop(logs);
    let mut totals = ClassCounts::default();
    for g in groups.iter().chain(mixed_out.as_ref().map(|(_, g)| g)) {
        totals.add(&g.counts);
    }
    // A worker dealt no class (more workers than classes) publishes an empty part.
    if (0..classes.len()).any(owned) {
        check_phase1(cfg, &totals, &groups, &rejects_path)?;
    }

    let read_seconds = phase1.elapsed().as_secs_f64();
    // Phase 2: split by split (each uses every core to encode), each an interleave of its
    // class spill files.
    let phase2 = std::time::Instant::now();
    let counts: Vec<[u64; 3]> = groups.iter().map(|g| g.per_split).collect();
    let mut written = Vec::new();
    for s in 0..SPLITS.len() {
        if counts.iter().all(|c| c[s] == 0) {
            continue;
        }
        let (files, truncated) = write_split(cfg, s, &counts, &tmp, progress)?;
        for (g, t) in groups.iter_mut().zip(truncated) {
            g.counts.strokes_truncated += t;
            totals.strokes_truncated += t;
        }
        written.push((s, files));
    }
    check_cancel(progress)?;
    let shards = finish_shards(written)?;

    let encode_write_seconds = phase2.elapsed().as_secs_f64();
    if cfg.worker.is_none() {
        let label_path = out.join(LABELS_FILE);
        write_atomic(&label_path, labels_text(&classes).as_bytes())?;
    }
    let examples: u64 = shards.values().flatten().map(|f| f.examples).sum();
    let shard_bytes: u64 = shards.values().flatten().map(|f| f.bytes).sum();
    let manifest = DatasetManifest {
        manifest_version: MANIFEST_VERSION,
        tool: cfg.tool.clone(),
        classes: classes.clone(),
        features: cfg.features,
        seed: cfg.seed,
        split: serde_json::to_value(&cfg.split).unwrap_or_default(),
        include_unrecognized: cfg.include_unrecognized,
        inputs: groups
            .iter()
            .chain(mixed_out.as_ref().map(|(_, g)| g))
            .flat_map(|g| g.inputs.clone())
            .collect(),
        shards,
        per_class: classes
            .iter()
            .cloned()
            .zip(groups.iter().map(|g| g.counts.clone()))
            .enumerate()
            .filter(|(label, _)| owned(*label))
            .map(|(_, c)| c)
            .collect(),
        totals,
        warnings: plan.warnings.clone(),
        bytes_per_example: if examples == 0 {
            0.0
        } else {
            shard_bytes as f64 / examples as f64
        },
    };
    match cfg.worker {
        None => write_atomic(&out.join(MANIFEST_FILE), manifest.to_json().as_bytes())?,
        Some(worker) => {
            let part = workers::WorkerManifest {
                worker,
                owned: (0..classes.len())
                    .filter(|&l| owned(l))
                    .map(|l| classes[l].clone())
                    .collect(),
                manifest: manifest.clone(),
            };
            let json = serde_json::to_string_pretty(&part).expect("a manifest serialises");
            write_atomic(&work.join(MANIFEST_FILE), json.as_bytes())?;
        }
    }
    Ok(ConvertReport {
        manifest,
        skipped: plan.skipped.clone(),
        duplicates: plan.duplicates.clone(),
        rejects_path,
        read_seconds,
        encode_write_seconds,
        notices: Vec::new(),
    })
}

/// Removes the scratch directory and every `.tmp` shard when a run ends, finished or not (an
/// error, Ctrl-C, a panic): only a crash leaves them, for the next run's [`clean_stale`].
struct Scratch<'a> {
    dir: &'a Path,
    out: &'a Path,
    owner: ShardOwner,
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(self.dir);
        let Ok(entries) = fs::read_dir(self.out) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.ends_with(".tmp") && self.owner.owns(&name) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// One worker's reject log: a JSON line per rejected record naming its file and line (or
/// record), at most `max` per reason; the rest are only counted (`rejects_not_listed`).
/// [`merge_rejects`] caps the lines again over all logs.
struct RejectLog {
    w: BufWriter<File>,
    path: PathBuf,
    listed: BTreeMap<&'static str, u64>,
    max: u64,
}

impl RejectLog {
    fn create(path: PathBuf, max: u64) -> Result<Self, ConvertError> {
        let w = BufWriter::new(File::create(&path).map_err(io_err(&path))?);
        Ok(RejectLog {
            w,
            path,
            listed: BTreeMap::new(),
            max,
        })
    }

    /// Counts `r` as rejected in `counts` and lists it at `file`, `loc_key` (`line` or
    /// `record`) `index`.
    fn add(
        &mut self,
        counts: &mut ClassCounts,
        file: &Path,
        loc_key: &str,
        index: u64,
        r: &crate::validate::Reject,
    ) -> Result<(), ConvertError> {
        let reason = r.reason.as_str();
        *counts.rejected.entry(reason.to_string()).or_default() += 1;
        let n = self.listed.entry(reason).or_default();
        if *n >= self.max {
            counts.rejects_not_listed += 1;
            return Ok(());
        }
        *n += 1;
        self.line(serde_json::json!({
            "file": file.display().to_string(),
            loc_key: index,
            "reason": reason,
            "detail": r.detail,
        }))
    }

    fn line(&mut self, v: serde_json::Value) -> Result<(), ConvertError> {
        writeln!(self.w, "{v}").map_err(io_err(&self.path))
    }

    fn finish(mut self) -> Result<PathBuf, ConvertError> {
        self.w.flush().map_err(io_err(&self.path))?;
        Ok(self.path)
    }
}

/// Concatenates the classes' reject logs in class order into `rejects.jsonl`, listing at most
/// `max_listed_rejects` lines per reason over all classes; the lines left out are added to each
/// class's `rejects_not_listed`.
fn merge_rejects(
    cfg: &ConvertConfig,
    logs: &mut [(PathBuf, &mut GroupOut)],
    rejects_path: &Path,
) -> Result<(), ConvertError> {
    let mut w = BufWriter::new(File::create(rejects_path).map_err(io_err(rejects_path))?);
    let mut listed: BTreeMap<String, u64> = BTreeMap::new();
    for (p, g) in logs.iter_mut() {
        let p = &*p;
        let f = BufReader::new(File::open(p).map_err(io_err(p))?);
        for line in f.lines() {
            let line = line.map_err(io_err(p))?;
            let r = serde_json::from_str::<RejectLine>(&line).unwrap_or(RejectLine {
                reason: String::new(),
                records: 1,
            });
            let n = listed.entry(r.reason).or_default();
            if *n < cfg.max_listed_rejects {
                *n += 1;
                writeln!(w, "{line}").map_err(io_err(rejects_path))?;
            } else {
                g.counts.rejects_not_listed += r.records;
            }
        }
    }
    w.flush().map_err(io_err(rejects_path))
}

/// After phase 1, before any shard exists: fails on a reject rate over the maximum, on inputs
/// without a usable record, and on more shards than the largest split has examples.
fn check_phase1(
    cfg: &ConvertConfig,
    totals: &ClassCounts,
    groups: &[GroupOut],
    rejects_path: &Path,
) -> Result<(), ConvertError> {
    let rejected = totals.rejected_total();
    let rate = if totals.read == 0 {
        0.0
    } else {
        rejected as f64 / totals.read as f64
    };
    if rate > cfg.max_reject_rate {
        return Err(ConvertError::TooManyRejects {
            rate: rate * 100.0,
            rejected,
            read: totals.read,
            max: cfg.max_reject_rate * 100.0,
            rejects: rejects_path.to_path_buf(),
        });
    }
    if totals.kept == 0 {
        return Err(ConvertError::Empty {
            read: totals.read,
            rejected,
            filtered: totals.filtered_total(),
        });
    }
    let per_split: Vec<u64> = (0..SPLITS.len())
        .map(|s| groups.iter().map(|g| g.per_split[s]).sum())
        .collect();
    let (largest, &examples) = per_split
        .iter()
        .enumerate()
        .max_by_key(|&(_, n)| *n)
        .expect("three splits");
    if cfg.shards as u64 > examples {
        return Err(ConvertError::ShardsExceedExamples {
            shards: cfg.shards,
            split: SPLITS[largest],
            examples,
        });
    }
    Ok(())
}

/// Fails with [`ConvertError::Interrupted`] once the caller asked the run to stop.
fn check_cancel(progress: &Progress) -> Result<(), ConvertError> {
    if progress.cancel.load(Ordering::Relaxed) {
        return Err(ConvertError::Interrupted);
    }
    Ok(())
}

fn remove_if_exists(p: &Path) -> Result<(), ConvertError> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ConvertError::Io {
            path: p.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Is this one of the shard names `convert` writes (`train-00000-of-00010`, maybe `.tmp`)?
pub fn is_shard_name(name: &str) -> bool {
    let name = name.strip_suffix(".tmp").unwrap_or(name);
    let Some((split, rest)) = name.split_once('-') else {
        return false;
    };
    if !SPLITS.contains(&split) {
        return false;
    }
    let parts: Vec<&str> = rest.split('-').collect();
    parts.len() == 3
        && parts[1] == "of"
        && [parts[0], parts[2]]
            .iter()
            .all(|p| p.len() == 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Removes what an earlier (maybe interrupted) run left: temporary directories, `.tmp` files
/// and shards of our naming scheme (a new run may use a different shard count).
fn clean_stale(out: &Path, owner: &ShardOwner) -> Result<(), ConvertError> {
    for e in fs::read_dir(out).map_err(io_err(out))? {
        let e = e.map_err(io_err(out))?;
        let name = e.file_name().to_string_lossy().to_string();
        let p = e.path();
        if name.starts_with(".convert-tmp-") && p.is_dir() {
            fs::remove_dir_all(&p).map_err(io_err(&p))?;
        } else if owner.owns(&name) || name.ends_with(".json.tmp") || name.ends_with(".txt.tmp") {
            fs::remove_file(&p).map_err(io_err(&p))?;
        }
    }
    Ok(())
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), ConvertError> {
    let tmp = path.with_file_name(format!(
        "{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("out")
    ));
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(data).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// Format name for the manifest: NDJSON files are `simplified_ndjson` or `raw_ndjson` after the
/// first valid record.
fn format_name(format: Format, first: Option<&Drawing>) -> String {
    match (format, first.and_then(|d| d.strokes())) {
        (Format::Ndjson, Some(s)) if is_raw(s) => "raw_ndjson".into(),
        (Format::Ndjson, Some(_)) => "simplified_ndjson".into(),
        (f, _) => f.name().into(),
    }
}

enum Outcome {
    Reject(crate::validate::Reject),
    Keep(Drawing),
}

/// Drawings encoded together by one task of phase 2 (and written with one `write` call).
const ENCODE_CHUNK: usize = 16;

/// Framed records of consecutive drawings of one shard in one buffer, with the class and
/// whether the stroke features were cut of each.
struct EncodedChunk {
    shard: usize,
    bytes: Vec<u8>,
    records: Vec<(usize, bool)>,
}

/// The classes and each class's files once the mixed files are split by word (see [`demux`]):
/// `--classes` as given, or the file-labelled classes and the words found, sorted. Also the
/// mixed files' own counts (records without a class) and reject log, when there are any.
#[allow(clippy::type_complexity)]
fn label_mixed(
    cfg: &ConvertConfig,
    plan: &Plan,
    tmp: &Path,
    progress: &Progress,
) -> Result<
    (
        Vec<String>,
        Vec<Vec<InputPlan>>,
        Option<(PathBuf, GroupOut)>,
    ),
    ConvertError,
> {
    if plan.mixed.is_empty() {
        return Ok((plan.classes.clone(), plan.groups.clone(), None));
    }
    let selected = cfg.classes.as_deref();
    let mut d = demux::demux(cfg.max_listed_rejects, &plan.mixed, selected, tmp, progress)?;
    let mut by_class: BTreeMap<String, Vec<InputPlan>> = plan
        .classes
        .iter()
        .cloned()
        .zip(plan.groups.iter().cloned())
        .collect();
    for (word, files) in std::mem::take(&mut d.files) {
        by_class.entry(word).or_default().extend(files);
    }
    let classes = match selected {
        Some(c) => c.to_vec(),
        None => by_class.keys().cloned().collect(),
    };
    let mut groups = Vec::with_capacity(classes.len());
    for c in &classes {
        match by_class.remove(c) {
            Some(files) if !files.is_empty() => groups.push(files),
            _ => return Err(ConvertError::MissingClass { class: c.clone() }),
        }
    }
    Ok((classes, groups, Some((d.rejects, d.out))))
}

fn convert_class(
    cfg: &ConvertConfig,
    plan: &Plan,
    label: usize,
    class: &str,
    files: &[InputPlan],
    tmp: &Path,
    progress: &Progress,
) -> Result<GroupOut, ConvertError> {
    let mut counts = ClassCounts::default();
    let mut per_split = [0u64; 3];
    let mut splitter = Splitter::new(&cfg.split);
    let mut spills: Vec<BufWriter<File>> = Vec::with_capacity(3);
    for s in SPLITS {
        let p = tmp.join(s).join(format!("{label}.rec"));
        spills.push(BufWriter::with_capacity(
            1 << 18,
            File::create(&p).map_err(io_err(&p))?,
        ));
    }
    let mut rejects = RejectLog::create(
        tmp.join(format!("rejects-{label}.jsonl")),
        cfg.max_listed_rejects,
    )?;
    let mut inputs = Vec::new();
    let counter = Arc::new(AtomicU64::new(0));
    let mut reported = 0u64;
    let mut record = Vec::with_capacity(4096);
    let mut rejected_before = 0u64;

    for f in files {
        // A mixed input's scratch file: its bytes were counted when it was split, and its
        // rejects name the original file and line.
        let own_counter = Arc::new(AtomicU64::new(0));
        let file_counter = if f.origin.is_some() {
            &own_counter
        } else {
            &counter
        };
        let mut reader =
            UnitReader::open_as(&f.path, f.format, f.gzip, Some(file_counter.clone()))?;
        let mut origin_lines = f
            .origin
            .as_deref()
            .map(demux::OriginLines::open)
            .transpose()?;
        let shown_path = f.origin.as_ref().map_or(&f.path, |o| &o.path);
        let mut format = None;
        let loc_key = if f.format == Format::Ndjson {
            "line"
        } else {
            "record"
        };
        while !splitter.all_full() {
            let batch = reader.next_batch(BATCH_RECORDS)?;
            if batch.is_empty() {
                break;
            }
            check_cancel(progress)?;
            let parsed: Vec<Outcome> = batch
                .par_iter()
                .map(|u| match parse_unit(f.format, u, class, f.label_from) {
                    Ok(d) => Outcome::Keep(d),
                    Err(r) => Outcome::Reject(r),
                })
                .collect();
            // Decide in input order: this is what makes quotas and output deterministic.
            for (u, o) in batch.iter().zip(parsed) {
                counts.read += 1;
                let index = match origin_lines.as_mut() {
                    Some(lines) => lines.next_line()?,
                    None => u.index,
                };
                match o {
                    Outcome::Reject(r) => {
                        rejects.add(&mut counts, shown_path, loc_key, index, &r)?;
                    }
                    Outcome::Keep(d) => {
                        if format.is_none() {
                            format = Some(format_name(f.format, Some(&d)));
                        }
                        if !d.recognized && !cfg.include_unrecognized {
                            *counts.filtered.entry("unrecognized".into()).or_default() += 1;
                            continue;
                        }
                        match splitter.assign(class, d.key_id, d.timestamp) {
                            Assign::Split(s) => {
                                record.clear();
                                spill::append(&d, &mut record);
                                let p = tmp.join(SPLITS[s]);
                                spills[s].write_all(&record).map_err(io_err(&p))?;
                                per_split[s] += 1;
                                counts.kept += 1;
                                *counts.splits.entry(SPLITS[s].to_string()).or_default() += 1;
                            }
                            Assign::SplitFull => {
                                *counts.filtered.entry("split_full".into()).or_default() += 1
                            }
                            Assign::NotSelected => {
                                *counts.filtered.entry("not_in_split".into()).or_default() += 1
                            }
                        }
                    }
                }
            }
            progress
                .records
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            check_reject_bound(
                cfg,
                plan,
                progress,
                counts.rejected_total() - rejected_before,
            )?;
            rejected_before = counts.rejected_total();
            let now = counter.load(Ordering::Relaxed);
            progress
                .bytes_read
                .fetch_add(now - reported, Ordering::Relaxed);
            reported = now;
        }
        if splitter.all_full() {
            counts.quota_filled_early = true;
        }
        // A mixed input was read whole when it was split (its rejects all counted): count the
        // lines of this class the quotas left unread as read too, so the reject rate has the
        // same denominator as the file's (they were routed by word, not validated).
        if let Some(lines) = &origin_lines {
            counts.read += lines.unread();
            *counts.filtered.entry("split_full".into()).or_default() += lines.unread();
        }
        rejected_before += count_missing_rows(&reader, &mut counts, &mut rejects)?;
        let (sha256, bytes) = reader.finish()?;
        if f.origin.is_none() {
            inputs.push(InputFile {
                path: f.path.display().to_string(),
                format: format.unwrap_or_else(|| format_name(f.format, None)),
                gzip: f.gzip,
                bytes,
                sha256,
                class: class.to_string(),
                label_from: f.label_from,
            });
        }
    }
    let now = counter.load(Ordering::Relaxed);
    progress
        .bytes_read
        .fetch_add(now - reported, Ordering::Relaxed);
    for (s, w) in spills.iter_mut().enumerate() {
        w.flush().map_err(io_err(&tmp.join(SPLITS[s])))?;
    }
    rejects.finish()?;
    Ok(GroupOut {
        counts,
        inputs,
        per_split,
    })
}

/// Counts the rows a `.npy` header announces beyond the end of the file's data as `truncated`
/// rejects (both read and rejected), listed as one line; returns how many.
fn count_missing_rows(
    reader: &UnitReader,
    counts: &mut ClassCounts,
    rejects: &mut RejectLog,
) -> Result<u64, ConvertError> {
    let Some((announced, found)) = reader.missing_rows() else {
        return Ok(0);
    };
    let missing = announced - found;
    counts.read += missing;
    *counts.rejected.entry("truncated".into()).or_default() += missing;
    rejects.line(serde_json::json!({
        "file": reader.path.display().to_string(),
        "record": found + 1,
        "records": missing,
        "reason": "truncated",
        "detail": format!(
            "the header announces {announced} rows but the file ends after {found}: \
             rows {}..={announced} ({missing}) are missing",
            found + 1
        ),
    }))?;
    Ok(missing)
}

/// Adds a batch's rejects to the run's count and fails once the reject rate is certain to exceed
/// `--max-reject-rate`. The rule: with R records rejected so far and B = [`Plan::max_records`]
/// (at least every record the run can parse), the final rate is at least R / B, so R > rate * B
/// already decides the run. (Missing `.npy` rows, added to both read and rejected, can only
/// raise the final rate, so they are left out of R.)
fn check_reject_bound(
    cfg: &ConvertConfig,
    plan: &Plan,
    progress: &Progress,
    new_rejects: u64,
) -> Result<(), ConvertError> {
    let rejected = progress.rejected.fetch_add(new_rejects, Ordering::Relaxed) + new_rejects;
    if rejected as f64 > cfg.max_reject_rate * plan.max_records as f64 {
        return Err(ConvertError::RejectRateCertain {
            rejected,
            bound: plan.max_records,
            max: cfg.max_reject_rate * 100.0,
        });
    }
    Ok(())
}

/// Shard file name, as TensorFlow's sharded writers name them.
pub fn shard_name(split: &str, index: usize, total: usize) -> String {
    format!("{split}-{index:05}-of-{total:05}")
}

/// A batch of spilled drawings in shard order: their records back to back, and each one's class
/// and record length.
type SpillBatch = (Vec<u8>, Vec<(usize, usize)>);

/// Phase 2 for one split: draws the spilled drawings of all classes in a seeded uniformly random
/// order and writes them round-robin to the split's shards, rasterising and encoding each on the
/// way. Three stages overlap: a thread reads the picked records from the spill files, the
/// calling thread preprocesses and encodes each batch on the rayon pool, and a thread writes the
/// encoded records. Batches go round through bounded channels, so memory stays at a few batches.
/// Returns the shard files (written, being synced, not yet renamed) and, per class, how many
/// drawings had their stroke features cut.
fn write_split(
    cfg: &ConvertConfig,
    split: usize,
    counts: &[[u64; 3]],
    tmp: &Path,
    progress: &Progress,
) -> Result<(Vec<PendingShard>, Vec<u64>), ConvertError> {
    let name = SPLITS[split];
    let dir = tmp.join(name);
    let mut readers = Vec::with_capacity(counts.len());
    let mut left: Vec<u64> = counts.iter().map(|c| c[split]).collect();
    for label in 0..counts.len() {
        let p = dir.join(format!("{label}.rec"));
        readers.push(BufReader::with_capacity(
            1 << 13,
            File::open(&p).map_err(io_err(&p))?,
        ));
    }
    let n = cfg.shards;
    let (first, total_shards) = ShardOwner::of(cfg).range();
    let mut writers = Vec::with_capacity(n);
    let mut files = Vec::with_capacity(n);
    for i in 0..n {
        let shard = shard_name(name, first + i, total_shards);
        let final_path = cfg.output.join(&shard);
        let tmp_path = final_path.with_file_name(format!("{shard}.tmp"));
        writers.push(BufWriter::with_capacity(
            1 << 16,
            File::create(&tmp_path).map_err(io_err(&tmp_path))?,
        ));
        files.push((tmp_path, final_path, 0u64, 0u64));
    }
    // Workers interleave with their own streams (the single process keeps its seed as it was).
    let worker_mix = cfg.worker.map_or(0, |w| mix64(w.index as u64 + (1 << 32)));
    let mut rng = ChaCha8Rng::seed_from_u64(mix64(cfg.seed ^ mix64(split as u64 + 1) ^ worker_mix));
    let mut total: u64 = left.iter().sum();
    let mut truncated = vec![0u64; counts.len()];
    const BATCH: usize = 512;
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<SpillBatch>(2);
    let (empty_tx, empty_rx) = std::sync::mpsc::sync_channel::<SpillBatch>(4);
    let (enc_tx, enc_rx) = std::sync::mpsc::sync_channel::<Vec<EncodedChunk>>(2);
    for _ in 0..3 {
        let _ = empty_tx.send((Vec::with_capacity(BATCH * 512), Vec::with_capacity(BATCH)));
    }
    let result = std::thread::scope(|scope| -> Result<(), ConvertError> {
        let files = &mut files;
        let writers = &mut writers;
        let dir = &dir;
        let writer = scope.spawn(move || -> Result<(), ConvertError> {
            for chunks in enc_rx {
                for chunk in chunks {
                    // Whole chunks (~80 KB) are larger than the writer's buffer, so they go
                    // to the file as they are, with no copy.
                    let shard = chunk.shard;
                    writers[shard]
                        .write_all(&chunk.bytes)
                        .map_err(io_err(&files[shard].0))?;
                    files[shard].2 += chunk.records.len() as u64;
                    files[shard].3 += chunk.bytes.len() as u64;
                    progress
                        .examples_written
                        .fetch_add(chunk.records.len() as u64, Ordering::Relaxed);
                }
            }
            Ok(())
        });
        let reader = scope.spawn(move || -> Result<(), ConvertError> {
            while total > 0 {
                check_cancel(progress)?;
                let Ok((mut data, mut index)) = empty_rx.recv() else {
                    break; // the encoder stopped on an error, reported by it
                };
                data.clear();
                index.clear();
                while total > 0 && index.len() < BATCH {
                    // Weighted pick: every ordering of the remaining records is equally likely.
                    let mut r = rng.random_range(0..total);
                    let mut c = 0;
                    while r >= left[c] {
                        r -= left[c];
                        c += 1;
                    }
                    left[c] -= 1;
                    total -= 1;
                    let len = spill::read_record(&mut readers[c], &mut data)
                        .map_err(io_err(&dir.join(format!("{c}.rec"))))?;
                    index.push((c, len));
                }
                if full_tx.send((data, index)).is_err() {
                    break;
                }
            }
            Ok(())
        });
        let mut encode = || -> Result<(), ConvertError> {
            // Index (in shard order) of the batch's first record: record k goes to shard k % n.
            let mut k0 = 0usize;
            for (data, index) in full_rx.iter() {
                let mut offsets = Vec::with_capacity(index.len());
                let mut at = 0;
                for &(_, len) in &index {
                    offsets.push(at);
                    at += len;
                }
                // Tasks: each shard's records of this batch, in order, in runs of ENCODE_CHUNK.
                let mut tasks: Vec<(usize, Vec<usize>)> = Vec::new();
                for shard in 0..n {
                    let first = (shard + n - k0 % n) % n;
                    let mine: Vec<usize> = (first..index.len()).step_by(n).collect();
                    for run in mine.chunks(ENCODE_CHUNK) {
                        tasks.push((shard, run.to_vec()));
                    }
                }
                k0 += index.len();
                let chunks: Vec<Result<EncodedChunk, ConvertError>> = tasks
                    .par_iter()
                    .map(|(shard, run)| {
                        let mut out = EncodedChunk {
                            shard: *shard,
                            bytes: Vec::with_capacity(run.len() * 5300),
                            records: Vec::with_capacity(run.len()),
                        };
                        for &i in run {
                            let (label, len) = index[i];
                            let rec = &data[offsets[i]..offsets[i] + len];
                            let d = spill::decode(rec)
                                .map_err(io_err(&dir.join(format!("{label}.rec"))))?;
                            let p = preprocess(&d.ink, &cfg.features)?;
                            let cut = p.strokes.as_ref().is_some_and(|s| s.truncated);
                            append_record(&mut out.bytes, |b| {
                                encode_example_into(&d, label as i64, &p, &cfg.features, b)
                            });
                            out.records.push((label, cut));
                        }
                        Ok(out)
                    })
                    .collect();
                let chunks = chunks.into_iter().collect::<Result<Vec<_>, _>>()?;
                for c in &chunks {
                    for &(label, cut) in &c.records {
                        truncated[label] += cut as u64;
                    }
                }
                // The reader may have stopped on an error: then nobody wants the buffer back.
                let _ = empty_tx.send((data, index));
                if enc_tx.send(chunks).is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
            Ok(())
        };
        let encode_result = encode();
        // Unblock the other stages whatever happened, then collect their results.
        drop(full_rx);
        drop(empty_tx);
        drop(enc_tx);
        let read_result = reader.join().expect("spill reader thread panicked");
        let write_result = writer.join().expect("shard writer thread panicked");
        encode_result.and(read_result).and(write_result)
    });
    result?;
    // Flush every shard and start its fsync in the background: the later splits are encoded
    // while the kernel writes this one to disk. `finish_shards` waits for them.
    let mut pending = Vec::with_capacity(n);
    for (w, (tmp_path, final_path, examples, bytes)) in writers.into_iter().zip(files) {
        let file = w.into_inner().map_err(|e| ConvertError::Io {
            path: tmp_path.clone(),
            source: e.into_error(),
        })?;
        let sync = std::thread::spawn(move || file.sync_all());
        pending.push(PendingShard {
            tmp_path,
            final_path,
            examples,
            bytes,
            sync,
        });
    }
    Ok((pending, truncated))
}

/// A shard written under its temporary name, its fsync running.
struct PendingShard {
    tmp_path: PathBuf,
    final_path: PathBuf,
    examples: u64,
    bytes: u64,
    sync: std::thread::JoinHandle<io::Result<()>>,
}

/// Waits until every shard is on disk, then gives each its final name (nothing is renamed unless
/// every shard of every split was written and synced).
fn finish_shards(
    splits: Vec<(usize, Vec<PendingShard>)>,
) -> Result<BTreeMap<String, Vec<ShardFile>>, ConvertError> {
    let mut first_err = None;
    let mut done = Vec::with_capacity(splits.len());
    for (s, shards) in splits {
        let mut files = Vec::with_capacity(shards.len());
        for p in shards {
            let r = p.sync.join().expect("fsync thread panicked");
            if let (Err(e), None) = (r, &first_err) {
                first_err = Some(ConvertError::Io {
                    path: p.tmp_path.clone(),
                    source: e,
                });
            }
            files.push((p.tmp_path, p.final_path, p.examples, p.bytes));
        }
        done.push((s, files));
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let mut shards = BTreeMap::new();
    for (s, files) in done {
        let mut out = Vec::with_capacity(files.len());
        for (tmp_path, final_path, examples, bytes) in files {
            fs::rename(&tmp_path, &final_path).map_err(io_err(&final_path))?;
            // Test hook: crash at the worst moment (a shard looks complete, the run is not).
            if std::env::var_os("QUICKDRAW_FAULT").is_some_and(|v| v == "convert-after-first-shard")
            {
                std::process::abort();
            }
            let file = final_path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            out.push(ShardFile {
                file,
                examples,
                bytes,
            });
        }
        shards.insert(SPLITS[s].to_string(), out);
    }
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(inputs: Vec<PathBuf>, output: PathBuf) -> ConvertConfig {
        ConvertConfig {
            inputs,
            output,
            classes: None,
            label_from: None,
            split: SplitPolicy::Fractions {
                fractions: [1.0, 0.0, 0.0],
            },
            shards: 1,
            features: FeatureSpec::default(),
            seed: 0,
            include_unrecognized: true,
            max_reject_rate: 0.5,
            max_listed_rejects: 100,
            tool: "test".into(),
            worker: None,
        }
    }

    /// A file of synthetic drawings of classes 0 and 1 alternating, as a request log or an
    /// export would mix them, with one line that has no word (line 4).
    fn mixed_file(dir: &Path) -> (PathBuf, [String; 2]) {
        let synth = crate::synth::SynthConfig {
            classes: 2,
            per_class: 10,
            ..Default::default()
        };
        let names = synth.class_names();
        let a: Vec<Drawing> = crate::synth::synth_class(0, &synth).collect();
        let b: Vec<Drawing> = crate::synth::synth_class(1, &synth).collect();
        let mut text = String::new();
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            text += &(ingest::ndjson::to_line(x) + "\n");
            if i == 1 {
                text += "{\"drawing\":[[[1,2],[3,4]]]}\n";
            }
            text += &(ingest::ndjson::to_line(y) + "\n");
        }
        let p = dir.join("requests-2026-12-01.ndjson");
        std::fs::write(&p, text).unwrap();
        (p, [names[0].to_string(), names[1].to_string()])
    }

    #[test]
    fn a_mixed_file_is_labelled_by_each_records_word() {
        let dir = tempfile::tempdir().unwrap();
        let (input, names) = mixed_file(dir.path());
        let cfg = config(vec![input.clone()], dir.path().join("out"));
        let plan = plan(&cfg).unwrap();
        assert_eq!(plan.mixed.len(), 1, "auto finds the mixed file");
        let r = run(&cfg, &plan, &Progress::default()).unwrap();
        let m = &r.manifest;
        assert_eq!(m.classes, names.to_vec());
        assert_eq!((m.totals.read, m.totals.kept), (21, 20));
        assert_eq!(m.per_class[&names[0]].kept, 10);
        assert_eq!(m.per_class[&names[1]].kept, 10);
        // The manifest lists the original file (not the scratch files), labelled by word.
        assert_eq!(m.inputs.len(), 1);
        assert_eq!(m.inputs[0].path, input.display().to_string());
        assert_eq!(m.inputs[0].label_from, LabelFrom::Word);
        // The record without a word is rejected at its own line of the original file.
        let rejects = std::fs::read_to_string(&r.rejects_path).unwrap();
        let line: serde_json::Value = serde_json::from_str(rejects.trim()).unwrap();
        assert_eq!(line["file"], input.display().to_string());
        assert_eq!(line["line"], 4);
        assert_eq!(line["reason"], "missing_field");
        let check = crate::manifest::verify(&cfg.output).unwrap();
        assert!(check.ok, "{:?}", check.problems);
    }

    #[test]
    fn quotas_on_a_mixed_file_keep_the_reject_rate_honest() {
        let dir = tempfile::tempdir().unwrap();
        let (input, names) = mixed_file(dir.path());
        let mut cfg = config(vec![input], dir.path().join("out"));
        cfg.split = SplitPolicy::Counts { counts: [3, 0, 0] };
        let r = run(&cfg, &plan(&cfg).unwrap(), &Progress::default()).unwrap();
        let t = &r.manifest.totals;
        // Every line is read once: 6 kept, 14 past the quotas, the one without a word.
        assert_eq!((t.read, t.kept, t.rejected_total()), (21, 6, 1));
        assert_eq!(t.filtered["split_full"], 14);
        assert_eq!(r.manifest.per_class[&names[0]].read, 10);
        let check = crate::manifest::verify(&cfg.output).unwrap();
        assert!(check.ok, "{:?}", check.problems);
    }

    #[test]
    fn classes_filter_a_mixed_file_and_file_rule_rejects_it() {
        let dir = tempfile::tempdir().unwrap();
        let (input, names) = mixed_file(dir.path());
        // --classes keeps one word; the other's records are counted as filtered, not lost.
        let mut cfg = config(vec![input.clone()], dir.path().join("one"));
        cfg.classes = Some(vec![names[1].clone()]);
        cfg.label_from = Some(LabelFrom::Word);
        let r = run(&cfg, &plan(&cfg).unwrap(), &Progress::default()).unwrap();
        assert_eq!(r.manifest.classes, vec![names[1].clone()]);
        assert_eq!(r.manifest.totals.kept, 10);
        assert_eq!(r.manifest.totals.filtered["class_not_selected"], 10);
        assert_eq!(r.manifest.totals.read, 21);
        // A rejected mismatch of a mixed file, with `file`: its name is no class of its records.
        let mut cfg = config(vec![input], dir.path().join("strict"));
        cfg.label_from = Some(LabelFrom::File);
        let e = run(&cfg, &plan(&cfg).unwrap(), &Progress::default()).unwrap_err();
        assert!(matches!(e, ConvertError::TooManyRejects { .. }), "{e}");
    }

    #[test]
    fn bitmaps_at_another_size_are_named_in_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let mut npy = Vec::new();
        ingest::npy::write_header(2, &mut npy);
        npy.extend_from_slice(&[0u8; 2 * 784]);
        std::fs::write(dir.path().join("cat.npy"), &npy).unwrap();
        let mut cfg = ConvertConfig {
            inputs: vec![dir.path().to_path_buf()],
            output: dir.path().join("out"),
            classes: None,
            label_from: None,
            split: SplitPolicy::default(),
            shards: 1,
            features: FeatureSpec::default(),
            seed: 0,
            include_unrecognized: false,
            max_reject_rate: 0.05,
            max_listed_rejects: 10,
            tool: "test".into(),
            worker: None,
        };
        let w = plan(&cfg).unwrap().warnings;
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("resized to 64x64") && w[0].contains("--size 28"),
            "{w:?}"
        );
        cfg.features.raster.size = 28;
        assert!(plan(&cfg).unwrap().warnings.is_empty());
    }

    #[test]
    fn shard_names() {
        assert_eq!(shard_name("train", 3, 10), "train-00003-of-00010");
        assert!(is_shard_name("train-00003-of-00010"));
        assert!(is_shard_name("eval-00000-of-00001.tmp"));
        assert!(!is_shard_name("train-3-of-10"));
        assert!(!is_shard_name("my-00003-of-00010"));
        assert!(!is_shard_name("manifest.json"));
    }
}
