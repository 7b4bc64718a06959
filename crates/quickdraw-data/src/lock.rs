//! Exclusive directory locks: one writer per model directory or dataset output directory.
//!
//! The lock is an OS advisory lock (`flock` on Unix, through `std::fs::File::try_lock`) on a
//! `.quickdraw.lock` file inside the directory. The OS releases it when the process dies, so a
//! killed run never leaves a stale lock; the file itself stays and records the holder's pid and
//! command for the message a second run prints.
//!
//! A directory on an object store gets a [`RemoteLock`]: the `.quickdraw.lock` object, created
//! only if absent (the store's conditional create) and rewritten by its holder every
//! [`REMOTE_HEARTBEAT`] (compare-and-swap on its version). No store releases a lock for a dead
//! process, so a lock not rewritten for [`REMOTE_STALE`] (`QUICKDRAW_LOCK_STALE_SECS`) is taken
//! over, again by compare-and-swap, so two runs cannot both take it. Staleness compares the
//! store's modification time with this machine's clock: they must agree within the stale time
//! (NTP-synchronised machines do). A holder deletes the lock only while it is still its own
//! version, and a run that finds its lock taken over stops publishing ([`RemoteLock::lost`]).
//! A store without conditional writes (`http(s)://`) cannot be locked: the run goes on unlocked
//! and says so.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use crate::storage;

/// The lock file's name inside a locked directory.
pub const LOCK_FILE: &str = ".quickdraw.lock";

/// Why a directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{}: {what} is already in use by another quickdraw process ({holder}); wait for it to finish or stop it", dir.display())]
    Busy {
        dir: PathBuf,
        what: String,
        holder: String,
    },
    #[error("{}: cannot lock: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Held while a process writes into a directory; released on drop (or when the process ends).
#[derive(Debug)]
pub struct DirLock {
    file: File,
    path: PathBuf,
}

impl DirLock {
    /// Creates `dir` if needed and takes its exclusive lock without waiting. `what` names the
    /// directory's role in the error message ("model directory", "output directory").
    pub fn acquire(dir: &Path, what: &str) -> Result<DirLock, LockError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LockError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = holder_description(&text);
                return Err(LockError::Busy {
                    dir: dir.to_path_buf(),
                    what: what.to_string(),
                    holder,
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
        }
        let me = format!(
            "pid {}\n{}\n",
            std::process::id(),
            std::env::args().collect::<Vec<_>>().join(" ")
        );
        file.set_len(0).map_err(io(&path))?;
        file.seek(SeekFrom::Start(0)).map_err(io(&path))?;
        file.write_all(me.as_bytes()).map_err(io(&path))?;
        let _ = file.sync_data();
        Ok(DirLock { file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

/// How often the holder of a [`RemoteLock`] rewrites it.
pub const REMOTE_HEARTBEAT: Duration = Duration::from_secs(30);
/// A remote lock not rewritten for this long belongs to a run that died: the next run takes it.
pub const REMOTE_STALE: Duration = Duration::from_secs(120);

/// The stale time in effect: [`REMOTE_STALE`] or `QUICKDRAW_LOCK_STALE_SECS`.
pub fn remote_stale() -> Duration {
    std::env::var("QUICKDRAW_LOCK_STALE_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(REMOTE_STALE, Duration::from_secs_f64)
}

/// The exclusive lock of a directory on an object store (see the module docs); the lock object
/// is deleted on drop.
#[derive(Debug)]
pub struct RemoteLock {
    path: PathBuf,
    stop: Arc<(Mutex<bool>, Condvar)>,
    /// Set when the heartbeat found the lock replaced (taken over as stale).
    lost: Arc<AtomicBool>,
    /// Returns the lock's last version written by this run (`None` when lost).
    heartbeat: Option<std::thread::JoinHandle<Option<storage::Version>>>,
    took_over: Option<String>,
}

impl RemoteLock {
    /// Takes the lock of the object-store directory `dir` without waiting (see [`DirLock`]).
    pub fn acquire(dir: &Path, what: &str) -> Result<RemoteLock, LockError> {
        let stale = remote_stale();
        Self::acquire_with(dir, what, stale, REMOTE_HEARTBEAT.min(stale / 4))
    }

    /// [`RemoteLock::acquire`], waiting while the lock is held until it is released or goes
    /// stale (at most the stale time and a heartbeat). For runs a job controller restarts at
    /// once after a crash (a Kubernetes worker): the dead run's lock is taken over instead of
    /// failing every retry.
    pub fn acquire_waiting(
        dir: &Path,
        what: &str,
        waiting: &dyn Fn(&str),
    ) -> Result<RemoteLock, LockError> {
        let stale = remote_stale();
        let heartbeat = REMOTE_HEARTBEAT.min(stale / 4);
        let deadline = std::time::Instant::now() + stale + heartbeat;
        let mut said = false;
        loop {
            match Self::acquire_with(dir, what, stale, heartbeat) {
                Err(e @ LockError::Busy { .. }) if std::time::Instant::now() < deadline => {
                    if !said {
                        waiting(&format!("{e}: waiting until it is released or goes stale"));
                        said = true;
                    }
                    std::thread::sleep(heartbeat.min(Duration::from_secs(5)));
                }
                r => return r,
            }
        }
    }

    fn acquire_with(
        dir: &Path,
        what: &str,
        stale: Duration,
        heartbeat: Duration,
    ) -> Result<RemoteLock, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let me = holder_text();
        let mut took_over = None;
        let mut version = None;
        // Created, or found: a lock deleted between the two calls is tried again.
        for _ in 0..3 {
            match storage::create_new(&path, me.as_bytes()) {
                Ok(Some(v)) => {
                    version = Some(v);
                    break;
                }
                Ok(None) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                    return Ok(RemoteLock::unlocked(path, dir, what));
                }
                Err(e) => return Err(io(e)),
            }
            let held = match storage::read_versioned(&path) {
                Ok(h) => h,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(e)),
            };
            let holder = holder_description(&String::from_utf8_lossy(&held.bytes));
            let age = SystemTime::now()
                .duration_since(held.modified)
                .unwrap_or_default();
            let busy = || LockError::Busy {
                dir: dir.to_path_buf(),
                what: what.to_string(),
                holder: format!("{holder}; last heartbeat {} s ago", age.as_secs()),
            };
            if age < stale {
                return Err(busy());
            }
            match storage::replace_if(&path, me.as_bytes(), &held.version).map_err(io)? {
                Some(v) => {
                    took_over = Some(format!(
                        "{}: took over a stale lock ({holder}; no heartbeat for {} s)",
                        dir.display(),
                        age.as_secs()
                    ));
                    version = Some(v);
                    break;
                }
                // Another run took it over first.
                None => return Err(busy()),
            }
        }
        let Some(mut version) = version else {
            return Err(io(std::io::Error::other(
                "the lock object kept appearing and disappearing",
            )));
        };
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let lost = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, lost, path) = (stop.clone(), lost.clone(), path.clone());
            std::thread::spawn(move || {
                let (flag, cv) = &*stop;
                loop {
                    {
                        let stopped = flag.lock().unwrap_or_else(|e| e.into_inner());
                        let (stopped, _) = cv
                            .wait_timeout_while(stopped, heartbeat, |stop| !*stop)
                            .unwrap_or_else(|e| e.into_inner());
                        if *stopped {
                            return Some(version);
                        }
                    }
                    // A failed request is retried at the next beat; a changed lock is lost.
                    match storage::replace_if(&path, me.as_bytes(), &version) {
                        Ok(Some(v)) => version = v,
                        Ok(None) => {
                            lost.store(true, Ordering::Relaxed);
                            return None;
                        }
                        Err(_) => {}
                    }
                }
            })
        };
        Ok(RemoteLock {
            path,
            stop,
            lost,
            heartbeat: Some(thread),
            took_over,
        })
    }

    /// A lock that holds nothing, for a store without conditional writes.
    fn unlocked(path: PathBuf, dir: &Path, what: &str) -> RemoteLock {
        RemoteLock {
            path,
            stop: Arc::new((Mutex::new(false), Condvar::new())),
            lost: Arc::new(AtomicBool::new(false)),
            heartbeat: None,
            took_over: Some(format!(
                "{}: this store has no conditional writes, so the {what} is not locked against a second writer",
                dir.display()
            )),
        }
    }

    /// The lock object.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What was said when a stale lock was taken over (or could not be taken at all).
    pub fn took_over(&self) -> Option<&str> {
        self.took_over.as_deref()
    }

    /// True when another run replaced the lock (this one's heartbeat stopped for longer than
    /// the stale time).
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }
}

impl Drop for RemoteLock {
    fn drop(&mut self) {
        let (flag, cv) = &*self.stop;
        *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        let Some(t) = self.heartbeat.take() else {
            return;
        };
        // Deleted only while it is still this run's version (a run that took it over while
        // this one was paused keeps it). There is no conditional delete: a takeover between
        // the read and the delete is not excluded, only made unlikely.
        if let Ok(Some(mine)) = t.join() {
            match storage::read_versioned(&self.path) {
                Ok(now) if now.version == mine => {
                    let _ = storage::remove(&self.path);
                }
                _ => self.lost.store(true, Ordering::Relaxed),
            }
        }
    }
}

/// What a lock says of its holder: pid, command line, host.
fn holder_text() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty());
    format!(
        "pid {}{}\n{}\n",
        std::process::id(),
        host.map(|h| format!(" on {h}")).unwrap_or_default(),
        std::env::args().collect::<Vec<_>>().join(" ")
    )
}

/// "pid 123: quickdraw train ..." from the lock file's text.
fn holder_description(text: &str) -> String {
    let mut lines = text.lines();
    match (lines.next(), lines.next()) {
        (Some(pid), Some(cmd)) if pid.starts_with("pid ") => format!("{pid}: {cmd}"),
        (Some(pid), _) if pid.starts_with("pid ") => pid.to_string(),
        _ => "pid unknown".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_with_the_holders_pid_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path(), "model directory").unwrap();
        let err = DirLock::acquire(dir.path(), "model directory").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("model directory is already in use"), "{msg}");
        drop(first);
        DirLock::acquire(dir.path(), "model directory").expect("free after drop");
    }

    #[test]
    fn a_remote_lock_is_exclusive_deleted_on_drop_and_taken_over_when_stale() {
        let dir = Path::new("memory://locks/model");
        let long = Duration::from_secs(3600);
        let first = RemoteLock::acquire_with(dir, "model directory", long, long).unwrap();
        assert!(storage::is_file(first.path()));
        let err = RemoteLock::acquire_with(dir, "model directory", long, long).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("model directory is already in use"), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        assert!(!storage::is_file(&dir.join(LOCK_FILE)));

        // A lock not rewritten for the stale time (0 s here) is taken over; its old holder's
        // next heartbeat finds it changed, and its drop leaves the new holder's lock alone.
        let old = RemoteLock::acquire_with(dir, "model directory", long, Duration::from_millis(50))
            .unwrap();
        std::thread::sleep(Duration::from_millis(120));
        assert!(!old.lost(), "its own heartbeats keep the lock");
        // (A heartbeat landing between the read and the swap makes one try fail: try again.)
        let new = (0..20)
            .find_map(|_| {
                RemoteLock::acquire_with(dir, "model directory", Duration::ZERO, long).ok()
            })
            .expect("a stale lock is taken over");
        assert!(
            new.took_over().is_some_and(|m| m.contains("stale")),
            "{:?}",
            new.took_over()
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !old.lost() {
            assert!(
                std::time::Instant::now() < deadline,
                "the old holder never noticed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(old);
        assert!(storage::is_file(new.path()));
        drop(new);
        assert!(!storage::is_file(&dir.join(LOCK_FILE)));
    }

    #[test]
    fn holder_text_is_parsed() {
        assert_eq!(
            holder_description("pid 7\nquickdraw train\n"),
            "pid 7: quickdraw train"
        );
        assert_eq!(holder_description(""), "pid unknown");
    }
}
