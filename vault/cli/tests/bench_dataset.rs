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

mod common;

use common::idvault;

use std::path::Path;

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

/// Figures of one result line: precision, recall, F1, TP, FP, FN, refused.
fn figures<'a>(stdout: &'a str, run: &str) -> Vec<&'a str> {
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with(run))
        .unwrap_or_else(|| panic!("no {run} line in {stdout}"));
    line[line.find(')').unwrap() + 1..]
        .split_whitespace()
        .take(7)
        .collect()
}

fn bench(records: &str, queries: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "bench",
        "match",
        "--records",
        records,
        "--queries-file",
        queries,
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&MAP);
    let out = idvault(&args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn a_labelled_dataset_is_matched_and_linked_with_known_truth() {
    let dir = tempfile::tempdir().unwrap();
    let records = write(dir.path(), "a.csv", RECORDS);
    let queries = write(dir.path(), "b.csv", QUERIES);
    let stdout = bench(
        &records,
        &queries,
        &["--id-column", "rec_id", "--map", "city=suburb", "--misses"],
    );
    assert!(
        stdout.contains("6 of 6 records created") && stdout.contains("6 queries, 4 of them"),
        "{stdout}"
    );
    for run in ["best answer (Match)", "one-to-one (Link)"] {
        assert_eq!(
            figures(&stdout, run),
            ["1.0000", "1.0000", "1.0000", "4", "0", "0", "0"],
            "{stdout}"
        );
    }
    assert!(!stdout.contains("miss:"), "{stdout}");
    // Nothing of the people is printed: the figures and row ids only.
    for name in ["michaela", "neumann", "5304218", "stanley"] {
        assert!(!stdout.contains(name), "{stdout}");
    }
}

/// More queries than one batch of 100, answers paired with their queries
/// across batches, a duplicate nothing can find (listed as a miss, by row
/// id), an entity queried twice (one-to-one can link it once), and a
/// stranger.
#[test]
fn misses_are_listed_and_answers_stay_paired_across_batches() {
    const GIVEN: [&str; 12] = [
        "amelia", "bruno", "chiara", "dmitri", "elena", "farid", "greta", "hugo", "ines", "jonas",
        "kasia", "lars",
    ];
    const FAMILY: [&str; 11] = [
        "abbott",
        "brennan",
        "castillo",
        "dubois",
        "eriksen",
        "fischer",
        "gallagher",
        "horvath",
        "ivanova",
        "jensen",
        "kowalski",
    ];
    let header = "rec_id,given,surname,date_of_birth,soc_sec_id,street_address,postcode,entity\n";
    let person = |i: usize| {
        format!(
            "{},{},{:04}{:02}{:02},{},{} mill road,{}",
            GIVEN[i % 12],
            FAMILY[i / 12],
            1940 + i % 50,
            1 + i % 12,
            1 + i % 28,
            1_000_003 + i * 7_919,
            1 + i,
            2000 + i
        )
    };
    let mut records = header.to_owned();
    for i in 0..130 {
        records.push_str(&format!("r{i},{},e{i}\n", person(i)));
    }
    let mut queries = header.to_owned();
    for i in 0..120 {
        queries.push_str(&format!("q{i},{},e{i}\n", person(i)));
    }
    // e5 again: a second query of one entity.
    queries.push_str(&format!("q5again,{},e5\n", person(5)));
    // e125 by a given name alone: too little to find anyone.
    queries.push_str("qlost,farid,,,,,,e125\n");
    queries.push_str("qstranger,zoltan,quist,19990909,8888888,9 far lane,9999,nobody\n");
    let dir = tempfile::tempdir().unwrap();
    let records = write(dir.path(), "a.csv", &records);
    let queries = write(dir.path(), "b.csv", &queries);
    let stdout = bench(&records, &queries, &["--id-column", "rec_id", "--misses"]);
    assert!(
        stdout.contains("123 queries, 122 of them") && stdout.contains("at most 121"),
        "{stdout}"
    );
    let best = figures(&stdout, "best answer (Match)");
    assert_eq!(best[3..6], ["121", "0", "1"], "{stdout}");
    // One-to-one: q5 or q5again gets e5's subject, the other nothing.
    let linked = figures(&stdout, "one-to-one (Link)");
    assert_eq!(linked[3..6], ["120", "0", "2"], "{stdout}");
    let misses: Vec<&str> = stdout.lines().filter(|l| l.contains("miss:")).collect();
    assert_eq!(
        misses,
        ["  miss: query qlost expected r125 answered - score -"],
        "{stdout}"
    );
}

/// Runs `bench match ARGS…`, which must fail; its standard error.
fn refused(args: &[&str]) -> String {
    let mut all = vec!["bench", "match"];
    all.extend_from_slice(args);
    let out = idvault(&all);
    assert!(!out.status.success(), "{all:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_missing_entity_column_or_unmatchable_columns_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let records = write(dir.path(), "a.csv", RECORDS);
    let queries = write(dir.path(), "b.csv", QUERIES);
    let with = |extra: &[&str]| {
        let mut args = vec![
            "--records",
            records.as_str(),
            "--queries-file",
            queries.as_str(),
        ];
        args.extend_from_slice(extra);
        refused(&args)
    };

    let stderr = with(&["--entity-column", "person"]);
    assert!(stderr.contains("no entity column \"person\""), "{stderr}");

    let stderr = with(&["--map", "shoe_size=given"]);
    assert!(
        stderr.contains("shoe_size is not a matchable field"),
        "{stderr}"
    );

    // Synthetic-run flags with a dataset are refused rather than ignored,
    // and so are dataset flags without one.
    let stderr = with(&["--subjects", "1000"]);
    assert!(stderr.contains("cannot be used with"), "{stderr}");
    refused(&["--misses"]);

    let bare = write(dir.path(), "c.csv", "entity,colour\n1,red\n");
    let stderr = refused(&["--records", &bare, "--queries-file", &bare]);
    assert!(
        stderr.contains("no column is a matchable field"),
        "{stderr}"
    );

    // A row without a label would count as everyone else without one.
    let unlabelled = write(
        dir.path(),
        "d.csv",
        "given_name,family_name,entity\nada,lovelace,1\ncharles,babbage,\n",
    );
    let stderr = refused(&["--records", &unlabelled, "--queries-file", &unlabelled]);
    assert!(
        stderr.contains("line 3 has no value in the entity column") && !stderr.contains("babbage"),
        "{stderr}"
    );
}
