//! Google's "simplified" Quick, Draw! preprocessing (align, scale to 0..=255, resample at 1 px,
//! Ramer-Douglas-Peucker with epsilon 2.0, round). How closely it reproduces Google's own
//! simplified files is measured by `examples/simplify_match.rs`.
//!
//! Google describes the simplified format
//! (<https://github.com/googlecreativelab/quickdraw-dataset>, section "Simplified Drawing files"):
//!
//! 1. align the drawing to the top-left corner, to have minimum values of 0;
//! 2. uniformly scale the drawing, to have a maximum value of 255;
//! 3. resample all strokes with a 1 pixel spacing;
//! 4. simplify all strokes using the Ramer-Douglas-Peucker algorithm with an epsilon value of 2.0.
//!
//! Google never published the code. The details below were chosen by measuring against pairs of
//! raw and Google-simplified drawings (`cargo run --release -p quickdraw-data --example
//! simplify_match`); [`SimplifyOptions::default`] is the variant that matched best, and every
//! choice is a field of [`SimplifyOptions`] so the alternatives stay measurable:
//!
//! * all arithmetic is `f64`. [`Stroke`] holds `f32`, which is exact for most raw files, but 102
//!   of the 1220 shared raw drawings have decimals `f32` cannot hold; [`simplify_points`] takes
//!   the JSON numbers as `f64` for callers that have them;
//! * one extent for both axes, `max(width, height)`; a coordinate becomes
//!   `(v - min) * 255 / extent` (multiply first, then divide);
//! * resampling walks the polyline by arc length: samples at arc lengths `0, 1, 2, …` strictly
//!   below the stroke length, plus the stroke's last point; the original vertices are *not* kept;
//!   a sample on segment `a → b` is `(1 - t) * a + t * b` with `t = (s - start of segment) /
//!   segment length`;
//! * RDP measures the perpendicular distance to the infinite line through the end points (the
//!   Euclidean distance to the start when both end points coincide), written as the `rdp` Python
//!   package does, `|cross(b - a, a - p)| / |b - a|` with `|v| = sqrt(fma(v.x, v.x, v.y * v.y))`;
//!   it keeps a point only when that distance is strictly greater than epsilon, and on ties keeps
//!   the first farthest point;
//! * RDP runs on the floats; rounding comes last and is half-to-even (Python's / NumPy's `round`);
//!   duplicate consecutive points are *not* removed, so a one-point stroke comes out as two equal
//!   points, as in Google's files.
//!
//! Measured on the 1220 raw/simplified pairs of the shared data (10 per class, 122 classes):
//! from `f32` strokes 99.84% of drawings have the same stroke and point counts, 99.67% agree
//! within 1 px on every coordinate, 99.43% exactly; from `f64` input all three are 100%.
//!
//! Ties matter: many raw drawings have integer coordinates, so a resampled segment is often
//! exactly parallel to an RDP chord and the chosen point depends on the last bit of the
//! arithmetic. That is why the exact formulas above are fixed rather than left to taste.

use crate::drawing::Stroke;

/// Ramer-Douglas-Peucker tolerance of Google's simplified format, in pixels of the 0..=255 frame.
///
/// Source: <https://github.com/googlecreativelab/quickdraw-dataset>, section "Simplified
/// Drawing files (.ndjson)": "Simplify all strokes using the Ramer–Douglas–Peucker algorithm
/// with an epsilon value of 2.0."
pub const RDP_EPSILON: f32 = 2.0;

/// Largest coordinate of Google's simplified format (the frame is 0..=255 on both axes).
///
/// Source: <https://github.com/googlecreativelab/quickdraw-dataset>, section "Simplified
/// Drawing files (.ndjson)": "Uniformly scale the drawing, to have a maximum value of 255."
pub const SIMPLIFIED_MAX: f32 = 255.0;

/// Resampling step of Google's simplified format, in pixels of the 0..=255 frame ("Resample all
/// strokes with a 1 pixel spacing", same source as [`RDP_EPSILON`]).
pub const RESAMPLE_SPACING: f32 = 1.0;

/// How a coordinate is mapped into the 0..=255 frame (step 2). The result differs only in the
/// last bit, which decides exact `.5` ties and RDP ties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scaling {
    /// `(v - min) * 255 / extent` (best match).
    #[default]
    MulThenDiv,
    /// `(v - min) * (255 / extent)` with the factor computed once.
    Factor,
}

/// How strokes are resampled (step 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resampling {
    /// Samples every [`RESAMPLE_SPACING`] of arc length from the first point, plus the last
    /// point; `(1 - t) * a + t * b` on each segment; original vertices dropped (best match).
    #[default]
    ArcLength,
    /// The same sample positions, computed as `numpy.interp` does: `slope * (s - s_j) + a`.
    ArcLengthInterp,
    /// Each segment is cut every [`RESAMPLE_SPACING`] from its own start; original vertices kept.
    PerSegment,
    /// No resampling: RDP runs on the original vertices.
    Off,
}

/// Which distance RDP measures (step 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Distance {
    /// Perpendicular distance to the infinite line through the end points, the norm computed as
    /// `sqrt(fma(dx, dx, dy * dy))` (best match).
    #[default]
    Line,
    /// The same line distance with the norm computed as `sqrt(dx * dx + dy * dy)` (no fused
    /// multiply-add); differs only in the last bit, which can flip an RDP tie.
    LineUnfused,
    /// Distance to the segment between the end points.
    Segment,
}

/// How the final float coordinates become integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rounding {
    /// Ties to even, like Python 3's `round` and `numpy.round` (best match).
    #[default]
    HalfEven,
    /// Ties away from zero, like `f64::round`.
    HalfAway,
}

/// The knobs of [`simplify_with`]. `Default` is the variant that matches Google best; the others
/// exist so the `simplify_match` example can show which choices matter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SimplifyOptions {
    pub scaling: Scaling,
    pub resampling: Resampling,
    pub distance: Distance,
    pub rounding: Rounding,
}

type Pt = (f64, f64);

/// Turns a raw drawing (float pixels, `t` in ms) into Google's simplified format: integer-valued
/// coordinates in 0..=[`SIMPLIFIED_MAX`], no `t`. Same as [`simplify_with`] with the default
/// (best-matching) options.
///
/// Never panics. Points with a non-finite coordinate are skipped (callers are expected to
/// validate first), a stroke left without points is dropped, and an empty drawing gives an empty
/// result. When every point is the same, the drawing collapses to (0, 0). Each remaining stroke
/// keeps at least two points: a one-point stroke becomes two equal points, as in Google's files.
pub fn simplify(strokes: &[Stroke]) -> Vec<Stroke> {
    simplify_with(strokes, &SimplifyOptions::default())
}

/// [`simplify`] with explicit choices for the unspecified details.
pub fn simplify_with(strokes: &[Stroke], opts: &SimplifyOptions) -> Vec<Stroke> {
    let wide: Vec<Vec<Pt>> = strokes
        .iter()
        .map(|s| {
            s.x.iter()
                .zip(&s.y)
                .map(|(&x, &y)| (f64::from(x), f64::from(y)))
                .collect()
        })
        .collect();
    simplify_points(&wide, opts)
}

/// [`simplify_with`] on full-precision `(x, y)` strokes.
///
/// [`Stroke`] stores `f32`; most raw coordinates are `f32` values anyway, but some raw files hold
/// decimals that `f32` cannot represent exactly, and those last bits decide RDP ties. Feeding
/// the JSON numbers as `f64` here reproduces Google's files more often (see the
/// `simplify_match` example).
pub fn simplify_points(strokes: &[Vec<(f64, f64)>], opts: &SimplifyOptions) -> Vec<Stroke> {
    let finite: Vec<Vec<Pt>> = strokes
        .iter()
        .map(|s| {
            s.iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect::<Vec<Pt>>()
        })
        .filter(|pts| !pts.is_empty())
        .collect();

    // Step 1: one minimum per axis over all strokes.
    let mut min = (f64::INFINITY, f64::INFINITY);
    let mut max = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for &(x, y) in finite.iter().flatten() {
        min = (min.0.min(x), min.1.min(y));
        max = (max.0.max(x), max.1.max(y));
    }
    // Step 2: one extent for both axes, so the aspect ratio is kept.
    let extent = (max.0 - min.0).max(max.1 - min.1);
    let top = f64::from(SIMPLIFIED_MAX);
    let to_frame = |v: f64, lo: f64| -> f64 {
        if !(extent > 0.0 && extent.is_finite()) {
            return 0.0;
        }
        match opts.scaling {
            Scaling::MulThenDiv => (v - lo) * top / extent,
            Scaling::Factor => (v - lo) * (top / extent),
        }
    };

    let spacing = f64::from(RESAMPLE_SPACING);
    let epsilon = f64::from(RDP_EPSILON);
    let total_points: usize = finite.iter().map(Vec::len).sum();
    let mut budget = RDP_WORK_BASE.saturating_add(RDP_WORK_PER_POINT.saturating_mul(total_points));
    finite
        .iter()
        .map(|pts| {
            let aligned: Vec<Pt> = pts
                .iter()
                .map(|&(x, y)| (to_frame(x, min.0), to_frame(y, min.1)))
                .collect();
            // Steps 3 and 4 (on floats). Arc-length samples are computed on demand, never stored.
            let mut kept: Vec<Pt> = match opts.resampling {
                Resampling::ArcLength | Resampling::ArcLengthInterp => {
                    let interp = opts.resampling == Resampling::ArcLengthInterp;
                    let samples = Samples::new(&aligned, spacing, interp);
                    rdp_samples(&samples, epsilon, opts.distance, &mut budget)
                        .into_iter()
                        .map(|k| samples.at(k))
                        .collect()
                }
                Resampling::PerSegment | Resampling::Off => {
                    let resampled = if opts.resampling == Resampling::Off {
                        aligned
                    } else {
                        resample_per_segment(&aligned, spacing)
                    };
                    let keep = rdp_mask(&resampled, epsilon, opts.distance);
                    resampled
                        .iter()
                        .zip(&keep)
                        .filter(|(_, k)| **k)
                        .map(|(p, _)| *p)
                        .collect()
                }
            };
            if kept.len() == 1 {
                // The recursive `rdp` package returns both end points of a one-point input.
                kept.push(kept[0]);
            }
            let round = |v: f64| -> f32 {
                let r = match opts.rounding {
                    Rounding::HalfEven => v.round_ties_even(),
                    Rounding::HalfAway => v.round(),
                };
                r.clamp(0.0, top) as f32
            };
            Stroke::new(
                kept.iter().map(|p| round(p.0)).collect(),
                kept.iter().map(|p| round(p.1)).collect(),
            )
        })
        .collect()
}

/// Euclidean length of `a → b`, written `sqrt(dx*dx + dy*dy)` (not `hypot`) to match Google's
/// last bits.
fn seg_len(a: Pt, b: Pt) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    (dx * dx + dy * dy).sqrt()
}

/// Samples at arc lengths `0, spacing, 2*spacing, …` strictly below the total length, then the
/// last point. `interp` selects NumPy's `slope * (s - s_j) + a` instead of `(1 - t) * a + t * b`.
/// Returns at least two points for a non-empty input (both ends of a zero-length stroke).
///
/// The materialised form of [`Samples`], kept as the reference its tests compare against.
#[cfg(test)]
fn resample_arc_length(points: &[Pt], spacing: f64, interp: bool) -> Vec<Pt> {
    let (Some(&first), Some(&last)) = (points.first(), points.last()) else {
        return Vec::new();
    };
    let lens: Vec<f64> = points.windows(2).map(|w| seg_len(w[0], w[1])).collect();
    let mut cum = Vec::with_capacity(points.len());
    cum.push(0.0);
    for l in &lens {
        cum.push(cum[cum.len() - 1] + l);
    }
    let total = cum[cum.len() - 1];
    if !(total > 0.0 && total.is_finite() && spacing > 0.0) {
        return vec![first, last];
    }
    let count = (total / spacing).ceil() as usize;
    let mut out = Vec::with_capacity(count + 1);
    let mut j = 0;
    for i in 0..count {
        let s = i as f64 * spacing;
        if s >= total {
            break;
        }
        // Last j with cum[j] <= s; since s < total, j + 1 is a valid index and cum[j + 1] > s.
        while j + 2 < cum.len() && cum[j + 1] <= s {
            j += 1;
        }
        let (a, b) = (points[j], points[j + 1]);
        if s == cum[j] {
            out.push(a);
        } else if interp {
            let dc = cum[j + 1] - cum[j];
            let sx = (b.0 - a.0) / dc;
            let sy = (b.1 - a.1) / dc;
            out.push((sx * (s - cum[j]) + a.0, sy * (s - cum[j]) + a.1));
        } else {
            let t = (s - cum[j]) / lens[j];
            out.push(((1.0 - t) * a.0 + t * b.0, (1.0 - t) * a.1 + t * b.1));
        }
    }
    out.push(last);
    out
}

/// Distance evaluations RDP may spend on one drawing: this many, plus [`RDP_WORK_PER_POINT`] per
/// input point. Real drawings need a few thousand (measured on the shared Google pairs: the
/// largest used under 1% of it); past it the ranges still open are not split further, so a
/// hostile drawing gets a coarser simplification instead of quadratic work.
pub const RDP_WORK_BASE: usize = 1 << 20;
/// See [`RDP_WORK_BASE`].
pub const RDP_WORK_PER_POINT: usize = 32;

/// Below this per-sample change of the distance along one straight segment, RDP looks at every
/// sample of the segment: the floating-point noise of a sample's distance is under 1e-12 px in
/// the 0..=255 frame, so a larger slope cannot be reordered by it.
const FLAT_SLOPE: f64 = 1e-9;

/// The arc-length resampling of one stroke (step 3), computed on demand: sample `k` is exactly
/// the `k`-th point the materialised resampling gives (`(1 - t) * a + t * b` on its segment, or
/// NumPy's form), but only the per-vertex arc lengths are stored, so memory is linear in the
/// stroke's points whatever its length (a 199,000-point zigzag across the frame has 72 million
/// samples).
struct Samples<'a> {
    points: &'a [Pt],
    /// Arc length at each vertex.
    cum: Vec<f64>,
    /// First sample index of each segment (`points.len() - 1` entries, then `n`).
    start: Vec<usize>,
    /// Samples strictly below the total length; sample `n` is the last point.
    n: usize,
    spacing: f64,
    interp: bool,
}

impl<'a> Samples<'a> {
    /// `points` must be non-empty.
    fn new(points: &'a [Pt], spacing: f64, interp: bool) -> Self {
        let mut cum = Vec::with_capacity(points.len());
        cum.push(0.0);
        for w in points.windows(2) {
            cum.push(cum[cum.len() - 1] + seg_len(w[0], w[1]));
        }
        let total = cum[cum.len() - 1];
        let mut s = Samples {
            points,
            cum,
            start: Vec::new(),
            n: 0,
            spacing,
            interp,
        };
        if !(total > 0.0 && total.is_finite() && spacing > 0.0) {
            // Both ends only: sample 0 is the first point, sample 1 the last.
            s.n = 1;
            s.start = vec![0, 1];
            return s;
        }
        // The smallest k with k * spacing >= v, as the sample loop's float comparisons decide.
        let first_at = |v: f64| -> usize {
            let mut k = (v / spacing).ceil().max(0.0) as usize;
            while k > 0 && (k - 1) as f64 * spacing >= v {
                k -= 1;
            }
            while (k as f64) * spacing < v {
                k += 1;
            }
            k
        };
        s.n = first_at(total).min((total / spacing).ceil() as usize);
        s.start = (0..points.len() - 1)
            .map(|j| {
                if j == 0 {
                    0
                } else {
                    first_at(s.cum[j]).min(s.n)
                }
            })
            .chain([s.n])
            .collect();
        s
    }

    /// Index of the last sample.
    fn last(&self) -> usize {
        self.n
    }

    /// Sample `k` of segment `j` (`start[j] <= k < start[j + 1]`).
    fn on(&self, j: usize, k: usize) -> Pt {
        let s = k as f64 * self.spacing;
        let (a, b) = (self.points[j], self.points[j + 1]);
        let c = self.cum[j];
        if s == c {
            a
        } else if self.interp {
            let dc = self.cum[j + 1] - c;
            let (sx, sy) = ((b.0 - a.0) / dc, (b.1 - a.1) / dc);
            (sx * (s - c) + a.0, sy * (s - c) + a.1)
        } else {
            let t = (s - c) / seg_len(a, b);
            ((1.0 - t) * a.0 + t * b.0, (1.0 - t) * a.1 + t * b.1)
        }
    }

    /// The segment holding sample `k < n`.
    fn segment_of(&self, k: usize) -> usize {
        self.start.partition_point(|&s| s <= k) - 1
    }

    /// Sample `k`, `0..=last()`.
    fn at(&self, k: usize) -> Pt {
        if k >= self.n {
            self.points[self.points.len() - 1]
        } else if k == 0 {
            self.points[0]
        } else {
            self.on(self.segment_of(k), k)
        }
    }
}

/// The distance RDP measures from one chord, bit for bit as [`rdp_mask`] computes it.
struct Chord {
    a: Pt,
    b: Pt,
    distance: Distance,
    /// `|b - a|` for the line distances when `a != b`.
    norm: Option<f64>,
}

impl Chord {
    fn new(a: Pt, b: Pt, distance: Distance) -> Self {
        let (ex, ey) = (b.0 - a.0, b.1 - a.1);
        let norm = match distance {
            Distance::Line if a != b => Some(norm(ex, ey, true)),
            Distance::LineUnfused if a != b => Some(norm(ex, ey, false)),
            _ => None,
        };
        Chord {
            a,
            b,
            distance,
            norm,
        }
    }

    fn d(&self, p: Pt) -> f64 {
        let (a, b) = (self.a, self.b);
        match (self.norm, self.distance) {
            (Some(n), _) => ((b.0 - a.0) * (a.1 - p.1) - (b.1 - a.1) * (a.0 - p.0)).abs() / n,
            (None, Distance::Line) => line_distance(p, a, b),
            (None, Distance::LineUnfused) => line_distance_unfused(p, a, b),
            (None, Distance::Segment) => segment_distance(p, a, b),
        }
    }
}

/// Which samples Ramer-Douglas-Peucker keeps (sorted indices), the same as [`rdp_mask`] over the
/// materialised samples, with work linear in the stroke's vertices rather than its samples.
///
/// Every distance measured here is convex along a straight segment, so over the samples of one
/// segment the farthest is one of its two end samples, and strictly the farthest when the two
/// differ by more than [`FLAT_SLOPE`] per sample (then no rounding can reorder them). Only a
/// segment nearly parallel to the chord is scanned sample by sample (ties there are decided by
/// the last bits, as in the materialised version), and a segment whose end samples are both
/// below `epsilon` cannot hold a kept point, so one end stands for it. Each distance evaluated
/// costs one unit of `budget`; when it runs out, open ranges are left unsplit.
fn rdp_samples(s: &Samples, epsilon: f64, distance: Distance, budget: &mut usize) -> Vec<usize> {
    let last = s.last();
    let mut kept = vec![0, last];
    let mut stack = vec![(0usize, last)];
    while let Some((i, j)) = stack.pop() {
        if j <= i + 1 || *budget == 0 {
            continue;
        }
        let chord = Chord::new(s.at(i), s.at(j), distance);
        let (mut dmax, mut index) = (0.0f64, i);
        let mut consider = |k: usize, d: f64| {
            if d > dmax {
                dmax = d;
                index = k;
            }
        };
        let mut seg = s.segment_of(i + 1);
        let mut lo = i + 1;
        while lo < j {
            while s.start[seg + 1] <= lo {
                seg += 1;
            }
            let hi = (s.start[seg + 1] - 1).min(j - 1);
            let m = hi + 1 - lo;
            if m <= 2 {
                (lo..=hi).for_each(|k| consider(k, chord.d(s.on(seg, k))));
            } else {
                let (df, dl) = (chord.d(s.on(seg, lo)), chord.d(s.on(seg, hi)));
                let below = df.max(dl) < epsilon - FLAT_SLOPE;
                if below || (dl - df).abs() > (m - 1) as f64 * FLAT_SLOPE {
                    if dl > df {
                        consider(hi, dl)
                    } else {
                        consider(lo, df)
                    }
                } else {
                    (lo..=hi).for_each(|k| consider(k, chord.d(s.on(seg, k))));
                    *budget = budget.saturating_sub(m);
                }
            }
            *budget = budget.saturating_sub(m.min(2));
            lo = hi + 1;
            seg += 1;
        }
        if dmax > epsilon {
            kept.push(index);
            stack.push((i, index));
            stack.push((index, j));
        }
    }
    kept.sort_unstable();
    kept
}

/// Cuts every segment every `spacing` from its own start, keeping all original vertices.
fn resample_per_segment(points: &[Pt], spacing: f64) -> Vec<Pt> {
    let Some(&first) = points.first() else {
        return Vec::new();
    };
    let mut out = vec![first];
    if spacing.is_nan() || spacing <= 0.0 {
        out.extend_from_slice(&points[1..]);
        return out;
    }
    for w in points.windows(2) {
        let (a, b) = (w[0], w[1]);
        let len = seg_len(a, b);
        if len.is_finite() {
            let mut d = spacing;
            while d < len {
                let t = d / len;
                out.push(((1.0 - t) * a.0 + t * b.0, (1.0 - t) * a.1 + t * b.1));
                d += spacing;
            }
        }
        out.push(b);
    }
    out
}

/// Euclidean norm of `(x, y)` the way it matched Google best: `sqrt(fma(x, x, y * y))` (one
/// rounding for `x * x + y * y`, as a BLAS dot product with fused multiply-add gives), or the
/// plain `sqrt(x * x + y * y)` when `fused` is false.
fn norm(x: f64, y: f64, fused: bool) -> f64 {
    if fused {
        x.mul_add(x, y * y).sqrt()
    } else {
        (x * x + y * y).sqrt()
    }
}

/// Distance of `p` from the line through `a` and `b`, written as the `rdp` Python package does:
/// `|cross(b - a, a - p)| / |b - a|`, or `|p - a|` when `a == b`.
fn line_distance_with(p: Pt, a: Pt, b: Pt, fused: bool) -> f64 {
    if a == b {
        return norm(p.0 - a.0, p.1 - a.1, fused);
    }
    let (ex, ey) = (b.0 - a.0, b.1 - a.1);
    let cross = ex * (a.1 - p.1) - ey * (a.0 - p.0);
    cross.abs() / norm(ex, ey, fused)
}

fn line_distance(p: Pt, a: Pt, b: Pt) -> f64 {
    line_distance_with(p, a, b, true)
}

fn line_distance_unfused(p: Pt, a: Pt, b: Pt) -> f64 {
    line_distance_with(p, a, b, false)
}

/// Distance of `p` from the segment `a`–`b`.
fn segment_distance(p: Pt, a: Pt, b: Pt) -> f64 {
    let (ex, ey) = (b.0 - a.0, b.1 - a.1);
    let l2 = ex * ex + ey * ey;
    let t = if l2 > 0.0 {
        (((p.0 - a.0) * ex + (p.1 - a.1) * ey) / l2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (dx, dy) = (p.0 - (a.0 + t * ex), p.1 - (a.1 + t * ey));
    (dx * dx + dy * dy).sqrt()
}

/// Which points Ramer-Douglas-Peucker keeps. Iterative (no recursion depth limit); keeps the
/// same points as the recursive formulation. Inputs shorter than 3 points are kept whole.
fn rdp_mask(points: &[Pt], epsilon: f64, distance: Distance) -> Vec<bool> {
    let n = points.len();
    if n < 3 {
        return vec![true; n];
    }
    let dist = match distance {
        Distance::Line => line_distance,
        Distance::LineUnfused => line_distance_unfused,
        Distance::Segment => segment_distance,
    };
    let mut keep = vec![false; n];
    keep[0] = true;
    keep[n - 1] = true;
    let mut stack = vec![(0usize, n - 1)];
    while let Some((i, j)) = stack.pop() {
        if j <= i + 1 {
            continue;
        }
        let (mut dmax, mut index) = (0.0f64, i);
        let (a, b) = (points[i], points[j]);
        let line = match distance {
            Distance::Line if a != b => Some(true),
            Distance::LineUnfused if a != b => Some(false),
            _ => None,
        };
        if let Some(fused) = line {
            // `line_distance_with` with the norm of `b - a` computed once for the whole range:
            // the same operations on the same values, so bit for bit the same distances.
            let (ex, ey) = (b.0 - a.0, b.1 - a.1);
            let n = norm(ex, ey, fused);
            for (k, &p) in points.iter().enumerate().take(j).skip(i + 1) {
                let d = (ex * (a.1 - p.1) - ey * (a.0 - p.0)).abs() / n;
                if d > dmax {
                    dmax = d;
                    index = k;
                }
            }
        } else {
            for (k, &p) in points.iter().enumerate().take(j).skip(i + 1) {
                let d = dist(p, a, b);
                // Strictly greater: the first of equally distant points wins.
                if d > dmax {
                    dmax = d;
                    index = k;
                }
            }
        }
        if dmax > epsilon {
            keep[index] = true;
            stack.push((i, index));
            stack.push((index, j));
        }
    }
    keep
}

/// Ramer-Douglas-Peucker simplification of one polyline.
///
/// The distance is the perpendicular distance to the infinite line through the current end
/// points (the Euclidean distance to the start point when the end points coincide, i.e. a closed
/// stroke). A point is kept only when its distance is strictly greater than `epsilon`; among
/// equally distant points the first is kept. End points are always kept; inputs with fewer than
/// three points come back unchanged. Computed in `f64`; the returned points are input points.
/// Non-finite distances are never "greater", so NaN input does not panic.
pub fn rdp(points: &[(f32, f32)], epsilon: f32) -> Vec<(f32, f32)> {
    let wide: Vec<Pt> = points
        .iter()
        .map(|&(x, y)| (f64::from(x), f64::from(y)))
        .collect();
    let keep = rdp_mask(&wide, f64::from(epsilon), Distance::Line);
    points
        .iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|(p, _)| *p)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pts(v: &[(f32, f32)]) -> Vec<(f32, f32)> {
        v.to_vec()
    }

    fn stroke(p: &[(f32, f32)]) -> Stroke {
        Stroke::new(
            p.iter().map(|q| q.0).collect(),
            p.iter().map(|q| q.1).collect(),
        )
    }

    fn points_of(s: &Stroke) -> Vec<(f32, f32)> {
        s.x.iter().copied().zip(s.y.iter().copied()).collect()
    }

    #[test]
    fn rdp_straight_line_collapses_to_end_points() {
        let line: Vec<(f32, f32)> = (0..=10).map(|i| (i as f32, 2.0 * i as f32)).collect();
        assert_eq!(rdp(&line, 2.0), pts(&[(0.0, 0.0), (10.0, 20.0)]));
    }

    #[test]
    fn rdp_keeps_a_right_angle_corner() {
        let l = pts(&[
            (0.0, 0.0),
            (5.0, 0.0),
            (10.0, 0.0),
            (10.0, 5.0),
            (10.0, 10.0),
        ]);
        assert_eq!(rdp(&l, 2.0), pts(&[(0.0, 0.0), (10.0, 0.0), (10.0, 10.0)]));
    }

    #[test]
    fn rdp_epsilon_is_strict() {
        // The middle point is exactly 2.0 from the chord: not kept at 2.0, kept just below.
        let p = pts(&[(0.0, 0.0), (5.0, 2.0), (10.0, 0.0)]);
        assert_eq!(rdp(&p, 2.0), pts(&[(0.0, 0.0), (10.0, 0.0)]));
        assert_eq!(rdp(&p, 1.99), p);
        assert_eq!(rdp(&p, 0.0), p);
    }

    #[test]
    fn rdp_distance_is_to_the_line_not_the_segment() {
        // (20, 1) is 1 from the line y = 0 but 10.05 from the segment (0,0)-(10,0).
        let p = pts(&[(0.0, 0.0), (20.0, 1.0), (10.0, 0.0)]);
        assert_eq!(rdp(&p, 2.0), pts(&[(0.0, 0.0), (10.0, 0.0)]));
    }

    #[test]
    fn rdp_closed_stroke_uses_distance_to_start() {
        let p = pts(&[(0.0, 0.0), (3.0, 0.0), (3.0, 3.0), (0.0, 0.0)]);
        // (3,3) is farthest from (0,0); then (3,0) is 3 from the chord (0,0)-(3,3)/sqrt2 = 2.12.
        assert_eq!(rdp(&p, 2.0), p);
        assert_eq!(rdp(&p, 2.2), pts(&[(0.0, 0.0), (3.0, 3.0), (0.0, 0.0)]));
    }

    #[test]
    fn rdp_ties_keep_the_first_farthest_point() {
        // (4,5) and (6,5) are both 5 from the chord; whichever is kept first hides the other
        // (1.28 from the new chords), so the result shows which one won.
        let p = pts(&[(0.0, 0.0), (4.0, 5.0), (6.0, 5.0), (10.0, 0.0)]);
        assert_eq!(rdp(&p, 2.0), pts(&[(0.0, 0.0), (4.0, 5.0), (10.0, 0.0)]));
    }

    #[test]
    fn rdp_short_and_degenerate_inputs() {
        assert!(rdp(&[], 2.0).is_empty());
        assert_eq!(rdp(&[(1.0, 1.0)], 2.0), pts(&[(1.0, 1.0)]));
        assert_eq!(
            rdp(&[(1.0, 1.0), (5.0, 5.0)], 2.0),
            pts(&[(1.0, 1.0), (5.0, 5.0)])
        );
        assert_eq!(rdp(&[(1.0, 1.0); 5], 2.0), pts(&[(1.0, 1.0), (1.0, 1.0)]));
        let nan = rdp(&[(0.0, 0.0), (f32::NAN, 1.0), (2.0, 0.0)], 2.0);
        assert_eq!(nan.len(), 2);
    }

    #[test]
    fn align_and_scale_use_one_factor_for_both_axes() {
        // Width 100, height 50: the factor is 255 / 100 on both axes, x spans 0..=255.
        let d = [
            stroke(&[(100.0, 20.0), (200.0, 20.0)]),
            stroke(&[(150.0, 70.0), (150.0, 70.0)]),
        ];
        let out = simplify(&d);
        assert_eq!(out.len(), 2);
        assert_eq!(points_of(&out[0]), pts(&[(0.0, 0.0), (255.0, 0.0)]));
        // (50, 50) * 2.55 = (127.5, 127.5): ties go to even.
        assert_eq!(points_of(&out[1]), pts(&[(128.0, 128.0), (128.0, 128.0)]));
        assert!(out.iter().all(|s| s.t.is_none()));
    }

    #[test]
    fn output_is_integer_in_frame() {
        let d = [
            Stroke {
                x: vec![-3.3, 7.9, 12.25],
                y: vec![0.1, 40.7, -8.0],
                t: Some(vec![0.0, 5.0, 9.0]),
            },
            stroke(&[(1.5, 1.5), (30.0, 2.0), (2.0, 30.0)]),
        ];
        for s in simplify(&d) {
            assert!(s.t.is_none());
            assert_eq!(s.x.len(), s.y.len());
            for v in s.x.iter().chain(&s.y) {
                assert_eq!(v.fract(), 0.0);
                assert!((0.0..=SIMPLIFIED_MAX).contains(v));
            }
        }
    }

    #[test]
    fn resampling_has_one_pixel_spacing_and_keeps_the_end() {
        let close = |a: &[Pt], b: &[Pt]| {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(p, q)| (p.0 - q.0).abs() < 1e-9 && (p.1 - q.1).abs() < 1e-9)
        };
        let r = resample_arc_length(&[(0.0, 0.0), (3.0, 0.0), (3.0, 2.5)], 1.0, false);
        let want = [
            (0.0, 0.0),
            (1.0, 0.0),
            (2.0, 0.0),
            (3.0, 0.0),
            (3.0, 1.0),
            (3.0, 2.0),
            (3.0, 2.5),
        ];
        assert!(close(&r, &want), "{r:?}");
        // Spacing is measured along the path, across vertices: the corner (3.5, 0) is not kept.
        let r = resample_arc_length(&[(0.0, 0.0), (3.5, 0.0), (3.5, 3.0)], 1.0, false);
        let want = [
            (0.0, 0.0),
            (1.0, 0.0),
            (2.0, 0.0),
            (3.0, 0.0),
            (3.5, 0.5),
            (3.5, 1.5),
            (3.5, 2.5),
            (3.5, 3.0),
        ];
        assert!(close(&r, &want), "{r:?}");
        assert!(!r.contains(&(3.5, 0.0)));
        // The original vertices are kept by the per-segment variant only.
        let r = resample_per_segment(&[(0.0, 0.0), (3.5, 0.0), (3.5, 3.0)], 1.0);
        assert!(r.contains(&(3.5, 0.0)) && r.len() == 8, "{r:?}");
        assert_eq!(
            resample_arc_length(&[(2.0, 2.0)], 1.0, false),
            vec![(2.0, 2.0), (2.0, 2.0)]
        );
        assert!(resample_arc_length(&[], 1.0, false).is_empty());
    }

    /// The kept points of one aligned stroke, on demand ([`rdp_samples`]) and materialised
    /// ([`resample_arc_length`] + [`rdp_mask`]), and the work the former spent.
    fn both_ways(aligned: &[Pt], interp: bool, distance: Distance) -> (Vec<Pt>, Vec<Pt>, usize) {
        let samples = Samples::new(aligned, 1.0, interp);
        let mut budget = usize::MAX;
        let lazy: Vec<Pt> = rdp_samples(&samples, 2.0, distance, &mut budget)
            .into_iter()
            .map(|k| samples.at(k))
            .collect();
        let all = resample_arc_length(aligned, 1.0, interp);
        let keep = rdp_mask(&all, 2.0, distance);
        let eager = all
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(p, _)| *p)
            .collect();
        (lazy, eager, usize::MAX - budget)
    }

    #[test]
    fn on_demand_samples_keep_exactly_the_materialised_points() {
        // Pseudo-random strokes in the frame: integer corners (exact ties with chords), repeated
        // points, closed loops, long parallel runs, and fractional coordinates.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        for case in 0..400 {
            let n = 1 + next(40) as usize;
            let mut pts: Vec<Pt> = (0..n)
                .map(|_| match case % 4 {
                    0 => (next(256) as f64, next(256) as f64),
                    1 => ((next(8) * 32) as f64, (next(8) * 32) as f64),
                    2 => (next(25_500) as f64 / 100.0, next(25_500) as f64 / 100.0),
                    _ => (next(4) as f64 * 85.0, next(256) as f64),
                })
                .collect();
            if case % 5 == 0 {
                pts.push(pts[0]);
            }
            for distance in [Distance::Line, Distance::LineUnfused, Distance::Segment] {
                for interp in [false, true] {
                    let (lazy, eager, _) = both_ways(&pts, interp, distance);
                    assert_eq!(
                        lazy, eager,
                        "case {case} {distance:?} interp {interp}: {pts:?}"
                    );
                }
            }
        }
        for pts in [
            vec![(3.0, 4.0)],
            vec![(1.0, 1.0); 5],
            vec![(0.0, 0.0), (0.5, 0.0)],
        ] {
            let (lazy, eager, _) = both_ways(&pts, false, Distance::Line);
            assert_eq!(lazy, eager, "{pts:?}");
        }
    }

    #[test]
    fn hostile_zigzag_work_is_linear_in_vertices() {
        // 199,000 vertices alternating between far corners: 71.8 million 1-px samples, which the
        // materialised resampling stored (1.15 GB) and RDP scanned. On demand, each of the
        // chord's ranges costs about two evaluations per segment.
        let zigzag: Vec<Pt> = (0..199_000)
            .map(|i| {
                if i % 2 == 0 {
                    (0.0, 0.0)
                } else {
                    (255.0, 255.0)
                }
            })
            .collect();
        let samples = Samples::new(&zigzag, 1.0, false);
        assert!(samples.last() > 70_000_000, "{}", samples.last());
        let mut budget = usize::MAX;
        let kept = rdp_samples(&samples, 2.0, Distance::Line, &mut budget);
        let work = usize::MAX - budget;
        assert!(work <= 4 * zigzag.len(), "{work} distance evaluations");
        assert!(kept.len() <= 4, "{kept:?}");
        // Four corners in turn: RDP peels one corner per range (quadratic); the budget stops it.
        let corners = [(0.0, 0.0), (255.0, 255.0), (255.0, 0.0), (0.0, 255.0)];
        let square: Vec<Pt> = (0..199_000).map(|i| corners[i % 4]).collect();
        let samples = Samples::new(&square, 1.0, false);
        let limit = RDP_WORK_BASE + RDP_WORK_PER_POINT * square.len();
        let mut budget = limit;
        let kept = rdp_samples(&samples, 2.0, Distance::Line, &mut budget);
        assert_eq!(budget, 0, "the budget is what stopped it");
        assert!(kept.len() >= 3, "{kept:?}");
    }

    #[test]
    fn long_straight_stroke_simplifies_to_its_end_points() {
        let d = [stroke(&[(0.0, 0.0), (40.0, 40.0), (100.0, 100.0)])];
        assert_eq!(
            points_of(&simplify(&d)[0]),
            pts(&[(0.0, 0.0), (255.0, 255.0)])
        );
    }

    #[test]
    fn degenerate_drawings_do_not_panic() {
        assert!(simplify(&[]).is_empty());
        assert!(simplify(&[Stroke::default()]).is_empty());
        let one = simplify(&[stroke(&[(10.0, 20.0)])]);
        assert_eq!(one.len(), 1);
        assert_eq!(points_of(&one[0]), pts(&[(0.0, 0.0), (0.0, 0.0)]));
        let same = simplify(&[stroke(&[(5.0, 5.0); 4]), stroke(&[(5.0, 5.0)])]);
        assert_eq!(same.len(), 2);
        assert!(
            same.iter()
                .all(|s| s.x.iter().chain(&s.y).all(|&v| v == 0.0))
        );
        let nan = simplify(&[
            stroke(&[
                (f32::NAN, 1.0),
                (0.0, 0.0),
                (f32::INFINITY, 3.0),
                (10.0, 0.0),
            ]),
            stroke(&[(f32::NAN, f32::NAN)]),
        ]);
        assert_eq!(nan.len(), 1);
        assert_eq!(points_of(&nan[0]), pts(&[(0.0, 0.0), (255.0, 0.0)]));
        let huge = simplify(&[stroke(&[(f32::MIN, 0.0), (f32::MAX, 0.0), (0.0, f32::MAX)])]);
        assert_eq!(huge.len(), 1);
        // Mismatched x / y lengths: the extra coordinates are ignored.
        let ragged = simplify(&[Stroke {
            x: vec![0.0, 1.0, 2.0],
            y: vec![0.0],
            t: None,
        }]);
        assert_eq!(ragged.len(), 1);
    }
}
