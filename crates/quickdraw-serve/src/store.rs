//! The model store: the version folders of one base path (TensorFlow Serving's layout), the
//! newest loadable one served, new versions picked up by [`ModelStore::refresh`] without a
//! restart. A version that fails to load is logged and skipped (and retried when its files
//! change); the current version keeps serving.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use quickdraw_data::signature::{self, list_versions};
use quickdraw_data::storage::{self, Mirror};

use crate::onnxruntime::Runtime;
use crate::predictor::Predictor;
use crate::warmup;

/// One version's state, as TensorFlow Serving's `ModelVersionStatus`.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionStatus {
    pub version: u64,
    /// `AVAILABLE` (serving) or `END` (failed to load).
    pub state: &'static str,
    /// `OK` or `UNKNOWN`.
    pub error_code: &'static str,
    pub error_message: String,
}

/// What one refresh did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RefreshReport {
    /// The version that started serving.
    pub loaded: Option<u64>,
    /// Versions that failed to load now (version, error).
    pub failed: Vec<(u64, String)>,
}

#[derive(Debug, Clone, PartialEq)]
struct Broken {
    fingerprint: Fingerprint,
    error: String,
}

type Fingerprint = Vec<Option<(u64, Option<SystemTime>)>>;

/// Sizes and modification times of the files of a version folder: a failed version is retried
/// only when this changes (e.g. the exporter finished writing it).
fn fingerprint(dir: &Path) -> Fingerprint {
    let files = [
        PathBuf::from(signature::MODEL_FILE),
        PathBuf::from(signature::SIGNATURE_FILE),
        Path::new(signature::ASSETS_DIR).join(signature::LABELS_FILE),
        Path::new(signature::ASSETS_DIR).join(signature::PREPROCESSING_FILE),
        PathBuf::from(signature::METRICS_FILE),
    ];
    files
        .iter()
        .map(|f| {
            std::fs::metadata(dir.join(f))
                .ok()
                .map(|m| (m.len(), m.modified().ok()))
        })
        .collect()
}

#[derive(Debug, Default)]
struct State {
    current: Option<Arc<Predictor>>,
    broken: BTreeMap<u64, Broken>,
}

#[derive(Debug)]
pub struct ModelStore {
    base: PathBuf,
    state: RwLock<State>,
    /// Serialises refreshes (loading happens outside the state lock).
    refreshing: Mutex<()>,
    quiet: bool,
    /// The engine every version is loaded with.
    runtime: Runtime,
    /// An object-store base path's local copy (`base` is then its directory), pulled at every
    /// refresh; each version's signature.json comes last, so a version is loaded only once
    /// all its files are here.
    remote: Option<Mutex<Mirror>>,
    /// The one version to serve (TF Serving's `specific` version policy); `None`: the newest.
    pin: Option<u64>,
    /// Versions loaded, and loads that failed, since the store opened (monitoring).
    loads: AtomicU64,
    load_failures: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("model base path {0}: not a directory (expected <base>/<version>/model.onnx)")]
    NoBase(PathBuf),
    #[error(
        "{0} is a version folder; pass its parent as the model base path (TensorFlow Serving's layout <base>/<version>/)"
    )]
    VersionDir(PathBuf),
    #[error("{}: {hint}", .dir.display())]
    ModelDir { dir: PathBuf, hint: String },
    #[error("model base path {}: {source}", .url.display())]
    Remote {
        url: PathBuf,
        source: std::io::Error,
    },
}

impl ModelStore {
    /// Opens a base path and loads its newest loadable version (if any yet).
    pub fn open(base: &Path, quiet: bool) -> Result<ModelStore, StoreError> {
        Self::open_with(base, quiet, Runtime::Tract)
    }

    /// [`ModelStore::open`], running the models with `runtime`.
    pub fn open_with(base: &Path, quiet: bool, runtime: Runtime) -> Result<ModelStore, StoreError> {
        Self::open_pinned(base, quiet, runtime, None)
    }

    /// [`ModelStore::open_with`], serving only version `pin` when given (it is loaded when it
    /// appears; newer versions are left alone).
    pub fn open_pinned(
        base: &Path,
        quiet: bool,
        runtime: Runtime,
        pin: Option<u64>,
    ) -> Result<ModelStore, StoreError> {
        if storage::is_url(base) {
            let mirror = Mirror::open(base, &[signature::SIGNATURE_FILE]).map_err(|source| {
                StoreError::Remote {
                    url: base.to_path_buf(),
                    source,
                }
            })?;
            let s = ModelStore {
                base: mirror.local().to_path_buf(),
                state: RwLock::default(),
                refreshing: Mutex::new(()),
                quiet,
                runtime,
                remote: Some(Mutex::new(mirror)),
                pin,
                loads: AtomicU64::new(0),
                load_failures: AtomicU64::new(0),
            };
            s.refresh();
            return Ok(s);
        }
        if !base.is_dir() {
            return Err(StoreError::NoBase(base.to_path_buf()));
        }
        if base.join(signature::SIGNATURE_FILE).exists() {
            return Err(StoreError::VersionDir(base.to_path_buf()));
        }
        if let Some(hint) = signature::model_dir_hint(base) {
            return Err(StoreError::ModelDir {
                dir: base.to_path_buf(),
                hint,
            });
        }
        let s = ModelStore {
            base: base.to_path_buf(),
            state: RwLock::default(),
            refreshing: Mutex::new(()),
            quiet,
            runtime,
            remote: None,
            pin,
            loads: AtomicU64::new(0),
            load_failures: AtomicU64::new(0),
        };
        s.refresh();
        Ok(s)
    }

    /// Versions loaded and loads that failed since the store opened.
    pub fn load_counts(&self) -> (u64, u64) {
        (
            self.loads.load(Ordering::Relaxed),
            self.load_failures.load(Ordering::Relaxed),
        )
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The version being served.
    pub fn current(&self) -> Option<Arc<Predictor>> {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .current
            .clone()
    }

    /// The predictor for a request: the current one, or a specific version when it is the
    /// one being served (only the newest version is kept loaded, as TF Serving's default
    /// "latest" version policy).
    pub fn get(&self, version: Option<u64>) -> Option<Arc<Predictor>> {
        let cur = self.current()?;
        match version {
            None => Some(cur),
            Some(v) if cur.version() == Some(v) => Some(cur),
            Some(_) => None,
        }
    }

    /// Status of every known version, newest first: the served one and the ones that failed.
    pub fn status(&self) -> Vec<VersionStatus> {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<VersionStatus> = st
            .broken
            .iter()
            .map(|(v, b)| VersionStatus {
                version: *v,
                state: "END",
                error_code: "UNKNOWN",
                error_message: b.error.clone(),
            })
            .collect();
        if let Some(v) = st.current.as_ref().and_then(|c| c.version()) {
            out.push(VersionStatus {
                version: v,
                state: "AVAILABLE",
                error_code: "OK",
                error_message: String::new(),
            });
        }
        out.sort_by_key(|s| std::cmp::Reverse(s.version));
        out
    }

    /// Runs a loaded version's warm-up requests ([`warmup`]) before it may serve.
    fn warm_up(&self, p: Predictor) -> Result<Predictor, String> {
        match warmup::run(&p)? {
            Some(w) => self.log(&format!(
                "warmed up version {} with {} request(s) in {:.1} ms",
                p.version().unwrap_or(0),
                w.records,
                w.took.as_secs_f64() * 1e3
            )),
            None => self.log(&format!(
                "version {} has no warm-up requests ({}); its first request runs cold",
                p.version().unwrap_or(0),
                warmup::path(&p.info().dir).display()
            )),
        }
        Ok(p)
    }

    fn log(&self, msg: &str) {
        if self.quiet {
            return;
        }
        match msg.strip_prefix("warning: ") {
            Some(m) => tracing::warn!("{m}"),
            None => tracing::info!("{msg}"),
        }
    }

    /// Looks at the base path once: loads a version newer than the current one (newest
    /// first, skipping versions that failed with unchanged files). When the current version's
    /// folder disappeared, falls back to the newest loadable remaining one.
    pub fn refresh(&self) -> RefreshReport {
        let _guard = self.refreshing.lock().unwrap_or_else(|e| e.into_inner());
        let mut report = RefreshReport::default();
        if let Some(m) = &self.remote {
            let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = m.pull() {
                // Keep serving what is here; the next poll tries again.
                self.log(&format!(
                    "warning: cannot list {}: {e}",
                    m.remote().display()
                ));
            }
        }
        let versions = match list_versions(&self.base) {
            Ok(mut v) => {
                if let Some(p) = self.pin {
                    v.retain(|(n, _)| *n == p);
                }
                v
            }
            Err(e) => {
                self.log(&format!(
                    "warning: cannot list {}: {e}",
                    self.base.display()
                ));
                return report;
            }
        };
        let (cur_v, broken) = {
            let st = self.state.read().unwrap_or_else(|e| e.into_inner());
            (
                st.current.as_ref().and_then(|c| c.version()),
                st.broken.clone(),
            )
        };
        let cur_present = cur_v.is_some_and(|c| versions.iter().any(|(v, _)| *v == c));
        let mut new_broken = BTreeMap::new();
        let mut loaded = None;
        for (v, dir) in versions.iter().rev() {
            if cur_present && cur_v.is_some_and(|c| *v <= c) {
                break;
            }
            let fp = fingerprint(dir);
            if let Some(b) = broken.get(v).filter(|b| b.fingerprint == fp) {
                new_broken.insert(*v, b.clone());
                continue;
            }
            match Predictor::load_with(dir, &self.runtime)
                .map_err(|e| e.to_string())
                .and_then(|p| self.warm_up(p))
            {
                Ok(p) => {
                    loaded = Some(Arc::new(p));
                    report.loaded = Some(*v);
                    self.loads.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(error) => {
                    let still = match cur_v {
                        Some(c) => format!("; still serving version {c}"),
                        None => String::new(),
                    };
                    self.log(&format!(
                        "warning: version {v} of {} failed to load, skipped: {error}{still}",
                        self.base.display()
                    ));
                    report.failed.push((*v, error.clone()));
                    self.load_failures.fetch_add(1, Ordering::Relaxed);
                    new_broken.insert(
                        *v,
                        Broken {
                            fingerprint: fp,
                            error,
                        },
                    );
                }
            }
        }
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = loaded {
            self.log(&format!(
                "serving version {} from {}",
                p.version().unwrap_or(0),
                p.info().dir.display()
            ));
            st.current = Some(p);
        } else if !cur_present && cur_v.is_some() {
            self.log(&format!(
                "warning: the folder of version {} is gone and no other version loads; still serving it from memory",
                cur_v.unwrap_or(0)
            ));
        }
        // Versions below the served one are not interesting once a newer one serves.
        let served = st.current.as_ref().and_then(|c| c.version());
        new_broken.retain(|v, _| served.is_none_or(|s| *v > s));
        st.broken = new_broken;
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    #[test]
    fn newest_loadable_version_is_served() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        testing::write_demo_export(base, 1, 8).unwrap();
        let store = ModelStore::open(base, true).unwrap();
        assert_eq!(store.current().unwrap().version(), Some(1));
        assert_eq!(store.refresh(), RefreshReport::default());

        // A broken newer version is skipped, the current one keeps serving.
        let d3 = testing::write_demo_export(base, 3, 8).unwrap();
        std::fs::write(d3.join("model.onnx"), b"garbage").unwrap();
        let r = store.refresh();
        assert_eq!(r.loaded, None);
        assert_eq!(r.failed.len(), 1);
        assert_eq!(store.current().unwrap().version(), Some(1));
        let st = store.status();
        assert_eq!((st[0].version, st[0].state), (3, "END"));
        assert_eq!((st[1].version, st[1].state), (1, "AVAILABLE"));
        // Not retried while its files are unchanged.
        assert!(store.refresh().failed.is_empty());

        // A valid version 2 (older than the broken 3, newer than 1) is taken.
        testing::write_demo_export(base, 2, 8).unwrap();
        assert_eq!(store.refresh().loaded, Some(2));
        assert!(store.get(Some(1)).is_none());
        assert!(store.get(Some(2)).is_some());

        // Version 3 repaired: picked up (its files changed).
        std::fs::remove_dir_all(&d3).unwrap();
        testing::write_demo_export(base, 3, 8).unwrap();
        assert_eq!(store.refresh().loaded, Some(3));
        assert_eq!(store.status().len(), 1);

        // Current folder deleted: fall back to the newest remaining one.
        std::fs::remove_dir_all(base.join("3")).unwrap();
        assert_eq!(store.refresh().loaded, Some(2));
    }

    #[test]
    fn missing_base_is_an_error() {
        let err = ModelStore::open(Path::new("/nonexistent/quickdraw"), true).unwrap_err();
        assert!(err.to_string().contains("not a directory"));
        let tmp = tempfile::tempdir().unwrap();
        let dir = testing::write_demo_export(tmp.path(), 1, 8).unwrap();
        let err = ModelStore::open(&dir, true).unwrap_err();
        assert!(err.to_string().contains("pass its parent"), "{err}");
    }
}
