//! C2SP `tlog-checkpoint` bodies inside C2SP `signed-note`s, signed with
//! Ed25519 (ring).
//!
//! ```text
//! idvault.example/audit                          origin
//! 3                                              tree size, decimal, no leading zeros
//! 9gw6fZQXdYxX5BlxyfWK3TcWvgLBhoUjHbJmCmH+z/E=   base64(root), standard alphabet, padded
//!                                                blank line
//! — idvault.example/audit <base64(key_id ‖ sig)> one line per signature
//! ```
//!
//! * The signed text is the checkpoint body, final newline included, blank
//!   separator line excluded; a signature line is the em dash (U+2014), a
//!   space, the key name, a space and `base64(key_id[4] ‖ Ed25519 sig[64])`.
//! * `key_id = SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key[32])[0..4]`.
//! * The verifier key a partner pins is `name+hex(key_id)+base64(0x01 ‖
//!   public key)`; the signing key never leaves the vault in text form.
//! * Names are non-empty and contain neither Unicode whitespace nor `+`.
//! * A note is UTF-8 without ASCII control characters other than newline.
//!
//! This follows golang.org/x/mod/sumdb/note (the reference implementation,
//! whose known-answer vectors the tests reuse), being stricter where the
//! spec allows it: at most [`MAX_SIGNATURES`] signature lines and
//! [`MAX_NOTE_BYTES`] bytes, canonical base64 only, lowercase key-id hex,
//! and every signature line by a known key must verify (not only the first).
//! Errors never echo the input.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

use super::merkle::Hash;
use crate::crypto;

/// The signature-type byte of Ed25519 in key ids and verifier keys.
pub const ALG_ED25519: u8 = 0x01;
/// Most signature lines [`open_note`] reads.
pub const MAX_SIGNATURES: usize = 100;
/// Largest note [`open_note`] reads (and [`NoteSigner::sign`] produces).
pub const MAX_NOTE_BYTES: usize = 1 << 20;

const SIG_PREFIX: &str = "\u{2014} ";
const ED25519_SIG_LEN: usize = 64;

/// Why a note, verifier key or checkpoint is refused. Never carries input
/// text or key bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    /// The signed note is not well formed.
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    /// A key name is empty or contains whitespace, `+` or control characters.
    #[error("invalid key name")]
    BadName,
    /// A verifier key is malformed, of an unknown algorithm, or its key id
    /// does not match its key.
    #[error("invalid verifier key: {0}")]
    BadKey(&'static str),
    /// The note exceeds the size or signature-count limit.
    #[error("note too large")]
    TooLarge,
    /// A signature by a known key does not verify.
    #[error("signature by a known key does not verify")]
    BadSignature,
    /// No signature line is by a known key.
    #[error("note has no signature by a known key")]
    NoKnownSignature,
    /// The checkpoint body is not well formed.
    #[error("malformed checkpoint: {0}")]
    BadCheckpoint(&'static str),
    /// The checkpoint is for another log.
    #[error("checkpoint origin is not the expected log")]
    OriginMismatch,
    /// The signing key was refused by the crypto library.
    #[error("signing key rejected")]
    KeyRejected,
}

/// A tree head: the body of a C2SP checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity (first line), e.g. `idvault.example/audit`.
    pub origin: String,
    /// Number of leaves.
    pub size: u64,
    /// RFC 9162 root of the tree of `size` leaves.
    pub root: Hash,
}

fn has_control(s: &str) -> bool {
    s.chars().any(|c| c < '\u{20}' && c != '\n')
}

impl Checkpoint {
    /// The note text: `origin\nsize\nbase64(root)\n`, without extension lines.
    pub fn to_text(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        )
    }

    /// Parses a checkpoint body strictly: at least three lines ending in a
    /// newline, a non-empty origin, a decimal size without leading zeros
    /// (except `0`), a root of exactly 32 bytes in padded standard base64.
    /// Extension lines after the root are allowed (and ignored) but must be
    /// non-empty.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let body = text
            .strip_suffix('\n')
            .ok_or(NoteError::BadCheckpoint("does not end with a newline"))?;
        if has_control(body) {
            return Err(NoteError::BadCheckpoint("control character"));
        }
        let mut lines = body.split('\n');
        let origin = lines.next().unwrap_or_default();
        let size = lines
            .next()
            .ok_or(NoteError::BadCheckpoint("missing tree size"))?;
        let root = lines
            .next()
            .ok_or(NoteError::BadCheckpoint("missing root hash"))?;
        if origin.is_empty() {
            return Err(NoteError::BadCheckpoint("empty origin"));
        }
        if lines.any(str::is_empty) {
            return Err(NoteError::BadCheckpoint("empty extension line"));
        }
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(NoteError::BadCheckpoint(
                "tree size is not a canonical decimal",
            ));
        }
        let size: u64 = size
            .parse()
            .map_err(|_| NoteError::BadCheckpoint("tree size out of range"))?;
        let bytes = STANDARD
            .decode(root)
            .map_err(|_| NoteError::BadCheckpoint("root hash is not base64"))?;
        let root: Hash = bytes
            .as_slice()
            .try_into()
            .map_err(|_| NoteError::BadCheckpoint("root hash is not 32 bytes"))?;
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

/// Whether `name` is a valid key name: non-empty, no Unicode whitespace, no
/// `+`, no control characters.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c.is_control())
}

/// `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[0..4]`.
fn key_id(name: &str, public_key: &[u8]) -> [u8; 4] {
    let h = crypto::sha256(&[name.as_bytes(), b"\n", &[ALG_ED25519], public_key]);
    [h[0], h[1], h[2], h[3]]
}

/// Checks that `text` can be signed: ends with a newline, no control
/// characters other than newline.
fn check_text(text: &str) -> Result<(), NoteError> {
    if !text.ends_with('\n') {
        return Err(NoteError::Malformed("text does not end with a newline"));
    }
    if has_control(text) {
        return Err(NoteError::Malformed("control character"));
    }
    Ok(())
}

/// Signs notes with one Ed25519 key under one name.
pub struct NoteSigner {
    name: String,
    key_id: [u8; 4],
    key: Ed25519KeyPair,
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NoteSigner({}+{}, redacted)",
            self.name,
            hex::encode(self.key_id)
        )
    }
}

impl NoteSigner {
    /// A signer for key name `name` from a 32-byte Ed25519 seed (RFC 8032
    /// private key), e.g. [`crate::keys::KeyHierarchy::audit_signing_seed`].
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, NoteError> {
        if !is_valid_name(name) {
            return Err(NoteError::BadName);
        }
        // ring reads the seed in place; no copy of it is made here.
        let key = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| NoteError::KeyRejected)?;
        Ok(Self {
            name: name.to_owned(),
            key_id: key_id(name, key.public_key().as_ref()),
            key,
        })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn key_id(&self) -> [u8; 4] {
        self.key_id
    }

    /// The raw Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.key.public_key().as_ref());
        out
    }

    /// The verifier key text: `name+hex8(key_id)+base64(0x01 ‖ public key)`.
    pub fn verifier_key(&self) -> String {
        let mut material = Vec::with_capacity(33);
        material.push(ALG_ED25519);
        material.extend_from_slice(self.key.public_key().as_ref());
        format!(
            "{}+{}+{}",
            self.name,
            hex::encode(self.key_id),
            STANDARD.encode(material)
        )
    }

    /// The matching verifier.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            key_id: self.key_id,
            public_key: self.public_key(),
        }
    }

    /// The whole signed note over `text`: the text, a blank line and one
    /// signature line. `text` must be valid note text: ending in a newline,
    /// without control characters other than newline.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        check_text(text)?;
        let sig = self.key.sign(text.as_bytes());
        let mut raw = Vec::with_capacity(4 + ED25519_SIG_LEN);
        raw.extend_from_slice(&self.key_id);
        raw.extend_from_slice(sig.as_ref());
        let note = format!(
            "{text}\n{SIG_PREFIX}{} {}\n",
            self.name,
            STANDARD.encode(raw)
        );
        if note.len() > MAX_NOTE_BYTES {
            return Err(NoteError::TooLarge);
        }
        Ok(note)
    }

    /// Signs `cp`'s text. Refuses a checkpoint whose text would not parse
    /// back to it (an origin with a newline, say).
    pub fn sign_checkpoint(&self, cp: &Checkpoint) -> Result<String, NoteError> {
        let text = cp.to_text();
        if Checkpoint::parse(&text)? != *cp {
            return Err(NoteError::BadCheckpoint("origin is not a single line"));
        }
        self.sign(&text)
    }
}

/// A pinned verifier key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    key_id: [u8; 4],
    public_key: [u8; 32],
}

impl NoteVerifier {
    /// The verifier of Ed25519 `public_key` under key name `name` (a
    /// retired version's kept key, say).
    pub fn from_public(name: &str, public_key: [u8; 32]) -> Result<Self, NoteError> {
        if !is_valid_name(name) {
            return Err(NoteError::BadName);
        }
        Ok(Self {
            name: name.to_owned(),
            key_id: key_id(name, &public_key),
            public_key,
        })
    }

    /// Parses a verifier key `name+hex8(key_id)+base64(0x01 ‖ public key)`
    /// and checks that the key id matches the name and key.
    pub fn parse(vkey: &str) -> Result<Self, NoteError> {
        let (name, rest) = vkey
            .split_once('+')
            .ok_or(NoteError::BadKey("expected name+id+key"))?;
        let (id_hex, key64) = rest
            .split_once('+')
            .ok_or(NoteError::BadKey("expected name+id+key"))?;
        if !is_valid_name(name) {
            return Err(NoteError::BadName);
        }
        if id_hex.len() != 8
            || !id_hex
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(NoteError::BadKey("key id is not 8 lowercase hex digits"));
        }
        let mut id = [0u8; 4];
        hex::decode_to_slice(id_hex, &mut id)
            .map_err(|_| NoteError::BadKey("key id is not 8 lowercase hex digits"))?;
        let material = STANDARD
            .decode(key64)
            .map_err(|_| NoteError::BadKey("key is not base64"))?;
        let (&alg, public_key) = material
            .split_first()
            .ok_or(NoteError::BadKey("empty key"))?;
        if alg != ALG_ED25519 {
            return Err(NoteError::BadKey("unknown algorithm"));
        }
        let public_key: [u8; 32] = public_key
            .try_into()
            .map_err(|_| NoteError::BadKey("Ed25519 key is not 32 bytes"))?;
        if key_id(name, &public_key) != id {
            return Err(NoteError::BadKey("key id does not match the key"));
        }
        Ok(Self {
            name: name.to_owned(),
            key_id: id,
            public_key,
        })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn key_id(&self) -> [u8; 4] {
        self.key_id
    }

    /// The verifier key text this verifier parses from.
    pub fn to_vkey(&self) -> String {
        let mut material = Vec::with_capacity(33);
        material.push(ALG_ED25519);
        material.extend_from_slice(&self.public_key);
        format!(
            "{}+{}+{}",
            self.name,
            hex::encode(self.key_id),
            STANDARD.encode(material)
        )
    }

    fn verify(&self, text: &str, sig: &[u8]) -> bool {
        sig.len() == ED25519_SIG_LEN
            && UnparsedPublicKey::new(&ED25519, &self.public_key)
                .verify(text.as_bytes(), sig)
                .is_ok()
    }
}

/// Opens a signed note: returns the text if at least one signature line is
/// by one of `verifiers` (name AND key id match) and verifies. Signature
/// lines by unknown keys are skipped; a line by a known key that fails
/// verification is an error ([`NoteError::BadSignature`]). Malformed notes
/// are errors. Limits: at most [`MAX_SIGNATURES`] signature lines, at most
/// [`MAX_NOTE_BYTES`] bytes.
pub fn open_note<'a>(note: &'a str, verifiers: &[NoteVerifier]) -> Result<&'a str, NoteError> {
    if note.len() > MAX_NOTE_BYTES {
        return Err(NoteError::TooLarge);
    }
    if has_control(note) {
        return Err(NoteError::Malformed("control character"));
    }
    let split = note
        .rfind("\n\n")
        .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
    let text = note
        .get(..=split)
        .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
    let sigs = note
        .get(split + 2..)
        .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
    let sigs = sigs
        .strip_suffix('\n')
        .ok_or(NoteError::Malformed("no signature lines"))?;
    let mut verified = false;
    for (n, line) in sigs.split('\n').enumerate() {
        if n >= MAX_SIGNATURES {
            return Err(NoteError::TooLarge);
        }
        let line = line.strip_prefix(SIG_PREFIX).ok_or(NoteError::Malformed(
            "signature line does not start with an em dash",
        ))?;
        let (name, b64) = line
            .split_once(' ')
            .ok_or(NoteError::Malformed("signature line has no signature"))?;
        if !is_valid_name(name) {
            return Err(NoteError::Malformed("invalid key name in a signature line"));
        }
        let raw = STANDARD
            .decode(b64)
            .map_err(|_| NoteError::Malformed("signature is not base64"))?;
        let (id, sig) = raw
            .split_first_chunk::<4>()
            .ok_or(NoteError::Malformed("signature too short"))?;
        if sig.is_empty() {
            return Err(NoteError::Malformed("signature too short"));
        }
        for v in verifiers
            .iter()
            .filter(|v| v.name == name && v.key_id == *id)
        {
            if !v.verify(text, sig) {
                return Err(NoteError::BadSignature);
            }
            verified = true;
        }
    }
    if verified {
        Ok(text)
    } else {
        Err(NoteError::NoKnownSignature)
    }
}

/// [`open_note`], then [`Checkpoint::parse`], then checks that the origin is
/// `origin`.
pub fn open_checkpoint(
    note: &str,
    verifiers: &[NoteVerifier],
    origin: &str,
) -> Result<Checkpoint, NoteError> {
    let cp = Checkpoint::parse(open_note(note, verifiers)?)?;
    if cp.origin != origin {
        return Err(NoteError::OriginMismatch);
    }
    Ok(cp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlog::merkle::{Appender, leaf_hash};

    // Known-answer vectors of golang.org/x/mod/sumdb/note, note_test.go
    // (github.com/golang/mod, commit fe2ec04f): TestNewVerifier, TestNewSigner,
    // TestSign, TestOpen.
    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const PETER_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const PETER_TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                              then you don't know what your problem is.\n";
    const PETER_NOTE: &str = "If you think cryptography is the answer to your problem,\n\
        then you don't know what your problem is.\n\
        \n\
        \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    const ENOCH_VKEY: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
    const ENOCH_LINE: &str = "\u{2014} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

    // Our own vector: seed = 32 bytes of 0x07, name = origin =
    // "idvault.example/audit", tree of the leaves b"a", b"b", b"c" (raw leaf
    // bytes, hashed with leaf_hash). Produced by this code, then reproduced
    // independently with Python's hashlib + cryptography Ed25519 (see
    // docs/audit.md, "Test vectors").
    const OWN_SEED: [u8; 32] = [7; 32];
    const OWN_ORIGIN: &str = "idvault.example/audit";
    const OWN_VKEY: &str =
        "idvault.example/audit+15f91fbe+AepKbGPinFIKvvVQexMuxfmVR3auvr57kkIe6mkURtIs";
    const OWN_NOTE: &str = "idvault.example/audit\n\
        3\n\
        NmQuc8JUCrEh46a/lUWwokmCzYMOsT080Z3jzmwCHsE=\n\
        \n\
        \u{2014} idvault.example/audit Ffkfvj92a7Udfhy98CuD5NmgYQIynWANQM6p2x5guUIAon9BvLo6zvfTgBTv6xh2NYFz1+5RC6PWGADhoFx0aUF0Lg4=\n";

    fn peter_seed() -> [u8; 32] {
        // PRIVATE+KEY+name+id+base64: the base64 part may itself hold '+'.
        let b64 = PETER_SKEY.splitn(5, '+').nth(4).unwrap();
        let raw = STANDARD.decode(b64).unwrap();
        assert_eq!(raw[0], ALG_ED25519);
        raw[1..].try_into().unwrap()
    }

    fn own_checkpoint() -> Checkpoint {
        let mut a = Appender::new();
        for l in [b"a", b"b", b"c"] {
            a.push(leaf_hash(l));
        }
        Checkpoint {
            origin: OWN_ORIGIN.into(),
            size: a.size(),
            root: a.root(),
        }
    }

    #[test]
    fn tlog_go_note_vectors() {
        let v = NoteVerifier::parse(PETER_VKEY).unwrap();
        assert_eq!(v.name(), "PeterNeumann");
        assert_eq!(v.key_id(), [0xc7, 0x4f, 0x20, 0xa3]);
        assert_eq!(v.to_vkey(), PETER_VKEY);
        assert_eq!(
            open_note(PETER_NOTE, std::slice::from_ref(&v)).unwrap(),
            PETER_TEXT
        );

        let s = NoteSigner::from_seed("PeterNeumann", &peter_seed()).unwrap();
        assert_eq!(s.verifier_key(), PETER_VKEY);
        assert_eq!(s.sign(PETER_TEXT).unwrap(), PETER_NOTE);
        // Go: TestNewVerifier's adjusted-hash bad keys.
        assert!(
            NoteVerifier::parse(
                "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
            )
            .is_err()
        );
        assert!(
            NoteVerifier::parse(
                "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
            )
            .is_err()
        );
        // Every mangled substring or byte of the key is refused.
        let b = PETER_VKEY.as_bytes();
        for i in 0..=b.len() {
            for j in i + 1..=b.len() {
                if (i, j) != (0, b.len()) {
                    let sub = std::str::from_utf8(&b[i..j]).unwrap();
                    assert!(NoteVerifier::parse(sub).is_err(), "{sub}");
                }
            }
        }
        for i in 0..b.len() {
            let mut m = b.to_vec();
            m[i] = m[i].wrapping_add(1);
            if let Ok(m) = std::str::from_utf8(&m) {
                assert!(NoteVerifier::parse(m).is_err(), "{m}");
            }
        }

        // Go: TestOpen, doubly signed note.
        let both = format!("{PETER_NOTE}{ENOCH_LINE}");
        let enoch = NoteVerifier::parse(ENOCH_VKEY).unwrap();
        assert_eq!(
            open_note(&both, std::slice::from_ref(&enoch)).unwrap(),
            PETER_TEXT
        );
        assert_eq!(open_note(&both, &[v.clone(), enoch]).unwrap(), PETER_TEXT);
        assert_eq!(open_note(&both, &[v]).unwrap(), PETER_TEXT);
    }

    #[test]
    fn tlog_own_checkpoint_vector() {
        let s = NoteSigner::from_seed(OWN_ORIGIN, &OWN_SEED).unwrap();
        let cp = own_checkpoint();
        assert_eq!(s.verifier_key(), OWN_VKEY);
        assert_eq!(s.sign_checkpoint(&cp).unwrap(), OWN_NOTE);
        let v = NoteVerifier::parse(OWN_VKEY).unwrap();
        assert_eq!(v, s.verifier());
        assert_eq!(
            open_checkpoint(OWN_NOTE, std::slice::from_ref(&v), OWN_ORIGIN).unwrap(),
            cp
        );
        assert_eq!(
            open_checkpoint(OWN_NOTE, &[v], "other.example/log"),
            Err(NoteError::OriginMismatch)
        );
    }

    #[test]
    fn tlog_note_negative() {
        let v = NoteVerifier::parse(PETER_VKEY).unwrap();
        let vs = [v.clone()];
        // Changed text.
        let changed = PETER_NOTE.replacen("problem,", "problem;", 1);
        assert_eq!(open_note(&changed, &vs), Err(NoteError::BadSignature));
        // Wrong key under the same name and id: still a failed known key.
        let other = NoteSigner::from_seed("PeterNeumann", &[1; 32]).unwrap();
        let forged = NoteVerifier {
            public_key: other.public_key(),
            ..v.clone()
        };
        assert_eq!(
            open_note(PETER_NOTE, &[forged]),
            Err(NoteError::BadSignature)
        );
        // A different key (other id): unknown, so no known signature.
        assert_eq!(
            open_note(PETER_NOTE, &[other.verifier()]),
            Err(NoteError::NoKnownSignature)
        );
        assert_eq!(open_note(PETER_NOTE, &[]), Err(NoteError::NoKnownSignature));
        // Missing em dash (a hyphen instead).
        let hyphen = PETER_NOTE.replace('\u{2014}', "-");
        assert!(matches!(
            open_note(&hyphen, &vs),
            Err(NoteError::Malformed(_))
        ));
        // Bad base64.
        let bad64 = PETER_NOTE.replace("x08go/", "x08go!");
        assert!(matches!(
            open_note(&bad64, &vs),
            Err(NoteError::Malformed(_))
        ));
        // No blank line, no final newline, control characters, empty sigs.
        assert!(open_note(PETER_TEXT, &vs).is_err());
        assert!(open_note(PETER_NOTE.trim_end_matches('\n'), &vs).is_err());
        assert!(open_note(&PETER_NOTE.replace("you don't", "you\tdon't"), &vs).is_err());
        assert!(open_note(&format!("{PETER_TEXT}\n"), &vs).is_err());
        assert!(open_note("", &vs).is_err());
        assert!(open_note("\n\n", &vs).is_err());
        // A signature line by an unknown key is skipped; one by a known key
        // that fails verification rejects the note.
        let unknown = format!("{PETER_NOTE}\u{2014} Someone AAAAAAAA\n");
        assert_eq!(open_note(&unknown, &vs).unwrap(), PETER_TEXT);
        let bad_known = format!("{PETER_NOTE}\u{2014} PeterNeumann x08go6AAAAAA\n");
        assert_eq!(open_note(&bad_known, &vs), Err(NoteError::BadSignature));
        // Go: TestOpen's invalid signature and malformed messages.
        let peter_sig = &PETER_NOTE[PETER_TEXT.len() + 1..];
        let spliced = format!("{PETER_TEXT}\n{}ABCD{}", &peter_sig[..60], &peter_sig[60..]);
        assert_eq!(open_note(&spliced, &vs), Err(NoteError::BadSignature));
        for bad in [
            format!("{PETER_TEXT}\n{}", &peter_sig[..peter_sig.len() - 1]),
            format!("\u{1}{PETER_TEXT}\n{peter_sig}"),
            format!(
                "{PETER_TEXT}\n\u{2014} Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
            ),
            format!("{PETER_TEXT}\n{peter_sig}Unexpected line.\n"),
        ] {
            assert!(
                matches!(open_note(&bad, &vs), Err(NoteError::Malformed(_))),
                "{bad:?}"
            );
        }
        let dup = format!("{PETER_TEXT}\n{peter_sig}{peter_sig}{}", &ENOCH_LINE);
        assert_eq!(open_note(&dup, &vs).unwrap(), PETER_TEXT);
        // Too many signature lines (Go: 101 copies are refused).
        assert_eq!(
            open_note(&format!("{PETER_TEXT}\n{}", peter_sig.repeat(101)), &vs),
            Err(NoteError::TooLarge)
        );
        assert_eq!(
            open_note(&format!("{PETER_TEXT}\n{}", peter_sig.repeat(100)), &vs).unwrap(),
            PETER_TEXT
        );
        let many = format!("{PETER_NOTE}{}", "\u{2014} Someone AAAAAAAA\n".repeat(100));
        assert_eq!(open_note(&many, &vs), Err(NoteError::TooLarge));
        let big = format!("{}{PETER_NOTE}", "x".repeat(MAX_NOTE_BYTES));
        assert_eq!(open_note(&big, &vs), Err(NoteError::TooLarge));
        // Signing refuses invalid text and names.
        let s = NoteSigner::from_seed("PeterNeumann", &peter_seed()).unwrap();
        assert!(s.sign("abc").is_err());
        assert!(s.sign("a\rb\n").is_err());
        assert_eq!(
            NoteSigner::from_seed("a+b", &[1; 32]).unwrap_err(),
            NoteError::BadName
        );
        assert!(NoteSigner::from_seed("a b", &[1; 32]).is_err());
        assert!(NoteSigner::from_seed("", &[1; 32]).is_err());
        // Errors never echo input.
        let e = NoteVerifier::parse("secret-name+zzzzzzzz+AAAA")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secret") && !e.contains("zzzz"), "{e}");
        // Debug of a signer shows no key bytes.
        assert_eq!(
            format!("{s:?}"),
            "NoteSigner(PeterNeumann+c74f20a3, redacted)"
        );
    }

    #[test]
    fn tlog_checkpoint_parse() {
        let root = STANDARD.encode([9u8; 32]);
        let ok = format!("o\n0\n{root}\n");
        assert_eq!(
            Checkpoint::parse(&ok).unwrap(),
            Checkpoint {
                origin: "o".into(),
                size: 0,
                root: [9; 32]
            }
        );
        let cp = Checkpoint::parse(&format!("o\n18446744073709551615\n{root}\next 1\n")).unwrap();
        assert_eq!(cp.size, u64::MAX);
        assert_eq!(Checkpoint::parse(&cp.to_text()).unwrap(), cp);
        for bad in [
            format!("o\n00\n{root}\n"),
            format!("o\n01\n{root}\n"),
            format!("o\n+1\n{root}\n"),
            format!("o\n-1\n{root}\n"),
            format!("o\n 1\n{root}\n"),
            format!("o\n18446744073709551616\n{root}\n"),
            format!("o\n\n{root}\n"),
            format!("\n1\n{root}\n"),
            format!("o\n1\n{root}"),
            format!("o\n1\n{root}\n\n"),
            format!("o\n1\n{root}\next\n\n"),
            format!("o\n1\n{}\n", STANDARD.encode([9u8; 31])),
            format!("o\n1\n{}\n", STANDARD.encode([9u8; 33])),
            format!("o\n1\n{}\n", root.trim_end_matches('=')),
            format!("o\r\n1\n{root}\n"),
            "o\n1\n".to_string(),
            String::new(),
        ] {
            assert!(Checkpoint::parse(&bad).is_err(), "{bad:?}");
        }
        let s = NoteSigner::from_seed(OWN_ORIGIN, &OWN_SEED).unwrap();
        let evil = Checkpoint {
            origin: "a\n5".into(),
            size: 1,
            root: [0; 32],
        };
        assert!(s.sign_checkpoint(&evil).is_err());
    }
}
