//! QuickDraw estimators on burn: the input pipeline over TFRecord shards, the models (baseline,
//! linear, DNN, the lecture's CNN, a bidirectional LSTM), the training loop with resumable
//! atomic checkpoints, evaluation (accuracy, top-3, MAP@3, per-class P/R/F1, confusion matrix),
//! model comparison, and the inference API later stages (export, serve) build on.
//!
//! The model directory layout is documented in [`modeldir`].

pub mod augment;
#[cfg(all(test, feature = "cubecl"))]
mod cubecl_parity;
pub mod device;
pub mod error;
pub mod errors;
pub mod eval;
pub mod export;
pub mod fused_adam;
pub mod infer;
pub mod kernels;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod modeldir;
pub mod parallel;
pub mod pipeline;
pub mod precision;
pub mod preset;
mod remote;
pub mod schedule;
/// Tiny datasets for tests; not in release builds.
#[cfg(any(test, feature = "testing"))]
pub mod testdata;
pub mod train;
pub mod trainer;

pub use augment::Augment;
pub use burn;
pub use device::{DeviceChoice, DeviceList};
pub use error::TrainError;
pub use eval::{
    Comparison, EvalPart, EvaluateRequest, Evaluation, compare, evaluate, evaluate_part,
    merge_parts,
};
pub use infer::TrainedModel;
pub use model::{ModelConfig, ModelKind};
pub use modeldir::{CheckpointSel, OptimizerKind, TrainConfig};
pub use precision::Precision;
pub use schedule::{EarlyStopping, LrSchedule, Monitored, ScheduleKind};
pub use train::{TrainObserver, TrainRequest, TrainSummary, install_interrupt_handler, train};
