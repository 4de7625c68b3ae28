//! Device requests: what a person's enrolled device asks the vault to do,
//! once its signed request has verified and decoded
//! ([`crate::wire::decode_device_request`]). It names consent and rules
//! actions alike, so it stands beside both modules, not in either.
//!
//! Plain values only: nothing here decodes bytes, checks a signature or
//! decides whether the action is allowed; the request's replay and time
//! window checks happen where it is used.

use crate::consent::ID_LEN;
use crate::rules::Rule;

/// What a device asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceAction {
    /// List the subject's release receipts.
    ListReceipts,
    /// Revoke a consent.
    RevokeConsent([u8; ID_LEN]),
    /// List the subject's devices.
    ListDevices,
    /// Revoke a device of the same subject.
    RevokeDevice(String),
    /// Link a trusted entity (SPIFFE id) to the person's profile.
    LinkEntity(String),
    /// Unlink an entity, removing the rules that name it.
    UnlinkEntity(String),
    /// Replace the person's rules (validated, sorted by id).
    SetRules(Vec<Rule>),
    /// List linked entities and rules.
    ListRules,
    /// Suggest rule sets from similar people's adoptions.
    SuggestRules,
    /// Issue a digital ID.
    IssueCredential {
        /// The claims (empty: every claim the person's fields allow);
        /// valid, unique and sorted.
        claims: Vec<String>,
        /// The one-time key the credential is sealed to.
        response_key: crate::consent::ReleasePublicKey,
    },
    /// Revoke one of the person's digital IDs, named by its status list
    /// entry.
    RevokeCredential(crate::sdjwt::status::StatusRef),
    /// What a typed transaction code is for.
    LookupTransaction(crate::transaction::TransactionCode),
    /// The person's answer to a transaction.
    AnswerTransaction {
        /// The transaction.
        id: [u8; crate::transaction::TRANSACTION_ID_LEN],
        /// Its code, as typed.
        code: crate::transaction::TransactionCode,
        /// Approved or declined.
        approve: bool,
        /// Approved claims (valid, unique, sorted; always empty when
        /// declined).
        claims: Vec<String>,
        /// [`crate::transaction::shown_digest`] of what the phone showed.
        shown: [u8; 32],
    },
}

/// A verified device request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCall {
    /// Request id (replay protection).
    pub request_id: [u8; ID_LEN],
    /// Unix seconds.
    pub issued_at: i64,
    /// The action.
    pub action: DeviceAction,
}
