//! End-to-end tests of `quickdraw convert` driving the real binary on fixtures generated here:
//! every input format, every rejection reason, determinism, interruption, and TensorFlow's own
//! reader (through the verification venv made by `scripts/test-all`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use quickdraw_data::features::{FeatureSpec, ImageEncoding, decode_example, preprocess};
use quickdraw_data::ingest::ndjson::to_line_as;
use quickdraw_data::ingest::{binary, npy};
use quickdraw_data::lock::{DirLock, LOCK_FILE};
use quickdraw_data::manifest::DatasetManifest;
use quickdraw_data::raster::{RasterMode, RasterSpec};
use quickdraw_data::simplify::simplify;
use quickdraw_data::strokes::StrokeSpec;
use quickdraw_data::synth::{SynthConfig, synth_class};
use quickdraw_data::tfrecord::TfRecordReader;
use quickdraw_data::{Drawing, Ink};

use crate::util::{self, BIN, ok, qd, s, stderr};

fn drawings(class: usize, n: usize, seed: u64) -> Vec<Drawing> {
    let cfg = SynthConfig {
        classes: 12,
        per_class: n,
        seed,
        unrecognized_share: 0.1,
    };
    synth_class(class, &cfg).collect()
}

fn simplified(mut d: Drawing) -> Drawing {
    if let Ink::Strokes(s) = &d.ink {
        d.ink = Ink::Strokes(simplify(s));
    }
    d
}

fn write_ndjson(path: &Path, ds: &[Drawing], simplified_format: bool) {
    let mut f = fs::File::create(path).unwrap();
    for d in ds {
        writeln!(f, "{}", to_line_as(d, simplified_format)).unwrap();
    }
}

fn gzip(path: &Path) -> PathBuf {
    let data = fs::read(path).unwrap();
    let gz = PathBuf::from(format!("{}.gz", path.display()));
    let mut e =
        flate2::write::GzEncoder::new(fs::File::create(&gz).unwrap(), flate2::Compression::fast());
    e.write_all(&data).unwrap();
    e.finish().unwrap();
    fs::remove_file(path).unwrap();
    gz
}

/// Reads every example of a dataset dir with the library reader: (split, key_id, label) -> image.
fn read_all(dir: &Path) -> BTreeMap<(String, u64, i64), Vec<u8>> {
    let m = DatasetManifest::load(dir).unwrap();
    let mut out = BTreeMap::new();
    for (split, files) in &m.shards {
        for f in files {
            let mut n = 0;
            for rec in TfRecordReader::open(&dir.join(&f.file)).unwrap() {
                let ex = decode_example(&rec.unwrap(), &m.features).unwrap();
                out.insert((split.clone(), ex.key_id, ex.label), ex.image);
                n += 1;
            }
            assert_eq!(n, f.examples, "{}", f.file);
        }
    }
    out
}

/// Six classes, one per input format (simplified, raw, binary, numpy_bitmap, and gzip variants).
fn all_formats(dir: &Path) -> BTreeMap<String, Vec<Drawing>> {
    fs::create_dir_all(dir).unwrap();
    let mut by_class = BTreeMap::new();
    let simp: Vec<Drawing> = drawings(0, 30, 1).into_iter().map(simplified).collect();
    write_ndjson(&dir.join("circle.ndjson"), &simp, true);
    by_class.insert("circle".to_string(), simp);

    let raw = drawings(1, 30, 1);
    write_ndjson(&dir.join("square.ndjson"), &raw, false);
    by_class.insert("square".to_string(), raw);

    let bin: Vec<Drawing> = drawings(2, 30, 1).into_iter().map(simplified).collect();
    let mut bytes = Vec::new();
    for d in &bin {
        binary::encode_record(d, &mut bytes);
    }
    fs::write(dir.join("triangle.bin"), &bytes).unwrap();
    by_class.insert("triangle".to_string(), bin);

    // numpy_bitmap: 28x28 renderings, as Google's files.
    let spec = FeatureSpec {
        raster: RasterSpec::new(RasterMode::Default, 28, None),
        ..Default::default()
    };
    let imgs: Vec<Vec<u8>> = drawings(3, 30, 1)
        .iter()
        .map(|d| preprocess(&d.ink, &spec).unwrap().image)
        .collect();
    let mut npy_bytes = Vec::new();
    npy::write_header(imgs.len() as u64, &mut npy_bytes);
    for i in &imgs {
        npy_bytes.extend_from_slice(i);
    }
    fs::write(dir.join("star.npy"), &npy_bytes).unwrap();
    let bitmaps = imgs
        .into_iter()
        .enumerate()
        .map(|(i, px)| Drawing {
            key_id: i as u64,
            word: "star".into(),
            countrycode: String::new(),
            timestamp: 0,
            recognized: true,
            ink: Ink::Bitmap(quickdraw_data::Bitmap {
                side: 28,
                pixels: px,
            }),
        })
        .collect();
    by_class.insert("star".to_string(), bitmaps);

    let zig: Vec<Drawing> = drawings(4, 30, 1).into_iter().map(simplified).collect();
    write_ndjson(&dir.join("zigzag.ndjson"), &zig, true);
    gzip(&dir.join("zigzag.ndjson"));
    by_class.insert("zigzag".to_string(), zig);

    let line: Vec<Drawing> = drawings(5, 30, 1).into_iter().map(simplified).collect();
    let mut bytes = Vec::new();
    for d in &line {
        binary::encode_record(d, &mut bytes);
    }
    fs::write(dir.join("line.bin"), &bytes).unwrap();
    gzip(&dir.join("line.bin"));
    by_class.insert("line".to_string(), line);
    by_class
}

#[test]
fn every_input_format_is_read_and_preprocessed_by_the_shared_path() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let out = tmp.path().join("out");
    let src = all_formats(&input);
    ok(&[
        "convert",
        "-q",
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--split",
        "train=0.6,eval=0.2,test=0.2",
        "--shards",
        "2",
    ]);
    let m = DatasetManifest::load(&out).unwrap();
    assert_eq!(
        m.classes,
        vec!["circle", "line", "square", "star", "triangle", "zigzag"]
    );
    let formats: BTreeMap<&str, (&str, bool)> = m
        .inputs
        .iter()
        .map(|i| (i.class.as_str(), (i.format.as_str(), i.gzip)))
        .collect();
    assert_eq!(formats["circle"], ("simplified_ndjson", false));
    assert_eq!(formats["square"], ("raw_ndjson", false));
    assert_eq!(formats["triangle"], ("binary", false));
    assert_eq!(formats["star"], ("numpy_bitmap", false));
    assert_eq!(formats["zigzag"], ("simplified_ndjson", true));
    assert_eq!(formats["line"], ("binary", true));
    assert!(m.inputs.iter().all(|i| i.sha256.len() == 64 && i.bytes > 0));
    let labels = fs::read_to_string(out.join("labels.txt")).unwrap();
    assert_eq!(labels.lines().collect::<Vec<_>>(), m.classes);

    let got = read_all(&out);
    let mut expected_kept = 0;
    for (class, ds) in &src {
        let label = m.classes.iter().position(|c| c == class).unwrap() as i64;
        let c = &m.per_class[class];
        assert_eq!(c.read, ds.len() as u64, "{class}");
        let unrecognized = ds.iter().filter(|d| !d.recognized).count() as u64;
        assert_eq!(
            c.filtered.get("unrecognized").copied().unwrap_or(0),
            unrecognized,
            "{class}"
        );
        assert_eq!(c.rejected_total(), 0, "{class}");
        assert_eq!(c.kept + unrecognized, c.read, "{class}: nothing vanishes");
        for d in ds.iter().filter(|d| d.recognized) {
            let want = preprocess(&d.ink, &m.features).unwrap().image;
            let hit: Vec<_> = got
                .iter()
                .filter(|((_, k, l), _)| *k == d.key_id && *l == label)
                .collect();
            assert_eq!(hit.len(), 1, "{class} key {} appears once", d.key_id);
            assert_eq!(
                hit[0].1, &want,
                "{class} key {}: shard image = shared preprocessing",
                d.key_id
            );
            expected_kept += 1;
        }
    }
    assert_eq!(got.len(), expected_kept);
}

#[test]
fn every_reject_reason_is_counted_and_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    fs::create_dir_all(&input).unwrap();
    let good: Vec<String> = drawings(0, 40, 2)
        .into_iter()
        .map(|mut d| {
            d.recognized = true;
            to_line_as(&simplified(d), true)
        })
        .collect();
    let head = r#"{"word":"circle","countrycode":"CH","timestamp":"2017-03-02 23:25:10.07453 UTC","recognized":true,"key_id":"#;
    let many_strokes = vec!["[[1,2],[3,4]]"; 2049].join(",");
    let bad: Vec<(&str, String)> = vec![
        ("invalid_json", "{\"word\": \"circle\", oops".to_string()),
        ("missing_field", r#"{"word":"circle","countrycode":"CH","recognized":true,"key_id":"1","drawing":[[[1,2],[3,4]]]}"#.to_string()),
        ("wrong_type", format!(r#"{head}"2","drawing":[[[1,2],["x",4]]]}}"#)),
        ("length_mismatch", format!(r#"{head}"3","drawing":[[[1,2,3],[3,4]]]}}"#)),
        ("non_finite", format!(r#"{head}"4","drawing":[[[1,1e39],[3,4],[0,10]]]}}"#)),
        ("out_of_range", format!(r#"{head}"5","drawing":[[[1,2e7],[3,4],[0,10]]]}}"#)),
        ("empty_drawing", format!(r#"{head}"6","drawing":[]}}"#)),
        ("too_large", format!(r#"{head}"7","drawing":[{many_strokes}]}}"#)),
        ("label_mismatch", r#"{"word":"dog","countrycode":"CH","timestamp":"2017-03-02 23:25:10.07453 UTC","recognized":true,"key_id":"8","drawing":[[[1,2],[3,4]]]}"#.to_string()),
        ("bad_timestamp", r#"{"word":"circle","countrycode":"CH","timestamp":"soon","recognized":true,"key_id":"9","drawing":[[[1,2],[3,4]]]}"#.to_string()),
        ("bad_key_id", r#"{"word":"circle","countrycode":"CH","timestamp":"2017-03-02 23:25:10.07453 UTC","recognized":true,"key_id":"abc","drawing":[[[1,2],[3,4]]]}"#.to_string()),
    ];
    let mut text = String::new();
    let mut expected_lines = BTreeMap::new();
    let mut line_no = 0;
    for (i, g) in good.iter().enumerate() {
        text.push_str(g);
        text.push('\n');
        line_no += 1;
        if let Some((reason, line)) = bad.get(i) {
            text.push_str(line);
            text.push('\n');
            line_no += 1;
            expected_lines.insert(line_no as u64, *reason);
        }
    }
    // An interrupted download: the last line is cut in the middle, with no newline.
    let cut = &good[0][..good[0].len() / 2];
    text.push_str(cut);
    line_no += 1;
    expected_lines.insert(line_no as u64, "truncated");
    let file = input.join("circle.ndjson");
    fs::write(&file, &text).unwrap();

    let out = tmp.path().join("out");
    let o = ok(&[
        "convert",
        "--input",
        file.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--split",
        "train=1.0",
        "--shards",
        "1",
        "--max-reject-rate",
        "0.5",
    ]);
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(summary.contains("rejected by reason:"), "{summary}");
    let m = DatasetManifest::load(&out).unwrap();
    assert_eq!(m.totals.read, line_no as u64);
    assert_eq!(m.totals.kept, good.len() as u64);
    for reason in expected_lines.values() {
        assert_eq!(
            m.totals.rejected.get(*reason).copied(),
            Some(1),
            "{reason}: {:?}",
            m.totals.rejected
        );
    }
    let rejects: Vec<serde_json::Value> = fs::read_to_string(out.join("rejects.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rejects.len(), expected_lines.len());
    for r in &rejects {
        let line = r["line"].as_u64().unwrap();
        assert_eq!(
            r["reason"].as_str().unwrap(),
            expected_lines[&line],
            "line {line}: {r}"
        );
        assert!(r["file"].as_str().unwrap().ends_with("circle.ndjson"));
        assert!(!r["detail"].as_str().unwrap().is_empty());
    }
    let trunc = rejects.iter().find(|r| r["reason"] == "truncated").unwrap();
    assert!(
        trunc["detail"].as_str().unwrap().contains("interrupted"),
        "{trunc}"
    );

    // The same data with a strict limit: a loud failure, and no dataset that looks finished.
    let strict = tmp.path().join("strict");
    let o = qd(&[
        "convert",
        "-q",
        "--input",
        file.to_str().unwrap(),
        "--output",
        strict.to_str().unwrap(),
        "--split",
        "train=1.0",
        "--shards",
        "1",
        "--max-reject-rate",
        "0.05",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("exceeds --max-reject-rate") && err.contains("rejects.jsonl"),
        "{err}"
    );
    assert!(!strict.join("manifest.json").exists());
    assert!(!strict.join("train-00000-of-00001").exists());
    assert_eq!(
        fs::read_to_string(strict.join("rejects.jsonl"))
            .unwrap()
            .lines()
            .count(),
        expected_lines.len()
    );
}

fn shard_bytes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            quickdraw_data::convert::is_shard_name(p.file_name().unwrap().to_str().unwrap())
        })
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().to_string(),
                fs::read(&p).unwrap(),
            )
        })
        .collect()
}

fn synth_input(dir: &Path, classes: usize, per_class: usize) {
    ok(&[
        "synth",
        "-q",
        "--classes",
        &classes.to_string(),
        "--per-class",
        &per_class.to_string(),
        "--output",
        dir.to_str().unwrap(),
    ]);
}

#[test]
fn same_inputs_and_seed_give_byte_identical_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    synth_input(&input, 4, 150);
    let run = |name: &str, seed: &str| {
        let out = tmp.path().join(name);
        ok(&[
            "convert",
            "-q",
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--split",
            "train=30,eval=10,test=10",
            "--shards",
            "3",
            "--seed",
            seed,
        ]);
        out
    };
    let a = run("a", "7");
    let b = run("b", "7");
    let c = run("c", "8");
    let (sa, sb, sc) = (shard_bytes(&a), shard_bytes(&b), shard_bytes(&c));
    assert_eq!(sa.len(), 9);
    assert_eq!(sa, sb, "same seed, same bytes");
    assert_ne!(sa, sc, "another seed shuffles differently");
    // The split depends on key_id only: the same drawings land in the same split.
    let members = |d: &Path| -> BTreeSet<(String, u64)> {
        read_all(d).into_keys().map(|(s, k, _)| (s, k)).collect()
    };
    assert_eq!(members(&a), members(&c));
    let m = DatasetManifest::load(&a).unwrap();
    for (class, c) in &m.per_class {
        assert_eq!(c.splits.get("train").copied(), Some(30), "{class}: quota");
        assert_eq!(c.splits.get("eval").copied(), Some(10), "{class}");
        assert_eq!(c.splits.get("test").copied(), Some(10), "{class}");
        assert!(
            c.quota_filled_early && c.filtered.get("split_full").copied().unwrap_or(0) > 0,
            "{class}: quotas stop the class early: {c:?}"
        );
    }
    // Shuffled across shards: the first shard is not in class order.
    let first: Vec<i64> = TfRecordReader::open(&a.join("train-00000-of-00003"))
        .unwrap()
        .map(|r| decode_example(&r.unwrap(), &m.features).unwrap().label)
        .collect();
    let mut sorted = first.clone();
    sorted.sort();
    assert_ne!(first, sorted, "examples are interleaved across classes");
}

#[test]
fn an_interrupted_run_never_looks_finished_and_a_rerun_repairs_it() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    synth_input(&input, 3, 40);
    let args = |out: &Path| -> Vec<String> {
        [
            "convert",
            "-q",
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--split",
            "train=0.5,eval=0.5",
            "--shards",
            "4",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let clean = tmp.path().join("clean");
    let o = Command::new(BIN).args(args(&clean)).output().unwrap();
    assert!(o.status.success());

    // Crash right after the first shard is renamed into place (the worst moment).
    let out = tmp.path().join("out");
    let o = Command::new(BIN)
        .args(args(&out))
        .env("QUICKDRAW_FAULT", "convert-after-first-shard")
        .output()
        .unwrap();
    assert!(!o.status.success(), "the fault hook aborts the process");
    assert!(
        !out.join("manifest.json").exists(),
        "no manifest: the directory is not a finished dataset"
    );
    let o = qd(&["stats", out.to_str().unwrap()]);
    assert!(
        !o.status.success(),
        "stats refuses an unfinished dataset directory"
    );

    // A real kill at an arbitrary moment, then the rerun.
    let mut child = Command::new(BIN).args(args(&out)).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(150));
    let _ = child.kill();
    let _ = child.wait();
    let o = Command::new(BIN).args(args(&out)).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(shard_bytes(&out), shard_bytes(&clean));
    let leftovers: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| (n.starts_with('.') && n != LOCK_FILE) || n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn time_split_trains_on_older_drawings() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    synth_input(&input, 2, 80);
    let out = tmp.path().join("out");
    ok(&[
        "convert",
        "-q",
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--eval-after",
        "2017-07-01",
        "--shards",
        "1",
    ]);
    let m = DatasetManifest::load(&out).unwrap();
    let cutoff = quickdraw_data::split::parse_date("2017-07-01").unwrap();
    for (split, files) in &m.shards {
        for f in files {
            for r in TfRecordReader::open(&out.join(&f.file)).unwrap() {
                let ex = decode_example(&r.unwrap(), &m.features).unwrap();
                assert_eq!(
                    ex.timestamp < cutoff,
                    split == "train",
                    "{split}: {}",
                    ex.timestamp
                );
            }
        }
    }
    assert!(m.shards.contains_key("train") && m.shards.contains_key("eval"));
}

#[test]
fn amld_mode_writes_binary_pixels() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    synth_input(&input, 2, 20);
    let out = tmp.path().join("out");
    ok(&[
        "convert",
        "-q",
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--raster",
        "amld",
        "--split",
        "train=1.0",
        "--shards",
        "1",
    ]);
    let m = DatasetManifest::load(&out).unwrap();
    assert_eq!(m.features.raster.line_width, 4.0);
    assert!(!m.features.raster.anti_alias);
    for img in read_all(&out).values() {
        assert!(img.iter().all(|&v| v == 0 || v == 255));
        assert!(img.iter().any(|&v| v == 255));
    }
}

/// Runs TensorFlow's reader on a dataset dir (skips without the venv unless CI requires it).
fn tensorflow_rows(dir: &Path) -> Option<Vec<serde_json::Value>> {
    let root = util::repo_root();
    let python = util::verification_python()?;
    let required = std::env::var_os("QUICKDRAW_REQUIRE_PYTHON").is_some();
    let rows = dir.join("tf-rows.jsonl");
    let o = Command::new(&python)
        .arg(root.join("tests/python/check_shards.py"))
        .arg(dir)
        .arg(&rows)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    if !o.status.success() && !required && stderr.contains("No module named 'tensorflow'") {
        eprintln!("SKIP: tensorflow is not installed in the venv");
        return None;
    }
    assert!(
        o.status.success(),
        "check_shards.py failed:\n{stderr}\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(
        stderr.contains("corruption detected by TensorFlow"),
        "{stderr}"
    );
    Some(
        fs::read_to_string(rows)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
    )
}

#[test]
fn tensorflow_reads_every_image_encoding() {
    use sha2::Digest;
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    synth_input(&input, 3, 25);
    for enc in ["int64", "bytes", "png"] {
        let out = tmp.path().join(enc);
        ok(&[
            "convert",
            "-q",
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--image-encoding",
            enc,
            "--strokes",
            "--size",
            "32",
            "--split",
            "train=0.8,eval=0.2",
            "--shards",
            "2",
        ]);
        let m = DatasetManifest::load(&out).unwrap();
        assert_eq!(
            m.features.image_encoding,
            enc.parse::<ImageEncoding>().unwrap()
        );
        assert_eq!(m.features.strokes, Some(StrokeSpec::default()));
        let ours = read_all(&out);
        let Some(rows) = tensorflow_rows(&out) else {
            return;
        };
        assert_eq!(rows.len(), ours.len(), "{enc}");
        for r in &rows {
            let key: u64 = r["key_id"].as_str().unwrap().parse().unwrap();
            let k = (
                r["split"].as_str().unwrap().to_string(),
                key,
                r["label"].as_i64().unwrap(),
            );
            let img = ours
                .get(&k)
                .unwrap_or_else(|| panic!("{enc}: TensorFlow saw {k:?} which Rust did not"));
            assert_eq!(
                r["image_sha256"].as_str().unwrap(),
                hex::encode(sha2::Sha256::digest(img)),
                "{enc} {k:?}: pixels differ"
            );
            assert_eq!(r["word"].as_str().unwrap(), m.classes[k.2 as usize]);
            assert!(r["stroke_len"].as_i64().unwrap() > 0);
        }
        eprintln!("{enc}: {} bytes per example", m.bytes_per_example);
    }
}

#[test]
fn real_raw_and_simplified_twins_give_the_same_images() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/quickdraw");
    if !data.exists() {
        eprintln!(
            "SKIP: {} not found (real QuickDraw samples)",
            data.display()
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let run = |sub: &str| {
        let out = tmp.path().join(sub);
        ok(&[
            "convert",
            "-q",
            "--input",
            data.join(sub).to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--split",
            "train=1.0",
            "--shards",
            "2",
            "--include-unrecognized",
        ]);
        read_all(&out)
            .into_iter()
            .map(|((_, k, l), img)| ((k, l), img))
            .collect::<BTreeMap<_, _>>()
    };
    let simp = run("simplified");
    let raw = run("raw");
    let same = simp
        .iter()
        .filter(|(k, img)| raw.get(k) == Some(img))
        .count();
    let share = same as f64 / simp.len() as f64;
    eprintln!(
        "raw->simplify->raster equals simplified->raster for {same}/{} drawings ({:.2}%)",
        simp.len(),
        share * 100.0
    );
    assert_eq!(simp.len(), 1220);
    assert!(share >= 0.99, "{share}");
}

/// `convert --input <input> --output <out>` plus `extra`, run to completion.
fn convert(input: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "convert",
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    qd(&args)
}

/// Names in `dir` that a finished or failed run must not leave: scratch directories and `.tmp`.
fn scratch_left(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return vec![];
    };
    entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".convert-tmp-") || n.ends_with(".tmp"))
        .collect()
}

#[test]
fn rejects_are_all_counted_but_listed_up_to_a_cap_and_a_certain_failure_stops_early() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("circle.ndjson");
    let good = drawings(0, 30, 3);
    write_ndjson(&file, &good, true);
    let mut f = fs::OpenOptions::new().append(true).open(&file).unwrap();
    for i in 0..50 {
        writeln!(f, "garbage {i}").unwrap();
    }
    drop(f);
    let out = tmp.path().join("out");
    let o = convert(
        &file,
        &out,
        &[
            "--split",
            "train=1.0",
            "--shards",
            "1",
            "--max-reject-rate",
            "1",
            "--max-listed-rejects",
            "5",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let listed = fs::read_to_string(out.join("rejects.jsonl")).unwrap();
    assert_eq!(listed.lines().count(), 5, "{listed}");
    let m = DatasetManifest::load(&out).unwrap();
    assert_eq!(m.totals.rejected.get("invalid_json"), Some(&50));
    assert_eq!(m.totals.rejects_not_listed, 45);
    assert!(String::from_utf8_lossy(&o.stdout).contains("not listed in rejects.jsonl"));

    // Two million garbage lines in a few KB of gzip: the run stops once the rejects alone exceed
    // 5% of the records the file can possibly hold, long before reading it all.
    let bad = tmp.path().join("square.ndjson.gz");
    let mut e =
        flate2::write::GzEncoder::new(fs::File::create(&bad).unwrap(), flate2::Compression::best());
    e.write_all("x\n".repeat(2_000_000).as_bytes()).unwrap();
    e.finish().unwrap();
    let out = tmp.path().join("out2");
    let o = convert(&bad, &out, &["--shards", "1"]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("certain to exceed") && err.contains("stopped early"),
        "{err}"
    );
    let so_far: u64 = err
        .split(" records rejected so far")
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(so_far < 2_000_000, "{err}");
    assert!(!out.join("manifest.json").exists());
    assert!(scratch_left(&out).is_empty(), "{:?}", scratch_left(&out));
}

#[test]
fn bad_parameters_are_refused_before_any_work_naming_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("circle.ndjson");
    write_ndjson(&file, &drawings(0, 20, 4), true);
    let out = tmp.path().join("out");
    for (flags, named) in [
        (&["--line-width", "1e30"][..], "--line-width"),
        (&["--line-width", "NaN"][..], "--line-width"),
        (&["--size", "0"][..], "--size"),
        (&["--size", "100000"][..], "--size"),
        (&["--strokes", "--max-points", "0"][..], "--max-points"),
        (&["--shards", "100000"][..], "--shards"),
    ] {
        let o = convert(&file, &out, flags);
        let err = stderr(&o);
        assert!(!o.status.success(), "{flags:?} was accepted");
        assert!(err.contains(named), "{flags:?}: {err}");
        assert!(!out.exists(), "{flags:?} started work in {}", out.display());
    }
    // More shards than examples: refused before any shard file is created.
    let o = convert(&file, &out, &["--split", "train=1.0", "--shards", "500"]);
    let err = stderr(&o);
    assert!(!o.status.success() && err.contains("--shards 500"), "{err}");
    assert!(scratch_left(&out).is_empty() && !out.join("manifest.json").exists());
}

#[test]
fn duplicate_inputs_and_directory_loops_are_read_once_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    fs::create_dir_all(d.join("sub")).unwrap();
    let file = d.join("circle.ndjson");
    let ds = drawings(0, 20, 5);
    write_ndjson(&file, &ds, true);
    std::os::unix::fs::symlink("..", d.join("sub/up")).unwrap();
    let out = tmp.path().join("out");
    let o = qd(&[
        "convert",
        "--input",
        d.to_str().unwrap(),
        file.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--split",
        "train=1.0",
        "--shards",
        "1",
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let m = DatasetManifest::load(&out).unwrap();
    assert_eq!(m.inputs.len(), 1, "{:?}", m.inputs);
    assert_eq!(m.totals.read, ds.len() as u64);
    assert!(
        err.contains(&format!(
            "skipped input {}: directory loop",
            d.join("sub/up").display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("skipped input {}: same file as", file.display())),
        "{err}"
    );
}

/// A numpy_bitmap file: `rows` announced in the header, `data_rows` images after it.
fn npy_file(path: &Path, rows: u64, data_rows: usize) -> Vec<u8> {
    let mut b = vec![];
    npy::write_header(rows, &mut b);
    for i in 0..data_rows {
        b.extend((0..784).map(|p| ((p * 7 + i) % 256) as u8));
    }
    fs::write(path, &b).unwrap();
    b
}

#[test]
fn npy_headers_are_checked_against_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    for gz in [false, true] {
        let dir = tmp.path().join(format!("short-{gz}"));
        fs::create_dir_all(&dir).unwrap();
        let mut file = dir.join("fish.npy");
        npy_file(&file, 50, 20);
        if gz {
            file = gzip(&file);
        }
        let out = tmp.path().join(format!("out-{gz}"));
        let o = convert(
            &file,
            &out,
            &[
                "--split",
                "train=1.0",
                "--shards",
                "1",
                "--max-reject-rate",
                "1",
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let m = DatasetManifest::load(&out).unwrap();
        assert_eq!((m.totals.read, m.totals.kept), (50, 20));
        assert_eq!(m.totals.rejected.get("truncated"), Some(&30));
        let listed = fs::read_to_string(out.join("rejects.jsonl")).unwrap();
        assert!(listed.contains("rows 21..=50 (30) are missing"), "{listed}");
    }
    let file = tmp.path().join("cat.npy");
    let good = npy_file(&file, 3, 3);
    let mut long = good.clone();
    long[8..10].copy_from_slice(&0xFFFFu16.to_le_bytes());
    let mut huge = vec![];
    npy::write_header(99_999_999_999_999, &mut huge);
    huge.extend_from_slice(&good[good.len() - 3 * 784..]);
    for bytes in [long, huge] {
        fs::write(&file, &bytes).unwrap();
        let o = convert(&file, &tmp.path().join("bad"), &["--shards", "1"]);
        let err = stderr(&o);
        assert!(!o.status.success(), "accepted");
        assert!(
            err.contains("bad_header") && err.contains(file.to_str().unwrap()),
            "{err}"
        );
    }
}

#[test]
fn a_second_writer_of_an_output_directory_is_refused_before_touching_it() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("circle.ndjson");
    write_ndjson(&file, &drawings(0, 20, 6), true);
    let out = tmp.path().join("out");
    let holder = DirLock::acquire(&out, "output directory").unwrap();
    let o = convert(&file, &out, &["--split", "train=1.0", "--shards", "1"]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("already in use") && err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    let names: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec![LOCK_FILE.to_string()],
        "the loser wrote into the directory"
    );
    drop(holder);
    let o = convert(&file, &out, &["--split", "train=1.0", "--shards", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn inputs_without_records_fail_without_a_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("circle.ndjson");
    fs::write(&file, "\n\n").unwrap();
    let out = tmp.path().join("out");
    let o = convert(&file, &out, &["--shards", "1"]);
    let err = stderr(&o);
    assert!(!o.status.success(), "an empty input made a dataset");
    assert!(err.contains("no usable records (0 read"), "{err}");
    assert!(!out.join("manifest.json").exists());
    assert!(scratch_left(&out).is_empty());
}

#[test]
fn ctrl_c_removes_the_scratch_space_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    synth_input(&input, 8, 6000);
    let out = tmp.path().join("out");
    let child = Command::new(BIN)
        .args([
            "convert",
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--split",
            "train=0.8,eval=0.1,test=0.1",
        ])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Interrupt once the run has scratch files to leave behind.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while scratch_left(&out).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no scratch directory appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted: no dataset written; scratch removed"),
        "{err}"
    );
    assert!(scratch_left(&out).is_empty(), "{:?}", scratch_left(&out));
    assert!(!out.join("manifest.json").exists());
}

/// A request log or export mixes classes: by default (`auto`) its records are labelled by their
/// word and the summary says so; `--label-from file` rejects them all as before.
#[test]
fn mixed_class_ndjson_is_labelled_by_word_and_said_in_the_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let mixed = tmp.path().join("exported.ndjson");
    let mut ds = drawings(0, 30, 3);
    ds.extend(drawings(1, 30, 3));
    ds.iter_mut().for_each(|d| d.recognized = true);
    write_ndjson(&mixed, &ds, false);
    let out = tmp.path().join("out");
    let o = ok(&[
        "convert",
        "--input",
        s(&mixed),
        "--output",
        s(&out),
        "--split",
        "train=0.8,eval=0.2",
        "--shards",
        "1",
    ]);
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(
        summary.contains("labels: from each record's word in")
            && summary.contains("exported.ndjson"),
        "{summary}"
    );
    let m = DatasetManifest::load(&out).unwrap();
    let words: BTreeSet<&str> = ds.iter().map(|d| d.word.as_str()).collect();
    assert_eq!(
        m.classes,
        words.iter().map(|w| w.to_string()).collect::<Vec<_>>()
    );
    assert_eq!(m.totals.kept, 60);
    assert_eq!(m.totals.rejected_total(), 0);

    // The old rule, asked for: every record's word differs from the file's name.
    let strict = tmp.path().join("strict");
    let err = util::fails(&[
        "convert",
        "--input",
        s(&mixed),
        "--output",
        s(&strict),
        "--label-from",
        "file",
        "--shards",
        "1",
    ]);
    assert!(err.contains("rejected"), "{err}");
    let rejects = fs::read_to_string(strict.join("rejects.jsonl")).unwrap();
    assert!(rejects.contains("label_mismatch"), "{rejects}");
}

/// numpy_bitmap files are 28x28: converting them at 64 px says they are resized and how not to.
#[test]
fn bitmaps_resized_to_another_size_are_warned_about() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("in");
    fs::create_dir_all(&dir).unwrap();
    npy_file(&dir.join("fish.npy"), 40, 40);
    let out = tmp.path().join("out");
    let args = [
        "convert",
        "--input",
        s(&dir),
        "--output",
        s(&out),
        "--shards",
        "1",
        "--split",
        "train=1.0",
    ];
    let o = ok(&args);
    let err = stderr(&o);
    assert!(
        err.contains("warning: 1 numpy_bitmap input file(s) hold 28x28 images"),
        "{err}"
    );
    assert!(err.contains("--size 28"), "{err}");
    let m = DatasetManifest::load(&out).unwrap();
    assert_eq!(m.warnings.len(), 1, "{:?}", m.warnings);
    let mut at28 = args.to_vec();
    let out28 = tmp.path().join("out28");
    at28[4] = s(&out28);
    at28.extend(["--size", "28"]);
    let o = ok(&at28);
    assert!(!stderr(&o).contains("warning:"), "{}", stderr(&o));
}
