//! The partner side of the audit log: signed checkpoints, verifier keys and
//! audit leaves from the network, parsed with a fixed pinned key. Nothing
//! may panic; an accepted leaf must re-encode to the same bytes.
#![no_main]
use std::sync::OnceLock;

use idvault_core::tlog::{AuditLeaf, Checkpoint, NoteSigner, NoteVerifier, open_checkpoint};
use libfuzzer_sys::fuzz_target;

const ORIGIN: &str = "idvault.example/audit";

fn verifier() -> &'static NoteVerifier {
    static V: OnceLock<NoteVerifier> = OnceLock::new();
    // The test-vector key of docs/audit.md (seed = 32 × 0x07).
    V.get_or_init(|| {
        NoteSigner::from_seed(ORIGIN, &[7; 32])
            .expect("signer")
            .verifier()
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cp) = open_checkpoint(text, std::slice::from_ref(verifier()), ORIGIN) {
            assert_eq!(cp.origin, ORIGIN);
        }
        if let Ok(cp) = Checkpoint::parse(text) {
            // The standard body of a parsed checkpoint parses back to it.
            assert_eq!(Checkpoint::parse(&cp.to_text()).ok(), Some(cp));
        }
        if let Ok(v) = NoteVerifier::parse(text) {
            assert_eq!(v.to_vkey(), text);
        }
    }
    if let Ok(leaf) = AuditLeaf::decode(data) {
        assert_eq!(leaf.encode(), data);
    }
});
