//! `quickdraw synth`: deterministic QuickDraw-format NDJSON of procedural doodles, so tests and
//! the quick start have data without network access.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use quickdraw_data::ingest::ndjson::to_line_as;
use quickdraw_data::simplify::simplify;
use quickdraw_data::synth::{SHAPES, SynthConfig, synth_class};
use quickdraw_data::{Drawing, Ink};

use super::Ctx;
use crate::progress;

#[derive(Debug, clap::Args)]
pub struct SynthArgs {
    /// Number of classes (the first N of: circle, square, triangle, star, zigzag, line, spiral,
    /// cross, house, wave, heart, arrow).
    #[arg(long, default_value_t = 6)]
    pub classes: usize,
    /// Drawings per class.
    #[arg(long, default_value_t = 1000)]
    pub per_class: usize,
    /// Output directory; one `<class>.ndjson` per class.
    #[arg(long, short, alias = "out")]
    pub output: PathBuf,
    /// Seed of the generator: the same seed gives byte-identical files.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// `raw` (float coordinates with timing, as full/raw) or `simplified` (as full/simplified).
    #[arg(long, default_value = "raw", value_parser = ["raw", "simplified"])]
    pub format: String,
    /// Share of drawings marked `recognized: false`.
    #[arg(long, default_value_t = quickdraw_data::synth::DEFAULT_UNRECOGNIZED_SHARE)]
    pub unrecognized_share: f32,
}

pub fn run(a: SynthArgs, ctx: Ctx) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=SHAPES.len()).contains(&a.classes),
        "--classes must be between 1 and {} (the synthetic shapes)",
        SHAPES.len()
    );
    let cfg = SynthConfig {
        classes: a.classes,
        per_class: a.per_class,
        seed: a.seed,
        unrecognized_share: a.unrecognized_share,
    };
    let files = write_synth(&cfg, &a.output, a.format == "simplified", ctx)?;
    if !ctx.quiet {
        eprintln!(
            "wrote {} drawings in {} files under {}",
            a.classes * a.per_class,
            files.len(),
            a.output.display()
        );
    }
    Ok(())
}

/// Writes one NDJSON file per class (atomically); returns their paths. Used by `synth` and `demo`.
pub fn write_synth(
    cfg: &SynthConfig,
    out: &Path,
    simplified: bool,
    ctx: Ctx,
) -> anyhow::Result<Vec<PathBuf>> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let bar = progress::bar(
        ctx.quiet,
        Some((cfg.classes * cfg.per_class) as u64),
        "drawings",
    );
    bar.set_message("synthesising");
    let mut paths = Vec::new();
    for (c, name) in cfg.class_names().iter().enumerate() {
        let path = out.join(format!("{name}.ndjson"));
        let tmp = out.join(format!(".{name}.ndjson.tmp"));
        let mut w = BufWriter::new(
            File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
        );
        for mut d in synth_class(c, cfg) {
            if simplified {
                d = simplified_copy(d);
            }
            writeln!(w, "{}", to_line_as(&d, simplified))
                .with_context(|| format!("writing {}", tmp.display()))?;
            bar.inc(1);
        }
        w.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("renaming {}", tmp.display()))?;
        paths.push(path);
    }
    bar.finish_and_clear();
    Ok(paths)
}

fn simplified_copy(mut d: Drawing) -> Drawing {
    if let Ink::Strokes(s) = &d.ink {
        d.ink = Ink::Strokes(simplify(s));
    }
    d
}
