//! Build, diff and summary diff over generated exports with known
//! differences.

use std::collections::BTreeSet;
use std::io::Cursor;
use std::sync::atomic::{AtomicU8, Ordering};

use super::summary::{self, Summary, cells_for, diff_with_summary};
use super::*;

use SchemaField as F;

/// Platform A's schema (CSV columns) and B's (JSON paths): same names
/// and normalisers, different columns.
fn schemas() -> (Schema, Schema) {
    let a = Schema {
        key: F::new("id", "customer_id", Normaliser::Trim),
        fields: vec![
            F::new("given_name", "given", Normaliser::Fold),
            F::new("family_name", "family", Normaliser::Case),
            F::new("date_of_birth", "dob", Normaliser::Date),
            F::new("phone", "phone", Normaliser::Phone),
            F::new("email", "email", Normaliser::Email),
        ],
        default_country_code: Some(44),
    };
    let mut b = a.clone();
    b.key.column = "id".into();
    for f in &mut b.fields {
        f.column = match f.name.as_str() {
            "given_name" => "person.first".into(),
            "family_name" => "person.last".into(),
            other => other.into(),
        };
    }
    (a, b)
}

struct Person {
    id: u32,
    given: String,
    family: String,
    dob: (u16, u8, u8),
    phone: String,
    email: String,
}

fn people(n: u32) -> Vec<Person> {
    (1..=n)
        .map(|i| Person {
            id: i,
            given: ["Zoë", "Ada", "José", "Li"][(i % 4) as usize].to_owned(),
            family: format!("Family{}", i * 7 % 101),
            dob: (
                1950 + (i % 50) as u16,
                1 + (i % 12) as u8,
                1 + (i % 28) as u8,
            ),
            phone: format!("+447700{:06}", i),
            email: format!("user{i}@example.org"),
        })
        .collect()
}

fn csv_of(ps: &[Person]) -> Vec<u8> {
    let mut out = String::from("customer_id,given,family,dob,phone,email\n");
    for p in ps {
        let (y, m, d) = p.dob;
        out.push_str(&format!(
            "{},{},{},{y:04}-{m:02}-{d:02},{},{}\n",
            p.id, p.given, p.family, p.phone, p.email
        ));
    }
    out.into_bytes()
}

/// B's export: JSON Lines, records in reverse order, and every value
/// written differently but equal after normalisation.
fn jsonl_of(ps: &[Person]) -> Vec<u8> {
    let mut out = String::new();
    for p in ps.iter().rev() {
        let (y, m, d) = p.dob;
        let v = serde_json::json!({
            "id": format!(" {} ", p.id),
            "person": {"first": p.given.to_uppercase(), "last": format!("  {}  ", p.family.to_uppercase())},
            "date_of_birth": format!("{d:02}/{m:02}/{y:04}"),
            "phone": format!("0{} {}", p.phone.get(3..7).unwrap_or(""), p.phone.get(7..).unwrap_or("")),
            "email": p.email.to_uppercase(),
        });
        out.push_str(&v.to_string());
        out.push('\n');
    }
    out.into_bytes()
}

fn cells(d: u64) -> usize {
    cells_for(d).unwrap_or(summary::MAX_CELLS)
}

fn build_bytes(
    schema: &Schema,
    key: &ComparisonKey,
    format: InputFormat,
    input: &[u8],
    run_entries: usize,
) -> Result<(Vec<u8>, BuildSummary), ManifestError> {
    static BUILDS: AtomicU8 = AtomicU8::new(0);
    let mut out = Vec::new();
    let opts = BuildOptions {
        format,
        run_entries,
        build_id: [BUILDS.fetch_add(1, Ordering::Relaxed); 16],
        created: 0,
    };
    let s = build(schema, key, &opts, input, &mut out, &mut || {
        tempfile::tempfile()
    })?;
    Ok((out, s))
}

type Found = BTreeSet<(String, String, Vec<String>)>;

fn collect(
    run: impl FnOnce(
        &mut dyn FnMut(DiffItem) -> Result<(), ManifestError>,
    ) -> Result<DiffTotals, ManifestError>,
) -> Result<(Found, DiffTotals), ManifestError> {
    let mut found = Found::new();
    let t = run(&mut |i: DiffItem| {
        let key = i
            .key
            .unwrap_or_else(|| format!("#{}", super::format::hex(&i.key_digest)));
        found.insert((i.status.name().to_owned(), key, i.fields));
        Ok(())
    })?;
    Ok((found, t))
}

#[test]
fn known_differences_are_found_and_only_they() -> Result<(), ManifestError> {
    let key = ComparisonKey::new(&[42; 32]);
    let (sa, sb) = schemas();
    let a_people = people(3000);
    let mut b_people = people(3000);
    // Missing in B: 5 and 17; extra in B: 9001, 9002; changed: 42
    // (family name), 77 (date of birth and e-mail).
    b_people.retain(|p| p.id != 5 && p.id != 17);
    b_people.extend(people(9002).into_iter().filter(|p| p.id > 9000));
    for p in &mut b_people {
        if p.id == 42 {
            p.family = "Other".into();
        }
        if p.id == 77 {
            p.dob.2 = if p.dob.2 == 1 { 2 } else { 1 };
            p.email = "changed@example.org".into();
        }
    }
    // A spills runs of 256 entries; B sorts in memory.
    let (ma, sum_a) = build_bytes(&sa, &key, InputFormat::Csv, &csv_of(&a_people), 256)?;
    let (mb, sum_b) = build_bytes(
        &sb,
        &key,
        InputFormat::JsonLines,
        &jsonl_of(&b_people),
        1 << 20,
    )?;
    assert_eq!((sum_a.records, sum_a.unreadable), (3000, 0));
    assert!(sum_a.runs > 10, "the spill path ran");
    assert_eq!((sum_b.records, sum_b.runs, sum_b.unreadable), (3000, 0, 0));

    let (found, t) = collect(|out| diff(Cursor::new(&ma), Cursor::new(&mb), &key, out))?;
    let want: Found = [
        ("missing-in-b", "5", vec![]),
        ("missing-in-b", "17", vec![]),
        ("missing-in-a", "9001", vec![]),
        ("missing-in-a", "9002", vec![]),
        ("differs", "42", vec!["family_name"]),
        ("differs", "77", vec!["date_of_birth", "email"]),
    ]
    .into_iter()
    .map(|(s, k, f)| {
        (
            s.to_owned(),
            k.to_owned(),
            f.into_iter().map(str::to_owned).collect(),
        )
    })
    .collect();
    assert_eq!(found, want);
    assert_eq!((t.missing_in_b, t.missing_in_a, t.differ), (2, 2, 2));
    assert!(!t.same());

    // The same through B's summary: A's records named, B's extras by digest.
    let summary_b = Summary::from_manifest(Cursor::new(&mb), &key, cells(10))?;
    let mut wire = Vec::new();
    summary_b.write(&mut wire, &key)?;
    assert!(wire.len() < mb.len() / 20, "{} vs {}", wire.len(), mb.len());
    let summary_b = Summary::read(Cursor::new(&wire), &key)?;
    let (found, t) =
        collect(|out| diff_with_summary(&mut || Ok(Cursor::new(&ma)), &key, &summary_b, out))?;
    assert_eq!((t.missing_in_b, t.missing_in_a, t.differ), (2, 2, 2));
    // B's extras carry only their key digest: B names them on its side.
    let named: BTreeSet<(String, String)> = found
        .into_iter()
        .map(|(s, k, _)| {
            let k = if k.starts_with('#') {
                "#".to_owned()
            } else {
                k
            };
            (s, k)
        })
        .collect();
    let want: BTreeSet<(String, String)> = [
        ("missing-in-b", "5"),
        ("missing-in-b", "17"),
        ("missing-in-a", "#"),
        ("differs", "42"),
        ("differs", "77"),
    ]
    .into_iter()
    .map(|(s, k)| (s.to_owned(), k.to_owned()))
    .collect();
    assert_eq!(named, want);

    // A summary too small for the differences says so.
    let tiny = Summary::from_manifest(Cursor::new(&mb), &key, 3)?;
    assert!(matches!(
        diff_with_summary(&mut || Ok(Cursor::new(&ma)), &key, &tiny, &mut |_| Ok(())),
        Err(ManifestError::SummaryTooSmall { .. })
    ));

    // A summary altered in transit, or read under another key, is refused;
    // so is a side's own summary offered as the other's.
    for i in [0, wire.len() / 2, wire.len() - 1] {
        let mut bad = wire.clone();
        if let Some(b) = bad.get_mut(i) {
            *b ^= 1;
        }
        assert!(Summary::read(Cursor::new(&bad), &key).is_err(), "byte {i}");
    }
    assert!(Summary::read(Cursor::new(&wire), &ComparisonKey::new(&[43; 32])).is_err());
    let own = Summary::from_manifest(Cursor::new(&ma), &key, cells(10))?;
    assert!(matches!(
        diff_with_summary(&mut || Ok(Cursor::new(&ma)), &key, &own, &mut |_| Ok(())),
        Err(ManifestError::Incomparable(_))
    ));
    assert!(matches!(
        diff(Cursor::new(&ma), Cursor::new(&ma), &key, &mut |_| Ok(())),
        Err(ManifestError::Incomparable(_))
    ));
    Ok(())
}

#[test]
fn equal_exports_written_differently_are_the_same() -> Result<(), ManifestError> {
    let key = ComparisonKey::new(&[1; 32]);
    let (sa, sb) = schemas();
    let ps = people(500);
    let (ma, sum_a) = build_bytes(&sa, &key, InputFormat::Csv, &csv_of(&ps), 64)?;
    let (mb, _) = build_bytes(&sb, &key, InputFormat::JsonLines, &jsonl_of(&ps), 1000)?;
    assert_eq!(
        sum_a.present,
        vec![500; 5],
        "every field found in every record"
    );
    let (found, t) = collect(|out| diff(Cursor::new(&ma), Cursor::new(&mb), &key, out))?;
    assert!(found.is_empty() && t.same() && t.records_a == 500);
    let s = Summary::from_manifest(Cursor::new(&mb), &key, cells(1))?;
    let (found, t) = collect(|out| diff_with_summary(&mut || Ok(Cursor::new(&ma)), &key, &s, out))?;
    assert!(found.is_empty() && t.same());
    Ok(())
}

#[test]
fn refusals() -> Result<(), ManifestError> {
    let key = ComparisonKey::new(&[1; 32]);
    let (sa, _) = schemas();
    let mut dup = csv_of(&people(300));
    dup.extend_from_slice(b"7,X,Y,1990-01-01,,\n");
    for run in [16, 1000] {
        assert!(
            matches!(
                build_bytes(&sa, &key, InputFormat::Csv, &dup, run),
                Err(ManifestError::DuplicateKey(k)) if k == "7"
            ),
            "run {run}"
        );
    }
    let no_key = b"customer_id,given,family,dob,phone,email\n ,a,b,,,\n";
    assert!(matches!(
        build_bytes(&sa, &key, InputFormat::Csv, no_key, 10),
        Err(ManifestError::Record { record: 1, .. })
    ));
    // An unterminated quote: refused at the record bound, not read whole.
    let mut open_quote = b"customer_id,given,family,dob,phone,email\n1,\"".to_vec();
    open_quote.extend(std::iter::repeat_n(b'x', 9 * 1024 * 1024));
    assert!(matches!(
        build_bytes(&sa, &key, InputFormat::Csv, &open_quote, 10),
        Err(ManifestError::Record { record: 1, ref why }) if why.contains("bytes")
    ));
    // A large but bounded quoted field (with a newline) is fine.
    let mut big = b"customer_id,given,family,dob,phone,email\n1,\"".to_vec();
    big.extend(std::iter::repeat_n(b'y', 1024 * 1024));
    big.extend_from_slice(b"\ny\",b,,,\n");
    assert!(build_bytes(&sa, &key, InputFormat::Csv, &big, 10).is_ok());
    let ragged = b"customer_id,given,family,dob,phone,email\n1,a\n";
    assert!(matches!(
        build_bytes(&sa, &key, InputFormat::Csv, ragged, 10),
        Err(ManifestError::Record { record: 1, .. })
    ));
    let missing_col = b"customer_id,given\n1,a\n";
    assert!(matches!(
        build_bytes(&sa, &key, InputFormat::Csv, missing_col, 10),
        Err(ManifestError::Schema(_))
    ));
    let (_, sb) = schemas();
    for bad in [
        &b"{\"id\":1}\nnot json\n"[..],
        b"[1]\n",
        b"{\"id\":{\"a\":1}}\n",
    ] {
        assert!(matches!(
            build_bytes(&sb, &key, InputFormat::JsonLines, bad, 10),
            Err(ManifestError::Record { .. })
        ));
    }
    // Errors never carry a field value.
    let secret = b"customer_id,given,family,dob,phone,email\n1,Secretname,b,notadate,,\n1,a,b,,,\n";
    let e = build_bytes(&sa, &key, InputFormat::Csv, secret, 10).err();
    assert!(e.is_some_and(|e| !e.to_string().contains("Secretname")));

    // Different keys or schemas are not compared.
    let ps = people(10);
    let (ma, _) = build_bytes(&sa, &key, InputFormat::Csv, &csv_of(&ps), 10)?;
    let other = ComparisonKey::new(&[2; 32]);
    let (mo, _) = build_bytes(&sa, &other, InputFormat::Csv, &csv_of(&ps), 10)?;
    assert!(matches!(
        diff(Cursor::new(&ma), Cursor::new(&mo), &key, &mut |_| Ok(())),
        Err(ManifestError::Incomparable(_))
    ));
    let mut s2 = sa.clone();
    s2.default_country_code = Some(1);
    let (m2, _) = build_bytes(&s2, &key, InputFormat::Csv, &csv_of(&ps), 10)?;
    assert!(matches!(
        diff(Cursor::new(&ma), Cursor::new(&m2), &key, &mut |_| Ok(())),
        Err(ManifestError::Incomparable(_))
    ));
    // JSON: a wrong path is reported as a field never present; numbers
    // past 2^53 are refused rather than compared after losing digits.
    let (_, sb) = schemas();
    let (_, sum) = build_bytes(
        &sb,
        &key,
        InputFormat::JsonLines,
        b"{\"id\":1,\"phone\":7}\n",
        10,
    )?;
    assert_eq!(sum.present, vec![0, 0, 0, 1, 0]);
    assert!(matches!(
        build_bytes(
            &sb,
            &key,
            InputFormat::JsonLines,
            b"{\"id\":123456789012345678901234}\n",
            10
        ),
        Err(ManifestError::Record { record: 1, .. })
    ));
    Ok(())
}
