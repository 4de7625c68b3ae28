//! The one request path. Every use case runs through [`Vault::handle`]:
//!
//! 1. identify the partner from the certificate identity (registry);
//! 2. ask the policy once for the call's gate, getting a [`Decision`] back;
//! 3. run the use case with a [`Request`] that carries who asked, for
//!    what, what was decided and which subject it is about; the use case
//!    validates, asks the policy again on a narrower resource where it
//!    needs to ([`Request::decide_on`]) and ends in one audited commit
//!    ([`Vault::commit`]);
//! 4. audit any refusal or failure once, here, in its own transaction.
//!
//! Before step 1 runs, admission control: a partner has at most
//! [`MAX_IN_FLIGHT_PER_PARTNER`] requests in flight and the writer queue is
//! bounded, both refused at once with `RESOURCE_EXHAUSTED`; a request whose
//! deadline passes while it waits for the writer is not executed. Those
//! refusals, and those of unregistered identities, are counted and audited
//! once per interval per identity ([`Vault::flush_refusals`]) so a flood
//! cannot flood the log.
//!
//! The status mapping is the API's (`crate::api::status`). A use case never
//! writes its own refusal record, and nothing here is shared between
//! requests: a decision lives in its request, not in the caller.

use idvault_core::subject::SubjectId;
use idvault_core::tlog::leaf::{self as tlog_leaf, AuditLeaf};
use idvault_core::tlog::merkle;
use idvault_policies::{Action, Decision, RequestContext, Resource};

use super::{Caller, Vault, VaultError};
use crate::config::Partner;
use crate::store::{AuditedTx, NewLeaf, StoreError};

tokio::task_local! {
    /// The deadline of the request this task serves, if it has one.
    static DEADLINE: tokio::time::Instant;
    /// The share of the store's connections of the partner whose request
    /// this task serves (`Store::connections_per_partner`).
    static CONNECTIONS: std::sync::Arc<tokio::sync::Semaphore>;
}

/// Runs `f` with `deadline` as the deadline of the request it serves,
/// unless its caller's is earlier. For a call that finishes on a task of
/// its own after its client stopped waiting: without it such a call, sent
/// without a `grpc-timeout`, could queue for the writer or a connection
/// for as long as they are busy, holding its place in flight.
pub(crate) async fn scoped_deadline<F: Future>(deadline: tokio::time::Instant, f: F) -> F::Output {
    DEADLINE.scope(deadline, f).await
}

/// The deadline of the request this task serves, if it has one.
pub(crate) fn current_deadline() -> Option<tokio::time::Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

/// Waits `d` before trying again, unless the request's deadline comes
/// first: then it is refused as past its time, and nothing more is done.
pub(crate) async fn back_off(d: std::time::Duration) -> Result<(), VaultError> {
    let until = tokio::time::Instant::now() + d;
    if DEADLINE.try_with(|dl| *dl).is_ok_and(|dl| dl <= until) {
        return Err(VaultError::DeadlineExceeded);
    }
    tokio::time::sleep_until(until).await;
    Ok(())
}

/// The deciding policy ids a leaf records: at most
/// [`leaf::MAX_POLICIES`](idvault_core::tlog::leaf::MAX_POLICIES), the
/// last one then saying how many more matched (an operator's policy set
/// can match any number of permits, and a leaf over the limit would not
/// decode).
fn leaf_policies(ids: &[String]) -> Vec<String> {
    use idvault_core::tlog::leaf::MAX_POLICIES;
    if ids.len() <= MAX_POLICIES {
        return ids.to_vec();
    }
    let kept = MAX_POLICIES - 1;
    let mut out: Vec<String> = ids.iter().take(kept).cloned().collect();
    out.push(format!("+{} more", ids.len() - kept));
    out
}

/// A request on its way through the pipeline: the identified partner, the
/// action it is audited as, the policy decision in force and, once known,
/// the subject it is about.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    /// The proven caller.
    pub(crate) caller: &'a Caller,
    /// Its registry entry.
    pub(crate) partner: &'a Partner,
    /// What the request is audited as.
    pub(crate) action: Action,
    decision: Decision,
    subject: Option<SubjectId>,
    /// The caller did not name the subject by its id ([`Request::hide_subject`]).
    subject_hidden: bool,
    vault: &'a Vault,
    /// Its refusal is on the record already ([`Vault::commit_refused`]).
    refusal_recorded: bool,
    /// It committed its record ([`Vault::commit_leaf`]): an error after
    /// that is the caller's to see, never a second record. A refusal
    /// recorded with the same request id would be the one
    /// `GetInclusionProof` finds by that id, and would prove "failed" for
    /// a request whose writes and `ok` record are durable.
    committed: std::sync::atomic::AtomicBool,
}

impl Request<'_> {
    /// The caller named the person by its own pairwise token, or by
    /// something of its own (a transaction id), not by the vault's subject
    /// id: its records, which it may read back (`GetInclusionProof`),
    /// must not hand it that id, which would let it join its records with
    /// another partner's. They name no subject; a record of the vault's
    /// own committed with each ([`REQUEST_SUBJECT_ACTION`]) names it.
    /// Such a request must not change a subject's chain (that record
    /// names the subject).
    pub(crate) fn hide_subject(&mut self) {
        self.subject_hidden = true;
    }

    /// Names the subject the request is about: its refusal and failure
    /// records name it from here on.
    pub(crate) fn about(&mut self, id: SubjectId) {
        self.subject = Some(id);
    }

    /// The subject named so far.
    pub(crate) fn subject(&self) -> Option<&SubjectId> {
        self.subject.as_ref()
    }

    /// Parses a caller-supplied subject id and names it (a bad one is an
    /// invalid request).
    pub(crate) fn subject_id(&mut self, text: &str) -> Result<SubjectId, VaultError> {
        let id = SubjectId::parse(text)?;
        self.about(id);
        Ok(id)
    }

    /// Asks the policy about `resource` in `ctx` and keeps the decision
    /// for the request's audit record; returns whether it allowed.
    pub(crate) fn decide(&mut self, resource: Resource<'_>, ctx: RequestContext<'_>) -> bool {
        self.decision = self
            .vault
            .decision(self.partner, self.action, resource, ctx);
        self.decision.allowed
    }

    /// Records a refusal decided in code, before any policy is asked:
    /// `check` names the check in the audit record, where a policy id
    /// would stand.
    pub(crate) fn deny_in_code(&mut self, check: &str) {
        self.decision = Decision {
            allowed: false,
            policies: vec![check.to_owned()],
        };
    }

    /// The decision on one resource after the gate: the subject a call is
    /// about, or the token domain, with the catalogue field names it
    /// touches, so operator policies can forbid a subject (a legal hold),
    /// a domain or a field. A denial is `Denied`.
    pub(crate) fn decide_on(
        &mut self,
        resource: Resource<'_>,
        fields: &[&str],
    ) -> Result<(), VaultError> {
        let ctx = RequestContext {
            fields,
            ..RequestContext::default()
        };
        if self.decide(resource, ctx) {
            Ok(())
        } else {
            Err(VaultError::Denied(self.action))
        }
    }

    /// [`Self::decide_on`] for a subject, which the request is then about.
    pub(crate) fn decide_on_subject(
        &mut self,
        id: &SubjectId,
        fields: &[&str],
    ) -> Result<(), VaultError> {
        self.about(*id);
        let text = id.to_string();
        self.decide_on(Resource::Subject(&text), fields)
    }

    /// The audit leaf of this request with `outcome` and `detail`; the
    /// deciding policies are appended, so every decision is audited.
    fn event(&self, subject: Option<&SubjectId>, outcome: &str, detail: String) -> AuditLeaf {
        event(
            self.vault,
            self.caller,
            self.action.name(),
            subject,
            outcome,
            detail,
            Some(&self.decision),
        )
    }
}

fn event(
    vault: &Vault,
    caller: &Caller,
    action: &str,
    subject: Option<&SubjectId>,
    outcome: &str,
    detail: String,
    decision: Option<&Decision>,
) -> AuditLeaf {
    let detail = match decision.map(Decision::audit_text) {
        Some(p) if detail.is_empty() => p,
        Some(p) => format!("{detail} {p}"),
        None => detail,
    };
    AuditLeaf {
        time_ms: vault.now_millis(),
        actor: caller.spiffe_id.clone(),
        action: action.to_owned(),
        subject: subject.map(ToString::to_string),
        outcome: outcome.to_owned(),
        detail,
        policies: decision
            .map(|d| leaf_policies(&d.policies))
            .unwrap_or_default(),
        request_id: caller.request_id,
        head: None,
    }
}

/// What an audit record may say about a refusal: never caller text, never
/// an internal cause.
fn refusal_detail(err: &VaultError) -> String {
    match err {
        VaultError::Denied(_)
        | VaultError::DomainDenied
        | VaultError::Unregistered
        | VaultError::Invalid(_)
        | VaultError::NotFound
        | VaultError::RateLimited(_)
        | VaultError::TooManyStreams(..)
        | VaultError::TooManyRejects(..)
        | VaultError::ChainFull(_)
        | VaultError::Overloaded(_)
        | VaultError::Limit(_)
        | VaultError::DeadlineExceeded => err.to_string(),
        // Some of these messages quote what the caller sent (an unknown
        // field path, a column name): keep caller text out of the log.
        VaultError::BadRequest(_) => "bad request".to_owned(),
        VaultError::Refused(r) => r.name().to_owned(),
        VaultError::Credential(e) => format!("presentation: {}", e.code()),
        VaultError::Integrity(what) => format!("integrity: {what}"),
        _ => "internal".to_owned(),
    }
}

impl Vault {
    /// A place for one call at the edge, taken when its headers arrive and
    /// held until its answer ends ([`super::state::MAX_EDGE_CALLS_PER_IDENTITY`]
    /// per identity; callers the registry does not know share one such
    /// allowance; an identity many end users share has places per source
    /// address, [`crate::sources`]). An error when its allowance is taken:
    /// the call is refused at once, before its message is read, and
    /// counted like the other coalesced refusals.
    pub(crate) fn enter_edge(
        &self,
        spiffe_id: Option<&str>,
        remote: Option<std::net::IpAddr>,
    ) -> Result<super::state::Place, super::state::EdgeFull> {
        let place = self.admission.enter_edge(spiffe_id, remote);
        if let Err(full) = place {
            self.admission
                .count_refusal(spiffe_id.unwrap_or("(no identity)"), full.reason());
        }
        place
    }

    /// The one request path (see the module comment): identify, decide
    /// `action`'s gate, run `body`, audit a failure once.
    pub(crate) async fn handle<T>(
        &self,
        caller: &Caller,
        action: Action,
        body: impl AsyncFnOnce(&mut Request<'_>) -> Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        self.handle_gated(caller, action, action, body).await
    }

    /// [`Self::handle`] for a call whose gate is another action than the
    /// one it is audited as once past the gate (a release is gated as
    /// `PresentConsent` before any signature work, decided and audited as
    /// `ReleaseConsented`).
    pub(crate) async fn handle_gated<T>(
        &self,
        caller: &Caller,
        gate: Action,
        action: Action,
        body: impl AsyncFnOnce(&mut Request<'_>) -> Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        let r = self.identified(caller, gate, action, body).await;
        if let Err(e) = &r {
            self.metrics().observe_error(e);
        }
        r
    }

    async fn identified<T>(
        &self,
        caller: &Caller,
        gate: Action,
        action: Action,
        body: impl AsyncFnOnce(&mut Request<'_>) -> Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        let Some(partner) = self.registry().by_spiffe_id(&caller.spiffe_id) else {
            self.admission
                .count_refusal(&caller.spiffe_id, REFUSED_UNREGISTERED);
            return Err(VaultError::Unregistered);
        };
        let _slot = match self.admission.enter(partner, caller.remote) {
            Ok(slot) => slot,
            Err(full) => {
                self.admission
                    .count_refusal(&caller.spiffe_id, full.reason());
                return Err(VaultError::Overloaded(full.limit()));
            }
        };
        // The caller's deadline, or an earlier one the edge set around
        // this call (`scoped_deadline`: the server's own request timeout
        // for calls that finish on a task of their own).
        let outer = DEADLINE.try_with(|d| *d).ok();
        let deadline = match (caller.deadline, outer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let run = async {
            match deadline {
                Some(d) => {
                    DEADLINE
                        .scope(d, self.admitted(caller, partner, gate, action, body))
                        .await
                }
                None => self.admitted(caller, partner, gate, action, body).await,
            }
        };
        match self.admission.connections(&partner.name) {
            Some(share) => CONNECTIONS.scope(share, run).await,
            None => run.await,
        }
    }

    async fn admitted<T>(
        &self,
        caller: &Caller,
        partner: &Partner,
        gate: Action,
        action: Action,
        body: impl AsyncFnOnce(&mut Request<'_>) -> Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        let mut req = Request {
            caller,
            partner,
            action: gate,
            decision: Decision {
                allowed: false,
                policies: Vec::new(),
            },
            subject: None,
            subject_hidden: false,
            vault: self,
            refusal_recorded: false,
            committed: std::sync::atomic::AtomicBool::new(false),
        };
        if !req.decide(Resource::Vault, RequestContext::default()) {
            return self.refuse(&req, VaultError::Denied(gate)).await;
        }
        req.action = action;
        match body(&mut req).await {
            Ok(v) => Ok(v),
            Err(e) if req.refusal_recorded => Err(e),
            Err(e) if req.committed.load(std::sync::atomic::Ordering::Relaxed) => {
                tracing::warn!(
                    partner = %partner.name,
                    action = action.name(),
                    error = %e,
                    "a request failed after its record was committed"
                );
                Err(e)
            }
            // Nothing to record it in: the caller learns the audit is down,
            // or that the commit's outcome is unknown.
            Err(e @ (VaultError::AuditUnavailable(_) | VaultError::OutcomeUnknown(_))) => Err(e),
            // Not executed: counted, not recorded one by one.
            Err(e @ (VaultError::Overloaded(_) | VaultError::DeadlineExceeded)) => {
                let why = match e {
                    VaultError::Overloaded(_) => REFUSED_BUSY,
                    _ => REFUSED_LATE,
                };
                self.admission.count_refusal(&caller.spiffe_id, why);
                Err(e)
            }
            Err(e) => self.refuse(&req, e).await,
        }
    }

    /// Refuses a request that could not even be decoded at the edge (a
    /// malformed message): identified, gated by `gate`, audited as
    /// `action` like any other refusal past the gate, and answered with the
    /// error the caller may see.
    pub async fn reject(
        &self,
        caller: &Caller,
        gate: Action,
        action: Action,
        err: VaultError,
    ) -> VaultError {
        match self
            .handle_gated(caller, gate, action, async |_| Err::<(), _>(err))
            .await
        {
            Err(e) => e,
            Ok(()) => VaultError::Internal("a rejected request was accepted"),
        }
    }

    /// The policy decision for `partner` doing `action` on `resource`.
    pub(crate) fn decision(
        &self,
        partner: &Partner,
        action: Action,
        resource: Resource<'_>,
        ctx: RequestContext<'_>,
    ) -> Decision {
        let ctx = RequestContext {
            now: self.now_millis().div_euclid(1000),
            ..ctx
        };
        self.policies()
            .decide(&partner.name, action, resource, &ctx)
    }

    /// Starts the request's audited transaction; failing to is an audit
    /// failure (fail closed). A full writer queue is `Overloaded`, at once;
    /// a request whose deadline passes while it waits for the writer is
    /// not executed (`DeadlineExceeded`).
    pub(crate) async fn begin(&self) -> Result<AuditedTx, VaultError> {
        let deadline = DEADLINE.try_with(|d| *d).ok();
        if deadline.is_some_and(|d| d <= tokio::time::Instant::now()) {
            return Err(VaultError::DeadlineExceeded);
        }
        match self.store().begin_audited(deadline) {
            Ok(mut tx) => {
                if let Ok(share) = CONNECTIONS.try_with(std::sync::Arc::clone) {
                    tx.limit_connections(share);
                }
                Ok(tx)
            }
            Err(StoreError::QueueFull(n)) => Err(VaultError::Overloaded(n)),
            Err(e) => Err(VaultError::AuditUnavailable(e)),
        }
    }

    /// Commits `tx` with the request's `ok` record about `subject` (the
    /// one commit of a use case).
    pub(crate) async fn commit(
        &self,
        tx: AuditedTx,
        req: &Request<'_>,
        subject: Option<&SubjectId>,
        detail: String,
    ) -> Result<(), VaultError> {
        self.commit_leaf(tx, req, subject, detail).await.map(|_| ())
    }

    /// The request's own leaf about `subject` in `tx`; if the subject is
    /// hidden from the caller ([`Request::hide_subject`]), the leaf names
    /// none and the vault's own record of it is added to `tx`.
    fn own_leaf(
        &self,
        tx: &mut AuditedTx,
        req: &Request<'_>,
        subject: Option<&SubjectId>,
        outcome: &str,
        detail: String,
    ) -> Result<AuditLeaf, VaultError> {
        let Some(id) = subject.filter(|_| req.subject_hidden) else {
            return Ok(req.event(subject, outcome, detail));
        };
        // `append` would name the subject in the caller's leaf with the
        // chain head it moved (see `Request::hide_subject`).
        if tx.changed_head().is_some() {
            return Err(VaultError::Internal(
                "a request that hides its subject changed its chain",
            ));
        }
        // The deciding policies go with the subject too: a policy about
        // one person, named in two partners' records, would tie them.
        self.add_leaf_of(
            tx,
            REQUEST_SUBJECT_ACTION,
            Some(id),
            format!(
                "request={} action={}",
                hex::encode(req.caller.request_id),
                req.action.name()
            ),
            Some(&req.decision),
        )?;
        Ok(event(
            self,
            req.caller,
            req.action.name(),
            None,
            outcome,
            detail,
            None,
        ))
    }

    /// [`Self::commit`], returning the RFC 9162 leaf hash of the record
    /// written (a deletion receipt names it).
    pub(crate) async fn commit_leaf(
        &self,
        tx: AuditedTx,
        req: &Request<'_>,
        subject: Option<&SubjectId>,
        detail: String,
    ) -> Result<[u8; 32], VaultError> {
        let mut tx = tx;
        let leaf = self.own_leaf(&mut tx, req, subject, "ok", detail)?;
        let hash = self.append(tx, leaf).await?;
        req.committed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(hash)
    }

    /// Commits `tx`, the writes a refused request must keep (a wrong code
    /// counted against the person's outstanding codes), with the request's
    /// refusal record; returns the refusal for the caller. The pipeline
    /// does not record it again.
    pub(crate) async fn commit_refused(
        &self,
        tx: AuditedTx,
        req: &mut Request<'_>,
        subject: Option<&SubjectId>,
        err: VaultError,
        detail: &str,
    ) -> VaultError {
        let mut tx = tx;
        let ev = match self.own_leaf(
            &mut tx,
            req,
            subject,
            err.outcome(),
            format!("{} {detail}", refusal_detail(&err)),
        ) {
            Ok(ev) => ev,
            Err(e) => return e,
        };
        match self.append(tx, ev).await {
            Ok(_) => {
                req.refusal_recorded = true;
                err
            }
            Err(e) => e,
        }
    }

    /// Commits `tx` with an `ok` record of one of the vault's own jobs
    /// (no partner asked, so no policy decided): `actor` names the job.
    pub(crate) async fn commit_job(
        &self,
        tx: AuditedTx,
        actor: &Caller,
        action: Action,
        detail: String,
    ) -> Result<(), VaultError> {
        self.commit_job_as(tx, actor, action.name(), detail).await
    }

    /// [`Self::commit_job`] for a job that is no partner action (the
    /// retention job): `action` is the name its records carry.
    pub(crate) async fn commit_job_as(
        &self,
        tx: AuditedTx,
        actor: &Caller,
        action: &str,
        detail: String,
    ) -> Result<(), VaultError> {
        let ev = event(self, actor, action, None, "ok", detail, None);
        self.append(tx, ev).await.map(|_| ())
    }

    /// [`Self::commit_job_as`] for a job acting on `subject` (the record
    /// names it); returns the leaf's hash.
    pub(crate) async fn commit_job_on(
        &self,
        tx: AuditedTx,
        actor: &Caller,
        action: &str,
        subject: &SubjectId,
        detail: String,
    ) -> Result<[u8; 32], VaultError> {
        let ev = event(self, actor, action, Some(subject), "ok", detail, None);
        self.append(tx, ev).await
    }

    /// Adds to `tx` a record of the vault's own (actor [`JOB_ACTOR`], a
    /// fresh random request id) about `subject`, committed with the
    /// request's record or not at all. What the caller may not learn goes
    /// here rather than in the caller's record: `GetInclusionProof` hands
    /// a partner the bytes of its own records, never another actor's.
    pub(crate) fn add_job_leaf(
        &self,
        tx: &mut AuditedTx,
        action: &str,
        subject: Option<&SubjectId>,
        detail: String,
    ) -> Result<(), VaultError> {
        self.add_leaf_of(tx, action, subject, detail, None)
    }

    /// [`Self::add_job_leaf`], with the policy decision it records.
    pub(crate) fn add_leaf_of(
        &self,
        tx: &mut AuditedTx,
        action: &str,
        subject: Option<&SubjectId>,
        detail: String,
        decision: Option<&Decision>,
    ) -> Result<(), VaultError> {
        let actor = Caller::new(JOB_ACTOR);
        let leaf = event(self, &actor, action, subject, "ok", detail, decision);
        let sealed = self.seal_leaf(&leaf)?;
        tx.add_leaf(&sealed.new_leaf(&leaf))
            .map_err(VaultError::from)
    }

    /// A leaf's bytes, hash and MAC under the current audit key.
    fn seal_leaf(&self, leaf: &AuditLeaf) -> Result<SealedLeaf, VaultError> {
        // A leaf that would not decode is never written: `audit verify`
        // would report the genuine, signed leaf as edited forever.
        leaf.check()
            .map_err(|_| VaultError::Internal("audit leaf over its limits"))?;
        let key = self.keys().audit_key(self.keys().current_version())?;
        let bytes = leaf.encode();
        let hash = merkle::leaf_hash(&bytes);
        let mut random = [0u8; 8];
        self.rng()
            .fill(&mut random)
            .map_err(|_| VaultError::Internal("random source"))?;
        let nonce = tlog_leaf::row_nonce(leaf.time_ms, random);
        let mac = tlog_leaf::row_mac(&key, &hash, Some(&nonce));
        Ok(SealedLeaf {
            bytes,
            hash,
            key_version: key.version(),
            nonce,
            mac,
        })
    }

    /// Writes `leaf` in `tx` and commits. The leaf names the chain head
    /// the transaction left its subject at, so a rolled-back chain shows.
    async fn append(&self, tx: AuditedTx, mut leaf: AuditLeaf) -> Result<[u8; 32], VaultError> {
        if let Some((id, head)) = tx.changed_head() {
            let id = id.to_string();
            if leaf.subject.as_ref().is_none_or(|s| *s == id) {
                leaf.subject = Some(id);
                leaf.head = Some((head.seq, head.hash));
            }
        }
        let sealed = self.seal_leaf(&leaf)?;
        let leaf_hash = sealed.hash;
        let new = sealed.new_leaf(&leaf);
        tx.commit(&new).await.map_err(|e| match e {
            // Not executed, or a statement of the request failed (its rows
            // were inserted at commit): the request's own failure, which
            // the pipeline records in a transaction of its own.
            StoreError::Deadline | StoreError::QueueFull(_) | StoreError::Database(_) => {
                VaultError::from(e)
            }
            // The commit itself failed: it may have taken effect.
            e @ StoreError::CommitUnknown(_) => VaultError::OutcomeUnknown(e),
            // The batch was rolled back (nothing of it committed).
            e => VaultError::AuditUnavailable(e),
        })?;
        Ok(leaf_hash)
    }

    /// Audits the refusals counted since the last call, one leaf per
    /// identity and reason (`count=N`). It waits for a place in the
    /// writer queue rather than being refused: overload is when most of
    /// these refusals are counted. Counts whose record could not be
    /// written are put back for the next call, never dropped (a record
    /// whose commit failed with an unknown outcome may then be counted
    /// twice, which is the safer error for a record of refusals).
    pub async fn flush_refusals(&self) -> Result<usize, VaultError> {
        let counts = self.admission.take_refusals();
        if counts.is_empty() {
            return Ok(0);
        }
        let n = counts.len();
        let mut counts = counts.into_iter();
        while let Some(((who, why), count)) = counts.next() {
            if let Err(e) = self.record_refusal_count(&who, why, count).await {
                self.admission.count_refusals(&who, why, count);
                for ((who, why), count) in counts {
                    self.admission.count_refusals(&who, why, count);
                }
                return Err(e);
            }
        }
        Ok(n)
    }

    /// Writes one coalesced refusal record: `count` refusals of `who` for
    /// `why`.
    async fn record_refusal_count(
        &self,
        who: &str,
        why: &'static str,
        count: u64,
    ) -> Result<(), VaultError> {
        let caller = Caller::new(who);
        let decision = Decision {
            allowed: false,
            policies: Vec::new(),
        };
        let leaf = event(
            self,
            &caller,
            "Refused",
            None,
            if why == REFUSED_UNREGISTERED {
                "denied"
            } else {
                "rate_limited"
            },
            format!("{why} count={count}"),
            Some(&decision),
        );
        let tx = self
            .store()
            .begin_audited_waiting()
            .await
            .map_err(VaultError::AuditUnavailable)?;
        self.append(tx, leaf).await.map(|_| ())
    }

    /// Records a refusal or failure of `req` in its own transaction, about
    /// the subject it named (as [`Self::own_leaf`] writes it), and returns
    /// the error; if even that fails, the caller learns the audit is down.
    async fn refuse<T>(&self, req: &Request<'_>, err: VaultError) -> Result<T, VaultError> {
        let mut tx = match self.begin().await {
            Ok(tx) => tx,
            Err(e @ (VaultError::Overloaded(_) | VaultError::DeadlineExceeded)) => {
                // Counted instead, so the refusal is still on the record.
                self.admission
                    .count_refusal(&req.caller.spiffe_id, REFUSED_UNRECORDED);
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let ev = match self.own_leaf(
            &mut tx,
            req,
            req.subject(),
            err.outcome(),
            refusal_detail(&err),
        ) {
            Ok(ev) => ev,
            Err(e) => {
                // Not on the record one by one: counted.
                self.admission
                    .count_refusal(&req.caller.spiffe_id, REFUSED_UNRECORDED);
                return Err(e);
            }
        };
        let actor = ev.actor.clone();
        match self.append(tx, ev).await {
            Ok(_) => Err(err),
            Err(e @ (VaultError::Overloaded(_) | VaultError::DeadlineExceeded)) => {
                self.admission.count_refusal(&actor, REFUSED_UNRECORDED);
                Err(e)
            }
            // Even the refusal's own leaf could not be written: the audit
            // log is what failed. An unknown outcome here is the refusal
            // record's, not the request's (which was refused, so not done).
            Err(VaultError::Storage(e) | VaultError::OutcomeUnknown(e)) => {
                Err(VaultError::AuditUnavailable(e))
            }
            Err(e) => Err(e),
        }
    }
}

/// The actor of the records the vault writes of its own (never a
/// partner's SPIFFE id, so no partner can read them back).
pub(crate) const JOB_ACTOR: &str = "idvault";

/// The action of the vault's record naming the subject of a request whose
/// caller did not name it by id ([`Request::hide_subject`]).
pub(crate) const REQUEST_SUBJECT_ACTION: &str = "RequestSubject";

/// Coalesced refusal reasons (the `detail` of their leaves; the edge's
/// are `EdgeFull::reason`).
const REFUSED_UNREGISTERED: &str = "unregistered identity";
const REFUSED_BUSY: &str = "overloaded";
const REFUSED_LATE: &str = "deadline passed in the queue";
const REFUSED_UNRECORDED: &str = "refused while the writer was busy";

/// A leaf's canonical bytes, RFC 9162 leaf hash, and the version and MAC
/// of the audit key over that hash.
struct SealedLeaf {
    bytes: Vec<u8>,
    hash: [u8; 32],
    key_version: u32,
    nonce: [u8; tlog_leaf::ROW_NONCE_LEN],
    mac: [u8; 32],
}

impl SealedLeaf {
    fn new_leaf<'a>(&'a self, leaf: &'a AuditLeaf) -> NewLeaf<'a> {
        NewLeaf {
            leaf,
            bytes: &self.bytes,
            key_version: self.key_version,
            nonce: self.nonce,
            mac: self.mac,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::leaf_policies;
    use idvault_core::tlog::leaf::{AuditLeaf, MAX_POLICIES};

    /// However many permits match, the leaf keeps at most the limit and
    /// still decodes.
    #[test]
    fn many_deciding_policies_still_make_a_leaf() {
        let ids: Vec<String> = (0..100).map(|i| format!("p{i}")).collect();
        let kept = leaf_policies(&ids);
        assert_eq!(kept.len(), MAX_POLICIES);
        assert_eq!(kept.last().unwrap(), "+37 more");
        assert_eq!(leaf_policies(&ids[..5]), ids[..5].to_vec());
        let leaf = AuditLeaf {
            time_ms: 1,
            actor: "a".into(),
            action: "Match".into(),
            subject: None,
            outcome: "ok".into(),
            detail: String::new(),
            policies: kept,
            request_id: [0; 16],
            head: None,
        };
        leaf.check().unwrap();
        assert_eq!(AuditLeaf::decode(&leaf.encode()).unwrap(), leaf);
    }
}
