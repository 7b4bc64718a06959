//! Tiny ONNX models with known weights, built with tract-onnx's protobuf types, and export
//! folders around them: for tests, benchmarks and for cross-checking a real exporter against the
//! contract of [`quickdraw_data::signature`].
//!
//! - [`linear_image_model`]: `img_S [N,1,S,S]` -> Flatten -> Gemm(W, b) -> `logits`;
//!   Softmax -> `probabilities`; ArgMax -> `classes`. Predictions are hand-checkable.
//! - [`wide_deep_model`]: the same plus `wide [N,W]` -> Gemm(V) added to the logits: the shape
//!   of a wide & deep export ([`write_wide_demo_export`], weights in [`demo_wide_weights`]).
//! - [`stroke_model`]: `strokes [N,T,3]`, `lengths [N]` -> [sum over T of (dx,dy,pen), length]
//!   -> Gemm -> the same three outputs.
//! - [`lecture_cnn_model`]: the lecture's CNN shape (conv 10x10x32 / pool 4, conv 5x5x64 /
//!   pool 4, dense 256, dense C) with pseudo-random weights, for latency measurements.
//! - [`grpc_predict`], [`grpc_model_status`]: one call of TF Serving's gRPC API (tonic's client)
//!   to a running server, for tests of its model and version routing.

use std::path::{Path, PathBuf};

use prost::Message;
use quickdraw_data::features::FeatureSpec;
use quickdraw_data::raster::{RasterMode, RasterSpec};
use quickdraw_data::signature::{self, ModelInfo, ModelType, Signature, SignatureError};
use quickdraw_data::strokes::StrokeSpec;
use quickdraw_data::wide::{DURATION_BOUNDARIES_MS, STROKE_BOUNDARIES, WideSpec};
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{Dimension, dimension};
use tract_onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto, type_proto,
};

/// ONNX opset the builders target (the exporter should use at least this).
pub const OPSET: i64 = 13;

/// A dimension of a graph input or output.
#[derive(Debug, Clone)]
pub enum Dim {
    Fixed(i64),
    /// Symbolic (`dim_param`), e.g. `"N"`.
    Sym(&'static str),
}

/// Builds one ONNX graph node by node.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    graph: GraphProto,
}

impl GraphBuilder {
    pub fn new(name: &str) -> Self {
        GraphBuilder {
            graph: GraphProto {
                name: name.into(),
                ..Default::default()
            },
        }
    }

    fn value_info(name: &str, elem: DataType, dims: &[Dim]) -> ValueInfoProto {
        let dim = dims
            .iter()
            .map(|d| Dimension {
                denotation: String::new(),
                value: Some(match d {
                    Dim::Fixed(v) => dimension::Value::DimValue(*v),
                    Dim::Sym(s) => dimension::Value::DimParam(s.to_string()),
                }),
            })
            .collect();
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                denotation: String::new(),
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: elem as i32,
                    shape: Some(TensorShapeProto { dim }),
                })),
            }),
            doc_string: String::new(),
        }
    }

    pub fn input(&mut self, name: &str, elem: DataType, dims: &[Dim]) -> &mut Self {
        self.graph.input.push(Self::value_info(name, elem, dims));
        self
    }

    pub fn output(&mut self, name: &str, elem: DataType, dims: &[Dim]) -> &mut Self {
        self.graph.output.push(Self::value_info(name, elem, dims));
        self
    }

    pub fn init_f32(&mut self, name: &str, dims: &[i64], data: Vec<f32>) -> &mut Self {
        assert_eq!(
            dims.iter().product::<i64>() as usize,
            data.len(),
            "initializer {name}"
        );
        self.graph.initializer.push(TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: DataType::Float as i32,
            float_data: data,
            ..Default::default()
        });
        self
    }

    pub fn init_i64(&mut self, name: &str, dims: &[i64], data: Vec<i64>) -> &mut Self {
        self.graph.initializer.push(TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: DataType::Int64 as i32,
            int64_data: data,
            ..Default::default()
        });
        self
    }

    pub fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> &mut Self {
        let n = self.graph.node.len();
        self.graph.node.push(NodeProto {
            name: format!("{op}_{n}"),
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute: attrs,
            ..Default::default()
        });
        self
    }

    /// Logits `[N, C]` -> `logits`, `probabilities` (softmax) and `classes` (argmax): the three
    /// outputs of the contract.
    pub fn classifier_head(&mut self, logits_in: &str, classes: i64) -> &mut Self {
        let n = Dim::Sym("N");
        self.node("Identity", &[logits_in], &[signature::LOGITS], vec![])
            .node(
                "Softmax",
                &[signature::LOGITS],
                &[signature::PROBABILITIES],
                vec![attr_int("axis", 1)],
            )
            .node(
                "ArgMax",
                &[signature::LOGITS],
                &[signature::CLASSES],
                vec![attr_int("axis", 1), attr_int("keepdims", 0)],
            )
            .output(
                signature::LOGITS,
                DataType::Float,
                &[n.clone(), Dim::Fixed(classes)],
            )
            .output(
                signature::PROBABILITIES,
                DataType::Float,
                &[n.clone(), Dim::Fixed(classes)],
            )
            .output(signature::CLASSES, DataType::Int64, &[n])
    }

    /// The serialized `ModelProto`.
    pub fn finish(self) -> Vec<u8> {
        let model = ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "quickdraw-serve testing".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(self.graph),
            ..Default::default()
        };
        model.encode_to_vec()
    }
}

pub fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: ints.to_vec(),
        ..Default::default()
    }
}

pub fn attr_string(name: &str, s: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::String as i32,
        s: s.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// `logits = flatten(img) @ W^T + b` with `W` row-major `[classes, size*size]`.
pub fn linear_image_model(size: u32, weights: &[f32], bias: &[f32]) -> Vec<u8> {
    let c = bias.len() as i64;
    let px = (size * size) as i64;
    let key = quickdraw_data::features::image_key(size);
    let s = size as i64;
    let mut g = GraphBuilder::new("linear_image");
    g.input(
        &key,
        DataType::Float,
        &[Dim::Sym("N"), Dim::Fixed(1), Dim::Fixed(s), Dim::Fixed(s)],
    )
    .init_f32("W", &[c, px], weights.to_vec())
    .init_f32("b", &[c], bias.to_vec())
    .node("Flatten", &[&key], &["flat"], vec![attr_int("axis", 1)])
    .node(
        "Gemm",
        &["flat", "W", "b"],
        &["z"],
        vec![attr_int("transB", 1)],
    )
    .classifier_head("z", c);
    g.finish()
}

/// `logits = flatten(img) @ W^T + b + wide @ V^T`: [`linear_image_model`] plus a linear part on
/// the `wide [N, W]` input, `V` row-major `[classes, W]` (the wide & deep model's shape:
/// deep logits + linear logits of the metadata vector).
pub fn wide_deep_model(size: u32, weights: &[f32], bias: &[f32], wide_weights: &[f32]) -> Vec<u8> {
    let c = bias.len() as i64;
    let px = (size * size) as i64;
    let w = wide_weights.len() as i64 / c.max(1);
    let key = quickdraw_data::features::image_key(size);
    let s = size as i64;
    let mut g = GraphBuilder::new("wide_deep");
    g.input(
        &key,
        DataType::Float,
        &[Dim::Sym("N"), Dim::Fixed(1), Dim::Fixed(s), Dim::Fixed(s)],
    )
    .input(
        signature::WIDE,
        DataType::Float,
        &[Dim::Sym("N"), Dim::Fixed(w)],
    )
    .init_f32("W", &[c, px], weights.to_vec())
    .init_f32("b", &[c], bias.to_vec())
    .init_f32("V", &[c, w], wide_weights.to_vec())
    .init_f32("zero", &[c], vec![0.0; c as usize])
    .node("Flatten", &[&key], &["flat"], vec![attr_int("axis", 1)])
    .node(
        "Gemm",
        &["flat", "W", "b"],
        &["deep"],
        vec![attr_int("transB", 1)],
    )
    .node(
        "Gemm",
        &[signature::WIDE, "V", "zero"],
        &["linear"],
        vec![attr_int("transB", 1)],
    )
    .node("Add", &["deep", "linear"], &["z"], vec![])
    .classifier_head("z", c);
    g.finish()
}

/// `logits = [sum_t dx, sum_t dy, sum_t pen, length] @ W^T + b`, `W` row-major `[classes, 4]`.
pub fn stroke_model(weights: &[f32], bias: &[f32]) -> Vec<u8> {
    let c = bias.len() as i64;
    let mut g = GraphBuilder::new("stroke_sum");
    g.input(
        signature::STROKES,
        DataType::Float,
        &[Dim::Sym("N"), Dim::Sym("T"), Dim::Fixed(3)],
    )
    .input(signature::LENGTHS, DataType::Int64, &[Dim::Sym("N")])
    .init_f32("W", &[c, 4], weights.to_vec())
    .init_f32("b", &[c], bias.to_vec())
    .init_i64("axis_t", &[1], vec![1])
    .node(
        "ReduceSum",
        &[signature::STROKES, "axis_t"],
        &["sums"],
        vec![attr_int("keepdims", 0)],
    )
    .node(
        "Cast",
        &[signature::LENGTHS],
        &["len_f"],
        vec![attr_int("to", DataType::Float as i64)],
    )
    .node("Unsqueeze", &["len_f", "axis_t"], &["len_col"], vec![])
    .node(
        "Concat",
        &["sums", "len_col"],
        &["feats"],
        vec![attr_int("axis", 1)],
    )
    .node(
        "Gemm",
        &["feats", "W", "b"],
        &["z"],
        vec![attr_int("transB", 1)],
    )
    .classifier_head("z", c);
    g.finish()
}

/// Deterministic pseudo-random weights in `[-scale, scale]` (xorshift; no rand dependency).
pub fn pseudo_random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// The lecture's CNN on `size`-pixel images: conv(10x10, 32, same) ReLU maxpool 4, conv(5x5, 64,
/// same) ReLU maxpool 4, dense 256 ReLU, dense `classes`. Weights are pseudo-random.
pub fn lecture_cnn_model(size: u32, classes: usize, seed: u64) -> Vec<u8> {
    let key = quickdraw_data::features::image_key(size);
    let s = size as i64;
    let c = classes as i64;
    let side = s / 4 / 4;
    let flat = 64 * side * side;
    let mut g = GraphBuilder::new("lecture_cnn");
    g.input(
        &key,
        DataType::Float,
        &[Dim::Sym("N"), Dim::Fixed(1), Dim::Fixed(s), Dim::Fixed(s)],
    )
    .init_f32("k1", &[32, 1, 10, 10], pseudo_random(32 * 100, seed, 0.1))
    .init_f32("b1", &[32], pseudo_random(32, seed + 1, 0.01))
    .init_f32(
        "k2",
        &[64, 32, 5, 5],
        pseudo_random(64 * 32 * 25, seed + 2, 0.035),
    )
    .init_f32("b2", &[64], pseudo_random(64, seed + 3, 0.01))
    .init_f32(
        "w3",
        &[256, flat],
        pseudo_random((256 * flat) as usize, seed + 4, 0.03),
    )
    .init_f32("b3", &[256], pseudo_random(256, seed + 5, 0.01))
    .init_f32(
        "w4",
        &[c, 256],
        pseudo_random((c * 256) as usize, seed + 6, 0.06),
    )
    .init_f32("b4", &[c], pseudo_random(classes, seed + 7, 0.01))
    .node(
        "Conv",
        &[&key, "k1", "b1"],
        &["c1"],
        vec![
            attr_ints("kernel_shape", &[10, 10]),
            attr_string("auto_pad", "SAME_UPPER"),
        ],
    )
    .node("Relu", &["c1"], &["r1"], vec![])
    .node(
        "MaxPool",
        &["r1"],
        &["p1"],
        vec![
            attr_ints("kernel_shape", &[4, 4]),
            attr_ints("strides", &[4, 4]),
        ],
    )
    .node(
        "Conv",
        &["p1", "k2", "b2"],
        &["c2"],
        vec![
            attr_ints("kernel_shape", &[5, 5]),
            attr_string("auto_pad", "SAME_UPPER"),
        ],
    )
    .node("Relu", &["c2"], &["r2"], vec![])
    .node(
        "MaxPool",
        &["r2"],
        &["p2"],
        vec![
            attr_ints("kernel_shape", &[4, 4]),
            attr_ints("strides", &[4, 4]),
        ],
    )
    .node("Flatten", &["p2"], &["f"], vec![attr_int("axis", 1)])
    .node(
        "Gemm",
        &["f", "w3", "b3"],
        &["d3"],
        vec![attr_int("transB", 1)],
    )
    .node("Relu", &["d3"], &["r3"], vec![])
    .node(
        "Gemm",
        &["r3", "w4", "b4"],
        &["z"],
        vec![attr_int("transB", 1)],
    )
    .classifier_head("z", c);
    g.finish()
}

/// Labels `class0`, `class1`, ...
pub fn labels(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("class{i}")).collect()
}

/// The feature spec of an image export at `size` pixels (`default` raster mode).
pub fn image_features(size: u32) -> FeatureSpec {
    FeatureSpec {
        raster: RasterSpec::new(RasterMode::Default, size, None),
        ..FeatureSpec::default()
    }
}

/// Writes a complete export folder: `model.onnx` plus the metadata files of the contract.
pub fn write_export(
    dir: &Path,
    onnx: &[u8],
    sig: &Signature,
    labels: &[String],
    features: &FeatureSpec,
    metrics: &serde_json::Value,
) -> Result<(), SignatureError> {
    write_export_wide(dir, onnx, sig, labels, features, None, metrics)
}

/// [`write_export`] with the `wide` input's layout of a wide & deep model.
pub fn write_export_wide(
    dir: &Path,
    onnx: &[u8],
    sig: &Signature,
    labels: &[String],
    features: &FeatureSpec,
    wide: Option<WideSpec>,
    metrics: &serde_json::Value,
) -> Result<(), SignatureError> {
    signature::write_export_metadata(dir, sig, labels, features, wide, metrics)?;
    std::fs::write(dir.join(signature::MODEL_FILE), onnx).map_err(|source| SignatureError::Io {
        path: dir.join(signature::MODEL_FILE),
        source,
    })
}

/// The hand-checkable demo image model: 3 classes on `size` pixels.
///
/// - `blank`: weight 0, bias 0.25 (so an empty image predicts `blank`);
/// - `left`: weight `16 / (size*size/2)` on every pixel of the left half, bias 0;
/// - `right`: the same on the right half.
///
/// With inputs `x = pixel / 255`, `logit_left = 16 * (ink mass of the left half) / (half area)`.
pub fn demo_weights(size: u32) -> (Vec<f32>, Vec<f32>) {
    let s = size as usize;
    let half = (s * s / 2) as f32;
    let mut w = vec![0f32; 3 * s * s];
    for y in 0..s {
        for x in 0..s {
            let col = if x < s / 2 { 1 } else { 2 };
            w[col * s * s + y * s + x] = 16.0 / half;
        }
    }
    (w, vec![0.25, 0.0, 0.0])
}

pub fn demo_labels() -> Vec<String> {
    vec!["blank".into(), "left".into(), "right".into()]
}

/// Writes the demo image model as `<base>/<version>/` and returns the folder.
pub fn write_demo_export(base: &Path, version: u64, size: u32) -> Result<PathBuf, SignatureError> {
    let dir = base.join(version.to_string());
    let (w, b) = demo_weights(size);
    let sig = Signature::image(
        ModelInfo {
            kind: ModelType::Linear,
            config: serde_json::json!({"demo": true}),
        },
        size,
        3,
    );
    let metrics = serde_json::json!({"accuracy": 0.9, "baseline": {"accuracy": 0.33}});
    write_export(
        &dir,
        &linear_image_model(size, &w, &b),
        &sig,
        &demo_labels(),
        &image_features(size),
        &metrics,
    )?;
    Ok(dir)
}

/// The wide layout of [`write_wide_demo_export`]: 4 country buckets (27 values).
pub fn demo_wide_spec() -> WideSpec {
    WideSpec { country_buckets: 4 }
}

/// The hand-checkable weights `V` `[3, W]` of the demo wide part (classes `blank`, `left`,
/// `right` as [`demo_weights`]), per column of `spec`:
///
/// - any country code (every country bucket): +1 to `left`;
/// - `recognized=false`: +1 to `blank`; `recognized=true`: +2 to `right`;
/// - stroke-count bucket `k` (0 for 1 stroke, 1 for 2 strokes, ...): +0.5 * (k + 1) to `blank`;
/// - duration bucket `j` (0 under 1 s, 1 for 1-2 s, ...): +0.25 * (j + 1) to `right`.
///
/// All-zero metadata (no metadata) adds nothing: the model is then the demo image model.
pub fn demo_wide_weights(spec: &WideSpec) -> Vec<f32> {
    let w = spec.dim();
    let mut v = vec![0f32; 3 * w];
    let (blank, left, right) = (0, w, 2 * w);
    let c = spec.country_buckets;
    for i in 0..c {
        v[left + i] = 1.0;
    }
    v[blank + c] = 1.0;
    v[right + c + 1] = 2.0;
    let strokes = c + 2;
    for k in 0..=STROKE_BOUNDARIES.len() {
        v[blank + strokes + k] = 0.5 * (k + 1) as f32;
    }
    let duration = strokes + STROKE_BOUNDARIES.len() + 1;
    for j in 0..=DURATION_BOUNDARIES_MS.len() {
        v[right + duration + j] = 0.25 * (j + 1) as f32;
    }
    v
}

/// Writes the demo wide & deep export as `<base>/<version>/`: the demo image model
/// ([`demo_weights`]) plus the wide part of [`demo_wide_weights`] on [`demo_wide_spec`].
pub fn write_wide_demo_export(
    base: &Path,
    version: u64,
    size: u32,
) -> Result<PathBuf, SignatureError> {
    let dir = base.join(version.to_string());
    let (w, b) = demo_weights(size);
    let spec = demo_wide_spec();
    let sig = Signature::image_wide(
        ModelInfo {
            kind: ModelType::WideDeep,
            config: serde_json::json!({"demo": true}),
        },
        size,
        3,
        spec.dim(),
    );
    write_export_wide(
        &dir,
        &wide_deep_model(size, &w, &b, &demo_wide_weights(&spec)),
        &sig,
        &demo_labels(),
        &image_features(size),
        Some(spec),
        &serde_json::json!({"accuracy": 0.9}),
    )?;
    Ok(dir)
}

/// Writes a stroke (rnn-shaped) export with [`stroke_model`] weights `w` `[classes, 4]`.
pub fn write_stroke_export(
    base: &Path,
    version: u64,
    w: &[f32],
    b: &[f32],
) -> Result<PathBuf, SignatureError> {
    let dir = base.join(version.to_string());
    let sig = Signature::strokes(
        ModelInfo {
            kind: ModelType::Rnn,
            config: serde_json::Value::Null,
        },
        b.len(),
    );
    let features = FeatureSpec {
        strokes: Some(StrokeSpec::default()),
        ..image_features(16)
    };
    write_export(
        &dir,
        &stroke_model(w, b),
        &sig,
        &labels(b.len()),
        &features,
        &serde_json::json!({"accuracy": 0.5}),
    )?;
    Ok(dir)
}

/// Writes the lecture-CNN-shaped export (random weights).
pub fn write_lecture_cnn_export(
    base: &Path,
    version: u64,
    size: u32,
    classes: usize,
) -> Result<PathBuf, SignatureError> {
    let dir = base.join(version.to_string());
    let config = serde_json::json!({"conv": [[10, 4, 32], [5, 4, 64]], "dense": 256, "random_weights": true});
    let sig = Signature::image(
        ModelInfo {
            kind: ModelType::Cnn,
            config,
        },
        size,
        classes,
    );
    let features = FeatureSpec {
        raster: RasterSpec::new(RasterMode::Amld, size, None),
        ..FeatureSpec::default()
    };
    write_export(
        &dir,
        &lecture_cnn_model(size, classes, 7),
        &sig,
        &labels(classes),
        &features,
        &serde_json::json!({"accuracy": null}),
    )?;
    Ok(dir)
}

/// A blocking gRPC call on a small runtime of its own; errors as `CODE: message`.
fn grpc_call<T, F>(addr: &str, call: F) -> Result<T, String>
where
    F: AsyncFnOnce(tonic::transport::Channel) -> Result<T, tonic::Status>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        call(channel)
            .await
            .map_err(|s| format!("{}: {}", crate::grpc::code_name(s.code()), s.message()))
    })
}

/// `Predict` of one blank `img_{size}` image on `model` (`version`, or the newest): the answer's
/// model spec (name, version) and its class name.
pub fn grpc_predict(
    addr: &str,
    model: &str,
    version: Option<i64>,
    size: u32,
) -> Result<(String, i64, String), String> {
    use crate::proto::serving::{self as pb, model_spec::VersionChoice};
    use crate::proto::tensorflow::{self as tf, tensor_shape_proto};
    let n = (size * size) as usize;
    let image = tf::TensorProto {
        dtype: tf::DataType::DtFloat as i32,
        tensor_shape: Some(tf::TensorShapeProto {
            dim: [1, 1, size as i64, size as i64]
                .map(|size| tensor_shape_proto::Dim {
                    size,
                    name: String::new(),
                })
                .to_vec(),
            unknown_rank: false,
        }),
        float_val: vec![0.0; n],
        ..Default::default()
    };
    let req = pb::PredictRequest {
        model_spec: Some(pb::ModelSpec {
            name: model.into(),
            version_choice: version.map(VersionChoice::Version),
            signature_name: String::new(),
        }),
        inputs: [(format!("img_{size}"), image)].into(),
        output_filter: vec!["class_name".into()],
    };
    grpc_call(addr, async |channel| {
        let mut client = pb::prediction_service_client::PredictionServiceClient::new(channel);
        let r = client.predict(req).await?.into_inner();
        let spec = r.model_spec.unwrap_or_default();
        let version = match spec.version_choice {
            Some(VersionChoice::Version(v)) => v,
            _ => -1,
        };
        let class = r
            .outputs
            .get("class_name")
            .and_then(|t| t.string_val.first())
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        Ok((spec.name, version, class))
    })
}

/// `ModelService.GetModelStatus` of `model`: (version, state name) per version, as answered.
pub fn grpc_model_status(addr: &str, model: &str) -> Result<Vec<(i64, String)>, String> {
    use crate::proto::serving as pb;
    let req = pb::GetModelStatusRequest {
        model_spec: Some(pb::ModelSpec {
            name: model.into(),
            ..Default::default()
        }),
    };
    grpc_call(addr, async |channel| {
        let mut client = pb::model_service_client::ModelServiceClient::new(channel);
        let r = client.get_model_status(req).await?.into_inner();
        Ok(r.model_version_status
            .iter()
            .map(|s| {
                let state = pb::model_version_status::State::try_from(s.state)
                    .map_or("?", |st| st.as_str_name());
                (s.version, state.to_string())
            })
            .collect())
    })
}
