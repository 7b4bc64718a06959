//! Data augmentation of training rasters (`--augment none|light|strong`): a small random affine
//! transform (rotation, scale, shear, translation, and for `strong` a horizontal flip) of each
//! decoded image, drawn from a seed that depends only on `--seed` and the example's place in the
//! training stream, so a run is reproducible and a resumed run sees what an uninterrupted one
//! sees. Evaluation, export and serving never augment.
//!
//! Done on the raster (after the one preprocessing path) rather than on strokes so that it
//! applies the same way to every input format, including the 28x28 `numpy_bitmap` files that
//! have no strokes; written here because it is a dozen lines of inverse mapping with bilinear
//! sampling, not worth an image-processing dependency.

use std::fmt;
use std::str::FromStr;

use quickdraw_data::split::mix64;
use serde::{Deserialize, Serialize};

/// `--augment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Augment {
    #[default]
    None,
    Light,
    Strong,
}

/// The ranges of one level: each parameter is drawn uniformly in `[-r, r]`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ranges {
    degrees: f64,
    /// Relative scale change.
    scale: f64,
    /// Shear factor along x.
    shear: f64,
    /// Shift as a share of the side.
    shift: f64,
    /// Chance of a horizontal flip.
    flip: f64,
}

impl Augment {
    pub fn name(self) -> &'static str {
        match self {
            Augment::None => "none",
            Augment::Light => "light",
            Augment::Strong => "strong",
        }
    }

    pub fn is_none(&self) -> bool {
        *self == Augment::None
    }

    fn ranges(self) -> Option<Ranges> {
        match self {
            Augment::None => None,
            Augment::Light => Some(Ranges {
                degrees: 8.0,
                scale: 0.08,
                shear: 0.1,
                shift: 0.04,
                flip: 0.0,
            }),
            Augment::Strong => Some(Ranges {
                degrees: 15.0,
                scale: 0.15,
                shear: 0.2,
                shift: 0.08,
                flip: 0.5,
            }),
        }
    }

    /// Transforms `image` (`size * size` grey values) in place with the transform `seed` draws.
    pub fn apply(self, image: &mut [u8], size: usize, seed: u64) {
        let Some(r) = self.ranges() else { return };
        let mut state = seed;
        let mut uniform = |range: f64| {
            state = mix64(state.wrapping_add(0x9E37_79B9_7F4A_7C15));
            let u = (state >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
            (2.0 * u - 1.0) * range
        };
        let theta = uniform(r.degrees).to_radians();
        let scale = 1.0 + uniform(r.scale);
        let shear = uniform(r.shear);
        let (tx, ty) = (
            uniform(r.shift) * size as f64,
            uniform(r.shift) * size as f64,
        );
        let flip = (uniform(1.0) + 1.0) / 2.0 < r.flip;
        let m = Affine::new(theta, scale, shear, flip);
        warp(image, size, &m, tx, ty);
    }
}

impl FromStr for Augment {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Augment::None),
            "light" => Ok(Augment::Light),
            "strong" => Ok(Augment::Strong),
            _ => Err(format!(
                "unknown augmentation {s:?} (expected none, light or strong)"
            )),
        }
    }
}

impl fmt::Display for Augment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The seed of the example at `index` within the batch that ends at stream position
/// `(epoch, offset)`.
pub fn example_seed(seed: u64, epoch: u64, offset: u64, index: usize) -> u64 {
    mix64(seed ^ mix64(epoch ^ mix64(offset ^ mix64(index as u64))))
}

/// The inverse of the 2x2 part of `scale * rotate * shear * flip`, mapping output to input.
struct Affine {
    inv: [[f64; 2]; 2],
}

impl Affine {
    fn new(theta: f64, scale: f64, shear: f64, flip: bool) -> Self {
        let (s, c) = theta.sin_cos();
        let f = if flip { -1.0 } else { 1.0 };
        // forward = scale * R(theta) * [[1, shear], [0, 1]] * diag(f, 1)
        let a = [
            [scale * c * f, scale * (c * shear - s)],
            [scale * s * f, scale * (s * shear + c)],
        ];
        let det = a[0][0] * a[1][1] - a[0][1] * a[1][0];
        Affine {
            inv: [
                [a[1][1] / det, -a[0][1] / det],
                [-a[1][0] / det, a[0][0] / det],
            ],
        }
    }
}

/// Resamples `image` through the inverse map about the centre, shifted by `(tx, ty)` pixels,
/// with bilinear interpolation; outside the source is background (0).
fn warp(image: &mut [u8], size: usize, m: &Affine, tx: f64, ty: f64) {
    let src = image.to_vec();
    let c = (size as f64 - 1.0) / 2.0;
    let at = |x: isize, y: isize| -> f64 {
        if x < 0 || y < 0 || x >= size as isize || y >= size as isize {
            0.0
        } else {
            src[y as usize * size + x as usize] as f64
        }
    };
    for y in 0..size {
        for x in 0..size {
            let (dx, dy) = (x as f64 - c - tx, y as f64 - c - ty);
            let sx = m.inv[0][0] * dx + m.inv[0][1] * dy + c;
            let sy = m.inv[1][0] * dx + m.inv[1][1] * dy + c;
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as isize, y0 as isize);
            let v = at(x0, y0) * (1.0 - fx) * (1.0 - fy)
                + at(x0 + 1, y0) * fx * (1.0 - fy)
                + at(x0, y0 + 1) * (1.0 - fx) * fy
                + at(x0 + 1, y0 + 1) * fx * fy;
            image[y * size + x] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_flip_by_hand() {
        // A 3x3 image with one bright pixel at (x=0, y=1).
        let mut img = vec![0u8; 9];
        img[3] = 200;
        let mut same = img.clone();
        warp(&mut same, 3, &Affine::new(0.0, 1.0, 0.0, false), 0.0, 0.0);
        assert_eq!(same, img);
        let mut flipped = img.clone();
        warp(&mut flipped, 3, &Affine::new(0.0, 1.0, 0.0, true), 0.0, 0.0);
        assert_eq!(flipped, vec![0, 0, 0, 0, 0, 200, 0, 0, 0]);
        // A shift by one pixel to the right.
        let mut shifted = img.clone();
        warp(
            &mut shifted,
            3,
            &Affine::new(0.0, 1.0, 0.0, false),
            1.0,
            0.0,
        );
        assert_eq!(shifted, vec![0, 0, 0, 0, 200, 0, 0, 0, 0]);
    }

    #[test]
    fn a_quarter_turn_moves_a_pixel_around_the_centre() {
        let mut img = vec![0u8; 9];
        img[1] = 100; // (x=1, y=0): above the centre
        warp(
            &mut img,
            3,
            &Affine::new(std::f64::consts::FRAC_PI_2, 1.0, 0.0, false),
            0.0,
            0.0,
        );
        // +90 degrees in image coordinates (y down): (0, -1) -> (1, 0), right of the centre.
        assert_eq!(img, vec![0, 0, 0, 0, 0, 100, 0, 0, 0]);
    }

    #[test]
    fn deterministic_per_seed_and_different_across_seeds() {
        let base: Vec<u8> = (0..64 * 64).map(|i| ((i * 37) % 251) as u8).collect();
        let run = |a: Augment, seed| {
            let mut v = base.clone();
            a.apply(&mut v, 64, seed);
            v
        };
        assert_eq!(run(Augment::Light, 7), run(Augment::Light, 7));
        assert_ne!(run(Augment::Light, 7), run(Augment::Light, 8));
        assert_eq!(run(Augment::None, 7), base);
        assert_ne!(example_seed(1, 0, 16, 0), example_seed(1, 1, 16, 0));
        assert_ne!(example_seed(1, 0, 16, 0), example_seed(1, 0, 16, 1));
    }

    #[test]
    fn light_keeps_most_of_the_ink() {
        // A centred filled square keeps most of its ink under light transforms (nothing is
        // pushed out of the frame).
        let mut base = vec![0u8; 32 * 32];
        for y in 10..22 {
            for x in 10..22 {
                base[y * 32 + x] = 255;
            }
        }
        let ink = |v: &[u8]| v.iter().map(|&p| p as u64).sum::<u64>() as f64;
        for seed in 0..20 {
            let mut v = base.clone();
            Augment::Light.apply(&mut v, 32, seed);
            let ratio = ink(&v) / ink(&base);
            assert!(
                (0.75..1.3).contains(&ratio),
                "seed {seed}: ink ratio {ratio}"
            );
        }
    }
}
