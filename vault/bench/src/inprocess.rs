//! A real vault on port 0, with the dev PKI, for the end-to-end benchmarks.

use idvault_server::config::{CONFIG_FILE, Config};

/// A fresh development data directory (root key, dev PKI, config) under
/// the system's temporary directory; the caller removes it.
///
/// Every simulated phone of a bench connects from 127.0.0.1, one host to
/// the vault, which counts a wallet app's connections, calls and requests
/// per host (`idvault_server::sources`): the shares are lifted to the
/// whole pools, so the benches measure the vault and not those shares.
pub fn dev_data_dir() -> Result<std::path::PathBuf, crate::BenchError> {
    use idvault_server::sources::{SHARED_CALLS, SHARED_CONNECTIONS, SHARED_IN_FLIGHT};
    let dir = std::env::temp_dir().join(format!("idvault-bench-{}", uuid::Uuid::new_v4()));
    idvault_server::devinit::init_dev(&dir, "127.0.0.1:0", &idvault_core::SystemRng::default())?;
    let path = dir.join(CONFIG_FILE);
    let dev = std::fs::read_to_string(&path)?;
    let text = dev.replacen(
        "[server]\n",
        &format!(
            "[server]\nshared_calls_per_source = {SHARED_CALLS}\n\
             shared_connections_per_source = {SHARED_CONNECTIONS}\n\
             shared_requests_per_source = {SHARED_IN_FLIGHT}\n"
        ),
        1,
    );
    if text == dev {
        return Err(std::io::Error::other(
            "the dev config has no [server] line to lift the wallet shares in",
        )
        .into());
    }
    std::fs::write(&path, text)?;
    Ok(dir)
}

/// A vault served on port 0 from a fresh development data directory, for
/// the end-to-end benchmarks. Removed again by [`InProcess::stop`].
#[derive(Debug)]
pub struct InProcess {
    dir: std::path::PathBuf,
    loaded: idvault_server::app::Loaded,
    server: idvault_server::server::RunningServer,
}

impl InProcess {
    /// Starts on `database_url`, or SQLite in the temporary directory.
    pub async fn start(database_url: Option<String>) -> Result<Self, crate::BenchError> {
        let dir = dev_data_dir()?;
        let started = async {
            let cfg = Config::load(&dir.join(CONFIG_FILE))?;
            let url = database_url.unwrap_or_else(|| cfg.database_url());
            let loaded = idvault_server::app::load(&cfg, &url).await?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let server = idvault_server::server::start(
                std::sync::Arc::clone(&loaded.vault),
                std::sync::Arc::clone(&loaded.tls),
                listener,
                loaded.options.clone(),
            )
            .await?;
            Ok::<_, crate::BenchError>((loaded, server))
        }
        .await;
        match started {
            Ok((loaded, server)) => Ok(Self {
                dir,
                loaded,
                server,
            }),
            Err(e) => {
                // The directory holds a root key and a CA key: never left
                // behind.
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// An mTLS channel as dev partner `name`.
    pub async fn channel(
        &self,
        name: &str,
    ) -> Result<tonic::transport::Channel, crate::BenchError> {
        let creds = idvault_client::PartnerCredentials::from_dir(&self.dir.join("tls"), name)?;
        Ok(idvault_client::connect(
            &format!("https://{}", self.server.addr),
            "localhost",
            &creds,
        )
        .await?)
    }

    /// The vault behind the server (for what a partner holds out of band:
    /// verifier keys).
    pub fn vault(&self) -> &std::sync::Arc<idvault_server::service::Vault> {
        &self.loaded.vault
    }

    /// The data directory (dev PKI under `tls/`).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The metrics endpoint's address (the dev config serves one).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.server.metrics_addr
    }

    /// The storage backend's name.
    pub fn backend(&self) -> &'static str {
        match self.loaded.vault.store().backend() {
            idvault_server::store::Backend::Sqlite => "SQLite",
            idvault_server::store::Backend::Postgres => "PostgreSQL",
        }
    }

    /// Stops the server and removes the directory (also when the stop
    /// fails).
    pub async fn stop(self) -> Result<(), crate::BenchError> {
        let stopped = self.server.shutdown().await;
        self.loaded.vault.store().close().await;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(stopped?)
    }
}
