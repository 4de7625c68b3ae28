//! MACs binding the rows that authorise something but carry no signature
//! of their own to the root key: subject owners, enrolled devices,
//! enrollment codes, consent challenges, presented consents (beside the
//! grant bytes and signature they keep), entity links, rules, pairwise
//! tokens, match signatures and learned match weights, status lists and
//! their credential entries, and one-time transactions (docs/keys.md,
//! "Row MACs", lists every kind and its columns).
//!
//! The threat is a database writer without the root key (SECURITY.md): a
//! row they insert or edit must authorise nothing. Each row kind has a
//! canonical byte string (below); the store keeps
//! `HMAC-SHA256(row_mac_key_v, bytes)` and the key version `v` beside the
//! row and checks it on every read. The key is derived from the root key
//! under [`LABEL_ROW_MAC`] (docs/keys.md).
//!
//! Canonical bytes: `"idvault/v1/row/" ‖ kind ‖ 0x00`, then each column
//! in the order given by the functions below, each as
//! - a byte or text column: its length (u32, big endian) then its bytes;
//! - an integer: 8 bytes, big endian two's complement;
//! - an optional integer: `0x00` when absent, else `0x01` and 8 bytes;
//! - a flag: one byte, 0 or 1.
//!
//! The primary key is always part of the bytes, so a MAC copied to another
//! row does not verify there. What a MAC cannot stop is a row put back as
//! it was earlier (a revocation rolled back by someone who kept the old
//! row and its MAC); SECURITY.md says so.

use std::collections::BTreeMap;

use crate::consent::{Challenge, Consent, Device, EnrollmentCode};
use crate::crypto;
use crate::keys::{KeyError, KeyHierarchy};
use crate::rules::Rule;
use crate::sdjwt::status::{CredentialEntry, StatusListState};
use crate::secret::{RowMacMaterial, Secret};
use crate::subject::SubjectId;

/// HKDF label of the row MAC key.
pub const LABEL_ROW_MAC: &str = "idvault/v1/row-mac";

/// A row MAC key of one root key version.
pub type RowMacKey = Secret<RowMacMaterial>;

/// Length of a row MAC.
pub const ROW_MAC_LEN: usize = 32;

/// The canonical bytes of one row (see the module comment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowBytes {
    kind: &'static str,
    bytes: Vec<u8>,
}

impl RowBytes {
    fn new(kind: &'static str) -> Self {
        let mut bytes = Vec::with_capacity(160);
        bytes.extend_from_slice(b"idvault/v1/row/");
        bytes.extend_from_slice(kind.as_bytes());
        bytes.push(0);
        Self { kind, bytes }
    }

    fn bytes(mut self, b: &[u8]) -> Self {
        let n = u32::try_from(b.len()).unwrap_or(u32::MAX);
        self.bytes.extend_from_slice(&n.to_be_bytes());
        self.bytes.extend_from_slice(b);
        self
    }

    fn text(self, s: &str) -> Self {
        self.bytes(s.as_bytes())
    }

    fn int(mut self, v: i64) -> Self {
        self.bytes.extend_from_slice(&v.to_be_bytes());
        self
    }

    fn opt_int(mut self, v: Option<i64>) -> Self {
        match v {
            None => {
                self.bytes.push(0);
                self
            }
            Some(v) => {
                self.bytes.push(1);
                self.int(v)
            }
        }
    }

    fn flag(mut self, v: bool) -> Self {
        self.bytes.push(u8::from(v));
        self
    }

    fn list<S: AsRef<str>>(mut self, items: &[S]) -> Self {
        let n = u32::try_from(items.len()).unwrap_or(u32::MAX);
        self.bytes.extend_from_slice(&n.to_be_bytes());
        for i in items {
            self = self.text(i.as_ref());
        }
        self
    }

    /// The row kind (`device`, `consent`, …), for error messages.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The bytes the MAC is computed over.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// An enrolled device: id, subject, SEC1 key, enrolling partner,
/// enrollment time, revocation time.
pub fn device(d: &Device) -> RowBytes {
    RowBytes::new("device")
        .text(&d.device_id)
        .bytes(d.subject.as_bytes())
        .bytes(&d.public_key)
        .text(&d.enrolled_by)
        .int(d.enrolled_at_ms)
        .opt_int(d.revoked_at_ms)
}

/// An enrollment code: its hash, subject, the partner it was issued to,
/// expiry, and whether it was used (so marking a used code unused breaks
/// the MAC, unless the writer kept the row from before its use: whoever
/// saw the code could otherwise enroll a second device).
pub fn enrollment_code(code_hash: &[u8; 32], c: &EnrollmentCode) -> RowBytes {
    RowBytes::new("enrollment-code")
        .bytes(code_hash)
        .bytes(c.subject.as_bytes())
        .text(&c.issued_to)
        .int(c.expires_at_ms)
        .flag(c.used)
}

/// A consent challenge: the challenge, the partner it was issued to, its
/// subject, expiry, and whether it was used (a planted or revived
/// challenge must not let a signed grant be presented again).
pub fn challenge(challenge: &[u8; 32], c: &Challenge) -> RowBytes {
    RowBytes::new("challenge")
        .bytes(challenge)
        .text(&c.partner)
        .bytes(c.subject.as_bytes())
        .int(c.expires_at_ms)
        .flag(c.used)
}

/// A presented consent: id, subject, device, audience, purpose, fields,
/// standing, issue and expiry times, grant hash, presentation and
/// revocation times. The signed grant kept beside it is checked on its own
/// (its signature, and its hash against `grant_hash`).
pub fn consent(c: &Consent) -> RowBytes {
    let fields: Vec<&str> = c.fields.iter().map(|f| f.as_str()).collect();
    RowBytes::new("consent")
        .bytes(&c.consent_id)
        .bytes(c.subject.as_bytes())
        .text(&c.device_id)
        .text(&c.audience)
        .text(&c.purpose)
        .list(&fields)
        .flag(c.standing)
        .int(c.issued_at)
        .int(c.expires_at)
        .bytes(&c.grant_hash)
        .int(c.presented_at_ms)
        .opt_int(c.revoked_at_ms)
}

/// A match domain's learned weights: domain, estimate time, the
/// estimate's canonical bytes (`ModelEstimate::encode`). A database writer
/// who could set weights could make strangers match.
pub fn match_model(domain: &str, estimated_at_ms: i64, model: &[u8]) -> RowBytes {
    RowBytes::new("match-model")
        .text(domain)
        .int(estimated_at_ms)
        .bytes(model)
}

/// A subject's owner: subject, the partner that created it, creation
/// time. Only these: the rest of the row changes with every update (the
/// chain head, checked against the audit log) or is bound elsewhere (the
/// wrapped data key names the subject in its associated data).
pub fn subject_owner(subject: &SubjectId, created_by: &str, created_at_ms: i64) -> RowBytes {
    RowBytes::new("subject")
        .bytes(subject.as_bytes())
        .text(created_by)
        .int(created_at_ms)
}

/// A partner's pairwise token for a person: partner, subject, token. A
/// partner names the person by it when it asks for a transaction code or
/// publishes an event, so a row pointing its token at someone else would
/// send that person's approval request to another's phone.
pub fn pairwise_token(partner: &str, subject: &SubjectId, token: &str) -> RowBytes {
    RowBytes::new("pairwise-token")
        .text(partner)
        .bytes(subject.as_bytes())
        .text(token)
}

/// A subject's match signature in one domain: domain, subject, presence
/// mask, signature. A match answer names the subject whose row scored, so
/// a row copied onto another subject would hand the partner that other
/// subject's pairwise token for the person it asked about.
pub fn match_signature(
    domain: &str,
    subject: &SubjectId,
    present: u16,
    signature: &[u8],
) -> RowBytes {
    RowBytes::new("match-signature")
        .text(domain)
        .bytes(subject.as_bytes())
        .int(i64::from(present))
        .bytes(signature)
}

/// A row's MAC as stored: its key version and bytes, each `None` where the
/// row has none (checked by [`RowMac::check`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredMac {
    /// The `mac_version` column.
    pub version: Option<i64>,
    /// The `mac` column.
    pub mac: Option<Vec<u8>>,
}

/// A person's link to an entity: subject, entity, link time.
pub fn entity_link(subject: &SubjectId, entity: &str, linked_at_ms: i64) -> RowBytes {
    RowBytes::new("entity-link")
        .bytes(subject.as_bytes())
        .text(entity)
        .int(linked_at_ms)
}

/// A person's rule: subject, rule id, source, event type, target,
/// command, fields.
pub fn rule(subject: &SubjectId, r: &Rule) -> RowBytes {
    RowBytes::new("rule")
        .bytes(subject.as_bytes())
        .text(&r.id())
        .text(&r.source)
        .text(&r.event_type)
        .text(&r.target)
        .text(&r.command)
        .list(&r.fields)
}

/// A status list: id, size (log2), permutation key version, and how many
/// credentials it has placed (so a credential row deleted by a database
/// writer still shows as revoked: its index is recomputed from the count).
pub fn status_list(l: &StatusListState) -> RowBytes {
    RowBytes::new("status-list")
        .int(l.list_id)
        .int(i64::from(l.log2))
        .int(i64::from(l.key_version))
        .int(l.next_seq)
}

/// A credential's status entry: list, index, sequence number, subject and
/// device (each a presence flag then its bytes; both absent once the
/// subject is deleted), expiry, revocation time.
pub fn credential_entry(e: &CredentialEntry) -> RowBytes {
    RowBytes::new("credential")
        .int(e.list_id)
        .int(e.idx)
        .int(e.seq)
        .flag(e.subject.is_some())
        .bytes(e.subject.as_ref().map_or(&[][..], |s| s.as_bytes()))
        .flag(e.device_id.is_some())
        .text(e.device_id.as_deref().unwrap_or_default())
        .int(e.expires_at)
        .opt_int(e.revoked_at_ms)
}

/// A one-time transaction: id, code MAC, partner, subject, pairwise token,
/// binding message, claims, creation and expiry, wrong attempts, state,
/// answering device and time, approved claims (a forged or edited row must
/// not hand a third party an approval the person never gave).
pub fn transaction(t: &crate::transaction::Transaction) -> RowBytes {
    RowBytes::new("transaction")
        .bytes(&t.id)
        .bytes(&t.code_mac)
        .text(&t.partner)
        .bytes(t.subject.as_bytes())
        .text(&t.pairwise)
        .text(&t.binding_message)
        .list(&t.claims)
        .int(t.created_at_ms)
        .int(t.expires_at_ms)
        .int(i64::from(t.attempts))
        .text(t.state.name())
        .text(t.answered_by.as_deref().unwrap_or_default())
        .opt_int(t.answered_at_ms)
        .list(&t.approved)
}

/// Why a row failed its check. Names the row kind only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RowMacError {
    /// No MAC, a MAC of the wrong length, an unknown key version, or a MAC
    /// that does not verify: the row was not written by the vault as it is.
    #[error("{0} row failed its MAC check")]
    Forged(&'static str),
}

/// The row MAC keys of every root key version the vault holds.
#[derive(Debug)]
pub struct RowMac {
    current: u32,
    keys: BTreeMap<u32, RowMacKey>,
}

impl RowMac {
    /// Derives the key of every version from 1 to the current one that the
    /// hierarchy holds (rotation happens offline, so this is done once at
    /// start).
    pub fn derive(keys: &KeyHierarchy) -> Result<Self, KeyError> {
        let current = keys.current_version();
        let mut out = BTreeMap::new();
        for v in keys.versions() {
            out.insert(v, keys.derive::<RowMacMaterial>(LABEL_ROW_MAC, v)?);
        }
        if !out.contains_key(&current) {
            return Err(KeyError::UnknownVersion(current));
        }
        Ok(Self { current, keys: out })
    }

    /// From explicit keys (tests, vectors); the highest version is current.
    pub fn from_keys(keys: impl IntoIterator<Item = RowMacKey>) -> Option<Self> {
        let keys: BTreeMap<u32, RowMacKey> = keys.into_iter().map(|k| (k.version(), k)).collect();
        let current = *keys.keys().next_back()?;
        Some(Self { current, keys })
    }

    /// The MAC of `row` under the current key, with that key's version.
    pub fn seal(&self, row: &RowBytes) -> (u32, [u8; ROW_MAC_LEN]) {
        let key = self.keys.get(&self.current);
        // `derive` and `from_keys` always hold the current version.
        let mac = key.map_or([0u8; ROW_MAC_LEN], |k| {
            crypto::hmac_sha256(k.expose(), &[row.as_bytes()])
        });
        (self.current, mac)
    }

    /// Checks a stored MAC (constant time). `None` parts (a row written
    /// before row MACs, or edited to drop them) fail.
    pub fn check(
        &self,
        row: &RowBytes,
        version: Option<i64>,
        mac: Option<&[u8]>,
    ) -> Result<(), RowMacError> {
        let forged = RowMacError::Forged(row.kind());
        let (Some(v), Some(mac)) = (version, mac) else {
            return Err(forged);
        };
        let key = u32::try_from(v)
            .ok()
            .and_then(|v| self.keys.get(&v))
            .ok_or(forged)?;
        if mac.len() == ROW_MAC_LEN && crypto::hmac_sha256_verify(key.expose(), row.as_bytes(), mac)
        {
            Ok(())
        } else {
            Err(forged)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subject::FieldName;

    fn key(v: u32, b: u8) -> RowMacKey {
        Secret::from_bytes([b; 32], v)
    }

    fn link_row() -> RowBytes {
        entity_link(
            &SubjectId::from_bytes([7; 16]),
            "spiffe://idvault.test/x",
            1_700_000_000_000,
        )
    }

    #[test]
    fn link_bytes_and_mac_vector() {
        // Written out by hand from the module comment; checked with
        // Python's hmac module (docs/keys.md).
        let mut want = b"idvault/v1/row/entity-link\x00".to_vec();
        want.extend_from_slice(&16u32.to_be_bytes());
        want.extend_from_slice(&[7; 16]);
        want.extend_from_slice(&23u32.to_be_bytes());
        want.extend_from_slice(b"spiffe://idvault.test/x");
        want.extend_from_slice(&1_700_000_000_000i64.to_be_bytes());
        assert_eq!(link_row().as_bytes(), want.as_slice());
        let m = RowMac::from_keys([key(1, 0x42)]).unwrap();
        let (v, mac) = m.seal(&link_row());
        assert_eq!(v, 1);
        assert_eq!(
            hex::encode(mac),
            "93a8e5dcdd766e0291a355392d4139adee1ce966ff44b3e8317fd8958b9f93b6"
        );
    }

    #[test]
    fn subject_owner_binds_every_column() {
        let mut want = b"idvault/v1/row/subject\x00".to_vec();
        want.extend_from_slice(&16u32.to_be_bytes());
        want.extend_from_slice(&[7; 16]);
        want.extend_from_slice(&9u32.to_be_bytes());
        want.extend_from_slice(b"partner-a");
        want.extend_from_slice(&1_700_000_000_000i64.to_be_bytes());
        let id = SubjectId::from_bytes([7; 16]);
        let row = subject_owner(&id, "partner-a", 1_700_000_000_000);
        assert_eq!(row.as_bytes(), want.as_slice());
        let m = RowMac::from_keys([key(1, 0x42)]).unwrap();
        let (v, mac) = m.seal(&row);
        assert_eq!(m.check(&row, Some(i64::from(v)), Some(&mac)), Ok(()));
        let forged = Err(RowMacError::Forged("subject"));
        for other in [
            subject_owner(&id, "partner-b", 1_700_000_000_000),
            subject_owner(
                &SubjectId::from_bytes([8; 16]),
                "partner-a",
                1_700_000_000_000,
            ),
            subject_owner(&id, "partner-a", 1_700_000_000_001),
        ] {
            assert_eq!(m.check(&other, Some(i64::from(v)), Some(&mac)), forged);
        }
    }

    #[test]
    fn pairwise_token_binds_every_column() {
        let mut want = b"idvault/v1/row/pairwise-token\x00".to_vec();
        want.extend_from_slice(&9u32.to_be_bytes());
        want.extend_from_slice(b"partner-a");
        want.extend_from_slice(&16u32.to_be_bytes());
        want.extend_from_slice(&[7; 16]);
        want.extend_from_slice(&29u32.to_be_bytes());
        want.extend_from_slice(b"pw_abcdefghijklmnopqrstuvwxyz");
        let id = SubjectId::from_bytes([7; 16]);
        let row = pairwise_token("partner-a", &id, "pw_abcdefghijklmnopqrstuvwxyz");
        assert_eq!(row.as_bytes(), want.as_slice());
        let m = RowMac::from_keys([key(1, 0x42)]).unwrap();
        let (v, mac) = m.seal(&row);
        assert_eq!(m.check(&row, Some(i64::from(v)), Some(&mac)), Ok(()));
        let forged = Err(RowMacError::Forged("pairwise-token"));
        for other in [
            pairwise_token("partner-b", &id, "pw_abcdefghijklmnopqrstuvwxyz"),
            pairwise_token(
                "partner-a",
                &SubjectId::from_bytes([8; 16]),
                "pw_abcdefghijklmnopqrstuvwxyz",
            ),
            pairwise_token("partner-a", &id, "pw_abcdefghijklmnopqrstuvwxy2"),
        ] {
            assert_eq!(m.check(&other, Some(i64::from(v)), Some(&mac)), forged);
        }
    }

    #[test]
    fn match_signature_binds_every_column() {
        let mut want = b"idvault/v1/row/match-signature\x00".to_vec();
        want.extend_from_slice(&9u32.to_be_bytes());
        want.extend_from_slice(b"partner-a");
        want.extend_from_slice(&16u32.to_be_bytes());
        want.extend_from_slice(&[7; 16]);
        want.extend_from_slice(&0x0105i64.to_be_bytes());
        want.extend_from_slice(&3u32.to_be_bytes());
        want.extend_from_slice(&[1, 2, 3]);
        let id = SubjectId::from_bytes([7; 16]);
        let row = match_signature("partner-a", &id, 0x0105, &[1, 2, 3]);
        assert_eq!(row.as_bytes(), want.as_slice());
        let m = RowMac::from_keys([key(1, 0x42)]).unwrap();
        let (v, mac) = m.seal(&row);
        assert_eq!(m.check(&row, Some(i64::from(v)), Some(&mac)), Ok(()));
        let forged = Err(RowMacError::Forged("match-signature"));
        for other in [
            match_signature("partner-b", &id, 0x0105, &[1, 2, 3]),
            match_signature(
                "partner-a",
                &SubjectId::from_bytes([8; 16]),
                0x0105,
                &[1, 2, 3],
            ),
            match_signature("partner-a", &id, 0x0104, &[1, 2, 3]),
            match_signature("partner-a", &id, 0x0105, &[1, 2, 4]),
        ] {
            assert_eq!(m.check(&other, Some(i64::from(v)), Some(&mac)), forged);
        }
    }

    #[test]
    fn a_mac_verifies_only_for_its_row_and_version() {
        let m = RowMac::from_keys([key(1, 1), key(2, 2)]).unwrap();
        let row = link_row();
        let (v, mac) = m.seal(&row);
        assert_eq!(v, 2);
        assert_eq!(m.check(&row, Some(2), Some(&mac)), Ok(()));
        let forged = Err(RowMacError::Forged("entity-link"));
        assert_eq!(m.check(&row, Some(1), Some(&mac)), forged);
        assert_eq!(m.check(&row, Some(3), Some(&mac)), forged);
        assert_eq!(m.check(&row, Some(-1), Some(&mac)), forged);
        assert_eq!(m.check(&row, None, Some(&mac)), forged);
        assert_eq!(m.check(&row, Some(2), None), forged);
        assert_eq!(m.check(&row, Some(2), Some(&mac[..16])), forged);
        let other = entity_link(
            &SubjectId::from_bytes([8; 16]),
            "spiffe://idvault.test/x",
            1_700_000_000_000,
        );
        assert_eq!(m.check(&other, Some(2), Some(&mac)), forged);
        // An older version's MAC still verifies after rotation.
        let old = RowMac::from_keys([key(1, 1)]).unwrap();
        let (v1, mac1) = old.seal(&row);
        assert_eq!(m.check(&row, Some(i64::from(v1)), Some(&mac1)), Ok(()));
    }

    #[test]
    fn every_column_is_bound() {
        let d = Device {
            device_id: "dev_1".into(),
            subject: SubjectId::from_bytes([1; 16]),
            public_key: vec![4; 65],
            enrolled_by: "partner-a".into(),
            enrolled_at_ms: 5,
            revoked_at_ms: Some(9),
        };
        let base = device(&d);
        for changed in [
            Device {
                device_id: "dev_2".into(),
                ..d.clone()
            },
            Device {
                subject: SubjectId::from_bytes([2; 16]),
                ..d.clone()
            },
            Device {
                public_key: vec![5; 65],
                ..d.clone()
            },
            Device {
                enrolled_by: "partner-b".into(),
                ..d.clone()
            },
            Device {
                enrolled_at_ms: 6,
                ..d.clone()
            },
            Device {
                revoked_at_ms: None,
                ..d.clone()
            },
        ] {
            assert_ne!(device(&changed), base);
        }
        let c = Consent {
            consent_id: [3; 16],
            subject: SubjectId::from_bytes([1; 16]),
            device_id: "dev_1".into(),
            audience: "spiffe://a".into(),
            purpose: "kyc".into(),
            fields: vec![FieldName::parse("email").unwrap()],
            standing: true,
            issued_at: 1,
            expires_at: 2,
            grant_hash: [9; 32],
            presented_at_ms: 3,
            revoked_at_ms: None,
            grant: Vec::new(),
            signature: Vec::new(),
        };
        let base = consent(&c);
        for changed in [
            Consent {
                standing: false,
                ..c.clone()
            },
            Consent {
                revoked_at_ms: Some(4),
                ..c.clone()
            },
            Consent {
                audience: "spiffe://b".into(),
                ..c.clone()
            },
            Consent {
                fields: vec![FieldName::parse("phone").unwrap()],
                ..c.clone()
            },
            Consent {
                expires_at: 3,
                ..c.clone()
            },
        ] {
            assert_ne!(consent(&changed), base);
        }
    }
}
