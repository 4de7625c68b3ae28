//! The vault's use cases: authorize in the domain, run the pure core,
//! write through the store, audit every outcome.
//!
//! Order of work for every call: identify the partner in the registry,
//! ask the policy, validate input, do the crypto, then write the data and
//! its audit record in one transaction. A request refused at any step
//! changes no data and still leaves an audit record; if that record cannot
//! be written the caller gets an error (fail closed).

use std::sync::Arc;

pub mod consent;
pub mod events;
pub mod matching;
pub mod tokens;

use idvault_policies::{Action, PolicyEngine, RequestContext, Resource};

use crate::config::{Partner, PartnerRegistry};
use crate::store::{AuditedTx, Store, StoreError, SubjectRow};
use idvault_core::audit::{self, AuditEvent};
use idvault_core::keys::{self, KeyError, KeyHierarchy};
use idvault_core::packet::{self, BreakReason, ChainHead, ChainReport};
use idvault_core::subject::{FieldError, FieldName, FieldValue, SubjectId, validate_fields};
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
    /// The partner already has this many command streams open.
    #[error("at most {0} command streams may be open per partner; close one and retry")]
    TooManyStreams(usize),
}

impl From<StoreError> for VaultError {
    fn from(e: StoreError) -> Self {
        Self::Storage(e)
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
            Self::Invalid(_) | Self::BadRequest(_) => "invalid",
            Self::NotFound => "not_found",
            Self::RateLimited(_) | Self::TooManyStreams(_) => "rate_limited",
            Self::Refused(_) => "refused",
            _ => "error",
        }
    }
}

/// The authenticated caller: the SPIFFE id its certificate proved, and
/// the policies that decided its request (recorded in its audit records).
/// A clone starts with its own copy of the decision, so concurrent
/// requests of one caller never share it.
#[derive(Debug)]
pub struct Caller {
    /// SPIFFE id.
    pub spiffe_id: String,
    decided_by: Arc<std::sync::Mutex<Option<String>>>,
}

impl Clone for Caller {
    fn clone(&self) -> Self {
        Self {
            spiffe_id: self.spiffe_id.clone(),
            decided_by: Arc::new(std::sync::Mutex::new(self.decision_text())),
        }
    }
}

impl Caller {
    /// A caller proven to hold `spiffe_id`.
    pub fn new(spiffe_id: impl Into<String>) -> Self {
        Self {
            spiffe_id: spiffe_id.into(),
            decided_by: Arc::default(),
        }
    }

    /// Records the decision's policy ids for the request's audit records.
    pub(crate) fn record_decision(&self, text: String) {
        if let Ok(mut d) = self.decided_by.lock() {
            *d = Some(text);
        }
    }

    fn decision_text(&self) -> Option<String> {
        self.decided_by.lock().ok().and_then(|d| d.clone())
    }
}

/// Result of a create or update.
#[derive(Debug, Clone)]
pub struct ChainUpdate {
    /// The subject.
    pub subject: SubjectId,
    /// The new head.
    pub head: ChainHead,
    /// The calling partner's pairwise token (set by create).
    pub pairwise_token: Option<String>,
}

/// Result of a chain verification.
#[derive(Debug, Clone)]
pub struct ChainVerification {
    /// Stored head.
    pub head: ChainHead,
    /// What verification found.
    pub report: ChainReport,
}

/// The vault.
#[derive(Debug)]
pub struct Vault {
    store: Store,
    keys: KeyHierarchy,
    registry: PartnerRegistry,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Rng>,
    xref_cache: crate::service::tokens::log::XrefCache,
    matching: crate::service::matching::MatchState,
    consent: crate::config::ConsentSection,
    policies: std::sync::RwLock<Arc<PolicyEngine>>,
    policy_dir: Option<std::path::PathBuf>,
    /// Woken when commands are written, so open command streams of this
    /// process send them at once (other replicas' are found by polling).
    commands_ready: tokio::sync::Notify,
    /// Open command streams per partner name.
    pub(crate) command_streams: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// Set when the server shuts down: following streams end.
    pub(crate) streams_stop: tokio::sync::watch::Sender<bool>,
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
        let matching = crate::service::matching::MatchState::new(&registry, None);
        Self {
            policies: std::sync::RwLock::new(Arc::new(policies)),
            policy_dir: None,
            store,
            keys,
            registry,
            clock,
            rng,
            xref_cache: crate::service::tokens::log::XrefCache::default(),
            matching,
            consent: crate::config::ConsentSection::default(),
            commands_ready: tokio::sync::Notify::new(),
            command_streams: std::sync::Mutex::default(),
            streams_stop: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Sets the directory policies are reloaded from.
    #[must_use]
    pub fn with_policy_dir(mut self, dir: Option<std::path::PathBuf>) -> Self {
        self.policy_dir = dir;
        self
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

    /// Asks the policies whether `partner` may do `action` on `resource`
    /// in `ctx`, and records the deciding policies on `caller`.
    pub(crate) fn decide(
        &self,
        caller: &Caller,
        partner: &Partner,
        action: Action,
        resource: Resource<'_>,
        ctx: RequestContext<'_>,
    ) -> bool {
        let ctx = RequestContext {
            now: self.now_millis().div_euclid(1000),
            ..ctx
        };
        let d = self
            .policies()
            .decide(&partner.name, action, resource, &ctx);
        caller.record_decision(d.audit_text());
        d.allowed
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
        self.matching = crate::service::matching::MatchState::new(&self.registry, code);
        self
    }

    /// Blind-matching state.
    pub(crate) fn matching(&self) -> &crate::service::matching::MatchState {
        &self.matching
    }

    /// Notified whenever this process writes commands to the outbox.
    pub fn commands_ready(&self) -> &tokio::sync::Notify {
        &self.commands_ready
    }

    /// The cross-reference lookup cache.
    pub(crate) fn xref_cache(&self) -> &crate::service::tokens::log::XrefCache {
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
    pub(crate) fn now_millis(&self) -> i64 {
        self.clock.now_millis()
    }

    /// The vault's RNG.
    pub(crate) fn rng(&self) -> &dyn Rng {
        self.rng.as_ref()
    }

    /// Commits `tx` with an `ok` audit record for a call without a subject.
    pub(crate) async fn commit_with(
        &self,
        tx: AuditedTx,
        caller: &Caller,
        action: Action,
        detail: String,
    ) -> Result<(), VaultError> {
        self.commit(tx, self.event(caller, action, None, "ok", detail))
            .await
    }

    /// Commits `tx` with an `ok` audit record about `subject`.
    pub(crate) async fn commit_event(
        &self,
        tx: AuditedTx,
        caller: &Caller,
        action: Action,
        subject: Option<&SubjectId>,
        detail: String,
    ) -> Result<(), VaultError> {
        self.commit(tx, self.event(caller, action, subject, "ok", detail))
            .await
    }

    fn event(
        &self,
        caller: &Caller,
        action: Action,
        subject: Option<&SubjectId>,
        outcome: &str,
        detail: String,
    ) -> AuditEvent {
        // Every decision is audited with the policies that made it.
        let detail = match caller.decision_text() {
            Some(d) if detail.is_empty() => d,
            Some(d) => format!("{detail} {d}"),
            None => detail,
        };
        AuditEvent {
            time_ms: self.clock.now_millis(),
            actor: caller.spiffe_id.clone(),
            action: action.name().to_owned(),
            subject: subject.map(ToString::to_string),
            outcome: outcome.to_owned(),
            detail,
        }
    }

    /// Commits `tx` with its audit record.
    async fn commit(&self, tx: AuditedTx, event: AuditEvent) -> Result<(), VaultError> {
        let key = self.keys.audit_key(self.keys.current_version())?;
        let (seq, prev) = tx.audit_position();
        let record = audit::chain(seq, prev, event, &key);
        tx.commit(&record)
            .await
            .map_err(VaultError::AuditUnavailable)
    }

    /// Records a refused or failed call in its own transaction and returns
    /// the error; if even that fails, the caller learns the audit is down.
    pub(crate) async fn refuse<T>(
        &self,
        caller: &Caller,
        action: Action,
        subject: Option<&SubjectId>,
        err: VaultError,
    ) -> Result<T, VaultError> {
        let detail = match &err {
            VaultError::Denied(_)
            | VaultError::DomainDenied
            | VaultError::Unregistered
            | VaultError::Invalid(_)
            | VaultError::NotFound
            | VaultError::RateLimited(_)
            | VaultError::TooManyStreams(_) => err.to_string(),
            // Some of these messages quote what the caller sent (an unknown
            // field path, a column name): keep caller text out of the log.
            VaultError::BadRequest(_) => "bad request".to_owned(),
            VaultError::Refused(r) => r.name().to_owned(),
            VaultError::Integrity(what) => format!("integrity: {what}"),
            _ => "internal".to_owned(),
        };
        let ev = self.event(caller, action, subject, err.outcome(), detail);
        let tx = match self.store.begin_audited().await {
            Ok(tx) => tx,
            Err(e) => return Err(VaultError::AuditUnavailable(e)),
        };
        self.commit(tx, ev).await?;
        Err(err)
    }

    /// Registry lookup plus policy decision (default deny).
    pub(crate) async fn authorize(
        &self,
        caller: &Caller,
        action: Action,
    ) -> Result<&Partner, VaultError> {
        let Some(partner) = self.registry.by_spiffe_id(&caller.spiffe_id) else {
            caller.record_decision("policy=default-deny".into());
            return self
                .refuse(caller, action, None, VaultError::Unregistered)
                .await;
        };
        if self.decide(
            caller,
            partner,
            action,
            Resource::Vault,
            RequestContext::default(),
        ) {
            Ok(partner)
        } else {
            self.refuse(caller, action, None, VaultError::Denied(action))
                .await
        }
    }

    /// The decision on one resource, after the call's gate
    /// ([`Self::authorize`]): the subject it is about, or the token domain,
    /// with the catalogue field names it touches, so operator policies can
    /// forbid a subject (a legal hold), a domain or a field. With the
    /// shipped policies it decides as the gate did. Refusals are audited.
    pub(crate) async fn authorize_on(
        &self,
        caller: &Caller,
        partner: &Partner,
        action: Action,
        resource: Resource<'_>,
        fields: &[&str],
    ) -> Result<(), VaultError> {
        let ctx = RequestContext {
            fields,
            ..RequestContext::default()
        };
        if self.decide(caller, partner, action, resource, ctx) {
            return Ok(());
        }
        let subject = match resource {
            Resource::Subject(s) => SubjectId::parse(s).ok(),
            _ => None,
        };
        self.refuse(caller, action, subject.as_ref(), VaultError::Denied(action))
            .await
    }

    /// [`Self::authorize_on`] for a subject.
    pub(crate) async fn authorize_subject(
        &self,
        caller: &Caller,
        partner: &Partner,
        action: Action,
        id: &SubjectId,
        fields: &[(FieldName, FieldValue)],
    ) -> Result<(), VaultError> {
        let names: Vec<&str> = fields.iter().map(|(f, _)| f.as_str()).collect();
        let id = id.to_string();
        self.authorize_on(caller, partner, action, Resource::Subject(&id), &names)
            .await
    }

    /// Loads a subject the partner created, inside `tx`.
    async fn owned_subject(
        &self,
        tx: &mut AuditedTx,
        partner: &Partner,
        id: &SubjectId,
    ) -> Result<SubjectRow, VaultError> {
        match tx.subject(id).await? {
            // Another partner's subject is reported as absent: no existence oracle.
            Some(row) if row.created_by == partner.name => Ok(row),
            _ => Err(VaultError::NotFound),
        }
    }

    /// Audits a failure that happened after authorisation and returns it.
    /// A failed audit append is returned as is (there is nothing to record
    /// it in); every other error gets its own audit record.
    pub(crate) async fn audit_failure<T>(
        &self,
        caller: &Caller,
        action: Action,
        subject: Option<&SubjectId>,
        err: VaultError,
    ) -> Result<T, VaultError> {
        match err {
            VaultError::AuditUnavailable(_) => Err(err),
            other => self.refuse(caller, action, subject, other).await,
        }
    }

    /// Starts the audited transaction and loads the subject if `partner` owns it.
    pub(crate) async fn open_owned(
        &self,
        partner: &Partner,
        id: &SubjectId,
    ) -> Result<(AuditedTx, SubjectRow), VaultError> {
        let mut tx = self
            .store
            .begin_audited()
            .await
            .map_err(VaultError::AuditUnavailable)?;
        let row = self.owned_subject(&mut tx, partner, id).await?;
        Ok((tx, row))
    }

    /// Parses a subject id; a bad one is refused and audited.
    pub(crate) async fn parse_subject_id(
        &self,
        caller: &Caller,
        action: Action,
        subject: &str,
    ) -> Result<SubjectId, VaultError> {
        match SubjectId::parse(subject) {
            Ok(id) => Ok(id),
            Err(e) => self.refuse(caller, action, None, e.into()).await,
        }
    }

    /// Creates a subject holding `fields`.
    pub async fn create_subject(
        &self,
        caller: &Caller,
        fields: Vec<(String, String)>,
    ) -> Result<ChainUpdate, VaultError> {
        const A: Action = Action::CreateSubject;
        let partner = self.authorize(caller, A).await?;
        let fields = match validate_fields(fields) {
            Ok(f) => f,
            Err(e) => return self.refuse(caller, A, None, e.into()).await,
        };
        let names: Vec<&str> = fields.iter().map(|(f, _)| f.as_str()).collect();
        self.authorize_on(caller, partner, A, Resource::Vault, &names)
            .await?;
        match self.create_inner(caller, partner, &fields).await {
            Ok(r) => Ok(r),
            Err(e) => self.audit_failure(caller, A, None, e).await,
        }
    }

    async fn create_inner(
        &self,
        caller: &Caller,
        partner: &Partner,
        fields: &[(FieldName, FieldValue)],
    ) -> Result<ChainUpdate, VaultError> {
        let now = self.clock.now_millis();
        let rng = self.rng.as_ref();
        let id = SubjectId::generate(rng).map_err(KeyError::from)?;
        let dek = keys::generate_dek(rng)?;
        let kek = self.keys.kek(self.keys.current_version())?;
        let wrapped = keys::wrap_dek(&kek, &id, &dek, rng)?;
        let (packets, head) = packet::append(&id, &dek, ChainHead::genesis(&id), fields, now, rng)
            .map_err(|_| VaultError::Integrity("packet sealing"))?;
        let row = SubjectRow {
            id,
            created_by: partner.name.clone(),
            wrapped_dek: wrapped,
            head,
            created_at_ms: now,
            updated_at_ms: now,
        };
        let match_rows = self.match_rows_of(fields)?;
        let mut tx = self
            .store
            .begin_audited()
            .await
            .map_err(VaultError::AuditUnavailable)?;
        tx.insert_subject(&row).await?;
        tx.insert_packets(&id, &packets).await?;
        self.write_match_rows(&mut tx, &id, &[], &match_rows)
            .await?;
        let token = self.issue_pairwise(&mut tx, partner, &id).await?;
        let detail = format!("fields={}", fields.len());
        self.commit(
            tx,
            self.event(caller, Action::CreateSubject, Some(&id), "ok", detail),
        )
        .await?;
        Ok(ChainUpdate {
            subject: id,
            head,
            pairwise_token: Some(token),
        })
    }

    /// Appends new versions of `fields` to a subject.
    pub async fn update_subject(
        &self,
        caller: &Caller,
        subject: &str,
        fields: Vec<(String, String)>,
    ) -> Result<ChainUpdate, VaultError> {
        const A: Action = Action::UpdateSubject;
        let partner = self.authorize(caller, A).await?;
        let fields = match validate_fields(fields) {
            Ok(f) => f,
            Err(e) => return self.refuse(caller, A, None, e.into()).await,
        };
        let id = self.parse_subject_id(caller, A, subject).await?;
        self.authorize_subject(caller, partner, A, &id, &fields)
            .await?;
        match self.update_inner(caller, partner, &id, &fields).await {
            Ok(r) => Ok(r),
            Err(e) => self.audit_failure(caller, A, Some(&id), e).await,
        }
    }

    async fn update_inner(
        &self,
        caller: &Caller,
        partner: &Partner,
        id: &SubjectId,
        fields: &[(FieldName, FieldValue)],
    ) -> Result<ChainUpdate, VaultError> {
        let (mut tx, row) = self.open_owned(partner, id).await?;
        let kek = self.keys.kek(row.wrapped_dek.kek_version)?;
        let dek = keys::unwrap_dek(&kek, id, &row.wrapped_dek)
            .map_err(|_| VaultError::Integrity("data key unwrap"))?;
        let now = self.clock.now_millis();
        let (packets, head) = packet::append(id, &dek, row.head, fields, now, self.rng.as_ref())
            .map_err(|_| VaultError::Integrity("packet sealing"))?;
        tx.insert_packets(id, &packets).await?;
        tx.set_head(id, head, now).await?;
        let match_rows = self.match_rows_of(fields)?;
        self.write_match_rows(&mut tx, id, fields, &match_rows)
            .await?;
        let detail = format!("fields={}", fields.len());
        self.commit(
            tx,
            self.event(caller, Action::UpdateSubject, Some(id), "ok", detail),
        )
        .await?;
        Ok(ChainUpdate {
            subject: *id,
            head,
            pairwise_token: None,
        })
    }

    /// Verifies a subject's chain, decrypting every packet.
    pub async fn verify_subject_chain(
        &self,
        caller: &Caller,
        subject: &str,
    ) -> Result<ChainVerification, VaultError> {
        const A: Action = Action::VerifySubjectChain;
        let partner = self.authorize(caller, A).await?;
        let id = self.parse_subject_id(caller, A, subject).await?;
        self.authorize_subject(caller, partner, A, &id, &[]).await?;
        match self.verify_inner(caller, partner, &id).await {
            Ok(r) => Ok(r),
            Err(e) => self.audit_failure(caller, A, Some(&id), e).await,
        }
    }

    async fn verify_inner(
        &self,
        caller: &Caller,
        partner: &Partner,
        id: &SubjectId,
    ) -> Result<ChainVerification, VaultError> {
        let (mut tx, row) = self.open_owned(partner, id).await?;
        let stored = tx.packets(id).await?;
        let kek = self.keys.kek(row.wrapped_dek.kek_version)?;
        let report = match keys::unwrap_dek(&kek, id, &row.wrapped_dek) {
            Ok(dek) => packet::verify_chain(
                id,
                &dek,
                stored.iter().map(|(s, b)| (*s, b.as_slice())),
                row.head,
            ),
            // A DEK that does not unwrap makes every packet unreadable.
            Err(_) => ChainReport {
                checked: 0,
                first_break: Some((1, BreakReason::DecryptionFailed)),
            },
        };
        let detail = match report.first_break {
            None => format!("intact packets={}", report.checked),
            Some((seq, r)) => format!("broken seq={seq} reason={}", r.name()),
        };
        self.commit(
            tx,
            self.event(caller, Action::VerifySubjectChain, Some(id), "ok", detail),
        )
        .await?;
        Ok(ChainVerification {
            head: row.head,
            report,
        })
    }

    /// Deletes a subject: its wrapped DEK and packets (crypto-shredding).
    pub async fn delete_subject(&self, caller: &Caller, subject: &str) -> Result<u64, VaultError> {
        const A: Action = Action::DeleteSubject;
        let partner = self.authorize(caller, A).await?;
        let id = self.parse_subject_id(caller, A, subject).await?;
        self.authorize_subject(caller, partner, A, &id, &[]).await?;
        let n = match self.delete_inner(caller, partner, &id).await {
            Ok(n) => n,
            Err(e) => return self.audit_failure(caller, A, Some(&id), e).await,
        };
        if let Err(e) = self.store.compact_after_delete().await {
            tracing::warn!(error = %e, "WAL checkpoint after delete failed; deleted pages stay in the WAL until the next checkpoint");
        }
        Ok(n)
    }

    async fn delete_inner(
        &self,
        caller: &Caller,
        partner: &Partner,
        id: &SubjectId,
    ) -> Result<u64, VaultError> {
        let (mut tx, _) = self.open_owned(partner, id).await?;
        let n = tx.delete_subject(id).await?;
        self.commit(
            tx,
            self.event(
                caller,
                Action::DeleteSubject,
                Some(id),
                "ok",
                format!("packets={n}"),
            ),
        )
        .await?;
        Ok(n)
    }
}

/// Outcome of [`verify_audit_log`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditVerdict {
    /// Every record verified.
    Intact {
        /// Records checked.
        records: u64,
    },
    /// The first bad record.
    Broken {
        /// Its sequence number.
        seq: u64,
        /// What is wrong.
        fault: audit::AuditFault,
    },
}

/// Walks the whole audit log in pages and names the first bad record.
pub async fn verify_audit_log(
    store: &Store,
    keys: &KeyHierarchy,
) -> Result<AuditVerdict, VaultError> {
    let mut verifier = audit::AuditVerifier::default();
    let mut after = 0u64;
    let mut key_cache: Vec<idvault_core::secret::AuditKey> = Vec::new();
    loop {
        let page = store.audit_page(after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for r in &page {
            if !key_cache.iter().any(|k| k.version() == r.key_version)
                && let Ok(k) = keys.audit_key(r.key_version)
            {
                key_cache.push(k);
            }
            let key = key_cache.iter().find(|k| k.version() == r.key_version);
            if let Err((seq, fault)) = verifier.check(r, key) {
                return Ok(AuditVerdict::Broken { seq, fault });
            }
        }
    }
    let (head_seq, head_hash) = store.audit_head().await?;
    Ok(match verifier.finish(head_seq, &head_hash) {
        Ok(records) => AuditVerdict::Intact { records },
        Err((seq, fault)) => AuditVerdict::Broken { seq, fault },
    })
}
