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
    }
}
