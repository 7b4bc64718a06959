//! `quickdraw stats` (placeholder).

use super::Ctx;

#[derive(Debug, clap::Args)]
pub struct StatsArgs {}

pub fn run(_args: StatsArgs, _ctx: Ctx) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
