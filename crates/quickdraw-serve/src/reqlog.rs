//! `--log-requests DIR`: every served drawing appended as one line of QuickDraw raw NDJSON
//! (`quickdraw_data::ingest::ndjson::to_line`, so `convert` and `skew` read it back) with a
//! sidecar field `"serving"` holding the model version and the prediction.
//!
//! Files are `DIR/<word>.ndjson`, one per class, so `quickdraw convert DIR/*.ndjson` takes the
//! class from the file name as for Google's files. `word` is the client's `word` when it names a
//! class of the model, else the predicted class (`serving.word_source` says which: `client` or
//! `prediction`; a client word that is not a class is kept in `serving.client_word`).
//! `recognized` is whether the top-1 prediction equals `word` (QuickDraw's meaning: the game's
//! classifier recognised the drawing), `timestamp` the time it was served, `key_id` the
//! client's or a fresh random one. Image and tensor instances have no strokes and are not logged.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use quickdraw_data::Drawing;
use quickdraw_data::ingest::ndjson::to_line;
use serde_json::{Value, json};

/// Name of the sidecar field in logged lines.
pub const SIDECAR: &str = "serving";

#[derive(Debug)]
pub struct RequestLog {
    dir: PathBuf,
    files: Mutex<HashMap<String, File>>,
}

/// What the server knows about one served drawing.
#[derive(Debug, Clone)]
pub struct Served<'a> {
    pub model: &'a str,
    pub version: u64,
    pub request_id: u64,
    pub verb: &'a str,
    pub labels: &'a [String],
    /// Best classes first (class index, probability); at least one.
    pub top: &'a [(usize, f32)],
}

/// A file name for a class: path separators and control characters replaced.
pub fn file_name_for(word: &str) -> String {
    let mut s: String = word
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        s.insert(0, '_');
    }
    format!("{s}.ndjson")
}

fn now() -> (i64, u128) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, d.as_nanos())
}

fn fresh_key_id(seed: u128) -> u64 {
    // A hash of the time and request: unique enough for logs, no rand dependency.
    quickdraw_data::split::mix64((seed as u64) ^ ((seed >> 64) as u64)) >> 11 // 53 bits: exact in JavaScript numbers too
}

/// The drawing as it is logged (word, recognized, timestamp, key_id set) and its sidecar.
pub fn logged(d: &Drawing, s: &Served<'_>, index: usize) -> (Drawing, Value) {
    let (secs, nanos) = now();
    let best = s.top[0].0;
    let client_is_class = !d.word.is_empty() && s.labels.contains(&d.word);
    let word = if client_is_class {
        d.word.clone()
    } else {
        s.labels[best].clone()
    };
    let mut out = d.clone();
    out.recognized = s.labels[best] == word;
    out.timestamp = secs;
    if out.key_id == 0 {
        out.key_id = fresh_key_id(nanos ^ ((s.request_id as u128) << 20) ^ index as u128);
    }
    let mut side = json!({
        "model": s.model,
        "version": s.version,
        "request_id": s.request_id,
        "verb": s.verb,
        "class": best,
        "class_name": s.labels[best],
        "probability": s.top[0].1,
        "top_k": s.top.iter().map(|(c, p)| json!([s.labels[*c], p])).collect::<Vec<_>>(),
        "word_source": if client_is_class { "client" } else { "prediction" },
    });
    if !client_is_class && !d.word.is_empty() {
        side["client_word"] = Value::String(d.word.clone());
    }
    out.word = word;
    (out, side)
}

/// One NDJSON line: Google's record fields plus the sidecar.
pub fn line(d: &Drawing, sidecar: &Value) -> String {
    let mut l = to_line(d);
    l.pop(); // the closing brace
    l.push_str(",\"");
    l.push_str(SIDECAR);
    l.push_str("\":");
    l.push_str(&sidecar.to_string());
    l.push('}');
    l
}

impl RequestLog {
    pub fn open(dir: &Path) -> io::Result<RequestLog> {
        std::fs::create_dir_all(dir)?;
        Ok(RequestLog {
            dir: dir.to_path_buf(),
            files: Mutex::new(HashMap::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one served drawing (a whole line per write, flushed).
    pub fn log(&self, d: &Drawing, s: &Served<'_>, index: usize) -> io::Result<()> {
        let (d, side) = logged(d, s, index);
        let mut text = line(&d, &side);
        text.push('\n');
        let name = file_name_for(&d.word);
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if !files.contains_key(&name) {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(&name))?;
            files.insert(name.clone(), f);
        }
        let f = files.get_mut(&name).expect("just inserted");
        f.write_all(text.as_bytes())?;
        f.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickdraw_data::ingest::ndjson::parse_line;
    use quickdraw_data::{Ink, Stroke};

    #[test]
    fn logged_lines_parse_back_as_quickdraw_records() {
        let tmp = tempfile::tempdir().unwrap();
        let log = RequestLog::open(&tmp.path().join("logs")).unwrap();
        let labels: Vec<String> = vec!["cat".into(), "dog/wolf".into()];
        let mut s = Stroke::new(vec![0.5, 10.0], vec![1.0, 2.0]);
        s.t = Some(vec![0.0, 16.0]);
        let d = Drawing {
            key_id: 0,
            word: "unicorn".into(),
            countrycode: String::new(),
            timestamp: 0,
            recognized: false,
            ink: Ink::Strokes(vec![s]),
        };
        let served = Served {
            model: "quickdraw",
            version: 3,
            request_id: 7,
            verb: "predict",
            labels: &labels,
            top: &[(1, 0.75), (0, 0.25)],
        };
        log.log(&d, &served, 0).unwrap();
        let mut cat = d.clone();
        cat.word = "cat".into();
        log.log(&cat, &served, 1).unwrap();

        let text = std::fs::read_to_string(tmp.path().join("logs/dog_wolf.ndjson")).unwrap();
        let back = parse_line(text.trim_end().as_bytes()).unwrap();
        assert_eq!(back.word, "dog/wolf");
        assert!(back.recognized);
        assert!(back.key_id > 0);
        assert_eq!(back.strokes().unwrap()[0].t, Some(vec![0.0, 16.0]));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["serving"]["version"], 3);
        assert_eq!(v["serving"]["word_source"], "prediction");
        assert_eq!(v["serving"]["client_word"], "unicorn");
        assert_eq!(v["serving"]["top_k"][0][0], "dog/wolf");

        let text = std::fs::read_to_string(tmp.path().join("logs/cat.ndjson")).unwrap();
        let back = parse_line(text.trim_end().as_bytes()).unwrap();
        assert_eq!(back.word, "cat");
        assert!(!back.recognized, "the model said dog/wolf");
    }
}
