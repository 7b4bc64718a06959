//! `convert --worker I/N` and `convert --finalize`: the conversion split over machines.
//!
//! Every worker plans the same inputs, so all agree on the class list (label order) and on who
//! converts what: whole classes, dealt by input size (largest first, each to the least loaded
//! worker; ties by label and worker index), so the split of each class's drawings is exactly the
//! single-process one. Worker `I` of `N` writes its shards under the common output directory
//! with globally unique names (`train-{I*S+k}-of-{N*S}` for `S` shards per split), then its
//! rejects and, last, its partial manifest in `_workers/IIIII-of-NNNNN/`. Re-running a worker
//! rewrites the same files. [`finalize`] checks that all `N` finished and agree, and only then
//! writes `labels.txt`, `rejects.jsonl` and, last, `manifest.json`: the dataset is the union of
//! the workers' examples, the same set (key_id, split, pixels) as one process would write.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ConvertError, io_err, is_shard_name};
use crate::manifest::{
    ClassCounts, DatasetManifest, LABELS_FILE, MANIFEST_FILE, REJECTS_FILE, labels_text,
};
use crate::storage;

/// The directory of the workers' partial outputs inside a dataset directory.
pub const WORKERS_DIR: &str = "_workers";

/// Which part of a split conversion this process does: worker `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSlot {
    pub index: usize,
    pub count: usize,
}

impl WorkerSlot {
    /// Parses `I/N` (0 <= I < N).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected I/N, e.g. 0/4"))?;
        let index: usize = i
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: I is not a number"))?;
        let count: usize = n
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: N is not a number"))?;
        Self::new(index, count)
    }

    pub fn new(index: usize, count: usize) -> Result<Self, String> {
        if count == 0 {
            return Err("the number of workers must be at least 1".into());
        }
        if index >= count {
            return Err(format!(
                "worker index {index} is not below the worker count {count}"
            ));
        }
        Ok(WorkerSlot { index, count })
    }

    /// `00003-of-00004`: how this worker's outputs are named.
    pub fn name(&self) -> String {
        format!("{:05}-of-{:05}", self.index, self.count)
    }

    /// Parses [`WorkerSlot::name`]'s form back.
    pub fn from_name(name: &str) -> Option<Self> {
        let (i, n) = name.split_once("-of-")?;
        Self::new(i.parse().ok()?, n.parse().ok()?).ok()
    }

    /// `_workers/00003-of-00004`, relative to the dataset directory.
    pub fn dir_name(&self) -> String {
        format!("{WORKERS_DIR}/{}", self.name())
    }

    /// The first global shard index of this worker and the total shard count, for `shards`
    /// shards per split per worker.
    pub fn shard_range(&self, shards: usize) -> (usize, usize) {
        (self.index * shards, self.count * shards)
    }
}

/// The worker of each label: classes (`bytes`: the size of their input files, in label order)
/// dealt largest first to the least loaded worker.
pub fn assign(bytes: &[u64], count: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..bytes.len()).collect();
    order.sort_by(|&a, &b| bytes[b].cmp(&bytes[a]).then(a.cmp(&b)));
    let mut load = vec![0u64; count];
    let mut owner = vec![0usize; bytes.len()];
    for label in order {
        let w = (0..count)
            .min_by_key(|&w| (load[w], w))
            .expect("count >= 1");
        owner[label] = w;
        load[w] += bytes[label];
    }
    owner
}

/// Why the parts of a split job are not a complete set.
#[derive(Debug)]
pub enum PartsError {
    /// Listing them failed.
    Io(std::io::Error),
    NoParts,
    /// Parts of runs with different worker counts.
    MixedCounts(Vec<usize>),
    /// These workers of `count` have no part.
    Missing {
        count: usize,
        missing: Vec<usize>,
    },
}

/// The worker count N of the parts under `dir` named `IIIII-of-NNNNN{suffix}` (see
/// [`WorkerSlot::name`]), once every worker 0..N has one. Used by `convert --finalize` and
/// `evaluate --merge`.
pub fn finished_count(dir: &Path, suffix: &str) -> Result<usize, PartsError> {
    let listed = match storage::list(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(PartsError::Io(e)),
    };
    let mut found: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for (rel, _) in &listed {
        if let Some(w) = rel.strip_suffix(suffix).and_then(WorkerSlot::from_name) {
            found.entry(w.count).or_default().insert(w.index);
        }
    }
    let count = match found.len() {
        0 => return Err(PartsError::NoParts),
        1 => *found.keys().next().expect("one"),
        _ => return Err(PartsError::MixedCounts(found.keys().copied().collect())),
    };
    let missing: Vec<usize> = (0..count).filter(|i| !found[&count].contains(i)).collect();
    if !missing.is_empty() {
        return Err(PartsError::Missing { count, missing });
    }
    Ok(count)
}

/// `1, 2`: worker indices as a message lists them.
pub fn join(indices: &[usize]) -> String {
    indices
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A worker's partial manifest: its own classes' counts, inputs and shards, in the dataset
/// manifest's format, plus who wrote it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerManifest {
    pub worker: WorkerSlot,
    /// The classes this worker converted (label order).
    pub owned: Vec<String>,
    pub manifest: DatasetManifest,
}

/// Merges the workers' partial manifests under `out` (a directory or URL) into the dataset's
/// `manifest.json`, after checking that every worker finished, that they ran the same
/// configuration on the same class list, that each class was converted exactly once, and that
/// every listed shard is there with its listed size. Shard-named files no worker lists (left by
/// an earlier run with other counts) are removed.
pub fn finalize(out: &Path) -> Result<DatasetManifest, ConvertError> {
    let parts = read_parts(out)?;
    let first = &parts[0].manifest;
    let mut owners: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &parts {
        let m = &p.manifest;
        let same = m.classes == first.classes
            && m.features == first.features
            && m.seed == first.seed
            && m.split == first.split
            && m.include_unrecognized == first.include_unrecognized;
        if !same {
            return Err(ConvertError::Workers(format!(
                "worker {} of {} ran another configuration than worker 0 (classes, features, seed, split or --include-unrecognized differ): re-run it with the same flags",
                p.worker.index, p.worker.count
            )));
        }
        for c in &p.owned {
            if let Some(other) = owners.insert(c, p.worker.index) {
                return Err(ConvertError::Workers(format!(
                    "class {c:?} was converted by workers {other} and {}",
                    p.worker.index
                )));
            }
        }
    }
    let missing: Vec<&String> = first
        .classes
        .iter()
        .filter(|c| !owners.contains_key(c.as_str()))
        .collect();
    if !missing.is_empty() {
        return Err(ConvertError::Workers(format!(
            "no worker converted the classes {missing:?}"
        )));
    }
    let merged = merge(&parts);
    check_shards(out, &merged)?;
    remove_unlisted_shards(out, &merged)?;
    write_rejects(out, &parts)?;
    let labels = out.join(LABELS_FILE);
    storage::write(&labels, labels_text(&merged.classes).as_bytes()).map_err(io_err(&labels))?;
    let path = out.join(MANIFEST_FILE);
    storage::write(&path, merged.to_json().as_bytes()).map_err(io_err(&path))?;
    Ok(merged)
}

/// Every worker's partial manifest, in worker order; names each missing worker.
fn read_parts(out: &Path) -> Result<Vec<WorkerManifest>, ConvertError> {
    let dir = out.join(WORKERS_DIR);
    let suffix = format!("/{MANIFEST_FILE}");
    let count = match finished_count(&dir, &suffix) {
        Ok(n) => n,
        Err(PartsError::Io(e)) => return Err(io_err(&dir)(e)),
        Err(PartsError::NoParts) => {
            return Err(ConvertError::Workers(format!(
                "{}: no worker has finished (no {}/IIIII-of-NNNNN/{MANIFEST_FILE}); run `quickdraw convert --worker I/N` first",
                out.display(),
                dir.display()
            )));
        }
        Err(PartsError::MixedCounts(counts)) => {
            return Err(ConvertError::Workers(format!(
                "{} holds the outputs of runs with different worker counts ({counts:?}): remove the directories of the old run",
                dir.display(),
            )));
        }
        Err(PartsError::Missing { count, missing }) => {
            let first = WorkerSlot {
                index: missing[0],
                count,
            };
            return Err(ConvertError::Workers(format!(
                "{} of {count} workers have not finished: worker {} (no {}/{}/{MANIFEST_FILE}); re-run them with --worker I/{count}",
                missing.len(),
                join(&missing),
                dir.display(),
                first.name()
            )));
        }
    };
    let mut parts = Vec::with_capacity(count);
    for index in 0..count {
        let slot = WorkerSlot { index, count };
        let path = out.join(slot.dir_name()).join(MANIFEST_FILE);
        let text = storage::read_to_string(&path).map_err(io_err(&path))?;
        let part: WorkerManifest = serde_json::from_str(&text).map_err(|e| {
            ConvertError::Workers(format!("{}: not a worker manifest: {e}", path.display()))
        })?;
        if part.worker != slot {
            return Err(ConvertError::Workers(format!(
                "{}: written by worker {}/{}, not {index}/{count}",
                path.display(),
                part.worker.index,
                part.worker.count
            )));
        }
        parts.push(part);
    }
    Ok(parts)
}

/// The dataset manifest of all parts: counts added, inputs in label order, shards by name.
fn merge(parts: &[WorkerManifest]) -> DatasetManifest {
    let mut m = parts[0].manifest.clone();
    m.per_class = BTreeMap::new();
    m.inputs.clear();
    m.shards = BTreeMap::new();
    m.totals = ClassCounts::default();
    m.warnings.clear();
    for p in parts {
        let pm = &p.manifest;
        for (c, counts) in &pm.per_class {
            m.per_class.insert(c.clone(), counts.clone());
            m.totals.add(counts);
        }
        m.inputs.extend(pm.inputs.iter().cloned());
        for (split, files) in &pm.shards {
            m.shards
                .entry(split.clone())
                .or_default()
                .extend(files.iter().cloned());
        }
        for w in &pm.warnings {
            if !m.warnings.contains(w) {
                m.warnings.push(w.clone());
            }
        }
    }
    let label = |class: &str| {
        m.classes
            .iter()
            .position(|c| c == class)
            .unwrap_or(usize::MAX)
    };
    let mut inputs = std::mem::take(&mut m.inputs);
    inputs.sort_by(|a, b| {
        label(&a.class)
            .cmp(&label(&b.class))
            .then(a.path.cmp(&b.path))
    });
    m.inputs = inputs;
    for files in m.shards.values_mut() {
        files.sort_by(|a, b| a.file.cmp(&b.file));
    }
    let examples: u64 = m.shards.values().flatten().map(|f| f.examples).sum();
    let bytes: u64 = m.shards.values().flatten().map(|f| f.bytes).sum();
    m.bytes_per_example = if examples == 0 {
        0.0
    } else {
        bytes as f64 / examples as f64
    };
    m
}

fn check_shards(out: &Path, m: &DatasetManifest) -> Result<(), ConvertError> {
    for f in m.shards.values().flatten() {
        let p = out.join(&f.file);
        match storage::len(&p) {
            Ok(n) if n == f.bytes => {}
            Ok(n) => {
                return Err(ConvertError::Workers(format!(
                    "{}: {n} bytes, but its worker listed {} bytes (overwritten by another run?)",
                    p.display(),
                    f.bytes
                )));
            }
            Err(e) => return Err(io_err(&p)(e)),
        }
    }
    Ok(())
}

fn remove_unlisted_shards(out: &Path, m: &DatasetManifest) -> Result<(), ConvertError> {
    let listed: BTreeSet<&str> = m
        .shards
        .values()
        .flatten()
        .map(|f| f.file.as_str())
        .collect();
    for (rel, _) in storage::list(out).map_err(io_err(out))? {
        if !rel.contains('/') && is_shard_name(&rel) && !listed.contains(rel.as_str()) {
            let p = out.join(&rel);
            storage::remove(&p).map_err(io_err(&p))?;
        }
    }
    Ok(())
}

/// `rejects.jsonl`: the workers' logs one after the other, in worker order.
fn write_rejects(out: &Path, parts: &[WorkerManifest]) -> Result<(), ConvertError> {
    let path = out.join(REJECTS_FILE);
    let mut w = storage::create(&path).map_err(io_err(&path))?;
    for p in parts {
        let src = out.join(p.worker.dir_name()).join(REJECTS_FILE);
        let bytes = storage::read(&src).map_err(io_err(&src))?;
        w.write_all(&bytes).map_err(io_err(&path))?;
    }
    w.finish().map_err(io_err(&path))
}

/// Where a worker's partial outputs go, given the dataset directory.
pub fn worker_dir(out: &Path, slot: &WorkerSlot) -> PathBuf {
    out.join(slot.dir_name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_parse_and_name_their_shards() {
        let s = WorkerSlot::parse("3/4").unwrap();
        assert_eq!(s, WorkerSlot { index: 3, count: 4 });
        assert_eq!(s.dir_name(), "_workers/00003-of-00004");
        assert_eq!(s.shard_range(2), (6, 8));
        assert!(WorkerSlot::parse("4/4").is_err());
        assert!(WorkerSlot::parse("0/0").is_err());
        assert!(WorkerSlot::parse("1").is_err());
        assert!(WorkerSlot::parse("a/2").is_err());
    }

    #[test]
    fn classes_are_dealt_largest_first_to_the_least_loaded() {
        // 10, 9 -> w0, w1; 5 -> w1 (9 < 10); 4 -> w0 (10 < 14); 1 -> w0 (14 = 14, lower index).
        assert_eq!(assign(&[5, 10, 1, 9, 4], 2), [1, 0, 0, 1, 0]);
        assert_eq!(assign(&[3, 3, 3], 1), [0, 0, 0]);
        // More workers than classes: some convert nothing.
        assert_eq!(assign(&[1, 2], 4), [1, 0]);
    }
}
