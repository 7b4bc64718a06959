//! Training-time policies that depend on the step or on the evaluations: the learning-rate
//! schedule (with warm-up), reduce-on-plateau and early stopping, and the state of the last two
//! that a checkpoint carries so that a resumed run continues exactly.
//!
//! The schedules are closed forms in the global step rather than burn's `lr_scheduler` objects:
//! those are iterators whose position would have to be saved and restored beside the optimizer,
//! whereas `lr(step)` is the same in a resumed run by construction. The formulas are Keras's
//! (`tf.keras.optimizers.schedules`): `ExponentialDecay`, `CosineDecay` (with `alpha`),
//! `ExponentialDecay(staircase=True)` for step decay, `ReduceLROnPlateau`; the warm-up is a
//! linear ramp in which warm-up step k (0-based) of W uses (k + 1) / W of the rate, so that no
//! step is wasted at rate 0.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// `--lr-schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    #[default]
    Constant,
    /// `lr * rate^(t / decay_steps)` (continuous, as Keras's `ExponentialDecay`).
    Exponential,
    /// Half a cosine from `lr` down to `lr * min_ratio` over `decay_steps`, then flat.
    Cosine,
    /// `lr * rate^floor(t / decay_steps)`.
    Step,
    /// Constant, multiplied by `rate` whenever the monitored metric has not improved for
    /// `patience` evaluations.
    Plateau,
}

impl ScheduleKind {
    pub const ALL: [ScheduleKind; 5] = [
        ScheduleKind::Constant,
        ScheduleKind::Exponential,
        ScheduleKind::Cosine,
        ScheduleKind::Step,
        ScheduleKind::Plateau,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ScheduleKind::Constant => "constant",
            ScheduleKind::Exponential => "exponential",
            ScheduleKind::Cosine => "cosine",
            ScheduleKind::Step => "step",
            ScheduleKind::Plateau => "plateau",
        }
    }

    /// The decay factor when `--lr-decay-rate` is not given.
    pub fn default_rate(self) -> f64 {
        match self {
            ScheduleKind::Exponential => 0.96,
            ScheduleKind::Step => 0.1,
            ScheduleKind::Plateau => 0.5,
            ScheduleKind::Constant | ScheduleKind::Cosine => 1.0,
        }
    }
}

impl FromStr for ScheduleKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.to_ascii_lowercase();
        ScheduleKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown learning-rate schedule {s:?} (expected constant, exponential, cosine, step or plateau)"
                )
            })
    }
}

impl fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The learning-rate schedule of a run, as recorded in `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    /// Steps of linear warm-up up to the base rate (the decay starts after them).
    #[serde(default)]
    pub warmup_steps: u64,
    /// The decay period (exponential, step) or length (cosine; a new run without
    /// `--lr-decay-steps` records its steps minus the warm-up here, so that a resumed or
    /// extended run keeps the same curve).
    #[serde(default)]
    pub decay_steps: Option<u64>,
    /// The decay factor (exponential, step, plateau).
    #[serde(default = "one")]
    pub rate: f64,
    /// Cosine's floor as a share of the base rate (Keras's `alpha`).
    #[serde(default)]
    pub min_ratio: f64,
    /// Evaluations without improvement before a plateau cut.
    #[serde(default = "two")]
    pub patience: u32,
    /// The metric the plateau watches (early stopping's, `--early-stopping-metric`).
    #[serde(default)]
    pub monitor: Monitored,
}

fn one() -> f64 {
    1.0
}
fn two() -> u32 {
    2
}

impl Default for LrSchedule {
    fn default() -> Self {
        LrSchedule {
            kind: ScheduleKind::Constant,
            warmup_steps: 0,
            decay_steps: None,
            rate: 1.0,
            min_ratio: 0.0,
            patience: 2,
            monitor: Monitored::ValLoss,
        }
    }
}

impl LrSchedule {
    /// True for the constant rate without warm-up (what runs did before schedules existed).
    pub fn is_default(&self) -> bool {
        *self == LrSchedule::default()
    }

    /// Checks the parameters; the message names the flag.
    pub fn validate(&self) -> Result<(), String> {
        let decays = matches!(self.kind, ScheduleKind::Exponential | ScheduleKind::Step);
        if decays && self.decay_steps.is_none_or(|d| d == 0) {
            return Err(format!(
                "--lr-schedule {} needs --lr-decay-steps N (N >= 1)",
                self.kind
            ));
        }
        if self.decay_steps == Some(0) {
            return Err("--lr-decay-steps must be at least 1".into());
        }
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= 1.0) {
            return Err(format!("--lr-decay-rate {} must be in (0, 1]", self.rate));
        }
        if !(0.0..=1.0).contains(&self.min_ratio) {
            return Err(format!(
                "--lr-min-ratio {} must be in [0, 1]",
                self.min_ratio
            ));
        }
        if self.kind == ScheduleKind::Plateau && self.patience == 0 {
            return Err("--lr-patience must be at least 1".into());
        }
        Ok(())
    }

    /// The rate of the step that follows `step` steps done (the first step is `step = 0`), for
    /// a run of `total_steps`, before any plateau cut.
    pub fn lr(&self, base: f64, step: u64, total_steps: u64) -> f64 {
        let w = self.warmup_steps;
        if step < w {
            return base * (step + 1) as f64 / w as f64;
        }
        let t = (step - w) as f64;
        match self.kind {
            ScheduleKind::Constant | ScheduleKind::Plateau => base,
            ScheduleKind::Exponential => {
                let d = self.decay_steps.unwrap_or(1).max(1) as f64;
                base * self.rate.powf(t / d)
            }
            ScheduleKind::Step => {
                let d = self.decay_steps.unwrap_or(1).max(1);
                base * self.rate.powi(((step - w) / d) as i32)
            }
            ScheduleKind::Cosine => {
                let d = self
                    .decay_steps
                    .unwrap_or_else(|| total_steps.saturating_sub(w))
                    .max(1) as f64;
                let progress = (t / d).min(1.0);
                let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                base * ((1.0 - self.min_ratio) * cosine + self.min_ratio)
            }
        }
    }
}

/// `--early-stopping-metric` (also what the plateau schedule watches).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Monitored {
    #[default]
    ValLoss,
    ValAccuracy,
}

impl Monitored {
    pub fn name(self) -> &'static str {
        match self {
            Monitored::ValLoss => "val_loss",
            Monitored::ValAccuracy => "val_accuracy",
        }
    }

    /// The metric's value from an evaluation's (accuracy, loss).
    pub fn of(self, accuracy: f64, loss: f64) -> f64 {
        match self {
            Monitored::ValLoss => loss,
            Monitored::ValAccuracy => accuracy,
        }
    }

    /// Whether `new` is better than `best` (strictly; NaN never is).
    pub fn improves(self, new: f64, best: Option<f64>) -> bool {
        let Some(best) = best else {
            return !new.is_nan();
        };
        match self {
            Monitored::ValLoss => new < best,
            Monitored::ValAccuracy => new > best,
        }
    }
}

impl FromStr for Monitored {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "val_loss" | "loss" => Ok(Monitored::ValLoss),
            "val_accuracy" | "accuracy" | "val_acc" => Ok(Monitored::ValAccuracy),
            _ => Err(format!(
                "unknown metric {s:?} (expected val_loss or val_accuracy)"
            )),
        }
    }
}

impl fmt::Display for Monitored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Early stopping as configured (`config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    /// Evaluations without improvement before the run stops.
    pub patience: u32,
    pub metric: Monitored,
}

/// What the evaluations so far say, carried by every checkpoint's `state.json`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct MonitorState {
    /// The best value of the monitored metric so far, and the step it was reached at.
    pub best: Option<f64>,
    pub best_step: Option<u64>,
    /// Evaluations since the best one (early stopping).
    pub since_best: u32,
    /// Evaluations since the best one or the last plateau cut (plateau schedule).
    pub since_cut: u32,
    /// Product of the plateau cuts so far (1 without).
    pub lr_scale: f64,
    /// Set once early stopping has ended the run.
    #[serde(default)]
    pub stopped: bool,
}

/// What one evaluation decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MonitorDecision {
    pub improved: bool,
    /// The plateau schedule cut the learning rate.
    pub cut: bool,
    /// Early stopping ends the run.
    pub stop: bool,
}

impl MonitorState {
    pub fn new() -> Self {
        MonitorState {
            lr_scale: 1.0,
            ..Default::default()
        }
    }

    /// Takes one evaluation into account.
    pub fn observe(
        &mut self,
        metric: Monitored,
        value: f64,
        step: u64,
        schedule: &LrSchedule,
        early: Option<&EarlyStopping>,
    ) -> MonitorDecision {
        let mut d = MonitorDecision::default();
        if metric.improves(value, self.best) {
            self.best = Some(value);
            self.best_step = Some(step);
            self.since_best = 0;
            self.since_cut = 0;
            d.improved = true;
        } else {
            self.since_best += 1;
            self.since_cut += 1;
        }
        if schedule.kind == ScheduleKind::Plateau && self.since_cut >= schedule.patience {
            self.lr_scale *= schedule.rate;
            self.since_cut = 0;
            d.cut = true;
        }
        if let Some(e) = early
            && self.since_best >= e.patience
        {
            self.stopped = true;
            d.stop = true;
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: ScheduleKind) -> LrSchedule {
        LrSchedule {
            kind,
            ..Default::default()
        }
    }

    #[test]
    fn constant_and_warmup() {
        let mut s = sched(ScheduleKind::Constant);
        assert_eq!(s.lr(0.1, 0, 100), 0.1);
        assert_eq!(s.lr(0.1, 99, 100), 0.1);
        s.warmup_steps = 4;
        // Steps 0..4 ramp 1/4, 2/4, 3/4, 4/4 of the rate (none is 0: every step learns).
        let ramp: Vec<f64> = (0..5).map(|t| s.lr(0.1, t, 100)).collect();
        for (got, want) in ramp.iter().zip([0.025, 0.05, 0.075, 0.1, 0.1]) {
            assert!((got - want).abs() < 1e-15, "{ramp:?}");
        }
    }

    #[test]
    fn exponential_is_continuous_and_step_is_staircase() {
        let mut e = sched(ScheduleKind::Exponential);
        e.decay_steps = Some(10);
        e.rate = 0.5;
        assert_eq!(e.lr(1.0, 0, 0), 1.0);
        assert!((e.lr(1.0, 5, 0) - 0.5f64.sqrt()).abs() < 1e-12);
        assert_eq!(e.lr(1.0, 20, 0), 0.25);
        let mut s = sched(ScheduleKind::Step);
        s.decay_steps = Some(10);
        s.rate = 0.1;
        assert_eq!(s.lr(1.0, 9, 0), 1.0);
        assert_eq!(s.lr(1.0, 10, 0), 0.1);
        assert!((s.lr(1.0, 25, 0) - 0.01).abs() < 1e-15);
    }

    #[test]
    fn cosine_from_base_to_floor_after_warmup() {
        let mut c = sched(ScheduleKind::Cosine);
        c.warmup_steps = 10;
        c.min_ratio = 0.1;
        // Decays over train_steps - warmup = 100 steps: half way is the mean of base and floor.
        assert_eq!(c.lr(1.0, 10, 110), 1.0);
        assert!((c.lr(1.0, 60, 110) - 0.55).abs() < 1e-12);
        assert!((c.lr(1.0, 110, 110) - 0.1).abs() < 1e-12);
        assert!((c.lr(1.0, 500, 110) - 0.1).abs() < 1e-12);
        c.decay_steps = Some(50);
        assert!((c.lr(1.0, 35, 110) - 0.55).abs() < 1e-12);
    }

    #[test]
    fn validation_names_the_flag() {
        let e = sched(ScheduleKind::Exponential);
        assert!(e.validate().unwrap_err().contains("--lr-decay-steps"));
        let mut r = sched(ScheduleKind::Plateau);
        r.rate = 1.5;
        assert!(r.validate().unwrap_err().contains("--lr-decay-rate"));
        assert!(sched(ScheduleKind::Cosine).validate().is_ok());
        assert!("warmup".parse::<ScheduleKind>().is_err());
        assert_eq!("Cosine".parse::<ScheduleKind>(), Ok(ScheduleKind::Cosine));
    }

    #[test]
    fn plateau_cuts_and_early_stopping_stops() {
        let mut s = sched(ScheduleKind::Plateau);
        s.rate = 0.5;
        s.patience = 2;
        let early = EarlyStopping {
            patience: 3,
            metric: Monitored::ValLoss,
        };
        let mut m = MonitorState::new();
        let losses = [1.0, 0.8, 0.9, 0.85, 0.81];
        let ds: Vec<MonitorDecision> = losses
            .iter()
            .enumerate()
            .map(|(i, &l)| m.observe(Monitored::ValLoss, l, 10 * (i as u64 + 1), &s, Some(&early)))
            .collect();
        assert!(ds[0].improved && ds[1].improved && !ds[2].improved);
        // Two evaluations without improvement (0.9, 0.85): the rate halves once.
        assert!(ds[3].cut && !ds[3].stop);
        assert_eq!(m.lr_scale, 0.5);
        // A third one: early stopping, with the best at step 20.
        assert!(ds[4].stop && m.stopped);
        assert_eq!((m.best, m.best_step), (Some(0.8), Some(20)));
    }

    #[test]
    fn accuracy_improves_upwards_and_nan_never_improves() {
        assert!(Monitored::ValAccuracy.improves(0.6, Some(0.5)));
        assert!(!Monitored::ValAccuracy.improves(0.5, Some(0.5)));
        assert!(!Monitored::ValLoss.improves(f64::NAN, Some(1.0)));
        assert!(!Monitored::ValLoss.improves(f64::NAN, None));
    }
}
