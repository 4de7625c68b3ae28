//! Usage-log bytes: the JSON scanner and both record rewriters, with the
//! field settings a `TokenizeLog` client sends fuzzed too.
#![no_main]
use idvault_tokenizer::rewrite::{FieldSpec, Rewriter};
use idvault_tokenizer::{DomainKey, NormalizeOptions};
use libfuzzer_sys::fuzz_target;

/// A rewritten line only has values replaced by quoted tokens: when every
/// line given was JSON, every line written must be too.
fn check_json_out(input: &[u8], out: &[u8], rewritten: u64) {
    let lines = |b: &[u8]| -> Vec<Vec<u8>> {
        b.split(|c| *c == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec())
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .collect()
    };
    let written = lines(out);
    assert_eq!(
        written.len() as u64,
        rewritten,
        "one line out per record rewritten"
    );
    if lines(input)
        .iter()
        .all(|l| serde_json::from_slice::<serde_json::Value>(l).is_ok())
    {
        for l in &written {
            assert!(
                serde_json::from_slice::<serde_json::Value>(l).is_ok(),
                "a rewritten line is not JSON"
            );
        }
    }
}

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
    let stats = rw.rewrite_chunk(data, 1, &mut out, &mut rejects);
    check_json_out(data, &out, stats.rewritten);
    let csv_fields = vec![FieldSpec::parse("m=msisdn").unwrap()];
    if let Ok(rw) = Rewriter::csv(csv_fields, b"x,m\n", b',', opts, &key) {
        out.clear();
        rw.rewrite_chunk(data, 2, &mut out, &mut rejects);
    }
    // Field settings as a client sends them: the first line, split at ';',
    // names the fields; the rest are JSON Lines records.
    let end = data
        .iter()
        .position(|b| *b == b'\n')
        .map_or(data.len(), |i| i + 1);
    let (settings, body) = data.split_at(end);
    if let Ok(settings) = std::str::from_utf8(settings) {
        let specs: Option<Vec<FieldSpec>> = settings
            .trim_end()
            .split(';')
            .map(|s| FieldSpec::parse(s).ok())
            .collect();
        if let Some(Ok(rw)) = specs.map(|s| Rewriter::json_lines(s, opts, &key)) {
            out.clear();
            let stats = rw.rewrite_chunk(body, 2, &mut out, &mut rejects);
            check_json_out(body, &out, stats.rewritten);
        }
    }
    // The header row and delimiter as a client sends them: the first byte
    // is the delimiter, the first line the header, the rest the records.
    if let Some((&delimiter, rest)) = data.split_first() {
        let end = rest
            .iter()
            .position(|b| *b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let (header, body) = rest.split_at(end);
        let fields = vec![FieldSpec::parse("m=msisdn").unwrap()];
        if let Ok(rw) = Rewriter::csv(fields, header, delimiter, opts, &key) {
            out.clear();
            rw.rewrite_chunk(body, 2, &mut out, &mut rejects);
        }
    }
});
