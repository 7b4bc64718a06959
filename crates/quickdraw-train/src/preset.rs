//! `--preset quickdraw28|quickdraw64`: the recommended CNN recipes for 28x28 bitmaps and 64x64
//! rasters, as defaults that explicit flags override. How they were chosen, and what each
//! ingredient gives over the lecture's CNN at the same number of examples seen, is measured in
//! docs/benchmarks.md ("A better recipe"): a CNN suited to the input size (for 28x28, three 3x3
//! blocks of 64-128-256 filters with batch normalization), Adam at 2e-3 with warm-up and a
//! cosine decay, label smoothing 0.1. Augmentation is left out: at the measured budgets (1,000
//! steps) it did not help either preset (`--augment light` adds it).

use std::fmt;
use std::str::FromStr;

use crate::augment::Augment;
use crate::model::ConvLayer;
use crate::modeldir::OptimizerKind;
use crate::schedule::ScheduleKind;

/// `--preset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    QuickDraw28,
    QuickDraw64,
}

/// The flags a preset sets (each one only where the command line leaves it out).
#[derive(Debug, Clone, PartialEq)]
pub struct PresetValues {
    pub conv: Vec<ConvLayer>,
    /// `--batch-norm` after each block.
    pub batch_norm: bool,
    pub dense: usize,
    pub dropout: f64,
    pub optimizer: OptimizerKind,
    pub learning_rate: f64,
    pub lr_schedule: ScheduleKind,
    pub warmup_steps: u64,
    pub label_smoothing: f64,
    pub augment: Augment,
    /// The raster side the preset is meant for (a warning names a mismatch).
    pub image_size: usize,
}

const fn conv(kernel: usize, pool: usize, filters: usize) -> ConvLayer {
    ConvLayer {
        kernel,
        pool,
        filters,
    }
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::QuickDraw28 => "quickdraw28",
            Preset::QuickDraw64 => "quickdraw64",
        }
    }

    pub fn values(self) -> PresetValues {
        // The same training recipe for both sizes; the network fits the input.
        let (conv, batch_norm, image_size) = match self {
            Preset::QuickDraw28 => (
                vec![conv(3, 2, 64), conv(3, 2, 128), conv(3, 2, 256)],
                true,
                28,
            ),
            Preset::QuickDraw64 => (
                vec![conv(5, 4, 32), conv(3, 2, 64), conv(3, 2, 128)],
                false,
                64,
            ),
        };
        PresetValues {
            conv,
            batch_norm,
            dense: 256,
            dropout: 0.4,
            optimizer: OptimizerKind::Adam,
            learning_rate: 2e-3,
            lr_schedule: ScheduleKind::Cosine,
            warmup_steps: 100,
            label_smoothing: 0.1,
            augment: Augment::None,
            image_size,
        }
    }
}

impl FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "quickdraw28" => Ok(Preset::QuickDraw28),
            "quickdraw64" => Ok(Preset::QuickDraw64),
            _ => Err(format!(
                "unknown preset {s:?} (expected quickdraw28 or quickdraw64)"
            )),
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelConfig, ModelKind};

    #[test]
    fn presets_are_valid_cnns_at_their_size() {
        for p in [Preset::QuickDraw28, Preset::QuickDraw64] {
            let v = p.values();
            let mut m = ModelConfig::new(ModelKind::Cnn, 10, v.image_size);
            m.conv = Some(v.conv.clone());
            m.dense = Some(v.dense);
            m.dropout = Some(v.dropout);
            m.batch_norm = v.batch_norm;
            m.validate().unwrap();
            assert_eq!(p.name().parse::<Preset>(), Ok(p));
        }
    }
}
