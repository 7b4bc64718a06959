//! Exclusive directory locks: one writer per model directory or dataset output directory.
//!
//! The lock is an OS advisory lock (`flock` on Unix, through `std::fs::File::try_lock`) on a
//! `.quickdraw.lock` file inside the directory. The OS releases it when the process dies, so a
//! killed run never leaves a stale lock; the file itself stays and records the holder's pid and
//! command for the message a second run prints.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

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
    fn holder_text_is_parsed() {
        assert_eq!(
            holder_description("pid 7\nquickdraw train\n"),
            "pid 7: quickdraw train"
        );
        assert_eq!(holder_description(""), "pid unknown");
    }
}
