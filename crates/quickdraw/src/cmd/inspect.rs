//! `quickdraw inspect`: print the records of any supported input or TFRecord shard, and render a
//! labelled grid of drawings as PNG so a person can look at the data.

use std::path::{Path, PathBuf};

use anyhow::Context;
use quickdraw_data::example::{Example, Kind};
use quickdraw_data::features::{self, FeatureSpec, ImageEncoding, decode_example, preprocess};
use quickdraw_data::ingest::{DrawingReader, LabelFrom, ndjson::format_timestamp};
use quickdraw_data::manifest::DatasetManifest;
use quickdraw_data::raster::{RasterMode, RasterSpec};
use quickdraw_data::tfrecord::{TfRecordReader, is_tfrecord};
use quickdraw_data::{Drawing, Ink};
use serde_json::json;

use super::Ctx;

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// An input file (NDJSON, .bin, .npy, .gz) or a TFRecord shard.
    pub file: PathBuf,
    /// Records to show.
    #[arg(long, short = 'n', default_value_t = 10)]
    pub limit: usize,
    /// Records to skip first.
    #[arg(long, default_value_t = 0)]
    pub skip: usize,
    /// One JSON object per record instead of text.
    #[arg(long)]
    pub json: bool,
    /// Render the shown records as a labelled grid into this PNG file.
    #[arg(long)]
    pub png: Option<PathBuf>,
    /// Grid columns for --png.
    #[arg(long, default_value_t = 8)]
    pub cols: usize,
    /// Raster mode used to draw input records for --png (shards show their stored images).
    #[arg(long, default_value = "default")]
    pub raster: RasterMode,
}

/// One record ready to show: a text line, a JSON object and an image.
struct Shown {
    caption: String,
    json: serde_json::Value,
    text: String,
    image: Vec<u8>,
    size: u32,
}

pub fn run(a: InspectArgs, _ctx: Ctx) -> anyhow::Result<()> {
    let shown = if is_tfrecord(&a.file).with_context(|| format!("reading {}", a.file.display()))? {
        read_shard(&a)?
    } else {
        read_input(&a)?
    };
    for s in &shown {
        if a.json {
            println!("{}", s.json);
        } else {
            println!("{}", s.text);
        }
    }
    if let Some(png) = &a.png {
        let cells: Vec<(&str, &[u8], u32)> = shown
            .iter()
            .map(|s| (s.caption.as_str(), &s.image[..], s.size))
            .collect();
        let bytes = quickdraw_data::image::captioned_grid(&cells, a.cols.max(1));
        std::fs::write(png, bytes).with_context(|| format!("writing {}", png.display()))?;
        eprintln!(
            "wrote a grid of {} drawings to {}",
            shown.len(),
            png.display()
        );
    }
    Ok(())
}

fn read_input(a: &InspectArgs) -> anyhow::Result<Vec<Shown>> {
    let mut r = DrawingReader::open(&a.file, LabelFrom::Word, None)?;
    let spec = FeatureSpec {
        raster: RasterSpec::new(a.raster, 64, None),
        ..FeatureSpec::default()
    };
    let mut out = Vec::new();
    let mut seen = 0;
    while let Some((index, parsed)) = r.next_drawing()? {
        seen += 1;
        if seen <= a.skip {
            continue;
        }
        if out.len() >= a.limit {
            break;
        }
        let loc = format!("{}:{}", a.file.display(), index);
        match parsed {
            Ok(d) => {
                let image = preprocess(&d.ink, &spec).map(|p| p.image).unwrap_or_else(|_| vec![0; spec.raster.pixels()]);
                out.push(Shown {
                    caption: d.word.clone(),
                    json: drawing_json(&d, &loc),
                    text: drawing_text(&d, &loc),
                    image,
                    size: spec.raster.size,
                });
            }
            Err(rej) => out.push(Shown {
                caption: format!("REJECT {}", rej.reason),
                json: json!({"location": loc, "rejected": rej.reason.as_str(), "detail": rej.detail}),
                text: format!("{loc}: REJECTED {rej}"),
                image: vec![0; spec.raster.pixels()],
                size: spec.raster.size,
            }),
        }
    }
    Ok(out)
}

fn drawing_json(d: &Drawing, loc: &str) -> serde_json::Value {
    let (strokes, kind) = match &d.ink {
        Ink::Strokes(s) => (
            s.len(),
            if features::is_raw(s) {
                "raw"
            } else {
                "simplified"
            },
        ),
        Ink::Bitmap(_) => (0, "bitmap"),
    };
    json!({
        "location": loc, "key_id": d.key_id.to_string(), "word": d.word, "countrycode": d.countrycode,
        "recognized": d.recognized, "timestamp": format_timestamp(d.timestamp), "kind": kind,
        "strokes": strokes, "points": d.n_points(),
    })
}

fn drawing_text(d: &Drawing, loc: &str) -> String {
    let what = match &d.ink {
        Ink::Strokes(s) => format!(
            "{} strokes, {} points{}",
            s.len(),
            d.n_points(),
            if features::is_raw(s) { " (raw)" } else { "" }
        ),
        Ink::Bitmap(b) => format!("{0}x{0} bitmap", b.side),
    };
    format!(
        "{loc}: {:?} key_id={} country={} recognized={} time={} {what}",
        d.word,
        d.key_id,
        if d.countrycode.is_empty() {
            "-"
        } else {
            &d.countrycode
        },
        d.recognized,
        format_timestamp(d.timestamp)
    )
}

/// The feature spec of a shard: from the manifest beside it, else guessed from the first record.
fn shard_spec(
    path: &Path,
    first: Option<&[u8]>,
) -> anyhow::Result<(FeatureSpec, Option<Vec<String>>)> {
    if let Some(dir) = path.parent() {
        if dir.join(quickdraw_data::manifest::MANIFEST_FILE).exists() {
            let m = DatasetManifest::load(dir)?;
            return Ok((m.features, Some(m.classes)));
        }
    }
    let Some(first) = first else {
        return Ok((FeatureSpec::default(), None));
    };
    let ex = Example::from_bytes(first)
        .with_context(|| format!("{}: first record is not a tf.train.Example", path.display()))?;
    let feats = ex.features.map(|f| f.feature).unwrap_or_default();
    for (k, f) in &feats {
        let Some(size) = k.strip_prefix("img_").and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let enc = match &f.kind {
            Some(Kind::Int64List(_)) => ImageEncoding::Int64,
            Some(Kind::BytesList(b))
                if b.value.first().is_some_and(|v| v.starts_with(b"\x89PNG")) =>
            {
                ImageEncoding::Png
            }
            _ => ImageEncoding::Bytes,
        };
        let strokes = feats
            .contains_key(features::STROKE_LEN)
            .then(Default::default);
        let spec = FeatureSpec {
            raster: RasterSpec::new(RasterMode::Default, size, None),
            image_encoding: enc,
            strokes,
            simplify_raw: true,
        };
        return Ok((spec, None));
    }
    anyhow::bail!(
        "{}: no img_<size> feature in the first example and no manifest.json beside it",
        path.display()
    )
}

fn read_shard(a: &InspectArgs) -> anyhow::Result<Vec<Shown>> {
    let mut r = TfRecordReader::open(&a.file)?;
    let mut buf = Vec::new();
    let first = if r.read_into(&mut buf)? {
        Some(buf.clone())
    } else {
        None
    };
    let (spec, classes) = shard_spec(&a.file, first.as_deref())?;
    let mut out = Vec::new();
    let mut i = 0usize;
    let mut pending = first;
    loop {
        let rec = match pending.take() {
            Some(b) => b,
            None => {
                if !r.read_into(&mut buf)? {
                    break;
                }
                buf.clone()
            }
        };
        i += 1;
        if i <= a.skip {
            continue;
        }
        if out.len() >= a.limit {
            break;
        }
        let loc = format!("{}#{}", a.file.display(), i);
        let ex =
            decode_example(&rec, &spec).with_context(|| format!("{loc}: decoding the example"))?;
        let class = classes
            .as_ref()
            .and_then(|c| c.get(ex.label as usize))
            .cloned()
            .unwrap_or_else(|| ex.word.clone());
        let ink = ex.image.iter().filter(|&&v| v > 0).count() as f64 / ex.image.len().max(1) as f64;
        let strokes = ex.strokes.as_ref().map(|s| s.len);
        out.push(Shown {
            caption: format!("{} {}", ex.label, class),
            json: json!({
                "location": loc, "label": ex.label, "class": class, "word": ex.word, "key_id": ex.key_id.to_string(),
                "countrycode": ex.countrycode, "recognized": ex.recognized, "timestamp": format_timestamp(ex.timestamp),
                "image_key": features::image_key(spec.raster.size), "ink_share": ink, "stroke_len": strokes,
            }),
            text: format!(
                "{loc}: label={} ({class}) key_id={} word={:?} country={} recognized={} time={} ink={:.1}%{}",
                ex.label,
                ex.key_id,
                ex.word,
                ex.countrycode,
                ex.recognized,
                format_timestamp(ex.timestamp),
                ink * 100.0,
                strokes.map(|n| format!(" stroke_len={n}")).unwrap_or_default()
            ),
            image: ex.image,
            size: spec.raster.size,
        });
    }
    Ok(out)
}
