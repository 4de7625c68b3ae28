//! The vault's use cases, one module per capability: [`subjects`],
//! [`tokens`], [`matching`], [`consent`], [`devices`], [`events`], and
//! [`audit`] verification.
//!
//! Every request runs through the one request path in [`pipeline`]:
//! identify the partner in the registry, ask the policy once (a decision
//! that lives in the request), validate input, do the crypto in the pure
//! core, then write the data and its audit record in one transaction. A
//! request refused at any step changes no data and still leaves an audit
//! record; if that record cannot be written the caller gets an error
//! (fail closed). A capability plugs into the pipeline; it never writes
//! its own refusal records.

use std::sync::Arc;

pub mod audit;
pub mod consent;
pub mod credentials;
pub mod devices;
pub mod events;
pub mod matching;
mod periodic;
pub(crate) mod pipeline;
pub mod receipts;
pub mod rekey;
pub mod restore;
pub mod retention;
mod state;
pub use state::MAX_EDGE_CALLS_PER_IDENTITY;
pub(crate) use state::Place;
pub mod status_lists;
pub mod streams;
pub mod subjects;
pub mod tokens;
pub mod transactions;

pub use audit::{AuditVerdict, verify_audit_log};
pub use streams::{StreamKind, StreamSlot};
pub use subjects::{ChainUpdate, ChainVerification};

use idvault_policies::{Action, PolicyEngine};

use crate::config::PartnerRegistry;
use crate::store::{AuditedTx, Store, StoreError};
use idvault_core::keys::{self, KeyError, KeyHierarchy};
use idvault_core::packet;
use idvault_core::records::SubjectRecord;
use idvault_core::secret::DataKey;
use idvault_core::subject::{FieldError, FieldName, FieldValue};
use idvault_core::{Clock, Rng};

/// Why a vault call failed. `Display` is safe to show a caller: it holds no
/// PII and no key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The certificate identity is not in the partner registry.
    #[error("partner identity is not registered")]
    Unregistered,
    /// The policy denied the action.
    #[error("{0} is not permitted for this partner")]
    Denied(Action),
    /// Input failed validation.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// No such subject for this partner.
    #[error("subject not found")]
    NotFound,
    /// The audit record could not be written, so nothing was done.
    #[error("audit log unavailable; request not performed")]
    AuditUnavailable(#[source] StoreError),
    /// The commit of the request's writes and audit record failed in a
    /// way that leaves its outcome unknown: it may have been performed.
    /// Not `UNAVAILABLE`, which clients retry on their own (a retried
    /// create would make a second subject).
    #[error(
        "the commit failed and its outcome is unknown: the request may have been performed; \
         check before retrying"
    )]
    OutcomeUnknown(#[source] StoreError),
    /// The store failed.
    #[error("storage unavailable")]
    Storage(#[source] StoreError),
    /// Stored data failed integrity checks.
    #[error("stored data failed an integrity check")]
    Integrity(&'static str),
    /// A key was missing or a primitive failed.
    #[error("internal key error")]
    Key(#[source] KeyError),
    /// The request's settings are not acceptable (message says why, no PII).
    #[error("{0}")]
    BadRequest(String),
    /// The partner may not use this token domain.
    #[error("this token domain is not allowed for this partner")]
    DomainDenied,
    /// A failure inside the vault that is not the caller's doing.
    #[error("internal error")]
    Internal(&'static str),
    /// The partner's query budget is spent (its sustained rate per second).
    #[error("match rate limit of {0} queries per second exceeded; retry later")]
    RateLimited(u32),
    /// A consent, enrollment or device call was refused (docs/consent.md).
    #[error("refused ({reason}): {0}", reason = .0.name())]
    Refused(idvault_core::consent::Refusal),
    /// The partner already has this many streams of this kind open.
    #[error("at most {1} {0} streams may be open per partner; close one and retry")]
    TooManyStreams(StreamKind, usize),
    /// The subject's chain would grow past its limit
    /// ([`idvault_core::packet::MAX_CHAIN_PACKETS`]).
    #[error("the subject's chain may hold at most {0} packets; this update would exceed it")]
    ChainFull(u64),
    /// A TokenizeLog stream rejected more records than it may report: the
    /// stream ends (the input is most likely not in the declared format).
    #[error("more than {0} rejected records {1}; check the stream's format and fields")]
    TooManyRejects(usize, &'static str),
    /// Admission control refused the request: the partner (for a wallet
    /// app's identity: the caller's address, or all wallets together) has
    /// this many requests in flight, or the writer queue is this long.
    #[error("the vault is busy ({0} requests in flight or queued); retry with back-off")]
    Overloaded(usize),
    /// The request's deadline passed before it could run; it did nothing.
    #[error("the request's deadline passed before it ran; nothing was done")]
    DeadlineExceeded,
    /// A one-at-a-time operation is already running.
    #[error("{0}")]
    Busy(&'static str),
    /// A digital-ID presentation was refused (the message names the check,
    /// never a claim value).
    #[error("presentation refused: {0}")]
    Credential(idvault_core::sdjwt::SdJwtError),
    /// A bound on outstanding work was reached (the message names it).
    #[error("{0}")]
    Limit(&'static str),
}

impl From<StoreError> for VaultError {
    fn from(e: StoreError) -> Self {
        match e {
            // A write that waited past its deadline (for the writer or in
            // the batch queue) did nothing; one refused by a full queue
            // was never queued.
            StoreError::Deadline => Self::DeadlineExceeded,
            StoreError::QueueFull(n) => Self::Overloaded(n),
            // A row that authorises something and fails its MAC: refused,
            // and audited as an integrity failure naming the row kind.
            StoreError::Forged(kind) => Self::Integrity(match kind {
                "device" => "device row MAC",
                "enrollment-code" => "enrollment code row MAC",
                "challenge" => "challenge row MAC",
                "consent" => "consent row MAC",
                "entity-link" => "entity link row MAC",
                "rule" => "rule row MAC",
                "pairwise-token" => "pairwise token row MAC",
                "match-signature" => "match signature row MAC",
                "match-model" => "match model row MAC",
                "subject" => "subject owner row MAC",
                "status-list" => "status list row MAC",
                "credential" => "credential row MAC",
                "transaction" => "transaction row MAC",
                _ => "row MAC key missing",
            }),
            e => Self::Storage(e),
        }
    }
}

impl From<KeyError> for VaultError {
    fn from(e: KeyError) -> Self {
        Self::Key(e)
    }
}

impl VaultError {
    /// Audit outcome word for this error.
    fn outcome(&self) -> &'static str {
        match self {
            Self::Unregistered | Self::Denied(_) | Self::DomainDenied => "denied",
            Self::Invalid(_)
            | Self::BadRequest(_)
            | Self::TooManyRejects(..)
            | Self::ChainFull(_) => "invalid",
            Self::NotFound => "not_found",
            Self::RateLimited(_)
            | Self::TooManyStreams(..)
            | Self::Overloaded(_)
            | Self::Limit(_) => "rate_limited",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::Refused(_) | Self::Credential(_) => "refused",
            _ => "error",
        }
    }
}

/// The authenticated caller: the SPIFFE id its certificate proved. What
/// the policy decided about its request lives in that request (see
/// [`pipeline`]), never here, so concurrent requests share nothing.
#[derive(Debug, Clone)]
pub struct Caller {
    /// SPIFFE id.
    pub spiffe_id: String,
    /// The request id its audit leaves carry (and its response returns).
    pub request_id: [u8; 16],
    /// When the caller stops waiting, if it said.
    pub deadline: Option<tokio::time::Instant>,
    /// The address its connection came from (`None`: an in-process
    /// caller). Identities many end users share are admitted per source
    /// address ([`crate::sources`]).
    pub remote: Option<std::net::IpAddr>,
}

impl Caller {
    /// A caller proven to hold `spiffe_id`, with a fresh request id (see
    /// [`new_request_id`]) and no deadline.
    pub fn new(spiffe_id: impl Into<String>) -> Self {
        Self::with_id(spiffe_id, new_request_id())
    }

    /// A caller proven to hold `spiffe_id`, with the request id the edge
    /// gave the call and no deadline.
    pub fn with_id(spiffe_id: impl Into<String>, request_id: [u8; 16]) -> Self {
        Self {
            spiffe_id: spiffe_id.into(),
            request_id,
            deadline: None,
            remote: None,
        }
    }

    /// The same caller, from `remote`.
    pub fn from_address(mut self, remote: std::net::IpAddr) -> Self {
        self.remote = Some(remote);
        self
    }

    /// The same caller with a deadline.
    pub fn with_deadline(mut self, deadline: Option<tokio::time::Instant>) -> Self {
        self.deadline = deadline;
        self
    }
}

/// A fresh request id: a version-7 UUID (RFC 9562), 48 bits of Unix time
/// in milliseconds, then 74 random bits.
///
/// Time-ordered because every audited request inserts its id into the
/// `audit_log_request` index: random ids put each one on a random page of
/// that index (a page written to the WAL per request), ordered ids put a
/// whole batch on its last page or two. The time it carries is when the
/// call arrived, which its caller knows and its audit leaf (`time_ms`)
/// records a moment later; the random bits keep ids unguessable, though
/// an id authorises nothing (an inclusion proof by request id is only for
/// the caller's own leaves). The system clock, not the vault's injected
/// one: the time only orders index entries and is never trusted.
pub(crate) fn new_request_id() -> [u8; 16] {
    crate::clock::time_ordered_id()
}

/// A value made once per root key version and kept while that version is
/// current (signing keys: each copy made and dropped would leave the
/// private key in freed memory).
pub(crate) type PerVersion<T> = std::sync::Mutex<Option<(u32, Arc<T>)>>;

/// The value in `slot` for version `v`, made by `make` if the slot holds
/// another version or none.
pub(crate) fn per_version<T>(
    slot: &PerVersion<T>,
    v: u32,
    make: impl FnOnce() -> Result<T, VaultError>,
) -> Result<Arc<T>, VaultError> {
    let mut cached = slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((version, k)) = cached.as_ref()
        && *version == v
    {
        return Ok(Arc::clone(k));
    }
    let k = Arc::new(make()?);
    *cached = Some((v, Arc::clone(&k)));
    Ok(k)
}

/// The vault.
#[derive(Debug)]
pub struct Vault {
    store: Store,
    keys: KeyHierarchy,
    registry: PartnerRegistry,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Rng>,
    xref_cache: state::XrefCache,
    matching: state::MatchState,
    admission: state::Admission,
    audit: crate::config::AuditSection,
    retention: crate::config::RetentionSection,
    /// The release signer of the current key version, made once: each
    /// ring key pair left behind would be a copy of the private key in
    /// freed memory.
    release_signer: PerVersion<idvault_core::consent::ReleaseSigner>,
    /// The digital-ID issuer key of the current version, made once (same
    /// reason).
    issuer_key: PerVersion<idvault_core::sdjwt::IssuerKey>,
    /// The issuer JWK Set for the current version.
    issuer_jwks: PerVersion<idvault_core::sdjwt::Jwks>,
    credentials: crate::config::CredentialsSection,
    /// The signed status list tokens (docs/digital-id.md, "Revocation").
    status_lists: status_lists::StatusLists,
    /// Woken when a transaction is answered, so waiting third parties of
    /// this process hear at once (other replicas' answers by polling).
    transactions_changed: tokio::sync::Notify,
    /// How many times [`Self::transactions_changed`] was woken.
    transaction_wakeups: std::sync::atomic::AtomicU64,
    consent: crate::config::ConsentSection,
    policies: std::sync::RwLock<Arc<PolicyEngine>>,
    policy_dir: Option<std::path::PathBuf>,
    /// Woken when commands are written, so open command streams of this
    /// process send them at once (other replicas' are found by polling).
    commands_ready: tokio::sync::Notify,
    /// Open long-lived streams per kind and partner name.
    pub(crate) open_streams:
        std::sync::Mutex<std::collections::HashMap<(StreamKind, String), usize>>,
    /// Chain verifications running per partner name
    /// ([`Vault::chain_check_slot`]).
    pub(crate) chain_checks:
        std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>,
    /// Rule suggestions reading histories at once
    /// ([`events::MAX_SUGGESTION_READS`]).
    pub(crate) suggestion_reads: tokio::sync::Semaphore,
    /// Set when the server shuts down: following streams end.
    pub(crate) streams_stop: tokio::sync::watch::Sender<bool>,
    /// Whether a rewrap runs in this process (`KeyService.Rewrap`).
    pub(crate) rewrap_running: Arc<std::sync::atomic::AtomicBool>,
    /// Prometheus metrics (served by [`crate::metrics_http`]).
    metrics: Arc<crate::metrics::Metrics>,
    /// Where each committed deletion is journaled, outside the database
    /// (see [`crate::shredlog`]); `None`: not journaled.
    shred_log: Option<crate::shredlog::ShredLog>,
    /// Use cases running on tasks of their own (deletions) that shutdown
    /// waits for, and the signal each gives when it ends.
    detached: Arc<(std::sync::atomic::AtomicUsize, tokio::sync::Notify)>,
}

/// A detached use case in flight (see [`Vault::detached_job`]).
#[derive(Debug)]
pub struct DetachedJob(Arc<(std::sync::atomic::AtomicUsize, tokio::sync::Notify)>);

impl Drop for DetachedJob {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.0.1.notify_waiters();
    }
}

impl Vault {
    /// Assembles a vault deciding with `policies` (see
    /// [`crate::policy::engine`]).
    pub fn new(
        store: Store,
        keys: KeyHierarchy,
        registry: PartnerRegistry,
        policies: PolicyEngine,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
    ) -> Self {
        let matching = state::MatchState::new(&registry, None);
        let admission = state::Admission::new(&registry, store.connections_per_partner());
        let mut store = store;
        // Without row keys the store refuses every row that authorises
        // something (fail closed); the current version always derives.
        match idvault_core::rowmac::RowMac::derive(&keys) {
            Ok(m) => store.set_row_mac(m),
            Err(e) => {
                tracing::error!(error = %e, "no row MAC key: devices, consents, links and rules are refused")
            }
        }
        let metrics = Arc::new(crate::metrics::Metrics::new(store.batch_sizes()));
        Self {
            rewrap_running: Arc::default(),
            metrics,
            shred_log: None,
            detached: Arc::default(),
            policies: std::sync::RwLock::new(Arc::new(policies)),
            policy_dir: None,
            store,
            keys,
            registry,
            clock,
            rng,
            xref_cache: state::XrefCache::default(),
            admission,
            audit: crate::config::AuditSection::default(),
            retention: crate::config::RetentionSection::default(),
            release_signer: std::sync::Mutex::default(),
            issuer_key: std::sync::Mutex::default(),
            issuer_jwks: std::sync::Mutex::default(),
            credentials: crate::config::CredentialsSection::default(),
            status_lists: status_lists::StatusLists::default(),
            transactions_changed: tokio::sync::Notify::new(),
            transaction_wakeups: std::sync::atomic::AtomicU64::new(0),
            matching,
            consent: crate::config::ConsentSection::default(),
            commands_ready: tokio::sync::Notify::new(),
            open_streams: std::sync::Mutex::default(),
            chain_checks: std::sync::Mutex::default(),
            suggestion_reads: tokio::sync::Semaphore::new(events::MAX_SUGGESTION_READS),
            streams_stop: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Sets the directory policies are reloaded from.
    #[must_use]
    pub fn with_policy_dir(mut self, dir: Option<std::path::PathBuf>) -> Self {
        self.policy_dir = dir;
        self
    }

    /// Journals every committed deletion to `log` (see
    /// [`crate::shredlog`]).
    #[must_use]
    pub fn with_shred_log(mut self, log: Option<crate::shredlog::ShredLog>) -> Self {
        self.shred_log = log;
        self
    }

    /// The deletion journal, when configured.
    pub fn shred_log(&self) -> Option<&crate::shredlog::ShredLog> {
        self.shred_log.as_ref()
    }

    /// Marks a use case that runs on a task of its own as in flight, until
    /// the returned guard drops: shutdown waits for it
    /// ([`Self::wait_detached`]).
    pub fn detached_job(&self) -> DetachedJob {
        self.detached
            .0
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        DetachedJob(Arc::clone(&self.detached))
    }

    /// Waits until no detached use case is in flight, at most `max`;
    /// returns how many were still running.
    pub async fn wait_detached(&self, max: std::time::Duration) -> usize {
        let (count, done) = &*self.detached;
        let waited = tokio::time::timeout(max, async {
            loop {
                let notified = done.notified();
                if count.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        })
        .await;
        match waited {
            Ok(()) => 0,
            Err(_) => count.load(std::sync::atomic::Ordering::SeqCst),
        }
    }

    /// The vault's metrics.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// Reads the database gauges of the metrics (outbox per registered
    /// partner, audit sequencing, pool and write queue).
    pub async fn database_gauges(&self) -> Result<crate::metrics::DatabaseGauges, VaultError> {
        let now_ms = self.now_millis();
        let store = self.store();
        let mut outbox = Vec::new();
        let rows = store.outbox_stats().await?;
        // Only registered partners become label values: a recipient
        // written into the table by hand is not one of them.
        for p in self.registry.partners() {
            let (depth, oldest) = rows
                .iter()
                .find(|(r, _, _)| *r == p.name)
                .map_or((0, None), |(_, d, o)| (*d, *o));
            let age = oldest.map_or(0.0, |t| {
                // Milliseconds to seconds, as a float gauge.
                #[allow(clippy::cast_precision_loss)]
                let secs = now_ms.saturating_sub(t).max(0) as f64 / 1000.0;
                secs
            });
            outbox.push((p.name.clone(), depth, age));
        }
        let latest = store.latest_checkpoint().await?;
        let (tree_size, checkpoint_age_secs) = latest.map_or((0, 0.0), |c| {
            #[allow(clippy::cast_precision_loss)]
            let age = now_ms.saturating_sub(c.time_ms).max(0) as f64 / 1000.0;
            (c.size, age)
        });
        let pool = store.pool_use();
        Ok(crate::metrics::DatabaseGauges {
            outbox,
            unsequenced_leaves: store.unsequenced_count().await?,
            tree_size,
            checkpoint_age_secs,
            pool_open: pool.0,
            pool_idle: pool.1,
            pool_max: pool.2,
            write_queue: store.write_queue_use(),
        })
    }

    /// The partner registry.
    pub fn registry(&self) -> &PartnerRegistry {
        &self.registry
    }

    /// The policy engine in force.
    pub fn policies(&self) -> Arc<PolicyEngine> {
        match self.policies.read() {
            Ok(p) => Arc::clone(&p),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Reloads the policy set from the configured directory (or the
    /// built-in set) and swaps it in atomically. On any error the set in
    /// force stays, and the errors are returned, located.
    pub fn reload_policies(&self) -> Result<usize, Vec<idvault_policies::PolicyDiagnostic>> {
        let engine = crate::policy::engine(self.policy_dir.as_deref(), &self.registry)?;
        let n = engine.policy_ids().len();
        match self.policies.write() {
            Ok(mut p) => *p = Arc::new(engine),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(engine),
        }
        Ok(n)
    }

    /// Sets the audit log's origin and checkpoint interval (`[audit]`).
    #[must_use]
    pub fn with_audit(mut self, audit: crate::config::AuditSection) -> Self {
        self.audit = audit;
        self
    }

    /// Calls and requests in flight the identities every phone shares
    /// may have from one host (`[server] shared_calls_per_source` and
    /// `shared_requests_per_source`, [`crate::sources`]; at least 1 each).
    #[must_use]
    pub fn with_shared_shares(mut self, calls: usize, requests: usize) -> Self {
        self.admission.set_shared_shares(calls, requests);
        self
    }

    /// Requests of the identities every phone shares in flight from
    /// `remote`'s host now (for tests and diagnostics).
    pub fn shared_requests_in_flight_from(&self, remote: std::net::IpAddr) -> usize {
        self.admission.shared_in_flight_from(remote)
    }

    /// Sets what the retention job keeps (`[retention]`).
    #[must_use]
    pub fn with_retention(mut self, retention: crate::config::RetentionSection) -> Self {
        self.retention = retention;
        self
    }

    /// The `[retention]` settings.
    pub(crate) fn retention_settings(&self) -> &crate::config::RetentionSection {
        &self.retention
    }

    /// The `[audit]` settings.
    pub fn audit_settings(&self) -> &crate::config::AuditSection {
        &self.audit
    }

    /// Sets the digital-ID settings (`[credentials]`).
    #[must_use]
    pub fn with_credentials(mut self, credentials: crate::config::CredentialsSection) -> Self {
        self.credentials = credentials;
        self
    }

    /// The `[credentials]` settings.
    pub(crate) fn credential_settings(&self) -> &crate::config::CredentialsSection {
        &self.credentials
    }

    /// Sets the consent lifetimes (`[consent]`).
    #[must_use]
    pub fn with_consent(mut self, consent: crate::config::ConsentSection) -> Self {
        self.consent = consent;
        self
    }

    /// Consent lifetimes.
    pub(crate) fn consent_settings(&self) -> &crate::config::ConsentSection {
        &self.consent
    }

    /// Sets the country calling code phone numbers without one are read in
    /// for blind matching (`[matching] default_country_code`).
    #[must_use]
    pub fn with_match_country_code(mut self, code: Option<u16>) -> Self {
        self.matching = state::MatchState::new(&self.registry, code);
        self
    }

    /// Blind-matching state.
    pub(crate) fn matching(&self) -> &state::MatchState {
        &self.matching
    }

    /// Notified whenever this process writes commands to the outbox.
    pub fn commands_ready(&self) -> &tokio::sync::Notify {
        &self.commands_ready
    }

    /// The cross-reference lookup cache.
    pub(crate) fn xref_cache(&self) -> &state::XrefCache {
        &self.xref_cache
    }

    /// The store (for operational commands and tests).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The key hierarchy.
    pub fn keys(&self) -> &KeyHierarchy {
        &self.keys
    }

    /// Current time from the vault's clock.
    pub fn now_millis(&self) -> i64 {
        self.clock.now_millis()
    }

    /// The vault's RNG.
    pub(crate) fn rng(&self) -> &dyn Rng {
        self.rng.as_ref()
    }

    /// Unwraps a subject row's data key: the one place a DEK is unwrapped.
    /// A DEK that does not unwrap is an integrity failure of the row.
    pub(crate) fn subject_dek(&self, row: &SubjectRecord) -> Result<DataKey, VaultError> {
        let kek = self.keys.kek(row.wrapped_dek.kek_version)?;
        keys::unwrap_dek(&kek, &row.id, &row.wrapped_dek)
            .map_err(|_| VaultError::Integrity("data key unwrap"))
    }

    /// The newest value of each of a subject's fields, decrypted inside
    /// `tx` (the values wipe themselves when dropped). Reads the newest
    /// packet of each field only (see `AuditedTx::newest_packets`).
    pub(crate) async fn newest_values(
        &self,
        tx: &mut AuditedTx,
        row: &SubjectRecord,
    ) -> Result<Vec<(FieldName, FieldValue)>, VaultError> {
        let dek = self.subject_dek(row)?;
        let stored = tx.newest_packets(&row.id, row.head.seq).await?;
        let values = packet::newest_values(&row.id, &dek, stored.iter().map(|(_, b)| b.as_slice()))
            .map_err(|_| VaultError::Integrity("packet open"))?;
        Ok(values.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::new_request_id;
    use idvault_core::Clock;

    /// Version 7, RFC 9562 variant, ordered by time, and distinct within
    /// one millisecond (the random bits).
    #[test]
    fn request_ids_are_time_ordered_version_7_uuids() {
        let a = uuid::Uuid::from_bytes(new_request_id());
        assert_eq!(a.get_version(), Some(uuid::Version::SortRand));
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
        let burst: std::collections::HashSet<[u8; 16]> =
            (0..1000).map(|_| new_request_id()).collect();
        assert_eq!(burst.len(), 1000);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = uuid::Uuid::from_bytes(new_request_id());
        assert!(a < b, "{a} then {b}");
        let (secs, _) = a.get_timestamp().expect("a v7 timestamp").to_unix();
        let now = crate::clock::SystemClock.now_millis() / 1000;
        assert!(
            now.abs_diff(i64::try_from(secs).expect("secs")) < 60,
            "{secs} vs {now}"
        );
    }
}
