//! `idvault manifest …`: checking a migration between two platforms by
//! hash manifests, without either side showing its field values
//! (docs/manifests.md).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read as _, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use idvault_core::Rng;
use idvault_tokenizer::manifest::summary::{self, SUMMARY_MAGIC, Summary};
use idvault_tokenizer::manifest::{
    self, BuildOptions, ComparisonKey, DiffItem, DiffTotals, InputFormat, MANIFEST_MAGIC,
    MAX_SCHEMA_BYTES, ManifestError, Schema,
};
use zeroize::Zeroizing;

use super::write_secret_file;

#[derive(Subcommand, Debug)]
pub(crate) enum ManifestCommand {
    /// Make a comparison key (64 hex digits, file mode 0600) to share with
    /// the other platform over a secure channel.
    Keygen {
        /// Where to write it (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Turn a CSV or JSON Lines export into a manifest of keyed digests.
    Build {
        /// Schema (TOML): the record key and the compared fields with
        /// their columns and normalisers.
        #[arg(long)]
        schema: PathBuf,
        /// Comparison key file (`idvault manifest keygen`), the same on
        /// both platforms.
        #[arg(long, env = "IDVAULT_MANIFEST_KEY_FILE")]
        key: PathBuf,
        /// Input format (default: the schema's `format`, else from the
        /// file name: .csv, or .jsonl / .ndjson / .json).
        #[arg(long, value_enum)]
        format: Option<Format>,
        /// Manifest to write (default: FILE.manifest).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Directory for sorted runs (default: the system temp directory).
        #[arg(long)]
        temp_dir: Option<PathBuf>,
        /// Records sorted in memory per run (bounds memory; each run is
        /// one temporary file open during the merge).
        #[arg(long, default_value_t = 500_000, value_parser = clap::value_parser!(u64).range(100..))]
        run_records: u64,
        /// The export (`-` for standard input).
        file: PathBuf,
    },
    /// Condense a manifest into a summary whose size follows the number of
    /// differences expected, to send instead of the whole manifest.
    Summary {
        /// The manifest.
        manifest: PathBuf,
        /// Comparison key file it was built under.
        #[arg(long, env = "IDVAULT_MANIFEST_KEY_FILE")]
        key: PathBuf,
        /// Most differing records the summary must be able to name
        /// (default: 0.1 % of the records, at least 100).
        #[arg(long)]
        max_differences: Option<u64>,
        /// Where to write it (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Name the records missing on either side or differing, as JSON
    /// lines; exit 0 when the two sides hold the same records, 1 when not.
    Diff {
        /// This side's manifest (a regular file: it may be read twice).
        a: PathBuf,
        /// Comparison key file both were built under: every file's closing
        /// MAC and clear record keys are checked with it.
        #[arg(long, env = "IDVAULT_MANIFEST_KEY_FILE")]
        key: PathBuf,
        /// The other side's manifest or summary.
        b: PathBuf,
        /// Also name the fields that differ (needs two full manifests).
        #[arg(long)]
        fields: bool,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Csv,
    Jsonl,
}

/// The schema file, parsed by `manifest::parse_schema` (fuzzed there).
fn load_schema(path: &Path) -> anyhow::Result<(Schema, Option<Format>)> {
    let mut text = String::new();
    File::open(path)
        .and_then(|f| {
            f.take(MAX_SCHEMA_BYTES as u64 + 1)
                .read_to_string(&mut text)
        })
        .with_context(|| format!("cannot read schema {}", path.display()))?;
    let (schema, format) = match manifest::parse_schema(&text) {
        Ok(parsed) => parsed,
        Err(ManifestError::Schema(why)) => bail!("schema {}: {why}", path.display()),
        Err(e) => bail!("schema {}: {e}", path.display()),
    };
    let format = format.map(|f| match f {
        InputFormat::Csv => Format::Csv,
        InputFormat::JsonLines => Format::Jsonl,
    });
    Ok((schema, format))
}

fn load_key(path: &Path) -> anyhow::Result<ComparisonKey> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
    );
    Ok(ComparisonKey::from_hex(&text)?)
}

/// Writes through a temporary file renamed into place when complete, so
/// a failed or interrupted run leaves no half manifest behind.
fn write_atomically(
    out: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if out.exists() {
        bail!("{} exists; not overwritten", out.display());
    }
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    let mut w = BufWriter::new(tmp.reopen()?);
    write(&mut w)?;
    w.flush()?;
    w.get_ref().sync_all()?;
    drop(w);
    tmp.persist_noclobber(out)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {}", out.display(), e.error))?;
    Ok(())
}

fn first_line(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::BufRead;
    let mut r = BufReader::new(
        File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
    );
    let mut line = Vec::new();
    (&mut r).take(128).read_until(b'\n', &mut line)?;
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    Ok(line)
}

pub(crate) fn run(command: ManifestCommand) -> anyhow::Result<()> {
    match command {
        ManifestCommand::Keygen { out } => {
            let mut secret = Zeroizing::new([0u8; 32]);
            idvault_core::SystemRng::default().fill(secret.as_mut())?;
            let hex = Zeroizing::new(hex::encode(secret.as_ref()));
            let text = Zeroizing::new(format!("{}\n", hex.as_str()));
            write_secret_file(&out, &text)?;
            println!(
                "comparison key {} written to {}; give it to the other platform over a secure channel",
                hex::encode(ComparisonKey::from_hex(&text)?.id()),
                out.display()
            );
            Ok(())
        }
        ManifestCommand::Build {
            schema,
            key,
            format,
            out,
            temp_dir,
            run_records,
            file,
        } => {
            let (schema, schema_format) = load_schema(&schema)?;
            let key = load_key(&key)?;
            let format = match format.or(schema_format) {
                Some(f) => f,
                None => match file.extension().and_then(|e| e.to_str()) {
                    Some("csv") => Format::Csv,
                    Some("jsonl" | "ndjson" | "json") => Format::Jsonl,
                    _ => bail!("say the input format with --format csv|jsonl or in the schema"),
                },
            };
            let out = match out {
                Some(o) => o,
                None if file.as_os_str() == "-" => bail!("--out is needed when reading stdin"),
                None => {
                    let mut o = file.clone().into_os_string();
                    o.push(".manifest");
                    PathBuf::from(o)
                }
            };
            let mut build_id = [0u8; 16];
            idvault_core::SystemRng::default().fill(&mut build_id)?;
            #[allow(clippy::disallowed_methods)] // the build's informative timestamp
            let created = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let opts = BuildOptions {
                format: match format {
                    Format::Csv => InputFormat::Csv,
                    Format::Jsonl => InputFormat::JsonLines,
                },
                run_entries: usize::try_from(run_records).unwrap_or(usize::MAX),
                build_id,
                created,
            };
            let input: Box<dyn std::io::Read> = if file.as_os_str() == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                Box::new(
                    File::open(&file).with_context(|| format!("cannot open {}", file.display()))?,
                )
            };
            let input = BufReader::with_capacity(1 << 20, input);
            let mut spill = || match &temp_dir {
                Some(d) => tempfile::tempfile_in(d),
                None => tempfile::tempfile(),
            };
            let mut done = None;
            write_atomically(&out, |w| {
                done = Some(manifest::build(&schema, &key, &opts, input, w, &mut spill)?);
                Ok(())
            })?;
            if let Some(s) = done {
                eprintln!(
                    "{} records, {} values no normaliser could read (compared as trimmed text), {} sorted runs",
                    s.records, s.unreadable, s.runs
                );
                for (f, n) in schema.fields.iter().zip(&s.present) {
                    if *n == 0 && s.records > 0 {
                        eprintln!(
                            "warning: field {:?} (column {:?}) is in no record: check the column",
                            f.name, f.column
                        );
                    }
                }
            }
            println!("{}", out.display());
            Ok(())
        }
        ManifestCommand::Summary {
            manifest,
            key,
            max_differences,
            out,
        } => {
            let key = load_key(&key)?;
            let open = || -> anyhow::Result<_> {
                Ok(BufReader::with_capacity(
                    1 << 20,
                    File::open(&manifest)
                        .with_context(|| format!("cannot open {}", manifest.display()))?,
                ))
            };
            let records = manifest::ManifestReader::new(open()?, &key)?
                .header()
                .records;
            let d = max_differences.unwrap_or((records / 1000).max(100));
            let Some(cells) = summary::cells_for(d) else {
                bail!(
                    "a summary for {d} differing records would exceed {} cells; diff the full manifests",
                    summary::MAX_CELLS
                );
            };
            let s = Summary::from_manifest(open()?, &key, cells)?;
            write_atomically(&out, |w| Ok(s.write(w, &key)?))?;
            eprintln!(
                "summary of {} records in {} cells ({} bytes), for up to {d} differing records",
                s.records(),
                s.cells(),
                std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0)
            );
            println!("{}", out.display());
            Ok(())
        }
        ManifestCommand::Diff { a, key, b, fields } => {
            // diff(1)'s convention: 0 same, 1 different, 2 trouble.
            if let Err(e) = load_key(&key).and_then(|key| diff(&a, &b, &key, fields)) {
                eprintln!("Error: {e:#} (discard any lines printed above)");
                std::process::exit(2);
            }
            Ok(())
        }
    }
}

fn diff(a: &Path, b: &Path, key: &ComparisonKey, fields: bool) -> anyhow::Result<()> {
    let open = |p: &Path| -> anyhow::Result<BufReader<File>> {
        Ok(BufReader::with_capacity(
            1 << 20,
            File::open(p).with_context(|| format!("cannot open {}", p.display()))?,
        ))
    };
    if first_line(a)? != MANIFEST_MAGIC.as_bytes() {
        bail!(
            "{} is not a manifest (`idvault manifest build`)",
            a.display()
        );
    }
    let stdout = std::io::stdout();
    let mut w = BufWriter::new(stdout.lock());
    let mut emit = |i: DiffItem| -> Result<(), manifest::ManifestError> {
        let mut v = serde_json::Map::new();
        v.insert("status".into(), i.status.name().into());
        match i.key {
            Some(k) => v.insert("key".into(), k.into()),
            None => v.insert("key_digest".into(), hex::encode(i.key_digest).into()),
        };
        if fields && !i.fields.is_empty() {
            v.insert("fields".into(), i.fields.into());
        }
        writeln!(w, "{}", serde_json::Value::Object(v))?;
        Ok(())
    };
    let b_kind = first_line(b)?;
    let t: DiffTotals = if b_kind == MANIFEST_MAGIC.as_bytes() {
        manifest::diff(open(a)?, open(b)?, key, &mut emit)?
    } else if b_kind == SUMMARY_MAGIC.as_bytes() {
        if fields {
            bail!(
                "--fields needs the other side's full manifest (a summary has no per-field digests)"
            );
        }
        let s = Summary::read(open(b)?, key)?;
        summary::diff_with_summary(
            &mut || {
                open(a)
                    .map_err(|e| manifest::ManifestError::Io(std::io::Error::other(e.to_string())))
            },
            key,
            &s,
            &mut emit,
        )?
    } else {
        bail!("{} is neither a manifest nor a summary", b.display());
    };
    w.flush()?;
    eprintln!(
        "A {} records, B {} records: {} missing in B, {} missing in A, {} differ",
        t.records_a, t.records_b, t.missing_in_b, t.missing_in_a, t.differ
    );
    if !t.same() {
        std::process::exit(1);
    }
    Ok(())
}
