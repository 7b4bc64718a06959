//! `quickdraw bench`: reproducible performance measurements (the README's figures come from here).

use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use quickdraw_data::convert::expand_inputs;

use super::Ctx;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Conversion throughput (simplified NDJSON -> 64x64 Example shards) and peak memory, on real
    /// QuickDraw data repeated to a meaningful size, at several sizes.
    Convert(BenchConvertArgs),
}

#[derive(Debug, clap::Args)]
pub struct BenchConvertArgs {
    /// Folder of NDJSON files to repeat (default: the shared real samples).
    #[arg(long, default_value = "../shared/data/quickdraw/simplified")]
    pub data: PathBuf,
    /// Input sizes to measure, as repetitions of the data (each repetition gets fresh key_ids).
    #[arg(long, value_delimiter = ',', default_values_t = [25u32, 100])]
    pub repeat: Vec<u32>,
    /// Scratch directory (inputs and shards are written here, then removed).
    #[arg(long, default_value = "target/bench-convert")]
    pub scratch: PathBuf,
    /// Extra flags passed to `convert` (e.g. `--image-encoding png`).
    #[arg(long, allow_hyphen_values = true, num_args = 0.., value_delimiter = ' ')]
    pub convert_args: Vec<String>,
}

pub fn run(a: BenchArgs, ctx: Ctx) -> anyhow::Result<()> {
    match a.what {
        BenchCommand::Convert(c) => bench_convert(c, ctx),
    }
}

/// Writes `repeat` copies of every input file, giving each copy's drawings new key_ids.
fn make_input(files: &[PathBuf], repeat: u32, dir: &Path) -> anyhow::Result<(u64, u64)> {
    fs::create_dir_all(dir)?;
    let (mut lines, mut bytes) = (0u64, 0u64);
    for f in files {
        let name = f.file_name().context("input without a file name")?;
        let mut w = BufWriter::new(File::create(dir.join(name))?);
        let src: Vec<String> = BufReader::new(File::open(f)?)
            .lines()
            .collect::<Result<_, _>>()?;
        for r in 0..repeat {
            for l in &src {
                // Replace `"key_id":"123"` by a unique id per copy so hashing spreads the copies.
                let l = match l.find("\"key_id\":\"") {
                    Some(i) => {
                        let start = i + 10;
                        let end = start + l[start..].find('"').unwrap_or(0);
                        format!(
                            "{}{}{}",
                            &l[..start],
                            l[start..end]
                                .parse::<u64>()
                                .unwrap_or(0)
                                .wrapping_add(r as u64 * 1_000_003),
                            &l[end..]
                        )
                    }
                    None => l.clone(),
                };
                writeln!(w, "{l}")?;
                lines += 1;
                bytes += l.len() as u64 + 1;
            }
        }
        w.flush()?;
    }
    Ok((lines, bytes))
}

fn bench_convert(a: BenchConvertArgs, ctx: Ctx) -> anyhow::Result<()> {
    if !a.data.exists() {
        anyhow::bail!(
            "benchmark data {} not found (the shared real QuickDraw samples); pass --data DIR",
            a.data.display()
        );
    }
    let files = expand_inputs(std::slice::from_ref(&a.data))?;
    let exe = std::env::current_exe().context("locating the quickdraw binary")?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "convert benchmark: {} files from {}, {threads} threads",
        files.len(),
        a.data.display()
    );
    println!(
        "{:>8} {:>10} {:>10} {:>9} {:>12} {:>12} {:>10}",
        "repeat", "drawings", "input MB", "seconds", "drawings/s", "peak RSS MB", "bytes/ex"
    );
    let mut results = Vec::new();
    for &r in &a.repeat {
        let input = a.scratch.join(format!("input-x{r}"));
        let output = a.scratch.join(format!("shards-x{r}"));
        let _ = fs::remove_dir_all(&input);
        let _ = fs::remove_dir_all(&output);
        let (lines, bytes) = make_input(&files, r, &input)?;
        let timing = a.scratch.join(format!("timing-x{r}.json"));
        let mut cmd = Command::new(&exe);
        cmd.args([
            "convert",
            "--quiet",
            "--split",
            "train=0.8,eval=0.1,test=0.1",
            "--include-unrecognized",
            "--input",
        ])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .arg("--timing-json")
        .arg(&timing)
        .args(&a.convert_args);
        let status = cmd.status().context("running convert")?;
        anyhow::ensure!(status.success(), "convert failed on the benchmark input");
        let t: serde_json::Value = serde_json::from_str(&fs::read_to_string(&timing)?)?;
        let secs = t["seconds"].as_f64().unwrap_or(0.0);
        let read = t["records"].as_u64().unwrap_or(0);
        anyhow::ensure!(read == lines, "convert read {read} records of {lines}");
        let rss = t["peak_rss_bytes"].as_u64().unwrap_or(0) as f64 / 1e6;
        let bpe = t["bytes_per_example"].as_f64().unwrap_or(0.0);
        println!(
            "{r:>8} {lines:>10} {:>10.1} {secs:>9.2} {:>12.0} {rss:>12.1} {bpe:>10.0}",
            bytes as f64 / 1e6,
            lines as f64 / secs.max(1e-9)
        );
        results.push(serde_json::json!({"repeat": r, "drawings": lines, "input_bytes": bytes, "seconds": secs,
            "drawings_per_sec": lines as f64 / secs.max(1e-9), "peak_rss_bytes": t["peak_rss_bytes"], "bytes_per_example": bpe}));
        let _ = fs::remove_dir_all(&input);
        let _ = fs::remove_dir_all(&output);
    }
    if !ctx.quiet {
        println!(
            "{}",
            serde_json::json!({"bench": "convert", "threads": threads, "convert_args": a.convert_args, "results": results})
        );
    }
    Ok(())
}

/// Peak resident memory of this process (Linux `VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
