//! `idvault bridge …`: identity-bridge import, seal keys and sealing.
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use idvault_core::SystemRng;

use super::tokenize::is_csv;
use super::{ConnectArgs, DataDir, plain_status, write_secret_file};

#[derive(Subcommand, Debug)]
pub(crate) enum BridgeCommand {
    /// Stream an identity-bridge file (JSON Lines or CSV) into the vault.
    Import(BridgeImportArgs),
    /// Export the key a sending platform seals bridge identifiers with.
    ExportKey {
        #[command(flatten)]
        dir: DataDir,
        /// The partner (registry name) whose sending platform gets the key:
        /// each partner has its own, and a file sealed with it imports only
        /// into that partner's namespace. Default: the one partner holding
        /// `bridge.import`, if exactly one does.
        #[arg(long)]
        partner: Option<String>,
        /// Where to write the key file (mode 0600; never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Seal the identifiers of a JSON Lines bridge file with an exported
    /// bridge key, so the file carries no identifier in clear.
    Seal {
        /// Exported bridge key file.
        #[arg(long)]
        key_file: PathBuf,
        /// Output file (default: stdout).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Plain JSON Lines bridge file.
        file: PathBuf,
    },
}

#[derive(Args, Debug)]
pub(crate) struct BridgeImportArgs {
    #[command(flatten)]
    conn: ConnectArgs,
    /// File format (default: from the extension, else jsonl).
    #[arg(long, value_parser = ["jsonl", "csv"])]
    format: Option<String>,
    /// Country calling code for national phone numbers.
    #[arg(long)]
    country_code: Option<u16>,
    /// Records per batch (one transaction each, at most 1000).
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// The bridge file.
    file: PathBuf,
}

pub(crate) async fn bridge_import(args: BridgeImportArgs) -> anyhow::Result<()> {
    use idvault_client::bridge_file::{CsvLayout, LineError, parse_json_line};
    use idvault_proto::v1::ImportBridgeRequest;
    use idvault_proto::v1::token_service_client::TokenServiceClient;
    use std::io::BufRead;

    use idvault_server::service::tokens::bridge::{
        MAX_BATCH, MAX_BATCH_IDENTIFIERS, MAX_RECORD_IDENTIFIERS,
    };
    let batch = args.batch.clamp(1, MAX_BATCH);
    let csv = is_csv(args.format.as_deref(), Some(&args.file));
    let file = std::fs::File::open(&args.file).with_context(|| args.file.display().to_string())?;
    let country = u32::from(args.country_code.unwrap_or(0));
    let (tx, rx) = tokio::sync::mpsc::channel::<ImportBridgeRequest>(4);
    // Read on a blocking thread, a batch at a time: constant memory.
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<LineError>> {
        let mut errors = Vec::new();
        let mut records: Vec<idvault_proto::v1::BridgeRecord> = Vec::with_capacity(batch);
        // Refused by the vault anyway; refused here so that one such record
        // cannot take its message past the cap on identifiers.
        let too_many = |r: idvault_proto::v1::BridgeRecord| {
            if r.identifiers.len() > MAX_RECORD_IDENTIFIERS {
                Err(format!("more than {MAX_RECORD_IDENTIFIERS} identifiers"))
            } else {
                Ok(r)
            }
        };
        let flush = |records: &mut Vec<_>| -> anyhow::Result<()> {
            if !records.is_empty() {
                let req = ImportBridgeRequest {
                    records: std::mem::take(records),
                    default_country_code: country,
                };
                tx.blocking_send(req)
                    .map_err(|_| anyhow::anyhow!("import stream closed by the vault"))?;
            }
            Ok(())
        };
        // Adds a record, sending the batch once it is full: `batch`
        // records, or (counted as they come) so many identifiers that one
        // more record could pass the vault's cap per message.
        let mut identifiers = 0usize;
        let mut add =
            |records: &mut Vec<_>, r: idvault_proto::v1::BridgeRecord| -> anyhow::Result<()> {
                identifiers += r.identifiers.len();
                records.push(r);
                if records.len() == batch
                    || identifiers + MAX_RECORD_IDENTIFIERS > MAX_BATCH_IDENTIFIERS
                {
                    identifiers = 0;
                    flush(records)?;
                }
                Ok(())
            };
        if csv {
            let mut rdr = ::csv::ReaderBuilder::new().flexible(true).from_reader(file);
            let layout = CsvLayout::from_header(rdr.headers()?)
                .map_err(|e| anyhow::anyhow!("header: {e}"))?;
            for (i, row) in rdr.records().enumerate() {
                let line = i as u64 + 2;
                match row
                    .map_err(|e| e.to_string())
                    .and_then(|r| layout.record(&r))
                    .and_then(too_many)
                {
                    Ok(r) => add(&mut records, r)?,
                    Err(reason) => errors.push(LineError { line, reason }),
                }
            }
        } else {
            for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
                let line_no = i as u64 + 1;
                let line = match line {
                    Ok(l) => l,
                    Err(e) => {
                        errors.push(LineError {
                            line: line_no,
                            reason: e.kind().to_string(),
                        });
                        continue;
                    }
                };
                if line.trim().is_empty() {
                    continue;
                }
                match parse_json_line(&line).and_then(too_many) {
                    Ok(r) => add(&mut records, r)?,
                    Err(reason) => errors.push(LineError {
                        line: line_no,
                        reason,
                    }),
                }
            }
        }
        flush(&mut records)?;
        Ok(errors)
    });
    let mut client = TokenServiceClient::new(args.conn.channel().await?);
    let response = client
        .import_bridge(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    // A vault that ends the stream early (a refused batch) closes it under
    // the reader too: its status says why, the reader's error only that
    // the stream closed, so the status goes first.
    let read = reader.await?;
    let s = response?.into_inner();
    let line_errors = read?;
    println!(
        "records sent {}: {} entities created, {} identifiers linked, {} unchanged, {} merges, {} refused by the vault, {} unreadable lines",
        s.records,
        s.entities_created,
        s.identifiers_linked,
        s.records_unchanged,
        s.merges_total,
        s.rejected_total,
        line_errors.len()
    );
    for m in &s.merges {
        println!(
            "merge (record {}): {} <- {}",
            m.record_id,
            m.surviving_token,
            m.merged_tokens.join(", ")
        );
    }
    for e in &s.rejected {
        println!(
            "refused record #{} ({}): {}",
            e.index, e.record_id, e.reason
        );
    }
    for e in &line_errors {
        println!("unreadable line {}: {}", e.line, e.reason);
    }
    Ok(())
}

pub(crate) fn bridge_seal(
    key_file: &std::path::Path,
    output: Option<&std::path::Path>,
    file: &std::path::Path,
) -> anyhow::Result<()> {
    use base64::Engine;
    use std::io::{BufRead, Write};
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(key_file).with_context(|| key_file.display().to_string())?,
    );
    let (partner, key) = idvault_core::xref::parse_bridge_key_file(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", key_file.display()))?;
    let rng = SystemRng::default();
    let input = std::io::BufReader::new(
        std::fs::File::open(file).with_context(|| file.display().to_string())?,
    );
    let mut out: Box<dyn Write> = match output {
        Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p)?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        // Errors name the line, never its content.
        let mut rec: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&line)
            .map_err(|_| anyhow::anyhow!("line {}: not a JSON object", i + 1))?;
        let mut sealed = serde_json::Map::new();
        for ty in [
            idvault_tokenizer::IdentifierType::Msisdn,
            idvault_tokenizer::IdentifierType::Email,
            idvault_tokenizer::IdentifierType::Account,
            idvault_tokenizer::IdentifierType::Service,
        ] {
            let Some(v) = rec.remove(ty.name()) else {
                continue;
            };
            let values: Vec<String> = match v {
                serde_json::Value::String(s) => vec![s],
                serde_json::Value::Array(a) => a
                    .into_iter()
                    .map(|x| x.as_str().map(str::to_owned))
                    .collect::<Option<_>>()
                    .ok_or_else(|| {
                        anyhow::anyhow!("line {}: {} must be strings", i + 1, ty.name())
                    })?,
                _ => bail!(
                    "line {}: {} must be a string or an array of strings",
                    i + 1,
                    ty.name()
                ),
            };
            let mut enc = Vec::with_capacity(values.len());
            for v in values {
                let s = idvault_core::xref::seal_bridge_identifier(&key, &partner, ty, &v, &rng)?;
                enc.push(serde_json::Value::String(
                    base64::engine::general_purpose::STANDARD.encode(s),
                ));
            }
            sealed.insert(ty.name().to_owned(), serde_json::Value::Array(enc));
        }
        if !sealed.is_empty() {
            rec.insert("sealed".into(), serde_json::Value::Object(sealed));
        }
        serde_json::to_writer(&mut out, &rec)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// Runs a `bridge` subcommand.
pub(crate) async fn run(command: BridgeCommand) -> anyhow::Result<()> {
    match command {
        BridgeCommand::ExportKey { dir, partner, out } => {
            let cfg = dir.load()?;
            let importers: Vec<&str> = cfg
                .file
                .partners
                .iter()
                .filter(|p| p.roles.iter().any(|r| r == "bridge.import"))
                .map(|p| p.name.as_str())
                .collect();
            let partner = match (partner, importers.as_slice()) {
                (Some(p), _) => p,
                (None, [only]) => (*only).to_owned(),
                (None, []) => bail!("no partner holds bridge.import; name one with --partner"),
                (None, many) => bail!(
                    "several partners may import bridge files ({}); name one with --partner",
                    many.join(", ")
                ),
            };
            if !cfg.file.partners.iter().any(|p| p.name == partner) {
                bail!("no partner named {partner:?} in the registry");
            }
            let keys = idvault_server::app::open_keys(&cfg)?;
            let key = keys.bridge_seal_key(&partner, keys.current_version())?;
            write_secret_file(&out, &idvault_core::xref::bridge_key_file(&partner, &key))?;
            println!(
                "wrote {} (bridge seal key of {partner}, version {}); give it only to {partner}'s sending platform",
                out.display(),
                key.version()
            );
            Ok(())
        }
        BridgeCommand::Seal {
            key_file,
            output,
            file,
        } => bridge_seal(&key_file, output.as_deref(), &file),
        BridgeCommand::Import(args) => bridge_import(args).await.map_err(plain_status),
    }
}
