//! Matching rows as a database writer could leave them: a subject's
//! signature and a domain's stored weights. Decoding never panics, and
//! whatever decodes scores and re-encodes without panicking.
#![no_main]
use idvault_core::matching::{ModelEstimate, decode_signature, dice};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(sig) = decode_signature(data) {
        for (_, a) in &sig.filters {
            for (_, b) in &sig.filters {
                let d = dice(a, b);
                assert!((0.0..=1.0).contains(&d) || d.is_nan());
            }
        }
    }
    if let Some(model) = ModelEstimate::decode(data) {
        // A stored estimate round-trips to the same bytes' meaning.
        let again = ModelEstimate::decode(&model.encode());
        assert_eq!(again.as_ref(), Some(&model));
        for f in &model.model.model.fields {
            for (l, _) in &f.agree {
                let _ = f.weight(Some(*l));
            }
            let _ = f.weight(None);
        }
    }
});
