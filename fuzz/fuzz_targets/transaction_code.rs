//! One-time transaction codes: everything the vault parses from a third
//! party's code request (`RequestCodeRequest` bytes, its binding message
//! and claim names), from a phone (a `DeviceRequest` whose action looks a
//! code up or answers it, the code as typed, the transaction id), and
//! what a third party parses (the signed assertion).
//!
//! Random bytes rarely carry a valid signature, so each input is also
//! split at its first zero byte and the part before is signed as an
//! assertion payload by the trusted key: that reaches the claim parsing
//! behind the signature check.
#![no_main]
use std::sync::OnceLock;

use idvault_core::sdjwt::{IssuerKey, Jwks, claims, jose};
use idvault_core::transaction::{self as txn, TransactionCode};
use idvault_proto::v1 as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn issuer() -> &'static (IssuerKey, Jwks) {
    static K: OnceLock<(IssuerKey, Jwks)> = OnceLock::new();
    K.get_or_init(|| {
        let k = IssuerKey::from_scalar(&[5u8; 32]).expect("key");
        let set = Jwks::new(vec![(k.kid().to_owned(), k.jwk().clone())]);
        (k, set)
    })
}

const AUD: &str = "spiffe://idvault.dev/partner/shop";

fuzz_target!(|data: &[u8]| {
    let (key, set) = issuer();
    // The third party's request, as the service checks it.
    if let Ok(m) = pb::RequestCodeRequest::decode(data) {
        let _ = txn::valid_binding_message(&m.binding_message);
        let _ = m.claims.iter().all(|c| claims::is_claim(c));
    }
    // The phone's requests.
    if let Ok(call) = idvault_core::wire::decode_device_request(data) {
        let _ = format!("{:?}", call.action);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(c) = TransactionCode::parse(text) {
            // What is parsed, displayed and parsed again is the same code.
            assert_eq!(TransactionCode::parse(&c.display()).ok(), Some(c));
        }
        let _ = txn::valid_binding_message(text);
        if let Some(id) = txn::parse_id(text) {
            assert_eq!(txn::id_text(&id), text);
        }
        let _ = txn::verify_assertion(text, set, AUD, "tx_00", 1_800_000_000, 60);
    }
    let Some(cut) = data.iter().position(|b| *b == 0) else {
        return;
    };
    let Ok(payload) = std::str::from_utf8(data.get(..cut).unwrap_or_default()) else {
        return;
    };
    let mut header = serde_json::Map::new();
    header.insert("alg".into(), jose::ES256.into());
    header.insert("kid".into(), key.kid().into());
    header.insert("typ".into(), txn::TYP_ASSERTION.into());
    let signer = p256::ecdsa::SigningKey::from_slice(&[5u8; 32]).expect("same scalar");
    let token = jose::sign_compact(&signer, &header, payload);
    let _ = txn::verify_assertion(&token, set, AUD, "tx_00", 1_800_000_000, 60);
});
