//! `idvault init`: a data directory (root key, config; with --dev a dev PKI),
//! the root key optionally sealed by an HSM key through PKCS#11.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use idvault_core::SystemRng;
use idvault_server::keyfile::{self, Protection, pkcs11::Pkcs11Params};

use super::DataDir;

/// How the new root key file is protected.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct SealArgs {
    /// Seal the root key file: `pkcs11` (an HSM key, see docs/keys.md).
    /// Without it the file is plain text, mode 0600.
    #[arg(long, value_parser = ["pkcs11"])]
    pub(crate) seal: Option<String>,
    /// PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so).
    #[arg(long, requires = "seal")]
    pub(crate) module: Option<PathBuf>,
    /// Label of the token holding the seal key.
    #[arg(long, requires = "seal")]
    pub(crate) token_label: Option<String>,
    /// Label of the AES seal key; generated in the token (non-extractable)
    /// if absent.
    #[arg(long, requires = "seal")]
    pub(crate) key_label: Option<String>,
    /// File holding the token's user PIN (mode 0600), also written to the
    /// config; without it the PIN comes from IDVAULT_PKCS11_PIN. There is
    /// no PIN flag: a flag value shows in the process list.
    #[arg(long, requires = "seal")]
    pub(crate) pin_file: Option<PathBuf>,
}

impl SealArgs {
    fn protection(&self) -> anyhow::Result<Protection> {
        match self.seal.as_deref() {
            None => Ok(Protection::Plain),
            Some(_) => {
                let (Some(module), Some(token_label), Some(key_label)) =
                    (&self.module, &self.token_label, &self.key_label)
                else {
                    bail!("--seal pkcs11 needs --module, --token-label and --key-label");
                };
                Ok(Protection::Pkcs11(Pkcs11Params {
                    module: module.clone(),
                    token_label: token_label.clone(),
                    key_label: key_label.clone(),
                }))
            }
        }
    }
}

/// Writes `pin_file` into a config this run wrote, under `[keys]`.
fn record_pin_file(cfg: &Path, pin_file: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(cfg).with_context(|| cfg.display().to_string())?;
    let abs = std::path::absolute(pin_file)?;
    let line = format!(
        "pin_file = {}\n",
        toml::Value::String(abs.display().to_string())
    );
    let Some(at) = text
        .find("root_key_file = ")
        .and_then(|i| text[i..].find('\n').map(|j| i + j + 1))
    else {
        bail!(
            "{}: no root_key_file line to add pin_file after",
            cfg.display()
        );
    };
    let mut out = text;
    out.insert_str(at, &line);
    std::fs::write(cfg, out).with_context(|| cfg.display().to_string())?;
    Ok(())
}

pub(crate) fn run(dir: &DataDir, dev: bool, listen: &str, seal: &SealArgs) -> anyhow::Result<()> {
    let rng = SystemRng::default();
    let protection = seal.protection()?;
    // The data directory holds the database and keys: owner only.
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(&dir.data_dir)
        .with_context(|| dir.data_dir.display().to_string())?;
    let root = dir.data_dir.join("root.key");
    let cfg = dir.config_path();
    let cfg_existed = cfg.exists();
    let mut made = Vec::new();
    if protection != Protection::Plain {
        if root.exists() {
            bail!(
                "{} exists; seal an existing key file with `idvault keys seal` instead",
                root.display()
            );
        }
        keyfile::create(&root, &protection, seal.pin_file.as_deref(), &rng)?;
        made.push(root.clone());
    }
    if dev {
        made.extend(idvault_server::devinit::init_dev_sealed(
            &dir.data_dir,
            listen,
            &rng,
            seal.pin_file.as_deref(),
        )?);
    } else {
        if !root.exists() {
            keyfile::create(&root, &Protection::Plain, None, &rng)?;
            made.push(root);
        }
        if !cfg_existed {
            let text = idvault_server::devinit::production_config(listen);
            std::fs::write(&cfg, text)?;
            made.push(cfg.clone());
        }
    }
    if let Some(pin_file) = &seal.pin_file
        && !cfg_existed
    {
        record_pin_file(&cfg, pin_file)?;
    }
    if made.is_empty() {
        println!(
            "{}: nothing to do, everything exists",
            dir.data_dir.display()
        );
    }
    for p in made {
        println!("wrote {}", p.display());
    }
    if let Protection::Pkcs11(p) = &protection {
        println!(
            "root key sealed by PKCS#11 key '{}' on token '{}'; `serve` needs the PIN ({})",
            p.key_label,
            p.token_label,
            if seal.pin_file.is_some() {
                "pin_file in the config"
            } else {
                "IDVAULT_PKCS11_PIN"
            }
        );
    }
    Ok(())
}
