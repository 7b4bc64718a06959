//! Tiny synthetic datasets (procedural doodles from `quickdraw_data::synth`) written exactly
//! like `quickdraw convert` output: TFRecord shards, `labels.txt`, `manifest.json`. Used by
//! tests, the throughput benchmark and examples; not meant for real training.

use std::collections::BTreeMap;
use std::path::Path;

use quickdraw_data::features::{FeatureSpec, ImageEncoding, encode_example, preprocess};
use quickdraw_data::manifest::{
    ClassCounts, DatasetManifest, LABELS_FILE, MANIFEST_FILE, MANIFEST_VERSION, ShardFile,
    labels_text,
};
use quickdraw_data::raster::{RasterMode, RasterSpec};
use quickdraw_data::strokes::StrokeSpec;
use quickdraw_data::synth::{SHAPES, SynthConfig, synth_class};
use quickdraw_data::tfrecord::TfRecordWriter;

use crate::error::{Result, TrainError};

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TinyDataset {
    /// The first `classes` synthetic shapes (circle, square, triangle, ...).
    pub classes: usize,
    /// Training examples per class.
    pub train_per_class: usize,
    /// Eval examples per class.
    pub eval_per_class: usize,
    pub image_size: u32,
    /// Also write stroke features (for `--model rnn`), capped at `max_points`.
    pub strokes: Option<usize>,
    /// Training shards (examples dealt round-robin, so every shard holds every class).
    pub train_shards: usize,
    pub seed: u64,
}

impl Default for TinyDataset {
    fn default() -> Self {
        TinyDataset {
            classes: 3,
            train_per_class: 30,
            eval_per_class: 10,
            image_size: 16,
            strokes: None,
            train_shards: 2,
            seed: 7,
        }
    }
}

/// Writes `train-0000i-of-0000n.tfrecord`, `eval-00000-of-00001.tfrecord`, `labels.txt` and
/// `manifest.json` into `dir`.
pub fn write_tiny_dataset(dir: &Path, t: &TinyDataset) -> Result<FeatureSpec> {
    std::fs::create_dir_all(dir).map_err(TrainError::io(dir))?;
    let spec = FeatureSpec {
        raster: RasterSpec::new(RasterMode::Default, t.image_size, None),
        image_encoding: ImageEncoding::Int64,
        strokes: t.strokes.map(|max_points| StrokeSpec { max_points }),
        simplify_raw: true,
    };
    let classes: Vec<String> = SHAPES[..t.classes.min(SHAPES.len())]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let cfg = SynthConfig {
        classes: classes.len(),
        per_class: t.train_per_class + t.eval_per_class,
        seed: t.seed,
        unrecognized_share: 0.0,
    };
    let n_train = t.train_shards.max(1);
    let mut train: Vec<Vec<Vec<u8>>> = vec![Vec::new(); n_train];
    let mut eval: Vec<Vec<u8>> = Vec::new();
    let mut k = 0;
    // Interleave classes so round-robin dealing mixes them.
    let per_class: Vec<Vec<_>> = (0..classes.len())
        .map(|c| synth_class(c, &cfg).collect())
        .collect();
    for i in 0..cfg.per_class {
        for (label, drawings) in per_class.iter().enumerate() {
            let d = &drawings[i];
            let p = preprocess(&d.ink, &spec)
                .map_err(|e| TrainError::Config(format!("synthetic drawing: {e}")))?;
            let bytes = encode_example(d, label as i64, &p, &spec);
            if i < t.train_per_class {
                train[k % n_train].push(bytes);
                k += 1;
            } else {
                eval.push(bytes);
            }
        }
    }
    let mut shards = BTreeMap::new();
    let mut write = |split: &str, parts: Vec<Vec<Vec<u8>>>| -> Result<()> {
        let n = parts.len();
        let mut files = Vec::new();
        for (i, recs) in parts.into_iter().enumerate() {
            let name = format!("{split}-{i:05}-of-{n:05}.tfrecord");
            let path = dir.join(&name);
            let mut w = TfRecordWriter::create(&path).map_err(TrainError::io(&path))?;
            for r in &recs {
                w.write_record(r).map_err(TrainError::io(&path))?;
            }
            w.flush().map_err(TrainError::io(&path))?;
            let bytes = std::fs::metadata(&path)
                .map_err(TrainError::io(&path))?
                .len();
            files.push(ShardFile {
                file: name,
                examples: recs.len() as u64,
                bytes,
            });
        }
        shards.insert(split.to_string(), files);
        Ok(())
    };
    write("train", train)?;
    if t.eval_per_class > 0 {
        write("eval", vec![eval])?;
    }
    let total: u64 = shards.values().flatten().map(|s| s.examples).sum();
    let bytes: u64 = shards.values().flatten().map(|s| s.bytes).sum();
    let manifest = DatasetManifest {
        manifest_version: MANIFEST_VERSION,
        tool: format!("quickdraw-train {} testdata", env!("CARGO_PKG_VERSION")),
        classes: classes.clone(),
        features: spec,
        seed: t.seed,
        split: serde_json::json!({ "kind": "synthetic", "train_per_class": t.train_per_class, "eval_per_class": t.eval_per_class }),
        include_unrecognized: true,
        inputs: Vec::new(),
        shards,
        per_class: BTreeMap::new(),
        totals: ClassCounts::default(),
        bytes_per_example: bytes as f64 / total.max(1) as f64,
        warnings: Vec::new(),
    };
    let mp = dir.join(MANIFEST_FILE);
    std::fs::write(&mp, manifest.to_json()).map_err(TrainError::io(&mp))?;
    let lp = dir.join(LABELS_FILE);
    std::fs::write(&lp, labels_text(&classes)).map_err(TrainError::io(&lp))?;
    Ok(spec)
}

/// Copies the folder `from` (a model dir, a dataset) to `to`, recursively.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}
