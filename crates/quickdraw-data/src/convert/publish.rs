//! `convert --output s3://...` (any object-store URL): the run writes into a local staging
//! directory with the same code as a local run, then uploads what it wrote, the file that makes
//! it visible (`manifest.json`, or a worker's partial manifest) last. The local disk holds one
//! run's output (a worker's share with `--worker`) for the time of the upload. The output (a
//! worker's folder) is locked by its `.quickdraw.lock` object for the run ([`RemoteLock`]).

use std::collections::BTreeSet;
use std::path::Path;

use super::{ConvertConfig, ConvertError, ConvertReport, Plan, Progress, ShardOwner, io_err};
use crate::lock::RemoteLock;
use crate::manifest::{LABELS_FILE, MANIFEST_FILE, REJECTS_FILE};
use crate::storage;

pub(super) fn run_to_store(
    cfg: &ConvertConfig,
    plan: &Plan,
    progress: &Progress,
) -> Result<ConvertReport, ConvertError> {
    let dest = &cfg.output;
    // One writer per output (per worker of it), across machines, as locally.
    // A worker waits out a crashed predecessor's lock (its job controller restarts it at once).
    let said = std::sync::Mutex::new(Vec::new());
    let lock = match &cfg.worker {
        None => RemoteLock::acquire(dest, "output directory")?,
        Some(w) => {
            let dir = dest.join(w.dir_name());
            RemoteLock::acquire_waiting(&dir, "output directory", &|m| {
                said.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(m.to_string())
            })?
        }
    };
    let mut said = said.into_inner().unwrap_or_else(|e| e.into_inner());
    said.extend(lock.took_over().map(str::to_string));
    let tmp = std::env::temp_dir();
    let staging = tempfile::Builder::new()
        .prefix("quickdraw-convert-")
        .tempdir_in(&tmp)
        .map_err(io_err(&tmp))?;
    let mut local = cfg.clone();
    local.output = staging.path().to_path_buf();
    let mut report = super::run_local(&local, plan, progress)?;
    let upload = |rel: &str| -> Result<(), ConvertError> {
        let to = dest.join(rel);
        storage::copy_in(&staging.path().join(rel), &to).map_err(io_err(&to))
    };
    // The dataset at `dest` is incomplete from here until its manifest is written again.
    let manifest = dest.join(MANIFEST_FILE);
    storage::remove(&manifest).map_err(io_err(&manifest))?;
    let written: BTreeSet<String> = report
        .manifest
        .shards
        .values()
        .flatten()
        .map(|s| s.file.clone())
        .collect();
    for name in &written {
        upload(name)?;
    }
    remove_stale_shards(dest, &ShardOwner::of(cfg), &written)?;
    let (rejects, last) = match &cfg.worker {
        None => {
            upload(LABELS_FILE)?;
            (REJECTS_FILE.to_string(), MANIFEST_FILE.to_string())
        }
        Some(w) => (
            format!("{}/{REJECTS_FILE}", w.dir_name()),
            format!("{}/{MANIFEST_FILE}", w.dir_name()),
        ),
    };
    upload(&rejects)?;
    // Published only while this run still holds the output's lock.
    if lock.lost() {
        let lock_path = lock.path().to_path_buf();
        return Err(io_err(&lock_path)(std::io::Error::other(
            "another run took this output's lock over (no heartbeat reached the store for the stale time); the manifest was not published",
        )));
    }
    upload(&last)?;
    report.rejects_path = dest.join(rejects);
    report.notices.extend(said);
    Ok(report)
}

/// Removes the shards this run owns by name but did not write (an earlier run's, with another
/// shard count).
fn remove_stale_shards(
    dest: &Path,
    owner: &ShardOwner,
    written: &BTreeSet<String>,
) -> Result<(), ConvertError> {
    for (rel, _) in storage::list(dest).map_err(io_err(dest))? {
        if !rel.contains('/') && owner.owns(&rel) && !written.contains(&rel) {
            let p = dest.join(&rel);
            storage::remove(&p).map_err(io_err(&p))?;
        }
    }
    Ok(())
}
