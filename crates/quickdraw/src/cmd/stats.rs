//! `quickdraw stats`: per-class statistics of QuickDraw input files (streamed in constant memory,
//! files in parallel), and the integrity check of a shard directory against its `manifest.json`
//! (every shard read, CRCs verified, every example decoded and counted).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use quickdraw_data::convert::{expand_inputs, is_shard_name};
use quickdraw_data::drawing::Ink;
use quickdraw_data::features::decode_example;
use quickdraw_data::ingest::ndjson::format_timestamp;
use quickdraw_data::ingest::{UnitReader, class_from_path, parse_unit};
use quickdraw_data::manifest::{
    DatasetManifest, LABELS_FILE, MANIFEST_FILE, REJECTS_FILE, read_labels,
};
use quickdraw_data::tfrecord::TfRecordReader;
use rayon::prelude::*;
use serde::Serialize;

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
    let (datasets, inputs): (Vec<PathBuf>, Vec<PathBuf>) = paths
        .into_iter()
        .partition(|p| p.is_dir() && p.join(MANIFEST_FILE).is_file());
    // Shards without a manifest: a conversion that did not finish. Say so instead of finding
    // "no input files" in it.
    for p in inputs.iter().filter(|p| p.is_dir()) {
        let shards = std::fs::read_dir(p)
            .with_context(|| format!("reading {}", p.display()))?
            .filter_map(Result::ok)
            .filter(|e| quickdraw_data::convert::is_shard_name(&e.file_name().to_string_lossy()))
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
        checks.push(check_dataset(d, ctx)?);
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
            c.print();
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
    let class = class_from_path(path);
    let mut r = UnitReader::open(path, Some(progress.clone()))?;
    let format = r.format;
    let mut s = ClassStats {
        files: 1,
        ..Default::default()
    };
    while let Some(u) = r.next_record()? {
        s.records += 1;
        match parse_unit(format, &u, &class) {
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
    let total_bytes: u64 = files
        .iter()
        .map(|f| fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
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

/// Most decode problems reported per shard (the rest are counted).
const MAX_PROBLEMS_PER_SHARD: usize = 10;

/// The result of checking one dataset directory.
#[derive(Debug, Serialize)]
pub struct DatasetCheck {
    pub path: String,
    pub manifest: DatasetManifest,
    pub shards_checked: usize,
    pub examples_checked: u64,
    pub bytes_checked: u64,
    /// Examples found per split and class name.
    pub found: BTreeMap<String, BTreeMap<String, u64>>,
    pub problems: Vec<String>,
    pub ok: bool,
}

impl DatasetCheck {
    fn print(&self) {
        let m = &self.manifest;
        println!(
            "dataset {} ({}, manifest version {})",
            self.path, m.tool, m.manifest_version
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
        if self.ok {
            println!(
                "OK: {} shards, {} examples, {} bytes verified (CRCs, decoding, labels, counts)",
                self.shards_checked, self.examples_checked, self.bytes_checked
            );
        } else {
            println!("FAILED: {} problems:", self.problems.len());
            for p in &self.problems {
                println!("  {p}");
            }
        }
    }
}

/// What reading one shard found.
struct ShardResult {
    examples: u64,
    bytes: u64,
    per_label: BTreeMap<i64, u64>,
    problems: Vec<String>,
}

fn check_shard(path: &Path, m: &DatasetManifest) -> ShardResult {
    let mut res = ShardResult {
        examples: 0,
        bytes: 0,
        per_label: BTreeMap::new(),
        problems: Vec::new(),
    };
    match fs::metadata(path) {
        Ok(md) => res.bytes = md.len(),
        Err(e) => {
            res.problems.push(format!("{}: {e}", path.display()));
            return res;
        }
    }
    let mut reader = match TfRecordReader::open(path) {
        Ok(r) => r,
        Err(e) => {
            res.problems.push(e.to_string());
            return res;
        }
    };
    let mut buf = Vec::new();
    let mut extra = 0usize;
    let mut report = |res: &mut ShardResult, msg: String| {
        if res.problems.len() < MAX_PROBLEMS_PER_SHARD {
            res.problems.push(msg);
        } else {
            extra += 1;
        }
    };
    loop {
        let offset = reader.offset();
        match reader.read_into(&mut buf) {
            Ok(false) => break,
            Err(e) => {
                // The framing is lost: the rest of the file cannot be read.
                let msg = format!("{e} (after {} readable records)", res.examples);
                report(&mut res, msg);
                break;
            }
            Ok(true) => {}
        }
        let index = res.examples;
        res.examples += 1;
        match decode_example(&buf, &m.features) {
            Err(e) => report(
                &mut res,
                format!("{}: record {index} at byte {offset}: {e}", path.display()),
            ),
            Ok(ex) => {
                *res.per_label.entry(ex.label).or_default() += 1;
                match usize::try_from(ex.label)
                    .ok()
                    .and_then(|l| m.classes.get(l))
                {
                    None => report(
                        &mut res,
                        format!(
                            "{}: record {index} at byte {offset}: label {} is not below the number of classes ({})",
                            path.display(),
                            ex.label,
                            m.classes.len()
                        ),
                    ),
                    Some(c) if *c != ex.word => report(
                        &mut res,
                        format!(
                            "{}: record {index} at byte {offset}: label {} is {c:?} but the word is {:?}",
                            path.display(),
                            ex.label,
                            ex.word
                        ),
                    ),
                    Some(_) => {}
                }
            }
        }
    }
    if extra > 0 {
        res.problems.push(format!(
            "{}: {extra} more problems not listed",
            path.display()
        ));
    }
    res
}

fn check_dataset(dir: &Path, ctx: Ctx) -> anyhow::Result<DatasetCheck> {
    let m = DatasetManifest::load(dir)?;
    let mut problems = Vec::new();

    // labels.txt must list the manifest's classes.
    let labels_path = dir.join(LABELS_FILE);
    match read_labels(&labels_path) {
        Ok(l) if l != m.classes => problems.push(format!(
            "{}: lists {:?}, the manifest's classes are {:?}",
            labels_path.display(),
            l,
            m.classes
        )),
        Ok(_) => {}
        Err(e) => problems.push(e.to_string()),
    }

    // Shard files on disk that the manifest does not list.
    let mut on_disk = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if is_shard_name(&name) && m.shard(&name).is_none() {
            on_disk.push(name);
        }
    }
    on_disk.sort();
    for name in on_disk {
        problems.push(format!(
            "{}: shard file not listed in {MANIFEST_FILE}",
            dir.join(name).display()
        ));
    }

    // Read every listed shard (in parallel).
    let shards: Vec<(&str, &quickdraw_data::manifest::ShardFile)> = m
        .shards
        .iter()
        .flat_map(|(split, files)| files.iter().map(move |f| (split.as_str(), f)))
        .collect();
    let total_bytes: u64 = shards.iter().map(|(_, f)| f.bytes).sum();
    let bar = progress::bar(ctx.quiet, Some(shards.len() as u64), "shards");
    bar.set_message(format!(
        "checking {} (~{} MB)",
        dir.display(),
        total_bytes >> 20
    ));
    let results: Vec<ShardResult> = shards
        .par_iter()
        .map(|(_, f)| {
            let r = check_shard(&dir.join(&f.file), &m);
            bar.inc(1);
            r
        })
        .collect();
    bar.finish_and_clear();

    let mut found: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let (mut examples_checked, mut bytes_checked) = (0u64, 0u64);
    for ((split, f), r) in shards.iter().zip(&results) {
        let path = dir.join(&f.file);
        problems.extend(r.problems.iter().cloned());
        examples_checked += r.examples;
        bytes_checked += r.bytes;
        if path.is_file() {
            if r.examples != f.examples {
                problems.push(format!(
                    "{}: {MANIFEST_FILE} says {} examples, the file holds {} readable records",
                    path.display(),
                    f.examples,
                    r.examples
                ));
            }
            if r.bytes != f.bytes {
                problems.push(format!(
                    "{}: {MANIFEST_FILE} says {} bytes, the file has {}",
                    path.display(),
                    f.bytes,
                    r.bytes
                ));
            }
        }
        let per_class = found.entry(split.to_string()).or_default();
        for (&label, &n) in &r.per_label {
            let name = usize::try_from(label)
                .ok()
                .and_then(|l| m.classes.get(l).cloned())
                .unwrap_or_else(|| format!("<label {label}>"));
            *per_class.entry(name).or_default() += n;
        }
    }

    // Per (split, class) counts against the manifest.
    let mut keys: std::collections::BTreeSet<(String, String)> = std::collections::BTreeSet::new();
    for (class, c) in &m.per_class {
        for (split, &n) in &c.splits {
            if n > 0 {
                keys.insert((split.clone(), class.clone()));
            }
        }
    }
    for (split, per_class) in &found {
        for class in per_class.keys() {
            keys.insert((split.clone(), class.clone()));
        }
    }
    for (split, class) in &keys {
        let want = m
            .per_class
            .get(class)
            .and_then(|c| c.splits.get(split))
            .copied()
            .unwrap_or(0);
        let got = found
            .get(split)
            .and_then(|c| c.get(class))
            .copied()
            .unwrap_or(0);
        if want != got {
            let files: Vec<&str> = m
                .shards
                .get(split)
                .map(|v| v.iter().map(|f| f.file.as_str()).collect())
                .unwrap_or_default();
            problems.push(format!(
                "split {split:?}, class {class:?}: {MANIFEST_FILE} says {want} examples, the shards ({}) hold {got}",
                files.join(", ")
            ));
        }
    }
    for class in m.per_class.keys() {
        if !m.classes.contains(class) {
            problems.push(format!(
                "{MANIFEST_FILE}: per_class lists {class:?}, which is not one of its classes"
            ));
        }
    }
    for (class, c) in &m.per_class {
        let split_sum: u64 = c.splits.values().sum();
        if c.kept != split_sum {
            problems.push(format!(
                "{MANIFEST_FILE}: class {class:?} kept {} but its splits add up to {split_sum}",
                c.kept
            ));
        }
    }
    let listed_examples: u64 = m.shards.values().flatten().map(|f| f.examples).sum();
    if listed_examples != m.totals.kept {
        problems.push(format!(
            "{MANIFEST_FILE}: totals.kept is {} but the shards list {listed_examples} examples",
            m.totals.kept
        ));
    }

    // rejects.jsonl lists one line per rejected record.
    let rejects = dir.join(REJECTS_FILE);
    if let Ok(f) = fs::File::open(&rejects) {
        use std::io::BufRead;
        let mut lines = 0u64;
        let mut r = std::io::BufReader::new(f);
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => lines += !line.iter().all(u8::is_ascii_whitespace) as u64,
                Err(e) => {
                    problems.push(format!("{}: {e}", rejects.display()));
                    break;
                }
            }
        }
        if lines != m.totals.rejected_total() {
            problems.push(format!(
                "{}: lists {lines} records, {MANIFEST_FILE} counts {} rejected",
                rejects.display(),
                m.totals.rejected_total()
            ));
        }
    }

    let shards_checked = shards.len();
    drop(shards);
    Ok(DatasetCheck {
        path: dir.display().to_string(),
        ok: problems.is_empty(),
        manifest: m,
        shards_checked,
        examples_checked,
        bytes_checked,
        found,
        problems,
    })
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
