//! Device selection: `cpu` is burn's pure-Rust Flex backend; `cuda[:N]` needs the `cuda` feature.
//!
//! Training runs on the autodiff-enabled device ([`training_device`]); evaluation and inference
//! run on the plain one ([`inference_device`]).

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Where tensors live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// Pure-Rust CPU backend (burn Flex), multi-threaded with rayon.
    #[default]
    Cpu,
    /// CUDA GPU with the given index (build with `--features cuda`).
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" | "flex" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(i)) => Ok(DeviceChoice::Cuda(i)),
                _ => Err(format!(
                    "unknown device {s:?} (expected cpu, cuda or cuda:N)"
                )),
            },
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Whether this build can use CUDA devices.
pub const CUDA_AVAILABLE: bool = cfg!(feature = "cuda");

/// The plain (no autodiff) device: evaluation and inference.
pub fn inference_device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::flex()),
        #[cfg(feature = "cuda")]
        DeviceChoice::Cuda(i) => Ok(Device::cuda(i)),
        #[cfg(not(feature = "cuda"))]
        DeviceChoice::Cuda(_) => Err(TrainError::Device(
            "this quickdraw was built without CUDA support; rebuild with `cargo build --release --features cuda`".into(),
        )),
    }
}

/// The autodiff-enabled device used for training.
pub fn training_device(choice: DeviceChoice) -> Result<Device> {
    Ok(inference_device(choice)?.autodiff())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!(
            "cuda".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(0)
        );
        assert_eq!(
            "cuda:2".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(2)
        );
        assert!("tpu".parse::<DeviceChoice>().is_err());
    }
}
