//! The input pipeline: the lecture's `input_fn` (list files, interleave, shuffle, repeat, batch,
//! prefetch), done right.
//!
//! - [`DataSource::open`] expands a glob (`data/zoo/train-*`), reads `manifest.json` and
//!   `labels.txt` next to the shards (the feature spec and class names come from there, never
//!   re-guessed) and counts the records of every shard (a header scan that checks each length CRC).
//! - [`ItemStream`] is the deterministic example order: per epoch, the file order is shuffled and
//!   `cycle_length` files are read interleaved (one record from each in turn) through a shuffle
//!   buffer of `shuffle_buffer` records; the buffer is drained at the end of every epoch, so an
//!   epoch emits every example exactly once. The random choices depend only on `(seed, epoch)`
//!   and on buffer sizes (never on the records), so a [`StreamPosition`] (epoch, examples emitted
//!   in it) is enough to resume the stream exactly where it was.
//! - [`Pipeline::spawn`] runs the stream on a background thread: records are read (both CRCs
//!   verified), batched, decoded in parallel with rayon, checked against the classes in
//!   `labels.txt`, and queued `prefetch` batches ahead of the model; [`Pipeline::wait`] is the
//!   time the consumer spent blocked waiting for data.

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use quickdraw_data::example::Example;
use quickdraw_data::features::{self, FeatureSpec, PIXEL_SCALE, decode_example, decode_image};
use quickdraw_data::manifest::{
    DatasetManifest, LABELS_FILE, MANIFEST_FILE, REJECTS_FILE, read_labels,
};
use quickdraw_data::storage;
use quickdraw_data::strokes::StrokeFeatures;
use quickdraw_data::tfrecord::{TfRecordReader, count_records};
use quickdraw_data::wide::{TRAIN_MISSING_RATE, WideSpec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::augment::{Augment, example_seed};
use crate::error::{Result, TrainError};
use crate::model::ModelConfig;

/// Default number of records in the example-level shuffle buffer.
pub const DEFAULT_SHUFFLE_BUFFER: usize = 10_000;
/// Default number of shards read at once (interleaved record by record).
pub const DEFAULT_CYCLE_LENGTH: usize = 4;
/// Default number of decoded batches queued ahead of the model.
pub const DEFAULT_PREFETCH: usize = 4;

/// A set of TFRecord shards with the dataset manifest and labels found next to them.
#[derive(Debug, Clone)]
pub struct DataSource {
    /// The pattern the files came from.
    pub pattern: String,
    /// Shard files, sorted by path.
    pub files: Vec<PathBuf>,
    /// Records per file (same order as `files`).
    pub counts: Vec<u64>,
    /// The directory holding `manifest.json` and `labels.txt`.
    pub dir: PathBuf,
    pub manifest: DatasetManifest,
    /// Class names from `labels.txt` (label = line index).
    pub labels: Vec<String>,
}

/// Separates the entries of a file list in one `pattern` string ([`file_list`] joins them,
/// [`DataSource::open`] splits them): a newline, which no typed file name or glob contains.
pub const FILE_LIST_SEPARATOR: char = '\n';

/// The values of a `--train-files` / `--eval-files` flag as the one string a request carries
/// (see [`DataSource::open`]). Each value is a shard file, a glob pattern (`'data/zoo/train-*'`),
/// or a dataset directory, which stands for its `split` shards as listed in its manifest.json.
/// One file or pattern is passed on unchanged.
pub fn file_list<S: AsRef<str>>(values: &[S], split: &str) -> Result<String> {
    let mut entries: Vec<String> = Vec::new();
    for v in values {
        let v = v.as_ref();
        let dir = Path::new(v);
        if !storage::is_dir(dir) || storage::is_file(dir) {
            entries.push(v.to_string());
            continue;
        }
        let m = load_manifest(dir)?;
        let shards = m
            .shards
            .get(split)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                let listed: Vec<&str> = m
                    .shards
                    .iter()
                    .filter(|(_, s)| !s.is_empty())
                    .map(|(k, _)| k.as_str())
                    .collect();
                TrainError::Config(format!(
                    "{}: the dataset has no {split} shards ({} lists: {})",
                    dir.display(),
                    dir.join(MANIFEST_FILE).display(),
                    if listed.is_empty() {
                        "none".to_string()
                    } else {
                        listed.join(", ")
                    }
                ))
            })?;
        for s in shards {
            // Listed names are literal paths, never patterns.
            entries.push(glob::Pattern::escape(&dir.join(&s.file).to_string_lossy()));
        }
    }
    if let Some(bad) = entries.iter().find(|e| e.contains(FILE_LIST_SEPARATOR)) {
        return Err(TrainError::Config(format!(
            "{bad:?}: file names with a line break are not supported"
        )));
    }
    Ok(entries.join(&FILE_LIST_SEPARATOR.to_string()))
}

impl DataSource {
    /// Expands `pattern` (shard files or glob patterns, several separated by
    /// [`FILE_LIST_SEPARATOR`], as [`file_list`] writes them) and loads the manifest and labels
    /// next to the matched shards.
    pub fn open(pattern: &str) -> Result<Self> {
        let mut paths: Vec<PathBuf> = Vec::new();
        for p in pattern.split(FILE_LIST_SEPARATOR) {
            let matched = storage::glob(p).map_err(|e| match e {
                storage::GlobError::Pattern(source) => TrainError::Pattern {
                    pattern: p.to_string(),
                    source,
                },
                storage::GlobError::Io(e) => TrainError::io(p)(e),
            })?;
            let before = paths.len();
            // Object-store listings hold only objects; local matches may be directories.
            paths.extend(
                matched
                    .into_iter()
                    .filter(|p| storage::is_url(p) || p.is_file()),
            );
            // Each value must match: a typo in one of several must not go unnoticed.
            if paths.len() == before {
                return Err(TrainError::NoFiles(p.to_string()));
            }
        }
        let mut files: Vec<PathBuf> = paths
            .into_iter()
            .filter(|p| {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                ![MANIFEST_FILE, LABELS_FILE, REJECTS_FILE].contains(&name.as_str())
            })
            .collect();
        files.sort();
        files.dedup();
        if files.is_empty() {
            return Err(TrainError::NoFiles(pattern.to_string()));
        }
        let dir_of = |p: &Path| match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dir = dir_of(&files[0]);
        // Each directory's manifest, read once.
        let mut manifests: BTreeMap<PathBuf, DatasetManifest> = BTreeMap::new();
        for f in &files {
            let d = dir_of(f);
            if !manifests.contains_key(&d) {
                let m = load_manifest(&d)?;
                manifests.insert(d, m);
            }
        }
        let manifest = manifests[&dir].clone();
        for (d, other) in &manifests {
            if other.features != manifest.features || other.classes != manifest.classes {
                return Err(TrainError::Config(format!(
                    "{pattern:?} matches shards of two different datasets ({} and {}): classes or feature specs differ",
                    dir.display(),
                    d.display()
                )));
            }
        }
        let labels_path = dir.join(LABELS_FILE);
        if !storage::is_file(&labels_path) {
            return Err(TrainError::Config(format!(
                "{}: labels.txt is missing next to the shards (written by `quickdraw convert`)",
                labels_path.display()
            )));
        }
        let labels = read_labels(&labels_path)?;
        if labels != manifest.classes {
            return Err(TrainError::Config(format!(
                "{} ({} classes) disagrees with the classes of {} ({} classes)",
                labels_path.display(),
                labels.len(),
                dir.join(MANIFEST_FILE).display(),
                manifest.classes.len()
            )));
        }
        // Local shards are counted by walking their record headers. An object would have to be
        // downloaded whole for that, so its count is the manifest's once its size matches (its
        // records' CRCs are checked as they are read, and each epoch's count at its end).
        let counts = files
            .par_iter()
            .map(|f| {
                let d = dir_of(f);
                let n = match storage::is_url(f) {
                    false => count_records(f)?,
                    true => manifests[&d].shard(&file_name(f)).map_or(0, |s| s.examples),
                };
                check_listed(f, n, &d, &manifests[&d])?;
                Ok(n)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DataSource {
            pattern: pattern.to_string(),
            files,
            counts,
            dir,
            manifest,
            labels,
        })
    }

    /// The same source restricted to the files whose index (in sorted order) `keep` accepts.
    pub fn subset(&self, keep: impl Fn(usize) -> bool) -> DataSource {
        let (files, counts) = self
            .files
            .iter()
            .zip(&self.counts)
            .enumerate()
            .filter(|(i, _)| keep(*i))
            .map(|(_, (f, c))| (f.clone(), *c))
            .unzip();
        DataSource {
            files,
            counts,
            ..self.clone()
        }
    }

    /// The feature spec the shards were written with.
    pub fn spec(&self) -> &FeatureSpec {
        &self.manifest.features
    }

    /// Total number of records (one epoch).
    pub fn n_examples(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Image side in pixels.
    pub fn image_size(&self) -> usize {
        self.manifest.features.raster.size as usize
    }
}

/// Refuses a file that the manifest of its directory does not list as one of its shards, with
/// the same size and record count: a stray shard of another dataset (or a modified one) must
/// never be trained or evaluated on silently.
fn check_listed(file: &Path, records: u64, dir: &Path, m: &DatasetManifest) -> Result<()> {
    let name = file_name(file);
    let manifest = dir.join(MANIFEST_FILE);
    let Some(listed) = m.shard(&name) else {
        return Err(TrainError::Config(format!(
            "{}: not a shard of this dataset ({} lists no such file); it may come from another dataset: remove it or narrow the file pattern",
            file.display(),
            manifest.display()
        )));
    };
    let bytes = storage::len(file).map_err(TrainError::io(file))?;
    if listed.bytes != bytes || listed.examples != records {
        return Err(TrainError::Config(format!(
            "{}: {bytes} bytes and {records} records, but {} lists {} bytes and {} records for it: the shard was modified or comes from another dataset",
            file.display(),
            manifest.display(),
            listed.bytes,
            listed.examples
        )));
    }
    Ok(())
}

fn file_name(file: &Path) -> String {
    file.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn load_manifest(dir: &Path) -> Result<DatasetManifest> {
    let path = dir.join(MANIFEST_FILE);
    if !storage::is_file(&path) {
        return Err(TrainError::NoManifest {
            dir: dir.to_path_buf(),
            path,
        });
    }
    Ok(DatasetManifest::load(&path)?)
}

/// Where a stream is: `offset` examples of epoch `epoch` have been emitted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StreamPosition {
    pub epoch: u64,
    pub offset: u64,
}

/// One serialized example with where it came from (for error messages).
#[derive(Debug, Clone)]
pub struct RawItem {
    pub bytes: Vec<u8>,
    pub file: u32,
    pub offset: u64,
}

/// Reads the files of one epoch, `cycle` of them at a time, one record from each in turn.
struct EpochReader {
    files: Arc<Vec<PathBuf>>,
    order: Vec<usize>,
    next_file: usize,
    open: Vec<(usize, TfRecordReader<BufReader<storage::Reader>>)>,
    cursor: usize,
    cycle: usize,
}

impl EpochReader {
    fn new(files: Arc<Vec<PathBuf>>, order: Vec<usize>, cycle: usize) -> Self {
        EpochReader {
            files,
            order,
            next_file: 0,
            open: Vec::new(),
            cursor: 0,
            cycle: cycle.max(1),
        }
    }

    fn next(&mut self) -> Result<Option<RawItem>> {
        loop {
            while self.open.len() < self.cycle && self.next_file < self.order.len() {
                let fi = self.order[self.next_file];
                self.next_file += 1;
                self.open.push((fi, TfRecordReader::open(&self.files[fi])?));
            }
            if self.open.is_empty() {
                return Ok(None);
            }
            if self.cursor >= self.open.len() {
                self.cursor = 0;
            }
            let (fi, reader) = &mut self.open[self.cursor];
            let offset = reader.offset();
            let mut bytes = Vec::new();
            if reader.read_into(&mut bytes)? {
                let item = RawItem {
                    bytes,
                    file: *fi as u32,
                    offset,
                };
                self.cursor += 1;
                return Ok(Some(item));
            }
            self.open.remove(self.cursor);
        }
    }
}

/// How examples are ordered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrderOptions {
    /// Shuffle the file order per epoch and pass records through the shuffle buffer.
    pub shuffle: bool,
    /// Records held in the shuffle buffer (1 = no example-level shuffling).
    pub shuffle_buffer: usize,
    /// Files read at once, interleaved.
    pub cycle_length: usize,
    /// Start the next epoch when one ends (training) instead of stopping (evaluation).
    pub repeat: bool,
    pub seed: u64,
}

impl OrderOptions {
    /// Training order: shuffled, repeated.
    pub fn train(seed: u64, shuffle_buffer: usize) -> Self {
        OrderOptions {
            shuffle: true,
            shuffle_buffer,
            cycle_length: DEFAULT_CYCLE_LENGTH,
            repeat: true,
            seed,
        }
    }
    /// Evaluation order: every file in name order, one pass.
    pub fn eval() -> Self {
        OrderOptions {
            shuffle: false,
            shuffle_buffer: 1,
            cycle_length: 1,
            repeat: false,
            seed: 0,
        }
    }
}

/// The deterministic example stream (synchronous; [`Pipeline`] runs it on a thread).
pub struct ItemStream {
    files: Arc<Vec<PathBuf>>,
    epoch_size: u64,
    opts: OrderOptions,
    epoch: u64,
    emitted: u64,
    skip: u64,
    reader: Option<EpochReader>,
    exhausted: bool,
    buffer: Vec<RawItem>,
    rng: ChaCha8Rng,
    started: bool,
}

impl ItemStream {
    /// A stream over `src` starting at `start` (the examples before it are read but dropped).
    pub fn new(src: &DataSource, opts: OrderOptions, start: StreamPosition) -> Result<Self> {
        if src.n_examples() == 0 {
            return Err(TrainError::Config(format!(
                "{:?}: the shards hold no examples",
                src.pattern
            )));
        }
        Ok(ItemStream {
            files: Arc::new(src.files.clone()),
            epoch_size: src.n_examples(),
            opts,
            epoch: start.epoch,
            emitted: 0,
            skip: start.offset,
            reader: None,
            exhausted: false,
            buffer: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(opts.seed),
            started: false,
        })
    }

    /// The position after the last emitted example.
    pub fn position(&self) -> StreamPosition {
        if self.emitted >= self.epoch_size {
            StreamPosition {
                epoch: self.epoch + 1,
                offset: 0,
            }
        } else {
            StreamPosition {
                epoch: self.epoch,
                offset: self.emitted,
            }
        }
    }

    fn start_epoch(&mut self) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.opts.seed);
        rng.set_stream(self.epoch);
        let mut order: Vec<usize> = (0..self.files.len()).collect();
        if self.opts.shuffle {
            for i in (1..order.len()).rev() {
                let j = rng.random_range(0..=i);
                order.swap(i, j);
            }
        }
        self.rng = rng;
        self.reader = Some(EpochReader::new(
            self.files.clone(),
            order,
            self.opts.cycle_length,
        ));
        self.exhausted = false;
        self.buffer.clear();
        self.emitted = 0;
        self.started = true;
    }

    fn end_epoch(&mut self) -> Result<()> {
        if self.emitted != self.epoch_size {
            return Err(TrainError::Config(format!(
                "epoch {} emitted {} examples but the shards held {} when counted (files changed while training?)",
                self.epoch, self.emitted, self.epoch_size
            )));
        }
        self.reader = None;
        self.epoch += 1;
        self.emitted = 0;
        Ok(())
    }

    /// The next example, or `None` at the end (never, when repeating).
    pub fn next_item(&mut self) -> Result<Option<RawItem>> {
        loop {
            if self.reader.is_none() {
                if self.started && !self.opts.repeat {
                    return Ok(None);
                }
                self.start_epoch();
            }
            let item = if self.opts.shuffle && self.opts.shuffle_buffer > 1 {
                let reader = self.reader.as_mut().expect("epoch started");
                while !self.exhausted && self.buffer.len() < self.opts.shuffle_buffer {
                    match reader.next()? {
                        Some(it) => self.buffer.push(it),
                        None => self.exhausted = true,
                    }
                }
                if self.buffer.is_empty() {
                    None
                } else {
                    let i = self.rng.random_range(0..self.buffer.len());
                    Some(self.buffer.swap_remove(i))
                }
            } else {
                self.reader.as_mut().expect("epoch started").next()?
            };
            match item {
                None => self.end_epoch()?,
                Some(it) => {
                    self.emitted += 1;
                    if self.skip > 0 {
                        self.skip -= 1;
                        continue;
                    }
                    return Ok(Some(it));
                }
            }
        }
    }
}

/// Separates the wide columns' draws from the augmentation's (same example, same seed).
const WIDE_SALT: u64 = 0x5749_4445_5f44_524f;

/// What to decode from each example.
#[derive(Debug, Clone)]
pub struct DecodeOptions {
    pub spec: FeatureSpec,
    /// Labels must lie in `0..n_classes`.
    pub n_classes: usize,
    /// Decode the stroke features (sequence models).
    pub strokes: bool,
    /// Build the metadata vector of this layout (wide & deep).
    pub wide: Option<WideSpec>,
}

impl DecodeOptions {
    /// What `model` reads, from examples written with `spec`.
    pub fn for_model(spec: FeatureSpec, model: &ModelConfig) -> Self {
        DecodeOptions {
            spec,
            n_classes: model.n_classes,
            strokes: model.kind.uses_strokes(),
            wide: model.wide.filter(|_| model.kind.uses_wide()),
        }
    }

    /// Images and labels only.
    pub fn images(spec: FeatureSpec, n_classes: usize) -> Self {
        DecodeOptions {
            spec,
            n_classes,
            strokes: false,
            wide: None,
        }
    }
}

/// One decoded example.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub label: i64,
    /// `size * size` grey values.
    pub image: Vec<u8>,
    pub key_id: u64,
    pub strokes: Option<StrokeFeatures>,
    /// The metadata vector (wide & deep).
    pub wide: Option<Vec<f32>>,
}

/// Decodes one example (used by the pipeline and by `predict`).
pub fn decode_item(files: &[PathBuf], item: &RawItem, opts: &DecodeOptions) -> Result<Decoded> {
    let path = || files.get(item.file as usize).cloned().unwrap_or_default();
    let err = |source| TrainError::Decode {
        path: path(),
        offset: item.offset,
        source,
    };
    let d = if opts.strokes {
        let d = decode_example(&item.bytes, &opts.spec).map_err(err)?;
        Decoded {
            label: d.label,
            image: d.image,
            key_id: d.key_id,
            strokes: d.strokes,
            wide: None,
        }
    } else {
        let ex = Example::from_bytes(&item.bytes).map_err(|e| err(e.into()))?;
        let wide = match opts.wide {
            Some(w) => Some(w.vector(&features::metadata(&ex).map_err(err)?)),
            None => None,
        };
        let image = decode_image(&ex, &opts.spec).map_err(err)?;
        let label = features::int64_feature(&ex, features::LABEL).map_err(err)?;
        let key_id = features::int64_feature(&ex, features::KEY_ID)
            .ok()
            .unwrap_or(0) as u64;
        Decoded {
            label,
            image,
            key_id,
            strokes: None,
            wide,
        }
    };
    if d.label < 0 || d.label >= opts.n_classes as i64 {
        return Err(TrainError::BadLabel {
            path: path(),
            offset: item.offset,
            label: d.label,
            n_classes: opts.n_classes,
        });
    }
    Ok(d)
}

/// Padded stroke sequences of a batch, the input of the sequence model.
#[derive(Debug, Clone, PartialEq)]
pub struct StrokeBatch {
    /// Time steps (the longest sequence of the batch, at least 1).
    pub steps: usize,
    /// `[batch, steps, 3]` (dx, dy, pen), zero after each sequence's length.
    pub forward: Vec<f32>,
    /// The same with every sequence reversed within its length (the backward direction).
    pub backward: Vec<f32>,
    /// `[batch, steps]`: 1.0 inside each sequence, 0.0 in the padding.
    pub mask: Vec<f32>,
    pub lens: Vec<usize>,
}

impl StrokeBatch {
    pub fn from_features(feats: &[&StrokeFeatures]) -> Self {
        let steps = feats
            .iter()
            .map(|f| f.len.min(f.dx.len()))
            .max()
            .unwrap_or(0)
            .max(1);
        let n = feats.len();
        let mut forward = vec![0.0; n * steps * 3];
        let mut backward = vec![0.0; n * steps * 3];
        let mut mask = vec![0.0; n * steps];
        let mut lens = Vec::with_capacity(n);
        for (b, f) in feats.iter().enumerate() {
            let len = f.len.min(f.dx.len()).min(f.dy.len()).min(f.pen.len());
            lens.push(len);
            for t in 0..len {
                let v = [f.dx[t], f.dy[t], f.pen[t]];
                let r = len - 1 - t;
                forward[(b * steps + t) * 3..][..3].copy_from_slice(&v);
                backward[(b * steps + r) * 3..][..3].copy_from_slice(&v);
                mask[b * steps + t] = 1.0;
            }
        }
        StrokeBatch {
            steps,
            forward,
            backward,
            mask,
            lens,
        }
    }
}

/// A decoded batch, ready to become tensors.
#[derive(Debug, Clone)]
pub struct Batch {
    pub size: usize,
    pub image_size: usize,
    /// `[size, 1, image_size, image_size]`, pixel values scaled by [`PIXEL_SCALE`].
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    pub key_ids: Vec<u64>,
    pub strokes: Option<StrokeBatch>,
    /// `[size, W]` metadata vectors (wide & deep), when every example has one.
    pub wide: Option<Vec<f32>>,
    /// Stream position after this batch (what a checkpoint records).
    pub position: StreamPosition,
}

impl Batch {
    /// Builds a batch from decoded examples.
    pub fn from_decoded(items: &[Decoded], image_size: usize, position: StreamPosition) -> Self {
        let px = image_size * image_size;
        let mut images = Vec::with_capacity(items.len() * px);
        for d in items {
            images.extend(features::model_pixels(&d.image));
        }
        let strokes = if items.iter().all(|d| d.strokes.is_some()) && !items.is_empty() {
            let feats: Vec<&StrokeFeatures> =
                items.iter().filter_map(|d| d.strokes.as_ref()).collect();
            Some(StrokeBatch::from_features(&feats))
        } else {
            None
        };
        let wide = (!items.is_empty() && items.iter().all(|d| d.wide.is_some())).then(|| {
            items
                .iter()
                .flat_map(|d| d.wide.iter().flatten().copied())
                .collect()
        });
        Batch {
            size: items.len(),
            image_size,
            images,
            labels: items.iter().map(|d| d.label).collect(),
            key_ids: items.iter().map(|d| d.key_id).collect(),
            strokes,
            wide,
            position,
        }
    }

    /// Image `i` back as grey bytes (for image summaries).
    pub fn image_u8(&self, i: usize) -> Vec<u8> {
        let px = self.image_size * self.image_size;
        self.images[i * px..(i + 1) * px]
            .iter()
            .map(|&v| (v / PIXEL_SCALE).round().clamp(0.0, 255.0) as u8)
            .collect()
    }
}

/// Everything the background pipeline needs.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub order: OrderOptions,
    pub decode: DecodeOptions,
    pub batch_size: usize,
    /// Start position (resume).
    pub start: StreamPosition,
    /// Batches decoded ahead of the consumer.
    pub prefetch: usize,
    /// Stop after this many batches.
    pub max_batches: Option<u64>,
    /// Training only: the augmentation of each image and the run's seed.
    pub augment: Option<(Augment, u64)>,
}

/// A background thread producing decoded batches.
pub struct Pipeline {
    rx: Receiver<Result<Batch>>,
    stop: Arc<AtomicBool>,
    wait: Duration,
    batches: u64,
}

impl Pipeline {
    /// Starts reading `src` on a background thread.
    pub fn spawn(src: &DataSource, opts: PipelineOptions) -> Result<Self> {
        if opts.batch_size == 0 {
            return Err(TrainError::Config("--batch-size must be at least 1".into()));
        }
        let stream = ItemStream::new(src, opts.order, opts.start)?;
        let (tx, rx) = sync_channel(opts.prefetch.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let files = Arc::new(src.files.clone());
        let image_size = src.image_size();
        let stop2 = stop.clone();
        std::thread::Builder::new()
            .name("quickdraw-input".into())
            .spawn(move || produce(stream, files, image_size, opts, tx, stop2))
            .map_err(|e| TrainError::Config(format!("cannot start the input thread: {e}")))?;
        Ok(Pipeline {
            rx,
            stop,
            wait: Duration::ZERO,
            batches: 0,
        })
    }

    /// The next batch; `Ok(None)` when a finite stream ends.
    pub fn next_batch(&mut self) -> Result<Option<Batch>> {
        let t = Instant::now();
        let r = self.rx.recv();
        self.wait += t.elapsed();
        match r {
            Ok(Ok(b)) => {
                self.batches += 1;
                Ok(Some(b))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(None),
        }
    }

    /// Total time spent blocked in [`next_batch`](Self::next_batch).
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// Batches received so far.
    pub fn batches(&self) -> u64 {
        self.batches
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn produce(
    mut stream: ItemStream,
    files: Arc<Vec<PathBuf>>,
    image_size: usize,
    opts: PipelineOptions,
    tx: SyncSender<Result<Batch>>,
    stop: Arc<AtomicBool>,
) {
    let mut sent = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) || opts.max_batches.is_some_and(|m| sent >= m) {
            return;
        }
        let mut items = Vec::with_capacity(opts.batch_size);
        while items.len() < opts.batch_size {
            match stream.next_item() {
                Ok(Some(it)) => items.push(it),
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
        if items.is_empty() {
            return;
        }
        let position = stream.position();
        let decoded: Result<Vec<Decoded>> = items
            .par_iter()
            .map(|it| decode_item(&files, it, &opts.decode))
            .collect();
        let decoded = decoded.map(|mut d| {
            if let Some((aug, seed)) = opts.augment.filter(|a| !a.0.is_none()) {
                d.par_iter_mut().enumerate().for_each(|(i, x)| {
                    let s = example_seed(seed, position.epoch, position.offset, i);
                    aug.apply(&mut x.image, image_size, s);
                });
            }
            // Training only (`augment` is set for training streams): the wide part's columns
            // are dropped at TRAIN_MISSING_RATE, so missing metadata at serving is familiar.
            if let (Some((_, seed)), Some(w)) = (opts.augment, opts.decode.wide) {
                d.par_iter_mut().enumerate().for_each(|(i, x)| {
                    let s = example_seed(seed ^ WIDE_SALT, position.epoch, position.offset, i);
                    if let Some(v) = x.wide.as_mut() {
                        w.drop_columns(v, TRAIN_MISSING_RATE, s);
                    }
                });
            }
            d
        });
        let batch = decoded.map(|d| Batch::from_decoded(&d, image_size, position));
        let failed = batch.is_err();
        if tx.send(batch).is_err() || failed {
            return;
        }
        sent += 1;
    }
}

/// The first `n` examples of `src` in file order, decoded for `model`, as one batch (no
/// augmentation): export's check sample, training's look at the wide part's metadata.
pub fn first_batch(src: &DataSource, model: &ModelConfig, n: usize) -> Result<Option<Batch>> {
    let mut p = Pipeline::spawn(
        src,
        PipelineOptions {
            order: OrderOptions::eval(),
            decode: DecodeOptions::for_model(*src.spec(), model),
            batch_size: n.max(1),
            start: StreamPosition::default(),
            prefetch: 1,
            max_batches: Some(1),
            augment: None,
        },
    )?;
    p.next_batch()
}

/// Counts the examples of each class in `src` (the baseline's prior), reading every record.
pub fn count_labels(src: &DataSource, n_classes: usize) -> Result<Vec<u64>> {
    let opts = DecodeOptions::images(*src.spec(), n_classes);
    let per_file = src
        .files
        .par_iter()
        .enumerate()
        .map(|(fi, path)| -> Result<Vec<u64>> {
            let mut counts = vec![0u64; n_classes];
            let mut r = TfRecordReader::open(path)?;
            let mut bytes = Vec::new();
            loop {
                let offset = r.offset();
                if !r.read_into(&mut bytes)? {
                    break;
                }
                let item = RawItem {
                    bytes: std::mem::take(&mut bytes),
                    file: fi as u32,
                    offset,
                };
                let ex = Example::from_bytes(&item.bytes).map_err(|e| TrainError::Decode {
                    path: path.clone(),
                    offset,
                    source: e.into(),
                })?;
                let label = features::int64_feature(&ex, features::LABEL).map_err(|source| {
                    TrainError::Decode {
                        path: path.clone(),
                        offset,
                        source,
                    }
                })?;
                if label < 0 || label >= opts.n_classes as i64 {
                    return Err(TrainError::BadLabel {
                        path: path.clone(),
                        offset,
                        label,
                        n_classes,
                    });
                }
                counts[label as usize] += 1;
                bytes = item.bytes;
            }
            Ok(counts)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut total = vec![0u64; n_classes];
    for c in per_file {
        for (t, v) in total.iter_mut().zip(c) {
            *t += v;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::testdata::{TinyDataset, write_tiny_dataset};

    fn dataset(shards: usize) -> (tempfile::TempDir, DataSource) {
        let tmp = tempfile::tempdir().unwrap();
        let t = TinyDataset {
            classes: 3,
            train_per_class: 9,
            eval_per_class: 2,
            image_size: 8,
            train_shards: shards,
            ..Default::default()
        };
        write_tiny_dataset(tmp.path(), &t).unwrap();
        let src = DataSource::open(&format!("{}/train-*", tmp.path().display())).unwrap();
        (tmp, src)
    }

    fn key(src: &DataSource, it: &RawItem) -> u64 {
        let opts = DecodeOptions::images(*src.spec(), 3);
        decode_item(&src.files, it, &opts).unwrap().key_id
    }

    fn take(src: &DataSource, s: &mut ItemStream, n: usize) -> Vec<u64> {
        (0..n)
            .map(|_| key(src, &s.next_item().unwrap().unwrap()))
            .collect()
    }

    #[test]
    fn opens_shards_with_manifest_and_counts() {
        let (_t, src) = dataset(3);
        assert_eq!(src.files.len(), 3);
        assert_eq!(src.counts, vec![9, 9, 9]);
        assert_eq!(src.n_examples(), 27);
        assert_eq!(src.labels, vec!["circle", "square", "triangle"]);
        assert_eq!(src.image_size(), 8);
    }

    #[test]
    fn missing_manifest_and_no_match_are_clear() {
        let tmp = tempfile::tempdir().unwrap();
        let err = DataSource::open(&format!("{}/train-*", tmp.path().display())).unwrap_err();
        assert!(matches!(err, TrainError::NoFiles(_)), "{err}");
        std::fs::write(tmp.path().join("train-0"), b"").unwrap();
        let err = DataSource::open(&format!("{}/train-*", tmp.path().display())).unwrap_err();
        assert!(err.to_string().contains("manifest.json"), "{err}");
    }

    #[test]
    fn every_epoch_sees_every_example_exactly_once() {
        let (_t, src) = dataset(3);
        let opts = OrderOptions {
            shuffle: true,
            shuffle_buffer: 5,
            cycle_length: 2,
            repeat: true,
            seed: 1,
        };
        let mut s = ItemStream::new(&src, opts, StreamPosition::default()).unwrap();
        let mut all = BTreeMap::new();
        let e1 = take(&src, &mut s, 27);
        assert_eq!(
            s.position(),
            StreamPosition {
                epoch: 1,
                offset: 0
            }
        );
        let e2 = take(&src, &mut s, 27);
        for k in &e1 {
            *all.entry(*k).or_insert(0) += 1;
        }
        assert_eq!(all.len(), 27, "27 distinct examples in epoch 1");
        let mut a = e1.clone();
        let mut b = e2.clone();
        a.sort();
        b.sort();
        assert_eq!(a, b, "epoch 2 holds the same examples");
        assert_ne!(e1, e2, "epochs are shuffled differently");
    }

    #[test]
    fn shuffle_is_deterministic_given_the_seed() {
        let (_t, src) = dataset(2);
        let run = |seed| {
            let mut s = ItemStream::new(
                &src,
                OrderOptions::train(seed, 8),
                StreamPosition::default(),
            )
            .unwrap();
            take(&src, &mut s, 40)
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    #[test]
    fn resuming_at_a_position_continues_the_same_stream() {
        let (_t, src) = dataset(2);
        let opts = OrderOptions::train(9, 6);
        let mut s = ItemStream::new(&src, opts, StreamPosition::default()).unwrap();
        take(&src, &mut s, 35);
        let pos = s.position();
        assert_eq!(
            pos,
            StreamPosition {
                epoch: 1,
                offset: 8
            }
        );
        let rest = take(&src, &mut s, 30);
        let mut r = ItemStream::new(&src, opts, pos).unwrap();
        assert_eq!(take(&src, &mut r, 30), rest);
    }

    #[test]
    fn eval_order_is_file_order_and_ends() {
        let (_t, src) = dataset(2);
        let mut s = ItemStream::new(&src, OrderOptions::eval(), StreamPosition::default()).unwrap();
        let mut n = 0;
        while s.next_item().unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 27);
    }

    #[test]
    fn pipeline_batches_decode_and_check_labels() {
        let (_t, src) = dataset(2);
        let decode = DecodeOptions::images(*src.spec(), 3);
        let opts = PipelineOptions {
            order: OrderOptions::eval(),
            decode: decode.clone(),
            batch_size: 10,
            start: StreamPosition::default(),
            prefetch: 2,
            max_batches: None,
            augment: None,
        };
        let mut p = Pipeline::spawn(&src, opts.clone()).unwrap();
        let mut sizes = Vec::new();
        while let Some(b) = p.next_batch().unwrap() {
            assert_eq!(b.images.len(), b.size * 64);
            assert!(b.images.iter().all(|v| (0.0..=1.0).contains(v)));
            sizes.push(b.size);
        }
        assert_eq!(sizes, vec![10, 10, 7]);
        // Two classes declared: label 2 is refused with the file and offset named.
        let mut bad = opts;
        bad.decode.n_classes = 2;
        let mut p = Pipeline::spawn(&src, bad).unwrap();
        let err = loop {
            match p.next_batch() {
                Err(e) => break e,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("no error"),
            }
        };
        assert!(err.to_string().contains("label 2 is outside 0..2"), "{err}");
        assert!(err.to_string().contains("train-0000"), "{err}");
    }

    #[test]
    fn corrupt_record_is_reported_with_offset() {
        let (_t, src) = dataset(1);
        let path = &src.files[0];
        let mut bytes = std::fs::read(path).unwrap();
        let n = bytes.len();
        bytes[n - 10] ^= 0xff;
        std::fs::write(path, &bytes).unwrap();
        let mut s = ItemStream::new(&src, OrderOptions::eval(), StreamPosition::default()).unwrap();
        let err = loop {
            match s.next_item() {
                Err(e) => break e,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("corruption not detected"),
            }
        };
        assert!(err.to_string().contains("CRC"), "{err}");
        assert!(err.to_string().contains("at byte"), "{err}");
    }

    #[test]
    fn stroke_batches_are_padded_and_reversed() {
        let f = StrokeFeatures {
            dx: vec![1.0, 2.0],
            dy: vec![3.0, 4.0],
            pen: vec![0.0, 1.0],
            len: 2,
            truncated: false,
        };
        let g = StrokeFeatures {
            dx: vec![5.0],
            dy: vec![6.0],
            pen: vec![1.0],
            len: 1,
            truncated: false,
        };
        let b = StrokeBatch::from_features(&[&f, &g]);
        assert_eq!(b.steps, 2);
        assert_eq!(
            b.forward,
            vec![1.0, 3.0, 0.0, 2.0, 4.0, 1.0, 5.0, 6.0, 1.0, 0.0, 0.0, 0.0]
        );
        assert_eq!(
            b.backward,
            vec![2.0, 4.0, 1.0, 1.0, 3.0, 0.0, 5.0, 6.0, 1.0, 0.0, 0.0, 0.0]
        );
        assert_eq!(b.mask, vec![1.0, 1.0, 1.0, 0.0]);
    }
}
