//! The one integration-test binary of the `quickdraw` CLI (like ripgrep's `tests/tests.rs`):
//! every module drives the real binary, with the shared helpers of `util`. Run one area with a
//! filter, e.g. `cargo test --workspace --locked --test integration train::`.

mod util;

mod cli;
mod convert;
mod download;
#[cfg(feature = "train")]
mod export;
mod grpc;
mod monitoring;
#[cfg(feature = "train")]
mod scale;
mod serve;
mod stats;
mod tensorboard;
#[cfg(feature = "train")]
mod train;
