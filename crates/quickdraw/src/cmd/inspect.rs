//! `quickdraw inspect` (placeholder).

use super::Ctx;

#[derive(Debug, clap::Args)]
pub struct InspectArgs {}

pub fn run(_args: InspectArgs, _ctx: Ctx) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
