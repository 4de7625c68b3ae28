//! `idvault tokens …`: token domain keys.
use std::path::PathBuf;

use anyhow::bail;
use clap::Subcommand;

use super::{DataDir, write_secret_file};

#[derive(Subcommand, Debug)]
pub(crate) enum TokensCommand {
    /// Export a token domain's key for stateless tokenization where the data is.
    ExportKey {
        #[command(flatten)]
        dir: DataDir,
        /// Token domain (1-32 of a-z, 0-9, -); it appears in every token.
        #[arg(long)]
        domain: String,
        /// Key version (default: the current root key version).
        #[arg(long)]
        version: Option<u32>,
        /// Where to write the key file (created with mode 0600; never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
}

pub(crate) fn export_token_key(
    dir: &DataDir,
    domain: &str,
    version: Option<u32>,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    if !idvault_tokenizer::token::valid_domain(domain) {
        bail!("invalid token domain '{domain}' (use 1-32 of a-z, 0-9, -)");
    }
    let cfg = dir.load()?;
    let keys = idvault_server::app::open_keys(&cfg)?;
    let version = version.unwrap_or_else(|| keys.current_version());
    let key = keys.token_key(domain, version)?;
    write_secret_file(
        out,
        &idvault_tokenizer::token::key_file_text(domain, version, key.expose()),
    )?;
    println!(
        "wrote {} (token domain {domain}, version {version}); keep it as secret as the data",
        out.display()
    );
    Ok(())
}

/// Runs a `tokens` subcommand.
pub(crate) fn run(command: TokensCommand) -> anyhow::Result<()> {
    match command {
        TokensCommand::ExportKey {
            dir,
            domain,
            version,
            out,
        } => export_token_key(&dir, &domain, version, &out),
    }
}
