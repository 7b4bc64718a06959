//! `quickdraw predict`: top-k classes for drawings in TFRecord shards or in any QuickDraw input
//! format (NDJSON, binary, numpy_bitmap, optionally .gz), preprocessed exactly as the model's
//! training data (the FeatureSpec saved in the model dir).

use std::path::{Path, PathBuf};

use anyhow::Context;
use quickdraw_data::example::Example;
use quickdraw_data::features::{self, decode_example, decode_image, preprocess};
use quickdraw_data::ingest::{DrawingReader, LabelFrom};
use quickdraw_data::signature::top_k;
use quickdraw_data::tfrecord::{TfRecordReader, is_tfrecord};
use quickdraw_data::wide::Metadata;
use quickdraw_train::pipeline::Decoded;
use quickdraw_train::{CheckpointSel, TrainedModel};
use serde::Serialize;

use super::{Ctx, expand_globs};

#[derive(Debug, clap::Args)]
pub struct PredictArgs {
    /// Model directory written by `quickdraw train`.
    #[arg(long, alias = "job-dir")]
    pub model_dir: PathBuf,
    /// TFRecord shards or QuickDraw files (.ndjson, .bin, .npy, optionally .gz); quoted globs work.
    #[arg(required = true)]
    pub inputs: Vec<String>,
    /// Checkpoint: best, latest or a step number.
    #[arg(long, default_value = "latest")]
    pub checkpoint: CheckpointSel,
    /// Classes listed per drawing.
    #[arg(long, short = 'k', default_value_t = 3)]
    pub top_k: usize,
    /// Stop after this many drawings (over all inputs).
    #[arg(long, short = 'n')]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub device: super::DeviceArg,
    /// One JSON object per drawing (JSON lines) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct ClassProb {
    class: String,
    label: usize,
    probability: f32,
}

#[derive(Debug, Serialize)]
struct PredLine {
    input: String,
    index: u64,
    key_id: u64,
    /// The class the record says it is, when it says.
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    top_k: Vec<ClassProb>,
}

struct Item {
    index: u64,
    label: Option<String>,
    decoded: Decoded,
}

fn read_tfrecord(path: &Path, tm: &TrainedModel, limit: usize) -> anyhow::Result<Vec<Item>> {
    let spec = tm.feature_spec();
    let mut out = Vec::new();
    let mut r = TfRecordReader::open(path)?;
    let mut buf = Vec::new();
    let mut index = 0;
    while out.len() < limit && r.read_into(&mut buf)? {
        let ex = Example::from_bytes(&buf)
            .with_context(|| format!("{}: record {index}", path.display()))?;
        let image = decode_image(&ex, spec)
            .with_context(|| format!("{}: record {index}", path.display()))?;
        let strokes = if tm.kind().uses_strokes() {
            decode_example(&buf, spec)
                .with_context(|| format!("{}: record {index}", path.display()))?
                .strokes
        } else {
            None
        };
        let label = features::int64_feature(&ex, features::LABEL)
            .ok()
            .and_then(|l| tm.labels().get(l as usize).cloned());
        let key_id = features::int64_feature(&ex, features::KEY_ID)
            .ok()
            .unwrap_or(0) as u64;
        out.push(Item {
            index,
            label,
            decoded: Decoded {
                label: -1,
                image,
                key_id,
                strokes,
                wide: match tm.wide_spec() {
                    Some(_) => tm.wide_vector(
                        &features::metadata(&ex)
                            .with_context(|| format!("{}: record {index}", path.display()))?,
                    ),
                    None => None,
                },
            },
        });
        index += 1;
    }
    Ok(out)
}

/// Drawings of one input file; rejected records are skipped with a warning (as `model run`) and
/// counted in `skipped`.
fn read_drawings(
    path: &Path,
    tm: &TrainedModel,
    limit: usize,
    ctx: Ctx,
    skipped: &mut u64,
) -> anyhow::Result<Vec<Item>> {
    let mut r = DrawingReader::open(path, LabelFrom::Word, None)?;
    let mut out = Vec::new();
    while out.len() < limit {
        let Some((index, parsed)) = r.next_drawing()? else {
            break;
        };
        let d = match parsed {
            Ok(d) => d,
            Err(rej) => {
                *skipped += 1;
                if !ctx.quiet {
                    eprintln!("warning: {}:{index}: skipped: {rej}", path.display());
                }
                continue;
            }
        };
        let p = preprocess(&d.ink, tm.feature_spec())
            .with_context(|| format!("{}: record {index}", path.display()))?;
        let label = tm.labels().iter().find(|c| **c == d.word).cloned();
        out.push(Item {
            index,
            label,
            decoded: Decoded {
                label: -1,
                image: p.image,
                key_id: d.key_id,
                strokes: p.strokes,
                wide: tm.wide_vector(&Metadata::of_drawing(&d)),
            },
        });
    }
    Ok(out)
}

pub fn run(mut a: PredictArgs, ctx: Ctx) -> anyhow::Result<()> {
    let _copy = super::local_copy(&mut a.model_dir)?;
    let tm = TrainedModel::load(&a.model_dir, a.checkpoint, a.device.choice)
        .with_context(|| format!("loading {}", a.model_dir.display()))?;
    let k = a.top_k.clamp(1, tm.n_classes());
    let files = expand_globs(&a.inputs)?;
    let mut remaining = a.limit.unwrap_or(usize::MAX);
    let mut skipped = 0u64;
    if !a.json {
        println!("{}", super::prediction_header(k));
    }
    for f in files {
        if remaining == 0 {
            break;
        }
        let items = if is_tfrecord(&f).with_context(|| format!("reading {}", f.display()))? {
            read_tfrecord(&f, &tm, remaining)?
        } else {
            read_drawings(&f, &tm, remaining, ctx, &mut skipped)?
        };
        remaining -= items.len();
        for chunk in items.chunks(256) {
            let decoded: Vec<Decoded> = chunk.iter().map(|i| i.decoded.clone()).collect();
            let probs = tm.predict_decoded(&decoded)?;
            for (item, row) in chunk.iter().zip(probs.chunks_exact(tm.n_classes())) {
                let top: Vec<ClassProb> = top_k(row, k)
                    .into_iter()
                    .map(|(label, probability)| ClassProb {
                        class: tm.labels()[label].clone(),
                        label,
                        probability,
                    })
                    .collect();
                let line = PredLine {
                    input: f.display().to_string(),
                    index: item.index,
                    key_id: item.decoded.key_id,
                    label: item.label.clone(),
                    top_k: top,
                };
                if a.json {
                    println!("{}", serde_json::to_string(&line)?);
                } else {
                    let name = f
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let top = line.top_k.iter().map(|c| (c.class.as_str(), c.probability));
                    println!(
                        "{}",
                        super::prediction_row(
                            &name,
                            line.index,
                            line.key_id,
                            line.label.as_deref(),
                            top
                        )
                    );
                }
            }
        }
    }
    if skipped > 0 && !ctx.quiet {
        eprintln!("skipped {skipped} rejected records (see the warnings above)");
    }
    Ok(())
}
