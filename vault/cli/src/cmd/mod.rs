//! One module per command group of the `idvault` binary, and the
//! arguments they share (data directory, how to reach the vault).

pub(crate) mod audit;
pub(crate) mod backup;
pub(crate) mod bench;
pub(crate) mod bridge;
pub(crate) mod demo;
pub(crate) mod device;
pub(crate) mod init;
pub(crate) mod issuer;
pub(crate) mod keys;
pub(crate) mod manifest;
pub(crate) mod matching;
pub(crate) mod partner;
pub(crate) mod policy;
pub(crate) mod serve;
pub(crate) mod tokenize;
pub(crate) mod tokens;

use std::path::{Path, PathBuf};

use anyhow::Context;

use anyhow::bail;
use clap::Args;
use idvault_server::config::{CONFIG_FILE, Config};

#[derive(Args, Debug, Clone)]
pub(crate) struct DataDir {
    /// Data directory holding idvault.toml, root.key, tls/ and the SQLite database.
    #[arg(long, default_value = "./idvault-data", env = "IDVAULT_DATA_DIR")]
    pub(crate) data_dir: PathBuf,
    /// Config file (default: DATA_DIR/idvault.toml).
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
}

impl DataDir {
    pub(crate) fn config_path(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(|| self.data_dir.join(CONFIG_FILE))
    }
    pub(crate) fn load(&self) -> anyhow::Result<Config> {
        let p = self.config_path();
        if !p.exists() {
            bail!(
                "{} not found: run `idvault init --dev --data-dir {}` (development) or `idvault init --data-dir {}`",
                p.display(),
                self.data_dir.display(),
                self.data_dir.display()
            );
        }
        Ok(Config::load(&p)?)
    }
}

/// How a partner command reaches the vault.
#[derive(Args, Debug)]
pub(crate) struct ConnectArgs {
    #[command(flatten)]
    pub(crate) dir: DataDir,
    /// Partner whose certificate to use (DATA_DIR/tls/NAME.crt and .key).
    #[arg(long, default_value = "partner-a")]
    pub(crate) name: String,
    /// Vault URL.
    #[arg(long, default_value = "https://127.0.0.1:50051")]
    pub(crate) server: String,
    /// Name to verify in the server certificate.
    #[arg(long, default_value = "localhost")]
    pub(crate) server_name: String,
}

impl ConnectArgs {
    pub(crate) async fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        let creds = idvault_client::PartnerCredentials::from_dir(
            &self.dir.data_dir.join("tls"),
            &self.name,
        )?;
        Ok(idvault_client::connect(&self.server, &self.server_name, &creds).await?)
    }
}

/// A gRPC refusal is an answer, not a crash: show code and message only.
pub(crate) fn plain_status(e: anyhow::Error) -> anyhow::Error {
    match e.downcast::<tonic::Status>() {
        Ok(s) => anyhow::anyhow!("{:?}: {}", s.code(), s.message()),
        Err(e) => e,
    }
}

/// Creates `path` with mode 0600 (never overwriting) and writes `text`.
pub(crate) fn write_secret_file(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

pub(crate) fn parse_field(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .ok_or_else(|| "expected NAME=VALUE".to_owned())
}

pub(crate) fn read_pem(path: &Path) -> anyhow::Result<zeroize::Zeroizing<String>> {
    Ok(zeroize::Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
    ))
}
