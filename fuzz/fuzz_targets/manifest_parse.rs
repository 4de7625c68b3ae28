//! Everything `idvault manifest` reads from the other platform or from
//! an export: manifest files, summary files (also decoded against a real
//! summary, where a crafted table must not loop or panic), CSV / JSON
//! Lines records, and schema files (TOML, then used to build a manifest
//! of a small export). The first byte picks which. Nothing may panic.
#![no_main]
use std::io::Cursor;
use std::sync::OnceLock;

use idvault_tokenizer::manifest::summary::{Summary, cells_for, diff_with_summary};
use idvault_tokenizer::manifest::{
    BuildOptions, ComparisonKey, InputFormat, ManifestReader, Normaliser, Schema, SchemaField,
    build, diff, parse_schema,
};
use libfuzzer_sys::fuzz_target;

fn schema() -> Schema {
    let f = SchemaField::new;
    Schema {
        key: f("id", "id", Normaliser::Trim),
        fields: vec![
            f("name", "name", Normaliser::Fold),
            f("dob", "p.dob", Normaliser::Date),
            f("phone", "phone", Normaliser::Phone),
            f("email", "email", Normaliser::Email),
        ],
        default_country_code: Some(44),
    }
}

fn key() -> &'static ComparisonKey {
    static K: OnceLock<ComparisonKey> = OnceLock::new();
    K.get_or_init(|| ComparisonKey::new(&[9; 32]))
}

/// A valid manifest of a few records, to diff fuzzed input against.
fn reference() -> &'static Vec<u8> {
    static M: OnceLock<Vec<u8>> = OnceLock::new();
    M.get_or_init(|| {
        let csv = "id,name,p.dob,phone,email\n1,Ada,1990-01-02,+447700900123,a@b.c\n2,Li,,,\n";
        let mut out = Vec::new();
        let opts = BuildOptions {
            format: InputFormat::Csv,
            run_entries: 1 << 20,
            build_id: [1; 16],
            created: 0,
        };
        build(
            &schema(),
            key(),
            &opts,
            csv.as_bytes(),
            &mut out,
            &mut || Err(std::io::Error::other("no spill")),
        )
        .expect("reference manifest");
        out
    })
}

/// `body` with the closing MAC a holder of the comparison key would write
/// (docs/manifests.md: K_file = HMAC(K, "idvault-manifest/v1 file")).
fn sealed(body: &[u8]) -> Vec<u8> {
    let root = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[9; 32]);
    let k = ring::hmac::sign(&root, b"idvault-manifest/v1 file");
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, k.as_ref());
    let mut out = body.to_vec();
    out.extend_from_slice(ring::hmac::sign(&k, body).as_ref());
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 5 {
        0 => {
            let _ = ManifestReader::new(Cursor::new(rest), key());
            let body = sealed(rest);
            if let Ok(mut r) = ManifestReader::new(Cursor::new(&body), key()) {
                while let Ok(Some(_)) = r.next_entry() {}
            }
            let _ = diff(
                Cursor::new(&body),
                Cursor::new(reference()),
                key(),
                &mut |_| Ok(()),
            );
        }
        1 => {
            // Sealed with the right MAC, so the cells reach the decoder
            // (a crafted table from the other side, which holds the key).
            if let Ok(s) = Summary::read(Cursor::new(sealed(rest)), key()) {
                let _ =
                    diff_with_summary(&mut || Ok(Cursor::new(reference())), key(), &s, &mut |_| {
                        Ok(())
                    });
                if let Ok(m) = Summary::from_manifest(Cursor::new(reference()), key(), s.cells()) {
                    let _ = m.difference(&s);
                }
            }
            let _ =
                Summary::from_manifest(Cursor::new(reference()), key(), cells_for(1).unwrap_or(3));
        }
        4 => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            if let Ok((schema, format)) = parse_schema(text) {
                let format = format.unwrap_or(InputFormat::Csv);
                let export: &[u8] = match format {
                    InputFormat::Csv => b"id,a,b\n1,x,y\n2,,z\n",
                    _ => b"{\"id\":\"1\",\"a\":\"x\"}\n",
                };
                let opts = BuildOptions {
                    format,
                    run_entries: 1 << 20,
                    build_id: [3; 16],
                    created: 0,
                };
                let _ = build(&schema, key(), &opts, export, &mut Vec::new(), &mut || {
                    Err(std::io::Error::other("no spill"))
                });
            }
        }
        m => {
            let opts = BuildOptions {
                format: if m == 2 {
                    InputFormat::Csv
                } else {
                    InputFormat::JsonLines
                },
                run_entries: 1 << 20,
                build_id: [2; 16],
                created: 0,
            };
            let mut out = Vec::new();
            let built = build(&schema(), key(), &opts, rest, &mut out, &mut || {
                Err(std::io::Error::other("no spill"))
            });
            if built.is_ok() {
                let mut r =
                    ManifestReader::new(Cursor::new(&out), key()).expect("own manifest reads");
                while r.next_entry().expect("own manifest entries read").is_some() {}
            }
        }
    }
});
