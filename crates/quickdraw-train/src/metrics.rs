//! Classification metrics: loss, accuracy, top-k accuracy, MAP@3 (the Kaggle "Quick, Draw!"
//! metric), confusion matrix, per-class precision / recall / F1.

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Class indices sorted by descending score (ties: lower index first).
pub fn ranking(scores: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx
}

/// 0-based rank of `label` among `scores` (0 = the top prediction).
pub fn rank_of(scores: &[f32], label: usize) -> usize {
    let s = scores[label];
    scores
        .iter()
        .enumerate()
        .filter(|&(i, &v)| v > s || (v == s && i < label))
        .count()
}

/// Whether `label` is among the `k` highest scores.
pub fn in_top_k(scores: &[f32], label: usize, k: usize) -> bool {
    rank_of(scores, label) < k
}

/// Whether a row of scores (log-probabilities or probabilities) is a prediction at all: no NaN,
/// no +inf, and at least one finite score. A diverged model (NaN weights or logits) produces rows
/// that fail this; they count as wrong predictions everywhere (an unordered NaN would otherwise
/// rank the true class first and score accuracy 1.0).
pub fn is_valid_scores(scores: &[f32]) -> bool {
    !scores.iter().any(|v| v.is_nan() || *v == f32::INFINITY)
        && scores.iter().any(|v| v.is_finite())
}

/// The top class of a valid row of scores; `None` for an invalid one (see [`is_valid_scores`]).
pub fn predicted_class(scores: &[f32]) -> Option<usize> {
    is_valid_scores(scores).then(|| ranking(scores)[0])
}

/// Average precision at 3 of one example: 1 / (rank + 1) if the true class is in the top 3,
/// else 0.
pub fn ap_at_3(scores: &[f32], label: usize) -> f64 {
    let r = rank_of(scores, label);
    if r < 3 { 1.0 / (r as f64 + 1.0) } else { 0.0 }
}

/// Accumulates metrics over batches of log-probabilities. Serialisable and [`merge`]able, so
/// an evaluation split over workers adds up to the one-process counts.
///
/// [`merge`]: MetricsAccumulator::merge
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricsAccumulator {
    n_classes: usize,
    /// Row = true class, column = predicted class.
    confusion: Vec<u64>,
    /// NaN once an invalid row was seen (JSON `null`).
    #[serde(with = "nan_as_null")]
    loss_sum: f64,
    examples: u64,
    top1: u64,
    top3: u64,
    map3: f64,
    /// Examples whose scores were not a valid prediction (NaN / +inf), per true class: counted
    /// as wrong (in no top-k, outside the confusion matrix's predicted columns).
    invalid: Vec<u64>,
}

impl MetricsAccumulator {
    pub fn new(n_classes: usize) -> Self {
        MetricsAccumulator {
            n_classes,
            confusion: vec![0; n_classes * n_classes],
            loss_sum: 0.0,
            examples: 0,
            top1: 0,
            top3: 0,
            map3: 0.0,
            invalid: vec![0; n_classes],
        }
    }

    /// Adds one example given its log-probabilities over the classes (loss = -log p(label)).
    /// An invalid row (see [`is_valid_scores`]) counts as a wrong prediction and makes the
    /// loss NaN: a diverged model must never look accurate.
    pub fn add(&mut self, log_probs: &[f32], label: usize) {
        self.examples += 1;
        let Some(pred) = predicted_class(log_probs) else {
            self.invalid[label] += 1;
            self.loss_sum = f64::NAN;
            return;
        };
        let r = rank_of(log_probs, label);
        self.confusion[label * self.n_classes + pred] += 1;
        self.loss_sum += -(log_probs[label] as f64);
        self.top1 += (r == 0) as u64;
        self.top3 += (r < 3) as u64;
        if r < 3 {
            self.map3 += 1.0 / (r as f64 + 1.0);
        }
    }

    /// Adds a batch: `log_probs` is `[labels.len(), n_classes]` row-major.
    pub fn add_batch(&mut self, log_probs: &[f32], labels: &[i64]) {
        for (row, &l) in log_probs.chunks_exact(self.n_classes).zip(labels) {
            self.add(row, l as usize);
        }
    }

    pub fn examples(&self) -> u64 {
        self.examples
    }

    /// Adds another accumulator's counts (the same classes): counts exactly, the loss and
    /// MAP@3 sums up to floating-point rounding.
    pub fn merge(&mut self, o: &MetricsAccumulator) -> Result<(), String> {
        if o.n_classes != self.n_classes {
            return Err(format!(
                "{} classes cannot be merged with {}",
                o.n_classes, self.n_classes
            ));
        }
        for (a, b) in self.confusion.iter_mut().zip(&o.confusion) {
            *a += b;
        }
        for (a, b) in self.invalid.iter_mut().zip(&o.invalid) {
            *a += b;
        }
        self.loss_sum += o.loss_sum;
        self.examples += o.examples;
        self.top1 += o.top1;
        self.top3 += o.top3;
        self.map3 += o.map3;
        Ok(())
    }
    /// Examples whose scores were NaN / +inf (counted as wrong).
    pub fn invalid(&self) -> u64 {
        self.invalid.iter().sum()
    }
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.examples.max(1) as f64
    }
    pub fn accuracy(&self) -> f64 {
        self.top1 as f64 / self.examples.max(1) as f64
    }
    pub fn top3_accuracy(&self) -> f64 {
        self.top3 as f64 / self.examples.max(1) as f64
    }
    pub fn map3(&self) -> f64 {
        self.map3 / self.examples.max(1) as f64
    }

    /// `confusion[true][predicted]`.
    pub fn confusion(&self) -> Vec<Vec<u64>> {
        self.confusion
            .chunks(self.n_classes.max(1))
            .map(<[u64]>::to_vec)
            .collect()
    }

    /// Per-class precision, recall, F1 (0 where undefined, as scikit-learn's `zero_division=0`).
    pub fn per_class(&self, names: &[String]) -> Vec<ClassMetrics> {
        let c = self.n_classes;
        (0..c)
            .map(|k| {
                let tp = self.confusion[k * c + k];
                let support: u64 =
                    self.confusion[k * c..(k + 1) * c].iter().sum::<u64>() + self.invalid[k];
                let predicted: u64 = (0..c).map(|t| self.confusion[t * c + k]).sum();
                let precision = if predicted > 0 {
                    tp as f64 / predicted as f64
                } else {
                    0.0
                };
                let recall = if support > 0 {
                    tp as f64 / support as f64
                } else {
                    0.0
                };
                let f1 = if precision + recall > 0.0 {
                    2.0 * precision * recall / (precision + recall)
                } else {
                    0.0
                };
                ClassMetrics {
                    label: k,
                    class: names.get(k).cloned().unwrap_or_else(|| k.to_string()),
                    support,
                    predicted,
                    precision,
                    recall,
                    f1,
                }
            })
            .collect()
    }

    /// The full report.
    pub fn report(&self, names: &[String]) -> MetricsReport {
        let per_class = self.per_class(names);
        let n = per_class.len().max(1) as f64;
        MetricsReport {
            examples: self.examples,
            invalid_predictions: self.invalid(),
            loss: self.loss(),
            accuracy: self.accuracy(),
            top3_accuracy: self.top3_accuracy(),
            map3: self.map3(),
            macro_precision: per_class.iter().map(|c| c.precision).sum::<f64>() / n,
            macro_recall: per_class.iter().map(|c| c.recall).sum::<f64>() / n,
            macro_f1: per_class.iter().map(|c| c.f1).sum::<f64>() / n,
            classes: names.to_vec(),
            per_class,
            confusion: self.confusion(),
        }
    }
}

/// `f64` as JSON with NaN written as `null` (JSON has no NaN) and read back.
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        match v.is_nan() {
            true => s.serialize_none(),
            false => s.serialize_f64(*v),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

/// The training figures of one logging window (`train`'s TensorBoard scalars and progress):
/// the batches' mean losses weighted by their sizes, and top-1 / top-3 hits ranked on the
/// logits. (Unlike [`MetricsAccumulator`] it takes burn's batch loss and needs no
/// log-probabilities or confusion matrix.)
#[derive(Debug, Clone)]
pub struct WindowAccumulator {
    loss_sum: f64,
    correct: u64,
    top3: u64,
    examples: u64,
    start: Instant,
}

impl Default for WindowAccumulator {
    fn default() -> Self {
        Self::new()
    }
}

impl WindowAccumulator {
    /// An empty window starting now.
    pub fn new() -> Self {
        WindowAccumulator {
            loss_sum: 0.0,
            correct: 0,
            top3: 0,
            examples: 0,
            start: Instant::now(),
        }
    }

    /// Adds a batch: `logits` `[labels.len(), n_classes]` row-major, `loss` its mean loss.
    pub fn add_batch(&mut self, logits: &[f32], labels: &[i64], n_classes: usize, loss: f32) {
        for (row, &l) in logits.chunks_exact(n_classes).zip(labels) {
            let r = rank_of(row, l as usize);
            self.correct += (r == 0) as u64;
            self.top3 += (r < 3) as u64;
        }
        self.loss_sum += loss as f64 * labels.len() as f64;
        self.examples += labels.len() as u64;
    }

    pub fn loss(&self) -> f64 {
        self.loss_sum / self.examples.max(1) as f64
    }
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.examples.max(1) as f64
    }
    pub fn top3_accuracy(&self) -> f64 {
        self.top3 as f64 / self.examples.max(1) as f64
    }
    /// Examples per second since the window started.
    pub fn examples_per_sec(&self) -> f64 {
        self.examples as f64 / self.start.elapsed().as_secs_f64().max(1e-9)
    }
}

/// Metrics of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub label: usize,
    pub class: String,
    /// Examples of this class.
    pub support: u64,
    /// Examples predicted as this class.
    pub predicted: u64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// Everything `evaluate` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsReport {
    pub examples: u64,
    /// Examples whose model output was NaN / +inf: counted as wrong in every metric, and the
    /// loss is then NaN (written as `null` in JSON). Non-zero means the model has diverged.
    #[serde(default)]
    pub invalid_predictions: u64,
    /// Mean cross-entropy (natural log); NaN (JSON `null`) when any prediction was invalid.
    #[serde(deserialize_with = "nan_from_null")]
    pub loss: f64,
    pub accuracy: f64,
    pub top3_accuracy: f64,
    /// Mean average precision at 3.
    pub map3: f64,
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
    pub classes: Vec<String>,
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
}

/// Reads a loss written as `null` (serde_json writes NaN so) back as NaN.
fn nan_from_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Classes a confusion chart shows at most; beyond, the most confused ones.
pub const CHART_MAX_CLASSES: usize = 30;

/// The `k` largest off-diagonal cells `(true, predicted, count)`, largest first.
pub fn most_confused_pairs(confusion: &[Vec<u64>], k: usize) -> Vec<(usize, usize, u64)> {
    let mut pairs: Vec<(usize, usize, u64)> = confusion
        .iter()
        .enumerate()
        .flat_map(|(t, row)| {
            row.iter()
                .enumerate()
                .filter(move |&(p, &v)| p != t && v > 0)
                .map(move |(p, &v)| (t, p, v))
        })
        .collect();
    pairs.sort_by(|a, b| b.2.cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
    pairs.truncate(k);
    pairs
}

/// The classes a chart shows: all up to `max`, else the `max` with the most errors (examples
/// of the class predicted as another, plus others predicted as it), in label order.
pub fn chart_classes(confusion: &[Vec<u64>], max: usize) -> Vec<usize> {
    let n = confusion.len();
    if n <= max {
        return (0..n).collect();
    }
    let errors = |c: usize| -> u64 {
        let row: u64 = confusion[c].iter().sum::<u64>() - confusion[c][c];
        let col: u64 = (0..n).map(|t| confusion[t][c]).sum::<u64>() - confusion[c][c];
        row + col
    };
    let mut by_errors: Vec<usize> = (0..n).collect();
    by_errors.sort_by(|&a, &b| errors(b).cmp(&errors(a)).then(a.cmp(&b)));
    let mut keep: Vec<usize> = by_errors.into_iter().take(max).collect();
    keep.sort();
    keep
}

/// The confusion matrix as a labelled chart (grey pixels, width, height): rows are true
/// classes, columns predictions, shaded by the share of the row and labelled with the count
/// (or, above 30 classes, the 30 most confused classes); below, the most confused pairs.
pub fn confusion_chart(
    title: &str,
    classes: &[String],
    confusion: &[Vec<u64>],
) -> (Vec<u8>, u32, u32) {
    let shown = chart_classes(confusion, CHART_MAX_CLASSES);
    let names: Vec<String> = shown
        .iter()
        .map(|&i| classes.get(i).cloned().unwrap_or_else(|| i.to_string()))
        .collect();
    let name = |i: usize| classes.get(i).cloned().unwrap_or_else(|| i.to_string());
    let cell = |r: usize, c: usize| confusion[shown[r]][shown[c]];
    let row_total = |r: usize| confusion[shown[r]].iter().sum::<u64>();
    let shade = |r: usize, c: usize| match row_total(r) {
        0 => 0.0,
        t => cell(r, c) as f64 / t as f64,
    };
    let text = |r: usize, c: usize| match cell(r, c) {
        0 => String::new(),
        v if v < 1000 => v.to_string(),
        v if v < 9_500 => format!("{:.0}k", v as f64 / 1000.0),
        _ => "++".into(),
    };
    let mut notes = vec![format!(
        "rows: true class, columns: predicted; shade = share of the row{}",
        if shown.len() < classes.len() {
            format!(
                "; the {} most confused of {} classes",
                shown.len(),
                classes.len()
            )
        } else {
            String::new()
        }
    )];
    let pairs = most_confused_pairs(confusion, 10);
    if !pairs.is_empty() {
        notes.push("most confused (true -> predicted: count, share of the true class):".into());
    }
    for (t, p, v) in pairs {
        let total = confusion[t].iter().sum::<u64>().max(1);
        notes.push(format!(
            "  {} -> {}: {v} ({:.1}%)",
            name(t),
            name(p),
            100.0 * v as f64 / total as f64
        ));
    }
    quickdraw_data::image::matrix_chart(title, &names, &shade, &text, &notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    #[test]
    fn ranks_and_top_k() {
        let s = [0.1, 0.5, 0.3, 0.1];
        assert_eq!(ranking(&s), vec![1, 2, 0, 3]);
        assert_eq!(rank_of(&s, 1), 0);
        assert_eq!(rank_of(&s, 2), 1);
        assert_eq!(rank_of(&s, 0), 2, "ties rank the lower index first");
        assert_eq!(rank_of(&s, 3), 3);
        assert!(in_top_k(&s, 0, 3));
        assert!(!in_top_k(&s, 3, 3));
    }

    #[test]
    fn map_at_3_by_hand() {
        // Kaggle's example: true class at rank 1, 2, 3, beyond -> 1, 1/2, 1/3, 0.
        let s = [0.4, 0.3, 0.2, 0.1];
        assert_eq!(ap_at_3(&s, 0), 1.0);
        assert_eq!(ap_at_3(&s, 1), 0.5);
        assert!((ap_at_3(&s, 2) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(ap_at_3(&s, 3), 0.0);
        let mut m = MetricsAccumulator::new(4);
        let lp: Vec<f32> = s.iter().map(|v: &f32| v.ln()).collect();
        for l in 0..4 {
            m.add(&lp, l);
        }
        assert!((m.map3() - (1.0 + 0.5 + 1.0 / 3.0) / 4.0).abs() < 1e-9);
        assert_eq!(m.accuracy(), 0.25);
        assert_eq!(m.top3_accuracy(), 0.75);
        let expect_loss = -(0.4f32.ln() + 0.3f32.ln() + 0.2f32.ln() + 0.1f32.ln()) as f64 / 4.0;
        assert!((m.loss() - expect_loss).abs() < 1e-6);
    }

    #[test]
    fn confusion_and_precision_recall_f1() {
        // 3 classes; predictions (true -> pred): 0->0, 0->0, 0->1, 1->1, 2->1, 2->2.
        let mut m = MetricsAccumulator::new(3);
        let onehot =
            |k: usize| -> Vec<f32> { (0..3).map(|i| if i == k { 0.0 } else { -5.0 }).collect() };
        for (t, p) in [(0, 0), (0, 0), (0, 1), (1, 1), (2, 1), (2, 2)] {
            m.add(&onehot(p), t);
        }
        assert_eq!(
            m.confusion(),
            vec![vec![2, 1, 0], vec![0, 1, 0], vec![0, 1, 1]]
        );
        let pc = m.per_class(&names(3));
        // class 0: tp 2, predicted 2, support 3 -> P 1, R 2/3, F1 0.8
        assert_eq!(pc[0].precision, 1.0);
        assert!((pc[0].recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((pc[0].f1 - 0.8).abs() < 1e-12);
        // class 1: tp 1, predicted 3, support 1 -> P 1/3, R 1, F1 0.5
        assert!((pc[1].precision - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(pc[1].recall, 1.0);
        assert!((pc[1].f1 - 0.5).abs() < 1e-12);
        // class 2: tp 1, predicted 1, support 2 -> P 1, R 0.5, F1 2/3
        assert!((pc[2].f1 - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.accuracy() - 4.0 / 6.0).abs() < 1e-12);
        let r = m.report(&names(3));
        assert_eq!(r.examples, 6);
        assert!((r.macro_f1 - (0.8 + 0.5 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn undefined_precision_is_zero() {
        let mut m = MetricsAccumulator::new(2);
        m.add(&[0.0, -1.0], 0);
        let pc = m.per_class(&names(2));
        assert_eq!((pc[1].precision, pc[1].recall, pc[1].f1), (0.0, 0.0, 0.0));
    }

    #[test]
    fn non_finite_scores_count_as_wrong_and_make_the_loss_nan() {
        // Before: NaN compares neither greater nor equal, so the true class ranked first and a
        // diverged model scored accuracy 1.0.
        let mut m = MetricsAccumulator::new(3);
        m.add(&[f32::NAN; 3], 0);
        m.add(&[0.0, f32::INFINITY, -1.0], 1);
        m.add(&[f32::NEG_INFINITY; 3], 2);
        m.add(&[-0.1, -3.0, f32::NEG_INFINITY], 0); // valid: -inf is probability 0
        assert_eq!(m.examples(), 4);
        assert_eq!(m.invalid(), 3);
        assert_eq!(m.accuracy(), 0.25);
        assert_eq!(m.top3_accuracy(), 0.25);
        assert!((m.map3() - 0.25).abs() < 1e-12);
        assert!(m.loss().is_nan());
        let r = m.report(&names(3));
        assert_eq!(r.invalid_predictions, 3);
        assert_eq!(r.confusion, vec![vec![1, 0, 0], vec![0; 3], vec![0; 3]]);
        assert_eq!(r.per_class[1].support, 1);
        assert_eq!(r.per_class[1].recall, 0.0);
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"loss\":null"), "{json}");
        let back: MetricsReport = serde_json::from_str(&json).unwrap();
        assert!(back.loss.is_nan());
        assert_eq!(predicted_class(&[f32::NAN, 0.0]), None);
        assert_eq!(predicted_class(&[-2.0, -0.5]), Some(1));
    }

    #[test]
    fn most_confused_pairs_and_chart_classes() {
        let m = vec![vec![5, 3, 0], vec![1, 4, 0], vec![0, 2, 9]];
        assert_eq!(most_confused_pairs(&m, 2), vec![(0, 1, 3), (2, 1, 2)]);
        assert_eq!(chart_classes(&m, 3), vec![0, 1, 2]);
        // Errors: class 0: 3 + 1, class 1: 1 + 5, class 2: 2 + 0.
        assert_eq!(chart_classes(&m, 2), vec![0, 1]);
        let names: Vec<String> = ["cat", "dog", "owl"].map(String::from).to_vec();
        let (px, w, h) = confusion_chart("t", &names, &m);
        assert_eq!(px.len(), (w * h) as usize);
        // The darkest cell is the one with the largest share of its row (owl -> owl, 9/11).
        assert!(px.iter().any(|&p| p < 60));
    }
}
