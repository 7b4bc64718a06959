//! `quickdraw demo`: the whole system on built-in synthetic data, no network: synthesise,
//! convert, train the baseline and a CNN, evaluate both, export, and serve the drawing page.
//!
//! Each stage runs the real subcommand (this same binary), so the demo exercises exactly what a
//! user would type; the commands are printed as they run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context;

use super::{Ctx, shell_line};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Working directory for the demo's data, models and exports.
    #[arg(long, short, alias = "out", default_value = "demo-out")]
    pub output: PathBuf,
    /// Synthetic classes (at most 12).
    #[arg(long, default_value_t = 6)]
    pub classes: usize,
    /// Drawings per class.
    #[arg(long, default_value_t = 700)]
    pub per_class: usize,
    /// Image side used for the demo dataset (the lecture uses 64; 32 trains 4x faster).
    #[arg(long, default_value_t = 32)]
    pub size: u32,
    /// CNN training steps (batch 64).
    #[arg(long, default_value_t = 300)]
    pub train_steps: u64,
    /// Stop after evaluation and export instead of serving.
    #[arg(long)]
    pub no_serve: bool,
    /// Port for the server at the end.
    #[arg(long, default_value_t = 8501)]
    pub port: u16,
}

fn step(ctx: Ctx, title: &str, args: &[String]) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("locating the quickdraw binary")?;
    eprintln!("\n==> {title}\n    $ quickdraw {}", shell_line(args));
    let start = Instant::now();
    let mut cmd = Command::new(exe);
    cmd.args(args);
    if ctx.quiet {
        cmd.arg("--quiet");
    }
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running quickdraw {}", args[0]))?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    print!("{stdout}");
    anyhow::ensure!(
        out.status.success(),
        "stage {title:?} failed (quickdraw {})",
        shell_line(args)
    );
    eprintln!("    ({:.1} s)", start.elapsed().as_secs_f64());
    Ok(stdout)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

pub fn run(a: DemoArgs, ctx: Ctx) -> anyhow::Result<()> {
    let total = Instant::now();
    let raw = a.output.join("raw");
    let data = a.output.join("shards");
    let models = a.output.join("models");
    let (baseline, cnn) = (models.join("baseline"), models.join("cnn"));
    let export = a.output.join("export");
    let train_glob = format!("{}/train-*", s(&data));
    let eval_glob = format!("{}/eval-*", s(&data));
    let v = |x: &str| x.to_string();

    step(
        ctx,
        "1/6 synthesise QuickDraw-format raw NDJSON",
        &[
            v("synth"),
            v("--classes"),
            a.classes.to_string(),
            v("--per-class"),
            a.per_class.to_string(),
            v("--output"),
            s(&raw),
        ],
    )?;
    step(
        ctx,
        "2/6 convert: validate, simplify, rasterise, write TFRecord shards",
        &[
            v("convert"),
            v("--input"),
            s(&raw),
            v("--output"),
            s(&data),
            v("--size"),
            a.size.to_string(),
            v("--split"),
            v("train=0.8,eval=0.1,test=0.1"),
            v("--shards"),
            v("4"),
        ],
    )?;
    let common = |dir: &Path, model: &str, steps: u64| -> Vec<String> {
        vec![
            v("train"),
            v("--model"),
            v(model),
            v("--model-dir"),
            s(dir),
            v("--train-files"),
            train_glob.clone(),
            v("--eval-files"),
            eval_glob.clone(),
            v("--train-steps"),
            steps.to_string(),
            v("--batch-size"),
            v("64"),
            v("--overwrite"),
        ]
    };
    step(
        ctx,
        "3/6 train the baseline (class prior): the number to beat",
        &common(&baseline, "baseline", 20),
    )?;
    step(
        ctx,
        "4/6 train the lecture's CNN",
        &common(&cnn, "cnn", a.train_steps),
    )?;
    for (name, dir) in [("baseline", &baseline), ("cnn", &cnn)] {
        step(
            ctx,
            &format!("5/6 evaluate the {name} on the whole eval set"),
            &[
                v("evaluate"),
                v("--model-dir"),
                s(dir),
                v("--eval-files"),
                eval_glob.clone(),
            ],
        )?;
    }
    step(
        ctx,
        "   the delta between the two models",
        &[
            v("compare"),
            s(&baseline),
            s(&cnn),
            v("--eval-files"),
            eval_glob.clone(),
        ],
    )?;
    let out = step(
        ctx,
        "6/6 export the CNN (gate: must beat the baseline)",
        &[
            v("export"),
            v("--model-dir"),
            s(&cnn),
            v("--export-dir"),
            s(&export),
        ],
    )?;
    let version_dir = out.lines().last().unwrap_or_default().trim().to_string();
    step(
        ctx,
        "   inspect the export",
        &[v("model"), v("show"), v("--dir"), version_dir.clone()],
    )?;
    eprintln!(
        "\ndemo pipeline finished in {:.0} s; artifacts under {}",
        total.elapsed().as_secs_f64(),
        a.output.display()
    );
    if a.no_serve {
        return Ok(());
    }
    eprintln!(
        "\n==> serving the export: open http://127.0.0.1:{}/ and draw (Ctrl-C to stop)",
        a.port
    );
    step(
        ctx,
        "serve",
        &[
            v("serve"),
            v("--model-base-path"),
            s(&export),
            v("--model-name"),
            v("quickdraw"),
            // The page's port; gRPC on a free one (the demo's user browses, a client can read
            // the gRPC address from the server's first line).
            v("--rest-api-port"),
            if a.port == 0 {
                v("free")
            } else {
                a.port.to_string()
            },
            v("--port"),
            v("0"),
        ],
    )?;
    Ok(())
}
