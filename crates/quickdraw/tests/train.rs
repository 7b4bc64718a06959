//! End-to-end tests of the training stage through the real `quickdraw` binary: every model
//! trains, resume (also after kill -9 and Ctrl-C), config guard, evaluate/compare/predict/metrics.
#![cfg(feature = "train")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use quickdraw_data::events::{Kind, What, event_files, read_events, read_scalars};
use quickdraw_train::testdata::{TinyDataset, write_tiny_dataset};

use crate::util::{bin, ok, ok_owned, qd, qd_owned, s, stderr};

struct Data {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Data {
    fn new(strokes: bool) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let t = TinyDataset {
            classes: 3,
            train_per_class: 30,
            eval_per_class: 10,
            image_size: 16,
            strokes: strokes.then_some(24),
            train_shards: 2,
            seed: 3,
        };
        write_tiny_dataset(&dir, &t).unwrap();
        Data { _tmp: tmp, dir }
    }
    fn train(&self) -> String {
        format!("{}/train-*", self.dir.display())
    }
    fn eval(&self) -> String {
        format!("{}/eval-*", self.dir.display())
    }
    fn model_dir(&self, name: &str) -> PathBuf {
        self.dir.parent().unwrap().join(name)
    }
}

/// `quickdraw train` args for a small run.
fn train_args(d: &Data, model: &str, dir: &Path, steps: u64, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "--quiet".into(),
        "train".into(),
        "--model".into(),
        model.into(),
        "--model-dir".into(),
        s(dir).into(),
        "--train-files".into(),
        d.train(),
        "--eval-files".into(),
        d.eval(),
        "--train-steps".into(),
        steps.to_string(),
        "--batch-size".into(),
        "16".into(),
        "--log-every".into(),
        "1".into(),
        "--seed".into(),
        "1".into(),
    ];
    v.extend(extra.iter().map(|x| x.to_string()));
    v
}

/// `args` (of [`train_args`]) with another `--batch-size`.
fn with_batch_size(mut args: Vec<String>, batch_size: u64) -> Vec<String> {
    let i = args.iter().position(|a| a == "--batch-size").unwrap();
    args[i + 1] = batch_size.to_string();
    args
}

fn train(d: &Data, model: &str, dir: &Path, steps: u64, extra: &[&str]) -> Output {
    let args = train_args(d, model, dir, steps, extra);
    ok_owned(&args)
}

/// Training losses logged at every step.
fn losses(dir: &Path) -> Vec<f32> {
    let mut pts: Vec<_> = read_scalars(dir)
        .unwrap()
        .into_iter()
        .filter(|p| p.tag == "loss")
        .collect();
    pts.sort_by_key(|p| p.step);
    pts.into_iter().map(|p| p.value).collect()
}

fn assert_loss_falls(dir: &Path, what: &str) {
    let l = losses(dir);
    assert!(l.len() >= 10, "{what}: {} losses logged", l.len());
    let head: f32 = l[..5].iter().sum::<f32>() / 5.0;
    let tail: f32 = l[l.len() - 5..].iter().sum::<f32>() / 5.0;
    assert!(
        tail < head * 0.9,
        "{what}: loss did not fall: first {head:.4}, last {tail:.4} ({l:?})"
    );
}

fn checkpoint_steps(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(dir.join("checkpoints"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .strip_prefix("step-")
                        .and_then(|n| n.parse().ok())
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn eval_json(dir: &Path, d: &Data) -> serde_json::Value {
    let out = ok(&[
        "--quiet",
        "evaluate",
        "--model-dir",
        s(dir),
        "--eval-files",
        &d.eval(),
        "--json",
    ]);
    serde_json::from_slice(&out.stdout).expect("evaluate --json prints one JSON object")
}

#[test]
fn linear_trains_loss_falls_and_writes_the_model_dir() {
    let d = Data::new(false);
    let dir = d.model_dir("linear");
    let out = train(
        &d,
        "linear",
        &dir,
        40,
        &[
            "--learning-rate",
            "0.01",
            "--checkpoint-every",
            "10",
            "--eval-every",
            "20",
            "--json",
        ],
    );
    assert!(
        stderr(&out).contains("parameters"),
        "parameter count printed: {}",
        stderr(&out)
    );
    assert_loss_falls(&dir, "linear");
    for f in ["config.json", "labels.txt", "metrics.jsonl"] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("labels.txt")).unwrap(),
        "circle\nsquare\ntriangle\n"
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["final_step"], 40);
    assert_eq!(summary["parameters"], 16 * 16 * 3 + 3);
    // Checkpoints: last 5 kept (10..40 are 4), each complete.
    assert_eq!(checkpoint_steps(&dir), vec![10, 20, 30, 40]);
    for st in checkpoint_steps(&dir) {
        let ck = dir.join(format!("checkpoints/step-{st:08}"));
        for f in ["model.bpk", "optimizer.bpk", "state.json"] {
            assert!(ck.join(f).is_file(), "{}", ck.join(f).display());
        }
    }
    // metrics.jsonl: evaluations at 20 and 40.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines
            .iter()
            .map(|l| l["step"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![20, 40]
    );
    assert!(
        lines[1]["accuracy"].as_f64().unwrap() > 0.5,
        "{:?}",
        lines[1]
    );
    // TensorBoard: train scalars, input image, histograms; eval scalars and confusion image.
    let events = read_events(&event_files(&dir).unwrap()[0]).unwrap();
    let tags: Vec<(String, &'static str)> = events
        .iter()
        .filter_map(|e| match &e.what {
            Some(What::Summary(s)) => Some(s.value.iter().map(|v| {
                let k = match v.value {
                    Some(Kind::SimpleValue(_)) => "scalar",
                    Some(Kind::Image(_)) => "image",
                    Some(Kind::Histo(_)) => "histo",
                    _ => "other",
                };
                (v.tag.clone(), k)
            })),
            _ => None,
        })
        .flatten()
        .collect();
    for (tag, kind) in [
        ("loss", "scalar"),
        ("accuracy", "scalar"),
        ("top3_accuracy", "scalar"),
        ("learning_rate", "scalar"),
        ("examples_per_sec", "scalar"),
        ("inputs", "image"),
    ] {
        assert!(
            tags.iter().any(|(t, k)| t == tag && *k == kind),
            "{tag} ({kind}) missing from {tags:?}"
        );
    }
    assert!(
        tags.iter()
            .any(|(t, k)| t.starts_with("weights/") && t.contains("output") && *k == "histo"),
        "weight histograms missing from {tags:?}"
    );
    let eval_tags: Vec<String> = read_scalars(&dir.join("eval"))
        .unwrap()
        .into_iter()
        .map(|p| p.tag)
        .collect();
    for t in ["loss", "accuracy", "top3_accuracy", "map3"] {
        assert!(eval_tags.iter().any(|x| x == t), "eval {t}");
    }
    // metrics --csv exports both runs.
    let out = ok(&["metrics", "--model-dir", s(&dir), "--csv"]);
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(csv.starts_with("run,tag,step,wall_time,value\n"), "{csv}");
    assert!(csv.contains("\ntrain,loss,1,"), "{csv}");
    assert!(csv.contains("\neval,accuracy,40,"), "{csv}");
}

#[test]
fn dnn_trains_and_loss_falls() {
    let d = Data::new(false);
    let dir = d.model_dir("dnn");
    train(
        &d,
        "dnn",
        &dir,
        40,
        &[
            "--hidden",
            "32,16",
            "--learning-rate",
            "0.005",
            "--checkpoint-every",
            "100",
        ],
    );
    assert_loss_falls(&dir, "dnn");
}

#[test]
fn cnn_trains_and_loss_falls() {
    let d = Data::new(false);
    let dir = d.model_dir("cnn");
    let out = train(
        &d,
        "cnn",
        &dir,
        40,
        &[
            "--conv",
            "3:2:8,3:2:8",
            "--dense",
            "32",
            "--learning-rate",
            "0.005",
            "--checkpoint-every",
            "100",
        ],
    );
    // conv 3*3*1*8+8=80, 3*3*8*8+8=584, dense 4*4*8*32+32=4128, out 32*3+3=99.
    assert!(stderr(&out).contains("4891 parameters"), "{}", stderr(&out));
    assert_loss_falls(&dir, "cnn");
}

#[test]
fn rnn_trains_on_strokes_and_loss_falls() {
    let d = Data::new(true);
    let dir = d.model_dir("rnn");
    train(
        &d,
        "rnn",
        &dir,
        30,
        &[
            "--rnn-units",
            "12",
            "--learning-rate",
            "0.01",
            "--checkpoint-every",
            "100",
        ],
    );
    assert_loss_falls(&dir, "rnn");
    let ev = eval_json(&dir, &d);
    assert_eq!(ev["examples"], 30);
}

#[test]
fn rnn_without_stroke_features_is_refused() {
    let d = Data::new(false);
    let out = qd_owned(&train_args(&d, "rnn", &d.model_dir("r"), 5, &[]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--strokes"), "{}", stderr(&out));
}

#[test]
fn baseline_predicts_the_prior_and_evaluates() {
    let d = Data::new(false);
    let dir = d.model_dir("baseline");
    train(&d, "baseline", &dir, 5, &[]);
    let ev = eval_json(&dir, &d);
    // Balanced classes: the prior is uniform, loss = ln 3.
    let loss = ev["loss"].as_f64().unwrap();
    assert!((loss - 3f64.ln()).abs() < 1e-3, "baseline loss {loss}");
    for k in [
        "accuracy",
        "top3_accuracy",
        "map3",
        "loss",
        "examples",
        "per_class",
        "confusion",
    ] {
        assert!(ev.get(k).is_some(), "evaluate --json lacks {k}: {ev}");
    }
    assert_eq!(
        ev["top3_accuracy"], 1.0,
        "3 classes: the true class is always in the top 3"
    );
}

#[test]
fn evaluate_json_png_and_report_file() {
    let d = Data::new(false);
    let dir = d.model_dir("m");
    train(
        &d,
        "linear",
        &dir,
        20,
        &["--checkpoint-every", "10", "--learning-rate", "0.01"],
    );
    let png = dir.parent().unwrap().join("cm.png");
    let out = ok(&[
        "--quiet",
        "evaluate",
        "--model-dir",
        s(&dir),
        "--eval-files",
        &d.eval(),
        "--json",
        "--checkpoint",
        "10",
        "--png",
        s(&png),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim().lines().count(), 1, "one JSON object: {text}");
    let ev: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    for k in ["accuracy", "top3_accuracy", "map3", "loss", "examples"] {
        assert!(ev[k].is_number(), "{k} in {ev}");
    }
    assert_eq!(ev["examples"], 30);
    assert_eq!(ev["step"], 10);
    assert_eq!(ev["per_class"].as_array().unwrap().len(), 3);
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    assert!(dir.join("evaluation.json").is_file());
    // --eval-steps limits the batches.
    let out = ok(&[
        "--quiet",
        "evaluate",
        "--model-dir",
        s(&dir),
        "--eval-files",
        &d.eval(),
        "--json",
        "--eval-steps",
        "1",
        "--batch-size",
        "8",
    ]);
    let ev: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ev["examples"], 8);
    // Table output names the metrics.
    let out = ok(&[
        "--quiet",
        "evaluate",
        "--model-dir",
        s(&dir),
        "--eval-files",
        &d.eval(),
    ]);
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(
        t.contains("map@3") && t.contains("precision") && t.contains("triangle"),
        "{t}"
    );
}

#[test]
fn resume_continues_at_the_right_step_and_matches_an_uninterrupted_run() {
    let d = Data::new(false);
    let a = d.model_dir("a");
    let b = d.model_dir("b");
    let common = [
        "--checkpoint-every",
        "5",
        "--learning-rate",
        "0.01",
        "--shuffle-buffer",
        "20",
    ];
    train(&d, "linear", &a, 10, &common);
    let out = train(&d, "linear", &a, 25, &common);
    assert!(
        stderr(&out).contains("resuming from step 10"),
        "{}",
        stderr(&out)
    );
    assert_eq!(checkpoint_steps(&a).last(), Some(&25));
    train(&d, "linear", &b, 25, &common);
    let (ea, eb) = (eval_json(&a, &d), eval_json(&b, &d));
    let (la, lb) = (ea["loss"].as_f64().unwrap(), eb["loss"].as_f64().unwrap());
    assert!(
        (la - lb).abs() < 1e-4,
        "resumed run diverged from the uninterrupted one: {la} vs {lb}"
    );
    // Nothing to do when already there.
    let out = train(&d, "linear", &a, 25, &common);
    assert!(stderr(&out).contains("nothing to do"), "{}", stderr(&out));
}

#[test]
fn changed_config_is_refused_unless_overwrite() {
    let d = Data::new(false);
    let dir = d.model_dir("m");
    train(&d, "linear", &dir, 5, &[]);
    let args = train_args(&d, "linear", &dir, 10, &["--learning-rate", "0.5"]);
    let out = qd_owned(&args);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("learning_rate") && e.contains("--overwrite"),
        "{e}"
    );
    let out = train(
        &d,
        "linear",
        &dir,
        10,
        &["--learning-rate", "0.5", "--overwrite"],
    );
    assert!(
        stderr(&out).contains("--overwrite: removed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(checkpoint_steps(&dir), vec![10]);
    // A non-empty directory that is not a model dir is never written into.
    let foreign = d.model_dir("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("thesis.tex"), "precious").unwrap();
    let out = qd_owned(&train_args(&d, "linear", &foreign, 5, &[]));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not a model directory"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn warm_start_is_loud_and_starts_at_step_zero() {
    let d = Data::new(false);
    let a = d.model_dir("a");
    let b = d.model_dir("b");
    train(&d, "linear", &a, 10, &[]);
    let out = train(&d, "linear", &b, 5, &["--warm-start-from", s(&a)]);
    assert!(stderr(&out).contains("WARM START"), "{}", stderr(&out));
    assert_eq!(checkpoint_steps(&b), vec![5]);
}

#[test]
fn n_classes_is_checked_against_labels() {
    let d = Data::new(false);
    let out = qd_owned(&train_args(
        &d,
        "linear",
        &d.model_dir("m"),
        5,
        &["--n-classes", "4"],
    ));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--n-classes 4") && stderr(&out).contains("3 classes"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn missing_manifest_fails_with_a_clear_message() {
    let d = Data::new(false);
    std::fs::remove_file(d.dir.join("manifest.json")).unwrap();
    let out = qd_owned(&train_args(&d, "linear", &d.model_dir("m"), 5, &[]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("manifest.json"), "{}", stderr(&out));
}

fn wait_for_checkpoint(dir: &Path, child: &mut std::process::Child) -> u64 {
    let t = Instant::now();
    loop {
        if let Some(&st) = checkpoint_steps(dir).first() {
            return st;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("training ended before the first checkpoint: {status}");
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no checkpoint after 120 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn_long(d: &Data, dir: &Path) -> std::process::Child {
    let args = train_args(
        d,
        "dnn",
        dir,
        1_000_000,
        &["--hidden", "256", "--checkpoint-every", "3"],
    );
    bin()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn killed_run_resumes_cleanly() {
    let d = Data::new(false);
    let dir = d.model_dir("killed");
    let mut child = spawn_long(&d, &dir);
    wait_for_checkpoint(&dir, &mut child);
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let steps = checkpoint_steps(&dir);
    let last = *steps.last().unwrap();
    for st in &steps {
        let ck = dir.join(format!("checkpoints/step-{st:08}"));
        for f in ["model.bpk", "optimizer.bpk", "state.json"] {
            assert!(
                ck.join(f).is_file(),
                "incomplete checkpoint {}",
                ck.display()
            );
        }
    }
    let target = last + 4;
    let args = train_args(
        &d,
        "dnn",
        &dir,
        target,
        &["--hidden", "256", "--checkpoint-every", "3"],
    );
    let out = ok_owned(&args);
    assert!(
        stderr(&out).contains(&format!("resuming from step {last}")),
        "{}",
        stderr(&out)
    );
    assert_eq!(checkpoint_steps(&dir).last(), Some(&target));
    let ev = eval_json(&dir, &d);
    assert_eq!(ev["step"], target);
}

#[cfg(unix)]
#[test]
fn ctrl_c_checkpoints_and_exits_130() {
    let d = Data::new(false);
    let dir = d.model_dir("int");
    let mut child = spawn_long(&d, &dir);
    wait_for_checkpoint(&dir, &mut child);
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    assert!(!checkpoint_steps(&dir).is_empty());
    assert!(
        std::fs::read_dir(dir.join("checkpoints"))
            .unwrap()
            .all(|e| !e.unwrap().file_name().to_string_lossy().starts_with(".tmp"))
    );
}

#[test]
fn compare_and_predict() {
    let d = Data::new(false);
    let a = d.model_dir("a");
    let b = d.model_dir("b");
    train(&d, "baseline", &a, 2, &[]);
    train(&d, "linear", &b, 30, &["--learning-rate", "0.01"]);
    let out = ok(&[
        "--quiet",
        "compare",
        s(&a),
        s(&b),
        "--eval-files",
        &d.eval(),
        "--json",
    ]);
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        c["delta_accuracy"].as_f64().unwrap() > 0.0,
        "linear beats the prior: {}",
        c["delta_accuracy"]
    );
    let flips = c["flips"].as_array().unwrap();
    assert_eq!(
        flips.len() as u64,
        c["fixed"].as_u64().unwrap() + c["broken"].as_u64().unwrap()
    );
    assert!(flips.iter().all(|f| f["key_id"].as_u64().unwrap() > 0));
    assert_eq!(c["per_class"].as_array().unwrap().len(), 3);
    let out = ok(&[
        "--quiet",
        "compare",
        s(&a),
        s(&b),
        "--eval-files",
        &d.eval(),
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("flipped"));

    // predict: TFRecord input, JSON lines with the top 3.
    let shard = d.dir.join("eval-00000-of-00001.tfrecord");
    let out = ok(&[
        "--quiet",
        "predict",
        "--model-dir",
        s(&b),
        s(&shard),
        "--json",
        "--limit",
        "5",
    ]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    for l in &lines {
        let top = l["top_k"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let p: f64 = top.iter().map(|t| t["probability"].as_f64().unwrap()).sum();
        assert!(
            (p - 1.0).abs() < 1e-3,
            "3 classes: top 3 probabilities sum to 1 ({p})"
        );
        assert!(l["label"].is_string());
    }
    // predict: NDJSON drawings, preprocessed with the model's feature spec.
    let nd = d.dir.parent().unwrap().join("mine.ndjson");
    let cfg = quickdraw_data::synth::SynthConfig {
        classes: 3,
        per_class: 2,
        seed: 99,
        unrecognized_share: 0.0,
    };
    let text: String = quickdraw_data::synth::synth_all(&cfg)
        .map(|dr| quickdraw_data::ingest::ndjson::to_line_as(&dr, false) + "\n")
        .collect();
    std::fs::write(&nd, text).unwrap();
    let out = ok(&["--quiet", "predict", "--model-dir", s(&b), s(&nd)]);
    let t = String::from_utf8_lossy(&out.stdout);
    assert_eq!(t.lines().count(), 1 + 6, "header + 6 drawings: {t}");
}

// ---- Reliability (issue 11): metrics never lie, checkpoints are verified, one writer ----

fn fail(args: &[String]) -> String {
    let out = qd_owned(&args);
    assert!(
        !out.status.success(),
        "quickdraw {args:?} should have failed\nstderr: {}",
        stderr(&out)
    );
    stderr(&out)
}

fn last_checkpoint_dir(dir: &Path) -> PathBuf {
    let st = *checkpoint_steps(dir).last().expect("a checkpoint");
    dir.join(format!("checkpoints/step-{st:08}"))
}

#[test]
fn a_diverged_model_scores_as_wrong_and_training_stops_on_nan() {
    let d = Data::new(false);
    let dir = d.model_dir("diverged");
    // One Adam step at lr 1e38 moves every weight by ~1e38: the logits overflow to inf/NaN.
    train(&d, "linear", &dir, 1, &["--learning-rate", "1e38"]);
    let ev = eval_json(&dir, &d);
    let n = ev["examples"].as_u64().unwrap();
    let invalid = ev["invalid_predictions"].as_u64().unwrap();
    assert!(
        invalid > 0,
        "expected NaN outputs from a diverged model: {ev}"
    );
    assert!(
        ev["loss"].is_null(),
        "loss must be NaN (null), got {}",
        ev["loss"]
    );
    let acc = ev["accuracy"].as_f64().unwrap();
    assert!(
        acc <= (n - invalid) as f64 / n as f64,
        "invalid predictions counted as right: accuracy {acc}, {invalid} of {n} invalid"
    );
    let confusion_total: u64 = ev["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()))
        .sum();
    let diagonal: u64 = (0..3)
        .map(|i| ev["confusion"][i][i].as_u64().unwrap())
        .sum();
    assert_eq!(confusion_total, n - invalid);
    assert!(
        (acc - diagonal as f64 / n as f64).abs() < 1e-12,
        "confusion disagrees: {ev}"
    );
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(last_checkpoint_dir(&dir).join("state.json")).unwrap(),
    )
    .unwrap();
    assert!(
        (state["eval_accuracy"].as_f64().unwrap() - acc).abs() < 1e-12,
        "state.json must record the honest accuracy: {state}"
    );
    let err = stderr(&qd(&[
        "evaluate",
        "--model-dir",
        s(&dir),
        "--eval-files",
        &d.eval(),
    ]));
    assert!(
        err.contains("WARNING") && err.contains("NaN or infinite"),
        "{err}"
    );

    // Going on from there, the loss is NaN at once: training stops, keeping the last checkpoint.
    let err = fail(&train_args(
        &d,
        "linear",
        &dir,
        5,
        &["--learning-rate", "1e38"],
    ));
    assert!(err.contains("TerminateOnNaN"), "{err}");
    assert!(
        err.contains("step-00000001"),
        "names the last good checkpoint: {err}"
    );
    assert_eq!(checkpoint_steps(&dir), vec![1]);
}

#[test]
fn flipped_bytes_in_a_checkpoint_are_refused_by_evaluate_resume_and_export() {
    let d = Data::new(false);
    let dir = d.model_dir("flipped");
    train(&d, "linear", &dir, 5, &["--learning-rate", "0.01"]);
    let ck = last_checkpoint_dir(&dir);
    let flip = |file: &str| {
        let p = ck.join(file);
        let mut b = std::fs::read(&p).unwrap();
        let i = b.len() - 9;
        b[i] ^= 0x10;
        std::fs::write(&p, b).unwrap();
    };
    flip("model.bpk");
    let eval = [
        "evaluate".to_string(),
        "--model-dir".into(),
        s(&dir).into(),
        "--eval-files".into(),
        d.eval(),
    ];
    for args in [
        eval.to_vec(),
        train_args(&d, "linear", &dir, 10, &["--learning-rate", "0.01"]),
        vec![
            "export".into(),
            "--model-dir".into(),
            s(&dir).into(),
            "--eval-files".into(),
            d.eval(),
            "--export-dir".into(),
            s(&dir.join("export")).into(),
        ],
    ] {
        let err = fail(&args);
        assert!(
            err.contains("checksum mismatch") && err.contains(s(&ck.join("model.bpk"))),
            "{args:?}: {err}"
        );
    }
    flip("model.bpk"); // restored
    ok_owned(&eval);
    flip("optimizer.bpk");
    let err = fail(&train_args(
        &d,
        "linear",
        &dir,
        10,
        &["--learning-rate", "0.01"],
    ));
    assert!(
        err.contains("checksum mismatch") && err.contains("optimizer.bpk"),
        "{err}"
    );
}

#[test]
fn a_batch_size_that_cannot_fit_is_refused_before_training() {
    let d = Data::new(false);
    let dir = d.model_dir("huge-batch");
    let args = with_batch_size(train_args(&d, "cnn", &dir, 5, &[]), 100000000);
    let err = fail(&args);
    assert!(err.contains("--batch-size 100000000 needs about"), "{err}");
    assert!(
        err.contains("the largest batch size that fits is about"),
        "{err}"
    );
    assert!(checkpoint_steps(&dir).is_empty());
}

#[test]
fn a_stray_shard_matched_by_the_pattern_is_refused_by_name() {
    let d = Data::new(false);
    let other = d.dir.parent().unwrap().join("other");
    let t = TinyDataset {
        classes: 3,
        train_per_class: 12,
        eval_per_class: 4,
        image_size: 16,
        strokes: None,
        train_shards: 1,
        seed: 9,
    };
    write_tiny_dataset(&other, &t).unwrap();
    // Another dataset's shard beside ours, under a name the glob matches.
    let stray = d.dir.join("train-00000-of-00001.tfrecord");
    std::fs::copy(other.join("train-00000-of-00001.tfrecord"), &stray).unwrap();
    let dir = d.model_dir("stray");
    let err = fail(&train_args(&d, "linear", &dir, 2, &[]));
    assert!(
        err.contains(s(&stray)) && err.contains("not a shard of this dataset"),
        "{err}"
    );
    std::fs::remove_file(&stray).unwrap();
    // The same name as one of ours, another dataset's content.
    let ours = d.dir.join("train-00001-of-00002.tfrecord");
    std::fs::copy(other.join("train-00000-of-00001.tfrecord"), &ours).unwrap();
    let err = fail(&train_args(&d, "linear", &dir, 2, &[]));
    assert!(
        err.contains(s(&ours)) && err.contains("comes from another dataset"),
        "{err}"
    );
}

#[test]
fn a_second_run_on_the_same_model_dir_is_refused_naming_the_holder() {
    let d = Data::new(false);
    let dir = d.model_dir("locked");
    let mut child = spawn_long(&d, &dir);
    wait_for_checkpoint(&dir, &mut child);
    let err = fail(&train_args(
        &d,
        "dnn",
        &dir,
        1_000_000,
        &["--hidden", "256", "--checkpoint-every", "3"],
    ));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(err.contains("model directory is already in use"), "{err}");
    assert!(err.contains(&format!("pid {}", child.id())), "{err}");
    // Freed by the OS when the holder dies: training resumes.
    train(
        &d,
        "dnn",
        &dir,
        4,
        &["--hidden", "256", "--checkpoint-every", "3"],
    );
}

#[test]
fn resume_with_dropout_matches_an_uninterrupted_run_exactly() {
    // The dropout masks depend on (seed, step) only, so resuming at step 6 draws what the
    // uninterrupted run draws. Compared through the weights' effect on every eval example
    // (model.bpk bytes also hold burn's random parameter ids, which differ between any two runs).
    let d = Data::new(false);
    let a = d.model_dir("drop-a");
    let b = d.model_dir("drop-b");
    let common = [
        "--hidden",
        "32",
        "--dropout",
        "0.5",
        "--checkpoint-every",
        "5",
    ];
    train(&d, "dnn", &a, 6, &common);
    train(&d, "dnn", &a, 12, &common);
    train(&d, "dnn", &b, 12, &common);
    let (ea, eb) = (eval_json(&a, &d), eval_json(&b, &d));
    assert_eq!(ea["step"], 12);
    assert_eq!(
        ea["loss"].as_f64().unwrap().to_bits(),
        eb["loss"].as_f64().unwrap().to_bits(),
        "resumed {} vs uninterrupted {}",
        ea["loss"],
        eb["loss"]
    );
    assert_eq!(ea["confusion"], eb["confusion"]);
}

/// A device this build lacks is refused before anything runs, with the command that builds it;
/// on a build with the feature but no NVIDIA driver, the error names the driver library.
#[test]
fn devices_this_build_or_machine_lacks_are_clear_errors() {
    let d = Data::new(false);
    let dir = d.model_dir("gpu");
    for (device, feature) in [("cuda", "cuda"), ("cubecl", "cubecl")] {
        let built = if feature == "cuda" {
            quickdraw_train::device::CUDA_AVAILABLE
        } else {
            quickdraw_train::device::CUBECL_AVAILABLE
        };
        if built && feature == "cubecl" {
            // Runs on any CPU: quickdraw-train's cubecl_parity test trains on it.
            continue;
        }
        let o = qd_owned(&train_args(&d, "cnn", &dir, 2, &["--device", device]));
        assert!(!o.status.success(), "--device {device} succeeded");
        let e = stderr(&o);
        if !built {
            assert!(e.contains(&format!("--features {feature}")), "{e}");
            assert!(e.contains("scripts/setup-llvm"), "{e}");
        } else if feature == "cuda" {
            assert!(
                e.contains("libcuda.so.1") || e.contains("cannot be opened"),
                "{e}"
            );
        }
        assert!(!e.contains("panicked"), "{e}");
        assert!(!dir.join("state.json").exists());
    }
}

/// `--device cpu,cpu`: two data-parallel replicas on the CPU backend. Without dropout they train
/// as `--device cpu` does: the same step losses, to float summation order, with plain SGD (its
/// step follows the gradient's scale, so a wrong share of the loss shows) and a batch of 15 split
/// 8/7. With dropout a resumed run equals an uninterrupted one bit for bit. With the CubeCL CPU
/// device built in (CI), `--device cpu,cubecl` trains across two backends, and with dropout two
/// runs draw the same masks: cubecl's generator is not the first device's, so this holds only
/// because each step seeds it. A batch smaller than the device count is refused.
#[test]
fn data_parallel_training_over_two_cpu_devices() {
    let d = Data::new(false);
    let args = |dir: &Path, steps: u64, extra: &[&str]| {
        with_batch_size(train_args(&d, "cnn", dir, steps, extra), 15)
    };
    let sgd = [
        "--dropout",
        "0",
        "--optimizer",
        "sgd",
        "--learning-rate",
        "0.1",
    ];
    let (one, two) = (d.model_dir("dp-one"), d.model_dir("dp-two"));
    ok_owned(&args(&one, 6, &sgd));
    ok_owned(&args(
        &two,
        6,
        &[&sgd[..], &["--device", "cpu,cpu"]].concat(),
    ));
    let close = |a: &[f32], b: &[f32], tol: f32| {
        assert_eq!(a.len(), 6);
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() < tol,
                "step {}: {x} vs {y} ({a:?} vs {b:?})",
                i + 1
            );
        }
    };
    let l1 = losses(&one);
    close(&l1, &losses(&two), 1e-4);
    let (e1, e2) = (eval_json(&one, &d), eval_json(&two, &d));
    assert!((e1["loss"].as_f64().unwrap() - e2["loss"].as_f64().unwrap()).abs() < 1e-4);

    let (a, b) = (d.model_dir("dp-a"), d.model_dir("dp-b"));
    let dropout = ["--dropout", "0.5", "--device", "cpu,cpu"];
    train(&d, "cnn", &a, 3, &dropout);
    train(&d, "cnn", &a, 6, &dropout);
    train(&d, "cnn", &b, 6, &dropout);
    let (ea, eb) = (eval_json(&a, &d), eval_json(&b, &d));
    assert_eq!(ea["step"], 6);
    assert_eq!(
        ea["loss"].as_f64().unwrap().to_bits(),
        eb["loss"].as_f64().unwrap().to_bits(),
        "resumed {} vs uninterrupted {}",
        ea["loss"],
        eb["loss"]
    );

    if quickdraw_train::device::CUBECL_AVAILABLE {
        // (Its losses against one device: quickdraw-train's flex_and_cubecl_train_as_flex_alone,
        // in one process. Each process here compiles CubeCL's kernels anew, ~40 s.)
        let (x, y) = (d.model_dir("dp-cubecl-x"), d.model_dir("dp-cubecl-y"));
        let masks = ["--dropout", "0.5", "--device", "cpu,cubecl"];
        train(&d, "cnn", &x, 2, &masks);
        train(&d, "cnn", &y, 2, &masks);
        assert_eq!(losses(&x), losses(&y));
    }

    let small = train_args(
        &d,
        "cnn",
        &d.model_dir("dp-small"),
        2,
        &["--device", "cpu,cpu,cpu"],
    );
    let e = fail(&with_batch_size(small, 2));
    assert!(
        e.contains("--batch-size 2") && e.contains("3 devices"),
        "{e}"
    );
    let e = fail(&train_args(
        &d,
        "cnn",
        &d.model_dir("dp-bad"),
        2,
        &["--device", "cpu,tpu"],
    ));
    assert!(e.contains("\"tpu\""), "{e}");
}

/// `--precision bf16|f16`: mixed precision. Training works (the loss falls), the first step's
/// loss is the float32 one to bf16 rounding (the same initial weights and batch), the
/// checkpoints keep float32 weights (the same size as a float32 run's), the precision is
/// recorded in config.json and a resume that changes it is refused; the rnn model is refused.
#[test]
fn mixed_precision_trains_keeps_float32_weights_and_is_recorded() {
    let d = Data::new(false);
    let small = [
        "--conv",
        "3:2:8,3:2:8",
        "--dense",
        "32",
        "--learning-rate",
        "0.005",
        "--dropout",
        "0",
    ];
    let (f, b) = (d.model_dir("p-f32"), d.model_dir("p-bf16"));
    train(&d, "cnn", &f, 40, &small);
    train(
        &d,
        "cnn",
        &b,
        40,
        &[&small[..], &["--precision", "bf16"]].concat(),
    );
    let (lf, lb) = (losses(&f), losses(&b));
    assert!(
        (lf[0] - lb[0]).abs() < 2e-2 && lf[0] != lb[0],
        "step 1: f32 {} bf16 {}",
        lf[0],
        lb[0]
    );
    assert_loss_falls(&b, "cnn --precision bf16");
    let size = |dir: &Path| {
        std::fs::metadata(last_checkpoint_dir(dir).join("model.bpk"))
            .unwrap()
            .len()
    };
    assert_eq!(size(&f), size(&b), "bf16 checkpoint is not float32");
    let config = std::fs::read_to_string(b.join("config.json")).unwrap();
    assert!(config.contains(r#""precision": "bf16""#), "{config}");
    assert_eq!(eval_json(&b, &d)["step"], 40);

    let e = fail(&train_args(&d, "cnn", &b, 42, &small));
    assert!(e.contains("precision"), "{e}");
    train(
        &d,
        "cnn",
        &b,
        42,
        &[&small[..], &["--precision", "bf16"]].concat(),
    );

    let h = d.model_dir("p-f16");
    train(
        &d,
        "cnn",
        &h,
        3,
        &[&small[..], &["--precision", "f16", "--device", "cpu,cpu"]].concat(),
    );
    assert!(losses(&h).iter().all(|l| l.is_finite()));
    let strokes = Data::new(true);
    let e = fail(&train_args(
        &strokes,
        "rnn",
        &strokes.model_dir("p-rnn"),
        2,
        &["--precision", "bf16"],
    ));
    assert!(e.contains("f32 only"), "{e}");
}

/// `--batch-norm`: recorded in the model config; the running statistics are part of the
/// checkpoint, so a resumed run evaluates exactly as an uninterrupted one; refused where burn's
/// shared running statistics would be wrong (a second device, a lower precision) or absent.
#[test]
fn batch_norm_trains_resumes_exactly_and_is_refused_where_unsupported() {
    let d = Data::new(false);
    let (a, b) = (d.model_dir("bn-a"), d.model_dir("bn-b"));
    let bn = [
        "--batch-norm",
        "--conv",
        "3:2:8,3:2:8",
        "--dense",
        "32",
        "--checkpoint-every",
        "5",
    ];
    train(&d, "cnn", &a, 6, &bn);
    train(&d, "cnn", &a, 12, &bn);
    train(&d, "cnn", &b, 12, &bn);
    let config = std::fs::read_to_string(b.join("config.json")).unwrap();
    assert!(config.contains(r#""batch_norm": true"#), "{config}");
    let (ea, eb) = (eval_json(&a, &d), eval_json(&b, &d));
    assert_eq!(
        ea["loss"].as_f64().unwrap().to_bits(),
        eb["loss"].as_f64().unwrap().to_bits(),
        "resumed {} vs uninterrupted {}",
        ea["loss"],
        eb["loss"]
    );
    // Without --batch-norm the same dir is another configuration.
    let e = fail(&train_args(&d, "cnn", &a, 14, &bn[1..]));
    assert!(e.contains("batch_norm"), "{e}");
    for extra in [&["--precision", "bf16"][..], &["--device", "cpu,cpu"][..]] {
        let e = fail(&train_args(
            &d,
            "cnn",
            &d.model_dir("bn-x"),
            2,
            &[&bn[..], extra].concat(),
        ));
        assert!(
            e.contains("--batch-norm trains on one device in f32 only"),
            "{e}"
        );
    }
    let e = fail(&train_args(
        &d,
        "dnn",
        &d.model_dir("bn-dnn"),
        2,
        &["--batch-norm"],
    ));
    assert!(e.contains("not to dnn"), "{e}");
}

/// `bench read`: the input pipeline alone reads the batches asked for and reports its rate per
/// CPU-second and its decode threads.
#[test]
fn bench_read_reports_images_per_cpu_second() {
    let d = Data::new(false);
    let o = ok(&[
        "bench",
        "read",
        "--files",
        s(&d.dir),
        "--batch-size",
        "8",
        "--batches",
        "5",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    let last = out.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(v["images"], 40, "{v}");
    assert_eq!(v["device"], "cpu");
    assert!(v["decode_threads"].as_u64().unwrap() >= 1, "{v}");
    assert!(v["images_per_cpu_second"].as_f64().unwrap() > 0.0, "{v}");
}

/// `train_args` without `--train-steps` (for `--epochs`).
fn epoch_args(d: &Data, model: &str, dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut v = train_args(d, model, dir, 0, extra);
    let i = v.iter().position(|a| a == "--train-steps").unwrap();
    v.drain(i..i + 2);
    v
}

/// The `learning_rate` scalar by step (the rate the step used).
fn learning_rates(dir: &Path) -> std::collections::BTreeMap<i64, f32> {
    read_scalars(dir)
        .unwrap()
        .into_iter()
        .filter(|p| p.tag == "learning_rate")
        .map(|p| (p.step, p.value))
        .collect()
}

fn metrics_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn epochs_with_a_cosine_schedule_and_warmup_evaluate_every_epoch() {
    // 90 training examples at batch 16: an epoch is 6 steps, 3 epochs 18 steps.
    let d = Data::new(false);
    let dir = d.model_dir("epochs");
    let mut args = epoch_args(
        &d,
        "linear",
        &dir,
        &[
            "--epochs",
            "3",
            "--learning-rate",
            "0.01",
            "--lr-schedule",
            "cosine",
            "--warmup-steps",
            "4",
            "--lr-min-ratio",
            "0.1",
        ],
    );
    args.retain(|a| a != "--quiet");
    let out = ok_owned(&args);
    let err = stderr(&out);
    for e in 1..=3 {
        assert!(
            err.contains(&format!("epoch {e}/3 (step {}): loss ", 6 * e)),
            "no Keras-like line for epoch {e}:\n{err}"
        );
    }
    assert!(err.contains("val_accuracy"), "{err}");
    assert_eq!(checkpoint_steps(&dir).last(), Some(&18));
    let evals: Vec<u64> = metrics_lines(&dir)
        .iter()
        .map(|l| l["step"].as_u64().unwrap())
        .collect();
    assert_eq!(evals, vec![6, 12, 18], "one evaluation per epoch");
    // The rate of step k (1-based) is the schedule at k - 1 steps done: linear warm-up over 4
    // steps, then a cosine from 0.01 to 0.001 over the 14 remaining steps (Keras's CosineDecay
    // with alpha 0.1).
    let lr = learning_rates(&dir);
    let cosine =
        |t: f64| 0.01 * (0.9 * 0.5 * (1.0 + (std::f64::consts::PI * t / 14.0).cos()) + 0.1);
    let want = [
        (1, 0.0025),
        (2, 0.005),
        (4, 0.01),
        (5, cosine(0.0)),
        (12, cosine(7.0)),
        (18, cosine(13.0)),
    ];
    for (step, w) in want {
        let got = lr[&step] as f64;
        assert!(
            (got - w).abs() < 1e-7,
            "learning rate at step {step}: {got} vs {w} ({lr:?})"
        );
    }
    // A rerun of the finished command has nothing to do.
    let out = ok_owned(&args);
    assert!(
        stderr(&out).contains("--epochs 3 = 18 steps): nothing to do"),
        "{}",
        stderr(&out)
    );
    // The cosine's length (18 - 4 warm-up steps) was recorded: a longer run is refused, with
    // the flag that continues at the final rate.
    let longer: Vec<String> = args
        .iter()
        .map(|a| if a == "3" { "4".into() } else { a.clone() })
        .collect();
    let err = fail(&longer);
    assert!(err.contains("add --lr-decay-steps 14"), "{err}");
    let mut longer = longer;
    longer.extend(["--lr-decay-steps".into(), "14".into()]);
    ok_owned(&longer);
    let lr = learning_rates(&dir);
    assert!((lr[&24] as f64 - 0.001).abs() < 1e-9, "{lr:?}");
}

#[test]
fn early_stopping_restores_the_best_weights_and_a_rerun_has_nothing_to_do() {
    // A rate so small that the eval accuracy cannot move: the first evaluation (step 2) stays
    // the best, and after two more without improvement (steps 4 and 6) the run stops.
    let d = Data::new(false);
    let dir = d.model_dir("early");
    let extra = [
        "--optimizer",
        "sgd",
        "--learning-rate",
        "1e-7",
        "--eval-every",
        "2",
        "--early-stopping-patience",
        "2",
        "--early-stopping-metric",
        "val_accuracy",
        "--json",
    ];
    let out = train(&d, "linear", &dir, 40, &extra);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["final_step"], 6, "{summary}");
    assert_eq!(summary["stopped_early"]["best_step"], 2, "{summary}");
    assert_eq!(summary["stopped_early"]["metric"], "val_accuracy");
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(last_checkpoint_dir(&dir).join("state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["step"], 6);
    assert_eq!(state["restored_from_step"], 2);
    assert_eq!(state["monitor"]["stopped"], true);
    // The summary describes the restored weights, not the discarded ones.
    let summary_loss = summary["eval"]["loss"].as_f64().unwrap();
    // The last checkpoint holds step 2's weights: the same loss, to the bit, as step 2's own.
    let eval_at = |ck: &str| {
        let out = ok(&[
            "--quiet",
            "evaluate",
            "--model-dir",
            s(&dir),
            "--eval-files",
            &d.eval(),
            "--json",
            "--checkpoint",
            ck,
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["loss"].as_f64().unwrap()
    };
    let (restored, best, stopped_at) = (eval_at("latest"), eval_at("2"), eval_at("4"));
    assert_eq!(restored.to_bits(), best.to_bits(), "{restored} vs {best}");
    assert_ne!(
        restored.to_bits(),
        stopped_at.to_bits(),
        "the weights did move after step 2"
    );
    assert!(
        (summary_loss - best).abs() < 1e-6,
        "summary {summary_loss} vs step 2 {best}"
    );
    let out = train(&d, "linear", &dir, 40, &extra);
    assert!(
        stderr(&out).contains("early stopping ended this run at step 6"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn plateau_cuts_the_rate_and_resumes_exactly() {
    // Patience 1: every evaluation (every 2 steps) that does not improve the eval accuracy
    // halves the rate. Run A stops at step 5 and resumes to 10; run B goes straight to 10.
    let d = Data::new(false);
    let (a, b) = (d.model_dir("plateau-a"), d.model_dir("plateau-b"));
    let extra = [
        "--optimizer",
        "sgd",
        "--learning-rate",
        "1e-7",
        "--eval-every",
        "2",
        "--lr-schedule",
        "plateau",
        "--lr-patience",
        "1",
        "--early-stopping-metric",
        "val_accuracy",
    ];
    train(&d, "linear", &a, 5, &extra);
    train(&d, "linear", &a, 10, &extra);
    train(&d, "linear", &b, 10, &extra);
    let cfg = std::fs::read_to_string(a.join("config.json")).unwrap();
    assert!(
        cfg.contains("\"monitor\": \"val_accuracy\""),
        "the watched metric is recorded: {cfg}"
    );
    let (la, lb) = (learning_rates(&a), learning_rates(&b));
    for step in 1..=10i64 {
        // Evaluations at 2 (the best), 4, 6, 8: a cut after each of 4, 6 and 8.
        let cuts = ((step - 1) / 2 - 1).clamp(0, 3) as i32;
        let want = 1e-7 * 0.5f64.powi(cuts);
        assert!(
            ((lb[&step] as f64) - want).abs() < want * 1e-5,
            "step {step}: {lb:?}"
        );
        assert_eq!(
            la[&step], lb[&step],
            "resumed rate at step {step}: {la:?} vs {lb:?}"
        );
    }
    let (ea, eb) = (eval_json(&a, &d), eval_json(&b, &d));
    assert_eq!(
        ea["loss"].as_f64().unwrap().to_bits(),
        eb["loss"].as_f64().unwrap().to_bits()
    );
}

#[test]
fn loss_options_are_recorded_and_checked() {
    let d = Data::new(false);
    let dir = d.model_dir("weights");
    train(
        &d,
        "linear",
        &dir,
        6,
        &[
            "--class-weight",
            "balanced",
            "--label-smoothing",
            "0.1",
            "--optimizer",
            "adamw",
            "--weight-decay",
            "0.01",
        ],
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    // The tiny dataset has 30 training examples per class: balanced weights are all 1.
    assert_eq!(
        cfg["class_weights"]["weights"],
        serde_json::json!([1.0, 1.0, 1.0])
    );
    assert_eq!(cfg["label_smoothing"], 0.1);
    assert_eq!(cfg["weight_decay"], 0.01);
    // Changing one of them is a configuration change.
    let err = fail(&train_args(
        &d,
        "linear",
        &dir,
        8,
        &["--label-smoothing", "0.2"],
    ));
    assert!(err.contains("label_smoothing"), "{err}");
    // A weights file naming a class the dataset lacks is refused by name.
    let file = d.dir.parent().unwrap().join("weights.json");
    std::fs::write(&file, r#"{"circle": 2.0, "giraffe": 3.0}"#).unwrap();
    let err = fail(&train_args(
        &d,
        "linear",
        &d.model_dir("w2"),
        4,
        &["--class-weight", s(&file)],
    ));
    assert!(
        err.contains("\"giraffe\" is not one of the dataset's classes"),
        "{err}"
    );
    // Flags that need each other say which.
    let err = fail(&train_args(
        &d,
        "linear",
        &d.model_dir("w3"),
        4,
        &["--lr-schedule", "exponential"],
    ));
    assert!(err.contains("--lr-decay-steps"), "{err}");
    let err = fail(&train_args(
        &d,
        "linear",
        &d.model_dir("w4"),
        4,
        &["--early-stopping-patience", "2"],
    ));
    assert!(err.contains("--eval-every N or --epochs N"), "{err}");
}

#[test]
fn augmentation_is_reproducible_resumes_exactly_and_changes_the_training() {
    let d = Data::new(false);
    let (a, b, plain) = (
        d.model_dir("aug-a"),
        d.model_dir("aug-b"),
        d.model_dir("aug-plain"),
    );
    let aug = ["--augment", "strong", "--learning-rate", "0.01"];
    train(&d, "linear", &a, 5, &aug);
    train(&d, "linear", &a, 10, &aug);
    train(&d, "linear", &b, 10, &aug);
    train(&d, "linear", &plain, 10, &aug[2..]);
    let loss = |dir: &Path| eval_json(dir, &d)["loss"].as_f64().unwrap();
    assert_eq!(
        loss(&a).to_bits(),
        loss(&b).to_bits(),
        "resumed vs uninterrupted"
    );
    assert_ne!(
        loss(&a).to_bits(),
        loss(&plain).to_bits(),
        "augmentation changed nothing"
    );
    let cfg = std::fs::read_to_string(a.join("config.json")).unwrap();
    assert!(cfg.contains("\"augment\": \"strong\""), "{cfg}");
    let err = fail(&train_args(
        &Data::new(true),
        "rnn",
        &d.model_dir("aug-rnn"),
        2,
        &aug,
    ));
    assert!(err.contains("--augment strong transforms images"), "{err}");
}

#[test]
fn evaluate_errors_lists_every_mistake_and_draws_the_confused_pairs() {
    let d = Data::new(false);
    let dir = d.model_dir("errors");
    // Two steps: a model that still makes plenty of mistakes.
    train(&d, "linear", &dir, 2, &[]);
    let errs = d.dir.parent().unwrap().join("errs");
    let png = d.dir.parent().unwrap().join("cm.png");
    let out = ok(&[
        "evaluate",
        "--model-dir",
        s(&dir),
        "--eval-files",
        &d.eval(),
        "--json",
        "--errors",
        s(&errs),
        "--errors-per-pair",
        "3",
        "--png",
        s(&png),
    ]);
    let ev: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let examples = ev["examples"].as_u64().unwrap();
    let correct = (ev["accuracy"].as_f64().unwrap() * examples as f64).round() as u64;
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(errs.join("errors.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len() as u64,
        examples - correct,
        "one line per misclassified example"
    );
    assert!(!lines.is_empty(), "a 2-step model makes mistakes");
    let confusion = &ev["confusion"];
    let classes: Vec<&str> = ev["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for l in &lines {
        let (t, p) = (
            l["true"].as_str().unwrap(),
            l["predicted"].as_str().unwrap(),
        );
        assert_ne!(t, p);
        let probs = l["probabilities"].as_array().unwrap();
        assert_eq!(
            probs[0][0], p,
            "the top probability is the predicted class: {l}"
        );
        assert!(l["key_id"].as_str().unwrap().parse::<u64>().is_ok());
        let (ti, pi) = (
            classes.iter().position(|c| *c == t).unwrap(),
            classes.iter().position(|c| *c == p).unwrap(),
        );
        assert!(confusion[ti][pi].as_u64().unwrap() > 0);
    }
    // One grid per confused pair (3 classes: at most 6), named by rank and pair, each a PNG.
    let mut grids: Vec<String> = std::fs::read_dir(&errs)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".png"))
        .collect();
    grids.sort();
    assert!(!grids.is_empty() && grids.len() <= 6, "{grids:?}");
    assert!(
        grids[0].starts_with("01-") && grids[0].contains("-as-"),
        "{grids:?}"
    );
    for g in &grids {
        assert!(std::fs::read(errs.join(g)).unwrap().starts_with(b"\x89PNG"));
    }
    let cm = std::fs::read(&png).unwrap();
    assert!(cm.starts_with(b"\x89PNG"));
}

#[test]
fn a_preset_sets_the_recipe_and_explicit_flags_win() {
    let d = Data::new(false);
    let dir = d.model_dir("preset");
    train(
        &d,
        "cnn",
        &dir,
        2,
        &["--preset", "quickdraw28", "--dropout", "0.2"],
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let m = &cfg["model"];
    assert_eq!(
        m["conv"],
        serde_json::json!([
            {"kernel": 3, "pool": 2, "filters": 64},
            {"kernel": 3, "pool": 2, "filters": 128},
            {"kernel": 3, "pool": 2, "filters": 256}
        ])
    );
    assert_eq!(m["batch_norm"], true);
    assert_eq!(
        m["dropout"], 0.2,
        "--dropout given on the command line wins"
    );
    assert_eq!(cfg["lr_schedule"]["kind"], "cosine");
    assert_eq!(cfg["label_smoothing"], 0.1);
    assert!(
        cfg.get("augment").is_none(),
        "the presets do not augment: {cfg}"
    );
    let off = d.model_dir("preset-no-bn");
    train(
        &d,
        "cnn",
        &off,
        1,
        &["--preset", "quickdraw28", "--batch-norm", "false"],
    );
    let cfg = std::fs::read_to_string(off.join("config.json")).unwrap();
    assert!(
        !cfg.contains("batch_norm"),
        "--batch-norm false wins: {cfg}"
    );
    let err = fail(&train_args(
        &d,
        "dnn",
        &d.model_dir("preset-dnn"),
        2,
        &["--preset", "quickdraw28"],
    ));
    assert!(err.contains("is a recipe for --model cnn"), "{err}");
}

// ---- Wide & deep (issue 14) ----

/// Two classes drawn identically (the same strokes for the same index), told apart only by the
/// country code in the data: the CNN cannot beat chance, `wide_deep`'s linear part learns the
/// country. `compare` measures the delta; `predict` (burn, from NDJSON drawings) and, after
/// `export`, `model run` (tract, the serving engine) read the metadata from the drawings.
#[test]
fn wide_deep_learns_what_only_the_metadata_says() {
    let tmp = tempfile::tempdir().unwrap();
    let (raw, shards) = (tmp.path().join("raw"), tmp.path().join("shards"));
    std::fs::create_dir_all(&raw).unwrap();
    let mut files = Vec::new();
    // Words of different lengths: util::ndjson's key_ids stay distinct.
    for (word, country) in [("cat", "US"), ("bird", "FR")] {
        let mut text = crate::util::ndjson(word, 80);
        for c in ["VE", "US", "GB", "DE", "FR"] {
            text = text.replace(
                &format!("\"countrycode\":\"{c}\""),
                &format!("\"countrycode\":\"{country}\""),
            );
        }
        let f = raw.join(format!("{word}.ndjson"));
        std::fs::write(&f, text).unwrap();
        files.push(f);
    }
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
        "train=0.75,eval=0.25",
        "--shards",
        "1",
    ]);
    let (train_files, eval_files) = (
        format!("{}/train-*", s(&shards)),
        format!("{}/eval-*", s(&shards)),
    );
    let run = |model: &str| -> PathBuf {
        let dir = tmp.path().join(model);
        let o = ok(&[
            "train",
            "--model",
            model,
            "--model-dir",
            s(&dir),
            "--train-files",
            &train_files,
            "--eval-files",
            &eval_files,
            "--train-steps",
            "40",
            "--batch-size",
            "16",
            "--conv",
            "3:2:4,3:2:8",
            "--dense",
            "16",
            "--learning-rate",
            "0.01",
            "--seed",
            "1",
        ]);
        if model == "wide_deep" {
            // The run says how much metadata it found.
            let err = stderr(&o);
            let n: String = err
                .split("of the first ")
                .nth(1)
                .unwrap_or_default()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            assert!(
                !n.is_empty()
                    && err.contains(&format!(
                        "countrycode {n}, recognized {n}, stroke_count {n}"
                    ))
                    && err.contains("duration_ms 0"),
                "{err}"
            );
        }
        dir
    };
    let (cnn, wide) = (run("cnn"), run("wide_deep"));
    let acc = |dir: &Path| {
        let o = ok(&[
            "--quiet",
            "evaluate",
            "--model-dir",
            s(dir),
            "--eval-files",
            &eval_files,
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["accuracy"].as_f64().unwrap()
    };
    let (a_cnn, a_wide) = (acc(&cnn), acc(&wide));
    assert!(
        a_cnn < 0.75,
        "the CNN sees the same images in both classes: {a_cnn}"
    );
    assert!(
        a_wide > 0.95,
        "the country tells the classes apart: {a_wide}"
    );
    let o = ok(&[
        "--quiet",
        "compare",
        s(&cnn),
        s(&wide),
        "--eval-files",
        &eval_files,
        "--json",
    ]);
    let c: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let delta = c["delta_accuracy"].as_f64().unwrap();
    assert!((delta - (a_wide - a_cnn)).abs() < 1e-9, "{c}");

    // The same drawings through burn (predict) and tract (model run on the export): the
    // metadata comes from each drawing, and both engines agree.
    let top = |o: &Output| -> Vec<(String, f64)> {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let t = &v["top_k"][0];
                (
                    t["class"].as_str().unwrap().to_string(),
                    t["probability"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let burn = ok(&[
        "--quiet",
        "predict",
        "--model-dir",
        s(&wide),
        s(&files[0]),
        s(&files[1]),
        "--json",
        "--limit",
        "200",
    ]);
    let burn = top(&burn);
    assert_eq!(burn.len(), 160);
    assert!(
        burn[..80].iter().all(|(c, _)| c == "cat") && burn[80..].iter().all(|(c, _)| c == "bird")
    );
    let o = ok(&["--quiet", "export", "--model-dir", s(&wide)]);
    let version = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let sig: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(&version).join("signature.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(sig["model"]["type"], "wide_deep");
    assert_eq!(sig["inputs"]["wide"]["shape"][0], -1, "{sig}");
    let tract = ok(&[
        "--quiet",
        "model",
        "run",
        "--dir",
        &version,
        "--input-ndjson",
        s(&files[0]),
        "--input-ndjson",
        s(&files[1]),
        "--json",
        "--limit",
        "200",
    ]);
    let tract = top(&tract);
    assert_eq!(tract.len(), burn.len());
    for (b, t) in burn.iter().zip(&tract) {
        assert_eq!(b.0, t.0);
        assert!((b.1 - t.1).abs() < 1e-4, "burn {b:?} tract {t:?}");
    }
}
