//! `quickdraw model show|run`: inspect an export folder (like `saved_model_cli show`) and run
//! its ONNX model on drawings, tf.Examples or tensors (like `saved_model_cli run`), with the
//! serving code path (`quickdraw_serve::Predictor`, tract; no training stack).

use std::path::{Path, PathBuf};

use anyhow::Context;
use quickdraw_data::example::Example;
use quickdraw_data::features::{FeatureSpec, decode_example};
use quickdraw_data::ingest::{DrawingReader, LabelFrom};
use quickdraw_data::signature::{self, ExportInfo, InputKind, TensorSpec, resolve_export_dir};
use quickdraw_data::strokes::StrokeFeatures;
use quickdraw_data::tfrecord::TfRecordReader;
use quickdraw_data::wide::{DURATION_BOUNDARIES_MS, Metadata, STROKE_BOUNDARIES, WideSpec};
use quickdraw_serve::predictor::Batch;
use quickdraw_serve::request::{ModelInput, tensor};
use quickdraw_serve::{Predictor, Probabilities};
use serde::Serialize;
use serde_json::json;

use super::Ctx;

#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    #[command(subcommand)]
    pub command: ModelCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ModelCommand {
    /// Signature (inputs, outputs, dtypes, shapes), classes, preprocessing and metrics of an export.
    Show(ShowArgs),
    /// Top-k predictions of an exported model for drawings, tf.Examples or input tensors.
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// Export version folder (`export/3`), or a base folder (its newest version is shown).
    #[arg(long)]
    pub dir: PathBuf,
    /// Everything: every label, the full preprocessing and metrics, and the ONNX graph loaded
    /// with tract (optimised plan, operators, a test run).
    #[arg(long)]
    pub all: bool,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).multiple(true).args(["input_exprs", "input_ndjson", "input_examples"])))]
pub struct RunArgs {
    /// Export version folder (`export/3`), or a base folder (its newest version is used).
    #[arg(long)]
    pub dir: PathBuf,
    #[command(flatten)]
    pub runtime: super::RuntimeArgs,
    /// Input tensors, `KEY=VALUE[;KEY=VALUE]`: a JSON nested list or `np.zeros((..))` /
    /// `np.ones((..))`, e.g. `img_64=np.zeros((1,1,64,64))`, `strokes=[[[0.1,0.2,1]]];lengths=[1]`.
    /// Image values are the model input (pixel / 255).
    #[arg(long)]
    pub input_exprs: Option<String>,
    /// Drawings in any QuickDraw format (NDJSON raw or simplified, .bin, .npy, optionally .gz),
    /// preprocessed with the export's feature spec.
    #[arg(long)]
    pub input_ndjson: Vec<PathBuf>,
    /// TFRecord files of tf.Examples as `convert` writes them.
    #[arg(long)]
    pub input_examples: Vec<PathBuf>,
    /// Classes listed per drawing.
    #[arg(long, short = 'k', default_value_t = 3)]
    pub top_k: usize,
    /// Stop after this many drawings (over all inputs).
    #[arg(long, short = 'n')]
    pub limit: Option<usize>,
    /// Drawings per inference batch.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// One JSON object per drawing (JSON lines) instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: ModelArgs, ctx: Ctx) -> anyhow::Result<()> {
    match a.command {
        ModelCommand::Show(s) => show(s, ctx),
        ModelCommand::Run(r) => run_model(r, ctx),
    }
}

fn dims(t: &TensorSpec) -> String {
    let d: Vec<String> = t.shape.iter().map(|v| v.to_string()).collect();
    format!("({})", d.join(", "))
}

fn flat_metrics(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flat_metrics(&key, v, out);
            }
        }
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() != 0.0 => out.push(format!("{prefix}={f:.4}")),
            _ => out.push(format!("{prefix}={n}")),
        },
        serde_json::Value::String(s) => out.push(format!("{prefix}={s}")),
        serde_json::Value::Bool(b) => out.push(format!("{prefix}={b}")),
        serde_json::Value::Null if !prefix.is_empty() => out.push(format!("{prefix}=n/a")),
        _ => {}
    }
}

fn preprocessing_text(f: &FeatureSpec) -> String {
    let r = &f.raster;
    format!(
        "raster {} {}x{}, line width {}, {}; image feature {} encoded {}; stroke features: {}; raw ink simplified: {}",
        serde_json::to_value(r.mode)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        r.size,
        r.size,
        r.line_width,
        if r.anti_alias {
            "anti-aliased"
        } else {
            "aliased"
        },
        quickdraw_data::features::image_key(r.size),
        serde_json::to_value(f.image_encoding)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        f.strokes
            .map(|s| format!("max {} points", s.max_points))
            .unwrap_or_else(|| "none".into()),
        if f.simplify_raw { "yes" } else { "no" }
    )
}

fn show(mut a: ShowArgs, _ctx: Ctx) -> anyhow::Result<()> {
    let _copy = super::local_copy(&mut a.dir)?;
    let dir = resolve_export_dir(&a.dir)?;
    let info = signature::load_export_dir(&dir)
        .with_context(|| format!("reading the export {}", dir.display()))?;
    let predictor = if a.all {
        Some(Predictor::load(&dir).with_context(|| format!("loading {}", dir.display()))?)
    } else {
        None
    };
    let card_path = dir.join(quickdraw_data::card::MODEL_CARD_FILE);
    let card = match std::fs::read_to_string(&card_path) {
        Ok(c) => Some(c),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", card_path.display())),
    };
    if a.json {
        let mut v = json!({
            "dir": dir.display().to_string(),
            "version": info.version,
            "signature": info.signature,
            "labels": info.labels,
            "features": info.features,
            "metrics": info.metrics,
        });
        if let Some(w) = &info.wide {
            v["wide"] = json!({
                "country_buckets": w.country_buckets,
                "dim": w.dim(),
                "slots": w.slot_names(),
            });
        }
        if let Some(p) = &predictor {
            v["onnx"] = onnx_json(p);
        }
        v["model_card"] = card.into();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print!("{}", show_text(&info, a.all, predictor.as_ref()));
    match card {
        Some(c) => print!("\n{}:\n\n{c}", quickdraw_data::card::MODEL_CARD_FILE),
        None => println!(
            "\nno {} in this export (written by `quickdraw export` since model cards exist; export again to get one)",
            quickdraw_data::card::MODEL_CARD_FILE
        ),
    }
    Ok(())
}

fn onnx_json(p: &Predictor) -> serde_json::Value {
    json!({
        "file": p.info().model_path().display().to_string(),
        "batch": match p.batch() { Batch::Any => "symbolic".to_string(), Batch::Fixed(n) => n.to_string() },
        "plan_nodes": p.plan_nodes(),
        "ops": p.plan_ops().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
    })
}

fn show_text(info: &ExportInfo, all: bool, p: Option<&Predictor>) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let sig = &info.signature;
    let version = info
        .version
        .map(|v| format!(" (version {v})"))
        .unwrap_or_default();
    let _ = writeln!(o, "export: {}{version}", info.dir.display());
    let _ = writeln!(o, "model: {}", sig.model.kind.as_str());
    if all || !sig.model.config.is_null() {
        let _ = writeln!(o, "  config: {}", sig.model.config);
    }
    let _ = writeln!(o, "\nsignature_def['{}']:", sig.signature_name);
    let _ = writeln!(
        o,
        "  The given SignatureDef contains the following input(s):"
    );
    for (k, t) in &sig.inputs {
        let _ = writeln!(
            o,
            "    inputs['{k}'] tensor_info:\n        dtype: {}\n        shape: {}\n        name: {}",
            t.dtype.as_str(),
            dims(t),
            t.name
        );
    }
    let _ = writeln!(
        o,
        "  The given SignatureDef contains the following output(s):"
    );
    for (k, t) in &sig.outputs {
        let _ = writeln!(
            o,
            "    outputs['{k}'] tensor_info:\n        dtype: {}\n        shape: {}\n        name: {}",
            t.dtype.as_str(),
            dims(t),
            t.name
        );
    }
    let _ = writeln!(o, "  Method name is: {}", sig.method_name);
    let n = info.labels.len();
    if all {
        let _ = writeln!(o, "\nclasses: {n}");
        for (i, l) in info.labels.iter().enumerate() {
            let _ = writeln!(o, "  {i:>4} {l}");
        }
    } else {
        let shown: Vec<&str> = info.labels.iter().take(10).map(String::as_str).collect();
        let more = if n > 10 {
            format!(", ... {} more (--all lists them)", n - 10)
        } else {
            String::new()
        };
        let _ = writeln!(o, "\nclasses: {n} ({}{more})", shown.join(", "));
    }
    let _ = writeln!(o, "\npreprocessing: {}", preprocessing_text(&info.features));
    if let InputKind::Image { key, .. } = &info.input {
        let _ = writeln!(
            o,
            "  {key} = pixel (0..=255) * {} (PIXEL_SCALE)",
            signature::PIXEL_SCALE
        );
    }
    if let Some(w) = &info.wide {
        o.push_str(&wide_text(w, all));
    }
    if all {
        let _ = writeln!(
            o,
            "  {}",
            serde_json::to_string(&info.features).unwrap_or_default()
        );
    }
    let mut m = Vec::new();
    flat_metrics("", &info.metrics, &mut m);
    let _ = writeln!(
        o,
        "\nmetrics: {}",
        if m.is_empty() {
            "none".to_string()
        } else {
            m.join(" ")
        }
    );
    if let Some(p) = p {
        let batch = match p.batch() {
            Batch::Any => "symbolic batch".to_string(),
            Batch::Fixed(n) => format!("fixed batch {n}"),
        };
        let ops: Vec<String> = p
            .plan_ops()
            .into_iter()
            .map(|(k, v)| format!("{k} x{v}"))
            .collect();
        let _ = writeln!(
            o,
            "\nonnx: {} loads with tract: {batch}, {} nodes in the optimised plan; a blank input runs",
            p.info().model_path().display(),
            p.plan_nodes()
        );
        let _ = writeln!(o, "  ops: {}", ops.join(", "));
    }
    o
}

/// The layout of the `wide` input: its columns and their slot ranges (with `all`, every slot).
fn wide_text(w: &WideSpec, all: bool) -> String {
    use std::fmt::Write;
    let names = w.slot_names();
    let c = w.country_buckets;
    let strokes = c + 2;
    let duration = strokes + STROKE_BOUNDARIES.len() + 1;
    let dim = w.dim();
    let span = |a: usize, b: usize| format!("{} .. {}", names[a], names[b - 1]);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "  {} = multi-hot metadata vector of {dim} values (a missing value sets no slot; no metadata: all zeros):",
        signature::WIDE
    );
    let _ = writeln!(
        o,
        "    [{:>3}, {:>3})  countrycode: FNV-1a hash of the upper-cased code modulo {c} ({})",
        0,
        c,
        span(0, c)
    );
    let _ = writeln!(
        o,
        "    [{c:>3}, {strokes:>3})  recognized: {}",
        span(c, strokes)
    );
    let _ = writeln!(
        o,
        "    [{strokes:>3}, {duration:>3})  stroke count, bucketised at {STROKE_BOUNDARIES:?}: {}",
        span(strokes, duration)
    );
    let _ = writeln!(
        o,
        "    [{duration:>3}, {dim:>3})  duration in ms (raw timestamps only), bucketised at {DURATION_BOUNDARIES_MS:?}: {}",
        span(duration, dim)
    );
    if all {
        for (i, n) in names.iter().enumerate() {
            let _ = writeln!(o, "    {i:>4} {n}");
        }
    }
    o
}

/// One drawing (or tensor row) to predict.
struct Item {
    input: String,
    index: u64,
    key_id: u64,
    label: Option<String>,
    x: ModelInput,
}

#[derive(Serialize)]
struct ClassProb<'a> {
    label: usize,
    class: &'a str,
    probability: f32,
}

#[derive(Serialize)]
struct Line<'a> {
    input: &'a str,
    index: u64,
    key_id: u64,
    /// The class the record says it is, when it says.
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<&'a str>,
    class: &'a str,
    probability: f32,
    top_k: Vec<ClassProb<'a>>,
    /// The model's `classes` output: the predicted label.
    classes: i64,
    /// The model's `probabilities` output: every class, in label order.
    probabilities: &'a [f32],
}

struct Printer {
    json: bool,
    k: usize,
    header_done: bool,
}

impl Printer {
    fn print(
        &mut self,
        p: &Predictor,
        items: &[Item],
        probs: &Probabilities,
    ) -> anyhow::Result<()> {
        if !self.json && !self.header_done {
            println!("{}", super::prediction_header(self.k));
            self.header_done = true;
        }
        for (i, it) in items.iter().enumerate() {
            let top: Vec<ClassProb> = probs
                .top_k(i, self.k)
                .into_iter()
                .map(|(c, pr)| ClassProb {
                    label: c,
                    class: &p.labels()[c],
                    probability: pr,
                })
                .collect();
            let line = Line {
                input: &it.input,
                index: it.index,
                key_id: it.key_id,
                label: it.label.as_deref(),
                class: top[0].class,
                probability: top[0].probability,
                classes: top[0].label as i64,
                top_k: top,
                probabilities: probs.row(i),
            };
            if self.json {
                println!("{}", serde_json::to_string(&line)?);
            } else {
                let name = Path::new(&it.input)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| it.input.clone());
                let top = line.top_k.iter().map(|c| (c.class, c.probability));
                println!(
                    "{}",
                    super::prediction_row(&name, it.index, it.key_id, it.label.as_deref(), top)
                );
            }
        }
        Ok(())
    }
}

fn predict(p: &Predictor, items: &[Item]) -> anyhow::Result<Probabilities> {
    Ok(p.predict_inputs(items.iter().map(|it| it.x.clone()).collect())?)
}

/// `np.zeros((a, b))`-style shorthand or a JSON nested list.
fn parse_expr(expr: &str) -> anyhow::Result<(Vec<usize>, Vec<f32>)> {
    let e = expr.trim();
    let e2 = e
        .strip_prefix("np.")
        .or_else(|| e.strip_prefix("numpy."))
        .unwrap_or(e);
    for (name, fill) in [("zeros", 0.0f32), ("ones", 1.0)] {
        if let Some(rest) = e2.strip_prefix(name) {
            let inner = rest
                .trim()
                .trim_start_matches('(')
                .trim_end_matches(')')
                .trim();
            let inner = inner
                .trim_start_matches(['(', '['])
                .trim_end_matches([')', ']'])
                .trim_end_matches(',');
            let shape: Vec<usize> = inner
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().parse::<usize>())
                .collect::<Result<_, _>>()
                .with_context(|| {
                    format!("{expr:?}: expected {name}((d1, d2, ...)) with integer dimensions")
                })?;
            let n: usize = shape.iter().product();
            anyhow::ensure!(n <= 1 << 26, "{expr:?}: tensor too large");
            return Ok((shape, vec![fill; n]));
        }
    }
    let v: serde_json::Value = serde_json::from_str(e).with_context(|| {
        format!("{expr:?}: expected a JSON nested list, np.zeros((..)) or np.ones((..))")
    })?;
    tensor(&v).map_err(|w| anyhow::anyhow!("{expr:?}: {w}"))
}

fn items_from_exprs(exprs: &str, p: &Predictor) -> anyhow::Result<Vec<Item>> {
    let mut named = std::collections::BTreeMap::new();
    for part in exprs.split(';').filter(|s| !s.trim().is_empty()) {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("--input-exprs: {part:?} is not KEY=VALUE"))?;
        named.insert(k.trim().to_string(), parse_expr(v)?);
    }
    let item = |index: usize, x: ModelInput| Item {
        input: "input-exprs".into(),
        index: index as u64,
        key_id: 0,
        label: None,
        x,
    };
    match p.input() {
        InputKind::Image { key, size } => {
            let s = *size as usize;
            let (shape, vals) = named.remove(key).with_context(|| {
                format!("--input-exprs needs {key}= ({})", p.input_description())
            })?;
            // A wide & deep model's optional metadata vectors (absent: all zeros).
            let wide = match p.wide() {
                Some(_) => named.remove(signature::WIDE),
                None => None,
            };
            anyhow::ensure!(
                named.is_empty(),
                "--input-exprs: unknown inputs {:?}; this model reads only {key}{}",
                named.keys().collect::<Vec<_>>(),
                if p.wide().is_some() {
                    format!(" and {}", signature::WIDE)
                } else {
                    String::new()
                }
            );
            let rows = match shape[..] {
                [n, 1, a, b] if a == s && b == s => n,
                [1, a, b] | [a, b] if a == s && b == s => 1,
                [n] if n == s * s => 1,
                _ => anyhow::bail!(
                    "--input-exprs: {key} has shape {shape:?}; expected [N, 1, {s}, {s}], [1, {s}, {s}], [{s}, {s}] or {} values",
                    s * s
                ),
            };
            let wide_rows: Option<Vec<Vec<f32>>> = match (wide, p.wide()) {
                (Some((wshape, wvals)), Some(spec)) => {
                    let w = spec.dim();
                    anyhow::ensure!(
                        wshape == [rows, w] || (rows == 1 && wshape == [w]),
                        "--input-exprs: {} has shape {wshape:?}; expected [{rows}, {w}] (one metadata vector of {w} values per image)",
                        signature::WIDE
                    );
                    Some(wvals.chunks_exact(w).map(<[f32]>::to_vec).collect())
                }
                _ => None,
            };
            Ok(vals
                .chunks_exact(s * s)
                .take(rows)
                .enumerate()
                .map(|(i, c)| {
                    let x = match &wide_rows {
                        Some(w) => ModelInput::PixelsWide {
                            pixels: c.to_vec(),
                            wide: w[i].clone(),
                        },
                        None => ModelInput::Pixels(c.to_vec()),
                    };
                    item(i, x)
                })
                .collect())
        }
        InputKind::Strokes => {
            let (shape, vals) = named.remove(signature::STROKES).with_context(|| {
                format!("--input-exprs needs strokes= ({})", p.input_description())
            })?;
            let lengths = named.remove(signature::LENGTHS);
            anyhow::ensure!(
                named.is_empty(),
                "--input-exprs: unknown inputs {:?}; this model reads strokes and lengths",
                named.keys().collect::<Vec<_>>()
            );
            let (n, t) = match shape[..] {
                [n, t, 3] => (n, t),
                [t, 3] => (1, t),
                _ => anyhow::bail!(
                    "--input-exprs: strokes has shape {shape:?}; expected [N, T, 3] or [T, 3]"
                ),
            };
            let lens: Vec<usize> = match lengths {
                Some((_, l)) => {
                    anyhow::ensure!(
                        l.len() == n,
                        "--input-exprs: {} lengths for {n} sequences",
                        l.len()
                    );
                    l.iter().map(|&v| (v.max(0.0) as usize).min(t)).collect()
                }
                None => vec![t; n],
            };
            Ok((0..n)
                .map(|i| {
                    let row = &vals[i * t * 3..(i + 1) * t * 3];
                    let len = lens[i];
                    let col = |c: usize| (0..len).map(|k| row[k * 3 + c]).collect::<Vec<f32>>();
                    item(
                        i,
                        ModelInput::Sequence(StrokeFeatures {
                            dx: col(0),
                            dy: col(1),
                            pen: col(2),
                            len,
                            truncated: false,
                        }),
                    )
                })
                .collect())
        }
    }
}

/// The model input of one record; a wide & deep model also gets the record's metadata vector.
fn model_input(
    p: &Predictor,
    image: Vec<u8>,
    strokes: Option<StrokeFeatures>,
    meta: &Metadata,
) -> anyhow::Result<ModelInput> {
    Ok(match p.input() {
        InputKind::Image { .. } => {
            let pixels = quickdraw_data::features::model_pixels(&image).collect();
            match p.wide() {
                Some(w) => ModelInput::PixelsWide {
                    pixels,
                    wide: w.vector(meta),
                },
                None => ModelInput::Pixels(pixels),
            }
        }
        InputKind::Strokes => ModelInput::Sequence(
            strokes.context("the export is a stroke model but the input has no stroke features")?,
        ),
    })
}

fn run_model(mut a: RunArgs, ctx: Ctx) -> anyhow::Result<()> {
    let _copy = super::local_copy(&mut a.dir)?;
    let dir = resolve_export_dir(&a.dir)?;
    let p = Predictor::load_with(&dir, &a.runtime.resolve()?)
        .with_context(|| format!("loading {}", dir.display()))?;
    let k = a.top_k.clamp(1, p.n_classes());
    let batch = a.batch_size.max(1);
    let mut remaining = a.limit.unwrap_or(usize::MAX);
    let mut out = Printer {
        json: a.json,
        k,
        header_done: false,
    };
    let mut pending: Vec<Item> = Vec::new();
    let mut rejected = 0u64;
    let flush = |pending: &mut Vec<Item>, out: &mut Printer| -> anyhow::Result<()> {
        if !pending.is_empty() {
            let probs = predict(&p, pending)?;
            out.print(&p, pending, &probs)?;
            pending.clear();
        }
        Ok(())
    };
    if let Some(e) = &a.input_exprs {
        for it in items_from_exprs(e, &p)? {
            if remaining == 0 {
                break;
            }
            remaining -= 1;
            pending.push(it);
        }
        flush(&mut pending, &mut out)?;
    }
    let spec = p.info().features;
    for f in &a.input_ndjson {
        let mut r = DrawingReader::open(f, LabelFrom::Word, None)?;
        while remaining > 0 {
            let Some((index, parsed)) = r.next_drawing()? else {
                break;
            };
            let d = match parsed {
                Ok(d) => d,
                Err(rej) => {
                    rejected += 1;
                    if !ctx.quiet {
                        eprintln!("warning: {}:{index}: skipped: {rej}", f.display());
                    }
                    continue;
                }
            };
            let pre = p
                .preprocess(&d.ink)
                .with_context(|| format!("{}:{index}", f.display()))?;
            // Drawings from data files: the metadata as training read it.
            let x = model_input(&p, pre.image, pre.strokes, &Metadata::of_drawing(&d))?;
            let label = (!d.word.is_empty()).then(|| d.word.clone());
            pending.push(Item {
                input: f.display().to_string(),
                index,
                key_id: d.key_id,
                label,
                x,
            });
            remaining -= 1;
            if pending.len() >= batch {
                flush(&mut pending, &mut out)?;
            }
        }
        flush(&mut pending, &mut out)?;
    }
    for f in &a.input_examples {
        let mut r = TfRecordReader::open(f)?;
        let mut buf = Vec::new();
        let mut index = 0u64;
        while remaining > 0 && r.read_into(&mut buf)? {
            index += 1;
            let ex = decode_example(&buf, &spec).with_context(|| {
                format!(
                    "{}: record {index} (features of {})",
                    f.display(),
                    p.input_description()
                )
            })?;
            let label = p
                .labels()
                .get(ex.label as usize)
                .cloned()
                .or_else(|| (!ex.word.is_empty()).then(|| ex.word.clone()));
            let meta = match p.wide() {
                Some(_) => Example::from_bytes(&buf)
                    .map_err(anyhow::Error::from)
                    .and_then(|e| Ok(quickdraw_data::features::metadata(&e)?))
                    .with_context(|| {
                        format!("{}: record {index} (metadata features)", f.display())
                    })?,
                None => Metadata::default(),
            };
            let x = model_input(&p, ex.image, ex.strokes, &meta)?;
            pending.push(Item {
                input: f.display().to_string(),
                index,
                key_id: ex.key_id,
                label,
                x,
            });
            remaining -= 1;
            if pending.len() >= batch {
                flush(&mut pending, &mut out)?;
            }
        }
        flush(&mut pending, &mut out)?;
    }
    if rejected > 0 && !ctx.quiet {
        eprintln!("{rejected} invalid records skipped");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exprs() {
        assert_eq!(
            parse_expr("np.zeros((1, 2,3))").unwrap(),
            (vec![1, 2, 3], vec![0.0; 6])
        );
        assert_eq!(parse_expr("ones([2])").unwrap(), (vec![2], vec![1.0; 2]));
        assert_eq!(
            parse_expr("[[1, 2], [3, 4]]").unwrap(),
            (vec![2, 2], vec![1.0, 2.0, 3.0, 4.0])
        );
        assert!(parse_expr("np.zeros((a,))").is_err());
        assert!(parse_expr("[[1], [2, 3]]").is_err());
    }
}
