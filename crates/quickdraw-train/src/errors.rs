//! `evaluate --errors DIR` (rules #26-#27: look at the errors to find the next features): every
//! misclassified eval example in `errors.jsonl` (key_id, true and predicted class, the top
//! probabilities), and for the most confused pairs a PNG grid of their drawings captioned with
//! the predicted probability.
//!
//! Memory stays bounded whatever the eval set: the first pass streams the error lines to disk
//! and keeps only the indices of the first `per_pair` errors of each pair; a second pass over
//! the eval stream (decoding only, no model) collects the drawings of the pairs shown.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Result, TrainError};
use crate::eval::{
    EvalOptions, EvaluateRequest, Evaluation, check_compatible, eval_pipeline, evaluate_batches,
    evaluation_of,
};
use crate::infer::TrainedModel;
use crate::metrics::{most_confused_pairs, predicted_class, ranking};
use crate::pipeline::DataSource;

pub const ERRORS_FILE: &str = "errors.jsonl";
/// Probabilities listed per error line (the highest ones).
const TOP: usize = 5;

/// What `--errors` writes.
#[derive(Debug, Clone, Default)]
pub struct ErrorsOptions {
    pub dir: PathBuf,
    /// Confused pairs drawn as grids (the largest ones).
    pub pairs: usize,
    /// Drawings per grid.
    pub per_pair: usize,
}

/// One line of `errors.jsonl`.
#[derive(Debug, Clone, Serialize)]
struct ErrorLine<'a> {
    /// Position in the eval stream (file order).
    index: u64,
    key_id: String,
    #[serde(rename = "true")]
    true_class: &'a str,
    /// `null` when the model's output was NaN or infinite.
    predicted: Option<&'a str>,
    true_probability: f32,
    /// The highest class probabilities, highest first.
    probabilities: Vec<(&'a str, f32)>,
}

/// What was written.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorsReport {
    pub errors: u64,
    pub errors_file: PathBuf,
    /// `(true, predicted, count, png)` of each grid drawn.
    pub grids: Vec<(String, String, u64, PathBuf)>,
}

/// Evaluates like [`crate::evaluate`] and writes the errors into `opts.dir`.
pub fn evaluate_with_errors(
    req: &EvaluateRequest,
    opts: &ErrorsOptions,
) -> Result<(Evaluation, ErrorsReport)> {
    let tm = TrainedModel::load(&req.model_dir, req.checkpoint, req.device)?;
    let src = DataSource::open(&req.eval_files)?;
    check_compatible(&tm, &src)?;
    std::fs::create_dir_all(&opts.dir).map_err(TrainError::io(&opts.dir))?;
    let classes = tm.config.classes.clone();
    let c = classes.len();
    let eval_opts = req.options(&tm);
    let path = opts.dir.join(ERRORS_FILE);
    // Written under a temporary name and renamed once complete (after the grids): an
    // interrupted run never leaves an errors.jsonl that looks whole.
    let tmp = opts
        .dir
        .join(format!(".{ERRORS_FILE}.tmp-{}", std::process::id()));
    let file = std::fs::File::create(&tmp).map_err(TrainError::io(&tmp))?;
    let mut out = BufWriter::new(file);
    let mut kept: BTreeMap<(usize, usize), Vec<(u64, f32)>> = BTreeMap::new();
    let mut errors = 0u64;
    let mut write_err = None;
    let t = std::time::Instant::now();
    let acc = evaluate_batches(
        tm.model(),
        &tm.config.model,
        tm.device(),
        &src,
        &eval_opts,
        &mut |batch: &crate::pipeline::Batch, lp: &[f32], first: u64| {
            let rows = lp.chunks_exact(c).zip(&batch.labels).zip(&batch.key_ids);
            for (i, ((row, &label), &key_id)) in rows.enumerate() {
                let label = label as usize;
                let predicted = predicted_class(row);
                if predicted == Some(label) {
                    continue;
                }
                errors += 1;
                let index = first + i as u64;
                let line = ErrorLine {
                    index,
                    key_id: key_id.to_string(),
                    true_class: &classes[label],
                    predicted: predicted.map(|p| classes[p].as_str()),
                    true_probability: row[label].exp(),
                    probabilities: ranking(row)
                        .into_iter()
                        .take(TOP)
                        .map(|k| (classes[k].as_str(), row[k].exp()))
                        .collect(),
                };
                let text = serde_json::to_string(&line).expect("error line serialises");
                if let Err(e) = writeln!(out, "{text}") {
                    write_err.get_or_insert(e);
                }
                if let Some(p) = predicted {
                    let v = kept.entry((label, p)).or_default();
                    if v.len() < opts.per_pair {
                        v.push((index, row[p].exp()));
                    }
                }
            }
        },
    )
    .inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    let finish = |out: BufWriter<std::fs::File>| -> std::io::Result<()> {
        if let Some(e) = write_err {
            return Err(e);
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    };
    if let Err(e) = finish(out) {
        let _ = std::fs::remove_file(&tmp);
        return Err(TrainError::io(&tmp)(e));
    }
    let rest = || -> Result<_> {
        let ev = evaluation_of(&tm, req, acc.report(&classes), t.elapsed().as_secs_f64())?;
        let pairs = most_confused_pairs(&ev.metrics.confusion, opts.pairs);
        let grids = draw_pairs(&src, &tm, &eval_opts, &pairs, &kept, &classes, &opts.dir)?;
        std::fs::rename(&tmp, &path).map_err(TrainError::io(&path))?;
        Ok((ev, grids))
    };
    let (ev, grids) = rest().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    Ok((
        ev,
        ErrorsReport {
            errors,
            errors_file: path,
            grids,
        },
    ))
}

/// The second pass: the drawings of the kept errors of `pairs`, one captioned grid each.
fn draw_pairs(
    src: &DataSource,
    tm: &TrainedModel,
    opts: &EvalOptions,
    pairs: &[(usize, usize, u64)],
    kept: &BTreeMap<(usize, usize), Vec<(u64, f32)>>,
    classes: &[String],
    dir: &Path,
) -> Result<Vec<(String, String, u64, PathBuf)>> {
    let wanted: BTreeSet<u64> = pairs
        .iter()
        .filter_map(|&(t, p, _)| kept.get(&(t, p)))
        .flatten()
        .map(|&(i, _)| i)
        .collect();
    let mut images: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut size = 0u32;
    if !wanted.is_empty() {
        let mut pipeline = eval_pipeline(src, &tm.config.model, opts)?;
        let mut index = 0u64;
        while let Some(batch) = pipeline.next_batch()? {
            size = batch.image_size as u32;
            for i in 0..batch.size {
                if wanted.contains(&(index + i as u64)) {
                    images.insert(index + i as u64, batch.image_u8(i));
                }
            }
            index += batch.size as u64;
            if index > *wanted.last().expect("not empty") {
                break;
            }
        }
    }
    let mut grids = Vec::new();
    for (rank, &(t, p, count)) in pairs.iter().enumerate() {
        let Some(list) = kept.get(&(t, p)) else {
            continue;
        };
        let captions: Vec<String> = list
            .iter()
            .map(|(_, prob)| format!("p={prob:.2}"))
            .collect();
        let cells: Vec<(&str, &[u8], u32)> = list
            .iter()
            .zip(&captions)
            .filter_map(|((i, _), cap)| {
                images
                    .get(i)
                    .map(|img| (cap.as_str(), img.as_slice(), size))
            })
            .collect();
        let png = quickdraw_data::image::captioned_grid(&cells, 4);
        let name = format!(
            "{:02}-{}-as-{}.png",
            rank + 1,
            file_safe(&classes[t]),
            file_safe(&classes[p])
        );
        let path = dir.join(name);
        std::fs::write(&path, png).map_err(TrainError::io(&path))?;
        grids.push((classes[t].clone(), classes[p].clone(), count, path));
    }
    Ok(grids)
}

/// A class name as a file name part (letters, digits, `-` and `_`; others become `_`).
fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_become_safe_file_names() {
        assert_eq!(file_safe("The Eiffel Tower"), "The_Eiffel_Tower");
        assert_eq!(file_safe("../x"), "___x");
    }
}
