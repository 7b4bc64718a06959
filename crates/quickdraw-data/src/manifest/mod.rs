//! `manifest.json`: the contract a dataset directory offers to the next stages (training reads the
//! feature spec and classes from it instead of re-guessing; export copies its preprocessing).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::features::FeatureSpec;

mod verify;
pub use verify::{DatasetCheck, verify, verify_with_progress};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const LABELS_FILE: &str = "labels.txt";
pub const REJECTS_FILE: &str = "rejects.jsonl";

/// The fields of a `rejects.jsonl` line that are read back (besides `file`, `line` or `record`
/// and `detail`): the reason, and how many records the line stands for (`records`, written only
/// on a line that lists several, such as the missing rows of a truncated `.npy`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RejectLine {
    pub reason: String,
    #[serde(default = "one")]
    pub records: u64,
}

fn one() -> u64 {
    1
}
/// Bumped when a field changes meaning.
pub const MANIFEST_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputFile {
    pub path: String,
    /// `simplified_ndjson`, `raw_ndjson`, `binary`, `numpy_bitmap` (plus `gzip: true`).
    pub format: String,
    pub gzip: bool,
    pub bytes: u64,
    pub sha256: String,
    /// The class this file holds (from its name); empty for a file that mixes classes.
    pub class: String,
    /// Whether its records were labelled by the file's name or by their own `word`.
    #[serde(default)]
    pub label_from: crate::ingest::LabelFrom,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardFile {
    pub file: String,
    pub examples: u64,
    pub bytes: u64,
}

/// What happened to the records of one class (or of the whole run).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassCounts {
    /// Records read from the inputs.
    pub read: u64,
    /// Records written to a shard.
    pub kept: u64,
    /// Valid records left out on purpose, by reason (`unrecognized`, `split_full`, ...).
    pub filtered: BTreeMap<String, u64>,
    /// Invalid records, by reason; listed in `rejects.jsonl` up to a cap per reason.
    pub rejected: BTreeMap<String, u64>,
    /// Rejected records counted in `rejected` but not listed in `rejects.jsonl` (over the cap).
    #[serde(default)]
    pub rejects_not_listed: u64,
    /// Examples per split.
    pub splits: BTreeMap<String, u64>,
    /// Stroke sequences cut at `max_points`.
    #[serde(default)]
    pub strokes_truncated: u64,
    /// Every split quota was full before the end of the input: the rest was hashed, not parsed.
    #[serde(default)]
    pub quota_filled_early: bool,
}

impl ClassCounts {
    pub fn add(&mut self, o: &ClassCounts) {
        self.read += o.read;
        self.kept += o.kept;
        self.strokes_truncated += o.strokes_truncated;
        self.rejects_not_listed += o.rejects_not_listed;
        self.quota_filled_early |= o.quota_filled_early;
        for (k, v) in &o.filtered {
            *self.filtered.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.rejected {
            *self.rejected.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.splits {
            *self.splits.entry(k.clone()).or_default() += v;
        }
    }
    pub fn filtered_total(&self) -> u64 {
        self.filtered.values().sum()
    }
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetManifest {
    pub manifest_version: u32,
    /// `quickdraw <version>` that wrote the dataset.
    pub tool: String,
    /// Class names; the label of a class is its index (same order as `labels.txt`).
    pub classes: Vec<String>,
    /// Feature names, encodings, raster and stroke parameters.
    pub features: FeatureSpec,
    pub seed: u64,
    /// How examples were split (human-readable description and parameters).
    pub split: serde_json::Value,
    pub include_unrecognized: bool,
    pub inputs: Vec<InputFile>,
    /// Shard files per split (`train`, `eval`, `test`), names relative to the manifest.
    pub shards: BTreeMap<String, Vec<ShardFile>>,
    /// Counts per class name.
    pub per_class: BTreeMap<String, ClassCounts>,
    pub totals: ClassCounts,
    /// Average serialized size of one example in the shards (bytes, framing included).
    pub bytes_per_example: f64,
    /// Things the conversion warned about (e.g. bitmaps resized), for whoever reads the data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid dataset manifest: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "{path}: manifest version {found} is newer than this tool understands ({MANIFEST_VERSION})"
    )]
    Version { path: PathBuf, found: u32 },
}

impl DatasetManifest {
    /// Reads `manifest.json` from a dataset directory (or from the given file path).
    pub fn load(dir_or_file: &Path) -> Result<Self, ManifestError> {
        let path = if crate::storage::is_dir(dir_or_file) && !crate::storage::is_file(dir_or_file) {
            dir_or_file.join(MANIFEST_FILE)
        } else {
            dir_or_file.to_path_buf()
        };
        let text = crate::storage::read_to_string(&path).map_err(|source| ManifestError::Io {
            path: path.clone(),
            source,
        })?;
        let m: DatasetManifest =
            serde_json::from_str(&text).map_err(|source| ManifestError::Json {
                path: path.clone(),
                source,
            })?;
        if m.manifest_version > MANIFEST_VERSION {
            return Err(ManifestError::Version {
                path,
                found: m.manifest_version,
            });
        }
        Ok(m)
    }

    /// The listed shard named `file` (a file name in the dataset directory), in any split.
    pub fn shard(&self, file: &str) -> Option<&ShardFile> {
        self.shards.values().flatten().find(|s| s.file == file)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("manifest serialises") + "\n"
    }
}

/// Reads `labels.txt`: one class name per line, label = line index.
pub fn read_labels(path: &Path) -> Result<Vec<String>, ManifestError> {
    let text = crate::storage::read_to_string(path).map_err(|source| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

pub fn labels_text(classes: &[String]) -> String {
    classes.iter().map(|c| format!("{c}\n")).collect()
}
