//! `train --precision f32|bf16|f16`: mixed-precision training.
//!
//! The weights, the optimiser's state and the checkpoints stay float32. Each step runs the
//! forward and backward passes on a copy of the weights cast to the lower precision, with the
//! inputs cast too. Autodiff follows the cast, so the gradients arrive in float32 on the float32
//! weights. The loss is computed in float32 from logits cast back. This is PyTorch's autocast
//! with float32 master weights, or Keras's `mixed_bfloat16` policy.
//!
//! There is no loss scaling. In f16, gradients below about 6e-8 underflow to zero and values
//! above 65504 overflow (the step is then refused as a non-finite loss). bf16 has float32's
//! range and needs no scaling, so prefer it where the device has it.
//!
//! This crate's fused CPU kernels are float32 only, so on the CPU backend the lower precisions
//! run burn's own layers. That is slower than float32 there: the CPU has no bf16 arithmetic to
//! gain from. The lower precisions are meant for GPUs. Evaluation, export and serving run in
//! float32.

use std::fmt;
use std::str::FromStr;

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::{DType, FloatDType};
use serde::{Deserialize, Serialize};

use crate::device::DeviceChoice;
use crate::error::{Result, TrainError};
use crate::model::{Model, ModelInput};

/// `--precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }

    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    /// The dtype of the forward and backward passes (`None`: float32, no cast).
    fn compute(self) -> Option<FloatDType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(FloatDType::BF16),
            Precision::F16 => Some(FloatDType::F16),
        }
    }

    /// An error unless `device` (the `--device` `choice`) computes in this precision.
    pub fn check(self, device: &Device, choice: DeviceChoice) -> Result<()> {
        let Some(dtype) = self.compute() else {
            return Ok(());
        };
        if device.supports_dtype(DType::from(dtype)) {
            return Ok(());
        }
        Err(TrainError::Config(format!(
            "--precision {self}: --device {choice} has no {self} arithmetic (use --precision f32{})",
            if self == Precision::F16 {
                ", or bf16"
            } else {
                ", or f16"
            }
        )))
    }

    /// `[B, n_classes]` float32 logits of `model` on `input`, computed in this precision (see
    /// the module docs).
    pub fn forward(self, model: &Model, input: ModelInput) -> Tensor<2> {
        match self.compute() {
            None => model.forward(input),
            Some(dtype) => model
                .clone()
                .map(&mut CastWeights(dtype))
                .forward(input.cast(dtype))
                .cast(FloatDType::F32),
        }
    }
}

/// Casts every float parameter, keeping its id and its place in the autodiff graph (the cast is
/// an operation on the float32 weight, not a new leaf).
struct CastWeights(FloatDType);

impl ModuleMapper for CastWeights {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dtype = self.0;
        param.map(|t| t.cast(dtype))
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(Precision::F32),
            "bf16" | "bfloat16" | "mixed_bfloat16" => Ok(Precision::Bf16),
            "f16" | "float16" | "fp16" | "mixed_float16" => Ok(Precision::F16),
            _ => Err(format!(
                "unknown precision {s:?} (expected f32, bf16 or f16)"
            )),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use burn::optim::GradientsParams;

    use super::*;
    use crate::model::{ModelConfig, ModelKind};

    #[test]
    fn parse() {
        for p in [Precision::F32, Precision::Bf16, Precision::F16] {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
        }
        assert_eq!(
            "mixed_bfloat16".parse::<Precision>().unwrap(),
            Precision::Bf16
        );
        assert!("f8".parse::<Precision>().is_err());
    }

    /// The lower precisions compute the float32 function to their rounding, and the gradients
    /// are float32 on every float32 weight.
    #[test]
    fn low_precision_steps_follow_float32_with_float32_gradients() {
        let device = Device::flex().autodiff();
        let mut cfg = ModelConfig::new(ModelKind::Cnn, 3, 16);
        cfg.dropout = Some(0.0);
        let model = cfg.init(&device).unwrap();
        // A fixed input (no random state: tests share the backend's generator).
        let x: Vec<f32> = (0..4 * 16 * 16)
            .map(|i| ((i * 37 % 101) as f32) / 100.0)
            .collect();
        let x = Tensor::<4>::from_data(TensorData::new(x, [4, 1, 16, 16]), &device);
        let run = |p: Precision| {
            let logits = p.forward(&model, ModelInput::Images(x.clone()));
            assert_eq!(logits.dtype(), DType::F32, "{p}");
            let values: Vec<f32> = logits.to_data().iter::<f32>().collect();
            let grads =
                GradientsParams::from_grads((logits.clone() * logits).sum().backward(), &model);
            (values, grads)
        };
        let (full, full_grads) = run(Precision::F32);
        for (p, tol) in [(Precision::Bf16, 3e-2), (Precision::F16, 5e-3)] {
            let (low, grads) = run(p);
            let diff = full
                .iter()
                .zip(&low)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            let scale = full.iter().map(|a| a.abs()).fold(0.0, f32::max);
            assert!(
                diff <= tol * scale.max(1.0),
                "{p}: logits differ by {diff} (scale {scale})"
            );
            assert_eq!(grads.len(), full_grads.len(), "{p}");
            let Model::Cnn(cnn) = &model else {
                unreachable!()
            };
            let g = grads.get::<4>(cnn.convs[0].weight.id).expect("a gradient");
            assert_eq!(g.dtype(), DType::F32, "{p}");
            let g0 = full_grads.get::<4>(cnn.convs[0].weight.id).unwrap();
            let gd = (g - g0.clone()).abs().max().into_scalar::<f32>();
            let gs = g0.abs().max().into_scalar::<f32>();
            assert!(gd <= 0.1 * gs, "{p}: gradient differs by {gd} (scale {gs})");
        }
    }
}
