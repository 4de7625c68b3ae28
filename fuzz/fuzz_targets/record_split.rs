//! Record boundaries in usage logs: where `idvault tokenize` and the
//! TokenizeLog stream cut CSV input into chunks that are then parsed
//! apart (`Splitter::scan`, `Splitter::scan_first`, `first_record_end`,
//! `read_csv_header`). A differential check against the csv crate that
//! parses each chunk: cutting wherever the splitter says, with the bytes
//! arriving in pieces of any size, must read exactly the records that one
//! pass over the whole input reads. Otherwise a quoted field's rest would
//! be read as records of its own, and what a stream yields would depend on
//! how its client happened to split its messages.
#![no_main]
use std::io::Read;

use idvault_tokenizer::pipeline::read_csv_header;
use idvault_tokenizer::rewrite::{Format, Splitter, first_record_end};
use libfuzzer_sys::fuzz_target;

type Records = Vec<Vec<Vec<u8>>>;

/// Every record of `data`, read as the rewriter reads a chunk.
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

/// The records of `data` read in two parts cut at `at`.
fn records_cut(data: &[u8], at: usize, delimiter: u8) -> Records {
    let (a, b) = data.split_at(at);
    let mut r = records(a, delimiter);
    r.extend(records(b, delimiter));
    r
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
    let delimiter = [b',', b';', b'\t', b'|'][usize::from(ctl & 3)];
    let piece = usize::from(ctl >> 2) + 1;
    let whole = records(data, delimiter);

    // A stream fed in pieces, cut where the splitter says (as
    // `LogTokenizer::feed` does), reads the same records.
    for format in [Format::Csv { delimiter }, Format::JsonLines] {
        let mut sp = Splitter::new(format);
        let mut pending = Vec::new();
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        for p in data.chunks(piece) {
            pending.extend_from_slice(p);
            if let Some(cut) = sp.scan(&pending) {
                assert!(cut <= pending.len() && pending[cut - 1] == b'\n');
                chunks.push(pending.drain(..cut).collect());
                sp.consume(cut);
            }
        }
        chunks.push(pending);
        assert_eq!(chunks.concat(), data);
        if let Format::Csv { .. } = format {
            let split: Records = chunks.iter().flat_map(|c| records(c, delimiter)).collect();
            assert_eq!(
                split,
                whole,
                "records differ when cut into {} chunks",
                chunks.len()
            );
        }
    }

    // The first record's end, as the over-long skip finds it, in pieces.
    let mut sp = Splitter::new(Format::Csv { delimiter });
    let mut seen = Vec::new();
    let mut first = None;
    for p in data.chunks(piece) {
        seen.extend_from_slice(p);
        if let Some(end) = sp.scan_first(&seen) {
            first = Some(end);
            break;
        }
    }
    if let Some(end) = first {
        assert_eq!(data[end - 1], b'\n');
        assert_eq!(records_cut(data, end, delimiter), whole);
    }

    // The header row: at most one record, the first, and the rest reads as
    // the other records.
    if let Some(end) = first_record_end(data, delimiter) {
        assert!(records(&data[..end], delimiter).len() <= 1);
        assert_eq!(records_cut(data, end, delimiter), whole);
    }
    let mut src = Trickle { data, piece };
    if let Ok((header, rest)) = read_csv_header(&mut src, delimiter) {
        let mut joined = header.clone();
        joined.extend_from_slice(&rest);
        let read = joined.len();
        assert_eq!(joined, data[..read]);
        let h = records(&header, delimiter);
        assert!(h.len() <= 1 || read == data.len());
        if h.len() == 1 && read < data.len() {
            assert_eq!(h[0], whole[0]);
        }
        let mut tail = records(&header, delimiter);
        tail.extend(records(&data[header.len()..], delimiter));
        assert_eq!(tail, whole);
    }
});
