//! Tests (`--features cubecl`): the lecture CNN trained on burn's CubeCL CPU runtime against the
//! same training on flex. CubeCL compiles its kernels through LLVM as it does for CUDA, so this
//! runs the device-generic code a GPU run takes (burn's `Conv2d`/`MaxPool2d` instead of this
//! crate's fused CPU kernels, burn's `Adam` instead of the fused one, transfers, checkpoints,
//! evaluation) on every CI run, without a GPU.
//!
//! Tolerances: the two devices sum in different orders, so values agree to float rounding, which
//! a few Adam steps amplify: losses and probabilities within 2e-3, the same weights on either
//! device within 1e-4.

use std::path::Path;

use crate::export::onnx::build_onnx;
use crate::testdata::{TinyDataset, copy_dir, write_tiny_dataset};
use crate::train::{StepStats, TrainObserver};
use crate::{CheckpointSel, DeviceChoice, ModelKind, TrainRequest, TrainSummary, TrainedModel};

/// Each step's reported loss.
#[derive(Default)]
struct Losses(Vec<(u64, f64)>);

impl TrainObserver for Losses {
    fn step(&mut self, s: &StepStats) {
        self.0.push((s.step, s.loss));
    }
}

fn train_to(data: &Path, dir: &Path, steps: u64, device: DeviceChoice) -> (TrainSummary, Losses) {
    let mut req = TrainRequest::new(ModelKind::Cnn, dir, format!("{}/train-*", data.display()));
    req.eval_files = Some(format!("{}/eval-*", data.display()));
    req.batch_size = 8;
    req.train_steps = steps;
    req.checkpoint_every = 2;
    req.log_every = 1;
    // Dropout draws from each device's own generator: off, so both runs compute one function.
    req.dropout = Some(0.0);
    req.device = device;
    let mut losses = Losses::default();
    let summary = crate::train(&req, &mut losses).unwrap_or_else(|e| panic!("{device}: {e}"));
    (summary, losses)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Probabilities of the model in `dir` on the eval images, loaded onto `device`.
fn eval_probs(dir: &Path, device: DeviceChoice, images: &[f32], n: usize) -> Vec<f32> {
    let m = TrainedModel::load(dir, CheckpointSel::Latest, device).unwrap();
    m.predict_images(images, n).unwrap()
}

#[test]
fn cubecl_trains_resumes_and_exports_like_flex() {
    // As the CLI pins it (`device::pin_default_device`): a resumed optimizer state loads on the
    // host. A test cannot set the environment safely while other tests run, so the runner does.
    assert_eq!(
        std::env::var(crate::device::DEFAULT_DEVICE_ENV).as_deref(),
        Ok("flex"),
        "run this test with BURN_DEVICE=flex (scripts/test-all does), as the CLI sets it"
    );
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let t = TinyDataset {
        classes: 3,
        train_per_class: 16,
        eval_per_class: 4,
        image_size: 32,
        ..Default::default()
    };
    write_tiny_dataset(&data, &t).unwrap();
    let (flex, cube) = (tmp.path().join("flex"), tmp.path().join("cubecl"));

    // Two steps on flex, then each device resumes that checkpoint for four more.
    let (first, _) = train_to(&data, &flex, 2, DeviceChoice::Cpu);
    assert_eq!(first.final_step, 2);
    copy_dir(&flex, &cube);
    let (f, f_losses) = train_to(&data, &flex, 6, DeviceChoice::Cpu);
    let (c, c_losses) = train_to(&data, &cube, 6, DeviceChoice::Cubecl);
    assert_eq!((f.resumed_from, c.resumed_from), (Some(2), Some(2)));
    assert_eq!(f_losses.0.len(), 4);
    assert_eq!(
        f_losses.0.iter().map(|s| s.0).collect::<Vec<_>>(),
        c_losses.0.iter().map(|s| s.0).collect::<Vec<_>>()
    );
    for ((step, lf), (_, lc)) in f_losses.0.iter().zip(&c_losses.0) {
        assert!(
            lf.is_finite() && (lf - lc).abs() < 2e-3,
            "step {step}: flex {lf}, cubecl {lc}"
        );
    }
    // Evaluation ran on each device's plain (inference) side.
    let (fe, ce) = (f.eval.unwrap(), c.eval.unwrap());
    assert_eq!(fe.examples, ce.examples);
    assert!(
        (fe.loss - ce.loss).abs() < 2e-3,
        "eval loss: flex {}, cubecl {}",
        fe.loss,
        ce.loss
    );

    // The weights each device trained, on the eval images: close; the same weights on either
    // device: equal to rounding.
    let m = TrainedModel::load(&cube, CheckpointSel::Latest, DeviceChoice::Cpu).unwrap();
    let n = 6;
    let s = m.image_size();
    let images: Vec<f32> = (0..n * s * s)
        .map(|i| ((i * 37 % 101) as f32) / 100.0)
        .collect();
    let p_flex = eval_probs(&flex, DeviceChoice::Cpu, &images, n);
    let p_cube = eval_probs(&cube, DeviceChoice::Cubecl, &images, n);
    let p_cube_on_flex = eval_probs(&cube, DeviceChoice::Cpu, &images, n);
    assert!(
        max_diff(&p_flex, &p_cube) < 2e-3,
        "{}",
        max_diff(&p_flex, &p_cube)
    );
    assert!(
        max_diff(&p_cube, &p_cube_on_flex) < 1e-4,
        "{}",
        max_diff(&p_cube, &p_cube_on_flex)
    );

    // A checkpoint written on the CubeCL device resumes on flex.
    let (back, back_losses) = train_to(&data, &cube, 8, DeviceChoice::Cpu);
    assert_eq!((back.resumed_from, back.final_step), (Some(6), 8));
    assert!(back_losses.0.iter().all(|s| s.1.is_finite()));

    // The export captured on either device is the same ONNX model: the same nodes, attributes,
    // weights, inputs and outputs, byte for byte once the tracer's intermediate tensor names
    // (a process-wide counter, different for every capture) are numbered in graph order.
    let on_cube = TrainedModel::load(&cube, CheckpointSel::Latest, DeviceChoice::Cubecl).unwrap();
    let on_flex = TrainedModel::load(&cube, CheckpointSel::Latest, DeviceChoice::Cpu).unwrap();
    let (a, b) = (build_onnx(&on_cube).unwrap(), build_onnx(&on_flex).unwrap());
    let (a, b) = (canonical_onnx(&a), canonical_onnx(&b));
    assert!(
        a == b,
        "the ONNX captured on cubecl ({} bytes) differs from flex's ({} bytes)",
        a.len(),
        b.len()
    );
}

/// `onnx` re-encoded with every intermediate tensor (a node output that is not a graph output)
/// renamed `t0`, `t1`, ... in node order.
fn canonical_onnx(onnx: &[u8]) -> Vec<u8> {
    use onnx_ir::{Message, ModelProto};
    let mut m = ModelProto::parse_from_bytes(onnx).unwrap();
    let g = m.graph.as_mut().unwrap();
    let outputs: std::collections::HashSet<String> =
        g.output.iter().map(|o| o.name.clone()).collect();
    let mut names = std::collections::HashMap::new();
    for node in &g.node {
        for o in node.output.iter().filter(|o| !outputs.contains(*o)) {
            let n = names.len();
            names.entry(o.clone()).or_insert_with(|| format!("t{n}"));
        }
    }
    for node in g.node.iter_mut() {
        for name in node.input.iter_mut().chain(node.output.iter_mut()) {
            if let Some(n) = names.get(name) {
                *name = n.clone();
            }
        }
    }
    g.value_info.clear();
    m.write_to_bytes().unwrap()
}
