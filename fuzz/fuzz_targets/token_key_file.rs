//! Exported key files a sending platform holds: token domain keys and
//! per-partner bridge seal keys.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = idvault_tokenizer::token::parse_key_file(s);
        if let Ok((partner, key)) = idvault_core::xref::parse_bridge_key_file(s) {
            // What parses serialises back to a file that parses the same.
            let again = idvault_core::xref::bridge_key_file(&partner, &key);
            let (p2, k2) = idvault_core::xref::parse_bridge_key_file(&again).expect("round trip");
            assert_eq!(
                (p2.as_str(), k2.version()),
                (partner.as_str(), key.version())
            );
            assert_eq!(k2.expose(), key.expose());
        }
    }
});
