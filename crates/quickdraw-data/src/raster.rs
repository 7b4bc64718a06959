//! Rasterisation of strokes into square grey-scale images (the one rasteriser used by `convert`,
//! `predict`, `model run` and the server), checked against tiny-skia in the tests.
//!
//! Two modes, both white ink (255) on black (0), row-major:
//! - `amld`: the lecture's conversion (EPFL EE-559 / AMLD 2018 QuickDraw workshop `json_to_img`):
//!   each axis normalised separately between `0.95 * min` and `1.05 * max`, each segment drawn as
//!   a separate line of width 4 with no anti-aliasing, so pixels are exactly 0 or 255.
//! - `default`: like Google's `numpy_bitmap` rendering: aspect ratio preserved, the drawing centred
//!   in the image with a margin, round caps and joins, anti-aliased.

use serde::{Deserialize, Serialize};

use crate::drawing::{Bitmap, Ink, Stroke};

/// Default image side, as the lecture's `img_64` feature.
pub const DEFAULT_IMAGE_SIZE: u32 = 64;
/// The lecture's line width in `amld` mode (pixels at any image size).
pub const AMLD_LINE_WIDTH: f32 = 4.0;
/// The lecture's per-axis normalisation margins: `min * 0.95`, `max * 1.05`.
pub const AMLD_MIN_FACTOR: f32 = 0.95;
pub const AMLD_MAX_FACTOR: f32 = 1.05;
/// `default` mode line width at 64 px; it scales with the image size (1.3 px at 28 px, close to
/// the stroke weight of Google's 28x28 `numpy_bitmap` images).
pub const DEFAULT_LINE_WIDTH_AT_64: f32 = 3.0;
/// `default` mode blank margin around the drawing, as a share of the image side.
pub const DEFAULT_MARGIN_SHARE: f32 = 1.0 / 32.0;
/// Largest accepted image side.
pub const MAX_IMAGE_SIZE: u32 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RasterMode {
    Amld,
    Default,
}

impl std::str::FromStr for RasterMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "amld" => Ok(RasterMode::Amld),
            "default" => Ok(RasterMode::Default),
            _ => Err(format!(
                "unknown raster mode {s:?} (expected amld or default)"
            )),
        }
    }
}

/// Everything needed to reproduce an image: written into the dataset manifest and the export.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RasterSpec {
    pub mode: RasterMode,
    pub size: u32,
    pub line_width: f32,
    pub anti_alias: bool,
}

/// Draws strokes with tiny-skia's general-purpose stroker (round caps and joins, 4x supersampled
/// anti-aliasing, or butt per-segment lines without anti-aliasing in `amld` mode): the reference
/// the fast rasteriser is tested against.
#[cfg(test)]
pub fn rasterize_reference(strokes: &[Stroke], spec: &RasterSpec) -> Vec<u8> {
    use tiny_skia::{LineCap, LineJoin, Paint, PathBuilder, Pixmap, Transform};
    let Some(m) = mapping(strokes, spec) else {
        return vec![0; spec.pixels()];
    };
    let mut pixmap = Pixmap::new(spec.size, spec.size).expect("valid size");
    let mut paint = Paint::default();
    paint.set_color_rgba8(255, 255, 255, 255);
    paint.anti_alias = spec.anti_alias;
    let amld = spec.mode == RasterMode::Amld;
    let style = tiny_skia::Stroke {
        width: spec.line_width,
        line_cap: if amld { LineCap::Butt } else { LineCap::Round },
        line_join: LineJoin::Round,
        ..Default::default()
    };
    let mut pb = PathBuilder::new();
    for s in strokes {
        let pts: Vec<(f32, f32)> =
            s.x.iter()
                .zip(&s.y)
                .map(|(&x, &y)| (x * m.sx + m.ox, y * m.sy + m.oy))
                .collect();
        for (i, w) in pts.windows(2).enumerate() {
            if amld || i == 0 {
                pb.move_to(w[0].0, w[0].1);
            }
            pb.line_to(w[1].0, w[1].1);
        }
    }
    if let Some(path) = pb.finish() {
        pixmap.stroke_path(&path, &paint, &style, Transform::identity(), None);
    }
    pixmap.data().chunks_exact(4).map(|p| p[3]).collect()
}

impl RasterSpec {
    /// The documented parameters of a mode at an image size, with an optional line width override.
    pub fn new(mode: RasterMode, size: u32, line_width: Option<f32>) -> Self {
        let lw = line_width.unwrap_or(match mode {
            RasterMode::Amld => AMLD_LINE_WIDTH,
            RasterMode::Default => DEFAULT_LINE_WIDTH_AT_64 * size as f32 / 64.0,
        });
        RasterSpec {
            mode,
            size,
            line_width: lw,
            anti_alias: mode == RasterMode::Default,
        }
    }
    pub fn pixels(&self) -> usize {
        (self.size * self.size) as usize
    }
}

impl Default for RasterSpec {
    fn default() -> Self {
        RasterSpec::new(RasterMode::Default, DEFAULT_IMAGE_SIZE, None)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RasterError {
    #[error("image size {0} is out of range 1..={MAX_IMAGE_SIZE}")]
    BadSize(u32),
    #[error("line width {0} must be finite and > 0")]
    BadLineWidth(f32),
}

/// Renders any ink (strokes or a bitmap) to a `size * size` grey image.
pub fn rasterize(ink: &Ink, spec: &RasterSpec) -> Result<Vec<u8>, RasterError> {
    check(spec)?;
    Ok(match ink {
        Ink::Strokes(s) => rasterize_strokes(s, spec),
        Ink::Bitmap(b) => resize_bitmap(b, spec.size as usize),
    })
}

/// Checks the size and line width of a spec.
pub fn check(spec: &RasterSpec) -> Result<(), RasterError> {
    if spec.size == 0 || spec.size > MAX_IMAGE_SIZE {
        return Err(RasterError::BadSize(spec.size));
    }
    if !(spec.line_width.is_finite() && spec.line_width > 0.0) {
        return Err(RasterError::BadLineWidth(spec.line_width));
    }
    Ok(())
}

/// Maps drawing coordinates to pixel coordinates for a mode.
struct Mapping {
    sx: f32,
    sy: f32,
    ox: f32,
    oy: f32,
}

fn bounds(strokes: &[Stroke]) -> Option<(f32, f32, f32, f32)> {
    let mut it = strokes.iter().flat_map(|s| s.x.iter().zip(&s.y));
    let (&x0, &y0) = it.next()?;
    Some(it.fold((x0, y0, x0, y0), |(a, b, c, d), (&x, &y)| {
        (a.min(x), b.min(y), c.max(x), d.max(y))
    }))
}

fn mapping(strokes: &[Stroke], spec: &RasterSpec) -> Option<Mapping> {
    let (minx, miny, maxx, maxy) = bounds(strokes)?;
    let size = spec.size as f32;
    Some(match spec.mode {
        RasterMode::Amld => {
            // (v - min*0.95) / max(max*1.05 - min*0.95, 1) * size, per axis.
            let (lx, hx) = (minx * AMLD_MIN_FACTOR, maxx * AMLD_MAX_FACTOR);
            let (ly, hy) = (miny * AMLD_MIN_FACTOR, maxy * AMLD_MAX_FACTOR);
            let sx = size / (hx - lx).max(1.0);
            let sy = size / (hy - ly).max(1.0);
            Mapping {
                sx,
                sy,
                ox: -lx * sx,
                oy: -ly * sy,
            }
        }
        RasterMode::Default => {
            let margin = size * DEFAULT_MARGIN_SHARE + spec.line_width / 2.0;
            let avail = (size - 2.0 * margin).max(1.0);
            let extent = (maxx - minx).max(maxy - miny);
            let s = if extent > 0.0 { avail / extent } else { 1.0 };
            let ox = (size - (maxx - minx) * s) / 2.0 - minx * s;
            let oy = (size - (maxy - miny) * s) / 2.0 - miny * s;
            Mapping {
                sx: s,
                sy: s,
                ox,
                oy,
            }
        }
    })
}

/// Pixels evaluated together by the segment kernel: a fixed-width, branch-free block that the
/// compiler turns into SIMD (the canvas rows carry this many spare columns so a block may run past
/// the right edge).
const LANES: usize = 8;

/// Renders strokes (the spec must be valid: see [`rasterize`]).
pub fn rasterize_strokes(strokes: &[Stroke], spec: &RasterSpec) -> Vec<u8> {
    let size = spec.size as usize;
    let Some(m) = mapping(strokes, spec) else {
        return vec![0u8; spec.pixels()];
    };
    // Rows of at least LANES pixels take blocks as they are (a block that would pass the right
    // edge is moved left, recomputing some pixels: max is idempotent); narrower images get
    // spare columns.
    let stride = if size >= LANES { size } else { size + LANES };
    let mut canvas = Canvas {
        stride,
        size,
        px: vec![0u8; stride * size],
    };
    let r = spec.line_width / 2.0;
    for s in strokes {
        let mut prev: Option<(f32, f32)> = None;
        let mut drew = false;
        for (&x, &y) in s.x.iter().zip(&s.y) {
            let p = (x * m.sx + m.ox, y * m.sy + m.oy);
            if let Some(q) = prev {
                if q != p {
                    canvas.segment(q, p, r, spec.mode);
                    drew = true;
                }
            }
            prev = Some(p);
        }
        // A tap (one point, or all points equal) leaves a dot, as the player saw.
        if let (false, Some(p)) = (drew, prev) {
            canvas.segment(p, p, r, RasterMode::Default);
        }
    }
    if canvas.stride == size {
        return canvas.px;
    }
    let mut img = Vec::with_capacity(size * size);
    for row in canvas.px.chunks_exact(canvas.stride) {
        img.extend_from_slice(&row[..size]);
    }
    img
}

/// A `size` x `size` image whose rows are `stride` bytes long (`size`, or `size + LANES` when
/// the image is narrower than a block).
struct Canvas {
    stride: usize,
    size: usize,
    px: Vec<u8>,
}

/// `floor` as an integer without a libm call (the baseline x86-64 target has no `roundss`).
fn floor_i(v: f32) -> i32 {
    let i = v as i32;
    if (i as f32) > v { i - 1 } else { i }
}

impl Canvas {
    /// Draws one segment as the set of pixels whose centre is within its stroke outline.
    ///
    /// `Default` mode: a capsule (round caps, so consecutive segments join roundly) with coverage
    /// `clamp(r + 0.5 - distance, 0, 1)`, the box-filter approximation of the exact area coverage
    /// (within one grey level of tiny-skia's 4x-supersampled result on most pixels, see tests);
    /// overlapping strokes take the maximum, not the sum. `Amld` mode: a rectangle with butt
    /// ends, all or nothing, as PIL's `ImageDraw.line` without anti-aliasing.
    ///
    /// Written by hand because tiny-skia's general stroker and supersampling filler take ~140 us
    /// of CPU per 64x64 drawing here (measured with `examples/raster_speed.rs`), ten times the
    /// budget of the 50,000 drawings/s conversion target; QuickDraw ink is only thick polylines,
    /// whose coverage is this closed form. tiny-skia remains the reference the tests compare
    /// against. Each row of the segment's band is evaluated in blocks of [`LANES`] pixels with no
    /// branches, which the compiler vectorises.
    fn segment(&mut self, a: (f32, f32), b: (f32, f32), r: f32, mode: RasterMode) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU was just checked to support AVX2.
            return unsafe { self.segment_avx2(a, b, r, mode) };
        }
        self.segment_body(a, b, r, mode)
    }

    /// [`Canvas::segment`] compiled for AVX2 (one 8-lane instruction per block step instead of
    /// two SSE ones). Same operations in the same order, no FMA contraction, so the pixels are
    /// identical to the baseline build's.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx,avx2")]
    unsafe fn segment_avx2(&mut self, a: (f32, f32), b: (f32, f32), r: f32, mode: RasterMode) {
        self.segment_body(a, b, r, mode)
    }

    #[inline(always)]
    fn segment_body(&mut self, a: (f32, f32), b: (f32, f32), r: f32, mode: RasterMode) {
        // Coverage is zero beyond r + 0.5 from the segment.
        let pad = r + 0.5;
        let lim = self.size as i32 - 1;
        let (min_x, max_x) = (a.0.min(b.0) - pad, a.0.max(b.0) + pad);
        let (min_y, max_y) = (a.1.min(b.1) - pad, a.1.max(b.1) + pad);
        if min_x > lim as f32 + 1.0 || max_x < 0.0 || min_y > lim as f32 + 1.0 || max_y < 0.0 {
            return;
        }
        let y_lo = floor_i(min_y).clamp(0, lim) as usize;
        let y_hi = (floor_i(max_y) + 1).clamp(0, lim) as usize;
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len2 = dx * dx + dy * dy;
        let inv = if len2 > 0.0 { 1.0 / len2 } else { 0.0 };
        let inv_len = inv.sqrt();
        let inv_dy = if dy.abs() > 1e-6 { 1.0 / dy } else { 0.0 };
        for py in y_lo..=y_hi {
            let cy = py as f32 + 0.5;
            // Only the part of the segment within `pad` rows of this one can cover it: its x
            // range, widened by `pad`, bounds the pixels to visit.
            let (t0, t1) = if inv_dy != 0.0 {
                let (u, v) = ((cy - pad - a.1) * inv_dy, (cy + pad - a.1) * inv_dy);
                (u.min(v).max(0.0), u.max(v).min(1.0))
            } else {
                (0.0, 1.0)
            };
            if t0 > t1 {
                continue;
            }
            let (xa, xb) = (a.0 + t0 * dx, a.0 + t1 * dx);
            let span_lo = floor_i(xa.min(xb) - pad).clamp(0, lim) as usize;
            let span_hi = (floor_i(xa.max(xb) + pad) + 1).clamp(0, lim) as usize;
            if xa.max(xb) + pad < 0.0 || xa.min(xb) - pad > lim as f32 + 1.0 {
                continue;
            }
            let dcy = cy - a.1;
            let row = &mut self.px[py * self.stride..(py + 1) * self.stride];
            let mut x0 = span_lo;
            while x0 <= span_hi {
                let xs = x0.min(self.stride - LANES);
                let block: &mut [u8; LANES] = (&mut row[xs..xs + LANES])
                    .try_into()
                    .expect("rows are at least LANES wide");
                let base = xs as f32 + 0.5 - a.0;
                let mut g = [0u8; LANES];
                for (k, g) in g.iter_mut().enumerate() {
                    // Pixel centre relative to `a`.
                    let ox = base + k as f32;
                    let t = (ox * dx + dcy * dy) * inv;
                    let cov = match mode {
                        RasterMode::Default => {
                            let t = t.clamp(0.0, 1.0);
                            let (ex, ey) = (t * dx - ox, t * dy - dcy);
                            // max/min rather than clamp: a NaN becomes 0, never NaN.
                            (pad - (ex * ex + ey * ey).sqrt()).max(0.0).min(1.0)
                        }
                        RasterMode::Amld => {
                            // Perpendicular distance to the line, and the foot inside the segment.
                            let perp = (ox * dy - dcy * dx).abs() * inv_len;
                            let inside = (0.0..=1.0).contains(&t) & (perp <= r);
                            inside as u8 as f32
                        }
                    };
                    // SAFETY: cov is in [0, 1] and not NaN, so the value is in [0.5, 255.5]
                    // and fits an i32; the unchecked conversion is what lets it vectorise.
                    *g = unsafe { (cov * 255.0 + 0.5).to_int_unchecked::<i32>() } as u8;
                }
                for (v, g) in block.iter_mut().zip(g) {
                    *v = (*v).max(g);
                }
                x0 += LANES;
            }
        }
    }
}

/// Bilinear resampling of a square bitmap (pixel centres aligned, as `tf.image.resize`).
pub fn resize_bitmap(b: &Bitmap, size: usize) -> Vec<u8> {
    if b.side == size {
        return b.pixels.clone();
    }
    let scale = b.side as f32 / size as f32;
    let at = |x: isize, y: isize| -> f32 {
        let x = x.clamp(0, b.side as isize - 1) as usize;
        let y = y.clamp(0, b.side as isize - 1) as usize;
        b.pixels[y * b.side + x] as f32
    };
    let mut out = Vec::with_capacity(size * size);
    for oy in 0..size {
        let fy = (oy as f32 + 0.5) * scale - 0.5;
        let y0 = fy.floor();
        let wy = fy - y0;
        for ox in 0..size {
            let fx = (ox as f32 + 0.5) * scale - 0.5;
            let x0 = fx.floor();
            let wx = fx - x0;
            let (xi, yi) = (x0 as isize, y0 as isize);
            let top = at(xi, yi) * (1.0 - wx) + at(xi + 1, yi) * wx;
            let bot = at(xi, yi + 1) * (1.0 - wx) + at(xi + 1, yi + 1) * wx;
            out.push((top * (1.0 - wy) + bot * wy).round().clamp(0.0, 255.0) as u8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ink(strokes: &[(&[f32], &[f32])]) -> Ink {
        Ink::Strokes(
            strokes
                .iter()
                .map(|(x, y)| Stroke::new(x.to_vec(), y.to_vec()))
                .collect(),
        )
    }

    fn show(img: &[u8], size: usize) -> String {
        img.chunks(size)
            .map(|r| {
                r.iter()
                    .map(|&v| if v > 127 { '#' } else { '.' })
                    .collect::<String>()
                    + "\n"
            })
            .collect()
    }

    #[test]
    fn amld_is_binary_and_hand_checked() {
        // An "L": vertical stroke x=100, y 0..=200, then horizontal y=200, x 100..=200.
        // Per axis: x in [100*0.95, 200*1.05] = [95, 210] -> scale 16/115; y in [0, 210] -> 16/210.
        // Vertical line at x = (100-95)*16/115 = 0.696 px, width 4 -> covers x in [-1.3, 2.7]:
        // pixel columns 0 and 1 (centres 0.5, 1.5; 2.5 as well since 2.5 < 2.7).
        // Horizontal line at y = 200*16/210 = 15.24, width 4 -> y in [13.24, 17.24]: rows 13..=15.
        let spec = RasterSpec::new(RasterMode::Amld, 16, None);
        let img = rasterize(
            &ink(&[(&[100.0, 100.0, 200.0], &[0.0, 200.0, 200.0])]),
            &spec,
        )
        .unwrap();
        assert!(
            img.iter().all(|&v| v == 0 || v == 255),
            "amld must be 0/255"
        );
        let pic = show(&img, 16);
        let rows: Vec<&str> = pic.lines().collect();
        // Rows 0..=12: only the vertical bar, columns 0..=2.
        for r in &rows[0..13] {
            assert_eq!(*r, "###.............", "{pic}");
        }
        // Rows 13..=15: the horizontal bar from x=0.7 to x=(200-95)*16/115=14.6 (butt caps), so
        // column 0 (centre 0.5) is only covered where the vertical bar reaches (y <= 15.24).
        assert_eq!(rows[13], "###############.", "{pic}");
        assert_eq!(rows[14], "###############.", "{pic}");
        assert_eq!(rows[15], ".##############.", "{pic}");
    }

    #[test]
    fn default_mode_centres_and_preserves_aspect() {
        // A horizontal line: aspect preserved means it stays one line in the middle row band.
        let spec = RasterSpec::new(RasterMode::Default, 32, Some(2.0));
        let img = rasterize(&ink(&[(&[0.0, 255.0], &[10.0, 10.0])]), &spec).unwrap();
        let ink_rows: Vec<usize> = (0..32)
            .filter(|&r| img[r * 32..(r + 1) * 32].iter().any(|&v| v > 0))
            .collect();
        assert_eq!(ink_rows, vec![15, 16], "line centred vertically");
        // Margin: first and last columns stay blank.
        assert!((0..32).all(|r| img[r * 32] == 0 && img[r * 32 + 31] == 0));
        // Anti-aliased: some intermediate values exist somewhere.
        let spec = RasterSpec::new(RasterMode::Default, 32, None);
        let img = rasterize(&ink(&[(&[0.0, 255.0], &[0.0, 100.0])]), &spec).unwrap();
        assert!(img.iter().any(|&v| v > 0 && v < 255));
    }

    #[test]
    fn close_to_tiny_skia_on_real_shapes() {
        // Doodle-like strokes: a wobbly closed loop, a zigzag, a short tick.
        let loop_x: Vec<f32> = (0..40)
            .map(|i| 128.0 + 100.0 * (i as f32 * 0.16).cos() + (i % 3) as f32)
            .collect();
        let loop_y: Vec<f32> = (0..40)
            .map(|i| 128.0 + 80.0 * (i as f32 * 0.16).sin())
            .collect();
        let strokes = vec![
            Stroke::new(loop_x, loop_y),
            Stroke::new(
                vec![10., 60., 110., 160., 210.],
                vec![240., 180., 240., 180., 240.],
            ),
            Stroke::new(vec![200., 230.], vec![20., 60.]),
        ];
        for mode in [RasterMode::Default, RasterMode::Amld] {
            let spec = RasterSpec::new(mode, 64, None);
            let ours = rasterize(&Ink::Strokes(strokes.clone()), &spec).unwrap();
            let skia = rasterize_reference(&strokes, &spec);
            let diff: f64 = ours
                .iter()
                .zip(&skia)
                .map(|(&a, &b)| (a as f64 - b as f64).abs())
                .sum::<f64>()
                / ours.len() as f64;
            let ink = |img: &[u8]| img.iter().filter(|&&v| v >= 128).count() as f64;
            let (a, b) = (ink(&ours), ink(&skia));
            let both = ours
                .iter()
                .zip(&skia)
                .filter(|(x, y)| **x >= 128 && **y >= 128)
                .count() as f64;
            // Mean absolute difference under 3 grey levels (of 255) and ink masks agreeing on
            // more than 90% of their union.
            assert!(diff < 3.0, "{mode:?}: mean abs diff {diff}");
            assert!(
                both / (a + b - both) > 0.9,
                "{mode:?}: IoU {}",
                both / (a + b - both)
            );
        }
    }

    #[test]
    fn dots_and_empty_drawings() {
        let spec = RasterSpec::new(RasterMode::Default, 16, None);
        let img = rasterize(&ink(&[(&[5.0], &[5.0])]), &spec).unwrap();
        assert!(img.iter().any(|&v| v > 0), "a single tap leaves a dot");
        let img = rasterize(&Ink::Strokes(vec![]), &spec).unwrap();
        assert_eq!(img, vec![0; 256]);
        assert_eq!(
            rasterize(&Ink::Strokes(vec![]), &RasterSpec { size: 0, ..spec }),
            Err(RasterError::BadSize(0))
        );
    }

    #[test]
    fn bitmap_resize_keeps_constant_images_and_sizes() {
        let b = Bitmap {
            side: 28,
            pixels: vec![200; 784],
        };
        assert_eq!(resize_bitmap(&b, 64), vec![200; 4096]);
        assert_eq!(resize_bitmap(&b, 28), b.pixels);
        let mut px = vec![0; 4];
        px[0] = 255;
        let up = resize_bitmap(
            &Bitmap {
                side: 2,
                pixels: px,
            },
            4,
        );
        assert_eq!(up[0], 255);
        assert_eq!(up[15], 0);
    }
}
