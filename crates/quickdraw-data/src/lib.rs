//! QuickDraw data stage: every input format in, validated, simplified, rasterised, and written as
//! `tf.train.Example` TFRecord shards; plus the TensorBoard event format used by training.
//!
//! Nothing here depends on a deep-learning framework, so this crate builds and tests in seconds
//! and is shared by the converter, the trainer and the server (one preprocessing path).

pub mod card;
pub mod classes;
pub mod convert;
pub mod drawing;
pub mod events;
pub mod example;
pub mod features;
pub mod hparams;
pub mod image;
pub mod ingest;
pub mod lock;
pub mod manifest;
pub mod raster;
pub mod readfull;
pub mod signature;
pub mod simplify;
pub mod spill;
pub mod split;
pub mod storage;
pub mod strokes;
pub mod synth;
pub mod tfrecord;
pub mod validate;
pub mod wide;

pub use drawing::{Bitmap, Drawing, Ink, Stroke};
