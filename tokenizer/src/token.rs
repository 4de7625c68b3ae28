//! Tokens: stateless deterministic tokens and random entity tokens.
//!
//! ```text
//! stateless = "tk_" ‖ domain ‖ "_v" ‖ version ‖ "_" ‖ base32(HMAC-SHA256(domain_key, type ‖ 0x00 ‖ normalised)[..20])
//! entity    = "et_" ‖ base32(16 random bytes)
//! ```
//! base32 is RFC 4648, lower case, no padding. A stateless token carries
//! 160 bits of the MAC (above the 128 the design asks for), so collisions
//! are negligible at any log volume. The identifier type is MACed too, so
//! an account number and a phone number with the same digits never share a
//! token. Different domains use different keys and are unlinkable.

use std::fmt;

use ring::hmac;
use zeroize::Zeroize;

use crate::ident::IdentifierType;

/// Bytes of MAC kept in a stateless token.
pub const TOKEN_MAC_BYTES: usize = 20;

/// Token errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The domain name is not `[a-z0-9-]{1,32}`.
    #[error("invalid token domain name (use 1-32 of a-z, 0-9, -)")]
    BadDomain,
}

/// Checks a token domain name: it appears inside tokens, between `_`.
pub fn valid_domain(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A token domain's HMAC key. Wiped on drop; `Debug` shows only the
/// domain and version.
pub struct DomainKey {
    domain: String,
    version: u32,
    key: hmac::Key,
    prefix: String,
}

impl fmt::Debug for DomainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DomainKey({} v{}, redacted)", self.domain, self.version)
    }
}

impl DomainKey {
    /// Builds a domain key from 32 key bytes (which the caller should wipe).
    pub fn new(domain: &str, version: u32, key: &[u8; 32]) -> Result<Self, TokenError> {
        if !valid_domain(domain) {
            return Err(TokenError::BadDomain);
        }
        // ring keeps only the HMAC pad states, not the raw key.
        let mut copy = *key;
        let k = hmac::Key::new(hmac::HMAC_SHA256, &copy);
        copy.zeroize();
        Ok(Self {
            domain: domain.to_owned(),
            version,
            key: k,
            prefix: format!("tk_{domain}_v{version}_"),
        })
    }

    /// The domain name.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The key version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The token prefix, `tk_<domain>_v<version>_`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The MAC of a normalised identifier.
    pub fn mac(&self, ty: IdentifierType, normalized: &str) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(ty.name().as_bytes());
        ctx.update(&[0]);
        ctx.update(normalized.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Appends the stateless token of a normalised identifier to `out`.
    pub fn token_into(&self, ty: IdentifierType, normalized: &str, out: &mut String) {
        let mac = self.mac(ty, normalized);
        out.push_str(&self.prefix);
        base32_lower_into(mac.get(..TOKEN_MAC_BYTES).unwrap_or(&mac), out);
    }

    /// The stateless token of a normalised identifier.
    pub fn token(&self, ty: IdentifierType, normalized: &str) -> String {
        let mut s = String::with_capacity(self.prefix.len() + 32);
        self.token_into(ty, normalized, &mut s);
        s
    }
}

/// First line of an exported token key file.
pub const KEY_FILE_HEADER: &str = "idvault-token-key v1";

/// Why a token key file did not parse. Never contains key text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// Missing or wrong header line.
    #[error("not an idvault token key file (first line must be '{KEY_FILE_HEADER}')")]
    Header,
    /// A `domain`, `version` or `key` line is missing, repeated or invalid.
    #[error("token key file: missing or invalid '{0}' line")]
    Field(&'static str),
}

/// Serialises an exported domain key:
/// ```text
/// idvault-token-key v1
/// domain <name>
/// version <n>
/// key <64 hex digits>
/// ```
/// The text holds key material: write it only to a 0600 file.
pub fn key_file_text(domain: &str, version: u32, key: &[u8; 32]) -> zeroize::Zeroizing<String> {
    let mut hex = String::with_capacity(64);
    for b in key {
        use std::fmt::Write;
        let _ = write!(hex, "{b:02x}");
    }
    let out = zeroize::Zeroizing::new(format!(
        "{KEY_FILE_HEADER}\ndomain {domain}\nversion {version}\nkey {hex}\n"
    ));
    hex.zeroize();
    out
}

/// Parses an exported domain key file.
pub fn parse_key_file(text: &str) -> Result<DomainKey, KeyFileError> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    if lines.next() != Some(KEY_FILE_HEADER) {
        return Err(KeyFileError::Header);
    }
    let (mut domain, mut version, mut key) = (None, None, None);
    for line in lines {
        let (k, v) = line.split_once(' ').ok_or(KeyFileError::Field("key"))?;
        let slot = match k {
            "domain" => &mut domain,
            "version" => &mut version,
            "key" => &mut key,
            _ => return Err(KeyFileError::Field("unknown")),
        };
        if slot.replace(v.trim()).is_some() {
            return Err(KeyFileError::Field(match k {
                "domain" => "domain",
                "version" => "version",
                _ => "key",
            }));
        }
    }
    let domain = domain
        .filter(|d| valid_domain(d))
        .ok_or(KeyFileError::Field("domain"))?;
    let version: u32 = version
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0)
        .ok_or(KeyFileError::Field("version"))?;
    let hex = key
        .filter(|k| k.len() == 64)
        .ok_or(KeyFileError::Field("key"))?;
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        let pair = hex
            .get(2 * i..2 * i + 2)
            .ok_or(KeyFileError::Field("key"))?;
        *b = u8::from_str_radix(pair, 16).map_err(|_| KeyFileError::Field("key"))?;
    }
    let k = DomainKey::new(domain, version, &bytes).map_err(|_| KeyFileError::Field("domain"));
    bytes.zeroize();
    k
}

const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// RFC 4648 base32, lower case, no padding.
#[allow(
    clippy::indexing_slicing,
    reason = "every index is masked to 0..=31 of a 32-byte table"
)]
pub fn base32_lower_into(bytes: &[u8], out: &mut String) {
    let mut acc: u64 = 0;
    let mut bits = 0u32;
    for &b in bytes {
        acc = (acc << 8) | u64::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (5 - bits)) & 31) as usize]));
    }
}

/// Formats 16 random bytes as an entity token.
pub fn entity_token(random: &[u8; 16]) -> String {
    let mut s = String::with_capacity(3 + 26);
    s.push_str("et_");
    base32_lower_into(random, &mut s);
    s
}

/// Whether `s` has the shape of an entity token.
pub fn is_entity_token(s: &str) -> bool {
    s.strip_prefix("et_")
        .is_some_and(|r| r.len() == 26 && r.bytes().all(|b| ALPHABET.contains(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_known_answers() {
        // RFC 4648 section 10 vectors, lower-cased, no padding.
        for (input, want) in [
            ("", ""),
            ("f", "my"),
            ("fo", "mzxq"),
            ("foo", "mzxw6"),
            ("foob", "mzxw6yq"),
            ("fooba", "mzxw6ytb"),
            ("foobar", "mzxw6ytboi"),
        ] {
            let mut s = String::new();
            base32_lower_into(input.as_bytes(), &mut s);
            assert_eq!(s, want);
        }
    }

    #[test]
    fn token_known_answer() {
        // HMAC-SHA256(key = 32 x 0x0b, "msisdn\0+447700900123"), first 20 bytes, base32.
        let k = DomainKey::new("logs", 1, &[0x0b; 32]).unwrap();
        let t = k.token(IdentifierType::Msisdn, "+447700900123");
        let mac = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[0x0b; 32]),
            b"msisdn\0+447700900123",
        );
        let mut want = "tk_logs_v1_".to_owned();
        base32_lower_into(&mac.as_ref()[..20], &mut want);
        assert_eq!(t, want);
        assert_eq!(t.len(), "tk_logs_v1_".len() + 32);
        assert!(!format!("{k:?}").contains("0b"));
    }

    #[test]
    fn domains_are_validated() {
        assert!(DomainKey::new("Logs", 1, &[0; 32]).is_err());
        assert!(DomainKey::new("a_b", 1, &[0; 32]).is_err());
        assert!(DomainKey::new("", 1, &[0; 32]).is_err());
        assert!(DomainKey::new("billing-2", 1, &[0; 32]).is_ok());
    }

    #[test]
    fn key_file_round_trip_and_errors() {
        let text = key_file_text("logs", 3, &[0xab; 32]);
        let k = parse_key_file(&text).unwrap();
        assert_eq!((k.domain(), k.version()), ("logs", 3));
        assert_eq!(
            k.token(IdentifierType::Account, "x"),
            DomainKey::new("logs", 3, &[0xab; 32])
                .unwrap()
                .token(IdentifierType::Account, "x")
        );
        assert_eq!(parse_key_file("nope").unwrap_err(), KeyFileError::Header);
        let bad = text.replace("key ab", "key zz");
        let e = parse_key_file(&bad).unwrap_err();
        assert_eq!(e, KeyFileError::Field("key"));
        assert!(!e.to_string().contains("zz"));
        assert!(parse_key_file(&format!("{}version 4\n", &*text)).is_err());
    }

    #[test]
    fn entity_tokens() {
        let t = entity_token(&[0xff; 16]);
        assert!(is_entity_token(&t), "{t}");
        assert!(!is_entity_token("et_short"));
        assert!(!is_entity_token("tk_x"));
    }

    proptest::proptest! {
        #[test]
        fn deterministic_and_unlinkable_across_domains(id in "[0-9]{8,15}", k1 in proptest::array::uniform32(0u8..), k2 in proptest::array::uniform32(0u8..)) {
            proptest::prop_assume!(k1 != k2);
            let a = DomainKey::new("alpha", 1, &k1).unwrap();
            let a2 = DomainKey::new("alpha", 1, &k1).unwrap();
            let b = DomainKey::new("beta", 1, &k2).unwrap();
            let ta = a.token(IdentifierType::Msisdn, &id);
            proptest::prop_assert_eq!(&ta, &a2.token(IdentifierType::Msisdn, &id));
            let tb = b.token(IdentifierType::Msisdn, &id);
            // Different domains: the MAC parts differ.
            proptest::prop_assert_ne!(&ta[ta.len() - 32..], &tb[tb.len() - 32..]);
            // Different types in one domain differ too.
            proptest::prop_assert_ne!(ta, a.token(IdentifierType::Account, &id));
        }
    }
}
