//! [`Trainer`]: the optimisation step (forward, cross-entropy loss, backward, optimiser) on a
//! model and its optimiser, the one step that `train`, `bench_train` and the `profile_cnn`
//! example run, on one device or data-parallel over several ([`crate::parallel`]).

use std::time::{Duration, Instant};

use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;

use crate::model::{Model, ModelInput};
use crate::precision::Precision;

/// A step's loss, or its f16 gradients, were NaN or infinite (the step was not applied).
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum NonFiniteStep {
    #[error("the training loss became {0}")]
    Loss(f32),
    #[error(
        "the f16 gradients overflowed (a value beyond f16's 65504; --precision bf16 has float32's range)"
    )]
    F16Gradients,
}

/// What one [`Trainer::step`] computed.
pub struct StepOutput {
    /// Mean cross-entropy of the batch (before the update).
    pub loss: f32,
    /// `[B, n_classes]` logits (before the update), detached from the graph.
    pub logits: Tensor<2>,
    /// Forward and loss (without reading the loss: flex computes eagerly).
    pub forward: Duration,
    /// Backward and reading the loss value.
    pub backward: Duration,
    /// The optimiser's update (zero for a model without trainable weights).
    pub optimizer: Duration,
}

/// A model on the training (autodiff) device with its optimiser and learning rate.
pub struct Trainer {
    /// Always `Some` between calls: the optimiser takes the model by value.
    model: Option<Model>,
    optimizer: ModuleOptimizer,
    /// The model's device first, then the other data-parallel devices.
    devices: Vec<Device>,
    /// The loss function built on each of `devices`.
    loss_fns: Vec<CrossEntropyLoss>,
    label_smoothing: Option<f64>,
    class_weights: Option<Vec<f32>>,
    /// The step's seed, for the data-parallel devices' random state.
    step_seed: Option<u64>,
    /// The forward and backward passes' precision.
    precision: Precision,
    learning_rate: f64,
}

impl Trainer {
    pub fn new(
        model: Model,
        optimizer: ModuleOptimizer,
        learning_rate: f64,
        device: &Device,
    ) -> Self {
        let mut t = Trainer {
            model: Some(model),
            optimizer,
            devices: vec![device.clone()],
            loss_fns: Vec::new(),
            label_smoothing: None,
            class_weights: None,
            step_seed: None,
            precision: Precision::F32,
            learning_rate,
        };
        t.build_losses();
        t
    }

    /// Splits each step's batch by rows over the model's device and `others` (autodiff devices;
    /// see [`crate::parallel`]).
    pub fn with_data_parallel(mut self, others: Vec<Device>) -> Self {
        self.devices.truncate(1);
        self.devices.extend(others);
        self.build_losses();
        self
    }

    /// Computes the forward and backward passes in `precision` (see [`crate::precision`]).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// The devices a step runs on (the model's first).
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// The seed the caller gave the model's device for this step: the other data-parallel
    /// devices draw from seeds derived from it ([`crate::parallel::rank_seed`]).
    pub fn set_step_seed(&mut self, seed: u64) {
        self.step_seed = Some(seed);
    }

    fn build_losses(&mut self) {
        self.loss_fns = self
            .devices
            .iter()
            .map(|d| {
                CrossEntropyLossConfig::new()
                    .with_smoothing(self.label_smoothing.filter(|&a| a > 0.0).map(|a| a as f32))
                    .with_weights(self.class_weights.clone())
                    .init(d)
            })
            .collect();
    }

    /// Trains on a label-smoothed and/or class-weighted cross-entropy (burn's: the weighted
    /// mean `sum(w_y * l) / sum(w_y)` over the batch, as PyTorch's `CrossEntropyLoss`).
    pub fn with_loss(
        mut self,
        label_smoothing: Option<f64>,
        class_weights: Option<&[f32]>,
    ) -> Self {
        self.label_smoothing = label_smoothing;
        self.class_weights = class_weights.map(<[f32]>::to_vec);
        self.build_losses();
        self
    }

    /// The rate of the next steps (a schedule sets it before each step).
    pub fn set_learning_rate(&mut self, learning_rate: f64) {
        self.learning_rate = learning_rate;
    }

    /// Replaces the weights (early stopping's restore); the optimizer state stays.
    pub fn set_model(&mut self, model: Model) {
        self.model = Some(model);
    }

    pub fn model(&self) -> &Model {
        self.model.as_ref().expect("a model between steps")
    }

    pub fn optimizer(&self) -> &ModuleOptimizer {
        &self.optimizer
    }

    pub fn learning_rate(&self) -> f64 {
        self.learning_rate
    }

    pub fn into_model(self) -> Model {
        self.model.expect("a model between steps")
    }

    /// One optimisation step on a batch: forward, loss, backward (trainable models), and, when
    /// the loss is finite, the optimiser's update. Random state (dropout) is drawn from the
    /// device as it is; `train` seeds it per step before calling this.
    pub fn step(
        &mut self,
        input: ModelInput,
        targets: Tensor<1, Int>,
    ) -> Result<StepOutput, NonFiniteStep> {
        if self.devices.len() > 1 && self.model().is_trainable() {
            return self.step_parallel(input, targets);
        }
        let t0 = Instant::now();
        let model = self.model.take().expect("a model between steps");
        let logits = self.precision.forward(&model, input);
        let loss = self.loss_fns[0].forward(logits.clone(), targets);
        let t1 = Instant::now();
        let grads = model.is_trainable().then(|| loss.backward());
        let loss_v: f32 = loss.into_scalar();
        let t2 = Instant::now();
        if !loss_v.is_finite() {
            self.model = Some(model);
            return Err(NonFiniteStep::Loss(loss_v));
        }
        let model = match grads {
            Some(grads) => {
                let grads = GradientsParams::from_grads(grads, &model);
                if let Err(e) = self.precision.check_gradients(&model, &grads) {
                    self.model = Some(model);
                    return Err(e);
                }
                self.optimizer.step(self.learning_rate, model, grads)
            }
            None => model,
        };
        self.model = Some(model);
        Ok(StepOutput {
            loss: loss_v,
            logits: logits.detach(),
            forward: t1 - t0,
            backward: t2 - t1,
            optimizer: t2.elapsed(),
        })
    }

    /// [`Trainer::step`] with the batch split over the devices ([`crate::parallel`]).
    fn step_parallel(
        &mut self,
        input: ModelInput,
        targets: Tensor<1, Int>,
    ) -> Result<StepOutput, NonFiniteStep> {
        let model = self.model.take().expect("a model between steps");
        let setup = crate::parallel::PassSetup {
            devices: &self.devices,
            losses: &self.loss_fns,
            class_weights: self.class_weights.as_deref(),
            step_seed: self.step_seed,
            precision: self.precision,
        };
        let pass = crate::parallel::forward_backward(&model, input, targets, &setup);
        let checked = match pass.loss.is_finite() {
            true => self.precision.check_gradients(&model, &pass.grads),
            false => Err(NonFiniteStep::Loss(pass.loss)),
        };
        if let Err(e) = checked {
            self.model = Some(model);
            return Err(e);
        }
        let t = Instant::now();
        self.model = Some(self.optimizer.step(self.learning_rate, model, pass.grads));
        Ok(StepOutput {
            loss: pass.loss,
            logits: pass.logits,
            forward: pass.forward,
            backward: pass.backward,
            optimizer: t.elapsed(),
        })
    }
}
