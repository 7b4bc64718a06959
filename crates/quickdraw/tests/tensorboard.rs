//! TensorBoard interoperability: a real `quickdraw train` run's event files, read by TensorBoard's
//! own `EventAccumulator` (tests/python/check_events.py), list the expected scalar, image and
//! histogram tags with the values the Rust side wrote.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use quickdraw_data::events::{Kind, What, event_files, read_events};

use crate::util::{self, ok};

/// expected.json for check_events.py, from what our own reader finds in a log directory.
fn expected(dir: &Path) -> (serde_json::Value, Vec<String>) {
    // Tags found by the Rust reader; TensorBoard must list the same ones with the same values.
    let mut scalars: BTreeMap<String, Vec<(i64, f32)>> = BTreeMap::new();
    let mut images: BTreeMap<String, usize> = BTreeMap::new();
    let mut histos: BTreeMap<String, usize> = BTreeMap::new();
    for f in event_files(dir).unwrap() {
        for e in read_events(&f).unwrap() {
            let Some(What::Summary(s)) = &e.what else {
                continue;
            };
            for v in &s.value {
                match &v.value {
                    Some(Kind::SimpleValue(x)) => {
                        scalars.entry(v.tag.clone()).or_default().push((e.step, *x))
                    }
                    Some(Kind::Image(_)) => *images.entry(v.tag.clone()).or_default() += 1,
                    Some(Kind::Histo(_)) => *histos.entry(v.tag.clone()).or_default() += 1,
                    _ => {}
                }
            }
        }
    }
    let mut args = Vec::new();
    for t in images.keys() {
        args.extend(["--image".to_string(), t.clone()]);
    }
    for t in histos.keys() {
        args.extend(["--histogram".to_string(), t.clone()]);
    }
    let scalars: serde_json::Map<String, serde_json::Value> = scalars
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                serde_json::json!(
                    v.iter()
                        .map(|(s, x)| serde_json::json!([s, x]))
                        .collect::<Vec<_>>()
                ),
            )
        })
        .collect();
    (serde_json::json!({ "scalars": scalars }), args)
}

#[test]
fn tensorboard_reads_training_and_eval_summaries() {
    let tmp = tempfile::tempdir().unwrap();
    let (raw, data, model) = (
        tmp.path().join("raw"),
        tmp.path().join("data"),
        tmp.path().join("model"),
    );
    let p = |x: &Path| x.display().to_string();
    ok(&[
        "-q",
        "synth",
        "--classes",
        "3",
        "--per-class",
        "40",
        "--output",
        &p(&raw),
    ]);
    ok(&[
        "-q",
        "convert",
        "--input",
        &p(&raw),
        "--output",
        &p(&data),
        "--size",
        "16",
        "--split",
        "train=0.8,eval=0.2",
        "--shards",
        "1",
    ]);
    let (train, eval) = (
        format!("{}/train-*", p(&data)),
        format!("{}/eval-*", p(&data)),
    );
    ok(&[
        "-q",
        "train",
        "--model",
        "linear",
        "--model-dir",
        &p(&model),
        "--train-files",
        &train,
        "--eval-files",
        &eval,
        "--train-steps",
        "12",
        "--batch-size",
        "16",
        "--eval-every",
        "6",
        "--log-every",
        "2",
        "--checkpoint-every",
        "6",
        "--lr-schedule",
        "cosine",
        "--label-smoothing",
        "0.1",
    ]);

    let root = util::repo_root();
    let Some(python) = util::verification_python() else {
        return;
    };
    for (dir, must) in [
        (
            model.clone(),
            vec![
                "loss",
                "accuracy",
                "top3_accuracy",
                "learning_rate",
                "examples_per_sec",
            ],
        ),
        (
            model.join("eval"),
            vec!["loss", "accuracy", "top3_accuracy", "map3"],
        ),
    ] {
        let (exp, extra) = expected(&dir);
        for tag in &must {
            assert!(
                exp["scalars"].get(*tag).is_some(),
                "{}: scalar {tag} not written: {exp}",
                dir.display()
            );
        }
        let exp_path = tmp.path().join("expected.json");
        std::fs::write(&exp_path, exp.to_string()).unwrap();
        let mut cmd = Command::new(&python);
        cmd.arg(root.join("tests/python/check_events.py"))
            .arg(&dir)
            .arg("--expect")
            .arg(&exp_path)
            .args(&extra);
        if !dir.ends_with("eval") {
            // The HParams tab's data (hyper-parameters from config.json, the eval metrics, a
            // finished session) and the run's config and dataset manifest as text.
            let hp = tmp.path().join("hparams.json");
            let want = serde_json::json!({
                "hparams": {"kind": "linear", "optimizer": "adam", "learning_rate": 0.001,
                            "batch_size": 16, "label_smoothing": 0.1,
                            "lr_schedule.kind": "cosine", "lr_schedule.warmup_steps": 0},
                "metrics": ["eval/accuracy", "eval/loss", "/loss"],
                "status": "STATUS_SUCCESS",
            });
            std::fs::write(&hp, want.to_string()).unwrap();
            cmd.arg("--hparams").arg(&hp);
            cmd.args(["--text", "config=\"label_smoothing\": 0.1"]);
            cmd.args(["--text", "dataset_manifest=\"per_class\""]);
            cmd.args(["--graph", "images,flatten,logits,softmax"]);
        }
        let o = cmd.output().unwrap();
        assert!(
            o.status.success(),
            "TensorBoard's reader disagrees on {}:\n{}\n{}",
            dir.display(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        if dir.ends_with("eval") {
            assert!(
                extra.iter().any(|a| a == "confusion_matrix"),
                "eval summaries carry the confusion matrix image: {extra:?}"
            );
        } else {
            assert!(
                extra.iter().any(|a| a == "inputs"),
                "train summaries carry a grid of inputs: {extra:?}"
            );
            assert!(
                extra.iter().any(|a| a.starts_with("weights/")),
                "weight histograms: {extra:?}"
            );
        }
    }
}
