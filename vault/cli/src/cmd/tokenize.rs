//! `idvault tokenize`: rewrite identifiers in logs, locally with a key
//! file (stateless) or through the vault (`--server`).
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;

use super::plain_status;

#[derive(Args, Debug)]
pub(crate) struct TokenizeArgs {
    /// Exported token domain key file: tokenize locally, no vault needed.
    #[arg(long, required_unless_present = "server", conflicts_with = "server")]
    key_file: Option<PathBuf>,
    /// Tokenize inside the vault at this URL instead (keys never leave it).
    #[arg(long)]
    server: Option<String>,
    /// With --server: `stateless` (tk_ tokens of --domain) or `xref` (entity tokens).
    #[arg(long, default_value = "stateless", value_parser = ["stateless", "xref"], requires = "server")]
    mode: String,
    /// With --server --mode stateless: the token domain.
    #[arg(long, default_value = "logs")]
    domain: String,
    /// With --server: partner certificate to use (DATA_DIR/tls/NAME.crt/.key).
    #[arg(long, default_value = "partner-a")]
    name: String,
    /// With --server: data directory holding tls/.
    #[arg(long, default_value = "./idvault-data", env = "IDVAULT_DATA_DIR")]
    data_dir: PathBuf,
    /// With --server: name to verify in the server certificate.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Field to tokenize: dotted JSON path or CSV column, optionally `=TYPE`
    /// (msisdn, email, account, service, location); repeatable.
    #[arg(long = "field", required = true)]
    fields: Vec<String>,
    /// Input format (default: from the file extension, else jsonl).
    #[arg(long, value_parser = ["jsonl", "csv"])]
    format: Option<String>,
    /// CSV delimiter.
    #[arg(long, default_value = ",")]
    delimiter: char,
    /// Output file (default: stdout).
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Reject file: one JSON line per record not tokenized, with line and reason
    /// (default: OUTPUT.rejects.jsonl, or ./rejects.jsonl with stdout).
    #[arg(long)]
    rejects: Option<PathBuf>,
    /// Country calling code for national phone numbers (e.g. 44).
    #[arg(long)]
    country_code: Option<u16>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Input files (default: stdin).
    inputs: Vec<PathBuf>,
}

/// Whether input is CSV: `--format` if given, else a `.csv` extension.
pub(crate) fn is_csv(format: Option<&str>, first_input: Option<&PathBuf>) -> bool {
    match format {
        Some(f) => f == "csv",
        None => first_input
            .is_some_and(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"))),
    }
}

/// The CSV delimiter as one ASCII byte.
pub(crate) fn delimiter_byte(c: char) -> anyhow::Result<u8> {
    u8::try_from(u32::from(c))
        .ok()
        .filter(u8::is_ascii)
        .context("delimiter must be one ASCII character")
}

/// Bytes per TokenizeLog message: well under the server's default 1 MiB
/// message limit, large enough to amortise per-message work.
pub(crate) const REMOTE_CHUNK: usize = 256 * 1024;

/// `idvault tokenize --server`: streams the input through the vault's
/// TokenizeLog call; output and rejects are written as in local mode.
pub(crate) async fn tokenize_remote(args: TokenizeArgs) -> anyhow::Result<()> {
    use idvault_proto::v1::token_service_client::TokenServiceClient;
    use idvault_proto::v1::{LogFormat, TokenizeLogRequest, TokenizeMode, TokenizeSettings};
    use std::io::{Read, Write};

    if args.inputs.len() > 1 {
        bail!("--server takes one input file (or stdin)");
    }
    let csv = is_csv(args.format.as_deref(), args.inputs.first());
    let delimiter = delimiter_byte(args.delimiter)?;
    let mut input: Box<dyn Read + Send> = match args.inputs.first() {
        Some(p) => Box::new(std::fs::File::open(p).with_context(|| p.display().to_string())?),
        None => Box::new(std::io::stdin()),
    };
    let (header, rest) = if csv {
        idvault_tokenizer::pipeline::read_csv_header(&mut input, delimiter)?
    } else {
        (Vec::new(), Vec::new())
    };
    let settings = TokenizeSettings {
        format: if csv {
            LogFormat::Csv
        } else {
            LogFormat::JsonLines
        }
        .into(),
        fields: args.fields.clone(),
        mode: if args.mode == "xref" {
            TokenizeMode::CrossReference
        } else {
            TokenizeMode::Stateless
        }
        .into(),
        domain: args.domain.clone(),
        default_country_code: u32::from(args.country_code.unwrap_or(0)),
        csv_header: header.clone(),
        csv_delimiter: u32::from(args.delimiter),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<TokenizeLogRequest>(4);
    tx.send(TokenizeLogRequest {
        settings: Some(settings),
        data: rest,
    })
    .await?;
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        loop {
            let mut buf = vec![0u8; REMOTE_CHUNK];
            let n = input.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            buf.truncate(n);
            if tx
                .blocking_send(TokenizeLogRequest {
                    settings: None,
                    data: buf,
                })
                .is_err()
            {
                return Ok(());
            }
        }
    });
    let creds =
        idvault_client::PartnerCredentials::from_dir(&args.data_dir.join("tls"), &args.name)?;
    let channel = idvault_client::connect(
        args.server.as_deref().unwrap_or_default(),
        &args.server_name,
        &creds,
    )
    .await?;
    let mut client = TokenServiceClient::new(channel);
    #[allow(clippy::disallowed_methods)] // progress on a terminal: elapsed wall time
    let started = Instant::now();
    let mut stream = client
        .tokenize_log(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut output: Box<dyn Write> = match &args.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| p.display().to_string())?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let rejects_path = args.rejects.clone().unwrap_or_else(|| match &args.output {
        Some(p) => PathBuf::from(format!("{}.rejects.jsonl", p.display())),
        None => PathBuf::from("rejects.jsonl"),
    });
    let mut rejects = std::io::BufWriter::new(std::fs::File::create(&rejects_path)?);
    output.write_all(&header)?;
    let (mut rewritten, mut rejected) = (0u64, 0u64);
    while let Some(m) = stream.message().await? {
        output.write_all(&m.data)?;
        rewritten += m.records_rewritten;
        for r in m.rejected {
            rejected += 1;
            idvault_tokenizer::pipeline::write_reject(
                &mut rejects,
                &idvault_tokenizer::rewrite::Reject {
                    line: r.line,
                    reason: r.reason,
                },
            )?;
        }
    }
    reader.await??;
    output.flush()?;
    rejects.flush()?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "tokenized {rewritten} records in the vault ({} mode), rejected {rejected} (see {}), in {secs:.2}s ({:.0} records/s)",
        args.mode,
        rejects_path.display(),
        (rewritten + rejected) as f64 / secs.max(1e-9)
    );
    Ok(())
}

pub(crate) fn tokenize(args: TokenizeArgs) -> anyhow::Result<()> {
    use idvault_tokenizer::NormalizeOptions;
    use idvault_tokenizer::pipeline::{self as tk, PipelineOptions};
    use idvault_tokenizer::rewrite::{FieldSpec, Rewriter};
    use std::io::{BufWriter, Write};

    let key_file = args
        .key_file
        .clone()
        .context("--key-file is required without --server")?;
    let key_text = zeroize::Zeroizing::new(
        std::fs::read_to_string(&key_file)
            .with_context(|| format!("cannot read {}", key_file.display()))?,
    );
    let key = idvault_tokenizer::token::parse_key_file(&key_text)
        .with_context(|| key_file.display().to_string())?;
    let fields = args
        .fields
        .iter()
        .map(|f| FieldSpec::parse(f))
        .collect::<Result<Vec<_>, _>>()?;
    let opts = NormalizeOptions {
        default_country_code: args.country_code,
    };
    let csv = is_csv(args.format.as_deref(), args.inputs.first());
    let delimiter = delimiter_byte(args.delimiter)?;
    let mut pipeline = PipelineOptions::default();
    if let Some(t) = args.threads {
        pipeline.threads = t.max(1);
    }
    let mut output: Box<dyn Write> = match &args.output {
        Some(p) => Box::new(BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(p).with_context(|| p.display().to_string())?,
        )),
        None => Box::new(BufWriter::with_capacity(1 << 20, std::io::stdout().lock())),
    };
    let rejects_path = args.rejects.clone().unwrap_or_else(|| match &args.output {
        Some(p) => PathBuf::from(format!("{}.rejects.jsonl", p.display())),
        None => PathBuf::from("rejects.jsonl"),
    });
    let mut rejects = BufWriter::new(
        std::fs::File::create(&rejects_path).with_context(|| rejects_path.display().to_string())?,
    );
    let bar = crate::progress::progress_bar();
    #[allow(clippy::disallowed_methods)] // progress on a terminal: elapsed wall time
    let started = Instant::now();
    let mut total = tk::Summary::default();
    let sources: Vec<Option<PathBuf>> = if args.inputs.is_empty() {
        vec![None]
    } else {
        args.inputs.iter().cloned().map(Some).collect()
    };
    let tag_files = sources.len() > 1;
    let mut csv_header: Option<Vec<u8>> = None;
    for src in &sources {
        let mut input: Box<dyn std::io::Read + Send> = match src {
            Some(p) => Box::new(std::fs::File::open(p).with_context(|| p.display().to_string())?),
            None => Box::new(std::io::stdin()),
        };
        let name = src
            .as_ref()
            .map_or_else(|| "-".to_owned(), |p| p.display().to_string());
        let mut tagged;
        let rej: &mut dyn Write = if tag_files {
            tagged = tk::FileTagged::new(&mut rejects, &name)?;
            &mut tagged
        } else {
            &mut rejects
        };
        let before = total;
        let mut on_progress = |s: &tk::Summary| {
            if let Some(b) = &bar {
                let so_far = tk::Summary {
                    rewritten: before.rewritten + s.rewritten,
                    rejected: before.rejected + s.rejected,
                    blank: before.blank + s.blank,
                    bytes: before.bytes + s.bytes,
                };
                b.set_message(crate::progress::progress_message(&so_far, started));
            }
        };
        let s = if csv {
            let (header, rest) = tk::read_csv_header(&mut input, delimiter)?;
            match &csv_header {
                None => {
                    output.write_all(&header)?;
                    csv_header = Some(header.clone());
                }
                Some(h) if *h != header => {
                    bail!("{name}: CSV header differs from the first input's")
                }
                Some(_) => {}
            }
            let rw = Rewriter::csv(fields.clone(), &header, delimiter, opts, &key)?;
            tk::run(
                &rw,
                &mut input,
                rest,
                2,
                &mut output,
                rej,
                pipeline,
                &mut on_progress,
            )?
        } else {
            let rw = Rewriter::json_lines(fields.clone(), opts, &key)?;
            tk::run(
                &rw,
                &mut input,
                Vec::new(),
                1,
                &mut output,
                rej,
                pipeline,
                &mut on_progress,
            )?
        };
        total.rewritten += s.rewritten;
        total.rejected += s.rejected;
        total.blank += s.blank;
        total.bytes += s.bytes;
    }
    output.flush()?;
    rejects.flush()?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "tokenized {} records, rejected {} (see {}), skipped {} blank lines, in {:.2}s ({:.0} records/s)",
        total.rewritten,
        total.rejected,
        rejects_path.display(),
        total.blank,
        secs,
        (total.rewritten + total.rejected) as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// Runs `tokenize`.
pub(crate) async fn run(args: TokenizeArgs) -> anyhow::Result<()> {
    if args.server.is_some() {
        tokenize_remote(args).await.map_err(plain_status)
    } else {
        tokenize(args)
    }
}
