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
        /// Key version (default: the domain's current version, as the key
        /// file pins it, else the current root key version).
        #[arg(long)]
        version: Option<u32>,
        /// Where to write the key file (created with mode 0600; never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Move one token domain to a new key version; every other domain
    /// keeps its version (and its tokens). New tokens of the domain differ
    /// from its old ones, which still resolve until their version is
    /// retired. Takes effect at each vault process's next start.
    Rotate {
        #[command(flatten)]
        dir: DataDir,
        /// Token domain to rotate.
        #[arg(long)]
        domain: String,
    },
}

/// The config and every configured token domain, once `domain` is checked
/// to be one. A domain no partner has is not pinned by `keys rotate`: its
/// tokens would change at the next rotation under whoever uses its key.
fn configured(
    dir: &DataDir,
    domain: &str,
) -> anyhow::Result<(idvault_server::config::Config, Vec<String>)> {
    if !idvault_tokenizer::token::valid_domain(domain) {
        bail!("invalid token domain '{domain}' (use 1-32 of a-z, 0-9, -)");
    }
    let cfg = dir.load()?;
    let domains = super::keys::configured_domains(&cfg);
    if !domains.iter().any(|d| d == domain) {
        bail!(
            "no partner has token domain '{domain}' (configured: {}); add it to a partner's \
             token_domains first",
            if domains.is_empty() {
                "none".to_owned()
            } else {
                domains.join(", ")
            }
        );
    }
    Ok((cfg, domains))
}

pub(crate) fn export_token_key(
    dir: &DataDir,
    domain: &str,
    version: Option<u32>,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let (cfg, _) = configured(dir, domain)?;
    let keys = idvault_server::app::open_keys(&cfg)?;
    let current = keys.token_version(domain);
    let version = version.unwrap_or(current);
    let key = keys.token_key(domain, version)?;
    write_secret_file(
        out,
        &idvault_tokenizer::token::key_file_text(domain, version, key.expose()),
    )?;
    println!(
        "wrote {} (token domain {domain}, version {version}{}); keep it as secret as the data",
        out.display(),
        if version == current {
            ", the domain's current version".to_owned()
        } else {
            format!("; the domain's current version is {current}")
        }
    );
    Ok(())
}

/// Moves `domain` to a newer version: the current root version if the
/// domain is behind it, else a new root version (every other configured
/// domain pinned where it is first, so none of their tokens change).
fn rotate(dir: &DataDir, domain: &str) -> anyhow::Result<()> {
    let (cfg, domains) = configured(dir, domain)?;
    let r = idvault_server::keyfile::rotate_token_domain(
        &cfg.resolve(&cfg.file.keys.root_key_file),
        super::keys::pin_file(&cfg).as_deref(),
        &idvault_core::SystemRng::default(),
        domain,
        &domains,
    )?;
    let (from, to) = (r.from, r.to);
    println!(
        "token domain {domain}: version {from} -> {to} (from each vault process's next start); other \
         domains unchanged. Its version-{from} tokens can still be made (`idvault tokens export-key \
         --version {from}`) until version {from} is retired"
    );
    if r.added_root_version {
        println!(
            "root key version {to} was added for it and is current for new data too (`idvault keys \
             rewrap` moves old data forward)"
        );
    }
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
        TokensCommand::Rotate { dir, domain } => rotate(&dir, &domain),
    }
}
