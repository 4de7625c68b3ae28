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
    /// Seal an existing plain root key file with a PKCS#11 (HSM) key,
    /// made in the token if absent; the PIN comes from `[keys] pin_file`
    /// or IDVAULT_PKCS11_PIN.
    Seal {
        #[command(flatten)]
        dir: DataDir,
        /// PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so).
        #[arg(long)]
        module: std::path::PathBuf,
        /// Label of the token holding the seal key.
        #[arg(long)]
        token_label: String,
        /// Label of the AES seal key.
        #[arg(long)]
        key_label: String,
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
                cfg.file
                    .keys
                    .pin_file
                    .as_ref()
                    .map(|p| cfg.resolve(p))
                    .as_deref(),
                &SystemRng::default(),
            )?;
            println!("root key version {v} is now current; older versions remain for reading");
            Ok(())
        }
        KeysCommand::Seal {
            dir,
            module,
            token_label,
            key_label,
        } => {
            let cfg = dir.load()?;
            let path = cfg.resolve(&cfg.file.keys.root_key_file);
            idvault_server::keyfile::seal_existing(
                &path,
                &idvault_server::keyfile::pkcs11::Pkcs11Params {
                    module,
                    token_label,
                    key_label,
                },
                cfg.file
                    .keys
                    .pin_file
                    .as_ref()
                    .map(|p| cfg.resolve(p))
                    .as_deref(),
                &SystemRng::default(),
            )?;
            println!("{}: sealed; its plain text is gone", path.display());
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
