//! The root key file format.
#![no_main]
use idvault_core::keys::StaticKeyProvider;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = StaticKeyProvider::parse(s);
    }
});
