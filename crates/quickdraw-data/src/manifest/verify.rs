//! The integrity check of a dataset directory against its manifest (`quickdraw stats <dir>`,
//! and anything else that must not trust a directory blindly).

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use serde::Serialize;

use super::{
    DatasetManifest, LABELS_FILE, MANIFEST_FILE, ManifestError, REJECTS_FILE, RejectLine,
    ShardFile, read_labels,
};
use crate::convert::is_shard_name;
use crate::features::decode_example;
use crate::tfrecord::TfRecordReader;

/// Most decode problems reported per shard (the rest are counted).
const MAX_PROBLEMS_PER_SHARD: usize = 10;

/// The result of checking one dataset directory.
#[derive(Debug, Serialize)]
pub struct DatasetCheck {
    pub path: String,
    pub manifest: DatasetManifest,
    pub shards_checked: usize,
    pub examples_checked: u64,
    pub bytes_checked: u64,
    /// Examples found per split and class name.
    pub found: BTreeMap<String, BTreeMap<String, u64>>,
    pub problems: Vec<String>,
    pub ok: bool,
}

/// What reading one shard found.
struct ShardResult {
    /// The shard's file or object was not found (or its size could not be read).
    missing: bool,
    examples: u64,
    bytes: u64,
    per_label: BTreeMap<i64, u64>,
    problems: Vec<String>,
}

fn check_shard(path: &Path, m: &DatasetManifest) -> ShardResult {
    let mut res = ShardResult {
        missing: false,
        examples: 0,
        bytes: 0,
        per_label: BTreeMap::new(),
        problems: Vec::new(),
    };
    match crate::storage::len(path) {
        Ok(len) => res.bytes = len,
        Err(e) => {
            res.missing = true;
            res.problems.push(format!("{}: {e}", path.display()));
            return res;
        }
    }
    let mut reader = match TfRecordReader::open(path) {
        Ok(r) => r,
        Err(e) => {
            res.problems.push(e.to_string());
            return res;
        }
    };
    let mut buf = Vec::new();
    let mut extra = 0usize;
    let mut report = |res: &mut ShardResult, msg: String| {
        if res.problems.len() < MAX_PROBLEMS_PER_SHARD {
            res.problems.push(msg);
        } else {
            extra += 1;
        }
    };
    loop {
        let offset = reader.offset();
        match reader.read_into(&mut buf) {
            Ok(false) => break,
            Err(e) => {
                // The framing is lost: the rest of the file cannot be read.
                let msg = format!("{e} (after {} readable records)", res.examples);
                report(&mut res, msg);
                break;
            }
            Ok(true) => {}
        }
        let index = res.examples;
        res.examples += 1;
        match decode_example(&buf, &m.features) {
            Err(e) => report(
                &mut res,
                format!("{}: record {index} at byte {offset}: {e}", path.display()),
            ),
            Ok(ex) => {
                *res.per_label.entry(ex.label).or_default() += 1;
                match usize::try_from(ex.label)
                    .ok()
                    .and_then(|l| m.classes.get(l))
                {
                    None => report(
                        &mut res,
                        format!(
                            "{}: record {index} at byte {offset}: label {} is not below the number of classes ({})",
                            path.display(),
                            ex.label,
                            m.classes.len()
                        ),
                    ),
                    Some(c) if *c != ex.word => report(
                        &mut res,
                        format!(
                            "{}: record {index} at byte {offset}: label {} is {c:?} but the word is {:?}",
                            path.display(),
                            ex.label,
                            ex.word
                        ),
                    ),
                    Some(_) => {}
                }
            }
        }
    }
    if extra > 0 {
        res.problems.push(format!(
            "{}: {extra} more problems not listed",
            path.display()
        ));
    }
    res
}

/// Checks a dataset directory against its `manifest.json`: `labels.txt` lists its classes, no
/// shard file is unlisted, every listed shard is read (CRCs verified, every example decoded, its
/// label and word checked) and the counts per split and class, the totals and the
/// `rejects.jsonl` lines match the manifest. Problems are collected, not returned as errors;
/// only an unreadable manifest or directory is an error.
pub fn verify(dir: &Path) -> Result<DatasetCheck, ManifestError> {
    verify_with_progress(dir, &|_, _| {})
}

/// [`verify`], calling `progress(shards_done, shards_total)` as shards finish (from any thread).
pub fn verify_with_progress(
    dir: &Path,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<DatasetCheck, ManifestError> {
    let m = DatasetManifest::load(dir)?;
    let mut problems = Vec::new();

    // labels.txt must list the manifest's classes.
    let labels_path = dir.join(LABELS_FILE);
    match read_labels(&labels_path) {
        Ok(l) if l != m.classes => problems.push(format!(
            "{}: lists {:?}, the manifest's classes are {:?}",
            labels_path.display(),
            l,
            m.classes
        )),
        Ok(_) => {}
        Err(e) => problems.push(e.to_string()),
    }

    // Shard files on disk that the manifest does not list.
    let mut on_disk = Vec::new();
    let io = |source| ManifestError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for (name, _) in crate::storage::list_top(dir).map_err(io)? {
        if is_shard_name(&name) && m.shard(&name).is_none() {
            on_disk.push(name);
        }
    }
    on_disk.sort();
    for name in on_disk {
        problems.push(format!(
            "{}: shard file not listed in {MANIFEST_FILE}",
            dir.join(name).display()
        ));
    }

    // Read every listed shard (in parallel).
    let shards: Vec<(&str, &ShardFile)> = m
        .shards
        .iter()
        .flat_map(|(split, files)| files.iter().map(move |f| (split.as_str(), f)))
        .collect();
    let total = shards.len() as u64;
    let done = AtomicU64::new(0);
    progress(0, total);
    let results: Vec<ShardResult> = shards
        .par_iter()
        .map(|(_, f)| {
            let r = check_shard(&dir.join(&f.file), &m);
            progress(done.fetch_add(1, Ordering::Relaxed) + 1, total);
            r
        })
        .collect();

    let mut found: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let (mut examples_checked, mut bytes_checked) = (0u64, 0u64);
    for ((split, f), r) in shards.iter().zip(&results) {
        let path = dir.join(&f.file);
        problems.extend(r.problems.iter().cloned());
        examples_checked += r.examples;
        bytes_checked += r.bytes;
        // A missing shard is already a problem of its own (from check_shard).
        if !r.missing {
            if r.examples != f.examples {
                problems.push(format!(
                    "{}: {MANIFEST_FILE} says {} examples, the file holds {} readable records",
                    path.display(),
                    f.examples,
                    r.examples
                ));
            }
            if r.bytes != f.bytes {
                problems.push(format!(
                    "{}: {MANIFEST_FILE} says {} bytes, the file has {}",
                    path.display(),
                    f.bytes,
                    r.bytes
                ));
            }
        }
        let per_class = found.entry(split.to_string()).or_default();
        for (&label, &n) in &r.per_label {
            let name = usize::try_from(label)
                .ok()
                .and_then(|l| m.classes.get(l).cloned())
                .unwrap_or_else(|| format!("<label {label}>"));
            *per_class.entry(name).or_default() += n;
        }
    }

    // Per (split, class) counts against the manifest.
    let mut keys: BTreeSet<(String, String)> = BTreeSet::new();
    for (class, c) in &m.per_class {
        for (split, &n) in &c.splits {
            if n > 0 {
                keys.insert((split.clone(), class.clone()));
            }
        }
    }
    for (split, per_class) in &found {
        for class in per_class.keys() {
            keys.insert((split.clone(), class.clone()));
        }
    }
    for (split, class) in &keys {
        let want = m
            .per_class
            .get(class)
            .and_then(|c| c.splits.get(split))
            .copied()
            .unwrap_or(0);
        let got = found
            .get(split)
            .and_then(|c| c.get(class))
            .copied()
            .unwrap_or(0);
        if want != got {
            let files: Vec<&str> = m
                .shards
                .get(split)
                .map(|v| v.iter().map(|f| f.file.as_str()).collect())
                .unwrap_or_default();
            problems.push(format!(
                "split {split:?}, class {class:?}: {MANIFEST_FILE} says {want} examples, the shards ({}) hold {got}",
                files.join(", ")
            ));
        }
    }
    for class in m.per_class.keys() {
        if !m.classes.contains(class) {
            problems.push(format!(
                "{MANIFEST_FILE}: per_class lists {class:?}, which is not one of its classes"
            ));
        }
    }
    for (class, c) in &m.per_class {
        let split_sum: u64 = c.splits.values().sum();
        if c.kept != split_sum {
            problems.push(format!(
                "{MANIFEST_FILE}: class {class:?} kept {} but its splits add up to {split_sum}",
                c.kept
            ));
        }
    }
    let listed_examples: u64 = m.shards.values().flatten().map(|f| f.examples).sum();
    if listed_examples != m.totals.kept {
        problems.push(format!(
            "{MANIFEST_FILE}: totals.kept is {} but the shards list {listed_examples} examples",
            m.totals.kept
        ));
    }

    // rejects.jsonl lists every rejected record but those counted as not listed.
    let rejects = dir.join(REJECTS_FILE);
    if let Ok(f) = crate::storage::open(&rejects) {
        let mut listed = 0u64;
        let mut r = std::io::BufReader::new(f);
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) if line.iter().all(u8::is_ascii_whitespace) => {}
                Ok(_) => {
                    listed += serde_json::from_slice::<RejectLine>(&line).map_or(1, |l| l.records)
                }
                Err(e) => {
                    problems.push(format!("{}: {e}", rejects.display()));
                    break;
                }
            }
        }
        let want =
            m.totals.rejected_total() - m.totals.rejects_not_listed.min(m.totals.rejected_total());
        if listed != want {
            problems.push(format!(
                "{}: lists {listed} records, {MANIFEST_FILE} counts {} rejected ({} of them not listed)",
                rejects.display(),
                m.totals.rejected_total(),
                m.totals.rejects_not_listed
            ));
        }
    }

    let shards_checked = shards.len();
    drop(shards);
    Ok(DatasetCheck {
        path: dir.display().to_string(),
        ok: problems.is_empty(),
        manifest: m,
        shards_checked,
        examples_checked,
        bytes_checked,
        found,
        problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::{self, ConvertConfig, Progress};
    use crate::features::FeatureSpec;
    use crate::split::SplitPolicy;
    use std::fs;

    /// A converted dataset of two classes from the synthetic generator, with `bad` invalid
    /// lines in the first class's file, of which `listed` are listed in rejects.jsonl.
    fn dataset_with_rejects(dir: &Path, bad: usize, listed: u64) -> std::path::PathBuf {
        let inputs = dir.join("in");
        fs::create_dir_all(&inputs).unwrap();
        let synth = crate::synth::SynthConfig {
            classes: 2,
            per_class: 30,
            ..Default::default()
        };
        for (i, class) in synth.class_names().iter().enumerate() {
            let mut lines: String = crate::synth::synth_class(i, &synth)
                .map(|d| crate::ingest::ndjson::to_line(&d) + "\n")
                .collect();
            if i == 0 {
                lines += &"{oops\n".repeat(bad);
            }
            fs::write(inputs.join(format!("{class}.ndjson")), lines).unwrap();
        }
        let out = dir.join("data");
        let cfg = ConvertConfig {
            inputs: vec![inputs],
            output: out.clone(),
            classes: None,
            label_from: None,
            split: SplitPolicy::Fractions {
                fractions: [0.7, 0.3, 0.0],
            },
            shards: 2,
            features: FeatureSpec::default(),
            seed: 1,
            include_unrecognized: true,
            max_reject_rate: 1.0,
            max_listed_rejects: listed,
            tool: "test".into(),
            worker: None,
        };
        let plan = convert::plan(&cfg).unwrap();
        convert::run(&cfg, &plan, &Progress::default()).unwrap();
        out
    }

    fn dataset(dir: &Path) -> std::path::PathBuf {
        dataset_with_rejects(dir, 0, 100)
    }

    #[test]
    fn rejects_beyond_the_listed_limit_are_not_a_problem() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = dataset_with_rejects(tmp.path(), 3, 1);
        let check = verify(&dir).unwrap();
        assert!(check.ok, "{:?}", check.problems);
        assert_eq!(check.manifest.totals.rejects_not_listed, 2);
        // One listed line removed by hand is found.
        fs::write(dir.join(REJECTS_FILE), "").unwrap();
        let bad = verify(&dir).unwrap();
        assert!(
            bad.problems.join("\n").contains("lists 0 records"),
            "{:?}",
            bad.problems
        );
    }

    #[test]
    fn a_converted_dataset_verifies_and_a_damaged_one_names_each_problem() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = dataset(tmp.path());
        let calls = AtomicU64::new(0);
        let ok = verify_with_progress(&dir, &|_, _| {
            calls.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        assert!(ok.ok, "{:?}", ok.problems);
        assert_eq!(ok.examples_checked, 60);
        assert_eq!(calls.load(Ordering::Relaxed), 1 + ok.shards_checked as u64);

        // One flipped byte inside a shard, a stray shard and a wrong labels.txt.
        let shard = &ok.manifest.shards["train"][0].file;
        let mut bytes = fs::read(dir.join(shard)).unwrap();
        bytes[40] ^= 0xff;
        fs::write(dir.join(shard), &bytes).unwrap();
        fs::write(dir.join("eval-00009-of-00010"), b"").unwrap();
        fs::write(dir.join(LABELS_FILE), "x\n").unwrap();
        let bad = verify(&dir).unwrap();
        assert!(!bad.ok);
        let all = bad.problems.join("\n");
        assert!(all.contains(shard.as_str()) && all.contains("CRC"), "{all}");
        assert!(
            all.contains("eval-00009-of-00010: shard file not listed"),
            "{all}"
        );
        assert!(all.contains("labels.txt: lists [\"x\"]"), "{all}");
    }
}
