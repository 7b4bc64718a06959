//! Prediction drift (the lecture's rules #10 and #37): a sliding window, per model, of what its
//! newest served version sees (per drawing: strokes, points, ink share, bounding-box aspect; the predicted
//! class) compared with the training distribution, as the population stability index (PSI, see
//! [`crate::skew`]) per feature. The server exports them as gauges and logs a warning when one
//! passes a threshold.
//!
//! The training side is the export's `assets/drift_reference.json` ([`Reference`]), which
//! `quickdraw export` writes from the dataset's training inputs and the manifest's class counts.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use quickdraw_data::signature::ASSETS_DIR;
use serde::{Deserialize, Serialize};

use crate::predictor::Predictor;
use crate::skew::{self, NUMERIC, Sample};

/// The reference's file name in a version's `assets/`.
pub const REFERENCE_FILE: &str = "drift_reference.json";
/// Observations kept (the most recent ones).
pub const DEFAULT_WINDOW: usize = 1000;
/// PSI above which a warning is logged (0.25: what is usually called a major shift).
pub const DEFAULT_THRESHOLD: f64 = 0.25;
/// Observations needed before any PSI is computed.
pub const MIN_WINDOW: usize = 50;
/// The PSIs are recomputed after this many new observations.
const RECOMPUTE_EVERY: usize = 25;
/// Training values kept per feature in the reference (quantiles of the sample).
const REFERENCE_VALUES: usize = 2000;
const BINS: usize = 10;
/// The gauge name of the predicted-class drift.
pub const PREDICTED_CLASS: &str = "predicted_class";

/// The training distribution of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    /// Where the training sample came from.
    pub source: String,
    /// Drawings in the sample.
    pub drawings: usize,
    /// Per numeric feature ([`NUMERIC`]), sorted training values (quantiles of the sample).
    pub numeric: BTreeMap<String, Vec<f64>>,
    /// Class name -> share of the training split.
    pub classes: BTreeMap<String, f64>,
}

fn reference_path(dir: &Path) -> PathBuf {
    dir.join(ASSETS_DIR).join(REFERENCE_FILE)
}

/// `n` evenly spaced quantiles of sorted values (all of them when there are fewer).
fn quantiles(mut v: Vec<f64>, n: usize) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    if v.len() <= n {
        return v;
    }
    (0..n).map(|i| v[i * (v.len() - 1) / (n - 1)]).collect()
}

impl Reference {
    /// From a training sample ([`skew::read_sample`]) and the training split's class counts.
    pub fn new(sample: &Sample, classes: &BTreeMap<String, u64>, source: &str) -> Reference {
        let numeric = NUMERIC
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let col = sample.stats.iter().filter_map(|d| d.numeric[i]).collect();
                (f.to_string(), quantiles(col, REFERENCE_VALUES))
            })
            .collect();
        let total = classes.values().sum::<u64>().max(1) as f64;
        Reference {
            source: source.into(),
            drawings: sample.stats.len(),
            numeric,
            classes: classes
                .iter()
                .map(|(k, v)| (k.clone(), *v as f64 / total))
                .collect(),
        }
    }

    /// Writes it into the version folder `dir`; returns the path.
    pub fn write(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let p = reference_path(dir);
        std::fs::create_dir_all(dir.join(ASSETS_DIR))?;
        std::fs::write(&p, serde_json::to_vec(self)?)?;
        Ok(p)
    }

    /// The reference of the version folder `dir`, `None` when it has none.
    pub fn load(dir: &Path) -> Result<Option<Reference>, String> {
        let p = reference_path(dir);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| format!("{}: {e}", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", p.display())),
        }
    }
}

/// What one served drawing (or image) showed.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// [`NUMERIC`]'s features (`None` where the input has no strokes).
    pub numeric: [Option<f64>; 4],
    pub predicted: String,
}

/// Window size and warning threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriftConfig {
    pub window: usize,
    pub threshold: f64,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            window: DEFAULT_WINDOW,
            threshold: DEFAULT_THRESHOLD,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// The version the window is about (reset when another one answers); `None` before any.
    version: Option<Option<u64>>,
    reference: Option<Arc<Reference>>,
    window: VecDeque<Observation>,
    since: usize,
    psi: BTreeMap<&'static str, f64>,
}

/// The drift window of one model's served version (the server keeps one per model and feeds it
/// the newest served version's predictions; it restarts when another version answers).
#[derive(Debug)]
pub struct Drift {
    cfg: DriftConfig,
    quiet: bool,
    state: Mutex<State>,
}

impl Drift {
    pub fn new(cfg: DriftConfig, quiet: bool) -> Drift {
        Drift {
            cfg,
            quiet,
            state: Mutex::default(),
        }
    }

    pub fn config(&self) -> &DriftConfig {
        &self.cfg
    }

    /// Adds what version `p` served; recomputes the PSIs now and then and logs a warning for
    /// each feature that crosses the threshold (once per crossing).
    pub fn observe(&self, p: &Predictor, obs: Vec<Observation>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.version != Some(p.version()) {
            *st = State {
                version: Some(p.version()),
                reference: self.load_reference(p),
                ..State::default()
            };
        }
        if st.reference.is_none() {
            return;
        }
        st.since += obs.len();
        st.window.extend(obs);
        let excess = st.window.len().saturating_sub(self.cfg.window);
        st.window.drain(..excess);
        if st.since >= RECOMPUTE_EVERY && st.window.len() >= MIN_WINDOW {
            st.since = 0;
            let before = std::mem::take(&mut st.psi);
            st.psi = psis(st.reference.as_deref().expect("checked above"), &st.window);
            for (f, v) in &st.psi {
                let was = before.get(f).is_some_and(|b| *b > self.cfg.threshold);
                if *v > self.cfg.threshold && !was && !self.quiet {
                    tracing::warn!(
                        feature = f,
                        psi = v,
                        "drift: {f} PSI {v:.3} over the last {} predictions of version {} is above {} (training distribution: {})",
                        st.window.len(),
                        p.version().unwrap_or(0),
                        self.cfg.threshold,
                        st.reference.as_ref().map_or("", |r| r.source.as_str())
                    );
                }
            }
        }
    }

    fn load_reference(&self, p: &Predictor) -> Option<Arc<Reference>> {
        match Reference::load(&p.info().dir) {
            Ok(Some(r)) => Some(Arc::new(r)),
            Ok(None) => {
                if !self.quiet {
                    tracing::info!(
                        "version {} has no {} (exported before drift references); no drift gauges",
                        p.version().unwrap_or(0),
                        reference_path(&p.info().dir).display()
                    );
                }
                None
            }
            Err(e) => {
                tracing::warn!("drift reference unreadable, no drift gauges: {e}");
                None
            }
        }
    }

    /// The last PSIs per feature and the window's size.
    pub fn snapshot(&self) -> (BTreeMap<&'static str, f64>, usize) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (st.psi.clone(), st.window.len())
    }
}

/// PSI of each numeric feature the window has values of, and of the predicted classes.
fn psis(r: &Reference, window: &VecDeque<Observation>) -> BTreeMap<&'static str, f64> {
    let mut out = BTreeMap::new();
    for (i, f) in NUMERIC.iter().enumerate() {
        let serve: Vec<f64> = window.iter().filter_map(|o| o.numeric[i]).collect();
        match r.numeric.get(*f) {
            Some(train) if !train.is_empty() && serve.len() >= MIN_WINDOW => {
                out.insert(*f, skew::psi(train, &serve, BINS));
            }
            _ => {}
        }
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for o in window {
        *counts.entry(o.predicted.as_str()).or_default() += 1;
    }
    let cats: std::collections::BTreeSet<&str> = r
        .classes
        .keys()
        .map(String::as_str)
        .chain(counts.keys().copied())
        .collect();
    let n = window.len().max(1) as f64;
    let p: Vec<f64> = cats
        .iter()
        .map(|c| r.classes.get(*c).copied().unwrap_or(0.0).max(1e-4))
        .collect();
    let q: Vec<f64> = cats
        .iter()
        .map(|c| (*counts.get(c).unwrap_or(&0) as f64 / n).max(1e-4))
        .collect();
    out.insert(PREDICTED_CLASS, skew::psi_of(&p, &q));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> Reference {
        Reference {
            source: "test".into(),
            drawings: 100,
            numeric: [(
                "strokes".to_string(),
                (0..100).map(|i| (i % 10) as f64).collect(),
            )]
            .into(),
            classes: [("cat".to_string(), 0.5), ("dog".to_string(), 0.5)].into(),
        }
    }

    fn obs(strokes: f64, class: &str) -> Observation {
        Observation {
            numeric: [Some(strokes), None, None, None],
            predicted: class.into(),
        }
    }

    #[test]
    fn the_same_distribution_has_a_small_psi_and_a_shift_a_large_one() {
        let r = reference();
        let same: VecDeque<Observation> = (0..200)
            .map(|i| obs((i % 10) as f64, if i % 2 == 0 { "cat" } else { "dog" }))
            .collect();
        let p = psis(&r, &same);
        assert!(p["strokes"] < 0.05, "{p:?}");
        assert!(p[PREDICTED_CLASS] < 0.01, "{p:?}");
        assert!(!p.contains_key("points"), "no values, no PSI");
        let shifted: VecDeque<Observation> = (0..200).map(|_| obs(30.0, "cat")).collect();
        let p = psis(&r, &shifted);
        assert!(p["strokes"] > 1.0, "{p:?}");
        assert!(p[PREDICTED_CLASS] > 1.0, "{p:?}");
    }

    #[test]
    fn quantiles_keep_the_ends() {
        assert_eq!(quantiles(vec![3.0, 1.0, 2.0], 5), vec![1.0, 2.0, 3.0]);
        let q = quantiles((0..=100).map(f64::from).collect(), 5);
        assert_eq!(q, vec![0.0, 25.0, 50.0, 75.0, 100.0]);
    }
}
