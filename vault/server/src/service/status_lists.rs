//! Revoking digital IDs: where an issued credential is placed in a Token
//! Status List, revoking it (by the person's device, by the operator, by
//! deleting the person or their device), the signed status list tokens
//! relying parties fetch, and the live check `VerifyPresentation` makes
//! (docs/digital-id.md, "Revocation").
//!
//! The published list fails closed against a database writer: an entry is
//! valid only when its row's MAC verifies, it is not revoked and it sits
//! at the index its place gives, and every credential the list's (MACed)
//! count says was placed but whose row is gone is published as revoked
//! ([`idvault_core::sdjwt::status::build_list`]).
//!
//! A list's id is never given twice while a vault process runs: each
//! process remembers the highest list id it has read or made
//! ([`StatusLists::highest`]) and refuses to start a list at or below it.
//! A writer who deletes the newest list and its rows would otherwise get
//! the same list id, and so the same indexes in the same order, handed to
//! new credentials, which would then publish revoked credentials of the
//! removed list as valid again. The live check of `VerifyPresentation`
//! also requires the row's (MACed) expiry to be the presented
//! credential's `exp`, so a row given to another credential never answers
//! for an earlier one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use idvault_core::sdjwt::status::{
    self, CredentialEntry, IndexPermutation, ListSpec, StatusListState, StatusRef,
};
use idvault_core::sdjwt::{SdJwtError, Verified};
use idvault_core::subject::SubjectId;
use idvault_policies::Action;

use crate::service::{Caller, Vault, VaultError};
use crate::store::AuditedTx;

/// The signed tokens of every list, and when they were made.
#[derive(Debug, Default)]
pub(crate) struct StatusCache {
    tokens: BTreeMap<i64, Arc<String>>,
    built_at: Option<i64>,
    /// Bumped by every revocation; the tokens are current when they were
    /// built at this generation.
    generation: u64,
    built_generation: u64,
}

/// The status list state shared by the vault: the cache and the lock that
/// lets one rebuild run at a time.
#[derive(Debug, Default)]
pub(crate) struct StatusLists {
    cache: std::sync::Mutex<StatusCache>,
    rebuild: tokio::sync::Mutex<()>,
    /// The highest list id this process has read or started: no list at
    /// or below it is started again (see the module's documentation).
    highest: std::sync::atomic::AtomicI64,
}

impl StatusLists {
    fn seen(&self, list_id: i64) {
        self.highest
            .fetch_max(list_id, std::sync::atomic::Ordering::Relaxed);
    }

    fn highest(&self) -> i64 {
        self.highest.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, StatusCache> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A status list token's `exp`, in `ttl`s after its `iat`: how long an
/// offline verifier may keep using a copy while the vault is unreachable.
const STATUS_EXP_TTLS: i64 = 4;

/// A revocation's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revoked {
    /// False when it was revoked already.
    pub revoked: bool,
}

impl Vault {
    fn status_list_base(&self) -> String {
        self.credential_settings().status_list_base()
    }

    /// The URI of list `list_id`.
    pub fn status_list_uri(&self, list_id: i64) -> String {
        format!("{}/{list_id}", self.status_list_base())
    }

    /// The list a URI names, if it is one of this vault's (canonical
    /// decimal id from 1).
    fn status_list_id(&self, uri: &str) -> Option<i64> {
        let base = self.status_list_base();
        let id = uri.strip_prefix(base.as_str())?.strip_prefix('/')?;
        let n: i64 = id.parse().ok()?;
        (n >= 1 && n.to_string() == id).then_some(n)
    }

    fn permutation(&self, l: &StatusListState) -> Result<IndexPermutation, VaultError> {
        let key = self.keys().status_index_key(l.key_version)?;
        IndexPermutation::new(key.expose(), l.log2).ok_or(VaultError::Integrity("status list size"))
    }

    /// Places a credential of `subject`'s `device` expiring at
    /// `expires_at` in the newest list (starting the next one when it is
    /// full), inside the issuing transaction; returns its `status` claim
    /// and whether it started a list (whose token the caller must have
    /// made once it commits: [`Self::status_changed`]).
    pub(crate) async fn place_credential(
        &self,
        tx: &mut AuditedTx,
        subject: &SubjectId,
        device_id: &str,
        expires_at: i64,
    ) -> Result<(StatusRef, bool), VaultError> {
        let log2 = self.credential_settings().status_list_size_log2;
        let mut list = None;
        let mut started = false;
        // Twice at most: a list another replica started between our read
        // and our insert is read again (locked) the second time.
        for _ in 0..2 {
            match tx.newest_status_list().await? {
                // A list made under an older root key version takes no new
                // credentials: once its credentials expire nothing needs
                // that version's permutation key, so it can be retired.
                Some(l) if !l.is_full() && l.key_version >= self.keys().current_version() => {
                    list = Some(l);
                    break;
                }
                newest => {
                    let list_id = newest.map_or(1, |n| n.list_id + 1);
                    if list_id <= self.status_lists.highest() {
                        tracing::error!(
                            list_id,
                            highest = self.status_lists.highest(),
                            "status lists up to this id existed and their rows are gone (removed behind the vault's back?): not starting it again"
                        );
                        return Err(VaultError::Integrity("status list rows removed"));
                    }
                    let l = StatusListState {
                        list_id,
                        log2,
                        key_version: self.keys().current_version(),
                        next_seq: 0,
                    };
                    if tx.insert_status_list(&l, self.now_millis()).await? {
                        list = Some(l);
                        started = true;
                        break;
                    }
                }
            }
        }
        let l = list.ok_or(VaultError::Internal("no status list could be started"))?;
        // A list read is known to exist; one started here only once its
        // transaction commits (`Self::status_list_started`): a start that
        // rolls back must not keep the next issuance from starting it.
        if !started {
            self.status_lists.seen(l.list_id);
        }
        let idx = self.permutation(&l)?.apply(
            u64::try_from(l.next_seq).map_err(|_| VaultError::Integrity("status list count"))?,
        );
        let idx = i64::try_from(idx).map_err(|_| VaultError::Integrity("status index"))?;
        // The list row is locked (or the writer is ours): neither can fail
        // unless the rows were edited behind the vault's back.
        if !tx.advance_status_list(&l).await? {
            return Err(VaultError::Integrity("status list count moved"));
        }
        let entry = CredentialEntry {
            list_id: l.list_id,
            idx,
            seq: l.next_seq,
            subject: Some(*subject),
            device_id: Some(device_id.to_owned()),
            expires_at,
            revoked_at_ms: None,
        };
        if !tx.insert_credential(&entry).await? {
            return Err(VaultError::Integrity("status index already taken"));
        }
        Ok((
            StatusRef {
                idx: idx.unsigned_abs(),
                uri: self.status_list_uri(l.list_id),
            },
            started,
        ))
    }

    /// Revokes the credential at `r` inside `tx`. With `owner`, only one
    /// of that person's (another person's, or an unknown one, is "not
    /// found" alike: the answer must not say which indexes are someone's).
    /// Returns whether it changed, and the person it belonged to.
    pub(crate) async fn revoke_entry(
        &self,
        tx: &mut AuditedTx,
        r: &StatusRef,
        owner: Option<&SubjectId>,
    ) -> Result<(Revoked, Option<SubjectId>), VaultError> {
        let not_found =
            || VaultError::BadRequest("no credential of this vault has that status entry".into());
        let list_id = self.status_list_id(&r.uri).ok_or_else(not_found)?;
        let idx = i64::try_from(r.idx).map_err(|_| not_found())?;
        let found = match owner {
            Some(owner) => tx.credential_entry_of(list_id, idx, owner).await?,
            None => tx.credential_entry(list_id, idx).await?,
        };
        let Some((e, mac_ok)) = found else {
            return Err(not_found());
        };
        if let Some(owner) = owner
            && !(mac_ok && e.subject.as_ref() == Some(owner))
        {
            return Err(not_found());
        }
        let changed = mac_ok && e.revoked_at_ms.is_none();
        if changed || !mac_ok {
            tx.revoke_credential(&e, self.now_millis(), false).await?;
        }
        Ok((Revoked { revoked: changed }, e.subject.filter(|_| mac_ok)))
    }

    /// The issuance that started the list `uri` names committed: no list
    /// at or below it is started again.
    pub(crate) fn status_list_started(&self, uri: &str) {
        if let Some(id) = self.status_list_id(uri) {
            self.status_lists.seen(id);
        }
    }

    /// A revocation (or a new list) committed: the next token request
    /// rebuilds.
    pub(crate) fn status_changed(&self) {
        self.status_lists.cache().generation += 1;
    }

    /// After a call that may have revoked: rebuild if it did, or if its
    /// commit's outcome is unknown (a storage failure during the commit
    /// may still have committed). A call that changed nothing costs no
    /// rebuild. `DeadlineExceeded` is not uncertain: it is answered only
    /// for a request that was not executed (its deadline passed before it
    /// began or while it queued for the writer; a commit cut short is
    /// `OutcomeUnknown`), and counting it would let any partner with
    /// `subjects.delete` force a rebuild and re-signing of every list per
    /// call by sending deletions that are already late.
    pub(crate) fn status_maybe_changed<T>(
        &self,
        r: &Result<T, VaultError>,
        changed: impl FnOnce(&T) -> bool,
    ) {
        let uncertain = |e: &VaultError| {
            matches!(
                e,
                VaultError::Storage(_)
                    | VaultError::AuditUnavailable(_)
                    | VaultError::OutcomeUnknown(_)
            )
        };
        if r.as_ref().map_or_else(uncertain, changed) {
            self.status_changed();
        }
    }

    /// The operator revokes a credential (`CredentialService.RevokeCredential`,
    /// role `credentials.revoke`).
    pub async fn revoke_credential(
        &self,
        caller: &Caller,
        r: &StatusRef,
    ) -> Result<Revoked, VaultError> {
        let out = self
            .handle(caller, Action::RevokeCredential, async |req| {
                // Named by list and index, which any relying party sees in
                // a presentation: its records must not hand it the vault's
                // subject id (the vault's own record names it).
                req.hide_subject();
                let mut tx = self.begin().await?;
                let (out, subject) = self.revoke_entry(&mut tx, r, None).await?;
                if let Some(s) = subject {
                    req.about(s);
                }
                let detail = format!(
                    "op=revoke_credential list={} idx={} revoked={}",
                    r.uri, r.idx, out.revoked
                );
                self.commit(tx, req, subject.as_ref(), detail).await?;
                Ok(out)
            })
            .await;
        self.status_maybe_changed(&out, |o| o.revoked);
        out
    }

    /// The signed token of the list `uri` names (empty: the newest list).
    pub async fn status_list_token(
        &self,
        caller: &Caller,
        uri: &str,
    ) -> Result<Arc<String>, VaultError> {
        self.handle(caller, Action::GetStatusList, async |_| {
            let tokens = self.current_tokens().await?;
            let token = if uri.is_empty() {
                tokens.values().next_back()
            } else {
                self.status_list_id(uri).and_then(|id| tokens.get(&id))
            };
            token.cloned().ok_or_else(|| {
                VaultError::BadRequest(if uri.is_empty() {
                    "no credential has been issued yet, so there is no status list".into()
                } else {
                    "no status list of this vault has that URI".into()
                })
            })
        })
        .await
    }

    /// The tokens, rebuilt when older than the ttl or a revocation came
    /// since. One rebuild runs at a time; those waiting take its result.
    async fn current_tokens(&self) -> Result<BTreeMap<i64, Arc<String>>, VaultError> {
        let fresh = |c: &StatusCache, now: i64, ttl: i64| {
            c.built_at.is_some_and(|b| now - b < ttl) && c.built_generation == c.generation
        };
        let ttl = i64::from(self.credential_settings().status_list_ttl_seconds);
        {
            let c = self.status_lists.cache();
            if fresh(&c, self.now_secs(), ttl) {
                return Ok(c.tokens.clone());
            }
        }
        let _one = self.status_lists.rebuild.lock().await;
        {
            let c = self.status_lists.cache();
            if fresh(&c, self.now_secs(), ttl) {
                return Ok(c.tokens.clone());
            }
        }
        self.rebuild_status_lists().await
    }

    /// Builds and signs every list from the store. Each list's row is
    /// read before its entries (a credential placed in between keeps its
    /// own state, see [`status::build_list`]). A list that cannot be built
    /// (its row fails its check, its key version is gone, its entries do
    /// not load) is left out and logged: its token is refused rather than
    /// published wrong, and the other lists are still served.
    async fn rebuild_status_lists(&self) -> Result<BTreeMap<i64, Arc<String>>, VaultError> {
        let generation = self.status_lists.cache().generation;
        let now = self.now_secs();
        let ttl = self.credential_settings().status_list_ttl_seconds;
        let key = self.issuer_key()?;
        let mut tokens = BTreeMap::new();
        for (list_id, l) in self.store().status_lists().await? {
            let l = match l {
                // Only a row that verifies counts as a list that existed: a
                // forged one with a huge id would block every new list.
                Ok(l) => {
                    self.status_lists.seen(l.list_id);
                    l
                }
                Err(e) => {
                    tracing::error!(list_id, error = %e, "status list row refused; its token is not published");
                    continue;
                }
            };
            match self.sign_list(&l, &key, now, ttl).await {
                Ok(token) => {
                    tokens.insert(l.list_id, Arc::new(token));
                }
                Err(e) => {
                    tracing::error!(list_id, error = %e, "status list not rebuilt; its token is not published");
                }
            }
        }
        let mut c = self.status_lists.cache();
        c.tokens = tokens.clone();
        c.built_at = Some(now);
        c.built_generation = generation;
        Ok(tokens)
    }

    /// Builds and signs one list (the permutation key of its version, its
    /// entries from the store; building and signing off the async
    /// workers).
    async fn sign_list(
        &self,
        l: &StatusListState,
        key: &Arc<idvault_core::sdjwt::IssuerKey>,
        now: i64,
        ttl: u32,
    ) -> Result<String, VaultError> {
        let perm = self.permutation(l)?;
        let entries = self.store().credential_entries(l.list_id).await?;
        let uri = self.status_list_uri(l.list_id);
        let key = Arc::clone(key);
        let l = *l;
        tokio::task::spawn_blocking(move || {
            let list = status::build_list(&l, &perm, entries)?;
            let spec = ListSpec {
                uri: &uri,
                issued_at: now,
                expires_at: now + STATUS_EXP_TTLS * i64::from(ttl),
                ttl: u64::from(ttl),
            };
            Some(status::sign_status_list(&key, &spec, &list))
        })
        .await
        .map_err(|_| VaultError::Internal("status list build"))?
        .ok_or(VaultError::Integrity("status list size"))
    }

    /// Re-signs the lists every ttl (so a relying party's copy never goes
    /// stale while the vault runs), until `stop`.
    pub async fn run_status_lists(self: Arc<Self>, stop: tokio::sync::watch::Receiver<bool>) {
        let every = Duration::from_secs(u64::from(
            self.credential_settings().status_list_ttl_seconds,
        ));
        let (this, first) = (&self, tokio::time::Instant::now());
        super::periodic::every(first, every, stop, || async move {
            let _one = this.status_lists.rebuild.lock().await;
            if let Err(e) = this.rebuild_status_lists().await {
                tracing::error!(error = %e, "re-signing the status lists failed");
            }
        })
        .await;
    }

    /// The live status check of `VerifyPresentation`: the credential's
    /// entry must be one of this vault's, its row must verify and it must
    /// not be revoked. Read from the database (not the published token),
    /// so a revocation on any replica counts at once.
    pub(crate) async fn check_status(&self, v: &Verified) -> Result<(), VaultError> {
        let refuse = |e| Err(VaultError::Credential(e));
        let Some(claim) = v.status.as_ref() else {
            return refuse(SdJwtError::Status("credential has no status claim"));
        };
        let r = StatusRef::from_claim(claim).map_err(VaultError::Credential)?;
        let Some(list_id) = self.status_list_id(&r.uri) else {
            return refuse(SdJwtError::Status("status list is not this vault's"));
        };
        let Ok(idx) = i64::try_from(r.idx) else {
            return refuse(SdJwtError::Status("status index out of range"));
        };
        match self.store().credential_entry(list_id, idx).await? {
            // The row is this credential's: its MACed expiry is the one the
            // credential carries (a row given to a later credential at the
            // same index has a later one).
            Some((e, true)) if e.revoked_at_ms.is_none() && e.expires_at == v.expires_at => Ok(()),
            // Revoked, a row that does not verify or is another
            // credential's, or none at all (the issuer signed this index,
            // so its row was removed).
            _ => refuse(SdJwtError::Revoked),
        }
    }
}
