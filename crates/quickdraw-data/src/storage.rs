//! `storage`: where bytes live. Local paths and object-store URLs (`s3://`, `gs://`, `az://`,
//! `abfs://`, `http(s)://`, and `memory://` for tests) behind one set of blocking calls, so every
//! stage reads and writes both the same way.
//!
//! A URL travels through the code as a [`Path`] holding its text (`s3://bucket/data/train-0`):
//! `join`, `parent` and `file_name` work on it as on a local path, and only this module looks
//! inside. The object stores are the Apache Arrow project's `object_store` crate; this module only
//! adds what a synchronous pipeline needs on top of it:
//! - [`open`]: a streaming reader that fetches fixed-size ranges ahead of the reader in parallel
//!   (bounded memory: [`READ_CHUNK`] x ([`READ_AHEAD`] + 1) per open object; never the whole
//!   object), and seeks;
//! - [`create`]: a writer that uploads in parts as it goes and publishes only on
//!   [`Writer::finish`] (an object store shows a multipart upload only once it is completed; a
//!   local file is written under a `.tmp` name and renamed); dropped unfinished, it aborts;
//! - [`glob`], [`list`], [`len`], [`read`], [`write`] (atomic), [`remove`], and [`Mirror`]
//!   for directories worked on locally and synced (model dirs, export bases).
//!
//! Credentials and endpoints come from each cloud's usual environment (`AWS_*` including
//! `AWS_ENDPOINT_URL` and `AWS_ALLOW_HTTP`, `GOOGLE_APPLICATION_CREDENTIALS` /
//! `GOOGLE_SERVICE_ACCOUNT*`, `AZURE_*` including `AZURE_STORAGE_USE_EMULATOR`); they are never
//! printed. A `gs://` URL without GCS credentials reads anonymously (public buckets such as
//! `gs://quickdraw_dataset`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs;
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::task::JoinHandle;

/// Bytes fetched per range request when reading an object.
pub const READ_CHUNK: usize = 4 << 20;
/// Range requests kept in flight ahead of the reader.
pub const READ_AHEAD: usize = 3;
/// Part size of multipart uploads (S3's minimum part is 5 MiB).
pub const WRITE_PART: usize = 8 << 20;
/// Parts uploaded concurrently by one writer.
const WRITE_CONCURRENCY: usize = 4;

/// Schemes handled by an object store; anything else is a local path.
const SCHEMES: [&str; 7] = ["s3", "s3a", "gs", "az", "abfs", "abfss", "memory"];

/// True when `path` is an object-store or HTTP URL rather than a local path.
pub fn is_url(path: &Path) -> bool {
    url_scheme(path).is_some()
}

fn url_scheme(path: &Path) -> Option<&str> {
    let s = path.to_str()?;
    let (scheme, rest) = s.split_once("://")?;
    let known = SCHEMES.contains(&scheme) || scheme == "http" || scheme == "https";
    (known && !rest.is_empty()).then_some(scheme)
}

/// An object: the store that holds it and its key there.
#[derive(Clone)]
struct Remote {
    store: Arc<dyn ObjectStore>,
    key: ObjPath,
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .thread_name("quickdraw-io")
            .enable_all()
            .build()
            .expect("the object-store I/O runtime starts")
    })
}

/// Runs `fut` to completion from synchronous code (also from inside another runtime's thread,
/// e.g. the server's, by blocking a scoped helper thread instead).
fn block_on<F: Future + Send>(fut: F) -> F::Output
where
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| {
            s.spawn(|| runtime().block_on(fut))
                .join()
                .expect("object-store call panicked")
        })
    } else {
        runtime().block_on(fut)
    }
}

fn to_io(e: object_store::Error) -> io::Error {
    use object_store::Error as E;
    let kind = match &e {
        E::NotFound { .. } => io::ErrorKind::NotFound,
        E::AlreadyExists { .. } | E::Precondition { .. } => io::ErrorKind::AlreadyExists,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => io::ErrorKind::PermissionDenied,
        E::InvalidPath { .. } | E::UnknownConfigurationKey { .. } => io::ErrorKind::InvalidInput,
        E::NotSupported { .. } | E::NotImplemented { .. } => io::ErrorKind::Unsupported,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

/// The store for a URL's scheme and authority, built once per process.
fn remote(path: &Path) -> io::Result<Option<Remote>> {
    let Some(scheme) = url_scheme(path) else {
        return Ok(None);
    };
    let text = path.to_str().expect("a URL is UTF-8");
    let url = url::Url::parse(text).map_err(|e| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("not a valid URL: {e}"))
    })?;
    let root = format!("{scheme}://{}", url.authority());
    static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    let stores = STORES.get_or_init(Default::default);
    let store = {
        let mut stores = stores.lock().expect("store cache");
        match stores.get(&root) {
            Some(s) => s.clone(),
            None => {
                let s = build_store(scheme, &root)?;
                stores.insert(root.clone(), s.clone());
                s
            }
        }
    };
    // The URL's path is percent-encoded (`alarm%20clock.ndjson`); the key is not.
    let key = ObjPath::from_url_path(url.path()).map_err(|e| to_io(e.into()))?;
    Ok(Some(Remote { store, key }))
}

/// Retries of a failed request (`QUICKDRAW_STORE_RETRIES`, default 10) within
/// `QUICKDRAW_STORE_RETRY_TIMEOUT` seconds (default 180), with exponential backoff.
fn retry_config() -> object_store::RetryConfig {
    let env = |k: &str| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let mut r = object_store::RetryConfig::default();
    if let Some(n) = env("QUICKDRAW_STORE_RETRIES") {
        r.max_retries = n as usize;
    }
    if let Some(s) = env("QUICKDRAW_STORE_RETRY_TIMEOUT") {
        r.retry_timeout = std::time::Duration::from_secs(s);
    }
    r
}

fn build_store(scheme: &str, root: &str) -> io::Result<Arc<dyn ObjectStore>> {
    use object_store::aws::AmazonS3Builder;
    use object_store::azure::MicrosoftAzureBuilder;
    use object_store::gcp::GoogleCloudStorageBuilder;
    let retry = retry_config();
    let store: Arc<dyn ObjectStore> = match scheme {
        "s3" | "s3a" => Arc::new(
            AmazonS3Builder::from_env()
                .with_url(root)
                .with_retry(retry)
                // Create-if-absent and compare-and-swap, as S3 and its compatible servers do.
                .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
                .build()
                .map_err(to_io)?,
        ),
        "gs" => {
            let b = GoogleCloudStorageBuilder::from_env()
                .with_url(root)
                .with_retry(retry);
            let has_credentials = std::env::vars().any(|(k, _)| {
                k == "GOOGLE_APPLICATION_CREDENTIALS" || k.starts_with("GOOGLE_SERVICE_ACCOUNT")
            });
            Arc::new(
                b.with_skip_signature(!has_credentials)
                    .build()
                    .map_err(to_io)?,
            )
        }
        "az" | "abfs" | "abfss" => Arc::new(
            MicrosoftAzureBuilder::from_env()
                .with_url(root)
                .with_retry(retry)
                .build()
                .map_err(to_io)?,
        ),
        "http" | "https" => Arc::new(
            object_store::http::HttpBuilder::new()
                .with_url(root)
                .with_retry(retry)
                .with_client_options(
                    object_store::ClientOptions::new().with_allow_http(scheme == "http"),
                )
                .build()
                .map_err(to_io)?,
        ),
        "memory" => Arc::new(object_store::memory::InMemory::new()),
        _ => unreachable!("url_scheme only returns known schemes"),
    };
    Ok(store)
}

/// The size of a file or object in bytes.
pub fn len(path: &Path) -> io::Result<u64> {
    match remote(path)? {
        None => Ok(fs::metadata(path)?.len()),
        Some(r) => Ok(block_on(r.store.head(&r.key)).map_err(to_io)?.size),
    }
}

/// True when `path` names an existing file or object.
pub fn is_file(path: &Path) -> bool {
    match remote(path) {
        Ok(None) => path.is_file(),
        Ok(Some(r)) => block_on(r.store.head(&r.key)).is_ok(),
        Err(_) => false,
    }
}

/// True when `path` is a local directory, or a URL prefix under which objects exist (an object
/// store has no empty directories).
pub fn is_dir(path: &Path) -> bool {
    match remote(path) {
        Ok(None) => path.is_dir(),
        Ok(Some(r)) => {
            let listed = block_on(r.store.list_with_delimiter(Some(&r.key)));
            listed.is_ok_and(|l| !l.objects.is_empty() || !l.common_prefixes.is_empty())
        }
        Err(_) => false,
    }
}

/// The whole content of a (small) file or object.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    match remote(path)? {
        None => fs::read(path),
        Some(r) => {
            let get = async { r.store.get(&r.key).await?.bytes().await };
            Ok(block_on(get).map_err(to_io)?.to_vec())
        }
    }
}

/// [`read`] as UTF-8 text.
pub fn read_to_string(path: &Path) -> io::Result<String> {
    String::from_utf8(read(path)?).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Writes `bytes` atomically: readers see the old content or the new, never a part (a local file
/// is written under a `.tmp` name and renamed; an object PUT is atomic).
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    match remote(path)? {
        None => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent)?;
            }
            let tmp = tmp_name(path);
            fs::write(&tmp, bytes)?;
            fs::rename(&tmp, path)
        }
        Some(r) => {
            let payload = PutPayload::from(Bytes::copy_from_slice(bytes));
            block_on(r.store.put(&r.key, payload)).map_err(to_io)?;
            Ok(())
        }
    }
}

/// The version of an object a conditional write replaces (its ETag / generation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(object_store::UpdateVersion);

/// A small object read with its version and the store's modification time.
#[derive(Debug, Clone)]
pub struct Versioned {
    pub bytes: Vec<u8>,
    pub modified: std::time::SystemTime,
    pub version: Version,
}

fn remote_only(path: &Path) -> io::Result<Remote> {
    remote(path)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "{}: conditional writes are for object-store URLs",
                path.display()
            ),
        )
    })
}

/// Creates the object `path` holding `bytes` only if no object is there (S3's `If-None-Match`,
/// GCS's `ifGenerationMatch=0`, Azure's `If-None-Match: *`): `Ok(None)` when one already is.
pub fn create_new(path: &Path, bytes: &[u8]) -> io::Result<Option<Version>> {
    let r = remote_only(path)?;
    let payload = PutPayload::from(Bytes::copy_from_slice(bytes));
    let opts = object_store::PutOptions::from(object_store::PutMode::Create);
    match block_on(r.store.put_opts(&r.key, payload, opts)) {
        Ok(done) => Ok(Some(Version(done.into()))),
        Err(object_store::Error::AlreadyExists { .. }) => Ok(None),
        Err(e) => Err(to_io(e)),
    }
}

/// Reads a small object with its version.
pub fn read_versioned(path: &Path) -> io::Result<Versioned> {
    let r = remote_only(path)?;
    let got = async {
        let g = r.store.get(&r.key).await?;
        let meta = g.meta.clone();
        Ok::<_, object_store::Error>((meta, g.bytes().await?))
    };
    let (meta, bytes) = block_on(got).map_err(to_io)?;
    Ok(Versioned {
        bytes: bytes.to_vec(),
        modified: meta.last_modified.into(),
        version: Version(object_store::UpdateVersion {
            e_tag: meta.e_tag,
            version: meta.version,
        }),
    })
}

/// Replaces the object `path` with `bytes` only if it is still at `version` (compare-and-swap):
/// `Ok(None)` when it changed (or went) since.
pub fn replace_if(path: &Path, bytes: &[u8], version: &Version) -> io::Result<Option<Version>> {
    let r = remote_only(path)?;
    let payload = PutPayload::from(Bytes::copy_from_slice(bytes));
    let opts = object_store::PutOptions::from(object_store::PutMode::Update(version.0.clone()));
    match block_on(r.store.put_opts(&r.key, payload, opts)) {
        Ok(done) => Ok(Some(Version(done.into()))),
        // (Azure answers a lost race with 409, mapped to AlreadyExists.)
        Err(
            object_store::Error::Precondition { .. }
            | object_store::Error::NotFound { .. }
            | object_store::Error::AlreadyExists { .. },
        ) => Ok(None),
        Err(e) => Err(to_io(e)),
    }
}

/// Removes a file or object; a missing one is not an error.
pub fn remove(path: &Path) -> io::Result<()> {
    let res = match remote(path)? {
        None => fs::remove_file(path),
        Some(r) => block_on(r.store.delete(&r.key)).map_err(to_io),
    };
    match res {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn tmp_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Every file or object under `dir` (recursively), as `(path relative to dir, size)`, sorted.
pub fn list(dir: &Path) -> io::Result<Vec<(String, u64)>> {
    match remote(dir)? {
        None => {
            let mut out = Vec::new();
            list_local(dir, "", &mut out)?;
            out.sort();
            Ok(out)
        }
        Some(r) => {
            let prefix = (!r.key.as_ref().is_empty()).then_some(&r.key);
            let metas: Vec<_> =
                block_on(r.store.list(prefix).try_collect::<Vec<_>>()).map_err(to_io)?;
            let base = r.key.as_ref().len();
            let mut out: Vec<(String, u64)> = metas
                .into_iter()
                .map(|m| {
                    let rel = m.location.as_ref()[base..]
                        .trim_start_matches('/')
                        .to_string();
                    (rel, m.size)
                })
                .filter(|(rel, _)| !rel.is_empty())
                .collect();
            out.sort();
            // Empty "folder" objects (`dir/`, made by consoles, s3fs, Hadoop) are not files.
            let dirs: std::collections::BTreeSet<String> = out
                .iter()
                .flat_map(|(rel, _)| {
                    rel.match_indices('/')
                        .map(|(i, _)| rel[..i].to_string())
                        .collect::<Vec<_>>()
                })
                .collect();
            out.retain(|(rel, size)| !(*size == 0 && dirs.contains(rel)));
            Ok(out)
        }
    }
}

/// The files directly in `dir` (not in its subfolders), as `(name, size)`, sorted: a local
/// folder's entries, or the objects right under a URL prefix (one delimited listing).
pub fn list_top(dir: &Path) -> io::Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    match remote(dir)? {
        None => {
            for e in fs::read_dir(dir)? {
                let e = e?;
                // (A dangling link is not a file here, as for `Path::is_file`.)
                let Ok(meta) = fs::metadata(e.path()) else {
                    continue;
                };
                if meta.is_file() {
                    out.push((e.file_name().to_string_lossy().into_owned(), meta.len()));
                }
            }
        }
        Some(r) => {
            let prefix = (!r.key.as_ref().is_empty()).then_some(&r.key);
            let listed = block_on(r.store.list_with_delimiter(prefix)).map_err(to_io)?;
            for m in listed.objects {
                if let Some(name) = m.location.filename() {
                    out.push((name.to_string(), m.size));
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

fn list_local(dir: &Path, rel: &str, out: &mut Vec<(String, u64)>) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let meta = e.metadata()?;
        if meta.is_dir() {
            list_local(&e.path(), &rel, out)?;
        } else {
            out.push((rel, meta.len()));
        }
    }
    Ok(())
}

/// Why [`glob`] failed: the pattern, or listing the object store.
#[derive(Debug, thiserror::Error)]
pub enum GlobError {
    #[error(transparent)]
    Pattern(#[from] glob::PatternError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The files or objects matching a glob pattern (`*`, `?`, `[...]`; `*` does not cross `/`),
/// sorted. A pattern without wildcards matches the one file it names, if it exists.
pub fn glob(pattern: &str) -> Result<Vec<PathBuf>, GlobError> {
    let p = Path::new(pattern);
    if !is_url(p) {
        let mut v: Vec<PathBuf> = glob::glob(pattern)?.filter_map(|p| p.ok()).collect();
        v.sort();
        return Ok(v);
    }
    let compiled = glob::Pattern::new(pattern)?;
    let literal_end = pattern.find(['*', '?', '[']).unwrap_or(pattern.len());
    // List from the last `/` of the literal part: the deepest directory the pattern fixes.
    let dir = match pattern[..literal_end].rfind('/') {
        Some(i) => &pattern[..i],
        None => pattern,
    };
    let options = glob::MatchOptions {
        require_literal_separator: true,
        ..Default::default()
    };
    let mut out: Vec<PathBuf> = list(Path::new(dir))?
        .into_iter()
        .map(|(rel, _)| format!("{dir}/{rel}"))
        .filter(|full| compiled.matches_with(full, options))
        .map(PathBuf::from)
        .collect();
    out.sort();
    Ok(out)
}

/// A file or object opened for streaming reads.
pub enum Reader {
    Local(fs::File),
    Remote(RangeReader),
}

/// Opens a file or object for reading.
pub fn open(path: &Path) -> io::Result<Reader> {
    match remote(path)? {
        None => Ok(Reader::Local(fs::File::open(path)?)),
        Some(r) => {
            let meta = block_on(r.store.head(&r.key)).map_err(to_io)?;
            Ok(Reader::Remote(RangeReader::new(r, meta.size, meta.e_tag)))
        }
    }
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Reader::Local(f) => f.read(buf),
            Reader::Remote(r) => r.read(buf),
        }
    }
}

impl Seek for Reader {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        match self {
            Reader::Local(f) => f.seek(pos),
            Reader::Remote(r) => r.seek(pos),
        }
    }
}

/// Reads an object by range requests of [`READ_CHUNK`] bytes, [`READ_AHEAD`] of them in flight
/// ahead of the reader.
pub struct RangeReader {
    remote: Remote,
    size: u64,
    /// Where the next `read` starts.
    pos: u64,
    /// The chunk being read and the offset of its first byte.
    current: Option<(u64, Bytes)>,
    /// Requests in flight: (offset, request), in order.
    ahead: VecDeque<(u64, JoinHandle<object_store::Result<Bytes>>)>,
    /// Offset of the next range to request.
    next_fetch: u64,
    /// Size of the next range: [`FIRST_CHUNK`] after an open or a seek, doubling with every
    /// request up to [`READ_CHUNK`] (a header read costs one small request, a stream ramps up).
    chunk: usize,
    /// The ETag of the object when opened: every range must come from that same object.
    e_tag: Option<String>,
}

/// The first range of a read after an open or a seek.
const FIRST_CHUNK: usize = 64 << 10;

impl RangeReader {
    fn new(remote: Remote, size: u64, e_tag: Option<String>) -> Self {
        RangeReader {
            remote,
            size,
            pos: 0,
            current: None,
            ahead: VecDeque::new(),
            next_fetch: 0,
            chunk: FIRST_CHUNK,
            e_tag,
        }
    }

    fn fill_ahead(&mut self) {
        // Read-ahead only once the reads have proven sequential (the chunks have grown).
        let depth = if self.chunk >= READ_CHUNK {
            READ_AHEAD + 1
        } else {
            1
        };
        while self.ahead.len() < depth && self.next_fetch < self.size {
            let start = self.next_fetch;
            let end = (start + self.chunk as u64).min(self.size);
            self.chunk = (self.chunk * 2).min(READ_CHUNK);
            let r = self.remote.clone();
            let options = object_store::GetOptions {
                range: Some((start..end).into()),
                if_match: self.e_tag.clone(),
                ..Default::default()
            };
            let handle = runtime()
                .spawn(async move { r.store.get_opts(&r.key, options).await?.bytes().await });
            self.ahead.push_back((start, handle));
            self.next_fetch = end;
        }
    }

    /// Drops what was fetched for other offsets and restarts the requests at `self.pos`.
    fn restart(&mut self) {
        for (_, h) in self.ahead.drain(..) {
            h.abort();
        }
        self.current = None;
        self.next_fetch = self.pos;
        self.chunk = FIRST_CHUNK;
    }
}

impl Drop for RangeReader {
    fn drop(&mut self) {
        for (_, h) in self.ahead.drain(..) {
            h.abort();
        }
    }
}

impl Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.pos >= self.size {
            return Ok(0);
        }
        loop {
            if let Some((start, bytes)) = &self.current {
                let end = start + bytes.len() as u64;
                if (*start..end).contains(&self.pos) {
                    let from = (self.pos - start) as usize;
                    let n = buf.len().min(bytes.len() - from);
                    buf[..n].copy_from_slice(&bytes[from..from + n]);
                    self.pos += n as u64;
                    return Ok(n);
                }
            }
            if self.ahead.front().is_none_or(|(s, _)| *s > self.pos) {
                self.restart();
            }
            self.fill_ahead();
            let (start, handle) = self.ahead.pop_front().expect("a range was requested");
            let bytes = block_on(handle)
                .map_err(|e| io::Error::other(format!("range request failed: {e}")))?
                .map_err(|e| match e {
                    object_store::Error::Precondition { .. } => io::Error::other(
                        "the object was replaced while it was being read (its ETag changed)",
                    ),
                    e => to_io(e),
                })?;
            if bytes.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "empty range at byte {start} of an object of {} bytes",
                        self.size
                    ),
                ));
            }
            self.current = Some((start, bytes));
            self.fill_ahead();
        }
    }
}

impl Seek for RangeReader {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::End(d) => self.size as i128 + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if target < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the object",
            ));
        }
        let target = target as u64;
        let in_reach = |s: u64| s <= target;
        let keeps = self.current.as_ref().is_some_and(|(s, _)| in_reach(*s))
            || self.ahead.front().is_some_and(|(s, _)| in_reach(*s));
        self.pos = target;
        // Forward seeks within what is fetched or in flight keep the requests; others restart.
        if !keeps || target >= self.next_fetch {
            self.restart();
        }
        Ok(target)
    }
}

/// A file or object being written; published only by [`Writer::finish`].
pub struct Writer {
    inner: Option<WriterKind>,
    path: PathBuf,
}

enum WriterKind {
    Local {
        file: io::BufWriter<fs::File>,
        tmp: PathBuf,
    },
    Remote {
        remote: Remote,
        buf: Vec<u8>,
        upload: Option<WriteMultipart>,
    },
}

/// Creates a file or object for writing (see [`Writer`]). Local parent directories must exist.
pub fn create(path: &Path) -> io::Result<Writer> {
    let inner = match remote(path)? {
        None => {
            let tmp = tmp_name(path);
            let file = io::BufWriter::with_capacity(1 << 16, fs::File::create(&tmp)?);
            WriterKind::Local { file, tmp }
        }
        Some(remote) => WriterKind::Remote {
            remote,
            buf: Vec::new(),
            upload: None,
        },
    };
    Ok(Writer {
        inner: Some(inner),
        path: path.to_path_buf(),
    })
}

impl Writer {
    /// Publishes the file or object under its name.
    pub fn finish(mut self) -> io::Result<()> {
        match self.inner.take().expect("finish once") {
            WriterKind::Local { file, tmp } => {
                let file = file.into_inner().map_err(|e| e.into_error())?;
                file.sync_all()?;
                fs::rename(&tmp, &self.path)
            }
            WriterKind::Remote {
                remote,
                buf,
                upload,
            } => match upload {
                // Small objects: one atomic PUT.
                None => {
                    let payload = PutPayload::from(Bytes::from(buf));
                    block_on(remote.store.put(&remote.key, payload)).map_err(to_io)?;
                    Ok(())
                }
                Some(mut up) => {
                    let _guard = runtime().enter();
                    up.put(Bytes::from(buf));
                    block_on(up.finish()).map_err(to_io)?;
                    Ok(())
                }
            },
        }
    }
}

impl Write for Writer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self.inner.as_mut().expect("not finished") {
            WriterKind::Local { file, .. } => file.write(data),
            WriterKind::Remote {
                remote,
                buf,
                upload,
            } => {
                buf.extend_from_slice(data);
                if buf.len() >= WRITE_PART {
                    if upload.is_none() {
                        let up =
                            block_on(remote.store.put_multipart(&remote.key)).map_err(to_io)?;
                        *upload = Some(WriteMultipart::new_with_chunk_size(up, WRITE_PART));
                    }
                    let up = upload.as_mut().expect("started");
                    block_on(up.wait_for_capacity(WRITE_CONCURRENCY)).map_err(to_io)?;
                    let _guard = runtime().enter();
                    up.put(Bytes::from(std::mem::take(buf)));
                }
                Ok(data.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.inner.as_mut() {
            Some(WriterKind::Local { file, .. }) => file.flush(),
            _ => Ok(()),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        match self.inner.take() {
            Some(WriterKind::Local { tmp, .. }) => {
                let _ = fs::remove_file(tmp);
            }
            Some(WriterKind::Remote {
                upload: Some(up), ..
            }) => {
                let _ = block_on(up.abort());
            }
            _ => {}
        }
    }
}

/// Copies a local file into `dest` (a file or object), published when complete.
pub fn copy_in(local: &Path, dest: &Path) -> io::Result<()> {
    let mut w = create(dest)?;
    io::copy(&mut fs::File::open(local)?, &mut w)?;
    w.finish()
}

/// A directory on an object store worked on through a local copy: [`Mirror::open`] downloads
/// it, the caller reads and writes the copy with ordinary file code, [`Mirror::push`] uploads
/// what changed and deletes what was deleted, [`Mirror::pull`] fetches what changed remotely.
/// Files named in `last` (by file name: checkpoint `state.json`, a version's `signature.json`,
/// a dataset's `manifest.json`) move after every other file, so a reader that waits for them
/// never sees a part. Lock files (`.quickdraw.lock`) never move.
#[derive(Debug)]
pub struct Mirror {
    remote: PathBuf,
    local: PathBuf,
    last: Vec<String>,
    /// What the remote is known to hold: relative path -> (size, local modification time).
    synced: BTreeMap<String, (u64, Option<std::time::SystemTime>)>,
    _tmp: Option<tempfile::TempDir>,
}

impl Mirror {
    /// Downloads `remote` into a new temporary directory (removed when the mirror is dropped).
    pub fn open(remote: &Path, last: &[&str]) -> io::Result<Mirror> {
        let tmp = tempfile::Builder::new()
            .prefix("quickdraw-mirror-")
            .tempdir()?;
        let mut m = Mirror {
            remote: remote.to_path_buf(),
            local: tmp.path().to_path_buf(),
            last: last.iter().map(|s| s.to_string()).collect(),
            synced: BTreeMap::new(),
            _tmp: Some(tmp),
        };
        m.pull()?;
        Ok(m)
    }

    /// The local copy.
    pub fn local(&self) -> &Path {
        &self.local
    }

    /// The object-store directory.
    pub fn remote(&self) -> &Path {
        &self.remote
    }

    fn is_last(&self, rel: &str) -> bool {
        let name = rel.rsplit('/').next().unwrap_or(rel);
        self.last.iter().any(|l| l == name)
    }

    fn stamp(&self, rel: &str) -> (u64, Option<std::time::SystemTime>) {
        let meta = fs::metadata(self.local.join(rel)).ok();
        (
            meta.as_ref().map_or(0, |m| m.len()),
            meta.and_then(|m| m.modified().ok()),
        )
    }

    /// Uploads the local files that are new or changed since the last sync (`.tmp` files
    /// excepted), the `last` ones after the others, then deletes the remote files whose local
    /// copy is gone. Returns how many files were uploaded.
    pub fn push(&mut self) -> io::Result<usize> {
        let files: Vec<String> = list(&self.local)?
            .into_iter()
            .map(|(rel, _)| rel)
            .filter(|rel| !rel.ends_with(".tmp") && !rel.split('/').any(|c| c.starts_with(".tmp")))
            .filter(|rel| !is_lock(rel))
            .collect();
        let (last, first): (Vec<&String>, Vec<&String>) =
            files.iter().partition(|r| self.is_last(r));
        let mut sent = 0;
        for rel in first.into_iter().chain(last) {
            let stamp = self.stamp(rel);
            if self.synced.get(rel.as_str()) == Some(&stamp) {
                continue;
            }
            copy_in(&self.local.join(rel), &self.remote.join(rel))?;
            self.synced.insert(rel.clone(), stamp);
            sent += 1;
        }
        let gone: Vec<String> = self
            .synced
            .keys()
            .filter(|k| !files.contains(k))
            .cloned()
            .collect();
        // Completion markers go first, so no reader trusts a half-deleted folder.
        let (last, first): (Vec<&String>, Vec<&String>) =
            gone.iter().partition(|r| self.is_last(r));
        for rel in last.into_iter().chain(first) {
            remove(&self.remote.join(rel))?;
            self.synced.remove(rel.as_str());
        }
        Ok(sent)
    }

    /// Downloads the remote files that are new or changed in size (the `last` ones after the
    /// others, each written under a `.tmp` name and renamed) and removes the local files that
    /// are gone remotely. Returns how many files changed.
    pub fn pull(&mut self) -> io::Result<usize> {
        let mut files = list(&self.remote)?;
        files.retain(|(rel, _)| !is_lock(rel));
        let (last, first): (Vec<&(String, u64)>, Vec<&(String, u64)>) =
            files.iter().partition(|(r, _)| self.is_last(r));
        let mut changed = 0;
        for (rel, size) in first.into_iter().chain(last) {
            if self.synced.get(rel.as_str()).map(|s| s.0) == Some(*size) {
                continue;
            }
            let to = self.local.join(rel);
            if let Some(parent) = to.parent() {
                fs::create_dir_all(parent)?;
            }
            let mut w = create(&to)?;
            io::copy(&mut open(&self.remote.join(rel))?, &mut w)?;
            w.finish()?;
            let stamp = self.stamp(rel);
            self.synced.insert(rel.clone(), stamp);
            changed += 1;
        }
        let gone: Vec<String> = self
            .synced
            .keys()
            .filter(|k| !files.iter().any(|(r, _)| r == *k))
            .cloned()
            .collect();
        for rel in gone {
            let path = self.local.join(&rel);
            let _ = fs::remove_file(&path);
            // A folder emptied remotely goes too (a deleted version folder must disappear).
            let mut dir = path.parent();
            while let Some(d) = dir.filter(|d| d.starts_with(&self.local) && *d != self.local) {
                if fs::remove_dir(d).is_err() {
                    break;
                }
                dir = d.parent();
            }
            self.synced.remove(&rel);
            changed += 1;
        }
        Ok(changed)
    }
}

/// A directory lock (`crate::lock`): each side has its own (a local file lock in the copy, the
/// lock object remotely), so a mirror never moves one.
fn is_lock(rel: &str) -> bool {
    rel.rsplit('/').next() == Some(crate::lock::LOCK_FILE)
}

/// Downloads every object under `src` into the local directory `local` (created), each file
/// written under a `.tmp` name and renamed. Returns how many files were copied.
pub fn download_dir(src: &Path, local: &Path) -> io::Result<usize> {
    let files = list(src)?;
    for (rel, _) in &files {
        let to = local.join(rel);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut w = create(&to)?;
        io::copy(&mut open(&src.join(rel))?, &mut w)?;
        w.finish()?;
    }
    Ok(files.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(name: &str) -> PathBuf {
        PathBuf::from(format!("memory://unit/{name}"))
    }

    #[test]
    fn urls_and_paths_are_told_apart() {
        assert!(is_url(Path::new("s3://bucket/key")));
        assert!(is_url(Path::new("gs://quickdraw_dataset/full")));
        assert!(is_url(Path::new("https://example.com/x")));
        assert!(!is_url(Path::new("data/zoo")));
        assert!(!is_url(Path::new("/abs/s3://odd")));
        assert!(!is_url(Path::new("s3://")));
        assert!(!is_url(Path::new("ftp://host/x")));
        // Path arithmetic keeps a URL a URL.
        let p = Path::new("s3://bucket/data").join("train-0");
        assert_eq!(p.to_str(), Some("s3://bucket/data/train-0"));
        assert_eq!(p.parent(), Some(Path::new("s3://bucket/data")));
    }

    #[test]
    fn write_read_len_remove_round_trip() {
        let p = mem("rt/a.txt");
        write(&p, b"hello").unwrap();
        assert_eq!(read(&p).unwrap(), b"hello");
        assert_eq!(len(&p).unwrap(), 5);
        assert!(is_file(&p));
        assert!(is_dir(&mem("rt")));
        remove(&p).unwrap();
        assert!(!is_file(&p));
        assert_eq!(read(&p).unwrap_err().kind(), io::ErrorKind::NotFound);
        remove(&p).unwrap();
    }

    #[test]
    fn multipart_writer_publishes_only_when_finished() {
        let p = mem("mp/big.bin");
        let data: Vec<u8> = (0..(2 * WRITE_PART + 12345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut w = create(&p).unwrap();
        for chunk in data.chunks(100_000) {
            w.write_all(chunk).unwrap();
        }
        assert!(!is_file(&p), "visible before finish");
        w.finish().unwrap();
        assert_eq!(read(&p).unwrap(), data);
        // Dropped unfinished: nothing appears.
        let q = mem("mp/abandoned.bin");
        let mut w = create(&q).unwrap();
        w.write_all(&data).unwrap();
        drop(w);
        assert!(!is_file(&q));
    }

    #[test]
    fn range_reader_streams_and_seeks() {
        let p = mem("rr/obj");
        let data: Vec<u8> = (0..(READ_CHUNK * 2 + 999))
            .map(|i| (i % 253) as u8)
            .collect();
        write(&p, &data).unwrap();
        let mut r = open(&p).unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, data);
        for &at in &[7u64, READ_CHUNK as u64 - 3, (READ_CHUNK * 2) as u64 + 10, 1] {
            r.seek(SeekFrom::Start(at)).unwrap();
            let mut b = [0u8; 16];
            let n = r.read(&mut b).unwrap();
            assert!(n > 0);
            assert_eq!(&b[..n], &data[at as usize..at as usize + n]);
        }
        r.seek(SeekFrom::Start(0)).unwrap();
        let mut br = io::BufReader::new(r);
        br.seek_relative(READ_CHUNK as i64 + 5).unwrap();
        let mut b = [0u8; 4];
        br.read_exact(&mut b).unwrap();
        assert_eq!(&b, &data[READ_CHUNK + 5..READ_CHUNK + 9]);
    }

    #[test]
    fn glob_and_list_on_urls() {
        for n in [
            "train-00000-of-00002",
            "train-00001-of-00002",
            "eval-00000-of-00001",
        ] {
            write(&mem(&format!("g/ds/{n}")), b"x").unwrap();
        }
        write(&mem("g/ds/sub/train-9"), b"y").unwrap();
        let hits = glob("memory://unit/g/ds/train-*").unwrap();
        let names: Vec<_> = hits
            .iter()
            .map(|p| p.to_str().unwrap().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "memory://unit/g/ds/train-00000-of-00002",
                "memory://unit/g/ds/train-00001-of-00002"
            ]
        );
        assert_eq!(
            glob("memory://unit/g/ds/eval-00000-of-00001")
                .unwrap()
                .len(),
            1
        );
        assert!(glob("memory://unit/g/none-*").unwrap().is_empty());
        let all = list(&mem("g/ds")).unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[3], ("train-00001-of-00002".to_string(), 1));
        assert_eq!(all[1], ("sub/train-9".to_string(), 1));
    }

    #[test]
    fn mirrors_push_changes_and_deletions_and_pull_new_files() {
        let dest = mem("mirror/export");
        write(&dest.join("1/model.onnx"), b"v1").unwrap();
        let mut m = Mirror::open(&dest, &["signature.json"]).unwrap();
        assert_eq!(fs::read(m.local().join("1/model.onnx")).unwrap(), b"v1");
        // Nothing changed: nothing is sent.
        assert_eq!(m.push().unwrap(), 0);
        fs::create_dir_all(m.local().join("2")).unwrap();
        fs::write(m.local().join("2/model.onnx"), b"v2").unwrap();
        fs::write(m.local().join("2/signature.json"), b"{}").unwrap();
        fs::write(m.local().join("2/partial.tmp"), b"x").unwrap();
        fs::remove_file(m.local().join("1/model.onnx")).unwrap();
        assert_eq!(m.push().unwrap(), 2);
        assert_eq!(read(&dest.join("2/model.onnx")).unwrap(), b"v2");
        assert!(!is_file(&dest.join("2/partial.tmp")));
        assert!(!is_file(&dest.join("1/model.onnx")), "deletions are pushed");
        // Another writer adds a file: pull fetches it.
        write(&dest.join("3/signature.json"), b"{3}").unwrap();
        assert_eq!(m.pull().unwrap(), 1);
        assert_eq!(
            fs::read(m.local().join("3/signature.json")).unwrap(),
            b"{3}"
        );
        remove(&dest.join("3/signature.json")).unwrap();
        assert_eq!(m.pull().unwrap(), 1);
        assert!(!m.local().join("3/signature.json").exists());
    }

    #[test]
    fn keys_are_percent_decoded_and_folder_markers_are_not_files() {
        let p = PathBuf::from("memory://unit/enc/alarm clock.ndjson");
        write(&p, b"x").unwrap();
        // The URL form with %20 names the same object.
        assert_eq!(
            read(Path::new("memory://unit/enc/alarm%20clock.ndjson")).unwrap(),
            b"x"
        );
        let hits = glob("memory://unit/enc/*.ndjson").unwrap();
        assert_eq!(read(&hits[0]).unwrap(), b"x");
        write(&mem("marker/1"), b"").unwrap();
        write(&mem("marker/1/model.onnx"), b"m").unwrap();
        assert_eq!(
            list(&mem("marker")).unwrap(),
            [("1/model.onnx".to_string(), 1)]
        );
    }

    #[test]
    fn a_header_read_costs_one_small_range_and_a_replaced_object_is_refused() {
        let p = mem("ramp/obj");
        let data = vec![7u8; READ_CHUNK * 3];
        write(&p, &data).unwrap();
        let mut r = open(&p).unwrap();
        let mut head = [0u8; 8];
        r.read_exact(&mut head).unwrap();
        let Reader::Remote(rr) = &r else {
            panic!("remote")
        };
        // The first 64 KiB, and the next 128 KiB requested ahead: not 16 MiB.
        assert_eq!(rr.next_fetch, 3 * FIRST_CHUNK as u64);
        // Replaced while open: the next range fails instead of mixing two objects.
        write(&p, &vec![8u8; READ_CHUNK * 3]).unwrap();
        let mut rest = Vec::new();
        let err = r.read_to_end(&mut rest).unwrap_err();
        assert!(err.to_string().contains("replaced"), "{err}");
    }

    #[test]
    fn local_paths_use_the_same_calls() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f.bin");
        let mut w = create(&p).unwrap();
        w.write_all(b"abc").unwrap();
        assert!(!p.exists());
        w.finish().unwrap();
        assert_eq!(read(&p).unwrap(), b"abc");
        assert_eq!(len(&p).unwrap(), 3);
        assert_eq!(
            glob(&format!("{}/*.bin", tmp.path().display())).unwrap(),
            [p.clone()]
        );
    }
}
