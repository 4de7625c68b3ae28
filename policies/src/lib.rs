//! Partner access decisions for idvault: pure, default deny.
//!
//! Every RPC asks one policy decision point, [`PolicyEngine::decide`],
//! whether a registered partner may perform an [`Action`] on a
//! [`Resource`] in a [`RequestContext`]. The decision comes from a Cedar
//! policy set (the files in `policies/default/` unless the operator points
//! the vault at its own directory), validated against the schema
//! `idvault.cedarschema`; anything no policy permits is denied, and a
//! decision names the policy ids that made it so the audit log can say
//! why. This crate does no I/O: the vault reads the files and hands their
//! text to [`compile`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;

mod engine;
pub use engine::{
    CompiledPolicies, DEFAULT_POLICIES, DEFAULT_SCHEMA, Decision, EntityError, PartnerFacts,
    PolicyDiagnostic, PolicyEngine, PolicyFile, PolicySource, RequestContext, Resource,
    bench_decisions, compile,
};

/// An operation a partner asks the vault to perform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// Create a subject with fields.
    CreateSubject,
    /// Append field versions to a subject.
    UpdateSubject,
    /// Verify a subject's packet chain.
    VerifySubjectChain,
    /// Delete (crypto-shred) a subject.
    DeleteSubject,
    /// Import identity-bridge records into the cross-reference table.
    ImportBridge,
    /// Tokenize usage logs inside the vault.
    TokenizeLog,
    /// Resolve an entity token to the customer's identifiers.
    Detokenize,
    /// Blind-match records against the vault's subjects.
    MatchSubjects,
    /// Issue a one-time device enrollment code for a subject.
    IssueEnrollmentCode,
    /// Ask for a consent challenge.
    RequestChallenge,
    /// Present signed consents at all (the gate before verification).
    PresentConsent,
    /// Receive a subject's fields under a verified consent.
    ReleaseConsented,
    /// Relay a device-authorised call (enroll, receipts, revocation,
    /// linked entities and rules).
    DeviceCall,
    /// Report an event about a subject (the person's rules may turn it
    /// into commands for other entities).
    PublishEvent,
    /// Drain and acknowledge the commands addressed to the partner.
    ReceiveCommands,
    /// Read the audit log's checkpoints and proofs (`AuditService`).
    ReadAudit,
    /// Issue a digital ID to a person's enrolled device (the wallet relays
    /// the device-signed request; context.fields are the catalogue fields
    /// its claims are made from).
    IssueCredential,
    /// Ask the vault to verify a digital-ID presentation.
    VerifyPresentation,
    /// Read the digital-ID issuer keys (public).
    GetIssuerKeys,
    /// Read a digital-ID status list token (public).
    GetStatusList,
    /// Revoke a digital ID by its status list entry (the operator).
    RevokeCredential,
    /// Ask for a one-time transaction code for a person (context.fields
    /// are the catalogue fields the wanted claims are made from).
    RequestTransactionCode,
    /// Read (and wait for) the outcome of one's own transaction.
    AwaitTransaction,
    /// Move stored data forward to the current root key version (the
    /// operator, `KeyService.Rewrap`).
    RewrapKeys,
}

impl Action {
    /// Every action, for building the policy engine's action entities.
    pub const ALL: &'static [Action] = &[
        Self::CreateSubject,
        Self::UpdateSubject,
        Self::VerifySubjectChain,
        Self::DeleteSubject,
        Self::ImportBridge,
        Self::TokenizeLog,
        Self::Detokenize,
        Self::MatchSubjects,
        Self::IssueEnrollmentCode,
        Self::RequestChallenge,
        Self::PresentConsent,
        Self::ReleaseConsented,
        Self::DeviceCall,
        Self::PublishEvent,
        Self::ReceiveCommands,
        Self::ReadAudit,
        Self::IssueCredential,
        Self::VerifyPresentation,
        Self::GetIssuerKeys,
        Self::GetStatusList,
        Self::RevokeCredential,
        Self::RequestTransactionCode,
        Self::AwaitTransaction,
        Self::RewrapKeys,
    ];

    /// The RPC-style name used in audit records.
    pub fn name(self) -> &'static str {
        match self {
            Self::CreateSubject => "CreateSubject",
            Self::UpdateSubject => "UpdateSubject",
            Self::VerifySubjectChain => "VerifySubjectChain",
            Self::DeleteSubject => "DeleteSubject",
            Self::ImportBridge => "ImportBridge",
            Self::TokenizeLog => "TokenizeLog",
            Self::Detokenize => "Detokenize",
            Self::MatchSubjects => "Match",
            Self::IssueEnrollmentCode => "IssueEnrollmentCode",
            Self::RequestChallenge => "RequestChallenge",
            Self::PresentConsent => "PresentConsent",
            Self::ReleaseConsented => "Release",
            Self::DeviceCall => "DeviceCall",
            Self::PublishEvent => "PublishEvent",
            Self::ReceiveCommands => "ReceiveCommands",
            Self::ReadAudit => "ReadAudit",
            Self::IssueCredential => "IssueCredential",
            Self::VerifyPresentation => "VerifyPresentation",
            Self::GetIssuerKeys => "GetIssuerKeys",
            Self::GetStatusList => "GetStatusList",
            Self::RevokeCredential => "RevokeCredential",
            Self::RequestTransactionCode => "RequestTransactionCode",
            Self::AwaitTransaction => "AwaitTransaction",
            Self::RewrapKeys => "RewrapKeys",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A role a partner holds in the partner registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Role {
    /// `subjects.write`: create and update subjects.
    SubjectsWrite,
    /// `subjects.verify`: verify subject chains.
    SubjectsVerify,
    /// `subjects.delete`: delete subjects.
    SubjectsDelete,
    /// `bridge.import`: import identity-bridge records.
    BridgeImport,
    /// `tokens.tokenize`: tokenize usage logs.
    Tokenize,
    /// `tokens.detokenize`: resolve entity tokens to identifiers.
    Detokenize,
    /// `subjects.match`: blind-match records against subjects.
    SubjectsMatch,
    /// `devices.enroll`: issue device enrollment codes.
    DevicesEnroll,
    /// `consent.release`: request challenges and consented releases.
    ConsentRelease,
    /// `devices.wallet`: a mobile app relaying device-signed calls.
    DevicesWallet,
    /// `events.publish`: report events about subjects.
    EventsPublish,
    /// `commands.receive`: drain and acknowledge commands.
    CommandsReceive,
    /// `audit.read`: fetch audit checkpoints and proofs of its own requests.
    AuditRead,
    /// `credentials.verify`: ask the vault to verify digital-ID presentations.
    CredentialsVerify,
    /// `credentials.revoke`: revoke any digital ID (the operator's role).
    CredentialsRevoke,
    /// `transactions.request`: ask for one-time transaction codes.
    TransactionsRequest,
    /// `keys.admin`: rewrap stored data to the current root key version
    /// (the operator's role).
    KeysAdmin,
}

/// A role name that is not known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role '{0}' (known: {known})", known = Role::ALL_NAMES.join(", "))]
pub struct UnknownRole(pub String);

impl Role {
    /// Every role name, for error messages and documentation.
    pub const ALL_NAMES: &'static [&'static str] = &[
        "subjects.write",
        "subjects.verify",
        "subjects.delete",
        "subjects.match",
        "bridge.import",
        "tokens.tokenize",
        "tokens.detokenize",
        "devices.enroll",
        "consent.release",
        "devices.wallet",
        "events.publish",
        "commands.receive",
        "audit.read",
        "credentials.verify",
        "credentials.revoke",
        "transactions.request",
        "keys.admin",
    ];

    /// Parses a registry role name.
    pub fn parse(s: &str) -> Result<Self, UnknownRole> {
        match s {
            "subjects.write" => Ok(Self::SubjectsWrite),
            "subjects.verify" => Ok(Self::SubjectsVerify),
            "subjects.delete" => Ok(Self::SubjectsDelete),
            "bridge.import" => Ok(Self::BridgeImport),
            "tokens.tokenize" => Ok(Self::Tokenize),
            "tokens.detokenize" => Ok(Self::Detokenize),
            "subjects.match" => Ok(Self::SubjectsMatch),
            "devices.enroll" => Ok(Self::DevicesEnroll),
            "consent.release" => Ok(Self::ConsentRelease),
            "devices.wallet" => Ok(Self::DevicesWallet),
            "events.publish" => Ok(Self::EventsPublish),
            "commands.receive" => Ok(Self::CommandsReceive),
            "audit.read" => Ok(Self::AuditRead),
            "credentials.verify" => Ok(Self::CredentialsVerify),
            "credentials.revoke" => Ok(Self::CredentialsRevoke),
            "transactions.request" => Ok(Self::TransactionsRequest),
            "keys.admin" => Ok(Self::KeysAdmin),
            other => Err(UnknownRole(other.to_owned())),
        }
    }

    /// The registry name.
    pub fn name(self) -> &'static str {
        match self {
            Self::SubjectsWrite => "subjects.write",
            Self::SubjectsVerify => "subjects.verify",
            Self::SubjectsDelete => "subjects.delete",
            Self::BridgeImport => "bridge.import",
            Self::Tokenize => "tokens.tokenize",
            Self::Detokenize => "tokens.detokenize",
            Self::SubjectsMatch => "subjects.match",
            Self::DevicesEnroll => "devices.enroll",
            Self::ConsentRelease => "consent.release",
            Self::DevicesWallet => "devices.wallet",
            Self::EventsPublish => "events.publish",
            Self::CommandsReceive => "commands.receive",
            Self::AuditRead => "audit.read",
            Self::CredentialsVerify => "credentials.verify",
            Self::CredentialsRevoke => "credentials.revoke",
            Self::TransactionsRequest => "transactions.request",
            Self::KeysAdmin => "keys.admin",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_round_trip() {
        for n in Role::ALL_NAMES {
            assert_eq!(Role::parse(n).unwrap().name(), *n);
        }
        assert!(
            Role::parse("admin")
                .unwrap_err()
                .to_string()
                .contains("subjects.write")
        );
    }
}
