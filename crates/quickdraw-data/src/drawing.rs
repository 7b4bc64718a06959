//! The in-memory drawing: one QuickDraw record, whatever file format it came from.

use serde::{Deserialize, Serialize};

/// One pen-down stroke. `x`, `y` (and `t` for raw drawings) have equal length.
///
/// Coordinates are `f32`: simplified drawings hold integers 0..=255, raw drawings hold float
/// pixels of the player's canvas, `t` is milliseconds since the first point.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Stroke {
    pub x: Vec<f32>,
    pub y: Vec<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t: Option<Vec<f32>>,
}

impl Stroke {
    pub fn new(x: Vec<f32>, y: Vec<f32>) -> Self {
        Stroke { x, y, t: None }
    }
    pub fn len(&self) -> usize {
        self.x.len()
    }
    pub fn is_empty(&self) -> bool {
        self.x.is_empty()
    }
}

/// A grey-scale image, row-major, `side * side` bytes, 0 = background, 255 = ink
/// (the convention of Google's `numpy_bitmap` files).
#[derive(Debug, Clone, PartialEq)]
pub struct Bitmap {
    pub side: usize,
    pub pixels: Vec<u8>,
}

/// What a record holds: pen strokes (NDJSON and binary files) or only an image (`numpy_bitmap`).
#[derive(Debug, Clone, PartialEq)]
pub enum Ink {
    Strokes(Vec<Stroke>),
    Bitmap(Bitmap),
}

/// One QuickDraw drawing with its metadata, as in Google's NDJSON files.
#[derive(Debug, Clone, PartialEq)]
pub struct Drawing {
    pub key_id: u64,
    /// The category the player was asked to draw.
    pub word: String,
    /// Two-letter ISO country code (may be empty when the source has none).
    pub countrycode: String,
    /// Seconds since the Unix epoch, UTC.
    pub timestamp: i64,
    /// Whether the game's classifier recognised the drawing.
    pub recognized: bool,
    pub ink: Ink,
}

impl Drawing {
    /// The strokes, or `None` for image-only records.
    pub fn strokes(&self) -> Option<&[Stroke]> {
        match &self.ink {
            Ink::Strokes(s) => Some(s),
            Ink::Bitmap(_) => None,
        }
    }
    pub fn n_points(&self) -> usize {
        self.strokes()
            .map_or(0, |s| s.iter().map(Stroke::len).sum())
    }
}
