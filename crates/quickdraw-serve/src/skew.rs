//! Training/serving skew: the same per-drawing statistics computed on the drawings a model was
//! trained from and on the drawings it served (the request log), compared feature by feature
//! with the population stability index (PSI, 10 quantile bins of the training values) and the
//! Kolmogorov-Smirnov distance.
//!
//! Statistics are taken *as the model sees the drawing*: raw ink is simplified first when the
//! export's feature spec says so (`simplify_raw`), and the ink share is measured on the image
//! `features::preprocess` renders. Per drawing: `strokes`, `points` (all strokes), `ink_share`
//! (share of non-zero pixels), `aspect` (bounding box width / height, extents floored at 1),
//! `country` (`countrycode`, `(none)` when empty). The request log also gives the predicted
//! class, compared with the class mix of the training split in the manifest.
//!
//! The training side is read from the input files listed in the dataset manifest (the first
//! `sample` valid records of each, unrecognized ones left out unless the dataset kept them), so
//! it describes the population the training split was drawn from, not the split itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use quickdraw_data::Drawing;
use quickdraw_data::features::{FeatureSpec, is_raw, preprocess};
use quickdraw_data::ingest::{IngestError, LabelFrom, UnitReader, class_from_path, parse_unit};
use quickdraw_data::simplify::simplify;
use quickdraw_data::storage;
use serde::Serialize;

use crate::reqlog::SIDECAR;

/// Numeric features, in report order.
pub const NUMERIC: [&str; 4] = ["strokes", "points", "ink_share", "aspect"];

/// Statistics of one drawing.
#[derive(Debug, Clone, PartialEq)]
pub struct DrawingStats {
    /// `strokes`, `points`, `ink_share`, `aspect` (`None` for image-only records).
    pub numeric: [Option<f64>; 4],
    pub country: String,
    /// The predicted class (request logs only).
    pub predicted: Option<String>,
}

pub fn drawing_stats(d: &Drawing, spec: &FeatureSpec) -> DrawingStats {
    let image = preprocess(&d.ink, spec)
        .map(|p| p.image)
        .unwrap_or_default();
    let ink = if image.is_empty() {
        None
    } else {
        Some(image.iter().filter(|&&v| v > 0).count() as f64 / image.len() as f64)
    };
    let [strokes, points, aspect] = shape_stats(d, spec);
    let country = if d.countrycode.is_empty() {
        "(none)".to_string()
    } else {
        d.countrycode.clone()
    };
    DrawingStats {
        numeric: [strokes, points, ink, aspect],
        country,
        predicted: None,
    }
}

/// `strokes`, `points` and `aspect` of a drawing as the model sees it (raw ink simplified when
/// the spec says so); `None` for image-only records. No rendering: the server takes the ink
/// share from the model input it already made.
pub fn shape_stats(d: &Drawing, spec: &FeatureSpec) -> [Option<f64>; 3] {
    match d.strokes() {
        None => [None, None, None],
        Some(s) => {
            let simplified;
            let s = if spec.simplify_raw && is_raw(s) {
                simplified = simplify(s);
                &simplified[..]
            } else {
                s
            };
            let pts: usize = s.iter().map(|s| s.len()).sum();
            let mut it = s.iter().flat_map(|s| s.x.iter().zip(&s.y));
            let aspect = it.next().map(|(&x0, &y0)| {
                let (a, b, c, e) = it.fold((x0, y0, x0, y0), |(a, b, c, e), (&x, &y)| {
                    (a.min(x), b.min(y), c.max(x), e.max(y))
                });
                ((c - a).max(1.0) / (e - b).max(1.0)) as f64
            });
            [Some(s.len() as f64), Some(pts as f64), aspect]
        }
    }
}

/// Statistics of many drawings and what happened while reading them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    #[serde(skip)]
    pub stats: Vec<DrawingStats>,
    pub files: usize,
    /// Records read.
    pub read: u64,
    /// Records that failed validation (not counted).
    pub rejected: u64,
    /// Valid records left out (unrecognized, beyond the per-file sample).
    pub filtered: u64,
    /// Earlier lines of a key_id seen again (request logs: the drawing page asks about a
    /// drawing several times while it grows; the last, most complete line is kept).
    pub duplicates: u64,
}

/// Reads drawings of QuickDraw files (any input format) into statistics. `per_file` caps the
/// records taken from each file; request logs also yield their predicted class. With `dedupe`,
/// a key_id seen again replaces its earlier statistics (non-zero key_ids only).
pub fn read_sample(
    paths: &[PathBuf],
    spec: &FeatureSpec,
    per_file: Option<usize>,
    include_unrecognized: bool,
    dedupe: bool,
) -> Result<Sample, IngestError> {
    let mut out = Sample::default();
    let mut seen: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    for path in paths {
        out.files += 1;
        let mut r = UnitReader::open(path, None)?;
        let class = class_from_path(path);
        let mut taken = 0usize;
        while let Some(u) = r.next_record()? {
            if per_file.is_some_and(|n| taken >= n) {
                break;
            }
            out.read += 1;
            let d = match parse_unit(r.format, &u, &class, LabelFrom::File) {
                Ok(d) => d,
                Err(_) => {
                    out.rejected += 1;
                    continue;
                }
            };
            if !d.recognized && !include_unrecognized {
                out.filtered += 1;
                continue;
            }
            let mut s = drawing_stats(&d, spec);
            let key = format!("\"{SIDECAR}\":");
            if u.bytes.windows(key.len()).any(|w| w == key.as_bytes()) {
                let v: serde_json::Value = serde_json::from_slice(&u.bytes).unwrap_or_default();
                s.predicted = v[SIDECAR]["class_name"].as_str().map(str::to_string);
            }
            match seen.get(&d.key_id) {
                Some(&i) if dedupe => {
                    out.stats[i] = s;
                    out.duplicates += 1;
                }
                _ => {
                    if dedupe && d.key_id != 0 {
                        seen.insert(d.key_id, out.stats.len());
                    }
                    out.stats.push(s);
                }
            }
            taken += 1;
        }
    }
    Ok(out)
}

/// Population stability index of `serve` against `train`, with `bins` quantile bins of the
/// training values (shares floored at 1e-4). 0 = same distribution; > 0.25 is usually
/// called a major shift, 0.1..0.25 moderate.
pub fn psi(train: &[f64], serve: &[f64], bins: usize) -> f64 {
    if train.is_empty() || serve.is_empty() {
        return f64::NAN;
    }
    let mut t = train.to_vec();
    t.sort_by(f64::total_cmp);
    let mut edges: Vec<f64> = (1..bins)
        .map(|i| t[(i * t.len() / bins).min(t.len() - 1)])
        .collect();
    edges.dedup();
    // Bin k holds values in [edge k-1, edge k): with integer-valued features each value whose
    // share reaches a decile gets its own bin.
    let bin = |v: f64| edges.partition_point(|&e| e <= v);
    let k = edges.len() + 1;
    let share = |xs: &[f64]| {
        let mut c = vec![0f64; k];
        for &x in xs {
            c[bin(x)] += 1.0;
        }
        c.iter()
            .map(|n| (n / xs.len() as f64).max(1e-4))
            .collect::<Vec<_>>()
    };
    psi_of(&share(train), &share(serve))
}

/// PSI of two share vectors over the same categories (shares already floored above 0).
pub fn psi_of(p: &[f64], q: &[f64]) -> f64 {
    p.iter().zip(q).map(|(p, q)| (q - p) * (q / p).ln()).sum()
}

/// PSI over categories (every category seen on either side is a bin).
pub fn psi_categorical(train: &[&str], serve: &[&str]) -> f64 {
    if train.is_empty() || serve.is_empty() {
        return f64::NAN;
    }
    let (ct, cs) = (counts(train), counts(serve));
    let cats: std::collections::BTreeSet<&str> = ct.keys().chain(cs.keys()).copied().collect();
    let share = |c: &BTreeMap<&str, usize>, n: usize| {
        cats.iter()
            .map(|k| (*c.get(k).unwrap_or(&0) as f64 / n as f64).max(1e-4))
            .collect::<Vec<_>>()
    };
    psi_of(&share(&ct, train.len()), &share(&cs, serve.len()))
}

fn counts<'a>(xs: &[&'a str]) -> BTreeMap<&'a str, usize> {
    let mut m = BTreeMap::new();
    for x in xs {
        *m.entry(*x).or_default() += 1;
    }
    m
}

/// Kolmogorov-Smirnov distance: the largest gap between the two empirical CDFs.
pub fn ks(a: &[f64], b: &[f64]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return f64::NAN;
    }
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (mut i, mut j, mut d) = (0, 0, 0f64);
    while i < a.len() && j < b.len() {
        let v = a[i].min(b[j]);
        while i < a.len() && a[i] <= v {
            i += 1;
        }
        while j < b.len() && b[j] <= v {
            j += 1;
        }
        d = d.max((i as f64 / a.len() as f64 - j as f64 / b.len() as f64).abs());
    }
    d
}

pub fn drift_level(psi: f64) -> &'static str {
    if psi.is_nan() {
        "n/a"
    } else if psi < 0.1 {
        "none"
    } else if psi < 0.25 {
        "moderate"
    } else {
        "major"
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct NumericDrift {
    pub feature: &'static str,
    pub train_n: usize,
    pub serve_n: usize,
    pub train_mean: f64,
    pub serve_mean: f64,
    pub train_median: f64,
    pub serve_median: f64,
    pub psi: f64,
    pub ks: f64,
    pub drift: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct CategoricalDrift {
    pub feature: &'static str,
    /// Most common categories with their shares.
    pub train_top: Vec<(String, f64)>,
    pub serve_top: Vec<(String, f64)>,
    pub psi: f64,
    pub drift: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct SkewReport {
    pub train: Sample,
    pub serve: Sample,
    pub numeric: Vec<NumericDrift>,
    pub categorical: Vec<CategoricalDrift>,
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn top_shares(xs: &[&str], k: usize) -> Vec<(String, f64)> {
    let mut c: Vec<(&str, usize)> = counts(xs).into_iter().collect();
    c.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    c.into_iter()
        .take(k)
        .map(|(s, n)| (s.to_string(), n as f64 / xs.len().max(1) as f64))
        .collect()
}

/// Compares serving statistics with training ones. `train_classes`, when given, is the class
/// mix of the training split (class name -> examples), compared with the predicted classes.
pub fn compare(
    train: Sample,
    serve: Sample,
    bins: usize,
    train_classes: Option<&BTreeMap<String, u64>>,
) -> SkewReport {
    let col = |s: &Sample, i: usize| {
        s.stats
            .iter()
            .filter_map(|d| d.numeric[i])
            .collect::<Vec<f64>>()
    };
    let numeric = NUMERIC
        .iter()
        .enumerate()
        .map(|(i, &feature)| {
            let (a, b) = (col(&train, i), col(&serve, i));
            let p = psi(&a, &b, bins);
            NumericDrift {
                feature,
                train_n: a.len(),
                serve_n: b.len(),
                train_mean: mean(&a),
                serve_mean: mean(&b),
                train_median: median(&a),
                serve_median: median(&b),
                psi: p,
                ks: ks(&a, &b),
                drift: drift_level(p),
            }
        })
        .collect();
    let ct: Vec<&str> = train.stats.iter().map(|d| d.country.as_str()).collect();
    let cs: Vec<&str> = serve.stats.iter().map(|d| d.country.as_str()).collect();
    let p = psi_categorical(&ct, &cs);
    let mut categorical = vec![CategoricalDrift {
        feature: "country",
        train_top: top_shares(&ct, 5),
        serve_top: top_shares(&cs, 5),
        psi: p,
        drift: drift_level(p),
    }];
    let predicted: Vec<&str> = serve
        .stats
        .iter()
        .filter_map(|d| d.predicted.as_deref())
        .collect();
    if let (Some(tc), false) = (train_classes, predicted.is_empty()) {
        // Expand the class counts into shares directly (no need to materialise examples).
        let total: u64 = tc.values().sum();
        let cats: std::collections::BTreeSet<&str> = tc
            .keys()
            .map(String::as_str)
            .chain(predicted.iter().copied())
            .collect();
        let pc = counts(&predicted);
        let pshare: Vec<f64> = cats
            .iter()
            .map(|c| (*tc.get(*c).unwrap_or(&0) as f64 / total.max(1) as f64).max(1e-4))
            .collect();
        let qshare: Vec<f64> = cats
            .iter()
            .map(|c| (*pc.get(c).unwrap_or(&0) as f64 / predicted.len() as f64).max(1e-4))
            .collect();
        let p = psi_of(&pshare, &qshare);
        let mut train_top: Vec<(String, f64)> = tc
            .iter()
            .map(|(k, v)| (k.clone(), *v as f64 / total.max(1) as f64))
            .collect();
        train_top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        train_top.truncate(5);
        categorical.push(CategoricalDrift {
            feature: "predicted_class",
            train_top,
            serve_top: top_shares(&predicted, 5),
            psi: p,
            drift: drift_level(p),
        });
    }
    SkewReport {
        train,
        serve,
        numeric,
        categorical,
    }
}

/// The QuickDraw files of a request log folder (or the file itself), local or on an object
/// store (the files directly under the prefix).
pub fn log_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if storage::is_file(path) {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out: Vec<PathBuf> = storage::list_top(path)?
        .into_iter()
        .filter(|(name, _)| {
            let n = name.strip_suffix(".gz").unwrap_or(name);
            n.ends_with(".ndjson") || n.ends_with(".jsonl")
        })
        .map(|(name, _)| path.join(name))
        .collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickdraw_data::{Ink, Stroke};

    #[test]
    fn psi_and_ks_on_known_distributions() {
        let a: Vec<f64> = (0..1000).map(|i| i as f64).collect();
        assert!(psi(&a, &a, 10).abs() < 1e-12);
        assert_eq!(ks(&a, &a), 0.0);
        let shifted: Vec<f64> = (0..1000).map(|i| i as f64 + 500.0).collect();
        assert!(
            (ks(&a, &shifted) - 0.5).abs() < 1e-9,
            "{}",
            ks(&a, &shifted)
        );
        assert!(psi(&a, &shifted, 10) > 0.25);
        // Half the serving mass in the top decile: p = 0.1 everywhere, q = 0.5 in the last
        // bin and 0.5/9 in the others.
        let mut skewed: Vec<f64> = (0..900).map(|i| i as f64).collect();
        skewed.extend(vec![999.0; 900]);
        let q = 0.5 / 9.0;
        let expected = 9.0 * (q - 0.1) * (q / 0.1f64).ln() + (0.5 - 0.1) * (0.5f64 / 0.1).ln();
        assert!((psi(&a, &skewed, 10) - expected).abs() < 1e-9);
        assert_eq!(drift_level(0.05), "none");
        assert_eq!(drift_level(0.3), "major");
        assert!(psi_categorical(&["CH", "CH", "US"], &["CH", "CH", "US"]).abs() < 1e-12);
        assert!(psi_categorical(&["CH"; 10], &["US"; 10]) > 1.0);
    }

    #[test]
    fn stats_are_taken_as_the_model_sees_the_drawing() {
        let spec = crate::testing::image_features(16);
        let d = Drawing {
            key_id: 1,
            word: "line".into(),
            countrycode: String::new(),
            timestamp: 0,
            recognized: true,
            ink: Ink::Strokes(vec![Stroke::new(
                vec![0.0, 100.0, 200.0],
                vec![0.0, 0.0, 50.0],
            )]),
        };
        let s = drawing_stats(&d, &spec);
        assert_eq!(s.numeric[0], Some(1.0));
        assert_eq!(s.numeric[1], Some(3.0));
        assert_eq!(s.numeric[3], Some(4.0));
        assert!(s.numeric[2].unwrap() > 0.0 && s.numeric[2].unwrap() < 0.5);
        assert_eq!(s.country, "(none)");
    }
}
