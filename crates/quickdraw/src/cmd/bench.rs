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
    /// Training throughput of `quickdraw train` and of TensorFlow/Keras (bench/keras_train.py) on
    /// the same model, shards, batch size and machine, with peak memory, side by side.
    #[cfg(feature = "train")]
    Train(BenchTrainArgs),
    /// Input-pipeline throughput with the model removed: shards read (local or object store),
    /// CRC-checked, decoded, shuffled and batched as `train` does, then copied to --device;
    /// images/s and images per CPU-second (decode threads: RAYON_NUM_THREADS, default all cores).
    #[cfg(feature = "train")]
    Read(BenchReadArgs),
    /// Load on a running server: requests/s and p50/p90/p99 latency for REST and gRPC at
    /// several connection counts (bench/serve_load.sh starts the servers).
    Serve(super::bench_serve::BenchServeArgs),
}

#[cfg(feature = "train")]
#[derive(Debug, clap::Args)]
pub struct BenchReadArgs {
    /// Shards, as `train --train-files` takes them (files, globs, a dataset dir, URLs).
    #[arg(long, num_args = 1.., required = true)]
    pub files: Vec<String>,
    /// Examples per batch.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Batches to read (the stream repeats over the epoch as training does).
    #[arg(long, default_value_t = 500)]
    pub batches: u64,
    /// Batches decoded ahead.
    #[arg(long, default_value_t = 8)]
    pub prefetch: usize,
    /// Each batch is copied to this device as a `[B, 1, S, S]` tensor, as training does.
    #[command(flatten)]
    pub device: super::DeviceArg,
}

#[cfg(feature = "train")]
#[derive(Debug, clap::Args)]
pub struct BenchTrainArgs {
    /// Models to measure (each on both frameworks).
    #[arg(long, value_delimiter = ',', default_values_t = [String::from("cnn"), String::from("dnn")])]
    pub models: Vec<String>,
    /// Timed training steps per model and framework.
    #[arg(long, default_value_t = 30)]
    pub steps: u64,
    /// Untimed steps first (Keras traces its graph; burn allocates).
    #[arg(long, default_value_t = 5)]
    pub warmup: u64,
    /// Examples per training step (both frameworks).
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Existing shard folder (`train-*` and manifest.json); default: synthesise 10 classes and
    /// convert them to 64x64 shards in --scratch.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Python with tensorflow for the Keras side (default: the verification venv `.venv`).
    #[arg(long, default_value = ".venv/bin/python")]
    pub python: PathBuf,
    /// Measure quickdraw only.
    #[arg(long)]
    pub no_keras: bool,
    /// Scratch directory (data and model dirs).
    #[arg(long, default_value = "target/bench-train")]
    pub scratch: PathBuf,
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
    /// Write the shards under this object-store URL (e.g. `s3://bench/shards`, endpoint and
    /// credentials from the environment) instead of --scratch.
    #[arg(long)]
    pub output_url: Option<String>,
    /// Run the conversion as this many local worker processes at once (`convert --worker
    /// I/N`, then `--finalize`): wall time, total CPU time and the largest worker's memory.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
}

pub fn run(a: BenchArgs, ctx: Ctx) -> anyhow::Result<()> {
    match a.what {
        BenchCommand::Convert(c) => bench_convert(c, ctx),
        #[cfg(feature = "train")]
        BenchCommand::Train(t) => bench_train(t, ctx),
        #[cfg(feature = "train")]
        BenchCommand::Read(r) => bench_read(r),
        BenchCommand::Serve(s) => super::bench_serve::run(s),
    }
}

#[cfg(feature = "train")]
fn bench_read(a: BenchReadArgs) -> anyhow::Result<()> {
    use quickdraw_train::model::{ModelInput, ModelKind};
    use quickdraw_train::pipeline::{
        DataSource, DecodeOptions, OrderOptions, Pipeline, PipelineOptions, file_list,
    };
    let pattern = file_list(&a.files, "train")?;
    let src = DataSource::open(&pattern)?;
    let bytes_per_example = src.manifest.bytes_per_example;
    let opts = PipelineOptions {
        order: OrderOptions::train(1, 10_000),
        decode: DecodeOptions::images(*src.spec(), src.labels.len()),
        batch_size: a.batch_size,
        start: Default::default(),
        prefetch: a.prefetch,
        max_batches: Some(a.batches),
        augment: None,
    };
    let device = quickdraw_train::device::inference_device(a.device.choice)?;
    let threads = rayon::current_num_threads();
    let (cpu0, start) = (cpu_seconds(), std::time::Instant::now());
    let mut p = Pipeline::spawn(&src, opts)?;
    let mut images = 0u64;
    while let Some(b) = p.next_batch()? {
        images += b.size as u64;
        // The host-to-device copy of a training step (dropped at once: no model).
        let input = ModelInput::from_batch(&b, ModelKind::Cnn, &device)?;
        drop(input);
    }
    device
        .sync()
        .map_err(|e| anyhow::anyhow!("--device {}: {e:?}", a.device.choice))?;
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds().zip(cpu0).map(|(b, a)| b - a);
    let rate = images as f64 / secs.max(1e-9);
    let per_cpu = cpu.map(|c| images as f64 / c.max(1e-9));
    println!(
        "read {images} images from {} shard(s) in {secs:.2} s to {}: {rate:.0} images/s ({:.1} MB/s of shards) with {threads} decode thread(s), {} images per CPU-second, peak RSS {:.0} MB",
        src.files.len(),
        a.device.choice,
        rate * bytes_per_example / 1e6,
        per_cpu.map_or("?".into(), |r| format!("{r:.0}")),
        peak_rss_bytes().unwrap_or(0) as f64 / 1e6
    );
    println!(
        "{}",
        serde_json::json!({"bench": "read", "files": a.files, "images": images, "seconds": secs,
            "images_per_sec": rate, "batch_size": a.batch_size, "decode_threads": threads,
            "cpu_seconds": cpu, "images_per_cpu_second": per_cpu,
            "device": a.device.choice.to_string(), "peak_rss_bytes": peak_rss_bytes()})
    );
    Ok(())
}

/// CPU time (user + system) of this process so far, in seconds (Linux `/proc/self/stat`).
pub fn cpu_seconds() -> Option<f64> {
    let s = fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = s.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
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
        "{:>8} {:>10} {:>10} {:>9} {:>12} {:>12} {:>10} {:>9} {:>9}",
        "repeat",
        "drawings",
        "input MB",
        "seconds",
        "drawings/s",
        "peak RSS MB",
        "bytes/ex",
        "read s",
        "encode s"
    );
    let mut results = Vec::new();
    for &r in &a.repeat {
        let input = a.scratch.join(format!("input-x{r}"));
        let output = match &a.output_url {
            Some(u) => PathBuf::from(format!("{}/shards-x{r}", u.trim_end_matches('/'))),
            None => a.scratch.join(format!("shards-x{r}")),
        };
        let _ = fs::remove_dir_all(&input);
        let _ = fs::remove_dir_all(&output);
        let (lines, bytes) = make_input(&files, r, &input)?;
        let wall = std::time::Instant::now();
        let mut children = Vec::new();
        for w in 0..a.workers {
            let timing = a.scratch.join(format!("timing-x{r}-{w}.json"));
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
            if a.workers > 1 {
                cmd.arg("--worker").arg(format!("{w}/{}", a.workers));
            }
            children.push((cmd.spawn().context("running convert")?, timing));
        }
        let mut t = serde_json::json!({"records": 0u64, "cpu_seconds": 0.0, "peak_rss_bytes": 0u64,
            "read_seconds": 0.0, "encode_write_seconds": 0.0, "bytes_per_example": 0.0});
        for (mut child, timing) in children {
            anyhow::ensure!(
                child.wait()?.success(),
                "convert failed on the benchmark input"
            );
            let w: serde_json::Value = serde_json::from_str(&fs::read_to_string(&timing)?)?;
            let add = |t: &mut serde_json::Value, k: &str| {
                t[k] = (t[k].as_f64().unwrap_or(0.0) + w[k].as_f64().unwrap_or(0.0)).into();
            };
            add(&mut t, "cpu_seconds");
            t["records"] =
                (t["records"].as_u64().unwrap_or(0) + w["records"].as_u64().unwrap_or(0)).into();
            for k in [
                "peak_rss_bytes",
                "read_seconds",
                "encode_write_seconds",
                "bytes_per_example",
            ] {
                if w[k].as_f64().unwrap_or(0.0) > t[k].as_f64().unwrap_or(0.0) {
                    t[k] = w[k].clone();
                }
            }
        }
        if a.workers > 1 {
            let status = Command::new(&exe)
                .args(["convert", "--quiet", "--finalize", "--output"])
                .arg(&output)
                .status()?;
            anyhow::ensure!(status.success(), "convert --finalize failed");
        }
        let secs = wall.elapsed().as_secs_f64();
        let read = t["records"].as_u64().unwrap_or(0);
        anyhow::ensure!(read == lines, "convert read {read} records of {lines}");
        let rss = t["peak_rss_bytes"].as_u64().unwrap_or(0) as f64 / 1e6;
        let bpe = t["bytes_per_example"].as_f64().unwrap_or(0.0);
        let read_s = t["read_seconds"].as_f64().unwrap_or(0.0);
        let encode = t["encode_write_seconds"].as_f64().unwrap_or(0.0);
        println!(
            "{r:>8} {lines:>10} {:>10.1} {secs:>9.2} {:>12.0} {rss:>12.1} {bpe:>10.0} {read_s:>9.2} {encode:>9.2}",
            bytes as f64 / 1e6,
            lines as f64 / secs.max(1e-9)
        );
        results.push(serde_json::json!({"repeat": r, "drawings": lines, "input_bytes": bytes, "seconds": secs,
            "drawings_per_sec": lines as f64 / secs.max(1e-9), "peak_rss_bytes": t["peak_rss_bytes"], "bytes_per_example": bpe,
            "read_seconds": read_s, "encode_write_seconds": encode, "workers": a.workers,
            "cpu_seconds": t["cpu_seconds"], "output": output.display().to_string()}));
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

/// Runs a command, failing with its stderr when it fails; returns its stdout.
#[cfg(feature = "train")]
fn run_captured(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("starting {what}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The last line of `stdout` that parses as a JSON object.
#[cfg(feature = "train")]
fn last_json(stdout: &str, what: &str) -> anyhow::Result<serde_json::Value> {
    stdout
        .lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .filter(|v| v.is_object())
        })
        .with_context(|| format!("{what} printed no JSON summary"))
}

/// Median time of one single-image prediction with the trained model on the CPU (burn, the path
/// of `quickdraw predict`), as Keras's `infer 1` column measures `model(x)` on one image.
#[cfg(feature = "train")]
fn burn_single_image_ms(model_dir: &Path) -> anyhow::Result<f64> {
    use quickdraw_train::{CheckpointSel, DeviceChoice, TrainedModel};
    let m = TrainedModel::load(model_dir, CheckpointSel::Latest, DeviceChoice::Cpu)
        .with_context(|| format!("loading {}", model_dir.display()))?;
    let s = m.image_size();
    if m.kind().uses_strokes() {
        return Ok(f64::NAN);
    }
    let image: Vec<f32> = (0..s * s).map(|i| ((i * 7) % 11) as f32 / 10.0).collect();
    for _ in 0..5 {
        m.predict_images(&image, 1)?;
    }
    let mut times: Vec<f64> = (0..100)
        .map(|_| {
            let t = std::time::Instant::now();
            let _ = m.predict_images(&image, 1);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

#[cfg(feature = "train")]
fn bench_train(a: BenchTrainArgs, ctx: Ctx) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the quickdraw binary")?;
    fs::create_dir_all(&a.scratch)?;
    let data = match &a.data {
        Some(d) => d.clone(),
        None => {
            let synth = a.scratch.join("synth");
            let shards = a.scratch.join("shards");
            if !shards.join("manifest.json").exists() {
                eprintln!(
                    "bench train: synthesising 10 classes x 700 drawings and converting them to 64x64 shards in {}",
                    a.scratch.display()
                );
                run_captured(
                    Command::new(&exe)
                        .args([
                            "--quiet",
                            "synth",
                            "--classes",
                            "10",
                            "--per-class",
                            "700",
                            "--output",
                        ])
                        .arg(&synth),
                    "quickdraw synth",
                )?;
                run_captured(
                    Command::new(&exe)
                        .args([
                            "--quiet",
                            "convert",
                            "--split",
                            "train=0.9,eval=0.1",
                            "--input",
                        ])
                        .arg(&synth)
                        .arg("--output")
                        .arg(&shards),
                    "quickdraw convert",
                )?;
            }
            shards
        }
    };
    let train_glob = data.join("train-*").display().to_string();
    let keras_script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/keras_train.py");
    let keras = !a.no_keras;
    if keras {
        anyhow::ensure!(
            a.python.exists(),
            "{} not found: run scripts/test-all once to create the venv with tensorflow-cpu, pass --python, or --no-keras",
            a.python.display()
        );
        anyhow::ensure!(
            keras_script.exists(),
            "{} not found (run from a source checkout)",
            keras_script.display()
        );
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "training benchmark: batch {}, {} timed steps after {} warm-up steps, {threads} CPU threads, shards {}",
        a.batch_size, a.steps, a.warmup, train_glob
    );
    println!(
        "{:<6} {:<10} {:>11} {:>10} {:>12} {:>13} {:>13} {:>12}",
        "model",
        "framework",
        "parameters",
        "seconds",
        "images/s",
        "data wait %",
        "peak RSS MB",
        "infer 1 (ms)"
    );
    let mut results = Vec::new();
    for model in &a.models {
        // quickdraw: warm-up run, then the timed run resumes from its checkpoint in a new process;
        // `step_examples_per_sec` excludes checkpoint writing (there is no evaluation).
        let dir = a.scratch.join(format!("quickdraw-{model}"));
        let train = |steps: u64, overwrite: bool| -> anyhow::Result<serde_json::Value> {
            let mut cmd = Command::new(&exe);
            cmd.args([
                "--quiet",
                "train",
                "--model",
                model,
                "--train-files",
                &train_glob,
            ])
            .arg("--model-dir")
            .arg(&dir)
            .args([
                "--train-steps",
                &steps.to_string(),
                "--batch-size",
                &a.batch_size.to_string(),
                "--json",
            ]);
            if overwrite {
                cmd.arg("--overwrite");
            }
            last_json(
                &run_captured(&mut cmd, "quickdraw train")?,
                "quickdraw train",
            )
        };
        train(a.warmup.max(1), true)?;
        let ours = train(a.warmup.max(1) + a.steps, false)?;
        let ours_ips = ours["step_examples_per_sec"].as_f64().unwrap_or(0.0);
        let rss = |v: &serde_json::Value| v["peak_rss_bytes"].as_f64().unwrap_or(0.0) / 1e6;
        let single_ms = burn_single_image_ms(&dir)?;
        println!(
            "{model:<6} {:<10} {:>11} {:>10.2} {:>12.1} {:>13.2} {:>13.0} {:>12.2}",
            "quickdraw",
            ours["parameters"],
            ours["step_seconds"].as_f64().unwrap_or(0.0),
            ours_ips,
            100.0 * ours["data_wait_seconds"].as_f64().unwrap_or(0.0)
                / ours["step_seconds"].as_f64().unwrap_or(1.0).max(1e-9),
            rss(&ours),
            single_ms
        );
        let mut row = serde_json::json!({"model": model, "quickdraw": ours, "quickdraw_infer_single_ms_median": single_ms});
        if keras {
            let out = run_captured(
                Command::new(&a.python)
                    .arg(&keras_script)
                    .arg("--config")
                    .arg(dir.join("config.json"))
                    .args(["--train-files", &train_glob])
                    .args([
                        "--steps",
                        &a.steps.to_string(),
                        "--warmup",
                        &a.warmup.to_string(),
                    ])
                    .args(["--batch-size", &a.batch_size.to_string()]),
                "bench/keras_train.py",
            )?;
            let k = last_json(&out, "bench/keras_train.py")?;
            let k_ips = k["images_per_sec"].as_f64().unwrap_or(0.0);
            println!(
                "{model:<6} {:<10} {:>11} {:>10.2} {:>12.1} {:>13} {:>13.0} {:>12.2}",
                "keras",
                k["parameters"],
                k["seconds"].as_f64().unwrap_or(0.0),
                k_ips,
                "-",
                rss(&k),
                k["infer_single_ms_median"].as_f64().unwrap_or(0.0)
            );
            println!(
                "{model:<6} quickdraw / keras = {:.2}x",
                ours_ips / k_ips.max(1e-9)
            );
            row["keras"] = k;
            row["ratio"] = serde_json::json!(ours_ips / k_ips.max(1e-9));
        }
        results.push(row);
    }
    if !ctx.quiet {
        println!(
            "{}",
            serde_json::json!({"bench": "train", "threads": threads, "batch_size": a.batch_size, "steps": a.steps, "results": results})
        );
    }
    Ok(())
}
