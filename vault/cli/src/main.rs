//! The `idvault` binary: one command for every role. Each command group
//! lives in its own file under `cmd/`; this file is only the command line's
//! shape and the dispatch.
#![forbid(unsafe_code)]

mod cmd;
mod progress;

use clap::{Parser, Subcommand};

use cmd::{DataDir, plain_status};

/// mimalloc (its v3 line, as libmimalloc-sys builds it) instead of the C
/// library's malloc: under load tokio's workers, sqlx's SQLite threads and
/// the writer free on one thread what another allocated, and glibc's
/// arenas took about a sixth of the CPU (`_int_malloc`,
/// `malloc_consolidate`, …; docs/BENCHMARKS.md). Built in its `secure`
/// mode (`MI_SECURE=4`: guard pages around its metadata, randomised
/// addresses, encoded free lists, double-free detection), so the heap
/// stays hardened as glibc's is. What the vault wipes before freeing
/// (SECURITY.md, "Secrets in memory") is wiped whatever the allocator;
/// what it lists as not wiped stays in freed memory with either. SQLite's
/// own C allocations still use the C library's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "idvault",
    version,
    about = "Privacy-preserving identity vault and tokenization service"
)]
struct Cli {
    /// Log lines as `text` or `json` (one object per line); `serve` falls
    /// back to the config's `[log] format`.
    #[arg(long, global = true, env = "IDVAULT_LOG_FORMAT")]
    log_format: Option<idvault_server::logging::LogFormat>,
    #[command(subcommand)]
    command: Command,
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
        #[command(flatten)]
        seal: cmd::init::SealArgs,
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
        /// Serve Prometheus metrics at http://ADDR/metrics (overrides
        /// the config's `[metrics] listen`).
        #[arg(long)]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// Take a consistent online backup of the SQLite database (the root
    /// key is never in it: keep the key file's own copy apart).
    Backup(cmd::backup::BackupArgs),
    /// Restore a backup and crypto-shred again everyone deleted since it
    /// was taken (from the deletion journals and the replaced database).
    Restore(cmd::backup::RestoreArgs),
    /// Walk through every capability on a throw-away development vault.
    Demo(cmd::demo::DemoArgs),
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: cmd::audit::AuditCommand,
    },
    /// Digital-ID issuer keys.
    Issuer {
        #[command(subcommand)]
        command: cmd::issuer::IssuerCommand,
    },
    /// Blind matching: a domain's learned weights.
    Match {
        #[command(subcommand)]
        command: cmd::matching::MatchCommand,
    },
    /// Root key tools.
    Keys {
        #[command(subcommand)]
        command: cmd::keys::KeysCommand,
    },
    /// Act as a partner institution against a running vault.
    Partner(cmd::partner::PartnerArgs),
    /// Act as a person's phone: device key, enrollment, consents, receipts.
    Device(cmd::device::DeviceArgs),
    /// Identity bridge tools.
    Bridge {
        #[command(subcommand)]
        command: cmd::bridge::BridgeCommand,
    },
    /// Replace identifier fields in usage logs (JSON Lines or CSV) with tokens.
    Tokenize(cmd::tokenize::TokenizeArgs),
    /// Token domain keys.
    Tokens {
        #[command(subcommand)]
        command: cmd::tokens::TokensCommand,
    },
    /// Check a migration between two platforms by hash manifests,
    /// without either side revealing field values.
    Manifest {
        #[command(subcommand)]
        command: cmd::manifest::ManifestCommand,
    },
    /// Partner access policies (Cedar).
    Policy {
        #[command(subcommand)]
        command: cmd::policy::PolicyCommand,
    },
    /// Measure throughput of core operations.
    Bench {
        #[command(subcommand)]
        command: cmd::bench::BenchCommand,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let trace = std::env::var_os("RUST_LIB_BACKTRACE").is_some_and(|v| v != "0");
            eprintln!("{}", error_report(&e, trace));
            std::process::ExitCode::FAILURE
        }
    }
}

/// How a failed command reports its error on stderr: the message and its
/// causes, as `anyhow` prints them, without the stack trace `anyhow` also
/// prints whenever `RUST_BACKTRACE` is set (a developer's shell often sets
/// it, for panics): an operator's mistake is not a bug, and thirty lines of
/// frames bury the one line that says what to do. `RUST_LIB_BACKTRACE`
/// (other than `0`) still asks for the trace.
fn error_report(e: &anyhow::Error, trace: bool) -> String {
    if trace {
        return format!("Error: {e:?}");
    }
    let mut out = format!("Error: {e}");
    let causes: Vec<String> = e.chain().skip(1).map(ToString::to_string).collect();
    match causes.as_slice() {
        [] => {}
        [one] => out.push_str(&format!("\n\nCaused by:\n    {one}")),
        many => {
            out.push_str("\n\nCaused by:");
            for (i, c) in many.iter().enumerate() {
                out.push_str(&format!("\n    {i}: {c}"));
            }
        }
    }
    out
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let format = cli.log_format.unwrap_or_else(|| match &cli.command {
        // A config that does not load yet is reported by `serve` itself.
        Command::Serve { dir, .. } => dir.load().map(|c| c.file.log.format).unwrap_or_default(),
        _ => idvault_server::logging::LogFormat::default(),
    });
    let default_filter = match &cli.command {
        // The demo's own story is its output; warnings and errors still show.
        Command::Demo(_) => "warn,sqlx=warn",
        // A benchmark's in-process vault answers tens of thousands of
        // calls a second: no access line each (`RUST_LOG` can ask).
        Command::Bench { .. } => "info,sqlx=warn,idvault::access=off",
        _ => "info,sqlx=warn",
    };
    idvault_server::logging::install(
        format,
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| default_filter.into()),
        std::io::stderr,
    )
    .map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))?;
    match cli.command {
        Command::Init {
            dir,
            dev,
            listen,
            seal,
        } => cmd::init::run(&dir, dev, &listen, &seal),
        Command::Serve {
            dir,
            dev,
            listen,
            database_url,
            metrics_listen,
        } => cmd::serve::run(&dir, dev, listen, database_url, metrics_listen).await,
        Command::Backup(args) => cmd::backup::backup(&args).await,
        Command::Restore(args) => cmd::backup::restore(&args).await,
        Command::Demo(args) => cmd::demo::run(&args).await,
        Command::Audit { command } => cmd::audit::run(command).await,
        Command::Keys { command } => cmd::keys::run(command).await,
        Command::Match { command } => cmd::matching::run(command).await,
        Command::Issuer { command } => cmd::issuer::run(command),
        Command::Partner(args) => cmd::partner::run(args).await.map_err(plain_status),
        Command::Device(args) => cmd::device::run(args).await.map_err(plain_status),
        Command::Bridge { command } => cmd::bridge::run(command).await,
        Command::Tokenize(args) => cmd::tokenize::run(args).await,
        Command::Tokens { command } => cmd::tokens::run(command),
        Command::Manifest { command } => cmd::manifest::run(command),
        Command::Policy { command } => cmd::policy::run(command),
        Command::Bench { command } => cmd::bench::run(command).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::parse_field;
    use crate::cmd::serve::redact_url;
    use idvault_server::config::Config;
    use std::path::Path;

    #[test]
    fn errors_are_reported_with_their_causes_and_no_stack_trace() {
        let plain = anyhow::anyhow!("no such subject");
        assert_eq!(error_report(&plain, false), "Error: no such subject");
        let one = anyhow::Error::msg("disk full").context("writing the marker");
        assert_eq!(
            error_report(&one, false),
            "Error: writing the marker\n\nCaused by:\n    disk full"
        );
        let two = one.context("restoring");
        assert_eq!(
            error_report(&two, false),
            "Error: restoring\n\nCaused by:\n    0: writing the marker\n    1: disk full"
        );
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("sqlite:///x.db"), "sqlite:///x.db");
        assert_eq!(
            redact_url("postgres://h/db?user=u&password=secret&sslmode=require"),
            "postgres://h/db?user=u&password=***&sslmode=require"
        );
        let both = redact_url("postgres://u:p%40ss@h/db?SSLPassword=key-secret");
        assert_eq!(both, "postgres://u:***@h/db?SSLPassword=***");
        assert!(!redact_url("postgres://u:secret@[bad").contains("secret"));
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
        let key = idvault_client::ReleaseKey::generate(&idvault_core::SystemRng::default())
            .unwrap()
            .public_hex();
        let t = idvault_server::devinit::dev_config(
            "127.0.0.1:50051",
            &[("partner-a".into(), key.clone()), ("partner-b".into(), key)],
        );
        assert_eq!(
            Config::parse(&t, Path::new("x"), Path::new("/d"))
                .unwrap()
                .registry
                .partners()
                .len(),
            idvault_server::devinit::DEV_PARTNERS.len()
        );
        let t = idvault_server::devinit::production_config("0.0.0.0:50051");
        assert!(
            Config::parse(&t, Path::new("x"), Path::new("/d"))
                .unwrap()
                .registry
                .partners()
                .is_empty()
        );
    }
}
