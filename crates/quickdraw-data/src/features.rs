//! The feature contract: how one drawing becomes a `tf.train.Example` and back.
//!
//! [`preprocess`] is the single preprocessing path (simplify raw ink, rasterise, stroke
//! features) used by `convert`, training-time decoding checks, `predict`, `model run` and the
//! server; [`encode_example`] / [`decode_example`] define the feature names and types that
//! TensorFlow's `tf.io.parse_single_example` sees.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::drawing::{Drawing, Ink, Stroke};
use crate::example::{Example, Feature, Kind};
use crate::raster::{RasterError, RasterSpec, check as check_raster, rasterize, rasterize_strokes};
use crate::simplify::simplify;
use crate::strokes::{StrokeFeatures, StrokeSpec, stroke_features};
use crate::wide::{self, Metadata};

/// Model inputs are pixel values scaled to [0, 1] (the lecture divides `img_64` by 255).
pub const PIXEL_SCALE: f32 = 1.0 / 255.0;

/// A raster's pixels (0..=255) as model inputs (`pixel * PIXEL_SCALE`): the one conversion
/// used by training, evaluation, export checks, `model run` and the server.
pub fn model_pixels(image: &[u8]) -> impl Iterator<Item = f32> + '_ {
    image.iter().map(|&v| v as f32 * PIXEL_SCALE)
}

/// Feature names (the lecture's, see `convert` in the AMLD 2018 workshop notebooks).
pub const LABEL: &str = "label";
pub const WORD: &str = "word";
pub const COUNTRYCODE: &str = "countrycode";
pub const RECOGNIZED: &str = "recognized";
pub const TIMESTAMP: &str = "timestamp";
pub const KEY_ID: &str = "key_id";
pub const STROKE_X: &str = "stroke_x";
pub const STROKE_Y: &str = "stroke_y";
pub const STROKE_Z: &str = "stroke_z";
pub const STROKE_LEN: &str = "stroke_len";
/// Number of strokes (drawings with strokes only): a column of the wide model.
pub const STROKE_COUNT: &str = "stroke_count";
/// Milliseconds from the first to the last point (raw drawings with timestamps only).
pub const DURATION_MS: &str = "duration_ms";

/// `img_64` for 64x64 images, `img_<size>` in general.
pub fn image_key(size: u32) -> String {
    format!("img_{size}")
}

/// How the image feature is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageEncoding {
    /// `int64_list` of `size*size` values 0..=255, row-major (the lecture's format).
    Int64,
    /// One `bytes_list` entry of `size*size` raw uint8 (`tf.io.decode_raw(x, tf.uint8)`).
    Bytes,
    /// One `bytes_list` entry holding a grey-scale PNG (`tf.io.decode_png`).
    Png,
}

impl std::str::FromStr for ImageEncoding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "int64" => Ok(ImageEncoding::Int64),
            "bytes" => Ok(ImageEncoding::Bytes),
            "png" => Ok(ImageEncoding::Png),
            _ => Err(format!(
                "unknown image encoding {s:?} (expected int64, bytes or png)"
            )),
        }
    }
}

/// Everything that decides the bytes of an example; stored in the dataset manifest and copied
/// into exports so serving preprocesses exactly like training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FeatureSpec {
    pub raster: RasterSpec,
    pub image_encoding: ImageEncoding,
    /// `Some` when the stroke features are written.
    pub strokes: Option<StrokeSpec>,
    /// Raw drawings (with timing or non-integer / out-of-0..255 coordinates) are first
    /// simplified with Google's algorithm, so raw and simplified inputs give the same examples.
    pub simplify_raw: bool,
}

impl Default for FeatureSpec {
    fn default() -> Self {
        FeatureSpec {
            raster: RasterSpec::default(),
            image_encoding: ImageEncoding::Int64,
            strokes: None,
            simplify_raw: true,
        }
    }
}

/// Model-ready features of one drawing.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessed {
    /// `size * size` grey values, row-major.
    pub image: Vec<u8>,
    pub strokes: Option<StrokeFeatures>,
}

#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    #[error(transparent)]
    Raster(#[from] RasterError),
    #[error("stroke features need pen strokes, but this record is an image only (numpy_bitmap)")]
    NoStrokes,
    #[error("not a tf.train.Example: {0}")]
    Proto(#[from] prost::DecodeError),
    #[error("feature {0:?} is missing")]
    Missing(String),
    #[error("feature {key:?} is {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("feature {key:?} has {found} values, expected {expected}")]
    WrongLength {
        key: String,
        expected: usize,
        found: usize,
    },
    #[error("feature {key:?}: {what}")]
    BadValue { key: String, what: String },
}

/// True when strokes look like raw data rather than Google's simplified format.
pub fn is_raw(strokes: &[Stroke]) -> bool {
    strokes.iter().any(|s| {
        s.t.is_some()
            || s.x
                .iter()
                .chain(&s.y)
                .any(|&v| v.fract() != 0.0 || !(0.0..=255.0).contains(&v))
    })
}

/// The one preprocessing path: raw ink is simplified, then rasterised (and turned into stroke
/// features when the spec asks for them).
pub fn preprocess(ink: &Ink, spec: &FeatureSpec) -> Result<Preprocessed, FeatureError> {
    match ink {
        Ink::Strokes(strokes) => {
            let simplified;
            let strokes = if spec.simplify_raw && is_raw(strokes) {
                simplified = simplify(strokes);
                &simplified[..]
            } else {
                &strokes[..]
            };
            check_raster(&spec.raster)?;
            let image = rasterize_strokes(strokes, &spec.raster);
            let strokes = spec.strokes.map(|s| stroke_features(strokes, &s));
            Ok(Preprocessed { image, strokes })
        }
        Ink::Bitmap(_) => {
            if spec.strokes.is_some() {
                return Err(FeatureError::NoStrokes);
            }
            Ok(Preprocessed {
                image: rasterize(ink, &spec.raster)?,
                strokes: None,
            })
        }
    }
}

/// Builds the serialized `tf.train.Example` of a drawing.
///
/// This is the conversion hot path, so the protobuf bytes are written directly (the wire format
/// of example.proto is four nested length-delimited messages): about ten times faster than
/// building the prost message, whose output it equals byte for byte (tested against
/// [`encode_example_prost`]). Features are written in key order, as prost's `BTreeMap` does.
pub fn encode_example(d: &Drawing, label: i64, p: &Preprocessed, spec: &FeatureSpec) -> Vec<u8> {
    let mut out = Vec::new();
    encode_example_into(d, label, p, spec, &mut out);
    out
}

/// The value list of one feature, before it is written.
enum List<'a> {
    /// Small lists (scalars, strings, stroke floats), already encoded.
    Encoded(Vec<u8>),
    /// The image as packed int64 varints (`len` bytes), written straight into the output.
    ImageInt64 { pixels: &'a [u8], len: usize },
}

impl List<'_> {
    fn len(&self) -> usize {
        match self {
            List::Encoded(b) => b.len(),
            List::ImageInt64 { len, .. } => 1 + varint_len(*len as u64) + len,
        }
    }
}

/// [`encode_example`], appending to `out` (so a caller can frame records in one buffer with no
/// copy). Every length prefix is computed before anything is written, so each byte of the
/// ~5 KB image list is written once, in place.
pub fn encode_example_into(
    d: &Drawing,
    label: i64,
    p: &Preprocessed,
    spec: &FeatureSpec,
    out: &mut Vec<u8>,
) {
    const BYTES: u8 = 0x0a;
    const FLOATS: u8 = 0x12;
    const INT64S: u8 = 0x1a;
    let img_key = image_key(spec.raster.size);
    // Sorted keys: countrycode, duration_ms, img_<n>, key_id, label, recognized, stroke_count,
    // stroke_len, stroke_x, stroke_y, stroke_z, timestamp, word.
    let stroke_count = wide::stroke_count(&d.ink);
    let duration = wide::duration_ms(&d.ink);
    let mut keys: Vec<&str> = vec![
        COUNTRYCODE,
        &img_key,
        KEY_ID,
        LABEL,
        RECOGNIZED,
        TIMESTAMP,
        WORD,
    ];
    if p.strokes.is_some() {
        keys.extend([STROKE_LEN, STROKE_X, STROKE_Y, STROKE_Z]);
    }
    if stroke_count.is_some() {
        keys.push(STROKE_COUNT);
    }
    if duration.is_some() {
        keys.push(DURATION_MS);
    }
    keys.sort_unstable();
    let encoded = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = Vec::new();
        f(&mut b);
        List::Encoded(b)
    };
    let lists: Vec<(&str, u8, List)> = keys
        .into_iter()
        .map(|key| match key {
            COUNTRYCODE => (
                key,
                BYTES,
                encoded(&|b| put_bytes_list(b, d.countrycode.as_bytes())),
            ),
            KEY_ID => (
                key,
                INT64S,
                encoded(&|b| put_int64_list(b, &[d.key_id as i64])),
            ),
            LABEL => (key, INT64S, encoded(&|b| put_int64_list(b, &[label]))),
            RECOGNIZED => (
                key,
                INT64S,
                encoded(&|b| put_int64_list(b, &[d.recognized as i64])),
            ),
            TIMESTAMP => (key, INT64S, encoded(&|b| put_int64_list(b, &[d.timestamp]))),
            STROKE_COUNT => (
                key,
                INT64S,
                encoded(&|b| put_int64_list(b, &[stroke_count.unwrap_or(0) as i64])),
            ),
            DURATION_MS => (
                key,
                INT64S,
                encoded(&|b| put_int64_list(b, &[duration.unwrap_or(0) as i64])),
            ),
            WORD => (
                key,
                BYTES,
                encoded(&|b| put_bytes_list(b, d.word.as_bytes())),
            ),
            STROKE_LEN | STROKE_X | STROKE_Y | STROKE_Z => {
                let s = p
                    .strokes
                    .as_ref()
                    .expect("keys include strokes only when present");
                match key {
                    STROKE_LEN => (
                        key,
                        INT64S,
                        encoded(&|b| put_int64_list(b, &[s.len as i64])),
                    ),
                    STROKE_X => (key, FLOATS, encoded(&|b| put_float_list(b, &s.dx))),
                    STROKE_Y => (key, FLOATS, encoded(&|b| put_float_list(b, &s.dy))),
                    _ => (key, FLOATS, encoded(&|b| put_float_list(b, &s.pen))),
                }
            }
            _ => match spec.image_encoding {
                // Packed varints of 0..=255: one byte below 128, two above.
                ImageEncoding::Int64 => (
                    key,
                    INT64S,
                    List::ImageInt64 {
                        pixels: &p.image,
                        len: p.image.len() + count_high_bytes(&p.image),
                    },
                ),
                ImageEncoding::Bytes => (key, BYTES, encoded(&|b| put_bytes_list(b, &p.image))),
                ImageEncoding::Png => {
                    let png =
                        crate::image::encode_grey(&p.image, spec.raster.size, spec.raster.size);
                    (key, BYTES, encoded(&|b| put_bytes_list(b, &png)))
                }
            },
        })
        .collect();
    // MapEntry { key = 1; value = 2 (Feature { <kind> = List }) }.
    let feature_len = |l: &List| 1 + varint_len(l.len() as u64) + l.len();
    let entry_len = |key: &str, l: &List| {
        let f = feature_len(l);
        1 + varint_len(key.len() as u64) + key.len() + 1 + varint_len(f as u64) + f
    };
    let features_len: usize = lists
        .iter()
        .map(|(k, _, l)| {
            let e = entry_len(k, l);
            1 + varint_len(e as u64) + e
        })
        .sum();
    out.reserve(1 + varint_len(features_len as u64) + features_len);
    // Example { features = 1 (Features { feature = 1 (map entries) }) }.
    out.push(0x0a);
    put_varint(out, features_len as u64);
    for (key, kind, list) in &lists {
        out.push(0x0a);
        put_varint(out, entry_len(key, list) as u64);
        out.push(0x0a);
        put_varint(out, key.len() as u64);
        out.extend_from_slice(key.as_bytes());
        out.push(0x12);
        put_varint(out, feature_len(list) as u64);
        out.push(*kind);
        put_varint(out, list.len() as u64);
        match list {
            List::Encoded(b) => out.extend_from_slice(b),
            List::ImageInt64 { pixels, len } => {
                out.push(0x0a);
                put_varint(out, *len as u64);
                put_packed_pixels(out, pixels, *len);
            }
        }
    }
}

/// How many bytes are 128 or more (each is a two-byte varint), eight at a time: the byte-wise
/// sum compiles to slow widening code on the baseline x86-64 target.
fn count_high_bytes(px: &[u8]) -> usize {
    const LOW: u64 = 0x0101_0101_0101_0101;
    let mut blocks = px.chunks_exact(8);
    let mut n = 0usize;
    for c in &mut blocks {
        let w = u64::from_le_bytes(c.try_into().expect("chunks of 8"));
        // One bit per byte, then summed into the top byte by the multiplication (at most 8).
        n += (((w >> 7) & LOW).wrapping_mul(LOW) >> 56) as usize;
    }
    n + blocks.remainder().iter().filter(|&&v| v >= 0x80).count()
}

/// Appends `pixels` as packed int64 varints (`len` bytes: one per pixel below 128, two above).
fn put_packed_pixels(b: &mut Vec<u8>, pixels: &[u8], len: usize) {
    // Branch-free: a byte >= 0x80 already has its continuation bit set and is followed by 0x01;
    // a smaller one is the whole varint and its speculative 0x01 is overwritten by the next
    // pixel (or truncated at the end).
    let start = b.len();
    b.resize(start + len + 1, 0);
    let out = &mut b[start..];
    let mut i = 0;
    let one = |out: &mut [u8], i: &mut usize, v: u8| {
        out[*i] = v;
        out[*i + 1] = 1;
        *i += 1 + (v >> 7) as usize;
    };
    // Eight pixels below 0x80 (most of a drawing: the blank background) are eight one-byte
    // varints: copied as they are.
    let mut blocks = pixels.chunks_exact(8);
    for c in &mut blocks {
        let c: &[u8; 8] = c.try_into().expect("chunks of 8");
        if u64::from_le_bytes(*c) & 0x8080_8080_8080_8080 == 0 {
            out[i..i + 8].copy_from_slice(c);
            i += 8;
        } else {
            c.iter().for_each(|&v| one(out, &mut i, v));
        }
    }
    blocks.remainder().iter().for_each(|&v| one(out, &mut i, v));
    debug_assert_eq!(i, len);
    b.truncate(start + len);
}

fn varint_len(v: u64) -> usize {
    ((64 - (v | 1).leading_zeros() as usize) + 6) / 7
}

fn put_varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push((v as u8) | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

fn put_bytes_list(b: &mut Vec<u8>, v: &[u8]) {
    b.push(0x0a);
    put_varint(b, v.len() as u64);
    b.extend_from_slice(v);
}

fn put_int64_list(b: &mut Vec<u8>, v: &[i64]) {
    if v.is_empty() {
        return;
    }
    let n: usize = v.iter().map(|&x| varint_len(x as u64)).sum();
    b.push(0x0a);
    put_varint(b, n as u64);
    for &x in v {
        put_varint(b, x as u64);
    }
}

fn put_float_list(b: &mut Vec<u8>, v: &[f32]) {
    if v.is_empty() {
        return;
    }
    b.push(0x0a);
    put_varint(b, 4 * v.len() as u64);
    for x in v {
        b.extend_from_slice(&x.to_le_bytes());
    }
}

/// The same example built as a prost message: the reference [`encode_example`] is tested against.
pub fn encode_example_prost(
    d: &Drawing,
    label: i64,
    p: &Preprocessed,
    spec: &FeatureSpec,
) -> Vec<u8> {
    let mut f = BTreeMap::new();
    f.insert(LABEL.to_string(), Feature::int64(label));
    let img = match spec.image_encoding {
        ImageEncoding::Int64 => Feature::int64s(p.image.iter().map(|&v| v as i64).collect()),
        ImageEncoding::Bytes => Feature::bytes(p.image.clone()),
        ImageEncoding::Png => Feature::bytes(crate::image::encode_grey(
            &p.image,
            spec.raster.size,
            spec.raster.size,
        )),
    };
    f.insert(image_key(spec.raster.size), img);
    f.insert(WORD.to_string(), Feature::bytes(d.word.as_bytes().to_vec()));
    f.insert(
        COUNTRYCODE.to_string(),
        Feature::bytes(d.countrycode.as_bytes().to_vec()),
    );
    f.insert(RECOGNIZED.to_string(), Feature::int64(d.recognized as i64));
    f.insert(TIMESTAMP.to_string(), Feature::int64(d.timestamp));
    f.insert(KEY_ID.to_string(), Feature::int64(d.key_id as i64));
    if let Some(n) = wide::stroke_count(&d.ink) {
        f.insert(STROKE_COUNT.to_string(), Feature::int64(n as i64));
    }
    if let Some(ms) = wide::duration_ms(&d.ink) {
        f.insert(DURATION_MS.to_string(), Feature::int64(ms as i64));
    }
    if let Some(s) = &p.strokes {
        f.insert(STROKE_X.to_string(), Feature::floats(s.dx.clone()));
        f.insert(STROKE_Y.to_string(), Feature::floats(s.dy.clone()));
        f.insert(STROKE_Z.to_string(), Feature::floats(s.pen.clone()));
        f.insert(STROKE_LEN.to_string(), Feature::int64(s.len as i64));
    }
    Example::from_features(f).to_bytes()
}

/// One example read back from a shard.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedExample {
    pub label: i64,
    pub image: Vec<u8>,
    pub strokes: Option<StrokeFeatures>,
    pub word: String,
    pub countrycode: String,
    pub recognized: bool,
    pub timestamp: i64,
    pub key_id: u64,
}

fn int64s<'a>(ex: &'a Example, key: &str) -> Result<&'a [i64], FeatureError> {
    match ex.get(key).map(|f| (&f.kind, f)) {
        Some((Some(Kind::Int64List(l)), _)) => Ok(&l.value),
        Some((_, f)) => Err(FeatureError::WrongType {
            key: key.into(),
            expected: "int64_list",
            found: f.kind_name(),
        }),
        None => Err(FeatureError::Missing(key.into())),
    }
}

/// The single value of an int64 feature (`label`, `key_id`, ...), with the reason when it is
/// missing, of another type or not of length one.
pub fn int64_feature(ex: &Example, key: &str) -> Result<i64, FeatureError> {
    match int64s(ex, key)? {
        [v] => Ok(*v),
        v => Err(FeatureError::WrongLength {
            key: key.into(),
            expected: 1,
            found: v.len(),
        }),
    }
}

fn bytes<'a>(ex: &'a Example, key: &str) -> Result<&'a [u8], FeatureError> {
    match ex.get(key).map(|f| (&f.kind, f)) {
        Some((Some(Kind::BytesList(l)), _)) => match &l.value[..] {
            [v] => Ok(v),
            v => Err(FeatureError::WrongLength {
                key: key.into(),
                expected: 1,
                found: v.len(),
            }),
        },
        Some((_, f)) => Err(FeatureError::WrongType {
            key: key.into(),
            expected: "bytes_list",
            found: f.kind_name(),
        }),
        None => Err(FeatureError::Missing(key.into())),
    }
}

fn floats<'a>(ex: &'a Example, key: &str) -> Result<&'a [f32], FeatureError> {
    match ex.get(key).map(|f| (&f.kind, f)) {
        Some((Some(Kind::FloatList(l)), _)) => Ok(&l.value),
        Some((_, f)) => Err(FeatureError::WrongType {
            key: key.into(),
            expected: "float_list",
            found: f.kind_name(),
        }),
        None => Err(FeatureError::Missing(key.into())),
    }
}

/// The wide model's metadata of an example: `countrycode`, `recognized`, [`STROKE_COUNT`] and
/// [`DURATION_MS`], each `None` when the example does not have it (an empty country code is
/// missing too); a feature of the wrong type or length is an error.
pub fn metadata(ex: &Example) -> Result<Metadata, FeatureError> {
    // An absent feature and an empty value list (how some writers say "missing") are missing.
    let optional = |r: Result<i64, FeatureError>| match r {
        Err(FeatureError::Missing(_)) | Err(FeatureError::WrongLength { found: 0, .. }) => Ok(None),
        r => r.map(Some),
    };
    let count = |key: &str| -> Result<Option<u32>, FeatureError> {
        optional(int64_feature(ex, key))?
            .map(|v| {
                u32::try_from(v).map_err(|_| FeatureError::BadValue {
                    key: key.into(),
                    what: format!("{v} is not a count"),
                })
            })
            .transpose()
    };
    let countrycode = match bytes(ex, COUNTRYCODE) {
        Err(FeatureError::Missing(_)) | Err(FeatureError::WrongLength { found: 0, .. }) => None,
        r => Some(String::from_utf8_lossy(r?).into_owned()).filter(|c| !c.is_empty()),
    };
    Ok(Metadata {
        countrycode,
        recognized: optional(int64_feature(ex, RECOGNIZED))?.map(|v| v != 0),
        stroke_count: count(STROKE_COUNT)?,
        duration_ms: count(DURATION_MS)?,
    })
}

/// Decodes only the image (and label) of an example: the hot path of training.
pub fn decode_image(ex: &Example, spec: &FeatureSpec) -> Result<Vec<u8>, FeatureError> {
    let key = image_key(spec.raster.size);
    let n = spec.raster.pixels();
    let image = match spec.image_encoding {
        ImageEncoding::Int64 => {
            let v = int64s(ex, &key)?;
            if let Some(bad) = v.iter().find(|&&p| !(0..=255).contains(&p)) {
                return Err(FeatureError::BadValue {
                    key,
                    what: format!("pixel value {bad} outside 0..=255"),
                });
            }
            v.iter().map(|&p| p as u8).collect()
        }
        ImageEncoding::Bytes => bytes(ex, &key)?.to_vec(),
        ImageEncoding::Png => crate::image::decode_grey(bytes(ex, &key)?, spec.raster.size)
            .map_err(|what| FeatureError::BadValue {
                key: key.clone(),
                what,
            })?,
    };
    if image.len() != n {
        return Err(FeatureError::WrongLength {
            key,
            expected: n,
            found: image.len(),
        });
    }
    Ok(image)
}

/// Decodes a serialized example written by [`encode_example`] with the same spec.
pub fn decode_example(bytes_: &[u8], spec: &FeatureSpec) -> Result<DecodedExample, FeatureError> {
    let ex = Example::from_bytes(bytes_)?;
    let image = decode_image(&ex, spec)?;
    let strokes = match spec.strokes {
        None => None,
        Some(_) => {
            let dx = floats(&ex, STROKE_X)?.to_vec();
            let dy = floats(&ex, STROKE_Y)?.to_vec();
            let pen = floats(&ex, STROKE_Z)?.to_vec();
            let len = int64_feature(&ex, STROKE_LEN)?;
            for (k, v) in [(STROKE_X, &dx), (STROKE_Y, &dy), (STROKE_Z, &pen)] {
                if v.len() as i64 != len {
                    return Err(FeatureError::WrongLength {
                        key: k.into(),
                        expected: len.max(0) as usize,
                        found: v.len(),
                    });
                }
            }
            Some(StrokeFeatures {
                dx,
                dy,
                pen,
                len: len as usize,
                truncated: false,
            })
        }
    };
    let text = |k: &str| -> Result<String, FeatureError> {
        String::from_utf8(bytes(&ex, k)?.to_vec()).map_err(|_| FeatureError::BadValue {
            key: k.into(),
            what: "not UTF-8".into(),
        })
    };
    Ok(DecodedExample {
        label: int64_feature(&ex, LABEL)?,
        image,
        strokes,
        word: text(WORD)?,
        countrycode: text(COUNTRYCODE)?,
        recognized: int64_feature(&ex, RECOGNIZED)? != 0,
        timestamp: int64_feature(&ex, TIMESTAMP)?,
        key_id: int64_feature(&ex, KEY_ID)? as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raster::RasterMode;

    #[test]
    fn high_bytes_are_counted_in_blocks_and_remainder() {
        let px: Vec<u8> = (0..=255u8).chain([128, 0, 255]).collect();
        assert_eq!(count_high_bytes(&px), 128 + 2);
        assert_eq!(count_high_bytes(&[255; 8]), 8);
        assert_eq!(count_high_bytes(&[127; 13]), 0);
        assert_eq!(count_high_bytes(&[]), 0);
    }

    fn drawing() -> Drawing {
        Drawing {
            key_id: 5201136883597312,
            word: "cat".into(),
            countrycode: "VE".into(),
            timestamp: 1488497110,
            recognized: true,
            ink: Ink::Strokes(vec![
                Stroke::new(vec![0., 100., 255.], vec![0., 200., 10.]),
                Stroke::new(vec![30., 40.], vec![250., 255.]),
            ]),
        }
    }

    #[test]
    fn round_trip_every_encoding() {
        for enc in [
            ImageEncoding::Int64,
            ImageEncoding::Bytes,
            ImageEncoding::Png,
        ] {
            let spec = FeatureSpec {
                raster: RasterSpec::new(RasterMode::Amld, 32, None),
                image_encoding: enc,
                strokes: Some(StrokeSpec::default()),
                simplify_raw: true,
            };
            let d = drawing();
            let p = preprocess(&d.ink, &spec).unwrap();
            assert!(p.image.iter().any(|&v| v == 255));
            let bytes = encode_example(&d, 7, &p, &spec);
            let back = decode_example(&bytes, &spec).unwrap();
            assert_eq!(back.label, 7);
            assert_eq!(back.image, p.image, "{enc:?}");
            assert_eq!(back.key_id, d.key_id);
            assert_eq!(back.word, "cat");
            assert_eq!(back.strokes.unwrap().len, 4, "5 points give 4 deltas");
            let m = metadata(&Example::from_bytes(&bytes).unwrap()).unwrap();
            assert_eq!(m, Metadata::of_drawing(&d));
            assert_eq!((m.stroke_count, m.duration_ms), (Some(2), None));
        }
        // An example without the metadata (an older dataset) reads as missing values.
        let mut f = BTreeMap::new();
        f.insert(LABEL.to_string(), Feature::int64(1));
        let m = metadata(&Example::from_features(f.clone())).unwrap();
        assert_eq!(m, Metadata::default());
        // Empty value lists are missing too; two values are an error naming the feature.
        f.insert(RECOGNIZED.to_string(), Feature::int64s(vec![]));
        f.insert(
            COUNTRYCODE.to_string(),
            Feature {
                kind: Some(Kind::BytesList(crate::example::BytesList { value: vec![] })),
            },
        );
        let m = metadata(&Example::from_features(f.clone())).unwrap();
        assert_eq!(m, Metadata::default());
        f.insert(STROKE_COUNT.to_string(), Feature::int64s(vec![1, 2]));
        let err = metadata(&Example::from_features(f)).unwrap_err();
        assert!(err.to_string().contains("stroke_count"), "{err}");
    }

    #[test]
    fn hand_written_encoding_equals_prost() {
        // Sizes 64 and 13: the int64 packer's 8-pixel blocks and its remainder path.
        for (enc, size) in [
            (ImageEncoding::Int64, 64),
            (ImageEncoding::Int64, 13),
            (ImageEncoding::Bytes, 64),
            (ImageEncoding::Png, 64),
        ] {
            for strokes in [None, Some(StrokeSpec::default())] {
                let spec = FeatureSpec {
                    raster: RasterSpec::new(RasterMode::Default, size, None),
                    image_encoding: enc,
                    strokes,
                    simplify_raw: true,
                };
                for (i, mut d) in [
                    drawing(),
                    Drawing {
                        countrycode: String::new(),
                        timestamp: -5,
                        key_id: u64::MAX,
                        ..drawing()
                    },
                    // Raw with timestamps: duration_ms is written too.
                    Drawing {
                        ink: Ink::Strokes(vec![Stroke {
                            x: vec![0.5, 100.0, 300.0],
                            y: vec![0.0, 200.0, 10.0],
                            t: Some(vec![0.0, 40.0, 1300.0]),
                        }]),
                        ..drawing()
                    },
                ]
                .into_iter()
                .enumerate()
                {
                    d.recognized = i != 1;
                    let p = preprocess(&d.ink, &spec).unwrap();
                    assert!(
                        p.image.iter().any(|&v| v > 128)
                            && p.image.iter().any(|&v| v > 0 && v < 128)
                    );
                    assert_eq!(
                        encode_example(&d, 300, &p, &spec),
                        encode_example_prost(&d, 300, &p, &spec),
                        "{enc:?} {strokes:?}"
                    );
                }
            }
        }
        assert_eq!(
            (
                varint_len(0),
                varint_len(127),
                varint_len(128),
                varint_len(u64::MAX)
            ),
            (1, 1, 2, 10)
        );
    }

    #[test]
    fn wrong_features_are_named() {
        let spec = FeatureSpec::default();
        let mut f = BTreeMap::new();
        f.insert(LABEL.to_string(), Feature::bytes(b"x".to_vec()));
        let err = decode_example(&Example::from_features(f).to_bytes(), &spec).unwrap_err();
        assert!(err.to_string().contains("img_64"), "{err}");
        let mut f = BTreeMap::new();
        f.insert("img_64".to_string(), Feature::int64s(vec![0; 10]));
        let err = decode_example(&Example::from_features(f).to_bytes(), &spec).unwrap_err();
        assert!(
            err.to_string().contains("10 values, expected 4096"),
            "{err}"
        );
    }

    #[test]
    fn raw_detection() {
        assert!(!is_raw(&[Stroke::new(vec![0., 255.], vec![3., 4.])]));
        assert!(is_raw(&[Stroke::new(vec![0.5], vec![3.])]));
        assert!(is_raw(&[Stroke::new(vec![300.], vec![3.])]));
    }
}
