//! One-time transaction codes (docs/digital-id.md, "Transaction codes"):
//! a third party asks for a code naming a person by its pairwise token, a
//! binding message and the claims it wants; the person's phone looks the
//! code up and answers with signed device requests (the answer carries a
//! digest of what the phone showed); the third party waits for the outcome
//! and, when approved, gets an assertion signed by the issuer key.
//!
//! Every outcome is its own audited answer: approved, denied, expired
//! (`code_expired`), a wrong code (`wrong_code`, counted against the
//! person's outstanding codes, which die at [`MAX_ATTEMPTS`]), a code
//! entered on another person's device (audited as `wrong_person`, answered
//! as `wrong_code` so a guesser learns nothing; that transaction dies), an
//! answered code used again (`code_used`), an answer to something else
//! than what was shown (`shown_mismatch`), a replayed request
//! (`request_replayed`), and a device that entered too many wrong codes
//! (`too_many_attempts`). The wrong-code writes are kept although the
//! request is refused ([`Vault::commit_refused`]).
//!
//! Lock order, as everywhere a person's rows are written: the subject row,
//! then the device, then the transactions.

use std::collections::BTreeSet;
use std::time::Duration;

use idvault_core::consent::{Device, Refusal};
use idvault_core::crypto;
use idvault_core::device_request::{DeviceAction, DeviceCall};
use idvault_core::sdjwt::claims;
use idvault_core::transaction::{
    self as txn, AssertionSpec, MAX_ATTEMPTS, MAX_CODE_TTL_SECS, Transaction, TransactionCode,
    TxState,
};
use idvault_policies::Action;
use zeroize::Zeroizing;

use super::consent::{Signed, refused};
use super::pipeline::Request;
use crate::service::{Caller, Vault, VaultError};
use crate::store::AuditedTx;

/// Wrong codes a device may enter per [`FAILURE_WINDOW_MS`] before it is
/// refused outright: with 40-bit codes, guessing another person's code
/// takes about 2^40 / outstanding codes tries.
pub const MAX_DEVICE_FAILURES: i64 = 10;
/// The window of [`MAX_DEVICE_FAILURES`], ms.
pub const FAILURE_WINDOW_MS: i64 = 3_600_000;
/// Pending transactions a third party may have at once.
pub const MAX_PENDING_PER_PARTNER: i64 = 10_000;
/// Pending transactions one third party may have for one person: a
/// hostile third party cannot take a person's place from everyone else.
pub const MAX_PENDING_PER_PARTNER_PERSON: i64 = 3;
/// Pending transactions one person may have at once, all third parties
/// together.
pub const MAX_PENDING_PER_PERSON: i64 = 64;
/// Shortest code lifetime a third party may ask for, seconds: with the
/// per-partner cap on pending codes this bounds how fast it makes them.
pub const MIN_CODE_TTL_SECS: i64 = 30;
/// How long a transaction is kept after it expires (then the retention
/// job removes it), ms.
pub const TRANSACTION_KEEP_MS: i64 = 3_600_000;
/// Longest `AwaitTransaction` wait, seconds.
pub const MAX_WAIT_SECS: u32 = 30;
/// How often a waiting call re-reads the transaction (an answer on
/// another replica is seen this late at most; on this one at once).
const POLL: Duration = Duration::from_millis(250);

/// A new transaction and its code.
#[derive(Debug)]
pub struct CodeIssued {
    /// `tx_…`.
    pub transaction_id: String,
    /// The code.
    pub code: TransactionCode,
    /// Unix seconds.
    pub expires_at: i64,
}

/// What the phone shows before the person answers.
#[derive(Clone)]
pub struct Lookup {
    /// `tx_…`.
    pub transaction_id: String,
    /// The third party's SPIFFE id.
    pub requester: String,
    /// Its binding message.
    pub binding_message: String,
    /// Claims it asks for.
    pub claims: Vec<String>,
    /// Unix seconds.
    pub expires_at: i64,
}

impl std::fmt::Debug for Lookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The binding message may be personal ("Pay 900 EUR to …").
        f.debug_struct("Lookup")
            .field("transaction_id", &self.transaction_id)
            .field("claims", &self.claims)
            .finish_non_exhaustive()
    }
}

/// Where a third party's transaction stands.
pub struct Outcome {
    /// `pending`, `approved`, `denied`, `expired`, `too_many_attempts`,
    /// `wrong_person`.
    pub state: &'static str,
    /// The signed assertion, when approved (and within
    /// [`txn::ASSERTION_TTL_SECS`] of the approval).
    pub assertion: Option<Zeroizing<String>>,
    /// Approved claim names.
    pub approved: Vec<String>,
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The assertion carries claim values.
        f.debug_struct("Outcome")
            .field("state", &self.state)
            .field("approved", &self.approved)
            .finish_non_exhaustive()
    }
}

/// Checks and sorts a claim list from a third party.
fn claim_set(claims: Vec<String>) -> Result<Vec<String>, VaultError> {
    let n = claims.len();
    let set: BTreeSet<String> = claims.into_iter().collect();
    if set.len() != n || n > claims::CLAIM_NAMES.len() || !set.iter().all(|c| claims::is_claim(c)) {
        return Err(VaultError::BadRequest(
            "claims must be unique names of docs/digital-id.md".into(),
        ));
    }
    Ok(set.into_iter().collect())
}

/// Counts a wrong code against each of `subject`'s outstanding codes
/// (locked by the caller's subject lock); those reaching [`MAX_ATTEMPTS`]
/// end. Returns how many were counted and how many ended.
async fn count_wrong_code(
    tx: &mut AuditedTx,
    subject: &idvault_core::subject::SubjectId,
    now: i64,
) -> Result<(usize, usize), VaultError> {
    let pending = tx
        .pending_transactions_of(
            subject,
            now,
            u32::try_from(MAX_PENDING_PER_PERSON).unwrap_or(64),
        )
        .await?;
    let mut ended = 0;
    for t in &pending {
        let attempts = t.attempts + 1;
        let counted = Transaction {
            attempts,
            state: if attempts >= MAX_ATTEMPTS {
                TxState::TooManyAttempts
            } else {
                TxState::Pending
            },
            ..t.clone()
        };
        if tx.update_transaction(t, &counted).await? && counted.state == TxState::TooManyAttempts {
            ended += 1;
        }
    }
    Ok((pending.len(), ended))
}

/// The catalogue fields `claims` are made from (what the policy decides
/// on).
fn fields_of(claims: &[String]) -> Vec<&'static str> {
    claims
        .iter()
        .flat_map(|c| claims::claim_fields(c).iter().copied())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The vault's own record of a refused code entry: `wrong_code`, or
/// `wrong_person` with the transaction whose code another person's phone
/// entered (the relaying partner's own record says `wrong_code` either way).
pub const CODE_REFUSED_ACTION: &str = "TransactionCodeRefused";

impl Vault {
    fn code_mac(&self, code: &TransactionCode, version: u32) -> Result<[u8; 32], VaultError> {
        let key = self.keys().transaction_code_key(version)?;
        Ok(crypto::hmac_sha256(
            key.expose(),
            &[code.as_str().as_bytes()],
        ))
    }

    /// The code's MACs a lookup tries: under the current root key version
    /// (what new codes are stored under) and the one before it (a code
    /// made just before a rotation still works; codes live 5 minutes).
    fn code_macs(&self, code: &TransactionCode) -> Result<Vec<[u8; 32]>, VaultError> {
        let v = self.keys().current_version();
        let mut out = vec![self.code_mac(code, v)?];
        if v > 1
            && let Ok(m) = self.code_mac(code, v - 1)
        {
            out.push(m);
        }
        Ok(out)
    }

    /// The SPIFFE id of a transaction's third party, if still registered.
    fn requester(&self, t: &Transaction) -> Option<String> {
        self.registry()
            .partners()
            .iter()
            .find(|p| p.name == t.partner)
            .map(|p| p.spiffe_id.clone())
    }

    /// `TransactionService.RequestCode`.
    pub async fn request_code(
        &self,
        caller: &Caller,
        pairwise: &str,
        binding_message: &str,
        wanted: Vec<String>,
        ttl_secs: u32,
    ) -> Result<CodeIssued, VaultError> {
        self.handle(caller, Action::RequestTransactionCode, async |req| {
            // Named by the third party's pairwise token: its records must
            // not hand it the vault's subject id.
            req.hide_subject();
            if !txn::valid_binding_message(binding_message) {
                return Err(VaultError::BadRequest(format!(
                    "binding_message must be 1 to {} characters without control, format or direction characters, not starting or ending with a space",
                    txn::MAX_BINDING_MESSAGE
                )));
            }
            let wanted = claim_set(wanted)?;
            let ttl = match i64::from(ttl_secs) {
                0 => MAX_CODE_TTL_SECS,
                t if (MIN_CODE_TTL_SECS..=MAX_CODE_TTL_SECS).contains(&t) => t,
                _ => {
                    return Err(VaultError::BadRequest(format!(
                        "ttl_seconds must be {MIN_CODE_TTL_SECS} to {MAX_CODE_TTL_SECS} (0: {MAX_CODE_TTL_SECS})"
                    )));
                }
            };
            if !super::matching::valid_pairwise_token(pairwise) {
                return Err(VaultError::NotFound);
            }
            let mut tx = self.begin().await?;
            let subject = tx
                .subject_of_pairwise(&req.partner.name, pairwise)
                .await?
                .ok_or(VaultError::NotFound)?;
            // The policy sees the catalogue fields the claims are made
            // from (an operator may forbid some, as for credentials).
            req.decide_on_subject(&subject, &fields_of(&wanted))?;
            // The per-subject guard (locked on PostgreSQL): the counts and
            // the insert are ordered per person, and a deletion racing
            // this request either removes the new row or has happened.
            tx.subject(&subject).await?.ok_or(VaultError::NotFound)?;
            let now = self.now_millis();
            if tx
                .count_pending_transactions(Some(&req.partner.name), None, now)
                .await?
                >= MAX_PENDING_PER_PARTNER
            {
                return Err(VaultError::Limit(
                    "this partner has 10000 transactions pending; wait for some to end",
                ));
            }
            // One message for both person caps: it must not tell a third
            // party whether others are asking about the same person.
            if tx
                .count_pending_transactions(Some(&req.partner.name), Some(&subject), now)
                .await?
                >= MAX_PENDING_PER_PARTNER_PERSON
                || tx
                    .count_pending_transactions(None, Some(&subject), now)
                    .await?
                    >= MAX_PENDING_PER_PERSON
            {
                return Err(VaultError::Limit(
                    "too many transactions are pending for this person; try again later",
                ));
            }
            // A fresh id and code; a code equal to one stored under the
            // current key version (about one in 2^40 / outstanding) is
            // drawn again.
            for _ in 0..4 {
                let code = TransactionCode::generate(self.rng())
                    .map_err(idvault_core::keys::KeyError::from)?;
                let mut id = [0u8; txn::TRANSACTION_ID_LEN];
                self.rng()
                    .fill(&mut id)
                    .map_err(idvault_core::keys::KeyError::from)?;
                let t = Transaction {
                    id,
                    code_mac: self.code_mac(&code, self.keys().current_version())?,
                    partner: req.partner.name.clone(),
                    subject,
                    pairwise: pairwise.to_owned(),
                    binding_message: binding_message.to_owned(),
                    claims: wanted.clone(),
                    created_at_ms: now,
                    expires_at_ms: now + ttl * 1000,
                    attempts: 0,
                    state: TxState::Pending,
                    answered_by: None,
                    answered_at_ms: None,
                    approved: Vec::new(),
                };
                if tx.insert_transaction(&t).await? {
                    let detail = format!(
                        "op=request_code txn={} claims={} expires_at_ms={}",
                        t.id_text(),
                        wanted.join(","),
                        t.expires_at_ms
                    );
                    self.commit(tx, req, Some(&subject), detail).await?;
                    return Ok(CodeIssued {
                        transaction_id: t.id_text(),
                        code,
                        expires_at: t.expires_at_ms / 1000,
                    });
                }
            }
            Err(VaultError::Internal("no free transaction code"))
        })
        .await
    }

    /// `DeviceService.LookupTransaction`: what a typed code is for.
    pub async fn lookup_transaction(
        &self,
        caller: &Caller,
        s: Signed,
    ) -> Result<Lookup, VaultError> {
        let out = self
            .handle(caller, Action::DeviceCall, async |req| {
                let (device, call) = self
                    .verified_device_request(req, &s, |a| {
                        matches!(a, DeviceAction::LookupTransaction(_))
                    })
                    .await?;
                let DeviceAction::LookupTransaction(code) = &call.action else {
                    return Err(refused(Refusal::WrongAction));
                };
                let (tx, t) = self.by_code(req, &device, &call, code, None).await?;
                // A third party removed from the registry since: nothing
                // to approve for.
                let requester = self
                    .requester(&t)
                    .ok_or_else(|| refused(Refusal::EntityUnknown))?;
                let detail = format!(
                    "op=lookup_transaction device={} txn={}",
                    device.device_id,
                    t.id_text()
                );
                self.commit(tx, req, Some(&device.subject), detail).await?;
                Ok(Lookup {
                    transaction_id: t.id_text(),
                    requester,
                    binding_message: t.binding_message,
                    claims: t.claims,
                    expires_at: t.expires_at_ms / 1000,
                })
            })
            .await;
        // A refusal that ended transactions woke their waiting third
        // parties itself (`refuse_code`); any other refusal changed nothing.
        out
    }

    /// `DeviceService.AnswerTransaction`: the person approves (sharing the
    /// claims they chose of those asked for, possibly none) or declines
    /// what their phone showed. Returns the new state.
    pub async fn answer_transaction(
        &self,
        caller: &Caller,
        s: Signed,
    ) -> Result<&'static str, VaultError> {
        let state = self
            .handle(caller, Action::DeviceCall, async |req| {
                let (device, call) = self
                    .verified_device_request(req, &s, |a| {
                        matches!(a, DeviceAction::AnswerTransaction { .. })
                    })
                    .await?;
                let DeviceAction::AnswerTransaction {
                    id,
                    code,
                    approve,
                    claims: approved,
                    shown,
                } = &call.action
                else {
                    return Err(refused(Refusal::WrongAction));
                };
                let (mut tx, t) = self.by_code(req, &device, &call, code, Some(id)).await?;
                // The answer is to what the phone showed, or to nothing: a
                // lookup answer altered on its way (another binding
                // message, more claims) does not match the stored one.
                let requester = self
                    .requester(&t)
                    .ok_or_else(|| refused(Refusal::EntityUnknown))?;
                let expected = txn::shown_digest(
                    &t.id_text(),
                    &requester,
                    &t.binding_message,
                    &t.claims,
                    t.expires_at_ms / 1000,
                );
                if !crypto::ct_eq(&expected, shown) {
                    return Err(refused(Refusal::ShownMismatch));
                }
                if !approved.iter().all(|c| t.claims.contains(c)) {
                    return Err(refused(Refusal::Malformed));
                }
                let answered = Transaction {
                    state: if *approve {
                        TxState::Approved
                    } else {
                        TxState::Denied
                    },
                    answered_by: Some(device.device_id.clone()),
                    answered_at_ms: Some(self.now_millis()),
                    approved: if *approve {
                        approved.clone()
                    } else {
                        Vec::new()
                    },
                    ..t.clone()
                };
                // Conditional on it still being pending as read: two
                // answers racing (PostgreSQL replicas), one wins.
                if !tx.update_transaction(&t, &answered).await? {
                    return Err(refused(Refusal::CodeUsed));
                }
                let detail = format!(
                    "op=answer_transaction device={} txn={} state={} claims={}",
                    device.device_id,
                    t.id_text(),
                    answered.state.name(),
                    answered.approved.join(",")
                );
                self.commit(tx, req, Some(&device.subject), detail).await?;
                Ok(answered.state.name())
            })
            .await;
        // Only an answer wakes the waiting third parties: every waiter of
        // every partner reads its row when woken, so a refused call (which
        // anyone reaching the vault can make) must not wake them.
        if state.is_ok() {
            self.wake_transaction_waiters();
        }
        state
    }

    /// The pending, unexpired transaction of the device's person that
    /// `code` names (and that is `expect`, when given), inside an open
    /// transaction with the request id recorded. Every other case is its
    /// own refusal; a wrong code and another person's code are recorded
    /// with what they changed.
    async fn by_code(
        &self,
        req: &mut Request<'_>,
        device: &Device,
        call: &DeviceCall,
        code: &TransactionCode,
        expect: Option<&[u8; txn::TRANSACTION_ID_LEN]>,
    ) -> Result<(AuditedTx, Transaction), VaultError> {
        if self.store().device_request_seen(&call.request_id).await? {
            return Err(refused(Refusal::RequestReplayed));
        }
        let macs = self.code_macs(code)?;
        let now = self.now_millis();
        // A phone past its limit of wrong codes is refused before anything
        // is read or locked (the locked count below stays the authority):
        // otherwise every further entry would still lock the person a code
        // it holds belongs to.
        if self
            .store()
            .code_failures_since(&device.device_id, now - FAILURE_WINDOW_MS)
            .await?
            >= MAX_DEVICE_FAILURES
        {
            return Err(refused(Refusal::TooManyAttempts));
        }
        // Whose code it is, read before any lock. An entry writes its own
        // person's codes (the count below) and, when the code is someone
        // else's and still pending, that code too; both persons' rows are
        // locked first, in one order. Without it two phones entering each
        // other's codes at once each held one person's codes and waited
        // for the other's (PostgreSQL aborted one as a deadlock). Another
        // person's row is locked only for a pending, unexpired code, the
        // one case that writes it, and that entry ends the code: a phone
        // cannot hold someone's row again and again with one code it
        // knows. A code's person never changes and it never becomes
        // pending again, so the locked read below finds the same one,
        // unless the code was issued in between (a fresh random code,
        // entered before it was shown to anyone).
        let mut owner = None;
        for mac in &macs {
            if let Some(t) = self.store().transaction_by_code(mac).await? {
                owner = (t.state == TxState::Pending && t.expires_at_ms > now).then_some(t.subject);
                break;
            }
        }
        let mut persons = vec![device.subject];
        persons.extend(owner.filter(|o| *o != device.subject));
        persons.sort_unstable();
        let mut tx = self.begin().await?;
        for person in &persons {
            let row = tx.subject(person).await?;
            if *person == device.subject && row.is_none() {
                return Err(VaultError::NotFound);
            }
        }
        self.still_active(&mut tx, device).await?;
        // Counted under the device's lock (PostgreSQL) or the writer
        // (SQLite): concurrent guesses from one device are seen one after
        // the other, so a burst cannot outrun the limit.
        if tx
            .code_failures_since(&device.device_id, now - FAILURE_WINDOW_MS)
            .await?
            >= MAX_DEVICE_FAILURES
        {
            return Err(refused(Refusal::TooManyAttempts));
        }
        if !tx
            .insert_device_request(&call.request_id, &device.device_id, now)
            .await?
        {
            return Err(refused(Refusal::RequestReplayed));
        }
        let mut found = None;
        for mac in &macs {
            found = tx.transaction_by_code(mac).await?;
            if found.is_some() {
                break;
            }
        }
        match found {
            Some(t) if t.subject != device.subject => {
                // Someone else's code on this phone: a relay, a mix-up or
                // a guess. A pending code ends, so it cannot be tried
                // further; the phone is told only "wrong code" (a guesser
                // must not learn it hit one).
                // The record says whether this entry ended it: an answer
                // racing it may have been first.
                let mut ended = false;
                if t.state == TxState::Pending && t.expires_at_ms > now {
                    let dead = Transaction {
                        state: TxState::WrongPerson,
                        answered_by: Some(device.device_id.clone()),
                        answered_at_ms: Some(now),
                        ..t.clone()
                    };
                    ended = tx.update_transaction(&t, &dead).await?;
                }
                tx.insert_code_failure(&device.device_id, now).await?;
                // Counted against the phone's own person as any wrong code
                // is, so the guesser cannot tell a hit from a miss.
                let (counted, own_ended) = count_wrong_code(&mut tx, &device.subject, now).await?;
                // The relaying wallet partner reads its own record back
                // (`GetInclusionProof`), so that record is the one a wrong
                // code gets, byte for byte in form (`wrong_code`, the
                // phone owner's codes counted and ended), as the phone is
                // told: the relay learns no more than the phone whether a
                // code entered was someone else's. The vault's own record
                // beside it (a wrong code gets one too, so the number of
                // records says nothing either) names the transaction.
                let vault_detail = format!(
                    "{} txn={} ended={ended}",
                    Refusal::WrongPerson.name(),
                    t.id_text()
                );
                let wake = ended || own_ended > 0;
                Err(self
                    .refuse_code(tx, req, device, (counted, own_ended), vault_detail, wake)
                    .await)
            }
            Some(t) if expect.is_none_or(|id| *id == t.id) => {
                if t.state != TxState::Pending {
                    Err(refused(Refusal::CodeUsed))
                } else if t.expires_at_ms <= now {
                    Err(refused(Refusal::CodeExpired))
                } else {
                    Ok((tx, t))
                }
            }
            // No transaction has this code, or it is another of this
            // person's: a wrong code, counted against every code of theirs
            // still outstanding.
            _ => {
                tx.insert_code_failure(&device.device_id, now).await?;
                let (counted, ended) = count_wrong_code(&mut tx, &device.subject, now).await?;
                let vault_detail = Refusal::WrongCode.name().to_owned();
                Err(self
                    .refuse_code(tx, req, device, (counted, ended), vault_detail, ended > 0)
                    .await)
            }
        }
    }

    /// Commits a refused code entry: the vault's own record
    /// ([`CODE_REFUSED_ACTION`], `vault_detail` saying what happened) and
    /// the relaying partner's refusal, `wrong_code` in one form whatever
    /// the code was (see the caller); with `wake`, it ended transactions,
    /// whose waiting third parties are woken.
    async fn refuse_code(
        &self,
        mut tx: AuditedTx,
        req: &mut Request<'_>,
        device: &Device,
        (counted, ended): (usize, usize),
        vault_detail: String,
        wake: bool,
    ) -> VaultError {
        if let Err(e) = self.add_leaf_of(
            &mut tx,
            CODE_REFUSED_ACTION,
            Some(&device.subject),
            format!(
                "request={} {vault_detail}",
                hex::encode(req.caller.request_id)
            ),
            None,
        ) {
            return e;
        }
        let detail = format!(
            "op=code device={} counted={counted} ended={ended}",
            device.device_id
        );
        let e = self
            .commit_refused(
                tx,
                req,
                Some(&device.subject),
                refused(Refusal::WrongCode),
                &detail,
            )
            .await;
        // Transactions it ended: their waiting third parties hear at once.
        if wake {
            self.wake_transaction_waiters();
        }
        e
    }

    /// Wakes every third party waiting in `AwaitTransaction` in this
    /// process; each reads its row. Only for a change to transactions.
    fn wake_transaction_waiters(&self) {
        self.transaction_wakeups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.transactions_changed.notify_waiters();
    }

    /// How many times the waiting third parties were woken (see
    /// `wake_transaction_waiters`): a refused call must not add to it.
    pub fn transaction_wakeups(&self) -> u64 {
        self.transaction_wakeups
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `TransactionService.AwaitTransaction`: the third party's own
    /// transaction, waiting up to `wait` while it is pending. An approved
    /// one comes with the assertion (for [`txn::ASSERTION_TTL_SECS`] after
    /// the approval, the policy asked again), its claims made from the
    /// person's newest values now: nothing of them is stored with the
    /// transaction. A final outcome read is audited; a pending one is not
    /// (polling would flood the log).
    pub async fn await_transaction(
        &self,
        caller: &Caller,
        id: &str,
        wait: Duration,
    ) -> Result<Outcome, VaultError> {
        self.handle(caller, Action::AwaitTransaction, async |req| {
            // Its transaction names the person by the third party's token.
            req.hide_subject();
            let id = txn::parse_id(id).ok_or(VaultError::NotFound)?;
            let mut until = tokio::time::Instant::now()
                + wait.min(Duration::from_secs(u64::from(MAX_WAIT_SECS)));
            // A second before the caller's own deadline, so the outcome
            // (and its audit record) reaches it.
            if let Some(d) = caller.deadline {
                until = until.min(d.checked_sub(Duration::from_secs(1)).unwrap_or(d));
            }
            let t = loop {
                // Registered before the read, so an answer between the
                // read and the wait is not missed.
                let changed = self.transactions_changed.notified();
                let t = self
                    .store()
                    .transaction(&id)
                    .await?
                    .filter(|t| t.partner == req.partner.name)
                    .ok_or(VaultError::NotFound)?;
                req.about(t.subject);
                let pending = t.state == TxState::Pending && t.expires_at_ms > self.now_millis();
                if !pending || tokio::time::Instant::now() >= until {
                    break t;
                }
                tokio::select! {
                    () = changed => {}
                    () = tokio::time::sleep(POLL) => {}
                    () = tokio::time::sleep_until(until) => {}
                }
            };
            let now_ms = self.now_millis();
            let state = match t.state {
                TxState::Pending if t.expires_at_ms <= now_ms => "expired",
                TxState::Pending => {
                    return Ok(Outcome {
                        state: "pending",
                        assertion: None,
                        approved: Vec::new(),
                    });
                }
                s => s.name(),
            };
            let fresh = t
                .answered_at_ms
                .is_some_and(|a| now_ms < a + txn::ASSERTION_TTL_SECS * 1000);
            let assertion = if t.state == TxState::Approved && fresh {
                req.decide_on_subject(&t.subject, &fields_of(&t.approved))?;
                Some(self.assertion(req, &t).await?)
            } else {
                None
            };
            // Claim values leave the vault with an assertion: on the
            // record, names only.
            let detail = format!(
                "op=outcome txn={} state={state} assertion={} claims={}",
                t.id_text(),
                assertion.is_some(),
                t.approved.join(",")
            );
            let tx = self.begin().await?;
            self.commit(tx, req, Some(&t.subject), detail).await?;
            Ok(Outcome {
                state,
                assertion,
                approved: t.approved.clone(),
            })
        })
        .await
    }

    /// The signed assertion of an approved transaction.
    async fn assertion(
        &self,
        req: &Request<'_>,
        t: &Transaction,
    ) -> Result<Zeroizing<String>, VaultError> {
        let now = self.now_secs();
        let made = if t.approved.is_empty() {
            Vec::new()
        } else {
            let (_, values) = self.newest_fields(&t.subject).await?;
            let pairs: Vec<_> = values.iter().map(|(n, v)| (*n, v.expose())).collect();
            claims::person_claims(&pairs, claims::civil_date(now), Some(t.approved.as_slice()))
        };
        let key = self.issuer_key()?;
        let txn_id = t.id_text();
        let spec = AssertionSpec {
            issuer: &self.credential_settings().issuer,
            audience: &req.caller.spiffe_id,
            subject: &t.pairwise,
            txn: &txn_id,
            binding_message: &t.binding_message,
            issued_at: now,
            expires_at: now + txn::ASSERTION_TTL_SECS,
        };
        txn::sign_assertion(&key, &spec, made)
            .map_err(|_| VaultError::Internal("assertion signing"))
    }
}
