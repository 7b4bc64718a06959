//! `quickdraw` binary entry point: parse, run, print the error chain once, exit code.

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod cmd;
mod progress;

// Conversion allocates and frees a few small buffers per drawing on every core (parsed strokes,
// images, encoded records); mimalloc's per-thread free lists do that with less work and fewer
// page faults than glibc's malloc (see the README's convert benchmark).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cmd::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
