//! The hash-chained, MACed audit log (pure part).
//!
//! ```text
//! hash_n = SHA-256("idvault/v1/audit" ‖ seq ‖ time_ms ‖ lp(actor) ‖ lp(action)
//!                  ‖ lp(subject) ‖ lp(outcome) ‖ lp(detail) ‖ key_version ‖ hash_{n-1})
//! mac_n  = HMAC-SHA256(audit_key[key_version], hash_n)
//! ```
//! `lp(x)` is a big-endian u32 length then the bytes; integers are
//! big-endian; `hash_0` is 32 zero bytes. The hash chain shows that no
//! record was removed, reordered or edited; the MAC shows that whoever
//! rewrote a suffix of the chain also held the audit key. Records never
//! carry PII: actors are SPIFFE ids, subjects are random ids, details are
//! error classes.
//!
//! Pure functions only: this module computes and checks the chain; it
//! never stores or sends a record, and must never put PII or key bytes
//! into one.

use super::crypto::{self, HASH_LEN};
use super::secret::AuditKey;

const AUDIT_LABEL: &[u8] = b"idvault/v1/audit";

/// What happened, before it is chained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// Who: the caller's SPIFFE id (or a fixed word for the vault itself).
    pub actor: String,
    /// What: the RPC or operation name.
    pub action: String,
    /// Which subject, as its id text, if any.
    pub subject: Option<String>,
    /// `ok`, `denied`, `invalid`, `not_found`, `error`.
    pub outcome: String,
    /// Error class or count; never PII.
    pub detail: String,
}

/// A chained record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Position, from 1.
    pub seq: u64,
    /// The event.
    pub event: AuditEvent,
    /// Version of the audit key that MACed it.
    pub key_version: u32,
    /// Hash of record `seq - 1`.
    pub prev_hash: [u8; HASH_LEN],
    /// This record's hash.
    pub hash: [u8; HASH_LEN],
    /// HMAC of `hash`.
    pub mac: [u8; HASH_LEN],
}

/// The hash before the first record.
pub const GENESIS: [u8; HASH_LEN] = [0; HASH_LEN];

fn lp(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(s);
}

/// Computes a record's hash.
pub fn record_hash(
    seq: u64,
    e: &AuditEvent,
    key_version: u32,
    prev: &[u8; HASH_LEN],
) -> [u8; HASH_LEN] {
    let mut buf = Vec::with_capacity(128);
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(&e.time_ms.to_be_bytes());
    lp(&mut buf, e.actor.as_bytes());
    lp(&mut buf, e.action.as_bytes());
    match &e.subject {
        Some(s) => {
            buf.push(1);
            lp(&mut buf, s.as_bytes());
        }
        None => buf.push(0),
    }
    lp(&mut buf, e.outcome.as_bytes());
    lp(&mut buf, e.detail.as_bytes());
    buf.extend_from_slice(&key_version.to_be_bytes());
    crypto::sha256(&[AUDIT_LABEL, &buf, prev])
}

/// Chains `event` after a record with `prev_seq` and `prev_hash`.
pub fn chain(
    prev_seq: u64,
    prev_hash: [u8; HASH_LEN],
    event: AuditEvent,
    key: &AuditKey,
) -> AuditRecord {
    let seq = prev_seq.saturating_add(1);
    let hash = record_hash(seq, &event, key.version(), &prev_hash);
    let mac = crypto::hmac_sha256(key.expose(), &[&hash]);
    AuditRecord {
        seq,
        event,
        key_version: key.version(),
        prev_hash,
        hash,
        mac,
    }
}

/// Why a record fails verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuditFault {
    /// A sequence number is missing or repeated.
    SequenceGap,
    /// `prev_hash` does not match the previous record's hash.
    BrokenLink,
    /// The stored hash does not match the record's content (edited).
    ContentMismatch,
    /// The MAC does not verify (forged or key missing).
    BadMac,
    /// The newest record is not the stored head (records removed at the end).
    HeadMismatch,
}

impl std::fmt::Display for AuditFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::SequenceGap => "sequence gap",
            Self::BrokenLink => "previous-hash link broken",
            Self::ContentMismatch => "content does not match its hash (edited)",
            Self::BadMac => "MAC does not verify",
            Self::HeadMismatch => "chain head does not match the newest record",
        })
    }
}

/// Incremental verifier: feed records in ascending `seq`, then [`finish`].
///
/// [`finish`]: AuditVerifier::finish
#[derive(Debug)]
pub struct AuditVerifier {
    prev_seq: u64,
    prev_hash: [u8; HASH_LEN],
}

impl Default for AuditVerifier {
    fn default() -> Self {
        Self {
            prev_seq: 0,
            prev_hash: GENESIS,
        }
    }
}

impl AuditVerifier {
    /// Checks the next record. `key` is the audit key of `r.key_version`,
    /// or `None` when that version is not available.
    pub fn check(
        &mut self,
        r: &AuditRecord,
        key: Option<&AuditKey>,
    ) -> Result<(), (u64, AuditFault)> {
        let expected = self.prev_seq + 1;
        if r.seq != expected {
            return Err((expected, AuditFault::SequenceGap));
        }
        if !crypto::ct_eq(&r.prev_hash, &self.prev_hash) {
            return Err((r.seq, AuditFault::BrokenLink));
        }
        let h = record_hash(r.seq, &r.event, r.key_version, &r.prev_hash);
        if !crypto::ct_eq(&h, &r.hash) {
            return Err((r.seq, AuditFault::ContentMismatch));
        }
        let mac_ok = key.is_some_and(|k| {
            k.version() == r.key_version && crypto::hmac_sha256_verify(k.expose(), &r.hash, &r.mac)
        });
        if !mac_ok {
            return Err((r.seq, AuditFault::BadMac));
        }
        self.prev_seq = r.seq;
        self.prev_hash = r.hash;
        Ok(())
    }

    /// Checks the stored head against the last record seen; returns the count.
    pub fn finish(
        self,
        head_seq: u64,
        head_hash: &[u8; HASH_LEN],
    ) -> Result<u64, (u64, AuditFault)> {
        if head_seq != self.prev_seq || !crypto::ct_eq(head_hash, &self.prev_hash) {
            return Err((self.prev_seq + 1, AuditFault::HeadMismatch));
        }
        Ok(self.prev_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: i64) -> AuditEvent {
        AuditEvent {
            time_ms: i,
            actor: "spiffe://idvault.dev/partner/a".into(),
            action: "CreateSubject".into(),
            subject: Some(format!("s{i}")),
            outcome: "ok".into(),
            detail: String::new(),
        }
    }

    fn log(n: i64) -> (AuditKey, Vec<AuditRecord>) {
        let key = AuditKey::from_bytes([9; 32], 1);
        let mut out: Vec<AuditRecord> = Vec::new();
        for i in 0..n {
            let (s, h) = out.last().map_or((0, GENESIS), |r| (r.seq, r.hash));
            out.push(chain(s, h, ev(i), &key));
        }
        (key, out)
    }

    fn verify(key: &AuditKey, recs: &[AuditRecord]) -> Result<u64, (u64, AuditFault)> {
        let mut v = AuditVerifier::default();
        for r in recs {
            v.check(r, Some(key))?;
        }
        let last = recs.last().map_or((0, GENESIS), |r| (r.seq, r.hash));
        v.finish(last.0, &last.1)
    }

    #[test]
    fn intact_log_verifies() {
        let (k, recs) = log(5);
        assert_eq!(verify(&k, &recs), Ok(5));
    }

    #[test]
    fn edited_record_is_named() {
        let (k, mut recs) = log(5);
        recs[2].event.outcome = "denied".into();
        assert_eq!(verify(&k, &recs), Err((3, AuditFault::ContentMismatch)));
    }

    #[test]
    fn rehashed_record_without_key_fails_mac() {
        let (k, mut recs) = log(3);
        recs[1].event.actor = "someone".into();
        recs[1].hash = record_hash(2, &recs[1].event, 1, &recs[1].prev_hash);
        assert_eq!(verify(&k, &recs), Err((2, AuditFault::BadMac)));
    }

    #[test]
    fn removed_record_is_named() {
        let (k, mut recs) = log(4);
        recs.remove(1);
        assert_eq!(verify(&k, &recs), Err((2, AuditFault::SequenceGap)));
    }
}
