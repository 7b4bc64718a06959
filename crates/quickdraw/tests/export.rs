//! End-to-end tests of `quickdraw export` through the real binary: synth -> convert -> train ->
//! export of every model kind, the folder layout and the last stdout line, increasing versions,
//! the export gate (baseline, newest version, --force, non-finite weights), tract (`model run`)
//! against burn (`predict`), and the ONNX checker and onnxruntime (tests/python/check_onnx.py).
#![cfg(feature = "train")]

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use quickdraw_train::CheckpointSel;
use quickdraw_train::burn::module::Module;
use quickdraw_train::burn::module::Param;
use quickdraw_train::burn::tensor::Tensor;
use quickdraw_train::model::Model;
use quickdraw_train::modeldir::{TrainConfig, load_model, select_checkpoint};
use serde_json::Value;

use crate::util::{self, ok, qd, s, text};

fn last_line(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

/// Every file under `dir`, relative, with `/` separators.
fn files(dir: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(
                    p.strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .replace('\\', "/"),
                );
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

struct Data {
    tmp: tempfile::TempDir,
    raw: PathBuf,
    shards: PathBuf,
}

impl Data {
    /// 3 classes x 60 synthetic drawings, 16x16 images with stroke features, 80/20 split.
    fn new() -> Data {
        let tmp = tempfile::tempdir().unwrap();
        let raw = tmp.path().join("raw");
        let shards = tmp.path().join("shards");
        ok(&[
            "--quiet",
            "synth",
            "--classes",
            "3",
            "--per-class",
            "60",
            "--output",
            s(&raw),
            "--seed",
            "1",
        ]);
        ok(&[
            "--quiet",
            "convert",
            "--input",
            s(&raw),
            "--output",
            s(&shards),
            "--size",
            "16",
            "--split",
            "train=0.8,eval=0.2",
            "--shards",
            "1",
            "--strokes",
            "--max-points",
            "64",
        ]);
        Data { tmp, raw, shards }
    }
    fn dir(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
    fn train(&self, model: &str, name: &str, steps: u64, extra: &[&str]) -> PathBuf {
        let dir = self.dir(name);
        let (train, eval) = (
            format!("{}/train-*", s(&self.shards)),
            format!("{}/eval-*", s(&self.shards)),
        );
        let steps = steps.to_string();
        let mut args = vec![
            "--quiet",
            "train",
            "--model",
            model,
            "--model-dir",
            dir.to_str().unwrap(),
            "--train-files",
            &train,
            "--eval-files",
            &eval,
            "--train-steps",
            &steps,
            "--batch-size",
            "16",
            "--checkpoint-every",
            "10",
            "--eval-every",
            "10",
        ];
        args.extend_from_slice(extra);
        ok(&args);
        dir
    }
    fn ndjson(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(&self.raw)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }
}

/// `quickdraw export` with the check sample written next to the model dir; returns (output, check file).
fn export(model_dir: &Path, extra: &[&str]) -> (Output, PathBuf) {
    let check = model_dir.with_extension(format!("check{}.json", extra.len()));
    let mut args = vec![
        "export",
        "--model-dir",
        model_dir.to_str().unwrap(),
        "--write-check",
        check.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    (qd(&args), check)
}

/// Exports, expecting success; returns (version folder, check file).
fn export_ok(model_dir: &Path, extra: &[&str]) -> (PathBuf, PathBuf) {
    let (o, check) = export(model_dir, extra);
    assert!(
        o.status.success(),
        "export {} {extra:?} failed: {}",
        model_dir.display(),
        text(&o)
    );
    let dir = PathBuf::from(last_line(&o));
    assert!(
        dir.is_dir(),
        "last stdout line {dir:?} is not the version folder: {}",
        text(&o)
    );
    (dir, check)
}

/// Checks one version folder against the contract.
fn check_layout(dir: &Path, kind: &str, version: u64) {
    assert_eq!(
        dir.file_name().unwrap().to_str().unwrap(),
        version.to_string()
    );
    let expected: BTreeSet<String> = [
        "model.onnx",
        "signature.json",
        "assets/labels.txt",
        "assets/preprocessing.json",
        "metrics.json",
        "model_card.md",
        "assets.extra/tf_serving_warmup_requests",
        "assets/drift_reference.json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(files(dir), expected, "{}", dir.display());
    let info = quickdraw_data::signature::load_export_dir(dir).unwrap();
    assert_eq!(info.version, Some(version));
    assert_eq!(info.signature.model.kind.as_str(), kind);
    assert_eq!(info.labels.len(), 3);
    let m = &info.metrics;
    assert!(
        m["accuracy"].as_f64().is_some() && m["baseline"]["accuracy"].as_f64().is_some(),
        "{m}"
    );
    // The model card says what metrics.json says.
    let card = fs::read_to_string(dir.join("model_card.md")).unwrap();
    let acc = format!(
        "| accuracy | {:.2}% |",
        100.0 * m["accuracy"].as_f64().unwrap()
    );
    assert!(card.contains(&acc), "{acc} not in\n{card}");
    assert!(
        card.contains(&format!("Classes (3): {}.", info.labels.join(", "))),
        "{card}"
    );
    // The drift reference: the training inputs' statistics and the training class mix.
    let r = read_json(&dir.join("assets/drift_reference.json"));
    let shares: f64 = r["classes"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_f64().unwrap())
        .sum();
    assert!((shares - 1.0).abs() < 1e-9, "{r}");
    assert!(
        r["drawings"].as_u64().unwrap() > 0
            && !r["numeric"]["strokes"].as_array().unwrap().is_empty(),
        "{r}"
    );
    assert!(m["dataset_written_at"].as_f64().is_some(), "{m}");
    // No temporary folder is left in the base folder.
    let base = dir.parent().unwrap();
    for e in fs::read_dir(base).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".tmp"), "{name} left in {}", base.display());
    }
}

/// `predict` (burn) and `model run` (tract) agree on raw drawings.
fn burn_and_tract_agree(model_dir: &Path, version_dir: &Path, inputs: &[PathBuf]) {
    let mut pa = vec![
        "predict",
        "--model-dir",
        model_dir.to_str().unwrap(),
        "--json",
        "-k",
        "3",
        "--limit",
        "12",
    ];
    let mut ra = vec![
        "model",
        "run",
        "--dir",
        version_dir.to_str().unwrap(),
        "--json",
        "-k",
        "3",
        "--limit",
        "12",
    ];
    for i in inputs {
        pa.push(i.to_str().unwrap());
        ra.push("--input-ndjson");
        ra.push(i.to_str().unwrap());
    }
    // `predict` uses the latest checkpoint by default: compare with the one exported.
    let step = read_json(&version_dir.join("metrics.json"))["step"]
        .as_u64()
        .unwrap()
        .to_string();
    pa.extend(["--checkpoint", &step]);
    let (burn, tract) = (ok(&pa), ok(&ra));
    let lines = |o: &Output| -> Vec<Value> {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (b, t) = (lines(&burn), lines(&tract));
    assert_eq!(b.len(), 12);
    assert_eq!(b.len(), t.len());
    for (x, y) in b.iter().zip(&t) {
        assert_eq!((&x["key_id"], &x["index"]), (&y["key_id"], &y["index"]));
        assert_eq!(
            x["top_k"][0]["label"], y["top_k"][0]["label"],
            "top class: burn {x} tract {y}"
        );
        for cx in x["top_k"].as_array().unwrap() {
            let cy = y["top_k"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["label"] == cx["label"])
                .unwrap();
            let d =
                (cx["probability"].as_f64().unwrap() - cy["probability"].as_f64().unwrap()).abs();
            assert!(d <= 1e-4, "burn {cx} vs tract {cy}");
        }
    }
}

/// Runs tests/python/check_onnx.py on check files (skips without the venv unless required).
fn python_check(checks: &[PathBuf]) {
    let root = util::repo_root();
    let Some(python) = util::verification_python() else {
        return;
    };
    let required = std::env::var_os("QUICKDRAW_REQUIRE_PYTHON").is_some();
    let o = Command::new(&python)
        .arg(root.join("tests/python/check_onnx.py"))
        .args(checks)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    if !o.status.success() && !required && stderr.contains("No module named 'onnx") {
        eprintln!(
            "SKIP: onnx/onnxruntime are not installed in the venv (pip install -r tests/python/requirements.txt)"
        );
        return;
    }
    assert!(
        o.status.success(),
        "check_onnx.py failed:\n{stderr}\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
    eprint!("{}", String::from_utf8_lossy(&o.stdout));
    // The warm-up files, read by TensorFlow's TFRecord reader and TF Serving's PredictionLog.
    let o = Command::new(&python)
        .arg(root.join("tests/python/check_warmup.py"))
        .args(checks)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "check_warmup.py failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn export_every_model_kind_and_the_gate() {
    let data = Data::new();
    let mut checks = Vec::new();

    // The lecture's CNN, small: two conv blocks and a narrow dense layer.
    let cnn = data.train(
        "cnn",
        "cnn",
        60,
        &[
            "--conv",
            "3:2:4,3:2:8",
            "--dense",
            "16",
            "--dropout",
            "0.1",
            "--learning-rate",
            "0.01",
        ],
    );
    let (v1, check) = export_ok(&cnn, &[]);
    assert_eq!(v1, cnn.join("export").join("1"));
    check_layout(&v1, "cnn", 1);
    let m = read_json(&v1.join("metrics.json"));
    assert!(m["gate"]["passed"].as_bool().unwrap(), "{m}");
    assert!(
        m["accuracy"].as_f64().unwrap() > m["baseline"]["accuracy"].as_f64().unwrap(),
        "{m}"
    );
    let sig = read_json(&v1.join("signature.json"));
    assert_eq!(
        sig["inputs"]["img_16"]["shape"],
        serde_json::json!([-1, 1, 16, 16]),
        "{sig}"
    );
    checks.push(check);

    // Same model again: not below the newest version, so version 2; with --quiet the path is
    // all that is printed.
    let (o, _) = export(&cnn, &["--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(o.stderr.is_empty(), "{}", text(&o));
    let v2 = PathBuf::from(
        String::from_utf8(o.stdout)
            .unwrap()
            .strip_suffix('\n')
            .unwrap(),
    );
    check_layout(&v2, "cnn", 2);

    // A newest version that claims a better accuracy makes the gate refuse, --force overrides.
    let mpath = v2.join("metrics.json");
    let mut better = read_json(&mpath);
    better["accuracy"] = 1.5.into();
    fs::write(&mpath, better.to_string()).unwrap();
    let (o, _) = export(&cnn, &[]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("below") && err.contains("version 2") && err.contains("--force"),
        "{err}"
    );
    let (v3, _) = export_ok(&cnn, &["--force"]);
    check_layout(&v3, "cnn", 3);
    assert!(
        read_json(&v3.join("metrics.json"))["gate"]["forced"]
            .as_bool()
            .unwrap()
    );
    burn_and_tract_agree(&cnn, &v3, &data.ndjson());

    // The class prior is never better than itself: refused, exported with --force into the
    // CNN's base folder (version 4), --export-dir honoured.
    let baseline = data.train("baseline", "baseline", 1, &[]);
    let base = cnn.join("export");
    let (o, _) = export(&baseline, &["--export-dir", base.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not better than the baseline"), "{err}");
    let (v4, check) = export_ok(
        &baseline,
        &["--export-dir", base.to_str().unwrap(), "--force"],
    );
    check_layout(&v4, "baseline", 4);
    checks.push(check);

    // DNN and linear, each in its own model dir's export/.
    for (kind, extra) in [("dnn", &["--hidden", "32"][..]), ("linear", &[][..])] {
        let dir = data.train(kind, kind, 60, extra);
        let (v, check) = export_ok(&dir, &["--force"]);
        check_layout(&v, kind, 1);
        checks.push(check);
        if kind == "dnn" {
            burn_and_tract_agree(&dir, &v, &data.ndjson()[..1]);
        }
    }

    // The bidirectional LSTM on stroke features.
    let rnn = data.train("rnn", "rnn", 20, &["--rnn-units", "8"]);
    let (v, check) = export_ok(&rnn, &["--force"]);
    check_layout(&v, "rnn", 1);
    let sig = read_json(&v.join("signature.json"));
    assert_eq!(
        sig["inputs"]["strokes"]["shape"],
        serde_json::json!([-1, -1, 3]),
        "{sig}"
    );
    checks.push(check);
    burn_and_tract_agree(&rnn, &v, &data.ndjson()[..1]);

    // The CNN with batch normalization: an ONNX BatchNormalization node per block, computed
    // from the running statistics as burn's evaluation computes it (tract, onnxruntime).
    let bn = data.train(
        "cnn",
        "cnn-batch-norm",
        30,
        &["--conv", "3:2:4,3:2:8", "--dense", "16", "--batch-norm"],
    );
    let (v, check) = export_ok(&bn, &["--force"]);
    check_layout(&v, "cnn", 1);
    let onnx = fs::read(v.join("model.onnx")).unwrap();
    let n_bn = onnx
        .windows(18)
        .filter(|w| w == b"BatchNormalization")
        .count();
    assert_eq!(n_bn, 2, "BatchNormalization nodes in the export");
    checks.push(check);
    burn_and_tract_agree(&bn, &v, &data.ndjson()[..1]);

    // Wide & deep: the CNN plus the linear part over the metadata; a second graph input.
    let wd = data.train(
        "wide_deep",
        "wide_deep",
        30,
        &[
            "--conv",
            "3:2:4",
            "--dense",
            "16",
            "--learning-rate",
            "0.01",
        ],
    );
    let (v, check) = export_ok(&wd, &["--force"]);
    check_layout(&v, "wide_deep", 1);
    let sig = read_json(&v.join("signature.json"));
    let pre = read_json(&v.join("assets/preprocessing.json"));
    assert_eq!(
        sig["inputs"]["wide"]["shape"][1],
        128 + 2 + 12 + 9,
        "{sig} {pre}"
    );
    assert_eq!(pre["wide"]["country_buckets"], 128, "{pre}");
    checks.push(check);
    burn_and_tract_agree(&wd, &v, &data.ndjson()[..1]);

    python_check(&checks);
}

#[test]
fn non_finite_weights_are_never_exported() {
    let data = Data::new();
    let dir = data.train("linear", "nan", 10, &[]);
    // Poison the checkpoint's output bias.
    let cfg = TrainConfig::load(&dir).unwrap();
    let ck = select_checkpoint(&dir, CheckpointSel::Latest).unwrap();
    let device =
        quickdraw_train::device::inference_device(quickdraw_train::DeviceChoice::Cpu).unwrap();
    let Model::Linear(mut m) = load_model(&cfg.model, &ck, &device).unwrap() else {
        panic!("linear")
    };
    m.output.bias = Some(Param::from_tensor(Tensor::<1>::full(
        [3],
        f32::NAN,
        &device,
    )));
    Model::Linear(m).save_file(ck.model_file()).unwrap();
    // As a diverged run would have written it: with a matching checksum.
    let state_path = ck.dir.join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    state["sha256"]["model.bpk"] = quickdraw_train::modeldir::sha256_file(&ck.model_file())
        .unwrap()
        .into();
    std::fs::write(&state_path, state.to_string()).unwrap();

    let step = ck.state.step.to_string();
    let (o, _) = export(&dir, &["--checkpoint", &step, "--force"]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("non-finite") && err.contains("output.bias"),
        "{err}"
    );
    assert!(!dir.join("export").join("1").exists());
}
