//! A digital ID arriving on the phone (`CredentialRequest::open`): an
//! `IssueCredentialResponse` as the wallet app or a TLS-terminating proxy
//! hands it over, opened as received; and, since random bytes almost never
//! open under HPKE, the input also sealed to the request's one-time key as
//! the vault would seal it, so the credential parsing and the holder's
//! checks behind the open (`Credential::check_issued`, with and without
//! pinned issuer keys) are reached too. The part before a first zero byte
//! is also signed by the pinned issuer as the credential's payload, to get
//! past the signature check.
#![no_main]
use std::sync::OnceLock;

use idvault_client::device::{CredentialRequest, DeviceKey};
use idvault_core::SystemRng;
use idvault_core::consent::{ReleasePublicKey, seal_credential};
use idvault_core::sdjwt::{IssuerKey, Jwks, TYP_CREDENTIAL, jose};
use idvault_proto::v1::{DeviceRequest, IssueCredentialResponse, device_request::Action};
use libfuzzer_sys::fuzz_target;
use prost::Message;

struct Phone {
    request: CredentialRequest,
    request_id: [u8; 16],
    device_id: String,
    response_key: ReleasePublicKey,
    issuer: IssuerKey,
    pinned: Jwks,
}

fn phone() -> &'static Phone {
    static P: OnceLock<Phone> = OnceLock::new();
    P.get_or_init(|| {
        let rng = SystemRng::default();
        let key = DeviceKey::from_scalar(&[9u8; 32]).expect("device key");
        let asked = vec!["given_name".to_owned(), "family_name".to_owned()];
        let (signed, request) = key
            .request_credential(&asked, 1_800_000_000, &rng)
            .expect("request");
        let sent = DeviceRequest::decode(signed.request.as_slice()).expect("own request");
        let Some(Action::IssueCredential(ask)) = sent.action else {
            panic!("not a credential request");
        };
        let issuer = IssuerKey::from_scalar(&[3u8; 32]).expect("issuer");
        let pinned = Jwks::new(vec![(issuer.kid().to_owned(), issuer.jwk().clone())]);
        Phone {
            request,
            request_id: sent.request_id.try_into().expect("16 bytes"),
            device_id: key.device_id(),
            response_key: ReleasePublicKey::from_sec1(&ask.response_key).expect("key"),
            issuer,
            pinned,
        }
    })
}

fn open_sealed(p: &Phone, credential: &[u8]) {
    let rng = SystemRng::default();
    if let Ok((enc, sealed_credential)) = seal_credential(
        &p.response_key,
        &p.request_id,
        &p.device_id,
        credential,
        &rng,
    ) {
        let r = IssueCredentialResponse {
            enc,
            sealed_credential,
        };
        let _ = p.request.open(&r, None);
        let _ = p.request.open(&r, Some(&p.pinned));
    }
}

fuzz_target!(|data: &[u8]| {
    let p = phone();
    if let Ok(r) = IssueCredentialResponse::decode(data) {
        let _ = p.request.open(&r, None);
        let _ = p.request.open(&r, Some(&p.pinned));
    }
    open_sealed(p, data);
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
    header.insert("kid".into(), p.issuer.kid().into());
    header.insert("typ".into(), TYP_CREDENTIAL.into());
    let signer = p256::ecdsa::SigningKey::from_slice(&[3u8; 32]).expect("same scalar");
    let jwt = jose::sign_compact(&signer, &header, payload);
    open_sealed(p, format!("{jwt}~{rest}").as_bytes());
});
