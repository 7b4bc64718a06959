//! `quickdraw simplify`: raw drawings in, Google-style simplified NDJSON out (stdout by default).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use quickdraw_data::Ink;
use quickdraw_data::convert::expand_inputs;
use quickdraw_data::ingest::{UnitReader, class_from_path, parse_unit};
use quickdraw_data::simplify::simplify;
use quickdraw_data::synth::to_ndjson_line;

use super::{Ctx, expand_globs};

#[derive(Debug, clap::Args)]
pub struct SimplifyArgs {
    /// Raw inputs (NDJSON with [x, y, t] strokes; any supported stroke format works).
    #[arg(required = true)]
    pub inputs: Vec<String>,
    /// Output file (default: stdout).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

pub fn run(a: SimplifyArgs, ctx: Ctx) -> anyhow::Result<()> {
    let files = expand_inputs(&expand_globs(&a.inputs)?)?;
    let out: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(File::create(p).with_context(|| format!("creating {}", p.display()))?),
        None => Box::new(io::stdout().lock()),
    };
    let mut out = BufWriter::new(out);
    let (mut written, mut rejected) = (0u64, 0u64);
    for path in files {
        let class = class_from_path(&path);
        let mut r = UnitReader::open(&path, None)?;
        while let Some(u) = r.next_record()? {
            match parse_unit(r.format, &u, &class) {
                Ok(mut d) => {
                    let Ink::Strokes(s) = &d.ink else {
                        anyhow::bail!(
                            "{}: numpy_bitmap files hold images, not strokes: nothing to simplify",
                            path.display()
                        );
                    };
                    d.ink = Ink::Strokes(simplify(s));
                    writeln!(out, "{}", to_ndjson_line(&d, true)).context("writing output")?;
                    written += 1;
                }
                Err(rej) => {
                    rejected += 1;
                    eprintln!("{}:{}: rejected: {rej}", path.display(), u.index);
                }
            }
        }
    }
    out.flush().context("writing output")?;
    if !ctx.quiet {
        eprintln!("simplified {written} drawings, rejected {rejected}");
    }
    Ok(())
}
