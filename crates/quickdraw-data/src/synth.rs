//! Deterministic procedural QuickDraw-like doodles (raw strokes with timing and metadata) and the
//! NDJSON line formatter, so tests and the quick start have data without a network.
//!
//! Every drawing is a pure function of `(class, index, seed)`: the same arguments give the same
//! [`Drawing`], and [`crate::ingest::ndjson::to_line_as`] gives the same bytes, on every run.
//!
//! How a doodle is made:
//! 1. a class template in a unit frame (y down, like screen pixels), picked among several
//!    *variants* that differ in stroke count, stroke order and drawing direction, with random
//!    proportions (aspect, corner positions, number of zigzag teeth, spiral turns, ...);
//! 2. each stroke is densified and displaced along its normal by smooth noise (a sum of a few
//!    low-frequency sinusoids in arc length), plus a smooth warp of the whole drawing;
//! 3. a random rotation (a tilt of ~15 degrees for upright shapes, a quarter of zigzags and
//!    waves turned sideways, any angle for circles, lines, spirals and arrows), anisotropic
//!    scale, a size of 120..450 px and a position on a ~1000 x 1000 px canvas;
//! 4. pen sampling in time: a per-drawing speed of 0.5..2 px/ms, slower at stroke ends and near
//!    corners (which always get a sample, so corners stay sharp), samples every ~10..22 ms,
//!    pauses of 120..700 ms between strokes; `t` is integer milliseconds since the first point
//!    and strictly increases within a drawing. Coordinates are rounded to 0.1 px.
//!
//! Difficulty (measured once with throwaway numpy scripts on seed 1, 600 drawings per class,
//! 80/20 split, bounding-box-normalised rasters): softmax regression on 28x28 pixels reaches
//! ~0.86 test accuracy, a two-layer 3x3 CNN on 32x32 ~0.97 after 8 epochs; the hard classes for
//! a linear model are zigzag, wave and arrow.

use std::f64::consts::PI;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::drawing::{Drawing, Ink, Stroke};
#[cfg(test)]
use crate::ingest::ndjson::to_line_as;
use crate::split::mix64;

/// The synthetic classes, in class-index order.
pub const SHAPES: &[&str] = &[
    "circle", "square", "triangle", "star", "zigzag", "line", "spiral", "cross", "house", "wave",
    "heart", "arrow",
];

/// Share of drawings flagged `recognized: false` used by [`synth_drawing`] (which has no config).
pub const DEFAULT_UNRECOGNIZED_SHARE: f32 = 0.05;

/// Country codes with rough weights (the real data is dominated by the US).
const COUNTRIES: &[(&str, u32)] = &[
    ("US", 40),
    ("GB", 8),
    ("DE", 6),
    ("CA", 5),
    ("BR", 5),
    ("RU", 5),
    ("FR", 4),
    ("AU", 4),
    ("PL", 3),
    ("KR", 3),
    ("IT", 3),
    ("SE", 3),
    ("JP", 3),
    ("IN", 3),
    ("VE", 2),
    ("ES", 3),
];

/// 2017-01-01T00:00:00Z and 2018-01-01T00:00:00Z.
const YEAR_2017: (i64, i64) = (1_483_228_800, 1_514_764_800);

/// How much synthetic data to make.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SynthConfig {
    /// Number of classes: the first `classes` entries of [`SHAPES`].
    pub classes: usize,
    /// Drawings per class.
    pub per_class: usize,
    pub seed: u64,
    /// Share of drawings flagged `recognized: false` (deterministic per drawing), e.g. 0.05.
    pub unrecognized_share: f32,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            classes: SHAPES.len(),
            per_class: 100,
            seed: 0,
            unrecognized_share: DEFAULT_UNRECOGNIZED_SHARE,
        }
    }
}

impl SynthConfig {
    /// The class names this config uses, in class-index order.
    pub fn class_names(&self) -> &'static [&'static str] {
        &SHAPES[..self.classes.min(SHAPES.len())]
    }
}

/// One synthetic drawing and how it was made.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthRecord {
    pub class: usize,
    pub index: u64,
    /// Which template variant was drawn, e.g. `"one-stroke"`, `"four-sides"` (for debugging and
    /// for tests that want stroke-count variety).
    pub variant: &'static str,
    /// Uniform in `[0, 1)`, fixed per drawing: the drawing is unrecognised when
    /// `recognized_draw < unrecognized_share`, so shares nest (5% unrecognised drawings are a
    /// subset of the 10% ones).
    pub recognized_draw: f32,
    /// The drawing, `recognized` set with [`DEFAULT_UNRECOGNIZED_SHARE`].
    pub drawing: Drawing,
}

/// Name of class `class`, panicking when out of range.
pub fn class_name(class: usize) -> &'static str {
    SHAPES[class]
}

/// The drawings of one class, `cfg.per_class` of them, index 0, 1, ...
///
/// Panics when `class_idx >= SHAPES.len()`.
pub fn synth_class(class_idx: usize, cfg: &SynthConfig) -> impl Iterator<Item = Drawing> + use<> {
    assert!(
        class_idx < SHAPES.len(),
        "synthetic class {class_idx} out of range"
    );
    let SynthConfig {
        per_class,
        seed,
        unrecognized_share,
        ..
    } = *cfg;
    (0..per_class as u64).map(move |index| {
        let rec = synth_drawing(class_idx, index, seed);
        let mut d = rec.drawing;
        d.recognized = rec.recognized_draw >= unrecognized_share;
        d
    })
}

/// All drawings of a config, class by class (class 0 first).
pub fn synth_all(cfg: &SynthConfig) -> impl Iterator<Item = Drawing> + use<> {
    let cfg = *cfg;
    (0..cfg.classes.min(SHAPES.len())).flat_map(move |c| synth_class(c, &cfg))
}

/// Deterministic unique key: a keyed bijection of `(class, index)` onto 16-digit numbers
/// `2^52 ..= 2^53 - 1`, like Google's key ids. Unique within a seed for `class < 256`,
/// `index < 2^44`.
pub fn synth_key_id(class: usize, index: u64, seed: u64) -> u64 {
    const MASK: u64 = (1 << 52) - 1;
    let mut x = (((class as u64) & 0xff) << 44 | (index & ((1 << 44) - 1))) & MASK;
    let mut k = seed;
    for _ in 0..4 {
        k = mix64(k);
        x = (x.wrapping_add(k)) & MASK; // add mod 2^52: bijective
        x = x.wrapping_mul(0x9E37_79B9_7F4A_7C15 | 1) & MASK; // odd multiply mod 2^52: bijective
        x ^= x >> 23; // xorshift: bijective
    }
    (1 << 52) + x
}

/// One synthetic drawing of class `class` (index into [`SHAPES`]).
///
/// Panics when `class >= SHAPES.len()`.
pub fn synth_drawing(class: usize, index: u64, seed: u64) -> SynthRecord {
    assert!(class < SHAPES.len(), "synthetic class {class} out of range");
    let stream = mix64(seed ^ mix64((class as u64) << 48 ^ index.rotate_left(17)));
    let mut rng = ChaCha8Rng::seed_from_u64(stream);

    // Metadata first, so it does not depend on how many random numbers a template used.
    let recognized_draw = rng.random::<f32>();
    let timestamp = rng.random_range(YEAR_2017.0..YEAR_2017.1);
    let countrycode = pick_country(&mut rng).to_string();

    let (variant, template, rotation) = template(class, &mut rng);
    let strokes = render(template, rotation, &mut rng);

    SynthRecord {
        class,
        index,
        variant,
        recognized_draw,
        drawing: Drawing {
            key_id: synth_key_id(class, index, seed),
            word: SHAPES[class].to_string(),
            countrycode,
            timestamp,
            recognized: recognized_draw >= DEFAULT_UNRECOGNIZED_SHARE,
            ink: Ink::Strokes(strokes),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Randomness helpers

fn uni(rng: &mut ChaCha8Rng, a: f64, b: f64) -> f64 {
    a + (b - a) * rng.random::<f64>()
}

fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    rng.random::<f64>() < p
}

/// Standard normal (Box-Muller), clamped to +-3 sigma.
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1 = rng.random::<f64>().max(1e-12);
    let u2 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()).clamp(-3.0, 3.0)
}

fn pick_country(rng: &mut ChaCha8Rng) -> &'static str {
    let total: u32 = COUNTRIES.iter().map(|c| c.1).sum();
    let mut r = rng.random_range(0..total);
    for &(code, w) in COUNTRIES {
        if r < w {
            return code;
        }
        r -= w;
    }
    COUNTRIES[0].0
}

// ---------------------------------------------------------------------------------------------
// Templates: strokes as polylines in a unit frame centred near 0, y pointing down.

type Pt = (f64, f64);
type Poly = Vec<Pt>;

/// How the final drawing may be rotated.
#[derive(Clone, Copy)]
enum Rotation {
    /// Upright shapes: normal with this standard deviation (radians).
    Tilt(f64),
    /// Like `Tilt`, but a quarter of the drawings are turned by +-90 degrees (vertical waves).
    TiltOrSideways(f64),
    /// Any direction.
    Any,
}

fn jit(rng: &mut ChaCha8Rng, p: Pt, a: f64) -> Pt {
    (p.0 + uni(rng, -a, a), p.1 + uni(rng, -a, a))
}

fn reversed(mut p: Poly) -> Poly {
    p.reverse();
    p
}

/// Points on an ellipse from angle `a0` sweeping `sweep` radians (sign = direction).
fn arc(c: Pt, rx: f64, ry: f64, a0: f64, sweep: f64, n: usize) -> Poly {
    (0..=n)
        .map(|i| {
            let a = a0 + sweep * i as f64 / n as f64;
            (c.0 + rx * a.cos(), c.1 + ry * a.sin())
        })
        .collect()
}

/// Closed polygon drawn as one stroke starting at vertex `start`, in direction `dir` (+1 / -1),
/// ending with an overshoot or a gap of up to ~`slop` along the last side.
fn polygon_stroke(v: &[Pt], start: usize, dir: isize, slop: f64) -> Poly {
    let n = v.len() as isize;
    let mut out: Poly = (0..=n)
        .map(|k| v[((start as isize + dir * k) % n + n) as usize % n as usize])
        .collect();
    // Adjust the closing point: overshoot past the start or stop short of it.
    let last = out[out.len() - 1];
    let prev = out[out.len() - 2];
    let end = (
        last.0 + (last.0 - prev.0) * slop,
        last.1 + (last.1 - prev.1) * slop,
    );
    *out.last_mut().unwrap() = end;
    out
}

fn template(class: usize, rng: &mut ChaCha8Rng) -> (&'static str, Vec<Poly>, Rotation) {
    let tilt = Rotation::Tilt(0.25);
    match SHAPES[class] {
        "circle" => {
            let aspect = uni(rng, 0.85, 1.18);
            let (rx, ry) = (0.5 * aspect.sqrt(), 0.5 / aspect.sqrt());
            let dir = if chance(rng, 0.65) { -1.0 } else { 1.0 };
            if chance(rng, 0.8) {
                // One stroke, usually starting near the top, closing with a small overlap or gap.
                let a0 = -PI / 2.0 + normal(rng) * 0.9;
                let sweep = dir * 2.0 * PI * uni(rng, 0.93, 1.1);
                (
                    "one-stroke",
                    vec![arc((0.0, 0.0), rx, ry, a0, sweep, 72)],
                    Rotation::Any,
                )
            } else {
                // Two halves, both from the top down.
                let a0 = -PI / 2.0 + normal(rng) * 0.1;
                let left = arc((0.0, 0.0), rx, ry, a0, -PI * uni(rng, 0.95, 1.08), 36);
                let right = arc((0.0, 0.0), rx, ry, a0, PI * uni(rng, 0.95, 1.08), 36);
                ("two-halves", vec![left, right], Rotation::Any)
            }
        }
        "square" => {
            let aspect = uni(rng, 0.8, 1.25);
            let (w, h) = (0.5 * aspect.sqrt(), 0.5 / aspect.sqrt());
            let c = [(-w, -h), (w, -h), (w, h), (-w, h)].map(|p| jit(rng, p, 0.035));
            let r = rng.random::<f64>();
            if r < 0.55 {
                let start = if chance(rng, 0.75) {
                    0
                } else {
                    rng.random_range(0..4)
                };
                let dir = if chance(rng, 0.6) { 1 } else { -1 };
                let slop = uni(rng, -0.08, 0.1);
                (
                    "one-stroke",
                    vec![polygon_stroke(&c, start, dir, slop)],
                    tilt,
                )
            } else if r < 0.8 {
                let mut sides = vec![
                    vec![c[0], c[1]],
                    vec![c[1], c[2]],
                    vec![c[3], c[2]],
                    vec![c[0], c[3]],
                ];
                if chance(rng, 0.4) {
                    sides.rotate_right(1); // left side first
                }
                ("four-sides", sides, tilt)
            } else {
                let a = vec![c[0], c[3], c[2]];
                let b = vec![c[0], c[1], c[2]];
                let strokes = if chance(rng, 0.5) {
                    vec![a, b]
                } else {
                    vec![b, a]
                };
                ("two-corners", strokes, tilt)
            }
        }
        "triangle" => {
            let apex = (uni(rng, -0.12, 0.12), -0.5 + uni(rng, -0.03, 0.03));
            let half = uni(rng, 0.4, 0.6);
            let bl = jit(rng, (-half, 0.42), 0.04);
            let br = jit(rng, (half, 0.42), 0.04);
            let r = rng.random::<f64>();
            if r < 0.65 {
                let v = [apex, br, bl];
                let dir = if chance(rng, 0.55) { -1 } else { 1 };
                let start = if chance(rng, 0.8) {
                    0
                } else {
                    rng.random_range(0..3)
                };
                let slop = uni(rng, -0.06, 0.1);
                (
                    "one-stroke",
                    vec![polygon_stroke(&v, start, dir, slop)],
                    tilt,
                )
            } else if r < 0.85 {
                (
                    "three-sides",
                    vec![vec![apex, bl], vec![apex, br], vec![bl, br]],
                    tilt,
                )
            } else {
                (
                    "roof-and-base",
                    vec![vec![bl, apex, br], vec![bl, br]],
                    tilt,
                )
            }
        }
        "star" => {
            let outer: Vec<Pt> = (0..5)
                .map(|k| {
                    let a = -PI / 2.0 + k as f64 * 2.0 * PI / 5.0;
                    jit(rng, (0.5 * a.cos(), 0.5 * a.sin()), 0.03)
                })
                .collect();
            let r = rng.random::<f64>();
            if r < 0.5 {
                // Pentagram in one stroke, usually from the bottom-left point.
                let start = if chance(rng, 0.6) {
                    3
                } else {
                    rng.random_range(0..5)
                };
                let step = if chance(rng, 0.5) { 2 } else { 3 };
                let mut p: Poly = (0..=5).map(|k| outer[(start + step * k) % 5]).collect();
                let last = p.len() - 1;
                p[last] = jit(rng, p[last], 0.03);
                ("pentagram", vec![p], tilt)
            } else if r < 0.9 {
                // Outline with inner vertices.
                let inner_r = 0.5 * uni(rng, 0.36, 0.52);
                let mut v = Vec::with_capacity(10);
                for (k, &o) in outer.iter().enumerate() {
                    v.push(o);
                    let a = -PI / 2.0 + (k as f64 + 0.5) * 2.0 * PI / 5.0;
                    v.push(jit(rng, (inner_r * a.cos(), inner_r * a.sin()), 0.02));
                }
                let dir = if chance(rng, 0.6) { 1 } else { -1 };
                let slop = uni(rng, -0.05, 0.08);
                ("outline", vec![polygon_stroke(&v, 0, dir, slop)], tilt)
            } else {
                // Five separate lines of the pentagram.
                let strokes = (0..5).map(|k| vec![outer[k], outer[(k + 2) % 5]]).collect();
                ("five-lines", strokes, tilt)
            }
        }
        "zigzag" => {
            let n = rng.random_range(4..=7);
            let amp = uni(rng, 0.15, 0.35);
            let up = if chance(rng, 0.5) { 1.0 } else { -1.0 };
            let mut p: Poly = (0..=n)
                .map(|i| {
                    let x = -0.5 + i as f64 / n as f64 + uni(rng, -0.2, 0.2) / n as f64;
                    let s = if i % 2 == 0 { up } else { -up };
                    (x, s * amp * uni(rng, 0.8, 1.2))
                })
                .collect();
            if chance(rng, 0.2) {
                p.reverse();
            }
            ("one-stroke", vec![p], Rotation::TiltOrSideways(0.2))
        }
        "line" => {
            let sag = uni(rng, -0.04, 0.04);
            let p: Poly = (0..=16)
                .map(|i| {
                    let u = i as f64 / 16.0;
                    (u - 0.5, sag * 4.0 * u * (1.0 - u))
                })
                .collect();
            (
                "one-stroke",
                vec![if chance(rng, 0.35) { reversed(p) } else { p }],
                Rotation::Any,
            )
        }
        "spiral" => {
            let turns = uni(rng, 2.0, 4.0);
            let dir = if chance(rng, 0.5) { 1.0 } else { -1.0 };
            let a0 = uni(rng, 0.0, 2.0 * PI);
            let n = (turns * 40.0) as usize;
            let p: Poly = (0..=n)
                .map(|i| {
                    let u = i as f64 / n as f64;
                    let r = 0.5 * (0.04 + 0.96 * u);
                    let a = a0 + dir * u * turns * 2.0 * PI;
                    (r * a.cos(), r * a.sin())
                })
                .collect();
            let p = if chance(rng, 0.25) { reversed(p) } else { p };
            ("one-stroke", vec![p], Rotation::Any)
        }
        "cross" => {
            let (cx, cy) = (uni(rng, -0.12, 0.12), uni(rng, -0.12, 0.12));
            let (hw, vh) = (uni(rng, 0.35, 0.5), uni(rng, 0.35, 0.5));
            let mut h = vec![jit(rng, (-hw, cy), 0.03), jit(rng, (hw, cy), 0.03)];
            let mut v = vec![jit(rng, (cx, -vh), 0.03), jit(rng, (cx, vh), 0.03)];
            if chance(rng, 0.15) {
                h.reverse();
            }
            if chance(rng, 0.1) {
                v.reverse();
            }
            if chance(rng, 0.5) {
                ("horizontal-first", vec![h, v], tilt)
            } else {
                ("vertical-first", vec![v, h], tilt)
            }
        }
        "house" => {
            let w = uni(rng, 0.32, 0.45);
            let top = uni(rng, -0.1, 0.05);
            let c = [(-w, top), (w, top), (w, 0.5), (-w, 0.5)].map(|p| jit(rng, p, 0.03));
            let eave = uni(rng, 0.0, 0.08);
            let peak = (uni(rng, -0.08, 0.08), -0.5 + uni(rng, -0.03, 0.03));
            let roof = vec![(c[0].0 - eave, c[0].1), peak, (c[1].0 + eave, c[1].1)];
            let (variant, body) = if chance(rng, 0.5) {
                (
                    "closed-body",
                    vec![polygon_stroke(&c, 0, -1, uni(rng, -0.05, 0.05))],
                )
            } else if chance(rng, 0.7) {
                ("open-body", vec![vec![c[0], c[3], c[2], c[1]]])
            } else {
                ("two-walls", vec![vec![c[0], c[3], c[2]], vec![c[2], c[1]]])
            };
            let mut strokes = if chance(rng, 0.75) {
                let mut s = body;
                s.push(roof);
                s
            } else {
                let mut s = vec![roof];
                s.extend(body);
                s
            };
            if chance(rng, 0.6) {
                let dx = uni(rng, -0.5, 0.5) * w;
                let dw = uni(rng, 0.08, 0.14);
                let dt = 0.5 - uni(rng, 0.25, 0.4);
                strokes.push(vec![
                    (dx - dw, 0.5),
                    (dx - dw, dt),
                    (dx + dw, dt),
                    (dx + dw, 0.5),
                ]);
            }
            if chance(rng, 0.25) {
                let (wx, wy, s) = (uni(rng, -0.6, 0.6) * w, top + 0.12, uni(rng, 0.05, 0.09));
                let win = [
                    (wx - s, wy),
                    (wx + s, wy),
                    (wx + s, wy + 2.0 * s),
                    (wx - s, wy + 2.0 * s),
                ];
                strokes.push(polygon_stroke(&win, 0, 1, 0.0));
            }
            (variant, strokes, tilt)
        }
        "wave" => {
            let periods = uni(rng, 1.25, 2.75);
            // Keep the crests round (radius of curvature >= ~0.04 of the width), so a wave is not
            // a zigzag with rounded corners.
            let wavelength = 1.0 / periods;
            let amp = uni(rng, 0.08, (0.6 * wavelength * wavelength).clamp(0.1, 0.25));
            let ph = if chance(rng, 0.5) { 0.0 } else { PI };
            let n = (periods * 24.0) as usize;
            let p: Poly = (0..=n)
                .map(|i| {
                    let u = i as f64 / n as f64;
                    (u - 0.5, amp * (ph + u * periods * 2.0 * PI).sin())
                })
                .collect();
            let p = if chance(rng, 0.2) { reversed(p) } else { p };
            ("one-stroke", vec![p], Rotation::TiltOrSideways(0.2))
        }
        "heart" => {
            let fat = uni(rng, 0.9, 1.15);
            let h = |t: f64| -> Pt {
                let x = 16.0 * t.sin().powi(3) * fat;
                let y = -(13.0 * t.cos()
                    - 5.0 * (2.0 * t).cos()
                    - 2.0 * (3.0 * t).cos()
                    - (4.0 * t).cos());
                (x / 34.0, (y + 2.0) / 34.0)
            };
            // t = 0 is the top cusp, t = pi the bottom point.
            if chance(rng, 0.6) {
                let dir = if chance(rng, 0.6) { -1.0 } else { 1.0 };
                let p: Poly = (0..=80)
                    .map(|i| h(dir * 2.0 * PI * i as f64 / 80.0))
                    .collect();
                ("one-stroke", vec![p], tilt)
            } else {
                let l: Poly = (0..=40).map(|i| h(-PI * i as f64 / 40.0)).collect();
                let r: Poly = (0..=40).map(|i| h(PI * i as f64 / 40.0)).collect();
                ("two-halves", vec![l, r], tilt)
            }
        }
        "arrow" => {
            let hl = uni(rng, 0.15, 0.3);
            let hw = hl * uni(rng, 0.6, 1.0);
            let tip = (0.5, 0.0);
            let b1 = jit(rng, (0.5 - hl, -hw), 0.02);
            let b2 = jit(rng, (0.5 - hl, hw), 0.02);
            let shaft = vec![(-0.5, uni(rng, -0.02, 0.02)), tip];
            let r = rng.random::<f64>();
            let (variant, strokes) = if r < 0.6 {
                ("shaft-then-head", vec![shaft, vec![b1, tip, b2]])
            } else if r < 0.85 {
                ("two-barbs", vec![shaft, vec![tip, b1], vec![tip, b2]])
            } else {
                ("head-first", vec![vec![b1, tip, b2], reversed(shaft)])
            };
            (variant, strokes, Rotation::Any)
        }
        other => unreachable!("no template for {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering: noise, placement and pen timing.

/// Resample a polyline every `step` units of arc length (keeps both ends and the vertices).
/// Also returns the indices, in the output, of the vertices where the direction turns by more
/// than ~30 degrees: the corners, where a pen slows down and always leaves a sample.
fn densify(p: &[Pt], step: f64) -> (Poly, Vec<usize>) {
    let mut out = vec![p[0]];
    let mut corners = Vec::new();
    for (k, w) in p.windows(2).enumerate() {
        let (a, b) = (w[0], w[1]);
        if k > 0 {
            let prev = p[k - 1];
            let (u, v) = ((a.0 - prev.0, a.1 - prev.1), (b.0 - a.0, b.1 - a.1));
            let (lu, lv) = (u.0.hypot(u.1), v.0.hypot(v.1));
            if lu > 1e-9 && lv > 1e-9 && (u.0 * v.0 + u.1 * v.1) / (lu * lv) < 0.866 {
                corners.push(out.len() - 1);
            }
        }
        let len = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt();
        let n = (len / step).ceil().max(1.0) as usize;
        for i in 1..=n {
            let u = i as f64 / n as f64;
            out.push((a.0 + (b.0 - a.0) * u, a.1 + (b.1 - a.1) * u));
        }
    }
    (out, corners)
}

fn arc_lengths(p: &[Pt]) -> Vec<f64> {
    let mut s = Vec::with_capacity(p.len());
    let mut acc = 0.0;
    s.push(0.0);
    for w in p.windows(2) {
        acc += ((w[1].0 - w[0].0).powi(2) + (w[1].1 - w[0].1).powi(2)).sqrt();
        s.push(acc);
    }
    s
}

/// Smooth 1-D noise: a few sinusoids of random phase, 0.4..3 cycles per unit of arc length.
struct Wobble {
    terms: Vec<(f64, f64, f64)>, // (amplitude, frequency, phase)
}

impl Wobble {
    fn new(rng: &mut ChaCha8Rng, amp: f64) -> Self {
        let terms = (0..3)
            .map(|k| {
                let f = uni(rng, 0.4, 1.2) * (k as f64 + 1.0);
                (
                    amp * uni(rng, 0.4, 1.0) / (k as f64 + 1.0),
                    f,
                    uni(rng, 0.0, 2.0 * PI),
                )
            })
            .collect();
        Wobble { terms }
    }
    fn at(&self, s: f64) -> f64 {
        self.terms
            .iter()
            .map(|&(a, f, ph)| a * (2.0 * PI * f * s + ph).sin())
            .sum()
    }
}

fn render(template: Vec<Poly>, rotation: Rotation, rng: &mut ChaCha8Rng) -> Vec<Stroke> {
    // 1. Smooth noise along each stroke (normal displacement), in unit-frame coordinates.
    let tremor = uni(rng, 0.008, 0.022);
    let mut corners: Vec<Vec<usize>> = Vec::with_capacity(template.len());
    let mut strokes: Vec<Poly> = template
        .iter()
        .map(|poly| {
            let (d, c) = densify(poly, 0.01);
            corners.push(c);
            let s = arc_lengths(&d);
            let wob = Wobble::new(rng, tremor);
            let along = Wobble::new(rng, tremor * 0.5);
            (0..d.len())
                .map(|i| {
                    let (a, b) = (d[i.saturating_sub(1)], d[(i + 1).min(d.len() - 1)]);
                    let (tx, ty) = (b.0 - a.0, b.1 - a.1);
                    let tl = (tx * tx + ty * ty).sqrt().max(1e-9);
                    let (nx, ny) = (-ty / tl, tx / tl);
                    let (o, g) = (wob.at(s[i]), along.at(s[i]));
                    (d[i].0 + nx * o + tx / tl * g, d[i].1 + ny * o + ty / tl * g)
                })
                .collect()
        })
        .collect();

    // 2. A smooth warp of the whole drawing (proportion errors).
    let warp = [(); 4].map(|_| {
        (
            uni(rng, -0.035, 0.035),
            uni(rng, 0.5, 1.5),
            uni(rng, 0.0, 2.0 * PI),
        )
    });
    for p in strokes.iter_mut().flatten() {
        let (x, y) = *p;
        p.0 = x
            + warp[0].0 * (2.0 * PI * warp[0].1 * y + warp[0].2).sin()
            + warp[1].0 * (2.0 * PI * warp[1].1 * x + warp[1].2).sin();
        p.1 = y
            + warp[2].0 * (2.0 * PI * warp[2].1 * x + warp[2].2).sin()
            + warp[3].0 * (2.0 * PI * warp[3].1 * y + warp[3].2).sin();
    }

    // 3. Rotation, anisotropic scale, size, and position on the canvas.
    let theta = match rotation {
        Rotation::Tilt(sd) => normal(rng) * sd,
        Rotation::TiltOrSideways(sd) => {
            let side = if chance(rng, 0.25) {
                PI / 2.0 * if chance(rng, 0.5) { 1.0 } else { -1.0 }
            } else {
                0.0
            };
            side + normal(rng) * sd
        }
        Rotation::Any => uni(rng, 0.0, 2.0 * PI),
    };
    let size = uni(rng, 120.0, 450.0);
    let (sx, sy) = (size * uni(rng, 0.82, 1.2), size * uni(rng, 0.82, 1.2));
    let (c, s) = (theta.cos(), theta.sin());
    for p in strokes.iter_mut().flatten() {
        let (x, y) = (p.0 * sx, p.1 * sy);
        *p = (c * x - s * y, s * x + c * y);
    }
    let (mut x0, mut y0, mut x1, mut y1) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
    for &(x, y) in strokes.iter().flatten() {
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
    }
    let margin = 15.0;
    let ox = uni(rng, margin, (1000.0 - margin - (x1 - x0)).max(margin + 1.0)) - x0;
    let oy = uni(rng, margin, (1000.0 - margin - (y1 - y0)).max(margin + 1.0)) - y0;
    for p in strokes.iter_mut().flatten() {
        *p = (p.0 + ox, p.1 + oy);
    }

    // 4. Pen sampling in time: slow at both ends of a stroke and near corners, and a sample
    //    exactly at every corner (the pen nearly stops there).
    let speed = uni(rng, 0.5, 2.0); // px/ms
    let mut t_ms: f64 = 0.0;
    let mut out = Vec::with_capacity(strokes.len());
    let mut prev_end: Option<Pt> = None;
    for (poly, corner_idx) in strokes.iter().zip(&corners) {
        if let Some(e) = prev_end {
            let travel = ((poly[0].0 - e.0).powi(2) + (poly[0].1 - e.1).powi(2)).sqrt();
            t_ms += uni(rng, 120.0, 700.0) + travel / 2.5;
            t_ms = t_ms.round();
        }
        let s = arc_lengths(poly);
        let len = *s.last().unwrap();
        let stops: Vec<f64> = corner_idx.iter().map(|&i| s[i]).chain([len]).collect();
        let v = speed * uni(rng, 0.8, 1.25);
        let (mut xs, mut ys, mut ts) = (Vec::new(), Vec::new(), Vec::new());
        let mut push = |p: Pt, t: f64, rng: &mut ChaCha8Rng| {
            xs.push(round1(p.0 + uni(rng, -0.3, 0.3)));
            ys.push(round1(p.1 + uni(rng, -0.3, 0.3)));
            ts.push(t as f32);
        };
        let at = |pos: f64, seg: &mut usize| -> Pt {
            while *seg + 2 < s.len() && s[*seg + 1] < pos {
                *seg += 1;
            }
            let f = ((pos - s[*seg]) / (s[*seg + 1] - s[*seg]).max(1e-12)).clamp(0.0, 1.0);
            let (a, b) = (poly[*seg], poly[*seg + 1]);
            (a.0 + (b.0 - a.0) * f, a.1 + (b.1 - a.1) * f)
        };
        push(poly[0], t_ms, rng);
        let (mut pos, mut seg, mut next_stop) = (0.0, 0, 0);
        while next_stop < stops.len() {
            let dt = rng.random_range(10..=22) as f64;
            let u = if len > 0.0 { pos / len } else { 1.0 };
            let near = stops[next_stop] - pos;
            let since = if next_stop > 0 {
                pos - stops[next_stop - 1]
            } else {
                f64::MAX
            };
            let brake = (0.35 + 0.65 * (near.min(since) / 40.0)).min(1.0);
            let local = v * (0.35 + 0.65 * (PI * u).sin().sqrt()) * brake;
            if pos + local * dt >= stops[next_stop] {
                // Reach the corner (or the end) exactly, in proportionally less time.
                let step = (near / local).round().clamp(1.0, dt);
                pos = stops[next_stop];
                t_ms += step;
                next_stop += 1;
            } else {
                pos += local * dt;
                t_ms += dt;
            }
            let p = if pos >= len {
                *poly.last().unwrap()
            } else {
                at(pos, &mut seg)
            };
            push(p, t_ms, rng);
        }
        prev_end = poly.last().copied();
        out.push(Stroke {
            x: xs,
            y: ys,
            t: Some(ts),
        });
    }
    out
}

fn round1(v: f64) -> f32 {
    ((v * 10.0).round() / 10.0) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn cfg(per_class: usize, seed: u64) -> SynthConfig {
        SynthConfig {
            classes: SHAPES.len(),
            per_class,
            seed,
            unrecognized_share: 0.05,
        }
    }

    #[test]
    fn synth_names_are_distinct_and_enough() {
        assert!(SHAPES.len() >= 10);
        let set: HashSet<_> = SHAPES.iter().collect();
        assert_eq!(set.len(), SHAPES.len());
    }

    #[test]
    fn synth_is_deterministic() {
        let a: Vec<String> = synth_all(&cfg(5, 7))
            .map(|d| to_line_as(&d, false))
            .collect();
        let b: Vec<String> = synth_all(&cfg(5, 7))
            .map(|d| to_line_as(&d, false))
            .collect();
        assert_eq!(a, b);
        let c: Vec<String> = synth_all(&cfg(5, 8))
            .map(|d| to_line_as(&d, false))
            .collect();
        assert_ne!(a, c);
        // A drawing does not depend on how many others were made.
        assert_eq!(
            synth_drawing(3, 4, 7).drawing,
            synth_class(3, &cfg(5, 7)).nth(4).unwrap()
        );
    }

    #[test]
    fn synth_strokes_are_well_formed() {
        for d in synth_all(&cfg(40, 1)) {
            let strokes = d.strokes().unwrap();
            assert!(!strokes.is_empty());
            let mut last_t = -1.0f32;
            for st in strokes {
                let t = st.t.as_ref().expect("raw strokes have t");
                assert_eq!(st.x.len(), st.y.len());
                assert_eq!(st.x.len(), t.len());
                assert!(st.len() >= 2, "{}: stroke of {} points", d.word, st.len());
                for &tt in t {
                    assert!(
                        tt > last_t || (last_t < 0.0 && tt == 0.0),
                        "{}: t not increasing",
                        d.word
                    );
                    assert_eq!(tt.fract(), 0.0);
                    last_t = tt;
                }
                for (&x, &y) in st.x.iter().zip(&st.y) {
                    assert!(
                        (0.0..=1000.0).contains(&x) && (0.0..=1000.0).contains(&y),
                        "{x},{y}"
                    );
                }
            }
            assert_eq!(strokes[0].t.as_ref().unwrap()[0], 0.0);
            assert!((YEAR_2017.0..YEAR_2017.1).contains(&d.timestamp));
            assert_eq!(d.countrycode.len(), 2);
        }
    }

    #[test]
    fn synth_pen_speed_is_plausible() {
        for d in synth_all(&cfg(10, 2)) {
            let (mut dist, mut time) = (0.0f64, 0.0f64);
            for st in d.strokes().unwrap() {
                let t = st.t.as_ref().unwrap();
                for i in 1..st.len() {
                    dist += ((st.x[i] - st.x[i - 1]) as f64).hypot((st.y[i] - st.y[i - 1]) as f64);
                    time += (t[i] - t[i - 1]) as f64;
                }
            }
            let v = dist / time;
            assert!(
                (0.15..=2.6).contains(&v),
                "{}: mean speed {v} px/ms",
                d.word
            );
        }
    }

    #[test]
    fn synth_key_ids_are_unique() {
        let mut seen = HashSet::new();
        for d in synth_all(&cfg(300, 3)) {
            assert!(seen.insert(d.key_id), "duplicate key_id {}", d.key_id);
            assert_eq!(d.key_id.to_string().len(), 16);
        }
        // The mixing is a bijection: distinct inputs never collide, even far apart.
        assert_ne!(synth_key_id(0, 1 << 40, 3), synth_key_id(0, 0, 3));
    }

    #[test]
    fn synth_recognized_share() {
        let c = SynthConfig {
            unrecognized_share: 0.1,
            ..cfg(500, 4)
        };
        let n = synth_class(0, &c).filter(|d| !d.recognized).count();
        assert!((25..=80).contains(&n), "{n} unrecognised of 500");
        let none = SynthConfig {
            unrecognized_share: 0.0,
            ..c
        };
        assert!(synth_class(0, &none).all(|d| d.recognized));
    }

    #[test]
    fn synth_variants_vary() {
        let multi = [
            "square", "triangle", "star", "house", "heart", "arrow", "circle",
        ];
        for (class, name) in SHAPES.iter().enumerate() {
            let counts: HashSet<usize> = (0..60)
                .map(|i| synth_drawing(class, i, 5).drawing.strokes().unwrap().len())
                .collect();
            if multi.contains(name) {
                assert!(counts.len() > 1, "{name}: {counts:?}");
            }
            let variants: HashSet<&str> = (0..60)
                .map(|i| synth_drawing(class, i, 5).variant)
                .collect();
            if *name == "cross" {
                assert_eq!(variants.len(), 2, "{variants:?}");
            }
        }
    }

    #[test]
    fn synth_ndjson_round_trip() {
        for d in synth_all(&cfg(2, 9)) {
            let line = to_line_as(&d, false);
            assert!(!line.contains('\n'));
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let keys: Vec<&str> = v.as_object().unwrap().keys().map(|s| s.as_str()).collect();
            assert_eq!(keys.len(), 6);
            assert_eq!(v["word"], d.word.as_str());
            assert_eq!(v["countrycode"], d.countrycode.as_str());
            assert!(v["recognized"].is_boolean());
            let key = v["key_id"].as_str().unwrap();
            assert!(key.bytes().all(|b| b.is_ascii_digit()));
            assert_eq!(key.parse::<u64>().unwrap(), d.key_id);
            let ts = v["timestamp"].as_str().unwrap();
            assert_eq!(ts.len(), "2017-03-02 23:25:10.07453 UTC".len());
            assert!(ts.starts_with("2017-") && ts.ends_with(" UTC"));
            let strokes = v["drawing"].as_array().unwrap();
            assert_eq!(strokes.len(), d.strokes().unwrap().len());
            for (js, st) in strokes.iter().zip(d.strokes().unwrap()) {
                let arr = js.as_array().unwrap();
                assert_eq!(arr.len(), 3);
                let xs: Vec<f32> = arr[0]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n.as_f64().unwrap() as f32)
                    .collect();
                let ys: Vec<f32> = arr[1]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n.as_f64().unwrap() as f32)
                    .collect();
                let ts: Vec<f32> = arr[2]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n.as_f64().unwrap() as f32)
                    .collect();
                assert_eq!(xs, st.x);
                assert_eq!(ys, st.y);
                assert_eq!(&ts, st.t.as_ref().unwrap());
            }
        }
    }

    #[test]
    fn synth_ndjson_simplified_format() {
        let d = Drawing {
            key_id: 5201136883597312,
            word: "cat".into(),
            countrycode: "VE".into(),
            timestamp: 1488497110,
            recognized: true,
            ink: Ink::Strokes(vec![
                Stroke {
                    x: vec![0.0, 255.0],
                    y: vec![12.0, 3.0],
                    t: Some(vec![0.0, 10.0]),
                },
                Stroke::new(vec![7.0], vec![8.0]),
            ]),
        };
        assert_eq!(
            to_line_as(&d, true),
            r#"{"word":"cat","countrycode":"VE","timestamp":"2017-03-02 23:25:10.00000 UTC","recognized":true,"key_id":"5201136883597312","drawing":[[[0,255],[12,3]],[[7],[8]]]}"#
        );
        assert_eq!(
            to_line_as(&d, false),
            r#"{"word":"cat","countrycode":"VE","timestamp":"2017-03-02 23:25:10.00000 UTC","recognized":true,"key_id":"5201136883597312","drawing":[[[0,255],[12,3],[0,10]],[[7],[8]]]}"#
        );
        let mut f = d.clone();
        f.ink = Ink::Strokes(vec![Stroke::new(vec![1.5, -2.25], vec![0.1, 1e-3])]);
        f.word = "a \"quoted\" word".into();
        let v: serde_json::Value = serde_json::from_str(&to_line_as(&f, true)).unwrap();
        assert_eq!(v["word"], "a \"quoted\" word");
        assert!(to_line_as(&f, true).contains("[[[1.5,-2.25],[0.1,0.001]]]"));
    }
}
