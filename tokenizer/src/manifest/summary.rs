//! Summaries: a manifest condensed into an invertible Bloom lookup table
//! (Goodrich and Mitzenmacher 2011; Eppstein et al., "What's the
//! Difference?", SIGCOMM 2011), so one side can learn which records differ
//! while receiving bytes in proportion to the differences, not to the
//! records.
//!
//! Each record is the item `key_digest || record_digest` (64 bytes). It is
//! added to one cell in each of three equal parts of the table, chosen
//! from `SHA-256(item)`; a cell keeps a count, the XOR of its items and the
//! XOR of their 64-bit checks (also from `SHA-256(item)`). Subtracting the
//! other side's table cell by cell leaves only the items one side has and
//! the other has not; those are peeled off cells that hold exactly one.
//! A record that differs is two items with one key digest.
//!
//! Hand-written (about a hundred lines) because no maintained crate offers
//! an IBLT over arbitrary fixed-size items; the check hash must be
//! nonlinear (a projection of the item would pass the purity test for any
//! XOR of items), hence SHA-256.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};

use super::format::{Header, MacRead, MacWriter, ManifestReader, check_mac, read_header};
use super::{ComparisonKey, DiffItem, DiffStatus, DiffTotals, ManifestError};

/// The first line of a summary file.
pub const SUMMARY_MAGIC: &str = "idvault-manifest-summary/v1";

/// Most cells a summary may have (80 bytes each: 640 MiB); a multiple
/// of three.
pub const MAX_CELLS: usize = 8 * 1024 * 1024 - 2;

const ITEM: usize = 64;
const CELL_BYTES: usize = 8 + ITEM + 8;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Cell {
    count: i64,
    sum: [u8; ITEM],
    check: u64,
}

impl Default for Cell {
    fn default() -> Self {
        Self {
            count: 0,
            sum: [0; ITEM],
            check: 0,
        }
    }
}

/// A manifest's summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    header: Header,
    cells: Vec<Cell>,
}

/// The cells a summary needs to give back up to `max_differences`
/// differing records (each at most two items) with high probability:
/// 1.5 cells per item (three hashes decode below about 1.22) plus a
/// margin for small tables, a multiple of three; `None` past
/// [`MAX_CELLS`].
pub fn cells_for(max_differences: u64) -> Option<usize> {
    let items = max_differences.checked_mul(2)?;
    let cells = items.checked_mul(3)? / 2 + 60;
    let cells = usize::try_from(cells).ok()?.div_ceil(3) * 3;
    (cells <= MAX_CELLS).then_some(cells)
}

fn hash(item: &[u8; ITEM]) -> (u64, [u64; 3]) {
    let d = ring::digest::digest(&ring::digest::SHA256, item);
    let mut w = [0u64; 4];
    for (i, c) in d.as_ref().chunks_exact(8).enumerate() {
        if let (Some(slot), Ok(b)) = (w.get_mut(i), <[u8; 8]>::try_from(c)) {
            *slot = u64::from_be_bytes(b);
        }
    }
    let [check, a, b, c] = w;
    (check, [a, b, c])
}

impl Summary {
    fn empty(h: &Header, cells: usize) -> Self {
        Self {
            header: h.clone(),
            cells: vec![Cell::default(); (cells.clamp(3, MAX_CELLS) / 3) * 3],
        }
    }

    /// Summarises a manifest built under `key` into `cells` cells (see
    /// [`cells_for`]; rounded down to a multiple of three, at most
    /// [`MAX_CELLS`]).
    pub fn from_manifest(
        manifest: impl BufRead,
        key: &ComparisonKey,
        cells: usize,
    ) -> Result<Self, ManifestError> {
        let mut r = ManifestReader::new(manifest, key)?;
        let mut s = Self::empty(r.header(), cells);
        while let Some(e) = r.next_entry()? {
            s.toggle(&item_of(&e.key_digest, &e.record_digest), 1);
        }
        Ok(s)
    }

    /// Cells in the table.
    pub fn cells(&self) -> usize {
        self.cells.len()
    }

    /// Records summarised.
    pub fn records(&self) -> u64 {
        self.header.records
    }

    /// What the summarised manifest says about itself.
    pub fn header(&self) -> &Header {
        &self.header
    }

    fn positions(&self, h: &[u64; 3]) -> [usize; 3] {
        let part = self.cells.len() / 3;
        let mut out = [0usize; 3];
        for (j, (o, x)) in out.iter_mut().zip(h).enumerate() {
            // `part` is at most MAX_CELLS / 3, so both fit in usize and u64.
            let off = usize::try_from(*x % part as u64).unwrap_or(0);
            *o = j * part + off;
        }
        out
    }

    fn toggle(&mut self, item: &[u8; ITEM], by: i64) {
        let (check, h) = hash(item);
        for p in self.positions(&h) {
            if let Some(c) = self.cells.get_mut(p) {
                c.count = c.count.wrapping_add(by);
                for (s, b) in c.sum.iter_mut().zip(item) {
                    *s ^= b;
                }
                c.check ^= check;
            }
        }
    }

    /// Writes the summary, closed by a MAC under `key`.
    pub fn write(&self, w: &mut impl Write, key: &ComparisonKey) -> std::io::Result<()> {
        let mut w = MacWriter::new(w, key);
        writeln!(w, "{SUMMARY_MAGIC}")?;
        writeln!(w, "{}", self.header.json(Some(self.cells.len())))?;
        let mut buf = Vec::with_capacity(CELL_BYTES * 1024);
        for chunk in self.cells.chunks(1024) {
            buf.clear();
            for c in chunk {
                buf.extend_from_slice(&c.count.to_be_bytes());
                buf.extend_from_slice(&c.sum);
                buf.extend_from_slice(&c.check.to_be_bytes());
            }
            w.write_all(&buf)?;
        }
        w.finish()?.flush()
    }

    /// Reads a summary built under `key`, bounded by [`MAX_CELLS`], and
    /// checks its closing MAC and that every cell's count is possible.
    pub fn read(mut r: impl BufRead, key: &ComparisonKey) -> Result<Self, ManifestError> {
        let (header, v, mut ctx) = read_header(&mut r, SUMMARY_MAGIC, key)?;
        let bad = |m: &str| ManifestError::Format(format!("summary header: {m}"));
        let cells = v
            .get("cells")
            .and_then(serde_json::Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| *n >= 3 && *n <= MAX_CELLS && n % 3 == 0)
            .ok_or_else(|| bad("cells"))?;
        // Grown as cells arrive: a short file claiming millions of cells
        // costs what it holds, not what it claims.
        let mut s = Self::empty(&header, 3);
        s.cells = Vec::with_capacity(cells.min(64 * 1024));
        let records = i64::try_from(header.records).unwrap_or(i64::MAX);
        let mut buf = [0u8; CELL_BYTES];
        let mut mr = MacRead {
            inner: &mut r,
            ctx: &mut ctx,
        };
        for _ in 0..cells {
            std::io::Read::read_exact(&mut mr, &mut buf)
                .map_err(|_| ManifestError::Format("summary truncated".into()))?;
            let (count, rest) = buf.split_at(8);
            let (sum, check) = rest.split_at(ITEM);
            let mut c = Cell {
                count: i64::from_be_bytes(count.try_into().unwrap_or_default()),
                ..Cell::default()
            };
            // Each record adds one to a cell of each third.
            if !(0..=records).contains(&c.count) {
                return Err(ManifestError::Format(
                    "summary cell count out of range".into(),
                ));
            }
            c.sum.copy_from_slice(sum);
            c.check = u64::from_be_bytes(check.try_into().unwrap_or_default());
            s.cells.push(c);
        }
        check_mac(&mut r, ctx)?;
        Ok(s)
    }

    /// Items only `self` has, and items only `other` has, as
    /// `(key_digest, record_digest)`.
    #[allow(clippy::type_complexity, reason = "two lists of digest pairs")]
    pub fn difference(
        &self,
        other: &Self,
    ) -> Result<(Vec<([u8; 32], [u8; 32])>, Vec<([u8; 32], [u8; 32])>), ManifestError> {
        let (a, b) = (&self.header, &other.header);
        if a.key_id != b.key_id {
            return Err(ManifestError::Incomparable(
                "they were built with different comparison keys",
            ));
        }
        if a.build_id == b.build_id {
            return Err(ManifestError::Incomparable(
                "they are the same build: one side's manifest was offered as both",
            ));
        }
        if a.schema_id != b.schema_id || a.fields != b.fields {
            return Err(ManifestError::Incomparable(
                "they were built with different schemas (field names, normalisers or country code)",
            ));
        }
        if self.cells.len() != other.cells.len() {
            return Err(ManifestError::Incomparable(
                "the summaries have different sizes",
            ));
        }
        let mut d = self.clone();
        for (c, o) in d.cells.iter_mut().zip(&other.cells) {
            c.count = c.count.wrapping_sub(o.count);
            for (s, b) in c.sum.iter_mut().zip(&o.sum) {
                *s ^= b;
            }
            c.check ^= o.check;
        }
        let (mut mine, mut theirs) = (Vec::new(), Vec::new());
        // Every peel removes one item; a table of n cells cannot give back
        // more than n honestly, which also bounds a crafted one.
        let mut budget = d.cells.len();
        let mut queue: Vec<usize> = (0..d.cells.len()).collect();
        while let Some(i) = queue.pop() {
            let Some(c) = d.cells.get(i) else { continue };
            if c.count != 1 && c.count != -1 {
                continue;
            }
            let (check, h) = hash(&c.sum);
            // Pure only if the one item's check matches and the item
            // belongs in this cell at all.
            if check != c.check || !d.positions(&h).contains(&i) {
                continue;
            }
            if budget == 0 {
                return Err(ManifestError::SummaryTooSmall {
                    cells: d.cells.len(),
                });
            }
            budget -= 1;
            let (item, by) = (c.sum, c.count);
            let mut kd = [0u8; 32];
            let mut rd = [0u8; 32];
            kd.copy_from_slice(item.get(..32).unwrap_or(&[0; 32]));
            rd.copy_from_slice(item.get(32..).unwrap_or(&[0; 32]));
            if by == 1 {
                mine.push((kd, rd));
            } else {
                theirs.push((kd, rd));
            }
            d.toggle(&item, -by);
            queue.extend(d.positions(&h));
        }
        if d.cells.iter().any(|c| *c != Cell::default()) {
            return Err(ManifestError::SummaryTooSmall {
                cells: d.cells.len(),
            });
        }
        Ok((mine, theirs))
    }
}

fn item_of(kd: &[u8; 32], rd: &[u8; 32]) -> [u8; ITEM] {
    let mut i = [0u8; ITEM];
    let (a, b) = i.split_at_mut(32);
    a.copy_from_slice(kd);
    b.copy_from_slice(rd);
    i
}

/// Compares manifest `a` (read twice: `open_a` gives a fresh reader) with
/// the other side's summary `b`, both under `key`, calling `out` for each
/// record that is not the same. Records of `a` are named by key; records
/// only `b` has carry only their key digest (`key` is `None`): the other
/// side names them with its own diff. Fields that differ are not known (a
/// summary has no per-field digests). On an error, discard what `out` was
/// given.
pub fn diff_with_summary<R: BufRead>(
    open_a: &mut dyn FnMut() -> Result<R, ManifestError>,
    key: &ComparisonKey,
    b: &Summary,
    out: &mut dyn FnMut(DiffItem) -> Result<(), ManifestError>,
) -> Result<DiffTotals, ManifestError> {
    let a = Summary::from_manifest(open_a()?, key, b.cells.len())?;
    let (mine, theirs) = a.difference(b)?;
    let mut theirs_by_kd: HashSet<[u8; 32]> = HashSet::with_capacity(theirs.len());
    for (k, _) in &theirs {
        if !theirs_by_kd.insert(*k) {
            return Err(ManifestError::Format(
                "the summary gives one record key twice".into(),
            ));
        }
    }
    let n_mine = mine.len();
    let mine: HashMap<[u8; 32], [u8; 32]> = mine.into_iter().collect();
    if mine.len() != n_mine {
        return Err(ManifestError::Format(
            "the summary gives one record key of this side twice".into(),
        ));
    }
    let mut t = DiffTotals {
        records_a: a.header.records,
        records_b: b.header.records,
        ..DiffTotals::default()
    };
    let mut found = 0usize;
    let mut r = ManifestReader::new(open_a()?, key)?;
    if r.header().build_id != a.header.build_id {
        return Err(ManifestError::Format(
            "this side's manifest changed between its two reads".into(),
        ));
    }
    while let Some(e) = r.next_entry()? {
        if mine.get(&e.key_digest) != Some(&e.record_digest) {
            continue;
        }
        found += 1;
        let status = if theirs_by_kd.remove(&e.key_digest) {
            t.differ += 1;
            DiffStatus::Differs
        } else {
            t.missing_in_b += 1;
            DiffStatus::MissingInB
        };
        out(DiffItem {
            status,
            key_digest: e.key_digest,
            key: Some(e.key),
            fields: Vec::new(),
        })?;
    }
    if found != mine.len() {
        return Err(ManifestError::Format(
            "the summary names records of this side that are not in its manifest".into(),
        ));
    }
    let mut rest: Vec<[u8; 32]> = theirs_by_kd.into_iter().collect();
    rest.sort_unstable();
    for kd in rest {
        t.missing_in_a += 1;
        out(DiffItem {
            status: DiffStatus::MissingInA,
            key_digest: kd,
            key: None,
            fields: Vec::new(),
        })?;
    }
    Ok(t)
}
