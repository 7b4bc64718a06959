//! Report command for `quickdraw_data::simplify`: how closely our simplification of raw drawings
//! reproduces Google's own simplified files, for the default and for alternative choices.
//!
//! ```text
//! cargo run --release -p quickdraw-data --example simplify_match [QUICKDRAW_DIR]
//! ```
//!
//! `QUICKDRAW_DIR` (default `../shared/data/quickdraw` next to the repository) must hold
//! `raw/<class>.ndjson` and `simplified/<class>.ndjson`; every simplified drawing is paired with
//! its raw twin by `key_id`. Without the folder the command says so and exits successfully.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use quickdraw_data::simplify::{
    Distance, MatchSet, Resampling, Rounding, Scaling, SimplifyOptions, load_match_pairs, measure,
};

fn main() -> ExitCode {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/data/quickdraw"
            ))
        });
    if !dir.join("simplified").is_dir() || !dir.join("raw").is_dir() {
        println!(
            "SKIP: no raw/ and simplified/ under {} (nothing to compare)",
            dir.display()
        );
        return ExitCode::SUCCESS;
    }
    let started = Instant::now();
    let MatchSet { pairs, missing_raw } = match load_match_pairs(&dir) {
        Ok(set) => set,
        Err(e) => {
            eprintln!("error: cannot load {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
    };
    let classes = {
        let mut c: Vec<&str> = pairs.iter().map(|p| p.class.as_str()).collect();
        c.dedup();
        c.len()
    };
    println!(
        "{} pairs from {} classes under {} ({} simplified drawings without a raw twin), \
         loaded in {:.1?}",
        pairs.len(),
        classes,
        dir.display(),
        missing_raw,
        started.elapsed()
    );

    let best = SimplifyOptions::default();
    let variants: [(&str, SimplifyOptions); 8] = [
        ("default (best match)", best),
        (
            "scale by a precomputed 255/extent factor",
            SimplifyOptions {
                scaling: Scaling::Factor,
                ..best
            },
        ),
        (
            "resample with numpy.interp arithmetic",
            SimplifyOptions {
                resampling: Resampling::ArcLengthInterp,
                ..best
            },
        ),
        (
            "resample per segment, keeping vertices",
            SimplifyOptions {
                resampling: Resampling::PerSegment,
                ..best
            },
        ),
        (
            "no resampling",
            SimplifyOptions {
                resampling: Resampling::Off,
                ..best
            },
        ),
        (
            "RDP line norm without fused multiply-add",
            SimplifyOptions {
                distance: Distance::LineUnfused,
                ..best
            },
        ),
        (
            "RDP distance to the segment",
            SimplifyOptions {
                distance: Distance::Segment,
                ..best
            },
        ),
        (
            "round half away from zero",
            SimplifyOptions {
                rounding: Rounding::HalfAway,
                ..best
            },
        ),
    ];
    for (precision, full) in [
        ("f32 Stroke input (what `simplify` gets)", false),
        ("f64 JSON input", true),
    ] {
        println!("\n{precision}:");
        for (name, opts) in &variants {
            let t = Instant::now();
            let r = measure(&pairs, opts, full);
            println!("  {name:<42} {r} ({:.1?})", t.elapsed());
        }
    }

    // The drawings the default still gets wrong (f32 input), for inspection.
    println!();
    let mut shown = 0;
    for p in &pairs {
        let ours = quickdraw_data::simplify::simplify(&p.raw);
        let m = quickdraw_data::simplify::compare(&ours, &p.google);
        if !m.exact() {
            shown += 1;
            if shown <= 10 {
                println!(
                    "  differs: {} key_id {} (max abs error {:?})",
                    p.class, p.key_id, m.max_abs_error
                );
            }
        }
    }
    if shown > 10 {
        println!("  … and {} more", shown - 10);
    }
    ExitCode::SUCCESS
}
