//! The root key file formats: plain (with token domain pins and retired
//! public keys) and sealed. Nothing may panic; an accepted file must print
//! back to a file that parses to the same content.
#![no_main]
use idvault_core::keys::sealed::SealedKeyFile;
use idvault_core::keys::{KeyProvider, StaticKeyProvider};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(p) = StaticKeyProvider::parse(s) {
            let again = StaticKeyProvider::parse(&p.to_key_file()).expect("printed file parses");
            assert_eq!(again.versions(), p.versions());
            assert_eq!(again.token_domains(), p.token_domains());
            assert_eq!(again.retired_public_keys(), p.retired_public_keys());
        }
        if let Ok(f) = SealedKeyFile::parse(s) {
            assert_eq!(SealedKeyFile::parse(&f.to_text()).ok(), Some(f));
        }
    }
});
