//! TFRecord framing: `u64 length | u32 masked crc32c(length) | data | u32 masked crc32c(data)`,
//! all little-endian, as written by TensorFlow's `tf.io.TFRecordWriter`.
//!
//! Written by hand because the format is twenty lines and no maintained crate offers a
//! streaming reader that reports the byte offset of corruption; the CRC itself comes from the
//! `crc32c` crate (hardware accelerated).

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::readfull::read_up_to;

/// TensorFlow's CRC mask delta (tensorflow/core/lib/hash/crc32c.h, `kMaskDelta`).
const MASK_DELTA: u32 = 0xa282_ead8;

/// Largest record accepted by the reader: anything bigger is treated as a corrupt length.
pub const MAX_RECORD_BYTES: u64 = 256 << 20;

/// `crc32c` masked the way TensorFlow stores it in TFRecord files.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(MASK_DELTA)
}

/// Frames `data` as one TFRecord record into `out` (appending).
pub fn frame_record(data: &[u8], out: &mut Vec<u8>) {
    append_record(out, |b| b.extend_from_slice(data));
}

/// Appends one TFRecord record whose data `write` appends to `out`, returning the framed
/// length: length (u64 LE), masked CRC32C of the length, data, masked CRC32C of the data. The
/// header is reserved first and filled in afterwards, so the data is written once, in place.
pub fn append_record(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) -> usize {
    let start = out.len();
    out.resize(start + 12, 0);
    write(out);
    let len = ((out.len() - start - 12) as u64).to_le_bytes();
    out[start..start + 8].copy_from_slice(&len);
    out[start + 8..start + 12].copy_from_slice(&masked_crc32c(&len).to_le_bytes());
    let crc = masked_crc32c(&out[start + 12..]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.len() - start
}

/// Writes TFRecord records to any `Write`.
pub struct TfRecordWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> TfRecordWriter<W> {
    pub fn new(inner: W) -> Self {
        TfRecordWriter {
            inner,
            buf: Vec::new(),
        }
    }
    pub fn write_record(&mut self, data: &[u8]) -> io::Result<()> {
        self.buf.clear();
        frame_record(data, &mut self.buf);
        self.inner.write_all(&self.buf)
    }
    /// Writes bytes that are already framed records (see [`frame_record`]).
    pub fn write_framed(&mut self, framed: &[u8]) -> io::Result<()> {
        self.inner.write_all(framed)
    }
    pub fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
    pub fn get_ref(&self) -> &W {
        &self.inner
    }
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl TfRecordWriter<BufWriter<File>> {
    pub fn create(path: &Path) -> io::Result<Self> {
        Ok(TfRecordWriter::new(BufWriter::with_capacity(
            1 << 20,
            File::create(path)?,
        )))
    }
}

/// A problem found while reading a TFRecord file.
#[derive(Debug, thiserror::Error)]
pub enum TfRecordError {
    #[error("{path}: I/O error at byte {offset}: {source}")]
    Io {
        path: PathBuf,
        offset: u64,
        source: io::Error,
    },
    #[error("{path}: corrupt record at byte {offset}: {what}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        what: String,
    },
    #[error("{path}: truncated record at byte {offset}: {what} (interrupted write?)")]
    Truncated {
        path: PathBuf,
        offset: u64,
        what: String,
    },
}

impl TfRecordError {
    pub fn offset(&self) -> u64 {
        match self {
            TfRecordError::Io { offset, .. }
            | TfRecordError::Corrupt { offset, .. }
            | TfRecordError::Truncated { offset, .. } => *offset,
        }
    }
}

/// Whether `path` holds TFRecords: its name ends in `.tfrecord`, `.tfrecords` or `.tfrec`, or
/// its first 12 bytes are a record header (a length followed by its masked CRC). The one rule
/// every command uses to tell shards from drawing files.
pub fn is_tfrecord(path: &Path) -> io::Result<bool> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if [".tfrecord", ".tfrecords", ".tfrec"]
        .iter()
        .any(|e| name.ends_with(e))
    {
        return Ok(true);
    }
    let mut head = [0u8; 12];
    let n = read_up_to(&mut crate::storage::open(path)?, &mut head)?;
    Ok(n == 12 && masked_crc32c(&head[..8]) == u32::from_le_bytes(head[8..].try_into().unwrap()))
}

/// Counts the records of a TFRecord file by walking the headers: each length CRC is checked,
/// data CRCs are not (they are checked when the records are read).
pub fn count_records(path: &Path) -> Result<u64, TfRecordError> {
    let io_at = |offset: u64| {
        move |source| TfRecordError::Io {
            path: path.to_path_buf(),
            offset,
            source,
        }
    };
    let file = crate::storage::open(path).map_err(io_at(0))?;
    let len = crate::storage::len(path).map_err(io_at(0))?;
    let mut r = BufReader::with_capacity(1 << 16, file);
    let (mut pos, mut n) = (0u64, 0u64);
    let mut header = [0u8; 12];
    while pos < len {
        if len - pos < 12 {
            return Err(TfRecordError::Truncated {
                path: path.to_path_buf(),
                offset: pos,
                what: format!("header has {} of 12 bytes", len - pos),
            });
        }
        r.read_exact(&mut header).map_err(io_at(pos))?;
        let len_bytes: [u8; 8] = header[..8].try_into().expect("8 bytes");
        let crc = u32::from_le_bytes(header[8..].try_into().expect("4 bytes"));
        if masked_crc32c(&len_bytes) != crc {
            return Err(TfRecordError::Corrupt {
                path: path.to_path_buf(),
                offset: pos,
                what: "length CRC mismatch".into(),
            });
        }
        let rec = u64::from_le_bytes(len_bytes);
        if pos + 16 + rec > len {
            return Err(TfRecordError::Truncated {
                path: path.to_path_buf(),
                offset: pos,
                what: format!("record of {rec} bytes runs past the end of the file"),
            });
        }
        r.seek_relative(rec as i64 + 4).map_err(io_at(pos))?;
        pos += 16 + rec;
        n += 1;
    }
    Ok(n)
}

/// Streaming TFRecord reader that verifies both CRCs of every record.
pub struct TfRecordReader<R: Read> {
    inner: R,
    path: PathBuf,
    offset: u64,
    failed: bool,
}

impl TfRecordReader<BufReader<crate::storage::Reader>> {
    /// Opens a local file or an object-store URL (see [`crate::storage`]).
    pub fn open(path: &Path) -> Result<Self, TfRecordError> {
        let f = crate::storage::open(path).map_err(|source| TfRecordError::Io {
            path: path.to_path_buf(),
            offset: 0,
            source,
        })?;
        Ok(TfRecordReader::new(
            BufReader::with_capacity(1 << 20, f),
            path,
        ))
    }
}

impl<R: Read> TfRecordReader<R> {
    /// `path` is only used in error messages.
    pub fn new(inner: R, path: &Path) -> Self {
        TfRecordReader {
            inner,
            path: path.to_path_buf(),
            offset: 0,
            failed: false,
        }
    }

    /// Byte offset of the next record.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads the next record into `buf` (replacing its content). `Ok(false)` at a clean end of file.
    pub fn read_into(&mut self, buf: &mut Vec<u8>) -> Result<bool, TfRecordError> {
        let start = self.offset;
        let mut header = [0u8; 12];
        let got = read_up_to(&mut self.inner, &mut header).map_err(|e| self.io(start, e))?;
        if got == 0 {
            return Ok(false);
        }
        if got < header.len() {
            return Err(self.truncated(start, format!("header has {got} of 12 bytes")));
        }
        let len_bytes: [u8; 8] = header[..8].try_into().expect("8 bytes");
        let len_crc = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        if masked_crc32c(&len_bytes) != len_crc {
            return Err(self.corrupt(start, "length CRC mismatch".into()));
        }
        let len = u64::from_le_bytes(len_bytes);
        if len > MAX_RECORD_BYTES {
            return Err(self.corrupt(
                start,
                format!("record length {len} exceeds {MAX_RECORD_BYTES}"),
            ));
        }
        buf.clear();
        buf.resize(len as usize + 4, 0);
        let got = read_up_to(&mut self.inner, buf).map_err(|e| self.io(start, e))?;
        if got < buf.len() {
            return Err(self.truncated(start, format!("data has {got} of {} bytes", len + 4)));
        }
        let crc = u32::from_le_bytes(buf[len as usize..].try_into().expect("4 bytes"));
        buf.truncate(len as usize);
        if masked_crc32c(buf) != crc {
            return Err(self.corrupt(start, "data CRC mismatch".into()));
        }
        self.offset = start + 12 + len + 4;
        Ok(true)
    }

    fn io(&mut self, offset: u64, source: io::Error) -> TfRecordError {
        self.failed = true;
        TfRecordError::Io {
            path: self.path.clone(),
            offset,
            source,
        }
    }
    fn corrupt(&mut self, offset: u64, what: String) -> TfRecordError {
        self.failed = true;
        TfRecordError::Corrupt {
            path: self.path.clone(),
            offset,
            what,
        }
    }
    fn truncated(&mut self, offset: u64, what: String) -> TfRecordError {
        self.failed = true;
        TfRecordError::Truncated {
            path: self.path.clone(),
            offset,
            what,
        }
    }
}

/// Yields records; stops after the first error (a corrupt length makes the rest unreadable).
impl<R: Read> Iterator for TfRecordReader<R> {
    type Item = Result<Vec<u8>, TfRecordError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let mut buf = Vec::new();
        match self.read_into(&mut buf) {
            Ok(true) => Some(Ok(buf)),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_golden_values() {
        // crc32c("123456789") = 0xE3069283 (the CRC-32C check value, RFC 3720 / Castagnoli).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        // Masked CRC of the length field of an empty record (8 zero bytes): 0x07980329, computed
        // with an independent bit-by-bit Python CRC-32C and TensorFlow's masking formula.
        assert_eq!(masked_crc32c(&0u64.to_le_bytes()), 0x0798_0329);
    }

    #[test]
    fn sniffs_and_counts_records_by_their_headers() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = TfRecordWriter::new(Vec::new());
        for r in [&b"a"[..], b"", &[9u8; 300]] {
            w.write_record(r).unwrap();
        }
        let bytes = w.into_inner();
        let shard = dir.path().join("train-00000");
        std::fs::write(&shard, &bytes).unwrap();
        assert!(is_tfrecord(&shard).unwrap());
        assert_eq!(count_records(&shard).unwrap(), 3);
        // Drawings are not records; a name says so even when the file is empty.
        let ndjson = dir.path().join("cat.ndjson");
        std::fs::write(&ndjson, b"{\"word\":\"cat\",\"drawing\":[]}\n").unwrap();
        assert!(!is_tfrecord(&ndjson).unwrap());
        let named = dir.path().join("empty.tfrecord");
        std::fs::write(&named, b"").unwrap();
        assert!(is_tfrecord(&named).unwrap());
        assert_eq!(count_records(&named).unwrap(), 0);
        // Cut inside the last record / flip a length byte: named with the byte offset.
        std::fs::write(&shard, &bytes[..bytes.len() - 1]).unwrap();
        let e = count_records(&shard).unwrap_err();
        assert!(
            matches!(e, TfRecordError::Truncated { offset: 33, .. }),
            "{e}"
        );
        let mut bad = bytes.clone();
        bad[17] ^= 1; // the second record's length
        std::fs::write(&shard, &bad).unwrap();
        let e = count_records(&shard).unwrap_err();
        assert!(
            matches!(e, TfRecordError::Corrupt { offset: 17, .. }),
            "{e}"
        );
    }

    #[test]
    fn round_trip_and_offsets() {
        let mut w = TfRecordWriter::new(Vec::new());
        w.write_record(b"hello").unwrap();
        w.write_record(b"").unwrap();
        w.write_record(&[7u8; 1000]).unwrap();
        let bytes = w.into_inner();
        assert_eq!(bytes.len(), 3 * 16 + 5 + 1000);
        let mut r = TfRecordReader::new(&bytes[..], Path::new("mem"));
        let recs: Vec<Vec<u8>> = r.by_ref().map(|x| x.unwrap()).collect();
        assert_eq!(recs, vec![b"hello".to_vec(), vec![], vec![7u8; 1000]]);
        assert_eq!(r.offset(), bytes.len() as u64);
    }

    #[test]
    fn append_record_frames_in_place() {
        for data in [&b""[..], b"x", &[9u8; 5000]] {
            // The framing spelled out: length, its masked CRC, data, its masked CRC.
            let len = (data.len() as u64).to_le_bytes();
            let mut expected = b"prefix".to_vec();
            expected.extend_from_slice(&len);
            expected.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
            expected.extend_from_slice(data);
            expected.extend_from_slice(&masked_crc32c(data).to_le_bytes());
            let mut got = b"prefix".to_vec();
            let n = append_record(&mut got, |b| b.extend_from_slice(data));
            assert_eq!(got, expected);
            assert_eq!(n, data.len() + 16);
        }
    }

    #[test]
    fn corruption_is_located() {
        let mut w = TfRecordWriter::new(Vec::new());
        w.write_record(b"first").unwrap();
        w.write_record(b"second").unwrap();
        let mut bytes = w.into_inner();
        let second = 16 + 5;
        bytes[second + 12 + 2] ^= 1; // flip a bit in the second record's data
        let mut r = TfRecordReader::new(&bytes[..], Path::new("x.tfrecord"));
        assert_eq!(r.next().unwrap().unwrap(), b"first");
        let err = r.next().unwrap().unwrap_err();
        assert_eq!(err.offset(), second as u64);
        assert!(err.to_string().contains("x.tfrecord"), "{err}");
        assert!(err.to_string().contains("data CRC"), "{err}");
        assert!(r.next().is_none());

        let mut bytes2 = bytes.clone();
        bytes2[second + 12 + 2] ^= 1; // repair
        bytes2[second] ^= 1; // corrupt the length
        let err = TfRecordReader::new(&bytes2[..], Path::new("y"))
            .nth(1)
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("length CRC"), "{err}");
    }

    #[test]
    fn truncation_is_reported() {
        let mut w = TfRecordWriter::new(Vec::new());
        w.write_record(b"complete").unwrap();
        w.write_record(b"cut short").unwrap();
        let bytes = w.into_inner();
        let cut = &bytes[..bytes.len() - 3];
        let mut r = TfRecordReader::new(cut, Path::new("z"));
        assert!(r.next().unwrap().is_ok());
        let err = r.next().unwrap().unwrap_err();
        assert!(
            matches!(err, TfRecordError::Truncated { offset: 24, .. }),
            "{err}"
        );
    }
}
