//! The canonical bytes of one audit-log leaf.
//!
//! ```text
//! leaf = 0x01                                   format version
//!      ‖ time_ms        i64 BE                  milliseconds since the Unix epoch
//!      ‖ lp(actor)                              caller SPIFFE id
//!      ‖ lp(action)
//!      ‖ 0x00 | 0x01 ‖ lp(subject)              subject id text, if any
//!      ‖ lp(outcome)
//!      ‖ lp(detail)                             error class or count, never PII
//!      ‖ count u32 BE ‖ lp(policy) × count      deciding policy ids, count <= 64
//!      ‖ request_id     16 bytes
//!      ‖ 0x00 | 0x01 ‖ seq u64 BE ‖ hash[32]    subject's new chain head, if any
//! lp(s) = u32 BE byte length ‖ UTF-8 bytes
//! ```
//!
//! The tree hashes these bytes as an RFC 9162 leaf
//! (`SHA-256(0x00 ‖ leaf)`, [`AuditLeaf::hash`]). There is exactly one
//! encoding of a leaf: [`AuditLeaf::decode`] refuses anything
//! [`AuditLeaf::encode`] would not produce (unknown version, truncation,
//! trailing bytes, invalid UTF-8, flag bytes other than 0 and 1, more than
//! [`MAX_POLICIES`] policies, more than [`MAX_LEAF_BYTES`] bytes), so
//! `encode(decode(b)) == b` for every accepted `b`.

use super::merkle::{Hash, leaf_hash};

/// Largest encoded leaf [`AuditLeaf::decode`] accepts.
pub const MAX_LEAF_BYTES: usize = 64 * 1024;
/// Most policy ids in one leaf.
pub const MAX_POLICIES: usize = 64;
/// The format version byte this module writes and reads.
pub const LEAF_VERSION: u8 = 0x01;

/// One audited call, as logged in the transparency tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditLeaf {
    /// Milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// The caller's SPIFFE id.
    pub actor: String,
    /// The RPC or operation name.
    pub action: String,
    /// The subject id text, if the call concerned a subject.
    pub subject: Option<String>,
    /// `ok`, `denied`, `invalid`, `not_found`, `error`.
    pub outcome: String,
    /// Error class or count; never PII.
    pub detail: String,
    /// Ids of the deciding policies.
    pub policies: Vec<String>,
    /// The request id.
    pub request_id: [u8; 16],
    /// The subject's new chain head `(seq, hash)` for a call that changed a
    /// subject.
    pub head: Option<(u64, Hash)>,
}

/// Why leaf bytes are refused. Never carries the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LeafError {
    /// The version byte is not [`LEAF_VERSION`].
    #[error("unknown audit leaf version {0}")]
    UnknownVersion(u8),
    /// The bytes end inside a field.
    #[error("audit leaf is truncated")]
    Truncated,
    /// Bytes follow the last field.
    #[error("audit leaf has trailing bytes")]
    TrailingBytes,
    /// A text field is not UTF-8.
    #[error("audit leaf text is not UTF-8")]
    BadUtf8,
    /// A presence flag is neither 0 nor 1.
    #[error("audit leaf flag is not 0 or 1")]
    BadFlag,
    /// More than [`MAX_POLICIES`] policies.
    #[error("audit leaf has too many policies")]
    TooManyPolicies,
    /// Longer than [`MAX_LEAF_BYTES`].
    #[error("audit leaf is too large")]
    TooLarge,
}

fn lp(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], LeafError> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(LeafError::Truncated)?;
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], LeafError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(LeafError::Truncated)?;
        self.0 = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, LeafError> {
        Ok(self.array::<1>()?[0])
    }

    fn flag(&mut self) -> Result<bool, LeafError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(LeafError::BadFlag),
        }
    }

    fn u32(&mut self) -> Result<u32, LeafError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn text(&mut self) -> Result<String, LeafError> {
        let len = usize::try_from(self.u32()?).map_err(|_| LeafError::Truncated)?;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| LeafError::BadUtf8)
    }
}

impl AuditLeaf {
    /// The canonical bytes (see the module docs). A leaf with more than
    /// [`MAX_POLICIES`] policies or longer than [`MAX_LEAF_BYTES`] encodes,
    /// but does not decode: check with [`AuditLeaf::check`] before logging.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.push(LEAF_VERSION);
        out.extend_from_slice(&self.time_ms.to_be_bytes());
        lp(&mut out, &self.actor);
        lp(&mut out, &self.action);
        match &self.subject {
            Some(s) => {
                out.push(1);
                lp(&mut out, s);
            }
            None => out.push(0),
        }
        lp(&mut out, &self.outcome);
        lp(&mut out, &self.detail);
        out.extend_from_slice(
            &u32::try_from(self.policies.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        for p in &self.policies {
            lp(&mut out, p);
        }
        out.extend_from_slice(&self.request_id);
        match &self.head {
            Some((seq, hash)) => {
                out.push(1);
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(hash);
            }
            None => out.push(0),
        }
        out
    }

    /// Checks the limits [`AuditLeaf::decode`] enforces, so that a logged
    /// leaf always decodes.
    pub fn check(&self) -> Result<(), LeafError> {
        if self.policies.len() > MAX_POLICIES {
            return Err(LeafError::TooManyPolicies);
        }
        if self.encode().len() > MAX_LEAF_BYTES {
            return Err(LeafError::TooLarge);
        }
        Ok(())
    }

    /// Parses canonical leaf bytes strictly (see the module docs).
    pub fn decode(bytes: &[u8]) -> Result<Self, LeafError> {
        if bytes.len() > MAX_LEAF_BYTES {
            return Err(LeafError::TooLarge);
        }
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != LEAF_VERSION {
            return Err(LeafError::UnknownVersion(version));
        }
        let time_ms = i64::from_be_bytes(r.array()?);
        let actor = r.text()?;
        let action = r.text()?;
        let subject = if r.flag()? { Some(r.text()?) } else { None };
        let outcome = r.text()?;
        let detail = r.text()?;
        let count = usize::try_from(r.u32()?).map_err(|_| LeafError::TooManyPolicies)?;
        if count > MAX_POLICIES {
            return Err(LeafError::TooManyPolicies);
        }
        let policies = (0..count)
            .map(|_| r.text())
            .collect::<Result<Vec<_>, _>>()?;
        let request_id = r.array()?;
        let head = if r.flag()? {
            Some((u64::from_be_bytes(r.array()?), r.array()?))
        } else {
            None
        };
        if !r.0.is_empty() {
            return Err(LeafError::TrailingBytes);
        }
        Ok(Self {
            time_ms,
            actor,
            action,
            subject,
            outcome,
            detail,
            policies,
            request_id,
            head,
        })
    }

    /// The RFC 9162 leaf hash of [`AuditLeaf::encode`].
    pub fn hash(&self) -> Hash {
        leaf_hash(&self.encode())
    }
}

/// A request id as 32 lowercase hex digits.
pub fn request_id_hex(id: &[u8; 16]) -> String {
    hex::encode(id)
}

/// Domain label of a [`reveal_tag`].
pub const REVEAL_TAG_LABEL: &[u8] = b"idvault/v1/audit-reveal\0";
/// Bytes of a [`reveal_tag`].
pub const REVEAL_TAG_LEN: usize = 16;

/// What a `Match` leaf carries for each subject its answer revealed, in
/// place of the subject id: `HMAC-SHA256(reveal key, "idvault/v1/
/// audit-reveal\0" ‖ request id ‖ subject id's 16 bytes)`, the first 16
/// bytes ([`crate::keys::KeyHierarchy::audit_reveal_key`]). The partner
/// reads its own leaves back, and the vault's ids of the people it was
/// answered with would tie its pairwise tokens to them; keyed, a tag lets
/// no one without the root key test a guessed id, and bound to the
/// request, one person's tags differ from request to request (a Link
/// stream's records share its request id). The operator, holding the key,
/// finds the leaves that revealed a subject by computing its tag for each
/// (docs/audit.md).
pub fn reveal_tag(
    key: &crate::secret::AuditRevealKey,
    request_id: &[u8; 16],
    subject: &[u8; 16],
) -> [u8; REVEAL_TAG_LEN] {
    let full = crate::crypto::hmac_sha256(key.expose(), &[REVEAL_TAG_LABEL, request_id, subject]);
    let mut tag = [0u8; REVEAL_TAG_LEN];
    tag.copy_from_slice(&full[..REVEAL_TAG_LEN]);
    tag
}

/// Bytes of a leaf row's nonce ([`row_nonce`]).
pub const ROW_NONCE_LEN: usize = 16;

/// A leaf row's nonce: the leaf's time (milliseconds, big-endian) then 8
/// random bytes. It is not part of the leaf (partners parse leaf bytes in
/// the format above, unchanged); it lives in the row beside them, covered
/// by the row's MAC ([`row_mac`]), and is unique in the log. A database
/// writer who copies a genuine row copies its nonce too, which the vault
/// refuses to sign a second time; giving the copy another nonce breaks
/// its MAC. The time first keeps new nonces at the end of their index.
pub fn row_nonce(time_ms: i64, random: [u8; 8]) -> [u8; ROW_NONCE_LEN] {
    let mut n = [0u8; ROW_NONCE_LEN];
    n[..8].copy_from_slice(&time_ms.to_be_bytes());
    n[8..].copy_from_slice(&random);
    n
}

/// The MAC of a leaf row: `HMAC-SHA256(audit key, leaf hash ‖ nonce)`.
/// Rows written before nonces (migration 0035) have none, and a MAC over
/// the leaf hash alone; the two inputs differ in length (32 and 48
/// bytes), so neither form's MAC verifies as the other's.
pub fn row_mac(
    key: &crate::secret::AuditKey,
    hash: &Hash,
    nonce: Option<&[u8; ROW_NONCE_LEN]>,
) -> [u8; crate::crypto::HASH_LEN] {
    match nonce {
        Some(n) => crate::crypto::hmac_sha256(key.expose(), &[hash, n]),
        None => crate::crypto::hmac_sha256(key.expose(), &[hash]),
    }
}

/// Whether `mac` is [`row_mac`] of the row (constant time).
pub fn row_mac_ok(
    key: &crate::secret::AuditKey,
    hash: &Hash,
    nonce: Option<&[u8; ROW_NONCE_LEN]>,
    mac: &[u8],
) -> bool {
    crate::crypto::ct_eq(&row_mac(key, hash, nonce), mac)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Known answer (computed independently with Python's `hmac`), the
    /// vector docs/audit.md gives.
    #[test]
    fn reveal_tag_vector() {
        let key = crate::secret::AuditRevealKey::from_bytes([7; 32], 1);
        assert_eq!(
            hex::encode(reveal_tag(&key, &[1; 16], &[2; 16])),
            "16c99375f631f8e2b2653c96060391cc"
        );
        assert_ne!(
            reveal_tag(&key, &[3; 16], &[2; 16]),
            reveal_tag(&key, &[1; 16], &[2; 16])
        );
    }

    /// Known answers (computed independently with Python's `hmac` and
    /// `hashlib`), the vectors docs/audit.md gives.
    #[test]
    fn row_mac_vectors() {
        let key = crate::secret::AuditKey::from_bytes([7; 32], 1);
        let nonce = row_nonce(1_700_000_000_000, [9; 8]);
        assert_eq!(hex::encode(nonce), "0000018bcfe568000909090909090909");
        let hash = [0x11; 32];
        assert_eq!(
            hex::encode(row_mac(&key, &hash, Some(&nonce))),
            "92616e29f2bc5499247fde47ef3d1e0b85ed093894ff1cc77e9273d6046e30a9"
        );
        assert_eq!(
            hex::encode(row_mac(&key, &hash, None)),
            "3cecdc2bca0b79f14893450e21304828a25e7792289c51c4d481b22abb6374cb"
        );
        assert!(row_mac_ok(
            &key,
            &hash,
            Some(&nonce),
            &row_mac(&key, &hash, Some(&nonce))
        ));
        // A copy given another nonce, or none, does not verify.
        let other = row_nonce(1_700_000_000_000, [8; 8]);
        assert!(!row_mac_ok(
            &key,
            &hash,
            Some(&other),
            &row_mac(&key, &hash, Some(&nonce))
        ));
        assert!(!row_mac_ok(
            &key,
            &hash,
            None,
            &row_mac(&key, &hash, Some(&nonce))
        ));
    }

    fn sample() -> AuditLeaf {
        AuditLeaf {
            time_ms: 1_700_000_000_000,
            actor: "spiffe://idvault.dev/partner/a".into(),
            action: "CreateSubject".into(),
            subject: Some("s1".into()),
            outcome: "ok".into(),
            detail: String::new(),
            policies: vec!["p1".into(), "p2".into()],
            request_id: [0xab; 16],
            head: Some((7, [0xcd; 32])),
        }
    }

    #[test]
    fn tlog_leaf_known_bytes() {
        let leaf = AuditLeaf {
            time_ms: 1,
            actor: "a".into(),
            action: "b".into(),
            subject: None,
            outcome: "ok".into(),
            detail: String::new(),
            policies: vec!["p".into()],
            request_id: [0x11; 16],
            head: None,
        };
        let want = format!(
            "01{}{}{}00{}{}{}{}{}00",
            "0000000000000001",
            "0000000161",
            "0000000162",
            "000000026f6b",
            "00000000",
            "00000001",
            "0000000170",
            "11".repeat(16),
        );
        assert_eq!(hex::encode(leaf.encode()), want);
        assert_eq!(AuditLeaf::decode(&leaf.encode()).unwrap(), leaf);
        assert_eq!(leaf.hash(), leaf_hash(&leaf.encode()));
        assert_eq!(
            request_id_hex(&[0x0f; 16]),
            "0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f"
        );
    }

    /// The example leaf of docs/audit.md; bytes and hash reproduced
    /// independently with Python (struct + hashlib).
    #[test]
    fn tlog_leaf_doc_vector() {
        let leaf = AuditLeaf {
            time_ms: 1_700_000_000_000,
            actor: "spiffe://idvault.example/partner/acme".into(),
            action: "CreateSubject".into(),
            subject: Some("s-1".into()),
            outcome: "ok".into(),
            detail: String::new(),
            policies: vec!["partner-write".into()],
            request_id: core::array::from_fn(|i| i as u8),
            head: Some((1, [0x11; 32])),
        };
        let bytes = hex::decode(
            "010000018bcfe56800000000257370696666653a2f2f69647661756c742e6578616d706c652f\
             706172746e65722f61636d650000000d4372656174655375626a6563740100000003732d3100\
             0000026f6b00000000000000010000000d706172746e65722d77726974650001020304050607\
             08090a0b0c0d0e0f010000000000000001111111111111111111111111111111111111111111\
             1111111111111111111111",
        )
        .unwrap();
        assert_eq!(leaf.encode(), bytes);
        assert_eq!(
            hex::encode(leaf.hash()),
            "91fee4f504bcba20c88d8e30dc1c2078fbab0e19889d013ffe8a482199e67dab"
        );
        assert_eq!(AuditLeaf::decode(&bytes).unwrap(), leaf);
    }

    #[test]
    fn tlog_leaf_rejects_non_canonical() {
        let good = sample().encode();
        assert_eq!(AuditLeaf::decode(&good).unwrap(), sample());
        for n in 0..good.len() {
            assert!(AuditLeaf::decode(&good[..n]).is_err(), "prefix {n}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(AuditLeaf::decode(&trailing), Err(LeafError::TrailingBytes));
        let mut v2 = good.clone();
        v2[0] = 2;
        assert_eq!(AuditLeaf::decode(&v2), Err(LeafError::UnknownVersion(2)));
        // The subject flag sits after version, time and two lp fields.
        let flag_at = 1 + 8 + 4 + sample().actor.len() + 4 + sample().action.len();
        let mut flag = good.clone();
        flag[flag_at] = 2;
        assert_eq!(AuditLeaf::decode(&flag), Err(LeafError::BadFlag));
        let mut head_flag = good.clone();
        let last = good.len() - 41;
        head_flag[last] = 7;
        assert_eq!(AuditLeaf::decode(&head_flag), Err(LeafError::BadFlag));
        let mut utf8 = good.clone();
        utf8[1 + 8 + 4] = 0xff;
        assert_eq!(AuditLeaf::decode(&utf8), Err(LeafError::BadUtf8));
        let mut many = sample();
        many.policies = vec![String::new(); MAX_POLICIES + 1];
        assert_eq!(many.check(), Err(LeafError::TooManyPolicies));
        assert_eq!(
            AuditLeaf::decode(&many.encode()),
            Err(LeafError::TooManyPolicies)
        );
        let mut big = sample();
        big.detail = "x".repeat(MAX_LEAF_BYTES);
        assert_eq!(big.check(), Err(LeafError::TooLarge));
        assert_eq!(AuditLeaf::decode(&big.encode()), Err(LeafError::TooLarge));
        // A huge declared length is a truncation, not an allocation.
        let mut huge = good.clone();
        huge[1 + 8..1 + 8 + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(AuditLeaf::decode(&huge), Err(LeafError::Truncated));
        assert!(sample().check().is_ok());
    }

    fn leaf_strategy() -> impl Strategy<Value = AuditLeaf> {
        (
            any::<i64>(),
            ".{0,40}",
            "[A-Za-z]{0,20}",
            proptest::option::of(".{0,20}"),
            "[a-z_]{0,10}",
            ".{0,20}",
            proptest::collection::vec(".{0,12}", 0..=MAX_POLICIES),
            any::<[u8; 16]>(),
            proptest::option::of((any::<u64>(), any::<[u8; 32]>())),
        )
            .prop_map(
                |(time_ms, actor, action, subject, outcome, detail, policies, request_id, head)| {
                    AuditLeaf {
                        time_ms,
                        actor,
                        action,
                        subject,
                        outcome,
                        detail,
                        policies,
                        request_id,
                        head,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn tlog_leaf_round_trip(leaf in leaf_strategy()) {
            prop_assert!(leaf.check().is_ok());
            let bytes = leaf.encode();
            prop_assert_eq!(AuditLeaf::decode(&bytes).unwrap(), leaf);
        }

        #[test]
        fn tlog_leaf_decode_is_canonical(
            leaf in leaf_strategy(),
            pos in any::<usize>(),
            byte in any::<u8>(),
        ) {
            let mut bytes = leaf.encode();
            let i = pos % bytes.len();
            bytes[i] = byte;
            if let Ok(decoded) = AuditLeaf::decode(&bytes) {
                prop_assert_eq!(decoded.encode(), bytes);
            }
        }

        #[test]
        fn tlog_leaf_decode_arbitrary(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(decoded) = AuditLeaf::decode(&bytes) {
                prop_assert_eq!(decoded.encode(), bytes);
            }
        }
    }
}
