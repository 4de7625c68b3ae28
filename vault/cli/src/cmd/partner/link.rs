//! `idvault partner link FILE`: link a whole dataset through
//! `MatchService.Link` (docs/blind-matching.md, "Linking a dataset").
//!
//! The file is CSV with a header row, or JSON Lines (one object a line).
//! Columns (keys) named like a matchable catalogue field are sent; `--map
//! FIELD=COLUMN` sends another column as that field; the `--id-column`
//! (default `record_id`, or the line number when absent) names each record
//! in the results; every other column stays on this machine. Results are
//! written as CSV or JSON Lines, one per record, in file order.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use idvault_client::link_file::{self, Columns};
use idvault_proto::v1::match_service_client::MatchServiceClient;
use idvault_proto::v1::{LinkOptions, LinkRequest, LinkResult};
use idvault_tokenizer::variants::MatchField;

use crate::cmd::ConnectArgs;

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Csv,
    Jsonl,
}

impl Format {
    /// From a file name: `.jsonl`, `.ndjson` and `.json` are JSON Lines,
    /// anything else CSV.
    fn of(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl" | "ndjson" | "json") => Self::Jsonl,
            _ => Self::Csv,
        }
    }
}

#[derive(Args, Debug)]
pub(crate) struct LinkArgs {
    /// The dataset: CSV with a header row, or JSON Lines.
    file: PathBuf,
    /// Input format (default: from the file name; CSV unless .jsonl).
    #[arg(long)]
    format: Option<Format>,
    /// Write results here instead of standard output (replaced).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Output format (default: from --out's name; CSV on standard output).
    #[arg(long)]
    out_format: Option<Format>,
    /// Column holding each record's reference (default `record_id`; the
    /// line number when the file has no such column).
    #[arg(long, value_name = "COLUMN")]
    id_column: Option<String>,
    /// Send COLUMN as the catalogue field FIELD, e.g.
    /// `--map family_name=surname` (repeatable).
    #[arg(long = "map", value_name = "FIELD=COLUMN", value_parser = crate::cmd::parse_field)]
    map: Vec<(String, String)>,
    /// Give no subject to two records: candidates are assigned greedily,
    /// best score first, once the whole file is sent.
    #[arg(long)]
    one_to_one: bool,
    /// Lowest score to return, in [0.5, 1] (default: the vault threshold).
    #[arg(long)]
    min_score: Option<f64>,
    /// Records per message (1 to 100; at most the partner's match burst).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=100))]
    batch: u16,
}

/// Which input column becomes which field.
fn columns_of(args: &LinkArgs) -> anyhow::Result<Columns> {
    let fields = MatchField::columns(&args.map).map_err(anyhow::Error::msg)?;
    Ok(Columns {
        id: args
            .id_column
            .clone()
            .unwrap_or_else(|| "record_id".to_owned()),
        fields,
    })
}

/// Reads `path` and hands its records to `sink` in messages of
/// `per_message` (the first also carries `options`); stops quietly when
/// `sink` says `false`. Returns the records read. With `warn`, says which
/// columns are not sent.
fn read_records(
    path: &Path,
    format: Format,
    columns: &Columns,
    batching: (LinkOptions, usize),
    warn: bool,
    sink: &mut dyn FnMut(LinkRequest) -> bool,
) -> anyhow::Result<u64> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let format = match format {
        Format::Csv => link_file::Format::Csv,
        Format::Jsonl => link_file::Format::Jsonl,
    };
    link_file::read_records(
        file,
        &path.display().to_string(),
        format,
        columns,
        batching,
        &mut |header| {
            let unused = columns.unused(header);
            if warn && !unused.is_empty() {
                eprintln!(
                    "not sent (not a matchable field; see --map): {}",
                    unused.join(", ")
                );
            }
        },
        sink,
    )
    .map_err(anyhow::Error::msg)
}

/// Writes results in one format.
enum Writer {
    Csv(Box<csv::Writer<Box<dyn Write + Send>>>),
    Jsonl(Box<dyn Write + Send>),
}

fn level_name(r: &idvault_proto::v1::FieldAgreement) -> String {
    r.level()
        .as_str_name()
        .trim_start_matches("AGREEMENT_LEVEL_")
        .to_lowercase()
}

impl Writer {
    fn new(out: Box<dyn Write + Send>, format: Format) -> anyhow::Result<Self> {
        Ok(match format {
            Format::Csv => {
                let mut w = csv::Writer::from_writer(out);
                w.write_record([
                    "record_id",
                    "pairwise_token",
                    "score",
                    "agreements",
                    "refused",
                ])?;
                Self::Csv(Box::new(w))
            }
            Format::Jsonl => Self::Jsonl(out),
        })
    }

    fn write(&mut self, r: &LinkResult) -> anyhow::Result<()> {
        match self {
            Self::Csv(w) => {
                let agreements: Vec<String> = r
                    .agreements
                    .iter()
                    .map(|a| format!("{}:{}", a.field, level_name(a)))
                    .collect();
                let score = if r.pairwise_token.is_empty() {
                    String::new()
                } else {
                    format!("{:.6}", r.score)
                };
                w.write_record([
                    r.record_id.as_str(),
                    r.pairwise_token.as_str(),
                    score.as_str(),
                    agreements.join(";").as_str(),
                    r.refused.as_str(),
                ])?;
            }
            Self::Jsonl(w) => {
                let agreements: serde_json::Map<String, serde_json::Value> = r
                    .agreements
                    .iter()
                    .map(|a| (a.field.clone(), level_name(a).into()))
                    .collect();
                let token = (!r.pairwise_token.is_empty()).then_some(&r.pairwise_token);
                let v = serde_json::json!({
                    "record_id": r.record_id,
                    "pairwise_token": token,
                    "score": token.map(|_| r.score),
                    "agreements": agreements,
                    "refused": (!r.refused.is_empty()).then_some(&r.refused),
                });
                writeln!(w, "{v}")?;
            }
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<()> {
        match self {
            Self::Csv(mut w) => w.flush()?,
            Self::Jsonl(mut w) => w.flush()?,
        }
        Ok(())
    }
}

/// Counts for the summary line.
#[derive(Debug, Default)]
struct Tally {
    matched: u64,
    unmatched: u64,
    refused: u64,
}

pub(crate) async fn link(conn: &ConnectArgs, args: LinkArgs) -> anyhow::Result<()> {
    let columns = columns_of(&args)?;
    let in_format = args.format.unwrap_or_else(|| Format::of(&args.file));
    let out_format = args
        .out_format
        .or_else(|| args.out.as_deref().map(Format::of))
        .unwrap_or(Format::Csv);
    let options = LinkOptions {
        one_to_one: args.one_to_one,
        min_score: args.min_score.unwrap_or(0.0),
    };
    if !std::fs::metadata(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?
        .is_file()
    {
        bail!("{} is not a file", args.file.display());
    }
    let out: Box<dyn Write + Send> = match &args.out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let mut writer = Writer::new(out, out_format)?;

    // A first pass checks the whole file (and counts it for the progress
    // bar) before anything is sent: a bad row found halfway would
    // otherwise end the stream early, and a one-to-one job would assign
    // and reveal the records sent so far.
    let per_message = usize::from(args.batch);
    let total = {
        let (file, o) = (args.file.clone(), options);
        let columns = columns_of(&args)?;
        tokio::task::spawn_blocking(move || {
            read_records(
                &file,
                in_format,
                &columns,
                (o, per_message),
                true,
                &mut |_| true,
            )
        })
        .await
        .context("reading the dataset")??
    };
    let most = idvault_server::service::matching::MAX_LINK_RECORDS;
    if args.one_to_one && total > most as u64 {
        bail!(
            "{} holds {total} records; a one-to-one link takes at most {most} (split the file)",
            args.file.display()
        );
    }
    let mut client = MatchServiceClient::new(conn.channel().await?);
    let (tx, rx) = tokio::sync::mpsc::channel::<LinkRequest>(4);
    let file = args.file.clone();
    // On a reading error the sender is handed back, not dropped: dropping
    // it would end the stream cleanly, and the vault would answer (for a
    // one-to-one job: assign and reveal) the records sent so far. The
    // call is cancelled instead.
    let mut reader = tokio::task::spawn_blocking(move || {
        let read = read_records(
            &file,
            in_format,
            &columns,
            (options, per_message),
            false,
            &mut |m| tx.blocking_send(m).is_ok(),
        );
        match read {
            Ok(n) => Ok(n),
            Err(e) => Err((e, tx)),
        }
    });
    let mut replies = client
        .link(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let started = tokio::time::Instant::now();
    let bar = crate::progress::counting_bar(total);
    let mut tally = Tally::default();
    let mut received = 0u64;
    let mut sent = None;
    let failed = loop {
        let next = tokio::select! {
            r = &mut reader, if sent.is_none() => {
                match r {
                    Ok(Ok(n)) => {
                        sent = Some(n);
                        continue;
                    }
                    Ok(Err((e, tx))) => {
                        // Cancel the call while the request side is open.
                        drop(replies);
                        drop(tx);
                        return Err(e.context("reading the dataset; the link was cancelled"));
                    }
                    Err(e) => bail!("reading the dataset: {e}"),
                }
            }
            m = replies.message() => m,
        };
        match next {
            Ok(Some(m)) => {
                received = m.received;
                for r in &m.results {
                    match (r.refused.is_empty(), r.pairwise_token.is_empty()) {
                        (false, _) => tally.refused += 1,
                        (true, false) => tally.matched += 1,
                        (true, true) => tally.unmatched += 1,
                    }
                    writer.write(r)?;
                }
                if let Some(pb) = &bar {
                    // Matched so far (one-to-one: answers come at the end).
                    pb.set_position(received);
                    pb.set_message(format!(
                        "{} matched, {} refused",
                        tally.matched, tally.refused
                    ));
                }
            }
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    if let Some(pb) = bar {
        pb.finish_and_clear();
    }
    writer.finish()?;
    let sent = match sent {
        Some(n) => n,
        None => match reader.await {
            Ok(Ok(n)) => n,
            Ok(Err((e, _))) => return Err(e.context("reading the dataset")),
            Err(e) => bail!("reading the dataset: {e}"),
        },
    };
    // The vault's own refusal first: when it ends the call early, the
    // reader stops sending too, and the counts then differ.
    if let Some(e) = failed {
        bail!("Link failed after {received} records: {}", e.message());
    }
    if sent != total {
        bail!(
            "{} changed while it was linked ({total} records, then {sent})",
            args.file.display()
        );
    }
    let answered = tally.matched + tally.unmatched + tally.refused;
    if answered != sent {
        bail!("sent {sent} records but {answered} were answered");
    }
    eprintln!(
        "linked {sent} records in {:.1} s: {} matched, {} without a match, {} refused{}",
        started.elapsed().as_secs_f64(),
        tally.matched,
        tally.unmatched,
        tally.refused,
        if args.one_to_one { " (one-to-one)" } else { "" }
    );
    Ok(())
}
