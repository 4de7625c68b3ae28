//! Usage-log bytes: the JSON scanner and both record rewriters.
#![no_main]
use idvault_tokenizer::rewrite::{FieldSpec, Rewriter};
use idvault_tokenizer::{DomainKey, NormalizeOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = DomainKey::new("fuzz", 1, &[3; 32]).unwrap();
    let opts = NormalizeOptions {
        default_country_code: Some(44),
    };
    let fields = vec![
        FieldSpec::parse("user.msisdn").unwrap(),
        FieldSpec::parse("a=email").unwrap(),
    ];
    let mut out = Vec::new();
    let mut rejects = Vec::new();
    let rw = Rewriter::json_lines(fields, opts, &key).unwrap();
    rw.rewrite_chunk(data, 1, &mut out, &mut rejects);
    let csv_fields = vec![FieldSpec::parse("m=msisdn").unwrap()];
    if let Ok(rw) = Rewriter::csv(csv_fields, b"x,m\n", b',', opts, &key) {
        out.clear();
        rw.rewrite_chunk(data, 2, &mut out, &mut rejects);
    }
    // The header row and delimiter as a client sends them: the first byte
    // is the delimiter, the first line the header, the rest the records.
    if let Some((&delimiter, rest)) = data.split_first() {
        let end = rest.iter().position(|b| *b == b'\n').map_or(rest.len(), |i| i + 1);
        let (header, body) = rest.split_at(end);
        let fields = vec![FieldSpec::parse("m=msisdn").unwrap()];
        if let Ok(rw) = Rewriter::csv(fields, header, delimiter, opts, &key) {
            out.clear();
            rw.rewrite_chunk(body, 2, &mut out, &mut rejects);
        }
    }
});
