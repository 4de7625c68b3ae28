//! Digital-ID presentations as a relying party or the vault receives them
//! (`<jwt>~<disclosure>~…~<kb-jwt>`), and the holder's and the verifier's
//! other parsers (an issued credential, a JWK Set, one disclosure), and
//! revocation's: a status list token, a compressed status list (`lst`,
//! ZLIB: a bomb must stop at the size limit), a `status` claim.
//!
//! Most random inputs fail at the issuer signature, so each input is also
//! split at its first zero byte: the part before becomes an issuer-signed
//! payload (signed here by the trusted key), the part after the
//! disclosures and key binding. That reaches the disclosure processing
//! (`_sd` digests, array elements, nesting) behind the signature check;
//! the same payload is also signed as a status list token, to reach the
//! list decoding behind that signature.
#![no_main]
use std::sync::OnceLock;

use idvault_core::sdjwt::{
    self, Credential, Disclosure, Expectations, IssuerKey, Jwks, TYP_CREDENTIAL, jose, status,
};
use libfuzzer_sys::fuzz_target;

fn issuer() -> &'static (IssuerKey, Jwks) {
    static K: OnceLock<(IssuerKey, Jwks)> = OnceLock::new();
    K.get_or_init(|| {
        let k = IssuerKey::from_scalar(&[3u8; 32]).expect("key");
        let set = Jwks::new(vec![(k.kid().to_owned(), k.jwk().clone())]);
        (k, set)
    })
}

fn expect() -> Expectations<'static> {
    Expectations {
        typ: TYP_CREDENTIAL,
        audience: "aud",
        nonce: "nonce",
        now: 1_800_000_000,
        skew_secs: 60,
        max_key_binding_age_secs: 300,
    }
}

fuzz_target!(|data: &[u8]| {
    let (key, set) = issuer();
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = sdjwt::verify_presentation(text, set, &expect());
        let _ = Credential::parse(text).map(|c| (c.disclose(&["given_name"]), c.status()));
        let _ = Jwks::parse(text);
        let _ = Disclosure::parse(text);
        let _ = status::verify_status_list(text, set, None, 1_800_000_000, 60);
        for bits in [1, 2, 8] {
            if let Ok(l) = status::StatusList::from_lst(bits, text) {
                let _ = l.get(u64::from(data.len() as u32) * 7);
            }
        }
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
            let _ = status::StatusRef::from_claim(&v);
        }
    }
    let Some(cut) = data.iter().position(|b| *b == 0) else {
        return;
    };
    let (payload, rest) = data.split_at(cut);
    let (Ok(payload), Ok(rest)) = (
        std::str::from_utf8(payload),
        std::str::from_utf8(rest.get(1..).unwrap_or_default()),
    ) else {
        return;
    };
    let mut header = serde_json::Map::new();
    header.insert("alg".into(), jose::ES256.into());
    header.insert("kid".into(), key.kid().into());
    header.insert("typ".into(), TYP_CREDENTIAL.into());
    let signer = p256::ecdsa::SigningKey::from_slice(&[3u8; 32]).expect("same scalar");
    let jwt = jose::sign_compact(&signer, &header, payload);
    let presented = sdjwt::verify_presentation(&format!("{jwt}~{rest}"), set, &expect());

    header.insert("typ".into(), status::TYP_STATUS_LIST.into());
    let token = jose::sign_compact(&signer, &header, payload);
    if let Ok(t) = status::verify_status_list(&token, set, None, 1_800_000_000, 60)
        && let Ok(v) = presented
    {
        let _ = status::check_status(&v, &t);
    }
});
