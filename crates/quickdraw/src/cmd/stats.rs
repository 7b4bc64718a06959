//! `quickdraw stats`: per-class statistics of QuickDraw input files (streamed in constant memory,
//! files in parallel), and the integrity check of a shard directory against its `manifest.json`
//! (every shard read, CRCs verified, every example decoded and counted).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use quickdraw_data::convert::expand_inputs;
use quickdraw_data::drawing::Ink;
use quickdraw_data::ingest::ndjson::format_timestamp;
use quickdraw_data::ingest::{DrawingReader, LabelFrom, class_from_path};
use quickdraw_data::manifest::{DatasetCheck, MANIFEST_FILE, verify_with_progress};
use quickdraw_data::storage;
use rayon::prelude::*;

use super::{Ctx, expand_globs};
use crate::progress;

#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Input files, directories or quoted globs (any supported format), or dataset directories
    /// (holding `manifest.json`), which are checked against their manifest.
    #[arg(required = true)]
    pub paths: Vec<String>,
    /// Print the statistics as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Countries listed per class.
    #[arg(long, default_value_t = 5)]
    pub top_countries: usize,
}

pub fn run(a: StatsArgs, ctx: Ctx) -> anyhow::Result<()> {
    let paths = expand_globs(&a.paths)?;
    // Local folders and object-store prefixes alike (a dataset URL is checked in place,
    // streaming its shards).
    let (datasets, inputs): (Vec<PathBuf>, Vec<PathBuf>) = paths
        .into_iter()
        .partition(|p| storage::is_dir(p) && storage::is_file(&p.join(MANIFEST_FILE)));
    // Shards without a manifest: a conversion that did not finish. Say so instead of finding
    // "no input files" in it.
    for p in inputs.iter().filter(|p| storage::is_dir(p)) {
        let shards = storage::list_top(p)
            .with_context(|| format!("reading {}", p.display()))?
            .iter()
            .filter(|(name, _)| quickdraw_data::convert::is_shard_name(name))
            .count();
        anyhow::ensure!(
            shards == 0,
            "{}: {shards} shard files but no {MANIFEST_FILE}: an unfinished conversion (interrupted?); rerun `quickdraw convert`",
            p.display()
        );
    }

    let input_stats = if inputs.is_empty() {
        None
    } else {
        Some(input_stats(&inputs, ctx)?)
    };
    let mut checks = Vec::new();
    for d in &datasets {
        checks.push(verify_dataset(d, ctx)?);
    }

    if a.json {
        let out = serde_json::json!({
            "inputs": input_stats.as_ref().map(|s| s.to_json(a.top_countries)),
            "datasets": checks,
            "ok": checks.iter().all(|c| c.ok),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        if let Some(s) = &input_stats {
            s.print(a.top_countries);
        }
        for c in &checks {
            if input_stats.is_some() || checks.len() > 1 {
                println!();
            }
            print_check(c);
        }
    }
    let bad: Vec<String> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{} ({} problems)", c.path, c.problems.len()))
        .collect();
    anyhow::ensure!(bad.is_empty(), "dataset check failed: {}", bad.join(", "));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Bounded statistics
// ---------------------------------------------------------------------------------------------

/// Values below this are counted exactly.
const EXACT: usize = 1024;
/// Sub-bins per power of two above `EXACT` (relative bin width 1/64 = 1.6 %).
const SUB: u32 = 64;

/// Histogram of non-negative integers in constant memory: exact counts below [`EXACT`],
/// log-linear bins above (percentiles there are the bin's lower bound, within 1.6 %).
#[derive(Debug, Clone, Default)]
pub struct Hist {
    exact: Vec<u64>,
    log: Vec<u64>,
    count: u64,
    sum: u128,
    max: u64,
}

impl Hist {
    pub fn add(&mut self, v: u64) {
        self.count += 1;
        self.sum += v as u128;
        self.max = self.max.max(v);
        if (v as usize) < EXACT {
            if self.exact.is_empty() {
                self.exact = vec![0; EXACT];
            }
            self.exact[v as usize] += 1;
        } else {
            let i = Self::log_bin(v);
            if self.log.len() <= i {
                self.log.resize(i + 1, 0);
            }
            self.log[i] += 1;
        }
    }

    fn log_bin(v: u64) -> usize {
        let e = 63 - v.leading_zeros(); // >= 10
        let mant = ((v >> (e - SUB.trailing_zeros())) as u32) & (SUB - 1);
        ((e - EXACT.trailing_zeros()) * SUB + mant) as usize
    }

    fn log_bin_start(i: usize) -> u64 {
        let e = (i as u32) / SUB + EXACT.trailing_zeros();
        let mant = (i as u32 % SUB) as u64;
        (1u64 << e) + (mant << (e - SUB.trailing_zeros()))
    }

    pub fn merge(&mut self, o: &Hist) {
        if !o.exact.is_empty() {
            if self.exact.is_empty() {
                self.exact = vec![0; EXACT];
            }
            for (a, b) in self.exact.iter_mut().zip(&o.exact) {
                *a += b;
            }
        }
        if self.log.len() < o.log.len() {
            self.log.resize(o.log.len(), 0);
        }
        for (a, b) in self.log.iter_mut().zip(&o.log) {
            *a += b;
        }
        self.count += o.count;
        self.sum += o.sum;
        self.max = self.max.max(o.max);
    }

    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// Nearest-rank percentile, `q` in 0..=1.
    pub fn percentile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (v, &n) in self.exact.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return v as u64;
            }
        }
        for (i, &n) in self.log.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Self::log_bin_start(i).min(self.max);
            }
        }
        self.max
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "count": self.count,
            "mean": self.mean(),
            "p50": self.percentile(0.5),
            "p95": self.percentile(0.95),
            "max": self.max,
        })
    }

    fn line(&self) -> String {
        format!(
            "mean {:.1}, p50 {}, p95 {}, max {}",
            self.mean(),
            self.percentile(0.5),
            self.percentile(0.95),
            self.max
        )
    }
}

/// Most distinct country codes tracked per class; further ones are counted as `other`.
const MAX_COUNTRIES: usize = 1024;
const OTHER_COUNTRY: &str = "(other)";

/// Statistics of one class (or of everything).
#[derive(Debug, Clone, Default)]
pub struct ClassStats {
    pub files: u64,
    pub bytes: u64,
    /// Records read (valid + rejected).
    pub records: u64,
    pub valid: u64,
    pub rejected: BTreeMap<String, u64>,
    /// Valid records with pen strokes and metadata (not numpy_bitmap images).
    pub with_strokes: u64,
    pub image_only: u64,
    pub recognized: u64,
    pub strokes: Hist,
    pub points: Hist,
    pub countries: HashMap<String, u64>,
    pub first: Option<i64>,
    pub last: Option<i64>,
}

impl ClassStats {
    fn add_country(&mut self, c: &str, n: u64) {
        let c = if c.is_empty() { "(none)" } else { c };
        if let Some(v) = self.countries.get_mut(c) {
            *v += n;
        } else if self.countries.len() < MAX_COUNTRIES {
            self.countries.insert(c.to_string(), n);
        } else {
            *self.countries.entry(OTHER_COUNTRY.to_string()).or_default() += n;
        }
    }

    pub fn merge(&mut self, o: &ClassStats) {
        self.files += o.files;
        self.bytes += o.bytes;
        self.records += o.records;
        self.valid += o.valid;
        for (k, v) in &o.rejected {
            *self.rejected.entry(k.clone()).or_default() += v;
        }
        self.with_strokes += o.with_strokes;
        self.image_only += o.image_only;
        self.recognized += o.recognized;
        self.strokes.merge(&o.strokes);
        self.points.merge(&o.points);
        for (c, n) in &o.countries {
            self.add_country(c, *n);
        }
        self.first = match (self.first, o.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last = match (self.last, o.last) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    fn recognized_share(&self) -> Option<f64> {
        (self.with_strokes > 0).then(|| self.recognized as f64 / self.with_strokes as f64)
    }

    /// The `n` most frequent countries with their share of the records with metadata.
    fn top_countries(&self, n: usize) -> Vec<(String, u64, f64)> {
        let mut v: Vec<(&String, &u64)> = self.countries.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let total = self.with_strokes.max(1) as f64;
        v.into_iter()
            .take(n)
            .map(|(c, &k)| (c.clone(), k, k as f64 / total))
            .collect()
    }

    fn to_json(&self, top: usize) -> serde_json::Value {
        serde_json::json!({
            "files": self.files,
            "bytes": self.bytes,
            "records": self.records,
            "valid": self.valid,
            "rejected": self.rejected_total(),
            "rejected_by_reason": self.rejected,
            "image_only": self.image_only,
            "recognized_share": self.recognized_share(),
            "strokes_per_drawing": self.strokes.to_json(),
            "points_per_drawing": self.points.to_json(),
            "top_countries": self.top_countries(top).into_iter()
                .map(|(c, n, s)| serde_json::json!({"country": c, "records": n, "share": s}))
                .collect::<Vec<_>>(),
            "first": self.first.map(format_timestamp),
            "last": self.last.map(format_timestamp),
        })
    }

    fn print(&self, name: &str, top: usize) {
        let rej = if self.rejected.is_empty() {
            String::from("0 rejected")
        } else {
            let r: Vec<String> = self
                .rejected
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            format!("{} rejected: {}", self.rejected_total(), r.join(", "))
        };
        println!(
            "{name}: {} files ({} bytes), {} records, {} valid, {rej}",
            self.files, self.bytes, self.records, self.valid
        );
        if let Some(share) = self.recognized_share() {
            println!("  recognized:        {:.1}%", share * 100.0);
        }
        if self.image_only > 0 {
            println!("  image-only records (numpy_bitmap): {}", self.image_only);
        }
        if self.strokes.count > 0 {
            println!("  strokes / drawing: {}", self.strokes.line());
            println!("  points / drawing:  {}", self.points.line());
        }
        let tc = self.top_countries(top);
        if !tc.is_empty() {
            let s: Vec<String> = tc
                .iter()
                .map(|(c, _, sh)| format!("{c} {:.1}%", sh * 100.0))
                .collect();
            println!("  countries:         {}", s.join(", "));
        }
        if let (Some(a), Some(b)) = (self.first, self.last) {
            println!(
                "  time range:        {} .. {}",
                format_timestamp(a),
                format_timestamp(b)
            );
        }
    }
}

/// Statistics of all input files, per class.
#[derive(Debug, Clone, Default)]
pub struct InputStats {
    pub per_class: BTreeMap<String, ClassStats>,
}

impl InputStats {
    fn total(&self) -> ClassStats {
        let mut t = ClassStats::default();
        for c in self.per_class.values() {
            t.merge(c);
        }
        t
    }

    fn to_json(&self, top: usize) -> serde_json::Value {
        let classes: serde_json::Map<String, serde_json::Value> = self
            .per_class
            .iter()
            .map(|(k, v)| (k.clone(), v.to_json(top)))
            .collect();
        serde_json::json!({ "classes": classes, "total": self.total().to_json(top) })
    }

    fn print(&self, top: usize) {
        for (name, c) in &self.per_class {
            c.print(name, top);
        }
        if self.per_class.len() > 1 {
            self.total().print("TOTAL", top);
        }
    }
}

/// Streams one file into the statistics of its class.
fn file_stats(path: &Path, progress: &Arc<AtomicU64>) -> anyhow::Result<ClassStats> {
    let mut r = DrawingReader::open(path, LabelFrom::File, Some(progress.clone()))?;
    let mut s = ClassStats {
        files: 1,
        ..Default::default()
    };
    while let Some((_, parsed)) = r.next_drawing()? {
        s.records += 1;
        match parsed {
            Err(rej) => {
                *s.rejected
                    .entry(rej.reason.as_str().to_string())
                    .or_default() += 1
            }
            Ok(d) => {
                s.valid += 1;
                match &d.ink {
                    Ink::Bitmap(_) => s.image_only += 1,
                    Ink::Strokes(strokes) => {
                        s.with_strokes += 1;
                        s.recognized += d.recognized as u64;
                        s.strokes.add(strokes.len() as u64);
                        s.points.add(d.n_points() as u64);
                        s.add_country(&d.countrycode, 1);
                        s.first = Some(s.first.map_or(d.timestamp, |f| f.min(d.timestamp)));
                        s.last = Some(s.last.map_or(d.timestamp, |l| l.max(d.timestamp)));
                    }
                }
            }
        }
    }
    let (_, bytes) = r.finish()?;
    s.bytes = bytes;
    Ok(s)
}

fn input_stats(inputs: &[PathBuf], ctx: Ctx) -> anyhow::Result<InputStats> {
    // A dataset directory met while walking a parent directory is not input: its manifest.json
    // and rejects.jsonl would otherwise be read as NDJSON.
    let files: Vec<PathBuf> = expand_inputs(inputs)?
        .into_iter()
        .filter(|f| {
            inputs.contains(f) || !f.parent().is_some_and(|d| d.join(MANIFEST_FILE).is_file())
        })
        .collect();
    anyhow::ensure!(!files.is_empty(), "no input files found in {inputs:?}");
    let total_bytes: u64 = files.iter().map(|f| storage::len(f).unwrap_or(0)).sum();
    let progress = Arc::new(AtomicU64::new(0));
    let bar = progress::bytes_bar(ctx.quiet, Some(total_bytes));
    bar.set_message(format!("reading {} files", files.len()));
    let results: Vec<(String, anyhow::Result<ClassStats>)> = progress::with_ticker(
        || bar.set_position(progress.load(Ordering::Relaxed)),
        || {
            files
                .par_iter()
                .map(|f| (class_from_path(f), file_stats(f, &progress)))
                .collect()
        },
    );
    bar.finish_and_clear();
    let mut out = InputStats::default();
    for (class, r) in results {
        let s = r?;
        out.per_class.entry(class).or_default().merge(&s);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Dataset check
// ---------------------------------------------------------------------------------------------

/// The library's check with a progress bar over the shards.
fn verify_dataset(dir: &Path, ctx: Ctx) -> anyhow::Result<DatasetCheck> {
    let bar = progress::bar(ctx.quiet, Some(0), "shards");
    bar.set_message(format!("checking {}", dir.display()));
    let check = verify_with_progress(dir, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    Ok(check?)
}

fn print_check(check: &DatasetCheck) {
    let m = &check.manifest;
    println!(
        "dataset {} ({}, manifest version {})",
        check.path, m.tool, m.manifest_version
    );
    println!("classes ({}): {}", m.classes.len(), m.classes.join(", "));
    let f = &m.features;
    println!(
        "features: image {}x{} {:?} (raster {:?}, line width {}), strokes {}, simplify raw {}",
        f.raster.size,
        f.raster.size,
        f.image_encoding,
        f.raster.mode,
        f.raster.line_width,
        f.strokes
            .map(|s| format!("max {} points", s.max_points))
            .unwrap_or_else(|| "no".into()),
        f.simplify_raw
    );
    println!("split: {}", m.split);
    super::convert::print_summary(m, 0);
    if check.ok {
        println!(
            "OK: {} shards, {} examples, {} bytes verified (CRCs, decoding, labels, counts)",
            check.shards_checked, check.examples_checked, check.bytes_checked
        );
    } else {
        println!("FAILED: {} problems:", check.problems.len());
        for p in &check.problems {
            println!("  {p}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_percentiles() {
        let mut h = Hist::default();
        for v in 1..=100u64 {
            h.add(v);
        }
        assert_eq!(h.percentile(0.5), 50);
        assert_eq!(h.percentile(0.95), 95);
        assert_eq!(h.max, 100);
        assert!((h.mean() - 50.5).abs() < 1e-9);
        let mut big = Hist::default();
        for v in [5000u64, 5000, 100_000] {
            big.add(v);
        }
        let p50 = big.percentile(0.5);
        assert!(p50 <= 5000 && p50 as f64 >= 5000.0 * 0.98, "{p50}");
        let p100 = big.percentile(1.0);
        assert!((98_000..=100_000).contains(&p100), "{p100}");
        let mut m = h.clone();
        m.merge(&big);
        assert_eq!(m.count, 103);
        assert_eq!(m.max, 100_000);
        // Bin boundaries are monotone and start where the exact range ends.
        assert_eq!(Hist::log_bin(1024), 0);
        assert_eq!(Hist::log_bin_start(0), 1024);
        for i in 0..500 {
            assert!(Hist::log_bin_start(i + 1) > Hist::log_bin_start(i));
            assert_eq!(Hist::log_bin(Hist::log_bin_start(i)), i);
        }
    }
}
