//! `idvault partner …`: act as a partner institution against a running vault.

use clap::{Args, Subcommand};

mod consent;
mod credentials;
mod events;
mod link;
mod transactions;

use super::{ConnectArgs, parse_field};
use idvault_proto::v1::subject_service_client::SubjectServiceClient;
use idvault_proto::v1::*;

#[derive(Args, Debug)]
pub(crate) struct PartnerArgs {
    #[command(flatten)]
    conn: ConnectArgs,
    #[command(subcommand)]
    command: PartnerCommand,
}

#[derive(Subcommand, Debug)]
pub(crate) enum PartnerCommand {
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
    /// Delete (crypto-shred) a subject; prints the vault's signed
    /// deletion receipt, or writes it to --receipt.
    DeleteSubject {
        subject_id: String,
        /// Write the signed receipt to this file (created; never overwritten).
        #[arg(long, value_name = "FILE")]
        receipt: Option<std::path::PathBuf>,
    },
    /// Ask the vault to rewrap stored data to its current root key version
    /// (`KeyService.Rewrap`, role `keys.admin`): prints progress and the
    /// report; exits 1 if anything was left behind.
    RewrapKeys,
    /// Verify a signed deletion receipt with the vault's receipt key
    /// (`idvault keys receipt-public-key`), offline: prints what it states,
    /// exits 1 if it does not verify.
    VerifyReceipt {
        /// The receipt (as DeleteSubject returned it).
        #[arg(long, value_name = "FILE")]
        receipt: std::path::PathBuf,
        /// Receipt verifier key file, one key per line.
        #[arg(long, value_name = "FILE")]
        public_key: std::path::PathBuf,
    },
    /// Blind-match a person: prints pairwise token, score and agreeing fields.
    Match {
        #[arg(long = "field", value_parser = parse_field, required = true)]
        fields: Vec<(String, String)>,
        /// Most candidates to print (1 to 10).
        #[arg(long, default_value_t = 3)]
        max_results: u32,
    },
    /// Link a whole dataset (CSV with a header row, or JSON Lines): writes
    /// each record's best subject (pairwise token, score, agreeing fields)
    /// as CSV or JSON Lines, optionally one-to-one (no subject given to two
    /// records; greedy, best score first). Shows a progress bar.
    Link(link::LinkArgs),
    /// Check the vault's audit log: verify the newest signed checkpoint
    /// with the vault's public key, prove it extends the checkpoint kept in
    /// --state (a rolled-back or forked log exits 1), optionally prove a
    /// request of ours is in it, then keep the new checkpoint.
    AuditCheck {
        /// Verifier key file (`idvault audit public-key`), one key per line.
        #[arg(long, value_name = "FILE")]
        public_key: std::path::PathBuf,
        /// Where the last seen checkpoint is kept
        /// (default: DATA_DIR/audit-checkpoint.NAME).
        #[arg(long, value_name = "FILE")]
        state: Option<std::path::PathBuf>,
        /// Also prove this request (the `idvault-request-id` a response
        /// carried) is in the log.
        #[arg(long)]
        request_id: Option<String>,
    },
    #[command(flatten)]
    Credentials(credentials::PartnerCredentialCommand),
    /// One-time transaction codes (role `transactions.request`).
    Transaction {
        #[command(subcommand)]
        command: transactions::PartnerTransactionCommand,
    },
    #[command(flatten)]
    Consent(consent::PartnerConsentCommand),
    #[command(flatten)]
    Events(events::PartnerEventCommand),
}

pub(crate) async fn run(args: PartnerArgs) -> anyhow::Result<()> {
    // Connect only for the commands that talk to the vault (release-keygen does not).
    let subjects = async || anyhow::Ok(SubjectServiceClient::new(args.conn.channel().await?));
    let fields = |f: Vec<(String, String)>| {
        f.into_iter()
            .map(|(name, value)| Field { name, value })
            .collect()
    };
    match args.command {
        PartnerCommand::AuditCheck {
            public_key,
            state,
            request_id,
        } => {
            let state = state.unwrap_or_else(|| {
                args.conn
                    .dir
                    .data_dir
                    .join(format!("audit-checkpoint.{}", args.conn.name))
            });
            audit_check(&args.conn, &public_key, &state, request_id.as_deref()).await?;
        }
        PartnerCommand::Credentials(c) => credentials::partner(&args.conn, c).await?,
        PartnerCommand::Transaction { command } => {
            transactions::partner(&args.conn, command).await?
        }
        PartnerCommand::Consent(c) => consent::partner(&args.conn, c).await?,
        PartnerCommand::Link(l) => link::link(&args.conn, l).await?,
        PartnerCommand::Events(c) => events::partner(&args.conn, c).await?,
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
        PartnerCommand::DeleteSubject {
            subject_id,
            receipt,
        } => {
            let r = subjects()
                .await?
                .delete_subject(DeleteSubjectRequest { subject_id })
                .await?
                .into_inner();
            println!("deleted: {} packets destroyed", r.packets_destroyed);
            match receipt {
                Some(path) => {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&path)
                        .and_then(|mut f| std::io::Write::write_all(&mut f, r.receipt.as_bytes()))
                        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                    println!("receipt written to {}", path.display());
                }
                None => print!("{}", r.receipt),
            }
        }
        PartnerCommand::RewrapKeys => {
            use idvault_proto::v1::key_service_client::KeyServiceClient;
            let mut k = KeyServiceClient::new(args.conn.channel().await?);
            let mut s = k
                .rewrap(idvault_proto::v1::RewrapRequest {})
                .await?
                .into_inner();
            while let Some(u) = s.message().await? {
                if u.finished {
                    println!(
                        "rewrapped to version {}: {} subjects, {} links, {} row MACs, {} audit leaf MACs ({} batches), {} left behind",
                        u.target_version,
                        u.subjects,
                        u.links,
                        u.row_macs,
                        u.audit_leaves,
                        u.batches,
                        u.left_behind
                    );
                    if u.left_behind > 0 {
                        std::process::exit(1);
                    }
                } else {
                    eprintln!("{}: {}/{}", u.phase, u.done, u.total);
                }
            }
        }
        PartnerCommand::VerifyReceipt {
            receipt,
            public_key,
        } => verify_receipt(&receipt, &public_key)?,
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

async fn audit_check(
    conn: &ConnectArgs,
    public_key: &std::path::Path,
    state: &std::path::Path,
    request_id: Option<&str>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let (keys, origin) = super::audit::read_verifiers(public_key)?;
    // One check at a time per state file (a scheduled run overlapping
    // another): each reads the kept checkpoint, proves the newest extends
    // it and keeps that, so none can put back an older one that a later
    // fork would then be checked against. Released at exit.
    let lock_path = {
        let mut p = state.as_os_str().to_owned();
        p.push(".lock");
        std::path::PathBuf::from(p)
    };
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    let kept = match std::fs::read_to_string(state) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", state.display())),
    };
    let channel = conn.channel().await?;
    let failed = |e: idvault_client::audit::AuditCheckError| -> ! {
        println!("audit check FAILED: {e}");
        std::process::exit(1);
    };
    // Consistency first, and the checkpoint it proved kept at once: a
    // failed inclusion step (not checkpointed yet) must not lose it.
    let c = idvault_client::audit::check(channel.clone(), &keys, &origin, kept.as_deref(), None)
        .await
        .unwrap_or_else(|e| failed(e));
    keep_checkpoint(state, &c.note)?;
    match c.extends {
        Some(old) => println!(
            "checkpoint {} verified; consistent with the kept checkpoint {old}",
            c.checkpoint.size
        ),
        None => println!(
            "checkpoint {} verified; kept in {} (first check)",
            c.checkpoint.size,
            state.display()
        ),
    }
    if let Some(id) = request_id {
        let (index, leaf) = idvault_client::audit::check_included(channel, &c.checkpoint, id)
            .await
            .unwrap_or_else(|e| failed(e));
        println!(
            "request {} is leaf {index}: {} {} {}",
            hex::encode(leaf.request_id),
            leaf.action,
            leaf.subject.as_deref().unwrap_or("-"),
            leaf.outcome
        );
    }
    Ok(())
}

/// `partner verify-receipt`: offline, with pinned receipt verifier keys.
fn verify_receipt(receipt: &std::path::Path, public_key: &std::path::Path) -> anyhow::Result<()> {
    let (keys, _) = crate::cmd::audit::read_verifiers(public_key)?;
    let note = std::fs::read_to_string(receipt)
        .map_err(|e| anyhow::anyhow!("{}: {e}", receipt.display()))?;
    match idvault_core::receipt::open_receipt(&note, &keys) {
        Ok(r) => {
            println!(
                "receipt verified: subject {} deleted at {} ms by {}",
                r.subject, r.deleted_at_ms, r.deleted_by
            );
            println!(
                "audit record: request {} (leaf hash {}); prove it is logged with \
                 `idvault partner audit-check --request-id {}`",
                hex::encode(r.request_id),
                hex::encode(r.audit_leaf),
                hex::encode(r.request_id)
            );
            println!(
                "destroyed: {}",
                r.destroyed
                    .iter()
                    .map(|(w, n)| format!("{w}={n}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            println!("final: {}", r.final_when);
            Ok(())
        }
        Err(e) => {
            println!("receipt NOT verified: {e}");
            std::process::exit(1);
        }
    }
}

/// Keeps the new checkpoint in `state`: written to a temporary file beside
/// it, flushed to disk, renamed over it, and the directory flushed too. A
/// crash then leaves the old note or the new one, never an empty or torn
/// file: a state file that fails to parse would push the operator to
/// delete it, and that silently restarts rollback detection.
fn keep_checkpoint(state: &std::path::Path, note: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write as _;
    let dir = match state.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(note.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing a temporary file in {}", dir.display()))?;
    tmp.persist(state)
        .with_context(|| format!("replacing {}", state.display()))?;
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("flushing {}", dir.display()))?;
    Ok(())
}
