//! The models (`--model baseline|linear|dnn|cnn|rnn|wide_deep`) and their serde configuration.
//!
//! Every model maps a batch to logits `[batch, n_classes]`. Image models take
//! `[batch, 1, size, size]` pixels in [0, 1]; the sequence model takes the stroke features
//! (dx, dy, pen) of `convert --strokes`; the wide & deep model takes the image and the
//! multi-hot metadata vector of [`quickdraw_data::wide`].

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig, Lstm, LstmConfig,
    PaddingConfig2d,
};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::{log_softmax, relu};
use serde::{Deserialize, Serialize};

use quickdraw_data::events::GraphNode;
use quickdraw_data::wide::WideSpec;

use crate::error::{Result, TrainError};
use crate::pipeline::Batch;

/// Which architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Predicts the class prior counted from the training data; nothing is learnt by gradient.
    Baseline,
    /// Softmax regression on the pixels.
    Linear,
    /// Fully connected ReLU layers (`--hidden`).
    Dnn,
    /// The lecture's convolutional network.
    Cnn,
    /// Bidirectional LSTM over the stroke features.
    Rnn,
    /// The lecture's `DNNLinearCombinedClassifier`: the CNN's logits plus a linear model's over
    /// the drawing's metadata (country, recognized, stroke count, duration).
    #[serde(rename = "wide_deep")]
    WideDeep,
}

impl ModelKind {
    pub const ALL: [ModelKind; 6] = [
        ModelKind::Baseline,
        ModelKind::Linear,
        ModelKind::Dnn,
        ModelKind::Cnn,
        ModelKind::Rnn,
        ModelKind::WideDeep,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Baseline => "baseline",
            ModelKind::Linear => "linear",
            ModelKind::Dnn => "dnn",
            ModelKind::Cnn => "cnn",
            ModelKind::Rnn => "rnn",
            ModelKind::WideDeep => "wide_deep",
        }
    }

    /// Whether the model reads stroke features instead of the image.
    pub fn uses_strokes(self) -> bool {
        self == ModelKind::Rnn
    }

    /// Whether the model reads the metadata vector too (the wide part).
    pub fn uses_wide(self) -> bool {
        self == ModelKind::WideDeep
    }

    /// Whether the model has the CNN's convolution tower (`--conv`, `--dense`).
    pub fn has_cnn(self) -> bool {
        matches!(self, ModelKind::Cnn | ModelKind::WideDeep)
    }
}

impl std::str::FromStr for ModelKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ModelKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown model {s:?} (expected baseline, linear, dnn, cnn, rnn or wide_deep)"
                )
            })
    }
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One convolution block: `kernel x kernel` conv ('same' padding, ReLU) then max-pool with
/// window and stride `pool`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvLayer {
    pub kernel: usize,
    pub pool: usize,
    pub filters: usize,
}

/// The lecture's CNN: (kernel, pool, filters) = (10, 4, 32), (5, 4, 64).
pub const LECTURE_CONV: [ConvLayer; 2] = [
    ConvLayer {
        kernel: 10,
        pool: 4,
        filters: 32,
    },
    ConvLayer {
        kernel: 5,
        pool: 4,
        filters: 64,
    },
];
/// The lecture's dense layer after the convolutions.
pub const LECTURE_DENSE: usize = 256;
/// The lecture's dropout rate before the output layer.
pub const LECTURE_DROPOUT: f64 = 0.4;
/// Default DNN hidden layer.
pub const DEFAULT_HIDDEN: usize = 1000;
/// Default LSTM units per direction.
pub const DEFAULT_RNN_UNITS: usize = 256;

/// Parses `kernel:pool:filters,kernel:pool:filters`, e.g. `10:4:32,5:4:64`.
pub fn parse_conv(s: &str) -> Result<Vec<ConvLayer>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let v: Vec<usize> = p
                .split(':')
                .map(|x| x.trim().parse::<usize>().map_err(|e| format!("{p:?}: {e}")))
                .collect::<Result<_, _>>()?;
            match v[..] {
                [kernel, pool, filters] if kernel > 0 && pool > 0 && filters > 0 => Ok(ConvLayer {
                    kernel,
                    pool,
                    filters,
                }),
                _ => Err(format!("{p:?}: expected kernel:pool:filters, all > 0")),
            }
        })
        .collect()
}

/// Parses a comma list of layer widths, e.g. `1000` or `512,256`.
pub fn parse_widths(s: &str) -> Result<Vec<usize>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| match p.trim().parse::<usize>() {
            Ok(v) if v > 0 => Ok(v),
            _ => Err(format!("{p:?} is not a layer width > 0")),
        })
        .collect()
}

/// Architecture hyper-parameters; saved in `config.json`. Fields that do not apply to `kind`
/// are `None` (so an irrelevant flag never makes two configs differ).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub kind: ModelKind,
    pub n_classes: usize,
    /// Image side (image models).
    pub image_size: usize,
    /// DNN hidden layer widths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<Vec<usize>>,
    /// CNN convolution blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv: Option<Vec<ConvLayer>>,
    /// CNN dense layer width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense: Option<usize>,
    /// Dropout rate before the output layer (CNN, DNN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f64>,
    /// LSTM units per direction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rnn_units: Option<usize>,
    /// The wide part's metadata vector (`wide_deep`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wide: Option<WideSpec>,
    /// Batch normalization after each CNN block's pooling (`--batch-norm`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub batch_norm: bool,
}

impl ModelConfig {
    /// A config with the documented defaults of `kind`.
    pub fn new(kind: ModelKind, n_classes: usize, image_size: usize) -> Self {
        let mut c = ModelConfig {
            kind,
            n_classes,
            image_size,
            hidden: None,
            conv: None,
            dense: None,
            dropout: None,
            rnn_units: None,
            wide: None,
            batch_norm: false,
        };
        if kind == ModelKind::WideDeep {
            c.wide = Some(WideSpec::default());
        }
        match kind {
            ModelKind::Dnn => {
                c.hidden = Some(vec![DEFAULT_HIDDEN]);
                c.dropout = Some(0.0);
            }
            ModelKind::Cnn | ModelKind::WideDeep => {
                c.conv = Some(LECTURE_CONV.to_vec());
                c.dense = Some(LECTURE_DENSE);
                c.dropout = Some(LECTURE_DROPOUT);
            }
            ModelKind::Rnn => c.rnn_units = Some(DEFAULT_RNN_UNITS),
            ModelKind::Baseline | ModelKind::Linear => {}
        }
        c
    }

    /// Checks the hyper-parameters (sizes > 0, pooling leaves at least one pixel, ...).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.n_classes < 2 {
            return bad(format!(
                "{} classes: a classifier needs at least 2",
                self.n_classes
            ));
        }
        if let Some(p) = self.dropout
            && !(0.0..1.0).contains(&p)
        {
            return bad(format!("--dropout {p} must be in [0, 1)"));
        }
        if self.batch_norm && !self.kind.has_cnn() {
            return bad(format!(
                "--batch-norm applies to the CNN blocks of cnn and wide_deep, not to {}",
                self.kind
            ));
        }
        match self.kind {
            ModelKind::Dnn if self.hidden.as_ref().is_none_or(|h| h.is_empty()) => {
                bad("--hidden needs at least one layer".into())
            }
            ModelKind::WideDeep if self.wide.is_none_or(|w| w.country_buckets == 0) => {
                bad("wide_deep needs a wide spec with at least one country bucket".into())
            }
            ModelKind::Cnn | ModelKind::WideDeep => {
                let conv = self.conv.as_deref().unwrap_or_default();
                if conv.is_empty() {
                    return bad("--conv needs at least one kernel:pool:filters block".into());
                }
                let mut side = self.image_size;
                for c in conv {
                    side /= c.pool;
                }
                if side == 0 {
                    return bad(format!(
                        "the pools of --conv shrink a {0}x{0} image to nothing; use smaller pools or larger images",
                        self.image_size
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The model's layers as a graph for TensorBoard's Graphs tab: one node per layer with
    /// its output shape (`-1`: the batch) and sizes, in the order `forward` runs them.
    pub fn layer_graph(&self) -> Vec<GraphNode> {
        let mut nodes: Vec<GraphNode> = Vec::new();
        let mut add = |name: &str, op: &str, shape: Vec<i64>, attrs: &[(&str, usize)]| {
            let inputs = nodes
                .last()
                .map(|n| vec![n.name.clone()])
                .unwrap_or_default();
            nodes.push(GraphNode {
                name: name.to_string(),
                op: op.to_string(),
                inputs,
                shape,
                attrs: attrs
                    .iter()
                    .map(|&(k, v)| (k.to_string(), v as i64))
                    .collect(),
            });
        };
        let (s, c) = (self.image_size as i64, self.n_classes as i64);
        let dropout = |add: &mut dyn FnMut(&str, &str, Vec<i64>, &[(&str, usize)]), w: i64| {
            if self.dropout.is_some_and(|p| p > 0.0) {
                add("dropout", "Dropout", vec![-1, w], &[]);
            }
        };
        match self.kind {
            ModelKind::Baseline => {
                add("log_prior", "Const", vec![1, c], &[("classes", c as usize)])
            }
            ModelKind::Rnn => {
                let u = self.rnn_units.unwrap_or(DEFAULT_RNN_UNITS);
                add("strokes", "Placeholder", vec![-1, -1, 3], &[]);
                add(
                    "bidirectional_lstm",
                    "BiLSTM",
                    vec![-1, 2 * u as i64],
                    &[("units", u)],
                );
            }
            ModelKind::Linear | ModelKind::Dnn | ModelKind::Cnn | ModelKind::WideDeep => {
                add("images", "Placeholder", vec![-1, 1, s, s], &[]);
                let mut width = s * s;
                if self.kind.has_cnn() {
                    let (mut side, mut ch) = (s, 1i64);
                    for (i, l) in self.conv.as_deref().unwrap_or_default().iter().enumerate() {
                        ch = l.filters as i64;
                        let k = &[("kernel", l.kernel), ("filters", l.filters)];
                        add(
                            &format!("conv{}", i + 1),
                            "Conv2D",
                            vec![-1, ch, side, side],
                            k,
                        );
                        side /= l.pool as i64;
                        let p = &[("pool", l.pool)];
                        add(
                            &format!("pool{}", i + 1),
                            "MaxPool",
                            vec![-1, ch, side, side],
                            p,
                        );
                        if self.batch_norm {
                            let shape = vec![-1, ch, side, side];
                            add(&format!("batch_norm{}", i + 1), "BatchNorm", shape, &[]);
                        }
                        add(
                            &format!("relu{}", i + 1),
                            "Relu",
                            vec![-1, ch, side, side],
                            &[],
                        );
                    }
                    width = ch * side * side;
                }
                add("flatten", "Flatten", vec![-1, width], &[]);
                let hidden: Vec<usize> = match self.kind {
                    ModelKind::Dnn => self.hidden.clone().unwrap_or_default(),
                    ModelKind::Cnn | ModelKind::WideDeep => {
                        vec![self.dense.unwrap_or(LECTURE_DENSE)]
                    }
                    _ => Vec::new(),
                };
                for (i, &h) in hidden.iter().enumerate() {
                    width = h as i64;
                    add(
                        &format!("dense{}", i + 1),
                        "MatMul",
                        vec![-1, width],
                        &[("units", h)],
                    );
                    add(
                        &format!("dense{}_relu", i + 1),
                        "Relu",
                        vec![-1, width],
                        &[],
                    );
                }
                dropout(&mut add, width);
            }
        }
        match (self.kind, self.wide) {
            (ModelKind::Baseline, _) => {}
            (ModelKind::WideDeep, Some(w)) => {
                // deep_logits + wide_logits (a linear model over the metadata vector).
                let units = &[("units", c as usize)];
                add("deep_logits", "MatMul", vec![-1, c], units);
                add("wide", "Placeholder", vec![-1, w.dim() as i64], &[]);
                add("wide_logits", "MatMul", vec![-1, c], units);
                add("logits", "Add", vec![-1, c], &[]);
            }
            _ => add("logits", "MatMul", vec![-1, c], &[("units", c as usize)]),
        }
        add("softmax", "Softmax", vec![-1, c], &[]);
        // The wide input starts a second branch; the logits add the two.
        for n in nodes.iter_mut() {
            match (self.kind, n.name.as_str()) {
                (ModelKind::WideDeep, "wide") => n.inputs.clear(),
                (ModelKind::WideDeep, "logits") => {
                    n.inputs = vec!["deep_logits".into(), "wide_logits".into()]
                }
                _ => {}
            }
        }
        nodes
    }

    /// Side of the feature map after the CNN's pools.
    fn cnn_side(&self) -> usize {
        self.conv
            .as_deref()
            .unwrap_or_default()
            .iter()
            .fold(self.image_size, |s, c| s / c.pool)
    }

    /// Builds the model with freshly initialised weights on `device`.
    pub fn init(&self, device: &Device) -> Result<Model> {
        self.validate()?;
        let pixels = self.image_size * self.image_size;
        let c = self.n_classes;
        Ok(match self.kind {
            ModelKind::Baseline => {
                let uniform = Tensor::<1>::full([c], -(c as f32).ln(), device);
                Model::Baseline(Baseline {
                    log_prior: Param::from_tensor(uniform).set_require_grad(false),
                })
            }
            ModelKind::Linear => Model::Linear(LinearModel {
                output: LinearConfig::new(pixels, c).init(device),
            }),
            ModelKind::Dnn => {
                let mut hidden = Vec::new();
                let mut width = pixels;
                for &h in self.hidden.as_deref().unwrap_or_default() {
                    hidden.push(LinearConfig::new(width, h).init(device));
                    width = h;
                }
                Model::Dnn(Dnn {
                    hidden,
                    dropout: DropoutConfig::new(self.dropout.unwrap_or(0.0)).init(),
                    output: LinearConfig::new(width, c).init(device),
                })
            }
            ModelKind::Cnn => Model::Cnn(self.init_cnn(device)),
            ModelKind::WideDeep => {
                let dim = self.wide.unwrap_or_default().dim();
                Model::WideDeep(WideDeep {
                    deep: self.init_cnn(device),
                    // Zeros, as TensorFlow's linear models start: the sum starts as the CNN.
                    wide: LinearConfig::new(dim, c)
                        .with_initializer(burn::nn::Initializer::Zeros)
                        .init(device),
                })
            }
            ModelKind::Rnn => {
                let h = self.rnn_units.unwrap_or(DEFAULT_RNN_UNITS);
                Model::Rnn(Rnn {
                    forward: LstmConfig::new(3, h, true).init(device),
                    backward: LstmConfig::new(3, h, true).init(device),
                    output: LinearConfig::new(2 * h, c).init(device),
                })
            }
        })
    }

    /// The CNN (`cnn`, and the deep part of `wide_deep`).
    fn init_cnn(&self, device: &Device) -> Cnn {
        let c = self.n_classes;
        let mut convs = Vec::new();
        let mut pools = Vec::new();
        let mut norms = Vec::new();
        let mut channels = 1;
        for l in self.conv.as_deref().unwrap_or_default() {
            convs.push(
                Conv2dConfig::new([channels, l.filters], [l.kernel, l.kernel])
                    .with_padding(PaddingConfig2d::Same)
                    .init(device),
            );
            pools.push(
                MaxPool2dConfig::new([l.pool, l.pool])
                    .with_strides([l.pool, l.pool])
                    .init(),
            );
            if self.batch_norm {
                norms.push(BatchNormConfig::new(l.filters).init(device));
            }
            channels = l.filters;
        }
        let side = self.cnn_side();
        let dense = self.dense.unwrap_or(LECTURE_DENSE);
        Cnn {
            convs,
            pools,
            norms,
            dense: LinearConfig::new(side * side * channels, dense).init(device),
            dropout: DropoutConfig::new(self.dropout.unwrap_or(LECTURE_DROPOUT)).init(),
            output: LinearConfig::new(dense, c).init(device),
        }
    }
}

/// Predicts the class prior for every input: `log_prior` is set from label counts, not learnt.
#[derive(Module, Debug)]
pub struct Baseline {
    /// `[n_classes]` log probabilities.
    pub log_prior: Param<Tensor<1>>,
}

impl Baseline {
    /// `batch` -> `[batch, n_classes]` logits (the log prior, the same for every input).
    pub fn forward(&self, batch: usize) -> Tensor<2> {
        let [c] = self.log_prior.val().dims();
        // [C] -> [1, C] -> [batch, C]
        self.log_prior.val().reshape([1, c]).repeat_dim(0, batch)
    }

    /// The prior from per-class counts, with add-one (Laplace) smoothing so that a class absent
    /// from the training data keeps a finite loss.
    pub fn with_counts(self, counts: &[u64]) -> Self {
        let total: f64 = counts.iter().map(|&c| c as f64 + 1.0).sum();
        let logp: Vec<f32> = counts
            .iter()
            .map(|&c| ((c as f64 + 1.0) / total).ln() as f32)
            .collect();
        let device = self.log_prior.val().device();
        let n = logp.len();
        let t = Tensor::<1>::from_data(TensorData::new(logp, [n]), &device);
        Baseline {
            log_prior: Param::from_tensor(t).set_require_grad(false),
        }
    }

    /// The prior probabilities.
    pub fn prior(&self) -> Vec<f32> {
        to_host(self.log_prior.val().exp())
    }
}

/// Softmax regression.
#[derive(Module, Debug)]
pub struct LinearModel {
    pub output: Linear,
}

impl LinearModel {
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        // [B, 1, S, S] -> [B, S*S]
        let x = images.flatten::<2>(1, 3);
        // [B, S*S] -> [B, C]
        self.output.forward(x)
    }
}

/// Fully connected network.
#[derive(Module, Debug)]
pub struct Dnn {
    pub hidden: Vec<Linear>,
    pub dropout: Dropout,
    pub output: Linear,
}

impl Dnn {
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        // [B, 1, S, S] -> [B, S*S]
        let mut x = images.flatten::<2>(1, 3);
        for layer in &self.hidden {
            // [B, in] -> [B, hidden]
            x = relu(layer.forward(x));
        }
        // [B, hidden] -> [B, C]
        self.output.forward(self.dropout.forward(x))
    }
}

/// The lecture's CNN.
#[derive(Module, Debug)]
pub struct Cnn {
    pub convs: Vec<Conv2d>,
    pub pools: Vec<MaxPool2d>,
    /// One per block with `--batch-norm` (after the pooling), else none.
    pub norms: Vec<BatchNorm>,
    pub dense: Linear,
    pub dropout: Dropout,
    pub output: Linear,
}

impl Cnn {
    /// `[B, 1, S, S]` pixels -> `[B, C]` logits. Each convolution and its max-pool run fused as
    /// [`conv_same_pool`] on the CPU (burn's `Conv2d` and `MaxPool2d` elsewhere).
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.forward_with(images, true)
    }

    /// The same function with burn's `Conv2d` for every layer: what the ONNX export captures
    /// (as `Conv` nodes). Tests check it equals [`Cnn::forward`] to 1e-4.
    pub fn forward_standard(&self, images: Tensor<4>) -> Tensor<2> {
        self.forward_with(images, false)
    }

    fn forward_with(&self, images: Tensor<4>, fast: bool) -> Tensor<2> {
        let mut x = images; // [B, 1, S, S]
        for (i, (conv, pool)) in self.convs.iter().zip(&self.pools).enumerate() {
            // [B, C_in, H, W] -> [B, filters, H, W] ('same') -> [B, filters, H/pool, W/pool]
            // relu(max_pool(y)) == max_pool(relu(y)) (relu is monotonic), values and gradients
            // alike; pooling first runs the ReLU on pool^2 times fewer values.
            let pooled = match fast {
                true => conv_same_pool(conv, pool, x.clone())
                    .unwrap_or_else(|| pool.forward(conv.forward(x))),
                false => pool.forward(conv.forward(x)),
            };
            // [B, filters, h, w] normalised per filter (batch statistics in training).
            let pooled = match (self.norms.get(i), fast) {
                (Some(norm), true) => norm.forward(pooled),
                (Some(norm), false) => batch_norm_standard(norm, pooled),
                (None, _) => pooled,
            };
            x = relu(pooled);
        }
        // [B, F, h, w] -> [B, F*h*w]
        let x = x.flatten::<2>(1, 3);
        // [B, F*h*w] -> [B, dense]
        let x = relu(self.dense.forward(x));
        // [B, dense] -> [B, C]
        self.output.forward(self.dropout.forward(x))
    }
}

/// `norm` as burn's `BatchNorm::forward`, except that in inference the running statistics are
/// used where they are instead of being moved to the input's device first: burn-onnx's capture
/// device refuses that move, and the statistics already live with the weights. Captured by the
/// export as an ONNX `BatchNormalization` node.
fn batch_norm_standard(norm: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
    if x.device().is_autodiff() && norm.training.is_enabled() {
        return norm.forward(x);
    }
    burn::tensor::module::batch_norm(
        x,
        norm.gamma.val(),
        norm.beta.val(),
        norm.running_mean.value(),
        norm.running_var.value(),
        norm.epsilon,
    )
}

/// The lecture's wide & deep model (`DNNLinearCombinedClassifier`): the sum of the CNN's logits
/// and a linear model's over the metadata vector. One optimizer trains both parts (TensorFlow
/// uses FTRL for the linear part and Adagrad for the deep one).
#[derive(Module, Debug)]
pub struct WideDeep {
    pub deep: Cnn,
    pub wide: Linear,
}

impl WideDeep {
    /// `[B, 1, S, S]` pixels and `[B, W]` metadata -> `[B, C]` logits.
    pub fn forward(&self, images: Tensor<4>, wide: Tensor<2>) -> Tensor<2> {
        // [B, C] + ([B, W] -> [B, C])
        self.deep.forward(images) + self.wide.forward(wide)
    }

    /// The same with burn's `Conv2d` layers (what the export captures; see
    /// [`Cnn::forward_standard`]).
    pub fn forward_standard(&self, images: Tensor<4>, wide: Tensor<2>) -> Tensor<2> {
        self.deep.forward_standard(images) + self.wide.forward(wide)
    }
}

/// A stride-1 'same' convolution on the CPU backend, run by this crate's kernels
/// ([`crate::kernels::ConvPool`]: im2col per image in cache + the gemm crate, forward and
/// gradients; see that module for why): `[B, C, H, W]` -> `[B, F, H, W]`, or `None` when `conv`
/// or `x` is not of that kind (then the caller uses burn's `Conv2d`). Same weights and padding as
/// burn's `Conv2d` ('same': `(k-1)/2` before, the rest after), checked against it to 1e-4
/// (outputs and gradients) by the tests; the export captures burn's `Conv2d`
/// ([`Cnn::forward_standard`]).
pub fn conv_same(conv: &Conv2d, x: Tensor<4>) -> Option<Tensor<4>> {
    fused_conv(conv, 1, x)
}

/// [`conv_same`] followed by `pool` (`[B, C, H, W]` -> `[B, F, H/p, W/p]`) in one kernel, so
/// the full-resolution activation is never stored; `None` when the pool is not a plain
/// non-overlapping `p x p` max-pool or the convolution is not of [`conv_same`]'s kind (then the
/// caller runs burn's two layers).
pub fn conv_same_pool(conv: &Conv2d, pool: &MaxPool2d, x: Tensor<4>) -> Option<Tensor<4>> {
    let [p, q] = pool.kernel_size;
    if p != q
        || pool.stride != [p, p]
        || pool.dilation != [1, 1]
        || pool.ceil_mode
        || !matches!(pool.padding, PaddingConfig2d::Valid)
    {
        return None;
    }
    fused_conv(conv, p, x)
}

fn fused_conv(conv: &Conv2d, pool: usize, x: Tensor<4>) -> Option<Tensor<4>> {
    use crate::kernels::ConvPool;
    use burn::backend::Dispatch;
    let [f, c_in, _, _] = conv.weight.val().dims();
    let [_, c, h, w] = x.dims();
    if c_in != c
        || pool == 0
        || h < pool
        || w < pool
        || conv.stride != [1, 1]
        || conv.dilation != [1, 1]
        || conv.groups != 1
        || conv.padding != PaddingConfig2d::Same
        // CPU (flex) tensors only, not CUDA ones; float32 only (not --precision bf16|f16).
        || x.device().inner() != Device::flex()
        || x.dtype() != DType::F32
        || conv.weight.val().dtype() != DType::F32
    {
        return None;
    }
    let weight = conv.weight.val();
    let bias = match &conv.bias {
        Some(b) => b.val(),
        None => Tensor::<1>::zeros([f], &weight.device()),
    };
    Some(Tensor::<4>::from_dispatch(
        <Dispatch as ConvPool>::conv_same_pool(
            x.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
            pool,
        ),
    ))
}

/// Bidirectional LSTM over stroke features, masked by each drawing's length.
#[derive(Module, Debug)]
pub struct Rnn {
    pub forward: Lstm,
    /// Runs over each sequence reversed within its length (so the padding stays at the end).
    pub backward: Lstm,
    pub output: Linear,
}

impl Rnn {
    /// `fwd`, `bwd`: `[B, T, 3]`; `mask`: `[B, T]` -> `[B, C]`.
    pub fn forward_strokes(&self, fwd: Tensor<3>, bwd: Tensor<3>, mask: Tensor<2>) -> Tensor<2> {
        let [b, t] = mask.dims();
        // [B, T] -> [B, T, 1]
        let mask = mask.reshape([b, t, 1]);
        // [B, T, 3] -> [B, T, H], outputs in the padding zeroed, summed over time -> [B, H]
        let (hf, _) = self.forward.forward(fwd, None);
        let hf = (hf * mask.clone()).sum_dim(1).flatten::<2>(1, 2);
        let (hb, _) = self.backward.forward(bwd, None);
        let hb = (hb * mask).sum_dim(1).flatten::<2>(1, 2);
        // [B, 2H] -> [B, C]
        self.output.forward(Tensor::cat(vec![hf, hb], 1))
    }
}

/// Any of the models.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Model {
    Baseline(Baseline),
    Linear(LinearModel),
    Dnn(Dnn),
    Cnn(Cnn),
    Rnn(Rnn),
    WideDeep(WideDeep),
}

/// Model input as tensors.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum ModelInput {
    /// `[B, 1, S, S]` pixels in [0, 1].
    Images(Tensor<4>),
    /// Stroke features: forward and reversed sequences `[B, T, 3]`, mask `[B, T]`.
    Strokes {
        forward: Tensor<3>,
        backward: Tensor<3>,
        mask: Tensor<2>,
    },
    /// `[B, 1, S, S]` pixels and the `[B, W]` metadata vectors (wide & deep).
    ImagesWide { images: Tensor<4>, wide: Tensor<2> },
}

impl ModelInput {
    /// Batch size.
    pub fn batch(&self) -> usize {
        match self {
            ModelInput::Images(x) => x.dims()[0],
            ModelInput::Strokes { mask, .. } => mask.dims()[0],
            ModelInput::ImagesWide { wide, .. } => wide.dims()[0],
        }
    }

    /// Rows `range` of every tensor, moved to `device` (a data-parallel part of the batch).
    pub fn rows(&self, range: std::ops::Range<usize>, device: &Device) -> Self {
        let (start, len) = (range.start, range.len());
        match self {
            ModelInput::Images(x) => {
                ModelInput::Images(x.clone().narrow(0, start, len).to_device(device))
            }
            ModelInput::Strokes {
                forward,
                backward,
                mask,
            } => ModelInput::Strokes {
                forward: forward.clone().narrow(0, start, len).to_device(device),
                backward: backward.clone().narrow(0, start, len).to_device(device),
                mask: mask.clone().narrow(0, start, len).to_device(device),
            },
            ModelInput::ImagesWide { images, wide } => ModelInput::ImagesWide {
                images: images.clone().narrow(0, start, len).to_device(device),
                wide: wide.clone().narrow(0, start, len).to_device(device),
            },
        }
    }

    /// Every tensor cast to `dtype` (`--precision`).
    pub fn cast(self, dtype: burn::tensor::FloatDType) -> Self {
        match self {
            ModelInput::Images(x) => ModelInput::Images(x.cast(dtype)),
            ModelInput::Strokes {
                forward,
                backward,
                mask,
            } => ModelInput::Strokes {
                forward: forward.cast(dtype),
                backward: backward.cast(dtype),
                mask: mask.cast(dtype),
            },
            ModelInput::ImagesWide { images, wide } => ModelInput::ImagesWide {
                images: images.cast(dtype),
                wide: wide.cast(dtype),
            },
        }
    }

    /// Tensors for a decoded batch on `device`.
    pub fn from_batch(batch: &Batch, kind: ModelKind, device: &Device) -> Result<Self> {
        if kind.uses_strokes() {
            let s = batch.strokes.as_ref().ok_or_else(|| {
                TrainError::Config("the rnn model needs stroke features: convert the data with `quickdraw convert --strokes`".into())
            })?;
            let (b, t) = (batch.size, s.steps);
            Ok(ModelInput::Strokes {
                forward: Tensor::from_data(TensorData::new(s.forward.clone(), [b, t, 3]), device),
                backward: Tensor::from_data(TensorData::new(s.backward.clone(), [b, t, 3]), device),
                mask: Tensor::from_data(TensorData::new(s.mask.clone(), [b, t]), device),
            })
        } else {
            let n = batch.image_size;
            let images = Tensor::from_data(
                TensorData::new(batch.images.clone(), [batch.size, 1, n, n]),
                device,
            );
            if !kind.uses_wide() {
                return Ok(ModelInput::Images(images));
            }
            let w = batch.wide.as_ref().ok_or_else(|| {
                TrainError::Config("the wide_deep model needs the metadata vectors of the batch (decoded with the model's wide spec)".into())
            })?;
            let dim = w.len() / batch.size.max(1);
            Ok(ModelInput::ImagesWide {
                images,
                wide: Tensor::from_data(TensorData::new(w.clone(), [batch.size, dim]), device),
            })
        }
    }
}

impl Model {
    /// Logits `[B, n_classes]`.
    pub fn forward(&self, input: ModelInput) -> Tensor<2> {
        match (self, input) {
            (Model::Baseline(m), input) => m.forward(input.batch()),
            (Model::Linear(m), ModelInput::Images(x)) => m.forward(x),
            (Model::Dnn(m), ModelInput::Images(x)) => m.forward(x),
            (Model::Cnn(m), ModelInput::Images(x)) => m.forward(x),
            (
                Model::Rnn(m),
                ModelInput::Strokes {
                    forward,
                    backward,
                    mask,
                },
            ) => m.forward_strokes(forward, backward, mask),
            (Model::WideDeep(m), ModelInput::ImagesWide { images, wide }) => {
                m.forward(images, wide)
            }
            (_, _) => panic!("model input does not match the model (images, strokes, wide)"),
        }
    }

    /// Whether any weight is learnt by gradient descent.
    pub fn is_trainable(&self) -> bool {
        !matches!(self, Model::Baseline(_))
    }
}

/// Log-probabilities `[B, C]` of a batch on the host (what evaluation, inference and export
/// read).
pub fn log_probs(model: &Model, input: ModelInput) -> Vec<f32> {
    to_host(log_softmax(model.forward(input), 1))
}

/// Host copy of a float tensor in row-major order: the crate's one tensor-to-host copy.
pub fn to_host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 data")
}

#[cfg(test)]
mod tests {
    #[test]
    fn layer_graph_of_the_lecture_cnn() {
        let g = ModelConfig::new(ModelKind::Cnn, 10, 64).layer_graph();
        let names: Vec<&str> = g.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "images",
                "conv1",
                "pool1",
                "relu1",
                "conv2",
                "pool2",
                "relu2",
                "flatten",
                "dense1",
                "dense1_relu",
                "dropout",
                "logits",
                "softmax"
            ]
        );
        let shape = |name: &str| g.iter().find(|n| n.name == name).unwrap().shape.clone();
        // 64 -> pool 4 -> 16 -> pool 4 -> 4: 64 filters x 4 x 4 = 1024 features.
        assert_eq!(shape("pool1"), vec![-1, 32, 16, 16]);
        assert_eq!(shape("flatten"), vec![-1, 1024]);
        assert_eq!(shape("logits"), vec![-1, 10]);
        assert_eq!(g[1].inputs, vec!["images".to_string()]);
        let b = ModelConfig::new(ModelKind::Baseline, 3, 16).layer_graph();
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn wide_deep_is_the_cnn_plus_a_linear_part() {
        let cfg = ModelConfig::new(ModelKind::WideDeep, 10, 64);
        assert_eq!(cfg.conv.as_deref(), Some(&LECTURE_CONV[..]));
        let w = cfg.wide.unwrap();
        let g = cfg.layer_graph();
        let node = |name: &str| g.iter().find(|n| n.name == name).unwrap();
        assert!(node("wide").inputs.is_empty());
        assert_eq!(node("wide").shape, vec![-1, w.dim() as i64]);
        assert_eq!(node("wide_logits").inputs, vec!["wide".to_string()]);
        assert_eq!(node("deep_logits").inputs, vec!["dropout".to_string()]);
        assert_eq!(
            node("logits").inputs,
            vec!["deep_logits".to_string(), "wide_logits".to_string()]
        );
        assert_eq!(node("softmax").inputs, vec!["logits".to_string()]);
        // The wide part starts at zero: the model starts as its CNN.
        let device = Device::flex();
        let Model::WideDeep(m) = cfg.init(&device).unwrap() else {
            panic!("wide_deep builds a WideDeep");
        };
        let images =
            Tensor::<4>::random([2, 1, 64, 64], burn::tensor::Distribution::Default, &device);
        let wide = Tensor::<2>::ones([2, w.dim()], &device);
        let sum = to_host(m.forward(images.clone(), wide));
        let cnn = to_host(m.deep.forward(images));
        assert_eq!(sum, cnn);
        assert_eq!(m.wide.weight.val().dims(), [w.dim(), 10]);
    }

    use super::*;

    #[test]
    fn lecture_cnn_has_319466_parameters() {
        let device = Device::flex();
        let m = ModelConfig::new(ModelKind::Cnn, 10, 64)
            .init(&device)
            .unwrap();
        // conv1 10*10*1*32+32 = 3232, conv2 5*5*32*64+64 = 51264, dense 1024*256+256 = 262400,
        // output 256*10+10 = 2570.
        assert_eq!(m.num_params(), 319_466);
    }

    /// Largest difference relative to the reference's scale: `max|a - b| / max(1, max|b|)`
    /// (gradients here are sums of hundreds of products, up to ~100 in magnitude, where f32
    /// rounding alone reaches 1e-5 absolute).
    fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        let scale = b.clone().abs().max().into_scalar::<f32>().max(1.0);
        (a - b).abs().max().into_scalar::<f32>() / scale
    }

    #[test]
    fn conv_kernels_equal_burn_conv2d_values_and_gradients() {
        // Even (asymmetric 'same' padding) and odd kernels, one and several input channels,
        // non-square images, with bias; the input gradient when the input needs one.
        let device = Device::flex().autodiff();
        device.seed(7);
        for (c, k, h, w) in [
            (1, 10, 12, 13),
            (1, 5, 9, 7),
            (1, 1, 4, 4),
            (3, 5, 8, 6),
            (2, 4, 5, 5),
        ] {
            let conv = Conv2dConfig::new([c, 4], [k, k])
                .with_padding(PaddingConfig2d::Same)
                .init(&device);
            let x = Tensor::<4>::random([3, c, h, w], burn::tensor::Distribution::Default, &device);
            let r = Tensor::<4>::random([3, 4, h, w], burn::tensor::Distribution::Default, &device);
            for input_grad in [false, true] {
                let x = if input_grad {
                    x.clone().require_grad()
                } else {
                    x.clone()
                };
                let ours = conv_same(&conv, x.clone()).expect("same conv");
                let theirs = conv.forward(x.clone());
                assert_eq!(ours.dims(), theirs.dims());
                let d = max_abs_diff(ours.clone(), theirs.clone());
                assert!(d < 1e-4, "c={c} k={k}: outputs differ by {d}");
                let g1 = (ours * r.clone()).sum().backward();
                let g2 = (theirs * r.clone()).sum().backward();
                let wt = conv.weight.val();
                let dw = max_abs_diff(wt.grad(&g1).unwrap(), wt.grad(&g2).unwrap());
                assert!(dw < 1e-4, "c={c} k={k}: weight gradients differ by {dw}");
                let bias = conv.bias.as_ref().unwrap().val();
                let db = max_abs_diff(bias.grad(&g1).unwrap(), bias.grad(&g2).unwrap());
                assert!(db < 1e-4, "c={c} k={k}: bias gradients differ by {db}");
                if input_grad {
                    let dx = max_abs_diff(x.grad(&g1).unwrap(), x.grad(&g2).unwrap());
                    assert!(dx < 1e-4, "c={c} k={k}: input gradients differ by {dx}");
                } else {
                    assert!(x.grad(&g1).is_none());
                }
            }
        }
        // Not its kind: a strided convolution.
        let conv = Conv2dConfig::new([2, 4], [3, 3])
            .with_stride([2, 2])
            .with_padding(PaddingConfig2d::Same)
            .init(&device);
        assert!(conv_same(&conv, Tensor::<4>::zeros([1, 2, 5, 5], &device)).is_none());
    }

    #[test]
    fn fused_conv_and_pool_equal_burn_layers_values_and_gradients() {
        // Pools that divide the image and one that leaves a remainder (floor mode), even and odd
        // kernels, one and several channels, blank regions (ties inside a window: all equal the
        // bias), the input gradient of a deeper layer.
        let device = Device::flex().autodiff();
        device.seed(11);
        for (c, k, p, h, w) in [
            (1, 10, 4, 16, 16),
            (1, 5, 2, 9, 7),
            (1, 3, 3, 12, 12),
            (1, 4, 1, 5, 6),
            (3, 5, 4, 16, 16),
            (2, 3, 2, 7, 9),
        ] {
            let conv = Conv2dConfig::new([c, 5], [k, k])
                .with_padding(PaddingConfig2d::Same)
                .init(&device);
            let pool = MaxPool2dConfig::new([p, p]).with_strides([p, p]).init();
            let x = Tensor::<4>::random([3, c, h, w], burn::tensor::Distribution::Default, &device)
                .mask_fill(
                    Tensor::<4>::random([3, c, h, w], burn::tensor::Distribution::Default, &device)
                        .greater_elem(0.5),
                    0.0,
                );
            let x = if c > 1 { x.require_grad() } else { x };
            let (oh, ow) = (h / p, w / p);
            let r =
                Tensor::<4>::random([3, 5, oh, ow], burn::tensor::Distribution::Default, &device);
            let ours = conv_same_pool(&conv, &pool, x.clone()).expect("fused");
            let theirs = pool.forward(conv.forward(x.clone()));
            assert_eq!(ours.dims(), theirs.dims());
            let d = max_abs_diff(ours.clone(), theirs.clone());
            assert!(d < 1e-4, "c={c} k={k} p={p}: outputs differ by {d}");
            let g1 = (ours * r.clone()).sum().backward();
            let g2 = (theirs * r).sum().backward();
            let wt = conv.weight.val();
            let dw = max_abs_diff(wt.grad(&g1).unwrap(), wt.grad(&g2).unwrap());
            assert!(
                dw < 1e-4,
                "c={c} k={k} p={p}: weight gradients differ by {dw}"
            );
            let bias = conv.bias.as_ref().unwrap().val();
            let db = max_abs_diff(bias.grad(&g1).unwrap(), bias.grad(&g2).unwrap());
            assert!(
                db < 1e-4,
                "c={c} k={k} p={p}: bias gradients differ by {db}"
            );
            if c > 1 {
                let dx = max_abs_diff(x.grad(&g1).unwrap(), x.grad(&g2).unwrap());
                assert!(
                    dx < 1e-4,
                    "c={c} k={k} p={p}: input gradients differ by {dx}"
                );
            }
        }
        // Not its kind: an overlapping pool.
        let conv = Conv2dConfig::new([1, 4], [3, 3])
            .with_padding(PaddingConfig2d::Same)
            .init(&device);
        let pool = MaxPool2dConfig::new([2, 2]).with_strides([1, 1]).init();
        assert!(conv_same_pool(&conv, &pool, Tensor::<4>::zeros([1, 1, 6, 6], &device)).is_none());
    }

    #[test]
    fn cnn_forward_equals_the_exported_standard_forward() {
        let device = Device::flex();
        let Model::Cnn(m) = ModelConfig::new(ModelKind::Cnn, 5, 64)
            .init(&device)
            .unwrap()
        else {
            panic!("a cnn")
        };
        let x = Tensor::<4>::random([2, 1, 64, 64], burn::tensor::Distribution::Default, &device);
        let d = max_abs_diff(m.forward(x.clone()), m.forward_standard(x));
        assert!(d < 1e-4, "logits differ by {d}");
    }

    /// With `--batch-norm`, evaluation normalises with the running statistics in both forwards
    /// (burn's layer, and the export's path that reads them in place), and the layer graph
    /// shows one batch norm per block.
    #[test]
    fn batch_norm_forwards_agree_and_use_the_running_statistics() {
        let device = Device::flex();
        let mut cfg = ModelConfig::new(ModelKind::Cnn, 5, 16);
        cfg.conv = Some(vec![ConvLayer {
            kernel: 3,
            pool: 2,
            filters: 4,
        }]);
        cfg.batch_norm = true;
        let Model::Cnn(m) = cfg.init(&device).unwrap() else {
            panic!("a cnn")
        };
        let stats = Tensor::<1>::from_floats([0.5, -1.0, 2.0, 0.0], &device);
        m.norms[0].running_mean.update(stats.clone());
        m.norms[0].running_var.update(stats.abs() + 0.5);
        let x: Vec<f32> = (0..2 * 16 * 16)
            .map(|i| ((i * 37 % 101) as f32) / 100.0)
            .collect();
        let x = Tensor::<4>::from_data(TensorData::new(x, [2, 1, 16, 16]), &device);
        let d = max_abs_diff(m.forward(x.clone()), m.forward_standard(x.clone()));
        assert!(d < 1e-4, "logits differ by {d}");
        // Other statistics, other logits: the running statistics are used.
        let before = m.forward(x.clone());
        m.norms[0].running_mean.update(Tensor::zeros([4], &device));
        assert!(max_abs_diff(before, m.forward(x)) > 1e-3);
        let names: Vec<String> = cfg.layer_graph().into_iter().map(|n| n.name).collect();
        assert_eq!(names[1..5], ["conv1", "pool1", "batch_norm1", "relu1"]);
    }

    #[test]
    fn shapes_of_every_model() {
        let device = Device::flex();
        for kind in ModelKind::ALL {
            let mut cfg = ModelConfig::new(kind, 3, 16);
            cfg.hidden = cfg.hidden.map(|_| vec![8, 4]);
            cfg.rnn_units = cfg.rnn_units.map(|_| 5);
            let m = cfg.init(&device).unwrap();
            let input = if kind.uses_strokes() {
                ModelInput::Strokes {
                    forward: Tensor::zeros([2, 7, 3], &device),
                    backward: Tensor::zeros([2, 7, 3], &device),
                    mask: Tensor::ones([2, 7], &device),
                }
            } else if let Some(w) = cfg.wide {
                ModelInput::ImagesWide {
                    images: Tensor::zeros([2, 1, 16, 16], &device),
                    wide: Tensor::ones([2, w.dim()], &device),
                }
            } else {
                ModelInput::Images(Tensor::zeros([2, 1, 16, 16], &device))
            };
            assert_eq!(m.forward(input).dims(), [2, 3], "{kind}");
        }
    }

    #[test]
    fn parse_flags() {
        assert_eq!(parse_conv("10:4:32,5:4:64").unwrap(), LECTURE_CONV.to_vec());
        assert!(parse_conv("10:4").is_err());
        assert_eq!(parse_widths("512,256").unwrap(), vec![512, 256]);
        assert!(parse_widths("0").is_err());
    }

    #[test]
    fn pools_that_empty_the_image_are_refused() {
        let mut cfg = ModelConfig::new(ModelKind::Cnn, 3, 8);
        cfg.conv = Some(vec![
            ConvLayer {
                kernel: 3,
                pool: 4,
                filters: 2,
            },
            ConvLayer {
                kernel: 3,
                pool: 4,
                filters: 2,
            },
        ]);
        assert!(cfg.validate().unwrap_err().to_string().contains("shrink"));
    }
}
