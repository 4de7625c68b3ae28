//! Client certificates from the TLS handshake: SPIFFE identity extraction.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = idvault_server::tls::partner_spiffe_id(data, "idvault.dev");
});
