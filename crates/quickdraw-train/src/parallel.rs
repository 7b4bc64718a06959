//! Data-parallel training in one process (`train --device cuda:0,cuda:1`): the forward and
//! backward pass of one step split by rows over several devices, and the gradients summed on the
//! first one.
//!
//! Each device runs forward and backward on its rows of the batch with its own copy of the
//! weights (a [`Module::fork`] of the model). Each part's loss is scaled by its share of the
//! batch's loss before backward: rows / batch, or the part's sum of class weights over the
//! batch's, since the class-weighted loss is a weighted mean. The scaled gradients are moved to
//! the first device and summed there. That sum is the gradient of the whole batch's loss, so one
//! optimiser step there updates the one model that checkpoints, evaluation and export see. The
//! next step forks the updated weights again. The result equals a single-device step on the
//! whole batch up to float summation order; the tests check this on two CPU devices.
//!
//! Dropout draws its masks on each device from a seed derived from the step's seed and the
//! device's rank. A run is deterministic, but its masks are not the single-device run's.
//!
//! The devices' work is issued from one thread: first every copy of the weights and every part
//! of the batch, then every pass, then the reads of the results. On GPUs, whose kernels run
//! asynchronously, the passes can then overlap; whether they do is not measured yet (no GPU
//! machine has been available: `scripts/gpu-check` measures it). On the CPU backends one
//! operation already uses every core, so the parts run one after the other. The gradients reach
//! the first device through burn's `to_device` (cubecl's device-to-device transport between
//! CUDA devices, NCCL where libnccl is present) and are summed there: a reduce onto one device,
//! not burn's `all_reduce` across copies kept on each device. Training stays within one machine.

use std::ops::Range;
use std::time::{Duration, Instant};

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::loss::CrossEntropyLoss;
use burn::optim::GradientsParams;
use burn::prelude::*;

use crate::model::{Model, ModelInput};
use crate::precision::Precision;

/// Row ranges splitting `batch` rows over `parts` devices, as equal as possible (the first
/// `batch % parts` get one row more); empty ranges are left out.
pub fn row_ranges(batch: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.max(1);
    let (base, extra) = (batch / parts, batch % parts);
    let mut start = 0;
    let mut out = Vec::with_capacity(parts);
    for k in 0..parts {
        let len = base + usize::from(k < extra);
        if len > 0 {
            out.push(start..start + len);
        }
        start += len;
    }
    out
}

/// Each part's share of the batch's loss: its rows over the batch's, or, with class weights
/// (a weighted mean, `sum(w_y * l) / sum(w_y)`), its sum of the targets' weights over the batch's.
pub fn loss_shares(
    labels: &[i64],
    ranges: &[Range<usize>],
    class_weights: Option<&[f32]>,
) -> Vec<f64> {
    let weight = |r: &Range<usize>| -> f64 {
        match class_weights {
            None => r.len() as f64,
            Some(w) => labels[r.clone()]
                .iter()
                .map(|&y| f64::from(w.get(y as usize).copied().unwrap_or(0.0)))
                .sum(),
        }
    };
    let parts: Vec<f64> = ranges.iter().map(weight).collect();
    let total: f64 = parts.iter().sum();
    parts
        .into_iter()
        .map(|p| if total > 0.0 { p / total } else { 0.0 })
        .collect()
}

/// The seed of the device of rank `rank` (> 0) at a step whose seed is `step_seed` (rank 0 keeps
/// the step's own seed, set by the caller).
pub fn rank_seed(step_seed: u64, rank: usize) -> u64 {
    // SplitMix64's increment: far-apart streams for neighbouring ranks.
    step_seed.wrapping_add((rank as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// What [`forward_backward`] computed over all devices.
pub struct ParallelPass {
    /// The batch's loss: the parts' losses weighted by their shares.
    pub loss: f32,
    /// `[B, n_classes]` logits on the first device, detached, in the batch's row order.
    pub logits: Tensor<2>,
    /// The batch's gradients, on the first device (not autodiff).
    pub grads: GradientsParams,
    pub forward: Duration,
    pub backward: Duration,
}

/// What a data-parallel pass runs with (the [`crate::trainer::Trainer`]'s settings).
pub struct PassSetup<'a> {
    /// The model's device first.
    pub devices: &'a [Device],
    /// The loss function built on each device.
    pub losses: &'a [CrossEntropyLoss],
    pub class_weights: Option<&'a [f32]>,
    /// The seed the caller gave the first device for this step; the others are seeded from it
    /// ([`rank_seed`]) before their forward pass.
    pub step_seed: Option<u64>,
    pub precision: Precision,
}

/// Forward and backward of `model` (on `devices[0]`) over `input`'s rows split across the
/// devices of `setup`.
///
/// Every copy of the weights and every part of the batch is sent first, then every pass is
/// issued, then the results are read: no device's copy waits behind another device's pass.
pub fn forward_backward(
    model: &Model,
    input: ModelInput,
    targets: Tensor<1, Int>,
    setup: &PassSetup,
) -> ParallelPass {
    let t0 = Instant::now();
    let devices = setup.devices;
    let ranges = row_ranges(input.batch(), devices.len());
    // The labels are read back only for class weights (a wait for the device).
    let labels: Vec<i64> = match setup.class_weights {
        Some(_) => targets.to_data().iter::<i64>().collect(),
        None => Vec::new(),
    };
    let shares = loss_shares(&labels, &ranges, setup.class_weights);
    let parts: Vec<(Model, ModelInput, Tensor<1, Int>)> = ranges
        .iter()
        .enumerate()
        .map(|(rank, range)| {
            let device = &devices[rank];
            let replica = match rank {
                0 => model.clone(),
                _ => model.clone().fork(device),
            };
            let y = targets.clone().narrow(0, range.start, range.len());
            (
                replica,
                input.rows(range.clone(), device),
                y.to_device(device),
            )
        })
        .collect();
    let mut passes = Vec::with_capacity(parts.len());
    let mut forward = Duration::ZERO;
    for (rank, (replica, x, y)) in parts.into_iter().enumerate() {
        let t = Instant::now();
        if let (Some(s), true) = (setup.step_seed, rank > 0) {
            devices[rank].seed(rank_seed(s, rank));
        }
        let logits = setup.precision.forward(&replica, x);
        let loss = setup.losses[rank].forward(logits.clone(), y);
        forward += t.elapsed();
        // [1] scaled by the part's share, so the parts' gradients sum to the batch's.
        let grads = (loss.clone() * shares[rank]).backward();
        passes.push((replica, loss, logits.detach(), grads));
    }
    let first = devices[0].clone().inner();
    let mut loss = 0.0f64;
    let mut all_logits = Vec::with_capacity(passes.len());
    let mut grads = Vec::with_capacity(passes.len());
    for ((replica, part_loss, logits, part_grads), share) in passes.into_iter().zip(&shares) {
        loss += f64::from(part_loss.into_scalar::<f32>()) * share;
        all_logits.push(logits.to_device(&devices[0]));
        grads.push(GradientsParams::from_grads(part_grads, &replica).to_device(&first, &replica));
    }
    let grads = sum_grads(model, grads);
    let backward = t0.elapsed().saturating_sub(forward);
    ParallelPass {
        loss: loss as f32,
        logits: Tensor::cat(all_logits, 0),
        grads,
        forward,
        backward,
    }
}

/// The element-wise sum of `parts` (gradients of the same parameters, on one device) for each
/// float parameter of `model`.
pub fn sum_grads(model: &Model, parts: Vec<GradientsParams>) -> GradientsParams {
    let mut v = SumGrads {
        parts,
        total: GradientsParams::new(),
    };
    model.visit(&mut v);
    v.total
}

struct SumGrads {
    parts: Vec<GradientsParams>,
    total: GradientsParams,
}

impl ModuleVisitor for SumGrads {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let sum = self
            .parts
            .iter_mut()
            .filter_map(|p| p.remove::<D>(param.id))
            .reduce(|a, b| a + b);
        if let Some(sum) = sum {
            self.total.register(param.id, sum);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::testdata::{TinyDataset, copy_dir, write_tiny_dataset};
    use crate::train::{StepStats, TrainObserver};
    use crate::{DeviceChoice, ModelKind, OptimizerKind, TrainRequest, TrainSummary};

    /// Each step's reported loss.
    #[derive(Default)]
    struct Losses(Vec<(u64, f64)>);

    impl TrainObserver for Losses {
        fn step(&mut self, s: &StepStats) {
            self.0.push((s.step, s.loss));
        }
    }

    fn data(dir: &Path) -> String {
        let t = TinyDataset {
            classes: 3,
            train_per_class: 12,
            eval_per_class: 4,
            image_size: 16,
            ..Default::default()
        };
        write_tiny_dataset(dir, &t).unwrap();
        format!("{}/train-*", dir.display())
    }

    /// Trains the lecture CNN at batch 9 (parts of 5 and 4 rows on two devices).
    fn train_on(
        train_files: &str,
        dir: &Path,
        steps: u64,
        devices: &[DeviceChoice],
        edit: impl Fn(&mut TrainRequest),
    ) -> (TrainSummary, Vec<(u64, f64)>) {
        let mut req = TrainRequest::new(ModelKind::Cnn, dir, train_files);
        req.eval_files = Some(train_files.replace("train-*", "eval-*"));
        req.batch_size = 9;
        req.train_steps = steps;
        req.checkpoint_every = 2;
        req.log_every = 1;
        req.device = devices[0];
        req.parallel_devices = devices[1..].to_vec();
        edit(&mut req);
        let mut losses = Losses::default();
        let summary =
            crate::train(&req, &mut losses).unwrap_or_else(|e| panic!("{devices:?}: {e}"));
        (summary, losses.0)
    }

    fn assert_close(a: &[(u64, f64)], b: &[(u64, f64)], tol: f64) {
        assert_eq!(a.len(), b.len());
        for ((step, x), (step_b, y)) in a.iter().zip(b) {
            assert_eq!(step, step_b);
            assert!(
                x.is_finite() && (x - y).abs() < tol,
                "step {step}: {x} vs {y}"
            );
        }
    }

    /// Trains `devices` from a copy of `base`'s checkpoint (no random draw after it: without
    /// dropout a step uses no random state, so tests running at the same time, which share the
    /// CPU backend's generator, cannot change the result).
    fn resume_copy(
        files: &str,
        base: &Path,
        dir: &Path,
        devices: &[DeviceChoice],
        edit: impl Fn(&mut TrainRequest),
    ) -> (TrainSummary, Vec<(u64, f64)>) {
        copy_dir(base, dir);
        let (s, l) = train_on(files, dir, 6, devices, edit);
        assert_eq!(s.resumed_from, Some(2), "{devices:?}");
        (s, l)
    }

    /// Without dropout, two devices compute the single-device steps: the same losses, and the
    /// same evaluation of the weights they end with, to float summation order. Plain SGD, whose
    /// step follows the gradient's scale (Adam's barely does), so a wrong share shows. Also
    /// with class weights, where the parts' shares of the loss are not their shares of the rows.
    #[test]
    fn two_cpu_devices_train_as_one() {
        let tmp = tempfile::tempdir().unwrap();
        let files = data(&tmp.path().join("data"));
        let cpu = DeviceChoice::Cpu;
        let weights = tmp.path().join("weights.json");
        std::fs::write(
            &weights,
            r#"{"circle": 1.0, "square": 4.0, "triangle": 0.5}"#,
        )
        .unwrap();
        let no_dropout = |r: &mut TrainRequest| {
            r.dropout = Some(0.0);
            r.optimizer = OptimizerKind::Sgd;
            r.learning_rate = Some(0.1);
        };
        let weighted = |r: &mut TrainRequest| {
            no_dropout(r);
            r.class_weight = Some(weights.display().to_string());
        };
        let mut first_losses = Vec::new();
        for (name, edit) in [
            ("plain", &no_dropout as &dyn Fn(&mut TrainRequest)),
            ("weighted", &weighted),
        ] {
            let base = tmp.path().join(name);
            train_on(&files, &base, 2, &[cpu], edit);
            let (one, l1) = resume_copy(&files, &base, &base.with_extension("one"), &[cpu], edit);
            let (two, l2) = resume_copy(
                &files,
                &base,
                &base.with_extension("two"),
                &[cpu, cpu],
                edit,
            );
            assert_eq!(l1.len(), 4, "{name}");
            assert_close(&l1, &l2, 1e-4);
            let (e1, e2) = (one.eval.unwrap(), two.eval.unwrap());
            assert!(
                (e1.loss - e2.loss).abs() < 1e-4,
                "{name}: {} vs {}",
                e1.loss,
                e2.loss
            );
            first_losses.push(l1[0].1);
        }
        // The class weights change the loss (else the weighted comparison proves nothing more).
        assert!(
            (first_losses[0] - first_losses[1]).abs() > 1e-3,
            "{first_losses:?}"
        );
    }

    /// A batch smaller than the number of devices is refused before training.
    #[test]
    fn a_batch_must_give_every_device_a_row() {
        let tmp = tempfile::tempdir().unwrap();
        let files = data(&tmp.path().join("data"));
        let three = [DeviceChoice::Cpu; 3];
        let mut req = TrainRequest::new(ModelKind::Cnn, tmp.path().join("m"), files.as_str());
        req.batch_size = 2;
        req.device = three[0];
        req.parallel_devices = three[1..].to_vec();
        let e = crate::train(&req, &mut crate::train::NoObserver)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--batch-size 2") && e.contains("3 devices"),
            "{e}"
        );
    }

    /// burn's CubeCL CPU runtime as the second device: the gradients cross backends (CubeCL's
    /// kernels on one part, flex's fused ones on the other). Tolerance: as the cubecl parity test.
    /// (The BURN_DEVICE=flex that test asks for is needed here too: resuming loads the optimiser
    /// state on burn's default device.)
    #[cfg(feature = "cubecl")]
    #[test]
    fn flex_and_cubecl_train_as_flex_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let files = data(&tmp.path().join("data"));
        let no_dropout = |r: &mut TrainRequest| r.dropout = Some(0.0);
        let cpu = DeviceChoice::Cpu;
        let base = tmp.path().join("base");
        train_on(&files, &base, 2, &[cpu], no_dropout);
        let (_, l1) = resume_copy(&files, &base, &tmp.path().join("one"), &[cpu], no_dropout);
        let both = [cpu, DeviceChoice::Cubecl];
        let (s, l2) = resume_copy(&files, &base, &tmp.path().join("two"), &both, no_dropout);
        assert_close(&l1, &l2, 2e-3);
        assert_eq!(s.final_step, 6);
    }

    #[test]
    fn rows_are_split_as_equally_as_possible() {
        assert_eq!(row_ranges(10, 2), vec![0..5, 5..10]);
        assert_eq!(row_ranges(10, 3), vec![0..4, 4..7, 7..10]);
        assert_eq!(row_ranges(2, 3), vec![0..1, 1..2]);
        assert_eq!(row_ranges(7, 1), vec![0..7]);
    }

    #[test]
    fn loss_shares_follow_rows_or_class_weights() {
        let labels = [0, 1, 1, 0];
        let r = row_ranges(4, 2);
        assert_eq!(loss_shares(&labels, &r, None), vec![0.5, 0.5]);
        // Weights 1 and 3: part 0 holds 1 + 3 = 4, part 1 holds 3 + 1 = 4 of 8.
        assert_eq!(loss_shares(&labels, &r, Some(&[1.0, 3.0])), vec![0.5, 0.5]);
        let r = vec![0..1, 1..4];
        // Part 0: 1 of 1 + 3 + 3 + 1 = 8.
        assert_eq!(
            loss_shares(&labels, &r, Some(&[1.0, 3.0])),
            vec![0.125, 0.875]
        );
    }

    #[test]
    fn ranks_get_distinct_seeds() {
        assert_eq!(rank_seed(5, 0), 5);
        assert_ne!(rank_seed(5, 1), rank_seed(5, 2));
        assert_ne!(rank_seed(5, 1), rank_seed(6, 1));
    }
}
