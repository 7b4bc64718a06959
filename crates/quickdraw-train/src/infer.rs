//! Inference API: load a trained model from a model dir and a checkpoint, run it on images
//! `[B, 1, S, S]` or stroke features, get class probabilities. Used by `predict`, `evaluate`,
//! and later by export and the server.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use quickdraw_data::features::FeatureSpec;
use quickdraw_data::strokes::StrokeFeatures;
use quickdraw_data::wide::{Metadata, WideSpec};

use crate::device::{DeviceChoice, inference_device};
use crate::error::{Result, TrainError};
use crate::model::{Model, ModelInput, ModelKind, log_probs};
use crate::modeldir::{self, CheckpointInfo, CheckpointSel, TrainConfig};
use crate::pipeline::{Batch, Decoded, StrokeBatch};

/// A model loaded for inference (validation mode: no dropout, no autodiff).
pub struct TrainedModel {
    pub model_dir: PathBuf,
    pub config: TrainConfig,
    pub checkpoint: CheckpointInfo,
    model: Model,
    device: Device,
}

impl TrainedModel {
    /// Loads `config.json` and the selected checkpoint of `model_dir` onto `device`.
    pub fn load(model_dir: &Path, sel: CheckpointSel, device: DeviceChoice) -> Result<Self> {
        if !model_dir.join(modeldir::CONFIG_FILE).is_file() {
            return Err(TrainError::ModelDir {
                dir: model_dir.to_path_buf(),
                what: "not a model directory (no config.json); train one with `quickdraw train --model-dir ...`".into(),
            });
        }
        let config = TrainConfig::load(model_dir)?;
        let checkpoint = modeldir::select_checkpoint(model_dir, sel)?;
        let device = inference_device(device)?;
        let model = modeldir::load_model(&config.model, &checkpoint, &device)?.valid();
        Ok(TrainedModel {
            model_dir: model_dir.to_path_buf(),
            config,
            checkpoint,
            model,
            device,
        })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn kind(&self) -> ModelKind {
        self.config.model.kind
    }
    /// Global step of the loaded checkpoint.
    pub fn step(&self) -> u64 {
        self.checkpoint.state.step
    }
    /// Class names (label = index).
    pub fn labels(&self) -> &[String] {
        &self.config.classes
    }
    pub fn n_classes(&self) -> usize {
        self.config.classes.len()
    }
    /// How inputs must be preprocessed (`features::preprocess` with this spec).
    pub fn feature_spec(&self) -> &FeatureSpec {
        &self.config.features
    }
    /// Input image side.
    pub fn image_size(&self) -> usize {
        self.config.model.image_size
    }
    /// The metadata vector's layout (wide & deep models only).
    pub fn wide_spec(&self) -> Option<WideSpec> {
        self.config.model.wide.filter(|_| self.kind().uses_wide())
    }
    /// The metadata vector of `m`, `None` when the model has no wide part.
    pub fn wide_vector(&self, m: &Metadata) -> Option<Vec<f32>> {
        self.wide_spec().map(|w| w.vector(m))
    }

    fn probs(&self, input: ModelInput) -> Vec<f32> {
        log_probs(&self.model, input)
            .into_iter()
            .map(f32::exp)
            .collect()
    }

    /// Probabilities `[n, n_classes]` for `n` images given as `[n, 1, S, S]` floats in [0, 1]
    /// (grey value * [`PIXEL_SCALE`](quickdraw_data::features::PIXEL_SCALE)). A wide & deep
    /// model sees no metadata (its documented default: all-zero metadata vectors).
    pub fn predict_images(&self, images: &[f32], n: usize) -> Result<Vec<f32>> {
        self.predict_images_wide(images, None, n)
    }

    /// [`TrainedModel::predict_images`] with the `[n, W]` metadata vectors of a wide & deep model
    /// (`None`: no metadata).
    pub fn predict_images_wide(
        &self,
        images: &[f32],
        wide: Option<&[f32]>,
        n: usize,
    ) -> Result<Vec<f32>> {
        let s = self.image_size();
        if self.kind().uses_strokes() {
            return Err(TrainError::Config(
                "this model reads stroke features, not images".into(),
            ));
        }
        if images.len() != n * s * s {
            return Err(TrainError::Config(format!(
                "{} floats for {n} images of {s}x{s}",
                images.len()
            )));
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let x =
            Tensor::<4>::from_data(TensorData::new(images.to_vec(), [n, 1, s, s]), &self.device);
        let Some(spec) = self.wide_spec() else {
            if wide.is_some() {
                return Err(TrainError::Config(format!(
                    "this {} model has no wide part: it takes no metadata vectors",
                    self.kind()
                )));
            }
            return Ok(self.probs(ModelInput::Images(x)));
        };
        let dim = spec.dim();
        let wide = match wide {
            Some(w) if w.len() == n * dim => w.to_vec(),
            Some(w) => {
                return Err(TrainError::Config(format!(
                    "{} metadata values for {n} examples of {dim}",
                    w.len()
                )));
            }
            None => vec![0.0; n * dim],
        };
        let wide = Tensor::<2>::from_data(TensorData::new(wide, [n, dim]), &self.device);
        Ok(self.probs(ModelInput::ImagesWide { images: x, wide }))
    }

    /// Probabilities for grey images as bytes (`size * size` each, 0..255).
    pub fn predict_images_u8(&self, images: &[&[u8]]) -> Result<Vec<f32>> {
        let floats: Vec<f32> = images
            .iter()
            .flat_map(|im| quickdraw_data::features::model_pixels(im))
            .collect();
        self.predict_images(&floats, images.len())
    }

    /// Probabilities for stroke features (sequence models).
    pub fn predict_strokes(&self, strokes: &[&StrokeFeatures]) -> Result<Vec<f32>> {
        if !self.kind().uses_strokes() {
            return Err(TrainError::Config(
                "this model reads images, not stroke features".into(),
            ));
        }
        if strokes.is_empty() {
            return Ok(Vec::new());
        }
        let sb = StrokeBatch::from_features(strokes);
        let (b, t) = (strokes.len(), sb.steps);
        Ok(self.probs(ModelInput::Strokes {
            forward: Tensor::from_data(TensorData::new(sb.forward, [b, t, 3]), &self.device),
            backward: Tensor::from_data(TensorData::new(sb.backward, [b, t, 3]), &self.device),
            mask: Tensor::from_data(TensorData::new(sb.mask, [b, t]), &self.device),
        }))
    }

    /// Probabilities for decoded examples (whichever input the model reads).
    pub fn predict_decoded(&self, items: &[Decoded]) -> Result<Vec<f32>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let batch = Batch::from_decoded(items, self.image_size(), Default::default());
        self.predict_batch(&batch)
    }

    /// Probabilities for a pipeline batch.
    pub fn predict_batch(&self, batch: &Batch) -> Result<Vec<f32>> {
        Ok(self.probs(ModelInput::from_batch(batch, self.kind(), &self.device)?))
    }
}
