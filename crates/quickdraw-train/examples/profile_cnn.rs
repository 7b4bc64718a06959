//! Where a training step of the lecture CNN spends its time on the flex CPU backend: each layer's
//! forward and backward, then the whole step split into forward, backward and optimiser.
//!
//! ```text
//! cargo run --release -p quickdraw-train --example profile_cnn -- [BATCH] [REPS]
//! ```
//!
//! Layer timings run each layer alone on random inputs of the shape it sees in the model (64x64,
//! the lecture's conv 10x10x32 'same' / pool 4 / conv 5x5x64 'same' / pool 4 / dense 256 / dense
//! 10). Backward = (forward + backward on the autodiff device) - forward there; the first
//! convolution's input needs no gradient, as in training. Medians of REPS runs.

use std::time::Instant;

use burn::nn::conv::Conv2dConfig;
use burn::nn::pool::MaxPool2dConfig;
use burn::nn::{LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation::relu;
use quickdraw_train::OptimizerKind;
use quickdraw_train::model::{ModelConfig, ModelInput, ModelKind, conv_same_pool};
use quickdraw_train::trainer::Trainer;

fn median_ms(reps: usize, mut f: impl FnMut() -> f64) -> f64 {
    f(); // warm-up (allocations, gemm packing buffers)
    let mut v: Vec<f64> = (0..reps).map(|_| f()).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Forces the computation of `t` (flex is eager; reading one value also orders any queue).
fn sync<const D: usize>(t: Tensor<D>) {
    let _: Vec<f32> = t
        .slice_dim(0, 0..1)
        .flatten::<1>(0, D - 1)
        .slice([0..1])
        .into_data()
        .try_to_vec()
        .unwrap();
}

type Layer = Box<dyn Fn(Tensor<4>) -> Tensor<4>>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let batch: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(64);
    let reps: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("lecture CNN, batch {batch}, flex CPU backend, {threads} threads, median of {reps}");
    println!(
        "{:<28} {:>18} {:>12} {:>12} {:>12}",
        "layer", "input", "forward ms", "backward ms", "GFLOP/s fwd"
    );

    let rows: Vec<(&str, [usize; 4], bool, f64, Box<dyn Fn(&Device) -> Layer>)> = vec![
        (
            "conv1 10x10, 1->32, same",
            [batch, 1, 64, 64],
            false,
            2.0 * 64.0 * 64.0 * 32.0 * 100.0,
            Box::new(|d| {
                let c = Conv2dConfig::new([1, 32], [10, 10])
                    .with_padding(PaddingConfig2d::Same)
                    .init(d);
                Box::new(move |x| c.forward(x))
            }),
        ),
        (
            "maxpool 4",
            [batch, 32, 64, 64],
            true,
            0.0,
            Box::new(|_| {
                let p = MaxPool2dConfig::new([4, 4]).with_strides([4, 4]).init();
                Box::new(move |x| p.forward(x))
            }),
        ),
        (
            "conv1 + maxpool 4, fused",
            [batch, 1, 64, 64],
            false,
            2.0 * 64.0 * 64.0 * 32.0 * 100.0,
            Box::new(|d| {
                let c = Conv2dConfig::new([1, 32], [10, 10])
                    .with_padding(PaddingConfig2d::Same)
                    .init(d);
                let p = MaxPool2dConfig::new([4, 4]).with_strides([4, 4]).init();
                Box::new(move |x| conv_same_pool(&c, &p, x).expect("one channel"))
            }),
        ),
        (
            "relu",
            [batch, 32, 16, 16],
            true,
            0.0,
            Box::new(|_| Box::new(relu)),
        ),
        (
            "conv2 5x5, 32->64, same",
            [batch, 32, 16, 16],
            true,
            2.0 * 16.0 * 16.0 * 64.0 * 32.0 * 25.0,
            Box::new(|d| {
                let c = Conv2dConfig::new([32, 64], [5, 5])
                    .with_padding(PaddingConfig2d::Same)
                    .init(d);
                Box::new(move |x| c.forward(x))
            }),
        ),
        (
            "conv2 + maxpool 4, fused",
            [batch, 32, 16, 16],
            true,
            2.0 * 16.0 * 16.0 * 64.0 * 32.0 * 25.0,
            Box::new(|d| {
                let c = Conv2dConfig::new([32, 64], [5, 5])
                    .with_padding(PaddingConfig2d::Same)
                    .init(d);
                let p = MaxPool2dConfig::new([4, 4]).with_strides([4, 4]).init();
                Box::new(move |x| conv_same_pool(&c, &p, x).expect("same conv"))
            }),
        ),
        (
            "maxpool 4",
            [batch, 64, 16, 16],
            true,
            0.0,
            Box::new(|_| {
                let p = MaxPool2dConfig::new([4, 4]).with_strides([4, 4]).init();
                Box::new(move |x| p.forward(x))
            }),
        ),
        (
            "dense 1024->256 (+256->10)",
            [batch, 64, 4, 4],
            true,
            2.0 * (1024.0 * 256.0 + 2560.0),
            Box::new(|d| {
                let l1 = LinearConfig::new(1024, 256).init(d);
                let l2 = LinearConfig::new(256, 10).init(d);
                Box::new(move |x: Tensor<4>| {
                    let b = x.dims()[0];
                    l2.forward(relu(l1.forward(x.reshape([b, 1024]))))
                        .reshape([b, 10, 1, 1])
                })
            }),
        ),
    ];
    let plain = Device::flex();
    let ad = plain.clone().autodiff();
    let (mut total_f, mut total_b) = (0.0, 0.0);
    for (i, (name, shape, needs_grad, flop, make)) in rows.iter().enumerate() {
        let layer = make(&plain);
        let x = Tensor::<4>::random(*shape, Distribution::Default, &plain);
        let fwd = median_ms(reps, || {
            let t = Instant::now();
            sync(layer(x.clone()));
            t.elapsed().as_secs_f64() * 1e3
        });
        let layer_ad = make(&ad);
        let xa = Tensor::<4>::random(*shape, Distribution::Default, &ad);
        let both = median_ms(reps, || {
            let x = if *needs_grad {
                xa.clone().require_grad()
            } else {
                xa.clone()
            };
            let t = Instant::now();
            let y = layer_ad(x);
            let _grads = y.sum().backward();
            t.elapsed().as_secs_f64() * 1e3
        });
        let bwd = (both - fwd).max(0.0);
        // The sum counts the layers as the model runs them: the fused convolutions and pools,
        // the ReLU and the dense layers, not burn's separate layers (rows 0, 1, 4 and 6).
        if [2, 3, 5, 7].contains(&i) {
            total_f += fwd;
            total_b += bwd;
        }
        let gflops = if *flop > 0.0 {
            format!("{:.1}", flop * batch as f64 / (fwd * 1e-3) / 1e9)
        } else {
            "-".into()
        };
        println!(
            "{name:<28} {:>18} {fwd:>12.2} {bwd:>12.2} {gflops:>12}",
            format!("{shape:?}")
        );
    }
    println!(
        "{:<28} {:>18} {total_f:>12.2} {total_b:>12.2}",
        "sum (conv1 as the model runs it)", ""
    );

    // The whole step as `quickdraw train` runs it (`Trainer::step`, which times its phases).
    let cfg = ModelConfig::new(ModelKind::Cnn, 10, 64);
    let model = cfg.init(&ad).expect("model");
    let mut trainer = Trainer::new(model, OptimizerKind::Adam.init(), 1e-3, &ad);
    let targets = Tensor::<1, Int>::from_data(
        TensorData::new((0..batch as i64).map(|i| i % 10).collect(), [batch]),
        &ad,
    );
    let (mut f, mut b, mut o) = (vec![], vec![], vec![]);
    for i in 0..=reps {
        let x = Tensor::<4>::random([batch, 1, 64, 64], Distribution::Default, &ad);
        let out = trainer
            .step(ModelInput::Images(x), targets.clone())
            .expect("a finite loss");
        if i > 0 {
            f.push(out.forward.as_secs_f64() * 1e3);
            b.push(out.backward.as_secs_f64() * 1e3);
            o.push(out.optimizer.as_secs_f64() * 1e3);
        }
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (f, b, o) = (med(f), med(b), med(o));
    println!(
        "whole step: forward {f:.1} ms, backward {b:.1} ms, optimiser {o:.1} ms = {:.1} ms per batch of {batch} ({:.0} images/s)",
        f + b + o,
        batch as f64 / ((f + b + o) * 1e-3)
    );
}
