//! Training into an object-store model dir (`--model-dir s3://...`, `--job-dir gs://...`): the
//! run works in a local copy of the directory ([`storage::Mirror`]: downloaded first, so a
//! re-run resumes from the last uploaded checkpoint) and uploads what changed at every
//! checkpoint and at the end, each checkpoint's `state.json` last (a checkpoint without it is
//! not complete, remotely as locally). The directory is locked for the run by its
//! `.quickdraw.lock` object ([`RemoteLock`]), so two machines cannot train into it at once.

use std::path::Path;

use quickdraw_data::lock::RemoteLock;
use quickdraw_data::storage::Mirror;

use crate::error::{Result, TrainError};
use crate::metrics::MetricsReport;
use crate::modeldir::STATE_FILE;
use crate::train::{StepStats, TrainObserver, TrainRequest, TrainSummary};

/// [`crate::train`] for a model dir URL.
pub(crate) fn train_mirrored(
    req: &TrainRequest,
    obs: &mut dyn TrainObserver,
) -> Result<TrainSummary> {
    let url = &req.model_dir;
    // One writer per model directory, across machines: the lock object, before anything is read.
    let lock = RemoteLock::acquire(url, "model directory")?;
    if let Some(m) = lock.took_over() {
        obs.notice(m);
    }
    let mut mirror = Mirror::open(url, &[STATE_FILE]).map_err(TrainError::io(url))?;
    obs.notice(&format!(
        "model dir {}: training in the local copy {} (uploaded at every checkpoint and at the end)",
        url.display(),
        mirror.local().display()
    ));
    let mut local = req.clone();
    local.model_dir = mirror.local().to_path_buf();
    let mut up = Uploading {
        inner: obs,
        mirror: &mut mirror,
        lock: &lock,
        failed: None,
    };
    let result = crate::train::train(&local, &mut up);
    let failed = up.failed.take();
    // A run whose lock was taken over (it looked dead) must not overwrite the new holder's
    // files: nothing more is uploaded.
    if lock.lost() {
        result?;
        return Err(TrainError::io(url)(lost_lock(url)));
    }
    // Whatever happened, what was written locally goes up (an interrupted run's checkpoint).
    let pushed = mirror.push();
    let mut summary = result?;
    if let Err(e) = pushed {
        return Err(TrainError::io(url)(e));
    }
    if let Some(e) = failed {
        obs.notice(&format!(
            "an upload to {} failed during training ({e}); the final upload succeeded",
            url.display()
        ));
    }
    summary.model_dir = url.clone();
    Ok(summary)
}

fn lost_lock(url: &Path) -> std::io::Error {
    std::io::Error::other(format!(
        "another run took this model directory's lock over during training (no heartbeat reached {} for {} s: a paused machine or a broken connection); uploads stopped, so only that run writes here",
        url.display(),
        quickdraw_data::lock::remote_stale().as_secs()
    ))
}

/// Forwards to the caller's observer and uploads at each checkpoint.
struct Uploading<'a> {
    inner: &'a mut dyn TrainObserver,
    mirror: &'a mut Mirror,
    lock: &'a RemoteLock,
    /// The first upload error (training goes on; the final upload reports failure).
    failed: Option<std::io::Error>,
}

impl TrainObserver for Uploading<'_> {
    fn notice(&mut self, msg: &str) {
        self.inner.notice(msg)
    }
    fn start(&mut self, start_step: u64, total_steps: u64) {
        self.inner.start(start_step, total_steps)
    }
    fn step(&mut self, s: &StepStats) {
        self.inner.step(s)
    }
    fn eval_start(&mut self, step: u64) {
        self.inner.eval_start(step)
    }
    fn evaluated(&mut self, step: u64, r: &MetricsReport) {
        self.inner.evaluated(step, r)
    }
    fn checkpoint(&mut self, step: u64, path: &Path) {
        self.inner.checkpoint(step, path);
        if self.lock.lost() {
            return;
        }
        if let Err(e) = self.mirror.push() {
            self.inner.notice(&format!(
                "uploading checkpoint {step} to {} failed: {e} (training goes on; retried at the next checkpoint)",
                self.mirror.remote().display()
            ));
            self.failed.get_or_insert(e);
        }
    }
}
