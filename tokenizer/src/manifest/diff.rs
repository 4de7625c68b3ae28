//! Comparing two manifests in one streaming merge over their key digests:
//! constant memory whatever their size.

use std::cmp::Ordering;
use std::io::BufRead;

use super::format::{Entry, ManifestReader};
use super::{ComparisonKey, ManifestError};

/// How a record differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiffStatus {
    /// Only the first manifest has it.
    MissingInB,
    /// Only the second manifest has it.
    MissingInA,
    /// Both have it, with different values.
    Differs,
}

impl DiffStatus {
    /// The name printed in a diff.
    pub fn name(self) -> &'static str {
        match self {
            Self::MissingInB => "missing-in-b",
            Self::MissingInA => "missing-in-a",
            Self::Differs => "differs",
        }
    }
}

/// One record that is not the same on both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffItem {
    /// What differs.
    pub status: DiffStatus,
    /// The record's key digest.
    pub key_digest: [u8; 32],
    /// The record key; `None` for a record only the other side's summary
    /// holds (that side names it).
    pub key: Option<String>,
    /// For [`DiffStatus::Differs`], the names of the fields that differ.
    pub fields: Vec<String>,
}

/// Counts of a diff.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiffTotals {
    /// Records in A.
    pub records_a: u64,
    /// Records in B.
    pub records_b: u64,
    /// Records only in A.
    pub missing_in_b: u64,
    /// Records only in B.
    pub missing_in_a: u64,
    /// Records in both that differ.
    pub differ: u64,
}

impl DiffTotals {
    /// Whether the two sides hold the same records.
    pub fn same(&self) -> bool {
        self.missing_in_a == 0 && self.missing_in_b == 0 && self.differ == 0
    }
}

/// Compares manifest `a` with manifest `b`, both built under `key`,
/// calling `out` for every record that is not the same, in key-digest
/// order. Each file's closing MAC is checked when its last entry is read:
/// on an error, discard what `out` was given.
pub fn diff(
    a: impl BufRead,
    b: impl BufRead,
    key: &ComparisonKey,
    out: &mut dyn FnMut(DiffItem) -> Result<(), ManifestError>,
) -> Result<DiffTotals, ManifestError> {
    let mut a = ManifestReader::new(a, key)?;
    let mut b = ManifestReader::new(b, key)?;
    let (ha, hb) = (a.header().clone(), b.header().clone());
    if ha.schema_id != hb.schema_id || ha.fields != hb.fields {
        return Err(ManifestError::Incomparable(
            "they were built with different schemas (field names, normalisers or country code)",
        ));
    }
    if ha.build_id == hb.build_id {
        return Err(ManifestError::Incomparable(
            "they are the same build: one side's manifest was offered as both",
        ));
    }
    let mut t = DiffTotals {
        records_a: ha.records,
        records_b: hb.records,
        ..DiffTotals::default()
    };
    let mut ea = a.next_entry()?;
    let mut eb = b.next_entry()?;
    loop {
        let ord = match (&ea, &eb) {
            (None, None) => return Ok(t),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(x), Some(y)) => x.key_digest.cmp(&y.key_digest),
        };
        match ord {
            Ordering::Less => {
                if let Some(x) = ea.take() {
                    t.missing_in_b += 1;
                    out(item(DiffStatus::MissingInB, x, Vec::new()))?;
                }
                ea = a.next_entry()?;
            }
            Ordering::Greater => {
                if let Some(y) = eb.take() {
                    t.missing_in_a += 1;
                    out(item(DiffStatus::MissingInA, y, Vec::new()))?;
                }
                eb = b.next_entry()?;
            }
            Ordering::Equal => {
                if let (Some(x), Some(y)) = (ea.take(), eb.take())
                    && x.record_digest != y.record_digest
                {
                    t.differ += 1;
                    let fields = differing_fields(&ha.fields, &x, &y);
                    out(item(DiffStatus::Differs, x, fields))?;
                }
                ea = a.next_entry()?;
                eb = b.next_entry()?;
            }
        }
    }
}

fn item(status: DiffStatus, e: Entry, fields: Vec<String>) -> DiffItem {
    DiffItem {
        status,
        key_digest: e.key_digest,
        key: Some(e.key),
        fields,
    }
}

fn differing_fields(names: &[String], a: &Entry, b: &Entry) -> Vec<String> {
    names
        .iter()
        .zip(a.fields.iter().zip(&b.fields))
        .filter(|(_, (x, y))| x != y)
        .map(|(n, _)| n.clone())
        .collect()
}
