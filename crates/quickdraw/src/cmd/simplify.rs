//! `quickdraw simplify`: raw drawings in, Google-style simplified NDJSON out (stdout by default).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use quickdraw_data::Ink;
use quickdraw_data::convert::expand_inputs;
use quickdraw_data::ingest::ndjson::to_line_as;
use quickdraw_data::ingest::{DrawingReader, LabelFrom};
use quickdraw_data::simplify::simplify;

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
        let mut r = DrawingReader::open(&path, LabelFrom::Word, None)?;
        while let Some((index, parsed)) = r.next_drawing()? {
            match parsed {
                Ok(mut d) => {
                    let Ink::Strokes(s) = &d.ink else {
                        anyhow::bail!(
                            "{}: numpy_bitmap files hold images, not strokes: nothing to simplify",
                            path.display()
                        );
                    };
                    d.ink = Ink::Strokes(simplify(s));
                    writeln!(out, "{}", to_line_as(&d, true)).context("writing output")?;
                    written += 1;
                }
                Err(rej) => {
                    rejected += 1;
                    eprintln!("{}:{index}: rejected: {rej}", path.display());
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
