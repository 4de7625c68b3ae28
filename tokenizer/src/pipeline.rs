//! The `idvault tokenize` pipeline: streams records through a
//! [`Rewriter`] on every core, in constant memory, keeping input order.
//! It reads and writes only the handles it is given; it opens nothing.
//!
//! ```text
//! reader thread ──chunks (≤ chunk_bytes, whole records)──▶ N workers ──▶ writer (this thread, reorders)
//! ```
//! At most `2 × threads` chunks are in flight, so memory stays bounded by
//! about `4 × threads × chunk_bytes` whatever the input size. A record
//! longer than [`MAX_RECORD_BYTES`] is rejected and skipped, never buffered
//! whole.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use crate::rewrite::{Format, Reject, Rewriter, Splitter};

/// Longest record accepted.
pub const MAX_RECORD_BYTES: usize = 8 * 1024 * 1024;

/// Pipeline settings.
#[derive(Debug, Clone, Copy)]
pub struct PipelineOptions {
    /// Worker threads.
    pub threads: usize,
    /// Target chunk size in bytes.
    pub chunk_bytes: usize,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
            chunk_bytes: 1 << 20,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Records written with tokens.
    pub rewritten: u64,
    /// Records sent to the reject file.
    pub rejected: u64,
    /// Blank lines skipped.
    pub blank: u64,
    /// Input bytes read.
    pub bytes: u64,
}

struct Chunk {
    seq: u64,
    first_line: u64,
    data: Vec<u8>,
    /// Records rejected by the reader itself (over-long), reported in order.
    rejects: Vec<Reject>,
}

struct Done {
    seq: u64,
    out: Vec<u8>,
    rejects: Vec<Reject>,
    stats: crate::rewrite::ChunkStats,
    bytes: u64,
}

/// Writes one reject as a JSON line: `{"line":N,"reason":"…"}`. Reasons
/// name fields and problems, never values, so the file holds no PII.
pub fn write_reject(w: &mut dyn Write, r: &Reject) -> io::Result<()> {
    let reason = serde_json::to_string(&r.reason).map_err(io::Error::other)?;
    writeln!(w, "{{\"line\":{},\"reason\":{reason}}}", r.line)
}

/// Prefixes each reject line written through it with `"file":NAME`.
pub struct FileTagged<'w> {
    inner: &'w mut dyn Write,
    prefix: Vec<u8>,
    at_line_start: bool,
}

impl<'w> FileTagged<'w> {
    /// Tags rejects with `file`.
    pub fn new(inner: &'w mut dyn Write, file: &str) -> io::Result<Self> {
        let name = serde_json::to_string(file).map_err(io::Error::other)?;
        Ok(Self {
            inner,
            prefix: format!("{{\"file\":{name},").into_bytes(),
            at_line_start: true,
        })
    }
}

impl std::fmt::Debug for FileTagged<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileTagged")
    }
}

impl Write for FileTagged<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Each reject is written whole by `write_reject`: `{` starts a line.
        for line in buf.split_inclusive(|&b| b == b'\n') {
            if self.at_line_start {
                match line.strip_prefix(b"{") {
                    Some(rest) => {
                        self.inner.write_all(&self.prefix)?;
                        self.inner.write_all(rest)?;
                    }
                    None => self.inner.write_all(line)?,
                }
            } else {
                self.inner.write_all(line)?;
            }
            self.at_line_start = line.ends_with(b"\n");
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn read_some(input: &mut dyn Read, buf: &mut Vec<u8>, want: usize) -> io::Result<usize> {
    let start = buf.len();
    buf.resize(start + want, 0);
    let n = loop {
        match input.read(buf.get_mut(start..).unwrap_or_default()) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                buf.truncate(start);
                return Err(e);
            }
        }
    };
    buf.truncate(start + n);
    Ok(n)
}

/// Reads the CSV header row from `input`; returns `(header, rest)` where
/// `rest` holds bytes read past the header.
pub fn read_csv_header(input: &mut dyn Read, delimiter: u8) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut header = crate::rewrite::HeaderSplitter::new(delimiter);
    loop {
        if let Some(end) = header.scan(&buf) {
            let rest = buf.split_off(end);
            return Ok((buf, rest));
        }
        // The rewriter refuses a longer header anyway: stop reading there.
        if buf.len() > crate::rewrite::MAX_CSV_HEADER_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "CSV header row longer than {} bytes",
                    crate::rewrite::MAX_CSV_HEADER_BYTES
                ),
            ));
        }
        if read_some(input, &mut buf, 64 * 1024)? == 0 {
            let rest = Vec::new();
            return Ok((buf, rest));
        }
    }
}

/// Runs the pipeline. `pending` holds bytes already read from `input`
/// (after a CSV header); `first_line` numbers its first line. `progress` is
/// called after each chunk is written.
#[allow(
    clippy::too_many_arguments,
    reason = "the stream's parts are independent inputs; a struct would only rename them"
)]
pub fn run(
    rewriter: &Rewriter<'_>,
    input: &mut (dyn Read + Send),
    pending: Vec<u8>,
    first_line: u64,
    output: &mut dyn Write,
    rejects: &mut dyn Write,
    opts: PipelineOptions,
    progress: &mut dyn FnMut(&Summary),
) -> io::Result<Summary> {
    let threads = opts.threads.max(1);
    let chunk_bytes = opts.chunk_bytes.max(4096);
    let format = rewriter.format();
    let (chunk_tx, chunk_rx) = crossbeam_channel::bounded::<Chunk>(threads * 2);
    let (done_tx, done_rx) = crossbeam_channel::bounded::<Done>(threads * 2);
    std::thread::scope(|s| {
        let reader = s
            .spawn(move || read_chunks(input, pending, first_line, format, chunk_bytes, &chunk_tx));
        for _ in 0..threads {
            let rx = chunk_rx.clone();
            let tx = done_tx.clone();
            s.spawn(move || {
                for c in rx {
                    let mut out = Vec::with_capacity(c.data.len() + c.data.len() / 2);
                    let mut rejects = c.rejects;
                    let stats =
                        rewriter.rewrite_chunk(&c.data, c.first_line, &mut out, &mut rejects);
                    rejects.sort_by_key(|r| r.line);
                    let done = Done {
                        seq: c.seq,
                        out,
                        rejects,
                        stats,
                        bytes: c.data.len() as u64,
                    };
                    if tx.send(done).is_err() {
                        break;
                    }
                }
            });
        }
        drop(chunk_rx);
        drop(done_tx);
        let mut summary = Summary::default();
        let mut next = 0u64;
        let mut waiting: BTreeMap<u64, Done> = BTreeMap::new();
        let mut write_err = None;
        for d in &done_rx {
            waiting.insert(d.seq, d);
            while let Some(d) = waiting.remove(&next) {
                next += 1;
                if write_err.is_none() {
                    let r = output
                        .write_all(&d.out)
                        .and_then(|()| d.rejects.iter().try_for_each(|r| write_reject(rejects, r)));
                    if let Err(e) = r {
                        write_err = Some(e);
                    }
                }
                summary.rewritten += d.stats.rewritten;
                summary.rejected += d.rejects.len() as u64;
                summary.blank += d.stats.blank;
                summary.bytes += d.bytes;
                progress(&summary);
            }
            if write_err.is_some() {
                // Stop the workers and reader: dropping the receiver ends them.
                break;
            }
        }
        drop(done_rx);
        let read_result = reader
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("reader thread panicked")));
        if let Some(e) = write_err {
            return Err(e);
        }
        read_result?;
        output.flush()?;
        rejects.flush()?;
        Ok(summary)
    })
}

fn read_chunks(
    input: &mut (dyn Read + Send),
    mut buf: Vec<u8>,
    mut line: u64,
    format: Format,
    chunk_bytes: usize,
    tx: &crossbeam_channel::Sender<Chunk>,
) -> io::Result<()> {
    let mut seq = 0u64;
    let mut eof = false;
    let mut splitter = Splitter::new(format);
    loop {
        while !eof && buf.len() < chunk_bytes {
            let want = chunk_bytes - buf.len() + 4096;
            if read_some(input, &mut buf, want)? == 0 {
                eof = true;
            }
        }
        if buf.is_empty() && eof {
            return Ok(());
        }
        // Scanned once, however many reads a long record takes. Over long:
        // the first record's end, if found, is past the limit (found by
        // scanning one byte past it, where a lone `\r` is known to end one).
        let last_end = splitter.scan(&buf);
        let over_long = buf.len() > MAX_RECORD_BYTES
            && splitter.first_end().is_none_or(|e| e > MAX_RECORD_BYTES);
        if over_long {
            // Reject the record and skip to the newline that ends it, as
            // the splitter sees it: a newline inside a quoted CSV field
            // does not, or the field's rest would be read as records.
            let reject = Reject {
                line,
                reason: format!("record longer than {MAX_RECORD_BYTES} bytes"),
            };
            let mut skip = Splitter::new(format);
            let mut newlines = 0u64;
            loop {
                if let Some(end) = skip.scan_first(&buf) {
                    newlines += count_newlines(buf.get(..end).unwrap_or_default());
                    buf.drain(..end);
                    break;
                }
                newlines += count_newlines(&buf);
                skip.consume(buf.len());
                buf.clear();
                if read_some(input, &mut buf, 64 * 1024)? == 0 {
                    eof = true;
                    break;
                }
            }
            send(
                tx,
                Chunk {
                    seq,
                    first_line: line,
                    data: Vec::new(),
                    rejects: vec![reject],
                },
            )?;
            seq += 1;
            line += newlines;
            // What is left starts at a record boundary, not scanned yet.
            splitter = Splitter::new(format);
            continue;
        }
        let cut = if eof {
            buf.len()
        } else if let Some(c) = last_end {
            c
        } else {
            // One record longer than a chunk: read on until it ends.
            if read_some(input, &mut buf, 64 * 1024)? == 0 {
                eof = true;
            }
            continue;
        };
        let rest = buf.split_off(cut);
        let data = std::mem::replace(&mut buf, rest);
        splitter.consume(cut);
        // Lines as the csv crate and the JSON rewriter number them: by
        // newlines (a chunk may end at a lone `\r`, still on its line).
        let lines = count_newlines(&data);
        send(
            tx,
            Chunk {
                seq,
                first_line: line,
                data,
                rejects: Vec::new(),
            },
        )?;
        seq += 1;
        line += lines;
    }
}

fn count_newlines(b: &[u8]) -> u64 {
    b.iter().filter(|&&c| c == b'\n').count() as u64
}

fn send(tx: &crossbeam_channel::Sender<Chunk>, c: Chunk) -> io::Result<()> {
    tx.send(c)
        .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "pipeline stopped"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::FieldSpec;
    use crate::{DomainKey, IdentifierType, NormalizeOptions};

    fn run_str(
        rw: &Rewriter<'_>,
        input: &[u8],
        pending: Vec<u8>,
        first: u64,
        opts: PipelineOptions,
    ) -> (Summary, String, String) {
        let mut out = Vec::new();
        let mut rej = Vec::new();
        let mut src = input;
        let s = run(
            rw,
            &mut src,
            pending,
            first,
            &mut out,
            &mut rej,
            opts,
            &mut |_| {},
        )
        .unwrap();
        (
            s,
            String::from_utf8(out).unwrap(),
            String::from_utf8(rej).unwrap(),
        )
    }

    #[test]
    fn keeps_order_across_threads_and_small_chunks() {
        let key = DomainKey::new("logs", 1, &[1; 32]).unwrap();
        let fields = vec![FieldSpec::parse("id=account").unwrap()];
        let rw = Rewriter::json_lines(fields, NormalizeOptions::default(), &key).unwrap();
        let mut input = String::new();
        for i in 0..5000 {
            if i % 997 == 0 {
                input.push_str("{broken\n");
            } else {
                input.push_str(&format!("{{\"n\":{i},\"id\":\"A{i}\"}}\n"));
            }
        }
        input.push_str("{\"n\":5000,\"id\":\"last-without-newline\"}");
        let opts = PipelineOptions {
            threads: 4,
            chunk_bytes: 4096,
        };
        let (s, out, rej) = run_str(&rw, input.as_bytes(), Vec::new(), 1, opts);
        assert_eq!(s.rewritten, 4995);
        assert_eq!(s.rejected, 6);
        let ns: Vec<u64> = out
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["n"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(ns, sorted, "input order is kept");
        assert!(out.lines().all(|l| l.contains("tk_logs_v1_")));
        let lines: Vec<u64> = rej
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["line"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(lines, vec![1, 998, 1995, 2992, 3989, 4986]);
        assert_eq!(
            out.lines().last().unwrap(),
            format!(
                "{{\"n\":5000,\"id\":\"{}\"}}",
                key.token(IdentifierType::Account, "last-without-newline")
            )
        );
    }

    #[test]
    fn over_long_record_is_rejected_and_skipped() {
        let key = DomainKey::new("logs", 1, &[1; 32]).unwrap();
        let rw = Rewriter::json_lines(
            vec![FieldSpec::parse("id=account").unwrap()],
            NormalizeOptions::default(),
            &key,
        )
        .unwrap();
        let mut input = b"{\"id\":\"a\"}\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_RECORD_BYTES + 10));
        input.extend_from_slice(b"\n{\"id\":\"b\"}\n");
        let (s, out, rej) = run_str(&rw, &input, Vec::new(), 1, SMALL_CHUNKS);
        assert_eq!((s.rewritten, s.rejected), (2, 1));
        assert_eq!(out.lines().count(), 2);
        assert!(
            rej.starts_with("{\"line\":2,\"reason\":\"record longer than"),
            "{rej}"
        );
    }

    /// Two workers, 64 KiB chunks: many chunks from a few MiB.
    const SMALL_CHUNKS: PipelineOptions = PipelineOptions {
        threads: 2,
        chunk_bytes: 1 << 16,
    };

    /// A CSV rewriter of `header` tokenizing its `id` column as accounts.
    fn account_rewriter<'k>(key: &'k DomainKey, header: &[u8]) -> Rewriter<'k> {
        Rewriter::csv(
            vec![FieldSpec::parse("id=account").unwrap()],
            header,
            b',',
            NormalizeOptions::default(),
            key,
        )
        .unwrap()
    }

    /// An over-long CSV record whose quoted field holds newlines is
    /// skipped whole: the field's rest is not read as records.
    #[test]
    fn over_long_quoted_csv_record_is_skipped_whole() {
        let key = DomainKey::new("logs", 1, &[1; 32]).unwrap();
        let rw = account_rewriter(&key, b"id,note");
        let mut input = b"a,x\nb,\"".to_vec();
        for _ in 0..(MAX_RECORD_BYTES / 64 + 1) {
            input.extend_from_slice(b"inner,line\n");
            input.extend(std::iter::repeat_n(b'y', 53));
        }
        input.extend_from_slice(b"\"\nc,z\n");
        let (s, out, rej) = run_str(&rw, &input, Vec::new(), 2, SMALL_CHUNKS);
        assert_eq!((s.rewritten, s.rejected), (2, 1), "{rej}");
        let rows: Vec<&str> = out.lines().collect();
        assert_eq!(
            rows,
            [
                format!("{},x", key.token(IdentifierType::Account, "a")),
                format!("{},z", key.token(IdentifierType::Account, "c")),
            ]
        );
        assert!(
            rej.starts_with("{\"line\":3,\"reason\":\"record longer than"),
            "{rej}"
        );
    }

    /// A file whose records end in lone `\r`s is cut into chunks at them
    /// (not read as one over-long record), and reads as it does whole;
    /// a byte order mark inside the body is data wherever the chunks are
    /// cut (the csv crate drops one only at the start of what it reads),
    /// so a quote after it opens nothing.
    #[test]
    fn lone_carriage_returns_and_byte_order_marks_read_the_same_in_chunks() {
        let key = DomainKey::new("logs", 1, &[1; 32]).unwrap();
        let rw = account_rewriter(&key, b"note,id");
        let mut body = Vec::new();
        for i in 0..5000 {
            body.extend_from_slice(format!("n{i},A{i}\r").as_bytes());
        }
        body.extend_from_slice(b"\xEF\xBB\xBF\"hello\nbob@example.com,z\",c\n");
        body.extend_from_slice(b"\n\nlast,Z\n");
        let run = |chunk_bytes| {
            run_str(
                &rw,
                &body,
                Vec::new(),
                2,
                PipelineOptions {
                    threads: 2,
                    chunk_bytes,
                },
            )
        };
        let (whole, out, rej) = run(1 << 24);
        let (small, out_small, rej_small) = run(4096);
        assert_eq!((whole.rewritten, whole.rejected), (5001, 2), "{rej}");
        assert_eq!((out_small, rej_small), (out.clone(), rej.clone()));
        assert_eq!(small.rewritten, 5001);
        // The quote after the mark opened nothing: the address stayed in
        // a record that was refused, not in a note column written out.
        assert!(!out.contains("bob@example.com"), "{out}");
        assert!(
            rej.contains("\"line\":2,") && rej.contains("\"line\":3,"),
            "{rej}"
        );
        assert!(out.ends_with(&format!(
            "last,{}\n",
            key.token(IdentifierType::Account, "Z")
        )));
    }

    /// An over-long record ended by a lone `\r` is skipped to there, and
    /// the lines after it keep their numbers (counted by newlines); a
    /// record of exactly the limit, ended by a lone `\r`, is not over long.
    #[test]
    fn over_long_record_ended_by_a_lone_carriage_return() {
        let key = DomainKey::new("logs", 1, &[1; 32]).unwrap();
        let rw = account_rewriter(&key, b"id,note");
        let opts = SMALL_CHUNKS;
        let mut input = b"a,x\rb,".to_vec();
        input.extend(std::iter::repeat_n(b'y', MAX_RECORD_BYTES));
        input.extend_from_slice(b"\rc\rd,z\n");
        let (s, out, rej) = run_str(&rw, &input, Vec::new(), 2, opts);
        assert_eq!((s.rewritten, s.rejected), (2, 2), "{rej}");
        assert_eq!(out.lines().count(), 2);
        // The over-long record and `c` (one column) are both on line 2.
        assert!(
            rej.starts_with("{\"line\":2,\"reason\":\"record longer than")
                && rej.contains("{\"line\":2,\"reason\":\"expected 2 columns"),
            "{rej}"
        );
        let mut exact = b"b,".to_vec();
        exact.extend(std::iter::repeat_n(b'y', MAX_RECORD_BYTES - 3));
        exact.extend_from_slice(b"\rd,z\n");
        assert_eq!(
            exact.iter().position(|&b| b == b'\r'),
            Some(MAX_RECORD_BYTES - 1)
        );
        let (s, _, rej) = run_str(&rw, &exact, Vec::new(), 2, opts);
        assert_eq!((s.rewritten, s.rejected), (2, 0), "{rej}");
    }

    /// A header row ended by `\r\n` or a lone `\r` (as the csv crate reads
    /// it) is cut there: the next record is data, not part of the header.
    #[test]
    fn csv_header_ends_at_any_terminator() {
        for (data, header, rest) in [
            (&b"h1,h2\r\n1,2\r\n"[..], &b"h1,h2\r\n"[..], &b"1,2\r\n"[..]),
            (b"h1,h2\r1,2\r", b"h1,h2\r", b"1,2\r"),
            (b"\"h\r1\",h2\r1,2", b"\"h\r1\",h2\r", b"1,2"),
            (b"h1,h2", b"h1,h2", b""),
            // A byte order mark at the start is dropped by the csv crate,
            // so the quote after it opens a field.
            (
                b"\xEF\xBB\xBF\"h\n1\",h2\n1,2",
                b"\xEF\xBB\xBF\"h\n1\",h2\n",
                b"1,2",
            ),
        ] {
            let mut src = data;
            let (h, r) = read_csv_header(&mut src, b',').unwrap();
            assert_eq!((&h[..], &r[..]), (header, rest));
        }
    }

    #[test]
    fn csv_header_then_body() {
        let key = DomainKey::new("logs", 1, &[1; 32]).unwrap();
        let data = b"a,msisdn\n1,+447700900123\n2,\"+44 7700\n900123\"\n3\n";
        let mut src: &[u8] = data;
        let (header, rest) = read_csv_header(&mut src, b',').unwrap();
        assert_eq!(header, b"a,msisdn\n");
        let rw = Rewriter::csv(
            vec![FieldSpec::parse("msisdn").unwrap()],
            &header,
            b',',
            NormalizeOptions::default(),
            &key,
        )
        .unwrap();
        let (s, out, rej) = run_str(
            &rw,
            src,
            rest,
            2,
            PipelineOptions {
                threads: 2,
                chunk_bytes: 4096,
            },
        );
        assert_eq!((s.rewritten, s.rejected), (1, 2));
        assert!(out.starts_with("1,tk_logs_v1_"));
        assert!(
            rej.contains("\"line\":3") && rej.contains("\"line\":5"),
            "{rej}"
        );
    }

    #[test]
    fn file_tagging() {
        let mut buf = Vec::new();
        {
            let mut t = FileTagged::new(&mut buf, "a.jsonl").unwrap();
            write_reject(
                &mut t,
                &Reject {
                    line: 3,
                    reason: "x".into(),
                },
            )
            .unwrap();
        }
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "{\"file\":\"a.jsonl\",\"line\":3,\"reason\":\"x\"}\n"
        );
    }
}
