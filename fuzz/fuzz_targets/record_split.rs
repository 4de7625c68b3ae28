//! Record boundaries in usage logs: where `idvault tokenize` and the
//! TokenizeLog stream cut CSV input into chunks that are then parsed
//! apart (`Splitter::scan`, `Splitter::scan_first`, `first_record_end`,
//! `read_csv_header`). A differential check against the csv crate:
//! cutting wherever the splitter says, with the bytes arriving in pieces
//! of any size, must read exactly the records one pass over the whole
//! input reads, and the rewriter must write the same bytes and the same
//! rejects (line numbers included) for the chunks as for the whole.
//! Otherwise a quoted field's rest would be read as records of its own,
//! and what a stream yields would depend on how its client happened to
//! split its messages.
#![no_main]
use std::io::Read;

use idvault_tokenizer::pipeline::read_csv_header;
use idvault_tokenizer::rewrite::{FieldSpec, Format, Rewriter, Splitter, first_record_end};
use idvault_tokenizer::{DomainKey, NormalizeOptions};
use libfuzzer_sys::fuzz_target;

type Records = Vec<Vec<Vec<u8>>>;

/// Every record of `data` read as a file (a byte order mark at its start
/// is dropped).
fn records(data: &[u8], delimiter: u8) -> Records {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter)
        .from_reader(data);
    let mut rec = csv::ByteRecord::new();
    let mut out = Vec::new();
    // Byte records from a slice have no error to give.
    while rdr
        .read_byte_record(&mut rec)
        .expect("reading a byte record")
    {
        out.push(rec.iter().map(<[u8]>::to_vec).collect());
    }
    out
}

/// Every record of `data` read as a body after a header: the same bytes
/// inside a file, where a byte order mark is data.
fn body_records(data: &[u8], delimiter: u8) -> Records {
    records(&[b"\n", data].concat(), delimiter)
}

/// A rewriter of a two-column CSV tokenizing the first column, refusing
/// no record for want of room.
fn rewriter(delimiter: u8) -> Rewriter<'static> {
    static KEY: std::sync::OnceLock<DomainKey> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| DomainKey::new("logs", 1, &[7; 32]).expect("key"));
    Rewriter::csv(
        vec![FieldSpec::parse("a=account").expect("spec")],
        &[b'a', delimiter, b'b'],
        delimiter,
        NormalizeOptions::default(),
        key,
    )
    .expect("rewriter")
    .with_reject_limit(u64::MAX)
}

/// Hands out at most `piece` bytes per read.
struct Trickle<'a> {
    data: &'a [u8],
    piece: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.piece.min(buf.len()).min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        buf[..n].copy_from_slice(head);
        self.data = rest;
        Ok(n)
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&ctl, data)) = input.split_first() else {
        return;
    };
    check(ctl, data);
    // A byte order mark, which the csv crate treats apart at the start of
    // what a reader reads, is too long for the fuzzer to guess: each zero
    // byte stands for one here.
    if data.contains(&0) {
        let mut with_bom = Vec::with_capacity(data.len() + 16);
        for &b in data {
            match b {
                0 => with_bom.extend_from_slice(b"\xEF\xBB\xBF"),
                b => with_bom.push(b),
            }
        }
        check(ctl, &with_bom);
    }
});

fn check(ctl: u8, data: &[u8]) {
    let delimiter = [b',', b';', b'\t', b'|'][usize::from(ctl & 3)];
    let piece = usize::from(ctl >> 2) + 1;
    let whole = records(data, delimiter);
    let body = body_records(data, delimiter);

    // A stream fed in pieces, cut where the splitter says (as
    // `LogTokenizer::feed` does), reads the same records.
    for format in [Format::Csv { delimiter }, Format::JsonLines] {
        let mut sp = Splitter::new(format);
        let mut pending = Vec::new();
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        for p in data.chunks(piece) {
            pending.extend_from_slice(p);
            if let Some(cut) = sp.scan(&pending) {
                assert!(cut > 0 && cut <= pending.len());
                chunks.push(pending.drain(..cut).collect());
                sp.consume(cut);
            }
        }
        chunks.push(pending);
        assert_eq!(chunks.concat(), data);
        match format {
            Format::JsonLines => {
                let n = chunks.len();
                assert!(chunks[..n - 1].iter().all(|c| c.ends_with(b"\n")));
            }
            Format::Csv { .. } => {
                let split: Records = chunks
                    .iter()
                    .flat_map(|c| body_records(c, delimiter))
                    .collect();
                assert_eq!(
                    split,
                    body,
                    "records differ when cut into {} chunks",
                    chunks.len()
                );
                // The rewriter writes the same, with the same rejects, when
                // the chunks' lines are numbered as the pipeline does.
                let rw = rewriter(delimiter);
                let (mut out, mut rejects) = (Vec::new(), Vec::new());
                rw.rewrite_chunk(data, 2, &mut out, &mut rejects);
                let (mut out2, mut rejects2) = (Vec::new(), Vec::new());
                let mut line = 2;
                for c in &chunks {
                    rw.rewrite_chunk(c, line, &mut out2, &mut rejects2);
                    line += c.iter().filter(|&&b| b == b'\n').count() as u64;
                }
                assert!(
                    out2 == out,
                    "output differs when cut into {} chunks",
                    chunks.len()
                );
                assert_eq!(rejects2, rejects);
            }
        }
    }

    // The first record's end, as the over-long skip finds it: in pieces,
    // each dropped once scanned (the skip never holds the record).
    let mut sp = Splitter::new(Format::Csv { delimiter });
    let mut buf = Vec::new();
    let mut dropped = 0;
    let mut first = None;
    for p in data.chunks(piece) {
        buf.extend_from_slice(p);
        if let Some(end) = sp.scan_first(&buf) {
            first = Some(dropped + end);
            break;
        }
        sp.consume(buf.len());
        dropped += buf.len();
        buf.clear();
    }
    if let Some(end) = first {
        let (a, b) = data.split_at(end);
        let mut r = body_records(a, delimiter);
        assert!(r.len() <= 1);
        r.extend(body_records(b, delimiter));
        assert_eq!(r, body);
    }

    // The header row: at most one record, the first, and the rest reads as
    // the body after it.
    if let Some(end) = first_record_end(data, delimiter) {
        let mut r = records(&data[..end], delimiter);
        assert!(r.len() <= 1);
        r.extend(body_records(&data[end..], delimiter));
        assert_eq!(r, whole);
    }
    let mut src = Trickle { data, piece };
    if let Ok((header, rest)) = read_csv_header(&mut src, delimiter) {
        let mut joined = header.clone();
        joined.extend_from_slice(&rest);
        let read = joined.len();
        assert_eq!(joined, data[..read]);
        let mut r = records(&header, delimiter);
        assert!(r.len() <= 1);
        r.extend(body_records(&data[header.len()..], delimiter));
        assert_eq!(r, whole);
    }
}
