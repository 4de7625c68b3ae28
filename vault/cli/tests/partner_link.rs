//! `idvault partner link FILE` with the real binary against a real vault
//! over mTLS: CSV in with a mapped column and an id column, CSV and JSON
//! Lines out, one-to-one, and a bad file refused before anything is sent.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;

use std::path::Path;

use idvault_proto::v1 as pb;
use idvault_proto::v1::subject_service_client::SubjectServiceClient;

const PEOPLE: [[(&str, &str); 4]; 2] = [
    [
        ("given_name", "Ottoline"),
        ("family_name", "Fairweather"),
        ("date_of_birth", "1951-02-11"),
        ("email", "o.fairweather@example.org"),
    ],
    [
        ("given_name", "Barnaby"),
        ("family_name", "Quennell"),
        ("date_of_birth", "1962-07-30"),
        ("email", "barnaby.q@example.org"),
    ],
];

/// Rows: a typo'd duplicate of person 0, person 1 twice (exact, then
/// without the email), a record too thin to match, a stranger. The
/// family name is in a column called `surname`; `notes` is never sent.
const CSV: &str = "rec_id,given_name,surname,date_of_birth,email,notes\n\
a1,Ottoline,Fairwether,11/02/1951,o.fairweather@example.org,private note\n\
a2,Barnaby,Quennell,1962-07-30,barnaby.q@example.org,\n\
a3,Barnaby,Quennell,1962-07-30,,\n\
a4,,Quennell,,,\n\
a5,Imogen,Stroud,1970-01-01,imogen@example.org,\n";

async fn create_people(server: &Server, dir: &Path) -> Vec<String> {
    let mut c = SubjectServiceClient::new(server.channel(dir, "partner-a").await);
    let mut tokens = Vec::new();
    for p in PEOPLE {
        let fields = p
            .iter()
            .map(|(n, v)| pb::Field {
                name: (*n).to_owned(),
                value: (*v).to_owned(),
            })
            .collect();
        let r = c
            .create_subject(pb::CreateSubjectRequest { fields })
            .await
            .unwrap()
            .into_inner();
        tokens.push(r.pairwise_token);
    }
    tokens
}

fn link(dir: &Path, server: &Server, args: &[&str]) -> std::process::Output {
    let mut all = vec!["link"];
    all.extend(args);
    partner(dir, server, &all)
}

/// `(record_id, pairwise_token, refused?)` per CSV result row.
fn rows(csv_text: &str) -> Vec<(String, String, bool)> {
    let mut r = csv::Reader::from_reader(csv_text.as_bytes());
    assert_eq!(
        r.headers().unwrap().iter().collect::<Vec<_>>(),
        [
            "record_id",
            "pairwise_token",
            "score",
            "agreements",
            "refused"
        ]
    );
    r.records()
        .map(|row| {
            let row = row.unwrap();
            (row[0].to_owned(), row[1].to_owned(), !row[4].is_empty())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_a_csv_file_best_candidate_and_one_to_one() {
    let tmp = TempDir::new();
    let dir = tmp.0.as_path();
    run_cli(dir, &["init", "--dev"], None);
    let server = Server::start(dir, None, 1).await;
    let tokens = create_people(&server, dir).await;
    let input = dir.join("people.csv");
    std::fs::write(&input, CSV).unwrap();
    let path = input.to_str().unwrap();
    let mapped = ["--map", "family_name=surname", "--id-column", "rec_id"];

    // Best candidate per record, CSV to a file.
    let out_csv = dir.join("links.csv");
    let mut args = vec![path, "--out", out_csv.to_str().unwrap()];
    args.extend(mapped);
    let out = link(dir, &server, &args);
    assert!(out.status.success(), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not sent"), "{stderr}");
    assert!(stderr.contains("notes"), "{stderr}");
    assert!(
        stderr.contains("linked 5 records") && stderr.contains("3 matched"),
        "{stderr}"
    );
    let got = rows(&std::fs::read_to_string(&out_csv).unwrap());
    let want = [
        ("a1", tokens[0].as_str(), false),
        ("a2", tokens[1].as_str(), false),
        ("a3", tokens[1].as_str(), false),
        ("a4", "", true),
        ("a5", "", false),
    ];
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert_eq!((g.0.as_str(), g.1.as_str(), g.2), w);
    }

    // One-to-one, JSON Lines on standard output: person 1 goes to the
    // better record only.
    let mut args = vec![path, "--one-to-one", "--out-format", "jsonl"];
    args.extend(mapped);
    let out = link(dir, &server, &args);
    assert!(out.status.success(), "{}", show(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let tokens_out: Vec<Option<&str>> =
        lines.iter().map(|v| v["pairwise_token"].as_str()).collect();
    assert_eq!(
        tokens_out,
        [
            Some(tokens[0].as_str()),
            Some(tokens[1].as_str()),
            None,
            None,
            None
        ]
    );
    assert!(lines[3]["refused"].as_str().is_some());
    assert_eq!(lines[0]["agreements"]["email"], "exact");

    // A malformed file is refused before anything is sent.
    let bad = dir.join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"record_id\": \"x\", \"email\": \"a@b.org\"}\nnot json\n",
    )
    .unwrap();
    let out = link(dir, &server, &[bad.to_str().unwrap(), "--one-to-one"]);
    assert!(!out.status.success());
    assert!(
        show(&out).contains("line 2 is not a JSON object"),
        "{}",
        show(&out)
    );
    // An unknown field in --map is refused too.
    let out = link(dir, &server, &[path, "--map", "surname=surname"]);
    assert!(!out.status.success());
    assert!(
        show(&out).contains("not a matchable field"),
        "{}",
        show(&out)
    );
    server.terminate().await;
}
