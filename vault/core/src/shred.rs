//! The deletion journal ("shred log"): one line per committed deletion,
//! kept outside the database, so that restoring an old backup can
//! crypto-shred again everyone deleted after it was taken
//! (docs/operations.md, "Backup and restore").
//!
//! A line is ASCII, seven fields separated by one space:
//!
//! ```text
//! shred1 <subject id> <deleted-at unix ms> <request id: 32 hex> <audit leaf hash: 64 hex> <key version> <mac: 64 hex>
//! ```
//!
//! `mac` is HMAC-SHA-256, under the key `idvault/v1/shred-log` of root key
//! `key version`, of the line's first six fields exactly as written (with
//! their separating spaces). Without the root key nobody can add a line,
//! so a journal file an attacker can write cannot make a restore delete a
//! person who was never deleted; what such an attacker can do is drop
//! lines, which is why the restore also reads the deletions recorded in
//! the database being replaced, when there is one.
//!
//! Nothing in a line is personal data: the subject id is the vault's
//! random identifier, the rest are times, ids and hashes.

use crate::crypto::{HASH_LEN, hmac_sha256, hmac_sha256_verify};
use crate::keys::{KeyError, KeyHierarchy};
use crate::subject::SubjectId;

/// First field of a line.
pub const TAG: &str = "shred1";
/// Longest line accepted (the longest valid one is about 230 bytes).
pub const MAX_LINE: usize = 512;

/// One committed deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShredEntry {
    /// The deleted subject.
    pub subject: SubjectId,
    /// When the deletion committed, unix milliseconds.
    pub deleted_at_ms: i64,
    /// The request that deleted it.
    pub request_id: [u8; 16],
    /// The RFC 9162 leaf hash of the deletion's audit leaf.
    pub audit_leaf: [u8; HASH_LEN],
}

/// Why a line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShredLineError {
    /// Not a journal line (wrong shape, field or length).
    #[error("malformed deletion journal line: {0}")]
    Malformed(&'static str),
    /// Its key version is not in this key file.
    #[error("deletion journal line under root key version {0}, which this key file lacks")]
    UnknownVersion(u32),
    /// The MAC does not verify: the line was not written by this vault.
    #[error("deletion journal line with a MAC that does not verify")]
    BadMac,
}

impl ShredEntry {
    fn body(&self, version: u32) -> String {
        format!(
            "{TAG} {} {} {} {} {version}",
            self.subject,
            self.deleted_at_ms,
            hex::encode(self.request_id),
            hex::encode(self.audit_leaf),
        )
    }

    /// The journal line (with its newline) under the current root key.
    pub fn to_line(&self, keys: &KeyHierarchy) -> Result<String, KeyError> {
        let version = keys.current_version();
        let key = keys.shred_log_key(version)?;
        let body = self.body(version);
        let mac = hmac_sha256(key.expose(), &[body.as_bytes()]);
        Ok(format!("{body} {}\n", hex::encode(mac)))
    }

    /// Parses and authenticates one line (without its newline).
    pub fn from_line(line: &str, keys: &KeyHierarchy) -> Result<Self, ShredLineError> {
        Self::from_line_versioned(line, keys).map(|(e, _)| e)
    }

    /// [`Self::from_line`], also giving the root key version the line was
    /// MACed under (it may be retired: see `KeyHierarchy::shred_log_key`).
    pub fn from_line_versioned(
        line: &str,
        keys: &KeyHierarchy,
    ) -> Result<(Self, u32), ShredLineError> {
        let (entry, version, body, mac) = parse(line)?;
        let key = keys
            .shred_log_key(version)
            .map_err(|_| ShredLineError::UnknownVersion(version))?;
        if !hmac_sha256_verify(key.expose(), body.as_bytes(), &mac) {
            return Err(ShredLineError::BadMac);
        }
        Ok((entry, version))
    }
}

/// Splits a line into its entry, key version, MACed body and MAC, without
/// checking the MAC (the fuzz target drives this).
pub fn parse(line: &str) -> Result<(ShredEntry, u32, &str, [u8; HASH_LEN]), ShredLineError> {
    use ShredLineError::Malformed;
    if line.len() > MAX_LINE || !line.is_ascii() {
        return Err(Malformed("too long or not ASCII"));
    }
    let (body, mac_hex) = line.rsplit_once(' ').ok_or(Malformed("no MAC"))?;
    let fields: Vec<&str> = body.split(' ').collect();
    let [tag, subject, at, request, leaf, version] = fields.as_slice() else {
        return Err(Malformed("wrong number of fields"));
    };
    if *tag != TAG {
        return Err(Malformed("not a shred1 line"));
    }
    let subject = SubjectId::parse(subject).map_err(|_| Malformed("subject id"))?;
    let deleted_at_ms = strict_number(at)
        .and_then(|n| i64::try_from(n).ok())
        .ok_or(Malformed("time"))?;
    let version = strict_number(version)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or(Malformed("key version"))?;
    let entry = ShredEntry {
        subject,
        deleted_at_ms,
        request_id: lower_hex(request).ok_or(Malformed("request id"))?,
        audit_leaf: lower_hex(leaf).ok_or(Malformed("audit leaf hash"))?,
    };
    let mac = lower_hex(mac_hex).ok_or(Malformed("MAC"))?;
    // One spelling per entry: the body must be exactly what `to_line`
    // writes (so two different lines never carry one entry's MAC).
    if entry.body(version) != body {
        return Err(Malformed("not in canonical form"));
    }
    Ok((entry, version, body, mac))
}

/// A decimal number without sign, leading zeros or other characters.
fn strict_number(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

/// Exactly `N` bytes of lower-case hex.
fn lower_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || s.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::keys::{KeyProvider, StaticKeyProvider};
    use crate::secret::RootKey;

    fn keys() -> KeyHierarchy {
        let root = RootKey::from_bytes([0x11; 32], 1);
        KeyHierarchy::new(Box::new(StaticKeyProvider::new([root]).unwrap()))
    }

    fn entry() -> ShredEntry {
        ShredEntry {
            subject: SubjectId::from_bytes([7; 16]),
            deleted_at_ms: 1_700_000_000_123,
            request_id: [0xab; 16],
            audit_leaf: [0xcd; 32],
        }
    }

    #[test]
    fn round_trip_and_known_answer() {
        let k = keys();
        let line = entry().to_line(&k).unwrap();
        assert!(line.ends_with('\n'));
        let line = line.trim_end();
        assert_eq!(ShredEntry::from_line(line, &k).unwrap(), entry());
        // The MAC is HMAC-SHA-256 under the derived key of the body.
        let key = k.shred_log_key(1).unwrap();
        let (body, mac) = line.rsplit_once(' ').unwrap();
        assert_eq!(
            mac,
            hex::encode(hmac_sha256(key.expose(), &[body.as_bytes()]))
        );
        assert!(body.starts_with("shred1 07070707-0707-"));
    }

    /// A journal outlives the versions that MACed it: once version 1 is
    /// retired (its root key gone), its lines still verify with the MAC
    /// key the key file keeps, through the file's text too, and a forged
    /// line under it is still refused.
    #[test]
    fn lines_of_a_retired_version_still_verify() {
        let v1 = StaticKeyProvider::new([RootKey::from_bytes([0x11; 32], 1)]).unwrap();
        let line = entry().to_line(&keys()).unwrap();
        let line = line.trim_end();
        let v2 = v1.rotated(&crate::SystemRng::default()).unwrap();
        let retired = v2.without_version(1, Vec::new()).unwrap();
        let reread = StaticKeyProvider::parse(&retired.to_key_file()).unwrap();
        assert_eq!(reread.versions(), vec![2]);
        for p in [retired, reread] {
            let k = KeyHierarchy::new(Box::new(p));
            assert!(k.kek(1).is_err(), "the version's own keys are gone");
            assert_eq!(ShredEntry::from_line(line, &k).unwrap(), entry());
            let forged = line.replace("shred1 07", "shred1 08");
            let forged = format!(
                "{} {}",
                forged.rsplit_once(' ').unwrap().0,
                hex::encode([0u8; 32])
            );
            assert_eq!(
                ShredEntry::from_line(&forged, &k),
                Err(ShredLineError::BadMac)
            );
            // A version never held stays unknown.
            let other = line.replace(" 1 ", " 7 ");
            assert_eq!(
                ShredEntry::from_line(&other, &k),
                Err(ShredLineError::UnknownVersion(7))
            );
        }
    }

    #[test]
    fn forged_or_edited_lines_are_refused() {
        let k = keys();
        let line = entry().to_line(&k).unwrap();
        let line = line.trim_end();
        // Another subject with the old MAC.
        let edited = line.replacen("07070707", "07070708", 1);
        assert_eq!(
            ShredEntry::from_line(&edited, &k),
            Err(ShredLineError::BadMac)
        );
        // Unknown version.
        let v9 = line.replacen(" 1 ", " 9 ", 1);
        assert_eq!(
            ShredEntry::from_line(&v9, &k),
            Err(ShredLineError::UnknownVersion(9))
        );
        for bad in [
            "",
            "shred1",
            &line.to_uppercase(),
            &line.replacen("shred1", "shred2", 1),
            &line.replacen(" 1 ", " 01 ", 1),
            &line.replacen(" ", "  ", 1),
            &format!("{line} x"),
            &line.replacen("1700000000123", "-1", 1),
        ] {
            assert!(
                matches!(
                    ShredEntry::from_line(bad, &k),
                    Err(ShredLineError::Malformed(_))
                ),
                "{bad}"
            );
        }
    }
}
