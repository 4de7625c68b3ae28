//! The manifest file: a text header, then one binary entry per record in
//! ascending key-digest order (docs/manifests.md, "File format").
//!
//! ```text
//! idvault-manifest/v1\n
//! {"schema_id":"<32 hex>","key_id":"<16 hex>","build_id":"<32 hex>","created":T,"fields":["a","b"],"records":N}\n
//! entry*: key_digest[32] record_digest[32] key_len:u16be key[key_len] field_digest[16]*fields
//! mac[32]: HMAC-SHA-256(K_file, every byte before it)
//! ```
//!
//! A reader trusts nothing: it needs the comparison key and refuses a file
//! built under another, whose closing MAC does not verify (so whoever
//! carries the file cannot edit, splice or truncate it), or whose clear
//! record keys do not match their key digests; the header line is bounded,
//! entries must be strictly ascending (so a duplicated or reordered entry
//! is refused, not silently mis-compared) and the file must hold exactly
//! `records` entries. The MAC is checked at the end of the stream: a
//! caller acting on entries before then must discard what it did if the
//! end fails.

use std::io::{self, BufRead, Read, Write};

use ring::hmac;

use super::{
    ComparisonKey, FIELD_DIGEST_LEN, MANIFEST_MAGIC, MAX_FIELDS, MAX_KEY_BYTES, ManifestError,
};

/// Bytes of the closing MAC.
pub(crate) const MAC_LEN: usize = 32;

/// Longest header line accepted.
const MAX_HEADER_LINE: usize = 64 * 1024;

/// One record's digests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// HMAC of the record key: the sort and join key.
    pub key_digest: [u8; 32],
    /// HMAC of the key and every field's canonical value.
    pub record_digest: [u8; 32],
    /// The record key, in clear.
    pub key: String,
    /// Per-field HMACs (truncated), in schema order.
    pub fields: Vec<[u8; FIELD_DIGEST_LEN]>,
}

impl Entry {
    /// Appends the binary form.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.key_digest);
        out.extend_from_slice(&self.record_digest);
        // Keys are checked against MAX_KEY_BYTES (< u16::MAX) when built.
        out.extend_from_slice(
            &u16::try_from(self.key.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(self.key.as_bytes());
        for f in &self.fields {
            out.extend_from_slice(f);
        }
    }

    /// Reads one entry of `fields` field digests; `None` at a clean end.
    pub(crate) fn read(r: &mut impl Read, fields: usize) -> Result<Option<Self>, ManifestError> {
        let mut kd = [0u8; 32];
        if !read_exact_or_eof(r, &mut kd)? {
            return Ok(None);
        }
        let mut rd = [0u8; 32];
        let mut len = [0u8; 2];
        r.read_exact(&mut rd).map_err(truncated)?;
        r.read_exact(&mut len).map_err(truncated)?;
        let len = usize::from(u16::from_be_bytes(len));
        if len == 0 || len > MAX_KEY_BYTES {
            return Err(ManifestError::Format(format!(
                "entry key of {len} bytes (1-{MAX_KEY_BYTES})"
            )));
        }
        let mut key = vec![0u8; len];
        r.read_exact(&mut key).map_err(truncated)?;
        let key = String::from_utf8(key)
            .map_err(|_| ManifestError::Format("entry key is not UTF-8".into()))?;
        let mut out = Vec::with_capacity(fields);
        for _ in 0..fields {
            let mut d = [0u8; FIELD_DIGEST_LEN];
            r.read_exact(&mut d).map_err(truncated)?;
            out.push(d);
        }
        Ok(Some(Self {
            key_digest: kd,
            record_digest: rd,
            key,
            fields: out,
        }))
    }
}

fn truncated(e: io::Error) -> ManifestError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        ManifestError::Format("truncated entry".into())
    } else {
        ManifestError::Io(e)
    }
}

/// Fills `buf`; `false` if the stream ended before its first byte.
fn read_exact_or_eof(r: &mut impl Read, buf: &mut [u8]) -> Result<bool, ManifestError> {
    let mut got = 0;
    while got < buf.len() {
        let rest = buf.get_mut(got..).unwrap_or_default();
        match r.read(rest) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(ManifestError::Format("truncated entry".into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// What a manifest says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// [`super::Schema::id`] of the schema it was built with.
    pub schema_id: [u8; 16],
    /// [`super::ComparisonKey::id`] of the key it was built with.
    pub key_id: [u8; 8],
    /// Random per build: a file offered as both sides is refused.
    pub build_id: [u8; 16],
    /// When it was built (Unix seconds, as the builder's clock says).
    pub created: u64,
    /// The compared fields' names, in entry order.
    pub fields: Vec<String>,
    /// Entries that follow.
    pub records: u64,
}

impl Header {
    /// Writes the two header lines.
    pub fn write(&self, w: &mut impl Write) -> io::Result<()> {
        writeln!(w, "{MANIFEST_MAGIC}")?;
        writeln!(w, "{}", self.json(None))
    }

    /// The header's JSON line (with `cells` for a summary).
    pub(crate) fn json(&self, cells: Option<usize>) -> serde_json::Value {
        let mut v = serde_json::json!({
            "schema_id": hex(&self.schema_id),
            "key_id": hex(&self.key_id),
            "build_id": hex(&self.build_id),
            "created": self.created,
            "fields": self.fields,
            "records": self.records,
        });
        if let (Some(c), Some(o)) = (cells, v.as_object_mut()) {
            o.insert("cells".into(), c.into());
        }
        v
    }

    /// Parses the header's JSON line.
    pub(crate) fn parse(line: &[u8]) -> Result<(Self, serde_json::Value), ManifestError> {
        let bad = |m: &str| ManifestError::Format(format!("header: {m}"));
        let v: serde_json::Value =
            serde_json::from_slice(line).map_err(|_| bad("not a JSON object"))?;
        let schema_id = unhex::<16>(v.get("schema_id").and_then(|x| x.as_str()))
            .ok_or_else(|| bad("schema_id"))?;
        let key_id =
            unhex::<8>(v.get("key_id").and_then(|x| x.as_str())).ok_or_else(|| bad("key_id"))?;
        let build_id = unhex::<16>(v.get("build_id").and_then(|x| x.as_str()))
            .ok_or_else(|| bad("build_id"))?;
        let created = v
            .get("created")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| bad("created"))?;
        let fields: Vec<String> = v
            .get("fields")
            .and_then(|x| x.as_array())
            .ok_or_else(|| bad("fields"))?
            .iter()
            .map(|f| f.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("fields"))?;
        if fields.is_empty() || fields.len() > MAX_FIELDS {
            return Err(bad("fields"));
        }
        let records = v
            .get("records")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| bad("records"))?;
        let h = Self {
            schema_id,
            key_id,
            build_id,
            created,
            fields,
            records,
        };
        Ok((h, v))
    }

    /// Refuses a header of a file built under another key.
    pub(crate) fn check_key(&self, key: &ComparisonKey) -> Result<(), ManifestError> {
        if self.key_id == key.id() {
            Ok(())
        } else {
            Err(ManifestError::Incomparable(
                "it was built under another comparison key",
            ))
        }
    }
}

/// Reads the magic line and the header line of a manifest or summary
/// (`magic`), both MACed, and checks the file was built under `key`;
/// returns the header, its JSON and the MAC so far.
pub(crate) fn read_header(
    r: &mut impl BufRead,
    magic: &str,
    key: &ComparisonKey,
) -> Result<(Header, serde_json::Value, hmac::Context), ManifestError> {
    let mut ctx = hmac::Context::with_key(key.file_mac_key());
    let first = read_line(r)?;
    if first != magic.as_bytes() {
        return Err(ManifestError::Format(format!("not an {magic} file")));
    }
    ctx.update(&first);
    ctx.update(b"\n");
    let line = read_line(r)?;
    ctx.update(&line);
    ctx.update(b"\n");
    let (header, json) = Header::parse(&line)?;
    header.check_key(key)?;
    Ok((header, json, ctx))
}

/// A writer that MACs every byte it passes on; [`MacWriter::finish`]
/// appends the MAC.
pub(crate) struct MacWriter<W: Write> {
    inner: W,
    ctx: hmac::Context,
}

impl<W: Write> MacWriter<W> {
    pub(crate) fn new(inner: W, key: &ComparisonKey) -> Self {
        Self {
            inner,
            ctx: hmac::Context::with_key(key.file_mac_key()),
        }
    }

    /// Writes the MAC and returns the inner writer (not flushed).
    pub(crate) fn finish(mut self) -> io::Result<W> {
        let tag = self.ctx.sign();
        self.inner.write_all(tag.as_ref())?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for MacWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.ctx.update(buf.get(..n).unwrap_or_default());
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that MACs every byte read through it.
pub(crate) struct MacRead<'a, R> {
    pub(crate) inner: &'a mut R,
    pub(crate) ctx: &'a mut hmac::Context,
}

impl<R: Read> Read for MacRead<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ctx.update(buf.get(..n).unwrap_or_default());
        Ok(n)
    }
}

/// Reads the closing MAC, checks it in constant time against `ctx`, and
/// checks nothing follows.
pub(crate) fn check_mac(r: &mut impl Read, ctx: hmac::Context) -> Result<(), ManifestError> {
    let mut tag = [0u8; MAC_LEN];
    r.read_exact(&mut tag)
        .map_err(|_| ManifestError::Format("truncated: the closing MAC is missing".into()))?;
    let want = ctx.sign();
    let diff = want
        .as_ref()
        .iter()
        .zip(&tag)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff != 0 {
        return Err(ManifestError::Format(
            "the closing MAC does not verify: the file was altered or built under another key"
                .into(),
        ));
    }
    if r.read(&mut [0u8; 1])? != 0 {
        return Err(ManifestError::Format("bytes after the closing MAC".into()));
    }
    Ok(())
}

/// Reads one `\n`-terminated line of at most [`MAX_HEADER_LINE`] bytes,
/// without the newline.
pub(crate) fn read_line(r: &mut impl BufRead) -> Result<Vec<u8>, ManifestError> {
    let mut line = Vec::new();
    let n = r
        .take(MAX_HEADER_LINE as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if n == 0 || line.last() != Some(&b'\n') {
        return Err(ManifestError::Format(
            "header line missing or too long".into(),
        ));
    }
    line.pop();
    Ok(line)
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn unhex<const N: usize>(s: Option<&str>) -> Option<[u8; N]> {
    let s = s?;
    if s.len() != 2 * N || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Reads a manifest entry by entry, checking the key, order, count and
/// the closing MAC.
pub struct ManifestReader<'k, R> {
    inner: R,
    key: &'k ComparisonKey,
    ctx: Option<hmac::Context>,
    header: Header,
    read: u64,
    last: Option<[u8; 32]>,
    failed: bool,
}

impl<R> std::fmt::Debug for ManifestReader<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManifestReader")
            .field("header", &self.header)
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

impl<'k, R: BufRead> ManifestReader<'k, R> {
    /// Reads and checks the header: a manifest built under `key`.
    pub fn new(mut inner: R, key: &'k ComparisonKey) -> Result<Self, ManifestError> {
        let (header, _, ctx) = read_header(&mut inner, MANIFEST_MAGIC, key)?;
        Ok(Self {
            inner,
            key,
            ctx: Some(ctx),
            header,
            read: 0,
            last: None,
            failed: false,
        })
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The next entry, or `None` after the last once the closing MAC
    /// verified. Refuses entries out of order, a duplicated key digest, a
    /// clear key that does not match its digest, and a count other than
    /// the header's. After an error every later call fails too, so a
    /// retrying caller can never take a tampered file for a verified one.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, ManifestError> {
        if self.failed {
            return Err(ManifestError::Format(
                "the manifest already failed a check".into(),
            ));
        }
        let r = self.next_checked();
        self.failed = r.is_err();
        r
    }

    fn next_checked(&mut self) -> Result<Option<Entry>, ManifestError> {
        // `ctx` is gone only once the closing MAC verified.
        let Some(ctx) = self.ctx.as_mut() else {
            return Ok(None);
        };
        if self.read == self.header.records {
            let ctx = self
                .ctx
                .take()
                .unwrap_or_else(|| hmac::Context::with_key(self.key.file_mac_key()));
            check_mac(&mut self.inner, ctx)?;
            return Ok(None);
        }
        let mut r = MacRead {
            inner: &mut self.inner,
            ctx,
        };
        let Some(e) = Entry::read(&mut r, self.header.fields.len())? else {
            return Err(ManifestError::Format(format!(
                "{} entries where the header says {}",
                self.read, self.header.records
            )));
        };
        if self.last.is_some_and(|l| l >= e.key_digest) {
            return Err(ManifestError::Format(
                "entries out of order or duplicated".into(),
            ));
        }
        if self.key.key_digest(&e.key) != e.key_digest {
            return Err(ManifestError::Format(format!(
                "entry {}: the record key does not match its digest",
                self.read + 1
            )));
        }
        self.last = Some(e.key_digest);
        self.read += 1;
        Ok(Some(e))
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, reason = "fixed test vectors")]
mod tests {
    use super::*;

    fn key() -> ComparisonKey {
        ComparisonKey::new(&[5; 32])
    }

    fn entry(k: &ComparisonKey, key: &str) -> Entry {
        Entry {
            key_digest: k.key_digest(key),
            record_digest: [7; 32],
            key: key.into(),
            fields: vec![[1; 16]],
        }
    }

    fn file(k: &ComparisonKey, entries: &[Entry], records: u64) -> Vec<u8> {
        let mut w = MacWriter::new(Vec::new(), k);
        let h = Header {
            schema_id: [1; 16],
            key_id: k.id(),
            build_id: [3; 16],
            created: 0,
            fields: vec!["f".into()],
            records,
        };
        let _ = h.write(&mut w);
        let mut buf = Vec::new();
        for e in entries {
            e.encode(&mut buf);
        }
        let _ = w.write_all(&buf);
        w.finish().unwrap_or_default()
    }

    fn read_all(k: &ComparisonKey, bytes: &[u8]) -> Result<Vec<Entry>, ManifestError> {
        let mut r = ManifestReader::new(bytes, k)?;
        let mut out = Vec::new();
        while let Some(e) = r.next_entry()? {
            out.push(e);
        }
        Ok(out)
    }

    #[test]
    fn round_trip_and_refusals() {
        let k = key();
        let mut es = vec![entry(&k, "a"), entry(&k, "b")];
        es.sort_by_key(|e| e.key_digest);
        assert_eq!(read_all(&k, &file(&k, &es, 2)).ok(), Some(es.clone()));
        assert!(
            read_all(&k, &file(&k, &es, 3)).is_err(),
            "fewer than the header"
        );
        assert!(
            read_all(&k, &file(&k, &es, 1)).is_err(),
            "more than the header"
        );
        let swapped: Vec<_> = es.iter().rev().cloned().collect();
        assert!(
            read_all(&k, &file(&k, &swapped, 2)).is_err(),
            "out of order"
        );
        let dup = [es[0].clone(), es[0].clone()];
        assert!(read_all(&k, &file(&k, &dup, 2)).is_err(), "duplicated");
        let mut renamed = es.clone();
        renamed[0].key = "z".into();
        assert!(
            read_all(&k, &file(&k, &renamed, 2)).is_err(),
            "clear key not its digest"
        );
        let whole = file(&k, &es, 2);
        for cut in 0..whole.len() {
            assert!(
                read_all(&k, whole.get(..cut).unwrap_or_default()).is_err(),
                "cut at {cut}"
            );
        }
        // Any one byte changed anywhere fails (the MAC, if nothing else).
        for i in 0..whole.len() {
            let mut b = whole.clone();
            b[i] ^= 1;
            assert!(read_all(&k, &b).is_err(), "byte {i} flipped");
        }
        let mut bad = whole.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let mut r = ManifestReader::new(&bad[..], &k).unwrap_or_else(|_| unreachable!());
        while let Ok(Some(_)) = r.next_entry() {}
        assert!(r.next_entry().is_err(), "a failed MAC stays failed");
        let mut longer = whole.clone();
        longer.push(0);
        assert!(read_all(&k, &longer).is_err(), "bytes after the MAC");
        let other = ComparisonKey::new(&[6; 32]);
        assert!(matches!(
            read_all(&other, &whole),
            Err(ManifestError::Incomparable(_))
        ));
        assert!(read_all(&k, b"idvault-manifest/v1\n{}\n").is_err());
        assert!(read_all(&k, b"something else\n").is_err());
    }
}
