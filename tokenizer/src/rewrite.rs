//! Rewrites usage-log records, replacing identifier fields with tokens.
//!
//! Works on chunks of whole records (the caller splits a stream with
//! [`split_point`]) so chunks can be processed on every core and written
//! back in order. A record that cannot be rewritten is never passed
//! through: it becomes a [`Reject`] with its line number and a reason that
//! names the field and the problem but never the value.

use crate::ident::{IdentifierType, NormalizeOptions, normalize};
use crate::json::{self, FieldPath, Hit, ValueKind};

/// Produces the token for a normalised identifier.
pub trait TokenSource: Sync {
    /// Appends the token to `out`; the error is a reason safe to log.
    fn token_into(
        &self,
        ty: IdentifierType,
        normalized: &str,
        out: &mut String,
    ) -> Result<(), String>;
}

impl TokenSource for crate::token::DomainKey {
    fn token_into(
        &self,
        ty: IdentifierType,
        normalized: &str,
        out: &mut String,
    ) -> Result<(), String> {
        crate::token::DomainKey::token_into(self, ty, normalized, out);
        Ok(())
    }
}

/// A field to tokenize: dotted JSON path or CSV column name, and its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSpec {
    /// `user.msisdn` (JSON) or `msisdn` (CSV column).
    pub path: String,
    /// How to normalise it.
    pub ty: IdentifierType,
}

impl FieldSpec {
    /// Parses `path` or `path=type`; without a type it is inferred from the name.
    pub fn parse(s: &str) -> Result<Self, RewriteError> {
        let (path, ty) = match s.split_once('=') {
            Some((p, t)) => (
                p,
                IdentifierType::parse(t).ok_or_else(|| {
                    // Named back only when short: the text is the caller's.
                    RewriteError::UnknownType(if t.len() <= 32 {
                        t.to_owned()
                    } else {
                        format!("{}…", t.chars().take(16).collect::<String>())
                    })
                })?,
            ),
            None => (s, IdentifierType::infer(s)),
        };
        if path.len() > MAX_PATH_BYTES {
            return Err(RewriteError::PathTooLong);
        }
        if path.is_empty() {
            return Err(RewriteError::BadPath(s.to_owned()));
        }
        Ok(Self {
            path: path.to_owned(),
            ty,
        })
    }
}

/// Record formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    JsonLines,
    /// CSV with a header row (RFC 4180 quoting).
    Csv {
        /// Field delimiter, usually `b','`.
        delimiter: u8,
    },
}

/// Set-up errors (bad field list or header).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RewriteError {
    /// Unknown identifier type after `=`.
    #[error("unknown identifier type '{0}' (msisdn, email, account, service, location)")]
    UnknownType(String),
    /// A field path or column name over [`MAX_PATH_BYTES`].
    #[error("field path or column name longer than {MAX_PATH_BYTES} bytes")]
    PathTooLong,
    /// A path with an empty segment.
    #[error("invalid field path '{0}'")]
    BadPath(String),
    /// No fields.
    #[error("at least one --field is required")]
    NoFields,
    /// Too many fields.
    #[error("at most {} fields", json::MAX_PATHS)]
    TooManyFields,
    /// The same field named twice.
    #[error("field '{0}' is named more than once")]
    DuplicateField(String),
    /// A CSV column named by --field is not in the header.
    #[error("CSV header has no column '{0}'")]
    MissingColumn(String),
    /// The CSV header row is not readable.
    #[error("CSV header row is not valid: {0}")]
    BadHeader(String),
    /// A CSV delimiter that would also quote or end records.
    #[error("the CSV delimiter cannot be a quote, a carriage return or a newline")]
    BadDelimiter,
}

/// A record that was not rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// 1-based line number in the input.
    pub line: u64,
    /// Why, without the value.
    pub reason: String,
}

/// Counts for one chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkStats {
    /// Records rewritten.
    pub rewritten: u64,
    /// Records rejected.
    pub rejected: u64,
    /// Blank lines skipped.
    pub blank: u64,
    /// Lines the chunk spans, an unterminated last line counted (callers
    /// number the next chunk by its newlines alone).
    pub lines: u64,
    /// The chunk was cut short: its rejects reached the rewriter's limit
    /// ([`Rewriter::with_reject_limit`]) with records left to read.
    pub stopped: bool,
}

/// Longest CSV header accepted, in bytes. The rewriter is rebuilt from
/// the header for every chunk of a stream, so the header's cost must stay
/// small next to a chunk's.
pub const MAX_CSV_HEADER_BYTES: usize = 64 * 1024;

/// Most columns a CSV header may name; every record must have as many.
pub const MAX_CSV_COLUMNS: usize = 4_096;

/// The rewriter for one stream.
pub struct Rewriter<'t> {
    format: Format,
    fields: Vec<FieldSpec>,
    paths: Vec<FieldPath>,
    /// CSV: for each column of the header, the field it holds, if any.
    columns: Vec<Option<usize>>,
    width: usize,
    opts: NormalizeOptions,
    tokens: &'t dyn TokenSource,
    reject_limit: u64,
}

impl std::fmt::Debug for Rewriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewriter")
            .field("format", &self.format)
            .field("fields", &self.fields)
            .finish()
    }
}

/// The longest field path or column name, in bytes. Every refused
/// record's reason names its field, and a stream may refuse thousands of
/// records: unbounded, one long name made each reason as long.
pub const MAX_PATH_BYTES: usize = 256;

fn check_fields(fields: &[FieldSpec]) -> Result<(), RewriteError> {
    if fields.is_empty() {
        return Err(RewriteError::NoFields);
    }
    if fields.len() > json::MAX_PATHS {
        return Err(RewriteError::TooManyFields);
    }
    if fields.iter().any(|f| f.path.len() > MAX_PATH_BYTES) {
        return Err(RewriteError::PathTooLong);
    }
    // A value named twice would be rewritten twice: in JSON the second
    // token written after the first, an invalid line.
    let mut seen = std::collections::HashSet::with_capacity(fields.len());
    if let Some(f) = fields.iter().find(|f| !seen.insert(f.path.as_str())) {
        return Err(RewriteError::DuplicateField(f.path.clone()));
    }
    Ok(())
}

impl<'t> Rewriter<'t> {
    /// A JSON Lines rewriter.
    pub fn json_lines(
        fields: Vec<FieldSpec>,
        opts: NormalizeOptions,
        tokens: &'t dyn TokenSource,
    ) -> Result<Self, RewriteError> {
        check_fields(&fields)?;
        let paths = fields
            .iter()
            .map(|f| FieldPath::parse(&f.path).ok_or_else(|| RewriteError::BadPath(f.path.clone())))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            format: Format::JsonLines,
            fields,
            paths,
            columns: Vec::new(),
            width: 0,
            opts,
            tokens,
            reject_limit: u64::MAX,
        })
    }

    /// A CSV rewriter; `header` is the header row's bytes (without newline).
    pub fn csv(
        fields: Vec<FieldSpec>,
        header: &[u8],
        delimiter: u8,
        opts: NormalizeOptions,
        tokens: &'t dyn TokenSource,
    ) -> Result<Self, RewriteError> {
        check_fields(&fields)?;
        if matches!(delimiter, b'"' | b'\r' | b'\n') {
            // Record boundaries are found without the csv crate (Splitter),
            // by a lexer that cannot follow such a delimiter.
            return Err(RewriteError::BadDelimiter);
        }
        if header.len() > MAX_CSV_HEADER_BYTES {
            return Err(RewriteError::BadHeader(format!(
                "longer than {MAX_CSV_HEADER_BYTES} bytes"
            )));
        }
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(false)
            .delimiter(delimiter)
            .from_reader(header);
        let mut rec = csv::ByteRecord::new();
        match rdr.read_byte_record(&mut rec) {
            Ok(true) => {}
            Ok(false) => return Err(RewriteError::BadHeader("empty".into())),
            Err(e) => return Err(RewriteError::BadHeader(csv_reason(&e))),
        }
        // A second record would be dropped unread: refuse it instead.
        if rdr
            .read_byte_record(&mut csv::ByteRecord::new())
            .map_or(true, |more| more)
        {
            return Err(RewriteError::BadHeader(
                "it holds more than one record".into(),
            ));
        }
        if rec.len() > MAX_CSV_COLUMNS {
            return Err(RewriteError::BadHeader(format!(
                "more than {MAX_CSV_COLUMNS} columns"
            )));
        }
        // Looked up by column for every value of every record: one slot
        // per column, not a search (a header repeating a field's name
        // thousands of times made each record's cost the square of its
        // width). Field paths are distinct (`check_fields`), so a column
        // holds at most one field.
        let mut columns = vec![None; rec.len()];
        for (fi, f) in fields.iter().enumerate() {
            let mut found = false;
            for (slot, c) in columns.iter_mut().zip(rec.iter()) {
                if c == f.path.as_bytes() {
                    *slot = Some(fi);
                    found = true;
                }
            }
            if !found {
                return Err(RewriteError::MissingColumn(f.path.clone()));
            }
        }
        Ok(Self {
            format: Format::Csv { delimiter },
            fields,
            paths: Vec::new(),
            columns,
            width: rec.len(),
            opts,
            tokens,
            reject_limit: u64::MAX,
        })
    }

    /// Stops a chunk once it has rejected `n` records (the rest unread,
    /// [`ChunkStats::stopped`] set), so rejects held for a reader that is
    /// slow or never reads stay bounded. Unlimited by default.
    #[must_use]
    pub fn with_reject_limit(mut self, n: u64) -> Self {
        self.reject_limit = n;
        self
    }

    /// The format.
    pub fn format(&self) -> Format {
        self.format
    }

    fn token_for(&self, field: usize, value: &str, out: &mut String) -> Result<(), String> {
        let spec = self.fields.get(field).ok_or("internal: field index")?;
        let norm = normalize(spec.ty, value, &self.opts)
            .map_err(|e| format!("field {}: {e}", spec.path))?;
        self.tokens
            .token_into(spec.ty, &norm, out)
            .map_err(|e| format!("field {}: {e}", spec.path))
    }

    /// Rewrites a chunk of whole records whose first line is `first_line`.
    pub fn rewrite_chunk(
        &self,
        chunk: &[u8],
        first_line: u64,
        out: &mut Vec<u8>,
        rejects: &mut Vec<Reject>,
    ) -> ChunkStats {
        match self.format {
            Format::JsonLines => self.rewrite_json(chunk, first_line, out, rejects),
            Format::Csv { delimiter } => {
                self.rewrite_csv(chunk, delimiter, first_line, out, rejects)
            }
        }
    }

    fn rewrite_json(
        &self,
        chunk: &[u8],
        first_line: u64,
        out: &mut Vec<u8>,
        rejects: &mut Vec<Reject>,
    ) -> ChunkStats {
        let mut stats = ChunkStats::default();
        let mut hits: Vec<Hit> = Vec::with_capacity(self.paths.len() * 2);
        let mut tok = String::with_capacity(64);
        let mut found = vec![false; self.paths.len()];
        for raw in chunk.split_inclusive(|&b| b == b'\n') {
            if stats.rejected >= self.reject_limit {
                stats.stopped = true;
                break;
            }
            stats.lines += 1;
            let line_no = first_line + stats.lines - 1;
            let line = raw.strip_suffix(b"\n").unwrap_or(raw);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                stats.blank += 1;
                continue;
            }
            let mark = out.len();
            match self.rewrite_json_line(line, &mut hits, &mut found, &mut tok, out) {
                Ok(()) => {
                    out.push(b'\n');
                    stats.rewritten += 1;
                }
                Err(reason) => {
                    out.truncate(mark);
                    stats.rejected += 1;
                    rejects.push(Reject {
                        line: line_no,
                        reason,
                    });
                }
            }
        }
        stats
    }

    fn rewrite_json_line(
        &self,
        line: &[u8],
        hits: &mut Vec<Hit>,
        found: &mut [bool],
        tok: &mut String,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        if std::str::from_utf8(line).is_err() {
            return Err("invalid UTF-8".into());
        }
        hits.clear();
        json::scan(line, &self.paths, hits).map_err(|e| e.to_string())?;
        found.fill(false);
        for h in hits.iter() {
            if let Some(f) = found.get_mut(h.path) {
                *f = true;
            }
        }
        if let Some(missing) = found.iter().position(|f| !f) {
            let p = self.paths.get(missing).map_or("?", FieldPath::as_str);
            return Err(format!("missing field {p}"));
        }
        let mut pos = 0;
        for h in hits.iter() {
            // Spans come in order and apart; two paths on one value (which
            // `check_fields` refuses when they are spelled alike) would
            // write an invalid line, so the record is refused instead.
            if h.start < pos {
                return Err("two fields name the same value".to_owned());
            }
            let span = line.get(h.start..h.end).ok_or("internal: span")?;
            let unescaped;
            let value: &str = match h.kind {
                ValueKind::String { escaped: false } => {
                    std::str::from_utf8(span.get(1..span.len() - 1).unwrap_or_default())
                        .map_err(|_| "invalid UTF-8".to_owned())?
                }
                ValueKind::String { escaped: true } => {
                    unescaped = json::unescape(span.get(1..span.len() - 1).unwrap_or_default())
                        .ok_or_else(|| "invalid string escape".to_owned())?;
                    &unescaped
                }
                ValueKind::Number => {
                    std::str::from_utf8(span).map_err(|_| "invalid UTF-8".to_owned())?
                }
                ValueKind::Literal | ValueKind::Container => {
                    let p = self.paths.get(h.path).map_or("?", FieldPath::as_str);
                    return Err(format!("field {p} is not a string or number"));
                }
            };
            tok.clear();
            self.token_for(h.path, value, tok)?;
            out.extend_from_slice(line.get(pos..h.start).unwrap_or_default());
            out.push(b'"');
            // Tokens are ASCII letters, digits and '_': no JSON escaping needed.
            out.extend_from_slice(tok.as_bytes());
            out.push(b'"');
            pos = h.end;
        }
        out.extend_from_slice(line.get(pos..).unwrap_or_default());
        Ok(())
    }

    fn rewrite_csv(
        &self,
        chunk: &[u8],
        delimiter: u8,
        first_line: u64,
        out: &mut Vec<u8>,
        rejects: &mut Vec<Reject>,
    ) -> ChunkStats {
        let newlines = chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        let mut stats = ChunkStats {
            lines: newlines + u64::from(chunk.last().is_some_and(|&b| b != b'\n')),
            ..ChunkStats::default()
        };
        // The csv crate drops a byte order mark at the start of what a
        // reader reads, which would make a chunk read differently from the
        // same bytes inside the whole input (the splitter keeps it, as
        // field bytes). A blank line first, which the reader skips, means
        // no chunk starts its reader: line numbers count from 2.
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(false)
            .delimiter(delimiter)
            .flexible(true)
            .from_reader(std::io::Read::chain(&b"\n"[..], chunk));
        let mut wtr = csv::WriterBuilder::new()
            .delimiter(delimiter)
            .flexible(true)
            .from_writer(Vec::with_capacity(chunk.len() + chunk.len() / 2));
        let mut rec = csv::ByteRecord::new();
        let mut outrec = csv::ByteRecord::new();
        let mut tok = String::with_capacity(64);
        loop {
            if stats.rejected >= self.reject_limit {
                stats.stopped = true;
                break;
            }
            let line_no = first_line + rdr.position().line().saturating_sub(2);
            match rdr.read_byte_record(&mut rec) {
                Ok(false) => break,
                Err(e) => {
                    stats.rejected += 1;
                    rejects.push(Reject {
                        line: line_no,
                        reason: format!("unreadable CSV record: {}", csv_reason(&e)),
                    });
                    break;
                }
                Ok(true) => {}
            }
            let line_no = first_line
                + rec
                    .position()
                    .map_or(2, |p| record_line(chunk, p))
                    .saturating_sub(2);
            if rec.len() != self.width {
                stats.rejected += 1;
                rejects.push(Reject {
                    line: line_no,
                    reason: format!("expected {} columns, found {}", self.width, rec.len()),
                });
                continue;
            }
            outrec.clear();
            let mut failed = None;
            for (ci, col) in rec.iter().enumerate() {
                match self.columns.get(ci).copied().flatten() {
                    None => outrec.push_field(col),
                    Some(fi) => {
                        let r = std::str::from_utf8(col)
                            .map_err(|_| {
                                format!(
                                    "field {}: invalid UTF-8",
                                    self.fields.get(fi).map_or("?", |f| f.path.as_str())
                                )
                            })
                            .and_then(|v| {
                                tok.clear();
                                self.token_for(fi, v, &mut tok)
                            });
                        match r {
                            Ok(()) => outrec.push_field(tok.as_bytes()),
                            Err(reason) => {
                                failed = Some(reason);
                                break;
                            }
                        }
                    }
                }
            }
            match failed {
                Some(reason) => {
                    stats.rejected += 1;
                    rejects.push(Reject {
                        line: line_no,
                        reason,
                    });
                }
                None => match wtr.write_byte_record(&outrec) {
                    Ok(()) => stats.rewritten += 1,
                    Err(e) => {
                        stats.rejected += 1;
                        rejects.push(Reject {
                            line: line_no,
                            reason: format!("write failed: {}", csv_reason(&e)),
                        });
                    }
                },
            }
        }
        match wtr.into_inner() {
            Ok(v) => out.extend_from_slice(&v),
            Err(e) => rejects.push(Reject {
                line: first_line,
                reason: format!("write failed: {}", e.error()),
            }),
        }
        stats
    }
}

/// The line a CSV record starts on, counted by newlines in what the
/// rewriter's reader reads (`\n` then the chunk). The csv crate reports
/// where its reader began the record, before the blank lines it skipped
/// on the way; those are walked past here, so a record after a blank line
/// is reported on its own line, wherever the chunks were cut.
fn record_line(chunk: &[u8], pos: &csv::Position) -> u64 {
    let byte = |i: usize| match i {
        0 => Some(b'\n'),
        _ => chunk.get(i - 1).copied(),
    };
    let mut line = pos.line();
    let mut i = usize::try_from(pos.byte()).unwrap_or(usize::MAX);
    while let Some(b @ (b'\r' | b'\n')) = byte(i) {
        line += u64::from(b == b'\n');
        i += 1;
    }
    line
}

/// A CSV error's kind, without record contents.
fn csv_reason(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Io(io) => io.kind().to_string(),
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("expected {expected_len} columns, found {len}"),
        _ => "malformed record".into(),
    }
}

/// CSV lexer state, as csv-core reads it: a quote is special only at the
/// start of a field, and `""` inside a quoted field is a literal quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CsvState {
    FieldStart,
    Unquoted,
    Quoted,
    QuoteInQuoted,
    /// Just after a `\r` outside quotes, which ended a record: the
    /// terminator is `\r\n` if a `\n` follows, else the `\r` alone.
    AfterCr,
}

/// Where a record ended, relative to the byte just scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// After it (a `\n`).
    After,
    /// Before it (a lone `\r` was the terminator; this byte starts the
    /// next record).
    Before,
}

/// The UTF-8 byte order mark, which the csv crate drops at the start of
/// what a reader reads.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Finds record boundaries incrementally: each byte is scanned once, so a
/// long record arriving in small pieces costs linear, not quadratic, time.
///
/// CSV records end where the csv crate that parses each chunk ends them
/// (its default terminator: `\n`, `\r\n` or a lone `\r`, outside quotes):
/// a chunk cut anywhere else would be read differently from the whole, a
/// quoted field's rest as records of its own.
#[derive(Debug, Clone)]
pub struct Splitter {
    format: Format,
    state: CsvState,
    scanned: usize,
    first_end: Option<usize>,
    last_end: Option<usize>,
    /// The longest whole record found since the last consume.
    longest: usize,
}

impl Splitter {
    /// A splitter positioned at a record boundary.
    pub fn new(format: Format) -> Self {
        Self {
            format,
            state: CsvState::FieldStart,
            scanned: 0,
            first_end: None,
            last_end: None,
            longest: 0,
        }
    }

    /// Scans the bytes of `buf` not seen yet; returns the index just past
    /// the last record end found so far, if any.
    pub fn scan(&mut self, buf: &[u8]) -> Option<usize> {
        let start = self.scanned;
        let new = buf.get(start..).unwrap_or_default();
        match self.format {
            Format::JsonLines => {
                for i in memchr::memchr_iter(b'\n', new) {
                    self.ended(start + i + 1);
                }
            }
            Format::Csv { delimiter } => {
                for (i, &b) in new.iter().enumerate() {
                    let end = match self.csv_step(b, delimiter) {
                        Some(End::After) => start + i + 1,
                        Some(End::Before) => start + i,
                        None => continue,
                    };
                    self.ended(end);
                }
            }
        }
        self.scanned = buf.len();
        self.last_end
    }

    fn ended(&mut self, end: usize) {
        let len = end - self.last_end.unwrap_or(0);
        self.longest = self.longest.max(len);
        self.last_end = Some(end);
        self.first_end.get_or_insert(end);
    }

    /// The length of the longest whole record [`scan`] found since the
    /// splitter was made or last consumed, terminator included: a caller
    /// bounding records checks it, since one cut may hold many.
    ///
    /// [`scan`]: Splitter::scan
    pub fn longest_record(&self) -> usize {
        self.longest
    }

    /// The first record end [`scan`] found since the splitter was made or
    /// last consumed: with no end before it, the first record's length.
    ///
    /// [`scan`]: Splitter::scan
    pub fn first_end(&self) -> Option<usize> {
        self.first_end
    }

    /// Advances the CSV state by one byte; says whether a record ended
    /// there. A lone `\r` is known to have ended one only at the next byte.
    fn csv_step(&mut self, b: u8, delimiter: u8) -> Option<End> {
        if self.state == CsvState::AfterCr {
            self.state = CsvState::FieldStart;
            if b == b'\n' {
                return Some(End::After);
            }
            // This byte starts the next record (it is no `\n`, so it
            // ends nothing itself).
            let _ = self.csv_step(b, delimiter);
            return Some(End::Before);
        }
        let (next, ended) = match (self.state, b) {
            (CsvState::FieldStart, b'"') => (CsvState::Quoted, None),
            (CsvState::Quoted, b'"') => (CsvState::QuoteInQuoted, None),
            (CsvState::Quoted, _) => (CsvState::Quoted, None),
            (CsvState::QuoteInQuoted, b'"') => (CsvState::Quoted, None),
            (_, b'\n') => (CsvState::FieldStart, Some(End::After)),
            (_, b'\r') => (CsvState::AfterCr, None),
            (_, d) if d == delimiter => (CsvState::FieldStart, None),
            _ => (CsvState::Unquoted, None),
        };
        self.state = next;
        ended
    }

    /// Scans the bytes of `buf` not seen yet and returns the index just
    /// past the first record end among them, if any (for skipping one
    /// record).
    pub fn scan_first(&mut self, buf: &[u8]) -> Option<usize> {
        let start = self.scanned;
        let new = buf.get(start..).unwrap_or_default();
        let found =
            match self.format {
                Format::JsonLines => new.iter().position(|&b| b == b'\n').map(|i| start + i + 1),
                Format::Csv { delimiter } => new.iter().enumerate().find_map(|(i, &b)| match self
                    .csv_step(b, delimiter)?
                {
                    End::After => Some(start + i + 1),
                    End::Before => Some(start + i),
                }),
            };
        self.scanned = found.unwrap_or(buf.len());
        found
    }

    /// The caller removed the first `n` bytes (a record end from [`scan`]).
    ///
    /// [`scan`]: Splitter::scan
    pub fn consume(&mut self, n: usize) {
        self.scanned = self.scanned.saturating_sub(n);
        // `n` was the last record end seen: none remains in what is left.
        self.first_end = None;
        self.last_end = None;
        self.longest = 0;
    }
}

/// Where to cut `buf` so the first part holds only whole records: the
/// index just past the last record end, or `None` if there is none. CSV
/// terminators inside quoted fields do not end a record; `buf` must start
/// at a record boundary.
pub fn split_point(format: Format, buf: &[u8]) -> Option<usize> {
    Splitter::new(format).scan(buf)
}

/// Finds the end of the first CSV record (the header) incrementally, as
/// [`first_record_end`] does, each byte scanned once however the header
/// arrives.
#[derive(Debug, Clone)]
pub struct HeaderSplitter {
    delimiter: u8,
    inner: Option<Splitter>,
}

impl HeaderSplitter {
    /// A splitter at the start of a CSV file.
    pub fn new(delimiter: u8) -> Self {
        Self {
            delimiter,
            inner: None,
        }
    }

    /// The header's end in `buf` (the file's first bytes, growing between
    /// calls), or `None` while it may not hold all of it.
    pub fn scan(&mut self, buf: &[u8]) -> Option<usize> {
        if self.inner.is_none() {
            // Whether the file starts with a byte order mark is known only
            // once it holds three bytes or differs from one.
            if BOM.starts_with(buf) {
                return None;
            }
            let mut s = Splitter::new(Format::Csv {
                delimiter: self.delimiter,
            });
            s.scanned = if buf.starts_with(BOM) { BOM.len() } else { 0 };
            self.inner = Some(s);
        }
        self.inner.as_mut()?.scan_first(buf)
    }
}

/// End of the first CSV record (the header): just past its terminator,
/// `\n`, `\r\n` or a lone `\r`, as the csv crate reads it, after a byte
/// order mark at the start (which the csv crate drops there, so a quote
/// after it opens a field). `None` while `buf` may not hold the whole
/// terminator yet.
pub fn first_record_end(buf: &[u8], delimiter: u8) -> Option<usize> {
    HeaderSplitter::new(delimiter).scan(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::DomainKey;

    fn key() -> DomainKey {
        DomainKey::new("logs", 1, &[7; 32]).unwrap()
    }

    fn specs(s: &[&str]) -> Vec<FieldSpec> {
        s.iter().map(|f| FieldSpec::parse(f).unwrap()).collect()
    }

    const UK: NormalizeOptions = NormalizeOptions {
        default_country_code: Some(44),
    };

    /// A field named twice (even with different identifier types) is
    /// refused before any record is read: rewriting one value twice made
    /// an invalid JSON line (two tokens in a row).
    /// A field path or column name is at most 256 bytes, refused before
    /// any record is read and without being echoed: every refused record's
    /// reason names its field, so one long name made each reason as long
    /// (a 1 MiB path and 10,000 empty records: about 10 GiB of reasons).
    #[test]
    fn long_field_paths_are_refused_unechoed() {
        let k = key();
        let at_limit = "a".repeat(MAX_PATH_BYTES);
        let over = "a".repeat(MAX_PATH_BYTES + 1);
        assert!(FieldSpec::parse(&format!("{at_limit}=account")).is_ok());
        let e = FieldSpec::parse(&format!("{over}=account")).unwrap_err();
        assert_eq!(e, RewriteError::PathTooLong);
        assert!(e.to_string().len() < 100, "{e}");
        let e = FieldSpec::parse(&format!("a={}", "x".repeat(10_000))).unwrap_err();
        assert!(e.to_string().len() < 120, "{e}");
        let long = vec![FieldSpec {
            path: over.clone(),
            ty: IdentifierType::Account,
        }];
        assert_eq!(
            Rewriter::json_lines(long.clone(), UK, &k).unwrap_err(),
            RewriteError::PathTooLong
        );
        assert_eq!(
            Rewriter::csv(long, over.as_bytes(), b',', UK, &k).unwrap_err(),
            RewriteError::PathTooLong
        );
        let rw = Rewriter::json_lines(specs(&[&format!("{at_limit}=account")]), UK, &k).unwrap();
        let mut out = Vec::new();
        let mut rejects = Vec::new();
        rw.rewrite_chunk(b"{}\n", 1, &mut out, &mut rejects);
        assert_eq!(rejects.len(), 1);
    }

    #[test]
    fn a_field_named_twice_is_refused() {
        let k = key();
        for twice in [
            &["a=account", "a=account"][..],
            &["a=account", "b", "a=email"],
        ] {
            assert!(matches!(
                Rewriter::json_lines(specs(twice), UK, &k),
                Err(RewriteError::DuplicateField(f)) if f == "a"
            ));
            assert!(matches!(
                Rewriter::csv(specs(twice), b"a,b", b',', UK, &k),
                Err(RewriteError::DuplicateField(f)) if f == "a"
            ));
        }
        let rw = Rewriter::json_lines(specs(&["a=account", "b"]), UK, &k).unwrap();
        let mut out = Vec::new();
        let mut rejects = Vec::new();
        rw.rewrite_chunk(b"{\"a\":\"x\",\"b\":\"y\"}\n", 1, &mut out, &mut rejects);
        assert!(rejects.is_empty(), "{rejects:?}");
        let line: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert!(line["a"].as_str().is_some_and(|t| t.starts_with("tk_")));
    }

    #[test]
    fn json_lines_rewrite_and_rejects() {
        let k = key();
        let rw = Rewriter::json_lines(specs(&["user.msisdn", "account_id"]), UK, &k).unwrap();
        let input = concat!(
            "{\"ts\":1,\"user\":{\"msisdn\":\"07700 900123\",\"plan\":\"x\"},\"account_id\":\"A-1\"}\n",
            "{\"ts\":2,\"user\":{\"msisdn\":\"+447700900123\"},\"account_id\":\"A-1\"}\r\n",
            "\n",
            "{\"ts\":3,\"user\":{\"msisdn\":\"+447700900123\"}}\n",
            "{\"ts\":4,\"user\":{\"msisdn\":\"+447700900123\"},\"account_id\":\"A-1\"\n",
            "{\"ts\":5,\"user\":{\"msisdn\":\"\u{fffd}\"},\"account_id\":\"A-1\"}\n",
        );
        let mut bytes = input.as_bytes().to_vec();
        // Line 6: invalid UTF-8 inside the value.
        let p = bytes
            .windows(3)
            .rposition(|w| w == "\u{fffd}".as_bytes())
            .unwrap();
        bytes.splice(p..p + 3, [0xff, 0xfe]);
        bytes.extend_from_slice(b"{\"ts\":7,\"user\":{\"msisdn\":null},\"account_id\":\"A-1\"}\n");
        let mut out = Vec::new();
        let mut rejects = Vec::new();
        let stats = rw.rewrite_chunk(&bytes, 1, &mut out, &mut rejects);
        assert_eq!(
            stats,
            ChunkStats {
                rewritten: 2,
                rejected: 4,
                blank: 1,
                lines: 7,
                stopped: false,
            }
        );
        let out = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        let t_msisdn = k.token(IdentifierType::Msisdn, "+447700900123");
        let t_acct = k.token(IdentifierType::Account, "A-1");
        assert_eq!(
            lines[0],
            format!(
                "{{\"ts\":1,\"user\":{{\"msisdn\":\"{t_msisdn}\",\"plan\":\"x\"}},\"account_id\":\"{t_acct}\"}}"
            )
        );
        assert_eq!(
            lines[1],
            format!(
                "{{\"ts\":2,\"user\":{{\"msisdn\":\"{t_msisdn}\"}},\"account_id\":\"{t_acct}\"}}"
            )
        );
        let got: Vec<(u64, &str)> = rejects
            .iter()
            .map(|r| (r.line, r.reason.as_str()))
            .collect();
        assert_eq!(got[0], (4, "missing field account_id"));
        assert_eq!(got[1].0, 5);
        assert!(got[1].1.starts_with("malformed JSON"), "{}", got[1].1);
        assert_eq!(got[2], (6, "invalid UTF-8"));
        assert_eq!(got[3], (7, "field user.msisdn is not a string or number"));
        assert!(!out.contains("7700"), "no identifier survives");
    }

    #[test]
    fn csv_rewrite_and_rejects() {
        let k = key();
        let header = b"ts,msisdn,note,account_id\n";
        let rw = Rewriter::csv(specs(&["msisdn", "account_id"]), header, b',', UK, &k).unwrap();
        let body = b"1,+44 7700 900123,\"hello, world\",A-1\n2,+447700900123,x\n3,+447700900123,\"multi\nline\",A-2\n4,not-a-phone,x,A-3\n";
        let mut out = Vec::new();
        let mut rejects = Vec::new();
        let stats = rw.rewrite_chunk(body, 2, &mut out, &mut rejects);
        assert_eq!((stats.rewritten, stats.rejected, stats.lines), (2, 2, 5));
        let out = String::from_utf8(out).unwrap();
        let t = k.token(IdentifierType::Msisdn, "+447700900123");
        assert!(
            out.starts_with(&format!(
                "1,{t},\"hello, world\",{}\n",
                k.token(IdentifierType::Account, "A-1")
            )),
            "{out}"
        );
        assert!(out.contains("\"multi\nline\""));
        assert_eq!(
            rejects[0],
            Reject {
                line: 3,
                reason: "expected 4 columns, found 3".into()
            }
        );
        assert_eq!(
            rejects[1],
            Reject {
                line: 6,
                reason: "field msisdn: msisdn is not an E.164 number".into()
            }
        );
        assert!(matches!(
            Rewriter::csv(specs(&["phone"]), header, b',', UK, &k),
            Err(RewriteError::MissingColumn(_))
        ));
    }

    #[test]
    fn reject_limit_stops_a_chunk() {
        let k = key();
        let bad = b"x\n".repeat(1000);
        let rw = Rewriter::json_lines(specs(&["user.msisdn"]), UK, &k)
            .unwrap()
            .with_reject_limit(10);
        let (mut out, mut rejects) = (Vec::new(), Vec::new());
        let stats = rw.rewrite_chunk(&bad, 1, &mut out, &mut rejects);
        assert_eq!(
            (rejects.len(), stats.rejected, stats.stopped),
            (10, 10, true)
        );
        // Exactly at the limit with nothing left: not stopped.
        let (mut out, mut rejects) = (Vec::new(), Vec::new());
        let stats = rw.rewrite_chunk(&bad[..20], 1, &mut out, &mut rejects);
        assert_eq!((rejects.len(), stats.stopped), (10, false));

        let rw = Rewriter::csv(specs(&["msisdn"]), b"ts,msisdn", b',', UK, &k)
            .unwrap()
            .with_reject_limit(5);
        let body = b"1,not-a-phone\n".repeat(100);
        let (mut out, mut rejects) = (Vec::new(), Vec::new());
        let stats = rw.rewrite_chunk(&body, 2, &mut out, &mut rejects);
        assert_eq!((rejects.len(), stats.stopped), (5, true));
    }

    fn scan_first(format: Format, buf: &[u8]) -> Option<usize> {
        Splitter::new(format).scan_first(buf)
    }

    /// Delimiters the record lexer cannot follow, and headers holding more
    /// than one record, are refused rather than misread.
    #[test]
    fn csv_settings_that_would_misread_are_refused() {
        let k = key();
        for d in [b'"', b'\r', b'\n'] {
            assert!(matches!(
                Rewriter::csv(specs(&["a"]), b"a,b", d, UK, &k),
                Err(RewriteError::BadDelimiter)
            ));
        }
        for header in [&b"a,b\nc,d\n"[..], b"a,b\rc,d", b"a,b\r\n\r\nc"] {
            assert!(
                matches!(
                    Rewriter::csv(specs(&["a"]), header, b',', UK, &k),
                    Err(RewriteError::BadHeader(_))
                ),
                "{header:?}"
            );
        }
        assert!(Rewriter::csv(specs(&["a"]), b"a,b\r\n", b',', UK, &k).is_ok());
        assert!(Rewriter::csv(specs(&["a"]), b"a;b", b';', UK, &k).is_ok());
    }

    /// A header is at most `MAX_CSV_HEADER_BYTES` long and names at most
    /// `MAX_CSV_COLUMNS` columns; a field's name may repeat across all of
    /// them, and every repeat is rewritten.
    #[test]
    fn csv_headers_are_bounded_and_repeated_columns_all_rewritten() {
        let k = key();
        let wide = vec!["a"; MAX_CSV_COLUMNS + 1].join(",");
        assert!(matches!(
            Rewriter::csv(specs(&["a"]), wide.as_bytes(), b',', UK, &k),
            Err(RewriteError::BadHeader(m)) if m.contains("columns")
        ));
        let long = format!("a,{}", "b".repeat(MAX_CSV_HEADER_BYTES));
        assert!(matches!(
            Rewriter::csv(specs(&["a"]), long.as_bytes(), b',', UK, &k),
            Err(RewriteError::BadHeader(m)) if m.contains("bytes")
        ));
        // The widest header, one field's name in every column but the
        // last: each of those values becomes the field's token.
        let mut names = vec!["acct"; MAX_CSV_COLUMNS - 1];
        names.push("note");
        let rw = Rewriter::csv(
            specs(&["acct=account"]),
            names.join(",").as_bytes(),
            b',',
            UK,
            &k,
        )
        .unwrap();
        let mut values = vec!["A-1"; MAX_CSV_COLUMNS - 1];
        values.push("kept");
        let body = format!("{}\n", values.join(","));
        let (mut out, mut rejects) = (Vec::new(), Vec::new());
        let stats = rw.rewrite_chunk(body.as_bytes(), 2, &mut out, &mut rejects);
        assert_eq!((stats.rewritten, stats.rejected), (1, 0), "{rejects:?}");
        let t = k.token(IdentifierType::Account, "A-1");
        let mut want = vec![t.as_str(); MAX_CSV_COLUMNS - 1];
        want.push("kept");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{}\n", want.join(","))
        );
    }

    #[test]
    fn split_points() {
        assert_eq!(split_point(Format::JsonLines, b"{}\n{}\n{"), Some(6));
        assert_eq!(split_point(Format::JsonLines, b"{"), None);
        let csv = Format::Csv { delimiter: b',' };
        assert_eq!(split_point(csv, b"a,\"x\ny\"\nb,c"), Some(8));
        assert_eq!(split_point(csv, b"a,\"x\ny"), None);
        assert_eq!(first_record_end(b"h1,\"h\n2\"\nrow", b','), Some(9));
        // A quote inside an unquoted field is a literal: it opens nothing.
        assert_eq!(split_point(csv, b"7,27\" monitor,x\n8,y\n9"), Some(20));
        assert_eq!(
            split_point(csv, b"a,\"say \"\"hi\"\"\nthere\",b\nc"),
            Some(23)
        );
        // A lone carriage return ends a record, so a quote after it opens
        // a quoted field whose newline ends nothing (the csv crate reads
        // `a,b` and then a record whose field holds `x\ny...`).
        assert_eq!(split_point(csv, b"a,b\r\"x\ny"), Some(4));
        assert_eq!(split_point(csv, b"a,b\r\n\"x\ny"), Some(5));
        // A file whose records end in lone `\r`s is cut at them, once the
        // next byte shows no `\n` follows.
        assert_eq!(split_point(csv, b"a,b\rc,d\re"), Some(8));
        assert_eq!(split_point(csv, b"a,b\rc,d\r"), Some(4));
        assert_eq!(split_point(csv, b"a,\"b\rc\"\r"), None);
        // The first record's end is found whatever the terminator.
        assert_eq!(scan_first(csv, b"a,\"x\ny\"\nb\n"), Some(8));
        assert_eq!(scan_first(Format::JsonLines, b"{}\n{}\n"), Some(3));
        // Incremental scanning gives the same answer as one pass.
        let data = b"a,\"x\ny\"\nb,c\nd,\"e";
        let mut sp = Splitter::new(csv);
        let mut last = None;
        for n in 1..=data.len() {
            last = sp.scan(&data[..n]);
        }
        assert_eq!(last, split_point(csv, data));
    }

    #[test]
    fn field_specs() {
        assert_eq!(
            FieldSpec::parse("user.msisdn").unwrap().ty,
            IdentifierType::Msisdn
        );
        assert_eq!(
            FieldSpec::parse("x=email").unwrap(),
            FieldSpec {
                path: "x".into(),
                ty: IdentifierType::Email
            }
        );
        assert!(FieldSpec::parse("x=phone").is_err());
    }
}
