//! Stroke features for sequence models: the lecture's `stroke_x`, `stroke_y`, `stroke_z`,
//! `stroke_len`.
//!
//! Follows TensorFlow's "Recurrent Neural Networks for Drawing Classification" tutorial
//! (`create_dataset.py` `parse_line`): points of all strokes concatenated, each axis normalised
//! to [0, 1] by the drawing's bounding box (an axis of zero extent is left unscaled), then turned
//! into deltas from the previous point; the first point is dropped; `z` is 1.0 on the last point
//! of every stroke (the pen lifts after it) and 0.0 elsewhere.

use serde::{Deserialize, Serialize};

use crate::drawing::Stroke;

/// Default cap on sequence length; longer drawings are truncated (and the truncation counted).
pub const DEFAULT_MAX_POINTS: usize = 250;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrokeSpec {
    pub max_points: usize,
}

impl Default for StrokeSpec {
    fn default() -> Self {
        StrokeSpec {
            max_points: DEFAULT_MAX_POINTS,
        }
    }
}

/// Sequence features; all vectors have length `len`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StrokeFeatures {
    pub dx: Vec<f32>,
    pub dy: Vec<f32>,
    pub pen: Vec<f32>,
    pub len: usize,
    /// Whether points beyond `max_points` were cut.
    pub truncated: bool,
}

pub fn stroke_features(strokes: &[Stroke], spec: &StrokeSpec) -> StrokeFeatures {
    let mut pts: Vec<(f32, f32, f32)> = Vec::new();
    for s in strokes {
        let n = s.x.len().min(s.y.len());
        for i in 0..n {
            pts.push((s.x[i], s.y[i], if i + 1 == n { 1.0 } else { 0.0 }));
        }
    }
    if pts.len() < 2 {
        return StrokeFeatures::default();
    }
    let (mut lx, mut ly, mut hx, mut hy) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
    for &(x, y, _) in &pts {
        lx = lx.min(x);
        ly = ly.min(y);
        hx = hx.max(x);
        hy = hy.max(y);
    }
    let sx = if hx > lx { hx - lx } else { 1.0 };
    let sy = if hy > ly { hy - ly } else { 1.0 };
    let n = (pts.len() - 1).min(spec.max_points);
    let mut f = StrokeFeatures {
        dx: Vec::with_capacity(n),
        dy: Vec::with_capacity(n),
        pen: Vec::with_capacity(n),
        len: n,
        truncated: pts.len() - 1 > spec.max_points,
    };
    for w in pts.windows(2).take(n) {
        f.dx.push((w[1].0 - w[0].0) / sx);
        f.dy.push((w[1].1 - w[0].1) / sy);
        f.pen.push(w[1].2);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_checked_deltas() {
        // Two strokes: (0,0)->(10,0) and (10,10)->(0,10). Box 10x10.
        let s = vec![
            Stroke::new(vec![0., 10.], vec![0., 0.]),
            Stroke::new(vec![10., 0.], vec![10., 10.]),
        ];
        let f = stroke_features(&s, &StrokeSpec::default());
        assert_eq!(f.len, 3);
        assert_eq!(f.dx, vec![1.0, 0.0, -1.0]);
        assert_eq!(f.dy, vec![0.0, 1.0, 0.0]);
        // Point 1 ends stroke 1, point 2 starts stroke 2, point 3 ends stroke 2.
        assert_eq!(f.pen, vec![1.0, 0.0, 1.0]);
        assert!(!f.truncated);
    }

    #[test]
    fn truncation_and_degenerate() {
        let s = vec![Stroke::new(
            (0..10).map(|v| v as f32).collect(),
            vec![3.0; 10],
        )];
        let f = stroke_features(&s, &StrokeSpec { max_points: 4 });
        assert_eq!((f.len, f.truncated), (4, true));
        assert_eq!(
            f.dy,
            vec![0.0; 4],
            "zero-extent axis is not divided by zero"
        );
        assert_eq!(stroke_features(&[], &StrokeSpec::default()).len, 0);
    }
}
