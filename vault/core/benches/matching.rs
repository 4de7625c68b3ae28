//! The CPU of blind matching's pure part, one core, no storage: a query's
//! plan (variants, keyed indexes, Bloom filters), a create's indexes for
//! two match domains, and the scoring of one candidate. Run with
//! `cargo bench -p idvault-core --bench matching` (docs/BENCHMARKS.md,
//! "Scoring without hashing").

use std::error::Error;
use std::hint::black_box;
use std::time::{Duration, Instant};

use idvault_core::keys::{KeyHierarchy, StaticKeyProvider};
use idvault_core::matching::{
    MatchKeyring, MatchModel, PreparedRecord, QueryPlan, decode_signature,
};
use idvault_core::secret::RootKey;
use idvault_tokenizer::NormalizeOptions;
use idvault_tokenizer::variants::MatchField;

/// A record with every matchable field.
const RECORD: [(MatchField, &str); 9] = [
    (MatchField::GivenName, "Katherine"),
    (MatchField::FamilyName, "Thompson"),
    (MatchField::DateOfBirth, "1984-07-21"),
    (MatchField::NationalId, "QQ123456C"),
    (MatchField::Phone, "+44 7700 900123"),
    (MatchField::Email, "kate.thompson@example.com"),
    (MatchField::StreetAddress, "12 Acacia Avenue"),
    (MatchField::Postcode, "SW1A 1AA"),
    (MatchField::City, "London"),
];

/// Runs `f` `n` times after a tenth as many warm-up runs; the mean time
/// of one.
#[allow(clippy::disallowed_methods)] // a benchmark measures wall time
fn time(n: u32, mut f: impl FnMut()) -> Duration {
    for _ in 0..n / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed() / n
}

fn main() -> Result<(), Box<dyn Error>> {
    let keys = KeyHierarchy::new(Box::new(StaticKeyProvider::new([RootKey::from_bytes(
        [1; 32], 1,
    )])?));
    let a = MatchKeyring::derive(&keys, "partner-a", 1)?;
    let b = MatchKeyring::derive(&keys, "partner-b", 1)?;
    let opts = NormalizeOptions {
        default_country_code: Some(44),
    };
    let model = MatchModel::prior();
    let n = 20_000;

    let plan = time(n, || {
        black_box(QueryPlan::new(&[&a], black_box(&RECORD), &opts, &model).ok());
    });
    println!("query plan, 9 fields:               {plan:>10.2?}");

    let create = time(n, || {
        let record = PreparedRecord::new(black_box(&RECORD), &opts);
        black_box(a.index_prepared(&record));
        black_box(b.index_prepared(&record));
    });
    println!("a create's indexes, 2 domains:      {create:>10.2?}");

    let query = QueryPlan::new(&[&a], &RECORD, &opts, &model)?;
    let stored = a.subject_index(&RECORD, &opts);
    let signature = decode_signature(&stored.signature(a.version())).ok_or("bad signature")?;
    let score = time(n * 10, || {
        black_box(query.score(stored.present(), black_box(&signature)));
    });
    println!(
        "scoring one candidate ({} entries): {score:>10.2?}",
        signature.entries.len()
    );
    Ok(())
}
