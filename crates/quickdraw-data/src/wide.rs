//! The wide part's features (`--model wide_deep`): a drawing's metadata as the multi-hot vector
//! that the linear half of the lecture's `DNNLinearCombinedClassifier` reads.
//!
//! Four categorical columns, one after the other in the vector (the layout TensorFlow's
//! `indicator_column`s concatenate to):
//! - `countrycode`: a hash bucket of the upper-cased code (FNV-1a 64 modulo
//!   [`WideSpec::country_buckets`]; TensorFlow's `categorical_column_with_hash_bucket` uses
//!   FarmHash, so bucket numbers differ from TF's, the idea does not);
//! - `recognized`: false, true;
//! - stroke count, bucketised at [`STROKE_BOUNDARIES`];
//! - drawing duration in milliseconds (raw timestamps only), bucketised at
//!   [`DURATION_BOUNDARIES_MS`].
//!
//! A missing value (no country code, `recognized` not sent, an image-only record without strokes,
//! a drawing without timestamps) sets no slot of its column, so the column adds nothing to the
//! logits: TensorFlow's default for a missing categorical value. That is the documented default
//! for serving requests that do not carry the metadata.

use serde::{Deserialize, Serialize};

use crate::drawing::{Drawing, Ink, Stroke};

/// Upper bounds (exclusive) of the stroke-count buckets: 1, 2, 3, 4, 5, 6-7, 8-9, 10-12, 13-16,
/// 17-21, 22-29, 30 and more.
pub const STROKE_BOUNDARIES: [u32; 11] = [2, 3, 4, 5, 6, 8, 10, 13, 17, 22, 30];

/// Upper bounds (exclusive) of the duration buckets in milliseconds: under 1 s, 1-2 s, ... 16 s
/// and more.
pub const DURATION_BOUNDARIES_MS: [u32; 8] = [1000, 2000, 3000, 4000, 6000, 8000, 12000, 16000];

/// Share of training examples that lose each metadata column (independently, drawn from the
/// run's seed): so that a request without a column (the drawing page never knows `recognized`; a
/// tensor without `wide`) is an input the model has seen. Without it a column present in every
/// training example (`recognized` is true in all of them unless `convert
/// --include-unrecognized`) learns a constant, and leaving it out at serving shifts every logit.
pub const TRAIN_MISSING_RATE: f64 = 0.2;

/// Country hash buckets unless the model says otherwise (QuickDraw has about 200 country codes).
pub const DEFAULT_COUNTRY_BUCKETS: usize = 128;

/// The layout of the wide vector; stored in the model's config and the export's
/// `preprocessing.json`, so serving builds exactly the vector training used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WideSpec {
    pub country_buckets: usize,
}

impl Default for WideSpec {
    fn default() -> Self {
        WideSpec {
            country_buckets: DEFAULT_COUNTRY_BUCKETS,
        }
    }
}

/// A drawing's metadata; `None` is a missing value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    pub countrycode: Option<String>,
    pub recognized: Option<bool>,
    pub stroke_count: Option<u32>,
    pub duration_ms: Option<u32>,
}

impl Metadata {
    /// The metadata of a drawing from a data file, where every field is present (`countrycode`
    /// may be empty: missing). Stroke count and duration are measured on the ink.
    pub fn of_drawing(d: &Drawing) -> Self {
        Metadata {
            countrycode: Some(d.countrycode.clone()).filter(|c| !c.is_empty()),
            recognized: Some(d.recognized),
            stroke_count: stroke_count(&d.ink),
            duration_ms: duration_ms(&d.ink),
        }
    }
}

/// Number of strokes, `None` for image-only records.
pub fn stroke_count(ink: &Ink) -> Option<u32> {
    match ink {
        Ink::Strokes(s) => Some(s.len() as u32),
        Ink::Bitmap(_) => None,
    }
}

/// Time from the first to the last point in milliseconds, when every stroke has timestamps.
pub fn duration_ms(ink: &Ink) -> Option<u32> {
    let Ink::Strokes(strokes) = ink else {
        return None;
    };
    let times: Vec<&Vec<f32>> = strokes
        .iter()
        .map(|s: &Stroke| s.t.as_ref())
        .collect::<Option<_>>()?;
    let (lo, hi) = times
        .iter()
        .flat_map(|t| t.iter())
        .filter(|t| t.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &t| {
            (lo.min(t), hi.max(t))
        });
    (hi >= lo).then(|| (hi - lo).round().min(u32::MAX as f32) as u32)
}

fn bucket(v: u32, boundaries: &[u32]) -> usize {
    boundaries.iter().take_while(|&&b| v >= b).count()
}

/// 64-bit FNV-1a: a tiny, stable, documented hash (std's `DefaultHasher` may change between
/// Rust releases, which would silently move every country to another bucket).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// SplitMix64's output function (Steele et al. 2014): a uniform 64-bit value from a seed, for
/// the column draws (the crate has no random number generator and needs one number per draw).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl WideSpec {
    /// Length of the wide vector.
    pub fn dim(&self) -> usize {
        self.country_buckets + 2 + STROKE_BOUNDARIES.len() + 1 + DURATION_BOUNDARIES_MS.len() + 1
    }

    /// The country column's bucket of a code (upper-cased, surrounding space trimmed).
    pub fn country_bucket(&self, code: &str) -> usize {
        let code = code.trim().to_ascii_uppercase();
        (fnv1a(code.as_bytes()) % self.country_buckets.max(1) as u64) as usize
    }

    /// The slots set for `m` (at most one per column), in increasing order.
    pub fn slots(&self, m: &Metadata) -> Vec<usize> {
        let mut out = Vec::with_capacity(4);
        let mut base = 0;
        if let Some(c) = m.countrycode.as_deref().filter(|c| !c.trim().is_empty()) {
            out.push(self.country_bucket(c));
        }
        base += self.country_buckets;
        if let Some(r) = m.recognized {
            out.push(base + r as usize);
        }
        base += 2;
        if let Some(n) = m.stroke_count {
            out.push(base + bucket(n, &STROKE_BOUNDARIES));
        }
        base += STROKE_BOUNDARIES.len() + 1;
        if let Some(ms) = m.duration_ms {
            out.push(base + bucket(ms, &DURATION_BOUNDARIES_MS));
        }
        out
    }

    /// Appends the multi-hot vector of `m` (`dim()` values, 0.0 or 1.0) to `out`.
    pub fn extend_vector(&self, m: &Metadata, out: &mut Vec<f32>) {
        let start = out.len();
        out.resize(start + self.dim(), 0.0);
        for s in self.slots(m) {
            out[start + s] = 1.0;
        }
    }

    /// The multi-hot vector of `m`.
    pub fn vector(&self, m: &Metadata) -> Vec<f32> {
        let mut v = Vec::with_capacity(self.dim());
        self.extend_vector(m, &mut v);
        v
    }

    /// Zeroes each column of the vector `v` (one example's) with probability `rate`, the draws
    /// decided by `seed` alone (training's [`TRAIN_MISSING_RATE`]).
    pub fn drop_columns(&self, v: &mut [f32], rate: f64, seed: u64) {
        for (i, (_, r)) in self.columns().into_iter().enumerate() {
            let u = (splitmix64(seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)) >> 11)
                as f64
                / (1u64 << 53) as f64;
            if u < rate {
                v[r].fill(0.0);
            }
        }
    }

    /// The four columns' names and slot ranges, in vector order.
    pub fn columns(&self) -> [(&'static str, std::ops::Range<usize>); 4] {
        let c = self.country_buckets;
        let s = c + 2;
        let d = s + STROKE_BOUNDARIES.len() + 1;
        [
            ("countrycode", 0..c),
            ("recognized", c..s),
            ("stroke_count", s..d),
            ("duration_ms", d..self.dim()),
        ]
    }

    /// Names of the slots (`countrycode_bucket_17`, `recognized=true`, `strokes_6-7`,
    /// `duration_1-2s`), for `model show` and the TensorBoard graph.
    pub fn slot_names(&self) -> Vec<String> {
        let mut names: Vec<String> = (0..self.country_buckets)
            .map(|i| format!("countrycode_bucket_{i}"))
            .collect();
        names.extend([
            "recognized=false".to_string(),
            "recognized=true".to_string(),
        ]);
        names.extend(range_names(&STROKE_BOUNDARIES, 1, "strokes_", ""));
        let secs: Vec<u32> = DURATION_BOUNDARIES_MS.iter().map(|b| b / 1000).collect();
        names.extend(range_names(&secs, 0, "duration_", "s"));
        names
    }
}

fn range_names(bounds: &[u32], first: u32, prefix: &str, unit: &str) -> Vec<String> {
    let mut lo = first;
    let mut out = Vec::new();
    for &b in bounds {
        out.push(match b - lo {
            1 => format!("{prefix}{lo}{unit}"),
            _ => format!("{prefix}{lo}-{}{unit}", b - 1),
        });
        lo = b;
    }
    out.push(format!("{prefix}{lo}+{unit}"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_by_hand() {
        assert_eq!(bucket(1, &STROKE_BOUNDARIES), 0);
        assert_eq!(bucket(2, &STROKE_BOUNDARIES), 1);
        assert_eq!(bucket(7, &STROKE_BOUNDARIES), 5);
        assert_eq!(bucket(30, &STROKE_BOUNDARIES), 11);
        assert_eq!(bucket(999, &DURATION_BOUNDARIES_MS), 0);
        assert_eq!(bucket(1000, &DURATION_BOUNDARIES_MS), 1);
        assert_eq!(bucket(60_000, &DURATION_BOUNDARIES_MS), 8);
    }

    #[test]
    fn fnv1a_reference_values() {
        // The FNV specification's test vectors (http://www.isthe.com/chongo/tech/comp/fnv/).
        assert_eq!(fnv1a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn vector_layout_and_missing_values() {
        let spec = WideSpec { country_buckets: 4 };
        assert_eq!(spec.dim(), 4 + 2 + 12 + 9);
        assert_eq!(spec.slot_names().len(), spec.dim());
        let names = spec.slot_names();
        assert_eq!(names[6], "strokes_1");
        assert_eq!(names[11], "strokes_6-7");
        assert_eq!(names[17], "strokes_30+");
        assert_eq!(names[18], "duration_0s");
        assert_eq!(names[19], "duration_1s");
        assert_eq!(names[22], "duration_4-5s");
        assert_eq!(names[26], "duration_16+s");
        let m = Metadata {
            countrycode: Some("us".into()),
            recognized: Some(true),
            stroke_count: Some(7),
            duration_ms: Some(2500),
        };
        let b = spec.country_bucket("US");
        assert_eq!(spec.country_bucket(" us "), b);
        assert_eq!(spec.slots(&m), vec![b, 5, 6 + 5, 18 + 2]);
        let v = spec.vector(&m);
        assert_eq!(v.iter().sum::<f32>(), 4.0);
        assert_eq!(spec.vector(&Metadata::default()), vec![0.0; spec.dim()]);
        let cols = spec.columns();
        assert_eq!(cols.clone().map(|c| c.1.len()), [4, 2, 12, 9]);
        assert_eq!(cols[3].1.end, spec.dim());
        let only_strokes = Metadata {
            stroke_count: Some(1),
            countrycode: Some(String::new()),
            ..Metadata::default()
        };
        assert_eq!(spec.slots(&only_strokes), vec![6]);
    }

    #[test]
    fn column_dropout_is_seeded_and_at_the_rate() {
        let spec = WideSpec { country_buckets: 4 };
        let m = Metadata {
            countrycode: Some("US".into()),
            recognized: Some(true),
            stroke_count: Some(3),
            duration_ms: Some(10),
        };
        let full = spec.vector(&m);
        let mut v = full.clone();
        spec.drop_columns(&mut v, 0.0, 7);
        assert_eq!(v, full);
        spec.drop_columns(&mut v, 1.0, 7);
        assert_eq!(v, vec![0.0; spec.dim()]);
        // Each column independently, about `rate` of the time, the same for the same seed.
        let mut dropped = [0u32; 4];
        for seed in 0..10_000u64 {
            let mut v = full.clone();
            spec.drop_columns(&mut v, TRAIN_MISSING_RATE, seed);
            let mut again = full.clone();
            spec.drop_columns(&mut again, TRAIN_MISSING_RATE, seed);
            assert_eq!(v, again);
            for (c, (_, r)) in spec.columns().into_iter().enumerate() {
                dropped[c] += v[r].iter().all(|&x| x == 0.0) as u32;
            }
        }
        for d in dropped {
            assert!((1800..2200).contains(&d), "{dropped:?}");
        }
    }

    #[test]
    fn metadata_of_raw_and_image_drawings() {
        let mut s = Stroke::new(vec![0.0, 1.0], vec![0.0, 1.0]);
        s.t = Some(vec![120.0, 900.0]);
        let mut s2 = Stroke::new(vec![2.0], vec![2.0]);
        s2.t = Some(vec![3400.0]);
        let d = Drawing {
            key_id: 1,
            word: "cat".into(),
            countrycode: "DE".into(),
            timestamp: 0,
            recognized: false,
            ink: Ink::Strokes(vec![s, s2.clone()]),
        };
        let m = Metadata::of_drawing(&d);
        assert_eq!(m.stroke_count, Some(2));
        assert_eq!(m.duration_ms, Some(3280));
        assert_eq!(m.recognized, Some(false));
        assert_eq!(m.countrycode.as_deref(), Some("DE"));
        // One stroke without timestamps: no duration.
        let untimed = Ink::Strokes(vec![s2, Stroke::new(vec![1.0], vec![1.0])]);
        assert_eq!(duration_ms(&untimed), None);
        let bitmap = Ink::Bitmap(crate::drawing::Bitmap {
            side: 1,
            pixels: vec![0],
        });
        assert_eq!((stroke_count(&bitmap), duration_ms(&bitmap)), (None, None));
    }
}
