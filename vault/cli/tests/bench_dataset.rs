//! `idvault bench match --records FILE --queries-file FILE` with the real
//! binary: a small labelled dataset laid out like a public record-linkage
//! benchmark (its own column names, a `rec_id`, an entity column), with
//! duplicates carrying the error types blind matching covers and strangers
//! who are in no record.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_idvault");

fn idvault(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run idvault")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

const RECORDS: &str = "\
rec_id, given, surname, date_of_birth, soc_sec_id, street_address, postcode, suburb, entity
rec-1-org, michaela, neumann, 19151111, 5304218, 8 stanley street, 4223, winston hills, 1
rec-2-org, courtney, painter, 19161214, 4066625, 12 pinkerton circuit, 4560, richlands, 2
rec-3-org, charles, green, 19480930, 4365168, 38 salkauskas crescent, 4566, dapto, 3
rec-4-org, vanessa, parr, 19951119, 9239102, 905 macquoid place, 2135, south grafton, 4
rec-5-org, joshua, berry, 19550519, 3007951, 95 leahy place, 6302, shenton park, 5
rec-6-org, isabelle, mason, 19921119, 4314184, 23 gundulu place, 2193, utakarra, 6
";

/// Duplicates: a family-name typo; given and family name exchanged; a
/// transposed national id and a space lost in the street; a month-first
/// date of birth and a city typo. Strangers: two people in no record.
const QUERIES: &str = "\
rec_id, given, surname, date_of_birth, soc_sec_id, street_address, postcode, suburb, entity
rec-1-dup-0, michaela, neuman, 19151111, 5304218, 8 stanley street, 4223, winston hills, 1
rec-2-dup-0, painter, courtney, 19161214, 4066625, 12 pinkerton circuit, 4560, richlands, 2
rec-3-dup-0, charles, green, 19480930, 4361568, 38 salkauskascrescent, 4566, dapto, 3
rec-4-dup-0, vanessa, parr, 19951911, 9239102, 905 macquoid place, 2135, south grafotn, 4
rec-7-org, harriet, okafor, 19700101, 7711223, 1 quay road, 3000, melbourne, 7
rec-8-org, tomas, lindqvist, 19881231, 1234987, 77 harbour view, 2000, sydney, 8
";

const MAP: [&str; 6] = [
    "--map",
    "given_name=given",
    "--map",
    "family_name=surname",
    "--map",
    "national_id=soc_sec_id",
];

#[test]
fn a_labelled_dataset_is_matched_and_linked_with_known_truth() {
    let dir = tempfile::tempdir().unwrap();
    let records = write(dir.path(), "a.csv", RECORDS);
    let queries = write(dir.path(), "b.csv", QUERIES);
    let mut args = vec![
        "bench",
        "match",
        "--records",
        &records,
        "--queries-file",
        &queries,
        "--id-column",
        "rec_id",
        "--map",
        "city=suburb",
        "--misses",
    ];
    args.extend_from_slice(&MAP);
    let out = idvault(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("6 of 6 records created") && stdout.contains("6 queries, 4 of them"),
        "{stdout}"
    );
    // precision, recall, F1, TP, FP, FN, refused for both runs.
    for run in ["best answer (Match)", "one-to-one (Link)"] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(run))
            .unwrap_or_else(|| panic!("no {run} line in {stdout}"));
        let figures: Vec<&str> = line[line.find(')').unwrap() + 1..]
            .split_whitespace()
            .collect();
        assert_eq!(
            &figures[..7],
            ["1.0000", "1.0000", "1.0000", "4", "0", "0", "0"],
            "{line}"
        );
    }
    assert!(!stdout.contains("miss:"), "{stdout}");
    // Nothing of the people is printed: the figures and row ids only.
    for name in ["michaela", "neumann", "5304218", "stanley"] {
        assert!(!stdout.contains(name), "{stdout}");
    }
}

#[test]
fn a_missing_entity_column_or_unmatchable_columns_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let records = write(dir.path(), "a.csv", RECORDS);
    let queries = write(dir.path(), "b.csv", QUERIES);
    let out = idvault(&[
        "bench",
        "match",
        "--records",
        &records,
        "--queries-file",
        &queries,
        "--entity-column",
        "person",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no entity column \"person\""), "{stderr}");

    let bare = write(dir.path(), "c.csv", "entity,colour\n1,red\n");
    let out = idvault(&[
        "bench",
        "match",
        "--records",
        &bare,
        "--queries-file",
        &bare,
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no column is a matchable field"),
        "{stderr}"
    );

    let out = idvault(&[
        "bench",
        "match",
        "--records",
        &records,
        "--queries-file",
        &queries,
        "--map",
        "shoe_size=given",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("shoe_size is not a matchable field"),
        "{stderr}"
    );
}
