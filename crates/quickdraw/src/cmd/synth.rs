//! `quickdraw synth` (placeholder).

use super::Ctx;

#[derive(Debug, clap::Args)]
pub struct SynthArgs {}

pub fn run(_args: SynthArgs, _ctx: Ctx) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
