//! `quickdraw completions <shell>`: the shell completion script of the whole CLI (clap_complete).

use clap::CommandFactory;

use super::Ctx;

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// Shell to complete for: bash, zsh, fish, elvish or powershell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Writes the script to stdout, e.g. `quickdraw completions zsh > ~/.zfunc/_quickdraw`.
pub fn run(a: CompletionsArgs, _ctx: Ctx) -> anyhow::Result<()> {
    let mut cmd = crate::cli::Cli::command();
    clap_complete::generate(a.shell, &mut cmd, "quickdraw", &mut std::io::stdout());
    Ok(())
}
