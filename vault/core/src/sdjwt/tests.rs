//! Known-answer tests from the SD-JWT specification, and round trips.

use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use serde_json::{Map, Value, json};

use super::*;
use crate::crypto::SystemRng;

/// RFC 7638 thumbprint of RFC 9901 Appendix A.5's issuer key, computed
/// independently (Python hashlib, and joserfc's `ECKey.thumbprint()`).
pub(crate) const RFC_ISSUER_THUMBPRINT: &str = "Q5yTSREAbvZL131ynDBhalXJcF9fL0foJlMN8u6ldiY";

/// The specification's example presentation (draft-ietf-oauth-selective-
/// disclosure-jwt, the format RFC 9901 section 5.2 keeps): the issuer JWT
/// of section 5.1 signed with the Appendix A.5 key, four disclosures
/// (family_name, address, given_name, nationalities "US") and a KB-JWT
/// with `aud` https://verifier.example.org, `nonce` 1234567890, `iat`
/// 1702316015. Both signatures and the sd_hash were checked independently
/// with Python `cryptography`.
const SPEC_PRESENTATION: &str = concat!(
    "eyJhbGciOiAiRVMyNTYiLCAidHlwIjogImV4YW1wbGUrc2Qtand0In0.eyJfc2QiOiBbIkNyUWU3UzVrcUJBSHQtbk1ZWGdjNmJkdDJTSDVhVFkxc1VfTS1QZ2tqUEkiLCAiSnpZakg0c3ZsaUgwUjNQeUVNZmVadTZKdDY5dTVxZWhabzdGN0VQWWxTRSIsICJQb3JGYnBLdVZ1Nnh5bUphZ3ZrRnNGWEFiUm9jMkpHbEFVQTJCQTRvN2NJIiwgIlRHZjRvTGJnd2Q1SlFhSHlLVlFaVTlVZEdFMHc1cnREc3JaemZVYW9tTG8iLCAiWFFfM2tQS3QxWHlYN0tBTmtxVlI2eVoyVmE1TnJQSXZQWWJ5TXZSS0JNTSIsICJYekZyendzY002R242Q0pEYzZ2Vks4QmtNbmZHOHZPU0tmcFBJWmRBZmRFIiwgImdiT3NJNEVkcTJ4Mkt3LXc1d1BFemFrb2I5aFYxY1JEMEFUTjNvUUw5Sk0iLCAianN1OXlWdWx3UVFsaEZsTV8zSmx6TWFTRnpnbGhRRzBEcGZheVF3TFVLNCJdLCAiaXNzIjogImh0dHBzOi8vaXNzdWVyLmV4YW1wbGUuY29tIiwgImlhdCI6IDE2ODMwMDAwMDAsICJleHAiOiAxODgzMDAwMDAwLCAic3ViIjogInVzZXJfNDIiLCAibmF0aW9uYWxpdGllcyI6IFt7Ii4uLiI6ICJwRm5kamtaX1ZDem15VGE2VWpsWm8zZGgta284YUlLUWM5RGxHemhhVllvIn0sIHsiLi4uIjogIjdDZjZKa1B1ZHJ5M2xjYndIZ2VaOGtoQXYxVTFPU2xlclAwVmtCSnJXWjAifV0sICJfc2RfYWxnIjogInNoYS0yNTYiLCAiY25mIjogeyJqd2siOiB7Imt0eSI6ICJFQyIsICJjcnYiOiAiUC0yNTYiLCAieCI6ICJUQ0FFUjE5WnZ1M09IRjRqNFc0dmZTVm9ISVAxSUxpbERsczd2Q2VHZW1jIiwgInkiOiAiWnhqaVdXYlpNUUdIVldLVlE0aGJTSWlyc1ZmdWVjQ0U2dDRqVDlGMkhaUSJ9fX0.7oEYwv1H4rBa54xAhDH19DEIy-RRSTdwyJvhbjOKVFyQeM0-gcgpwCq-yFCbWj9THEjD9M4yYkAeaWXfuvBS-Q",
    "~WyJlbHVWNU9nM2dTTklJOEVZbnN4QV9BIiwgImZhbWlseV9uYW1lIiwgIkRvZSJd",
    "~WyJBSngtMDk1VlBycFR0TjRRTU9xUk9BIiwgImFkZHJlc3MiLCB7InN0cmVldF9hZGRyZXNzIjogIjEyMyBNYWluIFN0IiwgImxvY2FsaXR5IjogIkFueXRvd24iLCAicmVnaW9uIjogIkFueXN0YXRlIiwgImNvdW50cnkiOiAiVVMifV0",
    "~WyIyR0xDNDJzS1F2ZUNmR2ZyeU5STjl3IiwgImdpdmVuX25hbWUiLCAiSm9obiJd",
    "~WyJsa2x4RjVqTVlsR1RQVW92TU5JdkNBIiwgIlVTIl0",
    "~eyJhbGciOiAiRVMyNTYiLCAidHlwIjogImtiK2p3dCJ9.eyJub25jZSI6ICIxMjM0NTY3ODkwIiwgImF1ZCI6ICJodHRwczovL3ZlcmlmaWVyLmV4YW1wbGUub3JnIiwgImlhdCI6IDE3MDIzMTYwMTUsICJzZF9oYXNoIjogIm5ZY09YeVA0M3Y5c3pLcnluX2tfNEdrUnJfajNTVEhoTlNTLWkxRHVhdW8ifQ.12Qymun2geGbkYOwiV-DUVfS-zBBKqNe83yNbxM45J93bno-oM7mph3L1-rPa4lFKQ04wB-T9rU3uAZnBAan5g",
);

fn rfc_issuer_keys() -> Jwks {
    let jwk = EcJwk::from_json(&json!({
        "kty": "EC", "crv": "P-256",
        "x": "b28d4MwZMjw8-00CG4xfnn9SLMVMM19SlqZpVb_uNtQ",
        "y": "Xv5zWwuoaTgdS6hV43yI6gBwTnjukmFQQnJ_kCxzqk8"
    }))
    .unwrap();
    Jwks::new(vec![(jwk.thumbprint(), jwk)])
}

fn spec_expectations() -> Expectations<'static> {
    Expectations {
        typ: "example+sd-jwt",
        audience: "https://verifier.example.org",
        nonce: "1234567890",
        now: 1_702_316_020,
        skew_secs: 60,
        max_key_binding_age_secs: 300,
    }
}

#[test]
fn rfc_9901_disclosure_and_digest_computations() {
    // Section 4.2.1: an object property, with the RFC's own spacing.
    let d = Disclosure::parse(
        "WyJfMjZiYzRMVC1hYzZxMktJNmNCVzVlcyIsICJmYW1pbHlfbmFtZSIsICJNw7ZiaXVzIl0",
    )
    .unwrap();
    assert_eq!(d.name(), Some("family_name"));
    assert_eq!(d.value(), &json!("Möbius"));
    // Section 4.2.3: the digest is over the base64url text.
    assert_eq!(d.digest(), "X9yH0Ajrdm1Oij4tWso9UzzKJvPoDxwmuEcO3XAdRC0");
    // Section 4.2.2: an array element.
    let e = Disclosure::parse("WyJsa2x4RjVqTVlsR1RQVW92TU5JdkNBIiwgIkZSIl0").unwrap();
    assert_eq!(e.name(), None);
    assert_eq!(e.value(), &json!("FR"));
    assert_eq!(e.digest(), "w0I8EKcdCtUPkGCNUrfwVp2xEgNjtoIDlOxc9-PlOhs");
    // Our own encoder: same shape, no whitespace.
    let ours = Disclosure::new(b"0123456789abcdef", "family_name", json!("Möbius"));
    let back = Disclosure::parse(ours.encoded()).unwrap();
    assert_eq!(back.name(), Some("family_name"));
    assert_eq!(back.value(), &json!("Möbius"));
}

#[test]
fn disclosure_refusals() {
    for json in [
        r#"["salt"]"#,
        r#"["salt","a","b","c"]"#,
        r#"[1,"name","v"]"#,
        r#"["salt",1,"v"]"#,
        r#"["salt","_sd","v"]"#,
        r#"["salt","...","v"]"#,
        r#"{"a":1}"#,
    ] {
        assert!(
            Disclosure::parse(&jose::b64(json.as_bytes())).is_err(),
            "{json}"
        );
    }
    assert!(Disclosure::parse("!!").is_err());
}

#[test]
fn the_specification_presentation_verifies() {
    let v =
        verify_presentation(SPEC_PRESENTATION, &rfc_issuer_keys(), &spec_expectations()).unwrap();
    assert_eq!(v.issuer.as_deref(), Some("https://issuer.example.com"));
    assert_eq!(v.expires_at, 1_883_000_000);
    let mut names: Vec<&String> = v.disclosed.keys().collect();
    names.sort();
    assert_eq!(names, ["address", "family_name", "given_name"]);
    assert_eq!(v.disclosed["given_name"], json!("John"));
    assert_eq!(v.disclosed["address"]["locality"], json!("Anytown"));
    assert_eq!(
        v.holder.thumbprint(),
        EcJwk::from_json(&json!({"kty":"EC","crv":"P-256",
            "x":"TCAER19Zvu3OHF4j4W4vfSVoHIP1ILilDls7vCeGemc",
            "y":"ZxjiWWbZMQGHVWKVQ4hbSIirsVfuecCE6t4jT9F2HZQ"}))
        .unwrap()
        .thumbprint()
    );
}

#[test]
fn the_specification_presentation_refused_when_altered() {
    let keys = rfc_issuer_keys();
    let e = spec_expectations();
    let wrong = |f: &dyn Fn(&mut Expectations<'static>)| {
        let mut x = e.clone();
        f(&mut x);
        verify_presentation(SPEC_PRESENTATION, &keys, &x).unwrap_err()
    };
    assert_eq!(
        wrong(&|x| x.nonce = "1234567891"),
        SdJwtError::KeyBinding("nonce")
    );
    assert_eq!(
        wrong(&|x| x.audience = "https://other.example"),
        SdJwtError::KeyBinding("audience")
    );
    assert!(matches!(
        wrong(&|x| x.now = 1_702_316_015 + 3600),
        SdJwtError::KeyBinding(_)
    ));
    assert_eq!(wrong(&|x| x.now = 1_883_000_061), SdJwtError::Expired);
    assert!(matches!(
        wrong(&|x| x.typ = TYP_CREDENTIAL),
        SdJwtError::Unsupported(_)
    ));

    // A disclosure dropped after the holder signed: sd_hash differs.
    let parts: Vec<&str> = SPEC_PRESENTATION.split('~').collect();
    let mut fewer = parts.clone();
    fewer.remove(2);
    assert_eq!(
        verify_presentation(&fewer.join("~"), &keys, &e).unwrap_err(),
        SdJwtError::KeyBinding("sd_hash does not match the SD-JWT")
    );
    // A disclosure not in the credential.
    let mut extra = parts.clone();
    let forged = Disclosure::new(b"salt-salt-salt!!", "given_name", json!("Mallory"));
    extra.insert(1, forged.encoded());
    assert_eq!(
        verify_presentation(&extra.join("~"), &keys, &e).unwrap_err(),
        SdJwtError::Disclosure("disclosure not referenced")
    );
    // The same disclosure twice.
    let mut twice = parts.clone();
    twice.insert(1, parts[1]);
    assert!(matches!(
        verify_presentation(&twice.join("~"), &keys, &e).unwrap_err(),
        SdJwtError::Disclosure(_)
    ));
    // Without the key binding.
    let bare = format!("{}~", parts[..parts.len() - 1].join("~"));
    assert_eq!(
        verify_presentation(&bare, &keys, &e).unwrap_err(),
        SdJwtError::KeyBinding("missing")
    );
    // A flipped bit in the issuer signature.
    let sig_at = parts[0].rfind('.').unwrap() + 1;
    let mut jwt = parts[0].to_owned();
    let c = if &jwt[sig_at..=sig_at] == "7" {
        "8"
    } else {
        "7"
    };
    jwt.replace_range(sig_at..=sig_at, c);
    let mut resigned = parts.clone();
    resigned[0] = &jwt;
    assert_eq!(
        verify_presentation(&resigned.join("~"), &keys, &e).unwrap_err(),
        SdJwtError::BadSignature
    );
    // Another issuer's key (the example JWS has no kid, so a one-key set
    // is tried and the signature fails).
    let other = EcJwk::new(*SigningKey::from_slice(&[9u8; 32]).unwrap().verifying_key());
    assert_eq!(
        verify_presentation(SPEC_PRESENTATION, &Jwks::new(vec![("k".into(), other)]), &e)
            .unwrap_err(),
        SdJwtError::BadSignature
    );
}

struct Wallet(SigningKey);

impl Wallet {
    fn jwk(&self) -> EcJwk {
        EcJwk::new(*self.0.verifying_key())
    }

    fn present(&self, cred: &str, names: &[&str], aud: &str, nonce: &str, iat: i64) -> String {
        let c = Credential::parse(cred).unwrap();
        let sd = c.disclose(names).unwrap();
        let input = key_binding_input(&sd, aud, nonce, iat);
        let sig: Signature = self.0.sign(input.as_bytes());
        with_key_binding(&sd, &input, &sig.to_bytes())
    }
}

/// The credential metadata of these tests: one day from 1,800,000,000.
fn test_spec(holder: &EcJwk) -> CredentialSpec<'_> {
    CredentialSpec {
        issuer: "https://idvault.example",
        vct: DEFAULT_VCT,
        issued_at: 1_800_000_000,
        expires_at: 1_800_086_400,
        holder,
        status: None,
    }
}

fn issuer() -> IssuerKey {
    IssuerKey::from_scalar(&[3u8; 32]).unwrap()
}

fn issued(wallet: &Wallet) -> String {
    let claims = vec![
        ("given_name".to_string(), json!("Ada")),
        ("family_name".to_string(), json!("Lovelace")),
        ("birthdate".to_string(), json!("1815-12-10")),
        ("age_over_18".to_string(), json!(true)),
        (
            "address".to_string(),
            json!({"locality": "London", "country": "GB"}),
        ),
    ];
    let holder = wallet.jwk();
    let spec = test_spec(&holder);
    issue(&issuer(), &spec, claims, &SystemRng::default())
        .unwrap()
        .to_string()
}

fn ours(now: i64) -> Expectations<'static> {
    Expectations {
        typ: TYP_CREDENTIAL,
        audience: "spiffe://idvault.local/partner/rp",
        nonce: "n-0S6_WzA2Mj",
        now,
        skew_secs: 60,
        max_key_binding_age_secs: 300,
    }
}

fn issuer_set() -> Jwks {
    let k = issuer();
    Jwks::new(vec![(k.kid().to_owned(), k.jwk().clone())])
}

#[test]
fn issued_credentials_have_their_shape() {
    let w = Wallet(SigningKey::from_slice(&[5u8; 32]).unwrap());
    let cred = issued(&w);
    assert!(cred.ends_with('~'));
    let parts: Vec<&str> = cred.split('~').collect();
    let jws = ParsedJws::parse(parts[0], TYP_CREDENTIAL).unwrap();
    assert_eq!(jws.kid(), Some(issuer().kid()));
    jws.verify(issuer().jwk().verifying_key()).unwrap();
    let sd: Vec<&str> = jws.payload["_sd"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(sd.len(), SD_DIGESTS, "decoys pad the digest list");
    let mut sorted = sd.clone();
    sorted.sort();
    assert_eq!(sd, sorted);
    let disclosures = &parts[1..parts.len() - 1];
    assert_eq!(disclosures.len(), 5);
    for d in disclosures {
        let d = Disclosure::parse(d).unwrap();
        assert!(sd.contains(&d.digest().as_str()), "{d:?}");
    }
    assert_eq!(jws.payload["_sd_alg"], json!("sha-256"));
    assert_eq!(jws.payload["vct"], json!(DEFAULT_VCT));
    assert_eq!(
        EcJwk::from_json(&jws.payload["cnf"]["jwk"]).unwrap(),
        w.jwk()
    );
    // No claim value is in the signed payload in clear.
    assert!(
        !Value::Object(jws.payload.clone())
            .to_string()
            .contains("Lovelace")
    );
    // Two issues of the same claims share no disclosure (fresh salts).
    let again = issued(&w);
    for d in disclosures {
        assert!(!again.contains(d));
    }
}

#[test]
fn a_subset_presentation_reveals_only_that_subset() {
    let w = Wallet(SigningKey::from_slice(&[5u8; 32]).unwrap());
    let cred = issued(&w);
    let now = 1_800_000_100;
    let e = ours(now);
    let p = w.present(
        &cred,
        &["given_name", "age_over_18"],
        e.audience,
        e.nonce,
        now,
    );
    let v = verify_presentation(&p, &issuer_set(), &e).unwrap();
    let mut names: Vec<&String> = v.disclosed.keys().collect();
    names.sort();
    assert_eq!(names, ["age_over_18", "given_name"]);
    assert_eq!(v.disclosed["age_over_18"], json!(true));
    assert!(!p.contains(&jose::b64(b"Lovelace")));
    assert_eq!(v.vct.as_deref(), Some(DEFAULT_VCT));
    // Nothing disclosed at all still proves holding the credential.
    let none = w.present(&cred, &[], e.audience, e.nonce, now);
    assert!(
        verify_presentation(&none, &issuer_set(), &e)
            .unwrap()
            .disclosed
            .is_empty()
    );
    // A claim the credential lacks cannot be chosen.
    assert!(
        Credential::parse(&cred)
            .unwrap()
            .disclose(&["national_id"])
            .is_err()
    );
}

#[test]
fn presentations_are_refused_for_each_fault() {
    let w = Wallet(SigningKey::from_slice(&[5u8; 32]).unwrap());
    let cred = issued(&w);
    let now = 1_800_000_100;
    let e = ours(now);
    let keys = issuer_set();
    let good = w.present(&cred, &["given_name"], e.audience, e.nonce, now);
    assert!(verify_presentation(&good, &keys, &e).is_ok());

    // Key binding signed by another key.
    let thief = Wallet(SigningKey::from_slice(&[6u8; 32]).unwrap());
    let stolen = thief.present(&cred, &["given_name"], e.audience, e.nonce, now);
    assert_eq!(
        verify_presentation(&stolen, &keys, &e).unwrap_err(),
        SdJwtError::KeyBinding("signature is not the holder's")
    );
    // A tampered disclosure (another value under the same name).
    let c = Credential::parse(&cred).unwrap();
    let real = c.disclose(&["given_name"]).unwrap();
    let fake = Disclosure::new(b"0000000000000000", "given_name", json!("Eve"));
    let real_enc = real.split('~').nth(1).unwrap().to_owned();
    let swapped = real.replace(&real_enc, fake.encoded());
    let input = key_binding_input(&swapped, e.audience, e.nonce, now);
    let sig: Signature = w.0.sign(input.as_bytes());
    let tampered = with_key_binding(&swapped, &input, &sig.to_bytes());
    assert_eq!(
        verify_presentation(&tampered, &keys, &e).unwrap_err(),
        SdJwtError::Disclosure("disclosure not referenced")
    );
    // Wrong nonce, wrong audience, stale, expired.
    let other_nonce = w.present(&cred, &["given_name"], e.audience, "other", now);
    assert_eq!(
        verify_presentation(&other_nonce, &keys, &e).unwrap_err(),
        SdJwtError::KeyBinding("nonce")
    );
    let other_aud = w.present(&cred, &["given_name"], "spiffe://x/partner/y", e.nonce, now);
    assert_eq!(
        verify_presentation(&other_aud, &keys, &e).unwrap_err(),
        SdJwtError::KeyBinding("audience")
    );
    let stale = w.present(&cred, &["given_name"], e.audience, e.nonce, now - 3600);
    assert!(matches!(
        verify_presentation(&stale, &keys, &e).unwrap_err(),
        SdJwtError::KeyBinding(_)
    ));
    let late = ours(1_800_086_400 + 61);
    let expired = w.present(&cred, &["given_name"], late.audience, late.nonce, late.now);
    assert_eq!(
        verify_presentation(&expired, &keys, &late).unwrap_err(),
        SdJwtError::Expired
    );
    // Nothing outside the alphabet reaches a parser; sizes are bounded.
    assert!(verify_presentation("<script>~", &keys, &e).is_err());
    let huge = "a".repeat(MAX_PRESENTATION_BYTES + 1);
    assert!(verify_presentation(&huge, &keys, &e).is_err());
}

/// Key Binding JWTs as other wallets write them (RFC 7519): a fractional
/// `iat`, `aud` as an array naming the verifier, and the optional `exp`
/// and `nbf`, which bind when present.
#[test]
fn key_binding_jwts_of_other_wallets() {
    let w = Wallet(SigningKey::from_slice(&[5u8; 32]).unwrap());
    let cred = issued(&w);
    let now = 1_800_000_100;
    let e = ours(now);
    let keys = issuer_set();
    let sd = Credential::parse(&cred)
        .unwrap()
        .disclose(&["given_name"])
        .unwrap();
    let present = |extra: Value| {
        let mut payload = json!({
            "aud": e.audience,
            "iat": now,
            "nonce": e.nonce,
            "sd_hash": sha256_b64(&sd),
        });
        for (k, v) in extra.as_object().unwrap() {
            payload[k] = v.clone();
        }
        let input = format!(
            "{}.{}",
            b64(json!({"alg": "ES256", "typ": "kb+jwt"})
                .to_string()
                .as_bytes()),
            b64(payload.to_string().as_bytes())
        );
        let sig: Signature = w.0.sign(input.as_bytes());
        verify_presentation(&with_key_binding(&sd, &input, &sig.to_bytes()), &keys, &e)
    };
    assert!(present(json!({"iat": 1_800_000_099.731})).is_ok());
    assert!(present(json!({"aud": ["https://other.example", e.audience]})).is_ok());
    assert!(present(json!({"exp": now + 120, "nbf": now - 1})).is_ok());
    for (extra, why) in [
        (json!({"aud": ["https://other.example"]}), "audience"),
        (json!({"aud": []}), "audience"),
        (json!({"aud": 7}), "audience"),
        (json!({"iat": "1800000100"}), "iat"),
        (json!({"iat": 1.0e300}), "iat"),
        (json!({"exp": now - 61}), "expired"),
        (json!({"exp": "soon"}), "exp"),
        (json!({"nbf": now + 61}), "not yet valid"),
    ] {
        assert_eq!(
            present(extra.clone()).unwrap_err(),
            SdJwtError::KeyBinding(why),
            "{extra}"
        );
    }
}

#[test]
fn errors_and_debug_never_show_claim_values() {
    let w = Wallet(SigningKey::from_slice(&[5u8; 32]).unwrap());
    let cred = issued(&w);
    let c = Credential::parse(&cred).unwrap();
    assert!(!format!("{c:?}").contains("Lovelace"));
    let e = ours(1_800_000_100);
    let p = w.present(&cred, &["family_name"], e.audience, e.nonce, e.now);
    let v = verify_presentation(&p, &issuer_set(), &e).unwrap();
    assert!(!format!("{v:?}").contains("Lovelace"));
}

/// A deterministic "random" source for the documented example: call `n`
/// fills with SHA-256("idvault/doc-example" || n).
struct DocRng(std::sync::atomic::AtomicU8);

impl crate::crypto::Rng for DocRng {
    fn fill(&self, buf: &mut [u8]) -> Result<(), CryptoError> {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let h = sha256(&[b"idvault/doc-example", &[n]]);
        for (b, x) in buf.iter_mut().zip(h.iter().cycle()) {
            *b = *x;
        }
        Ok(())
    }
}

/// The worked example of docs/digital-id.md: if this test changes, so
/// must the document (and the Python check there).
#[test]
fn documented_example() {
    let provider =
        crate::keys::StaticKeyProvider::new([crate::secret::RootKey::from_bytes([1; 32], 1)])
            .unwrap();
    let keys = crate::keys::KeyHierarchy::new(Box::new(provider));
    let issuer = keys.issuer_key(1).unwrap();
    let scalar: Vec<u8> = (1u8..=32).collect();
    let device = SigningKey::from_slice(&scalar).unwrap();
    let holder = EcJwk::new(*device.verifying_key());
    let spec = CredentialSpec {
        issuer: "https://idvault.local",
        vct: DEFAULT_VCT,
        issued_at: 1_800_000_000,
        expires_at: 1_802_592_000,
        holder: &holder,
        status: None,
    };
    let claims = vec![
        ("given_name".to_string(), json!("Ada")),
        ("family_name".to_string(), json!("Lovelace")),
        ("birthdate".to_string(), json!("1815-12-10")),
        ("age_over_18".to_string(), json!(true)),
        (
            "address".to_string(),
            json!({"locality": "London", "country": "GB"}),
        ),
    ];
    let rng = DocRng(std::sync::atomic::AtomicU8::new(0));
    let cred = issue(&issuer, &spec, claims, &rng).unwrap();
    let sd = Credential::parse(&cred)
        .unwrap()
        .disclose(&["given_name", "age_over_18"])
        .unwrap();
    let aud = "spiffe://idvault.dev/partner/partner-a";
    let input = key_binding_input(&sd, aud, "n-0S6_WzA2Mj", 1_800_000_100);
    let sig: Signature = device.sign(input.as_bytes());
    let presentation = with_key_binding(&sd, &input, &sig.normalize_s().to_bytes());
    // To regenerate the document's text: print `cred` and `presentation`.
    let e = Expectations {
        typ: TYP_CREDENTIAL,
        audience: aud,
        nonce: "n-0S6_WzA2Mj",
        now: 1_800_000_100,
        skew_secs: 60,
        max_key_binding_age_secs: 300,
    };
    let set = Jwks::new(vec![(issuer.kid().to_owned(), issuer.jwk().clone())]);
    let v = verify_presentation(&presentation, &set, &e).unwrap();
    assert_eq!(v.disclosed.len(), 2);
    assert_eq!(cred.as_str(), DOC_CREDENTIAL);
    assert_eq!(presentation, DOC_PRESENTATION);
}

const DOC_CREDENTIAL: &str = concat!(
    "eyJhbGciOiJFUzI1NiIsImtpZCI6InJlNDVvTlo3YUJwelItY09kRllWYzlBX19NU1ltOGw3ZlNZc2E5MVlCcG8iLCJ0eXAiOiJkYytzZC1qd3QifQ.eyJfc2QiOlsiM0J4cEtqa05oMHBmdGp3Z1Y0WGlPX2d0ZHNZbnY5TFJRb2JjVkRVd2hyMCIsIjNrVW5BY1NBOGMzbU9JcTlnTHVPdWZYdXdwRmdobE5LZjBOY0RwZWpOWDAiLCI1TTl4TXhJQ2NfX0tuSW8xQ2c1MEdBWXY2U2NmZWI3UlNnNDJ5YnBfX2I0IiwiN1pZSmV5MTlmZjhXeHIwdVZ5TEYxWkZKb2k2T3JIejB0bjZVNHdZWkUybyIsIjlPR1BieFRWUDZoZ3BlZjFlVHNKTmJfX3VKaVdGaWJUN1BMNXlUeFpIMkEiLCJFMHJFQThJckFaN2NLRTJ0bkVCMEEwc0lSN0NWZEp3X1F0bmhYNVF4d1A0IiwiTnVqVC12VVpkUXp0WGlyTm5wblBwZko2Mi1TcUQzdGlwVllsR3Q2YUx5byIsIk9IT3M3aEZibWRtVGhzUWpVZnF6b2tSWktETmh2V09NMDBEcW0xRWoydUUiLCJVdkRrQUxyMnZxTDlVMzhkcjFvdGtXdVFzbF9WaUR1RzFGMkt0QmpuamwwIiwiVm5iX0kyNFBNX2hybnl4eVUtWFUtSHpUTE05SVVEZHBMZGMtU250X25UZyIsImpVZ2FVaVVQd0JqanVEZ3VOQzlxbHhZWlViSlBvR1JqX0dhNmxLdlMyODAiLCJqZy0xc2UxSTFlMGFNaXAzb3cyZEVlT0NBUUJiaV9GSVdhZnpqZXJSOHE4IiwicUJRNW95YXdYZW1fSXlrSFhRRExteUtfcGVaekNLSzJqR3hQd0w5RVhmayIsInFfVGJkQXlCckNiZzlrRFUxN1BERnJqeExvQkFIZ3R3bUQ0b3JqUUh1dlEiLCJ3STdWZXJINE1GTFlBS1hKZ1JoTnlvTkEwcTd1dFBXRjBOaG5kTDIxZzBNIiwieE9BQnRjVHRJZ3doX19maXhrbjdhbzVNemxheUx4WjJzZ204d1VBR2JxMCJdLCJfc2RfYWxnIjoic2hhLTI1NiIsImNuZiI6eyJqd2siOnsia3R5IjoiRUMiLCJjcnYiOiJQLTI1NiIsIngiOiJVVnc5YnJuamxya0UwXzdLZjFUOXpRekI2WmVfTjEzS1VWclFwc08wQTE4IiwieSI6IlJUYS1PbER6R1B2NXBVZFpBcUloVUN2dkRWZmdqRk95ekFwVzhYMmZrMVEifX0sImV4cCI6MTgwMjU5MjAwMCwiaWF0IjoxODAwMDAwMDAwLCJpc3MiOiJodHRwczovL2lkdmF1bHQubG9jYWwiLCJ2Y3QiOiJ1cm46aWR2YXVsdDp2Y3Q6cGVyc29uOjEifQ.oHPEzcAUJ25eg-rW-3_w2acWiMDO2Ll7wa6P1oSkxvFjpvqTKon3GMrZRH4Td3msKZ-Cbtd8g4f4s0BfZJBBVA~",
    "WyJvZG1aQ3M1ZXEzVUsyQUJVSlBXZVFBIiwiZ2l2ZW5fbmFtZSIsIkFkYSJd~",
    "WyJnejI5Rll5RzZ2Z1V1cERzTjFKZldBIiwiZmFtaWx5X25hbWUiLCJMb3ZlbGFjZSJd~",
    "WyJUYmJ1OHhuSDdVVmZNak1PZFBmV01RIiwiYmlydGhkYXRlIiwiMTgxNS0xMi0xMCJd~",
    "WyJGVmxqd2l6OVBDUFdieHVCUXp1WXJnIiwiYWdlX292ZXJfMTgiLHRydWVd~",
    "WyI2ZFo1OEtTd0xDRXZsazZzVTBBUWd3IiwiYWRkcmVzcyIseyJsb2NhbGl0eSI6IkxvbmRvbiIsImNvdW50cnkiOiJHQiJ9XQ~",
);
const DOC_PRESENTATION: &str = concat!(
    "eyJhbGciOiJFUzI1NiIsImtpZCI6InJlNDVvTlo3YUJwelItY09kRllWYzlBX19NU1ltOGw3ZlNZc2E5MVlCcG8iLCJ0eXAiOiJkYytzZC1qd3QifQ.eyJfc2QiOlsiM0J4cEtqa05oMHBmdGp3Z1Y0WGlPX2d0ZHNZbnY5TFJRb2JjVkRVd2hyMCIsIjNrVW5BY1NBOGMzbU9JcTlnTHVPdWZYdXdwRmdobE5LZjBOY0RwZWpOWDAiLCI1TTl4TXhJQ2NfX0tuSW8xQ2c1MEdBWXY2U2NmZWI3UlNnNDJ5YnBfX2I0IiwiN1pZSmV5MTlmZjhXeHIwdVZ5TEYxWkZKb2k2T3JIejB0bjZVNHdZWkUybyIsIjlPR1BieFRWUDZoZ3BlZjFlVHNKTmJfX3VKaVdGaWJUN1BMNXlUeFpIMkEiLCJFMHJFQThJckFaN2NLRTJ0bkVCMEEwc0lSN0NWZEp3X1F0bmhYNVF4d1A0IiwiTnVqVC12VVpkUXp0WGlyTm5wblBwZko2Mi1TcUQzdGlwVllsR3Q2YUx5byIsIk9IT3M3aEZibWRtVGhzUWpVZnF6b2tSWktETmh2V09NMDBEcW0xRWoydUUiLCJVdkRrQUxyMnZxTDlVMzhkcjFvdGtXdVFzbF9WaUR1RzFGMkt0QmpuamwwIiwiVm5iX0kyNFBNX2hybnl4eVUtWFUtSHpUTE05SVVEZHBMZGMtU250X25UZyIsImpVZ2FVaVVQd0JqanVEZ3VOQzlxbHhZWlViSlBvR1JqX0dhNmxLdlMyODAiLCJqZy0xc2UxSTFlMGFNaXAzb3cyZEVlT0NBUUJiaV9GSVdhZnpqZXJSOHE4IiwicUJRNW95YXdYZW1fSXlrSFhRRExteUtfcGVaekNLSzJqR3hQd0w5RVhmayIsInFfVGJkQXlCckNiZzlrRFUxN1BERnJqeExvQkFIZ3R3bUQ0b3JqUUh1dlEiLCJ3STdWZXJINE1GTFlBS1hKZ1JoTnlvTkEwcTd1dFBXRjBOaG5kTDIxZzBNIiwieE9BQnRjVHRJZ3doX19maXhrbjdhbzVNemxheUx4WjJzZ204d1VBR2JxMCJdLCJfc2RfYWxnIjoic2hhLTI1NiIsImNuZiI6eyJqd2siOnsia3R5IjoiRUMiLCJjcnYiOiJQLTI1NiIsIngiOiJVVnc5YnJuamxya0UwXzdLZjFUOXpRekI2WmVfTjEzS1VWclFwc08wQTE4IiwieSI6IlJUYS1PbER6R1B2NXBVZFpBcUloVUN2dkRWZmdqRk95ekFwVzhYMmZrMVEifX0sImV4cCI6MTgwMjU5MjAwMCwiaWF0IjoxODAwMDAwMDAwLCJpc3MiOiJodHRwczovL2lkdmF1bHQubG9jYWwiLCJ2Y3QiOiJ1cm46aWR2YXVsdDp2Y3Q6cGVyc29uOjEifQ.oHPEzcAUJ25eg-rW-3_w2acWiMDO2Ll7wa6P1oSkxvFjpvqTKon3GMrZRH4Td3msKZ-Cbtd8g4f4s0BfZJBBVA~",
    "WyJvZG1aQ3M1ZXEzVUsyQUJVSlBXZVFBIiwiZ2l2ZW5fbmFtZSIsIkFkYSJd~",
    "WyJGVmxqd2l6OVBDUFdieHVCUXp1WXJnIiwiYWdlX292ZXJfMTgiLHRydWVd~",
    "eyJhbGciOiJFUzI1NiIsInR5cCI6ImtiK2p3dCJ9.eyJhdWQiOiJzcGlmZmU6Ly9pZHZhdWx0LmRldi9wYXJ0bmVyL3BhcnRuZXItYSIsImlhdCI6MTgwMDAwMDEwMCwibm9uY2UiOiJuLTBTNl9XekEyTWoiLCJzZF9oYXNoIjoiYzZHclNsMFhaS1dKUUE0cktpR284R0dHY0lBR2pqUTBrN2stNUpTLWNTWSJ9.8sj2S9s78xce-WJ1oPlJ6Hmo-Ig_5SiGDXswqsiqpb5UEkL5lxbsB90ergod8SaxNUXlbI-SgJaYApluEqtLrA",
);

#[test]
fn registered_claims_cannot_come_from_a_disclosure() {
    let w = Wallet(SigningKey::from_slice(&[5u8; 32]).unwrap());
    let holder = w.jwk();
    let spec = test_spec(&holder);
    let e = ours(1_800_000_100);
    let key = issuer();
    for (name, value) in [
        (
            "status",
            json!({"status_list": {"idx": 0, "uri": "https://x"}}),
        ),
        ("sub", json!("someone")),
        ("cnf", json!({"jwk": {}})),
    ] {
        // The vault's issuer refuses to make one…
        assert!(
            issue(
                &key,
                &spec,
                vec![(name.into(), value.clone())],
                &SystemRng::default()
            )
            .is_err()
        );
        // …and a verifier refuses one another issuer made.
        let d = Disclosure::new(b"0123456789abcdef", name, value);
        let mut cnf = Map::new();
        cnf.insert("jwk".into(), Value::Object(holder.to_json()));
        let payload = json!({
            "_sd": [d.digest()], "_sd_alg": "sha-256", "exp": spec.expires_at,
            "iat": spec.issued_at, "iss": spec.issuer, "vct": spec.vct, "cnf": cnf,
        });
        let mut header = Map::new();
        header.insert("alg".into(), "ES256".into());
        header.insert("kid".into(), key.kid().into());
        header.insert("typ".into(), TYP_CREDENTIAL.into());
        let jwt = jose::sign_compact(&key.key, &header, &payload.to_string());
        let cred = format!("{jwt}~{}~", d.encoded());
        let p = w.present(&cred, &[name], e.audience, e.nonce, e.now);
        assert!(
            matches!(
                verify_presentation(&p, &issuer_set(), &e),
                Err(SdJwtError::Disclosure(_))
            ),
            "{name}"
        );
    }
}

#[test]
fn a_phone_checks_what_it_was_given() {
    let w = Wallet(SigningKey::from_slice(&[5u8; 32]).unwrap());
    let cred = Credential::parse(&issued(&w)).unwrap();
    let keys = issuer_set();
    assert_eq!(cred.kid(), Some(issuer().kid()));
    assert_eq!(cred.expires_at(), Some(1_800_086_400));
    cred.check_issued(Some(&keys), &w.jwk(), &[]).unwrap();
    cred.check_issued(None, &w.jwk(), &[]).unwrap();
    // Bound to another phone's key.
    let other = EcJwk::new(*SigningKey::from_slice(&[6u8; 32]).unwrap().verifying_key());
    assert!(cred.check_issued(Some(&keys), &other, &[]).is_err());
    // Claims that were not asked for.
    assert!(
        cred.check_issued(Some(&keys), &w.jwk(), &["given_name".into()])
            .is_err()
    );
    // Signed by someone else.
    let stranger = IssuerKey::from_scalar(&[4u8; 32]).unwrap();
    let set = Jwks::new(vec![(issuer().kid().into(), stranger.jwk().clone())]);
    assert!(cred.check_issued(Some(&set), &w.jwk(), &[]).is_err());
}
