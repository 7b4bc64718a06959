//! Splitting examples into train/eval/test: per class, by a stable hash of the key_id (so a
//! drawing always lands in the same split, whatever the seed or input order), with optional
//! per-class quotas, or by time (`--eval-after`).

use serde::Serialize;

pub const SPLITS: [&str; 3] = ["train", "eval", "test"];
/// Default quotas per class, as the lecture (5,000 / 1,000 / 1,000).
pub const DEFAULT_COUNTS: [u64; 3] = [5000, 1000, 1000];

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SplitPolicy {
    /// At most `counts[i]` examples per class in split i; the hash assigns drawings in
    /// proportion to the counts, each split stops taking drawings when its quota is full.
    Counts { counts: [u64; 3] },
    /// Shares of every class's drawings (summing to at most 1; the rest is left out).
    Fractions { fractions: [f64; 3] },
    /// Drawings made before `eval_after` (UTC seconds) are train; later ones are split between
    /// eval and test by hash in the proportions of `eval_test`; optional per-class quotas.
    ByTime {
        eval_after: i64,
        eval_test: [f64; 2],
        counts: Option<[u64; 3]>,
    },
}

impl Default for SplitPolicy {
    fn default() -> Self {
        SplitPolicy::Counts {
            counts: DEFAULT_COUNTS,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SplitError {
    #[error(
        "bad --split {0:?}: expected e.g. train=5000,eval=1000,test=1000 or train=0.8,eval=0.1,test=0.1"
    )]
    Syntax(String),
    #[error("bad --split {0:?}: unknown split {1:?} (train, eval, test)")]
    UnknownSplit(String, String),
    #[error("bad --split {0:?}: fractions sum to {1} > 1")]
    TooMuch(String, f64),
    #[error("bad --eval-after {0:?}: expected YYYY-MM-DD or an RFC 3339 time")]
    Date(String),
}

/// Parses `train=5000,eval=1000,test=1000` (counts) or `train=0.8,eval=0.1,test=0.1` (fractions).
/// Splits not named get nothing.
pub fn parse_split(spec: &str) -> Result<SplitPolicy, SplitError> {
    let mut vals = [None::<&str>; 3];
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| SplitError::Syntax(spec.into()))?;
        let i = SPLITS
            .iter()
            .position(|s| *s == k.trim())
            .ok_or_else(|| SplitError::UnknownSplit(spec.into(), k.into()))?;
        vals[i] = Some(v.trim());
    }
    if vals.iter().all(Option::is_none) {
        return Err(SplitError::Syntax(spec.into()));
    }
    let is_frac = vals.iter().flatten().any(|v| v.contains('.'));
    if is_frac {
        let mut f = [0.0; 3];
        for (i, v) in vals.iter().enumerate() {
            if let Some(v) = v {
                f[i] = v
                    .parse::<f64>()
                    .ok()
                    .filter(|x| (0.0..=1.0).contains(x))
                    .ok_or_else(|| SplitError::Syntax(spec.into()))?;
            }
        }
        let sum: f64 = f.iter().sum();
        if sum > 1.0 + 1e-9 {
            return Err(SplitError::TooMuch(spec.into(), sum));
        }
        Ok(SplitPolicy::Fractions { fractions: f })
    } else {
        let mut c = [0u64; 3];
        for (i, v) in vals.iter().enumerate() {
            if let Some(v) = v {
                c[i] = v.parse().map_err(|_| SplitError::Syntax(spec.into()))?;
            }
        }
        Ok(SplitPolicy::Counts { counts: c })
    }
}

/// Parses `--eval-after`: `2017-03-15` (midnight UTC) or RFC 3339.
pub fn parse_date(s: &str) -> Result<i64, SplitError> {
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc()
            .timestamp());
    }
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .map(|d| d.timestamp())
        .map_err(|_| SplitError::Date(s.into()))
}

/// splitmix64's finaliser (Steele, Lea, Flood 2014): a fast, well-mixed, stable 64-bit hash.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a of a string (stable across platforms and Rust versions, unlike `DefaultHasher`).
pub fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Uniform number in [0, 1) from a drawing's class and key_id (class matters for numpy_bitmap,
/// whose key_ids are row numbers).
pub fn unit_hash(class: &str, key_id: u64) -> f64 {
    (mix64(key_id ^ mix64(fnv1a(class))) >> 11) as f64 / (1u64 << 53) as f64
}

/// Decision for one drawing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assign {
    Split(usize),
    /// Its split's quota is already full.
    SplitFull,
    /// Outside every split's share.
    NotSelected,
}

/// Per-class split state (quotas are counted in input order, so the result is deterministic).
#[derive(Debug, Clone)]
pub struct Splitter {
    policy: SplitPolicy,
    taken: [u64; 3],
}

impl Splitter {
    pub fn new(policy: &SplitPolicy) -> Self {
        Splitter {
            policy: policy.clone(),
            taken: [0; 3],
        }
    }

    fn pick(shares: [f64; 3], u: f64) -> Option<usize> {
        let mut acc = 0.0;
        for (i, s) in shares.iter().enumerate() {
            acc += s;
            if u < acc {
                return Some(i);
            }
        }
        None
    }

    fn cap(&mut self, i: usize, counts: Option<[u64; 3]>) -> Assign {
        if let Some(c) = counts {
            if self.taken[i] >= c[i] {
                return Assign::SplitFull;
            }
        }
        self.taken[i] += 1;
        Assign::Split(i)
    }

    pub fn assign(&mut self, class: &str, key_id: u64, timestamp: i64) -> Assign {
        let u = unit_hash(class, key_id);
        match self.policy.clone() {
            SplitPolicy::Counts { counts } => {
                let total: u64 = counts.iter().sum();
                if total == 0 {
                    return Assign::NotSelected;
                }
                let shares = counts.map(|c| c as f64 / total as f64);
                match Self::pick(shares, u) {
                    Some(i) => self.cap(i, Some(counts)),
                    None => Assign::NotSelected,
                }
            }
            SplitPolicy::Fractions { fractions } => match Self::pick(fractions, u) {
                Some(i) => self.cap(i, None),
                None => Assign::NotSelected,
            },
            SplitPolicy::ByTime {
                eval_after,
                eval_test,
                counts,
            } => {
                let i = if timestamp < eval_after {
                    0
                } else {
                    let s = eval_test[0] + eval_test[1];
                    if s <= 0.0 {
                        return Assign::NotSelected;
                    }
                    if u < eval_test[0] / s { 1 } else { 2 }
                };
                self.cap(i, counts)
            }
        }
    }

    /// True when every quota is full: the rest of the class's input can be skipped.
    pub fn all_full(&self) -> bool {
        match &self.policy {
            SplitPolicy::Counts { counts } => (0..3).all(|i| self.taken[i] >= counts[i]),
            SplitPolicy::ByTime {
                counts: Some(c), ..
            } => (0..3).all(|i| self.taken[i] >= c[i]),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_specs() {
        assert_eq!(
            parse_split("train=5000,eval=1000,test=1000").unwrap(),
            SplitPolicy::default()
        );
        assert_eq!(
            parse_split("train=0.9,eval=0.1").unwrap(),
            SplitPolicy::Fractions {
                fractions: [0.9, 0.1, 0.0]
            }
        );
        assert!(matches!(
            parse_split("train=0.9,eval=0.2"),
            Err(SplitError::TooMuch(..))
        ));
        assert!(matches!(
            parse_split("valid=3"),
            Err(SplitError::UnknownSplit(..))
        ));
        assert_eq!(parse_date("2017-03-15").unwrap(), 1489536000);
    }

    #[test]
    fn hash_is_stable_and_uniform() {
        // Golden value from an independent Python splitmix64; pinned so that a change of hash
        // (which would move drawings between every user's splits) is caught.
        assert_eq!(mix64(0), 0xe220_a839_7b1d_cdaf);
        let n = 100_000;
        let below: usize = (0..n).filter(|&k| unit_hash("cat", k) < 0.25).count();
        assert!((below as f64 / n as f64 - 0.25).abs() < 0.01);
    }

    #[test]
    fn quotas_fill_in_proportion_and_stop() {
        let mut s = Splitter::new(&SplitPolicy::Counts {
            counts: [50, 10, 10],
        });
        let mut got = [0; 3];
        let mut full = 0;
        for k in 0..1000 {
            match s.assign("cat", k, 0) {
                Assign::Split(i) => got[i] += 1,
                Assign::SplitFull => full += 1,
                Assign::NotSelected => unreachable!(),
            }
            if s.all_full() {
                break;
            }
        }
        assert_eq!(got, [50, 10, 10]);
        assert!(full > 0);
        let mut t = Splitter::new(&SplitPolicy::ByTime {
            eval_after: 100,
            eval_test: [1.0, 1.0],
            counts: None,
        });
        assert_eq!(t.assign("cat", 1, 99), Assign::Split(0));
        assert!(matches!(
            t.assign("cat", 1, 100),
            Assign::Split(1) | Assign::Split(2)
        ));
    }
}
