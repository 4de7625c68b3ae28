//! `idvault demo`: placeholder replaced below.
use clap::Args;

#[derive(Args, Debug)]
pub(crate) struct DemoArgs {}

pub(crate) async fn run(_args: &DemoArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
