//! Signed deletion receipts (docs/keys.md, "Deletion receipts").
//!
//! DeleteSubject answers with a receipt the person, the partner or a
//! regulator can check with the vault's published receipt key alone: a
//! C2SP signed note whose text is
//!
//! ```text
//! idvault deletion receipt v1
//! vault <origin>
//! subject <subject id>
//! deleted-by <SPIFFE id of the partner that asked>
//! deleted-at <unix milliseconds>
//! request <request id, 32 hex digits>
//! audit-leaf <hex SHA-256 of the audit leaf's bytes: RFC 9162 leaf hash>
//! destroyed <what>=<count> …
//! final <when the deletion is final on this backend>
//! ```
//!
//! signed by the Ed25519 key `idvault/v1/receipt-signing` under the key
//! name `<origin>/deletion-receipts`. The request id finds the audit leaf
//! (`AuditService.GetInclusionProof`), whose RFC 9162 leaf hash is
//! `audit-leaf`: the receipt proves what the vault says it did and the
//! log proves it was recorded. Nothing in a receipt is personal data (the
//! subject id is the vault's random identifier).

use crate::tlog::checkpoint::{NoteError, NoteSigner, NoteVerifier, open_note};

/// First line of a receipt's text.
pub const RECEIPT_HEADER: &str = "idvault deletion receipt v1";
/// Suffix of the receipt signing key's name (after the log origin).
pub const RECEIPT_KEY_SUFFIX: &str = "/deletion-receipts";

/// The receipt key name for a vault whose audit origin is `origin`.
pub fn receipt_key_name(origin: &str) -> String {
    format!("{origin}{RECEIPT_KEY_SUFFIX}")
}

/// Why a receipt was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptError {
    /// The signed note did not open (no signature by a given key, a bad
    /// signature, a malformed note).
    #[error(transparent)]
    Note(#[from] NoteError),
    /// The text is not a receipt.
    #[error("malformed receipt: {0}")]
    Malformed(&'static str),
}

/// The facts a receipt states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletionReceipt {
    /// The vault's log origin.
    pub vault: String,
    /// The deleted subject's id.
    pub subject: String,
    /// Who asked for the deletion.
    pub deleted_by: String,
    /// When, in unix milliseconds.
    pub deleted_at_ms: i64,
    /// The request id its audit leaf carries.
    pub request_id: [u8; 16],
    /// The RFC 9162 leaf hash of that audit leaf.
    pub audit_leaf: [u8; 32],
    /// What was destroyed: `(name, count)`, names `[a-z-]`.
    pub destroyed: Vec<(String, u64)>,
    /// When the deletion is final (backend-specific text).
    pub final_when: String,
}

fn one_line(s: &str) -> bool {
    !s.is_empty() && !s.contains('\n') && !s.chars().any(char::is_control)
}

fn word(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
}

impl DeletionReceipt {
    /// The note text (each line ends in `\n`).
    pub fn to_text(&self) -> Result<String, ReceiptError> {
        if ![
            &self.vault,
            &self.subject,
            &self.deleted_by,
            &self.final_when,
        ]
        .iter()
        .all(|s| one_line(s))
            || self.vault.contains(' ')
            || self.subject.contains(' ')
            || self.deleted_by.contains(' ')
            || !self.destroyed.iter().all(|(w, _)| word(w))
        {
            return Err(ReceiptError::Malformed(
                "a field is not a single word or line",
            ));
        }
        let destroyed = self
            .destroyed
            .iter()
            .map(|(w, n)| format!("{w}={n}"))
            .collect::<Vec<_>>()
            .join(" ");
        Ok(format!(
            "{RECEIPT_HEADER}\nvault {}\nsubject {}\ndeleted-by {}\ndeleted-at {}\nrequest {}\n\
             audit-leaf {}\ndestroyed {destroyed}\nfinal {}\n",
            self.vault,
            self.subject,
            self.deleted_by,
            self.deleted_at_ms,
            hex::encode(self.request_id),
            hex::encode(self.audit_leaf),
            self.final_when,
        ))
    }

    /// Parses receipt text (exactly the lines [`Self::to_text`] writes).
    pub fn parse(text: &str) -> Result<Self, ReceiptError> {
        let mut lines = text
            .strip_suffix('\n')
            .ok_or(ReceiptError::Malformed("text does not end with a newline"))?
            .split('\n');
        if lines.next() != Some(RECEIPT_HEADER) {
            return Err(ReceiptError::Malformed(
                "not an idvault deletion receipt v1",
            ));
        }
        let mut field = |name: &'static str| -> Result<&str, ReceiptError> {
            lines
                .next()
                .and_then(|l| l.strip_prefix(name))
                .and_then(|l| l.strip_prefix(' '))
                .ok_or(ReceiptError::Malformed(name))
        };
        let vault = field("vault")?.to_owned();
        let subject = field("subject")?.to_owned();
        let deleted_by = field("deleted-by")?.to_owned();
        let deleted_at_ms = field("deleted-at")?
            .parse()
            .map_err(|_| ReceiptError::Malformed("deleted-at"))?;
        let mut request_id = [0u8; 16];
        hex::decode_to_slice(field("request")?, &mut request_id)
            .map_err(|_| ReceiptError::Malformed("request"))?;
        let mut audit_leaf = [0u8; 32];
        hex::decode_to_slice(field("audit-leaf")?, &mut audit_leaf)
            .map_err(|_| ReceiptError::Malformed("audit-leaf"))?;
        let destroyed = field("destroyed")?
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(|item| {
                let (w, n) = item
                    .split_once('=')
                    .ok_or(ReceiptError::Malformed("destroyed"))?;
                let n: u64 = n
                    .parse()
                    .map_err(|_| ReceiptError::Malformed("destroyed"))?;
                Ok((w.to_owned(), n))
            })
            .collect::<Result<Vec<_>, ReceiptError>>()?;
        let final_when = field("final")?.to_owned();
        if lines.next().is_some() {
            return Err(ReceiptError::Malformed("extra lines"));
        }
        let r = Self {
            vault,
            subject,
            deleted_by,
            deleted_at_ms,
            request_id,
            audit_leaf,
            destroyed,
            final_when,
        };
        // Only the canonical spelling is a receipt: what a reader sees is
        // exactly what was signed.
        if r.to_text()? != text {
            return Err(ReceiptError::Malformed("not in canonical form"));
        }
        Ok(r)
    }

    /// Signs the receipt: a signed note by `signer` (whose name must be
    /// [`receipt_key_name`] of the receipt's vault).
    pub fn sign(&self, signer: &NoteSigner) -> Result<String, ReceiptError> {
        if signer.name() != receipt_key_name(&self.vault) {
            return Err(ReceiptError::Malformed(
                "signer is not this vault's receipt key",
            ));
        }
        Ok(signer.sign(&self.to_text()?)?)
    }
}

/// Opens a signed receipt with the vault's receipt verifier keys: the
/// signature must be by one of them, under the receipt key name of the
/// vault the receipt names.
pub fn open_receipt(
    note: &str,
    verifiers: &[NoteVerifier],
) -> Result<DeletionReceipt, ReceiptError> {
    let text = open_note(note, verifiers)?;
    let r = DeletionReceipt::parse(text)?;
    // The verifying key must be the named vault's receipt key, not any
    // key the caller happens to trust (an audit checkpoint key, say).
    let name = receipt_key_name(&r.vault);
    let by_vault: Vec<NoteVerifier> = verifiers
        .iter()
        .filter(|v| v.name() == name)
        .cloned()
        .collect();
    open_note(note, &by_vault)?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DeletionReceipt {
        DeletionReceipt {
            vault: "idvault.test/log".into(),
            subject: "5f0c5a3e-8f7e-4b5c-9d7a-0c1b2a394857".into(),
            deleted_by: "spiffe://idvault.test/partner/a".into(),
            deleted_at_ms: 1_764_633_600_000,
            request_id: [7; 16],
            audit_leaf: [9; 32],
            destroyed: vec![("data-key".into(), 1), ("packets".into(), 3)],
            final_when: "now (SQLite: secure_delete, WAL truncated)".into(),
        }
    }

    /// Known-answer vector (also in docs/keys.md), cross-checked with
    /// Python `cryptography`'s Ed25519: the seed is 32 bytes of 0x2a, the
    /// verifier key `idvault.test/log/deletion-receipts+c2370129+ARl/ayPhbIUyxqvIOPrNXqeJvgx2spIDNAOb+os9No1h`.
    #[test]
    fn sign_open_and_vector() {
        let r = sample();
        let signer = NoteSigner::from_seed(&receipt_key_name(&r.vault), &[0x2a; 32]).unwrap();
        let note = r.sign(&signer).unwrap();
        let v = signer.verifier();
        assert_eq!(
            v.to_vkey(),
            "idvault.test/log/deletion-receipts+c2370129+ARl/ayPhbIUyxqvIOPrNXqeJvgx2spIDNAOb+os9No1h"
        );
        assert_eq!(open_receipt(&note, std::slice::from_ref(&v)).unwrap(), r);
        assert_eq!(
            note,
            "idvault deletion receipt v1\nvault idvault.test/log\n\
             subject 5f0c5a3e-8f7e-4b5c-9d7a-0c1b2a394857\n\
             deleted-by spiffe://idvault.test/partner/a\ndeleted-at 1764633600000\n\
             request 07070707070707070707070707070707\n\
             audit-leaf 0909090909090909090909090909090909090909090909090909090909090909\n\
             destroyed data-key=1 packets=3\nfinal now (SQLite: secure_delete, WAL truncated)\n\n\
             \u{2014} idvault.test/log/deletion-receipts wjcBKeGvzzhvEljjUt2erQCPwemHBwvUEbN277n1bcwGhJ0YokQl5IdQFQmhDNqUFMBWnpRyIsnos8B4sGT7vdHvFQQ=\n"
        );
    }

    #[test]
    fn tampered_or_foreign_receipts_fail() {
        let r = sample();
        let signer = NoteSigner::from_seed(&receipt_key_name(&r.vault), &[0x2a; 32]).unwrap();
        let v = signer.verifier();
        let note = r.sign(&signer).unwrap();
        for bad in [
            note.replace("packets=3", "packets=4"),
            note.replace("deleted-at 1764633600000", "deleted-at 1764633600001"),
            note.replace("idvault.test/partner/a", "idvault.test/partner/b"),
        ] {
            assert!(
                open_receipt(&bad, std::slice::from_ref(&v)).is_err(),
                "{bad}"
            );
        }
        // Another key, even with the right name, does not verify it.
        let other = NoteSigner::from_seed(&receipt_key_name(&r.vault), &[0x2b; 32]).unwrap();
        assert!(matches!(
            open_receipt(&note, &[other.verifier()]),
            Err(ReceiptError::Note(NoteError::NoKnownSignature))
        ));
        // A note signed by a key of another name (an audit key) is no receipt.
        let audit = NoteSigner::from_seed(&r.vault, &[0x2a; 32]).unwrap();
        let text = r.to_text().unwrap();
        let as_audit = audit.sign(&text).unwrap();
        assert!(open_receipt(&as_audit, &[audit.verifier()]).is_err());
        assert!(r.sign(&audit).is_err());
        // Non-canonical text is refused.
        assert!(DeletionReceipt::parse(&text.replace("destroyed ", "destroyed  ")).is_err());
    }
}
