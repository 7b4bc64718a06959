//! Adam as one fused pass over each parameter on the CPU ([`FusedAdam`]), with burn's own state
//! type and arithmetic.
//!
//! Why: burn's `Adam` updates a parameter with about ten element-wise tensor operations, each
//! reading and writing a whole tensor; on the flex backend the DNN's 4.1M-parameter step spent
//! more time there than in its matrix products (`perf` on `quickdraw train --model dnn`). Here the
//! two moments and the parameter are updated in one parallel loop. The operations are burn's, in
//! burn's order (`m = m*b1 + g*(1-b1)`, `v = v*b2 + (g*g)*(1-b2)`,
//! `p - ((m*c) / (sqrt(v) + eps*sqrt(1-b2^t))) * lr` with `c = sqrt(1-b2^t) / (1-b1^t)`), so the
//! values equal burn's bit for bit (tested), and the state is burn's [`AdamState`], so checkpoints
//! are the same records. Other devices (CUDA) and states this loop does not cover use burn's
//! `Adam` itself.

use burn::optim::{Adam, AdamConfig, AdamState, AdaptiveMomentumState, LearningRate, Optimizer};
use burn::prelude::*;
use burn::tensor::DType;
use rayon::prelude::*;

/// Adam (no weight decay, no AMSGrad: the configuration `quickdraw train` uses).
#[derive(Clone)]
pub struct FusedAdam {
    burn: Adam,
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
}

impl FusedAdam {
    /// From burn's configuration; `None` when it asks for something this loop does not do
    /// (weight decay, AMSGrad, gradient clipping).
    pub fn new(config: &AdamConfig) -> Option<FusedAdam> {
        // The configuration's fields are private; its serialised form names them.
        let c = serde_json::to_value(config).ok()?;
        let plain = c["amsgrad"] == serde_json::Value::Bool(false)
            && c["weight_decay"].is_null()
            && c["grad_clipping"].is_null();
        if !plain {
            return None;
        }
        let f = |k: &str| c[k].as_f64().map(|v| v as f32);
        Some(FusedAdam {
            burn: config.build(),
            beta_1: f("beta_1")?,
            beta_2: f("beta_2")?,
            epsilon: f("epsilon")?,
        })
    }
}

fn values<const D: usize>(t: Tensor<D>) -> Option<Vec<f32>> {
    t.into_data().try_into_vec::<f32>().ok()
}

impl Optimizer for FusedAdam {
    type State<const D: usize> = AdamState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let device = tensor.device();
        let fits = device.clone().inner() == Device::flex()
            && tensor.dtype() == DType::F32
            && grad.dtype() == DType::F32
            && state.as_ref().is_none_or(|s| {
                s.momentum.max_moment_2.is_none()
                    && s.momentum.moment_1.dtype() == DType::F32
                    && s.momentum.moment_2.dtype() == DType::F32
            });
        if !fits {
            return self.burn.step(lr, tensor, grad, state);
        }
        let shape = tensor.shape();
        let n = shape.num_elements();
        let (Some(mut p), Some(g)) = (values(tensor), values(grad)) else {
            unreachable!("float32 tensors convert to Vec<f32>");
        };
        let (mut m, mut v, time) = match state {
            Some(s) => {
                let m = values(s.momentum.moment_1).expect("float32 moment");
                let v = values(s.momentum.moment_2).expect("float32 moment");
                (m, v, s.momentum.time + 1)
            }
            None => (vec![0f32; n], vec![0f32; n], 1),
        };
        let (b1, b2) = (self.beta_1, self.beta_2);
        let (f1, f2) = (1.0 - b1, 1.0 - b2);
        let t = time as i32;
        let bias_correction2_sqrt = (1.0 - b2.powi(t)).sqrt();
        let combined_factor = bias_correction2_sqrt / (1.0 - b1.powi(t));
        let eps = self.epsilon * bias_correction2_sqrt;
        let lr = lr as f32;
        const CHUNK: usize = 1 << 14;
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)))
            .for_each(|((p, m), (v, g))| {
                for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(g) {
                    // First step: m and v are 0, so m*b1 + g*f1 = g*f1 exactly, as burn's
                    // first-step formula.
                    *m = *m * b1 + g * f1;
                    *v = *v * b2 + (g * g) * f2;
                    let step = (*m * combined_factor) / (v.sqrt() + eps);
                    *p -= step * lr;
                }
            });
        let dims: Vec<usize> = shape.dims::<D>().to_vec();
        let tensor =
            |x: Vec<f32>| Tensor::<D>::from_data(TensorData::new(x, dims.clone()), &device);
        let state = AdamState::new(AdaptiveMomentumState::new(time, tensor(m), tensor(v)));
        (tensor(p), Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        Adam::to_device(state, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_burns_adam_bit_for_bit_over_several_steps() {
        let device = Device::flex();
        device.seed(3);
        let config = AdamConfig::new();
        let fused = FusedAdam::new(&config).expect("plain Adam");
        let burn = config.build();
        let mut a = Tensor::<2>::random([37, 300], burn::tensor::Distribution::Default, &device);
        let mut b = a.clone();
        let (mut sa, mut sb) = (None, None);
        for step in 0..4 {
            let g = Tensor::<2>::random([37, 300], burn::tensor::Distribution::Default, &device)
                .mul_scalar(step as f32 + 0.5);
            (a, sa) = fused.step(1e-2, a, g.clone(), sa);
            (b, sb) = burn.step(1e-2, b, g, sb);
            assert_eq!(
                a.to_data(),
                b.to_data(),
                "parameters differ after step {step}"
            );
            let (ma, mb) = (sa.as_ref().unwrap(), sb.as_ref().unwrap());
            assert_eq!(ma.momentum.time, mb.momentum.time);
            assert_eq!(
                ma.momentum.moment_1.to_data(),
                mb.momentum.moment_1.to_data()
            );
            assert_eq!(
                ma.momentum.moment_2.to_data(),
                mb.momentum.moment_2.to_data()
            );
        }
        // Configurations it does not cover are refused (burn's Adam runs them).
        assert!(FusedAdam::new(&AdamConfig::new().with_amsgrad(true)).is_none());
    }
}
