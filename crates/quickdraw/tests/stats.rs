//! End-to-end tests of `quickdraw stats` through the real binary: per-class statistics of NDJSON
//! inputs, and the check of a shard directory (healthy, record removed, byte flipped, unlisted
//! shard) on fixtures generated here.

use std::path::{Path, PathBuf};
use std::process::Output;

use quickdraw_data::tfrecord::{TfRecordReader, TfRecordWriter};

use crate::util::{bin, ndjson, qd, text};

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    input: PathBuf,
    dataset: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let input = root.join("in");
    std::fs::create_dir_all(&input).unwrap();
    // cat: 40 records + 1 invalid line; dog: 30 records.
    std::fs::write(
        input.join("cat.ndjson"),
        ndjson("cat", 40) + "{\"word\": broken\n",
    )
    .unwrap();
    std::fs::write(input.join("dog.ndjson"), ndjson("dog", 30)).unwrap();
    let dataset = root.join("shards");
    let out = qd(&[
        "--quiet",
        "convert",
        "--input",
        input.to_str().unwrap(),
        "--output",
        dataset.to_str().unwrap(),
        "--split",
        "train=0.8,eval=0.2",
        "--shards",
        "2",
        "--size",
        "16",
        "--include-unrecognized",
    ]);
    assert!(out.status.success(), "convert failed: {}", text(&out));
    Fixture {
        _tmp: tmp,
        root,
        input,
        dataset,
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn stats(path: &Path, json: bool) -> Output {
    let mut cmd = bin();
    cmd.arg("stats").arg(path);
    if json {
        cmd.arg("--json");
    }
    cmd.output().expect("run quickdraw")
}

#[test]
fn input_statistics_per_class() {
    let f = fixture();
    let out = stats(&f.input, true);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    let cat = &v["inputs"]["classes"]["cat"];
    assert_eq!(cat["records"], 41, "{cat}");
    assert_eq!(cat["valid"], 40);
    assert_eq!(cat["rejected"], 1);
    assert_eq!(cat["rejected_by_reason"]["invalid_json"], 1);
    assert_eq!(cat["recognized_share"], 0.75);
    assert_eq!(cat["strokes_per_drawing"]["p50"], 2);
    assert_eq!(cat["strokes_per_drawing"]["max"], 2);
    assert_eq!(cat["points_per_drawing"]["p95"], 11);
    assert_eq!(cat["points_per_drawing"]["mean"], 11.0);
    let top = cat["top_countries"].as_array().unwrap();
    assert_eq!(top.len(), 5);
    assert_eq!(top[0]["share"], 0.2);
    assert_eq!(cat["first"], "2017-03-02 23:25:00.00000 UTC");
    assert_eq!(cat["last"], "2017-03-02 23:25:39.00000 UTC");
    assert_eq!(v["inputs"]["classes"]["dog"]["records"], 30);
    assert_eq!(v["inputs"]["total"]["records"], 71);
    assert_eq!(v["ok"], true);

    // The human-readable form names every class.
    let out = stats(&f.input.join("cat.ndjson"), false);
    assert!(out.status.success(), "{}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("cat: 1 files")
            && s.contains("invalid_json=1")
            && s.contains("recognized:        75.0%"),
        "{s}"
    );
}

#[test]
fn a_healthy_dataset_passes() {
    let f = fixture();
    let out = stats(&f.dataset, false);
    assert!(out.status.success(), "{}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("OK: 4 shards, 70 examples"), "{s}");
    assert!(s.contains("classes (2): cat, dog"), "{s}");

    let out = stats(&f.dataset, true);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = &v["datasets"][0];
    assert_eq!(d["ok"], true, "{d}");
    assert_eq!(d["examples_checked"], 70);
    assert_eq!(
        d["found"]["train"]["cat"],
        d["manifest"]["per_class"]["cat"]["splits"]["train"]
    );
    assert_eq!(
        d["found"]["eval"]["dog"],
        d["manifest"]["per_class"]["dog"]["splits"]["eval"]
    );
    assert_eq!(d["manifest"]["classes"][1], "dog");
}

fn shard_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("train-"))
        .collect();
    v.sort();
    v
}

#[test]
fn a_removed_record_is_found() {
    let f = fixture();
    let dir = f.root.join("removed");
    copy_dir(&f.dataset, &dir);
    let name = &shard_names(&dir)[0];
    let path = dir.join(name);
    let records: Vec<Vec<u8>> = TfRecordReader::open(&path)
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert!(records.len() > 1);
    let mut w = TfRecordWriter::create(&path).unwrap();
    for r in &records[..records.len() - 1] {
        w.write_record(r).unwrap();
    }
    w.flush().unwrap();
    drop(w);

    let out = stats(&dir, false);
    assert!(!out.status.success(), "{}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains(&format!(
            "{name}: manifest.json says {} examples, the file holds {}",
            records.len(),
            records.len() - 1
        )),
        "{}",
        text(&out)
    );
    assert!(s.contains("split \"train\", class"), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("dataset check failed"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_flipped_byte_is_located() {
    let f = fixture();
    let dir = f.root.join("flipped");
    copy_dir(&f.dataset, &dir);
    let name = &shard_names(&dir)[1];
    let path = dir.join(name);
    let mut bytes = std::fs::read(&path).unwrap();
    // Second record's data: skip the first record (12 + len + 4 bytes) and the second's header.
    let first_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let second = 12 + first_len + 4;
    bytes[second + 12 + 20] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();

    let out = stats(&dir, true);
    assert!(!out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems: Vec<String> = v["datasets"][0]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert!(
        problems.iter().any(|p| p.contains(name.as_str())
            && p.contains(&format!("at byte {second}"))
            && p.contains("CRC")),
        "{problems:#?}"
    );
}

#[test]
fn an_unlisted_shard_and_wrong_labels_are_reported() {
    let f = fixture();
    let dir = f.root.join("unlisted");
    copy_dir(&f.dataset, &dir);
    let first = &shard_names(&dir)[0];
    std::fs::copy(dir.join(first), dir.join("test-00000-of-00001")).unwrap();
    std::fs::write(dir.join("labels.txt"), "dog\ncat\n").unwrap();
    let out = stats(&dir, false);
    assert!(!out.status.success(), "{}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("test-00000-of-00001: shard file not listed in manifest.json"),
        "{s}"
    );
    assert!(s.contains("labels.txt: lists"), "{s}");
}
