//! `quickdraw export`: writes a trained checkpoint as a new serving version `<base>/<version>/`
//! (ONNX graph, signature, labels, preprocessing, metrics), behind the export gate, after
//! checking the ONNX graph with the serving engine (tract) against burn on eval examples.
//! The version folder's path is the last line of stdout.

use std::path::{Path, PathBuf};

use anyhow::Context;
use quickdraw_data::signature::{MODEL_DIR_EXPORT, SIGNATURE_FILE};
use quickdraw_data::storage;
use quickdraw_serve::Predictor;
use quickdraw_serve::drift::Reference;
use quickdraw_serve::{skew, warmup};
use quickdraw_train::export::{
    CheckSample, EngineOutputs, ExportRequest, ExportVerifier, SampleInputs, StagedExport, stage,
    verify,
};
use quickdraw_train::{CheckpointSel, TrainedModel};

use super::Ctx;

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Model directory written by `quickdraw train`.
    #[arg(long, alias = "job-dir")]
    pub model_dir: PathBuf,
    /// Checkpoint: best (by eval accuracy during training; latest when none was evaluated),
    /// latest, or a step number.
    #[arg(long, default_value = "best")]
    pub checkpoint: CheckpointSel,
    /// Base folder of the versions, as `serve --model-base-path` reads it (default: <model-dir>/export).
    #[arg(long, value_name = "DIR")]
    pub export_dir: Option<PathBuf>,
    /// Eval shards for the export gate and metrics.json: files, globs or a dataset directory
    /// (its eval shards), as for `train --eval-files` (default: those the model was trained with).
    #[arg(long, num_args = 1.., value_name = "FILES")]
    pub eval_files: Vec<String>,
    /// Evaluate only this many batches (default: the whole eval set).
    #[arg(long)]
    pub eval_steps: Option<u64>,
    /// Evaluation batch size (default: max(64, the training batch size)).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Export even if the model is not better than the baseline or than the newest exported
    /// version (non-finite weights are refused regardless).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub device: super::DeviceArg,
    /// Do not run the exported graph with tract to compare it with burn before publishing.
    #[arg(long)]
    pub no_verify: bool,
    /// Write eval examples with burn's logits and probabilities as JSON (for tests/python/check_onnx.py).
    #[arg(long, value_name = "FILE", hide = true)]
    pub write_check: Option<PathBuf>,
    /// Time one-example inference with burn and with tract (median of RUNS) and print it on stderr.
    #[arg(long, value_name = "RUNS", hide = true)]
    pub latency: Option<usize>,
}

/// Median milliseconds of `runs` calls of `f` (after two warm-up calls).
fn median_ms(runs: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    f()?;
    f()?;
    let mut t = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let start = std::time::Instant::now();
        f()?;
        t.push(start.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// One-example latency of burn (the checkpoint) and tract (the published version), in ms.
fn latency(
    a: &ExportArgs,
    staged: &StagedExport,
    dir: &std::path::Path,
    runs: usize,
) -> anyhow::Result<(f64, f64)> {
    let tm = TrainedModel::load(
        &a.model_dir,
        CheckpointSel::Step(staged.step),
        a.device.choice,
    )?;
    let p = Predictor::load(dir)?;
    let s = &staged.sample;
    if let Some(images) = s.image_rows() {
        let one = images[0].clone();
        // A wide & deep model's first metadata vector goes with it.
        let wide_one = s.wide_rows().map(|w| w[0].clone());
        let burn = median_ms(runs, || {
            tm.predict_images_wide(&one, wide_one.as_deref(), 1)
                .map(drop)
                .map_err(Into::into)
        })?;
        let tract = median_ms(runs, || {
            match &wide_one {
                Some(w) => {
                    p.predict_pixels_wide(std::slice::from_ref(&one), std::slice::from_ref(w))
                }
                None => p.predict_pixels(std::slice::from_ref(&one)),
            }
            .map(drop)
            .map_err(Into::into)
        })?;
        Ok((burn, tract))
    } else {
        let one = s.stroke_rows().expect("strokes")[0].clone();
        let burn = median_ms(runs, || {
            tm.predict_strokes(&[&one]).map(drop).map_err(Into::into)
        })?;
        let tract = median_ms(runs, || {
            p.predict_strokes(std::slice::from_ref(&one))
                .map(drop)
                .map_err(Into::into)
        })?;
        Ok((burn, tract))
    }
}

/// The serving engine as the export's verifier: tract's `Predictor` runs the staged graph on the
/// check sample (the library compares the outputs with burn's).
struct TractVerifier;

impl ExportVerifier for TractVerifier {
    fn engine(&self) -> &str {
        "tract"
    }

    fn run(&self, dir: &Path, s: &CheckSample) -> Result<EngineOutputs, String> {
        // The error chain as the CLI prints it.
        let chain = |e: anyhow::Error| super::error_chain(&e);
        let p = Predictor::load(dir)
            .context("tract cannot load the exported graph")
            .map_err(chain)?;
        let out = match (s.image_rows(), s.stroke_rows()) {
            // Wide & deep: with the sample's metadata vectors, as burn ran them.
            (Some(images), _) => match s.wide_rows() {
                Some(wide) => p.predict_pixels_wide(&images, &wide),
                None => p.predict_pixels(&images),
            },
            (None, Some(strokes)) => p.predict_strokes(&strokes),
            _ => unreachable!("a sample holds images or strokes"),
        }
        .context("running the exported graph with tract")
        .map_err(chain)?;
        Ok(EngineOutputs {
            probabilities: out.probabilities,
            classes: out.classes,
        })
    }
}

/// The staged version's warm-up requests (TF Serving's `assets.extra/tf_serving_warmup_requests`):
/// the check sample as one batch, and its first example alone (the usual request size); a wide &
/// deep model's requests carry the sample's `wide` vectors too.
fn write_warmup(s: &StagedExport) -> anyhow::Result<()> {
    let requests = match &s.sample.inputs {
        SampleInputs::Images {
            key,
            size,
            pixels,
            wide: None,
        } => {
            let one = &pixels[..(size * size).min(pixels.len())];
            vec![
                warmup::image_request(key, *size, pixels),
                warmup::image_request(key, *size, one),
            ]
        }
        SampleInputs::Images {
            key,
            size,
            pixels,
            wide: Some(wide),
        } => {
            let one = &pixels[..(size * size).min(pixels.len())];
            let dim = wide.len() / s.sample.n.max(1);
            vec![
                warmup::image_wide_request(key, *size, pixels, wide),
                warmup::image_wide_request(key, *size, one, &wide[..dim.min(wide.len())]),
            ]
        }
        SampleInputs::Strokes {
            steps,
            strokes,
            lengths,
        } => {
            let one = &strokes[..(steps * 3).min(strokes.len())];
            vec![
                warmup::stroke_request(*steps, strokes, lengths),
                warmup::stroke_request(*steps, one, &lengths[..1.min(lengths.len())]),
            ]
        }
    };
    let path = warmup::write(&s.tmp_dir, &requests)
        .with_context(|| format!("writing the warm-up requests in {}", s.tmp_dir.display()))?;
    anyhow::ensure!(path.exists(), "{} was not written", path.display());
    Ok(())
}

/// Drawings per training input file in the drift reference.
const DRIFT_SAMPLE_PER_FILE: usize = 500;

/// The staged version's drift reference (`assets/drift_reference.json`): statistics of the
/// training inputs the dataset manifest lists, and the training split's class mix. Without the
/// inputs (moved, or on another machine) the version gets none and the server exports no drift
/// gauges for it; the export itself does not fail for that.
fn write_drift_reference(s: &StagedExport, quiet: bool) {
    let made = (|| -> anyhow::Result<std::path::PathBuf> {
        let src = quickdraw_train::pipeline::DataSource::open(&s.eval_files)?;
        let m = &src.manifest;
        let files = super::skew::manifest_inputs(m, &src.dir)?;
        let sample = skew::read_sample(
            &files,
            &m.features,
            Some(DRIFT_SAMPLE_PER_FILE),
            m.include_unrecognized,
            false,
        )?;
        anyhow::ensure!(
            !sample.stats.is_empty(),
            "no valid drawings in the training inputs"
        );
        let source = format!(
            "{} drawings of {} training inputs of {}",
            sample.stats.len(),
            files.len(),
            src.dir.display()
        );
        let r = Reference::new(&sample, &super::skew::train_class_counts(m), &source);
        Ok(r.write(&s.tmp_dir)?)
    })();
    match made {
        Ok(_) => {}
        Err(e) if !quiet => eprintln!(
            "warning: no drift reference in this version (the server will export no drift gauges for it): {}",
            super::error_chain(&e)
        ),
        Err(_) => {}
    }
}

pub fn run(mut a: ExportArgs, ctx: Ctx) -> anyhow::Result<()> {
    // An object-store export base is worked on through a local copy and uploaded after the
    // export, each version's signature.json last (servers load a version once it is there).
    let export_url = match &a.export_dir {
        Some(d) if storage::is_url(d) => Some(d.clone()),
        None if storage::is_url(&a.model_dir) => Some(a.model_dir.join(MODEL_DIR_EXPORT)),
        _ => None,
    };
    let _model_copy = super::local_copy(&mut a.model_dir)?;
    let mut export_copy = export_url
        .map(|u| {
            storage::Mirror::open(&u, &[SIGNATURE_FILE])
                .with_context(|| format!("reading {}", u.display()))
        })
        .transpose()?;
    let mut req = ExportRequest::new(a.model_dir.clone());
    req.checkpoint = a.checkpoint;
    if let Some(d) = &a.export_dir {
        req.export_base = d.clone();
    }
    if let Some(m) = &export_copy {
        req.export_base = m.local().to_path_buf();
    }
    req.eval_files = match a.eval_files.as_slice() {
        [] => None,
        v => Some(quickdraw_train::pipeline::file_list(v, "eval")?),
    };
    req.eval_steps = a.eval_steps;
    req.batch_size = a.batch_size;
    req.force = a.force;
    req.device = a.device.choice;

    let pb = crate::progress::bar(ctx.quiet, None, "");
    pb.set_message(format!(
        "evaluating and exporting {}",
        a.model_dir.display()
    ));
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    let verifier = (!a.no_verify).then_some(&TractVerifier as &dyn ExportVerifier);
    // Staged, checked, given its warm-up requests, then published (renamed into place).
    let staged = (|| -> anyhow::Result<StagedExport> {
        let mut s = stage(&req)?;
        s.verified = verifier.map(|v| verify(&s, v)).transpose()?;
        write_warmup(&s)?;
        write_drift_reference(&s, ctx.quiet);
        s.publish()?;
        Ok(s)
    })();
    pb.finish_and_clear();
    let staged = staged.with_context(|| format!("exporting {}", a.model_dir.display()))?;
    let dir = staged.final_dir.clone();
    let published = match export_copy.as_mut() {
        None => dir.clone(),
        Some(m) => {
            m.push()
                .with_context(|| format!("uploading the export to {}", m.remote().display()))?;
            m.remote().join(staged.version.to_string())
        }
    };
    if let Some(path) = &a.write_check {
        let mut v = staged.sample.to_json();
        v["export_dir"] = published.display().to_string().into();
        v["model"] = staged.kind.name().into();
        std::fs::write(path, serde_json::to_string(&v)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }

    if let Some(runs) = a.latency {
        let (burn, tract) = latency(&a, &staged, &dir, runs)?;
        eprintln!(
            "latency: {}",
            serde_json::json!({"model": staged.kind.name(), "runs": runs, "burn_ms": burn, "tract_ms": tract})
        );
    }

    if !ctx.quiet {
        let m = &staged.evaluation;
        let b = &staged.baseline;
        eprintln!(
            "exported the {} model at step {} ({}) as version {}",
            staged.kind,
            staged.step,
            staged.checkpoint_dir.display(),
            staged.version
        );
        eprintln!(
            "  eval accuracy {:.4} on {} examples ({}), loss {:.4}",
            m.accuracy, m.examples, staged.eval_files, m.loss
        );
        eprintln!(
            "  baseline accuracy {:.4} (always {:?}; {})",
            b.accuracy, b.majority_class, b.counts_from
        );
        if let Some(p) = &staged.previous {
            let acc = p
                .accuracy
                .map(|x| format!("{x:.4}"))
                .unwrap_or_else(|| "unknown".into());
            eprintln!("  previous version {}: accuracy {acc}", p.version);
        }
        if staged.overridden.is_empty() {
            eprintln!("  export gate: passed");
        } else {
            eprintln!(
                "  export gate overridden by --force: {}",
                staged.overridden.join("; ")
            );
        }
        match &staged.verified {
            Some(v) => eprintln!(
                "  model.onnx: {} bytes, matches burn with {} on {} eval examples (max |probability difference| {:.1e})",
                staged.onnx_bytes, v.engine, v.examples, v.max_difference
            ),
            None => eprintln!(
                "  model.onnx: {} bytes (not checked: --no-verify)",
                staged.onnx_bytes
            ),
        }
    }
    println!("{}", published.display());
    Ok(())
}
