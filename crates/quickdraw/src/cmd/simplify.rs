//! `quickdraw simplify` (placeholder).

use super::Ctx;

#[derive(Debug, clap::Args)]
pub struct SimplifyArgs {}

pub fn run(_args: SimplifyArgs, _ctx: Ctx) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
