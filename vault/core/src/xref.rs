//! Cross-reference tokens (pure part): blind indexes of identifiers and
//! the plan for linking one identity-bridge record.
//!
//! The cross-reference table is keyed by blind indexes,
//! `HMAC-SHA256(index_key_v, type ‖ 0x00 ‖ normalised)`, never by
//! cleartext. A record's identifiers either all resolve to no entity (a new
//! random entity token is made), to one entity (reused, new identifiers
//! join it), or to several: the customer was fragmented, and the entities
//! are merged — connected components, one record at a time. The surviving
//! token is the lexicographically smallest of the merged ones, so the
//! outcome does not depend on which fragment was seen first; the others
//! become aliases that still resolve.

use idvault_tokenizer::IdentifierType;

use super::crypto::{self, HASH_LEN};
use super::secret::{BridgeSealMaterial, Secret, XrefIndexMaterial, XrefSealMaterial};

/// HKDF label of the cross-reference blind-index key.
pub const LABEL_XREF_INDEX: &str = "idvault/v1/xref-index";
/// HKDF label of the key sealing linked identifiers for detokenization.
pub const LABEL_XREF_SEAL: &str = "idvault/v1/xref-seal";
const SEAL_AAD: &[u8] = b"idvault/v1/xref-seal";

/// The identifier seal key of one version.
pub type XrefSealKey = Secret<XrefSealMaterial>;

/// `nonce ‖ AES-256-GCM(key, nonce, aad, value)`: the one sealing both
/// identifier formats below use.
fn seal_with(
    key: &[u8; 32],
    aad: &[u8],
    value: &str,
    rng: &dyn super::Rng,
) -> Result<Vec<u8>, crypto::CryptoError> {
    let nonce = crypto::random_nonce(rng)?;
    let ct = crypto::aead_seal(key, &nonce, aad, value.as_bytes())?;
    Ok([nonce.as_slice(), &ct].concat())
}

/// Opens [`seal_with`] output as UTF-8 text, wiped on drop.
fn open_with(
    key: &[u8; 32],
    aad: &[u8],
    sealed: &[u8],
) -> Result<zeroize::Zeroizing<String>, crypto::CryptoError> {
    let (nonce, ct) = sealed
        .split_first_chunk::<{ crypto::NONCE_LEN }>()
        .ok_or(crypto::CryptoError::Authentication)?;
    let pt = crypto::aead_open(key, nonce, aad, ct)?;
    String::from_utf8(pt.to_vec())
        .map(zeroize::Zeroizing::new)
        .map_err(|_| crypto::CryptoError::Authentication)
}

/// Seals a normalised identifier, bound to its blind index:
/// `nonce ‖ AES-256-GCM(key, nonce, aad = label ‖ blind_index, value)`.
pub fn seal_identifier(
    key: &XrefSealKey,
    index: &[u8; HASH_LEN],
    normalized: &str,
    rng: &dyn super::Rng,
) -> Result<Vec<u8>, crypto::CryptoError> {
    seal_with(key.expose(), &[SEAL_AAD, index].concat(), normalized, rng)
}

/// Opens a sealed identifier; fails if it was moved to another link.
pub fn open_identifier(
    key: &XrefSealKey,
    index: &[u8; HASH_LEN],
    sealed: &[u8],
) -> Result<zeroize::Zeroizing<String>, crypto::CryptoError> {
    open_with(key.expose(), &[SEAL_AAD, index].concat(), sealed)
}

/// The blind-index key of one version.
pub type XrefIndexKey = Secret<XrefIndexMaterial>;

/// HKDF label prefix of the keys partners seal bridge identifiers with:
/// each partner has its own, `idvault/v1/bridge-seal/<partner>`.
pub const LABEL_BRIDGE_SEAL: &str = "idvault/v1/bridge-seal";
const BRIDGE_AAD: &[u8] = b"idvault/v1/bridge-identifier";

/// The key a sending platform seals one partner's identity-bridge
/// identifiers with.
pub type BridgeSealKey = Secret<BridgeSealMaterial>;

/// Associated data of a sealed bridge identifier: its type and the partner
/// it is sealed for, so a file sealed for one partner opens for no other.
fn bridge_aad(partner: &str, ty: IdentifierType) -> Vec<u8> {
    [BRIDGE_AAD, ty.name().as_bytes(), &[0], partner.as_bytes()].concat()
}

/// Seals one bridge identifier for `partner` so the bridge file never
/// holds it in clear: `version:u32be ‖ nonce:12 ‖ AES-256-GCM(key_v, nonce,
/// aad = "idvault/v1/bridge-identifier" ‖ type ‖ 0x00 ‖ partner, value)`,
/// with the partner's own key.
pub fn seal_bridge_identifier(
    key: &BridgeSealKey,
    partner: &str,
    ty: IdentifierType,
    value: &str,
    rng: &dyn super::Rng,
) -> Result<Vec<u8>, crypto::CryptoError> {
    let sealed = seal_with(key.expose(), &bridge_aad(partner, ty), value, rng)?;
    Ok([&key.version().to_be_bytes()[..], &sealed].concat())
}

/// The key version a sealed bridge identifier names.
pub fn sealed_bridge_version(sealed: &[u8]) -> Option<u32> {
    sealed.first_chunk::<4>().map(|v| u32::from_be_bytes(*v))
}

/// Opens a bridge identifier sealed for `partner` with that partner's key
/// of its version.
pub fn open_bridge_identifier(
    key: &BridgeSealKey,
    partner: &str,
    ty: IdentifierType,
    sealed: &[u8],
) -> Result<zeroize::Zeroizing<String>, crypto::CryptoError> {
    if sealed_bridge_version(sealed) != Some(key.version()) {
        return Err(crypto::CryptoError::Authentication);
    }
    let rest = sealed.get(4..).ok_or(crypto::CryptoError::Authentication)?;
    open_with(key.expose(), &bridge_aad(partner, ty), rest)
}

/// First line of an exported bridge seal key file.
pub const BRIDGE_KEY_HEADER: &str = "idvault-bridge-key v2";
/// The first format's header: one key shared by every partner, refused.
const BRIDGE_KEY_HEADER_V1: &str = "idvault-bridge-key v1";

/// Whether `name` can stand in a bridge key file and associated data
/// (partner names in the registry satisfy it).
fn valid_partner_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Serialises a partner's bridge seal key: header, `partner NAME`,
/// `version N`, `key <hex>`.
pub fn bridge_key_file(partner: &str, key: &BridgeSealKey) -> zeroize::Zeroizing<String> {
    let mut hex = hex::encode(key.expose());
    let out = zeroize::Zeroizing::new(format!(
        "{BRIDGE_KEY_HEADER}\npartner {partner}\nversion {}\nkey {hex}\n",
        key.version()
    ));
    zeroize::Zeroize::zeroize(&mut hex);
    out
}

/// Parses a bridge seal key file into its partner and key; errors never
/// echo key text.
pub fn parse_bridge_key_file(text: &str) -> Result<(String, BridgeSealKey), &'static str> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    match lines.next() {
        Some(BRIDGE_KEY_HEADER) => {}
        Some(BRIDGE_KEY_HEADER_V1) => {
            return Err(
                "a v1 bridge key was shared by every partner and is no longer \
                        accepted; export the partner's own key with \
                        `idvault bridge export-key --partner NAME`",
            );
        }
        _ => return Err("not an idvault bridge key file"),
    }
    let partner = lines
        .next()
        .and_then(|l| l.strip_prefix("partner "))
        .map(str::trim)
        .filter(|p| valid_partner_name(p))
        .ok_or("missing or invalid 'partner' line")?
        .to_owned();
    let version: u32 = lines
        .next()
        .and_then(|l| l.strip_prefix("version "))
        .and_then(|v| v.trim().parse().ok())
        .filter(|v| *v > 0)
        .ok_or("missing or invalid 'version' line")?;
    let mut bytes = [0u8; 32];
    lines
        .next()
        .and_then(|l| l.strip_prefix("key "))
        .and_then(|k| hex::decode_to_slice(k.trim(), &mut bytes).ok())
        .ok_or("missing or invalid 'key' line")?;
    if lines.next().is_some() {
        return Err("unexpected lines after 'key'");
    }
    let key = BridgeSealKey::from_bytes(bytes, version);
    zeroize::Zeroize::zeroize(&mut bytes);
    Ok((partner, key))
}

/// Blind index of a normalised identifier.
pub fn blind_index(key: &XrefIndexKey, ty: IdentifierType, normalized: &str) -> [u8; HASH_LEN] {
    crypto::hmac_sha256(
        key.expose(),
        &[ty.name().as_bytes(), &[0], normalized.as_bytes()],
    )
}

/// What to do for one bridge record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPlan {
    /// The entity token the record's identifiers end up on.
    pub token: String,
    /// Whether `token` is new.
    pub created: bool,
    /// Indexes (into the record's identifiers) not linked yet.
    pub new_links: Vec<usize>,
    /// Entity tokens merged into `token` (they become aliases).
    pub merged: Vec<String>,
}

impl LinkPlan {
    /// True when the record changes nothing (re-import).
    pub fn is_noop(&self) -> bool {
        !self.created && self.new_links.is_empty() && self.merged.is_empty()
    }
}

/// Plans one record. `existing[i]` is the canonical entity token that
/// identifier `i` is linked to, if any; `fresh` makes a new random token.
pub fn plan_record(existing: &[Option<String>], fresh: impl FnOnce() -> String) -> LinkPlan {
    let mut canon: Vec<&String> = existing.iter().flatten().collect();
    canon.sort();
    canon.dedup();
    let new_links: Vec<usize> = existing
        .iter()
        .enumerate()
        .filter(|(_, t)| t.is_none())
        .map(|(i, _)| i)
        .collect();
    match canon.split_first() {
        None => LinkPlan {
            token: fresh(),
            created: true,
            new_links,
            merged: Vec::new(),
        },
        Some((survivor, rest)) => LinkPlan {
            token: (*survivor).clone(),
            created: false,
            new_links,
            merged: rest.iter().map(|t| (*t).clone()).collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Option<String> {
        Some(x.to_owned())
    }

    #[test]
    fn new_reuse_and_merge() {
        let p = plan_record(&[None, None], || "et_new".into());
        assert_eq!(
            p,
            LinkPlan {
                token: "et_new".into(),
                created: true,
                new_links: vec![0, 1],
                merged: vec![]
            }
        );
        let p = plan_record(&[s("et_b"), None], || unreachable!());
        assert_eq!(
            p,
            LinkPlan {
                token: "et_b".into(),
                created: false,
                new_links: vec![1],
                merged: vec![]
            }
        );
        let p = plan_record(&[s("et_c"), s("et_a"), s("et_c"), None], || unreachable!());
        assert_eq!(
            p,
            LinkPlan {
                token: "et_a".into(),
                created: false,
                new_links: vec![3],
                merged: vec!["et_c".into()]
            }
        );
        assert!(plan_record(&[s("et_a"), s("et_a")], || unreachable!()).is_noop());
    }

    #[test]
    fn survivor_does_not_depend_on_order() {
        let a = plan_record(&[s("et_z"), s("et_m")], || unreachable!());
        let b = plan_record(&[s("et_m"), s("et_z")], || unreachable!());
        assert_eq!(a.token, b.token);
        assert_eq!(a.merged, b.merged);
    }

    #[test]
    fn sealed_identifiers_are_bound_to_their_index() {
        let rng = crate::SystemRng::default();
        let k = XrefSealKey::from_bytes([5; 32], 1);
        let s = seal_identifier(&k, &[1; 32], "+447700900001", &rng).unwrap();
        assert_eq!(
            &*open_identifier(&k, &[1; 32], &s).unwrap(),
            "+447700900001"
        );
        assert!(open_identifier(&k, &[2; 32], &s).is_err());
    }

    #[test]
    fn sealed_bridge_identifiers() {
        let rng = crate::SystemRng::default();
        let k = BridgeSealKey::from_bytes([9; 32], 3);
        let s = seal_bridge_identifier(
            &k,
            "partner-a",
            IdentifierType::Msisdn,
            "+447700900001",
            &rng,
        )
        .unwrap();
        assert_eq!(sealed_bridge_version(&s), Some(3));
        assert_eq!(
            &*open_bridge_identifier(&k, "partner-a", IdentifierType::Msisdn, &s).unwrap(),
            "+447700900001"
        );
        // Bound to its type: an msisdn cannot be replayed as an account.
        assert!(open_bridge_identifier(&k, "partner-a", IdentifierType::Account, &s).is_err());
        // Bound to its partner, even under the same key bytes.
        assert!(open_bridge_identifier(&k, "partner-b", IdentifierType::Msisdn, &s).is_err());
        let mut t = s.clone();
        *t.last_mut().unwrap() ^= 1;
        assert!(open_bridge_identifier(&k, "partner-a", IdentifierType::Msisdn, &t).is_err());
        let f = bridge_key_file("partner-a", &k);
        let (partner, back) = parse_bridge_key_file(&f).unwrap();
        assert_eq!(partner, "partner-a");
        assert_eq!((back.version(), back.expose()), (3, &[9; 32]));
        assert!(
            parse_bridge_key_file("idvault-bridge-key v2\npartner a\nversion 1\nkey zz").is_err()
        );
        assert!(parse_bridge_key_file("idvault-bridge-key v2\nversion 1\nkey 00").is_err());
        let v1 = format!("idvault-bridge-key v1\nversion 1\nkey {}", "00".repeat(32));
        assert!(
            parse_bridge_key_file(&v1)
                .unwrap_err()
                .contains("--partner")
        );
    }

    /// Known answer: the sealed layout and associated data, with a fixed
    /// key and nonce, so another language can check its own sealing.
    #[test]
    fn sealed_bridge_identifier_vector() {
        struct Fixed;
        impl crate::crypto::Rng for Fixed {
            fn fill(&self, dest: &mut [u8]) -> Result<(), crypto::CryptoError> {
                for (i, b) in dest.iter_mut().enumerate() {
                    *b = u8::try_from(i).unwrap();
                }
                Ok(())
            }
        }
        let k = BridgeSealKey::from_bytes([0x42; 32], 1);
        let s = seal_bridge_identifier(
            &k,
            "partner-a",
            IdentifierType::Msisdn,
            "+447700900001",
            &Fixed,
        )
        .unwrap();
        assert_eq!(
            hex::encode(&s),
            BRIDGE_VECTOR,
            "update docs/tokenize.md with the new vector"
        );
    }

    const BRIDGE_VECTOR: &str = "00000001000102030405060708090a0b2eeaa5ea861cc232ad367423e030dd5cfe963e0a4868c43f7102318660";

    #[test]
    fn blind_indexes_separate_types_and_keys() {
        let k1 = XrefIndexKey::from_bytes([1; 32], 1);
        let k2 = XrefIndexKey::from_bytes([2; 32], 2);
        let a = blind_index(&k1, IdentifierType::Account, "123");
        assert_ne!(a, blind_index(&k1, IdentifierType::Msisdn, "123"));
        assert_ne!(a, blind_index(&k2, IdentifierType::Account, "123"));
        assert_eq!(a, blind_index(&k1, IdentifierType::Account, "123"));
    }
}
