//! The JOSE pieces SD-JWT needs, and only those: base64url without
//! padding, ES256 compact JWS (RFC 7515, RFC 7518 section 3.4), P-256 JWKs
//! (RFC 7517/7518 section 6.2), JWK thumbprints (RFC 7638) and a JWK Set.
//!
//! One algorithm on purpose: a verifier that accepts whatever `alg` the
//! token names can be talked into `none` or into HMAC keyed with a public
//! key. Here `alg` must be `ES256`, and a `crit` header (an extension we
//! would have to understand) is refused.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use serde_json::{Map, Value};

use super::SdJwtError;
use crate::crypto::sha256;

/// The one JWS algorithm: ECDSA P-256 with SHA-256, `r || s` signatures.
pub const ES256: &str = "ES256";

/// Length of an ES256 signature (`r || s`, 32 bytes each).
pub const SIGNATURE_LEN: usize = 64;

/// Base64url without padding (RFC 7515 section 2).
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding; padding, other alphabets and
/// non-canonical trailing bits are refused.
pub fn unb64(s: &str, what: &'static str) -> Result<Vec<u8>, SdJwtError> {
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| SdJwtError::Malformed(what))
}

/// `b64(SHA-256(ascii))`: the digest SD-JWT uses for disclosures and for
/// `sd_hash` (RFC 9901 sections 4.2.3 and 4.3.1).
pub fn sha256_b64(ascii: &str) -> String {
    b64(&sha256(&[ascii.as_bytes()]))
}

/// Decodes a base64url JSON object (a JWS header or payload).
fn json_object(part: &str, what: &'static str) -> Result<Map<String, Value>, SdJwtError> {
    let bytes = unb64(part, what)?;
    // serde_json bounds nesting (128 levels), so hostile depth is an
    // error, not a stack overflow.
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(SdJwtError::Malformed(what)),
    }
}

/// A compact JWS, split and decoded, signature not yet checked.
#[derive(Debug)]
pub struct ParsedJws<'a> {
    /// The protected header.
    pub header: Map<String, Value>,
    /// The payload, a JSON object.
    pub payload: Map<String, Value>,
    /// `header_b64 '.' payload_b64`: what the signature covers.
    pub signing_input: &'a str,
    /// The decoded `r || s`.
    pub signature: Vec<u8>,
}

impl<'a> ParsedJws<'a> {
    /// Splits and decodes `text`; checks `alg` is ES256, `typ` is `typ`
    /// and no `crit` is present.
    pub fn parse(text: &'a str, typ: &str) -> Result<Self, SdJwtError> {
        let mut parts = text.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SdJwtError::Malformed("JWS is not three parts"));
        };
        let header = json_object(h, "JWS header")?;
        if header.get("alg").and_then(Value::as_str) != Some(ES256) {
            return Err(SdJwtError::Unsupported("alg other than ES256"));
        }
        if header.get("typ").and_then(Value::as_str) != Some(typ) {
            return Err(SdJwtError::Unsupported("unexpected typ"));
        }
        if header.contains_key("crit") {
            return Err(SdJwtError::Unsupported("crit header"));
        }
        let payload = json_object(p, "JWS payload")?;
        let signature = unb64(s, "JWS signature")?;
        let signing_input = text
            .get(..h.len() + 1 + p.len())
            .ok_or(SdJwtError::Malformed("JWS"))?;
        Ok(Self {
            header,
            payload,
            signing_input,
            signature,
        })
    }

    /// The header's `kid`, if a string.
    pub fn kid(&self) -> Option<&str> {
        self.header.get("kid").and_then(Value::as_str)
    }

    /// Checks the signature with `key`.
    pub fn verify(&self, key: &VerifyingKey) -> Result<(), SdJwtError> {
        verify_es256(key, self.signing_input.as_bytes(), &self.signature)
    }
}

/// Verifies an ES256 signature over `input`.
///
/// Unlike the vault's own device-request verifier (which refuses high-S,
/// see [`crate::consent::verify`]), both S forms are accepted: JOSE does
/// not require low-S, wallets' platform signers do not normalise, and
/// nothing here is keyed on signature bytes (key binding's replay
/// protection is the verifier's nonce).
pub fn verify_es256(key: &VerifyingKey, input: &[u8], sig: &[u8]) -> Result<(), SdJwtError> {
    if sig.len() != SIGNATURE_LEN {
        return Err(SdJwtError::BadSignature);
    }
    // ring's verifier: about four times faster than the pure-Rust one here,
    // and the same `r || s` encoding (it refuses r or s of zero or not
    // below the group order, and a point not on the curve).
    let point = key.to_sec1_point(false);
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_FIXED,
        point.as_bytes(),
    )
    .verify(input, sig)
    .map_err(|_| SdJwtError::BadSignature)
}

/// Signs `header.payload` with ES256 (RFC 6979 deterministic nonces) and
/// returns the compact JWS.
pub fn sign_compact(key: &SigningKey, header: &Map<String, Value>, payload: &str) -> String {
    let mut out = b64(Value::Object(header.clone()).to_string().as_bytes());
    out.push('.');
    out.push_str(&b64(payload.as_bytes()));
    let sig: Signature = key.sign(out.as_bytes());
    out.push('.');
    out.push_str(&b64(&sig.to_bytes()));
    out
}

/// A P-256 public key as a JWK: the only key type the vault issues with
/// or binds credentials to.
#[derive(Clone, PartialEq, Eq)]
pub struct EcJwk(VerifyingKey);

impl std::fmt::Debug for EcJwk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EcJwk({})", self.thumbprint())
    }
}

impl EcJwk {
    /// Wraps a verifying key.
    pub fn new(key: VerifyingKey) -> Self {
        Self(key)
    }

    /// From a SEC1 uncompressed point (65 bytes).
    pub fn from_sec1(bytes: &[u8]) -> Result<Self, SdJwtError> {
        if bytes.len() != 65 || bytes.first() != Some(&0x04) {
            return Err(SdJwtError::Malformed("P-256 public key"));
        }
        VerifyingKey::from_sec1_bytes(bytes)
            .map(Self)
            .map_err(|_| SdJwtError::Malformed("P-256 public key"))
    }

    /// The key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.0
    }

    /// `(x, y)`, 32 bytes each, big-endian.
    fn coordinates(&self) -> (Vec<u8>, Vec<u8>) {
        let point = self.0.to_sec1_point(false);
        let bytes = point.as_bytes();
        (
            bytes.get(1..33).unwrap_or_default().to_vec(),
            bytes.get(33..65).unwrap_or_default().to_vec(),
        )
    }

    /// The public JWK members `kty`, `crv`, `x`, `y`.
    pub fn to_json(&self) -> Map<String, Value> {
        let (x, y) = self.coordinates();
        let mut m = Map::new();
        m.insert("kty".into(), "EC".into());
        m.insert("crv".into(), "P-256".into());
        m.insert("x".into(), b64(&x).into());
        m.insert("y".into(), b64(&y).into());
        m
    }

    /// Parses a public P-256 JWK. A JWK carrying a private part (`d`) is
    /// refused: whoever sent it has leaked a key, and accepting it would
    /// teach them that works.
    pub fn from_json(v: &Value) -> Result<Self, SdJwtError> {
        let m = v.as_object().ok_or(SdJwtError::Malformed("JWK"))?;
        if m.get("kty").and_then(Value::as_str) != Some("EC")
            || m.get("crv").and_then(Value::as_str) != Some("P-256")
        {
            return Err(SdJwtError::Unsupported("JWK other than EC P-256"));
        }
        if m.contains_key("d") {
            return Err(SdJwtError::Malformed("JWK holds a private key"));
        }
        let coord = |name: &str| -> Result<Vec<u8>, SdJwtError> {
            let s = m
                .get(name)
                .and_then(Value::as_str)
                .ok_or(SdJwtError::Malformed("JWK coordinate"))?;
            let b = unb64(s, "JWK coordinate")?;
            if b.len() == 32 {
                Ok(b)
            } else {
                Err(SdJwtError::Malformed("JWK coordinate"))
            }
        };
        let mut sec1 = vec![0x04];
        sec1.extend_from_slice(&coord("x")?);
        sec1.extend_from_slice(&coord("y")?);
        Self::from_sec1(&sec1)
    }

    /// The RFC 7638 thumbprint: base64url SHA-256 of
    /// `{"crv":"P-256","kty":"EC","x":…,"y":…}` (members in that order, no
    /// whitespace). The vault's `kid`s are these.
    pub fn thumbprint(&self) -> String {
        let (x, y) = self.coordinates();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            b64(&x),
            b64(&y)
        );
        sha256_b64(&canonical)
    }
}

/// The issuer's public keys: a JWK Set (RFC 7517 section 5) of P-256
/// keys, each with its `kid`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Jwks {
    keys: Vec<(String, EcJwk)>,
}

/// Most keys a JWK Set may hold (a parser of outside bytes bounds all).
pub const MAX_JWKS_KEYS: usize = 64;

impl Jwks {
    /// From `(kid, key)` pairs.
    pub fn new(keys: Vec<(String, EcJwk)>) -> Self {
        Self { keys }
    }

    /// The key named `kid`. A JWS without `kid` is accepted only against
    /// a set of exactly one key.
    pub fn key(&self, kid: Option<&str>) -> Option<&EcJwk> {
        match kid {
            Some(k) => self.keys.iter().find(|(id, _)| id == k).map(|(_, j)| j),
            None if self.keys.len() == 1 => self.keys.first().map(|(_, j)| j),
            None => None,
        }
    }

    /// The kids, in order.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(k, _)| k.as_str())
    }

    /// `{"keys":[{kty,crv,x,y,kid,alg,use}, …]}`.
    pub fn to_json(&self) -> String {
        let keys: Vec<Value> = self
            .keys
            .iter()
            .map(|(kid, jwk)| {
                let mut m = jwk.to_json();
                m.insert("kid".into(), kid.clone().into());
                m.insert("alg".into(), ES256.into());
                m.insert("use".into(), "sig".into());
                Value::Object(m)
            })
            .collect();
        let mut set = Map::new();
        set.insert("keys".into(), Value::Array(keys));
        Value::Object(set).to_string()
    }

    /// Parses a JWK Set. Keys that are not EC P-256 signing keys are
    /// skipped (a set may hold other kinds); every kept key needs a `kid`.
    pub fn parse(text: &str) -> Result<Self, SdJwtError> {
        let v: Value = serde_json::from_str(text).map_err(|_| SdJwtError::Malformed("JWK Set"))?;
        let keys = v
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(SdJwtError::Malformed("JWK Set"))?;
        if keys.len() > MAX_JWKS_KEYS {
            return Err(SdJwtError::Malformed("JWK Set too large"));
        }
        let mut out = Vec::new();
        for k in keys {
            let usable = k.get("kty").and_then(Value::as_str) == Some("EC")
                && k.get("crv").and_then(Value::as_str) == Some("P-256")
                && k.get("use")
                    .and_then(Value::as_str)
                    .is_none_or(|u| u == "sig");
            if !usable {
                continue;
            }
            let kid = k
                .get("kid")
                .and_then(Value::as_str)
                .ok_or(SdJwtError::Malformed("JWK without kid"))?;
            out.push((kid.to_owned(), EcJwk::from_json(k)?));
        }
        Ok(Self { keys: out })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7638 section 3.1 computes its example over an RSA key; this is
    /// RFC 9901 Appendix A.5's issuer key, whose thumbprint was computed
    /// independently (Python: hashlib over the canonical JSON).
    #[test]
    fn thumbprint_of_the_rfc_9901_issuer_key() {
        let jwk = EcJwk::from_json(&serde_json::json!({
            "kty": "EC", "crv": "P-256",
            "x": "b28d4MwZMjw8-00CG4xfnn9SLMVMM19SlqZpVb_uNtQ",
            "y": "Xv5zWwuoaTgdS6hV43yI6gBwTnjukmFQQnJ_kCxzqk8"
        }))
        .unwrap();
        assert_eq!(jwk.thumbprint(), super::super::tests::RFC_ISSUER_THUMBPRINT);
        let back = EcJwk::from_json(&Value::Object(jwk.to_json())).unwrap();
        assert_eq!(back, jwk);
    }

    #[test]
    fn jwk_refusals() {
        let good = serde_json::json!({
            "kty": "EC", "crv": "P-256",
            "x": "b28d4MwZMjw8-00CG4xfnn9SLMVMM19SlqZpVb_uNtQ",
            "y": "Xv5zWwuoaTgdS6hV43yI6gBwTnjukmFQQnJ_kCxzqk8"
        });
        let mut with_d = good.clone();
        with_d["d"] = "Ur2bNKuBPOrAaxsRnbSH6hIhmNTxSGXshDSUD1a1y7g".into();
        assert!(EcJwk::from_json(&with_d).is_err());
        let mut off_curve = good.clone();
        off_curve["y"] = "Xv5zWwuoaTgdS6hV43yI6gBwTnjukmFQQnJ_kCxzqk0".into();
        assert!(EcJwk::from_json(&off_curve).is_err());
        let mut other = good.clone();
        other["crv"] = "P-384".into();
        assert!(EcJwk::from_json(&other).is_err());
        let mut padded = good;
        padded["x"] = "b28d4MwZMjw8-00CG4xfnn9SLMVMM19SlqZpVb_uNtQ=".into();
        assert!(EcJwk::from_json(&padded).is_err());
    }

    #[test]
    fn jws_header_checks() {
        let key = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let mut h = Map::new();
        h.insert("alg".into(), ES256.into());
        h.insert("typ".into(), "kb+jwt".into());
        let jws = sign_compact(&key, &h, r#"{"a":1}"#);
        let p = ParsedJws::parse(&jws, "kb+jwt").unwrap();
        p.verify(key.verifying_key()).unwrap();
        assert!(ParsedJws::parse(&jws, "dc+sd-jwt").is_err());
        h.insert("alg".into(), "none".into());
        let none = sign_compact(&key, &h, "{}");
        assert_eq!(
            ParsedJws::parse(&none, "kb+jwt").unwrap_err(),
            SdJwtError::Unsupported("alg other than ES256")
        );
        h.insert("alg".into(), ES256.into());
        h.insert("crit".into(), serde_json::json!(["exp"]));
        assert!(ParsedJws::parse(&sign_compact(&key, &h, "{}"), "kb+jwt").is_err());
        assert!(ParsedJws::parse("a.b", "kb+jwt").is_err());
        assert!(ParsedJws::parse("a.b.c.d", "kb+jwt").is_err());
    }

    /// Both S forms verify (JOSE does not require low S; platform
    /// signers do not normalise); anything else does not.
    #[test]
    fn es256_accepts_both_s_forms_only_for_the_right_key() {
        let key = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let sig: Signature = key.sign(b"input");
        let low = sig.normalize_s();
        let high = Signature::from_scalars(low.r().to_bytes(), (-*low.s()).to_bytes()).unwrap();
        let vk = key.verifying_key();
        verify_es256(vk, b"input", &low.to_bytes()).unwrap();
        verify_es256(vk, b"input", &high.to_bytes()).unwrap();
        assert!(verify_es256(vk, b"other", &low.to_bytes()).is_err());
        let other = SigningKey::from_slice(&[8u8; 32]).unwrap();
        assert!(verify_es256(other.verifying_key(), b"input", &low.to_bytes()).is_err());
        assert!(verify_es256(vk, b"input", &[0u8; 64]).is_err());
        assert!(verify_es256(vk, b"input", &low.to_bytes()[..63]).is_err());
    }

    #[test]
    fn jwks_round_trip_and_lookup() {
        let a = EcJwk::new(*SigningKey::from_slice(&[1u8; 32]).unwrap().verifying_key());
        let b = EcJwk::new(*SigningKey::from_slice(&[2u8; 32]).unwrap().verifying_key());
        let set = Jwks::new(vec![
            (a.thumbprint(), a.clone()),
            (b.thumbprint(), b.clone()),
        ]);
        let back = Jwks::parse(&set.to_json()).unwrap();
        assert_eq!(back, set);
        assert_eq!(back.key(Some(&b.thumbprint())), Some(&b));
        assert_eq!(back.key(None), None, "no kid, two keys: ambiguous");
        assert_eq!(back.key(Some("nope")), None);
    }
}
