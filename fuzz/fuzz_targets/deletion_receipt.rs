//! Deletion receipts as a person, partner or regulator receives them
//! (`idvault partner verify-receipt`): the signed note is opened with a
//! fixed pinned key and its text parsed. Nothing may panic; a parsed
//! receipt must print back to exactly the text it came from.
#![no_main]
use std::sync::OnceLock;

use idvault_core::receipt::{DeletionReceipt, open_receipt, receipt_key_name};
use idvault_core::tlog::{NoteSigner, NoteVerifier};
use libfuzzer_sys::fuzz_target;

fn verifier() -> &'static NoteVerifier {
    static V: OnceLock<NoteVerifier> = OnceLock::new();
    // The test-vector key of docs/keys.md (seed = 32 × 0x2a).
    V.get_or_init(|| {
        NoteSigner::from_seed(&receipt_key_name("idvault.test/log"), &[0x2a; 32])
            .expect("signer")
            .verifier()
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = open_receipt(text, std::slice::from_ref(verifier()));
        if let Ok(r) = DeletionReceipt::parse(text) {
            assert_eq!(r.to_text().ok().as_deref(), Some(text));
        }
    }
});
