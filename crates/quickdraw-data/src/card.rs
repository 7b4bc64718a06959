//! The model card of an export (`model_card.md` beside `signature.json`): the data, classes,
//! metrics against the baseline, preprocessing, intended use and limits of a version, written
//! from the export's own files (signature, labels, preprocessing, metrics) so it cannot disagree
//! with them. `quickdraw export` writes it; `quickdraw model show` prints it.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use crate::signature::{ExportInfo, SignatureError};

/// The model card's file name in a version folder.
pub const MODEL_CARD_FILE: &str = "model_card.md";

fn num(m: &Value, key: &str) -> Option<f64> {
    m.get(key).and_then(Value::as_f64)
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "unknown".into(), |x| format!("{:.2}%", 100.0 * x))
}

fn text<'a>(m: &'a Value, key: &str) -> &'a str {
    m.get(key).and_then(Value::as_str).unwrap_or("unknown")
}

/// The card's Markdown.
pub fn model_card(info: &ExportInfo) -> String {
    let (sig, m) = (&info.signature, &info.metrics);
    // No version number: the card is written before the version folder gets its name.
    let mut s = String::new();
    let kind = sig.model.kind.as_str();
    let _ = writeln!(s, "# Model card: QuickDraw {kind} classifier\n");
    let _ = writeln!(s, "## Model\n");
    let _ = writeln!(
        s,
        "- Architecture: `{kind}`, trained {} steps; hyper-parameters: `{}`.",
        m.get("step")
            .and_then(Value::as_u64)
            .map_or("an unknown number of".into(), |x| x.to_string()),
        sig.model.config
    );
    let inputs: Vec<String> = sig
        .inputs
        .iter()
        .map(|(k, t)| format!("`{k}` {} {}", t.dtype.as_str(), t.shape_text()))
        .collect();
    let _ = writeln!(
        s,
        "- Signature `{}` ({}): inputs {}; outputs `probabilities`, `logits` (float [N, {}]) and `classes` (int64 [N]).",
        sig.signature_name,
        sig.method_name,
        inputs.join(", "),
        sig.classes
    );
    let _ = writeln!(
        s,
        "- Graph: `model.onnx` (runs in tract, onnxruntime, or any ONNX runtime).\n"
    );

    let _ = writeln!(s, "## Data\n");
    let _ = writeln!(s, "- Training data: `{}`.", text(m, "train_files"));
    let _ = writeln!(
        s,
        "- Evaluation data: `{}` ({} examples, held out from training by the converter's split).",
        text(m, "eval_files"),
        m.get("examples")
            .and_then(Value::as_u64)
            .map_or("?".into(), |x| x.to_string())
    );
    let _ = writeln!(
        s,
        "- Classes ({}): {}.\n",
        info.labels.len(),
        info.labels.join(", ")
    );

    let _ = writeln!(s, "## Metrics (evaluation data)\n");
    let b = m.get("baseline").cloned().unwrap_or(Value::Null);
    let _ = writeln!(s, "| metric | this model | baseline |\n|---|---|---|");
    let _ = writeln!(
        s,
        "| accuracy | {} | {} |",
        pct(num(m, "accuracy")),
        pct(num(&b, "accuracy"))
    );
    let _ = writeln!(s, "| top-3 accuracy | {} | |", pct(num(m, "top3_accuracy")));
    let _ = writeln!(s, "| MAP@3 | {} | |", pct(num(m, "map3")));
    let _ = writeln!(s, "| macro F1 | {} | |", pct(num(m, "macro_f1")));
    let _ = writeln!(
        s,
        "| loss | {} | |\n",
        num(m, "loss").map_or("unknown".into(), |x| format!("{x:.4}"))
    );
    let _ = writeln!(
        s,
        "The baseline always answers the most frequent class (`{}`; counts from {}).",
        text(&b, "majority_class"),
        text(&b, "counts_from")
    );
    if let Some(p) = m.get("previous_version").filter(|p| !p.is_null()) {
        let _ = writeln!(
            s,
            "The previous version ({}) had accuracy {}.",
            p.get("version").map_or("?".into(), Value::to_string),
            pct(num(p, "accuracy"))
        );
    }
    let gate = m.get("gate").cloned().unwrap_or(Value::Null);
    let forced = gate.get("forced").and_then(Value::as_bool).unwrap_or(false);
    let _ = writeln!(
        s,
        "Export gate: {}.\n",
        if forced {
            format!("**overridden with --force** ({})", gate["problems"])
        } else {
            "passed".to_string()
        }
    );
    if let Some(worst) = weakest_classes(m, 5) {
        let _ = writeln!(
            s,
            "Weakest classes by recall (where it fails most): {worst}.\n"
        );
    }

    let _ = writeln!(s, "## Preprocessing\n");
    let _ = writeln!(
        s,
        "Drawings are preprocessed by the same code as in training (`assets/preprocessing.json`):\n\n```json\n{}\n```\n",
        serde_json::to_string(&info.features).unwrap_or_default()
    );

    let _ = writeln!(s, "## Intended use\n");
    let _ = writeln!(
        s,
        "Recognising which of the {} classes above a Quick, Draw!-style doodle (strokes drawn with a \
         mouse or finger) shows, for games, teaching and demonstrations of an ML pipeline.\n",
        info.labels.len()
    );
    let _ = writeln!(s, "## Limits\n");
    let _ = writeln!(
        s,
        "- It always answers one of its classes: a drawing of anything else gets a (possibly confident) wrong class. \
         Use the probabilities, not only `classes`.\n\
         - The metrics are on held-out drawings of the same source as the training data; other players, devices or \
         countries may draw differently (watch `quickdraw skew` and the server's drift gauges).\n\
         - Quick, Draw! players were shown the word to draw and had 20 seconds; drawings made without that prompt or \
         limit are outside the training distribution.\n\
         - Not for decisions about people."
    );
    s
}

/// The `n` classes with the lowest recall, as "name (recall)".
fn weakest_classes(m: &Value, n: usize) -> Option<String> {
    let mut rows: Vec<(String, f64)> = m
        .get("per_class")?
        .as_array()?
        .iter()
        .filter_map(|c| {
            Some((
                c.get("class")?.as_str()?.to_string(),
                c.get("recall")?.as_f64()?,
            ))
        })
        .collect();
    if rows.is_empty() {
        return None;
    }
    rows.sort_by(|a, b| a.1.total_cmp(&b.1));
    let list: Vec<String> = rows
        .iter()
        .take(n)
        .map(|(c, r)| format!("{c} ({:.1}%)", 100.0 * r))
        .collect();
    Some(list.join(", "))
}

/// Writes the card of the export `info` into its folder.
pub fn write_model_card(dir: &Path, info: &ExportInfo) -> Result<(), SignatureError> {
    let path = dir.join(MODEL_CARD_FILE);
    std::fs::write(&path, model_card(info)).map_err(|source| SignatureError::Io { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::FeatureSpec;
    use crate::signature::{ModelInfo, ModelType, Signature};

    #[test]
    fn the_card_says_what_the_metrics_file_says() {
        let sig = Signature::image(
            ModelInfo {
                kind: ModelType::Cnn,
                config: serde_json::json!({"filters": 32}),
            },
            28,
            2,
        );
        let info = ExportInfo {
            dir: "/x/7".into(),
            version: Some(7),
            input: sig.check().unwrap(),
            signature: sig,
            labels: vec!["cat".into(), "dog".into()],
            features: FeatureSpec::default(),
            wide: None,
            metrics: serde_json::json!({
                "accuracy": 0.9, "top3_accuracy": 1.0, "examples": 200, "step": 500,
                "train_files": "data/train-*", "eval_files": "data/eval-*",
                "baseline": {"accuracy": 0.5, "majority_class": "cat", "counts_from": "the eval set"},
                "gate": {"passed": true, "forced": false, "problems": []},
                "per_class": [{"class": "cat", "recall": 0.95}, {"class": "dog", "recall": 0.85}],
            }),
        };
        let card = model_card(&info);
        for needle in [
            "# Model card: QuickDraw cnn classifier\n",
            "trained 500 steps",
            "| accuracy | 90.00% | 50.00% |",
            "| top-3 accuracy | 100.00% | |",
            "Training data: `data/train-*`",
            "`data/eval-*` (200 examples",
            "Classes (2): cat, dog.",
            "always answers the most frequent class (`cat`",
            "Export gate: passed.",
            "Weakest classes by recall (where it fails most): dog (85.0%), cat (95.0%).",
            "| MAP@3 | unknown | |",
        ] {
            assert!(card.contains(needle), "missing {needle:?} in:\n{card}");
        }
    }
}
