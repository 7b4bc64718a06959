//! Report command for `quickdraw_data::simplify`: how closely our simplification of raw drawings
//! reproduces Google's own simplified files, for the default and for alternative choices.
//!
//! ```text
//! cargo run --release -p quickdraw-data --example simplify_match [QUICKDRAW_DIR]
//! ```
//!
//! `QUICKDRAW_DIR` (default `../shared/data/quickdraw` next to the repository) must hold
//! `raw/<class>.ndjson` and `simplified/<class>.ndjson`; every simplified drawing is paired with
//! its raw twin by `key_id`. Without the folder the command says so and exits successfully.
//!
//! The measurement harness (pairing, comparison, report) lives here rather than in the library:
//! it has its own exact-number NDJSON reader that nothing else should use. Its tests run with
//! `cargo test` (`test = true` in Cargo.toml).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use quickdraw_data::drawing::Stroke;
use quickdraw_data::simplify::{
    Distance, Resampling, Rounding, Scaling, SimplifyOptions, simplify_points, simplify_with,
};
use serde::Deserialize;

/// A point as the JSON numbers read.
type Pt = (f64, f64);

fn main() -> ExitCode {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/data/quickdraw"
            ))
        });
    if !dir.join("simplified").is_dir() || !dir.join("raw").is_dir() {
        println!(
            "SKIP: no raw/ and simplified/ under {} (nothing to compare)",
            dir.display()
        );
        return ExitCode::SUCCESS;
    }
    let started = Instant::now();
    let MatchSet { pairs, missing_raw } = match load_match_pairs(&dir) {
        Ok(set) => set,
        Err(e) => {
            eprintln!("error: cannot load {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
    };
    let classes = {
        let mut c: Vec<&str> = pairs.iter().map(|p| p.class.as_str()).collect();
        c.dedup();
        c.len()
    };
    println!(
        "{} pairs from {} classes under {} ({} simplified drawings without a raw twin), \
         loaded in {:.1?}",
        pairs.len(),
        classes,
        dir.display(),
        missing_raw,
        started.elapsed()
    );

    let best = SimplifyOptions::default();
    let variants: [(&str, SimplifyOptions); 8] = [
        ("default (best match)", best),
        (
            "scale by a precomputed 255/extent factor",
            SimplifyOptions {
                scaling: Scaling::Factor,
                ..best
            },
        ),
        (
            "resample with numpy.interp arithmetic",
            SimplifyOptions {
                resampling: Resampling::ArcLengthInterp,
                ..best
            },
        ),
        (
            "resample per segment, keeping vertices",
            SimplifyOptions {
                resampling: Resampling::PerSegment,
                ..best
            },
        ),
        (
            "no resampling",
            SimplifyOptions {
                resampling: Resampling::Off,
                ..best
            },
        ),
        (
            "RDP line norm without fused multiply-add",
            SimplifyOptions {
                distance: Distance::LineUnfused,
                ..best
            },
        ),
        (
            "RDP distance to the segment",
            SimplifyOptions {
                distance: Distance::Segment,
                ..best
            },
        ),
        (
            "round half away from zero",
            SimplifyOptions {
                rounding: Rounding::HalfAway,
                ..best
            },
        ),
    ];
    for (precision, full) in [
        ("f32 Stroke input (what `simplify` gets)", false),
        ("f64 JSON input", true),
    ] {
        println!("\n{precision}:");
        for (name, opts) in &variants {
            let t = Instant::now();
            let r = measure(&pairs, opts, full);
            println!("  {name:<42} {r} ({:.1?})", t.elapsed());
        }
    }

    // The drawings the default still gets wrong (f32 input), for inspection.
    println!();
    let mut shown = 0;
    for p in &pairs {
        let ours = quickdraw_data::simplify::simplify(&p.raw);
        let m = compare(&ours, &p.google);
        if !m.exact() {
            shown += 1;
            if shown <= 10 {
                println!(
                    "  differs: {} key_id {} (max abs error {:?})",
                    p.class, p.key_id, m.max_abs_error
                );
            }
        }
    }
    if shown > 10 {
        println!("  … and {} more", shown - 10);
    }
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------------------------
// The harness

/// How one of our simplified drawings compares with Google's for the same `key_id`.
///
/// Points are paired by position (stroke `i`, point `k` with stroke `i`, point `k`), which is
/// only meaningful when the point counts agree; coordinate errors are therefore measured only
/// then.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DrawingMatch {
    /// Both drawings have the same number of strokes.
    pub same_stroke_count: bool,
    /// Same number of strokes and, stroke by stroke, the same number of points.
    pub same_point_count: bool,
    /// Largest `|ours - google|` over every x and y coordinate (`None` unless
    /// `same_point_count`; NaN counts as infinite).
    pub max_abs_error: Option<f32>,
    /// Sum of `|ours - google|` over every x and y coordinate (0 unless `same_point_count`).
    pub abs_error_sum: f64,
    /// Number of coordinates compared (2 per point; 0 unless `same_point_count`).
    pub coords: usize,
}

impl DrawingMatch {
    /// Same point counts and every coordinate within 1 px (`|Δx| <= 1` and `|Δy| <= 1`).
    pub fn within_1px(&self) -> bool {
        self.max_abs_error.is_some_and(|e| e <= 1.0)
    }
    /// Same point counts and every coordinate equal.
    pub fn exact(&self) -> bool {
        self.max_abs_error == Some(0.0)
    }
}

/// Compares our simplification of a drawing with Google's (see [`DrawingMatch`]).
pub fn compare(ours: &[Stroke], google: &[Stroke]) -> DrawingMatch {
    let same_stroke_count = ours.len() == google.len();
    let same_point_count = same_stroke_count
        && ours.iter().zip(google).all(|(a, b)| {
            a.x.len() == b.x.len() && a.y.len() == b.y.len() && a.x.len() == a.y.len()
        });
    let mut m = DrawingMatch {
        same_stroke_count,
        same_point_count,
        max_abs_error: None,
        abs_error_sum: 0.0,
        coords: 0,
    };
    if !same_point_count {
        return m;
    }
    let mut max_err = 0.0f32;
    for (a, b) in ours.iter().zip(google) {
        for (u, v) in a.x.iter().chain(&a.y).zip(b.x.iter().chain(&b.y)) {
            let e = (u - v).abs();
            let e = if e.is_nan() { f32::INFINITY } else { e };
            max_err = max_err.max(e);
            m.abs_error_sum += f64::from(e);
            m.coords += 1;
        }
    }
    m.max_abs_error = Some(max_err);
    m
}

/// Agreement with Google over many drawings; fill it with [`MatchReport::add`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MatchReport {
    /// Drawings compared.
    pub drawings: usize,
    /// … with the same number of strokes.
    pub same_stroke_count: usize,
    /// … with the same number of strokes and of points in every stroke.
    pub same_point_count: usize,
    /// … with the same point counts and every coordinate within 1 px.
    pub within_1px: usize,
    /// … with the same point counts and every coordinate equal.
    pub exact: usize,
    /// Sum of absolute coordinate errors over the drawings with the same point counts.
    pub abs_error_sum: f64,
    /// Coordinates behind `abs_error_sum`.
    pub coords_compared: usize,
}

impl MatchReport {
    pub fn add(&mut self, m: &DrawingMatch) {
        self.drawings += 1;
        self.same_stroke_count += usize::from(m.same_stroke_count);
        self.same_point_count += usize::from(m.same_point_count);
        self.within_1px += usize::from(m.within_1px());
        self.exact += usize::from(m.exact());
        self.abs_error_sum += m.abs_error_sum;
        self.coords_compared += m.coords;
    }
    /// `count` as a share of the drawings compared (0 when none were).
    pub fn share(&self, count: usize) -> f64 {
        if self.drawings == 0 {
            0.0
        } else {
            count as f64 / self.drawings as f64
        }
    }
    /// Mean absolute coordinate error over the drawings with the same point counts, in pixels.
    pub fn mean_abs_error(&self) -> f64 {
        if self.coords_compared == 0 {
            0.0
        } else {
            self.abs_error_sum / self.coords_compared as f64
        }
    }
}

impl fmt::Display for MatchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = |c: usize| 100.0 * self.share(c);
        write!(
            f,
            "drawings {} | same strokes {:.2}% | same point counts {:.2}% | within 1px {:.2}% | \
             exact {:.2}% | mean abs error {:.4} px",
            self.drawings,
            pct(self.same_stroke_count),
            pct(self.same_point_count),
            pct(self.within_1px),
            pct(self.exact),
            self.mean_abs_error()
        )
    }
}

/// One drawing present both in a raw file and in Google's simplified file (same `key_id`).
#[derive(Debug, Clone, PartialEq)]
pub struct MatchPair {
    /// File stem, e.g. `cat`.
    pub class: String,
    pub key_id: String,
    /// The raw drawing as [`Stroke`]s (`f32`, `t` kept).
    pub raw: Vec<Stroke>,
    /// The raw `(x, y)` points exactly as the JSON numbers read (`f64`).
    pub raw_f64: Vec<Vec<(f64, f64)>>,
    pub google: Vec<Stroke>,
}

/// Pairs found by [`load_match_pairs`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MatchSet {
    pub pairs: Vec<MatchPair>,
    /// Simplified drawings whose raw twin was not found.
    pub missing_raw: usize,
}

#[derive(Deserialize)]
struct Record {
    key_id: String,
    drawing: Vec<Vec<Vec<f64>>>,
}

/// `key_id`, strokes and full-precision points of one NDJSON line.
type Parsed = (String, Vec<Stroke>, Vec<Vec<Pt>>);
/// A raw drawing as strokes and as full-precision points.
type RawTwin = (Vec<Stroke>, Vec<Vec<Pt>>);

/// The `"drawing"` arrays of one NDJSON line, every number read by `str::parse::<f64>`, which
/// rounds correctly (serde_json's default float parser may be one ulp off, and the last bit
/// decides RDP ties). `None` when the text is not laid out as expected.
fn exact_drawing(line: &str) -> Option<Vec<Vec<Vec<f64>>>> {
    const KEY: &str = "\"drawing\"";
    let rest = line[line.find(KEY)? + KEY.len()..]
        .trim_start()
        .strip_prefix(':')?;
    let bytes = rest.as_bytes();
    let (mut strokes, mut stroke, mut array) = (Vec::new(), Vec::new(), Vec::new());
    let (mut depth, mut i) = (0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'[' if depth < 3 => depth += 1,
            b']' => {
                match depth {
                    3 => stroke.push(std::mem::take(&mut array)),
                    2 => strokes.push(std::mem::take(&mut stroke)),
                    1 => return Some(strokes),
                    _ => return None,
                }
                depth -= 1;
            }
            b',' | b' ' | b'\t' | b'\r' | b'\n' => {}
            _ if depth == 3 => {
                let len = bytes[i..]
                    .iter()
                    .position(|c| matches!(c, b',' | b']' | b' '))?;
                array.push(rest.get(i..i + len)?.parse::<f64>().ok()?);
                i += len;
                continue;
            }
            _ => return None,
        }
        i += 1;
    }
    None
}

fn parse_line(line: &str) -> Result<Parsed, String> {
    let mut rec: Record = serde_json::from_str(line).map_err(|e| e.to_string())?;
    if let Some(exact) = exact_drawing(line) {
        let same_shape = exact.len() == rec.drawing.len()
            && exact.iter().zip(&rec.drawing).all(|(a, b)| {
                a.len() == b.len() && a.iter().zip(b).all(|(u, v)| u.len() == v.len())
            });
        if same_shape {
            rec.drawing = exact;
        }
    }
    let wide = rec
        .drawing
        .iter()
        .map(|a| match (a.first(), a.get(1)) {
            (Some(x), Some(y)) => x.iter().copied().zip(y.iter().copied()).collect(),
            _ => Vec::new(),
        })
        .collect();
    let strokes = rec
        .drawing
        .into_iter()
        .map(|mut arrays| {
            if arrays.len() < 2 || arrays.len() > 3 {
                return Err(format!(
                    "a stroke has {} arrays, expected 2 or 3",
                    arrays.len()
                ));
            }
            let t = (arrays.len() == 3).then(|| arrays.pop().unwrap_or_default());
            let y = arrays.pop().unwrap_or_default();
            let x = arrays.pop().unwrap_or_default();
            if x.len() != y.len() || t.as_ref().is_some_and(|t| t.len() != x.len()) {
                return Err("stroke arrays of different lengths".to_string());
            }
            let f = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect::<Vec<f32>>();
            Ok(Stroke {
                x: f(x),
                y: f(y),
                t: t.map(f),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((rec.key_id, strokes, wide))
}

fn read_ndjson(path: &Path, mut each: impl FnMut(Parsed)) -> io::Result<()> {
    let file = BufReader::new(fs::File::open(path)?);
    for (no, line) in file.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = parse_line(&line).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}:{}: {e}", path.display(), no + 1),
            )
        })?;
        each(parsed);
    }
    Ok(())
}

/// Loads every drawing of `<dir>/simplified/<class>.ndjson` together with its raw twin (same
/// `key_id`) from `<dir>/raw/<class>.ndjson`. Classes are visited in file-name order and pairs
/// keep the simplified file's order.
pub fn load_match_pairs(dir: &Path) -> io::Result<MatchSet> {
    let mut files: Vec<_> = fs::read_dir(dir.join("simplified"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "ndjson"))
        .collect();
    files.sort();
    let mut set = MatchSet::default();
    for simplified in files {
        let Some(name) = simplified.file_name() else {
            continue;
        };
        let class = simplified
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut google: Vec<(String, Vec<Stroke>)> = Vec::new();
        read_ndjson(&simplified, |(k, s, _)| google.push((k, s)))?;
        let wanted: HashMap<&str, usize> = google
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.as_str(), i))
            .collect();
        let mut raw: Vec<Option<RawTwin>> = vec![None; google.len()];
        let raw_path = dir.join("raw").join(name);
        if raw_path.exists() {
            read_ndjson(&raw_path, |(k, s, w)| {
                if let Some(&i) = wanted.get(k.as_str()) {
                    raw[i].get_or_insert((s, w));
                }
            })?;
        }
        for ((key_id, google), r) in google.into_iter().zip(raw) {
            match r {
                Some((raw, raw_f64)) => set.pairs.push(MatchPair {
                    class: class.clone(),
                    key_id,
                    raw,
                    raw_f64,
                    google,
                }),
                None => set.missing_raw += 1,
            }
        }
    }
    Ok(set)
}

/// Simplifies every pair's raw drawing with `opts` and compares it with Google's. `full_precision`
/// starts from [`MatchPair::raw_f64`] ([`simplify_points`]) instead of the `f32` [`Stroke`]s
/// ([`simplify_with`], what [`simplify`] callers get).
pub fn measure(pairs: &[MatchPair], opts: &SimplifyOptions, full_precision: bool) -> MatchReport {
    let mut report = MatchReport::default();
    for p in pairs {
        let ours = if full_precision {
            simplify_points(&p.raw_f64, opts)
        } else {
            simplify_with(&p.raw, opts)
        };
        report.add(&compare(&ours, &p.google));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stroke(p: &[(f32, f32)]) -> Stroke {
        Stroke::new(
            p.iter().map(|q| q.0).collect(),
            p.iter().map(|q| q.1).collect(),
        )
    }

    #[test]
    fn compare_definitions() {
        let a = [stroke(&[(0.0, 0.0), (10.0, 10.0)])];
        let b = [stroke(&[(1.0, 0.0), (10.0, 9.0)])];
        let c = [stroke(&[(2.0, 0.0), (10.0, 10.0)])];
        let m = compare(&a, &a);
        assert!(m.same_point_count && m.exact() && m.within_1px());
        let m = compare(&a, &b);
        assert!(m.within_1px() && !m.exact());
        assert_eq!((m.abs_error_sum, m.coords), (2.0, 4));
        let m = compare(&a, &c);
        assert!(m.same_point_count && !m.within_1px());
        let m = compare(&a, &[stroke(&[(0.0, 0.0)])]);
        assert!(m.same_stroke_count && !m.same_point_count && !m.within_1px());
        let mut r = MatchReport::default();
        r.add(&compare(&a, &a));
        r.add(&compare(&a, &b));
        r.add(&compare(&a, &[]));
        assert_eq!(
            (r.drawings, r.same_point_count, r.within_1px, r.exact),
            (3, 2, 2, 1)
        );
        assert!((r.mean_abs_error() - 0.25).abs() < 1e-12);
    }

    /// Agreement with Google's own simplified files, when the shared data folder is present.
    #[test]
    fn matches_google_simplified_files() {
        let dir = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/data/quickdraw"
        ));
        if !dir.join("simplified").is_dir() || !dir.join("raw").is_dir() {
            eprintln!(
                "SKIP matches_google_simplified_files: {} not found",
                dir.display()
            );
            return;
        }
        let set = load_match_pairs(dir).expect("shared QuickDraw data should parse");
        assert!(
            set.pairs.len() >= 100,
            "only {} pairs found",
            set.pairs.len()
        );
        // Measured on the 1220 shared pairs: f32 input 99.84% same point counts, 99.67% within
        // 1 px, 99.43% exact; f64 input 100% on all three.
        let r = measure(&set.pairs, &SimplifyOptions::default(), false);
        eprintln!("simplify (f32 Stroke input) vs Google: {r}");
        assert!(r.share(r.same_point_count) >= 0.99, "{r}");
        assert!(r.share(r.within_1px) >= 0.99, "{r}");
        assert!(r.share(r.exact) >= 0.99, "{r}");
        let r = measure(&set.pairs, &SimplifyOptions::default(), true);
        eprintln!("simplify (f64 input) vs Google: {r}");
        assert!(r.share(r.exact) >= 0.995, "{r}");
    }
}
