//! The partner side of a release: a ReleaseResponse from the network
//! (HPKE encapsulated key, ciphertext, ids) opened with a fixed release key.
#![no_main]
use std::sync::OnceLock;

use idvault_client::ReleaseKey;
use idvault_core::consent::ReleaseSecretKey;
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

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = ReleaseResponse::decode(data) {
        let _ = key().open(&r, None);
        let _ = key().open(&r, Some("6f1c2b9e-8a41-4d3c-9b7e-2a5f0c1d3e4f"));
    }
    if data.len() >= 65 {
        let (enc, ct) = data.split_at(65);
        let sk = ReleaseSecretKey::derive(b"fuzz");
        let _ = sk.open(enc, b"idvault/v1/release", b"", ct);
    }
});
