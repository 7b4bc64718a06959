//! `quickdraw` binary entry point: parse, run, print the error chain once, exit code.

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod cmd;
mod progress;

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
