//! One-time transaction codes (docs/digital-id.md, "Transaction codes"):
//! a third party asks for a code naming a person by its pairwise token, a
//! binding message and the claims it wants; the person's phone looks the
//! code up and answers with signed device requests; the third party waits
//! for the outcome and, when approved, gets an assertion signed by the
//! issuer key.
//!
//! Every outcome is its own audited answer: approved, denied, expired
//! (`code_expired`), a wrong code (`wrong_code`, counted against the
//! person's outstanding codes, which die at [`MAX_ATTEMPTS`]), a code
//! entered on another person's device (`wrong_person`, that transaction
//! dies), an answered code used again (`code_used`), a replayed request
//! (`request_replayed`), and a device that entered too many wrong codes
//! (`too_many_attempts`). The wrong-code writes are kept although the
//! request is refused ([`Vault::commit_refused`]).

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
/// Pending transactions one person may have at once (several third
/// parties may be waiting on them).
pub const MAX_PENDING_PER_PERSON: i64 = 16;
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
#[derive(Debug, Clone)]
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

/// Where a third party's transaction stands.
#[derive(Debug)]
pub struct Outcome {
    /// `pending`, `approved`, `denied`, `expired`, `too_many_attempts`,
    /// `wrong_person`.
    pub state: &'static str,
    /// The signed assertion, when approved.
    pub assertion: Option<Zeroizing<String>>,
    /// Approved claim names.
    pub approved: Vec<String>,
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

impl Vault {
    fn code_mac(&self, code: &TransactionCode) -> Result<[u8; 32], VaultError> {
        let key = self
            .keys()
            .transaction_code_key(self.keys().current_version())?;
        Ok(crypto::hmac_sha256(
            key.expose(),
            &[code.as_str().as_bytes()],
        ))
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
            if !txn::valid_binding_message(binding_message) {
                return Err(VaultError::BadRequest(format!(
                    "binding_message must be 1 to {} characters without control or direction-override characters, not starting or ending with a space",
                    txn::MAX_BINDING_MESSAGE
                )));
            }
            let wanted = claim_set(wanted)?;
            let ttl = match i64::from(ttl_secs) {
                0 => MAX_CODE_TTL_SECS,
                t if t <= MAX_CODE_TTL_SECS => t,
                _ => {
                    return Err(VaultError::BadRequest(format!(
                        "ttl_seconds must be at most {MAX_CODE_TTL_SECS}"
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
            let fields: Vec<&str> = wanted
                .iter()
                .flat_map(|c| claims::claim_fields(c).iter().copied())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            req.decide_on_subject(&subject, &fields)?;
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
            if tx
                .count_pending_transactions(None, Some(&subject), now)
                .await?
                >= MAX_PENDING_PER_PERSON
            {
                return Err(VaultError::Limit(
                    "this person has 16 transactions pending; try again later",
                ));
            }
            // A fresh id and code; a code equal to an outstanding one
            // (about one in 2^40 / outstanding) is drawn again.
            for _ in 0..4 {
                let code = TransactionCode::generate(self.rng()).map_err(idvault_core::keys::KeyError::from)?;
                let mut id = [0u8; txn::TRANSACTION_ID_LEN];
                self.rng().fill(&mut id).map_err(idvault_core::keys::KeyError::from)?;
                let t = Transaction {
                    id,
                    code_mac: self.code_mac(&code)?,
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
        self.handle(caller, Action::DeviceCall, async |req| {
            let (device, call) = self
                .verified_device_request(req, &s, |a| {
                    matches!(a, DeviceAction::LookupTransaction(_))
                })
                .await?;
            let DeviceAction::LookupTransaction(code) = &call.action else {
                return Err(refused(Refusal::WrongAction));
            };
            let (tx, t) = self.by_code(req, &device, &call, code, None).await?;
            let detail = format!(
                "op=lookup_transaction device={} txn={}",
                device.device_id,
                t.id_text()
            );
            self.commit(tx, req, Some(&device.subject), detail).await?;
            let requester = self
                .registry()
                .partners()
                .iter()
                .find(|p| p.name == t.partner)
                .map(|p| p.spiffe_id.clone())
                .unwrap_or_else(|| format!("(unregistered partner {})", t.partner));
            Ok(Lookup {
                transaction_id: t.id_text(),
                requester,
                binding_message: t.binding_message,
                claims: t.claims,
                expires_at: t.expires_at_ms / 1000,
            })
        })
        .await
    }

    /// `DeviceService.AnswerTransaction`: the person approves (all or some
    /// of the claims asked for) or declines. Returns the new state.
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
                } = &call.action
                else {
                    return Err(refused(Refusal::WrongAction));
                };
                let (mut tx, t) = self.by_code(req, &device, &call, code, Some(id)).await?;
                let approved = match (approve, approved.is_empty()) {
                    (false, _) => Vec::new(),
                    (true, true) => t.claims.clone(),
                    (true, false) if approved.iter().all(|c| t.claims.contains(c)) => {
                        approved.clone()
                    }
                    (true, false) => return Err(refused(Refusal::Malformed)),
                };
                let answered = Transaction {
                    state: if *approve {
                        TxState::Approved
                    } else {
                        TxState::Denied
                    },
                    answered_by: Some(device.device_id.clone()),
                    answered_at_ms: Some(self.now_millis()),
                    approved,
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
            .await?;
        self.transactions_changed.notify_waiters();
        Ok(state)
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
        let now = self.now_millis();
        let failures = self
            .store()
            .code_failures_since(&device.device_id, now - FAILURE_WINDOW_MS)
            .await?;
        if failures >= MAX_DEVICE_FAILURES {
            return Err(refused(Refusal::TooManyAttempts));
        }
        if self.store().device_request_seen(&call.request_id).await? {
            return Err(refused(Refusal::RequestReplayed));
        }
        let mac = self.code_mac(code)?;
        let mut tx = self.begin().await?;
        self.still_active(&mut tx, device).await?;
        if !tx
            .insert_device_request(&call.request_id, &device.device_id, now)
            .await?
        {
            return Err(refused(Refusal::RequestReplayed));
        }
        let found = tx.transaction_by_code(&mac).await?;
        match found {
            Some(t) if t.subject != device.subject => {
                // Someone else's code on this phone: a relay or a mix-up.
                // That transaction ends, so the code cannot be tried
                // further; its third party sees `wrong_person`.
                let ended = t.state == TxState::Pending;
                if ended {
                    let dead = Transaction {
                        state: TxState::WrongPerson,
                        answered_by: Some(device.device_id.clone()),
                        answered_at_ms: Some(now),
                        ..t.clone()
                    };
                    tx.update_transaction(&t, &dead).await?;
                }
                tx.insert_code_failure(&device.device_id, now).await?;
                let detail = format!(
                    "op=code device={} txn={} ended={ended}",
                    device.device_id,
                    t.id_text()
                );
                Err(self
                    .commit_refused(
                        tx,
                        req,
                        Some(&device.subject),
                        refused(Refusal::WrongPerson),
                        &detail,
                    )
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
                let pending = tx
                    .pending_transactions_of(
                        &device.subject,
                        now,
                        u32::try_from(MAX_PENDING_PER_PERSON).unwrap_or(16),
                    )
                    .await?;
                let mut ended = 0;
                for t in &pending {
                    let attempts = t.attempts + 1;
                    let counted = Transaction {
                        attempts,
                        state: if attempts >= MAX_ATTEMPTS {
                            ended += 1;
                            TxState::TooManyAttempts
                        } else {
                            TxState::Pending
                        },
                        ..t.clone()
                    };
                    tx.update_transaction(t, &counted).await?;
                }
                let detail = format!(
                    "op=code device={} counted={} ended={ended}",
                    device.device_id,
                    pending.len()
                );
                Err(self
                    .commit_refused(
                        tx,
                        req,
                        Some(&device.subject),
                        refused(Refusal::WrongCode),
                        &detail,
                    )
                    .await)
            }
        }
    }

    /// `TransactionService.AwaitTransaction`: the third party's own
    /// transaction, waiting up to `wait` while it is pending. An approved
    /// one comes with the assertion, its claims made from the person's
    /// newest values now (nothing of them is stored with the transaction).
    pub async fn await_transaction(
        &self,
        caller: &Caller,
        id: &str,
        wait: Duration,
    ) -> Result<Outcome, VaultError> {
        self.handle(caller, Action::AwaitTransaction, async |req| {
            let id = txn::parse_id(id).ok_or(VaultError::NotFound)?;
            let until = tokio::time::Instant::now()
                + wait.min(Duration::from_secs(u64::from(MAX_WAIT_SECS)));
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
            let state = match t.state {
                TxState::Pending if t.expires_at_ms <= self.now_millis() => "expired",
                s => s.name(),
            };
            if t.state != TxState::Approved {
                return Ok(Outcome {
                    state,
                    assertion: None,
                    approved: Vec::new(),
                });
            }
            let assertion = self.assertion(req, &t).await?;
            // Claim values left the vault: on the record, names only.
            let detail = format!(
                "op=assertion txn={} claims={}",
                t.id_text(),
                t.approved.join(",")
            );
            let tx = self.begin().await?;
            self.commit(tx, req, Some(&t.subject), detail).await?;
            Ok(Outcome {
                state,
                assertion: Some(assertion),
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
