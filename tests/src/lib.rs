//! Test support: a real idvault server on port 0 with real mTLS, over
//! SQLite or a fresh PostgreSQL database, and partner clients for it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![allow(missing_docs, unreachable_pub, missing_debug_implementations)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use idvault_core::SystemRng;
use idvault_proto::v1::subject_service_client::SubjectServiceClient;
use idvault_server::config::Config;
use idvault_server::devinit::{ClientSpec, DevCa, Issued};
use idvault_server::server::RunningServer;
use idvault_server::service::Vault;
use sqlx::AnyPool;
use tonic::transport::Channel;

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Admin URL of the PostgreSQL server used for tests.
pub fn postgres_admin_url() -> String {
    std::env::var("IDVAULT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Whether PostgreSQL answers; the error says why not.
pub async fn postgres_reachable() -> Result<(), String> {
    sqlx::any::install_default_drivers();
    let url = postgres_admin_url();
    let fut = sqlx::AnyPool::connect(&url);
    match tokio::time::timeout(Duration::from_secs(5), fut).await {
        Ok(Ok(p)) => {
            p.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err(format!("{url}: {e}")),
        Err(_) => Err(format!("{url}: timed out")),
    }
}

tokio::task_local! {
    /// The PostgreSQL databases the running test made and has not dropped
    /// yet (set by [`run_test`]).
    static TEST_DATABASES: Arc<std::sync::Mutex<Vec<String>>>;
}

/// Runs one test to its end on a runtime of its own, then drops every
/// PostgreSQL database it made and did not drop itself. A failed
/// assertion panics past the test's own clean-up; without this, each
/// failure left a database behind on the test server.
pub fn run_test(test: impl std::future::Future<Output = anyhow::Result<()>>) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let made = Arc::new(std::sync::Mutex::new(Vec::new()));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(TEST_DATABASES.scope(Arc::clone(&made), test))
    }));
    let left: Vec<String> = std::mem::take(&mut *made.lock().unwrap_or_else(|p| p.into_inner()));
    let cleanup = rt.block_on(async {
        for name in &left {
            drop_postgres_database(name).await?;
        }
        anyhow::Ok(())
    });
    match outcome {
        Err(panic) => std::panic::resume_unwind(panic),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Ok(Ok(())) => cleanup.map_err(|e| format!("dropping the test's databases: {e:#}")),
    }
}

/// A fresh PostgreSQL database named `prefix_<random hex>`: its URL and
/// its name (for [`drop_postgres_database`]). Under [`run_test`] it is
/// dropped after the test if the test does not drop it.
pub async fn create_postgres_database(prefix: &str) -> anyhow::Result<(String, String)> {
    let admin = postgres_admin_url();
    let name = format!("{prefix}_{}", hex::encode(uuid::Uuid::new_v4().as_bytes()));
    sqlx::any::install_default_drivers();
    let pool = AnyPool::connect(&admin).await.with_context(|| {
        format!("PostgreSQL is required for this test but {admin} is unreachable")
    })?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await?;
    pool.close().await;
    // Outside run_test (another harness) nobody collects it: the caller
    // drops it.
    let _ = TEST_DATABASES.try_with(|made| {
        made.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.clone());
    });
    Ok((with_database(&admin, &name), name))
}

/// Drops a database [`create_postgres_database`] made, with whoever is
/// still connected to it.
pub async fn drop_postgres_database(name: &str) -> anyhow::Result<()> {
    let pool = AnyPool::connect(&postgres_admin_url()).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&pool)
    .await?;
    pool.close().await;
    let _ = TEST_DATABASES.try_with(|made| {
        made.lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|n| n != name);
    });
    Ok(())
}

/// `url` naming database `db` instead of its own.
fn with_database(url: &str, db: &str) -> String {
    match url.rfind('/') {
        Some(i) if i > url.find("://").map_or(0, |s| s + 2) => format!("{}/{db}", &url[..i]),
        _ => format!("{url}/{db}"),
    }
}

/// A running vault with its data directory and CA.
pub struct TestVault {
    pub backend: Backend,
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub database_url: String,
    pub ca: DevCa,
    pub vault: Arc<Vault>,
    pub addr: std::net::SocketAddr,
    /// The metrics endpoint (the dev config serves one on port 0).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The server's client verifier (CRLs) and open connections.
    pub client_auth: Arc<idvault_server::crl::ClientAuth>,
    server: Option<RunningServer>,
    pg_db: Option<String>,
}

impl TestVault {
    /// Starts a vault with development defaults.
    pub async fn start(backend: Backend) -> anyhow::Result<Self> {
        Self::start_with(backend, |_, _| Ok(String::new())).await
    }

    /// Starts a vault; `extra` may write files into the data dir and
    /// returns TOML lines to splice into `[tls]` (e.g. `crls = [...]`).
    pub async fn start_with(
        backend: Backend,
        extra: impl FnOnce(&Path, &DevCa) -> anyhow::Result<String>,
    ) -> anyhow::Result<Self> {
        Self::start_edited(backend, extra, |text| text).await
    }

    /// Starts a vault whose config text is first passed through `edit`
    /// (e.g. to change a partner's settings).
    pub async fn start_config(
        backend: Backend,
        edit: impl FnOnce(String) -> String,
    ) -> anyhow::Result<Self> {
        Self::start_edited(backend, |_, _| Ok(String::new()), edit).await
    }

    /// Starts a vault where dev partner `partner` also holds `roles`.
    /// Panics if the dev config no longer has the shape this edits, so a
    /// test never runs silently without the roles it asked for.
    pub async fn start_with_roles(
        backend: Backend,
        partner: &str,
        roles: &[&str],
    ) -> anyhow::Result<Self> {
        let anchor = format!(
            "spiffe_id = \"spiffe://{}/partner/{partner}\"\nroles = [",
            idvault_server::devinit::DEV_TRUST_DOMAIN
        );
        let added: String = roles.iter().map(|r| format!("\"{r}\", ")).collect();
        Self::start_config(backend, |text| {
            assert!(
                text.contains(&anchor),
                "no roles line for {partner} in the dev config"
            );
            text.replace(&anchor, &format!("{anchor}{added}"))
        })
        .await
    }

    async fn start_edited(
        backend: Backend,
        extra: impl FnOnce(&Path, &DevCa) -> anyhow::Result<String>,
        edit: impl FnOnce(String) -> String,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        idvault_server::devinit::init_dev(dir.path(), "127.0.0.1:0", &SystemRng::default())?;
        let ca = DevCa::load(
            &std::fs::read_to_string(dir.path().join("tls/ca.crt"))?,
            &std::fs::read_to_string(dir.path().join("tls/ca.key"))?,
        )?;
        let tls_lines = extra(dir.path(), &ca)?;
        let cfg_path = dir.path().join(idvault_server::config::CONFIG_FILE);
        let mut text = std::fs::read_to_string(&cfg_path)?;
        if !tls_lines.is_empty() {
            text = text.replace("crls = []\n", &format!("{tls_lines}\n"));
        }
        std::fs::write(&cfg_path, edit(text))?;
        let config = Config::load(&cfg_path)?;
        let (database_url, pg_db) = match backend {
            Backend::Sqlite => (config.database_url(), None),
            Backend::Postgres => {
                let (url, name) = create_postgres_database("idvault_test").await?;
                (url, Some(name))
            }
        };
        let (vault, server, client_auth) = boot(&config, &database_url).await?;
        Ok(Self {
            client_auth,
            backend,
            dir,
            config,
            database_url,
            ca,
            vault,
            addr: server.addr,
            metrics_addr: server.metrics_addr,
            server: Some(server),
            pg_db,
        })
    }

    /// Stops the server and starts a new one on the same data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(s) = self.server.take() {
            s.shutdown().await?;
        }
        self.vault.store().close().await;
        let (vault, server, client_auth) = boot(&self.config, &self.database_url).await?;
        self.vault = vault;
        self.client_auth = client_auth;
        self.addr = server.addr;
        self.metrics_addr = server.metrics_addr;
        self.server = Some(server);
        Ok(())
    }

    /// Rotates the root key (a new version, no token domain moved) and
    /// restarts on it; returns the new version.
    pub async fn rotate_root_key(&mut self) -> anyhow::Result<u32> {
        let (v, _) = idvault_server::keyfile::rotate(
            &self.dir.path().join("root.key"),
            None,
            &SystemRng::default(),
            &[],
        )?;
        self.restart().await?;
        Ok(v)
    }

    /// Rewrites the config file through `edit` and reloads it; takes
    /// effect at the next [`TestVault::restart`].
    pub fn edit_config(&mut self, edit: impl FnOnce(String) -> String) -> anyhow::Result<()> {
        let path = self.dir.path().join(idvault_server::config::CONFIG_FILE);
        std::fs::write(&path, edit(std::fs::read_to_string(&path)?))?;
        self.config = Config::load(&path)?;
        Ok(())
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// A direct connection to the vault's database (for tampering).
    pub fn db(&self) -> &AnyPool {
        self.vault.store().pool()
    }

    /// An mTLS channel as a dev partner (`partner-a`, `partner-b`).
    pub async fn channel(&self, partner: &str) -> anyhow::Result<Channel> {
        let creds = idvault_client::PartnerCredentials::from_dir(&self.tls_dir(), partner)?;
        Ok(idvault_client::connect(&self.url(), "localhost", &creds).await?)
    }

    /// An mTLS channel as a dev partner from the local address `local`
    /// (any of 127.0.0.0/8 reaches the vault on loopback).
    pub async fn channel_from(
        &self,
        partner: &str,
        local: std::net::IpAddr,
    ) -> anyhow::Result<Channel> {
        let creds = idvault_client::PartnerCredentials::from_dir(&self.tls_dir(), partner)?;
        Ok(idvault_client::connect_from(&self.url(), "localhost", &creds, Some(local)).await?)
    }

    /// The refusals a coalesced `Refused` record's `detail` counts (its
    /// `count=N`), if it has a count.
    pub fn coalesced_count(detail: &str) -> Option<u64> {
        detail
            .split_once("count=")?
            .1
            .split(' ')
            .next()?
            .parse()
            .ok()
    }

    /// Starts a second vault replica on the same data and database (for
    /// PostgreSQL: two vault processes sharing one database); it serves
    /// until the returned server is shut down.
    pub async fn replica(&self) -> anyhow::Result<(Arc<Vault>, RunningServer)> {
        let (vault, server, _) = boot(&self.config, &self.database_url).await?;
        Ok((vault, server))
    }

    /// An mTLS channel as a dev partner to the server at `addr` (a
    /// replica).
    pub async fn channel_at(
        &self,
        addr: std::net::SocketAddr,
        partner: &str,
    ) -> anyhow::Result<Channel> {
        let creds = idvault_client::PartnerCredentials::from_dir(&self.tls_dir(), partner)?;
        Ok(idvault_client::connect(&format!("https://{addr}"), "localhost", &creds).await?)
    }

    /// An mTLS channel with an arbitrary client certificate.
    pub async fn channel_with(&self, issued: &Issued) -> anyhow::Result<Channel> {
        let creds = idvault_client::PartnerCredentials {
            ca_pem: self.ca.cert_pem.clone().into_bytes(),
            cert_pem: issued.cert_pem.clone().into_bytes(),
            key_pem: zeroize::Zeroizing::new(issued.key_pem.as_bytes().to_vec()),
        };
        Ok(idvault_client::connect(&self.url(), "localhost", &creds).await?)
    }

    pub async fn subjects(&self, partner: &str) -> anyhow::Result<SubjectServiceClient<Channel>> {
        Ok(SubjectServiceClient::new(self.channel(partner).await?))
    }

    /// Issues a client certificate from this vault's CA.
    pub fn issue(&self, spec: &ClientSpec) -> Issued {
        self.ca.issue_client(spec, &SystemRng::default()).unwrap()
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(self.db())
            .await
            .unwrap()
    }

    /// Waits (up to 20 s) until the sequencer has put every leaf written so
    /// far into a signed checkpoint.
    pub async fn checkpointed(&self) -> anyhow::Result<()> {
        for _ in 0..200 {
            if self
                .count("SELECT count(*) FROM audit_log WHERE idx IS NULL")
                .await
                == 0
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("audit leaves still not in a checkpoint after 20 s")
    }

    /// Waits for the checkpoint, then verifies the whole audit log with
    /// the vault's keys (signatures and MACs).
    pub async fn verify_audit(&self) -> anyhow::Result<idvault_server::service::AuditVerdict> {
        self.checkpointed().await?;
        Ok(self.vault.verify_own_audit_log().await?)
    }

    /// `(action, outcome, detail)` of the newest audit record.
    pub async fn last_audit(&self) -> (String, String, String) {
        sqlx::query_as("SELECT action, outcome, detail FROM audit_log ORDER BY id DESC LIMIT 1")
            .fetch_one(self.db())
            .await
            .unwrap()
    }

    /// Stops the server and drops the PostgreSQL database.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.server.take() {
            s.shutdown().await?;
        }
        self.vault.store().close().await;
        if let Some(db) = self.pg_db.take() {
            drop_postgres_database(&db).await?;
        }
        Ok(())
    }
}

/// Loads the vault and serves it on a fresh port-0 listener.
async fn boot(
    config: &Config,
    database_url: &str,
) -> anyhow::Result<(
    Arc<Vault>,
    RunningServer,
    Arc<idvault_server::crl::ClientAuth>,
)> {
    let loaded = idvault_server::app::load(config, database_url).await?;
    let client_auth = Arc::clone(&loaded.options.client_auth);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = idvault_server::server::start(
        Arc::clone(&loaded.vault),
        loaded.tls,
        listener,
        loaded.options,
    )
    .await?;
    Ok((loaded.vault, server, client_auth))
}

pub use idvault_client;
pub use idvault_core;
pub use idvault_proto;
pub use idvault_server;
pub use idvault_tokenizer;
