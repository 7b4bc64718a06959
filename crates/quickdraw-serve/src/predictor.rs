//! [`Predictor`]: one export folder loaded with tract into optimised plans (a symbolic batch
//! dimension, and one row), or run by ONNX Runtime when asked ([`Runtime`]); shared by
//! `quickdraw model run` and `quickdraw serve`.
//!
//! Wide & deep exports have a second input, `wide` (`[N, W]` floats, the metadata vector of
//! [`quickdraw_data::wide`]): [`Predictor::predict_pixels_wide`] feeds it; every other image
//! entry point feeds all zeros (no metadata, the documented default).

use std::path::Path;
use std::sync::Arc;

use quickdraw_data::Ink;
use quickdraw_data::features::{FeatureError, Preprocessed, preprocess};
use quickdraw_data::signature::{self, ExportInfo, InputKind, SignatureError, load_export_dir};
use quickdraw_data::strokes::StrokeFeatures;
use quickdraw_data::wide::WideSpec;
use tract_onnx::prelude::*;

use crate::onnxruntime::{OrtEngine, Runtime};
use crate::request::{Inputs, ModelInput};

#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error(transparent)]
    Export(#[from] SignatureError),
    #[error("{path}: cannot load the ONNX model: {what}")]
    Load { path: String, what: String },
    /// `assets/preprocessing.json` asks for parameters no drawing can be drawn with.
    #[error("{path}: refusing the export's preprocessing: {source}")]
    Preprocessing {
        path: String,
        source: quickdraw_data::validate::SpecError,
    },
    #[error("this model reads {expected}, not {got}")]
    WrongInput { expected: String, got: &'static str },
    #[error("input {index}: {what}")]
    BadInput { index: usize, what: String },
    #[error("inference failed: {0}")]
    Run(String),
}

/// Model outputs for a batch: row-major `[n, classes]` probabilities and logits, plus the
/// model's `classes` output (argmax).
#[derive(Debug, Clone, PartialEq)]
pub struct Probabilities {
    pub n_classes: usize,
    pub probabilities: Vec<f32>,
    pub logits: Vec<f32>,
    pub classes: Vec<i64>,
}

impl Probabilities {
    pub fn len(&self) -> usize {
        self.classes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }
    pub fn row(&self, i: usize) -> &[f32] {
        &self.probabilities[i * self.n_classes..(i + 1) * self.n_classes]
    }
    pub fn logits_row(&self, i: usize) -> &[f32] {
        &self.logits[i * self.n_classes..(i + 1) * self.n_classes]
    }
    /// The `k` most probable classes of row `i`, best first (ties: lower index first).
    pub fn top_k(&self, i: usize, k: usize) -> Vec<(usize, f32)> {
        quickdraw_data::signature::top_k(self.row(i), k)
    }
    /// Rows `r` as a batch of their own (a merged batch's share of one request).
    pub fn slice(&self, r: std::ops::Range<usize>) -> Probabilities {
        let c = self.n_classes;
        Probabilities {
            n_classes: c,
            probabilities: self.probabilities[r.start * c..r.end * c].to_vec(),
            logits: self.logits[r.start * c..r.end * c].to_vec(),
            classes: self.classes[r].to_vec(),
        }
    }
    fn extend(&mut self, o: Probabilities, keep: usize) {
        self.probabilities
            .extend_from_slice(&o.probabilities[..keep * self.n_classes]);
        self.logits
            .extend_from_slice(&o.logits[..keep * self.n_classes]);
        self.classes.extend_from_slice(&o.classes[..keep]);
    }
}

/// How many rows one run of the plan takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// Symbolic batch dimension: any number of rows per run.
    Any,
    /// The ONNX graph has a fixed batch size; inputs are run in chunks of it (zero-padded).
    Fixed(usize),
}

/// A tensor as plain row-major data (shape, values): how inputs and outputs cross between
/// tract and ONNX Runtime.
#[derive(Debug, Clone)]
pub enum PlainTensor {
    F32(Vec<usize>, Vec<f32>),
    I64(Vec<usize>, Vec<i64>),
}

impl PlainTensor {
    /// A tract tensor's values: float32 as they are, any other type cast to int64.
    pub fn from_tract(t: &TValue) -> Result<PlainTensor, String> {
        let shape = t.shape().to_vec();
        if t.datum_type() == f32::datum_type() {
            let v = t.to_plain_array_view::<f32>().map_err(|e| e.to_string())?;
            return Ok(PlainTensor::F32(shape, v.iter().copied().collect()));
        }
        let t = t.cast_to::<i64>().map_err(|e| e.to_string())?;
        let v = t.to_plain_array_view::<i64>().map_err(|e| e.to_string())?;
        Ok(PlainTensor::I64(shape, v.iter().copied().collect()))
    }
}

/// A loaded export, ready to predict. Cheap to share (`Arc`), safe to use from many threads.
#[derive(Debug)]
pub struct Predictor {
    info: ExportInfo,
    /// The input kind and the `wide` layout, as requests are checked against them.
    inputs: Inputs,
    plan: Arc<TypedSimplePlan>,
    /// With a symbolic batch: the same graph optimised for exactly one row, the common case of
    /// interactive serving (tract picks better kernels for concrete shapes).
    plan_one: Option<Arc<TypedSimplePlan>>,
    batch: Batch,
    has_classes_output: bool,
    nodes: usize,
    /// Set when ONNX Runtime runs the model (tract's plans then only describe it).
    ort: Option<OrtEngine>,
}

fn load_err(path: &Path) -> impl Fn(TractError) -> PredictError + '_ {
    move |e| PredictError::Load {
        path: path.display().to_string(),
        what: format!("{e:#}"),
    }
}

impl Predictor {
    /// Reads the export folder, loads and optimises `model.onnx` with tract, and runs one blank
    /// input through it to check the outputs match the signature.
    pub fn load(dir: &Path) -> Result<Predictor, PredictError> {
        Self::load_with(dir, &Runtime::Tract)
    }

    /// [`Predictor::load`], with the model run by `runtime`.
    pub fn load_with(dir: &Path, runtime: &Runtime) -> Result<Predictor, PredictError> {
        let info = load_export_dir(dir)?;
        info.features
            .validate()
            .map_err(|source| PredictError::Preprocessing {
                path: dir
                    .join(signature::ASSETS_DIR)
                    .join(signature::PREPROCESSING_FILE)
                    .display()
                    .to_string(),
                source,
            })?;
        let path = info.model_path();
        let sig = &info.signature;
        if info.wide.is_some() && !matches!(info.input, InputKind::Image { .. }) {
            return Err(PredictError::Load {
                path: path.display().to_string(),
                what: "a wide input beside stroke inputs: only image models have one".into(),
            });
        }
        let input_names: Vec<String> = match &info.input {
            // The image, then the metadata vector of wide & deep models.
            InputKind::Image { key, .. } => std::iter::once(key.as_str())
                .chain(info.wide.map(|_| signature::WIDE))
                .map(|k| sig.inputs[k].name.clone())
                .collect(),
            InputKind::Strokes => vec![
                sig.inputs[signature::STROKES].name.clone(),
                sig.inputs[signature::LENGTHS].name.clone(),
            ],
        };
        let mut output_names = vec![
            sig.outputs[signature::LOGITS].name.clone(),
            sig.outputs[signature::PROBABILITIES].name.clone(),
        ];
        let has_classes_output = sig.outputs.contains_key(signature::CLASSES);
        if has_classes_output {
            output_names.push(sig.outputs[signature::CLASSES].name.clone());
        }
        let proto = tract_onnx::onnx()
            .model_for_path(&path)
            .map_err(load_err(&path))?;
        let proto = proto
            .with_input_names(&input_names)
            .and_then(|m| m.with_outputs_by_name(&output_names))
            .map_err(load_err(&path))?;
        let one_row = |m: InferenceModel| {
            Self::with_facts(m, &info, Some(1)).and_then(|m| m.into_optimized())
        };
        // First try a symbolic batch (the contract's -1), plus a plan for exactly one row; else
        // the graph's own shapes with batch 1.
        let symbolic =
            Self::with_facts(proto.clone(), &info, None).and_then(|m| m.into_optimized());
        let (model, batch, plan_one) = match symbolic {
            Ok(m) => {
                let one = one_row(proto)
                    .and_then(|m| m.into_runnable())
                    .map_err(load_err(&path))?;
                (m, Batch::Any, Some(one))
            }
            Err(sym_err) => {
                let fixed = one_row(proto).map_err(|e| PredictError::Load {
                    path: path.display().to_string(),
                    what: format!("with a symbolic batch: {sym_err:#}; with batch 1: {e:#}"),
                })?;
                (fixed, Batch::Fixed(1), None)
            }
        };
        let nodes = model.nodes().len();
        let plan = model.into_runnable().map_err(load_err(&path))?;
        let ort = match runtime {
            Runtime::Tract => None,
            Runtime::OnnxRuntime(lib) => Some(
                OrtEngine::load(lib, &path, input_names, output_names).map_err(|what| {
                    PredictError::Load {
                        path: path.display().to_string(),
                        what,
                    }
                })?,
            ),
        };
        let p = Predictor {
            inputs: Inputs {
                kind: info.input.clone(),
                wide: info.wide,
            },
            info,
            plan,
            plan_one,
            batch,
            has_classes_output,
            nodes,
            ort,
        };
        p.smoke_test()?;
        Ok(p)
    }

    fn with_facts(
        m: InferenceModel,
        info: &ExportInfo,
        fixed_batch: Option<usize>,
    ) -> TractResult<InferenceModel> {
        let n: TDim = match fixed_batch {
            Some(b) => b.to_dim(),
            None => m.sym("N").into(),
        };
        match &info.input {
            InputKind::Image { size, .. } => {
                let s = *size as usize;
                let m = m.with_input_fact(
                    0,
                    InferenceFact::dt_shape(
                        f32::datum_type(),
                        tvec![n.clone(), 1usize.to_dim(), s.to_dim(), s.to_dim()],
                    ),
                )?;
                match info.wide {
                    None => Ok(m),
                    Some(w) => m.with_input_fact(
                        1,
                        InferenceFact::dt_shape(f32::datum_type(), tvec![n, w.dim().to_dim()]),
                    ),
                }
            }
            InputKind::Strokes => {
                let t: TDim = m.sym("T").into();
                m.with_input_fact(
                    0,
                    InferenceFact::dt_shape(
                        f32::datum_type(),
                        tvec![n.clone(), t, 3usize.to_dim()],
                    ),
                )?
                .with_input_fact(1, InferenceFact::dt_shape(i64::datum_type(), tvec![n]))
            }
        }
    }

    fn smoke_test(&self) -> Result<(), PredictError> {
        let out = match &self.info.input {
            InputKind::Image { size, .. } => {
                self.predict_pixels(&[vec![0.0; (*size * *size) as usize]])
            }
            InputKind::Strokes => self.predict_strokes(&[StrokeFeatures {
                dx: vec![0.0],
                dy: vec![0.0],
                pen: vec![1.0],
                len: 1,
                truncated: false,
            }]),
        };
        out.map(|_| ()).map_err(|e| PredictError::Load {
            path: self.info.model_path().display().to_string(),
            what: format!("a blank input does not run: {e}"),
        })
    }

    pub fn info(&self) -> &ExportInfo {
        &self.info
    }
    pub fn version(&self) -> Option<u64> {
        self.info.version
    }
    pub fn labels(&self) -> &[String] {
        &self.info.labels
    }
    pub fn n_classes(&self) -> usize {
        self.info.labels.len()
    }
    pub fn input(&self) -> &InputKind {
        &self.info.input
    }
    /// The input kind and the `wide` layout: what requests are parsed against.
    pub fn inputs(&self) -> &Inputs {
        &self.inputs
    }
    /// The `wide` input's layout (wide & deep models only).
    pub fn wide(&self) -> Option<&WideSpec> {
        self.info.wide.as_ref()
    }
    /// The engine that runs the model.
    pub fn runtime_name(&self) -> &'static str {
        if self.ort.is_some() {
            "onnxruntime"
        } else {
            "tract"
        }
    }

    pub fn batch(&self) -> Batch {
        self.batch
    }
    /// Nodes of the optimised plan.
    pub fn plan_nodes(&self) -> usize {
        self.nodes
    }
    /// Operators of the optimised plan and how often each appears.
    pub fn plan_ops(&self) -> Vec<(String, usize)> {
        let mut ops = std::collections::BTreeMap::<String, usize>::new();
        for n in self.plan.model().nodes() {
            *ops.entry(n.op.name().to_string()).or_default() += 1;
        }
        ops.into_iter().collect()
    }

    /// The export's preprocessing of one drawing (the training path: simplify raw ink,
    /// rasterise, stroke features).
    pub fn preprocess(&self, ink: &Ink) -> Result<Preprocessed, FeatureError> {
        preprocess(ink, &self.info.features)
    }

    /// Predicts preprocessed drawings (image or strokes, whichever the model reads; a wide &
    /// deep model gets all-zero `wide` vectors: `Preprocessed` holds no metadata).
    pub fn predict_preprocessed(
        &self,
        items: &[Preprocessed],
    ) -> Result<Probabilities, PredictError> {
        match &self.info.input {
            InputKind::Image { .. } => {
                let images: Vec<&[u8]> = items.iter().map(|p| &p.image[..]).collect();
                self.predict_image_slices(&images)
            }
            InputKind::Strokes => {
                let seqs = items
                    .iter()
                    .enumerate()
                    .map(|(index, p)| {
                        p.strokes.clone().ok_or_else(|| PredictError::BadInput {
                            index,
                            what: "no stroke features".into(),
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                self.predict_strokes(&seqs)
            }
        }
    }

    /// Predicts model inputs as the server makes them: all images or all stroke sequences. For a
    /// wide & deep model, `Pixels` rows get the all-zero `wide` vector; other models refuse
    /// `PixelsWide` rows.
    pub fn predict_inputs(&self, inputs: Vec<ModelInput>) -> Result<Probabilities, PredictError> {
        let mut pixels = Vec::new();
        let mut wide: Vec<Option<Vec<f32>>> = Vec::new();
        let mut seqs = Vec::new();
        for i in inputs {
            match i {
                ModelInput::Pixels(v) => {
                    pixels.push(v);
                    wide.push(None);
                }
                ModelInput::PixelsWide { pixels: p, wide: w } => {
                    pixels.push(p);
                    wide.push(Some(w));
                }
                ModelInput::Sequence(s) => seqs.push(s),
            }
        }
        match (pixels.is_empty(), seqs.is_empty()) {
            (_, true) if wide.iter().all(Option::is_none) => self.predict_pixels(&pixels),
            (_, true) => {
                let Some(dim) = self.wide_dim() else {
                    return Err(PredictError::WrongInput {
                        expected: self.input_description(),
                        got: "images with wide vectors",
                    });
                };
                let wide: Vec<Vec<f32>> = wide
                    .into_iter()
                    .map(|w| w.unwrap_or_else(|| vec![0.0; dim]))
                    .collect();
                self.predict_pixels_wide(&pixels, &wide)
            }
            (true, false) => self.predict_strokes(&seqs),
            (false, false) => Err(PredictError::Run(
                "images and stroke sequences cannot run in one call".into(),
            )),
        }
    }

    fn wide_dim(&self) -> Option<usize> {
        self.info.wide.map(|w| w.dim())
    }

    /// Predicts grey images (`size*size` bytes, 0..=255, as `features::preprocess` makes them).
    pub fn predict_images(&self, images: &[Vec<u8>]) -> Result<Probabilities, PredictError> {
        let v: Vec<&[u8]> = images.iter().map(|i| &i[..]).collect();
        self.predict_image_slices(&v)
    }

    fn predict_image_slices(&self, images: &[&[u8]]) -> Result<Probabilities, PredictError> {
        let px: Vec<Vec<f32>> = images
            .iter()
            .map(|i| quickdraw_data::features::model_pixels(i).collect())
            .collect();
        self.predict_pixels(&px)
    }

    /// Predicts model-input images: `size*size` floats each, already `pixel * PIXEL_SCALE`. A
    /// wide & deep model gets all-zero `wide` vectors (no metadata).
    pub fn predict_pixels(&self, images: &[Vec<f32>]) -> Result<Probabilities, PredictError> {
        self.run_images(images, None)
    }

    /// Predicts images with their `wide` vectors (wide & deep models): `wide[i]` is image `i`'s
    /// metadata vector of `W` floats (`quickdraw_data::wide::WideSpec::vector`).
    pub fn predict_pixels_wide(
        &self,
        images: &[Vec<f32>],
        wide: &[Vec<f32>],
    ) -> Result<Probabilities, PredictError> {
        if self.info.wide.is_none() {
            return Err(PredictError::WrongInput {
                expected: self.input_description(),
                got: "images with wide vectors",
            });
        }
        if wide.len() != images.len() {
            return Err(PredictError::Run(format!(
                "{} wide vectors for {} images",
                wide.len(),
                images.len()
            )));
        }
        self.run_images(images, Some(wide))
    }

    /// Runs images; the wide & deep model's second input is `wide` or, without it, zeros.
    fn run_images(
        &self,
        images: &[Vec<f32>],
        wide: Option<&[Vec<f32>]>,
    ) -> Result<Probabilities, PredictError> {
        let InputKind::Image { size, key } = &self.info.input else {
            return Err(PredictError::WrongInput {
                expected: "strokes and lengths".into(),
                got: "images",
            });
        };
        let s = *size as usize;
        for (index, im) in images.iter().enumerate() {
            if im.len() != s * s {
                return Err(PredictError::BadInput {
                    index,
                    what: format!("{} values, {key} needs {}", im.len(), s * s),
                });
            }
        }
        let dim = self.wide_dim();
        if let (Some(w), Some(rows)) = (dim, wide) {
            for (index, r) in rows.iter().enumerate() {
                if r.len() != w {
                    return Err(PredictError::BadInput {
                        index,
                        what: format!(
                            "{} values, {} needs {w} (the metadata vector)",
                            r.len(),
                            signature::WIDE
                        ),
                    });
                }
            }
        }
        self.run_chunked(images.len(), |rows: std::ops::Range<usize>, n: usize| {
            let mut data = vec![0f32; n * s * s];
            for (j, i) in rows.clone().enumerate() {
                data[j * s * s..(j + 1) * s * s].copy_from_slice(&images[i]);
            }
            let t = Tensor::from_shape(&[n, 1, s, s], &data)
                .map_err(|e| PredictError::Run(e.to_string()))?;
            let Some(w) = dim else {
                return Ok(tvec![t.into_tvalue()]);
            };
            // Rows without metadata (and a fixed batch's padding) are all zeros.
            let mut wd = vec![0f32; n * w];
            if let Some(wide) = wide {
                for (j, i) in rows.enumerate() {
                    wd[j * w..(j + 1) * w].copy_from_slice(&wide[i]);
                }
            }
            let wt =
                Tensor::from_shape(&[n, w], &wd).map_err(|e| PredictError::Run(e.to_string()))?;
            Ok(tvec![t.into_tvalue(), wt.into_tvalue()])
        })
    }

    /// Predicts stroke sequences (`strokes [N,T,3]` zero-padded to the longest, `lengths [N]`).
    /// An empty sequence is fed as one zero step.
    pub fn predict_strokes(&self, seqs: &[StrokeFeatures]) -> Result<Probabilities, PredictError> {
        if self.info.input != InputKind::Strokes {
            return Err(PredictError::WrongInput {
                expected: self.input_description(),
                got: "stroke sequences",
            });
        }
        for (index, s) in seqs.iter().enumerate() {
            if s.dx.len() != s.len || s.dy.len() != s.len || s.pen.len() != s.len {
                return Err(PredictError::BadInput {
                    index,
                    what: "dx, dy and pen must all have len values".into(),
                });
            }
        }
        self.run_chunked(seqs.len(), |rows, n| {
            let rows: Vec<&StrokeFeatures> = seqs[rows].iter().collect();
            let t = rows.iter().map(|s| s.len).max().unwrap_or(0).max(1);
            let mut data = vec![0f32; n * t * 3];
            let mut lengths = vec![1i64; n];
            for (j, s) in rows.iter().enumerate() {
                for k in 0..s.len {
                    let o = (j * t + k) * 3;
                    data[o] = s.dx[k];
                    data[o + 1] = s.dy[k];
                    data[o + 2] = s.pen[k];
                }
                lengths[j] = s.len.max(1) as i64;
            }
            let st = Tensor::from_shape(&[n, t, 3], &data)
                .map_err(|e| PredictError::Run(e.to_string()))?;
            let lt =
                Tensor::from_shape(&[n], &lengths).map_err(|e| PredictError::Run(e.to_string()))?;
            Ok(tvec![st.into_tvalue(), lt.into_tvalue()])
        })
    }

    /// What the model's input looks like, for error messages.
    pub fn input_description(&self) -> String {
        match &self.info.input {
            InputKind::Image { key, size } => match self.wide_dim() {
                None => format!("{key}: DT_FLOAT [-1, 1, {size}, {size}] (pixel / 255)"),
                Some(w) => format!(
                    "{key}: DT_FLOAT [-1, 1, {size}, {size}] (pixel / 255) and {}: DT_FLOAT [-1, {w}] \
                     (the metadata vector; all zeros: no metadata)",
                    signature::WIDE
                ),
            },
            InputKind::Strokes => {
                "strokes: DT_FLOAT [-1, -1, 3] (dx, dy, pen) and lengths: DT_INT64 [-1]".into()
            }
        }
    }

    /// Runs `rows` inputs: one by one through the one-row plan when there is one, else in one go
    /// for a symbolic batch, else in padded fixed-size chunks.
    fn run_chunked<F>(&self, rows: usize, make: F) -> Result<Probabilities, PredictError>
    where
        F: Fn(std::ops::Range<usize>, usize) -> Result<TVec<TValue>, PredictError>,
    {
        let c = self.n_classes();
        let mut out = Probabilities {
            n_classes: c,
            probabilities: Vec::new(),
            logits: Vec::new(),
            classes: Vec::new(),
        };
        if rows == 0 {
            return Ok(out);
        }
        let chunk = match self.batch {
            // tract runs the one-row plan ~3x faster per row than the symbolic one on a batch
            // (lecture CNN: 1.1 ms vs 3.4 ms per image, `examples/latency.rs`), so rows go one
            // by one through it.
            // ONNX Runtime takes the batch as it comes.
            Batch::Any if self.ort.is_some() => rows,
            Batch::Any if self.plan_one.is_some() => 1,
            Batch::Any => rows,
            Batch::Fixed(b) => b,
        };
        let mut start = 0;
        while start < rows {
            let end = (start + chunk).min(rows);
            let n = match self.batch {
                Batch::Any => end - start,
                Batch::Fixed(b) => b,
            };
            let inputs = make(start..end, n)?;
            let res = self.run_once(inputs, n)?;
            out.extend(res, end - start);
            start = end;
        }
        Ok(out)
    }

    fn run_once(&self, inputs: TVec<TValue>, n: usize) -> Result<Probabilities, PredictError> {
        let outs = match &self.ort {
            Some(ort) => ort.run(&inputs).map_err(PredictError::Run)?,
            None => {
                let plan = match (&self.plan_one, n) {
                    (Some(one), 1) => one,
                    _ => &self.plan,
                };
                plan.run(inputs)
                    .map_err(|e| PredictError::Run(format!("{e:#}")))?
                    .iter()
                    .map(PlainTensor::from_tract)
                    .collect::<Result<_, _>>()
                    .map_err(|e| PredictError::Run(format!("outputs: {e}")))?
            }
        };
        self.collect_outputs(n, outs)
    }

    /// Checks the engine's outputs (logits, probabilities, and classes if the graph has it, in
    /// that order) against the signature and collects them.
    fn collect_outputs(
        &self,
        n: usize,
        outs: Vec<PlainTensor>,
    ) -> Result<Probabilities, PredictError> {
        let c = self.n_classes();
        let get = |ix: usize, what: &str| {
            outs.get(ix)
                .ok_or_else(|| PredictError::Run(format!("output {what} is missing")))
        };
        let floats = |ix: usize, what: &str| -> Result<Vec<f32>, PredictError> {
            let PlainTensor::F32(shape, v) = get(ix, what)? else {
                return Err(PredictError::Run(format!("output {what} is not float")));
            };
            if shape[..] != [n, c] {
                return Err(PredictError::Run(format!(
                    "output {what} has shape {shape:?}, the signature says [{n}, {c}]"
                )));
            }
            Ok(v.clone())
        };
        let logits = floats(0, signature::LOGITS)?;
        let probabilities = floats(1, signature::PROBABILITIES)?;
        let classes = if self.has_classes_output {
            let v: Vec<i64> = match get(2, signature::CLASSES)? {
                PlainTensor::I64(_, v) => v.clone(),
                PlainTensor::F32(_, v) => v.iter().map(|&x| x as i64).collect(),
            };
            if v.len() != n {
                return Err(PredictError::Run(format!(
                    "output classes has {} values for {n} inputs",
                    v.len()
                )));
            }
            v
        } else {
            probabilities
                .chunks_exact(c)
                .map(|r| {
                    r.iter()
                        .enumerate()
                        .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
                        .map_or(0, |m| m.0 as i64)
                })
                .collect()
        };
        Ok(Probabilities {
            n_classes: c,
            probabilities,
            logits,
            classes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    #[test]
    fn demo_model_is_hand_checkable() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = testing::write_demo_export(tmp.path(), 1, 8).unwrap();
        let p = Predictor::load(&dir).unwrap();
        assert_eq!(p.batch(), Batch::Any);
        assert_eq!(p.labels(), &["blank", "left", "right"]);
        let blank = vec![0u8; 64];
        let mut left = vec![0u8; 64];
        // Fill the whole left half: logit_left = 16 * 32 / 32 = 16.
        for y in 0..8 {
            for x in 0..4 {
                left[y * 8 + x] = 255;
            }
        }
        let mut right = vec![0u8; 64];
        right[7] = 255; // one right pixel: logit_right = 16 / 32 = 0.5
        let out = p.predict_images(&[blank, left, right]).unwrap();
        assert_eq!(out.classes, vec![0, 1, 2]);
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
        assert!(
            close(out.logits_row(0), &[0.25, 0.0, 0.0]),
            "{:?}",
            out.logits_row(0)
        );
        assert!(
            close(out.logits_row(1), &[0.25, 16.0, 0.0]),
            "{:?}",
            out.logits_row(1)
        );
        assert!(
            close(out.logits_row(2), &[0.25, 0.0, 0.5]),
            "{:?}",
            out.logits_row(2)
        );
        let e = 0.25f32.exp();
        let z = e + 2.0;
        assert!(
            close(out.row(0), &[e / z, 1.0 / z, 1.0 / z]),
            "{:?}",
            out.row(0)
        );
        assert_eq!(out.top_k(1, 2)[0].0, 1);
        assert!(p.predict_images(&[]).unwrap().is_empty());
        let err = p.predict_pixels(&[vec![0.0; 10]]).unwrap_err();
        assert!(err.to_string().contains("img_8 needs 64"), "{err}");
    }

    #[test]
    fn wide_model_adds_the_linear_part_of_the_metadata() {
        use quickdraw_data::wide::Metadata;
        let tmp = tempfile::tempdir().unwrap();
        let dir = testing::write_wide_demo_export(tmp.path(), 1, 8).unwrap();
        let p = Predictor::load(&dir).unwrap();
        let spec = testing::demo_wide_spec();
        assert_eq!(p.wide(), Some(&spec));
        assert_eq!(p.inputs().wide_dim(), Some(27));
        assert!(p.input_description().contains("wide: DT_FLOAT [-1, 27]"));
        let left: Vec<f32> = (0..64).map(|i| if i % 8 < 4 { 1.0 } else { 0.0 }).collect();
        let blank = vec![0.0; 64];
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);

        // No metadata: the demo image model's logits; the same as an explicit all-zero vector.
        let plain = p.predict_pixels(&[left.clone(), blank.clone()]).unwrap();
        assert!(close(plain.logits_row(0), &[0.25, 16.0, 0.0]));
        let zeros = vec![vec![0.0; 27]; 2];
        let zero = p
            .predict_pixels_wide(&[left.clone(), blank.clone()], &zeros)
            .unwrap();
        assert_eq!(plain, zero);

        // Country (+1 left), recognized (+2 right), 2 strokes (bucket 1: +1 blank), 2.5 s
        // (bucket 2: +0.75 right); then recognized=false (+1 blank) alone.
        let us = Metadata {
            countrycode: Some("US".into()),
            recognized: Some(true),
            stroke_count: Some(2),
            duration_ms: Some(2500),
        };
        let unrecognized = Metadata {
            recognized: Some(false),
            ..Metadata::default()
        };
        let wide = vec![spec.vector(&us), spec.vector(&unrecognized)];
        let out = p
            .predict_pixels_wide(&[left.clone(), blank.clone()], &wide)
            .unwrap();
        assert!(
            close(out.logits_row(0), &[1.25, 17.0, 2.75]),
            "{:?}",
            out.logits_row(0)
        );
        assert!(
            close(out.logits_row(1), &[1.25, 0.0, 0.0]),
            "{:?}",
            out.logits_row(1)
        );

        // Server-made inputs: rows without metadata get zeros, in one call with the others.
        let mixed = p
            .predict_inputs(vec![
                ModelInput::PixelsWide {
                    pixels: left.clone(),
                    wide: wide[0].clone(),
                },
                ModelInput::Pixels(left.clone()),
            ])
            .unwrap();
        assert_eq!(mixed.logits_row(0), out.logits_row(0));
        assert_eq!(mixed.logits_row(1), plain.logits_row(0));

        // A vector of the wrong length, or a count that does not match, is refused.
        let e = p
            .predict_pixels_wide(std::slice::from_ref(&left), &[vec![0.0; 26]])
            .unwrap_err();
        assert!(
            e.to_string().contains("input 0: 26 values, wide needs 27"),
            "{e}"
        );
        let e = p
            .predict_pixels_wide(std::slice::from_ref(&left), &[])
            .unwrap_err();
        assert!(e.to_string().contains("0 wide vectors for 1 images"), "{e}");

        // A model without a wide input refuses wide vectors.
        let demo = Predictor::load(&testing::write_demo_export(tmp.path(), 2, 8).unwrap()).unwrap();
        assert!(demo.wide().is_none());
        let e = demo
            .predict_pixels_wide(std::slice::from_ref(&left), &[vec![0.0; 27]])
            .unwrap_err();
        assert!(
            e.to_string().contains("not images with wide vectors"),
            "{e}"
        );
        let e = demo
            .predict_inputs(vec![ModelInput::PixelsWide {
                pixels: left,
                wide: vec![0.0; 27],
            }])
            .unwrap_err();
        assert!(e.to_string().contains("this model reads img_8"), "{e}");
    }

    #[test]
    fn stroke_model_sums_sequences() {
        let tmp = tempfile::tempdir().unwrap();
        // class0 = sum dx, class1 = length.
        let w = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0];
        let dir = testing::write_stroke_export(tmp.path(), 2, &w, &[0.0, 0.0]).unwrap();
        let p = Predictor::load(&dir).unwrap();
        let seq = |dx: Vec<f32>| StrokeFeatures {
            dy: vec![0.0; dx.len()],
            pen: vec![0.0; dx.len()],
            len: dx.len(),
            dx,
            truncated: false,
        };
        let out = p
            .predict_strokes(&[seq(vec![5.0, 4.0]), seq(vec![0.5])])
            .unwrap();
        assert_eq!(out.logits_row(0), &[9.0, 2.0]);
        assert_eq!(out.logits_row(1), &[0.5, 1.0]);
        assert_eq!(out.classes, vec![0, 1]);
        assert!(p.predict_images(&[vec![0; 4]]).is_err());
    }

    #[test]
    fn broken_exports_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = testing::write_demo_export(tmp.path(), 1, 8).unwrap();
        std::fs::write(dir.join("model.onnx"), b"not a protobuf").unwrap();
        let err = Predictor::load(&dir).unwrap_err();
        assert!(
            err.to_string().contains("cannot load the ONNX model"),
            "{err}"
        );
        // A model whose outputs disagree with the signature's class count.
        let (w, b) = testing::demo_weights(8);
        let onnx = testing::linear_image_model(8, &w[..2 * 64], &b[..2]);
        std::fs::write(dir.join("model.onnx"), onnx).unwrap();
        let err = Predictor::load(&dir).unwrap_err();
        assert!(err.to_string().contains("signature says"), "{err}");
    }
}
