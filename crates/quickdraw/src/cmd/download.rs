//! `quickdraw download`: fetches QuickDraw class files over HTTP(S) (Google's bucket or a mirror),
//! resuming interrupted downloads with `Range` requests, verifying every file and retrying
//! transient failures, into a local folder or an object-store prefix (`--dest s3://...`).
//!
//! A file is written as `<dest>/<file>.part` and renamed to `<dest>/<file>` only once its size
//! matches what the server announced and its content passes a format check (NDJSON: ends with a
//! newline and the last line is a QuickDraw record; `.npy`: size matches the header; `.bin`:
//! the last record is whole). A file already under its final name that passes the same check is
//! skipped without any request.
//!
//! To an object store, each file is downloaded the same way into a local staging folder
//! (`--staging`), verified, uploaded (published only when complete, see `storage::create`) and
//! removed locally; an object already there that passes the same check is skipped.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget};
use quickdraw_data::classes::parse_class_spec;
use quickdraw_data::ingest::{Format, UnitReader, ndjson};
use quickdraw_data::storage;
use quickdraw_data::validate::MAX_LINE_BYTES;

use super::{Ctx, error_chain};
use crate::progress;

/// Google's public bucket, served over HTTPS.
pub const DEFAULT_BASE_URL: &str = "https://storage.googleapis.com/quickdraw_dataset";

/// Bytes of one numpy_bitmap image row (28 x 28 uint8).
const NPY_ROW: u64 = 784;

/// Stop after this many attempts at one file even when every attempt made progress.
const MAX_ATTEMPTS: u32 = 1000;

/// Which of Google's per-class files to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RemoteFormat {
    /// `full/simplified/<class>.ndjson`: simplified strokes (what `convert` expects by default).
    Simplified,
    /// `full/raw/<class>.ndjson`: raw strokes with timing (large).
    Raw,
    /// `full/binary/<class>.bin`: simplified strokes in Google's binary format.
    Binary,
    /// `full/numpy_bitmap/<class>.npy`: 28x28 images only.
    #[value(name = "numpy_bitmap", alias = "numpy-bitmap")]
    NumpyBitmap,
}

impl RemoteFormat {
    /// Folder under the base URL.
    fn folder(self) -> &'static str {
        match self {
            RemoteFormat::Simplified => "full/simplified",
            RemoteFormat::Raw => "full/raw",
            RemoteFormat::Binary => "full/binary",
            RemoteFormat::NumpyBitmap => "full/numpy_bitmap",
        }
    }
    fn extension(self) -> &'static str {
        match self {
            RemoteFormat::Simplified | RemoteFormat::Raw => "ndjson",
            RemoteFormat::Binary => "bin",
            RemoteFormat::NumpyBitmap => "npy",
        }
    }
    fn format(self) -> Format {
        match self {
            RemoteFormat::Simplified | RemoteFormat::Raw => Format::Ndjson,
            RemoteFormat::Binary => Format::Binary,
            RemoteFormat::NumpyBitmap => Format::NumpyBitmap,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct DownloadArgs {
    /// Classes to fetch: `cat,dog`, a group (`pets`, `zoo`, `animals`) or `@file`.
    #[arg(long)]
    pub classes: String,
    /// Directory the files are written to (created if missing), or an object-store prefix
    /// (`s3://bucket/data`, `gs://...`, `az://...`); files are named `<class>.<ext>`.
    #[arg(long, default_value = "data")]
    pub dest: PathBuf,
    /// With an object-store `--dest`: the local folder files are downloaded into before they
    /// are uploaded (default: `~/.cache/quickdraw/download/<dest as a file name>`, so a rerun
    /// resumes an interrupted download). Needs room for `--jobs` files at a time.
    #[arg(long)]
    pub staging: Option<PathBuf>,
    /// Which files to fetch.
    #[arg(long, value_enum, default_value = "simplified")]
    pub format: RemoteFormat,
    /// Base URL of the dataset (a mirror of Google's bucket layout).
    #[arg(long, default_value = DEFAULT_BASE_URL)]
    pub base_url: String,
    /// Files downloaded at the same time.
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
    /// Retries per file after a transient failure (network error, cut connection, HTTP 5xx/429);
    /// an attempt that made progress resets the count.
    #[arg(long, default_value_t = 5)]
    pub retries: u32,
    /// Seconds to wait before the first retry; doubles with each retry (at most 60 s).
    #[arg(long, default_value_t = 2.0)]
    pub retry_wait: f64,
    /// Seconds without any data (connecting or reading) before an attempt is abandoned.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// Download again even when a complete file is already there.
    #[arg(long)]
    pub force: bool,
}

/// One file to fetch.
#[derive(Debug, Clone)]
struct Job {
    class: String,
    url: String,
    /// Final local path (with an object-store `--dest`: the staged file).
    path: PathBuf,
    /// The object it is uploaded to, with an object-store `--dest`.
    remote: Option<PathBuf>,
    /// `<path>.part` while downloading.
    part: PathBuf,
    format: Format,
}

#[derive(Debug)]
enum Done {
    Downloaded { bytes: u64 },
    Skipped { bytes: u64 },
}

/// Why an attempt failed: retrying can help, or it cannot.
enum Failure {
    Transient(anyhow::Error),
    Permanent(anyhow::Error),
}

/// Percent-encodes a path segment (RFC 3986: everything but unreserved characters).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The URL of a class file.
pub fn class_url(base_url: &str, format: RemoteFormat, class: &str) -> String {
    format!(
        "{}/{}/{}.{}",
        base_url.trim_end_matches('/'),
        format.folder(),
        encode_segment(class),
        format.extension()
    )
}

pub fn run(a: DownloadArgs, ctx: Ctx) -> anyhow::Result<()> {
    let classes = parse_class_spec(&a.classes)?;
    for c in &classes {
        anyhow::ensure!(
            !c.contains(['/', '\\']) && !c.starts_with('.') && !c.chars().any(char::is_control),
            "class name {c:?} cannot be used as a file name"
        );
    }
    anyhow::ensure!(a.jobs >= 1, "--jobs must be at least 1");
    anyhow::ensure!(
        a.retry_wait.is_finite() && a.retry_wait >= 0.0,
        "--retry-wait must be a number of seconds >= 0"
    );
    anyhow::ensure!(
        a.timeout.is_finite() && a.timeout > 0.0,
        "--timeout must be a number of seconds > 0"
    );
    let remote_dest = storage::is_url(&a.dest);
    let local_dir = match (&a.staging, remote_dest) {
        (_, false) => a.dest.clone(),
        (Some(s), true) => s.clone(),
        (None, true) => default_staging(&a.dest),
    };
    if remote_dest && a.staging.is_none() {
        create_private_dir(&local_dir)
    } else {
        fs::create_dir_all(&local_dir)
    }
    .with_context(|| format!("creating {}", local_dir.display()))?;

    let jobs: Vec<Job> = classes
        .iter()
        .map(|c| {
            let name = format!("{c}.{}", a.format.extension());
            let path = local_dir.join(&name);
            let part = part_path(&path);
            Job {
                class: c.clone(),
                url: class_url(&a.base_url, a.format, c),
                path,
                remote: remote_dest.then(|| a.dest.join(&name)),
                part,
                format: a.format.format(),
            }
        })
        .collect();

    let timeout = Duration::from_secs_f64(a.timeout);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(timeout))
        .timeout_recv_response(Some(timeout))
        .timeout_per_read(Some(timeout))
        .user_agent(format!("quickdraw/{}", env!("CARGO_PKG_VERSION")))
        .build()
        .into();

    let multi = if ctx.quiet {
        MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
    } else {
        MultiProgress::new()
    };
    let say = |msg: String| {
        if !ctx.quiet {
            multi.suspend(|| eprintln!("{msg}"));
        }
    };

    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<anyhow::Result<Done>>>> =
        Mutex::new((0..jobs.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..a.jobs.min(jobs.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    let r = fetch(job, &agent, &a, ctx, &multi, &say);
                    match &r {
                        Ok(Done::Downloaded { bytes }) => say(format!(
                            "{}: downloaded {} ({bytes} bytes)",
                            job.class,
                            job.shown().display()
                        )),
                        Ok(Done::Skipped { bytes }) => say(format!(
                            "{}: {} is already complete ({bytes} bytes), skipped",
                            job.class,
                            job.shown().display()
                        )),
                        // Failures are reported even under --quiet.
                        Err(e) => {
                            multi.suspend(|| eprintln!("{}: FAILED: {}", job.class, error_chain(e)))
                        }
                    }
                    if let Ok(mut v) = results.lock() {
                        v[i] = Some(r);
                    }
                }
            });
        }
    });
    let results = results
        .into_inner()
        .map_err(|_| anyhow!("a download thread panicked"))?;

    let (mut downloaded, mut skipped, mut failed) = (0usize, 0usize, Vec::new());
    for (job, r) in jobs.iter().zip(results) {
        match r {
            Some(Ok(Done::Downloaded { .. })) => downloaded += 1,
            Some(Ok(Done::Skipped { .. })) => skipped += 1,
            Some(Err(e)) => failed.push(format!("{} ({})", job.class, error_chain(&e))),
            None => failed.push(format!("{} (not attempted)", job.class)),
        }
    }
    if !ctx.quiet {
        eprintln!(
            "{downloaded} downloaded, {skipped} already complete, {} failed, in {}",
            failed.len(),
            a.dest.display()
        );
    }
    if !failed.is_empty() {
        anyhow::bail!(
            "{} of {} downloads failed: {}",
            failed.len(),
            jobs.len(),
            failed.join("; ")
        );
    }
    Ok(())
}

impl Job {
    /// Where the file ends up: the object, or the local file.
    fn shown(&self) -> &Path {
        self.remote.as_deref().unwrap_or(&self.path)
    }
}

/// The user's own cache folder for staged downloads: `$XDG_CACHE_HOME/quickdraw/download/`
/// (default `~/.cache/...`; the temp dir without a home), then the dest URL with every
/// character but `[A-Za-z0-9._-]` as `_` and a hash of the whole URL (so two URLs never share
/// a folder). Files staged there are uploaded as they are, so it is the user's, not `/tmp`'s.
fn default_staging(dest: &Path) -> PathBuf {
    let url = dest.to_string_lossy();
    let url = url.trim_end_matches('/');
    let name: String = url
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    // FNV-1a 64 (stable across runs and builds, unlike std's hasher).
    let hash = url.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    });
    cache
        .join("quickdraw/download")
        .join(format!("{name}-{:08x}", hash as u32))
}

/// Creates a folder (and its parents) readable by its owner only, as a cache should be.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

fn part_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".part");
    path.with_file_name(name)
}

fn file_len(p: &Path) -> Option<u64> {
    fs::metadata(p)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
}

/// Fetches one file into its local path (see [`fetch_local`]) and, with an object-store
/// destination, uploads it and removes the local copy; an object already there that passes the
/// format check is skipped (unless `--force`).
fn fetch(
    job: &Job,
    agent: &ureq::Agent,
    a: &DownloadArgs,
    ctx: Ctx,
    multi: &MultiProgress,
    say: &dyn Fn(String),
) -> anyhow::Result<Done> {
    let Some(remote) = &job.remote else {
        return fetch_local(job, agent, a, ctx, multi, say);
    };
    if !a.force && storage::is_file(remote) {
        match verify(remote, job.format, None) {
            Ok(()) => {
                let bytes = storage::len(remote).unwrap_or(0);
                return Ok(Done::Skipped { bytes });
            }
            Err(why) => say(format!(
                "{}: {} is incomplete ({why}); downloading it again",
                job.class,
                remote.display()
            )),
        }
    }
    // A staged file that is already complete (the upload of an earlier run failed) is uploaded
    // without downloading it again.
    fetch_local(job, agent, a, ctx, multi, say)?;
    let bytes = file_len(&job.path).unwrap_or(0);
    storage::copy_in(&job.path, remote)
        .with_context(|| format!("uploading {} to {}", job.path.display(), remote.display()))?;
    fs::remove_file(&job.path).with_context(|| format!("removing {}", job.path.display()))?;
    Ok(Done::Downloaded { bytes })
}

/// Fetches one file to its local path: skip when complete, otherwise download (resuming) with
/// retries, verify, rename.
fn fetch_local(
    job: &Job,
    agent: &ureq::Agent,
    a: &DownloadArgs,
    ctx: Ctx,
    multi: &MultiProgress,
    say: &dyn Fn(String),
) -> anyhow::Result<Done> {
    if a.force {
        // Start afresh; the existing file is replaced only once the new one is complete.
        match fs::remove_file(&job.part) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", job.part.display()));
            }
            _ => {}
        }
    } else if let Some(bytes) = file_len(&job.path) {
        match verify(&job.path, job.format, None) {
            Ok(()) => return Ok(Done::Skipped { bytes }),
            Err(why) => {
                if file_len(&job.part).is_some() {
                    say(format!(
                        "{}: {} is incomplete ({why}); continuing {}",
                        job.class,
                        job.path.display(),
                        job.part.display()
                    ));
                    fs::remove_file(&job.path)
                        .with_context(|| format!("removing {}", job.path.display()))?;
                } else {
                    say(format!(
                        "{}: {} is incomplete ({why}); resuming it",
                        job.class,
                        job.path.display()
                    ));
                    fs::rename(&job.path, &job.part).with_context(|| {
                        format!("renaming {} to {}", job.path.display(), job.part.display())
                    })?;
                }
            }
        }
    }

    let bar = multi.add(progress::bytes_bar(ctx.quiet, Some(0)));
    bar.set_message(job.class.clone());
    let result = download_with_retries(job, agent, a, &bar, say);
    bar.finish_and_clear();
    multi.remove(&bar);
    let total = result?;

    if let Err(why) = verify(&job.part, job.format, total) {
        let _ = fs::remove_file(&job.part);
        anyhow::bail!(
            "{}: downloaded file is incomplete or corrupt: {why} (removed {})",
            job.url,
            job.part.display()
        );
    }
    let bytes = file_len(&job.part).unwrap_or(0);
    fs::rename(&job.part, &job.path)
        .with_context(|| format!("renaming {} to {}", job.part.display(), job.path.display()))?;
    Ok(Done::Downloaded { bytes })
}

/// Runs attempts until the `.part` file holds every byte the server announced; returns the
/// announced size (`None` when the server never said).
fn download_with_retries(
    job: &Job,
    agent: &ureq::Agent,
    a: &DownloadArgs,
    bar: &ProgressBar,
    say: &dyn Fn(String),
) -> anyhow::Result<Option<u64>> {
    let mut failures = 0u32;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let before = file_len(&job.part).unwrap_or(0);
        match attempt(job, agent, bar) {
            Ok(total) => return Ok(total),
            Err(Failure::Permanent(e)) => return Err(e),
            Err(Failure::Transient(e)) => {
                if file_len(&job.part).unwrap_or(0) > before {
                    failures = 0;
                }
                failures += 1;
                if failures > a.retries || attempts >= MAX_ATTEMPTS {
                    return Err(e.context(format!("giving up after {attempts} attempts")));
                }
                let wait = (a.retry_wait * 2f64.powi(failures as i32 - 1)).min(60.0);
                say(format!(
                    "{}: {}; retrying in {wait:.1} s ({failures}/{})",
                    job.class,
                    error_chain(&e),
                    a.retries
                ));
                std::thread::sleep(Duration::from_secs_f64(wait));
            }
        }
    }
}

fn header<'a>(resp: &'a ureq::http::Response<ureq::Body>, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// A parsed `Content-Range`: the byte range sent (`None` for `*`) and the full size (`None` for `*`).
type ContentRange = (Option<(u64, u64)>, Option<u64>);

/// Parses `Content-Range: bytes START-END/TOTAL` (or `bytes */TOTAL`).
fn parse_content_range(v: &str) -> Option<ContentRange> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    let range = match range.trim() {
        "*" => None,
        r => {
            let (s, e) = r.split_once('-')?;
            Some((s.trim().parse().ok()?, e.trim().parse().ok()?))
        }
    };
    Some((range, total))
}

/// One HTTP request: appends to the `.part` file (or restarts it). `Ok(total)` when the file
/// holds every announced byte.
fn attempt(job: &Job, agent: &ureq::Agent, bar: &ProgressBar) -> Result<Option<u64>, Failure> {
    let url = &job.url;
    let have = file_len(&job.part).unwrap_or(0);
    let mut req = agent.get(url).header("Accept-Encoding", "identity");
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(e @ (ureq::Error::BadUri(_) | ureq::Error::Http(_) | ureq::Error::InvalidProxyUrl)) => {
            return Err(Failure::Permanent(anyhow!("GET {url}: {e}")));
        }
        Err(e) => return Err(Failure::Transient(anyhow!("GET {url}: {e}"))),
    };
    let status = resp.status();
    let code = status.as_u16();
    let status_text = format!(
        "HTTP {code}{}",
        status
            .canonical_reason()
            .map(|r| format!(" {r}"))
            .unwrap_or_default()
    );
    let content_length: Option<u64> =
        header(&resp, "content-length").and_then(|v| v.trim().parse().ok());
    let content_range = header(&resp, "content-range").and_then(parse_content_range);

    // Where the body starts in the file, and the size of the whole file.
    let (offset, total) = match code {
        206 if have > 0 => match content_range {
            Some((Some((start, _)), total)) if start == have => (have, total),
            _ => {
                truncate(&job.part)?;
                return Err(Failure::Transient(anyhow!(
                    "GET {url}: server answered the resume at byte {have} with a different range ({}); restarting",
                    header(&resp, "content-range").unwrap_or("no Content-Range")
                )));
            }
        },
        200 => (0, content_length),
        416 if have > 0 => match content_range {
            // Everything was already there (a previous run stopped before renaming).
            Some((None, Some(total))) if total == have => {
                bar.set_length(total);
                bar.set_position(total);
                return Ok(Some(total));
            }
            _ => {
                truncate(&job.part)?;
                return Err(Failure::Transient(anyhow!(
                    "GET {url}: {status_text} for a resume at byte {have} (the remote file changed?); restarting"
                )));
            }
        },
        408 | 429 | 500..=599 => {
            return Err(Failure::Transient(anyhow!("GET {url}: {status_text}")));
        }
        _ => return Err(Failure::Permanent(anyhow!("GET {url}: {status_text}"))),
    };

    let mut file = if offset == 0 {
        File::create(&job.part)
    } else {
        OpenOptions::new().append(true).open(&job.part)
    }
    .map_err(|e| Failure::Permanent(anyhow!("writing {}: {e}", job.part.display())))?;
    if let Some(t) = total {
        bar.set_length(t);
    }
    bar.set_position(offset);

    let mut reader = resp.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = offset;
    let mut cause = None;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                file.write_all(&buf[..n]).map_err(|e| {
                    Failure::Permanent(anyhow!("writing {}: {e}", job.part.display()))
                })?;
                got += n as u64;
                bar.set_position(got);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                cause = Some(e);
                break;
            }
        }
    }
    file.flush()
        .and_then(|()| file.sync_data())
        .map_err(|e| Failure::Permanent(anyhow!("writing {}: {e}", job.part.display())))?;

    let of_total = total.map(|t| format!(" of {t}")).unwrap_or_default();
    let because = cause
        .as_ref()
        .map(|e| format!(" ({e})"))
        .unwrap_or_default();
    match total {
        Some(t) if got > t => {
            truncate(&job.part)?;
            Err(Failure::Transient(anyhow!(
                "GET {url}: received {got} bytes, more than the {t} announced; restarting"
            )))
        }
        Some(t) if got < t => Err(Failure::Transient(anyhow!(
            "GET {url}: incomplete download: received {got}{of_total} bytes{because}"
        ))),
        _ if cause.is_some() => Err(Failure::Transient(anyhow!(
            "GET {url}: incomplete download: received {got}{of_total} bytes{because}"
        ))),
        _ => Ok(total),
    }
}

fn truncate(p: &Path) -> Result<(), Failure> {
    File::create(p)
        .map(drop)
        .map_err(|e| Failure::Permanent(anyhow!("truncating {}: {e}", p.display())))
}

/// Checks that a file or object is whole: size (when announced) and format. Reads only the
/// end of an NDJSON file and the header of a `.npy` one (a `.bin` is read through).
fn verify(path: &Path, format: Format, expected: Option<u64>) -> Result<(), String> {
    let len = storage::len(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(t) = expected.filter(|&t| t != len) {
        return Err(format!(
            "{} has {len} bytes, the server announced {t}",
            path.display()
        ));
    }
    if len == 0 {
        return Err(format!("{} is empty", path.display()));
    }
    match format {
        Format::Ndjson => verify_ndjson(path, len),
        Format::NumpyBitmap => verify_npy(path, len),
        Format::Binary => verify_binary(path),
    }
}

/// NDJSON: ends with a newline and the last line parses as a QuickDraw record.
fn verify_ndjson(path: &Path, len: u64) -> Result<(), String> {
    let err = |e: io::Error| format!("{}: {e}", path.display());
    let mut f = storage::open(path).map_err(err)?;
    let mut last = [0u8; 1];
    f.seek(SeekFrom::Start(len - 1))
        .and_then(|_| f.read_exact(&mut last))
        .map_err(err)?;
    if last[0] != b'\n' {
        return Err(format!(
            "{} does not end with a newline: its last line is cut short",
            path.display()
        ));
    }
    let mut window: u64 = 1 << 16;
    loop {
        let start = len.saturating_sub(window);
        let mut buf = vec![0u8; (len - start) as usize];
        f.seek(SeekFrom::Start(start))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(err)?;
        while buf.last().is_some_and(|b| b.is_ascii_whitespace()) {
            buf.pop();
        }
        if buf.is_empty() && start == 0 {
            return Err(format!("{} holds no records", path.display()));
        }
        let line_start = buf.iter().rposition(|&b| b == b'\n').map(|p| p + 1);
        if line_start.is_some() || start == 0 {
            let line = &buf[line_start.unwrap_or(0)..];
            return match ndjson::parse_line(line) {
                Ok(_) => Ok(()),
                Err(r) => Err(format!(
                    "the last line of {} is not a QuickDraw record ({r})",
                    path.display()
                )),
            };
        }
        if window > MAX_LINE_BYTES as u64 {
            return Err(format!(
                "the last line of {} is longer than {MAX_LINE_BYTES} bytes",
                path.display()
            ));
        }
        window *= 4;
    }
}

/// `.npy`: the file holds exactly the rows its header announces.
fn verify_npy(path: &Path, len: u64) -> Result<(), String> {
    let mut head = [0u8; 12];
    let mut f = storage::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let n = quickdraw_data::readfull::read_up_to(&mut f, &mut head)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if n < 10 || &head[..6] != b"\x93NUMPY" {
        return Err(format!("{} is not a .npy file", path.display()));
    }
    let header_bytes = match head[6] {
        1 => 10 + u16::from_le_bytes([head[8], head[9]]) as u64,
        2 | 3 if n == 12 => 12 + u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as u64,
        v => return Err(format!("{}: unsupported .npy version {v}", path.display())),
    };
    let reader =
        UnitReader::open_as(path, Format::NumpyBitmap, false, None).map_err(|e| e.to_string())?;
    let rows = reader.announced_records().unwrap_or(0);
    let want = header_bytes + rows * NPY_ROW;
    if len != want {
        return Err(format!(
            "{} has {len} bytes but its header announces {rows} images ({want} bytes)",
            path.display()
        ));
    }
    Ok(())
}

/// `.bin`: every record, the last included, is whole.
fn verify_binary(path: &Path) -> Result<(), String> {
    let mut r =
        UnitReader::open_as(path, Format::Binary, false, None).map_err(|e| e.to_string())?;
    while let Some(u) = r.next_unit().map_err(|e| e.to_string())? {
        if u.truncated {
            return Err(format!(
                "record {} of {} is cut short",
                u.index,
                path.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_percent_encoded() {
        assert_eq!(
            class_url("http://h/q/", RemoteFormat::Simplified, "sea turtle"),
            "http://h/q/full/simplified/sea%20turtle.ndjson"
        );
        assert_eq!(
            class_url("http://h", RemoteFormat::NumpyBitmap, "cat"),
            "http://h/full/numpy_bitmap/cat.npy"
        );
        assert_eq!(
            class_url("http://h", RemoteFormat::Binary, "The Eiffel Tower"),
            "http://h/full/binary/The%20Eiffel%20Tower.bin"
        );
        assert_eq!(encode_segment("a&b/é"), "a%26b%2F%C3%A9");
    }

    #[test]
    fn content_ranges() {
        assert_eq!(
            parse_content_range("bytes 10-99/100"),
            Some((Some((10, 99)), Some(100)))
        );
        assert_eq!(parse_content_range("bytes */100"), Some((None, Some(100))));
        assert_eq!(
            parse_content_range("bytes 0-9/*"),
            Some((Some((0, 9)), None))
        );
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }
}
