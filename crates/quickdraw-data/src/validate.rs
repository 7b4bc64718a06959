//! Record validation: every reason a record can be rejected, with the limits that define "sane";
//! and parameter validation: [`FeatureSpec::validate`] / [`RasterSpec::validate`] check the
//! preprocessing parameters once, before any work (convert, or serving loading a model's
//! preprocessing), instead of producing blank images or failing per record.
//!
//! A rejected record never aborts a run and never vanishes: it is counted under its reason and
//! listed, with its file and line, in `rejects.jsonl` (up to a cap per reason).

use std::fmt;

use serde::Serialize;

use crate::drawing::{Drawing, Ink, Stroke};
use crate::features::FeatureSpec;
use crate::raster::{MAX_IMAGE_SIZE, RasterSpec};

/// Longest accepted NDJSON line; longer lines are rejected without being held in memory.
pub const MAX_LINE_BYTES: usize = 8 << 20;
/// Most strokes accepted in one drawing (real drawings rarely have more than 100).
pub const MAX_STROKES: usize = 2_048;
/// Most points accepted in one drawing, over all strokes.
pub const MAX_POINTS: usize = 200_000;
/// Largest absolute coordinate accepted in raw drawings (pixels of the player's canvas).
pub const MAX_ABS_COORD: f32 = 1.0e6;

/// Why a record was rejected. The `as_str` names are stable: they key the manifest's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// The line is not valid JSON.
    InvalidJson,
    /// The last line of a file ends without a newline and does not parse: an interrupted download.
    Truncated,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong JSON type.
    WrongType,
    /// A stroke's x, y (and t) arrays differ in length, or a stroke has neither 2 nor 3 arrays.
    LengthMismatch,
    /// A coordinate or time is NaN or infinite.
    NonFinite,
    /// A coordinate is outside the valid range of its format.
    OutOfRange,
    /// No strokes, or no points.
    EmptyDrawing,
    /// More strokes, points or bytes than the sanity limits allow.
    TooLarge,
    /// The record's `word` is not the class of the file it is in.
    LabelMismatch,
    /// The timestamp cannot be parsed.
    BadTimestamp,
    /// The key_id is not an unsigned 64-bit integer.
    BadKeyId,
    /// A binary or numpy_bitmap file header is invalid.
    BadHeader,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::Truncated => "truncated",
            RejectReason::MissingField => "missing_field",
            RejectReason::WrongType => "wrong_type",
            RejectReason::LengthMismatch => "length_mismatch",
            RejectReason::NonFinite => "non_finite",
            RejectReason::OutOfRange => "out_of_range",
            RejectReason::EmptyDrawing => "empty_drawing",
            RejectReason::TooLarge => "too_large",
            RejectReason::LabelMismatch => "label_mismatch",
            RejectReason::BadTimestamp => "bad_timestamp",
            RejectReason::BadKeyId => "bad_key_id",
            RejectReason::BadHeader => "bad_header",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected record: the reason and a human-readable detail naming the field.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    pub reason: RejectReason,
    pub detail: String,
}

impl Reject {
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Reject {
            reason,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

/// Which coordinate range a stroke format allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoordRange {
    /// Google's simplified format: 0..=255.
    Simplified,
    /// Raw canvas pixels (any finite value within [`MAX_ABS_COORD`]).
    Raw,
}

/// Checks stroke geometry: lengths, finiteness, ranges, sizes, emptiness.
pub fn check_strokes(strokes: &[Stroke], range: CoordRange) -> Result<(), Reject> {
    if strokes.is_empty() {
        return Err(Reject::new(
            RejectReason::EmptyDrawing,
            "drawing has no strokes",
        ));
    }
    if strokes.len() > MAX_STROKES {
        return Err(Reject::new(
            RejectReason::TooLarge,
            format!("{} strokes (limit {MAX_STROKES})", strokes.len()),
        ));
    }
    let mut points = 0usize;
    for (i, s) in strokes.iter().enumerate() {
        if s.x.len() != s.y.len() || s.t.as_ref().is_some_and(|t| t.len() != s.x.len()) {
            let t =
                s.t.as_ref()
                    .map(|t| format!(", t has {}", t.len()))
                    .unwrap_or_default();
            return Err(Reject::new(
                RejectReason::LengthMismatch,
                format!(
                    "stroke {i}: x has {} values, y has {}{t}",
                    s.x.len(),
                    s.y.len()
                ),
            ));
        }
        if s.x.is_empty() {
            return Err(Reject::new(
                RejectReason::EmptyDrawing,
                format!("stroke {i} has no points"),
            ));
        }
        points += s.x.len();
        let all = s.x.iter().chain(&s.y).chain(s.t.iter().flatten());
        if let Some(v) = all.clone().find(|v| !v.is_finite()) {
            return Err(Reject::new(
                RejectReason::NonFinite,
                format!("stroke {i}: value {v}"),
            ));
        }
        let bad = match range {
            CoordRange::Simplified => {
                s.x.iter()
                    .chain(&s.y)
                    .find(|&&v| !(0.0..=255.0).contains(&v))
            }
            CoordRange::Raw => s.x.iter().chain(&s.y).find(|&&v| v.abs() > MAX_ABS_COORD),
        };
        if let Some(v) = bad {
            let lim = match range {
                CoordRange::Simplified => "0..=255".to_string(),
                CoordRange::Raw => format!("+-{MAX_ABS_COORD}"),
            };
            return Err(Reject::new(
                RejectReason::OutOfRange,
                format!("stroke {i}: coordinate {v} outside {lim}"),
            ));
        }
    }
    if points > MAX_POINTS {
        return Err(Reject::new(
            RejectReason::TooLarge,
            format!("{points} points (limit {MAX_POINTS})"),
        ));
    }
    Ok(())
}

/// Checks a whole drawing (strokes, or bitmap size) and that its word is the expected class.
pub fn check_drawing(d: &Drawing, expected_word: Option<&str>) -> Result<(), Reject> {
    if let Some(w) = expected_word {
        if d.word != w {
            return Err(Reject::new(
                RejectReason::LabelMismatch,
                format!("word {:?} in a file of class {w:?}", d.word),
            ));
        }
    }
    match &d.ink {
        Ink::Strokes(s) => {
            let range = if crate::features::is_raw(s) {
                CoordRange::Raw
            } else {
                CoordRange::Simplified
            };
            check_strokes(s, range)
        }
        Ink::Bitmap(b) if b.pixels.len() != b.side * b.side => Err(Reject::new(
            RejectReason::TooLarge,
            format!("bitmap has {} bytes for side {}", b.pixels.len(), b.side),
        )),
        Ink::Bitmap(_) => Ok(()),
    }
}

/// Longest stroke sequence a [`FeatureSpec`] may ask for: every example carries `3 * max_points`
/// floats, and no accepted drawing has more than [`MAX_POINTS`] points.
pub const MAX_STROKE_POINTS: usize = MAX_POINTS;

/// A preprocessing parameter out of its range. `field` is the parameter's name in the spec
/// (`size`, `line_width`, `max_points`); a command line maps it to its flag.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field} {value} {why}")]
pub struct SpecError {
    pub field: &'static str,
    pub value: String,
    pub why: String,
}

impl RasterSpec {
    /// Checks the image size (1..=[`MAX_IMAGE_SIZE`]) and the line width: finite, > 0 and at most
    /// the image size (a wider line paints every pixel of any drawing, or nothing at all once
    /// the pixel arithmetic overflows, as 1e30 did).
    pub fn validate(&self) -> Result<(), SpecError> {
        let err = |field, value: String, why: String| Err(SpecError { field, value, why });
        if self.size == 0 || self.size > MAX_IMAGE_SIZE {
            return err(
                "size",
                self.size.to_string(),
                format!("is outside 1..={MAX_IMAGE_SIZE}"),
            );
        }
        let w = self.line_width;
        if !(w.is_finite() && w > 0.0) {
            return err(
                "line_width",
                w.to_string(),
                "must be a finite number > 0".into(),
            );
        }
        if w > self.size as f32 {
            return err(
                "line_width",
                w.to_string(),
                format!("is wider than the {} px image", self.size),
            );
        }
        Ok(())
    }
}

impl FeatureSpec {
    /// Checks every parameter that decides an example's bytes: the raster's
    /// ([`RasterSpec::validate`]) and the stroke features' `max_points`
    /// (1..=[`MAX_STROKE_POINTS`]).
    pub fn validate(&self) -> Result<(), SpecError> {
        self.raster.validate()?;
        if let Some(s) = &self.strokes
            && !(1..=MAX_STROKE_POINTS).contains(&s.max_points)
        {
            return Err(SpecError {
                field: "max_points",
                value: s.max_points.to_string(),
                why: format!("is outside 1..={MAX_STROKE_POINTS}"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &[f32], y: &[f32]) -> Stroke {
        Stroke::new(x.to_vec(), y.to_vec())
    }

    #[test]
    fn each_geometry_reason() {
        let r = |st: &[Stroke], range| check_strokes(st, range).unwrap_err().reason;
        assert_eq!(r(&[], CoordRange::Raw), RejectReason::EmptyDrawing);
        assert_eq!(
            r(&[s(&[], &[])], CoordRange::Raw),
            RejectReason::EmptyDrawing
        );
        assert_eq!(
            r(&[s(&[1., 2.], &[1.])], CoordRange::Raw),
            RejectReason::LengthMismatch
        );
        let mut t = s(&[1.], &[1.]);
        t.t = Some(vec![0., 1.]);
        assert_eq!(r(&[t], CoordRange::Raw), RejectReason::LengthMismatch);
        assert_eq!(
            r(&[s(&[f32::NAN], &[1.])], CoordRange::Raw),
            RejectReason::NonFinite
        );
        assert_eq!(
            r(&[s(&[300.], &[1.])], CoordRange::Simplified),
            RejectReason::OutOfRange
        );
        assert_eq!(
            r(&[s(&[2e6], &[1.])], CoordRange::Raw),
            RejectReason::OutOfRange
        );
        let many = vec![s(&[1.], &[1.]); MAX_STROKES + 1];
        assert_eq!(r(&many, CoordRange::Raw), RejectReason::TooLarge);
        assert!(check_strokes(&[s(&[300.], &[1.])], CoordRange::Raw).is_ok());
    }

    #[test]
    fn label_mismatch_is_named() {
        let d = Drawing {
            key_id: 1,
            word: "dog".into(),
            countrycode: "CH".into(),
            timestamp: 0,
            recognized: true,
            ink: Ink::Strokes(vec![s(&[1.], &[1.])]),
        };
        let e = check_drawing(&d, Some("cat")).unwrap_err();
        assert_eq!(e.reason, RejectReason::LabelMismatch);
        assert!(e.detail.contains("\"dog\"") && e.detail.contains("\"cat\""));
        assert!(check_drawing(&d, Some("dog")).is_ok());
    }

    #[test]
    fn preprocessing_parameters_are_checked_before_use() {
        use crate::raster::RasterMode;
        let mut spec = FeatureSpec::default();
        assert_eq!(spec.validate(), Ok(()));
        spec.raster = RasterSpec::new(RasterMode::Default, 64, Some(1e30));
        let e = spec.validate().unwrap_err();
        assert_eq!(e.field, "line_width");
        assert!(e.to_string().contains("wider than the 64 px image"), "{e}");
        spec.raster = RasterSpec::new(RasterMode::Default, 64, Some(f32::NAN));
        assert_eq!(spec.validate().unwrap_err().field, "line_width");
        spec.raster = RasterSpec::new(RasterMode::Amld, MAX_IMAGE_SIZE + 1, None);
        assert_eq!(spec.validate().unwrap_err().field, "size");
        spec.raster = RasterSpec::default();
        spec.strokes = Some(crate::strokes::StrokeSpec { max_points: 0 });
        assert_eq!(spec.validate().unwrap_err().field, "max_points");
    }
}
