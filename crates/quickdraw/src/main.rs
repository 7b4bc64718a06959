//! `quickdraw` binary entry point: parse the command line and run it (`cmd::main` prints the
//! error and picks the exit code).

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
    cmd::main(cli::Cli::parse())
}
