//! `train --precision f32|bf16|f16`: mixed-precision training.
//!
//! The weights, the optimiser's state and the checkpoints stay float32. Each step runs the
//! forward and backward passes on a copy of the weights cast to the lower precision, with the
//! inputs cast too. Autodiff follows the cast, so the gradients arrive in float32 on the float32
//! weights. The loss is computed in float32 from logits cast back. This is PyTorch's autocast
//! with float32 master weights, or Keras's `mixed_bfloat16` policy.
//!
//! There is no loss scaling. In f16, gradients below about 6e-8 underflow to zero, and values
//! above 65504 overflow: an overflow in the forward pass makes the loss non-finite, one in the
//! backward pass a gradient ([`Precision::check_gradients`] reads their sum back each step).
//! Either stops the run as a non-finite loss does, before the weights change. bf16 has
//! float32's range and needs no scaling, so prefer it where the device has it.
//!
//! This crate's fused CPU kernels are float32 only, so on the CPU backend the lower precisions
//! run burn's own layers. That is slower than float32 there: the CPU has no bf16 arithmetic to
//! gain from. The lower precisions are meant for GPUs. Evaluation, export and serving run in
//! float32.

use std::fmt;
use std::str::FromStr;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::{DType, FloatDType};
use serde::{Deserialize, Serialize};

use crate::device::DeviceChoice;
use crate::error::{Result, TrainError};
use crate::model::{Model, ModelInput};
use crate::trainer::NonFiniteStep;

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

    /// In f16, an error when a gradient overflowed (read back once per step): the step is not
    /// applied, as for a non-finite loss. The other precisions have float32's range.
    pub fn check_gradients(
        self,
        model: &Model,
        grads: &GradientsParams,
    ) -> Result<(), NonFiniteStep> {
        if self != Precision::F16 {
            return Ok(());
        }
        let mut v = GradientSum { grads, sum: None };
        model.visit(&mut v);
        let finite = v.sum.is_none_or(|s| s.into_scalar::<f32>().is_finite());
        finite.then_some(()).ok_or(NonFiniteStep::F16Gradients)
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

/// The sum of every gradient's elements: not finite when any element is not.
struct GradientSum<'a> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<1>>,
}

impl ModuleVisitor for GradientSum<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = g.sum();
            self.sum = Some(match self.sum.take() {
                Some(acc) => acc + s,
                None => s,
            });
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

    /// An f16 gradient that overflowed stops the step; the other precisions do not check.
    #[test]
    fn an_overflowed_f16_gradient_is_refused() {
        let device = Device::flex();
        let model = ModelConfig::new(ModelKind::Linear, 2, 4)
            .init(&device)
            .unwrap();
        let Model::Linear(m) = &model else {
            unreachable!()
        };
        let mut grads = GradientsParams::new();
        let w = m.output.weight.val();
        grads.register(m.output.weight.id, w.ones_like());
        assert_eq!(Precision::F16.check_gradients(&model, &grads), Ok(()));
        grads.register(m.output.weight.id, w.ones_like() * f32::INFINITY);
        assert_eq!(
            Precision::F16.check_gradients(&model, &grads),
            Err(NonFiniteStep::F16Gradients)
        );
        assert_eq!(Precision::Bf16.check_gradients(&model, &grads), Ok(()));
    }

    /// The lower precisions compute the float32 function to their rounding, and the gradients
    /// are float32 on every float32 weight, pointing where the float32 ones do.
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
            // Direction: cosine similarity with the float32 gradient.
            let dot = (g.clone() * g0.clone()).sum().into_scalar::<f32>();
            let norms = (g.clone() * g).sum().into_scalar::<f32>()
                * (g0.clone() * g0).sum().into_scalar::<f32>();
            let cosine = dot / norms.sqrt();
            assert!(
                cosine > 0.99,
                "{p}: gradient direction differs (cosine {cosine})"
            );
        }
    }
}
