//! The `idvault` binary: one command for every role.

mod consent_cli;
mod events_cli;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use idvault::config::{CONFIG_FILE, Config};
use idvault::core::SystemRng;
use idvault_proto::v1::subject_service_client::SubjectServiceClient;
use idvault_proto::v1::{
    CreateSubjectRequest, DeleteSubjectRequest, Field, UpdateSubjectRequest,
    VerifySubjectChainRequest,
};

#[derive(Parser, Debug)]
#[command(
    name = "idvault",
    version,
    about = "Privacy-preserving identity vault and tokenization service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
struct DataDir {
    /// Data directory holding idvault.toml, root.key, tls/ and the SQLite database.
    #[arg(long, default_value = "./idvault-data", env = "IDVAULT_DATA_DIR")]
    data_dir: PathBuf,
    /// Config file (default: DATA_DIR/idvault.toml).
    #[arg(long)]
    config: Option<PathBuf>,
}

impl DataDir {
    fn config_path(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(|| self.data_dir.join(CONFIG_FILE))
    }
    fn load(&self) -> anyhow::Result<Config> {
        let p = self.config_path();
        if !p.exists() {
            bail!(
                "{} not found: run `idvault init --dev --data-dir {}` (development) or `idvault init --data-dir {}`",
                p.display(),
                self.data_dir.display(),
                self.data_dir.display()
            );
        }
        Ok(Config::load(&p)?)
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a data directory: root key and config (with --dev: also a dev CA and certificates).
    Init {
        #[command(flatten)]
        dir: DataDir,
        /// Also make a development CA, server certificate and partner certificates.
        #[arg(long)]
        dev: bool,
        /// Listen address written to the config.
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: String,
    },
    /// Serve the gRPC API over mTLS.
    Serve {
        #[command(flatten)]
        dir: DataDir,
        /// Initialise whatever is missing with development defaults first.
        #[arg(long)]
        dev: bool,
        /// Listen address (overrides the config).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Database URL: sqlite:PATH or postgres://… (overrides the config).
        #[arg(long, env = "IDVAULT_DATABASE_URL")]
        database_url: Option<String>,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Root key tools.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Act as a partner institution against a running vault.
    Partner(PartnerArgs),
    /// Act as a person's phone: device key, enrollment, consents, receipts.
    Device(consent_cli::DeviceArgs),
    /// Identity bridge tools.
    Bridge {
        #[command(subcommand)]
        command: BridgeCommand,
    },
    /// Replace identifier fields in usage logs (JSON Lines or CSV) with tokens.
    Tokenize(TokenizeArgs),
    /// Token domain keys.
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Partner access policies (Cedar).
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Measure throughput of core operations.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Walk the hash chain and MACs of the audit log; name the first bad record.
    Verify {
        #[command(flatten)]
        dir: DataDir,
        /// Database URL (overrides the config).
        #[arg(long, env = "IDVAULT_DATABASE_URL")]
        database_url: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Add a new root key version; older versions stay and keep old data readable.
    Rotate {
        #[command(flatten)]
        dir: DataDir,
    },
}

#[derive(Subcommand, Debug)]
enum BridgeCommand {
    /// Stream an identity-bridge file (JSON Lines or CSV) into the vault.
    Import(BridgeImportArgs),
    /// Export the key a sending platform seals bridge identifiers with.
    ExportKey {
        #[command(flatten)]
        dir: DataDir,
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
struct BridgeImportArgs {
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

#[derive(Subcommand, Debug)]
enum TokensCommand {
    /// Export a token domain's key for stateless tokenization where the data is.
    ExportKey {
        #[command(flatten)]
        dir: DataDir,
        /// Token domain (1-32 of a-z, 0-9, -); it appears in every token.
        #[arg(long)]
        domain: String,
        /// Key version (default: the current root key version).
        #[arg(long)]
        version: Option<u32>,
        /// Where to write the key file (created with mode 0600; never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args, Debug)]
struct TokenizeArgs {
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

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Validate a policy directory (one .cedarschema, any .cedar files) as
    /// the vault does at start: errors name file, line and column.
    Check { dir: PathBuf },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Seal, open and chain-verify packets in memory.
    Packets {
        /// Packets to seal.
        #[arg(long, default_value_t = 200_000)]
        count: u64,
    },
    /// Stateless `tokenize` versus a bare parse-and-HMAC loop on a synthetic log;
    /// with `--mode xref`, the TokenizeLog stream against an in-process vault.
    Tokenize {
        /// Log lines to generate.
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        /// Threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// `stateless` (local, with baseline) or `xref` (through the vault, warm cache).
        #[arg(long, default_value = "stateless", value_parser = ["stateless", "xref"])]
        mode: String,
    },
    /// Blind-matching quality (precision, recall, F1 on synthetic people with
    /// corrupted duplicates) and single-query latency at a large vault size.
    Match {
        /// People created in the vault for the quality run.
        #[arg(long, default_value_t = 5_000)]
        originals: usize,
        /// People not in the vault, matched alongside the duplicates.
        #[arg(long, default_value_t = 5_000)]
        strangers: usize,
        /// Vault size for the latency run (0 skips it).
        #[arg(long, default_value_t = 1_000_000)]
        subjects: usize,
        /// Single queries timed in the latency run.
        #[arg(long, default_value_t = 2_000)]
        queries: usize,
        /// Generator seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Database URL (default: SQLite in a fresh temporary directory).
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Consent verifications/s (against a bare ECDSA baseline) and full
    /// consented releases/s (challenge, verify, decrypt, HPKE seal, audit).
    Consent {
        /// Releases to time (each with its own challenge).
        #[arg(long, default_value_t = 2_000)]
        count: usize,
        /// Grant verifications in the in-memory run.
        #[arg(long, default_value_t = 20_000)]
        verifications: usize,
        /// Concurrent callers.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Database URL (default: SQLite in a fresh temporary directory).
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Events to delivered commands over mTLS: ignored events/s as the
    /// baseline, then events that each trigger one command, drained and
    /// acknowledged by the receiving partner (commands/s end to end, latency).
    Events {
        /// People set up (enrolled phone, two links, one rule each).
        #[arg(long, default_value_t = 200)]
        subjects: usize,
        /// Events published in each phase.
        #[arg(long, default_value_t = 5_000)]
        events: usize,
        /// Concurrent publishers.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Database URL (default: SQLite in a fresh temporary directory).
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Partner access policy decisions per second on one thread, with the
    /// built-in policy set or a policy directory.
    Policy {
        /// Decisions to time.
        #[arg(long, default_value_t = 1_000_000)]
        decisions: usize,
        /// Policy directory (default: the built-in set).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// CreateSubject RPCs over real mTLS against an in-process server.
    Subjects {
        /// RPCs to send.
        #[arg(long, default_value_t = 5_000)]
        count: usize,
        /// Concurrent client connections.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Database URL (default: SQLite in a fresh temporary directory).
        #[arg(long)]
        database_url: Option<String>,
    },
}

/// How a partner command reaches the vault.
#[derive(Args, Debug)]
struct ConnectArgs {
    #[command(flatten)]
    dir: DataDir,
    /// Partner whose certificate to use (DATA_DIR/tls/NAME.crt and .key).
    #[arg(long, default_value = "partner-a")]
    name: String,
    /// Vault URL.
    #[arg(long, default_value = "https://127.0.0.1:50051")]
    server: String,
    /// Name to verify in the server certificate.
    #[arg(long, default_value = "localhost")]
    server_name: String,
}

impl ConnectArgs {
    async fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        let creds = idvault::client::PartnerCredentials::from_dir(
            &self.dir.data_dir.join("tls"),
            &self.name,
        )?;
        Ok(idvault::client::connect(&self.server, &self.server_name, &creds).await?)
    }
}

/// A gRPC refusal is an answer, not a crash: show code and message only.
fn plain_status(e: anyhow::Error) -> anyhow::Error {
    match e.downcast::<tonic::Status>() {
        Ok(s) => anyhow::anyhow!("{:?}: {}", s.code(), s.message()),
        Err(e) => e,
    }
}

#[derive(Args, Debug)]
struct PartnerArgs {
    #[command(flatten)]
    conn: ConnectArgs,
    #[command(subcommand)]
    command: PartnerCommand,
}

#[derive(Subcommand, Debug)]
enum PartnerCommand {
    /// Create a subject: --field name=value (repeatable).
    CreateSubject {
        #[arg(long = "field", value_parser = parse_field, required = true)]
        fields: Vec<(String, String)>,
    },
    /// Append field versions to a subject.
    UpdateSubject {
        subject_id: String,
        #[arg(long = "field", value_parser = parse_field, required = true)]
        fields: Vec<(String, String)>,
    },
    /// Verify a subject's packet chain.
    VerifyChain { subject_id: String },
    /// Delete (crypto-shred) a subject.
    DeleteSubject { subject_id: String },
    /// Blind-match a person: prints pairwise token, score and agreeing fields.
    Match {
        #[arg(long = "field", value_parser = parse_field, required = true)]
        fields: Vec<(String, String)>,
        /// Most candidates to print (1 to 10).
        #[arg(long, default_value_t = 3)]
        max_results: u32,
    },
    #[command(flatten)]
    Consent(consent_cli::PartnerConsentCommand),
    #[command(flatten)]
    Events(events_cli::PartnerEventCommand),
}

fn parse_field(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .ok_or_else(|| "expected NAME=VALUE".to_owned())
}

/// Shows a database URL without its password.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Init { dir, dev, listen } => init(&dir, dev, &listen),
        Command::Serve {
            dir,
            dev,
            listen,
            database_url,
        } => serve(&dir, dev, listen, database_url).await,
        Command::Audit {
            command: AuditCommand::Verify { dir, database_url },
        } => audit_verify(&dir, database_url).await,
        Command::Keys {
            command: KeysCommand::Rotate { dir },
        } => {
            let cfg = dir.load()?;
            let v = idvault::keyfile::rotate(
                &cfg.resolve(&cfg.file.keys.root_key_file),
                &SystemRng::default(),
            )?;
            println!("root key version {v} is now current; older versions remain for reading");
            Ok(())
        }
        Command::Bridge {
            command: BridgeCommand::ExportKey { dir, out },
        } => {
            let cfg = dir.load()?;
            let keys = idvault::app::open_keys(&cfg)?;
            let key = keys.bridge_seal_key(keys.current_version())?;
            write_secret_file(&out, &idvault::core::xref::bridge_key_file(&key))?;
            println!(
                "wrote {} (bridge seal key, version {}); give it only to the sending platform",
                out.display(),
                key.version()
            );
            Ok(())
        }
        Command::Bridge {
            command:
                BridgeCommand::Seal {
                    key_file,
                    output,
                    file,
                },
        } => bridge_seal(&key_file, output.as_deref(), &file),
        Command::Bridge {
            command: BridgeCommand::Import(args),
        } => bridge_import(args).await.map_err(plain_status),
        Command::Tokenize(args) if args.server.is_some() => {
            tokenize_remote(args).await.map_err(plain_status)
        }
        Command::Tokenize(args) => tokenize(args),
        Command::Tokens {
            command:
                TokensCommand::ExportKey {
                    dir,
                    domain,
                    version,
                    out,
                },
        } => export_token_key(&dir, &domain, version, &out),
        Command::Partner(args) => partner(args).await.map_err(plain_status),
        Command::Policy {
            command: PolicyCommand::Check { dir },
        } => {
            let compiled =
                idvault::policy::read_dir(&dir).and_then(|src| idvault_policies::compile(&src));
            match compiled {
                Ok(c) => {
                    println!(
                        "{}: {} policies valid against the schema ({})",
                        dir.display(),
                        c.ids().len(),
                        c.ids().join(", ")
                    );
                    Ok(())
                }
                Err(d) => {
                    eprintln!("{}", idvault::policy::report(&d));
                    std::process::exit(1);
                }
            }
        }
        Command::Device(args) => consent_cli::device(args).await.map_err(plain_status),
        Command::Bench {
            command:
                BenchCommand::Consent {
                    count,
                    verifications,
                    concurrency,
                    database_url,
                },
        } => {
            bench_consent(idvault::bench_consent::ConsentBenchOptions {
                count,
                verifications,
                concurrency,
                database_url,
            })
            .await
        }
        Command::Bench {
            command:
                BenchCommand::Events {
                    subjects,
                    events,
                    concurrency,
                    database_url,
                },
        } => {
            let r = idvault::bench_events::run(&idvault::bench_events::EventsBenchOptions {
                subjects,
                events,
                concurrency,
                database_url,
            })
            .await
            .map_err(anyhow::Error::from_boxed)?;
            print!("{r}");
            Ok(())
        }
        Command::Bench {
            command: BenchCommand::Policy { decisions, dir },
        } => {
            let src = match &dir {
                Some(d) => idvault::policy::read_dir(d),
                None => Ok(idvault_policies::PolicySource::builtin()),
            };
            let compiled = src
                .and_then(|s| idvault_policies::compile(&s))
                .map_err(|d| anyhow::anyhow!(idvault::policy::report(&d)))?;
            let ids = compiled.ids().len();
            let (rate, allowed) = idvault_policies::bench_decisions(compiled, decisions)?;
            println!(
                "policy decisions (one thread, {ids} policies, {decisions} decisions, {:.0}% allowed): {rate:.0}/s",
                allowed * 100.0
            );
            Ok(())
        }
        Command::Bench {
            command: BenchCommand::Packets { count },
        } => bench_packets(count),
        Command::Bench {
            command:
                BenchCommand::Match {
                    originals,
                    strangers,
                    subjects,
                    queries,
                    seed,
                    database_url,
                },
        } => {
            bench_match(idvault::bench_match::MatchBenchOptions {
                originals,
                strangers,
                subjects,
                queries,
                seed,
                database_url,
            })
            .await
        }
        Command::Bench {
            command: BenchCommand::Tokenize { records, mode, .. },
        } if mode == "xref" => bench_tokenize_xref(records).await,
        Command::Bench {
            command: BenchCommand::Tokenize {
                records, threads, ..
            },
        } => {
            let threads =
                threads.unwrap_or_else(|| idvault::tokenize::PipelineOptions::default().threads);
            let dir = std::env::temp_dir().join(format!("idvault-bench-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir)?;
            let r = idvault::bench::tokenize(&dir, records, threads);
            let _ = std::fs::remove_dir_all(&dir);
            let r = r?;
            let rate = |d: std::time::Duration| r.records as f64 / d.as_secs_f64();
            println!(
                "synthetic usage log: {} records, {:.1} MiB, 2 identifier fields, {} threads",
                r.records,
                r.bytes as f64 / 1048576.0,
                r.threads
            );
            println!(
                "idvault tokenize (stateless, file to file): {:>12.0} records/s",
                rate(r.tokenize)
            );
            println!(
                "bare loop (read, parse, normalise, HMAC):   {:>12.0} records/s",
                rate(r.bare)
            );
            println!(
                "ratio tokenize / bare loop:                 {:>12.2}",
                rate(r.tokenize) / rate(r.bare)
            );
            Ok(())
        }
        Command::Bench {
            command:
                BenchCommand::Subjects {
                    count,
                    concurrency,
                    database_url,
                },
        } => bench_subjects(count, concurrency, database_url).await,
    }
}

fn init(dir: &DataDir, dev: bool, listen: &str) -> anyhow::Result<()> {
    let rng = SystemRng::default();
    let made = if dev {
        idvault::devinit::init_dev(&dir.data_dir, listen, &rng)?
    } else {
        std::fs::create_dir_all(&dir.data_dir)
            .with_context(|| dir.data_dir.display().to_string())?;
        let mut made = Vec::new();
        let root = dir.data_dir.join("root.key");
        if !root.exists() {
            idvault::keyfile::create(&root, &rng)?;
            made.push(root);
        }
        let cfg = dir.config_path();
        if !cfg.exists() {
            let text = idvault::devinit::production_config(listen);
            std::fs::write(&cfg, text)?;
            made.push(cfg);
        }
        made
    };
    if made.is_empty() {
        println!(
            "{}: nothing to do, everything exists",
            dir.data_dir.display()
        );
    }
    for p in made {
        println!("wrote {}", p.display());
    }
    Ok(())
}

async fn serve(
    dir: &DataDir,
    dev: bool,
    listen: Option<std::net::SocketAddr>,
    database_url: Option<String>,
) -> anyhow::Result<()> {
    if dev {
        let made =
            idvault::devinit::init_dev(&dir.data_dir, "127.0.0.1:50051", &SystemRng::default())?;
        for p in made {
            tracing::info!(path = %p.display(), "initialised");
        }
    }
    let cfg = dir.load()?;
    let url = database_url.unwrap_or_else(|| cfg.database_url());
    let loaded = idvault::app::load(&cfg, &url).await?;
    let addr = listen.unwrap_or(cfg.file.server.listen);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let mut server = idvault::server::start(
        Arc::clone(&loaded.vault),
        loaded.tls,
        listener,
        loaded.options,
    )
    .await?;
    println!(
        "idvault listening on {} (mTLS), storage {}",
        server.addr,
        redact_url(&url)
    );
    spawn_policy_reload(Arc::clone(&loaded.vault));
    let stop = server.take_shutdown();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        if let Some(tx) = stop {
            let _ = tx.send(());
        }
    });
    server.wait().await?;
    loaded.vault.store().close().await;
    Ok(())
}

/// SIGHUP reloads the policy set; an invalid set is reported and the one
/// in force stays.
fn spawn_policy_reload(vault: Arc<idvault::service::Vault>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; policies reload only at restart");
            return;
        };
        while hup.recv().await.is_some() {
            match vault.reload_policies() {
                Ok(n) => tracing::info!(policies = n, "policy set reloaded"),
                Err(d) => tracing::error!(
                    errors = %idvault::policy::report(&d),
                    "policy reload refused; the previous policy set stays in force"
                ),
            }
        }
    });
    #[cfg(not(unix))]
    let _ = vault;
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn audit_verify(dir: &DataDir, database_url: Option<String>) -> anyhow::Result<()> {
    let cfg = dir.load()?;
    let keys = idvault::app::open_keys(&cfg)?;
    let url = database_url.unwrap_or_else(|| cfg.database_url());
    let store = idvault::store::Store::connect(&url).await?;
    let verdict = idvault::service::verify_audit_log(&store, &keys).await?;
    store.close().await;
    match verdict {
        idvault::service::AuditVerdict::Intact { records } => {
            println!("audit log intact: {records} records verified");
            Ok(())
        }
        idvault::service::AuditVerdict::Broken { seq, fault } => {
            println!("audit log BROKEN at record {seq}: {fault}");
            std::process::exit(1);
        }
    }
}

async fn partner(args: PartnerArgs) -> anyhow::Result<()> {
    // Connect only for the commands that talk to the vault (release-keygen does not).
    let subjects = async || anyhow::Ok(SubjectServiceClient::new(args.conn.channel().await?));
    let fields = |f: Vec<(String, String)>| {
        f.into_iter()
            .map(|(name, value)| Field { name, value })
            .collect()
    };
    match args.command {
        PartnerCommand::Consent(c) => consent_cli::partner(&args.conn, c).await?,
        PartnerCommand::Events(c) => events_cli::partner(&args.conn, c).await?,
        PartnerCommand::CreateSubject { fields: f } => {
            let r = subjects()
                .await?
                .create_subject(CreateSubjectRequest { fields: fields(f) })
                .await?
                .into_inner();
            println!(
                "subject_id={} chain_length={} chain_head={} pairwise_token={}",
                r.subject_id, r.chain_length, r.chain_head, r.pairwise_token
            );
        }
        PartnerCommand::UpdateSubject {
            subject_id,
            fields: f,
        } => {
            let r = subjects()
                .await?
                .update_subject(UpdateSubjectRequest {
                    subject_id,
                    fields: fields(f),
                })
                .await?
                .into_inner();
            println!(
                "chain_length={} chain_head={}",
                r.chain_length, r.chain_head
            );
        }
        PartnerCommand::VerifyChain { subject_id } => {
            let r = subjects()
                .await?
                .verify_subject_chain(VerifySubjectChainRequest { subject_id })
                .await?
                .into_inner();
            if r.intact {
                println!(
                    "intact: {} packets, head {}",
                    r.packets_checked, r.chain_head
                );
            } else {
                println!(
                    "BROKEN at packet {}: {}",
                    r.first_broken_sequence.unwrap_or_default(),
                    r.reason().as_str_name()
                );
                std::process::exit(1);
            }
        }
        PartnerCommand::DeleteSubject { subject_id } => {
            let r = subjects()
                .await?
                .delete_subject(DeleteSubjectRequest { subject_id })
                .await?
                .into_inner();
            println!("deleted: {} packets destroyed", r.packets_destroyed);
        }
        PartnerCommand::Match {
            fields: f,
            max_results,
        } => {
            use idvault_proto::v1::match_service_client::MatchServiceClient;
            use idvault_proto::v1::{MatchQuery, MatchRequest};
            let mut m = MatchServiceClient::new(args.conn.channel().await?);
            let r = m
                .r#match(MatchRequest {
                    query: Some(MatchQuery {
                        fields: fields(f),
                        max_results,
                        ..MatchQuery::default()
                    }),
                })
                .await?
                .into_inner();
            if r.candidates.is_empty() {
                println!("no match");
            }
            for c in r.candidates {
                let agreed: Vec<String> = c
                    .agreements
                    .iter()
                    .map(|a| {
                        let level = a.level().as_str_name();
                        let level = level.trim_start_matches("AGREEMENT_LEVEL_").to_lowercase();
                        format!("{}:{level}", a.field)
                    })
                    .collect();
                println!(
                    "{} score={:.4} agreed={}",
                    c.pairwise_token,
                    c.score,
                    agreed.join(",")
                );
            }
        }
    }
    Ok(())
}

async fn bridge_import(args: BridgeImportArgs) -> anyhow::Result<()> {
    use idvault::bridge_file::{CsvLayout, LineError, parse_json_line};
    use idvault_proto::v1::ImportBridgeRequest;
    use idvault_proto::v1::token_service_client::TokenServiceClient;
    use std::io::BufRead;

    let batch = args.batch.clamp(1, idvault::xref::MAX_BATCH);
    let csv = is_csv(args.format.as_deref(), Some(&args.file));
    let file = std::fs::File::open(&args.file).with_context(|| args.file.display().to_string())?;
    let country = u32::from(args.country_code.unwrap_or(0));
    let (tx, rx) = tokio::sync::mpsc::channel::<ImportBridgeRequest>(4);
    // Read on a blocking thread, a batch at a time: constant memory.
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<LineError>> {
        let mut errors = Vec::new();
        let mut records = Vec::with_capacity(batch);
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
        if csv {
            let mut rdr = ::csv::ReaderBuilder::new().flexible(true).from_reader(file);
            let layout = CsvLayout::from_header(rdr.headers()?)
                .map_err(|e| anyhow::anyhow!("header: {e}"))?;
            for (i, row) in rdr.records().enumerate() {
                let line = i as u64 + 2;
                match row
                    .map_err(|e| e.to_string())
                    .and_then(|r| layout.record(&r))
                {
                    Ok(r) => records.push(r),
                    Err(reason) => errors.push(LineError { line, reason }),
                }
                if records.len() == batch {
                    flush(&mut records)?;
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
                match parse_json_line(&line) {
                    Ok(r) => records.push(r),
                    Err(reason) => errors.push(LineError {
                        line: line_no,
                        reason,
                    }),
                }
                if records.len() == batch {
                    flush(&mut records)?;
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
    let line_errors = reader.await??;
    let s = response?.into_inner();
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

/// Whether input is CSV: `--format` if given, else a `.csv` extension.
fn is_csv(format: Option<&str>, first_input: Option<&PathBuf>) -> bool {
    match format {
        Some(f) => f == "csv",
        None => first_input
            .is_some_and(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"))),
    }
}

/// The CSV delimiter as one ASCII byte.
fn delimiter_byte(c: char) -> anyhow::Result<u8> {
    u8::try_from(u32::from(c))
        .ok()
        .filter(u8::is_ascii)
        .context("delimiter must be one ASCII character")
}

/// Bytes per TokenizeLog message: well under the server's default 1 MiB
/// message limit, large enough to amortise per-message work.
const REMOTE_CHUNK: usize = 256 * 1024;

/// `idvault tokenize --server`: streams the input through the vault's
/// TokenizeLog call; output and rejects are written as in local mode.
async fn tokenize_remote(args: TokenizeArgs) -> anyhow::Result<()> {
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
        idvault::tokenize::read_csv_header(&mut input, delimiter)?
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
        idvault::client::PartnerCredentials::from_dir(&args.data_dir.join("tls"), &args.name)?;
    let channel = idvault::client::connect(
        args.server.as_deref().unwrap_or_default(),
        &args.server_name,
        &creds,
    )
    .await?;
    let mut client = TokenServiceClient::new(channel);
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
            idvault::tokenize::write_reject(
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

/// Creates `path` with mode 0600 (never overwriting) and writes `text`.
fn write_secret_file(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

fn bridge_seal(
    key_file: &std::path::Path,
    output: Option<&std::path::Path>,
    file: &std::path::Path,
) -> anyhow::Result<()> {
    use base64::Engine;
    use std::io::{BufRead, Write};
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(key_file).with_context(|| key_file.display().to_string())?,
    );
    let key = idvault::core::xref::parse_bridge_key_file(&text)
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
                let s = idvault::core::xref::seal_bridge_identifier(&key, ty, &v, &rng)?;
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

fn export_token_key(
    dir: &DataDir,
    domain: &str,
    version: Option<u32>,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    if !idvault_tokenizer::token::valid_domain(domain) {
        bail!("invalid token domain '{domain}' (use 1-32 of a-z, 0-9, -)");
    }
    let cfg = dir.load()?;
    let keys = idvault::app::open_keys(&cfg)?;
    let version = version.unwrap_or_else(|| keys.current_version());
    let key = keys.token_key(domain, version)?;
    write_secret_file(
        out,
        &idvault_tokenizer::token::key_file_text(domain, version, key.expose()),
    )?;
    println!(
        "wrote {} (token domain {domain}, version {version}); keep it as secret as the data",
        out.display()
    );
    Ok(())
}

fn tokenize(args: TokenizeArgs) -> anyhow::Result<()> {
    use idvault::tokenize::{self as tk, PipelineOptions};
    use idvault_tokenizer::NormalizeOptions;
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
    let bar = tk::progress_bar();
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
                b.set_message(tk::progress_message(&so_far, started));
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

fn bench_packets(count: u64) -> anyhow::Result<()> {
    use idvault::core::keys::generate_dek;
    use idvault::core::packet::{self, ChainHead};
    use idvault::core::subject::{SubjectId, validate_fields};
    let rng = SystemRng::default();
    let id = SubjectId::generate(&rng)?;
    let dek = generate_dek(&rng)?;
    let fields = validate_fields([("email".to_owned(), "ada.lovelace@example.org".to_owned())])?;
    let mut head = ChainHead::genesis(&id);
    let mut stored = Vec::with_capacity(usize::try_from(count)?);
    let t = Instant::now();
    for _ in 0..count {
        let (p, h) = packet::append(&id, &dek, head, &fields, 0, &rng)?;
        head = h;
        stored.extend(p.into_iter().map(|p| p.packet.into_bytes()));
    }
    let seal = t.elapsed();
    let t = Instant::now();
    let report = packet::verify_chain(
        &id,
        &dek,
        stored.iter().zip(1u64..).map(|(b, s)| (s, b.as_slice())),
        head,
    );
    let verify = t.elapsed();
    if !report.intact() {
        bail!("benchmark chain did not verify");
    }
    let rate = |d: std::time::Duration| count as f64 / d.as_secs_f64();
    println!("packets: {count}, value 24 bytes, one core");
    println!("seal+chain:        {:>12.0} packets/s", rate(seal));
    println!("verify (decrypt):  {:>12.0} packets/s", rate(verify));
    Ok(())
}

/// Cross-reference mode: imports the synthetic log's 100,000 customers
/// (phone and account linked), then streams the log through TokenizeLog
/// twice over mTLS; the second pass runs on a warm lookup cache.
async fn bench_tokenize_xref(records: u64) -> anyhow::Result<()> {
    use idvault_proto::v1::token_service_client::TokenServiceClient;
    use idvault_proto::v1::{
        BridgeIdentifier, BridgeRecord, IdentifierType as T, ImportBridgeRequest, LogFormat,
        TokenizeLogRequest, TokenizeMode, TokenizeSettings,
    };
    let vault = idvault::bench::InProcess::start(None)
        .await
        .map_err(anyhow::Error::from_boxed)?;
    let mut c = TokenServiceClient::new(
        vault
            .channel("partner-a")
            .await
            .map_err(anyhow::Error::from_boxed)?,
    );

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
    idvault::bench::generate_log(&mut log, records)?;
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
            bail!("tokenized {done} of {records} records, {rejected} rejected");
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
    vault.stop().await.map_err(anyhow::Error::from_boxed)
}

async fn bench_consent(o: idvault::bench_consent::ConsentBenchOptions) -> anyhow::Result<()> {
    let r = idvault::bench_consent::run(&o)
        .await
        .map_err(anyhow::Error::from_boxed)?;
    println!(
        "consent verification (one thread): {:>8.0} grants/s  (bare ECDSA P-256 verify: {:.0}/s, ratio {:.2})",
        r.verifications_per_sec,
        r.baseline_per_sec,
        r.verifications_per_sec / r.baseline_per_sec
    );
    println!(
        "full releases, {} {}, {} at a time: {:>8.0} releases/s  (challenges alone {:.0}/s)",
        o.count, r.backend, o.concurrency, r.releases_per_sec, r.challenges_per_sec
    );
    println!(
        "  release latency p50 {:?}  p99 {:?}; partner open {:?} each",
        r.quantile(0.5),
        r.quantile(0.99),
        r.open_mean
    );
    Ok(())
}

async fn bench_match(o: idvault::bench_match::MatchBenchOptions) -> anyhow::Result<()> {
    use idvault::bench_match::{latency, quality};
    if o.originals > 0 {
        let q = quality(&o).await.map_err(anyhow::Error::from_boxed)?;
        println!(
            "quality: {} originals created in {:.1} s; {} corrupted duplicates and {} strangers matched (seed {})",
            o.originals, q.create_secs, o.originals, o.strangers, o.seed
        );
        println!(
            "  threshold score 0.5 ({} bits): TP {}  FP {}  FN {}  refused {}",
            idvault_tokenizer::matching::THRESHOLD_BITS,
            q.true_positives,
            q.false_positives,
            q.false_negatives,
            q.refused
        );
        println!(
            "  precision {:.4}  recall {:.4}  F1 {:.4}  ({:.0} queries/s in batches of 100)",
            q.precision(),
            q.recall(),
            q.f1(),
            q.queries_per_sec
        );
    }
    if o.subjects > 0 {
        let bar = idvault::tokenize::progress_bar();
        let l = latency(&o, |n| {
            if let Some(b) = &bar {
                b.set_message(format!("{n} of {} subjects indexed", o.subjects));
            }
        })
        .await
        .map_err(anyhow::Error::from_boxed)?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        println!(
            "latency: {} subjects ({} blocking index rows and signatures loaded in {:.0} s), {} single queries",
            l.subjects,
            l.rows,
            l.load_secs,
            l.samples.len()
        );
        println!(
            "  p50 {:?}  p99 {:?}  max {:?}  (best answer right for {} of {})",
            l.quantile(0.50),
            l.quantile(0.99),
            l.samples.last().copied().unwrap_or_default(),
            l.correct,
            l.samples.len()
        );
    }
    Ok(())
}

async fn bench_subjects(
    count: usize,
    concurrency: usize,
    database_url: Option<String>,
) -> anyhow::Result<()> {
    let vault = idvault::bench::InProcess::start(database_url)
        .await
        .map_err(anyhow::Error::from_boxed)?;
    let per = count.div_ceil(concurrency.max(1));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency.max(1) {
        let ch = vault
            .channel("partner-a")
            .await
            .map_err(anyhow::Error::from_boxed)?;
        tasks.push(tokio::spawn(async move {
            let mut c = SubjectServiceClient::new(ch);
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let req = CreateSubjectRequest {
                    fields: vec![
                        Field {
                            name: "given_name".into(),
                            value: format!("Given{w}x{i}"),
                        },
                        Field {
                            name: "family_name".into(),
                            value: "Benchmark".into(),
                        },
                        Field {
                            name: "email".into(),
                            value: format!("p{w}x{i}@example.org"),
                        },
                    ],
                };
                let s = Instant::now();
                c.create_subject(req).await?;
                lat.push(s.elapsed());
            }
            Ok::<_, tonic::Status>(lat)
        }));
    }
    let mut lat = Vec::with_capacity(count);
    for task in tasks {
        lat.extend(task.await??);
    }
    let elapsed = t.elapsed();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "CreateSubject over mTLS, 3 fields, {} RPCs, {concurrency} connections, storage {}",
        lat.len(),
        vault.backend()
    );
    println!(
        "throughput: {:>10.0} RPC/s ({:.0} packets sealed and stored/s)",
        lat.len() as f64 / elapsed.as_secs_f64(),
        3.0 * lat.len() as f64 / elapsed.as_secs_f64()
    );
    println!("latency:    p50 {:?}  p99 {:?}", pct(0.50), pct(0.99));
    vault.stop().await.map_err(anyhow::Error::from_boxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("sqlite:///x.db"), "sqlite:///x.db");
    }

    #[test]
    fn field_args_parse() {
        assert_eq!(parse_field("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(parse_field("nope").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn generated_configs_parse() {
        let key = idvault::client::ReleaseKey::generate(&idvault::core::SystemRng::default())
            .unwrap()
            .public_hex();
        let t = idvault::devinit::dev_config(
            "127.0.0.1:50051",
            &[("partner-a".into(), key.clone()), ("partner-b".into(), key)],
        );
        assert_eq!(
            Config::parse(&t, Path::new("x"), Path::new("/d"))
                .unwrap()
                .registry
                .partners()
                .len(),
            idvault::devinit::DEV_PARTNERS.len()
        );
        let t = idvault::devinit::production_config("0.0.0.0:50051");
        assert!(
            Config::parse(&t, Path::new("x"), Path::new("/d"))
                .unwrap()
                .registry
                .partners()
                .is_empty()
        );
    }
}
