//! `idvault bench manifest`: hash manifests at scale (docs/BENCHMARKS.md,
//! "Manifests").
//!
//! Method: two exports of the same synthetic people are written to disk:
//! A as CSV, B as JSON Lines with other column names, every value spelled
//! differently (upper case, day-first dates, international phones) and
//! the records in another order; a fraction of the records differs
//! (a third missing from B, a third changed in B, a third extra in B).
//! Measured in one run: the baseline (reading and parsing A's CSV, nothing
//! else), building both manifests, diffing them, summarising B, and the
//! diff of A against B's summary; the bytes each method would ship; the
//! process's peak resident memory. The diff's findings are checked
//! against the differences made.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use idvault_tokenizer::manifest::summary::{self, Summary};
use idvault_tokenizer::manifest::{
    self, BuildOptions, ComparisonKey, DiffStatus, DiffTotals, InputFormat, Normaliser, Schema,
    SchemaField,
};

use crate::BenchError;
use crate::synth::{self, Rng};

/// What to run.
#[derive(Debug, Clone)]
pub struct ManifestBenchOptions {
    /// Records in A.
    pub records: u64,
    /// Fraction of records that differ (0.0001 = 0.01 %).
    pub differ: f64,
    /// Where the exports and manifests go (default: a temporary directory,
    /// removed afterwards).
    pub dir: Option<PathBuf>,
}

/// The figures of a run.
#[derive(Debug, Clone, Default)]
pub struct ManifestBenchReport {
    /// Records in A and in B.
    pub records_a: u64,
    /// Records in B.
    pub records_b: u64,
    /// Differences made (missing, changed, extra).
    pub made: (u64, u64, u64),
    /// Bytes of the two exports.
    pub export_bytes: (u64, u64),
    /// Seconds to read and parse A's CSV (baseline).
    pub parse_secs: f64,
    /// Seconds to build A's and B's manifests.
    pub build_secs: (f64, f64),
    /// Bytes of the two manifests.
    pub manifest_bytes: (u64, u64),
    /// Seconds of the full diff.
    pub diff_secs: f64,
    /// What it found.
    pub found: DiffTotals,
    /// Seconds to summarise B.
    pub summary_secs: f64,
    /// Bytes of B's summary.
    pub summary_bytes: u64,
    /// Cells of B's summary.
    pub summary_cells: usize,
    /// Seconds of A's diff against B's summary.
    pub summary_diff_secs: f64,
    /// What that found.
    pub summary_found: DiffTotals,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mib: f64,
}

fn schemas() -> (Schema, Schema) {
    let a = Schema {
        key: SchemaField::new("id", "id", Normaliser::Trim),
        fields: vec![
            SchemaField::new("given_name", "given_name", Normaliser::Fold),
            SchemaField::new("family_name", "family_name", Normaliser::Case),
            SchemaField::new("date_of_birth", "date_of_birth", Normaliser::Date),
            SchemaField::new("phone", "phone", Normaliser::Phone),
            SchemaField::new("email", "email", Normaliser::Email),
        ],
        default_country_code: Some(44),
    };
    let mut b = a.clone();
    b.key.column = "ref".into();
    for f in &mut b.fields {
        f.column = match f.name.as_str() {
            "given_name" => "name.given".into(),
            "family_name" => "name.family".into(),
            "date_of_birth" => "dob".into(),
            other => other.into(),
        };
    }
    (a, b)
}

fn get<'p>(p: &'p synth::Person, f: &str) -> &'p str {
    p.iter()
        .find(|(n, _)| *n == f)
        .map_or("", |(_, v)| v.as_str())
}

/// Which records differ, and how: a keyed choice, so A's and B's writers
/// agree without a list in memory.
fn change(i: u64, differ: f64) -> Option<u8> {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5eed;
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 32;
    let threshold = (differ.clamp(0.0, 1.0) * 1_000_000.0) as u64;
    (x % 1_000_000 < threshold).then_some(((x >> 20) % 3) as u8)
}

fn write_exports(
    dir: &Path,
    o: &ManifestBenchOptions,
    report: &mut ManifestBenchReport,
) -> Result<(PathBuf, PathBuf), BenchError> {
    let (pa, pb) = (dir.join("a.csv"), dir.join("b.jsonl"));
    let mut a = BufWriter::with_capacity(1 << 20, File::create(&pa)?);
    let mut b = BufWriter::with_capacity(1 << 20, File::create(&pb)?);
    writeln!(a, "id,given_name,family_name,date_of_birth,phone,email")?;
    let mut rng = Rng::new(0x3a11_f357);
    let b_line = |b: &mut BufWriter<File>, id: u64, p: &synth::Person, tweak: bool| {
        let dob = get(p, "date_of_birth");
        let (y, m, d) = (dob.get(0..4), dob.get(5..7), dob.get(8..10));
        let phone = get(p, "phone");
        let email = if tweak {
            "moved@example.org".to_owned()
        } else {
            get(p, "email").to_uppercase()
        };
        let v = serde_json::json!({
            "ref": id,
            "name": {"given": get(p, "given_name").to_uppercase(), "family": format!(" {} ", get(p, "family_name").to_lowercase())},
            "dob": format!("{}/{}/{}", d.unwrap_or(""), m.unwrap_or(""), y.unwrap_or("")),
            "phone": phone.strip_prefix('0').map(|r| format!("+44 {r}")).unwrap_or_default(),
            "email": email,
        });
        writeln!(b, "{v}")
    };
    // B lists its records in blocks written in reverse, so its order is
    // not A's.
    let mut block: Vec<(u64, synth::Person, bool)> = Vec::with_capacity(4096);
    for i in 1..=o.records {
        let p = synth::person(&mut rng);
        writeln!(
            a,
            "{i},{},{},{},{},{}",
            get(&p, "given_name"),
            get(&p, "family_name"),
            get(&p, "date_of_birth"),
            get(&p, "phone"),
            get(&p, "email")
        )?;
        match change(i, o.differ) {
            Some(0) => report.made.0 += 1,
            Some(1) => {
                report.made.1 += 1;
                block.push((i, p, true));
            }
            Some(_) => {
                report.made.2 += 1;
                block.push((i, p.clone(), false));
                block.push((o.records + i, p, false));
            }
            None => block.push((i, p, false)),
        }
        if block.len() >= 4096 || i == o.records {
            for (id, p, tweak) in block.drain(..).rev() {
                b_line(&mut b, id, &p, tweak)?;
            }
        }
    }
    a.flush()?;
    b.flush()?;
    report.records_a = o.records;
    report.records_b = o.records - report.made.0 + report.made.2;
    report.export_bytes = (pa.metadata()?.len(), pb.metadata()?.len());
    Ok((pa, pb))
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn open(p: &Path) -> Result<BufReader<File>, std::io::Error> {
    Ok(BufReader::with_capacity(1 << 20, File::open(p)?))
}

/// Runs the benchmark; `progress` hears what is under way.
pub fn run(
    o: &ManifestBenchOptions,
    progress: &dyn Fn(&str),
) -> Result<ManifestBenchReport, BenchError> {
    // Removed when dropped, also on an error.
    let tmp = tempfile::Builder::new()
        .prefix("idvault-bench-manifest")
        .tempdir()?;
    let dir = o.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    let mut r = ManifestBenchReport::default();
    progress(&format!("writing two exports of {} records", o.records));
    let (pa, pb) = write_exports(&dir, o, &mut r)?;
    let key = ComparisonKey::new(&[0x4d; 32]);
    let (sa, sb) = schemas();

    progress("baseline: read and parse A");
    let t = Instant::now();
    let mut csv = csv::Reader::from_reader(open(&pa)?);
    let mut rec = csv::StringRecord::new();
    let mut n = 0u64;
    while csv.read_record(&mut rec)? {
        n += rec.len() as u64;
    }
    r.parse_secs = t.elapsed().as_secs_f64();
    std::hint::black_box(n);

    let build =
        |schema: &Schema, input: &Path, format, out: &Path, id: u8| -> Result<f64, BenchError> {
            let t = Instant::now();
            let mut w = File::create(out)?;
            let opts = BuildOptions {
                format,
                build_id: [id; 16],
                ..BuildOptions::default()
            };
            manifest::build(schema, &key, &opts, open(input)?, &mut w, &mut || {
                // Unnamed: removed by the system as soon as it is closed.
                tempfile::tempfile_in(&dir)
            })?;
            w.sync_all()?;
            Ok(t.elapsed().as_secs_f64())
        };
    let (ma, mb) = (dir.join("a.manifest"), dir.join("b.manifest"));
    progress("building A's manifest");
    r.build_secs.0 = build(&sa, &pa, InputFormat::Csv, &ma, 1)?;
    progress("building B's manifest");
    r.build_secs.1 = build(&sb, &pb, InputFormat::JsonLines, &mb, 2)?;
    r.manifest_bytes = (ma.metadata()?.len(), mb.metadata()?.len());

    progress("diff");
    let t = Instant::now();
    r.found = manifest::diff(open(&ma)?, open(&mb)?, &key, &mut |i| {
        std::hint::black_box(i.status == DiffStatus::Differs);
        Ok(())
    })?;
    r.diff_secs = t.elapsed().as_secs_f64();

    progress("summary of B and diff against it");
    let t = Instant::now();
    let most = (r.records_b / 1000).max(100);
    let cells = summary::cells_for(most).ok_or("too many records for one summary")?;
    let s = Summary::from_manifest(open(&mb)?, &key, cells)?;
    let sp = dir.join("b.summary");
    let mut w = BufWriter::new(File::create(&sp)?);
    s.write(&mut w, &key)?;
    w.flush()?;
    drop(w);
    r.summary_secs = t.elapsed().as_secs_f64();
    r.summary_bytes = sp.metadata()?.len();
    r.summary_cells = s.cells();
    let t = Instant::now();
    let s = Summary::read(open(&sp)?, &key)?;
    r.summary_found =
        summary::diff_with_summary(&mut || Ok(open(&ma)?), &key, &s, &mut |_| Ok(()))?;
    r.summary_diff_secs = t.elapsed().as_secs_f64();
    r.peak_rss_mib = peak_rss_mib();

    let want = (r.made.0, r.made.2, r.made.1);
    for (what, f) in [("diff", r.found), ("summary diff", r.summary_found)] {
        if (f.missing_in_b, f.missing_in_a, f.differ) != want {
            return Err(format!(
                "{what} found {}/{}/{} missing-in-b/missing-in-a/differs where {}/{}/{} were made",
                f.missing_in_b, f.missing_in_a, f.differ, want.0, want.1, want.2
            )
            .into());
        }
    }
    Ok(r)
}
