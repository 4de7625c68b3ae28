//! One-time transaction codes (docs/digital-id.md, "Transaction codes"):
//! a third party asks the vault to authenticate a person for one
//! transaction; the vault answers a short code; the person types it into
//! their phone, which shows the transaction's binding message and signs
//! the answer; the third party receives an assertion signed by the
//! vault's issuer key.
//!
//! Here: the code's alphabet and parsing, the binding message rule, the
//! transaction's states, and the assertion (a JWS) — pure values, no I/O.

use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::crypto::{CryptoError, Rng};
use crate::sdjwt::jose::{ES256, ParsedJws};
use crate::sdjwt::{IssuerKey, Jwks, REGISTERED_CLAIMS, SdJwtError};
use crate::subject::SubjectId;

/// Characters of a code (Crockford base32 without padding).
pub const CODE_LEN: usize = 8;
/// Crockford's base32 alphabet: no I, L, O, U (read as 1, 1, 0; U never).
pub const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Longest a code lives, seconds.
pub const MAX_CODE_TTL_SECS: i64 = 300;
/// Wrong codes a person's device may enter while a code of theirs is
/// outstanding; at this many the code dies.
pub const MAX_ATTEMPTS: u32 = 5;
/// Longest binding message, characters.
pub const MAX_BINDING_MESSAGE: usize = 200;
/// `typ` of the assertion a third party receives.
pub const TYP_ASSERTION: &str = "txn+jwt";
/// Lifetime of an assertion, seconds.
pub const ASSERTION_TTL_SECS: i64 = 300;
/// Bytes of a transaction id.
pub const TRANSACTION_ID_LEN: usize = 16;

/// A one-time code: [`CODE_LEN`] characters of [`CODE_ALPHABET`] (40
/// bits), shown as `XXXX-XXXX`.
#[derive(Clone, PartialEq, Eq)]
pub struct TransactionCode(Zeroizing<String>);

impl std::fmt::Debug for TransactionCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TransactionCode(..)")
    }
}

/// Why a code or a transaction request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    /// Not eight characters of the code alphabet (after removing spaces
    /// and dashes and reading O as 0, I and L as 1).
    #[error("a code is 8 characters of 0-9 and A-Z without I, L, O and U")]
    Malformed,
}

impl TransactionCode {
    /// A random code.
    pub fn generate(rng: &dyn Rng) -> Result<Self, CryptoError> {
        let mut b = [0u8; 5];
        rng.fill(&mut b)?;
        let mut bits = b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x));
        let mut out = Zeroizing::new(String::with_capacity(CODE_LEN));
        let mut chars = [0u8; CODE_LEN];
        for c in chars.iter_mut().rev() {
            *c = CODE_ALPHABET
                .get(usize::try_from(bits & 31).unwrap_or_default())
                .copied()
                .unwrap_or(b'0');
            bits >>= 5;
        }
        out.extend(chars.iter().map(|c| char::from(*c)));
        Ok(Self(out))
    }

    /// Parses what a person typed: case-insensitive, spaces and dashes
    /// ignored, O read as 0 and I, L as 1 (Crockford's rules).
    pub fn parse(input: &str) -> Result<Self, CodeError> {
        if input.len() > 4 * CODE_LEN {
            return Err(CodeError::Malformed);
        }
        let mut out = Zeroizing::new(String::with_capacity(CODE_LEN));
        for ch in input.chars() {
            let c = match ch.to_ascii_uppercase() {
                ' ' | '-' => continue,
                'O' => '0',
                'I' | 'L' => '1',
                c if c.is_ascii() && CODE_ALPHABET.contains(&(c as u8)) => c,
                _ => return Err(CodeError::Malformed),
            };
            out.push(c);
        }
        if out.len() != CODE_LEN {
            return Err(CodeError::Malformed);
        }
        Ok(Self(out))
    }

    /// The canonical characters (what is MACed and stored).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// As shown to the person: `XXXX-XXXX`.
    pub fn display(&self) -> String {
        let (a, b) = self.0.split_at(CODE_LEN / 2);
        format!("{a}-{b}")
    }
}

/// A binding message as a third party may send it: 1 to
/// [`MAX_BINDING_MESSAGE`] characters, no leading or trailing space, and
/// no character that is not shown as it reads (it is shown to the person
/// as it is; see [`hidden_or_reordering`]).
pub fn valid_binding_message(s: &str) -> bool {
    let n = s.chars().count();
    (1..=MAX_BINDING_MESSAGE).contains(&n)
        && s.trim() == s
        && !s.chars().any(|c| c.is_control() || hidden_or_reordering(c))
}

/// Characters that hide text, reorder it or break lines on a phone's
/// screen, so a message could read differently there than the third party
/// wrote it: Unicode format characters (bidirectional marks, overrides and
/// isolates, zero-width characters, the soft hyphen, tags, interlinear
/// annotations), line and paragraph separators, and private-use
/// characters.
fn hidden_or_reordering(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{E000}'..='\u{F8FF}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0001}'..='\u{E007F}'
            | '\u{F0000}'..
    )
}

/// What the phone showed the person, as a digest its signed answer
/// carries: a proxy or wallet app that altered the lookup's answer (another
/// binding message, other claims) makes the vault refuse the answer.
/// `SHA-256("idvault/v1/transaction-shown\0" ‖ for each of transaction id,
/// requester, binding message and each claim: u32 length ‖ bytes; then the
/// number of claims as u32 and expires_at as i64, big-endian)`.
pub fn shown_digest(
    transaction_id: &str,
    requester: &str,
    binding_message: &str,
    claims: &[String],
    expires_at: i64,
) -> [u8; 32] {
    let mut b = Vec::with_capacity(128 + binding_message.len());
    b.extend_from_slice(b"idvault/v1/transaction-shown\0");
    let mut text = |t: &str| {
        b.extend_from_slice(&u32::try_from(t.len()).unwrap_or(u32::MAX).to_be_bytes());
        b.extend_from_slice(t.as_bytes());
    };
    text(transaction_id);
    text(requester);
    text(binding_message);
    for c in claims {
        text(c);
    }
    b.extend_from_slice(
        &u32::try_from(claims.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    b.extend_from_slice(&expires_at.to_be_bytes());
    crate::crypto::sha256(&[&b])
}

/// Where a transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxState {
    /// Waiting for the person.
    Pending,
    /// The person approved.
    Approved,
    /// The person declined.
    Denied,
    /// Too many wrong codes were entered while it was outstanding.
    TooManyAttempts,
    /// Its code was entered on another person's device.
    WrongPerson,
}

impl TxState {
    /// Stable name (stored, and answered to the third party).
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::TooManyAttempts => "too_many_attempts",
            Self::WrongPerson => "wrong_person",
        }
    }

    /// From [`Self::name`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "approved" => Self::Approved,
            "denied" => Self::Denied,
            "too_many_attempts" => Self::TooManyAttempts,
            "wrong_person" => Self::WrongPerson,
            _ => return None,
        })
    }
}

/// A transaction as the vault keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Random id.
    pub id: [u8; TRANSACTION_ID_LEN],
    /// HMAC of the code under the vault's code key (never the code).
    pub code_mac: [u8; 32],
    /// The third party's partner name.
    pub partner: String,
    /// The person.
    pub subject: SubjectId,
    /// The third party's pairwise token for the person.
    pub pairwise: String,
    /// Shown on the phone.
    pub binding_message: String,
    /// Claims asked for (valid, unique, sorted).
    pub claims: Vec<String>,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    /// Unix milliseconds.
    pub expires_at_ms: i64,
    /// Wrong codes entered by the person's devices while outstanding.
    pub attempts: u32,
    /// State.
    pub state: TxState,
    /// The device that answered.
    pub answered_by: Option<String>,
    /// When, Unix milliseconds.
    pub answered_at_ms: Option<i64>,
    /// Claims approved (a subset of `claims`).
    pub approved: Vec<String>,
}

impl Transaction {
    /// The id as text: `tx_` and 32 hex digits.
    pub fn id_text(&self) -> String {
        id_text(&self.id)
    }
}

/// A transaction id as text: `tx_` and 32 lower-case hex digits.
pub fn id_text(id: &[u8; TRANSACTION_ID_LEN]) -> String {
    format!("tx_{}", hex::encode(id))
}

/// Parses [`id_text`].
pub fn parse_id(s: &str) -> Option<[u8; TRANSACTION_ID_LEN]> {
    let h = s.strip_prefix("tx_")?;
    if h.len() != 2 * TRANSACTION_ID_LEN || h.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    hex::decode(h).ok()?.try_into().ok()
}

/// What an assertion says besides the approved claims.
#[derive(Debug, Clone)]
pub struct AssertionSpec<'a> {
    /// `iss`: the vault's issuer identifier.
    pub issuer: &'a str,
    /// `aud`: the third party's SPIFFE id.
    pub audience: &'a str,
    /// `sub`: the third party's pairwise token for the person.
    pub subject: &'a str,
    /// `txn`: the transaction id.
    pub txn: &'a str,
    /// `binding_message`: what the phone showed.
    pub binding_message: &'a str,
    /// `iat`.
    pub issued_at: i64,
    /// `exp`.
    pub expires_at: i64,
}

/// Signs the assertion: header `{"alg":"ES256","kid":…,"typ":"txn+jwt"}`,
/// payload the spec's claims and the approved claims as top-level members
/// (their values are personal data: the text is wiped on drop).
pub fn sign_assertion(
    key: &IssuerKey,
    spec: &AssertionSpec<'_>,
    claims: Vec<(String, Value)>,
) -> Result<Zeroizing<String>, SdJwtError> {
    let mut payload = Map::new();
    for (name, value) in claims {
        if REGISTERED_CLAIMS.contains(&name.as_str())
            || matches!(name.as_str(), "txn" | "binding_message")
        {
            return Err(SdJwtError::Malformed(
                "a registered claim cannot be approved",
            ));
        }
        payload.insert(name, value);
    }
    payload.insert("aud".into(), spec.audience.into());
    payload.insert("binding_message".into(), spec.binding_message.into());
    payload.insert("exp".into(), spec.expires_at.into());
    payload.insert("iat".into(), spec.issued_at.into());
    payload.insert("iss".into(), spec.issuer.into());
    payload.insert("sub".into(), spec.subject.into());
    payload.insert("txn".into(), spec.txn.into());
    let mut header = Map::new();
    header.insert("alg".into(), ES256.into());
    header.insert("kid".into(), key.kid().into());
    header.insert("typ".into(), TYP_ASSERTION.into());
    Ok(Zeroizing::new(crate::sdjwt::jose::sign_compact(
        key.signing_key(),
        &header,
        &Value::Object(payload).to_string(),
    )))
}

/// A verified assertion.
#[derive(Clone)]
pub struct Assertion {
    /// `iss`.
    pub issuer: String,
    /// `sub` (the pairwise token).
    pub subject: String,
    /// `txn`.
    pub txn: String,
    /// `binding_message`.
    pub binding_message: String,
    /// `iat`.
    pub issued_at: i64,
    /// `exp`.
    pub expires_at: i64,
    /// The approved claims (personal data).
    pub claims: Map<String, Value>,
}

impl std::fmt::Debug for Assertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assertion")
            .field("txn", &self.txn)
            .field("claims", &self.claims.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Largest assertion accepted, bytes.
pub const MAX_ASSERTION_BYTES: usize = 16 * 1024;

/// Verifies an assertion for the third party `audience` about transaction
/// `txn`: ES256 by a key of `keys`, `typ` `txn+jwt`, `aud` equal to
/// `audience`, `txn` equal to `txn` (an assertion of another transaction of
/// the same third party is refused), and `now` within
/// `iat − skew … exp + skew`.
pub fn verify_assertion(
    text: &str,
    keys: &Jwks,
    audience: &str,
    txn: &str,
    now: i64,
    skew_secs: i64,
) -> Result<Assertion, SdJwtError> {
    let text = text.trim();
    if text.len() > MAX_ASSERTION_BYTES {
        return Err(SdJwtError::Malformed("assertion too large"));
    }
    let jws = ParsedJws::parse(text, TYP_ASSERTION)?;
    let key = keys.key(jws.kid()).ok_or(SdJwtError::UnknownKey)?;
    jws.verify(key.verifying_key())?;
    let mut p = jws.payload;
    let mut text_claim = |name: &'static str| -> Result<String, SdJwtError> {
        match p.remove(name) {
            Some(Value::String(s)) => Ok(s),
            _ => Err(SdJwtError::Malformed(name)),
        }
    };
    let aud = text_claim("aud")?;
    let issuer = text_claim("iss")?;
    let subject = text_claim("sub")?;
    let got_txn = text_claim("txn")?;
    let binding_message = text_claim("binding_message")?;
    if aud != audience {
        return Err(SdJwtError::KeyBinding("audience"));
    }
    if txn != got_txn {
        return Err(SdJwtError::Malformed("txn is another transaction's"));
    }
    let mut time = |name: &'static str| -> Result<i64, SdJwtError> {
        p.remove(name)
            .and_then(|v| v.as_i64())
            .ok_or(SdJwtError::Malformed(name))
    };
    let issued_at = time("iat")?;
    let expires_at = time("exp")?;
    if now >= expires_at.saturating_add(skew_secs) {
        return Err(SdJwtError::Expired);
    }
    if issued_at > now + skew_secs {
        return Err(SdJwtError::NotYetValid);
    }
    Ok(Assertion {
        issuer,
        subject,
        txn: got_txn,
        binding_message,
        issued_at,
        expires_at,
        claims: p,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out the given bytes (then zeros).
    struct FixedRng(Vec<u8>);

    impl FixedRng {
        fn new(b: &[u8]) -> Self {
            Self(b.to_vec())
        }
    }

    impl Rng for FixedRng {
        fn fill(&self, buf: &mut [u8]) -> Result<(), CryptoError> {
            for (d, s) in buf
                .iter_mut()
                .zip(self.0.iter().chain(std::iter::repeat(&0)))
            {
                *d = *s;
            }
            Ok(())
        }
    }

    #[test]
    fn codes_generate_and_parse() {
        let c = TransactionCode::generate(&FixedRng::new(&[0xff; 5])).unwrap();
        assert_eq!(c.as_str(), "ZZZZZZZZ");
        let c = TransactionCode::generate(&FixedRng::new(&[0, 0, 0, 0, 1])).unwrap();
        assert_eq!(c.as_str(), "00000001");
        // 0x08 0x86 0x42 0x98 0xe8 = 00001 00010 00011 00100 00101 00110 00111 01000
        let c = TransactionCode::generate(&FixedRng::new(&[0x08, 0x86, 0x42, 0x98, 0xe8])).unwrap();
        assert_eq!(c.as_str(), "12345678");
        assert_eq!(c.display(), "1234-5678");
        for typed in [
            "1234-5678",
            "1234 5678",
            " i234-s678 ".replace('s', "5").as_str(),
            "l234-5678",
        ] {
            assert_eq!(TransactionCode::parse(typed).unwrap(), c, "{typed}");
        }
        assert_eq!(
            TransactionCode::parse("abcd-efgh").unwrap().as_str(),
            "ABCDEFGH"
        );
        assert_eq!(
            TransactionCode::parse("0o0o0o0o").unwrap().as_str(),
            "00000000"
        );
        for bad in [
            "",
            "1234567",
            "123456789",
            "1234-567U",
            "1234-567!",
            "１２３４５６７８",
            &"-".repeat(40),
        ] {
            assert!(TransactionCode::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(format!("{c:?}"), "TransactionCode(..)");
    }

    #[test]
    fn binding_messages() {
        assert!(valid_binding_message(
            "Pay 45.00 EUR to Shop Ltd, order 7781"
        ));
        assert!(valid_binding_message("Überweisung 12 € — Bäckerei"));
        for bad in [
            "",
            " leading",
            "trailing ",
            "line\nbreak",
            "nul\0",
            "rtl \u{202E}olleh",
            "zero\u{200B}width",
            "line\u{2028}separator",
            "arabic mark \u{061C}",
            "bom\u{FEFF}",
            "private \u{E000}",
            "tag \u{E0041}",
            &"x".repeat(201),
        ] {
            assert!(!valid_binding_message(bad), "{bad:?}");
        }
        assert!(valid_binding_message(&"é".repeat(200)));
    }

    #[test]
    fn shown_digest_binds_every_part() {
        let claims = vec!["age_over_18".to_owned(), "given_name".to_owned()];
        let d = shown_digest("tx_1", "spiffe://a/partner/b", "Pay 5", &claims, 77);
        assert_eq!(
            hex::encode(d),
            hex::encode(crate::crypto::sha256(&[
                b"idvault/v1/transaction-shown\0\0\0\0\x04tx_1\0\0\0\x14spiffe://a/partner/b\0\0\0\x05Pay 5\0\0\0\x0bage_over_18\0\0\0\x0agiven_name\0\0\0\x02\0\0\0\0\0\0\0\x4d"
            ]))
        );
        for other in [
            shown_digest("tx_2", "spiffe://a/partner/b", "Pay 5", &claims, 77),
            shown_digest("tx_1", "spiffe://a/partner/c", "Pay 5", &claims, 77),
            shown_digest("tx_1", "spiffe://a/partner/b", "Pay 6", &claims, 77),
            shown_digest("tx_1", "spiffe://a/partner/b", "Pay 5", &claims[..1], 77),
            shown_digest("tx_1", "spiffe://a/partner/b", "Pay 5", &claims, 78),
        ] {
            assert_ne!(other, d);
        }
    }

    #[test]
    fn states_and_ids() {
        for s in [
            TxState::Pending,
            TxState::Approved,
            TxState::Denied,
            TxState::TooManyAttempts,
            TxState::WrongPerson,
        ] {
            assert_eq!(TxState::parse(s.name()), Some(s));
        }
        assert_eq!(TxState::parse("expired"), None);
        let id = [0xab; 16];
        assert_eq!(parse_id(&id_text(&id)), Some(id));
        for bad in [
            "",
            "tx_",
            "tx_ABABABABABABABABABABABABABABABAB",
            "xx_abababababababababababababababab",
            "tx_ab",
        ] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn assertion_round_trip_and_refusals() {
        let k = IssuerKey::from_scalar(&[0x11; 32]).unwrap();
        let keys = Jwks::new(vec![(k.kid().to_owned(), k.jwk().clone())]);
        let spec = AssertionSpec {
            issuer: "https://idvault.local",
            audience: "spiffe://idvault.dev/partner/shop",
            subject: "pw_abcdefghijklmnopqrstuvwxyz",
            txn: "tx_00112233445566778899aabbccddeeff",
            binding_message: "Pay 45 EUR",
            issued_at: 1_000,
            expires_at: 1_300,
        };
        let claims = vec![
            ("given_name".to_owned(), Value::from("Ada")),
            ("age_over_18".to_owned(), Value::from(true)),
        ];
        let t = sign_assertion(&k, &spec, claims).unwrap();
        let a = verify_assertion(&t, &keys, spec.audience, spec.txn, 1_010, 60).unwrap();
        assert_eq!(a.subject, spec.subject);
        assert_eq!(a.binding_message, "Pay 45 EUR");
        assert_eq!(a.claims.len(), 2);
        assert_eq!(a.claims["given_name"], "Ada");
        assert!(!format!("{a:?}").contains("Ada"));
        let e = |r: Result<Assertion, SdJwtError>| r.unwrap_err().code();
        assert_eq!(
            e(verify_assertion(
                &t,
                &keys,
                "spiffe://x/partner/y",
                spec.txn,
                1_010,
                60
            )),
            "bad_key_binding"
        );
        assert_eq!(
            e(verify_assertion(
                &t,
                &keys,
                spec.audience,
                "tx_other",
                1_010,
                60
            )),
            "malformed"
        );
        assert_eq!(
            e(verify_assertion(
                &t,
                &keys,
                spec.audience,
                spec.txn,
                1_360,
                60
            )),
            "expired"
        );
        assert_eq!(
            e(verify_assertion(
                &t,
                &keys,
                spec.audience,
                spec.txn,
                900,
                60
            )),
            "not_yet_valid"
        );
        let other = IssuerKey::from_scalar(&[0x22; 32]).unwrap();
        let other = Jwks::new(vec![(k.kid().to_owned(), other.jwk().clone())]);
        assert_eq!(
            e(verify_assertion(
                &t,
                &other,
                spec.audience,
                spec.txn,
                1_010,
                60
            )),
            "bad_issuer_signature"
        );
        let bad = vec![("sub".to_owned(), Value::from("x"))];
        assert!(sign_assertion(&k, &spec, bad).is_err());
    }
}
