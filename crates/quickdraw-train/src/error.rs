//! The library's error type: every failure names the file (and byte offset) or flag involved.

use std::path::PathBuf;

use quickdraw_data::events::EventsError;
use quickdraw_data::features::FeatureError;
use quickdraw_data::manifest::ManifestError;
use quickdraw_data::tfrecord::TfRecordError;

/// Errors of the training stage (pipeline, models, checkpoints, evaluation).
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid file pattern {pattern:?}: {source}")]
    Pattern {
        pattern: String,
        source: glob::PatternError,
    },
    #[error("no files match {0:?}")]
    NoFiles(String),
    #[error(
        "{}: no dataset manifest next to the shards ({}); shards must come from `quickdraw convert`, which writes manifest.json and labels.txt beside them",
        dir.display(), path.display()
    )]
    NoManifest { dir: PathBuf, path: PathBuf },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Record(#[from] TfRecordError),
    #[error("{}: record at byte {offset}: {source}", path.display())]
    Decode {
        path: PathBuf,
        offset: u64,
        source: FeatureError,
    },
    #[error(
        "{}: record at byte {offset}: label {label} is outside 0..{n_classes} ({n_classes} classes in labels.txt)",
        path.display()
    )]
    BadLabel {
        path: PathBuf,
        offset: u64,
        label: i64,
        n_classes: usize,
    },
    #[error("{0}")]
    Config(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: {what}", path.display())]
    Checkpoint { path: PathBuf, what: String },
    #[error(transparent)]
    Events(#[from] EventsError),
    #[error("{}: {what}", dir.display())]
    ModelDir { dir: PathBuf, what: String },
    #[error("the input pipeline thread stopped unexpectedly")]
    PipelineGone,
    #[error("device: {0}")]
    Device(String),
    #[error(
        "training stopped at step {step}: {what} (as Keras' TerminateOnNaN); {}; try a lower --learning-rate",
        match last_good { Some(p) => format!("the last good checkpoint is kept: {}", p.display()), None => "no checkpoint was written".to_string() }
    )]
    NonFinite {
        step: u64,
        what: String,
        last_good: Option<PathBuf>,
    },
    #[error("{}: checksum mismatch (SHA-256 {actual}, {} records {expected}): the checkpoint file is corrupted; use another checkpoint (--checkpoint N) or retrain", path.display(), state.display())]
    Corrupted {
        path: PathBuf,
        state: PathBuf,
        expected: String,
        actual: String,
    },
    #[error(transparent)]
    Lock(#[from] quickdraw_data::lock::LockError),
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
        let path = path.into();
        move |source| TrainError::Io { path, source }
    }
    pub(crate) fn json(path: impl Into<PathBuf>) -> impl FnOnce(serde_json::Error) -> TrainError {
        let path = path.into();
        move |source| TrainError::Json { path, source }
    }
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;
