//! Memory estimate of one training step, and the batch-size limit it implies on this machine
//! (`--batch-size 1000000` must be refused with a message, not grow until the OOM killer comes).

use crate::error::{Result, TrainError};
use crate::model::{LECTURE_DENSE, ModelConfig, ModelKind};

/// Bytes of one f32.
const F32: u64 = 4;
/// Activations are kept for the backward pass and each gets a gradient of the same size; the
/// element-wise steps (ReLU, dropout masks, softmax) add temporaries: 3x the forward outputs.
const TRAIN_FACTOR: u64 = 3;
/// Share of the available memory a training run may plan to use.
const USABLE_SHARE: f64 = 0.8;

/// Estimated bytes one example costs during a training step with `prefetch` batches queued by
/// the input pipeline: the decoded input (queued batches, the batch and its tensor copy) plus
/// the model's activations, gradients and convolution scratch (im2col).
pub fn bytes_per_example(model: &ModelConfig, seq_len: usize, prefetch: usize) -> u64 {
    let s = model.image_size as u64;
    let c = model.n_classes as u64;
    let (input, activations) = match model.kind {
        ModelKind::Baseline => (s * s, c),
        ModelKind::Linear => (s * s, c),
        ModelKind::Dnn => {
            let hidden: u64 = model.hidden.iter().flatten().map(|&h| h as u64).sum();
            (s * s, 2 * hidden + c)
        }
        ModelKind::Cnn | ModelKind::WideDeep => {
            let (mut side, mut channels, mut floats) = (s, 1u64, 0u64);
            for l in model.conv.iter().flatten() {
                let (k, f) = (l.kernel as u64, l.filters as u64);
                // conv output and its activation, plus the im2col matrix of the block
                floats += 2 * side * side * f + k * k * channels * side * side;
                side /= l.pool as u64;
                channels = f;
                floats += side * side * f; // pooled output
            }
            floats += 2 * model.dense.unwrap_or(LECTURE_DENSE) as u64 + c;
            let wide = model.wide.map_or(0, |w| w.dim() as u64 + c);
            (s * s + wide, floats + wide)
        }
        ModelKind::Rnn => {
            let h = model.rnn_units.unwrap_or(crate::model::DEFAULT_RNN_UNITS) as u64;
            let t = seq_len.max(1) as u64;
            // two directions x (4 gates + cell + hidden state) per time step
            (2 * 3 * t + t, 2 * t * 6 * h + 2 * h + c)
        }
    };
    F32 * (input * (prefetch as u64 + 2) + TRAIN_FACTOR * activations)
}

/// Memory the OS says is available to a new allocation (Linux `MemAvailable`), if known.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Refuses a batch size whose estimated memory exceeds [`USABLE_SHARE`] of `available` bytes,
/// naming the estimate and the largest batch size that fits.
pub fn check_batch_size(
    model: &ModelConfig,
    batch_size: usize,
    seq_len: usize,
    prefetch: usize,
    available: u64,
) -> Result<()> {
    let per = bytes_per_example(model, seq_len, prefetch);
    let need = per.saturating_mul(batch_size as u64);
    let usable = (available as f64 * USABLE_SHARE) as u64;
    if need <= usable {
        return Ok(());
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    Err(TrainError::Config(format!(
        "--batch-size {batch_size} needs about {:.1} GiB for the {} model (an estimated {:.2} MiB per example: inputs, activations, gradients), more than {:.0}% of the {:.1} GiB of memory available; the largest batch size that fits is about {}",
        gib(need),
        model.kind,
        per as f64 / (1u64 << 20) as f64,
        USABLE_SHARE * 100.0,
        gib(available),
        (usable / per.max(1)).max(1)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lecture_cnn_estimate_by_hand() {
        let m = ModelConfig::new(ModelKind::Cnn, 10, 64);
        // block 1: 2*64*64*32 + 10*10*1*64*64 + 16*16*32; block 2: 2*16*16*64 + 5*5*32*16*16
        // + 4*4*64; dense 2*256 + 10.
        let act = 262_144 + 409_600 + 8_192 + 32_768 + 204_800 + 1_024 + 522;
        assert_eq!(bytes_per_example(&m, 0, 4), 4 * (4096 * 6 + 3 * act));
    }

    #[test]
    fn a_million_examples_are_refused_with_the_limit() {
        let m = ModelConfig::new(ModelKind::Cnn, 10, 64);
        let avail = 16u64 << 30;
        let err = check_batch_size(&m, 1_000_000, 0, 4, avail)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--batch-size 1000000 needs about"), "{err}");
        let limit: u64 = err.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(limit > 64 && limit < 1_000_000, "{err}");
        check_batch_size(&m, limit as usize, 0, 4, avail).unwrap();
        assert!(check_batch_size(&m, limit as usize + 1, 0, 4, avail).is_err());
        check_batch_size(&m, 64, 0, 4, avail).unwrap();
    }

    #[test]
    fn meminfo_is_parsed() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(parse_mem_available(text), Some(20_000_000 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
    }
}
