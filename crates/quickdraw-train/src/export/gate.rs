//! The export gate ("detect problems before exporting models"): a model is exported only when it
//! beats the class-prior baseline and is not worse than the newest exported version, and never
//! with non-finite weights.

use std::fs;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use quickdraw_data::manifest::DatasetManifest;
use quickdraw_data::signature::{self, list_versions};
use serde::Serialize;

use super::Result;
use crate::infer::TrainedModel;
use crate::metrics::MetricsReport;
use crate::model::{Model, to_host};

/// The class-prior baseline: always predict the most frequent training class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BaselineInfo {
    /// Its accuracy on the eval set.
    pub accuracy: f64,
    pub majority_class: String,
    pub label: usize,
    /// Where the class counts came from.
    pub counts_from: String,
}

/// The newest version already in the base folder.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PreviousExport {
    pub version: u64,
    pub dir: PathBuf,
    /// `accuracy` of its `metrics.json` (absent when unreadable).
    pub accuracy: Option<f64>,
    pub eval_files: Option<String>,
}

/// Names of the parameters holding NaN or infinite values (empty when all are finite).
pub fn non_finite_params(model: &Model) -> Vec<String> {
    #[derive(Default)]
    struct V {
        path: Vec<String>,
        bad: Vec<String>,
    }
    impl ModuleVisitor for V {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let bad = to_host(param.val())
                .iter()
                .filter(|x| !x.is_finite())
                .count();
            if bad > 0 {
                self.bad
                    .push(format!("{} ({bad} values)", self.path.join(".")));
            }
        }
    }
    let mut v = V::default();
    model.visit(&mut v);
    v.bad
}

/// The newest version of a base folder with the accuracy its `metrics.json` records.
pub fn previous_export(base: &Path) -> Result<Option<PreviousExport>> {
    if !base.exists() {
        return Ok(None);
    }
    let Some((version, dir)) = list_versions(base)?.pop() else {
        return Ok(None);
    };
    let metrics: Option<serde_json::Value> = fs::read_to_string(dir.join(signature::METRICS_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let accuracy = metrics
        .as_ref()
        .and_then(|m| m.get("accuracy"))
        .and_then(|a| a.as_f64());
    let eval_files = metrics
        .as_ref()
        .and_then(|m| m.get("eval_files"))
        .and_then(|a| a.as_str())
        .map(String::from);
    Ok(Some(PreviousExport {
        version,
        dir,
        accuracy,
        eval_files,
    }))
}

/// The class-prior baseline on an evaluation: the majority class of the training counts in the
/// dataset manifest when they are known, else of the eval set itself.
pub fn baseline_of(tm: &TrainedModel, report: &MetricsReport) -> BaselineInfo {
    let classes = tm.labels();
    let train_counts: Option<(Vec<u64>, String)> = {
        let dir = PathBuf::from(&tm.config.data.dataset_dir);
        DatasetManifest::load(&dir).ok().and_then(|m| {
            let counts: Vec<u64> = classes
                .iter()
                .map(|c| {
                    m.per_class
                        .get(c)
                        .and_then(|cc| cc.splits.get("train"))
                        .copied()
                        .unwrap_or(0)
                })
                .collect();
            (counts.iter().sum::<u64>() > 0).then(|| {
                (
                    counts,
                    format!(
                        "training counts of {}",
                        dir.join(quickdraw_data::manifest::MANIFEST_FILE).display()
                    ),
                )
            })
        })
    };
    let (counts, counts_from) = train_counts.unwrap_or_else(|| {
        (
            report.per_class.iter().map(|c| c.support).collect(),
            "class counts of the eval set".to_string(),
        )
    });
    // Most frequent class; ties go to the lower label (as an argmax would).
    let label = counts
        .iter()
        .enumerate()
        .fold(0, |best, (i, &c)| if c > counts[best] { i } else { best });
    let support = report.per_class.get(label).map(|c| c.support).unwrap_or(0);
    BaselineInfo {
        accuracy: if report.examples > 0 {
            support as f64 / report.examples as f64
        } else {
            0.0
        },
        majority_class: classes.get(label).cloned().unwrap_or_default(),
        label,
        counts_from,
    }
}

/// The gate's objections (empty when the model may be exported).
pub fn gate_problems(
    report: &MetricsReport,
    baseline: &BaselineInfo,
    previous: Option<&PreviousExport>,
) -> Vec<String> {
    let mut p = Vec::new();
    let acc = report.accuracy;
    if !acc.is_finite() || !report.loss.is_finite() {
        p.push(format!(
            "its eval accuracy/loss is not finite (accuracy {acc}, loss {})",
            report.loss
        ));
    }
    if report.examples == 0 {
        p.push("the eval set is empty".into());
    }
    if acc <= baseline.accuracy {
        p.push(format!(
            "its eval accuracy {acc:.4} is not better than the baseline's {:.4} (always predicting {:?}, the most frequent class)",
            baseline.accuracy, baseline.majority_class
        ));
    }
    if let Some(prev) = previous {
        match prev.accuracy {
            // serde_json's default float parser is not exact (0.9310344827586207 written comes
            // back as ...208), so the same accuracy read from metrics.json must not look higher.
            Some(pa) if acc < pa - 1e-12 => p.push(format!(
                "its eval accuracy {acc:.4} is below that of the newest exported version {} ({pa:.4}, {})",
                prev.version,
                prev.dir.display()
            )),
            _ => {}
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ClassMetrics;

    fn report(acc: f64, supports: &[u64]) -> MetricsReport {
        let per_class = supports
            .iter()
            .enumerate()
            .map(|(i, &s)| ClassMetrics {
                label: i,
                class: format!("c{i}"),
                support: s,
                predicted: 0,
                precision: 0.0,
                recall: 0.0,
                f1: 0.0,
            })
            .collect();
        MetricsReport {
            examples: supports.iter().sum(),
            invalid_predictions: 0,
            loss: 1.0,
            accuracy: acc,
            top3_accuracy: 1.0,
            map3: acc,
            macro_precision: 0.0,
            macro_recall: 0.0,
            macro_f1: 0.0,
            classes: (0..supports.len()).map(|i| format!("c{i}")).collect(),
            per_class,
            confusion: vec![],
        }
    }

    #[test]
    fn gate() {
        let base = BaselineInfo {
            accuracy: 0.5,
            majority_class: "c0".into(),
            label: 0,
            counts_from: "x".into(),
        };
        assert!(gate_problems(&report(0.6, &[5, 5]), &base, None).is_empty());
        let tie = gate_problems(&report(0.5, &[5, 5]), &base, None);
        assert!(
            tie.len() == 1 && tie[0].contains("not better than the baseline"),
            "equal to the baseline is refused: {tie:?}"
        );
        let prev = PreviousExport {
            version: 3,
            dir: "b/3".into(),
            accuracy: Some(0.7),
            eval_files: None,
        };
        let p = gate_problems(&report(0.6, &[5, 5]), &base, Some(&prev));
        assert!(p.len() == 1 && p[0].contains("version 3"), "{p:?}");
        assert!(
            gate_problems(&report(0.7, &[5, 5]), &base, Some(&prev)).is_empty(),
            "equal to the previous is fine"
        );
        assert!(!gate_problems(&report(f64::NAN, &[5, 5]), &base, None).is_empty());
    }

    #[test]
    fn previous_version_and_its_accuracy() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(previous_export(&tmp.path().join("missing")).unwrap(), None);
        for d in ["1", "7", ".8.tmp", "x"] {
            fs::create_dir(tmp.path().join(d)).unwrap();
        }
        fs::write(
            tmp.path().join("7").join(signature::METRICS_FILE),
            r#"{"accuracy": 0.25}"#,
        )
        .unwrap();
        let p = previous_export(tmp.path()).unwrap().unwrap();
        assert_eq!((p.version, p.accuracy), (7, Some(0.25)));
    }
}
