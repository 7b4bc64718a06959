//! The model store: the version folders of one base path (TensorFlow Serving's layout), the
//! versions its version policy selects loaded and served (TF Serving's default: the newest
//! loadable one; `latest { num_versions }`, `all` and `specific` from a model config file), new
//! versions picked up and removed ones unloaded by [`ModelStore::refresh`] without a restart.
//! A version that fails to load is logged and skipped (and retried when its files change); the
//! versions already serving keep serving.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use quickdraw_data::signature::{self, list_versions};
use quickdraw_data::storage::{self, Mirror};

use crate::config::VersionPolicy;
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
    /// The newest version that started serving.
    pub loaded: Option<u64>,
    /// Versions that failed to load now (version, error).
    pub failed: Vec<(u64, String)>,
    /// Every version that started serving, newest first (`loaded` is the first).
    pub started: Vec<u64>,
    /// Versions no longer served (gone from the base path, or left out by the policy now).
    pub unloaded: Vec<u64>,
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
    /// The versions being served, by number.
    served: BTreeMap<u64, Arc<Predictor>>,
    broken: BTreeMap<u64, Broken>,
}

/// "version 3" or "versions 2, 3".
fn versions_text(v: &[u64]) -> String {
    let list: Vec<String> = v.iter().map(u64::to_string).collect();
    match list.len() {
        1 => format!("version {}", list[0]),
        _ => format!("versions {}", list.join(", ")),
    }
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
    /// Which versions are served.
    policy: VersionPolicy,
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
        let policy = match pin {
            Some(v) => VersionPolicy::Specific(vec![v]),
            None => VersionPolicy::Latest(1),
        };
        Self::open_policy(base, quiet, runtime, policy)
    }

    /// Opens a base path and loads the versions `policy` selects (those there yet).
    pub fn open_policy(
        base: &Path,
        quiet: bool,
        runtime: Runtime,
        policy: VersionPolicy,
    ) -> Result<ModelStore, StoreError> {
        let policy = match policy {
            VersionPolicy::Latest(n) => VersionPolicy::Latest(n.max(1)),
            p => p,
        };
        let store = |base: PathBuf, remote: Option<Mutex<Mirror>>| ModelStore {
            base,
            state: RwLock::default(),
            refreshing: Mutex::new(()),
            quiet,
            runtime,
            remote,
            policy,
            loads: AtomicU64::new(0),
            load_failures: AtomicU64::new(0),
        };
        if storage::is_url(base) {
            let mirror = Mirror::open(base, &[signature::SIGNATURE_FILE]).map_err(|source| {
                StoreError::Remote {
                    url: base.to_path_buf(),
                    source,
                }
            })?;
            let s = store(mirror.local().to_path_buf(), Some(Mutex::new(mirror)));
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
        let s = store(base.to_path_buf(), None);
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

    /// Which versions are served.
    pub fn policy(&self) -> &VersionPolicy {
        &self.policy
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest version being served: what a request without a version gets.
    pub fn current(&self) -> Option<Arc<Predictor>> {
        self.read().served.values().next_back().cloned()
    }

    /// The versions being served, newest first.
    pub fn served_versions(&self) -> Vec<u64> {
        self.read().served.keys().rev().copied().collect()
    }

    /// The predictor for a request: the newest served version, or the version asked for when
    /// it is served.
    pub fn get(&self, version: Option<u64>) -> Option<Arc<Predictor>> {
        let st = self.read();
        match version {
            None => st.served.values().next_back().cloned(),
            Some(v) => st.served.get(&v).cloned(),
        }
    }

    /// Status of every known version, newest first: the served ones and the ones that failed.
    pub fn status(&self) -> Vec<VersionStatus> {
        let st = self.read();
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
        out.extend(st.served.keys().map(|v| VersionStatus {
            version: *v,
            state: "AVAILABLE",
            error_code: "OK",
            error_message: String::new(),
        }));
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

    /// Looks at the base path once and serves what the policy selects: `latest { n }` the `n`
    /// newest loadable versions (newest first, skipping versions that failed with unchanged
    /// files, so a broken new version leaves the older one serving); `all` and `specific` every
    /// (selected) version there that loads. Versions no longer selected, or whose folder is
    /// gone, are unloaded, unless nothing else would serve: then they keep serving from memory.
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
                if let VersionPolicy::Specific(want) = &self.policy {
                    v.retain(|(n, _)| want.contains(n));
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
        let (served, broken) = {
            let st = self.read();
            (st.served.clone(), st.broken.clone())
        };
        let wanted = match self.policy {
            VersionPolicy::Latest(n) => n as usize,
            _ => usize::MAX,
        };
        let serving: Vec<u64> = served.keys().copied().collect();
        let mut keep = BTreeMap::new();
        let mut new_broken = BTreeMap::new();
        for (v, dir) in versions.iter().rev() {
            if keep.len() >= wanted {
                break;
            }
            if let Some(p) = served.get(v) {
                keep.insert(*v, p.clone());
                continue;
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
                    keep.insert(*v, Arc::new(p));
                    report.started.push(*v);
                    self.loads.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    let still = if serving.is_empty() {
                        String::new()
                    } else {
                        let mut s = serving.clone();
                        s.reverse();
                        format!("; still serving {}", versions_text(&s))
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
        report.loaded = report.started.first().copied();
        let mut gone: Vec<u64> = served
            .keys()
            .filter(|v| !keep.contains_key(v))
            .copied()
            .collect();
        if keep.is_empty() && !served.is_empty() {
            self.log(&format!(
                "warning: the folder of {} is gone and no other version loads; still serving it from memory",
                versions_text(&gone)
            ));
            keep = served;
            gone.clear();
        }
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        for v in &report.started {
            self.log(&format!(
                "serving version {v} from {}",
                keep[v].info().dir.display()
            ));
        }
        if !gone.is_empty() {
            self.log(&format!(
                "unloaded {} of {}",
                versions_text(&gone),
                self.base.display()
            ));
        }
        report.unloaded = gone;
        // With `latest`, failed versions below the oldest served one are not interesting once
        // enough newer ones serve.
        if let (VersionPolicy::Latest(_), Some(oldest)) = (&self.policy, keep.keys().next())
            && keep.len() >= wanted
        {
            new_broken.retain(|v, _| *v > *oldest);
        }
        st.served = keep;
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
    fn all_and_specific_policies_serve_every_selected_version() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        testing::write_demo_export(base, 1, 8).unwrap();
        testing::write_demo_export(base, 2, 8).unwrap();
        let all = ModelStore::open_policy(base, true, Runtime::Tract, VersionPolicy::All).unwrap();
        assert_eq!(all.served_versions(), vec![2, 1]);
        assert_eq!(all.current().unwrap().version(), Some(2));
        assert_eq!(all.get(Some(1)).unwrap().version(), Some(1));
        assert!(all.get(Some(3)).is_none());
        let st: Vec<_> = all.status().iter().map(|s| (s.version, s.state)).collect();
        assert_eq!(st, vec![(2, "AVAILABLE"), (1, "AVAILABLE")]);

        // A new version joins, a broken one is listed as END, a removed one is unloaded.
        testing::write_demo_export(base, 3, 8).unwrap();
        let d4 = testing::write_demo_export(base, 4, 8).unwrap();
        std::fs::write(d4.join("model.onnx"), b"garbage").unwrap();
        std::fs::remove_dir_all(base.join("1")).unwrap();
        let r = all.refresh();
        assert_eq!((r.loaded, r.started.clone()), (Some(3), vec![3]));
        assert_eq!(r.failed.len(), 1);
        assert_eq!(r.unloaded, vec![1]);
        assert_eq!(all.served_versions(), vec![3, 2]);
        let st: Vec<_> = all.status().iter().map(|s| (s.version, s.state)).collect();
        assert_eq!(st, vec![(4, "END"), (3, "AVAILABLE"), (2, "AVAILABLE")]);

        // specific: only the versions listed, whatever else is there; one appearing later
        // is loaded when it does.
        let spec = VersionPolicy::Specific(vec![2, 5]);
        let s = ModelStore::open_policy(base, true, Runtime::Tract, spec).unwrap();
        assert_eq!(s.served_versions(), vec![2]);
        testing::write_demo_export(base, 5, 8).unwrap();
        assert_eq!(s.refresh().started, vec![5]);
        assert_eq!(s.served_versions(), vec![5, 2]);
        assert!(s.get(Some(3)).is_none());
        assert_eq!(s.get(None).unwrap().version(), Some(5));

        // latest { num_versions: 2 }: the two newest loadable ones (4 is broken).
        let l =
            ModelStore::open_policy(base, true, Runtime::Tract, VersionPolicy::Latest(2)).unwrap();
        assert_eq!(l.served_versions(), vec![5, 3]);
        let st: Vec<_> = l.status().iter().map(|s| (s.version, s.state)).collect();
        assert_eq!(st, vec![(5, "AVAILABLE"), (4, "END"), (3, "AVAILABLE")]);
        testing::write_demo_export(base, 6, 8).unwrap();
        let r = l.refresh();
        assert_eq!((r.started.clone(), r.unloaded.clone()), (vec![6], vec![3]));
        assert_eq!(l.served_versions(), vec![6, 5]);

        // Every folder gone: what is served keeps serving from memory.
        for v in [2, 3, 4, 5, 6] {
            std::fs::remove_dir_all(base.join(v.to_string())).unwrap();
        }
        assert!(l.refresh().unloaded.is_empty());
        assert_eq!(l.served_versions(), vec![6, 5]);
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
