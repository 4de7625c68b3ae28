//! `idvault manifest` with the real binary: two platforms export the same
//! customers differently (CSV and JSON Lines, other column names, other
//! spellings, other order), with known differences; the diff names exactly
//! those, through full manifests and through a summary.
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
        .output()
        .expect("run idvault")
}

/// `idvault manifest build --schema SCHEMA --key KEY [EXTRA…] FILE`.
fn build(schema: &str, key: &str, extra: &[&str], file: &str) -> Output {
    let mut args = vec!["manifest", "build", "--schema", schema, "--key", key];
    args.extend_from_slice(extra);
    args.push(file);
    idvault(&args)
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

const SCHEMA_A: &str = r#"
default_country_code = 44
key = { name = "id", column = "customer_id" }
[[fields]]
name = "given_name"
column = "given"
normalise = "fold"
[[fields]]
name = "family_name"
column = "family"
normalise = "case"
[[fields]]
name = "date_of_birth"
column = "dob"
normalise = "date"
[[fields]]
name = "phone"
normalise = "phone"
[[fields]]
name = "email"
normalise = "email"
"#;

fn schema_b() -> String {
    SCHEMA_A
        .replace("column = \"customer_id\"", "column = \"ref\"")
        .replace("column = \"given\"", "column = \"person.first\"")
        .replace("column = \"family\"", "column = \"person.last\"")
        .replace("column = \"dob\"", "column = \"born\"")
}

/// id, given name, family name, date of birth, phone, e-mail.
type Row = (u32, String, String, String, String, String);

fn rows(skip: &[u32], extra: &[u32], changed: &[u32]) -> Vec<Row> {
    (1..=200)
        .filter(|i| !skip.contains(i))
        .chain(extra.iter().copied())
        .map(|i| {
            let family = if changed.contains(&i) {
                "Changed".to_owned()
            } else {
                format!("Family{i}")
            };
            (
                i,
                ["Zoë", "Ada", "José"][(i % 3) as usize].to_owned(),
                family,
                format!("{:04}-{:02}-{:02}", 1950 + i % 50, 1 + i % 12, 1 + i % 28),
                format!("+447700{i:06}"),
                format!("user{i}@example.org"),
            )
        })
        .collect()
}

fn json_lines(b: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(b)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn build_and_diff_two_platforms() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("compare.key");
    let key = key.to_str().unwrap();
    ok(&idvault(&["manifest", "keygen", "--out", key]));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        !idvault(&["manifest", "keygen", "--out", key])
            .status
            .success(),
        "never overwritten"
    );

    let mut csv = String::from("customer_id,given,family,dob,phone,email\n");
    for (i, g, f, dob, p, e) in rows(&[], &[], &[]) {
        csv.push_str(&format!("{i},{g},{f},{dob},{p},{e}\n"));
    }
    let mut jsonl = String::new();
    for (i, g, f, dob, p, e) in rows(&[3, 4], &[500], &[10]).into_iter().rev() {
        let (y, m, dd) = (&dob[0..4], &dob[5..7], &dob[8..10]);
        let v = serde_json::json!({
            "ref": i,
            "person": {"first": g.to_uppercase(), "last": format!(" {} ", f.to_uppercase())},
            "born": format!("{dd}.{m}.{y}"),
            "phone": format!("0{} {}", &p[3..7], &p[7..]),
            "email": e.to_uppercase(),
        });
        jsonl.push_str(&format!("{v}\n"));
    }
    let a = write(d, "a.csv", &csv);
    let b = write(d, "b.jsonl", &jsonl);
    let sa = write(d, "a.toml", SCHEMA_A);
    let sb = write(d, "b.toml", &schema_b());
    let ma = ok(&build(&sa, key, &["--run-records", "100"], &a));
    let mb = ok(&build(&sb, key, &[], &b));
    let (ma, mb) = (ma.trim(), mb.trim());
    assert_eq!(ma, format!("{a}.manifest"));
    assert!(
        !std::fs::read(ma)
            .unwrap()
            .windows(9)
            .any(|w| w == b"Family10,"),
        "no values in clear"
    );

    let out = idvault(&["manifest", "diff", "--key", key, ma, mb, "--fields"]);
    assert_eq!(out.status.code(), Some(1), "differences exit 1");
    let want = [
        r#"{"key":"3","status":"missing-in-b"}"#,
        r#"{"key":"4","status":"missing-in-b"}"#,
        r#"{"key":"500","status":"missing-in-a"}"#,
        r#"{"fields":["family_name"],"key":"10","status":"differs"}"#,
    ];
    let (got, want) = (
        json_lines(&out.stdout),
        json_lines(want.join("\n").as_bytes()),
    );
    assert!(
        got.len() == want.len() && want.iter().all(|w| got.contains(w)),
        "{got:?}"
    );

    // Through B's summary: A's side named, B's extra by its key digest.
    let sum = d.join("b.summary");
    let sum = sum.to_str().unwrap();
    ok(&idvault(&[
        "manifest",
        "summary",
        "--key",
        key,
        mb,
        "--max-differences",
        "20",
        "--out",
        sum,
    ]));
    assert!(std::fs::metadata(sum).unwrap().len() < std::fs::metadata(mb).unwrap().len());
    let out = idvault(&["manifest", "diff", "--key", key, ma, sum]);
    assert_eq!(out.status.code(), Some(1));
    let got = json_lines(&out.stdout);
    assert_eq!(got.len(), 4, "{got:?}");
    for line in [
        r#"{"key":"3","status":"missing-in-b"}"#,
        r#"{"key":"4","status":"missing-in-b"}"#,
        r#"{"key":"10","status":"differs"}"#,
    ] {
        assert!(got.contains(&line.parse().unwrap()), "{got:?}");
    }
    assert!(
        got.iter().any(|v| v["status"] == "missing-in-a"
            && v["key_digest"].as_str().is_some_and(|d| d.len() == 64)),
        "{got:?}"
    );
    assert!(
        !idvault(&["manifest", "diff", "--key", key, ma, sum, "--fields"])
            .status
            .success()
    );

    // Same data: exit 0, nothing printed (a second build of A's export;
    // one file offered as both sides is refused).
    let ma2 = d.join("a2.manifest");
    ok(&build(&sa, key, &["--out", ma2.to_str().unwrap()], &a));
    let out = idvault(&["manifest", "diff", "--key", key, ma, ma2.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    let out = idvault(&["manifest", "diff", "--key", key, ma, ma]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("same build"));

    // A manifest altered in transit is refused (exit 2).
    let mut bytes = std::fs::read(mb).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    let altered = d.join("altered.manifest");
    std::fs::write(&altered, bytes).unwrap();
    let out = idvault(&[
        "manifest",
        "diff",
        "--key",
        key,
        ma,
        altered.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A manifest under another key is refused, as is an unknown normaliser.
    let other = d.join("other.key");
    ok(&idvault(&[
        "manifest",
        "keygen",
        "--out",
        other.to_str().unwrap(),
    ]));
    let mo = d.join("o.manifest");
    ok(&build(
        &sa,
        other.to_str().unwrap(),
        &["--out", mo.to_str().unwrap()],
        &a,
    ));
    let out = idvault(&["manifest", "diff", "--key", key, ma, mo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "errors exit 2");
    assert!(String::from_utf8_lossy(&out.stderr).contains("another comparison key"));
    // A key file passed as the schema is not echoed.
    let out = build(key, key, &["--out", "/dev/null/x"], &a);
    let secret = std::fs::read_to_string(key).unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains(secret.trim()));
    let bad = write(d, "bad.toml", &SCHEMA_A.replace("\"fold\"", "\"soundex\""));
    let out = build(&bad, key, &["--out", "/dev/null/x"], &a);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown normaliser"));

    // A malformed record fails the build, names the record and leaves no
    // manifest; the value itself is not echoed.
    let broken = write(d, "broken.csv", &format!("{csv}999,Secretvalue\n"));
    let out = build(&sa, key, &[], &broken);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("record 201") && !err.contains("Secretvalue"),
        "{err}"
    );
    assert!(!Path::new(&format!("{broken}.manifest")).exists());
}
