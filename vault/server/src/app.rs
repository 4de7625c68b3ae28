//! Start-up: from a validated [`Config`] to a ready [`Vault`] and TLS
//! configuration, with clear errors that say what to run when something
//! is missing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::SystemClock;
use crate::config::Config;
use crate::server::ServerOptions;
use crate::service::Vault;
use crate::store::Store;
use idvault_core::SystemRng;
use idvault_core::keys::KeyHierarchy;

/// Why the vault cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Required files are missing.
    #[error("missing {}: run `idvault init --dev --data-dir <DIR>` for a development set-up, or provide them and fix the paths in the config", .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    Missing(Vec<PathBuf>),
    /// Key file problem.
    #[error(transparent)]
    KeyFile(#[from] crate::keyfile::KeyFileError),
    /// TLS problem.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Storage problem.
    #[error("storage: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The policy set is invalid (each problem located).
    #[error("invalid policy set; the vault does not start:\n{}", crate::policy::report(.0))]
    Policies(Vec<idvault_policies::PolicyDiagnostic>),
    /// Indexing match domains failed.
    #[error("preparing blind matching: {0}")]
    Matching(#[from] crate::service::VaultError),
    /// Sealing the owners of subjects from before owner MACs failed.
    #[error("sealing the owners of older subjects: {0}")]
    SealOwners(crate::service::VaultError),
    /// An `idvault restore` did not finish.
    #[error(
        "{0} exists: an `idvault restore` did not finish, and the restored data may still hold \
         people deleted after the backup. Run `idvault restore` (without --from) to finish it"
    )]
    RestorePending(PathBuf),
    /// The database moved to a root key version this key file lacks.
    #[error(
        "the database was moved to root key version {floor} (`keys rewrap`), but this key file's \
         newest version is {current}: start with the current key file"
    )]
    KeysBehind {
        /// The database's key floor.
        floor: u32,
        /// This process's current version.
        current: u32,
    },
    /// A newer version built the match indexes under an index scheme this
    /// one does not know; rebuilding them down would undo its work (and,
    /// with replicas of both versions running, leave both forms).
    #[error(
        "match domain {domain} was indexed under index scheme {stored} by a newer idvault; this \
         version writes scheme {binary}: start the newer version (or delete the domain's \
         match_domains row to have this version rebuild it)"
    )]
    IndexSchemeAhead {
        /// The domain.
        domain: String,
        /// Its recorded scheme.
        stored: i64,
        /// This binary's.
        binary: i64,
    },
}

/// Everything the server needs.
#[derive(Debug)]
pub struct Loaded {
    /// The vault.
    pub vault: Arc<Vault>,
    /// TLS configuration.
    pub tls: Arc<rustls::ServerConfig>,
    /// Server limits.
    pub options: ServerOptions,
}

/// Lists configured files that do not exist.
pub fn missing_files(config: &Config) -> Vec<PathBuf> {
    let t = &config.file.tls;
    [
        &config.file.keys.root_key_file,
        &t.client_ca,
        &t.server_cert,
        &t.server_key,
    ]
    .into_iter()
    .chain(t.crls.iter())
    .map(|p| config.resolve(p))
    .filter(|p| !p.exists())
    .collect()
}

/// Opens the key hierarchy from the configured root key file.
pub fn open_keys(config: &Config) -> Result<KeyHierarchy, StartError> {
    let k = &config.file.keys;
    let pin_file = k.pin_file.as_ref().map(|p| config.resolve(p));
    let provider = crate::keyfile::load(&config.resolve(&k.root_key_file), pin_file.as_deref())?;
    Ok(KeyHierarchy::new(Box::new(provider)))
}

/// Opens the vault on its keys and store, without serving: the server
/// and the maintenance commands (`keys rewrap`, `keys retire`) share it.
/// Refused while an `idvault restore` is unfinished.
pub async fn open_vault(config: &Config, database_url: &str) -> Result<Vault, StartError> {
    let pending = config.base_dir.join(crate::backup::RESTORE_PENDING);
    if pending.exists() {
        return Err(StartError::RestorePending(pending));
    }
    open_vault_restoring(config, database_url).await
}

/// [`open_vault`] for `idvault restore` itself, which finishes what the
/// restore-pending marker stands for.
pub async fn open_vault_restoring(
    config: &Config,
    database_url: &str,
) -> Result<Vault, StartError> {
    let keys = open_keys(config)?;
    let policy_dir = config.file.policies.dir.as_ref().map(|d| config.resolve(d));
    let policies = crate::policy::engine(policy_dir.as_deref(), &config.registry)
        .map_err(StartError::Policies)?;
    let store = Store::connect(database_url).await?;
    let (floor, current) = (store.key_floor().await?, keys.current_version());
    if current < floor {
        return Err(StartError::KeysBehind { floor, current });
    }
    let binary = idvault_core::matching::INDEX_SCHEME;
    if let Some((domain, _, stored)) = store
        .match_domains()
        .await?
        .into_iter()
        .find(|(_, _, scheme)| *scheme > binary)
    {
        return Err(StartError::IndexSchemeAhead {
            domain,
            stored,
            binary,
        });
    }
    let vault = Vault::new(
        store,
        keys,
        config.registry.clone(),
        policies,
        Arc::new(SystemClock),
        Arc::new(SystemRng::default()),
    )
    .with_match_country_code(config.file.matching.default_country_code)
    .with_consent(config.file.consent.clone())
    .with_credentials(config.file.credentials.clone())
    .with_audit(config.file.audit.clone())
    .with_retention(config.file.retention.clone())
    .with_shared_shares(
        config.file.server.shared_calls_per_source,
        config.file.server.shared_requests_per_source,
    )
    .with_policy_dir(policy_dir)
    .with_shred_log(config.shred_log_path().map(crate::shredlog::ShredLog::new));
    vault.prepare_matching().await?;
    // Owners of subjects from before owner MACs (migration 0016): sealed
    // where their creation leaf vouches for them.
    match vault.seal_subject_owners().await {
        Ok((0, 0)) => {}
        Ok((sealed, 0)) => tracing::info!(subjects = sealed, "subject owners sealed"),
        Ok((sealed, left)) => tracing::warn!(
            sealed,
            left,
            "subjects without an owner MAC and without a CreateSubject audit leaf naming their \
             creator: nobody may update, delete or verify them or enroll a device for them"
        ),
        Err(e) => return Err(StartError::SealOwners(e)),
    }
    // Rows from before row MACs authorise nothing (migration 0010): say so
    // once, with a count (never their contents).
    match vault.store().unsealed_rows().await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            rows = n,
            "device, enrollment code, consent, link, rule or pairwise token rows carry no MAC \
             (written before row MACs, or inserted by hand): they authorise nothing until \
             enrolled, signed or set again; pairwise tokens of a database upgraded from before \
             token MACs are sealed by `idvault keys seal-upgraded-tokens`, run once right after \
             the upgrade (at any other time an unsealed token is tampering)"
        ),
        Err(e) => tracing::warn!(error = %e, "could not count rows without a MAC"),
    }
    Ok(vault)
}

/// Loads keys, TLS material and the store.
pub async fn load(config: &Config, database_url: &str) -> Result<Loaded, StartError> {
    let missing = missing_files(config);
    if !missing.is_empty() {
        return Err(StartError::Missing(missing));
    }
    let t = &config.file.tls;
    let ca = crate::tls::read_certs(&config.resolve(&t.client_ca))?;
    let chain = crate::tls::read_certs(&config.resolve(&t.server_cert))?;
    let key = crate::tls::read_key(&config.resolve(&t.server_key))?;
    let client_auth = crate::crl::ClientAuth::new(
        &ca,
        t.crls.iter().map(|p| config.resolve(p)).collect(),
        t.stale_crl,
        crate::tls::provider(),
    )?;
    let s = &config.file.server;
    let tls = crate::tls::server_config(&client_auth, chain, key, &s.trust_domain)?;
    let vault = open_vault(config, database_url).await?;
    // A wallet app's certificate is in every copy of the app: its
    // connections are counted per source address (crate::sources).
    client_auth.count_by_source(
        vault.registry().shared_identities(),
        s.shared_connections_per_source,
    );
    Ok(Loaded {
        vault: Arc::new(vault),
        tls,
        options: ServerOptions {
            trust_domain: s.trust_domain.clone(),
            max_message_bytes: s.max_message_bytes,
            request_timeout: Duration::from_secs(s.request_timeout_secs),
            stream_timeout: Duration::from_secs(s.stream_timeout_secs),
            handshake_timeout: Duration::from_secs(s.handshake_timeout_secs),
            handshakes_per_source: s.handshakes_per_source,
            client_auth,
            crl_poll: Duration::from_secs(t.crl_poll_seconds.clamp(1, 3600)),
            metrics_listen: config.file.metrics.listen,
        },
    })
}
