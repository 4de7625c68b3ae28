//! The partner side of a release: a ReleaseResponse from the network
//! (HPKE encapsulated key, ciphertext, ids, the vault's signature) opened
//! with a fixed release key. Each input is opened as received (its
//! signature checked) and again signed by the trusted vault key, so the
//! HPKE open and the plaintext decoding behind the signature check are
//! reached too.
#![no_main]
use std::sync::OnceLock;

use idvault_client::{Expected, ReleaseKey};
use idvault_core::consent::{
    ReleaseSecretKey, ReleaseSigner, ReleaseVerifier, release_signed_bytes,
};
use idvault_core::subject::SubjectId;
use idvault_proto::v1::ReleaseResponse;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn key() -> &'static ReleaseKey {
    static KEY: OnceLock<ReleaseKey> = OnceLock::new();
    KEY.get_or_init(|| {
        // A fixed key in PKCS#8 form, through the same loader partners use.
        let generated = ReleaseKey::generate(&idvault_core::SystemRng::default()).expect("key");
        ReleaseKey::from_pem(&generated.to_pem().expect("pem")).expect("load")
    })
}

fn vault() -> &'static (ReleaseSigner, ReleaseVerifier) {
    static VAULT: OnceLock<(ReleaseSigner, ReleaseVerifier)> = OnceLock::new();
    VAULT.get_or_init(|| {
        let signer = ReleaseSigner::from_seed(&[0x5a; 32]).expect("signer");
        let verifier = ReleaseVerifier::new(vec![signer.public_key()]);
        (signer, verifier)
    })
}

fuzz_target!(|data: &[u8]| {
    let (signer, verifier) = vault();
    if let Ok(mut r) = ReleaseResponse::decode(data) {
        let any = Expected::default();
        let _ = key().open(&r, &any, verifier);
        let one = Expected {
            subject: Some("6f1c2b9e-8a41-4d3c-9b7e-2a5f0c1d3e4f"),
            consent_id: Some(&[0; 16]),
            nonce: b"nonce",
        };
        let _ = key().open(&r, &one, verifier);
        let ids = (
            <[u8; 16]>::try_from(r.consent_id.as_slice()),
            SubjectId::parse(&r.subject_id),
            <[u8; 32]>::try_from(r.grant_hash.as_slice()),
        );
        if let (Ok(c), Ok(s), Ok(g)) = ids
            && let Ok(signed) =
                release_signed_bytes(&c, &s, &g, b"", &r.receipt_id, &r.enc, &r.ciphertext)
        {
            r.signature = signer.sign(&signed);
            let _ = key().open(&r, &any, verifier);
        }
    }
    if data.len() >= 65 {
        let (enc, ct) = data.split_at(65);
        let sk = ReleaseSecretKey::derive(b"fuzz");
        let _ = sk.open(enc, b"idvault/v1/release", b"", ct);
    }
});
