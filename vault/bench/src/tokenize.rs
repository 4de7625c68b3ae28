//! `idvault bench tokenize`: the stateless log tokenizer against a bare
//! loop over the same lines, measured in one run.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::BenchError;

use idvault_tokenizer::json::{self, FieldPath, Hit, ValueKind};
use idvault_tokenizer::rewrite::{FieldSpec, Rewriter};
use idvault_tokenizer::{DomainKey, NormalizeOptions, normalize};

use idvault_tokenizer::pipeline::{self as tokenize, PipelineOptions};

/// Writes `n` synthetic usage-log lines: two identifier fields
/// (`user.msisdn`, `account_id`) among ordinary ones, ~100k distinct users.
pub fn generate_log(w: &mut dyn Write, n: u64) -> std::io::Result<()> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..n {
        // xorshift: reproducible, no RNG dependency.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let user = x % 100_000;
        writeln!(
            w,
            "{{\"ts\":{},\"event\":\"data_session\",\"user\":{{\"msisdn\":\"+44 7700 {:06}\",\"plan\":\"unlimited\"}},\"account_id\":\"AC-{:08}\",\"bytes_up\":{},\"bytes_down\":{},\"cell\":\"LON-{:04}\"}}",
            1_700_000_000_000u64 + i,
            user,
            user * 7 + 13,
            x % 50_000,
            x % 900_000,
            x % 5000
        )?;
    }
    Ok(())
}

/// Results of one run.
#[derive(Debug, Clone, Copy)]
pub struct TokenizeBench {
    /// Records in the log.
    pub records: u64,
    /// Bytes in the log.
    pub bytes: u64,
    /// `idvault tokenize` pipeline: file in, file out.
    pub tokenize: Duration,
    /// Bare loop: read the file, parse each line, compute the same HMACs.
    pub bare: Duration,
    /// Threads used by both.
    pub threads: usize,
}

/// The bare loop: scan every line for the two fields, normalise them and
/// compute their HMACs, on `threads` threads over the file read whole.
/// Checksums the MACs so the work cannot be optimised away.
fn bare_loop(
    path: &std::path::Path,
    key: &DomainKey,
    fields: &[FieldSpec],
    threads: usize,
) -> std::io::Result<u64> {
    let data = std::fs::read(path)?;
    let paths: Vec<FieldPath> = fields
        .iter()
        .filter_map(|f| FieldPath::parse(&f.path))
        .collect();
    let opts = NormalizeOptions::default();
    let per = data.len() / threads + 1;
    let mut parts = Vec::new();
    let mut start = 0;
    while start < data.len() {
        let mut end = (start + per).min(data.len());
        while end < data.len() && data.get(end - 1) != Some(&b'\n') {
            end += 1;
        }
        parts.push(data.get(start..end).unwrap_or_default());
        start = end;
    }
    let sums = std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .iter()
            .map(|part| {
                let paths = &paths;
                s.spawn(move || {
                    let mut sum = 0u64;
                    let mut hits: Vec<Hit> = Vec::new();
                    for line in part.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                        if std::str::from_utf8(line).is_err() {
                            continue;
                        }
                        hits.clear();
                        if json::scan(line, paths, &mut hits).is_err() {
                            continue;
                        }
                        for h in &hits {
                            let (ValueKind::String { .. }, Some(span)) =
                                (h.kind, line.get(h.start + 1..h.end - 1))
                            else {
                                continue;
                            };
                            let Ok(v) = std::str::from_utf8(span) else {
                                continue;
                            };
                            let ty = fields
                                .get(h.path)
                                .map_or(idvault_tokenizer::IdentifierType::Account, |f| f.ty);
                            if let Ok(n) = normalize(ty, v, &opts) {
                                let mac = key.mac(ty, &n);
                                sum = sum.wrapping_add(u64::from(mac[0]));
                            }
                        }
                    }
                    sum
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(0))
            .fold(0u64, u64::wrapping_add)
    });
    Ok(sums)
}

/// Generates the log in `dir`, then times the tokenizer and the bare loop.
pub fn tokenize(
    dir: &std::path::Path,
    records: u64,
    threads: usize,
) -> std::io::Result<TokenizeBench> {
    let input = dir.join("usage.jsonl");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&input)?);
        generate_log(&mut w, records)?;
        w.flush()?;
    }
    let bytes = std::fs::metadata(&input)?.len();
    let key = DomainKey::new("bench", 1, &[0x42; 32]).map_err(std::io::Error::other)?;
    let fields = vec![
        FieldSpec::parse("user.msisdn").map_err(std::io::Error::other)?,
        FieldSpec::parse("account_id").map_err(std::io::Error::other)?,
    ];
    // Warm the page cache so both runs read from memory.
    bare_loop(&input, &key, &fields, threads)?;

    let t = Instant::now();
    let rw = Rewriter::json_lines(fields.clone(), NormalizeOptions::default(), &key)
        .map_err(std::io::Error::other)?;
    let mut src = std::fs::File::open(&input)?;
    let mut out = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(dir.join("usage.tokenized.jsonl"))?,
    );
    let mut rej = std::io::sink();
    let summary = tokenize::run(
        &rw,
        &mut src,
        Vec::new(),
        1,
        &mut out,
        &mut rej,
        PipelineOptions {
            threads,
            chunk_bytes: 1 << 20,
        },
        &mut |_| {},
    )?;
    out.flush()?;
    let tokenize = t.elapsed();
    if summary.rewritten != records {
        return Err(std::io::Error::other(format!(
            "tokenized {} of {records} records",
            summary.rewritten
        )));
    }

    let t = Instant::now();
    let sum = bare_loop(&input, &key, &fields, threads)?;
    let bare = t.elapsed();
    std::hint::black_box(sum);
    Ok(TokenizeBench {
        records,
        bytes,
        tokenize,
        bare,
        threads,
    })
}

/// Bytes per TokenizeLog message the cross-reference run sends.
const REMOTE_CHUNK: usize = 256 * 1024;

/// Cross-reference mode: imports the synthetic log's 100,000 customers
/// (phone and account linked), then streams the log through TokenizeLog
/// twice over mTLS; the second pass runs on a warm lookup cache.
pub async fn xref(records: u64) -> Result<(), BenchError> {
    use idvault_proto::v1::token_service_client::TokenServiceClient;
    use idvault_proto::v1::{
        BridgeIdentifier, BridgeRecord, IdentifierType as T, ImportBridgeRequest, LogFormat,
        TokenizeLogRequest, TokenizeMode, TokenizeSettings,
    };
    let vault = crate::InProcess::start(None).await?;
    let mut c = TokenServiceClient::new(vault.channel("partner-a").await?);

    let t = Instant::now();
    let batches: Vec<ImportBridgeRequest> = (0..100u64)
        .map(|b| ImportBridgeRequest {
            records: (b * 1000..(b + 1) * 1000)
                .map(|u| BridgeRecord {
                    record_id: format!("u{u}"),
                    identifiers: vec![
                        BridgeIdentifier {
                            r#type: T::Msisdn.into(),
                            value: format!("+44 7700 {u:06}"),
                            sealed_value: Vec::new(),
                        },
                        BridgeIdentifier {
                            r#type: T::Account.into(),
                            value: format!("AC-{:08}", u * 7 + 13),
                            sealed_value: Vec::new(),
                        },
                    ],
                    ..Default::default()
                })
                .collect(),
            default_country_code: 44,
        })
        .collect();
    let s = c
        .import_bridge(tokio_stream::iter(batches))
        .await?
        .into_inner();
    let import_secs = t.elapsed().as_secs_f64();

    let mut log = Vec::new();
    crate::tokenize::generate_log(&mut log, records)?;
    let settings = TokenizeSettings {
        format: LogFormat::JsonLines.into(),
        fields: vec!["user.msisdn".into(), "account_id".into()],
        mode: TokenizeMode::CrossReference.into(),
        ..Default::default()
    };
    let mut rates = Vec::new();
    for _ in 0..2 {
        let mut reqs = vec![TokenizeLogRequest {
            settings: Some(settings.clone()),
            data: Vec::new(),
        }];
        reqs.extend(log.chunks(REMOTE_CHUNK).map(|ch| TokenizeLogRequest {
            settings: None,
            data: ch.to_vec(),
        }));
        let t = Instant::now();
        let mut stream = c.tokenize_log(tokio_stream::iter(reqs)).await?.into_inner();
        let (mut done, mut rejected) = (0u64, 0usize);
        while let Some(m) = stream.message().await? {
            done += m.records_rewritten;
            rejected += m.rejected.len();
        }
        if done != records || rejected != 0 {
            return Err(
                format!("tokenized {done} of {records} records, {rejected} rejected").into(),
            );
        }
        rates.push(records as f64 / t.elapsed().as_secs_f64());
    }
    println!(
        "bridge import: {} customers, {} identifiers linked, {:.0} records/s",
        s.records,
        s.identifiers_linked,
        s.records as f64 / import_secs
    );
    println!("TokenizeLog cross-reference, {records} records over mTLS, SQLite:");
    println!(
        "cold cache: {:>10.0} records/s",
        rates.first().copied().unwrap_or_default()
    );
    println!(
        "warm cache: {:>10.0} records/s",
        rates.get(1).copied().unwrap_or_default()
    );
    vault.stop().await
}
