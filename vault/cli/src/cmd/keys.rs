//! `idvault keys …`: root key versions.

use clap::Subcommand;
use idvault_core::SystemRng;

use super::DataDir;

#[derive(Subcommand, Debug)]
pub(crate) enum KeysCommand {
    /// Add a new root key version; older versions stay and keep old data readable.
    Rotate {
        #[command(flatten)]
        dir: DataDir,
    },
    /// Print the vault's release verification key (Ed25519, 64 hex digits):
    /// partners check every release's signature with it
    /// (docs/consent.md); with --all, one line per root key version,
    /// oldest first.
    ReleasePublicKey {
        #[command(flatten)]
        dir: DataDir,
        /// Every version's key (the last is current).
        #[arg(long)]
        all: bool,
    },
}

/// Runs a `keys` subcommand.
pub(crate) fn run(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Rotate { dir } => {
            let cfg = dir.load()?;
            let v = idvault_server::keyfile::rotate(
                &cfg.resolve(&cfg.file.keys.root_key_file),
                &SystemRng::default(),
            )?;
            println!("root key version {v} is now current; older versions remain for reading");
            Ok(())
        }
        KeysCommand::ReleasePublicKey { dir, all } => {
            let cfg = dir.load()?;
            let keys = idvault_server::app::open_keys(&cfg)?;
            let v = idvault_server::service::consent::release_verifier(&keys)?;
            let skip = if all {
                0
            } else {
                v.keys().len().saturating_sub(1)
            };
            for k in v.keys().iter().skip(skip) {
                println!("{}", hex::encode(k));
            }
            Ok(())
        }
    }
}
