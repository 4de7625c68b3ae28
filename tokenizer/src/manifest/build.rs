//! Building a manifest from a CSV or JSON Lines export, in bounded memory:
//! records are digested into sorted runs of at most
//! [`BuildOptions::run_entries`] entries, spilled to files the caller
//! provides, and merged into the output (an external merge sort).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, Write};

use super::format::{Entry, MacWriter};
use super::{Canonical, ComparisonKey, Header, MAX_KEY_BYTES, ManifestError, Schema};

/// Longest JSON line, or CSV record (quoted newlines included), accepted.
const MAX_LINE_BYTES: usize = 8 * 1024 * 1024;

/// Counts the bytes a CSV reader pulls and refuses to go more than
/// [`MAX_LINE_BYTES`] (plus the reader's buffer) past the end of the last
/// whole record: an unterminated quote cannot make one record the size of
/// the file in memory.
struct BoundedRecords<R> {
    inner: R,
    read: std::rc::Rc<std::cell::Cell<u64>>,
    record_start: std::rc::Rc<std::cell::Cell<u64>>,
}

/// The io error [`BoundedRecords`] stops with.
#[derive(Debug)]
struct RecordTooLong;

impl std::fmt::Display for RecordTooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "record over {MAX_LINE_BYTES} bytes")
    }
}

impl std::error::Error for RecordTooLong {}

/// The csv reader's own buffer: it may read this far ahead of a record.
const CSV_BUFFER: u64 = 64 * 1024;

impl<R: Read> Read for BoundedRecords<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let limit = self.record_start.get() + MAX_LINE_BYTES as u64 + CSV_BUFFER;
        let room = limit.saturating_sub(self.read.get());
        if room == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, RecordTooLong));
        }
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(buf.get_mut(..want).unwrap_or_default())?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

/// The input's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// CSV with a header row naming the columns.
    Csv,
    /// One JSON object per line; columns are paths (`address.city`).
    JsonLines,
}

/// How to build.
#[derive(Debug, Clone, Copy)]
pub struct BuildOptions {
    /// The input's format.
    pub format: InputFormat,
    /// Entries sorted in memory before a run is spilled (bounds memory:
    /// about 120 bytes plus the key and 16 per field, per entry).
    pub run_entries: usize,
    /// A random id of this build (the caller draws it).
    pub build_id: [u8; 16],
    /// Unix seconds now, as the caller's clock says (informative).
    pub created: u64,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            format: InputFormat::Csv,
            run_entries: 500_000,
            build_id: [0; 16],
            created: 0,
        }
    }
}

/// What a build did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildSummary {
    /// Records in the manifest.
    pub records: u64,
    /// Per schema field, the records where it is present (a field never
    /// present usually names a wrong column or path).
    pub present: Vec<u64>,
    /// Values a normaliser could not read (kept as trimmed text).
    pub unreadable: u64,
    /// Sorted runs spilled (0 when everything fit in one run).
    pub runs: usize,
}

/// Builds the manifest of `input` into `out`. `spill` gives a fresh
/// read-write file for each sorted run (an unnamed temporary file is
/// best: nothing is left behind on a crash).
pub fn build(
    schema: &Schema,
    key: &ComparisonKey,
    opts: &BuildOptions,
    input: impl Read,
    out: &mut impl Write,
    spill: &mut dyn FnMut() -> io::Result<File>,
) -> Result<BuildSummary, ManifestError> {
    schema.validate()?;
    let mut summary = BuildSummary {
        present: vec![0; schema.fields.len()],
        ..BuildSummary::default()
    };
    let mut run: Vec<Entry> = Vec::new();
    let mut runs: Vec<(File, u64)> = Vec::new();
    let cap = opts.run_entries.max(1);
    let mut sink = |e: Entry, summary: &mut BuildSummary| -> Result<(), ManifestError> {
        run.push(e);
        summary.records += 1;
        if run.len() >= cap {
            runs.push(spill_run(&mut run, spill)?);
        }
        Ok(())
    };
    match opts.format {
        InputFormat::Csv => read_csv(schema, key, input, &mut summary, &mut sink)?,
        InputFormat::JsonLines => read_json_lines(schema, key, input, &mut summary, &mut sink)?,
    }
    let header = Header {
        schema_id: schema.id(),
        key_id: key.id(),
        build_id: opts.build_id,
        created: opts.created,
        fields: schema.fields.iter().map(|f| f.name.clone()).collect(),
        records: summary.records,
    };
    let mut w = MacWriter::new(BufWriter::new(out), key);
    header.write(&mut w)?;
    let mut buf = Vec::with_capacity(4096);
    if runs.is_empty() {
        sort_run(&mut run);
        let mut last: Option<&Entry> = None;
        for e in &run {
            if last.is_some_and(|l| l.key_digest == e.key_digest) {
                return Err(ManifestError::DuplicateKey(e.key.clone()));
            }
            buf.clear();
            e.encode(&mut buf);
            w.write_all(&buf)?;
            last = Some(e);
        }
    } else {
        if !run.is_empty() {
            runs.push(spill_run(&mut run, spill)?);
        }
        summary.runs = runs.len();
        merge(runs, schema.fields.len(), &mut w)?;
    }
    w.finish()?.flush()?;
    Ok(summary)
}

fn sort_run(run: &mut [Entry]) {
    run.sort_unstable_by_key(|a| a.key_digest);
}

fn spill_run(
    run: &mut Vec<Entry>,
    spill: &mut dyn FnMut() -> io::Result<File>,
) -> Result<(File, u64), ManifestError> {
    sort_run(run);
    let mut f = spill()?;
    {
        let mut w = BufWriter::with_capacity(1 << 20, &mut f);
        let mut buf = Vec::with_capacity(4096);
        for e in run.iter() {
            buf.clear();
            e.encode(&mut buf);
            w.write_all(&buf)?;
        }
        w.flush()?;
    }
    f.rewind()?;
    let n = run.len() as u64;
    run.clear();
    Ok((f, n))
}

/// k-way merge of sorted runs, refusing a key digest seen twice.
fn merge(runs: Vec<(File, u64)>, fields: usize, w: &mut impl Write) -> Result<(), ManifestError> {
    let mut readers: Vec<BufReader<File>> = runs
        .into_iter()
        .map(|(f, _)| BufReader::with_capacity(1 << 16, f))
        .collect();
    let mut heads: Vec<Option<Entry>> = Vec::with_capacity(readers.len());
    let mut heap = BinaryHeap::new();
    for (i, r) in readers.iter_mut().enumerate() {
        let e = Entry::read(r, fields)?;
        if let Some(e) = &e {
            heap.push(Reverse((e.key_digest, i)));
        }
        heads.push(e);
    }
    let mut last: Option<[u8; 32]> = None;
    let mut buf = Vec::with_capacity(4096);
    while let Some(Reverse((_, i))) = heap.pop() {
        let (Some(slot), Some(r)) = (heads.get_mut(i), readers.get_mut(i)) else {
            return Err(ManifestError::Format("merge state".into()));
        };
        let Some(e) = slot.take() else {
            return Err(ManifestError::Format("merge state".into()));
        };
        if last == Some(e.key_digest) {
            return Err(ManifestError::DuplicateKey(e.key));
        }
        last = Some(e.key_digest);
        buf.clear();
        e.encode(&mut buf);
        w.write_all(&buf)?;
        let next = Entry::read(r, fields)?;
        if let Some(n) = &next {
            heap.push(Reverse((n.key_digest, i)));
        }
        *slot = next;
    }
    Ok(())
}

/// Turns one record's raw values (key first, then the schema's fields;
/// `None` when missing) into its entry.
fn record(
    schema: &Schema,
    key: &ComparisonKey,
    n: u64,
    raw_key: Option<&str>,
    raw: &[Option<&str>],
    summary: &mut BuildSummary,
) -> Result<Entry, ManifestError> {
    let opts = schema.options();
    let rec_err = |why: String| ManifestError::Record { record: n, why };
    let k = match raw_key.map(|v| schema.key.normaliser.apply(v, &opts)) {
        None | Some(Canonical::Absent) => {
            return Err(rec_err(format!("no record key ({})", schema.key.column)));
        }
        Some(Canonical::Value(v) | Canonical::Unreadable(v)) => v,
    };
    if k.len() > MAX_KEY_BYTES {
        return Err(rec_err(format!("record key over {MAX_KEY_BYTES} bytes")));
    }
    let values: Vec<Canonical> = schema
        .fields
        .iter()
        .zip(raw)
        .zip(summary.present.iter_mut())
        .map(|((f, v), present)| match v {
            None => Canonical::Absent,
            Some(v) => {
                let c = f.normaliser.apply(v, &opts);
                match c {
                    Canonical::Absent => {}
                    Canonical::Value(_) => *present += 1,
                    Canonical::Unreadable(_) => {
                        *present += 1;
                        summary.unreadable += 1;
                    }
                }
                c
            }
        })
        .collect();
    Ok(key.digest(schema, &k, &values))
}

type Sink<'a> = dyn FnMut(Entry, &mut BuildSummary) -> Result<(), ManifestError> + 'a;

fn read_csv(
    schema: &Schema,
    key: &ComparisonKey,
    input: impl Read,
    summary: &mut BuildSummary,
    sink: &mut Sink<'_>,
) -> Result<(), ManifestError> {
    let record_start = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let input = BoundedRecords {
        inner: input,
        read: std::rc::Rc::default(),
        record_start: std::rc::Rc::clone(&record_start),
    };
    let mut r = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .buffer_capacity(usize::try_from(CSV_BUFFER).unwrap_or(usize::MAX))
        .from_reader(input);
    let csv_err = |e: csv::Error, n: u64| match e.into_kind() {
        csv::ErrorKind::Io(e) if e.get_ref().is_some_and(|x| x.is::<RecordTooLong>()) => {
            ManifestError::Record {
                record: n,
                why: RecordTooLong.to_string(),
            }
        }
        csv::ErrorKind::Io(e) => ManifestError::Io(e),
        csv::ErrorKind::UnequalLengths { .. } => ManifestError::Record {
            record: n,
            why: "a different number of columns than the header".into(),
        },
        csv::ErrorKind::Utf8 { .. } => ManifestError::Record {
            record: n,
            why: "not UTF-8".into(),
        },
        _ => ManifestError::Record {
            record: n,
            why: "malformed CSV".into(),
        },
    };
    let headers = r.headers().map_err(|e| csv_err(e, 0))?.clone();
    let col = |name: &str| -> Result<usize, ManifestError> {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| ManifestError::Schema(format!("column {name:?} is not in the file")))
    };
    let key_col = col(&schema.key.column)?;
    let cols: Vec<usize> = schema
        .fields
        .iter()
        .map(|f| col(&f.column))
        .collect::<Result<_, _>>()?;
    let mut rec = csv::StringRecord::new();
    let mut n = 0u64;
    loop {
        record_start.set(r.position().byte());
        let more = r.read_record(&mut rec).map_err(|e| csv_err(e, n + 1))?;
        if !more {
            return Ok(());
        }
        n += 1;
        let raw: Vec<Option<&str>> = cols.iter().map(|c| rec.get(*c)).collect();
        let e = record(schema, key, n, rec.get(key_col), &raw, summary)?;
        sink(e, summary)?;
    }
}

/// A JSON scalar as text; `Ok(None)` for null or missing.
fn scalar<'v>(
    v: &'v serde_json::Value,
    path: &str,
) -> Result<Option<std::borrow::Cow<'v, str>>, String> {
    let mut cur = v;
    for part in path.split('.') {
        match cur.get(part) {
            Some(next) => cur = next,
            None => return Ok(None),
        }
    }
    match cur {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => Ok(Some(s.as_str().into())),
        // Integers that fit 64 bits are exact; other numbers are doubles
        // by then, printed shortest. An integer past 2^53 held as a
        // double has lost digits: refused rather than compared wrongly.
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(x) if n.is_f64() && !(x.is_finite() && x.abs() < 9_007_199_254_740_992.0) => Err(
                format!("{path} is a number too large to compare exactly; export it as a string"),
            ),
            _ => Ok(Some(n.to_string().into())),
        },
        serde_json::Value::Bool(b) => Ok(Some(if *b { "true" } else { "false" }.into())),
        _ => Err(format!("{path} is an object or array, not a value")),
    }
}

fn read_json_lines(
    schema: &Schema,
    key: &ComparisonKey,
    input: impl Read,
    summary: &mut BuildSummary,
    sink: &mut Sink<'_>,
) -> Result<(), ManifestError> {
    let mut r = BufReader::with_capacity(1 << 20, input);
    let mut line = Vec::with_capacity(1024);
    let mut n = 0u64;
    loop {
        line.clear();
        let got = (&mut r)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if got == 0 {
            return Ok(());
        }
        n += 1;
        if line.len() > MAX_LINE_BYTES {
            return Err(ManifestError::Record {
                record: n,
                why: format!("line over {MAX_LINE_BYTES} bytes"),
            });
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            n -= 1;
            continue;
        }
        let rec_err = |why: String| ManifestError::Record { record: n, why };
        let v: serde_json::Value =
            serde_json::from_slice(&line).map_err(|_| rec_err("not a JSON object".into()))?;
        if !v.is_object() {
            return Err(rec_err("not a JSON object".into()));
        }
        let k = scalar(&v, &schema.key.column).map_err(rec_err)?;
        let vals: Vec<Option<std::borrow::Cow<'_, str>>> = schema
            .fields
            .iter()
            .map(|f| scalar(&v, &f.column))
            .collect::<Result<_, _>>()
            .map_err(rec_err)?;
        let raw: Vec<Option<&str>> = vals.iter().map(|v| v.as_deref()).collect();
        let e = record(schema, key, n, k.as_deref(), &raw, summary)?;
        sink(e, summary)?;
    }
}
