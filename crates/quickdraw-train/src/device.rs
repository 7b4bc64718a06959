//! Device selection: `cpu` is burn's pure-Rust Flex backend; `cubecl` is burn's CubeCL CPU
//! runtime (the `cubecl` feature: the same LLVM and kernel compiler as CUDA, run on the CPU);
//! `cuda[:N]` needs the `cuda` feature and an NVIDIA driver.
//!
//! Training runs on the autodiff-enabled device ([`training_device`]); evaluation and inference
//! run on the plain one ([`inference_device`]). A device is opened (and one tiny operation run
//! on it) when it is chosen, so a missing driver is an error naming the device, not a panic in
//! the middle of a run.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Where tensors live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// Pure-Rust CPU backend (burn Flex), multi-threaded with rayon.
    #[default]
    Cpu,
    /// burn's CubeCL CPU runtime (build with `--features cubecl`): kernels compiled by CubeCL
    /// through LLVM, as on CUDA, but run on the CPU. Exercises the GPU code path without a GPU.
    Cubecl,
    /// CUDA GPU with the given index (build with `--features cuda`).
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" | "flex" => Ok(DeviceChoice::Cpu),
            "cubecl" | "cubecl-cpu" => Ok(DeviceChoice::Cubecl),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(i)) => Ok(DeviceChoice::Cuda(i)),
                _ => Err(format!(
                    "unknown device {s:?} (expected cpu, cubecl, cuda or cuda:N)"
                )),
            },
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cubecl => write!(f, "cubecl"),
            DeviceChoice::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// `train --device a,b,...`: one device, or several for data-parallel training (each step's
/// batch split by rows over them, the gradients summed on the first; see [`crate::parallel`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceList(Vec<DeviceChoice>);

impl DeviceList {
    /// The device that holds the model, its optimiser state and the evaluation.
    pub fn first(&self) -> DeviceChoice {
        self.0[0]
    }

    /// The other devices, in order.
    pub fn rest(&self) -> &[DeviceChoice] {
        &self.0[1..]
    }
}

impl FromStr for DeviceList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let list = s
            .split(',')
            .map(|d| d.trim().parse::<DeviceChoice>())
            .collect::<Result<Vec<_>, _>>()?;
        // `split` yields at least one (possibly empty, then refused) name: never an empty list.
        Ok(DeviceList(list))
    }
}

impl fmt::Display for DeviceList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&names.join(","))
    }
}

impl DeviceChoice {
    /// Whether the device's tensors live in the host's memory (batch-size checks against RAM).
    pub fn uses_host_memory(self) -> bool {
        matches!(self, DeviceChoice::Cpu | DeviceChoice::Cubecl)
    }
}

/// Whether this build can use CUDA devices.
pub const CUDA_AVAILABLE: bool = cfg!(feature = "cuda");
/// Whether this build has the CubeCL CPU device.
pub const CUBECL_AVAILABLE: bool = cfg!(feature = "cubecl");

/// burn's environment variable naming its default device.
pub const DEFAULT_DEVICE_ENV: &str = "BURN_DEVICE";

/// Makes burn's default device flex (the host) unless `BURN_DEVICE` already names one.
///
/// burn materialises a resumed optimizer state on its default device, then moves each tensor to
/// its parameter's device at the next step. The default is the first GPU backend compiled in:
/// in a `cuda` build that is CUDA, so resuming any run (even `--device cpu`) on a machine without
/// a driver would panic, and on one with a GPU a CPU run's state would take a detour through it.
/// The host is right for every device.
///
/// # Safety
/// Sets an environment variable: call it before the process starts other threads (the CLI does
/// so first thing), as [`std::env::set_var`] requires.
pub unsafe fn pin_default_device() {
    if std::env::var_os(DEFAULT_DEVICE_ENV).is_none() {
        // SAFETY: the caller guarantees no other thread runs yet.
        unsafe { std::env::set_var(DEFAULT_DEVICE_ENV, "flex") };
    }
}

/// The plain (no autodiff) device: evaluation and inference.
pub fn inference_device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::flex()),
        DeviceChoice::Cubecl => cubecl_device(),
        DeviceChoice::Cuda(i) => cuda_device(i),
    }
}

/// The autodiff-enabled device used for training.
pub fn training_device(choice: DeviceChoice) -> Result<Device> {
    Ok(inference_device(choice)?.autodiff())
}

#[cfg(feature = "cubecl")]
fn cubecl_device() -> Result<Device> {
    opened(Device::cpu(), DeviceChoice::Cubecl)
}

#[cfg(not(feature = "cubecl"))]
fn cubecl_device() -> Result<Device> {
    Err(TrainError::Device(
        "this quickdraw was built without the CubeCL CPU device; run scripts/setup-llvm, then \
         rebuild with `cargo build --release --features cubecl`"
            .into(),
    ))
}

/// The NVIDIA driver library that CUDA needs at run time.
#[cfg(feature = "cuda")]
const CUDA_DRIVER: &str = "libcuda.so.1";

#[cfg(feature = "cuda")]
fn cuda_device(index: usize) -> Result<Device> {
    // cudarc loads the driver library lazily and panics when it is missing: look first.
    // SAFETY: loading the NVIDIA driver library runs its initialisers, which is what cudarc does
    // on first use anyway; the handle is dropped at once.
    if let Err(e) = unsafe { libloading::Library::new(CUDA_DRIVER) } {
        return Err(TrainError::Device(format!(
            "--device cuda:{index}: the NVIDIA driver library {CUDA_DRIVER} cannot be loaded ({e}); this \
             machine has no usable NVIDIA GPU driver (use --device cpu)"
        )));
    }
    opened(Device::cuda(index), DeviceChoice::Cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_index: usize) -> Result<Device> {
    Err(TrainError::Device(
        "this quickdraw was built without CUDA support; run scripts/setup-llvm, then rebuild with \
         `cargo build --release --features cuda`"
            .into(),
    ))
}

/// Runs one tiny operation on `device` so that a device that cannot start (no such GPU index, a
/// driver that fails to initialise, a kernel compiler that fails) is an error here. burn's
/// runtimes report these as panics: the panic is caught and its message returned, without the
/// default hook printing it as a crash.
#[cfg(any(feature = "cubecl", feature = "cuda"))]
fn opened(device: Device, choice: DeviceChoice) -> Result<Device> {
    use std::panic::{AssertUnwindSafe, catch_unwind, set_hook, take_hook};
    let hook = take_hook();
    set_hook(Box::new(|_| {}));
    let probe = catch_unwind(AssertUnwindSafe(|| {
        let t = burn::tensor::Tensor::<1>::from_floats([1.0, 2.0], &device);
        (t.clone() + t).sum().into_scalar::<f32>()
    }));
    set_hook(hook);
    match probe {
        Ok(v) if v == 6.0 => Ok(device),
        Ok(v) => Err(TrainError::Device(format!(
            "--device {choice}: a test sum gave {v} instead of 6"
        ))),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown error");
            Err(TrainError::Device(format!(
                "--device {choice} cannot be opened: {msg}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!(
            "cubecl".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cubecl
        );
        assert_eq!(
            "cuda".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(0)
        );
        assert_eq!(
            "cuda:2".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(2)
        );
        assert!("tpu".parse::<DeviceChoice>().is_err());
        for d in [
            DeviceChoice::Cpu,
            DeviceChoice::Cubecl,
            DeviceChoice::Cuda(3),
        ] {
            assert_eq!(d.to_string().parse::<DeviceChoice>().unwrap(), d);
        }
    }

    #[test]
    fn device_lists() {
        let l: DeviceList = "cuda:0, cuda:1".parse().unwrap();
        assert_eq!(l.first(), DeviceChoice::Cuda(0));
        assert_eq!(l.rest(), &[DeviceChoice::Cuda(1)]);
        assert_eq!(l.to_string(), "cuda:0,cuda:1");
        let one: DeviceList = "cpu".parse().unwrap();
        assert_eq!((one.first(), one.rest().len()), (DeviceChoice::Cpu, 0));
        let e = "cpu,tpu".parse::<DeviceList>().unwrap_err();
        assert!(e.contains("\"tpu\""), "{e}");
        assert!("cpu,".parse::<DeviceList>().is_err());
    }

    /// Without the feature, the device is refused with the command that builds it.
    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_build_it() {
        let e = inference_device(DeviceChoice::Cuda(0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--features cuda"), "{e}");
    }

    /// With the feature but no NVIDIA driver (CI), the device is an error, not a panic.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_without_a_driver_is_an_error() {
        if unsafe { libloading::Library::new(CUDA_DRIVER) }.is_ok() {
            eprintln!("skipped: this machine has an NVIDIA driver (scripts/gpu-check measures it)");
            return;
        }
        let e = training_device(DeviceChoice::Cuda(0))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("libcuda.so.1") && e.contains("--device cpu"),
            "{e}"
        );
    }
}
