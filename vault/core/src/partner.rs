//! The partner registry's domain types: who a certificate identity is,
//! which roles it holds and what it may receive. Parsing the config file
//! that fills it is the server's job; this module only holds the values
//! and checks names, and must never read a file or the network.

use idvault_policies::Role;

use crate::consent::Refusal;
use crate::subject::FieldName;

/// Default sustained match query rate per partner.
pub const DEFAULT_MATCH_RATE: u32 = 50;
/// Default match query burst per partner.
pub const DEFAULT_MATCH_BURST: u32 = 100;
/// Default bound on the commands from one publisher waiting in a partner's
/// outbox ([`Partner::outbox_per_source`]).
pub const DEFAULT_OUTBOX_PER_SOURCE: u32 = 10_000;
/// Largest [`Partner::outbox_per_source`] a config may set: an event's
/// check counts up to this many waiting commands per recipient while it
/// holds the recipient's outbox lock (and, on SQLite, the one writer):
/// about 0.3 ms at 10,000.
pub const MAX_OUTBOX_PER_SOURCE: u32 = 10_000;

/// A partner's match query rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchRate {
    /// Sustained queries per second.
    pub per_second: u32,
    /// Burst size.
    pub burst: u32,
}

/// A validated registry entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partner {
    /// Short name.
    pub name: String,
    /// SPIFFE id.
    pub spiffe_id: String,
    /// Roles.
    pub roles: Vec<Role>,
    /// Token domains it may use (TokenizeLog, stateless mode).
    pub token_domains: Vec<String>,
    /// Blind-matching key domain.
    pub match_domain: String,
    /// Match query rate limit.
    pub match_rate: MatchRate,
    /// Release key (consented releases are sealed to it).
    pub release_key: Option<crate::consent::ReleasePublicKey>,
    /// Purposes it may receive consented data for.
    pub release_purposes: Vec<String>,
    /// Fields it may receive with consent.
    pub release_fields: Vec<FieldName>,
    /// Audiences besides its SPIFFE id it may name when it asks the vault
    /// to verify a digital-ID presentation (its own web origins).
    pub presentation_audiences: Vec<String>,
    /// Commands from any one publisher that may wait in this partner's
    /// outbox (unacknowledged); an event that would pass it is refused.
    pub outbox_per_source: u32,
}

/// The validated partner registry.
#[derive(Debug, Clone, Default)]
pub struct PartnerRegistry {
    partners: Vec<Partner>,
}

impl Partner {
    /// Whether a presentation addressed to `audience` is this partner's to
    /// verify: its SPIFFE id or one of its registered audiences.
    pub fn owns_audience(&self, audience: &str) -> bool {
        audience == self.spiffe_id || self.presentation_audiences.iter().any(|a| a == audience)
    }

    /// Whether releasing `fields` for `purpose` stays within the partner's
    /// registered allowances (checked in code before any policy).
    pub fn release_within_allowances(&self, purpose: &str, fields: &[FieldName]) -> bool {
        self.release_purposes.iter().any(|p| p == purpose)
            && fields.iter().all(|f| self.release_fields.contains(f))
    }

    /// Why the policies refused a release to this partner: the registry
    /// allowance the request breaks (purpose first, then fields), or else
    /// a policy of the operator's own.
    pub fn release_refusal(&self, purpose: &str, fields: &[FieldName]) -> Refusal {
        if !self.release_purposes.iter().any(|p| p == purpose) {
            Refusal::PurposeNotAllowed
        } else if !fields.iter().all(|f| self.release_fields.contains(f)) {
            Refusal::FieldsNotAllowed
        } else {
            Refusal::PolicyDenied
        }
    }
}

impl PartnerRegistry {
    /// A registry of already validated partners.
    pub fn new(partners: Vec<Partner>) -> Self {
        Self { partners }
    }

    /// Finds a partner by the SPIFFE id of its certificate.
    pub fn by_spiffe_id(&self, id: &str) -> Option<&Partner> {
        self.partners.iter().find(|p| p.spiffe_id == id)
    }

    /// All partners.
    pub fn partners(&self) -> &[Partner] {
        &self.partners
    }

    /// The SPIFFE ids many end users share: the partners holding
    /// `devices.wallet` (a wallet app's certificate is in every copy of
    /// the app). The vault counts their connections, calls and requests
    /// in flight per source address rather than per identity.
    pub fn shared_identities(&self) -> Vec<String> {
        self.partners
            .iter()
            .filter(|p| p.roles.contains(&Role::DevicesWallet))
            .map(|p| p.spiffe_id.clone())
            .collect()
    }

    /// Every distinct blind-matching domain of a partner that may match
    /// (`subjects.match`), sorted. Only these are indexed: a domain nobody
    /// can query would cost every CreateSubject a signature for nothing.
    pub fn match_domains(&self) -> Vec<String> {
        let mut d: Vec<String> = self
            .partners
            .iter()
            .filter(|p| p.roles.contains(&Role::SubjectsMatch))
            .map(|p| p.match_domain.clone())
            .collect();
        d.sort();
        d.dedup();
        d
    }
}

/// Checks a partner name: lowercase letters, digits, `-`, `_`, `.`; 1..=63.
pub fn valid_partner_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
}

/// Checks a SPIFFE trust domain (a DNS-like name).
pub fn valid_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_refusals_name_the_allowance_broken() {
        let f = |n| FieldName::parse(n).unwrap();
        let p = Partner {
            name: "b".into(),
            spiffe_id: "spiffe://t/partner/b".into(),
            roles: Vec::new(),
            token_domains: Vec::new(),
            match_domain: "b".into(),
            match_rate: MatchRate {
                per_second: 1,
                burst: 1,
            },
            release_key: None,
            release_purposes: vec!["kyc".into()],
            release_fields: vec![f("email")],
            presentation_audiences: Vec::new(),
            outbox_per_source: 1,
        };
        assert_eq!(
            p.release_refusal("marketing", &[f("email")]),
            Refusal::PurposeNotAllowed
        );
        assert_eq!(
            p.release_refusal("kyc", &[f("email"), f("phone")]),
            Refusal::FieldsNotAllowed
        );
        assert_eq!(
            p.release_refusal("kyc", &[f("email")]),
            Refusal::PolicyDenied
        );
        assert!(p.release_within_allowances("kyc", &[f("email")]));
        assert!(p.release_within_allowances("kyc", &[]));
        assert!(!p.release_within_allowances("marketing", &[f("email")]));
        assert!(!p.release_within_allowances("kyc", &[f("email"), f("phone")]));
    }
}
