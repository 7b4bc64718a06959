//! Labels from each record's `word` (`convert --label-from word`, or `auto` on a file that
//! mixes classes): such files are split by word into per-class scratch NDJSON files before the
//! per-class conversion, with a side file of each line's original line number, so that rejects
//! still name the original file and line and the manifest lists the original file with its hash.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use super::{
    ConvertError, GroupOut, InputPlan, Progress, RejectLog, check_cancel, format_name, io_err,
};
use crate::ingest::{self, Format, LabelFrom, Unit, UnitReader, parse_unit};
use crate::manifest::{ClassCounts, InputFile};
use crate::validate::{Reject, RejectReason};

/// Records sampled per NDJSON file by `--label-from auto`.
pub const SNIFF_RECORDS: usize = 1000;
/// `auto` keeps the file name as the label when at least this share of the sampled records
/// carry it (a per-class file with a few stray records: those are rejected as
/// `label_mismatch`); below it the file is read as mixed.
pub const FILE_LABEL_SHARE: f64 = 0.9;

/// Where the lines of a scratch file came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    /// The mixed input file.
    pub path: PathBuf,
    /// One little-endian `u64` per scratch line: its line number in `path`.
    pub lines: PathBuf,
}

/// Only the word of a record (the rest is skipped, not built).
#[derive(serde::Deserialize)]
struct WordOnly<'a> {
    #[serde(borrow)]
    word: Cow<'a, str>,
}

fn word_of(bytes: &[u8]) -> Option<String> {
    serde_json::from_slice::<WordOnly>(bytes)
        .ok()
        .map(|w| w.word.into_owned())
        .filter(|w| !w.is_empty())
}

/// `--label-from auto` for one NDJSON file: [`LabelFrom::File`] when at least
/// [`FILE_LABEL_SHARE`] of its first [`SNIFF_RECORDS`] records with a word carry the file's
/// class, else [`LabelFrom::Word`]. Binary and npy files are always labelled by their name.
pub fn sniff(
    path: &Path,
    format: Format,
    gzip: bool,
    class: &str,
) -> Result<LabelFrom, ConvertError> {
    if format != Format::Ndjson {
        return Ok(LabelFrom::File);
    }
    let mut r = UnitReader::open_as(path, format, gzip, None)?;
    let (mut seen, mut same) = (0usize, 0usize);
    while seen < SNIFF_RECORDS {
        let Some(u) = r.next_record()? else { break };
        if let Some(w) = word_of(&u.bytes) {
            seen += 1;
            same += usize::from(w == class);
        }
    }
    Ok(
        if seen > 0 && (same as f64) < FILE_LABEL_SHARE * seen as f64 {
            LabelFrom::Word
        } else {
            LabelFrom::File
        },
    )
}

/// The mixed files split by word.
pub struct Demuxed {
    /// Per word, its scratch files (one per mixed input holding that word), in input order.
    pub files: BTreeMap<String, Vec<InputPlan>>,
    /// Records that cannot be labelled (rejected) or whose word is not a selected class
    /// (filtered, `class_not_selected`), and the mixed inputs themselves for the manifest.
    pub out: GroupOut,
    /// Where those rejects are listed (merged into `rejects.jsonl` after the classes').
    pub rejects: PathBuf,
}

/// Splits every mixed file by word into `tmp/mixed/`. With `selected`, words outside it are
/// counted as filtered instead of becoming classes.
pub fn demux(
    max_listed: u64,
    mixed: &[InputPlan],
    selected: Option<&[String]>,
    tmp: &Path,
    progress: &Progress,
) -> Result<Demuxed, ConvertError> {
    let dir = tmp.join("mixed");
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let mut rejects = RejectLog::create(tmp.join("rejects-mixed.jsonl"), max_listed)?;
    let mut d = Demuxed {
        files: BTreeMap::new(),
        out: GroupOut {
            counts: ClassCounts::default(),
            inputs: Vec::new(),
            per_split: [0; 3],
        },
        rejects: PathBuf::new(),
    };
    for (i, f) in mixed.iter().enumerate() {
        let mut sink = Sink::new(&dir, i, MAX_OPEN_WORDS);
        let counter = Arc::new(AtomicU64::new(0));
        let mut reader = UnitReader::open_as(&f.path, f.format, f.gzip, Some(counter.clone()))?;
        let mut format = None;
        let mut reported = 0u64;
        loop {
            let batch = reader.next_batch(super::BATCH_RECORDS)?;
            if batch.is_empty() {
                break;
            }
            check_cancel(progress)?;
            let routed: Vec<Result<String, Reject>> = batch.par_iter().map(route).collect();
            for (u, r) in batch.iter().zip(routed) {
                match r {
                    Ok(word) if selected.is_some_and(|s| !s.contains(&word)) => {
                        d.out.counts.read += 1;
                        *d.out
                            .counts
                            .filtered
                            .entry("class_not_selected".into())
                            .or_default() += 1;
                    }
                    Ok(word) => {
                        if format.is_none() {
                            if let Ok(first) = ingest::ndjson::parse_line(&u.bytes) {
                                format = Some(format_name(f.format, Some(&first)));
                            }
                        }
                        sink.write(&word, u)?;
                    }
                    Err(rej) => {
                        d.out.counts.read += 1;
                        rejects.add(&mut d.out.counts, &f.path, "line", u.index, &rej)?;
                    }
                }
            }
            let now = counter.load(Ordering::Relaxed);
            progress
                .bytes_read
                .fetch_add(now - reported, Ordering::Relaxed);
            reported = now;
        }
        let (sha256, bytes) = reader.finish()?;
        d.out.inputs.push(InputFile {
            path: f.path.display().to_string(),
            format: format.unwrap_or_else(|| format_name(f.format, None)),
            gzip: f.gzip,
            bytes,
            sha256,
            class: String::new(),
            label_from: LabelFrom::Word,
        });
        for (word, plan) in sink.finish(f)? {
            d.files.entry(word).or_default().push(plan);
        }
    }
    d.rejects = rejects.finish()?;
    Ok(d)
}

/// The class of one record of a mixed file, or why it has none (the full parser names the
/// reason; a record that parses but has an empty word is `missing_field`).
fn route(u: &Unit) -> Result<String, Reject> {
    if u.reject.is_none() {
        if let Some(w) = word_of(&u.bytes) {
            if w.chars().any(char::is_control) || w.trim() != w {
                return Err(Reject::new(
                    RejectReason::WrongType,
                    format!(
                        "word {w:?} is no class name (control characters or surrounding spaces)"
                    ),
                ));
            }
            return Ok(w);
        }
    }
    match parse_unit(Format::Ndjson, u, "", LabelFrom::Word) {
        Err(r) => Err(r),
        Ok(_) => Err(Reject::new(
            RejectReason::MissingField,
            "empty \"word\": a record of a mixed file must name its class",
        )),
    }
}

/// Words of one mixed input whose scratch files are open at once (two files each); the least
/// recently written one is closed beyond that and reopened for appending when needed, so a file
/// with thousands of distinct words stays under the usual limit of 1024 open files.
const MAX_OPEN_WORDS: usize = 128;

/// One word's scratch files: its lines, and their original line numbers.
struct WordFiles {
    data: PathBuf,
    open: Option<(BufWriter<File>, BufWriter<File>)>,
    last_used: u64,
}

/// The scratch files of one mixed input: per word, its lines and their line numbers.
struct Sink<'a> {
    dir: &'a Path,
    file: usize,
    words: BTreeMap<String, WordFiles>,
    open: usize,
    max_open: usize,
    tick: u64,
}

impl<'a> Sink<'a> {
    fn new(dir: &'a Path, file: usize, max_open: usize) -> Self {
        Sink {
            dir,
            file,
            words: BTreeMap::new(),
            open: 0,
            max_open: max_open.max(1),
            tick: 0,
        }
    }

    fn write(&mut self, word: &str, u: &Unit) -> Result<(), ConvertError> {
        self.tick += 1;
        if !self.words.contains_key(word) {
            let k = self.words.len();
            let data = self.dir.join(format!("{}-{k}.ndjson", self.file));
            let w = WordFiles {
                data,
                open: None,
                last_used: 0,
            };
            self.words.insert(word.to_string(), w);
        }
        if self.words[word].open.is_none() {
            if self.open >= self.max_open {
                self.close_least_recent()?;
            }
            let w = self.words.get_mut(word).expect("inserted above");
            let lines = w.data.with_extension("lines");
            let open = |p: &Path| {
                File::options()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map(|f| BufWriter::with_capacity(1 << 16, f))
            };
            let dw = open(&w.data).map_err(io_err(&w.data))?;
            let lw = open(&lines).map_err(io_err(&lines))?;
            w.open = Some((dw, lw));
            self.open += 1;
        }
        let w = self.words.get_mut(word).expect("inserted above");
        w.last_used = self.tick;
        let (dw, lw) = w.open.as_mut().expect("opened above");
        dw.write_all(&u.bytes)
            .and_then(|()| dw.write_all(b"\n"))
            .and_then(|()| lw.write_all(&u.index.to_le_bytes()))
            .map_err(io_err(&w.data))
    }

    fn close_least_recent(&mut self) -> Result<(), ConvertError> {
        let Some(w) = self
            .words
            .values_mut()
            .filter(|w| w.open.is_some())
            .min_by_key(|w| w.last_used)
        else {
            return Ok(());
        };
        let (mut dw, mut lw) = w.open.take().expect("filtered on open");
        dw.flush().map_err(io_err(&w.data))?;
        lw.flush()
            .map_err(io_err(&w.data.with_extension("lines")))?;
        self.open -= 1;
        Ok(())
    }

    fn finish(self, f: &InputPlan) -> Result<Vec<(String, InputPlan)>, ConvertError> {
        let mut out = Vec::with_capacity(self.words.len());
        for (word, w) in self.words {
            if let Some((mut dw, mut lw)) = w.open {
                dw.flush().map_err(io_err(&w.data))?;
                lw.flush()
                    .map_err(io_err(&w.data.with_extension("lines")))?;
            }
            let plan = InputPlan {
                path: w.data.clone(),
                format: Format::Ndjson,
                gzip: false,
                bytes: std::fs::metadata(&w.data).map_or(0, |m| m.len()),
                class: word.clone(),
                label_from: LabelFrom::File,
                origin: Some(Arc::new(Origin {
                    path: f.path.clone(),
                    lines: w.data.with_extension("lines"),
                })),
            };
            out.push((word, plan));
        }
        Ok(out)
    }
}

/// Reads the original line numbers of a scratch file, one per unit, in order.
pub struct OriginLines {
    r: BufReader<File>,
    path: PathBuf,
    /// Lines in the scratch file, and how many were read.
    total: u64,
    read: u64,
}

impl OriginLines {
    pub fn open(o: &Origin) -> Result<Self, ConvertError> {
        let f = File::open(&o.lines).map_err(io_err(&o.lines))?;
        let total = f.metadata().map_err(io_err(&o.lines))?.len() / 8;
        Ok(OriginLines {
            r: BufReader::with_capacity(1 << 16, f),
            path: o.lines.clone(),
            total,
            read: 0,
        })
    }

    pub fn next_line(&mut self) -> Result<u64, ConvertError> {
        let mut b = [0u8; 8];
        self.r.read_exact(&mut b).map_err(io_err(&self.path))?;
        self.read += 1;
        Ok(u64::from_le_bytes(b))
    }

    /// Lines of the scratch file not read (the class's quotas filled first).
    pub fn unread(&self) -> u64 {
        self.total - self.read
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_keeps_per_class_files_and_finds_mixed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let line = |w: &str| format!("{{\"word\":\"{w}\",\"drawing\":[]}}\n");
        let write = |name: &str, words: &[&str]| {
            let p = dir.path().join(name);
            std::fs::write(&p, words.iter().map(|w| line(w)).collect::<String>()).unwrap();
            p
        };
        // 19 of 20 carry the file's class (95% >= 90%): labelled by file.
        let mut cats = vec!["cat"; 19];
        cats.push("dog");
        let p = write("cat.ndjson", &cats);
        assert_eq!(
            sniff(&p, Format::Ndjson, false, "cat").unwrap(),
            LabelFrom::File
        );
        let p = write("log.ndjson", &["cat", "dog", "cat"]);
        assert_eq!(
            sniff(&p, Format::Ndjson, false, "log").unwrap(),
            LabelFrom::Word
        );
        assert_eq!(
            sniff(&p, Format::Binary, false, "log").unwrap(),
            LabelFrom::File
        );
    }

    #[test]
    fn more_words_than_open_files_keep_every_line_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let input = InputPlan {
            path: dir.path().join("log.ndjson"),
            format: Format::Ndjson,
            gzip: false,
            bytes: 0,
            class: "log".into(),
            label_from: LabelFrom::Word,
            origin: None,
        };
        // 3 files open at most, 7 words written round-robin, 5 rounds: every word's scratch
        // file is closed and reopened several times.
        let mut sink = Sink::new(dir.path(), 0, 3);
        let mut index = 0;
        for round in 0..5 {
            for w in 0..7 {
                index += 1;
                let unit = Unit {
                    index,
                    bytes: format!("{{\"word\":\"w{w}\",\"round\":{round}}}").into_bytes(),
                    truncated: false,
                    reject: None,
                };
                sink.write(&format!("w{w}"), &unit).unwrap();
                assert!(sink.open <= 3);
            }
        }
        let files = sink.finish(&input).unwrap();
        assert_eq!(files.len(), 7);
        for (word, plan) in files {
            let text = std::fs::read_to_string(&plan.path).unwrap();
            let rounds: Vec<&str> = text.lines().collect();
            assert_eq!(rounds.len(), 5, "{word}");
            assert!(rounds[4].contains("\"round\":4") && rounds[0].contains("\"round\":0"));
            let origin = plan.origin.unwrap();
            let mut lines = OriginLines::open(&origin).unwrap();
            let w: u64 = word[1..].parse().unwrap();
            for round in 0..5 {
                assert_eq!(lines.next_line().unwrap(), round * 7 + w + 1);
            }
            assert_eq!(lines.unread(), 0);
        }
    }

    #[test]
    fn records_without_a_word_are_rejected_with_the_reason() {
        let unit = |s: &str| Unit {
            index: 1,
            bytes: s.as_bytes().to_vec(),
            truncated: false,
            reject: None,
        };
        assert_eq!(
            route(&unit(r#"{"word":"cat","drawing":[]}"#)).unwrap(),
            "cat"
        );
        assert_eq!(
            route(&unit("{oops")).unwrap_err().reason,
            RejectReason::InvalidJson
        );
        assert_eq!(
            route(&unit(r#"{"drawing":[[[1,2],[3,4]]]}"#))
                .unwrap_err()
                .reason,
            RejectReason::MissingField
        );
        // A word that cannot be one line of labels.txt is no class.
        for w in [r#""cat\ndog""#, r#""cat ""#, r#""\u0007""#] {
            let r = route(&unit(&format!(r#"{{"word":{w},"drawing":[]}}"#))).unwrap_err();
            assert_eq!(r.reason, RejectReason::WrongType, "{w}");
        }
    }
}
