//! `quickdraw inspect`: print the records of any supported input or TFRecord shard, and render a
//! labelled grid of drawings as PNG so a person can look at the data.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use quickdraw_data::example::{Example, Kind};
use quickdraw_data::features::{self, FeatureSpec, ImageEncoding, decode_example, preprocess};
use quickdraw_data::ingest::{UnitReader, class_from_path, ndjson::format_timestamp, parse_unit};
use quickdraw_data::manifest::DatasetManifest;
use quickdraw_data::raster::{RasterMode, RasterSpec};
use quickdraw_data::tfrecord::{TfRecordReader, masked_crc32c};
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
    let shown = if is_tfrecord(&a.file)? {
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
        let bytes = grid_png(&cells, a.cols.max(1));
        std::fs::write(png, bytes).with_context(|| format!("writing {}", png.display()))?;
        eprintln!(
            "wrote a grid of {} drawings to {}",
            shown.len(),
            png.display()
        );
    }
    Ok(())
}

/// A TFRecord file starts with a length whose masked CRC follows it.
pub fn is_tfrecord(path: &Path) -> anyhow::Result<bool> {
    let mut head = [0u8; 12];
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut n = 0;
    while n < 12 {
        match f
            .read(&mut head[n..])
            .with_context(|| format!("reading {}", path.display()))?
        {
            0 => break,
            k => n += k,
        }
    }
    Ok(n == 12
        && masked_crc32c(&head[..8]) == u32::from_le_bytes([head[8], head[9], head[10], head[11]]))
}

fn read_input(a: &InspectArgs) -> anyhow::Result<Vec<Shown>> {
    let class = class_from_path(&a.file);
    let mut r = UnitReader::open(&a.file, None)?;
    let spec = FeatureSpec {
        raster: RasterSpec::new(a.raster, 64, None),
        ..FeatureSpec::default()
    };
    let mut out = Vec::new();
    let mut seen = 0;
    while let Some(u) = r.next_record()? {
        seen += 1;
        if seen <= a.skip {
            continue;
        }
        if out.len() >= a.limit {
            break;
        }
        let loc = format!("{}:{}", a.file.display(), u.index);
        match parse_unit(r.format, &u, &class) {
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

/// Renders images with captions into a grid (white background, black ink, 8x8 bitmap font).
pub fn grid_png(cells: &[(&str, &[u8], u32)], cols: usize) -> Vec<u8> {
    const CELL: usize = 128;
    const CAPTION: usize = 12;
    const PAD: usize = 4;
    let cols = cols.min(cells.len().max(1));
    let rows = cells.len().div_ceil(cols).max(1);
    let (w, h) = (
        cols * (CELL + PAD) + PAD,
        rows * (CELL + CAPTION + PAD) + PAD,
    );
    let mut img = vec![255u8; w * h];
    for (i, (caption, pixels, size)) in cells.iter().enumerate() {
        let (cx, cy) = (
            PAD + (i % cols) * (CELL + PAD),
            PAD + (i / cols) * (CELL + CAPTION + PAD),
        );
        draw_text(&mut img, w, cx, cy + 2, caption, CELL / 8);
        let size = *size as usize;
        for y in 0..CELL {
            for x in 0..CELL {
                let v = pixels
                    .get((y * size / CELL) * size + x * size / CELL)
                    .copied()
                    .unwrap_or(0);
                img[(cy + CAPTION + y) * w + cx + x] = 255 - v;
            }
        }
        // Frame.
        for x in 0..CELL {
            img[(cy + CAPTION) * w + cx + x] = 160;
            img[(cy + CAPTION + CELL - 1) * w + cx + x] = 160;
        }
        for y in 0..CELL {
            img[(cy + CAPTION + y) * w + cx] = 160;
            img[(cy + CAPTION + y) * w + cx + CELL - 1] = 160;
        }
    }
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w as u32, h as u32);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    let mut wr = enc.write_header().expect("PNG header into memory");
    wr.write_image_data(&img).expect("PNG data into memory");
    drop(wr);
    out
}

fn draw_text(img: &mut [u8], w: usize, x0: usize, y0: usize, text: &str, max_chars: usize) {
    use font8x8::UnicodeFonts;
    for (i, ch) in text.chars().take(max_chars).enumerate() {
        let glyph = font8x8::BASIC_FONTS
            .get(ch)
            .or_else(|| font8x8::BASIC_FONTS.get('?'))
            .unwrap_or([0; 8]);
        for (gy, row) in glyph.iter().enumerate() {
            for gx in 0..8 {
                if row & (1 << gx) != 0 {
                    let (x, y) = (x0 + i * 8 + gx, y0 + gy);
                    if let Some(p) = img.get_mut(y * w + x) {
                        *p = 0;
                    }
                }
            }
        }
    }
}
