//! `quickdraw download` (placeholder).

use super::Ctx;

#[derive(Debug, clap::Args)]
pub struct DownloadArgs {}

pub fn run(_args: DownloadArgs, _ctx: Ctx) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
