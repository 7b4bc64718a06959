//! Reading every QuickDraw format users download: simplified and raw NDJSON, the binary format,
//! numpy_bitmap `.npy`, each optionally gzip-compressed.
//!
//! Reading is split in two so it can be streamed and parallelised: a [`UnitReader`] frames a file
//! into units (a line, a binary record, an image row) sequentially in constant memory, and
//! [`parse_unit`] turns one unit into a validated [`Drawing`] or a [`Reject`] (pure, run on any
//! thread).

pub mod binary;
pub mod ndjson;
pub mod npy;

use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flate2::read::MultiGzDecoder;
use sha2::{Digest, Sha256};

use crate::drawing::Drawing;
use crate::readfull::read_up_to;
use crate::validate::{MAX_LINE_BYTES, Reject, RejectReason, check_drawing};

/// A file format, detected from the extension (after `.gz`) or, failing that, the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// NDJSON lines; simplified (`[x, y]` strokes) and raw (`[x, y, t]`) are told apart per record.
    Ndjson,
    /// Google's `full/binary/<class>.bin` packed records.
    Binary,
    /// `numpy_bitmap/<class>.npy`: uint8 array (N, 784), 28x28 images.
    NumpyBitmap,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Ndjson => "ndjson",
            Format::Binary => "binary",
            Format::NumpyBitmap => "numpy_bitmap",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {what}")]
    BadFile { path: PathBuf, what: String },
}

impl IngestError {
    fn io(path: &Path, source: io::Error) -> Self {
        IngestError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Extensions recognised on input file names (after stripping `.gz`).
pub const NDJSON_EXTENSIONS: &[&str] = &["ndjson", "jsonl", "json"];

/// Format and compression of a file, from its name, or from its first bytes when the name
/// does not tell.
pub fn detect(path: &Path) -> Result<(Format, bool), IngestError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let (base, gz_by_name) = match name.strip_suffix(".gz") {
        Some(b) => (b.to_string(), true),
        None => (name.clone(), false),
    };
    let ext = base.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    let by_ext = if NDJSON_EXTENSIONS.contains(&ext) {
        Some(Format::Ndjson)
    } else if ext == "bin" {
        Some(Format::Binary)
    } else if ext == "npy" {
        Some(Format::NumpyBitmap)
    } else {
        None
    };
    let mut head = [0u8; 8];
    let n = crate::storage::open(path)
        .and_then(|mut f| read_up_to(&mut f, &mut head))
        .map_err(|e| IngestError::io(path, e))?;
    let gz = gz_by_name || (n >= 2 && head[..2] == [0x1f, 0x8b]);
    if let Some(f) = by_ext {
        return Ok((f, gz));
    }
    // Sniff the (decompressed) content.
    let mut r = open_decoded(path, gz, None)?;
    let mut head = [0u8; 8];
    let n = read_up_to(&mut r, &mut head).map_err(|e| IngestError::io(path, e))?;
    let head = &head[..n];
    let f = if head.starts_with(b"\x93NUMPY") {
        Format::NumpyBitmap
    } else if head.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        Format::Ndjson
    } else {
        return Err(IngestError::BadFile {
            path: path.to_path_buf(),
            what: "unknown format: expected .ndjson, .bin or .npy (optionally .gz)".into(),
        });
    };
    Ok((f, gz))
}

/// The class a file holds, from its name: `cat.ndjson.gz` -> `cat`, `full_simplified_cat.ndjson`
/// -> `cat` (prefixes of Google's bucket paths flattened into file names are removed).
pub fn class_from_path(path: &Path) -> String {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let name = name.strip_suffix(".gz").unwrap_or(name);
    let stem = match name.rsplit_once('.') {
        Some((s, e)) if NDJSON_EXTENSIONS.contains(&e) || e == "bin" || e == "npy" => s,
        _ => name,
    };
    for p in [
        "full_simplified_",
        "full_raw_",
        "full_binary_",
        "full_numpy_bitmap_",
    ] {
        if let Some(s) = stem.strip_prefix(p) {
            return s.to_string();
        }
    }
    stem.to_string()
}

/// Counts and hashes the bytes read from disk (before decompression).
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
    progress: Option<Arc<AtomicU64>>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        if let Some(p) = &self.progress {
            p.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(n)
    }
}

impl<R: Read> HashingReader<R> {
    /// Reads (and hashes) whatever is left, returning the SHA-256 and total size of the file.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = self.read(&mut buf)?;
            if n == 0 {
                break;
            }
        }
        Ok((hex::encode(self.hasher.finalize()), self.bytes))
    }
}

/// The on-disk side of an open input: counts and hashes raw bytes.
pub type RawSource = HashingReader<BufReader<crate::storage::Reader>>;

/// A decompressing reader over a hashing file reader.
pub enum Decoded {
    Plain(RawSource),
    Gzip(Box<MultiGzDecoder<RawSource>>),
}

impl Read for Decoded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoded::Plain(r) => r.read(buf),
            Decoded::Gzip(r) => r.read(buf),
        }
    }
}

impl Decoded {
    /// SHA-256 and size of the whole file on disk (reads the rest if needed).
    pub fn finish(self) -> io::Result<(String, u64)> {
        match self {
            Decoded::Plain(r) => r.finish(),
            Decoded::Gzip(g) => g.into_inner().finish(),
        }
    }
}

/// Opens a file for reading, transparently gunzipping; `progress` counts bytes read from disk.
pub fn open_decoded(
    path: &Path,
    gz: bool,
    progress: Option<Arc<AtomicU64>>,
) -> Result<Decoded, IngestError> {
    let f = crate::storage::open(path).map_err(|e| IngestError::io(path, e))?;
    let raw = HashingReader {
        inner: BufReader::with_capacity(1 << 16, f),
        hasher: Sha256::new(),
        bytes: 0,
        progress,
    };
    Ok(if gz {
        Decoded::Gzip(Box::new(MultiGzDecoder::new(raw)))
    } else {
        Decoded::Plain(raw)
    })
}

/// One framed unit of a file: an NDJSON line, a binary record or an image row.
#[derive(Debug, Clone)]
pub struct Unit {
    /// 1-based line number (NDJSON) or record/row number (binary, npy).
    pub index: u64,
    pub bytes: Vec<u8>,
    /// The unit ends at end of file without its terminator (NDJSON: no final newline;
    /// binary/npy: fewer bytes than the record needs).
    pub truncated: bool,
    /// Set when the framing itself already rejected the unit (e.g. an oversized line).
    pub reject: Option<Reject>,
}

/// Frames a file into units, streaming.
pub struct UnitReader {
    pub path: PathBuf,
    pub format: Format,
    pub gzip: bool,
    src: io::BufReader<Decoded>,
    next_index: u64,
    done: bool,
    npy_rows: Option<u64>,
}

impl UnitReader {
    pub fn open(path: &Path, progress: Option<Arc<AtomicU64>>) -> Result<Self, IngestError> {
        let (format, gzip) = detect(path)?;
        Self::open_as(path, format, gzip, progress)
    }

    pub fn open_as(
        path: &Path,
        format: Format,
        gzip: bool,
        progress: Option<Arc<AtomicU64>>,
    ) -> Result<Self, IngestError> {
        let dec = open_decoded(path, gzip, progress)?;
        let mut r = UnitReader {
            path: path.to_path_buf(),
            format,
            gzip,
            src: BufReader::with_capacity(1 << 18, dec),
            next_index: 1,
            done: false,
            npy_rows: None,
        };
        if format == Format::NumpyBitmap {
            let (rows, _) = npy::read_header(&mut r.src).map_err(|what| IngestError::BadFile {
                path: path.to_path_buf(),
                what,
            })?;
            r.npy_rows = Some(rows);
        }
        Ok(r)
    }

    /// Number of records announced by the file header (numpy_bitmap only).
    pub fn announced_records(&self) -> Option<u64> {
        self.npy_rows
    }

    /// numpy_bitmap only: `Some((announced, found))` when the whole file was read and it holds
    /// fewer rows (a partial last row counts as found) than its header announces.
    pub fn missing_rows(&self) -> Option<(u64, u64)> {
        let found = self.next_index - 1;
        match self.npy_rows {
            Some(announced) if self.done && found < announced => Some((announced, found)),
            _ => None,
        }
    }

    /// Next unit, `Ok(None)` at end of file; I/O errors (including corrupt gzip) are fatal.
    pub fn next_unit(&mut self) -> Result<Option<Unit>, IngestError> {
        if self.done {
            return Ok(None);
        }
        let index = self.next_index;
        let res = match self.format {
            Format::Ndjson => ndjson::next_line(&mut self.src),
            Format::Binary => binary::next_record(&mut self.src),
            Format::NumpyBitmap => npy::next_row(&mut self.src),
        };
        let unit = res.map_err(|e| IngestError::io(&self.path, e))?;
        match unit {
            None => {
                self.done = true;
                Ok(None)
            }
            Some((bytes, truncated, reject)) => {
                self.next_index += 1;
                if truncated {
                    self.done = true;
                }
                Ok(Some(Unit {
                    index,
                    bytes,
                    truncated,
                    reject,
                }))
            }
        }
    }

    /// Skips blank NDJSON lines transparently: they are not records.
    pub fn next_record(&mut self) -> Result<Option<Unit>, IngestError> {
        loop {
            match self.next_unit()? {
                Some(u)
                    if self.format == Format::Ndjson
                        && u.reject.is_none()
                        && u.bytes.iter().all(u8::is_ascii_whitespace) =>
                {
                    continue;
                }
                other => return Ok(other),
            }
        }
    }

    /// Finishes the file: SHA-256 and size on disk (reads what was not read yet).
    /// Up to `n` next records, in order (fewer only at the end of the file): the batches that
    /// `convert` parses in parallel.
    pub fn next_batch(&mut self, n: usize) -> Result<Vec<Unit>, IngestError> {
        let mut batch = Vec::with_capacity(n);
        while batch.len() < n {
            match self.next_record()? {
                Some(u) => batch.push(u),
                None => break,
            }
        }
        Ok(batch)
    }

    pub fn finish(self) -> Result<(String, u64), IngestError> {
        let path = self.path.clone();
        self.src
            .into_inner()
            .finish()
            .map_err(|e| IngestError::io(&path, e))
    }
}

/// Where a record's class (its `word`) comes from: the rule every reader of drawings states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelFrom {
    /// The file's name, as in Google's per-class files (`cat.ndjson`, `full_raw_cat.ndjson`): an
    /// NDJSON record whose `word` is another class is rejected as `label_mismatch`.
    #[default]
    File,
    /// The record's own `word`, for files that mix classes (exports, the server's request logs,
    /// hand-labelled drawings). Binary and npy records carry no word and take the file's name.
    Word,
}

impl LabelFrom {
    pub fn as_str(self) -> &'static str {
        match self {
            LabelFrom::File => "file",
            LabelFrom::Word => "word",
        }
    }
}

impl std::str::FromStr for LabelFrom {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "file" => Ok(LabelFrom::File),
            "word" => Ok(LabelFrom::Word),
            _ => Err(format!("{s:?}: expected `file` or `word`")),
        }
    }
}

/// Parses and validates one unit: the one entry point from framed bytes to a [`Drawing`].
/// `class` is the class of the file (its name, [`class_from_path`]): binary and npy records take
/// it as their word; with [`LabelFrom::File`] NDJSON records must carry it.
pub fn parse_unit(
    format: Format,
    unit: &Unit,
    class: &str,
    label_from: LabelFrom,
) -> Result<Drawing, Reject> {
    if let Some(r) = &unit.reject {
        return Err(r.clone());
    }
    let parsed = match format {
        Format::Ndjson => ndjson::parse_line(&unit.bytes),
        Format::Binary => binary::parse_record(&unit.bytes, class),
        Format::NumpyBitmap => npy::parse_row(&unit.bytes, unit.index, class),
    };
    let d = match parsed {
        Ok(d) => d,
        Err(e) if unit.truncated => {
            return Err(Reject::new(
                RejectReason::Truncated,
                format!(
                    "last record is incomplete ({}); was the download interrupted?",
                    e.detail
                ),
            ));
        }
        Err(e) => return Err(e),
    };
    let expected = (format == Format::Ndjson && label_from == LabelFrom::File).then_some(class);
    check_drawing(&d, expected)?;
    Ok(d)
}

/// Drawings of one file, one at a time: [`UnitReader`] framing plus [`parse_unit`] with the
/// file's class and a [`LabelFrom`] rule, for the commands that read drawings sequentially
/// (`inspect`, `predict`, `model run`, `simplify`, `stats`, `skew`; `convert` parses batches in
/// parallel with the same two parts).
pub struct DrawingReader {
    units: UnitReader,
    class: String,
    label_from: LabelFrom,
}

impl DrawingReader {
    /// `progress` counts the file's bytes as they are read.
    pub fn open(
        path: &Path,
        label_from: LabelFrom,
        progress: Option<Arc<AtomicU64>>,
    ) -> Result<Self, IngestError> {
        Ok(DrawingReader {
            units: UnitReader::open(path, progress)?,
            class: class_from_path(path),
            label_from,
        })
    }

    pub fn format(&self) -> Format {
        self.units.format
    }

    /// The class the file's name gives ([`class_from_path`]).
    pub fn class(&self) -> &str {
        &self.class
    }

    /// Reads to the end and returns the SHA-256 and size of the file's bytes (see
    /// [`UnitReader::finish`]).
    pub fn finish(self) -> Result<(String, u64), IngestError> {
        self.units.finish()
    }

    /// The next record's number (1-based line or record) and its drawing or why it was
    /// rejected; `None` at the end of the file. I/O errors end the file.
    pub fn next_drawing(&mut self) -> Result<Option<(u64, Result<Drawing, Reject>)>, IngestError> {
        let Some(u) = self.units.next_record()? else {
            return Ok(None);
        };
        let d = parse_unit(self.units.format, &u, &self.class, self.label_from);
        Ok(Some((u.index, d)))
    }
}

/// Reads a line of at most `MAX_LINE_BYTES` (+ newline). Returns the bytes without the newline,
/// whether the file ended without one, and a reject for over-long lines (which are skipped).
pub(crate) fn read_line_limited<R: BufRead>(
    r: &mut R,
) -> io::Result<Option<(Vec<u8>, bool, Option<Reject>)>> {
    let mut buf = Vec::new();
    let mut too_long = false;
    loop {
        let avail = r.fill_buf()?;
        if avail.is_empty() {
            if buf.is_empty() && !too_long {
                return Ok(None);
            }
            return Ok(Some(finish_line(buf, true, too_long)));
        }
        match memchr(b'\n', avail) {
            Some(i) => {
                if !too_long {
                    buf.extend_from_slice(&avail[..i]);
                }
                r.consume(i + 1);
                return Ok(Some(finish_line(buf, false, too_long)));
            }
            None => {
                let n = avail.len();
                if !too_long {
                    buf.extend_from_slice(avail);
                    if buf.len() > MAX_LINE_BYTES {
                        too_long = true;
                        buf = Vec::new();
                    }
                }
                r.consume(n);
            }
        }
    }
}

fn finish_line(mut buf: Vec<u8>, at_eof: bool, too_long: bool) -> (Vec<u8>, bool, Option<Reject>) {
    if too_long {
        let r = Reject::new(
            RejectReason::TooLarge,
            format!("line longer than {MAX_LINE_BYTES} bytes"),
        );
        return (Vec::new(), at_eof, Some(r));
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    (buf, at_eof, None)
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_from_paths() {
        assert_eq!(class_from_path(Path::new("a/cat.ndjson")), "cat");
        assert_eq!(
            class_from_path(Path::new("The Eiffel Tower.ndjson.gz")),
            "The Eiffel Tower"
        );
        assert_eq!(class_from_path(Path::new("full_binary_dog.bin")), "dog");
        assert_eq!(class_from_path(Path::new("x/fish.npy")), "fish");
    }

    #[test]
    fn limited_lines() {
        let data = b"one\r\ntwo\n\nlast".to_vec();
        let mut r = &data[..];
        let mut out = vec![];
        while let Some(l) = read_line_limited(&mut r).unwrap() {
            out.push((String::from_utf8(l.0).unwrap(), l.1));
        }
        assert_eq!(
            out,
            vec![
                ("one".into(), false),
                ("two".into(), false),
                ("".into(), false),
                ("last".into(), true)
            ]
        );
    }
}
