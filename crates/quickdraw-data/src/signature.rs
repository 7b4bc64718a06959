//! The export folder contract: what `quickdraw export` writes and what `model show`, `model run`
//! and `serve` read (TensorFlow Serving's layout, with ONNX in place of a SavedModel).
//!
//! ```text
//! <base>/                      --model-base-path of `quickdraw serve`
//!   <version>/                 an integer (1, 2, 3, ...); the newest loadable one is served
//!     model.onnx               the network (opset >= 13), inputs and outputs named as below
//!     signature.json           [`Signature`]: inputs, outputs, dtypes, shapes, model type, classes
//!     assets/labels.txt        one class name per line; class index = line index
//!     assets/preprocessing.json  {"features": <FeatureSpec, exactly as in the dataset manifest>,
//!                              "wide": <WideSpec> (wide_deep only)}
//!     metrics.json             free-form object, at least {"accuracy": ..} of the exported
//!                              checkpoint (plus e.g. the baseline's under "baseline")
//! ```
//!
//! Tensors (`-1` is a dimension of any size: the batch `N`, or the sequence length `T`):
//!
//! | model | input | dtype | shape | value |
//! |---|---|---|---|---|
//! | cnn, dnn, linear, baseline | `img_<S>` | `DT_FLOAT` | `[-1, 1, S, S]` | pixel (0..=255) * [`PIXEL_SCALE`] |
//! | rnn | `strokes` | `DT_FLOAT` | `[-1, -1, 3]` | (dx, dy, pen) of [`crate::strokes`], zero-padded |
//! | rnn | `lengths` | `DT_INT64` | `[-1]` | valid steps of each sequence |
//! | wide_deep | `img_<S>` | `DT_FLOAT` | `[-1, 1, S, S]` | as for cnn |
//! | wide_deep | `wide` | `DT_FLOAT` | `[-1, W]` | the multi-hot metadata vector of [`crate::wide`] (all zeros: no metadata) |
//!
//! Outputs of every model: `logits` `DT_FLOAT [-1, C]`, `probabilities` `DT_FLOAT [-1, C]`
//! (softmax of the logits) and `classes` `DT_INT64 [-1]` (argmax).
//!
//! The keys of `inputs`/`outputs` are the TensorFlow Serving names (`img_64`, `probabilities`);
//! each entry's `name` is the ONNX graph tensor name (the exporter uses the same names).
//!
//! An exporter must make a version appear atomically: write `<base>/.<version>.tmp/`, then rename
//! it to `<base>/<version>/` (a server polling the base path skips folders that do not parse as
//! integers, and retries a version that failed to load whenever its files change).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::features::{FeatureSpec, image_key};
use crate::manifest::{labels_text, read_labels};
use crate::wide::WideSpec;

pub use crate::features::PIXEL_SCALE;

pub const MODEL_FILE: &str = "model.onnx";
pub const SIGNATURE_FILE: &str = "signature.json";
pub const ASSETS_DIR: &str = "assets";
/// Under `assets/`: the same file as the dataset's and the model dir's.
pub use crate::manifest::LABELS_FILE;
pub const PREPROCESSING_FILE: &str = "preprocessing.json";
pub const METRICS_FILE: &str = "metrics.json";
/// TensorFlow's default serving signature key.
pub const DEFAULT_SIGNATURE: &str = "serving_default";
/// TensorFlow Serving's predict method name.
pub const PREDICT_METHOD: &str = "tensorflow/serving/predict";
/// Bumped when a field of `signature.json` changes meaning.
pub const EXPORT_FORMAT_VERSION: u32 = 1;

/// Input and output tensor names of the contract.
pub const LOGITS: &str = "logits";
pub const PROBABILITIES: &str = "probabilities";
pub const CLASSES: &str = "classes";
pub const STROKES: &str = "strokes";
pub const LENGTHS: &str = "lengths";
/// The wide & deep model's metadata input.
pub const WIDE: &str = "wide";

/// Element types, spelled as TensorFlow's `DataType` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DType {
    #[serde(rename = "DT_FLOAT")]
    Float,
    #[serde(rename = "DT_INT64")]
    Int64,
}

impl DType {
    pub fn as_str(self) -> &'static str {
        match self {
            DType::Float => "DT_FLOAT",
            DType::Int64 => "DT_INT64",
        }
    }
}

/// One input or output tensor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// Tensor name in the ONNX graph.
    pub name: String,
    pub dtype: DType,
    /// Dimensions; `-1` for any size (batch, sequence length).
    pub shape: Vec<i64>,
}

impl TensorSpec {
    pub fn new(name: &str, dtype: DType, shape: &[i64]) -> Self {
        TensorSpec {
            name: name.to_string(),
            dtype,
            shape: shape.to_vec(),
        }
    }
    /// `[-1, 1, 64, 64]`-style text.
    pub fn shape_text(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        format!("[{}]", dims.join(", "))
    }
}

/// The estimator that was exported (`--model` of `quickdraw train`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelType {
    Cnn,
    Dnn,
    Linear,
    Baseline,
    Rnn,
    #[serde(rename = "wide_deep")]
    WideDeep,
}

impl ModelType {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::Cnn => "cnn",
            ModelType::Dnn => "dnn",
            ModelType::Linear => "linear",
            ModelType::Baseline => "baseline",
            ModelType::Rnn => "rnn",
            ModelType::WideDeep => "wide_deep",
        }
    }
    /// Sequence models read stroke features instead of the image.
    pub fn uses_strokes(self) -> bool {
        self == ModelType::Rnn
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    #[serde(rename = "type")]
    pub kind: ModelType,
    /// The model's hyper-parameters as the trainer stores them (free-form).
    #[serde(default)]
    pub config: serde_json::Value,
}

/// `signature.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signature {
    #[serde(default = "default_format_version")]
    pub format_version: u32,
    pub signature_name: String,
    pub method_name: String,
    pub inputs: BTreeMap<String, TensorSpec>,
    pub outputs: BTreeMap<String, TensorSpec>,
    pub model: ModelInfo,
    /// Number of classes `C` (the length of `assets/labels.txt`).
    pub classes: usize,
}

fn default_format_version() -> u32 {
    EXPORT_FORMAT_VERSION
}

/// What a model consumes, derived from its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputKind {
    /// `img_<size>`: `[N, 1, size, size]` float pixels * [`PIXEL_SCALE`].
    Image { key: String, size: u32 },
    /// `strokes` `[N, T, 3]` float and `lengths` `[N]` int64.
    Strokes,
}

fn outputs(classes: usize) -> BTreeMap<String, TensorSpec> {
    let c = classes as i64;
    BTreeMap::from([
        (
            LOGITS.to_string(),
            TensorSpec::new(LOGITS, DType::Float, &[-1, c]),
        ),
        (
            PROBABILITIES.to_string(),
            TensorSpec::new(PROBABILITIES, DType::Float, &[-1, c]),
        ),
        (
            CLASSES.to_string(),
            TensorSpec::new(CLASSES, DType::Int64, &[-1]),
        ),
    ])
}

impl Signature {
    /// The signature of an image model (`cnn`, `dnn`, `linear`, `baseline`) on `size`-pixel images.
    pub fn image(model: ModelInfo, size: u32, classes: usize) -> Self {
        let key = image_key(size);
        let s = size as i64;
        Signature {
            format_version: EXPORT_FORMAT_VERSION,
            signature_name: DEFAULT_SIGNATURE.into(),
            method_name: PREDICT_METHOD.into(),
            inputs: BTreeMap::from([(
                key.clone(),
                TensorSpec::new(&key, DType::Float, &[-1, 1, s, s]),
            )]),
            outputs: outputs(classes),
            model,
            classes,
        }
    }

    /// The signature of the wide & deep model: the image plus the `wide` vector of `wide_dim`.
    pub fn image_wide(model: ModelInfo, size: u32, classes: usize, wide_dim: usize) -> Self {
        let mut sig = Signature::image(model, size, classes);
        sig.inputs.insert(
            WIDE.to_string(),
            TensorSpec::new(WIDE, DType::Float, &[-1, wide_dim as i64]),
        );
        sig
    }

    /// Length of the `wide` input (wide & deep), `None` for other models.
    pub fn wide_dim(&self) -> Option<usize> {
        self.inputs
            .get(WIDE)
            .and_then(|t| t.shape.get(1))
            .map(|&d| d.max(0) as usize)
    }

    /// The signature of a stroke-sequence model (`rnn`).
    pub fn strokes(model: ModelInfo, classes: usize) -> Self {
        Signature {
            format_version: EXPORT_FORMAT_VERSION,
            signature_name: DEFAULT_SIGNATURE.into(),
            method_name: PREDICT_METHOD.into(),
            inputs: BTreeMap::from([
                (
                    STROKES.to_string(),
                    TensorSpec::new(STROKES, DType::Float, &[-1, -1, 3]),
                ),
                (
                    LENGTHS.to_string(),
                    TensorSpec::new(LENGTHS, DType::Int64, &[-1]),
                ),
            ]),
            outputs: outputs(classes),
            model,
            classes,
        }
    }

    /// The input kind, after checking the inputs are exactly what the contract allows.
    pub fn input_kind(&self) -> Result<InputKind, String> {
        if self.model.kind.uses_strokes() {
            for (k, dt, rank) in [(STROKES, DType::Float, 3), (LENGTHS, DType::Int64, 1)] {
                let t = self
                    .inputs
                    .get(k)
                    .ok_or_else(|| format!("rnn model without input {k:?}"))?;
                if t.dtype != dt || t.shape.len() != rank {
                    return Err(format!(
                        "input {k:?} is {} {}, expected {} of rank {rank}",
                        t.dtype.as_str(),
                        t.shape_text(),
                        dt.as_str()
                    ));
                }
            }
            if self.inputs.len() != 2 || self.inputs[STROKES].shape[2] != 3 {
                return Err(
                    "rnn inputs must be exactly strokes [-1, -1, 3] and lengths [-1]".into(),
                );
            }
            return Ok(InputKind::Strokes);
        }
        let wide = self.model.kind == ModelType::WideDeep;
        if wide {
            let t = self
                .inputs
                .get(WIDE)
                .ok_or_else(|| "wide_deep model without input \"wide\"".to_string())?;
            if t.dtype != DType::Float || t.shape.len() != 2 || t.shape[1] < 1 {
                return Err(format!(
                    "input \"wide\" is {} {}, expected DT_FLOAT [-1, W] with W >= 1",
                    t.dtype.as_str(),
                    t.shape_text()
                ));
            }
        }
        // The image input: the only one, or the one beside `wide`.
        let mut it = self
            .inputs
            .iter()
            .filter(|(k, _)| !(wide && k.as_str() == WIDE));
        let (Some((key, t)), None) = (it.next(), it.next()) else {
            return Err(format!(
                "{} model needs exactly one img_<size> input, found {}",
                self.model.kind.as_str(),
                self.inputs.len()
            ));
        };
        let size = key
            .strip_prefix("img_")
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or_else(|| format!("input {key:?} is not named img_<size>"))?;
        let s = size as i64;
        if t.dtype != DType::Float || t.shape.len() != 4 || t.shape[1..] != [1, s, s] {
            return Err(format!(
                "input {key:?} is {} {}, expected DT_FLOAT [-1, 1, {s}, {s}]",
                t.dtype.as_str(),
                t.shape_text()
            ));
        }
        Ok(InputKind::Image {
            key: key.clone(),
            size,
        })
    }

    /// Checks the whole signature against the contract (inputs, outputs, class count).
    pub fn check(&self) -> Result<InputKind, String> {
        if self.format_version > EXPORT_FORMAT_VERSION {
            return Err(format!(
                "export format {} is newer than this tool understands ({EXPORT_FORMAT_VERSION})",
                self.format_version
            ));
        }
        if self.classes == 0 {
            return Err("classes is 0".into());
        }
        let kind = self.input_kind()?;
        let c = self.classes as i64;
        for (k, dt, shape) in [
            (LOGITS, DType::Float, vec![-1, c]),
            (PROBABILITIES, DType::Float, vec![-1, c]),
        ] {
            let t = self
                .outputs
                .get(k)
                .ok_or_else(|| format!("output {k:?} is missing"))?;
            if t.dtype != dt || t.shape.len() != 2 || (t.shape[1] != c) {
                return Err(format!(
                    "output {k:?} is {} {}, expected {} {:?}",
                    t.dtype.as_str(),
                    t.shape_text(),
                    dt.as_str(),
                    shape
                ));
            }
        }
        if let Some(t) = self
            .outputs
            .get(CLASSES)
            .filter(|t| t.dtype != DType::Int64 || t.shape.len() != 1)
        {
            return Err(format!(
                "output \"classes\" is {} {}, expected DT_INT64 [-1]",
                t.dtype.as_str(),
                t.shape_text()
            ));
        }
        Ok(kind)
    }
}

/// `assets/preprocessing.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    pub features: FeatureSpec,
    /// How the `wide` input is built from a drawing's metadata (wide & deep only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wide: Option<WideSpec>,
}

/// Everything an export folder describes, read and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportInfo {
    pub dir: PathBuf,
    /// The folder name when it is an integer version.
    pub version: Option<u64>,
    pub signature: Signature,
    pub input: InputKind,
    pub labels: Vec<String>,
    pub features: FeatureSpec,
    /// The `wide` input's layout (wide & deep only).
    pub wide: Option<WideSpec>,
    pub metrics: serde_json::Value,
}

impl ExportInfo {
    pub fn model_path(&self) -> PathBuf {
        self.dir.join(MODEL_FILE)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SignatureError + '_ {
    move |source| SignatureError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, SignatureError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text).map_err(|source| SignatureError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads and checks an export version folder (`<base>/<version>/`). `model.onnx` must exist; it
/// is not parsed here (this crate has no inference engine).
pub fn load_export_dir(dir: &Path) -> Result<ExportInfo, SignatureError> {
    let invalid = |path: PathBuf, what: String| SignatureError::Invalid { path, what };
    let sig_path = dir.join(SIGNATURE_FILE);
    let signature: Signature = read_json(&sig_path)?;
    let input = signature
        .check()
        .map_err(|w| invalid(sig_path.clone(), w))?;
    let labels_path = dir.join(ASSETS_DIR).join(LABELS_FILE);
    let labels =
        read_labels(&labels_path).map_err(|e| invalid(labels_path.clone(), e.to_string()))?;
    if labels.len() != signature.classes {
        return Err(invalid(
            labels_path,
            format!(
                "{} labels, but signature.json says {} classes",
                labels.len(),
                signature.classes
            ),
        ));
    }
    let pre_path = dir.join(ASSETS_DIR).join(PREPROCESSING_FILE);
    let pre: Preprocessing = read_json(&pre_path)?;
    match &input {
        InputKind::Image { size, key } if *size != pre.features.raster.size => {
            return Err(invalid(
                pre_path,
                format!(
                    "raster size {} does not match the model input {key}",
                    pre.features.raster.size
                ),
            ));
        }
        InputKind::Strokes if pre.features.strokes.is_none() => {
            return Err(invalid(
                pre_path,
                "an rnn export needs stroke features (features.strokes is null)".into(),
            ));
        }
        _ if signature.wide_dim() != pre.wide.map(|w| w.dim()) => {
            return Err(invalid(
                pre_path,
                format!(
                    "the wide spec ({:?} values) does not match the model's wide input ({:?})",
                    pre.wide.map(|w| w.dim()),
                    signature.wide_dim()
                ),
            ));
        }
        _ => {}
    }
    let metrics_path = dir.join(METRICS_FILE);
    let metrics = if metrics_path.exists() {
        read_json(&metrics_path)?
    } else {
        serde_json::Value::Null
    };
    let model = dir.join(MODEL_FILE);
    if !model.is_file() {
        return Err(invalid(model, "missing".into()));
    }
    let version = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse::<u64>().ok());
    Ok(ExportInfo {
        dir: dir.to_path_buf(),
        version,
        signature,
        input,
        labels,
        features: pre.features,
        wide: pre.wide,
        metrics,
    })
}

/// Integer version folders of a base path, ascending. Other entries are ignored.
pub fn list_versions(base: &Path) -> Result<Vec<(u64, PathBuf)>, SignatureError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(base).map_err(io(base))? {
        let e = e.map_err(io(base))?;
        let name = e.file_name();
        let Some(v) = name
            .to_str()
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if e.path().is_dir() {
            out.push((v, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Names by which a training model directory (`quickdraw train`'s layout: `state.json`,
/// `checkpoints/`; quickdraw_train::modeldir, whose tests keep these in sync) is recognised
/// where an export is expected, and the sub-folder `quickdraw export` writes versions to.
pub const MODEL_DIR_MARKERS: [&str; 2] = ["config.json", "checkpoints"];
pub const MODEL_DIR_EXPORT: &str = "export";

/// When `dir` is a training model directory rather than an export, what to say instead: that it
/// is one, and which folder holds (or will hold) its exports.
pub fn model_dir_hint(dir: &Path) -> Option<String> {
    // A base path holding versions is an export base, whatever else it holds.
    if !MODEL_DIR_MARKERS.iter().any(|m| dir.join(m).exists())
        || list_versions(dir).is_ok_and(|v| !v.is_empty())
    {
        return None;
    }
    let export = dir.join(MODEL_DIR_EXPORT);
    let next = if list_versions(&export).is_ok_and(|v| !v.is_empty()) {
        format!("use {} (its exported versions)", export.display())
    } else {
        format!(
            "`quickdraw export --model-dir {}` writes its versions to {}",
            dir.display(),
            export.display()
        )
    };
    Some(format!(
        "a model directory of `quickdraw train` (checkpoints), not an export: {next}"
    ))
}

/// `dir` itself when it holds `signature.json`, else its newest integer version folder.
pub fn resolve_export_dir(dir: &Path) -> Result<PathBuf, SignatureError> {
    if dir.join(SIGNATURE_FILE).exists() {
        return Ok(dir.to_path_buf());
    }
    match list_versions(dir)?.pop() {
        Some((_, p)) => Ok(p),
        None => Err(SignatureError::Invalid {
            path: dir.to_path_buf(),
            what: model_dir_hint(dir).unwrap_or_else(|| {
                format!(
                    "no {SIGNATURE_FILE} and no integer version folder (expected <base>/<version>/{SIGNATURE_FILE})"
                )
            }),
        }),
    }
}

fn write_file(path: &Path, text: &str) -> Result<(), SignatureError> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).map_err(io(p))?;
    }
    std::fs::write(path, text).map_err(io(path))
}

fn pretty<T: Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).expect("serialisable") + "\n"
}

pub fn write_signature(dir: &Path, sig: &Signature) -> Result<(), SignatureError> {
    write_file(&dir.join(SIGNATURE_FILE), &pretty(sig))
}

pub fn write_labels(dir: &Path, labels: &[String]) -> Result<(), SignatureError> {
    write_file(
        &dir.join(ASSETS_DIR).join(LABELS_FILE),
        &labels_text(labels),
    )
}

pub fn write_preprocessing(
    dir: &Path,
    features: &FeatureSpec,
    wide: Option<WideSpec>,
) -> Result<(), SignatureError> {
    write_file(
        &dir.join(ASSETS_DIR).join(PREPROCESSING_FILE),
        &pretty(&Preprocessing {
            features: *features,
            wide,
        }),
    )
}

pub fn write_metrics(dir: &Path, metrics: &serde_json::Value) -> Result<(), SignatureError> {
    write_file(&dir.join(METRICS_FILE), &pretty(metrics))
}

/// Writes every file of an export folder except `model.onnx` (checked against the contract
/// first, so a writer cannot produce a folder the server refuses).
pub fn write_export_metadata(
    dir: &Path,
    sig: &Signature,
    labels: &[String],
    features: &FeatureSpec,
    wide: Option<WideSpec>,
    metrics: &serde_json::Value,
) -> Result<(), SignatureError> {
    let invalid = |what: String| SignatureError::Invalid {
        path: dir.to_path_buf(),
        what,
    };
    let kind = sig.check().map_err(invalid)?;
    if labels.len() != sig.classes {
        return Err(invalid(format!(
            "{} labels for {} classes",
            labels.len(),
            sig.classes
        )));
    }
    match kind {
        InputKind::Image { size, .. } if size != features.raster.size => {
            return Err(invalid(format!(
                "raster size {} but model input img_{size}",
                features.raster.size
            )));
        }
        InputKind::Strokes if features.strokes.is_none() => {
            return Err(invalid(
                "an rnn export needs stroke features (features.strokes is null)".into(),
            ));
        }
        _ if sig.wide_dim() != wide.map(|w| w.dim()) => {
            return Err(invalid(format!(
                "wide spec of {:?} values for a wide input of {:?}",
                wide.map(|w| w.dim()),
                sig.wide_dim()
            )));
        }
        _ => {}
    }
    write_labels(dir, labels)?;
    write_preprocessing(dir, features, wide)?;
    write_metrics(dir, metrics)?;
    let info = ExportInfo {
        dir: dir.to_path_buf(),
        version: None,
        signature: sig.clone(),
        input: kind,
        labels: labels.to_vec(),
        features: *features,
        wide,
        metrics: metrics.clone(),
    };
    crate::card::write_model_card(dir, &info)?;
    // Last: a reader (the server) takes a folder with a signature.json as complete.
    write_signature(dir, sig)
}

/// The `k` highest scores of one row of probabilities (or logits), best first, as
/// `(class index, score)`; ties go to the lower index (as the `classes` output's ArgMax). The
/// one ranking used by `predict`, `model run` and the server's responses.
pub fn top_k(scores: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<(usize, f32)> = scores.iter().copied().enumerate().collect();
    idx.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    idx.truncate(k);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raster::{RasterMode, RasterSpec};

    #[test]
    fn top_k_is_best_first_with_ties_to_the_lower_index() {
        let s = [0.1, 0.4, 0.1, 0.4];
        assert_eq!(top_k(&s, 3), vec![(1, 0.4), (3, 0.4), (0, 0.1)]);
        assert_eq!(top_k(&s, 9).len(), 4);
        assert!(top_k(&s, 0).is_empty());
    }

    fn spec(size: u32) -> FeatureSpec {
        FeatureSpec {
            raster: RasterSpec::new(RasterMode::Default, size, None),
            ..FeatureSpec::default()
        }
    }

    #[test]
    fn round_trip_and_checks() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("3");
        let labels: Vec<String> = ["cat", "dog"].iter().map(|s| s.to_string()).collect();
        let sig = Signature::image(
            ModelInfo {
                kind: ModelType::Cnn,
                config: serde_json::json!({"dense": 256}),
            },
            16,
            2,
        );
        write_export_metadata(
            &dir,
            &sig,
            &labels,
            &spec(16),
            None,
            &serde_json::json!({"accuracy": 0.5}),
        )
        .unwrap();
        let err = load_export_dir(&dir).unwrap_err();
        assert!(err.to_string().contains("model.onnx"), "{err}");
        std::fs::write(dir.join(MODEL_FILE), b"x").unwrap();
        let info = load_export_dir(&dir).unwrap();
        assert_eq!(info.version, Some(3));
        assert_eq!(info.signature, sig);
        assert_eq!(
            info.input,
            InputKind::Image {
                key: "img_16".into(),
                size: 16
            }
        );
        assert_eq!(info.labels, labels);
        assert_eq!(info.metrics["accuracy"], 0.5);
        let text = std::fs::read_to_string(dir.join(SIGNATURE_FILE)).unwrap();
        assert!(
            text.contains("\"DT_FLOAT\"")
                && text.contains("\"type\": \"cnn\"")
                && text.contains("serving_default"),
            "{text}"
        );

        // Mismatched raster size and label count are refused by the writer.
        assert!(
            write_export_metadata(
                &dir,
                &sig,
                &labels,
                &spec(28),
                None,
                &serde_json::Value::Null
            )
            .is_err()
        );
        assert!(
            write_export_metadata(
                &dir,
                &sig,
                &labels[..1],
                &spec(16),
                None,
                &serde_json::Value::Null
            )
            .is_err()
        );
        assert_eq!(resolve_export_dir(tmp.path()).unwrap(), dir);
        std::fs::create_dir(tmp.path().join("notaversion")).unwrap();
        std::fs::create_dir(tmp.path().join("10")).unwrap();
        let v: Vec<u64> = list_versions(tmp.path())
            .unwrap()
            .into_iter()
            .map(|v| v.0)
            .collect();
        assert_eq!(v, vec![3, 10]);
    }

    #[test]
    fn stroke_signature() {
        let sig = Signature::strokes(
            ModelInfo {
                kind: ModelType::Rnn,
                config: serde_json::Value::Null,
            },
            5,
        );
        assert_eq!(sig.check(), Ok(InputKind::Strokes));
        let mut bad = sig.clone();
        bad.inputs.remove(LENGTHS);
        assert!(bad.check().unwrap_err().contains("lengths"));
        let img = Signature::image(
            ModelInfo {
                kind: ModelType::Rnn,
                config: serde_json::Value::Null,
            },
            8,
            5,
        );
        assert!(img.check().is_err(), "an rnn must take strokes");
    }

    #[test]
    fn wide_deep_signature_and_preprocessing() {
        let info = ModelInfo {
            kind: ModelType::WideDeep,
            config: serde_json::Value::Null,
        };
        let w = WideSpec::default();
        let sig = Signature::image_wide(info.clone(), 16, 2, w.dim());
        let image = InputKind::Image {
            key: "img_16".into(),
            size: 16,
        };
        assert_eq!(sig.check(), Ok(image.clone()));
        assert_eq!(sig.wide_dim(), Some(w.dim()));
        let mut no_wide = sig.clone();
        no_wide.inputs.remove(WIDE);
        assert!(no_wide.check().unwrap_err().contains("wide"));
        // A cnn with a stray `wide` input has two inputs: refused.
        let mut cnn = sig.clone();
        cnn.model.kind = ModelType::Cnn;
        assert!(cnn.check().is_err());

        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("1");
        let labels: Vec<String> = vec!["a".into(), "b".into()];
        let null = serde_json::Value::Null;
        // The writer refuses a missing or mismatched wide spec.
        assert!(write_export_metadata(&dir, &sig, &labels, &spec(16), None, &null).is_err());
        let small = WideSpec { country_buckets: 3 };
        assert!(write_export_metadata(&dir, &sig, &labels, &spec(16), Some(small), &null).is_err());
        write_export_metadata(&dir, &sig, &labels, &spec(16), Some(w), &null).unwrap();
        std::fs::write(dir.join(MODEL_FILE), b"x").unwrap();
        let back = load_export_dir(&dir).unwrap();
        assert_eq!((back.input, back.wide), (image, Some(w)));
        let pre = std::fs::read_to_string(dir.join(ASSETS_DIR).join(PREPROCESSING_FILE)).unwrap();
        assert!(pre.contains("\"country_buckets\": 128"), "{pre}");
    }
}
