//! Field values from match queries and subjects: every variant rule.
#![no_main]
use idvault_tokenizer::NormalizeOptions;
use idvault_tokenizer::matching::{assess, probes};
use idvault_tokenizer::variants::{MatchField, compound_variants, qgrams, variants};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let opts = NormalizeOptions {
            default_country_code: Some(44),
        };
        let mut all = Vec::new();
        let mut record = Vec::new();
        for f in MatchField::ALL {
            let _ = variants(f, s, &opts);
            let _ = qgrams(f, s);
            all.extend(probes(f, s, &opts));
            record.push((f, s));
        }
        let _ = assess(&all);
        // Compound keys join fields of one record (here all the same value).
        let _ = compound_variants(&record, false);
        let _ = compound_variants(&record, true);
    }
});
