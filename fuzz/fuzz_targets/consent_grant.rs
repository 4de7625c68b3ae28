//! Consent messages from the network: the signed envelopes (ReleaseRequest,
//! SignedDeviceRequest, EnrollRequest) decoded, the signature checked under
//! a fixed device key, and the signed bytes decoded and validated as the
//! vault does, plus the device-key and DER parsers. Decoding runs on every
//! input, not only on ones that verify, so the parsers see arbitrary bytes.
#![no_main]
use idvault_core::consent::{self, ConsentLimits, DevicePublicKey, GRANT_CONTEXT};
use idvault_core::wire::{decode_device_request, decode_grant, verify_enrollment};
use idvault_proto::v1::{EnrollRequest, ReleaseRequest, SignedDeviceRequest, release_request};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn key() -> DevicePublicKey {
    let sk = p256::ecdsa::SigningKey::from_slice(&[9; 32]).expect("scalar");
    DevicePublicKey::from_sec1(sk.verifying_key().to_sec1_point(false).as_bytes()).expect("key")
}

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = decode_grant(data) {
        let _ = g.check_window(1_795_000_000, &ConsentLimits::default());
    }
    let _ = decode_device_request(data);
    let _ = DevicePublicKey::from_sec1(data);
    let _ = consent::p1363_from_der(data);
    let _ = consent::normalize_low_s(data);
    if let Ok(r) = ReleaseRequest::decode(data)
        && let Some(release_request::Consent::Signed(s)) = r.consent
    {
        let _ = key().verify(GRANT_CONTEXT, &s.grant, &s.signature);
        let _ = decode_grant(&s.grant);
        let _ = consent::valid_device_id(&s.device_id);
    }
    if let Ok(r) = SignedDeviceRequest::decode(data) {
        let _ = decode_device_request(&r.request);
    }
    if let Ok(e) = EnrollRequest::decode(data) {
        let _ = verify_enrollment(&e.enrollment, &e.signature);
    }
});
