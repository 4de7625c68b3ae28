//! A subject's packet rows as a database writer can leave them (rows
//! deleted, duplicated, reordered, relabelled, damaged; the run cut at any
//! start): reading the newest values up to the stored head must fail or
//! answer each field with its true newest value, never an older one.
#![no_main]
use std::collections::BTreeMap;

use idvault_core::crypto::{CryptoError, Rng};
use idvault_core::packet::{self, ChainHead};
use idvault_core::secret::DataKey;
use idvault_core::subject::{SubjectId, validate_fields};
use libfuzzer_sys::fuzz_target;

/// Deterministic nonces, so a crash reproduces (their reuse is harmless
/// here: nothing is secret).
struct Counter(std::sync::atomic::AtomicU64);

impl Rng for Counter {
    fn fill(&self, buf: &mut [u8]) -> Result<(), CryptoError> {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = n.to_le_bytes()[i % 8] ^ u8::try_from(i % 251).unwrap_or(0);
        }
        Ok(())
    }
}

const FIELDS: [&str; 3] = ["email", "city", "given_name"];

fuzz_target!(|data: &[u8]| {
    let Some((&updates, ops)) = data.split_first() else {
        return;
    };
    let subject = SubjectId::from_bytes([9; 16]);
    let dek = DataKey::from_bytes([7; 32], 1);
    let rng = Counter(0.into());
    // The true chain: every field once, then up to 15 updates of one field
    // each, chosen by the bits of the first byte's count.
    let mut head = ChainHead::genesis(&subject);
    let mut rows: Vec<(String, Vec<u8>)> = Vec::new();
    let mut truth: BTreeMap<String, String> = BTreeMap::new();
    let first: Vec<(String, String)> = FIELDS
        .iter()
        .map(|f| ((*f).to_owned(), format!("{f}-0")))
        .collect();
    let mut writes = vec![first];
    for i in 0..usize::from(updates % 16) {
        let f = FIELDS[(i * 7 + usize::from(updates)) % FIELDS.len()];
        writes.push(vec![(f.to_owned(), format!("{f}-{}", i + 1))]);
    }
    for w in writes {
        let values: BTreeMap<String, String> = w.iter().cloned().collect();
        let fields = validate_fields(w).expect("catalogue fields");
        let (new, h) = packet::append(&subject, &dek, head, &fields, 1, &rng).expect("seal");
        head = h;
        for p in new {
            let f = p.field.as_str().to_owned();
            truth.insert(f.clone(), values[&f].clone());
            rows.push((f, p.packet.into_bytes()));
        }
    }
    // The writer's edits, two bytes each.
    for op in ops.chunks_exact(2) {
        let n = rows.len().max(1);
        let i = usize::from(op[1]) % n;
        match op[0] % 6 {
            0 if !rows.is_empty() => {
                rows.remove(i);
            }
            1 if !rows.is_empty() => {
                let r = rows[i].clone();
                rows.insert(usize::from(op[0] / 6) % (rows.len() + 1), r);
            }
            2 if rows.len() > 1 => {
                let j = usize::from(op[0] / 6) % rows.len();
                rows.swap(i, j);
            }
            3 if !rows.is_empty() => {
                rows[i].0 = FIELDS[usize::from(op[0] / 6) % FIELDS.len()].to_owned();
            }
            4 if !rows.is_empty() => {
                let b = &mut rows[i].1;
                let at = usize::from(op[0] / 6) % b.len().max(1);
                if let Some(x) = b.get_mut(at) {
                    *x ^= 1 << (op[0] % 8);
                }
            }
            // The run's start, as the store would choose it.
            _ => {
                rows.drain(..i);
            }
        }
    }
    let read = packet::newest_values_to_head(
        &subject,
        &dek,
        head,
        rows.iter().map(|(f, b)| (f.as_str(), b.as_slice())),
    );
    if let Ok(values) = read {
        for (field, value) in values {
            assert_eq!(
                truth.get(field.as_str()).map(String::as_str),
                Some(value.expose()),
                "an older value was read as the newest"
            );
        }
    }
});
